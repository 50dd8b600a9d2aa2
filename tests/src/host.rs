//! A hypervisor host: a namespace with sshd, an Open vSwitch bridge `br0` whose uplink is the
//! veth to the lab switch, and the host's own address on the bridge's internal port.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::lab::{Lab, SUBNET_PREFIX};
use crate::netns;
use crate::ovs::{self, Ovs};
use crate::sshd::{self, KeyPair};

pub const BRIDGE: &str = "br0";

#[derive(Debug, Clone)]
pub struct Host {
    /// "A", "B", ...
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub host_key: KeyPair,
    pub ovs: Ovs,
    /// Working directory of this host (its "disk").
    pub dir: std::path::PathBuf,
}

impl Host {
    /// A directory first on the PATH of the host's SSH sessions: a test puts a misbehaving
    /// tool there to inject a fault.
    pub fn bin_dir(&self) -> std::path::PathBuf {
        self.dir.join("bin")
    }

    /// Installs an executable `name` in `bin_dir` (a shell script).
    pub fn fake_tool(&self, name: &str, script: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.bin_dir().join(name);
        std::fs::write(&p, script)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Removes a tool `fake_tool` installed.
    pub fn remove_tool(&self, name: &str) {
        let _ = std::fs::remove_file(self.bin_dir().join(name));
    }

    /// The config name of the host, e.g. "hostA".
    pub fn config_name(&self) -> String {
        format!("host{}", self.name)
    }
}

/// Address of host N (A = 11, B = 12, ...).
pub fn host_ip(name: &str) -> Ipv4Addr {
    let n = name.bytes().next().unwrap_or(b'A').saturating_sub(b'A');
    Ipv4Addr::new(10, 213, 0, 11 + n)
}

impl Lab {
    /// A hypervisor host named `name` ("A", "B", ...) at 10.213.0.(11 + n).
    pub fn host(&self, name: &str) -> Result<Host> {
        self.host_with_storage(name, None)
    }

    /// The same, its local storage (`sshd::LOCAL_DISKS`) a file system of `mib` MiB of its own
    /// when given: a host short of disk room.
    pub fn host_with_storage(&self, name: &str, mib: Option<u32>) -> Result<Host> {
        let role = format!("h{name}");
        let ns = self.ns_name(&role);
        let ip = host_ip(name);
        self.add_ns(&ns)?;
        self.plug(&role, &ns, "up0")?;
        let ovs = ovs::start(self, &ns, &role, BRIDGE)?;
        ovs.add_port(BRIDGE, "up0", None)?;
        netns::add_addr(&ns, BRIDGE, ip, SUBNET_PREFIX)?;
        let host_key = sshd::start(self, &ns, &role, ip, mib)?;
        Ok(Host {
            name: name.into(),
            ns,
            ip,
            host_key,
            ovs,
            dir: self.subdir(&role)?,
        })
    }
}

impl Lab {
    /// Runs `cmd` on `host` over SSH from namespace `from`, as its operator would (root, with
    /// the lab's key): in the host's own mount namespace, where its local disks are. Its
    /// stdout; a failure says what the command printed on stderr.
    pub fn ssh(&self, from: &str, host: &Host, cmd: &str) -> Result<String> {
        let known = self.dir.join(format!("known_hosts_{}", host.name));
        if !known.exists() {
            std::fs::write(&known, format!("{} {}\n", host.ip, host.host_key.public))?;
        }
        let key = self.client_key()?;
        let out = crate::sys::run(netns::exec(from, "ssh").args([
            "-i",
            &key.private.display().to_string(),
            "-o",
            &format!("UserKnownHostsFile={}", known.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{}", host.ip),
            cmd,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

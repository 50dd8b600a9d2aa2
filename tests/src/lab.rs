//! The lab: one switch namespace with a Linux bridge (the lab's physical switch), and nodes
//! plugged into it: the appliance, hypervisor hosts (sshd + Open vSwitch + QEMU guests) and a
//! client. Every name carries the run's prefix; everything started is torn down on drop, also
//! when a test panics.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns;
use crate::sys::Tracked;

/// Namespaces of a lab run are named `<prefix>-<role>`, the prefix being `nml` + 5 hex digits.
pub const PREFIX_HEAD: &str = "nml";

/// The lab's one IPv4 segment.
pub const SUBNET_PREFIX: u8 = 24;
pub const APPLIANCE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 100);

/// Where run directories live: `$NETMIGRATE_LAB_DIR` or /tmp/netmigrate-lab.
pub fn runs_root() -> PathBuf {
    std::env::var_os("NETMIGRATE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/netmigrate-lab"))
}

/// Where built artifacts (guest kernel, initramfs) are cached between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NETMIGRATE_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/netmigrate-lab"))
}

/// Why a lab cannot run here; tests print it and skip.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "lab tests need root (network namespaces); run them as root, as CI does".into(),
        );
    }
    for (bin, pkg) in [
        ("/usr/sbin/sshd", "openssh-server"),
        ("/usr/sbin/ovs-vswitchd", "openvswitch-switch"),
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} is missing (package {pkg}); run `make deps`"));
        }
    }
    None
}

/// Skips the calling test (returns from it) with a printed reason when the lab cannot run.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(why) = $crate::lab::unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// A node plugged into the lab switch: a namespace with one interface `eth0` (hosts put theirs
/// on an OVS bridge instead).
#[derive(Debug, Clone)]
pub struct Node {
    pub role: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub(crate) struct Inner {
    pub procs: Vec<Tracked>,
    pub namespaces: Vec<String>,
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub(crate) inner: Mutex<Inner>,
    switch_ns: String,
    keep: bool,
}

impl Lab {
    /// A new lab with its switch. `NETMIGRATE_LAB_KEEP=1` leaves it up after the run, for
    /// poking at by hand (then `netmigrate-lab cleanup`).
    pub fn new() -> Result<Lab> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        // Random enough across runs; a name already taken (another run, or another test of
        // this process starting at the same moment) is skipped. Creating the run directory
        // claims the name: it fails if someone else got there first.
        static LABS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(runs_root())
            .with_context(|| format!("creating {}", runs_root().display()))?;
        let prefix = (0u64..1000)
            .map(|i| {
                let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let seed = (std::process::id() as u64) << 8
                    ^ crate::sys::now_nanos()
                    ^ (i << 7)
                    ^ (n << 13);
                format!("{PREFIX_HEAD}{:05x}", (seed ^ (seed >> 20)) & 0xfffff)
            })
            .find(|p| {
                !Path::new(&format!("/run/netns/{p}-sw")).exists()
                    && std::fs::create_dir(runs_root().join(p)).is_ok()
            })
            .with_context(|| format!("no free lab name under {}", runs_root().display()))?;
        let dir = runs_root().join(&prefix);
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
        let lab = Lab {
            switch_ns: format!("{prefix}-sw"),
            prefix,
            dir,
            inner: Mutex::new(Inner {
                procs: Vec::new(),
                namespaces: Vec::new(),
            }),
            keep: std::env::var("NETMIGRATE_LAB_KEEP").is_ok_and(|v| v == "1"),
        };
        lab.add_ns(&lab.switch_ns)?;
        netns::bridge(&lab.switch_ns, "sw0")?;
        Ok(lab)
    }

    /// The namespace name for a role (`hA`, `app`, `cl`).
    pub fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub(crate) fn add_ns(&self, ns: &str) -> Result<()> {
        netns::add(ns)?;
        self.inner.lock().unwrap().namespaces.push(ns.to_string());
        Ok(())
    }

    /// A working directory for one part of the lab.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Plugs namespace `ns` into the switch: its end is named `dev`, the switch's `p-<role>`.
    pub(crate) fn plug(&self, role: &str, ns: &str, dev: &str) -> Result<()> {
        let port = format!("p-{role}");
        netns::veth(&self.switch_ns, &port, ns, dev)?;
        netns::ip(&self.switch_ns, &["link", "set", &port, "master", "sw0"])?;
        Ok(())
    }

    /// A plain node (appliance, client): a namespace with `eth0` on the switch at `ip`.
    pub fn node(&self, role: &str, ip: Ipv4Addr) -> Result<Node> {
        let ns = self.ns_name(role);
        self.add_ns(&ns)?;
        self.plug(role, &ns, "eth0")?;
        netns::add_addr(&ns, "eth0", ip, SUBNET_PREFIX)?;
        Ok(Node {
            role: role.into(),
            ns,
            ip,
        })
    }

    /// A node with `eth0` on the switch and no address: a DHCP client's machine.
    pub fn bare_node(&self, role: &str) -> Result<Node> {
        let ns = self.ns_name(role);
        self.add_ns(&ns)?;
        self.plug(role, &ns, "eth0")?;
        Ok(Node {
            role: role.into(),
            ns,
            ip: Ipv4Addr::UNSPECIFIED,
        })
    }

    /// A node with `eth0` and no address, on a segment of its own behind `router`: a veth
    /// pair whose other end is `router`'s `dev` (a relay's or router's second interface).
    pub fn behind(&self, role: &str, router: &Node, dev: &str) -> Result<Node> {
        let ns = self.ns_name(role);
        self.add_ns(&ns)?;
        netns::veth(&router.ns, dev, &ns, "eth0")?;
        Ok(Node {
            role: role.into(),
            ns,
            ip: Ipv4Addr::UNSPECIFIED,
        })
    }

    /// Makes the lab switch drop `pct` percent of the frames it forwards, at random, both ways
    /// (nftables in the switch's namespace; this machine's kernel has no netem). 0 stops it.
    pub fn lossy_switch(&self, pct: u32) -> Result<()> {
        let _ = self.exec(
            &self.switch_ns,
            "nft",
            &["delete", "table", "bridge", "lossy"],
        );
        if pct == 0 {
            return Ok(());
        }
        let rules = format!(
            "table bridge lossy {{\n  chain forward {{\n    type filter hook forward priority 0;\n    \
             numgen random mod 100 < {pct} counter drop\n  }}\n}}\n"
        );
        let file = self.dir.join("lossy.nft");
        std::fs::write(&file, rules)?;
        self.exec(&self.switch_ns, "nft", &["-f", &file.display().to_string()])?;
        Ok(())
    }

    /// How many frames the lossy switch dropped so far.
    pub fn switch_drops(&self) -> Result<u64> {
        let out = self.exec(
            &self.switch_ns,
            "nft",
            &["list", "table", "bridge", "lossy"],
        )?;
        let n = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok());
        n.ok_or_else(|| anyhow::anyhow!("no counter in {out}"))
    }

    pub fn client(&self) -> Result<Node> {
        self.node("cl", CLIENT_IP)
    }

    /// Starts `cmd` and keeps it until the lab ends.
    pub fn track(&self, name: &str, cmd: &mut std::process::Command) -> Result<u32> {
        let log = self.dir.join(format!("{name}.log"));
        let t = Tracked::spawn(name, cmd, &log)?;
        let pid = t.pid();
        self.inner.lock().unwrap().procs.push(t);
        Ok(pid)
    }

    /// Stops one tracked process (by the PID `track` returned) and forgets it.
    pub fn stop(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut inner = self.inner.lock().unwrap();
        let i = inner.procs.iter().position(|p| p.pid() == pid)?;
        let mut t = inner.procs.remove(i);
        drop(inner);
        t.stop(Duration::from_secs(5))
    }

    /// True if the tracked process with this PID has exited (it is then reaped).
    pub fn has_exited(&self, pid: u32) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.procs.iter_mut().find(|p| p.pid() == pid) {
            Some(p) => p.exited().is_some(),
            None => true,
        }
    }

    /// PIDs of everything the lab tracks.
    pub fn pids(&self) -> Vec<u32> {
        self.inner
            .lock()
            .unwrap()
            .procs
            .iter()
            .map(|p| p.pid())
            .collect()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.inner.lock().unwrap().namespaces.clone()
    }

    /// Runs a program inside a node's namespace and returns its stdout.
    pub fn exec(&self, ns: &str, prog: &str, args: &[&str]) -> Result<String> {
        let out = crate::sys::run(netns::exec(ns, prog).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fetches `url` with curl from inside `ns` (the real client), returning the body.
    pub fn curl(&self, ns: &str, url: &str) -> Result<String> {
        self.exec(ns, "curl", &["-sS", "--fail", "--max-time", "3", url])
    }

    /// The last sequence number the lab's disk guest at `ip` reported as on its disk (its
    /// `nm_disk` writer's `/seq`), asked from `ns` within `within`; None while it does not
    /// answer.
    pub fn disk_seq(&self, ns: &str, ip: Ipv4Addr, within: std::time::Duration) -> Option<u64> {
        self.exec(
            ns,
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                &within.as_secs().to_string(),
                &format!("http://{ip}/seq"),
            ],
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "lab {} kept (NETMIGRATE_LAB_KEEP=1); remove it with `netmigrate-lab cleanup --all`",
                self.prefix
            );
            // Leave the processes running too (Tracked stops them when dropped).
            let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            for p in inner.procs.drain(..) {
                std::mem::forget(p);
            }
            return;
        }
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        // Newest first: guests before the switches they hang on.
        while let Some(mut p) = inner.procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        for ns in inner.namespaces.drain(..).rev() {
            netns::delete(&ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

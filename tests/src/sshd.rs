//! A real OpenSSH server per host namespace, with keys generated for the run: the lab's client
//! key (what the appliance logs in with) and one host key per host (what it pins).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::Lab;
use crate::netns;
use crate::sys::{sh, wait_for};

/// An ed25519 key pair on disk.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    /// The public key line, "ssh-ed25519 AAAA... comment".
    pub public: String,
}

pub fn keygen(path: &Path, comment: &str) -> Result<KeyPair> {
    if !path.exists() {
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                &path.display().to_string(),
            ],
        )?;
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", path.display()))?
        .trim()
        .to_string();
    Ok(KeyPair {
        private: path.to_path_buf(),
        public,
    })
}

impl Lab {
    /// The key the appliance (and tests) log in to hosts with.
    pub fn client_key(&self) -> Result<KeyPair> {
        let dir = self.subdir("keys")?;
        keygen(
            &dir.join("lab_ed25519"),
            &format!("netmigrate-lab-{}", self.prefix),
        )
    }
}

/// Where each lab node's own disks are, as its SSH sessions see them (the directory `disks` of
/// the node's lab directory, bound there in sshd's mount namespace).
pub const LOCAL_DISKS: &str = "/var/lib/netmigrate-lab/disks";

/// Starts sshd inside `ns` on `ip:22`, accepting `client` for root; returns the host key. Its
/// sessions' LOCAL_DISKS is the node's `disks` directory, or, with `storage_mib`, a file system
/// of that size of its own (seen by its sessions only, gone with sshd).
pub(crate) fn start(
    lab: &Lab,
    ns: &str,
    role: &str,
    ip: Ipv4Addr,
    storage_mib: Option<u32>,
) -> Result<KeyPair> {
    let dir = lab.subdir(&format!("{role}/sshd"))?;
    let host_key = keygen(
        &dir.join("ssh_host_ed25519_key"),
        &format!("{role}-hostkey"),
    )?;
    let client = lab.client_key()?;
    let auth = dir.join("authorized_keys");
    std::fs::write(&auth, format!("{}\n", client.public))?;
    // Tools a test puts in the host's bin/ come first on its PATH (fault injection).
    let bin = lab.subdir(&format!("{role}/bin"))?;
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress {ip}:22\n\
             HostKey {hk}\n\
             PidFile none\n\
             AuthorizedKeysFile {auth}\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             # the run directory lives under /tmp, which is world-writable\n\
             StrictModes no\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n\
             SetEnv PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
            bin = bin.display(),
            hk = host_key.private.display(),
            auth = auth.display(),
        ),
    )?;
    // Privilege separation needs this directory; systemd normally makes it.
    std::fs::create_dir_all("/run/sshd")?;
    // Each node its own local storage at one path, as real hosts have: sshd (and all that its
    // sessions start, QEMU included) in a mount namespace of its own, where LOCAL_DISKS is the
    // node's `disks` directory.
    let disks = lab.subdir(&format!("{role}/disks"))?;
    std::fs::create_dir_all(LOCAL_DISKS)?;
    let mut cmd = netns::exec(ns, "unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "if [ -n \"$4\" ]; then mount -t tmpfs -o size=\"$4\"m lab-disks \"$2\"; \
             else mount --bind \"$1\" \"$2\"; fi && exec /usr/sbin/sshd -D -e -f \"$3\"",
        )
        .arg("sh")
        .arg(&disks)
        .arg(LOCAL_DISKS)
        .arg(&cfg)
        .arg(storage_mib.map(|m| m.to_string()).unwrap_or_default());
    let pid = lab.track(&format!("{role}-sshd"), &mut cmd)?;
    wait_for(
        &format!("sshd on {ip}:22 in {ns}"),
        Duration::from_secs(10),
        || {
            if lab.has_exited(pid) {
                return Some(false);
            }
            let listening = netns::exec(ns, "ss")
                .args(["-Hltn", &format!("src {ip}:22")])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            listening.then_some(true)
        },
    )
    .and_then(|ok| {
        if ok {
            Ok(())
        } else {
            anyhow::bail!(
                "sshd exited at start; see {}",
                lab.dir.join(format!("{role}-sshd.log")).display()
            )
        }
    })?;
    Ok(host_key)
}

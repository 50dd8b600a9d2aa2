//! Hypervisor drivers: what the migration engine asks of a host, whatever runs on it. One
//! driver per hypervisor kind; the engine never knows which one it talks to.

pub mod disk;
#[cfg(test)]
pub mod fake;
pub mod qemu;
pub mod xen;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{HostConfig, HypervisorKind};
use crate::inventory::link::Link;
pub use disk::{Disk, DiskBus, DiskFormat, DiskUsage};

/// A VM as the appliance keeps it (in state, as JSON): enough to start it on any host of its
/// hypervisor kind. Paths are as the hosts see them (shared storage, or the same files on each).
/// A definition from before `disks` (one shared raw `disk`) still loads, as that one disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct VmDef {
    pub name: String,
    pub mem_mib: u32,
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Its NIC's MAC ("52:54:00:..."), kept across moves unless a move asks for a new one.
    pub mac: String,
    /// Its address, when known: the probe's and DNS's default.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// VLAN tag of its switch port.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Traffic towards the VM limited to this many kbit/s (a linux-htb QoS on its port).
    #[serde(default)]
    pub rate_kbps: Option<u32>,
    /// Direct kernel boot: kernel, initrd, command line.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub append: Option<String>,
    /// Its disks, in the order the guest sees them; it boots from the first when it has no
    /// kernel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Xen only: the kind of guest (PVH when not given). QEMU ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_type: Option<GuestType>,
    /// A VM someone else started, made managed as it ran (`vm adopt`): what its driver keeps
    /// of how it was found instead of making its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
}

/// How an adopted VM was found: its port's name on the host it runs on (its operator's, until
/// it first moves), and (QEMU) its own command line, which a target starts it with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adopted {
    /// Its tap and switch port on `host`, under the name its operator gave it; once moved,
    /// `nm-NAME`, as on every other host.
    pub port: String,
    /// QEMU: its command line as it was started (argv\[0\] first). A target starts it so,
    /// with the driver's own QMP socket, pid file and daemonizing in place of its operator's,
    /// its tap scripts off (the switch plugs the port) and its console to a file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
    /// Where it was found, then where it runs since its last move.
    pub host: String,
}

/// How a Xen guest runs: paravirtualized, PVH (paravirtualized in a hardware container), or
/// fully virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    Pv,
    Pvh,
    Hvm,
}

impl GuestType {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Pv => "pv",
            GuestType::Pvh => "pvh",
            GuestType::Hvm => "hvm",
        }
    }
}

/// The driver for host `h`, over its link: the one place a backend is chosen. A new backend
/// is a module beside these and one line here.
pub fn new(h: &HostConfig, link: Arc<dyn Link>) -> Box<dyn Hypervisor> {
    match h.hypervisor {
        HypervisorKind::Qemu => Box::new(qemu::Qemu::new(h.clone(), link)),
        HypervisorKind::Xen => Box::new(xen::Xen::new(h.clone(), link)),
        #[cfg(test)]
        HypervisorKind::Fake => Box::new(fake::Fake::new(h.clone(), link)),
    }
}

impl Serialize for VmDef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        VmDef::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for VmDef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let old = v.as_object_mut().and_then(|o| o.remove("disk"));
        let mut def = VmDef::deserialize(v).map_err(D::Error::custom)?;
        match old {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(path)) if def.disks.is_empty() => def.disks.push(Disk {
                path,
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                shared: true,
            }),
            Some(_) => {
                return Err(D::Error::custom(
                    "`disk` (a path, as definitions had it) and `disks` both given: keep `disks`",
                ))
            }
        }
        Ok(def)
    }
}

fn one() -> u32 {
    1
}

/// Runs `script` on the host over a new SSH session; a non-zero exit becomes `err` of the last
/// line it printed on stderr, with the status.
pub(crate) async fn exec_checked(
    conn: &dyn crate::inventory::link::Link,
    script: &str,
    timeout: Duration,
    err: impl Fn(String) -> DriverError,
) -> Result<String, DriverError> {
    let out = conn
        .exec(script, timeout)
        .await
        .map_err(|e| err(e.to_string()))?;
    if out.status != Some(0) {
        return Err(err(last_words(&out.stderr, out.status)));
    }
    Ok(out.stdout)
}

/// The last line of an error output, with the exit status.
pub(crate) fn last_words(stderr: &str, status: Option<u32>) -> String {
    format!(
        "{} (exit {})",
        stderr
            .trim()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed"),
        status.map_or("?".into(), |s| s.to_string())
    )
}

impl VmDef {
    /// Its switch port / tap name (at most 15 bytes, as Linux wants) where the driver names it:
    /// `nm-NAME`.
    pub fn port(&self) -> String {
        let mut p = format!("nm-{}", self.name);
        p.truncate(15);
        p
    }

    /// Its switch port / tap name on `host`: an adopted VM's own name on the host it was found
    /// on (until it moves), `port()` everywhere else.
    pub fn port_on(&self, host: &str) -> String {
        match &self.adopted {
            Some(a) if a.host == host => a.port.clone(),
            _ => self.port(),
        }
    }

    /// Whether its port on `host` has a name its operator chose (perhaps another's there).
    pub fn foreign_port_on(&self, host: &str) -> bool {
        self.port_on(host) != self.port()
    }

    /// The definition once it runs on `host` after a move: an adopted VM's port is the
    /// driver's own name there.
    pub fn moved_to(&self, host: &str) -> VmDef {
        let mut d = self.clone();
        if let Some(a) = d.adopted.as_mut() {
            a.port = self.port();
            a.host = host.to_string();
        }
        d
    }

    /// Checks what a driver would otherwise trip over later.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!(
                "name `{}`: use letters, digits, '-' and '_' (at most 64)",
                self.name
            ));
        }
        if self.mac.parse::<crate::config::values::Mac>().is_err() {
            return Err(format!(
                "mac `{}`: expected six hex bytes like 52:54:00:12:34:56",
                self.mac
            ));
        }
        if !(96..=1 << 20).contains(&self.mem_mib) {
            return Err(format!(
                "mem_mib {}: between 96 and 1048576 (a Debian kernel needs 96 MiB to boot)",
                self.mem_mib
            ));
        }
        if !(1..=256).contains(&self.vcpus) {
            return Err(format!("vcpus {}: between 1 and 256", self.vcpus));
        }
        if let Some(v) = self.vlan {
            if !(1..=4094).contains(&v) {
                return Err(format!("vlan {v}: between 1 and 4094"));
            }
        }
        Disk::check_all(&self.disks)?;
        let own_args = self
            .adopted
            .as_ref()
            .is_some_and(|a| !a.qemu_args.is_empty());
        if self.kernel.is_none() && self.disks.is_empty() && !own_args {
            return Err("nothing to boot: give a kernel (and initrd) or a disk".into());
        }
        Ok(())
    }

    /// Its disks on each host's own storage: those a move carries.
    pub fn local_disks(&self) -> Vec<&Disk> {
        self.disks.iter().filter(|d| !d.shared).collect()
    }
}

/// Where a VM stands on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// No process (or domain) for it on this host.
    Absent,
    Running,
    Paused,
    /// Waiting for, or loading, an incoming migration.
    Incoming,
    /// Its state was sent away; the process lingers until stopped.
    Migrated,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{host}: {reason}")]
    Host { host: String, reason: String },
    #[error("{host}: {vm}: {reason}")]
    Vm {
        host: String,
        vm: String,
        reason: String,
    },
    /// A live migration broke off and the hypervisor resumed the VM at the source, untouched:
    /// the cold path may still move it.
    #[error("{host}: {vm}: {reason}")]
    LiveFailed {
        host: String,
        vm: String,
        reason: String,
    },
    #[error("{host}: {vm}: timed out after {after:?} {what}")]
    Timeout {
        host: String,
        vm: String,
        what: String,
        after: Duration,
    },
}

/// How a live migration ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResult {
    /// The hypervisor's own figure for the pause at switch-over.
    pub downtime_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub bytes: Option<u64>,
}

/// What the engine asks of a host. Each call acts on one VM and returns once it has taken
/// effect (or failed); none leaves the VM in two places.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The host this driver talks to.
    fn host(&self) -> &str;
    /// Whether a VM's NIC exists only once its state is loaded (Xen makes the domain and its
    /// vif in the load): the engine then puts the target's port on the switch before the move
    /// without its device, the driver's load lets the VM run only once the switch has taken
    /// the device, and the engine checks after the load that it did.
    fn nic_made_by_load(&self) -> bool {
        false
    }
    /// Why `vm` cannot live-migrate from this host to `target`, if it cannot: the move then
    /// takes the cold path and records why.
    async fn live_refusal(&self, _vm: &VmDef, _target: &dyn Hypervisor) -> Option<String> {
        None
    }
    /// Whether this host can be driven at all (for Xen: its tools match its hypervisor).
    async fn check(&self) -> Result<(), DriverError> {
        Ok(())
    }
    /// Where `vm` stands on this host.
    async fn state(&self, vm: &VmDef) -> Result<RunState, DriverError>;
    /// Starts `vm` here, running. Its NIC is the port `vm.port_on(host)`, which the caller puts on the
    /// switch (after this returns: the port carries frames once the hypervisor holds it).
    async fn start(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Readies this host to receive `vm` (paused, vCPUs stopped, nothing loaded yet): for QEMU a
    /// process waiting for its incoming stream, so its start is off the critical path.
    async fn prepare_incoming(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Stops `vm`'s vCPUs; it stays here, paused.
    async fn pause(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Lets a paused (or just restored) `vm` run.
    async fn resume(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Saves paused `vm`'s state into the stdin of `sink` (a shell command on this host, e.g.
    /// an upload to the image store); returns once the state is saved.
    async fn save_to(&self, vm: &VmDef, sink: &str, timeout: Duration) -> Result<(), DriverError>;
    /// Loads `vm`'s state, prepared by `prepare_incoming`, from the stdout of `source` (a shell
    /// command on this host); returns once loaded (paused).
    async fn restore_from(
        &self,
        vm: &VmDef,
        source: &str,
        timeout: Duration,
    ) -> Result<(), DriverError>;
    /// Live-migrates running `vm` to `target` (prepared by `prepare_incoming` there, listening
    /// on `port`), pausing it at most about `downtime`; on failure it keeps running here.
    async fn live_migrate(
        &self,
        vm: &VmDef,
        target: std::net::IpAddr,
        port: u16,
        downtime: Duration,
        timeout: Duration,
    ) -> Result<LiveResult, DriverError>;
    /// Stops an outgoing migration of `vm` if one runs; `vm` keeps running here.
    async fn abort_outgoing(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Readies a prepared target for a live migration: listens on `port` of its address.
    async fn listen_incoming(&self, vm: &VmDef, port: u16) -> Result<(), DriverError>;
    /// Makes the VM tell the network where it now is (gratuitous ARP / RARP from its NIC).
    async fn announce(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// Ends `vm` here (its process or domain); nothing is left of it on this host.
    async fn destroy(&self, vm: &VmDef) -> Result<(), DriverError>;
    /// The host's own tools for its local disks, over its link: what the disk calls below use
    /// unless a driver has its own way.
    fn host_disks(&self) -> disk::HostDisks<'_>;
    /// The sizes of `vm`'s local disks here, in order (None for one that is not here).
    async fn disk_usage(&self, vm: &VmDef) -> Result<Vec<Option<DiskUsage>>, DriverError> {
        self.host_disks().usage(vm).await
    }
    /// Fails, saying why, where `vm`'s local disks could not be made here like `like`: one is
    /// here already (nothing is ever overwritten), or there is no room for their data.
    async fn check_disks(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        self.host_disks().check(vm, like).await
    }
    /// Makes empty copies of `vm`'s local disks here, of `like`'s sizes and their formats, as
    /// `check_disks` allows; nothing is left made on failure.
    async fn make_disks(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        self.host_disks().make(vm, like).await
    }
    /// Removes `vm`'s local disks here. Only for copies this host should not keep: the
    /// engine's partial target copies, or a source's once the VM runs on its target.
    async fn remove_disks(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host_disks().remove(vm).await
    }
    /// Whether a live move from this host carries `vm`'s local disks (a mirror onto the
    /// target's export while the VM runs); where not, a live request with local disks takes
    /// the cold path.
    fn mirrors_disks(&self) -> bool {
        false
    }
    /// Target: serves prepared `vm`'s local disks (their empty copies, made before it was
    /// prepared) on `port` of its address, writable, for the source's mirror.
    async fn export_disks(&self, vm: &VmDef, _port: u16) -> Result<(), DriverError> {
        Err(self.no_mirror(vm))
    }
    /// Source: mirrors running `vm`'s local disks onto `target`'s export on `port`; returns
    /// once every mirror is in sync, from when on each write of the guest reaches both copies
    /// before it completes. On failure the mirrors are gone and the VM runs on, untouched.
    async fn mirror_disks(
        &self,
        vm: &VmDef,
        _target: std::net::IpAddr,
        _port: u16,
        _timeout: Duration,
    ) -> Result<(), DriverError> {
        Err(self.no_mirror(vm))
    }
    /// Source: ends `vm`'s mirrors, if any run: after the switch-over the target's copies are
    /// whole; before it, they are left as they are, for the caller to remove.
    async fn end_mirror(&self, _vm: &VmDef) -> Result<(), DriverError> {
        Ok(())
    }
    /// Target: stops serving `vm`'s disks, if it does.
    async fn end_export(&self, _vm: &VmDef) -> Result<(), DriverError> {
        Ok(())
    }
    /// Why a cold move from this host cannot carry `vm`'s local disks in its stream, ahead of
    /// its saved state, if it cannot; None where it can (its disks must hold still once its
    /// save is over, every write it acknowledged in their files).
    fn cold_disks_refusal(&self, _vm: &VmDef) -> Option<String> {
        Some("its hypervisor's driver cannot carry them on the cold path yet".into())
    }
    /// Source: a shell command that writes `vm`'s local disks to its stdout, framed, then
    /// copies its stdin (the saved state) after them (`disk::send_script`).
    async fn send_disks(&self, vm: &VmDef) -> Result<String, DriverError> {
        Ok(disk::send_script(
            &vm.local_disks(),
            self.host_disks().run_dir,
        ))
    }
    /// Target: a shell command that writes the disks of `send_disks`'s stream on its stdin into
    /// their copies here (made by `make_disks`), appends `disks-ok` to `done`, then copies the
    /// state to its stdout (`disk::receive_script`).
    async fn receive_disks(&self, vm: &VmDef, done: &str) -> Result<String, DriverError> {
        Ok(disk::receive_script(&vm.local_disks(), done))
    }
    /// Reads `name`, a VM running here that the appliance did not start, and returns its
    /// definition (`adopted` set), having made it reachable the way the driver reaches its
    /// own; refused, saying why, where it cannot be driven so (`shared`: paths of its disks
    /// that are on shared storage). It keeps running, untouched.
    async fn adopt(&self, name: &str, _shared: &[String]) -> Result<VmDef, DriverError> {
        Err(DriverError::Host {
            host: self.host().to_string(),
            reason: format!("{name}: this host's driver cannot adopt VMs yet"),
        })
    }
    /// The error of a disk call this driver does not have.
    fn no_mirror(&self, vm: &VmDef) -> DriverError {
        DriverError::Vm {
            host: self.host().to_string(),
            vm: vm.name.clone(),
            reason: "this host's driver cannot mirror disks".into(),
        }
    }
    /// Gives running `vm` a NIC with MAC `mac` on the same port, in place of its own; the
    /// guest sees its NIC go and a new one come (it must take up hot-plugged NICs). Done when
    /// the NIC with that MAC is there; calling it again then changes nothing.
    async fn replace_nic(&self, vm: &VmDef, mac: &str) -> Result<(), DriverError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::inventory::link::LocalLink;

    /// A new backend is a module under `hypervisor/` and one line in its factory: the fake one is
    /// made there from a host's config, like the real ones.
    #[test]
    fn the_factory_makes_each_backend_from_the_host_config() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (kind, nic_by_load) in [("qemu", false), ("xen", true), ("fake", false)] {
            let text = format!(
                "state_dir = \"{}\"\n[[host]]\nname = \"factory-{kind}\"\naddress = \"192.0.2.9\"\n\
                 hypervisor = \"{kind}\"\nssh_key = \"{}\"\n",
                dir.path().display(),
                key.display()
            );
            let cfg = Config::parse(&dir.path().join("c.toml"), &text).unwrap();
            let h = &cfg.hosts[0];
            let link: Arc<dyn Link> = Arc::new(LocalLink {
                host: h.name.clone(),
            });
            let d = new(h, link);
            assert_eq!(d.host(), h.name);
            assert_eq!(d.nic_made_by_load(), nic_by_load, "{kind}");
        }
    }

    /// A definition stored before `disks` (one shared raw `disk`) loads as that one disk, and
    /// is written back in the new form.
    #[test]
    fn an_old_definition_with_one_disk_still_loads() {
        let old = r#"{"name":"vm1","mem_mib":128,"mac":"52:54:00:00:00:01","disk":"/srv/vm1.img"}"#;
        let d: VmDef = serde_json::from_str(old).unwrap();
        assert_eq!(
            d.disks,
            vec![Disk {
                path: "/srv/vm1.img".into(),
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                shared: true
            }]
        );
        let again: VmDef = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);
        assert!(d.check().is_ok());
        assert!(d.local_disks().is_empty());
        let both = r#"{"name":"v","mem_mib":128,"mac":"52:54:00:00:00:01","disk":"/a","disks":[{"path":"/b"}]}"#;
        let e = serde_json::from_str::<VmDef>(both).unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        let typo = r#"{"name":"v","mem_mib":128,"mac":"52:54:00:00:00:01","disks":[{"path":"/b","fromat":"raw"}]}"#;
        assert!(serde_json::from_str::<VmDef>(typo).is_err());
    }
}

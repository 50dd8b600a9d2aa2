//! The appliance's configuration: one TOML file, every key checked, every problem reported with
//! its file, line and key path (`FILE:LINE: key.path: what is wrong`).

mod load;
mod reader;
pub mod values;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

pub use values::Mac;

/// Where the appliance keeps its state when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netmigrate";

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this was read from (relative paths inside it are resolved against its folder).
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub api: ApiConfig,
    pub networks: Vec<Network>,
    pub reservations: Vec<Reservation>,
    pub dns: DnsConfig,
    pub ftp: FtpConfig,
    pub router: Option<RouterConfig>,
    pub placement: PlacementConfig,
    pub migration: MigrationConfig,
    pub dhcp: DhcpConfig,
    pub hosts: Vec<HostConfig>,
    /// Boot files by TFTP and HTTP; on when `[boot]`, `[dhcp.pxe]` or `[provisioning]` is set.
    pub boot: Option<BootConfig>,
    pub provisioning: Option<ProvisioningConfig>,
}

/// `[boot]`: boot files served read-only from `dir`, on each attached network's address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootConfig {
    pub dir: PathBuf,
    /// TFTP on port 69.
    pub tftp: bool,
    /// HTTP for boot files, iPXE scripts and enrolment call backs; 0: off.
    pub http_port: u16,
}

/// `[provisioning]`: machines that network-boot on `network` are discovered, accepted (by
/// these rules or by the operator), booted into the installer and enrolled as hosts.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisioningConfig {
    pub network: String,
    /// Addresses reserved for enrolled hosts, first and last; outside the network's dhcp_range.
    pub pool: (Ipv4Addr, Ipv4Addr),
    /// Host name template: `{n}` a number, `{mac}` the MAC's hex.
    pub hostname: String,
    pub rules: netmigrate_provisioning::Rules,
    /// Machines boot the installer once to report their hardware before they are accepted
    /// (MAAS's commissioning); the rules' requirements need it.
    pub commission: bool,
    /// The installer's kernel and initramfs, under the boot directory.
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// How long an installer's one-time token stays good.
    #[serde(serialize_with = "ser_duration")]
    pub token_ttl: Duration,
    /// What an enrolled host becomes: `[provisioning.host]`, the keys of a `[[host]]` but its
    /// name and address (those come from the template and the pool).
    pub host: HostConfig,
    /// Host images machines are deployed with (`[[provisioning.profile]]`).
    pub profiles: Vec<Profile>,
    /// The profile machines are deployed with when neither the operator (`hosts accept
    /// --profile`) nor anything else says (`default_profile`); None: they run the installer
    /// from RAM and are enrolled as it runs.
    pub profile: Option<String>,
    /// How long a deployment may take from the installer's start to the deployed system's
    /// call back (each of its two stages); a machine that is silent longer has failed.
    #[serde(serialize_with = "ser_duration")]
    pub deploy_timeout: Duration,
}

impl ProvisioningConfig {
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }
}

/// `[[provisioning.profile]]`: a host image (`make host-image`) and what a machine deployed
/// with it becomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    /// The image under the boot directory ("images/xen/host.img"); its SHA-256 in the file
    /// beside it with `.sha256` added, as `make host-image` writes it.
    pub image: String,
    /// The hypervisor the deployed host runs (the `[provisioning.host]` template's otherwise).
    pub hypervisor: HypervisorKind,
    /// The disk it is written to, by name ("sda") or serial; None: the first that holds it.
    pub disk: Option<String>,
}

/// The DHCP server's settings beyond each network's range.
#[derive(Debug, Clone, Serialize)]
pub struct DhcpConfig {
    /// Run on each lease change as `SCRIPT add|old|del MAC IP [HOSTNAME]` (dnsmasq's
    /// dhcp-script), one at a time.
    pub script: Option<PathBuf>,
    /// Ping an address the server has no record of before offering it (as dnsmasq does).
    pub conflict_check: bool,
    /// How long to wait for an answer to that ping.
    #[serde(serialize_with = "ser_duration")]
    pub conflict_wait: Duration,
    /// How often a DISCOVER looks for other DHCP servers on the served networks (their
    /// answers are listened for all the time); `None`: only listen.
    #[serde(serialize_with = "ser_opt_duration")]
    pub rogue_probe: Option<Duration>,
    pub pxe: Option<PxeConfig>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            script: None,
            conflict_check: true,
            conflict_wait: Duration::from_millis(500),
            rogue_probe: Some(Duration::from_secs(60)),
            pxe: None,
        }
    }
}

/// `[dhcp.pxe]`: the boot file a network-booting client gets, by firmware.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PxeConfig {
    /// The TFTP server; the appliance's own address on the client's network when not set.
    pub next_server: Option<Ipv4Addr>,
    /// Legacy BIOS PXE (client architecture 0).
    pub bios: Option<String>,
    /// x86-64 UEFI (architectures 7 and 9).
    pub uefi: Option<String>,
    /// ARM64 UEFI (architecture 11).
    pub uefi_arm64: Option<String>,
    /// UEFI HTTP boot (vendor class `HTTPClient`, architecture 16): a file under the boot
    /// directory, offered as its URL on the boot HTTP server.
    pub uefi_http: Option<String>,
    /// Where a client that is already iPXE (user class "iPXE") chains to.
    pub ipxe_script: Option<String>,
    /// Where `[dhcp.pxe]` is in the config file.
    #[serde(skip)]
    pub span: std::ops::Range<usize>,
}

/// How batches of moves run.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationConfig {
    /// Moves in flight that involve one host (as source or target).
    pub max_per_host: usize,
    /// Moves in flight between one pair of hosts.
    pub max_per_link: usize,
    /// Live: the longest pause allowed at switch-over, when a request names none.
    #[serde(serialize_with = "ser_duration")]
    pub downtime: Duration,
    /// Live: how long pre-copy may run before the move takes the cold path, when a request
    /// names none.
    #[serde(serialize_with = "ser_duration")]
    pub live_timeout: Duration,
    /// Run after each move: `SCRIPT moved VM FROM TO MAC IP` (dnsmasq's dhcp-script style).
    pub after_move: Option<PathBuf>,
    /// How long the script may take before it is killed.
    #[serde(serialize_with = "ser_duration")]
    pub hook_timeout: Duration,
    /// A move that failed and was rolled back (the VM running on its source, untouched) is
    /// tried again this many times.
    pub retries: u32,
    /// How often the built-in probe opens a connection to a moving VM's service.
    #[serde(serialize_with = "ser_duration")]
    pub probe_interval: Duration,
    /// Live moves with local disks: how long the disks' mirror may take to come in sync.
    #[serde(serialize_with = "ser_duration")]
    pub mirror_timeout: Duration,
    /// What becomes of a moved VM's local disks on its source once it runs on the target.
    pub source_disks: SourceDisks,
}

/// A moved VM's local disks on its source, once it runs on the target from its copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceDisks {
    /// Left where they are (the operator removes them).
    Keep,
    /// Removed.
    Remove,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            max_per_host: 1,
            max_per_link: 1,
            downtime: Duration::from_millis(100),
            live_timeout: Duration::from_secs(60),
            after_move: None,
            hook_timeout: Duration::from_secs(10),
            retries: 0,
            probe_interval: Duration::from_millis(10),
            mirror_timeout: Duration::from_secs(3600),
            source_disks: SourceDisks::Keep,
        }
    }
}

/// How hosts' capacity is counted when placing VMs.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementConfig {
    /// vCPUs a host may carry per core.
    pub cpu_overcommit: f64,
    /// Percent of each target kept free by default.
    pub headroom_pct: u8,
    /// Facts older than this are not planned with.
    #[serde(serialize_with = "ser_duration")]
    pub stale_after: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            cpu_overcommit: 4.0,
            headroom_pct: 0,
            stale_after: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiConfig {
    /// Optional TCP listener; the unix socket in state_dir is always there.
    pub listen: Option<SocketAddr>,
    /// Bearer token required on the TCP listener.
    pub token_file: Option<PathBuf>,
}

/// One L2 segment the appliance serves: attached (its own interface and address there) or
/// reached through a DHCP relay agent.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    /// Empty for a relayed network.
    pub interface: String,
    /// The appliance's own address and the segment's prefix; for a relayed network, the relay
    /// agent's address (the clients' router) and the prefix.
    pub address: Ipv4Net,
    /// For a relayed network, the attached network whose interface its requests arrive on.
    pub via: Option<String>,
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    #[serde(serialize_with = "ser_duration")]
    pub lease_time: Duration,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reservation {
    pub network: String,
    pub mac: Option<Mac>,
    pub client_id: Option<String>,
    pub hostname: Option<String>,
    pub ip: Ipv4Addr,
}

/// The DNS server: authoritative for each network's `domain` (and its reverse zone).
#[derive(Debug, Clone, Serialize)]
pub struct DnsConfig {
    /// Port on each network's address (53).
    pub port: u16,
    /// TTL of the records that follow leases, hosts and VMs: low, since they move.
    #[serde(serialize_with = "ser_duration")]
    pub ttl: Duration,
    /// Where names outside the lab's zones are asked; none: such questions are REFUSED.
    pub forwarders: Vec<SocketAddr>,
    /// Notified of each change; the only ones allowed a zone transfer.
    pub secondaries: Vec<SocketAddr>,
    pub tsig_keys: Vec<TsigKey>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            port: 53,
            ttl: Duration::from_secs(60),
            forwarders: Vec::new(),
            secondaries: Vec::new(),
            tsig_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    pub secret_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct FtpConfig {
    /// Control port, on each network's address.
    pub port: u16,
    pub passive_ports: (u16, u16),
    /// Bytes the image store keeps free; uploads that would eat into it are refused.
    pub reserve_bytes: u64,
    /// Published generations kept per VM by `images gc`.
    pub keep: usize,
    /// FTPS certificate chain and key (PEM); when set, plain FTP is refused.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Hash downloads on the appliance too, instead of sending them with sendfile(2).
    pub verify_downloads: bool,
    /// zstd level for keeping published images compressed at rest (all but each VM's newest,
    /// which stays as it came for the next restore); None: not compressed.
    pub compress: Option<i32>,
}

impl Default for FtpConfig {
    fn default() -> Self {
        FtpConfig {
            port: 21,
            passive_ports: (50000, 50100),
            reserve_bytes: 1 << 30,
            keep: 3,
            tls: None,
            verify_downloads: false,
            compress: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterConfig {
    pub uplink: String,
    pub nat: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    Xen,
    Qemu,
    /// The engine's unit tests' backend (`hypervisor::fake`), built in tests only.
    #[cfg(test)]
    Fake,
}

impl HypervisorKind {
    /// The hypervisor a config (or a host's row) names: xen, qemu or kvm.
    pub fn parse(s: &str) -> Result<HypervisorKind, String> {
        match s {
            "xen" => Ok(HypervisorKind::Xen),
            "qemu" | "kvm" => Ok(HypervisorKind::Qemu),
            // The engine's unit tests drive fake hosts through the same factory.
            #[cfg(test)]
            "fake" => Ok(HypervisorKind::Fake),
            _ => Err(format!(
                "`{s}` is not a hypervisor netmigrate drives; use \"xen\" or \"qemu\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Xen => "xen",
            HypervisorKind::Qemu => "qemu",
            #[cfg(test)]
            HypervisorKind::Fake => "fake",
        }
    }
}

/// A host's SSH connect timeout (TCP, key exchange, login) unless its config says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// A hypervisor host; the appliance reaches it over SSH, nothing is installed on it.
#[derive(Debug, Clone, Serialize)]
pub struct HostConfig {
    pub name: String,
    pub address: IpAddr,
    pub ssh_port: u16,
    pub ssh_user: String,
    pub ssh_key: PathBuf,
    /// Pinned host key ("ssh-ed25519 AAAA..."); a host that shows another is refused.
    pub host_key: Option<String>,
    pub hypervisor: HypervisorKind,
    pub bridge: String,
    /// Its OVSDB socket ("unix:/path" or "tcp:ip:port"); ovs-vsctl's default when None.
    pub ovsdb: Option<String>,
    /// Where VM images live on the host (its free space is collected).
    pub image_dir: String,
    /// Where saved VM state goes on the host.
    pub save_dir: String,
    /// Where the appliance keeps its VMs' control sockets, pid files and logs on the host.
    pub run_dir: String,
    /// QEMU accelerators to try in order (`-machine accel=`).
    pub qemu_accel: String,
    /// How long an SSH connection to it may take (TCP, key exchange, login): a loaded host,
    /// or one nested under emulation, needs longer than the default.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
}

impl HostConfig {
    /// The directories whose free space the inventory reports.
    pub fn disk_dirs(&self) -> Vec<&str> {
        let mut v = vec![self.image_dir.as_str()];
        if self.save_dir != self.image_dir {
            v.push(self.save_dir.as_str());
        }
        v
    }
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&values::format_duration(*d))
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.key,
                self.message
            )
        }
    }
}

/// Every problem found in one config file, in line order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The file's text, or the one problem that it cannot be read.
fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })
}

impl Network {
    /// Whether `ip` may be reserved for a client here, or why not.
    pub fn reservable(&self, ip: Ipv4Addr) -> Result<(), String> {
        let n = self.address;
        if !n.contains(&ip) {
            Err(format!(
                "{ip} lies outside network `{}` ({}); pick an address inside it",
                self.name,
                n.trunc()
            ))
        } else if ip == n.network() || ip == n.broadcast() {
            Err(format!(
                "{ip} is the network's {} address",
                if ip == n.network() {
                    "network"
                } else {
                    "broadcast"
                }
            ))
        } else if ip == n.addr() {
            Err(format!(
                "{ip} is {} own address",
                if self.via.is_some() {
                    "the relay's"
                } else {
                    "the appliance's"
                }
            ))
        } else {
            Ok(())
        }
    }
}

impl Config {
    /// The attached network through which `n` is reached: itself, or its relay's `via`.
    pub fn attached<'a>(&'a self, n: &'a Network) -> Option<&'a Network> {
        match &n.via {
            None => Some(n),
            Some(v) => self
                .networks
                .iter()
                .find(|m| &m.name == v && m.via.is_none()),
        }
    }

    /// The appliance's address that clients of `n` talk to (its server identifier, and where
    /// it serves images and names).
    pub fn own_address(&self, n: &Network) -> Option<Ipv4Addr> {
        self.attached(n).map(|a| a.address.addr())
    }

    /// Reads and checks a config file; all problems are returned together.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse(path, &read(path)?)
    }

    /// Checks `src` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
        load::parse(path, src)
    }

    /// Just the state_dir a config file names, read leniently: a client must find the daemon
    /// (to `reload` it, say) even while the file has problems elsewhere.
    pub fn state_dir_of(path: &Path) -> Result<PathBuf, ConfigErrors> {
        Ok(load::state_dir_of(path, &read(path)?))
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    /// The image store's root.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("netmigrate.lock")
    }

    /// One line per section, for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let mut s = format!("state_dir {}\n", self.state_dir.display());
        for n in &self.networks {
            let range = n
                .dhcp_range
                .map(|(a, b)| format!("dhcp {a}-{b}"))
                .unwrap_or_else(|| "no dhcp range".into());
            let on = match &n.via {
                Some(v) => format!("via {v}, relay"),
                None => format!("on {}:", n.interface),
            };
            s.push_str(&format!(
                "network {} {on} {} {} lease {}{}\n",
                n.name,
                n.address,
                range,
                values::format_duration(n.lease_time),
                n.domain
                    .as_deref()
                    .map(|d| format!(" domain {d}"))
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!("{} reservation(s)\n", self.reservations.len()));
        for h in &self.hosts {
            s.push_str(&format!(
                "host {} {} ({}, ssh {}@{}:{}, key {})\n",
                h.name,
                h.address,
                h.hypervisor.as_str(),
                h.ssh_user,
                h.address,
                h.ssh_port,
                if h.host_key.is_some() {
                    "pinned"
                } else {
                    "not pinned"
                }
            ));
        }
        if let Some(r) = &self.router {
            s.push_str(&format!(
                "router: uplink {}, nat {}\n",
                r.uplink,
                if r.nat { "on" } else { "off" }
            ));
        }
        if let Some(l) = self.api.listen {
            s.push_str(&format!("api: tcp {l} (token required)\n"));
        }
        s
    }
}

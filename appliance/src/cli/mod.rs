//! The `netmigrate` command line. `serve` runs the daemon and `check-config` works offline; every
//! other verb is a client of the running daemon's API.

mod plot;
mod progress;
mod show;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::api::client::{Client, ClientError, Endpoint};
use crate::config::{Config, DEFAULT_STATE_DIR};
use crate::Error;

#[derive(Parser, Debug)]
#[command(
    name = "netmigrate",
    version,
    about = "Lab-cluster gateway appliance (router, DHCP, DNS, FTP image store) and VM migration controller",
    long_about = "netmigrate runs a lab cluster's network and moves its VMs.\n\n\
`netmigrate serve` runs the appliance; the other commands talk to it over its API: the unix \
socket STATE_DIR/api.sock (found with --config or --socket), or TCP with --url and a token.",
    after_help = "Environment: RUST_LOG sets the log filter of `serve` (default \"info\"); \
NETMIGRATE_CONFIG, NETMIGRATE_SOCKET, NETMIGRATE_URL and NETMIGRATE_TOKEN_FILE stand in for the options of the same name."
)]
pub struct Cli {
    /// The config file: what `serve` runs, and where clients find the daemon's socket
    /// (its state_dir).
    #[arg(
        short,
        long,
        global = true,
        env = "NETMIGRATE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// The daemon's API socket [default: /var/lib/netmigrate/api.sock].
    #[arg(long, global = true, env = "NETMIGRATE_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Talk to the daemon over TCP (its `api.listen`), e.g. 10.0.0.1:7070; needs --token-file.
    #[arg(long, global = true, env = "NETMIGRATE_URL", value_name = "HOST:PORT")]
    url: Option<String>,

    /// File holding the bearer token for --url.
    #[arg(
        long,
        global = true,
        env = "NETMIGRATE_TOKEN_FILE",
        value_name = "FILE"
    )]
    token_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the appliance in the foreground (systemd-friendly: logs to stderr, sd_notify,
    /// SIGTERM/SIGINT stop it gracefully, SIGHUP reloads the config).
    Serve,
    /// Check a config file offline. Prints every problem as `FILE:LINE: key: what is wrong` and
    /// exits 2, or prints a summary and exits 0.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Show the running appliance: version, uptime, config, state, networks, hosts.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the newest events (starts, reloads, changes), oldest first.
    Events {
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Make the running appliance re-read its config file; a bad file is reported and the
    /// running config stays (same as SIGHUP).
    Reload,
    /// The hypervisor hosts: status and the facts last collected over SSH.
    Hosts {
        #[command(subcommand)]
        action: Option<HostsCmd>,
        /// Only the machines that network-booted and wait to be accepted (provisioning).
        #[arg(long)]
        discovered: bool,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Decide where VMs go and in which order (nothing moves): each decision with its reason,
    /// and why every other target was not chosen. Uses the last collected facts.
    Plan {
        #[command(flatten)]
        plan: PlanArgs,
        /// Print JSON instead of steps.
        #[arg(long)]
        json: bool,
    },
    /// The image store: VMs' saved images by generation, with state, size and SHA-256.
    Images {
        #[command(subcommand)]
        action: Option<ImagesCmd>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The image store's FTP accounts.
    Ftp {
        #[command(subcommand)]
        action: FtpCmd,
    },
    /// The VMs found on the hosts at the last collection.
    Vms {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The VMs the appliance manages: define, start, stop, list, remove.
    Vm {
        #[command(subcommand)]
        action: VmCmd,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Move VMs to other hosts (live by default; cold when asked, or when live cannot
    /// converge). Each move is journaled and its service break measured.
    Migrate {
        #[command(flatten)]
        plan: PlanArgs,
        /// The paper's path: pause, save through the image store, restore on the target.
        #[arg(long, conflicts_with = "live")]
        cold: bool,
        /// Pre-copy between the hosts (the default).
        #[arg(long)]
        live: bool,
        /// Live: the longest pause allowed at switch-over (default: migration.downtime).
        #[arg(long)]
        downtime: Option<String>,
        /// Live: give up pre-copy after this many seconds and take the cold path (default:
        /// migration.live_timeout, 60 s).
        #[arg(long, value_name = "SECS")]
        live_timeout: Option<u64>,
        /// Probe each VM's address on this TCP port (default 80, an HTTP GET).
        #[arg(long, value_name = "PORT")]
        probe_port: Option<u16>,
        /// Do not probe the VMs' service.
        #[arg(long, conflicts_with = "probe_port")]
        no_probe: bool,
        /// Moves in flight involving one host (default: migration.max_per_host).
        #[arg(long, value_name = "N")]
        max_per_host: Option<usize>,
        /// Moves in flight between two hosts (default: migration.max_per_link).
        #[arg(long, value_name = "N")]
        max_per_link: Option<usize>,
        /// Start the remaining moves even after one did not complete.
        #[arg(long)]
        keep_going: bool,
        /// Give VM a new MAC on its target (repeatable); the appliance's DHCP keeps its address.
        /// The guest must take up a hot-plugged NIC.
        #[arg(long = "new-mac", value_name = "VM=MAC")]
        new_mac: Vec<String>,
        /// Print the batch as JSON instead of progress and a table.
        #[arg(long)]
        json: bool,
    },
    /// DHCP leases, with the server's counters.
    Leases {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// DNS: the zones, each record and where it came from (lease, reservation, host, VM,
    /// update), with the server's counters.
    Dns {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// DHCP reservations: the config file's and those made here (taken up at once, kept in
    /// the state).
    Reservations {
        #[command(subcommand)]
        action: Option<ReservationCmd>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Batches (the moves of one `migrate`), newest first, or one with its moves.
    Batches {
        id: Option<i64>,
        /// Draw the batch's service breaks over time (the paper's figures) into an SVG file.
        #[arg(long, value_name = "FILE.svg", requires = "id")]
        plot: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Migrations, newest first, or one with its journal of steps and their timing.
    Migrations {
        id: Option<i64>,
        /// Draw the VM's service break over time (the paper's figures) into an SVG file.
        #[arg(long, value_name = "FILE.svg", requires = "id")]
        plot: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ReservationCmd {
    /// Every reservation and where it is defined (the default).
    List,
    /// Reserve IP in NETWORK for the client known by a MAC, client id or host name.
    Add {
        ip: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        mac: Option<String>,
        /// Client identifier (option 61) as hex pairs, like 01:52:54:00:00:00:10.
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Remove the reservation of IP (made here; the config's are edited in the file).
    Rm {
        ip: String,
        /// Needed only when IP is reserved in more than one network.
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum VmCmd {
    /// Define (or redefine) a VM; it starts with `vm start`.
    Define {
        name: String,
        /// Memory, MiB.
        #[arg(long, default_value_t = 128)]
        mem: u32,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Its NIC's MAC, kept across moves.
        #[arg(long)]
        mac: String,
        /// Its address (the probe's and DNS's default).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// VLAN tag of its switch port.
        #[arg(long)]
        vlan: Option<u16>,
        /// Limit traffic towards it, kbit/s.
        #[arg(long)]
        rate_kbps: Option<u32>,
        /// Kernel to boot (a path on the hosts).
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        /// Kernel command line.
        #[arg(long)]
        append: Option<String>,
        /// A disk, in the order the guest sees them (the first boots a VM without a kernel):
        /// `PATH[,format=raw|qcow2][,bus=virtio|ide|scsi][,shared]`. A disk is on each host's
        /// own storage and moves with the VM, unless `shared` (the same file on every host).
        #[arg(long = "disk")]
        disks: Vec<crate::hypervisor::Disk>,
        /// Xen hosts: the guest's type (default pvh).
        #[arg(long = "type", value_enum)]
        guest_type: Option<crate::hypervisor::GuestType>,
    },
    /// Start a defined VM on a host.
    Start {
        name: String,
        #[arg(long = "on", required = true)]
        host: String,
    },
    /// Stop a VM wherever it runs.
    Stop { name: String },
    /// Forget a stopped VM's definition.
    Rm { name: String },
    /// Forget a VM without touching it: it runs on where it is, unmanaged (`vms` lists it).
    Release { name: String },
    /// Make a VM that runs on a host but was not started by the appliance (`vms` lists it
    /// unmanaged) managed, without touching it; then it moves like any VM.
    Adopt {
        name: String,
        #[arg(long = "on", required = true)]
        host: String,
        /// One of its disks that is on shared storage (the same file on every host): it stays
        /// where it is when the VM moves. The others are carried.
        #[arg(long = "shared")]
        shared: Vec<String>,
        /// Its address, where the appliance's neighbour table and leases do not know it (a
        /// static address the appliance never routed for).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// The managed VMs and where each runs.
    List,
}

/// What to plan: the VMs, the targets and placement's options (`plan` and `migrate`).
#[derive(clap::Args, Debug)]
struct PlanArgs {
    /// The VMs to move, in your order.
    #[arg(required = true)]
    pub vms: Vec<String>,
    /// Target hosts, in your order.
    #[arg(long = "to", required = true, num_args = 1..)]
    to: Vec<String>,
    /// symmetrical: each source host to one target; asymmetrical: VMs of a host may spread.
    #[arg(long, value_enum, default_value = "asymmetrical")]
    mode: ModeArg,
    /// sequential: machine by machine; round-robin: one VM per source host in turn.
    #[arg(long, value_enum, default_value = "sequential")]
    order: OrderArg,
    /// first-fit: the paper's; best-fit: vector best-fit-decreasing.
    #[arg(long, value_enum, default_value = "best-fit")]
    algorithm: AlgorithmArg,
    /// Percent of each target to keep free (default: placement.headroom_pct).
    #[arg(long, value_name = "PCT")]
    headroom: Option<u8>,
    /// VMs that must share a host, comma-separated (repeatable).
    #[arg(long, value_name = "VM,VM,...")]
    affinity: Vec<String>,
    /// VMs that must not share a host, comma-separated (repeatable).
    #[arg(long = "anti-affinity", value_name = "VM,VM,...")]
    anti_affinity: Vec<String>,
    /// Send VM to HOST (repeatable).
    #[arg(long, value_name = "VM=HOST")]
    pin: Vec<String>,
    /// Never put a VM on HOST (repeatable).
    #[arg(long, value_name = "HOST")]
    exclude: Vec<String>,
}

impl PlanArgs {
    fn request(&self) -> crate::planner::PlanRequest {
        use crate::placement::{Algorithm, Mode, Order};
        let groups = |v: &Vec<String>| -> Vec<Vec<String>> {
            v.iter()
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .collect()
        };
        crate::planner::PlanRequest {
            vms: self.vms.clone(),
            to: self.to.clone(),
            mode: match self.mode {
                ModeArg::Symmetrical => Mode::Symmetrical,
                ModeArg::Asymmetrical => Mode::Asymmetrical,
            },
            order: match self.order {
                OrderArg::Sequential => Order::Sequential,
                OrderArg::RoundRobin => Order::RoundRobin,
            },
            algorithm: match self.algorithm {
                AlgorithmArg::FirstFit => Algorithm::FirstFit,
                AlgorithmArg::BestFit => Algorithm::BestFit,
            },
            headroom_pct: self.headroom,
            affinity: groups(&self.affinity),
            anti_affinity: groups(&self.anti_affinity),
            pin: self.pin.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Symmetrical,
    Asymmetrical,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OrderArg {
    Sequential,
    RoundRobin,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AlgorithmArg {
    FirstFit,
    BestFit,
}

#[derive(Subcommand, Debug)]
enum ImagesCmd {
    /// Re-read every published image and compare it with its SHA-256.
    Verify,
    /// Delete all but the newest generations of each VM (never one a migration still uses).
    Gc {
        /// Generations kept per VM (default: ftp.keep).
        #[arg(long)]
        keep: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum FtpCmd {
    /// Create (or reset) an account and print its new password, once.
    Account {
        name: String,
        /// VMs whose images it may upload ("*" for any; repeatable).
        #[arg(long)]
        write: Vec<String>,
        /// VMs whose images it may download ("*" for any; repeatable).
        #[arg(long)]
        read: Vec<String>,
        /// It stops working after this long (one-time credentials), e.g. "1h".
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum HostsCmd {
    /// Log in to hosts over SSH (all configured ones, or those named) and collect CPUs,
    /// memory, disk, NICs, Open vSwitch ports and VMs, in parallel.
    Collect {
        /// Host names (default: every configured host).
        hosts: Vec<String>,
    },
    /// Accept a discovered machine: it gets a name and a reserved address, and boots the
    /// installer; it becomes a host when the installer calls back, or, with a profile, when
    /// the host image the installer writes to its disk boots and calls back.
    Accept {
        /// Its MAC, as `hosts --discovered` shows it.
        mac: String,
        /// The [[provisioning.profile]] it is deployed with (default: provisioning.default_profile).
        #[arg(long)]
        profile: Option<String>,
    },
    /// Power a network-booted machine on, off or through a cycle by its BMC, or ask it.
    Power {
        /// The machine: its MAC or the name it was given.
        machine: String,
        /// on, off, cycle or status.
        action: crate::power::Action,
    },
    /// Deploy a machine again: its disk made unbootable, restarted (by its BMC, or by its
    /// own system) into the installer, which writes its profile's host image anew.
    Deploy {
        /// The machine: its MAC or the name it was given.
        machine: String,
        /// Another [[provisioning.profile]] than the one it has.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Release a machine: its disk made unbootable, powered off by its BMC (or rebooted to
    /// wait at its network boot), and back to discovered, its name and address given up.
    Release {
        /// The machine: its MAC or the name it was given.
        machine: String,
    },
    /// Give a network-booted machine its BMC (IPMI over LAN), or take it away.
    Bmc {
        /// The machine: its MAC or the name it was given.
        machine: String,
        /// The BMC's address, with its UDP port if not 623 (ADDRESS[:PORT]).
        #[arg(long, required_unless_present = "clear")]
        ipmi: Option<String>,
        #[arg(long, requires = "ipmi")]
        user: Option<String>,
        /// A file holding the BMC's password, readable by the appliance only.
        #[arg(long, requires = "ipmi")]
        password_file: Option<std::path::PathBuf>,
        /// The machine has no BMC any more.
        #[arg(long, conflicts_with = "ipmi")]
        clear: bool,
    },
    /// Pin the SSH host key HOST shows now (check it first: this is trust on first use).
    Trust {
        host: String,
        /// Replace a key pinned earlier (after a reinstall).
        #[arg(long)]
        replace: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::CheckConfig { file } => check_config(file),
        Command::Serve => run_serve(&cli),
        _ => run_client(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                Error::Client(ClientError::Api { details, .. }) if !details.is_empty() => {
                    eprintln!("netmigrate: {e}");
                    for d in details {
                        eprintln!("{d}");
                    }
                }
                Error::Config(errs) => {
                    eprintln!("{e}");
                    if errs.0.len() > 1 {
                        eprintln!("{} problems found", errs.0.len());
                    }
                }
                _ => eprintln!("netmigrate: {e}"),
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn check_config(file: &Path) -> Result<(), Error> {
    let cfg = Config::load(file).map_err(Error::Config)?;
    print!("{}: ok\n{}", file.display(), cfg.summary());
    Ok(())
}

/// Logging without RUST_LOG: libunftp's spans would print its whole session state on every
/// line at info, so only its warnings pass.
const DEFAULT_LOG: &str = "info,libunftp=warn";

fn run_serve(cli: &Cli) -> Result<(), Error> {
    let Some(config) = &cli.config else {
        return Err(Error::Invalid(
            "serve needs a config file: netmigrate serve --config FILE".into(),
        ));
    };
    use std::io::IsTerminal;
    // State and logs hold leases and keys' paths: nothing the daemon creates is world-readable.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o027) };
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    // Under systemd (JOURNAL_STREAM set), events go to journald with their fields; elsewhere,
    // or when journald does not answer, to stderr.
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier("netmigrate".into()));
    match journald {
        Some(j) => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            tracing_subscriber::registry().with(filter).with(j).init();
        }
        None => tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("netmigrate")
        // A migration's future nests deep (select!s over journaled steps); debug builds put
        // large frames on the stack when polling it. 2 MiB was seen to overflow.
        .thread_stack_size(16 << 20)
        .build()
        .map_err(|e| Error::Io("starting the runtime".into(), e))?;
    rt.block_on(crate::daemon::serve(&config))
}

/// Prints an API answer as JSON, or through `table` after reading it as `T`.
fn print_as<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    json: bool,
    table: impl Fn(&T) -> String,
) -> Result<(), Error> {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("json"));
    } else {
        let t: T =
            serde_json::from_value(v.clone()).map_err(|e| ClientError::Protocol(e.to_string()))?;
        print!("{}", table(&t));
    }
    Ok(())
}

/// Where the daemon's API is, from the options, the config or the default.
fn endpoint(cli: &Cli) -> Result<Endpoint, Error> {
    if let Some(url) = &cli.url {
        let Some(tf) = &cli.token_file else {
            return Err(Error::Invalid(
                "--url needs --token-file (the API's bearer token)".into(),
            ));
        };
        let token = std::fs::read_to_string(tf)
            .map_err(|e| Error::Io(format!("reading {}", tf.display()), e))?
            .trim()
            .to_string();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        return Ok(Endpoint::Tcp { addr, token });
    }
    if let Some(s) = &cli.socket {
        return Ok(Endpoint::Unix(s.clone()));
    }
    if let Some(c) = &cli.config {
        let state_dir = Config::state_dir_of(c).map_err(Error::Config)?;
        return Ok(Endpoint::Unix(state_dir.join("api.sock")));
    }
    Ok(Endpoint::Unix(
        Path::new(DEFAULT_STATE_DIR).join("api.sock"),
    ))
}

fn run_client(cli: &Cli) -> Result<(), Error> {
    let client = Client::new(endpoint(cli)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io("starting the runtime".into(), e))?;
    rt.block_on(async {
        match &cli.command {
            Command::Status { json } => {
                let v: serde_json::Value = client.get("/v1/status").await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                } else {
                    let s = serde_json::from_value(v)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    print!("{}", show::status(&s));
                }
            }
            Command::Events { limit, json } => {
                let v: serde_json::Value = client.get(&format!("/v1/events?limit={limit}")).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                } else {
                    let evs: Vec<crate::state::Event> = serde_json::from_value(v)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    print!("{}", show::events(&evs));
                }
            }
            Command::Reload => {
                let r: crate::api::ReloadReply = client.post("/v1/reload", None).await?;
                println!("{}", r.message);
            }
            Command::Hosts {
                action,
                json,
                discovered,
            } => match action {
                None if *discovered => {
                    let v: Vec<crate::state::machines::MachineRow> =
                        client.get("/v1/machines").await?;
                    let v: Vec<_> = v
                        .into_iter()
                        .filter(|m| m.stage == "discovered" || m.stage == "commissioning")
                        .collect();
                    let v = serde_json::to_value(v).expect("json");
                    print_as(&v, *json, show::machines)?;
                }
                None => {
                    let v: serde_json::Value = client.get("/v1/hosts").await?;
                    print_as(&v, *json, show::hosts)?;
                    if !*json {
                        let m: Vec<crate::state::machines::MachineRow> =
                            client.get("/v1/machines").await?;
                        print!("{}", show::enrolling(&m));
                    }
                }
                Some(HostsCmd::Deploy { machine, profile }) => {
                    let r: crate::app::hosts::MachineReply = client
                        .post(
                            &format!("/v1/machines/{machine}/deploy"),
                            Some(serde_json::json!({ "profile": profile })),
                        )
                        .await?;
                    machine_reply(&r, *json, "is deployed again");
                }
                Some(HostsCmd::Release { machine }) => {
                    let r: crate::app::hosts::MachineReply = client
                        .post(&format!("/v1/machines/{machine}/release"), None)
                        .await?;
                    machine_reply(&r, *json, "is released");
                }
                Some(HostsCmd::Power { machine, action }) => {
                    let r: crate::app::hosts::PowerReply = client
                        .post(
                            &format!("/v1/machines/{machine}/power"),
                            Some(serde_json::json!({ "action": action })),
                        )
                        .await?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else {
                        println!(
                            "{} ({}): power is {}",
                            r.name.as_deref().unwrap_or(&r.mac),
                            r.mac,
                            r.state
                        );
                    }
                }
                Some(HostsCmd::Bmc {
                    machine,
                    ipmi,
                    user,
                    password_file,
                    clear: _,
                }) => {
                    let bmc = match ipmi {
                        None => None,
                        Some(a) => {
                            let (address, port) = match a.rsplit_once(':') {
                                Some((h, p)) if !h.contains(':') => (
                                    h.to_string(),
                                    p.parse::<u16>().map_err(|_| {
                                        Error::Invalid(format!("--ipmi {a}: `{p}` is not a port"))
                                    })?,
                                ),
                                _ => (a.clone(), 623),
                            };
                            let password_file = password_file.as_ref().ok_or_else(|| {
                                Error::Invalid("--ipmi needs --password-file".into())
                            })?;
                            // The daemon reads the file: its path as the daemon sees it.
                            let password_file = std::path::absolute(password_file)
                                .unwrap_or_else(|_| password_file.clone());
                            Some(crate::power::Bmc::Ipmi {
                                address,
                                port,
                                user: user.clone().ok_or_else(|| {
                                    Error::Invalid("--ipmi needs --user".into())
                                })?,
                                password_file,
                            })
                        }
                    };
                    let m: crate::state::machines::MachineRow = client
                        .post(
                            &format!("/v1/machines/{machine}/bmc"),
                            Some(serde_json::json!({ "bmc": bmc })),
                        )
                        .await?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                    } else {
                        println!(
                            "{}: {}",
                            m.mac,
                            m.bmc
                                .as_ref()
                                .map_or("no BMC".into(), |b| format!("BMC {}", b.describe()))
                        );
                    }
                }
                Some(HostsCmd::Accept { mac, profile }) => {
                    let body = serde_json::json!({ "profile": profile });
                    let m: crate::state::machines::MachineRow = client
                        .post(&format!("/v1/machines/{mac}/accept"), Some(body))
                        .await?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                    } else {
                        println!(
                            "{}: accepted as {} at {}; it {} at its next network boot",
                            m.mac,
                            m.name.as_deref().unwrap_or("?"),
                            m.ip.as_deref().unwrap_or("?"),
                            m.profile.as_deref().map_or("installs".into(), |p| format!(
                                "is deployed with profile {p}"
                            ))
                        );
                    }
                }
                Some(HostsCmd::Collect { hosts }) => {
                    let body = serde_json::json!({ "hosts": hosts });
                    let v: serde_json::Value = client.post("/v1/hosts/collect", Some(body)).await?;
                    print_as(&v, *json, show::collected)?;
                    let failed = v
                        .as_array()
                        .map(|a| a.iter().filter(|c| !c["error"].is_null()).count())
                        .unwrap_or(0);
                    if failed > 0 {
                        return Err(Error::Invalid(format!(
                            "{failed} host(s) could not be collected"
                        )));
                    }
                }
                Some(HostsCmd::Trust { host, replace }) => {
                    let body = serde_json::json!({ "host": host, "replace": replace });
                    let r: crate::api::hosts::TrustReply =
                        client.post("/v1/hosts/trust", Some(body)).await?;
                    match r.previous {
                        Some(p) if p != r.key => {
                            println!("{}: host key replaced: {} (was {p})", r.host, r.key)
                        }
                        Some(_) => println!("{}: host key unchanged: {}", r.host, r.key),
                        None => println!("{}: host key pinned: {}", r.host, r.key),
                    }
                }
            },
            Command::Plan { plan, json } => {
                let body = serde_json::to_value(plan.request()).expect("json");
                let v: serde_json::Value = client.post("/v1/plan", Some(body)).await?;
                print_as(&v, *json, show::plan)?;
            }
            Command::Images { action, json } => match action {
                None => {
                    let v: serde_json::Value = client.get("/v1/images").await?;
                    print_as(&v, *json, show::images)?;
                }
                Some(ImagesCmd::Verify) => {
                    let v: serde_json::Value = client.post("/v1/images/verify", None).await?;
                    print_as(&v, *json, show::verified)?;
                    let bad = v.as_array().map(|a| a.iter().filter(|r| r["ok"] != true).count()).unwrap_or(0);
                    if bad > 0 {
                        return Err(Error::Invalid(format!("{bad} image(s) failed verification")));
                    }
                }
                Some(ImagesCmd::Gc { keep }) => {
                    let body = serde_json::json!({ "keep": keep });
                    let removed: Vec<String> = client.post("/v1/images/gc", Some(body)).await?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&removed).expect("json"));
                    } else if removed.is_empty() {
                        println!("nothing to remove");
                    } else {
                        println!("removed {}", removed.join(", "));
                    }
                }
            },
            Command::Ftp {
                action: FtpCmd::Account { name, write, read, ttl },
            } => {
                let ttl_s = match ttl {
                    Some(t) => Some(
                        crate::config::values::parse_duration(t)
                            .map_err(|e| Error::Invalid(format!("--ttl: {e}")))?
                            .as_secs(),
                    ),
                    None => None,
                };
                let body = serde_json::json!({ "name": name, "write": write, "read": read, "ttl_s": ttl_s });
                let r: crate::api::images::AccountReply = client.post("/v1/ftp/accounts", Some(body)).await?;
                println!("{}", r.password);
                eprintln!("account {}: password above (shown once; only its hash is kept)", r.name);
            }
            Command::Vms { json } => {
                let v: serde_json::Value = client.get("/v1/vms").await?;
                print_as(&v, *json, show::vms)?;
            }
            Command::Vm { action, json } => match action {
                VmCmd::List => {
                    let v: serde_json::Value = client.get("/v1/vm-defs").await?;
                    print_as(&v, *json, show::vm_defs)?;
                }
                VmCmd::Define {
                    name,
                    mem,
                    vcpus,
                    mac,
                    ip,
                    vlan,
                    rate_kbps,
                    kernel,
                    initrd,
                    append,
                    disks,
                    guest_type,
                } => {
                    let def = crate::hypervisor::VmDef {
                        name: name.clone(),
                        mem_mib: *mem,
                        vcpus: *vcpus,
                        mac: mac.clone(),
                        ip: *ip,
                        vlan: *vlan,
                        rate_kbps: *rate_kbps,
                        kernel: kernel.clone(),
                        initrd: initrd.clone(),
                        append: append.clone(),
                        disks: disks.clone(),
                        guest_type: *guest_type,
                        adopted: None,
                    };
                    let body = serde_json::to_value(&def).expect("json");
                    let v: serde_json::Value = client.post("/v1/vm-defs", Some(body)).await?;
                    print_as(&serde_json::json!([v]), *json, show::vm_defs)?;
                }
                VmCmd::Start { name, host } => {
                    let body = serde_json::json!({ "host": host });
                    let v: serde_json::Value = client
                        .post(&format!("/v1/vm-defs/{name}/start"), Some(body))
                        .await?;
                    print_as(&serde_json::json!([v]), *json, show::vm_defs)?;
                }
                VmCmd::Stop { name } => {
                    let v: serde_json::Value =
                        client.post(&format!("/v1/vm-defs/{name}/stop"), None).await?;
                    print_as(&serde_json::json!([v]), *json, show::vm_defs)?;
                }
                VmCmd::Release { name } => {
                    let v: serde_json::Value = client
                        .post(&format!("/v1/vm-defs/{name}/release"), None)
                        .await?;
                    println!(
                        "released {name}: it runs on as it is ({} on {}), no longer managed",
                        v["state"].as_str().unwrap_or("?"),
                        v["host"].as_str().unwrap_or("no host")
                    );
                }
                VmCmd::Adopt {
                    name,
                    host,
                    shared,
                    ip,
                } => {
                    let body = serde_json::json!({ "host": host, "shared": shared, "ip": ip });
                    let v: serde_json::Value = client
                        .post(&format!("/v1/vm-defs/{name}/adopt"), Some(body))
                        .await?;
                    print_as(&serde_json::json!([v]), *json, show::vm_defs)?;
                }
                VmCmd::Rm { name } => {
                    let _: serde_json::Value = client.delete(&format!("/v1/vm-defs/{name}")).await?;
                    println!("{name} removed");
                }
            },
            Command::Migrate {
                plan,
                cold,
                live: _,
                downtime,
                live_timeout,
                probe_port,
                no_probe,
                max_per_host,
                max_per_link,
                keep_going,
                new_mac,
                json,
            } => {
                let new_macs = new_mac
                    .iter()
                    .map(|p| match p.split_once('=') {
                        Some((vm, mac)) if !vm.is_empty() && !mac.is_empty() => {
                            Ok((vm.to_string(), mac.to_string()))
                        }
                        _ => Err(Error::Invalid(format!("--new-mac `{p}`: write it as VM=MAC"))),
                    })
                    .collect::<Result<_, _>>()?;
                let downtime_ms = match downtime {
                    Some(d) => Some(
                        crate::config::values::parse_duration(d)
                            .map_err(|e| Error::Invalid(format!("--downtime: {e}")))?
                            .as_millis() as u64,
                    ),
                    None => None,
                };
                let req = crate::migrate::batch::BatchRequest {
                    plan: plan.request(),
                    mode: if *cold { crate::migrate::Mode::Cold } else { crate::migrate::Mode::Live },
                    downtime_ms,
                    live_timeout_s: *live_timeout,
                    probe_enabled: !*no_probe,
                    probe_port: *probe_port,
                    max_per_host: *max_per_host,
                    max_per_link: *max_per_link,
                    keep_going: *keep_going,
                    new_macs,
                };
                progress::run_batch(&client, req, *json).await?;
            }
            Command::Reservations { action, json } => match action {
                None | Some(ReservationCmd::List) => {
                    let v: serde_json::Value = client.get("/v1/reservations").await?;
                    print_as(&v, *json, show::reservations)?;
                }
                Some(ReservationCmd::Add {
                    ip,
                    network,
                    mac,
                    client_id,
                    hostname,
                }) => {
                    let body = serde_json::json!({
                        "network": network, "ip": ip, "mac": mac,
                        "client_id": client_id, "hostname": hostname,
                    });
                    let v: serde_json::Value = client.post("/v1/reservations", Some(body)).await?;
                    print_as(&v, *json, |r: &crate::reservations::ReservationView| {
                        format!("reserved {} in network {}\n", r.row.ip, r.row.network)
                    })?;
                }
                Some(ReservationCmd::Rm { ip, network }) => {
                    let network = match network {
                        Some(n) => n.clone(),
                        None => {
                            let all: Vec<crate::reservations::ReservationView> =
                                client.get("/v1/reservations").await?;
                            let nets: Vec<_> =
                                all.iter().filter(|r| &r.row.ip == ip).map(|r| r.row.network.clone()).collect();
                            match &nets[..] {
                                [one] => one.clone(),
                                [] => return Err(Error::Invalid(format!("{ip} is not reserved"))),
                                _ => {
                                    return Err(Error::Invalid(format!(
                                        "{ip} is reserved in networks {}; say which with --network",
                                        nets.join(", ")
                                    )))
                                }
                            }
                        }
                    };
                    let v: serde_json::Value = client
                        .delete(&format!("/v1/reservations/{network}/{ip}"))
                        .await?;
                    print_as(&v, *json, |r: &crate::reservations::ReservationView| {
                        format!("removed the reservation of {} in network {}\n", r.row.ip, r.row.network)
                    })?;
                }
            },
            Command::Dns { json } => {
                let v: serde_json::Value = client.get("/v1/dns").await?;
                print_as(&v, *json, show::dns)?;
            }
            Command::Leases { json } => {
                let v: serde_json::Value = client.get("/v1/leases").await?;
                print_as(&v, *json, show::leases)?;
            }
            Command::Batches { id, plot, json } => match id {
                Some(id) => {
                    let v: serde_json::Value = client.get(&format!("/v1/batches/{id}")).await?;
                    if let Some(file) = plot {
                        let b: crate::state::BatchRow = serde_json::from_value(v.clone())
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        plot::breaks(&format!("batch {id}"), &b.migrations, file)?;
                        eprintln!("wrote {}", file.display());
                    }
                    print_as(&v, *json, show::batch)?;
                }
                None => {
                    let v: serde_json::Value = client.get("/v1/batches").await?;
                    print_as(&v, *json, show::batches)?;
                }
            },
            Command::Migrations { id, plot, json } => match id {
                Some(id) => {
                    let v: serde_json::Value = client.get(&format!("/v1/migrations/{id}")).await?;
                    if let Some(file) = plot {
                        let m: crate::state::MigrationRow = serde_json::from_value(v.clone())
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        plot::breaks(&format!("migration {id}"), &[m], file)?;
                        eprintln!("wrote {}", file.display());
                    }
                    print_as(&v, *json, show::migration)?;
                }
                None => {
                    let v: serde_json::Value = client.get("/v1/migrations").await?;
                    print_as(&v, *json, show::migrations)?;
                }
            },
            Command::Serve | Command::CheckConfig { .. } => unreachable!("handled in main"),
        }
        Ok(())
    })
}

/// What `hosts deploy` and `hosts release` print.
fn machine_reply(r: &crate::app::hosts::MachineReply, json: bool, what: &str) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    } else {
        println!(
            "{} ({}) {what}: {}",
            r.machine.name.as_deref().unwrap_or(&r.machine.mac),
            r.machine.mac,
            r.says
        );
    }
}

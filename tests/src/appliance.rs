//! The appliance in the lab: `netmigrate serve` running in its own namespace on the lab switch
//! at 10.213.0.1, with a config that names the lab's hosts and pins their host keys.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host::Host;
use crate::lab::{Lab, Node, APPLIANCE_IP, SUBNET_PREFIX};
use crate::netns;
use crate::sys::wait_for;

/// Path of the `netmigrate` binary: `$NETMIGRATE_BIN`, or next to the test executable's
/// target directory (`target/<profile>/netmigrate`).
pub fn netmigrate_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETMIGRATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let cand = dir.join("netmigrate");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "netmigrate binary not found near {}; build it first (cargo build) or set NETMIGRATE_BIN",
        exe.display()
    )
}

pub struct Appliance {
    pub node: Node,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub pid: u32,
    /// Extra environment for `serve` (e.g. the crash tests' `NETMIGRATE_CRASH_AT`).
    pub env: Vec<(String, String)>,
    /// A shell command run just before `serve`, in the appliance's namespaces. `ip netns exec`
    /// gives each start a mount namespace of its own, so a mount made here (a small tmpfs for
    /// the image store, say) is the appliance's alone and goes away with it.
    pub prelude: Option<String>,
}

impl Appliance {
    /// Runs the CLI against this appliance (root namespace: the API is a unix socket).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(netmigrate_bin()?)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()?)
    }

    /// Like `cli`, failing on a non-zero exit; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "netmigrate {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET /metrics` over the API socket, as a scraper on it would.
    pub fn metrics(&self) -> Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--unix-socket"])
            .arg(self.state_dir.join("api.sock"))
            .arg("http://appliance/metrics")
            .output()?;
        if !out.status.success() {
            bail!("/metrics: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One sample's value from `/metrics` (`series` as written there, labels and all).
    pub fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {series} in:\n{text}"))
    }
}

impl Appliance {
    /// Defines managed VM `n` (vmN at 10.213.0.(20 + n), MAC 52:54:00:d5:00:(20 + n)) booting
    /// the lab's kernel and initramfs; also redefines it.
    pub fn define_guest(&self, n: u8, mem_mib: u64, vcpus: u32) -> Result<(String, Ipv4Addr)> {
        let name = format!("vm{n}");
        let ip = Ipv4Addr::new(10, 213, 0, 20 + n);
        let (k, i) = (crate::guest::kernel()?, crate::guest::initramfs()?);
        self.cli_ok(&[
            "vm",
            "define",
            &name,
            "--mem",
            &mem_mib.to_string(),
            "--vcpus",
            &vcpus.to_string(),
            "--mac",
            &format!("52:54:00:d5:00:{:02x}", 20 + n),
            "--ip",
            &ip.to_string(),
            "--kernel",
            &k.display().to_string(),
            "--initrd",
            &i.display().to_string(),
            "--append",
            &format!("console=ttyS0 quiet nm_ip={ip}/24 nm_name={name}"),
        ])?;
        Ok((name, ip))
    }
}

/// The config the lab's appliance runs with: the lab network and the given hosts, keys pinned.
pub fn lab_config(lab: &Lab, state_dir: &Path, hosts: &[&Host]) -> Result<String> {
    let mut c = network_config(state_dir);
    for h in hosts {
        c.push_str(&host_config(lab, h, true)?);
    }
    Ok(c)
}

/// The `[[host]]` section for a lab host; `pin` writes its host key into the config.
pub fn host_config(lab: &Lab, h: &Host, pin: bool) -> Result<String> {
    let key = lab.client_key()?;
    Ok(format!(
        "\n[[host]]\n\
         name = \"{}\"\n\
         address = \"{}\"\n\
         ssh_key = \"{}\"\n\
         {}\
         hypervisor = \"qemu\"\n\
         bridge = \"br0\"\n\
         ovsdb = \"unix:{}\"\n\
         image_dir = \"{}\"\n\
         run_dir = \"{}\"\n\
         qemu_accel = \"tcg\"\n",
        h.config_name(),
        h.ip,
        key.private.display(),
        if pin {
            format!("host_key = \"{}\"\n", h.host_key.public)
        } else {
            String::new()
        },
        h.ovs.db_sock().display(),
        // The host's own local storage, where its VMs' disks are: its room is what placement
        // counts.
        crate::sshd::LOCAL_DISKS,
        h.dir.join("run").display(),
    ))
}

/// The appliance's own part of the lab config: state_dir and the lab network.
pub fn network_config(state_dir: &Path) -> String {
    format!(
        "state_dir = \"{}\"\n\n\
         [[network]]\n\
         name = \"lab\"\n\
         interface = \"eth0\"\n\
         address = \"{APPLIANCE_IP}/{SUBNET_PREFIX}\"\n\
         dhcp_range = [\"10.213.0.150\", \"10.213.0.199\"]\n\
         lease_time = \"1h\"\n\
         domain = \"lab.internal\"\n",
        state_dir.display()
    )
}

impl Lab {
    /// Starts the appliance for `hosts` (keys pinned) and waits until its API answers.
    pub fn appliance(&self, hosts: &[&Host]) -> Result<Appliance> {
        let state_dir = self.subdir("appliance")?.join("state");
        self.appliance_with(&lab_config(self, &state_dir, hosts)?)
    }

    /// The state_dir the lab's appliance uses (for configs written by hand).
    pub fn appliance_state_dir(&self) -> Result<PathBuf> {
        Ok(self.subdir("appliance")?.join("state"))
    }

    /// Starts the appliance with the given config text and waits until its API answers.
    pub fn appliance_with(&self, config_text: &str) -> Result<Appliance> {
        let node = self.node("app", APPLIANCE_IP)?;
        self.appliance_at(node, config_text)
    }

    /// Starts the appliance in `node`'s namespace (its config, state and log under the run's
    /// `appliance` directory) and waits until its API answers.
    pub fn appliance_at(&self, node: Node, config_text: &str) -> Result<Appliance> {
        self.start_appliance(node, config_text, None)
    }

    /// Like `appliance_with`, with a shell command run before `serve` (see `Appliance::prelude`).
    pub fn appliance_with_prelude(&self, config_text: &str, prelude: &str) -> Result<Appliance> {
        let node = self.node("app", APPLIANCE_IP)?;
        self.start_appliance(node, config_text, Some(prelude.to_string()))
    }

    fn start_appliance(
        &self,
        node: Node,
        config_text: &str,
        prelude: Option<String>,
    ) -> Result<Appliance> {
        let dir = self.subdir("appliance")?;
        let state_dir = dir.join("state");
        let config = dir.join("netmigrate.toml");
        std::fs::write(&config, config_text)?;
        let mut app = Appliance {
            node,
            config,
            state_dir,
            pid: 0,
            env: Vec::new(),
            prelude,
        };
        self.start_serve(&mut app)?;
        Ok(app)
    }

    /// Kills the appliance with SIGKILL (a crash: no cleanup of its own) and starts it again
    /// on the same state.
    pub fn crash_and_restart(&self, app: &mut Appliance) -> Result<()> {
        crate::sys::signal(app.pid, libc::SIGKILL);
        self.stop(app.pid);
        self.start_serve(app)
    }

    /// Restarts the appliance (SIGKILL, then start) with `env` added to its environment.
    pub fn restart_with(&self, app: &mut Appliance, env: &[(&str, &str)]) -> Result<()> {
        app.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.crash_and_restart(app)
    }

    /// Waits until the appliance process ends by itself (e.g. a crash it was told to have).
    pub fn wait_exit(&self, app: &Appliance, timeout: Duration) -> Result<()> {
        wait_for("the appliance to exit", timeout, || {
            self.has_exited(app.pid).then_some(())
        })
    }

    pub(crate) fn start_serve(&self, app: &mut Appliance) -> Result<()> {
        let bin = netmigrate_bin()?.display().to_string();
        let mut cmd = match &app.prelude {
            None => netns::exec(&app.node.ns, &bin),
            Some(p) => {
                let mut c = netns::exec(&app.node.ns, "sh");
                c.args(["-c", &format!("{p} && exec \"$0\" \"$@\""), &bin]);
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&app.config)
            .env("RUST_LOG", "info,libunftp=warn")
            .envs(app.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let pid = self.track("appliance", &mut cmd)?;
        app.pid = pid;
        let app = &*app;
        wait_for("the appliance's API", Duration::from_secs(20), || {
            if self.has_exited(pid) {
                return Some(false);
            }
            app.cli(&["status"])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| true)
        })
        .and_then(|up| {
            if up {
                Ok(())
            } else {
                // The lab's directory goes with the lab: what it said is kept here.
                let log = self.dir.join("appliance.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                bail!(
                    "netmigrate serve exited at start; {} ends:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            }
        })
        .context("starting the appliance")?;
        Ok(())
    }
}

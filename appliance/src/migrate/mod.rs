//! The migration engine: one VM moved from its host to another, cold (the paper's path, through
//! the image store) or live (pre-copy between the hosts), journaled step by step, the network
//! re-pointed, the break measured. Whatever fails, the VM runs in exactly one place.

pub mod batch;
pub(crate) mod cold;
pub mod error;
pub mod hooks;
pub mod journal;
mod live;
pub mod probe;
mod recover;
pub mod step;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Config, HostConfig, SourceDisks};
use crate::hypervisor::{self, Hypervisor, RunState, VmDef};
use crate::inventory::link::Link;
use crate::inventory::{Collected, Inventory};
use crate::network::{self, PortSpec, Switch};
use crate::shell::quote;
use crate::state::{MigrationRow, NewEvent, State};
pub use error::Error;
use error::Result;
use journal::Journal;
pub use step::{Step, When};

/// How long a port put on the switch before its device existed may take to be opened once the
/// load made the device: the hotplug waited for it, so this is a check, not a wait.
const PORT_UP_WITHIN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cold,
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Live => "live",
        }
    }
}

/// One move, as asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub vm: String,
    pub target: String,
    pub mode: Mode,
    /// Live only: the longest pause the hypervisor may take at switch-over.
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Live only: give up pre-copy after this long and take the cold path (default:
    /// `migration.live_timeout`).
    #[serde(default)]
    pub live_timeout_s: Option<u64>,
    /// Probe the VM's service at `ip:port`, or `:port` on the VM's address (default port 80).
    #[serde(default)]
    pub probe: Option<String>,
    #[serde(default = "yes")]
    pub probe_enabled: bool,
    /// The batch this move belongs to, if any.
    #[serde(default)]
    pub batch: Option<i64>,
    /// Give the VM this MAC on the target (its NIC is replaced once it runs there; DHCP keeps
    /// its address for it).
    #[serde(default)]
    pub new_mac: Option<String>,
}

fn default_downtime_ms() -> u64 {
    100
}
pub(crate) fn yes() -> bool {
    true
}

/// Refusals before anything moves; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no VM named `{0}`; `netmigrate vm list` shows them")]
    UnknownVm(String),
    #[error("no host named `{0}` in the config")]
    UnknownHost(String),
    #[error("{vm} is not running (state {state}); start it first")]
    NotRunning { vm: String, state: String },
    #[error("{vm} already runs on {host}")]
    SameHost { vm: String, host: String },
    #[error("{vm} runs on {from} ({source_kind}) and {target} is a {target_kind} host: a move needs the same hypervisor on both")]
    MixedHypervisors {
        vm: String,
        from: String,
        source_kind: &'static str,
        target: String,
        target_kind: &'static str,
    },
    #[error("no room on {host} for {vm}: it needs {need_mib} MiB of memory, {host} has {free_mib} MiB free")]
    NoRoom {
        vm: String,
        host: String,
        need_mib: u64,
        free_mib: u64,
    },
    #[error("host {0} has no pinned SSH host key yet; `netmigrate hosts trust {0}` first")]
    NotTrusted(String),
    #[error("{vm}'s local disks: {why}")]
    LocalDisks { vm: String, why: String },
    #[error("new MAC for {vm}: {why}")]
    BadMac { vm: String, why: String },
    #[error("{0}")]
    Driver(String),
    #[error("{0}")]
    State(#[from] crate::state::StateError),
}

/// How the engine reaches hosts: a link to each (checked against its pinned key), its switch,
/// and its facts collected now. The inventory in the appliance; fakes in the engine's tests.
#[async_trait]
pub trait Hosts: Send + Sync {
    /// The open link to `h`, checked against `pinned`.
    async fn link(&self, h: &HostConfig, pinned: &str) -> Result<Arc<dyn Link>, String>;
    /// Forgets `host`'s link (it died under a call): the next `link` makes a new one.
    async fn forget(&self, host: &str);
    /// Collects `hosts`' facts now, in parallel.
    async fn collect(&self, hosts: Vec<(HostConfig, Option<String>)>) -> Vec<Collected>;
    /// `h`'s switch, over `link`.
    fn switch(&self, h: &HostConfig, link: Arc<dyn Link>) -> Box<dyn Switch> {
        network::switch::new(h, link)
    }
}

#[async_trait]
impl Hosts for Arc<Inventory> {
    async fn link(&self, h: &HostConfig, pinned: &str) -> Result<Arc<dyn Link>, String> {
        let conn = self
            .connection(h, Some(pinned))
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    async fn forget(&self, host: &str) {
        Inventory::forget(self, host).await
    }

    async fn collect(&self, hosts: Vec<(HostConfig, Option<String>)>) -> Vec<Collected> {
        Inventory::collect(self, hosts).await
    }
}

/// What the engine needs from the running appliance.
#[derive(Clone)]
pub struct Engine {
    pub state: State,
    /// Where moves journal their steps (the state, in the appliance).
    pub journal: Arc<dyn journal::JournalStore>,
    pub store: netmigrate_image::Store,
    pub hosts: Arc<dyn Hosts>,
    /// The services' after-move hooks (the config's script is added per move).
    pub after_move: hooks::Hooks,
}

/// One host as a move sees it: its config, its link, its hypervisor's driver and its switch.
pub(crate) struct Side {
    pub cfg: HostConfig,
    pub link: Arc<dyn Link>,
    pub driver: Box<dyn Hypervisor>,
    pub switch: Box<dyn Switch>,
}

impl Side {
    fn host_err(&self, reason: impl Into<String>) -> Error {
        Error::Host {
            host: self.cfg.name.clone(),
            reason: reason.into(),
        }
    }

    /// Runs a shell command on the host; fails on a non-zero exit. Only for commands that may
    /// run twice: one killed by a signal (no exit status, or above 128) runs again, twice at
    /// most, as a crash at start changed nothing (nested dom0s crash now and then).
    pub async fn sh(&self, script: &str) -> Result<String> {
        let mut tries = 0;
        loop {
            let out = self.link.exec(script, Duration::from_secs(30)).await;
            let crashed = matches!(&out, Ok(o) if o.status.is_none_or(|s| s > 128));
            if crashed && tries < 2 {
                tries += 1;
                tracing::warn!(host = %self.cfg.name, "a command died of a signal; again");
                continue;
            }
            return self.checked(script, out);
        }
    }

    /// Runs a short script in the shell kept open on the host: no new channel or process for
    /// it, for steps inside a VM's break.
    pub async fn quick(&self, script: &str) -> Result<String> {
        let out = self.link.run_script(script, Duration::from_secs(30)).await;
        self.checked(script, out)
    }

    /// A script's stdout, or what went wrong (naming the host and the script's start).
    fn checked(
        &self,
        script: &str,
        out: Result<crate::inventory::ssh::Output, crate::inventory::ssh::SshError>,
    ) -> Result<String> {
        let out = out.map_err(|e| self.host_err(e.to_string()))?;
        if out.status != Some(0) {
            return Err(self.host_err(format!(
                "`{}` failed: {}",
                script.chars().take(60).collect::<String>(),
                out.stderr.trim()
            )));
        }
        Ok(out.stdout)
    }

    /// Writes `text` to `path` on the host, readable by root only.
    pub async fn write_secret(&self, path: &str, text: &str) -> Result<()> {
        self.sh(&format!(
            "umask 077; mkdir -p {dir}; printf '%s' {t} > {p}",
            dir = quote(&self.cfg.run_dir),
            t = quote(text),
            p = quote(path)
        ))
        .await
        .map(drop)
    }

    /// Removes `paths` on the host (those that are not there are not an error).
    pub async fn remove(&self, paths: &[&str]) -> Result<()> {
        let words: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        self.sh(&format!("rm -f {}", words.join(" ")))
            .await
            .map(drop)
    }

    /// Puts `vm`'s port on the switch; its device must be there and open.
    pub async fn add_port(&self, vm: &VmDef, spec: &PortSpec) -> Result<i64> {
        let port = vm.port_on(&self.cfg.name);
        let n = self.switch.put_port(&port, spec, false).await?;
        n.ok_or_else(|| self.host_err(format!("port {port} has no ofport")))
    }

    pub async fn del_port(&self, vm: &VmDef) -> Result<()> {
        Ok(self.switch.del_port(&vm.port_on(&self.cfg.name)).await?)
    }
}

/// The switch port a VM's definition asks for.
fn port_of(def: &VmDef) -> PortSpec {
    PortSpec {
        vlan: def.vlan,
        rate_kbps: def.rate_kbps,
    }
}

impl Engine {
    /// The host key pinned for `h`: in the state (by `hosts trust` or the config), else in the
    /// config.
    async fn pinned_key(&self, h: &HostConfig) -> Result<Option<String>, Refused> {
        Ok(self
            .state
            .hosts()
            .await?
            .into_iter()
            .find(|r| r.name == h.name)
            .and_then(|r| r.host_key)
            .or_else(|| h.host_key.clone()))
    }

    /// The pinned key and a link to `h`; its driver from the hypervisor module's factory.
    async fn side(&self, h: &HostConfig) -> Result<Side, Refused> {
        let pinned = self
            .pinned_key(h)
            .await?
            .ok_or_else(|| Refused::NotTrusted(h.name.clone()))?;
        let link = self.hosts.link(h, &pinned).await.map_err(Refused::Driver)?;
        let driver = hypervisor::new(h, link.clone());
        driver
            .check()
            .await
            .map_err(|e| Refused::Driver(e.to_string()))?;
        Ok(Side {
            cfg: h.clone(),
            switch: self.hosts.switch(h, link.clone()),
            link,
            driver,
        })
    }

    /// Collects `hosts` now, in parallel; a host that failed (busy, or its tools crashed) is
    /// asked once more before a move is refused for it.
    pub(crate) async fn collect_now(
        &self,
        hosts: Vec<(HostConfig, Option<String>)>,
    ) -> Vec<crate::inventory::Collected> {
        let mut got = self.hosts.collect(hosts.clone()).await;
        let again: Vec<_> = hosts
            .into_iter()
            .filter(|(h, _)| got.iter().any(|c| c.host == h.name && c.facts.is_none()))
            .collect();
        if again.is_empty() {
            return got;
        }
        tracing::warn!(hosts = ?again.iter().map(|(h, _)| &h.name).collect::<Vec<_>>(), "collecting again");
        for c in self.hosts.collect(again).await {
            if let Some(old) = got.iter_mut().find(|o| o.host == c.host) {
                *old = c;
            }
        }
        got
    }

    /// Collects `h`'s facts now (one round trip on its kept connection) and refuses if the
    /// VM's memory does not fit in what is free there.
    async fn check_room(&self, h: &HostConfig, def: &VmDef) -> Result<(), Refused> {
        let pinned = self.pinned_key(h).await?;
        let got = self.collect_now(vec![(h.clone(), pinned)]).await;
        let c = got.into_iter().next();
        let _ = self
            .state
            .record_collections(c.iter().cloned().collect())
            .await;
        let why = c
            .as_ref()
            .and_then(|c| c.error.clone())
            .unwrap_or_else(|| "no answer".into());
        match c.and_then(|c| c.facts) {
            Some(f) if f.mem_free_mib < u64::from(def.mem_mib) => Err(Refused::NoRoom {
                vm: def.name.clone(),
                host: h.name.clone(),
                need_mib: u64::from(def.mem_mib),
                free_mib: f.mem_free_mib,
            }),
            Some(_) => Ok(()),
            None => Err(Refused::Driver(format!(
                "{}: its resources could not be collected: {why}",
                h.name
            ))),
        }
    }

    /// For a VM with local disks: whether this move can carry them (live: a driver that
    /// mirrors them and no `live_refusal`, which `Engine::live_refusal` folds in; cold: a
    /// driver that carries them in the stream, and the tools for it on both hosts), each
    /// disk's size on the source, and room for the copies on the target with nothing there to
    /// overwrite. Their sizes, for the target's copies; none without local disks.
    async fn check_disks(
        &self,
        req: &Request,
        live_refusal: Option<&str>,
        src: &Side,
        dst: &Side,
        def: &VmDef,
    ) -> Result<Vec<hypervisor::DiskUsage>, Refused> {
        let local = def.local_disks();
        if local.is_empty() {
            return Ok(Vec::new());
        }
        let refuse = |why: String| Refused::LocalDisks {
            vm: def.name.clone(),
            why,
        };
        let no_cold = src
            .driver
            .cold_disks_refusal(def)
            .or_else(|| dst.driver.cold_disks_refusal(def))
            .map(|why| format!("{}: {why}", src.cfg.name));
        let cold = no_cold.is_none();
        match (req.mode, live_refusal, no_cold) {
            (Mode::Cold, _, Some(no)) => {
                return Err(refuse(match src.driver.mirrors_disks() {
                    true => format!("{no}; move it live"),
                    false => no,
                }))
            }
            (Mode::Live, Some(why), Some(no)) => {
                return Err(refuse(format!("it cannot live-migrate ({why}), and {no}")))
            }
            _ => {}
        }
        // A move that goes, or may fall back, cold sends and receives the disks with the
        // hosts' own tools.
        if cold {
            for side in [src, dst] {
                side.sh(&hypervisor::disk::tools_script())
                    .await
                    .map_err(|e| refuse(e.to_string()))?;
            }
        }
        let usage = src
            .driver
            .disk_usage(def)
            .await
            .map_err(|e| refuse(e.to_string()))?;
        let mut like = Vec::new();
        for (d, u) in local.iter().zip(usage) {
            like.push(u.ok_or_else(|| refuse(format!("{} is not on {}", d.path, src.cfg.name)))?);
        }
        dst.driver
            .check_disks(def, &like)
            .await
            .map_err(|e| refuse(e.to_string()))?;
        Ok(like)
    }

    /// Why a live move of `def` from `src` must take the cold path: the driver's own reason,
    /// else local disks its driver cannot mirror.
    async fn live_refusal(&self, src: &Side, dst: &Side, def: &VmDef) -> Option<String> {
        if let Some(why) = src.driver.live_refusal(def, &*dst.driver).await {
            return Some(why);
        }
        (!def.local_disks().is_empty() && !src.driver.mirrors_disks()).then(|| {
            format!(
                "{}'s hypervisor cannot mirror local disks while the VM runs",
                src.cfg.name
            )
        })
    }

    /// Starts a defined VM on `host`: the hypervisor first, then its switch port (a tap carries
    /// frames only once the hypervisor holds it), checked.
    pub async fn start_vm(&self, cfg: &Config, name: &str, host: &str) -> Result<(), Refused> {
        let row = self
            .state
            .vm(name.to_string())
            .await?
            .ok_or_else(|| Refused::UnknownVm(name.into()))?;
        if row.state == "running" || row.state == "migrating" {
            return Err(Refused::SameHost {
                vm: name.into(),
                host: row.host.unwrap_or_default(),
            });
        }
        let h = cfg
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| Refused::UnknownHost(host.into()))?;
        let def = row.def;
        let mut side = self.side(h).await?;
        let mut started = side.driver.start(&def).await;
        if let Err(e) = &started {
            // A connection that died under the start (the host dropped it) is made anew and
            // the start asked once more; the driver refuses if the VM got there after all.
            if side.link.is_closed() {
                tracing::warn!(host = %h.name, vm = %name, "the connection died while starting: {e}; again");
                self.hosts.forget(&h.name).await;
                side = self.side(h).await?;
                started = side.driver.start(&def).await;
            }
        }
        if let Err(e) = started {
            // The VM runs on this host after all (a start whose answer was lost, now or on an
            // earlier try): it is where it was asked to be, so it is taken as started.
            if !matches!(side.driver.state(&def).await, Ok(RunState::Running)) {
                return Err(Refused::Driver(e.to_string()));
            }
            tracing::warn!(host = %h.name, vm = %name, "already running there ({e}): taken as started");
        }
        if let Err(e) = side.add_port(&def, &port_of(&def)).await {
            let _ = side.driver.destroy(&def).await;
            return Err(Refused::Driver(e.to_string()));
        }
        self.state
            .place_vm(name.into(), Some(host.into()), "running")
            .await?;
        self.state
            .record(NewEvent::info("vm.start", format!("started on {host}")).about(name))
            .await?;
        Ok(())
    }

    /// Reads `name`, running on `host` but not started by the appliance, through its host's
    /// driver (which refuses what it cannot drive, saying why) and returns its definition:
    /// its port's VLAN tag and rate limit as its switch has them. It keeps running, untouched;
    /// the caller keeps the definition.
    pub async fn adopt_vm(
        &self,
        cfg: &Config,
        name: &str,
        host: &str,
        shared: &[String],
    ) -> Result<VmDef, Refused> {
        let h = cfg
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| Refused::UnknownHost(host.into()))?;
        let side = self.side(h).await?;
        let mut def = side
            .driver
            .adopt(name, shared)
            .await
            .map_err(|e| Refused::Driver(e.to_string()))?;
        let port = def.port_on(host);
        match side.switch.port(&port).await {
            Ok(Some(p)) => {
                def.vlan = p.vlan;
                def.rate_kbps = p.rate_kbps;
                Ok(def)
            }
            Ok(None) => Err(Refused::Driver(format!(
                "{name}: its port {port} is not on {host}'s switch ({}): a VM the appliance \
                 moves is on it",
                h.bridge
            ))),
            Err(e) => Err(Refused::Driver(format!("{host}: its switch: {e}"))),
        }
    }

    /// Stops a VM wherever it runs, and removes its port.
    pub async fn stop_vm(&self, cfg: &Config, name: &str) -> Result<(), Refused> {
        let row = self
            .state
            .vm(name.to_string())
            .await?
            .ok_or_else(|| Refused::UnknownVm(name.into()))?;
        let Some(host) = row.host.clone() else {
            return Ok(());
        };
        let h = cfg
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| Refused::UnknownHost(host.clone()))?;
        let side = self.side(h).await?;
        side.driver
            .destroy(&row.def)
            .await
            .map_err(|e| Refused::Driver(e.to_string()))?;
        side.del_port(&row.def)
            .await
            .map_err(|e| Refused::Driver(e.to_string()))?;
        self.own_port(name, &host).await?;
        self.state
            .place_vm(name.into(), Some(host), "stopped")
            .await?;
        self.state
            .record(NewEvent::info("vm.stop", "stopped").about(name))
            .await?;
        Ok(())
    }

    /// Moves one VM. Refusals come back as errors before anything is touched; a move that
    /// starts always ends in a journaled migration (done, failed or rolled back). One that was
    /// rolled back is tried again up to `migration.retries` times, each try a migration of its
    /// own; the last is returned.
    pub async fn migrate(&self, cfg: &Config, req: &Request) -> Result<MigrationRow, Refused> {
        let mut tries = 0;
        loop {
            let m = self.migrate_once(cfg, req).await?;
            if m.state != "rolled-back" || tries >= cfg.migration.retries {
                return Ok(m);
            }
            tries += 1;
            self.state
                .record(
                    NewEvent::warn(
                        "migration.retry",
                        format!(
                            "try {} of {} after migration {} was rolled back: {}",
                            tries + 1,
                            cfg.migration.retries + 1,
                            m.id,
                            m.reason.as_deref().unwrap_or("no reason recorded")
                        ),
                    )
                    .about(&req.vm),
                )
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn migrate_once(&self, cfg: &Config, req: &Request) -> Result<MigrationRow, Refused> {
        let row = self
            .state
            .vm(req.vm.clone())
            .await?
            .ok_or_else(|| Refused::UnknownVm(req.vm.clone()))?;
        let source_name = match (&row.host, row.state.as_str()) {
            (Some(h), "running") => h.clone(),
            _ => {
                return Err(Refused::NotRunning {
                    vm: req.vm.clone(),
                    state: row.state.clone(),
                })
            }
        };
        if source_name == req.target {
            return Err(Refused::SameHost {
                vm: req.vm.clone(),
                host: source_name,
            });
        }
        let find = |n: &str| {
            cfg.hosts
                .iter()
                .find(|h| h.name == n)
                .ok_or_else(|| Refused::UnknownHost(n.to_string()))
        };
        let (src_cfg, dst_cfg) = (find(&source_name)?, find(&req.target)?);
        if src_cfg.hypervisor != dst_cfg.hypervisor {
            return Err(Refused::MixedHypervisors {
                vm: req.vm.clone(),
                from: src_cfg.name.clone(),
                source_kind: src_cfg.hypervisor.as_str(),
                target: dst_cfg.name.clone(),
                target_kind: dst_cfg.hypervisor.as_str(),
            });
        }
        let src = self.side(src_cfg).await?;
        let dst = self.side(dst_cfg).await?;
        let mut def = row.def.clone();
        if def.ip.is_none() {
            // A VM that took its address from DHCP: the lease says where it answers.
            def.ip = self.lease_ip(&def.mac).await;
        }
        let req = &Request {
            new_mac: self.check_new_mac(&def, req.new_mac.as_deref()).await?,
            ..req.clone()
        };
        self.check_room(dst_cfg, &def).await?;
        // Why a live request must take the cold path, if it must.
        let refusal = match req.mode {
            Mode::Live => self.live_refusal(&src, &dst, &def).await,
            Mode::Cold => None,
        };
        let disks = self
            .check_disks(req, refusal.as_deref(), &src, &dst, &def)
            .await?;

        let id = self
            .state
            .begin_migration(
                req.vm.clone(),
                src.cfg.name.clone(),
                dst.cfg.name.clone(),
                req.mode.as_str(),
                req.batch,
            )
            .await?;
        let journal = Journal {
            store: self.journal.clone(),
            id,
        };
        if let Some(mac) = &req.new_mac {
            self.state
                .migration_detail(id, serde_json::json!({"new_mac": mac, "old_mac": def.mac}))
                .await?;
        }
        if !disks.is_empty() {
            let shown: Vec<_> = def
                .local_disks()
                .iter()
                .zip(&disks)
                .map(|(d, u)| {
                    serde_json::json!({"path": d.path, "virtual_bytes": u.virtual_bytes,
                                                 "allocated_bytes": u.allocated_bytes})
                })
                .collect();
            self.state
                .migration_detail(id, serde_json::json!({ "disks": shown }))
                .await?;
        }
        self.state
            .record(
                NewEvent::info(
                    "migration.start",
                    format!(
                        "{} {} -> {} (migration {id})",
                        req.mode.as_str(),
                        src.cfg.name,
                        dst.cfg.name
                    ),
                )
                .about(&req.vm),
            )
            .await?;

        let interval = cfg.migration.probe_interval;
        let probe = probe_addr(req, &def).map(|a| probe::Probe::start(a, interval));
        let mv = Move {
            engine: self,
            cfg,
            req,
            def: &def,
            src: &src,
            dst: &dst,
            journal: &journal,
            disks: &disks,
        };
        // Boxed: the moves' futures are large; on the heap they do not weigh on the stack.
        let outcome = match (req.mode, refusal) {
            (Mode::Cold, _) => Box::pin(mv.cold()).await,
            (Mode::Live, Some(why)) => {
                self.fall_back(id, &req.vm, "cold_because", "cannot live-migrate", &why)
                    .await?;
                Box::pin(mv.cold()).await
            }
            (Mode::Live, None) => match Box::pin(mv.live()).await {
                Ok(o) => Ok(o),
                // Local disks that the cold path cannot carry: the move ends where it began.
                Err(Failure::NotConverged(why))
                    if !disks.is_empty() && src.driver.cold_disks_refusal(&def).is_some() =>
                {
                    Err(Failure::RolledBack(why))
                }
                Err(Failure::NotConverged(why)) => {
                    // Pre-copy could not keep up, or its stream broke and the hypervisor
                    // resumed the VM at the source: it still runs there, untouched.
                    self.fall_back(id, &req.vm, "fallback", "live failed", &why.to_string())
                        .await?;
                    Box::pin(mv.cold()).await
                }
                Err(e) => Err(e),
            },
        };
        // Give the probe a moment to see the VM answer again before it stops.
        if let Some(p) = probe {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seen = p.finish().await;
            let _ = self.state.set_break(id, seen.break_ms as i64).await;
            let _ = self
                .state
                .migration_detail(id, serde_json::json!({"probe": seen}))
                .await;
        }
        let (state, reason, host) = match outcome {
            Ok(()) => ("done", None, dst.cfg.name.clone()),
            Err(Failure::RolledBack(why)) | Err(Failure::NotConverged(why)) => {
                ("rolled-back", Some(why.to_string()), src.cfg.name.clone())
            }
            Err(f @ Failure::Forward { .. }) => {
                ("failed", Some(f.to_string()), dst.cfg.name.clone())
            }
        };
        self.state
            .end_migration(id, state, reason.clone(), host.clone(), "running")
            .await?;
        if host == dst.cfg.name {
            self.own_port(&req.vm, &host).await?;
        }
        let ev = match &reason {
            None => NewEvent::info("migration.done", format!("now on {host} (migration {id})")),
            Some(r) => NewEvent::warn(
                "migration.failed",
                format!("{state}: {r}; the VM runs on {host} (migration {id})"),
            ),
        };
        self.state.record(ev.about(&req.vm)).await?;
        Ok(self
            .state
            .migration(id)
            .await?
            .expect("the migration just written"))
    }
}

impl Engine {
    /// Records why live move `id` of `vm` takes the cold path: under `key` in its details, and
    /// as a `migration.fallback` event ("`what` (why); taking the cold path").
    async fn fall_back(
        &self,
        id: i64,
        vm: &str,
        key: &str,
        what: &str,
        why: &str,
    ) -> Result<(), Refused> {
        let _ = self
            .state
            .migration_detail(id, serde_json::json!({ key: why }))
            .await;
        self.state
            .record(
                NewEvent::warn(
                    "migration.fallback",
                    format!("{what} ({why}); taking the cold path"),
                )
                .about(vm),
            )
            .await?;
        Ok(())
    }

    /// Once `vm` runs on `host` after a move, or no longer runs where it was found: an adopted
    /// VM's port is the driver's own name from now on (the definition as stored, a new MAC
    /// included).
    pub(crate) async fn own_port(&self, vm: &str, host: &str) -> Result<(), Refused> {
        if let Some(row) = self.state.vm(vm.to_string()).await? {
            if row.def.adopted.is_some() {
                self.state.define_vm(row.def.moved_to(host)).await?;
            }
        }
        Ok(())
    }

    /// The address of the bound lease of `mac`, if the appliance's DHCP gave it one.
    pub async fn lease_ip(&self, mac: &str) -> Option<std::net::Ipv4Addr> {
        let leases = self.state.leases().await.ok()?;
        leases
            .iter()
            .filter(|l| l.state == "bound" && l.mac.eq_ignore_ascii_case(mac))
            .max_by_key(|l| l.expires_ms)
            .and_then(|l| l.ip.parse().ok())
    }

    /// Replaces `def`'s NIC on `side` by one with `mac` and keeps the new MAC in its definition
    /// (where its next start or move takes it from); returns the definition as it now is.
    pub(crate) async fn give_mac(&self, side: &Side, def: &VmDef, mac: &str) -> Result<VmDef> {
        side.driver.replace_nic(def, mac).await?;
        let def = VmDef {
            mac: mac.to_string(),
            ..def.clone()
        };
        self.state.define_vm(def.clone()).await?;
        Ok(def)
    }

    /// `new` as the VM's next MAC (normalized), or why it cannot be.
    async fn check_new_mac(
        &self,
        def: &VmDef,
        new: Option<&str>,
    ) -> Result<Option<String>, Refused> {
        let Some(new) = new else { return Ok(None) };
        let bad = |why: String| Refused::BadMac {
            vm: def.name.clone(),
            why,
        };
        let mac = new
            .parse::<crate::config::values::Mac>()
            .map_err(bad)?
            .to_string();
        if mac.eq_ignore_ascii_case(&def.mac) {
            return Err(bad(format!("{mac} is already its MAC")));
        }
        if let Some(other) = self
            .state
            .vms()
            .await?
            .into_iter()
            .find(|v| v.name != def.name && v.def.mac.eq_ignore_ascii_case(&mac))
        {
            return Err(bad(format!("{mac} is {}'s", other.name)));
        }
        Ok(Some(mac))
    }
}

/// Runs the after-move hooks for `def`, moved `from` -> `to` (with a new MAC if `old_mac` is
/// its old one); each is a journaled step, and a failure is recorded as a warning.
pub(crate) async fn run_hooks(
    engine: &Engine,
    cfg: &Config,
    journal: &Journal,
    def: &VmDef,
    old_mac: Option<&str>,
    from: &str,
    to: &str,
) {
    let mut all: Vec<Arc<dyn hooks::AfterMove>> = engine.after_move.iter().cloned().collect();
    if let Some(path) = &cfg.migration.after_move {
        all.push(Arc::new(hooks::Script {
            path: path.clone(),
            timeout: cfg.migration.hook_timeout,
        }));
    }
    let moved = hooks::Moved {
        migration: journal.id,
        vm: def.name.clone(),
        from: from.to_string(),
        to: to.to_string(),
        mac: def.mac.clone(),
        old_mac: old_mac.map(str::to_string),
        ip: def.ip,
    };
    for h in all {
        let step = Step::AfterMove(h.name());
        let run = async { h.moved(&moved).await.map_err(Error::Hook) };
        if let Some(e) = journal.try_step(step, run).await {
            let _ = engine
                .state
                .record(NewEvent::warn("migration.hook", format!("{step}: {e}")).about(&def.name))
                .await;
        }
    }
}

/// Where the probe connects: the request's `ip:port`, or the VM's address on port 80.
fn probe_addr(req: &Request, def: &VmDef) -> Option<SocketAddr> {
    if !req.probe_enabled {
        return None;
    }
    match req.probe.as_deref() {
        Some(a) if a.starts_with(':') => {
            let port = a[1..].parse().ok()?;
            def.ip.map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
        }
        Some(a) => a.parse().ok(),
        None => def.ip.map(|ip| SocketAddr::new(IpAddr::V4(ip), 80)),
    }
}

/// How a started move failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Undone: the VM runs on the source, as before.
    #[error("{0}")]
    RolledBack(Error),
    /// Live pre-copy gave up; the VM runs on the source, untouched (the cold path may follow).
    #[error("{0}")]
    NotConverged(Error),
    /// It failed after the VM already ran on the target: it stays there.
    #[error("the VM runs on {on}, but: {}", join(problems))]
    Forward { on: String, problems: Vec<Error> },
}

fn join(problems: &[Error]) -> String {
    let all: Vec<String> = problems.iter().map(Error::to_string).collect();
    all.join("; ")
}

/// The parts of one move.
#[derive(Clone, Copy)]
pub(crate) struct Move<'a> {
    pub engine: &'a Engine,
    pub cfg: &'a Config,
    pub req: &'a Request,
    pub def: &'a VmDef,
    pub src: &'a Side,
    pub dst: &'a Side,
    pub journal: &'a Journal,
    /// The sizes of the VM's local disks on the source, for the target's copies (empty when
    /// the move carries no disk).
    pub disks: &'a [hypervisor::DiskUsage],
}

impl Move<'_> {
    /// The VM's port on the source, and on the target (an adopted VM's may differ).
    fn src_port(&self) -> String {
        self.def.port_on(&self.src.cfg.name)
    }

    fn dst_port(&self) -> String {
        self.def.port_on(&self.dst.cfg.name)
    }

    /// The port the VM needs on the target: the source port's tag and rate limit (the live
    /// truth), else its definition's.
    pub async fn port_spec(&self) -> PortSpec {
        match self.src.switch.port(&self.src_port()).await {
            Ok(Some(p)) => p,
            _ => port_of(self.def),
        }
    }

    /// Readies the target: a paused VM waiting for its state, and its switch port (with the
    /// source port's VLAN tag and rate limit) up and checked, before anything stops. Where the
    /// load itself makes the VM's NIC (`nic_made_by_load`), the port waits on the switch for its device, and
    /// `port_after_load` checks that it came; the spec is returned for it.
    pub async fn prepare_target(&self) -> Result<PortSpec> {
        let spec = self.port_spec().await;
        // What an earlier move left there when the target stopped answering (a VM that never
        // ran, or one whose control socket a dead session still holds) goes first, but only
        // while the VM demonstrably runs on the source; a running one on the target is refused.
        let there = self.dst.driver.state(self.def).await;
        match there {
            Ok(RunState::Absent) => {}
            Ok(RunState::Running) => {
                return Err(Error::Refused(format!(
                    "{} already runs on {}; the state says it runs on {}",
                    self.def.name, self.dst.cfg.name, self.src.cfg.name
                )))
            }
            leftover => {
                let here = self.src.driver.state(self.def).await?;
                if here != RunState::Running {
                    return Err(Error::Refused(format!(
                        "{} has a leftover of {} ({}) and the one on {} is {here:?}: touching neither",
                        self.dst.cfg.name,
                        self.def.name,
                        match leftover {
                            Ok(s) => format!("{s:?}"),
                            Err(e) => e.to_string(),
                        },
                        self.src.cfg.name
                    )));
                }
                self.journal
                    .step(Step::ClearLeftover, async {
                        Ok(self.dst.driver.destroy(self.def).await?)
                    })
                    .await?;
            }
        }
        if !self.disks.is_empty() {
            // Before the hypervisor opens them. A failed make leaves nothing made.
            self.journal
                .step(Step::TargetDisks, async {
                    Ok(self.dst.driver.make_disks(self.def, self.disks).await?)
                })
                .await?;
        }
        let prepared = self
            .journal
            .step(Step::PrepareTarget, async {
                Ok(self.dst.driver.prepare_incoming(self.def).await?)
            })
            .await;
        if let Err(e) = prepared {
            self.undo_disks().await;
            return Err(e);
        }
        let later = self.dst.driver.nic_made_by_load();
        let port = self
            .journal
            .step(Step::TargetPort, async {
                Ok(self
                    .dst
                    .switch
                    .put_port(&self.dst_port(), &spec, later)
                    .await?)
            })
            .await;
        if let Err(e) = port {
            self.undo_target().await;
            return Err(e);
        }
        Ok(spec)
    }

    /// Readies the re-point, before the VM stops. None where the target port has no device yet
    /// (the load makes it) or its switch cannot be reached so; the announcement once the
    /// VM runs there (`tell_network`) then does it, later.
    pub async fn repointer(&self) -> Option<Box<dyn network::Announcer>> {
        if self.dst.driver.nic_made_by_load() {
            return None;
        }
        self.dst
            .switch
            .announcer(&self.dst_port())
            .await
            .map_err(|e| tracing::warn!(vm = %self.def.name, "the network is re-pointed only once the VM runs on the target: {e}"))
            .ok()
    }

    /// The VM has stopped on the source: the switches are told it is at its target port now,
    /// so what is sent to it during the break waits in the target's tap (the hypervisor reads it once
    /// the VM runs there) instead of being lost at the source. A failure is recorded; the
    /// announcement once the VM runs there follows anyway.
    pub async fn repoint(&self, announcer: &mut dyn network::Announcer) {
        let frame = network::announcement(&self.def.mac, self.def.ip);
        self.journal
            .try_step(Step::Repoint, async {
                let frame =
                    frame.ok_or_else(|| Error::Refused(format!("bad MAC {}", self.def.mac)))?;
                Ok(announcer.send(&frame).await?)
            })
            .await;
    }

    /// For a driver whose load made the VM's NIC: the port put on the switch before has its
    /// device now (the driver's hotplug waits for it before the VM runs); if the switch did not
    /// take it up, the port is made again, which says why it cannot be.
    pub async fn port_after_load(&self, spec: &PortSpec) -> Result<()> {
        if !self.dst.driver.nic_made_by_load() {
            return Ok(());
        }
        self.journal
            .step(Step::TargetPortUp, async {
                match self
                    .dst
                    .switch
                    .port_up(&self.dst_port(), PORT_UP_WITHIN)
                    .await
                {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        tracing::warn!(vm = %self.def.name, "{e}; the port is made again");
                        self.dst.add_port(self.def, spec).await
                    }
                }
            })
            .await
            .map(drop)
    }

    /// Removes what `prepare_target` made.
    pub async fn undo_target(&self) {
        self.journal
            .try_step(Step::UndoPrepareTarget, async {
                Ok(self.dst.driver.destroy(self.def).await?)
            })
            .await;
        self.journal
            .try_step(Step::UndoTargetPort, self.dst.del_port(self.def))
            .await;
        self.undo_disks().await;
    }

    /// Removes the target's copies of the disks this move made there (the target only: the
    /// source's are the VM's own).
    pub async fn undo_disks(&self) {
        if self.disks.is_empty() {
            return;
        }
        self.journal
            .try_step(Step::UndoTargetDisks, async {
                Ok(self.dst.driver.remove_disks(self.def).await?)
            })
            .await;
    }

    /// Once the VM runs on the target: its new MAC if one was asked for, the network told and
    /// the hooks run (with the MAC it now has). Returns what went wrong, for `clear_source` to
    /// report.
    pub async fn arrive(&self) -> Vec<Error> {
        let Some(mac) = &self.req.new_mac else {
            let problems = self.tell_network().await;
            self.hooks(self.def, None).await;
            return problems;
        };
        // The bindings follow first, so that the guest's first request from its new NIC finds
        // its address waiting; if the NIC cannot be replaced they go back.
        let renewed = VmDef {
            mac: mac.clone(),
            ..self.def.clone()
        };
        self.hooks(&renewed, Some(&self.def.mac)).await;
        let mut problems = Vec::new();
        let given = async {
            self.engine
                .give_mac(self.dst, self.def, mac)
                .await
                .map(drop)
        };
        let now = match self.journal.step(Step::NewMac, given).await {
            Ok(()) => &renewed,
            Err(e) => {
                problems.push(e);
                self.hooks(self.def, Some(mac)).await;
                self.def
            }
        };
        problems.extend(Move { def: now, ..*self }.tell_network().await);
        problems
    }

    /// Runs the after-move hooks for the VM as `def` says it now is.
    async fn hooks(&self, def: &VmDef, old_mac: Option<&str>) {
        run_hooks(
            self.engine,
            self.cfg,
            self.journal,
            def,
            old_mac,
            &self.src.cfg.name,
            &self.dst.cfg.name,
        )
        .await;
    }

    /// Tells the network where the VM now is, at once (the break ends when the switches know):
    /// the announcement from its new port, and the appliance's own neighbour entry. Returns
    /// what went wrong, for `clear_source` to report.
    pub async fn tell_network(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let announced = async { Ok(self.dst.driver.announce(self.def).await?) };
        problems.extend(self.journal.try_step(Step::Announce, announced).await);
        if let Some(ip) = self.def.ip {
            // Only on a segment the appliance is attached to: a relayed one is routed.
            let on_link = |n: &&crate::config::Network| n.via.is_none() && n.address.contains(&ip);
            if let Some(net) = self.cfg.networks.iter().find(on_link) {
                let set = async {
                    network::replace_neighbour(ip, &self.def.mac, &net.interface)
                        .await
                        .map_err(Error::Neighbour)
                };
                problems.extend(self.journal.try_step(Step::ApplianceNeighbour, set).await);
            }
        }
        problems
    }

    /// Stops the VM on the source and removes its port there; `problems` are those of the
    /// steps before, reported together.
    pub async fn clear_source(&self, mut problems: Vec<Error>) -> Result<(), Failure> {
        let stopped = async { Ok(self.src.driver.destroy(self.def).await?) };
        problems.extend(self.journal.try_step(Step::StopSource, stopped).await);
        let port = self.src.del_port(self.def);
        problems.extend(self.journal.try_step(Step::SourcePort, port).await);
        // The source's disks go only once the VM runs on its copies, and only if asked.
        // After anything went wrong on the way they stay, whatever the config says.
        if problems.is_empty()
            && !self.disks.is_empty()
            && self.cfg.migration.source_disks == SourceDisks::Remove
        {
            let removed = async { Ok(self.src.driver.remove_disks(self.def).await?) };
            problems.extend(self.journal.try_step(Step::SourceDisks, removed).await);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Failure::Forward {
                on: self.dst.cfg.name.clone(),
                problems,
            })
        }
    }
}

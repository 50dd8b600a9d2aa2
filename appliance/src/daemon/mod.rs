//! `netmigrate serve`: the long-running appliance. It owns the state; everything else (CLI,
//! dashboard, tests) talks to it over the API.

mod lock;
mod notify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Mutex};

use crate::config::{Config, ConfigErrors};
use crate::state::{now_ms, NewEvent, State, StateError};
use crate::Error;

pub use lock::{LockError, StateLock};

/// Hosts collected at once; the rest wait for a free slot.
pub const INVENTORY_CONCURRENCY: usize = 64;

/// Everything the running daemon shares between its tasks.
pub struct App {
    pub state: State,
    pub inventory: Arc<crate::inventory::Inventory>,
    pub images: netmigrate_image::Store,
    /// What follows a VM after a move, registered by the services (DHCP, DNS).
    pub after_move: crate::migrate::hooks::Hooks,
    /// The DHCP server: its counters, and where new pools go.
    pub dhcp: Arc<crate::dhcp::Dhcp>,
    /// The DNS server, when a network has a domain or forwarders are set.
    pub dns: Option<Arc<crate::dns::Dns>>,
    /// The TFTP server's counters, once it runs.
    pub tftp: std::sync::OnceLock<Arc<netmigrate_services::tftp::Stats>>,
    /// The routing and NAT set up for `[router]`.
    router: std::sync::Mutex<Option<crate::router::Router>>,
    /// The config file's, with the hosts enrolled by provisioning added.
    config: RwLock<Arc<Config>>,
    /// The names of the config file's own hosts (the others were enrolled).
    file_hosts: RwLock<Vec<String>>,
    config_path: PathBuf,
    pub started_ms: i64,
    started: Instant,
    reload_lock: Mutex<()>,
    last_reload: RwLock<Option<ReloadOutcome>>,
}

/// How the last reload went, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub at_ms: i64,
    pub ok: bool,
    pub message: String,
}

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config has {n} problem(s); the running config stays:\n{0}", n = .0.0.len())]
    Config(ConfigErrors),
    #[error("{0}; restart netmigrate to apply it (the running config stays)")]
    NeedsRestart(String),
    #[error(transparent)]
    State(#[from] StateError),
}

impl ReloadError {
    /// Each problem as one line, for API clients.
    pub fn details(&self) -> Vec<String> {
        match self {
            ReloadError::Config(errs) => errs.0.iter().map(|e| e.to_string()).collect(),
            _ => Vec::new(),
        }
    }
}

impl App {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// The migration engine over this appliance's state, store, inventory and hooks.
    pub fn engine(&self) -> crate::migrate::Engine {
        crate::migrate::Engine {
            state: self.state.clone(),
            journal: Arc::new(self.state.clone()),
            store: self.images.clone(),
            hosts: Arc::new(self.inventory.clone()),
            after_move: self.after_move.clone(),
        }
    }

    /// Takes up the hosts provisioning has enrolled so far (after one more became ready).
    pub async fn add_enrolled(&self) {
        let mut file = (*self.config()).clone();
        let names = self.file_hosts.read().expect("hosts lock").clone();
        file.hosts.retain(|h| names.contains(&h.name));
        match with_enrolled(&self.state, file).await {
            Ok((new, _)) => *self.config.write().expect("config lock") = Arc::new(new),
            Err(e) => tracing::warn!("enrolled hosts: {e}"),
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload.read().expect("reload lock").clone()
    }

    /// Re-reads the config file. A bad file, or one that changes what only a restart can
    /// change, is refused and the running config stays. SIGHUP and the API both come here.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload().await;
        let outcome = match &result {
            Ok(msg) => {
                self.state
                    .record(NewEvent::info("config.reload", msg.clone()))
                    .await?;
                ReloadOutcome {
                    at_ms: now_ms(),
                    ok: true,
                    message: msg.clone(),
                }
            }
            Err(e) => {
                let _ = self
                    .state
                    .record(NewEvent::warn(
                        "config.reload",
                        format!("reload refused: {e}"),
                    ))
                    .await;
                ReloadOutcome {
                    at_ms: now_ms(),
                    ok: false,
                    message: e.to_string(),
                }
            }
        };
        *self.last_reload.write().expect("reload lock") = Some(outcome);
        result
    }

    async fn try_reload(&self) -> Result<String, ReloadError> {
        let new = Config::load(&self.config_path).map_err(ReloadError::Config)?;
        let old = self.config();
        if new.state_dir != old.state_dir {
            return Err(ReloadError::NeedsRestart(format!(
                "state_dir changed from {} to {}",
                old.state_dir.display(),
                new.state_dir.display()
            )));
        }
        if new.api.listen != old.api.listen {
            return Err(ReloadError::NeedsRestart("api.listen changed".into()));
        }
        // The boot servers and discovery start with the daemon, on what these said then.
        if new.boot != old.boot {
            return Err(ReloadError::NeedsRestart("[boot] changed".into()));
        }
        let network = |c: &Config| c.provisioning.as_ref().map(|p| p.network.clone());
        if network(&new) != network(&old) {
            return Err(ReloadError::NeedsRestart(
                "provisioning (or its network) was added, removed or changed".into(),
            ));
        }
        let sync = self.state.sync_hosts(new.hosts.clone()).await?;
        let (new, file_hosts) = with_enrolled(&self.state, new).await?;
        // Networks, ranges, reservations and boot files take effect at once; a network on an
        // interface the server does not listen on yet waits for a restart, and says so.
        let dhcp = self.dhcp.update(&new).await;
        let new = Arc::new(new);
        // Names of hosts, reservations and the appliance follow at once (a new zone needs a
        // restart, as a new interface does for DHCP).
        if let Some(dns) = &self.dns {
            dns.refresh(&new).await;
        }
        let routing = self.reroute(new.router.as_ref());
        *self.config.write().expect("config lock") = new;
        *self.file_hosts.write().expect("hosts lock") = file_hosts;
        let mut msg = if sync.is_empty() {
            "config reloaded; hosts unchanged".to_string()
        } else {
            format!(
                "config reloaded; hosts added {:?}, changed {:?}, removed {:?}",
                sync.added, sync.changed, sync.removed
            )
        };
        if let Err(e) = dhcp {
            msg.push_str(&format!("; {e}"));
        }
        if let Err(e) = routing {
            msg.push_str(&format!("; {e}"));
        }
        Ok(msg)
    }

    /// Sets routing up as `wanted` says, if that is not what runs: the old rules go first.
    fn reroute(&self, wanted: Option<&crate::config::RouterConfig>) -> Result<(), String> {
        let mut router = self.router.lock().expect("router lock");
        if router.as_ref().map(|r| r.config()) == wanted {
            return Ok(());
        }
        if let Some(old) = router.take() {
            old.remove()?;
        }
        if let Some(w) = wanted {
            *router = Some(crate::router::Router::start(w)?);
        }
        Ok(())
    }
}

/// `file` (the config file's hosts only) with the hosts provisioning enrolled added, and the
/// names of the file's own hosts.
async fn with_enrolled(
    state: &State,
    mut file: Config,
) -> Result<(Config, Vec<String>), StateError> {
    let names = file.hosts.iter().map(|h| h.name.clone()).collect();
    let enrolled = crate::provision::enrolled_hosts(state, &file).await?;
    file.hosts.extend(enrolled);
    Ok((file, names))
}

/// Creates state_dir (mode 0750) if needed. An existing one is checked as PostgreSQL checks
/// its data directory: it holds leases, pinned host keys, account hashes and VM memory images,
/// so one everybody may write to is refused (anyone could have planted a database or a socket
/// there), and what everybody may read of it is taken away. Returns what it changed.
fn prepare_state_dir(dir: &Path) -> Result<Vec<String>, Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| Error::Io(format!("creating state_dir {}", dir.display()), e))?;
        return Ok(Vec::new());
    }
    let mode_of = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| Error::Io(format!("reading the mode of {}", p.display()), e))
    };
    let mode = mode_of(dir)?;
    if mode & 0o002 != 0 {
        return Err(Error::Invalid(format!(
            "state_dir {} is writable by everyone (mode {mode:04o}); it holds the leases, host \
             keys and images: check what is in it, then `chmod 750 {}`",
            dir.display(),
            dir.display()
        )));
    }
    let mut changed = Vec::new();
    let db = dir.join("state.db");
    let files = [
        dir.to_path_buf(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
        db,
    ];
    for p in files.iter().filter(|p| p.exists()) {
        let mode = mode_of(p)?;
        if mode & 0o007 != 0 {
            let new = mode & !0o007;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(new))
                .map_err(|e| Error::Io(format!("chmod {new:04o} {}", p.display()), e))?;
            changed.push(format!(
                "{} was open to everyone (mode {mode:04o}); now {new:04o}",
                p.display()
            ));
        }
    }
    Ok(changed)
}

/// The appliance with its services started: the state locked and open, the FTP, DNS, DHCP and
/// boot servers and the router running. `serve` adds the API and the signals; the fuzz target
/// of the API drives `api::router(app)` over one of these.
pub struct Running {
    pub app: Arc<App>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _lock: StateLock,
}

impl Running {
    /// Stops the services' tasks and takes the router's rules down.
    fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = self.app.router.lock().expect("router lock").take() {
            if let Err(e) = r.remove() {
                tracing::warn!("router: {e}");
            }
        }
    }
}

/// Loads the config, opens the state and starts every service it asks for but the API.
pub async fn start(config_path: &Path) -> Result<Running, Error> {
    let config = Config::load(config_path).map_err(Error::Config)?;
    let tightened = prepare_state_dir(&config.state_dir)?;
    let lock = StateLock::acquire(&config.state_dir, &config.lock_path())?;
    let state = State::open(&config.db_path())?;
    for t in tightened {
        tracing::warn!("{t}");
        state.record(NewEvent::warn("state.mode", t)).await?;
    }
    let sync = state.sync_hosts(config.hosts.clone()).await?;
    tracing::info!(
        config = %config_path.display(),
        state = %config.db_path().display(),
        hosts_added = ?sync.added,
        "starting netmigrate {}",
        env!("CARGO_PKG_VERSION")
    );

    let (images, ftp_tasks) = crate::ftp::start(&config, &state).await?;
    let (config, file_hosts) = with_enrolled(&state, config).await?;
    let config = Arc::new(config);
    // DNS first: the DHCP server's lease changes name clients from its first answer.
    let (dns, dns_tasks) = match crate::dns::Dns::start(&config, &state).await? {
        Some((d, t)) => (Some(d), t),
        None => (None, Vec::new()),
    };
    let (dhcp, dhcp_tasks) = crate::dhcp::start(&config, &state, dns.clone()).await?;
    let router = match &config.router {
        Some(r) => match crate::router::Router::start(r) {
            Ok(r) => Some(r),
            Err(e) => {
                state.record(NewEvent::warn("router", e)).await?;
                None
            }
        },
        None => None,
    };
    let mut after_move: Vec<Arc<dyn crate::migrate::hooks::AfterMove>> =
        vec![Arc::new(crate::dhcp::FollowVm(dhcp.clone()))];
    if let Some(d) = &dns {
        after_move.push(Arc::new(crate::dns::FollowVm(d.clone())));
    }
    let app = Arc::new(App {
        images,
        state: state.clone(),
        inventory: Arc::new(crate::inventory::Inventory::new(INVENTORY_CONCURRENCY)),
        after_move: Arc::new(after_move),
        dhcp,
        dns,
        router: std::sync::Mutex::new(router),
        tftp: Default::default(),
        config: RwLock::new(config),
        file_hosts: RwLock::new(file_hosts),
        config_path: config_path.to_path_buf(),
        started_ms: now_ms(),
        started: Instant::now(),
        reload_lock: Mutex::new(()),
        last_reload: RwLock::new(None),
    });

    let boot_tasks = crate::provision::start(app.clone()).await?;
    let tasks = [ftp_tasks, dhcp_tasks, dns_tasks, boot_tasks]
        .into_iter()
        .flatten()
        .collect();
    Ok(Running {
        app,
        tasks,
        _lock: lock,
    })
}

/// Runs the appliance until SIGTERM or SIGINT.
pub async fn serve(config_path: &Path) -> Result<(), Error> {
    let running = start(config_path).await?;
    let app = running.app.clone();
    let state = &app.state;
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = crate::api::server::start(app.clone(), stop_rx).await?;
    state
        .record(NewEvent::info(
            "daemon.start",
            format!(
                "netmigrate {} started (pid {}), api on {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                api.describe()
            ),
        ))
        .await?;
    notify::notify("READY=1");

    // Migrations a crash or stop interrupted are finished or rolled back, in the background.
    {
        let engine = app.engine();
        let cfg = app.config();
        tokio::spawn(async move { engine.recover(&cfg).await });
    }

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::Io("SIGTERM handler".into(), e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::Io("SIGINT handler".into(), e))?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Error::Io("SIGHUP handler".into(), e))?;
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                notify::notify("RELOADING=1");
                match app.reload().await {
                    Ok(msg) => tracing::info!("SIGHUP: {msg}"),
                    Err(e) => tracing::warn!("SIGHUP: {e}"),
                }
                notify::notify("READY=1");
            }
        }
    };
    notify::notify("STOPPING=1");
    tracing::info!("{why} received, stopping");
    let _ = stop_tx.send(true);
    api.stopped().await;
    running.stop();
    state
        .record(NewEvent::info(
            "daemon.stop",
            format!("netmigrate stopped on {why} after {}s", app.uptime_secs()),
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::prepare_state_dir;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(p: &std::path::Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn state_dir_modes_are_checked_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        assert!(prepare_state_dir(&dir).unwrap().is_empty());
        assert_eq!(mode(&dir), 0o750);

        // Open to everyone: the directory and the database lose what others may do.
        chmod(&dir, 0o755);
        let db = dir.join("state.db");
        std::fs::write(&db, b"").unwrap();
        chmod(&db, 0o644);
        let changed = prepare_state_dir(&dir).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed[1].contains("mode 0644); now 0640"), "{changed:?}");
        assert_eq!((mode(&dir), mode(&db)), (0o750, 0o640));
        assert!(prepare_state_dir(&dir).unwrap().is_empty());

        // Writable by everyone: refused, nothing changed.
        chmod(&dir, 0o777);
        let err = prepare_state_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by everyone (mode 0777)"), "{err}");
        assert!(err.contains("chmod 750"), "{err}");
        assert_eq!(mode(&dir), 0o777);
    }
}

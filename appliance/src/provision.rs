//! Provisioning as the appliance runs it: boot files by TFTP and HTTP on each served network,
//! machines discovered from their DHCP requests, accepted by rule or by the operator, sent the
//! installer with a one-time token, and enrolled as hosts when it calls back.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_provisioning::http::{Callback, Commissioned, Deployment, Report};
use netmigrate_provisioning::{ipxe, token, Enrolled, Enrolment, Refused, Stage};
use netmigrate_services::dhcp::BootClient;
use netmigrate_services::tftp;
use tokio::task::JoinHandle;

use crate::config::{Config, HostConfig, Mac, ProvisioningConfig};
use crate::daemon::App;
use crate::state::machines::{Acceptance, EnrolledHost, MachineRow};
use crate::state::{NewEvent, StateError};
use crate::Error;

/// Starts TFTP and HTTP on every attached network that serves DHCP, and discovery.
pub async fn start(app: Arc<App>) -> Result<Vec<JoinHandle<()>>, Error> {
    let cfg = app.config();
    let Some(boot) = &cfg.boot else {
        return Ok(Vec::new());
    };
    let server = tftp::Server::new(&boot.dir).map_err(|e| Error::Invalid(e.to_string()))?;
    let root = boot
        .dir
        .canonicalize()
        .map_err(|e| Error::Io(format!("boot directory {}", boot.dir.display()), e))?;
    let mut tasks = Vec::new();
    for n in cfg
        .networks
        .iter()
        .filter(|n| n.via.is_none() && n.dhcp_range.is_some())
    {
        let addr = n.address.addr();
        if boot.tftp {
            tasks.push(
                server
                    .listen(addr, tftp::PORT, Some(&n.interface))
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            );
        }
        if boot.http_port != 0 {
            let base = format!("http://{addr}:{}", boot.http_port);
            let enrolment: Option<Arc<dyn Enrolment>> = cfg
                .provisioning
                .as_ref()
                .filter(|p| p.network == n.name)
                .map(|_| {
                    Arc::new(AppEnrolment {
                        app: app.clone(),
                        root: root.clone(),
                    }) as Arc<dyn Enrolment>
                });
            if enrolment.is_some() {
                // Firmware sent here over TFTP (`tftp://ADDR/netmigrate.ipxe`) comes to HTTP.
                let chain = root.join("netmigrate.ipxe");
                std::fs::write(&chain, ipxe::chain(&base))
                    .map_err(|e| Error::Io(format!("writing {}", chain.display()), e))?;
            }
            let router = netmigrate_provisioning::http::router(root.clone(), base, enrolment);
            let at = SocketAddr::from((addr, boot.http_port));
            tasks.push(
                netmigrate_provisioning::http::listen(at, &n.interface, router)
                    .map_err(|e| Error::Io(format!("boot HTTP on {at} ({})", n.interface), e))?,
            );
        }
    }
    app.tftp.set(server.stats.clone()).ok();
    let seen = app.dhcp.boots.lock().expect("boots").take();
    if cfg.provisioning.is_some() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                sweep_overdue(&app).await;
            }
        }));
    }
    if let (Some(mut rx), Some(_)) = (seen, &cfg.provisioning) {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((network, client)) = rx.recv().await {
                if let Err(e) = discovered(&app, &network, &client).await {
                    tracing::warn!("provisioning: {e}");
                }
            }
        }));
    }
    Ok(tasks)
}

/// A network-booting client: recorded (first and last seen). Clients with a reservation of
/// their own (VMs, configured machines) are not machines to enrol. The rules are applied when
/// it asks for its script: accepting it now would give it a reservation between its DHCP
/// offer and its request, and the NAK that follows stops PXE firmware for good.
async fn discovered(app: &App, network: &str, c: &BootClient) -> Result<(), StateError> {
    let cfg = app.config();
    if cfg
        .provisioning
        .as_ref()
        .filter(|p| p.network == network)
        .is_none()
    {
        return Ok(());
    }
    let mac = Mac(c.mac).to_string();
    if reserved_elsewhere(app, &cfg, &mac).await? {
        return Ok(());
    }
    let (_, new) = app
        .state
        .machine_seen(
            network.to_string(),
            mac.clone(),
            c.vendor_class.clone(),
            c.arch,
        )
        .await?;
    if new {
        app.state
            .record(
                NewEvent::info(
                    "provision.discovered",
                    format!(
                        "{mac} network-booted ({}, architecture {})",
                        c.vendor_class.as_deref().unwrap_or("no vendor class"),
                        c.arch.map_or("unknown".into(), |a| a.to_string())
                    ),
                )
                .about(network),
            )
            .await?;
    }
    Ok(())
}

/// Whether `mac` has a reservation that is not an enrolment's (config or run time).
async fn reserved_elsewhere(app: &App, cfg: &Config, mac: &str) -> Result<bool, StateError> {
    let in_config = cfg
        .reservations
        .iter()
        .any(|r| r.mac.is_some_and(|m| m.to_string() == mac));
    if in_config {
        return Ok(true);
    }
    let machine = app.state.machine(mac.to_string()).await?;
    let runtime = app.state.reservations().await?;
    Ok(runtime.iter().any(|r| {
        r.mac.as_deref() == Some(mac) && machine.as_ref().and_then(|m| m.ip.as_ref()) != Some(&r.ip)
    }))
}

/// Accepts machine `mac`: a name, a reserved address, the profile it is deployed with
/// (`profile`, else `provisioning.default_profile`); DHCP and DNS take them up at once.
pub async fn accept(
    app: &App,
    mac: &str,
    why: String,
    profile: Option<String>,
) -> Result<MachineRow, StateError> {
    let cfg = app.config();
    let Some(p) = &cfg.provisioning else {
        return Err(StateError::Conflict(
            "provisioning is not configured; add a [provisioning] section".into(),
        ));
    };
    let before = app.state.machine(mac.to_string()).await?;
    let a = Acceptance {
        why: why.clone(),
        template: p.hostname.clone(),
        pool: p.pool,
        names_taken: cfg.hosts.iter().map(|h| h.name.clone()).collect(),
        ips_taken: cfg.reservations.iter().map(|r| r.ip).collect(),
        profile: profile.or_else(|| p.profile.clone()),
    };
    let m = app.state.accept_machine(mac.to_string(), a).await?;
    if before.is_some_and(|b| b.stage == Stage::Discovered.as_str()) {
        app.state
            .record(
                NewEvent::info(
                    "provision.accepted",
                    format!(
                        "{mac} accepted as {} at {} ({why})",
                        m.name.as_deref().unwrap_or("?"),
                        m.ip.as_deref().unwrap_or("?")
                    ),
                )
                .about(&m.network),
            )
            .await?;
        // Its reservation, made with the acceptance, taken up as any other.
        let r = crate::state::ReservationRow {
            network: m.network.clone(),
            ip: m.ip.clone().unwrap_or_default(),
            mac: Some(m.mac.clone()),
            client_id: None,
            hostname: m.name.clone(),
        };
        crate::app::reservations::changed(app, "added", &r).await;
    }
    Ok(m)
}

/// The hosts enrolled by provisioning, as the rest of the appliance sees hosts: the
/// `[provisioning.host]` template with each one's name, address and pinned key. A host of
/// the same name in the config file wins.
pub async fn enrolled_hosts(
    state: &crate::state::State,
    cfg: &Config,
) -> Result<Vec<HostConfig>, StateError> {
    let Some(p) = &cfg.provisioning else {
        return Ok(Vec::new());
    };
    let rows = state.hosts().await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.enrolled && !cfg.hosts.iter().any(|h| h.name == r.name))
        .filter_map(|r| {
            Some(HostConfig {
                name: r.name,
                address: r.address.parse().ok()?,
                host_key: r.host_key,
                // A profile's hosts run its hypervisor, whatever the template says.
                hypervisor: crate::config::HypervisorKind::parse(&r.hypervisor)
                    .unwrap_or(p.host.hypervisor),
                ..p.host.clone()
            })
        })
        .collect())
}

/// The boot HTTP server's view of the machines.
struct AppEnrolment {
    app: Arc<App>,
    /// The boot directory, canonical (as the file servers see it).
    root: std::path::PathBuf,
}

impl AppEnrolment {
    /// The MAC of the client holding a lease on `ip`.
    async fn mac_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        let leases = self.app.state.leases().await.ok()?;
        leases
            .iter()
            .find(|l| l.ip == ip.to_string() && l.state == "bound")
            .and_then(|l| l.mac.parse().ok())
    }

    async fn script_or_error(&self, mac: Mac, base: &str) -> Result<String, String> {
        let app = &self.app;
        let cfg = app.config();
        let p = cfg.provisioning.as_ref().ok_or("provisioning is off")?;
        let text = mac.to_string();
        let m = match app
            .state
            .machine(text.clone())
            .await
            .map_err(|e| e.to_string())?
        {
            Some(m) => {
                // A machine waiting in its iPXE loop is seen each time it asks.
                let seen = app
                    .state
                    .machine_seen(m.network.clone(), text.clone(), None, None);
                seen.await.map_err(|e| e.to_string())?.0
            }
            None => {
                // Seen over HTTP first (its DHCP went elsewhere): discovered now.
                let c = BootClient {
                    mac: mac.0,
                    vendor_class: None,
                    arch: None,
                    ipxe: true,
                };
                discovered(app, &p.network, &c)
                    .await
                    .map_err(|e| e.to_string())?;
                match app
                    .state
                    .machine(text.clone())
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(m) => m,
                    None => {
                        return Ok(ipxe::skip(
                            "this machine has a reservation; nothing to install",
                        ))
                    }
                }
            }
        };
        for f in [&p.kernel, &p.initrd] {
            if netmigrate_services::files::resolve(&self.root, f).is_err() {
                let e = format!(
                    "the installer's {f} is missing in the boot directory {}",
                    self.root.display()
                );
                let _ = app
                    .state
                    .record(NewEvent::error("provision.boot", e.clone()).about(&text))
                    .await;
                return Ok(ipxe::skip(&e));
            }
        }
        let mut installer = ipxe::Installer {
            kernel: p.kernel.clone(),
            initrd: p.initrd.clone(),
            cmdline: p.cmdline.clone(),
            ssh_key: String::new(),
        };
        let expires = crate::state::now_ms() + p.token_ttl.as_millis() as i64;
        // Its hardware known first, before it is accepted or anything is written to it.
        let unsettled = [Stage::Discovered, Stage::Commissioning, Stage::Accepted]
            .iter()
            .any(|s| m.stage == s.as_str());
        if p.commission && m.hardware.is_none() && unsettled {
            let (t, hash) = token::new().map_err(|e| format!("a token: {e}"))?;
            app.state
                .machine_commissioning(text.clone(), hash, expires)
                .await
                .map_err(|e| e.to_string())?;
            let _ = app
                .state
                .record(
                    NewEvent::info(
                        "provision.commissioning",
                        format!("{text} sent the installer to report its hardware"),
                    )
                    .about(&m.network),
                )
                .await;
            return Ok(ipxe::commission(base, &text, &t, &installer));
        }
        let m = if m.stage == Stage::Discovered.as_str() {
            match verdict(p, &m) {
                Verdict::Accept(why) => accept(app, &text, why, None)
                    .await
                    .map_err(|e| e.to_string())?,
                Verdict::Wait(why) => return Ok(ipxe::wait(base, &text, why.as_deref())),
            }
        } else {
            m
        };
        installer.ssh_key = public_key(&p.host.ssh_key)?;
        if let Some(profile) = m.profile.clone() {
            return self.deploy_script(m, &profile, base, installer).await;
        }
        let (t, hash) = token::new().map_err(|e| format!("a token: {e}"))?;
        app.state
            .machine_sent_installer(text.clone(), Stage::Booting, hash, expires)
            .await
            .map_err(|e| e.to_string())?;
        let name = m.name.clone().unwrap_or_default();
        let _ = app
            .state
            .record(
                NewEvent::info(
                    "provision.booting",
                    format!("{name} ({text}) sent the installer"),
                )
                .about(&name),
            )
            .await;
        Ok(ipxe::install(base, &name, &t, &installer))
    }
}

impl AppEnrolment {
    /// The script of a machine deployed with `profile`, by its stage: the installer told to
    /// deploy (accepted, or deploying again after a reboot), its own disk (rebooting, ready),
    /// or a wait saying why its deployment failed.
    async fn deploy_script(
        &self,
        m: MachineRow,
        profile: &str,
        base: &str,
        installer: ipxe::Installer,
    ) -> Result<String, String> {
        let app = &self.app;
        let cfg = app.config();
        let p = cfg.provisioning.as_ref().ok_or("provisioning is off")?;
        let name = m.name.clone().unwrap_or_default();
        match Stage::parse(&m.stage) {
            Some(Stage::Rebooting | Stage::Ready) => {
                return Ok(ipxe::skip(&format!("{name} boots from its disk")))
            }
            Some(Stage::Failed) => return Ok(failed_script(base, &m)),
            _ => {}
        }
        let d = match self.deployment(p, &m, profile) {
            Ok(d) => d,
            Err(why) => {
                // Nothing can be written: it fails before its installer starts.
                return match app.state.machine_failed(m.mac.clone(), why.clone()).await {
                    Ok(Some(f)) => {
                        failed_event(app, &f).await;
                        Ok(failed_script(base, &f))
                    }
                    _ => Ok(ipxe::skip(&why)),
                };
            }
        };
        let expires = crate::state::now_ms() + p.token_ttl.as_millis() as i64;
        let (t, hash) = token::new().map_err(|e| format!("a token: {e}"))?;
        app.state
            .machine_sent_installer(m.mac.clone(), Stage::Deploying, hash, expires)
            .await
            .map_err(|e| e.to_string())?;
        let _ = app
            .state
            .record(
                NewEvent::info(
                    "provision.deploying",
                    format!(
                        "{name} ({}) sent the installer to write profile {profile} ({}, {} bytes, sha256 {}) to {}",
                        m.mac,
                        d.image,
                        d.bytes,
                        &d.sha256[..16],
                        if d.disk.is_empty() { "its first disk that holds it" } else { &d.disk }
                    ),
                )
                .about(&name),
            )
            .await;
        Ok(ipxe::deploy(base, &name, &t, &installer, &d))
    }

    /// What machine `m`'s installer is told to write where: the profile's image with its
    /// checksum, the disk that holds it, the host's network. Why not, when it cannot be.
    fn deployment(
        &self,
        p: &ProvisioningConfig,
        m: &MachineRow,
        profile: &str,
    ) -> Result<ipxe::Deploy, String> {
        let cfg = self.app.config();
        let pr = p.profile(profile).ok_or_else(|| {
            format!("its profile `{profile}` is no longer in the config ([[provisioning.profile]])")
        })?;
        let (bytes, sha256) =
            image_of(&self.root, &pr.image).map_err(|e| format!("profile {profile}: {e}"))?;
        // Room for the image, its config area (the disk's last MiB) and a MiB between.
        let need = bytes + 2 * 1024 * 1024;
        let disk = match (&pr.disk, &m.hardware) {
            (_, None) => pr.disk.clone().unwrap_or_default(),
            (Some(want), Some(hw)) => {
                let d = hw
                    .disks
                    .iter()
                    .find(|d| &d.name == want || d.serial.as_deref() == Some(want.as_str()))
                    .ok_or_else(|| format!("it has no disk named {want} (profile {profile}'s disk)"))?;
                if d.bytes < need {
                    return Err(format!(
                        "disk too small: {} has {} bytes, the image and its config area need {need}",
                        d.name, d.bytes
                    ));
                }
                d.name.clone()
            }
            (None, Some(hw)) => hw
                .disks
                .iter()
                .find(|d| d.bytes >= need)
                .map(|d| d.name.clone())
                .ok_or_else(|| {
                    format!(
                        "disk too small: no disk holds the image and its config area ({need} bytes){}",
                        hw.disks
                            .iter()
                            .map(|d| format!("; {} has {}", d.name, d.bytes))
                            .collect::<String>()
                    )
                })?,
        };
        let net = cfg
            .networks
            .iter()
            .find(|n| n.name == m.network)
            .ok_or_else(|| format!("its network {} is no longer in the config", m.network))?;
        let ip = m.ip.clone().ok_or("it has no address")?;
        Ok(ipxe::Deploy {
            image: pr.image.clone(),
            bytes,
            sha256,
            disk,
            address: format!("{ip}/{}", net.address.prefix_len()),
            gateway: net.address.addr().to_string(),
            dns: net.address.addr().to_string(),
            domain: net.domain.clone().unwrap_or_default(),
            bridge: p.host.bridge.clone(),
        })
    }
}

impl AppEnrolment {
    /// Why a deployment report's SHA-256 is not the one of the image its machine's profile
    /// names now, if it is not (None when it is, or when the token is not a deployment's:
    /// that is refused after).
    async fn written_elsewhere(
        &self,
        p: &ProvisioningConfig,
        token_hash: &str,
        sha256: Option<&str>,
    ) -> Option<String> {
        let m = self
            .app
            .state
            .machine_with_token(token_hash.to_string())
            .await
            .ok()??;
        if m.stage != Stage::Deploying.as_str() {
            return None;
        }
        let pr = p.profile(m.profile.as_deref()?)?;
        let (_, want) = image_of(&self.root, &pr.image).ok()?;
        let got = sha256?.trim().to_ascii_lowercase();
        (got != want).then(|| {
            format!(
                "the installer wrote an image with SHA-256 {got}, but profile {}'s image has {want} now (replaced while it was written?)",
                pr.name
            )
        })
    }
}

/// A failed machine's script: why, and how to try again, until the operator does.
fn failed_script(base: &str, m: &MachineRow) -> String {
    let name = m.name.as_deref().unwrap_or(&m.mac);
    ipxe::waiting(
        base,
        &m.mac,
        &[
            format!(
                "deploying {name} failed: {}",
                m.failed_why.as_deref().unwrap_or("?")
            ),
            format!("netmigrate hosts deploy {name} tries again"),
        ],
    )
}

/// A host image's size and SHA-256, from the `.sha256` file beside it (`make host-image`).
fn image_of(root: &std::path::Path, image: &str) -> Result<(u64, String), String> {
    let path = netmigrate_services::files::resolve(root, image).map_err(|_| {
        format!(
            "its image {image} is missing in the boot directory {}",
            root.display()
        )
    })?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| format!("its image {}: {e}", path.display()))?
        .len();
    let sums = path.with_file_name(format!(
        "{}.sha256",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let text = std::fs::read_to_string(&sums).map_err(|e| {
        format!(
            "its image's checksum {}: {e} (make host-image writes it)",
            sums.display()
        )
    })?;
    let sha = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{} holds no SHA-256", sums.display()));
    }
    Ok((bytes, sha))
}

/// The event of a machine whose deployment failed.
async fn failed_event(app: &App, m: &MachineRow) {
    let name = m.name.clone().unwrap_or_else(|| m.mac.clone());
    let _ = app
        .state
        .record(
            NewEvent::error(
                "provision.failed",
                format!(
                    "deploying {name} ({}) failed: {}",
                    m.mac,
                    m.failed_why.as_deref().unwrap_or("?")
                ),
            )
            .about(&name),
        )
        .await;
}

/// What becomes of a discovered machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A rule accepts it (why).
    Accept(String),
    /// It waits for the operator: no rule takes it (None), or one does but the machine
    /// falls short of its requirements (where).
    Wait(Option<String>),
}

/// The rules' verdict on a discovered machine, from its MAC, vendor class and hardware.
pub fn verdict(p: &ProvisioningConfig, m: &MachineRow) -> Verdict {
    let Ok(mac) = m.mac.parse::<Mac>() else {
        return Verdict::Wait(None);
    };
    let Some(why) = p.rules.accepts(&mac.0, m.vendor_class.as_deref()) else {
        return Verdict::Wait(None);
    };
    // Released by the operator: taken again by the operator only.
    if let Some(released) = &m.accepted_why {
        return Verdict::Wait(Some(format!(
            "{released}; the rules leave it to `netmigrate hosts accept {}`",
            m.mac
        )));
    }
    if p.rules.require.is_empty() {
        return Verdict::Accept(why);
    }
    let Some(hw) = &m.hardware else {
        return Verdict::Wait(Some(
            "its hardware is not known yet, and the rules require some".into(),
        ));
    };
    let short = p.rules.require.short_of(hw);
    if short.is_empty() {
        Verdict::Accept(format!("{why}, {}", hw.summary()))
    } else {
        let rule = why.strip_prefix("auto-accepted: ").unwrap_or(&why);
        Verdict::Wait(Some(format!("{rule} matches, but {}", short.join("; "))))
    }
}

/// A token call's outcome as the installer is told it: a refused token (unknown, used,
/// expired, of the other kind) is an event and a 403, `what` saying which call it was.
async fn refused_call(
    app: &App,
    r: Result<MachineRow, StateError>,
    what: &str,
) -> Result<MachineRow, Refused> {
    match r {
        Ok(m) => Ok(m),
        Err(StateError::Conflict(e)) => {
            let _ = app
                .state
                .record(NewEvent::warn("provision.refused", format!("{what}: {e}")))
                .await;
            Err(Refused::Token(e))
        }
        Err(e) => Err(Refused::Internal(e.to_string())),
    }
}

/// The public half of the private key at `path`, as authorized_keys wants it.
fn public_key(path: &std::path::Path) -> Result<String, String> {
    let k = russh::keys::load_secret_key(path, None)
        .map_err(|e| format!("reading provisioning.host.ssh_key {}: {e}", path.display()))?;
    k.public_key()
        .to_openssh()
        .map_err(|e| format!("provisioning.host.ssh_key {}: {e}", path.display()))
}

#[async_trait]
impl Enrolment for AppEnrolment {
    async fn script(&self, mac: Option<&str>, from: Ipv4Addr, base: &str) -> String {
        // iPXE fills `${net0/mac}` in; a MAC it did not fill in is looked up by address.
        let mac = match mac.and_then(|m| m.parse::<Mac>().ok()) {
            Some(m) => Some(m),
            None => self.mac_of(from).await,
        };
        let Some(mac) = mac else {
            return ipxe::skip(&format!(
                "no lease for {from}, so no MAC: ask with ?mac=${{net0/mac}}"
            ));
        };
        match self.script_or_error(mac, base).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%mac, "provisioning: {e}");
                ipxe::skip(&e)
            }
        }
    }

    async fn commission(&self, report: Report, from: Ipv4Addr) -> Result<Commissioned, Refused> {
        let app = &self.app;
        let cfg = app.config();
        let p = cfg
            .provisioning
            .as_ref()
            .ok_or_else(|| Refused::Bad("provisioning is off".into()))?;
        let m = app
            .state
            .machine_commissioned(token::hash(report.token.trim()), report.hardware)
            .await;
        let m = refused_call(app, m, &format!("commissioning report from {from}")).await?;
        let hw = m.hardware.as_ref().map(|h| h.summary()).unwrap_or_default();
        let (says, short) = if m.stage == Stage::Discovered.as_str() {
            match verdict(p, &m) {
                Verdict::Accept(why) => (format!("to be accepted ({why})"), false),
                Verdict::Wait(Some(why)) => (format!("waits: {why}"), true),
                Verdict::Wait(None) => (
                    format!("waits for the operator (netmigrate hosts accept {})", m.mac),
                    false,
                ),
            }
        } else {
            (
                format!("accepted as {}", m.name.as_deref().unwrap_or("?")),
                false,
            )
        };
        let message = format!("{} commissioned from {from}: {hw}; {says}", m.mac);
        let event = if short {
            NewEvent::warn("provision.commissioned", message)
        } else {
            NewEvent::info("provision.commissioned", message)
        };
        let _ = app.state.record(event.about(&m.network)).await;
        Ok(Commissioned { says })
    }

    async fn enrol(&self, call: Callback, from: Ipv4Addr) -> Result<Enrolled, Refused> {
        let app = &self.app;
        let cfg = app.config();
        let p = cfg
            .provisioning
            .as_ref()
            .ok_or_else(|| Refused::Bad("provisioning is off".into()))?;
        let key = call.host_key.trim().to_string();
        crate::config::values::check_public_key(&key)
            .map_err(|e| Refused::Bad(format!("host_key: {e}")))?;
        let m = app
            .state
            .enrol_machine(
                token::hash(call.token.trim()),
                key.clone(),
                enrolled_host(p, None),
            )
            .await;
        let m = refused_call(app, m, &format!("call back from {from}")).await?;
        let name = m.name.clone().unwrap_or_default();
        let address = m.ip.clone().unwrap_or_default();
        if m.stage == Stage::Rebooting.as_str() {
            // A deployed system's first boot: ready once it passes its check.
            let _ = app
                .state
                .record(
                    NewEvent::info(
                        "provision.called_back",
                        format!(
                            "{name} ({}) booted its deployed system and called back from {from}; host key pinned: {key}; checking it",
                            m.mac
                        ),
                    )
                    .about(&name),
                )
                .await;
            tokio::spawn(check_deployed(app.clone(), m));
            return Ok(Enrolled { name, address });
        }
        let _ = app
            .state
            .record(
                NewEvent::info(
                    "provision.ready",
                    format!(
                        "{name} ({}) enrolled from {from}; host key pinned: {key}",
                        m.mac
                    ),
                )
                .about(&name),
            )
            .await;
        became_host(app, name.clone()).await;
        Ok(Enrolled { name, address })
    }

    async fn deployed(
        &self,
        report: Deployment,
        from: Ipv4Addr,
    ) -> Result<Option<String>, Refused> {
        let app = &self.app;
        let cfg = app.config();
        let p = cfg
            .provisioning
            .as_ref()
            .ok_or_else(|| Refused::Bad("provisioning is off".into()))?;
        let hash = token::hash(report.token.trim());
        if let Some(why) = report.failed {
            let m = app.state.machine_deploy_failed(hash, why).await;
            let m = refused_call(app, m, &format!("deployment report from {from}")).await?;
            failed_event(app, &m).await;
            return Ok(None);
        }
        // What it wrote is the image the appliance serves now (not one replaced meanwhile).
        if let Some(why) = self
            .written_elsewhere(p, &hash, report.sha256.as_deref())
            .await
        {
            let m = app.state.machine_deploy_failed(hash, why).await;
            let m = refused_call(app, m, &format!("deployment report from {from}")).await?;
            failed_event(app, &m).await;
            return Ok(None);
        }
        let (t, first_boot) =
            token::new().map_err(|e| Refused::Internal(format!("a token: {e}")))?;
        let expires = crate::state::now_ms() + p.token_ttl.as_millis() as i64;
        let m = app.state.machine_written(hash, first_boot, expires).await;
        let m = refused_call(app, m, &format!("deployment report from {from}")).await?;
        let name = m.name.clone().unwrap_or_default();
        let _ = app
            .state
            .record(
                NewEvent::info(
                    "provision.written",
                    format!(
                        "{name} ({}): profile {} written to {} and verified (sha256 {}); rebooting into it",
                        m.mac,
                        m.profile.as_deref().unwrap_or("?"),
                        report.disk.as_deref().unwrap_or("its disk"),
                        report.sha256.as_deref().unwrap_or("?"),
                    ),
                )
                .about(&name),
            )
            .await;
        Ok(Some(t))
    }
}

/// What an enrolled machine becomes in `hosts`: the `[provisioning.host]` template, running
/// its profile's hypervisor.
fn enrolled_host(p: &ProvisioningConfig, profile: Option<&crate::config::Profile>) -> EnrolledHost {
    EnrolledHost {
        hypervisor: profile
            .map_or(p.host.hypervisor, |pr| pr.hypervisor)
            .as_str()
            .to_string(),
        ssh_user: p.host.ssh_user.clone(),
        ssh_port: p.host.ssh_port,
        bridge: p.host.bridge.clone(),
    }
}

/// A machine that became a host: the config's hosts take it in, its facts are collected in
/// the background.
async fn became_host(app: &Arc<App>, name: String) {
    app.add_enrolled().await;
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::app::hosts::collect(&app, vec![name.clone()]).await {
            tracing::warn!(host = %name, "collecting a new host: {e}");
        }
    });
}

/// Checks a deployed machine that called back, over SSH with its pinned key: its hypervisor
/// answers (`xl info`, or QEMU's version and accelerators) and its Open vSwitch bridge holds
/// its address. Then it is ready, or failed with what the check saw.
async fn check_deployed(app: Arc<App>, m: MachineRow) {
    let cfg = app.config();
    let Some(p) = cfg.provisioning.as_ref() else {
        return;
    };
    let name = m.name.clone().unwrap_or_default();
    let profile = m.profile.as_deref().and_then(|n| p.profile(n));
    let host = enrolled_host(p, profile);
    match deployed_check(p, &m, profile).await {
        Ok(says) => match app.state.machine_ready(m.mac.clone(), host).await {
            Ok(_) => {
                let _ = app
                    .state
                    .record(
                        NewEvent::info(
                            "provision.ready",
                            format!("{name} ({}) is ready: {says}", m.mac),
                        )
                        .about(&name),
                    )
                    .await;
                became_host(&app, name).await;
            }
            Err(e) => tracing::warn!(machine = %m.mac, "a checked machine: {e}"),
        },
        Err(why) => {
            if let Ok(Some(f)) = app
                .state
                .machine_failed(m.mac.clone(), format!("its check: {why}"))
                .await
            {
                failed_event(&app, &f).await;
            }
        }
    }
}

/// The check itself: what it saw, or why the host is not one.
async fn deployed_check(
    p: &ProvisioningConfig,
    m: &MachineRow,
    profile: Option<&crate::config::Profile>,
) -> Result<String, String> {
    let (conn, h) = connect(p, m, profile).await?;
    let ip = h.address;
    let bridge = crate::shell::quote(&h.bridge);
    let hypervisor = match h.hypervisor {
        crate::config::HypervisorKind::Qemu => {
            r#"v=$(qemu-system-x86_64 --version | head -n 1) || exit 2
a=$(qemu-system-x86_64 -accel help | tail -n +2 | tr '\n' ' ')
[ -e /dev/kvm ] || a="$a(no /dev/kvm)"
echo "$v, accelerators: $a""#
        }
        _ => {
            r#"v=$(xl info | sed -n 's/^xen_version *: *//p') || exit 2
[ -n "$v" ] || { echo 'xl info says no xen_version' >&2; exit 2; }
echo "Xen $v, $(xl info | sed -n 's/^free_memory *: *//p') MiB free""#
        }
    };
    let script = format!(
        r#"{hypervisor}
ovs-vsctl br-exists {bridge} || {{ echo 'no Open vSwitch bridge {bridge}' >&2; exit 3; }}
ip -4 -o addr show dev {bridge} | grep -q ' {ip}/' || {{ echo '{bridge} does not hold {ip}' >&2; exit 4; }}
echo "Open vSwitch bridge {bridge} with {ip}""#
    );
    let out = run(&conn, &script).await?;
    Ok(out.replace('\n', "; "))
}

/// An SSH connection to deployed machine `m` with its pinned key (a few tries: its sshd may
/// have just come up), and the host it is.
async fn connect(
    p: &ProvisioningConfig,
    m: &MachineRow,
    profile: Option<&crate::config::Profile>,
) -> Result<(crate::inventory::ssh::Conn, HostConfig), String> {
    use crate::inventory::ssh::{Conn, KeyCheck};
    let key = m.host_key.clone().ok_or("no host key was pinned")?;
    let ip = m.ip.clone().ok_or("it has no address")?;
    let h = HostConfig {
        name: m.name.clone().unwrap_or_default(),
        address: ip.parse().map_err(|e| format!("address {ip}: {e}"))?,
        host_key: Some(key.clone()),
        hypervisor: profile.map_or(p.host.hypervisor, |pr| pr.hypervisor),
        ..p.host.clone()
    };
    let mut tries = 0;
    loop {
        match Conn::connect(&h, KeyCheck::Pinned(key.clone()), h.connect_timeout).await {
            Ok(c) => return Ok((c, h)),
            Err(e) if tries >= 4 => return Err(format!("SSH to {ip}: {e}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
        }
    }
}

/// Runs `script` on a deployed machine: what it printed, or what it said on stderr and how
/// it ended.
async fn run(conn: &crate::inventory::ssh::Conn, script: &str) -> Result<String, String> {
    let out = conn
        .exec(script, std::time::Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    if out.status != Some(0) {
        return Err(format!(
            "{} (exit {})",
            out.stderr.trim(),
            out.status.map_or("none".into(), |s| s.to_string())
        ));
    }
    Ok(out.stdout.trim().to_string())
}

/// What a deployed machine's disk loses when it is deployed again or released: the first
/// MiB (so its firmware no longer boots it) and the config area (its keys and address).
/// The disk is the one its system read its config from (rc.sh keeps its name).
const WIPE: &str = r#"d=$(cat /run/nm/disk) || exit 2
s=$(cat /sys/block/$d/size) || exit 2
dd if=/dev/zero of=/dev/$d bs=1M count=1 conv=fsync 2>/dev/null || exit 3
dd if=/dev/zero of=/dev/$d bs=512 seek=$((s - 2048)) count=2048 conv=fsync 2>/dev/null || exit 3
echo "/dev/$d"
"#;

/// Makes deployed machine `m`'s disk unbootable over SSH, then (with `then`, a command such
/// as `reboot -f`) runs that in the background. The disk wiped, or why not.
pub async fn wipe_deployed(
    app: &App,
    m: &MachineRow,
    then: Option<&str>,
) -> Result<String, String> {
    let cfg = app.config();
    let p = cfg.provisioning.as_ref().ok_or("provisioning is off")?;
    let profile = m.profile.as_deref().and_then(|n| p.profile(n));
    let (conn, _) = connect(p, m, profile).await?;
    let script = match then {
        // In a session of its own: it outlives this SSH session.
        Some(cmd) => format!(
            "{WIPE}setsid sh -c {} >/dev/null 2>&1 </dev/null &\n",
            crate::shell::quote(&format!("sleep 1; {cmd}"))
        ),
        None => WIPE.to_string(),
    };
    run(&conn, &script)
        .await
        .map_err(|e| format!("wiping its disk: {e}"))
}

/// Deploying and rebooting machines silent for longer than `deploy_timeout` have failed.
async fn sweep_overdue(app: &App) {
    let cfg = app.config();
    let Some(p) = cfg.provisioning.as_ref() else {
        return;
    };
    let since = crate::state::now_ms() - p.deploy_timeout.as_millis() as i64;
    fn why(stage: &str) -> String {
        if stage == "deploying" {
            "its installer did not report within provisioning.deploy_timeout".into()
        } else {
            "the deployed system did not call back (or pass its check) within provisioning.deploy_timeout".into()
        }
    }
    match app.state.machines_overdue(since, why).await {
        Ok(failed) => {
            for m in failed {
                failed_event(app, &m).await;
            }
        }
        Err(e) => tracing::warn!("provisioning: overdue machines: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `[provisioning]` with `extra` keys, read as the daemon reads it.
    fn provisioning(dir: &std::path::Path, extra: &str) -> ProvisioningConfig {
        let key = dir.join("id_ed25519");
        std::fs::write(&key, "only its mode is checked\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let src = format!(
            "state_dir = \"state\"\n[[network]]\nname = \"lab\"\ninterface = \"eth1\"\n\
             address = \"10.0.0.1/24\"\ndhcp_range = [\"10.0.0.100\", \"10.0.0.199\"]\n\
             [provisioning]\nnetwork = \"lab\"\npool = [\"10.0.0.50\", \"10.0.0.59\"]\n\
             auto_accept_mac = [\"52:54:00:aa\"]\n{extra}\n\
             [provisioning.host]\nssh_key = \"id_ed25519\"\nhypervisor = \"qemu\"\nbridge = \"br0\"\n"
        );
        Config::parse(&dir.join("netmigrate.toml"), &src)
            .unwrap()
            .provisioning
            .unwrap()
    }

    fn machine(mac: &str, memory_mib: Option<u64>) -> MachineRow {
        MachineRow {
            mac: mac.into(),
            network: "lab".into(),
            stage: "discovered".into(),
            vendor_class: None,
            arch: None,
            first_seen_ms: 0,
            last_seen_ms: 0,
            name: None,
            ip: None,
            accepted_why: None,
            host_key: None,
            ready_ms: None,
            hardware: memory_mib.map(|m| {
                serde_json::from_value(serde_json::json!({
                    "arch": "x86_64", "firmware": "uefi", "cpus": 4, "cpu_model": "EPYC",
                    "virt": "svm", "memory_mib": m,
                    "disks": [{"name": "sda", "bytes": 100u64 << 30, "model": "SSD",
                               "serial": "S1", "rotational": false}],
                    "nics": []
                }))
                .unwrap()
            }),
            commissioned_ms: None,
            bmc: None,
            profile: None,
            stage_ms: None,
            failed_why: None,
            waits: None,
        }
    }

    #[test]
    fn rules_accept_what_has_their_requirements_and_say_why_the_rest_waits() {
        let dir = tempfile::tempdir().unwrap();
        let plain = provisioning(dir.path(), "");
        let m = machine("52:54:00:aa:00:01", None);
        assert_eq!(
            verdict(&plain, &m),
            Verdict::Accept("auto-accepted: MAC prefix 52:54:00:aa".into())
        );
        assert_eq!(
            verdict(&plain, &machine("52:54:00:bb:00:01", Some(1 << 20))),
            Verdict::Wait(None),
            "no rule takes it"
        );

        let strict = provisioning(dir.path(), "min_memory = \"4G\"\nmin_disk = \"50G\"");
        assert!(matches!(
            verdict(&strict, &machine("52:54:00:aa:00:01", Some(8192))),
            Verdict::Accept(why) if why.contains("4 CPUs (svm), 8192 MiB, disks sda 100.0 GiB, uefi")
        ));
        assert_eq!(
            verdict(&strict, &machine("52:54:00:aa:00:01", Some(2048))),
            Verdict::Wait(Some(
                "MAC prefix 52:54:00:aa matches, but memory 2048 MiB is below min_memory (4096 MiB)"
                    .into()
            ))
        );
        assert!(matches!(
            verdict(&strict, &machine("52:54:00:aa:00:01", None)),
            Verdict::Wait(Some(why)) if why.contains("not known yet")
        ));
        // Released by the operator: no rule takes it again.
        let released = MachineRow {
            accepted_why: Some("released by the operator".into()),
            ..machine("52:54:00:aa:00:01", Some(8192))
        };
        assert!(matches!(
            verdict(&plain, &released),
            Verdict::Wait(Some(why)) if why.contains("released by the operator; the rules leave it to")
        ));
    }
}

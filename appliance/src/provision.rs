//! Provisioning as the appliance runs it: boot files by TFTP and HTTP on each served network,
//! machines discovered from their DHCP requests, accepted by rule or by the operator, sent the
//! installer with a one-time token, and enrolled as hosts when it calls back.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_provisioning::http::Callback;
use netmigrate_provisioning::{ipxe, token, Enrolled, Enrolment, Refused, Stage};
use netmigrate_services::dhcp::BootClient;
use netmigrate_services::tftp;
use tokio::task::JoinHandle;

use crate::config::{Config, HostConfig, Mac};
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

/// Accepts machine `mac`: a name, a reserved address; DHCP and DNS take them up at once.
pub async fn accept(app: &App, mac: &str, why: String) -> Result<MachineRow, StateError> {
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
        let m = if m.stage == Stage::Discovered.as_str() {
            match p.rules.accepts(&mac.0, m.vendor_class.as_deref()) {
                Some(why) => accept(app, &text, why).await.map_err(|e| e.to_string())?,
                None => return Ok(ipxe::wait(base, &text)),
            }
        } else {
            m
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
        let ssh_key = public_key(&p.host.ssh_key)?;
        let (t, hash) = token::new().map_err(|e| format!("a token: {e}"))?;
        let expires = crate::state::now_ms() + p.token_ttl.as_millis() as i64;
        app.state
            .machine_booting(text.clone(), hash, expires)
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
        let i = ipxe::Installer {
            kernel: p.kernel.clone(),
            initrd: p.initrd.clone(),
            cmdline: p.cmdline.clone(),
            ssh_key,
        };
        Ok(ipxe::install(base, &name, &t, &i))
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
        let host = EnrolledHost {
            hypervisor: p.host.hypervisor.as_str().to_string(),
            ssh_user: p.host.ssh_user.clone(),
            ssh_port: p.host.ssh_port,
            bridge: p.host.bridge.clone(),
        };
        let m = match app
            .state
            .enrol_machine(token::hash(call.token.trim()), key.clone(), host)
            .await
        {
            Ok(m) => m,
            Err(StateError::Conflict(e)) => {
                let _ = app
                    .state
                    .record(NewEvent::warn(
                        "provision.refused",
                        format!("call back from {from}: {e}"),
                    ))
                    .await;
                return Err(Refused::Token(e));
            }
            Err(e) => return Err(Refused::Internal(e.to_string())),
        };
        let name = m.name.clone().unwrap_or_default();
        let address = m.ip.clone().unwrap_or_default();
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
        app.add_enrolled().await;
        // Facts at once, in the background: the installer waits for no one.
        let app2 = app.clone();
        let n = name.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::app::hosts::collect(&app2, vec![n.clone()]).await {
                tracing::warn!(host = %n, "collecting a new host: {e}");
            }
        });
        Ok(Enrolled { name, address })
    }
}

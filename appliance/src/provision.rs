//! Provisioning as the appliance runs it: boot files by TFTP and HTTP on each served network,
//! machines discovered from their DHCP requests, accepted by rule or by the operator, sent the
//! installer with a one-time token, and enrolled as hosts when it calls back.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_provisioning::http::{Callback, Commissioned, Report};
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
                Verdict::Accept(why) => accept(app, &text, why).await.map_err(|e| e.to_string())?,
                Verdict::Wait(why) => return Ok(ipxe::wait(base, &text, why.as_deref())),
            }
        } else {
            m
        };
        installer.ssh_key = public_key(&p.host.ssh_key)?;
        let (t, hash) = token::new().map_err(|e| format!("a token: {e}"))?;
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
        Ok(ipxe::install(base, &name, &t, &installer))
    }
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
        let host = EnrolledHost {
            hypervisor: p.host.hypervisor.as_str().to_string(),
            ssh_user: p.host.ssh_user.clone(),
            ssh_port: p.host.ssh_port,
            bridge: p.host.bridge.clone(),
        };
        let m = app
            .state
            .enrol_machine(token::hash(call.token.trim()), key.clone(), host)
            .await;
        let m = refused_call(app, m, &format!("call back from {from}")).await?;
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
    }
}

//! Hosts: what the inventory knows of them, collecting their facts now, pinning their keys, and
//! the machines provisioning met.

use serde::{Deserialize, Serialize};

use super::{App, Error, Result};
use crate::inventory::facts::{HostFacts, VmFacts};
use crate::inventory::{arp_table, Collected};
use crate::state::machines::MachineRow;
use crate::state::{HostRow, NewEvent};

#[derive(Debug, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub row: HostRow,
    pub collected_ms: Option<i64>,
    pub facts: Option<HostFacts>,
    /// Where it is in its life: `configured` (from the config file), or an enrolled host's
    /// provisioning stage (`ready`; `booting` while it boots the installer again).
    #[serde(default)]
    pub stage: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VmView {
    pub host: String,
    pub collected_ms: i64,
    /// Whether the appliance keeps its definition (`vm define`), by name or MAC.
    #[serde(default)]
    pub managed: bool,
    #[serde(flatten)]
    pub vm: VmFacts,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TrustReply {
    pub host: String,
    pub key: String,
    pub previous: Option<String>,
}

/// The configured and enrolled hosts, each with its newest facts.
pub async fn list(app: &App) -> Result<Vec<HostView>> {
    let rows = app.state.hosts().await?;
    let facts = app.state.latest_facts().await?;
    let machines = app.state.machines().await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.in_config || r.enrolled)
        .map(|row| {
            let f = facts.iter().find(|(h, _, _)| *h == row.name);
            let stage = match machines
                .iter()
                .find(|m| m.name.as_deref() == Some(&row.name))
            {
                Some(m) if row.enrolled && !row.in_config => m.stage.clone(),
                _ => "configured".to_string(),
            };
            HostView {
                collected_ms: f.map(|(_, at, _)| *at),
                facts: f.map(|(_, _, f)| f.clone()),
                row,
                stage,
            }
        })
        .collect())
}

/// Every VM the hosts reported at their last collection, managed or not. A VM's addresses are
/// what knows them: the neighbour table at the collection, else its definition, else its
/// bound DHCP leases.
pub async fn vms(app: &App) -> Result<Vec<VmView>> {
    let facts = app.state.latest_facts().await?;
    let defs = app.state.vms().await?;
    let leases = app.state.leases().await?;
    let mut views: Vec<VmView> = facts
        .into_iter()
        .flat_map(|(host, at, f)| {
            f.vms.into_iter().map(move |vm| VmView {
                host: host.clone(),
                collected_ms: at,
                managed: false,
                vm,
            })
        })
        .collect();
    for v in &mut views {
        let has_mac = |m: &str| v.vm.macs.iter().any(|x| x.eq_ignore_ascii_case(m));
        let def = defs
            .iter()
            .find(|d| d.name == v.vm.name || has_mac(&d.def.mac));
        v.managed = def.is_some();
        if v.vm.ips.is_empty() {
            v.vm.ips = match def.and_then(|d| d.def.ip) {
                Some(ip) => vec![ip.to_string()],
                None => leases
                    .iter()
                    .filter(|l| l.state == "bound" && has_mac(&l.mac))
                    .map(|l| l.ip.clone())
                    .collect(),
            };
        }
    }
    Ok(views)
}

fn unknown_host(name: &str, known: &[String]) -> Error {
    Error::not_found(
        "unknown_host",
        format!("unknown host `{name}`; configured: {}", known.join(", ")),
    )
}

/// Collects the `wanted` hosts (all when empty), records the facts and each host that went
/// down or came back.
pub async fn collect(app: &App, wanted: Vec<String>) -> Result<Vec<Collected>> {
    let cfg = app.config();
    let known: Vec<String> = cfg.hosts.iter().map(|h| h.name.clone()).collect();
    for w in &wanted {
        if !known.contains(w) {
            return Err(unknown_host(w, &known));
        }
    }
    let rows = app.state.hosts().await?;
    let targets: Vec<_> = cfg
        .hosts
        .iter()
        .filter(|h| wanted.is_empty() || wanted.contains(&h.name))
        .map(|h| {
            let pinned = rows
                .iter()
                .find(|r| r.name == h.name)
                .and_then(|r| r.host_key.clone());
            (h.clone(), pinned)
        })
        .collect();
    let mut results = app.inventory.collect(targets).await;
    // VM addresses: the appliance is the router, its neighbour table knows who is where.
    let arp = arp_table(
        &tokio::fs::read_to_string("/proc/net/arp")
            .await
            .unwrap_or_default(),
    );
    for r in &mut results {
        if let Some(f) = r.facts.as_mut() {
            for vm in &mut f.vms {
                vm.ips = vm
                    .macs
                    .iter()
                    .flat_map(|m| arp.get(m).cloned().unwrap_or_default())
                    .collect();
            }
        }
    }
    let before = rows;
    app.state.record_collections(results.clone()).await?;
    for r in &results {
        let was = before
            .iter()
            .find(|b| b.name == r.host)
            .map(|b| b.status.as_str());
        match (&r.error, was) {
            (Some(e), w) if w != Some("down") => {
                app.state
                    .record(NewEvent::warn("host.down", e.clone()).about(&r.host))
                    .await?;
            }
            (None, Some("down")) => {
                app.state
                    .record(NewEvent::info("host.up", "answers again").about(&r.host))
                    .await?;
            }
            _ => {}
        }
    }
    Ok(results)
}

/// Pins the key `host` shows now (trust on first use; with `replace`, over a key pinned
/// before, but not over one the config file pins).
pub async fn trust(app: &App, host: &str, replace: bool) -> Result<TrustReply> {
    let cfg = app.config();
    let known: Vec<String> = cfg.hosts.iter().map(|h| h.name.clone()).collect();
    let Some(h) = cfg.hosts.iter().find(|h| h.name == host) else {
        return Err(unknown_host(host, &known));
    };
    if h.host_key.is_some() && replace {
        return Err(Error::conflict(
            "pinned_in_config",
            format!(
                "the host key of `{}` is pinned in the config file; change it there",
                h.name
            ),
        ));
    }
    let rows = app.state.hosts().await?;
    let previous = rows
        .iter()
        .find(|r| r.name == h.name)
        .and_then(|r| r.host_key.clone());
    let key = app
        .inventory
        .trust(h, previous.as_deref(), replace)
        .await
        .map_err(|e| Error::conflict("host_key", e.to_string()))?;
    app.state.pin_host_key(h.name.clone(), key.clone()).await?;
    app.state
        .record(NewEvent::info("host.trust", format!("host key pinned: {key}")).about(&h.name))
        .await?;
    Ok(TrustReply {
        host: h.name.clone(),
        key,
        previous,
    })
}

/// Machines that network-booted, from discovered to ready; a discovered one says why it
/// waits.
pub async fn machines(app: &App) -> Result<Vec<MachineRow>> {
    let mut ms = app.state.machines().await?;
    let cfg = app.config();
    if let Some(p) = &cfg.provisioning {
        for m in ms.iter_mut().filter(|m| m.stage == "discovered") {
            m.waits = Some(match crate::provision::verdict(p, m) {
                crate::provision::Verdict::Wait(Some(why)) => why,
                crate::provision::Verdict::Wait(None) => "for the operator".into(),
                // It is accepted the next time it asks for its boot script.
                crate::provision::Verdict::Accept(why) => format!("to boot again: {why}"),
            });
        }
    }
    Ok(ms)
}

/// The operator accepts the discovered machine with `mac`.
pub async fn accept(app: &App, mac: &str, profile: Option<String>) -> Result<MachineRow> {
    let mac: crate::config::Mac = mac
        .parse()
        .map_err(|e: String| Error::invalid("bad_mac", e))?;
    if let Some(name) = &profile {
        known_profile(app, name)?;
    }
    let why = match &profile {
        Some(p) => format!("accepted by the operator, profile {p}"),
        None => "accepted by the operator".into(),
    };
    Ok(crate::provision::accept(app, &mac.to_string(), why, profile).await?)
}

/// The machine `target` (a MAC, or the name it was given), or why not.
async fn machine_named(app: &App, target: &str) -> Result<MachineRow> {
    app.state
        .machine_named(target.to_string())
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "no_machine",
                format!(
                    "no network-booted machine is `{target}`; name one by its MAC or the name it was given (`netmigrate hosts` lists them)"
                ),
            )
        })
}

/// The operator gives machine `target` its BMC (or, with None, takes it away).
pub async fn set_bmc(
    app: &App,
    target: &str,
    bmc: Option<crate::power::Bmc>,
) -> Result<MachineRow> {
    if let Some(b) = &bmc {
        b.check().map_err(|e| Error::invalid("bad_bmc", e))?;
    }
    let m = match (
        machine_named(app, target).await,
        target.parse::<crate::config::Mac>(),
    ) {
        (Ok(m), _) => m,
        // A machine the operator knows before it ever booted (MAAS's "add machine"): it is
        // discovered now, on the provisioning network, so that its BMC can boot it.
        (Err(Error::NotFound { .. }), Ok(mac)) if bmc.is_some() => {
            let cfg = app.config();
            let Some(p) = &cfg.provisioning else {
                return Err(Error::conflict(
                    "no_provisioning",
                    "provisioning is not configured; add a [provisioning] section",
                ));
            };
            let (m, _) = app
                .state
                .machine_seen(p.network.clone(), mac.to_string(), None, None)
                .await?;
            app.state
                .record(
                    NewEvent::info(
                        "provision.enlisted",
                        format!("{mac} added by the operator with its BMC, before it booted"),
                    )
                    .about(&p.network),
                )
                .await?;
            m
        }
        (Err(e), _) => return Err(e),
    };
    let what = bmc.as_ref().map_or("no BMC any more".to_string(), |b| {
        format!("BMC {}", b.describe())
    });
    let row = app.state.set_machine_bmc(m.mac.clone(), bmc).await?;
    app.state
        .record(NewEvent::info("power.bmc", format!("{}: {what}", m.mac)).about(label(&m)))
        .await?;
    Ok(row)
}

/// A power action's outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PowerReply {
    pub mac: String,
    pub name: Option<String>,
    pub action: crate::power::Action,
    pub state: crate::power::PowerState,
}

/// Powers machine `target` on, off or through a cycle by its BMC, or asks its state.
pub async fn power(app: &App, target: &str, action: crate::power::Action) -> Result<PowerReply> {
    let m = machine_named(app, target).await?;
    let Some(bmc) = &m.bmc else {
        return Err(Error::conflict(
            "no_bmc",
            format!(
                "{} has no BMC; give it one with `netmigrate hosts bmc {} --ipmi ADDRESS --user USER --password-file FILE`",
                label(&m),
                m.mac
            ),
        ));
    };
    let done = crate::power::act(bmc, action).await;
    if action != crate::power::Action::Status {
        let e = match &done {
            Ok(s) => NewEvent::info(
                "power.action",
                format!("{}: power {action} by {}, now {s}", m.mac, bmc.describe()),
            ),
            Err(e) => NewEvent::error("power.action", format!("{}: power {action}: {e}", m.mac)),
        };
        app.state.record(e.about(label(&m))).await?;
    }
    let state = done.map_err(|e| Error::Unprocessable {
        code: "power_failed",
        message: e.to_string(),
    })?;
    Ok(PowerReply {
        mac: m.mac.clone(),
        name: m.name.clone(),
        action,
        state,
    })
}

/// What `hosts deploy` and `hosts release` did, and how the machine goes on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineReply {
    pub machine: MachineRow,
    /// "its disk /dev/vda wiped; power cycled by its BMC", ...
    pub says: String,
}

/// Refuses when VMs run on the host machine `m` became.
async fn no_vms_on(app: &App, m: &MachineRow, what: &str) -> Result<()> {
    let Some(name) = &m.name else {
        return Ok(());
    };
    let on: Vec<String> = app
        .state
        .vms()
        .await?
        .into_iter()
        .filter(|v| v.host.as_deref() == Some(name) && v.state != "stopped" && v.state != "defined")
        .map(|v| v.name)
        .collect();
    if on.is_empty() {
        return Ok(());
    }
    Err(Error::conflict(
        "host_in_use",
        format!(
            "{name} runs {}; move {} elsewhere before it is {what} (netmigrate migrate VM --to HOST)",
            on.join(", "),
            if on.len() == 1 { "it" } else { "them" }
        ),
    ))
}

/// Whether a machine's deployed system runs (a host to reach over SSH).
fn deployed_and_up(m: &MachineRow) -> bool {
    m.host_key.is_some() && matches!(m.stage.as_str(), "ready" | "rebooting")
}

/// The operator deploys machine `target` again (with `profile`, else its own): its disk is
/// made unbootable, and it is restarted into the installer by its BMC, or by its own system
/// over SSH; a failed machine waiting at its network boot takes it up at its next try.
pub async fn deploy(app: &App, target: &str, profile: Option<String>) -> Result<MachineReply> {
    let m = machine_named(app, target).await?;
    no_vms_on(app, &m, "deployed again").await?;
    if let Some(name) = &profile {
        known_profile(app, name)?;
    }
    let mut says = Vec::new();
    let mut restarted = false;
    if deployed_and_up(&m) {
        // Its own system reboots when there is no BMC to do it.
        let then = m.bmc.is_none().then_some("reboot -f");
        match crate::provision::wipe_deployed(app, &m, then).await {
            Ok(disk) => {
                says.push(format!("its disk {disk} made unbootable"));
                restarted = then.is_some();
                if restarted {
                    says.push("rebooted by its own system".into());
                }
            }
            Err(e) if m.bmc.is_some() => says.push(format!("its disk left as it is ({e})")),
            Err(e) => {
                return Err(Error::conflict(
                    "unreachable",
                    format!(
                        "{} cannot be reached to restart it, and it has no BMC: {e}; power-cycle it by hand, then run this again",
                        label(&m)
                    ),
                ))
            }
        }
    }
    let r = app.state.machine_redeploy(m.mac.clone(), profile).await?;
    app.add_enrolled().await;
    if let Some(bmc) = &r.bmc {
        match crate::power::act(bmc, crate::power::Action::Cycle).await {
            Ok(_) => says.push(format!("power cycled by its BMC {}", bmc.describe())),
            Err(e) => says.push(format!("its BMC did not power-cycle it: {e}")),
        }
    } else if !restarted {
        says.push(if m.stage == "failed" {
            "it takes the deployment up at its next network boot try (within a minute)".into()
        } else {
            "it deploys at its next network boot".into()
        });
    }
    let says = says.join("; ");
    app.state
        .record(
            NewEvent::info(
                "provision.redeploy",
                format!(
                    "{} is deployed again with profile {}: {says}",
                    label(&r),
                    r.profile.as_deref().unwrap_or("?")
                ),
            )
            .about(label(&r)),
        )
        .await?;
    Ok(MachineReply { machine: r, says })
}

/// The operator releases machine `target`: its disk made unbootable, powered off by its BMC
/// (or rebooted by its own system, to wait at its network boot), and back to discovered with
/// its hardware kept; its name, address and host given up.
pub async fn release(app: &App, target: &str) -> Result<MachineReply> {
    let m = machine_named(app, target).await?;
    no_vms_on(app, &m, "released").await?;
    let mut says = Vec::new();
    if deployed_and_up(&m) {
        let then = m.bmc.is_none().then_some("reboot -f");
        match crate::provision::wipe_deployed(app, &m, then).await {
            Ok(disk) => says.push(format!("its disk {disk} made unbootable")),
            Err(e) => says.push(format!("its disk could not be wiped ({e})")),
        }
    }
    let before = m.clone();
    let r = app.state.machine_release(m.mac.clone()).await?;
    app.add_enrolled().await;
    if let Some(ip) = &before.ip {
        let res = crate::state::ReservationRow {
            network: before.network.clone(),
            ip: ip.clone(),
            mac: Some(before.mac.clone()),
            client_id: None,
            hostname: before.name.clone(),
        };
        crate::app::reservations::changed(app, "removed", &res).await;
    }
    if let Some(bmc) = &r.bmc {
        match crate::power::act(bmc, crate::power::Action::Off).await {
            Ok(_) => says.push(format!("powered off by its BMC {}", bmc.describe())),
            Err(e) => says.push(format!("its BMC did not power it off: {e}")),
        }
    } else if deployed_and_up(&before) {
        says.push("rebooted by its own system: it waits at its network boot".into());
    }
    let says = if says.is_empty() {
        "nothing was running on it".to_string()
    } else {
        says.join("; ")
    };
    app.state
        .record(
            NewEvent::info(
                "provision.released",
                format!("{} ({}) released: {says}", label(&before), r.mac),
            )
            .about(label(&before)),
        )
        .await?;
    Ok(MachineReply { machine: r, says })
}

/// Refuses a profile the config does not have.
fn known_profile(app: &App, name: &str) -> Result<()> {
    let cfg = app.config();
    let known: Vec<String> = cfg
        .provisioning
        .iter()
        .flat_map(|p| p.profiles.iter().map(|pr| pr.name.clone()))
        .collect();
    if known.iter().any(|k| k == name) {
        return Ok(());
    }
    Err(Error::invalid(
        "no_profile",
        format!(
            "no [[provisioning.profile]] is named `{name}`; there {}",
            if known.is_empty() {
                "are none in the config".to_string()
            } else {
                format!("are: {}", known.join(", "))
            }
        ),
    ))
}

/// How a machine is named in events: its name once it has one.
fn label(m: &MachineRow) -> &str {
    m.name.as_deref().unwrap_or(&m.mac)
}

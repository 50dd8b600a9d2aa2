//! Placement over the inventory's latest facts: the hosts' capacities and their VMs' needs
//! read from state, checked for staleness, handed to the pure `placement` functions. Used by
//! `POST /v1/plan` (plans only) and by batches (which then run the plan).

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::inventory::facts::HostFacts;
use crate::placement::{
    self, Algorithm, Cluster, Host, Mode, Order, Plan, Request, Res, Rules, Vm,
};
use crate::state::{now_ms, State, StateError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanRequest {
    pub vms: Vec<String>,
    pub to: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Percent kept free on targets; the config's `placement.headroom_pct` when absent.
    pub headroom_pct: Option<u8>,
    #[serde(default)]
    pub affinity: Vec<Vec<String>>,
    #[serde(default)]
    pub anti_affinity: Vec<Vec<String>>,
    /// "vm=host" pairs.
    #[serde(default)]
    pub pin: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlanReply {
    pub request: PlanRequest,
    pub plan: Plan,
    /// The capacities planned with, per host.
    pub hosts: Vec<Host>,
}

/// Why no plan came out: the request or the facts (the operator's to fix), or the state.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    State(#[from] StateError),
}

fn bad(msg: impl Into<String>) -> PlanError {
    PlanError::Bad(msg.into())
}

/// A host's capacity and its VMs' needs, from its facts.
fn host_from_facts(cfg: &Config, name: &str, f: &HostFacts) -> (Host, Vec<Vm>) {
    let vms: Vec<Vm> = f
        .vms
        .iter()
        .map(|v| Vm {
            name: v.name.clone(),
            host: name.to_string(),
            // The room its disks' copies take on a target: what they hold now (a sparse image
            // is copied sparse), or their size where the host did not say.
            req: Res::new(
                u64::from(v.vcpus) * 1000,
                v.mem_mib,
                if v.disk_allocated_mib > 0 {
                    v.disk_allocated_mib
                } else {
                    v.disk_mib
                },
                v.bw_mbps,
            ),
        })
        .collect();
    let used = vms.iter().fold(Res::default(), |a, v| a.plus(v.req));
    // What VMs may use: what is free now plus what the VMs there hold.
    let link = f
        .nics
        .iter()
        .filter_map(|n| n.speed_mbps)
        .max()
        .unwrap_or(10_000);
    let cap = Res::new(
        (f64::from(f.cpus) * 1000.0 * cfg.placement.cpu_overcommit) as u64,
        f.mem_free_mib + used.mem_mib,
        f.disks.first().map(|d| d.free_mib).unwrap_or(0) + used.disk_mib,
        u64::from(link),
    );
    (
        Host {
            name: name.to_string(),
            cap,
        },
        vms,
    )
}

/// Plans `req` with the facts in `state`.
pub async fn plan(cfg: &Config, state: &State, req: PlanRequest) -> Result<PlanReply, PlanError> {
    let rows = state.hosts().await?;
    let facts = state.latest_facts().await?;
    let mut cluster = Cluster::default();
    let mut seen: Vec<(i64, Vm)> = Vec::new();
    let mut problems = Vec::new();
    let stale_ms = cfg.placement.stale_after.as_millis() as i64;
    for h in &cfg.hosts {
        let row = rows.iter().find(|r| r.name == h.name);
        let Some((_, at, f)) = facts.iter().find(|(n, _, _)| *n == h.name) else {
            if req.to.contains(&h.name) {
                problems.push(format!(
                    "host `{}` has never been collected; run `netmigrate hosts collect {}`",
                    h.name, h.name
                ));
            }
            continue;
        };
        let involved = req.to.contains(&h.name) || f.vms.iter().any(|v| req.vms.contains(&v.name));
        if involved {
            if row.is_some_and(|r| r.status == "down") {
                problems.push(format!(
                    "host `{}` is down ({}); its facts cannot be trusted",
                    h.name,
                    row.and_then(|r| r.status_reason.clone())
                        .unwrap_or_default()
                ));
            } else if now_ms() - at > stale_ms {
                problems.push(format!(
                    "the facts of host `{}` are {} old (placement.stale_after is {}); run `netmigrate hosts collect {}`",
                    h.name,
                    crate::config::values::format_duration(std::time::Duration::from_secs(((now_ms() - at) / 1000) as u64)),
                    crate::config::values::format_duration(cfg.placement.stale_after),
                    h.name
                ));
            }
        }
        let (host, vms) = host_from_facts(cfg, &h.name, f);
        cluster.hosts.push(host);
        seen.extend(vms.into_iter().map(|v| (*at, v)));
    }
    // A VM can show up on two hosts: it moved since a host's last collection, or a move that
    // lost its target left a QEMU there that never ran it. Where the appliance knows a
    // managed VM runs (its journaled state) wins; otherwise the newest facts.
    let runs_at: std::collections::HashMap<String, String> = state
        .vms()
        .await?
        .into_iter()
        .filter(|v| v.state == "running")
        .filter_map(|v| Some((v.name, v.host?)))
        .collect();
    seen.sort_by_key(|(at, v)| {
        let known = runs_at.get(&v.name) == Some(&v.host);
        (std::cmp::Reverse(known), std::cmp::Reverse(*at))
    });
    for (_, v) in seen {
        if !cluster.vms.iter().any(|w| w.name == v.name) {
            cluster.vms.push(v);
        }
    }
    if let Some(p) = problems.into_iter().next() {
        return Err(bad(p));
    }
    let mut pinned = Vec::new();
    for p in &req.pin {
        let Some((vm, host)) = p.split_once('=') else {
            return Err(bad(format!("--pin `{p}`: write it as VM=HOST")));
        };
        pinned.push((vm.to_string(), host.to_string()));
    }
    let request = Request {
        vms: req.vms.clone(),
        targets: req.to.clone(),
        mode: req.mode,
        order: req.order,
        algorithm: req.algorithm,
        headroom_pct: req.headroom_pct.unwrap_or(cfg.placement.headroom_pct),
        rules: Rules {
            affinity: req.affinity.clone(),
            anti_affinity: req.anti_affinity.clone(),
            pinned,
            excluded: req.exclude.clone(),
        },
    };
    let plan = placement::plan(&cluster, &request).map_err(|e| bad(e.to_string()))?;
    Ok(PlanReply {
        request: req,
        plan,
        hosts: cluster.hosts,
    })
}

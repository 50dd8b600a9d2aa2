//! `/v1/hosts` and `/v1/vms`: the inventory as the API shows it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Body, Path};
use super::ApiError;
use crate::daemon::App;
use crate::inventory::facts::{HostFacts, VmFacts};
use crate::inventory::{arp_table, Collected};
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
    #[serde(flatten)]
    pub vm: VmFacts,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CollectRequest {
    /// Hosts to collect; all configured hosts when empty.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TrustRequest {
    pub host: String,
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TrustReply {
    pub host: String,
    pub key: String,
    pub previous: Option<String>,
}

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<HostView>>, ApiError> {
    let rows = app.state.hosts().await?;
    let facts = app.state.latest_facts().await?;
    let machines = app.state.machines().await?;
    Ok(Json(
        rows.into_iter()
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
            .collect(),
    ))
}

pub async fn vms(State(app): State<Arc<App>>) -> Result<Json<Vec<VmView>>, ApiError> {
    let facts = app.state.latest_facts().await?;
    Ok(Json(
        facts
            .into_iter()
            .flat_map(|(host, at, f)| {
                f.vms.into_iter().map(move |vm| VmView {
                    host: host.clone(),
                    collected_ms: at,
                    vm,
                })
            })
            .collect(),
    ))
}

fn unknown_host(name: &str, known: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_host",
        format!("unknown host `{name}`; configured: {}", known.join(", ")),
    )
}

pub async fn collect(
    State(app): State<Arc<App>>,
    body: Option<Body<CollectRequest>>,
) -> Result<Json<Vec<Collected>>, ApiError> {
    let wanted = body.map(|b| b.0.hosts).unwrap_or_default();
    Ok(Json(collect_hosts(&app, wanted).await?))
}

/// Collects the `wanted` hosts (all when empty), records the facts and each host that went
/// down or came back.
pub async fn collect_hosts(app: &App, wanted: Vec<String>) -> Result<Vec<Collected>, ApiError> {
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

pub async fn trust(
    State(app): State<Arc<App>>,
    Body(req): Body<TrustRequest>,
) -> Result<Json<TrustReply>, ApiError> {
    let cfg = app.config();
    let known: Vec<String> = cfg.hosts.iter().map(|h| h.name.clone()).collect();
    let Some(h) = cfg.hosts.iter().find(|h| h.name == req.host) else {
        return Err(unknown_host(&req.host, &known));
    };
    if h.host_key.is_some() && req.replace {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
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
        .trust(h, previous.as_deref(), req.replace)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "host_key", e.to_string()))?;
    app.state.pin_host_key(h.name.clone(), key.clone()).await?;
    app.state
        .record(NewEvent::info("host.trust", format!("host key pinned: {key}")).about(&h.name))
        .await?;
    Ok(Json(TrustReply {
        host: h.name.clone(),
        key,
        previous,
    }))
}

/// Machines that network-booted, from discovered to ready.
pub async fn machines(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<crate::state::machines::MachineRow>>, ApiError> {
    Ok(Json(app.state.machines().await?))
}

/// The operator accepts a discovered machine.
pub async fn accept(
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
) -> Result<Json<crate::state::machines::MachineRow>, ApiError> {
    let mac: crate::config::Mac = mac
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_mac", e))?;
    Ok(Json(
        crate::provision::accept(&app, &mac.to_string(), "accepted by the operator".into()).await?,
    ))
}

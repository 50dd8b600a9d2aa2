//! `/v1/hosts` and `/v1/vms`: the inventory as the API shows it (the work is in `app::hosts`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Body, Path};
use super::ApiError;
pub use crate::app::hosts::{HostView, TrustReply, VmView};
use crate::app::{self, App};
use crate::inventory::Collected;

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

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<HostView>>, ApiError> {
    Ok(Json(app::hosts::list(&app).await?))
}

pub async fn vms(State(app): State<Arc<App>>) -> Result<Json<Vec<VmView>>, ApiError> {
    Ok(Json(app::hosts::vms(&app).await?))
}

pub async fn collect(
    State(app): State<Arc<App>>,
    body: Option<Body<CollectRequest>>,
) -> Result<Json<Vec<Collected>>, ApiError> {
    let wanted = body.map(|b| b.0.hosts).unwrap_or_default();
    Ok(Json(app::hosts::collect(&app, wanted).await?))
}

pub async fn trust(
    State(app): State<Arc<App>>,
    Body(req): Body<TrustRequest>,
) -> Result<Json<TrustReply>, ApiError> {
    Ok(Json(app::hosts::trust(&app, &req.host, req.replace).await?))
}

/// Machines that network-booted, from discovered to ready.
pub async fn machines(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<crate::state::machines::MachineRow>>, ApiError> {
    Ok(Json(app::hosts::machines(&app).await?))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// The `[[provisioning.profile]]` it is deployed with; none: `default_profile`.
    #[serde(default)]
    pub profile: Option<String>,
}

/// The operator accepts a discovered machine (the body, if any, names its profile).
pub async fn accept(
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
    body: Option<Body<AcceptRequest>>,
) -> Result<Json<crate::state::machines::MachineRow>, ApiError> {
    let req = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(app::hosts::accept(&app, &mac, req.profile).await?))
}

/// The operator deploys a machine again (the body, if any, names another profile).
pub async fn deploy(
    State(app): State<Arc<App>>,
    Path(target): Path<String>,
    body: Option<Body<AcceptRequest>>,
) -> Result<Json<app::hosts::MachineReply>, ApiError> {
    let req = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(app::hosts::deploy(&app, &target, req.profile).await?))
}

/// The operator releases a machine: back to discovered.
pub async fn release(
    State(app): State<Arc<App>>,
    Path(target): Path<String>,
) -> Result<Json<app::hosts::MachineReply>, ApiError> {
    Ok(Json(app::hosts::release(&app, &target).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PowerRequest {
    pub action: crate::power::Action,
}

/// Powers a machine on, off or through a cycle by its BMC, or asks its state.
pub async fn power(
    State(app): State<Arc<App>>,
    Path(target): Path<String>,
    Body(req): Body<PowerRequest>,
) -> Result<Json<app::hosts::PowerReply>, ApiError> {
    Ok(Json(app::hosts::power(&app, &target, req.action).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BmcRequest {
    /// None: the machine has no BMC any more.
    pub bmc: Option<crate::power::Bmc>,
}

/// Gives a machine its BMC.
pub async fn set_bmc(
    State(app): State<Arc<App>>,
    Path(target): Path<String>,
    Body(req): Body<BmcRequest>,
) -> Result<Json<crate::state::machines::MachineRow>, ApiError> {
    Ok(Json(app::hosts::set_bmc(&app, &target, req.bmc).await?))
}

//! `/v1/vm-defs` (the VMs the appliance manages: definitions, start, stop) and
//! `/v1/migrations` (moves and their journals) and `/v1/batches` (the moves of a plan); the
//! work is in `app::vms`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Body, Path, Query};
use super::ApiError;
use crate::app::{self, App};
use crate::hypervisor::VmDef;
use crate::migrate::batch::BatchRequest;
use crate::migrate::Request;
use crate::state::{BatchRow, MigrationRow, VmRow};

pub async fn list_defs(State(app): State<Arc<App>>) -> Result<Json<Vec<VmRow>>, ApiError> {
    Ok(Json(app::vms::list(&app).await?))
}

pub async fn define(
    State(app): State<Arc<App>>,
    Body(def): Body<VmDef>,
) -> Result<Json<VmRow>, ApiError> {
    Ok(Json(app::vms::define(&app, def).await?))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app::vms::remove(&app, &name).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StartRequest {
    pub host: String,
}

pub async fn start(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Body(req): Body<StartRequest>,
) -> Result<Json<VmRow>, ApiError> {
    Ok(Json(app::vms::start(&app, &name, &req.host).await?))
}

pub async fn stop(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<VmRow>, ApiError> {
    Ok(Json(app::vms::stop(&app, &name).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdoptRequest {
    pub host: String,
    /// Its disks on shared storage (the others move with it).
    #[serde(default)]
    pub shared: Vec<String>,
    /// Its address, where neither the neighbour table nor a lease knows it.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
}

/// Makes a VM someone else started managed, as it runs.
pub async fn adopt(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Body(req): Body<AdoptRequest>,
) -> Result<Json<VmRow>, ApiError> {
    Ok(Json(
        app::vms::adopt(&app, &name, &req.host, req.shared, req.ip).await?,
    ))
}

/// Forgets a VM without touching it; returns what the appliance knew of it.
pub async fn release(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<VmRow>, ApiError> {
    Ok(Json(app::vms::release(&app, &name).await?))
}

/// Runs one move to its end (done, failed or rolled back) and returns it with its journal.
pub async fn migrate(
    State(app): State<Arc<App>>,
    Body(req): Body<Request>,
) -> Result<Json<MigrationRow>, ApiError> {
    Ok(Json(app::vms::migrate(&app, req).await?))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default = "fifty")]
    pub limit: i64,
}

fn fifty() -> i64 {
    50
}

pub async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<MigrationRow>>, ApiError> {
    Ok(Json(app::vms::migrations(&app, q.limit).await?))
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<MigrationRow>, ApiError> {
    Ok(Json(app::vms::migration(&app, id).await?))
}

/// Plans and starts a batch; answers at once with its plan while the moves run (follow them on
/// `/v1/watch`, or poll `/v1/batches/{id}`).
pub async fn start_batch(
    State(app): State<Arc<App>>,
    Body(req): Body<BatchRequest>,
) -> Result<Json<BatchRow>, ApiError> {
    Ok(Json(app::vms::start_batch(&app, req).await?))
}

pub async fn list_batches(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<BatchRow>>, ApiError> {
    Ok(Json(app::vms::batches(&app, q.limit).await?))
}

pub async fn get_batch(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<BatchRow>, ApiError> {
    Ok(Json(app::vms::batch(&app, id).await?))
}

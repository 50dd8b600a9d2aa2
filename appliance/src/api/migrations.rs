//! `/v1/vm-defs` (the VMs the appliance manages: definitions, start, stop) and
//! `/v1/migrations` (moves and their journals) and `/v1/batches` (the moves of a plan).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Body, Path, Query};
use super::ApiError;
use crate::daemon::App;
use crate::hypervisor::VmDef;
use crate::migrate::batch::BatchRequest;
use crate::migrate::{Engine, Refused, Request};
use crate::state::{BatchRow, MigrationRow, NewEvent, VmRow};

fn engine(app: &App) -> Engine {
    app.engine()
}

impl From<Refused> for ApiError {
    fn from(e: Refused) -> Self {
        let (status, code) = match &e {
            Refused::UnknownVm(_) | Refused::UnknownHost(_) => (StatusCode::NOT_FOUND, "not_found"),
            Refused::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state"),
            Refused::Driver(_) => (StatusCode::BAD_GATEWAY, "host"),
            _ => (StatusCode::CONFLICT, "refused"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub async fn list_defs(State(app): State<Arc<App>>) -> Result<Json<Vec<VmRow>>, ApiError> {
    Ok(Json(app.state.vms().await?))
}

pub async fn define(
    State(app): State<Arc<App>>,
    Body(def): Body<VmDef>,
) -> Result<Json<VmRow>, ApiError> {
    def.check()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_vm", e))?;
    let name = def.name.clone();
    app.state.define_vm(def).await?;
    app.state
        .record(NewEvent::info("vm.define", "defined").about(&name))
        .await?;
    // A VM with an address is named at once.
    if let Some(dns) = &app.dns {
        dns.refresh(&app.config()).await;
    }
    Ok(Json(app.state.vm(name).await?.expect("just defined")))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match app.state.vm(name.clone()).await? {
        None => Err(Refused::UnknownVm(name).into()),
        Some(r) if r.state == "running" || r.state == "migrating" => Err(ApiError::new(
            StatusCode::CONFLICT,
            "running",
            format!(
                "{name} runs on {}; stop it first",
                r.host.unwrap_or_default()
            ),
        )),
        Some(_) => {
            app.state.remove_vm(name.clone()).await?;
            if let Some(dns) = &app.dns {
                dns.refresh(&app.config()).await;
            }
            Ok(Json(serde_json::json!({ "removed": name })))
        }
    }
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
    let (cfg, engine, n) = (app.config(), engine(&app), name.clone());
    tokio::spawn(async move { engine.start_vm(&cfg, &n, &req.host).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))??;
    Ok(Json(app.state.vm(name).await?.expect("started")))
}

pub async fn stop(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<VmRow>, ApiError> {
    let (cfg, engine, n) = (app.config(), engine(&app), name.clone());
    tokio::spawn(async move { engine.stop_vm(&cfg, &n).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))??;
    Ok(Json(app.state.vm(name).await?.expect("stopped")))
}

/// Runs one move to its end (done, failed or rolled back) and returns it with its journal.
/// The move runs in a task of its own: a client that goes away does not cut it short.
pub async fn migrate(
    State(app): State<Arc<App>>,
    Body(req): Body<Request>,
) -> Result<Json<MigrationRow>, ApiError> {
    let (cfg, engine) = (app.config(), engine(&app));
    let r = tokio::spawn(async move { engine.migrate(&cfg, &req).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))?;
    Ok(Json(r?))
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
    Ok(Json(app.state.migrations(q.limit, false).await?))
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<MigrationRow>, ApiError> {
    app.state.migration(id).await?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no migration {id}"),
        )
    })
}

/// Plans and starts a batch; answers at once with its plan while the moves run (follow them on
/// `/v1/watch`, or poll `/v1/batches/{id}`).
pub async fn start_batch(
    State(app): State<Arc<App>>,
    Body(req): Body<BatchRequest>,
) -> Result<Json<BatchRow>, ApiError> {
    let (cfg, engine) = (app.config(), engine(&app));
    let r = tokio::spawn(async move { engine.start_batch(cfg, req).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))?;
    Ok(Json(r?))
}

pub async fn list_batches(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<BatchRow>>, ApiError> {
    Ok(Json(app.state.batches(q.limit).await?))
}

pub async fn get_batch(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<BatchRow>, ApiError> {
    app.state
        .batch(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no batch {id}")))
}

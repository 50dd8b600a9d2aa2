//! `POST /v1/plan`: placement over the inventory's latest facts. Only plans; nothing moves.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::extract::Body;
use super::ApiError;
use crate::daemon::App;
use crate::planner::PlanError;
pub use crate::planner::{PlanReply, PlanRequest};

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Bad(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_plan", m),
            PlanError::State(e) => e.into(),
        }
    }
}

pub async fn plan(
    State(app): State<Arc<App>>,
    Body(req): Body<PlanRequest>,
) -> Result<Json<PlanReply>, ApiError> {
    Ok(Json(
        crate::planner::plan(&app.config(), &app.state, req).await?,
    ))
}

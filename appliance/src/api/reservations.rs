//! `/v1/reservations`: list, add and remove reservations (the work is in
//! `app::reservations`); the DHCP server takes each change up at once.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::extract::{Body, Path};
use super::ApiError;
use crate::app::{self, App};
use crate::reservations::ReservationView;
use crate::state::ReservationRow;

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<ReservationView>>, ApiError> {
    Ok(Json(app::reservations::list(&app).await?))
}

pub async fn add(
    State(app): State<Arc<App>>,
    Body(new): Body<ReservationRow>,
) -> Result<Json<ReservationView>, ApiError> {
    Ok(Json(app::reservations::add(&app, new).await?))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Path((network, ip)): Path<(String, String)>,
) -> Result<Json<ReservationView>, ApiError> {
    Ok(Json(app::reservations::remove(&app, &network, &ip).await?))
}

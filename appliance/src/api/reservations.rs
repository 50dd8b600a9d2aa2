//! `/v1/reservations`: list, add and remove reservations; the DHCP server takes each change
//! up at once.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::extract::{Body, Path};
use super::ApiError;
use crate::daemon::App;
use crate::reservations::{self, ReservationView};
use crate::state::{NewEvent, ReservationRow};

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<ReservationView>>, ApiError> {
    let runtime = app.state.reservations().await?;
    Ok(Json(reservations::list(&app.config(), &runtime)))
}

pub async fn add(
    State(app): State<Arc<App>>,
    Body(new): Body<ReservationRow>,
) -> Result<Json<ReservationView>, ApiError> {
    let cfg = app.config();
    let runtime = app.state.reservations().await?;
    let row = reservations::check(&cfg, &runtime, &new)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_reservation", e))?;
    if !app.state.add_reservation(row.clone()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "bad_reservation",
            format!("{} is already reserved", row.ip),
        ));
    }
    changed(&app, "added", &row).await;
    Ok(Json(ReservationView {
        row,
        source: "runtime".into(),
    }))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Path((network, ip)): Path<(String, String)>,
) -> Result<Json<ReservationView>, ApiError> {
    let runtime = app.state.reservations().await?;
    let Some(row) = runtime
        .iter()
        .find(|r| r.network == network && r.ip == ip)
        .cloned()
    else {
        let in_config = app
            .config()
            .reservations
            .iter()
            .any(|r| r.network == network && r.ip.to_string() == ip);
        return Err(if in_config {
            ApiError::new(
                StatusCode::CONFLICT,
                "in_config",
                format!(
                    "{ip} in network {network} is reserved in the config file; remove it there and reload"
                ),
            )
        } else {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_reservation",
                format!("no reservation of {ip} in network {network}"),
            )
        });
    };
    app.state.remove_reservation(&network, &ip).await?;
    changed(&app, "removed", &row).await;
    Ok(Json(ReservationView {
        row,
        source: "runtime".into(),
    }))
}

/// Records the change and hands the DHCP server the new reservations (and DNS its names).
pub(crate) async fn changed(app: &App, what: &str, r: &ReservationRow) {
    let who = [&r.mac, &r.client_id, &r.hostname]
        .into_iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let _ = app
        .state
        .record(
            NewEvent::info("dhcp.reservation", format!("{what} {} for {who}", r.ip))
                .about(&r.network),
        )
        .await;
    if let Some(dns) = &app.dns {
        dns.refresh(&app.config()).await;
    }
    if let Err(e) = app.dhcp.update(&app.config()).await {
        let _ = app
            .state
            .record(NewEvent::warn("dhcp.reservation", e).about(&r.network))
            .await;
    }
}

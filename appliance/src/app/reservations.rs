//! Run-time reservations: checked by the config's rules, added and removed, and each change
//! taken up at once by the DHCP server (and DNS, for their names).

use super::{App, Error, Result};
use crate::reservations::{self, ReservationView};
use crate::state::{NewEvent, ReservationRow};

pub async fn list(app: &App) -> Result<Vec<ReservationView>> {
    let runtime = app.state.reservations().await?;
    Ok(reservations::list(&app.config(), &runtime))
}

pub async fn add(app: &App, new: ReservationRow) -> Result<ReservationView> {
    let cfg = app.config();
    let runtime = app.state.reservations().await?;
    let row = reservations::check(&cfg, &runtime, &new)
        .map_err(|e| Error::invalid("bad_reservation", e))?;
    if !app.state.add_reservation(row.clone()).await? {
        return Err(Error::conflict(
            "bad_reservation",
            format!("{} is already reserved", row.ip),
        ));
    }
    changed(app, "added", &row).await;
    Ok(ReservationView {
        row,
        source: "runtime".into(),
    })
}

pub async fn remove(app: &App, network: &str, ip: &str) -> Result<ReservationView> {
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
            Error::conflict(
                "in_config",
                format!(
                    "{ip} in network {network} is reserved in the config file; remove it there and reload"
                ),
            )
        } else {
            Error::not_found(
                "unknown_reservation",
                format!("no reservation of {ip} in network {network}"),
            )
        });
    };
    app.state.remove_reservation(network, ip).await?;
    changed(app, "removed", &row).await;
    Ok(ReservationView {
        row,
        source: "runtime".into(),
    })
}

/// Records the change and hands the DHCP server the new reservations (and DNS its names).
pub async fn changed(app: &App, what: &str, r: &ReservationRow) {
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

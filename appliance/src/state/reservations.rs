//! Reservations made at run time (`reservations`), kept beside the config file's. Checking
//! them against the config is the caller's part; the table keeps one per address per network.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRow {
    pub network: String,
    pub ip: String,
    pub mac: Option<String>,
    pub client_id: Option<String>,
    pub hostname: Option<String>,
}

impl State {
    pub async fn reservations(&self) -> Result<Vec<ReservationRow>, StateError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT network, ip, mac, client_id, hostname FROM reservations
                 ORDER BY network, ip",
            )?;
            let rows = st.query_map([], |r| {
                Ok(ReservationRow {
                    network: r.get(0)?,
                    ip: r.get(1)?,
                    mac: r.get(2)?,
                    client_id: r.get(3)?,
                    hostname: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Adds `r`; false if its network already has a reservation of that address.
    pub async fn add_reservation(&self, r: ReservationRow) -> Result<bool, StateError> {
        self.write(move |tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO reservations
                   (network, ip, mac, client_id, hostname, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.network, r.ip, r.mac, r.client_id, r.hostname, now_ms()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Removes the reservation of `ip` in `network`; false if there was none.
    pub async fn remove_reservation(&self, network: &str, ip: &str) -> Result<bool, StateError> {
        let (network, ip) = (network.to_string(), ip.to_string());
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM reservations WHERE network = ?1 AND ip = ?2",
                params![network, ip],
            )?;
            Ok(n == 1)
        })
        .await
    }
}

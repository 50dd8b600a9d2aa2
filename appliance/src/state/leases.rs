//! DHCP leases (`leases`): one row per address per network, replaced as the lease changes. A
//! client holds at most one address per network: committing a lease clears its other rows.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRow {
    pub network: String,
    pub ip: String,
    /// Hex of the client identity (option 61, or 01 + MAC).
    pub client: String,
    pub mac: String,
    pub hostname: Option<String>,
    /// bound, released or declined
    pub state: String,
    pub expires_ms: i64,
    pub updated_ms: i64,
}

/// A lease as the DHCP server hands it over.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub network: String,
    pub ip: String,
    pub client: Vec<u8>,
    pub mac: String,
    pub hostname: Option<String>,
    pub state: &'static str,
    pub expires_ms: i64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl State {
    /// Writes `leases` in one transaction; durable when this returns (WAL, synchronous=NORMAL:
    /// survives a crash of the appliance; FULL would be needed against power loss).
    pub async fn commit_leases(&self, leases: Vec<NewLease>) -> Result<(), StateError> {
        self.write(move |tx| {
            for l in leases {
                commit(tx, &l)?;
            }
            Ok(())
        })
        .await
    }
}

/// One lease row; a client keeps one address per network, so its other rows go.
fn commit(tx: &rusqlite::Transaction, l: &NewLease) -> Result<(), StateError> {
    if !l.client.is_empty() {
        tx.execute(
            "DELETE FROM leases WHERE network = ?1 AND client = ?2 AND ip != ?3",
            params![l.network, l.client, l.ip],
        )?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO leases
           (network, ip, client, mac, hostname, state, expires_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            l.network,
            l.ip,
            l.client,
            l.mac,
            l.hostname,
            l.state,
            l.expires_ms,
            now_ms()
        ],
    )?;
    Ok(())
}

impl State {
    /// The leases of `network` (all networks when None), with the raw client identity.
    pub async fn leases_raw(
        &self,
        network: Option<String>,
    ) -> Result<Vec<(LeaseRow, Vec<u8>)>, StateError> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT network, ip, client, mac, hostname, state, expires_ms, updated_ms
                 FROM leases WHERE ?1 IS NULL OR network = ?1 ORDER BY network, ip",
            )?;
            let rows = st.query_map([network], |r| {
                let client: Vec<u8> = r.get(2)?;
                Ok((
                    LeaseRow {
                        network: r.get(0)?,
                        ip: r.get(1)?,
                        client: hex(&client),
                        mac: r.get(3)?,
                        hostname: r.get(4)?,
                        state: r.get(5)?,
                        expires_ms: r.get(6)?,
                        updated_ms: r.get(7)?,
                    },
                    client,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StateError> {
        Ok(self
            .leases_raw(None)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }
}

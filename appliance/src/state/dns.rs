//! The DNS records added by RFC 2136 updates (`dns_records`): kept whole, replaced whole, since
//! an update is answered only once the set it leaves is durable.

use rusqlite::params;

use super::{State, StateError};

impl State {
    /// The static records, in DNS wire form.
    pub async fn dns_static(&self) -> Result<Vec<Vec<u8>>, StateError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT wire FROM dns_records ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Replaces the static records by `records` (wire form, text).
    pub async fn save_dns_static(&self, records: Vec<(Vec<u8>, String)>) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute("DELETE FROM dns_records", [])?;
            for (wire, text) in &records {
                tx.execute(
                    "INSERT INTO dns_records (wire, text) VALUES (?1, ?2)",
                    params![wire, text],
                )?;
            }
            Ok(())
        })
        .await
    }
}

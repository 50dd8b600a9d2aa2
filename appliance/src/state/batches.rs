//! Batches (`batches`): the moves of one plan run together. A batch row holds what was asked
//! and the plan; its moves are migrations that point back to it.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, MigrationRow, Notice, State, StateError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRow {
    pub id: i64,
    /// running, done, failed or interrupted (the appliance stopped while it ran)
    pub state: String,
    pub reason: Option<String>,
    pub request: serde_json::Value,
    pub plan: serde_json::Value,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// Its migrations, in the order they started.
    #[serde(default)]
    pub migrations: Vec<MigrationRow>,
}

const COLUMNS: &str = "id, state, reason, request, plan, started_ms, finished_ms";

fn batch(r: &rusqlite::Row) -> rusqlite::Result<BatchRow> {
    let json = |s: String| serde_json::from_str(&s).unwrap_or_default();
    Ok(BatchRow {
        id: r.get(0)?,
        state: r.get(1)?,
        reason: r.get(2)?,
        request: json(r.get(3)?),
        plan: json(r.get(4)?),
        started_ms: r.get(5)?,
        finished_ms: r.get(6)?,
        migrations: Vec::new(),
    })
}

impl State {
    pub async fn begin_batch(
        &self,
        request: serde_json::Value,
        plan: serde_json::Value,
    ) -> Result<i64, StateError> {
        let id = self
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO batches (state, request, plan, started_ms)
                     VALUES ('running', ?1, ?2, ?3)",
                    params![request.to_string(), plan.to_string(), now_ms()],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await?;
        self.notify(Notice::Batch {
            id,
            state: "running".into(),
            at_ms: now_ms(),
        });
        Ok(id)
    }

    pub async fn end_batch(
        &self,
        id: i64,
        state: &'static str,
        reason: Option<String>,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE batches SET state = ?2, reason = ?3, finished_ms = ?4 WHERE id = ?1",
                params![id, state, reason, now_ms()],
            )?;
            Ok(())
        })
        .await?;
        self.notify(Notice::Batch {
            id,
            state: state.into(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    /// Marks batches that were running when the appliance stopped; their moves are settled one
    /// by one by migration recovery, the moves not yet started are not resumed.
    pub async fn interrupt_batches(&self) -> Result<usize, StateError> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE batches SET state = 'interrupted', finished_ms = ?1,
                     reason = 'the appliance stopped while the batch ran'
                 WHERE state = 'running'",
                [now_ms()],
            )?)
        })
        .await
    }

    pub async fn batch(&self, id: i64) -> Result<Option<BatchRow>, StateError> {
        let b = self
            .read(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {COLUMNS} FROM batches WHERE id = ?1"),
                    [id],
                    batch,
                )
                .optional()?)
            })
            .await?;
        match b {
            Some(mut b) => {
                b.migrations = self.batch_migrations(id).await?;
                Ok(Some(b))
            }
            None => Ok(None),
        }
    }

    /// The newest `limit` batches, without their migrations.
    pub async fn batches(&self, limit: i64) -> Result<Vec<BatchRow>, StateError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM batches ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = st.query_map([limit], batch)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

//! Migrations and their journal (`migrations`, `migration_steps`): a step is written before
//! its side effect and marked after it, so a restarted appliance knows where each one stopped.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, Notice, State, StateError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationRow {
    pub id: i64,
    pub vm: String,
    pub source: String,
    pub target: String,
    /// cold or live
    pub mode: String,
    /// running, done, failed or rolled-back
    pub state: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub break_ms: Option<i64>,
    pub detail: serde_json::Value,
    /// The batch it ran in, if it was part of one.
    pub batch: Option<i64>,
    pub steps: Vec<StepRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRow {
    pub seq: i64,
    pub step: String,
    /// started, done, failed or undone
    pub state: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub detail: Option<String>,
}

const COLUMNS: &str =
    "id, vm, source, target, mode, state, reason, started_ms, finished_ms, break_ms, detail, batch";

fn migration(r: &rusqlite::Row) -> rusqlite::Result<MigrationRow> {
    Ok(MigrationRow {
        id: r.get(0)?,
        vm: r.get(1)?,
        source: r.get(2)?,
        target: r.get(3)?,
        mode: r.get(4)?,
        state: r.get(5)?,
        reason: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        break_ms: r.get(9)?,
        detail: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
        batch: r.get(11)?,
        steps: Vec::new(),
    })
}

fn steps(c: &rusqlite::Connection, id: i64) -> Result<Vec<StepRow>, StateError> {
    let mut st = c.prepare_cached(
        "SELECT seq, step, state, started_ms, finished_ms, detail FROM migration_steps
         WHERE migration = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(StepRow {
            seq: r.get(0)?,
            step: r.get(1)?,
            state: r.get(2)?,
            started_ms: r.get(3)?,
            finished_ms: r.get(4)?,
            detail: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl State {
    /// Opens a migration of `vm` and marks the VM migrating, in one transaction. Refused if
    /// the VM already has one running.
    pub async fn begin_migration(
        &self,
        vm: String,
        source: String,
        target: String,
        mode: &'static str,
        batch: Option<i64>,
    ) -> Result<i64, StateError> {
        let (v, s, t) = (vm.clone(), source.clone(), target.clone());
        let id = self
            .write(move |tx| {
                let busy: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM migrations WHERE vm = ?1 AND state = 'running'",
                        [&vm],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = busy {
                    return Err(StateError::Conflict(format!(
                        "{vm} is already being migrated (migration {id})"
                    )));
                }
                tx.execute(
                    "INSERT INTO migrations (vm, source, target, mode, state, started_ms, batch)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6)",
                    params![vm, source, target, mode, now_ms(), batch],
                )?;
                let id = tx.last_insert_rowid();
                tx.execute(
                    "UPDATE vms SET state = 'migrating', updated_ms = ?2 WHERE name = ?1",
                    params![vm, now_ms()],
                )?;
                Ok(id)
            })
            .await?;
        self.notify(Notice::Migration {
            id,
            vm: v,
            source: s,
            target: t,
            state: "running".into(),
            batch,
            at_ms: now_ms(),
        });
        Ok(id)
    }

    /// Journals the start of `step` (before its side effect); returns its sequence number.
    pub async fn step_started(&self, id: i64, step: String) -> Result<i64, StateError> {
        let name = step.clone();
        let seq = self
            .write(move |tx| {
                let seq: i64 = tx.query_row(
                    "SELECT coalesce(max(seq), 0) + 1 FROM migration_steps WHERE migration = ?1",
                    [id],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO migration_steps (migration, seq, step, state, started_ms)
                 VALUES (?1, ?2, ?3, 'started', ?4)",
                    params![id, seq, step, now_ms()],
                )?;
                Ok(seq)
            })
            .await?;
        self.notify(Notice::Step {
            migration: id,
            seq,
            step: name,
            state: "started".into(),
            at_ms: now_ms(),
        });
        Ok(seq)
    }

    /// Journals the end of a step: done, failed or undone, with what it found.
    pub async fn step_ended(
        &self,
        id: i64,
        seq: i64,
        state: &'static str,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        let step: String = self
            .write(move |tx| {
                Ok(tx.query_row(
                    "UPDATE migration_steps SET state = ?3, finished_ms = ?4,
                         detail = coalesce(?5, detail)
                     WHERE migration = ?1 AND seq = ?2 RETURNING step",
                    params![id, seq, state, now_ms(), detail],
                    |r| r.get(0),
                )?)
            })
            .await?;
        self.notify(Notice::Step {
            migration: id,
            seq,
            step,
            state: state.into(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    /// Merges `detail` into the migration's JSON detail.
    pub async fn migration_detail(
        &self,
        id: i64,
        detail: serde_json::Value,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE migrations SET detail = json_patch(detail, ?2) WHERE id = ?1",
                params![id, detail.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    /// Closes a migration and records where the VM now runs, in one transaction.
    pub async fn end_migration(
        &self,
        id: i64,
        state: &'static str,
        reason: Option<String>,
        vm_host: String,
        vm_state: &'static str,
    ) -> Result<(), StateError> {
        let m = self
            .write(move |tx| {
                let now = now_ms();
                tx.execute(
                    "UPDATE migrations SET state = ?2, reason = ?3, finished_ms = ?4 WHERE id = ?1",
                    params![id, state, reason, now],
                )?;
                tx.execute(
                    "UPDATE vms SET host = ?2, state = ?3, updated_ms = ?4
                     WHERE name = (SELECT vm FROM migrations WHERE id = ?1)",
                    params![id, vm_host, vm_state, now],
                )?;
                Ok(tx.query_row(
                    &format!("SELECT {COLUMNS} FROM migrations WHERE id = ?1"),
                    [id],
                    migration,
                )?)
            })
            .await?;
        self.notify(Notice::Migration {
            id,
            vm: m.vm,
            source: m.source,
            target: m.target,
            state: m.state,
            batch: m.batch,
            at_ms: now_ms(),
        });
        Ok(())
    }

    pub async fn set_break(&self, id: i64, break_ms: i64) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE migrations SET break_ms = ?2 WHERE id = ?1",
                params![id, break_ms],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn migration(&self, id: i64) -> Result<Option<MigrationRow>, StateError> {
        self.read(move |c| {
            let m = c
                .query_row(
                    &format!("SELECT {COLUMNS} FROM migrations WHERE id = ?1"),
                    [id],
                    migration,
                )
                .optional()?;
            match m {
                Some(mut m) => {
                    m.steps = steps(c, id)?;
                    Ok(Some(m))
                }
                None => Ok(None),
            }
        })
        .await
    }

    /// The migrations of batch `batch`, in the order they started, with their steps.
    pub async fn batch_migrations(&self, batch: i64) -> Result<Vec<MigrationRow>, StateError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM migrations WHERE batch = ?1 ORDER BY id"
            ))?;
            let mut rows = st
                .query_map([batch], migration)?
                .collect::<Result<Vec<_>, _>>()?;
            for m in &mut rows {
                m.steps = steps(c, m.id)?;
            }
            Ok(rows)
        })
        .await
    }

    /// The newest `limit` migrations (without their steps), or the unfinished ones.
    pub async fn migrations(
        &self,
        limit: i64,
        unfinished_only: bool,
    ) -> Result<Vec<MigrationRow>, StateError> {
        self.read(move |c| {
            let filter = if unfinished_only {
                "WHERE state = 'running'"
            } else {
                ""
            };
            // The probe's samples stay out of lists: they are for one migration's chart.
            let columns = COLUMNS.replace("detail", "json_remove(detail, '$.probe.samples')");
            let mut st = c.prepare(&format!(
                "SELECT {columns} FROM migrations {filter} ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = st.query_map([limit], migration)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

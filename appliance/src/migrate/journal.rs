//! The journal of one migration: each step is written before its side effect and marked
//! done (or failed) after it, with its timing.

use std::future::Future;
use std::time::Instant;

use crate::state::State;

pub struct Journal {
    pub state: State,
    pub id: i64,
}

impl Journal {
    /// Runs `f` as step `name`: journaled as started first, then done or failed.
    pub async fn step<T, F>(&self, name: &str, f: F) -> Result<T, String>
    where
        F: Future<Output = Result<T, String>>,
    {
        let seq = self
            .state
            .step_started(self.id, name.to_string())
            .await
            .map_err(|e| format!("journal: {e}"))?;
        let t = Instant::now();
        let r = f.await;
        let (state, detail) = match &r {
            Ok(_) => ("done", None),
            Err(e) => ("failed", Some(e.clone())),
        };
        if let Err(e) = self.state.step_ended(self.id, seq, state, detail).await {
            tracing::error!(migration = self.id, step = name, "journal: {e}");
        }
        tracing::debug!(
            migration = self.id,
            step = name,
            ms = t.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "step"
        );
        r
    }

    /// Journals an undo (a rollback's step), best effort: a failed undo is recorded, and the
    /// rollback goes on with the next one.
    pub async fn undo<F>(&self, name: &str, f: F)
    where
        F: Future<Output = Result<(), String>>,
    {
        if let Err(e) = self.step(&format!("undo {name}"), f).await {
            tracing::error!(migration = self.id, "undo {name}: {e}");
        }
    }
}

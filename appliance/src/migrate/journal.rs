//! The journal of one migration: each step is written before its side effect and marked
//! done (or failed) after it, with its timing. It is kept behind `JournalStore` (the state, in
//! the appliance).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::error::{Error, Result};
use super::step::{Step, When};
use crate::state::{State, StateError};

/// Where the journal's rows go.
#[async_trait]
pub trait JournalStore: Send + Sync {
    /// A step of `migration` started: its row's sequence number.
    async fn step_started(&self, migration: i64, step: String) -> Result<i64, StateError>;
    /// The step ended: `done` or `failed` (with why).
    async fn step_ended(
        &self,
        migration: i64,
        seq: i64,
        state: &'static str,
        detail: Option<String>,
    ) -> Result<(), StateError>;
}

#[async_trait]
impl JournalStore for State {
    async fn step_started(&self, migration: i64, step: String) -> Result<i64, StateError> {
        State::step_started(self, migration, step).await
    }

    async fn step_ended(
        &self,
        migration: i64,
        seq: i64,
        state: &'static str,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        State::step_ended(self, migration, seq, state, detail).await
    }
}

pub struct Journal {
    pub store: Arc<dyn JournalStore>,
    pub id: i64,
}

impl Journal {
    /// Runs `f` as `step`: journaled as started first, then done or failed.
    pub async fn step<T, F>(&self, step: Step, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let name = step.name();
        let seq = self.store.step_started(self.id, name.to_string()).await?;
        let t = Instant::now();
        crash_point(step, When::Before);
        let r = f.await;
        crash_point(step, When::After);
        let (state, detail) = match &r {
            Ok(_) => ("done", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Err(e) = self.store.step_ended(self.id, seq, state, detail).await {
            tracing::error!(migration = self.id, step = %name, "journal: {e}");
        }
        tracing::debug!(
            migration = self.id,
            step = %name,
            ms = t.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "step"
        );
        r
    }

    /// A step whose failure is recorded but does not stop what follows (a rollback's undo,
    /// a cleanup): best effort, and its error for whoever reports.
    pub async fn try_step<F>(&self, step: Step, f: F) -> Option<Error>
    where
        F: Future<Output = Result<()>>,
    {
        match self.step(step, f).await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(migration = self.id, "{step}: {e}");
                Some(e)
            }
        }
    }
}

/// Fault injection for the crash tests: with `NETMIGRATE_CRASH_AT="<step>:before"` (after the
/// step is journaled as started, before its side effect) or `"<step>:after"` (after the side
/// effect, before it is journaled as done), the daemon kills itself with SIGKILL there, as a
/// power cut or an OOM kill would. Read once, at the first step.
fn crash_point(step: Step, when: When) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("NETMIGRATE_CRASH_AT").ok());
    if at.as_deref() == Some(&step.crash_at(when)) {
        tracing::error!(
            "NETMIGRATE_CRASH_AT={}: killing myself",
            step.crash_at(when)
        );
        // SAFETY: sending a signal to this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

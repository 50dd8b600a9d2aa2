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
        crash_point(name, "before");
        let r = f.await;
        crash_point(name, "after");
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
        self.try_step(&format!("undo {name}"), f).await;
    }

    /// A step whose failure is recorded but does not stop what follows.
    pub async fn try_step<F>(&self, name: &str, f: F)
    where
        F: Future<Output = Result<(), String>>,
    {
        if let Err(e) = self.step(name, f).await {
            tracing::error!(migration = self.id, "{name}: {e}");
        }
    }
}

/// Fault injection for the crash tests: with `NETMIGRATE_CRASH_AT="<step>:before"` (after the
/// step is journaled as started, before its side effect) or `"<step>:after"` (after the side
/// effect, before it is journaled as done), the daemon kills itself with SIGKILL there, as a
/// power cut or an OOM kill would. Read once, at the first step.
fn crash_point(step: &str, when: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("NETMIGRATE_CRASH_AT").ok());
    if at.as_deref() == Some(&format!("{step}:{when}")) {
        tracing::error!("NETMIGRATE_CRASH_AT={step}:{when}: killing myself");
        // SAFETY: sending a signal to this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

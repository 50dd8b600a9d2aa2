//! The notice bus: every committed change a watcher may care about (events, journal steps,
//! migrations and batches starting and ending, image uploads), broadcast in process after its commit. The API
//! streams it to the CLI's progress bars; nothing is lost by a slow watcher but its own view
//! (it is told how many notices it missed).

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::State;

/// Notices kept for watchers that lag behind.
pub const BUS_DEPTH: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    Event {
        id: i64,
        at_ms: i64,
        level: String,
        event: String,
        subject: Option<String>,
        message: String,
    },
    Step {
        migration: i64,
        seq: i64,
        step: String,
        state: String,
        at_ms: i64,
    },
    Migration {
        id: i64,
        vm: String,
        source: String,
        target: String,
        state: String,
        batch: Option<i64>,
        at_ms: i64,
    },
    Batch {
        id: i64,
        state: String,
        at_ms: i64,
    },
    /// An image's manifest row changed (an upload started, was published or failed).
    Image {
        vm: String,
        generation: u64,
        state: String,
        uploader: Option<String>,
    },
    /// The watcher fell behind and missed this many notices.
    Lagged {
        missed: u64,
    },
}

pub fn bus() -> broadcast::Sender<Notice> {
    broadcast::channel(BUS_DEPTH).0
}

impl State {
    /// Tells watchers, if any. Called after the change is committed.
    pub fn notify(&self, n: Notice) {
        let _ = self.bus.send(n);
    }

    pub fn watch(&self) -> broadcast::Receiver<Notice> {
        self.bus.subscribe()
    }
}

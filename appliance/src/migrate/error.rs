//! What a step of a move can fail with; each kind keeps its source, so the engine decides on
//! kinds (a live move that may go cold, a host that did not answer), not on texts.

use crate::hypervisor::DriverError;
use crate::network::SwitchError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor refused or failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A host's switch refused or failed.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// A command on a host failed, or the host did not answer.
    #[error("{host}: {reason}")]
    Host { host: String, reason: String },
    /// The appliance's own state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The image store: an upload that did not come, stalled, failed, or a store without room.
    #[error("{0}")]
    Store(String),
    /// What the move found does not allow it (a VM already on the target, a checksum that
    /// differs, a host the store cannot reach).
    #[error("{0}")]
    Refused(String),
    /// An after-move hook failed.
    #[error("{0}")]
    Hook(String),
    /// The appliance's own neighbour entry could not be set.
    #[error("{0}")]
    Neighbour(String),
}

impl Error {
    /// Whether the live pre-copy that failed with this left the VM untouched and running at the
    /// source (it did not converge in time, or its stream broke and the hypervisor resumed the
    /// VM): the cold path may still move it.
    pub fn may_go_cold(&self) -> bool {
        matches!(
            self,
            Error::Driver(DriverError::Timeout { .. } | DriverError::LiveFailed { .. })
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

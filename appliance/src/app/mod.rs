//! The application layer: what the appliance does when asked, whoever asks. The API's handlers,
//! the CLI's server side and provisioning call these use cases; they hold the logic (checks,
//! events, the services told of a change) that handlers would otherwise each carry. Nothing
//! here knows HTTP: errors say what kind of failure they are, and the API maps kinds to
//! statuses.

pub mod hosts;
pub mod reservations;
pub mod vms;

pub use crate::daemon::App;

use crate::migrate::Refused;
use crate::state::StateError;

/// Why a use case refused or failed; `code` is a stable word for clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was named does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// It exists, but the request conflicts with how it stands.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request itself is wrong.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request is well formed, but what it describes cannot be (a VM definition that no
    /// driver could start).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// A move or a VM operation refused (it says why).
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    State(#[from] StateError),
    /// The task running the work died.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Error {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f` in a task of its own and waits for it: a client that goes away does not cut the
/// work short (a move, a VM's start) halfway.
pub(crate) async fn detached<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

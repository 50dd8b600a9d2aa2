//! netmigrate: a lab cluster's gateway appliance (router, DHCP, DNS, FTP image store) and the
//! controller that moves its VMs between hypervisor hosts. See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod dns;
pub mod ftp;
pub mod hypervisor;
pub mod inventory;
pub mod migrate;
pub mod network;
pub mod placement;
pub mod planner;
pub mod power;
pub mod provision;
pub mod reservations;
pub mod router;
pub mod script;
pub mod shell;
pub mod state;

/// The appliance's error; the binary turns it into one line and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(config::ConfigErrors),
    #[error(transparent)]
    Lock(#[from] daemon::LockError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Client(#[from] api::client::ClientError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// 2 for bad input the user can fix in a file (like `check-config`), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

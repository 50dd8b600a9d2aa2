//! netmigrate's provisioning: new hypervisor hosts booted over the network (PXE, then iPXE),
//! discovered, enrolled and made ready as migration targets, with no agent left behind.
//!
//! A machine's life: **discovered** (it network-booted with a MAC nobody knows) ->
//! **commissioning** (the installer reports its hardware, then it boots again; discovered
//! with its hardware known) -> **accepted** (by a rule of the config or by the operator: it gets a name and a reserved
//! address) -> **booting** (its iPXE script sent it the installer with a one-time token) ->
//! **ready** (the installer called back with the token and its SSH host key; the appliance
//! pinned the key and collected the host's facts). This crate holds the rules, the scripts and
//! the HTTP side; the appliance keeps the machines in its state (`Enrolment`).

pub mod hardware;
pub mod http;
pub mod ipxe;
pub mod rules;
pub mod token;

pub use hardware::{Hardware, Requirements};
pub use http::{Commissioned, Enrolled, Enrolment, Refused};
pub use rules::{MacPrefix, Rules};

/// Where a machine is in its enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Discovered,
    Commissioning,
    Accepted,
    Booting,
    Ready,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Discovered => "discovered",
            Stage::Commissioning => "commissioning",
            Stage::Accepted => "accepted",
            Stage::Booting => "booting",
            Stage::Ready => "ready",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "discovered" => Stage::Discovered,
            "commissioning" => Stage::Commissioning,
            "accepted" => Stage::Accepted,
            "booting" => Stage::Booting,
            "ready" => Stage::Ready,
            _ => return None,
        })
    }
}

//! netmigrate's provisioning: new hypervisor hosts booted over the network (PXE, then iPXE),
//! discovered, enrolled and made ready as migration targets, with no agent left behind.
//!
//! A machine's life: **discovered** (it network-booted with a MAC nobody knows) ->
//! **commissioning** (the installer reports its hardware, then it boots again; discovered
//! with its hardware known) -> **accepted** (by a rule of the config or by the operator: it
//! gets a name, a reserved address and perhaps a profile). Without a profile: **booting**
//! (its iPXE script sent it the installer with a one-time token) -> **ready** (the installer
//! called back with the token and its SSH host key; the appliance pinned the key). With a
//! profile: **deploying** (the installer writes the profile's host image to its disk, checked
//! against the image's SHA-256) -> **rebooting** (into the deployed system, which calls back
//! at its first boot and is checked) -> **ready**; or **failed**, with the reason. This crate
//! holds the rules, the scripts and the HTTP side; the appliance keeps the machines in its
//! state (`Enrolment`).

pub mod hardware;
pub mod http;
pub mod ipxe;
pub mod rules;
pub mod token;

pub use hardware::{Hardware, Requirements};
pub use http::{Commissioned, Deployment, Enrolled, Enrolment, Refused, Written};
pub use rules::{MacPrefix, Rules};

/// Where a machine is in its enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Discovered,
    Commissioning,
    Accepted,
    Booting,
    Deploying,
    Rebooting,
    Ready,
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Discovered => "discovered",
            Stage::Commissioning => "commissioning",
            Stage::Accepted => "accepted",
            Stage::Booting => "booting",
            Stage::Deploying => "deploying",
            Stage::Rebooting => "rebooting",
            Stage::Ready => "ready",
            Stage::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "discovered" => Stage::Discovered,
            "commissioning" => Stage::Commissioning,
            "accepted" => Stage::Accepted,
            "booting" => Stage::Booting,
            "deploying" => Stage::Deploying,
            "rebooting" => Stage::Rebooting,
            "ready" => Stage::Ready,
            "failed" => Stage::Failed,
            _ => return None,
        })
    }
}

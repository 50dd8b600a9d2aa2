//! The netmigrate test lab: network namespaces on one machine standing in for a cluster.
//!
//! ```text
//!  <p>-app  appliance 10.213.0.1 ──┐
//!  <p>-cl   client    10.213.0.100 ┤ <p>-sw: Linux bridge sw0 (the lab switch)
//!  <p>-hA   host A    10.213.0.11 ─┤── up0 ── OVS br0 (netdev) ── taps ── QEMU guests
//!  <p>-hB   host B    10.213.0.12 ─┘
//! ```
//! Each host runs a real sshd (keys generated per run) and a private Open vSwitch. `<p>` is the
//! run's prefix (`nml` + 5 hex digits), so two runs never collide. Everything started is
//! tracked by PID and torn down when the `Lab` is dropped, also on panic;
//! `netmigrate-lab cleanup` removes what a killed run left.

pub mod appliance;
pub mod appliance_image;
pub mod bench_deploy;
pub mod bench_dhcp;
pub mod bench_disk;
pub mod bench_disk_xen;
pub mod bench_dns;
pub mod cleanup;
pub mod dashboard;
pub mod dhcp_durability;
pub mod guest;
pub mod hand;
pub mod host;
pub mod lab;
pub mod netns;
pub mod ovs;
pub mod paper;
pub mod paper_xen;
pub mod prober;
pub mod pxe;
pub mod sshd;
pub mod sys;
pub mod xen;

pub use appliance::{netmigrate_bin, Appliance};
pub use guest::{Guest, GuestSpec};
pub use host::Host;
pub use lab::{Lab, Node};
pub use prober::{ProbeReport, Prober};

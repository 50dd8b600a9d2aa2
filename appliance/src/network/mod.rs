//! The network after a move: switch ports on the hosts (OVSDB), the appliance's own neighbour
//! entries.

pub mod ovsdb;

pub use ovsdb::{Ovsdb, PortSpec};

/// Replaces the appliance's neighbour entry for `ip` at once (it is the router: its cache must
/// not wait for a timeout to learn a new MAC). Needs CAP_NET_ADMIN, like the router role.
pub async fn replace_neighbour(ip: std::net::Ipv4Addr, mac: &str, dev: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args([
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "reachable",
        ])
        .output()
        .await
        .map_err(|e| format!("ip neigh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip neigh replace {ip} lladdr {mac} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

//! Reservations: the config file's and those made at run time (`netmigrate reservations
//! add|rm`, kept in the state). Both kinds are checked by the same rules; the DHCP server is
//! handed the new list at once, without a restart.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::values::{check_hostname, Mac};
use crate::config::Config;
use crate::state::ReservationRow;

/// One reservation as listed: where it is defined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationView {
    #[serde(flatten)]
    pub row: ReservationRow,
    /// "config" (edit the file to change it) or "runtime".
    pub source: String,
}

/// Every reservation, the config's first.
pub fn list(cfg: &Config, runtime: &[ReservationRow]) -> Vec<ReservationView> {
    let from_config = cfg.reservations.iter().map(|r| ReservationView {
        row: ReservationRow {
            network: r.network.clone(),
            ip: r.ip.to_string(),
            mac: r.mac.map(|m| m.to_string()),
            client_id: r.client_id.clone(),
            hostname: r.hostname.clone(),
        },
        source: "config".into(),
    });
    from_config
        .chain(runtime.iter().map(|r| ReservationView {
            row: r.clone(),
            source: "runtime".into(),
        }))
        .collect()
}

/// `new` written the way the state keeps it, or what is wrong with it: an unknown network, an
/// address the network cannot lease, a malformed identity, or one already reserved.
pub fn check(
    cfg: &Config,
    runtime: &[ReservationRow],
    new: &ReservationRow,
) -> Result<ReservationRow, String> {
    let Some(net) = cfg.networks.iter().find(|n| n.name == new.network) else {
        let known: Vec<_> = cfg.networks.iter().map(|n| n.name.as_str()).collect();
        return Err(format!(
            "no network is named `{}`; known: {}",
            new.network,
            known.join(", ")
        ));
    };
    let ip: Ipv4Addr = new
        .ip
        .parse()
        .map_err(|_| format!("ip: `{}` is not an IPv4 address", new.ip))?;
    net.reservable(ip).map_err(|e| format!("ip: {e}"))?;
    let mac = new
        .mac
        .as_deref()
        .map(|m| m.parse::<Mac>().map(|m| m.to_string()))
        .transpose()
        .map_err(|e| format!("mac: {e}"))?;
    let client_id = new
        .client_id
        .as_deref()
        .map(|c| {
            crate::dhcp::parse_client_id(c)
                .filter(|b| !b.is_empty())
                .map(|b| {
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .ok_or_else(|| {
                    format!("client_id: `{c}` is not hex pairs like 01:52:54:00:00:00:10")
                })
        })
        .transpose()?;
    let hostname = new
        .hostname
        .as_deref()
        .map(|h| check_hostname(h).map(|_| h.to_string()))
        .transpose()
        .map_err(|e| format!("hostname: {e}"))?;
    if mac.is_none() && client_id.is_none() && hostname.is_none() {
        return Err("name the client: give a mac, a client_id or a hostname".into());
    }
    let row = ReservationRow {
        network: net.name.clone(),
        ip: ip.to_string(),
        mac,
        client_id,
        hostname,
    };
    for old in list(cfg, runtime)
        .into_iter()
        .filter(|o| o.row.network == row.network)
    {
        let same = |a: &Option<String>, b: &Option<String>| {
            a.is_some()
                && a.as_deref().map(str::to_ascii_lowercase)
                    == b.as_deref().map(str::to_ascii_lowercase)
        };
        let clash = if old.row.ip == row.ip {
            Some(format!("{} is already reserved", row.ip))
        } else if same(&row.mac, &old.row.mac) {
            Some(format!(
                "mac {} already has a reservation",
                row.mac.as_deref().unwrap_or_default()
            ))
        } else if same(&row.client_id, &old.row.client_id) {
            Some(format!(
                "client_id {} already has a reservation",
                row.client_id.as_deref().unwrap_or_default()
            ))
        } else if same(&row.hostname, &old.row.hostname) {
            Some(format!(
                "hostname {} already has a reservation",
                row.hostname.as_deref().unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(c) = clash {
            return Err(format!(
                "{c} ({} in network {}, from the {}); remove that one first",
                old.row.ip, old.row.network, old.source
            ));
        }
    }
    Ok(row)
}

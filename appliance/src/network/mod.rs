//! The network after a move: switch ports on the hosts (the `Switch` trait, over OVSDB and
//! OpenFlow), the VM's announcement frame, the appliance's own neighbour entries.

#[cfg(test)]
pub mod fake;
pub mod openflow;
pub mod ovsdb;
pub mod switch;

pub use openflow::OpenFlow;
pub use ovsdb::{Ovsdb, PortSpec};
pub use switch::{Announcer, Switch, SwitchError};

/// A gratuitous ARP (or, without an address, a RARP as QEMU's announce-self sends) from `mac`,
/// as the switch should see it come from the VM's port.
pub fn announcement(mac: &str, ip: Option<std::net::Ipv4Addr>) -> Option<Vec<u8>> {
    let m: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if m.len() != 6 {
        return None;
    }
    let mut f = vec![0xff; 6];
    f.extend(&m);
    let (ethertype, op, ip) = match ip {
        Some(ip) => ([0x08, 0x06], [0, 1], ip.octets()),
        None => ([0x80, 0x35], [0, 3], [0; 4]),
    };
    f.extend(ethertype);
    f.extend([0, 1, 0x08, 0x00, 6, 4]);
    f.extend(op);
    f.extend(&m);
    f.extend(ip);
    f.extend(if ethertype == [0x08, 0x06] {
        [0; 6]
    } else {
        [m[0], m[1], m[2], m[3], m[4], m[5]]
    });
    f.extend(ip);
    f.resize(60, 0);
    Some(f)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_is_a_gratuitous_arp_or_a_rarp() {
        let hex = |f: Vec<u8>| f.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let g = hex(announcement("00:16:3e:00:00:01", Some("10.0.0.5".parse().unwrap())).unwrap());
        assert_eq!(g.len(), 120);
        assert!(g.starts_with("ffffffffffff00163e0000010806000108000604000100163e0000010a000005"));
        let r = hex(announcement("00:16:3e:00:00:01", None).unwrap());
        assert_eq!(&r[24..28], "8035");
        assert!(announcement("bad", None).is_none());
    }
}

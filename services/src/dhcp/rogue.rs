//! Other DHCP servers on the appliance's networks (MAAS's "rogue DHCP"): answers that are not
//! the appliance's, seen on the client port of each served interface. Passively (a broadcast
//! OFFER or ACK to any client on the segment) and by a probe: a DISCOVER with the broadcast
//! flag from a made-up client (`PROBE_MAC`, which the appliance's own server never answers),
//! sent at start and then every `probe_every`, so that a server that unicasts to the clients
//! it knows still answers where the watcher hears it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::socket::{CLIENT_PORT, SERVER_PORT};
use super::Stats;

/// The probe's client MAC: locally administered, "nmrog".
pub const PROBE_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0x72, 0x6f, 0x67];
/// The first probe, after the servers came up.
const FIRST_PROBE: Duration = Duration::from_secs(5);

/// An answer from another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub interface: String,
    /// Its server identifier (option 54), else the packet's source.
    pub server: Ipv4Addr,
    /// Where the packet came from (a relay or the server itself).
    pub from: Ipv4Addr,
    /// The address it offered or acknowledged.
    pub offered: Ipv4Addr,
    pub kind: MessageType,
    /// An answer to the appliance's own probe.
    pub to_probe: bool,
}

impl Seen {
    /// What the answer did: "offered" or "acknowledged".
    pub fn verb(&self) -> &'static str {
        if self.kind == MessageType::Ack {
            "acknowledged"
        } else {
            "offered"
        }
    }
}

/// Whether `m`, from `from`, is another server's answer; what it says if so. `ours`: the
/// appliance's own addresses (its servers' identifiers).
pub fn foreign(
    m: &Message,
    from: Ipv4Addr,
    ours: &HashSet<Ipv4Addr>,
) -> Option<(Ipv4Addr, MessageType)> {
    if m.opcode() != Opcode::BootReply {
        return None;
    }
    let kind = m.opts().msg_type()?;
    if !matches!(kind, MessageType::Offer | MessageType::Ack) {
        return None;
    }
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => from,
    };
    (!ours.contains(&server) && !ours.contains(&from)).then_some((server, kind))
}

/// The probe: a DISCOVER from `PROBE_MAC` asking for a broadcast answer.
pub fn probe(xid: u32) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&PROBE_MAC);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    m
}

/// Watches `interface` for other servers' answers until the task is dropped or aborted,
/// probing every `probe_every` (`None`: listening only). Each one seen goes to `seen`;
/// packets that do not decode are counted as malformed.
pub fn watch(
    interface: String,
    ours: HashSet<Ipv4Addr>,
    probe_every: Option<Duration>,
    stats: std::sync::Arc<Stats>,
    seen: mpsc::Sender<Seen>,
) -> Result<JoinHandle<()>, String> {
    let sock = super::socket::bound(&interface, CLIENT_PORT).map_err(|e| {
        format!("watching for other DHCP servers on {interface} (UDP port {CLIENT_PORT}): {e}")
    })?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        let mut xids = std::collections::VecDeque::new();
        let start = tokio::time::Instant::now() + FIRST_PROBE;
        let mut tick = probe_every.map(|every| tokio::time::interval_at(start, every));
        loop {
            let next_probe = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, SocketAddr::V4(from))) = r else { continue };
                    let m = match super::decode(&buf[..n]) {
                        Ok(m) => m,
                        Err(_) => {
                            Stats::add(&stats.malformed);
                            continue;
                        }
                    };
                    let Some((server, kind)) = foreign(&m, *from.ip(), &ours) else { continue };
                    Stats::add(&stats.foreign_answers);
                    let s = Seen {
                        interface: interface.clone(),
                        server,
                        from: *from.ip(),
                        offered: m.yiaddr(),
                        kind,
                        to_probe: m.chaddr().get(..6) == Some(&PROBE_MAC[..]) && xids.contains(&m.xid()),
                    };
                    // Full: the appliance is behind; the next answer says the same.
                    let _ = seen.try_send(s);
                }
                _ = next_probe => {
                    // Told apart from the clients' own only by chaddr and xid: any
                    // fresh number will do.
                    let xid = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
                    xids.push_back(xid);
                    if xids.len() > 8 {
                        xids.pop_front();
                    }
                    if let Ok(bytes) = probe(xid).to_vec() {
                        let to = SocketAddr::from((Ipv4Addr::BROADCAST, SERVER_PORT));
                        if let Err(e) = sock.send_to(&bytes, to).await {
                            tracing::debug!(%interface, "DHCP probe: {e}");
                        }
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(server: Option<Ipv4Addr>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_yiaddr(Ipv4Addr::new(10, 0, 0, 150));
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        if let Some(s) = server {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(s));
        }
        m
    }

    #[test]
    fn answers_not_ours_are_foreign() {
        let ours = HashSet::from([Ipv4Addr::new(10, 0, 0, 1)]);
        let other = Ipv4Addr::new(10, 0, 0, 77);
        assert_eq!(
            foreign(&offer(Some(other)), other, &ours),
            Some((other, MessageType::Offer))
        );
        // Without a server identifier, its source says who.
        assert_eq!(
            foreign(&offer(None), other, &ours),
            Some((other, MessageType::Offer))
        );
        let us = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(foreign(&offer(Some(us)), us, &ours), None);
        // A request (another client's DISCOVER) is no server's answer.
        let mut req = offer(Some(other));
        req.set_opcode(Opcode::BootRequest);
        assert_eq!(foreign(&req, other, &ours), None);
    }

    #[test]
    fn the_probe_is_a_broadcast_discover_from_the_probe_mac() {
        let p = probe(7);
        let back = crate::dhcp::decode(&p.to_vec().unwrap()).unwrap();
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&back.chaddr()[..6], &PROBE_MAC);
        assert!(back.flags().broadcast());
        assert_eq!(back.xid(), 7);
    }
}

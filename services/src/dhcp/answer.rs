//! Deciding the answer to one request (RFC 2131 4.3): pure, given the pool, the leases and the
//! time; the caller commits the lease it returns before sending the reply.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use super::lease::{client_key, Lease, LeaseState, Leases};
use super::{Pool, Reservation, Stats};

/// How long an offer is held for its client.
pub const OFFER_HOLD_MS: i64 = 30_000;
/// How long a declined address stays out of use.
pub const QUARANTINE_MS: i64 = 600_000;

/// A client as a request shows it.
#[derive(Debug)]
pub struct Who<'a> {
    pub key: &'a [u8],
    pub mac: [u8; 6],
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
}

pub fn reservation_matches(r: &Reservation, who: &Who) -> bool {
    r.mac.is_some_and(|m| m == who.mac)
        || r.client_id
            .as_deref()
            .is_some_and(|c| Some(c) == who.client_id)
        || r.hostname
            .as_deref()
            .is_some_and(|h| who.hostname.is_some_and(|w| w.eq_ignore_ascii_case(h)))
}

/// What to do: a reply to send (and where), a lease to record first.
#[derive(Debug)]
pub struct Answer {
    pub reply: Option<Message>,
    /// Must be durable before the reply leaves (ACKs, releases, declines).
    pub commit: Option<Lease>,
    /// Recorded in memory only (offers).
    pub hold: Option<Lease>,
}

impl Answer {
    fn none() -> Answer {
        Answer {
            reply: None,
            commit: None,
            hold: None,
        }
    }
}

/// The answer to `req` at `now_ms`.
pub fn answer(pool: &Pool, leases: &Leases, req: &Message, now_ms: i64, stats: &Stats) -> Answer {
    if req.opcode() != Opcode::BootRequest || req.chaddr().len() < 6 {
        Stats::add(&stats.ignored);
        return Answer::none();
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.chaddr()[..6]);
    let client_id = match req.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.as_slice()),
        _ => None,
    };
    let hostname = match req.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.as_str()),
        _ => None,
    };
    let key = client_key(client_id, &mac);
    let who = Who {
        key: &key,
        mac,
        client_id,
        hostname,
    };
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let reserved = pool
        .reservations
        .iter()
        .find(|r| reservation_matches(r, &who))
        .map(|r| r.ip);
    let lease_for = |ip: Ipv4Addr, state: LeaseState, ms: i64| Lease {
        ip,
        client: key.clone(),
        mac,
        hostname: hostname.map(str::to_string),
        state,
        expires_ms: now_ms + ms,
    };
    let lease_ms = pool.lease_time.as_millis() as i64;

    match req.opts().msg_type() {
        Some(MessageType::Discover) => {
            Stats::add(&stats.discovers);
            // A reservation wins over whatever the client held before.
            let ip = match reserved {
                Some(r) => Some(r),
                None => leases
                    .of_client(&key)
                    .filter(|l| l.state != LeaseState::Declined)
                    .map(|l| l.ip)
                    .filter(|ip| pool.in_range(*ip) && leases.free_for(pool, *ip, &who, now_ms))
                    .or_else(|| {
                        requested.filter(|ip| {
                            pool.in_range(*ip) && leases.free_for(pool, *ip, &who, now_ms)
                        })
                    })
                    .or_else(|| leases.pick(pool, &who, now_ms)),
            };
            let Some(ip) = ip else {
                tracing::warn!(network = %pool.network, "DHCP: no free address for {}", fmt_mac(&mac));
                Stats::add(&stats.ignored);
                return Answer::none();
            };
            Stats::add(&stats.offers);
            Answer {
                reply: Some(reply(pool, req, MessageType::Offer, ip, true)),
                commit: None,
                hold: Some(lease_for(ip, LeaseState::Offered, OFFER_HOLD_MS)),
            }
        }
        Some(MessageType::Request) => {
            Stats::add(&stats.requests);
            let ciaddr = req.ciaddr();
            if let Some(sid) = server_id {
                // SELECTING: the client chose a server; if not us, forget our offer.
                if sid != pool.server {
                    Stats::add(&stats.ignored);
                    return Answer::none();
                }
            }
            let wanted = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr));
            let Some(ip) = wanted else {
                Stats::add(&stats.ignored);
                return Answer::none();
            };
            let ours = leases.of_client(&key).filter(|l| l.ip == ip);
            let ok = pool.in_range(ip) || reserved == Some(ip);
            let ok = ok
                && reserved.is_none_or(|r| r == ip)
                && leases.free_for(pool, ip, &who, now_ms)
                && ours.is_none_or(|l| l.state != LeaseState::Declined);
            if ok && (server_id.is_some() || ours.is_some() || reserved == Some(ip)) {
                Stats::add(&stats.acks);
                return Answer {
                    reply: Some(reply(pool, req, MessageType::Ack, ip, true)),
                    commit: Some(lease_for(ip, LeaseState::Bound, lease_ms)),
                    hold: None,
                };
            }
            // INIT-REBOOT or RENEW for an address that is not (or no longer) the client's:
            // wrong network, someone else's, or reserved for another. Without any record of
            // the client and on the right network, stay silent (RFC 2131 4.3.2).
            let known = leases.of_client(&key).is_some() || reserved.is_some();
            if server_id.is_some() || !pool.contains(ip) || known || !ok {
                Stats::add(&stats.naks);
                return Answer {
                    reply: Some(nak(pool, req)),
                    commit: None,
                    hold: None,
                };
            }
            Stats::add(&stats.ignored);
            Answer::none()
        }
        Some(MessageType::Release) => {
            Stats::add(&stats.releases);
            match leases.of_client(&key).filter(|l| l.ip == req.ciaddr()) {
                Some(l) => Answer {
                    reply: None,
                    commit: Some(Lease {
                        state: LeaseState::Released,
                        expires_ms: now_ms,
                        ..l.clone()
                    }),
                    hold: None,
                },
                None => Answer::none(),
            }
        }
        Some(MessageType::Decline) => {
            Stats::add(&stats.declines);
            match requested.filter(|ip| leases.of_client(&key).is_some_and(|l| l.ip == *ip)) {
                Some(ip) => {
                    tracing::warn!(network = %pool.network, %ip, "DHCP: {} declined the address: it is in use; quarantined", fmt_mac(&mac));
                    Answer {
                        reply: None,
                        commit: Some(Lease {
                            // Nobody's: it comes back after the quarantine.
                            client: Vec::new(),
                            ..lease_for(ip, LeaseState::Declined, QUARANTINE_MS)
                        }),
                        hold: None,
                    }
                }
                None => Answer::none(),
            }
        }
        Some(MessageType::Inform) => {
            Stats::add(&stats.informs);
            let mut r = reply(pool, req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, false);
            r.set_ciaddr(req.ciaddr());
            Answer {
                reply: Some(r),
                commit: None,
                hold: None,
            }
        }
        _ => {
            Stats::add(&stats.ignored);
            Answer::none()
        }
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A reply to `req` of `kind` giving `ip`; `lease` adds the lease times.
fn reply(pool: &Pool, req: &Message, kind: MessageType, ip: Ipv4Addr, lease: bool) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr())
        .set_yiaddr(ip)
        .set_siaddr(pool.server);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(pool.server));
    if lease {
        let secs = pool.lease_time.as_secs().min(u64::from(u32::MAX)) as u32;
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    o.insert(DhcpOption::SubnetMask(pool.netmask()));
    // The rest only when asked for (the parameter request list), in the client's terms.
    let asked: Vec<OptionCode> = match req.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(l)) => l.clone(),
        _ => vec![OptionCode::Router, OptionCode::DomainNameServer],
    };
    for code in asked {
        match code {
            OptionCode::Router => {
                o.insert(DhcpOption::Router(vec![pool.server]));
            }
            OptionCode::DomainNameServer => {
                o.insert(DhcpOption::DomainNameServer(vec![pool.server]));
            }
            OptionCode::BroadcastAddr => {
                o.insert(DhcpOption::BroadcastAddr(pool.broadcast()));
            }
            OptionCode::DomainName => {
                if let Some(d) = &pool.domain {
                    o.insert(DhcpOption::DomainName(d.clone()));
                }
            }
            _ => {}
        }
    }
    if let Some(DhcpOption::Hostname(h)) = req.opts().get(OptionCode::Hostname) {
        if kind == MessageType::Ack {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
    }
    m
}

fn nak(pool: &Pool, req: &Message) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        // A NAK is broadcast to a client with no address (RFC 2131 4.3.2).
        .set_flags(Flags::default().set_broadcast())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Nak));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(pool.server));
    m
}

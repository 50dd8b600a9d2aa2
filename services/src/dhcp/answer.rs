//! Deciding the answer to one request (RFC 2131 4.3): pure, given the pool, the leases and the
//! time; the caller commits the lease it returns before sending the reply.

use std::net::Ipv4Addr;

use dhcproto::v4::{fqdn, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Encodable, Encoder};

use super::lease::{client_key, Lease, LeaseState, Leases};
use super::{Boot, Pool, Reservation, Stats};

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
    // The appliance's own probe for other servers is no client.
    if mac == super::rogue::PROBE_MAC {
        Stats::add(&stats.ignored);
        return Answer::none();
    }
    let client_id = match req.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.as_slice()),
        _ => None,
    };
    let fqdn_label = client_fqdn(req).and_then(|f| f.domain().iter().next().map(|l| l.to_vec()));
    let hostname = match req.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.as_str()),
        // A client that sends only its FQDN (81) is known by its first label.
        _ => fqdn_label
            .as_deref()
            .and_then(|l| std::str::from_utf8(l).ok()),
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
    // A reserved address still held by another client's lease is not given twice: the client
    // gets a dynamic one until the holder renews (and is refused) or lets it go.
    let reserved = pool
        .reservations
        .iter()
        .find(|r| reservation_matches(r, &who))
        .map(|r| r.ip)
        .filter(|ip| {
            let free = leases.free_for(pool, *ip, &who, now_ms);
            if !free {
                tracing::warn!(network = %pool.network, %ip, "DHCP: {} has a reservation for {ip}, still held by another client; a dynamic address until it is free", fmt_mac(&mac));
            }
            free
        });
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
                o.insert(DhcpOption::Router(vec![pool.router]));
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
    if let Some(f) = client_fqdn(req) {
        o.insert(DhcpOption::ClientFQDN(fqdn_answer(pool, f)));
    }
    if let Some(boot) = &pool.boot {
        pxe(&mut m, pool.server, boot, req);
    }
    echo_relay_info(&mut m, req);
    m
}

fn client_fqdn(req: &Message) -> Option<&fqdn::ClientFQDN> {
    match req.opts().get(OptionCode::ClientFQDN) {
        Some(DhcpOption::ClientFQDN(f)) => Some(f),
        _ => None,
    }
}

/// The answer to a client's FQDN (RFC 4702): the name completed with the network's domain,
/// and the server's part in updating DNS: where the appliance's DNS names this network's
/// clients it says so (S=1, and O=1 if the client had asked to update its own A record);
/// elsewhere S=0, N=0: the client may update its own records.
fn fqdn_answer(pool: &Pool, asked: &fqdn::ClientFQDN) -> fqdn::ClientFQDN {
    let mut name = asked.domain().clone();
    if !name.is_fqdn() {
        if let Some(d) = pool
            .domain
            .as_deref()
            .and_then(|d| dhcproto::Name::from_ascii(d).ok())
        {
            if let Ok(full) = name.clone().append_domain(&d) {
                name = full;
            }
        }
        name.set_fqdn(true);
    }
    let flags = fqdn::FqdnFlags::new(0)
        .set_e(asked.flags().e())
        .set_s(pool.dns_updates)
        .set_o(pool.dns_updates && !asked.flags().s());
    let mut f = fqdn::ClientFQDN::new(flags, name);
    // RFC 4702 section 3.3: a server sets both RCODEs to 255.
    f.set_r1(255).set_r2(255);
    f
}

/// How a client network-boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// PXE firmware (vendor class `PXEClient`): a file by TFTP.
    Pxe,
    /// UEFI HTTP boot (vendor class `HTTPClient`): a URL.
    Http,
    /// Neither says so (iPXE, or an architecture alone).
    Other,
}

/// Whether a client is network-booting, and how: (its firmware, already iPXE, architecture).
fn boot_client(req: &Message) -> Option<(Firmware, bool, Option<u16>)> {
    let class = match req.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
        _ => &[],
    };
    let firmware = if class.starts_with(b"PXEClient") {
        Firmware::Pxe
    } else if class.starts_with(b"HTTPClient") {
        Firmware::Http
    } else {
        Firmware::Other
    };
    let ipxe = matches!(req.opts().get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(u)) if u.windows(4).any(|w| w == b"iPXE"));
    let arch = match req.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    (firmware != Firmware::Other || ipxe || arch.is_some()).then_some((firmware, ipxe, arch))
}

/// The client as discovery records it, if it network-boots.
pub fn booting(req: &Message) -> Option<super::BootClient> {
    let (_, ipxe, arch) = boot_client(req)?;
    let mac = <[u8; 6]>::try_from(req.chaddr().get(..6)?).ok()?;
    let vendor_class = match req.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => Some(String::from_utf8_lossy(c).into_owned()),
        _ => None,
    };
    Some(super::BootClient {
        mac,
        vendor_class,
        arch,
        ipxe,
    })
}

/// The boot file for a booting client: iPXE chains to the script; firmware gets the file
/// for its architecture (RFC 4578 and IANA's registry: 0 BIOS, 7 and 9 x86-64 UEFI, 11 ARM64
/// UEFI, 16 x86-64 UEFI HTTP boot), UEFI HTTP boot a URL.
pub fn boot_file(boot: &Boot, ipxe: bool, arch: Option<u16>) -> Option<&str> {
    if ipxe {
        if let Some(s) = &boot.ipxe_script {
            return Some(s);
        }
    }
    match arch.unwrap_or(0) {
        0 => boot.bios.as_deref(),
        7 | 9 => boot.uefi.as_deref(),
        11 => boot.uefi_arm64.as_deref(),
        16 => boot.uefi_http.as_deref(),
        _ => None,
    }
}

/// Next server, file (header and options 66/67) for a booting client; nothing for others.
/// UEFI HTTP boot gets its URL and its vendor class echoed, as the UEFI spec asks.
fn pxe(m: &mut Message, server: Ipv4Addr, boot: &Boot, req: &Message) {
    let Some((firmware, ipxe, arch)) = boot_client(req) else {
        return;
    };
    if firmware == Firmware::Http && !ipxe {
        let Some(url) = boot.uefi_http.as_deref() else {
            return;
        };
        if url.len() < 128 {
            m.set_fname_str(url);
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::BootfileName(url.as_bytes().to_vec()));
        o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        return;
    }
    let Some(file) = boot_file(boot, ipxe, arch) else {
        return;
    };
    let next = boot.next_server.unwrap_or(server);
    m.set_siaddr(next);
    if file.len() < 128 {
        m.set_fname_str(file);
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::TFTPServerName(next.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    if firmware == Firmware::Pxe {
        // PXE firmware ignores an offer that does not say it is for PXE clients.
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
}

/// RFC 3046: a relay's agent information comes back to it unchanged.
fn echo_relay_info(m: &mut Message, req: &Message) {
    if req.giaddr().is_unspecified() {
        return;
    }
    if let Some(o @ DhcpOption::RelayAgentInformation(_)) =
        req.opts().get(OptionCode::RelayAgentInformation)
    {
        m.opts_mut().insert(o.clone());
    }
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
    echo_relay_info(&mut m, req);
    m
}

/// Options a reply cannot do without; the others may be left out to fit the client's size.
const ESSENTIAL: [OptionCode; 7] = [
    OptionCode::MessageType,
    OptionCode::ServerIdentifier,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::SubnetMask,
    OptionCode::RelayAgentInformation,
];

/// Encodes `reply` within the largest message `req`'s client accepts (option 57, at least
/// 576 bytes of IP datagram; RFC 2131 2): optional options are left out, highest code first,
/// until it fits. Short replies are padded to the BOOTP minimum some clients expect.
pub fn encode(reply: &mut Message, req: &Message) -> Result<Vec<u8>, String> {
    let datagram = match req.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => (*n).max(576),
        _ => 576,
    };
    // Less the IP and UDP headers.
    let max = usize::from(datagram) - 28;
    loop {
        let mut out = Vec::with_capacity(576);
        reply
            .encode(&mut Encoder::new(&mut out))
            .map_err(|e| e.to_string())?;
        if out.len() <= max {
            if out.len() < 300 {
                out.resize(300, 0);
            }
            return Ok(out);
        }
        let victim = reply
            .opts()
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !ESSENTIAL.contains(c))
            .max_by_key(|c| u8::from(*c));
        match victim {
            Some(c) => {
                reply.opts_mut().remove(c);
            }
            None => return Ok(out),
        }
    }
}

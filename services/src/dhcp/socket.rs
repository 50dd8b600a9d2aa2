//! The server's I/O: one UDP socket per pool, on port 67, bound to the pool's interface
//! (SO_BINDTODEVICE), so a request arriving on another interface never reaches it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::{answer, LeaseEvent, LeaseState, LeaseStore, Leases, Pool, Stats};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Requests answered together at most, their leases committed in one transaction.
const BATCH: usize = 64;
/// How often leases that ran out are looked for.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn socket(interface: &str) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT)).into())?;
    UdpSocket::from_std(s.into())
}

/// Where a reply goes (RFC 2131 4.1): to the relay, to the client's address, or broadcast on
/// the interface (a client without an address; no ARP entry is forged for unicast).
fn destination(req: &Message, reply: &Message) -> SocketAddr {
    let to = |ip: Ipv4Addr, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    if !req.giaddr().is_unspecified() {
        return to(req.giaddr(), SERVER_PORT);
    }
    if reply.opts().msg_type() == Some(MessageType::Nak) || req.ciaddr().is_unspecified() {
        return to(Ipv4Addr::BROADCAST, CLIENT_PORT);
    }
    to(req.ciaddr(), CLIENT_PORT)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Loads `pool`'s leases and starts answering on its interface.
pub async fn serve(
    pool: Pool,
    store: Arc<dyn LeaseStore>,
    stats: Arc<Stats>,
) -> Result<JoinHandle<()>, String> {
    let sock = socket(&pool.interface).map_err(|e| {
        format!(
            "DHCP on {} (network {}): cannot listen on port {SERVER_PORT}: {e}",
            pool.interface, pool.network
        )
    })?;
    let mut leases = Leases::new(store.load(&pool.network).await?);
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut reclaim = tokio::time::interval(RECLAIM_EVERY);
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Wait for one request, then take what else has arrived (up to BATCH): their
            // leases are committed together, in one transaction, before any reply leaves.
            let mut batch: Vec<(Message, Message)> = Vec::new();
            let mut commits = Vec::new();
            let mut first = true;
            while batch.len() < BATCH {
                let got = if first {
                    tokio::select! {
                        r = sock.recv_from(&mut buf) => r,
                        _ = reclaim.tick() => {
                            // Leases that ran out are recorded as ended, with a `del` event.
                            let ended = leases.expired(now_ms());
                            if !ended.is_empty() {
                                match store.commit_all(&pool.network, &ended).await {
                                    Ok(()) => {
                                        for l in &ended {
                                            leases.put(l.clone());
                                        }
                                        store.changed(
                                            &pool.network,
                                            ended.into_iter().map(|l| (LeaseEvent::Del, l)).collect(),
                                        );
                                    }
                                    Err(e) => tracing::warn!(network = %pool.network, "DHCP: recording expired leases: {e}"),
                                }
                            }
                            continue;
                        }
                    }
                } else {
                    match sock.try_recv_from(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        r => r,
                    }
                };
                first = false;
                let (n, from) = match got {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(interface = %pool.interface, "DHCP receive: {e}");
                        break;
                    }
                };
                Stats::add(&stats.received);
                let req = match super::decode(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => {
                        Stats::add(&stats.malformed);
                        tracing::debug!(%from, "DHCP: malformed packet dropped: {e}");
                        continue;
                    }
                };
                let now = now_ms();
                let a = answer(&pool, &leases, &req, now, &stats);
                if let Some(h) = a.hold {
                    leases.put(h);
                }
                if let Some(c) = a.commit {
                    let event = match c.state {
                        LeaseState::Bound => {
                            let held = leases.at(c.ip).is_some_and(|p| {
                                p.state == LeaseState::Bound && p.client == c.client && p.holds(now)
                            });
                            if held {
                                LeaseEvent::Old
                            } else {
                                LeaseEvent::Add
                            }
                        }
                        _ => LeaseEvent::Del,
                    };
                    commits.push((event, c.clone()));
                    leases.put(c);
                }
                if let Some(r) = a.reply {
                    batch.push((req, r));
                }
            }
            if !commits.is_empty() {
                // The clients hear of their leases only once they are durable.
                let rows: Vec<_> = commits.iter().map(|(_, l)| l.clone()).collect();
                if let Err(e) = store.commit_all(&pool.network, &rows).await {
                    for _ in &commits {
                        Stats::add(&stats.commit_failures);
                    }
                    tracing::error!(network = %pool.network, "DHCP: {} lease(s) not recorded, no answers sent: {e}", commits.len());
                    // What memory believes may now differ from the store: read it back.
                    match store.load(&pool.network).await {
                        Ok(l) => leases = Leases::new(l),
                        Err(e) => tracing::error!("DHCP: reloading leases: {e}"),
                    }
                    continue;
                }
                store.changed(&pool.network, commits);
            }
            for (req, reply) in batch {
                let mut out = Vec::with_capacity(576);
                if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
                    tracing::error!("DHCP: encoding a reply: {e}");
                    continue;
                }
                // Short replies are padded to the BOOTP minimum some clients expect.
                if out.len() < 300 {
                    out.resize(300, 0);
                }
                let dest = destination(&req, &reply);
                if let Err(e) = sock.send_to(&out, dest).await {
                    tracing::warn!(%dest, "DHCP send: {e}");
                }
            }
        }
    }))
}

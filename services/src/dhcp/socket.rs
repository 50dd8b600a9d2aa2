//! The server's I/O: one UDP socket per interface, on port 67, bound to it (SO_BINDTODEVICE),
//! so a request arriving on another interface never reaches it. The pools answered there are
//! the interface's own network (direct requests) and the networks relayed to it (by giaddr).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{Message, MessageType};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::probe::Prober;
use super::{answer, Lease, LeaseEvent, LeaseState, LeaseStore, Leases, Pool, Stats};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Requests answered together at most, their leases committed in one transaction.
const BATCH: usize = 64;
/// How often leases that ran out are looked for.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn socket(interface: &str) -> std::io::Result<UdpSocket> {
    bound(interface, SERVER_PORT)
}

/// A broadcast-capable UDP socket on `port` of `interface` only (SO_BINDTODEVICE).
pub(super) fn bound(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// Where a reply goes (RFC 2131 4.1): to the relay, to the client's address, or broadcast on
/// the interface (a client without an address; no ARP entry is forged for unicast). A NAK is
/// broadcast, except to a client renewing from behind a router (`on_link` false): a broadcast
/// would never reach it.
fn destination(req: &Message, reply: &Message, on_link: bool) -> SocketAddr {
    let to = |ip: Ipv4Addr, port| SocketAddr::V4(SocketAddrV4::new(ip, port));
    if !req.giaddr().is_unspecified() {
        return to(req.giaddr(), SERVER_PORT);
    }
    let nak = reply.opts().msg_type() == Some(MessageType::Nak);
    if req.ciaddr().is_unspecified() || (nak && on_link) {
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

/// How the server runs beyond its pools.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Ping an address the server has no record of before offering it, waiting this long
    /// for an answer; `None` offers at once.
    pub conflict_wait: Option<Duration>,
}

/// What the appliance asks of a running server, beside its pools.
#[derive(Debug)]
pub enum Command {
    /// The client with MAC `old` now has MAC `new` (a VM given a new NIC): its bound leases
    /// go to it, committed; the reply lists them (network, address).
    Rebind {
        old: [u8; 6],
        new: [u8; 6],
        reply: oneshot::Sender<Vec<(String, Ipv4Addr)>>,
    },
}

/// One pool and its leases.
struct Net {
    pool: Pool,
    leases: Leases,
}

/// A probe's outcome, back in the serving loop.
struct Probed {
    network: String,
    ip: Ipv4Addr,
    in_use: bool,
    req: Message,
    reply: Message,
}

/// The serving loop's state: one interface, the pools answered there.
struct Server {
    interface: String,
    sock: UdpSocket,
    nets: Vec<Net>,
    store: Arc<dyn LeaseStore>,
    stats: Arc<Stats>,
    prober: Option<(Arc<Prober>, Duration)>,
    /// Addresses found free by a probe; offers of them need no new one.
    checked: HashSet<Ipv4Addr>,
    /// Addresses being probed, with their offer waiting.
    probing: HashSet<Ipv4Addr>,
    probed: mpsc::UnboundedSender<Probed>,
}

/// Starts answering on `interface` for `pools` (the attached network's and those relayed to
/// it), loading their leases first. A new list on `pools` is taken up between requests: the
/// leases of networks it keeps stay, those of new networks are loaded.
pub async fn serve(
    interface: String,
    mut pools: watch::Receiver<Vec<Pool>>,
    mut commands: mpsc::Receiver<Command>,
    store: Arc<dyn LeaseStore>,
    stats: Arc<Stats>,
    settings: Settings,
) -> Result<JoinHandle<()>, String> {
    let sock = socket(&interface).map_err(|e| {
        let names: Vec<_> = pools.borrow().iter().map(|p| p.network.clone()).collect();
        format!(
            "DHCP on {interface} (network {}): cannot listen on port {SERVER_PORT}: {e}",
            names.join(", ")
        )
    })?;
    let prober = match settings.conflict_wait {
        Some(wait) => match Prober::new() {
            Ok(p) => Some((Arc::new(p), wait)),
            Err(e) => {
                tracing::warn!(
                    "DHCP on {interface}: no conflict check (cannot open an ICMP socket: {e})"
                );
                None
            }
        },
        None => None,
    };
    let (probed, mut probed_rx) = mpsc::unbounded_channel();
    let mut server = Server {
        interface,
        sock,
        nets: Vec::new(),
        store,
        stats,
        prober,
        checked: HashSet::new(),
        probing: HashSet::new(),
        probed,
    };
    let first = pools.borrow_and_update().clone();
    server.update(first).await?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut reclaim = tokio::time::interval(RECLAIM_EVERY);
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let got = tokio::select! {
                r = server.sock.recv_from(&mut buf) => r,
                _ = reclaim.tick() => {
                    server.reclaim().await;
                    continue;
                }
                Ok(()) = pools.changed() => {
                    let new = pools.borrow_and_update().clone();
                    if let Err(e) = server.update(new).await {
                        tracing::error!("DHCP on {}: {e}", server.interface);
                    }
                    continue;
                }
                Some(p) = probed_rx.recv() => {
                    server.probed(p).await;
                    continue;
                }
                Some(c) = commands.recv() => {
                    match c {
                        Command::Rebind { old, new, reply } => {
                            let moved = server.rebind(old, new).await;
                            let _ = reply.send(moved);
                        }
                    }
                    continue;
                }
            };
            server.batch(got, &mut buf).await;
        }
    }))
}

impl Server {
    /// Takes up a new list of pools, keeping the leases of the networks it still has.
    async fn update(&mut self, pools: Vec<Pool>) -> Result<(), String> {
        let mut old: HashMap<String, Leases> = self
            .nets
            .drain(..)
            .map(|n| (n.pool.network, n.leases))
            .collect();
        for pool in pools {
            let leases = match old.remove(&pool.network) {
                Some(l) => l,
                None => Leases::new(self.store.load(&pool.network).await?),
            };
            self.nets.push(Net { pool, leases });
        }
        Ok(())
    }

    /// Moves the bound leases of MAC `old` to MAC `new` (and the client identity derived from
    /// the MAC with them; a client identifier of its own stays), each committed.
    async fn rebind(&mut self, old: [u8; 6], new: [u8; 6]) -> Vec<(String, Ipv4Addr)> {
        let now = now_ms();
        let mut moved = Vec::new();
        for net in &mut self.nets {
            let held: Vec<Lease> = net
                .leases
                .all()
                .filter(|l| l.mac == old && l.state == LeaseState::Bound && l.holds(now))
                .cloned()
                .collect();
            for l in held {
                let client = if l.client == super::client_key(None, &old) {
                    super::client_key(None, &new)
                } else {
                    l.client.clone()
                };
                let rebound = Lease {
                    client,
                    mac: new,
                    ..l
                };
                let network = net.pool.network.clone();
                match self.store.commit(&network, &rebound).await {
                    Ok(()) => {
                        net.leases.put(rebound.clone());
                        moved.push((network.clone(), rebound.ip));
                        self.store
                            .changed(&network, vec![(LeaseEvent::Old, rebound)]);
                    }
                    Err(e) => {
                        tracing::error!(%network, "DHCP: moving a lease to a new MAC: {e}")
                    }
                }
            }
        }
        moved
    }

    /// Leases that ran out are recorded as ended, with a `del` event.
    async fn reclaim(&mut self) {
        for net in &mut self.nets {
            let ended = net.leases.expired(now_ms());
            if ended.is_empty() {
                continue;
            }
            let network = &net.pool.network;
            match self.store.commit_all(network, &ended).await {
                Ok(()) => {
                    for l in &ended {
                        net.leases.put(l.clone());
                    }
                    self.store.changed(
                        network,
                        ended.into_iter().map(|l| (LeaseEvent::Del, l)).collect(),
                    );
                }
                Err(e) => {
                    tracing::warn!(%network, "DHCP: recording expired leases: {e}")
                }
            }
        }
    }

    /// Answers `first` and whatever else has arrived with it (up to BATCH): their leases are
    /// committed together, per network in one transaction, before any reply leaves.
    async fn batch(&mut self, first: std::io::Result<(usize, SocketAddr)>, buf: &mut [u8]) {
        // Each reply with the index of its network: a failed commit holds back that network's.
        let mut replies: Vec<(usize, Message, Message)> = Vec::new();
        let mut commits: Vec<Vec<(LeaseEvent, Lease)>> = vec![Vec::new(); self.nets.len()];
        let mut got = Some(first);
        let mut seen = 0;
        while seen < BATCH {
            let r = match got.take() {
                Some(r) => r,
                None => match self.sock.try_recv_from(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    r => r,
                },
            };
            seen += 1;
            let (n, from) = match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(interface = %self.interface, "DHCP receive: {e}");
                    break;
                }
            };
            Stats::add(&self.stats.received);
            let req = match super::decode(&buf[..n]) {
                Ok(m) => m,
                Err(e) => {
                    Stats::add(&self.stats.malformed);
                    tracing::debug!(%from, "DHCP: malformed packet dropped: {e}");
                    continue;
                }
            };
            if let Some((i, reply, commit)) = self.handle(&req) {
                if let Some(c) = commit {
                    commits[i].push(c);
                }
                if let Some(r) = reply {
                    replies.push((i, req, r));
                }
            }
        }
        let mut failed = Vec::new();
        for (i, commits) in commits.into_iter().enumerate() {
            if commits.is_empty() {
                continue;
            }
            let network = self.nets[i].pool.network.clone();
            let rows: Vec<_> = commits.iter().map(|(_, l)| l.clone()).collect();
            match self.store.commit_all(&network, &rows).await {
                Ok(()) => self.store.changed(&network, commits),
                Err(e) => {
                    for _ in &commits {
                        Stats::add(&self.stats.commit_failures);
                    }
                    tracing::error!(%network, "DHCP: {} lease(s) not recorded, no answers sent: {e}", commits.len());
                    failed.push(i);
                }
            }
        }
        for i in failed {
            // What memory believes may now differ from the store: read it back, and answer
            // nobody of that network (the clients will ask again).
            let network = self.nets[i].pool.network.clone();
            match self.store.load(&network).await {
                Ok(l) => self.nets[i].leases = Leases::new(l),
                Err(e) => tracing::error!("DHCP: reloading leases: {e}"),
            }
            replies.retain(|(net, _, _)| *net != i);
        }
        for (_, req, mut reply) in replies {
            self.send(&req, &mut reply).await;
        }
    }

    /// The answer to one request: its network, the reply to send now, the lease change to
    /// commit first. An offer of an address nobody is known to hold waits for a probe.
    #[allow(clippy::type_complexity)]
    fn handle(
        &mut self,
        req: &Message,
    ) -> Option<(usize, Option<Message>, Option<(LeaseEvent, Lease)>)> {
        let Some(i) = self.pool_of(req) else {
            let giaddr = req.giaddr();
            if giaddr.is_unspecified() {
                Stats::add(&self.stats.ignored);
            } else {
                Stats::add(&self.stats.unknown_relay);
                tracing::debug!(%giaddr, "DHCP: relayed request from a relay in none of the networks on {}", self.interface);
            }
            return None;
        };
        if matches!(
            req.opts().msg_type(),
            Some(MessageType::Discover | MessageType::Request)
        ) {
            if let Some(b) = super::answer::booting(req) {
                self.store.booting(&self.nets[i].pool.network, b);
            }
        }
        let now = now_ms();
        let net = &mut self.nets[i];
        let a = answer(&net.pool, &net.leases, req, now, &self.stats);
        let mut reply = a.reply;
        if let Some(h) = a.hold {
            let ip = h.ip;
            let known = net.leases.at(ip).is_some() || self.checked.contains(&ip);
            let reserved = net.pool.reservations.iter().any(|r| r.ip == ip);
            net.leases.put(h);
            if self.probing.contains(&ip) {
                // A retransmission: the probe under way answers it.
                return Some((i, None, None));
            }
            if let (Some((prober, wait)), false, false) = (&self.prober, known, reserved) {
                let (prober, wait, tx) = (prober.clone(), *wait, self.probed.clone());
                let (req, reply, network) = (req.clone(), reply.take()?, net.pool.network.clone());
                self.probing.insert(ip);
                tokio::spawn(async move {
                    let in_use = prober.in_use(ip, wait).await;
                    let _ = tx.send(Probed {
                        network,
                        ip,
                        in_use,
                        req,
                        reply,
                    });
                });
                return Some((i, None, None));
            }
        }
        let commit = a.commit.map(|c| {
            let event = match c.state {
                LeaseState::Bound => {
                    let held = net.leases.at(c.ip).is_some_and(|p| {
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
            net.leases.put(c.clone());
            (event, c)
        });
        Some((i, reply, commit))
    }

    /// The pool a request belongs to (RFC 2131 4.3.1): the relay's network if relayed, else the
    /// network of the address a renewing client holds (it may sit behind a router), else the
    /// interface's own.
    fn pool_of(&self, req: &Message) -> Option<usize> {
        let (giaddr, ciaddr) = (req.giaddr(), req.ciaddr());
        if giaddr.is_unspecified() && !ciaddr.is_unspecified() {
            if let Some(i) = self.nets.iter().position(|n| n.pool.contains(ciaddr)) {
                return Some(i);
            }
        }
        self.nets.iter().position(|n| n.pool.serves(giaddr))
    }

    /// A probe's outcome: the waiting offer leaves, or the address is quarantined as in use
    /// and the request answered again (with another address).
    async fn probed(&mut self, p: Probed) {
        self.probing.remove(&p.ip);
        let Some(i) = self.nets.iter().position(|n| n.pool.network == p.network) else {
            return;
        };
        if !p.in_use {
            self.checked.insert(p.ip);
            let mut reply = p.reply;
            self.send(&p.req, &mut reply).await;
            return;
        }
        Stats::add(&self.stats.conflicts);
        tracing::warn!(network = %p.network, ip = %p.ip, "DHCP: {} answers a ping but has no lease: in use by a host the server does not know; quarantined", p.ip);
        let net = &mut self.nets[i];
        let taken = Lease {
            ip: p.ip,
            client: Vec::new(),
            mac: [0; 6],
            hostname: None,
            state: LeaseState::Declined,
            expires_ms: now_ms() + super::answer::QUARANTINE_MS,
        };
        if let Err(e) = self.store.commit(&p.network, &taken).await {
            tracing::error!(network = %p.network, "DHCP: recording a conflict: {e}");
        }
        net.leases.put(taken);
        if let Some((_, Some(mut reply), _)) = self.handle(&p.req) {
            self.send(&p.req, &mut reply).await;
        }
    }

    async fn send(&self, req: &Message, reply: &mut Message) {
        let out = match super::answer::encode(reply, req) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("DHCP: encoding a reply: {e}");
                return;
            }
        };
        let on_link = self
            .nets
            .iter()
            .any(|n| !n.pool.relayed && n.pool.contains(req.ciaddr()));
        let dest = destination(req, reply, on_link);
        if let Err(e) = self.sock.send_to(&out, dest).await {
            tracing::warn!(%dest, "DHCP send: {e}");
        }
    }
}

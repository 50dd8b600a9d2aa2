//! The DNS server (hickory-server): authoritative for the lab's zones, a forwarder for the rest.
//!
//! The zones live in memory (`view::View`): every record belongs to an owner (a lease, a
//! reservation, a host, a VM, the appliance, the static records added by RFC 2136 updates), and
//! the appliance replaces an owner's records whenever what it describes changes. Each change
//! patches the affected RRsets of hickory's in-memory zones, bumps the zone's SOA serial, drops
//! the packet cache and notifies the secondaries: no database query per packet.
//!
//! Queries go through hickory's `Catalog` (answers, negative answers with the SOA, AXFR, update
//! dispatch, EDNS) behind `Handler`, which adds what the appliance needs: recursion only for the
//! lab's clients, zone transfers only to the configured secondaries. UDP has a fast path in
//! front (`udp`): a per-socket packet cache of authoritative answers, as PowerDNS keeps one.

mod handler;
mod notify;
mod udp;
mod update;
mod view;
mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_server::proto::rr::rdata::{A, PTR};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::zone_handler::ZoneHandler;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

pub use hickory_server::proto::rr::Record as DnsRecord;
pub use view::{Claim, Conflict};

use handler::Handler;
use view::View;
use zone::LabZone;

/// One zone the appliance is authoritative for.
#[derive(Debug, Clone)]
pub struct ZoneSpec {
    /// `lab.internal` or `0.0.10.in-addr.arpa`.
    pub origin: String,
    /// The primary name server (SOA MNAME and the apex NS).
    pub ns: String,
    /// The SOA RNAME, as a name (`hostmaster.lab.internal`).
    pub hostmaster: String,
}

/// A TSIG key that may sign updates.
#[derive(Debug, Clone)]
pub struct TsigKey {
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    pub secret: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub zones: Vec<ZoneSpec>,
    /// The appliance's addresses on its networks (port 53 unless set otherwise).
    pub listen: Vec<SocketAddr>,
    /// The TTL of the records that follow leases, hosts and VMs (low: they move).
    pub ttl: u32,
    pub forwarders: Vec<SocketAddr>,
    /// Networks whose clients may use the forwarders (the lab's); others get REFUSED.
    pub recursion_from: Vec<(Ipv4Addr, u8)>,
    /// Secondaries: notified of each change, the only ones allowed a zone transfer.
    pub secondaries: Vec<SocketAddr>,
    pub tsig_keys: Vec<TsigKey>,
    /// UDP sockets per address (SO_REUSEPORT), one per core by default.
    pub workers: usize,
}

/// Where the static records (those added by RFC 2136 updates) are kept, and what the server has
/// to say. The appliance implements it over its state.
#[async_trait::async_trait]
pub trait ZoneStore: Send + Sync + 'static {
    /// The static records after an update (each in wire form and as text); returns once
    /// durable. The update is answered only then.
    async fn save_static(&self, records: Vec<(Vec<u8>, String)>) -> Result<(), String>;
    /// Something an operator should see: a refused update or transfer, a name conflict.
    fn said(&self, kind: &'static str, message: String);
}

/// What the server saw, for `status` and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub cache_hits: AtomicU64,
    pub malformed: AtomicU64,
    /// Questions for outside names from clients not allowed to recurse.
    pub refused_recursion: AtomicU64,
    pub forwarded: AtomicU64,
    pub updates: AtomicU64,
    pub updates_refused: AtomicU64,
    pub transfers: AtomicU64,
    pub transfers_refused: AtomicU64,
    pub notifies_sent: AtomicU64,
    pub notifies_unanswered: AtomicU64,
}

impl Stats {
    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("queries", g(&self.queries)),
            ("cache_hits", g(&self.cache_hits)),
            ("malformed", g(&self.malformed)),
            ("refused_recursion", g(&self.refused_recursion)),
            ("forwarded", g(&self.forwarded)),
            ("updates", g(&self.updates)),
            ("updates_refused", g(&self.updates_refused)),
            ("transfers", g(&self.transfers)),
            ("transfers_refused", g(&self.transfers_refused)),
            ("notifies_sent", g(&self.notifies_sent)),
            ("notifies_unanswered", g(&self.notifies_unanswered)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS: {0}")]
    Setting(String),
    #[error("DNS cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One record as `netmigrate dns` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
    /// Where it came from: `zone`, `lease lab 10.0.0.100`, `host hostA`, `update`...
    pub owner: String,
}

/// A zone and its current serial, for `netmigrate dns`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ZoneState {
    pub zone: String,
    pub serial: u32,
    pub records: usize,
}

/// Shared by the handler, the zones and the appliance's handle.
pub(crate) struct Inner {
    view: Mutex<View>,
    zones: Vec<Arc<LabZone>>,
    settings: Settings,
    stats: Stats,
    /// Bumped on every change; the packet caches drop what they hold when it moves.
    generation: AtomicU64,
    store: Arc<dyn ZoneStore>,
    notify: mpsc::UnboundedSender<LowerName>,
}

impl Inner {
    /// The zone `name` is in (the longest origin that contains it).
    fn zone_of(&self, name: &LowerName) -> Option<&Arc<LabZone>> {
        self.zones
            .iter()
            .filter(|z| z.origin().zone_of(name))
            .max_by_key(|z| z.origin().num_labels())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The appliance's handle on the running DNS server.
pub struct Dns {
    inner: Arc<Inner>,
    notify_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<LowerName>>>,
}

impl Dns {
    /// The zones of `settings`, empty but for their SOA and NS; `set` fills them and `listen`
    /// opens the sockets.
    pub fn new(settings: Settings, store: Arc<dyn ZoneStore>) -> Result<Arc<Dns>, DnsError> {
        let serial = initial_serial();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut specs = Vec::new();
        for z in &settings.zones {
            let origin = fqdn(&z.origin).map_err(DnsError::Setting)?;
            let ns = fqdn(&z.ns).map_err(DnsError::Setting)?;
            let rname = fqdn(&z.hostmaster).map_err(DnsError::Setting)?;
            specs.push((origin, ns, rname));
        }
        for k in &settings.tsig_keys {
            update::signer(k).map_err(DnsError::Setting)?;
        }
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            zones: specs
                .into_iter()
                .map(|(origin, ns, rname)| {
                    Arc::new(LabZone::new(
                        origin,
                        ns,
                        rname,
                        settings.ttl,
                        serial,
                        weak.clone(),
                    ))
                })
                .collect(),
            view: Mutex::new(View::default()),
            settings: settings.clone(),
            stats: Stats::default(),
            generation: AtomicU64::new(0),
            store,
            notify: tx,
        });
        Ok(Arc::new(Dns {
            inner,
            notify_rx: std::sync::Mutex::new(Some(rx)),
        }))
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn ttl(&self) -> u32 {
        self.inner.settings.ttl
    }

    /// Replaces the records of `owner` (none: it has none any more). Each must fall in one of the
    /// zones. A name whose address another owner holds is taken (`Claim::Take`, and the
    /// evicted owners are returned) or refused (`Claim::IfFree`).
    pub async fn set(
        &self,
        owner: &str,
        records: Vec<Record>,
        claim: Claim,
    ) -> Result<Vec<String>, Conflict> {
        let mut view = self.inner.view.lock().await;
        view.set(&self.inner, owner, records, claim).await
    }

    /// Every record with the owner it came from, zone by zone.
    pub async fn listing(&self) -> (Vec<ZoneState>, Vec<Listed>) {
        let view = self.inner.view.lock().await;
        let mut zones = Vec::new();
        let mut all = Vec::new();
        for z in &self.inner.zones {
            let (serial, listed) = z.listing(&view).await;
            zones.push(ZoneState {
                zone: z.origin().to_string(),
                serial,
                records: listed.len(),
            });
            all.extend(listed);
        }
        (zones, all)
    }

    /// The owner whose A record names `name` with another address than `ip`, if any.
    pub async fn holder(&self, name: &str, ip: Ipv4Addr) -> Option<String> {
        let name = LowerName::new(&fqdn(name).ok()?);
        let view = self.inner.view.lock().await;
        view.holder(&name, RecordType::A, &RData::A(A(ip)))
    }

    /// Opens the UDP and TCP sockets on every listen address and starts the NOTIFY sender.
    pub async fn listen(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, DnsError> {
        let handler = Arc::new(Handler::new(self.inner.clone())?);
        let mut tasks = Vec::new();
        let mut server = hickory_server::Server::new(handler::Shared(handler.clone()));
        for addr in &self.inner.settings.listen {
            tasks.extend(udp::serve(
                *addr,
                handler.clone(),
                self.inner.settings.workers,
            )?);
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DnsError::Listen {
                    addr: *addr,
                    source,
                })?;
            server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
        }
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::warn!("DNS over TCP stopped: {e}");
            }
        }));
        if let Some(rx) = self.notify_rx.lock().expect("notify lock").take() {
            tasks.push(tokio::spawn(notify::run(self.inner.clone(), rx)));
        }
        Ok(tasks)
    }
}

/// A zone serial that a restart does not send backwards: the time, as Knot's `unixtime` policy.
fn initial_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// `name` as an absolute name.
pub fn fqdn(name: &str) -> Result<Name, String> {
    let mut n = Name::from_str(name.trim_end_matches('.'))
        .map_err(|e| format!("`{name}` is not a domain name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// `name IN A ip`.
pub fn a(name: &str, ip: Ipv4Addr, ttl: u32) -> Result<Record, String> {
    Ok(Record::from_rdata(fqdn(name)?, ttl, RData::A(A(ip))))
}

/// The reverse name of `ip` pointing to `target`.
pub fn ptr(ip: Ipv4Addr, target: &str, ttl: u32) -> Result<Record, String> {
    Ok(Record::from_rdata(
        reverse_name(ip),
        ttl,
        RData::PTR(PTR(fqdn(target)?)),
    ))
}

/// `d.c.b.a.in-addr.arpa.`
pub fn reverse_name(ip: Ipv4Addr) -> Name {
    Name::from(IpAddr::V4(ip))
}

/// The reverse zone of a network: its address cut to whole octets of the prefix (a /24's
/// `0.0.10.in-addr.arpa`; a /20 is served from its /16).
pub fn reverse_zone(network: Ipv4Addr, prefix: u8) -> String {
    let octets = network.octets();
    let keep = (usize::from(prefix) / 8).clamp(1, 3);
    let mut labels: Vec<String> = octets[..keep].iter().map(|o| o.to_string()).collect();
    labels.reverse();
    format!("{}.in-addr.arpa", labels.join("."))
}

/// Decodes a record kept in wire form.
pub fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    use hickory_server::proto::serialize::binary::BinDecodable;
    Record::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;

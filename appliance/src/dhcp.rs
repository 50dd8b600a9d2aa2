//! The DHCP server as the appliance runs it: one pool per network that has a `dhcp_range`,
//! with that network's reservations (the config's and those made at run time), answered on
//! the network's interface (a relayed network: on its `via` network's); leases kept in the
//! state, each committed before its ACK leaves. A reload or a reservation change hands the
//! servers new pools without a restart.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_services::dhcp::{
    self, Boot, BootClient, Command, Lease, LeaseEvent, LeaseState, LeaseStore, Pool, Reservation,
    Settings, Stats,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::values::Mac;
use crate::config::Config;
use crate::state::{NewEvent, NewLease, ReservationRow, State};
use crate::Error;

/// Leases over the appliance's state.
pub struct StateLeases {
    pub state: State,
    /// Lease changes on their way to the events table and the script (off the ACK path).
    changes: mpsc::Sender<(String, LeaseEvent, Lease)>,
    dropped: std::sync::atomic::AtomicU64,
    /// Network-booting clients, on their way to discovery (provisioning).
    boots: mpsc::Sender<(String, BootClient)>,
}

/// Lease changes queued for events and the script; beyond this they are dropped and said so.
const CHANGES_QUEUED: usize = 4096;

/// Records each lease change as a `dhcp.lease` event (a burst in one transaction) and runs
/// `script` on it, one at a time.
async fn follow_changes(
    state: State,
    script: Option<std::path::PathBuf>,
    dns: Option<Arc<crate::dns::Dns>>,
    mut rx: mpsc::Receiver<(String, LeaseEvent, Lease)>,
) {
    let mut burst = Vec::new();
    while rx.recv_many(&mut burst, 256).await > 0 {
        // Names first: a client looked up right after its ACK should be found.
        if let Some(dns) = &dns {
            for (network, event, l) in &burst {
                dns.lease(network, *event, l).await;
            }
        }
        let events = burst
            .iter()
            .map(|(network, event, l)| {
                let host = l.hostname.clone().unwrap_or_default();
                NewEvent::info(
                    "dhcp.lease",
                    format!("{} {} {} {host}", event.as_str(), l.ip, mac_text(&l.mac))
                        .trim_end()
                        .to_string(),
                )
                .about(network)
            })
            .collect();
        let _ = state.record_all(events).await;
        for (network, event, l) in burst.drain(..) {
            if let Some(script) = &script {
                run_script(script, &network, event, &l).await;
            }
        }
    }
}

/// `SCRIPT add|old|del MAC IP [HOSTNAME]`, as dnsmasq's dhcp-script.
async fn run_script(script: &std::path::Path, network: &str, event: LeaseEvent, l: &Lease) {
    let (mac, ip) = (mac_text(&l.mac), l.ip.to_string());
    let mut args = vec![event.as_str(), &mac, &ip];
    if let Some(h) = &l.hostname {
        args.push(h);
    }
    let timeout = std::time::Duration::from_secs(10);
    if let Err(e) =
        crate::script::run(script, &args, ("NETMIGRATE_NETWORK", network), timeout).await
    {
        tracing::warn!("dhcp script: {e}");
    }
}

fn mac_text(m: &[u8; 6]) -> String {
    Mac(*m).to_string()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<Mac>().ok().map(|m| m.0)
}

#[async_trait]
impl LeaseStore for StateLeases {
    async fn load(&self, network: &str) -> Result<Vec<Lease>, String> {
        let rows = self
            .state
            .leases_raw(Some(network.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|(r, client)| {
                Some(Lease {
                    ip: r.ip.parse().ok()?,
                    client,
                    mac: parse_mac(&r.mac)?,
                    hostname: r.hostname,
                    state: LeaseState::parse(&r.state)?,
                    expires_ms: r.expires_ms,
                })
            })
            .collect())
    }

    async fn commit(&self, network: &str, l: &Lease) -> Result<(), String> {
        self.commit_all(network, std::slice::from_ref(l)).await
    }

    async fn commit_all(&self, network: &str, leases: &[Lease]) -> Result<(), String> {
        let rows = leases
            .iter()
            .map(|l| new_lease(network, l))
            .collect::<Result<Vec<_>, _>>()?;
        self.state
            .commit_leases(rows)
            .await
            .map_err(|e| e.to_string())
    }

    fn changed(&self, network: &str, changes: Vec<(LeaseEvent, Lease)>) {
        for (event, l) in changes {
            if self
                .changes
                .try_send((network.to_string(), event, l))
                .is_err()
            {
                // Said once per thousand, not once per lost event.
                let n = self
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!("DHCP: lease events are behind; {} dropped so far", n + 1);
                }
            }
        }
    }

    fn booting(&self, network: &str, client: BootClient) {
        // A full queue drops the sighting: the client asks again within seconds.
        let _ = self.boots.try_send((network.to_string(), client));
    }
}

fn new_lease(network: &str, l: &Lease) -> Result<NewLease, String> {
    let state = match l.state {
        LeaseState::Bound => "bound",
        LeaseState::Released => "released",
        LeaseState::Declined => "declined",
        LeaseState::Offered => return Err("an offer is not a lease".into()),
    };
    Ok(NewLease {
        network: network.to_string(),
        ip: l.ip.to_string(),
        client: l.client.clone(),
        mac: mac_text(&l.mac),
        hostname: l.hostname.clone(),
        state,
        expires_ms: l.expires_ms,
    })
}

/// Hex pairs ("01:52:54:...") as bytes.
pub fn parse_client_id(s: &str) -> Option<Vec<u8>> {
    s.split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect()
}

/// The pools `cfg` describes, with the reservations made at run time (`extra`), by the
/// interface they are served on.
pub fn pools(cfg: &Config, extra: &[ReservationRow]) -> HashMap<String, Vec<Pool>> {
    // The DNS server runs whenever a network has a domain (see `dns::Dns::start`).
    let dns_on = !crate::dns::zones(cfg).is_empty();
    // The config's reservations and the run-time ones, as `reservations list` shows them.
    let reserved = crate::reservations::list(cfg, extra);
    let boot = cfg.dhcp.pxe.as_ref().map(|p| Boot {
        next_server: p.next_server,
        bios: p.bios.clone(),
        uefi: p.uefi.clone(),
        uefi_arm64: p.uefi_arm64.clone(),
        uefi_http: None,
        ipxe_script: p.ipxe_script.clone(),
    });
    let mut by_iface: HashMap<String, Vec<Pool>> = HashMap::new();
    for n in &cfg.networks {
        let Some(range) = n.dhcp_range else { continue };
        let Some(attached) = cfg.attached(n) else {
            continue;
        };
        let reservations = reserved
            .iter()
            .map(|v| &v.row)
            .filter(|r| r.network == n.name)
            .filter_map(|r| {
                Some(Reservation {
                    mac: r.mac.as_deref().and_then(parse_mac),
                    client_id: r.client_id.as_deref().and_then(parse_client_id),
                    hostname: r.hostname.clone(),
                    ip: r.ip.parse().ok()?,
                })
            })
            .collect();
        let server = attached.address.addr();
        by_iface
            .entry(attached.interface.clone())
            .or_default()
            .push(Pool {
                network: n.name.clone(),
                interface: attached.interface.clone(),
                server,
                router: n.address.addr(),
                prefix: n.address.prefix_len(),
                relayed: n.via.is_some(),
                range,
                lease_time: n.lease_time,
                domain: n.domain.clone(),
                dns_updates: dns_on && n.domain.is_some(),
                reservations,
                boot: boot_for(cfg, n, server, boot.clone()),
            });
    }
    by_iface
}

/// What booting clients of `n` get: `[dhcp.pxe]`'s files; on the provisioning network, iPXE
/// is sent to the boot HTTP server's script when `[dhcp.pxe]` names none.
fn boot_for(
    cfg: &Config,
    n: &crate::config::Network,
    server: std::net::Ipv4Addr,
    pxe: Option<Boot>,
) -> Option<Boot> {
    let Some(b) = cfg.boot.as_ref().filter(|b| b.http_port != 0) else {
        return pxe;
    };
    // UEFI HTTP boot: the file's URL on this network's boot HTTP server.
    let mut pxe = pxe;
    if let (Some(boot), Some(file)) = (
        pxe.as_mut(),
        cfg.dhcp.pxe.as_ref().and_then(|p| p.uefi_http.as_ref()),
    ) {
        boot.uefi_http = Some(format!("http://{server}:{}/boot/{file}", b.http_port));
    }
    let Some(p) = &cfg.provisioning else {
        return pxe;
    };
    if p.network != n.name {
        return pxe;
    }
    let mut boot = pxe.unwrap_or_default();
    if boot.ipxe_script.is_none() {
        boot.ipxe_script = Some(format!("http://{server}:{}/ipxe", b.http_port));
    }
    Some(boot)
}

/// Another DHCP server heard on a served network.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RogueServer {
    /// Its server identifier.
    pub server: String,
    pub interface: String,
    /// The served networks on that interface.
    pub networks: Vec<String>,
    /// Where its last answer came from (itself, or a relay).
    pub from: String,
    /// The address it last offered or acknowledged.
    pub offered: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub answers: u64,
}

/// A server not heard for this long is reported again when it comes back.
const ROGUE_QUIET_MS: i64 = 3_600_000;

/// The running DHCP server: its counters, and the way to hand each interface new pools.
pub struct Dhcp {
    pub stats: Arc<Stats>,
    /// Other DHCP servers heard, by server identifier.
    pub rogues: Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::Ipv4Addr, RogueServer>>>,
    state: State,
    /// By interface: the servers listening, and where their commands go.
    listening: HashMap<String, (watch::Sender<Vec<Pool>>, mpsc::Sender<Command>)>,
    /// Network-booting clients seen, for provisioning to take once.
    pub boots: std::sync::Mutex<Option<mpsc::Receiver<(String, BootClient)>>>,
}

impl Dhcp {
    /// Hands every interface its pools as `cfg` and the state's reservations now say. An
    /// interface the server does not listen on yet needs a restart; it is named.
    pub async fn update(&self, cfg: &Config) -> Result<(), String> {
        let extra = self.state.reservations().await.map_err(|e| e.to_string())?;
        let mut pools = pools(cfg, &extra);
        for (iface, (tx, _)) in &self.listening {
            tx.send_replace(pools.remove(iface).unwrap_or_default());
        }
        let mut not_listening: Vec<_> = pools.into_keys().collect();
        if not_listening.is_empty() {
            Ok(())
        } else {
            not_listening.sort();
            Err(format!(
                "DHCP is not listening on {}; restart netmigrate to serve it",
                not_listening.join(", ")
            ))
        }
    }

    /// Moves the bound leases of MAC `old` to `new` in every server: the client keeps its
    /// addresses under its new MAC. Returns them (network, address).
    pub async fn rebind(&self, old: [u8; 6], new: [u8; 6]) -> Vec<(String, std::net::Ipv4Addr)> {
        let mut moved = Vec::new();
        for (_, commands) in self.listening.values() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if commands
                .send(Command::Rebind { old, new, reply })
                .await
                .is_ok()
            {
                moved.extend(answer.await.unwrap_or_default());
            }
        }
        moved
    }
}

/// The binding follows a VM that comes back from a move with a new MAC: its leases go to the
/// new MAC before its new NIC asks, so that it gets the same address.
pub struct FollowVm(pub Arc<Dhcp>);

#[async_trait]
impl crate::migrate::hooks::AfterMove for FollowVm {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    async fn moved(&self, m: &crate::migrate::hooks::Moved) -> Result<(), String> {
        let Some(old) = &m.old_mac else {
            return Ok(());
        };
        let (Some(old), Some(new)) = (parse_mac(old), parse_mac(&m.mac)) else {
            return Err(format!("unreadable MAC {old} or {}", m.mac));
        };
        let moved = self.0.rebind(old, new).await;
        tracing::info!(vm = %m.vm, "DHCP: leases {moved:?} follow the VM to MAC {}", m.mac);
        Ok(())
    }
}

/// Starts a server per interface that has pools. One that cannot listen (no such interface,
/// no privilege) is reported as an event and the others go on.
pub async fn start(
    cfg: &Config,
    state: &State,
    dns: Option<Arc<crate::dns::Dns>>,
) -> Result<(Arc<Dhcp>, Vec<JoinHandle<()>>), Error> {
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(CHANGES_QUEUED);
    let mut tasks = vec![tokio::spawn(follow_changes(
        state.clone(),
        cfg.dhcp.script.clone(),
        dns,
        rx,
    ))];
    let (boots, boots_rx) = mpsc::channel(256);
    let store: Arc<dyn LeaseStore> = Arc::new(StateLeases {
        state: state.clone(),
        changes: tx,
        dropped: Default::default(),
        boots,
    });
    let settings = Settings {
        conflict_wait: cfg.dhcp.conflict_check.then_some(cfg.dhcp.conflict_wait),
    };
    let extra = state.reservations().await?;
    let mut listening = HashMap::new();
    for (iface, pools) in pools(cfg, &extra) {
        let names: Vec<_> = pools
            .iter()
            .map(|p| format!("{} {}-{}", p.network, p.range.0, p.range.1))
            .collect();
        let (ptx, prx) = watch::channel(pools);
        let (ctx, crx) = mpsc::channel(16);
        match dhcp::serve(
            iface.clone(),
            prx,
            crx,
            store.clone(),
            stats.clone(),
            settings.clone(),
        )
        .await
        {
            Ok(t) => {
                tracing::info!("DHCP serving on {iface}: {}", names.join(", "));
                tasks.push(t);
                listening.insert(iface, (ptx, ctx));
            }
            Err(e) => {
                state
                    .record(NewEvent::warn("dhcp.listen", e).about(&iface))
                    .await?;
            }
        }
    }
    // Other servers on the interfaces served directly (relayed networks have their own
    // segments, which only the relay hears).
    let rogues = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let ours: std::collections::HashSet<std::net::Ipv4Addr> =
        cfg.networks.iter().map(|n| n.address.addr()).collect();
    let (seen_tx, seen_rx) = mpsc::channel(64);
    let mut watched = HashMap::new();
    for n in cfg
        .networks
        .iter()
        .filter(|n| n.via.is_none() && n.dhcp_range.is_some())
    {
        watched
            .entry(n.interface.clone())
            .or_insert_with(Vec::new)
            .push(n.name.clone());
    }
    for iface in watched.keys() {
        match dhcp::rogue::watch(
            iface.clone(),
            ours.clone(),
            cfg.dhcp.rogue_probe,
            stats.clone(),
            seen_tx.clone(),
        ) {
            Ok(t) => tasks.push(t),
            Err(e) => {
                state
                    .record(NewEvent::warn("dhcp.rogue_watch", e).about(iface))
                    .await?;
            }
        }
    }
    tasks.push(tokio::spawn(follow_rogues(
        state.clone(),
        rogues.clone(),
        watched,
        seen_rx,
    )));
    Ok((
        Arc::new(Dhcp {
            stats,
            rogues,
            state: state.clone(),
            listening,
            boots: std::sync::Mutex::new(Some(boots_rx)),
        }),
        tasks,
    ))
}

/// Keeps what the watchers hear of other DHCP servers; each new one (or one back after an
/// hour of silence) is an event.
async fn follow_rogues(
    state: State,
    rogues: Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::Ipv4Addr, RogueServer>>>,
    networks: HashMap<String, Vec<String>>,
    mut seen: mpsc::Receiver<dhcp::rogue::Seen>,
) {
    while let Some(s) = seen.recv().await {
        let now = crate::state::now_ms();
        let names = networks.get(&s.interface).cloned().unwrap_or_default();
        let news = {
            let mut map = rogues.lock().expect("rogues");
            let r = map.entry(s.server).or_insert_with(|| RogueServer {
                server: s.server.to_string(),
                interface: s.interface.clone(),
                networks: names.clone(),
                from: String::new(),
                offered: String::new(),
                first_seen_ms: now,
                last_seen_ms: 0,
                answers: 0,
            });
            let news = now - r.last_seen_ms > ROGUE_QUIET_MS;
            r.interface = s.interface.clone();
            r.networks = names.clone();
            r.from = s.from.to_string();
            r.offered = s.offered.to_string();
            r.last_seen_ms = now;
            r.answers += 1;
            news
        };
        if news {
            let via = if s.from == s.server {
                String::new()
            } else {
                format!(" through {}", s.from)
            };
            let e = NewEvent::warn(
                "dhcp.rogue",
                format!(
                    "another DHCP server, {}{via}, answers on {} ({}): it {} {}{}",
                    s.server,
                    names.join(", "),
                    s.interface,
                    s.verb(),
                    s.offered,
                    if s.to_probe {
                        " to netmigrate's probe"
                    } else {
                        " to a client"
                    }
                ),
            )
            .about(names.first().map_or(s.interface.as_str(), String::as_str));
            tracing::warn!("{}", e.message);
            let _ = state.record(e).await;
        }
    }
}

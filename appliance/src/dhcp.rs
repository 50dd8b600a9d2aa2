//! The DHCP server as the appliance runs it: one pool per network that has a `dhcp_range`,
//! with that network's reservations, answering on the network's interface only; leases kept in
//! the state, each committed before its ACK leaves.

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_services::dhcp::{
    self, Lease, LeaseEvent, LeaseState, LeaseStore, Pool, Reservation, Stats,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::values::Mac;
use crate::config::Config;
use crate::state::{NewEvent, NewLease, State};
use crate::Error;

/// Leases over the appliance's state.
pub struct StateLeases {
    pub state: State,
    /// Lease changes on their way to the events table and the script (off the ACK path).
    changes: mpsc::Sender<(String, LeaseEvent, Lease)>,
    dropped: std::sync::atomic::AtomicU64,
}

/// Lease changes queued for events and the script; beyond this they are dropped and said so.
const CHANGES_QUEUED: usize = 4096;

/// Records each lease change as a `dhcp.lease` event (a burst in one transaction) and runs
/// `script` on it, one at a time.
async fn follow_changes(
    state: State,
    script: Option<std::path::PathBuf>,
    mut rx: mpsc::Receiver<(String, LeaseEvent, Lease)>,
) {
    let mut burst = Vec::new();
    while rx.recv_many(&mut burst, 256).await > 0 {
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

/// The pools `cfg` describes.
pub fn pools(cfg: &Config) -> Vec<Pool> {
    cfg.networks
        .iter()
        .filter_map(|n| {
            let range = n.dhcp_range?;
            Some(Pool {
                network: n.name.clone(),
                interface: n.interface.clone(),
                server: n.address.addr(),
                prefix: n.address.prefix_len(),
                range,
                lease_time: n.lease_time,
                domain: n.domain.clone(),
                reservations: cfg
                    .reservations
                    .iter()
                    .filter(|r| r.network == n.name)
                    .map(|r| Reservation {
                        mac: r.mac.as_ref().map(|m| m.0),
                        client_id: r.client_id.as_deref().and_then(|c| {
                            c.split(':')
                                .map(|p| u8::from_str_radix(p, 16).ok())
                                .collect::<Option<Vec<u8>>>()
                        }),
                        hostname: r.hostname.clone(),
                        ip: r.ip,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Starts a server per pool. One that cannot listen (no such interface, no privilege) is
/// reported as an event and the others go on.
pub async fn start(
    cfg: &Config,
    state: &State,
) -> Result<(Arc<Stats>, Vec<JoinHandle<()>>), Error> {
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(CHANGES_QUEUED);
    let mut tasks = vec![tokio::spawn(follow_changes(
        state.clone(),
        cfg.dhcp.script.clone(),
        rx,
    ))];
    let store: Arc<dyn LeaseStore> = Arc::new(StateLeases {
        state: state.clone(),
        changes: tx,
        dropped: Default::default(),
    });
    for pool in pools(cfg) {
        let (net, iface) = (pool.network.clone(), pool.interface.clone());
        let (lo, hi): (Ipv4Addr, Ipv4Addr) = pool.range;
        match dhcp::serve(pool, store.clone(), stats.clone()).await {
            Ok(t) => {
                tracing::info!("DHCP serving {lo}-{hi} on {iface} (network {net})");
                tasks.push(t);
            }
            Err(e) => {
                state
                    .record(NewEvent::warn("dhcp.listen", e).about(&net))
                    .await?;
            }
        }
    }
    Ok((stats, tasks))
}

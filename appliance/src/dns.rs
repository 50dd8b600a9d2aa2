//! The DNS server as the appliance runs it: for each network with a `domain`, that zone and its
//! reverse zone, filled from what the appliance knows and kept in step with it:
//!
//! | owner                    | records                                   | on a clash      |
//! |--------------------------|-------------------------------------------|-----------------|
//! | `appliance NETWORK`      | `ns.DOMAIN` A and PTR, its own address    | takes the name  |
//! | `host NAME`              | a hypervisor host's A and PTR             | takes the name  |
//! | `reservation NET IP`     | a reservation's host name                 | takes the name  |
//! | `vm NAME`                | a VM's name at its address (after a move) | takes the name  |
//! | `update`                 | records added by RFC 2136 updates         | refused         |
//! | `lease NET IP`           | a DHCP client's host name                 | refused + event |
//!
//! The config's names win over a client's wish: a client asking for a name that points
//! elsewhere is refused the name (and an event says so), as Kea's DDNS conflict resolution does.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use netmigrate_services::dhcp::{Lease, LeaseEvent};
use netmigrate_services::dns::{self, Claim, DnsRecord, Settings, TsigKey, ZoneSpec, ZoneStore};
use tokio::task::JoinHandle;

use crate::config::{Config, Network};
use crate::state::{NewEvent, State};
use crate::Error;

/// The appliance's handle on its DNS server.
pub struct Dns {
    pub server: Arc<dns::Dns>,
    state: State,
    /// The config the records were last computed from.
    config: Mutex<Arc<Config>>,
    /// The owners `refresh` made last time (those it no longer makes are removed).
    derived: tokio::sync::Mutex<BTreeSet<String>>,
}

/// Static records and messages over the state.
struct StateZones(State);

#[async_trait]
impl ZoneStore for StateZones {
    async fn save_static(&self, records: Vec<(Vec<u8>, String)>) -> Result<(), String> {
        self.0
            .save_dns_static(records)
            .await
            .map_err(|e| e.to_string())
    }

    fn said(&self, kind: &'static str, message: String) {
        tracing::warn!("{message}");
        let state = self.0.clone();
        tokio::spawn(async move {
            let _ = state.record(NewEvent::warn(kind, message)).await;
        });
    }
}

/// The zones of the networks that have a domain: each forward zone once, each reverse zone once.
pub fn zones(cfg: &Config) -> Vec<ZoneSpec> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in &cfg.networks {
        let Some(domain) = &n.domain else { continue };
        let ns = format!("ns.{domain}");
        let hostmaster = format!("hostmaster.{domain}");
        let net = n.address.trunc();
        for origin in [
            domain.clone(),
            dns::reverse_zone(net.addr(), net.prefix_len()),
        ] {
            if seen.insert(origin.to_ascii_lowercase()) {
                out.push(ZoneSpec {
                    origin,
                    ns: ns.clone(),
                    hostmaster: hostmaster.clone(),
                });
            }
        }
    }
    out
}

/// A TSIG secret file: the base64 secret alone, or a BIND key file (`secret "...";`).
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("dns.tsig_key: cannot read {}: {e}", path.display()))?;
    let b64 = match text.find("secret") {
        Some(i) => text[i + 6..]
            .split('"')
            .nth(1)
            .unwrap_or_default()
            .to_string(),
        None => text.trim().to_string(),
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            format!(
                "dns.tsig_key: {} does not hold a base64 secret: {e}",
                path.display()
            )
        })
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    let mut tsig_keys = Vec::new();
    for k in &cfg.dns.tsig_keys {
        tsig_keys.push(TsigKey {
            name: k.name.clone(),
            algorithm: k.algorithm.clone(),
            secret: read_secret(&k.secret_file).map_err(Error::Invalid)?,
        });
    }
    let listen = cfg
        .networks
        .iter()
        .filter(|n| n.via.is_none())
        .map(|n| SocketAddr::new(n.address.addr().into(), cfg.dns.port))
        .collect();
    Ok(Settings {
        zones: zones(cfg),
        listen,
        ttl: cfg.dns.ttl.as_secs() as u32,
        forwarders: cfg.dns.forwarders.clone(),
        recursion_from: cfg
            .networks
            .iter()
            .map(|n| (n.address.network(), n.address.prefix_len()))
            .collect(),
        secondaries: cfg.dns.secondaries.clone(),
        tsig_keys,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
    })
}

/// The network with a domain whose segment holds `ip`.
fn network_of(cfg: &Config, ip: Ipv4Addr) -> Option<(&Network, &str)> {
    cfg.networks
        .iter()
        .filter(|n| n.address.contains(&ip))
        .find_map(|n| Some((n, n.domain.as_deref()?)))
}

/// A client's or a VM's name as one label: the first label of what it sent, in lower case; None
/// when that is not a host name.
pub fn label(name: &str) -> Option<String> {
    let first = name.split('.').next()?.to_ascii_lowercase();
    crate::config::values::check_hostname(&first).ok()?;
    Some(first)
}

/// `label.DOMAIN` A `ip` and its PTR, if `ip` is in a network with a domain.
fn named(cfg: &Config, name: &str, ip: Ipv4Addr, ttl: u32) -> Option<(String, Vec<DnsRecord>)> {
    let (_, domain) = network_of(cfg, ip)?;
    let fqdn = format!("{}.{domain}", label(name)?);
    let records = vec![dns::a(&fqdn, ip, ttl).ok()?, dns::ptr(ip, &fqdn, ttl).ok()?];
    Some((fqdn, records))
}

impl Dns {
    /// The config's and the state's records (leases included) in the zones, then the sockets.
    /// None when no network has a domain and there is nothing to forward to.
    pub async fn start(
        cfg: &Arc<Config>,
        state: &State,
    ) -> Result<Option<(Arc<Dns>, Vec<JoinHandle<()>>)>, Error> {
        if zones(cfg).is_empty() && cfg.dns.forwarders.is_empty() {
            return Ok(None);
        }
        let server = dns::Dns::new(settings(cfg)?, Arc::new(StateZones(state.clone())))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let me = Arc::new(Dns {
            server,
            state: state.clone(),
            config: Mutex::new(cfg.clone()),
            derived: Default::default(),
        });
        me.refresh(cfg).await;
        me.load_static().await?;
        for l in state.leases().await? {
            if l.state == "bound" {
                if let (Ok(ip), Some(h)) = (l.ip.parse(), &l.hostname) {
                    me.lease_named(&l.network, ip, h).await;
                }
            }
        }
        let tasks = match me.server.listen().await {
            Ok(t) => {
                let zones: Vec<_> = zones(cfg).into_iter().map(|z| z.origin).collect();
                tracing::info!("DNS serving {}", zones.join(", "));
                t
            }
            Err(e) => {
                state
                    .record(NewEvent::warn("dns.listen", e.to_string()))
                    .await?;
                Vec::new()
            }
        };
        Ok(Some((me, tasks)))
    }

    fn config(&self) -> Arc<Config> {
        self.config.lock().expect("dns config lock").clone()
    }

    async fn load_static(&self) -> Result<(), Error> {
        let mut records = Vec::new();
        for wire in self.state.dns_static().await? {
            match dns::decode_record(&wire) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("DNS: a stored record is unreadable, skipped: {e}"),
            }
        }
        if let Err(e) = self.server.set("update", records, Claim::IfFree).await {
            self.say("dns.update", format!("stored records not served: {e}"))
                .await;
        }
        Ok(())
    }

    async fn say(&self, kind: &'static str, message: String) {
        tracing::warn!("{message}");
        let _ = self.state.record(NewEvent::warn(kind, message)).await;
    }

    /// Recomputes the records the config and the state describe (the appliance, hosts,
    /// reservations, VMs): after start, a reload, a reservation change.
    pub async fn refresh(&self, cfg: &Arc<Config>) {
        *self.config.lock().expect("dns config lock") = cfg.clone();
        let ttl = self.server.ttl();
        let mut owners: Vec<(String, Vec<DnsRecord>)> = Vec::new();
        for n in cfg.networks.iter().filter(|n| n.via.is_none()) {
            if let Some((_, records)) = named(cfg, "ns", n.address.addr(), ttl) {
                owners.push((format!("appliance {}", n.name), records));
            }
        }
        for h in &cfg.hosts {
            if let std::net::IpAddr::V4(ip) = h.address {
                if let Some((_, records)) = named(cfg, &h.name, ip, ttl) {
                    owners.push((format!("host {}", h.name), records));
                }
            }
        }
        let extra = self.state.reservations().await.unwrap_or_default();
        for r in crate::reservations::list(cfg, &extra) {
            let r = r.row;
            let (Some(h), Ok(ip)) = (&r.hostname, r.ip.parse::<Ipv4Addr>()) else {
                continue;
            };
            if let Some((_, records)) = named(cfg, h, ip, ttl) {
                owners.push((format!("reservation {} {}", r.network, r.ip), records));
            }
        }
        for v in self.state.vms().await.unwrap_or_default() {
            if let Some(ip) = v.def.ip {
                if let Some((_, records)) = named(cfg, &v.name, ip, ttl) {
                    owners.push((format!("vm {}", v.name), records));
                }
            }
        }
        let mut derived = self.derived.lock().await;
        let now: BTreeSet<String> = owners.iter().map(|(o, _)| o.clone()).collect();
        for gone in derived.difference(&now) {
            let _ = self.server.set(gone, Vec::new(), Claim::Take).await;
        }
        for (owner, records) in owners {
            self.take(&owner, records).await;
        }
        *derived = now;
    }

    async fn take(&self, owner: &str, records: Vec<DnsRecord>) {
        match self.server.set(owner, records, Claim::Take).await {
            Ok(evicted) if !evicted.is_empty() => {
                self.say(
                    "dns.conflict",
                    format!("{owner} took its name from {}", evicted.join(", ")),
                )
                .await
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("DNS: {owner}: {e}"),
        }
    }

    /// A lease change: a bound lease with a host name is named, a gone one unnamed.
    pub async fn lease(&self, network: &str, event: LeaseEvent, l: &Lease) {
        match (event, &l.hostname) {
            (LeaseEvent::Add | LeaseEvent::Old, Some(h)) => {
                self.lease_named(network, l.ip, h).await
            }
            _ => {
                let owner = format!("lease {network} {}", l.ip);
                let _ = self.server.set(&owner, Vec::new(), Claim::IfFree).await;
            }
        }
    }

    async fn lease_named(&self, network: &str, ip: Ipv4Addr, hostname: &str) {
        let owner = format!("lease {network} {ip}");
        let Some((fqdn, records)) = named(&self.config(), hostname, ip, self.server.ttl()) else {
            let _ = self.server.set(&owner, Vec::new(), Claim::IfFree).await;
            return;
        };
        if let Err(e) = self.server.set(&owner, records, Claim::IfFree).await {
            let _ = self.server.set(&owner, Vec::new(), Claim::IfFree).await;
            self.say(
                "dns.conflict",
                format!("{ip} asked for the name {fqdn}, refused: {e}"),
            )
            .await;
        }
    }
}

/// DNS follows a VM after a move: its name points to the address it has now.
pub struct FollowVm(pub Arc<Dns>);

#[async_trait]
impl crate::migrate::hooks::AfterMove for FollowVm {
    fn name(&self) -> &'static str {
        "dns"
    }

    async fn moved(&self, m: &crate::migrate::hooks::Moved) -> Result<(), String> {
        let Some(ip) = m.ip else {
            return Ok(());
        };
        let cfg = self.0.config();
        let Some((fqdn, records)) = named(&cfg, &m.vm, ip, self.0.server.ttl()) else {
            return Ok(());
        };
        self.0.take(&format!("vm {}", m.vm), records).await;
        self.0.derived.lock().await.insert(format!("vm {}", m.vm));
        tracing::info!(vm = %m.vm, "DNS: {fqdn} points to {ip}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An appliance whose addresses are not on this machine: the zones work, the sockets do not
    /// open (an event says so).
    async fn offline() -> (tempfile::TempDir, Arc<Dns>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netmigrate.toml");
        let text = format!(
            "state_dir = \"{}\"\n[[network]]\nname = \"lab\"\ninterface = \"nm-none0\"\n\
             address = \"192.0.2.1/24\"\ndomain = \"lab.test\"\n\
             [[reservation]]\nnetwork = \"lab\"\nmac = \"52:54:00:00:00:05\"\nip = \"192.0.2.5\"\n\
             hostname = \"vm1\"\n",
            dir.path().join("state").display()
        );
        std::fs::write(&path, &text).unwrap();
        let cfg = Arc::new(Config::parse(&path, &text).unwrap());
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let state = State::open(&cfg.db_path()).unwrap();
        let (dns, _) = Dns::start(&cfg, &state).await.unwrap().unwrap();
        (dir, dns)
    }

    async fn records(d: &Dns, name: &str) -> Vec<(String, String)> {
        let (_, listed) = d.server.listing().await;
        listed
            .into_iter()
            .filter(|l| l.name == name || l.data == name)
            .map(|l| (l.data, l.owner))
            .collect()
    }

    #[tokio::test]
    async fn a_vm_that_moves_to_a_new_address_takes_its_name_along() {
        use crate::migrate::hooks::{AfterMove, Moved};
        let (_dir, dns) = offline().await;
        assert_eq!(
            records(&dns, "vm1.lab.test.").await,
            vec![
                (
                    "192.0.2.5".to_string(),
                    "reservation lab 192.0.2.5".to_string()
                ),
                (
                    "vm1.lab.test.".to_string(),
                    "reservation lab 192.0.2.5".to_string()
                ),
            ]
        );
        let moved = |ip: [u8; 4]| Moved {
            migration: 1,
            vm: "vm1".into(),
            from: "hostA".into(),
            to: "hostC".into(),
            mac: "52:54:00:00:00:05".into(),
            old_mac: None,
            ip: Some(ip.into()),
        };
        let hook = FollowVm(dns.clone());
        hook.moved(&moved([192, 0, 2, 9])).await.unwrap();
        // The name and the new address point to each other; the old address's PTR went with
        // the reservation that held the name.
        assert_eq!(
            records(&dns, "vm1.lab.test.").await,
            vec![
                ("192.0.2.9".to_string(), "vm vm1".to_string()),
                ("vm1.lab.test.".to_string(), "vm vm1".to_string()),
            ]
        );
        // A client later asking for the name is refused it.
        let lease = Lease {
            ip: "192.0.2.100".parse().unwrap(),
            client: vec![1, 2, 3],
            mac: [2, 0, 0, 0, 0, 1],
            hostname: Some("vm1".into()),
            state: netmigrate_services::dhcp::LeaseState::Bound,
            expires_ms: i64::MAX,
        };
        dns.lease("lab", LeaseEvent::Add, &lease).await;
        assert_eq!(records(&dns, "vm1.lab.test.").await.len(), 2);
        assert!(records(&dns, "192.0.2.100").await.is_empty());
    }

    #[test]
    fn labels_are_host_names() {
        assert_eq!(label("VM1").as_deref(), Some("vm1"));
        assert_eq!(label("vm1.other.example").as_deref(), Some("vm1"));
        assert_eq!(label("bad_name"), None);
        assert_eq!(label(""), None);
    }

    #[test]
    fn tsig_secrets_from_plain_and_bind_files() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::write(&plain, "c2VjcmV0\n").unwrap();
        assert_eq!(read_secret(&plain).unwrap(), b"secret");
        let bind = d.path().join("bind");
        std::fs::write(
            &bind,
            "key \"ddns\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(read_secret(&bind).unwrap(), b"secret");
        std::fs::write(&plain, "not base64!").unwrap();
        assert!(read_secret(&plain).unwrap_err().contains("base64"));
    }
}

//! The leases of one pool, in memory: by address and by client. The source of truth while the
//! server runs (loaded from the store at start, every change committed through it).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::answer::{reservation_matches, Who};
use super::Pool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered, not yet requested: held briefly, in memory only.
    Offered,
    Bound,
    Released,
    /// The client found the address in use: quarantined until `expires_ms`.
    Declined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseState> {
        Some(match s {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// The client's identity: option 61 if it sent one, else 1 (Ethernet) + its MAC.
    pub client: Vec<u8>,
    pub mac: [u8; 6],
    pub hostname: Option<String>,
    pub state: LeaseState,
    /// Unix ms.
    pub expires_ms: i64,
}

impl Lease {
    /// Whether the address is taken at `now` (a released or expired lease frees it).
    pub fn holds(&self, now_ms: i64) -> bool {
        match self.state {
            LeaseState::Released => false,
            _ => self.expires_ms > now_ms,
        }
    }
}

/// A client's identity key, as RFC 2132 9.14 suggests: its client identifier if sent, else
/// the hardware type and address.
pub fn client_key(client_id: Option<&[u8]>, mac: &[u8; 6]) -> Vec<u8> {
    match client_id {
        Some(id) if !id.is_empty() => id.to_vec(),
        _ => {
            let mut k = vec![1];
            k.extend_from_slice(mac);
            k
        }
    }
}

#[derive(Debug, Default)]
pub struct Leases {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<Vec<u8>, Ipv4Addr>,
    /// Where the search for a never-leased address goes on (offset into the range): each
    /// allocation is amortized O(1) instead of a scan of the whole range.
    cursor: std::sync::atomic::AtomicU32,
}

impl Leases {
    pub fn new(leases: Vec<Lease>) -> Leases {
        let mut l = Leases::default();
        for lease in leases {
            l.put(lease);
        }
        l
    }

    pub fn put(&mut self, lease: Lease) {
        if let Some(old) = self.by_client.get(&lease.client).copied() {
            if old != lease.ip {
                // One address per client: the old one goes (unless someone else holds it now).
                if self
                    .by_ip
                    .get(&old)
                    .is_some_and(|o| o.client == lease.client)
                {
                    self.by_ip.remove(&old);
                }
            }
        }
        if let Some(prev) = self.by_ip.get(&lease.ip) {
            if prev.client != lease.client {
                self.by_client.remove(&prev.client);
            }
        }
        if !lease.client.is_empty() {
            self.by_client.insert(lease.client.clone(), lease.ip);
        }
        self.by_ip.insert(lease.ip, lease);
    }

    pub fn of_client(&self, client: &[u8]) -> Option<&Lease> {
        self.by_client.get(client).and_then(|ip| self.by_ip.get(ip))
    }

    pub fn at(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// Bound leases whose time has run out at `now`, as they are to be recorded: released.
    pub fn expired(&self, now_ms: i64) -> Vec<Lease> {
        self.by_ip
            .values()
            .filter(|l| l.state == LeaseState::Bound && l.expires_ms <= now_ms)
            .map(|l| Lease {
                state: LeaseState::Released,
                ..l.clone()
            })
            .collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// Whether `ip` may go to `client` at `now`: not held by another client, not reserved for
    /// another, not quarantined.
    pub fn free_for(&self, pool: &Pool, ip: Ipv4Addr, who: &Who, now_ms: i64) -> bool {
        if ip == pool.server || ip == pool.router || !pool.contains(ip) {
            return false;
        }
        let reserved_elsewhere = pool
            .reservations
            .iter()
            .any(|r| r.ip == ip && !reservation_matches(r, who));
        if reserved_elsewhere {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if l.state == LeaseState::Declined => l.expires_ms <= now_ms,
            Some(l) => l.client == who.key || !l.holds(now_ms),
        }
    }

    /// An address of the range free for `who`: one never leased first (searched from where the
    /// last search ended), so that a released address goes back to its last client if it
    /// returns; else the one whose lease ended longest ago.
    pub fn pick(&self, pool: &Pool, who: &Who, now_ms: i64) -> Option<Ipv4Addr> {
        let (lo, hi) = (u32::from(pool.range.0), u32::from(pool.range.1));
        let size = hi.checked_sub(lo)? + 1;
        let start = self.cursor.load(std::sync::atomic::Ordering::Relaxed) % size;
        for i in 0..size {
            let off = (start + i) % size;
            let ip = Ipv4Addr::from(lo + off);
            if !self.by_ip.contains_key(&ip) && self.free_for(pool, ip, who, now_ms) {
                self.cursor
                    .store(off + 1, std::sync::atomic::Ordering::Relaxed);
                return Some(ip);
            }
        }
        self.by_ip
            .values()
            .filter(|l| pool.in_range(l.ip) && self.free_for(pool, l.ip, who, now_ms))
            .min_by_key(|l| l.expires_ms)
            .map(|l| l.ip)
    }
}

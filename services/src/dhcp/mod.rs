//! The DHCPv4 server (RFC 2131/2132, dhcproto): one socket per configured interface, bound to
//! it, answering only there. Leases are decided in memory (`lease::Leases`, loaded at start) and
//! made durable through the appliance's `LeaseStore` before an ACK leaves: a lease the client
//! was told about survives a crash. Offers are not leases and are only held in memory.
//! Malformed packets are counted and dropped.

mod answer;
mod lease;
mod probe;
pub mod rogue;
mod socket;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use answer::{answer, boot_file, encode, Answer};
pub use lease::{client_key, Lease, LeaseState, Leases};
pub use socket::{serve, Command, Settings};

/// Decodes one packet. dhcproto asserts on some malformed option lengths (in debug builds) and
/// may have other such bugs: a panic while decoding counts as malformed, it never ends the
/// server.
pub fn decode(bytes: &[u8]) -> Result<dhcproto::v4::Message, String> {
    use dhcproto::{Decodable, Decoder};
    match std::panic::catch_unwind(|| dhcproto::v4::Message::decode(&mut Decoder::new(bytes))) {
        // chaddr() slices by hlen: more than the field's 16 bytes would panic later.
        Ok(Ok(m)) if m.hlen() > 16 => Err(format!("hardware address length {}", m.hlen())),
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the decoder failed on it".into()),
    }
}

/// One network the server hands out addresses on: attached to the interface it is served on,
/// or behind a relay agent whose requests arrive there.
#[derive(Debug, Clone)]
pub struct Pool {
    pub network: String,
    pub interface: String,
    /// The appliance's address the clients talk to: server identifier and DNS server.
    pub server: Ipv4Addr,
    /// An address on the segment, with `prefix`: the clients' router (the appliance's own
    /// address, or the relay agent's).
    pub router: Ipv4Addr,
    pub prefix: u8,
    /// Reached through a relay: only relayed requests (giaddr inside it) are answered from it.
    pub relayed: bool,
    pub range: (Ipv4Addr, Ipv4Addr),
    pub lease_time: Duration,
    pub domain: Option<String>,
    /// The appliance's DNS names the clients of this network (A and PTR from their host name).
    pub dns_updates: bool,
    pub reservations: Vec<Reservation>,
    pub boot: Option<Boot>,
}

/// Network boot (PXE): which file a booting client gets, by its architecture (option 93) and
/// whether it is already iPXE (user class "iPXE").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    /// The TFTP server (siaddr, option 66); the appliance itself when not set.
    pub next_server: Option<Ipv4Addr>,
    /// For legacy BIOS PXE (architecture 0).
    pub bios: Option<String>,
    /// For x86-64 UEFI (architectures 7 and 9).
    pub uefi: Option<String>,
    /// For ARM64 UEFI (architecture 11).
    pub uefi_arm64: Option<String>,
    /// For UEFI HTTP boot (vendor class `HTTPClient`, x86-64 architecture 16): a URL.
    pub uefi_http: Option<String>,
    /// For a client that is already iPXE: a URL to chain to (an HTTP boot script).
    pub ipxe_script: Option<String>,
}

/// A fixed address for one client, known by MAC, client identifier or host name.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub mac: Option<[u8; 6]>,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub ip: Ipv4Addr,
}

impl Pool {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask());
        u32::from(ip) & m == u32::from(self.router) & m
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.router) | !u32::from(self.netmask()))
    }

    /// Whether a request relayed through `giaddr` (unspecified: not relayed) is this pool's.
    pub fn serves(&self, giaddr: Ipv4Addr) -> bool {
        if giaddr.is_unspecified() {
            !self.relayed
        } else {
            self.contains(giaddr)
        }
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.range.0)..=u32::from(self.range.1)).contains(&u32::from(ip))
    }
}

/// Where leases are made durable. The appliance implements it over its SQLite state.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Every lease of `network` (bound, released or declined), at start.
    async fn load(&self, network: &str) -> Result<Vec<Lease>, String>;
    /// Writes `lease`, replacing the one at its address; returns once durable.
    async fn commit(&self, network: &str, lease: &Lease) -> Result<(), String>;
    /// Writes several leases at once (in one transaction where the store can): the server
    /// groups the commits of the requests that arrived together.
    async fn commit_all(&self, network: &str, leases: &[Lease]) -> Result<(), String> {
        for l in leases {
            self.commit(network, l).await?;
        }
        Ok(())
    }
    /// Told after a commit what it meant (dnsmasq's dhcp-script actions), for events and hooks.
    /// Must not block: the replies wait for it.
    fn changed(&self, _network: &str, _changes: Vec<(LeaseEvent, Lease)>) {}
    /// Told of each DISCOVER and REQUEST from a network-booting client (PXE firmware or
    /// iPXE), so that new machines can be discovered. Must not block.
    fn booting(&self, _network: &str, _client: BootClient) {}
}

/// A client that network-boots, as its request describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClient {
    pub mac: [u8; 6],
    /// Option 60 ("PXEClient:Arch:00007:UNDI:003016").
    pub vendor_class: Option<String>,
    /// Option 93 (RFC 4578: 0 BIOS, 7 and 9 x86-64 UEFI, 11 ARM64 UEFI).
    pub arch: Option<u16>,
    /// Already iPXE (user class "iPXE").
    pub ipxe: bool,
}

/// What a committed lease change means to the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A client got an address it did not hold.
    Add,
    /// A client renewed (or re-requested) the address it holds.
    Old,
    /// The address was released or declined.
    Del,
}

impl LeaseEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEvent::Add => "add",
            LeaseEvent::Old => "old",
            LeaseEvent::Del => "del",
        }
    }
}

/// What the server saw, for `status` and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub discovers: AtomicU64,
    pub offers: AtomicU64,
    pub requests: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub releases: AtomicU64,
    pub declines: AtomicU64,
    pub informs: AtomicU64,
    pub ignored: AtomicU64,
    /// Relayed requests from a relay in none of the pools' networks.
    pub unknown_relay: AtomicU64,
    /// Addresses found in use by the conflict check before an offer, then quarantined.
    pub conflicts: AtomicU64,
    /// ACKs not sent because the lease could not be made durable.
    pub commit_failures: AtomicU64,
    /// OFFERs and ACKs of other DHCP servers heard on the served networks.
    pub foreign_answers: AtomicU64,
}

impl Stats {
    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("received", g(&self.received)),
            ("malformed", g(&self.malformed)),
            ("discovers", g(&self.discovers)),
            ("offers", g(&self.offers)),
            ("requests", g(&self.requests)),
            ("acks", g(&self.acks)),
            ("naks", g(&self.naks)),
            ("releases", g(&self.releases)),
            ("declines", g(&self.declines)),
            ("informs", g(&self.informs)),
            ("ignored", g(&self.ignored)),
            ("unknown_relay", g(&self.unknown_relay)),
            ("conflicts", g(&self.conflicts)),
            ("commit_failures", g(&self.commit_failures)),
            ("foreign_answers", g(&self.foreign_answers)),
        ]
    }
}

#[cfg(test)]
mod tests;

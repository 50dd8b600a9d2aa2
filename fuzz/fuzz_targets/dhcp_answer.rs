//! The DHCP server's path for a packet: decode, choose the pool, answer (with leases already
//! held, reservations and PXE configured), encode the reply within the client's size. Any
//! panic is a crash.

#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netmigrate_services::dhcp::{
    answer, client_key, decode, encode, Boot, Lease, LeaseState, Leases, Pool, Reservation, Stats,
};

const NOW: i64 = 1_800_000_000_000;

fn pools() -> [Pool; 2] {
    let near = Pool {
        network: "lab".into(),
        interface: "eth0".into(),
        server: Ipv4Addr::new(10, 0, 0, 1),
        router: Ipv4Addr::new(10, 0, 0, 1),
        prefix: 24,
        relayed: false,
        range: (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 103)),
        lease_time: Duration::from_secs(3600),
        domain: Some("lab.internal".into()),
        reservations: vec![Reservation {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x99]),
            client_id: Some(vec![1, 2, 3]),
            hostname: Some("fixed".into()),
            ip: Ipv4Addr::new(10, 0, 0, 50),
        }],
        dns_updates: true,
        boot: Some(Boot {
            next_server: None,
            bios: Some("undionly.kpxe".into()),
            uefi: Some("ipxe.efi".into()),
            uefi_arm64: Some("ipxe-arm64.efi".into()),
            uefi_http: Some("http://10.0.0.1:8067/boot/ipxe.efi".into()),
            ipxe_script: Some("http://10.0.0.1/boot.ipxe".into()),
        }),
    };
    let far = Pool {
        network: "far".into(),
        router: Ipv4Addr::new(10, 0, 2, 1),
        relayed: true,
        range: (Ipv4Addr::new(10, 0, 2, 100), Ipv4Addr::new(10, 0, 2, 101)),
        reservations: Vec::new(),
        boot: None,
        ..near.clone()
    };
    [near, far]
}

fn leases() -> Leases {
    let mac = [0x52, 0x54, 0, 0, 0, 1];
    Leases::new(vec![
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, 100),
            client: client_key(None, &mac),
            mac,
            hostname: Some("one".into()),
            state: LeaseState::Bound,
            expires_ms: NOW + 60_000,
        },
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, 101),
            client: Vec::new(),
            mac: [0; 6],
            hostname: None,
            state: LeaseState::Declined,
            expires_ms: NOW + 60_000,
        },
    ])
}

static HOOK: std::sync::Once = std::sync::Once::new();

thread_local! {
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `decode`, whose own panics (dhcproto asserts on some option lengths; the server counts
/// those packets as malformed) are caught there and stay quiet here.
fn quiet_decode(bytes: &[u8]) -> Result<dhcproto::v4::Message, String> {
    DECODING.with(|d| d.set(true));
    let r = decode(bytes);
    DECODING.with(|d| d.set(false));
    r
}

fuzz_target!(|data: &[u8]| {
    // libFuzzer's panic hook aborts, even for a panic that is caught. Ours says what panicked
    // (outside `decode`); a panic nobody catches still ends the input as a crash.
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if !DECODING.with(|d| d.get()) {
                eprintln!("{info}");
            }
        }))
    });
    let Ok(req) = quiet_decode(data) else { return };
    let stats = Stats::default();
    for pool in pools().iter().filter(|p| p.serves(req.giaddr())) {
        let mut l = leases();
        let a = answer(pool, &l, &req, NOW, &stats);
        for lease in [a.hold, a.commit].into_iter().flatten() {
            assert!(
                pool.contains(lease.ip),
                "{lease:?} outside {}",
                pool.network
            );
            l.put(lease);
        }
        if let Some(mut reply) = a.reply {
            let out = encode(&mut reply, &req).expect("a reply encodes");
            assert!(out.len() >= 300);
            quiet_decode(&out).expect("our reply decodes");
        }
    }
});

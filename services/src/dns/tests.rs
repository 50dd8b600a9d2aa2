use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct Kept {
    saved: Mutex<Vec<String>>,
    said: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ZoneStore for Arc<Kept> {
    async fn save_static(&self, records: Vec<(Vec<u8>, String)>) -> Result<(), String> {
        *self.saved.lock().unwrap() = records.into_iter().map(|(_, t)| t).collect();
        Ok(())
    }
    fn said(&self, kind: &'static str, message: String) {
        self.said.lock().unwrap().push(format!("{kind}: {message}"));
    }
}

fn dns() -> Arc<Dns> {
    let settings = Settings {
        zones: vec![
            ZoneSpec {
                origin: "lab.test".into(),
                ns: "ns.lab.test".into(),
                hostmaster: "hostmaster.lab.test".into(),
            },
            ZoneSpec {
                origin: reverse_zone(Ipv4Addr::new(10, 0, 0, 0), 24),
                ns: "ns.lab.test".into(),
                hostmaster: "hostmaster.lab.test".into(),
            },
        ],
        listen: vec![],
        ttl: 30,
        forwarders: vec![],
        recursion_from: vec![],
        secondaries: vec![],
        tsig_keys: vec![],
        workers: 1,
    };
    Dns::new(settings, Arc::new(Arc::new(Kept::default()))).unwrap()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

#[test]
fn reverse_zones_cut_to_octets() {
    assert_eq!(
        reverse_zone(Ipv4Addr::new(10, 0, 0, 0), 24),
        "0.0.10.in-addr.arpa"
    );
    assert_eq!(
        reverse_zone(Ipv4Addr::new(10, 7, 0, 0), 16),
        "7.10.in-addr.arpa"
    );
    assert_eq!(
        reverse_zone(Ipv4Addr::new(10, 7, 16, 0), 20),
        "7.10.in-addr.arpa"
    );
    assert_eq!(
        reverse_zone(Ipv4Addr::new(10, 0, 0, 0), 8),
        "10.in-addr.arpa"
    );
}

#[tokio::test]
async fn records_follow_their_owner_and_bump_the_serial() {
    let d = dns();
    let (zones, _) = d.listing().await;
    let serial0 = zones[0].serial;
    let recs = vec![
        a("vm1.lab.test", ip(10), 30).unwrap(),
        ptr(ip(10), "vm1.lab.test", 30).unwrap(),
    ];
    d.set("lease lab 10.0.0.10", recs, Claim::IfFree)
        .await
        .unwrap();
    let (zones, listed) = d.listing().await;
    assert!(zones[0].serial > serial0, "serial bumped");
    let a_rec = listed
        .iter()
        .find(|l| l.name == "vm1.lab.test." && l.rtype == "A")
        .unwrap();
    assert_eq!(a_rec.data, "10.0.0.10");
    assert_eq!(a_rec.owner, "lease lab 10.0.0.10");
    assert!(listed
        .iter()
        .any(|l| l.name == "10.0.0.10.in-addr.arpa." && l.data == "vm1.lab.test."));
    // The lease goes: so do its records.
    d.set("lease lab 10.0.0.10", vec![], Claim::IfFree)
        .await
        .unwrap();
    let (_, listed) = d.listing().await;
    assert!(!listed.iter().any(|l| l.name.starts_with("vm1")));
}

#[tokio::test]
async fn a_held_name_is_refused_or_taken() {
    let d = dns();
    d.set(
        "lease lab 10.0.0.10",
        vec![a("vm1.lab.test", ip(10), 30).unwrap()],
        Claim::IfFree,
    )
    .await
    .unwrap();
    // Another client asking for the same name with another address is refused...
    let e = d
        .set(
            "lease lab 10.0.0.11",
            vec![a("VM1.lab.test", ip(11), 30).unwrap()],
            Claim::IfFree,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Conflict::Held { ref holder, .. } if holder == "lease lab 10.0.0.10"),
        "{e}"
    );
    assert_eq!(
        d.holder("vm1.lab.test", ip(11)).await.as_deref(),
        Some("lease lab 10.0.0.10")
    );
    assert_eq!(d.holder("vm1.lab.test", ip(10)).await, None);
    // ...the same address from a reservation is no conflict...
    d.set(
        "reservation lab 10.0.0.10",
        vec![a("vm1.lab.test", ip(10), 30).unwrap()],
        Claim::IfFree,
    )
    .await
    .unwrap();
    // ...and a VM that moved to another address takes it from both.
    let evicted = d
        .set(
            "vm vm1",
            vec![a("vm1.lab.test", ip(12), 30).unwrap()],
            Claim::Take,
        )
        .await
        .unwrap();
    assert_eq!(evicted.len(), 2);
    let (_, listed) = d.listing().await;
    let addrs: Vec<_> = listed
        .iter()
        .filter(|l| l.name == "vm1.lab.test.")
        .map(|l| l.data.clone())
        .collect();
    assert_eq!(addrs, vec!["10.0.0.12"]);
}

#[tokio::test]
async fn records_outside_the_zones_are_refused() {
    let d = dns();
    let e = d
        .set(
            "host x",
            vec![a("x.elsewhere.test", ip(5), 30).unwrap()],
            Claim::Take,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Conflict::Outside(_)));
}

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

fn handler() -> Arc<handler::Handler> {
    let d = dns();
    Arc::new(handler::Handler::new(d.inner.clone()).unwrap())
}

#[tokio::test]
async fn answers_come_from_the_zones_and_garbage_gets_none() {
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    let h = handler();
    let src: std::net::SocketAddr = "192.0.2.9:5300".parse().unwrap();
    let ask = |name: &str| {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(fqdn(name).unwrap(), RecordType::SOA));
        m.to_vec().unwrap()
    };
    let r =
        hickory_server::server::Request::from_bytes(ask("lab.test"), src, Protocol::Udp).unwrap();
    let a = Message::from_vec(&udp::answer(&h, &r).await.unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(a.answers.len(), 1);
    // An outside name from a client outside the lab: refused, not forwarded.
    let r = hickory_server::server::Request::from_bytes(ask("example.com"), src, Protocol::Udp)
        .unwrap();
    let a = Message::from_vec(&udp::answer(&h, &r).await.unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::Refused);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Whatever arrives, the fast path's parser and the handler answer or drop it; none panics.
    #[test]
    fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let h = handler();
        rt.block_on(async {
            let _ = udp::plain(&bytes);
            let src: std::net::SocketAddr = "10.0.0.9:5300".parse().unwrap();
            if let Ok(r) = hickory_server::server::Request::from_bytes(
                bytes.clone(),
                src,
                hickory_server::net::xfer::Protocol::Udp,
            ) {
                let _ = udp::answer(&h, &r).await;
            }
        });
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Valid queries (and an update) with a few bytes changed, cut or extended: closer to what
    /// a broken client sends than random bytes, and they reach deeper into the handler.
    #[test]
    fn damaged_queries_never_panic(
        edits in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 1..6),
        cut in 0usize..90,
        update in proptest::prelude::any::<bool>(),
    ) {
        use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
        let mut m = Message::new(9, MessageType::Query, if update { OpCode::Update } else { OpCode::Query });
        m.add_query(Query::query(fqdn("vm1.lab.test").unwrap(), RecordType::A));
        m.add_answer(a("vm1.lab.test", Ipv4Addr::new(10, 0, 0, 1), 0).unwrap());
        m.set_edns(Edns::new());
        let mut bytes = m.to_vec().unwrap();
        for (i, v) in edits {
            if let Some(b) = bytes.get_mut(i) {
                *b = v;
            }
        }
        bytes.truncate(cut.max(12));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let h = handler();
        rt.block_on(async {
            let _ = udp::plain(&bytes);
            let src: std::net::SocketAddr = "10.0.0.9:5300".parse().unwrap();
            if let Ok(r) = hickory_server::server::Request::from_bytes(
                bytes,
                src,
                hickory_server::net::xfer::Protocol::Udp,
            ) {
                let _ = udp::answer(&h, &r).await;
            }
        });
    }
}

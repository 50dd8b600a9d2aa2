//! The answers, request by request, against RFC 2131's rules.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};

use super::*;

const NOW: i64 = 1_000_000;

fn pool() -> Pool {
    Pool {
        network: "lab".into(),
        interface: "eth0".into(),
        server: Ipv4Addr::new(10, 0, 0, 1),
        prefix: 24,
        range: (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102)),
        lease_time: Duration::from_secs(3600),
        domain: Some("lab.internal".into()),
        reservations: vec![Reservation {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x99]),
            client_id: None,
            hostname: None,
            ip: Ipv4Addr::new(10, 0, 0, 50),
        }],
    }
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

fn msg(kind: MessageType, m: [u8; 6]) -> Message {
    let mut r = Message::default();
    r.set_opcode(Opcode::BootRequest).set_xid(42).set_chaddr(&m);
    r.opts_mut().insert(DhcpOption::MessageType(kind));
    r.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainName,
    ]));
    r
}

fn request(m: [u8; 6], ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Message {
    let mut r = msg(MessageType::Request, m);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    if let Some(s) = server {
        r.opts_mut().insert(DhcpOption::ServerIdentifier(s));
    }
    r
}

/// Runs `req` and applies the answer as the server does.
fn step(p: &Pool, l: &mut Leases, req: &Message, now: i64) -> Option<Message> {
    let a = answer(p, l, req, now, &Stats::default());
    if let Some(h) = a.hold {
        l.put(h);
    }
    if let Some(c) = a.commit {
        l.put(c);
    }
    a.reply
}

fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

/// DISCOVER, then REQUEST of what was offered: the address.
fn dora(p: &Pool, l: &mut Leases, m: [u8; 6]) -> Ipv4Addr {
    let offer = step(p, l, &msg(MessageType::Discover, m), NOW).unwrap();
    assert_eq!(kind(&offer), MessageType::Offer);
    let ack = step(p, l, &request(m, offer.yiaddr(), Some(p.server)), NOW).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    ack.yiaddr()
}

#[test]
fn discover_request_gives_an_address_with_the_asked_options() {
    let (p, mut l) = (pool(), Leases::default());
    let offer = step(&p, &mut l, &msg(MessageType::Discover, mac(1)), NOW).unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(offer.xid(), 42);
    let o = offer.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(p.server))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.internal".into()))
    );
    // Not asked for: not sent.
    assert!(o.get(OptionCode::DomainNameServer).is_none());
    let ack = step(
        &p,
        &mut l,
        &request(mac(1), offer.yiaddr(), Some(p.server)),
        NOW,
    )
    .unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(
        l.of_client(&client_key(None, &mac(1))).unwrap().state,
        LeaseState::Bound
    );
    // A second client gets another address; the same client keeps its own.
    assert_eq!(dora(&p, &mut l, mac(2)), Ipv4Addr::new(10, 0, 0, 101));
    assert_eq!(dora(&p, &mut l, mac(1)), Ipv4Addr::new(10, 0, 0, 100));
}

#[test]
fn renew_extends_and_a_wrong_address_is_refused() {
    let (p, mut l) = (pool(), Leases::default());
    let ip = dora(&p, &mut l, mac(1));
    // RENEWING: ciaddr set, no server id, no requested address.
    let mut renew = msg(MessageType::Request, mac(1));
    renew.set_ciaddr(ip);
    let later = NOW + 1_800_000;
    let ack = step(&p, &mut l, &renew, later).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(
        l.of_client(&client_key(None, &mac(1))).unwrap().expires_ms,
        later + 3_600_000
    );
    // INIT-REBOOT asking for another client's address, or one of another network: NAK.
    let other = dora(&p, &mut l, mac(2));
    let nak = step(&p, &mut l, &request(mac(1), other, None), NOW).unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
    assert!(nak.flags().broadcast());
    let nak = step(
        &p,
        &mut l,
        &request(mac(1), Ipv4Addr::new(192, 168, 1, 5), None),
        NOW,
    )
    .unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
    // A client we never saw, INIT-REBOOTing on our network: silence (RFC 2131 4.3.2).
    assert!(step(
        &p,
        &mut l,
        &request(mac(7), Ipv4Addr::new(10, 0, 0, 102), None),
        NOW
    )
    .is_none());
}

#[test]
fn a_request_for_another_server_drops_our_offer() {
    let (p, mut l) = (pool(), Leases::default());
    let offer = step(&p, &mut l, &msg(MessageType::Discover, mac(1)), NOW).unwrap();
    let r = step(
        &p,
        &mut l,
        &request(mac(1), offer.yiaddr(), Some(Ipv4Addr::new(10, 0, 0, 2))),
        NOW,
    );
    assert!(r.is_none());
}

#[test]
fn release_frees_the_address_and_the_client_gets_it_back() {
    let (p, mut l) = (pool(), Leases::default());
    let ip = dora(&p, &mut l, mac(1));
    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(ip);
    assert!(step(&p, &mut l, &rel, NOW).is_none());
    assert_eq!(l.at(ip).unwrap().state, LeaseState::Released);
    assert_eq!(dora(&p, &mut l, mac(1)), ip);
}

#[test]
fn a_reservation_wins_over_a_dynamic_lease_and_is_kept_from_others() {
    let (p, mut l) = (pool(), Leases::default());
    let reserved = Ipv4Addr::new(10, 0, 0, 50);
    // mac 99 first held a dynamic address (before its reservation existed).
    let mut before = pool();
    before.reservations.clear();
    let dynamic = dora(&before, &mut l, mac(0x99));
    assert_ne!(dynamic, reserved);
    assert_eq!(dora(&p, &mut l, mac(0x99)), reserved);
    // Nobody else gets it, even by asking.
    let nak = step(&p, &mut l, &request(mac(3), reserved, Some(p.server)), NOW).unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
}

#[test]
fn a_declined_address_is_quarantined_and_the_pool_can_run_dry() {
    let (p, mut l) = (pool(), Leases::default());
    let ip = dora(&p, &mut l, mac(1));
    let mut dec = msg(MessageType::Decline, mac(1));
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    assert!(step(&p, &mut l, &dec, NOW).is_none());
    assert_eq!(l.at(ip).unwrap().state, LeaseState::Declined);
    let next = dora(&p, &mut l, mac(1));
    assert_ne!(next, ip);
    dora(&p, &mut l, mac(2));
    // Three addresses: one quarantined, two leased. A fourth client gets nothing...
    assert!(step(&p, &mut l, &msg(MessageType::Discover, mac(4)), NOW).is_none());
    // ... until the quarantine ends.
    let later = NOW + answer::QUARANTINE_MS + 1;
    let offer = step(&p, &mut l, &msg(MessageType::Discover, mac(4)), later).unwrap();
    assert_eq!(offer.yiaddr(), ip);
}

#[test]
fn expired_leases_are_reused() {
    let (p, mut l) = (pool(), Leases::default());
    for n in 1..=3 {
        dora(&p, &mut l, mac(n));
    }
    assert!(step(&p, &mut l, &msg(MessageType::Discover, mac(4)), NOW).is_none());
    let later = NOW + 3_600_001;
    assert!(step(&p, &mut l, &msg(MessageType::Discover, mac(4)), later).is_some());
}

#[test]
fn leases_that_ran_out_are_found_for_reclaiming() {
    let (p, mut l) = (pool(), Leases::default());
    let ip = dora(&p, &mut l, mac(1));
    assert!(l.expired(NOW + 3_599_999).is_empty());
    let ended = l.expired(NOW + 3_600_000);
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0].ip, ended[0].state), (ip, LeaseState::Released));
    l.put(ended[0].clone());
    assert!(l.expired(NOW + 7_200_000).is_empty());
}

#[test]
fn inform_gets_options_without_a_lease() {
    let (p, mut l) = (pool(), Leases::default());
    let mut inf = msg(MessageType::Inform, mac(1));
    inf.set_ciaddr(Ipv4Addr::new(10, 0, 0, 7));
    let ack = step(&p, &mut l, &inf, NOW).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    assert!(ack.yiaddr().is_unspecified());
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(l.all().count(), 0);
}

#[test]
fn replies_to_a_relay_keep_its_address() {
    let (p, mut l) = (pool(), Leases::default());
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    let offer = step(&p, &mut l, &d, NOW).unwrap();
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 0, 0, 254));
}

#[test]
fn a_bad_option_length_is_malformed_not_a_crash() {
    // A DISCOVER whose option 160 (bulk lease query base time) claims 1 byte instead of 4.
    let mut m = msg(MessageType::Discover, mac(1));
    m.opts_mut()
        .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
            OptionCode::from(160u8),
            vec![1],
        )));
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&m, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    let _ = decode(&bytes);
}

proptest::proptest! {
    /// Whatever arrives, decoding and answering never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
        if let Ok(m) = decode(&bytes) {
            let _ = answer(&pool(), &Leases::default(), &m, NOW, &Stats::default());
        }
    }
}

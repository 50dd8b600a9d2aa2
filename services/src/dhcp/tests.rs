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
        router: Ipv4Addr::new(10, 0, 0, 1),
        prefix: 24,
        relayed: false,
        range: (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102)),
        lease_time: Duration::from_secs(3600),
        domain: Some("lab.internal".into()),
        reservations: vec![Reservation {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x99]),
            client_id: None,
            hostname: None,
            ip: Ipv4Addr::new(10, 0, 0, 50),
        }],
        dns_updates: false,
        boot: Some(Boot {
            next_server: None,
            bios: Some("undionly.kpxe".into()),
            uefi: Some("ipxe.efi".into()),
            uefi_arm64: None,
            uefi_http: Some("http://10.0.0.1:8067/boot/ipxe.efi".into()),
            ipxe_script: Some("http://10.0.0.1:8080/boot.ipxe".into()),
        }),
    }
}

/// A network behind a relay at 10.0.2.1, answered from the appliance at 10.0.0.1.
fn relayed() -> Pool {
    Pool {
        network: "far".into(),
        router: Ipv4Addr::new(10, 0, 2, 1),
        relayed: true,
        range: (Ipv4Addr::new(10, 0, 2, 100), Ipv4Addr::new(10, 0, 2, 150)),
        reservations: Vec::new(),
        ..pool()
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

/// The appliance's own probe for other servers gets nothing from its own server, and holds
/// no address.
#[test]
fn the_rogue_probe_is_not_answered() {
    let (p, mut l) = (pool(), Leases::default());
    let probe = super::rogue::probe(9);
    assert!(step(&p, &mut l, &probe, NOW).is_none());
    // The first client still gets the first address: the probe held none.
    let offer = step(&p, &mut l, &msg(MessageType::Discover, mac(1)), NOW).unwrap();
    assert_eq!(offer.yiaddr(), p.range.0);
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

#[test]
fn a_relayed_request_is_answered_from_the_relays_network() {
    let (near, far) = (pool(), relayed());
    let direct = Ipv4Addr::UNSPECIFIED;
    assert!(near.serves(direct) && !far.serves(direct));
    let relay = Ipv4Addr::new(10, 0, 2, 1);
    assert!(far.serves(relay) && !near.serves(relay));
    // A relay inside the attached network (as perfdhcp is) is the attached network's.
    assert!(near.serves(Ipv4Addr::new(10, 0, 0, 254)));
    let mut l = Leases::default();
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(relay);
    let offer = step(&far, &mut l, &d, NOW).unwrap();
    assert!(far.in_range(offer.yiaddr()));
    assert_eq!(offer.giaddr(), relay);
    let opts = offer.opts();
    assert_eq!(
        opts.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![relay]))
    );
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(far.server))
    );
    // The relay's own address is never leased.
    assert!(!l.free_for(&far, relay, &who(&mac(2)), NOW));
}

fn who(m: &[u8; 6]) -> answer::Who<'static> {
    let key: &'static [u8] = Box::leak(client_key(None, m).into_boxed_slice());
    answer::Who {
        key,
        mac: *m,
        client_id: None,
        hostname: None,
    }
}

#[test]
fn the_relay_agent_information_comes_back_to_the_relay() {
    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
    let (p, mut l) = (pool(), Leases::default());
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"port7".to_vec()));
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    d.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    let offer = step(&p, &mut l, &d, NOW).unwrap();
    assert_eq!(
        offer.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info.clone()))
    );
    let mut r = request(mac(5), Ipv4Addr::new(10, 9, 9, 9), None);
    r.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    r.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
    let nak = step(&p, &mut l, &r, NOW).unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
    assert!(nak.opts().get(OptionCode::RelayAgentInformation).is_some());
}

#[test]
fn a_client_fqdn_names_the_lease_and_is_answered_whole() {
    use dhcproto::v4::fqdn::{ClientFQDN, FqdnFlags};
    let (p, mut l) = (pool(), Leases::default());
    let mut name = dhcproto::Name::from_ascii("vm7").unwrap();
    name.set_fqdn(false);
    let f = ClientFQDN::new(FqdnFlags::new(0).set_e(true).set_s(true), name);
    let mut d = msg(MessageType::Discover, mac(7));
    d.opts_mut().insert(DhcpOption::ClientFQDN(f.clone()));
    let offer = step(&p, &mut l, &d, NOW).unwrap();
    let mut r = request(mac(7), offer.yiaddr(), Some(p.server));
    r.opts_mut().insert(DhcpOption::ClientFQDN(f));
    let ack = step(&p, &mut l, &r, NOW).unwrap();
    assert_eq!(l.at(ack.yiaddr()).unwrap().hostname.as_deref(), Some("vm7"));
    let Some(DhcpOption::ClientFQDN(back)) = ack.opts().get(OptionCode::ClientFQDN) else {
        panic!("no FQDN in the ACK");
    };
    assert_eq!(back.domain().to_ascii(), "vm7.lab.internal.");
    assert!(back.flags().e() && !back.flags().s() && !back.flags().n());
    assert_eq!((back.r1(), back.r2()), (255, 255));
    // Where the appliance's DNS names the clients, it says it does (and overrides a client
    // that wanted to do it itself).
    let p = Pool {
        dns_updates: true,
        ..p
    };
    let mut own = dhcproto::Name::from_ascii("vm8").unwrap();
    own.set_fqdn(false);
    let mut r = request(mac(8), offer.yiaddr(), Some(p.server));
    r.opts_mut().insert(DhcpOption::ClientFQDN(ClientFQDN::new(
        FqdnFlags::new(0).set_e(true),
        own,
    )));
    let ack = step(&p, &mut Leases::default(), &r, NOW).unwrap();
    let Some(DhcpOption::ClientFQDN(back)) = ack.opts().get(OptionCode::ClientFQDN) else {
        panic!("no FQDN in the ACK");
    };
    assert!(back.flags().s() && back.flags().o() && !back.flags().n());
    // It survives the wire.
    let bytes = encode(&mut ack.clone(), &r).unwrap();
    assert!(decode(&bytes)
        .unwrap()
        .opts()
        .get(OptionCode::ClientFQDN)
        .is_some());
}

fn booting(arch: Option<u16>, user_class: Option<&[u8]>) -> Message {
    let mut d = msg(MessageType::Discover, mac(9));
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    if let Some(a) = arch {
        d.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(a.into()));
    }
    if let Some(u) = user_class {
        d.opts_mut().insert(DhcpOption::UserClass(u.to_vec()));
    }
    d
}

#[test]
fn a_booting_client_gets_the_file_for_its_firmware() {
    let p = pool();
    let file = |m: &Message| {
        let offer = step(&p, &mut Leases::default(), m, NOW).unwrap();
        let opt67 = match offer.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8(b.clone()).unwrap()),
            _ => None,
        };
        let header = offer.fname_str().and_then(|r| r.ok()).map(str::to_string);
        assert_eq!(
            opt67,
            header.filter(|h| !h.is_empty()),
            "option 67 and the file field agree"
        );
        if opt67.is_some() {
            assert_eq!(offer.siaddr(), p.server, "next server");
            assert_eq!(
                offer.opts().get(OptionCode::ClassIdentifier),
                Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
            );
        }
        opt67
    };
    assert_eq!(
        file(&booting(Some(0), None)).as_deref(),
        Some("undionly.kpxe")
    );
    assert_eq!(file(&booting(Some(7), None)).as_deref(), Some("ipxe.efi"));
    assert_eq!(file(&booting(Some(9), None)).as_deref(), Some("ipxe.efi"));
    assert_eq!(
        file(&booting(Some(11), None)),
        None,
        "no ARM64 file configured"
    );
    assert_eq!(
        file(&booting(Some(0), Some(b"iPXE"))).as_deref(),
        Some("http://10.0.0.1:8080/boot.ipxe"),
        "iPXE chains to the script"
    );
    assert_eq!(
        file(&msg(MessageType::Discover, mac(9))),
        None,
        "not booting"
    );
}

/// UEFI HTTP boot (OVMF's DISCOVER: vendor class HTTPClient, architecture 16): the offer
/// carries the URL as its boot file and echoes the vendor class, with no TFTP server; PXE
/// firmware on the same machine still gets its TFTP file.
#[test]
fn uefi_http_boot_gets_a_url_and_its_vendor_class_back() {
    let p = pool();
    let mut d = msg(MessageType::Discover, mac(9));
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003000".to_vec(),
    ));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(16.into()));
    let offer = step(&p, &mut Leases::default(), &d, NOW).unwrap();
    assert_eq!(
        offer.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(
            b"http://10.0.0.1:8067/boot/ipxe.efi".to_vec()
        ))
    );
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert!(offer.opts().get(OptionCode::TFTPServerName).is_none());
    // The discovery sees an HTTP-booting client too.
    let b = super::answer::booting(&d).unwrap();
    assert_eq!(b.arch, Some(16));
    // Without a URL configured, nothing to boot: no file, no class.
    let mut q = pool();
    q.boot.as_mut().unwrap().uefi_http = None;
    let offer = step(&q, &mut Leases::default(), &d, NOW).unwrap();
    assert!(offer.opts().get(OptionCode::BootfileName).is_none());
    assert!(offer.opts().get(OptionCode::ClassIdentifier).is_none());
}

#[test]
fn a_reply_is_cut_to_the_clients_maximum_message_size() {
    let mut p = pool();
    let long = "x".repeat(200);
    p.domain = Some(format!("{}.internal", "d".repeat(60)));
    p.boot.as_mut().unwrap().bios = Some(long.clone());
    let mut d = booting(Some(0), None);
    d.opts_mut().insert(DhcpOption::Hostname("h".repeat(200)));
    let mut r = request(mac(9), Ipv4Addr::new(10, 0, 0, 100), Some(p.server));
    for (c, o) in d.opts().iter() {
        if *c != OptionCode::MessageType {
            r.opts_mut().insert(o.clone());
        }
    }
    let mut ack = step(&p, &mut Leases::default(), &r, NOW).unwrap();
    assert_eq!(kind(&ack), MessageType::Ack);
    let whole = encode(&mut ack.clone(), &{
        let mut big = r.clone();
        big.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        big
    })
    .unwrap();
    assert!(
        whole.len() > 548,
        "the test needs a big reply, got {}",
        whole.len()
    );
    let cut = encode(&mut ack, &r).unwrap();
    assert!(cut.len() <= 548, "{} bytes", cut.len());
    let back = decode(&cut).unwrap();
    for c in [
        OptionCode::MessageType,
        OptionCode::ServerIdentifier,
        OptionCode::AddressLeaseTime,
        OptionCode::SubnetMask,
    ] {
        assert!(back.opts().get(c).is_some(), "{c:?} kept");
    }
}

#[test]
fn a_reserved_address_held_by_another_is_not_given_twice() {
    let (p, mut l) = (pool(), Leases::default());
    let reserved = Ipv4Addr::new(10, 0, 0, 50);
    // Someone else holds it (a lease from before the reservation existed).
    l.put(Lease {
        ip: reserved,
        client: client_key(None, &mac(3)),
        mac: mac(3),
        hostname: None,
        state: LeaseState::Bound,
        expires_ms: NOW + 60_000,
    });
    let got = dora(&p, &mut l, mac(0x99));
    assert_ne!(got, reserved);
    // The holder is refused at renewal, and then the reservation is honoured.
    let mut renew = request(mac(3), reserved, None);
    renew.set_ciaddr(reserved);
    assert_eq!(
        kind(&step(&p, &mut l, &renew, NOW).unwrap()),
        MessageType::Nak
    );
    let later = NOW + 60_001;
    let offer = step(&p, &mut l, &msg(MessageType::Discover, mac(0x99)), later).unwrap();
    assert_eq!(offer.yiaddr(), reserved);
}

proptest::proptest! {
    /// Whatever arrives, decoding, answering and encoding the answer never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
        if let Ok(m) = decode(&bytes) {
            let a = answer(&pool(), &Leases::default(), &m, NOW, &Stats::default());
            if let Some(mut r) = a.reply {
                let _ = encode(&mut r, &m);
            }
        }
    }
}

//! NOTIFY (RFC 1996): each configured secondary hears of every change, so that it transfers the
//! zone at once instead of at its next refresh. Changes come in bursts (a DHCP storm, a batch of
//! moves): one NOTIFY per zone per burst.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Inner, Stats};

/// How long changes are gathered before the secondaries are told.
const GATHER: Duration = Duration::from_millis(200);
const TRIES: u32 = 5;

pub(crate) async fn run(inner: Arc<Inner>, mut rx: UnboundedReceiver<LowerName>) {
    while let Some(first) = rx.recv().await {
        let mut zones = BTreeSet::from([first]);
        tokio::time::sleep(GATHER).await;
        while let Ok(z) = rx.try_recv() {
            zones.insert(z);
        }
        for zone in zones {
            for to in &inner.settings.secondaries {
                tokio::spawn(send(inner.clone(), zone.clone(), *to));
            }
        }
    }
}

async fn send(inner: Arc<Inner>, zone: LowerName, to: SocketAddr) {
    let id: u16 = rand_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(Name::from(&zone), RecordType::SOA));
    let Ok(bytes) = m.to_vec() else {
        return;
    };
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return;
    };
    let mut buf = [0u8; 512];
    for attempt in 0..TRIES {
        if sock.send_to(&bytes, to).await.is_err() {
            break;
        }
        let wait = Duration::from_secs(1 << attempt.min(3));
        if let Ok(Ok((n, from))) = tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            if from.ip() == to.ip() && n >= 12 && buf[..2] == id.to_be_bytes() {
                Stats::add(&inner.stats.notifies_sent);
                return;
            }
        }
    }
    Stats::add(&inner.stats.notifies_unanswered);
    inner.store.said(
        "dns.notify",
        format!("secondary {to} did not answer the NOTIFY for {zone} ({TRIES} tries)"),
    );
}

/// An ID nobody can guess in advance is enough here (the answer is also checked by source).
fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16
}

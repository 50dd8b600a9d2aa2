//! Conflict detection before an offer (RFC 2131 2.2: "the server SHOULD probe the reused
//! address ... e.g., with an ICMP echo request"): an address the server has no record of is
//! pinged, and one that answers is not offered. One raw ICMP socket serves every probe.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

type Waiting = Arc<Mutex<HashMap<Ipv4Addr, Vec<oneshot::Sender<()>>>>>;

pub struct Prober {
    sock: Arc<AsyncFd<Socket>>,
    waiting: Waiting,
    id: u16,
    seq: std::sync::atomic::AtomicU16,
}

impl Prober {
    /// Opens the raw socket (needs CAP_NET_RAW) and starts reading echo replies.
    pub fn new() -> std::io::Result<Prober> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_nonblocking(true)?;
        // SAFETY: the socket is owned by the AsyncFd and keeps its descriptor until dropped.
        let sock = Arc::new(unsafe { AsyncFd::register(s) }?);
        let waiting: Waiting = Default::default();
        let id = (std::process::id() as u16) ^ 0x4e4d;
        tokio::spawn(receive(sock.clone(), waiting.clone(), id));
        Ok(Prober {
            sock,
            waiting,
            id,
            seq: Default::default(),
        })
    }

    /// Whether something answers at `ip` within `wait`: two echo requests, half the wait
    /// apart, so that one lost packet does not make a used address look free.
    pub async fn in_use(&self, ip: Ipv4Addr, wait: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("probe lock")
            .entry(ip)
            .or_default()
            .push(tx);
        let send = async {
            for _ in 0..2 {
                let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let pkt = echo_request(self.id, seq);
                let to: socket2::SockAddr = SocketAddr::from((ip, 0)).into();
                loop {
                    let mut guard = match self.sock.writable().await {
                        Ok(g) => g,
                        Err(_) => break,
                    };
                    match guard.try_io(|s| s.get_ref().send_to(&pkt, &to)) {
                        Ok(_) => break,
                        Err(_would_block) => continue,
                    }
                }
                tokio::time::sleep(wait / 2).await;
            }
            std::future::pending::<()>().await
        };
        let answered = tokio::select! {
            r = rx => r.is_ok(),
            _ = tokio::time::timeout(wait, send) => false,
        };
        if !answered {
            self.waiting.lock().expect("probe lock").remove(&ip);
        }
        answered
    }
}

async fn receive(sock: Arc<AsyncFd<Socket>>, waiting: Waiting, id: u16) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let Ok(mut guard) = sock.readable().await else {
            return;
        };
        let n = match guard.try_io(|s| s.get_ref().recv(&mut buf)) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!("DHCP conflict probe: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        // SAFETY: recv initialized the first n bytes.
        let pkt: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(from) = echo_reply_from(&pkt, id) {
            if let Some(txs) = waiting.lock().expect("probe lock").remove(&from) {
                for tx in txs {
                    let _ = tx.send(());
                }
            }
        }
    }
}

fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"netmigrate dhcp probe");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The sender of an ICMP echo reply to one of our probes (the IP header included, as a raw
/// socket delivers it).
fn echo_reply_from(pkt: &[u8], id: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..)?;
    if icmp.len() < 8 || icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checks_out_and_a_reply_is_matched_by_id() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        let mut reply = vec![
            0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 9, 10, 0, 0, 1,
        ];
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert_eq!(
            echo_reply_from(&reply, 0x1234),
            Some(Ipv4Addr::new(10, 0, 0, 9))
        );
        assert_eq!(echo_reply_from(&reply, 0x9999), None, "someone else's ping");
        assert_eq!(echo_reply_from(&reply[..22], 0x1234), None, "truncated");
        reply[20] = 8;
        assert_eq!(
            echo_reply_from(&reply, 0x1234),
            None,
            "a request is no reply"
        );
    }
}

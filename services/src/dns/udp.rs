//! DNS over UDP: SO_REUSEPORT sockets, one task each, with a packet cache in front of the
//! handler (PowerDNS's design). A plain query (one question, at most an OPT record, no TSIG)
//! whose authoritative answer is cached is answered by copying the answer and patching in the
//! query's ID and the question's spelling; the cache is dropped whenever a zone changes, so it
//! never serves what the zones no longer say. Questions for other names (forwarding) run in
//! their own task so that a slow upstream holds up nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::handler::Handler;
use super::{DnsError, Stats};

/// Answers kept per socket before the cache starts over.
const CACHE_ENTRIES: usize = 100_000;

pub(crate) fn serve(
    addr: SocketAddr,
    handler: Arc<Handler>,
    workers: usize,
) -> Result<Vec<JoinHandle<()>>, DnsError> {
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let sock = bind(addr).map_err(|source| DnsError::Listen { addr, source })?;
        tasks.push(tokio::spawn(run(Arc::new(sock), handler.clone())));
    }
    Ok(tasks)
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Bursts from many clients: a bigger queue drops fewer (best effort, capped by rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The parts of a query the fast path needs.
pub(crate) struct Plain {
    /// Where the question's name ends (it starts at 12).
    name_end: usize,
    /// Where what the answer depends on ends: the question and the OPT record's fixed part.
    /// The OPT's options (a client cookie, different in each query of dig) change nothing in
    /// the answer, which echoes none of them.
    key_end: usize,
}

/// A query the cache can answer: QUERY, one question with an uncompressed name, no answer or
/// authority records, and at most one additional record, an OPT that ends the packet.
pub(crate) fn plain(q: &[u8]) -> Option<Plain> {
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    if q.len() < 12 || q[2] & 0xF8 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return None;
    }
    let mut i = 12;
    loop {
        let l = usize::from(*q.get(i)?);
        if l == 0 {
            i += 1;
            break;
        }
        if l & 0xC0 != 0 || i - 12 > 255 {
            return None;
        }
        i += 1 + l;
    }
    let name_end = i;
    let end = name_end + 4;
    let mut key_end = end;
    match count(10) {
        0 if end == q.len() => {}
        1 => {
            key_end = end + 9;
            // OPT: root name, type 41, class, TTL, RDLENGTH, RDATA to the end.
            let opt = q.get(end..end + 11)?;
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            if opt[0] != 0 || opt[1..3] != [0, 41] || end + 11 + rdlen != q.len() {
                return None;
            }
        }
        _ => return None,
    }
    Some(Plain { name_end, key_end })
}

/// An answer worth keeping: authoritative, complete, NOERROR or NXDOMAIN.
fn cacheable(r: &[u8]) -> bool {
    r.len() >= 12 && r[2] & 0x04 != 0 && r[2] & 0x02 == 0 && matches!(r[3] & 0x0F, 0 | 3)
}

#[derive(Default)]
struct Cache {
    generation: u64,
    answers: HashMap<Vec<u8>, Vec<u8>>,
}

async fn run(sock: Arc<UdpSocket>, h: Arc<Handler>) {
    let mut buf = vec![0u8; 65_535];
    let mut key = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(512);
    let mut cache = Cache::default();
    let stats = &h.inner.stats;
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("DNS: receive failed: {e}");
                continue;
            }
        };
        let q = &buf[..n];
        if n < 12 || q[2] & 0x80 != 0 {
            // Too short for a header, or a response: answering responses lets a spoofed one
            // start a loop between two servers.
            Stats::add(&stats.malformed);
            continue;
        }
        let generation = h.inner.generation.load(Ordering::Acquire);
        if generation != cache.generation {
            cache.answers.clear();
            cache.generation = generation;
        }
        let fast = plain(q);
        if let Some(p) = &fast {
            key.clear();
            key.extend_from_slice(&q[2..p.key_end]);
            key[10..p.name_end - 2].make_ascii_lowercase();
            if let Some(a) = cache.answers.get(&key[..]) {
                Stats::add(&stats.queries);
                Stats::add(&stats.cache_hits);
                out.clear();
                out.extend_from_slice(a);
                out[..2].copy_from_slice(&q[..2]);
                out[12..p.name_end].copy_from_slice(&q[12..p.name_end]);
                let _ = sock.send_to(&out, src).await;
                continue;
            }
        }
        let request = match Request::from_bytes(q.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                // A query whose header reads but whose rest does not: FORMERR, as RFC 1035
                // asks (the header alone, with the ID, opcode and RD echoed).
                Stats::add(&stats.malformed);
                let mut e = [0u8; 12];
                e[..2].copy_from_slice(&q[..2]);
                e[2] = 0x80 | (q[2] & 0x79);
                e[3] = 1;
                let _ = sock.send_to(&e, src).await;
                continue;
            }
        };
        let ours = request
            .request_info()
            .map(|i| h.ours(i.query.name()))
            .unwrap_or(true);
        if !ours {
            // Forwarded (or refused): never cached here, the resolver caches upstream answers.
            let (h, sock) = (h.clone(), sock.clone());
            tokio::spawn(async move {
                if let Some(a) = answer(&h, &request).await {
                    let _ = sock.send_to(&a, src).await;
                }
            });
            continue;
        }
        let Some(a) = answer(&h, &request).await else {
            continue;
        };
        let _ = sock.send_to(&a, src).await;
        let unchanged = h.inner.generation.load(Ordering::Acquire) == generation;
        if fast.is_some() && unchanged && cacheable(&a) {
            if cache.answers.len() >= CACHE_ENTRIES {
                cache.answers.clear();
            }
            cache.answers.insert(key.clone(), a);
        }
    }
}

/// The handler's answer to `request`, encoded within the size the client allows.
pub(crate) async fn answer(h: &Handler, request: &Request) -> Option<Vec<u8>> {
    let capture = Capture {
        max: request.max_payload().max(512),
        out: Arc::new(Mutex::new(None)),
    };
    h.handle_request::<Capture, TokioTime>(request, capture.clone())
        .await;
    let out = capture.out.lock().expect("capture lock").take();
    out
}

/// A response handler that keeps the encoded answer instead of sending it.
#[derive(Clone)]
struct Capture {
    max: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let info = {
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(self.max);
            response.destructive_emit(&mut encoder)?
        };
        *self.out.lock().expect("capture lock") = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], opt: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt)];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if opt {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn plain_queries_are_recognised() {
        let name = b"\x03vm1\x03lab\x00";
        let p = plain(&query(name, false)).expect("plain");
        assert_eq!(p.name_end, 12 + name.len());
        assert!(plain(&query(name, true)).is_some());
        // A compressed name, an update, a truncated packet, a trailing byte: not plain.
        assert!(plain(&query(b"\xc0\x0c", false)).is_none());
        let mut update = query(name, false);
        update[2] = 0x28;
        assert!(plain(&update).is_none());
        let mut response = query(name, false);
        response[2] |= 0x80;
        assert!(plain(&response).is_none());
        assert!(plain(&query(name, false)[..20]).is_none());
        let mut extra = query(name, false);
        extra.push(0);
        assert!(plain(&extra).is_none());
    }

    #[test]
    fn only_complete_authoritative_answers_are_cached() {
        let mut r = [0u8; 12];
        r[2] = 0x84;
        assert!(cacheable(&r));
        r[3] = 3;
        assert!(cacheable(&r));
        r[3] = 5;
        assert!(!cacheable(&r));
        r[3] = 0;
        r[2] = 0x86;
        assert!(!cacheable(&r));
        r[2] = 0x80;
        assert!(!cacheable(&r));
    }
}

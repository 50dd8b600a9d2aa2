//! An HTTP prober that measures service break time, as the paper's outside client did: a new
//! TCP connection and a GET every interval, from inside a client namespace. The break is the
//! longest gap between two successive successful answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::netns;

#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub attempts: u64,
    pub successes: u64,
    /// Longest gap between successive successes (0 with fewer than two successes).
    pub break_time: Duration,
    /// When (since the prober started) the longest gap began.
    pub break_at: Duration,
    pub elapsed: Duration,
}

pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ProbeReport>,
}

impl Prober {
    /// Probes `addr` (port 80) from `ns` every `interval`, each try bounded by `timeout`.
    pub fn start(
        ns: &str,
        addr: SocketAddr,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = netns::in_ns(ns, move || probe_loop(addr, interval, timeout, &s))?;
        Ok(Prober { stop, handle })
    }

    pub fn finish(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn get_ok(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.") && buf.get(8..13).is_some_and(|c| c == b" 200 ")
}

fn probe_loop(
    addr: SocketAddr,
    interval: Duration,
    timeout: Duration,
    stop: &AtomicBool,
) -> ProbeReport {
    let start = Instant::now();
    let mut r = ProbeReport::default();
    let mut last_ok: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        r.attempts += 1;
        if get_ok(addr, timeout) {
            let now = Instant::now();
            if let Some(prev) = last_ok {
                let gap = now - prev;
                if gap > r.break_time {
                    r.break_time = gap;
                    r.break_at = prev - start;
                }
            }
            last_ok = Some(now);
            r.successes += 1;
        }
        if let Some(rest) = interval.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    r.elapsed = start.elapsed();
    r
}

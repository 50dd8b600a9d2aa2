//! The built-in break-time probe: a new TCP connection to the VM's service every interval,
//! an HTTP GET with a short timeout; the break is the longest gap between two answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_millis(100);

/// What the probe saw.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Probed {
    /// Longest time between two successful answers (ms).
    pub break_ms: u64,
    pub probes: u64,
    pub failures: u64,
    /// Whether the last probe was answered (else the VM had not come back when probing ended).
    pub recovered: bool,
    /// When probing began (unix ms), the origin of `samples`.
    #[serde(default)]
    pub started_ms: i64,
    /// Each probe: `[ms since started_ms, response time in ms or -1 when unanswered]`, for the
    /// break-time chart (at most `MAX_SAMPLES`).
    #[serde(default)]
    pub samples: Vec<[i64; 2]>,
}

/// 10 minutes of probes at the default interval.
pub const MAX_SAMPLES: usize = 60_000;

pub struct Probe {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Probed>,
}

/// One probe: connect, send a GET, read the status line.
async fn once(addr: SocketAddr, host: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET / HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.ok()?;
        buf.starts_with(b"HTTP/").then_some(())
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

impl Probe {
    /// Starts probing `addr` every `interval`; `finish` ends it.
    pub fn start(addr: SocketAddr, interval: Duration) -> Probe {
        let (stop, mut stopped) = oneshot::channel();
        let host = addr.ip().to_string();
        let task = tokio::spawn(async move {
            let mut seen = Probed {
                started_ms: crate::state::now_ms(),
                ..Probed::default()
            };
            let origin = Instant::now();
            let mut last_ok: Option<Instant> = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let sent = Instant::now();
                let ok = once(addr, &host).await;
                seen.probes += 1;
                let now = Instant::now();
                if seen.samples.len() < MAX_SAMPLES {
                    let at = sent.duration_since(origin).as_millis() as i64;
                    let took = if ok {
                        now.duration_since(sent).as_millis() as i64
                    } else {
                        -1
                    };
                    seen.samples.push([at, took]);
                }
                if ok {
                    if let Some(prev) = last_ok {
                        let gap = now.duration_since(prev).as_millis() as u64;
                        if gap > seen.break_ms {
                            seen.break_ms = gap;
                        }
                    }
                    last_ok = Some(now);
                } else {
                    seen.failures += 1;
                    if let Some(prev) = last_ok {
                        // Not back (yet): the gap so far counts.
                        let gap = now.duration_since(prev).as_millis() as u64;
                        seen.break_ms = seen.break_ms.max(gap);
                    }
                }
                seen.recovered = ok;
            }
            seen
        });
        Probe { stop, task }
    }

    pub async fn finish(self) -> Probed {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

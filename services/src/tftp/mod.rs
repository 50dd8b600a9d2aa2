//! A read-only TFTP server for boot files: RFC 1350, with option negotiation (RFC 2347),
//! `blksize` (RFC 2348), `tsize` and `timeout` (RFC 2349). It listens on the address of each
//! network it serves, bound to that interface (SO_BINDTODEVICE), and each transfer runs from its
//! own port as the RFC asks. Files come from one directory; a name that leads out of it, by
//! `..` or by a symbolic link, is refused, and so is every write.

pub mod packet;
mod transfer;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::files::Refusal;
use packet::{code, Packet};

pub const PORT: u16 = 69;
/// The largest block RFC 2348 allows.
pub const MAX_BLKSIZE: usize = 65464;
/// RFC 1350's block size, when the client asks for none.
pub const DEFAULT_BLKSIZE: usize = 512;
/// Transfers running at once; more are told the server is busy.
pub const MAX_TRANSFERS: usize = 128;
/// Resends of one packet before a transfer is given up.
pub const RETRIES: u32 = 5;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP: cannot listen on {addr}{}: {source}", on_iface(.interface))]
    Listen {
        addr: SocketAddr,
        interface: Option<String>,
        source: std::io::Error,
    },
    #[error("TFTP: boot directory {}: {source}", .dir.display())]
    Root {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn on_iface(i: &Option<String>) -> String {
    i.as_ref().map(|i| format!(" ({i})")).unwrap_or_default()
}

/// Counters, as `status` shows them.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub sent: AtomicU64,
    pub bytes: AtomicU64,
    pub not_found: AtomicU64,
    /// Writes, and names leading out of the boot directory.
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    /// Transfers the client stopped or stopped answering.
    pub aborted: AtomicU64,
    pub busy: AtomicU64,
}

impl Stats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", g(&self.requests)),
            ("sent", g(&self.sent)),
            ("bytes", g(&self.bytes)),
            ("not_found", g(&self.not_found)),
            ("refused", g(&self.refused)),
            ("malformed", g(&self.malformed)),
            ("aborted", g(&self.aborted)),
            ("busy", g(&self.busy)),
        ]
    }
}

/// What every listener of one server shares.
pub struct Server {
    root: PathBuf,
    pub stats: Arc<Stats>,
    slots: Arc<Semaphore>,
}

impl Server {
    /// A server for the files under `root` (created if missing).
    pub fn new(root: &Path) -> Result<Arc<Server>, TftpError> {
        let err = |source| TftpError::Root {
            dir: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(err)?;
        Ok(Arc::new(Server {
            root: root.canonicalize().map_err(err)?,
            stats: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_TRANSFERS)),
        }))
    }

    /// Listens on `addr`:`port` (69 unless a test says otherwise), on `interface` only.
    pub fn listen(
        self: &Arc<Self>,
        addr: Ipv4Addr,
        port: u16,
        interface: Option<&str>,
    ) -> Result<tokio::task::JoinHandle<()>, TftpError> {
        let at = SocketAddr::from((addr, port));
        let sock = bind(at, interface).map_err(|source| TftpError::Listen {
            addr: at,
            interface: interface.map(str::to_string),
            source,
        })?;
        let me = self.clone();
        let iface = interface.map(str::to_string);
        Ok(tokio::spawn(async move { me.run(sock, addr, iface).await }))
    }

    async fn run(self: Arc<Self>, sock: UdpSocket, local: Ipv4Addr, iface: Option<String>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("TFTP on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            Stats::add(&self.stats.requests, 1);
            let reply = match packet::parse(&buf[..n]) {
                Err(e) => {
                    Stats::add(&self.stats.malformed, 1);
                    tracing::debug!(%from, "{e}");
                    Some(packet::error(code::ILLEGAL, &e.to_string()))
                }
                Ok(Packet::Read(req)) => self.start(req, from, local, iface.as_deref()),
                Ok(Packet::Write(req)) => {
                    Stats::add(&self.stats.refused, 1);
                    tracing::info!(%from, file = %req.filename, "TFTP write refused");
                    Some(packet::error(code::ACCESS, "this server is read-only"))
                }
                // An ACK or ERROR for a transfer that ended: nothing to answer.
                Ok(Packet::Ack(_)) | Ok(Packet::Error { .. }) => None,
                Ok(Packet::Unexpected(_)) => {
                    Stats::add(&self.stats.malformed, 1);
                    Some(packet::error(code::ILLEGAL, "only read requests come here"))
                }
            };
            if let Some(r) = reply {
                let _ = sock.send_to(&r, from).await;
            }
        }
    }

    /// Starts a read; returns the error to send from the server's port when it cannot start.
    fn start(
        self: &Arc<Self>,
        req: packet::Request,
        from: SocketAddr,
        local: Ipv4Addr,
        iface: Option<&str>,
    ) -> Option<Vec<u8>> {
        let path = match crate::files::resolve(&self.root, &req.filename) {
            Ok(p) => p,
            Err(r) => {
                let (counter, c) = match r {
                    Refusal::Missing(_) => (&self.stats.not_found, code::NOT_FOUND),
                    Refusal::Escape => (&self.stats.refused, code::ACCESS),
                };
                Stats::add(counter, 1);
                tracing::info!(%from, file = %req.filename, "TFTP read refused: {}", r.why());
                return Some(packet::error(c, r.why()));
            }
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            Stats::add(&self.stats.busy, 1);
            return Some(packet::error(code::UNDEFINED, "server busy, try again"));
        };
        // The transfer's own port (its TID), on the same address and interface.
        let sock = match bind(SocketAddr::from((local, 0)), iface) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("TFTP: no port for a transfer: {e}");
                return Some(packet::error(code::UNDEFINED, "server out of ports"));
            }
        };
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let name = req.filename.clone();
            match transfer::send(&sock, from, &path, req).await {
                Ok(bytes) => {
                    Stats::add(&stats.sent, 1);
                    Stats::add(&stats.bytes, bytes);
                    tracing::debug!(%from, file = %name, bytes, "TFTP sent");
                }
                Err(e) => {
                    Stats::add(&stats.aborted, 1);
                    tracing::info!(%from, file = %name, "TFTP transfer ended: {e}");
                }
            }
        });
        None
    }
}

fn bind(addr: SocketAddr, interface: Option<&str>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests;

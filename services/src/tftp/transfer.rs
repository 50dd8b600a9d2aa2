//! One read transfer: options answered, then lock-step DATA/ACK with resends on timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

use super::packet::{self, code, Mode, Packet, Request};
use super::{DEFAULT_BLKSIZE, DEFAULT_TIMEOUT, MAX_BLKSIZE, RETRIES};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no answer after {0} resends")]
    Timeout(u32),
    #[error("the client said: {0}")]
    Client(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What was agreed with the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Agreed {
    pub blksize: usize,
    pub timeout: Duration,
    /// The options to confirm in an OACK; empty: no OACK, data starts at once.
    pub reply: Vec<(String, String)>,
}

/// Answers the options this server knows (RFC 2348, 2349); others are left out of the OACK,
/// which tells the client they were not taken. `size` is what the transfer will send.
pub fn negotiate(options: &[(String, String)], size: u64) -> Agreed {
    let mut a = Agreed {
        blksize: DEFAULT_BLKSIZE,
        timeout: DEFAULT_TIMEOUT,
        reply: Vec::new(),
    };
    for (k, v) in options {
        match k.as_str() {
            "blksize" => {
                if let Ok(n) = v.parse::<usize>() {
                    if n >= 8 {
                        a.blksize = n.min(MAX_BLKSIZE);
                        a.reply.push((k.clone(), a.blksize.to_string()));
                    }
                }
            }
            "tsize" => a.reply.push((k.clone(), size.to_string())),
            "timeout" => {
                if let Ok(s @ 1..=255) = v.parse::<u64>() {
                    a.timeout = Duration::from_secs(s);
                    a.reply.push((k.clone(), s.to_string()));
                }
            }
            _ => {}
        }
    }
    a
}

/// Bytes of a file as a mode sends them: netascii makes LF into CR LF and CR into CR NUL.
struct Source {
    file: tokio::fs::File,
    mode: Mode,
    pending: Vec<u8>,
    eof: bool,
}

impl Source {
    /// The next `n` bytes (fewer only at the end).
    async fn next(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut raw = vec![0u8; 64 * 1024];
        while self.pending.len() < n && !self.eof {
            let got = self.file.read(&mut raw).await?;
            if got == 0 {
                self.eof = true;
            }
            match self.mode {
                Mode::Octet => self.pending.extend_from_slice(&raw[..got]),
                Mode::Netascii => netascii(&raw[..got], &mut self.pending),
            }
        }
        let take = n.min(self.pending.len());
        Ok(self.pending.drain(..take).collect())
    }
}

fn netascii(raw: &[u8], out: &mut Vec<u8>) {
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
}

/// The size a file has on the wire in `mode`.
async fn wire_size(path: &Path, mode: Mode) -> std::io::Result<u64> {
    let len = tokio::fs::metadata(path).await?.len();
    if mode == Mode::Octet {
        return Ok(len);
    }
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut extra = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(len + extra);
        }
        extra += buf[..n]
            .iter()
            .filter(|b| **b == b'\n' || **b == b'\r')
            .count() as u64;
    }
}

/// Sends `path` to `peer` from `sock` as `req` asks; returns the bytes sent.
pub async fn send(
    sock: &UdpSocket,
    peer: SocketAddr,
    path: &Path,
    req: Request,
) -> Result<u64, TransferError> {
    let size = if req.options.iter().any(|(k, _)| k == "tsize") {
        wire_size(path, req.mode).await?
    } else {
        0
    };
    let agreed = negotiate(&req.options, size);
    let mut src = Source {
        file: tokio::fs::File::open(path).await?,
        mode: req.mode,
        pending: Vec::new(),
        eof: false,
    };
    if !agreed.reply.is_empty() {
        // RFC 2347: the OACK is acknowledged with block 0.
        exchange(sock, peer, &packet::oack(&agreed.reply), 0, agreed.timeout).await?;
    }
    let mut block: u16 = 1;
    let mut sent = 0u64;
    loop {
        let chunk = src.next(agreed.blksize).await?;
        exchange(
            sock,
            peer,
            &packet::data(block, &chunk),
            block,
            agreed.timeout,
        )
        .await?;
        sent += chunk.len() as u64;
        if chunk.len() < agreed.blksize {
            return Ok(sent);
        }
        // Past 65535 blocks the number rolls over to 0, as tftp-hpa, curl and iPXE expect.
        block = block.wrapping_add(1);
    }
}

/// Sends `pkt` and waits for the ACK of `block`, resending on timeout. A duplicate ACK of
/// an earlier block is not answered (RFC 1350's Sorcerer's Apprentice bug); a packet from
/// another port gets "unknown transfer ID" and the transfer goes on.
async fn exchange(
    sock: &UdpSocket,
    peer: SocketAddr,
    pkt: &[u8],
    block: u16,
    timeout: Duration,
) -> Result<(), TransferError> {
    let mut buf = vec![0u8; 1024];
    for _ in 0..=RETRIES {
        sock.send_to(pkt, peer).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let Ok(got) = got else { break };
            let (n, from) = got?;
            if from != peer {
                let e = packet::error(code::UNKNOWN_TID, "unknown transfer ID");
                let _ = sock.send_to(&e, from).await;
                continue;
            }
            match packet::parse(&buf[..n]) {
                Ok(Packet::Ack(b)) if b == block => return Ok(()),
                Ok(Packet::Error { code, message }) => {
                    return Err(TransferError::Client(format!("{message} (code {code})")))
                }
                _ => {}
            }
        }
    }
    let _ = sock
        .send_to(&packet::error(code::UNDEFINED, "timed out"), peer)
        .await;
    Err(TransferError::Timeout(RETRIES))
}

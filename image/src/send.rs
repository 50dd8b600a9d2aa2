//! Sending a published image into a socket with sendfile(2): no copy through user space.
//!
//! The bytes are not hashed on the way out (that would cost more CPU than the copy saves):
//! the receiver checks them against the published `.sha256` — the migration engine's targets
//! always do — and `Store::verify` re-reads the store for bit rot. Uploads still in progress
//! are not sent this way; their readers follow the writer (`Store::read`).

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::store::{ImageId, Store};
use crate::{io, Error};

/// How long a socket may refuse to take more bytes before the send gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

impl Store {
    /// Sends published image `id` from byte `start` into the connected, possibly non-blocking
    /// socket `sock` (which stays open and owned by the caller). Returns the bytes sent, or
    /// `Ok(None)` if `id` is still being uploaded or kept compressed (read it instead).
    pub async fn send_published(
        &self,
        id: &ImageId,
        start: u64,
        sock: RawFd,
    ) -> Result<Option<u64>, Error> {
        if self.uploading(id).is_some() {
            return Ok(None);
        }
        let path = self.path(id);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Kept compressed: its bytes must be decompressed, so it is read (`Store::read`).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.stored(id).is_some() => {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.clone()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().map_err(io(&path))?.len();
        tokio::task::spawn_blocking(move || {
            let sent = send_all(&file, start.min(size), size, sock);
            sent.map(Some).map_err(io(&path))
        })
        .await
        .expect("sendfile task")
    }
}

/// sendfile(2) from `start` to `end`. The socket is switched to blocking mode for the
/// duration (one call moves as much as the socket takes, no wake-up per buffer-full), with a
/// send timeout so a receiver that stops reading cannot hold the thread; both are restored.
fn send_all(file: &std::fs::File, start: u64, end: u64, sock: RawFd) -> std::io::Result<u64> {
    let _blocking = Blocking::set(sock, STALL_LIMIT)?;
    let mut off = start as libc::off_t;
    while (off as u64) < end {
        let want = ((end - off as u64) as usize).min(1 << 30);
        // SAFETY: both descriptors are open for the duration of the call; `off` is ours.
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, want) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            // The file is shorter than it was a moment ago: it was cut under us.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the image shrank while it was being sent",
            ));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the receiver took nothing for {} s", STALL_LIMIT.as_secs()),
                ))
            }
            _ => return Err(e),
        }
    }
    Ok(off as u64 - start)
}

/// A socket in blocking mode with a send timeout, until dropped.
struct Blocking {
    sock: RawFd,
    flags: libc::c_int,
    timeout: libc::timeval,
}

impl Blocking {
    fn set(sock: RawFd, limit: Duration) -> std::io::Result<Blocking> {
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        let mut timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut len = tv_len;
        // SAFETY: plain fcntl/getsockopt/setsockopt calls on a descriptor the caller keeps open,
        // with correctly sized option buffers.
        unsafe {
            let flags = libc::fcntl(sock, libc::F_GETFL);
            if flags < 0
                || libc::getsockopt(
                    sock,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&mut timeout as *mut libc::timeval).cast(),
                    &mut len,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let limit = libc::timeval {
                tv_sec: limit.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            if libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&limit as *const libc::timeval).cast(),
                tv_len,
            ) != 0
                || libc::fcntl(sock, libc::F_SETFL, flags & !libc::O_NONBLOCK) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Blocking {
                sock,
                flags,
                timeout,
            })
        }
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`; restoring what it read.
        unsafe {
            libc::fcntl(self.sock, libc::F_SETFL, self.flags);
            libc::setsockopt(
                self.sock,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&self.timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sends_the_range_through_a_full_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let f = std::fs::File::open(&path).unwrap();
        let n = send_all(&f, 1000, data.len() as u64, a.as_raw_fd()).unwrap();
        // The socket is handed back as it came: non-blocking.
        let flags = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        drop(a);
        assert_eq!(n, data.len() as u64 - 1000);
        assert_eq!(reader.join().unwrap(), &data[1000..]);
    }
}

//! Reading an image, verified while it streams, and following one still being uploaded.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::store::{ImageId, Progress, Store, Stored};
use crate::{hex, io, Error};

/// Reads one generation. Its SHA-256 is checked when the end is reached: the last `read`
/// (the one that returns 0) fails if the bytes were not the published ones.
pub struct Reader {
    pub id: ImageId,
    /// The file, or its decompressed bytes when kept compressed.
    file: Box<dyn AsyncRead + Send + Unpin>,
    pos: u64,
    hasher: Sha256,
    /// Set while following an upload.
    follow: Option<watch::Receiver<Progress>>,
    /// Known once published.
    expected: Option<(u64, String)>,
    /// The end was reached and verified.
    done: bool,
    /// Hash what is read and check it at the end (off: the receiver checks).
    verify: bool,
}

impl Store {
    /// The newest generation of `vm`: an upload in progress counts (readers follow it).
    pub fn newest(&self, vm: &str) -> Result<Option<u64>, Error> {
        let uploading: Vec<u64> = self
            .inner
            .uploads
            .lock()
            .expect("uploads")
            .keys()
            .filter(|id| id.vm == vm)
            .map(|id| id.generation)
            .collect();
        Ok(self
            .list()?
            .into_iter()
            .filter(|p| p.id.vm == vm)
            .map(|p| p.id.generation)
            .chain(uploading)
            .max())
    }

    /// How the upload of `id` stands, told at every change (each write, the end, a failure),
    /// while it is in progress; None once it is published or if there is no such upload.
    pub fn progress(&self, id: &ImageId) -> Option<watch::Receiver<Progress>> {
        self.inner.uploads.lock().expect("uploads").get(id).cloned()
    }

    /// Bytes written so far, if `id` is being uploaded.
    pub fn uploading(&self, id: &ImageId) -> Option<u64> {
        let rx = self
            .inner
            .uploads
            .lock()
            .expect("uploads")
            .get(id)
            .cloned()?;
        let p = rx.borrow().clone();
        match p {
            Progress::Uploading { written } => Some(written),
            // Not yet renamed: still read as an upload.
            Progress::Complete { size, .. } => Some(size),
            _ => None,
        }
    }

    /// The size and SHA-256 of `id` once all its bytes are in, possibly before it is published
    /// (durable); None while it is still being uploaded or if there is no such image.
    pub fn completed(&self, id: &ImageId) -> Option<(u64, String)> {
        let rx = self.inner.uploads.lock().expect("uploads").get(id).cloned();
        if let Some(rx) = rx {
            return match rx.borrow().clone() {
                Progress::Complete { size, sha256 } | Progress::Published { size, sha256 } => {
                    Some((size, sha256))
                }
                _ => None,
            };
        }
        let size = self.stored(id)?.raw_size().ok()?;
        Some((size, self.recorded_sum(id).ok()?))
    }

    /// Opens `vm`'s generation `generation` (the newest published one when None) for reading.
    /// An upload in progress is followed until it is published.
    pub async fn read(&self, vm: &str, generation: Option<u64>) -> Result<Reader, Error> {
        let generation = match generation {
            Some(g) => g,
            None => self.newest(vm)?.ok_or_else(|| {
                Error::NotFound(ImageId {
                    vm: vm.to_string(),
                    generation: 0,
                })
            })?,
        };
        let id = ImageId {
            vm: vm.to_string(),
            generation,
        };
        let follow = self
            .inner
            .uploads
            .lock()
            .expect("uploads")
            .get(&id)
            .cloned();
        // The upload may publish (rename) between the lookup and the open, and a published
        // image may be swapped for its compressed copy: try each name.
        let part = self.part_path(&id);
        let uploading = match &follow {
            Some(_) => match tokio::fs::File::open(&part).await {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(&part)(e)),
            },
            None => None,
        };
        let (file, expected): (Box<dyn AsyncRead + Send + Unpin>, _) = match uploading {
            // The size and checksum come from the writer when it is done.
            Some(f) => (Box::new(f), None),
            None => {
                let (f, size) = self.open_published(&id).await?;
                (f, Some((size, self.recorded_sum(&id)?)))
            }
        };
        Ok(Reader {
            id,
            file,
            pos: 0,
            hasher: Sha256::new(),
            follow,
            expected,
            done: false,
            verify: true,
        })
    }
}

impl Store {
    /// A published image's bytes (decompressed as they are read if it is kept compressed) and
    /// their size.
    async fn open_published(
        &self,
        id: &ImageId,
    ) -> Result<(Box<dyn AsyncRead + Send + Unpin>, u64), Error> {
        let path = self.path(id);
        match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let size = f.metadata().await.map_err(io(&path))?.len();
                return Ok((Box::new(f), size));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let zst = Stored {
            path: self.zst_path(id),
            zst: true,
        };
        let f = match tokio::fs::File::open(&zst.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.clone()))
            }
            Err(e) => return Err(io(&zst.path)(e)),
        };
        let size = zst.raw_size()?;
        let decoder = async_compression::tokio::bufread::ZstdDecoder::new(
            tokio::io::BufReader::with_capacity(256 << 10, f),
        );
        Ok((Box::new(decoder), size))
    }
}

impl Reader {
    /// Leaves the checking to the receiver, which compares what it got with the image's
    /// `.sha256` (as it does for a published image sent by sendfile): no second hash of every
    /// byte on the appliance while a migration streams through it.
    pub fn unverified(mut self) -> Self {
        self.verify = false;
        self
    }

    /// Reads into `buf`; Ok(0) only at the verified end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.done {
            return Ok(0);
        }
        loop {
            // How far may we read now?
            let limit = match (&self.expected, &mut self.follow) {
                (Some((size, _)), _) => *size,
                (None, Some(rx)) => {
                    let p = rx.borrow_and_update().clone();
                    match p {
                        Progress::Uploading { written } if written > self.pos => written,
                        Progress::Uploading { .. } => {
                            // Wait for more bytes, or for the end of the upload.
                            if rx.changed().await.is_err() {
                                return Err(Error::UploadFailed {
                                    id: self.id.clone(),
                                    reason: "the writer went away".into(),
                                });
                            }
                            continue;
                        }
                        Progress::Complete { size, sha256 }
                        | Progress::Published { size, sha256 } => {
                            self.expected = Some((size, sha256));
                            size
                        }
                        Progress::Failed(reason) => {
                            return Err(Error::UploadFailed {
                                id: self.id.clone(),
                                reason,
                            })
                        }
                    }
                }
                (None, None) => unreachable!("a reader either knows the size or follows"),
            };
            if self.pos >= limit {
                if let Some((_, sha)) = &self.expected {
                    if !self.verify {
                        self.done = true;
                        return Ok(0);
                    }
                    let actual = hex(&std::mem::take(&mut self.hasher).finalize());
                    if &actual != sha {
                        return Err(Error::Corrupt {
                            id: self.id.clone(),
                            expected: sha.clone(),
                            actual,
                        });
                    }
                    self.done = true;
                    return Ok(0);
                }
                continue;
            }
            let want = buf.len().min((limit - self.pos) as usize);
            let n = self
                .file
                .read(&mut buf[..want])
                .await
                .map_err(|e| Error::Io {
                    path: self.id.to_string(),
                    source: e,
                })?;
            if n == 0 {
                // Shorter than announced: the file was cut under us.
                return Err(Error::Corrupt {
                    id: self.id.clone(),
                    expected: format!("{limit} bytes"),
                    actual: format!("{} bytes", self.pos),
                });
            }
            if self.verify {
                self.hasher.update(&buf[..n]);
            }
            self.pos += n as u64;
            return Ok(n);
        }
    }

    /// Reads everything into `out`, verified.
    pub async fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<u64, Error> {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0;
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(total);
            }
            out.extend_from_slice(&buf[..n]);
            total += n as u64;
        }
    }
}

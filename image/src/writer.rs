//! Writing one generation: the caller hands over buffers; a worker thread writes and hashes
//! them, so that receiving the next bytes overlaps with storing the last ones.

use std::io::{Read, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::store::{sync_dir, tombstone, ImageId, Progress, Published, Store, SPACE_CHECK_EVERY};
use crate::{hex, io, Error};

/// Buffers handed to the worker, and how many may wait for it (bounds memory per upload).
const CHUNK: usize = 1 << 20;
const QUEUED: usize = 4;

/// What the worker has when the queue closes.
struct Done {
    file: std::fs::File,
    hasher: Sha256,
    written: u64,
}

/// Writes one generation. Dropped without `publish`, the upload fails and its bytes are
/// removed; followers are told.
pub struct Writer {
    store: Store,
    pub id: ImageId,
    queue: Option<mpsc::Sender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    /// The worker's result, when the queue is closed (a thread of its own: the runtime need
    /// not wait for it, should a writer be leaked).
    worker: Option<tokio::sync::oneshot::Receiver<Result<Done, Error>>>,
    /// Bytes handed over (the worker may not have stored them all yet).
    queued: u64,
    checked_at: u64,
    progress: Arc<watch::Sender<Progress>>,
}

impl Writer {
    /// Starts the worker on `file` (the new `.part`), first copying `prefix` bytes of a base
    /// image when resuming.
    pub(crate) fn start(
        store: Store,
        id: ImageId,
        file: std::fs::File,
        prefix: Option<(Box<dyn Read + Send>, u64)>,
        progress: watch::Sender<Progress>,
    ) -> Writer {
        let progress = Arc::new(progress);
        let (queue, mut rx) = mpsc::channel::<Vec<u8>>(QUEUED);
        let (give_back, spare) = std::sync::mpsc::channel();
        let part = store.part_path(&id);
        let p = progress.clone();
        let queued = prefix.as_ref().map_or(0, |(_, n)| *n);
        let (result, worker) = tokio::sync::oneshot::channel();
        let work = move || {
            let mut done = Done {
                file,
                hasher: Sha256::new(),
                written: 0,
            };
            let store_bytes = |done: &mut Done, buf: &[u8]| -> Result<(), Error> {
                done.file.write_all(buf).map_err(io(&part))?;
                done.hasher.update(buf);
                done.written += buf.len() as u64;
                // Followers may read these bytes now; never undo a failure already told.
                p.send_if_modified(|s| match s {
                    Progress::Uploading { written } => {
                        *written = done.written;
                        true
                    }
                    _ => false,
                });
                Ok(())
            };
            if let Some((mut base, n)) = prefix {
                let mut buf = vec![0u8; CHUNK];
                let mut left = n;
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    let got = base.read(&mut buf[..want]).map_err(io(&part))?;
                    if got == 0 {
                        return Err(io(&part)(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the image being resumed shrank",
                        )));
                    }
                    store_bytes(&mut done, &buf[..got])?;
                    left -= got as u64;
                }
            }
            while let Some(mut buf) = rx.blocking_recv() {
                store_bytes(&mut done, &buf)?;
                buf.clear();
                let _ = give_back.send(buf);
            }
            Ok(done)
        };
        std::thread::Builder::new()
            .name("image-writer".into())
            .spawn(move || {
                let _ = result.send(work());
            })
            .expect("spawning the image writer thread");
        Writer {
            store,
            id,
            queue: Some(queue),
            spare,
            worker: Some(worker),
            queued,
            checked_at: queued,
            progress,
        }
    }

    /// Bytes handed over so far (a resumed upload counts its prefix).
    pub fn written(&self) -> u64 {
        self.queued
    }

    /// An empty buffer to fill and hand back with `write_vec` (recycled; no zeroing needed
    /// with `AsyncReadExt::read_buf`).
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    /// Appends `buf`.
    pub async fn write(&mut self, buf: &[u8]) -> Result<(), Error> {
        for chunk in buf.chunks(CHUNK) {
            let mut v = self.buffer();
            v.extend_from_slice(chunk);
            self.write_vec(v).await?;
        }
        Ok(())
    }

    /// Appends `buf`, handing the buffer itself to the worker. Returns once it is queued;
    /// followers see the bytes once they are in the file.
    pub async fn write_vec(&mut self, buf: Vec<u8>) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        if self.queued + len - self.checked_at >= SPACE_CHECK_EVERY {
            self.checked_at = self.queued;
            if let Err(e) = self.store.check_space(&self.id, len) {
                self.abandon(&e.to_string());
                return Err(e);
            }
        }
        let queue = self.queue.as_ref().expect("writer open");
        if queue.send(buf).await.is_err() {
            // The worker stopped: it failed. Its error says why.
            let e = match self.finish().await {
                Err(e) => e,
                Ok(_) => unreachable!("the worker stops early only on an error"),
            };
            self.abandon(&e.to_string());
            return Err(e);
        }
        self.queued += len;
        Ok(())
    }

    /// Closes the queue and waits for the worker.
    async fn finish(&mut self) -> Result<Done, Error> {
        self.queue = None;
        let worker = self.worker.take().expect("writer open");
        worker.await.expect("the image writer thread panicked")
    }

    /// Makes the image visible, atomically: fsync, checksum file, rename, fsync the directory.
    pub async fn publish(mut self) -> Result<Published, Error> {
        let done = match self.finish().await {
            Ok(d) => d,
            Err(e) => {
                self.abandon(&e.to_string());
                return Err(e);
            }
        };
        let id = self.id.clone();
        let store = self.store.clone();
        let sha256 = hex(&done.hasher.finalize());
        let size = done.written;
        // Followers have every byte now; they need not wait for the disk.
        self.progress.send_if_modified(|s| match s {
            Progress::Uploading { .. } => {
                *s = Progress::Complete {
                    size,
                    sha256: sha256.clone(),
                };
                true
            }
            _ => false,
        });
        let (part, path, sum) = (store.part_path(&id), store.path(&id), store.sum_path(&id));
        let line = format!("{sha256}  {}.img\n", id.generation);
        let file = done.file;
        let r = tokio::task::spawn_blocking(move || {
            file.sync_all().map_err(io(&part))?;
            drop(file);
            let mut f = std::fs::File::create(&sum).map_err(io(&sum))?;
            f.write_all(line.as_bytes()).map_err(io(&sum))?;
            f.sync_all().map_err(io(&sum))?;
            std::fs::rename(&part, &path).map_err(io(&path))?;
            sync_dir(path.parent().expect("image dir"))
        })
        .await
        .expect("publish task");
        store.inner.uploads.lock().expect("uploads").remove(&id);
        match r {
            Ok(()) => {
                self.progress.send_replace(Progress::Published {
                    size,
                    sha256: sha256.clone(),
                });
                Ok(Published {
                    id,
                    size,
                    sha256,
                    stored: size,
                    compressed: false,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(store.part_path(&id));
                let _ = std::fs::remove_file(store.sum_path(&id));
                tombstone(&store.root().join(&id.vm), &id, &e.to_string());
                self.progress.send_replace(Progress::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    /// Gives the upload up: followers fail with `reason`, the partial bytes are removed.
    pub async fn fail(mut self, reason: &str) {
        self.abandon(reason);
    }

    /// Stops the worker, removes the partial file and tells followers why. (A removal is one
    /// unlink: done inline, also from Drop; the worker, if still writing, writes to an
    /// unlinked file and stops when it sees the queue closed.)
    fn abandon(&mut self, reason: &str) {
        self.queue = None;
        self.worker = None;
        self.progress
            .send_replace(Progress::Failed(reason.to_string()));
        self.store
            .inner
            .uploads
            .lock()
            .expect("uploads")
            .remove(&self.id);
        let _ = std::fs::remove_file(self.store.part_path(&self.id));
        tombstone(&self.store.root().join(&self.id.vm), &self.id, reason);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.abandon("the upload was abandoned");
        }
    }
}

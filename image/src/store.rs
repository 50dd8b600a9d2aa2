//! The store: layout, writers with atomic publish, recovery, listing, verification and GC.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::io::{Read, Write};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::writer::Writer;
use crate::{hex, io, Error};

/// One generation of one VM's image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId {
    pub vm: String,
    pub generation: u64,
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vm, self.generation)
    }
}

/// A published image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: ImageId,
    /// Bytes of the image (uncompressed).
    pub size: u64,
    /// SHA-256 of those bytes.
    pub sha256: String,
    /// Bytes it takes on disk.
    pub stored: u64,
    /// Kept compressed (zstd).
    pub compressed: bool,
}

/// Where a published image's bytes are.
pub(crate) struct Stored {
    pub path: PathBuf,
    pub zst: bool,
}

impl Stored {
    /// The uncompressed size: the file's, or the one the zstd frame header records.
    pub(crate) fn raw_size(&self) -> Result<u64, Error> {
        let mut f = std::fs::File::open(&self.path).map_err(io(&self.path))?;
        if !self.zst {
            return Ok(f.metadata().map_err(io(&self.path))?.len());
        }
        let mut head = [0u8; 18];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(io(&self.path))? {
                0 => break,
                k => n += k,
            }
        }
        match zstd::zstd_safe::get_frame_content_size(&head[..n]) {
            Ok(Some(size)) => Ok(size),
            _ => Err(io(&self.path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no content size in the zstd frame header",
            ))),
        }
    }

    /// The uncompressed bytes, for a blocking reader.
    pub(crate) fn open(&self) -> Result<Box<dyn std::io::Read + Send>, Error> {
        let f = std::fs::File::open(&self.path).map_err(io(&self.path))?;
        if self.zst {
            Ok(Box::new(
                zstd::stream::read::Decoder::new(f).map_err(io(&self.path))?,
            ))
        } else {
            Ok(Box::new(f))
        }
    }
}

/// How an upload stands, as its followers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Uploading {
        written: u64,
    },
    /// Every byte is stored and hashed; publish (fsync, rename) follows. Followers may end
    /// here: a stream hand-off need not wait for the disk.
    Complete {
        size: u64,
        sha256: String,
    },
    Published {
        size: u64,
        sha256: String,
    },
    Failed(String),
}

pub(crate) struct Inner {
    pub root: PathBuf,
    reserve: u64,
    /// Uploads in progress, for readers that want to follow them.
    pub uploads: Mutex<HashMap<ImageId, watch::Receiver<Progress>>>,
}

/// The image store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

/// Space checks while writing happen every this many bytes (statvfs is cheap, not free).
pub(crate) const SPACE_CHECK_EVERY: u64 = 16 << 20;

fn check_name(vm: &str) -> Result<(), Error> {
    let ok = !vm.is_empty()
        && vm.len() <= 128
        && !vm.starts_with('.')
        && vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(vm.to_string()))
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
fn available(path: &Path) -> Result<u64, Error> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"),
    })?;
    // SAFETY: statvfs fills the zeroed struct from a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Marks generation `id` failed, so that its number is never given to another upload (the
/// manifest's row for it keeps meaning that failed upload). Best effort: a lost tombstone only
/// lets the number be reused.
pub(crate) fn tombstone(dir: &Path, id: &ImageId, reason: &str) {
    let _ = std::fs::write(
        dir.join(format!(".{}.img.failed", id.generation)),
        format!("{reason}\n"),
    );
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl Store {
    /// Opens (creating) the store at `root`, keeping `reserve` bytes free. Uploads a crash
    /// interrupted are removed; their ids are returned so the caller can mark them failed.
    pub fn open(root: &Path, reserve: u64) -> Result<(Store, Vec<ImageId>), Error> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut recovered = Vec::new();
        for vm in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            let dir = vm.path();
            if !dir.is_dir() {
                continue;
            }
            let vm_name = vm.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".img.zst.part") {
                    // A compression cut short: the uncompressed image is still there.
                    std::fs::remove_file(f.path()).map_err(io(&f.path()))?;
                    continue;
                }
                let Some(gen) = name
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".img.part"))
                else {
                    continue;
                };
                std::fs::remove_file(f.path()).map_err(io(&f.path()))?;
                if let Ok(generation) = gen.parse() {
                    let id = ImageId {
                        vm: vm_name.clone(),
                        generation,
                    };
                    tombstone(&dir, &id, "interrupted by a restart");
                    recovered.push(id);
                }
            }
        }
        recovered.sort();
        Ok((
            Store {
                inner: Arc::new(Inner {
                    root: root.to_path_buf(),
                    reserve,
                    uploads: Mutex::new(HashMap::new()),
                }),
            },
            recovered,
        ))
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn path(&self, id: &ImageId) -> PathBuf {
        self.inner
            .root
            .join(&id.vm)
            .join(format!("{}.img", id.generation))
    }

    pub(crate) fn zst_path(&self, id: &ImageId) -> PathBuf {
        self.inner
            .root
            .join(&id.vm)
            .join(format!("{}.img.zst", id.generation))
    }

    /// Where published image `id` is, uncompressed or not; None if it is not published.
    pub(crate) fn stored(&self, id: &ImageId) -> Option<Stored> {
        let raw = self.path(id);
        if raw.exists() {
            return Some(Stored {
                path: raw,
                zst: false,
            });
        }
        let zst = self.zst_path(id);
        zst.exists().then_some(Stored {
            path: zst,
            zst: true,
        })
    }

    pub(crate) fn part_path(&self, id: &ImageId) -> PathBuf {
        self.inner
            .root
            .join(&id.vm)
            .join(format!(".{}.img.part", id.generation))
    }

    pub(crate) fn sum_path(&self, id: &ImageId) -> PathBuf {
        self.inner
            .root
            .join(&id.vm)
            .join(format!("{}.img.sha256", id.generation))
    }

    /// Generations of `vm` on disk, published or in progress, oldest first.
    fn generations(&self, vm: &str) -> Vec<(u64, bool)> {
        let mut v: Vec<(u64, bool)> = std::fs::read_dir(self.inner.root.join(vm))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| {
                let n = f.file_name().to_string_lossy().into_owned();
                if let Some(g) = n
                    .strip_suffix(".img")
                    .or_else(|| n.strip_suffix(".img.zst"))
                {
                    g.parse().ok().map(|g| (g, true))
                } else {
                    // In progress, or failed (a tombstone keeps its number from reuse).
                    n.strip_prefix('.')
                        .and_then(|n| {
                            n.strip_suffix(".img.part")
                                .or_else(|| n.strip_suffix(".img.failed"))
                        })
                        .and_then(|g| g.parse().ok())
                        .map(|g| (g, false))
                }
            })
            .collect();
        v.sort_unstable();
        // A compression swaps `.img.zst` in for `.img`: for a moment both exist.
        v.dedup();
        v
    }

    /// Starts a new generation of `vm`'s image. `expected` (bytes), when known, is checked
    /// against the free space and the reserve before anything is written.
    pub async fn create(&self, vm: &str, expected: Option<u64>) -> Result<Writer, Error> {
        self.start(vm, expected, None).await
    }

    /// Starts a new generation of `vm`'s image that begins with the first `prefix` bytes of
    /// `base` (a published image of the same VM): an interrupted upload resumed. The prefix is
    /// copied and hashed by the writer before the bytes written next.
    pub async fn resume(
        &self,
        base: &ImageId,
        prefix: u64,
        expected: Option<u64>,
    ) -> Result<Writer, Error> {
        let Some(stored) = self.stored(base) else {
            return Err(Error::NotFound(base.clone()));
        };
        let size = stored.raw_size()?;
        if prefix > size {
            return Err(Error::BadResume {
                id: base.clone(),
                from: prefix,
                size,
            });
        }
        let f = stored.open()?;
        self.start(&base.vm, expected, Some((f, prefix))).await
    }

    async fn start(
        &self,
        vm: &str,
        expected: Option<u64>,
        prefix: Option<(Box<dyn Read + Send>, u64)>,
    ) -> Result<Writer, Error> {
        check_name(vm)?;
        let dir = self.inner.root.join(vm);
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let mut generation = self.generations(vm).last().map(|(g, _)| g + 1).unwrap_or(1);
        // Two uploads of one VM may start at once: the second takes the next number.
        let (id, file) = loop {
            let id = ImageId {
                vm: vm.to_string(),
                generation,
            };
            self.check_space(&id, expected.unwrap_or(0))?;
            let part = self.part_path(&id);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
            {
                Ok(f) => break (id, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => generation += 1,
                Err(e) => return Err(io(&part)(e)),
            }
        };
        let (tx, rx) = watch::channel(Progress::Uploading { written: 0 });
        self.inner
            .uploads
            .lock()
            .expect("uploads")
            .insert(id.clone(), rx);
        Ok(Writer::start(self.clone(), id, file, prefix, tx))
    }

    /// Bytes free where the store is, and the reserve it keeps: room for an upload of `n`
    /// bytes if `free >= n + reserve`.
    pub fn room(&self) -> Result<(u64, u64), Error> {
        Ok((available(&self.inner.root)?, self.inner.reserve))
    }

    pub(crate) fn check_space(&self, id: &ImageId, need: u64) -> Result<(), Error> {
        let left = available(&self.inner.root)?;
        if left.saturating_sub(need) < self.inner.reserve {
            return Err(Error::NoSpace {
                id: id.clone(),
                path: self.inner.root.display().to_string(),
                need,
                left: left.saturating_sub(need),
                reserve: self.inner.reserve,
            });
        }
        Ok(())
    }

    /// Every published image, by VM and generation.
    pub fn list(&self) -> Result<Vec<Published>, Error> {
        let mut out = Vec::new();
        let root = &self.inner.root;
        for vm in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            let vm = vm.file_name().to_string_lossy().into_owned();
            for (generation, published) in self.generations(&vm) {
                if !published {
                    continue;
                }
                let id = ImageId {
                    vm: vm.clone(),
                    generation,
                };
                let Some(s) = self.stored(&id) else {
                    continue;
                };
                let size = s.raw_size().unwrap_or(0);
                let stored = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
                let sha256 = self.recorded_sum(&id).unwrap_or_default();
                out.push(Published {
                    id,
                    size,
                    sha256,
                    stored,
                    compressed: s.zst,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The SHA-256 (hex) recorded when `id` was published.
    pub fn checksum(&self, id: &ImageId) -> Result<String, Error> {
        if self.stored(id).is_none() {
            return Err(Error::NotFound(id.clone()));
        }
        self.recorded_sum(id)
    }

    /// The checksum written at publish time.
    pub(crate) fn recorded_sum(&self, id: &ImageId) -> Result<String, Error> {
        let p = self.sum_path(id);
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        Ok(text.split_whitespace().next().unwrap_or("").to_string())
    }

    /// Re-reads a published image (decompressing it if it is kept compressed) and compares it
    /// with its recorded checksum.
    pub async fn verify(&self, id: &ImageId) -> Result<Published, Error> {
        let store = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || store.verify_now(&id))
            .await
            .expect("verify task")
    }

    fn verify_now(&self, id: &ImageId) -> Result<Published, Error> {
        let s = self.stored(id).ok_or_else(|| Error::NotFound(id.clone()))?;
        let expected = self.recorded_sum(id)?;
        let mut r = s.open()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(io(&s.path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        let actual = hex(&h.finalize());
        if actual != expected {
            return Err(Error::Corrupt {
                id: id.clone(),
                expected,
                actual,
            });
        }
        Ok(Published {
            id: id.clone(),
            size,
            sha256: actual,
            stored: std::fs::metadata(&s.path).map_err(io(&s.path))?.len(),
            compressed: s.zst,
        })
    }

    /// Keeps published image `id` compressed (zstd at `level`), once its bytes are checked
    /// against its checksum: a corrupt image is reported, never compressed into a valid-looking
    /// one. The swap is atomic (the compressed file is renamed in, then the uncompressed one
    /// removed); readers that opened the old file read on. Returns the image as now stored.
    pub async fn compress(&self, id: &ImageId, level: i32) -> Result<Published, Error> {
        let store = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || store.compress_now(&id, level))
            .await
            .expect("compress task")
    }

    fn compress_now(&self, id: &ImageId, level: i32) -> Result<Published, Error> {
        let s = self.stored(id).ok_or_else(|| Error::NotFound(id.clone()))?;
        if s.zst {
            return self.list_one(id);
        }
        let expected = self.recorded_sum(id)?;
        let mut src = std::fs::File::open(&s.path).map_err(io(&s.path))?;
        let raw = src.metadata().map_err(io(&s.path))?.len();
        let dir = self.inner.root.join(&id.vm);
        let part = dir.join(format!(".{}.img.zst.part", id.generation));
        let result = (|| -> Result<std::fs::File, Error> {
            let out = std::fs::File::create(&part).map_err(io(&part))?;
            let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(io(&part))?;
            enc.include_contentsize(true).map_err(io(&part))?;
            enc.include_checksum(true).map_err(io(&part))?;
            enc.set_pledged_src_size(Some(raw)).map_err(io(&part))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut buf).map_err(io(&s.path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                enc.write_all(&buf[..n]).map_err(io(&part))?;
            }
            let actual = hex(&h.finalize());
            if actual != expected {
                return Err(Error::Corrupt {
                    id: id.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            let out = enc.finish().map_err(io(&part))?;
            out.sync_all().map_err(io(&part))?;
            Ok(out)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        let zst = self.zst_path(id);
        std::fs::rename(&part, &zst).map_err(io(&zst))?;
        match std::fs::remove_file(&s.path) {
            Ok(()) => {}
            // Deleted meanwhile (gc): so is the compressed copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&zst);
                return Err(Error::NotFound(id.clone()));
            }
            Err(e) => return Err(io(&s.path)(e)),
        }
        sync_dir(&dir)?;
        self.list_one(id)
    }

    /// The size (uncompressed) and modification time of published image `id`, if there is one.
    pub fn size_and_time(&self, id: &ImageId) -> Option<(u64, std::time::SystemTime)> {
        let s = self.stored(id)?;
        let modified = std::fs::metadata(&s.path).ok()?.modified().ok()?;
        Some((s.raw_size().ok()?, modified))
    }

    fn list_one(&self, id: &ImageId) -> Result<Published, Error> {
        let s = self.stored(id).ok_or_else(|| Error::NotFound(id.clone()))?;
        Ok(Published {
            id: id.clone(),
            size: s.raw_size()?,
            sha256: self.recorded_sum(id)?,
            stored: std::fs::metadata(&s.path).map_err(io(&s.path))?.len(),
            compressed: s.zst,
        })
    }

    /// Deletes all but the newest `keep` published generations of each VM, never one in
    /// `in_use` (a migration still reads it). Returns what was deleted.
    pub fn gc(&self, keep: usize, in_use: &[ImageId]) -> Result<Vec<ImageId>, Error> {
        let mut by_vm: HashMap<String, Vec<ImageId>> = HashMap::new();
        for p in self.list()? {
            by_vm.entry(p.id.vm.clone()).or_default().push(p.id);
        }
        let mut removed = Vec::new();
        for (vm, mut ids) in by_vm {
            ids.sort();
            let old = ids.len().saturating_sub(keep);
            // Tombstones of failed uploads older than what is kept are history only.
            let oldest_kept = ids.get(old).map_or(0, |id| id.generation);
            for (g, _) in self.generations(&vm) {
                let stone = self.inner.root.join(&vm).join(format!(".{g}.img.failed"));
                if g < oldest_kept && stone.exists() {
                    std::fs::remove_file(&stone).map_err(io(&stone))?;
                }
            }
            for id in ids.into_iter().take(old) {
                if in_use.contains(&id) {
                    continue;
                }
                for p in [self.path(&id), self.zst_path(&id), self.sum_path(&id)] {
                    match std::fs::remove_file(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(&p)(e))
                        }
                        _ => {}
                    }
                }
                removed.push(id);
            }
        }
        removed.sort();
        Ok(removed)
    }
}

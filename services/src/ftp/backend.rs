//! The libunftp storage back end over the image store, with per-account access checks.

use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use netmigrate_image::{Error as ImageError, ImageId, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unftp_core::storage::{
    Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART,
};

use super::FtpUser;

#[derive(Debug, Clone)]
pub struct ImageBackend {
    store: Store,
    hooks: Arc<dyn super::FtpAccounts>,
    /// Hash every download on the server too (a `Reader`), instead of sendfile(2).
    verify_downloads: bool,
    /// The generation each (account, VM, file name) upload went to, for SIZE and resume.
    uploads: Uploads,
}

/// Shared by all sessions of one server.
pub type Uploads = Arc<Mutex<HashMap<(String, String, String), ImageId>>>;

impl ImageBackend {
    pub fn new(
        store: Store,
        hooks: Arc<dyn super::FtpAccounts>,
        verify_downloads: bool,
        uploads: Uploads,
    ) -> Self {
        ImageBackend {
            store,
            hooks,
            verify_downloads,
            uploads,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Meta {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(self.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

/// A path of the FTP namespace, checked: no `..`, nothing deeper than `/<vm>/<file>`.
#[derive(Debug, PartialEq)]
enum Target {
    Root,
    Vm(String),
    File(String, String),
}

fn denied(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::PermissionDenied, why.into())
}

fn parse(path: &Path) -> Result<Target> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => {
                let s = s.to_str().ok_or_else(|| denied("path is not UTF-8"))?;
                if s.contains('\0') || s.contains('\\') || s.starts_with('.') {
                    return Err(denied(format!("`{s}` is not allowed")));
                }
                parts.push(s.to_string());
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(denied("no path outside the image store"))
            }
        }
    }
    match parts.len() {
        0 => Ok(Target::Root),
        1 => Ok(Target::Vm(parts.remove(0))),
        2 => {
            let f = parts.pop().expect("two parts");
            Ok(Target::File(parts.pop().expect("two parts"), f))
        }
        _ => Err(Error::from(ErrorKind::PermanentFileNotAvailable)),
    }
}

/// A file of a VM's directory: `<gen>.img` or `latest.img` (the newest, None), or the
/// checksum of a published one, `<gen>.img.sha256` (in `sha256sum -c` format).
#[derive(Debug, PartialEq)]
enum File {
    Image(Option<u64>),
    Sum(Option<u64>),
}

fn file(name: &str) -> Result<File> {
    let (stem, sum) = match name.strip_suffix(".img.sha256") {
        Some(s) => (s, true),
        None => (
            name.strip_suffix(".img")
                .ok_or_else(|| Error::from(ErrorKind::PermanentFileNotAvailable))?,
            false,
        ),
    };
    let gen = match stem {
        "latest" => None,
        g => Some(
            g.parse()
                .map_err(|_| Error::from(ErrorKind::PermanentFileNotAvailable))?,
        ),
    };
    Ok(if sum {
        File::Sum(gen)
    } else {
        File::Image(gen)
    })
}

fn image_err(e: ImageError) -> Error {
    let kind = match &e {
        ImageError::NotFound(_) => ErrorKind::PermanentFileNotAvailable,
        ImageError::BadName(_) => ErrorKind::PermissionDenied,
        ImageError::NoSpace { .. } => ErrorKind::InsufficientStorageSpaceError,
        // The disk filled up under a running upload: 452, as for the reserve.
        ImageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            ErrorKind::InsufficientStorageSpaceError
        }
        _ => ErrorKind::LocalError,
    };
    tracing::warn!("FTP: {e}");
    Error::new(kind, e.to_string())
}

/// The FTP reply an error gives and what caused it ("451 Local error" alone says nothing).
fn reason(e: &Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn dir_meta() -> Meta {
    Meta {
        len: 0,
        dir: true,
        modified: SystemTime::now(),
    }
}

impl ImageBackend {
    fn visible_vms(&self, user: &FtpUser) -> Vec<String> {
        let mut vms: Vec<String> = self
            .store
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.id.vm)
            .chain(user.write.iter().filter(|v| *v != "*").cloned())
            .chain(user.read.iter().filter(|v| *v != "*").cloned())
            .filter(|vm| user.may_read(vm) || user.may_write(vm))
            .collect();
        vms.sort();
        vms.dedup();
        vms
    }

    /// The image `user` last uploaded as `/vm/name` (a `<gen>.img` name means that one).
    fn uploaded_as(&self, user: &FtpUser, vm: &str, name: &str) -> Option<ImageId> {
        let key = (user.name.clone(), vm.to_string(), name.to_string());
        if let Some(id) = self.uploads.lock().expect("uploads").get(&key) {
            return Some(id.clone());
        }
        match file(name) {
            Ok(File::Image(Some(generation))) => Some(ImageId {
                vm: vm.to_string(),
                generation,
            }),
            _ => None,
        }
    }

    /// The image a file name means (`latest` is the newest, possibly still uploading).
    fn resolve(&self, vm: &str, name: &str) -> Result<ImageId> {
        let gen = match file(name)? {
            File::Image(Some(g)) | File::Sum(Some(g)) => g,
            File::Image(None) | File::Sum(None) => self
                .store
                .newest(vm)
                .map_err(image_err)?
                .ok_or_else(|| Error::from(ErrorKind::PermanentFileNotAvailable))?,
        };
        Ok(ImageId {
            vm: vm.to_string(),
            generation: gen,
        })
    }

    /// `<sha256>  <gen>.img`, as `sha256sum -c` reads it; only for published images.
    fn sum_line(&self, id: &ImageId) -> Result<String> {
        if self.store.uploading(id).is_some() {
            return Err(Error::new(
                ErrorKind::TransientFileNotAvailable,
                "still being uploaded; its checksum is known once published",
            ));
        }
        let sum = self.store.checksum(id).map_err(image_err)?;
        Ok(format!("{sum}  {}.img\n", id.generation))
    }

    fn file_meta(&self, vm: &str, gen: u64) -> Result<Meta> {
        let id = ImageId {
            vm: vm.to_string(),
            generation: gen,
        };
        // Its size as served: a compressed image's uncompressed size.
        let (len, modified) = self
            .store
            .size_and_time(&id)
            .ok_or_else(|| Error::from(ErrorKind::PermanentFileNotAvailable))?;
        Ok(Meta {
            len,
            dir: false,
            modified,
        })
    }
}

#[async_trait]
impl StorageBackend<FtpUser> for ImageBackend {
    type Metadata = Meta;

    fn supported_features(&self) -> u32 {
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Meta> {
        match parse(path.as_ref())? {
            Target::Root => Ok(dir_meta()),
            Target::Vm(vm) if user.may_read(&vm) || user.may_write(&vm) => Ok(dir_meta()),
            Target::File(vm, f) if !(user.may_read(&vm) && file(&f).is_ok()) => {
                // SIZE of one's own upload, for resuming it (REST + STOR, or APPE).
                let Some(id) = user
                    .may_write(&vm)
                    .then(|| self.uploaded_as(user, &vm, &f))
                    .flatten()
                else {
                    return Err(match user.may_read(&vm) || user.may_write(&vm) {
                        true => Error::from(ErrorKind::PermanentFileNotAvailable),
                        false => denied("not yours"),
                    });
                };
                match self.store.uploading(&id) {
                    Some(written) => Ok(Meta {
                        len: written,
                        dir: false,
                        modified: SystemTime::now(),
                    }),
                    None => self.file_meta(&vm, id.generation),
                }
            }
            Target::File(vm, f) if user.may_read(&vm) => {
                let id = self.resolve(&vm, &f)?;
                if let File::Sum(_) = file(&f)? {
                    return Ok(Meta {
                        len: self.sum_line(&id)?.len() as u64,
                        dir: false,
                        modified: SystemTime::now(),
                    });
                }
                // Still uploading: the final size is not known yet. A transient error (450)
                // makes clients skip SIZE and read to the end; a size so far would make curl
                // stop there.
                match self.store.uploading(&id) {
                    Some(_) => Err(Error::new(
                        ErrorKind::TransientFileNotAvailable,
                        "still being uploaded; its size is known once published",
                    )),
                    None => self.file_meta(&vm, id.generation),
                }
            }
            _ => Err(denied("not yours")),
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        match parse(path.as_ref())? {
            Target::Root => Ok(self
                .visible_vms(user)
                .into_iter()
                .map(|vm| Fileinfo {
                    path: PathBuf::from(vm),
                    metadata: dir_meta(),
                })
                .collect()),
            Target::Vm(vm) if user.may_read(&vm) => {
                let mut out = Vec::new();
                for p in self
                    .store
                    .list()
                    .map_err(image_err)?
                    .into_iter()
                    .filter(|p| p.id.vm == vm)
                {
                    out.push(Fileinfo {
                        path: PathBuf::from(format!("{}.img", p.id.generation)),
                        metadata: self.file_meta(&vm, p.id.generation)?,
                    });
                    out.push(Fileinfo {
                        path: PathBuf::from(format!("{}.img.sha256", p.id.generation)),
                        metadata: Meta {
                            len: self.sum_line(&p.id)?.len() as u64,
                            dir: false,
                            modified: SystemTime::now(),
                        },
                    });
                }
                Ok(out)
            }
            Target::Vm(vm) if user.may_write(&vm) => Ok(Vec::new()),
            _ => Err(denied("not yours")),
        }
    }

    async fn get_into<'a, P, W: ?Sized>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> Result<u64>
    where
        W: tokio::io::AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let Target::File(vm, f) = parse(path.as_ref())? else {
            return Err(Error::from(ErrorKind::PermanentFileNotAvailable));
        };
        if !user.may_read(&vm) {
            return Err(denied(format!("{user} may not read {vm}'s images")));
        }
        let kind = file(&f)?;
        if let File::Sum(_) = kind {
            let line = self.sum_line(&self.resolve(&vm, &f)?)?;
            let rest = line
                .as_bytes()
                .get(start_pos as usize..)
                .unwrap_or_default();
            output
                .write_all(rest)
                .await
                .map_err(|e| Error::new(ErrorKind::ConnectionClosed, e))?;
            return Ok(rest.len() as u64);
        }
        // A published image on a plain connection goes out by sendfile(2); the receiver
        // checks it against the published checksum. Uploads in progress are followed, and
        // hashed here only with `verify_downloads` (the receiver checks them too).
        if let (false, Ok(sock)) = (
            self.verify_downloads,
            libunftp::RETR_DATA_SOCKET.try_with(|fd| *fd),
        ) {
            let id = self.resolve(&vm, &f)?;
            if let Some(sent) = self
                .store
                .send_published(&id, start_pos, sock)
                .await
                .map_err(image_err)?
            {
                return Ok(sent);
            }
        }
        let File::Image(generation) = kind else {
            unreachable!("checksums were sent above")
        };
        let mut r = self.store.read(&vm, generation).await.map_err(image_err)?;
        if !self.verify_downloads {
            r = r.unverified();
        }
        // The checksum covers the whole image: a resumed download still reads (and hashes)
        // the part it skips.
        let mut buf = vec![0u8; 1 << 20];
        let (mut pos, mut sent) = (0u64, 0u64);
        loop {
            let n = r.read(&mut buf).await.map_err(image_err)?;
            if n == 0 {
                break;
            }
            let skip = start_pos.saturating_sub(pos).min(n as u64) as usize;
            pos += n as u64;
            if skip < n {
                output
                    .write_all(&buf[skip..n])
                    .await
                    .map_err(|e| Error::new(ErrorKind::ConnectionClosed, e))?;
                sent += (n - skip) as u64;
            }
        }
        output
            .flush()
            .await
            .map_err(|e| Error::new(ErrorKind::ConnectionClosed, e))?;
        Ok(sent)
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        // libunftp uses get_into; this is for other callers. A failure mid-stream closes the
        // pipe early, which the reader sees as a short file.
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let me = self.clone();
        let (user, path) = (user.clone(), path.as_ref().to_path_buf());
        tokio::spawn(async move {
            if let Err(e) = me.get_into(&user, &path, start_pos, &mut tx).await {
                tracing::warn!("FTP get {}: {e}", path.display());
            }
        });
        Ok(Box::new(rx))
    }

    async fn put<
        P: AsRef<Path> + Send + Debug,
        R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
    >(
        &self,
        user: &FtpUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let Target::File(vm, name) = parse(path.as_ref())? else {
            return Err(denied("upload to /<vm>/<name>.img"));
        };
        if !user.may_write(&vm) {
            return Err(denied(format!("{user} may not upload {vm}'s images")));
        }
        let mut w = if start_pos == 0 {
            self.store.create(&vm, None).await.map_err(image_err)?
        } else {
            // REST + STOR or APPE: the image under this name continues, as a new generation
            // (published images never change).
            let base = self.uploaded_as(user, &vm, &name).ok_or_else(|| {
                Error::new(
                    ErrorKind::PermanentFileNotAvailable,
                    format!("no upload of /{vm}/{name} to resume; upload from the start"),
                )
            })?;
            if self.store.uploading(&base).is_some() {
                return Err(Error::new(
                    ErrorKind::TransientFileNotAvailable,
                    format!("{base} is still being uploaded"),
                ));
            }
            tracing::info!(base = %base, from = start_pos, user = %user, "upload resumed");
            self.store
                .resume(&base, start_pos, None)
                .await
                .map_err(image_err)?
        };
        let id = w.id.clone();
        self.uploads
            .lock()
            .expect("uploads")
            .insert((user.name.clone(), vm.clone(), name.clone()), id.clone());
        self.hooks.upload_started(&user.name, &id).await;
        let result = async {
            loop {
                // Fill whole buffers: the writer's thread stores one while the next arrives.
                let mut buf = w.buffer();
                while buf.len() < buf.capacity() {
                    let n = input.read_buf(&mut buf).await.map_err(|e| {
                        Error::new(
                            ErrorKind::ConnectionClosed,
                            format!("the upload broke off: {e}"),
                        )
                    })?;
                    if n == 0 {
                        break;
                    }
                }
                if buf.is_empty() {
                    break;
                }
                w.write_vec(buf).await.map_err(image_err)?;
            }
            w.publish().await.map_err(image_err)
        }
        .await;
        match result {
            Ok(p) => {
                tracing::info!(image = %p.id, size = p.size, sha256 = %p.sha256, user = %user, "image published");
                self.hooks.published(&user.name, &p).await;
                Ok(p.size.saturating_sub(start_pos))
            }
            Err(e) => {
                // The writer, dropped unpublished, removed the partial bytes.
                self.hooks.upload_failed(&user.name, &id, &reason(&e)).await;
                Err(e)
            }
        }
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, _: &FtpUser, _: P) -> Result<()> {
        Err(denied(
            "images are removed by the appliance's GC, not over FTP",
        ))
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, _: &FtpUser, _: P) -> Result<()> {
        Err(denied(
            "the image store has one directory per VM, made by the appliance",
        ))
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(&self, _: &FtpUser, _: P, _: P) -> Result<()> {
        Err(denied("images cannot be renamed"))
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, _: &FtpUser, _: P) -> Result<()> {
        Err(denied(
            "the image store has one directory per VM, made by the appliance",
        ))
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        match parse(path.as_ref())? {
            Target::Root => Ok(()),
            Target::Vm(vm) if user.may_read(&vm) || user.may_write(&vm) => Ok(()),
            _ => Err(denied("not yours")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(parse(Path::new("/")).unwrap(), Target::Root);
        assert_eq!(parse(Path::new("/vm1")).unwrap(), Target::Vm("vm1".into()));
        assert_eq!(
            parse(Path::new("/vm1/3.img")).unwrap(),
            Target::File("vm1".into(), "3.img".into())
        );
        for bad in [
            "/../etc/passwd",
            "/vm1/../../x",
            "/.hidden",
            "/vm1/.1.img.part",
            "/a/b/c",
        ] {
            assert!(parse(Path::new(bad)).is_err(), "{bad} accepted");
        }
        assert_eq!(file("7.img").unwrap(), File::Image(Some(7)));
        assert_eq!(file("latest.img").unwrap(), File::Image(None));
        assert_eq!(file("7.img.sha256").unwrap(), File::Sum(Some(7)));
        assert!(file("passwd").is_err());
        assert!(file("x.img").is_err());
    }
}

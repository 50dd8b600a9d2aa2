//! The libunftp storage back end over the image store, with per-account access checks.

use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use netmigrate_image::{Error as ImageError, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unftp_core::storage::{
    Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART,
};

use super::FtpUser;

#[derive(Debug, Clone)]
pub struct ImageBackend {
    store: Store,
    hooks: std::sync::Arc<dyn super::FtpAccounts>,
}

impl ImageBackend {
    pub fn new(store: Store, hooks: std::sync::Arc<dyn super::FtpAccounts>) -> Self {
        ImageBackend { store, hooks }
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

/// `<gen>.img` -> Some(gen); `latest.img` -> None (the newest).
fn generation(file: &str) -> Result<Option<u64>> {
    let stem = file
        .strip_suffix(".img")
        .ok_or_else(|| Error::from(ErrorKind::PermanentFileNotAvailable))?;
    if stem == "latest" {
        return Ok(None);
    }
    stem.parse()
        .map(Some)
        .map_err(|_| Error::from(ErrorKind::PermanentFileNotAvailable))
}

fn image_err(e: ImageError) -> Error {
    let kind = match &e {
        ImageError::NotFound(_) => ErrorKind::PermanentFileNotAvailable,
        ImageError::BadName(_) => ErrorKind::PermissionDenied,
        ImageError::NoSpace { .. } => ErrorKind::InsufficientStorageSpaceError,
        _ => ErrorKind::LocalError,
    };
    tracing::warn!("FTP: {e}");
    Error::new(kind, e.to_string())
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

    fn file_meta(&self, vm: &str, gen: u64) -> Result<Meta> {
        let path = self.store.root().join(vm).join(format!("{gen}.img"));
        let m = std::fs::metadata(&path)
            .map_err(|_| Error::from(ErrorKind::PermanentFileNotAvailable))?;
        Ok(Meta {
            len: m.len(),
            dir: false,
            modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
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
            Target::File(vm, f) if user.may_read(&vm) => {
                let gen = match generation(&f)? {
                    Some(g) => g,
                    None => self
                        .store
                        .newest(&vm)
                        .map_err(image_err)?
                        .ok_or_else(|| Error::from(ErrorKind::PermanentFileNotAvailable))?,
                };
                let id = netmigrate_image::ImageId {
                    vm: vm.clone(),
                    generation: gen,
                };
                // Still uploading: the final size is not known yet. A transient error (450)
                // makes clients skip SIZE and read to the end; a size so far would make curl
                // stop there.
                match self.store.uploading(&id) {
                    Some(_) => Err(Error::new(
                        ErrorKind::TransientFileNotAvailable,
                        "still being uploaded; its size is known once published",
                    )),
                    None => self.file_meta(&vm, gen),
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
        let mut r = self
            .store
            .read(&vm, generation(&f)?)
            .await
            .map_err(image_err)?;
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
        let Target::File(vm, _) = parse(path.as_ref())? else {
            return Err(denied("upload to /<vm>/<name>.img"));
        };
        if !user.may_write(&vm) {
            return Err(denied(format!("{user} may not upload {vm}'s images")));
        }
        if start_pos != 0 {
            // Resuming an upload into a new generation is meaningless; the store only appends.
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "uploads cannot be resumed yet; upload again",
            ));
        }
        let mut w = self.store.create(&vm, None).await.map_err(image_err)?;
        let id = w.id.clone();
        self.hooks.upload_started(&user.name, &id).await;
        let mut buf = vec![0u8; 1 << 20];
        let result = async {
            loop {
                let n = input.read(&mut buf).await.map_err(|e| {
                    Error::new(
                        ErrorKind::ConnectionClosed,
                        format!("the upload broke off: {e}"),
                    )
                })?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).await.map_err(image_err)?;
            }
            w.publish().await.map_err(image_err)
        }
        .await;
        match result {
            Ok(p) => {
                tracing::info!(image = %p.id, size = p.size, sha256 = %p.sha256, user = %user, "image published");
                self.hooks.published(&user.name, &p).await;
                Ok(p.size)
            }
            Err(e) => {
                // The writer, dropped unpublished, removed the partial bytes.
                self.hooks
                    .upload_failed(&user.name, &id, &e.to_string())
                    .await;
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
        assert_eq!(generation("7.img").unwrap(), Some(7));
        assert_eq!(generation("latest.img").unwrap(), None);
        assert!(generation("passwd").is_err());
    }
}

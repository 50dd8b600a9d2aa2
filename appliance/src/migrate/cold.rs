//! The cold path, the paper's: pause -> save stream -> image store -> target loads -> verify ->
//! resume. Streamed end to end: the source uploads its state to the appliance's FTP store while
//! the target already downloads it (the store's readers follow an upload), so the break is one
//! pass of the bytes, not an upload then a download. The engine waits on notices (the state's
//! bus for the upload's start, the store's progress for its growth and end), never by polling.

use std::time::{Duration, Instant};

use netmigrate_image::{ImageId, Progress};
use tokio::sync::broadcast::{self, error::RecvError};

use super::error::{Error, Result};
use super::{Failure, Move, Step};
use crate::shell::quote;
use crate::state::{now_ms, AccountRow, Notice};

const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the upload may take to show up in the store once the save began.
const UPLOAD_APPEARS: Duration = Duration::from_secs(20);
/// An upload that stops growing for this long has failed (a host that hangs, or whose link
/// is cut, would otherwise keep the VM stopped until the save's timeout).
const UPLOAD_STALLS: Duration = Duration::from_secs(30);

/// One-time FTP credentials of a move, and where each host finds them. Their names follow
/// from the migration's number, so recovery finds them too.
pub(crate) struct Creds {
    pub up_user: String,
    pub down_user: String,
    pub up_netrc: String,
    pub down_netrc: String,
}

impl Creds {
    /// Those of move `id` of `vm` from the host with `src_run` to the one with `dst_run`.
    pub fn new(vm: &str, id: i64, src_run: &str, dst_run: &str) -> Creds {
        Creds {
            up_user: format!("mig{id}-up"),
            down_user: format!("mig{id}-down"),
            up_netrc: format!("{src_run}/{vm}.{id}.netrc"),
            down_netrc: format!("{dst_run}/{vm}.{id}.netrc"),
        }
    }

    fn of(m: &Move<'_>) -> Creds {
        Creds::new(
            &m.def.name,
            m.journal.id,
            &m.src.cfg.run_dir,
            &m.dst.cfg.run_dir,
        )
    }
}

/// The source's save while the rest of the transfer goes on: held so that a rollback can drop
/// it first, and watched so that its failure ends whatever waits beside it.
struct Saving<'m> {
    save: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'm>>>,
    done: bool,
}

impl<'m> Saving<'m> {
    fn start(
        save: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'm>>,
    ) -> Self {
        Saving {
            save: Some(save),
            done: false,
        }
    }

    fn none() -> Self {
        Saving {
            save: None,
            done: true,
        }
    }

    /// Runs `f` while the save goes on; a save that fails first ends it with its error.
    async fn beside<T>(&mut self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::pin!(f);
        loop {
            let Some(save) = self.save.as_mut().filter(|_| !self.done) else {
                return f.await;
            };
            tokio::select! {
                r = save => {
                    r?;
                    self.done = true;
                }
                r = &mut f => return r,
            }
        }
    }

    /// Waits for the save to end, if it has not: its error, if it failed.
    async fn finish(mut self) -> Option<Error> {
        match (self.done, self.save.take()) {
            (false, Some(s)) => s.await.err(),
            _ => None,
        }
    }
}

/// The target's files of one transfer: the fifo its hasher reads, the checksum it writes
/// (through a `.tmp` beside it), and, when local disks come with the state, what their
/// receiver and the decompressor say once done (`disks-ok`, `zstd-ok`).
pub(crate) struct TransferFiles {
    pub fifo: String,
    pub sum: String,
    pub sum_tmp: String,
    pub disks: String,
}

impl TransferFiles {
    pub fn new(vm: &str, id: i64, dst_run: &str) -> TransferFiles {
        let sum = format!("{dst_run}/{vm}.{id}.in.sha256");
        TransferFiles {
            fifo: format!("{dst_run}/{vm}.{id}.in.fifo"),
            sum_tmp: format!("{sum}.tmp"),
            sum,
            disks: format!("{dst_run}/{vm}.{id}.in.disks"),
        }
    }

    pub fn all(&self) -> [&str; 4] {
        [&self.fifo, &self.sum, &self.sum_tmp, &self.disks]
    }
}

/// How long a save may take: five minutes, and as long again as the local disks' data takes
/// at 20 MB/s (they cross in the same stream).
fn save_timeout(disks: &[crate::hypervisor::DiskUsage]) -> Duration {
    let data: u64 = disks.iter().map(|d| d.allocated_bytes).sum();
    SAVE_TIMEOUT + Duration::from_secs(data / 20_000_000)
}

impl Move<'_> {
    /// The appliance's address on the network of `host`: where that host reaches the store.
    fn store_ip(&self, host: &crate::config::HostConfig) -> Result<std::net::Ipv4Addr> {
        let std::net::IpAddr::V4(a) = host.address else {
            return Err(Error::Refused(format!(
                "{}: IPv6 hosts cannot reach the image store yet",
                host.name
            )));
        };
        self.cfg
            .networks
            .iter()
            .find(|n| n.address.contains(&a))
            .and_then(|n| self.cfg.own_address(n))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} ({a}) is on none of the appliance's networks: it cannot reach the image store",
                    host.name
                ))
            })
    }

    fn store_url(&self, host: &crate::config::HostConfig) -> Result<String> {
        Ok(format!(
            "ftp://{}:{}",
            self.store_ip(host)?,
            self.cfg.ftp.port
        ))
    }

    /// The move's two accounts in the state (one may write the VM's images, one read them,
    /// for an hour), and each host's netrc file for its own.
    async fn make_creds(&self, c: &Creds) -> Result<()> {
        let vm = &self.def.name;
        for (user, write, side, netrc) in [
            (&c.up_user, true, self.src, &c.up_netrc),
            (&c.down_user, false, self.dst, &c.down_netrc),
        ] {
            let token = crate::ftp::new_password().map_err(|e| Error::Store(e.to_string()))?;
            let grant = vec![vm.clone()];
            self.engine
                .state
                .put_account(AccountRow {
                    name: user.clone(),
                    password_hash: crate::ftp::hash_token(&token),
                    write: if write { grant.clone() } else { vec![] },
                    read: if write { vec![] } else { grant },
                    expires_ms: Some(now_ms() + 3_600_000),
                })
                .await?;
            let host = self.store_ip(&side.cfg)?;
            side.write_secret(
                netrc,
                &format!("machine {host} login {user} password {token}\n"),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes the accounts and netrc files `make_creds` made (or began to make).
    async fn drop_creds(&self, c: &Creds) -> Result<()> {
        for u in [&c.up_user, &c.down_user] {
            self.engine.state.delete_account(u.clone()).await?;
        }
        self.src.remove(&[&c.up_netrc]).await?;
        self.dst.remove(&[&c.down_netrc]).await
    }

    pub(crate) async fn cold(&self) -> Result<(), Failure> {
        let rolled = Failure::RolledBack;
        let src_url = self.store_url(&self.src.cfg).map_err(rolled)?;
        let dst_url = self.store_url(&self.dst.cfg).map_err(rolled)?;
        self.store_has_room().map_err(rolled)?;
        let creds = Creds::of(self);
        let r = async {
            self.journal
                .step(Step::Accounts, self.make_creds(&creds))
                .await
                .map_err(rolled)?;
            let spec = self.prepare_target().await.map_err(rolled)?;
            Box::pin(self.transfer(&creds, &src_url, &dst_url, &spec)).await
        }
        .await;
        self.journal
            .try_step(Step::DropAccounts, self.drop_creds(&creds))
            .await;
        r
    }

    /// The saved state is about the size of the VM's memory, and its local disks' data comes
    /// with it (compressed, at most what they hold): a store that cannot take them with its
    /// reserve left is found out before the VM is paused, not by a refused upload halfway.
    fn store_has_room(&self) -> Result<()> {
        let disks: u64 = self.disks.iter().map(|d| d.allocated_bytes).sum();
        let need = (u64::from(self.def.mem_mib) << 20) + disks;
        let (free, reserve) = self
            .engine
            .store
            .room()
            .map_err(|e| Error::Store(e.to_string()))?;
        if free >= need + reserve {
            return Ok(());
        }
        Err(Error::Store(format!(
            "the image store has {} MiB free: {}'s state (up to {} MiB) and disks ({} MiB of \
             data) would leave less than its reserve of {} MiB (ftp.reserve)",
            free >> 20,
            self.def.name,
            self.def.mem_mib,
            disks >> 20,
            reserve >> 20
        )))
    }

    async fn remove_transfer_files(&self, f: &TransferFiles) {
        self.journal
            .try_step(Step::TransferFiles, self.dst.remove(&f.all()))
            .await;
    }

    /// From the pause to the VM running on the target.
    async fn transfer(
        &self,
        c: &Creds,
        src_url: &str,
        dst_url: &str,
        spec: &crate::network::PortSpec,
    ) -> Result<(), Failure> {
        let (vm, id) = (&self.def.name, self.journal.id);
        let files = TransferFiles::new(vm, id, &self.dst.cfg.run_dir);
        let mut repoint = self.repointer().await;
        // Subscribed before the save can start: the upload's first notice cannot be missed.
        let mut notices = self.engine.state.watch();
        let paused_at = Instant::now();
        let since = |at: Instant| at.duration_since(paused_at).as_millis() as u64;
        let paused = async { Ok(self.src.driver.pause(self.def).await?) };
        if let Err(e) = self.journal.step(Step::PauseSource, paused).await {
            return self.back(e, Saving::none(), &files).await;
        }
        let upload = format!(
            "curl -sS --fail --ftp-pasv --netrc-file {} -T - {src_url}/{vm}/mig{id}.img",
            quote(&c.up_netrc)
        );
        let timeout = save_timeout(self.disks);
        let mut save = Saving::start(Box::pin(self.journal.step(Step::SaveToStore, async {
            // Local disks go ahead of the state, in the same upload, compressed (their
            // zeros do not cross the wire); the VM is paused, so they hold still.
            let sink = match self.disks.is_empty() {
                true => upload,
                false => format!(
                    "{} | zstd -1 -q -c | {upload}",
                    self.src.driver.send_disks(self.def).await?
                ),
            };
            Ok(self.src.driver.save_to(self.def, &sink, timeout).await?)
        })));
        // The target starts loading as soon as the upload exists in the store; the network is
        // re-pointed meanwhile (not before the save: it is off the break's critical path).
        let repointed = async {
            if let Some(r) = repoint.as_mut() {
                self.repoint(&mut **r).await;
            }
        };
        let appeared = save.beside(self.upload_appears(&c.up_user, &mut notices));
        let generation = match tokio::join!(appeared, repointed).0 {
            Ok(g) => g,
            Err(e) => return self.back(e, save, &files).await,
        };
        let image = ImageId {
            vm: vm.clone(),
            generation,
        };
        // Journaled at once: `images gc` keeps what a running migration streams through.
        let _ = self
            .engine
            .state
            .migration_detail(id, serde_json::json!({"image": image.to_string()}))
            .await;
        let upload_seen_ms = since(Instant::now());
        // The target may resume once it has loaded every byte and they check out; the source's
        // save (its upload being made durable) need not be waited for, unless it fails first.
        let upload = self.upload_complete(&image);
        tokio::pin!(upload);
        let loaded = save.beside(self.load(c, &files, dst_url, &image, &mut upload));
        let uploaded = match loaded.await {
            Ok(u) => u,
            Err(e) => return self.back(e, save, &files).await,
        };
        let loaded_ms = since(Instant::now());
        if let Err(e) = self.port_after_load(spec).await {
            return self.back(e, save, &files).await;
        }
        let verified = self.journal.step(Step::VerifyChecksum, async {
            let (at, stored) = match uploaded {
                Some(u) => u,
                None => tokio::time::timeout(Duration::from_secs(30), &mut upload)
                    .await
                    .map(|r| r.map(|sha| (Instant::now(), sha)))
                    .map_err(|_| {
                        Error::Store(format!(
                            "the upload of {image} did not complete within 30 s"
                        ))
                    })??,
            };
            self.verify(&image, &stored, &files).await?;
            Ok(at)
        });
        let upload_done_at = match verified.await {
            Ok(at) => at,
            Err(e) => return self.back(e, save, &files).await,
        };
        let verified_ms = since(Instant::now());
        let resumed = async { Ok(self.dst.driver.resume(self.def).await?) };
        if let Err(e) = self.journal.step(Step::ResumeOnTarget, resumed).await {
            return self.back(e, save, &files).await;
        }
        let paused_ms = paused_at.elapsed().as_millis() as u64;
        let told = self.arrive().await;
        self.remove_transfer_files(&files).await;
        if let Some(e) = save.finish().await {
            // The target runs verified bytes; the source's side ended badly afterwards.
            tracing::warn!(
                migration = id,
                "after the target resumed, the source's save: {e}"
            );
        }
        let _ = self
            .engine
            .state
            .migration_detail(
                id,
                serde_json::json!({"image": image.to_string(), "paused_ms": paused_ms,
                    "phases_ms": {"upload started": upload_seen_ms,
                                  "upload complete": since(upload_done_at),
                                  "loaded": loaded_ms, "verified": verified_ms, "resumed": paused_ms}}),
            )
            .await;
        self.clear_source(told).await
    }

    /// Undoes a transfer that failed: the save dropped first (one still waiting on its answer
    /// may hold the source's control connection, which serves one client at a time), then the
    /// rollback, then the target's transfer files.
    async fn back(&self, e: Error, save: Saving<'_>, files: &TransferFiles) -> Result<(), Failure> {
        drop(save);
        self.rollback().await;
        self.remove_transfer_files(files).await;
        Err(Failure::RolledBack(e))
    }

    /// The target loads the upload of `image` as the store receives it, hashing what it
    /// loads into the transfer's checksum file. `upload` tells the upload's end meanwhile: once
    /// it is complete, its SHA-256 (and when) comes back with the load; if it stalls or fails,
    /// the load ends with that.
    async fn load(
        &self,
        c: &Creds,
        files: &TransferFiles,
        dst_url: &str,
        image: &ImageId,
        upload: &mut (impl std::future::Future<Output = Result<String>> + Unpin),
    ) -> Result<Option<(Instant, String)>> {
        // The driver runs this with /bin/sh: the stream goes to the hypervisor and, through a
        // fifo, to a hasher, so the target's own checksum of what it loaded can be compared.
        // openssl uses the CPU's SHA instructions (coreutils' sha256sum is 5x slower here).
        let mut source = format!(
            "rm -f {f} {s} {d}; mkfifo {f}; \
             (if command -v openssl >/dev/null; then openssl dgst -sha256 -r; else sha256sum; fi \
               < {f} > {t} && mv {t} {s}) & \
             curl -sS --fail --ftp-pasv --netrc-file {n} {dst_url}/{vm}/{g}.img | tee -p {f}",
            f = quote(&files.fifo),
            s = quote(&files.sum),
            t = quote(&files.sum_tmp),
            d = quote(&files.disks),
            n = quote(&c.down_netrc),
            vm = image.vm,
            g = image.generation,
        );
        let restore = self.journal.step(Step::LoadOnTarget, async {
            if !self.disks.is_empty() {
                // The disks are written into their copies (which the waiting hypervisor has
                // not activated yet) before the state reaches it; zstd's own checksum of
                // what it unpacked is told beside the receiver's word.
                source += &format!(
                    " | {{ zstd -dcq && echo zstd-ok >> {d}; }} | {}",
                    self.dst
                        .driver
                        .receive_disks(self.def, &files.disks)
                        .await?,
                    d = quote(&files.disks),
                );
            }
            Ok(self
                .dst
                .driver
                .restore_from(self.def, &source, save_timeout(self.disks))
                .await?)
        });
        tokio::pin!(restore);
        let mut uploaded = None;
        loop {
            tokio::select! {
                r = &mut *upload, if uploaded.is_none() => uploaded = Some((Instant::now(), r?)),
                r = &mut restore => return r.map(|()| uploaded),
            }
        }
    }

    /// The SHA-256 of the upload of `image` once every byte is in (before it is made durable),
    /// as the store tells its progress; fails once it fails, or stops growing for
    /// `UPLOAD_STALLS`.
    async fn upload_complete(&self, image: &ImageId) -> Result<String> {
        let store = &self.engine.store;
        let ended = || {
            store
                .completed(image)
                .map(|(_, sha)| sha)
                .ok_or_else(|| Error::Store(format!("the upload of {image} failed")))
        };
        let Some(mut rx) = store.progress(image) else {
            return ended();
        };
        loop {
            let written = match rx.borrow_and_update().clone() {
                Progress::Complete { sha256, .. } | Progress::Published { sha256, .. } => {
                    return Ok(sha256)
                }
                Progress::Failed(why) => {
                    return Err(Error::Store(format!("the upload of {image} failed: {why}")))
                }
                Progress::Uploading { written } => written,
            };
            match tokio::time::timeout(UPLOAD_STALLS, rx.changed()).await {
                Ok(Ok(())) => {}
                // The upload is over (published, or failed) and its progress gone with it.
                Ok(Err(_)) => return ended(),
                Err(_) => {
                    return Err(Error::Store(format!(
                        "the upload of {image} stalled: no byte for {} s after {written} bytes",
                        UPLOAD_STALLS.as_secs()
                    )))
                }
            }
        }
    }

    /// Waits for the upload of this move's account to appear in the store's manifest: told by
    /// the state's notices (subscribed to before the save began), read from the state once
    /// first and again if notices were missed.
    async fn upload_appears(
        &self,
        user: &str,
        notices: &mut broadcast::Receiver<Notice>,
    ) -> Result<u64> {
        let deadline = tokio::time::sleep(UPLOAD_APPEARS);
        tokio::pin!(deadline);
        loop {
            let known = self
                .engine
                .state
                .image_uploaded_by(self.def.name.clone(), user.to_string())
                .await?;
            if let Some((g, _)) = known {
                return Ok(g);
            }
            loop {
                tokio::select! {
                    _ = &mut deadline => {
                        return Err(Error::Store(format!(
                            "the source's upload did not reach the image store within {}s",
                            UPLOAD_APPEARS.as_secs()
                        )))
                    }
                    n = notices.recv() => match n {
                        Ok(Notice::Image { vm, generation, uploader: Some(u), .. })
                            if vm == self.def.name && u == user => return Ok(generation),
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            return Err(Error::Store("the appliance is stopping".into()))
                        }
                    },
                }
            }
        }
    }

    /// The store's checksum of the upload against the one the target computed over what it
    /// loaded; with local disks, also that every disk was written and the stream unpacked
    /// whole (zstd checks its own checksum of what it unpacked).
    async fn verify(&self, image: &ImageId, stored: &str, files: &TransferFiles) -> Result<()> {
        if !self.disks.is_empty() {
            let said = self
                .dst
                .quick(&format!(
                    "i=0; while [ \"$(grep -c -e disks-ok -e zstd-ok {d} 2>/dev/null)\" != 2 ] \
                       && [ $i -lt 500 ]; do sleep 0.005; i=$((i+1)); done; cat {d} 2>/dev/null; true",
                    d = quote(&files.disks)
                ))
                .await?;
            for (word, what) in [
                ("disks-ok", "the target did not write every disk"),
                ("zstd-ok", "the stream did not unpack whole on the target"),
            ] {
                if !said.lines().any(|l| l == word) {
                    return Err(Error::Refused(format!("{image}: {what}")));
                }
            }
        }
        let got = self
            .dst
            .quick(&format!(
                "i=0; while [ ! -s {s} ] && [ $i -lt 500 ]; do sleep 0.005; i=$((i+1)); done; cat {s}",
                s = quote(&files.sum)
            ))
            .await?;
        let got = got.split_whitespace().next().unwrap_or("");
        if got != stored {
            return Err(Error::Refused(format!(
                "{image}: the target loaded bytes with SHA-256 {}, the source uploaded {stored}",
                if got.is_empty() { "(none)" } else { got }
            )));
        }
        Ok(())
    }

    /// Undo to the state before the move: the target cleared, the VM running on the source.
    pub(crate) async fn rollback(&self) {
        // A save still streaming out would go on, and end the VM paused: stop it first.
        self.journal
            .try_step(Step::UndoSave, async {
                Ok(self.src.driver.abort_outgoing(self.def).await?)
            })
            .await;
        // The source first: the target never runs a state saved from a paused VM unless told
        // to (the drivers keep the source's run state), and a target that no longer answers would
        // otherwise keep the VM paused for as long as it takes to give up on it.
        self.journal
            .try_step(Step::UndoPause, async {
                Ok(self.src.driver.resume(self.def).await?)
            })
            .await;
        // The network may have been re-pointed at the target already.
        self.journal
            .try_step(Step::AnnounceOnSource, async {
                Ok(self.src.driver.announce(self.def).await?)
            })
            .await;
        // A disk mirror lets go of the target's copies before they are removed.
        if !self.disks.is_empty() {
            self.journal
                .try_step(Step::UndoMirror, async {
                    Ok(self.src.driver.end_mirror(self.def).await?)
                })
                .await;
        }
        self.undo_target().await;
    }
}

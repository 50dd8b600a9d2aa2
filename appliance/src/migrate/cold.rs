//! The cold path, the paper's: pause -> save stream -> image store -> target loads -> verify ->
//! resume. Streamed end to end: the source uploads its state to the appliance's FTP store while
//! the target already downloads it (the store's readers follow an upload), so the break is one
//! pass of the bytes, not an upload then a download.

use std::time::{Duration, Instant};

use netmigrate_image::ImageId;

use super::{driver_err, Failure, Move};
use crate::shell::quote;
use crate::state::{now_ms, AccountRow};

const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the upload may take to show up in the store once the save began.
const UPLOAD_APPEARS: Duration = Duration::from_secs(20);
/// An upload that stops growing for this long has failed (a host that hangs, or whose link
/// is cut, would otherwise keep the VM stopped until the save's timeout).
const UPLOAD_STALLS: Duration = Duration::from_secs(30);

/// One-time FTP credentials of a move, and where each host finds them.
struct Creds {
    up_user: String,
    down_user: String,
    up_netrc: String,
    down_netrc: String,
}

impl Move<'_> {
    /// The appliance's address on the network of `host`: where that host reaches the store.
    fn store_ip(&self, host: &crate::config::HostConfig) -> Result<std::net::Ipv4Addr, String> {
        let std::net::IpAddr::V4(a) = host.address else {
            return Err(format!(
                "{}: IPv6 hosts cannot reach the image store yet",
                host.name
            ));
        };
        self.cfg
            .networks
            .iter()
            .find(|n| n.address.contains(&a))
            .and_then(|n| self.cfg.own_address(n))
            .ok_or_else(|| {
                format!(
                    "{} ({a}) is on none of the appliance's networks: it cannot reach the image store",
                    host.name
                )
            })
    }

    fn store_url(&self, host: &crate::config::HostConfig) -> Result<String, String> {
        Ok(format!(
            "ftp://{}:{}",
            self.store_ip(host)?,
            self.cfg.ftp.port
        ))
    }

    async fn make_creds(&self) -> Result<Creds, String> {
        let id = self.journal.id;
        let vm = &self.def.name;
        let mut made = Vec::new();
        for (user, write, side) in [
            (format!("mig{id}-up"), true, self.src),
            (format!("mig{id}-down"), false, self.dst),
        ] {
            let token = crate::ftp::new_password().map_err(|e| e.to_string())?;
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
                .await
                .map_err(|e| e.to_string())?;
            let host = self.store_ip(&side.cfg)?;
            let netrc = format!("{}/{vm}.{id}.netrc", side.cfg.run_dir);
            side.write_secret(
                &netrc,
                &format!("machine {host} login {user} password {token}\n"),
            )
            .await?;
            made.push((user, netrc));
        }
        let (down_user, down_netrc) = made.pop().expect("two accounts");
        let (up_user, up_netrc) = made.pop().expect("two accounts");
        Ok(Creds {
            up_user,
            down_user,
            up_netrc,
            down_netrc,
        })
    }

    async fn drop_creds(&self, c: &Creds) {
        for u in [&c.up_user, &c.down_user] {
            let _ = self.engine.state.delete_account(u.clone()).await;
        }
        let _ = self.src.sh(&format!("rm -f {}", quote(&c.up_netrc))).await;
        let _ = self
            .dst
            .sh(&format!("rm -f {}", quote(&c.down_netrc)))
            .await;
    }

    pub(crate) async fn cold(&self) -> Result<(), Failure> {
        let rolled = Failure::RolledBack;
        let src_url = self.store_url(&self.src.cfg).map_err(rolled)?;
        let dst_url = self.store_url(&self.dst.cfg).map_err(rolled)?;
        self.store_has_room().map_err(rolled)?;
        let creds = self.make_creds().await.map_err(rolled)?;
        let r = async {
            let spec = self.prepare_target().await.map_err(rolled)?;
            Box::pin(self.transfer(&creds, &src_url, &dst_url, &spec)).await
        }
        .await;
        self.drop_creds(&creds).await;
        r
    }

    /// The saved state is about the size of the VM's memory: a store that cannot take it with its
    /// reserve left is found out before the VM is paused, not by a refused upload halfway.
    fn store_has_room(&self) -> Result<(), String> {
        let need = u64::from(self.def.mem_mib) << 20;
        let (free, reserve) = self.engine.store.room().map_err(|e| e.to_string())?;
        if free >= need + reserve {
            return Ok(());
        }
        Err(format!(
            "the image store has {} MiB free: {}'s state (up to {} MiB) would leave less than \
             its reserve of {} MiB (ftp.reserve)",
            free >> 20,
            self.def.name,
            self.def.mem_mib,
            reserve >> 20
        ))
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
        let sum_file = format!("{}/{vm}.{id}.in.sha256", self.dst.cfg.run_dir);
        let fifo = format!("{}/{vm}.{id}.in.fifo", self.dst.cfg.run_dir);
        let back = |e: String| {
            let cleanup = format!("rm -f {} {}", quote(&fifo), quote(&sum_file));
            async move {
                self.rollback().await;
                let _ = self.dst.sh(&cleanup).await;
                Err(Failure::RolledBack(e))
            }
        };
        let mut repoint = self.repointer().await;
        let paused_at = Instant::now();
        if let Err(e) = self
            .journal
            .step("pause source", async {
                self.src.driver.pause(self.def).await.map_err(driver_err)
            })
            .await
        {
            return back(e).await;
        }
        let sink = format!(
            "curl -sS --fail --ftp-pasv --netrc-file {} -T - {src_url}/{vm}/mig{id}.img",
            quote(&c.up_netrc)
        );
        // Held in an Option so that a rollback can drop it first: a save waiting on its QMP
        // answer holds the source's QMP connection, and QEMU serves one client at a time.
        let mut save = Some(Box::pin(self.journal.step("save to image store", async {
            self.src
                .driver
                .save_to(self.def, &sink, SAVE_TIMEOUT)
                .await
                .map_err(driver_err)
        })));
        // The target starts loading as soon as the upload exists in the store; the network is
        // re-pointed meanwhile (not before the save: it is off the break's critical path).
        let mut save_done = false;
        let appeared = async {
            loop {
                tokio::select! {
                    r = save.as_mut().expect("save"), if !save_done => {
                        r?;
                        save_done = true;
                    }
                    g = self.upload_appears(&c.up_user) => {
                        if g.is_err() {
                            drop(save.take());
                        }
                        return g;
                    }
                }
            }
        };
        let repointed = async {
            if let Some(r) = repoint.as_mut() {
                self.repoint(r).await;
            }
        };
        let (appeared, ()) = tokio::join!(appeared, repointed);
        let generation = match appeared {
            Ok(g) => g,
            Err(e) => return back(e).await,
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
        // Phases, in ms after the pause (as the paper's and the lab recipe's tables have them).
        let since = |at: Instant| at.duration_since(paused_at).as_millis() as u64;
        let upload_seen_ms = since(Instant::now());
        let upload_done = {
            let (store, image) = (self.engine.store.clone(), image.clone());
            tokio::spawn(async move {
                loop {
                    if store.completed(&image).is_some() {
                        return Some(Instant::now());
                    }
                    store.uploading(&image)?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        // QEMU runs this with /bin/sh: the stream goes to QEMU and, through a fifo, to a
        // hasher, so the target's own checksum of what it loaded can be compared. openssl
        // uses the CPU's SHA instructions (coreutils' sha256sum is 5x slower here).
        let source = format!(
            "rm -f {f} {s}; mkfifo {f}; \
             (if command -v openssl >/dev/null; then openssl dgst -sha256 -r; else sha256sum; fi \
               < {f} > {s}.tmp && mv {s}.tmp {s}) & \
             curl -sS --fail --ftp-pasv --netrc-file {n} {dst_url}/{vm}/{generation}.img | tee -p {f}",
            f = quote(&fifo),
            s = quote(&sum_file),
            n = quote(&c.down_netrc),
        );
        let restore = self.journal.step("load on target", async {
            self.dst
                .driver
                .restore_from(self.def, &source, SAVE_TIMEOUT)
                .await
                .map_err(driver_err)
        });
        // The target may resume once it has loaded every byte and they check out; the source's
        // save (its upload being made durable) need not be waited for, unless it fails first.
        tokio::pin!(restore);
        let stalls = self.upload_stalls(&image);
        tokio::pin!(stalls);
        let loaded = loop {
            tokio::select! {
                r = save.as_mut().expect("save"), if !save_done => {
                    if let Err(e) = r {
                        return back(e).await;
                    }
                    save_done = true;
                }
                r = &mut restore => break r,
                why = &mut stalls => break Err(why),
            }
        };
        if let Err(e) = loaded {
            drop(save.take());
            return back(e).await;
        }
        let loaded_ms = since(Instant::now());
        if let Err(e) = self.port_after_load(spec).await {
            drop(save.take());
            return back(e).await;
        }
        if let Err(e) = self
            .journal
            .step("verify checksum", self.verify(&image, &sum_file))
            .await
        {
            drop(save.take());
            return back(e).await;
        }
        let verified_ms = since(Instant::now());
        if let Err(e) = self
            .journal
            .step("resume on target", async {
                self.dst.driver.resume(self.def).await.map_err(driver_err)
            })
            .await
        {
            drop(save.take());
            return back(e).await;
        }
        let paused_ms = paused_at.elapsed().as_millis() as u64;
        let told = self.arrive().await;
        let _ = self
            .dst
            .sh(&format!("rm -f {} {}", quote(&fifo), quote(&sum_file)))
            .await;
        let upload_done_ms = upload_done.await.ok().flatten().map(since);
        if let (false, Some(s)) = (save_done, save.take()) {
            if let Err(e) = s.await {
                // The target runs verified bytes; the source's side ended badly afterwards.
                tracing::warn!(
                    migration = id,
                    "after the target resumed, the source's save: {e}"
                );
            }
        }
        let _ = self
            .engine
            .state
            .migration_detail(
                id,
                serde_json::json!({"image": image.to_string(), "paused_ms": paused_ms,
                    "phases_ms": {"upload started": upload_seen_ms, "upload complete": upload_done_ms,
                                  "loaded": loaded_ms, "verified": verified_ms, "resumed": paused_ms}}),
            )
            .await;
        self.clear_source(told).await
    }

    /// Resolves, with why, once the upload stops growing for `UPLOAD_STALLS`; never once it
    /// is complete.
    async fn upload_stalls(&self, image: &ImageId) -> String {
        let (mut last, mut since) = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.engine.store.completed(image).is_some() {
                return std::future::pending().await;
            }
            match self.engine.store.uploading(image) {
                Some(w) if w != last => (last, since) = (w, Instant::now()),
                Some(_) if since.elapsed() >= UPLOAD_STALLS => {
                    return format!(
                        "the upload of {image} stalled: no byte for {} s after {last} bytes",
                        UPLOAD_STALLS.as_secs()
                    )
                }
                Some(_) => {}
                None => return format!("the upload of {image} failed"),
            }
        }
    }

    /// Waits for the upload of this move's account to appear in the store's manifest.
    async fn upload_appears(&self, user: &str) -> Result<u64, String> {
        let t = Instant::now();
        loop {
            if let Some((g, _)) = self
                .engine
                .state
                .image_uploaded_by(self.def.name.clone(), user.to_string())
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(g);
            }
            if t.elapsed() > UPLOAD_APPEARS {
                return Err(format!(
                    "the source's upload did not reach the image store within {}s",
                    UPLOAD_APPEARS.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The store's checksum of the upload (known once every byte is in, before it is made
    /// durable) against the one the target computed over what it loaded.
    async fn verify(&self, image: &ImageId, sum_file: &str) -> Result<(), String> {
        let t = Instant::now();
        let stored = loop {
            if let Some((_, sha)) = self.engine.store.completed(image) {
                break sha;
            }
            if self.engine.store.uploading(image).is_none() {
                return Err(format!("the upload of {image} failed"));
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the upload of {image} did not complete within 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let got = self
            .dst
            .quick(&format!(
                "i=0; while [ ! -s {s} ] && [ $i -lt 500 ]; do sleep 0.005; i=$((i+1)); done; cat {s}",
                s = quote(sum_file)
            ))
            .await?;
        let got = got.split_whitespace().next().unwrap_or("");
        if got != stored {
            return Err(format!(
                "{image}: the target loaded bytes with SHA-256 {}, the source uploaded {stored}",
                if got.is_empty() { "(none)" } else { got }
            ));
        }
        Ok(())
    }

    /// Undo to the state before the move: the target cleared, the VM running on the source.
    pub(crate) async fn rollback(&self) {
        // A save still streaming out would go on, and end the VM paused: stop it first.
        self.journal
            .undo("save", async {
                self.src
                    .driver
                    .abort_outgoing(self.def)
                    .await
                    .map_err(driver_err)
            })
            .await;
        // The source first: the target never runs a state saved from a paused VM unless told
        // to (QEMU keeps the source's run state), and a target that no longer answers would
        // otherwise keep the VM paused for as long as it takes to give up on it.
        self.journal
            .undo("pause source", async {
                self.src.driver.resume(self.def).await.map_err(driver_err)
            })
            .await;
        // The network may have been re-pointed at the target already.
        self.journal
            .try_step("announce on source", async {
                self.src.driver.announce(self.def).await.map_err(driver_err)
            })
            .await;
        self.undo_target().await;
    }
}

//! The image store and its FTP server, as the appliance runs them: accounts kept in state
//! (passwords hashed with argon2id), the manifest kept in state, one listener per network.

use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use async_trait::async_trait;
use netmigrate_image::{ImageId, Published, Store};
use netmigrate_services::ftp::{FtpAccounts, FtpUser};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::{now_ms, AccountRow, ImageChange, NewEvent, State};
use crate::Error;

/// Accounts over the appliance's state.
#[derive(Debug)]
pub struct StateAccounts {
    pub state: State,
    /// With `[ftp] compress`: the store and the zstd level, to compress older images after
    /// each publish.
    pub compress: Option<(Store, i32)>,
    /// Passwords argon2 accepted lately: a host logs in for each transfer, and argon2's tens of
    /// milliseconds each time would count against every transfer.
    verified: Verified,
}

/// Logins argon2 accepted, kept as a keyed SHA-256 of (stored hash, password) under a key made
/// at start and never stored: a memory dump gives no cheaper attack on the password than
/// argon2's hash, and a password reset (a new stored hash) forgets the old one at once.
struct Verified {
    key: [u8; 32],
    #[allow(clippy::type_complexity)]
    seen: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], std::time::Instant)>>,
}

/// How long an accepted password skips argon2.
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the tags.
        f.write_str("Verified { .. }")
    }
}

impl Verified {
    fn new() -> Result<Verified, Error> {
        use std::io::Read;
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| Error::Io("reading /dev/urandom".into(), e))?;
        Ok(Verified {
            key,
            seen: Default::default(),
        })
    }

    fn tag(&self, hash: &str, password: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.key);
        h.update(hash.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn knows(&self, user: &str, hash: &str, password: &str) -> bool {
        let tag = self.tag(hash, password);
        let seen = self.seen.lock().expect("verified lock");
        seen.get(user)
            .is_some_and(|(t, at)| at.elapsed() < VERIFIED_FOR && bool::from(t.ct_eq(&tag)))
    }

    fn remember(&self, user: &str, hash: &str, password: &str) {
        let tag = self.tag(hash, password);
        let mut seen = self.seen.lock().expect("verified lock");
        seen.retain(|_, (_, at)| at.elapsed() < VERIFIED_FOR);
        seen.insert(user.to_string(), (tag, std::time::Instant::now()));
    }
}

/// Keeps every published image of `vm` but the newest compressed at rest (the newest stays as
/// it came: the next restore reads it, by sendfile), and records each in the manifest.
pub async fn compact(store: &Store, state: &State, vm: &str, level: i32) {
    let Ok(all) = store.list() else { return };
    let mine: Vec<Published> = all.into_iter().filter(|p| p.id.vm == vm).collect();
    let newest = mine.iter().map(|p| p.id.generation).max();
    for p in mine
        .iter()
        .filter(|p| !p.compressed && Some(p.id.generation) != newest)
    {
        match store.compress(&p.id, level).await {
            Ok(c) => {
                let _ = state
                    .image_state(ImageChange {
                        vm: c.id.vm.clone(),
                        generation: c.id.generation,
                        state: "published",
                        compression: Some("zstd"),
                        stored: Some(c.stored),
                        ..Default::default()
                    })
                    .await;
                tracing::info!(image = %c.id, size = c.size, stored = c.stored, "image compressed");
            }
            Err(e) => {
                let _ = state
                    .record(
                        NewEvent::warn("image.compress", format!("not compressed: {e}"))
                            .about(p.id.to_string()),
                    )
                    .await;
            }
        }
    }
}

/// A new random password (24 characters from a URL-safe alphabet).
pub fn new_password() -> Result<String, Error> {
    use std::io::Read;
    let mut raw = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| Error::Io("reading /dev/urandom".into(), e))?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// The stored form of a one-time migration token: SHA-256. The token is 144 random bits, so a
/// slow password hash would add nothing but latency (its check falls inside a VM's break).
pub fn hash_token(token: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(token.as_bytes());
    format!(
        "sha256${}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn token_matches(hash: &str, token: &str) -> bool {
    bool::from(hash_token(token).as_bytes().ct_eq(hash.as_bytes()))
}

pub fn hash_password(password: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("hashing a password: {e}")))
}

impl StateAccounts {
    async fn row(&self, user: &str) -> Option<AccountRow> {
        let row = self.state.account(user.to_string()).await.ok()??;
        if row.expires_ms.is_some_and(|e| e < now_ms()) {
            return None;
        }
        Some(row)
    }

    async fn change(&self, c: ImageChange) {
        if let Err(e) = self.state.image_state(c).await {
            tracing::error!("recording an image change: {e}");
        }
    }
}

#[async_trait]
impl FtpAccounts for StateAccounts {
    async fn login(&self, user: &str, password: &str) -> Option<FtpUser> {
        let row = self.row(user).await?;
        let (hash, pw) = (row.password_hash.clone(), password.to_string());
        if hash.starts_with("sha256$") {
            return token_matches(&hash, password).then_some(FtpUser {
                name: row.name,
                write: row.write,
                read: row.read,
            });
        }
        if self.verified.knows(user, &hash, password) {
            return Some(FtpUser {
                name: row.name,
                write: row.write,
                read: row.read,
            });
        }
        // argon2 costs tens of milliseconds of CPU: off the reactor.
        let h = hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(pw.as_bytes(), h.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            self.verified.remember(user, &hash, password);
        }
        ok.then_some(FtpUser {
            name: row.name,
            write: row.write,
            read: row.read,
        })
    }

    async fn lookup(&self, user: &str) -> Option<FtpUser> {
        let row = self.row(user).await?;
        Some(FtpUser {
            name: row.name,
            write: row.write,
            read: row.read,
        })
    }

    async fn upload_started(&self, user: &str, id: &ImageId) {
        self.change(ImageChange {
            vm: id.vm.clone(),
            generation: id.generation,
            state: "uploading",
            uploader: Some(user.to_string()),
            ..Default::default()
        })
        .await;
    }

    async fn published(&self, _user: &str, p: &Published) {
        self.change(ImageChange {
            vm: p.id.vm.clone(),
            generation: p.id.generation,
            state: "published",
            size: Some(p.size),
            sha256: Some(p.sha256.clone()),
            ..Default::default()
        })
        .await;
        let _ = self
            .state
            .record(
                NewEvent::info(
                    "image.published",
                    format!("{} bytes, sha256 {}", p.size, p.sha256),
                )
                .about(p.id.to_string()),
            )
            .await;
        if let Some((store, level)) = &self.compress {
            let (store, state, vm, level) =
                (store.clone(), self.state.clone(), p.id.vm.clone(), *level);
            tokio::spawn(async move { compact(&store, &state, &vm, level).await });
        }
    }

    async fn upload_failed(&self, _user: &str, id: &ImageId, reason: &str) {
        self.change(ImageChange {
            vm: id.vm.clone(),
            generation: id.generation,
            state: "failed",
            reason: Some(reason.to_string()),
            ..Default::default()
        })
        .await;
        let _ = self
            .state
            .record(NewEvent::warn("image.failed", reason.to_string()).about(id.to_string()))
            .await;
    }
}

/// Opens the store (marking uploads a crash interrupted as failed) and starts one FTP
/// listener per network address. A listener that cannot bind is reported, not fatal.
pub async fn start(cfg: &Config, state: &State) -> Result<(Store, Vec<JoinHandle<()>>), Error> {
    let dir = cfg.images_dir();
    let (store, recovered) = Store::open(&dir, cfg.ftp.reserve_bytes)
        .map_err(|e| Error::Invalid(format!("opening the image store {}: {e}", dir.display())))?;
    for id in recovered {
        state
            .image_state(ImageChange {
                vm: id.vm.clone(),
                generation: id.generation,
                state: "failed",
                reason: Some("interrupted by a restart of the appliance".into()),
                ..Default::default()
            })
            .await?;
        state
            .record(
                NewEvent::warn("image.failed", "upload interrupted by a restart; removed")
                    .about(id.to_string()),
            )
            .await?;
    }
    let accounts = Arc::new(StateAccounts {
        verified: Verified::new()?,
        state: state.clone(),
        compress: cfg.ftp.compress.map(|level| (store.clone(), level)),
    });
    let (lo, hi) = cfg.ftp.passive_ports;
    let mut tasks = Vec::new();
    // Relayed networks reach the store through the network they are relayed via.
    for n in cfg.networks.iter().filter(|n| n.via.is_none()) {
        let addr = format!("{}:{}", n.address.addr(), cfg.ftp.port);
        // Bind first, so that a missing address is reported now, by name.
        if let Err(e) = std::net::TcpListener::bind(&addr) {
            state
                .record(
                    NewEvent::warn(
                        "ftp.listen",
                        format!("FTP cannot listen on {addr} (network {}): {e}", n.name),
                    )
                    .about(&n.name),
                )
                .await?;
            continue;
        }
        let opts = netmigrate_services::ftp::Options {
            passive_ports: lo..=hi,
            tls: cfg
                .ftp
                .tls
                .as_ref()
                .map(|(cert, key)| netmigrate_services::ftp::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
            verify_downloads: cfg.ftp.verify_downloads,
        };
        let server = netmigrate_services::ftp::server(store.clone(), accounts.clone(), opts)
            .map_err(|e| Error::Invalid(format!("FTP server: {e}")))?;
        let a = addr.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.listen(a.clone()).await {
                tracing::error!("FTP on {a} stopped: {e}");
            }
        }));
        tracing::info!("FTP image store listening on {addr}");
    }
    Ok((store, tasks))
}

#[cfg(test)]
mod verified_tests {
    use super::Verified;

    #[test]
    fn a_remembered_login_is_only_that_password_with_that_stored_hash() {
        let v = Verified::new().unwrap();
        assert!(!v.knows("hostA", "$argon2id$one", "secret"));
        v.remember("hostA", "$argon2id$one", "secret");
        assert!(v.knows("hostA", "$argon2id$one", "secret"));
        assert!(!v.knows("hostA", "$argon2id$one", "Secret"));
        assert!(!v.knows("hostB", "$argon2id$one", "secret"));
        // A reset password (a new stored hash) is checked by argon2 again.
        assert!(!v.knows("hostA", "$argon2id$two", "secret"));
        // Another process (another key) never shares what this one saw.
        assert_ne!(
            v.tag("$argon2id$one", "secret"),
            Verified::new().unwrap().tag("$argon2id$one", "secret")
        );
    }
}

//! SSH to hypervisor hosts (russh): key authentication, host keys checked against the pinned
//! one like OpenSSH's StrictHostKeyChecking, one multiplexed connection per host, commands with
//! timeouts, and unix-socket forwarding (QMP) over the same connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;

use crate::config::HostConfig;

/// How a connection treats the host key it is shown.
#[derive(Debug, Clone)]
pub enum KeyCheck {
    /// Only this key (an OpenSSH public key line) is accepted.
    Pinned(String),
    /// Accept what is shown and report it (`netmigrate hosts trust`).
    TrustOnFirstUse,
    /// No key is pinned and trust was not asked for: refuse.
    Refuse,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "the host key of {host} ({addr}) is not pinned; check that {offered} is that host's key and run `netmigrate hosts trust {host}`"
    )]
    NotPinned {
        host: String,
        addr: String,
        offered: String,
    },
    #[error(
        "HOST KEY CHANGED for {host} ({addr}): pinned {pinned}, offered {offered}. Someone may be \
         intercepting the connection, or the host was reinstalled; if so, check it and run \
         `netmigrate hosts trust {host} --replace`"
    )]
    KeyChanged {
        host: String,
        addr: String,
        pinned: String,
        offered: String,
    },
    #[error("cannot read the SSH key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{user}@{addr} refused the key {path}")]
    AuthRefused {
        user: String,
        addr: String,
        path: String,
    },
    #[error("`{cmd}` on {host} timed out after {secs}s")]
    Timeout {
        host: String,
        cmd: String,
        secs: u64,
    },
    #[error("SSH to {host}: {reason}")]
    Session { host: String, reason: String },
}

/// The key type and base64 blob of a key line, without its comment: what identity compares.
pub fn key_identity(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Checker {
    check: KeyCheck,
    /// The key the server showed, as an OpenSSH line.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A host certificate is not a pinned key: it is refused like an unknown key.
        let offered = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key
                .to_openssh()
                .map(|k| key_identity(&k))
                .unwrap_or_default(),
            PublicKeyOrCertificate::Certificate(_) => "(an SSH certificate)".to_string(),
        };
        *self.seen.lock().expect("seen key") = Some(offered.clone());
        Ok(match &self.check {
            KeyCheck::Pinned(p) => key_identity(p) == offered,
            KeyCheck::TrustOnFirstUse => true,
            KeyCheck::Refuse => false,
        })
    }
}

/// What a command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

/// One authenticated connection to a host; channels are multiplexed over it.
pub struct Conn {
    pub host: String,
    handle: Handle<Checker>,
    /// The host key the server showed (identity form, "TYPE BASE64").
    pub host_key: String,
    /// A shell kept running on the host for repeated scripts (see `run_script`).
    shell: tokio::sync::Mutex<Option<russh::Channel<client::Msg>>>,
    runs: std::sync::atomic::AtomicU64,
}

impl Conn {
    pub async fn connect(
        h: &HostConfig,
        check: KeyCheck,
        timeout: Duration,
    ) -> Result<Conn, SshError> {
        let addr = format!("{}:{}", h.address, h.ssh_port);
        let key = russh::keys::load_secret_key(&h.ssh_key, None).map_err(|e| SshError::Key {
            path: h.ssh_key.display().to_string(),
            reason: e.to_string(),
        })?;
        let config = Arc::new(client::Config {
            // Kept open between collections; a dead peer is noticed by the keepalives.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            inactivity_timeout: None,
            ..Default::default()
        });
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker {
            check: check.clone(),
            seen: seen.clone(),
        };
        let connect = client::connect(config, addr.clone(), checker);
        let result = tokio::time::timeout(timeout, connect).await;
        let offered = seen.lock().expect("seen key").clone();
        let mut handle = match result {
            Err(_) => {
                return Err(SshError::Connect {
                    addr,
                    reason: format!(
                        "no answer within {}s (the host's connect_timeout)",
                        timeout.as_secs()
                    ),
                })
            }
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                // A refused key surfaces as a failed handshake: say which check refused it.
                if let Some(offered) = offered {
                    match &check {
                        KeyCheck::Pinned(p) if key_identity(p) != offered => {
                            return Err(SshError::KeyChanged {
                                host: h.name.clone(),
                                addr,
                                pinned: key_identity(p),
                                offered,
                            })
                        }
                        KeyCheck::Refuse => {
                            return Err(SshError::NotPinned {
                                host: h.name.clone(),
                                addr,
                                offered,
                            })
                        }
                        _ => {}
                    }
                }
                return Err(SshError::Connect {
                    addr,
                    reason: e.to_string(),
                });
            }
        };
        let session_err = |e: russh::Error| SshError::Session {
            host: h.name.clone(),
            reason: e.to_string(),
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(session_err)?
            .flatten();
        let auth = handle
            .authenticate_publickey(
                h.ssh_user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(session_err)?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                user: h.ssh_user.clone(),
                addr,
                path: h.ssh_key.display().to_string(),
            });
        }
        Ok(Conn {
            host: h.name.clone(),
            handle,
            host_key: offered.unwrap_or_default(),
            shell: tokio::sync::Mutex::new(None),
            runs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `cmd` through the user's shell, bounded by `timeout`.
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> Result<Output, SshError> {
        let run = async {
            let mut ch = self.handle.channel_open_session().await?;
            ch.exec(true, cmd).await?;
            let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    _ => {}
                }
            }
            Ok::<_, russh::Error>(Output {
                status,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
            })
        };
        let short: String = cmd.chars().take(60).collect();
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(SshError::Timeout {
                host: self.host.clone(),
                cmd: short,
                secs: timeout.as_secs(),
            }),
            Ok(r) => r.map_err(|e| SshError::Session {
                host: self.host.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Runs `script` in a shell kept open on the host. A new SSH session costs sshd a fork and
    /// a shell start (about 0.1 s of CPU per session on the lab's machines); the kept shell
    /// pays that once. The output ends at a marker line that carries the script's status.
    /// On a timeout or a broken channel the shell is dropped and the next call starts anew.
    pub async fn run_script(&self, script: &str, timeout: Duration) -> Result<Output, SshError> {
        let mut slot = self.shell.lock().await;
        if slot.is_none() {
            let ch = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| self.err(e))?;
            // `exec sh`: no login shell, no profile, commands from stdin.
            ch.exec(true, "exec sh -s").await.map_err(|e| self.err(e))?;
            *slot = Some(ch);
        }
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("@@@netmigrate-done-{n}-{}", std::process::id());
        // A subshell keeps the script's `exit`, `cd` and variables from leaking into the next.
        let wrapped = format!("( {script}\n) </dev/null\nprintf '\\n%s %s\\n' '{marker}' \"$?\"\n");
        let ch = slot.as_mut().expect("shell");
        let run = async {
            ch.data(wrapped.as_bytes()).await?;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            loop {
                match ch.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        out.extend_from_slice(&data);
                        let text = String::from_utf8_lossy(&out);
                        if let Some(at) = text.find(&format!("\n{marker} ")) {
                            let status = text[at + marker.len() + 2..].trim().parse().ok();
                            return Ok(Some(Output {
                                status,
                                stdout: text[..at].to_string(),
                                stderr: String::from_utf8_lossy(&err).into_owned(),
                            }));
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => err.extend_from_slice(&data),
                    Some(ChannelMsg::Eof | ChannelMsg::Close | ChannelMsg::ExitStatus { .. })
                    | None => return Ok::<_, russh::Error>(None),
                    Some(_) => {}
                }
            }
        };
        let result = tokio::time::timeout(timeout, run).await;
        match result {
            Ok(Ok(Some(out))) => Ok(out),
            Ok(Ok(None)) => {
                *slot = None;
                Err(SshError::Session {
                    host: self.host.clone(),
                    reason: "the host's shell ended before the script did".into(),
                })
            }
            Ok(Err(e)) => {
                *slot = None;
                Err(self.err(e))
            }
            Err(_) => {
                if let Some(ch) = slot.take() {
                    let _ = ch.close().await;
                }
                Err(SshError::Timeout {
                    host: self.host.clone(),
                    cmd: script.trim_start().chars().take(60).collect(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    fn err(&self, e: russh::Error) -> SshError {
        SshError::Session {
            host: self.host.clone(),
            reason: e.to_string(),
        }
    }

    /// A byte stream to a unix socket on the host (QMP, OVSDB), forwarded over this connection.
    pub async fn unix_stream(
        &self,
        path: &str,
    ) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let ch = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| SshError::Session {
                host: self.host.clone(),
                reason: format!("forwarding {path}: {e}"),
            })?;
        Ok(ch.into_stream())
    }
}

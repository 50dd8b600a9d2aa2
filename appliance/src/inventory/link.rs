//! What a connection to a host gives the drivers and the engine: commands, a kept shell, and
//! unix sockets forwarded from the host (QMP, OVSDB, OpenFlow). Over SSH in the appliance
//! (`ssh::Conn`); tests put a local shell behind it.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ssh::{Conn, Output, SshError};

/// A byte stream to a socket on the host.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

#[async_trait]
pub trait Link: Send + Sync {
    /// Whether the connection is gone (the next call would fail).
    fn is_closed(&self) -> bool;
    /// Runs `cmd` in a session of its own, bounded by `timeout`.
    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<Output, SshError>;
    /// Runs a short `script` in the shell kept open on the host (no new session).
    async fn run_script(&self, script: &str, timeout: Duration) -> Result<Output, SshError>;
    /// A byte stream to the unix socket at `path` on the host.
    async fn unix_stream(&self, path: &str) -> Result<BoxStream, SshError>;
}

#[async_trait]
impl Link for Conn {
    fn is_closed(&self) -> bool {
        Conn::is_closed(self)
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<Output, SshError> {
        Conn::exec(self, cmd, timeout).await
    }

    async fn run_script(&self, script: &str, timeout: Duration) -> Result<Output, SshError> {
        Conn::run_script(self, script, timeout).await
    }

    async fn unix_stream(&self, path: &str) -> Result<BoxStream, SshError> {
        Ok(Box::new(Conn::unix_stream(self, path).await?))
    }
}

/// A host whose shell is this machine's own `sh` (the engine's unit tests): commands run for
/// real, in whatever directories the test's host config names; it has no sockets to forward.
#[cfg(test)]
pub struct LocalLink {
    pub host: String,
}

#[cfg(test)]
#[async_trait]
impl Link for LocalLink {
    fn is_closed(&self) -> bool {
        false
    }

    async fn exec(&self, cmd: &str, timeout: Duration) -> Result<Output, SshError> {
        let run = tokio::process::Command::new("sh")
            .args(["-c", cmd])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let short: String = cmd.chars().take(60).collect();
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| SshError::Timeout {
                host: self.host.clone(),
                cmd: short.clone(),
                secs: timeout.as_secs(),
            })?
            .map_err(|e| SshError::Session {
                host: self.host.clone(),
                reason: e.to_string(),
            })?;
        Ok(Output {
            status: out.status.code().map(|c| c as u32),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn run_script(&self, script: &str, timeout: Duration) -> Result<Output, SshError> {
        self.exec(script, timeout).await
    }

    async fn unix_stream(&self, path: &str) -> Result<BoxStream, SshError> {
        Err(SshError::Session {
            host: self.host.clone(),
            reason: format!("forwarding {path}: a local test host forwards no sockets"),
        })
    }
}

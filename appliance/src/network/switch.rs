//! A host's switch as a move needs it: a VM's port put there (VLAN tag, rate limit) before the
//! VM runs, checked up, announced from, removed. `Ovs` is Open vSwitch over the host's OVSDB and
//! OpenFlow management sockets, forwarded over the host's link; the engine sees only `Switch`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{OpenFlow, Ovsdb, PortSpec};
use crate::config::HostConfig;
use crate::inventory::link::{BoxStream, Link};

/// What went wrong on a host's switch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host}: {reason}")]
pub struct SwitchError {
    pub host: String,
    pub reason: String,
}

#[async_trait]
pub trait Switch: Send + Sync {
    /// The VLAN tag and rate limit of `port`, if it is there.
    async fn port(&self, port: &str) -> Result<Option<PortSpec>, SwitchError>;
    /// Puts `port` there with `spec` (replacing one of that name) and checks it is up; returns
    /// its OpenFlow port number. With `device_later`, a device that does not exist yet is
    /// accepted (the load makes it; `port_up` then checks it came): None.
    async fn put_port(
        &self,
        port: &str,
        spec: &PortSpec,
        device_later: bool,
    ) -> Result<Option<i64>, SwitchError>;
    /// Waits up to `within` for the switch to have `port`'s device open: its port number.
    async fn port_up(&self, port: &str, within: Duration) -> Result<i64, SwitchError>;
    /// Readies sending frames into the switch as if from `port` (a connection opened now, so
    /// that a send later costs one message).
    async fn announcer(&self, port: &str) -> Result<Box<dyn Announcer>, SwitchError>;
    /// Removes `port`; a missing port is not an error.
    async fn del_port(&self, port: &str) -> Result<(), SwitchError>;
}

/// Frames sent into a switch as if a port had sent them, switched as the port's own (NORMAL).
#[async_trait]
pub trait Announcer: Send {
    /// Sends `frame` and returns once the switch has taken it.
    async fn send(&mut self, frame: &[u8]) -> Result<(), SwitchError>;
}

/// The switch of host `h`, over its link.
pub fn new(h: &HostConfig, link: Arc<dyn Link>) -> Box<dyn Switch> {
    Box::new(Ovs {
        host: h.name.clone(),
        bridge: h.bridge.clone(),
        ovsdb: h.ovsdb.clone(),
        link,
    })
}

/// Open vSwitch on a host.
pub struct Ovs {
    host: String,
    bridge: String,
    /// The configured OVSDB socket ("unix:/path"), ovs-vsctl's default when None.
    ovsdb: Option<String>,
    link: Arc<dyn Link>,
}

impl Ovs {
    fn err(&self, reason: impl Into<String>) -> SwitchError {
        SwitchError {
            host: self.host.clone(),
            reason: reason.into(),
        }
    }

    /// Where the host's OVSDB socket is.
    fn ovsdb_path(&self) -> Result<&str, SwitchError> {
        match self.ovsdb.as_deref() {
            None => Ok("/var/run/openvswitch/db.sock"),
            Some(s) => s.strip_prefix("unix:").ok_or_else(|| {
                self.err(format!(
                    "ovsdb `{s}`: only unix: sockets are reachable over SSH"
                ))
            }),
        }
    }

    async fn db(&self) -> Result<Ovsdb<BoxStream>, SwitchError> {
        let s = self
            .link
            .unix_stream(self.ovsdb_path()?)
            .await
            .map_err(|e| self.err(format!("OVSDB: {e}")))?;
        Ok(Ovsdb::new(s))
    }
}

#[async_trait]
impl Switch for Ovs {
    async fn port(&self, port: &str) -> Result<Option<PortSpec>, SwitchError> {
        self.db().await?.port(port).await.map_err(|e| self.err(e))
    }

    async fn put_port(
        &self,
        port: &str,
        spec: &PortSpec,
        device_later: bool,
    ) -> Result<Option<i64>, SwitchError> {
        let mut db = self.db().await?;
        let n = db
            .add_port(&self.bridge, port, spec, device_later)
            .await
            .map_err(|e| self.err(e))?;
        match n {
            None if !device_later => Err(self.err(format!("port {port} has no ofport"))),
            n => Ok(n),
        }
    }

    async fn port_up(&self, port: &str, within: Duration) -> Result<i64, SwitchError> {
        let mut db = self.db().await?;
        let t = Instant::now();
        loop {
            match db.ofport(port).await.map_err(|e| self.err(e))? {
                Ok(n) => return Ok(n),
                Err(why) if t.elapsed() >= within => {
                    return Err(self.err(format!("port {port}: {why}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn announcer(&self, port: &str) -> Result<Box<dyn Announcer>, SwitchError> {
        let ofport = self.port_up(port, Duration::ZERO).await?;
        let in_port = u16::try_from(ofport)
            .ok()
            .filter(|p| *p < 0xff00)
            .ok_or_else(|| self.err(format!("ofport {ofport} is beyond OpenFlow 1.0's ports")))?;
        // ovs-vswitchd makes `<bridge>.mgmt` beside `db.sock`.
        let db = self.ovsdb_path()?;
        let dir = db.rsplit_once('/').map_or(".", |(d, _)| d);
        let path = format!("{dir}/{}.mgmt", self.bridge);
        let s = self
            .link
            .unix_stream(&path)
            .await
            .map_err(|e| self.err(format!("OpenFlow {path}: {e}")))?;
        let of = OpenFlow::handshake(s)
            .await
            .map_err(|e| self.err(format!("{path}: {e}")))?;
        Ok(Box::new(OvsAnnouncer {
            host: self.host.clone(),
            of,
            in_port,
        }))
    }

    async fn del_port(&self, port: &str) -> Result<(), SwitchError> {
        self.db()
            .await?
            .del_port(&self.bridge, port)
            .await
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

struct OvsAnnouncer {
    host: String,
    of: OpenFlow<BoxStream>,
    in_port: u16,
}

#[async_trait]
impl Announcer for OvsAnnouncer {
    async fn send(&mut self, frame: &[u8]) -> Result<(), SwitchError> {
        let r = async {
            self.of.packet_out(self.in_port, frame).await?;
            self.of.barrier().await
        }
        .await;
        r.map_err(|reason| SwitchError {
            host: self.host.clone(),
            reason,
        })
    }
}

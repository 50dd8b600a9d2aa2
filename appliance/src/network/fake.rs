//! A switch of the engine's unit tests: ports and the frames sent from them, in memory, with
//! failures injected by operation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::switch::{Announcer, Switch, SwitchError};
use super::PortSpec;

#[derive(Default)]
pub struct FakeSwitch {
    pub host: String,
    /// Ports by name: their spec, and their ofport once their device is there.
    pub ports: Mutex<HashMap<String, (PortSpec, Option<i64>)>>,
    /// Frames sent in, with the port they came from.
    pub frames: Mutex<Vec<(String, Vec<u8>)>>,
    /// Operations that fail: "put", "up", "announcer", "send", "del".
    pub failing: Mutex<HashSet<&'static str>>,
    pub next: Mutex<i64>,
}

impl FakeSwitch {
    fn check(&self, op: &'static str) -> Result<(), SwitchError> {
        if self.failing.lock().unwrap().contains(op) {
            return Err(SwitchError {
                host: self.host.clone(),
                reason: format!("injected: {op} fails"),
            });
        }
        Ok(())
    }

    fn ofport(&self) -> i64 {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        *n
    }

    /// The device of `port` appeared (a load made it): the switch opens it.
    pub fn device_came(&self, port: &str) {
        let n = self.ofport();
        if let Some(p) = self.ports.lock().unwrap().get_mut(port) {
            p.1 = Some(n);
        }
    }

    pub fn has(&self, port: &str) -> bool {
        self.ports.lock().unwrap().contains_key(port)
    }
}

#[async_trait]
impl Switch for Arc<FakeSwitch> {
    async fn port(&self, port: &str) -> Result<Option<PortSpec>, SwitchError> {
        Ok(self.ports.lock().unwrap().get(port).map(|p| p.0.clone()))
    }

    async fn put_port(
        &self,
        port: &str,
        spec: &PortSpec,
        device_later: bool,
    ) -> Result<Option<i64>, SwitchError> {
        self.check("put")?;
        let n = (!device_later).then(|| self.ofport());
        self.ports
            .lock()
            .unwrap()
            .insert(port.to_string(), (spec.clone(), n));
        Ok(n)
    }

    async fn port_up(&self, port: &str, _within: Duration) -> Result<i64, SwitchError> {
        self.check("up")?;
        match self.ports.lock().unwrap().get(port) {
            Some((_, Some(n))) => Ok(*n),
            _ => Err(SwitchError {
                host: self.host.clone(),
                reason: format!("port {port}: no device"),
            }),
        }
    }

    async fn announcer(&self, port: &str) -> Result<Box<dyn Announcer>, SwitchError> {
        self.check("announcer")?;
        self.port_up(port, Duration::ZERO).await?;
        Ok(Box::new(FakeAnnouncer {
            switch: self.clone(),
            port: port.to_string(),
        }))
    }

    async fn del_port(&self, port: &str) -> Result<(), SwitchError> {
        self.check("del")?;
        self.ports.lock().unwrap().remove(port);
        Ok(())
    }
}

struct FakeAnnouncer {
    switch: Arc<FakeSwitch>,
    port: String,
}

#[async_trait]
impl Announcer for FakeAnnouncer {
    async fn send(&mut self, frame: &[u8]) -> Result<(), SwitchError> {
        self.switch.check("send")?;
        self.switch
            .frames
            .lock()
            .unwrap()
            .push((self.port.clone(), frame.to_vec()));
        Ok(())
    }
}

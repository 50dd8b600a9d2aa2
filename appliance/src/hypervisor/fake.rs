//! The engine's unit tests' backend, registered in the factory like the real ones
//! (`hypervisor = "fake"`, test builds only). A VM is a run state and its "memory", a few KiB
//! of bytes; saving pipes them into the engine's sink command and loading reads them from its
//! source command, both run by the host's link (a local shell in the tests), so the bytes
//! really go through curl and the image store. Each host's state lives in a registry by host
//! name, with its switch, so a test injects faults and reads what happened.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{DiskUsage, DriverError, Hypervisor, LiveResult, RunState, VmDef};
use crate::config::HostConfig;
use crate::inventory::link::Link;
use crate::network::fake::FakeSwitch;

/// How an operation is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It refuses at once.
    Fail,
    /// Live only: pre-copy does not converge in time (the VM runs on here, untouched).
    NotConverged,
    /// Save only: half the state goes out, then the save stalls until `abort_outgoing`.
    Stall,
}

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub state: RunState,
    pub memory: Vec<u8>,
    pub mac: String,
    pub listening: bool,
    /// Target: its disks served to a mirror.
    pub exported: bool,
    /// Source: its disks mirrored onto this target host (every write reaches it too).
    pub mirror_to: Option<IpAddr>,
}

/// A disk image on a fake host: its size and the bytes written to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeDisk {
    pub virtual_bytes: u64,
    pub data: Vec<u8>,
}

/// One fake host: its VMs, the calls made to it, the faults it is to show, and its switch.
pub struct FakeHost {
    pub name: String,
    pub address: IpAddr,
    /// Whether the VM's NIC exists only once its state is loaded (as on Xen).
    pub nic_by_load: Mutex<bool>,
    pub vms: Mutex<HashMap<String, FakeVm>>,
    pub calls: Mutex<Vec<String>>,
    pub faults: Mutex<HashMap<&'static str, Fault>>,
    pub switch: Arc<FakeSwitch>,
    /// Disk images by path, and the room for more.
    pub disks: Mutex<HashMap<String, FakeDisk>>,
    pub disk_room: Mutex<u64>,
    /// Whether a cold move carries local disks from here (as QEMU's driver does).
    pub cold_disks: Mutex<bool>,
    /// Where its disks' bytes go in real files for a cold move's stream (outside any
    /// run_dir: the tests check those are left empty).
    scratch: String,
    cancel: tokio::sync::Notify,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<FakeHost>>> {
    static HOSTS: OnceLock<Mutex<HashMap<String, Arc<FakeHost>>>> = OnceLock::new();
    HOSTS.get_or_init(Default::default)
}

/// The fake host named `name` (made at `address` the first time).
pub fn host(name: &str, address: IpAddr) -> Arc<FakeHost> {
    registry()
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(FakeHost {
                name: name.to_string(),
                address,
                nic_by_load: Mutex::new(false),
                vms: Default::default(),
                calls: Default::default(),
                faults: Default::default(),
                switch: Arc::new(FakeSwitch {
                    host: name.to_string(),
                    ..Default::default()
                }),
                disks: Default::default(),
                disk_room: Mutex::new(1 << 40),
                cold_disks: Mutex::new(true),
                scratch: std::env::temp_dir()
                    .join(format!("netmigrate-fake-disks-{}", std::process::id()))
                    .join(name)
                    .display()
                    .to_string(),
                cancel: tokio::sync::Notify::new(),
            })
        })
        .clone()
}

fn by_address(a: IpAddr) -> Option<Arc<FakeHost>> {
    registry()
        .lock()
        .unwrap()
        .values()
        .find(|h| h.address == a)
        .cloned()
}

impl FakeHost {
    pub fn state(&self, vm: &str) -> RunState {
        self.vms
            .lock()
            .unwrap()
            .get(vm)
            .map_or(RunState::Absent, |v| v.state)
    }

    pub fn memory(&self, vm: &str) -> Option<Vec<u8>> {
        self.vms.lock().unwrap().get(vm).map(|v| v.memory.clone())
    }

    /// A VM running here since before the test, with `memory`.
    pub fn run(&self, def: &VmDef, memory: Vec<u8>) {
        self.vms.lock().unwrap().insert(
            def.name.clone(),
            FakeVm {
                state: RunState::Running,
                memory,
                mac: def.mac.clone(),
                listening: false,
                exported: false,
                mirror_to: None,
            },
        );
        self.switch.ports.lock().unwrap().insert(
            def.port_on(&self.name),
            (
                crate::network::PortSpec {
                    vlan: def.vlan,
                    rate_kbps: def.rate_kbps,
                },
                Some(1),
            ),
        );
    }

    /// The guest of `vm` writes `bytes` at the end of disk `path`: here, and on the mirror's
    /// target too while one runs (as write-blocking mirrors do).
    pub fn write_disk(&self, vm: &str, path: &str, bytes: &[u8]) {
        let to = self.vms.lock().unwrap().get(vm).and_then(|v| v.mirror_to);
        let mut here = vec![self.name.clone()];
        if let Some(t) = to.and_then(by_address) {
            here.push(t.name.clone());
        }
        for h in here {
            let h = host(&h, self.address);
            let mut disks = h.disks.lock().unwrap();
            disks
                .entry(path.to_string())
                .or_default()
                .data
                .extend_from_slice(bytes);
        }
    }

    pub fn disk(&self, path: &str) -> Option<FakeDisk> {
        self.disks.lock().unwrap().get(path).cloned()
    }

    /// Where disk `path`'s bytes are put in a real file for a cold move's stream, which the
    /// shared scripts send and receive (outside any run_dir: the tests check those are left
    /// empty).
    fn disk_file(&self, path: &str) -> String {
        let _ = std::fs::create_dir_all(&self.scratch);
        format!("{}/{}", self.scratch, path.replace('/', "_"))
    }

    /// `vm`'s local disks as the files `disk_file` names.
    fn disk_files(&self, vm: &VmDef) -> Vec<super::Disk> {
        vm.local_disks()
            .into_iter()
            .map(|d| super::Disk {
                path: self.disk_file(&d.path),
                ..d.clone()
            })
            .collect()
    }

    pub fn inject(&self, op: &'static str, f: Fault) {
        self.faults.lock().unwrap().insert(op, f);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, op: &str, vm: &VmDef) {
        self.calls.lock().unwrap().push(format!("{op} {}", vm.name));
    }

    fn err(&self, vm: &VmDef, reason: impl Into<String>) -> DriverError {
        DriverError::Vm {
            host: self.name.clone(),
            vm: vm.name.clone(),
            reason: reason.into(),
        }
    }

    /// The fault injected for `op`, acted out: an error, or a wait for `abort_outgoing`.
    async fn fault(&self, op: &'static str, vm: &VmDef) -> Result<(), DriverError> {
        self.call(op, vm);
        let f = self.faults.lock().unwrap().get(op).copied();
        match f {
            None => Ok(()),
            Some(Fault::Fail) => Err(self.err(vm, format!("injected: {op} fails"))),
            Some(Fault::Stall) => Ok(()),
            Some(Fault::NotConverged) => Err(DriverError::Timeout {
                host: self.name.clone(),
                vm: vm.name.clone(),
                what: "live migration (it did not converge)".into(),
                after: Duration::from_secs(1),
            }),
        }
    }

    fn with<T>(&self, vm: &VmDef, f: impl FnOnce(&mut FakeVm) -> T) -> Result<T, DriverError> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .get_mut(&vm.name)
            .ok_or_else(|| self.err(vm, "no such VM here"))?;
        Ok(f(v))
    }
}

pub struct Fake {
    host: Arc<FakeHost>,
    link: Arc<dyn Link>,
}

impl Fake {
    pub fn new(h: HostConfig, link: Arc<dyn Link>) -> Fake {
        Fake {
            host: host(&h.name, h.address),
            link,
        }
    }
}

#[async_trait]
impl Hypervisor for Fake {
    fn host(&self) -> &str {
        &self.host.name
    }

    fn nic_made_by_load(&self) -> bool {
        *self.host.nic_by_load.lock().unwrap()
    }

    async fn state(&self, vm: &VmDef) -> Result<RunState, DriverError> {
        self.host.fault("state", vm).await?;
        Ok(self.host.state(&vm.name))
    }

    async fn start(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("start", vm).await?;
        self.host.run(
            vm,
            format!("memory of {}\n", vm.name).repeat(256).into_bytes(),
        );
        Ok(())
    }

    async fn prepare_incoming(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("prepare_incoming", vm).await?;
        let mut vms = self.host.vms.lock().unwrap();
        if vms.get(&vm.name).is_some() {
            return Err(self.host.err(vm, "a VM of this name is already here"));
        }
        vms.insert(
            vm.name.clone(),
            FakeVm {
                state: RunState::Incoming,
                memory: Vec::new(),
                mac: vm.mac.clone(),
                listening: false,
                exported: false,
                mirror_to: None,
            },
        );
        Ok(())
    }

    async fn pause(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("pause", vm).await?;
        self.host
            .with(vm, |v| match v.state {
                RunState::Running | RunState::Paused => {
                    v.state = RunState::Paused;
                    Ok(())
                }
                s => Err(format!("cannot pause a VM that is {s:?}")),
            })?
            .map_err(|e| self.host.err(vm, e))
    }

    async fn resume(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("resume", vm).await?;
        self.host
            .with(vm, |v| match v.state {
                RunState::Running | RunState::Paused | RunState::Migrated => {
                    v.state = RunState::Running;
                    Ok(())
                }
                s => Err(format!("cannot resume a VM that is {s:?}")),
            })?
            .map_err(|e| self.host.err(vm, e))
    }

    async fn save_to(&self, vm: &VmDef, sink: &str, timeout: Duration) -> Result<(), DriverError> {
        let memory = self.host.with(vm, |v| (v.state, v.memory.clone()))?;
        if memory.0 != RunState::Paused {
            return Err(self
                .host
                .err(vm, format!("save of a VM that is {:?}", memory.0)));
        }
        let cancelled = self.host.cancel.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        self.host.fault("save_to", vm).await?;
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", sink])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.host.err(vm, e.to_string()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stall = self.host.faults.lock().unwrap().get("save_to") == Some(&Fault::Stall);
        let run = async {
            if stall {
                stdin.write_all(&memory.1[..memory.1.len() / 2]).await?;
                stdin.flush().await?;
                std::future::pending::<()>().await;
            }
            stdin.write_all(&memory.1).await?;
            drop(stdin);
            child.wait().await
        };
        let status = tokio::select! {
            r = tokio::time::timeout(timeout, run) => r
                .map_err(|_| self.host.err(vm, "the save timed out"))?
                .map_err(|e| self.host.err(vm, e.to_string()))?,
            _ = cancelled => return Err(self.host.err(vm, "the save was cancelled")),
        };
        if !status.success() {
            return Err(self.host.err(vm, format!("the sink failed: {status}")));
        }
        self.host.with(vm, |v| v.state = RunState::Migrated)
    }

    async fn restore_from(
        &self,
        vm: &VmDef,
        source: &str,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        self.host.fault("restore_from", vm).await?;
        let state = self.host.with(vm, |v| v.state)?;
        if state != RunState::Incoming {
            return Err(self
                .host
                .err(vm, format!("load into a VM that is {state:?}")));
        }
        let out = self
            .link
            .exec(source, timeout)
            .await
            .map_err(|e| self.host.err(vm, e.to_string()))?;
        if out.status != Some(0) {
            return Err(self
                .host
                .err(vm, format!("the source failed: {}", out.stderr)));
        }
        self.host.with(vm, |v| {
            v.memory = out.stdout.into_bytes();
            v.state = RunState::Paused;
        })?;
        // What a cold move's stream wrote into the copies' files is now on the copies.
        let mut disks = self.host.disks.lock().unwrap();
        for d in vm.local_disks() {
            let file = self.host.disk_file(&d.path);
            if let (Some(copy), Ok(data)) = (disks.get_mut(&d.path), std::fs::read(&file)) {
                copy.data = data;
                let _ = std::fs::remove_file(file);
            }
        }
        drop(disks);
        if self.nic_made_by_load() {
            self.host.switch.device_came(&vm.port_on(&self.host.name));
        }
        Ok(())
    }

    async fn live_migrate(
        &self,
        vm: &VmDef,
        target: IpAddr,
        _port: u16,
        _downtime: Duration,
        _timeout: Duration,
    ) -> Result<LiveResult, DriverError> {
        self.host.fault("live_migrate", vm).await?;
        let memory = self.host.with(vm, |v| v.memory.clone())?;
        let there = by_address(target).ok_or_else(|| self.host.err(vm, "no such target"))?;
        there
            .with(vm, |v| {
                if v.state != RunState::Incoming || !v.listening {
                    return Err(format!("the target is {:?}, not listening", v.state));
                }
                v.memory = memory;
                v.state = RunState::Running;
                Ok(())
            })?
            .map_err(|e| self.host.err(vm, e))?;
        if *there.nic_by_load.lock().unwrap() {
            there.switch.device_came(&vm.port_on(&there.name));
        }
        self.host.with(vm, |v| v.state = RunState::Migrated)?;
        Ok(LiveResult {
            downtime_ms: Some(1),
            total_ms: Some(2),
            bytes: Some(3),
        })
    }

    async fn abort_outgoing(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.cancel.notify_waiters();
        self.host.fault("abort_outgoing", vm).await
    }

    async fn listen_incoming(&self, vm: &VmDef, _port: u16) -> Result<(), DriverError> {
        self.host.fault("listen_incoming", vm).await?;
        self.host.with(vm, |v| v.listening = true)
    }

    async fn announce(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("announce", vm).await
    }

    async fn destroy(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("destroy", vm).await?;
        self.host.vms.lock().unwrap().remove(&vm.name);
        Ok(())
    }

    /// Not used: the fake's disks are in memory, its disk calls its own.
    fn host_disks(&self) -> super::disk::HostDisks<'_> {
        super::disk::HostDisks {
            link: &*self.link,
            run_dir: &self.host.scratch,
            host: &self.host.name,
        }
    }

    async fn disk_usage(&self, vm: &VmDef) -> Result<Vec<Option<DiskUsage>>, DriverError> {
        self.host.fault("disk_usage", vm).await?;
        let disks = self.host.disks.lock().unwrap();
        Ok(vm
            .local_disks()
            .iter()
            .map(|d| {
                disks.get(&d.path).map(|f| DiskUsage {
                    virtual_bytes: f.virtual_bytes,
                    allocated_bytes: f.data.len() as u64,
                })
            })
            .collect())
    }

    async fn check_disks(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        self.host.fault("check_disks", vm).await?;
        let disks = self.host.disks.lock().unwrap();
        if let Some(d) = vm
            .local_disks()
            .iter()
            .find(|d| disks.contains_key(&d.path))
        {
            return Err(self.host.err(
                vm,
                format!("{} is there already: not overwriting it", d.path),
            ));
        }
        let need: u64 = like.iter().map(|u| u.allocated_bytes).sum();
        let room = *self.host.disk_room.lock().unwrap();
        if need > room {
            return Err(self.host.err(
                vm,
                format!("no room for the disks: they hold {need} bytes, {room} free"),
            ));
        }
        Ok(())
    }

    async fn make_disks(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        self.check_disks(vm, like).await?;
        self.host.fault("make_disks", vm).await?;
        let mut disks = self.host.disks.lock().unwrap();
        for (d, u) in vm.local_disks().iter().zip(like) {
            disks.insert(
                d.path.clone(),
                FakeDisk {
                    virtual_bytes: u.virtual_bytes,
                    data: Vec::new(),
                },
            );
        }
        Ok(())
    }

    async fn remove_disks(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("remove_disks", vm).await?;
        let mut disks = self.host.disks.lock().unwrap();
        for d in vm.local_disks() {
            disks.remove(&d.path);
        }
        Ok(())
    }

    fn mirrors_disks(&self) -> bool {
        true
    }

    fn cold_disks_refusal(&self, _vm: &VmDef) -> Option<String> {
        match *self.host.cold_disks.lock().unwrap() {
            true => None,
            false => Some("its hypervisor's driver cannot carry them on the cold path yet".into()),
        }
    }

    /// The shared script over files holding the in-memory disks' bytes.
    async fn send_disks(&self, vm: &VmDef) -> Result<String, DriverError> {
        self.host.fault("send_disks", vm).await?;
        let disks = self.host.disks.lock().unwrap().clone();
        let files = self.host.disk_files(vm);
        for (d, f) in vm.local_disks().iter().zip(&files) {
            let data = disks
                .get(&d.path)
                .map(|x| x.data.clone())
                .unwrap_or_default();
            std::fs::write(&f.path, data).map_err(|e| self.host.err(vm, e.to_string()))?;
        }
        Ok(super::disk::send_script(
            &files.iter().collect::<Vec<_>>(),
            &self.host.scratch,
        ))
    }

    /// The shared script into files that the load puts on the copies.
    async fn receive_disks(&self, vm: &VmDef, done: &str) -> Result<String, DriverError> {
        self.host.fault("receive_disks", vm).await?;
        let files = self.host.disk_files(vm);
        Ok(super::disk::receive_script(
            &files.iter().collect::<Vec<_>>(),
            done,
        ))
    }

    async fn export_disks(&self, vm: &VmDef, _port: u16) -> Result<(), DriverError> {
        self.host.fault("export_disks", vm).await?;
        self.host.with(vm, |v| v.exported = true)
    }

    async fn mirror_disks(
        &self,
        vm: &VmDef,
        target: IpAddr,
        _port: u16,
        _timeout: Duration,
    ) -> Result<(), DriverError> {
        self.host.fault("mirror_disks", vm).await?;
        let there = by_address(target).ok_or_else(|| self.host.err(vm, "no such target"))?;
        if !there.with(vm, |v| v.exported)? {
            return Err(self.host.err(vm, "the target serves no disks"));
        }
        let ours = self.host.disks.lock().unwrap().clone();
        for d in vm.local_disks() {
            let data = ours
                .get(&d.path)
                .map(|f| f.data.clone())
                .unwrap_or_default();
            let mut theirs = there.disks.lock().unwrap();
            let t = theirs
                .get_mut(&d.path)
                .ok_or_else(|| self.host.err(vm, format!("the target has no {}", d.path)))?;
            t.data = data;
        }
        self.host.with(vm, |v| v.mirror_to = Some(target))
    }

    async fn end_mirror(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("end_mirror", vm).await?;
        if let Some(v) = self.host.vms.lock().unwrap().get_mut(&vm.name) {
            v.mirror_to = None;
        }
        Ok(())
    }

    async fn end_export(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.host.fault("end_export", vm).await?;
        if let Some(v) = self.host.vms.lock().unwrap().get_mut(&vm.name) {
            v.exported = false;
        }
        Ok(())
    }

    async fn replace_nic(&self, vm: &VmDef, mac: &str) -> Result<(), DriverError> {
        self.host.fault("replace_nic", vm).await?;
        self.host.with(vm, |v| v.mac = mac.to_string())
    }
}

//! The QEMU driver: QEMU processes started on the host over SSH (daemonized, with a QMP socket in
//! the host's `run_dir`), controlled through QMP reached over an SSH-forwarded unix socket. No
//! agent and no extra port on the host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Disk, DiskBus, DriverError, Hypervisor, LiveResult, RunState, VmDef};
use crate::config::HostConfig;
use crate::inventory::link::Link;
use crate::inventory::qmp::Qmp;
use crate::shell::quote;

/// How often migration progress is polled (the poll is one QMP round trip over SSH).
const POLL: Duration = Duration::from_millis(5);
/// A cap high enough not to throttle a stopped VM's save (QEMU's default is 128 MiB/s).
const MAX_BANDWIDTH: u64 = 10 << 30;
/// Why a load failed when the host itself stopped answering.
const HOST_GONE: &str = "the host stopped answering while loading the VM's state";
/// The VM's NIC: its QEMU id and PCI slot.
const NIC: &str = "nic0";
const NIC_SLOT: &str = "0x10";
/// How long a guest may take to let its NIC go.
const NIC_RELEASE: Duration = Duration::from_secs(15);

type QmpConn = Qmp<crate::inventory::link::BoxStream>;

/// A driver lives for one operation or move; it keeps one QMP connection per VM for that time
/// (a QMP round trip is then ~1 ms instead of a channel and a handshake), and drops them with
/// itself, so the inventory's own QMP calls are not held up for long.
pub struct Qemu {
    pub host: HostConfig,
    pub conn: Arc<dyn Link>,
    qmps: tokio::sync::Mutex<std::collections::HashMap<String, QmpConn>>,
}

impl Qemu {
    pub fn new(host: HostConfig, conn: Arc<dyn Link>) -> Qemu {
        Qemu {
            host,
            conn,
            qmps: Default::default(),
        }
    }

    fn path(&self, vm: &VmDef, ext: &str) -> String {
        format!("{}/{}.{ext}", self.host.run_dir, vm.name)
    }

    fn err(&self, vm: &VmDef, reason: impl Into<String>) -> DriverError {
        DriverError::Vm {
            host: self.host.name.clone(),
            vm: vm.name.clone(),
            reason: reason.into(),
        }
    }

    /// The QEMU command line; identical on every host for one VM (a migration needs the same
    /// devices on both sides). An adopted VM's is its own, made to run under this driver.
    pub fn command(&self, vm: &VmDef, incoming: bool) -> Vec<String> {
        if let Some(args) = vm.adopted.as_ref().map(|a| &a.qemu_args) {
            if !args.is_empty() {
                return adopted_command(
                    args,
                    &vm.port_on(&self.host.name),
                    &self.path(vm, "qmp"),
                    &self.path(vm, "pid"),
                    &self.path(vm, "serial.log"),
                    incoming,
                );
            }
        }
        let mut a: Vec<String> = vec![
            "qemu-system-x86_64".into(),
            "-name".into(),
            vm.name.clone(),
            "-machine".into(),
            format!("accel={}", self.host.qemu_accel),
            "-m".into(),
            vm.mem_mib.to_string(),
            "-smp".into(),
            vm.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-vga".into(),
            "none".into(),
            "-display".into(),
            "none".into(),
        ];
        if let Some(k) = &vm.kernel {
            a.extend(["-kernel".into(), k.clone()]);
        }
        if let Some(i) = &vm.initrd {
            a.extend(["-initrd".into(), i.clone()]);
        }
        if let Some(c) = &vm.append {
            a.extend(["-append".into(), c.clone()]);
        }
        a.extend(disk_args(vm));
        a.extend([
            "-serial".into(),
            format!("file:{}", self.path(vm, "serial.log")),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.path(vm, "qmp")),
            "-netdev".into(),
            format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                vm.port_on(&self.host.name)
            ),
            "-device".into(),
            // A fixed id and slot: a NIC replaced by hot-plug (a new MAC) comes back where the
            // next host's QEMU, started from the definition, expects it.
            format!(
                "virtio-net-pci,id={NIC},netdev=n0,mac={},addr={NIC_SLOT}",
                vm.mac
            ),
            "-daemonize".into(),
            "-pidfile".into(),
            self.path(vm, "pid"),
        ]);
        if incoming {
            // Not -mem-prealloc: touching all guest memory at start starves the running VM of
            // CPU on a small host (measured: breaks before the pause), for no gain in the load.
            a.extend(["-incoming".into(), "defer".into()]);
        }
        a
    }

    async fn sh(&self, vm: &VmDef, script: &str, timeout: Duration) -> Result<String, DriverError> {
        super::exec_checked(&*self.conn, script, timeout, |e| self.err(vm, e)).await
    }

    async fn connect_qmp(&self, vm: &VmDef) -> Result<QmpConn, DriverError> {
        let s = self
            .conn
            .unix_stream(&self.path(vm, "qmp"))
            .await
            .map_err(|e| self.err(vm, format!("QMP: {e}")))?;
        // QEMU serves one QMP client at a time: a greeting that does not come means another
        // client holds it.
        match tokio::time::timeout(Duration::from_secs(10), Qmp::handshake(s)).await {
            Ok(r) => r.map_err(|e| self.err(vm, format!("QMP: {e}"))),
            Err(_) => Err(self.err(
                vm,
                "QMP: no greeting within 10 s (another client holds it?)",
            )),
        }
    }

    /// The VM's QMP connection, kept for the driver's life, taken out while in use.
    async fn qmp(&self, vm: &VmDef) -> Result<QmpConn, DriverError> {
        if let Some(q) = self.qmps.lock().await.remove(&vm.name) {
            return Ok(q);
        }
        self.connect_qmp(vm).await
    }

    /// Gives a connection back for the next call (one that failed is not given back).
    async fn keep(&self, vm: &VmDef, q: QmpConn) {
        self.qmps.lock().await.insert(vm.name.clone(), q);
    }

    async fn exec(&self, vm: &VmDef, cmd: &str, args: Value) -> Result<Value, DriverError> {
        let mut q = self.qmp(vm).await?;
        match q.execute(cmd, args).await {
            Ok(v) => {
                self.keep(vm, q).await;
                Ok(v)
            }
            // An error answer leaves the connection usable; a broken one is dropped.
            Err(e) if !e.contains("QMP closed") && !e.contains("bad QMP") => {
                self.keep(vm, q).await;
                Err(self.err(vm, e))
            }
            Err(e) => Err(self.err(vm, e)),
        }
    }

    /// The last lines of QEMU's log on the host (why it refused or died).
    async fn log_tail(&self, vm: &VmDef) -> String {
        self.sh(
            vm,
            &format!(
                "tail -n 3 {} 2>/dev/null",
                quote(&self.path(vm, "qemu.log"))
            ),
            Duration::from_secs(10),
        )
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            "QEMU stopped without a word (its errors go to a closed stderr once daemonized)".into()
        })
    }

    /// Starts QEMU (running, or waiting for an incoming migration) with its tap created first.
    async fn launch(&self, vm: &VmDef, incoming: bool) -> Result<(), DriverError> {
        let cmd: Vec<String> = self
            .command(vm, incoming)
            .iter()
            .map(|a| quote(a))
            .collect();
        let port = vm.port_on(&self.host.name);
        let pid = self.path(vm, "pid");
        // A leftover tap of ours goes; one under an adopted VM's own name may be another's.
        let clear = match vm.foreign_port_on(&self.host.name) {
            false => format!("ip link del {port} 2>/dev/null || true;"),
            true => format!(
                "if ip link show {port} >/dev/null 2>&1; then echo {msg} >&2; exit 3; fi;",
                msg = quote(&format!(
                    "a link named {port} is here already: the adopted VM's port name is taken"
                ))
            ),
        };
        let script = format!(
            "set -e; umask 077; mkdir -p {run}; \
             if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then echo 'a QEMU for this VM already runs here' >&2; exit 3; fi; \
             {clear} \
             ip tuntap add {port} mode tap; ip link set {port} up; \
             rm -f {qmp}; {cmd} </dev/null >/dev/null 2>{log} || {{ ip link del {port}; cat {log} >&2; exit 4; }}",
            run = quote(&self.host.run_dir),
            pid = quote(&pid),
            qmp = quote(&self.path(vm, "qmp")),
            log = quote(&self.path(vm, "qemu.log")),
            cmd = cmd.join(" "),
        );
        self.sh(vm, &script, Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Polls `query-migrate` until it completes; an error (or the deadline) fails it.
    /// Polls `query-migrate` until it completes; an error (or the deadline) fails it. The QMP
    /// connection is taken for one poll at a time: a rollback may need it between polls (QEMU
    /// serves one QMP client at a time, so a held connection would lock it out).
    async fn wait_migration(
        &self,
        vm: &VmDef,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, DriverError> {
        let t = Instant::now();
        loop {
            let m = self.exec(vm, "query-migrate", json!({})).await?;
            match m["status"].as_str() {
                Some("completed") => return Ok(m),
                Some("failed") | Some("cancelled") => {
                    return Err(self.err(
                        vm,
                        format!(
                            "{what} failed: {}",
                            m["error-desc"].as_str().unwrap_or("no reason given")
                        ),
                    ))
                }
                _ => {}
            }
            if t.elapsed() > timeout {
                let _ = self.exec(vm, "migrate_cancel", json!({})).await;
                return Err(DriverError::Timeout {
                    host: self.host.name.clone(),
                    vm: vm.name.clone(),
                    what: what.into(),
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the VM's QEMU process runs on the host (a zombie counts as gone).
    async fn alive(&self, vm: &VmDef) -> Result<bool, DriverError> {
        let pid = quote(&self.path(vm, "pid"));
        let out = self
            .sh(
                vm,
                &format!(
                    "p=$(cat {pid} 2>/dev/null) && [ -n \"$p\" ] && [ -d /proc/$p ] && \
                     ! grep -q '^State:.*Z' /proc/$p/status && echo alive || true"
                ),
                Duration::from_secs(10),
            )
            .await?;
        Ok(out.trim() == "alive")
    }

    /// Block job `id` as `query-block-jobs` shows it, if there.
    async fn job(&self, vm: &VmDef, id: &str) -> Result<Option<Value>, DriverError> {
        let jobs = self.exec(vm, "query-block-jobs", json!({})).await?;
        Ok(jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["device"] == id).cloned()))
    }

    /// Waits until every local disk's mirror is ready (in sync); one that ended, with its
    /// error, or the deadline fails it.
    async fn mirrors_ready(&self, vm: &VmDef, timeout: Duration) -> Result<(), DriverError> {
        let t = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for i in local_nodes(vm) {
                let id = mirror_job(i);
                let Some(job) = self.job(vm, &id).await? else {
                    return Err(self.err(vm, format!("the mirror of {} is gone", vm.disks[i].path)));
                };
                if job["status"] == "concluded" || job["status"] == "aborting" {
                    return Err(self.err(
                        vm,
                        format!(
                            "the mirror of {} failed: {}",
                            vm.disks[i].path,
                            job["error"]
                                .as_str()
                                .unwrap_or("it ended before it was in sync")
                        ),
                    ));
                }
                if job["ready"] != true {
                    waiting.push(format!(
                        "{} {}/{} bytes",
                        vm.disks[i].path,
                        job["offset"].as_u64().unwrap_or(0),
                        job["len"].as_u64().unwrap_or(0)
                    ));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if t.elapsed() > timeout {
                return Err(DriverError::Timeout {
                    host: self.host.name.clone(),
                    vm: vm.name.clone(),
                    what: format!(
                        "for the disk mirror to come in sync ({})",
                        waiting.join(", ")
                    ),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The block node of each of `vm`'s local disks, by index, as its QEMU names it: found by
    /// the image's path in `query-block` (`diskN` for the VMs this driver starts; whatever
    /// QEMU named an adopted VM's `-drive`).
    async fn disk_nodes(&self, vm: &VmDef) -> Result<Vec<(usize, String)>, DriverError> {
        let block = self.exec(vm, "query-block", json!({})).await?;
        let found = |path: &str| {
            block.as_array().and_then(|a| {
                a.iter().find_map(|b| {
                    let i = &b["inserted"];
                    (i["file"] == path || i["image"]["filename"] == path)
                        .then(|| i["node-name"].as_str().map(str::to_string))
                        .flatten()
                })
            })
        };
        local_nodes(vm)
            .into_iter()
            .map(|i| {
                found(&vm.disks[i].path)
                    .map(|n| (i, n))
                    .ok_or_else(|| self.err(vm, format!("QEMU has no disk {}", vm.disks[i].path)))
            })
            .collect()
    }

    async fn status(&self, vm: &VmDef) -> Result<String, DriverError> {
        let s = self.exec(vm, "query-status", json!({})).await?;
        Ok(s["status"].as_str().unwrap_or("unknown").to_string())
    }
}

/// An adopted VM's own command line (`args`, argv\[0\] first), made to run under this driver:
/// its QMP socket, pid file, daemonizing, waiting (`-S`, `-incoming`, `-loadvm`), human
/// monitors and display its operator's no more; the driver's QMP socket and pid file, a
/// console on stdio sent to `serial` instead; its tap named `port` (its name on this host),
/// its scripts off (the switch plugs the port). The guest's devices are left as they were: a
/// migration needs the same on both sides.
fn adopted_command(
    args: &[String],
    port: &str,
    qmp: &str,
    pid: &str,
    serial: &str,
    incoming: bool,
) -> Vec<String> {
    let mut a: Vec<String> = args.iter().take(1).cloned().collect();
    let mut i = 1;
    while i < args.len() {
        let (w, v) = (&args[i], args.get(i + 1).map(String::as_str));
        let opt = w.strip_prefix("--").or(w.strip_prefix('-'));
        match (opt, v) {
            (
                Some("qmp" | "qmp-pretty" | "pidfile" | "incoming" | "monitor" | "loadvm"),
                Some(_),
            )
            | (Some("display"), Some(_)) => i += 2,
            (Some("daemonize" | "S" | "nographic"), _) => i += 1,
            (Some("serial"), Some(v)) if v.contains("stdio") => {
                a.extend(["-serial".into(), format!("file:{serial}")]);
                i += 2;
            }
            (Some("netdev" | "net"), Some(v)) if v.starts_with("tap") => {
                let mut parts: Vec<String> = v
                    .split(',')
                    .filter(|p| !p.starts_with("script=") && !p.starts_with("downscript="))
                    .map(|p| match p.starts_with("ifname=") {
                        true => format!("ifname={port}"),
                        false => p.to_string(),
                    })
                    .collect();
                parts.extend(["script=no".into(), "downscript=no".into()]);
                a.extend([w.clone(), parts.join(",")]);
                i += 2;
            }
            _ => {
                a.push(w.clone());
                i += 1;
            }
        }
    }
    a.extend([
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{qmp},server=on,wait=off"),
        "-daemonize".into(),
        "-pidfile".into(),
        pid.into(),
    ]);
    if incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    a
}

/// Why an operator's QEMU command line cannot be driven by this driver, if it cannot.
fn adoption_refusal(argv: &[String]) -> Option<String> {
    for (i, w) in argv.iter().enumerate() {
        let v = argv.get(i + 1).map(String::as_str).unwrap_or("");
        let opt = w.trim_start_matches('-');
        if !w.starts_with('-') {
            continue;
        }
        if opt == "device" {
            let driver = v.split(',').next().unwrap_or("");
            let driver = driver.strip_prefix("driver=").unwrap_or(driver);
            if driver.starts_with("vfio") || driver == "pci-assign" || driver == "usb-host" {
                return Some(format!(
                    "it has a passthrough device ({driver}): its hardware is on this host only"
                ));
            }
        }
        if opt == "chardev" && v.starts_with("stdio") {
            return Some("its console is a terminal (-chardev stdio), which a daemonized QEMU on another host cannot have".into());
        }
    }
    None
}

/// The indexes of `vm`'s local disks (their nodes are `diskN`).
fn local_nodes(vm: &VmDef) -> Vec<usize> {
    (0..vm.disks.len())
        .filter(|i| !vm.disks[*i].shared)
        .collect()
}

fn mirror_job(i: usize) -> String {
    format!("nm-mirror{i}")
}

fn nbd_node(i: usize) -> String {
    format!("nm-nbd{i}")
}

fn export_id(i: usize) -> String {
    format!("nm-export{i}")
}

/// `-blockdev` and `-device` for each of the VM's disks: node `diskN` (the name the mirror of a
/// move and the target's export use on both sides), device `vdN`; the first is the boot disk
/// of a VM without a kernel.
fn disk_args(vm: &VmDef) -> Vec<String> {
    let mut a = Vec::new();
    let boot = vm.kernel.is_none();
    if vm.disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
    }
    for (i, d) in vm.disks.iter().enumerate() {
        let node = Disk::node(i);
        // JSON: a path needs no escaping of QEMU's commas.
        let blockdev = json!({
            "node-name": node,
            "driver": d.format.as_str(),
            "discard": "unmap",
            "file": {"driver": "file", "filename": d.path, "discard": "unmap"},
        });
        let dev = match d.bus {
            DiskBus::Virtio => "virtio-blk-pci",
            DiskBus::Ide => "ide-hd",
            DiskBus::Scsi => "scsi-hd",
        };
        let mut device = format!("{dev},drive={node},id=vd{i}");
        if d.bus == DiskBus::Scsi {
            device += ",bus=scsi0.0";
        }
        if boot && i == 0 {
            device += ",bootindex=1";
        }
        a.extend([
            "-blockdev".into(),
            blockdev.to_string(),
            "-device".into(),
            device,
        ]);
    }
    a
}

#[async_trait]
impl Hypervisor for Qemu {
    fn host(&self) -> &str {
        &self.host.name
    }

    async fn state(&self, vm: &VmDef) -> Result<RunState, DriverError> {
        // A QEMU that answers QMP is alive (a zombie does not answer): one round trip on the
        // kept connection, which matters inside a VM's break. Only without an answer is the
        // process itself looked at.
        let status = match self.status(vm).await {
            Ok(s) => s,
            Err(e) => {
                if !self.alive(vm).await? {
                    return Ok(RunState::Absent);
                }
                return Err(e);
            }
        };
        Ok(match status.as_str() {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "inmigrate" | "prelaunch" => RunState::Incoming,
            "postmigrate" => RunState::Migrated,
            _ => RunState::Other,
        })
    }

    async fn start(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.launch(vm, false).await
    }

    async fn prepare_incoming(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.launch(vm, true).await?;
        // QEMU's own announcement after the move (5 rounds from 50 ms, growing by 100 ms)
        // tells the switches where the VM now is.
        self.exec(
            vm,
            "migrate-set-parameters",
            json!({"announce-rounds": 5, "announce-initial": 50, "announce-max": 550,
                   "announce-step": 100}),
        )
        .await?;
        Ok(())
    }

    async fn pause(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.exec(vm, "stop", json!({})).await.map(drop)
    }

    async fn resume(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.exec(vm, "cont", json!({})).await.map(drop)
    }

    async fn save_to(&self, vm: &VmDef, sink: &str, timeout: Duration) -> Result<(), DriverError> {
        let mut q = self.qmp(vm).await?;
        let run = |e: String| self.err(vm, e);
        q.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": MAX_BANDWIDTH}),
        )
        .await
        .map_err(run)?;
        q.execute("migrate", json!({"uri": format!("exec:{sink}")}))
            .await
            .map_err(run)?;
        self.keep(vm, q).await;
        self.wait_migration(vm, "saving the VM's state", timeout)
            .await
            .map(drop)
    }

    async fn restore_from(
        &self,
        vm: &VmDef,
        source: &str,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let mut q = self.qmp(vm).await?;
        let run = |e: String| self.err(vm, e);
        // An event says when the load ends: no polling while QEMU is busy loading.
        q.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        )
        .await
        .map_err(run)?;
        q.execute("migrate-incoming", json!({"uri": format!("exec:{source}")}))
            .await
            .map_err(run)?;
        let done = q.event("MIGRATION", |d| {
            matches!(d["status"].as_str(), Some("completed" | "failed"))
        });
        // A QEMU that dies of a bad stream may not get its word out through the forwarded
        // socket: look at the process too, every half second. A host that does not answer
        // twice in a row (it is cut off, or down) fails the load.
        let watched = async {
            tokio::pin!(done);
            let mut unanswered = 0;
            loop {
                tokio::select! {
                    r = &mut done => break r,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => match self.alive(vm).await {
                        Ok(true) => unanswered = 0,
                        Ok(false) => break Err("QEMU exited".to_string()),
                        Err(e) => {
                            unanswered += 1;
                            if unanswered >= 2 {
                                break Err(format!("{HOST_GONE}: {e}"));
                            }
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, watched).await {
            Ok(Ok(d)) if d["status"] == "completed" => {
                self.keep(vm, q).await;
                Ok(())
            }
            Ok(Err(e)) if e.starts_with(HOST_GONE) => Err(self.err(vm, e)),
            // The QMP channel broke: QEMU died, or the host went away with it.
            Ok(Err(_)) if self.alive(vm).await.is_err() => {
                Err(self.err(vm, format!("{HOST_GONE} (its SSH connection broke)")))
            }
            // A failed load ends QEMU (or leaves it useless): say why, from its log.
            Ok(_) => Err(self.err(
                vm,
                format!(
                    "QEMU refused the incoming state: {}",
                    self.log_tail(vm).await
                ),
            )),
            Err(_) => Err(DriverError::Timeout {
                host: self.host.name.clone(),
                vm: vm.name.clone(),
                what: "loading the VM's state".into(),
                after: timeout,
            }),
        }
    }

    async fn listen_incoming(&self, vm: &VmDef, port: u16) -> Result<(), DriverError> {
        self.exec(
            vm,
            "migrate-incoming",
            json!({"uri": format!("tcp:{}:{port}", self.host.address)}),
        )
        .await
        .map(drop)
    }

    async fn live_migrate(
        &self,
        vm: &VmDef,
        target: std::net::IpAddr,
        port: u16,
        downtime: Duration,
        timeout: Duration,
    ) -> Result<LiveResult, DriverError> {
        let mut q = self.qmp(vm).await?;
        let run = |e: String| self.err(vm, e);
        q.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": MAX_BANDWIDTH, "downtime-limit": downtime.as_millis() as u64}),
        )
        .await
        .map_err(run)?;
        q.execute("migrate", json!({"uri": format!("tcp:{target}:{port}")}))
            .await
            .map_err(run)?;
        self.keep(vm, q).await;
        let m = self
            .wait_migration(vm, "live migration (it did not converge)", timeout)
            .await?;
        Ok(LiveResult {
            downtime_ms: m["downtime"].as_u64(),
            total_ms: m["total-time"].as_u64(),
            bytes: m["ram"]["transferred"].as_u64(),
        })
    }

    async fn abort_outgoing(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.exec(vm, "migrate_cancel", json!({})).await.map(drop)
    }

    async fn announce(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.exec(
            vm,
            "announce-self",
            json!({"initial": 50, "max": 550, "rounds": 5, "step": 100}),
        )
        .await
        .map(drop)
    }

    async fn destroy(&self, vm: &VmDef) -> Result<(), DriverError> {
        self.qmps.lock().await.remove(&vm.name);
        let pid = quote(&self.path(vm, "pid"));
        // Its tap goes with it; an adopted VM's (its own name, perhaps another's here) only if
        // its QEMU was here to end.
        let port = quote(&vm.port_on(&self.host.name));
        let del_tap = match vm.foreign_port_on(&self.host.name) {
            false => format!("ip link del {port} 2>/dev/null"),
            true => format!("[ -n \"$ended\" ] && ip link del {port} 2>/dev/null"),
        };
        let script = format!(
            "p=$(cat {pid} 2>/dev/null); ended=; \
             if [ -n \"$p\" ] && kill \"$p\" 2>/dev/null; then ended=1; \
               i=0; while [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
               [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null && kill -9 \"$p\"; \
             fi; \
             rm -f {pid} {qmp}; {del_tap}; true",
            qmp = quote(&self.path(vm, "qmp")),
        );
        self.sh(vm, &script, Duration::from_secs(20))
            .await
            .map(drop)
    }

    fn mirrors_disks(&self) -> bool {
        true
    }

    async fn adopt(&self, name: &str, shared: &[String]) -> Result<VmDef, DriverError> {
        let refuse = |reason: String| DriverError::Host {
            host: self.host.name.clone(),
            reason: format!("{name}: {reason}"),
        };
        let out = super::exec_checked(
            &*self.conn,
            crate::inventory::facts::QEMU_PROCESSES,
            Duration::from_secs(20),
            |e| refuse(format!("listing the QEMUs here: {e}")),
        )
        .await?;
        let mut found: Vec<(u32, Vec<String>, crate::inventory::facts::QemuCmdline)> = out
            .lines()
            .filter_map(|l| {
                let q = crate::inventory::facts::qemu_cmdline(l)?;
                let (pid, argv) = crate::inventory::facts::qemu_argv(l)?;
                (q.name == name).then_some((pid, argv, q))
            })
            .collect();
        let (pid, argv, q) = match found.len() {
            0 => return Err(refuse(format!("no QEMU named {name} runs here"))),
            1 => found.remove(0),
            n => return Err(refuse(format!("{n} QEMUs are named {name} here"))),
        };
        if let Some(why) = adoption_refusal(&argv) {
            return Err(refuse(why));
        }
        let Some(their_qmp) = q.qmp.clone() else {
            return Err(refuse(
                "it has no QMP socket the appliance can reach: start it with \
                 -qmp unix:PATH,server=on,wait=off"
                    .into(),
            ));
        };
        let (port, mac) = match (&q.taps[..], q.macs.first()) {
            ([tap], Some(mac)) if tap.len() <= 15 => (tap.clone(), mac.clone()),
            ([_], Some(_)) => return Err(refuse("its tap's name is too long".into())),
            (taps, _) => {
                return Err(refuse(format!(
                    "it needs one tap NIC with a MAC to be moved (it has {} taps, {} MACs)",
                    taps.len(),
                    q.macs.len()
                )))
            }
        };
        // Its QMP answers (QEMU serves one client: its operator's tool must not hold it).
        let stream = self
            .conn
            .unix_stream(&their_qmp)
            .await
            .map_err(|e| refuse(format!("its QMP socket {their_qmp}: {e}")))?;
        let mut qmp = tokio::time::timeout(Duration::from_secs(10), Qmp::handshake(stream))
            .await
            .map_err(|_| {
                refuse(format!(
                    "its QMP socket {their_qmp} does not answer (another client holds it?)"
                ))
            })?
            .map_err(|e| refuse(format!("its QMP socket {their_qmp}: {e}")))?;
        let block = qmp
            .execute("query-block", json!({}))
            .await
            .map_err(|e| refuse(format!("query-block: {e}")))?;
        let mut disks = Vec::new();
        for b in block.as_array().into_iter().flatten() {
            let i = &b["inserted"];
            let Some(path) = i["image"]["filename"].as_str().or(i["file"].as_str()) else {
                continue; // an empty drive (a CD-ROM without a medium)
            };
            let read_only = i["ro"] == true;
            let format = match i["image"]["format"].as_str().or(i["drv"].as_str()) {
                Some("qcow2") => super::DiskFormat::Qcow2,
                Some("raw") => super::DiskFormat::Raw,
                other if read_only || shared.iter().any(|s| s == path) => {
                    // Not carried: its format matters only to its own QEMU.
                    let _ = other;
                    super::DiskFormat::Raw
                }
                other => {
                    return Err(refuse(format!(
                        "its disk {path} is {}: only raw and qcow2 disks move",
                        other.unwrap_or("of an unknown format")
                    )))
                }
            };
            let is_shared = read_only || shared.iter().any(|s| s == path);
            if !is_shared && i["image"]["backing-filename"].is_string() {
                return Err(refuse(format!(
                    "its disk {path} has a backing file, which would have to be on the target too: \
                     mark it --shared if it is on shared storage"
                )));
            }
            disks.push(super::Disk {
                path: path.to_string(),
                format,
                bus: super::DiskBus::Virtio,
                shared: is_shared,
            });
        }
        drop(qmp);
        let def = VmDef {
            name: name.to_string(),
            mem_mib: u32::try_from(q.mem_mib).unwrap_or(u32::MAX),
            vcpus: q.vcpus,
            mac,
            ip: None,
            vlan: None,
            rate_kbps: None,
            kernel: None,
            initrd: None,
            append: None,
            disks,
            guest_type: None,
            adopted: Some(super::Adopted {
                port,
                qemu_args: argv,
                host: self.host.name.clone(),
            }),
        };
        def.check().map_err(refuse)?;
        // Reached from now on as this driver reaches its own: its pid in the pid file, its QMP
        // socket under the driver's name for it.
        let (our_pid, our_qmp) = (self.path(&def, "pid"), self.path(&def, "qmp"));
        self.sh(
            &def,
            &format!(
                "umask 077; mkdir -p {run} && echo {pid} > {our_pid} && \
                 {{ [ {qmp} -ef {our_qmp} ] || ln -sfn {qmp} {our_qmp}; }}",
                run = quote(&self.host.run_dir),
                our_pid = quote(&our_pid),
                qmp = quote(&their_qmp),
                our_qmp = quote(&our_qmp),
            ),
            Duration::from_secs(20),
        )
        .await?;
        Ok(def)
    }

    /// The VM is stopped (QMP `stop`, which drains and flushes its disks) before the save.
    fn cold_disks_refusal(&self, _vm: &VmDef) -> Option<String> {
        None
    }

    async fn export_disks(&self, vm: &VmDef, port: u16) -> Result<(), DriverError> {
        self.exec(
            vm,
            "nbd-server-start",
            json!({"addr": {"type": "inet",
                            "data": {"host": self.host.address.to_string(), "port": port.to_string()}}}),
        )
        .await?;
        for (i, node) in self.disk_nodes(vm).await? {
            self.exec(
                vm,
                "block-export-add",
                json!({"type": "nbd", "id": export_id(i), "node-name": node,
                       "name": Disk::node(i), "writable": true}),
            )
            .await?;
        }
        Ok(())
    }

    async fn mirror_disks(
        &self,
        vm: &VmDef,
        target: std::net::IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let started = async {
            for (i, node) in self.disk_nodes(vm).await? {
                self.exec(
                    vm,
                    "blockdev-add",
                    json!({"driver": "nbd", "node-name": nbd_node(i),
                           "server": {"type": "inet", "host": target.to_string(), "port": port.to_string()},
                           "export": Disk::node(i)}),
                )
                .await?;
                // write-blocking: once in sync, a guest write completes only when both copies
                // have it, so the switch-over finds the target's disk current. Kept after it
                // ends (auto-dismiss off), so that its error can be read.
                self.exec(
                    vm,
                    "blockdev-mirror",
                    json!({"job-id": mirror_job(i), "device": node, "target": nbd_node(i),
                           "sync": "full", "copy-mode": "write-blocking", "auto-dismiss": false}),
                )
                .await?;
            }
            Ok::<(), DriverError>(())
        };
        let synced = async {
            started.await?;
            self.mirrors_ready(vm, timeout).await
        };
        if let Err(e) = synced.await {
            let _ = self.end_mirror(vm).await;
            return Err(e);
        }
        Ok(())
    }

    async fn end_mirror(&self, vm: &VmDef) -> Result<(), DriverError> {
        // A ready mirror's cancel completes it without a pivot: the target's copy is whole and
        // the source keeps its own. One not ready yet is dropped.
        for i in local_nodes(vm) {
            if let Some(job) = self.job(vm, &mirror_job(i)).await? {
                if job["status"] != "concluded" {
                    self.exec(vm, "block-job-cancel", json!({"device": mirror_job(i)}))
                        .await?;
                }
                let t = Instant::now();
                while self
                    .job(vm, &mirror_job(i))
                    .await?
                    .is_some_and(|j| j["status"] != "concluded")
                {
                    if t.elapsed() > Duration::from_secs(30) {
                        return Err(self.err(vm, "a cancelled disk mirror did not end in 30 s"));
                    }
                    tokio::time::sleep(POLL).await;
                }
                self.exec(vm, "job-dismiss", json!({"id": mirror_job(i)}))
                    .await?;
            }
            match self
                .exec(vm, "blockdev-del", json!({"node-name": nbd_node(i)}))
                .await
            {
                // "Failed to find node with node-name=...": there was none (never added, or
                // removed by an earlier end).
                Err(e) if !e.to_string().contains("find node") => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    async fn end_export(&self, vm: &VmDef) -> Result<(), DriverError> {
        for i in local_nodes(vm) {
            match self
                .exec(
                    vm,
                    "block-export-del",
                    json!({"id": export_id(i), "mode": "hard"}),
                )
                .await
            {
                Err(e) if !e.to_string().contains("not found") => return Err(e),
                _ => {}
            }
        }
        match self.exec(vm, "nbd-server-stop", json!({})).await {
            Err(e) if !e.to_string().contains("not running") => Err(e),
            _ => Ok(()),
        }
    }

    fn host_disks(&self) -> super::disk::HostDisks<'_> {
        super::disk::HostDisks {
            link: &*self.conn,
            run_dir: &self.host.run_dir,
            host: &self.host.name,
        }
    }

    async fn replace_nic(&self, vm: &VmDef, mac: &str) -> Result<(), DriverError> {
        if vm.adopted.is_some() {
            return Err(self.err(
                vm,
                "an adopted VM's NIC is its operator's: it keeps its MAC (no --new-mac)",
            ));
        }
        let path = format!("/machine/peripheral/{NIC}");
        let current = self
            .exec(vm, "qom-get", json!({"path": path, "property": "mac"}))
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_ascii_lowercase));
        if current.as_deref() == Some(&mac.to_ascii_lowercase()) {
            return Ok(());
        }
        if current.is_some() {
            // QEMU migrates the MAC with the device's state: a new MAC needs a new device.
            // The guest must let the old one go (ACPI hot-unplug).
            self.exec(vm, "device_del", json!({"id": NIC})).await?;
            let gone = async {
                loop {
                    let v = self
                        .exec(vm, "qom-list", json!({"path": "/machine/peripheral"}))
                        .await?;
                    let there = v
                        .as_array()
                        .is_some_and(|a| a.iter().any(|p| p["name"] == NIC));
                    if !there {
                        return Ok::<(), DriverError>(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            match tokio::time::timeout(NIC_RELEASE, gone).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(DriverError::Timeout {
                        host: self.host.name.clone(),
                        vm: vm.name.clone(),
                        what: "for the guest to release its NIC (does it take ACPI hot-unplug?)"
                            .into(),
                        after: NIC_RELEASE,
                    })
                }
            }
        }
        self.exec(
            vm,
            "device_add",
            json!({"driver": "virtio-net-pci", "id": NIC, "netdev": "n0", "mac": mac,
                   "addr": NIC_SLOT}),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    /// An operator's command line keeps its devices; what ties it to its terminal, its
    /// operator's sockets and its tap scripts goes, and the driver's own come in.
    #[test]
    fn an_adopted_command_line_keeps_its_devices_and_takes_the_drivers_controls() {
        let theirs = words(
            "/usr/bin/qemu-system-x86_64 -name web -m 256 -nographic -serial mon:stdio \
             -drive file=/v/web.qcow2,if=virtio,format=qcow2 \
             -netdev tap,id=net0,ifname=tap-web,script=/etc/qemu-ifup,downscript=/etc/qemu-ifdown \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56 \
             -qmp unix:/tmp/web.qmp,server=on,wait=off -monitor unix:/tmp/web.mon,server,nowait \
             -pidfile /tmp/web.pid -daemonize -S",
        );
        let got = adopted_command(
            &theirs,
            "nm-web",
            "/run/nm/web.qmp",
            "/run/nm/web.pid",
            "/run/nm/web.log",
            true,
        );
        let want = words(
            "/usr/bin/qemu-system-x86_64 -name web -m 256 -serial file:/run/nm/web.log \
             -drive file=/v/web.qcow2,if=virtio,format=qcow2 \
             -netdev tap,id=net0,ifname=nm-web,script=no,downscript=no \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56 \
             -display none -qmp unix:/run/nm/web.qmp,server=on,wait=off -daemonize \
             -pidfile /run/nm/web.pid -incoming defer",
        );
        assert_eq!(got, want);
        assert_eq!(adoption_refusal(&theirs), None);
        let passthrough = words("qemu-system-x86_64 -device vfio-pci,host=01:00.0");
        assert!(adoption_refusal(&passthrough)
            .unwrap()
            .contains("passthrough"));
        let tty = words("qemu-system-x86_64 -chardev stdio,id=c0");
        assert!(adoption_refusal(&tty).unwrap().contains("terminal"));
    }

    /// Each disk is a `-blockdev` node named `diskN` (what a move mirrors and exports) behind
    /// its bus's device; a VM without a kernel boots from the first.
    #[test]
    fn disks_are_named_block_nodes_and_the_first_boots() {
        let vm: VmDef = serde_json::from_value(json!({
            "name": "d", "mem_mib": 128, "mac": "52:54:00:00:00:02",
            "disks": [{"path": "/v/a,b.qcow2", "format": "qcow2"}, {"path": "/v/c.img", "bus": "scsi"}]
        }))
        .unwrap();
        let a = disk_args(&vm);
        let node: Value = serde_json::from_str(&a[3]).unwrap();
        assert_eq!(node["node-name"], "disk0");
        assert_eq!(node["driver"], "qcow2");
        assert_eq!(node["file"]["filename"], "/v/a,b.qcow2");
        assert_eq!(a[5], "virtio-blk-pci,drive=disk0,id=vd0,bootindex=1");
        assert_eq!(a[1], "virtio-scsi-pci,id=scsi0");
        assert_eq!(a[9], "scsi-hd,drive=disk1,id=vd1,bus=scsi0.0");
    }
}

//! Inventory: the paper's step 1. The appliance logs in to each hypervisor host over SSH (no
//! agent), collects CPUs, memory, disk, NICs, Open vSwitch ports and the VMs with what they
//! need, in parallel with bounded concurrency. All I/O lives here; placement stays pure.

pub mod facts;
pub mod link;
pub mod qmp;
pub mod ssh;
pub mod xen;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{HostConfig, HypervisorKind};
use facts::HostFacts;
use ssh::{Conn, KeyCheck, SshError};

/// A host's SSH connect timeout unless its config says otherwise (kept with the config, which
/// the inventory reads; the config does not reach into the inventory).
pub use crate::config::CONNECT_TIMEOUT;
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const QMP_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of collecting one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collected {
    pub host: String,
    pub duration_ms: u64,
    pub facts: Option<HostFacts>,
    /// Why the host is down, when it is.
    pub error: Option<String>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// Connections to hosts, kept open and reused between collections.
pub struct Inventory {
    slots: Mutex<HashMap<String, Slot>>,
    limit: Arc<Semaphore>,
    /// Failed collections by host, for metrics.
    errors: std::sync::Mutex<HashMap<String, u64>>,
}

impl Inventory {
    pub fn new(concurrency: usize) -> Inventory {
        Inventory {
            slots: Mutex::new(HashMap::new()),
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
            errors: Default::default(),
        }
    }

    /// Failed collections so far, by host.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .errors
            .lock()
            .expect("errors lock")
            .iter()
            .map(|(h, n)| (h.clone(), *n))
            .collect();
        v.sort();
        v
    }

    fn slot(&self, host: &str) -> Slot {
        self.slots
            .lock()
            .expect("inventory slots")
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    /// The open connection to `h`, or a new one checked against `pinned`.
    async fn conn(&self, h: &HostConfig, pinned: Option<&str>) -> Result<Arc<Conn>, SshError> {
        let slot = self.slot(&h.name);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            let same_key = pinned.is_some_and(|p| ssh::key_identity(p) == c.host_key);
            if !c.is_closed() && same_key {
                return Ok(c.clone());
            }
        }
        let check = match pinned {
            Some(p) => KeyCheck::Pinned(p.to_string()),
            None => KeyCheck::Refuse,
        };
        let c = Arc::new(Conn::connect(h, check, h.connect_timeout).await?);
        *guard = Some(c.clone());
        Ok(c)
    }

    /// The open connection to `h` (kept for later calls), checked against its pinned key.
    pub async fn connection(
        &self,
        h: &HostConfig,
        pinned: Option<&str>,
    ) -> Result<Arc<Conn>, SshError> {
        self.conn(h, pinned).await
    }

    /// Forgets a host's connection (its config or key changed, or it failed).
    pub async fn forget(&self, host: &str) {
        let slot = self.slot(host);
        *slot.lock().await = None;
    }

    /// Connects accepting whatever key the host shows and returns it, to be pinned. With a key
    /// already pinned, only `replace` lets a different one through.
    pub async fn trust(
        &self,
        h: &HostConfig,
        pinned: Option<&str>,
        replace: bool,
    ) -> Result<String, SshError> {
        let c = Conn::connect(h, KeyCheck::TrustOnFirstUse, h.connect_timeout).await?;
        if let Some(p) = pinned {
            if ssh::key_identity(p) != c.host_key && !replace {
                return Err(SshError::KeyChanged {
                    host: h.name.clone(),
                    addr: format!("{}:{}", h.address, h.ssh_port),
                    pinned: ssh::key_identity(p),
                    offered: c.host_key.clone(),
                });
            }
        }
        self.forget(&h.name).await;
        Ok(c.host_key.clone())
    }

    /// Collects every host in parallel (bounded); one that fails does not hold back the others.
    pub async fn collect(
        self: &Arc<Self>,
        hosts: Vec<(HostConfig, Option<String>)>,
    ) -> Vec<Collected> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (h, pinned)) in hosts.into_iter().enumerate() {
            let inv = self.clone();
            tasks.spawn(async move {
                let _permit = inv.limit.clone().acquire_owned().await;
                let t = Instant::now();
                let r = inv.collect_host(&h, pinned.as_deref()).await;
                if r.is_err() {
                    inv.forget(&h.name).await;
                    *inv.errors
                        .lock()
                        .expect("errors lock")
                        .entry(h.name.clone())
                        .or_default() += 1;
                }
                let duration_ms = t.elapsed().as_millis() as u64;
                let c = match r {
                    Ok(f) => Collected {
                        host: h.name.clone(),
                        duration_ms,
                        facts: Some(f),
                        error: None,
                    },
                    Err(e) => Collected {
                        host: h.name.clone(),
                        duration_ms,
                        facts: None,
                        error: Some(e),
                    },
                };
                (i, c)
            });
        }
        let mut out: Vec<(usize, Collected)> = tasks.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, c)| c).collect()
    }

    async fn collect_host(
        &self,
        h: &HostConfig,
        pinned: Option<&str>,
    ) -> Result<HostFacts, String> {
        let conn = self.conn(h, pinned).await.map_err(|e| e.to_string())?;
        let script = facts::script(h);
        let run = || async {
            let out = conn
                .run_script(&script, COLLECT_TIMEOUT)
                .await
                .map_err(|e| (true, e.to_string()))?;
            parse_output(h, &out.stdout, &out.stderr).map_err(|e| (false, e))
        };
        let (mut f, qemus) = match run().await {
            Ok(x) => x,
            Err((true, e)) => return Err(e),
            // The host answered, but a tool there failed or printed something inconsistent (one
            // that crashed, a list read mid-change): once more, at once.
            Err((false, e)) => {
                tracing::debug!(host = %h.name, "collecting again: {e}");
                run().await.map_err(|(_, e)| e)?
            }
        };
        for q in qemus {
            let state = match &q.qmp {
                Some(path) => qmp_status(&conn, path)
                    .await
                    .unwrap_or_else(|e| format!("unknown ({e})")),
                None => "unknown (no QMP socket)".into(),
            };
            let bw = facts::port_mbps(&f, &q.taps);
            f.vms.push(facts::VmFacts {
                name: q.name,
                vcpus: q.vcpus,
                mem_mib: q.mem_mib,
                disk_mib: 0,
                disk_allocated_mib: 0,
                macs: q.macs,
                ips: Vec::new(),
                state,
                ports: q.taps,
                bw_mbps: bw,
                disks: q.drives,
                qmp: q.qmp,
            });
        }
        // Disk sizes (what the guest sees, what the host's storage holds), in one more round
        // trip, only when some VM has disks.
        let paths: Vec<String> = f.vms.iter().flat_map(|v| v.disks.clone()).collect();
        if !paths.is_empty() {
            let out = conn
                .run_script(
                    &crate::hypervisor::disk::probe_script(&paths),
                    COLLECT_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            let sizes = crate::hypervisor::disk::parse_probe(&out.stdout);
            for v in &mut f.vms {
                let of = |d: &String| sizes.iter().find(|(p, _)| p == d).map(|(_, u)| *u);
                let all: Vec<_> = v.disks.iter().filter_map(of).collect();
                let total = |f: fn(&crate::hypervisor::DiskUsage) -> u64| {
                    all.iter().map(f).sum::<u64>().div_ceil(1 << 20)
                };
                v.disk_mib = total(|u| u.virtual_bytes);
                v.disk_allocated_mib = total(|u| u.allocated_bytes);
            }
        }
        Ok(f)
    }
}

/// Turns the collection script's output into facts. Xen guests come complete from `xl`; QEMU
/// processes are returned apart, for their QMP sockets to be asked.
pub fn parse_output(
    h: &HostConfig,
    stdout: &str,
    stderr: &str,
) -> Result<(HostFacts, Vec<facts::QemuCmdline>), String> {
    let secs = facts::sections(stdout);
    let mut f = HostFacts {
        hypervisor: h.hypervisor.as_str().into(),
        ..Default::default()
    };
    facts::parse_common(&secs, &mut f)
        .map_err(|e| format!("{e}; stderr: {}", stderr.lines().next().unwrap_or("")))?;
    let get = |name: &str| {
        secs.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.as_str())
            .unwrap_or("")
    };
    let mut qemus = Vec::new();
    match h.hypervisor {
        #[cfg(test)]
        HypervisorKind::Fake => {}
        HypervisorKind::Qemu => {
            qemus = get("qemu")
                .lines()
                .filter_map(facts::qemu_cmdline)
                .collect();
        }
        HypervisorKind::Xen => {
            let info = xen::info(get("xlinfo"));
            if info.is_empty() {
                return Err(format!(
                    "`xl info` printed nothing; is this a Xen dom0? stderr: {}",
                    stderr.lines().next().unwrap_or("")
                ));
            }
            if let Some(t) = xen::info_u64(&info, "total_memory") {
                f.mem_total_mib = t;
            }
            if let Some(free) = xen::info_u64(&info, "free_memory") {
                f.mem_free_mib = free;
            }
            if let Some(n) = xen::info_u64(&info, "nr_cpus") {
                f.cpus = n as u32;
            }
            let rc = get("xlrc").trim().to_string();
            if rc != "0" {
                return Err(format!(
                    "`xl list -l` failed (exit {rc}): {}",
                    stderr.lines().last().unwrap_or("")
                ));
            }
            let mut vms = xen::list(get("xllist"))?;
            let names: Vec<&str> = get("xlnames").lines().map(str::trim).collect();
            if let Some(missing) = names
                .iter()
                .find(|n| !n.is_empty() && !vms.iter().any(|v| v.name == **n))
            {
                return Err(format!(
                    "`xl list` shows {missing} but `xl list -l` does not; collect again"
                ));
            }
            for v in &mut vms {
                v.bw_mbps = facts::port_mbps(&f, &v.ports);
            }
            f.vms = vms;
        }
    }
    Ok((f, qemus))
}

/// The VM's run state as QEMU reports it, over the SSH-forwarded QMP socket.
async fn qmp_status(conn: &Conn, path: &str) -> Result<String, String> {
    let ask = async {
        let stream = conn.unix_stream(path).await.map_err(|e| e.to_string())?;
        let mut q = qmp::Qmp::handshake(stream).await?;
        let st = q.execute("query-status", serde_json::json!({})).await?;
        Ok::<_, String>(st["status"].as_str().unwrap_or("unknown").to_string())
    };
    tokio::time::timeout(QMP_TIMEOUT, ask)
        .await
        .map_err(|_| "QMP did not answer".to_string())?
}

/// MAC -> IPv4 from a neighbour table (/proc/net/arp format): where the VMs' addresses come
/// from until the appliance's DHCP server knows them.
pub fn arp_table(text: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for l in text.lines().skip(1) {
        let w: Vec<&str> = l.split_whitespace().collect();
        // IP, HW type, Flags (0x2 = complete), HW address, Mask, Device
        if w.len() >= 4 && w[2] != "0x0" && w[3] != "00:00:00:00:00:00" {
            m.entry(w[3].to_lowercase())
                .or_default()
                .push(w[0].to_string());
        }
    }
    m
}

//! The Xen driver: `xl` over SSH on the host's dom0. Each VM's domain config is written from its
//! definition on whichever host runs it; its vif is named after its switch port and brought up
//! by a hotplug script of ours that leaves the port itself to the engine (OVSDB, with the VM's
//! VLAN tag and rate limit), as on QEMU.
//!
//! Xen's quirks stay here: a PV or PVH guest suspends itself for a save (so it must be running
//! when the save starts), the domain and its vif exist only once `xl restore` has made them,
//! the saved stream is mostly zero pages (compressed on the wire), and `xl migrate` carries its
//! own transport (SSH from dom0 to dom0) and fails, with the guest resumed at the sender, when
//! the stream breaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{last_words, DriverError, GuestType, Hypervisor, LiveResult, RunState, VmDef};
use crate::config::HostConfig;
use crate::inventory::link::Link;
use crate::shell::quote;

/// The hotplug script: renames the vif to the VM's port name and brings it up; netback waits
/// for `hotplug-status` before it connects the guest, and libxl for the script before the
/// domain runs. A port the appliance put on the switch before the load (tag and rate limit
/// set) takes the device when vswitchd sees it: the script waits for that (a few seconds at
/// most), so that a migrated guest resumes with its network there.
const VIF_SCRIPT: &str = r#"#!/bin/sh
# netmigrate: the appliance puts this vif on the switch itself (OVSDB: VLAN tag, rate limit).
name=$(xenstore-read "$XENBUS_PATH/vifname" 2>/dev/null)
dev=${vif:-$name}
case "$1" in
online|add)
  if [ -n "$name" ] && [ "$name" != "$dev" ] && ip link show "$dev" >/dev/null 2>&1; then
    ip link set dev "$dev" name "$name" || exit 1
  fi
  ip link set dev "${name:-$dev}" up || exit 1
  # No such interface on the switch: the appliance puts the port there after this.
  i=0
  while [ -n "$name" ] && [ $i -lt 100 ]; do
    o=$(ovs-vsctl --timeout=5 get Interface "$name" ofport 2>/dev/null) || break
    [ "$o" -gt 0 ] 2>/dev/null && break
    sleep 0.05; i=$((i+1))
  done
  xenstore-write "$XENBUS_PATH/hotplug-status" connected ;;
esac
exit 0
"#;

pub struct Xen {
    pub host: HostConfig,
    pub conn: Arc<dyn Link>,
    /// What the host offers, read once per driver (a driver lives for one operation): its
    /// check and each live refusal would otherwise ask `xl info` again.
    caps: tokio::sync::OnceCell<Caps>,
}

/// What a Xen host offers, from `xl info` and the tools installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    /// The hypervisor's major.minor.
    pub xen: String,
    /// The toolstack's major.minor (from where `xl` lives), if it could be told.
    pub tools: Option<String>,
    /// `virt_caps`: pv, hvm, hap, shadow...
    pub virt: Vec<String>,
}

impl Caps {
    pub fn parse(text: &str) -> Result<Caps, String> {
        let info = crate::inventory::xen::info(text);
        let get = |k: &str| {
            info.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let tools = get("nm_tools").filter(|t| !t.is_empty());
        let (Some(major), Some(minor)) = (get("xen_major"), get("xen_minor")) else {
            let said = text
                .lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with("nm_tools"))
                .unwrap_or("nothing");
            return Err(match tools {
                Some(t) => format!(
                    "`xl info` failed ({said}); the installed xl is from Xen {t}: the tools must \
                     match the running hypervisor"
                ),
                None => format!("`xl info` failed: {said}; is this a Xen dom0?"),
            });
        };
        Ok(Caps {
            xen: format!("{major}.{minor}"),
            tools,
            virt: get("virt_caps")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }

    /// Why a guest of type `t` cannot live-migrate away from this host, if it cannot.
    pub fn live_refusal(&self, t: GuestType) -> Option<String> {
        let has = |c: &str| self.virt.iter().any(|v| v == c);
        match t {
            // PV log-dirty mode needs shadow paging in the hypervisor.
            GuestType::Pv if !has("shadow") => Some(
                "a PV guest live-migrates only on a hypervisor with shadow paging, and this \
                 one has none (virt_caps: "
                    .to_string()
                    + &self.virt.join(" ")
                    + ")",
            ),
            GuestType::Pvh | GuestType::Hvm if !has("hap") && !has("shadow") => Some(format!(
                "a {} guest needs hap or shadow paging for log-dirty, and virt_caps has neither",
                t.as_str()
            )),
            _ => None,
        }
    }

    /// Why this host's toolstack cannot drive its hypervisor, if so.
    pub fn version_refusal(&self) -> Option<String> {
        match &self.tools {
            Some(t) if *t != self.xen => Some(format!(
                "its xl is from Xen {t} and its hypervisor is Xen {}: install the tools of the \
                 running hypervisor",
                self.xen
            )),
            _ => None,
        }
    }
}

impl Xen {
    pub fn new(host: HostConfig, conn: Arc<dyn Link>) -> Xen {
        Xen {
            host,
            conn,
            caps: tokio::sync::OnceCell::new(),
        }
    }

    fn path(&self, vm: &VmDef, ext: &str) -> String {
        format!("{}/{}.{ext}", self.host.run_dir, vm.name)
    }

    fn vif_script(&self) -> String {
        vif_script_path(&self.host)
    }

    fn err(&self, vm: &VmDef, reason: impl Into<String>) -> DriverError {
        DriverError::Vm {
            host: self.host.name.clone(),
            vm: vm.name.clone(),
            reason: reason.into(),
        }
    }

    pub fn config(&self, vm: &VmDef) -> String {
        domain_config(&self.host, vm)
    }

    /// Shell lines that write the domain's config and our hotplug script on the host.
    fn write_config(&self, vm: &VmDef) -> String {
        format!(
            "umask 022; mkdir -p {run}; printf '%s' {cfg} > {cfgp}; \
             printf '%s' {script} > {vif}.tmp && chmod 755 {vif}.tmp && mv {vif}.tmp {vif}; ",
            run = quote(&self.host.run_dir),
            cfg = quote(&self.config(vm)),
            cfgp = quote(&self.path(vm, "xl.cfg")),
            vif = quote(&self.vif_script()),
            script = quote(VIF_SCRIPT),
        )
    }

    async fn sh(&self, vm: &VmDef, script: &str, timeout: Duration) -> Result<String, DriverError> {
        super::exec_checked(&*self.conn, script, timeout, |e| self.err(vm, e)).await
    }

    /// A short command that may be repeated (a query, or one whose effect is the same done
    /// twice), in the shell kept open on the host: no new session inside a break. A command
    /// killed by a signal is run again, twice at most: a crash at start changed nothing.
    async fn quick(&self, vm: &VmDef, script: &str) -> Result<String, DriverError> {
        let mut tries = 0;
        loop {
            let out = match self.conn.run_script(script, Duration::from_secs(30)).await {
                Ok(o) => o,
                // The kept shell itself died: the next call starts a new one.
                Err(crate::inventory::ssh::SshError::Session { .. }) if tries < 2 => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(self.err(vm, e.to_string())),
            };
            match out.status {
                Some(0) => return Ok(out.stdout),
                Some(s) if s > 128 && tries < 2 => {
                    tracing::warn!(host = %self.host.name, vm = %vm.name, "a command died of signal {}; again", s - 128);
                    tries += 1;
                }
                s => return Err(self.err(vm, last_words(&out.stderr, s))),
            }
        }
    }

    /// What this host offers (hypervisor and tools versions, paging modes).
    pub async fn caps(&self) -> Result<Caps, DriverError> {
        self.caps
            .get_or_try_init(|| self.read_caps())
            .await
            .cloned()
    }

    async fn read_caps(&self) -> Result<Caps, DriverError> {
        let out = self
            .conn
            .run_script(
                "xl info 2>&1; t=$(readlink -f \"$(command -v xl)\" 2>/dev/null); \
                 for d in /usr/lib/xen-*/bin/xl; do [ -x \"$d\" ] && t=$d; done; \
                 v=$(echo \"$t\" | sed -n 's,.*/xen-\\([0-9]*\\.[0-9]*\\)/.*,\\1,p'); echo \"nm_tools : $v\"",
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| DriverError::Host {
                host: self.host.name.clone(),
                reason: e.to_string(),
            })?;
        Caps::parse(&out.stdout).map_err(|reason| DriverError::Host {
            host: self.host.name.clone(),
            reason,
        })
    }

    /// The domains that are this VM's (its own name, or xl's names while it moves).
    async fn domains(&self, vm: &VmDef) -> Result<Vec<(String, String)>, DriverError> {
        let out = self
            .quick(
                vm,
                &format!(
                    "xl list | awk -v n={} 'NR>1 && ($1==n || $1==n\"--incoming\" || $1==n\"--migratedaway\") {{print $1, $(NF-1)}}'",
                    quote(&vm.name)
                ),
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect())
    }

    /// Waits until no `xl` process of `what` for this VM runs on the host (a save being
    /// stopped ends by itself once its output is gone, resuming the guest).
    async fn wait_xl_gone(&self, vm: &VmDef, what: &str) -> Result<(), DriverError> {
        self.sh(
            vm,
            &format!(
                "i=0; while pgrep -f {pat} >/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                 ! pgrep -f {pat} >/dev/null || {{ echo 'xl {what} did not end' >&2; exit 1; }}",
                pat = quote(&format!("xl .*{what} .*{}( |$)", vm.name)),
            ),
            Duration::from_secs(40),
        )
        .await
        .map(drop)
    }
}

/// Where the hotplug script lives on a host.
fn vif_script_path(host: &HostConfig) -> String {
    format!("{}/vif-netmigrate", host.run_dir)
}

/// The definition of domain `d` (one element of `xl list -l`), running on `host` but made by
/// someone else (`xl create` from their own config file), or why it cannot be driven: its
/// kernel, ramdisk and command line, memory, vCPUs, type, its one vif (its name as Xen gave
/// it) and its disks (`shared`: paths on shared storage, which stay; read-only ones stay too).
pub fn adopted_def(host: &str, d: &serde_json::Value, shared: &[String]) -> Result<VmDef, String> {
    let domid = d["domid"].as_u64().unwrap_or(0);
    let cfg = &d["config"];
    let name = cfg["c_info"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let guest_type = match cfg["c_info"]["type"].as_str() {
        Some("pv") => GuestType::Pv,
        Some("pvh") => GuestType::Pvh,
        Some("hvm") => GuestType::Hvm,
        other => return Err(format!("its type {other:?} is none of pv, pvh, hvm")),
    };
    let b = &cfg["b_info"];
    let pv = &b["type.pv"];
    let text = |k: &str| {
        b[k].as_str()
            .or(pv[k].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    for (k, what) in [
        ("pcidevs", "a PCI passthrough device"),
        ("usbdevs", "a USB device of this host"),
    ] {
        if cfg[k].as_array().is_some_and(|a| !a.is_empty()) {
            return Err(format!("it has {what}: its hardware is on this host only"));
        }
    }
    let nics = cfg["nics"].as_array().cloned().unwrap_or_default();
    let [nic] = &nics[..] else {
        return Err(format!(
            "it needs one vif to be moved (it has {})",
            nics.len()
        ));
    };
    let mac = nic["mac"]
        .as_str()
        .ok_or("its vif has no MAC")?
        .to_ascii_lowercase();
    let port = match nic["ifname"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("vif{domid}.{}", nic["devid"].as_u64().unwrap_or(0)),
    };
    let mut disks = Vec::new();
    for disk in cfg["disks"].as_array().into_iter().flatten() {
        let Some(path) = disk["pdev_path"].as_str().filter(|p| !p.is_empty()) else {
            continue; // an empty CD-ROM drive
        };
        let stays =
            shared.iter().any(|s| s == path) || disk["readwrite"] == 0 || disk["is_cdrom"] == 1;
        let format = match disk["format"].as_str() {
            Some("raw") | None => super::DiskFormat::Raw,
            Some("qcow2") => super::DiskFormat::Qcow2,
            Some(_) if stays => super::DiskFormat::Raw,
            Some(f) => {
                return Err(format!(
                    "its disk {path} is {f}: only raw and qcow2 disks move"
                ))
            }
        };
        if !stays && path.starts_with("/dev/") {
            return Err(format!(
                "its disk {path} is a device, which a move cannot copy: mark it --shared if \
                 every host has it"
            ));
        }
        disks.push(super::Disk {
            path: path.to_string(),
            format,
            bus: super::DiskBus::Virtio,
            shared: stays,
        });
    }
    Ok(VmDef {
        name,
        mem_mib: (b["max_memkb"].as_u64().unwrap_or(0) / 1024) as u32,
        vcpus: b["max_vcpus"].as_u64().unwrap_or(1) as u32,
        mac,
        ip: None,
        vlan: None,
        rate_kbps: None,
        kernel: text("kernel"),
        initrd: text("ramdisk"),
        append: text("cmdline"),
        disks,
        guest_type: Some(guest_type),
        adopted: Some(super::Adopted {
            port,
            qemu_args: Vec::new(),
            host: host.to_string(),
        }),
    })
}

/// The domain's xl config, the same on every host (paths are the hosts' own).
pub fn domain_config(host: &HostConfig, vm: &VmDef) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let t = vm.guest_type.unwrap_or(GuestType::Pvh);
    let mut c = format!(
        "name = {}\ntype = \"{}\"\nmemory = {}\nmaxmem = {}\nvcpus = {}\n",
        q(&vm.name),
        t.as_str(),
        vm.mem_mib,
        vm.mem_mib,
        vm.vcpus
    );
    if let Some(k) = &vm.kernel {
        c += &format!("kernel = {}\n", q(k));
    }
    if let Some(i) = &vm.initrd {
        c += &format!("ramdisk = {}\n", q(i));
    }
    if let Some(a) = &vm.append {
        c += &format!("extra = {}\n", q(a));
    }
    if !vm.disks.is_empty() {
        let disks: Vec<String> = vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // xvda, xvdb, ...; qdisk (QEMU in dom0) serves qcow2.
                let vdev = format!("xvd{}", (b'a' + i as u8) as char);
                q(&format!(
                    "format={},vdev={vdev},access=rw,target={}",
                    d.format.as_str(),
                    d.path
                ))
            })
            .collect();
        c += &format!("disk = [ {} ]\n", disks.join(", "));
        // No kernel: boot from the first disk (a PV guest through pygrub, HVM from its BIOS;
        // a PVH guest needs a kernel, and xl says so).
        if vm.kernel.is_none() {
            match t {
                GuestType::Pv => c += "bootloader = \"pygrub\"\n",
                GuestType::Hvm => c += "boot = \"c\"\n",
                GuestType::Pvh => {}
            }
        }
    }
    c += &format!(
        "vif = [ {} ]\n",
        q(&format!(
            "mac={},vifname={},script={}",
            vm.mac,
            vm.port_on(&host.name),
            vif_script_path(host)
        ))
    );
    // Saved and restored on hosts with the same CPU: keep the guest's TSC as it was.
    c += "tsc_mode = \"native\"\non_crash = \"destroy\"\n";
    c
}

/// Whether a command's failure (as `last_words` puts it) was a death: no exit status, or a
/// signal's.
fn died(reason: &str) -> bool {
    let Some(code) = reason
        .rsplit_once("(exit ")
        .and_then(|(_, c)| c.strip_suffix(')'))
    else {
        return false;
    };
    code == "?" || code.parse::<u32>().is_ok_and(|c| c > 128)
}

#[async_trait]
impl Hypervisor for Xen {
    fn host(&self) -> &str {
        &self.host.name
    }

    fn nic_made_by_load(&self) -> bool {
        true
    }

    async fn live_refusal(&self, vm: &VmDef, target: &dyn Hypervisor) -> Option<String> {
        let _ = target;
        match self.caps().await {
            Ok(c) => c.live_refusal(vm.guest_type.unwrap_or(GuestType::Pvh)),
            Err(e) => Some(format!("its capabilities could not be read: {e}")),
        }
    }

    async fn check(&self) -> Result<(), DriverError> {
        let c = self.caps().await?;
        match c.version_refusal() {
            Some(reason) => Err(DriverError::Host {
                host: self.host.name.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    async fn state(&self, vm: &VmDef) -> Result<RunState, DriverError> {
        let doms = self.domains(vm).await?;
        let Some((name, flags)) = doms.first() else {
            return Ok(RunState::Absent);
        };
        Ok(if name.ends_with("--incoming") {
            RunState::Incoming
        } else if name.ends_with("--migratedaway") {
            RunState::Migrated
        } else if flags.contains('s') || flags.contains('c') || flags.contains('d') {
            // Shut down (or suspended and not resumed), crashed or dying.
            RunState::Other
        } else if flags.contains('p') {
            RunState::Paused
        } else {
            RunState::Running
        })
    }

    async fn start(&self, vm: &VmDef) -> Result<(), DriverError> {
        let script = format!(
            "{}if xl domid {n} >/dev/null 2>&1; then echo 'a domain of this name already runs here' >&2; exit 3; fi; \
             out=$(xl create {cfg} </dev/null 2>&1 >/dev/null); \
             xl domid {n} >/dev/null 2>&1 || {{ echo \"xl create: $(printf '%s\\n' \"$out\" | tail -n 4 | tr '\\n' ' ')\" >&2; exit 4; }}",
            self.write_config(vm),
            n = quote(&vm.name),
            cfg = quote(&self.path(vm, "xl.cfg")),
        );
        let mut tries = 0;
        loop {
            let e = match self.sh(vm, &script, Duration::from_secs(120)).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // Only a crash (no exit status, or a signal's) is tried again, and only from a
            // clean slate: whatever the dead xl left of the domain goes first.
            let crashed = matches!(&e, DriverError::Vm { reason, .. } if died(reason));
            if !crashed || tries >= 2 {
                return Err(e);
            }
            tries += 1;
            tracing::warn!(host = %self.host.name, vm = %vm.name, "xl create died ({e}); again");
            self.destroy(vm).await?;
        }
    }

    async fn prepare_incoming(&self, vm: &VmDef) -> Result<(), DriverError> {
        // Nothing waits on Xen: the domain is made by the load. The config and script are
        // written now, off the critical path.
        self.quick(vm, &self.write_config(vm)).await.map(drop)
    }

    async fn pause(&self, vm: &VmDef) -> Result<(), DriverError> {
        // A PV or PVH guest suspends itself when the save asks it to, so it must run until
        // then: the save stops it (the break starts there), not a pause before.
        let _ = vm;
        Ok(())
    }

    async fn resume(&self, vm: &VmDef) -> Result<(), DriverError> {
        // Unpausing a running domain is harmless; a domain left suspended by a broken save is
        // not running and says so.
        self.quick(vm, &format!("xl unpause {}", quote(&vm.name)))
            .await
            .map(drop)
    }

    async fn save_to(&self, vm: &VmDef, sink: &str, timeout: Duration) -> Result<(), DriverError> {
        // The guest suspends itself when asked: it must run when the save starts (unpaused in
        // case something paused it). `-p` leaves it paused here, not destroyed, so a failed move can resume
        // it. The sink's PID is kept for abort_outgoing, which ends it and all it started (a
        // sink may be a pipeline): a save whose output is gone fails and resumes the guest by
        // itself, which killing xl would not.
        let script = format!(
            "set -o pipefail; xl unpause {n} 2>/dev/null; \
             xl save -p {n} /proc/self/fd/1 2>{log} | zstd -1 -q -T0 | sh -c {run_sink}; \
             rc=$?; rm -f {pid}; [ $rc = 0 ] || {{ grep -v '^Saving to' {log} | tail -n 3 >&2; exit $rc; }}",
            n = quote(&vm.name),
            log = quote(&self.path(vm, "save.log")),
            pid = quote(&self.path(vm, "sink.pid")),
            run_sink = quote(&format!(
                "echo $$ > {}; {sink}",
                quote(&self.path(vm, "sink.pid"))
            )),
        );
        match self.sh(vm, &script, timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(&e, DriverError::Vm { reason, .. } if reason.contains("timed out")) {
                    let _ = self.abort_outgoing(vm).await;
                }
                Err(e)
            }
        }
    }

    async fn restore_from(
        &self,
        vm: &VmDef,
        source: &str,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        // Streamed: xl reads its stream in order, so it restores while the bytes still arrive.
        // `-p`: paused, for the engine to put its port on the switch before it runs.
        let script = format!(
            "set -o pipefail; {src} | zstd -d -q | xl restore -p {cfg} /proc/self/fd/0 2>{log} >/dev/null; \
             rc=$?; [ $rc = 0 ] || {{ tail -n 3 {log} >&2; xl destroy {n}--incoming 2>/dev/null; xl destroy {n} 2>/dev/null; exit $rc; }}",
            src = source,
            cfg = quote(&self.path(vm, "xl.cfg")),
            log = quote(&self.path(vm, "restore.log")),
            n = quote(&vm.name),
        );
        let t = Instant::now();
        let r = self.sh(vm, &script, timeout).await;
        match r {
            Ok(_) => Ok(()),
            Err(_) if t.elapsed() >= timeout => Err(DriverError::Timeout {
                host: self.host.name.clone(),
                vm: vm.name.clone(),
                what: "restoring the VM's state".into(),
                after: timeout,
            }),
            Err(DriverError::Vm { reason, .. }) => {
                Err(self.err(vm, format!("xl refused the incoming state: {reason}")))
            }
            Err(e) => Err(e),
        }
    }

    async fn listen_incoming(&self, vm: &VmDef, _port: u16) -> Result<(), DriverError> {
        // xl migrate starts its receiver itself, over SSH from the source's dom0; only the
        // hotplug script must be here by then.
        self.prepare_incoming(vm).await
    }

    async fn live_migrate(
        &self,
        vm: &VmDef,
        target: std::net::IpAddr,
        _port: u16,
        _downtime: Duration,
        timeout: Duration,
    ) -> Result<LiveResult, DriverError> {
        // The domain runs on the target as soon as it is in: its port waited on the switch,
        // and the hotplug script held the domain until vswitchd took the vif (a `-p` here and
        // the port made after cost the guest seconds of SSH round trips on a busy dom0).
        // `-C`: the config written from the definition (its vif script path is the same on
        // every host). xl's transport is SSH between the dom0s, compressed: the stream is
        // mostly zero pages.
        let t = Instant::now();
        let script = format!(
            "{}set -o pipefail; xl migrate -C {cfg} -s 'ssh -C -o BatchMode=yes' {n} {target} </dev/null >{log} 2>&1; \
             rc=$?; [ $rc = 0 ] || {{ grep -v '^ *$' {log} | tail -n 4 >&2; exit $rc; }}",
            self.write_config(vm),
            cfg = quote(&self.path(vm, "xl.cfg")),
            n = quote(&vm.name),
            log = quote(&self.path(vm, "migrate.log")),
        );
        match self.sh(vm, &script, timeout).await {
            Ok(_) => Ok(LiveResult {
                downtime_ms: None,
                total_ms: Some(t.elapsed().as_millis() as u64),
                bytes: None,
            }),
            Err(e) => {
                let timed_out = t.elapsed() >= timeout;
                if timed_out {
                    let _ = self.abort_outgoing(vm).await;
                }
                let reason = match e {
                    DriverError::Vm { reason, .. } => reason,
                    other => other.to_string(),
                };
                // xl resumes the guest at the sender when the stream breaks: say whether it did.
                match self.state(vm).await {
                    Ok(RunState::Running) if timed_out => Err(DriverError::Timeout {
                        host: self.host.name.clone(),
                        vm: vm.name.clone(),
                        what: "live migration".into(),
                        after: timeout,
                    }),
                    Ok(RunState::Running) => Err(DriverError::LiveFailed {
                        host: self.host.name.clone(),
                        vm: vm.name.clone(),
                        reason: format!("xl migrate failed and resumed the guest here: {reason}"),
                    }),
                    Ok(s) => Err(self.err(
                        vm,
                        format!("xl migrate failed ({reason}); the guest here is {s:?}"),
                    )),
                    Err(e2) => Err(self.err(vm, format!("xl migrate failed ({reason}); {e2}"))),
                }
            }
        }
    }

    async fn abort_outgoing(&self, vm: &VmDef) -> Result<(), DriverError> {
        // A save: end its sink, and xl save fails and resumes the guest (paused, as it was). A
        // migration: xl migrate resumes the guest at the sender when its transport dies.
        self.sh(
            vm,
            &format!(
                "tree() {{ for c in $(pgrep -P \"$1\"); do tree \"$c\"; done; kill \"$1\" 2>/dev/null; }}; \
                 p=$(cat {pid} 2>/dev/null); [ -n \"$p\" ] && tree \"$p\"; \
                 pkill -f {mig} 2>/dev/null; true",
                pid = quote(&self.path(vm, "sink.pid")),
                mig = quote("ssh .*xl .*migrate-receive"),
            ),
            Duration::from_secs(20),
        )
        .await?;
        self.wait_xl_gone(vm, "(save|migrate)").await
    }

    async fn announce(&self, vm: &VmDef) -> Result<(), DriverError> {
        // netfront announces the guest itself on resume; this says it again from its port, as
        // if from the guest, for switches that missed it.
        let Some(frame) = crate::network::announcement(&vm.mac, vm.ip) else {
            return Err(self.err(vm, format!("bad MAC {}", vm.mac)));
        };
        let frame: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let script = format!(
            "o=$(ovs-vsctl --timeout=5 get Interface {p} ofport) && [ \"$o\" -gt 0 ] && \
             for i in 1 2 3; do ovs-ofctl packet-out {br} \"in_port=$o packet={frame} actions=NORMAL\" || exit 1; sleep 0.05; done",
            p = quote(&vm.port_on(&self.host.name)),
            br = quote(&self.host.bridge),
        );
        self.quick(vm, &script).await.map(drop)
    }

    async fn destroy(&self, vm: &VmDef) -> Result<(), DriverError> {
        let script = format!(
            "for d in {n} {n}--incoming {n}--migratedaway; do xl destroy \"$d\" 2>/dev/null; done; \
             i=0; while xl domid {n} >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             ! xl domid {n} >/dev/null 2>&1 || {{ echo 'the domain would not go' >&2; exit 1; }}",
            n = quote(&vm.name),
        );
        self.quick(vm, &script).await.map(drop)
    }

    /// Raw disks are carried, though the guest stops only inside `xl save`: its sink takes the
    /// whole state first (once the save is over the disks hold still), then sends the disks
    /// ahead of it. A qcow2 is served by qdisk, a QEMU in dom0 that keeps the image's metadata
    /// in its memory, which nothing flushes at `xl save`: its file may not hold every write.
    fn cold_disks_refusal(&self, vm: &VmDef) -> Option<String> {
        vm.local_disks()
            .iter()
            .find(|d| d.format == super::DiskFormat::Qcow2)
            .map(|d| {
                format!(
                    "{} is qcow2, which Xen's qdisk may not have flushed to its file at `xl save`: \
                     only raw local disks move on Xen",
                    d.path
                )
            })
    }

    async fn send_disks(&self, vm: &VmDef) -> Result<String, DriverError> {
        Ok(super::disk::send_after_save_script(
            &vm.local_disks(),
            &self.host.run_dir,
            &self.path(vm, "state.part"),
        ))
    }

    fn host_disks(&self) -> super::disk::HostDisks<'_> {
        super::disk::HostDisks {
            link: &*self.conn,
            run_dir: &self.host.run_dir,
            host: &self.host.name,
        }
    }

    async fn adopt(&self, name: &str, shared: &[String]) -> Result<VmDef, DriverError> {
        let refuse = |reason: String| DriverError::Host {
            host: self.host.name.clone(),
            reason: format!("{name}: {reason}"),
        };
        let out = super::exec_checked(
            &*self.conn,
            &format!("xl list -l {}", quote(name)),
            Duration::from_secs(60),
            |e| refuse(format!("xl list -l: {e}")),
        )
        .await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| refuse(format!("xl list -l is not JSON: {e}")))?;
        let d = v
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| refuse(format!("no domain named {name} runs here")))?;
        let def = adopted_def(&self.host.name, d, shared).map_err(refuse)?;
        def.check().map_err(refuse)?;
        Ok(def)
    }

    async fn replace_nic(&self, vm: &VmDef, mac: &str) -> Result<(), DriverError> {
        // The vif goes and one with the new MAC comes, under the same name (the port stays).
        // The new one can take the name only once the old device is gone (the detach returns
        // before); if it cannot be attached, the old MAC comes back so the guest keeps a NIC.
        // `xl network-attach` takes each setting as its own argument: given as one, joined by
        // commas as in a domain config, all but the MAC were dropped (Xen's own vif-bridge on a
        // bridge that is not there).
        let new = VmDef {
            mac: mac.to_string(),
            ..vm.clone()
        };
        let script = format!(
            "{}cur=$(xl network-list {n} | awk 'NR>1 {{print $3}}'); \
             case \" $cur \" in *\" {mac} \"*) exit 0;; esac; \
             for m in $cur; do xl network-detach {n} \"$m\" || exit 1; done; \
             i=0; while ip link show {port} >/dev/null 2>&1; do \
               [ $i -ge 200 ] && {{ echo 'the old vif {port} did not go' >&2; exit 1; }}; \
               sleep 0.1; i=$((i+1)); done; \
             xl network-attach {n} mac={mac} vifname={port} script={vif} && exit 0; \
             for m in $cur; do xl network-attach {n} mac=$m vifname={port} script={vif} >&2; done; exit 1",
            self.write_config(&new),
            n = quote(&vm.name),
            mac = mac.to_ascii_lowercase(),
            port = vm.port_on(&self.host.name),
            vif = self.vif_script(),
        );
        self.sh(vm, &script, Duration::from_secs(60))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain made by `xl create` from an operator's own file, as `xl list -l` shows it:
    /// read into a definition whose vif keeps Xen's name here (and `nm-NAME` elsewhere);
    /// what cannot move is refused, saying why.
    #[test]
    fn an_xl_created_domain_is_read_from_xl_list() {
        let d: serde_json::Value = serde_json::from_str(
            r#"{"domid": 7, "config": {
                "c_info": {"type": "pvh", "name": "web"},
                "b_info": {"max_vcpus": 2, "max_memkb": 262144, "kernel": "/boot/k",
                           "ramdisk": "/boot/i", "cmdline": "console=hvc0"},
                "disks": [{"pdev_path": "/srv/web.img", "vdev": "xvda", "format": "raw", "readwrite": 1},
                          {"pdev_path": "/srv/iso.img", "vdev": "xvdb", "format": "raw", "readwrite": 0}],
                "nics": [{"devid": 0, "mac": "00:16:3E:00:00:07", "bridge": "br0"}]}}"#,
        )
        .unwrap();
        let def = adopted_def("xenA", &d, &[]).unwrap();
        assert_eq!((def.name.as_str(), def.mem_mib, def.vcpus), ("web", 256, 2));
        assert_eq!(def.guest_type, Some(GuestType::Pvh));
        assert_eq!(def.kernel.as_deref(), Some("/boot/k"));
        assert_eq!(def.append.as_deref(), Some("console=hvc0"));
        assert_eq!(def.mac, "00:16:3e:00:00:07");
        assert_eq!(def.port_on("xenA"), "vif7.0");
        assert_eq!(def.port_on("xenB"), "nm-web");
        assert_eq!(def.moved_to("xenB").port_on("xenA"), "nm-web");
        assert!(
            !def.disks[0].shared && def.disks[1].shared,
            "{:?}",
            def.disks
        );
        assert!(def.check().is_ok());
        let mut pci = d.clone();
        pci["config"]["pcidevs"] = serde_json::json!([{"bdf": "01:00.0"}]);
        assert!(adopted_def("xenA", &pci, &[]).unwrap_err().contains("PCI"));
        let mut dev = d.clone();
        dev["config"]["disks"][0]["pdev_path"] = "/dev/vg/web".into();
        assert!(adopted_def("xenA", &dev, &[])
            .unwrap_err()
            .contains("device"));
        assert!(adopted_def("xenA", &dev, &["/dev/vg/web".into()]).is_ok());
        let mut two = d.clone();
        two["config"]["nics"] =
            serde_json::json!([{"mac": "00:16:3e:00:00:01"}, {"mac": "00:16:3e:00:00:02"}]);
        assert!(adopted_def("xenA", &two, &[])
            .unwrap_err()
            .contains("one vif"));
    }

    #[test]
    fn a_death_is_told_from_a_refusal() {
        assert!(died("xl: segfault (exit 139)"));
        assert!(died("got a tsc mode string (exit ?)"));
        assert!(!died("a domain of this name already runs here (exit 3)"));
        assert!(!died("no exit here"));
    }

    #[test]
    fn caps_tell_what_can_live_migrate() {
        let info = "xen_major : 4\nxen_minor : 17\nvirt_caps : pv hvm hap\nnm_tools : 4.17\n";
        let c = Caps::parse(info).unwrap();
        assert_eq!(c.xen, "4.17");
        assert!(c.live_refusal(GuestType::Pv).unwrap().contains("shadow"));
        assert!(c.live_refusal(GuestType::Pvh).is_none());
        assert!(c.version_refusal().is_none());
        let c =
            Caps::parse("xen_major : 4\nxen_minor : 17\nvirt_caps : pv shadow\nnm_tools : 4.16\n")
                .unwrap();
        assert!(c.live_refusal(GuestType::Pv).is_none());
        assert!(c.version_refusal().unwrap().contains("4.16"));
        assert!(Caps::parse("ERROR: Can't find version 4.17 of xen utils").is_err());
    }

    #[test]
    fn config_names_the_port_and_the_script() {
        let vm = VmDef {
            name: "web".into(),
            mem_mib: 128,
            vcpus: 1,
            mac: "00:16:3e:00:00:01".into(),
            ip: None,
            vlan: None,
            rate_kbps: None,
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            append: Some("console=hvc0 a=\"b\"".into()),
            disks: vec![],
            guest_type: Some(GuestType::Pv),
            adopted: None,
        };
        let host = HostConfig {
            name: "h".into(),
            address: "10.0.0.2".parse().unwrap(),
            ssh_port: 22,
            ssh_user: "root".into(),
            ssh_key: "/k".into(),
            host_key: None,
            hypervisor: crate::config::HypervisorKind::Xen,
            bridge: "br0".into(),
            ovsdb: None,
            image_dir: "/var/lib/xen/images".into(),
            save_dir: "/var/lib/xen/save".into(),
            run_dir: "/run/netmigrate".into(),
            qemu_accel: "tcg".into(),
            connect_timeout: crate::inventory::CONNECT_TIMEOUT,
        };
        let c = domain_config(&host, &vm);
        assert!(c.contains("type = \"pv\""), "{c}");
        assert!(
            c.contains("vifname=nm-web,script=/run/netmigrate/vif-netmigrate"),
            "{c}"
        );
        assert!(c.contains("extra = \"console=hvc0 a=\\\"b\\\"\""), "{c}");
    }
}

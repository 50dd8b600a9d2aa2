//! Diskless machines that boot from the network: QEMU with its iPXE ROM (`-boot n`) in a
//! namespace on the lab switch, and the installer the appliance boots them into (built once
//! by provisioning/installer/build.sh from the lab's guest kernel, cached by content).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::guest::{kernel, kernel_version};
use crate::lab::{cache_dir, Lab, Node};
use crate::netns;

const BUILD: &str = include_str!("../../provisioning/installer/build.sh");
const HARDWARE: &str = include_str!("../../provisioning/installer/hardware.sh");
/// QEMU's iPXE ROM for the e1000, from Debian's ipxe-qemu (QEMU's own data directory lacks
/// the ROMs here, and Debian's virtio ROMs are built for the modern device ID only).
pub const ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";

/// The installer's directory (vmlinuz, initrd.img), built if the cache lacks it.
pub fn installer() -> Result<PathBuf> {
    let kver = kernel_version()?;
    let mut h = DefaultHasher::new();
    for f in ["/usr/sbin/sshd", "/bin/busybox"] {
        std::fs::metadata(f)
            .with_context(|| format!("{f} (make deps)"))?
            .len()
            .hash(&mut h);
    }
    (BUILD, HARDWARE, &kver).hash(&mut h);
    let out = cache_dir().join(format!("installer-{:016x}", h.finish()));
    // One build at a time: a test binary's tests run as threads, and two building into the
    // same directory took each other's files (a fresh machine, both tests missing the cache).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if out.join("initrd.img").exists() {
        return Ok(out);
    }
    let mods = cache_dir().join(format!("kernel/root/lib/modules/{kver}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provisioning/installer/build.sh");
    let st = Command::new("sh")
        .arg(&script)
        .arg(&out)
        .arg(kernel()?)
        .arg(&mods)
        .status()?;
    if !st.success() {
        bail!(
            "building the installer with {} failed ({st})",
            script.display()
        );
    }
    Ok(out)
}

/// A network-booting machine.
pub struct Machine {
    pub node: Node,
    pub mac: String,
    pub pid: u32,
    pub serial_log: PathBuf,
}

impl Machine {
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }
}

impl Lab {
    /// Boots a diskless machine with `mac` from the network: its namespace's `eth0` on the lab
    /// switch, bridged to QEMU's tap.
    pub fn pxe_machine(&self, role: &str, mac: &str, mem_mib: u32) -> Result<Machine> {
        self.pxe_machine_with_disk(role, mac, mem_mib, None)
    }

    /// [`Lab::pxe_machine`] with an empty local disk of `disk_gib` GiB (a virtio disk whose
    /// serial is `NM-ROLE`), as a bare machine has before it is deployed.
    pub fn pxe_machine_with_disk(
        &self,
        role: &str,
        mac: &str,
        mem_mib: u32,
        disk_gib: Option<u32>,
    ) -> Result<Machine> {
        let node = self.bare_node(role)?;
        netns::bridge(&node.ns, "br0")?;
        netns::ip(&node.ns, &["link", "set", "eth0", "master", "br0"])?;
        netns::ip(&node.ns, &["tuntap", "add", "tap0", "mode", "tap"])?;
        netns::ip(&node.ns, &["link", "set", "tap0", "master", "br0"])?;
        netns::ip(&node.ns, &["link", "set", "tap0", "up"])?;
        let dir = self.subdir(role)?;
        let serial_log = dir.join("serial.log");
        let mut cmd = netns::exec(&node.ns, "qemu-system-x86_64");
        cmd.args(["-name", role, "-accel", "tcg", "-m", &mem_mib.to_string()])
            .args(["-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-vga", "none", "-display", "none", "-boot", "n"])
            .args(["-serial", &format!("file:{}", serial_log.display())])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args([
                "-device",
                &format!("e1000,netdev=n0,mac={mac},romfile={ROM}"),
            ]);
        if let Some(gib) = disk_gib {
            let disk = dir.join("disk.qcow2");
            crate::sys::run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(format!("{gib}G")),
            )?;
            cmd.args([
                "-drive",
                &format!("file={},if=none,id=d0,format=qcow2", disk.display()),
                "-device",
                &format!("virtio-blk-pci,drive=d0,serial=NM-{role}"),
            ]);
        }
        let pid = self.track(role, &mut cmd)?;
        Ok(Machine {
            node,
            mac: mac.to_string(),
            pid,
            serial_log,
        })
    }
}

//! Diskless machines that boot from the network: QEMU with its iPXE ROM (`-boot order=nc`) in a
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
const DEPLOY: &str = include_str!("../../provisioning/installer/deploy.sh");
const CONFIG_AREA: &str = include_str!("../../provisioning/installer/config-area.sh");
const IMAGE_BUILD: &str = include_str!("../../provisioning/images/build.sh");
const IMAGE_RC: &str = include_str!("../../provisioning/images/rc.sh");
/// Xen's command line in the lab's host image: nested under TCG, dom0 crashes at once with
/// SMAP on (../shared/lab/xen/DISK-BOOT.md).
pub const LAB_XEN_ARGS: &str = "smap=0";
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
    (BUILD, HARDWARE, DEPLOY, CONFIG_AREA, &kver).hash(&mut h);
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

/// The host image of `profile` ("xen", "qemu") as `make host-image` builds it (Xen told
/// [`LAB_XEN_ARGS`]), built into the cache if it lacks it: the directory with host.img and
/// host.img.sha256. The unpacked roots are kept in the cache between builds.
pub fn host_image(profile: &str) -> Result<PathBuf> {
    let mut h = DefaultHasher::new();
    (IMAGE_BUILD, IMAGE_RC, CONFIG_AREA, LAB_XEN_ARGS, profile).hash(&mut h);
    let out = cache_dir().join(format!("host-image-{profile}-{:016x}", h.finish()));
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if out.join("host.img.sha256").exists() {
        return Ok(out);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provisioning/images/build.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg(profile)
        .arg(&out)
        .env("XEN_ARGS", LAB_XEN_ARGS)
        .env("WORK", cache_dir().join("host-image-work"))
        .status()?;
    if !st.success() {
        let _ = std::fs::remove_dir_all(&out);
        bail!(
            "building the {profile} host image with {} failed ({st})",
            script.display()
        );
    }
    // Older builds of this profile (other scripts) are not used any more.
    let prefix = format!("host-image-{profile}-");
    for e in std::fs::read_dir(cache_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) && e.path() != out {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(out)
}

/// The stage `hosts` shows for the machine with `mac` (its ENROLLING line), or "ready" once
/// it is listed as host `name` at `ip`.
pub fn stage_in(listing: &str, mac: &str, name: &str, ip: &str) -> Option<String> {
    listing
        .lines()
        .find(|l| l.contains(mac))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .or_else(|| {
            listing
                .lines()
                .any(|l| l.starts_with(name) && l.contains(ip))
                .then(|| "ready".to_string())
        })
}

/// ssh's options for a deployed host, whose host key is new to the lab: neither checked nor
/// kept.
pub const DEPLOYED_SSH: [&str; 6] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
];

/// Runs `cmd` as root on the deployed host at `ip` over SSH from namespace `from`, with `key`
/// (the appliance's, which the host lets in).
pub fn ssh_deployed(lab: &Lab, from: &str, key: &Path, ip: &str, cmd: &str) -> Result<String> {
    let at = format!("root@{ip}");
    let mut a = DEPLOYED_SSH.to_vec();
    a.extend(["-i", key.to_str().unwrap_or_default(), at.as_str(), cmd]);
    lab.exec(from, "ssh", &a)
}

/// Copies `src` to `to` on the deployed host at `ip` (its directory made first), as an
/// operator would.
pub fn scp_deployed(
    lab: &Lab,
    from: &str,
    key: &Path,
    ip: &str,
    src: &Path,
    to: &str,
) -> Result<()> {
    let dir = Path::new(to).parent().unwrap_or(Path::new("/"));
    ssh_deployed(lab, from, key, ip, &format!("mkdir -p {}", dir.display()))?;
    let at = format!("root@{ip}:{to}");
    let mut a = DEPLOYED_SSH.to_vec();
    a.extend([
        "-i",
        key.to_str().unwrap_or_default(),
        src.to_str().unwrap_or_default(),
        at.as_str(),
    ]);
    lab.exec(from, "scp", &a)?;
    Ok(())
}

/// A network-booting machine.
pub struct Machine {
    pub node: Node,
    pub mac: String,
    pub pid: u32,
    pub serial_log: PathBuf,
    /// Its QEMU's arguments, to start it again.
    args: Vec<String>,
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
        self.start_machine(role, mac, mem_mib, disk_gib, Firmware::Bios, &[])
    }

    /// A bare machine to deploy a host image to: [`Lab::pxe_machine_with_disk`] with the
    /// CPU the nested Xen hosts have (`-cpu max,-xsave`, see `xen::XenOpts`), booting from
    /// the network first and from its disk when iPXE sends it there.
    pub fn deploy_machine(
        &self,
        role: &str,
        mac: &str,
        mem_mib: u32,
        disk_gib: u32,
    ) -> Result<Machine> {
        self.start_machine(
            role,
            mac,
            mem_mib,
            Some(disk_gib),
            Firmware::Bios,
            &["-cpu", "max,-xsave"],
        )
    }

    /// A network-booting machine behind a real BMC: OpenIPMI's `ipmi_sim` (IPMI 2.0 over
    /// LAN at `bmc_ip`, UDP 623, user admin, password in the returned file) runs in the
    /// machine's namespace and starts its QEMU when powered on, as ../shared/lab/ipmi does it
    /// (QEMU's `ipmi-bmc-extern` connects back, so the BMC knows the power state). Off at
    /// first.
    pub fn bmc_machine(
        &self,
        role: &str,
        mac: &str,
        mem_mib: u32,
        bmc_ip: std::net::Ipv4Addr,
    ) -> Result<BmcMachine> {
        let (node, args, serial_log) =
            self.machine_parts(role, mac, mem_mib, None, Firmware::Bios)?;
        // The BMC's address: on the machine's bridge, so the lab network reaches it.
        netns::add_addr(&node.ns, "br0", bmc_ip, crate::lab::SUBNET_PREFIX)?;
        let dir = self.subdir(&format!("{role}-bmc"))?;
        let pidfile = dir.join("qemu.pid");
        let password_file = dir.join("password");
        std::fs::write(&password_file, "secret\n")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
        let startcmd = format!(
            "qemu-system-x86_64 {} -pidfile {} -chardev socket,id=ipmi0,host=127.0.0.1,port=9624,reconnect=10 \
             -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0",
            args.join(" "),
            pidfile.display()
        );
        let lan = format!(
            "name \"{role}\"\nset_working_mc 0x20\n  startlan 1\n    addr {bmc_ip} 623\n    priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n  serial 15 127.0.0.1 9624 codec VM\n\
             \x20 startcmd \"{startcmd}\"\n  startnow false\n\
             \x20 user 2 true  \"admin\"   \"secret\" admin 10 none md2 md5 straight\n"
        );
        let emu =
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
                   sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n";
        std::fs::write(dir.join("lan.conf"), lan)?;
        std::fs::write(dir.join("lab.emu"), emu)?;
        std::fs::create_dir_all(dir.join("state"))?;
        let mut cmd = netns::exec(&node.ns, "ipmi_sim");
        cmd.arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("lab.emu"))
            .arg("-n")
            .arg("-s")
            .arg(dir.join("state"));
        let bmc_pid = self.track(&format!("{role}-bmc"), &mut cmd)?;
        Ok(BmcMachine {
            node,
            mac: mac.to_string(),
            bmc_pid,
            bmc_ip,
            password_file,
            pidfile,
            serial_log,
        })
    }

    /// A diskless machine with UEFI firmware (Debian's OVMF, its own copy of the variables)
    /// booting from the network by the firmware's own stack (no iPXE ROM in its NIC): UEFI
    /// PXE, then UEFI HTTP boot, as ../shared/lab/uefi does it.
    pub fn uefi_machine(&self, role: &str, mac: &str, mem_mib: u32) -> Result<Machine> {
        self.start_machine(role, mac, mem_mib, None, Firmware::Uefi, &[])
    }

    fn start_machine(
        &self,
        role: &str,
        mac: &str,
        mem_mib: u32,
        disk_gib: Option<u32>,
        firmware: Firmware,
        extra: &[&str],
    ) -> Result<Machine> {
        let (node, args, serial_log) =
            self.machine_parts(role, mac, mem_mib, disk_gib, firmware)?;
        let mut args = args;
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = netns::exec(&node.ns, "qemu-system-x86_64");
        cmd.args(&args);
        let pid = self.track(role, &mut cmd)?;
        Ok(Machine {
            node,
            mac: mac.to_string(),
            pid,
            serial_log,
            args,
        })
    }

    /// Powers machine `m` off and on again booting from `boot` (QEMU's `-boot`: "order=c" for
    /// its disk, as an operator sets a BMC's boot device), its disk and serial log kept.
    pub fn restart_machine(&self, m: &Machine, boot: &str) -> Result<Machine> {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(m.pid.to_string())
            .status();
        let gone = crate::sys::wait_for(
            "the machine's QEMU to exit",
            std::time::Duration::from_secs(10),
            || {
                let stat =
                    std::fs::read_to_string(format!("/proc/{}/stat", m.pid)).unwrap_or_default();
                (stat.is_empty() || stat.contains(") Z ")).then_some(())
            },
        );
        gone?;
        let mut args = m.args.clone();
        if let Some(i) = args.iter().position(|a| a == "-boot") {
            args[i + 1] = boot.to_string();
        }
        let mut cmd = netns::exec(&m.node.ns, "qemu-system-x86_64");
        cmd.args(&args);
        let pid = self.track(&format!("{}-again", m.node.role), &mut cmd)?;
        Ok(Machine {
            node: m.node.clone(),
            mac: m.mac.clone(),
            pid,
            serial_log: m.serial_log.clone(),
            args,
        })
    }

    /// A network-booting machine's namespace (its `eth0` on the lab switch, bridged to a tap)
    /// and its QEMU command line's arguments; with `disk_gib`, an empty virtio disk.
    fn machine_parts(
        &self,
        role: &str,
        mac: &str,
        mem_mib: u32,
        disk_gib: Option<u32>,
        firmware: Firmware,
    ) -> Result<(Node, Vec<String>, PathBuf)> {
        let node = self.bare_node(role)?;
        netns::bridge(&node.ns, "br0")?;
        netns::ip(&node.ns, &["link", "set", "eth0", "master", "br0"])?;
        netns::ip(&node.ns, &["tuntap", "add", "tap0", "mode", "tap"])?;
        netns::ip(&node.ns, &["link", "set", "tap0", "master", "br0"])?;
        netns::ip(&node.ns, &["link", "set", "tap0", "up"])?;
        let dir = self.subdir(role)?;
        let serial_log = dir.join("serial.log");
        let mut args: Vec<String> = [
            "-name",
            role,
            "-accel",
            "tcg",
            "-m",
            &mem_mib.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-vga",
            "none",
            "-display",
            "none",
            "-boot",
            // The network first; the disk when iPXE exits (a deployed machine).
            "order=nc",
            "-serial",
            &format!("file:{}", serial_log.display()),
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match firmware {
            Firmware::Bios => args.extend([
                "-device".into(),
                format!("e1000,netdev=n0,mac={mac},romfile={ROM}"),
            ]),
            Firmware::Uefi => {
                let vars = dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars)
                    .with_context(|| format!("{OVMF_VARS} (make deps)"))?;
                args.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                    "-device".into(),
                    // No ROM: the firmware's own network stack boots.
                    format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
                ]);
            }
        }
        if let Some(gib) = disk_gib {
            let disk = dir.join("disk.qcow2");
            crate::sys::run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(format!("{gib}G")),
            )?;
            args.extend([
                "-drive".to_string(),
                format!("file={},if=none,id=d0,format=qcow2", disk.display()),
                "-device".into(),
                format!("virtio-blk-pci,drive=d0,serial=NM-{role}"),
            ]);
        }
        Ok((node, args, serial_log))
    }
}

/// Debian's OVMF (package ovmf): UEFI for the lab's machines.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's iPXE for x86-64 UEFI (package ipxe), served to UEFI HTTP boot.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// SeaBIOS with iPXE's ROM in the e1000.
    Bios,
    /// OVMF, with the firmware's own network boot.
    Uefi,
}

/// A machine behind its BMC: the BMC starts and stops its QEMU.
pub struct BmcMachine {
    pub node: Node,
    pub mac: String,
    /// ipmi_sim's.
    pub bmc_pid: u32,
    pub bmc_ip: std::net::Ipv4Addr,
    /// The BMC password's file (user admin).
    pub password_file: PathBuf,
    /// Where the machine's QEMU writes its PID while powered on.
    pub pidfile: PathBuf,
    pub serial_log: PathBuf,
}

impl BmcMachine {
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// The machine's QEMU while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    }
}

impl Drop for BmcMachine {
    /// The QEMU the BMC started is ours too: stopped with it, whatever the test did.
    fn drop(&mut self) {
        if let Some(pid) = self.qemu_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

//! QEMU guests (TCG) on a host's Open vSwitch bridge: Debian's kernel and a busybox initramfs
//! that brings up eth0 and serves HTTP. See shared/lab/qemu/RECIPE.md for the measured recipe.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host::{Host, BRIDGE};
use crate::lab::{cache_dir, Lab, SUBNET_PREFIX};
use crate::netns;
use crate::sys::{run, wait_for};

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub mem_mib: u32,
    /// VLAN tag of its OVS port.
    pub vlan: Option<u16>,
    /// A raw (sparse) disk image of this size, attached as a virtio drive.
    pub disk_mib: Option<u32>,
    /// Start waiting for a migration stream (QEMU's `-incoming`) instead of booting.
    pub incoming: Option<String>,
    /// Boot from this qcow2 (block node `disk0`, as the appliance names it) instead of the
    /// lab's kernel and initramfs: a disk `boot_disk` made.
    pub boot_disk: Option<PathBuf>,
}

impl GuestSpec {
    /// Guest `n` (1, 2, ...): name vmN, address 10.213.0.(20 + n), MAC 52:54:00:d5:00:(20 + n).
    pub fn numbered(n: u8) -> GuestSpec {
        GuestSpec {
            name: format!("vm{n}"),
            ip: Ipv4Addr::new(10, 213, 0, 20 + n),
            mac: format!("52:54:00:d5:00:{:02x}", 20 + n),
            mem_mib: 128,
            vlan: None,
            disk_mib: None,
            incoming: None,
            boot_disk: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guest {
    pub spec: GuestSpec,
    pub host: String,
    pub pid: u32,
    pub tap: String,
    pub qmp: PathBuf,
    pub serial_log: PathBuf,
}

impl Guest {
    pub fn url(&self) -> String {
        format!("http://{}/", self.spec.ip)
    }
}

/// The guest kernel unpacked by `make deps`.
pub fn kernel() -> Result<PathBuf> {
    let k = cache_dir().join("kernel/vmlinuz");
    if !k.exists() {
        bail!("guest kernel {} is missing; run `make deps`", k.display());
    }
    Ok(k)
}

pub(crate) fn kernel_version() -> Result<String> {
    Ok(std::fs::read_to_string(cache_dir().join("kernel/version"))
        .context("guest kernel version file; run `make deps`")?
        .trim()
        .to_string())
}

/// The guest's /init: modules, address from the kernel command line, HTTP on :80.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net e1000 virtio_blk crc16 mbcache jbd2 crc32c_generic ext4; do
  insmod /lib/modules/$m.ko 2>/dev/null; done
NM_IP=; NM_GW=; NM_NAME=guest; NM_DISK=
for w in $(cat /proc/cmdline); do case "$w" in
  nm_ip=*) NM_IP=${w#nm_ip=};; nm_gw=*) NM_GW=${w#nm_gw=};; nm_name=*) NM_NAME=${w#nm_name=};;
  nm_disk=*) NM_DISK=${w#nm_disk=};; esac; done
hostname $NM_NAME
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
ip link set eth0 up
if [ "$NM_IP" = dhcp ]; then
  dhcp() { touch /tmp/nic.$(cat /sys/class/net/$1/address)
    udhcpc -i $1 -b -t 20 -T 1 -p /tmp/udhcpc.$1.pid -s /usr/share/udhcpc/default.script -x hostname:$NM_NAME; }
  dhcp eth0
  # A NIC plugged in later (a move that gave the VM a new MAC) gets its address the same way.
  ( while :; do for d in /sys/class/net/eth*; do n=${d##*/}; [ -e /tmp/nic.$(cat $d/address) ] && continue
      [ -f /tmp/udhcpc.$n.pid ] && kill $(cat /tmp/udhcpc.$n.pid) 2>/dev/null
      ip link set $n up; echo "NM: new nic $n $(cat $d/address)" > /dev/console; dhcp $n; done
    usleep 200000; done ) &
else ip addr add $NM_IP dev eth0; fi
[ -n "$NM_GW" ] && ip route add default via $NM_GW
echo "hello from $NM_NAME $(cat /sys/class/net/eth0/address)" > /www/index.html
# A disk to write to (nm_disk=DEV, an ext4 file system): a sequence number appended to
# /data/seq, each fsynced before it is reported at /seq; /cgi-bin/stop ends the writer and
# unmounts the file system (then /stopped says "clean").
if [ -n "$NM_DISK" ]; then
  i=0; while [ ! -b "$NM_DISK" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
  mkdir -p /data
  if mount -t ext4 "$NM_DISK" /data; then
    ( n=$(tail -n 1 /data/seq 2>/dev/null); n=${n:-0}
      while [ ! -e /tmp/stop ]; do n=$((n+1)); echo $n >> /data/seq
        sync /data/seq && echo $n > /www/seq.part && mv /www/seq.part /www/seq; usleep 20000; done
      umount /data && echo clean > /www/stopped ) &
  else echo "NM: cannot mount $NM_DISK" > /dev/console; fi
fi
httpd -p 80 -h /www
echo "NM: READY uptime=$(cut -d' ' -f1 /proc/uptime) ip=$(ip -4 -o addr show eth0 | awk '{print $4}') mac=$(cat /sys/class/net/eth0/address)" > /dev/console
exec setsid cttyhack sh
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev $interface; ip link set $interface up;;
  bound|renew) ip addr flush dev $interface; ip addr add $ip/${mask:-24} dev $interface
     [ -n "$router" ] && ip route replace default via ${router%% *}
     arping -U -c 2 -s $ip -I $interface $ip >/dev/null 2>&1 &
     echo "NM: dhcp $1 $ip" > /dev/console;;
esac
"#;

/// The disk writer's stop, as a CGI of busybox's httpd.
const STOP_CGI: &str =
    "#!/bin/sh\ntouch /tmp/stop\nprintf 'Content-Type: text/plain\\r\\n\\r\\nstopping\\n'\n";

pub(crate) const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/net/ethernet/intel/e1000/e1000.ko",
    "drivers/block/virtio_blk.ko",
    "lib/crc16.ko",
    "fs/mbcache.ko",
    "fs/jbd2/jbd2.ko",
    "crypto/crc32c_generic.ko",
    "fs/ext4/ext4.ko",
];

/// Builds (once, cached by content) the busybox initramfs for the cached kernel.
pub fn initramfs() -> Result<PathBuf> {
    let kver = kernel_version()?;
    let busybox = std::fs::metadata("/bin/busybox").context("/bin/busybox (busybox-static)")?;
    let mut h = DefaultHasher::new();
    (INIT, UDHCPC_SCRIPT, STOP_CGI, MODULES, &kver, busybox.len()).hash(&mut h);
    let out = cache_dir().join(format!("initramfs-{:016x}.cpio.gz", h.finish()));
    if out.exists() {
        return Ok(out);
    }
    let tmp = tempfile::tempdir_in(cache_dir())?;
    let root = tmp.path().join("root");
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "www/cgi-bin",
        "lib/modules",
        "tmp",
        "etc",
        "usr/share/udhcpc",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    busybox_into(&root)?;
    modules_into(&root, &kver, MODULES)?;
    write_exec(&root.join("init"), INIT)?;
    write_exec(&root.join("usr/share/udhcpc/default.script"), UDHCPC_SCRIPT)?;
    write_exec(&root.join("www/cgi-bin/stop"), STOP_CGI)?;
    pack(&root, &out)?;
    Ok(out)
}

/// The file system partition of a disk guest's image (its second, after the boot image).
pub const DATA_PARTITION: &str = "/dev/vda2";

/// A disk that boots a guest by itself, as real VMs' disks do: a GRUB hybrid image (BIOS boots
/// it from a plain disk) holding the lab's kernel and initramfs, booted with `cmdline`, and an
/// ext4 partition of `data_mib` MiB after it, holding `fill_mib` MiB of random data (`/fill`),
/// written to `out` as a sparse qcow2 of `virtual_mib` MiB. No loop device, no mount:
/// grub-mkrescue and mkfs.ext4 on files.
pub fn boot_disk(
    out: &Path,
    cmdline: &str,
    data_mib: u32,
    fill_mib: u32,
    virtual_mib: u32,
) -> Result<()> {
    let tmp = tempfile::tempdir_in(cache_dir())?;
    let iso = tmp.path().join("iso");
    std::fs::create_dir_all(iso.join("boot/grub"))?;
    std::fs::copy(kernel()?, iso.join("boot/vmlinuz"))?;
    std::fs::copy(initramfs()?, iso.join("boot/initrd.img"))?;
    std::fs::write(
        iso.join("boot/grub/grub.cfg"),
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             set timeout=0\nmenuentry guest {{\n  linux /boot/vmlinuz console=ttyS0 quiet {cmdline}\n  \
             initrd /boot/initrd.img\n}}\n"
        ),
    )?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    if fill_mib > 0 {
        run(Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none"])
            .arg(format!("count={fill_mib}"))
            .arg(format!("of={}", data.join("fill").display())))?;
    }
    let fs = tmp.path().join("fs.img");
    std::fs::File::create(&fs)?.set_len(u64::from(data_mib) << 20)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "nmdata", "-d"])
        .arg(&data)
        .arg(&fs))?;
    let img = tmp.path().join("disk.img");
    // BIOS only: with grub-efi-amd64-bin installed too (the host images boot by UEFI as well)
    // grub-mkrescue would write a GPT with its EFI partition, and the data partition would
    // no longer be vda2.
    run(Command::new("grub-mkrescue")
        .args(["-d", "/usr/lib/grub/i386-pc", "-o"])
        .arg(&img)
        .arg(&iso)
        .args(["--", "-append_partition", "2", "0x83"])
        .arg(&fs))
    .context("grub-mkrescue (grub-pc-bin, xorriso, mtools; `make deps`)")?;
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&img)
        .arg(out))
    .context("qemu-img (qemu-utils; `make deps`)")?;
    run(Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(out)
        .arg(format!("{virtual_mib}M")))?;
    Ok(())
}

/// The ext4 file system of a disk guest's image at `disk` (a qcow2), as a raw file at `out`:
/// its second MBR partition, for e2fsck and debugfs.
pub fn data_partition(disk: &Path, out: &Path) -> Result<()> {
    let raw = out.with_extension("raw");
    run(Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(disk)
        .arg(&raw))?;
    let mbr = {
        use std::io::Read;
        let mut b = [0u8; 512];
        std::fs::File::open(&raw)?.read_exact(&mut b)?;
        b
    };
    let entry = &mbr[446 + 16..446 + 32];
    let start = u64::from(u32::from_le_bytes(entry[8..12].try_into()?));
    let sectors = u64::from(u32::from_le_bytes(entry[12..16].try_into()?));
    if start == 0 || sectors == 0 {
        bail!("{}: no second partition", disk.display());
    }
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=512", "status=none", "conv=sparse"])
        .arg(format!("skip={start}"))
        .arg(format!("count={sectors}")))?;
    std::fs::remove_file(&raw)?;
    Ok(())
}

/// The cached kernel's `modules` (paths under its `kernel/` tree) in `root`/lib/modules.
pub(crate) fn modules_into(root: &Path, kver: &str, modules: &[&str]) -> Result<()> {
    let kmods = cache_dir().join(format!("kernel/root/lib/modules/{kver}/kernel"));
    for m in modules {
        let src = kmods.join(m);
        let name = Path::new(m).file_name().expect("module file name");
        std::fs::copy(&src, root.join("lib/modules").join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// busybox in `root`/bin, with a link for each of its applets.
pub(crate) fn busybox_into(root: &Path) -> Result<()> {
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("/bin/busybox")?;
    let applets = run(Command::new("/bin/busybox").arg("--list"))?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
    }
    Ok(())
}

/// `root` as a gzipped newc cpio at `out`, written aside and renamed in.
pub(crate) fn pack(root: &Path, out: &Path) -> Result<()> {
    // A part of its own: test threads that build the same image into an empty cache at once
    // each rename a whole one (a shared part was written by two and renamed under the other).
    static PACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = out.with_extension(format!("{}.{n}.part", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            part.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs {} failed ({status})", out.display());
    }
    std::fs::rename(&part, out)?;
    Ok(())
}

pub(crate) fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Lab {
    /// Boots a guest on `host`: a persistent tap on the host's OVS bridge, QEMU holding it.
    /// Returns once QEMU runs; `wait_http` waits for the guest's service.
    pub fn guest(&self, host: &Host, spec: GuestSpec) -> Result<Guest> {
        let kernel = kernel()?;
        let initrd = initramfs()?;
        let tap = format!("t-{}", spec.name);
        if tap.len() > 15 {
            bail!("guest name {} is too long for a tap name", spec.name);
        }
        netns::ip(&host.ns, &["tuntap", "add", &tap, "mode", "tap"])?;
        netns::ip(&host.ns, &["link", "set", &tap, "up"])?;
        let dir = self.subdir(&format!("h{}/guests", host.name))?;
        let qmp = dir.join(format!("{}.qmp", spec.name));
        let serial_log = dir.join(format!("{}.serial.log", spec.name));
        let mut cmd = netns::exec(&host.ns, "qemu-system-x86_64");
        cmd.args([
            "-name",
            &spec.name,
            "-accel",
            "tcg",
            "-m",
            &spec.mem_mib.to_string(),
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-vga",
            "none",
            "-display",
            "none",
        ]);
        match &spec.boot_disk {
            Some(disk) => {
                let node = serde_json::json!({"node-name": "disk0", "driver": "qcow2",
                    "file": {"driver": "file", "filename": disk}});
                cmd.args(["-blockdev", &node.to_string()])
                    .args(["-device", "virtio-blk-pci,drive=disk0,id=vd0,bootindex=1"]);
            }
            None => {
                cmd.arg("-kernel")
                    .arg(&kernel)
                    .arg("-initrd")
                    .arg(&initrd)
                    .args([
                        "-append",
                        &format!(
                            "console=ttyS0 quiet nm_ip={}/{SUBNET_PREFIX} nm_name={}",
                            spec.ip, spec.name
                        ),
                    ]);
            }
        }
        cmd.args(["-serial", &format!("file:{}", serial_log.display())])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
            ]);
        if let Some(mib) = spec.disk_mib {
            let img = dir.join(format!("{}.img", spec.name));
            std::fs::File::create(&img)?.set_len(u64::from(mib) << 20)?;
            cmd.args([
                "-drive",
                &format!("file={},if=virtio,format=raw", img.display()),
            ]);
        }
        if let Some(uri) = &spec.incoming {
            cmd.args(["-incoming", uri]);
        }
        let pid = self.track(&format!("h{}-{}", host.name, spec.name), &mut cmd)?;
        // The tap carries frames only once QEMU holds it; add it to OVS after that.
        wait_for(
            "QEMU to open its QMP socket",
            Duration::from_secs(20),
            || (qmp.exists() || self.has_exited(pid)).then_some(()),
        )?;
        if self.has_exited(pid) {
            bail!(
                "QEMU for {} exited at start; see {}",
                spec.name,
                self.dir
                    .join(format!("h{}-{}.log", host.name, spec.name))
                    .display()
            );
        }
        host.ovs.add_port(BRIDGE, &tap, spec.vlan)?;
        Ok(Guest {
            spec,
            host: host.name.clone(),
            pid,
            tap,
            qmp,
            serial_log,
        })
    }

    /// Waits until the guest answers HTTP from `ns` (a client's view).
    pub fn wait_http(&self, ns: &str, guest: &Guest, timeout: Duration) -> Result<String> {
        let url = guest.url();
        wait_for(
            &format!(
                "{} to answer HTTP at {url} (serial log {})",
                guest.spec.name,
                guest.serial_log.display()
            ),
            timeout,
            || {
                if self.has_exited(guest.pid) {
                    return Some(Err(anyhow::anyhow!("QEMU of {} exited", guest.spec.name)));
                }
                self.exec(ns, "curl", &["-sS", "--fail", "--max-time", "1", &url])
                    .ok()
                    .map(Ok)
            },
        )?
    }
}

//! `make appliance-image`: the gateway VM. Debian's kernel (the lab's) and an initramfs that
//! holds busybox, iproute2's `ip`, the netmigrate binary (with the libraries it links) and an
//! init that starts `netmigrate serve` as the VM's one service.
//!
//! Configuration comes from a config disk, the VM's first virtio disk: a tar archive of what
//! goes into /etc/netmigrate (netmigrate.toml, the SSH key, secrets), made with
//! `tar -cf config.tar -C DIR .` and attached raw (no filesystem needed). The kernel command line
//! gives the addresses to bring up before the service starts:
//! `netmigrate.addr=eth0:10.0.0.1/24` (repeatable) and `netmigrate.gw=ADDRESS`; or, for a tiny
//! config, `netmigrate.config=BASE64` instead of a disk. The state lives in RAM
//! (/var/lib/netmigrate): leases and images do not outlive the VM.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const INIT: &str = r#"#!/bin/busybox sh
export PATH=/usr/sbin:/usr/local/bin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp /run /var/lib/netmigrate /etc/netmigrate
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net e1000 virtio_blk; do
  insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
for w in $(cat /proc/cmdline); do case "$w" in
  netmigrate.addr=*) a=${w#netmigrate.addr=}; ip link set ${a%%:*} up; ip addr add ${a#*:} dev ${a%%:*};;
  netmigrate.gw=*) ip route add default via ${w#netmigrate.gw=};;
  netmigrate.config=*) echo "${w#netmigrate.config=}" | base64 -d > /etc/netmigrate/netmigrate.toml;;
esac; done
# The config disk: a tar archive of /etc/netmigrate.
i=0; while [ ! -b /dev/vda ] && [ $i -lt 20 ] && grep -q virtio_blk /proc/modules; do usleep 100000; i=$((i+1)); done
[ -b /dev/vda ] && tar -xf /dev/vda -C /etc/netmigrate 2>/dev/console
echo "NM: appliance $(netmigrate --version) uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
netmigrate check-config /etc/netmigrate/netmigrate.toml > /dev/console 2>&1
# The one service, restarted if it stops.
( while :; do
    RUST_LOG=${RUST_LOG:-info,libunftp=warn} netmigrate serve --config /etc/netmigrate/netmigrate.toml > /dev/console 2>&1
    echo "NM: netmigrate exited ($?), restarting" > /dev/console; sleep 2
  done ) &
exec setsid cttyhack sh
"#;

/// The guests' modules (virtio, e1000) and the config disk's.
const MORE_MODULES: &[&str] = &["drivers/block/virtio_blk.ko"];

/// The shared libraries `bin` loads, as `ldd` lists them (absolute paths).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Copies `src` to the same absolute path under `root`.
fn put(root: &Path, src: &Path) -> Result<()> {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    std::fs::create_dir_all(dst.parent().expect("a parent"))?;
    std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// Builds the image into `out` (`vmlinuz`, `appliance.cpio.gz`) from `netmigrate` (the binary
/// to ship); returns the two paths. Rebuilt only when an input changed.
pub fn build(out: &Path, netmigrate: &Path) -> Result<(PathBuf, PathBuf)> {
    let kernel = crate::guest::kernel()?;
    let kver = crate::guest::kernel_version()?;
    std::fs::create_dir_all(out)?;
    let bin =
        std::fs::read(netmigrate).with_context(|| format!("reading {}", netmigrate.display()))?;
    let mut h = DefaultHasher::new();
    (INIT, crate::guest::MODULES, MORE_MODULES, &kver, &bin).hash(&mut h);
    let stamp = out.join(".inputs");
    let image = out.join("appliance.cpio.gz");
    let vmlinuz = out.join("vmlinuz");
    let key = format!("{:016x}", h.finish());
    if image.exists()
        && vmlinuz.exists()
        && std::fs::read_to_string(&stamp).ok() == Some(key.clone())
    {
        return Ok((vmlinuz, image));
    }
    let tmp = tempfile::tempdir_in(out)?;
    let root = tmp.path().join("root");
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "lib/modules",
        "tmp",
        "etc",
        "usr/local/bin",
        "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    crate::guest::busybox_into(&root)?;
    // netmigrate, and iproute2's ip (it replaces neighbour entries with `ip neigh replace`).
    std::fs::copy(netmigrate, root.join("usr/local/bin/netmigrate"))?;
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("iproute2's ip")?;
    std::fs::copy(ip, root.join("usr/sbin/ip"))?;
    for lib in libraries(netmigrate)?.into_iter().chain(libraries(ip)?) {
        put(&root, &lib)?;
    }
    crate::guest::modules_into(&root, &kver, crate::guest::MODULES)?;
    crate::guest::modules_into(&root, &kver, MORE_MODULES)?;
    crate::guest::write_exec(&root.join("init"), INIT)?;
    crate::guest::pack(&root, &image)?;
    std::fs::copy(&kernel, &vmlinuz)?;
    std::fs::write(&stamp, key)?;
    Ok((vmlinuz, image))
}

/// A config disk: `dir` as a tar archive at `tar`.
pub fn config_disk(dir: &Path, tar: &Path) -> Result<()> {
    let status = Command::new("tar")
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()?;
    if !status.success() {
        bail!("tar of {} failed", dir.display());
    }
    Ok(())
}

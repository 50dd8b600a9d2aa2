//! Nested Xen hosts: Xen 4.17 with a Debian dom0 (xl, sshd, Open vSwitch), each in QEMU (TCG)
//! in its own namespace, its NIC on the lab switch. Built once by tests/xen/build.sh into the
//! cache (keyed by the package versions and the script); see ../shared/lab/xen for the recipe
//! this follows and what nested Xen does to you.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, SUBNET_PREFIX};
use crate::netns;
use crate::sys::wait_for;

/// Where guests' kernel and initramfs live in every dom0.
pub const GUEST_KERNEL: &str = "/usr/share/nm/vmlinuz";
pub const GUEST_INITRD: &str = "/usr/share/nm/domu-initrd.img";

/// The built artifacts: hypervisor, kernel, dom0 and guest images, keys.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
}

impl Artifacts {
    pub fn ctl_key(&self) -> PathBuf {
        self.dir.join("keys/ctl_ed25519")
    }

    /// The host key every lab dom0 shows ("ssh-ed25519 AAAA...").
    pub fn host_key(&self) -> Result<String> {
        let t = std::fs::read_to_string(self.dir.join("keys/host_ed25519.pub"))?;
        Ok(t.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }
}

/// Builds the Xen lab's artifacts, or finds them in the cache.
pub fn artifacts() -> Result<Artifacts> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("xen/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("NETMIGRATE_LAB_CACHE", crate::lab::cache_dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(PathBuf::from)
        .context("the Xen build printed no directory")?;
    Ok(Artifacts { dir })
}

/// The lab's hypervisor rebuilt with shadow paging, built once into the artifacts' directory.
pub fn shadow_hypervisor(art: &Artifacts) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("xen/build-shadow.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&art.dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(PathBuf::from)
        .context("the shadow build printed no path")
}

/// Address of Xen host N (A = 21, B = 22, ...): apart from the QEMU hosts' 11, 12, ...
pub fn xen_host_ip(name: &str) -> Ipv4Addr {
    let n = name.bytes().next().unwrap_or(b'A').saturating_sub(b'A');
    Ipv4Addr::new(10, 213, 0, 21 + n)
}

/// Options for a Xen host's machine.
#[derive(Debug, Clone)]
pub struct XenOpts {
    /// The QEMU machine's memory, MiB (dom0 takes 1 GiB of it).
    pub mem_mib: u32,
    /// QEMU's NIC model: the lab's recipe found e1000 corrupts less than virtio-net.
    pub nic: String,
    /// QEMU's CPU model. Without XSAVE: with it (QEMU 7.2's TCG offers AVX2 under `-cpu max`),
    /// dom0's data got corrupted while netback carried guest traffic (the lab recipe: live
    /// migrations under a prober failing each time, copies arriving with another SHA-256, xl
    /// and sshd dying in ld.so; here `xl migrate` under a prober failed and left the host unable
    /// to boot the next guest). With `-xsave` the same migration succeeded 3 times of 3: Xen
    /// saves the FPU with FXSAVE and glibc takes its SSE2 routines.
    pub cpu: String,
    /// Boot the hypervisor rebuilt with shadow paging (`xen/build-shadow.sh`, cached beside
    /// the lab's build) instead of Debian's, which has none: PV guests can live-migrate there.
    pub shadow: bool,
}

impl Default for XenOpts {
    fn default() -> Self {
        XenOpts {
            mem_mib: 2048,
            nic: std::env::var("NETMIGRATE_XEN_NIC").unwrap_or_else(|_| "e1000".into()),
            cpu: std::env::var("NETMIGRATE_XEN_CPU").unwrap_or_else(|_| "max,-xsave".into()),
            shadow: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct XenHost {
    /// "A", "B", ...
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub pid: u32,
    pub serial_log: PathBuf,
    pub art: Artifacts,
}

impl XenHost {
    /// Its name in the appliance's config, e.g. "xenA".
    pub fn config_name(&self) -> String {
        format!("xen{}", self.name)
    }

    /// The `[[host]]` section for it, its key pinned; SSH given 30 s to connect, as nested
    /// TCG dom0s with busy guests can take more than the default 8 s to log in.
    pub fn config(&self) -> Result<String> {
        Ok(format!(
            "\n[[host]]\n\
             name = \"{}\"\n\
             address = \"{}\"\n\
             ssh_key = \"{}\"\n\
             host_key = \"{}\"\n\
             hypervisor = \"xen\"\n\
             bridge = \"br0\"\n\
             connect_timeout = \"30s\"\n",
            self.config_name(),
            self.ip,
            self.art.ctl_key().display(),
            self.art.host_key()?,
        ))
    }
}

/// Defines Xen guest `name` in the appliance: `kind` pv, pvh or hvm, 128 MiB, booting the
/// dom0s' guest kernel and initramfs with address `ip` on the lab network, MAC
/// 00:16:3e:d5:00:<last octet of ip>, and `extra` arguments for `vm define`.
pub fn define_guest(
    app: &crate::Appliance,
    name: &str,
    ip: Ipv4Addr,
    vcpus: u32,
    kind: &str,
    extra: &[&str],
) -> Result<()> {
    define_guest_booting(app, name, ip, vcpus, kind, "", extra)
}

/// The lab's disk guest on Xen: PVH, 128 MiB, its raw local disk `disk` (an ext4 file system
/// on the whole device, made beforehand on the host it starts on) as `/dev/xvda`, where it
/// appends fsynced sequence numbers and reports the last at `/seq` (the guest initramfs's
/// `nm_disk` writer).
pub fn define_disk_guest(
    app: &crate::Appliance,
    name: &str,
    ip: Ipv4Addr,
    disk: &str,
) -> Result<()> {
    define_guest_booting(
        app,
        name,
        ip,
        1,
        "pvh",
        " nm_disk=/dev/xvda",
        &["--disk", &format!("{disk},format=raw")],
    )
}

/// [`define_guest`], with `append` added to the guest kernel's command line.
fn define_guest_booting(
    app: &crate::Appliance,
    name: &str,
    ip: Ipv4Addr,
    vcpus: u32,
    kind: &str,
    append: &str,
    extra: &[&str],
) -> Result<()> {
    let mut args = vec![
        "vm".to_string(),
        "define".into(),
        name.into(),
        "--mem".into(),
        "128".into(),
        "--vcpus".into(),
        vcpus.to_string(),
        "--mac".into(),
        format!("00:16:3e:d5:00:{:02x}", ip.octets()[3]),
        "--ip".into(),
        ip.to_string(),
        "--kernel".into(),
        GUEST_KERNEL.into(),
        "--initrd".into(),
        GUEST_INITRD.into(),
        "--append".into(),
        format!("console=hvc0 quiet nm_ip={ip}/{SUBNET_PREFIX} nm_name={name}{append}"),
        "--type".into(),
        kind.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    app.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

impl Lab {
    /// Boots Xen hosts `names` in parallel ("A", "B"...) and waits until each dom0 is ready.
    pub fn xen_hosts(&self, names: &[&str], opts: &XenOpts) -> Result<Vec<XenHost>> {
        let art = artifacts()?;
        let hypervisor = if opts.shadow {
            shadow_hypervisor(&art)?
        } else {
            art.dir.join("xen.elf")
        };
        let hosts = names
            .iter()
            .map(|n| self.boot_xen(n, &art, &hypervisor, opts))
            .collect::<Result<Vec<_>>>()?;
        for h in &hosts {
            // 20-65 s on the lab's two cores; more when they are busy.
            wait_for(
                &format!(
                    "Xen host {} to come up (serial log {})",
                    h.name,
                    h.serial_log.display()
                ),
                Duration::from_secs(420),
                || {
                    if self.has_exited(h.pid) {
                        return Some(Err(anyhow::anyhow!("QEMU of Xen host {} exited", h.name)));
                    }
                    let log = std::fs::read_to_string(&h.serial_log).unwrap_or_default();
                    log.contains("NM-DOM0: READY").then_some(Ok(()))
                },
            )??;
        }
        Ok(hosts)
    }

    fn boot_xen(
        &self,
        name: &str,
        art: &Artifacts,
        hypervisor: &Path,
        opts: &XenOpts,
    ) -> Result<XenHost> {
        let role = format!("x{name}");
        let ns = self.ns_name(&role);
        let ip = xen_host_ip(name);
        self.add_ns(&ns)?;
        netns::bridge(&ns, "br0")?;
        self.plug(&role, &ns, "up0")?;
        netns::ip(&ns, &["tuntap", "add", "tap0", "mode", "tap"])?;
        for dev in ["tap0", "up0"] {
            netns::ip(&ns, &["link", "set", dev, "master", "br0"])?;
            netns::ip(&ns, &["link", "set", dev, "up"])?;
        }
        let dir = self.subdir(&role)?;
        let serial_log = dir.join("serial.log");
        let o = ip.octets();
        let mac = format!("52:54:00:d5:01:{:02x}", o[3]);
        let dom0 = format!(
            "{} console=hvc0 earlyprintk=xen nm_ip={ip}/{SUBNET_PREFIX} nm_name=xen{name} nm_gw={}",
            art.dir.join("vmlinuz").display(),
            crate::lab::APPLIANCE_IP
        );
        let mut cmd = netns::exec(&ns, "qemu-system-x86_64");
        cmd.args(["-name", &format!("xen-{name}"), "-accel", "tcg", "-cpu", &opts.cpu])
            .args(["-m", &opts.mem_mib.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-vga", "none", "-display", "none"])
            .arg("-kernel")
            .arg(hypervisor)
            .args([
                "-append",
                "dom0_mem=1024M,max:1024M console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all smap=0 noreboot",
            ])
            .arg("-initrd")
            // QEMU's multiboot modules are comma-separated: the paths must have no commas.
            .arg(format!("{dom0},{}", art.dir.join("dom0-initrd.img").display()))
            .args(["-serial", &format!("file:{}", serial_log.display())])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", &format!("{},netdev=n0,mac={mac}", opts.nic)]);
        let pid = self.track(&format!("x{name}"), &mut cmd)?;
        Ok(XenHost {
            name: name.into(),
            ns,
            ip,
            pid,
            serial_log,
            art: art.clone(),
        })
    }

    /// Runs `cmd` on a Xen host's dom0 over SSH from namespace `from` (with the lab's key).
    pub fn xen_ssh(&self, from: &str, h: &XenHost, cmd: &str) -> Result<String> {
        let known = self.dir.join("xen_known_hosts");
        if !known.exists() {
            std::fs::write(&known, format!("10.213.0.* {}\n", h.art.host_key()?))?;
        }
        let key = h.art.ctl_key();
        let out = crate::sys::run(netns::exec(from, "ssh").args([
            "-i",
            &key.display().to_string(),
            "-o",
            &format!("UserKnownHostsFile={}", known.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{}", h.ip),
            cmd,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

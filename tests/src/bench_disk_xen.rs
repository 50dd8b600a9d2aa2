//! `make bench-disk-xen`: bench-disk's guest on nested Xen. A 128 MiB PVH guest on a 1 GiB raw
//! local disk holding 256 MiB of random data (it cannot compress) moves cold between two Xen
//! hosts through the appliance (Xen cannot mirror a local disk, so this is its only way), next
//! to the same guest moved the way an operator would by hand in the same run: `xl save`, the
//! saved state and the disk through `tar --sparse | zstd -1 | ssh` into the target's dom0,
//! `xl restore` there. Each way there and back, each the median; the break from the client's
//! prober, the bytes from the source's link.

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_disk::{appliance_move, median_of, tx_bytes, Figures};
use crate::lab::{Node, SUBNET_PREFIX};
use crate::paper_xen::{PROBE_EVERY, PROBE_TIMEOUT};
use crate::sys::wait_for;
use crate::xen::{XenHost, XenOpts, GUEST_INITRD, GUEST_KERNEL};
use crate::{Lab, Prober};

const VM: &str = "dbench";
const IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 57);
/// On the dom0s' tmpfs for saved domains: their root file system (the initramfs) has no room
/// for 256 MiB of data.
const DISK: &str = "/var/lib/xen/save/nm-disks/dbench.img";
const FILL_MIB: u32 = 256;
const VIRTUAL_MIB: u32 = 1024;
/// Guests boot in tens of seconds under nested TCG.
const BOOT: Duration = Duration::from_secs(300);

pub fn run_all(runs: usize) -> Result<String> {
    let lab = Lab::new()?;
    let hosts = lab.xen_hosts(&["A", "B"], &XenOpts::default())?;
    let (a, b) = (&hosts[0], &hosts[1]);
    let client = lab.client()?;
    // As bench-disk: a source's copy goes once the VM runs on its target, as the hand-driven
    // move's does, so that each dom0 (its disks in RAM) holds one.
    // The disk's room is counted in each host's image directory: the file system the disk
    // is on here (its directory is made below, after the appliance first looks).
    let config = crate::paper_xen::config(&lab, &hosts)?
        .replacen(
            "[migration]\n",
            "[migration]\nsource_disks = \"remove\"\n",
            1,
        )
        .replace(
            "bridge = \"br0\"\n",
            "bridge = \"br0\"\nimage_dir = \"/var/lib/xen/save\"\n",
        );
    let app = lab.appliance_with(&config)?;
    let ns = app.node.ns.clone();
    let ssh = |h: &XenHost, cmd: &str| lab.xen_ssh(&ns, h, cmd);
    ssh(
        a,
        &format!(
            "set -e; df -m / /var/lib/xen/save >&2; free -m >&2; mkdir -p {dir}; \
             truncate -s {VIRTUAL_MIB}M {DISK}; mkfs.ext4 -q -F {DISK}; \
             dd if=/dev/urandom of={dir}/fill bs=1M count={FILL_MIB} status=none; \
             debugfs -w -R 'write {dir}/fill fill' {DISK} >/dev/null 2>&1; rm {dir}/fill",
            dir = disk_dir()
        ),
    )
    .context("the benchmark's disk on xenA")?;
    let data_bytes: u64 = ssh(a, &format!("du -k {DISK}"))?
        .split_whitespace()
        .next()
        .and_then(|k| k.parse::<u64>().ok())
        .context("du of the disk")?
        * 1024;
    crate::xen::define_disk_guest(&app, VM, IP, DISK)?;

    let sent = |h: &XenHost| {
        let ns = h.ns.clone();
        let lab = &lab;
        move || tx_bytes(lab, &ns)
    };
    let probe = (PROBE_EVERY, PROBE_TIMEOUT);
    let mut ours = Vec::new();
    let mut hands = Vec::new();
    for i in 0..runs {
        app.cli_ok(&["vm", "start", VM, "--on", "xenA"])?;
        writes(&lab, &client)?;
        for (from, to) in [(a, b), (b, a)] {
            let f = appliance_move(
                &app,
                &client,
                (VM, IP),
                &to.config_name(),
                "--cold",
                probe,
                &sent(from),
            )
            .with_context(|| format!("netmigrate {} -> {}", from.name, to.name))?;
            eprintln!(
                "run {}: netmigrate xen{} -> xen{}: {f:?}",
                i + 1,
                from.name,
                to.name
            );
            ours.push(f);
        }
        app.cli_ok(&["vm", "stop", VM])?;
        // The same guest, its disk and MAC, made by hand with xl create on xenA.
        ssh(
            a,
            &format!(
                "printf '%s' '{}' > /root/hand.cfg && xl create /root/hand.cfg >/dev/null",
                hand_config()
            ),
        )?;
        writes(&lab, &client)?;
        for (from, to) in [(a, b), (b, a)] {
            let f = hand_move(&lab, &ns, &client, from, to)
                .with_context(|| format!("by hand {} -> {}", from.name, to.name))?;
            eprintln!(
                "run {}: by hand xen{} -> xen{}: {f:?}",
                i + 1,
                from.name,
                to.name
            );
            hands.push(f);
        }
        ssh(a, "xl destroy hand")?;
    }

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let row = |v: &[Figures]| {
        (
            median_of(v, |f| f.total_ms),
            median_of(v, |f| f.break_ms),
            median_of(v, |f| f.wire_bytes),
        )
    };
    let ((nt, nb, nw), (ht, hb, hw)) = (row(&ours), row(&hands));
    let mut t = format!(
        "bench-disk-xen: 128 MiB PVH guest, {VIRTUAL_MIB} MiB raw disk with {:.0} MiB allocated \
         (random data), cold, nested Xen, median of {} moves\n",
        mib(data_bytes),
        ours.len()
    );
    t += "                                          total ms   break ms   MiB sent\n";
    t += &format!(
        "netmigrate (disk + state via the store)   {nt:>8}   {nb:>8}   {:>8.1}\n",
        mib(nw)
    );
    t += &format!(
        "by hand (xl save, tar -S | zstd | ssh)    {ht:>8}   {hb:>8}   {:>8.1}\n",
        mib(hw)
    );
    t += &format!(
        "netmigrate vs by hand: total {:.2}x, break {:.2}x, bytes {:.2}x; bytes sent vs the disk's \
         allocated bytes: {:.2}x (the state comes on top)\n",
        nt as f64 / ht.max(1) as f64,
        nb as f64 / hb.max(1) as f64,
        nw as f64 / hw.max(1) as f64,
        nw as f64 / data_bytes.max(1) as f64,
    );
    Ok(t)
}

/// The hand-driven guest's xl config: the benchmark VM's kernel line, MAC, and disk, on br0
/// through Xen's own Open vSwitch hotplug script.
fn hand_config() -> String {
    format!(
        "name = \"hand\"\ntype = \"pvh\"\nmemory = 128\nvcpus = 1\nkernel = \"{GUEST_KERNEL}\"\n\
         ramdisk = \"{GUEST_INITRD}\"\n\
         extra = \"console=hvc0 quiet nm_ip={IP}/{SUBNET_PREFIX} nm_name=hand nm_disk=/dev/xvda\"\n\
         vif = [ \"mac=00:16:3e:d5:00:{:02x},bridge=br0,script=vif-openvswitch\" ]\n\
         disk = [ \"{DISK},raw,xvda,rw\" ]\ntsc_mode = \"native\"\n",
        IP.octets()[3]
    )
}

fn disk_dir() -> &'static str {
    DISK.rsplit_once('/').map_or("/", |d| d.0)
}

/// Waits until the guest at `IP` answers and writes to its disk.
fn writes(lab: &Lab, client: &Node) -> Result<()> {
    wait_for("the disk guest to write", BOOT, || {
        lab.disk_seq(&client.ns, IP, Duration::from_secs(3))
            .filter(|n| *n >= 3)
    })
    .map(drop)
}

/// One hand-driven move of domain `hand` from `from` to `to`, typed on `from`'s dom0: its
/// state and disk in one sparse tar through zstd and ssh, restored on `to`, the source's
/// copies removed. Timed from `xl save` to the end of `xl restore`.
fn hand_move(lab: &Lab, ns: &str, client: &Node, from: &XenHost, to: &XenHost) -> Result<Figures> {
    let p = Prober::start(
        &client.ns,
        SocketAddr::new(IP.into(), 80),
        PROBE_EVERY,
        PROBE_TIMEOUT,
    )?;
    std::thread::sleep(PROBE_EVERY * 3);
    let before = tx_bytes(lab, &from.ns)?;
    let state = "/var/lib/xen/save/hand.chk";
    let script = format!(
        "set -e -o pipefail; xl save hand {state} >/dev/null 2>&1; \
         tar -cSf - {state} {DISK} 2>/dev/null | zstd -1 -q | \
         ssh -o BatchMode=yes {to} 'set -e -o pipefail; zstd -d -q | tar -xSf - -C /; \
             xl restore {state} >/dev/null 2>&1; rm -f {state}'; \
         rm -f {state} {DISK}",
        to = to.ip
    );
    let t = Instant::now();
    let r = lab.xen_ssh(ns, from, &script);
    let total_ms = t.elapsed().as_millis() as u64;
    let wire_bytes = tx_bytes(lab, &from.ns)? - before;
    let answered = writes(lab, client);
    std::thread::sleep(PROBE_EVERY * 3);
    let report = p.finish();
    if let Err(e) = r.and(answered) {
        bail!("the hand-driven move failed: {e:#}");
    }
    Ok(Figures {
        total_ms,
        span_ms: total_ms,
        break_ms: report.break_time.as_millis() as u64,
        wire_bytes,
        ..Figures::default()
    })
}

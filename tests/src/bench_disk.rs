//! `make bench-disk`: a 128 MiB guest booted from a 1 GiB local qcow2 holding 256 MiB of data
//! (writing to it every 20 ms, and the same guest idle), moved live by the appliance (disk
//! mirror over NBD, then the memory), next to the same move
//! driven by hand over QMP (`blockdev-mirror` onto the target's NBD export, then `migrate`, as
//! ../shared/lab/qemu/DISK-MIRROR.md does it) and to the appliance's live move of a guest
//! without a disk, between the same hosts in the same run; then each moved back cold (the disk
//! in the same image as the state, through the store). Reported: total time, the break the
//! client sees, and the bytes the source sent on its link against the data in use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guest::{boot_disk, GuestSpec, DATA_PARTITION};
use crate::hand::Qmp;
use crate::host::{host_ip, BRIDGE};
use crate::sshd::LOCAL_DISKS;
use crate::sys::{run, wait_for};
use crate::{Host, Lab, Node, Prober};

/// The data the benchmark's disk holds beside its boot image, MiB.
const FILL_MIB: u32 = 256;
const VIRTUAL_MIB: u32 = 1024;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Figures {
    /// Netmigrate: from the migration's start to the VM running on its target with its disk
    /// whole (the `target runs` step done); by hand: from the target's copy being made to the
    /// export's stop.
    pub(crate) total_ms: u64,
    /// Netmigrate: the migration's whole span, the source cleared and the hooks run too.
    pub(crate) span_ms: u64,
    pub(crate) break_ms: u64,
    pub(crate) wire_bytes: u64,
    /// A live move's memory as the hypervisor counted it (pages sent again included).
    pub(crate) ram_bytes: u64,
}

pub fn run_all(runs: usize) -> Result<String> {
    let lab = Lab::new()?;
    let a = lab.host("A")?;
    let c = lab.host("C")?;
    let client = lab.client()?;
    let config = crate::appliance::lab_config(&lab, &lab.appliance_state_dir()?, &[&a, &c])?
        + "\n[migration]\nsource_disks = \"remove\"\n";
    let app = lab.appliance_with(&config)?;
    // The disk guest (writing and fsyncing every 20 ms), the same guest idle (no writer: the
    // break it adds to the RAM-only move's is the disk's, not its workload's), and the guest
    // without a disk, all on hostA.
    let disk_vm = "vm5";
    let disk_ip = Ipv4Addr::new(10, 213, 0, 25);
    let idle_vm = "vm6";
    let idle_ip = Ipv4Addr::new(10, 213, 0, 26);
    for (vm, ip, mac, writes) in [
        (disk_vm, disk_ip, "52:54:00:d5:00:19", true),
        (idle_vm, idle_ip, "52:54:00:d5:00:1a", false),
    ] {
        let image = format!("{vm}.qcow2");
        let writer = if writes {
            format!(" nm_disk={DATA_PARTITION}")
        } else {
            String::new()
        };
        boot_disk(
            &a.dir.join("disks").join(&image),
            &format!("nm_ip={ip}/24 nm_name={vm}{writer}"),
            FILL_MIB + 64,
            FILL_MIB,
            VIRTUAL_MIB,
        )?;
        app.cli_ok(&[
            "vm",
            "define",
            vm,
            "--mem",
            "128",
            "--mac",
            mac,
            "--ip",
            &ip.to_string(),
            "--disk",
            &format!("{LOCAL_DISKS}/{image},format=qcow2"),
        ])?;
    }
    let (ram_vm, ram_ip) = app.define_guest(1, 128, 1)?;
    for vm in [disk_vm, idle_vm, &ram_vm] {
        app.cli_ok(&["vm", "start", vm, "--on", "hostA"])?;
    }
    for ip in [disk_ip, idle_ip, ram_ip] {
        wait_http(&lab, &client, ip)?;
    }
    let data_bytes = allocated(&a.dir.join("disks").join(format!("{disk_vm}.qcow2")))?;

    let mut rows = Vec::new();
    let mut idles = Vec::new();
    let mut colds = Vec::new();
    for i in 0..runs {
        let (from, to) = (&a, &c);
        let moved = |vm: (&str, Ipv4Addr), from: &Host, to: &Host, mode: &str| {
            appliance_move(&app, &client, vm, &to.config_name(), mode, PROBE, &|| {
                tx_bytes(&lab, &from.ns)
            })
        };
        let disk = moved((disk_vm, disk_ip), from, to, "--live")?;
        let idle = moved((idle_vm, idle_ip), from, to, "--live")?;
        let ram = moved((&ram_vm, ram_ip), from, to, "--live")?;
        let hand = hand_move(&lab, &client, &a, &c)?;
        // Back cold: the source's copy went with the live move (source_disks = "remove").
        let disk_cold = moved((disk_vm, disk_ip), to, from, "--cold")?;
        let ram_cold = moved((&ram_vm, ram_ip), to, from, "--cold")?;
        // The idle guest goes back live, unmeasured, for the next round.
        moved((idle_vm, idle_ip), to, from, "--live")?;
        eprintln!(
            "run {}: netmigrate {disk:?}, idle {idle:?}, RAM only {ram:?}, by hand {hand:?}; cold: {disk_cold:?}, RAM only {ram_cold:?}",
            i + 1
        );
        rows.push((disk, ram, hand));
        idles.push(idle);
        colds.push((disk_cold, ram_cold));
    }
    let cold_median = |f: &dyn Fn(&(Figures, Figures)) -> u64| median_of(&colds, f);
    let median = |f: &dyn Fn(&(Figures, Figures, Figures)) -> u64| median_of(&rows, f);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let ns = median(&|r| r.0.span_ms);
    let (nt, nb, nw) = (
        median(&|r| r.0.total_ms),
        median(&|r| r.0.break_ms),
        median(&|r| r.0.wire_bytes),
    );
    let (rb, rw) = (median(&|r| r.1.break_ms), median(&|r| r.1.wire_bytes));
    let (ht, hb, hw) = (
        median(&|r| r.2.total_ms),
        median(&|r| r.2.break_ms),
        median(&|r| r.2.wire_bytes),
    );
    let mut t = String::new();
    t += &format!(
        "bench-disk: 128 MiB guest, {VIRTUAL_MIB} MiB qcow2 with {:.0} MiB allocated, live, median of {runs}\n",
        mib(data_bytes)
    );
    t += "                          total ms   break ms   MiB sent\n";
    t += &format!(
        "netmigrate (disk + RAM)   {nt:>8}   {nb:>8}   {:>8.1}\n",
        mib(nw)
    );
    t += &format!(
        "by hand (mirror + migrate){ht:>8}   {hb:>8}   {:>8.1}\n",
        mib(hw)
    );
    let (it, ib, iw) = (
        median_of(&idles, |f| f.total_ms),
        median_of(&idles, |f| f.break_ms),
        median_of(&idles, |f| f.wire_bytes),
    );
    t += &format!(
        "netmigrate (disk, idle)   {it:>8}   {ib:>8}   {:>8.1}\n",
        mib(iw)
    );
    t += &format!(
        "netmigrate (RAM only)     {:>8}   {rb:>8}   {:>8.1}\n",
        "-",
        mib(rw)
    );
    t += &format!(
        "total: until the VM runs on its target with its disk whole (netmigrate's whole move, \
         the source cleared too: {ns} ms)\n"
    );
    t += &format!(
        "total vs by hand: {:.2}x (target <= 1.1); break vs RAM-only move: idle disk guest {:.2}x \
         (target <= 1.2), writing disk guest {:.2}x (by hand {:.2}x); bytes sent vs data in use \
         (disk allocated + the RAM-only move's bytes): {:.2}x (target <= 1.1; by hand {:.2}x), \
         vs the disk allocated + the guest's own memory as QEMU sent it: {:.2}x (idle {:.2}x)\n",
        nt as f64 / ht.max(1) as f64,
        ib as f64 / rb.max(1) as f64,
        nb as f64 / rb.max(1) as f64,
        hb as f64 / rb.max(1) as f64,
        nw as f64 / (data_bytes + rw).max(1) as f64,
        hw as f64 / (data_bytes + rw).max(1) as f64,
        median(&|r| r.0.wire_bytes * 1000 / (data_bytes + r.0.ram_bytes).max(1)) as f64 / 1000.0,
        median_of(&idles, |f| f.wire_bytes * 1000
            / (data_bytes + f.ram_bytes).max(1)) as f64
            / 1000.0,
    );
    let (ct, cb, cw) = (
        cold_median(&|r| r.0.total_ms),
        cold_median(&|r| r.0.break_ms),
        cold_median(&|r| r.0.wire_bytes),
    );
    let (rct, rcb, rcw) = (
        cold_median(&|r| r.1.total_ms),
        cold_median(&|r| r.1.break_ms),
        cold_median(&|r| r.1.wire_bytes),
    );
    t += "cold, back the other way   total ms   break ms   MiB sent
";
    t += &format!(
        "netmigrate (disk + state) {ct:>8}   {cb:>8}   {:>8.1}
",
        mib(cw)
    );
    t += &format!(
        "netmigrate (state only)   {rct:>8}   {rcb:>8}   {:>8.1}
",
        mib(rcw)
    );
    t += &format!(
        "cold: break with the disk vs without: {:.2}x; bytes sent vs data in use (disk allocated \
         + the state-only move's bytes): {:.2}x (zstd on the wire: below 1 where data compresses)\n",
        cb as f64 / rcb.max(1) as f64,
        cw as f64 / (data_bytes + rcw).max(1) as f64,
    );
    Ok(t)
}

fn wait_http(lab: &Lab, client: &Node, ip: Ipv4Addr) -> Result<()> {
    wait_for(&format!("{ip} to answer"), Duration::from_secs(120), || {
        lab.exec(
            &client.ns,
            "curl",
            &["-sS", "--fail", "--max-time", "1", &format!("http://{ip}/")],
        )
        .ok()
    })
    .map(drop)
}

fn allocated(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)
        .with_context(|| p.display().to_string())?
        .blocks()
        * 512)
}

/// Bytes the host in namespace `ns` has sent on its uplink.
pub(crate) fn tx_bytes(lab: &Lab, ns: &str) -> Result<u64> {
    Ok(lab
        .exec(ns, "cat", &["/sys/class/net/up0/statistics/tx_bytes"])?
        .trim()
        .parse()?)
}

/// The median of `f` over `items`; of an even count, the mean of the middle two.
pub(crate) fn median_of<T>(items: &[T], f: impl Fn(&T) -> u64) -> u64 {
    let mut v: Vec<u64> = items.iter().map(f).collect();
    v.sort_unstable();
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2
    } else {
        v[n / 2]
    }
}

/// The prober's cadence on QEMU hosts: a try every 10 ms, each given 100 ms.
const PROBE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(100));

fn prober(client: &Node, ip: Ipv4Addr) -> Result<Prober> {
    Prober::start(&client.ns, SocketAddr::new(ip.into(), 80), PROBE.0, PROBE.1)
}

/// One move by the appliance (`mode`: `--live` or `--cold`) to host `to` under a prober
/// (`probe`: its interval and timeout): the migration's own span, the client's break, the
/// bytes the source sent (`sent`: its counter).
pub(crate) fn appliance_move(
    app: &crate::Appliance,
    client: &Node,
    (vm, ip): (&str, Ipv4Addr),
    to: &str,
    mode: &str,
    probe: (Duration, Duration),
    sent: &dyn Fn() -> Result<u64>,
) -> Result<Figures> {
    let p = Prober::start(&client.ns, SocketAddr::new(ip.into(), 80), probe.0, probe.1)?;
    let probing_since = std::time::SystemTime::now();
    std::thread::sleep((probe.0 * 3).max(Duration::from_millis(300)));
    let before = sent()?;
    let out = app.cli_ok(&["migrate", vm, "--to", to, mode, "--json"])?;
    let wire_bytes = sent()? - before;
    std::thread::sleep((probe.0 * 3).max(Duration::from_millis(300)));
    let r = p.finish();
    let v: Value = serde_json::from_str(&out)?;
    let m = &v["migrations"][0];
    if m["state"] != "done" {
        bail!("the move of {vm} did not complete: {m:#}");
    }
    if std::env::var_os("NETMIGRATE_BENCH_STEPS").is_some() {
        let steps: Vec<String> = m["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let at =
                    |k: &str| s[k].as_i64().unwrap_or(0) - m["started_ms"].as_i64().unwrap_or(0);
                format!(
                    "{} {}..{} ms",
                    s["step"].as_str().unwrap_or("?"),
                    at("started_ms"),
                    at("finished_ms")
                )
            })
            .collect();
        // Where the client's break fell, on the migration's clock.
        let since_start = |at: Duration| {
            (probing_since + at)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
                - m["started_ms"].as_i64().unwrap_or(0)
        };
        eprintln!(
            "{vm}: {} (the hypervisor's own downtime: {} ms; the client's break from {} ms to {} ms)",
            steps.join(", "),
            m["detail"]["downtime_ms"],
            since_start(r.break_at),
            since_start(r.break_at + r.break_time),
        );
    }
    let started = m["started_ms"].as_i64().unwrap_or(0);
    // Until it runs on its target: live, its own start there; cold, its resume.
    let runs = m["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "target runs" || s["step"] == "resume on target")
        .and_then(|s| s["finished_ms"].as_i64())
        .context("no `target runs` or `resume on target` step")?;
    Ok(Figures {
        total_ms: (runs - started) as u64,
        span_ms: (m["finished_ms"].as_i64().unwrap_or(0) - started) as u64,
        break_ms: r.break_time.as_millis() as u64,
        wire_bytes,
        ram_bytes: m["detail"]["bytes"].as_u64().unwrap_or(0),
    })
}

/// The same move by hand, over QMP: the target QEMU with an empty copy of the disk serving it
/// over NBD, the source mirroring onto it (write-blocking) until ready, then `migrate`, then
/// the mirror cancelled (complete, no pivot) and the export stopped. Timed from the target's
/// copy being made to the export's stop.
fn hand_move(lab: &Lab, client: &Node, from: &Host, to: &Host) -> Result<Figures> {
    let mut spec = GuestSpec::numbered(9);
    let src_img = from.dir.join("disks/hand.qcow2");
    if !src_img.exists() {
        boot_disk(
            &src_img,
            &format!(
                "nm_ip={}/24 nm_name={} nm_disk={DATA_PARTITION}",
                spec.ip, spec.name
            ),
            FILL_MIB + 64,
            FILL_MIB,
            VIRTUAL_MIB,
        )?;
    }
    spec.boot_disk = Some(src_img);
    let src = lab.guest(from, spec.clone())?;
    let dst_img = to.dir.join("disks/hand.qcow2");
    let mut dst = None;
    let r = (|| {
        lab.wait_http(&client.ns, &src, Duration::from_secs(120))?;
        let p = prober(client, spec.ip)?;
        std::thread::sleep(Duration::from_millis(300));
        let sent = tx_bytes(lab, &from.ns)?;
        let t0 = Instant::now();
        let _ = std::fs::remove_file(&dst_img);
        run(std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&dst_img)
            .arg(format!("{VIRTUAL_MIB}M")))?;
        let mut ts = spec.clone();
        ts.boot_disk = Some(dst_img.clone());
        ts.incoming = Some("defer".into());
        let d = lab.guest(to, ts)?;
        let to_ip = host_ip(&to.name).to_string();
        let mut tq = Qmp::connect(&d.qmp)?;
        dst = Some(d);
        tq.execute(
            "nbd-server-start",
            json!({"addr": {"type": "inet", "data": {"host": to_ip, "port": "10809"}}}),
        )?;
        tq.execute(
            "block-export-add",
            json!({"type": "nbd", "id": "e0", "node-name": "disk0", "writable": true}),
        )?;
        tq.execute(
            "migrate-incoming",
            json!({"uri": format!("tcp:{to_ip}:4444")}),
        )?;
        let mut sq = Qmp::connect(&src.qmp)?;
        sq.execute(
            "blockdev-add",
            json!({"driver": "nbd", "node-name": "tgt",
                   "server": {"type": "inet", "host": to_ip, "port": "10809"}, "export": "disk0"}),
        )?;
        sq.execute(
            "blockdev-mirror",
            json!({"job-id": "m0", "device": "disk0", "target": "tgt", "sync": "full",
                   "copy-mode": "write-blocking"}),
        )?;
        wait_for(
            "the hand-driven mirror to be ready",
            Duration::from_secs(300),
            || {
                let j = sq.execute("query-block-jobs", json!({})).ok()?;
                (j[0]["ready"] == true).then_some(())
            },
        )?;
        sq.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": 10u64 << 30, "downtime-limit": 100}),
        )?;
        sq.execute("migrate", json!({"uri": format!("tcp:{to_ip}:4444")}))?;
        wait_for(
            "the hand-driven migration",
            Duration::from_secs(120),
            || {
                let m = sq.execute("query-migrate", json!({})).ok()?;
                matches!(m["status"].as_str(), Some("completed" | "failed")).then_some(m)
            },
        )
        .and_then(|m| {
            if m["status"] == "completed" {
                Ok(())
            } else {
                bail!("the hand-driven migration failed: {m}")
            }
        })?;
        sq.execute("block-job-cancel", json!({"device": "m0"}))?;
        wait_for(
            "the hand-driven mirror to end",
            Duration::from_secs(30),
            || {
                let j = sq.execute("query-block-jobs", json!({})).ok()?;
                j.as_array().is_some_and(|a| a.is_empty()).then_some(())
            },
        )?;
        tq.execute("nbd-server-stop", json!({}))?;
        let total_ms = t0.elapsed().as_millis() as u64;
        let wire_bytes = tx_bytes(lab, &from.ns)? - sent;
        let _ = sq.execute("quit", json!({}));
        from.ovs.vsctl(&["del-port", BRIDGE, &src.tap])?;
        wait_for(
            "the guest to answer on its target",
            Duration::from_secs(30),
            || {
                lab.exec(
                    &client.ns,
                    "curl",
                    &[
                        "-sS",
                        "--fail",
                        "--max-time",
                        "1",
                        &format!("http://{}/", spec.ip),
                    ],
                )
                .ok()
            },
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let r = p.finish();
        Ok(Figures {
            total_ms,
            span_ms: total_ms,
            break_ms: r.break_time.as_millis() as u64,
            wire_bytes,
            ..Figures::default()
        })
    })();
    // Whatever happened: both QEMUs, their taps and ports, and the target's copy go.
    for (h, g) in [(from, Some(&src)), (to, dst.as_ref())] {
        if let Some(g) = g {
            lab.stop(g.pid);
            let _ = h.ovs.vsctl(&["--if-exists", "del-port", BRIDGE, &g.tap]);
            let _ = crate::netns::ip(&h.ns, &["link", "del", &g.tap]);
        }
    }
    let _ = std::fs::remove_file(&dst_img);
    r
}

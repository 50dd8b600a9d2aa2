//! The paper's scenario 1 on nested Xen (hosts xenA, xenB, xenC), cold and live through the
//! appliance, next to the hand-driven ways in the same run: `xl save` + a copy between the
//! dom0s + `xl restore` (the paper's scripts; with scp, and with zstd on the wire as the lab
//! recipe does it), and a plain `xl migrate`. Breaks from the client namespace's prober.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::appliance::network_config;
use crate::lab::Node;
use crate::paper::{self, Flavor, Run};
use crate::sys::wait_for;
use crate::xen::{XenHost, XenOpts, GUEST_INITRD, GUEST_KERNEL};
use crate::{Appliance, Lab, Prober};

/// Breaks here are tens of seconds: a gentler prober than on QEMU. Each probe is a TCP
/// connection and a fork of the guest's httpd, emulated twice over: at 10 a second to each of
/// two guests (and the appliance's own probe beside it) the guests took a third of xenA's one
/// emulated CPU each and its SSH logins took 45 s; at 4 a second, three guests on xenC kept a
/// 30 s command from finishing there.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Tries of a move that rolled back: a try fails on nested TCG about one time in three here.
const RETRIES: u32 = 4;

/// The appliance's config for a Xen lab: retries for what nested TCG breaks, gentle probes.
pub fn config(lab: &Lab, hosts: &[XenHost]) -> Result<String> {
    let mut cfg = network_config(&lab.appliance_state_dir()?);
    for h in hosts {
        cfg += &h.config()?;
    }
    // xl migrate of a 128 MiB guest takes 50-130 s here (ssh setup, the copy rounds).
    cfg += &format!(
        "\n[migration]\nretries = {RETRIES}\nprobe_interval = \"{}ms\"\nlive_timeout = \"600s\"\n",
        PROBE_EVERY.as_millis()
    );
    Ok(cfg)
}

/// Defines Xen guest `vmN` (PVH, 128 MiB) at 10.213.0.(40 + n): the dom0s hold .21 and up
/// (guests at .2x took their addresses, and the appliance's SSH to a dom0 met the guest's
/// closed port 22 once the guest had announced itself).
pub fn define(app: &Appliance, n: u8, vcpus: u32) -> Result<(String, Ipv4Addr)> {
    let name = format!("vm{n}");
    let ip = Ipv4Addr::new(10, 213, 0, 40 + n);
    crate::xen::define_guest(app, &name, ip, vcpus, "pvh", &[])?;
    Ok((name, ip))
}

pub fn flavor() -> Flavor<'static> {
    Flavor {
        hosts: "xen",
        define: &define,
        probe_every: PROBE_EVERY,
        probe_timeout: PROBE_TIMEOUT,
        boot: Duration::from_secs(300),
        record_failures: true,
    }
}

/// One hand-driven move: what was done, whether it worked, the break the client saw, and
/// how long the whole took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hand {
    pub how: String,
    pub ok: bool,
    pub break_ms: u64,
    pub total_ms: u64,
    pub note: String,
}

const HAND_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 49);

/// The hand-driven guest's xl config: Xen's own Open vSwitch hotplug script on br0.
fn hand_config() -> String {
    format!(
        "name = \"hand\"\ntype = \"pvh\"\nmemory = 128\nvcpus = 1\nkernel = \"{GUEST_KERNEL}\"\n\
         ramdisk = \"{GUEST_INITRD}\"\nextra = \"console=hvc0 quiet nm_ip={HAND_IP}/24 nm_name=hand\"\n\
         vif = [ \"mac=00:16:3e:d5:00:49,bridge=br0,script=vif-openvswitch\" ]\ntsc_mode = \"native\"\n"
    )
}

/// Moves a hand-made guest from `a` to `b` the way an operator would without netmigrate.
/// `how`: "scp" (save, scp, restore), "zstd" (save, zstd through ssh, restore) or "migrate".
pub fn hand(
    lab: &Lab,
    ns: &str,
    client: &Node,
    a: &XenHost,
    b: &XenHost,
    how: &str,
) -> Result<Hand> {
    lab.xen_ssh(
        ns,
        a,
        &format!(
            "printf '%s' '{}' > /root/hand.cfg && xl create /root/hand.cfg >/dev/null 2>&1",
            hand_config()
        ),
    )?;
    let url = format!("http://{HAND_IP}/");
    let answers = |what: &str, within: Duration| {
        wait_for(what, within, || {
            lab.exec(
                &client.ns,
                "curl",
                &["-sS", "--fail", "--max-time", "2", &url],
            )
            .ok()
        })
    };
    answers("the hand-driven guest to answer", Duration::from_secs(300))?;
    let prober = Prober::start(
        &client.ns,
        SocketAddr::new(HAND_IP.into(), 80),
        PROBE_EVERY,
        PROBE_TIMEOUT,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let img = "/var/lib/xen/save/hand.chk";
    let script = match how {
        "scp" => format!(
            "xl save hand {img} >/dev/null 2>&1 && scp -q {img} {b}:{img} && rm -f {img} && \
             ssh {b} 'xl restore {img} >/dev/null 2>&1; rc=$?; rm -f {img}; exit $rc'",
            b = b.ip
        ),
        "zstd" => format!(
            "xl save hand {img} >/dev/null 2>&1 && zstd -1 -q -c {img} | ssh {b} 'zstd -d -q > {img}' && \
             rm -f {img} && ssh {b} 'xl restore {img} >/dev/null 2>&1; rc=$?; rm -f {img}; exit $rc'",
            b = b.ip
        ),
        "migrate" => format!("set -o pipefail; xl migrate hand {} 2>&1 | tail -n 3", b.ip),
        other => anyhow::bail!("hand-driven {other}: scp, zstd or migrate"),
    };
    let t = Instant::now();
    let r = lab.xen_ssh(ns, a, &script);
    let total_ms = t.elapsed().as_millis() as u64;
    let landed = answers(
        "the hand-driven guest after its move",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = prober.finish();
    let on_b = lab
        .xen_ssh(ns, b, "xl domid hand >/dev/null 2>&1 && echo yes || true")
        .unwrap_or_default()
        .contains("yes");
    for h in [a, b] {
        let _ = lab.xen_ssh(ns, h, "xl destroy hand 2>/dev/null; true");
    }
    let note = match (&r, &landed) {
        (Err(e), _) => format!("{e:#}")
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect(),
        (Ok(_), Err(e)) => format!("{e:#}"),
        (Ok(out), Ok(_)) => out.trim().lines().last().unwrap_or("").to_string(),
    };
    Ok(Hand {
        how: how.into(),
        ok: r.is_ok() && landed.is_ok() && on_b,
        break_ms: report.break_time.as_millis() as u64,
        total_ms,
        note,
    })
}

/// The table: the appliance's moves per VM, then the hand-driven ones.
pub fn table(runs: &[Run], hands: &[Hand]) -> String {
    let mut o = paper::table(runs, &[]);
    // The paper's line goes last, after the hand-driven ones.
    let paper_line = o.lines().last().unwrap_or("").to_string();
    o.truncate(o.len() - paper_line.len() - 1);
    for h in hands {
        o.push_str(&format!(
            "| hand | {} | hand | xenA -> xenB ({}, {:.1} s in all{}) | - | {} ms |\n",
            match h.how.as_str() {
                "scp" => "xl save + scp + xl restore",
                "zstd" => "xl save + zstd over ssh + xl restore",
                _ => "xl migrate",
            },
            if h.ok { "done" } else { "failed" },
            h.total_ms as f64 / 1000.0,
            if h.note.is_empty() || h.ok {
                String::new()
            } else {
                format!(": {}", h.note.replace('|', "/"))
            },
            h.break_ms
        ));
    }
    o.push_str(&paper_line);
    o.push('\n');
    o
}

/// `make paper-xen`: the lab, scenario 1 cold and live, the hand-driven moves, the table.
pub fn run_all(out: &Path) -> Result<String> {
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    let lab = Lab::new()?;
    eprintln!("lab prefix {} (run dir {})", lab.prefix, lab.dir.display());
    let t0 = Instant::now();
    let hosts = lab.xen_hosts(&["A", "B", "C"], &XenOpts::default())?;
    eprintln!("Xen hosts up in {:.0} s", t0.elapsed().as_secs_f64());
    let client = lab.client()?;
    let app = lab.appliance_with(&config(&lab, &hosts)?)?;
    app.cli_ok(&["hosts", "collect"])?;
    let sc = &paper::scenarios()[0];
    let mut runs = Vec::new();
    for mode in ["cold", "live"] {
        eprintln!("{} -- {mode}", sc.describe());
        let r = paper::run(&lab, &app, &client, sc, mode, Some(&out), &flavor())
            .with_context(|| format!("scenario 1 {mode}"))?;
        paper::print_moved(&r);
        if r.state != "done" {
            eprintln!("    {}", r.progress.trim().lines().last().unwrap_or(""));
        }
        runs.push(r);
    }
    let ns = app.node.ns.clone();
    let mut hands = Vec::new();
    for how in ["scp", "zstd", "migrate"] {
        eprintln!("hand-driven: {how}");
        let h = hand(&lab, &ns, &client, &hosts[0], &hosts[1], how)?;
        eprintln!("    {h:?}");
        hands.push(h);
    }
    let table = table(&runs, &hands);
    std::fs::write(out.join("table.md"), &table)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({"runs": runs, "hand": hands}))?,
    )?;
    Ok(table)
}

//! What the QEMU migration tests share: the lab with one VM on hostA, and the checks of where
//! a VM runs.
#![allow(dead_code)]

use std::time::Duration;

use netmigrate_lab::Lab;
use netmigrate_lab::{Appliance, Host};

pub const BOOT: Duration = Duration::from_secs(120);

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// Defines VM `n` (vmN at 10.213.0.(20 + n), 128 MiB) booting the lab's kernel and initramfs.
pub fn define(app: &Appliance, n: u8) -> (String, std::net::Ipv4Addr) {
    app.define_guest(n, 128, 1).unwrap()
}

pub fn ports(h: &Host) -> Vec<String> {
    h.ovs
        .vsctl(&["list-ports", "br0"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn wait_http(lab: &Lab, ns: &str, ip: std::net::Ipv4Addr) -> String {
    let url = format!("http://{ip}/");
    netmigrate_lab::sys::wait_for(&format!("{url} to answer"), BOOT, || {
        lab.exec(ns, "curl", &["-sS", "--fail", "--max-time", "1", &url])
            .ok()
    })
    .unwrap()
}

/// A lab with hosts A and C, a client, the appliance, and VM `n` started on hostA and
/// answering. Fields drop in order: the lab last.
pub struct OneVm {
    pub vm: String,
    pub ip: std::net::Ipv4Addr,
    /// Its switch port's name.
    pub port: String,
    pub app: Appliance,
    pub client: netmigrate_lab::Node,
    pub a: Host,
    pub c: Host,
    pub lab: Lab,
}

pub fn one_vm_on_a(n: u8) -> OneVm {
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let app = lab.appliance(&[&a, &c]).unwrap();
    let (vm, ip) = define(&app, n);
    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    wait_http(&lab, &client.ns, ip);
    OneVm {
        port: format!("nm-{vm}"),
        vm,
        ip,
        app,
        client,
        a,
        c,
        lab,
    }
}

/// Where `vm` is, as every move and fault test checks it: (its QEMU runs on `here` and not on
/// `there`, its port `nm-VM` is on `here`'s switch and not on `there`'s).
pub fn placed(here: &Host, there: &Host, vm: &str) -> (bool, bool) {
    let port = format!("nm-{vm}");
    (
        runs_on(here, vm) && !runs_on(there, vm),
        ports(here).contains(&port) && !ports(there).contains(&port),
    )
}

/// Whether a QEMU for `vm` runs on `h` (its pid file names a live, non-zombie process).
pub fn runs_on(h: &Host, vm: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(h.dir.join(format!("run/{vm}.pid"))) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

/// The first migration of a `migrate --json` run that must have succeeded.
pub fn migrated(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&text)["migrations"][0].clone()
}

/// The names of a migration's journal steps, in order.
pub fn step_names(m: &serde_json::Value) -> Vec<&str> {
    m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect()
}

/// A crash-matrix round: the appliance restarted to kill itself at `point`, `vm` moved to
/// `to` with `mode` until it does, the appliance restarted clean; the move as it settled it.
pub fn crash_and_settle(
    lab: &Lab,
    app: &mut Appliance,
    vm: &str,
    to: &str,
    mode: &str,
    point: &str,
) -> serde_json::Value {
    lab.restart_with(app, &[("NETMIGRATE_CRASH_AT", point)])
        .unwrap();
    let o = app
        .cli(&["migrate", vm, "--to", to, mode, "--no-probe"])
        .unwrap();
    assert!(!o.status.success(), "{point}: the move did not crash");
    if let Err(e) = lab.wait_exit(app, Duration::from_secs(30)) {
        panic!(
            "{point}: {e}; the move ended without the crash: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    lab.restart_with(app, &[]).unwrap();
    // The restarted appliance settles the move by itself.
    netmigrate_lab::sys::wait_for(
        &format!("{point}: the interrupted move to be settled"),
        Duration::from_secs(90),
        || {
            let l = json(&app.cli_ok(&["migrations", "--json"]).ok()?);
            let m = l[0].clone();
            (m["state"] != "running").then_some(m)
        },
    )
    .unwrap()
}

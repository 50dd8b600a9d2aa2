//! The lab itself, tested as its users (the other tests and `make demo`) rely on it: real
//! sshd, real Open vSwitch, real QEMU guests, real clients (curl, ssh) in namespaces.
//! These need root; without it each prints why it is skipped.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use netmigrate_lab::{require_lab, sys, GuestSpec, Lab, Prober};

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn three_guests_on_two_hosts_answer_the_client_through_ovs() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let client = lab.client().unwrap();
    let guests = [
        lab.guest(&a, GuestSpec::numbered(1)).unwrap(),
        lab.guest(&a, GuestSpec::numbered(2)).unwrap(),
        lab.guest(&b, GuestSpec::numbered(3)).unwrap(),
    ];
    for g in &guests {
        let body = lab.wait_http(&client.ns, g, BOOT).unwrap();
        assert_eq!(
            body.trim(),
            format!("hello from {} {}", g.spec.name, g.spec.mac)
        );
    }
    // Each guest hangs on its host's OVS bridge, next to the uplink.
    assert_eq!(a.ovs.ports("br0").unwrap(), ["t-vm1", "t-vm2", "up0"]);
    assert_eq!(b.ovs.ports("br0").unwrap(), ["t-vm3", "up0"]);
    // And OVS (not a Linux bridge) forwarded it: host A's bridge learned vm1's MAC on its tap.
    let fdb = sys::sh(
        "ovs-appctl",
        &[
            "-t",
            &a.ovs.dir.join("ovs-vswitchd.ctl").display().to_string(),
            "fdb/show",
            "br0",
        ],
    )
    .unwrap();
    let vm1_port = a.ovs.check_port("t-vm1").unwrap();
    assert!(
        fdb.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0] == vm1_port.to_string() && f[2] == guests[0].spec.mac
        }),
        "vm1's MAC not learned on port {vm1_port}:\n{fdb}"
    );
}

fn ssh(
    lab: &Lab,
    host_ip: &str,
    known_hosts: &std::path::Path,
    key: &std::path::Path,
    cmd: &str,
) -> std::process::Output {
    let ns = lab.ns_name("cl");
    netmigrate_lab::netns::exec(&ns, "ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .arg(format!("root@{host_ip}"))
        .arg(cmd)
        .output()
        .unwrap()
}

#[test]
fn sshd_accepts_the_lab_key_and_its_host_key_can_be_pinned() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    lab.client().unwrap();
    let key = lab.client_key().unwrap();
    let dir = lab.subdir("ssh-test").unwrap();
    let ip = a.ip.to_string();

    // Pinned: the host key the lab generated is the one sshd shows.
    let pinned = dir.join("known_hosts");
    std::fs::write(&pinned, format!("{ip} {}\n", a.host_key.public)).unwrap();
    let out = ssh(&lab, &ip, &pinned, &key.private, "ip -4 -o addr show br0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The command ran on the host, inside its namespace.
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/24")));

    // A different pinned key is refused, as OpenSSH refuses a changed host key.
    let other = netmigrate_lab::sshd::keygen(&dir.join("other_host_key"), "other").unwrap();
    let wrong = dir.join("known_hosts_wrong");
    std::fs::write(&wrong, format!("{ip} {}\n", other.public)).unwrap();
    let out = ssh(&lab, &ip, &wrong, &key.private, "true");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A key the host does not know is refused.
    let out = ssh(&lab, &ip, &pinned, &other.private, "true");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

#[test]
fn the_appliance_runs_in_the_lab_with_the_hosts_pinned() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let app = lab.appliance(&[&a, &b]).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["status", "--json"]).unwrap()).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["name"], "hostA");
    assert_eq!(hosts[0]["host_key"], a.host_key.public.as_str());
    assert_eq!(hosts[1]["address"], "10.213.0.12");
    // It runs inside the appliance namespace, where the lab address is.
    let pids = netmigrate_lab::netns::pids(&app.node.ns);
    assert!(
        pids.contains(&app.pid),
        "serve (pid {}) not in {}: {pids:?}",
        app.pid,
        app.node.ns
    );
}

#[test]
fn the_prober_measures_a_service_break() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let client = lab.client().unwrap();
    let g = lab.guest(&a, GuestSpec::numbered(1)).unwrap();
    lab.wait_http(&client.ns, &g, BOOT).unwrap();

    let addr = SocketAddr::new(g.spec.ip.into(), 80);
    let p = Prober::start(
        &client.ns,
        addr,
        Duration::from_millis(20),
        Duration::from_millis(200),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // Freeze the guest for 1.5 s: its service breaks for about that long.
    sys::signal(g.pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    sys::signal(g.pid, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1500));
    let r = p.finish();
    assert!(r.successes > 10, "{r:?}");
    // The lower bound allows for the prober's thread being scheduled late (2 cores, guests
    // booting beside it): a success stamped late before the freeze shortens the gap it sees.
    assert!(
        r.break_time >= Duration::from_millis(1200) && r.break_time < Duration::from_millis(3500),
        "break {:?} should be about the 1.5 s freeze: {r:?}",
        r.break_time
    );
}

/// Runs in a child process (see below): builds a lab with a host, sshd, OVS and a guest, prints
/// what it started, then panics.
#[test]
#[ignore = "run by panicking_test_leaves_nothing_behind in a child process"]
fn panicking_lab_child() {
    if std::env::var("NETMIGRATE_LAB_PANIC_CHILD").is_err() {
        return;
    }
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    lab.guest(&a, GuestSpec::numbered(1)).unwrap();
    println!("LAB prefix={} dir={}", lab.prefix, lab.dir.display());
    println!(
        "LAB pids={}",
        lab.pids()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("LAB namespaces={}", lab.namespaces().join(","));
    panic!("deliberate panic with the lab up");
}

#[test]
fn panicking_test_leaves_nothing_behind() {
    require_lab!();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panicking_lab_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NETMIGRATE_LAB_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child should have failed");
    assert!(stderr.contains("deliberate panic"), "{stderr}");
    let field = |name: &str| -> String {
        stdout
            .lines()
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name}= in child output:\n{stdout}\n{stderr}"))
    };
    let prefix = field("prefix");
    let pids: Vec<u32> = field("pids")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    let namespaces = field("namespaces");
    // sshd, ovsdb-server, ovs-vswitchd, QEMU
    assert!(pids.len() >= 4, "{pids:?}");
    assert!(namespaces.split(',').count() >= 2, "{namespaces}");

    for p in &pids {
        assert!(!sys::alive(*p), "process {p} outlived the panicking test");
    }
    let left: Vec<String> = netmigrate_lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(
        !std::path::Path::new(&field("dir")).exists(),
        "run directory left behind"
    );
}

/// Runs in a child process that the test kills with SIGKILL (no Drop, no unwinding).
#[test]
#[ignore = "run by cleanup_removes_what_a_killed_run_left in a child process"]
fn killed_lab_child() {
    if std::env::var("NETMIGRATE_LAB_KILL_CHILD").is_err() {
        return;
    }
    let lab = Lab::new().unwrap();
    lab.host("A").unwrap();
    println!("LAB prefix={}", lab.prefix);
    std::thread::sleep(Duration::from_secs(120)); // killed long before
}

#[test]
fn cleanup_removes_what_a_killed_run_left() {
    require_lab!();
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_lab_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NETMIGRATE_LAB_KILL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let prefix = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            // libtest prints "test NAME ... " on the same line first
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("prefix=").map(str::to_string))
        })
        .expect("child printed no prefix");
    child.kill().unwrap();
    child.wait().unwrap();

    let ours = || -> Vec<String> {
        netmigrate_lab::netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    let left = ours();
    assert!(
        left.len() >= 2,
        "a killed run should leave its namespaces: {left:?}"
    );
    let leftover_pids: Vec<u32> = left
        .iter()
        .flat_map(|n| netmigrate_lab::netns::pids(n))
        .collect();
    assert!(
        !leftover_pids.is_empty(),
        "sshd and OVS should still run after the kill"
    );
    // A namespace that is not the lab's must survive the cleanup.
    let decoy = format!("nmdecoy{}", std::process::id());
    sys::sh("ip", &["netns", "add", &decoy]).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_netmigrate-lab"))
        .arg("cleanup")
        .output()
        .unwrap();
    let decoy_survived = netmigrate_lab::netns::list().contains(&decoy);
    let _ = sys::sh("ip", &["netns", "del", &decoy]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&prefix));
    assert!(ours().is_empty(), "namespaces left: {:?}", ours());
    for p in leftover_pids {
        assert!(!sys::alive(p), "process {p} survived the cleanup");
    }
    assert!(
        decoy_survived,
        "cleanup removed a namespace that is not the lab's"
    );
}

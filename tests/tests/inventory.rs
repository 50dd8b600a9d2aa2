//! Inventory against real sshd in lab host namespaces with real QEMU guests: what
//! `netmigrate hosts collect` finds, host-key pinning, and a host that is down.

use std::time::Duration;

use netmigrate_lab::appliance::{host_config, network_config};
use netmigrate_lab::{require_lab, GuestSpec, Lab};

const BOOT: Duration = Duration::from_secs(120);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn collect_finds_guests_ports_and_resources_and_a_dead_host_does_not_hold_back_the_rest() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let client = lab.client().unwrap();
    let mut spec = GuestSpec::numbered(1);
    spec.vlan = Some(100);
    spec.mem_mib = 160;
    spec.disk_mib = Some(64);
    let vm1 = lab.guest(&a, spec).unwrap();
    let vm2 = lab.guest(&b, GuestSpec::numbered(2)).unwrap();

    // hostZ: configured, but nothing answers at its address.
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    cfg.push_str(&host_config(&lab, &a, true).unwrap());
    cfg.push_str(&host_config(&lab, &b, true).unwrap());
    cfg.push_str(
        &host_config(&lab, &a, true)
            .unwrap()
            .replace("\"hostA\"", "\"hostZ\"")
            .replace(&format!("\"{}\"", a.ip), "\"10.213.0.99\""),
    );
    let app = lab.appliance_with(&cfg).unwrap();
    // vm1 sits on VLAN 100 (nothing else does); vm2 is on the lab's untagged segment.
    lab.wait_http(&client.ns, &vm2, BOOT).unwrap();
    // The appliance learns vm2's address the way a router does: by talking to it.
    lab.exec(&app.node.ns, "ping", &["-c", "1", "-W", "2", "10.213.0.22"])
        .unwrap();

    let out = app.cli(&["hosts", "collect"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a down host makes collect fail: {text}"
    );
    assert!(
        text.contains("hostA      up") && text.contains("hostB      up"),
        "{text}"
    );
    assert!(
        text.contains("hostZ      DOWN") && text.contains("cannot connect to 10.213.0.99:22"),
        "{text}"
    );

    let hosts = json(&app.cli_ok(&["hosts", "--json"]).unwrap());
    let h = |name: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap()
            .clone()
    };
    let (ha, hz) = (h("hostA"), h("hostZ"));
    assert_eq!(ha["status"], "up");
    assert_eq!(hz["status"], "down");
    assert!(hz["status_reason"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));
    // A's collection did not wait for Z's timeout.
    let collected: serde_json::Value = json(
        &app.cli_ok(&["hosts", "collect", "hostA", "--json"])
            .unwrap(),
    );
    assert!(
        collected[0]["duration_ms"].as_u64().unwrap() < 5000,
        "{collected}"
    );

    let f = &ha["facts"];
    assert!(f["cpus"].as_u64().unwrap() >= 1);
    assert!(f["mem_total_mib"].as_u64().unwrap() > 0);
    assert!(!f["disks"].as_array().unwrap().is_empty());
    let br0 = &f["bridges"][0];
    assert_eq!(br0["name"], "br0");
    let ports = br0["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "t-vm1" && p["tag"] == 100),
        "{ports:?}"
    );
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "up0" && p["tag"].is_null()),
        "{ports:?}"
    );

    let vms = json(&app.cli_ok(&["vms", "--json"]).unwrap());
    let vms = vms.as_array().unwrap();
    assert_eq!(vms.len(), 2, "{vms:?}");
    let v1 = vms.iter().find(|v| v["name"] == "vm1").unwrap();
    assert_eq!(v1["host"], "hostA");
    assert_eq!(
        v1["state"], "running",
        "asked over the SSH-forwarded QMP socket"
    );
    assert_eq!(v1["vcpus"], 1);
    assert_eq!(v1["mem_mib"], 160);
    assert_eq!(v1["disk_mib"], 64, "the size of its drive's image");
    assert_eq!(
        vms.iter().find(|v| v["name"] == "vm2").unwrap()["disk_mib"],
        0
    );
    assert_eq!(v1["macs"][0], vm1.spec.mac.as_str());
    assert_eq!(v1["ports"][0], "t-vm1");
    assert_eq!(
        v1["ips"],
        serde_json::json!([]),
        "never seen by the appliance"
    );
    let v2 = vms.iter().find(|v| v["name"] == "vm2").unwrap();
    assert_eq!(v2["host"], "hostB");
    assert_eq!(v2["ips"][0], "10.213.0.22");

    // Only hosts in their own namespace's QEMUs: A does not list B's guest.
    assert_eq!(ha["facts"]["vms"].as_array().unwrap().len(), 1);
    // One SSH connection per host, kept and reused: three collections of A, one login and
    // one session (the kept shell) in A's sshd log.
    let log = std::fs::read_to_string(lab.dir.join("hA-sshd.log")).unwrap();
    assert_eq!(
        log.matches("Accepted publickey for root").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("Starting session:").count(), 1, "{log}");

    let events = app.cli_ok(&["events"]).unwrap();
    assert!(
        events.contains("host.down") && events.contains("[hostZ]"),
        "{events}"
    );
}

#[test]
fn host_keys_are_pinned_on_trust_and_a_changed_key_is_refused() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    cfg.push_str(&host_config(&lab, &a, false).unwrap());
    // B's config pins A's key: the key B shows is not the pinned one.
    cfg.push_str(
        &host_config(&lab, &b, true)
            .unwrap()
            .replace(&b.host_key.public, &a.host_key.public),
    );
    let app = lab.appliance_with(&cfg).unwrap();

    let out = app.cli(&["hosts", "collect"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("the host key of hostA (10.213.0.11:22) is not pinned")
            && text.contains("netmigrate hosts trust hostA"),
        "{text}"
    );
    assert!(text.contains("HOST KEY CHANGED for hostB"), "{text}");
    let hosts = app.cli_ok(&["hosts"]).unwrap();
    assert!(
        hosts.contains("host key not pinned: `netmigrate hosts trust hostA`"),
        "{hosts}"
    );

    // Trust on first use pins exactly the key sshd has.
    let trusted = app.cli_ok(&["hosts", "trust", "hostA"]).unwrap();
    let key_of = |line: &str| {
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(trusted.contains(&key_of(&a.host_key.public)), "{trusted}");
    let out = app.cli(&["hosts", "collect", "hostA"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A key pinned in the config is not replaced from the CLI.
    let out = app.cli(&["hosts", "trust", "hostB", "--replace"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned in the config file"));
    // And without --replace a different key is refused, naming both.
    let out = app.cli(&["hosts", "trust", "hostB"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HOST KEY CHANGED for hostB") && err.contains(&key_of(&b.host_key.public)),
        "{err}"
    );
}

#[test]
fn plan_the_papers_scenario_on_collected_facts() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let (a, b, c) = (
        lab.host("A").unwrap(),
        lab.host("B").unwrap(),
        lab.host("C").unwrap(),
    );
    lab.guest(&a, GuestSpec::numbered(1)).unwrap();
    lab.guest(&a, GuestSpec::numbered(2)).unwrap();
    lab.guest(&b, GuestSpec::numbered(3)).unwrap();
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    for h in [&a, &b, &c] {
        cfg.push_str(&host_config(&lab, h, true).unwrap());
    }
    cfg.push_str("\n[placement]\nstale_after = \"3s\"\n");
    let app = lab.appliance_with(&cfg).unwrap();

    // Before any collection, the target is unknown ground.
    let out = app.cli(&["plan", "vm1", "--to", "hostC"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("host `hostC` has never been collected"));

    app.cli_ok(&["hosts", "collect"]).unwrap();
    let args = [
        "plan",
        "vm1",
        "vm2",
        "vm3",
        "--to",
        "hostC",
        "--mode",
        "symmetrical",
        "--order",
        "round-robin",
        "--json",
    ];
    let p = json(&app.cli_ok(&args).unwrap());
    let moves: Vec<String> = p["plan"]["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}->{}",
                m["vm"].as_str().unwrap(),
                m["from"].as_str().unwrap(),
                m["to"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        moves,
        ["vm1:hostA->hostC", "vm3:hostB->hostC", "vm2:hostA->hostC"]
    );
    // The capacities came from the collected facts.
    let c_cap = p["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "hostC")
        .unwrap()["cap"]
        .clone();
    assert!(c_cap["mem_mib"].as_u64().unwrap() > 1024, "{c_cap}");

    let text = app
        .cli_ok(&[
            "plan",
            "vm1",
            "vm2",
            "vm3",
            "--to",
            "hostC",
            "--mode",
            "symmetrical",
        ])
        .unwrap();
    assert!(text.contains("  1. vm1        hostA -> hostC"), "{text}");
    assert!(text.contains("  3. vm3        hostB -> hostC"), "{text}");

    let out = app.cli(&["plan", "vm1", "vm9", "--to", "hostC"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "netmigrate: unknown VM `vm9`"
    );

    // Facts older than placement.stale_after are not planned with.
    std::thread::sleep(Duration::from_millis(3500));
    let out = app.cli(&["plan", "vm1", "--to", "hostC"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("old (placement.stale_after is 3s); run `netmigrate hosts collect"),
        "{err}"
    );
}

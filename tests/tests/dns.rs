//! The DNS server with real clients in lab namespaces: dig (UDP and TCP, A, PTR, SOA, AXFR),
//! nsupdate with the right key, a wrong key and none, DHCP clients that become resolvable by
//! the host name they send and stop being so when they release, a name another client holds
//! refused, forwarding for the lab only, Knot as a secondary that follows each change through
//! NOTIFY and AXFR, and the static records surviving a crash.

use std::path::Path;
use std::time::Duration;

use netmigrate_lab::netns;
use netmigrate_lab::sys::wait_for;
use netmigrate_lab::{require_lab, Lab};

const SECRET: &str = "bmV0bWlncmF0ZS1sYWItdGVzdHMtdHNpZy1zZWNyZXQ=";
const UPSTREAM: &str = "10.213.0.53";
const SECONDARY: &str = "10.213.0.54";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// `dig @10.213.0.1 ARGS +short`-like answers, one per line; the status line separately.
fn dig(lab: &Lab, ns: &str, args: &[&str]) -> (String, String) {
    let mut a = vec![
        "@10.213.0.1",
        "+time=2",
        "+tries=2",
        "+noall",
        "+answer",
        "+comments",
    ];
    a.extend_from_slice(args);
    let out = lab.exec(ns, "dig", &a).unwrap();
    // The status line and the flags line.
    let status = out
        .lines()
        .filter(|l| l.contains("status:") || l.starts_with(";; flags:"))
        .collect::<Vec<_>>()
        .join(" ");
    let answers = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("\n");
    (status, answers)
}

fn status_of(status: &str) -> &str {
    status
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn nsupdate(lab: &Lab, ns: &str, key: Option<&str>, commands: &str) -> std::process::Output {
    let file = lab.dir.join("nsupdate.txt");
    write(&file, commands, 0o644);
    let mut args = vec!["nsupdate", "-t", "5"];
    if let Some(k) = key {
        args.extend_from_slice(&["-y", k]);
    }
    let file = file.to_str().unwrap().to_string();
    args.push(&file);
    let mut cmd = netns::exec(ns, args[0]);
    cmd.args(&args[1..]);
    cmd.output().unwrap()
}

#[test]
fn names_follow_leases_updates_and_secondaries_and_outsiders_are_refused() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let key_file = lab.dir.join("ddns.key");
    write(&key_file, &format!("{SECRET}\n"), 0o600);
    let mut config = netmigrate_lab::appliance::network_config(&state_dir);
    config.push_str(&format!(
        "\n[[reservation]]\nnetwork = \"lab\"\nmac = \"52:54:00:aa:00:07\"\nip = \"10.213.0.60\"\n\
         hostname = \"fixed\"\n\n\
         [dns]\nttl = \"30s\"\nforwarders = [\"{UPSTREAM}\"]\nsecondaries = [\"{SECONDARY}\"]\n\
         [[dns.tsig_key]]\nname = \"ddns\"\nalgorithm = \"hmac-sha256\"\nsecret_file = \"{}\"\n\
         \n[dhcp]\nconflict_check = false\n",
        key_file.display()
    ));

    // The upstream resolver the appliance forwards to: dnsmasq answering one outside name.
    let up = lab.node("up", UPSTREAM.parse().unwrap()).unwrap();
    lab.track(
        "upstream-dnsmasq",
        netns::exec(&up.ns, "dnsmasq").args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={UPSTREAM}"),
            "--address=/outside.example/192.0.2.7",
            "--pid-file=",
            "--user=root",
        ]),
    )
    .unwrap();

    let mut app = lab.appliance_with(&config).unwrap();
    let cl = lab.client().unwrap();

    // The zone: SOA, NS, the appliance's own name both ways, a reservation's name.
    let (s, soa) = dig(&lab, &cl.ns, &["lab.internal", "SOA"]);
    assert_eq!(status_of(&s), "NOERROR", "{s}");
    assert!(s.contains(" aa"), "not authoritative: {s}");
    let serial0: u64 = {
        let out = lab
            .exec(
                &cl.ns,
                "dig",
                &["@10.213.0.1", "+short", "lab.internal", "SOA"],
            )
            .unwrap();
        out.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    eprintln!("SOA {soa} serial {serial0}");
    assert_eq!(dig(&lab, &cl.ns, &["ns.lab.internal"]).1, "10.213.0.1");
    assert_eq!(
        dig(&lab, &cl.ns, &["-x", "10.213.0.1"]).1,
        "ns.lab.internal."
    );
    assert_eq!(dig(&lab, &cl.ns, &["fixed.lab.internal"]).1, "10.213.0.60");
    assert_eq!(
        dig(&lab, &cl.ns, &["+tcp", "FIXED.Lab.Internal"]).1,
        "10.213.0.60",
        "over TCP, in another case"
    );
    let (s, _) = dig(&lab, &cl.ns, &["nobody.lab.internal"]);
    assert_eq!(status_of(&s), "NXDOMAIN", "{s}");

    // A DHCP client sending its host name becomes resolvable both ways.
    let d1 = lab.bare_node("d1").unwrap();
    let (hook, ulog) = {
        let log = lab.dir.join("udhcpc.events");
        let path = lab.dir.join("udhcpc.sh");
        write(
            &path,
            &format!(
                "#!/bin/sh\ncase \"$1\" in\n  bound|renew) ip addr flush dev \"$interface\"; \
                 ip addr add \"$ip/$subnet\" dev \"$interface\"; echo \"$1 $ip\" >> {0};;\n  \
                 deconfig) ip addr flush dev \"$interface\"; echo deconfig >> {0};;\nesac\n",
                log.display()
            ),
            0o755,
        );
        (path, log)
    };
    let udhcpc = lab
        .track(
            "udhcpc-web1",
            netns::exec(&d1.ns, "busybox").args([
                "udhcpc",
                "-i",
                "eth0",
                "-f",
                "-R",
                "-x",
                "hostname:web1",
                "-s",
                hook.to_str().unwrap(),
            ]),
        )
        .unwrap();
    let bound = wait_for("udhcpc's lease", Duration::from_secs(20), || {
        std::fs::read_to_string(&ulog)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("bound ").map(str::to_string))
    })
    .unwrap();
    let web1 = wait_for("web1 in DNS", Duration::from_secs(5), || {
        Some(dig(&lab, &cl.ns, &["web1.lab.internal"]).1).filter(|a| !a.is_empty())
    })
    .unwrap();
    assert_eq!(web1, bound);
    assert_eq!(dig(&lab, &cl.ns, &["-x", &bound]).1, "web1.lab.internal.");

    // Another client wanting the same name gets an address, not the name.
    let d2 = lab.bare_node("d2").unwrap();
    lab.exec(
        &d2.ns,
        "busybox",
        &[
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-x",
            "hostname:web1",
            "-s",
            hook.to_str().unwrap(),
        ],
    )
    .unwrap();
    wait_for("the conflict event", Duration::from_secs(10), || {
        let ev = app.cli_ok(&["events", "--limit", "50"]).ok()?;
        ev.contains("dns.conflict").then_some(ev)
    })
    .unwrap();
    assert_eq!(dig(&lab, &cl.ns, &["web1.lab.internal"]).1, bound);

    // RFC 2136: the right key adds a record; a wrong key and no key are refused.
    let right = format!("hmac-sha256:ddns:{SECRET}");
    let add =
        "server 10.213.0.1\nzone lab.internal\nupdate add static1.lab.internal 300 A 10.213.0.99\n\
               update add static1.lab.internal 300 TXT \"kept\"\nsend\n";
    let out = nsupdate(&lab, &cl.ns, Some(&right), add);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dig(&lab, &cl.ns, &["static1.lab.internal"]).1,
        "10.213.0.99"
    );
    let wrong = "hmac-sha256:ddns:d3JvbmctLXdyb25nLS13cm9uZy0td3JvbmctLXdyb25nLQ==";
    let sneak = "server 10.213.0.1\nzone lab.internal\nupdate add sneak.lab.internal 300 A 10.213.0.98\nsend\n";
    let out = nsupdate(&lab, &cl.ns, Some(wrong), sneak);
    assert!(!out.status.success(), "a wrong key was accepted");
    let out = nsupdate(&lab, &cl.ns, None, sneak);
    assert!(!out.status.success(), "an unsigned update was accepted");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("REFUSED")
            || String::from_utf8_lossy(&out.stderr).contains("REFUSED"),
        "{out:?}"
    );
    let (s, _) = dig(&lab, &cl.ns, &["sneak.lab.internal"]);
    assert_eq!(status_of(&s), "NXDOMAIN", "{s}");
    let events = app.cli_ok(&["events", "--limit", "100"]).unwrap();
    assert!(events.contains("dns.update"), "{events}");
    // An update may not take a name a lease holds.
    let steal = "server 10.213.0.1\nzone lab.internal\nupdate add web1.lab.internal 300 A 10.213.0.97\nsend\n";
    assert!(!nsupdate(&lab, &cl.ns, Some(&right), steal).status.success());
    assert_eq!(dig(&lab, &cl.ns, &["web1.lab.internal"]).1, bound);

    // A reservation made at run time is named at once, and unnamed when removed.
    app.cli_ok(&[
        "reservations",
        "add",
        "10.213.0.61",
        "--network",
        "lab",
        "--mac",
        "52:54:00:aa:00:08",
        "--hostname",
        "added",
    ])
    .unwrap();
    assert_eq!(dig(&lab, &cl.ns, &["added.lab.internal"]).1, "10.213.0.61");
    assert_eq!(
        dig(&lab, &cl.ns, &["-x", "10.213.0.61"]).1,
        "added.lab.internal."
    );
    app.cli_ok(&["reservations", "rm", "10.213.0.61"]).unwrap();
    let (s, _) = dig(&lab, &cl.ns, &["added.lab.internal"]);
    assert_eq!(status_of(&s), "NXDOMAIN", "{s}");

    // `netmigrate dns` says where each record came from.
    let v = json(&app.cli_ok(&["dns", "--json"]).unwrap());
    let owner = |name: &str, t: &str| {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && r["type"] == t)
            .map(|r| r["owner"].as_str().unwrap().to_string())
    };
    assert_eq!(
        owner("static1.lab.internal.", "A").as_deref(),
        Some("update")
    );
    assert_eq!(
        owner("web1.lab.internal.", "A"),
        Some(format!("lease lab {bound}"))
    );
    assert_eq!(
        owner("fixed.lab.internal.", "A").as_deref(),
        Some("reservation lab 10.213.0.60")
    );
    let human = app.cli_ok(&["dns"]).unwrap();
    assert!(human.contains("zone lab.internal."), "{human}");

    // Zone transfers: refused to the client, given to the secondary, which follows changes.
    let out = lab
        .exec(
            &cl.ns,
            "dig",
            &["@10.213.0.1", "+time=2", "lab.internal", "AXFR"],
        )
        .unwrap();
    assert!(out.contains("Transfer failed"), "{out}");
    let sec = lab.node("sec", SECONDARY.parse().unwrap()).unwrap();
    let kdir = lab.subdir("knot").unwrap();
    write(
        &kdir.join("knot.conf"),
        &format!(
            "server:\n  rundir: \"{d}\"\n  listen: {SECONDARY}@53\n\
             database:\n  storage: \"{d}\"\n\
             control:\n  listen: \"{d}/knot.sock\"\n\
             remote:\n  - id: primary\n    address: 10.213.0.1@53\n\
             acl:\n  - id: from_primary\n    address: 10.213.0.1\n    action: notify\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    \
             zonefile-load: none\n    journal-content: none\n\
             zone:\n  - domain: lab.internal\n    master: primary\n    acl: from_primary\n",
            d = kdir.display()
        ),
        0o644,
    );
    lab.track(
        "knotd",
        netns::exec(&sec.ns, "knotd").args(["-c", kdir.join("knot.conf").to_str().unwrap()]),
    )
    .unwrap();
    let at_secondary = |name: &str| {
        lab.exec(
            &cl.ns,
            "dig",
            &[
                &format!("@{SECONDARY}"),
                "+short",
                "+time=1",
                "+tries=1",
                name,
            ],
        )
        .unwrap_or_default()
        .trim()
        .to_string()
    };
    wait_for(
        "the secondary's first transfer",
        Duration::from_secs(30),
        || Some(at_secondary("static1.lab.internal")).filter(|a| a == "10.213.0.99"),
    )
    .unwrap();
    let out = nsupdate(
        &lab,
        &cl.ns,
        Some(&right),
        "server 10.213.0.1\nzone lab.internal\nupdate add late.lab.internal 300 A 10.213.0.96\nsend\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the secondary to follow a NOTIFY",
        Duration::from_secs(20),
        || Some(at_secondary("late.lab.internal")).filter(|a| a == "10.213.0.96"),
    )
    .unwrap();

    // Forwarding: for the lab's clients; a source outside the lab networks is refused, though
    // it still gets the lab's own names.
    assert_eq!(dig(&lab, &cl.ns, &["outside.example"]).1, "192.0.2.7");
    lab.exec(
        &cl.ns,
        "ip",
        &["addr", "add", "192.168.77.2/24", "dev", "eth0"],
    )
    .unwrap();
    lab.exec(
        &app.node.ns,
        "ip",
        &["route", "add", "192.168.77.0/24", "dev", "eth0"],
    )
    .unwrap();
    let (s, _) = dig(&lab, &cl.ns, &["-b", "192.168.77.2", "outside.example"]);
    assert_eq!(status_of(&s), "REFUSED", "{s}");
    assert_eq!(
        dig(&lab, &cl.ns, &["-b", "192.168.77.2", "fixed.lab.internal"]).1,
        "10.213.0.60"
    );

    // Garbage is counted and dropped; the server goes on.
    lab.exec(
        &cl.ns,
        "python3",
        &[
            "-c",
            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(b, ('10.213.0.1', 53)) for b in (b'\\x00', b'\\x12\\x34\\x01\\x00\\x00\\x01' + b'\\xff' * 20)]",
        ],
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(dig(&lab, &cl.ns, &["fixed.lab.internal"]).1, "10.213.0.60");
    }
    let v = json(&app.cli_ok(&["dns", "--json"]).unwrap());
    assert!(
        v["stats"]["malformed"].as_u64().unwrap() >= 1,
        "{:#}",
        v["stats"]
    );
    assert!(
        v["stats"]["cache_hits"].as_u64().unwrap() >= 1,
        "{:#}",
        v["stats"]
    );

    // The same counters for Prometheus; the lease in use is counted.
    assert!(
        app.metric("netmigrate_dns_total{kind=\"queries\"}")
            .unwrap()
            >= 20.0
    );
    assert!(
        app.metric("netmigrate_dns_total{kind=\"malformed\"}")
            .unwrap()
            >= 1.0
    );
    assert!(
        app.metric("netmigrate_dhcp_leases{network=\"lab\",state=\"bound\"}")
            .unwrap()
            >= 1.0
    );

    // A released lease takes its names along.
    netmigrate_lab::sys::signal(udhcpc, libc::SIGUSR2);
    wait_for("web1 to leave DNS", Duration::from_secs(10), || {
        let (s, _) = dig(&lab, &cl.ns, &["web1.lab.internal"]);
        (status_of(&s) == "NXDOMAIN").then_some(())
    })
    .unwrap();
    let (s, _) = dig(&lab, &cl.ns, &["-x", &bound]);
    assert_eq!(status_of(&s), "NXDOMAIN", "{s}");

    // A crash: the static records are still served, and the serial has not gone back.
    lab.crash_and_restart(&mut app).unwrap();
    assert_eq!(
        dig(&lab, &cl.ns, &["static1.lab.internal"]).1,
        "10.213.0.99"
    );
    assert_eq!(
        dig(&lab, &cl.ns, &["static1.lab.internal", "TXT"]).1,
        "\"kept\""
    );
    let serial1: u64 = lab
        .exec(
            &cl.ns,
            "dig",
            &["@10.213.0.1", "+short", "lab.internal", "SOA"],
        )
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(serial1 > serial0, "serial {serial1} after {serial0}");
}

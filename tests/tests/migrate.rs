//! The migration engine in the lab: a VM the appliance started on host A moved to host C and
//! back, cold (through the FTP image store) and live, while a client namespace keeps asking it
//! for HTTP; the switch ports, the journal and the refusals checked.

use netmigrate::migrate::{Step, When};
use std::net::SocketAddr;
use std::time::Duration;

use netmigrate_lab::Prober;
use netmigrate_lab::{require_lab, Lab};

mod common;

use common::{
    crash_and_settle, define, json, migrated, one_vm_on_a, placed, ports, runs_on, step_names,
    wait_http, OneVm, BOOT,
};

#[test]
fn a_vm_moves_cold_through_the_store_and_back_live_and_keeps_answering() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    // The operator's after-move script logs each move.
    let moved_log = lab.dir.join("moved.log");
    let script = lab.dir.join("after-move.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", moved_log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The API on the lab network too, for the dashboard.
    let token = lab.dir.join("api.token");
    std::fs::write(&token, "dashboard-token-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config =
        netmigrate_lab::appliance::lab_config(&lab, &lab.appliance_state_dir().unwrap(), &[&a, &c])
            .unwrap()
            + &format!(
                "\n[migration]\nafter_move = \"{}\"\n\n[api]\nlisten = \"10.213.0.1:7070\"\ntoken_file = \"{}\"\n",
                script.display(),
                token.display()
            );
    let app = lab.appliance_with(&config).unwrap();
    let (vm, ip) = define(&app, 1);

    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    let hello = wait_http(&lab, &client.ns, ip);
    assert!(
        hello.contains("hello from vm1 52:54:00:d5:00:15"),
        "{hello}"
    );
    assert!(ports(&a).contains(&"nm-vm1".to_string()));

    // The client sees the VM's gratuitous ARPs: the one that re-points the network must come
    // while the VM is still stopped (sent from its target port, not by the guest).
    let arp_log = lab.dir.join("client-arp.log");
    let sniffer = lab
        .track(
            "client-arp",
            std::process::Command::new("ip").args([
                "netns", "exec", &client.ns, "tcpdump", "-l", "-n", "-e", "-tt", "-i", "any", "arp",
            ]),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Cold: the paper's path, streamed through the image store.
    let probe = Prober::start(
        &client.ns,
        SocketAddr::new(ip.into(), 80),
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
    .unwrap();
    let out = app
        .cli(&["migrate", &vm, "--to", "hostC", "--cold", "--json"])
        .unwrap();
    let report = probe.finish();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    assert_eq!(m["mode"], "cold");
    for s in m["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "done", "{m:#}");
    }
    let steps = step_names(m);
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(sniffer);
    let at = |name: &str| {
        m["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .and_then(|s| s["started_ms"].as_i64())
            .unwrap_or_else(|| panic!("no step {name}: {m:#}")) as f64
            / 1000.0
    };
    let (paused, resumed) = (at("pause source"), at("resume on target"));
    let arps = std::fs::read_to_string(&arp_log).unwrap();
    let garp = format!("who-has {ip} tell {ip}");
    let while_stopped = arps.lines().any(|l| {
        let t: f64 = l
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        l.contains("52:54:00:d5:00:15") && l.contains(&garp) && t > paused && t < resumed
    });
    assert!(
        while_stopped,
        "no gratuitous ARP for {ip} between the pause ({paused}) and the resume ({resumed}):\n{arps}"
    );
    for want in [
        "prepare target",
        "target port",
        "pause source",
        "re-point network",
        "save to image store",
        "load on target",
        "verify checksum",
        "resume on target",
        "stop source",
        "source port",
    ] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    assert!(m["break_ms"].as_i64().unwrap() > 0, "{m:#}");
    assert_eq!(
        std::fs::read_to_string(&moved_log).unwrap(),
        "moved vm1 hostA hostC 52:54:00:d5:00:15 10.213.0.21\n"
    );
    // DNS followed: the step ran, and the VM's name answers with its address from the client.
    assert!(steps.contains(&"after move: dns"), "{steps:?}");
    let dug = lab
        .exec(
            &client.ns,
            "dig",
            &["@10.213.0.1", "+short", "+time=2", "vm1.lab.internal"],
        )
        .unwrap();
    assert_eq!(dug.trim(), ip.to_string());
    // The move's break is in the metrics' histogram.
    assert_eq!(
        app.metric("netmigrate_migration_break_seconds_count{mode=\"cold\"}")
            .unwrap(),
        1.0
    );
    assert!(
        steps.iter().any(|s| s.starts_with("after move: script")),
        "{steps:?}"
    );
    let cold_id = m["id"].as_i64().unwrap().to_string();
    eprintln!("{}", app.cli_ok(&["migrations", &cold_id]).unwrap());
    eprintln!(
        "cold: built-in probe {} ms, client prober {} ms",
        m["break_ms"],
        report.break_time.as_millis()
    );
    assert!(lab
        .curl(&client.ns, &format!("http://{ip}/"))
        .unwrap()
        .contains("hello from vm1"));
    assert!(
        !ports(&a).contains(&"nm-vm1".to_string()),
        "{:?}",
        ports(&a)
    );
    assert!(ports(&c).contains(&"nm-vm1".to_string()));
    let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    assert_eq!(v[0]["host"], "hostC");
    assert_eq!(v[0]["state"], "running");
    // The image went through the store and was published with its checksum.
    let images = json(&app.cli_ok(&["images", "--json"]).unwrap());
    assert_eq!(images[0]["vm"], "vm1");
    assert_eq!(images[0]["state"], "published");

    // Live: back to A, pre-copy straight between the hosts.
    let out = app
        .cli(&["migrate", &vm, "--to", "hostA", "--json"])
        .unwrap();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    assert_eq!(m["mode"], "live");
    eprintln!("live: built-in probe {} ms", m["break_ms"]);
    assert!(std::fs::read_to_string(&moved_log)
        .unwrap()
        .ends_with("moved vm1 hostC hostA 52:54:00:d5:00:15 10.213.0.21\n"));
    // `--plot` draws the move's break from the probe's samples.
    let svg = lab.dir.join("live.svg");
    let id = m["id"].as_i64().unwrap().to_string();
    app.cli_ok(&["migrations", &id, "--plot", svg.to_str().unwrap()])
        .unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("vm1 hostC"));
    assert!(lab
        .curl(&client.ns, &format!("http://{ip}/"))
        .unwrap()
        .contains("hello from vm1"));
    assert!(ports(&a).contains(&"nm-vm1".to_string()));
    assert!(!ports(&c).contains(&"nm-vm1".to_string()));

    // `migrations ID` shows the journal.
    let id = m["id"].as_i64().unwrap().to_string();
    let shown = app.cli_ok(&["migrations", &id]).unwrap();
    assert!(shown.contains("live pre-copy"), "{shown}");

    // The dashboard, in Chromium on the client: what it shows is what the API says.
    let page = netmigrate_lab::dashboard::open(
        &client.ns,
        "http://10.213.0.1:7070/?static#token=dashboard-token-0123456789abcdef",
        &lab.subdir("chromium").unwrap(),
        "dashboard-after-moves.png",
    )
    .unwrap();
    let migrations = json(&app.cli_ok(&["migrations", "--json"]).unwrap());
    let migrations = migrations.as_array().unwrap();
    assert_eq!(page.rows("migrations"), Some(migrations.len()));
    for m in migrations {
        assert!(
            page.has_cell(&m["id"].to_string()),
            "migration {} missing",
            m["id"]
        );
        assert!(page.has_cell(&m["break_ms"].to_string()), "{m:#}");
    }
    assert_eq!(
        page.attr("breaks", "data-bars"),
        Some(migrations.len().to_string())
    );
    let images = json(&app.cli_ok(&["images", "--json"]).unwrap());
    assert_eq!(page.rows("images"), Some(images.as_array().unwrap().len()));
    assert!(page.has_cell("vm1/1"));
    let records = json(&app.cli_ok(&["dns", "--json"]).unwrap());
    assert_eq!(
        page.rows("dns"),
        Some(records["records"].as_array().unwrap().len())
    );
    assert!(page.has_cell("vm1.lab.internal."));
    assert_eq!(page.rows("hosts"), Some(2));
    assert!(page.has_cell("hostA") && page.has_cell("hostC"));
    assert_eq!(page.rows("vms"), Some(1));
    assert!(page.has_cell("10.213.0.21"));
    // Without the token it shows nothing but the error.
    let bare = netmigrate_lab::netns::exec(&client.ns, "curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.213.0.1:7070/v1/migrations",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bare.stdout), "401");

    // Refusals: one clear line each, nothing moved.
    for (args, says) in [
        (vec!["migrate", "vm9", "--to", "hostC"], "no VM named `vm9`"),
        (
            vec!["migrate", "vm1", "--to", "hostZ"],
            "no host named `hostZ`",
        ),
        (
            vec!["migrate", "vm1", "--to", "hostA"],
            "already runs on `hostA`",
        ),
    ] {
        let o = app.cli(&args).unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(lab
        .curl(&client.ns, &format!("http://{ip}/"))
        .unwrap()
        .contains("hello from vm1"));
}

/// The crash matrix: the appliance kills itself (SIGKILL) at a journal step of a cold or a live
/// move; restarted, it settles the move. Each time the VM runs on exactly one host, that host
/// alone has its switch port, the state says so, the client gets its HTTP answer and the
/// appliance's DNS gives the client its address.
#[test]
fn a_crash_at_any_journal_step_leaves_the_vm_running_in_exactly_one_place() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let mut app = lab.appliance(&[&a, &c]).unwrap();
    let (vm, ip) = define(&app, 2);
    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    wait_http(&lab, &client.ns, ip);

    let only = std::env::var("NETMIGRATE_TEST_CRASH_ONLY").ok();
    let cold = [
        Step::PrepareTarget.crash_at(When::After),
        Step::TargetPort.crash_at(When::After),
        Step::PauseSource.crash_at(When::After),
        Step::Repoint.crash_at(When::After),
        Step::SaveToStore.crash_at(When::Before),
        Step::LoadOnTarget.crash_at(When::Before),
        Step::VerifyChecksum.crash_at(When::Before),
        Step::ResumeOnTarget.crash_at(When::Before),
        Step::ResumeOnTarget.crash_at(When::After),
        Step::Announce.crash_at(When::Before),
        Step::ApplianceNeighbour.crash_at(When::After),
        Step::StopSource.crash_at(When::After),
        Step::SourcePort.crash_at(When::Before),
        Step::SourcePort.crash_at(When::After),
        Step::AfterMove("dns").crash_at(When::Before),
    ];
    let live = [
        Step::TargetPort.crash_at(When::After),
        Step::TargetListens.crash_at(When::After),
        Step::LivePreCopy.crash_at(When::Before),
        Step::LivePreCopy.crash_at(When::After),
        Step::TargetRuns.crash_at(When::After),
        Step::Announce.crash_at(When::After),
        Step::StopSource.crash_at(When::Before),
    ];
    let cases: Vec<(&str, &str)> = cold
        .iter()
        .map(|p| ("--cold", p.as_str()))
        .chain(live.iter().map(|p| ("--live", p.as_str())))
        .filter(|(_, p)| only.as_deref().is_none_or(|o| o == *p))
        .collect();
    let mut held = 0;
    for (mode, point) in &cases {
        let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
        let from = v[0]["host"].as_str().unwrap().to_string();
        let to = if from == "hostA" { "hostC" } else { "hostA" };
        let m = crash_and_settle(&lab, &mut app, &vm, to, mode, point);
        if std::env::var_os("NETMIGRATE_TEST_VERBOSE").is_some() {
            let id = m["id"].to_string();
            eprintln!("{}", app.cli_ok(&["migrations", &id]).unwrap());
        }
        let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
        let host = v[0]["host"].as_str().unwrap().to_string();
        let (here, there) = if host == "hostA" { (&a, &c) } else { (&c, &a) };
        let (one_place, ports_right) = placed(here, there, &vm);
        let answers = wait_http(&lab, &client.ns, ip).contains(&format!("hello from {vm}"));
        // Its name still leads to it (the appliance's DNS, asked from the client).
        let dug = lab
            .exec(
                &client.ns,
                "dig",
                &[
                    "@10.213.0.1",
                    "+short",
                    "+time=2",
                    &format!("{vm}.lab.internal"),
                ],
            )
            .unwrap();
        eprintln!(
            "crash at {mode} {point}: {} -> runs on {host}, one place {one_place}, ports {ports_right}, http {answers}, dns {}",
            m["state"],
            dug.trim()
        );
        assert_eq!(dug.trim(), ip.to_string(), "{point}: DNS");
        assert!(one_place, "{point}: {m:#}");
        assert!(
            ports_right,
            "{point}: {:?} / {:?}",
            ports(here),
            ports(there)
        );
        assert_eq!(v[0]["state"], "running", "{point}");
        held += 1;
    }
    eprintln!(
        "crash matrix: {} injection points, {held} held",
        cases.len()
    );
}

/// Faults on the target: each move is refused or rolled back with one clear reason, and the VM
/// goes on running where it was, answering, its port where it belongs.
#[test]
fn faults_on_the_target_roll_back_and_leave_the_vm_where_it_was() {
    require_lab!();
    // The lab first: bindings drop in reverse, so it goes last.
    let OneVm {
        lab,
        a,
        c,
        client,
        app,
        port,
        vm,
        ip,
    } = one_vm_on_a(3);

    let still_on_a = |what: &str| {
        let (one_place, ports_right) = placed(&a, &c, &vm);
        assert!(one_place, "{what}: not in one place");
        assert!(ports_right, "{what}: ports");
        assert!(
            wait_http(&lab, &client.ns, ip).contains("hello from vm3"),
            "{what}"
        );
        let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
        assert_eq!(v[0]["host"], "hostA", "{what}");
        assert_eq!(v[0]["state"], "running", "{what}");
    };
    // A move that starts and is rolled back: the CLI fails, the migration says why.
    let rolled_back = |mode: &str, says: &str| {
        let o = app
            .cli(&[
                "migrate",
                &vm,
                "--to",
                "hostC",
                mode,
                "--no-probe",
                "--json",
            ])
            .unwrap();
        assert!(!o.status.success(), "{says}: the move succeeded");
        let m = &json(&String::from_utf8_lossy(&o.stdout))["migrations"][0];
        assert_eq!(m["state"], "rolled-back", "{m:#}");
        let reason = m["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{says}: {reason}");
        eprintln!("{mode}: rolled back: {reason}");
    };

    // The target hashes what it loaded and gets another checksum than the store's.
    c.fake_tool(
        "openssl",
        "#!/bin/sh\ncat >/dev/null\necho 00000000000000000000000000000000000000000000000000000000000000ff '*stdin'\n",
    )
    .unwrap();
    rolled_back("--cold", "SHA-256");
    c.remove_tool("openssl");
    still_on_a("checksum mismatch");

    // The target's QEMU is fed garbage and refuses the incoming state.
    c.fake_tool("curl", "#!/bin/sh\nhead -c 65536 /dev/urandom\n")
        .unwrap();
    rolled_back("--cold", "refused the incoming state");
    c.remove_tool("curl");
    still_on_a("QEMU refusing the stream");

    // The target's switch refuses the port: another bridge there already has one by its name
    // (OVSDB keeps port names unique), so the transaction fails and the move is undone.
    c.ovs
        .vsctl(&["add-br", "br9", "--", "add-port", "br9", &port])
        .unwrap();
    rolled_back("--live", &port);
    c.ovs.vsctl(&["del-br", "br9"]).unwrap();
    still_on_a("OVS refusing the port");

    // No room: the VM's definition now asks for more memory than hostC has free.
    app.define_guest(3, 1_048_576, 1).unwrap();
    let o = app.cli(&["migrate", &vm, "--to", "hostC"]).unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no room on hostC for vm3"), "{err}");
    app.define_guest(3, 128, 1).unwrap();
    still_on_a("no room");

    // The target is cut off (its switch is down, so nothing reaches it): refused up front.
    lab.stop(c.ovs.vswitchd);
    let o = app
        .cli(&["migrate", &vm, "--to", "hostC", "--live", "--no-probe"])
        .unwrap();
    assert!(
        !o.status.success(),
        "a move to an unreachable host succeeded"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hostC"), "{err}");
    eprintln!("unreachable target: {}", err.trim());
    assert!(runs_on(&a, &vm) && !runs_on(&c, &vm));
    assert!(ports(&a).contains(&port));
    assert!(wait_http(&lab, &client.ns, ip).contains("hello from vm3"));
}

#[test]
fn a_vm_moved_with_a_new_mac_keeps_its_dhcp_address() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let config =
        netmigrate_lab::appliance::lab_config(&lab, &lab.appliance_state_dir().unwrap(), &[&a, &c])
            .unwrap();
    let app = lab.appliance_with(&config).unwrap();
    // A VM that takes its address from the appliance's DHCP (and takes up hot-plugged NICs).
    let (old_mac, new_mac) = ("52:54:00:d5:00:19", "52:54:00:d5:01:19");
    let (k, i) = (
        netmigrate_lab::guest::kernel().unwrap(),
        netmigrate_lab::guest::initramfs().unwrap(),
    );
    app.cli_ok(&[
        "vm",
        "define",
        "vm5",
        "--mem",
        "128",
        "--mac",
        old_mac,
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--append",
        "console=ttyS0 quiet nm_ip=dhcp nm_name=vm5",
    ])
    .unwrap();
    app.cli_ok(&["vm", "start", "vm5", "--on", "hostA"])
        .unwrap();
    let lease_of = |mac: &str| {
        let v = json(&app.cli_ok(&["leases", "--json"]).ok()?);
        v["leases"]
            .as_array()?
            .iter()
            .find(|l| l["mac"] == mac && l["state"] == "bound")
            .and_then(|l| l["ip"].as_str())
            .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
    };
    let ip = netmigrate_lab::sys::wait_for("vm5's lease", BOOT, || lease_of(old_mac)).unwrap();
    let hello = wait_http(&lab, &client.ns, ip);
    assert!(hello.contains("hello from vm5"), "{hello}");

    // Refused before anything moves: a malformed MAC, and its own.
    let bad = app
        .cli(&[
            "migrate",
            "vm5",
            "--to",
            "hostC",
            "--new-mac",
            "vm5=52:54:00",
        ])
        .unwrap();
    assert!(!bad.status.success());
    let own = app
        .cli(&[
            "migrate",
            "vm5",
            "--to",
            "hostC",
            "--new-mac",
            &format!("vm5={old_mac}"),
        ])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("is already its MAC"),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    let out = app
        .cli(&[
            "migrate",
            "vm5",
            "--to",
            "hostC",
            "--new-mac",
            &format!("vm5={new_mac}"),
            "--json",
        ])
        .unwrap();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    let steps = step_names(m);
    for want in ["new mac", "after move: dhcp", "after move: dns"] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    // The definition has the new MAC; the lease went with it, and the guest's new NIC asked
    // for (and got) the same address; the VM answers there, from its new MAC.
    let defs = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    assert_eq!(defs[0]["def"]["mac"], new_mac, "{defs:#}");
    assert_eq!(lease_of(new_mac), Some(ip));
    assert_eq!(lease_of(old_mac), None);
    wait_http(&lab, &client.ns, ip);
    let neigh = lab
        .exec(&client.ns, "ip", &["neigh", "show", &ip.to_string()])
        .unwrap();
    assert!(neigh.contains(new_mac), "the client still sees {neigh}");
    // Its name (from its lease, and the move) points to the address it kept.
    let dug = lab
        .exec(
            &client.ns,
            "dig",
            &["@10.213.0.1", "+short", "+time=2", "vm5.lab.internal"],
        )
        .unwrap();
    assert_eq!(dug.trim(), ip.to_string());
    let events = app.cli_ok(&["events", "--limit", "100"]).unwrap();
    eprintln!(
        "{}",
        app.cli_ok(&["migrations", &m["id"].to_string()]).unwrap()
    );
    assert!(
        events.contains(&format!("old {ip} {new_mac}")),
        "the lease event names the new MAC: {events}"
    );
    eprintln!("break {} ms", m["break_ms"]);
}

/// hostC stops answering (its link is cut) while it loads the VM's state: the move is rolled
/// back, the VM runs on hostA again and answers; with hostC back, the next move there clears
/// what the cut-off one left and succeeds.
#[test]
fn a_target_cut_off_mid_move_leaves_the_vm_running_on_the_source() {
    require_lab!();
    // The lab first: bindings drop in reverse, so it goes last.
    let OneVm {
        lab,
        a,
        c,
        client,
        app,
        port,
        vm,
        ip,
    } = one_vm_on_a(4);
    // hostC's download of the image waits a little: the test cuts hostC off meanwhile.
    c.fake_tool("curl", "#!/bin/sh\nsleep 3\nexec /usr/bin/curl \"$@\"\n")
        .unwrap();
    let started = std::time::Instant::now();
    let out = std::thread::scope(|s| {
        let mv = s.spawn(|| {
            app.cli(&[
                "migrate",
                &vm,
                "--to",
                "hostC",
                "--cold",
                "--no-probe",
                "--json",
            ])
            .unwrap()
        });
        netmigrate_lab::sys::wait_for("the target to start loading", BOOT, || {
            let v = json(&app.cli_ok(&["migrations", "--json"]).ok()?);
            let id = v[0]["id"].as_i64()?;
            let m = json(
                &app.cli_ok(&["migrations", &id.to_string(), "--json"])
                    .ok()?,
            );
            m["steps"]
                .as_array()?
                .iter()
                .any(|s| s["step"] == "load on target")
                .then_some(())
        })
        .unwrap();
        lab.exec(&c.ns, "ip", &["link", "set", "up0", "down"])
            .unwrap();
        mv.join().unwrap()
    });
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "the move succeeded: {text}");
    let m = &json(&text)["migrations"][0];
    assert_eq!(m["state"], "rolled-back", "{m:#}");
    let reason = m["reason"].as_str().unwrap();
    assert!(reason.contains("hostC"), "{reason}");
    eprintln!("cut off after {took:?}: {reason}");
    assert!(runs_on(&a, &vm), "not running on hostA");
    assert!(ports(&a).contains(&port));
    assert!(wait_http(&lab, &client.ns, ip).contains("hello from vm4"));
    let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    assert_eq!(
        (v[0]["host"].as_str(), v[0]["state"].as_str()),
        (Some("hostA"), Some("running"))
    );

    // hostC is back: the next move clears the leftover there and goes through.
    lab.exec(&c.ns, "ip", &["link", "set", "up0", "up"])
        .unwrap();
    c.remove_tool("curl");
    let out = app
        .cli(&["migrate", &vm, "--to", "hostC", "--cold", "--json"])
        .unwrap();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    let (one_place, ports_right) = placed(&c, &a, &vm);
    assert!(one_place, "not in one place");
    assert!(ports_right);
    assert!(wait_http(&lab, &client.ns, ip).contains("hello from vm4"));
    eprintln!(
        "{}",
        app.cli_ok(&["migrations", &m["id"].to_string()]).unwrap()
    );
}

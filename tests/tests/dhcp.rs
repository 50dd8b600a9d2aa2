//! The DHCP server with real clients in lab namespaces: busybox udhcpc and ISC dhclient get
//! addresses from the appliance, renew, release; leases survive a crash of the appliance; a
//! reservation wins over a dynamic lease; acknowledged leases survive a SIGKILL under perfdhcp
//! load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use netmigrate_lab::sys::wait_for;
use netmigrate_lab::{require_lab, Lab};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// A client script that only sets the address in its namespace (never /etc/resolv.conf) and
/// logs what it was told.
fn script(lab: &Lab, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let log = lab.dir.join(format!("{name}.events"));
    let path = lab.dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("#!/bin/sh\nLOG={}\n{body}\n", log.display())).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (path, log)
}

fn udhcpc_script(lab: &Lab) -> (PathBuf, PathBuf) {
    script(
        lab,
        "udhcpc",
        r#"case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface"
               echo "$1 $ip $subnet router=$router dns=$dns domain=$domain lease=$lease" >> "$LOG";;
  deconfig)    ip addr flush dev "$interface";;
  nak)         echo "nak" >> "$LOG";;
esac"#,
    )
}

fn dhclient_script(lab: &Lab) -> (PathBuf, PathBuf) {
    script(
        lab,
        "dhclient",
        r#"case "$reason" in
  PREINIT) ip link set "$interface" up;;
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"
      ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
      echo "$reason $new_ip_address" >> "$LOG";;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface"; echo "$reason" >> "$LOG";;
esac"#,
    )
}

fn addr_of(lab: &Lab, ns: &str) -> Option<String> {
    let out = lab
        .exec(ns, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"])
        .ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or("").to_string())
}

fn lease<'a>(v: &'a serde_json::Value, ip: &str) -> Option<&'a serde_json::Value> {
    v["leases"].as_array()?.iter().find(|l| l["ip"] == ip)
}

fn udhcpc(lab: &Lab, ns: &str, script: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s",
    ];
    let s = script.to_str().unwrap();
    args.push(s);
    args.extend_from_slice(extra);
    lab.exec(ns, "busybox", &args).unwrap()
}

#[test]
fn real_clients_get_renew_and_release_leases_that_survive_a_crash() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let mut config = netmigrate_lab::appliance::network_config(&state_dir);
    config.push_str(
        "\n[[reservation]]\nnetwork = \"lab\"\nmac = \"52:54:00:aa:00:03\"\nip = \"10.213.0.60\"\n",
    );
    // dnsmasq's dhcp-script convention: ACTION MAC IP [HOSTNAME], one call per change.
    let (hook, hook_log) = script(&lab, "lease-hook", r#"echo "$@" >> "$LOG""#);
    config.push_str(&format!("\n[dhcp]\nscript = \"{}\"\n", hook.display()));
    let hook_says = |line: &str| {
        log_says(
            &hook_log,
            &format!("the lease script to say `{line}`"),
            Duration::from_secs(10),
            |l| l == line,
        )
    };
    let mut app = lab.appliance_with(&config).unwrap();

    // udhcpc, with a host name.
    let c1 = lab.bare_node("d1").unwrap();
    let (us, ulog) = udhcpc_script(&lab);
    udhcpc(&lab, &c1.ns, &us, &["-x", "hostname:dhcp-one"]);
    let ip1 = addr_of(&lab, &c1.ns).expect("udhcpc configured no address");
    let told = std::fs::read_to_string(&ulog).unwrap();
    eprintln!("udhcpc: {told}");
    assert!(
        told.starts_with(&format!("bound {ip1} 255.255.255.0 router=10.213.0.1")),
        "{told}"
    );
    assert!(told.contains("lease=3600"), "{told}");
    let ip1_n: u8 = ip1.rsplit('.').next().unwrap().parse().unwrap();
    assert!((150..=199).contains(&ip1_n), "{ip1} outside the range");
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    let l = lease(&v, &ip1).unwrap();
    assert_eq!(l["state"], "bound");
    assert_eq!(l["hostname"], "dhcp-one");
    let mac1 = l["mac"].as_str().unwrap().to_string();
    hook_says(&format!("add {mac1} {ip1} dhcp-one"));
    // It answers from its new address.
    lab.exec(
        &c1.ns,
        "busybox",
        &["ping", "-c", "1", "-W", "2", "10.213.0.1"],
    )
    .unwrap();

    // ISC dhclient: bound, then released.
    let c2 = lab.bare_node("d2").unwrap();
    let (ds, dlog) = dhclient_script(&lab);
    let (lf, pf) = (
        lab.dir.join("dhclient.leases"),
        lab.dir.join("dhclient.pid"),
    );
    let dh = |extra: &[&str]| {
        let mut a = vec![
            "-v",
            "-sf",
            ds.to_str().unwrap(),
            "-lf",
            lf.to_str().unwrap(),
        ];
        a.extend_from_slice(&["-pf", pf.to_str().unwrap()]);
        a.extend_from_slice(extra);
        a.push("eth0");
        lab.exec(&c2.ns, "dhclient", &a)
    };
    dh(&["-1"]).unwrap();
    let ip2 = wait_for("dhclient's address", Duration::from_secs(20), || {
        addr_of(&lab, &c2.ns)
    })
    .unwrap();
    assert_ne!(ip1, ip2);
    assert_eq!(
        lease(&json(&app.cli_ok(&["leases", "--json"]).unwrap()), &ip2).unwrap()["state"],
        "bound"
    );
    // Renew: a second run of dhclient asks for its address again (INIT-REBOOT, then bound).
    dh(&["-x"]).unwrap();
    dh(&["-1"]).unwrap();
    wait_for(
        "dhclient's renewed address",
        Duration::from_secs(20),
        || addr_of(&lab, &c2.ns).filter(|a| *a == ip2),
    )
    .unwrap();
    dh(&["-r"]).unwrap();
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    assert_eq!(lease(&v, &ip2).unwrap()["state"], "released", "{v:#}");
    let l2 = lease(&v, &ip2).unwrap();
    let (mac2, host2) = (
        l2["mac"].as_str().unwrap(),
        l2["hostname"].as_str().unwrap_or(""),
    );
    let with_host = |a: &str| format!("{a} {mac2} {ip2} {host2}").trim_end().to_string();
    let said = hook_says(&with_host("del"));
    assert!(said.lines().any(|l| l == with_host("add")), "{said}");
    // The second dhclient run asked again for the address it held: a renewal.
    assert!(said.lines().any(|l| l == with_host("old")), "{said}");
    let events = app.cli_ok(&["events", "--limit", "200"]).unwrap();
    assert!(events.contains("dhcp.lease"), "{events}");
    eprintln!("dhclient: {}", std::fs::read_to_string(&dlog).unwrap());

    // A crash: every lease is still there, and udhcpc asking again for its address keeps it.
    lab.crash_and_restart(&mut app).unwrap();
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    assert_eq!(lease(&v, &ip1).unwrap()["state"], "bound", "{v:#}");
    assert_eq!(lease(&v, &ip2).unwrap()["state"], "released", "{v:#}");
    lab.exec(&c1.ns, "ip", &["addr", "flush", "dev", "eth0"])
        .unwrap();
    udhcpc(&lab, &c1.ns, &us, &["-x", "hostname:dhcp-one", "-r", &ip1]);
    assert_eq!(addr_of(&lab, &c1.ns).as_deref(), Some(ip1.as_str()));

    // A reservation: this MAC gets its address, not one from the range.
    let c3 = lab.bare_node("d3").unwrap();
    lab.exec(
        &c3.ns,
        "ip",
        &["link", "set", "eth0", "address", "52:54:00:aa:00:03"],
    )
    .unwrap();
    udhcpc(&lab, &c3.ns, &us, &[]);
    assert_eq!(addr_of(&lab, &c3.ns).as_deref(), Some("10.213.0.60"));

    // Garbage on port 67 is counted and dropped; the server goes on answering.
    lab.exec(
        &c1.ns,
        "python3",
        &[
            "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.sendto(b'not a dhcp packet', ('10.213.0.1', 67))",
        ],
    )
    .unwrap();
    let v = wait_for(
        "the malformed packet to be counted",
        Duration::from_secs(10),
        || {
            let v = json(&app.cli_ok(&["leases", "--json"]).ok()?);
            (v["stats"]["malformed"].as_u64()? >= 1).then_some(v)
        },
    )
    .unwrap();
    // Since the restart: udhcpc's INIT-REBOOT and the reserved client.
    assert!(v["stats"]["acks"].as_u64().unwrap() >= 2, "{v:#}");
    eprintln!("{}", app.cli_ok(&["leases"]).unwrap());
}

/// dhcpcd confined to the lab: its lease and control files go to `dir` (bind-mounted in the
/// mount namespace `ip netns exec` makes), its hook is our script (never resolv.conf). The
/// mount points are made if missing: Debian's dhcpcd-base makes /run/dhcpcd only when it runs.
fn dhcpcd(lab: &Lab, ns: &str, dir: &Path, hook: &Path, args: &[&str]) -> std::process::Command {
    let (db, run) = (dir.join("db"), dir.join("run"));
    std::fs::create_dir_all(&db).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let _ = lab;
    let mut c = netmigrate_lab::netns::exec(ns, "sh");
    c.arg("-c")
        .arg(format!(
            "mkdir -p /var/lib/dhcpcd /run/dhcpcd && \
             mount --bind {} /var/lib/dhcpcd && mount --bind {} /run/dhcpcd && exec dhcpcd -4 -f /dev/null -c {} \"$@\"",
            db.display(),
            run.display(),
            hook.display()
        ))
        .arg("dhcpcd")
        .args(args);
    c
}

/// Waits until a line of `log` (a script's record) matches; returns the whole log.
fn log_says(log: &Path, what: &str, timeout: Duration, matches: impl Fn(&str) -> bool) -> String {
    wait_for(what, timeout, || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|t| t.lines().any(&matches))
    })
    .unwrap()
}

fn events_say(log: &Path, what: &str) -> String {
    log_says(
        log,
        &format!("the client to report {what}"),
        Duration::from_secs(30),
        |l| l.starts_with(what),
    )
}

#[test]
fn a_relay_serves_a_second_subnet_to_dhcpcd_and_reservations_change_at_once() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let mut config = netmigrate_lab::appliance::network_config(&state_dir);
    config.push_str(
        "\n[[network]]\nname = \"far\"\nrelay = \"10.214.0.1/24\"\nvia = \"lab\"\n\
         dhcp_range = [\"10.214.0.100\", \"10.214.0.150\"]\nlease_time = \"1h\"\n\
         \n[[reservation]]\nnetwork = \"far\"\nhostname = \"fixed\"\nip = \"10.214.0.9\"\n",
    );
    let app = lab.appliance_with(&config).unwrap();
    // The relay: one leg on the lab network, one on the far segment; the appliance routes
    // its replies to the relay's far address through the relay's lab address.
    let relay = lab.node("rl", "10.213.0.2".parse().unwrap()).unwrap();
    let far = lab.behind("far", &relay, "far0").unwrap();
    netmigrate_lab::netns::add_addr(&relay.ns, "far0", "10.214.0.1".parse().unwrap(), 24).unwrap();
    // Renewals go straight to the appliance (unicast), routed by the relay.
    lab.exec(&relay.ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    lab.exec(
        &app.node.ns,
        "ip",
        &["route", "add", "10.214.0.0/24", "via", "10.213.0.2"],
    )
    .unwrap();
    // ISC dhcrelay, adding option 82 (-a): it drops replies whose agent information does not
    // come back.
    lab.track(
        "dhcrelay",
        netmigrate_lab::netns::exec(&relay.ns, "dhcrelay").args([
            "-4",
            "-d",
            "-a",
            "--no-pid",
            "-id",
            "far0",
            "-iu",
            "eth0",
            "10.213.0.1",
        ]),
    )
    .unwrap();

    // dhcpcd on the far segment: an address from the far range, the relay as its router.
    let dir = lab.subdir("dhcpcd").unwrap();
    let (hook, log) = script(
        &lab,
        "dhcpcd",
        r#"echo "$reason $new_ip_address $new_routers" >> "$LOG""#,
    );
    lab.track(
        "dhcpcd",
        &mut dhcpcd(&lab, &far.ns, &dir, &hook, &["-B", "eth0"]),
    )
    .unwrap();
    let said = events_say(&log, "BOUND");
    let bound = said.lines().find(|l| l.starts_with("BOUND")).unwrap();
    let words: Vec<_> = bound.split_whitespace().collect();
    let ip = words[1].to_string();
    let n: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip.starts_with("10.214.0.") && (100..=150).contains(&n),
        "{bound}"
    );
    assert_eq!(words.get(2), Some(&"10.214.0.1"), "router: {bound}");
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    let l = lease(&v, &ip).unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(
        (l["network"].as_str(), l["state"].as_str()),
        (Some("far"), Some("bound"))
    );
    let mac = l["mac"].as_str().unwrap().to_string();

    // Renew through the relay.
    let ctl = |args: &[&str]| {
        netmigrate_lab::sys::run(&mut dhcpcd(&lab, &far.ns, &dir, &hook, args)).unwrap();
    };
    ctl(&["-N", "eth0"]);
    events_say(&log, &format!("RENEW {ip}"));

    // A reservation made now, for this client, wins over the lease it holds: at its next
    // renewal it is refused, and it comes back with the reserved address. No restart.
    app.cli_ok(&[
        "reservations",
        "add",
        "10.214.0.77",
        "--network",
        "far",
        "--mac",
        &mac,
    ])
    .unwrap();
    let list = app.cli_ok(&["reservations"]).unwrap();
    assert!(
        list.contains("10.214.0.77") && list.contains("runtime"),
        "{list}"
    );
    assert!(
        list.contains("10.214.0.9") && list.contains("config"),
        "{list}"
    );
    ctl(&["-N", "eth0"]);
    events_say(&log, "BOUND 10.214.0.77");
    // Bad input is named; a config reservation is not removed from here.
    let taken = app
        .cli(&[
            "reservations",
            "add",
            "10.214.0.77",
            "--network",
            "far",
            "--hostname",
            "x",
        ])
        .unwrap();
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already reserved"));
    let outside = app
        .cli(&[
            "reservations",
            "add",
            "10.99.0.5",
            "--network",
            "far",
            "--hostname",
            "y",
        ])
        .unwrap();
    assert!(String::from_utf8_lossy(&outside.stderr).contains("outside network `far`"));
    let cfg_rm = app.cli(&["reservations", "rm", "10.214.0.9"]).unwrap();
    assert!(String::from_utf8_lossy(&cfg_rm.stderr).contains("config file"));

    // Release: the lease is released in the appliance.
    ctl(&["-k", "eth0"]);
    events_say(&log, "STOPPED");
    let released = wait_for("the release", Duration::from_secs(10), || {
        let v = json(&app.cli_ok(&["leases", "--json"]).ok()?);
        (lease(&v, "10.214.0.77")?["state"] == "released").then_some(v)
    })
    .unwrap();
    app.cli_ok(&["reservations", "rm", "10.214.0.77"]).unwrap();
    assert!(!app
        .cli_ok(&["reservations"])
        .unwrap()
        .contains("10.214.0.77"));

    // A reload moves the far range; the next client of that network gets an address from the
    // new one, without a restart.
    let text = std::fs::read_to_string(&app.config).unwrap().replace(
        "[\"10.214.0.100\", \"10.214.0.150\"]",
        "[\"10.214.0.200\", \"10.214.0.210\"]",
    );
    std::fs::write(&app.config, text).unwrap();
    let said = app.cli_ok(&["reload"]).unwrap();
    assert!(said.contains("reloaded"), "{said}");
    std::fs::remove_file(&log).unwrap();
    netmigrate_lab::sys::run(&mut dhcpcd(
        &lab,
        &far.ns,
        &dir,
        &hook,
        &["-1", "-t", "20", "eth0"],
    ))
    .unwrap();
    let said = events_say(&log, "BOUND");
    assert!(said.contains("BOUND 10.214.0.20"), "{said}");
    eprintln!("{}", app.cli_ok(&["leases"]).unwrap());
    assert_eq!(released["stats"]["unknown_relay"], 0, "{released:#}");
}

#[test]
fn a_qemu_machine_pxe_boots_into_the_ipxe_script_and_a_used_address_is_not_offered() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let mut config = netmigrate_lab::appliance::network_config(&state_dir);
    config.push_str(
        "\n[dhcp]\nconflict_wait = \"300ms\"\n\n[dhcp.pxe]\nbios = \"undionly.kpxe\"\n\
         uefi = \"ipxe.efi\"\nipxe_script = \"http://10.213.0.1:8089/boot.ipxe\"\n",
    );
    let app = lab.appliance_with(&config).unwrap();

    // A host the server knows nothing of already uses the first address of the range.
    let _squatter = lab.node("sq", "10.213.0.150".parse().unwrap()).unwrap();
    let c = lab.bare_node("c1").unwrap();
    let (us, ulog) = udhcpc_script(&lab);
    // udhcpc as a daemon: SIGUSR1 renews, SIGUSR2 releases.
    let pid = lab
        .track(
            "udhcpc",
            netmigrate_lab::netns::exec(&c.ns, "busybox").args([
                "udhcpc",
                "-i",
                "eth0",
                "-f",
                "-t",
                "5",
                "-T",
                "1",
                "-s",
                us.to_str().unwrap(),
            ]),
        )
        .unwrap();
    let said = |what: &str| {
        log_says(
            &ulog,
            &format!("udhcpc to say {what}"),
            Duration::from_secs(20),
            |l| l.starts_with(what),
        )
    };
    let told = said("bound");
    let got = told.split_whitespace().nth(1).unwrap().to_string();
    assert_ne!(got, "10.213.0.150", "an address in use was offered");
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    assert!(v["stats"]["conflicts"].as_u64().unwrap() >= 1, "{v:#}");
    assert_eq!(
        lease(&v, "10.213.0.150").unwrap()["state"],
        "declined",
        "{v:#}"
    );
    netmigrate_lab::sys::signal(pid, libc::SIGUSR1);
    said(&format!("renew {got}"));
    netmigrate_lab::sys::signal(pid, libc::SIGUSR2);
    wait_for("udhcpc's release", Duration::from_secs(10), || {
        let v = json(&app.cli_ok(&["leases", "--json"]).ok()?);
        (lease(&v, &got)?["state"] == "released").then_some(())
    })
    .unwrap();
    lab.stop(pid);

    // The boot script, served over HTTP beside the appliance: it chains to a second URL, so
    // a request for that one shows iPXE ran what it was given.
    let www = lab.subdir("www").unwrap();
    std::fs::write(
        www.join("boot.ipxe"),
        "#!ipxe\nchain http://10.213.0.1:8089/chained-from-script\n",
    )
    .unwrap();
    lab.track(
        "http",
        netmigrate_lab::netns::exec(&app.node.ns, "python3")
            .args([
                "-m",
                "http.server",
                "8089",
                "--bind",
                "10.213.0.1",
                "--directory",
            ])
            .arg(&www),
    )
    .unwrap();

    // A diskless machine: SeaBIOS, then QEMU's iPXE ROM (-boot n), on a tap bridged to the lab.
    let m = lab.bare_node("pxe").unwrap();
    for args in [
        &["link", "add", "br0", "type", "bridge"][..],
        &["link", "set", "eth0", "master", "br0"],
        &["tuntap", "add", "tap0", "mode", "tap"],
        &["link", "set", "tap0", "master", "br0"],
        &["link", "set", "tap0", "up"],
        &["link", "set", "br0", "up"],
    ] {
        lab.exec(&m.ns, "ip", args).unwrap();
    }
    // e1000: SeaBIOS here does not run the virtio-net ROM.
    let rom = [
        "/usr/lib/ipxe/qemu/pxe-e1000.rom",
        "/usr/share/qemu/pxe-e1000.rom",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("QEMU's iPXE ROM (package ipxe-qemu)");
    lab.track(
        "pxe-machine",
        netmigrate_lab::netns::exec(&m.ns, "qemu-system-x86_64").args([
            "-accel",
            "tcg",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-boot",
            "n",
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device",
            &format!("e1000,netdev=n0,mac=52:54:00:bb:00:01,romfile={rom}"),
        ]),
    )
    .unwrap();
    let http_log = lab.dir.join("http.log");
    let log = wait_for(
        "iPXE to fetch the script and what it chains to",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&http_log)
                .ok()
                .filter(|t| t.contains("GET /chained-from-script"))
        },
    )
    .unwrap();
    assert!(log.contains("GET /boot.ipxe"), "{log}");
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    let booted = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mac"] == "52:54:00:bb:00:01")
        .unwrap_or_else(|| panic!("no lease for the PXE machine: {v:#}"));
    assert_eq!(booted["state"], "bound");
}

#[test]
fn a_lease_nobody_renews_runs_out_and_is_reclaimed() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    // The shortest lease the config takes; the server looks for ended leases every 30 s.
    let config = netmigrate_lab::appliance::network_config(&state_dir)
        .replace("lease_time = \"1h\"", "lease_time = \"1m\"");
    let (hook, hook_log) = script(&lab, "lease-hook", r#"echo "$@" >> "$LOG""#);
    let config = format!("{config}\n[dhcp]\nscript = \"{}\"\n", hook.display());
    let app = lab.appliance_with(&config).unwrap();
    let c = lab.bare_node("c1").unwrap();
    let (us, ulog) = udhcpc_script(&lab);
    // udhcpc gets its lease and quits (-q): nobody renews it.
    udhcpc(&lab, &c.ns, &us, &["-x", "hostname:gone"]);
    let told = std::fs::read_to_string(&ulog).unwrap();
    assert!(told.contains("lease=60"), "{told}");
    let ip = addr_of(&lab, &c.ns).unwrap();
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    let mac = lease(&v, &ip).unwrap()["mac"].as_str().unwrap().to_string();
    let del = format!("del {mac} {ip} gone");
    let said = log_says(
        &hook_log,
        "the lease to run out and be reclaimed",
        Duration::from_secs(120),
        |l| l == del,
    );
    assert!(said.starts_with(&format!("add {mac} {ip} gone")), "{said}");
    let v = json(&app.cli_ok(&["leases", "--json"]).unwrap());
    assert_eq!(lease(&v, &ip).unwrap()["state"], "released", "{v:#}");
    // The address is free again: another client may get it.
    let c2 = lab.bare_node("c2").unwrap();
    udhcpc(&lab, &c2.ns, &us, &["-r", &ip]);
    assert_eq!(addr_of(&lab, &c2.ns), Some(ip));
}

/// The appliance is killed (SIGKILL) under perfdhcp load and started again: every ACK a client
/// received (tcpdump in the clients' namespace) is a lease in the state, and no address was
/// acknowledged to two clients, before or after the restart.
#[test]
fn acknowledged_leases_survive_a_sigkill_under_perfdhcp_load() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let r = netmigrate_lab::dhcp_durability::run(&lab, 300, 6).unwrap();
    eprintln!(
        "durability: {} ACKs before the kill, {} after the restart, {} leases acknowledged, \
         {} in state, {} lost, {} addresses given twice",
        r.acks_before,
        r.acks_after,
        r.acknowledged,
        r.leases_in_state,
        r.lost.len(),
        r.given_twice.len()
    );
    // The run must have loaded both sides of the crash, or it proves nothing.
    assert!(r.acks_before >= 500, "{r:?}");
    assert!(r.acks_after >= 500, "{r:?}");
    assert!(r.lost.is_empty(), "acknowledged leases lost: {:?}", r.lost);
    assert!(r.given_twice.is_empty(), "given twice: {:?}", r.given_twice);
}

/// A second DHCP server (dnsmasq, on a machine of its own on the lab network) started after
/// the appliance's first probe: its answer to a later probe is noticed and reported within
/// two minutes (event, `status`, metric), and the appliance's own server never answered the
/// probe.
#[test]
fn another_dhcp_server_on_the_network_is_reported() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    // The default probe: every minute.
    let app = lab
        .appliance_with(&netmigrate_lab::appliance::network_config(&state_dir))
        .unwrap();
    let quiet = app.cli_ok(&["status"]).unwrap();
    assert!(!quiet.contains("OTHER DHCP SERVERS"), "{quiet}");
    // After the first probe (5 s after the start): the next one, a minute on, must find it.
    std::thread::sleep(Duration::from_secs(8));
    let rogue_ip = "10.213.0.77";
    let node = lab.node("rogue", rogue_ip.parse().unwrap()).unwrap();
    let dir = lab.subdir("rogue").unwrap();
    let mut c = netmigrate_lab::netns::exec(&node.ns, "dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--dhcp-range=10.213.0.230,10.213.0.239,255.255.255.0,1h",
        "--no-ping",
    ])
    .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    let started = std::time::Instant::now();
    lab.track("rogue-dnsmasq", &mut c).unwrap();
    let seen = wait_for(
        "the other DHCP server to be reported",
        Duration::from_secs(120),
        || {
            let ev = app.cli_ok(&["events", "--limit", "100"]).ok()?;
            ev.lines()
                .find(|l| l.contains("dhcp.rogue") && l.contains(rogue_ip))
                .map(str::to_string)
        },
    )
    .unwrap();
    eprintln!("reported after {:?}: {seen}", started.elapsed());
    assert!(
        seen.contains("answers on lab") && seen.contains("to netmigrate's probe"),
        "{seen}"
    );
    assert!(
        seen.split_whitespace()
            .any(|w| w.starts_with("10.213.0.23")),
        "no address from dnsmasq's range: {seen}"
    );
    let status = json(&app.cli_ok(&["status", "--json"]).unwrap());
    let r = &status["dhcp_rogues"][0];
    assert_eq!(
        (&r["server"], &r["networks"][0]),
        (&rogue_ip.into(), &"lab".into()),
        "{status:#}"
    );
    assert!(app
        .cli_ok(&["status"])
        .unwrap()
        .contains("OTHER DHCP SERVERS"));
    let metrics = app.metrics().unwrap();
    assert!(
        metrics.contains("netmigrate_dhcp_rogue_servers 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"netmigrate_dhcp_total{kind="foreign_answers"}"#),
        "{metrics}"
    );
    // The appliance's own server left its probe alone: no lease, no offer held for it.
    let leases = app.cli_ok(&["leases", "--json"]).unwrap();
    assert!(!leases.contains("02:6e:6d:72:6f:67"), "{leases}");
}

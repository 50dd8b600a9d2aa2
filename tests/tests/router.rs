//! The gateway role: with `[router]`, a client on the lab network reaches a server behind the
//! appliance's uplink, and the server sees the appliance's uplink address (source NAT); the
//! rules come with a reload and go with a stop, and forwarding goes back to what it was.

use std::time::Duration;

use netmigrate_lab::appliance::network_config;
use netmigrate_lab::netns;
use netmigrate_lab::{require_lab, Lab};

#[test]
fn the_lab_reaches_the_uplink_through_the_appliance_with_nat() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let base = network_config(&lab.appliance_state_dir().unwrap());
    let app = lab.appliance_with(&base).unwrap();
    // The uplink: a link from the appliance to a "wan" namespace with a web server on it.
    let wan = lab.behind("wan", &app.node, "up0").unwrap();
    lab.exec(
        &app.node.ns,
        "ip",
        &["addr", "add", "192.0.2.1/24", "dev", "up0"],
    )
    .unwrap();
    lab.exec(
        &wan.ns,
        "ip",
        &["addr", "add", "192.0.2.2/24", "dev", "eth0"],
    )
    .unwrap();
    let www = lab.subdir("www").unwrap();
    std::fs::write(www.join("index.html"), "outside\n").unwrap();
    lab.track(
        "wan-http",
        netns::exec(&wan.ns, "python3")
            .args(["-m", "http.server", "--bind", "192.0.2.2", "8080"])
            .current_dir(&www),
    )
    .unwrap();
    let cl = lab.client().unwrap();
    lab.exec(
        &cl.ns,
        "ip",
        &["route", "add", "default", "via", "10.213.0.1"],
    )
    .unwrap();
    let fetch = || {
        netns::exec(&cl.ns, "curl")
            .args(["-sS", "--max-time", "3", "http://192.0.2.2:8080/"])
            .output()
            .unwrap()
    };
    let forwarding = || {
        lab.exec(&app.node.ns, "cat", &["/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(forwarding(), "0");
    assert!(
        !fetch().status.success(),
        "reached the uplink without a router"
    );

    // The router comes with a reload.
    std::fs::write(
        &app.config,
        format!("{base}\n[router]\nuplink = \"up0\"\nnat = true\n"),
    )
    .unwrap();
    let said = app.cli_ok(&["reload"]).unwrap();
    assert!(said.contains("reloaded"), "{said}");
    assert_eq!(forwarding(), "1");
    let got = fetch();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), "outside\n");
    let log = std::fs::read_to_string(lab.dir.join("wan-http.log")).unwrap();
    assert!(log.contains("192.0.2.1 - - "), "the server saw: {log}");
    assert!(!log.contains("10.213.0.100"), "not translated: {log}");

    // A stop takes the rules away and puts forwarding back.
    netmigrate_lab::sys::signal(app.pid, libc::SIGTERM);
    lab.wait_exit(&app, Duration::from_secs(20)).unwrap();
    assert_eq!(forwarding(), "0");
    assert!(!fetch().status.success(), "still routed after the stop");
}

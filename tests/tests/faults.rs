//! Faults in the lab beyond the target's: a lossy switch under the moves. Its own test binary,
//! so it does not share the two cores with the migrate tests' guests.

mod common;

use common::{json, one_vm_on_a, placed, wait_http, OneVm};
use netmigrate_lab::require_lab;

/// A lossy lab switch (3 % of the frames it forwards dropped at random, every way: SSH, the
/// migration stream, the image store, the client's HTTP): a cold move and a live move back both
/// finish, the VM runs in one place and answers; each move's break time is printed with the
/// frames dropped meanwhile.
#[test]
fn moves_over_a_lossy_link_finish_and_keep_the_vm_in_one_place() {
    require_lab!();
    // The lab first: bindings drop in reverse, so it goes last.
    let OneVm {
        lab,
        a,
        c,
        client,
        app,
        port: _,
        vm,
        ip,
    } = one_vm_on_a(6);
    lab.lossy_switch(3).unwrap();
    for (mode, to, here, there) in [("--cold", "hostC", &c, &a), ("--live", "hostA", &a, &c)] {
        let dropped = lab.switch_drops().unwrap();
        let out = app
            .cli(&["migrate", &vm, "--to", to, mode, "--json"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{mode} over a lossy link: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = &json(&text)["migrations"][0];
        assert_eq!(m["state"], "done", "{m:#}");
        let dropped = lab.switch_drops().unwrap() - dropped;
        assert!(dropped > 0, "{mode}: the switch dropped nothing");
        let (one_place, ports_right) = placed(here, there, &vm);
        assert!(one_place, "{mode}: not in one place");
        assert!(ports_right, "{mode}: ports");
        assert!(wait_http(&lab, &client.ns, ip).contains("hello from vm6"));
        let took = m["finished_ms"].as_i64().unwrap() - m["started_ms"].as_i64().unwrap();
        eprintln!(
            "{mode} to {to} with 3 % loss: done, break {} ms, took {took} ms, {dropped} frames dropped",
            m["break_ms"]
        );
    }
    lab.lossy_switch(0).unwrap();
}

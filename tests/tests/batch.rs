//! A batch: the paper's scenario 1 (vm1 and vm2 on host A, vm3 on host B, all to host C) moved
//! by one `netmigrate migrate`, cold, as `make demo` and `make paper` run it: the plan's order
//! kept, each VM's break measured by the built-in probe and by the client's prober, progress
//! followed on the API's notice stream, and the chart drawn.

use netmigrate_lab::paper;
use netmigrate_lab::{require_lab, Lab};

#[test]
fn scenario_1_moves_three_vms_in_the_plans_order_with_breaks_measured_and_drawn() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let app = lab.appliance(&[&a, &b, &c]).unwrap();
    let out = lab.subdir("results").unwrap();

    let sc = &paper::scenarios()[0];
    let r = paper::run(&lab, &app, &client, sc, "cold", Some(&out), &paper::qemu()).unwrap();
    eprintln!("{}", paper::table(std::slice::from_ref(&r), &[]));
    assert_eq!(r.state, "done");
    // Sequential: machine by machine, in the operator's order; one move at a time into C.
    let order: Vec<&str> = r.moved.iter().map(|m| m.vm.as_str()).collect();
    assert_eq!(order, ["vm1", "vm2", "vm3"]);
    for (m, from) in r.moved.iter().zip(["hostA", "hostA", "hostB"]) {
        assert_eq!((m.from.as_str(), m.to.as_str()), (from, "hostC"), "{m:?}");
        assert_eq!(m.state, "done", "{m:?}");
        assert_eq!(m.runs_on, "hostC", "{m:?}");
        let builtin = m.builtin_ms.unwrap();
        assert!(builtin > 0 && builtin < 30_000, "{m:?}");
        assert!(m.client_ms > 0 && m.client_ms < 30_000, "{m:?}");
    }
    for w in r.moved.windows(2) {
        assert!(w[0].migration < w[1].migration);
    }
    // The CLI followed the moves on /v1/watch: one line per finished move.
    for m in &r.moved {
        let line = format!(
            "{} {} -> {}: migration {} done",
            m.vm, m.from, m.to, m.migration
        );
        assert!(r.progress.contains(&line), "{line} not in:\n{}", r.progress);
    }
    // The chart: one row per VM, each with its break.
    let svg = std::fs::read_to_string(r.svg.as_ref().unwrap()).unwrap();
    for m in &r.moved {
        assert!(
            svg.contains(&format!("{} {} -&gt; {}", m.vm, m.from, m.to))
                || svg.contains(&format!("{} {} -> {}", m.vm, m.from, m.to)),
            "{} missing from the chart",
            m.vm
        );
    }
    // The batch is kept: listed, and shown with its moves.
    let shown = app.cli_ok(&["batches", &r.batch.to_string()]).unwrap();
    assert!(shown.contains("done"), "{shown}");
    assert!(app.cli_ok(&["batches"]).unwrap().contains("done"));
    // The runner stopped the VMs after the batch.
    let vms: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["vm", "list", "--json"]).unwrap()).unwrap();
    assert!(vms
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["state"] == "stopped"));
}

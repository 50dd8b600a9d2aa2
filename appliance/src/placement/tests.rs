use proptest::prelude::*;

use super::*;

const GIB: u64 = 1024;

fn host(name: &str, cpus: u64, mem_gib: u64) -> Host {
    Host {
        name: name.into(),
        cap: Res::new(cpus * 1000, mem_gib * GIB, 100 * GIB, 1000),
    }
}

fn vm(name: &str, on: &str, cpus: u64, mem_mib: u64) -> Vm {
    Vm {
        name: name.into(),
        host: on.into(),
        req: Res::new(cpus * 1000, mem_mib, 4 * GIB, 10),
    }
}

fn request(vms: &[&str], targets: &[&str]) -> Request {
    Request {
        vms: vms.iter().map(|s| s.to_string()).collect(),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        ..Request::default()
    }
}

fn order_of(p: &Plan) -> Vec<String> {
    p.moves
        .iter()
        .map(|m| format!("{}:{}->{}", m.vm, m.from, m.to))
        .collect()
}

/// The paper's testbed: two VMs on A, one on B, and C empty.
fn paper() -> Cluster {
    Cluster {
        hosts: vec![host("A", 4, 4), host("B", 4, 4), host("C", 8, 8)],
        vms: vec![
            vm("vm1", "A", 1, 512),
            vm("vm2", "A", 1, 512),
            vm("vm3", "B", 1, 512),
        ],
    }
}

#[test]
fn symmetrical_sequential_moves_machine_by_machine() {
    let mut r = request(&["vm1", "vm2", "vm3"], &["C"]);
    r.mode = Mode::Symmetrical;
    let p = plan(&paper(), &r).unwrap();
    assert_eq!(order_of(&p), ["vm1:A->C", "vm2:A->C", "vm3:B->C"]);
}

#[test]
fn symmetrical_round_robin_takes_one_vm_per_source_in_turn() {
    let mut r = request(&["vm1", "vm2", "vm3"], &["C"]);
    r.mode = Mode::Symmetrical;
    r.order = Order::RoundRobin;
    let p = plan(&paper(), &r).unwrap();
    assert_eq!(order_of(&p), ["vm1:A->C", "vm3:B->C", "vm2:A->C"]);
}

#[test]
fn symmetrical_pairs_sources_with_targets_by_position() {
    let mut c = paper();
    c.hosts.push(host("D", 8, 8));
    let mut r = request(&["vm1", "vm3", "vm2"], &["C", "D"]);
    r.mode = Mode::Symmetrical;
    let p = plan(&c, &r).unwrap();
    assert_eq!(order_of(&p), ["vm1:A->C", "vm2:A->C", "vm3:B->D"]);
    let d = p.decisions.iter().find(|d| d.vm == "vm3").unwrap();
    assert!(d
        .rejected
        .iter()
        .any(|r| &*r.host == "C" && r.why.to_string().contains("not the symmetrical target")));

    r.targets = vec!["C".into(), "D".into(), "A".into()];
    let e = plan(&c, &r).unwrap_err();
    assert!(
        e.to_string().contains("2 source(s) (A, B) but 3 targets"),
        "{e}"
    );
}

/// The paper's first-fit, written straight from its pseudo-code, as the reference.
fn paper_first_fit(cluster: &Cluster, vms: &[String], targets: &[String]) -> Vec<Option<String>> {
    let mut placed: Vec<(String, Res)> = Vec::new(); // (host, sum of REQ placed on it)
    let cap = |m: &str| {
        let h = cluster.hosts.iter().find(|h| h.name == m).unwrap();
        // CAP(m): what the host offers beyond the VMs that stay on it
        let staying = cluster
            .vms
            .iter()
            .filter(|v| v.host == m && !vms.contains(&v.name))
            .fold(Res::default(), |a, v| a.plus(v.req));
        h.cap.minus(staying)
    };
    let mut out = Vec::new();
    for name in vms {
        let v = cluster.vms.iter().find(|v| &v.name == name).unwrap();
        let mut chosen = None;
        for m in targets {
            if *m == v.host {
                continue;
            }
            let sum = placed
                .iter()
                .filter(|(h, _)| h == m)
                .fold(Res::default(), |a, (_, r)| a.plus(*r));
            // CAP(m) >= REQ(vm) + sum of REQ already placed on m
            if v.req.plus(sum).fits(&cap(m)) {
                chosen = Some(m.clone());
                break;
            }
        }
        if let Some(m) = &chosen {
            placed.push((m.clone(), v.req));
        }
        out.push(chosen);
    }
    out
}

#[test]
fn first_fit_reproduces_the_papers_example() {
    // C holds 2 GiB, D 4 GiB: the 1.5 GiB VM takes C, the next two no longer fit there.
    let c = Cluster {
        hosts: vec![host("A", 8, 8), host("C", 4, 2), host("D", 4, 4)],
        vms: vec![
            vm("vm1", "A", 1, 1536),
            vm("vm2", "A", 1, 1024),
            vm("vm3", "A", 1, 1024),
        ],
    };
    let mut r = request(&["vm1", "vm2", "vm3"], &["C", "D"]);
    r.algorithm = Algorithm::FirstFit;
    let p = plan(&c, &r).unwrap();
    let got: Vec<Option<String>> = p.decisions.iter().map(|d| d.to.clone()).collect();
    assert_eq!(got, [Some("C".into()), Some("D".into()), Some("D".into())]);
    assert_eq!(got, paper_first_fit(&c, &r.vms, &r.targets));
    let d2 = &p.decisions[1];
    assert!(d2.rejected.iter().any(|r| &*r.host == "C" && r.why.to_string() == "memory: needs 1024 MiB, 512 MiB free"), "{d2:?}");
}

#[test]
fn best_fit_decreasing_packs_tighter_than_first_fit() {
    // First-fit puts the small VM on the only host big enough for `big`, and strands it.
    let c = Cluster {
        hosts: vec![
            host("A", 16, 16),
            host("T1", 8, 4),
            host("T2", 8, 2),
            host("T3", 8, 2),
        ],
        vms: vec![
            vm("small", "A", 1, 1024),
            vm("big", "A", 1, 4096),
            vm("mid", "A", 1, 2048),
        ],
    };
    let mut r = request(&["small", "big", "mid"], &["T1", "T2", "T3"]);
    r.algorithm = Algorithm::FirstFit;
    let ff = plan(&c, &r).unwrap();
    r.algorithm = Algorithm::BestFit;
    let bf = plan(&c, &r).unwrap();
    assert!(
        ff.unplaced.len() == 1,
        "first-fit strands `big`: {:?}",
        ff.decisions
    );
    assert!(bf.unplaced.is_empty(), "{:?}", bf.decisions);
    // 7 GiB need all three targets; best-fit reaches that optimum.
    assert_eq!(exact::min_targets(&c, &r).unwrap(), Some(3));
    assert_eq!(exact::targets_used(&bf), 3);
}

#[test]
fn headroom_keeps_a_share_free() {
    let c = Cluster {
        hosts: vec![host("A", 8, 8), host("B", 8, 4)],
        vms: vec![vm("vm1", "A", 1, 4096)],
    };
    let mut r = request(&["vm1"], &["B"]);
    assert!(plan(&c, &r).unwrap().unplaced.is_empty());
    r.headroom_pct = 10;
    let e = plan(&c, &r).unwrap_err();
    assert!(
        e.to_string().contains("`vm1` needs") && e.to_string().contains("with 10% headroom"),
        "{e}"
    );
}

#[test]
fn affinity_moves_together_and_anti_affinity_apart() {
    let c = Cluster {
        hosts: vec![host("A", 16, 16), host("B", 8, 8), host("C", 8, 8)],
        vms: vec![
            vm("web1", "A", 1, 1024),
            vm("web2", "A", 1, 1024),
            vm("db", "A", 1, 1024),
            vm("cache", "A", 1, 1024),
        ],
    };
    let mut r = request(&["web1", "web2", "db", "cache"], &["B", "C"]);
    r.rules.anti_affinity = vec![vec!["web1".into(), "web2".into()]];
    r.rules.affinity = vec![vec!["db".into(), "cache".into()]];
    let p = plan(&c, &r).unwrap();
    let to = |v: &str| {
        p.decisions
            .iter()
            .find(|d| d.vm == v)
            .unwrap()
            .to
            .clone()
            .unwrap()
    };
    assert_ne!(to("web1"), to("web2"));
    assert_eq!(to("db"), to("cache"));
    let rejected = &p
        .decisions
        .iter()
        .find(|d| d.vm == "web2")
        .unwrap()
        .rejected;
    assert!(
        rejected
            .iter()
            .any(|r| r.why.to_string().contains("anti-affinity")),
        "{rejected:?}"
    );

    r.rules
        .anti_affinity
        .push(vec!["db".into(), "cache".into()]);
    let e = plan(&c, &r).unwrap_err();
    assert!(matches!(e, PlanError::Contradiction(_)), "{e}");
    assert!(e.to_string().contains("`db` and `cache`"), "{e}");
}

#[test]
fn pinned_and_excluded_hosts() {
    let mut c = paper();
    c.hosts.push(host("D", 8, 8));
    let mut r = request(&["vm1", "vm2"], &["C", "D"]);
    r.rules.pinned = vec![("vm2".into(), "D".into())];
    r.rules.excluded = vec![];
    let p = plan(&c, &r).unwrap();
    assert_eq!(
        p.decisions
            .iter()
            .find(|d| d.vm == "vm2")
            .unwrap()
            .to
            .as_deref(),
        Some("D")
    );

    r.rules.excluded = vec!["D".into()];
    let e = plan(&c, &r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "contradictory rules: VM `vm2` is pinned to `D`, which is excluded"
    );

    r.rules.pinned.clear();
    let p = plan(&c, &r).unwrap();
    assert!(p.decisions.iter().all(|d| d.to.as_deref() == Some("C")));
}

#[test]
fn a_swap_goes_through_a_host_with_room() {
    // A and B are each full; swapping their VMs needs a third host to park one on.
    let c = Cluster {
        hosts: vec![host("A", 2, 2), host("B", 2, 2), host("C", 2, 2)],
        vms: vec![vm("x", "A", 1, 1536), vm("y", "B", 1, 1536)],
    };
    let r = request(&["x", "y"], &["A", "B"]);
    let p = plan(&c, &r).unwrap();
    assert_eq!(order_of(&p), ["x:A->C", "y:B->A", "x:C->B"]);
    assert!(p.moves[0].staging);

    // Without C there is no way, and the error says what waits for what.
    let c2 = Cluster {
        hosts: c.hosts[..2].to_vec(),
        vms: c.vms.clone(),
    };
    let e = plan(&c2, &r).unwrap_err();
    assert!(matches!(e, PlanError::Impossible(_)), "{e}");
    assert!(
        e.to_string()
            .contains("`x` A -> B (memory: needs 1536 MiB, 512 MiB free)"),
        "{e}"
    );
}

#[test]
fn bad_input_is_named() {
    let c = paper();
    assert_eq!(
        plan(&c, &request(&["vm9"], &["C"]))
            .unwrap_err()
            .to_string(),
        "unknown VM `vm9`"
    );
    assert_eq!(
        plan(&c, &request(&["vm1"], &["Z"]))
            .unwrap_err()
            .to_string(),
        "unknown host `Z`"
    );
    let mut big = paper();
    big.vms.push(vm("huge", "A", 2, 32 * GIB));
    let e = plan(&big, &request(&["huge"], &["B", "C"])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("VM `huge` needs cpu 2.00, mem 32768 MiB"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("memory: needs 32768 MiB, 8192 MiB free"),
        "{e}"
    );
    let e = plan(&c, &request(&["vm1", "vm1"], &["C"])).unwrap_err();
    assert_eq!(e.to_string(), "VM `vm1` is listed twice");
}

#[test]
fn fragmented_capacity_leaves_a_vm_where_it_is_with_a_reason() {
    let c = Cluster {
        hosts: vec![host("A", 8, 8), host("B", 8, 2), host("C", 8, 2)],
        vms: vec![
            vm("a", "A", 1, 1536),
            vm("b", "A", 1, 1536),
            vm("c", "A", 1, 1536),
        ],
    };
    let p = plan(&c, &request(&["a", "b", "c"], &["B", "C"])).unwrap();
    assert_eq!(p.unplaced.len(), 1);
    assert!(p.unplaced[0]
        .reason
        .contains("stays on `A`: no target has room"));
    assert_eq!(p.moves.len(), 2);
}

// ---- properties -------------------------------------------------------------------------

fn arb_cluster() -> impl Strategy<Value = (Cluster, Request)> {
    let hosts = prop::collection::vec((1u64..8, 1u64..8), 2..5);
    (
        hosts,
        prop::collection::vec((0usize..5, 1u64..3, 128u64..3000), 1..8),
        any::<bool>(),
        any::<bool>(),
        0u8..30,
    )
        .prop_map(|(hs, vs, ff, rr, headroom)| {
            let hosts: Vec<Host> = hs
                .iter()
                .enumerate()
                .map(|(i, (c, m))| host(&format!("h{i}"), *c, *m))
                .collect();
            let vms: Vec<Vm> = vs
                .iter()
                .enumerate()
                .map(|(i, (h, c, m))| vm(&format!("v{i}"), &hosts[h % hosts.len()].name, *c, *m))
                .collect();
            // Move every VM of the first half of the hosts; target the rest and the first.
            let half = hosts.len().div_ceil(2);
            let moving: Vec<String> = vms
                .iter()
                .filter(|v| hosts[..half].iter().any(|h| h.name == v.host))
                .map(|v| v.name.clone())
                .collect();
            let targets: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
            let req = Request {
                vms: moving,
                targets,
                algorithm: if ff {
                    Algorithm::FirstFit
                } else {
                    Algorithm::BestFit
                },
                order: if rr {
                    Order::RoundRobin
                } else {
                    Order::Sequential
                },
                headroom_pct: headroom,
                ..Request::default()
            };
            (Cluster { hosts, vms }, req)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_host_over_capacity_at_any_step_and_each_vm_decided_once((c, r) in arb_cluster()) {
        prop_assume!(!r.vms.is_empty());
        let p = match plan(&c, &r) {
            Ok(p) => p,
            // Refusals must be for a named reason, never a panic.
            Err(PlanError::TooBig { .. } | PlanError::Impossible(_) | PlanError::Invalid(_) | PlanError::Contradiction(_)) => return Ok(()),
            Err(e) => panic!("unexpected {e}"),
        };
        // Each requested VM decided exactly once; unplaced ones carry a reason and no move.
        for v in &r.vms {
            prop_assert_eq!(p.decisions.iter().filter(|d| &d.vm == v).count(), 1);
        }
        for u in &p.unplaced {
            prop_assert!(u.to.is_none() && !u.reason.is_empty());
            prop_assert!(!p.moves.iter().any(|m| m.vm == u.vm));
        }
        // Replay the moves: no host over its capacity at any step.
        let mut at: std::collections::HashMap<&str, &str> = c.vms.iter().map(|v| (v.name.as_str(), v.host.as_str())).collect();
        let load = |at: &std::collections::HashMap<&str, &str>, h: &str| {
            c.vms.iter().filter(|v| at[v.name.as_str()] == h).fold(Res::default(), |a, v| a.plus(v.req))
        };
        let initially_over: Vec<&str> = c.hosts.iter().filter(|h| !load(&at, &h.name).fits(&h.cap)).map(|h| h.name.as_str()).collect();
        for m in &p.moves {
            prop_assert_eq!(at[m.vm.as_str()], m.from.as_str());
            at.insert(m.vm.as_str(), m.to.as_str());
            let h = c.hosts.iter().find(|h| h.name == m.to).unwrap();
            prop_assert!(initially_over.contains(&h.name.as_str()) || load(&at, &h.name).fits(&h.cap),
                "{} over capacity after moving {}", h.name, m.vm);
        }
        // The VMs end where their decision says.
        for d in &p.decisions {
            let home = c.vms.iter().find(|v| v.name == d.vm).unwrap().host.as_str();
            prop_assert_eq!(at[d.vm.as_str()], d.to.as_deref().unwrap_or(home));
        }
    }

    #[test]
    fn first_fit_matches_the_papers_pseudo_code((c, mut r) in arb_cluster()) {
        prop_assume!(!r.vms.is_empty());
        r.algorithm = Algorithm::FirstFit;
        r.headroom_pct = 0;
        // The pseudo-code knows no cycle-breaking: compare the placement, not the order.
        if let Ok(p) = plan(&c, &r) {
            let reference = paper_first_fit(&c, &r.vms, &r.targets);
            // With everything placed in one pass, the two must agree VM by VM.
            if reference.iter().all(Option::is_some) {
                let got: Vec<Option<String>> = r.vms.iter().map(|v| p.decisions.iter().find(|d| &d.vm == v).unwrap().to.clone()).collect();
                prop_assert_eq!(got, reference);
            }
        }
    }

    #[test]
    fn the_exact_solver_is_never_beaten((c, mut r) in arb_cluster()) {
        prop_assume!(!r.vms.is_empty() && r.vms.len() <= 8 && r.targets.len() <= 4);
        r.order = Order::Sequential;
        let Ok(opt) = exact::min_targets(&c, &r) else { return Ok(()) };
        for alg in [Algorithm::FirstFit, Algorithm::BestFit] {
            r.algorithm = alg;
            if let Ok(p) = plan(&c, &r) {
                if p.unplaced.is_empty() {
                    let opt = opt.expect("a packer placed all, so a placement exists");
                    prop_assert!(exact::targets_used(&p) >= opt);
                }
            }
        }
    }
}

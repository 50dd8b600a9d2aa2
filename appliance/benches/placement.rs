//! `make bench-placement`: planning speed at scale, and how many hosts each packer uses against
//! the optimum on small random instances.

use std::time::Instant;

use netmigrate::placement::{exact, plan, Algorithm, Cluster, Host, Order, Request, Res, Vm};

/// xorshift64*: reproducible instances without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// `n_src` source hosts holding `n_vms` VMs, and `n_dst` empty targets.
fn instance(
    rng: &mut Rng,
    n_vms: usize,
    n_src: usize,
    n_dst: usize,
    dst_mem: (u64, u64),
) -> (Cluster, Request) {
    let mut hosts = Vec::new();
    for i in 0..n_src {
        hosts.push(Host {
            name: format!("s{i}"),
            cap: Res::new(1_000_000, 1 << 30, 1 << 30, 100_000),
        });
    }
    let mut targets = Vec::new();
    for i in 0..n_dst {
        let mem = rng.range(dst_mem.0, dst_mem.1) * 1024;
        hosts.push(Host {
            name: format!("t{i}"),
            cap: Res::new(rng.range(8, 65) * 1000, mem, 2_000_000, 10_000),
        });
        targets.push(format!("t{i}"));
    }
    let vms: Vec<Vm> = (0..n_vms)
        .map(|i| Vm {
            name: format!("vm{i}"),
            host: format!("s{}", i % n_src),
            req: Res::new(
                rng.range(1, 9) * 500,
                rng.range(1, 17) * 512,
                rng.range(1, 41) * 1024,
                rng.range(1, 101) * 10,
            ),
        })
        .collect();
    let req = Request {
        vms: vms.iter().map(|v| v.name.clone()).collect(),
        targets,
        ..Request::default()
    };
    (Cluster { hosts, vms }, req)
}

fn main() {
    let mut rng = Rng(0x6e65_746d_6967_7261);

    println!("planning 1,000 VMs onto 100 hosts (median of 7 runs, release build):");
    let (cluster, mut req) = instance(&mut rng, 1000, 10, 100, (48, 129));
    for (name, alg) in [
        ("first-fit", Algorithm::FirstFit),
        ("best-fit-decreasing", Algorithm::BestFit),
    ] {
        req.algorithm = alg;
        req.order = Order::RoundRobin;
        let mut times = Vec::new();
        let mut p = None;
        for _ in 0..7 {
            let t = Instant::now();
            p = Some(plan(&cluster, &req).expect("plan"));
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = p.unwrap();
        println!(
            "  {name:<20} {:>7.2} ms   placed {} / 1000, targets used {}, moves {}",
            times[3],
            1000 - p.unplaced.len(),
            exact::targets_used(&p),
            p.moves.len()
        );
    }

    println!(
        "\n200 random small instances (<= 8 VMs x 4 targets): targets used, and gap to the optimum"
    );
    let (mut n, mut sum_ff, mut sum_bf, mut sum_opt) = (0, 0, 0, 0);
    let (mut ff_opt, mut bf_opt, mut ff_all, mut bf_all, mut feasible) = (0, 0, 0, 0, 0);
    while n < 200 {
        let n_vms = rng.range(3, 9) as usize;
        let (c, mut r) = instance(&mut rng, n_vms, 2, 4, (8, 25));
        let Ok(opt) = exact::min_targets(&c, &r) else {
            continue;
        };
        n += 1;
        let Some(opt) = opt else { continue };
        feasible += 1;
        r.algorithm = Algorithm::FirstFit;
        let ff = plan(&c, &r).ok();
        r.algorithm = Algorithm::BestFit;
        let bf = plan(&c, &r).ok();
        let used = |p: &Option<netmigrate::placement::Plan>| {
            p.as_ref()
                .filter(|p| p.unplaced.is_empty())
                .map(exact::targets_used)
        };
        if let (Some(f), Some(b)) = (used(&ff), used(&bf)) {
            sum_ff += f;
            sum_bf += b;
            sum_opt += opt;
            ff_opt += usize::from(f == opt);
            bf_opt += usize::from(b == opt);
        }
        ff_all += usize::from(used(&ff).is_some());
        bf_all += usize::from(used(&bf).is_some());
    }
    println!("  instances {n}, of which all VMs fit somehow: {feasible}");
    println!("  placed every VM: first-fit {ff_all}, best-fit-decreasing {bf_all} (of {feasible})");
    println!(
        "  where both placed all: targets used first-fit {sum_ff}, best-fit-decreasing {sum_bf}, optimum {sum_opt}"
    );
    println!("  reached the optimum: first-fit {ff_opt}, best-fit-decreasing {bf_opt}");
}

//! `netmigrate-lab`: the demo lab and the cleanup of killed runs.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use netmigrate_lab::{cleanup, paper, GuestSpec, Lab};

#[derive(Parser)]
#[command(
    name = "netmigrate-lab",
    about = "The netmigrate test lab (network namespaces, sshd, Open vSwitch, QEMU guests)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the demo lab (the appliance, hosts A, B, C with sshd and Open vSwitch, a client),
    /// start vm1 and vm2 on A and vm3 on B through the appliance, and run the paper's scenario
    /// 1 (all to C), cold then live, printing each VM's break; tear down.
    Demo {
        /// Keep the lab up until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Benchmark the inventory: `netmigrate hosts collect` over N lab hosts (cold, then with
    /// the kept connections), next to a sequential OpenSSH loop over the same hosts.
    BenchInventory {
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Repetitions of each measurement (the median is shown).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Benchmark the FTP image store: 1 GiB up and down with curl, netmigrate and vsftpd side
    /// by side in one run, next to the raw TCP ceiling of the lab's links (iperf3).
    BenchFtp {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Benchmark live moves with a local disk: a 128 MiB guest on a 1 GiB qcow2 holding 256 MiB,
    /// moved by netmigrate, by hand over QMP (mirror + migrate) and, without a disk, by
    /// netmigrate, between the same hosts in one run.
    BenchDisk {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Benchmark cold moves with a local disk on nested Xen: a 128 MiB PVH guest on a 1 GiB raw
    /// disk holding 256 MiB, moved by netmigrate and by hand (xl save, tar --sparse through
    /// zstd and ssh, xl restore) between the same two Xen hosts in one run.
    BenchDiskXen {
        /// Rounds, each a move there and back by each.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Benchmark auto-deployment: a bare machine to a Xen host running a VM, stage by stage,
    /// deployed by netmigrate and by hand (the installer, dd over ssh, a power cycle) in one run.
    BenchDeploy {
        /// Rounds, each a deployment by each.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// The paper's five scenarios, cold and live, next to the hand-driven QEMU baseline run in
    /// the same invocation: a table, JSON and one SVG chart per run in the results directory.
    Paper {
        #[arg(long, default_value = "results")]
        out: std::path::PathBuf,
        /// Scenarios to run (1-5), comma-separated.
        #[arg(long, default_value = "1,2,3,4,5", value_delimiter = ',')]
        scenarios: Vec<u8>,
        /// Modes to run, comma-separated.
        #[arg(long, default_value = "cold,live", value_delimiter = ',')]
        modes: Vec<String>,
        /// Hand-driven baseline moves per mode.
        #[arg(long, default_value_t = 3)]
        baseline_runs: usize,
    },
    /// The paper's scenario 1 on nested Xen hosts, cold and live, next to a hand-driven
    /// `xl save` + copy + `xl restore` and a hand-driven `xl migrate` in the same run.
    PaperXen {
        #[arg(long, default_value = "results/xen")]
        out: std::path::PathBuf,
    },
    /// Benchmark the DHCP server: perfdhcp (full DORA) against netmigrate, Kea (memfile,
    /// persist) and dnsmasq, each fresh per offered rate, in one run.
    BenchDhcp {
        /// Offered rates (exchanges/s), comma-separated.
        #[arg(long, default_value = "1000,4000,8000,12000", value_delimiter = ',')]
        rates: Vec<u32>,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        secs: u32,
        /// Simulated clients.
        #[arg(long, default_value_t = 60000)]
        clients: u32,
    },
    /// Benchmark the DNS server: dnsperf against netmigrate, dnsmasq and Knot serving the same
    /// 1,000-name zone, in one run.
    BenchDns {
        /// Seconds per run.
        #[arg(long, default_value_t = 20)]
        secs: u32,
        /// dnsperf client sockets.
        #[arg(long, default_value_t = 10)]
        clients: u32,
    },
    /// Build the gateway VM image (kernel + initramfs with netmigrate as its service).
    ApplianceImage {
        /// Where vmlinuz and appliance.cpio.gz go.
        #[arg(long, default_value = "target/appliance-image")]
        out: std::path::PathBuf,
    },
    /// Remove namespaces and run directories left by lab runs that were killed.
    Cleanup {
        /// Also remove labs whose run is still alive.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Demo { hold } => demo(hold),
        Cmd::BenchDhcp {
            rates,
            secs,
            clients,
        } => bench_dhcp(&rates, secs, clients),
        Cmd::BenchDns { secs, clients } => bench_dns(secs, clients),
        Cmd::ApplianceImage { out } => netmigrate_lab::netmigrate_bin().and_then(|bin| {
            let (k, i) = netmigrate_lab::appliance_image::build(&out, &bin)?;
            println!("{}\n{}", k.display(), i.display());
            println!(
                "boot: qemu-system-x86_64 -m 512 -kernel {} -initrd {} -append \"console=ttyS0 \
                 netmigrate.addr=eth0:10.0.0.1/24\" -drive file=config.tar,if=virtio,format=raw \
                 -netdev tap,id=n0,ifname=TAP,script=no -device virtio-net-pci,netdev=n0 -nographic",
                k.display(),
                i.display()
            );
            Ok(())
        }),
        Cmd::Paper {
            out,
            scenarios,
            modes,
            baseline_runs,
        } => paper(&out, &scenarios, &modes, baseline_runs),
        Cmd::PaperXen { out } => netmigrate_lab::paper_xen::run_all(&out).map(|table| {
            println!("{table}");
            println!("results in {}", out.display());
        }),
        Cmd::BenchInventory { hosts, runs } => bench_inventory(hosts, runs),
        Cmd::BenchFtp { mib, runs } => bench_ftp(mib, runs),
        Cmd::BenchDisk { runs } => netmigrate_lab::bench_disk::run_all(runs).map(|t| println!("{t}")),
        Cmd::BenchDiskXen { runs } => {
            netmigrate_lab::bench_disk_xen::run_all(runs).map(|t| println!("{t}"))
        }
        Cmd::BenchDeploy { runs } => {
            netmigrate_lab::bench_deploy::run_all(runs).map(|t| println!("{t}"))
        }
        Cmd::Cleanup { all } => {
            let removed = cleanup::cleanup(all);
            if removed.is_empty() {
                println!("nothing to clean up");
            } else {
                println!("removed lab(s): {}", removed.join(", "));
            }
            Ok(())
        }
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmigrate-lab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or TERM: tear the lab down by its prefix, then exit (Drop does not run on exit()).
fn teardown_on_signal(prefix: String) -> Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("\nsignal {sig}: tearing down lab {prefix}");
            cleanup::remove_prefix(&prefix);
            // Reap our children (now dead) so none lingers as a zombie.
            // SAFETY: waitpid with WNOHANG on any child; no memory is shared.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            std::process::exit(130);
        }
    });
    Ok(())
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    eprint!("{what} ... ");
    let r = f();
    match &r {
        Ok(_) => eprintln!("ok ({:.1}s)", t.elapsed().as_secs_f64()),
        Err(_) => eprintln!("FAILED"),
    }
    r
}

/// The lab the demo and the paper run on: hosts A, B, C, the appliance managing them, a client.
struct PaperLab {
    hosts: Vec<netmigrate_lab::Host>,
    app: netmigrate_lab::Appliance,
    client: netmigrate_lab::Node,
    // Last: dropped after what runs in it, tearing it all down.
    lab: Lab,
}

fn paper_lab() -> Result<PaperLab> {
    let lab = step("creating the lab switch", Lab::new)?;
    teardown_on_signal(lab.prefix.clone())?;
    eprintln!("lab prefix {} (run dir {})", lab.prefix, lab.dir.display());
    let mut hosts = Vec::new();
    for h in ["A", "B", "C"] {
        hosts.push(step(
            &format!("host {h}: namespace, sshd, Open vSwitch"),
            || lab.host(h),
        )?);
    }
    let app = step("appliance: netmigrate serve", || {
        lab.appliance(&hosts.iter().collect::<Vec<_>>())
    })?;
    let client = step("client namespace", || lab.client())?;
    Ok(PaperLab {
        lab,
        hosts,
        app,
        client,
    })
}

fn demo(hold: bool) -> Result<()> {
    let t0 = Instant::now();
    let p = paper_lab()?;
    println!("\n$ netmigrate status");
    print!("{}", p.app.cli_ok(&["status"])?);
    let sc = &paper::scenarios()[0];
    let mut runs = Vec::new();
    for mode in ["cold", "live"] {
        println!("\n{} -- {mode}", sc.describe());
        println!("$ netmigrate migrate vm1 vm2 vm3 --to hostC --{mode}");
        let r = paper::run(&p.lab, &p.app, &p.client, sc, mode, None, &paper::qemu())?;
        print!("{}", p.app.cli_ok(&["batches", &r.batch.to_string()])?);
        runs.push(r);
    }
    println!("\nPer-VM service break (built-in probe and the client namespace's prober):");
    print!("{}", paper::table(&runs, &[]));
    println!("\ndemo done in {:.1}s", t0.elapsed().as_secs_f64());
    if hold {
        println!("holding the lab; Ctrl-C tears it down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    eprintln!("tearing down lab {}", p.lab.prefix);
    Ok(())
}

fn paper(
    out: &std::path::Path,
    scenarios: &[u8],
    modes: &[String],
    baseline_runs: usize,
) -> Result<()> {
    let all = paper::scenarios();
    for n in scenarios {
        anyhow::ensure!(all.iter().any(|s| s.n == *n), "no scenario {n}: 1 to 5");
    }
    for m in modes {
        anyhow::ensure!(m == "cold" || m == "live", "mode {m}: cold or live");
    }
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    let p = paper_lab()?;
    let mut runs = Vec::new();
    for sc in all.iter().filter(|s| scenarios.contains(&s.n)) {
        for mode in modes {
            let r = step(&format!("{} -- {mode}", sc.describe()), || {
                paper::run(
                    &p.lab,
                    &p.app,
                    &p.client,
                    sc,
                    mode,
                    Some(&out),
                    &paper::qemu(),
                )
            })?;
            paper::print_moved(&r);
            runs.push(r);
        }
    }
    // The same load as in the scenarios: two more guests beside the one moved by hand, ...
    let background = [
        p.lab.guest(&p.hosts[0], GuestSpec::numbered(7))?,
        p.lab.guest(&p.hosts[1], GuestSpec::numbered(8))?,
    ];
    // ... each asked by the client as in the scenarios.
    let load = background
        .iter()
        .map(|g| {
            netmigrate_lab::Prober::start(
                &p.client.ns,
                std::net::SocketAddr::new(g.spec.ip.into(), 80),
                Duration::from_millis(10),
                Duration::from_millis(100),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut baseline = Vec::new();
    for mode in modes {
        let mut ms = Vec::new();
        for i in 0..baseline_runs {
            // A hand-driven move that fails (TCG on a busy machine) is tried again, twice at
            // most, rather than losing the whole run's figures.
            let mut tries = 0;
            let b = loop {
                let r = step(
                    &format!("hand-driven QEMU baseline, {mode}, run {}", i + 1),
                    || {
                        netmigrate_lab::hand::baseline(
                            &p.lab,
                            &p.hosts[0],
                            &p.hosts[2],
                            &p.client,
                            mode,
                        )
                    },
                );
                tries += 1;
                match r {
                    Err(e) if tries < 3 => eprintln!("    {e:#}; again"),
                    r => break r?,
                }
            };
            eprintln!("    break {b} ms");
            ms.push(b);
        }
        baseline.push((format!("{mode} (A -> C)"), ms));
    }
    for (g, l) in background.into_iter().zip(load) {
        l.finish();
        p.lab.stop(g.pid);
    }
    let table = paper::table(&runs, &baseline);
    std::fs::write(out.join("table.md"), &table)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "runs": runs,
            "baseline": baseline,
        }))?,
    )?;
    println!("{table}");
    println!("results in {}", out.display());
    Ok(())
}

/// `a / b` for a results table, "-" when there is no `b` to compare with.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn bench_dns(secs: u32, clients: u32) -> Result<()> {
    anyhow::ensure!(
        (1..=120).contains(&secs) && (1..=100).contains(&clients),
        "1 to 120 s per run, 1 to 100 clients"
    );
    let runs = netmigrate_lab::bench_dns::run(secs, clients)?;
    println!("| queries | netmigrate q/s (lost) | dnsmasq q/s (lost) | Knot q/s (lost) | netmigrate / dnsmasq | netmigrate / Knot |");
    println!("|---|---:|---:|---:|---:|---:|");
    for mix in ["hit", "nx10"] {
        let of = |s: &str| runs.iter().find(|r| r.server == s && r.mix == mix);
        let (Some(n), Some(d), Some(k)) = (of("netmigrate"), of("dnsmasq"), of("knot")) else {
            continue;
        };
        println!(
            "| {mix} | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) | {} | {} |",
            n.qps,
            n.lost,
            d.qps,
            d.lost,
            k.qps,
            k.lost,
            ratio(n.qps, d.qps),
            ratio(n.qps, k.qps)
        );
    }
    for r in &runs {
        println!("{} {}: {}", r.server, r.mix, r.codes);
    }
    Ok(())
}

fn bench_dhcp(rates: &[u32], secs: u32, clients: u32) -> Result<()> {
    anyhow::ensure!(
        rates.iter().all(|r| (1..=20_000).contains(r)) && (1..=60).contains(&secs),
        "rates 1 to 20000/s, 1 to 60 s per step"
    );
    let steps = netmigrate_lab::bench_dhcp::run(rates, secs, clients)?;
    println!("| offered /s | netmigrate DORA/s (drops) | Kea persist (drops) | dnsmasq (drops) | netmigrate / Kea | netmigrate / dnsmasq |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for rate in rates {
        let of = |s: &str| steps.iter().find(|x| x.server == s && x.offered == *rate);
        let (Some(n), Some(k), Some(d)) = (of("netmigrate"), of("kea"), of("dnsmasq")) else {
            continue;
        };
        println!(
            "| {rate} | {:.0} ({:.1} %) | {:.0} ({:.1} %) | {:.0} ({:.1} %) | {} | {} |",
            n.dora_per_s,
            n.drops_pct(),
            k.dora_per_s,
            k.drops_pct(),
            d.dora_per_s,
            d.drops_pct(),
            ratio(n.dora_per_s, k.dora_per_s),
            ratio(n.dora_per_s, d.dora_per_s)
        );
    }
    let best = |s: &str| {
        steps
            .iter()
            .filter(|x| x.server == s)
            .map(|x| x.dora_per_s)
            .fold(0.0, f64::max)
    };
    println!(
        "best: netmigrate {:.0} DORA/s, Kea {:.0}, dnsmasq {:.0}",
        best("netmigrate"),
        best("kea"),
        best("dnsmasq")
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench_inventory(n: usize, runs: usize) -> Result<()> {
    anyhow::ensure!((1..=60).contains(&n), "--hosts must be 1 to 60");
    let lab = step("creating the lab switch", Lab::new)?;
    teardown_on_signal(lab.prefix.clone())?;
    let names: Vec<String> = (0..n)
        .map(|i| ((b'A' + (i % 26) as u8) as char).to_string() + &(i / 26).to_string())
        .collect();
    let hosts = step(&format!("{n} hosts with sshd and Open vSwitch"), || {
        names
            .iter()
            .map(|h| lab.host(h))
            .collect::<Result<Vec<_>>>()
    })?;
    let refs: Vec<&netmigrate_lab::Host> = hosts.iter().collect();
    let app = step("appliance", || lab.appliance(&refs))?;

    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    // Cold: the first collection opens every connection.
    let cold = time(&|| app.cli_ok(&["hosts", "collect"]).map(|_| ()))?;
    let mut warm = Vec::new();
    for _ in 0..runs {
        warm.push(time(&|| app.cli_ok(&["hosts", "collect"]).map(|_| ()))?);
    }
    // The paper's way: one ssh login per host, one after another.
    let key = lab.client_key()?;
    let known = lab.dir.join("bench_known_hosts");
    std::fs::write(
        &known,
        hosts
            .iter()
            .map(|h| format!("{} {}\n", h.ip, h.host_key.public))
            .collect::<String>(),
    )?;
    let mut seq = Vec::new();
    for _ in 0..runs {
        seq.push(time(&|| {
            for h in &hosts {
                lab.exec(
                    &app.node.ns,
                    "ssh",
                    &[
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "StrictHostKeyChecking=yes",
                        "-o",
                        &format!("UserKnownHostsFile={}", known.display()),
                        "-i",
                        &key.private.display().to_string(),
                        &format!("root@{}", h.ip),
                        "nproc; free; df",
                    ],
                )?;
            }
            Ok(())
        })?);
    }
    let per_host: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["hosts", "collect", "--json"])?)?;
    let durs: Vec<u64> = per_host
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["duration_ms"].as_u64()).collect())
        .unwrap_or_default();
    let (warm, seq) = (median(warm), median(seq));
    println!("\ninventory of {n} lab hosts (median of {runs}):");
    println!("  netmigrate hosts collect, first (connects):    {cold:>6.2} s");
    println!("  netmigrate hosts collect, connections kept:    {warm:>6.2} s   (includes the NIC-rate sampling pause)");
    println!("  sequential `ssh host 'nproc; free; df'` loop:  {seq:>6.2} s");
    println!(
        "  ratio loop / netmigrate (kept):                {:>6.1}x",
        seq / warm
    );
    println!(
        "  per host, connections kept: {} to {} ms",
        durs.iter().min().unwrap_or(&0),
        durs.iter().max().unwrap_or(&0)
    );
    drop(lab);
    Ok(())
}

/// curl's measured speed, MB/s (10^6 bytes/s).
fn curl_speed(lab: &Lab, ns: &str, args: &[&str], field: &str) -> Result<f64> {
    let mut a = vec!["-sS", "--ftp-pasv", "-o", "/dev/null", "-w"];
    let w = format!("%{{{field}}}");
    a.push(&w);
    a.extend_from_slice(args);
    let out = lab.exec(ns, "curl", &a)?;
    Ok(out.trim().parse::<f64>().unwrap_or(0.0) / 1e6)
}

fn bench_ftp(mib: u64, runs: usize) -> Result<()> {
    // Both servers read and write tmpfs, as the peers' recipe does for vsftpd.
    std::env::set_var("NETMIGRATE_LAB_DIR", "/dev/shm/netmigrate-lab");
    let lab = step("creating the lab switch", Lab::new)?;
    teardown_on_signal(lab.prefix.clone())?;
    let client = lab.client()?;
    let srv = lab.node("srv", std::net::Ipv4Addr::new(10, 213, 0, 2))?;
    let state_dir = lab.appliance_state_dir()?;
    let mut cfg = netmigrate_lab::appliance::network_config(&state_dir);
    cfg.push_str("\n[ftp]\npassive_ports = [50000, 50100]\nreserve = \"256M\"\n");
    let app = step("appliance", || lab.appliance_with(&cfg))?;
    let pw = app
        .cli_ok(&["ftp", "account", "bench", "--write", "vm1", "--read", "vm1"])?
        .trim()
        .to_string();

    let dir = lab.subdir("ftp")?;
    let big = dir.join("big.bin");
    step(&format!("{mib} MiB of random data"), || {
        netmigrate_lab::sys::sh(
            "sh",
            &[
                "-c",
                &format!("head -c {} /dev/urandom > {}", mib << 20, big.display()),
            ],
        )
    })?;

    // The ceiling: raw TCP over the same veths and bridge.
    let mut iperf = netmigrate_lab::netns::exec(&srv.ns, "iperf3");
    iperf.args(["-s", "-B", "10.213.0.2"]);
    lab.track("iperf3", &mut iperf)?;
    std::thread::sleep(Duration::from_millis(500));
    let iperf_mb = |reverse: bool| -> Result<f64> {
        let mut args = vec!["-c", "10.213.0.2", "-t", "5", "-J"];
        if reverse {
            args.push("-R");
        }
        let out = lab.exec(&client.ns, "iperf3", &args)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 8e6)
    };
    let (ceil_down, ceil_up) = (iperf_mb(true)?, iperf_mb(false)?);

    // vsftpd, anonymous, passive, as ../shared/lab/peers runs it.
    let root = dir.join("vsftpd");
    for d in ["pub", "incoming", "empty"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::hard_link(&big, root.join("pub/big.bin"))
        .or_else(|_| std::fs::copy(&big, root.join("pub/big.bin")).map(|_| ()))?;
    netmigrate_lab::sys::sh(
        "chmod",
        &[
            "755",
            &lab.dir.display().to_string(),
            &dir.display().to_string(),
            &root.display().to_string(),
        ],
    )?;
    netmigrate_lab::sys::sh(
        "chown",
        &["ftp:ftp", &root.join("incoming").display().to_string()],
    )?;
    netmigrate_lab::sys::sh(
        "chmod",
        &["644", &root.join("pub/big.bin").display().to_string()],
    )?;
    let conf = dir.join("vsftpd.conf");
    std::fs::write(
        &conf,
        format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address=10.213.0.2\nbackground=NO\nanonymous_enable=YES\n\
             no_anon_password=YES\nanon_root={}\nlocal_enable=NO\nwrite_enable=YES\nanon_upload_enable=YES\n\
             anon_other_write_enable=YES\npasv_enable=YES\npasv_min_port=40000\npasv_max_port=40100\n\
             seccomp_sandbox=NO\nsecure_chroot_dir={}\nxferlog_enable=NO\ndirmessage_enable=NO\n",
            root.display(),
            root.join("empty").display()
        ),
    )?;
    let mut v = netmigrate_lab::netns::exec(&srv.ns, "vsftpd");
    v.arg(&conf);
    lab.track("vsftpd", &mut v)?;
    std::thread::sleep(Duration::from_millis(500));

    let bigs = big.display().to_string();
    let user = format!("bench:{pw}");
    let (mut vd, mut vu, mut nd, mut nu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        vd.push(curl_speed(
            &lab,
            &client.ns,
            &["ftp://10.213.0.2/pub/big.bin"],
            "speed_download",
        )?);
        vu.push(curl_speed(
            &lab,
            &client.ns,
            &[
                "-T",
                &bigs,
                &format!("ftp://10.213.0.2/incoming/up-{i}.bin"),
            ],
            "speed_upload",
        )?);
        let _ = std::fs::remove_file(root.join(format!("incoming/up-{i}.bin")));
        nu.push(curl_speed(
            &lab,
            &client.ns,
            &["--user", &user, "-T", &bigs, "ftp://10.213.0.1/vm1/vm1.img"],
            "speed_upload",
        )?);
        nd.push(curl_speed(
            &lab,
            &client.ns,
            &["--user", &user, "ftp://10.213.0.1/vm1/latest.img"],
            "speed_download",
        )?);
        // Keep tmpfs from filling: only the newest generation stays.
        app.cli_ok(&["images", "gc", "--keep", "1"])?;
    }
    let (vd, vu, nd, nu) = (median(vd), median(vu), median(nd), median(nu));
    println!("\nFTP, {mib} MiB with curl between two lab namespaces (MB/s, median of {runs}):");
    println!("                   download   upload");
    println!("  netmigrate       {nd:>8.0}  {nu:>7.0}");
    println!("  vsftpd           {vd:>8.0}  {vu:>7.0}");
    println!("  iperf3 (veth)    {ceil_down:>8.0}  {ceil_up:>7.0}");
    println!(
        "  netmigrate / vsftpd:  down {:.2}x, up {:.2}x",
        nd / vd,
        nu / vu
    );
    println!(
        "  netmigrate / iperf3:  down {:.2}x, up {:.2}x",
        nd / ceil_down,
        nu / ceil_up
    );
    drop(lab);
    // The runs' root on tmpfs, empty now (another run's would not be, and stays).
    let _ = std::fs::remove_dir("/dev/shm/netmigrate-lab");
    Ok(())
}

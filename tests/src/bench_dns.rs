//! `netmigrate-lab bench-dns`: dnsperf (UDP, A queries) against netmigrate, dnsmasq and Knot,
//! each serving the same 1,000-name zone, one after the other in the same two namespaces in one
//! run; queries per second, lost queries, response codes and the ratios. netmigrate's names
//! come from 1,000 reservations in its config, as an operator would write them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns;
use crate::sys::wait_for;
use crate::Lab;

const SRV: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CLI: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const ZONE: &str = "bench.test";
const NAMES: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Run {
    pub server: &'static str,
    pub mix: &'static str,
    pub qps: f64,
    pub sent: u64,
    pub lost: u64,
    pub codes: String,
}

fn ip_of(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 98, 10 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn name_of(i: u32) -> String {
    format!("h{i:04}")
}

/// dnsperf's figures: queries per second, sent, lost, and the response codes line.
fn parse(out: &str) -> (f64, u64, u64, String) {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let first_number = |s: String| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        first_number(field("Queries per second:")),
        first_number(field("Queries sent:")) as u64,
        first_number(field("Queries lost:")) as u64,
        field("Response codes:"),
    )
}

/// The query files: 100,000 picks from the names; `nx10` makes about one in ten a name that
/// does not exist.
fn queries(dir: &Path) -> Result<()> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut hit, mut nx) = (String::new(), String::new());
    for _ in 0..100_000 {
        let i = (next() % u64::from(NAMES)) as u32;
        writeln!(hit, "{}.{ZONE} A", name_of(i))?;
        if next() % 10 == 0 {
            writeln!(nx, "nx{}.{ZONE} A", next() % 1_000_000)?;
        } else {
            writeln!(nx, "{}.{ZONE} A", name_of(i))?;
        }
    }
    std::fs::write(dir.join("q-hit.txt"), hit)?;
    std::fs::write(dir.join("q-nx10.txt"), nx)?;
    Ok(())
}

fn start(lab: &Lab, ns: &str, server: &str, dir: &Path) -> Result<u32> {
    std::fs::create_dir_all(dir)?;
    let pid = match server {
        "netmigrate" => {
            let mut cfg = format!(
                "state_dir = \"{}\"\n\n[[network]]\nname = \"bench\"\ninterface = \"eth0\"\n\
                 address = \"{SRV}/16\"\ndomain = \"{ZONE}\"\n\n[dhcp]\nconflict_check = false\n",
                dir.join("state").display()
            );
            for i in 0..NAMES {
                write!(
                    cfg,
                    "\n[[reservation]]\nnetwork = \"bench\"\nmac = \"52:54:00:98:{:02x}:{:02x}\"\n\
                     ip = \"{}\"\nhostname = \"{}\"\n",
                    i / 256,
                    i % 256,
                    ip_of(i),
                    name_of(i)
                )?;
            }
            let file = dir.join("netmigrate.toml");
            std::fs::write(&file, cfg)?;
            let mut c = netns::exec(ns, &crate::netmigrate_bin()?.display().to_string());
            c.args(["serve", "--config"]).arg(&file);
            c.env("RUST_LOG", "warn");
            lab.track("bench-netmigrate", &mut c)?
        }
        "dnsmasq" => {
            let mut hosts = String::new();
            for i in 0..NAMES {
                writeln!(hosts, "{} {}.{ZONE}", ip_of(i), name_of(i))?;
            }
            let file = dir.join("hosts.bench");
            std::fs::write(&file, hosts)?;
            let mut c = netns::exec(ns, "dnsmasq");
            c.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-hosts",
                "--no-resolv",
                "--interface=eth0",
                "--bind-interfaces",
                "--port=53",
                "--cache-size=10000",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--local=/{ZONE}/"));
            lab.track("bench-dnsmasq", &mut c)?
        }
        "knot" => {
            let mut z = format!(
                "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns hostmaster 1 3600 600 604800 60\n@ NS ns\nns A {SRV}\n"
            );
            for i in 0..NAMES {
                writeln!(z, "{} A {}", name_of(i), ip_of(i))?;
            }
            std::fs::write(dir.join(format!("{ZONE}.zone")), z)?;
            let conf = dir.join("knot.conf");
            std::fs::write(
                &conf,
                format!(
                    "server:\n  rundir: \"{d}\"\n  listen: {SRV}@53\n\
                     database:\n  storage: \"{d}\"\n\
                     control:\n  listen: \"{d}/knot.sock\"\n\
                     template:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n\
                     zone:\n  - domain: {ZONE}\n",
                    d = dir.display()
                ),
            )?;
            let mut c = netns::exec(ns, "knotd");
            c.arg("-c").arg(&conf);
            lab.track("bench-knot", &mut c)?
        }
        other => anyhow::bail!("unknown server {other}"),
    };
    let probe = format!("{}.{ZONE}", name_of(NAMES - 1));
    let want = ip_of(NAMES - 1).to_string();
    wait_for(
        &format!("{server} to answer"),
        Duration::from_secs(30),
        || {
            let out = netns::exec(ns, "dig")
                .args([&format!("@{SRV}"), "+short", "+time=1", "+tries=1", &probe])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == want).then_some(())
        },
    )
    .with_context(|| format!("{server} did not answer {probe}"))?;
    Ok(pid)
}

pub fn run(secs: u32, clients: u32) -> Result<Vec<Run>> {
    let lab = Lab::new()?;
    let srv = lab.bare_node("dsrv")?;
    let cli = lab.bare_node("dcli")?;
    netns::add_addr(&srv.ns, "eth0", SRV, 16)?;
    netns::add_addr(&cli.ns, "eth0", CLI, 16)?;
    let dir = lab.subdir("bench-dns")?;
    queries(&dir)?;
    let mut runs = Vec::new();
    for mix in ["hit", "nx10"] {
        for server in ["netmigrate", "dnsmasq", "knot"] {
            let sdir = lab.subdir(&format!("bench-dns/{server}-{mix}"))?;
            let pid = start(&lab, &srv.ns, server, &sdir)
                .with_context(|| format!("starting {server}"))?;
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &cli.ns,
                    "timeout",
                    &(secs + 15).to_string(),
                ])
                .args(["dnsperf", "-s", &SRV.to_string(), "-d"])
                .arg(dir.join(format!("q-{mix}.txt")))
                .args([
                    "-l",
                    &secs.to_string(),
                    "-c",
                    &clients.to_string(),
                    "-q",
                    "100",
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            std::fs::write(sdir.join("dnsperf.txt"), &text)?;
            lab.stop(pid);
            let (qps, sent, lost, codes) = parse(&text);
            eprintln!("  {server:<10} {mix:<5} {qps:>9.0} q/s, lost {lost} of {sent}; {codes}");
            runs.push(Run {
                server,
                mix,
                qps,
                sent,
                lost,
                codes,
            });
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dnsperf_output_is_read() {
        let out = "Statistics:\n\n  Queries sent:         1977074\n  Queries completed:    1977074 (100.00%)\n\
                   \x20 Queries lost:         0 (0.00%)\n\n  Response codes:       NOERROR 1977074 (100.00%)\n\
                   \x20 Average packet size:  request 34, response 50\n  Run time (s):         20.000\n\
                   \x20 Queries per second:   98831.2\n";
        let (qps, sent, lost, codes) = super::parse(out);
        assert_eq!((qps, sent, lost), (98831.2, 1977074, 0));
        assert_eq!(codes, "NOERROR 1977074 (100.00%)");
    }
}

//! `netmigrate-lab bench-dhcp`: perfdhcp (full DORA, as a relay agent) against netmigrate, ISC
//! Kea (memfile, persist=true) and dnsmasq, each started fresh for each offered rate, in the
//! same two namespaces, in one run; DORA/s, drops and the ratios.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns;
use crate::sys::wait_for;
use crate::Lab;

const SRV: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLI: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

#[derive(Debug, Clone)]
pub struct Step {
    pub server: &'static str,
    pub offered: u32,
    pub dora_per_s: f64,
    pub discovers: u64,
    pub acks: u64,
}

impl Step {
    pub fn drops_pct(&self) -> f64 {
        if self.discovers == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.acks as f64 / self.discovers as f64)
    }
}

/// perfdhcp's "Rate:" line and the DISCOVER-sent and ACK-received counts.
fn parse(out: &str) -> (f64, u64, u64) {
    let rate = out
        .lines()
        .find_map(|l| l.strip_prefix("Rate:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    let nth = |prefix: &str, n: usize| -> u64 {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .nth(n)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (rate, nth("sent packets:", 0), nth("received packets:", 1))
}

fn start(lab: &Lab, ns: &str, server: &str, dir: &Path) -> Result<u32> {
    std::fs::create_dir_all(dir)?;
    let pid = match server {
        "netmigrate" => {
            let cfg = dir.join("netmigrate.toml");
            std::fs::write(
                &cfg,
                format!(
                    "state_dir = \"{}\"\n\n[[network]]\nname = \"bench\"\ninterface = \"eth0\"\n\
                     address = \"{SRV}/16\"\ndhcp_range = [\"10.99.1.0\", \"10.99.255.254\"]\n\
                     lease_time = \"12h\"\n\n\
                     # Like dnsmasq --no-ping here, and Kea by default: no probe before offers.\n\
                     [dhcp]\nconflict_check = false\n",
                    dir.join("state").display()
                ),
            )?;
            let mut c = netns::exec(ns, &crate::netmigrate_bin()?.display().to_string());
            c.args(["serve", "--config"]).arg(&cfg);
            c.env("RUST_LOG", "warn");
            let pid = lab.track("bench-netmigrate", &mut c)?;
            let sock = dir.join("state/api.sock");
            wait_for("netmigrate's API", Duration::from_secs(20), || {
                sock.exists().then_some(())
            })?;
            pid
        }
        "kea" => {
            let cfg = dir.join("kea.json");
            std::fs::write(
                &cfg,
                serde_json::json!({"Dhcp4": {
                    "interfaces-config": {"interfaces": ["eth0"]},
                    "lease-database": {"type": "memfile", "persist": true,
                        "name": dir.join("kea-leases4.csv"), "lfc-interval": 0},
                    "valid-lifetime": 43200,
                    "subnet4": [{"id": 1, "subnet": "10.99.0.0/16",
                        "pools": [{"pool": "10.99.1.0 - 10.99.255.254"}]}],
                    "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                        "output_options": [{"output": dir.join("kea.log")}]}]
                }})
                .to_string(),
            )?;
            let mut c = netns::exec(ns, "kea-dhcp4");
            c.arg("-c").arg(&cfg);
            c.env("KEA_LOCKFILE_DIR", dir).env("KEA_PIDFILE_DIR", dir);
            lab.track("bench-kea", &mut c)?
        }
        "dnsmasq" => {
            let mut c = netns::exec(ns, "dnsmasq");
            c.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--dhcp-range=10.99.1.0,10.99.255.254,255.255.0.0,12h",
                "--dhcp-lease-max=200000",
                "--dhcp-authoritative",
                "--no-ping",
                "--quiet-dhcp",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("dnsmasq.leases").display()
            ))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
            lab.track("bench-dnsmasq", &mut c)?
        }
        other => anyhow::bail!("unknown server {other}"),
    };
    std::thread::sleep(Duration::from_secs(1));
    Ok(pid)
}

pub fn run(rates: &[u32], secs: u32, clients: u32) -> Result<Vec<Step>> {
    let lab = Lab::new()?;
    let srv = lab.bare_node("bsrv")?;
    let cli = lab.bare_node("bcli")?;
    netns::add_addr(&srv.ns, "eth0", SRV, 16)?;
    netns::add_addr(&cli.ns, "eth0", CLI, 16)?;
    let mut steps = Vec::new();
    for &rate in rates {
        for server in ["netmigrate", "kea", "dnsmasq"] {
            let dir = lab.subdir(&format!("bench-dhcp/{server}-{rate}"))?;
            let pid =
                start(&lab, &srv.ns, server, &dir).with_context(|| format!("starting {server}"))?;
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &cli.ns,
                    "timeout",
                    &(secs + 15).to_string(),
                ])
                .args([
                    "perfdhcp",
                    "-4",
                    "-r",
                    &rate.to_string(),
                    "-R",
                    &clients.to_string(),
                ])
                .args([
                    "-p",
                    &secs.to_string(),
                    "-l",
                    &CLI.to_string(),
                    &SRV.to_string(),
                ])
                .output()?;
            // perfdhcp exits 3 when anything was dropped: its output still holds the figures.
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            std::fs::write(dir.join("perfdhcp.txt"), &text)?;
            lab.stop(pid);
            let (r, discovers, acks) = parse(&text);
            let s = Step {
                server,
                offered: rate,
                dora_per_s: r,
                discovers,
                acks,
            };
            eprintln!(
                "  {server:<10} offered {rate:>6}/s: {r:>8.0} DORA/s, drops {:.1} %",
                s.drops_pct()
            );
            steps.push(s);
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    #[test]
    fn perfdhcp_output_is_read() {
        let out = "***Rate statistics***\nRate: 3975.27 4-way exchanges/second, expected rate: 4000\n\n\
                   ***Statistics for: DISCOVER-OFFER***\nsent packets: 39999\nreceived packets: 39800\n\n\
                   ***Statistics for: REQUEST-ACK***\nsent packets: 39800\nreceived packets: 39759\n";
        assert_eq!(super::parse(out), (3975.27, 39999, 39759));
    }
}

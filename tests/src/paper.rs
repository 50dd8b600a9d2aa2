//! The paper's five scenarios on the lab, driven through the appliance as an operator would:
//! VMs defined and started by `netmigrate vm`, moved by one `netmigrate migrate` (a batch),
//! each VM's break measured by the appliance's built-in probe and by an independent prober in
//! the client namespace, and the batch drawn with `netmigrate batches ID --plot`.
//!
//! 1: vm1, vm2 on A and vm3 on B, all to C, machine by machine (sequential)
//! 2: the same, one VM per source in turn (round-robin)
//! 3: vm1, vm2 on A and vm3 on C, all to B, sequential
//! 4: the same, round-robin
//! 5: scenario 1 with a 2-vCPU vm1

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::Node;
use crate::sys::wait_for;
use crate::{Appliance, Lab, Prober};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub n: u8,
    /// Host letters of vm1, vm2, vm3.
    pub on: [&'static str; 3],
    pub to: &'static str,
    /// `sequential` or `round-robin`.
    pub order: &'static str,
    pub vm1_vcpus: u32,
}

impl Scenario {
    pub fn describe(&self) -> String {
        format!(
            "scenario {}: vm1, vm2 on {}, vm3 on {} -> {} ({}{})",
            self.n,
            self.on[0],
            self.on[2],
            self.to,
            self.order,
            if self.vm1_vcpus > 1 {
                format!(", vm1 with {} vCPUs", self.vm1_vcpus)
            } else {
                String::new()
            }
        )
    }
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |n, on, to, order, vm1_vcpus| Scenario {
        n,
        on,
        to,
        order,
        vm1_vcpus,
    };
    vec![
        s(1, ["A", "A", "B"], "C", "sequential", 1),
        s(2, ["A", "A", "B"], "C", "round-robin", 1),
        s(3, ["A", "A", "C"], "B", "sequential", 1),
        s(4, ["A", "A", "C"], "B", "round-robin", 1),
        s(5, ["A", "A", "B"], "C", "sequential", 2),
    ]
}

/// One VM's move in a scenario run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moved {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub state: String,
    pub migration: i64,
    /// The appliance's built-in probe.
    pub builtin_ms: Option<i64>,
    /// The prober in the client namespace.
    pub client_ms: u64,
    pub started_ms: i64,
    /// Where the appliance says the VM runs once the batch ended.
    pub runs_on: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub scenario: u8,
    pub mode: String,
    pub batch: i64,
    pub state: String,
    /// In the order the moves started.
    pub moved: Vec<Moved>,
    pub svg: Option<PathBuf>,
    /// What `netmigrate migrate` printed on stderr (its progress lines).
    #[serde(skip)]
    pub progress: String,
}

/// Defines VM n (`vmN`) with that many vCPUs in the appliance: its name and address.
pub type DefineVm = dyn Fn(&Appliance, u8, u32) -> Result<(String, std::net::Ipv4Addr)>;

/// What kind of lab a scenario runs on: its hosts' names, how its VMs are defined, how the
/// client probes them.
pub struct Flavor<'a> {
    /// Host X is `<hosts>X` in the appliance's config.
    pub hosts: &'a str,
    /// Defines VM n (`vmN`) with that many vCPUs: its name and address.
    pub define: &'a DefineVm,
    pub probe_every: Duration,
    pub probe_timeout: Duration,
    /// How long a VM may take to boot.
    pub boot: Duration,
    /// A batch with a move that did not complete is still a run (its state in the table), not
    /// an error: on nested Xen the lab's load, not the appliance, decides some of them.
    pub record_failures: bool,
}

fn qemu_define(app: &Appliance, n: u8, vcpus: u32) -> Result<(String, std::net::Ipv4Addr)> {
    app.define_guest(n, 128, vcpus)
}

/// The QEMU lab's: hosts `hostA`.., guests booting the lab's kernel, probed every 10 ms.
pub fn qemu() -> Flavor<'static> {
    Flavor {
        hosts: "host",
        define: &qemu_define,
        probe_every: Duration::from_millis(10),
        probe_timeout: Duration::from_millis(100),
        boot: Duration::from_secs(120),
        record_failures: false,
    }
}

/// Runs scenario `sc` with `mode` ("cold" or "live") on `flavor`'s hosts in `app`'s config:
/// starts the three VMs where the scenario puts them, moves them in one batch, stops them
/// after. `out` receives the batch's chart.
pub fn run(
    lab: &Lab,
    app: &Appliance,
    client: &Node,
    sc: &Scenario,
    mode: &str,
    out: Option<&Path>,
    flavor: &Flavor,
) -> Result<Run> {
    let mut vms = Vec::new();
    for (i, host) in sc.on.iter().enumerate() {
        let n = i as u8 + 1;
        let vcpus = if n == 1 { sc.vm1_vcpus } else { 1 };
        let (name, ip) = (flavor.define)(app, n, vcpus)?;
        let on = format!("{}{host}", flavor.hosts);
        // As an operator would: a start that failed is asked again, three times at most, after
        // a pause (nested Xen's dom0s drop SSH sessions and crash tools now and then; QEMU
        // hosts never need it).
        let mut tries = 0;
        while let Err(e) = app.cli_ok(&["vm", "start", &name, "--on", &on]) {
            tries += 1;
            if tries > 3 {
                return Err(e);
            }
            eprintln!("    {name}: start failed ({e:#}); again in 10 s");
            std::thread::sleep(Duration::from_secs(10));
        }
        vms.push((name, ip));
    }
    let result = (|| {
        for (name, ip) in &vms {
            let url = format!("http://{ip}/");
            wait_for(&format!("{name} to answer at {url}"), flavor.boot, || {
                lab.exec(
                    &client.ns,
                    "curl",
                    &["-sS", "--fail", "--max-time", "1", &url],
                )
                .ok()
            })?;
        }
        let probers = vms
            .iter()
            .map(|(_, ip)| {
                Prober::start(
                    &client.ns,
                    SocketAddr::new((*ip).into(), 80),
                    flavor.probe_every,
                    flavor.probe_timeout,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let to = format!("{}{}", flavor.hosts, sc.to);
        let o = app.cli(&[
            "migrate",
            "vm1",
            "vm2",
            "vm3",
            "--to",
            &to,
            "--order",
            sc.order,
            &format!("--{mode}"),
            "--json",
        ])?;
        // Let the probers see the last VM answer steadily again.
        std::thread::sleep(Duration::from_millis(500));
        let reports: Vec<_> = probers.into_iter().map(Prober::finish).collect();
        let text = String::from_utf8_lossy(&o.stdout);
        let b: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "netmigrate migrate gave no batch: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        })?;
        let list: Value = serde_json::from_str(&app.cli_ok(&["vm", "list", "--json"])?)?;
        let runs_on = |vm: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == vm && v["state"] == "running")
                .and_then(|v| v["host"].as_str())
                .unwrap_or("-")
                .to_string()
        };
        let mut moved = Vec::new();
        for m in b["migrations"].as_array().cloned().unwrap_or_default() {
            let vm = m["vm"].as_str().unwrap_or("").to_string();
            let ix = vms.iter().position(|(n, _)| *n == vm);
            moved.push(Moved {
                from: m["source"].as_str().unwrap_or("").into(),
                to: m["target"].as_str().unwrap_or("").into(),
                state: m["state"].as_str().unwrap_or("").into(),
                migration: m["id"].as_i64().unwrap_or(0),
                builtin_ms: m["break_ms"].as_i64(),
                client_ms: ix
                    .map(|i| reports[i].break_time.as_millis() as u64)
                    .unwrap_or(0),
                started_ms: m["started_ms"].as_i64().unwrap_or(0),
                runs_on: runs_on(&vm),
                vm,
            });
        }
        let batch = b["id"].as_i64().unwrap_or(0);
        let svg = match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let f = dir.join(format!("scenario-{}-{mode}.svg", sc.n));
                app.cli_ok(&[
                    "batches",
                    &batch.to_string(),
                    "--plot",
                    &f.display().to_string(),
                ])?;
                Some(f)
            }
            None => None,
        };
        if !o.status.success() && !flavor.record_failures {
            bail!(
                "{} {mode}: {}",
                sc.describe(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(Run {
            scenario: sc.n,
            mode: mode.into(),
            batch,
            state: b["state"].as_str().unwrap_or("").into(),
            moved,
            svg,
            progress: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    })();
    for (name, _) in &vms {
        let _ = app.cli(&["vm", "stop", name]);
    }
    result
}

/// Prints each move of a run on stderr, as it ended.
pub fn print_moved(r: &Run) {
    for m in &r.moved {
        eprintln!(
            "    {} {} -> {}: {}, built-in {} ms, client {} ms",
            m.vm,
            m.from,
            m.to,
            m.state,
            m.builtin_ms.unwrap_or(-1),
            m.client_ms
        );
    }
}

/// The per-VM table of runs, with the paper's figure beside.
pub fn table(runs: &[Run], baseline: &[(String, Vec<u64>)]) -> String {
    let mut o = String::from(
        "| scenario | mode | VM | move | built-in probe | client prober |\n|---|---|---|---|---|---|\n",
    );
    for r in runs {
        for m in &r.moved {
            o.push_str(&format!(
                "| {} | {} | {} | {} -> {} ({}) | {} | {} ms |\n",
                r.scenario,
                r.mode,
                m.vm,
                m.from,
                m.to,
                m.state,
                m.builtin_ms
                    .map(|b| format!("{b} ms"))
                    .unwrap_or_else(|| "-".into()),
                m.client_ms
            ));
        }
    }
    for (what, ms) in baseline {
        let mut v = ms.clone();
        v.sort();
        let med = v.get(v.len() / 2).copied().unwrap_or(0);
        o.push_str(&format!(
            "| baseline | {what} | one VM | hand-driven QEMU (lab recipe) | - | median {med} ms of {:?} |\n",
            v
        ));
    }
    o.push_str("| paper | cold (scripts) | each VM | Xen, FTP staging | - | 18,000-25,000 ms |\n");
    o
}

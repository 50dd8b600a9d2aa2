//! The hand-driven baseline: a VM moved with QEMU and QMP alone, exactly as the lab recipe
//! (../shared/lab/qemu/RECIPE.md) did it, so `paper` can put netmigrate next to it in one run.
//! Cold: raise max-bandwidth, `stop`, `migrate exec:cat > FILE`, `quit`, copy the file (a local
//! copy: the fastest hop there is), start the target with `-incoming exec:cat FILE`, `cont`.
//! Live: the target waits on `-incoming tcp:0:PORT`, the source `migrate`s to it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guest::GuestSpec;
use crate::host::{host_ip, BRIDGE};
use crate::lab::Node;
use crate::sys::wait_for;
use crate::{Host, Lab, Prober};

/// A minimal QMP client.
pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> Result<Qmp> {
        let w = UnixStream::connect(path).with_context(|| format!("QMP {}", path.display()))?;
        w.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp {
            r: BufReader::new(w.try_clone()?),
            w,
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting)?;
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Runs `cmd`; its `return`, events skipped.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let line = json!({"execute": cmd, "arguments": args}).to_string();
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")?;
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l)? == 0 {
                // `quit` closes the socket before or instead of answering.
                if cmd == "quit" {
                    return Ok(Value::Null);
                }
                bail!("QMP closed during {cmd}");
            }
            let v: Value = serde_json::from_str(&l)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
        }
    }

    fn wait_status(&mut self, query: &str, field: &str, done: &dyn Fn(&str) -> bool) -> Result<()> {
        wait_for(
            &format!("{query} to finish"),
            Duration::from_secs(120),
            || {
                let v = self.execute(query, json!({})).ok()?;
                let s = v[field].as_str().unwrap_or("").to_string();
                done(&s).then_some(())
            },
        )
    }
}

/// One hand-driven move of a freshly booted guest from `from` to `to`; returns the break the
/// client namespace saw (ms).
pub fn baseline(lab: &Lab, from: &Host, to: &Host, client: &Node, mode: &str) -> Result<u64> {
    let mut started = Vec::new();
    let r = move_once(lab, from, to, client, mode, &mut started);
    if r.is_err() {
        // What a failed try left (its QEMUs, taps, ports) would stop the next one.
        for (h, pid, tap) in started {
            lab.stop(pid);
            let _ = h.ovs.vsctl(&["--if-exists", "del-port", BRIDGE, &tap]);
            let _ = crate::netns::ip(&h.ns, &["link", "del", &tap]);
        }
    }
    r
}

fn move_once<'h>(
    lab: &Lab,
    from: &'h Host,
    to: &'h Host,
    client: &Node,
    mode: &str,
    started: &mut Vec<(&'h Host, u32, String)>,
) -> Result<u64> {
    let mut spec = GuestSpec::numbered(9);
    let src = lab.guest(from, spec.clone())?;
    started.push((from, src.pid, src.tap.clone()));
    let ip = spec.ip;
    lab.wait_http(&client.ns, &src, Duration::from_secs(120))?;
    let start = || {
        Prober::start(
            &client.ns,
            SocketAddr::new(ip.into(), 80),
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
    };
    // Two probers, as a netmigrate move has (its built-in probe and the client's): the same
    // load on the guest.
    let (prober, second) = (start()?, start()?);
    std::thread::sleep(Duration::from_millis(300));
    let mut q = Qmp::connect(&src.qmp)?;
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 4u64 << 30, "downtime-limit": 100}),
    )?;
    let dir = lab.subdir("hand")?;
    let dst = match mode {
        "cold" => {
            let saved = dir.join(format!("{}.saved", spec.name));
            q.execute("stop", json!({}))?;
            q.execute(
                "migrate",
                json!({"uri": format!("exec:cat > {}", saved.display())}),
            )?;
            q.wait_status("query-migrate", "status", &|s| s == "completed")?;
            q.execute("quit", json!({}))?;
            wait_for("the source QEMU to exit", Duration::from_secs(10), || {
                lab.has_exited(src.pid).then_some(())
            })?;
            from.ovs.vsctl(&["del-port", BRIDGE, &src.tap])?;
            let copied = dir.join(format!("{}.copied", spec.name));
            std::fs::copy(&saved, &copied)?;
            spec.incoming = Some(format!("exec:cat {}", copied.display()));
            let dst = lab.guest(to, spec.clone())?;
            started.push((to, dst.pid, dst.tap.clone()));
            let mut t = Qmp::connect(&dst.qmp)?;
            t.wait_status("query-status", "status", &|s| s != "inmigrate")?;
            t.execute("cont", json!({}))?;
            dst
        }
        "live" => {
            spec.incoming = Some("tcp:0:4444".into());
            let dst = lab.guest(to, spec.clone())?;
            started.push((to, dst.pid, dst.tap.clone()));
            // QEMU opens its incoming socket some time after it starts.
            wait_for("the target QEMU to listen", Duration::from_secs(30), || {
                let out = crate::netns::exec(&to.ns, "ss")
                    .args(["-Hltn", "sport = :4444"])
                    .output()
                    .ok()?;
                (!out.stdout.is_empty()).then_some(())
            })?;
            q.execute(
                "migrate",
                json!({"uri": format!("tcp:{}:4444", host_ip(&to.name))}),
            )?;
            q.wait_status("query-migrate", "status", &|s| {
                s == "completed" || s == "failed"
            })?;
            let m = q.execute("query-migrate", json!({}))?;
            if m["status"] != "completed" {
                // `baseline` stops both QEMUs.
                bail!("the hand-driven live migration failed: {}", m["error-desc"]);
            }
            q.execute("quit", json!({}))?;
            wait_for("the source QEMU to exit", Duration::from_secs(10), || {
                lab.has_exited(src.pid).then_some(())
            })?;
            from.ovs.vsctl(&["del-port", BRIDGE, &src.tap])?;
            dst
        }
        other => bail!("mode {other}: cold or live"),
    };
    lab.wait_http(&client.ns, &dst, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let report = prober.finish();
    second.finish();
    let _ = Qmp::connect(&dst.qmp).and_then(|mut t| t.execute("quit", json!({})));
    wait_for("the target QEMU to exit", Duration::from_secs(10), || {
        lab.has_exited(dst.pid).then_some(())
    })?;
    to.ovs.vsctl(&["del-port", BRIDGE, &dst.tap])?;
    for (h, tap) in [(from, &src.tap), (to, &dst.tap)] {
        let _ = crate::netns::ip(&h.ns, &["link", "del", tap]);
    }
    Ok(report.break_time.as_millis() as u64)
}

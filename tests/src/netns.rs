//! Network namespaces and the links between them. Links are created directly inside their
//! namespaces, so the root namespace never holds a lab interface, not even for a moment.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, Result};

use crate::sys::sh;

pub fn add(ns: &str) -> Result<()> {
    sh("ip", &["netns", "add", ns])?;
    ip(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills what runs in `ns` (it is ours: the lab made the namespace) and deletes it.
pub fn delete(ns: &str) {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let pids = pids(ns);
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            crate::sys::signal(*p, sig);
        }
        let _ = crate::sys::wait_for(
            "namespace processes to exit",
            std::time::Duration::from_secs(3),
            || pids.iter().all(|p| !crate::sys::alive(*p)).then_some(()),
        );
    }
    let _ = sh("ip", &["netns", "del", ns]);
}

pub fn pids(ns: &str) -> Vec<u32> {
    sh("ip", &["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn list() -> Vec<String> {
    sh("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `ip -n NS ...`
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    sh("ip", &a)
}

/// A command that will run inside `ns`.
pub fn exec(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// A Linux bridge `name` in `ns`, without STP or forwarding delay, up.
pub fn bridge(ns: &str, name: &str) -> Result<()> {
    ip(
        ns,
        &[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ],
    )?;
    ip(ns, &["link", "set", name, "up"])?;
    Ok(())
}

/// A veth pair with one end in each namespace.
pub fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<()> {
    ip(
        ns_a,
        &[
            "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b,
        ],
    )
    .with_context(|| format!("veth {ns_a}/{name_a} <-> {ns_b}/{name_b}"))?;
    ip(ns_a, &["link", "set", name_a, "up"])?;
    ip(ns_b, &["link", "set", name_b, "up"])?;
    Ok(())
}

pub fn add_addr(ns: &str, dev: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    ip(
        ns,
        &["addr", "add", &format!("{addr}/{prefix}"), "dev", dev],
    )?;
    ip(ns, &["link", "set", dev, "up"])?;
    Ok(())
}

/// Runs `f` on a new thread that has entered `ns`; sockets it opens live in that namespace.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is a namespace file we hold open.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        let entered = rc == 0;
        let _ = tx.send(if entered {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        });
        if !entered {
            panic!("setns failed");
        }
        f()
    });
    rx.recv()
        .context("namespace thread died")?
        .with_context(|| format!("entering namespace {ns}"))?;
    Ok(handle)
}

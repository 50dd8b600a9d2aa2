//! `netmigrate-lab`: the demo lab and the cleanup of killed runs.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use netmigrate_lab::{cleanup, GuestSpec, Lab};

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
    /// Build the demo lab: the appliance, hosts A, B, C (sshd + Open vSwitch), three guests
    /// serving HTTP and a client; show `netmigrate status` and the guests' answers; tear down.
    Demo {
        /// Keep the lab up until Ctrl-C.
        #[arg(long)]
        hold: bool,
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

fn demo(hold: bool) -> Result<()> {
    let t0 = Instant::now();
    let lab = step("creating the lab switch", Lab::new)?;
    teardown_on_signal(lab.prefix.clone())?;
    eprintln!("lab prefix {} (run dir {})", lab.prefix, lab.dir.display());
    let a = step("host A: namespace, sshd, Open vSwitch", || lab.host("A"))?;
    let b = step("host B: namespace, sshd, Open vSwitch", || lab.host("B"))?;
    let c = step("host C: namespace, sshd, Open vSwitch", || lab.host("C"))?;
    let app = step("appliance: netmigrate serve", || {
        lab.appliance(&[&a, &b, &c])
    })?;
    let client = step("client namespace", || lab.client())?;
    let guests = step("booting guests vm1, vm2 on A and vm3 on B (QEMU)", || {
        Ok(vec![
            lab.guest(&a, GuestSpec::numbered(1))?,
            lab.guest(&a, GuestSpec::numbered(2))?,
            lab.guest(&b, GuestSpec::numbered(3))?,
        ])
    })?;
    for g in &guests {
        step(
            &format!("waiting for {} to answer HTTP", g.spec.name),
            || lab.wait_http(&client.ns, g, Duration::from_secs(90)),
        )?;
    }

    println!("\n$ netmigrate status");
    print!("{}", app.cli_ok(&["status"])?);
    println!("\nHTTP answers seen from the client ({}):", client.ip);
    for g in &guests {
        let body = lab.curl(&client.ns, &g.url())?;
        println!("  {} on host{} -> {}", g.url(), g.host, body.trim());
    }
    println!("\nlab up in {:.1}s", t0.elapsed().as_secs_f64());
    if hold {
        println!("holding the lab; Ctrl-C tears it down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    eprintln!("tearing down lab {}", lab.prefix);
    drop(lab);
    Ok(())
}

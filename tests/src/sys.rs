//! Running commands and owning processes: every process the lab starts is tracked by PID and
//! stopped by that PID, never by name.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// `run` with the arguments given as a list; returns stdout as text.
pub fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = run(Command::new(prog).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process the lab started; stopped (TERM, then KILL) when dropped.
pub struct Tracked {
    pub name: String,
    child: Child,
}

impl Tracked {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Tracked> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Tracked {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// None while running, else its exit status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// TERM, up to `grace` to exit, then KILL; always reaps.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        signal(self.child.id(), libc::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a PID we started; errors (already gone) are fine to ignore.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// True while a process with this PID exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the parenthesised command name
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Polls `f` every 50 ms until it returns Some, or fails after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= until {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

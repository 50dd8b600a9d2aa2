//! Running the operator's scripts (the after-move hook, the DHCP lease script): given
//! arguments and one environment variable, no stdin, stdout discarded, killed after a timeout.
//! A failure says how, with the last line the script wrote to stderr.

use std::path::Path;
use std::time::Duration;

pub async fn run(
    path: &Path,
    args: &[&str],
    env: (&str, &str),
    timeout: Duration,
) -> Result<(), String> {
    let child = tokio::process::Command::new(path)
        .args(args)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} did not finish within {} s and was killed",
                path.display(),
                timeout.as_secs()
            )
        })?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} exited with {}: {}",
            path.display(),
            out.status,
            err.trim().lines().last().unwrap_or("")
        ));
    }
    Ok(())
}

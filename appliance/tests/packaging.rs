//! The systemd unit in packaging/: systemd itself finds nothing wrong in it (the command
//! lines, the options), and its sandbox stays tight (systemd's own exposure score).

use std::process::Command;

fn analyze(args: &[&str]) -> Option<std::process::Output> {
    Command::new("systemd-analyze").args(args).output().ok()
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    if analyze(&["--version"]).is_none() {
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("netmigrate.service");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/netmigrate.service"
    ))
    .unwrap();
    // Point it at the binary just built (verify checks that ExecStart= exists).
    let text = text.replace(
        "/usr/local/bin/netmigrate",
        env!("CARGO_BIN_EXE_netmigrate"),
    );
    std::fs::write(&unit, text).unwrap();
    let unit = unit.to_str().unwrap();
    let v = analyze(&["verify", "--man=no", unit]).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success() && said.trim().is_empty(), "{said}");
    let s = analyze(&["security", "--offline=yes", unit]).unwrap();
    let out = String::from_utf8_lossy(&s.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for netmigrate.service: ")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 3.0, "exposure {score}:\n{out}");
}

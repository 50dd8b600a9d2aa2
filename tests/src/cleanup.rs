//! Removing what a killed run left behind: namespaces named with the lab prefix (and the
//! processes inside them, which the lab started) and their run directories.

use std::collections::BTreeSet;

use crate::lab::{runs_root, PREFIX_HEAD};
use crate::netns;

/// Is `name` a lab namespace (`nml` + 5 hex digits + `-role`)? Returns its prefix.
pub fn lab_prefix(name: &str) -> Option<&str> {
    let (prefix, role) = name.split_once('-')?;
    let hex = prefix.strip_prefix(PREFIX_HEAD)?;
    (hex.len() == 5 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !role.is_empty())
        .then_some(prefix)
}

/// The PID that owns a run, if that process is still alive.
fn live_owner(prefix: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(runs_root().join(prefix).join("owner.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::sys::alive(pid).then_some(pid)
}

/// Removes the leftovers of dead runs (or of all runs with `all`); returns what was removed.
pub fn cleanup(all: bool) -> Vec<String> {
    let mut prefixes = BTreeSet::new();
    for ns in netns::list() {
        if let Some(p) = lab_prefix(&ns) {
            prefixes.insert(p.to_string());
        }
    }
    if let Ok(rd) = std::fs::read_dir(runs_root()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if lab_prefix(&format!("{name}-x")).is_some() {
                prefixes.insert(name);
            }
        }
    }
    let mut removed = Vec::new();
    for p in prefixes {
        if !all {
            if let Some(pid) = live_owner(&p) {
                eprintln!("keeping lab {p}: its run (pid {pid}) is still alive; use --all to remove it anyway");
                continue;
            }
        }
        remove_prefix(&p);
        removed.push(p);
    }
    removed
}

/// Kills what runs in the prefix's namespaces, deletes them and the run directory.
pub fn remove_prefix(prefix: &str) {
    let mine: Vec<String> = netns::list()
        .into_iter()
        .filter(|ns| lab_prefix(ns) == Some(prefix))
        .collect();
    // Guests and daemons first (host namespaces), the switch last.
    for ns in mine
        .iter()
        .filter(|n| !n.ends_with("-sw"))
        .chain(mine.iter().filter(|n| n.ends_with("-sw")))
    {
        netns::delete(ns);
    }
    let _ = std::fs::remove_dir_all(runs_root().join(prefix));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_names_match() {
        assert_eq!(lab_prefix("nml0a1b2-hA"), Some("nml0a1b2"));
        assert_eq!(lab_prefix("nml0a1b2-sw"), Some("nml0a1b2"));
        assert_eq!(lab_prefix("nml0a1b2"), None);
        assert_eq!(lab_prefix("xlab-a"), None);
        assert_eq!(lab_prefix("nmlzzzzz-hA"), None);
        assert_eq!(lab_prefix("nml0a1b23-hA"), None);
    }
}

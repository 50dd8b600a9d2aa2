//! After a move: what follows the VM. Services that keep network state per VM (DHCP bindings,
//! DNS records) register an `AfterMove`; the operator may name a script
//! (`migration.after_move`), called like dnsmasq's dhcp-script: `moved VM FROM TO MAC IP`.
//! Hooks run as soon as the network knows the VM's new place; a failing hook is journaled and
//! reported, and the move stands (the VM already runs on the target).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// A move as the hooks see it.
#[derive(Debug, Clone)]
pub struct Moved {
    pub migration: i64,
    pub vm: String,
    pub from: String,
    pub to: String,
    /// The MAC it has now.
    pub mac: String,
    /// The MAC it had before, when the move gave it a new one.
    pub old_mac: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

#[async_trait]
pub trait AfterMove: Send + Sync {
    /// Names the hook's journal step (`after move: NAME`).
    fn name(&self) -> &'static str;
    async fn moved(&self, m: &Moved) -> Result<(), String>;
}

/// The services' hooks, shared by every move.
pub type Hooks = Arc<Vec<Arc<dyn AfterMove>>>;

/// The operator's script.
pub struct Script {
    pub path: PathBuf,
    pub timeout: Duration,
}

#[async_trait]
impl AfterMove for Script {
    fn name(&self) -> &'static str {
        "script"
    }

    async fn moved(&self, m: &Moved) -> Result<(), String> {
        let ip = m.ip.map(|i| i.to_string()).unwrap_or_default();
        let id = m.migration.to_string();
        crate::script::run(
            &self.path,
            &["moved", &m.vm, &m.from, &m.to, &m.mac, &ip],
            ("NETMIGRATE_MIGRATION", &id),
            self.timeout,
        )
        .await
        .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved() -> Moved {
        Moved {
            migration: 7,
            vm: "vm1".into(),
            from: "hostA".into(),
            to: "hostC".into(),
            mac: "52:54:00:d5:00:15".into(),
            old_mac: None,
            ip: Some(Ipv4Addr::new(10, 213, 0, 21)),
        }
    }

    fn script(dir: &std::path::Path, body: &str) -> Script {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("hook.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Script {
            path,
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn the_script_gets_dnsmasq_style_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let s = script(
            dir.path(),
            &format!("echo \"$@ $NETMIGRATE_MIGRATION\" > {}", out.display()),
        );
        s.moved(&moved()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "moved vm1 hostA hostC 52:54:00:d5:00:15 10.213.0.21 7"
        );
    }

    #[tokio::test]
    async fn a_failing_or_hanging_script_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = script(dir.path(), "echo 'no route' >&2; exit 3")
            .moved(&moved())
            .await
            .unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("no route"),
            "{e}"
        );
        let mut slow = script(dir.path(), "sleep 5");
        slow.timeout = Duration::from_millis(200);
        let e = slow.moved(&moved()).await.unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
    }
}

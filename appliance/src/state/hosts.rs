//! The `hosts` table: hypervisor hosts as configured, with their pinned SSH host keys.

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use super::schema::FACTS_HISTORY;
use super::{now_ms, State, StateError};
use crate::config::HostConfig;
use crate::inventory::facts::HostFacts;
use crate::inventory::Collected;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRow {
    pub name: String,
    pub address: String,
    pub hypervisor: String,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub bridge: String,
    pub host_key: Option<String>,
    pub in_config: bool,
    pub updated_ms: i64,
    /// unknown (never collected), up, or down.
    pub status: String,
    /// Why it is down.
    pub status_reason: Option<String>,
    pub last_seen_ms: Option<i64>,
    /// Enrolled by provisioning (in no config file).
    #[serde(default)]
    pub enrolled: bool,
}

impl HostRow {
    fn from_row(r: &Row) -> rusqlite::Result<HostRow> {
        Ok(HostRow {
            name: r.get(0)?,
            address: r.get(1)?,
            hypervisor: r.get(2)?,
            ssh_user: r.get(3)?,
            ssh_port: r.get(4)?,
            bridge: r.get(5)?,
            host_key: r.get(6)?,
            in_config: r.get(7)?,
            updated_ms: r.get(8)?,
            status: r.get(9)?,
            status_reason: r.get(10)?,
            last_seen_ms: r.get(11)?,
            enrolled: r.get(12)?,
        })
    }
}

/// What a sync changed, by host name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostSync {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl HostSync {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn list(c: &Connection) -> rusqlite::Result<Vec<HostRow>> {
    let mut st = c.prepare_cached(
        "SELECT name, address, hypervisor, ssh_user, ssh_port, bridge, host_key, in_config, updated_ms,
                status, status_reason, last_seen_ms, enrolled
         FROM hosts ORDER BY name",
    )?;
    let rows = st.query_map([], HostRow::from_row)?;
    rows.collect()
}

/// Makes the table follow the config. A host dropped from the config keeps its row (its history
/// and pinned key stay) but is marked as no longer configured. A key pinned in the config wins;
/// a key pinned earlier in state is kept when the config names none.
pub fn sync(c: &Connection, hosts: &[HostConfig]) -> rusqlite::Result<HostSync> {
    let before = list(c)?;
    let mut out = HostSync::default();
    let now = now_ms();
    for h in hosts {
        let address = h.address.to_string();
        let old = before.iter().find(|b| b.name == h.name);
        let host_key = h
            .host_key
            .clone()
            .or_else(|| old.and_then(|o| o.host_key.clone()));
        match old {
            None => out.added.push(h.name.clone()),
            Some(o)
                if o.address != address
                    || o.hypervisor != h.hypervisor.as_str()
                    || o.ssh_user != h.ssh_user
                    || o.ssh_port != h.ssh_port
                    || o.bridge != h.bridge
                    || o.host_key != host_key
                    || !o.in_config =>
            {
                out.changed.push(h.name.clone())
            }
            Some(_) => continue,
        }
        c.execute(
            "INSERT INTO hosts (name, address, hypervisor, ssh_user, ssh_port, bridge, host_key, in_config, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8)
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, hypervisor = excluded.hypervisor,
               ssh_user = excluded.ssh_user, ssh_port = excluded.ssh_port, bridge = excluded.bridge,
               host_key = excluded.host_key, in_config = 1, updated_ms = excluded.updated_ms",
            params![h.name, address, h.hypervisor.as_str(), h.ssh_user, h.ssh_port, h.bridge, host_key, now],
        )?;
    }
    for b in before.iter().filter(|b| b.in_config) {
        if !hosts.iter().any(|h| h.name == b.name) {
            c.execute(
                "UPDATE hosts SET in_config = 0, updated_ms = ?2 WHERE name = ?1",
                params![b.name, now],
            )?;
            out.removed.push(b.name.clone());
        }
    }
    Ok(out)
}

/// Records one collection: the facts (and the host up) or the reason it is down.
pub fn record_collection(c: &Connection, r: &Collected) -> rusqlite::Result<()> {
    let now = now_ms();
    match (&r.facts, &r.error) {
        (Some(f), _) => {
            let json = serde_json::to_string(f).expect("facts serialize");
            c.execute(
                "INSERT INTO host_facts (host, collected_ms, duration_ms, facts) VALUES (?1, ?2, ?3, ?4)",
                params![r.host, now, r.duration_ms as i64, json],
            )?;
            c.execute(
                "DELETE FROM host_facts WHERE host = ?1 AND id NOT IN
                   (SELECT id FROM host_facts WHERE host = ?1 ORDER BY id DESC LIMIT ?2)",
                params![r.host, FACTS_HISTORY],
            )?;
            c.execute(
                "UPDATE hosts SET status = 'up', status_reason = NULL, last_seen_ms = ?2 WHERE name = ?1",
                params![r.host, now],
            )?;
        }
        (None, err) => {
            c.execute(
                "UPDATE hosts SET status = 'down', status_reason = ?2 WHERE name = ?1",
                params![r.host, err.as_deref().unwrap_or("unknown error")],
            )?;
        }
    }
    Ok(())
}

/// The newest facts of each host that has any: (host, collected_ms, facts).
pub fn latest_facts(c: &Connection) -> Result<Vec<(String, i64, HostFacts)>, StateError> {
    let mut st = c.prepare_cached(
        "SELECT host, collected_ms, facts FROM host_facts
         WHERE id IN (SELECT max(id) FROM host_facts GROUP BY host) ORDER BY host",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (h, at, json) = row?;
        let f = serde_json::from_str(&json)
            .map_err(|e| StateError::Corrupt(format!("facts of {h}: {e}")))?;
        out.push((h, at, f));
    }
    Ok(out)
}

impl State {
    pub async fn record_collections(&self, rs: Vec<Collected>) -> Result<(), StateError> {
        self.write(move |tx| {
            for r in &rs {
                record_collection(tx, r)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn latest_facts(&self) -> Result<Vec<(String, i64, HostFacts)>, StateError> {
        self.read(latest_facts).await
    }

    /// Pins a host key (what `netmigrate hosts trust` decided).
    pub async fn pin_host_key(&self, host: String, key: String) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE hosts SET host_key = ?2, updated_ms = ?3 WHERE name = ?1",
                params![host, key, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn sync_hosts(&self, hosts: Vec<HostConfig>) -> Result<HostSync, StateError> {
        self.write(move |tx| Ok(sync(tx, &hosts)?)).await
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>, StateError> {
        self.read(|c| Ok(list(c)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorKind;

    fn host(name: &str, addr: &str) -> HostConfig {
        HostConfig {
            name: name.into(),
            address: addr.parse().unwrap(),
            ssh_port: 22,
            ssh_user: "root".into(),
            ssh_key: "/k".into(),
            host_key: None,
            hypervisor: HypervisorKind::Qemu,
            bridge: "br0".into(),
            ovsdb: None,
            image_dir: "/i".into(),
            save_dir: "/s".into(),
            run_dir: "/run/netmigrate".into(),
            qemu_accel: "tcg".into(),
            connect_timeout: crate::inventory::CONNECT_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn sync_follows_config_and_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("state.db")).unwrap();
        let r = s
            .sync_hosts(vec![host("a", "10.0.0.11"), host("b", "10.0.0.12")])
            .await
            .unwrap();
        assert_eq!(r.added, vec!["a", "b"]);
        let r = s.sync_hosts(vec![host("a", "10.0.0.21")]).await.unwrap();
        assert_eq!(
            r,
            HostSync {
                added: vec![],
                changed: vec!["a".into()],
                removed: vec!["b".into()]
            }
        );
        let rows = s.hosts().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].in_config && rows[0].address == "10.0.0.21");
        assert!(!rows[1].in_config);
        assert!(s
            .sync_hosts(vec![host("a", "10.0.0.21")])
            .await
            .unwrap()
            .is_empty());
    }
}

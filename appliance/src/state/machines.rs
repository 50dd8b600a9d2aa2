//! The `machines` table: machines that network-booted, from discovered to ready.
//! Each change of stage is one transaction with what goes with it (an accepted machine's
//! reservation, a ready machine's host row), so a crash never leaves half an enrolment.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use netmigrate_provisioning::{rules, Stage};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};
use crate::config::Mac;

/// Machines kept waiting to be accepted, at most.
pub const MAX_DISCOVERED: i64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineRow {
    pub mac: String,
    pub network: String,
    pub stage: String,
    pub vendor_class: Option<String>,
    pub arch: Option<u16>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub accepted_why: Option<String>,
    pub host_key: Option<String>,
    pub ready_ms: Option<i64>,
}

const COLUMNS: &str = "mac, network, stage, vendor_class, arch, first_seen_ms, last_seen_ms, \
                       name, ip, accepted_why, host_key, ready_ms";

impl MachineRow {
    fn from_row(r: &Row) -> rusqlite::Result<MachineRow> {
        Ok(MachineRow {
            mac: r.get(0)?,
            network: r.get(1)?,
            stage: r.get(2)?,
            vendor_class: r.get(3)?,
            arch: r.get(4)?,
            first_seen_ms: r.get(5)?,
            last_seen_ms: r.get(6)?,
            name: r.get(7)?,
            ip: r.get(8)?,
            accepted_why: r.get(9)?,
            host_key: r.get(10)?,
            ready_ms: r.get(11)?,
        })
    }
}

fn get(c: &Connection, mac: &str) -> rusqlite::Result<Option<MachineRow>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM machines WHERE mac = ?1"),
        [mac],
        MachineRow::from_row,
    )
    .optional()
}

/// How a machine is accepted: its name from `template`, its address from `pool`, neither
/// one that `names_taken` / `ips_taken` (the config's hosts and reservations) already hold.
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub why: String,
    pub template: String,
    pub pool: (Ipv4Addr, Ipv4Addr),
    pub names_taken: Vec<String>,
    pub ips_taken: Vec<Ipv4Addr>,
}

/// What an enrolled host becomes: its row in `hosts`.
#[derive(Debug, Clone)]
pub struct EnrolledHost {
    pub hypervisor: String,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub bridge: String,
}

impl State {
    pub async fn machines(&self) -> Result<Vec<MachineRow>, StateError> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM machines ORDER BY first_seen_ms, mac"
            ))?;
            let rows = st.query_map([], MachineRow::from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    pub async fn machine(&self, mac: String) -> Result<Option<MachineRow>, StateError> {
        self.read(move |c| Ok(get(c, &mac)?)).await
    }

    /// Records that `mac` network-booted; returns its row and whether it was new. Beyond
    /// `MAX_DISCOVERED` machines waiting, the one seen longest ago is forgotten: a flood of
    /// made-up MACs on the segment cannot grow the state without bound.
    pub async fn machine_seen(
        &self,
        network: String,
        mac: String,
        vendor_class: Option<String>,
        arch: Option<u16>,
    ) -> Result<(MachineRow, bool), StateError> {
        self.write(move |tx| {
            let now = now_ms();
            let new = get(tx, &mac)?.is_none();
            if new {
                tx.execute(
                    "DELETE FROM machines WHERE mac IN (SELECT mac FROM machines
                       WHERE stage = 'discovered' ORDER BY last_seen_ms, mac
                       LIMIT max(0, (SELECT count(*) FROM machines WHERE stage = 'discovered') - ?1 + 1))",
                    [MAX_DISCOVERED],
                )?;
            }
            tx.execute(
                "INSERT INTO machines (mac, network, stage, vendor_class, arch, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, 'discovered', ?3, ?4, ?5, ?5)
                 ON CONFLICT (mac) DO UPDATE SET last_seen_ms = excluded.last_seen_ms,
                   vendor_class = COALESCE(excluded.vendor_class, vendor_class),
                   arch = COALESCE(excluded.arch, arch)",
                params![mac, network, vendor_class, arch, now],
            )?;
            Ok((get(tx, &mac)?.expect("just written"), new))
        })
        .await
    }

    /// Accepts a discovered machine: a name, an address from the pool and a reservation for
    /// its MAC, in one transaction. A machine accepted before is returned as it is.
    pub async fn accept_machine(
        &self,
        mac: String,
        a: Acceptance,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let Some(m) = get(tx, &mac)? else {
                return Err(StateError::NotFound(format!(
                    "no machine with MAC {mac} has network-booted here; `netmigrate hosts --discovered` lists those that did"
                )));
            };
            if m.stage != Stage::Discovered.as_str() {
                return Ok(m);
            }
            let strings = |sql: &str| -> rusqlite::Result<HashSet<String>> {
                let mut st = tx.prepare(sql)?;
                let v = st.query_map([], |r| r.get::<_, String>(0))?;
                v.collect()
            };
            let mut names = strings("SELECT name FROM machines WHERE name IS NOT NULL UNION SELECT name FROM hosts")?;
            names.extend(a.names_taken.iter().cloned());
            let bytes = mac.parse::<Mac>().map(|m| m.0).unwrap_or_default();
            let name = rules::next_name(&a.template, &bytes, &|n| names.contains(n));
            let mut ips: HashSet<Ipv4Addr> = strings(
                "SELECT ip FROM machines WHERE ip IS NOT NULL UNION SELECT ip FROM reservations",
            )?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
            ips.extend(a.ips_taken.iter().copied());
            let Some(ip) = rules::pick(a.pool, &ips) else {
                return Err(StateError::Conflict(format!(
                    "the provisioning pool {}-{} has no free address left for {mac}; widen provisioning.pool",
                    a.pool.0, a.pool.1
                )));
            };
            tx.execute(
                "INSERT INTO reservations (network, ip, mac, client_id, hostname, created_ms)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
                params![m.network, ip.to_string(), mac, name, now_ms()],
            )?;
            tx.execute(
                "UPDATE machines SET stage = 'accepted', name = ?2, ip = ?3, accepted_why = ?4 WHERE mac = ?1",
                params![mac, name, ip.to_string(), a.why],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// An accepted (or ready, booting again) machine was sent the installer with a new
    /// one-time token; an older token stops working.
    pub async fn machine_booting(
        &self,
        mac: String,
        token_hash: String,
        expires_ms: i64,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE machines SET stage = 'booting', token_hash = ?2, token_expires_ms = ?3
                 WHERE mac = ?1 AND stage != 'discovered'",
                params![mac, token_hash, expires_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// The installer called back with a token: its machine becomes ready and a host, its
    /// SSH host key pinned. The token is used up; unknown, used or expired: refused.
    pub async fn enrol_machine(
        &self,
        token_hash: String,
        host_key: String,
        host: EnrolledHost,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let m = tx
                .query_row(
                    "SELECT mac, token_expires_ms FROM machines WHERE token_hash = ?1",
                    [&token_hash],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
                .optional()?;
            let Some((mac, expires)) = m else {
                return Err(StateError::Conflict(
                    "unknown or already used enrolment token".into(),
                ));
            };
            let now = now_ms();
            if expires.is_some_and(|e| e < now) {
                tx.execute(
                    "UPDATE machines SET token_hash = NULL WHERE mac = ?1",
                    [&mac],
                )?;
                return Err(StateError::Conflict(format!(
                    "the enrolment token of {mac} has expired; boot the machine again for a new one"
                )));
            }
            tx.execute(
                "UPDATE machines SET stage = 'ready', token_hash = NULL, token_expires_ms = NULL,
                   host_key = ?2, ready_ms = ?3 WHERE mac = ?1",
                params![mac, host_key, now],
            )?;
            let m = get(tx, &mac)?.expect("just read");
            let (name, ip) = (m.name.clone().expect("named"), m.ip.clone().expect("addressed"));
            tx.execute(
                "INSERT INTO hosts (name, address, hypervisor, ssh_user, ssh_port, bridge, host_key,
                   in_config, updated_ms, enrolled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, 1)
                 ON CONFLICT (name) DO UPDATE SET address = excluded.address,
                   hypervisor = excluded.hypervisor, ssh_user = excluded.ssh_user,
                   ssh_port = excluded.ssh_port, bridge = excluded.bridge,
                   host_key = excluded.host_key, updated_ms = excluded.updated_ms, enrolled = 1",
                params![name, ip, host.hypervisor, host.ssh_user, host.ssh_port, host.bridge, host_key, now],
            )?;
            Ok(m)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptance() -> Acceptance {
        Acceptance {
            why: "operator".into(),
            template: "hv{n}".into(),
            pool: (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(10, 0, 0, 51)),
            names_taken: vec!["hv1".into()],
            ips_taken: vec![Ipv4Addr::new(10, 0, 0, 50)],
        }
    }

    fn host() -> EnrolledHost {
        EnrolledHost {
            hypervisor: "qemu".into(),
            ssh_user: "root".into(),
            ssh_port: 22,
            bridge: "br0".into(),
        }
    }

    #[tokio::test]
    async fn a_flood_of_made_up_macs_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        for i in 0..(MAX_DISCOVERED + 10) {
            let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
            s.machine_seen("lab".into(), mac, None, None).await.unwrap();
        }
        let m = s.machines().await.unwrap();
        assert_eq!(m.len() as i64, MAX_DISCOVERED);
        assert!(
            !m.iter().any(|m| m.mac == "02:00:00:00:00:00"),
            "the oldest went first"
        );
    }

    #[tokio::test]
    async fn a_machine_goes_from_discovered_to_ready_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let mac = "52:54:00:00:00:0a".to_string();
        let (m, new) = s
            .machine_seen("lab".into(), mac.clone(), Some("PXEClient".into()), Some(0))
            .await
            .unwrap();
        assert!(new && m.stage == "discovered");
        let (_, new) = s
            .machine_seen("lab".into(), mac.clone(), None, None)
            .await
            .unwrap();
        assert!(!new);
        // Not accepted yet: a token cannot be issued.
        s.machine_booting(mac.clone(), "h".into(), i64::MAX)
            .await
            .unwrap();
        assert_eq!(
            s.machine(mac.clone()).await.unwrap().unwrap().stage,
            "discovered"
        );

        let m = s.accept_machine(mac.clone(), acceptance()).await.unwrap();
        assert_eq!(
            (m.stage.as_str(), m.name.as_deref(), m.ip.as_deref()),
            ("accepted", Some("hv2"), Some("10.0.0.51"))
        );
        let r = s.reservations().await.unwrap();
        assert_eq!(
            (r[0].ip.as_str(), r[0].hostname.as_deref()),
            ("10.0.0.51", Some("hv2"))
        );
        // A second machine finds the pool empty, and says what to do.
        s.machine_seen("lab".into(), "52:54:00:00:00:0b".into(), None, None)
            .await
            .unwrap();
        let e = s
            .accept_machine("52:54:00:00:00:0b".into(), acceptance())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("widen provisioning.pool"), "{e}");

        s.machine_booting(mac.clone(), "h1".into(), i64::MAX)
            .await
            .unwrap();
        let m = s
            .enrol_machine("h1".into(), "ssh-ed25519 AAAA".into(), host())
            .await
            .unwrap();
        assert_eq!(m.stage, "ready");
        let h = s.hosts().await.unwrap();
        assert_eq!(
            (
                h[0].name.as_str(),
                h[0].address.as_str(),
                h[0].host_key.as_deref()
            ),
            ("hv2", "10.0.0.51", Some("ssh-ed25519 AAAA"))
        );
        let replay = s
            .enrol_machine("h1".into(), "ssh-ed25519 BBBB".into(), host())
            .await
            .unwrap_err();
        assert!(replay.to_string().contains("already used"), "{replay}");

        s.machine_booting(mac.clone(), "h2".into(), 1)
            .await
            .unwrap();
        let late = s
            .enrol_machine("h2".into(), "ssh-ed25519 CCCC".into(), host())
            .await
            .unwrap_err();
        assert!(late.to_string().contains("expired"), "{late}");
    }
}

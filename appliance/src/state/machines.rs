//! The `machines` table: machines that network-booted, from discovered to ready.
//! Each change of stage is one transaction with what goes with it (an accepted machine's
//! reservation, a ready machine's host row), so a crash never leaves half an enrolment.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use netmigrate_provisioning::{rules, Hardware, Stage};
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
    /// Its installer's report, once commissioned.
    pub hardware: Option<Hardware>,
    pub commissioned_ms: Option<i64>,
    /// Its BMC, when the operator gave one.
    pub bmc: Option<crate::power::Bmc>,
    /// The `[[provisioning.profile]]` it is deployed with; None: it runs the installer.
    pub profile: Option<String>,
    /// When it entered its stage.
    pub stage_ms: Option<i64>,
    /// Why its deployment failed (stage failed).
    pub failed_why: Option<String>,
    /// Why a discovered machine waits, as the rules see it now (not stored: the listing
    /// fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits: Option<String>,
}

const COLUMNS: &str = "mac, network, stage, vendor_class, arch, first_seen_ms, last_seen_ms, \
                       name, ip, accepted_why, host_key, ready_ms, hardware, commissioned_ms, bmc, \
                       profile, stage_ms, failed_why";

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
            // Written by this code from a checked report; one that no longer reads (an
            // older shape) is as good as none: the machine is commissioned again.
            hardware: r
                .get::<_, Option<String>>(12)?
                .and_then(|j| serde_json::from_str(&j).ok()),
            commissioned_ms: r.get(13)?,
            bmc: r
                .get::<_, Option<String>>(14)?
                .and_then(|j| serde_json::from_str(&j).ok()),
            profile: r.get(15)?,
            stage_ms: r.get(16)?,
            failed_why: r.get(17)?,
            waits: None,
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
    /// The profile it is deployed with (None: it runs the installer from RAM).
    pub profile: Option<String>,
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

    /// The machine `target` names: its MAC, or the name it was given.
    pub async fn machine_named(&self, target: String) -> Result<Option<MachineRow>, StateError> {
        self.read(move |c| {
            if let Ok(mac) = target.parse::<Mac>() {
                return Ok(get(c, &mac.to_string())?);
            }
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM machines WHERE name = ?1"),
                [&target],
                MachineRow::from_row,
            )
            .optional()?)
        })
        .await
    }

    /// The machine holding the one-time token `token_hash`, whatever its kind and state.
    pub async fn machine_with_token(
        &self,
        token_hash: String,
    ) -> Result<Option<MachineRow>, StateError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM machines WHERE token_hash = ?1"),
                [&token_hash],
                MachineRow::from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Keeps (or, with None, forgets) machine `mac`'s BMC.
    pub async fn set_machine_bmc(
        &self,
        mac: String,
        bmc: Option<crate::power::Bmc>,
    ) -> Result<MachineRow, StateError> {
        let json = bmc.map(|b| serde_json::to_string(&b).expect("a BMC serializes"));
        self.write(move |tx| {
            tx.execute(
                "UPDATE machines SET bmc = ?2 WHERE mac = ?1",
                params![mac, json],
            )?;
            get(tx, &mac)?.ok_or_else(|| StateError::NotFound(format!("no machine {mac}")))
        })
        .await
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
            // One commissioning may be accepted too: it keeps its stage's token, and the
            // report it sends finds it accepted.
            if m.stage != Stage::Discovered.as_str() && m.stage != Stage::Commissioning.as_str() {
                // Accepted again with a profile before it is deployed: deployed with that one.
                // (A deployed machine changes profile by `hosts deploy --profile`.)
                let undeployed = matches!(m.stage.as_str(), "accepted" | "failed");
                if undeployed && a.profile.is_some() && a.profile != m.profile {
                    tx.execute("UPDATE machines SET profile = ?2 WHERE mac = ?1", params![mac, a.profile])?;
                    return Ok(get(tx, &mac)?.expect("just written"));
                }
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
                "UPDATE machines SET stage = 'accepted', name = ?2, ip = ?3, accepted_why = ?4,
                   profile = ?5, stage_ms = ?6 WHERE mac = ?1",
                params![mac, name, ip.to_string(), a.why, a.profile, now_ms()],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// A machine was sent the installer to commission it, with a one-time token (an older
    /// one stops working). A discovered machine is commissioning from now on; an accepted
    /// one (by the operator, before its hardware was known) stays accepted.
    pub async fn machine_commissioning(
        &self,
        mac: String,
        token_hash: String,
        expires_ms: i64,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE machines SET token_hash = ?2, token_expires_ms = ?3, stage_ms = ?4,
                   stage = CASE stage WHEN 'discovered' THEN 'commissioning' ELSE stage END
                 WHERE mac = ?1 AND stage IN ('discovered', 'commissioning', 'accepted')",
                params![mac, token_hash, expires_ms, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// A commissioning installer reported its machine's hardware with its token: kept, the
    /// token used up, and the machine back to discovered (accepted, if it was meanwhile).
    /// Unknown, used or expired tokens are refused, as at enrolment.
    pub async fn machine_commissioned(
        &self,
        token_hash: String,
        hardware: Hardware,
    ) -> Result<MachineRow, StateError> {
        let report = serde_json::to_string(&hardware).expect("a report serializes");
        self.write(move |tx| {
            let mac = token_holder(tx, &token_hash, "commissioning")?;
            tx.execute(
                "UPDATE machines SET hardware = ?2, commissioned_ms = ?3, token_hash = NULL,
                   token_expires_ms = NULL, stage_ms = ?3,
                   stage = CASE stage WHEN 'commissioning' THEN 'discovered' ELSE stage END
                 WHERE mac = ?1",
                params![mac, report, now_ms()],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// A machine was sent the installer with a new one-time token (an older one stops
    /// working): to run it and enrol (`to` booting: an accepted machine, or a ready one
    /// booting again) or to deploy its profile (`to` deploying: accepted, or deploying
    /// again after a reboot).
    pub async fn machine_sent_installer(
        &self,
        mac: String,
        to: Stage,
        token_hash: String,
        expires_ms: i64,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE machines SET stage = ?2, token_hash = ?3, token_expires_ms = ?4,
                   stage_ms = ?5, failed_why = NULL
                 WHERE mac = ?1 AND stage NOT IN ('discovered', 'commissioning')",
                params![mac, to.as_str(), token_hash, expires_ms, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// A deploying installer wrote its image and checked it: the machine reboots into it,
    /// whose first call back holds the new token (`first_boot_hash`). The installer's token
    /// is used up; unknown, used or expired ones are refused.
    pub async fn machine_written(
        &self,
        token_hash: String,
        first_boot_hash: String,
        expires_ms: i64,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let mac = token_holder(tx, &token_hash, "deployment")?;
            tx.execute(
                "UPDATE machines SET stage = 'rebooting', token_hash = ?2, token_expires_ms = ?3,
                   stage_ms = ?4 WHERE mac = ?1",
                params![mac, first_boot_hash, expires_ms, now_ms()],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// A deploying installer gave up, with its token and why.
    pub async fn machine_deploy_failed(
        &self,
        token_hash: String,
        why: String,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let mac = token_holder(tx, &token_hash, "deployment")?;
            fail(tx, &mac, &why)?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// Machine `mac`, on its way to ready, failed (nothing to write, its check, or the
    /// appliance gave up waiting). One that is not (discovered, ready, failed) is left as
    /// it is: None.
    pub async fn machine_failed(
        &self,
        mac: String,
        why: String,
    ) -> Result<Option<MachineRow>, StateError> {
        self.write(move |tx| {
            let stage = get(tx, &mac)?.map(|m| m.stage);
            if !matches!(
                stage.as_deref(),
                Some("accepted" | "booting" | "deploying" | "rebooting")
            ) {
                return Ok(None);
            }
            fail(tx, &mac, &why)?;
            Ok(get(tx, &mac)?)
        })
        .await
    }

    /// Deploying and rebooting machines that entered their stage before `since_ms` have
    /// failed: each row with `why(stage)`.
    pub async fn machines_overdue(
        &self,
        since_ms: i64,
        why: fn(&str) -> String,
    ) -> Result<Vec<MachineRow>, StateError> {
        fn late(c: &Connection, since_ms: i64) -> rusqlite::Result<Vec<(String, String)>> {
            let mut st = c.prepare(
                "SELECT mac, stage FROM machines WHERE stage IN ('deploying', 'rebooting')
                   AND COALESCE(stage_ms, 0) < ?1",
            )?;
            let rows = st.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        }
        // Asked every few seconds: a write only when one is late.
        if self.read(move |c| Ok(late(c, since_ms)?)).await?.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |tx| {
            let late = late(tx, since_ms)?;
            let mut failed = Vec::new();
            for (mac, stage) in late {
                fail(tx, &mac, &why(&stage))?;
                failed.extend(get(tx, &mac)?);
            }
            Ok(failed)
        })
        .await
    }

    /// A machine called back with a token and its SSH host key, the token used up. One that
    /// ran the installer (booting) becomes ready and a host at once; a deployed one
    /// (rebooting) has its key pinned and stays rebooting until `machine_ready` says it
    /// passed its check. Unknown, used or expired tokens are refused.
    pub async fn enrol_machine(
        &self,
        token_hash: String,
        host_key: String,
        host: EnrolledHost,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let mac = token_holder(tx, &token_hash, "enrolment")?;
            tx.execute(
                "UPDATE machines SET token_hash = NULL, token_expires_ms = NULL, host_key = ?2,
                   stage_ms = ?3 WHERE mac = ?1",
                params![mac, host_key, now_ms()],
            )?;
            let m = get(tx, &mac)?.expect("just read");
            if m.stage == Stage::Rebooting.as_str() {
                return Ok(m);
            }
            ready(tx, &m, &host)
        })
        .await
    }

    /// A deployed machine that called back passed its check: ready, and a host.
    pub async fn machine_ready(
        &self,
        mac: String,
        host: EnrolledHost,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let m =
                get(tx, &mac)?.ok_or_else(|| StateError::NotFound(format!("no machine {mac}")))?;
            if m.stage != Stage::Rebooting.as_str() || m.host_key.is_none() {
                return Err(StateError::Conflict(format!(
                    "{mac} is {}, not a deployed machine that called back",
                    m.stage
                )));
            }
            ready(tx, &m, &host)
        })
        .await
    }
}

impl State {
    /// The operator deploys machine `mac` again (with `profile`, else the one it has): it is
    /// accepted once more, its host (if it was one) forgotten, its key unpinned; the next
    /// time it network-boots it is sent the installer to deploy.
    pub async fn machine_redeploy(
        &self,
        mac: String,
        profile: Option<String>,
    ) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let m =
                get(tx, &mac)?.ok_or_else(|| StateError::NotFound(format!("no machine {mac}")))?;
            if matches!(m.stage.as_str(), "discovered" | "commissioning") {
                return Err(StateError::Conflict(format!(
                    "{mac} is {}: accept it first (netmigrate hosts accept {mac} --profile NAME)",
                    m.stage
                )));
            }
            let profile = profile.or(m.profile.clone()).ok_or_else(|| {
                StateError::Conflict(format!(
                    "{} has no profile to deploy; name one with --profile",
                    m.name.as_deref().unwrap_or(&mac)
                ))
            })?;
            if let Some(name) = &m.name {
                tx.execute("DELETE FROM hosts WHERE name = ?1 AND enrolled = 1", [name])?;
            }
            tx.execute(
                "UPDATE machines SET stage = 'accepted', profile = ?2, failed_why = NULL,
                   token_hash = NULL, token_expires_ms = NULL, host_key = NULL, ready_ms = NULL,
                   stage_ms = ?3 WHERE mac = ?1",
                params![mac, profile, now_ms()],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }

    /// The operator releases machine `mac`: back to discovered (its hardware kept), its
    /// name, address, reservation, profile and host given up. Its `accepted_why` says it was
    /// released: the rules leave it to the operator from now on.
    pub async fn machine_release(&self, mac: String) -> Result<MachineRow, StateError> {
        self.write(move |tx| {
            let m =
                get(tx, &mac)?.ok_or_else(|| StateError::NotFound(format!("no machine {mac}")))?;
            if let Some(name) = &m.name {
                tx.execute("DELETE FROM hosts WHERE name = ?1 AND enrolled = 1", [name])?;
            }
            if let Some(ip) = &m.ip {
                tx.execute(
                    "DELETE FROM reservations WHERE network = ?1 AND ip = ?2 AND mac = ?3",
                    params![m.network, ip, mac],
                )?;
            }
            tx.execute(
                "UPDATE machines SET stage = 'discovered', name = NULL, ip = NULL,
                   accepted_why = 'released by the operator',
                   profile = NULL, failed_why = NULL, token_hash = NULL, token_expires_ms = NULL,
                   host_key = NULL, ready_ms = NULL, stage_ms = ?2 WHERE mac = ?1",
                params![mac, now_ms()],
            )?;
            Ok(get(tx, &mac)?.expect("just written"))
        })
        .await
    }
}

/// Machine `m` (its host key pinned) becomes ready and the host `host` describes.
fn ready(tx: &Connection, m: &MachineRow, host: &EnrolledHost) -> Result<MachineRow, StateError> {
    let now = now_ms();
    tx.execute(
        "UPDATE machines SET stage = 'ready', ready_ms = ?2, stage_ms = ?2 WHERE mac = ?1",
        params![m.mac, now],
    )?;
    let (name, ip) = (
        m.name.clone().expect("named"),
        m.ip.clone().expect("addressed"),
    );
    tx.execute(
        "INSERT INTO hosts (name, address, hypervisor, ssh_user, ssh_port, bridge, host_key,
           in_config, updated_ms, enrolled)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, 1)
         ON CONFLICT (name) DO UPDATE SET address = excluded.address,
           hypervisor = excluded.hypervisor, ssh_user = excluded.ssh_user,
           ssh_port = excluded.ssh_port, bridge = excluded.bridge,
           host_key = excluded.host_key, updated_ms = excluded.updated_ms, enrolled = 1",
        params![
            name,
            ip,
            host.hypervisor,
            host.ssh_user,
            host.ssh_port,
            host.bridge,
            m.host_key,
            now
        ],
    )?;
    Ok(get(tx, &m.mac)?.expect("just written"))
}

/// Machine `mac` failed, and why; its token stops working.
fn fail(tx: &Connection, mac: &str, why: &str) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE machines SET stage = 'failed', failed_why = ?2, token_hash = NULL,
           token_expires_ms = NULL, stage_ms = ?3 WHERE mac = ?1",
        params![mac, why, now_ms()],
    )?;
    Ok(())
}

/// The machine holding the one-time token `token_hash` (a `what` token: "enrolment",
/// "commissioning"), if the token is good: unknown, used or expired ones are refused (an
/// expired one is forgotten).
fn token_holder(tx: &Connection, token_hash: &str, what: &str) -> Result<String, StateError> {
    let m = tx
        .query_row(
            "SELECT mac, token_expires_ms, stage FROM machines WHERE token_hash = ?1",
            [token_hash],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((mac, expires, stage)) = m else {
        return Err(StateError::Conflict(format!(
            "unknown or already used {what} token"
        )));
    };
    // Each token is good for its one call: a commissioning token is held in stage
    // commissioning (or accepted, when the operator accepted the machine as it
    // commissioned), a deployment's in deploying, an enrolment's in booting (the installer)
    // or rebooting (a deployed system's first boot).
    let kind = match stage.as_str() {
        "commissioning" | "accepted" => "commissioning",
        "deploying" => "deployment",
        _ => "enrolment",
    };
    if kind != what {
        let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        return Err(StateError::Conflict(format!(
            "that token is not {article} {what} token"
        )));
    }
    if expires.is_some_and(|e| e < now_ms()) {
        tx.execute(
            "UPDATE machines SET token_hash = NULL WHERE mac = ?1",
            [&mac],
        )?;
        return Err(StateError::Conflict(format!(
            "the {what} token of {mac} has expired; boot the machine again for a new one"
        )));
    }
    Ok(mac)
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
            profile: None,
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
    async fn a_deployed_machine_is_ready_only_once_its_first_boot_passed_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let mac = "52:54:00:00:00:0d".to_string();
        s.machine_seen("lab".into(), mac.clone(), None, None)
            .await
            .unwrap();
        let a = Acceptance {
            profile: Some("xen".into()),
            ..acceptance()
        };
        let m = s.accept_machine(mac.clone(), a).await.unwrap();
        assert_eq!(m.profile.as_deref(), Some("xen"));
        s.machine_sent_installer(mac.clone(), Stage::Deploying, "d1".into(), i64::MAX)
            .await
            .unwrap();
        // A deployment's token is good for its report only.
        let e = s
            .enrol_machine("d1".into(), "ssh-ed25519 AAAA".into(), host())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an enrolment token"), "{e}");
        let m = s
            .machine_written("d1".into(), "f1".into(), i64::MAX)
            .await
            .unwrap();
        assert_eq!(m.stage, "rebooting");
        assert!(s
            .machine_written("d1".into(), "f2".into(), i64::MAX)
            .await
            .is_err());
        // The first boot's call back pins the key; no host yet.
        let m = s
            .enrol_machine("f1".into(), "ssh-ed25519 AAAA".into(), host())
            .await
            .unwrap();
        assert_eq!(
            (m.stage.as_str(), m.host_key.as_deref()),
            ("rebooting", Some("ssh-ed25519 AAAA"))
        );
        assert!(s.hosts().await.unwrap().is_empty());
        let xen = EnrolledHost {
            hypervisor: "xen".into(),
            ..host()
        };
        let m = s.machine_ready(mac.clone(), xen.clone()).await.unwrap();
        assert_eq!(m.stage, "ready");
        let h = s.hosts().await.unwrap();
        assert_eq!(
            (
                h[0].name.as_str(),
                h[0].hypervisor.as_str(),
                h[0].host_key.as_deref()
            ),
            ("hv2", "xen", Some("ssh-ed25519 AAAA"))
        );
        assert!(s.machine_ready(mac.clone(), xen).await.is_err(), "once");
        // Nothing more to fail: a ready machine is left as it is.
        assert!(s
            .machine_failed(mac.clone(), "late".into())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_machine_is_deployed_again_and_released_back_to_discovered() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let mac = "52:54:00:00:00:0e".to_string();
        s.machine_seen("lab".into(), mac.clone(), None, None)
            .await
            .unwrap();
        assert!(
            s.machine_redeploy(mac.clone(), Some("xen".into()))
                .await
                .is_err(),
            "a discovered machine is accepted first"
        );
        s.accept_machine(mac.clone(), acceptance()).await.unwrap();
        assert!(
            s.machine_redeploy(mac.clone(), None).await.is_err(),
            "no profile to deploy"
        );
        // Ready as a deployed host, then deployed again: accepted, its host and key gone.
        s.machine_sent_installer(mac.clone(), Stage::Deploying, "d".into(), i64::MAX)
            .await
            .unwrap();
        s.machine_written("d".into(), "f".into(), i64::MAX)
            .await
            .unwrap();
        s.enrol_machine("f".into(), "ssh-ed25519 AAAA".into(), host())
            .await
            .unwrap();
        s.machine_ready(mac.clone(), host()).await.unwrap();
        let m = s
            .machine_redeploy(mac.clone(), Some("qemu".into()))
            .await
            .unwrap();
        assert_eq!(
            (
                m.stage.as_str(),
                m.profile.as_deref(),
                m.host_key.as_deref()
            ),
            ("accepted", Some("qemu"), None)
        );
        assert!(s.hosts().await.unwrap().is_empty());
        // Released: discovered, no name, address or reservation; marked as released.
        let m = s.machine_release(mac.clone()).await.unwrap();
        assert_eq!(
            (m.stage.as_str(), m.name.as_deref(), m.ip.as_deref()),
            ("discovered", None, None)
        );
        assert_eq!(m.accepted_why.as_deref(), Some("released by the operator"));
        assert!(s.reservations().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_deployment_fails_with_its_reason_and_the_silent_ones_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let a = Acceptance {
            profile: Some("xen".into()),
            pool: (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(10, 0, 0, 59)),
            ..acceptance()
        };
        for (i, t) in ["t1", "t2", "t3"].iter().enumerate() {
            let mac = format!("52:54:00:00:01:0{i}");
            s.machine_seen("lab".into(), mac.clone(), None, None)
                .await
                .unwrap();
            s.accept_machine(mac.clone(), a.clone()).await.unwrap();
            s.machine_sent_installer(mac, Stage::Deploying, t.to_string(), i64::MAX)
                .await
                .unwrap();
        }
        let m = s
            .machine_deploy_failed("t1".into(), "image checksum: ...".into())
            .await
            .unwrap();
        assert_eq!(
            (m.stage.as_str(), m.failed_why.as_deref()),
            ("failed", Some("image checksum: ..."))
        );
        assert!(
            s.machine_deploy_failed("t1".into(), "again".into())
                .await
                .is_err(),
            "its token is used up"
        );
        s.machine_written("t2".into(), "f2".into(), i64::MAX)
            .await
            .unwrap();
        fn why(stage: &str) -> String {
            format!("silent while {stage}")
        }
        assert!(
            s.machines_overdue(0, why).await.unwrap().is_empty(),
            "not yet"
        );
        let late = s.machines_overdue(now_ms() + 1, why).await.unwrap();
        let mut got: Vec<_> = late
            .iter()
            .map(|m| (m.mac.as_str(), m.failed_why.as_deref().unwrap_or("")))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("52:54:00:00:01:01", "silent while rebooting"),
                ("52:54:00:00:01:02", "silent while deploying")
            ]
        );
        assert!(
            s.enrol_machine("f2".into(), "ssh-ed25519 AAAA".into(), host())
                .await
                .is_err(),
            "a failed machine's token stops working"
        );
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
        s.machine_sent_installer(mac.clone(), Stage::Booting, "h".into(), i64::MAX)
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

        s.machine_sent_installer(mac.clone(), Stage::Booting, "h1".into(), i64::MAX)
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

        s.machine_sent_installer(mac.clone(), Stage::Booting, "h2".into(), 1)
            .await
            .unwrap();
        let late = s
            .enrol_machine("h2".into(), "ssh-ed25519 CCCC".into(), host())
            .await
            .unwrap_err();
        assert!(late.to_string().contains("expired"), "{late}");
    }

    fn hardware(memory_mib: u64) -> Hardware {
        serde_json::from_value(serde_json::json!({
            "arch": "x86_64", "firmware": "bios", "cpus": 2, "cpu_model": "QEMU", "virt": "vmx",
            "memory_mib": memory_mib, "disks": [], "nics": []
        }))
        .unwrap()
    }

    /// Commissioning: the machine holds a commissioning token, its report is kept and the
    /// token used up; it is discovered again, or stays accepted if the operator accepted it
    /// meanwhile. Commissioning and enrolment tokens are not each other's.
    #[tokio::test]
    async fn a_machine_is_commissioned_once_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("s.db")).unwrap();
        let mac = "52:54:00:00:00:0c".to_string();
        s.machine_seen("lab".into(), mac.clone(), None, None)
            .await
            .unwrap();
        s.machine_commissioning(mac.clone(), "c1".into(), i64::MAX)
            .await
            .unwrap();
        assert_eq!(
            s.machine(mac.clone()).await.unwrap().unwrap().stage,
            "commissioning"
        );
        let e = s
            .enrol_machine("c1".into(), "ssh-ed25519 AAAA".into(), host())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an enrolment token"), "{e}");
        let m = s
            .machine_commissioned("c1".into(), hardware(2048))
            .await
            .unwrap();
        assert_eq!(m.stage, "discovered");
        assert_eq!(m.hardware, Some(hardware(2048)));
        assert!(m.commissioned_ms.is_some());
        let replay = s
            .machine_commissioned("c1".into(), hardware(1))
            .await
            .unwrap_err();
        assert!(replay.to_string().contains("already used"), "{replay}");

        // Commissioned again, and accepted by the operator while it reports.
        s.machine_commissioning(mac.clone(), "c2".into(), i64::MAX)
            .await
            .unwrap();
        let m = s.accept_machine(mac.clone(), acceptance()).await.unwrap();
        assert_eq!(m.stage, "accepted");
        let m = s
            .machine_commissioned("c2".into(), hardware(4096))
            .await
            .unwrap();
        assert_eq!(
            (m.stage.as_str(), m.hardware.unwrap().memory_mib),
            ("accepted", 4096)
        );
        // A booting machine's enrolment token is no commissioning token.
        s.machine_sent_installer(mac.clone(), Stage::Booting, "e1".into(), i64::MAX)
            .await
            .unwrap();
        let e = s
            .machine_commissioned("e1".into(), hardware(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a commissioning token"), "{e}");
    }
}

//! After a restart: every migration the journal shows unfinished is finished or rolled back.
//! The hosts are asked where the VM stands (the journal says what was started, the hosts say
//! what happened); the journal breaks ties. Whatever the outcome, the VM runs in one place.

use std::time::Duration;

use super::journal::Journal;
use super::{driver_err, port_of, Engine, Side};
use crate::config::Config;
use crate::hypervisor::{RunState, VmDef};
use crate::state::NewEvent;

/// Attempts per migration when a host does not answer, and the pause between them.
const TRIES: u32 = 5;
const RETRY: Duration = Duration::from_secs(5);

impl Engine {
    /// Settles every unfinished migration; runs at start, in the background.
    pub async fn recover(&self, cfg: &Config) {
        match self.state.interrupt_batches().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("{n} batch(es) interrupted by the stop; their moves not yet started stay where they are"),
            Err(e) => tracing::error!("recovery: closing interrupted batches: {e}"),
        }
        let open = match self.state.migrations(10_000, true).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("recovery: reading the journal: {e}");
                return;
            }
        };
        for m in open {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.recover_one(cfg, m.id).await {
                    Ok(()) => break,
                    Err(e) if tries < TRIES => {
                        tracing::warn!(migration = m.id, "recovery attempt {tries}: {e}; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                    Err(e) => {
                        let _ = self
                            .state
                            .record(
                                NewEvent::error(
                                    "migration.recovery",
                                    format!("migration {} could not be settled: {e}", m.id),
                                )
                                .about(&m.vm),
                            )
                            .await;
                        break;
                    }
                }
            }
        }
    }

    async fn recover_one(&self, cfg: &Config, id: i64) -> Result<(), String> {
        let m = self
            .state
            .migration(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("gone from the journal")?;
        let def = self
            .state
            .vm(m.vm.clone())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("VM {} is no longer defined", m.vm))?
            .def;
        let host = |n: &str| {
            cfg.hosts
                .iter()
                .find(|h| h.name == n)
                .ok_or_else(|| format!("host {n} is no longer in the config"))
        };
        let src = self
            .side(host(&m.source)?)
            .await
            .map_err(|e| e.to_string())?;
        let dst = self
            .side(host(&m.target)?)
            .await
            .map_err(|e| e.to_string())?;
        let journal = Journal {
            state: self.state.clone(),
            id,
        };
        let last = m
            .steps
            .last()
            .map(|s| format!("{} ({})", s.step, s.state))
            .unwrap_or_else(|| "its start".into());
        let done = |name: &str| m.steps.iter().any(|s| s.step == name && s.state == "done");
        let s = src.driver.state(&def).await.map_err(driver_err)?;
        let t = dst.driver.state(&def).await.map_err(driver_err)?;
        tracing::info!(migration = id, source = ?s, target = ?t, last = %last, "recovering");

        let resumed_on_target = done("resume on target") || done("target runs");
        let loaded_and_verified = done("verify checksum") || done("live pre-copy");
        let forward = t == RunState::Running
            || (resumed_on_target && t != RunState::Absent)
            || (s == RunState::Absent && t == RunState::Paused && loaded_and_verified);
        let mut def = def;
        let (state, host, reason) = if forward {
            settle_forward(&journal, &def, &src, &dst, t).await;
            // A new MAC asked for and perhaps half given: give it (again; it is idempotent).
            if let Some(new) = m.detail["new_mac"].as_str().filter(|n| *n != def.mac) {
                if let Ok(given) = journal
                    .step("recover: new mac", self.give_mac(&dst, &def, new))
                    .await
                {
                    def = given;
                }
            }
            let old_mac = m.detail["old_mac"].as_str().filter(|o| *o != def.mac);
            super::run_hooks(
                self,
                cfg,
                &journal,
                &def,
                old_mac,
                &src.cfg.name,
                &dst.cfg.name,
            )
            .await;
            (
                "done",
                dst.cfg.name.clone(),
                format!("finished after the appliance restarted during {last}"),
            )
        } else {
            if s == RunState::Absent {
                return Err(format!(
                    "{} runs on neither host (source {s:?}, target {t:?}); start it again with `netmigrate vm start`",
                    def.name
                ));
            }
            settle_back(&journal, &def, &src, &dst, s).await?;
            (
                "rolled-back",
                src.cfg.name.clone(),
                format!("rolled back after the appliance restarted during {last}"),
            )
        };
        for u in [format!("mig{id}-up"), format!("mig{id}-down")] {
            let _ = self.state.delete_account(u).await;
        }
        self.state
            .end_migration(id, state, Some(reason.clone()), host.clone(), "running")
            .await
            .map_err(|e| e.to_string())?;
        let _ = self
            .state
            .record(
                NewEvent::warn(
                    "migration.recovered",
                    format!("{reason}; the VM runs on {host}"),
                )
                .about(&def.name),
            )
            .await;
        Ok(())
    }
}

/// The VM is (or may be made) running on the target: finish the move.
async fn settle_forward(j: &Journal, def: &VmDef, src: &Side, dst: &Side, t: RunState) {
    // The port was made before the load (and the VM's device is there now); make sure it
    // is up before the VM runs, it costs one round trip.
    if dst.port_up(def, Duration::ZERO).await.is_err() {
        j.try_step("recover: target port", async {
            dst.add_port(def, &port_of(def)).await.map(drop)
        })
        .await;
    }
    if t != RunState::Running {
        j.try_step("recover: resume on target", async {
            dst.driver.resume(def).await.map_err(driver_err)
        })
        .await;
    }
    j.try_step("recover: announce", async {
        dst.driver.announce(def).await.map_err(driver_err)
    })
    .await;
    j.try_step("recover: stop source", async {
        src.driver.destroy(def).await.map_err(driver_err)
    })
    .await;
    j.try_step("recover: source port", async { src.del_port(def).await })
        .await;
}

/// The VM belongs on the source: clear the target, let the source run.
async fn settle_back(
    j: &Journal,
    def: &VmDef,
    src: &Side,
    dst: &Side,
    s: RunState,
) -> Result<(), String> {
    // A live pre-copy may still be going on by itself.
    if s == RunState::Running {
        j.try_step("recover: cancel outgoing migration", async {
            src.driver.abort_outgoing(def).await.map_err(driver_err)
        })
        .await;
    }
    j.try_step("recover: clear target", async {
        dst.driver.destroy(def).await.map_err(driver_err)
    })
    .await;
    j.try_step("recover: target port", async { dst.del_port(def).await })
        .await;
    j.step("recover: resume source", async {
        src.driver.resume(def).await.map_err(driver_err)
    })
    .await?;
    // The network may have been re-pointed at the target before the crash.
    j.try_step("recover: announce on source", async {
        src.driver.announce(def).await.map_err(driver_err)
    })
    .await;
    Ok(())
}

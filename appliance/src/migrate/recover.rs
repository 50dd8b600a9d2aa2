//! After a restart: every migration the journal shows unfinished is finished or rolled back.
//! The hosts are asked where the VM stands (the journal says what was started, the hosts say
//! what happened); the journal breaks ties. Whatever the outcome, the VM runs in one place.

use std::time::Duration;

use super::cold::{Creds, TransferFiles};
use super::error::{Error, Result};
use super::journal::Journal;
use super::{port_of, Engine, Side, Step};
use crate::config::Config;
use crate::hypervisor::{RunState, VmDef};
use crate::state::NewEvent;

/// What recovery does with a move the appliance's stop interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Finish it: the VM runs, or may be made to run, on the target.
    Forward,
    /// Roll it back: the VM belongs on the source.
    Back,
    /// The VM is on neither host: nothing to settle, the operator is told.
    Lost,
}

/// Recovery's decision table: where the hosts say the VM stands (`s` on the source, `t` on the
/// target) and which steps the journal shows done. A VM running on the target stays there; so
/// does one paused there once the journal says it was resumed there (a pause that is the
/// hypervisor's, not ours), or once its state was loaded and verified and the source has none.
/// Otherwise it goes back to the source, unless the source has none either.
pub(crate) fn decide(s: RunState, t: RunState, done: impl Fn(Step) -> bool) -> Decision {
    let resumed_on_target = done(Step::ResumeOnTarget) || done(Step::TargetRuns);
    let loaded_and_verified = done(Step::VerifyChecksum) || done(Step::LivePreCopy);
    let forward = t == RunState::Running
        || (resumed_on_target && t != RunState::Absent)
        || (s == RunState::Absent && t == RunState::Paused && loaded_and_verified);
    if forward {
        Decision::Forward
    } else if s == RunState::Absent {
        Decision::Lost
    } else {
        Decision::Back
    }
}

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

    pub(crate) async fn recover_one(&self, cfg: &Config, id: i64) -> Result<()> {
        let m = self
            .state
            .migration(id)
            .await?
            .ok_or_else(|| Error::Refused("gone from the journal".into()))?;
        let def = self
            .state
            .vm(m.vm.clone())
            .await?
            .ok_or_else(|| Error::Refused(format!("VM {} is no longer defined", m.vm)))?
            .def;
        let host = |n: &str| {
            cfg.hosts
                .iter()
                .find(|h| h.name == n)
                .ok_or_else(|| Error::Refused(format!("host {n} is no longer in the config")))
        };
        let side = |r: std::result::Result<Side, super::Refused>| {
            r.map_err(|e| Error::Refused(e.to_string()))
        };
        let src = side(self.side(host(&m.source)?).await)?;
        let dst = side(self.side(host(&m.target)?).await)?;
        let journal = Journal {
            store: self.journal.clone(),
            id,
        };
        let last = m
            .steps
            .last()
            .map(|s| format!("{} ({})", s.step, s.state))
            .unwrap_or_else(|| "its start".into());
        let done = |step: Step| {
            m.steps
                .iter()
                .any(|s| s.step == step.name() && s.state == "done")
        };
        // Journaled and not failed: its side effect may have happened (a failed disk step made
        // nothing, or says so).
        let begun = |step: Step| {
            m.steps
                .iter()
                .any(|s| s.step == step.name() && s.state != "failed")
        };
        let disks = Disks {
            made: begun(Step::TargetDisks),
            exported: begun(Step::ExportDisks),
            mirrored: begun(Step::MirrorDisks),
        };
        let s = src.driver.state(&def).await?;
        let t = dst.driver.state(&def).await?;
        tracing::info!(migration = id, source = ?s, target = ?t, last = %last, "recovering");

        let mut def = def;
        let (state, host, reason) = match decide(s, t, done) {
            Decision::Forward => {
                settle_forward(&journal, &def, &src, &dst, t, disks).await;
                // A new MAC asked for and perhaps half given: give it (again; it is idempotent).
                if let Some(new) = m.detail["new_mac"].as_str().filter(|n| *n != def.mac) {
                    if let Ok(given) = journal
                        .step(Step::RecoverNewMac, self.give_mac(&dst, &def, new))
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
            }
            Decision::Lost => {
                return Err(Error::Refused(format!(
                    "{} runs on neither host (source {s:?}, target {t:?}); start it again with `netmigrate vm start`",
                    def.name
                )));
            }
            Decision::Back => {
                settle_back(&journal, &def, &src, &dst, s, disks).await?;
                (
                    "rolled-back",
                    src.cfg.name.clone(),
                    format!("rolled back after the appliance restarted during {last}"),
                )
            }
        };
        journal
            .try_step(
                Step::RecoverOneTimeFiles,
                drop_accounts(self, &m, &src, &dst),
            )
            .await;
        self.state
            .end_migration(id, state, Some(reason.clone()), host.clone(), "running")
            .await?;
        if host == dst.cfg.name {
            self.own_port(&def.name, &host)
                .await
                .map_err(|e| Error::Refused(e.to_string()))?;
        }
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

/// A cold move's one-time accounts, netrc files and transfer files, whichever were made
/// (their names follow from the migration's number and VM).
async fn drop_accounts(
    engine: &Engine,
    m: &crate::state::MigrationRow,
    src: &Side,
    dst: &Side,
) -> Result<()> {
    let c = Creds::new(&m.vm, m.id, &src.cfg.run_dir, &dst.cfg.run_dir);
    for u in [c.up_user, c.down_user] {
        engine.state.delete_account(u).await?;
    }
    let t = TransferFiles::new(&m.vm, m.id, &dst.cfg.run_dir);
    src.remove(&[&c.up_netrc]).await?;
    dst.remove(&[&c.down_netrc]).await?;
    dst.remove(&t.all()).await
}

/// What the journal shows of a move's disk steps.
#[derive(Debug, Clone, Copy)]
struct Disks {
    /// The target's copies may have been made.
    made: bool,
    /// The target may serve them.
    exported: bool,
    /// The source may mirror onto them.
    mirrored: bool,
}

/// The VM is (or may be made) running on the target: finish the move. Its disks there are
/// its own now; the source's are kept (recovery never removes them).
async fn settle_forward(
    j: &Journal,
    def: &VmDef,
    src: &Side,
    dst: &Side,
    t: RunState,
    disks: Disks,
) {
    // The port was made before the load (and the VM's device is there now); make sure it
    // is up before the VM runs, it costs one round trip.
    if dst
        .switch
        .port_up(&def.port_on(&dst.cfg.name), Duration::ZERO)
        .await
        .is_err()
    {
        j.try_step(Step::RecoverTargetPort, async {
            dst.add_port(def, &port_of(def)).await.map(drop)
        })
        .await;
    }
    if t != RunState::Running {
        j.try_step(Step::RecoverResumeTarget, async {
            Ok(dst.driver.resume(def).await?)
        })
        .await;
    }
    j.try_step(Step::RecoverAnnounce, async {
        Ok(dst.driver.announce(def).await?)
    })
    .await;
    if disks.exported {
        j.try_step(Step::RecoverEndExport, async {
            Ok(dst.driver.end_export(def).await?)
        })
        .await;
    }
    j.try_step(Step::RecoverStopSource, async {
        Ok(src.driver.destroy(def).await?)
    })
    .await;
    j.try_step(Step::RecoverSourcePort, src.del_port(def)).await;
}

/// The VM belongs on the source: clear the target (and the copies of its disks made there),
/// let the source run.
async fn settle_back(
    j: &Journal,
    def: &VmDef,
    src: &Side,
    dst: &Side,
    s: RunState,
    disks: Disks,
) -> Result<()> {
    // A live pre-copy may still be going on by itself, and a disk mirror with it.
    if s == RunState::Running {
        j.try_step(Step::RecoverCancelOutgoing, async {
            Ok(src.driver.abort_outgoing(def).await?)
        })
        .await;
    }
    if disks.mirrored && s != RunState::Absent {
        j.try_step(Step::RecoverCancelMirror, async {
            Ok(src.driver.end_mirror(def).await?)
        })
        .await;
    }
    j.try_step(Step::RecoverClearTarget, async {
        Ok(dst.driver.destroy(def).await?)
    })
    .await;
    j.try_step(Step::RecoverRemoveTargetPort, dst.del_port(def))
        .await;
    if disks.made {
        j.try_step(Step::RecoverRemoveTargetDisks, async {
            Ok(dst.driver.remove_disks(def).await?)
        })
        .await;
    }
    j.step(Step::RecoverResumeSource, async {
        Ok(src.driver.resume(def).await?)
    })
    .await?;
    // The network may have been re-pointed at the target before the crash.
    j.try_step(Step::RecoverAnnounceOnSource, async {
        Ok(src.driver.announce(def).await?)
    })
    .await;
    Ok(())
}

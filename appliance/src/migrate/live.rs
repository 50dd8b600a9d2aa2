//! The live path: pre-copy straight from the source hypervisor to the target's, which waits
//! with its port already on the switch; the VM pauses only for the last dirty pages. If
//! pre-copy cannot converge within its time, the source keeps running and the caller may take
//! the cold path.

use std::time::Duration;

use super::error::{Error, Result};
use super::{Failure, Move, Step};
use crate::hypervisor::RunState;

/// Incoming live migrations listen on this port plus the migration's number (mod 10000).
const LIVE_PORT_BASE: u16 = 49152;
/// A target serves its disks' copies on this port plus the migration's number (mod 5000).
const NBD_PORT_BASE: u16 = 60000;

impl Move<'_> {
    pub(crate) async fn live(&self) -> Result<(), Failure> {
        let spec = self.prepare_target().await.map_err(Failure::RolledBack)?;
        let port = LIVE_PORT_BASE + (self.journal.id % 10000) as u16;
        let nbd_port = NBD_PORT_BASE + (self.journal.id % 5000) as u16;
        let disks = !self.disks.is_empty();
        let exported = async {
            if !disks {
                return Ok(());
            }
            self.journal
                .step(Step::ExportDisks, async {
                    Ok(self.dst.driver.export_disks(self.def, nbd_port).await?)
                })
                .await
        };
        let listening = async {
            exported.await?;
            self.journal
                .step(Step::TargetListens, async {
                    Ok(self.dst.driver.listen_incoming(self.def, port).await?)
                })
                .await
        };
        if let Err(e) = listening.await {
            self.undo_target().await;
            return Err(Failure::RolledBack(e));
        }
        if disks {
            // The disks first, while the VM runs on: once in sync they stay so (every write
            // reaches both copies), and the memory's pre-copy follows.
            let mirrored = self
                .journal
                .step(Step::MirrorDisks, async {
                    Ok(self
                        .src
                        .driver
                        .mirror_disks(
                            self.def,
                            self.dst.cfg.address,
                            nbd_port,
                            self.cfg.migration.mirror_timeout,
                        )
                        .await?)
                })
                .await;
            if let Err(e) = mirrored {
                self.rollback().await;
                return Err(Failure::RolledBack(e));
            }
        }
        let downtime = Duration::from_millis(self.req.downtime_ms);
        let timeout = self
            .req
            .live_timeout_s
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.migration.live_timeout);
        let r = self
            .journal
            .step(Step::LivePreCopy, async {
                Ok(self
                    .src
                    .driver
                    .live_migrate(self.def, self.dst.cfg.address, port, downtime, timeout)
                    .await?)
            })
            .await;
        let result = match r {
            Ok(res) => res,
            Err(e) => {
                // The source was never stopped for good: a failed or cancelled pre-copy
                // leaves it running. Make sure, then clear the target. One that timed out, or
                // whose stream broke with the VM resumed at the source, left the VM untouched
                // there: the cold path may follow.
                self.rollback().await;
                return Err(if e.may_go_cold() {
                    Failure::NotConverged(e)
                } else {
                    Failure::RolledBack(e)
                });
            }
        };
        let _ = self
            .engine
            .state
            .migration_detail(
                self.journal.id,
                serde_json::json!({"downtime_ms": result.downtime_ms, "total_ms": result.total_ms,
                                   "bytes": result.bytes}),
            )
            .await;
        // The target starts by itself once the state is in, its port already taken by the
        // switch; check both, and start it if it did not.
        let port = self.port_after_load(&spec).await;
        let running = self
            .journal
            .step(Step::TargetRuns, async {
                // It may still be taking in the last pages when the source reports done.
                let t = std::time::Instant::now();
                loop {
                    match self.dst.driver.state(self.def).await? {
                        RunState::Running => return Ok(()),
                        RunState::Paused => return Ok(self.dst.driver.resume(self.def).await?),
                        RunState::Incoming if t.elapsed() < Duration::from_secs(10) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        s => {
                            return Err(Error::Refused(format!(
                                "the target VM is {s:?} after the migration"
                            )))
                        }
                    }
                }
            })
            .await;
        if let Err(e) = port.and(running) {
            // A hypervisor that ended the source's copy (some senders destroy it) leaves
            // the target's the only one: it must go on there, whatever failed.
            if matches!(self.src.driver.state(self.def).await, Ok(RunState::Absent)) {
                let mut problems = vec![e];
                problems.extend(
                    self.journal
                        .try_step(Step::ResumeOnTarget, async {
                            Ok(self.dst.driver.resume(self.def).await?)
                        })
                        .await,
                );
                problems.extend(self.arrive().await);
                if let Err(Failure::Forward { problems: p, .. }) = self.clear_source(vec![]).await {
                    problems.extend(p);
                }
                return Err(Failure::Forward {
                    on: format!("{} (its source copy is gone)", self.dst.cfg.name),
                    problems,
                });
            }
            self.rollback().await;
            return Err(Failure::RolledBack(e));
        }
        // The network first: the break ends when the switches know. Then, the VM's disks
        // having been in sync to the last write and the source paused since, the mirror
        // ends (nothing is left for it to copy) and the target stops serving its disks, off
        // the break. Neither failing keeps the VM from running on the target; both are
        // reported, and the source's disks are kept.
        let mut problems = self.arrive().await;
        if disks {
            let mirror = async { Ok(self.src.driver.end_mirror(self.def).await?) };
            problems.extend(self.journal.try_step(Step::EndMirror, mirror).await);
            let export = async { Ok(self.dst.driver.end_export(self.def).await?) };
            problems.extend(self.journal.try_step(Step::EndExport, export).await);
        }
        self.clear_source(problems).await
    }
}

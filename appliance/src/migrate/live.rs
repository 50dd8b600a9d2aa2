//! The live path: pre-copy straight from the source hypervisor to the target's, which waits
//! with its port already on the switch; the VM pauses only for the last dirty pages. If
//! pre-copy cannot converge within its time, the source keeps running and the caller may take
//! the cold path.

use std::time::Duration;

use super::{driver_err, Failure, Move};
use crate::hypervisor::{DriverError, RunState};

/// Incoming live migrations listen on this port plus the migration's number (mod 10000).
const LIVE_PORT_BASE: u16 = 49152;

impl Move<'_> {
    pub(crate) async fn live(&self) -> Result<(), Failure> {
        let spec = self.prepare_target().await.map_err(Failure::RolledBack)?;
        let port = LIVE_PORT_BASE + (self.journal.id % 10000) as u16;
        if let Err(e) = self
            .journal
            .step("target listens", async {
                self.dst
                    .driver
                    .listen_incoming(self.def, port)
                    .await
                    .map_err(driver_err)
            })
            .await
        {
            self.undo_target().await;
            return Err(Failure::RolledBack(e));
        }
        let downtime = Duration::from_millis(self.req.downtime_ms);
        let timeout = self
            .req
            .live_timeout_s
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.migration.live_timeout);
        // Pre-copy that timed out, or whose stream broke with the VM resumed at the source,
        // leaves the VM untouched there: the cold path may follow.
        let mut may_go_cold = false;
        let r = self
            .journal
            .step("live pre-copy", async {
                self.src
                    .driver
                    .live_migrate(self.def, self.dst.cfg.address, port, downtime, timeout)
                    .await
                    .map_err(|e| {
                        may_go_cold = matches!(
                            e,
                            DriverError::Timeout { .. } | DriverError::LiveFailed { .. }
                        );
                        driver_err(e)
                    })
            })
            .await;
        let result = match r {
            Ok(res) => res,
            Err(e) => {
                // The source was never stopped for good: a failed or cancelled pre-copy
                // leaves it running. Make sure, then clear the target.
                self.rollback().await;
                return Err(if may_go_cold {
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
            .step("target runs", async {
                // It may still be taking in the last pages when the source reports done.
                let t = std::time::Instant::now();
                loop {
                    match self.dst.driver.state(self.def).await.map_err(driver_err)? {
                        RunState::Running => return Ok(()),
                        RunState::Paused => {
                            return self.dst.driver.resume(self.def).await.map_err(driver_err)
                        }
                        RunState::Incoming if t.elapsed() < Duration::from_secs(10) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        s => return Err(format!("the target VM is {s:?} after the migration")),
                    }
                }
            })
            .await;
        if let Err(e) = port.and(running) {
            // A hypervisor that ended the source's copy (Xen's sender destroys it) leaves
            // the target's the only one: it must go on there, whatever failed.
            if matches!(self.src.driver.state(self.def).await, Ok(RunState::Absent)) {
                let _ = self.dst.driver.resume(self.def).await;
                let told = self.arrive().await;
                let _ = self.clear_source(told).await;
                return Err(Failure::Forward(format!(
                    "the VM runs on {} (its source copy is gone), but: {e}",
                    self.dst.cfg.name
                )));
            }
            self.rollback().await;
            return Err(Failure::RolledBack(e));
        }
        self.finish_on_target().await
    }
}

//! Batches: the moves of one plan (placement's order, staging hops included) run to their end,
//! several at once where the limits allow. A move may start only when no earlier move still has
//! to happen first: one of the same VM, one leaving its target (the plan counted on that room),
//! or one not yet started on a host it shares (the operator's order per host is kept). Within
//! that, at most `max_per_host` moves involve one host and `max_per_link` run between one pair.
//! A move that does not complete stops the batch from starting more, unless `keep_going`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Engine, Mode, Refused, Request};
use crate::config::Config;
use crate::placement::Move;
use crate::planner::{PlanError, PlanRequest};
use crate::state::{BatchRow, NewEvent};

/// A batch as asked: what to plan, and how to move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    pub plan: PlanRequest,
    pub mode: Mode,
    /// Live: the longest pause at switch-over (default: `migration.downtime`).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Live: give up pre-copy after this long (default: `migration.live_timeout`).
    #[serde(default)]
    pub live_timeout_s: Option<u64>,
    #[serde(default = "super::yes")]
    pub probe_enabled: bool,
    /// The TCP port probed on each VM's address (default 80).
    #[serde(default)]
    pub probe_port: Option<u16>,
    /// Default: `migration.max_per_host`.
    #[serde(default)]
    pub max_per_host: Option<usize>,
    /// Default: `migration.max_per_link`.
    #[serde(default)]
    pub max_per_link: Option<usize>,
    /// Start the remaining moves even after one did not complete.
    #[serde(default)]
    pub keep_going: bool,
    /// VMs to give a new MAC on their target, by name.
    #[serde(default)]
    pub new_macs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Pending,
    Running,
    Done,
    Failed(String),
}

/// Whether move `i` may start now.
fn startable(
    moves: &[Move],
    slots: &[Slot],
    i: usize,
    max_per_host: usize,
    max_per_link: usize,
) -> bool {
    let m = &moves[i];
    let shares = |o: &Move| {
        [&o.from, &o.to]
            .iter()
            .any(|h| **h == m.from || **h == m.to)
    };
    for (j, o) in moves[..i].iter().enumerate() {
        let open = matches!(slots[j], Slot::Pending | Slot::Running);
        if open && (o.vm == m.vm || o.from == m.to) {
            return false;
        }
        if slots[j] == Slot::Pending && shares(o) {
            return false;
        }
    }
    let running = moves
        .iter()
        .zip(slots)
        .filter(|(_, s)| **s == Slot::Running)
        .map(|(o, _)| o);
    let (mut on_from, mut on_to, mut on_link) = (0, 0, 0);
    for o in running {
        let hosts = [&o.from, &o.to];
        on_from += usize::from(hosts.contains(&&m.from));
        on_to += usize::from(hosts.contains(&&m.to));
        let same_pair = (o.from == m.from && o.to == m.to) || (o.from == m.to && o.to == m.from);
        on_link += usize::from(same_pair);
    }
    on_from < max_per_host && on_to < max_per_host && on_link < max_per_link
}

impl Engine {
    /// Plans the batch on fresh facts and opens it; its moves then run in a task of their own
    /// (a client going away does not stop them). Refusals come back before anything moves.
    pub async fn start_batch(
        &self,
        cfg: Arc<Config>,
        req: BatchRequest,
    ) -> Result<BatchRow, Refused> {
        if req.plan.vms.is_empty() {
            return Err(Refused::Driver("name at least one VM to move".into()));
        }
        if let Some(vm) = req.new_macs.keys().find(|v| !req.plan.vms.contains(v)) {
            return Err(Refused::Driver(format!(
                "--new-mac names {vm}, which is not among the VMs to move"
            )));
        }
        let mut involved: Vec<String> = Vec::new();
        for name in &req.plan.vms {
            let row = self
                .state
                .vm(name.clone())
                .await?
                .ok_or_else(|| Refused::UnknownVm(name.clone()))?;
            match (&row.host, row.state.as_str()) {
                (Some(h), "running") => involved.push(h.clone()),
                _ => {
                    return Err(Refused::NotRunning {
                        vm: name.clone(),
                        state: row.state,
                    })
                }
            }
        }
        involved.extend(req.plan.to.iter().cloned());
        involved.sort();
        involved.dedup();
        let mut hosts = Vec::new();
        for name in &involved {
            let h = cfg
                .hosts
                .iter()
                .find(|h| &h.name == name)
                .ok_or_else(|| Refused::UnknownHost(name.clone()))?;
            hosts.push((h.clone(), self.pinned_key(h).await?));
        }
        // Plan with what the hosts hold now, not with the last periodic collection.
        let collected = self.collect_now(hosts).await;
        if let Some(c) = collected.iter().find(|c| c.facts.is_none()) {
            return Err(Refused::Driver(format!(
                "{}: its resources could not be collected: {}",
                c.host,
                c.error.clone().unwrap_or_else(|| "no answer".into())
            )));
        }
        self.state.record_collections(collected).await?;
        let planned = crate::planner::plan(&cfg, &self.state, req.plan.clone())
            .await
            .map_err(|e| match e {
                PlanError::Bad(m) => Refused::Driver(format!("no plan: {m}")),
                PlanError::State(e) => Refused::State(e),
            })?;
        if !planned.plan.unplaced.is_empty() {
            let why: Vec<String> = planned
                .plan
                .unplaced
                .iter()
                .map(|d| {
                    let hosts: Vec<String> = d
                        .rejected
                        .iter()
                        .map(|r| format!("{}: {}", r.host, r.why))
                        .collect();
                    format!("{} {} ({})", d.vm, d.reason, hosts.join("; "))
                })
                .collect();
            return Err(Refused::Driver(format!("no plan: {}", why.join("; "))));
        }
        let moves = planned.plan.moves.clone();
        let cold = match req.mode {
            Mode::Live => self.cold_because(&cfg, &moves).await?,
            Mode::Cold => Vec::new(),
        };
        let mut plan_json = serde_json::to_value(&planned.plan).expect("json");
        // A live batch's moves that will take the cold path, and why: the plan says so.
        plan_json["cold"] = serde_json::to_value(&cold).expect("json");
        let id = self
            .state
            .begin_batch(serde_json::to_value(&req).expect("json"), plan_json)
            .await?;
        self.state
            .record(NewEvent::info(
                "batch.start",
                format!(
                    "batch {id}: {} move(s) of {}",
                    moves.len(),
                    req.plan.vms.join(", ")
                ),
            ))
            .await?;
        let engine = self.clone();
        let c = cfg.clone();
        tokio::spawn(async move { engine.run_batch(c, id, req, moves).await });
        Ok(self.state.batch(id).await?.expect("the batch just written"))
    }

    /// For a live batch: each move whose VM cannot live-migrate from its source (its
    /// hypervisor says why), as `{vm, why}`.
    async fn cold_because(
        &self,
        cfg: &Config,
        moves: &[Move],
    ) -> Result<Vec<serde_json::Value>, Refused> {
        let mut out = Vec::new();
        for m in moves {
            let (Some(src), Some(dst), Some(row)) = (
                cfg.hosts.iter().find(|h| h.name == m.from),
                cfg.hosts.iter().find(|h| h.name == m.to),
                self.state.vm(m.vm.clone()).await?,
            ) else {
                continue;
            };
            let (s, d) = (self.side(src).await?, self.side(dst).await?);
            if let Some(why) = s.driver.live_refusal(&row.def, &*d.driver).await {
                out.push(serde_json::json!({"vm": m.vm, "why": why}));
            }
        }
        Ok(out)
    }

    async fn run_batch(self, cfg: Arc<Config>, id: i64, req: BatchRequest, moves: Vec<Move>) {
        let per_host = req
            .max_per_host
            .unwrap_or(cfg.migration.max_per_host)
            .max(1);
        let per_link = req
            .max_per_link
            .unwrap_or(cfg.migration.max_per_link)
            .max(1);
        let downtime_ms = req
            .downtime_ms
            .unwrap_or(cfg.migration.downtime.as_millis() as u64);
        let mut slots = vec![Slot::Pending; moves.len()];
        let mut tasks: JoinSet<(usize, Result<String, String>)> = JoinSet::new();
        let mut index: HashMap<tokio::task::Id, usize> = HashMap::new();
        loop {
            let stopping = !req.keep_going && slots.iter().any(|s| matches!(s, Slot::Failed(_)));
            if !stopping {
                for i in 0..moves.len() {
                    if slots[i] != Slot::Pending
                        || !startable(&moves, &slots, i, per_host, per_link)
                    {
                        continue;
                    }
                    slots[i] = Slot::Running;
                    let m = &moves[i];
                    let one = Request {
                        vm: m.vm.clone(),
                        target: m.to.clone(),
                        mode: req.mode,
                        downtime_ms,
                        live_timeout_s: req.live_timeout_s,
                        probe: req.probe_port.map(|p| format!(":{p}")),
                        probe_enabled: req.probe_enabled,
                        batch: Some(id),
                        new_mac: req.new_macs.get(&m.vm).cloned(),
                    };
                    let (engine, c) = (self.clone(), cfg.clone());
                    let h = tasks.spawn(async move {
                        let r = match engine.migrate(&c, &one).await {
                            Ok(row) if row.state == "done" => Ok(row.state),
                            Ok(row) => Err(format!(
                                "{} (migration {})",
                                row.reason.unwrap_or(row.state),
                                row.id
                            )),
                            Err(e) => Err(e.to_string()),
                        };
                        (i, r)
                    });
                    index.insert(h.id(), i);
                }
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            let (i, r) = match joined {
                Ok((_, (i, r))) => (i, r),
                Err(e) => (index[&e.id()], Err(format!("the move's task failed: {e}"))),
            };
            slots[i] = match r {
                Ok(_) => Slot::Done,
                Err(why) => {
                    let _ = self
                        .state
                        .record(
                            NewEvent::warn(
                                "batch.move",
                                format!("batch {id}: {} -> {}: {why}", moves[i].from, moves[i].to),
                            )
                            .about(&moves[i].vm),
                        )
                        .await;
                    Slot::Failed(why)
                }
            };
        }
        let problems: Vec<String> = moves
            .iter()
            .zip(&slots)
            .filter_map(|(m, s)| match s {
                Slot::Failed(why) => Some(format!("{}: {why}", m.vm)),
                Slot::Pending => Some(format!("{}: not started", m.vm)),
                _ => None,
            })
            .collect();
        let (state, reason) = if problems.is_empty() {
            ("done", None)
        } else {
            (
                "failed",
                Some(format!(
                    "{} of {} move(s) did not complete: {}",
                    problems.len(),
                    moves.len(),
                    problems.join("; ")
                )),
            )
        };
        if let Err(e) = self.state.end_batch(id, state, reason.clone()).await {
            tracing::error!(batch = id, "closing the batch: {e}");
        }
        let ev = match reason {
            None => NewEvent::info("batch.done", format!("batch {id}: all moves done")),
            Some(r) => NewEvent::warn("batch.failed", format!("batch {id}: {r}")),
        };
        let _ = self.state.record(ev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(vm: &str, from: &str, to: &str) -> Move {
        Move {
            vm: vm.into(),
            from: from.into(),
            to: to.into(),
            staging: false,
        }
    }

    fn ready(moves: &[Move], slots: &[Slot], host: usize, link: usize) -> Vec<usize> {
        (0..moves.len())
            .filter(|&i| slots[i] == Slot::Pending && startable(moves, slots, i, host, link))
            .collect()
    }

    #[test]
    fn one_per_host_runs_the_plan_in_order() {
        let moves = [
            mv("vm1", "A", "C"),
            mv("vm2", "A", "C"),
            mv("vm3", "B", "C"),
        ];
        let mut slots = vec![Slot::Pending; 3];
        assert_eq!(ready(&moves, &slots, 1, 1), vec![0]);
        slots[0] = Slot::Running;
        assert!(ready(&moves, &slots, 1, 1).is_empty());
        slots[0] = Slot::Done;
        assert_eq!(ready(&moves, &slots, 1, 1), vec![1]);
    }

    #[test]
    fn disjoint_hosts_move_together_within_the_limits() {
        let moves = [
            mv("vm1", "A", "C"),
            mv("vm2", "B", "D"),
            mv("vm3", "A", "C"),
        ];
        let mut slots = vec![Slot::Pending; 3];
        assert_eq!(ready(&moves, &slots, 1, 1), vec![0, 1]);
        slots[0] = Slot::Running;
        slots[1] = Slot::Running;
        // vm3 shares A and C with vm1: the link limit and the host limit both hold it.
        assert!(ready(&moves, &slots, 1, 1).is_empty());
        assert!(ready(&moves, &slots, 2, 1).is_empty());
        assert_eq!(ready(&moves, &slots, 2, 2), vec![2]);
    }

    #[test]
    fn a_move_into_a_host_waits_for_the_one_leaving_it() {
        // A swap through a staging host: vm2 must leave B before vm1 may arrive there.
        let moves = [
            mv("vm2", "B", "C"),
            mv("vm1", "A", "B"),
            mv("vm2", "C", "A"),
        ];
        let mut slots = vec![Slot::Pending; 3];
        assert_eq!(ready(&moves, &slots, 8, 8), vec![0]);
        slots[0] = Slot::Running;
        assert!(ready(&moves, &slots, 8, 8).is_empty());
        slots[0] = Slot::Done;
        // vm1 A -> B may go; vm2's second hop waits for vm1 to leave A.
        assert_eq!(ready(&moves, &slots, 8, 8), vec![1]);
    }

    #[test]
    fn a_failed_move_no_longer_holds_others() {
        let moves = [mv("vm1", "A", "C"), mv("vm2", "A", "C")];
        let slots = vec![Slot::Failed("no".into()), Slot::Pending];
        assert_eq!(ready(&moves, &slots, 1, 1), vec![1]);
    }
}

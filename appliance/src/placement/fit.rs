//! Choosing a target for each unit: the paper's first-fit, or vector best-fit-decreasing.

use super::{Algorithm, Ctx, Decision, Rejected, Res, Unit, Why};

pub(crate) struct Placed {
    pub decisions: Vec<Decision>,
    /// (VM index, target host) for every placed VM.
    pub assignment: Vec<(usize, String)>,
}

/// Places every unit. A unit that finds no room stays on its source, which then holds its load;
/// since a source may be another unit's target, placement is redone until that settles.
pub(crate) fn place(ctx: &Ctx, units: &[Unit]) -> Placed {
    let mut base = ctx.base.clone();
    let mut staying: Vec<usize> = Vec::new(); // unit indexes
    let mut stay_decisions: Vec<(usize, Decision)> = Vec::new();
    loop {
        let active: Vec<usize> = (0..units.len()).filter(|u| !staying.contains(u)).collect();
        let (decisions, failed) = pass(ctx, units, &active, &base);
        if failed.is_empty() {
            // Decisions in the order they were made, those that stayed where they failed.
            let mut all: Vec<Decision> = decisions.into_iter().map(|(_, d)| d).collect();
            all.extend(stay_decisions.into_iter().map(|(_, d)| d));
            let assignment = all
                .iter()
                .filter_map(|d| d.to.clone().map(|to| (ctx.vm_ix[d.vm.as_str()], to)))
                .collect();
            return Placed {
                decisions: all,
                assignment,
            };
        }
        for (u, d) in decisions.into_iter().filter(|(u, _)| failed.contains(u)) {
            for &v in &units[u].vms {
                let vm = &ctx.cluster.vms[v];
                let h = ctx.host_ix[vm.host.as_str()];
                base[h] = base[h].plus(vm.req);
            }
            staying.push(u);
            stay_decisions.push((u, d));
        }
    }
}

/// One placement pass over `active` units; returns per-unit decisions (one per VM, flattened
/// with the unit index) and the units that found no room.
fn pass(
    ctx: &Ctx,
    units: &[Unit],
    active: &[usize],
    base: &[Res],
) -> (Vec<(usize, Decision)>, Vec<usize>) {
    let mut order: Vec<usize> = active.to_vec();
    if ctx.req.algorithm == Algorithm::BestFit {
        // Decreasing dominant share of the largest target: the hardest to place goes first.
        let biggest = ctx
            .req
            .targets
            .iter()
            .map(|t| ctx.effective[ctx.host_ix[t.as_str()]])
            .max_by_key(|r| (r.mem_mib, r.cpu_milli))
            .unwrap_or_default();
        order.sort_by(|a, b| {
            units[*b]
                .req
                .dominant_share(&biggest)
                .partial_cmp(&units[*a].req.dominant_share(&biggest))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    // One yardstick for every host, so that slack compares across host sizes.
    let yardstick = ctx
        .req
        .targets
        .iter()
        .map(|t| ctx.effective[ctx.host_ix[t.as_str()]])
        .fold(Res::default(), |a, r| {
            Res::new(
                a.cpu_milli.max(r.cpu_milli),
                a.mem_mib.max(r.mem_mib),
                a.disk_mib.max(r.disk_mib),
                a.bw_mbps.max(r.bw_mbps),
            )
        });
    let mut load = base.to_vec();
    let mut anti = ctx.anti_hosts.clone();
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for u in order {
        let unit = &units[u];
        let mut rejected = unit.barred.clone();
        // (host, score): lower is better; the rest that fit are rejected at the end.
        let mut best: Option<(usize, (bool, f64))> = None;
        let mut fitting = Vec::new();
        for &h in &unit.candidates {
            let room = ctx.effective[h].minus(load[h]);
            let why = if let Some(g) = unit.anti_groups.iter().find(|g| anti[**g].contains(&h)) {
                Some(Why::AntiAffinity(ctx.anti_names[*g].clone()))
            } else {
                unit.req
                    .short_dim(&room)
                    .map(|(dim, need, have)| Why::Short {
                        dim,
                        need,
                        have,
                        headroom_pct: ctx.req.headroom_pct,
                    })
            };
            if let Some(why) = why {
                rejected.push(Rejected {
                    host: ctx.host_names[h].clone(),
                    why,
                });
                continue;
            }
            fitting.push(h);
            let score = match ctx.req.algorithm {
                Algorithm::FirstFit => (false, 0.0),
                // Best fit: a host already in use, the one left tightest; else open the
                // emptiest, so that later VMs still find room.
                Algorithm::BestFit => {
                    if load[h] != Res::default() {
                        (false, room.minus(unit.req).share_sum(&yardstick))
                    } else {
                        (true, -room.share_sum(&yardstick))
                    }
                }
            };
            if best.is_none_or(|(_, b)| score.0.cmp(&b.0).then(score.1.total_cmp(&b.1)).is_lt()) {
                best = Some((h, score));
            }
        }
        for h in fitting {
            if Some(h) != best.map(|(b, _)| b) {
                rejected.push(Rejected {
                    host: ctx.host_names[h].clone(),
                    why: match ctx.req.algorithm {
                        Algorithm::FirstFit => Why::EarlierTarget,
                        Algorithm::BestFit => Why::LooserFit,
                    },
                });
            }
        }
        let chosen = best.map(|(h, _)| h);
        if let Some(h) = chosen {
            load[h] = load[h].plus(unit.req);
            for g in &unit.anti_groups {
                anti[*g].push(h);
            }
        } else {
            failed.push(u);
        }
        let names: Vec<&str> = unit
            .vms
            .iter()
            .map(|v| ctx.cluster.vms[*v].name.as_str())
            .collect();
        for &v in &unit.vms {
            let vm = &ctx.cluster.vms[v];
            let reason = match chosen {
                Some(_) => {
                    let mut r = match ctx.req.algorithm {
                        Algorithm::FirstFit => format!("first target with room for {}", vm.req),
                        Algorithm::BestFit => format!("tightest fit for {}", unit.req),
                    };
                    if names.len() > 1 {
                        r.push_str(&format!(" (affinity group {})", names.join("+")));
                    }
                    r
                }
                None => format!("stays on `{}`: no target has room", vm.host),
            };
            out.push((
                u,
                Decision {
                    vm: vm.name.clone(),
                    to: chosen.map(|h| ctx.cluster.hosts[h].name.clone()),
                    reason,
                    rejected: rejected.clone(),
                },
            ));
        }
    }
    (out, failed)
}

//! Choosing a target for each unit: the paper's first-fit, or vector best-fit-decreasing.

use super::{Algorithm, Ctx, Decision, Rejected, Res, Unit};

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
fn pass(ctx: &Ctx, units: &[Unit], active: &[usize], base: &[Res]) -> (Vec<(usize, Decision)>, Vec<usize>) {
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
    let mut load = base.to_vec();
    let mut anti = ctx.anti_hosts.clone();
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for u in order {
        let unit = &units[u];
        let mut rejected = unit.barred.clone();
        let mut best: Option<(usize, f64)> = None;
        for c in &unit.candidates {
            let h = ctx.host_ix[c.as_str()];
            let room = ctx.effective[h].minus(load[h]);
            let why = if let Some(g) = unit.anti_groups.iter().find(|g| anti[**g].contains(&h)) {
                Some(format!(
                    "anti-affinity: a VM of group [{}] is there",
                    ctx.req.rules.anti_affinity[*g].join(", ")
                ))
            } else {
                unit.req.first_shortfall(&room).map(|s| {
                    if ctx.req.headroom_pct > 0 {
                        format!("{s} (keeping {}% free)", ctx.req.headroom_pct)
                    } else {
                        s
                    }
                })
            };
            if let Some(why) = why {
                rejected.push(Rejected {
                    host: c.clone(),
                    why,
                });
                continue;
            }
            match ctx.req.algorithm {
                Algorithm::FirstFit => {
                    if best.is_none() {
                        best = Some((h, 0.0));
                    } else {
                        rejected.push(Rejected {
                            host: c.clone(),
                            why: "fits, but first-fit took an earlier target".into(),
                        });
                    }
                }
                Algorithm::BestFit => {
                    // Slack left after placing: the smaller, the tighter the fit.
                    let slack = room.minus(unit.req).share_sum(&ctx.effective[h]);
                    match best {
                        Some((b, s)) if s <= slack => rejected.push(Rejected {
                            host: c.clone(),
                            why: format!(
                                "fits, but leaves more room unused than `{}` ({slack:.2} vs {s:.2})",
                                ctx.cluster.hosts[b].name
                            ),
                        }),
                        Some((b, s)) => {
                            rejected.push(Rejected {
                                host: ctx.cluster.hosts[b].name.clone(),
                                why: format!("fits, but leaves more room unused ({s:.2} vs {slack:.2})"),
                            });
                            best = Some((h, slack));
                        }
                        None => best = Some((h, slack)),
                    }
                }
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
        let names: Vec<&str> = unit.vms.iter().map(|v| ctx.cluster.vms[*v].name.as_str()).collect();
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

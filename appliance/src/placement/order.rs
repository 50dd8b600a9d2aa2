//! Ordering the moves so that no host exceeds its capacity at any step. A VM stays counted on
//! its source until its move is done, so when targets hold VMs that leave too (swaps, chains),
//! the order matters; a cycle is broken through a host with room, or the plan is refused.

use super::fit::Placed;
use super::{Ctx, Move, Order, PlanError, Res};

/// The operator's order: sources in order of first appearance, then machine by machine or one
/// VM per source in turn.
fn base_order(ctx: &Ctx, placed: &Placed) -> Vec<(usize, usize)> {
    let target_of = |v: usize| {
        placed
            .assignment
            .iter()
            .find(|(a, _)| *a == v)
            .map(|(_, t)| ctx.host_ix[t.as_str()])
    };
    let mut per_source: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for name in &ctx.req.vms {
        let v = ctx.vm_ix[name.as_str()];
        let Some(t) = target_of(v) else { continue };
        let s = ctx.host_ix[ctx.cluster.vms[v].host.as_str()];
        match per_source.iter_mut().find(|(h, _)| *h == s) {
            Some((_, list)) => list.push((v, t)),
            None => per_source.push((s, vec![(v, t)])),
        }
    }
    match ctx.req.order {
        Order::Sequential => per_source.into_iter().flat_map(|(_, l)| l).collect(),
        Order::RoundRobin => {
            let longest = per_source.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
            (0..longest)
                .flat_map(|i| {
                    per_source
                        .iter()
                        .filter_map(move |(_, l)| l.get(i).copied())
                })
                .collect()
        }
    }
}

pub(crate) fn order(ctx: &Ctx, placed: &Placed) -> Result<Vec<Move>, PlanError> {
    let hosts = &ctx.cluster.hosts;
    let vms = &ctx.cluster.vms;
    let mut at: Vec<usize> = vms.iter().map(|v| ctx.host_ix[v.host.as_str()]).collect();
    let mut load = vec![Res::default(); hosts.len()];
    for (i, v) in vms.iter().enumerate() {
        load[at[i]] = load[at[i]].plus(v.req);
    }
    let room = |load: &[Res], h: usize| hosts[h].cap.minus(load[h]);

    let mut pending = base_order(ctx, placed);
    let mut moves = Vec::new();
    let mut hops = 0;
    while !pending.is_empty() {
        // The earliest move, in the operator's order, that fits now.
        if let Some(i) = pending
            .iter()
            .position(|&(v, t)| vms[v].req.fits(&room(&load, t)))
        {
            let (v, t) = pending.remove(i);
            moves.push(step(ctx, &mut at, &mut load, v, t, false));
            continue;
        }
        // A cycle: park a VM whose leaving unblocks another move on a host with room.
        hops += 1;
        let excluded = |h: usize| ctx.req.rules.excluded.contains(&hosts[h].name);
        let hop = (hops <= 2 * vms.len())
            .then(|| {
                pending.iter().find_map(|&(v, t)| {
                    let from = at[v];
                    let unblocks = pending.iter().any(|&(w, u)| {
                        w != v && u == from && vms[w].req.fits(&room(&load, from).plus(vms[v].req))
                    });
                    if !unblocks {
                        return None;
                    }
                    (0..hosts.len())
                        .filter(|&h| h != from && h != t && !excluded(h))
                        .filter(|&h| vms[v].req.fits(&room(&load, h)))
                        .max_by_key(|&h| room(&load, h).mem_mib)
                        .map(|h| (v, h))
                })
            })
            .flatten();
        let Some((v, h)) = hop else {
            let why: Vec<String> = pending
                .iter()
                .map(|&(v, t)| {
                    format!(
                        "`{}` {} -> {} ({})",
                        vms[v].name,
                        hosts[at[v]].name,
                        hosts[t].name,
                        vms[v]
                            .req
                            .first_shortfall(&room(&load, t))
                            .unwrap_or_default()
                    )
                })
                .collect();
            return Err(PlanError::Impossible(format!(
                "every remaining move waits for another and no host has room to park a VM: {}",
                why.join("; ")
            )));
        };
        moves.push(step(ctx, &mut at, &mut load, v, h, true));
    }
    Ok(moves)
}

/// Moves VM `v` to host `to` in the simulation and returns the step.
fn step(ctx: &Ctx, at: &mut [usize], load: &mut [Res], v: usize, to: usize, staging: bool) -> Move {
    let (vm, hosts) = (&ctx.cluster.vms[v], &ctx.cluster.hosts);
    let from = at[v];
    load[from] = load[from].minus(vm.req);
    load[to] = load[to].plus(vm.req);
    at[v] = to;
    Move {
        vm: vm.name.clone(),
        from: hosts[from].name.clone(),
        to: hosts[to].name.clone(),
        staging,
    }
}

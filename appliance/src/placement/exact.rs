//! An exact solver for small instances (the bound: at most 8 VMs x 4 hosts), to
//! measure the packers' gap to the optimum: the fewest target hosts that hold every VM.

use super::{validate, Cluster, Plan, PlanError, Request, Res};

/// Largest instance solved exactly (units x candidate hosts stays small enough for a search).
pub const MAX_VMS: usize = 10;
pub const MAX_HOSTS: usize = 6;

/// The fewest targets that can receive every requested VM under the request's rules, or None
/// when no placement holds them all. Err on bad input or an instance too big to solve.
pub fn min_targets(cluster: &Cluster, req: &Request) -> Result<Option<usize>, PlanError> {
    let (ctx, units) = validate::check(cluster, req)?;
    if units.len() > MAX_VMS || req.targets.len() > MAX_HOSTS {
        return Err(PlanError::Invalid(format!(
            "exact solving is for at most {MAX_VMS} VMs x {MAX_HOSTS} hosts"
        )));
    }
    // Biggest first: failures show early, pruning bites sooner.
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|u| std::cmp::Reverse((units[*u].req.mem_mib, units[*u].req.cpu_milli)));
    let cands: Vec<Vec<usize>> = order.iter().map(|u| units[*u].candidates.clone()).collect();

    struct S<'a> {
        units: Vec<(Res, &'a [usize])>,
        cands: Vec<Vec<usize>>,
        effective: Vec<Res>,
        load: Vec<Res>,
        used: Vec<u32>,
        anti: Vec<Vec<usize>>,
        best: Option<usize>,
    }
    fn dfs(s: &mut S, i: usize, n_used: usize) {
        if s.best.is_some_and(|b| n_used >= b) {
            return;
        }
        if i == s.units.len() {
            s.best = Some(n_used);
            return;
        }
        let (req, groups) = s.units[i];
        for h in s.cands[i].clone() {
            if !req.fits(&s.effective[h].minus(s.load[h]))
                || groups.iter().any(|g| s.anti[*g].contains(&h))
            {
                continue;
            }
            s.load[h] = s.load[h].plus(req);
            s.used[h] += 1;
            for g in groups {
                s.anti[*g].push(h);
            }
            let extra = usize::from(s.used[h] == 1);
            dfs(s, i + 1, n_used + extra);
            for g in groups {
                s.anti[*g].pop();
            }
            s.used[h] -= 1;
            s.load[h] = s.load[h].minus(req);
        }
    }
    let mut s = S {
        units: order
            .iter()
            .map(|u| (units[*u].req, units[*u].anti_groups.as_slice()))
            .collect(),
        cands,
        effective: ctx.effective.clone(),
        load: ctx.base.clone(),
        used: vec![0; cluster.hosts.len()],
        anti: ctx.anti_hosts.clone(),
        best: None,
    };
    dfs(&mut s, 0, 0);
    Ok(s.best)
}

/// Targets that receive at least one VM in a plan (staging hops not counted).
pub fn targets_used(plan: &Plan) -> usize {
    let mut t: Vec<&str> = plan
        .decisions
        .iter()
        .filter_map(|d| d.to.as_deref())
        .collect();
    t.sort_unstable();
    t.dedup();
    t.len()
}

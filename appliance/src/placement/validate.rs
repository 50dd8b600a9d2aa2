//! Checks a request against the cluster and turns it into units with their candidate hosts.
//! Every problem here refuses the whole request: nothing is half-planned.

use std::collections::{HashMap, HashSet};

use super::{Cluster, Ctx, Mode, PlanError, Rejected, Request, Res, Unit, Why};

pub(crate) fn check<'a>(
    cluster: &'a Cluster,
    req: &'a Request,
) -> Result<(Ctx<'a>, Vec<Unit>), PlanError> {
    let host_ix: HashMap<&str, usize> = cluster
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let vm_ix: HashMap<&str, usize> = cluster
        .vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let vm = |n: &str| {
        vm_ix
            .get(n)
            .copied()
            .ok_or_else(|| PlanError::UnknownVm(n.into()))
    };
    let host = |n: &str| {
        host_ix
            .get(n)
            .copied()
            .ok_or_else(|| PlanError::UnknownHost(n.into()))
    };

    if req.vms.is_empty() {
        return Err(PlanError::Invalid("no VM to move".into()));
    }
    if req.targets.is_empty() {
        return Err(PlanError::Invalid("no target host given".into()));
    }
    if req.headroom_pct >= 100 {
        return Err(PlanError::Invalid(format!(
            "headroom {}% leaves no room; use 0 to 99",
            req.headroom_pct
        )));
    }
    let mut moving = Vec::new();
    let mut seen = HashSet::new();
    for n in &req.vms {
        let i = vm(n)?;
        if !seen.insert(i) {
            return Err(PlanError::Invalid(format!("VM `{n}` is listed twice")));
        }
        moving.push(i);
    }
    let mut targets = Vec::new();
    for t in &req.targets {
        let i = host(t)?;
        if targets.contains(&i) {
            return Err(PlanError::Invalid(format!("target `{t}` is listed twice")));
        }
        targets.push(i);
    }
    for v in &cluster.vms {
        host(&v.host).map_err(|_| {
            PlanError::Invalid(format!("VM `{}` runs on unknown host `{}`", v.name, v.host))
        })?;
    }
    for e in &req.rules.excluded {
        host(e)?;
    }
    let mut pinned: HashMap<usize, usize> = HashMap::new();
    for (v, h) in &req.rules.pinned {
        let (vi, hi) = (vm(v)?, host(h)?);
        if !moving.contains(&vi) {
            return Err(PlanError::Invalid(format!(
                "VM `{v}` is pinned but not being moved"
            )));
        }
        if !targets.contains(&hi) {
            return Err(PlanError::Contradiction(format!(
                "VM `{v}` is pinned to `{h}`, which is not a target"
            )));
        }
        if req.rules.excluded.contains(h) {
            return Err(PlanError::Contradiction(format!(
                "VM `{v}` is pinned to `{h}`, which is excluded"
            )));
        }
        if let Some(prev) = pinned.insert(vi, hi) {
            if prev != hi {
                return Err(PlanError::Contradiction(format!(
                    "VM `{v}` is pinned to both `{}` and `{h}`",
                    cluster.hosts[prev].name
                )));
            }
        }
    }
    for &m in &moving {
        let v = &cluster.vms[m];
        if targets.len() == 1 && v.host == req.targets[0] {
            return Err(PlanError::Invalid(format!(
                "VM `{}` already runs on `{}`, the only target",
                v.name, v.host
            )));
        }
    }

    // Anti-affinity groups: checked names, and where their staying members already are.
    let mut anti_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut anti_hosts = Vec::new();
    for (g, members) in req.rules.anti_affinity.iter().enumerate() {
        let mut hosts = Vec::new();
        for n in members {
            let i = vm(n)?;
            anti_of.entry(i).or_default().push(g);
            if !moving.contains(&i) {
                hosts.push(host_ix[cluster.vms[i].host.as_str()]);
            }
        }
        anti_hosts.push(hosts);
    }

    // Affinity groups become units; every other moving VM is a unit of its own.
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for members in &req.rules.affinity {
        let mut g = Vec::new();
        for n in members {
            let i = vm(n)?;
            if !moving.contains(&i) {
                return Err(PlanError::Invalid(format!(
                    "affinity group [{}]: VM `{n}` is not being moved; move it too or drop it from the group",
                    members.join(", ")
                )));
            }
            if group_of.insert(i, groups.len()).is_some() {
                return Err(PlanError::Contradiction(format!(
                    "VM `{n}` is in two affinity groups; merge them"
                )));
            }
            g.push(i);
        }
        for (a_i, a) in g.iter().enumerate() {
            for b in &g[a_i + 1..] {
                let shared = anti_of
                    .get(a)
                    .into_iter()
                    .flatten()
                    .any(|ga| anti_of.get(b).is_some_and(|gb| gb.contains(ga)));
                if shared {
                    return Err(PlanError::Contradiction(format!(
                        "VMs `{}` and `{}` must share a host (affinity) and must not (anti-affinity)",
                        cluster.vms[*a].name, cluster.vms[*b].name
                    )));
                }
            }
        }
        let pins: HashSet<usize> = g.iter().filter_map(|v| pinned.get(v).copied()).collect();
        if pins.len() > 1 {
            return Err(PlanError::Contradiction(format!(
                "affinity group [{}] is pinned to several hosts",
                members.join(", ")
            )));
        }
        groups.push(g);
    }

    // The symmetric mapping: sources in order of first appearance -> targets by position, or
    // every source -> the one target.
    let mut sources: Vec<usize> = Vec::new();
    for &m in &moving {
        let s = host_ix[cluster.vms[m].host.as_str()];
        if !sources.contains(&s) {
            sources.push(s);
        }
    }
    let sym_target = |source: usize| -> Option<usize> {
        if targets.len() == 1 {
            Some(targets[0])
        } else {
            sources
                .iter()
                .position(|s| *s == source)
                .map(|p| targets[p])
        }
    };
    if req.mode == Mode::Symmetrical && targets.len() != 1 && targets.len() != sources.len() {
        return Err(PlanError::Invalid(format!(
            "symmetrical mode maps each source host to one target: {} source(s) ({}) but {} targets; give one target, or one per source in the same order",
            sources.len(),
            sources.iter().map(|s| cluster.hosts[*s].name.as_str()).collect::<Vec<_>>().join(", "),
            targets.len()
        )));
    }
    if req.mode == Mode::Symmetrical {
        for (s, t) in sources.iter().map(|s| (*s, sym_target(*s))) {
            if t == Some(s) {
                return Err(PlanError::Invalid(format!(
                    "symmetrical mode maps `{}` onto itself; reorder the targets",
                    cluster.hosts[s].name
                )));
            }
        }
    }

    let effective: Vec<Res> = cluster
        .hosts
        .iter()
        .map(|h| h.cap.keep_free(req.headroom_pct))
        .collect();
    let mut base = vec![Res::default(); cluster.hosts.len()];
    for (i, v) in cluster.vms.iter().enumerate() {
        if !moving.contains(&i) {
            let h = host_ix[v.host.as_str()];
            base[h] = base[h].plus(v.req);
        }
    }

    // Units in request order (a group where its first member is listed).
    let mut units = Vec::new();
    let mut done_groups = HashSet::new();
    for &m in &moving {
        let members = match group_of.get(&m) {
            Some(g) if !done_groups.insert(*g) => continue,
            Some(g) => groups[*g].clone(),
            None => vec![m],
        };
        let req_sum = members
            .iter()
            .fold(Res::default(), |a, v| a.plus(cluster.vms[*v].req));
        let names = || {
            members
                .iter()
                .map(|v| format!("`{}`", cluster.vms[*v].name))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let pin = members.iter().find_map(|v| pinned.get(v).copied());
        let own: HashSet<usize> = members
            .iter()
            .map(|v| host_ix[cluster.vms[*v].host.as_str()])
            .collect();
        let mut candidates = Vec::new();
        let mut barred = Vec::new();
        for &t in &targets {
            let name = &cluster.hosts[t].name;
            let why = if req.rules.excluded.contains(name) {
                Some("excluded".to_string())
            } else if pin.is_some_and(|p| p != t) {
                Some(format!("pinned to `{}`", cluster.hosts[pin.unwrap()].name))
            } else if own.contains(&t) {
                Some("it runs there now".to_string())
            } else if req.mode == Mode::Symmetrical
                && members
                    .iter()
                    .any(|v| sym_target(host_ix[cluster.vms[*v].host.as_str()]) != Some(t))
            {
                Some("not the symmetrical target of its source".to_string())
            } else {
                None
            };
            match why {
                Some(why) => barred.push(Rejected {
                    host: name.as_str().into(),
                    why: Why::Barred(why),
                }),
                None => candidates.push(t),
            }
        }
        if candidates.is_empty() {
            return Err(PlanError::Contradiction(format!(
                "{} can go to no target: {}",
                names(),
                barred
                    .iter()
                    .map(|r| format!("{} ({})", r.host, r.why))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Bigger than every candidate even when empty: bad input, not a packing failure.
        let fits_somewhere = candidates.iter().any(|c| req_sum.fits(&effective[*c]));
        if !fits_somewhere {
            let largest_ix = *candidates
                .iter()
                .max_by_key(|c| effective[**c].mem_mib)
                .expect("candidates");
            let largest = &cluster.hosts[largest_ix].name;
            let e = effective[largest_ix];
            return Err(PlanError::TooBig {
                vm: members
                    .iter()
                    .map(|v| cluster.vms[*v].name.clone())
                    .collect::<Vec<_>>()
                    .join("+"),
                need: req_sum.to_string(),
                detail: format!(
                    "`{largest}` offers {e}{}; {}",
                    if req.headroom_pct > 0 {
                        format!(" with {}% headroom", req.headroom_pct)
                    } else {
                        String::new()
                    },
                    req_sum.first_shortfall(&e).unwrap_or_default()
                ),
            });
        }
        let mut anti_groups: Vec<usize> = members
            .iter()
            .flat_map(|v| anti_of.get(v).cloned().unwrap_or_default())
            .collect();
        anti_groups.sort_unstable();
        anti_groups.dedup();
        units.push(Unit {
            vms: members,
            req: req_sum,
            candidates,
            barred,
            anti_groups,
        });
    }

    Ok((
        Ctx {
            cluster,
            req,
            host_ix,
            host_names: cluster
                .hosts
                .iter()
                .map(|h| h.name.as_str().into())
                .collect(),
            vm_ix,
            effective,
            base,
            anti_hosts,
            anti_names: req
                .rules
                .anti_affinity
                .iter()
                .map(|g| std::sync::Arc::from(g.join(", ")))
                .collect(),
        },
        units,
    ))
}

//! Placement: which host each VM goes to and in which order, the paper's step 2. Pure functions,
//! no I/O: the inputs are REQ vectors of VMs and CAP vectors of hosts (from the inventory), the
//! output an ordered plan in which every decision carries its reason.
//!
//! - Symmetrical: each source host maps to one target host; moves machine by machine
//!   (sequential) or one VM per source in turn (round-robin), the paper's two orders.
//! - Asymmetrical: the paper's first-fit exactly as published (the reference), or vector
//!   best-fit-decreasing with headroom, affinity and anti-affinity groups, pinned and excluded
//!   hosts.
//! - Whatever the algorithm, the moves are ordered so that no host exceeds its capacity at any
//!   step; a cycle (a swap) goes through a host with room, or the plan is refused and says why.

pub mod exact;
mod fit;
mod order;
mod res;
mod validate;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use res::Res;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub cap: Res,
}

/// A VM where it runs now, with what it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub host: String,
    pub req: Res,
}

/// Everything placement knows: all hosts and all VMs (also those that stay).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One source host -> one target host (or every source -> the one target).
    Symmetrical,
    /// VMs of one host may go to several targets.
    #[default]
    Asymmetrical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Machine by machine: all VMs of the first source, then the next.
    #[default]
    Sequential,
    /// One VM from each source in turn (the paper's better break time).
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// The paper's first-fit: VMs in the given order, the first target with room.
    FirstFit,
    /// Vector best-fit-decreasing: biggest VMs first, each to the target it leaves tightest.
    #[default]
    BestFit,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rules {
    /// Each group's VMs must land on one host.
    pub affinity: Vec<Vec<String>>,
    /// No two VMs of a group may share a host (VMs that stay count too).
    pub anti_affinity: Vec<Vec<String>>,
    /// VM -> the host it must go to.
    pub pinned: Vec<(String, String)>,
    /// Hosts no moved VM may land on.
    pub excluded: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    /// The VMs to move, in the operator's order.
    pub vms: Vec<String>,
    /// The hosts they may go to, in the operator's order.
    pub targets: Vec<String>,
    pub mode: Mode,
    pub order: Order,
    pub algorithm: Algorithm,
    /// Percent of each target's capacity to keep free after placement.
    pub headroom_pct: u8,
    pub rules: Rules,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// A temporary hop through a host with room, to break a cycle.
    pub staging: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    /// Shared: the same names appear in every decision's list.
    pub host: std::sync::Arc<str>,
    pub why: Why,
}

/// Why a host was not chosen. Kept as data while planning (a thousand VMs x a hundred hosts
/// make many of these) and turned into a sentence only when shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Not a candidate at all (exclusion, pinning, symmetric mapping, its own host).
    Barred(String),
    /// Not enough room in one dimension (index into `res::DIMS`).
    Short {
        dim: usize,
        need: u64,
        have: u64,
        headroom_pct: u8,
    },
    /// A VM of this anti-affinity group (its members, listed) is there.
    AntiAffinity(std::sync::Arc<str>),
    /// It fits, but first-fit took an earlier target.
    EarlierTarget,
    /// It fits, but best-fit chose a tighter one.
    LooserFit,
    /// Read back from JSON.
    Text(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Barred(s) | Why::Text(s) => f.write_str(s),
            Why::Short {
                dim,
                need,
                have,
                headroom_pct,
            } => {
                let (name, _, unit) = res::DIMS[*dim];
                write!(f, "{name}: needs {need}{unit}, {have}{unit} free")?;
                if *headroom_pct > 0 {
                    write!(f, " (keeping {headroom_pct}% free)")?;
                }
                Ok(())
            }
            Why::AntiAffinity(g) => write!(f, "anti-affinity: a VM of group [{g}] is there"),
            Why::EarlierTarget => f.write_str("fits, but first-fit took an earlier target"),
            Why::LooserFit => f.write_str("fits, but the chosen target is a tighter fit"),
        }
    }
}

impl Serialize for Why {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Why {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Why::Text(String::deserialize(d)?))
    }
}

/// Why a VM goes where it goes (or nowhere), and why every other target was not chosen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub vm: String,
    pub to: Option<String>,
    pub reason: String,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostLoad {
    pub host: String,
    pub cap: Res,
    pub load: Res,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// In execution order.
    pub moves: Vec<Move>,
    /// One per requested VM, in the order they were decided.
    pub decisions: Vec<Decision>,
    /// Requested VMs that stay where they are, each with the reason.
    pub unplaced: Vec<Decision>,
    /// Every host's load once the moves are done.
    pub hosts_after: Vec<HostLoad>,
}

/// Bad input: nothing is planned, and the one line names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PlanError {
    #[error("unknown VM `{0}`")]
    UnknownVm(String),
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    #[error("{0}")]
    Invalid(String),
    #[error("VM `{vm}` needs {need}, more than any target can hold ({detail})")]
    TooBig {
        vm: String,
        need: String,
        detail: String,
    },
    #[error("contradictory rules: {0}")]
    Contradiction(String),
    #[error("no order of moves keeps every host within capacity: {0}")]
    Impossible(String),
}

/// A set of VMs that moves as one (an affinity group, or a single VM).
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub vms: Vec<usize>,
    pub req: Res,
    /// Hosts (indexes) this unit may go to, in target order.
    pub candidates: Vec<usize>,
    /// Why a target is not a candidate at all (symmetric mapping, exclusion, pinning).
    pub barred: Vec<Rejected>,
    pub anti_groups: Vec<usize>,
}

/// Indexes and checked input shared by the steps.
pub(crate) struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub req: &'a Request,
    pub host_ix: HashMap<&'a str, usize>,
    /// Host names by index, shared into explanations.
    pub host_names: Vec<std::sync::Arc<str>>,
    pub vm_ix: HashMap<&'a str, usize>,
    /// Capacity each target offers to placement (headroom kept free).
    pub effective: Vec<Res>,
    /// Load of VMs that stay, per host.
    pub base: Vec<Res>,
    /// Per anti-affinity group, hosts already holding a member that stays.
    pub anti_hosts: Vec<Vec<usize>>,
    /// Per anti-affinity group, its members for explanations.
    pub anti_names: Vec<std::sync::Arc<str>>,
}

/// Plans `req` on `cluster`.
pub fn plan(cluster: &Cluster, req: &Request) -> Result<Plan, PlanError> {
    let (ctx, units) = validate::check(cluster, req)?;
    let placed = fit::place(&ctx, &units);
    let moves = order::order(&ctx, &placed)?;

    let mut decisions = Vec::new();
    let mut unplaced = Vec::new();
    for d in placed.decisions {
        if d.to.is_none() {
            unplaced.push(d.clone());
        }
        decisions.push(d);
    }
    let mut load = ctx.base.clone();
    for (vm, to) in &placed.assignment {
        let h = ctx.host_ix[to.as_str()];
        load[h] = load[h].plus(cluster.vms[*vm].req);
    }
    for d in &unplaced {
        let vm = &cluster.vms[ctx.vm_ix[d.vm.as_str()]];
        let h = ctx.host_ix[vm.host.as_str()];
        load[h] = load[h].plus(vm.req);
    }
    let hosts_after = cluster
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| HostLoad {
            host: h.name.clone(),
            cap: h.cap,
            load: load[i],
        })
        .collect();
    Ok(Plan {
        moves,
        decisions,
        unplaced,
        hosts_after,
    })
}

#[cfg(test)]
mod tests;

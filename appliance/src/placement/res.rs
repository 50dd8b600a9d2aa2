//! Resource vectors: what a VM needs (REQ) and what a host offers (CAP), in four dimensions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// CPU in thousandths of a core (so 1 vCPU = 1000), memory and disk in MiB, bandwidth in Mbit/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Res {
    pub cpu_milli: u64,
    pub mem_mib: u64,
    pub disk_mib: u64,
    pub bw_mbps: u64,
}

/// A dimension: its name, how to read it, its unit.
pub type Dim = (&'static str, fn(&Res) -> u64, &'static str);

/// The dimensions by name, for explanations.
pub const DIMS: [Dim; 4] = [
    ("cpu", |r| r.cpu_milli, "m"),
    ("memory", |r| r.mem_mib, " MiB"),
    ("disk", |r| r.disk_mib, " MiB"),
    ("bandwidth", |r| r.bw_mbps, " Mbit/s"),
];

impl Res {
    pub const fn new(cpu_milli: u64, mem_mib: u64, disk_mib: u64, bw_mbps: u64) -> Res {
        Res {
            cpu_milli,
            mem_mib,
            disk_mib,
            bw_mbps,
        }
    }

    fn zip(self, o: Res, f: impl Fn(u64, u64) -> u64) -> Res {
        Res::new(
            f(self.cpu_milli, o.cpu_milli),
            f(self.mem_mib, o.mem_mib),
            f(self.disk_mib, o.disk_mib),
            f(self.bw_mbps, o.bw_mbps),
        )
    }

    pub fn plus(self, o: Res) -> Res {
        self.zip(o, u64::saturating_add)
    }

    pub fn minus(self, o: Res) -> Res {
        self.zip(o, u64::saturating_sub)
    }

    /// This capacity with `pct` percent kept free.
    pub fn keep_free(self, pct: u8) -> Res {
        let keep = u64::from(100 - pct.min(100));
        self.zip(self, |v, _| v * keep / 100)
    }

    /// True if `self` fits in `room` in every dimension.
    pub fn fits(&self, room: &Res) -> bool {
        self.cpu_milli <= room.cpu_milli
            && self.mem_mib <= room.mem_mib
            && self.disk_mib <= room.disk_mib
            && self.bw_mbps <= room.bw_mbps
    }

    /// The first dimension where `self` does not fit in `room`: (dimension, need, have).
    pub fn short_dim(&self, room: &Res) -> Option<(usize, u64, u64)> {
        DIMS.iter().enumerate().find_map(|(i, (_, get, _))| {
            let (need, have) = (get(self), get(room));
            (need > have).then_some((i, need, have))
        })
    }

    /// The first dimension where `self` does not fit in `room`, as a sentence.
    pub fn first_shortfall(&self, room: &Res) -> Option<String> {
        DIMS.iter().find_map(|(name, get, unit)| {
            let (need, have) = (get(self), get(room));
            (need > have).then(|| format!("{name}: needs {need}{unit}, {have}{unit} free"))
        })
    }

    /// The largest share of `of` this vector takes in any dimension (dominant share).
    pub fn dominant_share(&self, of: &Res) -> f64 {
        DIMS.iter()
            .map(|(_, get, _)| {
                let c = get(of);
                if c == 0 {
                    if get(self) == 0 {
                        0.0
                    } else {
                        f64::INFINITY
                    }
                } else {
                    get(self) as f64 / c as f64
                }
            })
            .fold(0.0, f64::max)
    }

    /// Sum of the shares of `of` this vector takes (for best-fit's slack).
    pub fn share_sum(&self, of: &Res) -> f64 {
        DIMS.iter()
            .map(|(_, get, _)| {
                let c = get(of);
                if c == 0 {
                    0.0
                } else {
                    get(self) as f64 / c as f64
                }
            })
            .sum()
    }
}

impl fmt::Display for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}.{:02}, mem {} MiB, disk {} MiB, bw {} Mbit/s",
            self.cpu_milli / 1000,
            self.cpu_milli % 1000 / 10,
            self.mem_mib,
            self.disk_mib,
            self.bw_mbps
        )
    }
}

//! Commissioning: what a machine's installer reports of its hardware before it is accepted,
//! and what enrolment rules may require of it.

use serde::{Deserialize, Serialize};

/// A machine's hardware as its installer found it (from /proc and /sys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// `uname -m`: "x86_64".
    pub arch: String,
    /// How it booted: "bios" or "uefi".
    pub firmware: Firmware,
    /// Logical CPUs.
    pub cpus: u32,
    pub cpu_model: String,
    /// The CPU's hardware virtualization: "vmx" (Intel VT-x), "svm" (AMD-V), or none.
    pub virt: Option<String>,
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The kernel's name: "sda", "vda", "nvme0n1".
    pub name: String,
    pub bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// A spinning disk (the kernel's `queue/rotational`).
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    /// Link speed in Mbit/s, when the driver knows it (a link that is down has none).
    pub speed_mbps: Option<u32>,
    pub driver: Option<String>,
}

/// A report longer than this is refused: the installer's is a few KiB.
pub const MAX_REPORT: usize = 256 * 1024;

impl Hardware {
    /// Checks that a report says something possible; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        if self.cpus == 0 {
            return Err("cpus is 0".into());
        }
        if self.memory_mib == 0 {
            return Err("memory_mib is 0".into());
        }
        if self.disks.len() > 256 || self.nics.len() > 256 {
            return Err("more than 256 disks or NICs".into());
        }
        for n in &self.nics {
            let ok = n.mac.len() == 17
                && n.mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(format!("NIC {}: `{}` is not a MAC", n.name, n.mac));
            }
        }
        Ok(())
    }

    /// The largest disk's size, bytes (0 without disks).
    pub fn largest_disk(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes).max().unwrap_or(0)
    }

    /// One line for listings: "2 CPUs (vmx), 4096 MiB, disks vda 20.0 GiB, uefi".
    pub fn summary(&self) -> String {
        let disks = if self.disks.is_empty() {
            "no disks".to_string()
        } else {
            let d: Vec<String> = self
                .disks
                .iter()
                .map(|d| format!("{} {:.1} GiB", d.name, d.bytes as f64 / GIB as f64))
                .collect();
            format!("disks {}", d.join(", "))
        };
        format!(
            "{} CPU{} ({}), {} MiB, {disks}, {}",
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            self.virt.as_deref().unwrap_or("no virtualization"),
            self.memory_mib,
            match self.firmware {
                Firmware::Bios => "bios",
                Firmware::Uefi => "uefi",
            }
        )
    }
}

const GIB: u64 = 1 << 30;

/// What a machine must have to be accepted by a rule; a machine that falls short waits for
/// the operator, with the reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Requirements {
    pub min_memory_mib: Option<u64>,
    /// Bytes on its largest disk.
    pub min_disk_bytes: Option<u64>,
    /// VT-x or AMD-V.
    pub require_virt: bool,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        *self == Requirements::default()
    }

    /// Where `hw` falls short; empty when it does not.
    pub fn short_of(&self, hw: &Hardware) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(min) = self.min_memory_mib.filter(|m| hw.memory_mib < *m) {
            why.push(format!(
                "memory {} MiB is below min_memory ({min} MiB)",
                hw.memory_mib
            ));
        }
        if let Some(min) = self.min_disk_bytes.filter(|m| hw.largest_disk() < *m) {
            why.push(if hw.disks.is_empty() {
                format!(
                    "no disk, and min_disk asks for {:.1} GiB",
                    min as f64 / GIB as f64
                )
            } else {
                format!(
                    "largest disk {:.1} GiB is below min_disk ({:.1} GiB)",
                    hw.largest_disk() as f64 / GIB as f64,
                    min as f64 / GIB as f64
                )
            });
        }
        if self.require_virt && hw.virt.is_none() {
            why.push(
                "the CPU has no hardware virtualization (vmx or svm; is it off in the firmware?) and require_virt is set"
                    .into(),
            );
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the installer's script prints on a QEMU machine (its exact shape).
    const REPORT: &str = r#"{"arch":"x86_64","firmware":"bios","cpus":1,"cpu_model":"QEMU Virtual CPU version 2.5+","virt":null,"memory_mib":481,"disks":[{"name":"vda","bytes":4294967296,"model":null,"serial":"NM-DISK-1","rotational":true}],"nics":[{"name":"eth0","mac":"52:54:00:aa:00:01","speed_mbps":1000,"driver":"e1000"}]}"#;

    fn hw() -> Hardware {
        serde_json::from_str(REPORT).unwrap()
    }

    #[test]
    fn a_report_reads_and_sums_up() {
        let h = hw();
        h.check().unwrap();
        assert_eq!(h.largest_disk(), 4 << 30);
        assert_eq!(
            h.summary(),
            "1 CPU (no virtualization), 481 MiB, disks vda 4.0 GiB, bios"
        );
    }

    #[test]
    fn requirements_say_where_a_machine_falls_short() {
        let r = Requirements {
            min_memory_mib: Some(1024),
            min_disk_bytes: Some(8 << 30),
            require_virt: true,
        };
        let why = r.short_of(&hw());
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].contains("481 MiB is below min_memory (1024 MiB)"));
        assert!(why[1].contains("4.0 GiB is below min_disk (8.0 GiB)"));
        assert!(why[2].contains("require_virt"));
        let fits = Requirements {
            min_memory_mib: Some(256),
            min_disk_bytes: Some(1 << 30),
            require_virt: false,
        };
        assert!(fits.short_of(&hw()).is_empty());
        assert!(Requirements::default().short_of(&hw()).is_empty());
    }

    /// The installer's own script, run here (with busybox, as the installer runs it, when
    /// this machine has it): its report of this machine reads and says what /proc says.
    #[test]
    fn the_installers_script_reports_this_machine() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/installer/hardware.sh");
        let mut cmd = if std::path::Path::new("/bin/busybox").exists() {
            let mut c = std::process::Command::new("/bin/busybox");
            c.arg("sh");
            c
        } else {
            std::process::Command::new("sh")
        };
        let out = cmd
            .args(["-c", &format!(". {script}; hardware")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let hw: Hardware = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        hw.check().unwrap();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(hw.cpus as usize, cpus);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(hw.memory_mib, kib / 1024);
        assert_eq!(hw.arch, std::env::consts::ARCH);
    }

    #[test]
    fn impossible_reports_are_refused() {
        let mut h = hw();
        h.nics[0].mac = "52:54:00".into();
        assert!(h.check().unwrap_err().contains("not a MAC"));
        let mut h = hw();
        h.memory_mib = 0;
        assert!(h.check().is_err());
        assert!(serde_json::from_str::<Hardware>(r#"{"arch":"x86_64"}"#).is_err());
    }
}

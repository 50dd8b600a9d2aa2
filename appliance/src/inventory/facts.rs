//! What a host is made of, collected in one SSH round trip (every round trip to a nested Xen
//! host costs about 1.5 s): one shell script prints sections, this module parses them.

use serde::{Deserialize, Serialize};

use crate::config::{HostConfig, HypervisorKind};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub hypervisor: String,
    pub cpus: u32,
    pub cpu_model: String,
    pub load: [f64; 3],
    pub mem_total_mib: u64,
    /// Memory free for new VMs: MemAvailable, or Xen's free_memory on Xen.
    pub mem_free_mib: u64,
    pub disks: Vec<DiskFree>,
    pub nics: Vec<Nic>,
    pub bridges: Vec<Bridge>,
    pub vms: Vec<VmFacts>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskFree {
    /// The directory asked about (image or save directory).
    pub path: String,
    pub mount: String,
    pub total_mib: u64,
    pub free_mib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    /// Link speed; None where the driver does not say (veth, tap).
    pub speed_mbps: Option<u32>,
    pub rx_bytes_per_s: u64,
    pub tx_bytes_per_s: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bridge {
    pub name: String,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Port {
    pub name: String,
    pub tag: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmFacts {
    pub name: String,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// Its disk images' size, as the guest sees them (a qcow2's virtual size).
    pub disk_mib: u64,
    /// What its disk images take on the host's storage (less than `disk_mib` when sparse):
    /// what placement counts as the room its copies need.
    #[serde(default)]
    pub disk_allocated_mib: u64,
    pub macs: Vec<String>,
    /// Addresses seen for its MACs (the appliance's neighbour table); empty when unknown.
    pub ips: Vec<String>,
    /// running, paused, ... as the hypervisor says; "unknown" when it could not be asked.
    pub state: String,
    /// Its port on the host's bridge (QEMU tap, Xen vif).
    pub ports: Vec<String>,
    /// Current traffic through its ports, Mbit/s (its bandwidth need).
    pub bw_mbps: u64,
    /// Its disk images on the host (their sizes make `disk_mib`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// QEMU: the QMP socket on the host.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub qmp: Option<String>,
}

/// Prints each QEMU process of the host, one a line: its PID, then its arguments, each
/// followed by \x1f. Only QEMUs in this host's network namespace (lab hosts share one /proc).
pub const QEMU_PROCESSES: &str = r#"for p in $(pgrep -f '^[^ ]*qemu-system-' 2>/dev/null); do [ /proc/$p/ns/net -ef /proc/self/ns/net ] || continue; printf '%s\037' "$p"; tr '\0' '\037' < /proc/$p/cmdline 2>/dev/null; echo; done"#;

/// One line of `QEMU_PROCESSES`: the PID and the arguments as given (empty ones kept).
pub fn qemu_argv(line: &str) -> Option<(u32, Vec<String>)> {
    let mut words = line.strip_suffix('\x1f').unwrap_or(line).split('\x1f');
    let pid = words.next()?.parse().ok()?;
    let argv: Vec<String> = words.map(str::to_string).collect();
    (!argv.is_empty()).then_some((pid, argv))
}

/// Seconds between the two /proc/net/dev samples.
pub const RATE_SAMPLE_S: f64 = 0.3;

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The one script run per collection. Sections start with `@@name`.
pub fn script(h: &HostConfig) -> String {
    let dirs: Vec<String> = h.disk_dirs().iter().map(|d| shell_quote(d)).collect();
    let db = h
        .ovsdb
        .as_deref()
        .map(|d| format!("--db={}", shell_quote(d)))
        .unwrap_or_default();
    // Few forks (they dominate when many hosts collect at once on small machines), but `cat`
    // and `grep` for /proc files: the shell's `read` takes them a byte per system call.
    let mut s = format!(
        r#"export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin"
echo @@cpuinfo; grep -E '^(processor|model name)' /proc/cpuinfo
echo @@loadavg; cat /proc/loadavg
echo @@meminfo; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
echo @@df; for d in {dirs}; do e=$d; while [ ! -e "$e" ]; do e=${{e%/*}}; [ -n "$e" ] || e=/; done; set -- $(df -Pk "$e" | {{ read -r _; read -r l; echo "$l"; }}); echo "$d $*"; done
echo @@nics; for i in /sys/class/net/*; do n=${{i##*/}}; [ "$n" = lo ] && continue; read -r a < $i/address; sp=-1; read -r sp < $i/speed 2>/dev/null; echo "$n $a ${{sp:--1}}"; done
echo @@netdev1; cat /proc/net/dev; sleep {RATE_SAMPLE_S}; echo @@netdev2; cat /proc/net/dev
echo @@ovs; command -v ovs-vsctl >/dev/null && ovs-vsctl {db} --timeout=5 --format=csv --data=bare --no-headings --columns=name,ports list Bridge -- --columns=_uuid,name,tag list Port 2>/dev/null
"#,
        dirs = dirs.join(" "),
    );
    match h.hypervisor {
        HypervisorKind::Qemu => {
            s.push_str("echo @@qemu; ");
            s.push_str(QEMU_PROCESSES);
            s.push('\n');
        }
        #[cfg(test)]
        HypervisorKind::Fake => {}
        HypervisorKind::Xen => {
            // xl's status and its short list too: an `xl list -l` that fails, or prints
            // nothing while domains run, must not read as "no VMs here".
            s.push_str(
                "echo @@xlinfo; xl info\necho @@xllist; xl list -l; echo @@xlrc; echo $?\n\
                 echo @@xlnames; xl list | awk 'NR>2 {print $1}'\n",
            );
        }
    }
    s.push_str("echo @@end\n");
    s
}

/// Splits the script's output into (section, body) pairs.
pub fn sections(out: &str) -> Vec<(&str, String)> {
    let mut v: Vec<(&str, String)> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            v.push((name, String::new()));
        } else if let Some((_, body)) = v.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    v
}

#[derive(Debug, thiserror::Error)]
#[error("host output: {0}")]
pub struct ParseError(pub String);

/// rx/tx byte counters per interface from /proc/net/dev.
pub fn net_dev(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 9).then(|| (name.trim().to_string(), f[0], f[8]))
        })
        .collect()
}

/// A QEMU process's command line, split on the \x1f the script put between arguments.
#[derive(Debug, Default, PartialEq)]
pub struct QemuCmdline {
    pub pid: u32,
    pub name: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub macs: Vec<String>,
    pub taps: Vec<String>,
    pub qmp: Option<String>,
    pub drives: Vec<String>,
}

/// "128", "128M", "1G", "size=2G,slots=..." -> MiB.
fn qemu_size_mib(v: &str) -> Option<u64> {
    let v = v
        .split(',')
        .find(|p| !p.contains('=') || p.starts_with("size="))
        .unwrap_or(v);
    let v = v.trim_start_matches("size=");
    let (num, mul) = match v.chars().last()? {
        'G' | 'g' => (&v[..v.len() - 1], 1024),
        'M' | 'm' => (&v[..v.len() - 1], 1),
        'T' | 't' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul)
}

/// Value of `key=` in a comma-separated QEMU option string.
fn opt<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.split(',')
        .find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

pub fn qemu_cmdline(line: &str) -> Option<QemuCmdline> {
    let mut args = line.split('\x1f').filter(|a| !a.is_empty());
    let pid = args.next()?.parse().ok()?;
    let argv: Vec<&str> = args.collect();
    let mut q = QemuCmdline {
        pid,
        mem_mib: 128, // QEMU's default
        vcpus: 1,
        ..Default::default()
    };
    let mut i = 1;
    while i < argv.len() {
        let (a, v) = (argv[i], argv.get(i + 1).copied().unwrap_or(""));
        match a.trim_start_matches('-') {
            "name" => {
                q.name = opt(v, "guest")
                    .unwrap_or(v.split(',').next().unwrap_or(v))
                    .to_string()
            }
            "m" => q.mem_mib = qemu_size_mib(v).unwrap_or(q.mem_mib),
            "smp" => {
                q.vcpus = v
                    .split(',')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .or_else(|| opt(v, "cpus").and_then(|n| n.parse().ok()))
                    .unwrap_or(1)
            }
            "device" | "net" => {
                if let Some(m) = opt(v, "mac") {
                    q.macs.push(m.to_lowercase());
                }
            }
            "netdev" => {
                if let Some(t) = opt(v, "ifname") {
                    q.taps.push(t.to_string());
                }
            }
            "qmp" => {
                q.qmp = v
                    .strip_prefix("unix:")
                    .map(|p| p.split(',').next().unwrap_or(p).to_string())
            }
            "drive" => {
                if let Some(f) = opt(v, "file") {
                    q.drives.push(f.to_string());
                }
            }
            // `-blockdev` in JSON (as the appliance starts its VMs) or as key=value words; the
            // image is the node, or its child, that has a `filename`.
            "blockdev" => {
                let file = match serde_json::from_str::<serde_json::Value>(v) {
                    Ok(j) => j["filename"]
                        .as_str()
                        .or(j["file"]["filename"].as_str())
                        .map(str::to_string),
                    Err(_) => opt(v, "filename").map(str::to_string),
                };
                q.drives.extend(file);
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    if q.name.is_empty() {
        q.name = format!("qemu-{pid}");
    }
    Some(q)
}

/// Parses everything but the VMs' hypervisor-specific part.
pub fn parse_common(secs: &[(&str, String)], f: &mut HostFacts) -> Result<(), ParseError> {
    let get = |name: &str| {
        secs.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.as_str())
    };
    if get("end").is_none() {
        return Err(ParseError("the collection script did not finish".into()));
    }
    let cpuinfo = get("cpuinfo").unwrap_or("");
    f.cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    if f.cpus == 0 {
        return Err(ParseError("/proc/cpuinfo lists no processor".into()));
    }
    f.cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    if let Some(l) = get("loadavg") {
        let v: Vec<f64> = l
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 3 {
            f.load = [v[0], v[1], v[2]];
        }
    }
    for l in get("meminfo").unwrap_or("").lines() {
        let kb: u64 = l
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if l.starts_with("MemTotal:") {
            f.mem_total_mib = kb / 1024;
        } else if l.starts_with("MemAvailable:") {
            f.mem_free_mib = kb / 1024;
        }
    }
    for l in get("df").unwrap_or("").lines() {
        // "<dir> <fs> <1024-blocks> <used> <available> <capacity> <mounted on>"
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 7 {
            f.disks.push(DiskFree {
                path: w[0].into(),
                mount: w[6].into(),
                total_mib: w[2].parse::<u64>().unwrap_or(0) / 1024,
                free_mib: w[4].parse::<u64>().unwrap_or(0) / 1024,
            });
        }
    }
    let s1 = net_dev(get("netdev1").unwrap_or(""));
    let s2 = net_dev(get("netdev2").unwrap_or(""));
    let rate = |name: &str| -> (u64, u64) {
        let a = s1.iter().find(|x| x.0 == name);
        let b = s2.iter().find(|x| x.0 == name);
        match (a, b) {
            (Some(a), Some(b)) => (
                (b.1.saturating_sub(a.1) as f64 / RATE_SAMPLE_S) as u64,
                (b.2.saturating_sub(a.2) as f64 / RATE_SAMPLE_S) as u64,
            ),
            _ => (0, 0),
        }
    };
    for l in get("nics").unwrap_or("").lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 3 {
            let (rx, tx) = rate(w[0]);
            f.nics.push(Nic {
                name: w[0].into(),
                mac: w[1].into(),
                speed_mbps: w[2]
                    .parse::<i64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| s as u32),
                rx_bytes_per_s: rx,
                tx_bytes_per_s: tx,
            });
        }
    }
    // Two CSV blocks: bridges "name,port-uuid port-uuid...", then ports "uuid,name,tag".
    let ovs = get("ovs").unwrap_or("");
    let mut ports: Vec<(&str, Port)> = Vec::new();
    let mut bridges: Vec<(&str, Vec<&str>)> = Vec::new();
    for l in ovs.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = l.split(',').collect();
        match cols[..] {
            [uuid, name, tag] => ports.push((
                uuid,
                Port {
                    name: name.to_string(),
                    tag: tag.trim().parse().ok(),
                },
            )),
            [name, uuids] => bridges.push((name, uuids.split_whitespace().collect())),
            _ => {}
        }
    }
    for (name, uuids) in bridges {
        let mut b = Bridge {
            name: name.to_string(),
            ports: uuids
                .iter()
                .filter_map(|u| ports.iter().find(|(pu, _)| pu == u).map(|(_, p)| p.clone()))
                .filter(|p| p.name != name) // the bridge's own internal port
                .collect(),
        };
        b.ports.sort_by(|x, y| x.name.cmp(&y.name));
        f.bridges.push(b);
    }
    Ok(())
}

/// Traffic through `ports`, Mbit/s, from the NIC rates.
pub fn port_mbps(f: &HostFacts, ports: &[String]) -> u64 {
    let bytes: u64 = f
        .nics
        .iter()
        .filter(|n| ports.contains(&n.name))
        .map(|n| n.rx_bytes_per_s + n.tx_bytes_per_s)
        .sum();
    (bytes * 8).div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cmdlines() {
        let line = "4242\x1fqemu-system-x86_64\x1f-name\x1fvm1\x1f-accel\x1ftcg\x1f-m\x1f256\x1f-smp\x1f2\x1f-qmp\x1funix:/run/vm1.qmp,server=on,wait=off\x1f-netdev\x1ftap,id=n0,ifname=t-vm1,script=no\x1f-device\x1fvirtio-net-pci,netdev=n0,mac=52:54:00:AB:00:15\x1f-drive\x1ffile=/img/vm1.qcow2,if=virtio";
        let q = qemu_cmdline(line).unwrap();
        assert_eq!(q.pid, 4242);
        assert_eq!(q.name, "vm1");
        assert_eq!((q.mem_mib, q.vcpus), (256, 2));
        assert_eq!(q.macs, ["52:54:00:ab:00:15"]);
        assert_eq!(q.taps, ["t-vm1"]);
        assert_eq!(q.qmp.as_deref(), Some("/run/vm1.qmp"));
        assert_eq!(q.drives, ["/img/vm1.qcow2"]);
        let line = "9\x1fqemu-system-x86_64\x1f-blockdev\x1f{\"node-name\":\"disk0\",\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"/v/a.img\"}}\x1f-blockdev\x1fdriver=file,filename=/v/b.img,node-name=f1\x1f";
        assert_eq!(qemu_cmdline(line).unwrap().drives, ["/v/a.img", "/v/b.img"]);
        let libvirtish = "7\x1f/usr/bin/qemu-system-x86_64\x1f-name\x1fguest=web,debug-threads=on\x1f-m\x1fsize=2G,slots=4\x1f-smp\x1fcpus=4,sockets=1";
        let q = qemu_cmdline(libvirtish).unwrap();
        assert_eq!((q.name.as_str(), q.mem_mib, q.vcpus), ("web", 2048, 4));
    }

    #[test]
    fn common_sections() {
        let out = "@@cpuinfo\nprocessor\t: 0\nmodel name\t: Intel Xeon\nprocessor\t: 1\n@@loadavg\n0.50 0.25 0.10 1/100 42\n@@meminfo\nMemTotal: 2048000 kB\nMemAvailable: 1024000 kB\n\
@@df\n/var/lib/x /dev/vda 1048576 524288 524288 50% /\n@@nics\nbr0 52:54:00:00:00:01 -1\neth0 52:54:00:00:00:02 1000\n\
@@netdev1\nInter-|\n face |bytes\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n@@netdev2\n  eth0: 63500 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n\
@@ovs\nbr0,u1 u2 u3\n\nu2,up0,\nu1,t-vm1,100\nu3,br0,\n@@end\n";
        let mut f = HostFacts::default();
        parse_common(&sections(out), &mut f).unwrap();
        assert_eq!(f.cpus, 2);
        assert_eq!(f.cpu_model, "Intel Xeon");
        assert_eq!(f.load, [0.5, 0.25, 0.1]);
        assert_eq!((f.mem_total_mib, f.mem_free_mib), (2000, 1000));
        assert_eq!(f.disks[0].free_mib, 512);
        assert_eq!(f.nics[1].speed_mbps, Some(1000));
        assert_eq!(f.nics[0].speed_mbps, None);
        assert_eq!(f.nics[1].rx_bytes_per_s, (62_500.0 / RATE_SAMPLE_S) as u64);
        assert_eq!(
            f.bridges[0].ports,
            [
                Port {
                    name: "t-vm1".into(),
                    tag: Some(100)
                },
                Port {
                    name: "up0".into(),
                    tag: None
                }
            ]
        );
        assert!(parse_common(&sections("@@cpuinfo\n"), &mut HostFacts::default()).is_err());
    }
}

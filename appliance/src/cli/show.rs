//! Human-readable renderings of API answers: short, aligned, one fact per line.

use crate::api::hosts::{HostView, VmView};
use crate::api::Status;
use crate::inventory::Collected;
use crate::state::Event;

/// "2026-11-25 17:02:03Z" from unix milliseconds (UTC; no time-zone database needed).
pub fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn status(s: &Status) -> String {
    let mut o = format!(
        "netmigrate {}  pid {}  up {} (since {})\n",
        s.version,
        s.pid,
        uptime(s.uptime_s),
        timestamp(s.started_ms)
    );
    o.push_str(&format!("config    {}\n", s.config.path));
    if let Some(r) = &s.last_reload {
        o.push_str(&format!(
            "reload    {} at {}: {}\n",
            if r.ok { "ok" } else { "REFUSED" },
            timestamp(r.at_ms),
            r.message.lines().next().unwrap_or("")
        ));
    }
    o.push_str(&format!(
        "state     {} (schema {})\n",
        s.state.path, s.state.schema
    ));
    o.push_str(&format!("api       {}\n", s.api.join(", ")));
    o.push_str(&format!("events    {}\n", s.events));
    o.push_str("\nNETWORK  INTERFACE  ADDRESS          DHCP RANGE                 LEASE  DOMAIN\n");
    if s.networks.is_empty() {
        o.push_str("(none configured)\n");
    }
    for n in &s.networks {
        o.push_str(&format!(
            "{:<8} {:<10} {:<16} {:<26} {:<6} {}\n",
            n.name,
            n.interface,
            n.address,
            n.dhcp_range.as_deref().unwrap_or("-"),
            n.lease_time,
            n.domain.as_deref().unwrap_or("-")
        ));
    }
    o.push_str(&format!("reservations: {}\n", s.reservations));
    if !s.dhcp_rogues.is_empty() {
        o.push_str(
            "\nOTHER DHCP SERVERS on the served networks (clients may take their addresses):\n\
             SERVER           NETWORKS        INTERFACE   LAST OFFER       ANSWERS  FIRST SEEN  LAST SEEN\n",
        );
        for r in &s.dhcp_rogues {
            o.push_str(&format!(
                "{:<16} {:<15} {:<11} {:<16} {:>7}  {:<11} {}\n",
                r.server,
                r.networks.join(","),
                r.interface,
                r.offered,
                r.answers,
                ago(r.first_seen_ms),
                ago(r.last_seen_ms)
            ));
        }
    }
    o.push_str(
        "\nHOST       ADDRESS          HYPERVISOR  SSH USER             BRIDGE    HOST KEY\n",
    );
    if s.hosts.is_empty() {
        o.push_str("(none configured)\n");
    }
    for h in &s.hosts {
        o.push_str(&format!(
            "{:<10} {:<16} {:<11} {:<20} {:<9} {}\n",
            h.name,
            h.address,
            h.hypervisor,
            if h.ssh_port == 22 {
                h.ssh_user.clone()
            } else {
                format!("{} port {}", h.ssh_user, h.ssh_port)
            },
            h.bridge,
            if h.host_key.is_some() {
                "pinned"
            } else {
                "not pinned"
            }
        ));
    }
    o
}

fn gib(mib: u64) -> String {
    format!("{:.1}", mib as f64 / 1024.0)
}

fn ago(ms: i64) -> String {
    let s = ((crate::state::now_ms() - ms).max(0) / 1000) as u64;
    format!("{} ago", uptime(s))
}

pub fn hosts(hs: &Vec<HostView>) -> String {
    let mut o = String::from(
        "HOST       ADDRESS          HV    STAGE       STATUS  CPUS  LOAD   MEM FREE/TOTAL GiB  DISK FREE GiB  VMS  COLLECTED\n",
    );
    for h in hs {
        let r = &h.row;
        match &h.facts {
            Some(f) => o.push_str(&format!(
                "{:<10} {:<16} {:<5} {:<11} {:<7} {:<5} {:<6} {:<19} {:<14} {:<4} {}\n",
                r.name,
                r.address,
                r.hypervisor,
                h.stage,
                r.status,
                f.cpus,
                format!("{:.2}", f.load[0]),
                format!("{}/{}", gib(f.mem_free_mib), gib(f.mem_total_mib)),
                f.disks
                    .iter()
                    .map(|d| gib(d.free_mib))
                    .collect::<Vec<_>>()
                    .join(","),
                f.vms.len(),
                h.collected_ms.map(ago).unwrap_or_default()
            )),
            None => o.push_str(&format!(
                "{:<10} {:<16} {:<5} {:<11} {:<7} (never collected)\n",
                r.name, r.address, r.hypervisor, h.stage, r.status
            )),
        }
        if r.status == "down" {
            o.push_str(&format!(
                "           down: {}\n",
                r.status_reason.as_deref().unwrap_or("?")
            ));
        }
        if r.host_key.is_none() {
            o.push_str(&format!(
                "           host key not pinned: `netmigrate hosts trust {}`\n",
                r.name
            ));
        }
    }
    if hs.is_empty() {
        o.push_str("(no hosts configured)\n");
    }
    o
}

pub fn collected(cs: &Vec<Collected>) -> String {
    let mut o = String::new();
    for c in cs {
        match (&c.facts, &c.error) {
            (Some(f), _) => o.push_str(&format!(
                "{:<10} up    {:>5} ms  {} CPUs, {} GiB free of {}, {} VM(s), {} bridge(s)\n",
                c.host,
                c.duration_ms,
                f.cpus,
                gib(f.mem_free_mib),
                gib(f.mem_total_mib),
                f.vms.len(),
                f.bridges.len()
            )),
            (None, e) => o.push_str(&format!(
                "{:<10} DOWN  {:>5} ms  {}\n",
                c.host,
                c.duration_ms,
                e.as_deref().unwrap_or("?")
            )),
        }
    }
    o
}

pub fn vms(vs: &Vec<VmView>) -> String {
    let mut o = String::from("VM         HOST       STATE     MANAGED  VCPUS  MEM MiB  DISK MiB (USED)   BW Mbit/s  MAC                IP               PORT\n");
    for v in vs {
        let disk = if v.vm.disks.is_empty() {
            "-".to_string()
        } else {
            format!("{} ({})", v.vm.disk_mib, v.vm.disk_allocated_mib)
        };
        o.push_str(&format!(
            "{:<10} {:<10} {:<9} {:<8} {:<6} {:<8} {:<17} {:<10} {:<18} {:<16} {}\n",
            v.vm.name,
            v.host,
            v.vm.state,
            if v.managed { "yes" } else { "no" },
            v.vm.vcpus,
            v.vm.mem_mib,
            disk,
            v.vm.bw_mbps,
            v.vm.macs.join(","),
            if v.vm.ips.is_empty() {
                "-".to_string()
            } else {
                v.vm.ips.join(",")
            },
            v.vm.ports.join(",")
        ));
    }
    if vs.is_empty() {
        o.push_str("(no VMs; run `netmigrate hosts collect`)\n");
    }
    o
}

pub fn plan(r: &crate::api::plan::PlanReply) -> String {
    let p = &r.plan;
    let q = &r.request;
    let name = |v: serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let mut o = format!(
        "plan: {} move(s), {} mode, {} order, {}\n",
        p.moves.len(),
        name(serde_json::json!(q.mode)),
        name(serde_json::json!(q.order)),
        name(serde_json::json!(q.algorithm))
    );
    for (i, m) in p.moves.iter().enumerate() {
        let d = p.decisions.iter().find(|d| d.vm == m.vm);
        if m.staging {
            o.push_str(&format!(
                "{:>3}. {:<10} {} -> {}   (parked there to break a cycle; moves on later)\n",
                i + 1,
                m.vm,
                m.from,
                m.to
            ));
            continue;
        }
        o.push_str(&format!(
            "{:>3}. {:<10} {} -> {}   {}\n",
            i + 1,
            m.vm,
            m.from,
            m.to,
            d.map(|d| d.reason.as_str()).unwrap_or("")
        ));
        for rj in d.map(|d| d.rejected.as_slice()).unwrap_or_default() {
            o.push_str(&format!("          not {}: {}\n", rj.host, rj.why));
        }
    }
    for u in &p.unplaced {
        o.push_str(&format!("  UNPLACED {}: {}\n", u.vm, u.reason));
        for rj in &u.rejected {
            o.push_str(&format!("          not {}: {}\n", rj.host, rj.why));
        }
    }
    o.push_str("hosts after the moves (load / capacity):\n");
    for h in &p.hosts_after {
        o.push_str(&format!(
            "  {:<10} cpu {:.2}/{:.2}  mem {}/{} MiB  disk {}/{} MiB  bw {}/{} Mbit/s\n",
            h.host,
            h.load.cpu_milli as f64 / 1000.0,
            h.cap.cpu_milli as f64 / 1000.0,
            h.load.mem_mib,
            h.cap.mem_mib,
            h.load.disk_mib,
            h.cap.disk_mib,
            h.load.bw_mbps,
            h.cap.bw_mbps
        ));
    }
    o
}

pub fn images(rows: &Vec<crate::state::ImageRow>) -> String {
    let mut o = String::from(
        "IMAGE            STATE      SIZE MiB  STORED        SHA-256           UPLOADER    UPDATED\n",
    );
    for r in rows {
        o.push_str(&format!(
            "{:<16} {:<10} {:<9} {:<13} {:<17} {:<11} {}{}\n",
            format!("{}/{}", r.vm, r.generation),
            r.state,
            r.size
                .map(|s| format!("{:.1}", s as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into()),
            match (&r.compression, r.stored) {
                (Some(c), Some(s)) => format!("{:.1} {c}", s as f64 / 1048576.0),
                _ => "as is".into(),
            },
            r.sha256
                .as_deref()
                .map(|s| format!("{}…", &s[..s.len().min(16)]))
                .unwrap_or_else(|| "-".into()),
            r.uploader.as_deref().unwrap_or("-"),
            timestamp(r.updated_ms),
            r.reason
                .as_deref()
                .map(|x| format!("  ({x})"))
                .unwrap_or_default()
        ));
    }
    if rows.is_empty() {
        o.push_str("(no images)\n");
    }
    o
}

pub fn verified(rs: &Vec<crate::api::images::VerifyResult>) -> String {
    let mut o = String::new();
    for r in rs {
        o.push_str(&format!(
            "{:<16} {}  {}\n",
            r.image,
            if r.ok { "ok     " } else { "CORRUPT" },
            r.detail
        ));
    }
    if rs.is_empty() {
        o.push_str("(no published images)\n");
    }
    o
}

pub fn events(evs: &[Event]) -> String {
    let mut o = String::new();
    for e in evs {
        o.push_str(&format!(
            "{}  {:<5}  {:<16} {}{}\n",
            timestamp(e.at_ms),
            format!("{:?}", e.level).to_lowercase(),
            e.kind,
            e.subject
                .as_deref()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default(),
            e.message
        ));
    }
    if evs.is_empty() {
        o.push_str("(no events)\n");
    }
    o
}

pub fn vm_defs(rows: &Vec<crate::state::VmRow>) -> String {
    let mut o = String::from("VM         HOST       STATE      MEM MiB  VCPUS  MAC                IP               VLAN\n");
    for r in rows {
        o.push_str(&format!(
            "{:<10} {:<10} {:<10} {:<8} {:<6} {:<18} {:<16} {}\n",
            r.name,
            r.host.as_deref().unwrap_or("-"),
            r.state,
            r.def.mem_mib,
            r.def.vcpus,
            r.def.mac,
            r.def
                .ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            r.def
                .vlan
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if rows.is_empty() {
        o.push_str("(no VMs defined; `netmigrate vm define`)\n");
    }
    o
}

fn ms(v: Option<i64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into())
}

pub fn migrations(rows: &Vec<crate::state::MigrationRow>) -> String {
    let mut o = String::from(
        "ID    VM         FROM       TO         MODE  STATE        BREAK      STARTED\n",
    );
    for m in rows {
        o.push_str(&format!(
            "{:<5} {:<10} {:<10} {:<10} {:<5} {:<12} {:<10} {}\n",
            m.id,
            m.vm,
            m.source,
            m.target,
            m.mode,
            m.state,
            ms(m.break_ms),
            timestamp(m.started_ms),
        ));
    }
    if rows.is_empty() {
        o.push_str("(no migrations yet)\n");
    }
    o
}

pub fn dns(r: &crate::api::DnsReply) -> String {
    if !r.running {
        return "DNS is off: no network has a domain and no forwarder is set\n".into();
    }
    let mut o = String::new();
    for z in &r.zones {
        o.push_str(&format!(
            "zone {} serial {} ({} records)\n",
            z.zone, z.serial, z.records
        ));
    }
    o.push_str("\nNAME                             TTL    TYPE  DATA                      FROM\n");
    for l in &r.records {
        o.push_str(&format!(
            "{:<32} {:<6} {:<5} {:<25} {}\n",
            l.name, l.ttl, l.rtype, l.data, l.owner
        ));
    }
    o.push_str(&counters("DNS", &r.stats));
    o
}

/// "WHAT since start: a 3, b 1" from a server's counters, the zero ones left out.
fn counters(what: &str, stats: &std::collections::BTreeMap<String, u64>) -> String {
    let seen: Vec<String> = stats
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if seen.is_empty() {
        format!("{what} since start: nothing received\n")
    } else {
        format!("{what} since start: {}\n", seen.join(", "))
    }
}

pub fn leases(r: &crate::api::LeasesReply) -> String {
    let mut o = String::from(
        "NETWORK  IP               MAC                HOSTNAME         STATE     EXPIRES\n",
    );
    for l in &r.leases {
        o.push_str(&format!(
            "{:<8} {:<16} {:<18} {:<16} {:<9} {}\n",
            l.network,
            l.ip,
            l.mac,
            l.hostname.as_deref().unwrap_or("-"),
            l.state,
            timestamp(l.expires_ms)
        ));
    }
    if r.leases.is_empty() {
        o.push_str("(no leases yet)\n");
    }
    o.push_str(&counters("DHCP", &r.stats));
    o
}

pub fn reservations(r: &Vec<crate::reservations::ReservationView>) -> String {
    let mut o = String::from(
        "NETWORK  IP               MAC                CLIENT ID              HOSTNAME         SOURCE\n",
    );
    for v in r {
        let r = &v.row;
        o.push_str(&format!(
            "{:<8} {:<16} {:<18} {:<22} {:<16} {}\n",
            r.network,
            r.ip,
            r.mac.as_deref().unwrap_or("-"),
            r.client_id.as_deref().unwrap_or("-"),
            r.hostname.as_deref().unwrap_or("-"),
            v.source
        ));
    }
    if r.is_empty() {
        o.push_str("(no reservations)\n");
    }
    o
}

/// A batch: its moves with where each VM went, the break the probe saw and how long it took.
pub fn batch(b: &crate::state::BatchRow) -> String {
    let took = b
        .finished_ms
        .map(|f| format!(", took {:.1} s", (f - b.started_ms) as f64 / 1000.0))
        .unwrap_or_default();
    let mut o = format!(
        "batch {}: {}{}{}\n",
        b.id,
        b.state,
        took,
        b.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    o.push_str(
        "  MIGRATION  VM         FROM       TO         MODE  STATE        BREAK      TOOK\n",
    );
    for m in &b.migrations {
        let took = m
            .finished_ms
            .map(|f| format!("{:.1} s", (f - m.started_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        o.push_str(&format!(
            "  {:<10} {:<10} {:<10} {:<10} {:<5} {:<12} {:<10} {}\n",
            m.id,
            m.vm,
            m.source,
            m.target,
            m.mode,
            m.state,
            ms(m.break_ms),
            took,
        ));
    }
    if b.migrations.is_empty() {
        o.push_str("  (no move started)\n");
    }
    o
}

pub fn batches(rows: &Vec<crate::state::BatchRow>) -> String {
    let mut o = String::from("ID    STATE        MOVES  STARTED              REASON\n");
    for b in rows {
        o.push_str(&format!(
            "{:<5} {:<12} {:<6} {:<20} {}\n",
            b.id,
            b.state,
            b.plan["moves"].as_array().map(|a| a.len()).unwrap_or(0),
            timestamp(b.started_ms),
            b.reason.as_deref().unwrap_or("")
        ));
    }
    if rows.is_empty() {
        o.push_str("(no batches yet; `netmigrate migrate VM... --to HOST`)\n");
    }
    o
}

/// One migration with its journal: each step, how it ended and how long it took.
pub fn migration(m: &crate::state::MigrationRow) -> String {
    let mut o = format!(
        "migration {}: {} {} {} -> {}: {}{}\n",
        m.id,
        m.vm,
        m.mode,
        m.source,
        m.target,
        m.state,
        m.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    if let Some(b) = m.break_ms {
        o.push_str(&format!("  service break (built-in probe): {b} ms\n"));
    }
    if let Some(p) = m.detail.get("paused_ms").and_then(|v| v.as_u64()) {
        o.push_str(&format!("  paused: {p} ms\n"));
    }
    if let Some(p) = m.detail.get("phases_ms").and_then(|v| v.as_object()) {
        let mut ph: Vec<(&String, u64)> = p
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
            .collect();
        ph.sort_by_key(|(_, v)| *v);
        let line: Vec<String> = ph.iter().map(|(k, v)| format!("{k} {v}")).collect();
        o.push_str(&format!("  after the pause (ms): {}\n", line.join(", ")));
    }
    if let Some(d) = m.detail.get("downtime_ms").and_then(|v| v.as_u64()) {
        o.push_str(&format!("  hypervisor downtime: {d} ms\n"));
    }
    if let Some(f) = m.detail.get("fallback").and_then(|v| v.as_str()) {
        o.push_str(&format!("  live fell back to cold: {f}\n"));
    }
    for s in &m.steps {
        let took = s
            .finished_ms
            .map(|f| format!("{:>6} ms", f - s.started_ms))
            .unwrap_or_else(|| "      -".into());
        o.push_str(&format!(
            "  {:>3}. {:<22} {:<8} {}{}\n",
            s.seq,
            s.step,
            s.state,
            took,
            s.detail
                .as_deref()
                .map(|d| format!("  {d}"))
                .unwrap_or_default()
        ));
    }
    o
}

/// Machines that network-booted, for `hosts --discovered`: each one's hardware once it is
/// commissioned, and why it waits.
pub fn machines(ms: &Vec<crate::state::machines::MachineRow>) -> String {
    if ms.is_empty() {
        return "no machine waits to be accepted\n".into();
    }
    let mut o = String::from(
        "MAC                STAGE          ARCH  VENDOR CLASS                     FIRST SEEN  LAST SEEN\n",
    );
    for m in ms {
        o.push_str(&format!(
            "{:<18} {:<14} {:<5} {:<32} {:<11} {}\n",
            m.mac,
            m.stage,
            m.arch.map_or("-".into(), |a| a.to_string()),
            m.vendor_class.as_deref().unwrap_or("-"),
            ago(m.first_seen_ms),
            ago(m.last_seen_ms)
        ));
        if let Some(h) = &m.hardware {
            o.push_str(&format!("    hardware: {}\n", h.summary()));
        }
        if let Some(w) = &m.waits {
            o.push_str(&format!("    waits: {w}\n"));
        }
    }
    o.push_str("accept one with `netmigrate hosts accept MAC`\n");
    o
}

/// Machines on their way to being hosts (all but the ready ones), after the hosts table.
pub fn enrolling(ms: &[crate::state::machines::MachineRow]) -> String {
    let pending: Vec<_> = ms.iter().filter(|m| m.stage != "ready").collect();
    if pending.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "\nENROLLING  ADDRESS          MAC                STAGE       PROFILE  SINCE\n",
    );
    for m in pending {
        o.push_str(&format!(
            "{:<10} {:<16} {:<18} {:<11} {:<8} {}\n",
            m.name.as_deref().unwrap_or("-"),
            m.ip.as_deref().unwrap_or("-"),
            m.mac,
            m.stage,
            m.profile.as_deref().unwrap_or("-"),
            ago(m.stage_ms.unwrap_or(m.last_seen_ms))
        ));
        if let Some(why) = &m.failed_why {
            o.push_str(&format!("    failed: {why}\n"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(timestamp(1_795_800_123_000), "2026-11-27 17:22:03Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00Z");
    }
}

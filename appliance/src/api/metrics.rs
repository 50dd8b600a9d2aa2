//! `GET /metrics`: the appliance's counters in Prometheus's text format (0.0.4), for a scraper
//! on the API's TCP listener (with the API token as its bearer token) or on the socket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiError;
use crate::daemon::App;

/// Break-time histogram buckets (seconds): the paper's 18-25 s at the top, the targets
/// (0.15 s live, 0.5 s cold) among the low ones.
const BREAK_BUCKETS: [f64; 10] = [0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// The exposition text, family by family.
#[derive(Default)]
pub struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram of `values` (seconds) with `labels`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], values: &[f64]) {
        for b in BREAK_BUCKETS {
            let le = b.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            let n = values.iter().filter(|v| **v <= b).count();
            self.sample(&format!("{name}_bucket"), &l, n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, values.len() as f64);
        self.sample(&format!("{name}_sum"), labels, values.iter().sum());
        self.sample(&format!("{name}_count"), labels, values.len() as f64);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, ApiError> {
    let mut t = Text::default();
    t.family("netmigrate_up", "gauge", "1 while the appliance runs.");
    t.sample("netmigrate_up", &[], 1.0);
    t.family(
        "netmigrate_uptime_seconds",
        "gauge",
        "Seconds since the appliance started.",
    );
    t.sample("netmigrate_uptime_seconds", &[], app.uptime_secs() as f64);

    t.family(
        "netmigrate_dhcp_total",
        "counter",
        "DHCP packets and outcomes since start (received, malformed and ignored are drops).",
    );
    for (kind, v) in app.dhcp.stats.snapshot() {
        t.sample("netmigrate_dhcp_total", &[("kind", kind)], v as f64);
    }
    t.family(
        "netmigrate_dhcp_rogue_servers",
        "gauge",
        "Other DHCP servers heard on the served networks in the last hour.",
    );
    let hour_ago = crate::state::now_ms() - 3_600_000;
    let rogues = app
        .dhcp
        .rogues
        .lock()
        .expect("rogues")
        .values()
        .filter(|r| r.last_seen_ms > hour_ago)
        .count();
    t.sample("netmigrate_dhcp_rogue_servers", &[], rogues as f64);
    if let Some(tftp) = app.tftp.get() {
        t.family(
            "netmigrate_tftp_total",
            "counter",
            "TFTP requests and outcomes since start (refused: writes and names leading out of the boot directory).",
        );
        for (kind, v) in tftp.snapshot() {
            t.sample("netmigrate_tftp_total", &[("kind", kind)], v as f64);
        }
    }
    let mut stages: BTreeMap<String, u64> = BTreeMap::new();
    for m in app.state.machines().await? {
        *stages.entry(m.stage).or_default() += 1;
    }
    if !stages.is_empty() {
        t.family(
            "netmigrate_machines",
            "gauge",
            "Network-booted machines by provisioning stage.",
        );
        for (stage, n) in &stages {
            t.sample("netmigrate_machines", &[("stage", stage)], *n as f64);
        }
    }
    let now = crate::state::now_ms();
    let mut leases: BTreeMap<(String, String), u64> = BTreeMap::new();
    for l in app.state.leases().await? {
        let state = if l.state == "bound" && l.expires_ms < now {
            "expired".to_string()
        } else {
            l.state
        };
        *leases.entry((l.network, state)).or_default() += 1;
    }
    t.family(
        "netmigrate_dhcp_leases",
        "gauge",
        "Leases by network and state (bound ones are in use).",
    );
    for ((network, state), n) in &leases {
        t.sample(
            "netmigrate_dhcp_leases",
            &[("network", network), ("state", state)],
            *n as f64,
        );
    }

    if let Some(dns) = &app.dns {
        t.family(
            "netmigrate_dns_total",
            "counter",
            "DNS queries and outcomes since start (malformed and refused ones included).",
        );
        for (kind, v) in dns.server.stats().snapshot() {
            t.sample("netmigrate_dns_total", &[("kind", kind)], v as f64);
        }
        let (zones, _) = dns.server.listing().await;
        t.family("netmigrate_dns_records", "gauge", "Records per zone.");
        for z in &zones {
            t.sample(
                "netmigrate_dns_records",
                &[("zone", &z.zone)],
                z.records as f64,
            );
        }
        t.family("netmigrate_dns_serial", "gauge", "Each zone's SOA serial.");
        for z in &zones {
            t.sample(
                "netmigrate_dns_serial",
                &[("zone", &z.zone)],
                z.serial as f64,
            );
        }
    }

    let images = app.images.list().unwrap_or_default();
    t.family(
        "netmigrate_images",
        "gauge",
        "Published images in the store.",
    );
    t.sample("netmigrate_images", &[], images.len() as f64);
    t.family(
        "netmigrate_image_bytes",
        "gauge",
        "Bytes of the published images: as served (size) and on disk (stored).",
    );
    let size: u64 = images.iter().map(|p| p.size).sum();
    let stored: u64 = images.iter().map(|p| p.stored).sum();
    t.sample("netmigrate_image_bytes", &[("kind", "size")], size as f64);
    t.sample(
        "netmigrate_image_bytes",
        &[("kind", "stored")],
        stored as f64,
    );

    let migrations = app.state.migrations(i64::MAX, false).await?;
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut breaks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for m in &migrations {
        *by_state
            .entry((m.state.clone(), m.mode.clone()))
            .or_default() += 1;
        if let (Some(b), "done") = (m.break_ms, m.state.as_str()) {
            breaks
                .entry(m.mode.clone())
                .or_default()
                .push(b as f64 / 1000.0);
        }
    }
    t.family(
        "netmigrate_migrations",
        "gauge",
        "Migrations recorded, by state and mode.",
    );
    for ((state, mode), n) in &by_state {
        t.sample(
            "netmigrate_migrations",
            &[("state", state), ("mode", mode)],
            *n as f64,
        );
    }
    t.family(
        "netmigrate_migration_break_seconds",
        "histogram",
        "How long each finished move broke the VM's service, by mode.",
    );
    for (mode, values) in &breaks {
        t.histogram(
            "netmigrate_migration_break_seconds",
            &[("mode", mode)],
            values,
        );
    }

    t.family(
        "netmigrate_ssh_errors_total",
        "counter",
        "Inventory collections of each host that failed (SSH connection, command or output).",
    );
    for (host, n) in app.inventory.errors() {
        t.sample("netmigrate_ssh_errors_total", &[("host", &host)], n as f64);
    }

    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_histograms_and_escaping() {
        let mut t = Text::default();
        t.family("x_total", "counter", "X.");
        t.sample("x_total", &[("host", "a\"b\\c")], 3.0);
        t.histogram("b_seconds", &[("mode", "live")], &[0.12, 0.3, 40.0]);
        let text = t.0;
        assert!(text.starts_with("# HELP x_total X.\n# TYPE x_total counter\n"));
        assert!(text.contains("x_total{host=\"a\\\"b\\\\c\"} 3\n"), "{text}");
        assert!(text.contains("b_seconds_bucket{mode=\"live\",le=\"0.1\"} 0\n"));
        assert!(text.contains("b_seconds_bucket{mode=\"live\",le=\"0.15\"} 1\n"));
        assert!(text.contains("b_seconds_bucket{mode=\"live\",le=\"0.5\"} 2\n"));
        assert!(text.contains("b_seconds_bucket{mode=\"live\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("b_seconds_count{mode=\"live\"} 3\n"));
        assert!(
            text.contains("b_seconds_sum{mode=\"live\"} 40.42"),
            "{text}"
        );
    }
}

//! `netmigrate serve` and the API, through the real binary, curl and the CLI. The daemon here
//! serves only its API (a unix socket in a temporary state_dir, and TCP on 127.0.0.1), so these
//! tests need no root and no namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netmigrate");

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\n\n[[network]]\nname = \"lab\"\ninterface = \"nmtest0\"\naddress = \"10.0.0.1/24\"\n\
         dhcp_range = [\"10.0.0.100\", \"10.0.0.199\"]\n{extra}",
        dir.join("state").display()
    )
}

impl Daemon {
    fn config(&self) -> PathBuf {
        self.dir.path().join("netmigrate.toml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("state/api.sock")
    }

    /// Writes a config (plus `extra`) and starts `serve`, waiting for the API.
    fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("netmigrate.toml"),
            config_text(dir.path(), extra),
        )
        .unwrap();
        let mut d = Daemon { dir, child: None };
        d.child = Some(d.spawn());
        d.wait_ready();
        d
    }

    fn spawn(&self) -> Child {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "serve exited ({st}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not answer within 10 s");
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits for the exit; returns the exit status and stderr.
    fn stop_with(&mut self, sig: i32) -> (std::process::ExitStatus, String) {
        unsafe { libc::kill(self.pid(), sig) };
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `serve` on `config` to its end (for the cases where it must refuse to start).
fn serve_once(config: impl AsRef<Path>) -> Output {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config.as_ref())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_over_the_socket_with_cli_and_curl() {
    let d = Daemon::start("");
    let out = d.cli(&["status"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains(&format!("pid {}", d.pid())), "{s}");
    assert!(s.contains("lab      nmtest0    10.0.0.1/24"), "{s}");

    let json = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["pid"], d.pid());
    assert_eq!(v["networks"][0]["dhcp_range"], "10.0.0.100-10.0.0.199");
    assert_eq!(v["state"]["schema"], netmigrate::state::latest_schema());

    // A real HTTP client on the same socket sees the same API.
    let curl = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(d.socket())
        .arg("http://netmigrate/v1/status")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(v["pid"], d.pid());

    // Unknown endpoints answer a JSON error.
    let curl = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(d.socket())
        .args(["-w", "\n%{http_code}", "http://netmigrate/v1/nope"])
        .output()
        .unwrap();
    let body = text(&curl.stdout);
    assert!(body.ends_with("\n404"), "{body}");
    assert!(body.contains(r#""code":"not_found""#), "{body}");
}

#[test]
fn api_socket_is_private_to_its_owner() {
    let d = Daemon::start("");
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "api.sock mode {mode:o}");
    let db = std::fs::metadata(d.dir.path().join("state/state.db")).unwrap();
    assert_eq!(
        db.permissions().mode() & 0o007,
        0,
        "state.db is readable by others"
    );
}

#[test]
fn second_serve_on_the_same_state_refuses() {
    let d = Daemon::start("");
    let out = serve_once(d.config());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("is in use by another netmigrate"), "{err}");
    assert!(err.contains(&format!("pid {}", d.pid())), "{err}");
    // The first one is untouched.
    assert!(d.cli(&["status"]).status.success());
}

#[test]
fn serve_refuses_a_bad_config_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netmigrate.toml");
    std::fs::write(
        &cfg,
        config_text(dir.path(), "lease_time = \"forever\"\ncolour = 1\n"),
    )
    .unwrap();
    let out = serve_once(&cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("network[0].lease_time: `forever` is not a duration"),
        "{err}"
    );
    assert!(err.contains("network[0].colour: unknown key"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not create state"
    );
}

#[test]
fn sigterm_stops_gracefully_and_records_it() {
    let mut d = Daemon::start("");
    let (st, _err) = d.stop_with(libc::SIGTERM);
    assert!(st.success(), "exit {st}");
    assert!(!d.socket().exists(), "socket left behind");
    // Restart on the same state: the events of the first run are there.
    d.child = Some(d.spawn());
    d.wait_ready();
    let ev = text(&d.cli(&["events"]).stdout);
    assert!(
        ev.contains("daemon.stop") && ev.contains("stopped on SIGTERM"),
        "{ev}"
    );
    assert_eq!(ev.matches("daemon.start").count(), 2, "{ev}");
    // The network's interface does not exist here: no DHCP server, said once per start, and
    // the appliance runs on.
    assert!(
        ev.contains("dhcp.listen") && ev.contains("DHCP on nmtest0 (network lab): cannot listen"),
        "{ev}"
    );
}

#[test]
fn reload_applies_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    let mut d = Daemon::start("");
    let base = config_text(d.dir.path(), "");

    // Good: a new domain is applied.
    std::fs::write(d.config(), format!("{base}domain = \"lab.example\"\n")).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&d.cli(&["status"]).stdout);
    assert!(s.contains("lab.example"), "{s}");

    // Bad: refused with the problem named; the running config stays.
    std::fs::write(d.config(), format!("{base}domain = \"lab..broken\"\n")).unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("the running config stays"), "{err}");
    assert!(
        err.contains("network[0].domain: `lab..broken` is not a valid domain name"),
        "{err}"
    );
    let s = text(&d.cli(&["status"]).stdout);
    assert!(
        s.contains("lab.example") && s.contains("reload    REFUSED"),
        "{s}"
    );

    // SIGHUP takes the same path.
    std::fs::write(d.config(), format!("{base}domain = \"lab.hup\"\n")).unwrap();
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = text(&d.cli(&["status"]).stdout);
        if s.contains("lab.hup") {
            break;
        }
        assert!(Instant::now() < until, "SIGHUP did not reload: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A change only a restart can apply is refused.
    let other = config_text(&d.dir.path().join("elsewhere"), "");
    std::fs::write(d.config(), other).unwrap();
    // (The CLI would look for the socket in the new state_dir: point it at the running one.)
    let sock = d.socket().display().to_string();
    let out = d.cli(&["--socket", &sock, "reload"]);
    assert!(
        text(&out.stderr).contains("state_dir changed"),
        "{}",
        text(&out.stderr)
    );
    let (st, _) = d.stop_with(libc::SIGINT);
    assert!(st.success());
}

#[test]
fn tcp_api_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Pick a free port: bind, read it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let d = Daemon::start(&extra);
    let url = format!("http://127.0.0.1:{port}/v1/status");

    let no = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let body = text(&no.stdout);
    assert!(body.ends_with("\n401"), "{body}");
    assert!(body.contains("bearer token"), "{body}");

    let wrong = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer 0123456789abcdef0123456789abcdeX",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(text(&wrong.stdout), "401");

    let ok = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-H",
            "Authorization: Bearer 0123456789abcdef0123456789abcdef",
            &url,
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["pid"], d.pid());

    // Prometheus scrapes /metrics with the same token; without it, nothing.
    let murl = format!("http://127.0.0.1:{port}/metrics");
    let no = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &murl])
        .output()
        .unwrap();
    assert_eq!(text(&no.stdout), "401");
    let m = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-D",
            "-",
            "-H",
            "Authorization: Bearer 0123456789abcdef0123456789abcdef",
            &murl,
        ])
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", text(&m.stderr));
    let all = text(&m.stdout);
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    check_exposition(body);
    for want in [
        "netmigrate_up 1\n",
        "netmigrate_dhcp_total{kind=\"malformed\"} 0\n",
        "netmigrate_images 0\n",
        "# TYPE netmigrate_migration_break_seconds histogram\n",
        "# TYPE netmigrate_ssh_errors_total counter\n",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }

    // The CLI over TCP.
    let out = Command::new(BIN)
        .args(["--url", &format!("127.0.0.1:{port}"), "--token-file"])
        .arg(&token)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("tcp:127.0.0.1:{port}")));
}

#[test]
fn newer_state_database_is_refused() {
    let mut d = Daemon::start("");
    d.stop_with(libc::SIGTERM);
    let db = d.dir.path().join("state/state.db");
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect('{}'); c.execute('PRAGMA user_version = 99'); c.commit()",
            db.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let out = serve_once(d.config());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("written by a newer netmigrate (schema version 99"),
        "{err}"
    );
}

#[test]
fn client_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), config_text(dir.path(), "")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("c.toml"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the netmigrate daemon at")
            && err.contains("is `netmigrate serve` running"),
        "{err}"
    );
}

/// Prometheus's text format, as a scraper reads it: each sample `name{labels} value` with a
/// number for value, after a `# TYPE` for its family.
fn check_exposition(body: &str) {
    let mut typed: Vec<String> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            typed.push(w.next().unwrap().to_string());
            let kind = w.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.iter().any(|t| t == f))
            .unwrap_or(name);
        assert!(typed.iter().any(|t| t == family), "no TYPE for {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
    }
}

//! The API's request handling: a running appliance (state, image store, no networks or hosts)
//! and its router; each input picks an endpoint, a path segment and a JSON body. Bad input must
//! get a 4xx with an error body, never a 5xx, a panic or a hang (libFuzzer's -timeout).

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Env {
    rt: tokio::runtime::Runtime,
    running: netmigrate::daemon::Running,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("netmigrate.toml");
        std::fs::write(
            &cfg,
            format!("state_dir = \"{}\"\n", dir.path().join("state").display()),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(netmigrate::daemon::start(&cfg)).unwrap();
        Env {
            rt,
            running,
            _dir: dir,
        }
    })
}

/// (method, path with `{}` for the input's segment).
const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1/reservations"),
    ("DELETE", "/v1/reservations/lab/{}"),
    ("DELETE", "/v1/reservations/{}/10.0.0.5"),
    ("POST", "/v1/hosts/collect"),
    ("POST", "/v1/hosts/trust"),
    ("POST", "/v1/machines/{}/accept"),
    ("POST", "/v1/plan"),
    ("POST", "/v1/images/verify"),
    ("POST", "/v1/images/gc"),
    ("POST", "/v1/ftp/accounts"),
    ("POST", "/v1/vm-defs"),
    ("DELETE", "/v1/vm-defs/{}"),
    ("POST", "/v1/vm-defs/{}/start"),
    ("POST", "/v1/vm-defs/{}/stop"),
    ("POST", "/v1/migrations"),
    ("GET", "/v1/migrations/{}"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/{}"),
    ("GET", "/v1/events?{}"),
    ("GET", "/v1/hosts?{}"),
    ("GET", "/v1/machines?{}"),
    ("GET", "/v1/leases?{}"),
];

/// Every byte of a path segment or query, percent-encoded unless unreserved (or `=`/`&` in a
/// query, so the fuzzer can make key=value pairs).
fn encode(seg: &[u8], query: bool) -> String {
    seg.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b'=' | b'&' if query => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, template) = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let (seg, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let path = template.replace("{}", &encode(seg, template.contains('?')));
    let req = Request::builder()
        .method(method)
        .uri(&path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let env = env();
    let router = netmigrate::api::router(env.running.app.clone());
    let (status, reply) = env.rt.block_on(async {
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, bytes)
    });
    assert!(
        status != StatusCode::INTERNAL_SERVER_ERROR && !status.is_server_error(),
        "{method} {path} {:?}: {status} {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&reply)
    );
    if status.is_client_error() {
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {status} without a JSON error body ({e}): {}",
                String::from_utf8_lossy(&reply)
            )
        });
        assert!(v["error"]["message"].is_string(), "{method} {path}: {v}");
    }
});

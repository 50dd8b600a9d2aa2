//! The HTTP side of booting: boot files (read-only, from the boot directory), each machine's
//! iPXE script, and the installer's call back. One listener per network, on the appliance's
//! address there and bound to that interface.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use netmigrate_services::files::{self, Refusal};

/// What the appliance does for the boot server: its machines live in the appliance's state.
#[async_trait]
pub trait Enrolment: Send + Sync + 'static {
    /// The iPXE script for the machine `mac` (as the request's `?mac=` says it, if at all)
    /// that asked from `from`; `base` is this server's URL as the machine reaches it.
    async fn script(&self, mac: Option<&str>, from: Ipv4Addr, base: &str) -> String;
    /// The installer calls back with its token and SSH host key.
    async fn enrol(&self, call: Callback, from: Ipv4Addr) -> Result<Enrolled, Refused>;
    /// The installer, sent to commission, reports the machine's hardware with its token.
    async fn commission(&self, report: Report, from: Ipv4Addr) -> Result<Commissioned, Refused>;
    /// The installer, sent to deploy, wrote and checked the image, or says why it could
    /// not; the answer is the deployed system's first-boot token, or None for a failure
    /// recorded.
    async fn deployed(&self, report: Deployment, from: Ipv4Addr)
        -> Result<Option<String>, Refused>;
}

/// A deploying installer's report: the image written and checked, or why not.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub token: String,
    /// The SHA-256 of what it wrote, as it computed it while writing.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The disk it wrote ("vda").
    #[serde(default)]
    pub disk: Option<String>,
    /// The deployed system's SSH host key, made by the installer ("ssh-ed25519 AAAA...").
    #[serde(default)]
    pub host_key: Option<String>,
    /// Why it gave up (no such disk, disk too small, download, checksum); the disk is left
    /// unbootable.
    #[serde(default)]
    pub failed: Option<String>,
}

/// What a deploying installer is told once its report is taken: the one-time token the
/// deployed system calls back with at its first boot, and where; neither after a failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub token: Option<String>,
    pub callback: Option<String>,
}

/// A commissioning installer's report.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub token: String,
    pub hardware: crate::Hardware,
}

/// What the appliance made of a report: the installer says it and boots again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commissioned {
    /// "accepted as hv1 (...)", or why the machine waits.
    pub says: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    pub token: String,
    /// "ssh-ed25519 AAAA..." as the host's /etc/ssh/ssh_host_*_key.pub says.
    pub host_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub name: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Unknown, used or expired token: 403.
    #[error("{0}")]
    Token(String),
    /// A call that says something impossible: 400.
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Clone)]
struct Boot {
    root: PathBuf,
    base: String,
    enrolment: Option<Arc<dyn Enrolment>>,
}

/// The routes of one listener whose URL is `base` ("http://10.0.0.1:8067").
pub fn router(root: PathBuf, base: String, enrolment: Option<Arc<dyn Enrolment>>) -> Router {
    Router::new()
        .route("/boot/{*path}", get(file))
        .route("/ipxe", get(script))
        .route("/enrol", post(enrol))
        .route("/deployed", post(deployed))
        .route(
            "/commission",
            post(commission).layer(axum::extract::DefaultBodyLimit::max(
                crate::hardware::MAX_REPORT,
            )),
        )
        .with_state(Boot {
            root,
            base,
            enrolment,
        })
}

/// Listens on `addr` (bound to `interface`) until the task is dropped or aborted.
pub fn listen(
    addr: SocketAddr,
    interface: &str,
    router: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    let l = TcpListener::from_std(s.into())?;
    Ok(tokio::spawn(async move {
        let svc = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(l, svc).await {
            tracing::error!("boot HTTP on {addr}: {e}");
        }
    }))
}

async fn file(State(b): State<Boot>, method: Method, Path(path): Path<String>) -> Response {
    let real = match files::resolve(&b.root, &path) {
        Ok(p) => p,
        Err(r) => {
            let status = match r {
                Refusal::Missing(_) => StatusCode::NOT_FOUND,
                Refusal::Escape => StatusCode::FORBIDDEN,
            };
            tracing::info!(file = %path, "boot HTTP: {}", r.why());
            return (status, format!("{}\n", r.why())).into_response();
        }
    };
    let f = match tokio::fs::File::open(&real).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let len = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, len.to_string()),
    ];
    if method == Method::HEAD {
        return (headers, axum::body::Body::empty()).into_response();
    }
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
    (headers, body).into_response()
}

#[derive(Deserialize)]
struct ScriptQuery {
    mac: Option<String>,
}

async fn script(
    State(b): State<Boot>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ScriptQuery>,
) -> Response {
    let Some(e) = &b.enrolment else {
        return (StatusCode::NOT_FOUND, "no enrolment here\n").into_response();
    };
    let SocketAddr::V4(peer) = peer else {
        return (StatusCode::BAD_REQUEST, "IPv4 only\n").into_response();
    };
    let text = e.script(q.mac.as_deref(), *peer.ip(), &b.base).await;
    ([(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

/// A call's enrolment, caller and body.
type Caller<T> = (Arc<dyn Enrolment>, std::net::SocketAddrV4, T);

/// What every call of the installer's needs: enrolment served here, an IPv4 caller, a body
/// that parses. Else the status and text that say which is missing.
fn caller<T>(
    b: &Boot,
    peer: SocketAddr,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<Caller<T>, (StatusCode, String)> {
    let Some(e) = &b.enrolment else {
        return Err((StatusCode::NOT_FOUND, "no enrolment here\n".into()));
    };
    let SocketAddr::V4(peer) = peer else {
        return Err((StatusCode::BAD_REQUEST, "IPv4 only\n".into()));
    };
    match body {
        Ok(Json(t)) => Ok((e.clone(), peer, t)),
        Err(r) => Err((StatusCode::BAD_REQUEST, format!("{}\n", r.body_text()))),
    }
}

async fn commission(
    State(b): State<Boot>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    report: Result<Json<Report>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (e, peer, report) = match caller(&b, peer, report) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(why) = report.hardware.check() {
        return (StatusCode::BAD_REQUEST, format!("hardware: {why}\n")).into_response();
    }
    match e.commission(report, *peer.ip()).await {
        Ok(done) => Json(done).into_response(),
        Err(r) => refused(peer, r),
    }
}

async fn deployed(
    State(b): State<Boot>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    report: Result<Json<Deployment>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (e, peer, report) = match caller(&b, peer, report) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if report.failed.is_none() && (report.sha256.is_none() || report.host_key.is_none()) {
        return (
            StatusCode::BAD_REQUEST,
            "a deployment report has sha256 and host_key, or failed\n",
        )
            .into_response();
    }
    match e.deployed(report, *peer.ip()).await {
        Ok(token) => Json(Written {
            callback: token.as_ref().map(|_| format!("{}/enrol", b.base)),
            token,
        })
        .into_response(),
        Err(r) => refused(peer, r),
    }
}

/// A refusal as its status and reason.
fn refused(peer: std::net::SocketAddrV4, r: Refused) -> Response {
    let status = match r {
        Refused::Token(_) => StatusCode::FORBIDDEN,
        Refused::Bad(_) => StatusCode::BAD_REQUEST,
        Refused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(from = %peer, "provisioning call refused: {r}");
    (status, format!("{r}\n")).into_response()
}

async fn enrol(
    State(b): State<Boot>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    call: Result<Json<Callback>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (e, peer, call) = match caller(&b, peer, call) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match e.enrol(call, *peer.ip()).await {
        Ok(done) => Json(done).into_response(),
        Err(r) => refused(peer, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct One;

    #[async_trait]
    impl Enrolment for One {
        async fn script(&self, mac: Option<&str>, from: Ipv4Addr, base: &str) -> String {
            format!("{base} {mac:?} {from}")
        }
        async fn enrol(&self, call: Callback, _from: Ipv4Addr) -> Result<Enrolled, Refused> {
            if call.token == "good" {
                Ok(Enrolled {
                    name: "hv1".into(),
                    address: "10.0.0.50".into(),
                })
            } else {
                Err(Refused::Token("unknown token".into()))
            }
        }
        async fn commission(
            &self,
            report: Report,
            _from: Ipv4Addr,
        ) -> Result<Commissioned, Refused> {
            Ok(Commissioned {
                says: format!("{} MiB", report.hardware.memory_mib),
            })
        }
        async fn deployed(
            &self,
            report: Deployment,
            _from: Ipv4Addr,
        ) -> Result<Option<String>, Refused> {
            match report.failed {
                None => Ok(Some(format!("first-boot-of-{}", report.token))),
                Some(_) => Ok(None),
            }
        }
    }

    async fn call(r: &Router, req: Request<Body>) -> (StatusCode, String) {
        let mut req = req;
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4000))));
        let res = r.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn serves_files_scripts_and_call_backs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("boot");
        std::fs::create_dir_all(root.join("installer")).unwrap();
        std::fs::write(root.join("installer/vmlinuz"), "kernel").unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        let r = router(
            root.canonicalize().unwrap(),
            "http://10.0.0.1:8067".into(),
            Some(Arc::new(One)),
        );
        assert_eq!(
            call(&r, get("/boot/installer/vmlinuz")).await,
            (StatusCode::OK, "kernel".into())
        );
        assert_eq!(
            call(&r, get("/boot/nothing")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&r, get("/boot/installer/%2e%2e/%2e%2e/secret"))
                .await
                .0,
            StatusCode::FORBIDDEN,
            "percent-encoded dots are dots"
        );
        assert_eq!(
            call(&r, get("/ipxe?mac=52:54:00:00:00:0a")).await.1,
            "http://10.0.0.1:8067 Some(\"52:54:00:00:00:0a\") 10.0.0.9"
        );
        assert!(call(&r, get("/ipxe")).await.1.contains("None"));
        // Left as iPXE sent it: the appliance decides what is a MAC.
        assert!(call(&r, get("/ipxe?mac=${net0/mac}"))
            .await
            .1
            .contains("Some(\"${net0/mac}\")"));
        let post = |body: &str| {
            Request::post("/enrol")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let (s, body) = call(
            &r,
            post(r#"{"token":"good","host_key":"ssh-ed25519 AAAA"}"#),
        )
        .await;
        assert_eq!((s, body.contains("hv1")), (StatusCode::OK, true));
        assert_eq!(
            call(&r, post(r#"{"token":"bad","host_key":"k"}"#)).await,
            (StatusCode::FORBIDDEN, "unknown token\n".into())
        );
        let (s, body) = call(&r, post(r#"{"token":"good"}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("host_key"), "{body}");

        let report = |body: String| {
            Request::post("/commission")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let hw = |mem: u64| {
            format!(
                r#"{{"token":"t","hardware":{{"arch":"x86_64","firmware":"uefi","cpus":2,"cpu_model":"m","virt":"vmx","memory_mib":{mem},"disks":[],"nics":[]}}}}"#
            )
        };
        assert_eq!(
            call(&r, report(hw(2048))).await,
            (StatusCode::OK, r#"{"says":"2048 MiB"}"#.into())
        );
        let (s, body) = call(&r, report(hw(0))).await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::BAD_REQUEST, "hardware: memory_mib is 0\n")
        );
        let (s, body) = call(&r, report(format!("{}{}", hw(1), " ".repeat(300 * 1024)))).await;
        assert!(
            s.is_client_error() && body.contains("length limit"),
            "a report is bounded: {s} {body}"
        );

        let deployed = |body: &str| {
            Request::post("/deployed")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        assert_eq!(
            call(
                &r,
                deployed(
                    r#"{"token":"t","sha256":"ab","disk":"vda","host_key":"ssh-ed25519 AAAA"}"#
                )
            )
            .await,
            (
                StatusCode::OK,
                r#"{"token":"first-boot-of-t","callback":"http://10.0.0.1:8067/enrol"}"#.into()
            )
        );
        assert_eq!(
            call(&r, deployed(r#"{"token":"t","disk":"vda"}"#)).await.0,
            StatusCode::BAD_REQUEST,
            "neither written nor failed"
        );
        assert_eq!(
            call(&r, deployed(r#"{"token":"t","failed":"disk too small"}"#)).await,
            (StatusCode::OK, r#"{"token":null,"callback":null}"#.into())
        );
    }
}

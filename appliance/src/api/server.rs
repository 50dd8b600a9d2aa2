//! The API's listeners: the unix socket `state_dir/api.sock` (mode 0600: the file's owner is the
//! only caller) and, when configured, TCP with a bearer token.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ApiError;
use crate::daemon::App;
use crate::Error;

/// The running listeners.
pub struct ApiHandle {
    tasks: Vec<JoinHandle<()>>,
    endpoints: Vec<String>,
    socket: std::path::PathBuf,
}

impl ApiHandle {
    pub fn describe(&self) -> String {
        self.endpoints.join(", ")
    }

    /// Waits until every listener has finished its in-flight requests, then removes the socket.
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn until_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub async fn start(app: Arc<App>, stop: watch::Receiver<bool>) -> Result<ApiHandle, Error> {
    let cfg = app.config();
    let socket = cfg.socket_path();
    // We hold the state_dir lock, so a socket file here is a leftover of a dead daemon.
    let _ = std::fs::remove_file(&socket);
    let unix = UnixListener::bind(&socket)
        .map_err(|e| Error::Io(format!("binding the API socket {}", socket.display()), e))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Io(format!("chmod 600 {}", socket.display()), e))?;

    let router = super::router(app.clone());
    let mut tasks = Vec::new();
    let mut endpoints = vec![format!("unix:{}", socket.display())];
    let s = stop.clone();
    let r = router.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(unix, r)
            .with_graceful_shutdown(until_stop(s))
            .await
        {
            tracing::error!("API unix listener failed: {e}");
        }
    }));

    if let Some(addr) = cfg.api.listen {
        let token_file = cfg
            .api
            .token_file
            .as_ref()
            .expect("config check requires token_file with listen");
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| {
                Error::Io(
                    format!("reading api.token_file {}", token_file.display()),
                    e,
                )
            })?
            .trim()
            .to_string();
        if token.len() < 16 {
            return Err(Error::Invalid(format!(
                "api.token_file {} holds a token of {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                token_file.display(),
                token.len()
            )));
        }
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("binding the API on {addr}"), e))?;
        let local = tcp
            .local_addr()
            .map_err(|e| Error::Io("API address".into(), e))?;
        endpoints.push(format!("tcp:{local}"));
        let r = router.layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, r)
                .with_graceful_shutdown(until_stop(stop))
                .await
            {
                tracing::error!("API TCP listener failed: {e}");
            }
        }));
    }
    Ok(ApiHandle {
        tasks,
        endpoints,
        socket,
    })
}

/// Refuses a TCP request without `Authorization: Bearer <token>`. The dashboard's page itself
/// holds no data and is served to anyone; everything it shows is fetched with the token.
async fn require_token(
    State(token): State<Arc<String>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if req.method() == axum::http::Method::GET && req.uri().path() == "/" {
        return Ok(next.run(req).await);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        ));
    }
    Ok(next.run(req).await)
}

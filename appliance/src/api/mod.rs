//! The HTTP JSON API (`/v1/...`). The CLI, the dashboard and the tests all use it; it is the
//! only way into a running appliance.

pub mod client;
pub mod extract;
pub mod hosts;
pub mod images;
pub mod metrics;
pub mod migrations;
pub mod plan;
pub mod reservations;
pub mod server;
pub mod watch;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use self::extract::Query;
use crate::config::values::format_duration;
use crate::daemon::{App, ReloadError, ReloadOutcome};
use crate::state::{Event, HostRow, StateError};

/// An error as the API returns it: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: status.as_u16(),
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self })).into_response()
    }
}

impl From<crate::app::Error> for ApiError {
    fn from(e: crate::app::Error) -> Self {
        use crate::app::Error as E;
        use crate::migrate::Refused;
        let message = e.to_string();
        let (status, code) = match e {
            E::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            E::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            E::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            E::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            E::State(s) => return s.into(),
            E::Refused(Refused::UnknownVm(_) | Refused::UnknownHost(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            E::Refused(Refused::State(s)) => return s.into(),
            E::Refused(Refused::Driver(_)) => (StatusCode::BAD_GATEWAY, "host"),
            E::Refused(_) => (StatusCode::CONFLICT, "refused"),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "panic"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let status = match e {
            StateError::Conflict(_) => StatusCode::CONFLICT,
            StateError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, "state", e.to_string())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_ms: i64,
    pub uptime_s: u64,
    pub config: ConfigStatus,
    pub state: StateStatus,
    pub api: Vec<String>,
    pub networks: Vec<NetworkStatus>,
    pub hosts: Vec<HostRow>,
    pub reservations: usize,
    pub events: i64,
    pub last_reload: Option<ReloadOutcome>,
    /// Other DHCP servers heard on the served networks.
    #[serde(default)]
    pub dhcp_rogues: Vec<crate::dhcp::RogueServer>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StateStatus {
    pub path: String,
    pub schema: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub interface: String,
    pub address: String,
    pub dhcp_range: Option<String>,
    pub lease_time: String,
    pub domain: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadReply {
    pub message: String,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/reload", post(reload))
        .route(
            "/v1/reservations",
            get(reservations::list).post(reservations::add),
        )
        .route(
            "/v1/reservations/{network}/{ip}",
            axum::routing::delete(reservations::remove),
        )
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/collect", post(hosts::collect))
        .route("/v1/hosts/trust", post(hosts::trust))
        .route("/v1/machines", get(hosts::machines))
        .route("/v1/machines/{mac}/accept", post(hosts::accept))
        .route("/v1/machines/{target}/power", post(hosts::power))
        .route("/v1/machines/{target}/bmc", post(hosts::set_bmc))
        .route("/v1/machines/{target}/deploy", post(hosts::deploy))
        .route("/v1/machines/{target}/release", post(hosts::release))
        .route("/v1/vms", get(hosts::vms))
        .route("/v1/plan", post(plan::plan))
        .route("/v1/images", get(images::list))
        .route("/v1/images/verify", post(images::verify))
        .route("/v1/images/gc", post(images::gc))
        .route("/v1/ftp/accounts", post(images::account))
        .route(
            "/v1/vm-defs",
            get(migrations::list_defs).post(migrations::define),
        )
        .route(
            "/v1/vm-defs/{name}",
            axum::routing::delete(migrations::remove),
        )
        .route("/v1/vm-defs/{name}/start", post(migrations::start))
        .route("/v1/vm-defs/{name}/stop", post(migrations::stop))
        .route("/v1/vm-defs/{name}/release", post(migrations::release))
        .route("/v1/vm-defs/{name}/adopt", post(migrations::adopt))
        .route(
            "/v1/migrations",
            get(migrations::list).post(migrations::migrate),
        )
        .route("/v1/migrations/{id}", get(migrations::get))
        .route(
            "/v1/batches",
            get(migrations::list_batches).post(migrations::start_batch),
        )
        .route("/v1/batches/{id}", get(migrations::get_batch))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/leases", get(leases))
        .route("/v1/dns", get(dns))
        .route("/metrics", get(metrics::metrics))
        .route("/", get(dashboard))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(app)
}

/// The dashboard: one static page that reads this API (see dashboard.html).
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<Status>, ApiError> {
    let cfg = app.config();
    let hosts = app.state.hosts().await?;
    let events = app.state.event_count().await?;
    let mut api = vec![format!("unix:{}", cfg.socket_path().display())];
    if let Some(l) = cfg.api.listen {
        api.push(format!("tcp:{l}"));
    }
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        started_ms: app.started_ms,
        uptime_s: app.uptime_secs(),
        config: ConfigStatus {
            path: app.config_path().display().to_string(),
        },
        state: StateStatus {
            path: app.state.path().display().to_string(),
            schema: app.state.schema_version(),
        },
        api,
        networks: cfg
            .networks
            .iter()
            .map(|n| NetworkStatus {
                name: n.name.clone(),
                // A relayed network is heard through another's interface.
                interface: n
                    .via
                    .as_ref()
                    .map(|v| format!("via {v}"))
                    .unwrap_or_else(|| n.interface.clone()),
                address: n.address.to_string(),
                dhcp_range: n.dhcp_range.map(|(a, b)| format!("{a}-{b}")),
                lease_time: format_duration(n.lease_time),
                domain: n.domain.clone(),
            })
            .collect(),
        hosts: hosts
            .into_iter()
            .filter(|h| h.in_config || h.enrolled)
            .collect(),
        reservations: cfg.reservations.len(),
        events,
        last_reload: app.last_reload(),
        dhcp_rogues: app
            .dhcp
            .rogues
            .lock()
            .expect("rogues")
            .values()
            .cloned()
            .collect(),
    }))
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<u32>,
}

async fn events(
    State(app): State<Arc<App>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let limit = q.limit.unwrap_or(50).min(10_000);
    Ok(Json(app.state.events(limit).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LeasesReply {
    pub leases: Vec<crate::state::LeaseRow>,
    /// The DHCP server's counters since start.
    pub stats: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DnsReply {
    /// False when no network has a domain and no forwarder is set.
    pub running: bool,
    pub zones: Vec<netmigrate_services::dns::ZoneState>,
    pub records: Vec<netmigrate_services::dns::Listed>,
    /// The DNS server's counters since start.
    pub stats: std::collections::BTreeMap<String, u64>,
}

async fn dns(State(app): State<Arc<App>>) -> Json<DnsReply> {
    let Some(d) = &app.dns else {
        return Json(DnsReply {
            running: false,
            zones: Vec::new(),
            records: Vec::new(),
            stats: Default::default(),
        });
    };
    let (zones, records) = d.server.listing().await;
    Json(DnsReply {
        running: true,
        zones,
        records,
        stats: d
            .server
            .stats()
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    })
}

async fn leases(State(app): State<Arc<App>>) -> Result<Json<LeasesReply>, ApiError> {
    Ok(Json(LeasesReply {
        leases: app.state.leases().await?,
        stats: app
            .dhcp
            .stats
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }))
}

async fn reload(State(app): State<Arc<App>>) -> Result<Json<ReloadReply>, ApiError> {
    match app.reload().await {
        Ok(message) => Ok(Json(ReloadReply { message })),
        Err(e) => {
            let (status, code) = match &e {
                ReloadError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_config"),
                ReloadError::NeedsRestart(_) => (StatusCode::CONFLICT, "needs_restart"),
                ReloadError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state"),
            };
            let mut err = ApiError::new(
                status,
                code,
                match &e {
                    ReloadError::Config(errs) => format!(
                        "the new config has {} problem(s); the running config stays",
                        errs.0.len()
                    ),
                    other => other.to_string(),
                },
            );
            err.details = e.details();
            Err(err)
        }
    }
}

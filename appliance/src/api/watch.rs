//! `GET /v1/watch`: the notice bus as a stream of JSON lines (one notice per line), for the
//! CLI's progress bars and for anyone who wants to follow the appliance. A watcher that falls
//! behind gets a `lagged` line saying how many it missed, and goes on.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use crate::daemon::App;
use crate::state::Notice;

pub async fn watch(State(app): State<Arc<App>>) -> Response {
    let rx = app.state.watch();
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let n = match rx.recv().await {
            Ok(n) => n,
            Err(RecvError::Lagged(missed)) => Notice::Lagged { missed },
            Err(RecvError::Closed) => return None,
        };
        let mut line = serde_json::to_vec(&n).expect("json");
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(lines))
        .expect("response")
}

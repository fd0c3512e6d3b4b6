//! The HTTP side: dashboard, JSON API, live event stream, health and
//! metrics, all read from the one task table (nothing here keeps task state).
//!
//! `app(state)` builds the router with its layers (tracing, timeouts,
//! compression, body limit, bearer-token auth); `serve` runs it until the
//! process shuts down. Submit and cancel are forwarded to the group over MQTT,
//! so any worker of the group may take a task, exactly as for MQTT clients.

pub mod api;
pub mod assets;
pub mod health;
pub mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rumqttc::v5::AsyncClient;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Secret;
use crate::intake::IntakePolicy;
use crate::mqtt::client::LinkState;
use crate::mqtt::topics::Topics;
use crate::table::TaskTable;

/// Largest request body accepted (a task request is at most an MQTT payload).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time allowed to produce a response (not to stream one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The task table.
    pub table: TaskTable,
    /// Where submits and cancels are published.
    pub client: AsyncClient,
    /// Topic names of this worker's group.
    pub topics: Topics,
    /// The same rules MQTT requests pass.
    pub policy: Arc<IntakePolicy>,
    /// Broker connection state.
    pub link: watch::Receiver<LinkState>,
    /// Static facts about this worker.
    pub info: Arc<WorkerInfo>,
    /// Bearer token for writes (and reads when `token_for_reads`).
    pub token: Option<Secret>,
    /// Whether reads need the token too.
    pub token_for_reads: bool,
    /// Ends live streams when the process shuts down.
    pub shutdown: CancellationToken,
}

/// Facts about the worker shown by `/api/worker` and checked by `/readyz`.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// This worker.
    pub worker_id: String,
    /// Its group.
    pub group: String,
    /// Broker `host:port` it connects to.
    pub broker: String,
    /// Parallel runs.
    pub concurrency: usize,
    /// Where playbooks live.
    pub playbook_directory: PathBuf,
    /// The embedded broker's MQTT 5 listener, when it runs here.
    pub embedded_broker: Option<SocketAddr>,
    /// `ansible-playbook` as configured (a path, or a name looked up on
    /// `PATH`); `/readyz` looks for it on every probe.
    pub ansible_playbook: PathBuf,
}

/// An API error: a status and a message for the client, as JSON. Messages
/// never carry internals.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and a client-facing `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// The whole router: dashboard, API, events, health and metrics.
pub fn app(state: AppState) -> Router {
    let guarded = api::routes()
        .merge(sse::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(guarded)
        .merge(health::routes())
        .merge(assets::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // The span names the path only: a query may carry `access_token`.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `state.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Requires the bearer token for writes (and for reads when configured).
/// `/api/events` may carry it as `?access_token=`, since browsers' EventSource
/// cannot set headers.
async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = &state.token else {
        return Ok(next.run(request).await);
    };
    let is_read = request.method() == axum::http::Method::GET;
    if is_read && !state.token_for_reads {
        return Ok(next.run(request).await);
    }
    let from_header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let from_query = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
    });
    let offered = from_header.or(if is_read { from_query } else { None });
    match offered {
        Some(offered) if constant_time_eq(offered.as_bytes(), token.expose().as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        )),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

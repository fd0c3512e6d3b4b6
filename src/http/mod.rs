//! The HTTP side: dashboard, JSON API, live event stream, health and
//! metrics, all read from the one task table (nothing here keeps task state).
//!
//! `app(state)` builds the router with its layers (tracing, timeouts,
//! compression, body limit, JSON errors, the request guard of `guard.rs`,
//! the bearer token of `auth.rs`); `serve` runs it until the process shuts
//! down. Submit and cancel go to the transport's task source (over MQTT,
//! to the group, so any worker of the group may take a task, exactly as for
//! MQTT clients; when polling, to this worker's table).

pub mod api;
pub mod assets;
pub mod auth;
pub mod error;
pub mod guard;
pub mod health;
pub mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::config::Secret;
use crate::intake::IntakePolicy;
use crate::table::TaskTable;
use crate::transport::TaskSource;

/// Time allowed to produce a response (not to stream one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The task table.
    pub table: TaskTable,
    /// Where submits and cancels go, and the link state.
    pub source: Arc<dyn TaskSource>,
    /// The same rules MQTT requests pass.
    pub policy: Arc<IntakePolicy>,
    /// Static facts about this worker.
    pub info: Arc<WorkerInfo>,
    /// Bearer token for writes (and reads when `token_for_reads`).
    pub token: Option<Secret>,
    /// Whether reads need the token too.
    pub token_for_reads: bool,
    /// Host names served besides IP literals and `localhost` (lower case).
    pub allowed_hosts: Arc<[String]>,
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
    /// Where tasks come from: the broker's `host:port`, or the polled
    /// controller's base URL.
    pub broker: String,
    /// The transport in use: `mqtt` or `http`.
    pub transport: &'static str,
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

/// The whole router: dashboard, API, events, health and metrics, behind
/// the request guard (every route) and the token (API and events).
pub fn app(state: AppState) -> Router {
    let api = api::routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let events = sse::routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token_or_query,
    ));
    let routes = Router::new()
        .merge(api)
        .merge(events)
        .merge(health::routes())
        .merge(assets::routes())
        .fallback(error::not_found)
        // After every route: it applies to the routes registered so far.
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard::check));
    // A task request is at most `worker.max_request_size`, over HTTP too.
    let body_limit = state.policy.max_request_size;
    layered(routes, REQUEST_TIMEOUT, body_limit).with_state(state)
}

/// The layers every answer passes, innermost first: body limit, timeout,
/// JSON errors (outside the two, so their refusals become JSON too; inside
/// compression, so it reads plain text), compression, tracing.
fn layered<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    timeout: Duration,
    body_limit: usize,
) -> Router<S> {
    routes
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::from_fn(error::json_errors))
        .layer(CompressionLayer::new())
        // The span names the path only: a query may carry `access_token`.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
        }))
}

/// Serves `app(state)` on `listener` until `state.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_past_the_timeout_gets_a_json_408() {
        // The handler never answers, so only the timeout can.
        let stuck = Router::new().route("/stuck", get(std::future::pending::<()>));
        let request = Request::builder()
            .uri("/stuck")
            .body(Body::empty())
            .unwrap();
        let response = layered(stuck, Duration::from_millis(10), 1024)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "the request was not answered in time");
    }

    #[tokio::test]
    async fn answers_are_gzipped_only_for_clients_that_ask() {
        let text = "a task status line\n".repeat(200);
        let big = Router::new().route("/big", get(move || std::future::ready(text.clone())));
        let app = layered(big, Duration::from_secs(5), 1024);
        for (accept, gzipped) in [(Some("gzip"), true), (None, false)] {
            let mut request = Request::builder().uri("/big");
            if let Some(accept) = accept {
                request = request.header("accept-encoding", accept);
            }
            let request = request.body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let encoding = response.headers().get("content-encoding").cloned();
            let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
            if gzipped {
                assert_eq!(encoding.unwrap(), "gzip");
                assert!(body.len() < 1000, "{} bytes", body.len());
            } else {
                assert_eq!(encoding, None);
                assert_eq!(body.len(), 19 * 200);
            }
        }
    }
}

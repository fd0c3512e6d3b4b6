//! `/healthz` (the process answers), `/readyz` (it can do its job) and
//! `/metrics` (Prometheus text). Never behind the token.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use crate::journal::JournalHealth;

/// The health routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when every readiness check passes, else 503; the body names each
/// check and its result, and why the journal fails (`journal_error`, e.g.
/// "database or disk is full").
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let journal = state.table.journal_health().borrow().clone();
    let mut checks = readiness(&state).await;
    checks.push(("journal", !journal.is_failing()));
    let ready = checks.iter().all(|(_, ok)| *ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let checks: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, ok)| (name.to_owned(), Value::Bool(ok)))
        .collect();
    let mut body = json!({ "ready": ready, "checks": checks });
    if let JournalHealth::Failing(reason) = journal {
        body["journal_error"] = Value::String(reason);
    }
    (status, Json(body))
}

/// Each named check `/readyz` makes, in the order it reports them: connected
/// to the broker, granted the tasks subscription (a broker ACL may refuse
/// it), the embedded broker (if any) accepts connections, and
/// `ansible-playbook` is there now (it may have been removed or renamed since
/// start).
async fn readiness(state: &AppState) -> Vec<(&'static str, bool)> {
    let link = *state.source.link().borrow();
    let (connected, subscribed) = state.source.readiness_names();
    let (embedded, ansible) = tokio::join!(
        embedded_broker_answers(state.info.embedded_broker),
        program_found(state.info.ansible_playbook.clone()),
    );
    vec![
        (connected, link.up),
        (subscribed, link.up && link.subscribed),
        ("embedded_broker", embedded),
        ("ansible_playbook", ansible),
    ]
}

/// True when there is no embedded broker or its MQTT 5 listener accepts a
/// connection.
async fn embedded_broker_answers(listen: Option<SocketAddr>) -> bool {
    let Some(addr) = listen else {
        return true;
    };
    let target = crate::broker::loopback_for(addr);
    tokio::task::spawn_blocking(move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Whether `program` resolves to an executable file now (file system
/// look-ups, so off the async workers).
async fn program_found(program: PathBuf) -> bool {
    tokio::task::spawn_blocking(move || crate::run::resolve_program(&program).is_some())
        .await
        .unwrap_or(false)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (queued, running) = state.table.load();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.table.metrics().render(queued, running),
    )
}

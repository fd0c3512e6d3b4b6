//! `/healthz` (the process answers), `/readyz` (it can do its job) and
//! `/metrics` (Prometheus text). Never behind the token.

use std::net::TcpStream;
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

/// 200 when connected and subscribed to the broker, the embedded broker (if
/// any) accepts connections, `ansible-playbook` was found, and the task
/// journal can be written; else 503. The body lists each check, and why the
/// journal fails (`journal_error`, e.g. "database or disk is full").
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let link = *state.link.borrow();
    let embedded = match state.info.embedded_broker {
        Some(addr) => {
            let target = crate::broker::loopback_for(addr);
            tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok()
            })
            .await
            .unwrap_or(false)
        }
        None => true,
    };
    let journal = state.table.journal_health().borrow().clone();
    let checks = json!({
        "mqtt_connected": link.up,
        "mqtt_subscribed": link.up && link.subscribed,
        "embedded_broker": embedded,
        "ansible_playbook": state.info.ansible_playbook.is_some(),
        "journal": !journal.is_failing(),
    });
    let ready = checks
        .as_object()
        .is_some_and(|all| all.values().all(|ok| ok == true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "ready": ready, "checks": checks });
    if let JournalHealth::Failing(reason) = journal {
        body["journal_error"] = Value::String(reason);
    }
    (status, Json(body))
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

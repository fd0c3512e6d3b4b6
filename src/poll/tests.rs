//! The status poster against a real HTTP server on 127.0.0.1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::poster::StatusPoster;
use crate::metrics::Metrics;
use crate::model::{TaskState, TaskStatus};
use crate::table::{TableSettings, TaskTable};
use crate::transport::StatusSink;

/// Every post the server saw: task, state, and the answer it gave.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, u16)>>>);

/// Answers `flaky`'s first two posts 503 (with `Retry-After: 0`), every
/// post of `bad` 400, and the rest 204.
async fn status(
    State(seen): State<Seen>,
    Path(task_id): Path<String>,
    body: String,
) -> (StatusCode, HeaderMap) {
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let state = doc["state"].as_str().unwrap().to_owned();
    let mut seen = seen.0.lock().unwrap();
    let earlier = seen.iter().filter(|(id, ..)| *id == task_id).count();
    let code = match task_id.as_str() {
        "flaky" if earlier < 2 => StatusCode::SERVICE_UNAVAILABLE,
        "bad" => StatusCode::BAD_REQUEST,
        _ => StatusCode::NO_CONTENT,
    };
    seen.push((task_id, state, code.as_u16()));
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", "0".parse().unwrap());
    (code, headers)
}

fn table() -> TaskTable {
    TaskTable::new(TableSettings {
        worker_id: "w".into(),
        max_queue_size: 10,
        history_limit: 10,
        playbook_directory: PathBuf::from("/p"),
        metrics: Arc::new(Metrics::default()),
        journal: None,
    })
}

fn client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_tasks_statuses_arrive_in_order_through_retries_and_refusals() {
    let seen = Seen::default();
    let app = Router::new()
        .route("/api/tasks/{id}/status", post(status))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let poster = Box::new(StatusPoster::new(client(), base_url, table()));
    let (changes, stream) = tokio::sync::mpsc::unbounded_channel();
    // `restored` first, then the stream, as at a restart.
    let restored = vec![TaskStatus::new("old", "w", TaskState::Success)];
    let delivered = tokio::spawn(poster.deliver(restored, stream));
    let states = [TaskState::Queued, TaskState::Running, TaskState::Success];
    for state in states {
        for task in ["a", "flaky", "bad", "b"] {
            changes
                .send(TaskStatus::new(task, "w", state).into())
                .unwrap();
        }
    }
    drop(changes);
    tokio::time::timeout(Duration::from_secs(20), delivered)
        .await
        .expect("everything was posted once the stream ended")
        .unwrap();

    let seen = seen.0.lock().unwrap().clone();
    let mut per_task: HashMap<&str, Vec<(&str, u16)>> = HashMap::new();
    for (task, state, code) in &seen {
        per_task
            .entry(task)
            .or_default()
            .push((state.as_str(), *code));
    }
    let in_order = [("queued", 204), ("running", 204), ("success", 204)];
    assert_eq!(per_task["a"], in_order);
    assert_eq!(per_task["b"], in_order);
    assert_eq!(per_task["old"], [("success", 204)]);
    // Retried until taken, and nothing of the task overtook the retries.
    assert_eq!(
        per_task["flaky"],
        [
            ("queued", 503),
            ("queued", 503),
            ("queued", 204),
            ("running", 204),
            ("success", 204)
        ]
    );
    // Refused for good: each status once, dropped, and the next follows.
    assert_eq!(
        per_task["bad"],
        [("queued", 400), ("running", 400), ("success", 400)]
    );
}

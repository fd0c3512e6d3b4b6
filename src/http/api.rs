//! The JSON API under `/api`: tasks (list, detail, log tail, submit,
//! cancel), rejected requests, worker facts and the playbook picker's lists.
//!
//! Submits are checked with the same intake rules as MQTT requests, then
//! handed to the transport's task source, as cancels are (over MQTT: the
//! group's task and cancel topics, so the worker that owns the task acts,
//! wherever it runs).

use std::path::Path;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::intake::{
    IntakePolicy, Refusal, inventory_path, parse_request, playbook_path, valid_task_id,
};
use crate::model::{Inventory, TaskState, TaskStatus};
use crate::table::view::{RejectedRequest, TaskPage};

/// Default and largest page size of `GET /api/tasks`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Files the playbook picker looks at, at most.
const MAX_LISTED_FILES: usize = 1000;

/// The `/api` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/worker", get(worker))
        .route("/api/playbooks", get(playbooks))
        .route("/api/tasks", get(list_tasks).post(submit))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/log", get(task_log))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/rejected", get(rejected))
}

async fn worker(State(state): State<AppState>) -> Json<Value> {
    let (queued, running) = state.table.load();
    let info = &state.info;
    Json(json!({
        "worker_id": info.worker_id,
        "group": info.group,
        "version": env!("CARGO_PKG_VERSION"),
        "broker": info.broker,
        "transport": info.transport,
        "connected": state.source.link().borrow().up,
        "concurrency": info.concurrency,
        "queued": queued,
        "running": running,
        "playbook_directory": info.playbook_directory.display().to_string(),
    }))
}

/// Query of `GET /api/tasks`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<u64>,
}

async fn list_tasks(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let wanted = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(parse_state(name)?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(state.table.list(wanted, limit, query.cursor)))
}

fn parse_state(name: &str) -> Result<TaskState, ApiError> {
    serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "state must be one of queued, running, success, failed, cancelled, timeout",
        )
    })
}

async fn task(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<TaskStatus>, ApiError> {
    state
        .table
        .status(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

async fn task_log(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let lines = state.table.log(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({ "task_id": id, "lines": lines })))
}

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no task {shown:?} on this worker"),
    )
}

async fn submit(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut request) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    // Not taking requests while it cannot record them (`/readyz` says why).
    if state.table.journal_health().borrow().is_failing() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this worker cannot record tasks right now (its journal cannot be written); \
             try again shortly",
        ));
    }
    let Some(fields) = request.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request must be a JSON object",
        ));
    };
    if !fields.contains_key("task_id") {
        fields.insert("task_id".into(), Value::String(generated_id()));
    }
    let payload = serde_json::to_vec(&request).expect("a JSON value serializes");
    let spec = parse_request(&payload, &state.policy).map_err(|refusal| match refusal {
        Refusal::Unaddressable { reason } | Refusal::Invalid { reason, .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, reason)
        }
    })?;
    let mut body = state
        .source
        .submit(payload, &spec.task_id)
        .await
        .map_err(refused)?;
    body.insert("task_id".into(), Value::String(spec.task_id.clone()));
    Ok(accepted(&spec.task_id, Value::Object(body)))
}

/// 202 with `Location: /api/tasks/<id>`, where the task can be followed. A
/// valid task id needs no escaping in a header or a path.
fn accepted(task_id: &str, body: Value) -> Response {
    let location = format!("/api/tasks/{task_id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

/// `http-<time>-<random>`: unique enough, and a valid task id.
fn generated_id() -> String {
    format!(
        "http-{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        fastrand::u32(..0x100_0000)
    )
}

/// Optional body of a cancel.
#[derive(Debug, Default, Deserialize)]
struct CancelBody {
    reason: Option<String>,
}

/// `POST /api/tasks/{id}/cancel`: the body (JSON, as the request guard
/// demands) may be empty, which means `{}`.
async fn cancel(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !valid_task_id(&id) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid task id"));
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        Json::<CancelBody>::from_bytes(&body)
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?
            .0
    };
    let payload = match body.reason {
        Some(reason) => json!({ "reason": reason }),
        None => json!({}),
    };
    state
        .source
        .cancel(&id, payload.to_string().into_bytes())
        .await
        .map_err(refused)?;
    Ok(accepted(&id, json!({ "task_id": id })))
}

fn refused(why: crate::transport::Refused) -> ApiError {
    use crate::transport::Refused;
    match why {
        Refused::Unavailable(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason),
        Refused::Invalid(reason) => ApiError::new(StatusCode::BAD_REQUEST, reason),
    }
}

async fn rejected(State(state): State<AppState>) -> Json<Vec<RejectedRequest>> {
    Json(state.table.rejected())
}

async fn playbooks(State(state): State<AppState>) -> Json<Value> {
    let policy = state.policy.clone();
    let (playbooks, inventories) = tokio::task::spawn_blocking(move || list_yaml(&policy))
        .await
        .unwrap_or_default();
    Json(json!({ "playbooks": playbooks, "inventories": inventories }))
}

/// Playbooks (YAML whose first statement is a list item) and inventory files
/// (other YAML, `.ini`, or files named like an inventory) under the policy's
/// playbook directory that a request may name: each one passes intake's own
/// path rules, so hidden files, symlinks that leave the directory or reach a
/// hidden file, and executable inventories are never offered.
fn list_yaml(policy: &IntakePolicy) -> (Vec<String>, Vec<String>) {
    let root = &policy.playbook_directory;
    let mut playbooks = Vec::new();
    let mut inventories = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_LISTED_FILES {
                break;
            }
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let Some(relative) = path.strip_prefix(root).ok().and_then(Path::to_str) else {
                continue;
            };
            let yaml = name.ends_with(".yml") || name.ends_with(".yaml");
            if yaml && playbook_path(relative, policy).is_ok_and(|file| is_playbook(&file)) {
                playbooks.push(relative.to_owned());
            } else if (yaml || name.ends_with(".ini") || name.starts_with("hosts"))
                && matches!(inventory_path(relative, policy), Ok(Inventory::File(_)))
            {
                inventories.push(relative.to_owned());
            }
        }
    }
    playbooks.sort();
    inventories.sort();
    (playbooks, inventories)
}

fn is_playbook(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines()
        .map(str::trim_start)
        .find(|line| !line.is_empty() && !line.starts_with('#') && *line != "---")
        .is_some_and(|line| line.starts_with("- "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_playbooks_and_inventories_are_told_apart() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/playbooks");
        let (playbooks, inventories) = list_yaml(&IntakePolicy::new(&root, false).unwrap());
        assert!(playbooks.contains(&"hello.yml".to_owned()), "{playbooks:?}");
        assert!(!playbooks.contains(&"inventory.yml".to_owned()));
        assert_eq!(inventories, ["inventory.yml"]);
    }

    #[test]
    fn generated_ids_are_valid_task_ids() {
        assert!(valid_task_id(&generated_id()));
    }

    #[test]
    fn state_names_parse() {
        assert_eq!(parse_state("running").unwrap(), TaskState::Running);
        assert!(parse_state("bogus").is_err());
    }
}

//! A controller for workers with `transport = "http"`: an axum app on
//! 127.0.0.1 that answers `GET <base>/tasks` from a script of answers
//! ([`Answer`]; 204 once the script is done), records every request it gets
//! (method, path, headers, body, time), and keeps each task's status posts in
//! arrival order; it can be told to answer the next status posts with an
//! error. Every status posted must pass the status schema. Also the config
//! of a polling worker ([`PollSetup`]). Waiting helpers take a deadline.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch;

use super::{TlsListener, Worker, ansible_playbook, is_final, playbooks_dir, schema_errors};

/// The path under which the controller serves (`base_url` ends with it), so
/// that the worker's joining of paths is tested too.
pub const CONTROLLER_BASE: &str = "/api/v1";

/// One scripted answer to `GET <base>/tasks`.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON document (an object, an array, anything).
    Json(Value),
    /// 200 with these bytes, declared JSON.
    Body(Vec<u8>),
    /// 204.
    NoContent,
    /// Any status, with these headers and body.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Waits this long, then answers.
    Slow(Duration, Box<Answer>),
}

impl Answer {
    /// 503 with `Retry-After: <retry_after>`.
    pub fn unavailable(retry_after: &str) -> Answer {
        Answer::Status {
            code: 503,
            headers: vec![("retry-after".into(), retry_after.into())],
            body: String::new(),
        }
    }
}

/// One request the controller got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True for a poll (`GET <base>/tasks`).
    pub fn is_poll(&self) -> bool {
        self.method == "GET" && self.path == format!("{CONTROLLER_BASE}/tasks")
    }
}

/// What the controller saw so far.
#[derive(Default)]
pub struct Seen {
    script: VecDeque<Answer>,
    pub requests: Vec<Recorded>,
    /// Each task's status documents, in arrival order, with the answer
    /// each got.
    pub statuses: HashMap<String, Vec<(Value, u16)>>,
    /// Answers for the next status posts (then 204).
    post_answers: VecDeque<u16>,
    /// Status posts that broke the schema, explained.
    pub invalid: Vec<String>,
}

impl Seen {
    /// The polls, in order.
    pub fn polls(&self) -> Vec<&Recorded> {
        self.requests.iter().filter(|r| r.is_poll()).collect()
    }

    /// The states of `task_id`'s statuses the controller took (2xx), in
    /// arrival order.
    pub fn states(&self, task_id: &str) -> Vec<String> {
        self.statuses
            .get(task_id)
            .map(|docs| {
                docs.iter()
                    .filter(|(_, code)| *code < 300)
                    .map(|(doc, _)| doc["state"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [`Seen::states`] with repeats in a row left out (progress updates of
    /// a running task, a status posted again for a duplicate request).
    pub fn state_changes(&self, task_id: &str) -> Vec<String> {
        let mut states = self.states(task_id);
        states.dedup();
        states
    }

    /// The last status of `task_id` the controller took, if final.
    pub fn final_status(&self, task_id: &str) -> Option<Value> {
        let docs = self.statuses.get(task_id)?;
        let (doc, _) = docs.iter().rev().find(|(_, code)| *code < 300)?;
        is_final(doc).then(|| doc.clone())
    }
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Seen>>,
    /// Bumped on every request.
    changes: watch::Sender<u64>,
}

/// The controller, serving until dropped.
pub struct PollController {
    /// What a worker's `poll.base_url` is.
    pub base_url: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl PollController {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Serves on `port` of 127.0.0.1 (0: a free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        Self::serve(listener, format!("http://{addr}{CONTROLLER_BASE}"))
    }

    /// Serves https with the certificates `make_certificates` wrote to
    /// `dir`; with `client_ca`, only to clients with a certificate of it.
    pub async fn start_tls(dir: &Path, client_ca: Option<&Path>) -> Self {
        let listener = TlsListener::bind(dir, 0, client_ca).await;
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        Self::serve(listener, format!("https://{addr}{CONTROLLER_BASE}"))
    }

    fn serve<L>(listener: L, base_url: String) -> Self
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let shared = Shared {
            seen: Arc::default(),
            changes: watch::channel(0).0,
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        PollController {
            base_url,
            shared,
            server,
        }
    }

    /// Queues answers for the next polls.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Answers the next status posts with `codes`, one each (then 204).
    pub fn fail_posts(&self, codes: &[u16]) {
        self.lock().post_answers.extend(codes);
    }

    /// Reads what the controller saw.
    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `condition` holds of what was seen; false at the
    /// deadline.
    pub async fn wait(&self, timeout: Duration, mut condition: impl FnMut(&Seen) -> bool) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        loop {
            if condition(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(end, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Waits for `task_id`'s final status (taken by the controller) and
    /// returns it; panics with what was seen at the deadline.
    pub async fn wait_final(&self, task_id: &str, timeout: Duration) -> Value {
        let done = self
            .wait(timeout, |seen| seen.final_status(task_id).is_some())
            .await;
        let seen = self.lock();
        assert!(
            done,
            "no final status of {task_id}; states seen: {:?}",
            seen.states(task_id)
        );
        assert!(seen.invalid.is_empty(), "{}", seen.invalid.join("\n"));
        seen.final_status(task_id).unwrap()
    }

    /// Waits until `task_id` posted a status in `state`.
    pub async fn wait_state(&self, task_id: &str, state: &str, timeout: Duration) {
        let reached = self
            .wait(timeout, |seen| {
                seen.states(task_id).iter().any(|s| s == state)
            })
            .await;
        assert!(
            reached,
            "{task_id} never posted {state}: {:?}",
            self.seen(|s| s.states(task_id))
        );
    }

    /// Waits until the controller has been polled `count` times in all.
    pub async fn wait_polls(&self, count: usize, timeout: Duration) {
        let polled = self.wait(timeout, |seen| seen.polls().len() >= count).await;
        assert!(
            polled,
            "polled {} times, not {count}",
            self.seen(|s| s.polls().len())
        );
    }
}

impl Drop for PollController {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    let answer = {
        let mut seen = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        let answer = route(&mut seen, &recorded);
        seen.requests.push(recorded);
        answer
    };
    shared.changes.send_modify(|n| *n += 1);
    respond(answer).await
}

/// What to answer `request`; status posts are recorded here.
fn route(seen: &mut Seen, request: &Recorded) -> Answer {
    if request.is_poll() {
        return seen.script.pop_front().unwrap_or(Answer::NoContent);
    }
    let status_of = request
        .path
        .strip_prefix(&format!("{CONTROLLER_BASE}/tasks/"))
        .and_then(|rest| rest.strip_suffix("/status"));
    let (Some(task_id), "POST") = (status_of, request.method.as_str()) else {
        return Answer::Status {
            code: 404,
            headers: Vec::new(),
            body: String::new(),
        };
    };
    let doc: Value = match serde_json::from_slice(&request.body) {
        Ok(doc) => doc,
        Err(e) => {
            seen.invalid
                .push(format!("status post of {task_id} is not JSON: {e}"));
            return Answer::Status {
                code: 400,
                headers: Vec::new(),
                body: String::new(),
            };
        }
    };
    let errors = schema_errors(&super::STATUS_SCHEMA, &doc);
    if !errors.is_empty() || doc["task_id"] != task_id {
        seen.invalid
            .push(format!("status post of {task_id}: {errors:?} {doc}"));
    }
    let code = seen.post_answers.pop_front().unwrap_or(204);
    seen.statuses
        .entry(task_id.to_owned())
        .or_default()
        .push((doc, code));
    Answer::Status {
        code,
        headers: Vec::new(),
        body: String::new(),
    }
}

fn respond(answer: Answer) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>> {
    Box::pin(async move {
        match answer {
            Answer::Json(doc) => axum::Json(doc).into_response(),
            Answer::Body(bytes) => ([("content-type", "application/json")], bytes).into_response(),
            Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
            Answer::Status {
                code,
                headers,
                body,
            } => {
                let mut response = (StatusCode::from_u16(code).unwrap(), body).into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(
                        axum::http::HeaderName::try_from(name).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                response
            }
            Answer::Slow(delay, then) => {
                tokio::time::sleep(delay).await;
                respond(*then).await
            }
        }
    })
}

/// A worker with `transport = "http"` polling a [`PollController`].
pub struct PollSetup {
    pub group: String,
    pub worker_id: String,
    pub concurrency: usize,
    pub max_queue_size: usize,
    /// `poll.timeout` and `poll.connect_timeout`, seconds.
    pub timeout: u64,
    pub connect_timeout: u64,
    /// Extra `[poll]` lines (auth, timeouts).
    pub extra_poll: String,
    /// Extra `[worker]` lines.
    pub extra_worker: String,
    /// Serve the worker's own HTTP API on 127.0.0.1 and this port.
    pub http_port: Option<u16>,
}

impl PollSetup {
    /// Defaults: group `pollers`, 2 runs, polls every second, 5 s time-out.
    pub fn new() -> Self {
        PollSetup {
            group: "pollers".into(),
            worker_id: "poller-1".into(),
            concurrency: 2,
            max_queue_size: 10,
            timeout: 5,
            connect_timeout: 2,
            extra_poll: String::new(),
            extra_worker: String::new(),
            http_port: None,
        }
    }

    /// The config file for the worker's temp dir `dir`, polling `base_url`.
    pub fn config(&self, dir: &Path, base_url: &str) -> String {
        let http = self
            .http_port
            .map(|port| format!("[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        format!(
            r#"log_level = "debug"
transport = "http"

[worker]
group_name = "{group}"
worker_id = "{worker_id}"
playbook_directory = "{playbooks}"
concurrency = {concurrency}
max_queue_size = {max_queue}
task_timeout = 600
kill_grace = 2
ansible_playbook_path = "{ansible}"
state_dir = "{state}"
{extra_worker}

[poll]
base_url = "{base_url}"
interval = 1
timeout = {timeout}
connect_timeout = {connect_timeout}
{extra_poll}

{http}"#,
            group = self.group,
            worker_id = self.worker_id,
            playbooks = playbooks_dir().display(),
            concurrency = self.concurrency,
            max_queue = self.max_queue_size,
            ansible = ansible_playbook().display(),
            state = dir.join("state").display(),
            extra_worker = self.extra_worker,
            timeout = self.timeout,
            connect_timeout = self.connect_timeout,
            extra_poll = self.extra_poll,
        )
    }

    /// Starts the worker binary polling `base_url` (it retries until the
    /// controller answers).
    pub fn start(&self, base_url: &str) -> Worker {
        Worker::with_config(|dir| self.config(dir, base_url))
    }
}

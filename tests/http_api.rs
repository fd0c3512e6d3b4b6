//! The HTTP side of the appliance, black-box: the binary with the example
//! config (embedded broker, `[http]` on a free port), driven by a plain HTTP
//! client. Health and readiness, the task API (list, filter, cursor, detail,
//! log, submit, cancel), the bearer token, the live event stream and the
//! Prometheus metrics.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Ports of one appliance.
struct Ports {
    v5: u16,
    v4: u16,
    http: u16,
}

impl Ports {
    fn free() -> Self {
        Ports {
            v5: free_port(),
            v4: free_port(),
            http: free_port(),
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur in it (so a changed
/// example config fails loudly instead of silently testing something else).
fn replace_present(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the config");
    text.replace(from, to)
}

/// `config.example.toml` with free ports, absolute paths and the test venv:
/// everything else is the shipped default (HTTP is enabled there).
fn example_config(dir: &Path, ports: &Ports) -> String {
    let example = std::fs::read_to_string(project_dir().join("config.example.toml")).unwrap();
    let playbooks = project_dir().join("examples/playbooks");
    let mut config = example
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", ports.v5))
        .replace("127.0.0.1:1882", &format!("127.0.0.1:{}", ports.v4));
    config = replace_present(
        &config,
        "127.0.0.1:8080",
        &format!("127.0.0.1:{}", ports.http),
    );
    config = replace_present(
        &config,
        "playbook_directory = \"examples/playbooks\"",
        &format!("playbook_directory = \"{}\"", playbooks.display()),
    );
    config = replace_present(
        &config,
        "state_dir = \"var\"",
        &format!("state_dir = \"{}\"", dir.join("state").display()),
    );
    replace_present(
        &config,
        "ansible_playbook_path = \"ansible-playbook\"",
        &format!(
            "ansible_playbook_path = \"{}\"",
            ansible_playbook().display()
        ),
    )
}

/// The example config with the bearer token taken from `$ANSIBLE_WORKER_TOKEN`.
fn with_token(config: &str, for_reads: bool) -> String {
    let config = replace_present(
        config,
        "# token = \"${ANSIBLE_WORKER_TOKEN}\"",
        "token = \"${ANSIBLE_WORKER_TOKEN}\"",
    );
    replace_present(
        &config,
        "token_for_reads = false",
        &format!("token_for_reads = {for_reads}"),
    )
}

/// Starts the appliance with `config` (written for the worker's own temp
/// dir) and waits until it subscribed and its HTTP server answers.
fn start_appliance(
    env: &[(&str, &str)],
    config: impl FnOnce(&Path, &Ports) -> String,
) -> (Worker, Ports, Http) {
    let ports = Ports::free();
    let worker = Worker::with_config_and_env(env, |dir| config(dir, &ports));
    worker.wait_log("subscribed", Duration::from_secs(20));
    let http = Http::new(ports.http);
    http.wait_up(&worker);
    (worker, ports, http)
}

/// One HTTP response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// Asserts an API error: `status`, a JSON content type, and an `error`
    /// string; returns that string.
    #[track_caller]
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let body = self.json();
        let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(!message.is_empty());
        message.to_owned()
    }
}

/// A blocking HTTP client for one appliance on 127.0.0.1.
struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(port: u16) -> Self {
        // A fresh connection per request: the server may close a kept-alive
        // connection after refusing a request whose body it did not read,
        // and a pooled client would then see the next POST fail.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Http {
            agent,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until `/healthz` answers.
    fn wait_up(&self, worker: &Worker) {
        assert!(
            wait_until(Duration::from_secs(20), || self
                .try_get("/healthz", None)
                .is_some()),
            "the HTTP server never answered:\n{}",
            worker.log()
        );
    }

    fn try_get(&self, path: &str, token: Option<&str>) -> Option<Reply> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        read_reply(request.call().ok()?)
    }

    fn get(&self, path: &str) -> Reply {
        self.get_as(path, None)
    }

    fn get_as(&self, path: &str, token: Option<&str>) -> Reply {
        self.try_get(path, token)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    /// POSTs `body` as JSON.
    fn post(&self, path: &str, body: &str) -> Reply {
        self.post_as(path, body, None)
    }

    /// POSTs `body` as JSON with `Authorization: <authorization>`.
    fn post_as(&self, path: &str, body: &str, authorization: Option<&str>) -> Reply {
        self.post_typed(path, "application/json", body, authorization)
    }

    fn post_typed(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Reply {
        let mut request = self
            .agent
            .post(self.url(path))
            .header("Content-Type", content_type);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        read_reply(response).unwrap_or_else(|| panic!("POST {path}: unreadable body"))
    }

    /// POSTs nothing at all (no body, no content type), as `curl -X POST`.
    fn post_empty(&self, path: &str) -> Reply {
        let response = self
            .agent
            .post(self.url(path))
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        read_reply(response).unwrap_or_else(|| panic!("POST {path}: unreadable body"))
    }

    /// The current status of `id` (`GET /api/tasks/{id}`), if the worker
    /// holds it.
    fn task(&self, id: &str) -> Option<Value> {
        let reply = self.get(&format!("/api/tasks/{id}"));
        (reply.status == 200).then(|| reply.json())
    }

    /// Waits until `id` is in a final state and returns its detail.
    fn wait_final(&self, id: &str) -> Value {
        let mut last = None;
        let done = wait_until(DEADLINE, || {
            last = self.task(id);
            last.as_ref().is_some_and(is_final)
        });
        assert!(done, "{id} never finished; last seen {last:?}");
        last.unwrap()
    }

    /// Waits until `id` reaches `state` (not final) and returns its detail.
    fn wait_state(&self, id: &str, state: &str) -> Value {
        let mut last = None;
        let reached = wait_until(DEADLINE, || {
            last = self.task(id);
            last.as_ref().is_some_and(|t| t["state"] == state)
        });
        assert!(reached, "{id} never reached {state}; last seen {last:?}");
        last.unwrap()
    }

    /// Submits `request` and asserts 202; returns the accepted task id.
    #[track_caller]
    fn submit(&self, request: &Value) -> String {
        let reply = self.post("/api/tasks", &request.to_string());
        assert_eq!(reply.status, 202, "{}", reply.body);
        reply.json()["task_id"].as_str().unwrap().to_owned()
    }

    /// The parsed `/metrics` exposition.
    fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.content_type.starts_with("text/plain"),
            "{}",
            reply.content_type
        );
        Metrics::parse(&reply.body)
    }

    /// Opens `/api/events<query>` and returns the stream once the response
    /// headers arrived, or the status of a refusal.
    fn events(&self, query: &str, headers: &[(&str, &str)]) -> Result<EventStream, Reply> {
        // No timeouts: the stream stays open until the worker goes away.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut request = agent.get(self.url(&format!("/api/events{query}")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.call().expect("GET /api/events");
        if response.status() != 200 {
            return Err(read_reply(response).unwrap());
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let content_encoding = header("content-encoding");
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || read_sse(reader, tx));
        Ok(EventStream {
            rx,
            content_type,
            content_encoding,
        })
    }
}

fn read_reply(response: ureq::http::Response<ureq::Body>) -> Option<Reply> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().read_to_string().ok()?;
    Some(Reply {
        status,
        content_type,
        body,
    })
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    data: Value,
}

/// Parses `text/event-stream` frames (comments and keep-alives skipped) and
/// sends each event until the connection ends or the receiver is gone.
fn read_sse(reader: impl BufRead, tx: mpsc::Sender<SseEvent>) {
    let mut event = String::new();
    let mut data: Vec<String> = Vec::new();
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.is_empty() {
            if !data.is_empty() {
                let parsed = SseEvent {
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&data.join("\n"))
                        .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}")),
                };
                data.clear();
                if tx.send(parsed).is_err() {
                    return;
                }
            }
            event.clear();
        } else if let Some(name) = line.strip_prefix("event:") {
            event = name.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
    }
}

/// An open `/api/events` stream, read by a background thread.
struct EventStream {
    rx: mpsc::Receiver<SseEvent>,
    content_type: String,
    content_encoding: Option<String>,
}

impl EventStream {
    /// The next event, or None if none arrives before `deadline`.
    fn next_before(&self, deadline: Instant) -> Option<SseEvent> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(left).ok()
    }

    /// Events until (and including) the first one that `last` accepts;
    /// panics at the deadline with what arrived so far.
    fn until(&self, timeout: Duration, mut last: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let Some(event) = self.next_before(deadline) else {
                panic!("the awaited event never came; saw {seen:#?}");
            };
            let done = last(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

/// One sample of the exposition: `name{labels}`.
type Series = String;

/// A strictly checked Prometheus text exposition (format 0.0.4).
struct Metrics {
    samples: BTreeMap<Series, f64>,
}

impl Metrics {
    /// Parses `text`, asserting the grammar: every sample line is
    /// `name{label="value",...} value`, the value a float, and every metric
    /// family has exactly one HELP and one TYPE line before its samples.
    fn parse(text: &str) -> Self {
        let mut help: HashSet<String> = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), Some(_)) => {
                        assert!(valid_metric_name(name), "{line}");
                        assert!(help.insert(name.to_owned()), "second HELP: {line}");
                    }
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(valid_metric_name(name), "{line}");
                        assert!(
                            matches!(
                                kind,
                                "counter" | "gauge" | "histogram" | "summary" | "untyped"
                            ),
                            "{line}"
                        );
                        let earlier = types.insert(name.to_owned(), kind.to_owned());
                        assert!(earlier.is_none(), "second TYPE: {line}");
                    }
                    _ => {}
                }
                continue;
            }
            let (series, value) = parse_sample(line);
            let name = series.split('{').next().unwrap();
            let family = family_of(name, &types)
                .unwrap_or_else(|| panic!("sample before its TYPE line: {line}"));
            assert!(help.contains(&family), "no HELP for {family}");
            if types[&family] == "counter" {
                assert!(value >= 0.0, "negative counter: {line}");
            }
            let earlier = samples.insert(series.clone(), value);
            assert!(earlier.is_none(), "series repeated: {series}");
        }
        for family in &help {
            assert!(types.contains_key(family), "HELP without TYPE: {family}");
        }
        Metrics { samples }
    }

    /// The value of `series` (`name` or `name{labels}` exactly as rendered).
    #[track_caller]
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing in {:#?}", self.samples))
    }

    /// Asserts that histogram `name`'s buckets are cumulative and end with
    /// `le="+Inf"` equal to `_count`.
    fn check_histogram(&self, name: &str) {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(series, value)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                Some((bound, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name} has no buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets are not cumulative: {buckets:?}"
        );
        let (last_bound, last_count) = *buckets.last().unwrap();
        assert_eq!(last_bound, f64::INFINITY, "{name} lacks le=\"+Inf\"");
        assert_eq!(last_count, self.value(&format!("{name}_count")));
        assert!(self.value(&format!("{name}_sum")) >= 0.0);
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The metric family a sample name belongs to, given the TYPE lines so far.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        {
            return Some(base.to_owned());
        }
    }
    None
}

/// Splits a sample line into its series (name and labels, normalised as
/// written) and its value, asserting the grammar.
fn parse_sample(line: &str) -> (Series, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "bad metric name: {line}");
    let rest = &line[name_end..];
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let close = label_block_end(inner).unwrap_or_else(|| panic!("unclosed {{: {line}"));
            (&inner[..close], &inner[close + 1..])
        }
        None => ("", rest),
    };
    if !labels.is_empty() {
        check_labels(labels, line);
    }
    let fields: Vec<&str> = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"))
        .split(' ')
        .collect();
    assert!(
        matches!(fields.len(), 1 | 2),
        "value and optional timestamp expected: {line}"
    );
    let value = match fields[0] {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    if let Some(timestamp) = fields.get(1) {
        assert!(timestamp.parse::<i64>().is_ok(), "bad timestamp: {line}");
    }
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    (series, value)
}

/// Index of the `}` closing a label block (quotes and escapes respected).
fn label_block_end(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Asserts `a="x",b="y"` (an optional trailing comma allowed).
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label: {line}"));
        assert!(valid_label_name(name), "bad label name {name:?}: {line}");
        let mut escaped = false;
        let close = after
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unterminated label value: {line}"));
        rest = &after[close + 1..];
        if !rest.is_empty() {
            rest = rest
                .strip_prefix(',')
                .unwrap_or_else(|| panic!("bad label separator: {line}"));
        }
    }
}

fn hello(id: &str) -> Value {
    json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"})
}

fn failing(id: &str) -> Value {
    json!({"task_id": id, "playbook": "fail.yml", "inventory": "inventory.yml"})
}

/// The ids of a task listing, in order.
fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn readiness_lists_each_check_and_follows_the_broker_connection() {
    // A worker whose broker is down: alive, not ready, and says why.
    let mut mosquitto = Mosquitto::start();
    mosquitto.stop();
    let ports = Ports::free();
    let worker = Worker::with_config(|dir| {
        let config = replace_present(
            &example_config(dir, &ports),
            "# Start it in this process. Default: false.\nenabled = true",
            "enabled = false",
        );
        let config = replace_present(
            &config,
            "# host = \"broker.example.com\"",
            "host = \"127.0.0.1\"",
        );
        replace_present(
            &config,
            "# port = 1883",
            &format!("port = {}", mosquitto.port),
        )
    });
    let http = Http::new(ports.http);
    http.wait_up(&worker);
    let healthz = http.get("/healthz");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    assert_eq!(healthz.json()["status"], "ok");

    let readyz = http.get("/readyz");
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert!(readyz.content_type.starts_with("application/json"));
    let body = readyz.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["mqtt_connected"], false, "{body}");
    assert_eq!(body["checks"]["mqtt_subscribed"], false, "{body}");
    assert_eq!(body["checks"]["ansible_playbook"], true, "{body}");
    assert_eq!(body["checks"]["embedded_broker"], true, "{body}");
    // A valid submit cannot be forwarded while the broker is away.
    let refused = http.post("/api/tasks", &hello("while-down").to_string());
    assert!(refused.error(503).contains("broker"));
    assert_eq!(http.get("/api/worker").json()["connected"], false);

    mosquitto.restart();
    let mut last = None;
    let ready = wait_until(DEADLINE, || {
        let reply = http.get("/readyz");
        let ok = reply.status == 200;
        last = Some(reply);
        ok
    });
    assert!(ready, "never ready after the broker came: {last:?}");
    let body = last.unwrap().json();
    assert_eq!(body["ready"], true, "{body}");
    for check in [
        "mqtt_connected",
        "mqtt_subscribed",
        "embedded_broker",
        "ansible_playbook",
    ] {
        assert_eq!(body["checks"][check], true, "{check}: {body}");
    }
    assert_eq!(http.get("/api/worker").json()["connected"], true);

    // A worker without ansible-playbook connects but is not ready.
    let (_lonely, _ports, http) = start_appliance(&[], |dir, ports| {
        replace_present(
            &example_config(dir, ports),
            &ansible_playbook().display().to_string(),
            "/nonexistent/bin/ansible-playbook",
        )
    });
    assert_eq!(http.get("/healthz").status, 200);
    let readyz = http.get("/readyz");
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    let body = readyz.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["ansible_playbook"], false, "{body}");
    assert_eq!(body["checks"]["mqtt_connected"], true, "{body}");
    assert_eq!(body["checks"]["mqtt_subscribed"], true, "{body}");
    assert_eq!(body["checks"]["embedded_broker"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_pages_newest_first_filters_and_details_match_the_status_document() {
    let (worker, ports, http) = start_appliance(&[], example_config);
    let observer = Observer::start(ports.v5, "lab").await;
    let info = http.get("/api/worker").json();
    assert_eq!(info["worker_id"], "lab-1", "{info}");
    assert_eq!(info["group"], "lab", "{info}");
    assert_eq!(info["connected"], true, "{info}");
    let listed = http.get("/api/playbooks").json();
    assert!(
        listed["playbooks"]
            .as_array()
            .unwrap()
            .contains(&json!("hello.yml")),
        "{listed}"
    );
    assert_eq!(listed["inventories"], json!(["inventory.yml"]));

    // Oldest first; each one is held before the next is sent, so the order
    // of arrival is the order of submission.
    let submitted = [
        hello("list-1"),
        failing("list-2"),
        hello("list-3"),
        hello("list-4"),
    ];
    for request in &submitted {
        let id = http.submit(request);
        assert!(
            wait_until(DEADLINE, || http.task(&id).is_some()),
            "{id} never appeared:\n{}",
            worker.log()
        );
    }
    for id in ["list-1", "list-2", "list-3", "list-4"] {
        http.wait_final(id);
    }

    // Pages of two, newest first, following the cursor to the end.
    let first = http.get("/api/tasks?limit=2").json();
    assert_eq!(ids(&first), ["list-4", "list-3"], "{first}");
    let cursor = first["next_cursor"].as_u64().expect("a next_cursor");
    let second = http
        .get(&format!("/api/tasks?limit=2&cursor={cursor}"))
        .json();
    assert_eq!(ids(&second), ["list-2", "list-1"], "{second}");
    if let Some(cursor) = second["next_cursor"].as_u64() {
        let third = http
            .get(&format!("/api/tasks?limit=2&cursor={cursor}"))
            .json();
        assert_eq!(ids(&third), Vec::<String>::new(), "{third}");
        assert!(third["next_cursor"].is_null(), "{third}");
    }
    let whole = http.get("/api/tasks").json();
    assert_eq!(
        ids(&whole),
        ["list-4", "list-3", "list-2", "list-1"],
        "{whole}"
    );
    assert!(whole["next_cursor"].is_null(), "{whole}");
    let three = http.get("/api/tasks?limit=3").json();
    let cursor = three["next_cursor"].as_u64().expect("a next_cursor");
    let rest = http
        .get(&format!("/api/tasks?limit=3&cursor={cursor}"))
        .json();
    assert_eq!(ids(&three), ["list-4", "list-3", "list-2"]);
    assert_eq!(ids(&rest), ["list-1"]);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    // Listed tasks carry what was asked for.
    assert_eq!(whole["tasks"][0]["request"]["playbook"], "hello.yml");
    assert_eq!(whole["tasks"][0]["request"]["inventory"], "inventory.yml");
    assert_eq!(whole["tasks"][2]["request"]["playbook"], "fail.yml");

    // Filters.
    let failed = http.get("/api/tasks?state=failed").json();
    assert_eq!(ids(&failed), ["list-2"], "{failed}");
    let succeeded = http.get("/api/tasks?state=success&limit=2").json();
    assert_eq!(ids(&succeeded), ["list-4", "list-3"], "{succeeded}");
    let cursor = succeeded["next_cursor"].as_u64().expect("a next_cursor");
    let older = http
        .get(&format!("/api/tasks?state=success&limit=2&cursor={cursor}"))
        .json();
    assert_eq!(ids(&older), ["list-1"], "{older}");
    assert!(ids(&http.get("/api/tasks?state=running").json()).is_empty());
    let bad = http.get("/api/tasks?state=finished").error(400);
    assert!(bad.contains("state"), "{bad}");

    // The detail is the status document that was published.
    for id in ["list-1", "list-2"] {
        let published = observer.wait_final(id, DEADLINE).await;
        let detail = http.task(id).unwrap();
        assert_eq!(detail, published, "{id}");
    }
    let ok = http.task("list-1").unwrap();
    assert_eq!(ok["state"], "success");
    assert_eq!(ok["return_code"], 0);
    assert_eq!(ok["tasks_ok"], 2, "{ok}");
    assert_eq!(ok["output"]["greeting"], "Hello from localhost", "{ok}");
    let broken = http.task("list-2").unwrap();
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["tasks_failed"], 1, "{broken}");
    assert!(
        broken["error_message"]
            .as_str()
            .unwrap()
            .contains("precondition not met"),
        "{broken}"
    );
    let missing = http.get("/api/tasks/no-such-task").error(404);
    assert!(missing.contains("no-such-task"), "{missing}");

    // The log tail ends with Ansible's recap.
    let log = http.get("/api/tasks/list-1/log").json();
    assert_eq!(log["task_id"], "list-1");
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(lines.iter().any(|l| l.contains("PLAY RECAP")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("localhost") && l.contains("ok=2")),
        "{lines:#?}"
    );
    http.get("/api/tasks/no-such-task/log").error(404);
}

#[test]
fn submit_checks_requests_like_mqtt_and_runs_the_accepted_ones() {
    let (worker, _ports, http) = start_appliance(&[], example_config);

    // Refused before anything is published: nothing runs, nothing is listed.
    let refusals: [(&str, String, &str); 9] = [
        (
            "no-playbook",
            json!({"task_id": "no-playbook", "inventory": "inventory.yml"}).to_string(),
            "playbook",
        ),
        (
            "absent-playbook",
            json!({"task_id": "absent-playbook", "playbook": "nope.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "Playbook not found",
        ),
        (
            "escaping",
            json!({"task_id": "escaping", "playbook": "../../tests/playbooks/localhost.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "outside",
        ),
        (
            "templated",
            json!({"task_id": "templated", "playbook": "hello.yml",
                   "inventory": "inventory.yml",
                   "extra_vars": {"x": "{{ lookup('pipe', 'id') }}"}})
            .to_string(),
            "extra_vars",
        ),
        (
            "connection-override",
            json!({"task_id": "connection-override", "playbook": "hello.yml",
                   "inventory": "inventory.yml",
                   "extra_vars": {"ansible_connection": "local"}})
            .to_string(),
            "ansible_",
        ),
        (
            "bad-verbosity",
            json!({"task_id": "bad-verbosity", "playbook": "hello.yml",
                   "inventory": "inventory.yml", "verbosity": 9})
            .to_string(),
            "verbosity",
        ),
        (
            "bad/id",
            json!({"task_id": "bad/id", "playbook": "hello.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "task_id",
        ),
        ("not-json", "{\"task_id\": \"not-json\",".to_owned(), "JSON"),
        (
            "array",
            json!([{"task_id": "array", "playbook": "hello.yml",
                    "inventory": "inventory.yml"}])
            .to_string(),
            "object",
        ),
    ];
    for (id, body, named) in &refusals {
        let message = http.post("/api/tasks", body).error(400);
        assert!(
            message.contains(named),
            "{id}: {message:?} should name {named:?}"
        );
    }
    // Not declared as JSON.
    let body = hello("plain-text").to_string();
    http.post_typed("/api/tasks", "text/plain", &body, None)
        .error(415);
    // Over the 1 MiB body limit.
    let huge = json!({"task_id": "huge", "playbook": "hello.yml",
                      "inventory": "inventory.yml",
                      "extra_vars": {"blob": "x".repeat(1024 * 1024)}});
    http.post("/api/tasks", &huge.to_string()).error(413);

    // Accepted: 202 with where to follow it, and it really runs.
    let reply = http.post("/api/tasks", &hello("given-id").to_string());
    assert_eq!(reply.status, 202, "{}", reply.body);
    let accepted = reply.json();
    assert_eq!(accepted["task_id"], "given-id", "{accepted}");
    assert_eq!(
        accepted["status_topic"], "ansible/lab/tasks/given-id/status",
        "{accepted}"
    );
    let reply = http.post(
        "/api/tasks",
        &json!({"playbook": "hello.yml", "inventory": "inventory.yml"}).to_string(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let generated = reply.json()["task_id"].as_str().unwrap().to_owned();
    assert!(
        !generated.is_empty()
            && generated.len() <= 128
            && generated
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{generated:?} is not a valid task id"
    );
    assert_eq!(
        reply.json()["status_topic"],
        format!("ansible/lab/tasks/{generated}/status")
    );
    for id in ["given-id", generated.as_str()] {
        let done = http.wait_final(id);
        assert_eq!(done["state"], "success", "{done}\n{}", worker.log());
        assert_eq!(done["output"]["greeting"], "Hello from localhost");
    }

    // Only the accepted ones ever became tasks.
    let listed = ids(&http.get("/api/tasks").json());
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&"given-id".to_owned()));
    assert!(listed.contains(&generated));
    for (id, _, _) in &refusals {
        if !id.contains('/') {
            assert!(http.task(id).is_none(), "{id} was refused yet exists");
        }
    }
    for id in ["plain-text", "huge"] {
        assert!(http.task(id).is_none(), "{id} was refused yet exists");
    }
    let rejected = http.get("/api/rejected").json();
    assert_eq!(rejected, json!([]), "HTTP refusals never reach the worker");
    assert!(
        !worker.log().contains("lookup('pipe'"),
        "a refused template reached the worker"
    );
}

#[test]
fn cancel_over_http_ends_a_running_task_cancelled() {
    let (_worker, _ports, http) = start_appliance(&[], example_config);
    // A unique sleep length finds the run's process in /proc.
    let secs = fastrand::u32(30_000..90_000);
    let id = http.submit(&json!({"task_id": "slow-http", "playbook": "slow.yml",
                                 "inventory": "inventory.yml",
                                 "extra_vars": {"seconds": secs * 3}}));
    http.wait_state(&id, "running");
    let needle = format!("sleep {secs}");
    assert!(
        wait_until(DEADLINE, || !processes_with(&needle).is_empty()),
        "{needle} never started"
    );

    http.post("/api/tasks/a+b/cancel", "{}").error(400);
    let reply = http.post(
        &format!("/api/tasks/{id}/cancel"),
        &json!({"reason": "operator said so"}).to_string(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["task_id"], id.as_str());
    let done = http.wait_final(&id);
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(
        done["error_message"], "Cancelled: operator said so",
        "{done}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&needle)
            .is_empty()),
        "the run's process survived the cancel"
    );
    // Cancelling a finished task (or an unknown one) is accepted and changes
    // nothing.
    let again = http.post_empty(&format!("/api/tasks/{id}/cancel"));
    assert_eq!(again.status, 202, "{}", again.body);
    let unknown = http.post_empty("/api/tasks/never-was/cancel");
    assert_eq!(unknown.status, 202, "{}", unknown.body);
    assert_eq!(http.task(&id).unwrap()["state"], "cancelled");
    assert!(http.task("never-was").is_none());
}

#[test]
fn bearer_token_guards_writes_and_optionally_reads() {
    const TOKEN: &str = "s3cretTokenForTests";
    let env = [("ANSIBLE_WORKER_TOKEN", TOKEN)];
    let bearer = format!("Bearer {TOKEN}");
    let request = hello("guarded").to_string();

    // Writes need the token; reads stay open.
    let (worker, _ports, http) = start_appliance(&env, |dir, ports| {
        with_token(&example_config(dir, ports), false)
    });
    for authorization in [
        None,
        Some("Bearer wrong"),
        Some(&format!("Bearer {TOKEN}x")[..]),
        Some(&format!("Basic {TOKEN}")[..]),
        Some(TOKEN),
    ] {
        let reply = http.post_as("/api/tasks", &request, authorization);
        let message = reply.error(401);
        assert!(message.contains("token"), "{message}");
        let reply = http.post_as("/api/tasks/guarded/cancel", "{}", authorization);
        reply.error(401);
    }
    // The query-string token is for EventSource reads only.
    http.post(&format!("/api/tasks?access_token={TOKEN}"), &request)
        .error(401);
    assert!(http.task("guarded").is_none(), "a refused submit ran");
    let reply = http.post_as("/api/tasks", &request, Some(&bearer));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(http.wait_final("guarded")["state"], "success");
    for path in [
        "/api/tasks",
        "/api/tasks/guarded",
        "/api/tasks/guarded/log",
        "/api/worker",
        "/api/rejected",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let reply = http.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
    assert!(http.events("", &[]).is_ok(), "events are open for reads");
    assert_token_not_logged(&worker, TOKEN);
    drop(worker);

    // token_for_reads: reads need it too, health and metrics never do.
    let (worker, _ports, http) = start_appliance(&env, |dir, ports| {
        with_token(&example_config(dir, ports), true)
    });
    for path in ["/api/tasks", "/api/worker", "/api/tasks/x", "/api/rejected"] {
        http.get(path).error(401);
        http.get_as(path, Some("wrong")).error(401);
    }
    let page = http.get_as("/api/tasks", Some(TOKEN));
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.json()["tasks"], json!([]));
    assert_eq!(http.get_as("/api/worker", Some(TOKEN)).status, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = http.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
    match http.events("", &[]) {
        Ok(_) => panic!("events opened without a token"),
        Err(reply) => {
            reply.error(401);
        }
    }
    match http.events("?access_token=wrong", &[]) {
        Ok(_) => panic!("events opened with a wrong token"),
        Err(reply) => {
            reply.error(401);
        }
    }
    let stream = http
        .events(&format!("?access_token={TOKEN}"), &[])
        .unwrap_or_else(|reply| panic!("events refused the query token: {reply:?}"));
    let first = stream
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    let header_stream = http
        .events("", &[("Authorization", &bearer)])
        .unwrap_or_else(|reply| panic!("events refused the bearer token: {reply:?}"));
    let first = header_stream
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    assert_token_not_logged(&worker, TOKEN);
}

/// Asserts that `token` (from the config, or sent as a bearer header) is not
/// in the worker's log. Request URIs with `?access_token=` are left to
/// [`query_token_never_reaches_the_log`].
#[track_caller]
fn assert_token_not_logged(worker: &Worker, token: &str) {
    let log = worker.log();
    let leaks: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(token) && !line.contains("access_token="))
        .collect();
    assert!(leaks.is_empty(), "the token was logged: {leaks:#?}");
}

#[test]
fn query_token_never_reaches_the_log() {
    const TOKEN: &str = "queryTokenForTests";
    let (worker, _ports, http) =
        start_appliance(&[("ANSIBLE_WORKER_TOKEN", TOKEN)], |dir, ports| {
            with_token(&example_config(dir, ports), true)
        });
    let stream = http
        .events(&format!("?access_token={TOKEN}"), &[])
        .unwrap_or_else(|reply| panic!("events refused the query token: {reply:?}"));
    let first = stream
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    worker.wait_log("/api/events", Duration::from_secs(10));
    let log = worker.log();
    let leaks: Vec<&str> = log.lines().filter(|line| line.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "the token was logged: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_sends_a_snapshot_then_each_status_and_log_line() {
    let (_worker, ports, http) = start_appliance(&[], example_config);
    let observer = Observer::start(ports.v5, "lab").await;
    observer.submit(hello("before-stream")).await;
    observer.wait_final("before-stream", DEADLINE).await;

    // A browser asks for gzip; the stream must still flow uncompressed.
    let stream = http
        .events("", &[("Accept-Encoding", "gzip")])
        .unwrap_or_else(|reply| panic!("{reply:?}"));
    assert!(
        stream.content_type.starts_with("text/event-stream"),
        "{}",
        stream.content_type
    );
    assert_eq!(stream.content_encoding, None);
    let first = stream
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a first event");
    assert_eq!(first.event, "snapshot", "{first:?}");
    assert_eq!(ids(&json!({"tasks": first.data})), ["before-stream"]);
    assert_eq!(first.data[0]["state"], "success");

    observer.submit(hello("streamed")).await;
    let seen = stream.until(DEADLINE, |event| {
        event.event == "status" && event.data["task_id"] == "streamed" && is_final(&event.data)
    });
    let mut states: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "status" && e.data["task_id"] == "streamed")
        .map(|e| e.data["state"].as_str().unwrap())
        .collect();
    states.dedup();
    assert_eq!(states, ["queued", "running", "success"], "{seen:#?}");
    let statuses: Vec<&SseEvent> = seen.iter().filter(|e| e.event == "status").collect();
    assert_eq!(statuses[0].data["request"]["playbook"], "hello.yml");
    assert_eq!(
        statuses.last().unwrap().data["output"]["greeting"],
        "Hello from localhost"
    );
    let logs: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| {
            assert_eq!(e.data["task_id"], "streamed", "{e:?}");
            e.data["line"].as_str().unwrap()
        })
        .collect();
    assert!(!logs.is_empty(), "no log events: {seen:#?}");
    assert!(
        seen.iter().all(|e| e.event == "status" || e.event == "log"),
        "{seen:#?}"
    );
    // The final status agrees with the published one.
    let published = observer.wait_final("streamed", DEADLINE).await;
    assert_eq!(statuses.last().unwrap().data["state"], published["state"]);

    // A late viewer's snapshot already has both, newest first.
    let late = http.events("", &[]).unwrap_or_else(|r| panic!("{r:?}"));
    let snapshot = late
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(
        ids(&json!({"tasks": snapshot.data})),
        ["streamed", "before-stream"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_count_finals_runs_and_refusals() {
    let (_worker, ports, http) = start_appliance(&[], example_config);
    let observer = Observer::start(ports.v5, "lab").await;
    let before = http.metrics();
    before.check_histogram("ansible_worker_run_duration_seconds");
    const SUCCESS: &str = "ansible_worker_tasks_total{state=\"success\"}";
    const FAILED: &str = "ansible_worker_tasks_total{state=\"failed\"}";
    const RUNS: &str = "ansible_worker_run_duration_seconds_count";
    const INVALID: &str = "ansible_worker_refusals_total{reason=\"invalid\"}";
    const UNADDRESSABLE: &str = "ansible_worker_refusals_total{reason=\"unaddressable\"}";
    let build = format!(
        "ansible_worker_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(before.value(&build), 1.0);
    assert_eq!(before.value("ansible_worker_tasks_queued"), 0.0);
    assert_eq!(before.value("ansible_worker_tasks_running"), 0.0);

    observer.submit(hello("metered-ok")).await;
    observer.submit(failing("metered-fail")).await;
    assert_eq!(
        observer.wait_final("metered-ok", DEADLINE).await["state"],
        "success"
    );
    assert_eq!(
        observer.wait_final("metered-fail", DEADLINE).await["state"],
        "failed"
    );
    let after = http.metrics();
    after.check_histogram("ansible_worker_run_duration_seconds");
    assert_eq!(after.value(SUCCESS), before.value(SUCCESS) + 1.0);
    assert_eq!(after.value(FAILED), before.value(FAILED) + 1.0);
    assert_eq!(after.value(RUNS), before.value(RUNS) + 2.0);
    assert!(
        after.value("ansible_worker_run_duration_seconds_sum")
            > before.value("ansible_worker_run_duration_seconds_sum")
    );
    assert_eq!(after.value(INVALID), before.value(INVALID));

    // An addressable but invalid request: refused (one failed status), never
    // run.
    observer
        .submit(json!({"task_id": "metered-invalid", "playbook": "nope.yml",
                       "inventory": "inventory.yml"}))
        .await;
    let refused = observer.wait_final("metered-invalid", DEADLINE).await;
    assert_eq!(refused["state"], "failed");
    let refusal = http.metrics();
    assert_eq!(refusal.value(INVALID), after.value(INVALID) + 1.0);
    assert_eq!(refusal.value(RUNS), after.value(RUNS), "nothing ran");
    // An unaddressable one publishes nothing: wait for the counter itself.
    observer.publish_raw("not json at all").await;
    let mut last = None;
    let counted = wait_until(DEADLINE, || {
        let now = http.metrics();
        let moved = now.value(UNADDRESSABLE) == refusal.value(UNADDRESSABLE) + 1.0;
        last = Some(now.samples);
        moved
    });
    assert!(counted, "unaddressable request never counted: {last:#?}");
    let rejected = http.get("/api/rejected").json();
    assert_eq!(rejected.as_array().map(Vec::len), Some(2), "{rejected}");
    assert!(rejected[0]["task_id"].is_null(), "{rejected}");
    assert_eq!(rejected[1]["task_id"], "metered-invalid", "{rejected}");
}

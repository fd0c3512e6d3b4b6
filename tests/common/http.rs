//! A blocking HTTP client for the appliance's API ([`Http`], [`Reply`]), the
//! [`Appliance`] it talks to (the binary on the example config, up and
//! answering), and the request bodies the HTTP tests share. The event stream
//! and the metrics format are parsed in `sse.rs` and `prometheus.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    DEADLINE, EventStream, Metrics, Observer, Ports, Worker, assert_valid_status, example_config,
    is_final, wait_until,
};

/// The appliance with a config of the test's making, subscribed and
/// answering HTTP. No `Drop` of its own, so tests can take it apart; the
/// [`Worker`] stops the process.
pub struct Appliance {
    /// The running binary, its log and temp dir.
    pub worker: Worker,
    /// Where it listens.
    pub ports: Ports,
    /// A client for its HTTP server.
    pub http: Http,
}

impl Appliance {
    /// Starts the appliance with `config` (written for the worker's own temp
    /// dir) and waits until it subscribed and its HTTP server answers.
    pub fn start(env: &[(&str, &str)], config: impl FnOnce(&Path, &Ports) -> String) -> Self {
        let ports = Ports::free();
        let worker = Worker::with_config_and_env(env, |dir| config(dir, &ports));
        worker.wait_log("subscribed", Duration::from_secs(20));
        let http = Http::new(ports.http);
        http.wait_up(&worker);
        Appliance {
            worker,
            ports,
            http,
        }
    }

    /// The example appliance, and an observer of its `lab` group.
    pub async fn lab() -> (Self, Observer) {
        let appliance = Appliance::start(&[], example_config);
        let observer = Observer::start(appliance.ports.v5, "lab").await;
        (appliance, observer)
    }
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, empty if absent.
    pub content_type: String,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body as text.
    pub body: String,
}

impl Reply {
    /// The first header called `name` (lower case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// Asserts an API error: `status`, a JSON content type, and an `error`
    /// string; returns that string.
    #[track_caller]
    pub fn error(&self, status: u16) -> String {
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
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    /// A client for the server on 127.0.0.1:`port`.
    pub fn new(port: u16) -> Self {
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

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until `/healthz` answers.
    pub fn wait_up(&self, worker: &Worker) {
        assert!(
            wait_until(Duration::from_secs(20), || self
                .try_get("/healthz", None)
                .is_some()),
            "the HTTP server never answered:\n{}",
            worker.log()
        );
    }

    /// GETs `path` with an optional bearer token; None if the request or
    /// reading the body failed.
    pub fn try_get(&self, path: &str, token: Option<&str>) -> Option<Reply> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        read_reply(request.call().ok()?)
    }

    /// GETs `path` without a token.
    pub fn get(&self, path: &str) -> Reply {
        self.get_as(path, None)
    }

    /// GETs `path` with an optional bearer token.
    pub fn get_as(&self, path: &str, token: Option<&str>) -> Reply {
        self.try_get(path, token)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    /// POSTs `body` as JSON.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.post_as(path, body, None)
    }

    /// POSTs `body` as JSON with `Authorization: <authorization>`.
    pub fn post_as(&self, path: &str, body: &str, authorization: Option<&str>) -> Reply {
        self.post_typed(path, "application/json", body, authorization)
    }

    /// POSTs `body` declared as `content_type`, with an optional
    /// `Authorization` header.
    pub fn post_typed(
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
    pub fn post_empty(&self, path: &str) -> Reply {
        let response = self
            .agent
            .post(self.url(path))
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        read_reply(response).unwrap_or_else(|| panic!("POST {path}: unreadable body"))
    }

    /// Sends `method path` with exactly these `headers` (a `Host` among them
    /// replaces the real one) and `body`, nothing else: no content type
    /// unless given, no body when None.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = match body {
            Some(body) => self.agent.run(request.body(body).unwrap()),
            None => self.agent.run(request.body(()).unwrap()),
        };
        let response = response.unwrap_or_else(|e| panic!("{method} {path} failed: {e}"));
        read_reply(response).unwrap_or_else(|| panic!("{method} {path}: unreadable body"))
    }

    /// The current status of `id` (`GET /api/tasks/{id}`), if the worker
    /// holds it; it must pass the status schema, as published.
    pub fn task(&self, id: &str) -> Option<Value> {
        let reply = self.get(&format!("/api/tasks/{id}"));
        let doc = (reply.status == 200).then(|| reply.json())?;
        assert_valid_status(&doc);
        Some(doc)
    }

    /// Waits until `id` is in a final state and returns its detail.
    pub fn wait_final(&self, id: &str) -> Value {
        let mut last = None;
        let done = wait_until(DEADLINE, || {
            last = self.task(id);
            last.as_ref().is_some_and(is_final)
        });
        assert!(done, "{id} never finished; last seen {last:?}");
        last.unwrap()
    }

    /// Waits until `id` reaches `state` (not final) and returns its detail.
    pub fn wait_state(&self, id: &str, state: &str) -> Value {
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
    pub fn submit(&self, request: &Value) -> String {
        let reply = self.post("/api/tasks", &request.to_string());
        assert_eq!(reply.status, 202, "{}", reply.body);
        reply.json()["task_id"].as_str().unwrap().to_owned()
    }

    /// The parsed `/metrics` exposition.
    pub fn metrics(&self) -> Metrics {
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
    pub fn events(&self, query: &str, headers: &[(&str, &str)]) -> Result<EventStream, Reply> {
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
        Ok(EventStream::read(response))
    }
}

/// Reads a response whole; None if its body is unreadable.
pub fn read_reply(response: ureq::http::Response<ureq::Body>) -> Option<Reply> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = response.into_body().read_to_string().ok()?;
    Some(Reply {
        status,
        content_type,
        headers,
        body,
    })
}

/// A request for the example `hello.yml` (succeeds, sets a greeting).
pub fn hello(id: &str) -> Value {
    json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"})
}

/// A request for the example `fail.yml` (fails on purpose).
pub fn failing(id: &str) -> Value {
    json!({"task_id": id, "playbook": "fail.yml", "inventory": "inventory.yml"})
}

/// The ids of a task listing, in order.
pub fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect()
}

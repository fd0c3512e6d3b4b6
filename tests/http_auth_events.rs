//! Who may use the HTTP API and the live event stream, black-box: the
//! appliance binary with the example config (embedded broker, `[http]` on a
//! free port). Covers the bearer token for writes and, with
//! `token_for_reads`, for reads and `/api/events` (header or query string),
//! that no token reaches the log, and the SSE stream's snapshot, status and
//! log events.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

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

/// A token as `openssl rand -base64` makes them: `+ / =` must survive the
/// query string of the live stream.
const BASE64_TOKEN: &str = "s3cret+Token/ForTests==";
/// [`BASE64_TOKEN`] as `encodeURIComponent` writes it into a URL.
const BASE64_TOKEN_IN_URL: &str = "s3cret%2BToken%2FForTests%3D%3D";

#[test]
fn bearer_token_guards_writes_and_optionally_reads() {
    const TOKEN: &str = BASE64_TOKEN;
    let env = [("ANSIBLE_WORKER_TOKEN", TOKEN)];
    let bearer = format!("Bearer {TOKEN}");
    let request = hello("guarded").to_string();

    // Writes need the token; reads stay open.
    let Appliance { worker, http, .. } = Appliance::start(&env, |dir, ports| {
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
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let reply = http.post_as("/api/tasks/guarded/cancel", "{}", authorization);
        reply.error(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    // The query-string token is for EventSource reads only.
    http.post(
        &format!("/api/tasks?access_token={BASE64_TOKEN_IN_URL}"),
        &request,
    )
    .error(401);
    // The scheme is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER"] {
        let authorization = format!("{scheme} {TOKEN}");
        let reply = http.post_as("/api/tasks/never-was/cancel", "{}", Some(&authorization));
        assert_eq!(reply.status, 202, "{scheme}: {}", reply.body);
    }
    assert!(http.task("guarded").is_none(), "a refused submit ran");
    let reply = http.post_as("/api/tasks", &request, Some(&bearer));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/api/tasks/guarded"));
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
    let Appliance { worker, http, .. } = Appliance::start(&env, |dir, ports| {
        with_token(&example_config(dir, ports), true)
    });
    for path in ["/api/tasks", "/api/worker", "/api/tasks/x", "/api/rejected"] {
        http.get(path).error(401);
        http.get_as(path, Some("wrong")).error(401);
        // Only the live stream takes the token in the URL.
        let reply = http.get(&format!("{path}?access_token={BASE64_TOKEN_IN_URL}"));
        reply.error(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
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
    // As the dashboard's EventSource asks: percent-encoded.
    let _stream = open_with_snapshot(&http, &format!("?access_token={BASE64_TOKEN_IN_URL}"), &[]);
    let _header_stream = open_with_snapshot(&http, "", &[("Authorization", &bearer)]);
    assert_token_not_logged(&worker, TOKEN);
}

/// Opens the event stream (which must be allowed) and checks that it starts
/// with a snapshot.
#[track_caller]
fn open_with_snapshot(http: &Http, query: &str, headers: &[(&str, &str)]) -> EventStream {
    let stream = http
        .events(query, headers)
        .unwrap_or_else(|reply| panic!("events refused: {reply:?}"));
    let first = stream
        .next_before(Instant::now() + Duration::from_secs(20))
        .expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    stream
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
    let Appliance { worker, http, .. } =
        Appliance::start(&[("ANSIBLE_WORKER_TOKEN", TOKEN)], |dir, ports| {
            with_token(&example_config(dir, ports), true)
        });
    let _stream = open_with_snapshot(&http, &format!("?access_token={TOKEN}"), &[]);
    worker.wait_log("/api/events", Duration::from_secs(10));
    let log = worker.log();
    let leaks: Vec<&str> = log.lines().filter(|line| line.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "the token was logged: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_sends_a_snapshot_then_each_status_and_log_line() {
    let (appliance, observer) = Appliance::lab().await;
    let http = &appliance.http;
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

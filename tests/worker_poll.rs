//! The HTTP transport end to end: the real binary with `transport = "http"`
//! polls a controller of the tests (`PollController`) and runs real
//! `ansible-playbook`s: object, array and empty answers; the worker's
//! headers and auth; 503s, time-outs and a controller that comes up late;
//! statuses posted in order (through failed posts); dedup; cancel through
//! the worker's own API; a full queue; `/readyz` and `/api/worker`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A request for `failing.yml`: quick, and ends `failed` on purpose.
fn quick_failure(id: &str) -> Value {
    json!({"task_id": id, "playbook": "failing.yml", "inventory": "localhost.yml"})
}

/// A worker of `setup` polling `controller`, its HTTP API up.
fn start_with_api(setup: &mut PollSetup, controller: &PollController) -> (Worker, Http) {
    let port = free_port();
    setup.http_port = Some(port);
    let worker = setup.start(&controller.base_url);
    let http = Http::new(port);
    http.wait_up(&worker);
    (worker, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_array_and_empty_answers_run_every_task_with_statuses_in_order() {
    let controller = PollController::start().await;
    let ledger = Ledger::new();
    controller.script([
        Answer::Json(ledger_request("obj-1", &ledger.path, 0)),
        Answer::NoContent,
        Answer::Json(json!([
            ledger_request("arr-1", &ledger.path, 0),
            quick_failure("arr-2")
        ])),
    ]);
    // The controller refuses the first two status posts: they are posted
    // again, and nothing of their task overtakes them.
    controller.fail_posts(&[500, 503]);
    let mut setup = PollSetup::new();
    setup.extra_poll = "bearer_token = \"${TEST_POLL_TOKEN}\"".into();
    let worker = Worker::with_config_and_env(&[("TEST_POLL_TOKEN", "t0ken-123")], |dir| {
        setup.config(dir, &controller.base_url)
    });

    for (id, state) in [
        ("obj-1", "success"),
        ("arr-1", "success"),
        ("arr-2", "failed"),
    ] {
        let done = controller.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], state, "{done}");
        assert_eq!(done["worker_id"], "poller-1");
        assert_eq!(
            controller.seen(|s| s.state_changes(id)),
            ["queued", "running", state],
            "{id}"
        );
    }
    assert_eq!(ledger_counts(&ledger.path).len(), 2);
    let retried = controller.seen(|s| {
        s.statuses["obj-1"]
            .iter()
            .map(|(doc, code)| (doc["state"].as_str().unwrap().to_owned(), *code))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        &retried[..3],
        [
            ("queued".to_owned(), 500),
            ("queued".to_owned(), 503),
            ("queued".to_owned(), 204)
        ]
    );

    // Every request names the worker and carries the token.
    let requests = controller.seen(|s| s.requests.clone());
    assert!(requests.iter().filter(|r| r.is_poll()).count() >= 3);
    for request in &requests {
        assert_eq!(
            request.header("x-worker-group"),
            Some("pollers"),
            "{request:?}"
        );
        assert_eq!(request.header("x-worker-id"), Some("poller-1"));
        assert_eq!(request.header("authorization"), Some("Bearer t0ken-123"));
        let agent = request.header("user-agent").unwrap_or_default();
        assert!(agent.starts_with("ansible-worker/"), "{agent}");
    }
    let post = requests.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert!(
        !worker.log().contains("t0ken-123"),
        "the token is never logged"
    );

    // A stop ends polling and the process, with every status posted.
    let mut worker = worker;
    let stopping = std::time::Instant::now();
    worker.terminate();
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(0));
    let stopped_in = stopping.elapsed();
    assert!(stopped_in < Duration::from_secs(10), "{stopped_in:?}");
    assert!(worker.log().contains("stopped polling for tasks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_rejected_requests_and_polling_goes_on() {
    let controller = PollController::start().await;
    controller.script([
        // Beyond the 4 MiB an answer may have: not read at all.
        Answer::Body(vec![b' '; 5 * 1024 * 1024]),
        Answer::Body(b"this is not JSON".to_vec()),
        Answer::Json(json!([5, {"no": "task_id"}, quick_failure("after-junk")])),
        Answer::Json(
            json!({"task_id": "..", "playbook": "failing.yml", "inventory": "localhost.yml"}),
        ),
    ]);
    let mut setup = PollSetup::new();
    setup.extra_worker = "max_request_size = 2048".into();
    let (_worker, http) = start_with_api(&mut setup, &controller);
    controller.wait_final("after-junk", DEADLINE).await;
    // The huge body, the junk body, the number, the object without an id,
    // the dot id.
    assert!(
        wait_until(DEADLINE, || http
            .get("/api/rejected")
            .json()
            .as_array()
            .unwrap()
            .len()
            == 5),
        "{}",
        http.get("/api/rejected").body
    );
    let rejected = http.get("/api/rejected").json().to_string();
    assert!(rejected.contains("not JSON"), "{rejected}");
    assert!(
        rejected.contains("not a JSON object but a number"),
        "{rejected}"
    );
    assert!(rejected.contains("name no status URL"), "{rejected}");
    assert!(
        rejected.contains("poll answer larger than 4194304 bytes"),
        "{rejected}"
    );
    // Still polling.
    let polls = controller.seen(|s| s.polls().len());
    controller
        .wait_polls(polls + 2, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_readiness_and_worker_facts_over_http() {
    let controller = PollController::start().await;
    let mut setup = PollSetup::new();
    setup.extra_poll = "username = \"poller\"\npassword = \"pa:ss-word\"".into();
    let (worker, http) = start_with_api(&mut setup, &controller);
    controller.wait_polls(1, Duration::from_secs(20)).await;
    let auth = controller.seen(|s| s.polls()[0].header("authorization").map(str::to_owned));
    // base64("poller:pa:ss-word")
    assert_eq!(auth.as_deref(), Some("Basic cG9sbGVyOnBhOnNzLXdvcmQ="));

    assert!(
        wait_until(Duration::from_secs(20), || http.get("/readyz").status
            == 200),
        "{}",
        http.get("/readyz").body
    );
    let ready = http.get("/readyz").json();
    assert_eq!(ready["checks"]["controller_reachable"], true, "{ready}");
    assert_eq!(ready["checks"]["polling"], true, "{ready}");
    let info = http.get("/api/worker").json();
    assert_eq!(info["broker"], controller.base_url, "{info}");
    assert_eq!(info["transport"], "http", "{info}");
    assert_eq!(info["connected"], true);
    assert!(!worker.log().contains("pa:ss-word"));

    // A controller that stops answering makes the worker not ready.
    drop(controller);
    assert!(
        wait_until(Duration::from_secs(20), || http.get("/readyz").status
            == 503),
        "{}",
        worker.log()
    );
    assert_eq!(
        http.get("/readyz").json()["checks"]["controller_reachable"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_and_slow_answers_back_off_then_tasks_flow_again() {
    let controller = PollController::start().await;
    controller.script([
        Answer::unavailable("2"),
        Answer::unavailable("1"),
        // Longer than poll.timeout (2 s): the poll times out.
        Answer::Slow(Duration::from_secs(4), Box::new(Answer::NoContent)),
        Answer::Json(quick_failure("after-trouble")),
    ]);
    let mut setup = PollSetup::new();
    setup.timeout = 2;
    setup.connect_timeout = 1;
    let worker = setup.start(&controller.base_url);
    controller.wait_final("after-trouble", DEADLINE).await;

    let polls = controller.seen(|s| s.polls().iter().map(|p| p.at).collect::<Vec<_>>());
    // Retry-After is followed: 2 s, then 1 s.
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(1900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[0] < Duration::from_secs(4), "{gaps:?}");
    let log = worker.log();
    // Each kind of trouble is told once, and its end once.
    let warned_503 = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("503"))
        .count();
    assert_eq!(warned_503, 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("timed out")),
        "{log}"
    );
    assert!(
        log.contains("for tasks again, after 3 failed polls"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_comes_up_late_is_polled_once_it_answers() {
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}{CONTROLLER_BASE}");
    let worker = PollSetup::new().start(&base_url);
    worker.wait_log("cannot connect", Duration::from_secs(20));
    let controller = PollController::start_on(port).await;
    controller.script([Answer::Json(quick_failure("late"))]);
    let done = controller.wait_final("late", DEADLINE).await;
    assert_eq!(done["state"], "failed");
    let log = worker.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cannot connect"))
        .count();
    assert_eq!(warned, 1, "one warning however often it retried:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_task_id_runs_once() {
    let controller = PollController::start().await;
    let ledger = Ledger::new();
    let request = ledger_request("dup-1", &ledger.path, 0);
    controller.script([
        Answer::Json(json!([request, request])),
        Answer::NoContent,
        Answer::Json(request.clone()),
    ]);
    let _worker = PollSetup::new().start(&controller.base_url);
    controller.wait_final("dup-1", DEADLINE).await;
    // The third answer's copy arrives too; it gets the current status again.
    controller.wait_polls(4, DEADLINE).await;
    // Each copy got the status of the moment again; one run.
    assert_eq!(
        controller.seen(|s| s.state_changes("dup-1")),
        ["queued", "running", "success"]
    );
    assert_eq!(ledger_counts(&ledger.path)["dup-1"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_the_workers_api_is_posted() {
    let controller = PollController::start().await;
    let ledger = Ledger::new();
    controller.script([Answer::Json(ledger_request("long-1", &ledger.path, 120))]);
    let (_worker, http) = start_with_api(&mut PollSetup::new(), &controller);
    controller.wait_state("long-1", "running", DEADLINE).await;
    let reply = http.post("/api/tasks/long-1/cancel", r#"{"reason": "maintenance"}"#);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let done = controller.wait_final("long-1", DEADLINE).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["error_message"], "Cancelled: maintenance");
    assert_eq!(
        controller.seen(|s| s.state_changes("long-1")),
        ["queued", "running", "cancelled"]
    );
    // A submit whose status could not be posted is refused, not run.
    let dots = r#"{"task_id": "..", "playbook": "ledger.yml", "inventory": "localhost.yml"}"#;
    let reply = http.post("/api/tasks", dots);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("status URL"), "{}", reply.body);
    assert_eq!(http.get("/api/tasks/..").status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_stops_polling_and_the_excess_is_refused() {
    let controller = PollController::start().await;
    let ledger = Ledger::new();
    let slow = |id: &str| ledger_request(id, &ledger.path, 120);
    controller.script([Answer::Json(slow("q-run"))]);
    let mut setup = PollSetup::new();
    setup.concurrency = 1;
    setup.max_queue_size = 1;
    let (_worker, http) = start_with_api(&mut setup, &controller);
    controller.wait_state("q-run", "running", DEADLINE).await;

    // The one run slot is taken: one more waits, the rest are refused.
    controller.script([Answer::Json(json!([
        slow("q-wait"),
        slow("q-over-1"),
        slow("q-over-2")
    ]))]);
    for id in ["q-over-1", "q-over-2"] {
        let done = controller.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "failed");
        assert_eq!(done["error_message"], "Queue full (max: 1)");
    }
    controller.wait_state("q-wait", "queued", DEADLINE).await;

    // With the queue full, no poll is made; three intervals show it.
    let polls = controller.seen(|s| s.polls().len());
    let polled = controller
        .wait(Duration::from_secs(3), |s| s.polls().len() > polls)
        .await;
    assert!(!polled, "polled while the queue was full");
    // Room again: polling resumes at once.
    let reply = http.post("/api/tasks/q-wait/cancel", "{}");
    assert_eq!(reply.status, 202, "{}", reply.body);
    controller.wait_final("q-wait", DEADLINE).await;
    controller
        .wait_polls(polls + 1, Duration::from_secs(10))
        .await;
}

#[test]
fn validate_refuses_the_embedded_broker_with_http() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = PollSetup::new().config(dir.path(), "http://127.0.0.1:9/api");
    config.push_str("\n[broker]\nenabled = true\n");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
        .arg("-c")
        .arg(&path)
        .arg("--validate")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("broker.enabled"), "{text}");
    assert!(text.contains("transport = \"http\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_a_client_certificate() {
    let certs = tempfile::TempDir::new().unwrap();
    make_certificates(certs.path());
    let c = |name: &str| certs.path().join(name).display().to_string();
    let controller =
        PollController::start_tls(certs.path(), Some(&certs.path().join("ca.pem"))).await;
    controller.script([Answer::Json(quick_failure("over-tls"))]);
    let mut setup = PollSetup::new();
    setup.extra_poll = format!(
        "tls_ca_cert = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
        c("ca.pem"),
        c("client.pem"),
        c("client.key")
    );
    let _worker = setup.start(&controller.base_url);
    let done = controller.wait_final("over-tls", DEADLINE).await;
    assert_eq!(done["state"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_is_refused_unless_tls_insecure_says_otherwise() {
    let certs = tempfile::TempDir::new().unwrap();
    make_certificates(certs.path());
    make_ca(certs.path(), "other", "another-ca");
    let controller = PollController::start_tls(certs.path(), None).await;
    controller.script([Answer::Json(quick_failure("insecure"))]);

    let mut trusting_another = PollSetup::new();
    trusting_another.worker_id = "poller-strict".into();
    let other = certs.path().join("other.pem");
    trusting_another.extra_poll = format!("tls_ca_cert = \"{}\"", other.display());
    let strict = trusting_another.start(&controller.base_url);
    strict.wait_log("cannot connect", Duration::from_secs(20));
    assert!(strict.log().contains("UnknownIssuer"), "{}", strict.log());
    drop(strict);
    assert_eq!(controller.seen(|s| s.requests.len()), 0);

    let mut insecure = PollSetup::new();
    insecure.extra_poll = "tls_insecure = true".into();
    let worker = insecure.start(&controller.base_url);
    controller.wait_final("insecure", DEADLINE).await;
    let warned = worker
        .log()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("tls_insecure") && l.contains("NOT checked"));
    assert!(warned, "{}", worker.log());
}

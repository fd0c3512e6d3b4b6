//! Health, readiness and metrics over HTTP, black-box: the appliance binary
//! with the example config (embedded broker, `[http]` on a free port), or a
//! worker against an external Mosquitto it can lose. Covers `/healthz`,
//! `/readyz` and its checks, and the Prometheus text at `/metrics`.

mod common;

use common::*;
use serde_json::json;

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
    let Appliance {
        worker: _lonely,
        http,
        ..
    } = Appliance::start(&[], |dir, ports| {
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
async fn metrics_are_prometheus_text_and_count_finals_runs_and_refusals() {
    let (appliance, observer) = Appliance::lab().await;
    let http = &appliance.http;
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

/// Polls `/readyz` until its status is `status`; returns the last body.
fn wait_readyz(http: &Http, worker: &Worker, status: u16) -> serde_json::Value {
    let mut last = None;
    let reached = wait_until(DEADLINE, || {
        let reply = http.get("/readyz");
        let done = reply.status == status;
        last = Some(reply);
        done
    });
    assert!(
        reached,
        "/readyz never {status}: {last:?}\n{}",
        worker.log()
    );
    last.unwrap().json()
}

#[test]
fn a_subscription_the_broker_refuses_keeps_the_worker_not_ready() {
    let scratch = tempfile::TempDir::new().unwrap();
    let group = unique("acl");
    let tasks = format!("$share/ansible-worker-{group}/ansible/{group}/tasks");
    let cancels = format!("ansible/{group}/tasks/+/cancel");
    let denied: &[(&str, &str)] = &[
        ("publishClientSend", "ansible/#"),
        ("subscribePattern", &cancels),
    ];
    let allowed: &[(&str, &str)] = &[
        ("publishClientSend", "ansible/#"),
        ("subscribePattern", &cancels),
        ("subscribePattern", &tasks),
    ];
    let auth_port = free_port();
    let _broker = Mosquitto::start_with(&dynsec_listener(
        scratch.path(),
        auth_port,
        "acl-pass",
        &[("denied", denied), ("allowed", allowed)],
    ));
    let worker = |user: &str| {
        let mut setup = WorkerSetup::new(&group, auth_port);
        setup.worker_id = format!("{group}-{user}");
        setup.extra_mqtt = format!("username = \"{user}\"\npassword = \"acl-pass\"");
        setup.http_port = Some(free_port());
        let http = Http::new(setup.http_port.unwrap());
        let worker = setup.spawn();
        http.wait_up(&worker);
        (worker, http)
    };

    // The broker takes the login but refuses the tasks filter.
    let (refused, refused_http) = worker("denied");
    const REFUSAL: &str = "the broker refused the subscription to task requests";
    let settled = wait_until(DEADLINE, || {
        refused.log().contains(REFUSAL) || refused_http.get("/readyz").status == 200
    });
    assert!(settled, "{}", refused.log());
    let readyz = refused_http.get("/readyz");
    assert_eq!(readyz.status, 503, "{}\n{}", readyz.body, refused.log());
    let body = readyz.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["mqtt_connected"], true, "{body}");
    assert_eq!(body["checks"]["mqtt_subscribed"], false, "{body}");
    let log = refused.log();
    let line = log.lines().find(|l| l.contains(REFUSAL)).unwrap();
    assert!(
        line.contains("NotAuthorized") && line.contains("ACL"),
        "{line}"
    );
    assert!(line.contains(&tasks), "names the filter: {line}");

    // Allowed, the same worker is ready.
    let (granted, granted_http) = worker("allowed");
    let body = wait_readyz(&granted_http, &granted, 200);
    assert_eq!(body["checks"]["mqtt_subscribed"], true, "{body}");
    assert!(granted.log().contains("subscribed to task requests"));
    // Said once, and the refused worker is still not ready.
    assert_eq!(
        refused.log().matches(REFUSAL).count(),
        1,
        "{}",
        refused.log()
    );
    assert_eq!(refused_http.get("/readyz").status, 503);
}

#[test]
fn readiness_follows_ansible_playbook_being_removed_and_restored() {
    let bin = tempfile::TempDir::new().unwrap();
    let program = bin.path().join("ansible-playbook");
    std::os::unix::fs::symlink(ansible_playbook(), &program).unwrap();
    let Appliance { worker, http, .. } = Appliance::start(&[], |dir, ports| {
        replace_present(
            &example_config(dir, ports),
            &ansible_playbook().display().to_string(),
            &program.display().to_string(),
        )
    });
    let body = wait_readyz(&http, &worker, 200);
    assert_eq!(body["checks"]["ansible_playbook"], true, "{body}");

    let aside = bin.path().join("ansible-playbook.moved");
    std::fs::rename(&program, &aside).unwrap();
    let body = wait_readyz(&http, &worker, 503);
    assert_eq!(body["checks"]["ansible_playbook"], false, "{body}");
    assert_eq!(body["checks"]["mqtt_subscribed"], true, "{body}");

    std::fs::rename(&aside, &program).unwrap();
    let body = wait_readyz(&http, &worker, 200);
    assert_eq!(body["checks"]["ansible_playbook"], true, "{body}");
}

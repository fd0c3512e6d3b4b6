//! The controller examples in `examples/controllers/` against the real
//! worker: the Python controller runs a playbook over MQTT 5
//! request/response on the appliance (the example config on free ports) and
//! prints the final status; the Node-RED flow's topics and broker are the
//! ones the appliance uses, and its request runs; the HTTP controller's API
//! does what the README says, and a worker with the README's
//! `transport = "http"` config runs what it hands out.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ansible_worker::config::Config;
use ansible_worker::mqtt::topics::Topics;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

const SCHEDULER_PASSWORD: &str = "scheduler-pass-5d1e";

fn python() -> PathBuf {
    let python = project_dir().join(".venv/bin/python");
    let paho = Command::new(&python)
        .args(["-c", "import paho.mqtt; print(paho.mqtt.__version__)"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&paho.stdout);
    assert!(
        paho.status.success() && version.starts_with("2."),
        "paho-mqtt 2 is missing from .venv: run scripts/setup --for-tests ({paho:?})"
    );
    python
}

/// The appliance with its example logins on, plus a controller login
/// `scheduler`; returns it with its ports once it has subscribed.
fn start_appliance_with_logins() -> (Worker, Ports) {
    let ports = Ports::free();
    let worker = Worker::with_config_and_env(&[("MQTT_PASSWORD", "worker-pass-0b7c")], |dir| {
        with_broker_logins(
            &example_config(dir, &ports),
            &format!("scheduler = \"{SCHEDULER_PASSWORD}\""),
        )
    });
    worker.wait_log("subscribed", Duration::from_secs(20));
    (worker, ports)
}

/// `controller.py ARGS` logged in as `scheduler`, with its password in
/// `password`.
fn python_controller(port: u16, password: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(project_dir().join("examples/controllers/python/controller.py"))
        .args(["--port", &port.to_string(), "--username", "scheduler"])
        .args(["--wait-timeout", "90"])
        .args(args)
        .env("MQTT_PASSWORD", password)
        .output()
        .unwrap()
}

#[test]
fn python_controller_waits_for_the_final_status_on_its_response_topic() {
    let (appliance, ports) = start_appliance_with_logins();

    let run = python_controller(
        ports.v5,
        SCHEDULER_PASSWORD,
        &[
            "hello.yml",
            "-i",
            "inventory.yml",
            "--task-id",
            "py-hello-1",
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let last: Value = serde_json::from_slice(&run.stdout).expect("the final status as JSON");
    assert_eq!(last["task_id"], "py-hello-1");
    assert_eq!(last["state"], "success");
    assert_eq!(last["output"]["greeting"], "Hello from localhost");
    // It followed the task through its Response Topic, from the start.
    assert!(
        stderr.contains("replies on replies/controller-"),
        "{stderr}"
    );
    let states: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| ["queued", "running", "success"].contains(word))
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{stderr}");
    assert_eq!(states.last(), Some(&"success"), "{stderr}");
    assert!(
        appliance
            .log()
            .contains("task request task_id=py-hello-1 admission=Queued"),
        "{}",
        appliance.log()
    );

    // A failing playbook: exit 1 and the error message.
    let run = python_controller(
        ports.v5,
        SCHEDULER_PASSWORD,
        &[
            "fail.yml",
            "-i",
            "inventory.yml",
            "-e",
            r#"{"reason": "on purpose"}"#,
        ],
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let last: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(last["state"], "failed");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("on purpose"),
        "{run:?}"
    );

    // A wrong password: exit 2, and the password is not echoed.
    let run = python_controller(
        ports.v5,
        "not-the-password",
        &["hello.yml", "-i", "inventory.yml"],
    );
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(!String::from_utf8_lossy(&run.stderr).contains("not-the-password"));
}

/// The Node-RED flow's nodes of `kind`.
fn nodes<'f>(flow: &'f [Value], kind: &str) -> Vec<&'f Value> {
    flow.iter().filter(|n| n["type"] == kind).collect()
}

/// The one node of `kind`.
fn node<'f>(flow: &'f [Value], kind: &str) -> &'f Value {
    let found = nodes(flow, kind);
    assert_eq!(found.len(), 1, "one {kind} node");
    found[0]
}

/// True when `from`'s first output is wired to `to`.
fn wired(from: &Value, to: &Value) -> bool {
    from["wires"][0]
        .as_array()
        .is_some_and(|targets| targets.contains(&to["id"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_red_flow_uses_the_workers_topics_and_its_request_runs() {
    let text =
        std::fs::read_to_string(project_dir().join("examples/controllers/node-red/flow.json"))
            .unwrap();
    let flow: Vec<Value> = serde_json::from_str(&text).expect("flow.json is a JSON array");

    // The topics and the broker of the shipped example config.
    let example = Config::load(&project_dir().join("config.example.toml")).unwrap();
    let topics = Topics::of(&example.worker);
    let (inject, change) = (node(&flow, "inject"), node(&flow, "change"));
    let (request, statuses) = (node(&flow, "mqtt out"), node(&flow, "mqtt in"));
    let (debug, broker) = (node(&flow, "debug"), node(&flow, "mqtt-broker"));
    assert_eq!(request["topic"], topics.tasks());
    assert_eq!(statuses["topic"], topics.status("+"));
    assert_eq!(broker["protocolVersion"], "5");
    assert_eq!(broker["broker"], example.broker.listen.ip().to_string());
    assert_eq!(broker["port"], example.broker.listen.port().to_string());
    assert_eq!(request["broker"], broker["id"]);
    assert_eq!(statuses["broker"], broker["id"]);
    // inject → change (a fresh task_id) → request; statuses → debug.
    assert!(wired(inject, change) && wired(change, request));
    assert!(wired(statuses, debug));
    assert_eq!(change["rules"][0]["p"], "payload.task_id");
    assert_eq!(statuses["datatype"], "json");

    // What the flow publishes runs on the appliance.
    let ports = Ports::free();
    let appliance = Worker::with_config(|dir| example_config(dir, &ports));
    appliance.wait_log("subscribed", Duration::from_secs(20));
    let filter = statuses["topic"].as_str().unwrap();
    let client = Controller::connect(ports.v5, None, &[filter]).await;
    let mut payload: Value = serde_json::from_str(inject["payload"].as_str().unwrap()).unwrap();
    assert_eq!(inject["payloadType"], "json");
    payload["task_id"] = "node-red-1".into();
    let qos = match request["qos"].as_str() {
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        other => panic!("the request node publishes at QoS {other:?}"),
    };
    let topic = request["topic"].as_str().unwrap();
    let ack = client.publish(topic, qos, false, &payload, None).await;
    assert!(ack.accepted(), "{ack:?}");
    let done = client
        .wait_on(&topics.status("node-red-1"), DEADLINE, |d| is_final(&d.doc))
        .await;
    assert_eq!(done.doc["state"], "success", "{:?}", done.doc);
}

#[test]
fn http_controller_hands_each_request_out_once_and_keeps_every_status() {
    let token = "poll-token-6c1f09";
    let controller = RestController::start(Some(token), 0, &[]);
    let http = Http::new(controller.port);
    let bearer = format!("Bearer {token}");
    let json = ("Content-Type", "application/json");
    let user = [("Authorization", bearer.as_str()), json];
    let worker = [
        ("Authorization", bearer.as_str()),
        ("X-Worker-Group", "lab"),
        ("X-Worker-Id", "lab-1"),
    ];

    // Without the token, or with another one: 401 everywhere.
    let endpoints = [
        ("GET", "/tasks", None),
        ("POST", "/tasks/x/status", Some(r#"{"state":"queued"}"#)),
        ("POST", "/submit", Some("{}")),
        ("GET", "/tasks/x", None),
    ];
    for (method, path, body) in endpoints {
        for authorization in [None, Some("Bearer wrong"), Some("Basic bGFiOnBvbGw=")] {
            let mut headers = vec![json];
            headers.extend(authorization.map(|a| ("Authorization", a)));
            let reply = http.send(method, path, &headers, body);
            assert_eq!(reply.status, 401, "{method} {path} {authorization:?}");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
    }

    // A request without an id gets one; each goes out once, oldest first.
    let hello = r#"{"playbook":"hello.yml","inventory":"inventory.yml"}"#;
    let reply = http.send("POST", "/submit", &user, Some(hello));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let made_up = reply.json()["task_id"].as_str().unwrap().to_owned();
    assert!(made_up.starts_with("hello-"), "{made_up}");
    assert_eq!(
        reply.header("location"),
        Some(&*format!("/tasks/{made_up}"))
    );
    let request = serde_json::json!({"task_id": "api-2", "playbook": "fail.yml", "inventory": "inventory.yml"});
    let reply = http.send("POST", "/submit", &user, Some(&request.to_string()));
    assert_eq!(reply.json()["task_id"], "api-2");
    let first = http.send("GET", "/tasks", &worker, None);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["task_id"], made_up.as_str());
    assert_eq!(first.json()["playbook"], "hello.yml");
    assert_eq!(http.send("GET", "/tasks", &worker, None).json(), request);
    let empty = http.send("GET", "/tasks", &worker, None);
    assert_eq!((empty.status, empty.body.as_str()), (204, ""));
    controller.wait_line("handed api-2 to lab/lab-1");

    // ?limit=N: an array of up to N.
    for id in ["batch-1", "batch-2", "batch-3"] {
        let body = serde_json::json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"});
        assert_eq!(
            http.send("POST", "/submit", &user, Some(&body.to_string()))
                .status,
            202
        );
    }
    let ids = |reply: Reply| -> Vec<String> {
        let batch = reply.json();
        let batch = batch.as_array().unwrap_or_else(|| panic!("{batch}"));
        batch
            .iter()
            .map(|r| r["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(http.send("GET", "/tasks?limit=2", &worker, None)),
        ["batch-1", "batch-2"]
    );
    assert_eq!(
        ids(http.send("GET", "/tasks?limit=2", &worker, None)),
        ["batch-3"]
    );
    assert_eq!(
        http.send("GET", "/tasks?limit=2", &worker, None).status,
        204
    );

    // Statuses: every one kept in order, the latest answered, a line each.
    assert_eq!(http.send("GET", "/tasks/api-2", &user, None).status, 404);
    let queued = serde_json::json!({"task_id": "api-2", "state": "queued", "worker_id": "lab-1"});
    let failed = serde_json::json!({"task_id": "api-2", "state": "failed", "worker_id": "lab-1"});
    for doc in [&queued, &failed, &failed] {
        let reply = http.send(
            "POST",
            "/tasks/api-2/status",
            &[worker[0], worker[1], worker[2], json],
            Some(&doc.to_string()),
        );
        assert_eq!((reply.status, reply.body.as_str()), (204, ""));
    }
    assert_eq!(http.send("GET", "/tasks/api-2", &user, None).json(), failed);
    let all = http
        .send("GET", "/tasks/api-2/statuses", &user, None)
        .json();
    assert_eq!(all, serde_json::json!([queued, failed, failed]));
    controller.wait_line("status api-2 failed lab-1");
    assert_eq!(controller.states("api-2"), ["queued", "failed", "failed"]);
    let bad = http.send("POST", "/submit", &user, Some("not json"));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        !controller.stderr().contains(token),
        "{}",
        controller.stderr()
    );

    // Started without a token, it asks for none.
    let open = RestController::start(None, 0, &["--batch", "5"]);
    let http = Http::new(open.port);
    assert_eq!(http.send("GET", "/tasks", &[], None).status, 204);
    assert_eq!(
        http.send("POST", "/submit", &[json], Some(hello)).status,
        202
    );
    assert_eq!(
        http.send("GET", "/tasks", &[], None)
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// Why the worker is gone, if it is.
fn exited(worker: &mut Worker) -> Option<String> {
    (!worker.is_running()).then(|| format!("the worker exited:\n{}", worker.log()))
}

/// The worker config of the README's HTTP transport section, with the
/// controller on `controller`, the dashboard on `dashboard` and this test's
/// paths.
fn readme_http_worker_config(dir: &Path, controller: u16, dashboard: u16) -> String {
    let readme = std::fs::read_to_string(project_dir().join("README.md")).unwrap();
    let section = readme
        .split("\n## HTTP transport (polling a REST controller)\n")
        .nth(1)
        .expect("README has an HTTP transport section");
    let section = section.split("\n## ").next().unwrap();
    let config = section.split("```toml\n").nth(1).expect("a config block");
    let config = config.split("```").next().unwrap();
    let quoted = |path: &Path| format!("{:?}", path.display().to_string());
    let settings = [
        (
            "base_url = \"http://127.0.0.1:8000\"",
            format!("base_url = \"http://127.0.0.1:{controller}\""),
        ),
        (
            "listen = \"127.0.0.1:8081\"",
            format!("listen = \"127.0.0.1:{dashboard}\""),
        ),
        (
            "playbook_directory = \"examples/playbooks\"",
            format!(
                "playbook_directory = {}",
                quoted(&project_dir().join("examples/playbooks"))
            ),
        ),
        (
            "state_dir = \"var/http-worker\"",
            format!(
                "state_dir = {}\nansible_playbook_path = {}",
                quoted(&dir.join("state")),
                quoted(&ansible_playbook())
            ),
        ),
    ];
    settings
        .iter()
        .fold(config.to_owned(), |config, (from, to)| {
            replace_present(&config, from, to)
        })
}

#[test]
fn http_controller_runs_a_playbook_through_a_worker_with_the_readme_config() {
    let token = "poll-token-2a7d41";
    let mut controller = RestController::start(
        Some(token),
        0,
        &[
            "--once",
            "hello.yml",
            "-i",
            "inventory.yml",
            "--task-id",
            "http-hello-1",
        ],
    );
    let port = controller.port;
    let dashboard = free_port();
    let mut worker = Worker::with_config_and_env(&[("POLL_TOKEN", token)], |dir| {
        readme_http_worker_config(dir, port, dashboard)
    });
    let (code, stdout) = controller.wait_exit(|| exited(&mut worker));
    let stderr = controller.stderr();
    assert_eq!(code, Some(0), "{stderr}\n{}", worker.log());
    let last: Value = serde_json::from_str(&stdout).expect("the final status as JSON");
    assert_valid_status(&last);
    assert_eq!(last["task_id"], "http-hello-1");
    assert_eq!(last["state"], "success");
    assert_eq!(last["worker_id"], "lab-1");
    assert_eq!(last["output"]["greeting"], "Hello from localhost");
    assert!(
        stderr.contains("handed http-hello-1 to lab/lab-1\n"),
        "{stderr}"
    );
    let states = controller.states("http-hello-1");
    assert_eq!(
        states.first().map(String::as_str),
        Some("queued"),
        "{stderr}"
    );
    assert!(states.iter().any(|s| s == "running"), "{stderr}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("success"),
        "{stderr}"
    );
    assert!(!stderr.contains(token) && !worker.log().contains(token));
    // The dashboard of the README's config shows the task too.
    let http = Http::new(dashboard);
    http.wait_up(&worker);
    assert_eq!(http.wait_final("http-hello-1")["state"], "success");

    // A failing playbook, from a controller started again on the same port:
    // the worker polls on, and had its answer to hello's final status (it
    // does not post it again).
    let mut controller = RestController::start(
        Some(token),
        port,
        &[
            "--once",
            "fail.yml",
            "-i",
            "inventory.yml",
            "-e",
            r#"{"reason": "on purpose"}"#,
        ],
    );
    let (code, stdout) = controller.wait_exit(|| exited(&mut worker));
    assert_eq!(code, Some(1), "{}\n{}", controller.stderr(), worker.log());
    let last: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(last["state"], "failed");
    assert!(
        controller.stderr().contains("on purpose"),
        "{}",
        controller.stderr()
    );
    assert!(
        controller.states("http-hello-1").is_empty(),
        "{}",
        controller.stderr()
    );
}

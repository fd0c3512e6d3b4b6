//! The controller examples in `examples/controllers/` against the appliance
//! (the example config on free ports): the Python controller runs a
//! playbook over MQTT 5 request/response and prints the final status; the
//! Node-RED flow's topics and broker are the ones the worker uses, and its
//! request runs.

mod common;

use std::path::PathBuf;
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

//! The all-in-one appliance: the binary with the example config (embedded
//! rumqttd on free ports), driven by independent clients (`mosquitto_pub` /
//! `mosquitto_sub`, MQTT 5 and 3.1.1) and by the worker's own tests helpers.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The binary with the example config on free ports, once it subscribed.
fn start_appliance() -> (Worker, Ports) {
    let ports = Ports::free();
    let worker = Worker::with_config(|dir| example_config(dir, &ports));
    worker.wait_log("subscribed", Duration::from_secs(20));
    (worker, ports)
}

fn mosquitto_pub(version: &str, port: u16, topic: &str, message: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-V", version, "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", topic, "-m", message])
        .output()
        .unwrap()
}

/// `mosquitto_sub` until `count` messages or `seconds` pass; the payloads.
fn mosquitto_sub(version: &str, port: u16, topic: &str, count: usize, seconds: u64) -> Vec<Value> {
    let output = Command::new("mosquitto_sub")
        .args(["-V", version, "-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t",
            topic,
            "-C",
            &count.to_string(),
            "-W",
            &seconds.to_string(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Follows every topic under `ansible/lab/tasks/<id>/` with `mosquitto_sub` in
/// the background until a final status arrives; returns the status documents.
/// Returns once the subscription is known to be active (a probe message on
/// `.../probe` came back).
fn follow_until_final(version: &str, port: u16, id: &str) -> std::thread::JoinHandle<Vec<Value>> {
    let filter = format!("ansible/lab/tasks/{id}/#");
    let mut child = Command::new("mosquitto_sub")
        .args([
            "-V",
            version,
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &filter,
        ])
        .args(["-W", "90"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let follower = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut docs = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(doc) = serde_json::from_str::<Value>(&line.unwrap()) else {
                continue;
            };
            if doc.get("probe").is_some() {
                let _ = ready_tx.send(());
                continue;
            }
            // The run's events share the task's topic tree.
            if doc.get("seq").is_some() && doc.get("kind").is_some() {
                continue;
            }
            let done = is_final(&doc);
            docs.push(doc);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        docs
    });
    let probe_topic = format!("ansible/lab/tasks/{id}/probe");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        mosquitto_pub(version, port, &probe_topic, r#"{"probe":true}"#);
        if ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return follower;
        }
        assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
    }
}

fn assert_queued_running_success(docs: &[Value]) {
    let states: Vec<&str> = docs.iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"queued"), "{states:?}");
    assert!(states.contains(&"running"), "{states:?}");
    assert_eq!(states.last(), Some(&"success"), "{states:?}");
}

#[test]
fn example_config_serves_mqtt5_and_mqtt311_clients() {
    let (_appliance, ports) = start_appliance();
    for (version, port, id) in [
        ("mqttv5", ports.v5, "hello-v5"),
        ("mqttv311", ports.v4, "hello-v311"),
    ] {
        let topic = format!("ansible/lab/tasks/{id}/status");
        let follower = follow_until_final(version, port, id);
        let request = json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"});
        let published = mosquitto_pub(version, port, "ansible/lab/tasks", &request.to_string());
        assert!(published.status.success(), "{published:?}");
        let docs = follower.join().unwrap();
        assert_queued_running_success(&docs);
        assert_eq!(
            docs.last().unwrap()["output"]["greeting"],
            "Hello from localhost"
        );
        // Retained: a client that subscribes afterwards gets the final status.
        let retained = mosquitto_sub(version, port, &topic, 1, 10);
        assert_eq!(retained.len(), 1, "retained status for {id}");
        assert_eq!(retained[0]["state"], "success");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_is_accepted_and_an_oversized_one_disturbs_nobody() {
    let (_appliance, ports) = start_appliance();
    let observer = Observer::start(ports.v5, "lab").await;
    // 200 KiB of extra vars: well past rumqttc's 10 KiB default packet limit.
    let blob = "x".repeat(200 * 1024);
    observer
        .submit(json!({"task_id": "big-1", "playbook": "hello.yml",
                        "inventory": "inventory.yml", "extra_vars": {"blob": blob}}))
        .await;
    assert_eq!(
        observer.wait_final("big-1", DEADLINE).await["state"],
        "success"
    );

    // 2 MiB from another client: the broker drops that client only.
    let scratch = tempfile::TempDir::new().unwrap();
    let huge = scratch.path().join("huge.json");
    std::fs::write(
        &huge,
        format!(
            "{{\"task_id\":\"huge-1\",\"x\":\"{}\"}}",
            "y".repeat(2 << 20)
        ),
    )
    .unwrap();
    let _ = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &ports.v5.to_string(),
        ])
        .args(["-q", "1", "-t", "ansible/lab/tasks", "-f"])
        .arg(&huge)
        .output()
        .unwrap();
    observer
        .submit(
            json!({"task_id": "after-1", "playbook": "hello.yml", "inventory": "inventory.yml"}),
        )
        .await;
    assert_eq!(
        observer.wait_final("after-1", DEADLINE).await["state"],
        "success"
    );
    assert!(observer.statuses("huge-1").is_empty());
    assert_eq!(observer.connects(), 1, "the observer kept its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_users_refuse_a_wrong_password_and_the_worker_logs_in() {
    let ports = Ports::free();
    let appliance = Worker::with_config_and_env(&[("MQTT_PASSWORD", "lab-secret")], |dir| {
        with_broker_logins(&example_config(dir, &ports), "")
    });
    appliance.wait_log("subscribed", Duration::from_secs(20));
    assert!(appliance.log().contains("connected to the broker"));

    for (user, password) in [("worker", "wrong"), ("nobody", "lab-secret")] {
        let refused = Command::new("mosquitto_pub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                &ports.v5.to_string(),
            ])
            .args([
                "-u",
                user,
                "-P",
                password,
                "-t",
                "ansible/lab/x",
                "-m",
                "{}",
            ])
            .output()
            .unwrap();
        assert!(
            !refused.status.success(),
            "{user}/{password} must be refused"
        );
    }
    let anonymous = mosquitto_pub("mqttv5", ports.v5, "ansible/lab/x", "{}");
    assert!(
        !anonymous.status.success(),
        "anonymous clients must be refused"
    );

    let observer = Observer::start_with(ports.v5, "lab", Some(("worker", "lab-secret"))).await;
    observer
        .submit(json!({"task_id": "auth-1", "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        observer.wait_final("auth-1", DEADLINE).await["state"],
        "success"
    );
    assert!(
        !appliance.log().contains("lab-secret"),
        "the password is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_queued_task_and_kills_a_running_one() {
    let (_appliance, ports) = start_appliance();
    let observer = Observer::start(ports.v5, "lab").await;
    // Unique sleep lengths find the runs' processes in /proc.
    let seconds: Vec<u32> = (0..2).map(|_| fastrand::u32(30_000..90_000)).collect();
    for (id, secs) in [("slow-a", seconds[0]), ("slow-b", seconds[1])] {
        observer
            .submit(
                json!({"task_id": id, "playbook": "slow.yml", "inventory": "inventory.yml",
                            "extra_vars": {"seconds": secs * 3}}),
            )
            .await;
    }
    observer
        .submit(
            json!({"task_id": "waiting", "playbook": "hello.yml", "inventory": "inventory.yml"}),
        )
        .await;
    observer.wait_state("waiting", "queued", DEADLINE).await;
    for secs in &seconds {
        let needle = format!("sleep {secs}");
        assert!(
            wait_for(DEADLINE, || !processes_with(&needle).is_empty()).await,
            "{needle} never started"
        );
    }

    observer.cancel("waiting", "").await;
    let waiting = observer.wait_final("waiting", DEADLINE).await;
    assert_eq!(waiting["state"], "cancelled");
    assert!(
        waiting["started_at"].is_null(),
        "a cancelled queued task never runs"
    );

    observer
        .cancel("slow-a", r#"{"reason": "operator said so"}"#)
        .await;
    let slow = observer.wait_final("slow-a", DEADLINE).await;
    assert_eq!(slow["state"], "cancelled", "{slow}");
    assert_eq!(slow["error_message"], "Cancelled: operator said so");
    assert!(processes_with(&format!("sleep {}", seconds[0])).is_empty());
    // The other run is untouched; cancelling an unknown id does nothing.
    observer.cancel("no-such-task", "").await;
    assert_eq!(observer.states("slow-b").last().unwrap(), "running");
    observer.cancel("slow-b", "").await;
    assert_eq!(
        observer.wait_final("slow-b", DEADLINE).await["state"],
        "cancelled"
    );
    assert!(processes_with(&format!("sleep {}", seconds[1])).is_empty());
    assert!(observer.statuses("no-such-task").is_empty());
}

#[test]
fn a_second_appliance_on_the_same_port_fails_fast() {
    let (first, ports) = start_appliance();
    let config = std::fs::read_to_string(first.config_path()).unwrap();
    let mut second = Worker::with_config(|dir| {
        let first_state = first.dir.path().join("state").display().to_string();
        config.replace(&first_state, &dir.join("state").display().to_string())
    });
    let code = second.wait_exit(Duration::from_secs(10));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    let log = second.log();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{}", ports.v5)),
        "{log}"
    );
}

#[test]
fn submit_wait_exits_0_on_success_and_1_on_failure() {
    let (appliance, _ports) = start_appliance();
    let submit = |playbook: &str| {
        Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
            .arg("-c")
            .arg(appliance.config_path())
            .args(["submit", playbook, "-i", "examples/playbooks/inventory.yml"])
            .args(["--wait", "--wait-timeout", "90"])
            .current_dir(project_dir())
            .output()
            .unwrap()
    };
    let ok = submit("examples/playbooks/hello.yml");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("success"), "{stdout}");
    assert!(stdout.contains("Hello from localhost"), "{stdout}");

    let failed = submit("examples/playbooks/fail.yml");
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("precondition not met"), "{stdout}");
}

/// rumqttd's router panics when a `clean_start = false` client, alone in a
/// shared group, disconnects with unacked messages (MQTT-NOTES.md). The
/// front door keeps outside clients from doing that (tests/broker_front.rs),
/// so this reaches rumqttd's private listener directly, as a real rumqttd
/// bug would: the appliance must then exit (code 70) instead of staying
/// half alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_broker_thread_ends_the_process() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let (mut appliance, _ports) = start_appliance();
    let private = private_port(&appliance.log());
    let mut options = MqttOptions::new("lonely-member", "127.0.0.1", private);
    options.set_clean_start(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("$share/lonely/crash/topic", QoS::AtLeastOnce)
        .await
        .unwrap();
    let publisher = Observer::start(private, "lab").await;
    let mut received = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received && Instant::now() < deadline {
        let event = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        match event {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) | Err(_) => {
                publisher
                    .client
                    .publish("crash/topic", QoS::AtLeastOnce, false, "x")
                    .await
                    .unwrap();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received = true,
            _ => {}
        }
    }
    assert!(received, "the shared member never got the message");
    // Drop the connection without acking.
    drop(eventloop);
    let code = tokio::task::spawn_blocking(move || {
        let code = appliance.wait_exit(Duration::from_secs(20));
        (code, appliance.log())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(70), "{}", code.1);
    assert!(code.1.contains("panicked"), "{}", code.1);
}

/// The port of rumqttd's private listener, from the appliance's debug log.
fn private_port(log: &str) -> u16 {
    let line = log
        .lines()
        .find(|line| line.contains("embedded broker's private listener"))
        .unwrap_or_else(|| panic!("no private listener in the log:\n{log}"));
    let addr = line
        .split("private=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next();
    addr.unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

//! The worker against a real Mosquitto and a real ansible-playbook: statuses,
//! counters, failures, timeouts and intake refusals as a controller sees them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

struct Setup {
    _broker: Mosquitto,
    worker: Worker,
    observer: Observer,
}

async fn setup(group: &str, tune: impl FnOnce(&mut WorkerSetup)) -> Setup {
    let broker = Mosquitto::start();
    let mut worker_setup = WorkerSetup::new(group, broker.port);
    tune(&mut worker_setup);
    let worker = worker_setup.start();
    let observer = Observer::start(broker.port, group).await;
    Setup {
        _broker: broker,
        worker,
        observer,
    }
}

fn counters(doc: &Value) -> [u64; 7] {
    [
        "tasks_ok",
        "tasks_changed",
        "tasks_unreachable",
        "tasks_failed",
        "tasks_skipped",
        "tasks_rescued",
        "tasks_ignored",
    ]
    .map(|key| {
        doc[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {doc}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_counters_equal_the_recap_and_output_is_set_stats() {
    let s = setup("multi", |_| {}).await;
    s.observer
        .submit(json!({"task_id": "mh-1", "playbook": "multi_host.yml", "inventory": "hosts.yml"}))
        .await;
    let done = s.observer.wait_final("mh-1", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["return_code"], 0);

    let dir = playbooks_dir();
    let recap = recap_of(&dir.join("multi_host.yml"), &dir.join("hosts.yml"));
    assert_eq!(counters(&done), recap, "status {done}");
    // Tasks started once each, however many hosts: 11 tasks incl. the rescue
    // task and one handler.
    assert_eq!(done["tasks_total"], 12, "{done}");
    // Two set_stats calls wrote vm_ip (and each host's name): the later
    // value wins, where Ansible would concatenate "10.0.0.5010.0.0.51".
    assert_eq!(
        done["output"],
        json!({"deployed": "v1", "hosts_seen": 3, "vm_ip": "10.0.0.51"})
    );
    assert_eq!(
        done["output_per_host"],
        json!({"h1": {"name": "h1-final"}, "h2": {"name": "h2-final"}, "h3": {"name": "h3-final"}})
    );
    assert!(done["error_message"].is_null());
    assert_eq!(done["worker_id"], "multi-w1");
    assert!(done["duration_seconds"].as_f64().unwrap() > 0.0);
    assert!(done["started_at"].is_string() && done["completed_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_arrive_queued_running_then_exactly_one_final() {
    let s = setup("order", |_| {}).await;
    s.observer
        .submit(json!({"task_id": "o-1", "playbook": "multi_host.yml", "inventory": "hosts.yml"}))
        .await;
    s.observer.wait_final("o-1", DEADLINE).await;
    let states = s.observer.states("o-1");
    assert_eq!(states[0], "queued", "{states:?}");
    assert_eq!(states[1], "running", "{states:?}");
    assert_eq!(states.last().unwrap(), "success", "{states:?}");
    assert!(
        states[1..states.len() - 1].iter().all(|s| s == "running"),
        "{states:?}"
    );
    // Counters only ever climb while running.
    let docs = s.observer.statuses("o-1");
    let oks: Vec<u64> = docs
        .iter()
        .map(|d| d["tasks_total"].as_u64().unwrap())
        .collect();
    assert!(oks.windows(2).all(|w| w[0] <= w[1]), "{oks:?}");
    // The retained document is the final one: a late subscriber sees it.
    let late = Observer::start(s._broker.port, "order").await;
    let retained = late.wait_final("o-1", Duration::from_secs(10)).await;
    assert_eq!(retained["state"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_names_task_host_and_message() {
    let s = setup("fail", |_| {}).await;
    s.observer
        .submit(json!({"task_id": "f-1", "playbook": "failing.yml", "inventory": "localhost.yml"}))
        .await;
    let done = s.observer.wait_final("f-1", DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["return_code"], 2);
    let message = done["error_message"].as_str().unwrap();
    assert!(message.contains("Break on purpose"), "{message}");
    assert!(message.contains("localhost"), "{message}");
    assert!(message.contains("intentional failure"), "{message}");
    assert_eq!(done["tasks_failed"], 1);
    assert_eq!(done["tasks_ok"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_fails_with_the_stderr_tail() {
    let s = setup("syntax", |_| {}).await;
    s.observer
        .submit(
            json!({"task_id": "s-1", "playbook": "syntax_error.yml", "inventory": "localhost.yml"}),
        )
        .await;
    let done = s.observer.wait_final("s-1", DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["return_code"], 4);
    let message = done["error_message"].as_str().unwrap();
    assert!(message.contains("syntax_error.yml"), "{message}");
    assert!(message.to_lowercase().contains("error"), "{message}");
    assert_eq!(done["tasks_total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_task_that_traps_sigterm() {
    // The timeout leaves room for ansible-playbook to start on a busy machine:
    // the stubborn shell must be running before it strikes.
    let s = setup("timeout", |w| w.kill_grace = 1).await;
    let token = unique("stubborn");
    s.observer
        .submit(json!({
            "task_id": "t-1", "playbook": "trap_term.yml", "inventory": "localhost.yml",
            "timeout": 15, "extra_vars": {"token": token}
        }))
        .await;
    s.observer.wait_state("t-1", "running", DEADLINE).await;
    assert!(
        wait_for(DEADLINE, || !processes_with(&token).is_empty()).await,
        "the stubborn task never started"
    );
    let done = s.observer.wait_final("t-1", DEADLINE).await;
    assert_eq!(done["state"], "timeout", "{done}");
    assert!(
        processes_with(&token).is_empty(),
        "processes of the timed-out run remain: {:?}",
        processes_with(&token)
    );
    // The run's files are removed right after its final status (the
    // callback plugin and the FIFOs kept for later runs stay).
    let runtime = s.worker.dir.path().join("state/runtime-timeout-w1");
    let run_dirs = || -> Vec<_> {
        std::fs::read_dir(&runtime)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|name| name != "plugins" && name != "fifos")
            .collect()
    };
    assert!(
        wait_for(DEADLINE, || run_dirs().is_empty()).await,
        "run dirs left behind: {:?}",
        run_dirs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_publishes_one_failed_status() {
    let s = setup("qfull", |w| {
        w.concurrency = 1;
        w.max_queue_size = 1;
    })
    .await;
    let sleep = |id: &str| json!({"task_id": id, "playbook": "sleep.yml", "inventory": "localhost.yml", "extra_vars": {"seconds": 30}, "timeout": 60});
    s.observer.submit(sleep("q-run")).await;
    s.observer.wait_state("q-run", "running", DEADLINE).await;
    s.observer.submit(sleep("q-wait")).await;
    s.observer.wait_state("q-wait", "queued", DEADLINE).await;
    s.observer.submit(sleep("q-over")).await;
    let over = s.observer.wait_final("q-over", DEADLINE).await;
    assert_eq!(over["state"], "failed");
    assert_eq!(over["error_message"], "Queue full (max: 1)");
    assert!(over["started_at"].is_null());
    assert_eq!(s.observer.states("q-over"), ["failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_task_id_is_not_run_twice() {
    let s = setup("dup", |_| {}).await;
    let out_dir = tempfile::TempDir::new().unwrap();
    let out = out_dir.path().join("ran.txt");
    let request = json!({
        "task_id": "d-1", "playbook": "append_id.yml", "inventory": "localhost.yml",
        "extra_vars": {"task_id": "d-1", "out_file": out.display().to_string()}
    });
    s.observer.submit(request.clone()).await;
    s.observer.wait_final("d-1", DEADLINE).await;
    let before = s.observer.statuses("d-1").len();
    s.observer.submit(request).await;
    // The held status is re-published: wait for that echo, then check the file.
    assert!(wait_for(DEADLINE, || s.observer.statuses("d-1").len() > before).await);
    let echoed = s.observer.statuses("d-1").last().unwrap().clone();
    assert_eq!(echoed["state"], "success");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "d-1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_one_failed_status_naming_the_field() {
    let s = setup("intake", |_| {}).await;
    let cases = [
        (
            json!({"task_id": "i-missing", "playbook": "nope.yml", "inventory": "localhost.yml"}),
            "Playbook not found: nope.yml",
        ),
        (
            json!({"task_id": "i-escape", "playbook": "../Cargo.toml", "inventory": "localhost.yml"}),
            "outside",
        ),
        (
            json!({"task_id": "i-jinja", "playbook": "sleep.yml", "inventory": "localhost.yml",
                   "extra_vars": {"deep": [{"x": "{{ lookup('pipe','id') }}"}]}}),
            "Invalid extra_vars",
        ),
        (
            json!({"task_id": "i-ansible", "playbook": "sleep.yml", "inventory": "localhost.yml",
                   "extra_vars": {"ansible_ssh_common_args": "-o ProxyCommand=id"}}),
            "ansible_ssh_common_args",
        ),
        (
            json!({"task_id": "i-verbosity", "playbook": "sleep.yml", "inventory": "localhost.yml", "verbosity": 5}),
            "verbosity",
        ),
        (
            json!({"task_id": "i-forks", "playbook": "sleep.yml", "inventory": "localhost.yml", "forks": 0}),
            "forks",
        ),
        (
            json!({"task_id": "i-noinv", "playbook": "sleep.yml"}),
            "inventory",
        ),
    ];
    for (request, _) in &cases {
        s.observer.submit(request.clone()).await;
    }
    for (request, expected) in &cases {
        let id = request["task_id"].as_str().unwrap();
        let done = s.observer.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "failed", "{id}: {done}");
        let message = done["error_message"].as_str().unwrap();
        assert!(message.contains(expected), "{id}: {message}");
        assert!(done["started_at"].is_null(), "{id} must not run");
        assert_eq!(s.observer.states(id), ["failed"], "{id}");
        assert!(!message.contains("lookup('pipe'"), "values are not echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaddressable_requests_are_logged_and_the_worker_keeps_running() {
    let s = setup("junk", |_| {}).await;
    s.observer.publish_raw("not json at all").await;
    s.observer.publish_raw("[1, 2, 3]").await;
    s.observer
        .submit(json!({"task_id": "bad/id", "playbook": "sleep.yml", "inventory": "localhost.yml"}))
        .await;
    s.observer.publish_raw(vec![b'{'; 200 * 1024]).await;
    s.observer
        .submit(json!({"task_id": "j-ok", "playbook": "failing.yml", "inventory": "localhost.yml"}))
        .await;
    let done = s.observer.wait_final("j-ok", DEADLINE).await;
    assert_eq!(done["state"], "failed");
    let log = s.worker.log();
    assert_eq!(log.matches("rejected without a status").count(), 4, "{log}");
    // Nothing was published for requests without a usable id.
    let ids: Vec<Value> = s
        .observer
        .all()
        .iter()
        .map(|d| d.doc["task_id"].clone())
        .collect();
    assert!(ids.iter().all(|id| id == "j-ok"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topic_gets_every_status_with_the_correlation_data() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let s = setup("reply", |_| {}).await;
    let mut options = MqttOptions::new("requester", "127.0.0.1", s._broker.port);
    options.set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe("replies/requester", QoS::AtLeastOnce)
        .await
        .unwrap();
    let request =
        json!({"task_id": "rr-1", "playbook": "failing.yml", "inventory": "localhost.yml"});
    let properties = PublishProperties {
        response_topic: Some("replies/requester".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-42")),
        ..PublishProperties::default()
    };
    let mut replies: Vec<(Value, Option<bytes::Bytes>, bool)> = Vec::new();
    let mut sent = false;
    let deadline = std::time::Instant::now() + DEADLINE;
    while !replies.last().is_some_and(|(doc, _, _)| is_final(doc)) {
        assert!(
            std::time::Instant::now() < deadline,
            "replies so far: {replies:?}"
        );
        match tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if !sent => {
                client
                    .publish_with_properties(
                        "ansible/reply/tasks",
                        QoS::ExactlyOnce,
                        false,
                        request.to_string(),
                        properties.clone(),
                    )
                    .await
                    .unwrap();
                sent = true;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let doc: Value = serde_json::from_slice(&p.payload).unwrap();
                let correlation = p.properties.and_then(|props| props.correlation_data);
                replies.push((doc, correlation, p.retain));
            }
            _ => {}
        }
    }
    let states: Vec<&str> = replies
        .iter()
        .map(|(d, _, _)| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{states:?}");
    assert_eq!(states.last(), Some(&"failed"), "{states:?}");
    for (doc, correlation, retained) in &replies {
        assert_eq!(doc["task_id"], "rr-1");
        assert_eq!(correlation.as_deref(), Some(&b"corr-42"[..]));
        assert!(!retained, "replies are not retained");
    }
    // The retained status topic is served as usual.
    assert_eq!(
        s.observer.wait_final("rr-1", DEADLINE).await["state"],
        "failed"
    );
}

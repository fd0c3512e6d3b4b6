//! Requests the worker cannot take as they are (larger than
//! `worker.max_request_size`, or nested deeper than its JSON parser allows)
//! still end `failed` with a reason when their `task_id` can be read, through
//! Mosquitto and through the embedded broker, and the worker keeps its
//! connection: the next request runs.

mod common;

use common::*;
use serde_json::json;

/// 2 MiB: above the default limit of 1 MiB, within what the brokers take.
const BIG: usize = 2 * 1024 * 1024;

/// A request of exactly `size` bytes: a valid one, padded in `extra_vars`.
fn request_of_size(task_id: &str, size: usize) -> Vec<u8> {
    let head = json!({"task_id": task_id, "playbook": "sleep.yml", "inventory": "localhost.yml"})
        .to_string();
    let mut payload = head.trim_end_matches('}').as_bytes().to_vec();
    payload.extend_from_slice(br#","extra_vars":{"blob":""#);
    payload.resize(size - 3, b'x');
    payload.extend_from_slice(b"\"}}");
    assert_eq!(payload.len(), size);
    serde_json::from_slice::<serde_json::Value>(&payload).expect("valid JSON");
    payload
}

/// A request whose `extra_vars` hold arrays nested `levels` deep.
fn nested_request(task_id: &str, levels: usize) -> Vec<u8> {
    format!(
        r#"{{"task_id":"{task_id}","playbook":"sleep.yml","inventory":"localhost.yml","extra_vars":{{"x":{}{}}}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
    .into_bytes()
}

/// Publishes the too-large, the too-deep and then a normal request, and
/// checks their final statuses and that the worker never reconnected.
async fn refuses_with_a_status_and_stays_connected(worker: &Worker, observer: &Observer) {
    let big = unique("big");
    observer.publish_raw(request_of_size(&big, BIG)).await;
    let done = observer.wait_final(&big, DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["error_message"],
        format!("Request too large ({BIG} bytes, max 1048576)")
    );
    assert!(done["started_at"].is_null(), "{done}");
    assert_eq!(observer.states(&big), ["failed"]);

    let deep = unique("deep");
    observer.publish_raw(nested_request(&deep, 200)).await;
    let done = observer.wait_final(&deep, DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["error_message"],
        "Request nested too deeply (202 levels of objects and arrays, max 127)"
    );

    let normal = unique("after");
    observer
        .submit(
            json!({"task_id": normal, "playbook": "sleep.yml", "inventory": "localhost.yml",
            "extra_vars": {"seconds": 0}}),
        )
        .await;
    let done = observer.wait_final(&normal, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    let log = worker.log();
    assert_eq!(
        log.matches("connected to the broker").count(),
        1,
        "the worker reconnected:\n{log}"
    );
    assert!(!log.contains("broker connection failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_mosquitto_a_too_large_request_ends_failed_with_its_size() {
    // Mosquitto's own limit must let 2 MiB through (its default has none).
    let broker = Mosquitto::start_with("max_packet_size 8388608");
    let worker = WorkerSetup::new("size-mq", broker.port).start();
    let observer = Observer::start(broker.port, "size-mq").await;
    refuses_with_a_status_and_stays_connected(&worker, &observer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_embedded_broker_a_too_large_request_ends_failed_with_its_size() {
    let port = free_port();
    let worker = Worker::with_config(|dir| {
        format!(
            r#"log_level = "debug"
[worker]
group_name = "size-emb"
worker_id = "size-emb-w1"
playbook_directory = "{playbooks}"
ansible_playbook_path = "{ansible}"
state_dir = "{state}"

[broker]
enabled = true
listen = "127.0.0.1:{port}"
max_payload_size = 4194304
"#,
            playbooks = playbooks_dir().display(),
            ansible = ansible_playbook().display(),
            state = dir.join("state").display(),
        )
    });
    worker.wait_log("subscribed", DEADLINE);
    let observer = Observer::start(port, "size-emb").await;
    refuses_with_a_status_and_stays_connected(&worker, &observer).await;
}

//! Several workers in one group against one Mosquitto: the shared subscription
//! hands each task to exactly one worker; fan-out mode gives every worker
//! every task.

mod common;

use common::*;
use serde_json::json;

fn append_request(id: &str, out: &std::path::Path) -> serde_json::Value {
    json!({
        "task_id": id, "playbook": "append_id.yml", "inventory": "localhost.yml",
        "extra_vars": {"task_id": id, "out_file": out.display().to_string()}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_a_group_run_each_task_exactly_once() {
    let broker = Mosquitto::start();
    let mut first = WorkerSetup::new("pair", broker.port);
    first.worker_id = "pair-a".into();
    let mut second = WorkerSetup::new("pair", broker.port);
    second.worker_id = "pair-b".into();
    let _a = first.start();
    let _b = second.start();
    let observer = Observer::start(broker.port, "pair").await;
    let out_dir = tempfile::TempDir::new().unwrap();
    let out = out_dir.path().join("ran.txt");

    let ids: Vec<String> = (0..30).map(|i| format!("p-{i:02}")).collect();
    for id in &ids {
        observer.submit(append_request(id, &out)).await;
    }
    for id in &ids {
        let done = observer.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "success", "{done}");
    }
    let mut ran: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ids, "every id exactly once");
    let mut owners = std::collections::HashSet::new();
    for id in &ids {
        let docs = observer.statuses(id);
        assert_eq!(distinct_finals(&docs), 1, "{id}: {docs:?}");
        owners.insert(docs[0]["worker_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(owners.len(), 2, "both workers took tasks: {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_mode_runs_every_task_on_every_worker() {
    let broker = Mosquitto::start();
    let mut workers = Vec::new();
    for name in ["fan-a", "fan-b"] {
        let mut setup = WorkerSetup::new("fan", broker.port);
        setup.worker_id = name.into();
        setup.shared_subscription = false;
        // Each worker keeps its own status topic, as fan-out users configure.
        setup.extra_worker = "suffix_status_with_worker_id = true".into();
        workers.push(setup.start());
    }
    let observer = Observer::start(broker.port, "fan").await;
    let out_dir = tempfile::TempDir::new().unwrap();
    let out = out_dir.path().join("ran.txt");
    for id in ["fan-1", "fan-2", "fan-3"] {
        observer.submit(append_request(id, &out)).await;
    }
    assert!(
        wait_for(DEADLINE, || {
            ["fan-1", "fan-2", "fan-3"].iter().all(|id| {
                let docs = observer.statuses(id);
                let finals: std::collections::HashSet<_> = docs
                    .iter()
                    .filter(|d| is_final(d))
                    .map(|d| d["worker_id"].as_str().unwrap().to_owned())
                    .collect();
                finals.len() == 2
            })
        })
        .await,
        "every worker finishes every task"
    );
    let topics: std::collections::HashSet<String> =
        observer.all().into_iter().map(|s| s.topic).collect();
    assert!(
        topics.contains("ansible/fan/tasks/fan-1/status/fan-a"),
        "{topics:?}"
    );
    assert!(
        topics.contains("ansible/fan/tasks/fan-1/status/fan-b"),
        "{topics:?}"
    );
    let mut ran: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["fan-1", "fan-1", "fan-2", "fan-2", "fan-3", "fan-3"]);
}

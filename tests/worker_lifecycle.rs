//! Broker restarts and worker shutdown: no accepted task is left without a
//! final status, and no process of a run survives.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_a_broker_restart_and_delivers_the_final_status() {
    let mut broker = Mosquitto::start();
    let worker = WorkerSetup::new("restart", broker.port).start();
    let observer = Observer::start(broker.port, "restart").await;
    observer
        .submit(
            json!({"task_id": "r-1", "playbook": "sleep.yml", "inventory": "localhost.yml",
                        "extra_vars": {"seconds": 6}}),
        )
        .await;
    observer.wait_state("r-1", "running", DEADLINE).await;
    broker.stop();
    // Let the worker notice the loss before the broker comes back.
    assert!(
        wait_until(Duration::from_secs(20), || worker
            .log()
            .contains("broker connection failed")),
        "the worker did not notice the broker going away"
    );
    broker.restart();
    let done = observer.wait_final("r-1", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    // It subscribed again: a new task after the restart runs too.
    observer
        .submit(json!({"task_id": "r-2", "playbook": "failing.yml", "inventory": "localhost.yml"}))
        .await;
    assert_eq!(
        observer.wait_final("r-2", DEADLINE).await["state"],
        "failed"
    );
    assert!(worker.log().matches("subscribed to task requests").count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_queued_and_running_tasks_and_leaves_no_process() {
    let broker = Mosquitto::start();
    let mut setup = WorkerSetup::new("stop", broker.port);
    setup.concurrency = 1;
    setup.kill_grace = 1;
    let mut worker = setup.start();
    let observer = Observer::start(broker.port, "stop").await;
    let token = unique("stopme");
    observer
        .submit(
            json!({"task_id": "s-run", "playbook": "trap_term.yml", "inventory": "localhost.yml",
                        "extra_vars": {"token": token}}),
        )
        .await;
    for id in ["s-q1", "s-q2"] {
        observer
            .submit(json!({"task_id": id, "playbook": "sleep.yml", "inventory": "localhost.yml"}))
            .await;
    }
    observer.wait_state("s-q2", "queued", DEADLINE).await;
    assert!(wait_for(DEADLINE, || !processes_with(&token).is_empty()).await);

    worker.terminate();
    let code = worker.wait_exit(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "clean exit within kill_grace + a few seconds"
    );
    for id in ["s-run", "s-q1", "s-q2"] {
        let done = observer.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(done["state"], "cancelled", "{id}: {done}");
        assert_eq!(distinct_finals(&observer.statuses(id)), 1);
    }
    assert!(
        processes_with(&token).is_empty(),
        "a process of the run survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_online_with_load_and_the_will_marks_a_killed_worker_offline() {
    let broker = Mosquitto::start();
    let mut setup = WorkerSetup::new("presence", broker.port);
    setup.concurrency = 1;
    let mut worker = setup.start();
    let observer = Observer::start(broker.port, "presence").await;
    let online = |queued: u64, running: u64| {
        observer
            .presence("presence-w1")
            .iter()
            .any(|d| d["state"] == "online" && d["queued"] == queued && d["running"] == running)
    };
    assert!(
        wait_for(DEADLINE, || online(0, 0)).await,
        "retained online document"
    );
    let first = observer.presence("presence-w1")[0].clone();
    assert_eq!(first["concurrency"], 1);
    assert!(first["version"].is_string() && first["started_at"].is_string());

    for id in ["pr-1", "pr-2"] {
        observer
            .submit(
                json!({"task_id": id, "playbook": "sleep.yml", "inventory": "localhost.yml",
                            "extra_vars": {"seconds": 30}}),
            )
            .await;
    }
    assert!(
        wait_for(DEADLINE, || online(1, 1)).await,
        "{:?}",
        observer.presence("presence-w1")
    );

    worker.kill();
    assert!(
        wait_for(Duration::from_secs(30), || observer
            .presence("presence-w1")
            .last()
            .is_some_and(|d| d["state"] == "offline"))
        .await,
        "the will marks the worker offline: {:?}",
        observer.presence("presence-w1")
    );
    // Retained: a newcomer sees it offline.
    let late = Observer::start(broker.port, "presence").await;
    assert!(
        wait_for(Duration::from_secs(10), || late
            .presence("presence-w1")
            .last()
            .is_some_and(|d| d["state"] == "offline"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_final_through_the_embedded_broker_before_it_ends() {
    // The broker lives in the worker's process: the finals must have left it
    // for the subscribers before the process ends.
    let (mut appliance, observer) = Appliance::lab().await;
    let ids: Vec<String> = (0..6).map(|_| unique("embedded-stop")).collect();
    for id in &ids {
        observer
            .submit(
                json!({"task_id": id, "playbook": "slow.yml", "inventory": "inventory.yml",
                           "extra_vars": {"seconds": 300}}),
            )
            .await;
    }
    for id in &ids {
        observer.wait_state(id, "queued", DEADLINE).await;
    }
    observer.wait_state(&ids[0], "running", DEADLINE).await;
    appliance.worker.terminate();
    assert_eq!(appliance.worker.wait_exit(Duration::from_secs(30)), Some(0));
    // The process is gone: what it sent is in the observer's socket or lost.
    for id in &ids {
        let done = observer.wait_final(id, Duration::from_secs(5)).await;
        assert_eq!(done["state"], "cancelled", "{id}: {done}");
    }
}

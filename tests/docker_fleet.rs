//! The fleet of docker/fleet.yml in real containers: Debian's Mosquitto with
//! logins and an ACL, three workers of one group. 60 tasks run exactly once
//! each over the three (a ledger on a volume they share); then, with tasks
//! running, one worker is killed and started again, another is cut from the
//! network for 60 s, and Mosquitto is restarted (with persistence). Every task
//! ends with exactly one final status, none runs twice, and no process is left.
//!
//! Skipped loudly where no Docker engine answers; required under CI.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const GROUP: &str = "fleet";
const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];
/// Where the workers see the shared ledger directory.
const LEDGER_IN_CONTAINER: &str = "/var/lib/ledger/ledger.txt";

/// A request for `ledger.yml` that records `id` in the shared ledger, then
/// sleeps `seconds`.
fn ledger_task(id: &str, seconds: u64) -> Value {
    let mut request = ledger_request(id, Path::new(LEDGER_IN_CONTAINER), seconds);
    request["inventory"] = json!("localhost.yml");
    request
}

/// Submits `count` tasks named `<prefix>-<n>` that sleep `seconds`.
async fn submit_batch(
    observer: &Observer,
    prefix: &str,
    count: usize,
    seconds: u64,
) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n:02}")).collect();
    for id in &ids {
        observer.submit(ledger_task(id, seconds)).await;
    }
    ids
}

/// Waits until a task of `ids` runs on `worker`.
async fn wait_running_on(observer: &Observer, ids: &[String], worker: &str) {
    let running = wait_for(DEADLINE, || {
        ids.iter().any(|id| {
            observer
                .statuses(id)
                .iter()
                .any(|d| d["state"] == "running" && d["worker_id"] == worker)
        })
    })
    .await;
    assert!(running, "no task of the batch ever ran on {worker}");
}

/// Waits for a final status of every task in `ids`; returns how many ended
/// in each state.
async fn wait_all_final(
    observer: &Observer,
    ids: &[String],
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let all_final = wait_for(timeout, || {
        ids.iter()
            .all(|id| observer.statuses(id).iter().any(is_final))
    })
    .await;
    let missing: Vec<(&String, Vec<String>)> = ids
        .iter()
        .filter(|id| !observer.statuses(id).iter().any(is_final))
        .map(|id| (id, observer.states(id)))
        .collect();
    assert!(all_final, "tasks without a final status: {missing:?}");
    let mut states = BTreeMap::new();
    for id in ids {
        let last = observer.statuses(id).into_iter().rfind(is_final).unwrap();
        *states
            .entry(last["state"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    states
}

/// Every task of `ids`: exactly one final status, at most one run (exactly
/// one if it succeeded); an unsuccessful one ended because its worker was
/// killed during the run.
fn check_once(observer: &Observer, ledger: &Path, ids: &[String], phase: &str) -> usize {
    let counts = ledger_counts(ledger);
    let mut runs = 0;
    for id in ids {
        let statuses = observer.statuses(id);
        assert_eq!(
            distinct_finals(&statuses),
            1,
            "{phase}: {id} has not exactly one final status: {:?}",
            observer.states(id)
        );
        let last = statuses.iter().rfind(|d| is_final(d)).unwrap();
        let ran = counts.get(id).copied().unwrap_or(0);
        runs += ran;
        assert!(ran <= 1, "{phase}: {id} ran {ran} times");
        if last["state"] == "success" {
            assert_eq!(
                ran, 1,
                "{phase}: {id} succeeded without a run in the ledger"
            );
        } else {
            assert_eq!(last["state"], "failed", "{phase}: {last}");
            assert!(
                last["error_message"]
                    .as_str()
                    .is_some_and(|m| m.contains("interrupted")),
                "{phase}: {id} failed for another reason: {last}"
            );
        }
    }
    runs
}

/// Waits until no worker container holds a process besides tini and the worker.
fn check_no_process_left(project: &Project) {
    for worker in WORKERS {
        let mut left = Vec::new();
        assert!(
            wait_until(Duration::from_secs(10), || {
                left = project.run_processes(worker);
                left.is_empty()
            }),
            "{worker} still holds {left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_runs_each_task_once_through_kills_partitions_and_broker_restarts() {
    if !engine() {
        return;
    }
    build_images();
    let playbooks = shared_dir(&[
        "tests/playbooks/ledger.yml",
        "tests/playbooks/localhost.yml",
    ]);
    let ledger_dir = tempfile::TempDir::new().unwrap();
    // The workers' user (uid 10001) appends to the ledger.
    make_shared(ledger_dir.path(), 0o777);
    let ledger = ledger_dir.path().join("ledger.txt");
    let port = free_port();
    let controller_password = unique("controller");
    let project = Project::new(
        "docker/fleet.yml",
        &[
            ("MQTT_WORKER_PASSWORD", &unique("worker")),
            ("MQTT_CONTROLLER_PASSWORD", &controller_password),
            ("FLEET_MQTT_PUBLISH", &format!("127.0.0.1:{port}")),
            ("FLEET_PLAYBOOKS", playbooks.path().to_str().unwrap()),
            ("FLEET_LEDGER", ledger_dir.path().to_str().unwrap()),
        ],
    );
    project.compose(&["up", "-d"]);
    for worker in WORKERS {
        project.wait_healthy(worker, Duration::from_secs(120));
    }
    let observer =
        Observer::start_with(port, GROUP, Some(("controller", &controller_password))).await;

    // 60 tasks over three workers, each run exactly once.
    let mut every_id = Vec::new();
    let ids = submit_batch(&observer, "steady", 60, 0).await;
    let states = wait_all_final(&observer, &ids, Duration::from_secs(240)).await;
    assert_eq!(states.get("success"), Some(&60), "{states:?}");
    let runs = check_once(&observer, &ledger, &ids, "steady");
    every_id.extend(ids.iter().cloned());
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let last = observer.statuses(id).into_iter().rfind(is_final).unwrap();
        *per_worker
            .entry(last["worker_id"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "not every worker took tasks: {per_worker:?}"
    );
    eprintln!("steady: 60 tasks, finals {states:?}, ledger runs {runs}, per worker {per_worker:?}");

    // docker kill one worker during runs, then start it again.
    let ids = submit_batch(&observer, "kill", 12, 4).await;
    wait_running_on(&observer, &ids, "worker-1").await;
    project.docker(&["kill", &project.container("worker-1")]);
    project.compose(&["start", "worker-1"]);
    project.wait_healthy("worker-1", Duration::from_secs(120));
    let states = wait_all_final(&observer, &ids, Duration::from_secs(240)).await;
    let runs = check_once(&observer, &ledger, &ids, "kill");
    every_id.extend(ids.iter().cloned());
    eprintln!("kill worker-1: 12 tasks, finals {states:?}, ledger runs {runs}");

    // Cut another worker from the network for 60 s during runs.
    let network = format!("{}_default", project.name());
    let cut = project.container("worker-2");
    let ids = submit_batch(&observer, "partition", 12, 4).await;
    wait_running_on(&observer, &ids, "worker-2").await;
    project.docker(&["network", "disconnect", &network, &cut]);
    // The fault itself lasts 60 s; nothing is awaited here.
    tokio::time::sleep(Duration::from_secs(60)).await;
    project.docker(&["network", "connect", &network, &cut]);
    let states = wait_all_final(&observer, &ids, Duration::from_secs(240)).await;
    let runs = check_once(&observer, &ledger, &ids, "partition");
    every_id.extend(ids.iter().cloned());
    eprintln!("partition worker-2 for 60 s: 12 tasks, finals {states:?}, ledger runs {runs}");

    // Restart Mosquitto during runs; its persistence keeps sessions and
    // retained statuses.
    let ids = submit_batch(&observer, "broker", 12, 4).await;
    wait_running_on(&observer, &ids, "worker-3").await;
    project.compose(&["restart", "mosquitto"]);
    let states = wait_all_final(&observer, &ids, Duration::from_secs(240)).await;
    let runs = check_once(&observer, &ledger, &ids, "broker");
    every_id.extend(ids.iter().cloned());
    eprintln!("restart mosquitto: 12 tasks, finals {states:?}, ledger runs {runs}");

    // Nothing changed afterwards: still one final each, at most one run.
    let runs = check_once(&observer, &ledger, &every_id, "in the end");
    eprintln!("in the end: {} tasks, ledger runs {runs}", every_id.len());
    check_no_process_left(&project);
}

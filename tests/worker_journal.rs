//! The task journal under faults, black-box: a state dir on a small tmpfs
//! that the test fills while a task runs (no status may leave the worker
//! before it is journaled; the worker stops taking requests and says why on
//! `/readyz`; it recovers by itself once space comes back, also across a
//! SIGKILL), and the bytes of a finished task's secret request in the raw
//! journal files. `gated.yml` holds a run until the test opens its gate.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const INTERRUPTED: &str = "interrupted: worker restarted during the run";
/// Size of the held task's `set_stats` output: its statuses need far more
/// new blocks than the end of the run frees (its temp files) or the WAL
/// already has.
const OUTPUT_BYTES: usize = 600_000;

/// A worker of `group` against the broker on `port`, journaling in
/// `state_dir`, with the HTTP API on `http_port`.
fn config(group: &str, port: u16, state_dir: &Path, http_port: u16) -> String {
    format!(
        r#"log_level = "debug"
[worker]
group_name = "{group}"
worker_id = "{group}-a"
playbook_directory = "{playbooks}"
concurrency = 2
kill_grace = 1
ansible_playbook_path = "{ansible}"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5

[http]
enabled = true
listen = "127.0.0.1:{http_port}"
"#,
        playbooks = playbooks_dir().display(),
        ansible = ansible_playbook().display(),
        state = state_dir.display(),
    )
}

/// A request for `gated.yml`: ledger line, wait for `gate`, `size` bytes of
/// output; `extra` adds extra vars.
fn gated_request(id: &str, ledger: &Ledger, gate: &Path, size: usize, extra: Value) -> Value {
    let mut vars = json!({
        "task_id": id, "out_file": ledger.path.display().to_string(),
        "gate": gate.display().to_string(), "size": size,
    });
    vars.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"task_id": id, "playbook": "gated.yml", "inventory": "localhost.yml", "extra_vars": vars})
}

/// Waits until `/readyz` answers `status` with `check` and returns the body.
fn wait_readyz(http: &Http, status: u16, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let seen = wait_until(DEADLINE, || {
        let reply = http.get("/readyz");
        let ok = reply.status == status && check(&reply.json());
        last = Some(reply);
        ok
    });
    assert!(
        seen,
        "/readyz never answered {status} as expected: {last:?}"
    );
    last.unwrap().json()
}

/// Starts a worker on `tmpfs`, runs a gated task with a large output up to
/// its gate, fills the file system, opens the gate and waits until the run
/// ended in the table while the journal cannot record it.
async fn task_ended_on_a_full_disk(
    tmpfs: &Tmpfs,
    group: &str,
    broker: &Mosquitto,
    ledger: &Ledger,
) -> (Worker, Http, Observer, String) {
    let http_port = free_port();
    let worker = Worker::with_config(|_| config(group, broker.port, tmpfs.path(), http_port));
    let http = Http::new(http_port);
    http.wait_up(&worker);
    wait_readyz(&http, 200, |_| true);
    let observer = Observer::start(broker.port, group).await;
    let id = unique("held");
    let gate = ledger.path.with_file_name(format!("{id}.gate"));
    observer
        .submit(gated_request(&id, ledger, &gate, OUTPUT_BYTES, json!({})))
        .await;
    observer.wait_state(&id, "running", DEADLINE).await;
    // Filled only once the run waits at its gate: Ansible needs the temp
    // space (in the state dir) to start a module.
    let gate_name = gate.display().to_string();
    assert!(wait_for(DEADLINE, || !processes_with(&gate_name).is_empty()).await);

    tmpfs.fill();
    std::fs::write(&gate, "").unwrap();
    let body = wait_readyz(&http, 503, |body| {
        body["checks"]["journal"] == false && body["checks"]["mqtt_subscribed"] == false
    });
    let reason = body["journal_error"].as_str().unwrap_or_default();
    assert!(reason.contains("disk is full"), "{body}");
    // The run is over: the table holds its final status, but the journal
    // could not record it, so it was not published.
    let done = http.wait_final(&id);
    assert_eq!(done["state"], "success", "{done}");
    assert!(
        !observer.statuses(&id).iter().any(is_final),
        "a final status left before it was journaled: {:?}",
        observer.states(&id)
    );
    (worker, http, observer, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_holds_statuses_and_requests_until_space_comes_back() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        return;
    };
    let broker = Mosquitto::start();
    let ledger = Ledger::new();
    let group = unique("full");
    let (worker, http, observer, id) =
        task_ended_on_a_full_disk(&tmpfs, &group, &broker, &ledger).await;

    // Not taking requests: the HTTP API says why, and over MQTT another
    // member of the group gets them.
    let refused = http.post("/api/tasks", &hello(&unique("refused")).to_string());
    assert!(refused.error(503).contains("journal"), "{}", refused.body);
    let mut setup = WorkerSetup::new(&group, broker.port);
    setup.worker_id = format!("{group}-b");
    let other_worker = setup.start();
    let elsewhere = unique("elsewhere");
    observer
        .submit(ledger_request(&elsewhere, &ledger.path, 0))
        .await;
    let done = observer.wait_final(&elsewhere, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["worker_id"], format!("{group}-b"), "{done}");
    drop(other_worker);
    assert!(!observer.statuses(&id).iter().any(is_final));

    // Space comes back: the held statuses go out, in order, and the worker
    // is ready and takes requests again, by itself.
    tmpfs.free();
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(
        done["output"]["blob"].as_str().map(str::len),
        Some(OUTPUT_BYTES)
    );
    let states = observer.states(&id);
    assert_eq!(
        states.first().map(String::as_str),
        Some("queued"),
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("success"),
        "{states:?}"
    );
    let body = wait_readyz(&http, 200, |_| true);
    assert_eq!(body["checks"]["journal"], true, "{body}");
    assert!(body.get("journal_error").is_none(), "{body}");
    let again = unique("again");
    observer
        .submit(ledger_request(&again, &ledger.path, 0))
        .await;
    let done = observer.wait_final(&again, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["worker_id"], format!("{group}-a"), "{done}");
    assert_eq!(distinct_finals(&observer.statuses(&id)), 1);
    let counts = ledger_counts(&ledger.path);
    for task in [&id, &elsewhere, &again] {
        assert_eq!(counts.get(task), Some(&1), "{task}: {counts:?}");
    }
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_its_journal_is_full_publishes_one_final_after_restart() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        return;
    };
    let broker = Mosquitto::start();
    let ledger = Ledger::new();
    let group = unique("fullkill");
    let (mut worker, http, observer, id) =
        task_ended_on_a_full_disk(&tmpfs, &group, &broker, &ledger).await;

    worker.kill();
    tmpfs.free();
    worker.restart();
    // The journal still said running: the restarted worker ends the task
    // as interrupted, and that is the only final status it ever had.
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error_message"], INTERRUPTED, "{done}");
    wait_readyz(&http, 200, |_| true);
    assert_eq!(
        distinct_finals(&observer.statuses(&id)),
        1,
        "{:?}",
        observer.states(&id)
    );
    assert_eq!(ledger_counts(&ledger.path).get(&id), Some(&1));
}

/// Which of the journal's raw files in `state_dir` hold `needle`.
fn journal_files_holding(state_dir: &Path, needle: &str) -> Vec<String> {
    ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"]
        .into_iter()
        .filter(|name| {
            std::fs::read(state_dir.join(name)).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_tasks_secret_leaves_the_journal_files_of_an_idle_worker() {
    let broker = Mosquitto::start();
    let group = unique("secret");
    let worker = WorkerSetup::new(&group, broker.port).start();
    let state_dir = worker.dir.path().join("state");
    let observer = Observer::start(broker.port, &group).await;
    let ledger = Ledger::new();
    let id = unique("secret");
    let secret = format!("hunter2-{:016x}", fastrand::u64(..));
    let gate = ledger.path.with_file_name(format!("{id}.gate"));
    observer
        .submit(gated_request(
            &id,
            &ledger,
            &gate,
            0,
            json!({"db_password": secret}),
        ))
        .await;
    observer.wait_state(&id, "running", DEADLINE).await;
    // While the task runs, the journal holds its request (for a restart).
    assert!(!journal_files_holding(&state_dir, &secret).is_empty());

    std::fs::write(&gate, "").unwrap();
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    // Within seconds of the final status, on a worker with nothing else to
    // do, no byte of it is left in any of the journal's files.
    let mut holding = vec![];
    let gone = wait_until(std::time::Duration::from_secs(10), || {
        holding = journal_files_holding(&state_dir, &secret);
        holding.is_empty()
    });
    assert!(gone, "the secret is still in {holding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_state_dir_refuses_to_start_and_the_first_keeps_working() {
    let broker = Mosquitto::start();
    let group = unique("shared-state");
    let first = WorkerSetup::new(&group, broker.port).start();
    let state_dir = first.dir.path().join("state");
    let http_port = free_port();
    // Two workers on one journal would each recover the other's tasks at
    // their next start, and run them twice.
    let mut second = Worker::with_config(|_| {
        config(&group, broker.port, &state_dir, http_port).replace(
            &format!("worker_id = \"{group}-a\""),
            &format!("worker_id = \"{group}-b\""),
        )
    });
    assert_eq!(
        second.wait_exit(DEADLINE),
        Some(2),
        "the second worker kept running:\n{}",
        second.log()
    );
    assert!(
        second
            .log()
            .contains("in use by another process (is another worker running with this state_dir?)"),
        "{}",
        second.log()
    );

    let observer = Observer::start(broker.port, &group).await;
    let ledger = Ledger::new();
    let id = unique("after");
    let gate = ledger.path.with_file_name(format!("{id}.gate"));
    std::fs::write(&gate, "").unwrap();
    observer
        .submit(gated_request(&id, &ledger, &gate, 0, json!({})))
        .await;
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["worker_id"], format!("{group}-w1"), "{done}");
}

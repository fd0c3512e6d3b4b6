//! Crash and restart recovery: every task whose `queued` status went out
//! reaches exactly one final status, and no playbook runs twice for one
//! task id, across a SIGKILLed worker (external and embedded broker), broker
//! restarts and redelivered requests. `ledger.yml` appends each run's task id
//! to a file: the ledger counts real runs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const INTERRUPTED: &str = "interrupted: worker restarted during the run";

/// Waits until the worker's log (all its lives) holds `needle` `n` times.
fn wait_log_count(worker: &Worker, needle: &str, n: usize) {
    assert!(
        wait_until(DEADLINE, || worker.log().matches(needle).count() >= n),
        "worker never logged {needle:?} {n} times:\n{}",
        worker.log()
    );
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Submits a long ledger task and waits until it runs (its ledger line is
/// written), then `n` quick ones that wait queued behind it (concurrency 1).
async fn one_running_and_queued(
    observer: &Observer,
    ledger: &Ledger,
    prefix: &str,
    n: usize,
) -> (String, Vec<String>) {
    let running = unique(prefix);
    observer
        .submit(ledger_request(&running, &ledger.path, 120))
        .await;
    observer.wait_state(&running, "running", DEADLINE).await;
    let queued: Vec<String> = (0..n).map(|n| format!("{running}-q{n}")).collect();
    for id in &queued {
        observer.submit(ledger_request(id, &ledger.path, 0)).await;
    }
    for id in &queued {
        observer.wait_state(id, "queued", DEADLINE).await;
    }
    assert!(
        wait_for(DEADLINE, || ledger_counts(&ledger.path)
            .contains_key(&running))
        .await
    );
    (running, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_persistent_session_loses_nothing_and_runs_nothing_twice() {
    let broker = Mosquitto::start();
    let mut setup = WorkerSetup::new("crash", broker.port);
    setup.concurrency = 1;
    setup.kill_grace = 1;
    let mut worker = setup.start();
    let observer = Observer::start(broker.port, "crash").await;
    let ledger = Ledger::new();
    let (running, queued) = one_running_and_queued(&observer, &ledger, "crash-run", 10).await;
    let orphans = processes_with(&running);
    assert!(!orphans.is_empty(), "the run's shell should be running");

    worker.kill();
    // Published while the worker is down: its session keeps it.
    let late = format!("{running}-late");
    observer
        .submit(ledger_request(&late, &ledger.path, 0))
        .await;
    assert!(
        orphans.iter().any(|pid| alive(*pid)),
        "a SIGKILLed worker leaves its run behind"
    );
    worker.restart();

    let done = observer.wait_final(&running, DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error_message"], INTERRUPTED);
    assert!(done["return_code"].is_null(), "{done}");
    assert!(
        orphans.iter().all(|pid| !alive(*pid)),
        "the previous run's processes must be killed"
    );
    for id in queued.iter().chain([&late]) {
        let done = observer.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "success", "{id}: {done}");
    }
    let counts = ledger_counts(&ledger.path);
    for id in queued.iter().chain([&late, &running]) {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} ran {:?} times",
            counts.get(id)
        );
        assert_eq!(distinct_finals(&observer.statuses(id)), 1, "{id}");
    }
    assert_eq!(counts.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_embedded_broker_completes_queued_tasks_and_retains_statuses() {
    let port = free_port();
    let ledger = Ledger::new();
    let mut worker = Worker::with_config(|dir| {
        format!(
            r#"log_level = "debug"
[worker]
group_name = "emb"
worker_id = "emb-w1"
playbook_directory = "{playbooks}"
concurrency = 1
kill_grace = 1
ansible_playbook_path = "{ansible}"
state_dir = "{state}"

[broker]
enabled = true
listen = "127.0.0.1:{port}"
"#,
            playbooks = playbooks_dir().display(),
            ansible = ansible_playbook().display(),
            state = dir.join("state").display(),
        )
    });
    worker.wait_log("subscribed", DEADLINE);
    let observer = Observer::start(port, "emb").await;
    let before = unique("emb-before");
    observer
        .submit(ledger_request(&before, &ledger.path, 0))
        .await;
    observer.wait_final(&before, DEADLINE).await;
    let (running, queued) = one_running_and_queued(&observer, &ledger, "emb-run", 5).await;

    worker.kill();
    worker.restart();
    for id in &queued {
        let done = observer.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "success", "{id}: {done}");
    }
    // A new subscriber finds every recent task's final status retained by
    // the new broker, including those that ended before the crash.
    let fresh = Observer::start(port, "emb").await;
    for id in queued.iter().chain([&before, &running]) {
        let done = fresh.wait_final(id, DEADLINE).await;
        let expected = if id == &running { "failed" } else { "success" };
        assert_eq!(done["state"], expected, "{id}: {done}");
    }
    assert_eq!(
        fresh.wait_final(&running, DEADLINE).await["error_message"],
        INTERRUPTED
    );
    let counts = ledger_counts(&ledger.path);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(counts.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_restarts_during_a_batch_give_each_task_one_final() {
    let mut broker = Mosquitto::start();
    let worker = WorkerSetup::new("flaky", broker.port).start();
    let observer = Observer::start(broker.port, "flaky").await;
    let ledger = Ledger::new();
    let batch = unique("flaky");
    let ids: Vec<String> = (0..20).map(|n| format!("{batch}-{n}")).collect();
    for id in &ids {
        observer.submit(ledger_request(id, &ledger.path, 0)).await;
    }
    for id in &ids {
        observer.wait_state(id, "queued", DEADLINE).await;
    }
    let finished = || {
        ids.iter()
            .filter(|id| observer.statuses(id).iter().any(is_final))
            .count()
    };
    for restart in 1..=3 {
        // Each restart lands while tasks are still running.
        let target = (restart * 4).min(ids.len() - 1);
        assert!(wait_for(DEADLINE, || finished() >= target).await);
        broker.stop();
        wait_log_count(&worker, "broker connection failed", restart);
        broker.restart();
    }
    for id in &ids {
        let done = observer.wait_final(id, DEADLINE).await;
        assert_eq!(done["state"], "success", "{id}: {done}");
        assert_eq!(distinct_finals(&observer.statuses(id)), 1, "{id}");
    }
    let counts = ledger_counts(&ledger.path);
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_runs_once_even_after_a_restart() {
    let broker = Mosquitto::start();
    let mut worker = WorkerSetup::new("again", broker.port).start();
    let observer = Observer::start(broker.port, "again").await;
    let ledger = Ledger::new();
    let id = unique("again");
    let request = ledger_request(&id, &ledger.path, 0);
    observer.submit(request.clone()).await;
    observer.submit(request.clone()).await;
    let first = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(first["state"], "success", "{first}");
    wait_log_count(&worker, "admission=Duplicate", 1);

    worker.terminate();
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(0));
    worker.restart();
    // A stopping worker unsubscribes, so the broker drops what is published
    // before the new life subscribes again: wait for the subscription.
    wait_log_count(&worker, "subscribed to task requests", 2);
    observer.submit(request).await;
    wait_log_count(&worker, "admission=Duplicate", 2);
    // The final status was published again, unchanged.
    assert!(
        wait_for(DEADLINE, || observer
            .statuses(&id)
            .iter()
            .filter(|d| is_final(d))
            .count()
            >= 2)
        .await
    );
    assert_eq!(distinct_finals(&observer.statuses(&id)), 1);
    assert_eq!(ledger_counts(&ledger.path).get(&id), Some(&1));
}

/// A worker config against `port` with `state_dir`.
fn config_with_state(port: u16, state_dir: &Path) -> String {
    format!(
        r#"[worker]
group_name = "corrupt"
playbook_directory = "{}"
state_dir = "{}"
[mqtt]
host = "127.0.0.1"
port = {port}
"#,
        playbooks_dir().display(),
        state_dir.display(),
    )
}

#[test]
fn a_corrupt_or_unusable_state_dir_is_a_clear_startup_error() {
    let broker = Mosquitto::start();
    // A journal file that is not a database.
    let state = tempfile::TempDir::new().unwrap();
    std::fs::write(state.path().join("journal.sqlite"), vec![0x42; 16384]).unwrap();
    let mut corrupt = Worker::with_config(|_| config_with_state(broker.port, state.path()));
    assert_eq!(corrupt.wait_exit(DEADLINE), Some(2), "{}", corrupt.log());
    let log = corrupt.log();
    assert!(
        log.contains("task journal") && log.contains("not a database"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // A state dir that cannot be created (its parent is a file).
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let blocked = blocker.path().join("state");
    let mut unusable = Worker::with_config(|_| config_with_state(broker.port, &blocked));
    assert_eq!(unusable.wait_exit(DEADLINE), Some(2), "{}", unusable.log());
    let log = unusable.log();
    assert!(
        log.contains("cannot prepare") && log.contains("Not a directory"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

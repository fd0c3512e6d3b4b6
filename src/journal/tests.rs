//! Unit tests of the journal against real SQLite files in temp dirs.

mod delivery;

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::*;
use crate::model::{Inventory, StatusUpdate, TaskState};

/// The journal streams what it commits to a new stream; its first
/// subscriber's end.
fn subscribe(journal: &Journal) -> (ChangeStream, mpsc::UnboundedReceiver<StatusUpdate>) {
    let stream = ChangeStream::default();
    journal.stream_to(stream.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let adding = stream.clone();
    journal.then(move || adding.add(tx));
    (stream, rx)
}

fn spec(id: &str) -> TaskSpec {
    let mut spec = TaskSpec::with_defaults(
        id,
        PathBuf::from("/p/site.yml"),
        Inventory::Inline("localhost,".into()),
    );
    spec.extra_vars.insert("who".into(), "world".into());
    spec.timeout = Some(std::time::Duration::from_secs(90));
    spec
}

fn record(seq: u64, id: &str, state: TaskState) -> Record {
    Record {
        seq,
        status: TaskStatus::new(id, "w", state),
        spec: (state == TaskState::Queued).then(|| spec(id)),
        request: Some(RequestSummary {
            playbook: "site.yml".into(),
            inventory: "localhost,".into(),
            check_mode: false,
        }),
    }
}

#[tokio::test]
async fn changes_survive_a_reopen_and_finals_drop_their_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, stored) = Journal::open(&path).unwrap();
    assert!(stored.is_empty());
    journal.record(record(1, "a", TaskState::Queued));
    journal.record(record(2, "b", TaskState::Queued));
    journal.record(record(1, "a", TaskState::Running));
    journal.record(record(2, "b", TaskState::Running));
    journal.record(record(2, "b", TaskState::Success));
    journal.record(record(3, "c", TaskState::Queued));
    journal.close().await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(store::state_of(&conn, "a"), Some(("running".into(), true)));
    assert_eq!(store::state_of(&conn, "b"), Some(("success".into(), false)));
    let (_journal, stored) = Journal::open(&path).unwrap();
    let summary: Vec<_> = stored
        .iter()
        .map(|t| (t.seq, t.status.task_id.as_str(), t.status.state))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "a", TaskState::Running),
            (2, "b", TaskState::Success),
            (3, "c", TaskState::Queued)
        ]
    );
    let restored = stored[2].spec.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(restored, &spec("c"));
    assert!(stored[1].spec.is_none());
    assert_eq!(stored[1].request.as_ref().unwrap().playbook, "site.yml");
}

#[tokio::test]
async fn a_task_that_re_entered_under_its_id_keeps_its_new_place_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    journal.record(record(1, "a", TaskState::Failed));
    journal.record(record(2, "b", TaskState::Queued));
    journal.record(record(3, "a", TaskState::Queued));
    journal.record(record(3, "a", TaskState::Running));
    journal.close().await;
    let (_, stored) = Journal::open(&path).unwrap();
    let order: Vec<_> = stored
        .iter()
        .map(|t| (t.seq, t.status.task_id.as_str()))
        .collect();
    assert_eq!(order, [(2, "b"), (3, "a")]);
}

#[test]
fn a_status_change_writes_one_page_of_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let mut conn = store::open(&path).unwrap();
    let wal = dir.path().join(format!("{JOURNAL_FILE}-wal"));
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    let status = "{}".repeat(100);
    let queued: Vec<_> = (0..50)
        .map(|i| record(i, &format!("task-{i}"), TaskState::Queued))
        .collect();
    store::apply(
        &mut conn,
        queued.iter().map(|r| store::Write::Upsert(r, &status)),
    )
    .unwrap();
    let before = std::fs::metadata(&wal).unwrap().len();
    let running = record(20, "task-20", TaskState::Running);
    store::apply(
        &mut conn,
        std::iter::once(store::Write::Upsert(&running, &status)),
    )
    .unwrap();
    let written = std::fs::metadata(&wal).unwrap().len() - before;
    // A WAL frame is a 24-byte header and one page: the task's row alone.
    assert_eq!(written, page.unsigned_abs() + 24);
    assert_eq!(
        store::state_of(&conn, "task-20"),
        Some(("running".into(), true))
    );
}

#[tokio::test]
async fn forgotten_tasks_are_gone_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    journal.record(record(1, "old", TaskState::Failed));
    journal.record(record(2, "new", TaskState::Failed));
    journal.forget("old");
    journal.close().await;
    let (_, stored) = Journal::open(&path).unwrap();
    let ids: Vec<_> = stored.iter().map(|t| t.status.task_id.as_str()).collect();
    assert_eq!(ids, ["new"]);
}

#[tokio::test]
async fn the_streamed_json_is_the_status_document_the_row_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let (_stream, mut changes) = subscribe(&journal);
    let mut record = record(1, "a", TaskState::Running);
    record.status.error_message = Some("a \"quoted\" reason".into());
    journal.record(record);
    let mut relayed = TaskStatus::new("b", "w", TaskState::Queued);
    relayed.duration_seconds = Some(1.5);
    journal.relay(relayed);
    journal.flushed().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let row: String = conn
        .query_row("SELECT status FROM tasks WHERE task_id = 'a'", [], |row| {
            row.get(0)
        })
        .unwrap();
    let written = changes.try_recv().unwrap();
    assert_eq!(written.json, written.status.to_json());
    assert_eq!(written.json, row.as_bytes());
    let relayed = changes.try_recv().unwrap();
    assert_eq!(relayed.status.task_id, "b");
    assert_eq!(relayed.json, relayed.status.to_json());
}

#[tokio::test]
async fn subscribers_get_changes_in_order_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let (stream, mut changes) = subscribe(&journal);
    journal.record(record(1, "a", TaskState::Queued));
    journal.relay(TaskStatus::new("a", "w", TaskState::Queued));
    journal.record(record(1, "a", TaskState::Running));
    journal.flushed().await;
    // Everything handed over before `flushed` is on disk: a second
    // connection sees it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(store::state_of(&conn, "a"), Some(("running".into(), true)));
    let mut seen = vec![];
    while let Ok(update) = changes.try_recv() {
        seen.push(update.status.state);
    }
    use TaskState::*;
    assert_eq!(seen, [Queued, Queued, Running]);
    journal.then(move || stream.close());
    journal.flushed().await;
    assert!(changes.recv().await.is_none());
}

#[test]
fn a_file_that_is_not_a_journal_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert_eq!(err.path, path);
    assert!(err.to_string().contains("not a database"), "{err}");
}

#[test]
fn a_journal_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Journal::open(&path).unwrap_err().to_string();
    assert!(err.contains("newer version"), "{err}");
}

#[test]
fn the_journal_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let _journal = Journal::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

/// Makes every write to `tasks` fail, from a connection of its own, as a
/// full disk would; dropping the triggers is the space coming back.
const FAIL_WRITES: &str = "
CREATE TRIGGER fail_insert BEFORE INSERT ON tasks BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;
CREATE TRIGGER fail_update BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;
";
const ALLOW_WRITES: &str = "DROP TRIGGER fail_insert; DROP TRIGGER fail_update;";

#[tokio::test]
async fn a_failed_commit_holds_its_statuses_and_flushes_until_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let (_stream, mut changes) = subscribe(&journal);
    let mut health = journal.health();
    journal.record(record(1, "a", TaskState::Queued));
    journal.flushed().await;
    assert_eq!(changes.try_recv().unwrap().status.state, TaskState::Queued);

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch(FAIL_WRITES).unwrap();
    journal.record(record(1, "a", TaskState::Running));
    journal.record(record(1, "a", TaskState::Running));
    journal.record(record(1, "a", TaskState::Success));
    let flushed = tokio::spawn(journal.flushed());
    health.wait_for(JournalHealth::is_failing).await.unwrap();
    let reason = match &*health.borrow() {
        JournalHealth::Failing(reason) => reason.clone(),
        JournalHealth::Writable => unreachable!(),
    };
    assert!(reason.contains("disk full (test)"), "{reason}");
    // Nothing of the failed commit left, nor was its flush answered.
    assert!(changes.try_recv().is_err());
    assert!(!flushed.is_finished());
    assert_eq!(store::state_of(&other, "a"), Some(("queued".into(), true)));
    // A change handed over while failing waits behind the held ones.
    journal.record(record(2, "b", TaskState::Queued));

    other.execute_batch(ALLOW_WRITES).unwrap();
    flushed.await.unwrap();
    assert_eq!(*health.borrow(), JournalHealth::Writable);
    journal.flushed().await;
    let mut seen = vec![];
    while let Ok(StatusUpdate { status, .. }) = changes.try_recv() {
        seen.push((status.task_id, status.state));
    }
    use TaskState::*;
    let expected = |runs: usize| {
        let mut all = vec![("a".to_owned(), Running); runs];
        all.extend([("a".into(), Success), ("b".into(), Queued)]);
        all
    };
    // The second progress update may have been folded into the first.
    assert!(seen == expected(1) || seen == expected(2), "{seen:?}");
    assert_eq!(
        store::state_of(&other, "a"),
        Some(("success".into(), false))
    );
    assert_eq!(store::state_of(&other, "b"), Some(("queued".into(), true)));
}

#[tokio::test]
async fn closing_while_commits_fail_publishes_nothing_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let (_stream, mut changes) = subscribe(&journal);
    journal.record(record(1, "a", TaskState::Queued));
    journal.flushed().await;
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch(FAIL_WRITES).unwrap();
    journal.record(record(1, "a", TaskState::Failed));
    let mut health = journal.health();
    health.wait_for(JournalHealth::is_failing).await.unwrap();
    journal.close().await;
    let seen: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok())
        .map(|update| update.status.state)
        .collect();
    assert_eq!(seen, [TaskState::Queued]);
    assert_eq!(store::state_of(&other, "a"), Some(("queued".into(), true)));
}

fn running(id: &str, tasks_total: u64) -> Op {
    let mut status = TaskStatus::new(id, "w", TaskState::Running);
    status.counters.total = tasks_total;
    Op::Write(Box::new(Record {
        seq: 1,
        status,
        spec: None,
        request: None,
    }))
}

fn held(pending: &writer::Pending) -> Vec<(String, TaskState, u64)> {
    pending
        .ops()
        .map(|op| match op {
            Op::Write(record) => (
                record.status.task_id.clone(),
                record.status.state,
                record.status.counters.total,
            ),
            Op::Relay(status) => (status.task_id.clone(), status.state, u64::MAX),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn while_failing_a_progress_update_replaces_the_held_one_and_state_changes_stay() {
    use TaskState::*;
    let mut pending = writer::Pending::default();
    pending.push(Op::Write(Box::new(record(1, "a", Queued))), true);
    pending.push(running("a", 1), true);
    pending.push(running("b", 1), true);
    pending.push(running("a", 2), true);
    pending.push(running("a", 3), true);
    pending.push(
        Op::Relay(Box::new(TaskStatus::new("b", "w", Running))),
        true,
    );
    pending.push(running("b", 2), true);
    pending.push(Op::Write(Box::new(record(1, "a", Success))), true);
    pending.push(running("a", 4), true);
    let at = |id: &str, state, n| (id.to_owned(), state, n);
    assert_eq!(
        held(&pending),
        [
            at("a", Queued, 0),
            at("a", Running, 3),
            at("b", Running, 1),
            at("b", Running, u64::MAX),
            at("b", Running, 2),
            at("a", Success, 0),
            at("a", Running, 4),
        ]
    );
    // Without coalescing (commits succeed) every update is kept.
    let mut pending = writer::Pending::default();
    pending.push(running("a", 1), false);
    pending.push(running("a", 2), false);
    assert_eq!(pending.len(), 2);
}

/// Whether any of the journal's files holds `needle`.
fn journal_files_hold(path: &std::path::Path, needle: &str) -> Vec<String> {
    ["", "-wal", "-shm"]
        .into_iter()
        .filter(|suffix| {
            let file = format!("{}{suffix}", path.display());
            std::fs::read(&file).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .map(|suffix| format!("{JOURNAL_FILE}{suffix}"))
        .collect()
}

#[tokio::test]
async fn a_final_task_leaves_no_bytes_of_its_request_in_the_journal_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let secret = format!("secret-{:016x}", fastrand::u64(..));
    let mut queued = record(1, "a", TaskState::Queued);
    let spec = queued.spec.as_mut().unwrap();
    spec.extra_vars
        .insert("password".into(), secret.clone().into());
    journal.record(queued);
    journal.record(record(2, "b", TaskState::Queued));
    journal.flushed().await;
    assert!(
        !journal_files_hold(&path, &secret).is_empty(),
        "a queued task's request is journaled"
    );
    journal.record(record(1, "a", TaskState::Running));
    journal.record(record(1, "a", TaskState::Success));
    journal.flushed().await;
    let mut holding = vec![];
    let gone = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            holding = journal_files_hold(&path, &secret);
            if holding.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the request is still in {holding:?}");
    // The other task's request is still there for a restart.
    let (_, stored) = Journal::open(&path).unwrap();
    assert!(stored[1].spec.as_ref().unwrap().is_ok());
}

#[test]
fn finals_wake_the_checkpointer_once_per_truncate() {
    use std::time::Duration;
    let (asker, requests) = writer::truncate_requests();
    asker.ask();
    assert!(requests.wait(Duration::ZERO).is_ok());
    // The checkpointer has its request and waits for the truncate's time:
    // the finals committed meanwhile must not wake it again.
    asker.ask();
    asker.ask();
    assert!(
        requests.wait(Duration::ZERO).is_err(),
        "finals before the truncate woke the checkpointer again"
    );
    requests.taken();
    asker.ask();
    assert!(
        requests.wait(Duration::ZERO).is_ok(),
        "a final after the truncate started asks again"
    );
}

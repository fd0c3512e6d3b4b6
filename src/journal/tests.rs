//! Unit tests of the journal against real SQLite files in temp dirs.

use std::path::PathBuf;

use super::*;
use crate::model::{Inventory, TaskState};

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
async fn subscribers_get_changes_in_order_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let mut changes = journal.subscribe();
    journal.record(record(1, "a", TaskState::Queued));
    journal.relay(TaskStatus::new("a", "w", TaskState::Queued));
    journal.record(record(1, "a", TaskState::Running));
    journal.flushed().await;
    // Everything handed over before `flushed` is on disk: a second
    // connection sees it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(store::state_of(&conn, "a"), Some(("running".into(), true)));
    let mut seen = vec![];
    while let Ok(status) = changes.try_recv() {
        seen.push(status.state);
    }
    use TaskState::*;
    assert_eq!(seen, [Queued, Queued, Running]);
    journal.close_subscribers();
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

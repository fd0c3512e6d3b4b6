//! Delivery receipts in the journal, and the schema 1 file they upgrade.

use super::*;

/// A final status of `id`, completed `at` milliseconds after the epoch.
fn final_record(seq: u64, id: &str, state: TaskState, at: i64) -> Record {
    let mut record = record(seq, id, state);
    record.status.completed_at = chrono::DateTime::from_timestamp_millis(at);
    record
}

/// Whether each task was delivered, as a reopened journal has it.
fn delivered_after_reopen(path: &std::path::Path) -> Vec<(String, bool)> {
    let (_, stored) = Journal::open(path).unwrap();
    stored
        .into_iter()
        .map(|t| (t.status.task_id, t.delivered))
        .collect()
}

#[tokio::test]
async fn a_receipt_survives_a_reopen_and_a_new_status_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let done = final_record(1, "a", TaskState::Success, 1_000);
    journal.record(done.clone());
    journal.record(final_record(2, "b", TaskState::Failed, 2_000));
    journal.delivered(&done.status);
    journal.close().await;
    let at = |id: &str, delivered| (id.to_owned(), delivered);
    assert_eq!(
        delivered_after_reopen(&path),
        [at("a", true), at("b", false)]
    );

    let (journal, _) = Journal::open(&path).unwrap();
    // Whatever the row held, a newer status of the task is not delivered.
    journal.record(record(1, "a", TaskState::Queued));
    journal.close().await;
    assert_eq!(
        delivered_after_reopen(&path),
        [at("a", false), at("b", false)]
    );
}

#[tokio::test]
async fn a_receipt_for_an_older_or_unfinished_status_marks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let older = final_record(1, "a", TaskState::Failed, 1_000);
    let newer = final_record(1, "a", TaskState::Failed, 1_001);
    journal.record(older.clone());
    journal.record(newer.clone());
    journal.delivered(&older.status);
    let mut other_state = newer.status.clone();
    other_state.state = TaskState::Success;
    journal.delivered(&other_state);
    journal.record(record(2, "b", TaskState::Running));
    journal.delivered(&record(2, "b", TaskState::Running).status);
    journal.flushed().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(store::delivered_of(&conn, "a"), Some(false));
    assert_eq!(store::delivered_of(&conn, "b"), Some(false));
    journal.delivered(&newer.status);
    journal.flushed().await;
    assert_eq!(store::delivered_of(&conn, "a"), Some(true));
}

#[tokio::test]
async fn a_delivered_task_is_still_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let (journal, _) = Journal::open(&path).unwrap();
    let old = final_record(1, "old", TaskState::Failed, 1_000);
    journal.record(old.clone());
    journal.record(final_record(2, "new", TaskState::Failed, 2_000));
    journal.delivered(&old.status);
    journal.forget("old");
    // A receipt that comes after the row went changes nothing.
    journal.delivered(&old.status);
    journal.close().await;
    assert_eq!(delivered_after_reopen(&path), [("new".to_owned(), false)]);
}

/// The schema of version 1, before delivery receipts.
const SCHEMA_1: &str = "
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL,
    state   TEXT NOT NULL,
    status  TEXT NOT NULL,
    spec    TEXT,
    request TEXT
);
CREATE INDEX tasks_by_seq ON tasks(seq);
PRAGMA user_version = 1;
";

#[tokio::test]
async fn a_schema_1_journal_opens_with_nothing_delivered_and_takes_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JOURNAL_FILE);
    let done = final_record(1, "done", TaskState::Success, 1_000);
    let waiting = record(2, "waiting", TaskState::Queued);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        let insert = "INSERT INTO tasks (task_id, seq, state, status, spec, request) \
                      VALUES (?1, ?2, ?3, ?4, ?5, NULL)";
        for r in [&done, &waiting] {
            let spec = r.spec.as_ref().map(|s| serde_json::to_string(s).unwrap());
            let status = serde_json::to_string(&r.status).unwrap();
            let seq = i64::try_from(r.seq).unwrap();
            let row = (
                &r.status.task_id,
                seq,
                r.status.state.as_str(),
                status,
                spec,
            );
            conn.execute(insert, row).unwrap();
        }
    }
    let (journal, stored) = Journal::open(&path).unwrap();
    let read: Vec<_> = stored
        .iter()
        .map(|t| (t.status.task_id.as_str(), t.status.state, t.delivered))
        .collect();
    assert_eq!(
        read,
        [
            ("done", TaskState::Success, false),
            ("waiting", TaskState::Queued, false)
        ]
    );
    assert_eq!(
        stored[1].spec.as_ref().unwrap().as_ref().unwrap(),
        &spec("waiting")
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
    journal.delivered(&stored[0].status);
    journal.close().await;
    assert_eq!(
        delivered_after_reopen(&path),
        [("done".to_owned(), true), ("waiting".to_owned(), false)]
    );
}

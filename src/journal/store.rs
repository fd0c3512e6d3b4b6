//! The SQLite side of the journal: opening (WAL, schema), loading what a
//! previous process left, and applying one batch of writes in a transaction.
//!
//! One row per task holds its newest status document, its request summary,
//! whether that status was delivered (only ever set for a final one) and,
//! while the task is queued or running, the checked request itself (so a
//! queued task can run after a restart). The request, which may carry
//! secrets in `extra_vars`, is dropped from the row once the task is final,
//! and `secure_delete` makes SQLite overwrite the bytes it frees (in the page
//! and in pages it frees) instead of leaving them behind; the file is created
//! `0600`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::{JournalError, Receipt, Record, StoredTask};
use crate::model::TaskSpec;

/// Schema version kept in `PRAGMA user_version`: 1 had no `delivered`.
const SCHEMA_VERSION: i64 = 2;

/// The schema of a new file.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id   TEXT PRIMARY KEY NOT NULL,
    seq       INTEGER NOT NULL,
    state     TEXT NOT NULL,
    status    TEXT NOT NULL,
    spec      TEXT,
    request   TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_seq ON tasks(seq);
";

/// A new status is not delivered yet, whatever the one before was.
const UPSERT: &str = "
INSERT INTO tasks (task_id, seq, state, status, spec, request, delivered)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)
ON CONFLICT (task_id) DO UPDATE SET
    state = excluded.state,
    status = excluded.status,
    spec = CASE WHEN ?7 THEN NULL ELSE coalesce(excluded.spec, tasks.spec) END,
    request = coalesce(excluded.request, tasks.request),
    delivered = 0
";

/// A receipt marks the row only while it holds the status received: an old
/// receipt never marks a newer status.
/// A task that re-entered the table under its id takes its new place. Kept
/// out of [`UPSERT`], where assigning `seq` would rewrite its index page on
/// every status change (one more page written to the WAL per commit) even
/// though the number almost never changes.
const RENUMBER: &str = "UPDATE tasks SET seq = ?2 WHERE task_id = ?1 AND seq <> ?2";

const MARK_DELIVERED: &str = "
UPDATE tasks SET delivered = 1
WHERE task_id = ?1 AND state = ?2 AND json_extract(status, '$.completed_at') = ?3
";

/// Opens (creating if needed) the journal file and checks that it is one.
pub(super) fn open(path: &Path) -> Result<Connection, JournalError> {
    let fail = |reason: String| JournalError {
        path: path.to_path_buf(),
        reason,
    };
    // Created here so that it (and SQLite's -wal file, which copies its
    // mode) is private: queued requests may carry secrets.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let conn = connect(path).map_err(|e| fail(e.to_string()))?;
    let setup = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Durable across a crash of this process (the WAL is in the OS's
        // hands at commit); a power loss may lose the newest commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints (copying the WAL into the file, with fsyncs) would
        // stall a commit, and the acknowledgements waiting on it, for tens
        // of milliseconds: `checkpoint` runs them from another connection.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Once checkpointed, a grown WAL file is cut back to this size.
        conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
        // A cleared request must not survive in free space or free pages.
        conn.pragma_update(None, "secure_delete", true)?;
        // Rows are appended and changed while recent, and read whole only
        // at start: 1 MiB of page cache (instead of 2) holds what is hot.
        conn.pragma_update(None, "cache_size", -1024)?;
        conn.execute_batch(SCHEMA)?;
        conn.query_row("PRAGMA user_version", [], |row| row.get(0))
    };
    match setup(&conn) {
        // A new file (`SCHEMA` made the current table), or one of schema 1.
        Ok(version @ (0 | 1)) => {
            upgrade(&conn).map_err(|e| fail(format!("cannot upgrade schema {version}: {e}")))?
        }
        Ok(SCHEMA_VERSION) => {}
        Ok(other) => {
            return Err(fail(format!(
                "written by a newer version (schema {other}, this one reads {SCHEMA_VERSION})"
            )));
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            return Err(fail(
                "in use by another process (is another worker running with this state_dir?)".into(),
            ));
        }
        Err(e) => return Err(fail(e.to_string())),
    }
    Ok(conn)
}

/// A connection to the journal through SQLite's `unix-excl` VFS: the first
/// connection takes a lock on the file that only this process's connections
/// share, and the WAL index lives in this process's memory instead of a
/// `-shm` file. So a commit takes no file locks (`fcntl`) of its own, and
/// another process cannot open the journal while this one holds it.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(path, OpenFlags::default(), c"unix-excl")
}

/// Brings the file to [`SCHEMA_VERSION`] in one transaction. Schema 1 had
/// no `delivered`: nothing in it is known to be delivered, so every final
/// status is sent again once.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let has_delivered: bool = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('tasks') WHERE name = 'delivered'",
        [],
        |row| row.get(0),
    )?;
    if !has_delivered {
        tx.execute_batch("ALTER TABLE tasks ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0")?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// A second connection for checkpoints. It never waits for the writer
/// (busy timeout 0): a truncating checkpoint that finds the writer busy
/// gives up at once and is tried again a moment later, instead of holding
/// the writer's next commit (and the acknowledgements waiting on it) behind
/// a queue of busy-handler sleeps.
pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, JournalError> {
    let conn = connect(path).and_then(|conn| {
        conn.busy_timeout(std::time::Duration::ZERO)?;
        Ok(conn)
    });
    conn.map_err(|e| JournalError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Copies the WAL into the database file without blocking the writer
/// (a passive checkpoint, on a connection of its own).
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Copies the whole WAL into the database file and truncates the WAL to
/// zero bytes, so that no older version of a page (a cleared request, say)
/// is left in it. A passive checkpoint first does the bulk of the copying
/// without locking the writer out, so the truncating one holds it only
/// briefly. False if it could not finish (the writer was busy), to be tried
/// again.
pub(super) fn checkpoint_truncate(conn: &Connection) -> rusqlite::Result<bool> {
    checkpoint(conn)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    })
    .map(|busy| busy == 0)
}

/// Every task the journal holds, oldest first.
pub(super) fn load(conn: &Connection, path: &Path) -> Result<Vec<StoredTask>, JournalError> {
    let fail = |reason: String| JournalError {
        path: path.to_path_buf(),
        reason,
    };
    let mut statement = conn
        .prepare("SELECT task_id, seq, status, spec, request, delivered FROM tasks ORDER BY seq")
        .map_err(|e| fail(e.to_string()))?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, bool>(5)?,
            ))
        })
        .map_err(|e| fail(e.to_string()))?;
    let mut tasks = Vec::new();
    for row in rows {
        let (task_id, seq, status, spec, request, delivered) =
            row.map_err(|e| fail(e.to_string()))?;
        let status = serde_json::from_str(&status)
            .map_err(|e| fail(format!("task {task_id}: unreadable status: {e}")))?;
        // A request this version cannot read is reported to the table, which
        // ends the task instead of refusing to start.
        let spec = spec.map(|spec| {
            serde_json::from_str::<TaskSpec>(&spec).map_err(|e| format!("unreadable request: {e}"))
        });
        let request = request.and_then(|request| serde_json::from_str(&request).ok());
        tasks.push(StoredTask {
            seq: u64::try_from(seq).unwrap_or(0),
            status,
            spec,
            request,
            delivered,
        });
    }
    Ok(tasks)
}

/// One change to apply.
pub(super) enum Write<'a> {
    /// Insert or update a task's row; the status as JSON.
    Upsert(&'a Record, &'a str),
    /// Delete a task's row (it left the table's history).
    Forget(&'a str),
    /// Mark a task's final status delivered.
    Delivered(&'a Receipt),
}

/// Applies `writes` in one transaction.
pub(super) fn apply<'a>(
    conn: &mut Connection,
    writes: impl Iterator<Item = Write<'a>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(UPSERT)?;
        let mut renumber = tx.prepare_cached(RENUMBER)?;
        let mut forget = tx.prepare_cached("DELETE FROM tasks WHERE task_id = ?1")?;
        let mut delivered = tx.prepare_cached(MARK_DELIVERED)?;
        for write in writes {
            match write {
                Write::Upsert(record, status) => {
                    let spec = record.spec.as_ref().and_then(|spec| {
                        serde_json::to_string(spec)
                            .inspect_err(|e| {
                                tracing::error!(
                                    task_id = %spec.task_id,
                                    "cannot journal the request: {e}"
                                );
                            })
                            .ok()
                    });
                    let request = record
                        .request
                        .as_ref()
                        .map(|r| serde_json::to_string(r).expect("a summary always serializes"));
                    let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
                    upsert.execute(params![
                        record.status.task_id,
                        seq,
                        record.status.state.as_str(),
                        status,
                        spec,
                        request,
                        record.status.state.is_final(),
                    ])?;
                    renumber.execute(params![record.status.task_id, seq])?;
                }
                Write::Forget(task_id) => {
                    forget.execute(params![task_id])?;
                }
                Write::Delivered(receipt) => {
                    delivered.execute(params![
                        receipt.task_id,
                        receipt.state.as_str(),
                        receipt.completed_at,
                    ])?;
                }
            }
        }
    }
    tx.commit()
}

/// The stored state of one task, for tests.
#[cfg(test)]
pub(super) fn state_of(conn: &Connection, task_id: &str) -> Option<(String, bool)> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT state, spec IS NOT NULL FROM tasks WHERE task_id = ?1",
        params![task_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .unwrap()
}

/// Whether a task's row is marked delivered, for tests.
#[cfg(test)]
pub(super) fn delivered_of(conn: &Connection, task_id: &str) -> Option<bool> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT delivered FROM tasks WHERE task_id = ?1",
        params![task_id],
        |row| row.get(0),
    )
    .optional()
    .unwrap()
}

//! The durable task journal: every accepted task's request, its state changes
//! and its final status, in a SQLite file (WAL) in `worker.state_dir`, so a
//! restarted worker knows what it held (restart recovery in
//! [`crate::table::TaskTable::restore`]).
//!
//! The task table hands each change to the journal as it happens; a dedicated
//! thread writes whatever has accumulated in one transaction (so a burst of
//! changes costs one commit, and nothing blocks the async runtime), then
//! streams the committed statuses, in order, to the table's
//! [`ChangeStream`] (whose subscriber is the transport's status sink). A
//! status therefore leaves the process only once it is on disk.
//! [`Journal::flushed`] resolves once everything handed over before it is
//! committed; the MQTT side acknowledges a task request only then.
//!
//! A task's row also says whether its final status was delivered (a sink's
//! receipt, [`Journal::delivered`]); any newer status of the task clears
//! that, so a restart knows what to send again.
//!
//! A commit that fails (the state dir's file system is full, say) is held and
//! retried until it succeeds (`writer`): no status of it leaves the process
//! meanwhile, and [`Journal::health`] says the journal is failing and why, so
//! the worker stops taking requests and `/readyz` fails until it recovers.
//!
//! Durability: committed changes survive a crash of this process; with
//! `synchronous = NORMAL` a power loss may lose the newest commits.
//!
//! Secrets: a request may carry secrets in `extra_vars`; once its task is
//! final the row drops it, SQLite overwrites the freed bytes
//! (`secure_delete`), and a truncating checkpoint soon after removes the old
//! copies from the WAL, so the request's bytes are in none of the journal's
//! files within seconds of the final status.
//!
//! It does not decide anything: what a restored task becomes is the table's
//! business.

mod store;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;

use tokio::sync::{oneshot, watch};

use crate::model::{TaskSpec, TaskState, TaskStatus};
use crate::table::ChangeStream;
use crate::table::view::RequestSummary;

/// File name of the journal inside `worker.state_dir`.
pub const JOURNAL_FILE: &str = "journal.sqlite";

/// The journal could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("task journal {}: {reason}", path.display())]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Whether the journal can record changes, as its writer last found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JournalHealth {
    /// The last commit succeeded.
    #[default]
    Writable,
    /// Commits fail (SQLite's reason, e.g. "database or disk is full"); the
    /// changes wait in memory and are retried, and none of their statuses
    /// leaves the process until one succeeds.
    Failing(String),
}

impl JournalHealth {
    /// True while commits fail.
    pub fn is_failing(&self) -> bool {
        matches!(self, JournalHealth::Failing(_))
    }
}

/// One change of one task, as the table hands it over.
#[derive(Debug, Clone)]
pub struct Record {
    /// The table's insertion order of the task (kept across restarts).
    pub seq: u64,
    /// The task's new status.
    pub status: TaskStatus,
    /// The checked request, when the task (re-)enters the queue.
    pub spec: Option<TaskSpec>,
    /// What was asked for, for the dashboard.
    pub request: Option<RequestSummary>,
}

/// A task as a previous process left it.
#[derive(Debug)]
pub struct StoredTask {
    /// Insertion order.
    pub seq: u64,
    /// Its newest status.
    pub status: TaskStatus,
    /// The request, while the task was not final (an error if it could not
    /// be read back).
    pub spec: Option<Result<TaskSpec, String>>,
    /// What was asked for.
    pub request: Option<RequestSummary>,
    /// Its final status was delivered (never true for another status).
    pub delivered: bool,
}

/// A final status its destination accepted, as the journal checks it
/// against the row.
#[derive(Debug)]
struct Receipt {
    task_id: String,
    state: TaskState,
    /// As the status document has it (RFC 3339, milliseconds).
    completed_at: String,
}

/// Something to do on the writer thread once everything handed over before
/// it is committed and streamed.
struct Step(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Step")
    }
}

#[derive(Debug)]
enum Op {
    Write(Box<Record>),
    /// Stream only: a status that did not change (a re-published duplicate).
    Relay(Box<TaskStatus>),
    Forget(String),
    Delivered(Box<Receipt>),
    StreamTo(ChangeStream),
    Then(Step),
    Close(oneshot::Sender<()>),
}

/// Handle to the journal's writer thread; clones share it.
#[derive(Clone, Debug)]
pub struct Journal {
    ops: std_mpsc::Sender<Op>,
    health: watch::Receiver<JournalHealth>,
}

impl Journal {
    /// Opens the journal at `path` and returns what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Vec<StoredTask>), JournalError> {
        let mut conn = store::open(path)?;
        let stored = store::load(&conn, path)?;
        let checkpoints = store::open_checkpointer(path)?;
        let (ops, rx) = std_mpsc::channel();
        // One request is enough: the checkpointer truncates once for however
        // many finals came before it got to it. The writer dropping its end
        // ends the checkpointer.
        let (truncate, truncate_requests) = writer::truncate_requests();
        let (health_tx, health) = watch::channel(JournalHealth::Writable);
        let file = path.to_path_buf();
        let spawned = thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer::write_loop(&mut conn, &file, rx, health_tx, truncate))
            .and_then(|_| {
                thread::Builder::new()
                    .name("journal-checkpoint".into())
                    .spawn(move || writer::checkpoint_loop(&checkpoints, &truncate_requests))
            });
        spawned.map_err(|e| JournalError {
            path: path.to_path_buf(),
            reason: format!("cannot start the journal threads: {e}"),
        })?;
        Ok((Journal { ops, health }, stored))
    }

    /// Committed statuses go to `stream` from here on (the table's; set
    /// when the table is made, before any change).
    pub fn stream_to(&self, stream: ChangeStream) {
        self.send(Op::StreamTo(stream));
    }

    /// Records a change; it is committed with the next batch and then
    /// streamed.
    pub fn record(&self, record: Record) {
        self.send(Op::Write(Box::new(record)));
    }

    /// Streams a status in order, without writing it.
    pub fn relay(&self, status: TaskStatus) {
        self.send(Op::Relay(Box::new(status)));
    }

    /// Records that the final `status` was delivered, with the next batch;
    /// only if the task's row still holds that status (same state and
    /// completion time). A status that is not final is ignored.
    pub fn delivered(&self, status: &TaskStatus) {
        let Some(completed_at) = status.completed_at.filter(|_| status.state.is_final()) else {
            return;
        };
        self.send(Op::Delivered(Box::new(Receipt {
            task_id: status.task_id.clone(),
            state: status.state,
            completed_at: completed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })));
    }

    /// Deletes a task's record (it left the history).
    pub fn forget(&self, task_id: &str) {
        self.send(Op::Forget(task_id.to_owned()));
    }

    /// Resolves once every change handed over before this call is committed
    /// (while commits fail, that waits; at shutdown it resolves either way).
    pub fn flushed(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.then(move || {
            let _ = tx.send(());
        });
        async move {
            // Also resolves when the step is dropped, never run.
            let _ = rx.await;
        }
    }

    /// Runs `step` on the writer thread once every change handed over
    /// before this call is committed and streamed (not at all if the
    /// journal stops first): how the table subscribes to and closes its
    /// stream in line with its changes.
    pub fn then(&self, step: impl FnOnce() + Send + 'static) {
        self.send(Op::Then(Step(Box::new(step))));
    }

    /// Whether commits succeed, as it changes.
    pub fn health(&self) -> watch::Receiver<JournalHealth> {
        self.health.clone()
    }

    /// Commits what is pending and stops the writer thread (giving up on
    /// what cannot be committed: those statuses are never published).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Close(tx));
        let _ = rx.await;
    }

    fn send(&self, op: Op) {
        // The thread only ends on `close`; later changes have nowhere to go.
        let _ = self.ops.send(op);
    }
}

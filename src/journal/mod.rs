//! The durable task journal: every accepted task's request, its state changes
//! and its final status, in a SQLite file (WAL) in `worker.state_dir`, so a
//! restarted worker knows what it held (restart recovery in
//! [`crate::table::TaskTable::restore`]).
//!
//! The task table hands each change to the journal as it happens; a dedicated
//! thread writes whatever has accumulated in one transaction (so a burst of
//! changes costs one commit, and nothing blocks the async runtime), then
//! forwards the committed statuses, in order, to its subscribers: the MQTT
//! status publisher. A status therefore leaves the process only once it is on
//! disk. [`Journal::flushed`] resolves once everything handed over before it
//! is committed; the MQTT side acknowledges a task request only then.
//!
//! Durability: committed changes survive a crash of this process; with
//! `synchronous = NORMAL` a power loss may lose the newest commits.
//!
//! It does not decide anything: what a restored task becomes is the table's
//! business.

mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::model::{TaskSpec, TaskStatus};
use crate::table::view::RequestSummary;

/// File name of the journal inside `worker.state_dir`.
pub const JOURNAL_FILE: &str = "journal.sqlite";
/// Most changes written in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The journal could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("task journal {}: {reason}", path.display())]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
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
}

#[derive(Debug)]
enum Op {
    Write(Box<Record>),
    /// Forward only: a status that did not change (a re-published duplicate).
    Relay(Box<TaskStatus>),
    Forget(String),
    Flush(oneshot::Sender<()>),
    Subscribe(mpsc::UnboundedSender<TaskStatus>),
    CloseSubscribers,
    Close(oneshot::Sender<()>),
}

/// Handle to the journal's writer thread; clones share it.
#[derive(Clone, Debug)]
pub struct Journal {
    ops: std_mpsc::Sender<Op>,
}

impl Journal {
    /// Opens the journal at `path` and returns what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Vec<StoredTask>), JournalError> {
        let mut conn = store::open(path)?;
        let stored = store::load(&conn, path)?;
        let checkpoints = rusqlite::Connection::open(path).map_err(|e| JournalError {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (ops, rx) = std_mpsc::channel();
        let (writer_alive, writer_gone) = std_mpsc::channel::<()>();
        let file = path.to_path_buf();
        let spawned = thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                write_loop(&mut conn, &file, rx);
                drop(writer_alive);
            })
            .and_then(|_| {
                thread::Builder::new()
                    .name("journal-checkpoint".into())
                    .spawn(move || checkpoint_loop(&checkpoints, &writer_gone))
            });
        spawned.map_err(|e| JournalError {
            path: path.to_path_buf(),
            reason: format!("cannot start the journal threads: {e}"),
        })?;
        Ok((Journal { ops }, stored))
    }

    /// Records a change; it is committed with the next batch and then
    /// forwarded to the subscribers.
    pub fn record(&self, record: Record) {
        self.send(Op::Write(Box::new(record)));
    }

    /// Forwards a status to the subscribers in order, without writing it.
    pub fn relay(&self, status: TaskStatus) {
        self.send(Op::Relay(Box::new(status)));
    }

    /// Deletes a task's record (it left the history).
    pub fn forget(&self, task_id: &str) {
        self.send(Op::Forget(task_id.to_owned()));
    }

    /// Resolves once every change handed over before this call is committed
    /// (or its commit failed, which is logged).
    pub fn flushed(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        async move {
            let _ = rx.await;
        }
    }

    /// Every committed status from now on, in order.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<TaskStatus> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Op::Subscribe(tx));
        rx
    }

    /// Ends the subscribers' streams after what was handed over so far.
    pub fn close_subscribers(&self) {
        self.send(Op::CloseSubscribers);
    }

    /// Commits what is pending and stops the writer thread.
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

fn write_loop(conn: &mut rusqlite::Connection, path: &Path, ops: std_mpsc::Receiver<Op>) {
    let mut subscribers: Vec<mpsc::UnboundedSender<TaskStatus>> = Vec::new();
    let mut failing = false;
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let writes = batch.iter().filter_map(|op| match op {
            Op::Write(record) => Some(store::Write::Upsert(record)),
            Op::Forget(task_id) => Some(store::Write::Forget(task_id)),
            _ => None,
        });
        match store::apply(conn, writes) {
            Ok(()) if failing => {
                tracing::info!("the task journal {} is writable again", path.display());
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                // The tasks keep running; only their restart recovery is lost.
                tracing::error!("cannot write the task journal {}: {e}", path.display());
                failing = true;
            }
        }
        let mut close = None;
        for op in batch {
            match op {
                Op::Write(record) => forward(&mut subscribers, record.status),
                Op::Relay(status) => forward(&mut subscribers, *status),
                Op::Forget(_) => {}
                Op::Flush(done) => {
                    let _ = done.send(());
                }
                Op::Subscribe(subscriber) => subscribers.push(subscriber),
                Op::CloseSubscribers => subscribers.clear(),
                Op::Close(done) => close = Some(done),
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// Checkpoints every [`CHECKPOINT_EVERY`] until the writer thread ended.
fn checkpoint_loop(conn: &rusqlite::Connection, writer_gone: &std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = store::checkpoint(conn) {
            tracing::warn!("cannot checkpoint the task journal: {e}");
        }
    }
}

fn forward(subscribers: &mut Vec<mpsc::UnboundedSender<TaskStatus>>, status: TaskStatus) {
    if let [only] = subscribers.as_slice() {
        if only.send(status).is_err() {
            subscribers.clear();
        }
        return;
    }
    subscribers.retain(|subscriber| subscriber.send(status.clone()).is_ok());
}

//! The journal's two threads: the writer, which commits the changes the table
//! hands over and only then streams them, and the checkpointer, which copies
//! the WAL into the database file and cuts the WAL back to nothing soon after
//! a request was cleared.
//!
//! When a commit fails (a full disk, most often), nothing of it leaves the
//! process: the changes are held, in order, and retried with a capped
//! backoff while new ones queue up behind them; flush waiters (the MQTT
//! acknowledgements) keep waiting; the health watch says why. Once a commit
//! succeeds, everything held is streamed in order. While held, a running
//! task's progress update replaces its previous one, so what waits in memory
//! is about one entry per state change of the tasks the table holds, however
//! long the failure lasts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{JournalHealth, Op, store};

use crate::model::{StatusUpdate, TaskState};
use crate::table::ChangeStream;

/// Most changes taken from the channel per commit attempt.
const MAX_BATCH: usize = 4096;
/// First wait before retrying a failed commit; doubles up to [`RETRY_CAP`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two attempts: how late the journal notices that
/// space came back.
const RETRY_CAP: Duration = Duration::from_secs(2);
/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Least time between two truncating checkpoints: a burst of finished tasks
/// pays for one, not for one each.
const TRUNCATE_GAP: Duration = Duration::from_secs(1);

/// Changes taken from the channel and not yet committed and streamed, in
/// the order they were handed over.
#[derive(Default)]
pub(super) struct Pending {
    held: Vec<Held>,
    /// While commits fail: where each task's newest change waits, so that a
    /// progress update can replace the one before it.
    newest: HashMap<String, usize>,
}

/// A change waiting, with its status serialised (a write or a relay): the
/// same JSON goes into the row and to the stream.
struct Held {
    op: Op,
    json: Option<String>,
}

impl Held {
    fn new(op: Op) -> Self {
        let status = match &op {
            Op::Write(record) => Some(&record.status),
            Op::Relay(status) => Some(&**status),
            _ => None,
        };
        let json =
            status.map(|status| serde_json::to_string(status).expect("a status always serializes"));
        Held { op, json }
    }
}

impl Pending {
    /// Appends `op`; with `coalesce`, a running task's progress update
    /// replaces its previous one still waiting here (in its place: nothing
    /// of that task lies between them).
    pub(super) fn push(&mut self, op: Op, coalesce: bool) {
        if !coalesce {
            self.held.push(Held::new(op));
            return;
        }
        let task_id = match &op {
            Op::Write(record) => Some(record.status.task_id.clone()),
            Op::Relay(status) => Some(status.task_id.clone()),
            Op::Forget(task_id) => Some(task_id.clone()),
            Op::Delivered(receipt) => Some(receipt.task_id.clone()),
            _ => None,
        };
        let Some(task_id) = task_id else {
            self.held.push(Held::new(op));
            return;
        };
        if let Op::Write(new) = &op
            && let Some(&at) = self.newest.get(&task_id)
            && let Op::Write(old) = &self.held[at].op
            && new.status.state == TaskState::Running
            && old.status.state == TaskState::Running
        {
            // A progress update carries neither the request nor its summary
            // (`table::stream`), so the newer one says all the older did.
            self.held[at] = Held::new(op);
            return;
        }
        self.newest.insert(task_id, self.held.len());
        self.held.push(Held::new(op));
    }

    /// What waits, in order.
    #[cfg(test)]
    pub(super) fn ops(&self) -> impl Iterator<Item = &Op> {
        self.held.iter().map(|held| &held.op)
    }

    /// Nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many changes wait.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// The process is stopping: the writer must not wait any longer.
    fn closing(&self) -> bool {
        self.held.iter().any(|held| matches!(held.op, Op::Close(_)))
    }

    /// The writes to commit, in order.
    fn writes(&self) -> impl Iterator<Item = store::Write<'_>> {
        self.held
            .iter()
            .filter_map(|held| match (&held.op, &held.json) {
                (Op::Write(record), Some(json)) => Some(store::Write::Upsert(record, json)),
                (Op::Forget(task_id), _) => Some(store::Write::Forget(task_id)),
                (Op::Delivered(receipt), _) => Some(store::Write::Delivered(receipt)),
                _ => None,
            })
    }

    /// Whether committing these drops a request from the journal (a task
    /// became final, or its row went).
    fn clears_requests(&self) -> bool {
        self.held.iter().any(|held| match &held.op {
            Op::Write(record) => record.status.state.is_final(),
            Op::Forget(_) => true,
            _ => false,
        })
    }

    /// Hands everything on in order, now that it is committed (statuses to
    /// `stream`, steps run); returns the close request, if one came.
    fn forward(&mut self, stream: &mut ChangeStream) -> Option<oneshot::Sender<()>> {
        self.newest.clear();
        let mut close = None;
        for Held { op, json } in self.held.drain(..) {
            // `Held::new` serialised every write and relay.
            let json = || Bytes::from(json.expect("a held status has its JSON"));
            match op {
                Op::Write(record) => stream.send(StatusUpdate {
                    status: record.status,
                    json: json(),
                }),
                Op::Relay(status) => stream.send(StatusUpdate {
                    status: *status,
                    json: json(),
                }),
                Op::Forget(_) | Op::Delivered(_) => {}
                Op::StreamTo(to) => *stream = to,
                Op::Then(step) => (step.0)(),
                Op::Close(done) => close = Some(done),
            }
        }
        close
    }

    /// The process stops with these never committed: they are dropped (no
    /// status leaves unjournaled); only the close request is answered.
    fn abandon(&mut self) -> Option<oneshot::Sender<()>> {
        self.newest.clear();
        self.held.drain(..).find_map(|held| match held.op {
            Op::Close(done) => Some(done),
            _ => None,
        })
    }
}

/// The writer thread: commits whatever accumulated, streams it once
/// committed, holds and retries it while commits fail. Ends on `close`, or
/// when every handle is gone.
pub(super) fn write_loop(
    conn: &mut rusqlite::Connection,
    path: &Path,
    ops: std_mpsc::Receiver<Op>,
    health: watch::Sender<JournalHealth>,
    truncate: TruncateAsker,
) {
    let mut pending = Pending::default();
    // Nobody listens until the table hands over its stream.
    let mut stream = ChangeStream::default();
    let mut retry = RETRY_FIRST;
    let mut handles_gone = false;
    loop {
        let failing = health.borrow().is_failing();
        if pending.is_empty() {
            match ops.recv() {
                Ok(op) => pending.push(op, false),
                Err(_) => return,
            }
        } else if failing && !pending.closing() {
            // Wait before the next attempt, still taking changes in, so that
            // they coalesce here instead of piling up in the channel.
            let until = Instant::now() + retry;
            loop {
                match ops.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(op) => {
                        let close = matches!(op, Op::Close(_));
                        pending.push(op, true);
                        if close {
                            break;
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        handles_gone = true;
                        break;
                    }
                }
            }
        }
        for _ in 0..MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => pending.push(op, failing),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    handles_gone = true;
                    break;
                }
            }
        }
        match store::apply(conn, pending.writes()) {
            Ok(()) => {
                if failing {
                    tracing::info!(
                        held = pending.len(),
                        "the task journal {} is writable again",
                        path.display()
                    );
                    health.send_replace(JournalHealth::Writable);
                    retry = RETRY_FIRST;
                }
                if pending.clears_requests() {
                    truncate.ask();
                }
                if let Some(done) = pending.forward(&mut stream) {
                    let _ = done.send(());
                    return;
                }
            }
            Err(e) => {
                let reason = e.to_string();
                if !failing {
                    tracing::error!(
                        "cannot write the task journal {}: {reason}; holding task \
                         statuses and retrying",
                        path.display()
                    );
                }
                health.send_if_modified(|now| {
                    let next = JournalHealth::Failing(reason);
                    (*now != next).then(|| *now = next).is_some()
                });
                if pending.closing() || handles_gone {
                    tracing::error!(
                        lost = pending.len(),
                        "stopping with changes the task journal could not record; \
                         their statuses were not published"
                    );
                    if let Some(done) = pending.abandon() {
                        let _ = done.send(());
                    }
                    return;
                }
                retry = (retry * 2).min(RETRY_CAP);
            }
        }
        if handles_gone && pending.is_empty() {
            return;
        }
    }
}

/// A channel of truncate requests that wakes the checkpointer once per
/// truncate, not once per commit: until the checkpointer takes the request,
/// further ones are already answered by it.
pub(super) fn truncate_requests() -> (TruncateAsker, TruncateRequests) {
    let asked = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std_mpsc::sync_channel(1);
    (
        TruncateAsker {
            asked: asked.clone(),
            tx,
        },
        TruncateRequests { asked, rx },
    )
}

/// The writer's end of [`truncate_requests`].
pub(super) struct TruncateAsker {
    asked: Arc<AtomicBool>,
    tx: std_mpsc::SyncSender<()>,
}

impl TruncateAsker {
    /// Asks for a truncating checkpoint, unless one is asked for already.
    pub(super) fn ask(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            let _ = self.tx.try_send(());
        }
    }
}

/// The checkpointer's end of [`truncate_requests`].
pub(super) struct TruncateRequests {
    asked: Arc<AtomicBool>,
    rx: std_mpsc::Receiver<()>,
}

impl TruncateRequests {
    /// Waits up to `timeout` for a request.
    pub(super) fn wait(&self, timeout: Duration) -> Result<(), std_mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The asked-for truncate starts now: a later commit asks again.
    pub(super) fn taken(&self) {
        self.asked.store(false, Ordering::Release);
    }
}

/// The checkpoint thread: a passive checkpoint every [`CHECKPOINT_EVERY`],
/// and a truncating one soon after each `truncate` request (at most one per
/// [`TRUNCATE_GAP`]), so that the bytes of a cleared request do not linger
/// in the WAL of an idle worker. Ends when the writer ended.
pub(super) fn checkpoint_loop(conn: &rusqlite::Connection, truncate: &TruncateRequests) {
    let mut next_passive = Instant::now() + CHECKPOINT_EVERY;
    let mut truncate_due: Option<Instant> = None;
    let mut last_truncate: Option<Instant> = None;
    let mut failing = false;
    loop {
        let next = truncate_due.map_or(next_passive, |due| due.min(next_passive));
        match truncate.wait(next.saturating_duration_since(Instant::now())) {
            Ok(()) => {
                let earliest = last_truncate.map_or(Instant::now(), |at| at + TRUNCATE_GAP);
                truncate_due.get_or_insert(earliest.max(Instant::now()));
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let result = if truncate_due.is_some_and(|due| due <= now) {
            // Finals committed from here on ask again.
            truncate.taken();
            let result = store::checkpoint_truncate(conn);
            truncate_due = match result {
                Ok(true) => None,
                // Busy (a reader or the writer held on past the busy
                // timeout) or failing: try again later, not at once.
                Ok(false) => Some(now + RETRY_FIRST),
                Err(_) => Some(now + CHECKPOINT_EVERY),
            };
            if truncate_due.is_none() {
                last_truncate = Some(now);
            }
            result.map(|_| ())
        } else if next_passive <= now {
            store::checkpoint(conn)
        } else {
            continue;
        };
        next_passive = now + CHECKPOINT_EVERY;
        match result {
            Ok(()) if failing => {
                tracing::info!("the task journal can be checkpointed again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("cannot checkpoint the task journal: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

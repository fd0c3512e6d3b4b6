//! The task table: the one place where task state changes.
//!
//! It owns every task this worker holds (queued, running and a bounded
//! history of finished ones, each with the tail of its Ansible log), the FIFO
//! queue of waiting tasks, the recently rejected requests, and two change
//! streams: a lossless, ordered one per subscriber (the status sink of the
//! transport, [`ChangeStream`]) and a lossy broadcast for live views
//! (`view`: the HTTP API and its event stream). It does not run anything:
//! the pool takes queued tasks from it and reports back. Every state change
//! goes through `lifecycle`.
//!
//! With a [`Journal`] configured, every change is handed to it and the
//! lossless stream carries what the journal committed (a status leaves the
//! process only once it is on disk); at start, [`TaskTable::restore`] re-fills
//! the table from what a previous process journaled (`restore`). How changes
//! leave the table, and the receipts of those that reached their destination,
//! is `stream`; the answers of its operations, `outcomes`.
//!
//! A request's reply route (MQTT 5 Response Topic) belongs to its task
//! here: it is set when the table admits the task, travels on every status
//! the task streams, and is dropped when the task ends. A duplicate request
//! gets the current status once on its own route and never moves the task's.
//!
//! The state lives behind a `std::sync::Mutex` that is only held for short,
//! synchronous updates, never across an `.await`.

mod lifecycle;
mod outcomes;
mod restore;
mod stream;
pub mod view;

pub use outcomes::{Admission, Cancel, RunOutcome};
pub use restore::{INTERRUPTED, Restored};
pub use stream::ChangeStream;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::metrics::{Metrics, Refusal};
use crate::model::{Counters, Inventory, ReplyRoute, TaskSpec, TaskState, TaskStatus};
use lifecycle::Ending;
use view::{LiveEvent, RejectedRequest, RequestSummary};

/// Lines of Ansible output kept per task.
pub const LOG_TAIL_LINES: usize = 500;
/// Longest log line kept (characters); longer ones are cut.
pub const LOG_LINE_CHARS: usize = 2000;
/// Rejected requests remembered for the dashboard.
const REJECTED_KEPT: usize = 100;
/// Live events a slow reader may fall behind before it lags.
const LIVE_CAPACITY: usize = 1024;

/// A line of Ansible output as the log keeps it: its first
/// [`LOG_LINE_CHARS`] characters.
pub fn log_line(line: &str) -> &str {
    match line.char_indices().nth(LOG_LINE_CHARS) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

/// What a table is sized and labelled by.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// The worker that owns the tasks.
    pub worker_id: String,
    /// Waiting tasks beyond which requests are refused.
    pub max_queue_size: usize,
    /// Finished tasks kept.
    pub history_limit: usize,
    /// Playbook paths are shown relative to this directory.
    pub playbook_directory: PathBuf,
    /// Where finals, refusals and run durations are counted.
    pub metrics: Arc<Metrics>,
    /// Where every change is recorded before it is streamed; `None` keeps the
    /// table in memory only.
    pub journal: Option<Journal>,
}

/// Shared handle to the task table; clones refer to the same table.
#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Mutex<Inner>>,
    queued_signal: Arc<Notify>,
}

struct Entry {
    /// Insertion order, newest highest: the listing order and cursor.
    seq: u64,
    status: TaskStatus,
    request: Option<RequestSummary>,
    log: VecDeque<String>,
    /// What only an unfinished task needs (boxed: most entries are finished
    /// ones, kept small for a long history).
    pending: Option<Box<Pending>>,
    /// Why a running task was told to stop; becomes its `error_message`.
    cancel_reason: Option<String>,
    /// Its final status reached the destination (a sink's receipt). Never
    /// true for another status: a final one does not change again, and a
    /// restore marks only finals it leaves as they were.
    delivered: bool,
}

/// The request of a queued or running task and the token that stops it.
struct Pending {
    spec: TaskSpec,
    cancel: CancellationToken,
}

struct Inner {
    settings: TableSettings,
    accepting: bool,
    next_seq: u64,
    /// Boxed so that the map's spare capacity costs a pointer per slot.
    tasks: HashMap<String, Box<Entry>>,
    queue: VecDeque<String>,
    finished: VecDeque<String>,
    rejected: VecDeque<RejectedRequest>,
    stream: ChangeStream,
    live: broadcast::Sender<LiveEvent>,
}

impl TaskTable {
    /// An empty table. Its journal, if any, streams what it commits to
    /// this table's subscribers.
    pub fn new(settings: TableSettings) -> Self {
        let stream = ChangeStream::default();
        if let Some(journal) = &settings.journal {
            journal.stream_to(stream.clone());
        }
        TaskTable {
            inner: Arc::new(Mutex::new(Inner {
                settings,
                accepting: true,
                next_seq: 0,
                tasks: HashMap::new(),
                queue: VecDeque::new(),
                finished: VecDeque::new(),
                rejected: VecDeque::new(),
                stream,
                live: broadcast::channel(LIVE_CAPACITY).0,
            })),
            queued_signal: Arc::new(Notify::new()),
        }
    }

    /// The counters this table reports to.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.lock().settings.metrics.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update
        // is a plain field write), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a checked request: queues it, or ends it at once when the
    /// queue is full or the worker is stopping. Its statuses also go to
    /// `reply`. A held id is never run twice: the duplicate gets the current
    /// status (on its own `reply` too) and the task keeps its route.
    pub fn submit(&self, spec: TaskSpec, reply: Option<ReplyRoute>) -> Admission {
        let reply = reply.map(Arc::new);
        let mut inner = self.lock();
        if inner.republish(&spec.task_id, reply.clone()) {
            return Admission::Duplicate;
        }
        let id = spec.task_id.clone();
        let request = Some(inner.summary(&spec));
        if !inner.accepting {
            inner.settings.metrics.refused(Refusal::ShuttingDown);
            let ending = Ending::Stopped {
                state: TaskState::Cancelled,
                reason: "Worker is shutting down".into(),
            };
            inner.insert_ended(&id, request, reply, ending);
            return Admission::ShuttingDown;
        }
        if inner.queue.len() >= inner.settings.max_queue_size {
            inner.settings.metrics.refused(Refusal::QueueFull);
            let ending = Ending::Stopped {
                state: TaskState::Failed,
                reason: format!("Queue full (max: {})", inner.settings.max_queue_size),
            };
            inner.insert_ended(&id, request, reply, ending);
            return Admission::QueueFull;
        }
        let mut status = TaskStatus::new(&id, &inner.settings.worker_id, TaskState::Queued);
        status.delivery.reply = reply;
        let pending = Pending {
            spec,
            cancel: CancellationToken::new(),
        };
        inner.insert(status, request, Some(pending));
        inner.emit(&id);
        inner.queue.push_back(id);
        drop(inner);
        self.queued_signal.notify_one();
        Admission::Queued
    }

    /// Records a request that had a usable id but broke a rule: one `failed`
    /// status naming the reason, also sent to `reply`. A held id keeps its
    /// status (re-published, as for [`TaskTable::submit`]).
    pub fn refuse(&self, task_id: &str, reason: &str, reply: Option<ReplyRoute>) -> Admission {
        let reply = reply.map(Arc::new);
        let mut inner = self.lock();
        if inner.republish(task_id, reply.clone()) {
            return Admission::Duplicate;
        }
        inner.settings.metrics.refused(Refusal::Invalid);
        inner.record_rejected(Some(task_id), reason);
        let ending = Ending::Stopped {
            state: TaskState::Failed,
            reason: reason.to_owned(),
        };
        inner.insert_ended(task_id, None, reply, ending);
        Admission::Refused
    }

    /// Records a request that could not be addressed (no usable task id).
    pub fn reject_unaddressable(&self, reason: &str) {
        let mut inner = self.lock();
        inner.settings.metrics.refused(Refusal::Unaddressable);
        inner.record_rejected(None, reason);
    }

    /// Adds a line of a running task's Ansible output to its log tail.
    pub fn append_log(&self, task_id: &str, line: &str) {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(task_id) else {
            return;
        };
        let line = log_line(line).to_owned();
        if entry.log.len() == LOG_TAIL_LINES {
            entry.log.pop_front();
        }
        entry.log.push_back(line.clone());
        inner.tell_live(|| LiveEvent::Log {
            task_id: task_id.to_owned(),
            line,
        });
    }

    /// Waits for the oldest queued task, takes it off the queue and marks it
    /// running in one step (a cancel comes before or after, never between);
    /// its request and the token that cancels its run. Tasks that ended
    /// while queued are skipped. Cancel-safe: dropped before it resolved, it
    /// took nothing.
    pub async fn start_next(&self) -> (TaskSpec, CancellationToken) {
        loop {
            let signalled = self.queued_signal.notified();
            if let Some(next) = self.lock().start_next() {
                return next;
            }
            signalled.await;
        }
    }

    /// Updates the live counters of a running task.
    pub fn progress(&self, task_id: &str, counters: Counters) {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(task_id) else {
            return;
        };
        if entry.status.state != TaskState::Running || entry.status.counters == counters {
            return;
        }
        entry.status.counters = counters;
        inner.emit(task_id);
    }

    /// Records the final state of a run. A task reaches a final state once:
    /// a task that already ended keeps its status.
    pub fn finish(&self, task_id: &str, outcome: RunOutcome) {
        self.lock().end(task_id, Ending::Ran(outcome));
    }

    /// Cancels one task: a queued one ends `cancelled` at once, a running one
    /// is told to stop (its run reports `cancelled` once the tree is gone).
    pub fn cancel(&self, task_id: &str, reason: &str) -> Cancel {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(task_id) else {
            return Cancel::Unknown;
        };
        match entry.status.state {
            TaskState::Queued => {
                let ending = Ending::Stopped {
                    state: TaskState::Cancelled,
                    reason: reason.to_owned(),
                };
                inner.end(task_id, ending);
                Cancel::Dequeued
            }
            TaskState::Running => {
                entry.stop(reason);
                Cancel::Stopping
            }
            _ => Cancel::AlreadyFinished,
        }
    }

    /// Stops taking tasks: every queued task ends `cancelled`, every running
    /// one is told to cancel (its run reports the final state).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        inner.accepting = false;
        let queued: Vec<String> = inner.queue.drain(..).collect();
        for id in queued {
            let ending = Ending::Stopped {
                state: TaskState::Cancelled,
                reason: "Worker is shutting down".into(),
            };
            inner.end(&id, ending);
        }
        for entry in inner.tasks.values_mut() {
            if entry.status.state == TaskState::Running {
                entry.stop("Worker is shutting down");
            }
        }
    }

    /// The current status of one task.
    pub fn status(&self, task_id: &str) -> Option<TaskStatus> {
        let inner = self.lock();
        let entry = inner.tasks.get(task_id)?;
        Some(entry.status.at(Utc::now()))
    }

    /// Number of queued tasks; unlike [`TaskTable::load`], without looking
    /// at every task held.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Number of queued and running tasks.
    pub fn load(&self) -> (usize, usize) {
        let inner = self.lock();
        let running = inner
            .tasks
            .values()
            .filter(|e| e.status.state == TaskState::Running)
            .count();
        let queued = inner
            .tasks
            .values()
            .filter(|e| e.status.state == TaskState::Queued)
            .count();
        (queued, running)
    }

    /// Resolves once the queue has room for another task (at once if it
    /// has), so that a transport that fetches requests (HTTP polling) asks
    /// only for what it can hold. Any change of the table wakes it to look
    /// again.
    pub async fn room(&self) {
        loop {
            let mut changes = {
                let inner = self.lock();
                if inner.queue.len() < inner.settings.max_queue_size {
                    return;
                }
                // Under the lock that saw no room: no change is missed.
                inner.live.subscribe()
            };
            // A lagged receiver saw changes too; the sender lives with the
            // table, so the stream never closes while `self` exists.
            let _ = changes.recv().await;
        }
    }
}

impl Inner {
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn summary(&self, spec: &TaskSpec) -> RequestSummary {
        let root = &self.settings.playbook_directory;
        let relative = |path: &std::path::Path| {
            path.strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        RequestSummary {
            playbook: relative(&spec.playbook),
            inventory: match &spec.inventory {
                Inventory::File(path) => relative(path),
                Inventory::Inline(hosts) => hosts.clone(),
            },
            check_mode: spec.check_mode,
        }
    }

    fn record_rejected(&mut self, task_id: Option<&str>, reason: &str) {
        if self.rejected.len() == REJECTED_KEPT {
            self.rejected.pop_front();
        }
        self.rejected.push_back(RejectedRequest {
            at: Utc::now(),
            task_id: task_id.map(str::to_owned),
            reason: reason.to_owned(),
        });
    }

    /// Holds a new task (numbered after every other one), not streamed yet.
    fn insert(
        &mut self,
        status: TaskStatus,
        request: Option<RequestSummary>,
        pending: Option<Pending>,
    ) {
        let seq = self.take_seq();
        self.tasks.insert(
            status.task_id.clone(),
            Box::new(Entry {
                seq,
                status,
                request,
                log: VecDeque::new(),
                pending: pending.map(Box::new),
                cancel_reason: None,
                delivered: false,
            }),
        );
    }

    /// Holds a request that ends at once (a refusal): it enters as queued,
    /// unseen, and ends like any other task.
    fn insert_ended(
        &mut self,
        id: &str,
        request: Option<RequestSummary>,
        reply: Option<Arc<ReplyRoute>>,
        ending: Ending,
    ) {
        let mut status = TaskStatus::new(id, &self.settings.worker_id, TaskState::Queued);
        status.delivery.reply = reply;
        self.insert(status, request, None);
        self.end(id, ending);
    }

    /// Moves a finished task into the history; the oldest ones beyond
    /// `history_limit` leave the table, told to live views in one event.
    fn remember_finished(&mut self, id: String) {
        self.finished.push_back(id);
        let excess = self
            .finished
            .len()
            .saturating_sub(self.settings.history_limit);
        if excess == 0 {
            return;
        }
        let dropped: Vec<String> = self.finished.drain(..excess).collect();
        for old in &dropped {
            self.tasks.remove(old);
            if let Some(journal) = &self.settings.journal {
                journal.forget(old);
            }
        }
        self.tell_live(|| LiveEvent::Trimmed { task_ids: dropped });
    }

    /// Sends the event `make` builds to live views, building it only when
    /// one listens (most of the time nobody does, and a burst would pay for
    /// copies nobody reads).
    fn tell_live(&self, make: impl FnOnce() -> LiveEvent) {
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(make());
        }
    }
}

impl Entry {
    /// Tells the run of a running task to stop, keeping the first reason.
    fn stop(&mut self, reason: &str) {
        self.cancel_reason.get_or_insert_with(|| reason.to_owned());
        if let Some(pending) = &self.pending {
            pending.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests;

//! The task table: the one place where task state changes.
//!
//! It owns every task this worker holds (queued, running and a bounded
//! history of finished ones, each with the tail of its Ansible log), the FIFO
//! queue of waiting tasks, the recently rejected requests, and two change
//! streams: a lossless, ordered one per subscriber (the MQTT status
//! publisher) and a lossy broadcast for live views (`view`: the HTTP API and
//! its event stream). It does not run anything: the pool takes queued tasks
//! from it and reports back.
//!
//! With a [`Journal`] configured, every change is handed to it and the
//! lossless stream carries what the journal committed (a status leaves the
//! process only once it is on disk); at start, [`TaskTable::restore`] re-fills
//! the table from what a previous process journaled (`restore`). How changes
//! leave the table is `stream`; the answers of its operations, `outcomes`.
//!
//! The state lives behind a `std::sync::Mutex` that is only held for short,
//! synchronous updates, never across an `.await`.

mod outcomes;
mod restore;
mod stream;
pub mod view;

pub use outcomes::{Admission, Cancel, RunOutcome};
pub use restore::{INTERRUPTED, Restored};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::metrics::{Metrics, Refusal};
use crate::model::{Counters, Inventory, TaskSpec, TaskState, TaskStatus};
use view::{LiveEvent, RejectedRequest, RequestSummary};

/// Lines of Ansible output kept per task.
pub const LOG_TAIL_LINES: usize = 500;
/// Longest log line kept (characters); longer ones are cut.
pub const LOG_LINE_CHARS: usize = 2000;
/// Rejected requests remembered for the dashboard.
const REJECTED_KEPT: usize = 100;
/// Live events a slow reader may fall behind before it lags.
const LIVE_CAPACITY: usize = 1024;

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
    subscribers: Vec<mpsc::UnboundedSender<TaskStatus>>,
    live: broadcast::Sender<LiveEvent>,
}

impl TaskTable {
    /// An empty table.
    pub fn new(settings: TableSettings) -> Self {
        TaskTable {
            inner: Arc::new(Mutex::new(Inner {
                settings,
                accepting: true,
                next_seq: 0,
                tasks: HashMap::new(),
                queue: VecDeque::new(),
                finished: VecDeque::new(),
                rejected: VecDeque::new(),
                subscribers: Vec::new(),
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

    /// The current status of every held task, oldest first.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        let inner = self.lock();
        let now = Utc::now();
        let mut entries: Vec<&Entry> = inner.tasks.values().map(Box::as_ref).collect();
        entries.sort_by_key(|entry| entry.seq);
        entries.iter().map(|entry| entry.status.at(now)).collect()
    }

    /// Accepts a checked request: queues it, or ends it at once when the
    /// queue is full or the worker is stopping. A held id is never run twice.
    pub fn submit(&self, spec: TaskSpec) -> Admission {
        let mut inner = self.lock();
        if inner.republish(&spec.task_id) {
            return Admission::Duplicate;
        }
        let id = spec.task_id.clone();
        let request = Some(inner.summary(&spec));
        let worker_id = inner.settings.worker_id.clone();
        if !inner.accepting {
            let status = TaskStatus {
                error_message: Some("Worker is shutting down".into()),
                ..TaskStatus::new(&id, &worker_id, TaskState::Cancelled)
            };
            inner.settings.metrics.refused(Refusal::ShuttingDown);
            inner.insert_final(status, request);
            return Admission::ShuttingDown;
        }
        if inner.queue.len() >= inner.settings.max_queue_size {
            let message = format!("Queue full (max: {})", inner.settings.max_queue_size);
            let status = TaskStatus {
                error_message: Some(message),
                ..TaskStatus::new(&id, &worker_id, TaskState::Failed)
            };
            inner.settings.metrics.refused(Refusal::QueueFull);
            inner.insert_final(status, request);
            return Admission::QueueFull;
        }
        let status = TaskStatus::new(&id, &worker_id, TaskState::Queued);
        let seq = inner.take_seq();
        inner.tasks.insert(
            id.clone(),
            Box::new(Entry {
                seq,
                status: status.clone(),
                request,
                log: VecDeque::new(),
                pending: Some(Box::new(Pending {
                    spec,
                    cancel: CancellationToken::new(),
                })),
                cancel_reason: None,
            }),
        );
        inner.emit(&status);
        inner.queue.push_back(id);
        drop(inner);
        self.queued_signal.notify_one();
        Admission::Queued
    }

    /// Records a request that had a usable id but broke a rule: one `failed`
    /// status naming the reason. A held id keeps its status (re-published).
    pub fn refuse(&self, task_id: &str, reason: &str) -> Admission {
        let mut inner = self.lock();
        if inner.republish(task_id) {
            return Admission::Duplicate;
        }
        let status = TaskStatus {
            error_message: Some(reason.to_owned()),
            ..TaskStatus::new(task_id, &inner.settings.worker_id, TaskState::Failed)
        };
        inner.settings.metrics.refused(Refusal::Invalid);
        inner.record_rejected(Some(task_id), reason);
        inner.insert_final(status, None);
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
        let line: String = line.chars().take(LOG_LINE_CHARS).collect();
        if entry.log.len() == LOG_TAIL_LINES {
            entry.log.pop_front();
        }
        entry.log.push_back(line.clone());
        let _ = inner.live.send(LiveEvent::Log {
            task_id: task_id.to_owned(),
            line,
        });
    }

    /// Waits for the oldest queued task and takes it off the queue, with the
    /// token that cancels it. Cancelled queued tasks are skipped.
    pub async fn next_queued(&self) -> (TaskSpec, CancellationToken) {
        loop {
            let signalled = self.queued_signal.notified();
            if let Some(next) = self.lock().pop_queued() {
                return next;
            }
            signalled.await;
        }
    }

    /// Marks a taken task as running.
    pub fn mark_running(&self, task_id: &str) {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(task_id) else {
            return;
        };
        entry.status.state = TaskState::Running;
        entry.status.started_at = Some(Utc::now());
        let status = entry.status.clone();
        inner.emit(&status);
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
        let status = entry.status.clone();
        inner.emit(&status);
    }

    /// Records the final state of a run. A task reaches a final state once.
    pub fn finish(&self, task_id: &str, outcome: RunOutcome) {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(task_id) else {
            return;
        };
        if entry.status.state.is_final() {
            return;
        }
        let status = &mut entry.status;
        status.state = outcome.state;
        let completed = Utc::now();
        status.completed_at = Some(completed);
        let run = status
            .started_at
            .and_then(|started| (completed - started).to_std().ok());
        status.return_code = outcome.return_code;
        status.counters = outcome.counters;
        status.error_message = match (outcome.state, entry.cancel_reason.take()) {
            (TaskState::Cancelled, Some(reason)) => Some(reason),
            _ => outcome.error_message,
        };
        status.output = outcome.output;
        status.output_per_host = outcome.output_per_host;
        entry.pending = None;
        let status = status.clone();
        inner.settings.metrics.task_finished(status.state, run);
        inner.emit(&status);
        inner.remember_finished(task_id.to_owned());
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
                inner.cancel_queued(task_id, reason);
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
            inner.cancel_queued(&id, "Worker is shutting down");
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

    fn insert_final(&mut self, status: TaskStatus, request: Option<RequestSummary>) {
        let id = status.task_id.clone();
        let seq = self.take_seq();
        self.settings.metrics.task_finished(status.state, None);
        self.tasks.insert(
            id.clone(),
            Box::new(Entry {
                seq,
                status: status.clone(),
                request,
                log: VecDeque::new(),
                pending: None,
                cancel_reason: None,
            }),
        );
        self.emit(&status);
        self.remember_finished(id);
    }

    fn remember_finished(&mut self, id: String) {
        self.finished.push_back(id);
        while self.finished.len() > self.settings.history_limit {
            if let Some(old) = self.finished.pop_front() {
                self.tasks.remove(&old);
                if let Some(journal) = &self.settings.journal {
                    journal.forget(&old);
                }
            }
        }
    }

    fn pop_queued(&mut self) -> Option<(TaskSpec, CancellationToken)> {
        while let Some(id) = self.queue.pop_front() {
            let Some(entry) = self.tasks.get(&id) else {
                continue;
            };
            if entry.status.state != TaskState::Queued {
                continue;
            }
            if let Some(pending) = &entry.pending {
                return Some((pending.spec.clone(), pending.cancel.clone()));
            }
        }
        None
    }

    fn cancel_queued(&mut self, id: &str, reason: &str) {
        let Some(entry) = self.tasks.get_mut(id) else {
            return;
        };
        if entry.status.state != TaskState::Queued {
            return;
        }
        entry.status.state = TaskState::Cancelled;
        entry.status.completed_at = Some(Utc::now());
        entry.status.error_message = Some(reason.to_owned());
        if let Some(pending) = entry.pending.take() {
            pending.cancel.cancel();
        }
        let status = entry.status.clone();
        self.settings
            .metrics
            .task_finished(TaskState::Cancelled, None);
        self.queue.retain(|queued| queued != id);
        self.emit(&status);
        self.remember_finished(id.to_owned());
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

//! The task table: the one place where task state changes.
//!
//! It owns every task this worker holds (queued, running and a bounded
//! history of finished ones), the FIFO queue of waiting tasks, and the change
//! stream. Each change is sent, in order, to every subscriber (the MQTT status
//! publisher today; the dashboard and journal later). It does not run
//! anything: the pool takes queued tasks from it and reports back.
//!
//! The state lives behind a `std::sync::Mutex` that is only held for short,
//! synchronous updates, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::model::{Counters, TaskSpec, TaskState, TaskStatus};

/// What became of a submitted task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted and queued.
    Queued,
    /// The id is already held; its current status was re-published.
    Duplicate,
    /// The queue was full; the task ended `failed`.
    QueueFull,
    /// The worker is shutting down; the task ended `cancelled`.
    ShuttingDown,
    /// The request broke an intake rule; the task ended `failed`.
    Refused,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The task was queued and is now `cancelled`.
    Dequeued,
    /// The task is running; its run is being killed.
    Stopping,
    /// The task had already finished.
    AlreadyFinished,
    /// This worker does not hold the task.
    Unknown,
}

/// How a run ended, as reported by the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `Success`, `Failed`, `Cancelled` or `Timeout`.
    pub state: TaskState,
    /// Exit code of `ansible-playbook`, if it ran (negative: killed by signal).
    pub return_code: Option<i32>,
    /// Final counters.
    pub counters: Counters,
    /// Why it did not succeed.
    pub error_message: Option<String>,
    /// Global `set_stats` data.
    pub output: Map<String, Value>,
    /// Per-host `set_stats` data.
    pub output_per_host: Map<String, Value>,
}

impl RunOutcome {
    /// An outcome for a run that never started `ansible-playbook`.
    pub fn refused(state: TaskState, error_message: String) -> Self {
        RunOutcome {
            state,
            return_code: None,
            counters: Counters::default(),
            error_message: Some(error_message),
            output: Map::new(),
            output_per_host: Map::new(),
        }
    }
}

/// Shared handle to the task table; clones refer to the same table.
#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Mutex<Inner>>,
    queued_signal: Arc<Notify>,
}

struct Entry {
    status: TaskStatus,
    spec: Option<TaskSpec>,
    cancel: CancellationToken,
    /// Why a running task was told to stop; becomes its `error_message`.
    cancel_reason: Option<String>,
}

struct Inner {
    worker_id: String,
    max_queue_size: usize,
    history_limit: usize,
    accepting: bool,
    tasks: HashMap<String, Entry>,
    queue: VecDeque<String>,
    finished: VecDeque<String>,
    rejected: u64,
    subscribers: Vec<mpsc::UnboundedSender<TaskStatus>>,
}

impl TaskTable {
    /// An empty table for `worker_id`, holding at most `max_queue_size`
    /// waiting tasks and `history_limit` finished ones.
    pub fn new(worker_id: &str, max_queue_size: usize, history_limit: usize) -> Self {
        TaskTable {
            inner: Arc::new(Mutex::new(Inner {
                worker_id: worker_id.to_owned(),
                max_queue_size,
                history_limit,
                accepting: true,
                tasks: HashMap::new(),
                queue: VecDeque::new(),
                finished: VecDeque::new(),
                rejected: 0,
                subscribers: Vec::new(),
            })),
            queued_signal: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update
        // is a plain field write), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of every status change from now on, in order.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<TaskStatus> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        rx
    }

    /// Ends every change stream, so subscribers finish once they drained it.
    pub fn close_subscribers(&self) {
        self.lock().subscribers.clear();
    }

    /// Accepts a checked request: queues it, or ends it at once when the
    /// queue is full or the worker is stopping. A held id is never run twice.
    pub fn submit(&self, spec: TaskSpec) -> Admission {
        let mut inner = self.lock();
        if let Some(entry) = inner.tasks.get(&spec.task_id) {
            let status = entry.status.clone();
            inner.emit(&status);
            return Admission::Duplicate;
        }
        let id = spec.task_id.clone();
        if !inner.accepting {
            let status = TaskStatus::new(&id, &inner.worker_id, TaskState::Cancelled);
            let status = TaskStatus {
                error_message: Some("Worker is shutting down".into()),
                ..status
            };
            inner.insert_final(status);
            return Admission::ShuttingDown;
        }
        if inner.queue.len() >= inner.max_queue_size {
            let message = format!("Queue full (max: {})", inner.max_queue_size);
            let status = TaskStatus {
                error_message: Some(message),
                ..TaskStatus::new(&id, &inner.worker_id, TaskState::Failed)
            };
            inner.insert_final(status);
            return Admission::QueueFull;
        }
        let status = TaskStatus::new(&id, &inner.worker_id, TaskState::Queued);
        inner.emit(&status);
        inner.tasks.insert(
            id.clone(),
            Entry {
                status,
                spec: Some(spec),
                cancel: CancellationToken::new(),
                cancel_reason: None,
            },
        );
        inner.queue.push_back(id);
        drop(inner);
        self.queued_signal.notify_one();
        Admission::Queued
    }

    /// Records a request that had a usable id but broke a rule: one `failed`
    /// status naming the reason. A held id keeps its status (re-published).
    pub fn refuse(&self, task_id: &str, reason: &str) -> Admission {
        let mut inner = self.lock();
        if let Some(entry) = inner.tasks.get(task_id) {
            let status = entry.status.clone();
            inner.emit(&status);
            return Admission::Duplicate;
        }
        let status = TaskStatus {
            error_message: Some(reason.to_owned()),
            ..TaskStatus::new(task_id, &inner.worker_id, TaskState::Failed)
        };
        inner.insert_final(status);
        Admission::Refused
    }

    /// Counts a request that could not be addressed (no usable task id).
    pub fn count_rejected(&self) {
        self.lock().rejected += 1;
    }

    /// How many requests were rejected without a usable task id.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
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
        status.completed_at = Some(Utc::now());
        status.return_code = outcome.return_code;
        status.counters = outcome.counters;
        status.error_message = match (outcome.state, entry.cancel_reason.take()) {
            (TaskState::Cancelled, Some(reason)) => Some(reason),
            _ => outcome.error_message,
        };
        status.output = outcome.output;
        status.output_per_host = outcome.output_per_host;
        entry.spec = None;
        let status = status.clone();
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
    fn emit(&mut self, status: &TaskStatus) {
        let snapshot = status.at(Utc::now());
        self.subscribers
            .retain(|subscriber| subscriber.send(snapshot.clone()).is_ok());
    }

    fn insert_final(&mut self, status: TaskStatus) {
        self.emit(&status);
        let id = status.task_id.clone();
        self.tasks.insert(
            id.clone(),
            Entry {
                status,
                spec: None,
                cancel: CancellationToken::new(),
                cancel_reason: None,
            },
        );
        self.remember_finished(id);
    }

    fn remember_finished(&mut self, id: String) {
        self.finished.push_back(id);
        while self.finished.len() > self.history_limit {
            if let Some(old) = self.finished.pop_front() {
                self.tasks.remove(&old);
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
            if let Some(spec) = entry.spec.clone() {
                return Some((spec, entry.cancel.clone()));
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
        entry.spec = None;
        entry.cancel.cancel();
        let status = entry.status.clone();
        self.queue.retain(|queued| queued != id);
        self.emit(&status);
        self.remember_finished(id.to_owned());
    }
}

impl Entry {
    /// Tells the run of a running task to stop, keeping the first reason.
    fn stop(&mut self, reason: &str) {
        self.cancel_reason.get_or_insert_with(|| reason.to_owned());
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Inventory;
    use std::path::PathBuf;

    fn spec(id: &str) -> TaskSpec {
        TaskSpec {
            task_id: id.into(),
            playbook: PathBuf::from("/p/site.yml"),
            inventory: Inventory::Inline("localhost,".into()),
            extra_vars: Map::new(),
            limit: None,
            tags: vec![],
            skip_tags: vec![],
            verbosity: 0,
            check_mode: false,
            diff_mode: false,
            forks: 5,
            timeout: None,
            git_pull: false,
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<TaskStatus>) -> Vec<(String, TaskState)> {
        let mut seen = vec![];
        while let Ok(s) = rx.try_recv() {
            seen.push((s.task_id, s.state));
        }
        seen
    }

    #[tokio::test]
    async fn states_flow_queued_running_final_once() {
        let table = TaskTable::new("w", 10, 10);
        let mut rx = table.subscribe();
        assert_eq!(table.submit(spec("a")), Admission::Queued);
        let (taken, _) = table.next_queued().await;
        assert_eq!(taken.task_id, "a");
        table.mark_running("a");
        table.progress(
            "a",
            Counters {
                ok: 1,
                ..Counters::default()
            },
        );
        let outcome = RunOutcome::refused(TaskState::Failed, "x".into());
        table.finish("a", outcome.clone());
        table.finish("a", outcome);
        use TaskState::*;
        let states: Vec<_> = drain(&mut rx).into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, vec![Queued, Running, Running, Failed]);
    }

    #[tokio::test]
    async fn duplicate_id_is_not_queued_again_and_republishes() {
        let table = TaskTable::new("w", 10, 10);
        let mut rx = table.subscribe();
        table.submit(spec("a"));
        assert_eq!(table.submit(spec("a")), Admission::Duplicate);
        assert_eq!(table.refuse("a", "bad"), Admission::Duplicate);
        assert_eq!(drain(&mut rx).len(), 3);
        assert_eq!(table.load(), (1, 0));
        assert_eq!(table.status("a").unwrap().state, TaskState::Queued);
    }

    #[test]
    fn queue_full_fails_with_the_limit_in_the_message() {
        let table = TaskTable::new("w", 1, 10);
        table.submit(spec("a"));
        assert_eq!(table.submit(spec("b")), Admission::QueueFull);
        let b = table.status("b").unwrap();
        assert_eq!(b.state, TaskState::Failed);
        assert_eq!(b.error_message.as_deref(), Some("Queue full (max: 1)"));
    }

    #[tokio::test]
    async fn shutdown_cancels_queued_and_signals_running() {
        let table = TaskTable::new("w", 10, 10);
        table.submit(spec("a"));
        table.submit(spec("b"));
        let (_, token) = table.next_queued().await;
        table.mark_running("a");
        table.shutdown();
        assert!(token.is_cancelled());
        assert_eq!(table.status("b").unwrap().state, TaskState::Cancelled);
        assert_eq!(table.status("a").unwrap().state, TaskState::Running);
        assert_eq!(table.submit(spec("c")), Admission::ShuttingDown);
    }

    #[tokio::test]
    async fn cancel_ends_a_queued_task_and_signals_a_running_one() {
        let table = TaskTable::new("w", 10, 10);
        table.submit(spec("a"));
        table.submit(spec("b"));
        let (_, token) = table.next_queued().await;
        table.mark_running("a");
        assert_eq!(table.cancel("b", "Cancelled by request"), Cancel::Dequeued);
        assert_eq!(table.status("b").unwrap().state, TaskState::Cancelled);
        assert_eq!(table.cancel("a", "Cancelled by request"), Cancel::Stopping);
        assert!(token.is_cancelled());
        table.finish(
            "a",
            RunOutcome::refused(TaskState::Cancelled, "Cancelled".into()),
        );
        let a = table.status("a").unwrap();
        assert_eq!(a.error_message.as_deref(), Some("Cancelled by request"));
        assert_eq!(table.cancel("b", "again"), Cancel::AlreadyFinished);
        assert_eq!(table.cancel("zz", "x"), Cancel::Unknown);
        // A cancelled queued task is never handed to the pool.
        table.submit(spec("c"));
        let (next, _) = table.next_queued().await;
        assert_eq!(next.task_id, "c");
    }

    #[test]
    fn history_is_bounded() {
        let table = TaskTable::new("w", 10, 2);
        for id in ["a", "b", "c"] {
            table.refuse(id, "bad");
        }
        assert!(table.status("a").is_none());
        assert!(table.status("c").is_some());
    }
}

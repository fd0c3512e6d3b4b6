//! How changes leave the table: each one is recorded by the journal (which
//! streams it on once committed) or, without a journal, streamed at once;
//! live views get every change at once through the broadcast.
//!
//! [`ChangeStream`] is the one owner of the lossless stream's subscribers.
//! The table sends to it directly when it has no journal; with one, the
//! journal's writer sends each status once it is committed, and subscribing
//! and closing are handed to the writer in line with the changes, so a
//! subscriber starts and ends at the same point of the order either way.
//!
//! A sink that needs to know what reached its destination reports it back
//! ([`TaskTable::mark_delivered`]); the receipt is journaled, so that after a
//! restart [`TaskTable::undelivered_statuses`] names what to send again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::view::LiveEvent;
use super::{Entry, Inner, TaskTable};
use crate::journal::{JournalHealth, Record};
use crate::metrics::Refusal;
use crate::model::{Delivery, ReplyRoute, StatusUpdate, TaskState, TaskStatus};

/// The subscribers of the lossless, ordered status stream; clones share
/// them. Whoever sends decides when a status is streamed (the table, or the
/// journal's writer once the status is committed).
#[derive(Clone, Debug, Default)]
pub struct ChangeStream {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<StatusUpdate>>>>,
}

impl ChangeStream {
    /// Adds a subscriber: it gets every status sent from now on.
    pub fn add(&self, subscriber: mpsc::UnboundedSender<StatusUpdate>) {
        self.lock().push(subscriber);
    }

    /// Sends `status` to every subscriber, dropping those that are gone.
    pub fn send(&self, status: StatusUpdate) {
        let mut subscribers = self.lock();
        // The usual case (one publisher) needs no copy.
        if let [only] = subscribers.as_slice() {
            if only.send(status).is_err() {
                subscribers.clear();
            }
            return;
        }
        subscribers.retain(|subscriber| subscriber.send(status.clone()).is_ok());
    }

    /// Ends every subscriber's stream (each finishes once it drained it).
    pub fn close(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<StatusUpdate>>> {
        // Only pushes, sends and clears happen under it: always consistent.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskTable {
    /// A stream of every status change from now on, in order (once
    /// journaled, when there is a journal).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<StatusUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.lock();
        let stream = inner.stream.clone();
        inner.in_order(move || stream.add(tx));
        rx
    }

    /// Ends every change stream after the changes made so far, so
    /// subscribers finish once they drained it.
    pub fn close_subscribers(&self) {
        let inner = self.lock();
        let stream = inner.stream.clone();
        inner.in_order(move || stream.close());
    }

    /// The current status of every held task, oldest first.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        self.lock().statuses(|_| true)
    }

    /// Like [`TaskTable::statuses`], without the tasks whose final status
    /// was delivered ([`TaskTable::mark_delivered`], also before a restart):
    /// what a sink that reports deliveries must send at start.
    pub fn undelivered_statuses(&self) -> Vec<TaskStatus> {
        self.lock().statuses(|entry| !entry.delivered)
    }

    /// Records that the destination accepted `status`. Only a final status
    /// counts, and only while it is still the task's status: the task is then
    /// left out of [`TaskTable::undelivered_statuses`], across restarts
    /// (journaled with the other changes; this never waits). Other statuses
    /// are ignored: after a restart, an unfinished task's status changes
    /// anyway and must be sent again.
    pub fn mark_delivered(&self, status: &TaskStatus) {
        if !status.state.is_final() {
            return;
        }
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(&status.task_id) else {
            return;
        };
        // A final status is told apart from another of the same task (one
        // that left the history and came back) by its completion time.
        let held = (entry.status.state, entry.status.completed_at);
        if entry.delivered || held != (status.state, status.completed_at) {
            return;
        }
        entry.delivered = true;
        if let Some(journal) = &inner.settings.journal {
            journal.delivered(status);
        }
    }

    /// Whether the journal can record changes, as it changes (always
    /// writable without a journal). While it cannot, no status leaves and
    /// the worker must not take requests.
    pub fn journal_health(&self) -> watch::Receiver<JournalHealth> {
        match &self.lock().settings.journal {
            Some(journal) => journal.health(),
            None => watch::channel(JournalHealth::Writable).1,
        }
    }

    /// Resolves once every change made so far is durably recorded (at once
    /// without a journal).
    pub fn journaled(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match &self.lock().settings.journal {
            Some(journal) => Box::pin(journal.flushed()),
            None => Box::pin(std::future::ready(())),
        }
    }
}

impl Inner {
    /// The current status of every held task that `keep` keeps, oldest
    /// first.
    fn statuses(&self, keep: impl Fn(&Entry) -> bool) -> Vec<TaskStatus> {
        let now = Utc::now();
        let mut entries: Vec<&Entry> = self
            .tasks
            .values()
            .map(Box::as_ref)
            .filter(|entry| keep(entry))
            .collect();
        entries.sort_by_key(|entry| entry.seq);
        entries.iter().map(|entry| entry.status.at(now)).collect()
    }

    /// Runs `step` (a change to the stream's subscribers) after every change
    /// made so far was streamed: at once without a journal, on the journal's
    /// writer in line with the changes otherwise.
    fn in_order(&self, step: impl FnOnce() + Send + 'static) {
        match &self.settings.journal {
            Some(journal) => journal.then(step),
            None => step(),
        }
    }

    /// Sends a held task's current status again, for a duplicate request:
    /// once to the duplicate's own `reply` route (not the task's); false if
    /// the task is not held.
    pub(super) fn republish(&mut self, task_id: &str, reply: Option<Arc<ReplyRoute>>) -> bool {
        let Some(entry) = self.tasks.get(task_id) else {
            return false;
        };
        let mut snapshot = entry.status.at(Utc::now());
        snapshot.delivery = Delivery {
            reply,
            repeat: true,
        };
        self.settings.metrics.refused(Refusal::Duplicate);
        match &self.settings.journal {
            Some(journal) => journal.relay(snapshot),
            None => self.stream.send(snapshot.into()),
        }
        true
    }

    /// Records the current status of a held task and sends it to every
    /// subscriber and to live views.
    pub(super) fn emit(&mut self, task_id: &str) {
        let Some(entry) = self.tasks.get(task_id) else {
            return;
        };
        let snapshot = entry.status.at(Utc::now());
        self.tell_live(|| LiveEvent::Status(Box::new(entry.view_of(&snapshot))));
        match &self.settings.journal {
            Some(journal) => journal.record(Record {
                seq: entry.seq,
                spec: match snapshot.state {
                    TaskState::Queued => entry.pending.as_ref().map(|p| p.spec.clone()),
                    _ => None,
                },
                // Progress updates need not repeat what the row already has.
                request: match snapshot.state {
                    TaskState::Running => None,
                    _ => entry.request.clone(),
                },
                status: snapshot,
            }),
            None => self.stream.send(snapshot.into()),
        }
    }
}

//! How changes leave the table: each one is recorded by the journal (which
//! streams it on once committed) or, without a journal, sent straight to the
//! subscribers; live views get every change at once through the broadcast.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::view::LiveEvent;
use super::{Inner, TaskTable};
use crate::journal::{JournalHealth, Record};
use crate::metrics::Refusal;
use crate::model::{Delivery, ReplyRoute, TaskState, TaskStatus};

impl TaskTable {
    /// A stream of every status change from now on, in order (once
    /// journaled, when there is a journal).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<TaskStatus> {
        let mut inner = self.lock();
        if let Some(journal) = &inner.settings.journal {
            return journal.subscribe();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        inner.subscribers.push(tx);
        rx
    }

    /// Ends every change stream, so subscribers finish once they drained it.
    pub fn close_subscribers(&self) {
        let mut inner = self.lock();
        match &inner.settings.journal {
            Some(journal) => journal.close_subscribers(),
            None => inner.subscribers.clear(),
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
            None => self.send_to_subscribers(snapshot),
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
        let _ = self
            .live
            .send(LiveEvent::Status(Box::new(entry.view_of(&snapshot))));
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
            None => self.send_to_subscribers(snapshot),
        }
    }

    fn send_to_subscribers(&mut self, status: TaskStatus) {
        self.subscribers
            .retain(|subscriber| subscriber.send(status.clone()).is_ok());
    }
}

//! Read-only views of the task table for the HTTP API and dashboard:
//! listing with filter and cursor, one task, its log tail, the rejected
//! requests, and a snapshot joined to the live change broadcast.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Entry, TaskTable};
use crate::model::{TaskState, TaskStatus};

/// What was asked for, shown beside a task's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// Playbook path relative to the playbook directory.
    pub playbook: String,
    /// Inventory file (relative) or inline host list.
    pub inventory: String,
    /// `--check`.
    pub check_mode: bool,
}

/// A task as the API lists it: the status document plus its request summary
/// (absent for requests refused before they were understood).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskView {
    /// The status document, as published.
    #[serde(flatten)]
    pub status: TaskStatus,
    /// What was asked for.
    pub request: Option<RequestSummary>,
}

/// A request that did not become a task (or became a refused one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRequest {
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// Its task id, when it had a usable one.
    pub task_id: Option<String>,
    /// Why it was refused.
    pub reason: String,
}

/// One change for live views.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A task's status changed.
    Status(Box<TaskView>),
    /// A running task printed a line.
    Log {
        /// The task.
        task_id: String,
        /// The line.
        line: String,
    },
    /// Finished tasks left the history (beyond `history_limit`), oldest
    /// first: every one a change dropped, in one event.
    Trimmed {
        /// The tasks no longer held.
        task_ids: Vec<String>,
    },
}

/// One page of the task listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<u64>,
}

impl Entry {
    pub(super) fn view_of(&self, status: &TaskStatus) -> TaskView {
        TaskView {
            status: status.clone(),
            request: self.request.clone(),
        }
    }
}

impl TaskTable {
    /// Tasks newest first, optionally only those in `state`, at most `limit`,
    /// older than `cursor` (from a previous page).
    pub fn list(&self, state: Option<TaskState>, limit: usize, cursor: Option<u64>) -> TaskPage {
        let inner = self.lock();
        let now = Utc::now();
        let mut entries: Vec<&Entry> = inner
            .tasks
            .values()
            .map(Box::as_ref)
            .filter(|e| state.is_none_or(|s| e.status.state == s))
            .filter(|e| cursor.is_none_or(|c| e.seq < c))
            .collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        let more = entries.len() > limit;
        entries.truncate(limit);
        TaskPage {
            next_cursor: more.then(|| entries.last().map(|e| e.seq)).flatten(),
            tasks: entries
                .into_iter()
                .map(|e| e.view_of(&e.status.at(now)))
                .collect(),
        }
    }

    /// One task with its request summary.
    pub fn view(&self, task_id: &str) -> Option<TaskView> {
        let inner = self.lock();
        let entry = inner.tasks.get(task_id)?;
        Some(entry.view_of(&entry.status.at(Utc::now())))
    }

    /// The tail of a task's Ansible output.
    pub fn log(&self, task_id: &str) -> Option<Vec<String>> {
        let inner = self.lock();
        Some(inner.tasks.get(task_id)?.log.iter().cloned().collect())
    }

    /// Recently rejected requests, newest first.
    pub fn rejected(&self) -> Vec<RejectedRequest> {
        self.lock().rejected.iter().rev().cloned().collect()
    }

    /// Every task (newest first) and the live stream from exactly that
    /// moment on, so a new viewer misses nothing and sees nothing twice.
    pub fn snapshot_and_live(&self) -> (Vec<TaskView>, broadcast::Receiver<LiveEvent>) {
        let inner = self.lock();
        let live = inner.live.subscribe();
        let now = Utc::now();
        let mut entries: Vec<&Entry> = inner.tasks.values().map(Box::as_ref).collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        let tasks = entries
            .into_iter()
            .map(|e| e.view_of(&e.status.at(now)))
            .collect();
        (tasks, live)
    }
}

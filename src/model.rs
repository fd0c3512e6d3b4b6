//! Wire types of PROTOCOL.md: the checked task request (`TaskSpec`), the task
//! state machine (`TaskState`), the recap counters, the published status
//! document (`TaskStatus`) and where a status goes besides its status topic
//! (`Delivery`, `ReplyRoute`), and a run's live events (`event`). Pure data
//! and serde; no I/O happens here.

mod event;

pub use event::{EventSink, NoEvents, ResultStatus, RunEvent, event_payload};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The life cycle of a task: `queued`, `running`, then exactly one final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Accepted and waiting for a free run slot.
    Queued,
    /// `ansible-playbook` (or its `git pull`) is running.
    Running,
    /// `ansible-playbook` exited 0.
    Success,
    /// Refused, could not start, or `ansible-playbook` exited non-zero.
    Failed,
    /// Cancelled by request or by worker shutdown.
    Cancelled,
    /// Killed because it ran longer than its timeout.
    Timeout,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }

    /// The name used on the wire (`"queued"`, `"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Timeout => "timeout",
        }
    }
}

/// Ansible's PLAY RECAP numbers summed over all hosts, plus the number of tasks
/// started. Field names are those of the status document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Tasks started so far, each counted once however many hosts it ran on.
    #[serde(rename = "tasks_total")]
    pub total: u64,
    /// Σ ok (includes changed results and ignored failures, as in Ansible).
    #[serde(rename = "tasks_ok")]
    pub ok: u64,
    /// Σ changed.
    #[serde(rename = "tasks_changed")]
    pub changed: u64,
    /// Σ failed.
    #[serde(rename = "tasks_failed")]
    pub failed: u64,
    /// Σ skipped.
    #[serde(rename = "tasks_skipped")]
    pub skipped: u64,
    /// Σ unreachable.
    #[serde(rename = "tasks_unreachable")]
    pub unreachable: u64,
    /// Σ rescued (extension).
    #[serde(rename = "tasks_rescued")]
    pub rescued: u64,
    /// Σ ignored (extension).
    #[serde(rename = "tasks_ignored")]
    pub ignored: u64,
}

/// Where `ansible-playbook -i` points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inventory {
    /// An inventory file inside the playbook directory (canonical path).
    File(PathBuf),
    /// An inline host list such as `"web1,web2,"`.
    Inline(String),
}

/// A task request that passed every intake rule; nothing downstream re-checks it.
///
/// Serde is for the journal's own record of a queued request (restart
/// recovery), not a wire format: requests arrive through `intake`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// 1–128 characters of `A-Z a-z 0-9 . _ -`.
    pub task_id: String,
    /// Canonical path of the playbook, inside the playbook directory.
    pub playbook: PathBuf,
    /// `-i` argument.
    pub inventory: Inventory,
    /// Extra variables, passed through a private file.
    pub extra_vars: Map<String, Value>,
    /// `--limit`.
    pub limit: Option<String>,
    /// `--tags`.
    pub tags: Vec<String>,
    /// `--skip-tags`.
    pub skip_tags: Vec<String>,
    /// 0–4, the number of `-v`.
    pub verbosity: u8,
    /// `--check`.
    pub check_mode: bool,
    /// `--diff`.
    pub diff_mode: bool,
    /// `--forks`, at least 1.
    pub forks: u32,
    /// Per-task timeout; `None` means the worker's `task_timeout`.
    pub timeout: Option<Duration>,
    /// Run `git pull --ff-only` in the playbook directory first.
    pub git_pull: bool,
}

#[cfg(test)]
impl TaskSpec {
    /// A spec with the protocol's defaults for every optional field.
    pub(crate) fn with_defaults(task_id: &str, playbook: PathBuf, inventory: Inventory) -> Self {
        TaskSpec {
            task_id: task_id.to_owned(),
            playbook,
            inventory,
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
}

/// One status document as published on `P/G/tasks/<id>/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task this document describes.
    pub task_id: String,
    /// Current state.
    pub state: TaskState,
    /// When the request was accepted (or refused).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When the run started; null until then.
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached its final state.
    #[serde(serialize_with = "rfc3339_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Time since `started_at` (running) or of the whole run (final).
    pub duration_seconds: Option<f64>,
    /// Recap counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Exit code of `ansible-playbook` once it exited.
    pub return_code: Option<i32>,
    /// Why the task failed, if it did.
    pub error_message: Option<String>,
    /// Merged global `set_stats` data.
    pub output: Map<String, Value>,
    /// `per_host: true` `set_stats` data, by host (extension).
    pub output_per_host: Map<String, Value>,
    /// The worker that owns the task (extension).
    pub worker_id: String,
    /// Where this snapshot goes besides the status topic; set by the task
    /// table, not part of the document.
    #[serde(skip)]
    pub delivery: Delivery,
}

/// Where a requester asked for a task's statuses to be sent as well: an MQTT
/// 5 request's Response Topic (already checked) and its Correlation Data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRoute {
    /// The Response Topic.
    pub topic: String,
    /// The Correlation Data, copied back.
    pub correlation: Option<Bytes>,
}

/// Where one status snapshot is delivered besides its status topic.
///
/// The task table sets it on every snapshot it streams, so a status carries
/// its route to the publisher even after the table ended the task and let
/// the route go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The reply route this snapshot is also published to.
    pub reply: Option<Arc<ReplyRoute>>,
    /// A re-publication for a duplicate request: the task did not change,
    /// and `reply` is the duplicate's own route, for this snapshot only.
    pub repeat: bool,
}

impl TaskStatus {
    /// A fresh status in `state` with empty counters, stamped now.
    pub fn new(task_id: &str, worker_id: &str, state: TaskState) -> Self {
        let now = Utc::now();
        TaskStatus {
            task_id: task_id.to_owned(),
            state,
            created_at: now,
            started_at: None,
            completed_at: if state.is_final() { Some(now) } else { None },
            duration_seconds: None,
            counters: Counters::default(),
            return_code: None,
            error_message: None,
            output: Map::new(),
            output_per_host: Map::new(),
            worker_id: worker_id.to_owned(),
            delivery: Delivery::default(),
        }
    }

    /// The document as it should read at `now`: a running task's duration is
    /// refreshed; a final one keeps the length of its run.
    pub fn at(&self, now: DateTime<Utc>) -> TaskStatus {
        let mut status = self.clone();
        if let Some(started) = status.started_at {
            let end = status.completed_at.unwrap_or(now);
            // From the published (millisecond) times, so a status read back
            // from the journal is the same document.
            let millis = (end.timestamp_millis() - started.timestamp_millis()).max(0);
            status.duration_seconds = Some(millis as f64 / 1000.0);
        }
        status
    }

    /// The JSON payload published for this status.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a status always serializes")
    }
}

/// A status on its way out of the table: the document and its JSON,
/// serialised once for the journal and whichever sink sends it on.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The status.
    pub status: TaskStatus,
    /// `status.to_json()`.
    pub json: Bytes,
}

impl From<TaskStatus> for StatusUpdate {
    fn from(status: TaskStatus) -> Self {
        let json = status.to_json().into();
        StatusUpdate { status, json }
    }
}

fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn rfc3339_opt<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339(time, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_with_protocol_field_names() {
        let mut status = TaskStatus::new("t1", "w1", TaskState::Queued);
        status.counters.ok = 3;
        let json: Value = serde_json::from_slice(&status.to_json()).unwrap();
        assert_eq!(json["state"], "queued");
        assert_eq!(json["tasks_ok"], 3);
        assert_eq!(json["tasks_total"], 0);
        assert!(json["started_at"].is_null());
        assert!(json["completed_at"].is_null());
        let created = json["created_at"].as_str().unwrap();
        assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    }

    #[test]
    fn final_duration_is_the_length_of_the_run() {
        let mut status = TaskStatus::new("t1", "w1", TaskState::Running);
        let start = Utc::now();
        status.started_at = Some(start);
        status.completed_at = Some(start + chrono::Duration::milliseconds(1500));
        let later = start + chrono::Duration::seconds(100);
        assert_eq!(status.at(later).duration_seconds, Some(1.5));
    }
}

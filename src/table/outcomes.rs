//! What the table's operations answer: the fate of a submitted task, of a
//! cancel request, and the outcome of a run as the pool reports it.

use serde_json::{Map, Value};

use crate::model::{Counters, TaskState};

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

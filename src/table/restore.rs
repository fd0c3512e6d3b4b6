//! Restart recovery: re-filling the table from what a previous process
//! journaled.
//!
//! - A task journaled `queued` never started: it is queued again, in its old
//!   order, and runs once.
//! - A task journaled `running` was interrupted half-way. Re-running a
//!   half-applied playbook silently is not safe in general, so it ends
//!   `failed` ("interrupted: worker restarted during the run"), unless
//!   `worker.rerun_interrupted` asks for it to be queued again.
//! - Finished tasks return to the history (so a redelivered request is still
//!   recognised as a duplicate), bounded by `history_limit`; older journal
//!   rows are forgotten. Each keeps whether its final status was delivered;
//!   a task the restore changes is undelivered (its new status is not).
//!
//! The caller kills any process left over from the previous run first.

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

use super::lifecycle::Ending;
use super::{Entry, Pending, TaskTable};
use crate::journal::StoredTask;
use crate::model::{Counters, TaskState};

/// The error message of a task whose run a restart interrupted.
pub const INTERRUPTED: &str = "interrupted: worker restarted during the run";

/// What [`TaskTable::restore`] did, for the start-up log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Tasks queued again (never started, or re-run on request).
    pub queued: usize,
    /// Unfinished tasks ended `failed`: interrupted runs, and requests that
    /// could not be read back.
    pub ended: usize,
    /// Finished tasks back in the history.
    pub finished: usize,
}

impl TaskTable {
    /// Re-fills an empty table from the journal (oldest first). Queued tasks
    /// go back on the queue; running ones end `failed` as interrupted, or are
    /// queued again when `rerun_interrupted`. Changes are journaled and
    /// streamed like any other.
    pub fn restore(&self, stored: Vec<StoredTask>, rerun_interrupted: bool) -> Restored {
        let mut restored = Restored::default();
        let mut inner = self.lock();
        for task in stored {
            inner.next_seq = inner.next_seq.max(task.seq);
            let id = task.status.task_id.clone();
            // Only a final status is ever marked.
            let delivered = task.delivered && task.status.state.is_final();
            let mut entry = Box::new(Entry {
                seq: task.seq,
                status: task.status,
                request: task.request,
                log: VecDeque::new(),
                pending: None,
                cancel_reason: None,
                delivered,
            });
            let state = entry.status.state;
            if state.is_final() {
                inner.tasks.insert(id.clone(), entry);
                inner.remember_finished(id);
                restored.finished += 1;
                continue;
            }
            let spec = match task.spec {
                Some(Ok(spec)) => Ok(spec),
                Some(Err(e)) => Err(format!("cannot restore the request: {e}")),
                None => Err("cannot restore the request: it was not journaled".to_owned()),
            };
            let requeue = state == TaskState::Queued || rerun_interrupted;
            match (requeue, spec) {
                (true, Ok(spec)) => {
                    entry.pending = Some(Box::new(Pending {
                        spec,
                        cancel: CancellationToken::new(),
                    }));
                    // An interrupted run enters the queue afresh; this is
                    // the journaled row coming back, not a live task
                    // changing state.
                    if state == TaskState::Running {
                        entry.status.state = TaskState::Queued;
                        entry.status.started_at = None;
                        entry.status.counters = Counters::default();
                    }
                    inner.tasks.insert(id.clone(), entry);
                    if state == TaskState::Running {
                        inner.emit(&id);
                    }
                    inner.queue.push_back(id);
                    restored.queued += 1;
                }
                (requeue, spec) => {
                    let reason = match spec {
                        Err(e) if requeue => e,
                        _ => INTERRUPTED.to_owned(),
                    };
                    inner.tasks.insert(id.clone(), entry);
                    let ending = Ending::Stopped {
                        state: TaskState::Failed,
                        reason,
                    };
                    inner.end(&id, ending);
                    restored.ended += 1;
                }
            }
        }
        drop(inner);
        if restored.queued > 0 {
            self.queued_signal.notify_one();
        }
        restored
    }
}

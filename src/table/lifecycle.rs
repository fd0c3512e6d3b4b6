//! The task life cycle: the only code that changes a task's state.
//!
//! `queued → running → one final state`, or `queued → final` (cancelled,
//! shut down). Each change is one step under the table's lock that first
//! checks the current state: [`Inner::start_next`] takes the oldest queued
//! task off the queue *and* marks it running, so nothing (a cancel) can come
//! between the two; [`Inner::end`] is the one way a task reaches its final
//! state, whatever ends it (its run, a cancel, shutdown, a refusal, a
//! restart). A change a task's current state does not allow is refused, so a
//! task is published final exactly once.
//!
//! Reading views, the log tail and progress counters live elsewhere; those
//! never change the state.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::outcomes::RunOutcome;
use crate::model::{Delivery, TaskSpec, TaskState};

/// How a task ends.
#[derive(Debug)]
pub(super) enum Ending {
    /// Its run reported how it went.
    Ran(RunOutcome),
    /// It ends without (further) running: a refusal, a cancelled queued
    /// task, shutdown, a run a restart interrupted. `reason` becomes the
    /// `error_message`; the counters stay as they are.
    Stopped {
        /// The final state.
        state: TaskState,
        /// Why.
        reason: String,
    },
}

impl Ending {
    fn state(&self) -> TaskState {
        match self {
            Ending::Ran(outcome) => outcome.state,
            Ending::Stopped { state, .. } => *state,
        }
    }
}

/// Whether a task in state `from` may go to `to`.
fn allowed(from: TaskState, to: TaskState) -> bool {
    match from {
        TaskState::Queued => to != TaskState::Queued,
        TaskState::Running => to.is_final(),
        _ => false,
    }
}

/// Checks a change and logs a refused one; true when it may happen.
fn check(task_id: &str, from: TaskState, to: TaskState) -> bool {
    let ok = allowed(from, to);
    if !ok {
        tracing::debug!(
            task_id,
            from = from.as_str(),
            to = to.as_str(),
            "state change refused"
        );
    }
    ok
}

impl Inner {
    /// Takes the oldest queued task off the queue and marks it running, in
    /// one step; its request and the token that cancels its run. Tasks that
    /// ended while queued are skipped.
    pub(super) fn start_next(&mut self) -> Option<(TaskSpec, CancellationToken)> {
        while let Some(id) = self.queue.pop_front() {
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            let Some(pending) = &entry.pending else {
                continue;
            };
            if !check(&id, entry.status.state, TaskState::Running) {
                continue;
            }
            let next = (pending.spec.clone(), pending.cancel.clone());
            entry.status.state = TaskState::Running;
            entry.status.started_at = Some(Utc::now());
            self.emit(&id);
            return Some(next);
        }
        None
    }

    /// Ends a held task: sets its final state, completion time, exit code,
    /// counters and message; counts it; stops and drops what only an
    /// unfinished task needs; streams the final status (with the task's reply
    /// route, which the task then drops); moves it into the history. False (nothing happens) if the task is not held or already
    /// final.
    pub(super) fn end(&mut self, id: &str, ending: Ending) -> bool {
        let Some(entry) = self.tasks.get_mut(id) else {
            return false;
        };
        let from = entry.status.state;
        let to = ending.state();
        if !to.is_final() || !check(id, from, to) {
            return false;
        }
        let completed = Utc::now();
        let status = &mut entry.status;
        status.state = to;
        status.completed_at = Some(completed);
        let cancel_reason = entry.cancel_reason.take();
        let run = match ending {
            Ending::Ran(outcome) => {
                status.return_code = outcome.return_code;
                status.counters = outcome.counters;
                // A run that was told to stop reports why it was told.
                status.error_message = match (to, cancel_reason) {
                    (TaskState::Cancelled, Some(reason)) => Some(reason),
                    _ => outcome.error_message,
                };
                status.output = outcome.output;
                status.output_per_host = outcome.output_per_host;
                status
                    .started_at
                    .and_then(|started| (completed - started).to_std().ok())
            }
            Ending::Stopped { reason, .. } => {
                status.return_code = None;
                status.error_message = Some(reason);
                None
            }
        };
        if let Some(pending) = entry.pending.take() {
            // Whatever still waits on it (a run) must stop.
            pending.cancel.cancel();
        }
        if from == TaskState::Queued {
            self.queue.retain(|queued| queued != id);
        }
        self.settings.metrics.task_finished(to, run);
        self.emit(id);
        // The final status carries the reply route on its way out; the task
        // keeps none.
        if let Some(entry) = self.tasks.get_mut(id) {
            entry.status.delivery = Delivery::default();
        }
        self.remember_finished(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_task_goes_queued_running_final_and_never_leaves_a_final_state() {
        let all = [Queued, Running, Success, Failed, Cancelled, Timeout];
        let finals = [Success, Failed, Cancelled, Timeout];
        for to in all {
            assert_eq!(allowed(Queued, to), to != Queued, "queued → {to:?}");
            assert_eq!(allowed(Running, to), to.is_final(), "running → {to:?}");
            for from in finals {
                assert!(!allowed(from, to), "{from:?} → {to:?}");
            }
        }
    }
}

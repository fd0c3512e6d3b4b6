//! The run pool: `worker.concurrency` permits, each one lent to a run.
//!
//! It takes queued tasks from the [`TaskTable`] in FIFO order whenever a permit
//! is free, runs them with the [`PlaybookRunner`], and reports state back to
//! the table. Dropping a run's permit frees its slot. It does not decide
//! anything about task state itself.
//!
//! A run's task starts, results and output lines also go, numbered from 1
//! per run, to an [`EventSink`] (the MQTT events topic), which never blocks
//! the run. When the last run ends with nothing queued, the heap the burst
//! freed goes back to the system ([`IdleTrim`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::heap::IdleTrim;
use crate::model::{Counters, EventSink, RunEvent};
use crate::run::{PlaybookRunner, RunEvents};
use crate::table::{self, TaskTable};

/// Reports a run's progress and output into the table, and its events to
/// the sink.
struct TableEvents {
    table: TaskTable,
    task_id: String,
    sink: Arc<dyn EventSink>,
    /// The last event number given. Held while the event is handed to the
    /// sink, so that numbers reach it in order from the run's two readers
    /// (callback events and output lines).
    seq: Mutex<u64>,
}

impl TableEvents {
    fn publish(&self, event: impl FnOnce() -> RunEvent) {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        self.sink.send(&self.task_id, *seq, &event());
    }
}

impl RunEvents for TableEvents {
    fn progress(&self, counters: Counters) {
        self.table.progress(&self.task_id, counters);
    }

    fn output(&self, line: &str) {
        tracing::debug!(target: "ansible", task_id = %self.task_id, "{line}");
        let line = table::log_line(line);
        self.table.append_log(&self.task_id, line);
        self.publish(|| RunEvent::Line {
            text: line.to_owned(),
        });
    }

    fn event(&self, event: RunEvent) {
        self.publish(|| event);
    }
}

/// Dispatches queued tasks until `stop` is cancelled; runs are spawned on
/// `runs`, which the caller waits on to drain them. Each run's events go to
/// `sink`.
pub async fn dispatch(
    table: TaskTable,
    runner: Arc<PlaybookRunner>,
    concurrency: usize,
    sink: Arc<dyn EventSink>,
    stop: CancellationToken,
    runs: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let idle_trim = Arc::new(IdleTrim::default());
    // Runs spawned and not finished yet.
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        // Taking a task and marking it running is one step of the table.
        let (spec, cancel) = tokio::select! {
            next = table.start_next() => next,
            _ = stop.cancelled() => return,
        };
        let table = table.clone();
        let runner = runner.clone();
        let sink = sink.clone();
        let idle_trim = idle_trim.clone();
        let active = active.clone();
        active.fetch_add(1, Ordering::AcqRel);
        runs.spawn(async move {
            let id = spec.task_id.clone();
            tracing::info!(task_id = %id, playbook = %spec.playbook.display(), "run started");
            let events = Arc::new(TableEvents {
                table: table.clone(),
                task_id: id.clone(),
                sink,
                seq: Mutex::new(0),
            });
            let outcome = runner.execute(&spec, cancel, events).await;
            tracing::info!(task_id = %id, state = outcome.state.as_str(),
                return_code = ?outcome.return_code, "run finished");
            table.finish(&id, outcome);
            drop(permit);
            // The last run ended and nothing waits: the worker is idle.
            if active.fetch_sub(1, Ordering::AcqRel) == 1 && table.queued() == 0 {
                idle_trim.went_idle();
            }
        });
    }
}

//! Process-wide counters and their Prometheus text rendering (`/metrics`).
//!
//! The task table records finals, refusals and run durations; the MQTT client
//! records reconnects and ignored Response Topics; the embedded broker's front
//! door records the clients and publishes it refused; the events publisher
//! records the run events it dropped. Queue and running gauges are read from the table when
//! rendering, so nothing here keeps a second copy of task state.
//!
//! Counters are independent atomics; the run duration histogram is one value
//! under a lock, so every scrape sees its buckets, sum and count from the same
//! moment (cumulative buckets never decrease and `+Inf` equals `_count`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::model::TaskState;

/// Why a request did not become a queued task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON, not an object, or no usable task id.
    Unaddressable,
    /// A usable id but another field broke a rule.
    Invalid,
    /// The queue was full.
    QueueFull,
    /// The worker was shutting down.
    ShuttingDown,
    /// The task id was already held (not run again).
    Duplicate,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::Unaddressable,
        Refusal::Invalid,
        Refusal::QueueFull,
        Refusal::ShuttingDown,
        Refusal::Duplicate,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Unaddressable => "unaddressable",
            Refusal::Invalid => "invalid",
            Refusal::QueueFull => "queue_full",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Duplicate => "duplicate",
        }
    }
}

/// Why the embedded broker's front door refused a client or a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRefusal {
    /// A CONNECT with a client id reserved for the worker.
    ClientId,
    /// A CONNECT with a wrong or missing login.
    Login,
    /// A PUBLISH to a topic only the worker publishes to.
    WorkerTopic,
    /// A PUBLISH from a user whose role may not publish.
    Role,
    /// A PUBLISH over `max_payload_size`.
    TooLarge,
}

impl BrokerRefusal {
    const ALL: [BrokerRefusal; 5] = [
        BrokerRefusal::ClientId,
        BrokerRefusal::Login,
        BrokerRefusal::WorkerTopic,
        BrokerRefusal::Role,
        BrokerRefusal::TooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            BrokerRefusal::ClientId => "client_id",
            BrokerRefusal::Login => "login",
            BrokerRefusal::WorkerTopic => "worker_topic",
            BrokerRefusal::Role => "role",
            BrokerRefusal::TooLarge => "too_large",
        }
    }
}

/// Upper bounds (seconds) of the run duration histogram's buckets.
const DURATION_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Final states, in rendering order.
const FINAL_STATES: [TaskState; 4] = [
    TaskState::Success,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Timeout,
];

/// Counters shared by the table, the MQTT client and `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    finals: [AtomicU64; 4],
    refusals: [AtomicU64; 5],
    reconnects: AtomicU64,
    response_topics_ignored: AtomicU64,
    broker_refusals: [AtomicU64; 5],
    events_dropped: AtomicU64,
    run_durations: Mutex<RunDurations>,
}

/// The run duration histogram: changed and read only as a whole.
#[derive(Debug, Default, Clone, Copy)]
struct RunDurations {
    /// Runs no longer than each bound of [`DURATION_BUCKETS`] (cumulative).
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl RunDurations {
    fn observe(&mut self, run: Duration) {
        let seconds = run.as_secs_f64();
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&mut self.buckets) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        let micros = u64::try_from(run.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }
}

impl Metrics {
    /// Counts a task that reached `state`, and the length of its run if it
    /// ran.
    pub fn task_finished(&self, state: TaskState, run: Option<Duration>) {
        if let Some(i) = FINAL_STATES.iter().position(|s| *s == state) {
            self.finals[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(run) = run {
            self.run_durations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(run);
        }
    }

    /// Counts a refused request.
    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reconnect to the broker (every connect after the first).
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request whose MQTT 5 Response Topic was not used (the task
    /// itself was not refused for it).
    pub fn response_topic_ignored(&self) {
        self.response_topics_ignored.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client or PUBLISH the embedded broker's front door refused.
    pub fn broker_refused(&self, why: BrokerRefusal) {
        if let Some(i) = BrokerRefusal::ALL.iter().position(|w| *w == why) {
            self.broker_refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a run event not published on the events topic (not connected,
    /// or the client's queue had no room for it).
    pub fn event_dropped(&self) {
        self.events_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the current queue gauges.
    pub fn render(&self, queued: usize, running: usize) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        header(
            &mut out,
            "ansible_worker_build_info",
            "gauge",
            "Version of the running worker.",
        );
        let _ = writeln!(
            out,
            "ansible_worker_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "ansible_worker_tasks_total",
            "counter",
            "Tasks that reached a final state, by state.",
        );
        for (state, counter) in FINAL_STATES.iter().zip(&self.finals) {
            let _ = writeln!(
                out,
                "ansible_worker_tasks_total{{state=\"{}\"}} {}",
                state.as_str(),
                load(counter)
            );
        }
        header(
            &mut out,
            "ansible_worker_tasks_queued",
            "gauge",
            "Tasks waiting for a run slot.",
        );
        let _ = writeln!(out, "ansible_worker_tasks_queued {queued}");
        header(
            &mut out,
            "ansible_worker_tasks_running",
            "gauge",
            "Tasks running now.",
        );
        let _ = writeln!(out, "ansible_worker_tasks_running {running}");
        header(
            &mut out,
            "ansible_worker_refusals_total",
            "counter",
            "Requests that did not become a queued task, by reason.",
        );
        for (why, counter) in Refusal::ALL.iter().zip(&self.refusals) {
            let _ = writeln!(
                out,
                "ansible_worker_refusals_total{{reason=\"{}\"}} {}",
                why.label(),
                load(counter)
            );
        }
        header(
            &mut out,
            "ansible_worker_mqtt_reconnects_total",
            "counter",
            "Reconnects to the MQTT broker.",
        );
        let _ = writeln!(
            out,
            "ansible_worker_mqtt_reconnects_total {}",
            load(&self.reconnects)
        );
        header(
            &mut out,
            "ansible_worker_response_topics_ignored_total",
            "counter",
            "Requests whose MQTT 5 Response Topic was ignored (a filter, a $ topic or one of the worker's own).",
        );
        let _ = writeln!(
            out,
            "ansible_worker_response_topics_ignored_total {}",
            load(&self.response_topics_ignored)
        );
        header(
            &mut out,
            "ansible_worker_broker_refusals_total",
            "counter",
            "Clients and publishes the embedded broker refused, by reason.",
        );
        for (why, counter) in BrokerRefusal::ALL.iter().zip(&self.broker_refusals) {
            let _ = writeln!(
                out,
                "ansible_worker_broker_refusals_total{{reason=\"{}\"}} {}",
                why.label(),
                load(counter)
            );
        }
        header(
            &mut out,
            "ansible_worker_events_dropped_total",
            "counter",
            "Run events not published on the events topic (not connected, or no room in the MQTT client's queue).",
        );
        let _ = writeln!(
            out,
            "ansible_worker_events_dropped_total {}",
            load(&self.events_dropped)
        );
        header(
            &mut out,
            "ansible_worker_run_duration_seconds",
            "histogram",
            "Length of ansible-playbook runs.",
        );
        // A copy, so the lock is not held while formatting.
        let durations = *self
            .run_durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(durations.buckets) {
            let _ = writeln!(
                out,
                "ansible_worker_run_duration_seconds_bucket{{le=\"{bound}\"}} {bucket}"
            );
        }
        let count = durations.count;
        let _ = writeln!(
            out,
            "ansible_worker_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = durations.sum_micros as f64 / 1e6;
        let _ = writeln!(out, "ansible_worker_run_duration_seconds_sum {sum}");
        let _ = writeln!(out, "ansible_worker_run_duration_seconds_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counts_move_and_histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.task_finished(TaskState::Success, Some(Duration::from_millis(1500)));
        metrics.task_finished(TaskState::Failed, Some(Duration::from_secs(20)));
        metrics.task_finished(TaskState::Failed, None);
        metrics.refused(Refusal::QueueFull);
        metrics.reconnected();
        metrics.response_topic_ignored();
        metrics.broker_refused(BrokerRefusal::WorkerTopic);
        metrics.event_dropped();
        let text = metrics.render(3, 1);
        assert_eq!(value(&text, "ansible_worker_events_dropped_total"), 1.0);
        assert_eq!(
            value(
                &text,
                "ansible_worker_broker_refusals_total{reason=\"worker_topic\"}"
            ),
            1.0
        );
        assert_eq!(
            value(&text, "ansible_worker_tasks_total{state=\"success\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "ansible_worker_tasks_total{state=\"failed\"}"),
            2.0
        );
        assert_eq!(
            value(
                &text,
                "ansible_worker_refusals_total{reason=\"queue_full\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "ansible_worker_tasks_queued"), 3.0);
        assert_eq!(value(&text, "ansible_worker_mqtt_reconnects_total"), 1.0);
        assert_eq!(
            value(&text, "ansible_worker_response_topics_ignored_total"),
            1.0
        );
        let bucket = |le: &str| {
            value(
                &text,
                &format!("ansible_worker_run_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("1"), 0.0);
        assert_eq!(bucket("2.5"), 1.0);
        assert_eq!(bucket("30"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(
            value(&text, "ansible_worker_run_duration_seconds_sum"),
            21.5
        );
    }

    #[test]
    fn every_scrape_shows_one_consistent_histogram_while_runs_end() {
        // Short runs land in every bucket, long ones only in le="3600".
        const SHORT: Duration = Duration::from_millis(100);
        const LONG: Duration = Duration::from_secs(2000);
        let metrics = Metrics::default();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (scrapes, verdict) = std::thread::scope(|scope| {
            for run in [SHORT, LONG, SHORT, LONG] {
                let (metrics, done) = (&metrics, &done);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        metrics.task_finished(TaskState::Success, Some(run));
                    }
                });
            }
            let mut scrapes = 0;
            let mut verdict = Ok(());
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            while verdict.is_ok() && std::time::Instant::now() < deadline {
                verdict = check_histogram(&metrics.render(0, 0), SHORT, LONG);
                scrapes += 1;
            }
            // Before any assertion: the scope waits for the threads.
            done.store(true, Ordering::Relaxed);
            (scrapes, verdict)
        });
        if let Err(problem) = verdict {
            panic!("scrape {scrapes}: {problem}");
        }
        assert!(scrapes > 100, "{scrapes}");
    }

    /// Cumulative buckets never decrease, `+Inf` is `_count`, and `_sum` is
    /// what the counted runs add up to.
    fn check_histogram(text: &str, short: Duration, long: Duration) -> Result<(), String> {
        let series = "ansible_worker_run_duration_seconds";
        let mut previous = 0.0;
        let bounds = DURATION_BUCKETS.iter().map(ToString::to_string);
        for bound in bounds.chain(["+Inf".into()]) {
            let bucket = value(text, &format!("{series}_bucket{{le=\"{bound}\"}}"));
            if bucket < previous {
                return Err(format!("le={bound} fell below {previous}:\n{text}"));
            }
            previous = bucket;
        }
        let count = value(text, &format!("{series}_count"));
        if previous != count {
            return Err(format!("+Inf is not _count:\n{text}"));
        }
        let shorts = value(text, &format!("{series}_bucket{{le=\"0.5\"}}"));
        let expected = shorts * short.as_secs_f64() + (count - shorts) * long.as_secs_f64();
        let sum = value(text, &format!("{series}_sum"));
        if (sum - expected).abs() > expected * 1e-9 {
            return Err(format!("_sum is not {expected}:\n{text}"));
        }
        Ok(())
    }
}

//! The callback plugin and the report built from its events.
//!
//! Owns the event format: `callback.py` (embedded here, written to disk by the
//! runner as [`CALLBACK_FILE_NAME`]) prints one JSON object per line to the
//! run's FIFO, and [`RunReport`] turns those lines into the status counters,
//! the `set_stats` output and the error summary, and hands back each task
//! start and result as a [`RunEvent`] for the events topic (names and
//! outcomes only: no result data, no `msg`). Pure logic: it never reads the
//! FIFO, starts a process or publishes anything.
//!
//! Counters climb live with each result, following Ansible's own accounting
//! (`ok` includes changed results and ignored failures; a rescued failure is
//! counted only as `rescued`). When the final `stats` event arrives, the
//! counters become exactly the PLAY RECAP summed over all hosts.
//!
//! `output` follows the original worker's documented rule, not Ansible's
//! aggregation: each `set_stats` result's data is merged in arrival order,
//! later top-level keys replacing earlier ones (a nested object is replaced
//! whole, not merged), whatever `aggregate` said; the same per host for
//! `output_per_host`. Ansible's own custom stats from the final `stats` event
//! only fill in keys no `set_stats` event showed (a `no_log` task's result is
//! censored before the plugin sees it, yet Ansible still records its data).

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{Counters, ResultStatus, RunEvent};

/// Source of the Ansible callback plugin that emits the events.
pub const CALLBACK_PLUGIN: &str = include_str!("../callback.py");
/// The plugin's name, as listed in `ANSIBLE_CALLBACKS_ENABLED`.
pub const CALLBACK_NAME: &str = "ansible_worker";
/// The file name the plugin must have inside `ANSIBLE_CALLBACK_PLUGINS`.
pub const CALLBACK_FILE_NAME: &str = "ansible_worker.py";
/// Environment variable naming the FIFO the plugin writes its events to.
pub const EVENTS_PATH_ENV: &str = "ANSIBLE_WORKER_EVENTS";

/// How many failed or unreachable results the error summary names.
const SUMMARY_LIMIT: usize = 5;

/// A line from the plugin that is not one of its events.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON, not an object with a string `kind`, or a known kind with
    /// fields of the wrong shape.
    #[error("malformed callback event")]
    Malformed(#[source] serde_json::Error),
}

/// One line of the plugin's output.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    TaskStart {
        #[serde(default)]
        name: String,
        #[serde(default)]
        play: Option<String>,
        #[serde(default)]
        handler: bool,
    },
    Result(TaskResult),
    SetStats(SetStats),
    Stats(Stats),
    NoHosts,
    /// A kind this version does not know: skipped, so the plugin may grow.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Failed,
    Skipped,
    Unreachable,
}

/// One host's result of one task.
#[derive(Debug, Deserialize)]
struct TaskResult {
    status: Status,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    task: String,
    #[serde(default)]
    changed: bool,
    /// Failed with `ignore_errors` (or unreachable with `ignore_unreachable`).
    #[serde(default)]
    ignored: bool,
    /// Failed inside a block whose `rescue` will handle it.
    #[serde(default)]
    rescuable: bool,
    #[serde(default)]
    msg: Option<String>,
}

/// One `set_stats` result: its data and the hosts it applies to.
#[derive(Debug, Deserialize)]
struct SetStats {
    /// `per_host: true`: the hosts Ansible records it for; None: global.
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    data: Map<String, Value>,
}

/// The final stats: the PLAY RECAP and the `set_stats` data.
#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    hosts: BTreeMap<String, HostRecap>,
    #[serde(default)]
    custom_run: Option<Map<String, Value>>,
    #[serde(default)]
    custom_per_host: Option<Map<String, Value>>,
}

/// One host's line of the PLAY RECAP (`stats.summarize(host)`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostRecap {
    ok: u64,
    changed: u64,
    failures: u64,
    unreachable: u64,
    skipped: u64,
    rescued: u64,
    ignored: u64,
}

/// What one line of the plugin did to the report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Counters or output changed.
    pub changed: bool,
    /// A task start or result, for the events topic.
    pub event: Option<RunEvent>,
}

/// Everything a run reported through the callback plugin so far.
#[derive(Debug, Default)]
pub struct RunReport {
    tasks_started: u64,
    live: Counters,
    recap: Option<Counters>,
    /// Global `set_stats` data merged from the events, later keys winning.
    output: Map<String, Value>,
    /// The same per host.
    output_per_host: BTreeMap<String, Map<String, Value>>,
    /// Ansible's aggregated custom stats from the final `stats` event.
    ansible_output: Map<String, Value>,
    ansible_output_per_host: Map<String, Value>,
    problems: Vec<String>,
    problems_total: usize,
    current_task: Option<String>,
    no_hosts_matched: bool,
}

impl RunReport {
    /// Applies one JSON line: whether counters or output changed, and the
    /// task start or result it reports. Unknown kinds change nothing;
    /// anything else that is not an event is an [`EventError`].
    pub fn apply_line(&mut self, line: &str) -> Result<Applied, EventError> {
        let event: Event = serde_json::from_str(line).map_err(EventError::Malformed)?;
        let changed = |event| Applied {
            changed: true,
            event,
        };
        Ok(match event {
            Event::TaskStart {
                name,
                play,
                handler,
            } => {
                self.tasks_started += 1;
                self.current_task = Some(name.clone());
                changed(Some(RunEvent::TaskStart {
                    task: name,
                    play,
                    handler,
                }))
            }
            Event::Result(result) => {
                let event = result.event();
                self.apply_result(result);
                changed(Some(event))
            }
            Event::SetStats(set) => {
                self.apply_set_stats(set);
                changed(None)
            }
            Event::Stats(stats) => {
                self.apply_stats(stats);
                changed(None)
            }
            Event::NoHosts => {
                self.no_hosts_matched = true;
                Applied::default()
            }
            Event::Unknown => Applied::default(),
        })
    }

    /// The status counters: live tallies during the run, exactly the PLAY
    /// RECAP summed over hosts once the final stats arrived. `total` is the
    /// number of tasks started (each once, however many hosts ran it).
    pub fn counters(&self) -> Counters {
        Counters {
            total: self.tasks_started,
            ..self.recap.unwrap_or(self.live)
        }
    }

    /// The global `set_stats` data (`per_host: false`): every result's data
    /// in arrival order, later keys winning.
    pub fn output(&self) -> Map<String, Value> {
        let mut output = self.ansible_output.clone();
        output.extend(self.output.clone());
        output
    }

    /// The `per_host: true` `set_stats` data, `{host: {...}}`, merged per
    /// host by the same rule.
    pub fn output_per_host(&self) -> Map<String, Value> {
        let mut all = self.ansible_output_per_host.clone();
        for (host, data) in &self.output_per_host {
            let entry = all
                .entry(host.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(merged) => merged.extend(data.clone()),
                other => *other = Value::Object(data.clone()),
            }
        }
        all
    }

    /// True once any task started, i.e. Ansible got past parsing the playbook.
    pub fn saw_task(&self) -> bool {
        self.tasks_started > 0
    }

    /// True once the final stats (the PLAY RECAP) arrived.
    pub fn has_final_stats(&self) -> bool {
        self.recap.is_some()
    }

    /// True when a play's host pattern matched no host.
    pub fn no_hosts_matched(&self) -> bool {
        self.no_hosts_matched
    }

    /// The name of the task started last, if any.
    pub fn current_task(&self) -> Option<&str> {
        self.current_task.as_deref()
    }

    /// The first few failed (not ignored, not rescued) and unreachable
    /// results, like `Task 'X' failed on host 'h': msg`, joined with `"; "`.
    pub fn error_summary(&self) -> Option<String> {
        if self.problems.is_empty() {
            return None;
        }
        let mut summary = self.problems.join("; ");
        let more = self.problems_total - self.problems.len();
        if more > 0 {
            summary.push_str(&format!(" (and {more} more)"));
        }
        Some(summary)
    }

    fn apply_result(&mut self, result: TaskResult) {
        let live = &mut self.live;
        // Mirrors StrategyBase._process_pending_results in ansible-core.
        let problem = match result.status {
            Status::Ok => {
                live.ok += 1;
                live.changed += u64::from(result.changed);
                None
            }
            Status::Failed if result.ignored => {
                live.ok += 1;
                live.ignored += 1;
                live.changed += u64::from(result.changed);
                None
            }
            Status::Failed if result.rescuable => {
                live.rescued += 1;
                None
            }
            Status::Failed => {
                live.failed += 1;
                Some("failed")
            }
            Status::Skipped => {
                live.skipped += 1;
                None
            }
            Status::Unreachable if result.ignored => {
                live.ok += 1;
                live.ignored += 1;
                None
            }
            Status::Unreachable => {
                live.unreachable += 1;
                Some("unreachable")
            }
        };
        if let Some(what) = problem {
            self.problems_total += 1;
            if self.problems.len() < SUMMARY_LIMIT {
                self.problems.push(describe_problem(&result, what));
            }
        }
    }

    fn apply_stats(&mut self, stats: Stats) {
        let mut recap = Counters::default();
        for host in stats.hosts.values() {
            recap.ok = recap.ok.saturating_add(host.ok);
            recap.changed = recap.changed.saturating_add(host.changed);
            recap.failed = recap.failed.saturating_add(host.failures);
            recap.skipped = recap.skipped.saturating_add(host.skipped);
            recap.unreachable = recap.unreachable.saturating_add(host.unreachable);
            recap.rescued = recap.rescued.saturating_add(host.rescued);
            recap.ignored = recap.ignored.saturating_add(host.ignored);
        }
        self.recap = Some(recap);
        self.ansible_output = stats.custom_run.unwrap_or_default();
        self.ansible_output_per_host = stats.custom_per_host.unwrap_or_default();
    }

    fn apply_set_stats(&mut self, set: SetStats) {
        match set.hosts {
            None => self.output.extend(set.data),
            Some(hosts) => {
                for host in hosts {
                    self.output_per_host
                        .entry(host)
                        .or_default()
                        .extend(set.data.clone());
                }
            }
        }
    }
}

impl TaskResult {
    /// The result as an event: host, task and outcome, never its `msg`.
    fn event(&self) -> RunEvent {
        let status = match self.status {
            Status::Ok if self.changed => ResultStatus::Changed,
            Status::Ok => ResultStatus::Ok,
            Status::Failed => ResultStatus::Failed,
            Status::Skipped => ResultStatus::Skipped,
            Status::Unreachable => ResultStatus::Unreachable,
        };
        RunEvent::Result {
            task: self.task.clone(),
            host: self.host.clone(),
            status,
            ignored: self.ignored,
            rescued: self.status == Status::Failed && self.rescuable && !self.ignored,
        }
    }
}

/// `Task 'NAME' failed on host 'H': MSG`.
fn describe_problem(result: &TaskResult, what: &str) -> String {
    let host = result.host.as_deref().unwrap_or("?");
    let mut text = format!("Task '{}' {what} on host '{host}'", result.task);
    if let Some(msg) = result
        .msg
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        text.push_str(": ");
        text.push_str(msg);
    }
    text
}

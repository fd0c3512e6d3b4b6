//! The callback plugin and the report built from its events.
//!
//! Owns the event format: `callback.py` (embedded here, written to disk by the
//! runner as [`CALLBACK_FILE_NAME`]) prints one JSON object per line to the
//! run's FIFO, and [`RunReport`] turns those lines into the status counters,
//! the `set_stats` output and the error summary. Pure logic: it never reads
//! the FIFO, starts a process or publishes anything.
//!
//! Counters climb live with each result, following Ansible's own accounting
//! (`ok` includes changed results and ignored failures; a rescued failure is
//! counted only as `rescued`). When the final `stats` event arrives, the
//! counters become exactly the PLAY RECAP summed over all hosts.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::Counters;

/// Source of the Ansible callback plugin that emits the events.
pub const CALLBACK_PLUGIN: &str = include_str!("callback.py");
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
    },
    Result(TaskResult),
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

/// Everything a run reported through the callback plugin so far.
#[derive(Debug, Default)]
pub struct RunReport {
    tasks_started: u64,
    live: Counters,
    recap: Option<Counters>,
    output: Map<String, Value>,
    output_per_host: Map<String, Value>,
    problems: Vec<String>,
    problems_total: usize,
    current_task: Option<String>,
    no_hosts_matched: bool,
}

impl RunReport {
    /// Applies one JSON line; returns `Ok(true)` when counters or output
    /// changed. Unknown kinds are `Ok(false)`; anything else that is not an
    /// event is an [`EventError`].
    pub fn apply_line(&mut self, line: &str) -> Result<bool, EventError> {
        let event: Event = serde_json::from_str(line).map_err(EventError::Malformed)?;
        Ok(match event {
            Event::TaskStart { name } => {
                self.tasks_started += 1;
                self.current_task = Some(name);
                true
            }
            Event::Result(result) => {
                self.apply_result(result);
                true
            }
            Event::Stats(stats) => {
                self.apply_stats(stats);
                true
            }
            Event::NoHosts => {
                self.no_hosts_matched = true;
                false
            }
            Event::Unknown => false,
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

    /// The global `set_stats` data (`per_host: false`), as Ansible merged it.
    pub fn output(&self) -> Map<String, Value> {
        self.output.clone()
    }

    /// The `per_host: true` `set_stats` data: `{host: {...}}`.
    pub fn output_per_host(&self) -> Map<String, Value> {
        self.output_per_host.clone()
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
        self.output = stats.custom_run.unwrap_or_default();
        self.output_per_host = stats.custom_per_host.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Captured from ansible-core 2.19.14 running a mixed playbook on three
    /// local hosts (changed, skipped, ignored failure, a failure rescued by an
    /// outer block, include_tasks, set_stats, a handler). Its PLAY RECAP:
    /// h1 ok=10 changed=2 unreachable=0 failed=0 skipped=2 rescued=0 ignored=1
    /// h2 ok=7  changed=1 unreachable=0 failed=0 skipped=4 rescued=0 ignored=0
    /// h3 ok=9  changed=1 unreachable=0 failed=0 skipped=3 rescued=1 ignored=0
    const MIXED_RUN: &str = r#"
{"kind": "task_start", "name": "Change something", "handler": false}
{"kind": "result", "status": "ok", "host": "h2", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h1", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Skip on h2", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Ignored failure on h1", "handler": false}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Ignored failure on h1", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h3", "task": "Ignored failure on h1", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "failed", "host": "h1", "task": "Ignored failure on h1", "changed": true, "ignored": true, "rescuable": false, "msg": "non-zero return code"}
{"kind": "task_start", "name": "Fail on h3 inside block", "handler": false}
{"kind": "result", "status": "skipped", "host": "h1", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "failed", "host": "h3", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": true, "msg": "h3 breaks inside the block"}
{"kind": "task_start", "name": "Rescue step", "handler": false}
{"kind": "result", "status": "ok", "host": "h3", "task": "Rescue step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Fail inside rescue", "handler": false}
{"kind": "result", "status": "skipped", "host": "h3", "task": "Fail inside rescue", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Always step", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Include some tasks", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Include some tasks", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Include some tasks", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Include some tasks", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Included debug", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Included debug", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Included debug", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Included debug", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Fail hard on h2", "handler": false}
{"kind": "result", "status": "skipped", "host": "h1", "task": "Fail hard on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Fail hard on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h3", "task": "Fail hard on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Global stats", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Global stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Aggregated counter", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Aggregated counter", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Aggregated counter", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Aggregated counter", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Per host stats", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Per host stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Per host stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Per host stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Report change", "handler": true}
{"kind": "result", "status": "ok", "host": "h1", "task": "Report change", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Report change", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Report change", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "stats", "hosts": {"h1": {"ok": 10, "failures": 0, "unreachable": 0, "changed": 2, "skipped": 2, "rescued": 0, "ignored": 1}, "h2": {"ok": 7, "failures": 0, "unreachable": 0, "changed": 1, "skipped": 4, "rescued": 0, "ignored": 0}, "h3": {"ok": 9, "failures": 0, "unreachable": 0, "changed": 1, "skipped": 3, "rescued": 1, "ignored": 0}}, "custom_run": {"version": "1.2.3", "nested": {"a": 1}, "hosts_seen": 3}, "custom_per_host": {"h1": {"me": "h1"}, "h2": {"me": "h2"}, "h3": {"me": "h3"}}}
"#;

    /// The same playbook with `fail_mode=true` and a fourth, unreachable host
    /// (exit code 4): h4 unreachable, h3 fails inside the rescue after its
    /// rescued failure, h2 fails outright. Its PLAY RECAP:
    /// h1 ok=10 changed=2 unreachable=0 failed=0 skipped=2 rescued=0 ignored=1
    /// h2 ok=4  changed=1 unreachable=0 failed=1 skipped=3 rescued=0 ignored=0
    /// h3 ok=4  changed=1 unreachable=0 failed=1 skipped=1 rescued=1 ignored=0
    /// h4 ok=0  changed=0 unreachable=1 failed=0 skipped=0 rescued=0 ignored=0
    const FAILING_RUN: &str = r#"
{"kind": "task_start", "name": "Change something", "handler": false}
{"kind": "result", "status": "unreachable", "host": "h4", "task": "Change something", "changed": false, "ignored": false, "rescuable": false, "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port 1: Connection refused"}
{"kind": "result", "status": "ok", "host": "h2", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h1", "task": "Change something", "changed": true, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Skip on h2", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Skip on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Ignored failure on h1", "handler": false}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Ignored failure on h1", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h3", "task": "Ignored failure on h1", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "failed", "host": "h1", "task": "Ignored failure on h1", "changed": true, "ignored": true, "rescuable": false, "msg": "non-zero return code"}
{"kind": "task_start", "name": "Fail on h3 inside block", "handler": false}
{"kind": "result", "status": "skipped", "host": "h1", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "skipped", "host": "h2", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "failed", "host": "h3", "task": "Fail on h3 inside block", "changed": false, "ignored": false, "rescuable": true, "msg": "h3 breaks inside the block"}
{"kind": "task_start", "name": "Rescue step", "handler": false}
{"kind": "result", "status": "ok", "host": "h3", "task": "Rescue step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Fail inside rescue", "handler": false}
{"kind": "result", "status": "failed", "host": "h3", "task": "Fail inside rescue", "changed": false, "ignored": false, "rescuable": false, "msg": "rescue itself failed on h3"}
{"kind": "task_start", "name": "Always step", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h3", "task": "Always step", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Include some tasks", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Include some tasks", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Include some tasks", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Included debug", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Included debug", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "ok", "host": "h2", "task": "Included debug", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Fail hard on h2", "handler": false}
{"kind": "result", "status": "skipped", "host": "h1", "task": "Fail hard on h2", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "result", "status": "failed", "host": "h2", "task": "Fail hard on h2", "changed": false, "ignored": false, "rescuable": false, "msg": "h2 is broken"}
{"kind": "task_start", "name": "Global stats", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Global stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Aggregated counter", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Aggregated counter", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Per host stats", "handler": false}
{"kind": "result", "status": "ok", "host": "h1", "task": "Per host stats", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "task_start", "name": "Report change", "handler": true}
{"kind": "result", "status": "ok", "host": "h1", "task": "Report change", "changed": false, "ignored": false, "rescuable": false, "msg": null}
{"kind": "stats", "hosts": {"h1": {"ok": 10, "failures": 0, "unreachable": 0, "changed": 2, "skipped": 2, "rescued": 0, "ignored": 1}, "h2": {"ok": 4, "failures": 1, "unreachable": 0, "changed": 1, "skipped": 3, "rescued": 0, "ignored": 0}, "h3": {"ok": 4, "failures": 1, "unreachable": 0, "changed": 1, "skipped": 1, "rescued": 1, "ignored": 0}, "h4": {"ok": 0, "failures": 0, "unreachable": 1, "changed": 0, "skipped": 0, "rescued": 0, "ignored": 0}}, "custom_run": {"version": "1.2.3", "nested": {"a": 1}, "hosts_seen": 1}, "custom_per_host": {"h1": {"me": "h1"}}}
"#;

    const MIXED_RECAP: Counters = Counters {
        total: 14,
        ok: 26,
        changed: 4,
        failed: 0,
        skipped: 9,
        unreachable: 0,
        rescued: 1,
        ignored: 1,
    };

    const FAILING_RECAP: Counters = Counters {
        total: 14,
        ok: 18,
        changed: 4,
        failed: 2,
        skipped: 6,
        unreachable: 1,
        rescued: 1,
        ignored: 1,
    };

    fn lines(run: &str) -> impl Iterator<Item = &str> {
        run.lines().filter(|line| !line.trim().is_empty())
    }

    fn replay<'a>(lines: impl Iterator<Item = &'a str>) -> RunReport {
        let mut report = RunReport::default();
        for line in lines {
            assert!(report.apply_line(line).expect(line), "{line}");
        }
        report
    }

    fn is_stats(line: &&str) -> bool {
        line.contains(r#""kind": "stats""#)
    }

    #[test]
    fn mixed_run_counters_equal_the_play_recap() {
        let report = replay(lines(MIXED_RUN));
        assert_eq!(report.counters(), MIXED_RECAP);
        assert!(report.saw_task());
        assert!(report.has_final_stats());
        assert_eq!(report.error_summary(), None);
    }

    #[test]
    fn mixed_run_live_tallies_already_match_the_recap() {
        let report = replay(lines(MIXED_RUN).filter(|l| !is_stats(l)));
        assert!(!report.has_final_stats());
        assert_eq!(report.counters(), MIXED_RECAP);
    }

    #[test]
    fn mixed_run_output_is_the_merged_set_stats_data() {
        let report = replay(lines(MIXED_RUN));
        let output = Value::Object(report.output());
        assert_eq!(
            output,
            json!({"version": "1.2.3", "nested": {"a": 1}, "hosts_seen": 3})
        );
        let per_host = Value::Object(report.output_per_host());
        assert_eq!(
            per_host,
            json!({"h1": {"me": "h1"}, "h2": {"me": "h2"}, "h3": {"me": "h3"}})
        );
    }

    #[test]
    fn failing_run_counters_equal_the_play_recap() {
        let report = replay(lines(FAILING_RUN));
        assert_eq!(report.counters(), FAILING_RECAP);
        assert_eq!(
            Value::Object(report.output_per_host()),
            json!({"h1": {"me": "h1"}})
        );
        let live = replay(lines(FAILING_RUN).filter(|l| !is_stats(l)));
        assert_eq!(live.counters(), FAILING_RECAP);
    }

    #[test]
    fn failing_run_summary_names_failed_and_unreachable_results_only() {
        let report = replay(lines(FAILING_RUN));
        assert_eq!(
            report.error_summary().as_deref(),
            Some(
                "Task 'Change something' unreachable on host 'h4': Task failed: Failed to \
                 connect to the host via ssh: ssh: connect to host 127.0.0.1 port 1: \
                 Connection refused; \
                 Task 'Fail inside rescue' failed on host 'h3': rescue itself failed on h3; \
                 Task 'Fail hard on h2' failed on host 'h2': h2 is broken"
            )
        );
    }

    fn result(status: &str, changed: bool, ignored: bool, rescuable: bool) -> String {
        json!({
            "kind": "result", "status": status, "host": "web1", "task": "T",
            "changed": changed, "ignored": ignored, "rescuable": rescuable, "msg": "boom",
        })
        .to_string()
    }

    fn live_after(line: &str) -> Counters {
        let mut report = RunReport::default();
        assert!(report.apply_line(line).unwrap());
        report.counters()
    }

    #[test]
    fn live_tallies_follow_ansible_accounting() {
        let none = Counters::default();
        assert_eq!(
            live_after(&result("ok", true, false, false)),
            Counters {
                ok: 1,
                changed: 1,
                ..none
            }
        );
        assert_eq!(
            live_after(&result("ok", false, false, false)),
            Counters { ok: 1, ..none }
        );
        assert_eq!(
            live_after(&result("failed", true, true, false)),
            Counters {
                ok: 1,
                changed: 1,
                ignored: 1,
                ..none
            }
        );
        // Ansible counts a rescued failure as rescued only, not as ok.
        assert_eq!(
            live_after(&result("failed", false, false, true)),
            Counters { rescued: 1, ..none }
        );
        assert_eq!(
            live_after(&result("failed", true, false, false)),
            Counters { failed: 1, ..none }
        );
        assert_eq!(
            live_after(&result("skipped", false, false, false)),
            Counters { skipped: 1, ..none }
        );
        assert_eq!(
            live_after(&result("unreachable", false, false, false)),
            Counters {
                unreachable: 1,
                ..none
            }
        );
        // ignore_unreachable: Ansible counts ok and ignored.
        assert_eq!(
            live_after(&result("unreachable", false, true, false)),
            Counters {
                ok: 1,
                ignored: 1,
                ..none
            }
        );
    }

    #[test]
    fn stats_replace_live_tallies_but_keep_the_task_count() {
        let mut report = RunReport::default();
        for line in [
            r#"{"kind":"task_start","name":"A","handler":false}"#,
            r#"{"kind":"task_start","name":"B","handler":true}"#,
        ] {
            report.apply_line(line).unwrap();
        }
        report
            .apply_line(&result("ok", true, false, false))
            .unwrap();
        report
            .apply_line(&result("failed", false, false, true))
            .unwrap();
        assert_eq!(report.current_task(), Some("B"));
        let stats = json!({"kind": "stats", "hosts": {
            "a": {"ok": 3, "changed": 1, "failures": 1, "unreachable": 0,
                  "skipped": 2, "rescued": 0, "ignored": 1},
            "b": {"ok": 1, "changed": 0, "failures": 0, "unreachable": 1,
                  "skipped": 0, "rescued": 1, "ignored": 0}},
            "custom_run": {}, "custom_per_host": {}});
        assert!(report.apply_line(&stats.to_string()).unwrap());
        assert_eq!(
            report.counters(),
            Counters {
                total: 2,
                ok: 4,
                changed: 1,
                failed: 1,
                skipped: 2,
                unreachable: 1,
                rescued: 1,
                ignored: 1,
            }
        );
    }

    #[test]
    fn summary_names_the_first_five_and_counts_the_rest() {
        let mut report = RunReport::default();
        for n in 0..7 {
            let line = json!({"kind": "result", "status": "failed", "host": format!("h{n}"),
                "task": "Deploy", "changed": false, "ignored": false, "rescuable": false,
                "msg": null});
            report.apply_line(&line.to_string()).unwrap();
        }
        let summary = report.error_summary().unwrap();
        assert!(summary.starts_with("Task 'Deploy' failed on host 'h0'; Task 'Deploy'"));
        assert!(summary.contains("on host 'h4'"));
        assert!(!summary.contains("on host 'h5'"));
        assert!(summary.ends_with("host 'h4' (and 2 more)"), "{summary}");
    }

    #[test]
    fn malformed_lines_are_errors() {
        let mut report = RunReport::default();
        for line in [
            "",
            "not json",
            "[1, 2]",
            r#"{"name": "no kind"}"#,
            r#"{"kind": 7}"#,
            r#"{"kind": "result", "status": "exploded", "host": "h"}"#,
            r#"{"kind": "stats", "hosts": {"h": {"ok": "many"}}}"#,
        ] {
            assert!(report.apply_line(line).is_err(), "{line:?}");
        }
        assert_eq!(report.counters(), Counters::default());
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut report = RunReport::default();
        let changed = report
            .apply_line(r#"{"kind": "play_start", "name": "later version"}"#)
            .unwrap();
        assert!(!changed);
        assert!(!report.apply_line(r#"{"kind": "no_hosts"}"#).unwrap());
        assert!(report.no_hosts_matched());
        assert!(!report.saw_task());
        assert_eq!(report.counters(), Counters::default());
    }

    #[test]
    fn plugin_is_embedded_under_its_name() {
        assert!(CALLBACK_PLUGIN.contains(&format!("CALLBACK_NAME = \"{CALLBACK_NAME}\"")));
        assert!(CALLBACK_PLUGIN.contains(EVENTS_PATH_ENV));
        assert_eq!(CALLBACK_FILE_NAME, format!("{CALLBACK_NAME}.py"));
    }
}

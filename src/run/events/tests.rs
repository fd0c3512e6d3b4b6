//! Unit tests of [`RunReport`](super::RunReport): replays of two runs captured
//! from real `ansible-playbook` output (in `fixtures/`, one event per line)
//! checked against their PLAY RECAPs, plus hand-made lines for the accounting
//! edge cases.

use super::*;
use serde_json::json;

/// Captured from ansible-core 2.19.14 running a mixed playbook on three
/// local hosts (changed, skipped, ignored failure, a failure rescued by an
/// outer block, include_tasks, set_stats, a handler). Its PLAY RECAP:
/// h1 ok=10 changed=2 unreachable=0 failed=0 skipped=2 rescued=0 ignored=1
/// h2 ok=7  changed=1 unreachable=0 failed=0 skipped=4 rescued=0 ignored=0
/// h3 ok=9  changed=1 unreachable=0 failed=0 skipped=3 rescued=1 ignored=0
const MIXED_RUN: &str = include_str!("fixtures/mixed_run.jsonl");

/// The same playbook with `fail_mode=true` and a fourth, unreachable host
/// (exit code 4): h4 unreachable, h3 fails inside the rescue after its
/// rescued failure, h2 fails outright. Its PLAY RECAP:
/// h1 ok=10 changed=2 unreachable=0 failed=0 skipped=2 rescued=0 ignored=1
/// h2 ok=4  changed=1 unreachable=0 failed=1 skipped=3 rescued=0 ignored=0
/// h3 ok=4  changed=1 unreachable=0 failed=1 skipped=1 rescued=1 ignored=0
/// h4 ok=0  changed=0 unreachable=1 failed=0 skipped=0 rescued=0 ignored=0
const FAILING_RUN: &str = include_str!("fixtures/failing_run.jsonl");

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
        assert!(report.apply_line(line).expect(line).changed, "{line}");
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
    assert!(report.apply_line(line).unwrap().changed);
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
    assert!(report.apply_line(&stats.to_string()).unwrap().changed);
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
    let applied = report
        .apply_line(r#"{"kind": "play_start", "name": "later version"}"#)
        .unwrap();
    assert_eq!(applied, Applied::default());
    let applied = report.apply_line(r#"{"kind": "no_hosts"}"#).unwrap();
    assert_eq!(applied, Applied::default());
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

fn set_stats(hosts: Option<&[&str]>, data: Value) -> String {
    json!({"kind": "set_stats", "hosts": hosts, "data": data}).to_string()
}

/// The final stats event with Ansible's own aggregation of the custom data.
fn stats_with(custom_run: Value, custom_per_host: Value) -> String {
    json!({"kind": "stats", "hosts": {"h1": {"ok": 1}},
        "custom_run": custom_run, "custom_per_host": custom_per_host})
    .to_string()
}

#[test]
fn later_set_stats_calls_overwrite_earlier_values_whatever_ansible_aggregated() {
    // Two calls writing vm_ip: with `aggregate: true` Ansible concatenates
    // the strings, with `aggregate: false` it keeps the last; the output is
    // the last value either way.
    for ansible_value in ["10.0.0.5010.0.0.51", "10.0.0.51"] {
        let report = replay(
            [
                set_stats(None, json!({"vm_ip": "10.0.0.50", "first": 1})),
                set_stats(None, json!({"vm_ip": "10.0.0.51", "second": [2]})),
                stats_with(
                    json!({"vm_ip": ansible_value, "first": 1, "second": [2]}),
                    json!({}),
                ),
            ]
            .iter()
            .map(String::as_str),
        );
        assert_eq!(
            Value::Object(report.output()),
            json!({"vm_ip": "10.0.0.51", "first": 1, "second": [2]})
        );
    }
}

#[test]
fn output_is_merged_in_arrival_order_before_the_final_stats_too() {
    let mut report = RunReport::default();
    report
        .apply_line(&set_stats(None, json!({"n": 1, "cfg": {"a": 1}})))
        .unwrap();
    report
        .apply_line(&set_stats(None, json!({"n": 2, "cfg": {"b": 2}})))
        .unwrap();
    // Top-level keys are replaced whole: a nested object is not merged.
    assert_eq!(
        Value::Object(report.output()),
        json!({"n": 2, "cfg": {"b": 2}})
    );
    assert!(report.output_per_host().is_empty());
}

#[test]
fn per_host_data_is_merged_per_host_by_the_same_rule() {
    let report = replay(
        [
            set_stats(Some(&["h1"]), json!({"name": "h1", "role": "web"})),
            set_stats(Some(&["h2"]), json!({"name": "h2"})),
            set_stats(Some(&["h1"]), json!({"name": "h1-final"})),
            // A run_once task's per-host data applies to every host.
            set_stats(Some(&["h1", "h2", "h3"]), json!({"batch": 7})),
            set_stats(None, json!({"global": true})),
            stats_with(
                json!({"global": true}),
                json!({"h1": {"name": "h1h1-final", "role": "web", "batch": 7},
                       "h2": {"name": "h2", "batch": 7}, "h3": {"batch": 7}}),
            ),
        ]
        .iter()
        .map(String::as_str),
    );
    assert_eq!(
        Value::Object(report.output_per_host()),
        json!({"h1": {"name": "h1-final", "role": "web", "batch": 7},
               "h2": {"name": "h2", "batch": 7}, "h3": {"batch": 7}})
    );
    assert_eq!(Value::Object(report.output()), json!({"global": true}));
}

#[test]
fn data_no_set_stats_event_showed_comes_from_ansibles_stats() {
    // A no_log set_stats result reaches the plugin censored; Ansible still
    // records its data.
    let report = replay(
        [
            set_stats(None, json!({"seen": "late"})),
            set_stats(Some(&["h1"]), json!({"seen": 1})),
            stats_with(
                json!({"seen": "earlylate", "hidden": "secret-free"}),
                json!({"h1": {"seen": 1, "hidden": 2}, "h2": {"only": "ansible"}}),
            ),
        ]
        .iter()
        .map(String::as_str),
    );
    assert_eq!(
        Value::Object(report.output()),
        json!({"seen": "late", "hidden": "secret-free"})
    );
    assert_eq!(
        Value::Object(report.output_per_host()),
        json!({"h1": {"seen": 1, "hidden": 2}, "h2": {"only": "ansible"}})
    );
}

/// Every task start and result of a real run becomes one event, in order,
/// with the outcome the recap counts it as.
#[test]
fn task_starts_and_results_become_events() {
    let mut report = RunReport::default();
    let events: Vec<RunEvent> = lines(MIXED_RUN)
        .filter_map(|line| report.apply_line(line).unwrap().event)
        .collect();
    let starts: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            RunEvent::TaskStart { task, .. } => Some(task.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len() as u64, MIXED_RECAP.total);
    let expected: Vec<String> = lines(MIXED_RUN)
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|doc| doc["kind"] == "task_start")
        .map(|doc| doc["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(starts, expected);
    let results = |wanted: fn(ResultStatus, bool, bool) -> bool| {
        events
            .iter()
            .filter(|event| {
                matches!(event, RunEvent::Result { status, ignored, rescued, .. }
                if wanted(*status, *ignored, *rescued))
            })
            .count() as u64
    };
    assert_eq!(
        results(|status, _, _| status == ResultStatus::Skipped),
        MIXED_RECAP.skipped
    );
    assert_eq!(results(|_, _, rescued| rescued), MIXED_RECAP.rescued);
    assert_eq!(results(|_, ignored, _| ignored), MIXED_RECAP.ignored);
    assert_eq!(
        results(|status, ignored, _| status == ResultStatus::Changed
            || (status == ResultStatus::Failed && ignored)),
        MIXED_RECAP.changed
    );
}

#[test]
fn a_result_event_keeps_the_outcome_and_drops_the_message() {
    let event = |line: &str| RunReport::default().apply_line(line).unwrap().event;
    let expected = |status, ignored, rescued| {
        Some(RunEvent::Result {
            task: "T".into(),
            host: Some("web1".into()),
            status,
            ignored,
            rescued,
        })
    };
    assert_eq!(
        event(&result("ok", true, false, false)),
        expected(ResultStatus::Changed, false, false)
    );
    assert_eq!(
        event(&result("ok", false, false, false)),
        expected(ResultStatus::Ok, false, false)
    );
    assert_eq!(
        event(&result("failed", true, true, true)),
        expected(ResultStatus::Failed, true, false)
    );
    assert_eq!(
        event(&result("failed", false, false, true)),
        expected(ResultStatus::Failed, false, true)
    );
    assert_eq!(
        event(&result("unreachable", false, false, false)),
        expected(ResultStatus::Unreachable, false, false)
    );
    let failed = event(&result("failed", false, false, false)).unwrap();
    let payload = crate::model::event_payload("t", "w", 1, chrono::Utc::now(), &failed);
    assert!(!String::from_utf8(payload).unwrap().contains("boom"));
    let start = r#"{"kind":"task_start","name":"A","play":"P","handler":true}"#;
    assert_eq!(
        event(start),
        Some(RunEvent::TaskStart {
            task: "A".into(),
            play: Some("P".into()),
            handler: true,
        })
    );
    // An older plugin without the play still reads.
    assert_eq!(
        event(r#"{"kind":"task_start","name":"A"}"#),
        Some(RunEvent::TaskStart {
            task: "A".into(),
            play: None,
            handler: false,
        })
    );
}

//! Micro-benchmarks of the worker's per-task hot paths, through the library's
//! public API: turning a request payload into a checked `TaskSpec`, applying
//! one callback event line to a run report, and serialising a status.
//!
//! Run with `cargo bench --bench hot_paths` (docs/BENCHMARKS.md). Each bench
//! also runs once under `cargo test --benches`, so it cannot rot.

use std::hint::black_box;
use std::path::PathBuf;

use ansible_worker::intake::{IntakePolicy, parse_request};
use ansible_worker::model::{TaskState, TaskStatus};
use ansible_worker::run::events::RunReport;
use criterion::{Criterion, Throughput};
use serde_json::json;

/// The sample playbooks: requests must name files that exist.
fn playbook_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/playbooks")
}

/// A request as a controller sends it: every common option and a nested
/// `extra_vars` of a realistic size (each key and string is checked).
fn realistic_request() -> Vec<u8> {
    let request = json!({
        "task_id": "a1b2c3d4e5f67890",
        "playbook": "hello.yml",
        "inventory": "inventory.yml",
        "extra_vars": {
            "app_version": "2.14.1",
            "release_channel": "stable",
            "replicas": 3,
            "features": ["metrics", "tracing", "audit"],
            "database": {
                "host": "db.internal.example",
                "port": 5432,
                "pool": {"min": 2, "max": 20},
            },
            "maintenance_window": {"start": "02:00", "end": "04:00"},
            "notify_emails": ["ops@example.com", "oncall@example.com"],
        },
        "limit": "web*",
        "tags": ["deploy", "config"],
        "skip_tags": ["slow"],
        "verbosity": 1,
        "check_mode": false,
        "diff_mode": true,
        "forks": 10,
        "timeout": 900,
    });
    serde_json::to_vec(&request).expect("a JSON value serialises")
}

fn intake(c: &mut Criterion) {
    let policy = IntakePolicy::new(&playbook_dir(), false).expect("examples/playbooks exists");
    let payload = realistic_request();
    parse_request(&payload, &policy).expect("the realistic request is valid");
    let mut group = c.benchmark_group("intake");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(&payload), &policy))
    });
    group.finish();
}

/// Real lines written by the callback plugin (the unit tests' fixture).
const FIXTURE: &str = include_str!("../src/run/events/fixtures/mixed_run.jsonl");

fn events(c: &mut Criterion) {
    let lines: Vec<&str> = FIXTURE.lines().filter(|l| !l.trim().is_empty()).collect();
    let result = *lines
        .iter()
        .find(|l| l.contains(r#""kind": "result""#))
        .expect("the fixture has a result line");
    let stats = *lines
        .iter()
        .find(|l| l.contains(r#""kind": "stats""#))
        .expect("the fixture has a stats line");
    let mut group = c.benchmark_group("events");
    group.bench_function("apply_line/result", |b| {
        let mut report = RunReport::default();
        b.iter(|| report.apply_line(black_box(result)))
    });
    group.bench_function("apply_line/stats", |b| {
        let mut report = RunReport::default();
        b.iter(|| report.apply_line(black_box(stats)))
    });
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("apply_line/whole_run", |b| {
        b.iter(|| {
            let mut report = RunReport::default();
            for line in &lines {
                let _ = report.apply_line(black_box(line));
            }
            report.counters()
        })
    });
    group.finish();
}

/// A final status with counters and `set_stats` output, as most runs end.
fn final_status() -> TaskStatus {
    let mut status = TaskStatus::new("a1b2c3d4e5f67890", "lab-1", TaskState::Running);
    let mut report = RunReport::default();
    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        report.apply_line(line).expect("fixture lines are events");
    }
    status.started_at = Some(status.created_at);
    status.state = TaskState::Success;
    status.completed_at = Some(status.created_at + chrono::Duration::milliseconds(2345));
    status.counters = report.counters();
    status.output = report.output();
    status.output_per_host = report.output_per_host();
    status.return_code = Some(0);
    status.at(status.created_at)
}

fn status(c: &mut Criterion) {
    let queued = TaskStatus::new("a1b2c3d4e5f67890", "lab-1", TaskState::Queued);
    let done = final_status();
    let mut group = c.benchmark_group("status");
    group.bench_function("to_json/queued", |b| {
        b.iter(|| black_box(&queued).to_json())
    });
    group.bench_function("to_json/final", |b| b.iter(|| black_box(&done).to_json()));
    group.finish();
}

// What `criterion_group!` / `criterion_main!` expand to, written out: the
// macros define an undocumented `pub fn`, which the crate's lints refuse.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    intake(&mut criterion);
    events(&mut criterion);
    status(&mut criterion);
    criterion.final_summary();
}

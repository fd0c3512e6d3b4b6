//! The published request schema (`docs/schema/task-request.schema.json`)
//! against the worker's own intake: a table of requests goes through both,
//! and they must agree on each (types, ranges, the id charset and length,
//! required fields, the text rules, extra_vars templates and reserved keys).
//! What only the worker can decide (its disk, its size limit) is listed
//! separately: the schema lets it pass, intake refuses it.

mod common;

use std::os::unix::fs::PermissionsExt;

use ansible_worker::intake::{IntakePolicy, ReservedNames, parse_request};
use serde_json::{Map, Value, json};

use common::{REQUEST_SCHEMA, schema_errors};

/// A playbook directory with a playbook, a sub-directory with another, an
/// inventory file and an executable one.
fn playbook_directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let play = "- hosts: all\n  gather_facts: false\n  tasks: []\n";
    std::fs::write(dir.path().join("hello.yml"), play).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/play.yml"), play).unwrap();
    std::fs::write(dir.path().join("inv.ini"), "localhost\n").unwrap();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{}'\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The smallest request both accept.
fn base() -> Map<String, Value> {
    let Value::Object(request) =
        json!({"task_id": "t-1", "playbook": "hello.yml", "inventory": "inv.ini"})
    else {
        unreachable!()
    };
    request
}

/// [`base`] with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut request = base();
    request.insert(field.to_owned(), value);
    Value::Object(request)
}

/// [`base`] without `field`.
fn without(field: &str) -> Value {
    let mut request = base();
    request.remove(field);
    Value::Object(request)
}

/// `extra_vars` holding `vars`.
fn vars(vars: Value) -> Value {
    with("extra_vars", vars)
}

/// Requests both must accept.
fn accepted() -> Vec<(&'static str, Value)> {
    let long_id = "a".repeat(128);
    vec![
        ("the three required fields", Value::Object(base())),
        (
            "every field",
            json!({
                "task_id": "A-z_0.9", "playbook": "sub/play.yml", "inventory": "web1,web2,",
                "extra_vars": {"greeting": "hi", "n": [1, {"a": "b"}], "pct": "100%", "hash": "#"},
                "limit": "web*:!db", "tags": ["a", "-b"], "skip_tags": [], "verbosity": 4,
                "check_mode": true, "diff_mode": false, "forks": 1, "timeout": 31_536_000,
                "git_pull": false
            }),
        ),
        (
            "null for every optional field",
            json!({
                "task_id": "t-1", "playbook": "hello.yml", "inventory": "inv.ini",
                "extra_vars": null, "limit": null, "tags": null, "skip_tags": null,
                "verbosity": null, "check_mode": null, "diff_mode": null, "forks": null,
                "timeout": null, "git_pull": null
            }),
        ),
        (
            "an unknown field",
            with("priority", json!({"any": ["thing"]})),
        ),
        ("a 128-character id", with("task_id", json!(long_id))),
        ("a one-character id", with("task_id", json!("x"))),
        ("a dot path", with("playbook", json!("./hello.yml"))),
        (
            "a path through a sub-directory",
            with("playbook", json!("sub/../hello.yml")),
        ),
        ("one host", with("inventory", json!("localhost"))),
        ("a host list with a slash", with("inventory", json!("a/b,"))),
        ("the largest forks", with("forks", json!(4_294_967_295u64))),
        ("verbosity 0", with("verbosity", json!(0))),
        ("timeout 1", with("timeout", json!(1))),
        ("empty extra_vars", vars(json!({}))),
        (
            "ansible without the underscore",
            vars(json!({"ansible": 1, "my_ansible_x": 2})),
        ),
        (
            "a reserved name nested",
            vars(json!({"x": {"hostvars": 1, "ansible_host": 2}})),
        ),
        (
            "half a template marker",
            vars(json!({"x": "{ {", "y": "%", "z": "{"})),
        ),
        ("a leading dash in limit", with("limit", json!("-x"))),
        ("a limit with spaces", with("limit", json!(" web "))),
        ("an empty tag list", with("tags", json!([]))),
    ]
}

/// Requests both must refuse.
fn refused() -> Vec<(&'static str, Value)> {
    let long_id = "a".repeat(129);
    vec![
        ("not an object: array", json!([])),
        ("not an object: string", json!("t-1")),
        ("not an object: number", json!(5)),
        ("not an object: null", Value::Null),
        ("no task_id", without("task_id")),
        ("task_id null", with("task_id", Value::Null)),
        ("task_id a number", with("task_id", json!(5))),
        ("task_id a boolean", with("task_id", json!(true))),
        ("task_id empty", with("task_id", json!(""))),
        ("task_id of 129 characters", with("task_id", json!(long_id))),
        ("task_id with /", with("task_id", json!("a/b"))),
        ("task_id with +", with("task_id", json!("a+b"))),
        ("task_id with #", with("task_id", json!("a#b"))),
        ("task_id with a space", with("task_id", json!("a b"))),
        (
            "task_id with a newline at the end",
            with("task_id", json!("ab\n")),
        ),
        ("task_id not ASCII", with("task_id", json!("tâche"))),
        ("task_id with $", with("task_id", json!("$SYS"))),
        ("no playbook", without("playbook")),
        ("playbook null", with("playbook", Value::Null)),
        ("playbook a number", with("playbook", json!(5))),
        ("playbook empty", with("playbook", json!(""))),
        (
            "playbook absolute",
            with("playbook", json!("/etc/hello.yml")),
        ),
        ("playbook hidden", with("playbook", json!(".hello.yml"))),
        (
            "playbook in a hidden directory",
            with("playbook", json!("sub/.git/x.yml")),
        ),
        (
            "playbook starting with ..x",
            with("playbook", json!("..x.yml")),
        ),
        (
            "playbook with a control character",
            with("playbook", json!("hel\u{7}lo.yml")),
        ),
        ("no inventory", without("inventory")),
        ("inventory null", with("inventory", Value::Null)),
        ("inventory an array", with("inventory", json!(["web1"]))),
        ("inventory empty", with("inventory", json!(""))),
        ("inventory an option", with("inventory", json!("-iweb1,"))),
        ("inventory absolute", with("inventory", json!("/etc/hosts"))),
        ("inventory hidden", with("inventory", json!(".inv"))),
        (
            "inventory hidden host list",
            with("inventory", json!(".x,")),
        ),
        ("inventory without a host", with("inventory", json!(","))),
        (
            "inventory of blanks",
            with("inventory", json!(" , \u{3000},")),
        ),
        ("inventory with a tab", with("inventory", json!("a\tb,"))),
        ("extra_vars an array", vars(json!([]))),
        ("extra_vars a string", vars(json!("a=1"))),
        ("extra_vars a number", vars(json!(5))),
        ("an ansible_ key", vars(json!({"ansible_host": "evil"}))),
        ("a special variable", vars(json!({"hostvars": {}}))),
        ("a template global", vars(json!({"omit": 1}))),
        ("a playbook keyword", vars(json!({"environment": {}}))),
        (
            "a template value",
            vars(json!({"x": "{{ lookup('pipe', 'id') }}"})),
        ),
        ("a nested block", vars(json!({"x": {"y": [1, "{% if %}"]}}))),
        ("a template key", vars(json!({"{{k}}": 1}))),
        ("a nested comment key", vars(json!({"x": {"{#k": 1}}))),
        ("a closing marker", vars(json!({"x": "a #} b"}))),
        ("a closing expression", vars(json!({"x": ["}}"]}))),
        ("limit a number", with("limit", json!(5))),
        ("limit empty", with("limit", json!(""))),
        ("limit blank", with("limit", json!("  \u{a0}"))),
        ("limit reading a file", with("limit", json!("@hosts.txt"))),
        ("limit with a newline", with("limit", json!("a\nb"))),
        ("tags a string", with("tags", json!("a,b"))),
        ("tags an object", with("tags", json!({"a": 1}))),
        ("an empty tag", with("tags", json!([""]))),
        ("a blank tag", with("tags", json!([" "]))),
        ("a tag with a comma", with("tags", json!(["a,b"]))),
        ("a tag that is a number", with("tags", json!([5]))),
        ("a tag with NUL", with("tags", json!(["a\u{0}"]))),
        ("a null tag", with("skip_tags", json!([null]))),
        ("skip_tags a string", with("skip_tags", json!("a"))),
        ("verbosity -1", with("verbosity", json!(-1))),
        ("verbosity 5", with("verbosity", json!(5))),
        ("verbosity a string", with("verbosity", json!("1"))),
        ("verbosity a boolean", with("verbosity", json!(true))),
        ("verbosity a fraction", with("verbosity", json!(1.5))),
        ("forks 0", with("forks", json!(0))),
        ("forks -1", with("forks", json!(-1))),
        ("forks above u32", with("forks", json!(4_294_967_296u64))),
        ("forks a string", with("forks", json!("5"))),
        ("forks a fraction", with("forks", json!(2.5))),
        ("timeout 0", with("timeout", json!(0))),
        ("timeout above a year", with("timeout", json!(31_536_001))),
        ("timeout a string", with("timeout", json!("60"))),
        ("timeout negative", with("timeout", json!(-60))),
        ("check_mode a string", with("check_mode", json!("true"))),
        ("check_mode a number", with("check_mode", json!(1))),
        ("diff_mode a number", with("diff_mode", json!(0))),
        ("git_pull a string", with("git_pull", json!("yes"))),
    ]
}

/// Requests only the worker can refuse (they need its disk or its size
/// limit, or JSON Schema cannot tell them apart): the schema lets them pass.
fn refused_by_the_worker_only() -> Vec<(&'static str, Value)> {
    let mut deep = json!("leaf");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        ("a missing playbook", with("playbook", json!("missing.yml"))),
        (
            "a playbook that is a directory",
            with("playbook", json!("sub")),
        ),
        (
            "a playbook above the directory",
            with("playbook", json!("../hello.yml")),
        ),
        (
            "a deeper escape",
            with("playbook", json!("sub/../../hello.yml")),
        ),
        (
            "a missing inventory file",
            with("inventory", json!("missing/inv.ini")),
        ),
        (
            "an executable inventory",
            with("inventory", json!("script.sh")),
        ),
        (
            "a request over max_request_size",
            vars(json!({"blob": "x".repeat(4096)})),
        ),
        ("a request nested too deeply", vars(json!({ "deep": deep }))),
        // JSON Schema's integers are numbers without a fractional part,
        // however they are spelled; intake takes only integer literals.
        ("verbosity 1.0", with("verbosity", json!(1.0))),
        (
            "forks 2e0",
            with("forks", serde_json::from_str("2e0").unwrap()),
        ),
    ]
}

fn intake_accepts(request: &Value, policy: &IntakePolicy) -> Result<(), String> {
    let payload = serde_json::to_vec(request).unwrap();
    parse_request(&payload, policy)
        .map(|_| ())
        .map_err(|refusal| refusal.reason().to_owned())
}

fn policy(dir: &tempfile::TempDir) -> IntakePolicy {
    let mut policy = IntakePolicy::new(dir.path(), false).unwrap();
    policy.max_request_size = 2048;
    policy
}

#[test]
fn the_request_schema_accepts_what_intake_accepts() {
    let dir = playbook_directory();
    let policy = policy(&dir);
    let mut disagreements = Vec::new();
    for (case, request) in accepted() {
        let intake = intake_accepts(&request, &policy);
        let schema = schema_errors(&REQUEST_SCHEMA, &request);
        if intake.is_err() || !schema.is_empty() {
            disagreements.push(format!(
                "{case}: intake {intake:?}, schema {schema:?}\n    {request}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn the_request_schema_refuses_what_intake_refuses() {
    let dir = playbook_directory();
    let policy = policy(&dir);
    let mut disagreements = Vec::new();
    for (case, request) in refused() {
        let intake = intake_accepts(&request, &policy);
        let schema = REQUEST_SCHEMA.is_valid(&request);
        if intake.is_ok() || schema {
            disagreements.push(format!(
                "{case}: intake {intake:?}, schema valid: {schema}\n    {request}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn what_needs_the_workers_disk_or_limits_is_left_to_the_worker() {
    let dir = playbook_directory();
    let policy = policy(&dir);
    for (case, request) in refused_by_the_worker_only() {
        let schema = schema_errors(&REQUEST_SCHEMA, &request);
        assert!(
            schema.is_empty(),
            "{case}: the schema refuses it: {schema:?}"
        );
        assert!(
            intake_accepts(&request, &policy).is_err(),
            "{case}: intake accepts it"
        );
    }
}

/// The schema repeats the built-in reserved names; both refuse each, and the
/// schema names no other.
#[test]
fn the_schema_refuses_exactly_the_built_in_reserved_names() {
    let dir = playbook_directory();
    let policy = policy(&dir);
    let schema: Value =
        serde_json::from_str(include_str!("../docs/schema/task-request.schema.json")).unwrap();
    let listed = &schema["properties"]["extra_vars"]["propertyNames"]["not"]["anyOf"][1]["enum"];
    let mut listed: Vec<&str> = listed
        .as_array()
        .expect("the reserved names are an enum")
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut builtin: Vec<&str> = ReservedNames::builtin_names().collect();
    builtin.sort_unstable();
    assert_eq!(listed, builtin);
    for name in builtin {
        let request = vars(json!({ name: 1 }));
        assert!(
            intake_accepts(&request, &policy).is_err(),
            "intake takes {name}"
        );
        assert!(
            !REQUEST_SCHEMA.is_valid(&request),
            "the schema takes {name}"
        );
    }
}

/// The status schema takes the documents the library makes along a task's
/// life and refuses ones that break a field's type or a state's rules.
#[test]
fn the_status_schema_takes_real_documents_and_refuses_broken_ones() {
    use ansible_worker::model::{TaskState, TaskStatus};
    use common::STATUS_SCHEMA;

    let queued = TaskStatus::new("t-1", "lab-1", TaskState::Queued);
    let mut running = queued.clone();
    running.state = TaskState::Running;
    running.started_at = Some(chrono::Utc::now());
    running.counters.total = 2;
    running.counters.ok = 1;
    let mut success = running.clone();
    success.state = TaskState::Success;
    success.completed_at = Some(chrono::Utc::now());
    success.return_code = Some(0);
    success.output.insert("vm_ip".into(), json!("10.0.0.51"));
    success
        .output_per_host
        .insert("web1".into(), json!({"uptime": 3}));
    let mut refused = TaskStatus::new("t-2", "lab-1", TaskState::Failed);
    refused.error_message = Some("Queue full (max: 100)".into());
    let mut killed = running.clone();
    killed.state = TaskState::Timeout;
    killed.completed_at = Some(chrono::Utc::now());
    killed.return_code = Some(-15);
    killed.error_message = Some("Timed out after 5 s".into());
    let docs: Vec<Value> = [queued, running, success, refused, killed]
        .iter()
        .map(|status| serde_json::from_slice(&status.at(chrono::Utc::now()).to_json()).unwrap())
        .collect();
    for doc in &docs {
        common::assert_valid_status(doc);
    }

    let [queued, running, success, refused, _] = &docs[..] else {
        unreachable!()
    };
    let mut missing = queued.clone();
    missing.as_object_mut().unwrap().remove("output_per_host");
    assert!(!STATUS_SCHEMA.is_valid(&missing), "a missing field");
    let time = |text: &str| json!(text);
    for (case, doc, field, value) in [
        ("an unknown field", queued, "extra", json!(1)),
        ("an unknown state", queued, "state", json!("done")),
        ("a negative counter", running, "tasks_ok", json!(-1)),
        ("a counter as text", running, "tasks_total", json!("2")),
        (
            "a local time",
            queued,
            "created_at",
            time("2026-01-21T10:30:00.000+01:00"),
        ),
        (
            "no milliseconds",
            queued,
            "created_at",
            time("2026-01-21T10:30:00Z"),
        ),
        (
            "no such day",
            queued,
            "created_at",
            time("2026-02-30T10:30:00.000Z"),
        ),
        ("a bad task id", queued, "task_id", json!("a/b")),
        (
            "running without a start",
            running,
            "started_at",
            Value::Null,
        ),
        ("queued with a return code", queued, "return_code", json!(0)),
        ("success with exit code 2", success, "return_code", json!(2)),
        (
            "success with an error",
            success,
            "error_message",
            json!("x"),
        ),
        (
            "final without completed_at",
            success,
            "completed_at",
            Value::Null,
        ),
        (
            "failed without a reason",
            refused,
            "error_message",
            Value::Null,
        ),
        ("output not an object", success, "output", json!([])),
        (
            "per-host data not by host",
            success,
            "output_per_host",
            json!({"web1": 3}),
        ),
        (
            "a negative duration",
            success,
            "duration_seconds",
            json!(-1.0),
        ),
        ("a worker id with /", queued, "worker_id", json!("a/b")),
    ] {
        let mut doc = doc.clone();
        doc[field] = value;
        assert!(
            !STATUS_SCHEMA.is_valid(&doc),
            "{case}: the schema takes {doc}"
        );
    }
}

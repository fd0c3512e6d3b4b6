//! Unit tests of request intake, against a real playbook directory with
//! symlinks pointing inside and outside. The fixture and request helpers live
//! here; `paths` and `extra_vars` hold the tests of those modules' rules,
//! `refused_files` those of hidden files and inventory scripts, `size` those
//! of requests too large or too deep to parse.

mod extra_vars;
mod paths;
mod refused_files;
mod size;

use super::*;
use crate::model::Inventory;
use serde_json::json;
use std::fs;
use std::os::unix::fs::symlink;

/// A playbook directory with real files, an outside directory, and
/// symlinks pointing both inside and outside.
struct Fixture {
    _root: tempfile::TempDir,
    policy: IntakePolicy,
}

impl Fixture {
    fn dir(&self) -> &Path {
        &self.policy.playbook_directory
    }
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let pb = root.path().join("playbooks");
    let outside = root.path().join("outside");
    for dir in [&pb, &outside, &pb.join("sub"), &pb.join("inventories/prod")] {
        fs::create_dir_all(dir).unwrap();
    }
    for file in [
        pb.join("site.yml"),
        pb.join("sub/deploy.yml"),
        pb.join("hosts.ini"),
        pb.join("odd,"),
        pb.join("inventories/prod/hosts"),
        outside.join("evil.yml"),
        outside.join("hosts.ini"),
        root.path().join("x.yml"),
    ] {
        fs::write(file, "- hosts: all\n").unwrap();
    }
    symlink(outside.join("evil.yml"), pb.join("escape.yml")).unwrap();
    symlink(outside.join("hosts.ini"), pb.join("escape.ini")).unwrap();
    symlink(&outside, pb.join("linkdir")).unwrap();
    symlink(pb.join("site.yml"), pb.join("alias.yml")).unwrap();
    let policy = IntakePolicy::new(&pb, false).unwrap();
    Fixture {
        _root: root,
        policy,
    }
}

/// A valid minimal request with `changes` applied (a `null` change
/// removes the field).
fn request(changes: Value) -> Vec<u8> {
    let mut request = json!({"task_id": "t1", "playbook": "site.yml", "inventory": "localhost,"});
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            request.as_object_mut().unwrap().remove(key);
        } else {
            request[key] = value.clone();
        }
    }
    serde_json::to_vec(&request).unwrap()
}

fn accept(f: &Fixture, changes: Value) -> TaskSpec {
    parse_request(&request(changes), &f.policy).unwrap()
}

/// The reason of an `Invalid` refusal for task `t1`.
fn refuse(f: &Fixture, changes: Value) -> String {
    match parse_request(&request(changes), &f.policy) {
        Err(Refusal::Invalid { task_id, reason }) if task_id == "t1" => reason,
        other => panic!("expected an Invalid refusal, got {other:?}"),
    }
}

fn unaddressable(f: &Fixture, payload: &[u8]) -> String {
    match parse_request(payload, &f.policy) {
        Err(Refusal::Unaddressable { reason }) => reason,
        other => panic!("expected Unaddressable, got {other:?}"),
    }
}

#[test]
fn minimal_request_gets_every_default() {
    let f = fixture();
    let spec = accept(&f, json!({}));
    assert_eq!(
        spec,
        TaskSpec::with_defaults(
            "t1",
            f.dir().join("site.yml"),
            Inventory::Inline("localhost,".into())
        )
    );
}

#[test]
fn null_optional_fields_take_their_defaults() {
    let f = fixture();
    let payload = br#"{"task_id":"t1","playbook":"site.yml","inventory":"h,","extra_vars":null,
        "limit":null,"tags":null,"skip_tags":null,"verbosity":null,"check_mode":null,
        "diff_mode":null,"forks":null,"timeout":null,"git_pull":null}"#;
    let spec = parse_request(payload, &f.policy).unwrap();
    assert_eq!((spec.forks, spec.timeout, spec.limit), (5, None, None));
    assert!(spec.extra_vars.is_empty() && spec.tags.is_empty() && !spec.git_pull);
}

#[test]
fn full_request_maps_every_field() {
    let f = fixture();
    let spec = accept(
        &f,
        json!({"playbook": "sub/deploy.yml", "inventory": "hosts.ini",
            "extra_vars": {"version": "1.2", "nested": {"list": [1, "two", {"k": null}]}},
            "limit": "web:&prod", "tags": ["deploy", "-odd"], "skip_tags": ["slow"],
            "verbosity": 4, "check_mode": true, "diff_mode": true, "forks": 1,
            "timeout": 60, "git_pull": true, "future_field": {"x": 1}}),
    );
    assert_eq!(spec.playbook, f.dir().join("sub/deploy.yml"));
    assert_eq!(spec.inventory, Inventory::File(f.dir().join("hosts.ini")));
    assert_eq!(spec.extra_vars["nested"]["list"][1], "two");
    assert_eq!(spec.limit.as_deref(), Some("web:&prod"));
    assert_eq!(spec.tags, ["deploy", "-odd"]);
    assert_eq!(spec.skip_tags, ["slow"]);
    assert_eq!(spec.verbosity, 4);
    assert!(spec.check_mode && spec.diff_mode && spec.git_pull);
    assert_eq!(spec.forks, 1);
    assert_eq!(spec.timeout, Some(Duration::from_secs(60)));
}

#[test]
fn task_id_charset_and_length_edges() {
    assert!(valid_task_id("a"));
    assert!(valid_task_id("AZaz09._-"));
    assert!(valid_task_id(&"x".repeat(128)));
    for bad in [
        "", "a/b", "a+b", "#", "a#b", "a b", "tâche", "a\u{0}b", "a\nb", "ä",
    ] {
        assert!(!valid_task_id(bad), "{bad:?}");
    }
    assert!(!valid_task_id(&"x".repeat(129)));

    let f = fixture();
    let long = "x".repeat(128);
    assert_eq!(accept(&f, json!({"task_id": long})).task_id, long);
    for bad in ["", "a/b", "a+b", "#", "tâche"] {
        let reason = unaddressable(&f, &request(json!({"task_id": bad})));
        assert!(reason.starts_with("invalid task_id"), "{reason}");
    }
    let reason = unaddressable(&f, &request(json!({"task_id": "x".repeat(129)})));
    assert!(reason.contains("129 characters"), "{reason}");
    let reason = unaddressable(&f, &request(json!({"task_id": "a+b"})));
    assert!(reason.contains("'+'"), "{reason}");
}

#[test]
fn non_string_or_missing_task_id_is_unaddressable() {
    let f = fixture();
    for bad in [json!(42), json!(true), json!(["t1"]), json!({"id": "t1"})] {
        let reason = unaddressable(&f, &request(json!({"task_id": bad})));
        assert!(reason.contains("must be a string"), "{reason}");
    }
    let reason = unaddressable(&f, br#"{"task_id":null,"playbook":"site.yml"}"#);
    assert!(reason.contains("must be a string, not null"), "{reason}");
    let reason = unaddressable(&f, br#"{"playbook":"site.yml"}"#);
    assert_eq!(reason, "missing required field 'task_id'");
}

#[test]
fn hostile_task_id_is_echoed_short_and_escaped() {
    let f = fixture();
    let hostile = format!("\u{1b}[31m{}", "A".repeat(10_000));
    let reason = unaddressable(&f, &request(json!({"task_id": hostile})));
    assert!(reason.len() < 300, "{reason}");
    assert!(!reason.contains('\u{1b}'), "{reason}");
    assert!(reason.contains(&"A".repeat(50)) && !reason.contains(&"A".repeat(65)));
}

#[test]
fn not_json_or_not_an_object_is_unaddressable() {
    let f = fixture();
    assert!(unaddressable(&f, b"").starts_with("payload is not JSON"));
    assert!(unaddressable(&f, b"{task_id: t1}").starts_with("payload is not JSON"));
    assert!(unaddressable(&f, b"\xff\xfe").starts_with("payload is not JSON"));
    for (payload, kind) in [
        (&b"[1]"[..], "an array"),
        (b"\"t1\"", "a string"),
        (b"null", "null"),
        (b"7", "a number"),
    ] {
        let reason = unaddressable(&f, payload);
        assert_eq!(reason, format!("payload is not a JSON object but {kind}"));
    }
}
#[test]
fn limit_rules() {
    let f = fixture();
    let limit = |v: Value| accept(&f, json!({"limit": v})).limit;
    assert_eq!(limit(json!("web1")), Some("web1".into()));
    // `--limit=<v>` is one argv word: a leading `-` is data.
    assert_eq!(limit(json!("-web1")), Some("-web1".into()));
    assert_eq!(
        limit(json!("!db:&prod,~web[0-9]")),
        Some("!db:&prod,~web[0-9]".into())
    );
    assert_eq!(limit(Value::Null), None);
    let reason = |v: Value| refuse(&f, json!({"limit": v}));
    assert_eq!(
        reason(json!(["a"])),
        "Invalid field 'limit': must be a string or null"
    );
    assert_eq!(
        reason(json!(1)),
        "Invalid field 'limit': must be a string or null"
    );
    assert_eq!(
        reason(json!("")),
        "Invalid field 'limit': must not be empty"
    );
    assert_eq!(
        reason(json!("a\u{0}b")),
        "Invalid field 'limit': must not contain control characters"
    );
    assert_eq!(
        reason(json!("a\tb")),
        "Invalid field 'limit': must not contain control characters"
    );
    assert!(reason(json!("@/etc/passwd")).contains("must not contain '@'"));
    assert!(reason(json!("web,@retry")).contains("must not contain '@'"));
}

#[test]
fn tag_list_rules() {
    let f = fixture();
    for field in ["tags", "skip_tags"] {
        let spec = accept(&f, json!({field: ["a", "b-c", "-x"]}));
        let tags = if field == "tags" {
            spec.tags
        } else {
            spec.skip_tags
        };
        assert_eq!(tags, ["a", "b-c", "-x"]);
        assert!(accept(&f, json!({field: []})).tags.is_empty());
        let rule = format!(
            "Invalid field '{field}': must be an array of non-empty strings \
             without commas or control characters"
        );
        for bad in [
            json!("a,b"),
            json!("a"),
            json!({"a": 1}),
            json!([1]),
            json!([null]),
            json!([""]),
            json!(["  "]),
            json!(["a,b"]),
            json!(["ok", "a\nb"]),
        ] {
            assert_eq!(refuse(&f, json!({field: bad})), rule);
        }
    }
}

#[test]
fn integer_field_rules() {
    let f = fixture();
    for v in 0..=4u8 {
        assert_eq!(accept(&f, json!({"verbosity": v})).verbosity, v);
    }
    for bad in [
        json!(5),
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!("2"),
        json!(true),
    ] {
        assert_eq!(
            refuse(&f, json!({"verbosity": bad})),
            "Invalid field 'verbosity': must be an integer from 0 to 4"
        );
    }
    assert_eq!(accept(&f, json!({"forks": 1})).forks, 1);
    assert_eq!(accept(&f, json!({"forks": 50})).forks, 50);
    for bad in [json!(0), json!(-3), json!("5"), json!(2.5), json!([5])] {
        assert_eq!(
            refuse(&f, json!({"forks": bad})),
            "Invalid field 'forks': must be an integer >= 1"
        );
    }
    assert_eq!(
        refuse(&f, json!({"forks": u64::from(u32::MAX) + 1})),
        "Invalid field 'forks': must be an integer from 1 to 4294967295"
    );
    assert_eq!(
        accept(&f, json!({"timeout": 1})).timeout,
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        accept(&f, json!({"timeout": MAX_TIMEOUT_SECS})).timeout,
        Some(Duration::from_secs(MAX_TIMEOUT_SECS))
    );
    for bad in [
        json!(0),
        json!(MAX_TIMEOUT_SECS + 1),
        json!(u64::MAX),
        json!("60"),
        json!(-5),
    ] {
        assert_eq!(
            refuse(&f, json!({"timeout": bad})),
            "Invalid field 'timeout': must be an integer from 1 to 31536000"
        );
    }
}

#[test]
fn boolean_field_rules() {
    let f = fixture();
    for field in ["check_mode", "diff_mode", "git_pull"] {
        let spec = accept(&f, json!({field: true}));
        assert!(spec.check_mode || spec.diff_mode || spec.git_pull);
        let spec = accept(&f, json!({field: false}));
        assert!(!(spec.check_mode || spec.diff_mode || spec.git_pull));
        for bad in [json!("true"), json!(1), json!([])] {
            assert_eq!(
                refuse(&f, json!({field: bad})),
                format!("Invalid field '{field}': must be a boolean")
            );
        }
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let f = fixture();
    let spec = accept(
        &f,
        json!({"priority": "high", "{{ x }}": 1, "callback": ["u"]}),
    );
    assert_eq!(spec, accept(&f, json!({})));
}

#[test]
fn refusal_accessors_give_reason_and_address() {
    let f = fixture();
    let invalid = parse_request(&request(json!({"forks": 0})), &f.policy).unwrap_err();
    assert_eq!(invalid.task_id(), Some("t1"));
    assert_eq!(
        invalid.reason(),
        "Invalid field 'forks': must be an integer >= 1"
    );
    let unaddressable = parse_request(b"[]", &f.policy).unwrap_err();
    assert_eq!(unaddressable.task_id(), None);
    assert!(unaddressable.to_string().contains(unaddressable.reason()));
}

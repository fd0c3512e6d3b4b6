//! Tests of the `extra_vars` rules: templates, `ansible_*` keys, reserved
//! names, and reasons that never echo a value.

use super::*;
use crate::intake::extra_vars::JINJA_MARKERS;
use crate::intake::reserved::{ReservedNames, python_of};

#[test]
fn jinja_markers_are_refused_at_any_depth() {
    let f = fixture();
    for marker in JINJA_MARKERS {
        let deep = json!({"a": [1, {"b": [[format!("x{marker}y")]]}]});
        let reason = refuse(&f, json!({"extra_vars": deep}));
        assert_eq!(
            reason,
            "Invalid extra_vars: the value at extra_vars.a[1].b[0][0] contains a Jinja2 \
             template marker ({{ }} {% %} {# #}); Ansible would evaluate it on the worker"
        );
        let top = refuse(&f, json!({"extra_vars": {"v": marker}}));
        assert!(
            top.starts_with("Invalid extra_vars: the value at extra_vars.v "),
            "{top}"
        );
        let key = format!("k{marker}");
        let nested_key = json!({"a": {"b": [{key.clone(): 1}]}});
        let reason = refuse(&f, json!({"extra_vars": nested_key}));
        assert!(
            reason.starts_with(&format!(
                "Invalid extra_vars: the key at extra_vars.a.b[0].{key} "
            )),
            "{reason}"
        );
        let reason = refuse(&f, json!({"extra_vars": {key.clone(): "plain"}}));
        assert!(reason.starts_with(&format!("Invalid extra_vars: the key at extra_vars.{key} ")));
    }
}

#[test]
fn lone_braces_and_non_strings_are_not_templates() {
    let f = fixture();
    let vars = json!({"json": "{\"a\": {} }", "pct": "100%", "hash": "#1 {x} { {", "n": 7,
        "b": true, "nothing": null, "list": ["} }", "% }"], "obj": {"{": "#"}});
    assert_eq!(
        accept(&f, json!({"extra_vars": vars.clone()})).extra_vars,
        *vars.as_object().unwrap()
    );
}

#[test]
fn extra_vars_must_be_an_object() {
    let f = fixture();
    for bad in [json!([]), json!("a=b"), json!(1), json!(true)] {
        assert_eq!(
            refuse(&f, json!({"extra_vars": bad})),
            "Invalid field 'extra_vars': must be an object"
        );
    }
}

#[test]
fn ansible_keys_are_refused_unless_the_policy_allows_them() {
    let mut f = fixture();
    let vars = json!({"app": 1, "ansible_ssh_common_args": "-o ProxyCommand=x"});
    let reason = refuse(&f, json!({"extra_vars": vars.clone()}));
    assert!(
        reason.starts_with("Invalid extra_vars: key 'ansible_ssh_common_args'"),
        "{reason}"
    );
    assert!(reason.contains("worker.allow_ansible_vars"), "{reason}");
    // Only top-level keys override connection settings.
    let nested = json!({"app": {"ansible_user": "x"}, "my_ansible_x": 1});
    accept(&f, json!({"extra_vars": nested}));
    f.policy.allow_ansible_vars = true;
    let spec = accept(&f, json!({"extra_vars": vars}));
    assert!(spec.extra_vars.contains_key("ansible_ssh_common_args"));
    // Allowing ansible_ keys never allows templates.
    let reason = refuse(&f, json!({"extra_vars": {"ansible_user": "{{ x }}"}}));
    assert!(
        reason.starts_with("Invalid extra_vars: the value"),
        "{reason}"
    );
}

#[test]
fn refusal_reasons_never_contain_extra_vars_values() {
    let f = fixture();
    let secret = "hunter2-SECRET";
    let cases = [
        json!({"extra_vars": {"pw": format!("{secret}{{{{ x }}}}")}}),
        json!({"extra_vars": {"deep": [{"pw": format!("{{% {secret} %}}")}]}}),
        json!({"extra_vars": {"ansible_password": secret}}),
        json!({"extra_vars": {"pw": secret}, "forks": 0}),
        json!({"extra_vars": {"pw": secret}, "playbook": "nope.yml"}),
        json!({"extra_vars": [secret]}),
    ];
    for case in cases {
        let refusal = parse_request(&request(case), &f.policy).unwrap_err();
        assert!(!refusal.reason().contains("hunter2"), "{refusal}");
        assert!(!refusal.to_string().contains("hunter2"), "{refusal}");
    }
}

#[test]
fn reserved_names_are_refused_naming_the_key() {
    let f = fixture();
    for key in [
        "inventory_hostname",
        "hostvars",
        "groups",
        "group_names",
        "playbook_dir",
        "omit",
        "lookup",
        "environment",
        "name",
    ] {
        let reason = refuse(&f, json!({"extra_vars": {"app": 1, key: "127.0.0.1"}}));
        assert_eq!(
            reason,
            format!(
                "Invalid extra_vars: key '{key}' is refused: Ansible reserves this name, and \
                 extra vars outrank the inventory and the playbook (set \
                 worker.allow_ansible_vars = true to allow it)"
            )
        );
        assert!(!reason.contains("127.0.0.1"), "{reason}");
    }
    // Only exact top-level names are reserved.
    let fine = json!({"hostname": 1, "my_groups": 2, "Name": 3, "app": {"hostvars": 4}});
    accept(&f, json!({"extra_vars": fine}));
}

#[test]
fn allow_ansible_vars_lifts_the_reserved_names_too() {
    let mut f = fixture();
    f.policy.allow_ansible_vars = true;
    let vars = json!({"inventory_hostname": "127.0.0.1", "omit": "x"});
    let spec = accept(&f, json!({"extra_vars": vars.clone()}));
    assert_eq!(spec.extra_vars, *vars.as_object().unwrap());
}

#[test]
fn only_a_python_shebang_is_asked_for_reserved_names() {
    let words = |line: &str| python_of(line);
    assert_eq!(
        words("#!/venv/bin/python3"),
        Some(vec!["/venv/bin/python3".to_owned()])
    );
    assert_eq!(
        words("#!/usr/bin/env python3.11"),
        Some(vec!["/usr/bin/env".to_owned(), "python3.11".to_owned()])
    );
    assert_eq!(
        words("#! /usr/bin/python -E"),
        Some(vec!["/usr/bin/python".to_owned(), "-E".to_owned()])
    );
    for other in ["#!/bin/sh", "#!/usr/bin/env bash", "#!", "\x7fELF", ""] {
        assert_eq!(words(other), None, "{other}");
    }
}

#[tokio::test]
async fn the_installed_ansible_lists_what_the_builtin_list_holds() {
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/ansible-playbook");
    let names = ReservedNames::builtin();
    names.ask_installed_ansible(&program, Path::new(env!("CARGO_MANIFEST_DIR")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while names.discovered().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let found = names.discovered().expect("the venv's Ansible answered");
    // The test venv has ansible-core 2.19, which the built-in list copies;
    // its `ansible_` names are refused by the prefix rule instead.
    let found: std::collections::BTreeSet<String> = found
        .iter()
        .filter(|name| !name.starts_with("ansible_"))
        .cloned()
        .collect();
    assert_eq!(found, ReservedNames::builtin_set());
    assert!(names.contains("inventory_hostname") && !names.contains("app"));
}

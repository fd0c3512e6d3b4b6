//! `extra_vars` rules: the value must be an object with no Jinja2 template
//! marker in any key or string value at any depth (Ansible would evaluate it
//! on the worker), and no top-level `ansible_*` key (those override
//! connection settings) or name Ansible reserves (extra vars outrank the
//! inventory, so `inventory_hostname` redirects connections) unless the
//! policy allows them.
//!
//! Reasons name where the problem is, never the offending value, which may be
//! a secret.

use serde_json::{Map, Value};

use super::{IntakePolicy, SHOWN_NAME_CHARS, invalid, shown};

/// Jinja2 delimiters; Ansible templates extra vars, so any of them runs code.
pub(super) const JINJA_MARKERS: [&str; 6] = ["{{", "}}", "{%", "%}", "{#", "#}"];

/// The checked `extra_vars` object (empty when absent).
pub(super) fn extra_vars(
    value: Option<&Value>,
    policy: &IntakePolicy,
) -> Result<Map<String, Value>, String> {
    let vars = match value {
        None => return Ok(Map::new()),
        Some(Value::Object(vars)) => vars,
        Some(_) => return Err(invalid("extra_vars", "must be an object")),
    };
    for (key, value) in vars {
        if let Err(mut at) = template_free(key, value) {
            at.reverse();
            let what = if at.last().is_some_and(|s| matches!(s, Step::Key(_))) {
                "key"
            } else {
                "value"
            };
            let place = render_place(&at);
            return Err(format!(
                "Invalid extra_vars: the {what} at {place} contains a Jinja2 template marker \
                 ({{{{ }}}} {{% %}} {{# #}}); Ansible would evaluate it on the worker"
            ));
        }
    }
    if policy.allow_ansible_vars {
        return Ok(vars.clone());
    }
    if let Some(key) = vars.keys().find(|k| k.starts_with("ansible_")) {
        return Err(format!(
            "Invalid extra_vars: key '{}' is refused: keys starting with 'ansible_' override \
             connection settings (set worker.allow_ansible_vars = true to allow them)",
            shown(key, SHOWN_NAME_CHARS)
        ));
    }
    if let Some(key) = vars.keys().find(|k| policy.reserved_names.contains(k)) {
        return Err(format!(
            "Invalid extra_vars: key '{}' is refused: Ansible reserves this name, and extra \
             vars outrank the inventory and the playbook (set worker.allow_ansible_vars = true \
             to allow it)",
            shown(key, SHOWN_NAME_CHARS)
        ));
    }
    Ok(vars.clone())
}

/// One step of the path to an offending key or value, innermost first in the
/// error; a trailing `Key` means the key itself is at fault.
enum Step<'a> {
    Key(&'a str),
    Member(&'a str),
    Index(usize),
}

fn template_free<'a>(key: &'a str, value: &'a Value) -> Result<(), Vec<Step<'a>>> {
    if has_marker(key) {
        return Err(vec![Step::Key(key)]);
    }
    check_value(value).map_err(|mut at| {
        at.push(Step::Member(key));
        at
    })
}

fn check_value(value: &Value) -> Result<(), Vec<Step<'_>>> {
    match value {
        Value::String(s) if has_marker(s) => Err(Vec::new()),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            check_value(item).map_err(|mut at| {
                at.push(Step::Index(i));
                at
            })
        }),
        Value::Object(members) => members
            .iter()
            .try_for_each(|(key, value)| template_free(key, value)),
        _ => Ok(()),
    }
}

fn render_place(steps: &[Step<'_>]) -> String {
    let mut place = String::from("extra_vars");
    for step in steps {
        match step {
            Step::Key(key) | Step::Member(key) => {
                place.push('.');
                place.push_str(&shown(key, SHOWN_NAME_CHARS));
            }
            Step::Index(i) => place.push_str(&format!("[{i}]")),
        }
    }
    place
}

fn has_marker(text: &str) -> bool {
    JINJA_MARKERS.iter().any(|marker| text.contains(marker))
}

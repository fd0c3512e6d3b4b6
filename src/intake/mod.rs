//! Request intake: turns a raw task request payload into a checked [`TaskSpec`]
//! or a typed [`Refusal`], applying every rule of PROTOCOL.md "Task request
//! (in)" in this one place. Nothing downstream re-checks a `TaskSpec` or sees
//! raw JSON.
//!
//! This module owns validation only: it reads the file system to resolve paths
//! but publishes, logs (beyond unknown-field debug lines) and counts nothing;
//! the caller decides what a refusal turns into (a `failed` status for
//! [`Refusal::Invalid`], a warning for [`Refusal::Unaddressable`]).
//!
//! Decisions beyond the protocol text:
//! - `null` counts as absent for every optional field (its default applies).
//! - `tags` / `skip_tags` must be arrays; a comma-separated string is refused
//!   rather than guessed at, so there is one spelling and no `"a, b"` ambiguity.
//! - An inline inventory is normalised to end with `,`: without a comma Ansible
//!   reads `-i web1` as a path (after `~` and `$VAR` expansion), not a host.
//! - `timeout` is capped at [`MAX_TIMEOUT_SECS`] so a deadline never overflows.
//! - `limit` may not contain `@`: Ansible reads `@<file>` limits from disk.
//! - Reasons never contain `extra_vars` values (they may be secrets); hostile
//!   text that is echoed (task ids, keys, paths) is truncated and escaped.
//!
//! - A request too large or nested too deeply to parse still ends `failed`
//!   when its top-level `task_id` can be read without parsing it (`task_id`).
//!
//! Layout: this file holds the entry points, the refusal type and the simple
//! field rules; `paths` resolves `playbook` and `inventory` and keeps them
//! inside the playbook directory, away from hidden files and inventory
//! scripts; `extra_vars` refuses Jinja2 templates, `ansible_*` keys and the
//! names Ansible reserves, which `reserved` knows; `task_id` reads the id of
//! a request the parser refuses.

mod extra_vars;
mod paths;
mod reserved;
mod task_id;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::WorkerConfig;
use crate::model::TaskSpec;
use extra_vars::extra_vars;
pub use paths::{inventory_path, playbook_path};
pub use reserved::ReservedNames;

/// Longest accepted `task_id`, in characters.
pub const MAX_TASK_ID_LEN: usize = 128;
/// Highest accepted `verbosity` (`-vvvv`).
pub const MAX_VERBOSITY: u8 = 4;
/// `forks` when the request does not say.
pub const DEFAULT_FORKS: u32 = 5;
/// Longest accepted `timeout` (one year): far beyond any run, and small enough
/// that `Instant::now() + timeout` cannot overflow.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 60 * 60;

/// Nesting of objects and arrays the JSON parser takes (serde_json stops at
/// its 128th level); a deeper request is refused with a reason saying so.
pub const MAX_NESTING: usize = 127;

/// Request fields this worker understands; others are ignored.
const KNOWN_FIELDS: [&str; 13] = [
    "task_id",
    "playbook",
    "inventory",
    "extra_vars",
    "limit",
    "tags",
    "skip_tags",
    "verbosity",
    "check_mode",
    "diff_mode",
    "forks",
    "timeout",
    "git_pull",
];
/// How much of a hostile identifier (task id, key, field name) a reason echoes.
const SHOWN_NAME_CHARS: usize = 64;
/// How much of a requested path a reason echoes.
const SHOWN_PATH_CHARS: usize = 256;
/// The configuration the intake rules depend on.
#[derive(Debug, Clone)]
pub struct IntakePolicy {
    /// `worker.playbook_directory`, canonical (symlinks resolved); playbooks
    /// and inventory files must resolve inside it.
    pub playbook_directory: PathBuf,
    /// `worker.allow_ansible_vars`: accept top-level `ansible_*` extra vars
    /// and the names in `reserved_names`.
    pub allow_ansible_vars: bool,
    /// `worker.max_request_size`: larger payloads are refused.
    pub max_request_size: usize,
    /// True if `worker.inventory_plugins` enables Ansible's `script` plugin:
    /// only then may an inventory be (or contain) an executable file.
    pub inventory_scripts: bool,
    /// Top-level `extra_vars` keys Ansible reserves.
    pub reserved_names: ReservedNames,
}

impl IntakePolicy {
    /// A policy for `playbook_directory`, canonicalised here so the
    /// inside-the-directory checks compare like with like; other settings
    /// take their defaults (the built-in reserved names).
    pub fn new(playbook_directory: &Path, allow_ansible_vars: bool) -> io::Result<IntakePolicy> {
        Ok(IntakePolicy {
            playbook_directory: playbook_directory.canonicalize()?,
            allow_ansible_vars,
            max_request_size: crate::config::DEFAULT_MAX_REQUEST_SIZE,
            inventory_scripts: false,
            reserved_names: ReservedNames::builtin(),
        })
    }

    /// The policy `worker` configures (its playbook directory is canonical
    /// already), with the built-in reserved names until `run` asks the
    /// installed Ansible ([`ReservedNames::ask_installed_ansible`]).
    pub fn of(worker: &WorkerConfig) -> IntakePolicy {
        IntakePolicy {
            playbook_directory: worker.playbook_directory.clone(),
            allow_ansible_vars: worker.allow_ansible_vars,
            max_request_size: worker.max_request_size,
            inventory_scripts: worker
                .inventory_plugins
                .iter()
                .any(|plugin| is_script_plugin(plugin)),
            reserved_names: ReservedNames::builtin(),
        }
    }
}

/// True for Ansible's `script` inventory plugin, by short or full name. Only
/// it runs executables; `auto` dispatches to any plugin a YAML file names,
/// `script` included, but the script plugin then runs only an executable
/// file, which intake refuses unless `script` itself is enabled.
fn is_script_plugin(name: &str) -> bool {
    matches!(
        name,
        "script" | "ansible.builtin.script" | "ansible.legacy.script"
    )
}

/// Why a request was not turned into a [`TaskSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No status can be addressed: not JSON, not an object, or no usable task_id.
    #[error("unaddressable task request: {reason}")]
    Unaddressable {
        /// What was wrong, with at most a short escaped excerpt of the input.
        reason: String,
    },
    /// A usable task_id, but another field breaks a rule; one `failed` status is published.
    #[error("task {task_id} refused: {reason}")]
    Invalid {
        /// The request's (valid) task id.
        task_id: String,
        /// The status `error_message`: names the field and the rule.
        reason: String,
    },
}

impl Refusal {
    /// The reason alone, as published in `error_message` or logged.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Unaddressable { reason } | Refusal::Invalid { reason, .. } => reason,
        }
    }

    /// The task id a status can be published for, if there is one.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Refusal::Unaddressable { .. } => None,
            Refusal::Invalid { task_id, .. } => Some(task_id),
        }
    }
}

/// Parses and checks one task request payload against `policy`.
pub fn parse_request(payload: &[u8], policy: &IntakePolicy) -> Result<TaskSpec, Refusal> {
    let unaddressable = |reason: String| Refusal::Unaddressable { reason };
    if payload.len() > policy.max_request_size {
        // Never parsed: its size must not cost memory beyond the payload.
        let reason = format!(
            "Request too large ({} bytes, max {})",
            payload.len(),
            policy.max_request_size
        );
        return Err(unparsed_refusal(&task_id::scan(payload), reason));
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(e) => {
            let scan = task_id::scan(payload);
            if scan.depth > MAX_NESTING {
                let reason = format!(
                    "Request nested too deeply ({} levels of objects and arrays, max {MAX_NESTING})",
                    scan.depth
                );
                return Err(unparsed_refusal(&scan, reason));
            }
            return Err(unaddressable(format!("payload is not JSON: {e}")));
        }
    };
    let Value::Object(request) = value else {
        return Err(unaddressable(format!(
            "payload is not a JSON object but {}",
            kind(&value)
        )));
    };
    let task_id = task_id(&request).map_err(unaddressable)?;
    for name in request
        .keys()
        .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
    {
        let field = shown(name, SHOWN_NAME_CHARS);
        tracing::debug!(%task_id, %field, "ignoring unknown request field");
    }
    check_fields(task_id.clone(), &request, policy)
        .map_err(|reason| Refusal::Invalid { task_id, reason })
}

/// The refusal of a request that was not parsed: `Invalid` (so it gets its
/// `failed` status) when the scan read a valid top-level `task_id`.
fn unparsed_refusal(scan: &task_id::Scan, reason: String) -> Refusal {
    match scan.task_id.as_deref() {
        Some(id) if valid_task_id(id) => Refusal::Invalid {
            task_id: id.to_owned(),
            reason,
        },
        _ => Refusal::Unaddressable {
            reason: format!("{reason}; no readable task_id"),
        },
    }
}

/// True if `id` is a usable task id: 1–128 characters of `A-Z a-z 0-9 . _ -`
/// (it becomes an MQTT topic level, so `/ + #` and control characters are out).
pub fn valid_task_id(id: &str) -> bool {
    task_id_problem(id).is_none()
}

fn task_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".to_owned());
    }
    if let Some(c) = id.chars().find(|&c| !task_id_char(c)) {
        return Some(format!("contains {:?}", c));
    }
    // Only ASCII is left, so bytes are characters.
    (id.len() > MAX_TASK_ID_LEN).then(|| format!("is {} characters long", id.len()))
}

fn task_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn task_id(request: &Map<String, Value>) -> Result<String, String> {
    match request.get("task_id") {
        None => Err("missing required field 'task_id'".to_owned()),
        Some(Value::String(id)) => match task_id_problem(id) {
            None => Ok(id.clone()),
            Some(problem) => Err(format!(
                "invalid task_id \"{}\": {problem}; it must be 1-{MAX_TASK_ID_LEN} characters \
                 of A-Z a-z 0-9 . _ -",
                shown(id, SHOWN_NAME_CHARS)
            )),
        },
        Some(other) => Err(format!(
            "field 'task_id' must be a string, not {}",
            kind(other)
        )),
    }
}

/// Every field after `task_id`, in the protocol's table order; the first
/// broken rule is the reason.
fn check_fields(
    task_id: String,
    request: &Map<String, Value>,
    policy: &IntakePolicy,
) -> Result<TaskSpec, String> {
    Ok(TaskSpec {
        task_id,
        playbook: playbook_path(
            required_string(request.get("playbook"), "playbook")?,
            policy,
        )?,
        inventory: inventory_path(
            required_string(request.get("inventory"), "inventory")?,
            policy,
        )?,
        extra_vars: extra_vars(present(request, "extra_vars"), policy)?,
        limit: limit(present(request, "limit"))?,
        tags: tag_list(request, "tags")?,
        skip_tags: tag_list(request, "skip_tags")?,
        verbosity: integer(request, "verbosity", 0, MAX_VERBOSITY.into())?.map_or(0, |v| v as u8),
        check_mode: flag(request, "check_mode")?,
        diff_mode: flag(request, "diff_mode")?,
        forks: integer(request, "forks", 1, u32::MAX.into())?.map_or(DEFAULT_FORKS, |v| v as u32),
        timeout: integer(request, "timeout", 1, MAX_TIMEOUT_SECS)?.map(Duration::from_secs),
        git_pull: flag(request, "git_pull")?,
    })
}

/// An optional field's value; `null` counts as absent.
fn present<'a>(request: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    request.get(field).filter(|v| !v.is_null())
}

fn invalid(field: &str, rule: &str) -> String {
    format!("Invalid field '{field}': {rule}")
}

fn flag(request: &Map<String, Value>, field: &str) -> Result<bool, String> {
    match present(request, field) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(field, "must be a boolean")),
    }
}

/// An optional integer in `min..=max`; floats, strings and negatives are refused.
fn integer(
    request: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, String> {
    let Some(value) = present(request, field) else {
        return Ok(None);
    };
    let bounded = || invalid(field, &format!("must be an integer from {min} to {max}"));
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        Some(n) if n > max => Err(bounded()),
        // An upper bound nobody meets in practice is only named when hit.
        _ if max >= u32::MAX.into() => Err(invalid(field, &format!("must be an integer >= {min}"))),
        _ => Err(bounded()),
    }
}

/// A required string field; [`plain_text`] rules are up to its own check.
fn required_string<'a>(value: Option<&'a Value>, field: &str) -> Result<&'a str, String> {
    match value {
        None | Some(Value::Null) => Err(format!("Missing required field '{field}'")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// `text` of `field` is not empty and has no control characters.
fn plain_text(text: &str, field: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// `--limit=<v>` is one argv word, so a leading `-` cannot become an option
/// and is left alone (`!`, `&`, `~regex` patterns are ordinary Ansible).
fn limit(value: Option<&Value>) -> Result<Option<String>, String> {
    let limit = match value {
        None => return Ok(None),
        Some(Value::String(limit)) => limit,
        Some(_) => return Err(invalid("limit", "must be a string or null")),
    };
    if limit.trim().is_empty() {
        return Err(invalid("limit", "must not be empty"));
    }
    if limit.chars().any(char::is_control) {
        return Err(invalid("limit", "must not contain control characters"));
    }
    if limit.contains('@') {
        return Err(invalid(
            "limit",
            "must not contain '@' (Ansible reads '@<file>' limits from the worker's disk)",
        ));
    }
    Ok(Some(limit.clone()))
}

/// Tags end up joined by commas in one `--tags=a,b` argv word, so a leading
/// `-` is harmless but a comma would split a tag in two.
fn tag_list(request: &Map<String, Value>, field: &str) -> Result<Vec<String>, String> {
    let rule = "must be an array of non-empty strings without commas or control characters";
    let items = match present(request, field) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid(field, rule)),
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(tag)
                if !tag.trim().is_empty()
                    && !tag.contains(',')
                    && !tag.chars().any(char::is_control) =>
            {
                Ok(tag.clone())
            }
            _ => Err(invalid(field, rule)),
        })
        .collect()
}

/// What kind of JSON value `value` is, for messages that must not echo it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max_chars` of hostile `text`, control characters escaped, `…`
/// marking a cut.
fn shown(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

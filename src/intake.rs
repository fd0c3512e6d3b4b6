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

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::model::{Inventory, TaskSpec};

/// Longest accepted `task_id`, in characters.
pub const MAX_TASK_ID_LEN: usize = 128;
/// Highest accepted `verbosity` (`-vvvv`).
pub const MAX_VERBOSITY: u8 = 4;
/// `forks` when the request does not say.
pub const DEFAULT_FORKS: u32 = 5;
/// Longest accepted `timeout` (one year): far beyond any run, and small enough
/// that `Instant::now() + timeout` cannot overflow.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 60 * 60;

/// Jinja2 delimiters; Ansible templates extra vars, so any of them runs code.
const JINJA_MARKERS: [&str; 6] = ["{{", "}}", "{%", "%}", "{#", "#}"];
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakePolicy {
    /// `worker.playbook_directory`, canonical (symlinks resolved); playbooks
    /// and inventory files must resolve inside it.
    pub playbook_directory: PathBuf,
    /// `worker.allow_ansible_vars`: accept top-level `ansible_*` extra vars.
    pub allow_ansible_vars: bool,
}

impl IntakePolicy {
    /// A policy for `playbook_directory`, canonicalised here so the
    /// inside-the-directory checks compare like with like.
    pub fn new(playbook_directory: &Path, allow_ansible_vars: bool) -> io::Result<IntakePolicy> {
        Ok(IntakePolicy {
            playbook_directory: playbook_directory.canonicalize()?,
            allow_ansible_vars,
        })
    }
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
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| unaddressable(format!("payload is not JSON: {e}")))?;
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
    let dir = &policy.playbook_directory;
    Ok(TaskSpec {
        task_id,
        playbook: playbook(request.get("playbook"), dir)?,
        inventory: inventory(request.get("inventory"), dir)?,
        extra_vars: extra_vars(present(request, "extra_vars"), policy.allow_ansible_vars)?,
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

fn required_string<'a>(value: Option<&'a Value>, field: &str) -> Result<&'a str, String> {
    match value {
        None | Some(Value::Null) => Err(format!("Missing required field '{field}'")),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(field, "must not be empty")),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(invalid(field, "must not contain control characters"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn playbook(value: Option<&Value>, dir: &Path) -> Result<PathBuf, String> {
    let requested = required_string(value, "playbook")?;
    let path = Path::new(requested);
    let shown_path = shown(requested, SHOWN_PATH_CHARS);
    if path.has_root() {
        return Err(invalid(
            "playbook",
            &format!("must be a path relative to the playbook directory: {shown_path}"),
        ));
    }
    let outside = || format!("Playbook outside the playbook directory: {shown_path}");
    if escapes_lexically(path) {
        return Err(outside());
    }
    let resolved = match dir.join(path).canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if is_missing(&e) => return Err(format!("Playbook not found: {shown_path}")),
        Err(e) => return Err(format!("Playbook cannot be resolved: {shown_path}: {e}")),
    };
    if !resolved.starts_with(dir) {
        return Err(outside());
    }
    if !resolved.is_file() {
        return Err(format!("Playbook is not a file: {shown_path}"));
    }
    Ok(resolved)
}

/// Follows Ansible's own reading of `-i <value>` (run with the playbook
/// directory as working directory): an existing path is an inventory file or
/// directory whatever its spelling, otherwise a value with a comma is a host
/// list. Existing paths must resolve inside the directory, so neither a
/// `../x,` host list nor a symlink can make Ansible read an outside inventory.
fn inventory(value: Option<&Value>, dir: &Path) -> Result<Inventory, String> {
    let requested = required_string(value, "inventory")?;
    let shown_value = shown(requested, SHOWN_PATH_CHARS);
    if requested.starts_with('-') {
        // Inline lists are passed as a separate argv word after `-i`.
        return Err(invalid("inventory", "must not start with '-'"));
    }
    if Path::new(requested).has_root() {
        return Err(invalid(
            "inventory",
            &format!("must be relative to the playbook directory: {shown_value}"),
        ));
    }
    if let Some(file) = existing_inventory(requested, dir, &shown_value)? {
        return Ok(Inventory::File(file));
    }
    if !requested.ends_with(',') && requested.contains('/') {
        return Err(format!("Inventory not found: {shown_value}"));
    }
    if requested.split(',').all(|host| host.trim().is_empty()) {
        return Err(invalid(
            "inventory",
            "an inline host list must name at least one host",
        ));
    }
    if requested.ends_with(',') {
        return Ok(Inventory::Inline(requested.to_owned()));
    }
    // A single host (or `a,b`): Ansible only reads it as a host list with a
    // trailing comma; without one it expands `~`/`$VAR` and looks for a file.
    let hosts = format!("{requested},");
    Ok(match existing_inventory(&hosts, dir, &shown_value)? {
        // Ansible would read that file rather than the host list.
        Some(file) => Inventory::File(file),
        None => Inventory::Inline(hosts),
    })
}

/// The canonical path `requested` names relative to `dir`, if it exists; an
/// error if it exists (or lexically is) outside `dir` or is not a regular file
/// or directory.
fn existing_inventory(
    requested: &str,
    dir: &Path,
    shown_value: &str,
) -> Result<Option<PathBuf>, String> {
    let outside = || format!("Inventory outside the playbook directory: {shown_value}");
    if escapes_lexically(Path::new(requested)) {
        return Err(outside());
    }
    let resolved = match dir.join(requested).canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(format!("Inventory cannot be resolved: {shown_value}: {e}")),
    };
    if !resolved.starts_with(dir) {
        return Err(outside());
    }
    if !(resolved.is_file() || resolved.is_dir()) {
        return Err(format!(
            "Inventory is not a file or directory: {shown_value}"
        ));
    }
    Ok(Some(resolved))
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// True if `path` climbs above its starting directory by `..` alone. Only a
/// fast, symlink-blind first check: canonicalisation has the last word.
fn escapes_lexically(path: &Path) -> bool {
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

fn extra_vars(
    value: Option<&Value>,
    allow_ansible_vars: bool,
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
    if !allow_ansible_vars && let Some(key) = vars.keys().find(|k| k.starts_with("ansible_")) {
        return Err(format!(
            "Invalid extra_vars: key '{}' is refused: keys starting with 'ansible_' override \
             connection settings (set worker.allow_ansible_vars = true to allow them)",
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

#[cfg(test)]
mod tests {
    use super::*;
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
        let mut request =
            json!({"task_id": "t1", "playbook": "site.yml", "inventory": "localhost,"});
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
            TaskSpec {
                task_id: "t1".into(),
                playbook: f.dir().join("site.yml"),
                inventory: Inventory::Inline("localhost,".into()),
                extra_vars: Map::new(),
                limit: None,
                tags: vec![],
                skip_tags: vec![],
                verbosity: 0,
                check_mode: false,
                diff_mode: false,
                forks: 5,
                timeout: None,
                git_pull: false,
            }
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
    fn playbook_is_resolved_inside_the_directory() {
        let f = fixture();
        // A symlink inside resolves to its canonical target.
        assert_eq!(
            accept(&f, json!({"playbook": "alias.yml"})).playbook,
            f.dir().join("site.yml")
        );
        assert_eq!(
            accept(&f, json!({"playbook": "sub/../site.yml"})).playbook,
            f.dir().join("site.yml")
        );
        assert_eq!(
            accept(&f, json!({"playbook": "./sub/deploy.yml"})).playbook,
            f.dir().join("sub/deploy.yml")
        );
    }

    #[test]
    fn missing_playbook_names_the_requested_path() {
        let f = fixture();
        assert_eq!(
            refuse(&f, json!({"playbook": "nope.yml"})),
            "Playbook not found: nope.yml"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "sub/nope.yml"})),
            "Playbook not found: sub/nope.yml"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "site.yml/x"})),
            "Playbook not found: site.yml/x"
        );
    }

    #[test]
    fn playbook_outside_the_directory_is_refused() {
        let f = fixture();
        // `../x.yml` exists, but outside.
        assert_eq!(
            refuse(&f, json!({"playbook": "../x.yml"})),
            "Playbook outside the playbook directory: ../x.yml"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "sub/../../x.yml"})),
            "Playbook outside the playbook directory: sub/../../x.yml"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "escape.yml"})),
            "Playbook outside the playbook directory: escape.yml"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "linkdir/evil.yml"})),
            "Playbook outside the playbook directory: linkdir/evil.yml"
        );
        let absolute = f.dir().join("site.yml").display().to_string();
        let reason = refuse(&f, json!({"playbook": absolute}));
        assert!(
            reason.starts_with("Invalid field 'playbook': must be a path relative"),
            "{reason}"
        );
    }

    #[test]
    fn playbook_must_be_a_non_empty_string_naming_a_file() {
        let f = fixture();
        assert_eq!(
            refuse(&f, json!({"playbook": "sub"})),
            "Playbook is not a file: sub"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "."})),
            "Playbook is not a file: ."
        );
        assert_eq!(
            refuse(&f, json!({"playbook": null})),
            "Missing required field 'playbook'"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": 3})),
            "Invalid field 'playbook': must be a string"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": ""})),
            "Invalid field 'playbook': must not be empty"
        );
        assert_eq!(
            refuse(&f, json!({"playbook": "site.yml\n"})),
            "Invalid field 'playbook': must not contain control characters"
        );
    }

    #[test]
    fn inline_inventory_forms() {
        let f = fixture();
        let inline = |value: &str| accept(&f, json!({"inventory": value})).inventory;
        assert_eq!(inline("web1,web2,"), Inventory::Inline("web1,web2,".into()));
        assert_eq!(inline("localhost,"), Inventory::Inline("localhost,".into()));
        // Normalised to a trailing comma so Ansible reads a host list.
        assert_eq!(inline("web1"), Inventory::Inline("web1,".into()));
        assert_eq!(inline("web1,web2"), Inventory::Inline("web1,web2,".into()));
        assert_eq!(inline("~"), Inventory::Inline("~,".into()));
        assert_eq!(inline("$HOME"), Inventory::Inline("$HOME,".into()));
        assert_eq!(
            inline("10.0.0.1:2222,"),
            Inventory::Inline("10.0.0.1:2222,".into())
        );
    }

    #[test]
    fn existing_inventory_paths_are_files_inside_the_directory() {
        let f = fixture();
        let file = |value: &str| accept(&f, json!({"inventory": value})).inventory;
        // No `/` but an existing file: a file, as Ansible would read it.
        assert_eq!(
            file("hosts.ini"),
            Inventory::File(f.dir().join("hosts.ini"))
        );
        assert_eq!(
            file("./hosts.ini"),
            Inventory::File(f.dir().join("hosts.ini"))
        );
        assert_eq!(
            file("inventories/prod/hosts"),
            Inventory::File(f.dir().join("inventories/prod/hosts"))
        );
        assert_eq!(
            file("inventories/prod/"),
            Inventory::File(f.dir().join("inventories/prod"))
        );
        // Ends with `,` but exists: Ansible reads the file, so do we.
        assert_eq!(file("odd,"), Inventory::File(f.dir().join("odd,")));
        // `odd` does not exist, but `odd,` (what Ansible would be given) does.
        assert_eq!(file("odd"), Inventory::File(f.dir().join("odd,")));
    }

    #[test]
    fn inventory_outside_or_missing_is_refused() {
        let f = fixture();
        let reason = |value: &str| refuse(&f, json!({"inventory": value}));
        assert_eq!(
            reason("inventories/nope.ini"),
            "Inventory not found: inventories/nope.ini"
        );
        assert_eq!(reason("sub/nope/"), "Inventory not found: sub/nope/");
        assert_eq!(
            reason("../outside/hosts.ini"),
            "Inventory outside the playbook directory: ../outside/hosts.ini"
        );
        assert_eq!(
            reason("../nope"),
            "Inventory outside the playbook directory: ../nope"
        );
        assert_eq!(
            reason("../x.yml,"),
            "Inventory outside the playbook directory: ../x.yml,"
        );
        assert_eq!(reason(".."), "Inventory outside the playbook directory: ..");
        assert_eq!(
            reason("escape.ini"),
            "Inventory outside the playbook directory: escape.ini"
        );
        assert_eq!(
            reason("linkdir/hosts.ini"),
            "Inventory outside the playbook directory: linkdir/hosts.ini"
        );
        assert!(reason("/etc/hosts").starts_with("Invalid field 'inventory': must be relative"));
        assert!(reason("-i").contains("must not start with '-'"));
        assert!(reason(",").contains("at least one host"));
        assert!(reason(" , ,").contains("at least one host"));
        assert_eq!(reason(""), "Invalid field 'inventory': must not be empty");
        assert_eq!(
            reason("a\u{7f},"),
            "Invalid field 'inventory': must not contain control characters"
        );
        assert_eq!(
            refuse(&f, json!({"inventory": null})),
            "Missing required field 'inventory'"
        );
        assert_eq!(
            refuse(&f, json!({"inventory": ["a"]})),
            "Invalid field 'inventory': must be a string"
        );
    }

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
            assert!(
                reason.starts_with(&format!("Invalid extra_vars: the key at extra_vars.{key} "))
            );
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
}

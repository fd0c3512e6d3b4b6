//! The task request document `submit` publishes, built from the command line:
//! `-e` parsing, local paths made relative to the playbook directory, and the
//! generated task id. Pure apart from looking local paths up on disk.
//!
//! The worker stays the one validator (PROTOCOL.md): this module checks only
//! what it must understand itself (the `-e` syntax, the `-v` count) and sends
//! the rest as given, so a refusal carries the worker's own reason.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::SubmitError;
use crate::cli::SubmitArgs;
use crate::intake::MAX_VERBOSITY;

/// Longest playbook stem kept in a generated task id.
const MAX_STEM_CHARS: usize = 64;

/// A request document and what the user should know about how it was built.
#[derive(Debug)]
pub(super) struct Built {
    /// The JSON object to publish.
    pub request: Value,
    /// Notes for stderr (a local path outside the playbook directory).
    pub notes: Vec<String>,
}

/// The request for `args` under `task_id`; local paths are taken relative to
/// `playbook_directory`. Only options that were given appear in it.
pub(super) fn build(
    args: &SubmitArgs,
    task_id: &str,
    playbook_directory: &Path,
) -> Result<Built, SubmitError> {
    if args.verbose > MAX_VERBOSITY {
        return Err(SubmitError::Usage(format!(
            "-v may be given at most {MAX_VERBOSITY} times (-vvvv)"
        )));
    }
    let mut notes = Vec::new();
    let mut path = |arg: &str| match local_path(arg, playbook_directory) {
        LocalPath::Inside(relative) => relative,
        LocalPath::NotLocal => arg.to_owned(),
        LocalPath::Outside(resolved) => {
            notes.push(format!(
                "{} is outside the playbook directory {}; sending {arg:?} as given",
                resolved.display(),
                playbook_directory.display()
            ));
            arg.to_owned()
        }
    };
    let mut request = Map::new();
    request.insert("task_id".into(), json!(task_id));
    request.insert("playbook".into(), json!(path(&args.playbook)));
    request.insert("inventory".into(), json!(path(&args.inventory)));
    let extra_vars = extra_vars(&args.extra_vars)?;
    if !extra_vars.is_empty() {
        request.insert("extra_vars".into(), Value::Object(extra_vars));
    }
    if let Some(limit) = &args.limit {
        request.insert("limit".into(), json!(limit));
    }
    for (field, given) in [("tags", &args.tags), ("skip_tags", &args.skip_tags)] {
        let list: Vec<&str> = given
            .iter()
            .map(|tag| tag.trim())
            .filter(|tag| !tag.is_empty())
            .collect();
        if !list.is_empty() {
            request.insert(field.into(), json!(list));
        }
    }
    if args.verbose > 0 {
        request.insert("verbosity".into(), json!(args.verbose));
    }
    for (field, set) in [
        ("check_mode", args.check),
        ("diff_mode", args.diff),
        ("git_pull", args.git_pull),
    ] {
        if set {
            request.insert(field.into(), json!(true));
        }
    }
    if let Some(forks) = args.forks {
        request.insert("forks".into(), json!(forks));
    }
    if let Some(timeout) = args.timeout {
        request.insert("timeout".into(), json!(timeout));
    }
    Ok(Built {
        request: Value::Object(request),
        notes,
    })
}

/// `<playbook stem>-<UTC yyyymmddThhmmss>-<6 hex of random>`; characters a
/// task id may not hold become `_`.
pub(super) fn generate_task_id(playbook: &str, now: DateTime<Utc>, random: u32) -> String {
    let stem = Path::new(playbook)
        .file_stem()
        .map(|stem| stem.to_string_lossy())
        .unwrap_or_default();
    let mut stem: String = stem
        .chars()
        .take(MAX_STEM_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        stem.push_str("task");
    }
    format!(
        "{stem}-{}-{:06x}",
        now.format("%Y%m%dT%H%M%S"),
        random & 0xff_ffff
    )
}

/// Where a PLAYBOOK or INVENTORY argument points on this machine.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LocalPath {
    /// An existing path inside the playbook directory: this relative path.
    Inside(String),
    /// An existing path outside it (canonical).
    Outside(PathBuf),
    /// Nothing by that name here (a path for the worker, or an inline host list).
    NotLocal,
}

/// Looks `arg` up relative to the current directory and, if it exists, places
/// it against the playbook directory (both canonical, so symlinks and `..`
/// cannot fake being inside).
pub(super) fn local_path(arg: &str, playbook_directory: &Path) -> LocalPath {
    let Ok(resolved) = Path::new(arg).canonicalize() else {
        return LocalPath::NotLocal;
    };
    let directory = playbook_directory
        .canonicalize()
        .unwrap_or_else(|_| playbook_directory.to_owned());
    match resolved.strip_prefix(&directory) {
        Ok(relative) => match relative.to_str() {
            Some("") => LocalPath::Inside(".".to_owned()),
            Some(relative) => LocalPath::Inside(relative.to_owned()),
            None => LocalPath::NotLocal,
        },
        Err(_) => LocalPath::Outside(resolved),
    }
}

/// Merges every `-e` argument, in order (later keys win).
pub(super) fn extra_vars(args: &[String]) -> Result<Map<String, Value>, SubmitError> {
    let mut vars = Map::new();
    for arg in args {
        vars.extend(
            extra_var(arg)
                .map_err(|problem| SubmitError::Usage(format!("-e {}: {problem}", shown(arg))))?,
        );
    }
    Ok(vars)
}

/// One `-e`: a JSON object when it starts with `{` (or a JSON array, to say
/// it is not an object), else `KEY=VALUE` with a string value.
fn extra_var(arg: &str) -> Result<Map<String, Value>, String> {
    let trimmed = arg.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return match serde_json::from_str(trimmed) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(Value::Array(_)) => Err("must be a JSON object, not an array".to_owned()),
            Ok(_) => Err("must be a JSON object".to_owned()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        };
    }
    if trimmed.starts_with('@') {
        return Err(
            "variable files (@FILE) are not supported; use KEY=VALUE or a JSON object".to_owned(),
        );
    }
    match arg.split_once('=') {
        Some((key, _)) if key.is_empty() || key.chars().any(char::is_whitespace) => {
            Err("the key must be non-empty and without spaces (one KEY=VALUE per -e)".to_owned())
        }
        Some((key, value)) => Ok(Map::from_iter([(key.to_owned(), json!(value))])),
        None => Err("expected KEY=VALUE or a JSON object".to_owned()),
    }
}

/// An `-e` argument as a message shows it: the key of a `KEY=VALUE`, never
/// a value (it might be a secret).
fn shown(arg: &str) -> String {
    let trimmed = arg.trim_start();
    if trimmed.starts_with(['{', '[']) {
        return "JSON".to_owned();
    }
    let key = arg.split_once('=').map_or(arg, |(key, _)| key);
    let mut shown: String = key.chars().take(32).collect();
    if shown.len() < arg.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::intake::valid_task_id;
    use clap::Parser;

    fn args(extra: &[&str]) -> SubmitArgs {
        let mut argv = vec!["ansible-worker", "submit"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Submit(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    fn vars(args: &[&str]) -> Result<Value, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        extra_vars(&args)
            .map(Value::Object)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn follow_implies_waiting_and_excludes_json() {
        let base = ["p.yml", "-i", "inv"];
        assert!(!args(&base).follows());
        for flag in ["--wait", "--json", "--follow"] {
            assert!(args(&[&base[..], &[flag]].concat()).follows(), "{flag}");
        }
        let argv = [
            "ansible-worker",
            "submit",
            "p.yml",
            "-i",
            "inv",
            "--follow",
            "--json",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn key_value_sets_a_string_and_later_wins() {
        let merged = vars(&["a=1", "b=x=y z", "a=2", "empty="]).unwrap();
        assert_eq!(merged, json!({"a": "2", "b": "x=y z", "empty": ""}));
    }

    #[test]
    fn json_objects_merge_with_key_values_in_order() {
        let merged = vars(&[
            r#"{"n": 3, "list": [1, 2], "a": "x"}"#,
            "a=y",
            r#" {"n": 4}"#,
        ]);
        assert_eq!(merged.unwrap(), json!({"n": 4, "list": [1, 2], "a": "y"}));
    }

    #[test]
    fn invalid_json_is_a_usage_error() {
        let message = vars(&[r#"{"n": }"#]).unwrap_err();
        assert!(message.contains("invalid JSON"), "{message}");
        let error = extra_vars(&[r#"{"n""#.to_owned()]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn non_objects_and_other_shapes_are_refused() {
        assert!(vars(&["[1, 2]"]).unwrap_err().contains("not an array"));
        assert!(vars(&["novalue"]).unwrap_err().contains("KEY=VALUE"));
        assert!(vars(&["=x"]).unwrap_err().contains("key"));
        assert!(vars(&["a b=x"]).unwrap_err().contains("key"));
        assert!(vars(&["@vars.yml"]).unwrap_err().contains("not supported"));
    }

    #[test]
    fn messages_never_echo_a_value() {
        let message = vars(&["password sekrit=hunter2"]).unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
        let message = vars(&[r#"{"password": "hunter2""#]).unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn local_paths_inside_the_directory_become_relative() {
        let root = tempfile::TempDir::new().unwrap();
        let dir = root.path().join("playbooks");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/site.yml"), "").unwrap();
        std::fs::write(root.path().join("other.yml"), "").unwrap();
        let inside = dir.join("sub/site.yml");
        assert_eq!(
            local_path(inside.to_str().unwrap(), &dir),
            LocalPath::Inside("sub/site.yml".to_owned())
        );
        // `..` through the directory still lands inside.
        let dotted = dir.join("sub/../sub/site.yml");
        assert_eq!(
            local_path(dotted.to_str().unwrap(), &dir),
            LocalPath::Inside("sub/site.yml".to_owned())
        );
        assert_eq!(
            local_path(dir.to_str().unwrap(), &dir),
            LocalPath::Inside(".".to_owned())
        );
        let outside = root.path().join("other.yml");
        assert_eq!(
            local_path(outside.to_str().unwrap(), &dir),
            LocalPath::Outside(outside.canonicalize().unwrap())
        );
    }

    #[test]
    fn symlinks_out_of_the_directory_are_outside() {
        let root = tempfile::TempDir::new().unwrap();
        let dir = root.path().join("playbooks");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(root.path().join("secret.yml"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.yml"), dir.join("link.yml")).unwrap();
        let link = dir.join("link.yml");
        assert!(matches!(
            local_path(link.to_str().unwrap(), &dir),
            LocalPath::Outside(_)
        ));
    }

    #[test]
    fn missing_paths_and_inline_host_lists_are_sent_as_given() {
        let dir = tempfile::TempDir::new().unwrap();
        for arg in [
            "site.yml",
            "roles/x/missing.yml",
            "web1,web2,",
            "localhost,",
        ] {
            assert_eq!(local_path(arg, dir.path()), LocalPath::NotLocal, "{arg}");
        }
        let built = build(&args(&["site.yml", "-i", "web1,web2,"]), "t1", dir.path()).unwrap();
        assert_eq!(built.request["playbook"], "site.yml");
        assert_eq!(built.request["inventory"], "web1,web2,");
        assert!(built.notes.is_empty());
    }

    #[test]
    fn outside_paths_are_sent_as_given_with_a_note() {
        let dir = tempfile::TempDir::new().unwrap();
        let other = tempfile::NamedTempFile::new().unwrap();
        let given = other.path().to_str().unwrap();
        let built = build(&args(&[given, "-i", "h,"]), "t1", dir.path()).unwrap();
        assert_eq!(built.request["playbook"], given);
        assert_eq!(built.notes.len(), 1);
        assert!(built.notes[0].contains("outside the playbook directory"));
    }

    #[test]
    fn generated_ids_are_valid_task_ids() {
        let now = DateTime::parse_from_rfc3339("2026-01-21T10:30:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = generate_task_id("examples/playbooks/hello.yml", now, 0xabc123);
        assert_eq!(id, "hello-20260121T103005-abc123");
        let id = generate_task_id("dir/my play+book#1.yml", now, u32::MAX);
        assert_eq!(id, "my_play_book_1-20260121T103005-ffffff");
        assert_eq!(generate_task_id("", now, 1), "task-20260121T103005-000001");
        let long = format!("{}.yml", "ü".repeat(300));
        for playbook in ["hello.yml", "web1,", "x/ü.yaml", "..", long.as_str()] {
            let id = generate_task_id(playbook, now, fastrand::u32(..));
            assert!(valid_task_id(&id), "{playbook} -> {id}");
        }
    }

    #[test]
    fn request_holds_every_given_option_and_nothing_else() {
        let dir = tempfile::TempDir::new().unwrap();
        let minimal = build(&args(&["p.yml", "-i", "h,"]), "t1", dir.path()).unwrap();
        assert_eq!(
            minimal.request,
            json!({"task_id": "t1", "playbook": "p.yml", "inventory": "h,"})
        );
        let full = args(&[
            "p.yml",
            "-i",
            "h,",
            "-e",
            "a=1",
            "-e",
            r#"{"b": [2]}"#,
            "--limit",
            "web*",
            "--tags",
            "a,b",
            "--tags",
            "c",
            "--skip-tags",
            "x, ,y",
            "--check",
            "--diff",
            "-vvv",
            "--forks",
            "7",
            "--timeout",
            "60",
            "--git-pull",
        ]);
        let built = build(&full, "t2", dir.path()).unwrap();
        assert_eq!(
            built.request,
            json!({
                "task_id": "t2", "playbook": "p.yml", "inventory": "h,",
                "extra_vars": {"a": "1", "b": [2]}, "limit": "web*",
                "tags": ["a", "b", "c"], "skip_tags": ["x", "y"],
                "verbosity": 3, "check_mode": true, "diff_mode": true,
                "forks": 7, "timeout": 60, "git_pull": true
            })
        );
    }

    #[test]
    fn ansible_playbooks_short_options_mean_the_same_as_the_long_ones() {
        let dir = tempfile::TempDir::new().unwrap();
        let long = args(&[
            "p.yml", "-i", "h,", "--tags", "a,b", "--check", "--diff", "--forks", "7",
        ]);
        let short = args(&["p.yml", "-i", "h,", "-t", "a,b", "-CD", "-f", "7"]);
        let long = build(&long, "t", dir.path()).unwrap().request;
        assert_eq!(build(&short, "t", dir.path()).unwrap().request, long);
        assert_eq!(
            long,
            json!({
                "task_id": "t", "playbook": "p.yml", "inventory": "h,",
                "tags": ["a", "b"], "check_mode": true, "diff_mode": true, "forks": 7
            })
        );
    }

    #[test]
    fn too_much_verbosity_is_a_usage_error() {
        let dir = tempfile::TempDir::new().unwrap();
        let error = build(&args(&["p.yml", "-i", "h,", "-vvvvv"]), "t1", dir.path()).unwrap_err();
        assert!(error.to_string().contains("-vvvv"), "{error}");
    }

    #[test]
    fn bad_task_ids_and_groups_are_refused_by_the_parser() {
        for argv in [
            vec![
                "ansible-worker",
                "submit",
                "p.yml",
                "-i",
                "h,",
                "--task-id",
                "a/b",
            ],
            vec![
                "ansible-worker",
                "submit",
                "p.yml",
                "-i",
                "h,",
                "--group",
                "a+b",
            ],
            vec!["ansible-worker", "cancel", "a#b"],
            vec!["ansible-worker", "cancel", ""],
            vec![
                "ansible-worker",
                "submit",
                "p.yml",
                "-i",
                "h,",
                "--forks",
                "0",
            ],
        ] {
            let error = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{argv:?}");
        }
    }
}

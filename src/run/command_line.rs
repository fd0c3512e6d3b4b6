//! The command line of a run: where `ansible-playbook` is, its argument
//! vector (never a shell, no extra-var values), and the path-list variables
//! the run's environment extends.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::model::{Inventory, TaskSpec};

/// Where `program` resolves: itself when it names a path, else the first
/// executable file of that name on `PATH`.
pub fn resolve_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

/// The argument vector after the program name; `extra_vars_file` holds the
/// task's extra vars, if it has any.
pub fn playbook_args(spec: &TaskSpec, extra_vars_file: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![spec.playbook.clone().into()];
    args.push("-i".into());
    args.push(match &spec.inventory {
        Inventory::File(path) => path.clone().into(),
        Inventory::Inline(hosts) => hosts.into(),
    });
    if let Some(file) = extra_vars_file {
        let mut extra_vars = OsString::from("@");
        extra_vars.push(file);
        args.push("-e".into());
        args.push(extra_vars);
    }
    if let Some(limit) = &spec.limit {
        args.push(format!("--limit={limit}").into());
    }
    if !spec.tags.is_empty() {
        args.push(format!("--tags={}", spec.tags.join(",")).into());
    }
    if !spec.skip_tags.is_empty() {
        args.push(format!("--skip-tags={}", spec.skip_tags.join(",")).into());
    }
    if spec.verbosity > 0 {
        args.push(format!("-{}", "v".repeat(spec.verbosity.into())).into());
    }
    if spec.check_mode {
        args.push("--check".into());
    }
    if spec.diff_mode {
        args.push("--diff".into());
    }
    args.push(format!("--forks={}", spec.forks).into());
    args
}

/// `value` followed by the current value of the path-list variable `name`.
pub(super) fn prepend_env(name: &str, value: PathBuf) -> OsString {
    let mut joined = OsString::from(value);
    if let Some(existing) = std::env::var_os(name).filter(|v| !v.is_empty()) {
        joined.push(":");
        joined.push(existing);
    }
    joined
}

/// `value` followed by the current value of the comma-list variable `name`.
pub(super) fn prepend_list_env(name: &str, value: &str) -> OsString {
    let mut joined = OsString::from(value);
    if let Some(existing) = std::env::var_os(name).filter(|v| !v.is_empty()) {
        joined.push(",");
        joined.push(existing);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        let inventory = Inventory::Inline("web1,web2,".into());
        TaskSpec {
            limit: Some("web1".into()),
            tags: vec!["a".into(), "b".into()],
            skip_tags: vec!["c".into()],
            verbosity: 2,
            check_mode: true,
            diff_mode: true,
            forks: 3,
            ..TaskSpec::with_defaults("t", PathBuf::from("/p/site.yml"), inventory)
        }
    }

    #[test]
    fn argv_carries_every_option_and_no_extra_var_values() {
        let mut spec = spec();
        spec.extra_vars.insert("password".into(), "hunter2".into());
        let args = playbook_args(&spec, Some(Path::new("/run/x/extra_vars.json")));
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            [
                "/p/site.yml",
                "-i",
                "web1,web2,",
                "-e",
                "@/run/x/extra_vars.json",
                "--limit=web1",
                "--tags=a,b",
                "--skip-tags=c",
                "-vv",
                "--check",
                "--diff",
                "--forks=3",
            ]
        );
    }

    #[test]
    fn programs_resolve_by_path_or_on_path() {
        assert!(resolve_program(Path::new("sh")).is_some());
        assert!(resolve_program(Path::new("/bin/sh")).is_some());
        assert!(resolve_program(Path::new("no-such-program-here")).is_none());
        let dir = tempfile::TempDir::new().unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "").unwrap();
        assert!(resolve_program(&plain).is_none());
    }

    #[test]
    fn minimal_argv_has_no_optional_flags() {
        let inventory = Inventory::Inline("web1,".into());
        let spec = TaskSpec::with_defaults("t", PathBuf::from("/p/site.yml"), inventory);
        let args = playbook_args(&spec, None);
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args, ["/p/site.yml", "-i", "web1,", "--forks=5"]);
    }
}

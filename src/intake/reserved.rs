//! The variable names Ansible reserves, which a request may not set as
//! top-level `extra_vars` keys: extra vars outrank the inventory and the
//! playbook, so `inventory_hostname` would redirect connections, `omit` would
//! turn omitted module parameters into a requester's value, and so on.
//!
//! The names come from the installed Ansible, asked once at start in the
//! background ([`ReservedNames::ask_installed_ansible`]): its playbook keywords and
//! template globals (`ansible.vars.reserved.get_reserved_names()`) and its
//! special variables (`ansible.constants.INTERNAL_STATIC_VARS`). Until it
//! answers, or if it cannot be asked, a built-in copy of ansible-core 2.19's
//! answer applies. The special variables of that copy are refused whatever
//! the installed Ansible says, so an older core that lacks the constant cannot
//! let `hostvars` or `inventory_hostname` through.
//!
//! This is the one part of intake that starts a process and logs: it says
//! which list is in use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::process::Command;

/// How long the installed Ansible may take to list its reserved names.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// What the Python of `ansible-playbook` runs to list the names.
const DISCOVERY_SCRIPT: &str = "\
import json
from ansible import constants as C
from ansible.vars.reserved import get_reserved_names
print(json.dumps(sorted(set(get_reserved_names()) | set(getattr(C, 'INTERNAL_STATIC_VARS', ())))))
";

/// ansible-core 2.19's special variables (`INTERNAL_STATIC_VARS`) without the
/// `ansible_` ones, which the prefix rule refuses anyway. Always refused.
const SPECIAL_VARIABLES: [&str; 13] = [
    "group_names",
    "groups",
    "hostvars",
    "inventory_dir",
    "inventory_file",
    "inventory_hostname",
    "inventory_hostname_short",
    "play_hosts",
    "playbook_dir",
    "role_name",
    "role_names",
    "role_path",
    "role_uuid",
];

/// ansible-core 2.19's `get_reserved_names()`: playbook keywords and template
/// globals (`omit`, `lookup`, `query`, ...).
const KEYWORDS_AND_GLOBALS: [&str; 75] = [
    "action",
    "always",
    "any_errors_fatal",
    "args",
    "async",
    "async_val",
    "become",
    "become_exe",
    "become_flags",
    "become_method",
    "become_user",
    "block",
    "changed_when",
    "check_mode",
    "collections",
    "connection",
    "cycler",
    "debugger",
    "delay",
    "delegate_facts",
    "delegate_to",
    "dict",
    "diff",
    "environment",
    "fact_path",
    "failed_when",
    "force_handlers",
    "gather_facts",
    "gather_timeout",
    "handlers",
    "hosts",
    "ignore_errors",
    "ignore_unreachable",
    "joiner",
    "lipsum",
    "local_action",
    "lookup",
    "loop",
    "loop_control",
    "loop_with",
    "max_fail_percentage",
    "module_defaults",
    "name",
    "namespace",
    "no_log",
    "notify",
    "now",
    "omit",
    "order",
    "poll",
    "port",
    "post_tasks",
    "pre_tasks",
    "q",
    "query",
    "range",
    "register",
    "remote_user",
    "rescue",
    "retries",
    "roles",
    "run_once",
    "serial",
    "strategy",
    "tags",
    "tasks",
    "throttle",
    "timeout",
    "undef",
    "until",
    "vars",
    "vars_files",
    "vars_prompt",
    "when",
    "with_",
];

/// The reserved names in force; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct ReservedNames {
    /// The installed Ansible's answer (with [`SPECIAL_VARIABLES`]), once it
    /// came; the built-in list applies before and without it.
    discovered: Arc<OnceLock<BTreeSet<String>>>,
}

impl ReservedNames {
    /// The built-in list (ansible-core 2.19) until
    /// [`ReservedNames::ask_installed_ansible`] brings the installed one's.
    pub fn builtin() -> ReservedNames {
        ReservedNames {
            discovered: Arc::new(OnceLock::new()),
        }
    }

    /// Starts asking the Python that runs `ansible_playbook` for its reserved
    /// names, in the background (`cwd` is the playbook directory, so its
    /// `ansible.cfg` applies as in runs). Every clone of `self` uses them
    /// once they came; the built-in list applies until then and whenever
    /// Ansible cannot be asked. Must be called inside a Tokio runtime.
    pub fn ask_installed_ansible(&self, ansible_playbook: &Path, cwd: &Path) {
        let slot = self.discovered.clone();
        let program = ansible_playbook.to_path_buf();
        let cwd = cwd.to_path_buf();
        tokio::spawn(async move {
            match ask_ansible(&program, &cwd).await {
                Ok((python, mut found)) => {
                    found.extend(SPECIAL_VARIABLES.map(str::to_owned));
                    tracing::info!(
                        count = found.len(),
                        python = %python.display(),
                        "reserved variable names: from the installed Ansible"
                    );
                    let _ = slot.set(found);
                }
                Err(why) => tracing::warn!(
                    "reserved variable names: the built-in list of ansible-core 2.19 \
                     (cannot ask the installed Ansible: {why})"
                ),
            }
        });
    }

    /// The built-in list (ansible-core 2.19's special variables, playbook
    /// keywords and template globals), which the published request schema
    /// repeats.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        SPECIAL_VARIABLES.into_iter().chain(KEYWORDS_AND_GLOBALS)
    }

    /// True if a top-level extra var may not be called `name`.
    pub fn contains(&self, name: &str) -> bool {
        match self.discovered.get() {
            Some(found) => found.contains(name),
            None => SPECIAL_VARIABLES.contains(&name) || KEYWORDS_AND_GLOBALS.contains(&name),
        }
    }
}

#[cfg(test)]
impl ReservedNames {
    /// The installed Ansible's names, once it answered.
    pub(super) fn discovered(&self) -> Option<&BTreeSet<String>> {
        self.discovered.get()
    }

    /// The built-in list, as a set.
    pub(super) fn builtin_set() -> BTreeSet<String> {
        ReservedNames::builtin_names().map(str::to_owned).collect()
    }
}

impl std::fmt::Debug for ReservedNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.discovered.get() {
            Some(found) => write!(f, "ReservedNames(installed Ansible, {})", found.len()),
            None => f.write_str("ReservedNames(built-in)"),
        }
    }
}

/// The names the Python interpreter of `ansible_playbook` lists, and that
/// interpreter.
async fn ask_ansible(
    ansible_playbook: &Path,
    cwd: &Path,
) -> Result<(PathBuf, BTreeSet<String>), String> {
    let program = crate::run::resolve_program(ansible_playbook)
        .ok_or_else(|| format!("{} not found", ansible_playbook.display()))?;
    let head = read_head(&program)
        .await
        .map_err(|e| format!("cannot read {}: {e}", program.display()))?;
    let interpreter =
        python_of(&head).ok_or_else(|| format!("{} is not a Python script", program.display()))?;
    let (python, args) = interpreter
        .split_first()
        .expect("python_of returns a program");
    let output = Command::new(python)
        .args(args)
        .args(["-c", DISCOVERY_SCRIPT])
        .current_dir(cwd)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DISCOVERY_TIMEOUT, output)
        .await
        .map_err(|_| format!("no answer within {} s", DISCOVERY_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot start {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{python} failed ({})", output.status));
    }
    let names: Vec<String> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unexpected answer from {python}: {e}"))?;
    if names.is_empty() {
        return Err(format!("{python} listed no names"));
    }
    Ok((PathBuf::from(python), names.into_iter().collect()))
}

/// The first line of `program` (at most 512 bytes).
async fn read_head(program: &Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0; 512];
    let mut file = tokio::fs::File::open(program).await?;
    let read = file.read(&mut buffer).await?;
    buffer.truncate(read);
    let text = String::from_utf8_lossy(&buffer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The interpreter command of a `#!` line, if it runs Python
/// (`#!/venv/bin/python3` or `#!/usr/bin/env python3`).
pub(super) fn python_of(first_line: &str) -> Option<Vec<String>> {
    let words: Vec<String> = first_line
        .strip_prefix("#!")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let name = |word: &String| {
        Path::new(word)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let program = match words.first().map(name).as_deref() {
        Some("env") => words.get(1).map(name),
        Some(_) => words.first().map(name),
        None => None,
    }?;
    program.starts_with("python").then_some(words)
}

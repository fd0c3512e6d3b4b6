//! Command-line interface (clap derive). Parsing only; `main` acts on it and
//! [`crate::submit`] carries out `submit` and `cancel`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::intake::valid_task_id;

/// Exit codes of `submit`, shown in its help.
const SUBMIT_EXIT_CODES: &str = "\
Exit codes:
  0  success (without --wait: the broker accepted the request)
  1  the task ended failed
  2  usage, configuration or connection error, no worker listening, or --wait-timeout passed
  3  the task ended timeout
  4  the task ended cancelled";

/// Exit codes of `cancel`, shown in its help.
const CANCEL_EXIT_CODES: &str = "\
Exit codes:
  0  the broker accepted the cancel (the worker that holds the task acts on it)
  2  usage, configuration or connection error, or no worker listening";

/// Runs Ansible playbooks on request over MQTT 5.
#[derive(Debug, Parser)]
#[command(name = "ansible-worker", version, about)]
pub struct Cli {
    /// The configuration file (`submit` and `cancel` read the broker, TLS,
    /// credentials, topic prefix, group and playbook directory from it too).
    #[arg(short, long, default_value = "config.toml", global = true)]
    pub config: PathBuf,
    /// Check the configuration, list every problem, and exit 0 (valid) or 1.
    #[arg(long)]
    pub validate: bool,
    /// What to do; without a command the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the annotated example configuration.
    PrintConfig,
    /// Publish a task request to the configured broker and group; with
    /// --wait, follow its status to the end; with --follow, print its live
    /// events (Ansible's output, task starts, results) as well.
    #[command(after_help = SUBMIT_EXIT_CODES)]
    Submit(SubmitArgs),
    /// Ask the workers of the group to cancel a queued or running task.
    #[command(after_help = CANCEL_EXIT_CODES)]
    Cancel(CancelArgs),
}

/// `ansible-worker submit`: the request fields of PROTOCOL.md as options,
/// named like `ansible-playbook`'s.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The playbook. A local file inside `worker.playbook_directory` is sent
    /// relative to it; anything else as given (relative to the worker's
    /// playbook directory).
    pub playbook: String,
    /// Inventory file (treated like PLAYBOOK) or inline host list (`web1,web2,`).
    #[arg(short, long)]
    pub inventory: String,
    /// Extra variable: `KEY=VALUE` (a string; one pair per -e), or a JSON
    /// object (`'{"n": 3}'`) merged in. Repeatable; later values win.
    #[arg(short, long = "extra-vars", value_name = "KEY=VALUE|JSON")]
    pub extra_vars: Vec<String>,
    /// Limit the run to these hosts (`--limit`).
    #[arg(short, long)]
    pub limit: Option<String>,
    /// Only run plays and tasks tagged with these (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',', value_name = "TAGS")]
    pub tags: Vec<String>,
    /// Skip plays and tasks tagged with these (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',', value_name = "TAGS")]
    pub skip_tags: Vec<String>,
    /// Dry run (`--check`).
    #[arg(long)]
    pub check: bool,
    /// Show differences (`--diff`).
    #[arg(long)]
    pub diff: bool,
    /// Ansible verbosity: -v ... -vvvv.
    #[arg(short, action = ArgAction::Count)]
    pub verbose: u8,
    /// Parallel processes (`--forks`, at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub forks: Option<u32>,
    /// Kill the run after this many seconds (default: the worker's `task_timeout`).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Run `git pull --ff-only` in the playbook directory first.
    #[arg(long)]
    pub git_pull: bool,
    /// The task id (1-128 of `A-Z a-z 0-9 . _ -`); default
    /// `<playbook stem>-<UTC yyyymmddThhmmss>-<6 hex>`.
    #[arg(long, value_name = "ID", value_parser = task_id)]
    pub task_id: Option<String>,
    /// The worker group (default: `worker.group_name` of the config).
    #[arg(short, long, value_name = "GROUP", value_parser = group)]
    pub group: Option<String>,
    /// Follow the task: one line per change of state or counters, then its
    /// `output` and `error_message`; the exit code tells the final state.
    #[arg(short, long)]
    pub wait: bool,
    /// Print only the final status document (as received) on stdout; implies --wait.
    #[arg(long)]
    pub json: bool,
    /// Follow the task and print its live events (the events topic) as they
    /// arrive: Ansible's output lines as they are, `TASK [name]` at each
    /// task start, `host: status` for each result; status lines only when
    /// the state changes; then the final status as with --wait. Implies
    /// --wait. Lost events (QoS 0; a busy worker drops them) are noted on
    /// stderr.
    #[arg(long, conflicts_with = "json")]
    pub follow: bool,
    /// Give up (exit 2) if no final status arrives this many seconds after
    /// the request was accepted; implies --wait. Default: wait forever.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub wait_timeout: Option<u64>,
}

impl SubmitArgs {
    /// True when the command follows the task to its final state.
    pub fn follows(&self) -> bool {
        self.wait || self.json || self.follow || self.wait_timeout.is_some()
    }
}

/// `ansible-worker cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The task to cancel.
    #[arg(value_parser = task_id)]
    pub task_id: String,
    /// Why; the worker puts it into the task's `error_message`.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The worker group (default: `worker.group_name` of the config).
    #[arg(short, long, value_name = "GROUP", value_parser = group)]
    pub group: Option<String>,
}

fn task_id(value: &str) -> Result<String, String> {
    if valid_task_id(value) {
        Ok(value.to_owned())
    } else {
        Err("a task id is 1-128 characters of A-Z a-z 0-9 . _ -".to_owned())
    }
}

fn group(value: &str) -> Result<String, String> {
    let bad = |c: char| matches!(c, '/' | '+' | '#') || c.is_control();
    if value.is_empty() || value.chars().any(bad) {
        Err("a group is one MQTT topic level: not empty, no / + # or control characters".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

//! Command-line interface (clap derive). Parsing, and the shell completions
//! and manual pages generated from it; `main` acts on the rest and
//! [`crate::submit`] carries out `submit` and `cancel`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::intake::valid_task_id;

/// The environment variable `-c` takes its default from.
pub const CONFIG_ENV: &str = "ANSIBLE_WORKER_CONFIG";

/// Exit code after a second SIGINT (128 + 2, as a shell reports it).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code after a second SIGTERM (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// Exit codes and signals of the worker, shown in the top-level help.
const WORKER_EXIT_CODES: &str = "\
Signals:
  SIGINT or SIGTERM stops the worker gracefully: no new requests, queued and
  running tasks end cancelled (runs get SIGTERM, kill_grace, then SIGKILL),
  final statuses are published. A second SIGINT or SIGTERM exits at once:
  every process of the runs is killed and no final status is published
  (the journal ends those tasks at the next start).

Exit codes of the worker:
  0    stopped after SIGINT or SIGTERM
  1    invalid configuration (--validate: every problem is listed)
  2    usage error, or the worker could not start
  70   an embedded broker thread panicked
  130  a second SIGINT (143: a second SIGTERM)";

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
#[command(name = "ansible-worker", version, about, after_help = WORKER_EXIT_CODES)]
pub struct Cli {
    /// The configuration file (`submit` and `cancel` read the broker, TLS,
    /// credentials, topic prefix, group and playbook directory from it too).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = CONFIG_ENV,
        default_value = "config.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Check the configuration, list every problem, and exit 0 (valid) or 1.
    /// Not with a command.
    #[arg(long)]
    pub validate: bool,
    /// What to do; without a command the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The parsed command line of this process; on a usage error, prints it
    /// and exits 2 (`--help` and `--version` print and exit 0).
    pub fn from_args() -> Cli {
        Cli::try_from_args(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the program name first) and refuses what clap alone
    /// would let through: `--validate` together with a command, which would
    /// otherwise run the command without validating anything.
    pub fn try_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        match &cli.command {
            Some(command) if cli.validate => Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--validate checks the configuration the worker runs with; \
                     it cannot be combined with the '{}' command",
                    command.name()
                ),
            )),
            _ => Ok(cli),
        }
    }
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
    /// Print a shell completion script (e.g. `ansible-worker completions bash
    /// > /etc/bash_completion.d/ansible-worker`).
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
    /// Print the manual page (roff) of ansible-worker, or write one page per
    /// command into a directory (`man -l ansible-worker.1` shows one).
    Man {
        /// Write `ansible-worker.1`, `ansible-worker-submit.1`, ... into
        /// this directory (created if missing) instead of printing the main
        /// page.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// The command's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::PrintConfig => "print-config",
            Command::Submit(_) => "submit",
            Command::Cancel(_) => "cancel",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }
}

/// Writes the completion script of `shell` for the whole command line.
pub fn write_completions(shell: Shell, out: &mut dyn Write) -> std::io::Result<()> {
    // Generated into memory first: clap_complete panics on a write error
    // (`... | head` closes the pipe early).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ansible-worker", &mut script);
    out.write_all(&script)
}

/// Writes the main manual page (roff) to `out`.
pub fn write_man_page(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Writes one manual page per command (`ansible-worker.1`,
/// `ansible-worker-submit.1`, ...) into `dir`, creating it if needed.
pub fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
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
    #[arg(short, long, value_delimiter = ',', value_name = "TAGS")]
    pub tags: Vec<String>,
    /// Skip plays and tasks tagged with these (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',', value_name = "TAGS")]
    pub skip_tags: Vec<String>,
    /// Dry run (`--check`).
    #[arg(short = 'C', long)]
    pub check: bool,
    /// Show differences (`--diff`).
    #[arg(short = 'D', long)]
    pub diff: bool,
    /// Ansible verbosity: -v ... -vvvv.
    #[arg(short, action = ArgAction::Count)]
    pub verbose: u8,
    /// Parallel processes (`--forks`, at least 1).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Duplicate short options, bad defaults and the like panic here.
        Cli::command().debug_assert();
    }

    #[test]
    fn validate_is_refused_with_a_command_and_accepted_alone() {
        let refused = Cli::try_from_args(["ansible-worker", "--validate", "print-config"]);
        let error = refused.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert!(error.to_string().contains("'print-config'"), "{error}");
        let alone = Cli::try_from_args(["ansible-worker", "-c", "x.toml", "--validate"]).unwrap();
        assert!(alone.validate && alone.command.is_none());
        let command = Cli::try_from_args(["ansible-worker", "-c", "x.toml", "print-config"]);
        assert!(matches!(
            command.unwrap().command,
            Some(Command::PrintConfig)
        ));
    }
}

//! `PlaybookRun`: one `ansible-playbook` process from start to final outcome.
//!
//! It owns the run's private files (extra-vars file, event FIFO, Ansible
//! temp dir), builds the argument vector (never a shell), starts the process
//! as a process-group leader in the playbook directory with our callback
//! plugin enabled, turns the plugin's event lines into coalesced progress,
//! enforces the timeout and cancellation (see [`kill`]), and returns a
//! [`RunOutcome`]. It does not touch the task table: the pool does that.

mod command_line;
pub mod events;
mod fifo;
mod files;
pub mod kill;
mod output;
mod spawn;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{Mutex, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::model::{Counters, RunEvent, TaskSpec, TaskState};
use crate::table::RunOutcome;
pub use command_line::{playbook_args, resolve_program};
use command_line::{prepend_env, prepend_list_env};
use events::RunReport;
use fifo::{CallbackFifo, FifoPool};
use files::RunFiles;
use kill::RunProcesses;
use output::{forward_lines, read_tail};
use spawn::{Launcher, RunChild};

/// Ansible's temp dir of a run (one per run, removed after it).
const LOCAL_TEMP_ENV: &str = "ANSIBLE_LOCAL_TEMP";

/// How often, at most, a running task's counters are reported.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Everything a run needs from the worker's configuration.
#[derive(Debug)]
pub struct RunSettings {
    /// The `ansible-playbook` executable.
    pub ansible_playbook: PathBuf,
    /// The `git` executable.
    pub git: PathBuf,
    /// Working directory of every run and of `git pull`.
    pub playbook_directory: PathBuf,
    /// Private directory holding the callback plugin and one dir per run.
    pub runtime_dir: PathBuf,
    /// Timeout of a task that does not set its own.
    pub default_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// `worker.inventory_plugins`: the only inventory plugins Ansible may use
    /// (`ANSIBLE_INVENTORY_ENABLED`, whatever the environment or an
    /// `ansible.cfg` says), so that by default no inventory is executed.
    pub inventory_plugins: Vec<String>,
}

/// What a run reports while it goes: coalesced counters, output lines, and
/// each task start and result. Called from the run's own tasks: an
/// implementation must not block.
pub trait RunEvents: Send + Sync {
    /// New live counters (at most every `PROGRESS_INTERVAL`).
    fn progress(&self, counters: Counters);
    /// One line of Ansible's human output.
    fn output(&self, line: &str);
    /// A task started or a host's result arrived (no result data).
    fn event(&self, event: RunEvent);
}

/// Runs playbooks with shared settings; serialises `git pull`.
pub struct PlaybookRunner {
    settings: RunSettings,
    launcher: Launcher,
    git_lock: Mutex<()>,
    fifos: FifoPool,
}

/// How the process ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut(Option<ExitStatus>),
    Cancelled(Option<ExitStatus>),
}

impl PlaybookRunner {
    /// Prepares the runtime directory and writes the callback plugin into it.
    pub fn new(settings: RunSettings) -> io::Result<Self> {
        let plugins = settings.runtime_dir.join("plugins");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&plugins)?;
        let plugin_file = plugins.join(format!("{}.py", events::CALLBACK_NAME));
        std::fs::write(plugin_file, events::CALLBACK_PLUGIN)?;
        let fifos = settings.runtime_dir.join("fifos");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&fifos)?;
        Ok(PlaybookRunner {
            fifos: FifoPool::new(fifos),
            launcher: launcher(&settings)?,
            settings,
            git_lock: Mutex::new(()),
        })
    }

    /// Runs one task to its final outcome, reporting progress and output to
    /// `events`. Cancelling `cancel` kills the run and yields `cancelled`.
    pub async fn execute(
        &self,
        spec: &TaskSpec,
        cancel: CancellationToken,
        events: Arc<dyn RunEvents>,
    ) -> RunOutcome {
        let limit = spec.timeout.unwrap_or(self.settings.default_timeout);
        let deadline = Instant::now() + limit;
        if spec.git_pull
            && let Err(outcome) = self.git_pull(&cancel, deadline, limit).await
        {
            return outcome;
        }
        let files = RunFiles::new(&self.settings.runtime_dir, &spec.task_id);
        // The run's marker is its files' common path, so a restarted worker
        // can find what a crashed one left behind (`kill::kill_leftovers`).
        let marker = files.base.display().to_string();
        let outcome = self
            .run_in(&files, &marker, spec, &cancel, deadline, limit, events)
            .await;
        files.remove(&spec.task_id, !spec.extra_vars.is_empty());
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_in(
        &self,
        files: &RunFiles,
        run_id: &str,
        spec: &TaskSpec,
        cancel: &CancellationToken,
        deadline: Instant,
        limit: Duration,
        events: Arc<dyn RunEvents>,
    ) -> RunOutcome {
        // Creating the files and spawning (vfork + exec) take tens of
        // microseconds: done in place, since a hop to the blocking pool and
        // back costs two thread wake-ups per run, more than the work itself.
        // MQTT intake has a thread of its own and never waits on this.
        let prepared = self
            .fifos
            .take()
            .and_then(|fifo| files.create(&spec.extra_vars).map(|()| fifo));
        let mut events_fifo = match prepared {
            Ok(fifo) => fifo,
            Err(e) => {
                return RunOutcome::refused(
                    TaskState::Failed,
                    format!("Cannot prepare the run's files: {e}"),
                );
            }
        };
        let spawned = self.launcher.spawn(
            playbook_args(
                spec,
                (!spec.extra_vars.is_empty()).then_some(files.extra_vars.as_path()),
            ),
            &[
                (kill::RUN_MARKER_ENV, OsStr::new(run_id)),
                (events::EVENTS_PATH_ENV, events_fifo.path().as_os_str()),
                (LOCAL_TEMP_ENV, files.temp_dir.as_os_str()),
            ],
        );
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return RunOutcome::refused(
                    TaskState::Failed,
                    format!(
                        "Cannot start {}: {e}",
                        self.settings.ansible_playbook.display()
                    ),
                );
            }
        };
        let processes =
            RunProcesses::new(Some(child.pid()), run_id).besides(self.launcher.leaders());
        // Ansible's output is read in this task, beside the process: a task
        // of their own each would cost two spawns, and thread wake-ups, per
        // run.
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let output_events = events.clone();
        let readers = async move {
            let out = async {
                if let Some(out) = stdout {
                    forward_lines(out, output_events.as_ref()).await;
                }
            };
            let err = async {
                match stderr {
                    Some(err) => read_tail(err).await,
                    None => String::new(),
                }
            };
            tokio::join!(out, err).1
        };
        let (swept, swept_rx) = oneshot::channel::<()>();
        let mut report = RunReport::default();
        let supervise = async {
            let ending = follow(
                &mut child,
                &mut events_fifo,
                &mut report,
                events.as_ref(),
                cancel,
                deadline,
            )
            .await;
            let ending = match ending {
                Ending::TimedOut(None) => {
                    Ending::TimedOut(self.terminate(&mut child, &processes).await)
                }
                Ending::Cancelled(None) => {
                    Ending::Cancelled(self.terminate(&mut child, &processes).await)
                }
                other => other,
            };
            // Forked workers can outlive the main process; none may remain.
            processes.kill_all().await;
            let _ = swept.send(());
            ending
        };
        // Once the tree is gone, the pipes get 2 s to deliver their last
        // bytes (a process outside the tree may still hold them open).
        let read_out = async {
            tokio::select! {
                tail = readers => tail,
                _ = async {
                    let _ = swept_rx.await;
                    sleep(Duration::from_secs(2)).await;
                } => String::new(),
            }
        };
        let (ending, stderr_tail) = tokio::join!(supervise, read_out);
        outcome(ending, &report, &stderr_tail, limit)
    }

    /// SIGTERM the run, give it `kill_grace`, then SIGKILL whatever is left.
    async fn terminate(
        &self,
        child: &mut RunChild,
        processes: &RunProcesses,
    ) -> Option<ExitStatus> {
        let grace_end = Instant::now() + self.settings.kill_grace;
        processes.signal(Signal::SIGTERM).await;
        let status = timeout(self.settings.kill_grace, child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        // The main process may be gone while a task that traps SIGTERM lives on:
        // it gets the rest of the grace period too.
        processes.wait_until_gone(grace_end).await;
        processes.kill_all().await;
        match status {
            Some(status) => Some(status),
            None => child.wait().await.ok(),
        }
    }

    async fn git_pull(
        &self,
        cancel: &CancellationToken,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(), RunOutcome> {
        let _serialised = self.git_lock.lock().await;
        let mut command = Command::new(&self.settings.git);
        command
            .args(["pull", "--ff-only"])
            .current_dir(&self.settings.playbook_directory)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let finished = tokio::select! {
            output = command.output() => output,
            _ = sleep_until(deadline) => {
                return Err(RunOutcome::refused(
                    TaskState::Timeout,
                    format!("Timed out after {} s (during git pull)", limit.as_secs()),
                ));
            }
            _ = cancel.cancelled() => {
                return Err(RunOutcome::refused(TaskState::Cancelled, "Cancelled".into()));
            }
        };
        match finished {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => {
                let message = String::from_utf8_lossy(&output.stderr);
                Err(RunOutcome::refused(
                    TaskState::Failed,
                    format!("git pull failed: {}", message.trim()),
                ))
            }
            Err(e) => Err(RunOutcome::refused(
                TaskState::Failed,
                format!(
                    "git pull failed: cannot start {}: {e}",
                    self.settings.git.display()
                ),
            )),
        }
    }
}

/// The launcher of `ansible-playbook` for every run: in the playbook
/// directory, with our callback plugin enabled, plain output, only the
/// allowed inventory plugins, and the worker's environment otherwise.
fn launcher(settings: &RunSettings) -> io::Result<Launcher> {
    let common: [(&str, OsString); 8] = [
        ("LC_ALL", "C.UTF-8".into()),
        ("ANSIBLE_NOCOLOR", "1".into()),
        ("ANSIBLE_FORCE_COLOR", "0".into()),
        ("PYTHONUNBUFFERED", "1".into()),
        ("ANSIBLE_RETRY_FILES_ENABLED", "0".into()),
        (
            "ANSIBLE_INVENTORY_ENABLED",
            settings.inventory_plugins.join(",").into(),
        ),
        (
            "ANSIBLE_CALLBACK_PLUGINS",
            prepend_env(
                "ANSIBLE_CALLBACK_PLUGINS",
                settings.runtime_dir.join("plugins"),
            ),
        ),
        (
            "ANSIBLE_CALLBACKS_ENABLED",
            prepend_list_env("ANSIBLE_CALLBACKS_ENABLED", events::CALLBACK_NAME),
        ),
    ];
    Launcher::new(
        &settings.ansible_playbook,
        &settings.playbook_directory,
        &common,
        &[
            kill::RUN_MARKER_ENV,
            events::EVENTS_PATH_ENV,
            LOCAL_TEMP_ENV,
        ],
    )
}

/// Reads event lines until the process exits (or the deadline or cancel comes
/// first), reporting coalesced progress; then drains what is left in the FIFO.
async fn follow(
    child: &mut RunChild,
    fifo: &mut CallbackFifo,
    report: &mut RunReport,
    events: &dyn RunEvents,
    cancel: &CancellationToken,
    deadline: Instant,
) -> Ending {
    let mut last_sent = Counters::default();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    let ending = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(status) => Ending::Exited(status),
                // Waiting failed: treat it like a cancel so the tree is killed.
                Err(_) => Ending::Cancelled(None),
            },
            read = fifo.read_lines(|line| apply(report, events, line)) => {
                if let Err(e) = read {
                    tracing::warn!("cannot read the callback events: {e}");
                }
            }
            _ = tick.tick() => {
                let now = report.counters();
                if now != last_sent {
                    events.progress(now);
                    last_sent = now;
                }
            }
            _ = sleep_until(deadline) => break Ending::TimedOut(None),
            _ = cancel.cancelled() => break Ending::Cancelled(None),
        }
    };
    // Everything the main process wrote is in the FIFO by now (or it is
    // being killed, and what it did not write is lost anyway).
    fifo.drain(|line| apply(report, events, line));
    ending
}

fn apply(report: &mut RunReport, events: &dyn RunEvents, line: &str) {
    match report.apply_line(line) {
        Ok(applied) => {
            if let Some(event) = applied.event {
                events.event(event);
            }
        }
        Err(e) => tracing::debug!("ignoring callback line: {e}"),
    }
}

fn exit_code(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| -signal))
}

fn outcome(ending: Ending, report: &RunReport, stderr_tail: &str, limit: Duration) -> RunOutcome {
    let (state, status, message) = match ending {
        Ending::Exited(status) if status.success() => (TaskState::Success, Some(status), None),
        Ending::Exited(status) => {
            let message = report
                .error_summary()
                .filter(|_| report.saw_task())
                .or_else(|| Some(stderr_tail.to_owned()).filter(|tail| !tail.is_empty()))
                .or_else(|| report.error_summary())
                .unwrap_or_else(|| "ansible-playbook failed without a message".to_owned());
            (TaskState::Failed, Some(status), Some(message))
        }
        Ending::TimedOut(status) => (
            TaskState::Timeout,
            status,
            Some(format!("Timed out after {} s", limit.as_secs())),
        ),
        Ending::Cancelled(status) => (TaskState::Cancelled, status, Some("Cancelled".to_owned())),
    };
    RunOutcome {
        state,
        return_code: status.as_ref().and_then(exit_code),
        counters: report.counters(),
        error_message: message,
        output: report.output(),
        output_per_host: report.output_per_host(),
    }
}

//! Controller-side commands: publish a task request or a cancel, and follow a
//! task's status.
//!
//! `ansible-worker submit` and `ansible-worker cancel` speak PROTOCOL.md from
//! the controller's side, with the broker, credentials, TLS, topic prefix and
//! group of the same config file the worker uses. They open a short-lived
//! MQTT 5 session of their own (client id `ansible-worker-submit-<hex>`,
//! clean start) and never touch a worker's state directly.
//!
//! - `submit` builds the request (`request`), subscribes to the task's status
//!   first when it follows the task, publishes the request at QoS 2 and waits
//!   for the broker's PUBCOMP; then it prints the task id, or follows the
//!   status (`progress`) to the final state. With `--follow` it subscribes
//!   to all of the task's topics as one filter (`P/G/tasks/<id>/#`, so the
//!   broker keeps events and statuses in publishing order) and prints the
//!   events as well (`events`).
//! - `cancel` publishes `{"reason": ...}` at QoS 1 to the task's cancel topic
//!   and waits for the PUBACK.
//!
//! A broker that reports *no matching subscribers* for a request or a cancel
//! (no worker of the group is listening) is an error: the message went to no
//! one and nothing would ever answer it.
//!
//! Exit codes ([`Outcome::exit_code`], [`SubmitError::exit_code`]): 0 success
//! (or accepted, without waiting), 1 failed, 2 usage / config / connection
//! error or wait timeout, 3 the task timed out, 4 the task was cancelled.
//!
//! Layout: this file holds the entry points, the error type and the exit
//! codes; `request` turns the command line into the request document (pure);
//! `session` drives the MQTT connection (acks, reconnects, resubscribing);
//! `progress` reads status documents and formats what the user sees;
//! `events` does the same for the events topic.

mod events;
mod progress;
mod request;
mod session;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::cli::{CancelArgs, SubmitArgs};
use crate::config::{Config, ConfigErrors};
use crate::model::TaskState;
use crate::mqtt::options::ClientError;
use crate::mqtt::topics::Topics;
use progress::{Follower, Show, TaskTopics};
use session::Session;

/// Exit code: the task ended `success`, or the request or cancel was accepted.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code: the task ended `failed`.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage, configuration or connection error, or no final status in time.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: the task ended `timeout`.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit code: the task ended `cancelled`.
pub const EXIT_CANCELLED: u8 = 4;

/// How long the broker may take to connect and acknowledge a subscription,
/// request or cancel (reconnects included) before the command gives up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `submit` or `cancel` could not do its job. Messages never contain the
/// broker password or extra-vars values.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The config file is missing or invalid.
    #[error("{}: invalid configuration:\n{errors}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// Every problem found.
        errors: ConfigErrors,
    },
    /// A command-line value the clap definitions cannot check alone.
    #[error("{0}")]
    Usage(String),
    /// The MQTT client could not be set up (TLS files).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The MQTT client's request queue is gone (its event loop stopped).
    #[error("cannot hand a request to the MQTT client: {0}")]
    Queue(String),
    /// The first connection to the broker failed.
    #[error("cannot connect to the MQTT broker at {broker}: {reason}")]
    Connect {
        /// `host:port`.
        broker: String,
        /// The client's error.
        reason: String,
    },
    /// The broker refused a subscription or publish (MQTT 5 reason code).
    #[error("the broker refused the {what}: {reason}")]
    Refused {
        /// What was refused (`subscription to ...`, `request`, `cancel`).
        what: String,
        /// The MQTT 5 reason code.
        reason: String,
    },
    /// The broker delivered a request or cancel to no one.
    #[error("no worker is subscribed to {topic}: the broker delivered the {what} to no one")]
    NoSubscribers {
        /// `request` or `cancel`.
        what: &'static str,
        /// The topic published to.
        topic: String,
    },
    /// The broker did not connect or acknowledge in time.
    #[error("the broker did not acknowledge the {what} within {}s", ACK_TIMEOUT.as_secs())]
    AckTimeout {
        /// What was waited for.
        what: &'static str,
    },
    /// `--wait-timeout` passed without a final status.
    #[error("no final status for task {task_id} within {}s (--wait-timeout)", after.as_secs())]
    WaitTimeout {
        /// The task.
        task_id: String,
        /// The `--wait-timeout`.
        after: Duration,
    },
}

impl SubmitError {
    /// The process exit code for this error: always [`EXIT_ERROR`].
    pub fn exit_code(&self) -> u8 {
        EXIT_ERROR
    }
}

impl From<rumqttc::v5::ClientError> for SubmitError {
    /// Keeps only the message: the error holds the whole request (payload
    /// included), which is large and not for display.
    fn from(error: rumqttc::v5::ClientError) -> Self {
        SubmitError::Queue(error.to_string())
    }
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker acknowledged the request (not followed) or the cancel.
    Accepted,
    /// The followed task reached this final state.
    Finished(TaskState),
}

impl Outcome {
    /// The process exit code: 0 accepted or `success`, 1 `failed`,
    /// 3 `timeout`, 4 `cancelled`.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Accepted | Outcome::Finished(TaskState::Success) => EXIT_SUCCESS,
            Outcome::Finished(TaskState::Failed) => EXIT_FAILED,
            Outcome::Finished(TaskState::Timeout) => EXIT_TIMEOUT,
            Outcome::Finished(TaskState::Cancelled) => EXIT_CANCELLED,
            // Never an outcome: following stops at a final state only.
            Outcome::Finished(TaskState::Queued | TaskState::Running) => EXIT_ERROR,
        }
    }
}

/// `ansible-worker submit`: publishes a task request built from `args` to the
/// broker and group of the config at `config_path`; prints the task id, or
/// follows the task and prints its progress and result.
pub async fn submit(config_path: &Path, args: &SubmitArgs) -> Result<Outcome, SubmitError> {
    let config = load_config(config_path)?;
    let task_id = match &args.task_id {
        Some(id) => id.clone(),
        None => request::generate_task_id(&args.playbook, chrono::Utc::now(), fastrand::u32(..)),
    };
    let built = request::build(args, &task_id, &config.worker.playbook_directory)?;
    for note in &built.notes {
        eprintln!("ansible-worker: note: {note}");
    }
    let topics = topics(&config, args.group.as_deref());
    let request = session::Request {
        task_id: task_id.clone(),
        topic: topics.tasks(),
        payload: serde_json::to_vec(&built.request).expect("a JSON value serializes"),
        filter: args.follows().then(|| match args.follow {
            true => topics.task_filter(&task_id),
            false => topics.status_filter(&task_id),
        }),
        wait_timeout: args.wait_timeout.map(Duration::from_secs),
    };
    let show = match (args.json, args.follow) {
        (true, _) => Show::Json,
        (false, true) => Show::Events,
        (false, false) => Show::Changes,
    };
    let task_topics = TaskTopics {
        status: topics.status(&task_id),
        events: topics.events(&task_id),
    };
    let mut follower = Follower::new(&task_id, task_topics, show, std::io::stdout());
    let mut session = Session::open(&config, "submit")?;
    let result = session.submit(&request, &mut follower).await;
    session.close().await;
    match result? {
        Some(last) => {
            follower.finish(&last);
            Ok(Outcome::Finished(last.status.state))
        }
        None => {
            print_stdout(&format!("{task_id}\n"));
            Ok(Outcome::Accepted)
        }
    }
}

/// `ansible-worker cancel`: asks the workers of the group to cancel a task and
/// returns once the broker acknowledged the cancel.
pub async fn cancel(config_path: &Path, args: &CancelArgs) -> Result<Outcome, SubmitError> {
    let config = load_config(config_path)?;
    let topics = topics(&config, args.group.as_deref());
    let payload = match &args.reason {
        Some(reason) => json!({ "reason": reason }),
        None => json!({}),
    };
    let mut session = Session::open(&config, "cancel")?;
    let result = session
        .cancel(
            &topics.cancel(&args.task_id),
            payload.to_string().into_bytes(),
        )
        .await;
    session.close().await;
    result?;
    Ok(Outcome::Accepted)
}

/// The worker's config, which must use the MQTT transport: with
/// `transport = "http"` there is no group to publish to.
fn load_config(path: &Path) -> Result<Config, SubmitError> {
    let config = Config::load(path).map_err(|errors| SubmitError::Config {
        path: path.to_owned(),
        errors,
    })?;
    if let Some(poll) = &config.poll {
        return Err(SubmitError::Usage(format!(
            "{}: transport = \"http\": these workers take their tasks from the controller \
             at {}; submit and cancel there, or through a worker's own API \
             (POST /api/tasks, POST /api/tasks/<task_id>/cancel)",
            path.display(),
            poll.base_url
        )));
    }
    Ok(config)
}

/// The group's topics; the controller needs no worker id.
fn topics(config: &Config, group: Option<&str>) -> Topics {
    let group = group.unwrap_or(&config.worker.group_name);
    Topics::new(&config.worker.topic_prefix, group, "", false, false)
}

/// Writes to stdout, ignoring a closed pipe (`| head`) instead of panicking.
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_final_state() {
        assert_eq!(Outcome::Accepted.exit_code(), 0);
        assert_eq!(Outcome::Finished(TaskState::Success).exit_code(), 0);
        assert_eq!(Outcome::Finished(TaskState::Failed).exit_code(), 1);
        assert_eq!(Outcome::Finished(TaskState::Timeout).exit_code(), 3);
        assert_eq!(Outcome::Finished(TaskState::Cancelled).exit_code(), 4);
        let error = SubmitError::AckTimeout { what: "request" };
        assert_eq!(error.exit_code(), 2);
        let error = SubmitError::Usage("bad".to_owned());
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn config_errors_name_the_file_and_every_problem() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[worker]\ngroup_name = \"a/b\"\n").unwrap();
        let error = load_config(&path).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("bad.toml: invalid configuration"), "{text}");
        assert!(text.contains("worker.group_name"), "{text}");
        assert!(text.contains("worker.playbook_directory"), "{text}");
        assert_eq!(error.exit_code(), EXIT_ERROR);
    }

    #[test]
    fn a_polling_workers_config_points_to_its_controller() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("playbooks")).unwrap();
        let path = dir.path().join("poll.toml");
        std::fs::write(
            &path,
            "transport = \"http\"\n[worker]\ngroup_name = \"g\"\n\
             playbook_directory = \"playbooks\"\n\
             [poll]\nbase_url = \"http://controller.example:8000/api\"\n",
        )
        .unwrap();
        let error = load_config(&path).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("transport = \"http\""), "{text}");
        assert!(
            text.contains("http://controller.example:8000/api"),
            "{text}"
        );
        assert_eq!(error.exit_code(), EXIT_ERROR);
    }

    #[test]
    fn group_override_changes_every_topic() {
        let config = Config::from_toml(
            "[worker]\ngroup_name = \"lab\"\nplaybook_directory = \".\"\ntopic_prefix = \"a/b\"\n",
            &std::env::current_dir().unwrap(),
            &|_| None,
        )
        .unwrap();
        let own = topics(&config, None);
        assert_eq!(own.tasks(), "a/b/lab/tasks");
        let other = topics(&config, Some("prod"));
        assert_eq!(other.tasks(), "a/b/prod/tasks");
        assert_eq!(other.cancel("t1"), "a/b/prod/tasks/t1/cancel");
        assert_eq!(other.status_filter("t1"), "a/b/prod/tasks/t1/status/#");
    }
}

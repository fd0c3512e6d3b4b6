//! ansible-worker runs Ansible playbooks on request over MQTT 5 and reports
//! their progress as retained status messages (see PROTOCOL.md).
//!
//! # Layout
//! - [`config`]: TOML → checked [`config::Config`].
//! - [`intake`]: raw request payload → checked [`model::TaskSpec`] or a refusal.
//! - [`table`]: [`table::TaskTable`], the one owner of task state and its
//!   change stream; restart recovery.
//! - [`journal`]: the durable record of every task (SQLite), written before a
//!   status leaves the process and read back at start.
//! - [`pool`]: `worker.concurrency` permits; queued tasks → runs; [`heap`]:
//!   what a burst freed goes back to the system when the pool is idle.
//! - [`mod@run`]: [`run::PlaybookRunner`], one `ansible-playbook` process each,
//!   observed through a callback plugin; timeouts and cancel kill the tree.
//! - [`transport`]: what the core needs from a transport (a task source and a
//!   status sink), and how any transport admits a request.
//! - [`mqtt`]: the MQTT transport: the broker connection, the status
//!   publisher, the run events topic and presence.
//! - [`poll`]: the HTTP polling transport: the poll loop and the status
//!   poster of a controller that speaks REST. `run` starts the one
//!   `transport` names (`side`).
//! - [`broker`]: the optional embedded MQTT broker (rumqttd).
//! - [`http`]: dashboard, JSON API, live events, health and metrics.
//! - [`submit`]: controller-side commands (`submit`, `cancel`) that talk to a
//!   worker through the broker.
//!
//! Data flows one way: task source → intake → table → pool → run → table →
//! journal → change stream → status sink.

pub mod broker;
pub mod cli;
pub mod config;
pub mod heap;
pub mod http;
pub mod intake;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod poll;
pub mod pool;
pub mod run;
pub mod submit;
pub mod table;
pub mod transport;

mod side;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use journal::Journal;
use metrics::Metrics;
use run::{PlaybookRunner, RunSettings};
use side::Side;
use table::{TableSettings, TaskTable};

/// Time allowed, beyond `kill_grace`, for runs, final statuses and the
/// DISCONNECT to get out during shutdown.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How long the embedded broker must have passed nothing on to its clients
/// before the worker exits (and the broker with it), so that the final
/// statuses reach the subscribers.
const BROKER_DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Errors that stop the worker from starting. A message carries its OS
/// error itself rather than as `source()`, so that printing the chain
/// (`{:#}`) does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state or runtime directory could not be prepared.
    #[error("cannot prepare {path}: {error}")]
    StateDir {
        /// The directory.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The task journal could not be opened or read.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// The MQTT client could not be configured.
    #[error(transparent)]
    Mqtt(#[from] mqtt::options::ClientError),
    /// The HTTP polling client could not be configured.
    #[error(transparent)]
    Poll(#[from] poll::PollError),
    /// The embedded broker could not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen for HTTP on {addr}: {error}")]
    Http {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// Runs the worker until `shutdown` is cancelled, then stops taking requests,
/// cancels queued and running tasks, publishes every final status and
/// disconnects.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let shown_source = side::shown_source(&config);
    let mut embedded = None;
    let mut status_link = None;
    if config.broker.enabled {
        let topics = mqtt::topics::Topics::of(&config.worker);
        let mut broker = broker::start(
            &config.broker,
            &topics,
            &config.worker.worker_id,
            metrics.clone(),
        )?;
        if config.mqtt.host.is_none() {
            config.mqtt.host = Some(broker.private.ip().to_string());
            config.mqtt.port = broker.private.port();
            status_link = broker.status_link.take();
        }
        embedded = Some(broker);
    }
    let worker = &config.worker;
    let state_dir = prepare_state_dir(&worker.state_dir)?;
    let runtime_dir = runtime_dir(&state_dir, &worker.worker_id);
    // Runs a crashed predecessor left behind must not race the recovery.
    let leftovers = run::kill::kill_leftovers(&runtime_dir).await;
    if leftovers > 0 {
        tracing::warn!(
            leftovers,
            "killed processes left by a previous worker process"
        );
    }
    let _ = std::fs::remove_dir_all(&runtime_dir);
    let runner = PlaybookRunner::new(RunSettings {
        ansible_playbook: worker.ansible_playbook_path.clone(),
        git: worker.git_path.clone(),
        playbook_directory: worker.playbook_directory.clone(),
        runtime_dir: runtime_dir.clone(),
        default_timeout: worker.task_timeout,
        kill_grace: worker.kill_grace,
        inventory_plugins: worker.inventory_plugins.clone(),
    })
    .map_err(|error| StartError::StateDir {
        path: runtime_dir.display().to_string(),
        error,
    })?;
    let runner = Arc::new(runner);

    let (journal, stored) = Journal::open(&state_dir.join(journal::JOURNAL_FILE))?;
    let table = TaskTable::new(TableSettings {
        worker_id: worker.worker_id.clone(),
        max_queue_size: worker.max_queue_size,
        history_limit: worker.history_limit,
        playbook_directory: worker.playbook_directory.clone(),
        metrics,
        journal: Some(journal.clone()),
    });
    let restored = table.restore(stored, worker.rerun_interrupted);
    if restored != table::Restored::default() {
        tracing::info!(
            queued = restored.queued,
            ended = restored.ended,
            finished = restored.finished,
            "restored tasks from the journal"
        );
    }
    table.journaled().await;
    // The one intake policy of every transport's and the API's requests.
    let policy = intake::IntakePolicy::of(worker);
    let mut side = Side::start(&config, &table, policy.clone(), status_link)?;
    let source = side.source();
    let sink = side.sink().expect("the status sink is taken once");
    let statuses = tokio::spawn(sink.deliver(side.restored(&table), table.subscribe()));
    let http = match config.http.enabled {
        true => Some(
            start_http(
                &config,
                shown_source,
                &table,
                source.clone(),
                policy.clone(),
                &shutdown,
            )
            .await?,
        ),
        false => None,
    };
    let stop_pool = CancellationToken::new();
    let runs = TaskTracker::new();
    let pool = tokio::spawn(pool::dispatch(
        table.clone(),
        runner,
        worker.concurrency,
        side.event_sink(),
        stop_pool.clone(),
        runs.clone(),
    ));
    // Once everything is up, so Python importing Ansible does not compete
    // with start-up; the built-in list applies until it answers.
    policy
        .reserved_names
        .ask_installed_ansible(&worker.ansible_playbook_path, &worker.playbook_directory);
    tracing::info!(
        worker_id = %worker.worker_id,
        tasks = %side.tasks_from(),
        concurrency = worker.concurrency,
        "worker started"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: cancelling queued and running tasks");
    source.stop_intake();
    stop_pool.cancel();
    let _ = pool.await;
    table.shutdown();
    runs.close();
    if tokio::time::timeout(worker.kill_grace + SHUTDOWN_MARGIN, runs.wait())
        .await
        .is_err()
    {
        tracing::error!("runs did not end within the shutdown deadline");
    }
    table.close_subscribers();
    if tokio::time::timeout(SHUTDOWN_MARGIN, statuses)
        .await
        .is_err()
    {
        tracing::error!("final statuses could not all be handed on");
    }
    side.finish(SHUTDOWN_MARGIN).await;
    if let Some(broker) = &embedded {
        broker.drain(BROKER_DRAIN_QUIET, SHUTDOWN_MARGIN).await;
    }
    journal.close().await;
    if let Some(http) = http {
        let _ = tokio::time::timeout(SHUTDOWN_MARGIN, http).await;
    }
    let _ = std::fs::remove_dir_all(&runtime_dir);
    tracing::info!("stopped");
    Ok(())
}

/// SIGKILLs every process of the runs of the worker configured by `worker`
/// (in this process or a crashed earlier one) and returns how many there
/// were: for an exit that cannot wait for [`run()`]'s shutdown, so that no
/// `ansible-playbook` outlives it. The tasks' states are left as they are.
pub async fn kill_runs(worker: &config::WorkerConfig) -> usize {
    let state_dir =
        std::fs::canonicalize(&worker.state_dir).unwrap_or_else(|_| worker.state_dir.clone());
    run::kill::kill_leftovers(&runtime_dir(&state_dir, &worker.worker_id)).await
}

/// The directory of the runs' files and markers, inside the (canonical)
/// state directory; one per worker id, so workers may share a state dir.
fn runtime_dir(state_dir: &std::path::Path, worker_id: &str) -> std::path::PathBuf {
    state_dir.join(format!("runtime-{worker_id}"))
}

/// Creates the state directory (private: the journal holds requests) and
/// returns its absolute path.
fn prepare_state_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |error| StartError::StateDir {
        path: dir.display().to_string(),
        error,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    std::fs::canonicalize(dir).map_err(fail)
}

/// Binds the HTTP listener (failing startup if it cannot) and serves the
/// dashboard and API until `shutdown`.
async fn start_http(
    config: &Config,
    broker: String,
    table: &TaskTable,
    source: Arc<dyn transport::TaskSource>,
    policy: intake::IntakePolicy,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let worker = &config.worker;
    let addr = config.http.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Http { addr, error })?;
    let state = http::AppState {
        table: table.clone(),
        source,
        policy: Arc::new(policy),
        info: Arc::new(http::WorkerInfo {
            worker_id: worker.worker_id.clone(),
            group: worker.group_name.clone(),
            broker,
            transport: match config.transport {
                config::Transport::Mqtt => "mqtt",
                config::Transport::Http => "http",
            },
            concurrency: worker.concurrency,
            playbook_directory: worker.playbook_directory.clone(),
            embedded_broker: config.broker.enabled.then_some(config.broker.listen),
            ansible_playbook: worker.ansible_playbook_path.clone(),
        }),
        token: config.http.token.clone(),
        token_for_reads: config.http.token_for_reads,
        allowed_hosts: config.http.allowed_hosts.clone().into(),
        shutdown: shutdown.clone(),
    };
    tracing::info!(%addr, "serving the dashboard and API");
    Ok(tokio::spawn(async move {
        if let Err(e) = http::serve(listener, state).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    }))
}

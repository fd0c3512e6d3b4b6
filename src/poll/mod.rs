//! The HTTP polling transport (`transport = "http"`), for controllers that
//! speak REST and run no broker: `GET <base_url>/tasks` brings requests in
//! (`intake`, the poll loop; `answer`, what an answer holds), `POST
//! <base_url>/tasks/<task_id>/status` takes every status out (`poster`, the
//! [`StatusSink`]), both through one HTTP client with the worker's headers,
//! auth and TLS (`client`), and with what they share in `retry`. The
//! worker's own API's submits and cancels act on this worker's table
//! (`source`, the [`TaskSource`]). [`PollSide`] wires them together for
//! `run`.
//!
//! There is no events channel and no presence: the controller learns about
//! a task from its statuses only.

pub mod answer;
pub mod client;
pub mod intake;
pub mod poster;
pub mod retry;
pub mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::intake::IntakePolicy;
use crate::table::TaskTable;
use crate::transport::tls::TlsError;
use crate::transport::{LinkState, StatusSink, TaskSource};
use intake::Intake;
use poster::StatusPoster;
use source::PollSource;

/// Errors building the polling side from the config.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// `transport = "http"` without a `[poll]` table (the config check
    /// prevents it).
    #[error("transport = \"http\" needs a [poll] table with base_url")]
    NotConfigured,
    /// The TLS settings (`poll.tls_*`) could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A config value cannot be sent as an HTTP header (it is not shown: it
    /// may be a secret).
    #[error("{0}: cannot be sent in an HTTP header (control characters?)")]
    Header(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// The running polling side of one worker: the poll loop, and the status
/// poster until [`PollSide::sink`] hands it out.
pub struct PollSide {
    source: Arc<PollSource>,
    shown_url: String,
    intake: JoinHandle<()>,
    poster: Option<StatusPoster>,
}

impl PollSide {
    /// Starts polling the controller `config.poll` names (in the
    /// background, retrying); requests `policy` accepts go into `table`.
    /// Statuses leave through [`PollSide::sink`].
    pub fn start(
        config: &Config,
        table: &TaskTable,
        policy: IntakePolicy,
    ) -> Result<PollSide, PollError> {
        let poll = config.poll.as_ref().ok_or(PollError::NotConfigured)?;
        let client = client::build(poll, &config.worker)?;
        let shown_url = retry::shown_url(&poll.base_url);
        if config.worker.max_queue_size == 0 {
            tracing::warn!("worker.max_queue_size is 0: this worker will never poll for tasks");
        }
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        let stop = CancellationToken::new();
        let poster = StatusPoster::new(client.clone(), poll.base_url.clone(), table.clone());
        let intake = tokio::spawn(intake::poll(Intake {
            client,
            tasks_url: format!("{}/tasks", poll.base_url),
            shown_url: shown_url.clone(),
            interval: poll.interval,
            table: table.clone(),
            policy: policy.clone(),
            link: link_tx,
            stop: stop.clone(),
        }));
        let source = Arc::new(PollSource::new(table.clone(), policy, link_rx, stop));
        Ok(PollSide {
            source,
            shown_url,
            intake,
            poster: Some(poster),
        })
    }

    /// The controller's URL as the dashboard and logs show it.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Where the worker's own API sends submits and cancels: this worker's
    /// table.
    pub fn source(&self) -> Arc<dyn TaskSource> {
        self.source.clone()
    }

    /// The status poster, once: each status posted to the controller.
    pub fn sink(&mut self) -> Option<Box<dyn StatusSink>> {
        self.poster
            .take()
            .map(|poster| Box::new(poster) as Box<dyn StatusSink>)
    }

    /// Stops polling (if `stop_intake` has not) and waits, within `margin`,
    /// for the poll in flight to be answered and admitted.
    pub async fn finish(self, margin: Duration) {
        self.source.stop_intake();
        let mut intake = self.intake;
        if tokio::time::timeout(margin, &mut intake).await.is_err() {
            tracing::warn!("the poll in flight did not end in time; abandoning it");
            intake.abort();
        }
    }
}

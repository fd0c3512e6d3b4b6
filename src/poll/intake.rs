//! The poll loop: `GET <base_url>/tasks` until intake stops, each request
//! of an answer handed to [`crate::transport::admit`] exactly as over MQTT.
//!
//! - An answer is `200` with one request object or an array of them, or
//!   `204` (or `200` with `[]` or no body) when there is none; `answer`
//!   hands its requests to intake.
//! - After an answer with a new request the worker polls again at once;
//!   after an empty one, or one that only repeats tasks it holds (a
//!   controller handing a task out until its status arrives), it waits
//!   `poll.interval`; after a failure (no answer, a time
//!   out, a status other than 200/204) it backs off (`transport::backoff`,
//!   capped at the larger of the interval and a minute), or waits what a 429
//!   or 503 asks for with `Retry-After` (`retry`). A failure is logged once
//!   when its kind appears, and its end once; repeats go to the debug level.
//! - It asks only for what it can hold: before each poll it waits until the
//!   queue has room ([`TaskTable::room`]), and while the journal cannot
//!   record tasks it does not poll at all. What an answer brings beyond the
//!   queue's room ends `failed` ("Queue full") like any request.
//! - The next poll waits until what the answer became is journaled, so a
//!   crash loses nothing the worker took.
//! - A poll in flight when intake stops is completed and its requests
//!   admitted (as the shutdown allows), since the controller handed them out.
//!
//! The link state says `up` while the last poll got an answer that is not a
//! failure, and `subscribed` while the loop polls.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::answer::{admit_answer, body_limit};
use super::retry::{describe, retry_after};
use crate::intake::IntakePolicy;
use crate::journal::JournalHealth;
use crate::table::TaskTable;
use crate::transport::LinkState;
use crate::transport::backoff::Backoff;

/// The first delay after a failure, and the least one: a `Retry-After` of
/// zero does not make a tight loop.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The backoff's cap, unless `poll.interval` is longer.
const MIN_RETRY_CAP: Duration = Duration::from_secs(60);

/// Everything the loop needs.
pub struct Intake {
    /// The client with the worker's headers, auth and TLS.
    pub client: reqwest::Client,
    /// `<base_url>/tasks`.
    pub tasks_url: String,
    /// The controller's URL as logs may show it (no credentials).
    pub shown_url: String,
    /// Time between polls that found nothing.
    pub interval: Duration,
    /// Where requests go.
    pub table: TaskTable,
    /// Intake rules.
    pub policy: IntakePolicy,
    /// The link state the loop keeps.
    pub link: watch::Sender<LinkState>,
    /// Ends the loop (after the poll in flight).
    pub stop: CancellationToken,
}

/// Polls until `intake.stop` is cancelled.
pub async fn poll(intake: Intake) {
    let cap = intake.interval.max(MIN_RETRY_CAP);
    let mut backoff = Backoff::new(FIRST_RETRY, cap, Duration::ZERO);
    let mut trouble = Trouble::default();
    let mut journal = intake.table.journal_health();
    let limit = body_limit(&intake.policy);
    while intake.wait_until_ready(&mut journal).await {
        let wait = match intake.fetch(limit).await {
            Ok(body) => {
                intake.answered();
                trouble.cleared(&intake.shown_url);
                backoff.serving(Instant::now());
                match admit_answer(&intake.table, &intake.policy, &body).await {
                    0 => Some(intake.interval),
                    _ => None,
                }
            }
            Err(failure) => {
                intake
                    .link
                    .send_if_modified(|state| std::mem::replace(&mut state.up, false));
                let delay = backoff.next_delay(Instant::now());
                let delay = match failure.retry_after() {
                    Some(asked) => asked.max(FIRST_RETRY),
                    None => delay,
                };
                if let Failure::TooLarge { limit } = failure {
                    let reason = format!("poll answer larger than {limit} bytes; not read");
                    intake.table.reject_unaddressable(&reason);
                }
                trouble.report(&failure, delay, &intake.shown_url);
                Some(delay)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = intake.stop.cancelled() => break,
            }
        }
    }
    intake
        .link
        .send_if_modified(|state| std::mem::replace(&mut state.subscribed, false));
    tracing::info!("stopped polling for tasks");
}

impl Intake {
    /// Waits until the journal can record tasks and the queue has room;
    /// false once intake stops.
    async fn wait_until_ready(&self, journal: &mut watch::Receiver<JournalHealth>) -> bool {
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            let health = journal.borrow_and_update().clone();
            if let JournalHealth::Failing(reason) = health {
                tracing::warn!(
                    "not polling for tasks: the task journal cannot be written ({reason})"
                );
                self.link
                    .send_if_modified(|state| std::mem::replace(&mut state.subscribed, false));
                tokio::select! {
                    changed = journal.changed() => if changed.is_err() { return false },
                    _ = self.stop.cancelled() => return false,
                }
                if !journal.borrow().is_failing() {
                    tracing::info!("polling for tasks again: the task journal is writable");
                }
                continue;
            }
            tokio::select! {
                _ = self.table.room() => {}
                _ = self.stop.cancelled() => return false,
            }
            // The journal may have failed while the queue was full.
            if journal.has_changed().unwrap_or(false) {
                continue;
            }
            self.link
                .send_if_modified(|state| !std::mem::replace(&mut state.subscribed, true));
            return true;
        }
    }

    /// The link is up: a new generation if it was down.
    fn answered(&self) {
        self.link.send_if_modified(|state| {
            if state.up {
                return false;
            }
            state.up = true;
            state.generation += 1;
            true
        });
    }

    /// One poll: the body of a 200 (empty for a 204), or why there is none.
    async fn fetch(&self, limit: usize) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        let outcome = self.exchange(limit).await;
        let elapsed_ms = started.elapsed().as_millis();
        let path = url_path(&self.tasks_url);
        match &outcome {
            Ok((status, body)) => tracing::debug!(
                method = "GET",
                path,
                status = status.as_u16(),
                bytes = body.len(),
                elapsed_ms,
                "poll answered"
            ),
            Err(failure) => {
                tracing::debug!(method = "GET", path, elapsed_ms, "poll failed: {failure}")
            }
        }
        outcome.map(|(_, body)| body)
    }

    async fn exchange(&self, limit: usize) -> Result<(StatusCode, Vec<u8>), Failure> {
        let response = self
            .client
            .get(&self.tasks_url)
            .send()
            .await
            .map_err(Failure::from_error)?;
        let status = response.status();
        match status {
            StatusCode::OK => Ok((status, read_capped(response, limit).await?)),
            StatusCode::NO_CONTENT => Ok((status, Vec::new())),
            _ => Err(Failure::Status {
                code: status,
                retry_after: match status {
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                        retry_after(response.headers())
                    }
                    _ => None,
                },
            }),
        }
    }
}

/// The path of `url`, for logs.
fn url_path(url: &str) -> &str {
    url.find("://")
        .and_then(|scheme| {
            url[scheme + 3..]
                .find('/')
                .map(|at| &url[scheme + 3 + at..])
        })
        .unwrap_or("/")
}

/// The body of `response`, refused beyond `limit` bytes (unread, when its
/// length says so at once).
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Failure> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(Failure::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Failure::from_error)? {
        if body.len() + chunk.len() > limit {
            return Err(Failure::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a poll brought nothing.
#[derive(Debug)]
enum Failure {
    /// No (complete) answer: `kind` is [`Kind::Connect`], [`Kind::TimedOut`]
    /// or [`Kind::Broken`].
    Request {
        /// Which.
        kind: Kind,
        /// In a few words (`retry::describe`).
        why: String,
    },
    /// An answer that is not 200 or 204.
    Status {
        /// Its status.
        code: StatusCode,
        /// What a 429 or 503 asked for.
        retry_after: Option<Duration>,
    },
    /// An answer larger than the limit.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// A failure's kind, for logging a change of trouble once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No connection (refused, unreachable, TLS).
    Connect,
    /// Not answered within `poll.timeout` (or `connect_timeout`).
    TimedOut,
    /// The connection broke, or the answer was malformed.
    Broken,
    /// This HTTP status.
    Status(u16),
    /// Too large to read.
    TooLarge,
}

impl Failure {
    fn from_error(error: reqwest::Error) -> Failure {
        let kind = if error.is_timeout() {
            Kind::TimedOut
        } else if error.is_connect() {
            Kind::Connect
        } else {
            Kind::Broken
        };
        Failure::Request {
            kind,
            why: describe(&error),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Failure::Request { kind, .. } => *kind,
            Failure::Status { code, .. } => Kind::Status(code.as_u16()),
            Failure::TooLarge { .. } => Kind::TooLarge,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Request { why, .. } => f.write_str(why),
            Failure::Status { code, .. } => write!(f, "the controller answered {code}"),
            Failure::TooLarge { limit } => write!(
                f,
                "the answer is larger than {limit} bytes and was not read \
                 (the requests it held are lost to this worker)"
            ),
        }
    }
}

/// What the log said about failures: a kind of failure is told once when
/// it appears (repeats at debug level), and its end once.
#[derive(Debug, Default)]
struct Trouble {
    current: Option<Kind>,
    failed: u32,
    answered_once: bool,
}

impl Trouble {
    fn report(&mut self, failure: &Failure, delay: Duration, url: &str) {
        self.failed += 1;
        let asked = if failure.retry_after().is_some() {
            " as the controller asked (Retry-After)"
        } else {
            ""
        };
        if self.current.replace(failure.kind()) == Some(failure.kind()) {
            tracing::debug!(
                "polling {url} failed again: {failure}; retrying in {delay:.1?}{asked}"
            );
            return;
        }
        tracing::warn!(
            "cannot poll {url} for tasks: {failure}; retrying in {delay:.1?}{asked} \
             (repeats of this failure are logged at debug level)"
        );
    }

    fn cleared(&mut self, url: &str) {
        if self.current.take().is_some() {
            let failed = std::mem::take(&mut self.failed);
            tracing::info!("polling {url} for tasks again, after {failed} failed polls");
        } else if !self.answered_once {
            tracing::info!("polling {url} for tasks");
        }
        self.answered_once = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_leave_out_scheme_host_and_credentials() {
        assert_eq!(
            url_path("https://u:p@ctl.example:8443/api/tasks"),
            "/api/tasks"
        );
        assert_eq!(url_path("http://127.0.0.1:9/tasks"), "/tasks");
    }
}

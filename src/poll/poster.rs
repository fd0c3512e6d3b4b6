//! The HTTP transport's [`StatusSink`]: every status change is posted to
//! `POST <base_url>/tasks/<task_id>/status` as the same JSON document MQTT
//! publishes.
//!
//! - **Order.** One task's statuses are posted one at a time, in the order
//!   the table made them; different tasks' posts run side by side (at most
//!   [`MAX_IN_FLIGHT`]), so one task's retries hold up no other.
//! - **Retries.** A post is repeated, with exponential backoff and jitter,
//!   until the controller answers 2xx: after a failed connection, a
//!   time-out, 408, 429, a 5xx or any answer that is not a 4xx. `Retry-After`
//!   on 429 and 503 sets the wait. Any other 4xx means the controller will
//!   never take that document: it is logged and dropped, and the task's next
//!   status follows.
//! - **Durability.** Statuses reach this sink only once the journal holds
//!   them; a final status the controller took (or refused for good) is
//!   marked delivered in the
//!   journal ([`TaskTable::mark_delivered`]), and the statuses not marked are
//!   what a restart posts again (the `restored` list).
//! - **Shutdown.** When the table closes the change stream, what is queued is
//!   still posted; the caller bounds how long that may take.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::retry::{Backoff, retry_after, status_url};
use crate::model::{StatusUpdate, TaskStatus};
use crate::table::TaskTable;
use crate::transport::{BoxFuture, StatusSink};

/// Tasks whose statuses are being posted at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// First and longest wait between two attempts at one post.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

/// Posts statuses to the polled controller.
pub struct StatusPoster {
    client: reqwest::Client,
    base_url: String,
    table: TaskTable,
}

impl StatusPoster {
    /// A poster sending with `client` (which carries the worker's headers and
    /// auth) to `base_url` (no trailing `/`); receipts go to `table`.
    pub fn new(client: reqwest::Client, base_url: String, table: TaskTable) -> Self {
        StatusPoster {
            client,
            base_url,
            table,
        }
    }
}

impl StatusSink for StatusPoster {
    fn deliver(
        self: Box<Self>,
        restored: Vec<TaskStatus>,
        changes: mpsc::UnboundedReceiver<StatusUpdate>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(post_statuses(*self, restored, changes))
    }
}

/// What became of one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    /// The controller answered 2xx.
    Taken,
    /// The controller refused it for good (a 4xx other than 408 and 429).
    Refused,
}

/// Statuses waiting, per task, and which tasks have a post under way.
#[derive(Default)]
struct Outbox {
    waiting: HashMap<String, VecDeque<StatusUpdate>>,
    /// Tasks with statuses waiting and no post under way, oldest first. A
    /// task's post under way is the front of its queue until `done`.
    ready: VecDeque<String>,
}

impl Outbox {
    /// Queues `status` behind its task's others (the oldest of which may be
    /// under way).
    fn push(&mut self, update: StatusUpdate) {
        let queue = self
            .waiting
            .entry(update.status.task_id.clone())
            .or_default();
        if queue.is_empty() {
            self.ready.push_back(update.status.task_id.clone());
        }
        queue.push_back(update);
    }

    /// The next status to post, from a task with none under way.
    fn next(&mut self) -> Option<StatusUpdate> {
        let task_id = self.ready.pop_front()?;
        self.waiting.get(&task_id)?.front().cloned()
    }

    /// The post of `task_id`'s oldest status ended: drop it, and make the
    /// task ready again if more wait.
    fn done(&mut self, task_id: &str) {
        let Some(queue) = self.waiting.get_mut(task_id) else {
            return;
        };
        queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(task_id);
        } else {
            self.ready.push_back(task_id.to_owned());
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

async fn post_statuses(
    poster: StatusPoster,
    restored: Vec<TaskStatus>,
    mut changes: mpsc::UnboundedReceiver<StatusUpdate>,
) {
    let mut outbox = Outbox::default();
    for status in restored {
        outbox.push(status.into());
    }
    let mut posts: JoinSet<TaskStatus> = JoinSet::new();
    let mut open = true;
    loop {
        while posts.len() < MAX_IN_FLIGHT {
            let Some(StatusUpdate { status, json }) = outbox.next() else {
                break;
            };
            let client = poster.client.clone();
            let url = status_url(&poster.base_url, &status.task_id);
            posts.spawn(async move {
                match url {
                    Some(url) => post_until_answered(&client, &url, &status, json).await,
                    None => {
                        tracing::error!(task_id = %status.task_id, "this task id has no status URL")
                    }
                }
                status
            });
        }
        if !open && outbox.is_empty() && posts.is_empty() {
            return;
        }
        tokio::select! {
            change = changes.recv(), if open => match change {
                Some(status) => outbox.push(status),
                None => open = false,
            },
            Some(joined) = posts.join_next() => {
                let Ok(status) = joined else {
                    // A post that panicked: its task's statuses stay queued
                    // behind it, so stop rather than skip one.
                    tracing::error!("a status post failed unexpectedly");
                    return;
                };
                // A final the controller refused for good is settled too:
                // posting it again after a restart would be refused again.
                if status.state.is_final() {
                    poster.table.mark_delivered(&status);
                }
                outbox.done(&status.task_id);
            }
        }
    }
}

/// Posts `status` (`body` is its JSON) until the controller answers 2xx or
/// refuses it for good.
async fn post_until_answered(
    client: &reqwest::Client,
    url: &str,
    status: &TaskStatus,
    body: Bytes,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, LONGEST_RETRY, Duration::ZERO);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let answer = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let elapsed = started.elapsed();
        let wait = match answer {
            Ok(response) => {
                let code = response.status();
                tracing::debug!(task_id = %status.task_id, state = ?status.state, %code, ?elapsed, "POST status");
                match classify(code) {
                    Some(posted) => {
                        if posted == Posted::Refused {
                            tracing::warn!(
                                task_id = %status.task_id,
                                state = ?status.state,
                                %code,
                                "the controller refused a status; dropping it"
                            );
                        }
                        return;
                    }
                    None => {
                        let asked = matches!(
                            code,
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                        )
                        .then(|| retry_after(response.headers()))
                        .flatten();
                        let delay = backoff.next_delay(Instant::now());
                        (asked.unwrap_or(delay), format!("HTTP {code}"))
                    }
                }
            }
            Err(e) => (
                backoff.next_delay(Instant::now()),
                super::retry::describe(&e),
            ),
        };
        let (delay, why) = wait;
        failures += 1;
        // The first failure and then every tenth, so a long outage does not
        // flood the log.
        if failures == 1 || failures.is_multiple_of(10) {
            tracing::warn!(
                task_id = %status.task_id,
                state = ?status.state,
                attempts = failures,
                "cannot post a status ({why}); retrying in {delay:.1?}"
            );
        }
        tokio::time::sleep(delay).await;
    }
}

/// `Some` when the answer settles the post; `None` to try again.
fn classify(code: StatusCode) -> Option<Posted> {
    if code.is_success() {
        return Some(Posted::Taken);
    }
    let again = code.is_server_error()
        || matches!(
            code,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        );
    match code.is_client_error() && !again {
        true => Some(Posted::Refused),
        false => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState;

    #[test]
    fn answers_settle_or_retry_a_post() {
        for (code, expected) in [
            (200, Some(Posted::Taken)),
            (204, Some(Posted::Taken)),
            (400, Some(Posted::Refused)),
            (404, Some(Posted::Refused)),
            (409, Some(Posted::Refused)),
            (408, None),
            (429, None),
            (500, None),
            (503, None),
            (301, None),
        ] {
            let code = StatusCode::from_u16(code).unwrap();
            assert_eq!(classify(code), expected, "{code}");
        }
    }

    #[test]
    fn one_tasks_statuses_leave_one_at_a_time_in_order() {
        let status = |id: &str, state| StatusUpdate::from(TaskStatus::new(id, "w", state));
        let mut outbox = Outbox::default();
        outbox.push(status("a", TaskState::Queued));
        outbox.push(status("a", TaskState::Running));
        outbox.push(status("b", TaskState::Queued));
        let first = outbox.next().unwrap();
        assert_eq!(
            (first.status.task_id.as_str(), first.status.state),
            ("a", TaskState::Queued)
        );
        let second = outbox.next().unwrap();
        assert_eq!(
            (second.status.task_id.as_str(), second.status.state),
            ("b", TaskState::Queued)
        );
        // Nothing else until a post ends: a's running waits behind a's queued.
        assert!(outbox.next().is_none());
        outbox.done("a");
        let third = outbox.next().unwrap();
        assert_eq!(
            (third.status.task_id.as_str(), third.status.state),
            ("a", TaskState::Running)
        );
        // A status arriving for a task with a post under way waits too.
        outbox.push(status("b", TaskState::Running));
        assert!(outbox.next().is_none());
        outbox.done("b");
        assert_eq!(outbox.next().unwrap().status.state, TaskState::Running);
        outbox.done("a");
        outbox.done("b");
        assert!(outbox.is_empty());
    }
}

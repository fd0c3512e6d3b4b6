//! The HTTP polling [`TaskSource`]: requests arrive through the poll loop
//! (`intake`); a submit or cancel made through the worker's own API acts on
//! this worker's table, since there is no group to forward it to (the
//! controller hands each task to one worker).

use serde_json::Map;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::retry::status_url;
use crate::intake::IntakePolicy;
use crate::table::TaskTable;
use crate::transport::{self, BoxFuture, LinkState, Refused, TaskSource};

/// The polled controller as a task source.
pub struct PollSource {
    table: TaskTable,
    policy: IntakePolicy,
    link: watch::Receiver<LinkState>,
    stop: CancellationToken,
}

impl PollSource {
    /// A source admitting into `table` under `policy`; `stop` ends the poll
    /// loop, whose state `link` follows.
    pub fn new(
        table: TaskTable,
        policy: IntakePolicy,
        link: watch::Receiver<LinkState>,
        stop: CancellationToken,
    ) -> Self {
        PollSource {
            table,
            policy,
            link,
            stop,
        }
    }
}

impl TaskSource for PollSource {
    fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    fn readiness_names(&self) -> (&'static str, &'static str) {
        ("controller_reachable", "polling")
    }

    /// Admits the request here, answering once what it became is journaled;
    /// nothing to add to the answer (the task's status is at
    /// `/api/tasks/<id>`). A task id no status URL can name (`.`, `..`) is
    /// refused, as it is when polled.
    fn submit(
        &self,
        payload: Vec<u8>,
        task_id: &str,
    ) -> BoxFuture<'_, Result<Map<String, serde_json::Value>, Refused>> {
        if status_url("", task_id).is_none() {
            return Box::pin(std::future::ready(Err(Refused::Invalid(format!(
                "task_id {task_id:?} names no status URL on the controller; use another id"
            )))));
        }
        let recorded = transport::admit(&self.table, &self.policy, &payload, |_| None);
        Box::pin(async move {
            if let Some(recorded) = recorded {
                recorded.await;
            }
            Ok(Map::new())
        })
    }

    fn cancel(&self, task_id: &str, body: Vec<u8>) -> BoxFuture<'_, Result<(), Refused>> {
        transport::cancel(&self.table, task_id, &body);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Ends the poll loop once the poll in flight, if any, is answered.
    fn stop_intake(&self) {
        self.stop.cancel();
    }
}

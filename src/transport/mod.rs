//! What the core needs from a transport, and nothing about which one.
//!
//! A transport brings task requests in and takes status changes out. Two
//! implement it: MQTT ([`crate::mqtt`]: a shared subscription in, retained
//! statuses out) and HTTP polling ([`crate::poll`]: `GET <base_url>/tasks`
//! in, `POST <base_url>/tasks/<id>/status` out). Table, pool, run, journal,
//! dashboard and metrics see only:
//!
//! - [`TaskSource`]: where requests come from. Its link state feeds
//!   `/readyz` and the dashboard, and the worker's own API hands it submits
//!   and cancels (MQTT forwards them to the group; polling acts on this
//!   worker's table).
//! - [`StatusSink`]: where every status change goes, in order, starting
//!   with what the journal restored.
//!
//! Both transports turn a received request into a task the same way:
//! [`admit`] (intake rules, then the table), and [`cancel_reason`] reads a
//! cancel body. Both retry with `backoff` and connect with the TLS client
//! settings of `tls`.

pub mod backoff;
pub mod tls;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};

use crate::intake::{IntakePolicy, Refusal, parse_request};
use crate::model::{ReplyRoute, StatusUpdate, TaskStatus};
use crate::table::TaskTable;

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of the transport's link to whoever hands out tasks (the broker,
/// or the controller polled over HTTP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Connected: the broker accepted the connection, or the controller's
    /// last answer was not an error.
    pub up: bool,
    /// Counts successful connects; changes on every reconnect.
    pub generation: u64,
    /// Tasks can arrive: the broker granted the tasks subscription, or the
    /// worker is polling.
    pub subscribed: bool,
}

/// Why the worker's own API could not hand on a submit or cancel.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not now (answered 503: the client may try again).
    #[error("{0}")]
    Unavailable(String),
    /// Never, through this transport (answered 400).
    #[error("{0}")]
    Invalid(String),
}

/// Where task requests come from.
pub trait TaskSource: Send + Sync {
    /// The link's state, as it changes.
    fn link(&self) -> watch::Receiver<LinkState>;

    /// The names `/readyz` gives to "connected" and "tasks can arrive".
    fn readiness_names(&self) -> (&'static str, &'static str);

    /// Hands on a request submitted through the worker's own API (already
    /// checked by intake): MQTT publishes it to the group, so any member may
    /// take it; polling admits it here. Returns fields the API adds to its
    /// answer (the status topic over MQTT).
    fn submit(
        &self,
        payload: Vec<u8>,
        task_id: &str,
    ) -> BoxFuture<'_, Result<serde_json::Map<String, serde_json::Value>, Refused>>;

    /// Hands on a cancel made through the worker's own API; `body` is the
    /// cancel request (`{}` or `{"reason": "..."}`).
    fn cancel(&self, task_id: &str, body: Vec<u8>) -> BoxFuture<'_, Result<(), Refused>>;

    /// Stops taking new requests (at shutdown).
    fn stop_intake(&self);
}

/// Where status changes go.
pub trait StatusSink: Send {
    /// Delivers `restored` (the statuses held at start), then every status
    /// of `changes` in order, until the stream ends (see
    /// [`TaskTable::close_subscribers`]) and what it carried was handed on.
    fn deliver(
        self: Box<Self>,
        restored: Vec<TaskStatus>,
        changes: mpsc::UnboundedReceiver<StatusUpdate>,
    ) -> BoxFuture<'static, ()>;
}

/// Turns one received request into a task, a refusal status or a rejection,
/// exactly as for every transport; `reply` is the route a transport offers
/// for it. Returns what an acknowledgement of the request must wait for
/// (its outcome durably recorded), or `None` when nothing was recorded.
pub fn admit(
    table: &TaskTable,
    policy: &IntakePolicy,
    payload: &[u8],
    reply: impl FnOnce(&str) -> Option<ReplyRoute>,
) -> Option<BoxFuture<'static, ()>> {
    let parsed = parse_request(payload, policy);
    let task_id = match &parsed {
        Ok(spec) => Some(spec.task_id.as_str()),
        Err(Refusal::Invalid { task_id, .. }) => Some(task_id.as_str()),
        Err(Refusal::Unaddressable { .. }) => None,
    };
    // The table owns the route: it takes it only with the task it admits.
    let reply = task_id.and_then(reply);
    match parsed {
        Ok(spec) => {
            let id = spec.task_id.clone();
            let admission = table.submit(spec, reply);
            tracing::info!(task_id = %id, ?admission, "task request");
        }
        Err(Refusal::Invalid { task_id, reason }) => {
            tracing::warn!(task_id = %task_id, "task request refused: {reason}");
            table.refuse(&task_id, &reason, reply);
        }
        Err(Refusal::Unaddressable { reason }) => {
            tracing::warn!("task request rejected without a status: {reason}");
            table.reject_unaddressable(&reason);
            return None;
        }
    }
    Some(table.journaled())
}

/// Longest cancel reason kept in a status.
const MAX_REASON_CHARS: usize = 200;

/// The status reason of a cancel request whose body may be empty or
/// `{"reason": "..."}` (control characters dropped, length capped).
pub fn cancel_reason(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|doc| doc.get("reason")?.as_str().map(str::to_owned))
        .map(|reason| {
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_CHARS)
                .collect();
            format!("Cancelled: {reason}")
        })
        .unwrap_or_else(|| "Cancelled by request".to_owned())
}

/// Acts on a cancel request if this worker holds the task.
pub fn cancel(table: &TaskTable, task_id: &str, body: &[u8]) {
    use crate::table::Cancel;
    match table.cancel(task_id, &cancel_reason(body)) {
        Cancel::Unknown | Cancel::AlreadyFinished => {
            tracing::debug!(task_id, "cancel request for a task that is not active here");
        }
        outcome => tracing::info!(task_id, ?outcome, "cancel request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reasons_are_cleaned_and_capped() {
        assert_eq!(cancel_reason(b""), "Cancelled by request");
        assert_eq!(cancel_reason(b"{}"), "Cancelled by request");
        assert_eq!(cancel_reason(br#"{"reason": 5}"#), "Cancelled by request");
        assert_eq!(
            cancel_reason(br#"{"reason": "maint\u0007enance"}"#),
            "Cancelled: maintenance"
        );
        let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(500));
        assert_eq!(
            cancel_reason(long.as_bytes()).len(),
            "Cancelled: ".len() + 200
        );
    }
}

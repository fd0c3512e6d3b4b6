//! The live events of a run (PROTOCOL.md extension, `P/G/tasks/<id>/events`):
//! what a run reports besides its counters, the JSON message each event
//! becomes, and the [`EventSink`] that takes them.
//!
//! An event carries names and outcomes only, never a result's data: a task
//! start (task, play), one host's result (host, task, status) and one line of
//! Ansible's output, the same line the dashboard's log shows. Pure data and
//! serde; no I/O happens here.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What one host's result of one task came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// Ran and changed nothing.
    Ok,
    /// Ran and changed something.
    Changed,
    /// Failed (see `ignored` and `rescued` of [`RunEvent::Result`]).
    Failed,
    /// Skipped (a false `when`, or nothing to do in check mode).
    Skipped,
    /// The host could not be reached.
    Unreachable,
}

/// One event of a running task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    /// A task (or handler) started; once per task, however many hosts run it.
    TaskStart {
        /// The task's name as Ansible shows it (`role : name`).
        task: String,
        /// The play's name, when known.
        play: Option<String>,
        /// True for a handler.
        handler: bool,
    },
    /// One host's result of one task.
    Result {
        /// The task's name.
        task: String,
        /// The host, when known.
        host: Option<String>,
        /// What it came to.
        status: ResultStatus,
        /// A failure (or unreachable host) the play ignores
        /// (`ignore_errors`, `ignore_unreachable`).
        ignored: bool,
        /// A failure a block's `rescue` handles.
        rescued: bool,
    },
    /// One line of Ansible's output, as the dashboard's log shows it.
    Line {
        /// The line, without its newline.
        text: String,
    },
}

/// Where a run's events go besides the task table: the MQTT events topic.
pub trait EventSink: Send + Sync {
    /// Takes event number `seq` of `task_id`'s run. Never blocks: what the
    /// sink cannot take at once is dropped (and counted), so a consumer sees
    /// a gap in `seq`.
    fn send(&self, task_id: &str, seq: u64, event: &RunEvent);
}

/// An [`EventSink`] that takes nothing: for a transport without an events
/// channel (HTTP polling), where the task table's log is the only record.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn send(&self, _task_id: &str, _seq: u64, _event: &RunEvent) {}
}

/// The message of one event: `{"seq","ts","task_id","worker_id","kind",...}`.
#[derive(Serialize)]
struct Message<'a> {
    seq: u64,
    #[serde(serialize_with = "super::rfc3339")]
    ts: DateTime<Utc>,
    task_id: &'a str,
    worker_id: &'a str,
    #[serde(flatten)]
    event: &'a RunEvent,
}

/// The JSON payload of event number `seq` of `task_id`'s run on `worker_id`,
/// stamped `ts`.
pub fn event_payload(
    task_id: &str,
    worker_id: &str,
    seq: u64,
    ts: DateTime<Utc>,
    event: &RunEvent,
) -> Vec<u8> {
    let message = Message {
        seq,
        ts,
        task_id,
        worker_id,
        event,
    };
    serde_json::to_vec(&message).expect("an event always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 21, 10, 30, 5).unwrap() + chrono::Duration::milliseconds(42)
    }

    fn text(event: &RunEvent) -> String {
        String::from_utf8(event_payload("t1", "w1", 7, at(), event)).unwrap()
    }

    #[test]
    fn a_task_start_names_the_task_and_play() {
        let event = RunEvent::TaskStart {
            task: "web : Install".into(),
            play: Some("Deploy".into()),
            handler: false,
        };
        assert_eq!(
            text(&event),
            r#"{"seq":7,"ts":"2026-01-21T10:30:05.042Z","task_id":"t1","worker_id":"w1","kind":"task_start","task":"web : Install","play":"Deploy","handler":false}"#
        );
    }

    #[test]
    fn a_result_names_host_task_and_status_only() {
        let event = RunEvent::Result {
            task: "Change".into(),
            host: Some("h1".into()),
            status: ResultStatus::Changed,
            ignored: false,
            rescued: false,
        };
        assert_eq!(
            text(&event),
            r#"{"seq":7,"ts":"2026-01-21T10:30:05.042Z","task_id":"t1","worker_id":"w1","kind":"result","task":"Change","host":"h1","status":"changed","ignored":false,"rescued":false}"#
        );
        let unknown_host = RunEvent::Result {
            task: "Fail".into(),
            host: None,
            status: ResultStatus::Failed,
            ignored: true,
            rescued: false,
        };
        let doc: serde_json::Value = serde_json::from_str(&text(&unknown_host)).unwrap();
        assert!(doc["host"].is_null());
        assert_eq!(doc["status"], "failed");
        assert_eq!(doc["ignored"], true);
    }

    #[test]
    fn a_line_is_escaped_json_text() {
        let event = RunEvent::Line {
            text: "ok: [h1] => {\"msg\": \"tab\there\"} \u{1b}[0m".into(),
        };
        let doc: serde_json::Value = serde_json::from_str(&text(&event)).unwrap();
        assert_eq!(doc["kind"], "line");
        assert_eq!(doc["seq"], 7);
        assert_eq!(
            doc["text"],
            "ok: [h1] => {\"msg\": \"tab\there\"} \u{1b}[0m"
        );
        let fields: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(fields.len(), 6, "{fields:?}");
    }
}

//! What `submit --follow` shows of a task's events topic: one line per
//! event, as it arrives. An output line is printed as it is (Ansible's own
//! text); a task start as `HH:MM:SS TASK [name]` (`RUNNING HANDLER [name]`
//! for a handler); a result as `HH:MM:SS host: status`, with `(ignored)` or
//! `(rescued)`. Times are the event's own, in local time. Events are read
//! leniently: an unknown kind is skipped, so a newer worker may add kinds.
//!
//! Events are QoS 0 and a worker drops them rather than wait: a gap in a
//! worker's `seq` is reported on stderr, once per gap.

use std::collections::HashMap;

use chrono::{DateTime, Local, Utc};
use serde_json::Value;

/// The numbering of each worker's events seen so far (a group whose
/// workers all run the same task id has one numbering per worker).
#[derive(Debug, Default)]
pub(super) struct EventView {
    last_seq: HashMap<String, u64>,
}

/// One event as the user sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shown {
    /// The line for stdout; `None` for a kind this version does not show.
    pub line: Option<String>,
    /// A note for stderr: events were lost before this one.
    pub gap: Option<String>,
}

impl EventView {
    /// Reads one event payload; `None` if it is not an event.
    pub fn show(&mut self, payload: &[u8]) -> Option<Shown> {
        let doc: Value = serde_json::from_slice(payload).ok()?;
        let seq = doc["seq"].as_u64()?;
        let worker = doc["worker_id"].as_str().unwrap_or_default().to_owned();
        let last = self.last_seq.insert(worker.clone(), seq).unwrap_or(0);
        let gap = (seq > last + 1).then(|| {
            let lost = seq - last - 1;
            let from = if worker.is_empty() {
                String::new()
            } else {
                format!(" from {worker}")
            };
            format!(
                "{lost} event(s){from} were lost (seq {} to {})",
                last + 1,
                seq - 1
            )
        });
        Some(Shown {
            line: event_line(&doc),
            gap,
        })
    }
}

/// The line for one event document, or `None` for an unknown kind.
pub(super) fn event_line(doc: &Value) -> Option<String> {
    let text = |field: &str| doc[field].as_str().unwrap_or_default();
    match text("kind") {
        "line" => Some(text("text").to_owned()),
        "task_start" => {
            let what = match doc["handler"].as_bool() {
                Some(true) => "RUNNING HANDLER",
                _ => "TASK",
            };
            Some(format!("{} {what} [{}]", time(doc), text("task")))
        }
        "result" => {
            let host = doc["host"].as_str().unwrap_or("?");
            let mut line = format!("{} {host}: {}", time(doc), text("status"));
            if doc["ignored"].as_bool() == Some(true) {
                line.push_str(" (ignored)");
            }
            if doc["rescued"].as_bool() == Some(true) {
                line.push_str(" (rescued)");
            }
            Some(line)
        }
        _ => None,
    }
}

/// The event's `ts` as local `HH:MM:SS` (now, if it has none).
fn time(doc: &Value) -> String {
    let at = doc["ts"]
        .as_str()
        .and_then(|ts| DateTime::parse_from_rfc3339(ts).ok())
        .map(|ts| ts.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    at.with_timezone(&Local).format("%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TS: &str = "2026-01-21T10:30:05.042Z";

    fn local_time() -> String {
        let at: DateTime<Utc> = TS.parse().unwrap();
        at.with_timezone(&Local).format("%H:%M:%S").to_string()
    }

    #[test]
    fn each_kind_reads_as_ansible_would_say_it() {
        let t = local_time();
        let line = json!({"seq": 1, "ts": TS, "kind": "line", "text": "PLAY [Deploy] ***"});
        assert_eq!(event_line(&line).unwrap(), "PLAY [Deploy] ***");
        let start = json!({"seq": 2, "ts": TS, "kind": "task_start", "task": "web : Install",
            "play": "Deploy", "handler": false});
        assert_eq!(
            event_line(&start).unwrap(),
            format!("{t} TASK [web : Install]")
        );
        let handler = json!({"seq": 3, "ts": TS, "kind": "task_start", "task": "Restart",
            "handler": true});
        assert_eq!(
            event_line(&handler).unwrap(),
            format!("{t} RUNNING HANDLER [Restart]")
        );
        let result = json!({"seq": 4, "ts": TS, "kind": "result", "task": "Install",
            "host": "h1", "status": "changed", "ignored": false, "rescued": false});
        assert_eq!(event_line(&result).unwrap(), format!("{t} h1: changed"));
        let ignored = json!({"seq": 5, "ts": TS, "kind": "result", "task": "Try",
            "host": null, "status": "failed", "ignored": true, "rescued": false});
        assert_eq!(
            event_line(&ignored).unwrap(),
            format!("{t} ?: failed (ignored)")
        );
        let rescued = json!({"kind": "result", "ts": TS, "host": "h3", "status": "failed",
            "rescued": true});
        assert_eq!(
            event_line(&rescued).unwrap(),
            format!("{t} h3: failed (rescued)")
        );
        assert_eq!(event_line(&json!({"seq": 6, "kind": "play_start"})), None);
    }

    #[test]
    fn a_gap_in_a_workers_numbering_is_reported_once() {
        let mut view = EventView::default();
        let event = |seq: u64, worker: &str| {
            json!({"seq": seq, "ts": TS, "worker_id": worker, "kind": "line", "text": "x"})
                .to_string()
                .into_bytes()
        };
        assert_eq!(view.show(&event(1, "w1")).unwrap().gap, None);
        assert_eq!(view.show(&event(2, "w1")).unwrap().gap, None);
        // Another worker running the same task id numbers its own events.
        assert_eq!(view.show(&event(1, "w2")).unwrap().gap, None);
        let shown = view.show(&event(5, "w1")).unwrap();
        assert_eq!(shown.line.as_deref(), Some("x"));
        assert_eq!(
            shown.gap.as_deref(),
            Some("2 event(s) from w1 were lost (seq 3 to 4)")
        );
        assert_eq!(view.show(&event(6, "w1")).unwrap().gap, None);
        assert_eq!(view.show(b"{\"kind\": \"line\"}"), None);
        assert_eq!(view.show(b"nope"), None);
    }
}

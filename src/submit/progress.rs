//! What `submit --wait` shows: reads status documents leniently (a controller
//! may face an older worker that lacks the extension fields), prints one line
//! per change of state or counters, and the final report (`output` as pretty
//! JSON, `error_message`). With `--json` it prints only the final document,
//! exactly as received. With `--follow` it also prints the task's events as
//! they arrive (`events`), and a status line only when the state changes (the
//! events show the progress; the final line has the counters).

use std::collections::HashMap;
use std::io::Write;

use serde_json::{Map, Value};

use super::events::EventView;
use crate::model::TaskState;

/// The counters a progress line shows, as `(label, status field)`.
const COUNTERS: [(&str, &str); 8] = [
    ("total", "tasks_total"),
    ("ok", "tasks_ok"),
    ("changed", "tasks_changed"),
    ("failed", "tasks_failed"),
    ("skipped", "tasks_skipped"),
    ("unreachable", "tasks_unreachable"),
    ("rescued", "tasks_rescued"),
    ("ignored", "tasks_ignored"),
];

/// The parts of a status document the command shows. Missing or null
/// counters read as 0.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Status {
    /// `task_id`.
    pub task_id: String,
    /// `state`.
    pub state: TaskState,
    /// The [`COUNTERS`], in that order.
    pub counters: [u64; 8],
    /// `error_message`, if set and not empty.
    pub error_message: Option<String>,
    /// `output` (the playbook's `set_stats` data).
    pub output: Map<String, Value>,
}

impl Status {
    /// Reads a status payload; an error names what is missing or malformed.
    pub fn parse(payload: &[u8]) -> Result<Status, String> {
        let doc: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let task_id = doc["task_id"]
            .as_str()
            .ok_or("no task_id string")?
            .to_owned();
        let state = serde_json::from_value(doc["state"].clone())
            .map_err(|_| format!("unknown state {}", doc["state"]))?;
        Ok(Status {
            task_id,
            state,
            counters: COUNTERS.map(|(_, field)| doc[field].as_u64().unwrap_or(0)),
            error_message: doc["error_message"]
                .as_str()
                .filter(|message| !message.is_empty())
                .map(str::to_owned),
            output: doc["output"].as_object().cloned().unwrap_or_default(),
        })
    }
}

/// One progress line: `HH:MM:SS state    total=.. ok=.. ...`.
pub(super) fn progress_line(time: &str, status: &Status) -> String {
    let counters: Vec<String> = COUNTERS
        .iter()
        .zip(status.counters)
        .map(|((label, _), value)| format!("{label}={value}"))
        .collect();
    format!("{time} {:<8} {}", status.state.as_str(), counters.join(" "))
}

/// The text after the last progress line: `output` and `error_message`.
pub(super) fn final_report(status: &Status) -> String {
    let mut report = String::new();
    if !status.output.is_empty() {
        let pretty = serde_json::to_string_pretty(&status.output).expect("JSON serializes");
        report.push_str(&format!("output:\n{pretty}\n"));
    }
    if let Some(message) = &status.error_message {
        report.push_str(&format!("error_message: {message}\n"));
    }
    report
}

/// The final status of the followed task.
#[derive(Debug, Clone)]
pub(super) struct Final {
    /// The document as received.
    pub raw: String,
    /// What it says.
    pub status: Status,
}

/// What a [`Follower`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Show {
    /// A line per change of state or counters, then the final report.
    Changes,
    /// The task's events and a line per change of state, then the final
    /// report.
    Events,
    /// Only the final document.
    Json,
}

/// The topics of the followed task.
pub(super) struct TaskTopics {
    /// `P/G/tasks/<id>/status` (documents may come on `.../status/<worker>`).
    pub status: String,
    /// `P/G/tasks/<id>/events`.
    pub events: String,
}

/// Follows the status documents (and events) of one task and writes what
/// the user sees.
pub(super) struct Follower<W: Write> {
    task_id: String,
    topics: TaskTopics,
    show: Show,
    out: W,
    announced: bool,
    /// Last (state, counters) seen per status topic: with
    /// `suffix_status_with_worker_id` each worker has its own topic.
    last: HashMap<String, (TaskState, [u64; 8])>,
    events: EventView,
}

impl<W: Write> Follower<W> {
    /// Follows `task_id` on `topics`, writing `show` to `out`.
    pub fn new(task_id: &str, topics: TaskTopics, show: Show, out: W) -> Self {
        Follower {
            task_id: task_id.to_owned(),
            topics,
            show,
            out,
            announced: false,
            last: HashMap::new(),
            events: EventView::default(),
        }
    }

    /// The broker took the request: the first line names the task.
    pub fn accepted(&mut self) {
        if !self.announced && self.show != Show::Json {
            self.announced = true;
            let _ = writeln!(self.out, "{}", self.task_id);
        }
    }

    /// Handles one message of the followed task: an event is printed when
    /// following events; a status prints a line if it changed what is shown,
    /// and is returned once it is final. Anything else (a cancel) is
    /// skipped.
    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> Option<Final> {
        if topic == self.topics.events {
            if self.show == Show::Events {
                self.on_event(payload);
            }
            return None;
        }
        let status = &self.topics.status;
        let is_status = topic
            .strip_prefix(status.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !is_status {
            return None;
        }
        self.on_status(topic, payload)
    }

    fn on_event(&mut self, payload: &[u8]) {
        let Some(shown) = self.events.show(payload) else {
            return;
        };
        if let Some(gap) = shown.gap {
            eprintln!("ansible-worker: {gap}");
        }
        if let Some(line) = shown.line {
            self.accepted();
            let _ = writeln!(self.out, "{line}");
        }
    }

    fn on_status(&mut self, topic: &str, payload: &[u8]) -> Option<Final> {
        let status = match Status::parse(payload) {
            Ok(status) if status.task_id == self.task_id => status,
            Ok(_) => return None,
            Err(problem) => {
                eprintln!("ansible-worker: ignoring an unreadable status on {topic}: {problem}");
                return None;
            }
        };
        let seen = (status.state, status.counters);
        let before = self.last.insert(topic.to_owned(), seen);
        let changed = match self.show {
            Show::Json => false,
            Show::Changes => before != Some(seen),
            Show::Events => before.map(|(state, _)| state) != Some(status.state),
        };
        if changed {
            self.accepted();
            let time = chrono::Local::now().format("%H:%M:%S").to_string();
            let _ = writeln!(self.out, "{}", progress_line(&time, &status));
        }
        status.state.is_final().then(|| Final {
            raw: String::from_utf8_lossy(payload).into_owned(),
            status,
        })
    }

    /// Writes the end of the output for `last`: the report, or with `--json`
    /// the document itself.
    pub fn finish(&mut self, last: &Final) {
        let text = if self.show == Show::Json {
            format!("{}\n", last.raw.trim_end())
        } else {
            final_report(&last.status)
        };
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STATUS: &str = "ansible/lab/tasks/t1/status";
    const EVENTS: &str = "ansible/lab/tasks/t1/events";

    fn following(show: Show) -> Follower<Vec<u8>> {
        let topics = TaskTopics {
            status: STATUS.to_owned(),
            events: EVENTS.to_owned(),
        };
        Follower::new("t1", topics, show, Vec::new())
    }

    fn doc(state: &str, ok: u64) -> Vec<u8> {
        json!({
            "task_id": "t1", "state": state, "tasks_total": 3, "tasks_ok": ok,
            "tasks_changed": 1, "tasks_failed": 0, "tasks_skipped": 0,
            "tasks_unreachable": 0, "tasks_rescued": 0, "tasks_ignored": 0,
            "error_message": null, "output": {}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_progress_line_shows_time_state_and_every_counter() {
        let status = Status::parse(&doc("running", 2)).unwrap();
        assert_eq!(
            progress_line("01:02:03", &status),
            "01:02:03 running  total=3 ok=2 changed=1 failed=0 skipped=0 unreachable=0 \
             rescued=0 ignored=0"
        );
        let cancelled = Status {
            state: TaskState::Cancelled,
            ..status
        };
        assert!(progress_line("01:02:03", &cancelled).starts_with("01:02:03 cancelled total=3"));
    }

    #[test]
    fn documents_of_an_older_worker_read_with_missing_counters_as_zero() {
        let status = Status::parse(br#"{"task_id": "t1", "state": "queued"}"#).unwrap();
        assert_eq!(status.counters, [0; 8]);
        assert_eq!(status.error_message, None);
        assert!(status.output.is_empty());
        assert!(Status::parse(br#"{"task_id": "t1", "state": "paused"}"#).is_err());
        assert!(Status::parse(br#"{"state": "queued"}"#).is_err());
        assert!(Status::parse(b"nope").is_err());
    }

    #[test]
    fn final_report_shows_output_pretty_and_the_error() {
        let mut status = Status::parse(&doc("failed", 1)).unwrap();
        assert_eq!(final_report(&status), "");
        status.output = json!({"deployed": "v1"}).as_object().unwrap().clone();
        status.error_message = Some("Break on purpose: intentional failure".to_owned());
        assert_eq!(
            final_report(&status),
            "output:\n{\n  \"deployed\": \"v1\"\n}\n\
             error_message: Break on purpose: intentional failure\n"
        );
    }

    #[test]
    fn prints_one_line_per_change_and_stops_at_the_final_state() {
        let mut follower = following(Show::Changes);
        let topic = STATUS;
        assert!(follower.on_message(topic, &doc("queued", 0)).is_none());
        follower.accepted();
        assert!(follower.on_message(topic, &doc("running", 1)).is_none());
        assert!(follower.on_message(topic, &doc("running", 1)).is_none());
        let other = br#"{"task_id": "t2", "state": "success"}"#;
        assert!(follower.on_message(topic, other).is_none());
        let last = follower.on_message(topic, &doc("success", 2)).unwrap();
        assert_eq!(last.status.state, TaskState::Success);
        follower.finish(&last);
        let text = String::from_utf8(follower.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t1", "{text}");
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].ends_with(
            "queued   total=3 ok=0 changed=1 failed=0 skipped=0 unreachable=0 rescued=0 ignored=0"
        ));
        assert!(lines[2].contains(" running  total=3 ok=1 "), "{text}");
        assert!(lines[3].contains(" success  total=3 ok=2 "), "{text}");
    }

    #[test]
    fn json_mode_prints_only_the_final_document_as_received() {
        let mut follower = following(Show::Json);
        follower.accepted();
        assert!(follower.on_message(STATUS, &doc("running", 1)).is_none());
        let raw = doc("cancelled", 1);
        let last = follower.on_message(STATUS, &raw).unwrap();
        follower.finish(&last);
        let text = String::from_utf8(follower.out).unwrap();
        assert_eq!(text, format!("{}\n", String::from_utf8(raw).unwrap()));
    }

    #[test]
    fn following_events_prints_them_and_only_state_changes() {
        let event = |seq: u64, text: &str| {
            json!({"seq": seq, "ts": "2026-01-21T10:30:05.042Z", "kind": "line", "text": text})
                .to_string()
                .into_bytes()
        };
        let mut follower = following(Show::Events);
        follower.accepted();
        assert!(follower.on_message(STATUS, &doc("running", 0)).is_none());
        assert!(follower.on_message(EVENTS, &event(1, "PLAY [x]")).is_none());
        assert!(follower.on_message(STATUS, &doc("running", 1)).is_none());
        assert!(follower.on_message(EVENTS, &event(2, "ok: [h1]")).is_none());
        // A cancel on the same filter is no status.
        let cancel = "ansible/lab/tasks/t1/cancel";
        assert!(follower.on_message(cancel, b"{}").is_none());
        // Another worker's suffixed status topic is one (its first status
        // is a change).
        let suffixed = format!("{STATUS}/w2");
        assert!(follower.on_message(&suffixed, &doc("running", 1)).is_none());
        let last = follower.on_message(STATUS, &doc("success", 2)).unwrap();
        follower.finish(&last);
        let text = String::from_utf8(follower.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[0], "t1");
        assert!(lines[1].contains(" running  total=3 ok=0 "), "{text}");
        assert_eq!(lines[2..4], ["PLAY [x]", "ok: [h1]"]);
        assert!(lines[4].contains(" running  total=3 ok=1 "), "{text}");
        assert!(lines[5].contains(" success  total=3 ok=2 "), "{text}");

        // Without --follow, events on the topic are not shown.
        let mut follower = following(Show::Changes);
        follower.accepted();
        assert!(follower.on_message(EVENTS, &event(1, "PLAY [x]")).is_none());
        assert_eq!(String::from_utf8(follower.out).unwrap(), "t1\n");
    }
}

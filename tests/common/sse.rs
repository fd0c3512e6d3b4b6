//! The live event stream (`/api/events`) as a test sees it: Server-Sent Events
//! parsed off the wire by a background thread, with waits that have a
//! deadline. Opening the stream is `Http::events` in `http.rs`.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `event:` name, empty for an unnamed event.
    pub event: String,
    /// The `data:` lines joined, parsed as JSON.
    pub data: Value,
}

/// Parses `text/event-stream` frames (comments and keep-alives skipped) and
/// sends each event until the connection ends or the receiver is gone.
fn read_sse(reader: impl BufRead, tx: mpsc::Sender<SseEvent>) {
    let mut event = String::new();
    let mut data: Vec<String> = Vec::new();
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.is_empty() {
            if !data.is_empty() {
                let parsed = SseEvent {
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&data.join("\n"))
                        .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}")),
                };
                data.clear();
                if tx.send(parsed).is_err() {
                    return;
                }
            }
            event.clear();
        } else if let Some(name) = line.strip_prefix("event:") {
            event = name.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
    }
}

/// An open `/api/events` stream, read by a background thread.
pub struct EventStream {
    rx: mpsc::Receiver<SseEvent>,
    /// The response's `Content-Type`.
    pub content_type: String,
    /// The response's `Content-Encoding`, if any.
    pub content_encoding: Option<String>,
}

impl EventStream {
    /// Reads the body of an accepted `/api/events` response on a background
    /// thread; the headers are kept for the test to check.
    pub fn read(response: ureq::http::Response<ureq::Body>) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let content_encoding = header("content-encoding");
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || read_sse(reader, tx));
        EventStream {
            rx,
            content_type,
            content_encoding,
        }
    }

    /// The next event, or None if none arrives before `deadline`.
    pub fn next_before(&self, deadline: Instant) -> Option<SseEvent> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(left).ok()
    }

    /// Events until (and including) the first one that `last` accepts;
    /// panics at the deadline with what arrived so far.
    pub fn until(
        &self,
        timeout: Duration,
        mut last: impl FnMut(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let Some(event) = self.next_before(deadline) else {
                panic!("the awaited event never came; saw {seen:#?}");
            };
            let done = last(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

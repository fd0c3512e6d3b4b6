//! `GET /api/events`: Server-Sent Events of the task table.
//!
//! A new client first gets a `snapshot` event (every task, newest first),
//! then one `status` event per change, one `log` event per output line of
//! a running task and a `trimmed` event (`{"task_ids": [...]}`) naming the
//! finished tasks a change dropped from the history, taken atomically so
//! nothing is missed or repeated. A
//! client that falls behind the broadcast buffer is dropped (its EventSource
//! reconnects and starts from a new snapshot): it never slows the worker.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use super::AppState;
use crate::table::view::LiveEvent;

/// Interval of keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `/api/events` route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/events", get(events))
}

async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (snapshot, live) = state.table.snapshot_and_live();
    let first = Event::default()
        .event("snapshot")
        .json_data(&snapshot)
        .unwrap_or_default();
    let changes = BroadcastStream::new(live)
        // A lagged receiver has lost events: end the stream instead of
        // showing a silently wrong picture.
        .take_while(|change| std::future::ready(change.is_ok()))
        .filter_map(|change| std::future::ready(change.ok()))
        .map(|change| {
            let event = match &change {
                LiveEvent::Status(view) => Event::default().event("status").json_data(view),
                LiveEvent::Log { task_id, line } => Event::default()
                    .event("log")
                    .json_data(serde_json::json!({ "task_id": task_id, "line": line })),
                LiveEvent::Trimmed { task_ids } => Event::default()
                    .event("trimmed")
                    .json_data(serde_json::json!({ "task_ids": task_ids })),
            };
            event.unwrap_or_default()
        });
    let stream = stream::once(std::future::ready(first))
        .chain(changes)
        .map(Ok)
        .take_until(state.shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

//! The status publisher: the task table's change stream → retained QoS 1
//! status documents.
//!
//! Every change is published in order while the client is connected. While it
//! is not, only the newest status per task is kept. After each (re)connect the
//! newest status is published again for every task that is active, changed
//! while disconnected, or was sent within the in-flight window before the
//! connection dropped (rumqttc loses the publish in flight at a disconnect,
//! MQTT-NOTES.md; a dead connection can take 1.5 keep-alive intervals to be
//! noticed, so the window is three). At start, the statuses the journal
//! restored are published the same way (the embedded broker forgets retained
//! messages when the process ends). A status is a full retained snapshot, so
//! a repeat is harmless. Nothing else publishes status.
//!
//! With `worker.status_expiry`, a final status carries MQTT 5 Message Expiry
//! counted from its completion, so brokers drop old task topics; a final
//! status whose expiry has passed is not published again.
//!
//! MQTT 5 request/response (PROTOCOL.md extension): a status whose
//! [`Delivery`] names a reply route is also published there (QoS 1, not
//! retained) with the request's Correlation Data. The task table owns the
//! routes and puts them on the statuses it streams; the publisher keeps none
//! of its own. A repeat for a duplicate request goes to the duplicate's route
//! once and never replaces what is kept of the task.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::topics::Topics;
use super::window::PublishWindow;
use crate::model::{Delivery, StatusUpdate, TaskStatus};
use crate::transport::LinkState;
use crate::transport::{BoxFuture, StatusSink};

/// How often statuses that surely reached the broker are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What the publisher needs besides its streams.
#[derive(Clone)]
pub struct PublisherSettings {
    /// Topic names.
    pub topics: Topics,
    /// Message expiry of final statuses (`worker.status_expiry`).
    pub status_expiry: Option<Duration>,
    /// How long after sending a status may still be lost with the connection.
    pub in_flight_window: Duration,
    /// Room for publishes the broker has not acknowledged.
    pub window: PublishWindow,
}

/// The newest status of one task and when it was last handed to the client
/// (`None`: still to be published).
struct Latest {
    status: TaskStatus,
    sent: Option<Instant>,
}

/// The status publisher, as the MQTT transport's [`StatusSink`].
pub struct StatusPublisher {
    client: AsyncClient,
    settings: PublisherSettings,
    link: watch::Receiver<LinkState>,
}

impl StatusPublisher {
    /// A publisher using `client`, catching up whenever `link` reconnects.
    pub fn new(
        client: AsyncClient,
        settings: PublisherSettings,
        link: watch::Receiver<LinkState>,
    ) -> Self {
        StatusPublisher {
            client,
            settings,
            link,
        }
    }
}

impl StatusSink for StatusPublisher {
    fn deliver(
        self: Box<Self>,
        restored: Vec<TaskStatus>,
        changes: mpsc::UnboundedReceiver<StatusUpdate>,
    ) -> BoxFuture<'static, ()> {
        let StatusPublisher {
            client,
            settings,
            link,
        } = *self;
        Box::pin(publish_statuses(client, settings, restored, changes, link))
    }
}

/// Publishes `restored` (the statuses held at start) once connected, then
/// every change, until the change stream ends (see
/// [`crate::table::TaskTable::close_subscribers`]).
async fn publish_statuses(
    client: AsyncClient,
    settings: PublisherSettings,
    restored: Vec<TaskStatus>,
    mut changes: mpsc::UnboundedReceiver<StatusUpdate>,
    mut link: watch::Receiver<LinkState>,
) {
    // Boxed: after a burst the map is mostly spare capacity.
    let mut latest: HashMap<String, Box<Latest>> = restored
        .into_iter()
        .map(|status| {
            (
                status.task_id.clone(),
                Box::new(Latest { status, sent: None }),
            )
        })
        .collect();
    // The connection already caught up with `latest`; 0 = none yet.
    let mut caught_up = 0;
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(StatusUpdate { status, json }) = change else { return };
                let state = *link.borrow();
                let mut sent = None;
                if state.up && state.generation == caught_up {
                    publish(&client, &settings, &status, json).await;
                    sent = Some(Instant::now());
                }
                remember(&mut latest, status, sent);
            }
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = *link.borrow_and_update();
                if !state.up {
                    // What was sent recently may have died with the connection.
                    for entry in latest.values_mut() {
                        if entry.sent.is_some_and(|at| at.elapsed() < settings.in_flight_window) {
                            entry.sent = None;
                        }
                    }
                } else if state.generation > caught_up {
                    caught_up = state.generation;
                    forget_delivered(&mut latest, settings.in_flight_window);
                    for entry in latest.values_mut() {
                        if entry.sent.is_none() || !entry.status.state.is_final() {
                            let json = entry.status.to_json().into();
                            publish(&client, &settings, &entry.status, json).await;
                            entry.sent = Some(Instant::now());
                        }
                    }
                }
            }
            _ = prune.tick() => forget_delivered(&mut latest, settings.in_flight_window),
        }
    }
}

/// Keeps `status` as its task's newest. A repeat for a duplicate request
/// changed nothing: what is kept of the task (with the task's own reply
/// route) stays; if nothing is, it is kept without the duplicate's route, so
/// a catch-up after a reconnect does not send it there again.
fn remember(
    latest: &mut HashMap<String, Box<Latest>>,
    mut status: TaskStatus,
    sent: Option<Instant>,
) {
    if status.delivery.repeat {
        if latest.contains_key(&status.task_id) {
            return;
        }
        status.delivery = Delivery::default();
    }
    latest.insert(status.task_id.clone(), Box::new(Latest { status, sent }));
}

/// Drops final statuses sent longer than `window` ago on a connection that
/// did not drop meanwhile: they reached the broker.
fn forget_delivered(latest: &mut HashMap<String, Box<Latest>>, window: Duration) {
    latest.retain(|_, entry| {
        !entry.status.state.is_final() || entry.sent.is_none_or(|at| at.elapsed() < window)
    });
    // Give back what a burst grew, once most of it is forgotten.
    if latest.capacity() > 4 * latest.len().max(64) {
        latest.shrink_to_fit();
    }
}

/// Seconds left before a final status should expire; `None` when it does not
/// expire, `Some(0)` when it already has.
pub(crate) fn expiry_left(status: &TaskStatus, expiry: Option<Duration>) -> Option<u32> {
    let expiry = expiry?;
    let completed = status.completed_at.filter(|_| status.state.is_final())?;
    let age = (chrono::Utc::now() - completed)
        .to_std()
        .unwrap_or_default();
    // Rounded up: brokers count expiry in whole seconds from their own clock
    // tick, so a truncated 1.7 s could expire a status a moment after it is
    // retained.
    let left = expiry.saturating_sub(age).as_millis().div_ceil(1000);
    Some(u32::try_from(left).unwrap_or(u32::MAX))
}

/// Publishes `status`, whose JSON is `payload`, to its topic (and its reply
/// route, if it has one).
async fn publish(
    client: &AsyncClient,
    settings: &PublisherSettings,
    status: &TaskStatus,
    payload: Bytes,
) {
    let expiry = expiry_left(status, settings.status_expiry);
    if expiry == Some(0) {
        return;
    }
    let topic = settings.topics.status(&status.task_id);
    settings.window.enter().await;
    let properties = PublishProperties {
        message_expiry_interval: expiry,
        ..PublishProperties::default()
    };
    if let Err(e) = client
        .publish_with_properties(topic, QoS::AtLeastOnce, true, payload.clone(), properties)
        .await
    {
        tracing::warn!(task_id = %status.task_id, "cannot queue status publish: {e}");
    }
    if let Some(route) = &status.delivery.reply {
        settings.window.enter().await;
        let properties = PublishProperties {
            correlation_data: route.correlation.clone(),
            message_expiry_interval: expiry,
            ..PublishProperties::default()
        };
        let topic = route.topic.clone();
        if let Err(e) = client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
        {
            tracing::warn!(task_id = %status.task_id, "cannot queue a status reply: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_statuses_expire_counted_from_completion() {
        use crate::model::TaskState;
        let expiry = Some(Duration::from_secs(60));
        let running = TaskStatus::new("t", "w", TaskState::Running);
        assert_eq!(expiry_left(&running, expiry), None);
        let mut done = TaskStatus::new("t", "w", TaskState::Success);
        assert_eq!(expiry_left(&done, None), None);
        assert_eq!(expiry_left(&done, expiry), Some(60));
        done.completed_at = Some(chrono::Utc::now() - chrono::Duration::milliseconds(300));
        assert_eq!(
            expiry_left(&done, expiry),
            Some(60),
            "rounded up, never early"
        );
        done.completed_at = Some(chrono::Utc::now() - chrono::Duration::seconds(45));
        assert_eq!(expiry_left(&done, expiry), Some(15));
        done.completed_at = Some(chrono::Utc::now() - chrono::Duration::seconds(61));
        assert_eq!(expiry_left(&done, expiry), Some(0));
    }

    #[test]
    fn a_repeat_for_a_duplicate_never_replaces_the_tasks_route() {
        use crate::model::{ReplyRoute, TaskState};
        use std::sync::Arc;
        let route = |topic: &str| {
            Some(Arc::new(ReplyRoute {
                topic: topic.into(),
                correlation: None,
            }))
        };
        let status = |reply, repeat| TaskStatus {
            delivery: Delivery { reply, repeat },
            ..TaskStatus::new("t", "w", TaskState::Running)
        };
        let mut latest = HashMap::new();
        remember(&mut latest, status(route("first"), false), None);
        remember(&mut latest, status(route("second"), true), None);
        assert_eq!(latest["t"].status.delivery.reply, route("first"));
        // Nothing kept (a final delivered long ago): the repeat is kept for
        // the status topic only.
        latest.clear();
        remember(&mut latest, status(route("second"), true), None);
        assert_eq!(latest["t"].status.delivery, Delivery::default());
        // A change replaces a repeat.
        remember(&mut latest, status(route("first"), false), None);
        assert_eq!(latest["t"].status.delivery.reply, route("first"));
    }

    #[test]
    fn delivered_finals_are_forgotten_and_a_burst_gives_its_room_back() {
        use crate::model::TaskState;
        let window = Duration::from_secs(30);
        let long_ago = Instant::now().checked_sub(2 * window);
        let entry = |id: &str, state, sent| {
            let status = TaskStatus::new(id, "w", state);
            (id.to_owned(), Box::new(Latest { status, sent }))
        };
        let mut latest: HashMap<String, Box<Latest>> = (0..10_000)
            .map(|n| entry(&format!("done-{n}"), TaskState::Success, long_ago))
            .collect();
        latest.extend([
            entry("running", TaskState::Running, long_ago),
            entry("unsent", TaskState::Failed, None),
            entry("recent", TaskState::Success, Some(Instant::now())),
        ]);
        forget_delivered(&mut latest, window);
        let mut kept: Vec<&str> = latest.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["recent", "running", "unsent"]);
        assert!(latest.capacity() < 1000, "{}", latest.capacity());
    }
}

//! The status publisher: the task table's change stream → retained QoS 1
//! status documents.
//!
//! Every change is published in order while the client is connected. While it
//! is not, only the newest status per task is kept; after each (re)connect the
//! newest status of every task that is active or changed recently is published
//! again, which also covers a publish that was in flight when the connection
//! dropped (MQTT-NOTES.md). A status is a full retained snapshot, so a repeat is
//! harmless. Nothing else publishes status.
//!
//! MQTT 5 request/response (PROTOCOL.md extension): when a request carried a
//! Response Topic, every status of that task is also published there (QoS 1,
//! not retained) with the request's Correlation Data; [`ReplyRoutes`] holds
//! those routes until the task's final status went out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PublishProperties;

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client::LinkState;
use super::topics::Topics;
use crate::model::TaskStatus;
use bytes::Bytes;

/// Finished tasks older than this are not re-published after a reconnect.
const REPUBLISH_WINDOW: Duration = Duration::from_secs(600);

/// Longest response topic honoured.
const MAX_RESPONSE_TOPIC: usize = 1024;

/// Where a requester asked for a task's statuses to be sent as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRoute {
    /// The request's Response Topic.
    pub topic: String,
    /// The request's Correlation Data, copied back.
    pub correlation: Option<Bytes>,
}

impl ReplyRoute {
    /// The route a request asked for, if its Response Topic is usable (a
    /// topic name, not a filter).
    pub fn requested(topic: Option<&str>, correlation: Option<&Bytes>) -> Option<Self> {
        let topic = topic?;
        let usable = !topic.is_empty()
            && topic.len() <= MAX_RESPONSE_TOPIC
            && !topic.contains(['+', '#', '\0']);
        if !usable {
            tracing::warn!("ignoring an unusable response topic");
            return None;
        }
        Some(ReplyRoute {
            topic: topic.to_owned(),
            correlation: correlation.cloned(),
        })
    }
}

/// Reply routes by task id, shared by the inbound side (which registers a
/// route before the table sees the task) and the publisher.
#[derive(Debug, Clone, Default)]
pub struct ReplyRoutes(Arc<Mutex<HashMap<String, ReplyRoute>>>);

impl ReplyRoutes {
    /// Sends `task_id`'s statuses to `route` too, from now on.
    pub fn register(&self, task_id: &str, route: ReplyRoute) {
        self.lock().insert(task_id.to_owned(), route);
    }

    fn route(&self, status: &TaskStatus) -> Option<ReplyRoute> {
        let mut routes = self.lock();
        if status.state.is_final() {
            routes.remove(&status.task_id)
        } else {
            routes.get(&status.task_id).cloned()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplyRoute>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes statuses until the change stream ends (see
/// [`crate::table::TaskTable::close_subscribers`]).
pub async fn publish_statuses(
    client: AsyncClient,
    topics: Topics,
    replies: ReplyRoutes,
    mut changes: mpsc::UnboundedReceiver<TaskStatus>,
    mut link: watch::Receiver<LinkState>,
) {
    let mut latest: HashMap<String, (TaskStatus, Instant)> = HashMap::new();
    // The connection already caught up with `latest`; 0 = none yet.
    let mut caught_up = 0;
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(status) = change else { return };
                let state = *link.borrow();
                if state.up && state.generation == caught_up {
                    publish(&client, &topics, &replies, &status).await;
                }
                latest.insert(status.task_id.clone(), (status, Instant::now()));
            }
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = *link.borrow_and_update();
                if state.up && state.generation > caught_up {
                    caught_up = state.generation;
                    latest.retain(|_, (status, at)| {
                        !status.state.is_final() || at.elapsed() < REPUBLISH_WINDOW
                    });
                    for (status, _) in latest.values() {
                        publish(&client, &topics, &replies, status).await;
                    }
                }
            }
        }
    }
}

async fn publish(
    client: &AsyncClient,
    topics: &Topics,
    replies: &ReplyRoutes,
    status: &TaskStatus,
) {
    let topic = topics.status(&status.task_id);
    let payload = status.to_json();
    if let Err(e) = client
        .publish(topic, QoS::AtLeastOnce, true, payload.clone())
        .await
    {
        tracing::warn!(task_id = %status.task_id, "cannot queue status publish: {e}");
    }
    if let Some(route) = replies.route(status) {
        let properties = PublishProperties {
            correlation_data: route.correlation,
            ..PublishProperties::default()
        };
        if let Err(e) = client
            .publish_with_properties(route.topic, QoS::AtLeastOnce, false, payload, properties)
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
    fn only_topic_names_become_reply_routes() {
        let data = Bytes::from_static(b"abc");
        let route = ReplyRoute::requested(Some("replies/me"), Some(&data)).unwrap();
        assert_eq!(route.correlation, Some(data));
        for bad in ["", "replies/+", "replies/#"] {
            assert!(ReplyRoute::requested(Some(bad), None).is_none(), "{bad}");
        }
        assert!(ReplyRoute::requested(None, None).is_none());
    }

    #[test]
    fn a_route_ends_with_the_final_status() {
        let routes = ReplyRoutes::default();
        let route = ReplyRoute::requested(Some("r"), None).unwrap();
        routes.register("t", route.clone());
        let mut status = TaskStatus::new("t", "w", crate::model::TaskState::Running);
        assert_eq!(routes.route(&status), Some(route.clone()));
        status.state = crate::model::TaskState::Success;
        assert_eq!(routes.route(&status), Some(route));
        assert_eq!(routes.route(&status), None);
    }
}

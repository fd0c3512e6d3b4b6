//! The status publisher: the task table's change stream → retained QoS 1
//! status documents.
//!
//! Every change is published in order while the client is connected. While it
//! is not, only the newest status per task is kept; after each (re)connect the
//! newest status of every task that is active or changed recently is published
//! again, which also covers a publish that was in flight when the connection
//! dropped (MQTT-NOTES.md). A status is a full retained snapshot, so a repeat is
//! harmless. Nothing else publishes status.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client::LinkState;
use super::topics::Topics;
use crate::model::TaskStatus;

/// Finished tasks older than this are not re-published after a reconnect.
const REPUBLISH_WINDOW: Duration = Duration::from_secs(600);

/// Publishes statuses until the change stream ends (see
/// [`crate::table::TaskTable::close_subscribers`]).
pub async fn publish_statuses(
    client: AsyncClient,
    topics: Topics,
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
                    publish(&client, &topics, &status).await;
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
                        publish(&client, &topics, status).await;
                    }
                }
            }
        }
    }
}

async fn publish(client: &AsyncClient, topics: &Topics, status: &TaskStatus) {
    let topic = topics.status(&status.task_id);
    if let Err(e) = client
        .publish(topic, QoS::AtLeastOnce, true, status.to_json())
        .await
    {
        tracing::warn!(task_id = %status.task_id, "cannot queue status publish: {e}");
    }
}

//! The worker's MQTT side: one client connection (`client`), the status
//! publisher fed by the task table's change stream (`publisher`), the
//! presence document and will (`presence`), and the topic names of
//! PROTOCOL.md (`topics`). [`MqttSide`] wires them together for `run`.

pub mod client;
pub mod presence;
pub mod publisher;
pub mod topics;

use std::time::Duration;

use rumqttc::v5::AsyncClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::intake::IntakePolicy;
use crate::table::TaskTable;
use client::{ClientError, Inbound, LinkState};
use presence::Presence;
use publisher::{PublisherSettings, ReplyRoutes};
use topics::Topics;

/// The running MQTT tasks of one worker: connection, status publisher and
/// presence.
pub struct MqttSide {
    client: AsyncClient,
    topics: Topics,
    link_state: watch::Receiver<LinkState>,
    link: JoinHandle<()>,
    abort_link: CancellationToken,
    publisher: JoinHandle<()>,
    acknowledger: JoinHandle<()>,
    presence: JoinHandle<()>,
    stop_presence: CancellationToken,
}

impl MqttSide {
    /// Connects (in the background, retrying) and starts publishing the
    /// statuses `table` holds and then its changes; accepted requests go into
    /// `table`.
    pub fn start(config: &Config, table: &TaskTable) -> Result<Self, ClientError> {
        let worker = &config.worker;
        let topics = Topics::new(
            &worker.topic_prefix,
            &worker.group_name,
            &worker.worker_id,
            worker.shared_subscription,
            worker.suffix_status_with_worker_id,
        );
        let presence = Presence {
            topic: topics.presence(),
            worker_id: worker.worker_id.clone(),
            concurrency: worker.concurrency,
            started_at: chrono::Utc::now(),
        };
        let mut options = client::mqtt_options(config)?;
        options.set_last_will(presence.last_will());
        let (client, eventloop) = client::client(options);
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        let replies = ReplyRoutes::default();
        let changes = table.subscribe();
        let publisher = tokio::spawn(publisher::publish_statuses(
            client.clone(),
            PublisherSettings {
                topics: topics.clone(),
                replies: replies.clone(),
                status_expiry: worker.status_expiry,
                in_flight_window: config.mqtt.keepalive * 3,
            },
            table.statuses(),
            changes,
            link_rx.clone(),
        ));
        let (acks, pending_acks) = tokio::sync::mpsc::unbounded_channel();
        let acknowledger = tokio::spawn(client::acknowledge(
            client.clone(),
            pending_acks,
            link_rx.clone(),
        ));
        let stop_presence = CancellationToken::new();
        let presence = tokio::spawn(presence::publish_presence(
            client.clone(),
            presence,
            table.clone(),
            link_rx.clone(),
            stop_presence.clone(),
        ));
        let inbound = Inbound {
            table: table.clone(),
            policy: IntakePolicy {
                playbook_directory: worker.playbook_directory.clone(),
                allow_ansible_vars: worker.allow_ansible_vars,
            },
            topics: topics.clone(),
            replies,
            acks,
        };
        let abort_link = CancellationToken::new();
        let link = tokio::spawn(client::drive(
            eventloop,
            client.clone(),
            inbound,
            link_tx,
            abort_link.clone(),
        ));
        Ok(MqttSide {
            client,
            topics,
            link_state: link_rx,
            link,
            abort_link,
            publisher,
            acknowledger,
            presence,
            stop_presence,
        })
    }

    /// The topic names in use.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// A handle for publishing (the HTTP API forwards requests with it).
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// The connection state, as it changes.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.link_state.clone()
    }

    /// Stops taking task requests: the broker hands new ones to other
    /// members of the group.
    pub fn stop_intake(&self) {
        let _ = self.client.try_unsubscribe(self.topics.tasks_filter());
    }

    /// Publishes what is left of the table's change stream (the caller has
    /// closed it), marks the worker offline and disconnects, each step within
    /// `margin`.
    pub async fn finish(self, margin: Duration) {
        if tokio::time::timeout(margin, self.publisher).await.is_err() {
            tracing::error!("final statuses could not all be handed to the client");
        }
        self.stop_presence.cancel();
        let _ = tokio::time::timeout(margin, self.presence).await;
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(margin, self.link).await.is_err() {
            tracing::warn!("the broker did not take the final statuses in time");
            self.abort_link.cancel();
        }
        // Ends with the event loop; what it did not ack, the broker redelivers
        // (and the journal recognises).
        self.acknowledger.abort();
    }
}

//! The worker's MQTT side: one client connection (`client`) and its options
//! (`options`, with the TLS settings in `tls`), the status
//! publisher fed by the task table's change stream (`publisher`), the run
//! events publisher (`events`), the
//! presence document and will (`presence`), what the broker granted and
//! when to reconnect (`link`), and the topic names of PROTOCOL.md
//! (`topics`). [`MqttSide`] wires them together for `run`.

pub mod client;
pub mod events;
pub mod link;
pub mod options;
pub mod presence;
pub mod publisher;
pub mod tls;
pub mod topics;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::AsyncClient;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::intake::IntakePolicy;
use crate::model::EventSink;
use crate::table::TaskTable;
use client::{Inbound, LinkState};
use events::{EventPublisher, EventWindow};
use options::ClientError;
use presence::Presence;
use publisher::PublisherSettings;
use topics::Topics;
use window::PublishWindow;

/// The running MQTT tasks of one worker: connection, status publisher,
/// events publisher and presence.
pub struct MqttSide {
    client: AsyncClient,
    topics: Topics,
    events: Arc<EventPublisher>,
    link_state: watch::Receiver<LinkState>,
    /// Resolves when the connection's thread ended.
    link: oneshot::Receiver<()>,
    abort_link: CancellationToken,
    publisher: JoinHandle<()>,
    presence: JoinHandle<()>,
    stop_presence: CancellationToken,
}

impl MqttSide {
    /// Connects (in the background, retrying) and starts publishing the
    /// statuses `table` holds and then its changes; requests `policy` accepts
    /// go into `table`.
    pub fn start(
        config: &Config,
        table: &TaskTable,
        policy: IntakePolicy,
    ) -> Result<Self, ClientError> {
        let worker = &config.worker;
        let topics = Topics::of(worker);
        let presence = Presence {
            topic: topics.presence(),
            worker_id: worker.worker_id.clone(),
            concurrency: worker.concurrency,
            started_at: chrono::Utc::now(),
        };
        let mut options = options::worker_options(config)?;
        options.set_last_will(presence.last_will());
        let (client, eventloop) = options::client(options);
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        let window = PublishWindow::default();
        let changes = table.subscribe();
        let publisher = tokio::spawn(publisher::publish_statuses(
            client.clone(),
            PublisherSettings {
                topics: topics.clone(),
                status_expiry: worker.status_expiry,
                in_flight_window: config.mqtt.keepalive * 3,
                window: window.clone(),
            },
            table.statuses(),
            changes,
            link_rx.clone(),
        ));
        let (acks, pending_acks) = tokio::sync::mpsc::unbounded_channel();
        let acknowledger = client::acknowledge(client.clone(), pending_acks, link_rx.clone());
        let stop_presence = CancellationToken::new();
        let presence = tokio::spawn(presence::publish_presence(
            client.clone(),
            presence,
            table.clone(),
            link_rx.clone(),
            stop_presence.clone(),
        ));
        let events_window = EventWindow::default();
        let events = Arc::new(EventPublisher::new(
            client.clone(),
            topics.clone(),
            &worker.worker_id,
            link_rx.clone(),
            events_window.clone(),
            table.metrics(),
        ));
        let inbound = Inbound {
            table: table.clone(),
            policy,
            topics: topics.clone(),
            acks,
            window,
            events_window,
        };
        let abort_link = CancellationToken::new();
        let drive = client::drive(
            eventloop,
            client.clone(),
            inbound,
            link_tx,
            abort_link.clone(),
        );
        // The acknowledger ends once `drive` dropped the pending acks' sender.
        let link = spawn_dedicated("mqtt-intake", async move {
            tokio::join!(drive, acknowledger);
        })
        .map_err(ClientError::Thread)?;
        Ok(MqttSide {
            client,
            topics,
            events,
            link_state: link_rx,
            link,
            abort_link,
            publisher,
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

    /// Where runs send their events: the events topic.
    pub fn event_sink(&self) -> Arc<dyn EventSink> {
        self.events.clone()
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
    }
}

/// Runs `task` on a thread of its own with a single-threaded runtime, so that
/// receiving and acknowledging requests never waits behind runs on the main
/// runtime's workers (a slow acknowledgement makes the broker hold back, and
/// Mosquitto drop, requests of a burst). Resolves when `task` ended.
fn spawn_dedicated(
    name: &str,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(task);
            let _ = done.send(());
        })?;
    Ok(ended)
}

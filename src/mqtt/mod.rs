//! The MQTT transport: one client connection (`client`) and its options
//! (`options`, with the TLS settings of `transport::tls`), the status publisher
//! (`publisher`, the [`StatusSink`]; with the embedded broker, statuses take
//! its in-process link instead, `crate::broker::local`), the run events
//! publisher (`events`), the presence document and will (`presence`), what
//! the broker granted and when to reconnect (`link`), the worker's own API's
//! submits and cancels forwarded to the group (`source`, the
//! [`TaskSource`]), and the topic names of PROTOCOL.md (`topics`).
//! [`MqttSide`] wires them together for `run`.

pub mod client;
pub mod events;
pub mod link;
pub mod options;
pub mod presence;
pub mod publisher;
pub mod source;
pub mod topics;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::v5::AsyncClient;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::local::{LinkPublisher, StatusLink};
use crate::config::Config;
use crate::intake::IntakePolicy;
use crate::model::{EventSink, StatusUpdate, TaskStatus};
use crate::table::TaskTable;
use crate::transport::{LinkState, StatusSink, TaskSource};
use client::Inbound;
use events::{EventPublisher, EventWindow};
use options::ClientError;
use presence::Presence;
use publisher::{PublisherSettings, StatusPublisher};
use source::MqttSource;
use topics::Topics;
use window::PublishWindow;

/// The running MQTT tasks of one worker: connection, events publisher and
/// presence, and the status publisher until [`MqttSide::sink`] hands it out.
pub struct MqttSide {
    client: AsyncClient,
    topics: Topics,
    events: Arc<EventPublisher>,
    link_state: watch::Receiver<LinkState>,
    /// Resolves when the connection's thread ended.
    link: oneshot::Receiver<()>,
    abort_link: CancellationToken,
    sink: Option<Box<dyn StatusSink>>,
    presence: JoinHandle<()>,
    stop_presence: CancellationToken,
}

impl MqttSide {
    /// Connects (in the background, retrying); requests `policy` accepts go
    /// into `table`. Statuses leave through [`MqttSide::sink`].
    pub fn start(
        config: &Config,
        table: &TaskTable,
        policy: IntakePolicy,
        status_link: Option<StatusLink>,
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
            window: window.clone(),
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
        let (link, link_runtime) = spawn_dedicated("mqtt-intake", async move {
            tokio::join!(drive, acknowledger);
        })
        .map_err(ClientError::Thread)?;
        // Into the embedded broker in-process where there is a link to it;
        // over the connection otherwise.
        let sink: Box<dyn StatusSink> = match status_link {
            Some(link) => Box::new(
                LinkPublisher::start(link, topics.clone(), worker.status_expiry)
                    .map_err(ClientError::Thread)?,
            ),
            None => Box::new(OnLinkThread {
                publisher: StatusPublisher::new(
                    client.clone(),
                    PublisherSettings {
                        topics: topics.clone(),
                        status_expiry: worker.status_expiry,
                        in_flight_window: config.mqtt.keepalive * 3,
                        window,
                    },
                    link_rx.clone(),
                ),
                runtime: link_runtime,
            }),
        };
        Ok(MqttSide {
            client,
            topics,
            events,
            link_state: link_rx,
            link,
            abort_link,
            sink: Some(sink),
            presence,
            stop_presence,
        })
    }

    /// The topic names in use.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Where the worker's own API sends submits and cancels: the group's
    /// topics.
    pub fn source(&self) -> Arc<dyn TaskSource> {
        Arc::new(MqttSource::new(
            self.client.clone(),
            self.topics.clone(),
            self.link_state.clone(),
        ))
    }

    /// The status publisher, once: retained statuses on each task's topic.
    /// It runs on the connection's thread, beside the event loop it hands
    /// its publishes to and that hands it their acknowledgements: a status
    /// then wakes one thread, not two.
    pub fn sink(&mut self) -> Option<Box<dyn StatusSink>> {
        self.sink.take()
    }

    /// Where runs send their events: the events topic.
    pub fn event_sink(&self) -> Arc<dyn EventSink> {
        self.events.clone()
    }

    /// Marks the worker offline and disconnects (once the status sink
    /// delivered what it had), each step within `margin`.
    pub async fn finish(self, margin: Duration) {
        self.stop_presence.cancel();
        let _ = tokio::time::timeout(margin, self.presence).await;
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(margin, self.link).await.is_err() {
            tracing::warn!("the broker did not take the final statuses in time");
            self.abort_link.cancel();
        }
    }
}

/// The status publisher, delivering on the connection's thread.
struct OnLinkThread {
    publisher: StatusPublisher,
    runtime: Handle,
}

impl StatusSink for OnLinkThread {
    fn deliver(
        self: Box<Self>,
        restored: Vec<TaskStatus>,
        changes: UnboundedReceiver<StatusUpdate>,
    ) -> BoxFuture<'static, ()> {
        let delivery = Box::new(self.publisher).deliver(restored, changes);
        let delivering = self.runtime.spawn(delivery);
        Box::pin(async move {
            let _ = delivering.await;
        })
    }
}

/// Runs `task` on a thread of its own with a single-threaded runtime, so that
/// receiving and acknowledging requests never waits behind runs on the main
/// runtime's workers (a slow acknowledgement makes the broker hold back, and
/// Mosquitto drop, requests of a burst). The receiver resolves when `task`
/// ended; the handle spawns more onto that runtime while `task` runs.
fn spawn_dedicated(
    name: &str,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(oneshot::Receiver<()>, Handle)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(task);
            let _ = done.send(());
        })?;
    Ok((ended, handle))
}

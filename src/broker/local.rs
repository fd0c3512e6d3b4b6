//! The worker's statuses handed to the embedded broker in-process.
//!
//! Over a socket, rumqttd keeps every publish it retains or logs as a slice
//! of the ~8 KiB buffer it read it into, so one retained final status keeps
//! a whole buffer of other packets alive (docs/BENCHMARKS.md). Through
//! rumqttd's local link the broker keeps an exact copy of each status, and
//! a task's statuses share one copy of its topic.
//!
//! The link is made before the broker starts and lives as long as the
//! process: it never reconnects, so there is nothing to catch up on, and
//! the statuses it carries are not kept for that (the socket publisher
//! keeps recent ones). Its client id is reserved: the front door refuses
//! it, since rumqttd hands a client id to the newest connection, and a
//! namesake would silence every status.
//!
//! rumqttd's local links publish at QoS 0 (`Publish::new`): in-process,
//! nothing is in flight to acknowledge. What a subscriber gets is unchanged:
//! rumqttd delivers every message at the QoS of the subscription
//! (MQTT-NOTES.md), the same as for the worker's QoS 1 publishes over a
//! socket, and retained, with its Message Expiry and Correlation Data.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use crate::model::{StatusUpdate, TaskStatus};
use crate::mqtt::publisher::expiry_left;
use crate::mqtt::topics::Topics;
use crate::transport::{BoxFuture, StatusSink};

/// The link's client id for a worker's id.
pub fn client_id(worker_id: &str) -> String {
    format!("{worker_id}:statuses")
}

/// One end of the in-process link, taken once by the status sink.
pub struct StatusLink {
    tx: LinkTx,
    rx: LinkRx,
}

impl std::fmt::Debug for StatusLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusLink").finish_non_exhaustive()
    }
}

impl StatusLink {
    /// Makes the link on `broker` (before it starts).
    pub fn open(broker: &rumqttd::Broker, client_id: &str) -> Option<StatusLink> {
        match broker.link(client_id) {
            Ok((tx, rx)) => Some(StatusLink { tx, rx }),
            Err(e) => {
                tracing::error!("cannot link the worker's statuses into the broker: {e}");
                None
            }
        }
    }
}

/// What a status sink delivers: the statuses held at start, then every
/// change.
type Streams = (Vec<TaskStatus>, UnboundedReceiver<StatusUpdate>);

/// The status sink over the link: retained statuses (and replies on the
/// request's route), as the MQTT publisher sends them, in order, from a
/// thread of its own (a send may wait for room in the router's queue).
pub struct LinkPublisher {
    /// Hands the statuses thread what it delivers.
    start: oneshot::Sender<Streams>,
    /// Resolves when the thread delivered everything.
    ended: oneshot::Receiver<()>,
}

impl LinkPublisher {
    /// Starts the statuses thread for `link` with the worker's `topics`;
    /// it publishes once [`StatusSink::deliver`] hands it its streams, and
    /// ends without if the publisher is dropped first.
    pub fn start(
        link: StatusLink,
        topics: Topics,
        status_expiry: Option<std::time::Duration>,
    ) -> std::io::Result<Self> {
        let (start, started) = oneshot::channel::<Streams>();
        let (done, ended) = oneshot::channel();
        let StatusLink { tx, rx } = link;
        std::thread::Builder::new()
            .name("statuses".into())
            .spawn(move || {
                let Ok((restored, mut changes)) = started.blocking_recv() else {
                    return;
                };
                let mut sender = Sender {
                    tx,
                    _rx: rx,
                    topics,
                    status_expiry,
                    active_topics: HashMap::new(),
                };
                for status in restored {
                    sender.send(&status, &status.to_json());
                }
                while let Some(StatusUpdate { status, json }) = changes.blocking_recv() {
                    sender.send(&status, &json);
                }
                let _ = done.send(());
            })?;
        Ok(LinkPublisher { start, ended })
    }
}

impl StatusSink for LinkPublisher {
    fn deliver(
        self: Box<Self>,
        restored: Vec<TaskStatus>,
        changes: UnboundedReceiver<StatusUpdate>,
    ) -> BoxFuture<'static, ()> {
        let LinkPublisher { start, ended } = *self;
        let _ = start.send((restored, changes));
        Box::pin(async move {
            let _ = ended.await;
        })
    }
}

/// The statuses thread's end of the link.
struct Sender {
    tx: LinkTx,
    topics: Topics,
    status_expiry: Option<std::time::Duration>,
    /// Kept for as long as the link is used: the router writes to it.
    _rx: LinkRx,
    /// The status topic of each task not final yet: its statuses share one
    /// copy of it in the broker's log and retained store.
    active_topics: HashMap<String, Bytes>,
}

impl Sender {
    /// Publishes `status`, whose JSON is `json`, to its topic (and its
    /// reply route, if it has one). The broker keeps a copy of exactly
    /// `json`'s length: the serialiser's buffer has room to spare.
    fn send(&mut self, status: &TaskStatus, json: &[u8]) {
        let expiry = expiry_left(status, self.status_expiry);
        if expiry == Some(0) {
            return;
        }
        let payload = Bytes::copy_from_slice(json);
        let topic = self.status_topic(status);
        let properties = PublishProperties {
            message_expiry_interval: expiry,
            ..PublishProperties::default()
        };
        let Some(route) = &status.delivery.reply else {
            // Not cloned when not needed: cloning gives the copy a shared
            // header, one more allocation the broker would keep.
            self.publish(topic, true, payload, properties);
            return;
        };
        self.publish(topic, true, payload.clone(), properties);
        let properties = PublishProperties {
            correlation_data: route.correlation.clone(),
            message_expiry_interval: expiry,
            ..PublishProperties::default()
        };
        let topic = Bytes::copy_from_slice(route.topic.as_bytes());
        self.publish(topic, false, payload, properties);
    }

    /// `status`'s topic, shared by the statuses of its task until the final
    /// one.
    fn status_topic(&mut self, status: &TaskStatus) -> Bytes {
        let kept = if status.state.is_final() {
            let kept = self.active_topics.remove(&status.task_id);
            if self.active_topics.is_empty() && self.active_topics.capacity() > 64 {
                // Give back what a burst grew.
                self.active_topics.shrink_to_fit();
            }
            kept
        } else {
            self.active_topics.get(&status.task_id).cloned()
        };
        kept.unwrap_or_else(|| {
            let topic = Bytes::copy_from_slice(self.topics.status(&status.task_id).as_bytes());
            if !status.state.is_final() {
                self.active_topics
                    .insert(status.task_id.clone(), topic.clone());
            }
            topic
        })
    }

    /// Hands one publish to the router.
    fn publish(
        &mut self,
        topic: Bytes,
        retain: bool,
        payload: Bytes,
        properties: PublishProperties,
    ) {
        let publish = Publish::new(topic, payload, retain);
        // No properties at all rather than empty ones: rumqttd forwards them
        // as they are, and writing any to an MQTT 3.1.1 subscriber panics
        // its listener thread (over a socket, empty properties arrive as
        // none).
        let properties = (properties != PublishProperties::default()).then_some(properties);
        // `send` completes at once: it queues the packet and wakes the
        // router, waiting (blocking) only while the router's queue is full.
        let sent = futures_util::FutureExt::now_or_never(
            self.tx.send(Packet::Publish(publish, properties)),
        );
        if !matches!(sent, Some(Ok(_))) {
            tracing::error!("the embedded broker did not take a status: its router is gone");
        }
    }
}

//! The events publisher: each run's task starts, results and output lines →
//! `P/G/tasks/<id>/events` (PROTOCOL.md extension), QoS 0, not retained, not
//! journaled.
//!
//! Events are live only and must never slow a run, a status or the
//! acknowledgement of a request, which all share the client's one request
//! queue (see `window`). So an event is handed to the client at once or
//! dropped, and counted (`ansible_worker_events_dropped_total`): while the
//! worker is not connected, and while [`EVENT_WINDOW`] events are still
//! waiting in the client's queue (the connection's event loop says when each
//! one left, [`EventWindow::sent`]). A dropped event keeps its number, so a
//! consumer sees a gap in `seq`.
//!
//! The topic has no worker-id suffix, whatever
//! `worker.suffix_status_with_worker_id` says; each event names its
//! `worker_id`, for groups in which several workers run the same task id.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::watch;

use super::topics::Topics;
use crate::metrics::Metrics;
use crate::model::{EventSink, RunEvent, event_payload};
use crate::transport::LinkState;

/// Events allowed in the client's request queue at once: what a status or
/// an acknowledgement may have to wait behind.
pub const EVENT_WINDOW: usize = 64;

/// Counts the events handed to the client that it has not sent yet.
#[derive(Debug, Clone, Default)]
pub struct EventWindow {
    queued: Arc<AtomicUsize>,
}

impl EventWindow {
    /// Takes room for one more event; false when the window is full.
    pub fn try_enter(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < EVENT_WINDOW).then_some(queued + 1)
            })
            .is_ok()
    }

    /// The client sent a QoS 0 publish (only events are QoS 0), or one
    /// handed to it failed: its room is free again.
    pub fn sent(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_sub(1)
            });
    }

    /// A new connection: events lost with the old one never report being
    /// sent, so the whole window is free again.
    pub fn reset(&self) {
        self.queued.store(0, Ordering::Release);
    }
}

/// Hands run events to the MQTT client without ever waiting.
pub struct EventPublisher {
    client: AsyncClient,
    topics: Topics,
    worker_id: String,
    link: watch::Receiver<LinkState>,
    window: EventWindow,
    metrics: Arc<Metrics>,
}

impl EventPublisher {
    /// A publisher for `worker_id` on `client`, publishing while `link` is
    /// up and `window` has room.
    pub fn new(
        client: AsyncClient,
        topics: Topics,
        worker_id: &str,
        link: watch::Receiver<LinkState>,
        window: EventWindow,
        metrics: Arc<Metrics>,
    ) -> Self {
        EventPublisher {
            client,
            topics,
            worker_id: worker_id.to_owned(),
            link,
            window,
            metrics,
        }
    }
}

impl EventSink for EventPublisher {
    fn send(&self, task_id: &str, seq: u64, event: &RunEvent) {
        if !self.link.borrow().up || !self.window.try_enter() {
            self.metrics.event_dropped();
            return;
        }
        let payload = event_payload(task_id, &self.worker_id, seq, chrono::Utc::now(), event);
        let topic = self.topics.events(task_id);
        if self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload)
            .is_err()
        {
            self.window.sent();
            self.metrics.event_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::Request;

    fn line(n: u64) -> RunEvent {
        RunEvent::Line {
            text: format!("line {n}"),
        }
    }

    struct Fixture {
        publisher: EventPublisher,
        /// What the publisher handed to the client.
        queue: flume::Receiver<Request>,
        link: watch::Sender<LinkState>,
        metrics: Arc<Metrics>,
    }

    /// A publisher on a client whose request queue holds `capacity`.
    fn fixture(capacity: usize) -> Fixture {
        let (requests, queue) = flume::bounded(capacity);
        let (link, link_rx) = watch::channel(LinkState::default());
        let metrics = Arc::new(Metrics::default());
        let publisher = EventPublisher::new(
            AsyncClient::from_senders(requests),
            Topics::new("ansible", "lab", "w1", true, true),
            "w1",
            link_rx,
            EventWindow::default(),
            metrics.clone(),
        );
        Fixture {
            publisher,
            queue,
            link,
            metrics,
        }
    }

    impl Fixture {
        fn connect(&self) {
            self.link.send_replace(LinkState {
                up: true,
                generation: 1,
                subscribed: true,
            });
        }

        fn dropped(&self) -> u64 {
            let text = self.metrics.render(0, 0);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("ansible_worker_events_dropped_total "));
            line.unwrap().parse().unwrap()
        }
    }

    #[test]
    fn events_are_dropped_while_disconnected() {
        let f = fixture(100);
        f.publisher.send("t1", 1, &line(1));
        assert_eq!(f.dropped(), 1);
        assert!(f.queue.is_empty());
    }

    #[test]
    fn events_go_out_qos0_unretained_on_the_unsuffixed_topic() {
        let f = fixture(100);
        f.connect();
        f.publisher.send("t1", 3, &line(3));
        let Ok(Request::Publish(publish)) = f.queue.try_recv() else {
            panic!("no publish queued");
        };
        assert_eq!(&publish.topic[..], b"ansible/lab/tasks/t1/events");
        assert_eq!(publish.qos, QoS::AtMostOnce);
        assert!(!publish.retain);
        let doc: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!(doc["seq"], 3);
        assert_eq!(doc["task_id"], "t1");
        assert_eq!(doc["worker_id"], "w1");
        assert_eq!(doc["text"], "line 3");
        assert_eq!(f.dropped(), 0);
    }

    /// A stalled connection fills the window, not the client's queue: what
    /// does not fit is dropped at once, and room comes back as events leave.
    #[test]
    fn a_full_window_drops_events_instead_of_waiting() {
        let f = fixture(1024);
        f.connect();
        for n in 1..=100 {
            f.publisher.send("t1", n, &line(n));
        }
        assert_eq!(f.queue.len(), EVENT_WINDOW);
        assert_eq!(f.dropped(), 100 - EVENT_WINDOW as u64);
        f.queue.try_recv().unwrap();
        f.publisher.window.sent();
        f.publisher.send("t1", 101, &line(101));
        assert_eq!(f.queue.len(), EVENT_WINDOW);
        assert_eq!(f.dropped(), 100 - EVENT_WINDOW as u64);
        f.publisher.send("t1", 102, &line(102));
        assert_eq!(f.dropped(), 101 - EVENT_WINDOW as u64);
        // A new connection frees the window.
        f.publisher.window.reset();
        f.publisher.send("t1", 103, &line(103));
        assert_eq!(f.queue.len(), EVENT_WINDOW + 1);
        // Room never grows past the window.
        for _ in 0..10 {
            f.publisher.window.sent();
        }
        assert_eq!(f.publisher.window.queued.load(Ordering::Acquire), 0);
    }

    /// A client queue smaller than the window: a full queue drops the event
    /// too, and gives its room back.
    #[test]
    fn a_full_client_queue_drops_the_event() {
        let f = fixture(2);
        f.connect();
        for n in 1..=5 {
            f.publisher.send("t1", n, &line(n));
        }
        assert_eq!(f.queue.len(), 2);
        assert_eq!(f.dropped(), 3);
        assert_eq!(f.publisher.window.queued.load(Ordering::Acquire), 2);
    }
}

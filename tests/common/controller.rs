//! An MQTT 5 controller as a deployment has one: it logs in (or not),
//! subscribes to the filters it is given, publishes with an optional
//! Response Topic and Correlation Data and learns the broker's answer
//! (the PUBACK or PUBREC reason code), and records every message it
//! receives. It does not start a broker or a worker; `observer.rs` is the
//! fixed-topic recorder most tests use.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{unique, wait_for};

/// One message the controller received.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: String,
    pub doc: Value,
    pub retained: bool,
    pub correlation: Option<Bytes>,
}

/// The broker's answer to a QoS 1 or 2 publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// PUBACK (QoS 1).
    PubAck(PubAckReason),
    /// PUBREC (QoS 2).
    PubRec(PubRecReason),
}

impl Ack {
    /// True when the broker took the message (success, or nobody subscribed).
    pub fn accepted(self) -> bool {
        matches!(
            self,
            Ack::PubAck(PubAckReason::Success | PubAckReason::NoMatchingSubscribers)
                | Ack::PubRec(PubRecReason::Success | PubRecReason::NoMatchingSubscribers)
        )
    }
}

/// A connected MQTT 5 client with its subscriptions granted.
pub struct Controller {
    client: AsyncClient,
    received: Arc<Mutex<Vec<Delivered>>>,
    acks: tokio::sync::Mutex<mpsc::UnboundedReceiver<Ack>>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Connects to 127.0.0.1:`port` (as `login`, if given) and subscribes to
    /// `filters` at QoS 1; returns once the broker answered the SUBSCRIBE.
    pub async fn connect(port: u16, login: Option<(&str, &str)>, filters: &[&str]) -> Self {
        let mut options = MqttOptions::new(unique("controller"), "127.0.0.1", port);
        options.set_max_packet_size(Some(1 << 20));
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let mut subacks_due = filters.len();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_due = subacks_due.saturating_sub(1);
                        if subacks_due == 0
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let _ = ack_tx.send(Ack::PubAck(ack.reason));
                    }
                    Ok(Event::Incoming(Packet::PubRec(rec))) => {
                        let _ = ack_tx.send(Ack::PubRec(rec.reason));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(doc) = serde_json::from_slice(&p.payload) else {
                            continue;
                        };
                        sink.lock().unwrap().push(Delivered {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            doc,
                            retained: p.retain,
                            correlation: p.properties.and_then(|props| props.correlation_data),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        if !filters.is_empty() {
            tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
                .await
                .expect("the broker answered the SUBSCRIBE")
                .unwrap();
        }
        Controller {
            client,
            received,
            acks: tokio::sync::Mutex::new(ack_rx),
            task,
        }
    }

    /// Publishes `payload` on `topic` at `qos` (1 or 2) with `reply_to` as
    /// (Response Topic, Correlation Data), and returns the broker's answer.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &Value,
        reply_to: Option<(&str, &str)>,
    ) -> Ack {
        assert_ne!(qos, QoS::AtMostOnce, "QoS 0 gets no answer");
        let mut acks = self.acks.lock().await;
        let properties = PublishProperties {
            response_topic: reply_to.map(|(topic, _)| topic.to_owned()),
            correlation_data: reply_to.map(|(_, data)| Bytes::from(data.to_owned())),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_string(), properties)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("the broker answered the PUBLISH")
            .unwrap()
    }

    /// Every message received on `topic`, in order.
    pub fn on(&self, topic: &str) -> Vec<Delivered> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|d| d.topic == topic)
            .cloned()
            .collect()
    }

    /// Waits until a message on `topic` satisfies `check`; returns it.
    pub async fn wait_on(
        &self,
        topic: &str,
        timeout: Duration,
        check: impl Fn(&Delivered) -> bool,
    ) -> Delivered {
        let mut found = None;
        let arrived = wait_for(timeout, || {
            found = self.on(topic).into_iter().find(&check);
            found.is_some()
        })
        .await;
        assert!(
            arrived,
            "nothing as expected on {topic}; received {:?}",
            self.on(topic)
        );
        found.unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

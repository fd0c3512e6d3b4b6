//! An MQTT 5 client that records every message on one filter as received
//! (topic, retain flag, raw payload), in arrival order: for the events topic,
//! which `observer.rs` does not follow, and for checking what a broker
//! retained. It does not start a broker or a worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

/// One message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
}

impl Received {
    /// The payload as JSON (null if it is not).
    pub fn doc(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// An MQTT 5 client subscribed to one filter.
pub struct Recorder {
    pub client: AsyncClient,
    seen: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Connects to the broker on `port` and subscribes to `filter` (QoS 1);
    /// returns once the broker granted it.
    pub async fn start(port: u16, filter: &str) -> Self {
        Self::start_with(port, filter, None).await
    }

    /// As [`Recorder::start`], logging in with `(user, password)`.
    pub async fn start_with(port: u16, filter: &str, login: Option<(&str, &str)>) -> Self {
        let mut options =
            MqttOptions::new(format!("recorder-{}", fastrand::u32(..)), "127.0.0.1", port);
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let (granted_tx, granted_rx) = tokio::sync::oneshot::channel();
        let mut granted_tx = Some(granted_tx);
        let subscriber = client.clone();
        let filter = filter.to_owned();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let ok = ack
                            .return_codes
                            .iter()
                            .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                        if let Some(tx) = granted_tx.take() {
                            let _ = tx.send(ok);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            retain: p.retain,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let granted = tokio::time::timeout(Duration::from_secs(10), granted_rx)
            .await
            .expect("the recorder got a SUBACK")
            .unwrap();
        assert!(granted, "the broker refused the subscription");
        Recorder { client, seen, task }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// The documents received on `topic`, in order.
    pub fn docs_on(&self, topic: &str) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|m| m.topic == topic)
            .map(Received::doc)
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

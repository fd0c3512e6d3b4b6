//! The MQTT [`TaskSource`]: requests arrive on the group's tasks topic
//! (`client` receives them); a submit or cancel made through the worker's
//! own API is published to the group, so whichever member takes the task, or
//! holds it, acts, exactly as for any MQTT client.

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::topics::Topics;
use crate::transport::{BoxFuture, LinkState, Refused, TaskSource};

/// The broker connection as a task source.
pub struct MqttSource {
    client: AsyncClient,
    topics: Topics,
    link: watch::Receiver<LinkState>,
}

impl MqttSource {
    /// A source publishing with `client` to the group's `topics`.
    pub fn new(client: AsyncClient, topics: Topics, link: watch::Receiver<LinkState>) -> Self {
        MqttSource {
            client,
            topics,
            link,
        }
    }

    async fn publish(&self, topic: String, qos: QoS, payload: Vec<u8>) -> Result<(), Refused> {
        if !self.link.borrow().up {
            return Err(Refused::Unavailable(
                "not connected to the MQTT broker; try again shortly".into(),
            ));
        }
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|e| {
                tracing::warn!("cannot forward an HTTP request to the broker: {e}");
                Refused::Unavailable("cannot reach the MQTT broker".into())
            })
    }
}

impl TaskSource for MqttSource {
    fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    fn readiness_names(&self) -> (&'static str, &'static str) {
        ("mqtt_connected", "mqtt_subscribed")
    }

    fn submit(
        &self,
        payload: Vec<u8>,
        task_id: &str,
    ) -> BoxFuture<'_, Result<Map<String, Value>, Refused>> {
        let status_topic = self.topics.status(task_id);
        Box::pin(async move {
            self.publish(self.topics.tasks(), QoS::ExactlyOnce, payload)
                .await?;
            Ok(Map::from_iter([(
                "status_topic".to_owned(),
                Value::String(status_topic),
            )]))
        })
    }

    fn cancel(&self, task_id: &str, body: Vec<u8>) -> BoxFuture<'_, Result<(), Refused>> {
        let topic = self.topics.cancel(task_id);
        Box::pin(self.publish(topic, QoS::AtLeastOnce, body))
    }

    /// The broker hands new requests to other members of the group.
    fn stop_intake(&self) {
        let _ = self.client.try_unsubscribe(self.topics.tasks_filter());
    }
}

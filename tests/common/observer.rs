//! An MQTT 5 client on the worker's topics: it publishes requests and cancels
//! and records every status and presence document, plus the predicates tests
//! ask of those documents. It does not start a broker or a worker.
//!
//! Every status document it receives must pass the published status schema
//! (`schema`): a test that reads what the observer saw, or drops it, fails
//! with the document and the schema's errors otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

use super::{status_violation, wait_for};

/// One status document as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub doc: Value,
}

/// An MQTT 5 client that records every status document of a group, and
/// resubscribes after each reconnect (so it survives broker restarts).
pub struct Observer {
    pub client: AsyncClient,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Status payloads that are not valid status documents, explained.
    invalid: Arc<Mutex<Vec<String>>>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    prefix: String,
}

impl Observer {
    /// Connects to the broker on `port` and follows `ansible/<group>/tasks/+/status/#`.
    pub async fn start(port: u16, group: &str) -> Self {
        Self::start_with(port, group, None).await
    }

    /// As [`Observer::start`], logging in with `(user, password)`.
    pub async fn start_with(port: u16, group: &str, login: Option<(&str, &str)>) -> Self {
        let mut options = MqttOptions::new(
            format!("observer-{group}-{}", fastrand::u32(..)),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let invalid = Arc::new(Mutex::new(Vec::new()));
        let filters = [
            format!("ansible/{group}/tasks/+/status/#"),
            format!("ansible/{group}/workers/+"),
        ];
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let sink = seen.clone();
        let violations = invalid.clone();
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connected = connects.clone();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        for filter in &filters {
                            let _ = sub_client.try_subscribe(filter, QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let violation = is_status_topic(&topic)
                            .then(|| status_violation(&p.payload))
                            .flatten();
                        if let Some(why) = violation {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("on {topic}: {why}"));
                        }
                        if let Ok(doc) = serde_json::from_slice::<Value>(&p.payload) {
                            sink.lock().unwrap().push(Seen { topic, doc });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("observer subscribed")
            .unwrap();
        Observer {
            client,
            seen,
            invalid,
            connects,
            task,
            prefix: format!("ansible/{group}"),
        }
    }

    /// Publishes a raw request payload on the group's tasks topic (QoS 2).
    pub async fn publish_raw(&self, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                format!("{}/tasks", self.prefix),
                QoS::ExactlyOnce,
                false,
                payload.into(),
            )
            .await
            .unwrap();
    }

    /// How many times the observer connected (1 unless it lost the connection).
    pub fn connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publishes a cancel request for `task_id`.
    pub async fn cancel(&self, task_id: &str, payload: &str) {
        self.client
            .publish(
                format!("{}/tasks/{task_id}/cancel", self.prefix),
                QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// Publishes a JSON request.
    pub async fn submit(&self, request: Value) {
        self.publish_raw(serde_json::to_vec(&request).unwrap())
            .await;
    }

    /// Every status document received for `task_id`, in order.
    pub fn statuses(&self, task_id: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|s| s.doc["task_id"] == task_id)
            .map(|s| s.doc)
            .collect()
    }

    /// Every status document received, with topics. Panics if one of them
    /// broke the status schema.
    pub fn all(&self) -> Vec<Seen> {
        self.assert_valid_statuses();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.topic.contains("/tasks/"))
            .cloned()
            .collect()
    }

    /// Every presence document of `worker_id` received, in order.
    pub fn presence(&self, worker_id: &str) -> Vec<Value> {
        self.assert_valid_statuses();
        let topic = format!("{}/workers/{worker_id}", self.prefix);
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.topic == topic)
            .map(|s| s.doc.clone())
            .collect()
    }

    /// The states received for `task_id`, in order.
    pub fn states(&self, task_id: &str) -> Vec<String> {
        self.statuses(task_id)
            .iter()
            .map(|d| d["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Waits until a final status of `task_id` arrives and returns it.
    pub async fn wait_final(&self, task_id: &str, timeout: Duration) -> Value {
        let mut found = None;
        let arrived = wait_for(timeout, || {
            found = self.statuses(task_id).into_iter().find(is_final);
            found.is_some()
        })
        .await;
        assert!(
            arrived,
            "no final status for {task_id}; saw {:?}",
            self.states(task_id)
        );
        found.unwrap()
    }

    /// Waits until `task_id` has a status in `state`.
    pub async fn wait_state(&self, task_id: &str, state: &str, timeout: Duration) -> Value {
        let mut found = None;
        let arrived = wait_for(timeout, || {
            found = self
                .statuses(task_id)
                .into_iter()
                .find(|d| d["state"] == state);
            found.is_some()
        })
        .await;
        assert!(
            arrived,
            "{task_id} never reached {state}; saw {:?}",
            self.states(task_id)
        );
        found.unwrap()
    }

    /// Panics with the first status payload received so far that is not a
    /// valid status document (and how many there were).
    #[track_caller]
    pub fn assert_valid_statuses(&self) {
        let invalid = self.invalid.lock().unwrap();
        if let Some(first) = invalid.first() {
            panic!(
                "{} invalid status document(s); the first {first}",
                invalid.len()
            );
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
        // What arrived after the test's last look is checked too, unless the
        // test already fails.
        if !std::thread::panicking() {
            self.assert_valid_statuses();
        }
    }
}

/// True for `ansible/<group>/tasks/<id>/status` and `.../status/<worker_id>`.
fn is_status_topic(topic: &str) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    matches!(
        levels.as_slice(),
        ["ansible", _, "tasks", _, "status"] | ["ansible", _, "tasks", _, "status", _]
    )
}

/// True for a status document in a final state.
pub fn is_final(doc: &Value) -> bool {
    matches!(
        doc["state"].as_str(),
        Some("success" | "failed" | "cancelled" | "timeout")
    )
}

/// Number of final statuses in `docs`, counting a repeated identical final
/// document once (re-publishing after a reconnect repeats it verbatim).
pub fn distinct_finals(docs: &[Value]) -> usize {
    let mut finals: Vec<&Value> = docs.iter().filter(|d| is_final(d)).collect();
    finals.dedup();
    finals.len()
}

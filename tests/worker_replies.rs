//! MQTT 5 request/response against a real Mosquitto and a real
//! ansible-playbook, as a requester meets it: the route of the admitted
//! request gets the task's statuses, a duplicate gets one status on its own
//! route, and a Response Topic naming the worker's own topics is ignored
//! (PROTOCOL.md), so a request can neither make the worker feed itself nor
//! cancel another task.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};

struct Setup {
    _broker: Mosquitto,
    worker: Worker,
    observer: Observer,
    http: Http,
    requester: Requester,
    group: String,
}

async fn setup(group: &str) -> Setup {
    let broker = Mosquitto::start();
    let http_port = free_port();
    let mut worker_setup = WorkerSetup::new(group, broker.port);
    // `[mqtt]` is the last table of the generated config.
    worker_setup.extra_mqtt =
        format!("\n[http]\nenabled = true\nlisten = \"127.0.0.1:{http_port}\"\n");
    let worker = worker_setup.start();
    let http = Http::new(http_port);
    http.wait_up(&worker);
    let observer = Observer::start(broker.port, group).await;
    let requester = Requester::start(broker.port, "replies/#").await;
    Setup {
        _broker: broker,
        worker,
        observer,
        http,
        requester,
        group: group.to_owned(),
    }
}

/// One message the requester received.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    doc: Value,
    correlation: Option<Bytes>,
}

/// An MQTT 5 client that sends requests with a Response Topic and records
/// what arrives on its subscription.
struct Requester {
    client: AsyncClient,
    seen: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Requester {
    async fn start(port: u16, filter: &str) -> Self {
        let mut options = MqttOptions::new(unique("requester"), "127.0.0.1", port);
        options.set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(doc) = serde_json::from_slice(&p.payload) else {
                            continue;
                        };
                        sink.lock().unwrap().push(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            doc,
                            correlation: p.properties.and_then(|props| props.correlation_data),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("requester subscribed")
            .unwrap();
        Requester { client, seen, task }
    }

    /// Publishes `request` on `topic` with a Response Topic and Correlation
    /// Data.
    async fn request(&self, topic: &str, request: &Value, response_topic: &str, correlation: &str) {
        let properties = PublishProperties {
            response_topic: Some(response_topic.into()),
            correlation_data: Some(Bytes::from(correlation.to_owned())),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                topic,
                QoS::ExactlyOnce,
                false,
                request.to_string(),
                properties,
            )
            .await
            .unwrap();
    }

    /// What arrived on `topic`, in order; replies are status documents and
    /// must pass the status schema.
    fn on(&self, topic: &str) -> Vec<Received> {
        let seen = self.seen.lock().unwrap();
        let received: Vec<Received> = seen.iter().filter(|r| r.topic == topic).cloned().collect();
        received.iter().for_each(|r| assert_valid_status(&r.doc));
        received
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn states(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.doc["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_topic_on_the_tasks_topic_is_ignored_and_the_task_runs_once() {
    let s = setup("reply-loop").await;
    let ledger = Ledger::new();
    let tasks = format!("ansible/{}/tasks", s.group);
    let request = ledger_request("loop-1", &ledger.path, 2);
    s.requester
        .request(&tasks, &request, &tasks, "corr-loop")
        .await;
    let done = s.observer.wait_final("loop-1", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(ledger_counts(&ledger.path).get("loop-1"), Some(&1));
    let metrics = s.http.metrics();
    // The worker did not answer its own statuses as duplicate requests.
    assert_eq!(
        metrics.value("ansible_worker_refusals_total{reason=\"duplicate\"}"),
        0.0
    );
    assert_eq!(
        metrics.value("ansible_worker_refusals_total{reason=\"invalid\"}"),
        0.0
    );
    assert_eq!(
        metrics.value("ansible_worker_response_topics_ignored_total"),
        1.0
    );
    let log = s.worker.log();
    assert_eq!(
        log.matches("ignoring the request's response topic").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("Duplicate").count(), 0, "{log}");
    assert_eq!(distinct_finals(&s.observer.statuses("loop-1")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_topic_on_another_tasks_cancel_topic_does_not_cancel_it() {
    let s = setup("reply-cancel").await;
    let ledger = Ledger::new();
    s.observer
        .submit(ledger_request("victim", &ledger.path, 3))
        .await;
    s.observer.wait_state("victim", "running", DEADLINE).await;
    let tasks = format!("ansible/{}/tasks", s.group);
    let cancel_topic = format!("{tasks}/victim/cancel");
    let request =
        json!({"task_id": "attacker", "playbook": "failing.yml", "inventory": "localhost.yml"});
    s.requester
        .request(&tasks, &request, &cancel_topic, "corr-x")
        .await;
    assert_eq!(
        s.observer.wait_final("attacker", DEADLINE).await["state"],
        "failed"
    );
    let victim = s.observer.wait_final("victim", DEADLINE).await;
    assert_eq!(victim["state"], "success", "{victim}");
    assert_eq!(
        s.http
            .metrics()
            .value("ansible_worker_response_topics_ignored_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_gets_one_status_on_its_own_route_and_the_task_keeps_its_route() {
    let s = setup("reply-dup").await;
    let ledger = Ledger::new();
    let tasks = format!("ansible/{}/tasks", s.group);
    let request = ledger_request("dup-1", &ledger.path, 3);
    s.requester
        .request(&tasks, &request, "replies/first", "one")
        .await;
    assert!(
        wait_for(DEADLINE, || states(&s.requester.on("replies/first"))
            .contains(&"running".to_owned()))
        .await,
        "first route: {:?}",
        states(&s.requester.on("replies/first"))
    );
    s.requester
        .request(&tasks, &request, "replies/second", "two")
        .await;
    assert!(
        wait_for(DEADLINE, || !s.requester.on("replies/second").is_empty()).await,
        "nothing on the duplicate's route"
    );
    assert_eq!(
        s.observer.wait_final("dup-1", DEADLINE).await["state"],
        "success"
    );
    // The final status still went to the admitted request's route.
    assert!(
        wait_for(Duration::from_secs(10), || s
            .requester
            .on("replies/first")
            .last()
            .is_some_and(|r| is_final(&r.doc)))
        .await,
        "first route: {:?}",
        states(&s.requester.on("replies/first"))
    );
    let first = s.requester.on("replies/first");
    assert_eq!(states(&first).first().map(String::as_str), Some("queued"));
    assert_eq!(
        distinct_finals(&first.iter().map(|r| r.doc.clone()).collect::<Vec<_>>()),
        1
    );
    assert!(
        first
            .iter()
            .all(|r| r.correlation.as_deref() == Some(&b"one"[..]) && r.doc["task_id"] == "dup-1"),
        "{first:?}"
    );
    let second = s.requester.on("replies/second");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].correlation.as_deref(), Some(&b"two"[..]));
    assert_eq!(second[0].doc["state"], "running");
    assert_eq!(ledger_counts(&ledger.path).get("dup-1"), Some(&1));
}

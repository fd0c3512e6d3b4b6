//! The controller side of a bench: an MQTT 5 client that publishes task
//! requests at QoS 2 and follows `P/G/tasks/+/status`, timing each task from
//! its publish to its final status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::NetworkOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest wait for one status after the previous one.
const QUIET_DEADLINE: Duration = Duration::from_secs(30);

/// The status fields the bench reads.
#[derive(Debug, Deserialize)]
struct StatusDoc {
    task_id: String,
    state: String,
    error_message: Option<String>,
}

impl StatusDoc {
    fn is_final(&self) -> bool {
        !matches!(self.state.as_str(), "queued" | "running")
    }
}

/// One status document, stamped when it arrived.
struct Arrival {
    doc: StatusDoc,
    at: Instant,
}

/// Figures of one batch of tasks.
#[derive(Debug, Clone, Default)]
pub struct BatchFigures {
    /// Tasks divided by the time from the first publish to the last final status.
    pub tasks_per_sec: f64,
    /// Publish → final status, per task, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Status documents received per task (all states).
    pub statuses_per_task: f64,
}

/// Per-task bookkeeping.
struct Timing {
    published: Instant,
    finished: Option<Instant>,
    statuses: usize,
}

/// An MQTT client in the role of a controller of one worker group.
pub struct Controller {
    client: AsyncClient,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    tasks_topic: String,
    poller: JoinHandle<()>,
}

impl Controller {
    /// Connects to the broker on `port`, subscribes to the group's statuses
    /// and returns once the broker acknowledged the subscription.
    pub async fn connect(port: u16, group: &str) -> Result<Self> {
        let mut options = MqttOptions::new(
            format!("bench-controller-{:08x}", fastrand::u32(..)),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        options.set_keep_alive(Duration::from_secs(30));
        // Nagle would hold our small QoS 2 handshake packets for a delayed
        // ACK (~40 ms) and charge that to the worker.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let status_filter = format!("ansible/{group}/tasks/+/status");
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let subscriber = client.clone();
        let poller = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.try_subscribe(&status_filter, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let at = Instant::now();
                        if let Ok(doc) = serde_json::from_slice::<StatusDoc>(&publish.payload) {
                            let _ = arrivals_tx.send(Arrival { doc, at });
                        }
                    }
                    Ok(_) => {}
                    // A bench does not ride out broker trouble: stop, and the
                    // waiting side reports the missing statuses.
                    Err(_) => break,
                }
            }
        });
        tokio::time::timeout(QUIET_DEADLINE, subscribed_rx)
            .await
            .context("no SUBACK from the broker")?
            .context("the controller's connection failed")?;
        Ok(Controller {
            client,
            arrivals,
            tasks_topic: format!("ansible/{group}/tasks"),
            poller,
        })
    }

    async fn publish(&self, request: &serde_json::Value) -> Result<Instant> {
        let at = Instant::now();
        self.client
            .publish(
                &self.tasks_topic,
                QoS::ExactlyOnce,
                false,
                serde_json::to_vec(request)?,
            )
            .await?;
        Ok(at)
    }

    /// Waits for the next status of one of `tasks`, recording it; returns
    /// the id of a task that just got its final status.
    async fn next_final(&mut self, tasks: &mut HashMap<String, Timing>) -> Result<Option<String>> {
        let arrival = tokio::time::timeout(QUIET_DEADLINE, self.arrivals.recv())
            .await
            .with_context(|| format!("no status for {QUIET_DEADLINE:?}"))?
            .context("the controller lost its broker connection")?;
        let Some(timing) = tasks.get_mut(&arrival.doc.task_id) else {
            return Ok(None);
        };
        timing.statuses += 1;
        if !arrival.doc.is_final() || timing.finished.is_some() {
            return Ok(None);
        }
        if arrival.doc.state != "success" {
            bail!(
                "task {} ended {}: {}",
                arrival.doc.task_id,
                arrival.doc.state,
                arrival.doc.error_message.unwrap_or_default()
            );
        }
        timing.finished = Some(arrival.at);
        Ok(Some(arrival.doc.task_id))
    }

    /// Publishes the requests `batch` at a time, each batch at once and
    /// after every final status of the previous one (one burst when `batch`
    /// covers them all), then waits for all final statuses.
    pub async fn burst(
        &mut self,
        requests: &[serde_json::Value],
        batch: usize,
    ) -> Result<BatchFigures> {
        let mut tasks = HashMap::with_capacity(requests.len());
        let mut done = 0;
        for chunk in requests.chunks(batch.max(1)) {
            for request in chunk {
                let published = self.publish(request).await?;
                tasks.insert(task_id(request)?, Timing::new(published));
            }
            while done < tasks.len() {
                let waited = self.next_final(&mut tasks).await;
                match waited
                    .with_context(|| format!("{done} of {} tasks finished", requests.len()))?
                {
                    Some(_) => done += 1,
                    None => continue,
                }
            }
        }
        Ok(figures(&tasks))
    }

    /// Publishes one request at a time, each after the previous one's final
    /// status: the latency is then the worker's own per-task cost.
    pub async fn sequential(&mut self, requests: &[serde_json::Value]) -> Result<BatchFigures> {
        let mut tasks = HashMap::with_capacity(requests.len());
        for request in requests {
            let id = task_id(request)?;
            tasks.insert(id.clone(), Timing::new(self.publish(request).await?));
            while self.next_final(&mut tasks).await? != Some(id.clone()) {}
        }
        Ok(figures(&tasks))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Timing {
    fn new(published: Instant) -> Self {
        Timing {
            published,
            finished: None,
            statuses: 0,
        }
    }
}

fn task_id(request: &serde_json::Value) -> Result<String> {
    request["task_id"]
        .as_str()
        .map(str::to_owned)
        .context("a request without task_id")
}

fn figures(tasks: &HashMap<String, Timing>) -> BatchFigures {
    let first = tasks.values().map(|t| t.published).min();
    let last = tasks.values().filter_map(|t| t.finished).max();
    let span = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let mut latencies_ms: Vec<f64> = tasks
        .values()
        .filter_map(|t| Some(t.finished?.duration_since(t.published).as_secs_f64() * 1e3))
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    let statuses: usize = tasks.values().map(|t| t.statuses).sum();
    BatchFigures {
        tasks_per_sec: if span > 0.0 {
            tasks.len() as f64 / span
        } else {
            0.0
        },
        latencies_ms,
        statuses_per_task: statuses as f64 / tasks.len().max(1) as f64,
    }
}

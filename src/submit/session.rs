//! The MQTT session of one `submit` or `cancel`: connects with the worker's
//! broker settings under a client id of its own, publishes, waits for the
//! broker's acknowledgements and follows a task's status.
//!
//! The first connection failing is an error (exit 2): a command line should
//! say at once that the broker is unreachable. After that, a lost connection
//! is retried with backoff; rumqttc does not resubscribe (MQTT-NOTES.md), so
//! every ConnAck subscribes again, and a request not yet acknowledged is
//! published again (the worker never runs a task id twice, and the status is
//! retained, so both repeats are harmless).

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::time::Instant;

use super::progress::{Final, Follower};
use super::{ACK_TIMEOUT, SubmitError};
use crate::config::Config;
use crate::mqtt::link::{Backoff, HELD};
use crate::mqtt::options::{self as mqtt_client, mqtt_options};

/// Time allowed for the DISCONNECT to go out at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A task request to publish and, optionally, follow.
pub(super) struct Request {
    /// The task id (for messages).
    pub task_id: String,
    /// `P/G/tasks`.
    pub topic: String,
    /// The request document.
    pub payload: Vec<u8>,
    /// The filter of the task's status (and events), when following it.
    pub filter: Option<String>,
    /// `--wait-timeout`: from the broker's PUBCOMP to the final status.
    pub wait_timeout: Option<Duration>,
}

/// What the event loop reported that the commands care about.
enum Step {
    Connected,
    SubAck(Vec<SubscribeReasonCode>),
    PubAck(PubAckReason),
    PubRec(PubRecReason),
    PubComp,
    Message { topic: String, payload: Vec<u8> },
}

/// One client connection with reconnects.
pub(super) struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    /// `host:port`, for messages.
    broker: String,
    ever_connected: bool,
    up: bool,
    backoff: Backoff,
}

impl Session {
    /// A session for the broker of `config`, under the client id
    /// `ansible-worker-<kind>-<random hex>` with a clean start. It connects on
    /// first use.
    pub fn open(config: &Config, kind: &str) -> Result<Session, SubmitError> {
        let mut options = mqtt_options(config)?;
        options
            .set_client_id(format!(
                "ansible-worker-{kind}-{:012x}",
                fastrand::u64(..) >> 16
            ))
            .set_clean_start(true);
        let (host, port) = config.mqtt.effective_host(&config.broker);
        let (client, eventloop) = mqtt_client::client(options);
        Ok(Session {
            client,
            eventloop,
            broker: format!("{host}:{port}"),
            ever_connected: false,
            up: false,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10), HELD),
        })
    }

    /// Publishes `request` at QoS 2 and waits for the PUBCOMP; when following,
    /// subscribes to the status (and events) first and waits for the SUBACK,
    /// then hands every message to `follower` until a final status arrives.
    /// Returns the final status, or `None` when not following.
    pub async fn submit<W: Write>(
        &mut self,
        request: &Request,
        follower: &mut Follower<W>,
    ) -> Result<Option<Final>, SubmitError> {
        let ack_deadline = Instant::now() + ACK_TIMEOUT;
        let mut wait_deadline = None;
        let mut accepted = false;
        // Published on the current connection (reset on every ConnAck).
        let mut sent = false;
        let mut pending = "connection";
        loop {
            let deadline = if accepted {
                wait_deadline
            } else {
                Some(ack_deadline)
            };
            let Some(step) = until(deadline, self.next()).await else {
                return Err(match request.wait_timeout {
                    Some(after) if accepted => SubmitError::WaitTimeout {
                        task_id: request.task_id.clone(),
                        after,
                    },
                    _ => SubmitError::AckTimeout { what: pending },
                });
            };
            match step? {
                Step::Connected => {
                    sent = false;
                    if let Some(filter) = &request.filter {
                        self.client.try_subscribe(filter, QoS::AtLeastOnce)?;
                        if !accepted {
                            pending = "subscription";
                        }
                    } else if !accepted {
                        self.publish(request)?;
                        (sent, pending) = (true, "request");
                    }
                }
                Step::SubAck(codes) => {
                    if let Some(code) = codes
                        .iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                    {
                        return Err(SubmitError::Refused {
                            what: format!("subscription to {}", subscribed(request)),
                            reason: format!("{code:?}"),
                        });
                    }
                    if !accepted && !sent {
                        self.publish(request)?;
                        (sent, pending) = (true, "request");
                    }
                }
                Step::PubRec(PubRecReason::Success) => {}
                Step::PubRec(PubRecReason::NoMatchingSubscribers) => {
                    return Err(SubmitError::NoSubscribers {
                        what: "request",
                        topic: request.topic.clone(),
                    });
                }
                Step::PubRec(reason) => {
                    return Err(SubmitError::Refused {
                        what: "request".to_owned(),
                        reason: format!("{reason:?}"),
                    });
                }
                Step::PubComp if !accepted => {
                    accepted = true;
                    if request.filter.is_none() {
                        return Ok(None);
                    }
                    follower.accepted();
                    wait_deadline = request.wait_timeout.map(|after| Instant::now() + after);
                }
                Step::Message { topic, payload } => {
                    if let Some(last) = follower.on_message(&topic, &payload) {
                        return Ok(Some(last));
                    }
                }
                Step::PubComp | Step::PubAck(_) => {}
            }
        }
    }

    /// Publishes a cancel at QoS 1 to `topic` and waits for the PUBACK.
    pub async fn cancel(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), SubmitError> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let Some(step) = until(Some(deadline), self.next()).await else {
                return Err(SubmitError::AckTimeout { what: "cancel" });
            };
            match step? {
                Step::Connected => {
                    self.client
                        .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())?;
                }
                Step::PubAck(PubAckReason::Success) => return Ok(()),
                Step::PubAck(PubAckReason::NoMatchingSubscribers) => {
                    return Err(SubmitError::NoSubscribers {
                        what: "cancel",
                        topic: topic.to_owned(),
                    });
                }
                Step::PubAck(reason) => {
                    return Err(SubmitError::Refused {
                        what: "cancel".to_owned(),
                        reason: format!("{reason:?}"),
                    });
                }
                _ => {}
            }
        }
    }

    /// Sends a DISCONNECT (if connected) and waits briefly for it to go out.
    pub async fn close(mut self) {
        if !self.up || self.client.try_disconnect().is_err() {
            return;
        }
        let eventloop = &mut self.eventloop;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    fn publish(&self, request: &Request) -> Result<(), SubmitError> {
        self.client.try_publish(
            &request.topic,
            QoS::ExactlyOnce,
            false,
            request.payload.clone(),
        )?;
        Ok(())
    }

    /// The next event that matters, reconnecting with backoff after the
    /// first successful connect.
    async fn next(&mut self) -> Result<Step, SubmitError> {
        loop {
            let packet = match self.eventloop.poll().await {
                Ok(Event::Incoming(packet)) => packet,
                Ok(Event::Outgoing(_)) => continue,
                Err(e) if !self.ever_connected => {
                    return Err(SubmitError::Connect {
                        broker: self.broker.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    if std::mem::replace(&mut self.up, false) {
                        eprintln!(
                            "ansible-worker: lost the connection to {} ({e}); reconnecting",
                            self.broker
                        );
                    }
                    tokio::time::sleep(self.backoff.next_delay(std::time::Instant::now())).await;
                    continue;
                }
            };
            return Ok(match packet {
                Packet::ConnAck(_) => {
                    if self.ever_connected {
                        eprintln!("ansible-worker: reconnected to {}", self.broker);
                    }
                    (self.ever_connected, self.up) = (true, true);
                    // Only a connection that then holds starts the backoff over.
                    self.backoff.serving(std::time::Instant::now());
                    Step::Connected
                }
                Packet::SubAck(ack) => Step::SubAck(ack.return_codes),
                Packet::PubAck(ack) => Step::PubAck(ack.reason),
                Packet::PubRec(rec) => Step::PubRec(rec.reason),
                Packet::PubComp(_) => Step::PubComp,
                Packet::Publish(publish) => Step::Message {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.to_vec(),
                },
                _ => continue,
            });
        }
    }
}

/// The filter a SUBACK answered.
fn subscribed(request: &Request) -> &str {
    request.filter.as_deref().unwrap_or_default()
}

/// `future`'s output, or `None` once `deadline` (if any) passed.
async fn until<T>(deadline: Option<Instant>, future: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

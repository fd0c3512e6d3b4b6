//! The MQTT connection: the event loop with reconnect backoff,
//! (re)subscription, and inbound dispatch of task requests to intake and the
//! task table. The connection's options come from `options`.
//!
//! rumqttc neither backs off nor resubscribes (MQTT-NOTES.md): after a failed
//! poll this loop sleeps (exponential, capped, with jitter: `link::Backoff`)
//! and polls again; every ConnAck subscribes again (a resumed session may
//! lack the tasks subscription, which a clean shutdown removes). The
//! connection counts as subscribed only once the SUBACK granted the tasks
//! filter, and a broker that cannot share a group is told about once
//! (`link`). The connection state is published on a `watch` channel so the
//! status publisher can catch up after each reconnect, and `/readyz` can say
//! whether tasks can arrive.
//!
//! Nothing received is lost to a crash: against an external broker the
//! session persists (`clean_start = false`, `mqtt.session_expiry`, client id
//! = `worker_id`), and a request is acknowledged only once the task table's
//! journal has recorded what became of it ([`acknowledge`], in arrival
//! order), so the broker redelivers whatever this process had not recorded.
//! The embedded broker gets `clean_start = true`: rumqttd's router panics on
//! a persistent session in a shared group (MQTT-NOTES.md), and it does not
//! outlive this process anyway.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, StateError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::events::EventWindow;
use super::link::{Backoff, Granted, HELD, Sharing, Subscription, shared_available};
use super::topics::Topics;
use super::window::PublishWindow;
use crate::intake::IntakePolicy;
use crate::journal::JournalHealth;
use crate::model::ReplyRoute;
use crate::table::TaskTable;
use crate::transport::LinkState;

/// Everything the event loop needs to hand requests on.
pub struct Inbound {
    /// Where accepted requests go.
    pub table: TaskTable,
    /// Intake rules.
    pub policy: IntakePolicy,
    /// Topic names.
    pub topics: Topics,
    /// Received messages waiting for their acknowledgement.
    pub acks: mpsc::UnboundedSender<PendingAck>,
    /// Room for the status publisher's publishes.
    pub window: PublishWindow,
    /// Room for run events in the client's queue.
    pub events_window: EventWindow,
}

/// A received QoS 1/2 message whose acknowledgement waits for `recorded`.
pub struct PendingAck {
    publish: Publish,
    /// The connection it arrived on: after a reconnect the broker redelivers
    /// it instead.
    generation: u64,
    recorded: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// Acknowledges received messages in arrival order, each once what it caused
/// is recorded (MQTT-NOTES.md: rumqttd stalls a shared group behind a member
/// that does not ack, and drops a client that acks out of order). Ends when
/// the event loop is gone.
pub async fn acknowledge(
    client: AsyncClient,
    mut pending: mpsc::UnboundedReceiver<PendingAck>,
    link: watch::Receiver<LinkState>,
) {
    while let Some(ack) = pending.recv().await {
        if let Some(recorded) = ack.recorded {
            recorded.await;
        }
        let state = *link.borrow();
        if !state.up || state.generation != ack.generation {
            continue;
        }
        if let Err(e) = client.ack(&ack.publish).await {
            tracing::warn!("cannot acknowledge a message: {e}");
        }
    }
}

/// Drives the connection until a DISCONNECT was sent (after
/// `AsyncClient::disconnect`) or `abort` is cancelled. Reconnects with backoff.
pub async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    inbound: Inbound,
    link: watch::Sender<LinkState>,
    abort: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30), HELD);
    let mut sharing = Sharing::default();
    let mut subscription: Option<Subscription> = None;
    // Whether this connection's broker may be asked for the tasks filter.
    let mut may_take_tasks = false;
    let mut journal = inbound.table.journal_health();
    let mut generation = 0;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            Ok(()) = journal.changed() => {
                let health = journal.borrow_and_update().clone();
                let asked = follow_journal(&client, &inbound.topics, &health, may_take_tasks, &link);
                if asked.is_some() {
                    subscription = asked;
                }
                continue;
            }
            _ = abort.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                inbound.window.reset();
                inbound.events_window.reset();
                generation += 1;
                if generation > 1 {
                    inbound.table.metrics().reconnected();
                }
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                // A broker without shared subscriptions disconnects on a
                // `$share` SUBSCRIBE (MQTT 5, 4.8.2): do not ask for it.
                let topics = &inbound.topics;
                may_take_tasks = sharing.observe(
                    topics.shares_tasks(),
                    shared_available(&ack),
                    topics.group(),
                );
                // Nor while the journal cannot record what arrives.
                let with_tasks = may_take_tasks && !journal.borrow().is_failing();
                let asked = subscription.insert(Subscription::new(topics, with_tasks));
                asked.send(&client);
                link.send_replace(LinkState {
                    up: true,
                    generation,
                    subscribed: false,
                });
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => inbound.window.acknowledged(),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = subscription.as_ref().map(|asked| asked.granted(&ack));
                if granted == Some(Granted::Tasks(true)) {
                    backoff.serving(Instant::now());
                    link.send_if_modified(|state| !std::mem::replace(&mut state.subscribed, true));
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let recorded = receive(&inbound, &publish);
                if publish.qos != QoS::AtMostOnce {
                    let _ = inbound.acks.send(PendingAck {
                        publish,
                        generation,
                        recorded,
                    });
                }
            }
            // Packet id 0: a QoS 0 publish, which only events are.
            Ok(Event::Outgoing(Outgoing::Publish(0))) => inbound.events_window.sent(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                link.send_replace(LinkState {
                    up: false,
                    generation,
                    subscribed: false,
                });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                match e {
                    ConnectionError::MqttState(StateError::Unsolicited(pkid)) => {
                        expect_release(&mut eventloop, pkid);
                    }
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SharedSubscriptionNotSupported,
                        ..
                    }) => sharing.refused_on_subscribe(inbound.topics.group()),
                    _ => {}
                }
                link.send_if_modified(|state| {
                    state.subscribed = false;
                    std::mem::replace(&mut state.up, false)
                });
                let delay = backoff.next_delay(Instant::now());
                tracing::warn!("broker connection failed: {e}; retrying in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = abort.cancelled() => return,
                }
            }
        }
    }
}

/// rumqttc forgets at every disconnect which QoS 2 requests it acknowledged
/// (PUBREC) that the broker has not released yet. A broker resuming the
/// session then re-sends the PUBREL, rumqttc calls it unsolicited and drops
/// the connection, and the next connection fails the same way, forever.
/// Telling the client state about that packet id again lets the next
/// connection complete the exchange with a PUBCOMP.
fn expect_release(eventloop: &mut EventLoop, pkid: u16) {
    let mut placeholder = Publish::new("", QoS::ExactlyOnce, Bytes::new(), None);
    placeholder.pkid = pkid;
    let state = &mut eventloop.state;
    // With manual acks this only marks the id as awaiting release; the
    // placeholder it queues as an event is not a real message.
    if state
        .handle_incoming_packet(Packet::Publish(placeholder))
        .is_ok()
    {
        state.events.pop_back();
    }
    tracing::warn!(
        pkid,
        "the broker released a request from before a disconnect"
    );
}

/// Takes requests only while the journal can record them: while it cannot,
/// the tasks filter is unsubscribed, so the broker hands new requests to
/// other members of the group (one already received stays unacknowledged
/// until its task is recorded, or is redelivered after a crash); once
/// commits succeed again, it is subscribed again when the connection is up
/// and the broker may be asked (`may_take_tasks`). Returns the subscription
/// whose SUBACK is now awaited, if it changed.
fn follow_journal(
    client: &AsyncClient,
    topics: &Topics,
    health: &JournalHealth,
    may_take_tasks: bool,
    link: &watch::Sender<LinkState>,
) -> Option<Subscription> {
    match health {
        JournalHealth::Failing(reason) => {
            tracing::warn!(
                "not taking task requests: the task journal cannot be written ({reason})"
            );
            let filter = topics.tasks_filter();
            if let Err(e) = client.try_unsubscribe(&filter) {
                tracing::error!("cannot unsubscribe from {filter}: {e}");
            }
            // The SUBACK of an earlier SUBSCRIBE with the tasks filter no
            // longer counts; the resubscription's sets it again.
            link.send_if_modified(|state| std::mem::replace(&mut state.subscribed, false));
            Some(Subscription::new(topics, false))
        }
        JournalHealth::Writable => {
            tracing::info!("taking task requests again: the task journal is writable");
            if !(link.borrow().up && may_take_tasks) {
                return None;
            }
            let asked = Subscription::new(topics, true);
            asked.send(client);
            Some(asked)
        }
    }
}

/// Hands a message on; returns what its acknowledgement must wait for.
fn receive(
    inbound: &Inbound,
    publish: &Publish,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let topic = String::from_utf8_lossy(&publish.topic);
    if let Some(task_id) = inbound.topics.cancelled_task(&topic) {
        crate::transport::cancel(&inbound.table, task_id, &publish.payload);
        return None;
    }
    if topic != inbound.topics.tasks() {
        tracing::debug!(%topic, "ignoring a message on an unexpected topic");
        return None;
    }
    crate::transport::admit(
        &inbound.table,
        &inbound.policy,
        &publish.payload,
        |task_id| reply_route(inbound, publish, task_id),
    )
}

/// Characters of an ignored Response Topic shown in the log.
const SHOWN_TOPIC_CHARS: usize = 120;

/// The reply route a request asked for with its MQTT 5 Response Topic, if
/// that topic may be used (PROTOCOL.md); an unusable one is logged and
/// counted, and the task goes on without replies.
fn reply_route(inbound: &Inbound, publish: &Publish, task_id: &str) -> Option<ReplyRoute> {
    let properties = publish.properties.as_ref()?;
    let topic = properties.response_topic.as_deref()?;
    if let Err(why) = inbound.topics.check_response_topic(topic) {
        inbound.table.metrics().response_topic_ignored();
        let shown: String = topic.chars().take(SHOWN_TOPIC_CHARS).collect();
        tracing::warn!(task_id, topic = ?shown, "ignoring the request's response topic: {why}");
        return None;
    }
    Some(ReplyRoute {
        topic: topic.to_owned(),
        correlation: properties.correlation_data.clone(),
    })
}

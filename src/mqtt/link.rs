//! What the broker grants one connection, and when to try again: the
//! SUBSCRIBE each connection sends ([`Subscription`]) and what its SUBACK
//! granted, whether the broker can share a group at all ([`Sharing`], from
//! CONNACK's *Shared Subscription Available*), and when the reconnect
//! backoff ([`Backoff`]) starts over. Pure decisions and the log lines a user acts on; sending
//! and the event loop stay in `client.rs`.
//!
//! A connection that the broker accepts but whose subscription it refuses
//! (an ACL, or a broker without shared subscriptions that answers a `$share`
//! SUBSCRIBE with a DISCONNECT) must neither look ready nor turn into a
//! reconnect loop: the backoff goes back to its first step only after a
//! connection was granted the tasks filter and held it for a while.

use std::time::Duration;

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, SubAck, SubscribeReasonCode};

use super::topics::Topics;
pub use crate::transport::backoff::Backoff;

/// How long a connection must have held its tasks subscription before its
/// loss starts the backoff from the first step again. Long enough that a
/// broker that grants and then drops the connection at once is retried at a
/// growing delay, short enough that an ordinary broker restart after a
/// healthy stretch is retried quickly.
pub const HELD: Duration = Duration::from_secs(10);

/// What the broker said in its CONNACK about shared subscriptions:
/// `Some(false)` for none, `Some(true)` for available, `None` when it did
/// not say (which MQTT 5 defines as available, 3.2.2.3.13).
pub fn shared_available(ack: &ConnAck) -> Option<bool> {
    ack.properties
        .as_ref()
        .and_then(|p| p.shared_subscription_available)
        .map(|available| available != 0)
}

/// Whether this broker can share the group's requests, as far as it has
/// told, for a worker whose tasks filter is `$share/...`; and telling the
/// user once per change, not once per connection, when it cannot.
#[derive(Debug, Default)]
pub struct Sharing {
    /// The broker dropped a connection over a `$share` filter although its
    /// CONNACK did not say it had none; believed until a CONNACK says
    /// otherwise, so that later connections do not ask again.
    refused: bool,
    told_unavailable: bool,
}

impl Sharing {
    /// Notes a CONNACK's `advertised` sharing for a worker that `wanted` to
    /// share; returns whether to ask for the tasks filter.
    pub fn observe(&mut self, wanted: bool, advertised: Option<bool>, group: &str) -> bool {
        if advertised == Some(true) {
            self.refused = false;
        }
        let unavailable = wanted && (advertised == Some(false) || self.refused);
        self.tell(unavailable, group);
        !unavailable
    }

    /// The broker dropped the connection over the `$share` filter
    /// (DISCONNECT with *Shared Subscriptions not supported*).
    pub fn refused_on_subscribe(&mut self, group: &str) {
        self.refused = true;
        self.tell(true, group);
    }

    fn tell(&mut self, unavailable: bool, group: &str) {
        if unavailable == std::mem::replace(&mut self.told_unavailable, unavailable) {
            return;
        }
        if unavailable {
            tracing::error!(
                "this broker cannot share a group: it has no shared subscriptions, so \
                 workers of group {group:?} cannot split its requests, and this worker \
                 takes none and stays not ready; to run a single worker of the group on \
                 this broker, set `worker.shared_subscription = false`"
            );
        } else {
            tracing::info!("the broker now offers shared subscriptions");
        }
    }
}

/// Which of the worker's filters one entry of a SUBSCRIBE is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Tasks,
    Cancel,
}

/// The one SUBSCRIBE a connection sends, so that its SUBACK's reason codes
/// (one per filter, in order) can be read per filter.
#[derive(Debug, Clone)]
pub struct Subscription {
    filters: Vec<(Role, String, QoS)>,
}

/// What one SUBACK granted.
#[derive(Debug, PartialEq, Eq)]
pub enum Granted {
    /// The SUBACK answers a SUBSCRIBE of another connection (its length
    /// differs from this connection's): nothing to conclude from it.
    Stale,
    /// Whether the tasks filter was granted (false when refused or not asked
    /// for).
    Tasks(bool),
}

impl Subscription {
    /// The tasks filter (when `with_tasks`) and the cancel filter.
    pub fn new(topics: &Topics, with_tasks: bool) -> Self {
        let mut filters = Vec::with_capacity(2);
        if with_tasks {
            filters.push((Role::Tasks, topics.tasks_filter(), QoS::ExactlyOnce));
        }
        filters.push((Role::Cancel, topics.cancel_filter(), QoS::AtLeastOnce));
        Subscription { filters }
    }

    /// Queues the SUBSCRIBE on `client`.
    pub fn send(&self, client: &AsyncClient) {
        let filters = self
            .filters
            .iter()
            .map(|(_, path, qos)| Filter::new(path.clone(), *qos));
        if let Err(e) = client.try_subscribe_many(filters) {
            tracing::error!("cannot subscribe: {e}");
        }
    }

    /// Reads `ack`, logging each refused filter with what it means for the
    /// user.
    pub fn granted(&self, ack: &SubAck) -> Granted {
        if ack.return_codes.len() != self.filters.len() {
            tracing::debug!(reasons = ?ack.return_codes, "a SUBACK of an earlier connection");
            return Granted::Stale;
        }
        // Logged only when the broker gave one.
        let reason_string = ack
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.as_deref());
        let mut tasks = false;
        for ((role, filter, _), code) in self.filters.iter().zip(&ack.return_codes) {
            match (code, role) {
                (SubscribeReasonCode::Success(qos), Role::Tasks) => {
                    tasks = true;
                    tracing::info!(%filter, ?qos, "subscribed to task requests");
                }
                (SubscribeReasonCode::Success(qos), Role::Cancel) => {
                    tracing::debug!(%filter, ?qos, "following cancel requests");
                }
                (refusal, Role::Tasks) => tracing::error!(
                    %filter,
                    reason = ?refusal,
                    broker_says = reason_string,
                    "the broker refused the subscription to task requests ({}): \
                     this worker takes no tasks and stays not ready",
                    meaning(refusal)
                ),
                (refusal, Role::Cancel) => tracing::warn!(
                    %filter,
                    reason = ?refusal,
                    broker_says = reason_string,
                    "the broker refused the subscription to cancel requests ({}): \
                     cancels sent over MQTT will not reach this worker",
                    meaning(refusal)
                ),
            }
        }
        Granted::Tasks(tasks)
    }
}

/// What a refusal means for the user, and where to look.
fn meaning(code: &SubscribeReasonCode) -> &'static str {
    match code {
        SubscribeReasonCode::NotAuthorized => {
            "not authorized: check the broker's ACL for the worker's MQTT user \
             (mqtt.username) on that filter"
        }
        SubscribeReasonCode::TopicFilterInvalid => {
            "the broker does not accept that filter: check its ACL or topic rules \
             for the worker's MQTT user"
        }
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            "the broker cannot share a group: set `worker.shared_subscription = false` \
             to run a single worker"
        }
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            "the broker does not accept wildcard filters"
        }
        SubscribeReasonCode::QuotaExceeded => "a quota of the broker is exhausted",
        _ => "see the broker's log",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, ConnectReturnCode, SubAckProperties};
    use std::time::Instant;

    fn backoff() -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut backoff = backoff();
        let now = Instant::now();
        let first = backoff.next_delay(now);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let later: Vec<Duration> = (0..10).map(|_| backoff.next_delay(now)).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(later.last().unwrap() >= &Duration::from_millis(500));
    }

    #[test]
    fn connections_that_never_get_their_subscription_keep_backing_off() {
        // A broker that accepts every CONNECT and drops the SUBSCRIBE: the
        // delay grows as if the connects had failed.
        let mut backoff = backoff();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let delay = backoff.next_delay(now);
            delays.push(delay);
            now += delay + Duration::from_millis(5);
        }
        assert!(delays[5] >= Duration::from_millis(500), "{delays:?}");
    }

    #[test]
    fn a_subscription_held_long_enough_starts_the_backoff_over() {
        let mut backoff = backoff();
        let start = Instant::now();
        for _ in 0..6 {
            backoff.next_delay(start);
        }
        backoff.serving(start);
        let delay = backoff.next_delay(start + Duration::from_secs(10));
        assert!(delay <= Duration::from_millis(100), "{delay:?}");
    }

    #[test]
    fn a_subscription_lost_at_once_does_not_reset_the_backoff() {
        let mut backoff = backoff();
        let start = Instant::now();
        for _ in 0..6 {
            backoff.next_delay(start);
        }
        backoff.serving(start);
        let delay = backoff.next_delay(start + Duration::from_secs(2));
        assert!(delay >= Duration::from_millis(500), "{delay:?}");
        // Serving counts for the connection it was seen on only.
        let delay = backoff.next_delay(start + Duration::from_secs(60));
        assert!(delay >= Duration::from_millis(500), "{delay:?}");
    }

    fn connack(shared: Option<u8>) -> ConnAck {
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: Some(ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                max_qos: None,
                retain_available: None,
                max_packet_size: None,
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: shared,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }
    }

    #[test]
    fn the_connack_says_whether_the_broker_shares() {
        assert_eq!(shared_available(&connack(None)), None);
        assert_eq!(shared_available(&connack(Some(1))), Some(true));
        assert_eq!(shared_available(&connack(Some(0))), Some(false));
        let bare = ConnAck {
            properties: None,
            ..connack(None)
        };
        assert_eq!(shared_available(&bare), None);
    }

    #[test]
    fn a_broker_that_cannot_share_is_reported_once_per_change() {
        let mut sharing = Sharing::default();
        assert!(!sharing.observe(true, Some(false), "g"));
        assert!(sharing.told_unavailable);
        assert!(
            !sharing.observe(true, Some(false), "g"),
            "on every reconnect"
        );
        assert!(sharing.observe(true, Some(true), "g"));
        assert!(!sharing.told_unavailable);
        assert!(sharing.observe(false, Some(false), "g"), "not wanted: fine");
        assert!(!sharing.told_unavailable);
    }

    #[test]
    fn a_disconnect_over_share_is_believed_until_a_connack_says_otherwise() {
        // A broker that does not say, then drops the `$share` SUBSCRIBE.
        let mut sharing = Sharing::default();
        assert!(sharing.observe(true, None, "g"));
        sharing.refused_on_subscribe("g");
        assert!(sharing.told_unavailable);
        assert!(!sharing.observe(true, None, "g"), "not asked for again");
        assert!(sharing.told_unavailable, "and not reported as fixed");
        assert!(sharing.observe(true, Some(true), "g"));
    }

    fn topics(shared: bool) -> Topics {
        Topics::new("ansible", "lab", "w1", shared, false)
    }

    fn suback(codes: Vec<SubscribeReasonCode>) -> SubAck {
        SubAck {
            pkid: 1,
            return_codes: codes,
            properties: Some(SubAckProperties {
                reason_string: None,
                user_properties: Vec::new(),
            }),
        }
    }

    #[test]
    fn the_tasks_filter_counts_only_when_granted() {
        let both = Subscription::new(&topics(true), true);
        let granted = SubscribeReasonCode::Success(QoS::ExactlyOnce);
        let cancel = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert_eq!(
            both.granted(&suback(vec![granted, cancel])),
            Granted::Tasks(true)
        );
        assert_eq!(
            both.granted(&suback(vec![SubscribeReasonCode::NotAuthorized, cancel])),
            Granted::Tasks(false)
        );
        assert_eq!(
            both.granted(&suback(vec![granted, SubscribeReasonCode::NotAuthorized])),
            Granted::Tasks(true),
            "cancels refused: tasks still arrive"
        );
        assert_eq!(both.granted(&suback(vec![cancel])), Granted::Stale);
    }

    #[test]
    fn without_sharing_only_the_cancel_filter_is_asked_for() {
        let cancel_only = Subscription::new(&topics(true), false);
        assert_eq!(cancel_only.filters.len(), 1);
        assert_eq!(cancel_only.filters[0].1, "ansible/lab/tasks/+/cancel");
        let cancel = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert_eq!(
            cancel_only.granted(&suback(vec![cancel])),
            Granted::Tasks(false)
        );
    }
}

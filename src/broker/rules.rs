//! Who may connect to the embedded broker and what an outside client may
//! publish there: the front door's decisions, kept apart from its relaying.

use std::collections::BTreeMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

pub use crate::config::BrokerRole as Role;
use crate::config::{BrokerConfig, Secret};
use crate::metrics::{BrokerRefusal, Metrics};
use crate::mqtt::topics::Topics;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The client id is reserved for the worker.
    ReservedId,
    /// A login is required and this one is wrong or missing.
    BadLogin,
    /// The Will would be published where this client may not publish.
    Will,
}

impl ConnectRefusal {
    /// The MQTT 5 CONNACK reason code.
    pub fn v5_code(self) -> u8 {
        match self {
            ConnectRefusal::ReservedId => super::packets::CLIENT_ID_NOT_VALID,
            ConnectRefusal::BadLogin => super::packets::BAD_LOGIN,
            ConnectRefusal::Will => super::packets::NOT_AUTHORIZED,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code.
    pub fn v4_code(self) -> u8 {
        match self {
            ConnectRefusal::ReservedId => super::packets::V4_ID_REJECTED,
            ConnectRefusal::BadLogin => super::packets::V4_BAD_LOGIN,
            ConnectRefusal::Will => super::packets::V4_NOT_AUTHORIZED,
        }
    }
}

/// The front door's rules for outside clients.
#[derive(Debug)]
pub struct Rules {
    reserved_ids: Vec<String>,
    users: BTreeMap<String, Secret>,
    roles: BTreeMap<String, Role>,
    topics: Topics,
    max_payload_size: usize,
    metrics: Arc<Metrics>,
}

impl Rules {
    /// Rules for `config`, protecting the worker whose own topics are
    /// `topics` and whose client id is `worker_id` (and its statuses' link's,
    /// [`super::local::client_id`]).
    pub fn new(
        config: &BrokerConfig,
        topics: Topics,
        worker_id: &str,
        metrics: Arc<Metrics>,
    ) -> Rules {
        Rules {
            reserved_ids: vec![worker_id.to_owned(), super::local::client_id(worker_id)],
            users: config.users.clone(),
            roles: config.roles.clone(),
            topics,
            max_payload_size: config.max_payload_size,
            metrics,
        }
    }

    /// Largest remaining length of a packet passed on.
    pub fn max_payload_size(&self) -> usize {
        self.max_payload_size
    }

    /// The role of a client connecting as `client_id` with `login` and a
    /// Will on `will_topic`, or why it is refused (logged and counted). The
    /// broker publishes a Will on the client's behalf, so it follows the
    /// client's publishing rules.
    pub fn admit(
        &self,
        client_id: &str,
        login: Option<(&str, &str)>,
        will_topic: Option<&str>,
    ) -> Result<Role, ConnectRefusal> {
        let role = self.login(client_id, login)?;
        if let Some((topic, why)) =
            will_topic.and_then(|topic| Some((topic, self.may_not_publish(role, topic)?)))
        {
            self.refused_publish(client_id, topic, why);
            return Err(ConnectRefusal::Will);
        }
        Ok(role)
    }

    /// Why a client of `role` may not publish to `topic`, if it may not.
    pub fn may_not_publish(&self, role: Role, topic: &str) -> Option<BrokerRefusal> {
        match role {
            Role::Observer => Some(BrokerRefusal::Role),
            Role::Controller if self.topics.worker_only(topic) => Some(BrokerRefusal::WorkerTopic),
            Role::Controller => None,
        }
    }

    fn login(&self, client_id: &str, login: Option<(&str, &str)>) -> Result<Role, ConnectRefusal> {
        if self.reserved_ids.iter().any(|id| id == client_id) {
            tracing::warn!(
                client_id,
                "embedded broker refused a client using the worker's client id"
            );
            self.metrics.broker_refused(BrokerRefusal::ClientId);
            return Err(ConnectRefusal::ReservedId);
        }
        if self.users.is_empty() {
            return Ok(Role::Controller);
        }
        let known = login.and_then(|(user, password)| {
            let expected = self.users.get(user)?;
            bool::from(expected.expose().as_bytes().ct_eq(password.as_bytes())).then_some(user)
        });
        match known {
            Some(user) => Ok(self.roles.get(user).copied().unwrap_or(Role::Controller)),
            None => {
                tracing::warn!(
                    client_id,
                    user = login.map(|(user, _)| user),
                    "embedded broker refused a wrong or missing login"
                );
                self.metrics.broker_refused(BrokerRefusal::Login);
                Err(ConnectRefusal::BadLogin)
            }
        }
    }

    /// Logs and counts a refused PUBLISH.
    pub fn refused_publish(&self, client_id: &str, topic: &str, why: BrokerRefusal) {
        let reason = match why {
            BrokerRefusal::WorkerTopic => "only the worker publishes there",
            BrokerRefusal::Role => "the observer role does not publish",
            BrokerRefusal::TooLarge => "larger than max_payload_size",
            BrokerRefusal::ClientId | BrokerRefusal::Login => "not allowed",
        };
        tracing::warn!(
            client_id,
            topic,
            "embedded broker refused a publish: {reason}"
        );
        self.metrics.broker_refused(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(users: &[(&str, &str)], roles: &[(&str, Role)]) -> Rules {
        let config = BrokerConfig {
            enabled: true,
            listen: "127.0.0.1:1883".parse().unwrap(),
            listen_v4: None,
            max_payload_size: 1024,
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), Secret::new(*p)))
                .collect(),
            roles: roles.iter().map(|(u, r)| (u.to_string(), *r)).collect(),
        };
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        Rules::new(&config, topics, "w1", Arc::new(Metrics::default()))
    }

    #[test]
    fn the_workers_ids_are_reserved() {
        let open = rules(&[], &[]);
        for id in ["w1", "w1:statuses"] {
            assert_eq!(open.admit(id, None, None), Err(ConnectRefusal::ReservedId));
        }
        assert_eq!(open.admit("w2", None, None), Ok(Role::Controller));
        assert_eq!(open.admit("", Some(("x", "y")), None), Ok(Role::Controller));
    }

    #[test]
    fn logins_give_roles_and_wrong_ones_are_refused() {
        let rules = rules(&[("ctl", "a"), ("obs", "b")], &[("obs", Role::Observer)]);
        assert_eq!(
            rules.admit("c", Some(("ctl", "a")), None),
            Ok(Role::Controller)
        );
        assert_eq!(
            rules.admit("c", Some(("obs", "b")), None),
            Ok(Role::Observer)
        );
        for login in [
            None,
            Some(("ctl", "b")),
            Some(("ctl", "")),
            Some(("x", "a")),
        ] {
            assert_eq!(rules.admit("c", login, None), Err(ConnectRefusal::BadLogin));
        }
    }

    #[test]
    fn a_will_follows_the_publishing_rules() {
        let rules = rules(&[("ctl", "a"), ("obs", "b")], &[("obs", Role::Observer)]);
        let ctl = Some(("ctl", "a"));
        let presence = Some("ansible/lab/workers/w1");
        assert_eq!(rules.admit("c", ctl, presence), Err(ConnectRefusal::Will));
        assert_eq!(
            rules.admit("c", ctl, Some("ansible/lab/tasks")),
            Ok(Role::Controller)
        );
        let obs = Some(("obs", "b"));
        assert_eq!(
            rules.admit("c", obs, Some("x/y")),
            Err(ConnectRefusal::Will)
        );
        assert_eq!(rules.admit("c", obs, None), Ok(Role::Observer));
    }
}

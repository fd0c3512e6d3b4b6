//! Checked stage of the two sections that open listeners in this process:
//! `[broker]` (the embedded MQTT broker, its logins and roles) and `[http]`
//! (dashboard, API and health). The rest of the checked stage is `check`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::check::Checker;
use super::raw::{RawBroker, RawHttp};
use super::{BrokerConfig, BrokerRole, HttpConfig, Secret};

impl Checker<'_> {
    /// `[broker]`: the embedded broker's listeners, limits, logins and roles.
    pub(super) fn broker(&mut self, raw: RawBroker) -> BrokerConfig {
        let listen = self.socket_addr(
            "broker.listen",
            raw.listen,
            SocketAddr::from(([127, 0, 0, 1], 1883)),
        );
        let listen_v4 = raw
            .listen_v4
            .map(|addr| self.socket_addr("broker.listen_v4", Some(addr), listen));
        if listen_v4 == Some(listen) && listen.port() != 0 {
            self.invalid(
                "broker.listen_v4",
                format!("{listen} is also broker.listen"),
            );
        }
        let max_payload_size = self.at_least(
            "broker.max_payload_size",
            raw.max_payload_size.unwrap_or(1_048_576),
            1024,
        );
        let mut users = BTreeMap::new();
        for (name, password) in raw.users {
            if name.is_empty() {
                self.invalid("broker.users", "a user name must not be empty");
            }
            users.insert(name, Secret(password));
        }
        let mut roles = BTreeMap::new();
        for (name, role) in raw.roles {
            let key = format!("broker.roles.{name}");
            if !users.contains_key(&name) {
                self.invalid(&key, format!("{name:?} is not in [broker.users]"));
            }
            match role.as_str() {
                "controller" => roles.insert(name, BrokerRole::Controller),
                "observer" => roles.insert(name, BrokerRole::Observer),
                other => {
                    self.invalid(
                        &key,
                        format!("{other:?} is not a role (controller, observer)"),
                    );
                    None
                }
            };
        }
        BrokerConfig {
            enabled: raw.enabled.unwrap_or(false),
            listen,
            listen_v4,
            max_payload_size,
            users,
            roles,
        }
    }

    /// `[http]`: the dashboard's listener, token and accepted host names.
    pub(super) fn http(&mut self, raw: RawHttp, broker: &BrokerConfig) -> HttpConfig {
        let enabled = raw.enabled.unwrap_or(false);
        let listen = self.socket_addr(
            "http.listen",
            raw.listen,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        );
        let token = self.not_empty("http.token", raw.token).map(Secret);
        let broker_addrs = [Some(broker.listen), broker.listen_v4];
        if enabled && broker.enabled && listen.port() != 0 && broker_addrs.contains(&Some(listen)) {
            self.invalid(
                "http.listen",
                format!("{listen} is also a broker listen address"),
            );
        }
        let token_for_reads = raw.token_for_reads.unwrap_or(false);
        if token_for_reads && token.is_none() {
            self.invalid("http.token_for_reads", "needs http.token".to_owned());
        }
        let allowed_hosts = raw
            .allowed_hosts
            .unwrap_or_default()
            .into_iter()
            .map(|host| {
                let bad = host.is_empty()
                    || host
                        .chars()
                        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
                if bad {
                    // `_` is not in DNS host names, but Docker Compose service names have it.
                    self.invalid(
                        "http.allowed_hosts",
                        format!("{host:?} is not a host name (letters, digits, '.', '-', '_')"),
                    );
                }
                host.to_ascii_lowercase()
            })
            .collect();
        HttpConfig {
            enabled,
            listen,
            token,
            token_for_reads,
            allowed_hosts,
        }
    }
}

//! The embedded MQTT broker (rumqttd), for a single node that needs nothing
//! else.
//!
//! It owns the translation of `[broker]` into a `rumqttd::Config`, starting
//! the broker on its own thread, and the checks that keep the process from
//! running half-alive (MQTT-NOTES.md): a listener whose port is taken fails
//! startup with a clear error (rumqttd itself only logs it), and a panic on any
//! broker thread ends the whole process with a logged reason, so a supervisor
//! restarts a healthy appliance. The worker talks to it over loopback like to
//! any other broker; nothing here knows about tasks.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings, Strategy};

use crate::config::BrokerConfig;

/// Name of the MQTT 5 listener's thread.
const V5_THREAD: &str = "broker-v5";
/// Name of the MQTT 3.1.1 listener's thread.
const V4_THREAD: &str = "broker-v4";
/// Prefix of rumqttd's router thread name.
const ROUTER_THREAD_PREFIX: &str = "router-";
/// Exit code when a broker thread panicked (EX_SOFTWARE).
const PANIC_EXIT_CODE: i32 = 70;
/// How long the listeners get to accept connections after start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener address cannot be bound (typically: already in use).
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        /// The listener address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker thread could not be started.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    /// A listener did not accept connections in time.
    #[error("embedded broker listener {0} did not come up")]
    NotReady(SocketAddr),
}

/// Starts the broker on its own thread and returns once every listener
/// accepts connections. Installs the panic policy for broker threads.
/// `requests_topic` is where the worker's task requests arrive.
pub fn start(config: &BrokerConfig, requests_topic: &str) -> Result<(), BrokerError> {
    let listeners: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(config.listen_v4)
        .collect();
    // rumqttd logs a taken port and carries on; find out first.
    for addr in &listeners {
        TcpListener::bind(addr).map_err(|source| BrokerError::Bind {
            addr: *addr,
            source,
        })?;
    }
    install_panic_policy();
    let rumqttd_config = rumqttd_config(config, requests_topic);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    for addr in listeners {
        wait_until_accepting(addr)?;
        tracing::info!(%addr, "embedded broker listening");
    }
    Ok(())
}

fn wait_until_accepting(addr: SocketAddr) -> Result<(), BrokerError> {
    let target = loopback_for(addr);
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady(addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where to connect to reach a listener bound to `addr` (a wildcard address
/// is reached over loopback).
pub fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

/// A panic on a broker thread leaves a process whose ports are open but whose
/// broker no longer works; end the process instead. Other panics keep the
/// default behaviour.
fn install_panic_policy() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name == V5_THREAD || name == V4_THREAD || name.starts_with(ROUTER_THREAD_PREFIX) {
            tracing::error!(
                thread = name,
                "embedded broker thread panicked: {info}; exiting"
            );
            eprintln!("ansible-worker: embedded broker thread {name} panicked; exiting");
            std::process::exit(PANIC_EXIT_CODE);
        }
    }));
}

/// The rumqttd configuration for `[broker]`, with task requests arriving on
/// `requests_topic`.
fn rumqttd_config(config: &BrokerConfig, requests_topic: &str) -> rumqttd::Config {
    let auth = (!config.users.is_empty()).then(|| {
        config
            .users
            .iter()
            .map(|(user, password)| (user.clone(), password.expose().to_owned()))
            .collect::<HashMap<_, _>>()
    });
    let server = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: config.max_payload_size,
            max_inflight_count: 100,
            auth: auth.clone(),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut v5 = HashMap::new();
    v5.insert("v5".to_owned(), server(V5_THREAD, config.listen));
    let v4 = config.listen_v4.map(|listen| {
        let mut v4 = HashMap::new();
        v4.insert("v4".to_owned(), server(V4_THREAD, listen));
        v4
    });
    // Segments hold delivered messages per filter in memory, each message
    // pinning the whole read buffer it arrived in, and a subscriber that
    // falls behind the oldest segment silently loses what fell off. Status
    // filters: small, so the broker stays small after a burst, yet room for a
    // maximum-size payload per segment and thousands of statuses over the
    // 4 + 1 segments. Requests: 4 times that, since a burst is published
    // faster than the worker records it, and a lost request is a lost task.
    let max_segment_size = (1024 * 1024).max(config.max_payload_size);
    let requests = SegmentConfig {
        max_segment_size: 4 * max_segment_size,
        max_segment_count: 4,
    };
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            // Generous: a client refused here and retrying poisons the
            // listener (MQTT-NOTES.md).
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size,
            max_segment_count: 4,
            custom_segment: Some(HashMap::from([(requests_topic.to_owned(), requests)])),
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        },
        v4,
        v5: Some(v5),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn broker_config() -> BrokerConfig {
        BrokerConfig {
            enabled: true,
            listen: "127.0.0.1:1883".parse().unwrap(),
            listen_v4: Some("0.0.0.0:1882".parse().unwrap()),
            max_payload_size: 1024 * 1024,
            users: Default::default(),
        }
    }

    #[test]
    fn listeners_limits_and_segments_come_from_the_config() {
        let config = rumqttd_config(&broker_config(), "ansible/lab/tasks");
        let v5 = &config.v5.as_ref().unwrap()["v5"];
        assert_eq!(v5.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(v5.connections.max_payload_size, 1024 * 1024);
        assert!(v5.connections.auth.is_none());
        let v4 = &config.v4.as_ref().unwrap()["v4"];
        assert_eq!(v4.name, V4_THREAD);
        assert!(config.router.max_connections >= 1000);
        let segment = config.router.max_segment_size;
        assert!(segment >= v5.connections.max_payload_size);
        assert!(segment * (config.router.max_segment_count + 1) >= 4 * 1024 * 1024);
        // The request filter keeps a burst of 10,000 requests of 1 KiB.
        let requests = &config.router.custom_segment.as_ref().unwrap()["ansible/lab/tasks"];
        assert!(requests.max_segment_size * requests.max_segment_count >= 10_000 * 1024);
    }

    #[test]
    fn users_become_login_on_every_listener() {
        let mut broker = broker_config();
        broker
            .users
            .insert("worker".into(), Secret::new("pw".to_owned()));
        let config = rumqttd_config(&broker, "ansible/lab/tasks");
        for listeners in [config.v5.unwrap(), config.v4.unwrap()] {
            for server in listeners.values() {
                let auth = server.connections.auth.as_ref().unwrap();
                assert_eq!(auth.get("worker").map(String::as_str), Some("pw"));
            }
        }
    }

    #[test]
    fn a_taken_port_fails_start_with_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = broker_config();
        config.listen = taken.local_addr().unwrap();
        config.listen_v4 = None;
        let error = start(&config, "ansible/lab/tasks").unwrap_err();
        assert!(matches!(error, BrokerError::Bind { .. }));
        assert!(error.to_string().contains(&config.listen.to_string()));
    }

    #[test]
    fn wildcard_listeners_are_reached_over_loopback() {
        let addr: SocketAddr = "0.0.0.0:1882".parse().unwrap();
        assert_eq!(loopback_for(addr), "127.0.0.1:1882".parse().unwrap());
    }
}

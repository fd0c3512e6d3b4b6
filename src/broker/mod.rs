//! The embedded MQTT broker (rumqttd), for a single node that needs nothing
//! else.
//!
//! It owns the translation of `[broker]` into a `rumqttd::Config`, starting
//! the broker on its own thread, and the checks that keep the process from
//! running half-alive (MQTT-NOTES.md): a listener whose port is taken fails
//! startup with a clear error (rumqttd itself only logs it), and a panic on any
//! broker thread ends the whole process with a logged reason, so a supervisor
//! restarts a healthy appliance (save the one panic that loses only a
//! client's connection, see `install_panic_policy`). rumqttd itself listens
//! only on private loopback ports: outside clients reach it through the
//! front door (`front`), which enforces the rules of `rules`, while the
//! worker's own connection goes to the private MQTT 5 port directly, where
//! no impostor can follow (the front door refuses the worker's client id),
//! and its statuses take an in-process link (`local`).

mod front;
pub mod local;
mod nodelay;
mod packets;
mod rules;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings, Strategy};

use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::mqtt::topics::Topics;

/// Name of the MQTT 5 listener's thread.
const V5_THREAD: &str = "broker-v5";
/// Name of the MQTT 3.1.1 listener's thread.
const V4_THREAD: &str = "broker-v4";
/// Prefix of rumqttd's router thread name.
const ROUTER_THREAD_PREFIX: &str = "router-";
/// Exit code when a broker thread panicked (EX_SOFTWARE).
const PANIC_EXIT_CODE: i32 = 70;
/// Size of one segment of a filter's in-memory log (see `rumqttd_config`).
const SEGMENT_SIZE: usize = 256 * 1024;
/// How long the listeners get to accept connections after start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener address cannot be bound (typically: already in use).
    #[error("embedded broker cannot listen on {addr}: {error}")]
    Bind {
        /// The listener address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The broker thread could not be started.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    /// A listener did not accept connections in time.
    #[error("embedded broker listener {0} did not come up")]
    NotReady(SocketAddr),
}

/// The running embedded broker, as the worker sees it.
#[derive(Debug)]
pub struct Embedded {
    /// rumqttd's private MQTT 5 listener, for the worker's own connection.
    pub private: SocketAddr,
    /// The in-process way for the worker's statuses, until taken.
    pub status_link: Option<local::StatusLink>,
    traffic: Arc<front::Traffic>,
}

impl Embedded {
    /// Waits, at most `cap`, until the front door has passed nothing on to
    /// outside clients for `quiet`, counted from this call: the process ends
    /// the broker with it, so the statuses the worker published last must
    /// first have left for their subscribers.
    pub async fn drain(&self, quiet: Duration, cap: Duration) {
        let started = Instant::now();
        while started.elapsed() < cap
            && (started.elapsed() < quiet || self.traffic.quiet_for() < quiet)
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// How often [`Embedded::drain`] looks at the traffic.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Starts the broker on its own thread behind the front door and returns
/// once every listener accepts connections, with the private address the
/// worker's own connection uses. Installs the panic policy for broker
/// threads. Must be called within the Tokio runtime (the front door runs
/// there). `topics` and `worker_id` are the worker's, which outside clients
/// may not use.
pub fn start(
    config: &BrokerConfig,
    topics: &Topics,
    worker_id: &str,
    metrics: Arc<Metrics>,
) -> Result<Embedded, BrokerError> {
    let public: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(config.listen_v4)
        .collect();
    let mut listeners = Vec::new();
    for addr in &public {
        listeners.push(bind_public(*addr)?);
    }
    let private_v5 = free_loopback_port()?;
    let private_v4 = match config.listen_v4 {
        Some(_) => Some(free_loopback_port()?),
        None => None,
    };
    install_panic_policy();
    let rumqttd_config = rumqttd_config(config, private_v5, private_v4, &topics.tasks());
    let link_id = local::client_id(worker_id);
    let (linked, link) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            let _ = linked.send(local::StatusLink::open(&broker, &link_id));
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    let status_link = link.recv().ok().flatten();
    let private: Vec<SocketAddr> = std::iter::once(private_v5).chain(private_v4).collect();
    for addr in &private {
        wait_until_accepting(*addr)?;
    }
    if nodelay::on_listeners(&private) < private.len() {
        tracing::warn!(
            "cannot set TCP_NODELAY on the embedded broker's listeners: expect ~40 ms latency"
        );
    }
    tracing::debug!(private = %private_v5, "embedded broker's private listener for the worker");
    let rules = Arc::new(rules::Rules::new(
        config,
        topics.clone(),
        worker_id,
        metrics,
    ));
    let traffic = Arc::new(front::Traffic::new());
    for ((listener, addr), upstream) in listeners.into_iter().zip(public).zip(private) {
        tokio::spawn(front::serve(
            listener,
            upstream,
            rules.clone(),
            traffic.clone(),
        ));
        tracing::info!(%addr, "embedded broker listening");
    }
    Ok(Embedded {
        private: private_v5,
        status_link,
        traffic,
    })
}

/// Binds a public listener for the front door.
fn bind_public(addr: SocketAddr) -> Result<tokio::net::TcpListener, BrokerError> {
    let fail = |error| BrokerError::Bind { addr, error };
    let listener = TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    tokio::net::TcpListener::from_std(listener).map_err(fail)
}

/// A loopback address with a port free right now, for a private rumqttd
/// listener (rumqttd cannot report the port it bound for port 0).
fn free_loopback_port() -> Result<SocketAddr, BrokerError> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener =
        TcpListener::bind(any).map_err(|error| BrokerError::Bind { addr: any, error })?;
    listener
        .local_addr()
        .map_err(|error| BrokerError::Bind { addr: any, error })
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
/// default behaviour, and so does one of rumqttd's MQTT 3.1.1 encoder: it
/// panics when a message for a 3.1.1 client carries MQTT 5 properties
/// (which any MQTT 5 client can add), inside that one connection's task,
/// which the listener's runtime outlives. Only that client's connection is
/// lost then, not the appliance.
fn install_panic_policy() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name == V4_THREAD && info.location().is_some_and(|at| is_v4_encoder(at.file())) {
            tracing::error!(
                "a message with MQTT 5 properties cannot go to an MQTT 3.1.1 client: \
                 the embedded broker dropped that client's connection"
            );
            return;
        }
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

/// Whether `file` (a panic's location) is rumqttd's MQTT 3.1.1 packet
/// encoder.
fn is_v4_encoder(file: &str) -> bool {
    let file = file.replace('\\', "/");
    file.contains("/rumqttd-") && file.ends_with("/src/protocol/v4/mod.rs")
}

/// The rumqttd configuration for `[broker]` on the private listeners
/// `listen` (MQTT 5) and `listen_v4`, with task requests arriving on
/// `requests_topic`.
fn rumqttd_config(
    config: &BrokerConfig,
    listen: SocketAddr,
    listen_v4: Option<SocketAddr>,
    requests_topic: &str,
) -> rumqttd::Config {
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
    v5.insert("v5".to_owned(), server(V5_THREAD, listen));
    let v4 = listen_v4.map(|listen| {
        let mut v4 = HashMap::new();
        v4.insert("v4".to_owned(), server(V4_THREAD, listen));
        v4
    });
    // Segments hold the messages of each filter in memory (a message read
    // from a socket pins the whole read buffer it arrived in), and a
    // subscriber that falls behind the oldest segment silently loses what
    // fell off. A message larger than a segment gets a segment of its own,
    // so any payload fits. rumqttd drops the oldest segment when a new one
    // would make one too many, so a log of N segments always holds the
    // last N - 1 full ones. Status filters and every other: 5 segments of
    // 256 KiB, at least 1 MiB: ~4,000 statuses of a stub run or ~1,700 of
    // a real one, more than Mosquitto queues for a client by default
    // (1,000 messages), and the broker stays small after a burst.
    // Requests: 16 times the larger of 1 MiB and the payload limit, since
    // a burst is published faster than the worker records it and a lost
    // request is a lost task, in small segments, as a segment's vector of
    // entries grows by doubling and an entry outweighs a small request.
    let request_log = 16 * (1024 * 1024).max(config.max_payload_size);
    let requests = SegmentConfig {
        max_segment_size: request_log / 64,
        max_segment_count: 65,
    };
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            // Generous: a client refused here and retrying poisons the
            // listener (MQTT-NOTES.md).
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: 5,
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
            roles: Default::default(),
        }
    }

    #[test]
    fn listeners_limits_and_segments_come_from_the_config() {
        let private = "127.0.0.1:1883".parse().unwrap();
        let config = rumqttd_config(
            &broker_config(),
            private,
            Some(private),
            "ansible/lab/tasks",
        );
        let v5 = &config.v5.as_ref().unwrap()["v5"];
        assert_eq!(v5.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(v5.connections.max_payload_size, 1024 * 1024);
        assert!(v5.connections.auth.is_none());
        let v4 = &config.v4.as_ref().unwrap()["v4"];
        assert_eq!(v4.name, V4_THREAD);
        assert!(config.router.max_connections >= 1000);
        // A subscriber may fall behind by more than 1,000 statuses of 1 KiB.
        let segment = config.router.max_segment_size;
        assert!(segment * (config.router.max_segment_count - 1) >= 1000 * 1024);
        // The request filter keeps a burst of 10,000 requests of 1 KiB, and
        // more with a larger payload limit.
        let requests = &config.router.custom_segment.as_ref().unwrap()["ansible/lab/tasks"];
        let kept =
            |segments: &SegmentConfig| segments.max_segment_size * (segments.max_segment_count - 1);
        assert!(kept(requests) >= 10_000 * 1024);
        let mut larger = broker_config();
        larger.max_payload_size = 8 << 20;
        let config = rumqttd_config(&larger, private, None, "ansible/lab/tasks");
        let requests = &config.router.custom_segment.as_ref().unwrap()["ansible/lab/tasks"];
        assert!(kept(requests) >= 10 * (8 << 20));
    }

    #[test]
    fn users_become_login_on_every_listener() {
        let mut broker = broker_config();
        broker
            .users
            .insert("worker".into(), Secret::new("pw".to_owned()));
        let private = "127.0.0.1:1883".parse().unwrap();
        let config = rumqttd_config(&broker, private, Some(private), "ansible/lab/tasks");
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
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        let error = start(&config, &topics, "w1", Default::default()).unwrap_err();
        assert!(matches!(error, BrokerError::Bind { .. }));
        assert!(error.to_string().contains(&config.listen.to_string()));
    }

    #[test]
    fn only_rumqttds_v4_encoder_is_recognised() {
        let registry = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";
        assert!(is_v4_encoder(&format!(
            "{registry}/rumqttd-0.20.0/src/protocol/v4/mod.rs"
        )));
        assert!(!is_v4_encoder(&format!(
            "{registry}/rumqttd-0.20.0/src/router/routing.rs"
        )));
        assert!(!is_v4_encoder(&format!(
            "{registry}/rumqttc-0.25.1/src/protocol/v4/mod.rs"
        )));
    }

    #[test]
    fn wildcard_listeners_are_reached_over_loopback() {
        let addr: SocketAddr = "0.0.0.0:1882".parse().unwrap();
        assert_eq!(loopback_for(addr), "127.0.0.1:1882".parse().unwrap());
    }
}

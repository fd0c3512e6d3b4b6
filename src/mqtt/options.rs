//! Options of the worker's MQTT connections, from the config: address,
//! login, TLS, packet and in-flight limits, and the worker's own session
//! (persistent against an external broker, clean with the embedded one).
//! It builds options and clients; it never connects (`client` drives the
//! connection).

use std::sync::Arc;

use rumqttc::v5::{AsyncClient, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};

use crate::config::Config;
use crate::transport::tls::{ServerCheck, TlsError, client_config};

/// How many times `worker.max_request_size` the client accepts in one packet:
/// a request somewhat over the limit must still arrive to be refused with a
/// status; beyond this the broker drops it unseen (MQTT 5 Maximum Packet
/// Size), so that no requester can make the worker hold an arbitrary amount.
const REQUEST_SIZE_FACTOR: usize = 4;
/// Room for the fixed header, topic and properties around a payload.
const HEADER_ROOM: usize = 64 * 1024;
/// The largest remaining length MQTT can express (256 MiB - 1).
const MQTT_MAX_PACKET: usize = 268_435_455;
/// Requests buffered between the application and the event loop.
const REQUEST_CAPACITY: usize = 1024;
/// QoS 1/2 publishes of ours the broker may not have acknowledged yet.
/// rumqttc preallocates one slot per allowed packet id (65,535 by default,
/// 14 MiB resident); the publisher keeps at most `PUBLISH_WINDOW` statuses in
/// flight, and presence needs one more.
const OUTGOING_INFLIGHT: u16 = 64;

/// Errors building the client from the config.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection's thread could not be started.
    #[error("cannot start the MQTT connection thread: {0}")]
    Thread(std::io::Error),
    /// The TLS settings (`mqtt.tls_*`) could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// MQTT options of the worker's own connection: [`mqtt_options`] plus manual
/// acks and its session (persistent against an external broker, clean with
/// the embedded one).
pub fn worker_options(config: &Config) -> Result<MqttOptions, ClientError> {
    let mut options = mqtt_options(config)?;
    options.set_manual_acks(true);
    if config.broker.enabled {
        options.set_clean_start(true);
    } else {
        let expiry = u32::try_from(config.mqtt.session_expiry.as_secs()).unwrap_or(u32::MAX);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(expiry));
    }
    Ok(options)
}

/// Largest packet the client accepts, and the Maximum Packet Size it
/// advertises in CONNECT (Mosquitto silently drops what a client cannot
/// take): four times `worker.max_request_size`, so a
/// request over the limit still arrives and gets its "Request too large"
/// status, and at least the embedded broker's `max_payload_size`, since
/// rumqttd delivers whatever it accepted and the client would drop the
/// connection over a larger packet.
pub fn max_packet_size(config: &Config) -> u32 {
    let requests = config
        .worker
        .max_request_size
        .saturating_mul(REQUEST_SIZE_FACTOR);
    let limit = requests
        .max(config.broker.max_payload_size)
        .saturating_add(HEADER_ROOM)
        .min(MQTT_MAX_PACKET);
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// MQTT options for a connection to the configured broker (address, login,
/// TLS, limits) under the client id `worker_id`.
pub fn mqtt_options(config: &Config) -> Result<MqttOptions, ClientError> {
    let (host, port) = config.mqtt.effective_host(&config.broker);
    let mut options = MqttOptions::new(&config.worker.worker_id, host, port);
    // Statuses and acks are small packets that should leave at once, not
    // wait for Nagle's algorithm to batch them with the next ones.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options
        .set_keep_alive(config.mqtt.keepalive)
        .set_max_packet_size(Some(max_packet_size(config)))
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
        .set_network_options(network);
    if let Some(username) = &config.mqtt.username {
        let password = config
            .mqtt
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options.set_credentials(username, password);
    }
    if let Some(tls) = &config.mqtt.tls {
        // rustls takes its provider from crate features only while exactly
        // one is compiled in, and panics at connect time otherwise: name
        // ring, so that a dependency enabling aws-lc-rs as well cannot break
        // TLS. Once one is installed, later calls leave it and return Err.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = client_config(tls, ServerCheck::Verify, "mqtt")?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(options)
}

/// A connected client handle and its event loop.
pub fn client(options: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options, REQUEST_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_publishes_in_flight_are_capped_on_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("playbooks")).unwrap();
        let text = "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\n\
                    playbook_directory = \"playbooks\"\n";
        let config = Config::from_toml(text, dir.path(), &|_| None).unwrap();
        for options in [mqtt_options(&config), worker_options(&config)] {
            let limit = options.unwrap().get_outgoing_inflight_upper_limit();
            assert_eq!(limit, Some(OUTGOING_INFLIGHT));
        }
        // The publisher's window and presence must fit.
        assert!(usize::from(OUTGOING_INFLIGHT) > crate::mqtt::window::PUBLISH_WINDOW);
    }

    fn config_with(worker: &str, broker: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("playbooks")).unwrap();
        let text = format!(
            "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\n\
             playbook_directory = \"playbooks\"\n{worker}\n[broker]\n{broker}\n"
        );
        Config::from_toml(&text, dir.path(), &|_| None).unwrap()
    }

    #[test]
    fn the_packet_limit_is_well_above_the_request_limit_and_the_embedded_brokers() {
        let default = config_with("", "");
        let limit = max_packet_size(&default) as usize;
        assert!(limit >= 4 * 1024 * 1024, "{limit}");
        // Every connection advertises it (Mosquitto drops bigger packets).
        for options in [mqtt_options(&default), worker_options(&default)] {
            assert_eq!(options.unwrap().max_packet_size(), Some(limit as u32));
        }
        let small = config_with("max_request_size = 2048", "max_payload_size = 8388608");
        assert!(max_packet_size(&small) as usize > 8 * 1024 * 1024);
        let big = config_with("max_request_size = 4294967296", "");
        assert_eq!(max_packet_size(&big) as usize, MQTT_MAX_PACKET);
    }

    #[test]
    fn tls_options_install_rings_crypto_provider_for_the_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("playbooks")).unwrap();
        // No CA file: the platform's trust store (TLS files are read and
        // checked when the options are built).
        let text = "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\n\
                    playbook_directory = \"playbooks\"\n\
                    [mqtt]\nhost = \"b\"\ntls_enabled = true\n";
        let config = Config::from_toml(text, dir.path(), &|_| None).unwrap();
        mqtt_options(&config).unwrap();
        // rumqttc builds its rustls config on the process default at connect
        // time; without one (none or two providers compiled in) it panics.
        let installed = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        let groups = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(groups(installed), groups(&ring));
    }
}

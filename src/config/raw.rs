//! Raw stage: serde structs that mirror the file key for key. `None` means the
//! key is absent; defaults and rules are applied in `check`, not here.
//!
//! `deny_unknown_fields` makes a typo'd key an error naming it; nothing here
//! checks a value beyond its TOML type.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file: top-level keys and one table per section.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) log_level: Option<String>,
    pub(super) transport: Option<String>,
    pub(super) worker: RawWorker,
    pub(super) mqtt: RawMqtt,
    pub(super) broker: RawBroker,
    pub(super) http: RawHttp,
    /// `None` when the file has no `[poll]` table (allowed only then with
    /// `transport = "mqtt"`).
    pub(super) poll: Option<RawPoll>,
}

/// `[worker]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawWorker {
    pub(super) group_name: Option<String>,
    pub(super) worker_id: Option<String>,
    pub(super) playbook_directory: Option<String>,
    pub(super) topic_prefix: Option<String>,
    pub(super) shared_subscription: Option<bool>,
    pub(super) suffix_status_with_worker_id: Option<bool>,
    pub(super) concurrency: Option<usize>,
    pub(super) max_queue_size: Option<usize>,
    pub(super) task_timeout: Option<u64>,
    pub(super) kill_grace: Option<u64>,
    pub(super) ansible_playbook_path: Option<String>,
    pub(super) git_path: Option<String>,
    pub(super) allow_ansible_vars: Option<bool>,
    pub(super) state_dir: Option<String>,
    pub(super) history_limit: Option<usize>,
    pub(super) rerun_interrupted: Option<bool>,
    pub(super) status_expiry: Option<u64>,
    pub(super) max_request_size: Option<usize>,
    pub(super) inventory_plugins: Option<Vec<String>>,
}

/// `[mqtt]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) keepalive: Option<u64>,
    pub(super) session_expiry: Option<u64>,
    pub(super) tls_enabled: Option<bool>,
    pub(super) tls_ca_cert: Option<String>,
    pub(super) tls_client_cert: Option<String>,
    pub(super) tls_client_key: Option<String>,
}

/// `[broker]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawBroker {
    pub(super) enabled: Option<bool>,
    pub(super) listen: Option<String>,
    pub(super) listen_v4: Option<String>,
    pub(super) max_payload_size: Option<usize>,
    pub(super) users: BTreeMap<String, String>,
    pub(super) roles: BTreeMap<String, String>,
}

/// `[http]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) enabled: Option<bool>,
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_for_reads: Option<bool>,
    pub(super) allowed_hosts: Option<Vec<String>>,
}

/// `[poll]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPoll {
    pub(super) base_url: Option<String>,
    pub(super) interval: Option<u64>,
    pub(super) timeout: Option<u64>,
    pub(super) connect_timeout: Option<u64>,
    pub(super) bearer_token: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) tls_ca_cert: Option<String>,
    pub(super) tls_client_cert: Option<String>,
    pub(super) tls_client_key: Option<String>,
    pub(super) tls_insecure: Option<bool>,
}

/// Whether the value at dotted `key` is a password or token, whose value no
/// error message may show (not even one of the wrong type).
pub(super) fn is_secret(key: &str) -> bool {
    matches!(
        key,
        "mqtt.password" | "http.token" | "poll.bearer_token" | "poll.password"
    ) || key.starts_with("broker.users.")
}

//! Configuration: TOML text → checked [`Config`].
//!
//! Two stages, so that nothing downstream re-checks a setting:
//!
//! 1. **Raw**: the file is parsed into a `toml::Value`, `${VAR}` references in
//!    every string value are replaced from the environment (`env`), and the
//!    tree is deserialized into private `Raw*` structs that mirror the file
//!    (`raw`; `deny_unknown_fields`, so a typo'd key is an error naming it;
//!    `serde_path_to_error`, so a wrong type names its key path). `shape`
//!    drops each such key after reporting it and deserializes again, so one
//!    bad key hides nothing else.
//! 2. **Checked**: defaults are applied and every rule is checked (`check`),
//!    collecting *all* problems into [`ConfigErrors`] instead of stopping at
//!    the first; a rule broken only because a key was already reported (and
//!    dropped) is not reported again. The result carries typed durations,
//!    resolved paths and socket addresses.
//!
//! Relative paths resolve against the config file's directory, not the current
//! directory, so a config means the same thing wherever the worker starts.
//!
//! This module owns the public checked types, the errors and the entry points
//! ([`Config::load`], [`Config::from_toml`]); the meaning of each key is
//! documented in `config.example.toml`, embedded as [`EXAMPLE_CONFIG`]. It does
//! not create directories, open connections or look up programs on `PATH`.

mod check;
mod env;
mod listeners;
mod poll;
mod raw;
mod shape;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use check::{DEFAULT_INVENTORY_PLUGINS, DEFAULT_MAX_REQUEST_SIZE};
use env::expand_env;

/// The annotated example config (`ansible-worker print-config` prints it).
pub const EXAMPLE_CONFIG: &str = include_str!("../../config.example.toml");

/// The whole checked configuration of one `ansible-worker` process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log filter: one of `trace`, `debug`, `info`, `warn`, `error` (`RUST_LOG` overrides it).
    pub log_level: String,
    /// `[worker]`: the task runner.
    pub worker: WorkerConfig,
    /// `[mqtt]`: the broker connection the worker uses.
    pub mqtt: MqttConfig,
    /// `[broker]`: the optional embedded MQTT broker.
    pub broker: BrokerConfig,
    /// `[http]`: the optional dashboard, API and health endpoints.
    pub http: HttpConfig,
    /// `transport`: where tasks come from and statuses go.
    pub transport: Transport,
    /// `[poll]`: the controller polled over HTTP; `Some` exactly when
    /// `transport = "http"`.
    pub poll: Option<PollConfig>,
}

/// `transport`: how requests arrive and statuses leave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// An MQTT 5 broker (the default): the group's tasks topic in, retained
    /// statuses out.
    #[default]
    Mqtt,
    /// HTTP polling: `GET <base_url>/tasks` in, `POST
    /// <base_url>/tasks/<task_id>/status` out.
    Http,
}

/// `[poll]`: the controller a worker with `transport = "http"` polls.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// The controller's base URL (`http` or `https`), without a trailing `/`.
    pub base_url: String,
    /// Time between polls that found nothing.
    pub interval: Duration,
    /// Time allowed for one whole request and its answer.
    pub timeout: Duration,
    /// Time allowed to connect (TCP and TLS).
    pub connect_timeout: Duration,
    /// How each request authenticates, if at all.
    pub auth: PollAuth,
    /// PEM file of the CA(s) to trust; `None` means the platform's trust store.
    pub tls_ca_cert: Option<PathBuf>,
    /// Client certificate and key PEM files, for mutual TLS.
    pub tls_client_auth: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (for tests and labs only; logged loudly).
    pub tls_insecure: bool,
}

/// How requests to the polled controller authenticate.
#[derive(Debug, Clone, Default)]
pub enum PollAuth {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic ...`.
    Basic {
        /// Login name.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// `[worker]`: which requests this worker takes and how it runs them.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The group whose tasks topic this worker serves (one MQTT topic level).
    pub group_name: String,
    /// Stable identity of this worker (one MQTT topic level); the MQTT client id base.
    pub worker_id: String,
    /// Canonical path of the directory holding playbooks and inventories.
    pub playbook_directory: PathBuf,
    /// First part of every topic (`P` in PROTOCOL.md); may span several levels.
    pub topic_prefix: String,
    /// Subscribe through `$share/ansible-worker-G/...` so one worker of the group gets each request.
    pub shared_subscription: bool,
    /// Publish status on `.../status/<worker_id>` instead of `.../status`.
    pub suffix_status_with_worker_id: bool,
    /// Number of `ansible-playbook` runs at once (at least 1).
    pub concurrency: usize,
    /// Tasks allowed to wait beyond the running ones; more are refused.
    pub max_queue_size: usize,
    /// Default run time limit of a task (a request's `timeout` overrides it).
    pub task_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub kill_grace: Duration,
    /// The `ansible-playbook` program: a bare name is looked up on `PATH`.
    pub ansible_playbook_path: PathBuf,
    /// The `git` program (for `git_pull`): a bare name is looked up on `PATH`.
    pub git_path: PathBuf,
    /// Allow `extra_vars` keys starting with `ansible_` and names Ansible reserves.
    pub allow_ansible_vars: bool,
    /// Largest task request payload in bytes; a bigger one with a readable
    /// `task_id` ends `failed` ("Request too large").
    pub max_request_size: usize,
    /// The inventory plugins a run may use (`ANSIBLE_INVENTORY_ENABLED`);
    /// without `script` or `auto`, no inventory file is executed.
    pub inventory_plugins: Vec<String>,
    /// Directory for the journal and runtime files (created at start if missing).
    pub state_dir: PathBuf,
    /// Finished tasks kept in the task table and dashboard (at least 1).
    pub history_limit: usize,
    /// After a restart, queue tasks whose run was interrupted again instead
    /// of ending them `failed`.
    pub rerun_interrupted: bool,
    /// MQTT 5 Message Expiry of final statuses, counted from completion;
    /// `None` keeps them retained for good.
    pub status_expiry: Option<Duration>,
}

/// `[mqtt]`: how the worker reaches its broker.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host; `None` means the embedded broker when enabled, else 127.0.0.1.
    pub host: Option<String>,
    /// Broker port (used with an explicit host, or when no embedded broker runs).
    pub port: u16,
    /// Login name, if the broker wants one.
    pub username: Option<String>,
    /// Login password (only together with `username`).
    pub password: Option<Secret>,
    /// MQTT keep-alive interval (5 s to 65535 s).
    pub keepalive: Duration,
    /// How long an external broker keeps the worker's session (subscriptions
    /// and undelivered requests) after a disconnect.
    pub session_expiry: Duration,
    /// TLS settings; `None` means a plain TCP connection.
    pub tls: Option<TlsConfig>,
}

/// TLS for the broker connection.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust; `None` means the platform's trust
    /// store (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key PEM files, for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// `[broker]`: the embedded rumqttd broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Start the embedded broker in this process.
    pub enabled: bool,
    /// MQTT 5 listener address (the worker connects here by default).
    pub listen: SocketAddr,
    /// Optional MQTT 3.1.1 listener address for older clients.
    pub listen_v4: Option<SocketAddr>,
    /// Largest accepted MQTT packet payload in bytes (at least 1024).
    pub max_payload_size: usize,
    /// User name → password; when non-empty, every client must log in.
    pub users: BTreeMap<String, Secret>,
    /// User name → role, from `[broker.roles]`; a user not named here (and
    /// an anonymous client) is a controller.
    pub roles: BTreeMap<String, BrokerRole>,
}

/// What an outside client of the embedded broker may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    /// Publishes requests and cancels, subscribes.
    Controller,
    /// Only subscribes.
    Observer,
}

/// `[http]`: dashboard, JSON API, live stream, health and metrics.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token required for submit and cancel when set.
    pub token: Option<Secret>,
    /// Require the token for reads (API, dashboard data, events) too.
    pub token_for_reads: bool,
    /// Host names accepted in the `Host` header besides IP literals and
    /// `localhost` (lower case, without port).
    pub allowed_hosts: Vec<String>,
}

/// A password or token: `Debug` and `Display` print `***`, so it never lands in a log.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl MqttConfig {
    /// The host and port the worker connects to: an explicit `host` wins; else
    /// the embedded broker's listen address (loopback if it listens on all
    /// interfaces) when it is enabled; else 127.0.0.1 and `port`.
    pub fn effective_host(&self, broker: &BrokerConfig) -> (String, u16) {
        if let Some(host) = &self.host {
            return (host.clone(), self.port);
        }
        if broker.enabled {
            let ip = match broker.listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            return (ip.to_string(), broker.listen.port());
        }
        (Ipv4Addr::LOCALHOST.to_string(), self.port)
    }
}

/// One problem with the configuration; every variant names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("TOML syntax error at {location}: {message}")]
    Syntax {
        /// `line L, column C` (or `unknown position`).
        location: String,
        /// The parser's message.
        message: String,
    },
    /// A `${VAR}` reference names a variable that is not set.
    #[error("{key}: environment variable {var} is not set")]
    MissingEnv {
        /// Dotted key path of the value.
        key: String,
        /// The variable name.
        var: String,
    },
    /// An unknown key, or a value of the wrong type.
    #[error("{key}: {message}")]
    Shape {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A well-typed value that breaks a rule.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// The rule it breaks.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key (or, for an unreadable file or bad syntax, the empty
    /// string) the problem is about.
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => "",
            ConfigError::MissingEnv { key, .. }
            | ConfigError::Shape { key, .. }
            | ConfigError::Invalid { key, .. } => key,
        }
    }
}

/// Every problem found in a config, listed one per line by `Display`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl Config {
    /// Reads and checks the config file at `path`, with `${VAR}` taken from the
    /// process environment and relative paths resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let base_dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        Self::from_toml(&text, &base_dir, &|name| std::env::var(name).ok())
    }

    /// Parses and checks config `text`: `env` answers `${VAR}` references and
    /// relative paths resolve against `base_dir`.
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
        let mut value = toml::Value::Table(table);
        let mut errors = Vec::new();
        expand_env(&mut value, "", env, &mut errors);
        match shape::deserialize(value, &mut errors) {
            Some(raw) => raw.check(base_dir, errors),
            None => Err(ConfigErrors(errors)),
        }
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}")
        }
        None => "unknown position".to_owned(),
    };
    // Keep it on one line: `ConfigErrors` lists one problem per line.
    let message = error.message().trim_end().replace('\n', "; ");
    ConfigError::Syntax { location, message }
}

/// A [`ConfigError::Invalid`] for `key`; shared by the `${VAR}` expansion and
/// the checks.
fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

//! Configuration: TOML text → checked [`Config`].
//!
//! Two stages, so that nothing downstream re-checks a setting:
//!
//! 1. **Raw**: the file is parsed into a `toml::Value`, `${VAR}` references in
//!    every string value are replaced from the environment, and the tree is
//!    deserialized into private `Raw*` structs that mirror the file
//!    (`deny_unknown_fields`, so a typo'd key is an error naming it;
//!    `serde_path_to_error`, so a wrong type names its key path).
//! 2. **Checked**: defaults are applied and every rule is checked, collecting
//!    *all* problems into [`ConfigErrors`] instead of stopping at the first.
//!    The result carries typed durations, resolved paths and socket addresses.
//!
//! Relative paths resolve against the config file's directory, not the current
//! directory, so a config means the same thing wherever the worker starts.
//!
//! This module owns the meaning of each key (documented in
//! `config.example.toml`, embedded as [`EXAMPLE_CONFIG`]); it does not create
//! directories, open connections or look up programs on `PATH`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The annotated example config (`ansible-worker print-config` prints it).
pub const EXAMPLE_CONFIG: &str = include_str!("../config.example.toml");

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

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
    /// Allow `extra_vars` keys starting with `ansible_`.
    pub allow_ansible_vars: bool,
    /// Directory for the journal and runtime files (created at start if missing).
    pub state_dir: PathBuf,
    /// Finished tasks kept in the task table and dashboard (at least 1).
    pub history_limit: usize,
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
    /// TLS settings; `None` means a plain TCP connection.
    pub tls: Option<TlsConfig>,
}

/// TLS for the broker connection.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust; `None` means the system roots.
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
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let message = e
                .inner()
                .message()
                .replacen("unknown field", "unknown key", 1);
            ConfigError::Shape { key, message }
        })?;
        raw.check(base_dir)
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

/// Replaces `${VAR}` in every string below `value`; `$${` stands for a literal `${`.
fn expand_env(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(text) => *text = expand_str(text, key, env, errors),
        toml::Value::Table(table) => {
            for (name, child) in table.iter_mut() {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                expand_env(child, &child_key, env, errors);
            }
        }
        toml::Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                expand_env(child, &format!("{key}[{i}]"), env, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(
    text: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let from_dollar = &rest[pos..];
        if let Some(tail) = from_dollar.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = from_dollar.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                errors.push(invalid(key, "unterminated ${ (write $${ for a literal ${)"));
                return out;
            };
            let var = &tail[..end];
            let valid_name = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                errors.push(invalid(
                    key,
                    format!("${{{var}}} is not a valid variable name"),
                ));
            } else if let Some(value) = env(var) {
                out.push_str(&value);
            } else {
                errors.push(ConfigError::MissingEnv {
                    key: key.to_owned(),
                    var: var.to_owned(),
                });
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &from_dollar[1..];
        }
    }
    out.push_str(rest);
    out
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

// Raw stage: mirrors the file; `None` = key absent, defaults come in `check`.

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    log_level: Option<String>,
    worker: RawWorker,
    mqtt: RawMqtt,
    broker: RawBroker,
    http: RawHttp,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWorker {
    group_name: Option<String>,
    worker_id: Option<String>,
    playbook_directory: Option<String>,
    topic_prefix: Option<String>,
    shared_subscription: Option<bool>,
    suffix_status_with_worker_id: Option<bool>,
    concurrency: Option<usize>,
    max_queue_size: Option<usize>,
    task_timeout: Option<u64>,
    kill_grace: Option<u64>,
    ansible_playbook_path: Option<String>,
    git_path: Option<String>,
    allow_ansible_vars: Option<bool>,
    state_dir: Option<String>,
    history_limit: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    password: Option<String>,
    keepalive: Option<u64>,
    tls_enabled: Option<bool>,
    tls_ca_cert: Option<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawBroker {
    enabled: Option<bool>,
    listen: Option<String>,
    listen_v4: Option<String>,
    max_payload_size: Option<usize>,
    users: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
    token: Option<String>,
}

impl RawConfig {
    fn check(self, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut c = Checker {
            base_dir,
            errors: Vec::new(),
        };
        let log_level = self
            .log_level
            .unwrap_or_else(|| "info".to_owned())
            .to_ascii_lowercase();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            c.invalid(
                "log_level",
                format!("{log_level:?} is not one of {}", LOG_LEVELS.join(", ")),
            );
        }
        let worker = c.worker(self.worker);
        let broker = c.broker(self.broker);
        let mqtt = c.mqtt(self.mqtt, &broker);
        let http = c.http(self.http, &broker);
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            log_level,
            worker,
            mqtt,
            broker,
            http,
        })
    }
}

/// Checked stage: applies defaults, records every broken rule and returns a
/// placeholder for a bad value so the remaining keys are still checked.
struct Checker<'a> {
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn invalid(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(invalid(key, message));
    }

    fn required(&mut self, key: &str, value: Option<String>) -> Option<String> {
        if value.is_none() {
            self.invalid(key, "is required");
        }
        value
    }

    /// An optional string that, when present, must not be empty.
    fn not_empty(&mut self, key: &str, value: Option<String>) -> Option<String> {
        if value.as_deref() == Some("") {
            self.invalid(key, "must not be empty (leave the key out instead)");
        }
        value
    }

    fn at_least<T: PartialOrd + fmt::Display>(&mut self, key: &str, value: T, min: T) -> T {
        if value < min {
            self.invalid(key, format!("must be at least {min}"));
        }
        value
    }

    fn seconds(&mut self, key: &str, value: Option<u64>, default: u64, min: u64) -> Duration {
        Duration::from_secs(self.at_least(key, value.unwrap_or(default), min))
    }

    /// A value used as exactly one MQTT topic level.
    fn topic_level(&mut self, key: &str, value: String) -> String {
        if let Some(problem) = topic_problem(&value, false) {
            self.invalid(
                key,
                format!("{value:?} {problem} (it is one MQTT topic level)"),
            );
        }
        value
    }

    fn socket_addr(&mut self, key: &str, value: Option<String>, default: SocketAddr) -> SocketAddr {
        let Some(text) = value else { return default };
        text.parse().unwrap_or_else(|_| {
            self.invalid(key, format!("{text:?} is not an IP:PORT socket address"));
            default
        })
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Resolves `path` and checks it names an existing directory (or file).
    fn existing(&mut self, key: &str, path: &str, want_dir: bool) -> PathBuf {
        let resolved = self.resolve(path);
        let shown = resolved.display();
        match fs::metadata(&resolved) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.invalid(key, format!("{shown} does not exist"))
            }
            Err(e) => self.invalid(key, format!("{shown}: {e}")),
            Ok(meta) if want_dir && !meta.is_dir() => {
                self.invalid(key, format!("{shown} is not a directory"))
            }
            Ok(meta) if !want_dir && !meta.is_file() => {
                self.invalid(key, format!("{shown} is not a file"))
            }
            Ok(_) => {}
        }
        resolved
    }

    /// A program: a bare name stays as is (looked up on `PATH` when run).
    fn program(&mut self, key: &str, value: Option<String>, default: &str) -> PathBuf {
        let value = value.unwrap_or_else(|| default.to_owned());
        if value.is_empty() {
            self.invalid(key, "must not be empty");
        }
        if value.contains('/') {
            self.resolve(&value)
        } else {
            PathBuf::from(value)
        }
    }

    fn worker(&mut self, raw: RawWorker) -> WorkerConfig {
        const GROUP: &str = "worker.group_name";
        let group_name = self.required(GROUP, raw.group_name);
        let group_name = group_name.map(|name| self.topic_level(GROUP, name));
        let worker_id = match raw.worker_id {
            Some(id) => self.topic_level("worker.worker_id", id),
            None => self.hostname_worker_id(),
        };
        const PLAYBOOKS: &str = "worker.playbook_directory";
        let playbook_directory = match self.required(PLAYBOOKS, raw.playbook_directory) {
            Some(dir) if dir.is_empty() => {
                self.invalid(PLAYBOOKS, "must not be empty");
                PathBuf::new()
            }
            Some(dir) => {
                let dir = self.existing(PLAYBOOKS, &dir, true);
                // Canonical, so requests can be checked to stay inside it by prefix.
                fs::canonicalize(&dir).unwrap_or(dir)
            }
            None => PathBuf::new(),
        };
        let topic_prefix = raw.topic_prefix.unwrap_or_else(|| "ansible".to_owned());
        if let Some(problem) = topic_problem(&topic_prefix, true) {
            self.invalid("worker.topic_prefix", format!("{topic_prefix:?} {problem}"));
        } else if topic_prefix.starts_with('$') {
            // `$share/...` would turn a plain subscription into a shared one.
            let message = format!("{topic_prefix:?} must not start with '$' (reserved by MQTT)");
            self.invalid("worker.topic_prefix", message);
        }
        let state_dir = match raw.state_dir.as_deref().unwrap_or("var") {
            "" => {
                self.invalid("worker.state_dir", "must not be empty");
                PathBuf::new()
            }
            dir => self.resolve(dir),
        };
        if state_dir.exists() && !state_dir.is_dir() {
            let message = format!("{} is not a directory", state_dir.display());
            self.invalid("worker.state_dir", message);
        }
        WorkerConfig {
            group_name: group_name.unwrap_or_default(),
            worker_id,
            playbook_directory,
            topic_prefix,
            shared_subscription: raw.shared_subscription.unwrap_or(true),
            suffix_status_with_worker_id: raw.suffix_status_with_worker_id.unwrap_or(false),
            concurrency: self.at_least("worker.concurrency", raw.concurrency.unwrap_or(2), 1),
            max_queue_size: raw.max_queue_size.unwrap_or(100),
            task_timeout: self.seconds("worker.task_timeout", raw.task_timeout, 3600, 1),
            kill_grace: self.seconds("worker.kill_grace", raw.kill_grace, 10, 0),
            ansible_playbook_path: self.program(
                "worker.ansible_playbook_path",
                raw.ansible_playbook_path,
                "ansible-playbook",
            ),
            git_path: self.program("worker.git_path", raw.git_path, "git"),
            allow_ansible_vars: raw.allow_ansible_vars.unwrap_or(false),
            state_dir,
            history_limit: self.at_least(
                "worker.history_limit",
                raw.history_limit.unwrap_or(1000),
                1,
            ),
        }
    }

    fn hostname_worker_id(&mut self) -> String {
        const KEY: &str = "worker.worker_id";
        match nix::unistd::gethostname().map(|name| name.into_string()) {
            Ok(Ok(name)) => match topic_problem(&name, false) {
                None => name,
                Some(problem) => {
                    let message = format!("not set, and the hostname {name:?} {problem}");
                    self.invalid(KEY, message);
                    name
                }
            },
            Ok(Err(name)) => {
                self.invalid(
                    KEY,
                    format!("not set, and the hostname {name:?} is not UTF-8"),
                );
                String::new()
            }
            Err(e) => {
                self.invalid(
                    KEY,
                    format!("not set, and the hostname cannot be read: {e}"),
                );
                String::new()
            }
        }
    }

    fn mqtt(&mut self, raw: RawMqtt, broker: &BrokerConfig) -> MqttConfig {
        let host = self.not_empty("mqtt.host", raw.host);
        let port = raw.port.unwrap_or(1883);
        if port == 0 {
            self.invalid("mqtt.port", "must not be 0");
        }
        let username = self.not_empty("mqtt.username", raw.username);
        let password = raw.password.map(Secret);
        if password.is_some() && username.is_none() {
            self.invalid("mqtt.password", "is set but mqtt.username is not");
        }
        let keepalive = self.seconds("mqtt.keepalive", raw.keepalive, 60, 5);
        if keepalive.as_secs() > u64::from(u16::MAX) {
            self.invalid("mqtt.keepalive", "must be at most 65535 (MQTT limit)");
        }
        let tls_enabled = raw.tls_enabled.unwrap_or(false);
        let tls_files = [
            ("mqtt.tls_ca_cert", raw.tls_ca_cert),
            ("mqtt.tls_client_cert", raw.tls_client_cert),
            ("mqtt.tls_client_key", raw.tls_client_key),
        ];
        let [ca_cert, cert, key] = tls_files.map(|(key, path)| {
            let path = path?;
            if tls_enabled {
                Some(self.existing(key, &path, false))
            } else {
                // Refused rather than ignored: a silently plain connection is worse.
                self.invalid(key, "is set but mqtt.tls_enabled is false");
                None
            }
        });
        let client_auth = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                self.invalid(
                    "mqtt.tls_client_key",
                    "is required with mqtt.tls_client_cert",
                );
                None
            }
            (None, Some(_)) => {
                self.invalid(
                    "mqtt.tls_client_cert",
                    "is required with mqtt.tls_client_key",
                );
                None
            }
            (None, None) => None,
        };
        let tls = tls_enabled.then_some(TlsConfig {
            ca_cert,
            client_auth,
        });
        if host.is_none() && broker.enabled {
            self.embedded_login(username.as_deref(), password.as_ref(), broker);
            if tls.is_some() {
                let message =
                    "the embedded broker listens without TLS; set mqtt.host for an external broker";
                self.invalid("mqtt.tls_enabled", message);
            }
        }
        MqttConfig {
            host,
            port,
            username,
            password,
            keepalive,
            tls,
        }
    }

    /// The worker connects to the embedded broker like any client, so with
    /// `[broker.users]` set it needs one of those logins.
    fn embedded_login(
        &mut self,
        username: Option<&str>,
        password: Option<&Secret>,
        broker: &BrokerConfig,
    ) {
        if broker.users.is_empty() {
            return;
        }
        let Some(username) = username else {
            self.invalid(
                "mqtt.username",
                "is required: [broker.users] is set and the worker logs in to the embedded broker",
            );
            return;
        };
        match broker.users.get(username) {
            None => self.invalid(
                "mqtt.username",
                format!("{username:?} is not in [broker.users]"),
            ),
            Some(expected) if password.map(Secret::expose) != Some(expected.expose()) => self
                .invalid(
                    "mqtt.password",
                    format!("does not match broker.users.{username}"),
                ),
            Some(_) => {}
        }
    }

    fn broker(&mut self, raw: RawBroker) -> BrokerConfig {
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
        BrokerConfig {
            enabled: raw.enabled.unwrap_or(false),
            listen,
            listen_v4,
            max_payload_size,
            users,
        }
    }

    fn http(&mut self, raw: RawHttp, broker: &BrokerConfig) -> HttpConfig {
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
        HttpConfig {
            enabled,
            listen,
            token,
        }
    }
}

/// Why `value` cannot be used in an MQTT topic (`None` if it can); `/`
/// separates levels, so it is allowed only where several levels are.
fn topic_problem(value: &str, allow_slash: bool) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".to_owned());
    }
    value
        .chars()
        .find(|&c| c == '+' || c == '#' || c.is_control() || (c == '/' && !allow_slash))
        .map(|c| format!("must not contain {c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A temp dir with a `playbooks/` directory, the minimum a config needs.
    fn base() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("playbooks")).unwrap();
        dir
    }

    const MINIMAL: &str =
        "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\nplaybook_directory = \"playbooks\"\n";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, dir, &no_env)
    }

    fn messages(result: Result<Config, ConfigErrors>) -> Vec<String> {
        let errors = result.expect_err("config should be refused");
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_applied_when_keys_are_absent() {
        let dir = base();
        let config = load(MINIMAL, dir.path()).unwrap();
        let w = &config.worker;
        assert_eq!(config.log_level, "info");
        assert_eq!(w.topic_prefix, "ansible");
        assert!(w.shared_subscription && !w.suffix_status_with_worker_id);
        assert_eq!(
            (w.concurrency, w.max_queue_size, w.history_limit),
            (2, 100, 1000)
        );
        assert_eq!(w.task_timeout, Duration::from_secs(3600));
        assert_eq!(w.kill_grace, Duration::from_secs(10));
        assert_eq!(w.ansible_playbook_path, Path::new("ansible-playbook"));
        assert_eq!(w.git_path, Path::new("git"));
        assert!(!w.allow_ansible_vars);
        assert_eq!(w.state_dir, dir.path().join("var"));
        let m = &config.mqtt;
        assert_eq!((m.host.as_deref(), m.port), (None, 1883));
        assert!(m.username.is_none() && m.password.is_none() && m.tls.is_none());
        assert_eq!(m.keepalive, Duration::from_secs(60));
        assert!(!config.broker.enabled && config.broker.users.is_empty());
        assert_eq!(config.broker.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(config.broker.listen_v4, None);
        assert_eq!(config.broker.max_payload_size, 1_048_576);
        assert!(!config.http.enabled && config.http.token.is_none());
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn worker_id_defaults_to_the_hostname() {
        let dir = base();
        let text = "[worker]\ngroup_name = \"g\"\nplaybook_directory = \"playbooks\"\n";
        let config = load(text, dir.path()).unwrap();
        let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(config.worker.worker_id, hostname);
    }

    #[test]
    fn env_vars_are_expanded_in_every_string() {
        let dir = base();
        let vars = HashMap::from([("PW", "s3cret"), ("GROUP", "lab"), ("USER", "worker")]);
        let env = |name: &str| vars.get(name).map(|v| v.to_string());
        let text = format!(
            "{}[mqtt]\nusername = \"${{USER}}\"\npassword = \"${{PW}}\"\n\
             [broker]\nenabled = true\n[broker.users]\nworker = \"${{PW}}\"\n",
            MINIMAL.replace("\"g\"", "\"${GROUP}-x\"")
        );
        let config = Config::from_toml(&text, dir.path(), &env).unwrap();
        assert_eq!(config.worker.group_name, "lab-x");
        assert_eq!(config.mqtt.username.as_deref(), Some("worker"));
        assert_eq!(config.mqtt.password.unwrap().expose(), "s3cret");
        assert_eq!(config.broker.users["worker"].expose(), "s3cret");
    }

    #[test]
    fn missing_env_var_error_names_variable_and_key() {
        let dir = base();
        let text =
            format!("{MINIMAL}[mqtt]\nusername = \"u\"\npassword = \"${{MQTT_PASSWORD}}\"\n");
        assert_eq!(
            messages(load(&text, dir.path())),
            ["mqtt.password: environment variable MQTT_PASSWORD is not set"]
        );
    }

    #[test]
    fn escaped_dollar_brace_stays_literal() {
        let dir = base();
        let text = format!("{MINIMAL}[http]\ntoken = \"a$${{B}}$c\"\n");
        let config = load(&text, dir.path()).unwrap();
        assert_eq!(config.http.token.unwrap().expose(), "a${B}$c");
    }

    #[test]
    fn unknown_key_error_names_it() {
        let dir = base();
        let text = format!("{MINIMAL}concurency = 3\n");
        let errors = messages(load(&text, dir.path()));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("worker.concurency: unknown key `concurency`"),
            "{errors:?}"
        );
    }

    #[test]
    fn wrong_type_error_names_key_path() {
        let dir = base();
        let text = format!("{MINIMAL}concurrency = \"2\"\n");
        assert_eq!(
            messages(load(&text, dir.path())),
            ["worker.concurrency: invalid type: string \"2\", expected usize"]
        );
    }

    #[test]
    fn syntax_error_gives_line_and_column() {
        let errors = messages(load("log_level = \"info\"\n[worker\n", Path::new("/")));
        assert_eq!(
            errors,
            ["TOML syntax error at line 2, column 8: invalid table header; expected `.`, `]`"]
        );
    }

    #[test]
    fn all_semantic_errors_are_listed_together() {
        let dir = base();
        let text = "log_level = \"loud\"\n[worker]\ngroup_name = \"a/b\"\nworker_id = \"w#1\"\n\
                    playbook_directory = \"missing\"\nconcurrency = 0\ntask_timeout = 0\n\
                    topic_prefix = \"x+\"\n[mqtt]\nkeepalive = 1\n[broker]\nmax_payload_size = 10\n\
                    listen = \"nowhere\"\n";
        let errors = load(text, dir.path()).unwrap_err();
        let missing = dir.path().join("missing");
        let expected = [
            "log_level: \"loud\" is not one of trace, debug, info, warn, error".to_owned(),
            "worker.group_name: \"a/b\" must not contain '/' (it is one MQTT topic level)"
                .to_owned(),
            "worker.worker_id: \"w#1\" must not contain '#' (it is one MQTT topic level)"
                .to_owned(),
            format!(
                "worker.playbook_directory: {} does not exist",
                missing.display()
            ),
            "worker.topic_prefix: \"x+\" must not contain '+'".to_owned(),
            "worker.concurrency: must be at least 1".to_owned(),
            "worker.task_timeout: must be at least 1".to_owned(),
            "broker.listen: \"nowhere\" is not an IP:PORT socket address".to_owned(),
            "broker.max_payload_size: must be at least 1024".to_owned(),
            "mqtt.keepalive: must be at least 5".to_owned(),
        ];
        assert_eq!(errors.to_string(), expected.join("\n"));
    }

    #[test]
    fn missing_required_keys_are_named() {
        let errors = messages(load("", Path::new("/")));
        assert_eq!(
            errors,
            [
                "worker.group_name: is required",
                "worker.playbook_directory: is required"
            ]
        );
    }

    #[test]
    fn tls_client_cert_without_key_is_refused() {
        let dir = base();
        fs::write(dir.path().join("worker.pem"), "x").unwrap();
        let text = format!(
            "{MINIMAL}[mqtt]\nhost = \"b\"\ntls_enabled = true\ntls_client_cert = \"worker.pem\"\n"
        );
        assert_eq!(
            messages(load(&text, dir.path())),
            ["mqtt.tls_client_key: is required with mqtt.tls_client_cert"]
        );
    }

    #[test]
    fn tls_files_without_tls_enabled_are_refused() {
        let dir = base();
        let text = format!("{MINIMAL}[mqtt]\ntls_ca_cert = \"ca.pem\"\n");
        assert_eq!(
            messages(load(&text, dir.path())),
            ["mqtt.tls_ca_cert: is set but mqtt.tls_enabled is false"]
        );
    }

    #[test]
    fn relative_paths_resolve_against_base_dir() {
        let dir = base();
        for file in ["ca.pem", "c.pem", "c.key"] {
            fs::write(dir.path().join(file), "x").unwrap();
        }
        let text = format!(
            "{MINIMAL}state_dir = \"state\"\nansible_playbook_path = \".venv/bin/ansible-playbook\"\n\
             [mqtt]\nhost = \"b\"\ntls_enabled = true\ntls_ca_cert = \"ca.pem\"\n\
             tls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"\n"
        );
        let config = load(&text, dir.path()).unwrap();
        let root = dir.path();
        let w = &config.worker;
        assert_eq!(
            w.playbook_directory,
            fs::canonicalize(root.join("playbooks")).unwrap()
        );
        assert_eq!(w.state_dir, root.join("state"));
        assert_eq!(
            w.ansible_playbook_path,
            root.join(".venv/bin/ansible-playbook")
        );
        assert_eq!(
            w.git_path,
            Path::new("git"),
            "bare names stay for PATH lookup"
        );
        let tls = config.mqtt.tls.unwrap();
        assert_eq!(tls.ca_cert, Some(root.join("ca.pem")));
        assert_eq!(
            tls.client_auth,
            Some((root.join("c.pem"), root.join("c.key")))
        );
    }

    #[test]
    fn load_resolves_against_the_config_files_directory() {
        let dir = base();
        let path = dir.path().join("worker.toml");
        fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path).unwrap();
        let expected = fs::canonicalize(dir.path()).unwrap().join("playbooks");
        assert_eq!(config.worker.playbook_directory, expected);
        let missing = messages(Config::load(&dir.path().join("nope.toml")));
        assert!(
            missing[0].contains("nope.toml: cannot read config file"),
            "{missing:?}"
        );
    }

    #[test]
    fn embedded_broker_with_users_needs_a_matching_login() {
        let dir = base();
        let text = format!(
            "{MINIMAL}[mqtt]\nusername = \"worker\"\npassword = \"wrong\"\n\
             [broker]\nenabled = true\n[broker.users]\nworker = \"right\"\n"
        );
        assert_eq!(
            messages(load(&text, dir.path())),
            ["mqtt.password: does not match broker.users.worker"]
        );
    }

    #[test]
    fn secret_never_shows_in_debug_or_display() {
        let dir = base();
        let text = format!("{MINIMAL}[http]\ntoken = \"hunter2\"\n");
        let config = load(&text, dir.path()).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let token = config.http.token.unwrap();
        assert_eq!(
            (format!("{token}"), format!("{token:?}")),
            ("***".into(), "***".into())
        );
        assert_eq!(token.expose(), "hunter2");
    }

    #[test]
    fn effective_host_prefers_explicit_then_embedded_then_loopback() {
        let dir = base();
        let config = load(MINIMAL, dir.path()).unwrap();
        let (mut mqtt, mut broker) = (config.mqtt, config.broker);
        assert_eq!(mqtt.effective_host(&broker), ("127.0.0.1".into(), 1883));
        broker.enabled = true;
        broker.listen = "0.0.0.0:1999".parse().unwrap();
        assert_eq!(mqtt.effective_host(&broker), ("127.0.0.1".into(), 1999));
        mqtt.host = Some("broker.example.com".into());
        assert_eq!(
            mqtt.effective_host(&broker),
            ("broker.example.com".into(), 1883)
        );
    }

    #[test]
    fn example_config_loads_with_an_empty_environment() {
        let config = load(EXAMPLE_CONFIG, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(config.worker.group_name, "lab");
        assert_eq!(config.worker.worker_id, "lab-1");
        assert!(!config.broker.enabled && !config.http.enabled);
        assert_eq!(
            config.mqtt.effective_host(&config.broker),
            ("127.0.0.1".into(), 1883)
        );
    }
}

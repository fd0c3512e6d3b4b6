//! Checked stage: turns the raw structs into the public [`Config`] types,
//! applying defaults, resolving paths against the config file's directory and
//! collecting every broken rule (each naming its key) instead of stopping at
//! the first.
//!
//! The `[broker]` and `[http]` sections are checked in `listeners`;
//! `transport` and `[poll]` in `poll`.
//!
//! It reads file metadata (does a path exist, is it a directory) and the
//! hostname, but creates nothing and looks nothing up on `PATH`.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawMqtt, RawWorker};
use super::shape::follows_from;
use super::{
    BrokerConfig, Config, ConfigError, ConfigErrors, MqttConfig, Secret, TlsConfig, WorkerConfig,
    invalid,
};

/// `worker.max_request_size` when the file does not say (1 MiB).
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 1024 * 1024;
/// `worker.inventory_plugins` when the file does not say: Ansible's plugins
/// that only read files, so no inventory is ever executed.
pub const DEFAULT_INVENTORY_PLUGINS: [&str; 4] = ["host_list", "ini", "yaml", "toml"];

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

impl RawConfig {
    /// The checked config, or every problem: `reported` (from the earlier
    /// stages, whose keys were dropped) followed by the broken rules.
    pub(super) fn check(
        self,
        base_dir: &Path,
        reported: Vec<ConfigError>,
    ) -> Result<Config, ConfigErrors> {
        let dropped = reported
            .iter()
            .map(|error| {
                let key = error.key();
                // `a.list[1]` was dropped as a whole.
                key.split_once('[').map_or(key, |(table_key, _)| table_key)
            })
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect();
        let mut c = Checker {
            base_dir,
            dropped,
            errors: reported,
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
        let transport = c.transport(self.transport);
        let poll = c.poll(transport, self.poll, &broker);
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            log_level,
            worker,
            mqtt,
            broker,
            http,
            transport: transport.unwrap_or_default(),
            poll,
        })
    }
}

/// Checked stage: applies defaults, records every broken rule and returns a
/// placeholder for a bad value so the remaining keys are still checked.
pub(super) struct Checker<'a> {
    base_dir: &'a Path,
    /// Keys already reported by the earlier stages and left out of the raw
    /// config: a rule they break only through their placeholder is noise.
    dropped: Vec<String>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    pub(super) fn invalid(&mut self, key: &str, message: impl Into<String>) {
        let message = message.into();
        let follows = self
            .dropped
            .iter()
            .any(|dropped| follows_from(dropped, key, &message));
        if !follows {
            self.errors.push(invalid(key, message));
        }
    }

    /// Whether `key` was reported by an earlier stage and left out.
    pub(super) fn was_dropped(&self, key: &str) -> bool {
        self.dropped.iter().any(|dropped| dropped == key)
    }

    pub(super) fn required(&mut self, key: &str, value: Option<String>) -> Option<String> {
        if value.is_none() {
            self.invalid(key, "is required");
        }
        value
    }

    /// An optional string that, when present, must not be empty.
    pub(super) fn not_empty(&mut self, key: &str, value: Option<String>) -> Option<String> {
        if value.as_deref() == Some("") {
            self.invalid(key, "must not be empty (leave the key out instead)");
        }
        value
    }

    pub(super) fn at_least<T: PartialOrd + fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        min: T,
    ) -> T {
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

    pub(super) fn socket_addr(
        &mut self,
        key: &str,
        value: Option<String>,
        default: SocketAddr,
    ) -> SocketAddr {
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
    pub(super) fn existing(&mut self, key: &str, path: &str, want_dir: bool) -> PathBuf {
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
            max_request_size: self.at_least(
                "worker.max_request_size",
                raw.max_request_size.unwrap_or(DEFAULT_MAX_REQUEST_SIZE),
                1024,
            ),
            inventory_plugins: self.inventory_plugins(raw.inventory_plugins),
            state_dir,
            history_limit: self.at_least(
                "worker.history_limit",
                raw.history_limit.unwrap_or(1000),
                1,
            ),
            rerun_interrupted: raw.rerun_interrupted.unwrap_or(false),
            status_expiry: match self.seconds("worker.status_expiry", raw.status_expiry, 0, 0) {
                expiry if expiry.is_zero() => None,
                expiry if expiry.as_secs() > u64::from(u32::MAX) => {
                    self.invalid(
                        "worker.status_expiry",
                        "must be at most 4294967295 (MQTT limit)",
                    );
                    None
                }
                expiry => Some(expiry),
            },
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
        let session_expiry = self.seconds("mqtt.session_expiry", raw.session_expiry, 300, 0);
        if session_expiry.as_secs() > u64::from(u32::MAX) {
            self.invalid(
                "mqtt.session_expiry",
                "must be at most 4294967295 (MQTT limit)",
            );
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
        let client_auth = self.client_auth("mqtt", cert, key);
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
            session_expiry,
            tls,
        }
    }

    /// `<section>.tls_client_cert` and `<section>.tls_client_key`: both or
    /// neither.
    pub(super) fn client_auth(
        &mut self,
        section: &str,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Option<(PathBuf, PathBuf)> {
        let (cert_key, key_key) = (
            format!("{section}.tls_client_cert"),
            format!("{section}.tls_client_key"),
        );
        match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                self.invalid(&key_key, format!("is required with {cert_key}"));
                None
            }
            (None, Some(_)) => {
                self.invalid(&cert_key, format!("is required with {key_key}"));
                None
            }
            (None, None) => None,
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

    /// `worker.inventory_plugins`: non-empty plugin names without commas.
    fn inventory_plugins(&mut self, raw: Option<Vec<String>>) -> Vec<String> {
        const KEY: &str = "worker.inventory_plugins";
        let Some(plugins) = raw else {
            return DEFAULT_INVENTORY_PLUGINS.map(str::to_owned).to_vec();
        };
        if plugins.is_empty() {
            self.invalid(KEY, "must name at least one inventory plugin");
        }
        for plugin in &plugins {
            let bad = plugin.is_empty()
                || plugin
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
            if bad {
                self.invalid(
                    KEY,
                    format!("{plugin:?} is not a plugin name (letters, digits, '.', '_', '-')"),
                );
            }
        }
        plugins
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

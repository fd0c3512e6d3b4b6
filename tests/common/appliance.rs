//! The all-in-one appliance's config for tests: `config.example.toml` with
//! free ports, absolute paths and the test venv, everything else the shipped
//! default, so the tests run what a user gets. Starting it is up to the caller
//! ([`Worker::with_config`](super::Worker::with_config) or `http.rs`).

use std::path::Path;

use super::{ansible_playbook, free_port, project_dir};

/// Ports of one appliance: its MQTT 5 and 3.1.1 listeners and its HTTP server.
pub struct Ports {
    pub v5: u16,
    pub v4: u16,
    pub http: u16,
}

impl Ports {
    /// Three free ports, all different.
    pub fn free() -> Self {
        Ports {
            v5: free_port(),
            v4: free_port(),
            http: free_port(),
        }
    }
}

/// `config.example.toml` with free ports, absolute paths, the test venv and
/// the HTTP server on: everything else is the shipped default. Each setting
/// replaces its key in its own section, and a key the example no longer has
/// fails loudly instead of silently testing something else. Callers that need
/// more append or [`replace_present`] it themselves.
pub fn example_config(dir: &Path, ports: &Ports) -> String {
    let example = std::fs::read_to_string(project_dir().join("config.example.toml")).unwrap();
    let quoted = |text: String| format!("{text:?}");
    let settings = [
        (
            "worker",
            "playbook_directory",
            quoted(
                project_dir()
                    .join("examples/playbooks")
                    .display()
                    .to_string(),
            ),
        ),
        (
            "worker",
            "state_dir",
            quoted(dir.join("state").display().to_string()),
        ),
        (
            "worker",
            "ansible_playbook_path",
            quoted(ansible_playbook().display().to_string()),
        ),
        (
            "broker",
            "listen",
            quoted(format!("127.0.0.1:{}", ports.v5)),
        ),
        (
            "broker",
            "listen_v4",
            quoted(format!("127.0.0.1:{}", ports.v4)),
        ),
        ("http", "enabled", "true".to_owned()),
        (
            "http",
            "listen",
            quoted(format!("127.0.0.1:{}", ports.http)),
        ),
    ];
    let mut section = String::new();
    let mut set = Vec::new();
    let mut lines = Vec::new();
    for line in example.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        }
        let key = line.split('=').next().unwrap_or_default().trim();
        match settings
            .iter()
            .find(|(s, k, _)| *s == section && *k == key && line.contains('='))
        {
            Some((s, k, value)) if !line.starts_with('#') => {
                set.push(format!("{s}.{k}"));
                lines.push(format!("{k} = {value}"));
            }
            _ => lines.push(line.to_owned()),
        }
    }
    for (s, k, _) in &settings {
        assert!(
            set.contains(&format!("{s}.{k}")),
            "config.example.toml has no {s}.{k} to set:\n{example}"
        );
    }
    lines.join("\n") + "\n"
}

/// `config` with the example's `[broker.users]` and the worker's login
/// switched on: the worker logs in as `worker` with `${MQTT_PASSWORD}`;
/// `more_users` are further `name = "password"` lines of that table.
pub fn with_broker_logins(config: &str, more_users: &str) -> String {
    let config = replace_present(config, "# username = \"worker\"", "username = \"worker\"");
    let config = replace_present(
        &config,
        "# password = \"${MQTT_PASSWORD}\"",
        "password = \"${MQTT_PASSWORD}\"",
    );
    let config = replace_present(&config, "# [broker.users]", "[broker.users]");
    replace_present(
        &config,
        "# worker = \"${MQTT_PASSWORD}\"",
        &format!("worker = \"${{MQTT_PASSWORD}}\"\n{more_users}"),
    )
}

/// `text` with `from` replaced by `to`, which must occur in it (so a changed
/// example config fails loudly instead of silently testing something else).
#[track_caller]
pub fn replace_present(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the config");
    text.replace(from, to)
}

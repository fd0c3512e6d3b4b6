//! The systemd unit in `packaging/`: `systemd-analyze verify` finds nothing
//! to say about it, and it keeps the settings a clean stop and restart rely
//! on (KillMode, a stop timeout above `kill_grace`, restarts, the state
//! directory, a dedicated user, the hardening options).

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::project_dir;

const UNIT: &str = "packaging/ansible-worker.service";

fn unit_text() -> String {
    std::fs::read_to_string(project_dir().join(UNIT)).unwrap()
}

/// The `[Service]` section's settings (the last value of each key).
fn service_settings(text: &str) -> HashMap<String, String> {
    let mut settings = HashMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    settings
}

/// The default `worker.kill_grace` as config.example.toml documents it.
fn default_kill_grace() -> u64 {
    let example = std::fs::read_to_string(project_dir().join("config.example.toml")).unwrap();
    let value: toml::Value = toml::from_str(&example).unwrap();
    value["worker"]["kill_grace"].as_integer().unwrap() as u64
}

#[test]
fn systemd_analyze_verify_finds_nothing() {
    // verify checks that ExecStart's program exists: point it at the binary
    // this test suite built. Documentation= names a man page that only an
    // installation provides, hence --man=no.
    let dir = tempfile::TempDir::new().unwrap();
    let unit = dir.path().join("ansible-worker.service");
    let text = unit_text().replace(
        "/usr/local/bin/ansible-worker",
        env!("CARGO_BIN_EXE_ansible-worker"),
    );
    std::fs::write(&unit, text).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package; scripts/setup installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // verify exits 0 even for a setting it ignores: anything it says is a fault.
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{said}",
        output.status
    );
}

#[test]
fn unit_stops_cleanly_restarts_and_is_hardened() {
    let settings = service_settings(&unit_text());
    let get = |key: &str| {
        settings
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{UNIT} has no {key}="))
    };
    // SIGTERM to the worker alone, which stops its runs itself; SIGKILL for
    // whatever remains after the timeout.
    assert_eq!(get("KillMode"), "mixed");
    let stop_timeout: u64 = get("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let kill_grace = default_kill_grace();
    assert!(
        stop_timeout >= kill_grace + 10,
        "TimeoutStopSec={stop_timeout} leaves no margin above kill_grace = {kill_grace}"
    );
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("StateDirectory"), "ansible-worker");
    assert!(
        get("ExecStart").contains("-c /etc/ansible-worker/config.toml"),
        "{}",
        get("ExecStart")
    );
    let user = get("User");
    assert!(user != "root" && user != "0", "runs as {user}");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
    ] {
        assert_eq!(get(key), value, "{key}");
    }
}

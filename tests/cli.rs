//! The command line: `--validate`, `print-config`, and config errors that name
//! the key.

mod common;

use std::process::Command;

fn worker(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
        .args(args)
        .env_remove("MQTT_PASSWORD")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn print_config_prints_the_example_which_validates() {
    let (code, stdout, _) = worker(&["print-config"]);
    assert_eq!(code, 0);
    let example = common::project_dir().join("config.example.toml");
    assert_eq!(stdout, std::fs::read_to_string(&example).unwrap());
    let (code, stdout, stderr) = worker(&["-c", example.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn validate_lists_every_problem_and_exits_1() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
[worker]
group_name = "a/b"
playbook_directory = "does-not-exist"
concurrency = 0
[mqtt]
password = "${MQTT_PASSWORD}"
"#,
    )
    .unwrap();
    let (code, _, stderr) = worker(&["-c", config.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("MQTT_PASSWORD"), "{stderr}");
    assert!(stderr.contains("mqtt.password"), "{stderr}");

    std::fs::write(
        &config,
        "[worker]\ngroup_name = \"a/b\"\nplaybook_directory = \"nope\"\nconcurrency = 0\n",
    )
    .unwrap();
    let (code, _, stderr) = worker(&["-c", config.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 1);
    for key in [
        "worker.group_name",
        "worker.playbook_directory",
        "worker.concurrency",
    ] {
        assert!(stderr.contains(key), "{key} missing in:\n{stderr}");
    }
}

#[test]
fn a_typo_in_a_key_is_named() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("typo.toml");
    std::fs::write(
        &config,
        "[worker]\ngroup_name = \"g\"\nplaybook_directory = \".\"\nconcurency = 2\n",
    )
    .unwrap();
    let (code, _, stderr) = worker(&["-c", config.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("concurency"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let (code, _, stderr) = worker(&["-c", "/nonexistent/config.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/config.toml"), "{stderr}");
}

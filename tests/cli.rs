//! The command line: `--validate`, `print-config`, config errors that name
//! the key, `-c` from the environment, start-up errors, completions, the
//! manual, and the second Ctrl-C.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn worker(args: &[&str]) -> (i32, String, String) {
    worker_in(None, &[], args)
}

/// Runs the binary to its end in `cwd` (default: the test's), with `env`
/// added to an environment without the variables the tests set themselves.
fn worker_in(cwd: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ansible-worker"));
    command
        .args(args)
        .env_remove("MQTT_PASSWORD")
        .env_remove("ANSIBLE_WORKER_CONFIG")
        .envs(env.iter().copied());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command.output().unwrap();
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

#[test]
fn validate_lists_a_wrong_type_an_unknown_key_and_a_missing_directory_at_once() {
    // The example of the issue: the wrong type used to hide the other two.
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[worker]\ngroup_name = \"g\"\nconcurrency = \"two\"\nmax_queue_sise = 5\n\
         playbook_directory = \"no-such-dir\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = worker(&["-c", config.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let problems: Vec<&str> = stderr.lines().skip(1).collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(
        problems[0].starts_with("worker.concurrency: invalid type"),
        "{stderr}"
    );
    assert_eq!(
        problems[1],
        "worker.max_queue_sise: unknown key (did you mean `max_queue_size`?)"
    );
    assert!(
        problems[2].starts_with("worker.playbook_directory: ")
            && problems[2].ends_with("no-such-dir does not exist"),
        "{stderr}"
    );
}

#[test]
fn validate_lists_every_poll_problem_at_once_without_its_secrets() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("http.toml");
    std::fs::write(
        &config,
        r#"transport = "http"
[worker]
group_name = "g"
worker_id = "w"
playbook_directory = "."
[poll]
base_url = "https://ops:s3cret-in-url@controller.example?x=1"
interval = 0
timeout = 5
bearer_token = "${POLL_TOKEN}"
username = "ops"
tls_client_cert = "worker.pem"
[broker]
enabled = true
"#,
    )
    .unwrap();
    let env = [("POLL_TOKEN", "s3cret-token")];
    let (code, stdout, stderr) =
        worker_in(None, &env, &["-c", config.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let problems: Vec<&str> = stderr.lines().skip(1).collect();
    let worker_pem = dir.path().join("worker.pem");
    assert_eq!(
        problems,
        [
            "broker.enabled: the embedded broker serves only transport = \"mqtt\"; \
             turn it off with transport = \"http\"",
            "poll.base_url: must not carry a user name or password; \
             set poll.username and poll.password",
            "poll.base_url: must not have a query ('?'): /tasks is appended to it",
            "poll.interval: must be at least 1",
            "poll.connect_timeout: must be at most poll.timeout (5)",
            "poll.bearer_token: cannot be combined with poll.username and poll.password: \
             choose one kind of auth",
            &format!(
                "poll.tls_client_cert: {} does not exist",
                worker_pem.display()
            ),
            "poll.tls_client_key: is required with poll.tls_client_cert",
        ],
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn validate_with_a_command_is_a_usage_error_and_runs_nothing() {
    let (code, stdout, stderr) = worker(&["--validate", "print-config"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "the command ran: {stdout}");
    assert!(stderr.contains("--validate"), "{stderr}");
    let (code, _, stderr) = worker(&["--validate", "submit", "p.yml", "-i", "h,"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'submit'"), "{stderr}");
    assert!(!stderr.contains("config.toml"), "submit ran: {stderr}");
}

#[test]
fn the_config_file_defaults_to_ansible_worker_config() {
    let cwd = tempfile::TempDir::new().unwrap();
    let elsewhere = tempfile::TempDir::new().unwrap();
    let from_env = elsewhere.path().join("from-env.toml");
    let from_env = from_env.to_str().unwrap();
    let env = [("ANSIBLE_WORKER_CONFIG", from_env)];
    // `docker exec ... ansible-worker submit` runs in another directory.
    for args in [
        &["--validate"][..],
        &["submit", "p.yml", "-i", "h,"],
        &["cancel", "t1"],
    ] {
        let (code, _, stderr) = worker_in(Some(cwd.path()), &env, args);
        assert_ne!(code, 0, "{args:?}");
        assert!(
            stderr.contains(&format!("{from_env}: cannot read config file")),
            "{args:?}: {stderr}"
        );
    }
    // -c still wins.
    let (_, _, stderr) = worker_in(Some(cwd.path()), &env, &["-c", "given.toml", "--validate"]);
    assert!(stderr.contains("given.toml: cannot read"), "{stderr}");
    assert!(!stderr.contains(from_env), "{stderr}");
}

#[test]
fn a_taken_listen_address_is_reported_once_with_its_os_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let playbooks = playbooks_dir();
    let state = dir.path().join("state");
    for (section, message) in [
        ("broker", "embedded broker cannot listen on"),
        ("http", "cannot listen for HTTP on"),
    ] {
        let config = dir.path().join(format!("{section}.toml"));
        std::fs::write(
            &config,
            format!(
                "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\nplaybook_directory = {playbooks:?}\n\
                 state_dir = {state:?}\n[{section}]\nenabled = true\nlisten = \"{addr}\"\n"
            ),
        )
        .unwrap();
        let (code, _, stderr) = worker(&["-c", config.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        let expected = format!("ansible-worker: {message} {addr}: ");
        let line = stderr
            .lines()
            .find(|line| line.starts_with(&expected))
            .unwrap_or_else(|| panic!("no {expected:?} in:\n{stderr}"));
        let in_use = format!("(os error {})", nix::errno::Errno::EADDRINUSE as i32);
        assert!(line.ends_with(&in_use), "{line}");
        // The OS error once in that line, and the line once (another log
        // line may carry an OS error of its own, e.g. a refused connection).
        assert_eq!(line.matches("(os error").count(), 1, "{line}");
        assert_eq!(stderr.matches(&in_use).count(), 1, "{stderr}");
    }
}

#[test]
fn completions_are_printed_for_every_shell_and_bash_loads_its_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, stderr) = worker(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(
            script.contains("submit") && script.contains("validate"),
            "{shell}"
        );
    }
    let (_, script, _) = worker(&["completions", "bash"]);
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("ansible-worker.bash");
    std::fs::write(&file, script).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {file:?} && complete -p ansible-worker"))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("ansible-worker"),
        "{loaded:?}"
    );
    let (code, _, stderr) = worker(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn man_prints_the_page_and_writes_one_per_command() {
    let (code, page, stderr) = worker(&["man"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(page.contains(".TH ansible-worker 1"), "{page}");
    for text in ["validate", "ANSIBLE_WORKER_CONFIG", "second SIGINT"] {
        assert!(page.contains(text), "{text} missing in:\n{page}");
    }
    let dir = tempfile::TempDir::new().unwrap();
    let out = dir.path().join("man1");
    let (code, _, stderr) = worker(&["man", "--dir", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for name in [
        "ansible-worker",
        "ansible-worker-submit",
        "ansible-worker-cancel",
    ] {
        let page = std::fs::read_to_string(out.join(format!("{name}.1"))).unwrap();
        assert!(page.contains(&format!(".TH {name} 1")), "{page}");
    }
    let submit = std::fs::read_to_string(out.join("ansible-worker-submit.1")).unwrap();
    assert!(submit.contains("\\-\\-forks"), "{submit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once_and_leaves_no_run_behind() {
    let broker = Mosquitto::start();
    let group = unique("sigint");
    let mut setup = WorkerSetup::new(&group, broker.port);
    // The graceful shutdown would wait this long for the stubborn run.
    setup.kill_grace = 120;
    let mut worker = setup.start();
    let observer = Observer::start(broker.port, &group).await;
    let token = unique("stubborn");
    observer
        .submit(json!({
            "task_id": "t-1", "playbook": "trap_term.yml", "inventory": "localhost.yml",
            "extra_vars": {"token": token}
        }))
        .await;
    // Its shell carries the token from exec on, but ignores SIGTERM only once
    // its `trap` ran: wait for that, or the first SIGINT could end the run.
    assert!(
        wait_for(DEADLINE, || processes_with(&token)
            .into_iter()
            .any(ignores_sigterm))
        .await,
        "the run's task never started ignoring SIGTERM"
    );
    worker.interrupt();
    worker.wait_log("SIGINT received", Duration::from_secs(20));
    // The run ignores SIGTERM: the graceful shutdown is now waiting.
    assert!(worker.is_running());
    let second = Instant::now();
    worker.interrupt();
    let code = worker.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(130), "{}", worker.log());
    let took = second.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&token).is_empty()),
        "the run outlived the worker: {:?}",
        processes_with(&token)
    );
    assert!(
        worker.log().contains("killing the runs"),
        "{}",
        worker.log()
    );
    eprintln!("exit {took:?} after the second SIGINT");
}

/// True when process `pid` ignores SIGTERM (bit 15 of `SigIgn` in its status).
fn ignores_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (nix::sys::signal::Signal::SIGTERM as i32 - 1)) != 0)
}

//! `ansible-worker submit` and `cancel` as a user runs them: the real binary
//! against a real Mosquitto and a real worker, with a config file of its own.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tempfile::TempDir;

/// A config file for the command line, pointing at the broker on `port`.
struct Controller {
    dir: TempDir,
}

impl Controller {
    fn new(port: u16, group: &str) -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[worker]\ngroup_name = \"{group}\"\nplaybook_directory = \"{}\"\n\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeepalive = 5\n",
                playbooks_dir().display()
            ),
        )
        .unwrap();
        Controller { dir }
    }

    /// Starts `ansible-worker -c <config> <args>` in the project directory.
    fn spawn(&self, args: &[&str]) -> Run {
        let config = self.dir.path().join("config.toml");
        let mut argv = vec!["-c", config.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.spawn_raw(&argv)
    }

    /// Starts `ansible-worker <argv>` in the project directory.
    fn spawn_raw(&self, argv: &[&str]) -> Run {
        let n = fastrand::u32(..);
        let stdout = self.dir.path().join(format!("stdout-{n}"));
        let stderr = self.dir.path().join(format!("stderr-{n}"));
        let child = Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
            .args(argv)
            .current_dir(project_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Run {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Runs the command to its end (within `timeout`).
    async fn run(&self, args: &[&str], timeout: Duration) -> Ended {
        self.spawn(args).finish(timeout).await
    }
}

/// A running command; killed if the test ends first.
struct Run {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// How a command ended.
#[derive(Debug)]
struct Ended {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    async fn finish(mut self, timeout: Duration) -> Ended {
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() >= end {
                panic!(
                    "the command did not end within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    read(&self.stdout),
                    read(&self.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.child = None;
        Ended {
            code,
            stdout: read(&self.stdout),
            stderr: read(&self.stderr),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

struct Setup {
    broker: Mosquitto,
    _worker: Worker,
    observer: Observer,
    cli: Controller,
}

async fn setup(group: &str) -> Setup {
    let broker = Mosquitto::start();
    let worker = WorkerSetup::new(group, broker.port).start();
    let observer = Observer::start(broker.port, group).await;
    let cli = Controller::new(broker.port, group);
    Setup {
        broker,
        _worker: worker,
        observer,
        cli,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_sends_local_paths_relative_and_prints_progress_and_output() {
    let s = setup("sub-ok").await;
    let ended = s
        .cli
        .run(
            &[
                "submit",
                "tests/playbooks/multi_host.yml",
                "-i",
                "tests/playbooks/hosts.yml",
                "--wait",
            ],
            DEADLINE,
        )
        .await;
    assert_eq!(ended.code, 0, "{ended:?}");
    let lines: Vec<&str> = ended.stdout.lines().collect();
    let task_id = lines[0];
    assert!(task_id.starts_with("multi_host-"), "{ended:?}");
    assert!(
        lines.iter().any(|l| l.contains(" running  total=")),
        "{ended:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" success  total=12 ")),
        "{ended:?}"
    );
    assert!(ended.stdout.contains("output:\n{\n"), "{ended:?}");
    assert!(ended.stdout.contains("\"deployed\": \"v1\""), "{ended:?}");
    assert!(!ended.stdout.contains("error_message"), "{ended:?}");
    // The worker resolved the relativized paths: it ran, it did not refuse.
    let done = s.observer.wait_final(task_id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
}

/// `--follow` prints the task's events as they arrive (Ansible's lines as
/// they are, task starts and results in short), a status line per state,
/// then the final status; an extra var the playbook does not print stays
/// out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_prints_the_events_then_the_final_status() {
    let s = setup("sub-follow").await;
    let secret = "tok-follow-5d1e";
    let token = format!("api_token={secret}");
    let ended = s
        .cli
        .run(
            &[
                "submit",
                "events.yml",
                "-i",
                "hosts.yml",
                "-e",
                &token,
                "--task-id",
                "follow-1",
                "--follow",
            ],
            DEADLINE,
        )
        .await;
    assert_eq!(ended.code, 0, "{ended:?}");
    let lines: Vec<&str> = ended.stdout.lines().collect();
    assert_eq!(lines[0], "follow-1", "{ended:?}");
    let at = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| found(l))
            .unwrap_or_else(|| panic!("no {what} in {ended:?}"))
    };
    let running = at("running line", &|l| l.contains(" running  total="));
    let start = at("task start", &|l| l.ends_with(" TASK [Say hello]"));
    let ansible_start = at("Ansible's task line", &|l| {
        l.starts_with("TASK [Say hello] *")
    });
    let changed = at("changed result", &|l| l.ends_with(" h1: changed"));
    let ignored = at("ignored failure", &|l| l.ends_with(" h1: failed (ignored)"));
    let handler = at("handler start", &|l| {
        l.ends_with(" RUNNING HANDLER [Report change]")
    });
    let recap = at("recap", &|l| l.starts_with("PLAY RECAP *"));
    let success = at("final line", &|l| l.contains(" success  total=8 "));
    assert!(
        running < start && start < changed && changed < ignored,
        "{ended:?}"
    );
    assert!(running < ansible_start && ignored < handler, "{ended:?}");
    assert!(handler < success && recap < success, "{ended:?}");
    // The final line ends the output (no set_stats data, no error), and
    // counters alone print no status line while events show the progress.
    assert_eq!(success, lines.len() - 1, "{ended:?}");
    let status_lines = lines.iter().filter(|l| l.contains(" total=")).count();
    assert_eq!(status_lines, 3, "queued, running, success: {ended:?}");
    assert!(!ended.stdout.contains(secret), "{ended:?}");
    assert!(!ended.stderr.contains("lost"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_of_a_failing_playbook_exits_1_with_the_error_message() {
    let s = setup("sub-fail").await;
    let ended = s
        .cli
        .run(
            &["submit", "failing.yml", "-i", "localhost.yml", "--wait"],
            DEADLINE,
        )
        .await;
    assert_eq!(ended.code, 1, "{ended:?}");
    assert!(
        ended.stdout.lines().any(|l| l.contains(" failed   total=")),
        "{ended:?}"
    );
    assert!(ended.stdout.contains("error_message: "), "{ended:?}");
    assert!(ended.stdout.contains("intentional failure"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_json_prints_only_the_final_status_document() {
    let s = setup("sub-json").await;
    let ended = s
        .cli
        .run(
            &[
                "submit",
                "multi_host.yml",
                "-i",
                "hosts.yml",
                "--json",
                "--task-id",
                "json-1",
                "-e",
                "who=cli",
            ],
            DEADLINE,
        )
        .await;
    assert_eq!(ended.code, 0, "{ended:?}");
    let doc: Value = serde_json::from_str(&ended.stdout).expect("one JSON document");
    assert_eq!(doc["task_id"], "json-1");
    assert_eq!(doc["state"], "success");
    assert_eq!(doc["tasks_total"], 12);
    assert_eq!(doc["output"]["deployed"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_wait_prints_the_task_id_and_the_task_runs() {
    let s = setup("sub-nowait").await;
    let ended = s
        .cli
        .run(
            &["submit", "multi_host.yml", "-i", "hosts.yml"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(ended.code, 0, "{ended:?}");
    let task_id = ended.stdout.trim();
    assert!(
        task_id.starts_with("multi_host-") && !task_id.contains('\n'),
        "{ended:?}"
    );
    let done = s.observer.wait_final(task_id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_running_task_and_the_waiting_submit_exits_4() {
    let s = setup("sub-cancel").await;
    let waiting = s.cli.spawn(&[
        "submit",
        "sleep.yml",
        "-i",
        "localhost.yml",
        "-e",
        "seconds=60",
        "--task-id",
        "cancel-1",
        "--wait",
    ]);
    s.observer.wait_state("cancel-1", "running", DEADLINE).await;
    let cancel = s
        .cli
        .run(
            &["cancel", "cancel-1", "--reason", "not needed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(cancel.code, 0, "{cancel:?}");
    let ended = waiting.finish(Duration::from_secs(30)).await;
    assert_eq!(ended.code, 4, "{ended:?}");
    assert!(
        ended
            .stdout
            .lines()
            .any(|l| l.contains(" cancelled total=")),
        "{ended:?}"
    );
    let done = s.observer.wait_final("cancel-1", DEADLINE).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let message = done["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("not needed"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_follows_the_task_across_a_broker_restart() {
    let mut s = setup("sub-restart").await;
    let waiting = s.cli.spawn(&[
        "submit",
        "sleep.yml",
        "-i",
        "localhost.yml",
        "-e",
        "seconds=8",
        "--task-id",
        "restart-1",
        "--wait",
    ]);
    s.observer
        .wait_state("restart-1", "running", DEADLINE)
        .await;
    // No persistence: the retained status is gone; the worker publishes it
    // again after reconnecting, and the command resubscribes.
    s.broker.restart();
    let ended = waiting.finish(DEADLINE).await;
    assert_eq!(ended.code, 0, "{ended:?}");
    assert!(ended.stderr.contains("reconnected"), "{ended:?}");
    assert!(
        ended
            .stdout
            .lines()
            .any(|l| l.contains(" success  total=1 ")),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_exits_2_when_no_final_status_arrives() {
    let s = setup("sub-waittimeout").await;
    let ended = s
        .cli
        .run(
            &[
                "submit",
                "sleep.yml",
                "-i",
                "localhost.yml",
                "-e",
                "seconds=5",
                "--wait-timeout",
                "1",
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(ended.code, 2, "{ended:?}");
    assert!(ended.stderr.contains("--wait-timeout"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_no_worker_listening_exits_2() {
    let broker = Mosquitto::start();
    let cli = Controller::new(broker.port, "sub-nobody");
    let ended = cli
        .run(&["cancel", "some-task"], Duration::from_secs(20))
        .await;
    assert_eq!(ended.code, 2, "{ended:?}");
    assert!(
        ended.stderr.contains("no worker is subscribed"),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_config_and_connection_errors_exit_2() {
    let cli = Controller::new(free_port(), "sub-errors");
    let unreachable = cli
        .run(
            &["submit", "hello.yml", "-i", "h,"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(unreachable.code, 2, "{unreachable:?}");
    assert!(
        unreachable
            .stderr
            .starts_with("ansible-worker: cannot connect to the MQTT broker"),
        "{unreachable:?}"
    );
    let bad_id = cli.run(&["cancel", "a/b"], Duration::from_secs(20)).await;
    assert_eq!(bad_id.code, 2, "{bad_id:?}");
    let bad_var = cli
        .run(
            &["submit", "hello.yml", "-i", "h,", "-e", "{\"a\": "],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(bad_var.code, 2, "{bad_var:?}");
    assert!(bad_var.stderr.contains("invalid JSON"), "{bad_var:?}");
    let missing = cli
        .spawn_raw(&["-c", "/nonexistent/config.toml", "cancel", "t1"])
        .finish(Duration::from_secs(20))
        .await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("invalid configuration"),
        "{missing:?}"
    );
}

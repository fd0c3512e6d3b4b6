//! The real `ansible-worker` binary as a child process: a generated config
//! ([`WorkerSetup`]) or one the test writes ([`Worker::with_config`]), its
//! log, restarts, signals and exit code. Brokers and MQTT clients live in
//! `mosquitto.rs` and `observer.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{ansible_playbook, kill_processes_mentioning, playbooks_dir, wait_until};

/// Settings for one worker process.
pub struct WorkerSetup {
    pub group: String,
    pub worker_id: String,
    pub port: u16,
    pub playbook_directory: PathBuf,
    pub concurrency: usize,
    pub max_queue_size: usize,
    pub task_timeout: u64,
    pub kill_grace: u64,
    pub shared_subscription: bool,
    /// Extra `[worker]` lines.
    pub extra_worker: String,
    /// Extra `[mqtt]` lines.
    pub extra_mqtt: String,
    /// Serve `/readyz` and the API on 127.0.0.1 and this port.
    pub http_port: Option<u16>,
    /// Environment variables for the worker process.
    pub env: Vec<(String, String)>,
}

impl WorkerSetup {
    /// Defaults for a worker of `group` against the broker on `port`.
    pub fn new(group: &str, port: u16) -> Self {
        WorkerSetup {
            group: group.to_owned(),
            worker_id: format!("{group}-w1"),
            port,
            playbook_directory: playbooks_dir(),
            concurrency: 2,
            max_queue_size: 100,
            task_timeout: 600,
            kill_grace: 2,
            shared_subscription: true,
            extra_worker: String::new(),
            extra_mqtt: String::new(),
            http_port: None,
            env: Vec::new(),
        }
    }

    /// Starts the worker binary with this setup and waits until the broker
    /// granted its subscription to task requests.
    pub fn start(&self) -> Worker {
        let worker = Worker::spawn(self);
        assert!(
            wait_until(Duration::from_secs(20), || worker
                .log()
                .contains("subscribed")),
            "worker did not subscribe:\n{}",
            worker.log()
        );
        worker
    }

    /// Starts the worker binary without waiting for anything.
    pub fn spawn(&self) -> Worker {
        Worker::spawn(self)
    }
}

/// The real `ansible-worker` binary running with a generated config.
pub struct Worker {
    pub dir: TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Worker {
    fn spawn(setup: &WorkerSetup) -> Self {
        let dir = TempDir::new().unwrap();
        let http = setup
            .http_port
            .map(|port| format!("[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let config = format!(
            r#"log_level = "debug"
[worker]
group_name = "{group}"
worker_id = "{worker_id}"
playbook_directory = "{playbooks}"
concurrency = {concurrency}
max_queue_size = {max_queue}
task_timeout = {timeout}
kill_grace = {grace}
shared_subscription = {shared}
ansible_playbook_path = "{ansible}"
state_dir = "{state}"
{extra}

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
{extra_mqtt}
{http}"#,
            group = setup.group,
            worker_id = setup.worker_id,
            playbooks = setup.playbook_directory.display(),
            concurrency = setup.concurrency,
            max_queue = setup.max_queue_size,
            timeout = setup.task_timeout,
            grace = setup.kill_grace,
            shared = setup.shared_subscription,
            ansible = ansible_playbook().display(),
            state = dir.path().join("state").display(),
            extra = setup.extra_worker,
            port = setup.port,
            extra_mqtt = setup.extra_mqtt,
        );
        Self::launch(dir, &config, &setup.env)
    }

    /// Starts the binary with the config text `make_config` writes for the
    /// worker's own temp dir (for state and scratch files).
    pub fn with_config(make_config: impl FnOnce(&Path) -> String) -> Self {
        Self::with_config_and_env(&[], make_config)
    }

    /// As [`Worker::with_config`], with extra environment variables.
    pub fn with_config_and_env(
        env: &[(&str, &str)],
        make_config: impl FnOnce(&Path) -> String,
    ) -> Self {
        let dir = TempDir::new().unwrap();
        let config = make_config(dir.path());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(dir, &config, &env)
    }

    fn launch(dir: TempDir, config: &str, env: &[(String, String)]) -> Self {
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut worker = Worker {
            dir,
            child: None,
            env: env.to_vec(),
        };
        worker.restart();
        worker
    }

    /// Starts the binary (again, after [`Worker::kill`] or an exit) with the
    /// same config, state and environment; the log continues.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the worker is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("worker.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
            .arg("-c")
            .arg(self.config_path())
            .env("RUST_LOG", "debug,rumqttc=info,rumqttd=warn")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the worker logged `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.log().contains(needle)),
            "worker never logged {needle:?}:\n{}",
            self.log()
        );
    }

    /// Sends SIGKILL (no shutdown, no DISCONNECT).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The config file the worker was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// What the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
    }

    /// Waits for the process to exit; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    /// Stops the worker the way a supervisor would (SIGTERM, so it kills its
    /// runs), then makes sure no process of its runs outlives the test, even
    /// when the test SIGKILLed the worker.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(20)).is_none() {
                self.kill();
            }
        }
        kill_processes_mentioning(&self.dir.path().display().to_string());
        if std::thread::panicking() {
            eprintln!("---- worker log ----\n{}", self.log());
        }
    }
}

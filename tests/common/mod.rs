//! Start and stop real components for integration tests: a Mosquitto broker on
//! a free loopback port, the `ansible-worker` binary with a generated config,
//! and an MQTT observer that records every status document.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tempfile::TempDir;

/// Generous deadline for anything that involves a real `ansible-playbook` on a
/// busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The project's own checkout.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ansible-playbook` from the project's `.venv` (or `$ANSIBLE_PLAYBOOK`).
pub fn ansible_playbook() -> PathBuf {
    if let Some(path) = std::env::var_os("ANSIBLE_PLAYBOOK") {
        return PathBuf::from(path);
    }
    let path = project_dir().join(".venv/bin/ansible-playbook");
    assert!(
        path.exists(),
        "{} is missing: run .ci/run (or scripts/setup) first",
        path.display()
    );
    path
}

/// The test playbooks shipped in `tests/playbooks`.
pub fn playbooks_dir() -> PathBuf {
    project_dir().join("tests/playbooks")
}

/// A free TCP port on 127.0.0.1 (bound then released), never one this test
/// process was given before: the kernel readily hands the same port out
/// twice in a row, and two listeners of one appliance must differ.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`wait_until`].
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Mosquitto 2 broker on 127.0.0.1 and a port of its own.
pub struct Mosquitto {
    pub port: u16,
    dir: TempDir,
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a broker whose config ends with `extra` (more listeners, with
    /// `per_listener_settings true` in force).
    pub fn start_with(extra: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let mut broker = Mosquitto {
            port: free_port(),
            dir,
            extra: extra.to_owned(),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\nuser root\npersistence false\nmax_packet_size 2000000\n\
                 log_dest stderr\nlistener {} 127.0.0.1\nallow_anonymous true\n{}\n",
                self.port, self.extra
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (.ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "mosquitto did not start on port {port}"
        );
    }

    /// Kills the broker (its retained messages are gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

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
            env: Vec::new(),
        }
    }

    /// Starts the worker binary with this setup and waits until it subscribed.
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
"#,
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

/// SIGKILLs every process whose environment mentions `needle` (a worker's
/// temp dir appears in the environment of each of its runs' processes).
fn kill_processes_mentioning(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && String::from_utf8_lossy(&environ).contains(needle)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// One status document as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub doc: Value,
}

/// An MQTT 5 client that records every status document of a group, and
/// resubscribes after each reconnect (so it survives broker restarts).
pub struct Observer {
    pub client: AsyncClient,
    seen: Arc<Mutex<Vec<Seen>>>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    prefix: String,
}

impl Observer {
    /// Connects to the broker on `port` and follows `ansible/<group>/tasks/+/status/#`.
    pub async fn start(port: u16, group: &str) -> Self {
        Self::start_with(port, group, None).await
    }

    /// As [`Observer::start`], logging in with `(user, password)`.
    pub async fn start_with(port: u16, group: &str, login: Option<(&str, &str)>) -> Self {
        let mut options = MqttOptions::new(
            format!("observer-{group}-{}", fastrand::u32(..)),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let filters = [
            format!("ansible/{group}/tasks/+/status/#"),
            format!("ansible/{group}/workers/+"),
        ];
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let sink = seen.clone();
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connected = connects.clone();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        for filter in &filters {
                            let _ = sub_client.try_subscribe(filter, QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        if let Ok(doc) = serde_json::from_slice::<Value>(&p.payload) {
                            sink.lock().unwrap().push(Seen { topic, doc });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("observer subscribed")
            .unwrap();
        Observer {
            client,
            seen,
            connects,
            task,
            prefix: format!("ansible/{group}"),
        }
    }

    /// Publishes a raw request payload on the group's tasks topic (QoS 2).
    pub async fn publish_raw(&self, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                format!("{}/tasks", self.prefix),
                QoS::ExactlyOnce,
                false,
                payload.into(),
            )
            .await
            .unwrap();
    }

    /// How many times the observer connected (1 unless it lost the connection).
    pub fn connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publishes a cancel request for `task_id`.
    pub async fn cancel(&self, task_id: &str, payload: &str) {
        self.client
            .publish(
                format!("{}/tasks/{task_id}/cancel", self.prefix),
                QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// Publishes a JSON request.
    pub async fn submit(&self, request: Value) {
        self.publish_raw(serde_json::to_vec(&request).unwrap())
            .await;
    }

    /// Every status document received for `task_id`, in order.
    pub fn statuses(&self, task_id: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|s| s.doc["task_id"] == task_id)
            .map(|s| s.doc)
            .collect()
    }

    /// Every status document received, with topics.
    pub fn all(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.topic.contains("/tasks/"))
            .cloned()
            .collect()
    }

    /// Every presence document of `worker_id` received, in order.
    pub fn presence(&self, worker_id: &str) -> Vec<Value> {
        let topic = format!("{}/workers/{worker_id}", self.prefix);
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.topic == topic)
            .map(|s| s.doc.clone())
            .collect()
    }

    /// The states received for `task_id`, in order.
    pub fn states(&self, task_id: &str) -> Vec<String> {
        self.statuses(task_id)
            .iter()
            .map(|d| d["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Waits until a final status of `task_id` arrives and returns it.
    pub async fn wait_final(&self, task_id: &str, timeout: Duration) -> Value {
        let mut found = None;
        let arrived = wait_for(timeout, || {
            found = self.statuses(task_id).into_iter().find(is_final);
            found.is_some()
        })
        .await;
        assert!(
            arrived,
            "no final status for {task_id}; saw {:?}",
            self.states(task_id)
        );
        found.unwrap()
    }

    /// Waits until `task_id` has a status in `state`.
    pub async fn wait_state(&self, task_id: &str, state: &str, timeout: Duration) -> Value {
        let mut found = None;
        let arrived = wait_for(timeout, || {
            found = self
                .statuses(task_id)
                .into_iter()
                .find(|d| d["state"] == state);
            found.is_some()
        })
        .await;
        assert!(
            arrived,
            "{task_id} never reached {state}; saw {:?}",
            self.states(task_id)
        );
        found.unwrap()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// True for a status document in a final state.
pub fn is_final(doc: &Value) -> bool {
    matches!(
        doc["state"].as_str(),
        Some("success" | "failed" | "cancelled" | "timeout")
    )
}

/// Number of final statuses in `docs`, counting a repeated identical final
/// document once (re-publishing after a reconnect repeats it verbatim).
pub fn distinct_finals(docs: &[Value]) -> usize {
    let mut finals: Vec<&Value> = docs.iter().filter(|d| is_final(d)).collect();
    finals.dedup();
    finals.len()
}

/// Processes whose command line (arguments joined by spaces) contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// The PLAY RECAP of running `playbook` directly, summed over hosts:
/// (ok, changed, unreachable, failed, skipped, rescued, ignored).
pub fn recap_of(playbook: &Path, inventory: &Path) -> [u64; 7] {
    let output = Command::new(ansible_playbook())
        .arg(playbook)
        .arg("-i")
        .arg(inventory)
        .current_dir(playbook.parent().unwrap())
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let recap = text.split("PLAY RECAP").nth(1).expect("a PLAY RECAP");
    let mut sums = [0u64; 7];
    let keys = [
        "ok",
        "changed",
        "unreachable",
        "failed",
        "skipped",
        "rescued",
        "ignored",
    ];
    for word in recap.split_whitespace() {
        if let Some((key, value)) = word.split_once('=')
            && let Some(i) = keys.iter().position(|k| *k == key)
        {
            sums[i] += value.parse::<u64>().unwrap();
        }
    }
    sums
}

/// A short random id for a task or group.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

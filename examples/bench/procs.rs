//! The processes a bench round runs: a Mosquitto broker and the real
//! `ansible-worker` binary with a generated config. Every child is stopped
//! when its guard drops (also on error or panic), and is listed in a registry
//! so a Ctrl-C of the bench stops it too.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a worker or broker may take to come up or to go away.
const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// Process ids of the children alive now, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A free TCP port on 127.0.0.1 (bound, then released), never the same twice
/// in one bench: one worker's listeners must differ.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// A child process that is terminated (SIGTERM, then SIGKILL after a
/// deadline) when dropped.
struct Guarded {
    child: Child,
}

impl Guarded {
    fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let child = command.spawn()?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(Guarded { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to the deadline, then SIGKILL.
    fn stop(&mut self) {
        let pid = Pid::from_raw(self.pid() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + DEADLINE;
        while !self.exited() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
        let id = self.pid();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|pid| *pid != id);
    }
}

/// Terminates every child still registered (SIGTERM, so a worker ends its
/// runs; SIGKILL to whatever is left after the deadline). For the Ctrl-C path,
/// where the guards never get to drop.
pub fn stop_all_children() {
    let pids: Vec<Pid> = CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|pid| Pid::from_raw(*pid as i32))
        .collect();
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let end = Instant::now() + DEADLINE;
    let alive = |pid: &Pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    };
    while pids.iter().any(alive) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in pids.iter().filter(|pid| alive(pid)) {
        let _ = kill(*pid, Signal::SIGKILL);
    }
}

/// A Mosquitto 2 broker on 127.0.0.1 and a free port, without persistence.
pub struct Mosquitto {
    /// Its MQTT port.
    pub port: u16,
    _process: Guarded,
}

impl Mosquitto {
    /// Starts `mosquitto` with a config in `dir` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "persistence false\nmax_packet_size 2000000\nlog_dest stderr\n\
                 set_tcp_nodelay true\nmax_queued_messages 100000\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let process = Guarded::spawn(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log),
        )
        .context("cannot start mosquitto (Debian package `mosquitto`)")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > DEADLINE {
                bail!("mosquitto did not listen on port {port}");
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        Ok(Mosquitto {
            port,
            _process: process,
        })
    }
}

/// Which broker the worker talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerChoice {
    /// An external Mosquitto on this port.
    External(u16),
    /// The worker's embedded rumqttd.
    Embedded,
}

/// Which program a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// `ansible-worker` (TOML config, `/readyz`).
    Ours,
    /// The original MQTT worker (`--seed-worker`): YAML config, one executor,
    /// no HTTP listener; ready once its log says it subscribed.
    Seed,
}

impl std::fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerKind::Ours => "ansible-worker",
            WorkerKind::Seed => "original",
        })
    }
}

/// The line the original worker logs once its task subscription is
/// acknowledged.
const SEED_READY_LINE: &str = "Subscribed to task topic";

/// Everything a worker config needs.
pub struct WorkerConfig<'a> {
    /// The program the config is written for.
    pub kind: WorkerKind,
    /// `worker.group_name` (unique per run, so retained statuses of earlier
    /// runs are not delivered again).
    pub group: &'a str,
    /// `worker.playbook_directory`.
    pub playbook_dir: &'a Path,
    /// `worker.ansible_playbook_path`.
    pub ansible_playbook: &'a Path,
    /// `worker.concurrency`.
    pub concurrency: usize,
    /// `worker.max_queue_size` and `worker.history_limit`.
    pub capacity: usize,
    /// The broker.
    pub broker: BrokerChoice,
}

/// The `ansible-worker` binary running in a directory of its own; stopped
/// with SIGTERM on drop.
pub struct Worker {
    /// The port its MQTT clients use (Mosquitto's or the embedded broker's).
    pub mqtt_port: u16,
    /// Its dashboard / health port.
    pub http_port: u16,
    kind: WorkerKind,
    dir: PathBuf,
    process: Guarded,
    spawned: Instant,
}

impl Worker {
    /// Writes the config into `dir` (which must exist) and starts `binary`.
    pub fn spawn(binary: &Path, dir: &Path, config: &WorkerConfig) -> Result<Self> {
        let http_port = free_port()?;
        let (config_path, mqtt_port) = match config.kind {
            WorkerKind::Ours => write_config(dir, config, http_port)?,
            WorkerKind::Seed => write_seed_config(dir, config)?,
        };
        let log = std::fs::File::create(dir.join("worker.log"))?;
        let spawned = Instant::now();
        let process = Guarded::spawn(
            Command::new(binary)
                .arg("-c")
                .arg(&config_path)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )
        .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Worker {
            mqtt_port,
            http_port,
            kind: config.kind,
            dir: dir.to_owned(),
            process,
            spawned,
        })
    }

    /// Waits until the worker takes tasks (`/readyz` answers 200, or the
    /// original worker logged its subscription); the time since the process
    /// was spawned.
    pub fn wait_ready(&mut self) -> Result<Duration> {
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        let log = self.dir.join("worker.log");
        loop {
            let ready = match self.kind {
                WorkerKind::Ours => ureq::get(&url).call().is_ok(),
                WorkerKind::Seed => {
                    std::fs::read_to_string(&log).is_ok_and(|text| text.contains(SEED_READY_LINE))
                }
            };
            if ready {
                return Ok(self.spawned.elapsed());
            }
            if self.process.exited() {
                bail!(
                    "the worker exited before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if self.spawned.elapsed() > DEADLINE {
                bail!(
                    "the worker was not ready in {DEADLINE:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// Resident set size now, in MiB.
    pub fn rss_mib(&self) -> Result<f64> {
        self.status_kib("VmRSS:").map(kib_to_mib)
    }

    /// Peak resident set size so far, in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        self.status_kib("VmHWM:").map(kib_to_mib)
    }

    /// CPU time the worker's own threads used so far (user + system), in
    /// milliseconds; its children (the stub) are not included.
    pub fn cpu_ms(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))?;
        // Fields after the command name, which is in parentheses: state is
        // the first, utime the 12th and stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("malformed /proc/<worker>/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks = |i: usize| -> Result<f64> {
            let field = fields.get(i).context("short /proc/<worker>/stat")?;
            Ok(field.parse::<u64>()? as f64)
        };
        let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
            .context("no clock tick rate")? as f64;
        Ok((ticks(11)? + ticks(12)?) * 1e3 / per_sec)
    }

    fn status_kib(&self, key: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in /proc/<worker>/status"))
    }

    /// The last lines of the worker's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes `ansible-worker`'s TOML config into `dir`; its path and the MQTT
/// port the worker's clients use.
fn write_config(dir: &Path, config: &WorkerConfig, http_port: u16) -> Result<(PathBuf, u16)> {
    let (mqtt_port, mqtt_section) = match config.broker {
        BrokerChoice::External(port) => (port, format!("host = \"127.0.0.1\"\nport = {port}\n")),
        BrokerChoice::Embedded => (free_port()?, String::new()),
    };
    let broker_section = match config.broker {
        BrokerChoice::External(_) => "enabled = false\n".to_owned(),
        BrokerChoice::Embedded => format!("enabled = true\nlisten = \"127.0.0.1:{mqtt_port}\"\n"),
    };
    let text = format!(
        "log_level = \"info\"\n\n[worker]\ngroup_name = \"{group}\"\nworker_id = \"bench-1\"\n\
         playbook_directory = {playbooks:?}\nconcurrency = {concurrency}\n\
         max_queue_size = {capacity}\nhistory_limit = {capacity}\n\
         ansible_playbook_path = {ansible:?}\nstate_dir = {state:?}\n\n\
         [mqtt]\n{mqtt_section}keepalive = 30\n\n[broker]\n{broker_section}\n\
         [http]\nenabled = true\nlisten = \"127.0.0.1:{http_port}\"\n",
        group = config.group,
        playbooks = config.playbook_dir.display().to_string(),
        concurrency = config.concurrency,
        capacity = config.capacity,
        ansible = config.ansible_playbook.display().to_string(),
        state = dir.join("state").display().to_string(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text)?;
    Ok((path, mqtt_port))
}

/// Writes the original worker's YAML config into `dir` (external broker
/// only; it has one executor and no history limit); its path and the MQTT
/// port.
fn write_seed_config(dir: &Path, config: &WorkerConfig) -> Result<(PathBuf, u16)> {
    let BrokerChoice::External(port) = config.broker else {
        bail!("the original worker needs an external broker");
    };
    let text = format!(
        "transport: mqtt\nlog_level: \"INFO\"\nmqtt:\n  host: \"127.0.0.1\"\n  port: {port}\n  keepalive: 30\n\
         worker:\n  group_name: \"{group}\"\n  worker_id: \"bench-seed\"\n  playbook_directory: {playbooks:?}\n\
         \x20 topic_prefix: \"ansible\"\n  max_queue_size: {capacity}\n  task_timeout: 3600\n\
         \x20 ansible_playbook_path: {ansible:?}\n",
        group = config.group,
        playbooks = config.playbook_dir.display().to_string(),
        capacity = config.capacity,
        ansible = config.ansible_playbook.display().to_string(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text)?;
    Ok((path, port))
}

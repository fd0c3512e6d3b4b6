//! The Docker Engine and Compose for the container tests: the images built
//! once per test binary the way `scripts/docker-demo` builds them, and compose
//! projects of `docker/` files under names of their own, removed with their
//! volumes when dropped.
//!
//! Where no engine answers, [`engine`] prints a loud message and the tests
//! return early; under CI (`CI` set) a missing engine fails them instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{project_dir, wait_until};

/// True when a Docker engine answers. Otherwise fails the test under CI, and
/// elsewhere prints why the test is skipped and returns false.
pub fn engine() -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answers {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI requires the container tests, but no Docker engine answers `docker info`"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED: no Docker engine answers `docker info`; the container \
         tests did not run !!!!!!!!\n"
    );
    false
}

/// Builds the images of `docker/compose.yml` and `docker/fleet.yml` (after
/// `scripts/docker-base` has made their base images where none is present),
/// once per test binary; panics with the build's output if one fails.
pub fn build_images() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let started = Instant::now();
    run_ok(&mut Command::new(project_dir().join("scripts/docker-base")));
    run_ok(Command::new("docker-compose").args(["-f", "docker/compose.yml", "build"]));
    run_ok(
        Command::new("docker-compose")
            .args(["-f", "docker/fleet.yml", "build"])
            .env("MQTT_WORKER_PASSWORD", "unused")
            .env("MQTT_CONTROLLER_PASSWORD", "unused"),
    );
    let size = run_ok(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        "ansible-worker:latest",
    ]));
    eprintln!(
        "images built in {:.0?}; ansible-worker:latest is {} MB",
        started.elapsed(),
        String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            / 1_000_000
    );
    *built = true;
}

/// Runs `command` in the project directory; panics with its output unless it
/// succeeds.
fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{:?} failed: {}\n--- stdout\n{}\n--- stderr\n{}",
        command,
        output.status,
        tail(&output.stdout),
        tail(&output.stderr)
    );
    output
}

fn run(command: &mut Command) -> Output {
    command
        .current_dir(project_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// The last 60 lines of a command's output.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A compose project of one of the `docker/` files, under a name of its own.
/// Dropping it removes its containers, networks and volumes.
pub struct Project {
    name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Project {
    /// A project of `file` (relative to the repository) with `env` for the
    /// file's `${...}` settings. Nothing is started yet.
    pub fn new(file: &str, env: &[(&str, &str)]) -> Self {
        let name = format!(
            "awtest{}x{:06x}",
            std::process::id(),
            fastrand::u32(..0x100_0000)
        );
        Project {
            name,
            file: project_dir().join(file),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The project's name (the prefix of its containers, networks, volumes).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `docker-compose <args>` for this project; panics unless it succeeds.
    pub fn compose(&self, args: &[&str]) -> Output {
        run_ok(&mut self.command(args))
    }

    /// The id of `service`'s container.
    pub fn container(&self, service: &str) -> String {
        let output = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(!id.is_empty(), "{service} has no container");
        id
    }

    /// `docker inspect --format <format>` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        let output = run_ok(Command::new("docker").args([
            "inspect",
            "--format",
            format,
            &self.container(service),
        ]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Waits until `service` runs and its health check (if any) passes;
    /// returns how long that took. Panics with its log after `timeout`.
    pub fn wait_healthy(&self, service: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let format =
            "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}";
        let ok = wait_until(timeout, || {
            let state = self.inspect(service, format);
            state == "running/healthy" || state == "running/none"
        });
        assert!(
            ok,
            "{service} not healthy after {timeout:?}: {}\n{}",
            self.inspect(service, format),
            self.logs(service)
        );
        started.elapsed()
    }

    /// The last lines of `service`'s log.
    pub fn logs(&self, service: &str) -> String {
        let output = run(&mut self.command(&["logs", "--no-color", "--tail", "80", service]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The processes in `service`'s container as (uid, command line), read
    /// by the engine (the image has no `ps`).
    pub fn processes(&self, service: &str) -> Vec<(u32, String)> {
        let output = run_ok(Command::new("docker").args([
            "top",
            &self.container(service),
            "-eo",
            "pid,uid,args",
        ]));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let _pid = fields.next()?;
                let uid = fields.next()?.parse().ok()?;
                Some((uid, fields.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }

    /// The processes in `service`'s container other than tini and the worker.
    pub fn run_processes(&self, service: &str) -> Vec<String> {
        self.processes(service)
            .into_iter()
            .map(|(_, args)| args)
            .filter(|args| {
                !args.starts_with("/usr/bin/tini") && !args.starts_with("ansible-worker")
            })
            .collect()
    }

    /// Runs `docker <args>`; panics unless it succeeds.
    pub fn docker(&self, args: &[&str]) -> Output {
        run_ok(Command::new("docker").args(args))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = run(&mut self.command(&["down", "--volumes", "--remove-orphans", "-t", "1"]));
    }
}

/// A world-readable copy of `files` (paths relative to the repository) in a
/// temp dir, for a bind mount that the containers' user (uid 10001) reads.
pub fn shared_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    make_shared(dir.path(), 0o755);
    for file in files {
        let from = project_dir().join(file);
        let to = dir.path().join(Path::new(file).file_name().unwrap());
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    dir
}

/// Sets `path`'s permission bits to `mode`.
pub fn make_shared(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

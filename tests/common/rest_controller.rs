//! The example REST controller for the HTTP transport
//! (`examples/controllers/http/controller.py`) as a child process: started
//! on a port of its choosing, its stderr lines as they come, its exit code.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DEADLINE, project_dir, wait_until};

/// Python 3.11 for the HTTP controller, which needs only the standard
/// library: the test venv's, else `python3` from PATH.
pub fn python3() -> PathBuf {
    let venv = project_dir().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// `examples/controllers/http/controller.py` on a port of its own choosing
/// (or `port`), its stderr collected as it comes.
pub struct RestController {
    child: Child,
    /// Where it listens.
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl RestController {
    /// Starts it with `args`, and `POLL_TOKEN` = `token` when given; returns
    /// once it said where it listens.
    pub fn start(token: Option<&str>, port: u16, args: &[&str]) -> Self {
        let mut command = Command::new(python3());
        command
            .arg(project_dir().join("examples/controllers/http/controller.py"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("POLL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("POLL_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut controller = RestController {
            child,
            port: 0,
            stderr,
        };
        let listening = wait_until(Duration::from_secs(20), || {
            let text = controller.stderr();
            let line = text.lines().find(|l| l.starts_with("listening on "));
            let port = line.and_then(|l| l.split(':').nth(2)?.split(' ').next()?.parse().ok());
            controller.port = port.unwrap_or(0);
            port.is_some()
        });
        assert!(
            listening,
            "the controller did not start: {}",
            controller.stderr()
        );
        controller
    }

    /// What it printed to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until its stderr has a line `line`.
    #[track_caller]
    pub fn wait_line(&self, line: &str) {
        assert!(
            wait_until(DEADLINE, || self.stderr().lines().any(|l| l == line)),
            "no line {line:?} in:\n{}",
            self.stderr()
        );
    }

    /// The states of `task_id` in the order it printed them.
    pub fn states(&self, task_id: &str) -> Vec<String> {
        let prefix = format!("status {task_id} ");
        self.stderr()
            .lines()
            .filter_map(|l| {
                l.strip_prefix(&prefix)?
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Waits for it to exit (`--once`): its exit code and stdout. Gives up
    /// with `why()` as soon as that says something (the worker it waits for
    /// has died, say).
    #[track_caller]
    pub fn wait_exit(&mut self, mut why: impl FnMut() -> Option<String>) -> (Option<i32>, String) {
        let (mut status, mut failure) = (None, None);
        let exited = wait_until(DEADLINE + DEADLINE, || {
            status = self.child.try_wait().unwrap();
            failure = why();
            status.is_some() || failure.is_some()
        });
        assert!(
            exited && failure.is_none(),
            "the controller did not exit ({failure:?}):\n{}",
            self.stderr()
        );
        let mut stdout = String::new();
        let pipe = self.child.stdout.as_mut().unwrap();
        pipe.read_to_string(&mut stdout).unwrap();
        (status.unwrap().code(), stdout)
    }
}

impl Drop for RestController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A Mosquitto 2 broker on a free loopback port, for tests that need an
//! external broker the worker connects to (and that they can stop and restart
//! under it). It does not start the worker: see `worker.rs`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, wait_until};

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

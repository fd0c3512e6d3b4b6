//! ejabberd's MQTT 5 broker (Debian package `ejabberd`) on a free loopback
//! port: a second broker family besides Mosquitto, and one without shared
//! subscriptions. It runs as a plain Erlang VM, not through `ejabberdctl` or
//! systemd: no node name, so no distribution, no epmd and no cookie, and
//! nothing to clash with a system-wide ejabberd or another test's. Its
//! config, spool and log live in a temp dir. It does not start the worker:
//! see `worker.rs`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, wait_until};

/// The login the broker's anonymous authentication takes: ejabberd accepts
/// any user name with a non-empty password, and refuses a CONNECT without.
pub const EJABBERD_LOGIN: (&str, &str) = ("worker", "anything");

/// ejabberd with only its MQTT listener, on 127.0.0.1 and a port of its own.
pub struct Ejabberd {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Ejabberd {
    /// Starts the broker and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let config = dir.path().join("ejabberd.yml");
        std::fs::write(
            &config,
            format!(
                "hosts:\n  - localhost\nloglevel: info\n\
                 auth_method: [anonymous]\nanonymous_protocol: login_anon\n\
                 listen:\n  -\n    port: {port}\n    ip: \"127.0.0.1\"\n    module: mod_mqtt\n\
                 modules:\n  mod_mqtt: {{}}\n"
            ),
        )
        .unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let log = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let child = Command::new("erl")
            .args(["-noinput", "-noshell", "-mnesia", "dir"])
            .arg(format!("{:?}", spool.display().to_string()))
            .args(["-s", "ejabberd"])
            .current_dir(dir.path())
            .env("EJABBERD_CONFIG_PATH", &config)
            .env("EJABBERD_LOG_PATH", dir.path().join("ejabberd.log"))
            .env("ERL_LIBS", erlang_libs())
            .env("ERL_CRASH_DUMP_BYTES", "0")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("erl must be installed (scripts/setup installs ejabberd)");
        let broker = Ejabberd {
            port,
            dir,
            child: Some(child),
        };
        // The VM and its database take a few seconds to come up.
        assert!(
            wait_until(Duration::from_secs(60), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "ejabberd did not start on port {port}:\n{}",
            broker.log()
        );
        broker
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

/// The directory holding ejabberd's Erlang applications
/// (`/usr/lib/<arch>/ejabberd-<version>`), which `ejabberdctl` puts in
/// `ERL_LIBS`.
fn erlang_libs() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|arch| arch.path())
        .find(|arch| {
            std::fs::read_dir(arch).is_ok_and(|mut entries| {
                entries.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ejabberd-"))
                })
            })
        });
    found.expect("ejabberd must be installed (scripts/setup installs it)")
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- ejabberd log ----\n{}", self.log());
        }
    }
}

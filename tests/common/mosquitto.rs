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
    config: String,
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
        let port = free_port();
        Self::start_config(
            port,
            &format!(
                "per_listener_settings true\nuser root\npersistence false\nmax_packet_size 2000000\n\
                 log_dest stderr\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n"
            ),
        )
    }

    /// Starts a broker with the whole of `config` (which must open a
    /// listener on 127.0.0.1:`port`, and say `user root` when the tests run
    /// as root, so that it can read files in the tests' private temp dirs).
    pub fn start_config(port: u16, config: &str) -> Self {
        let mut broker = Mosquitto {
            port,
            dir: TempDir::new().unwrap(),
            config: config.to_owned(),
            child: None,
        };
        broker.spawn();
        broker
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, &self.config).unwrap();
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

/// Mosquitto's dynamic-security plugin on a listener of its own, with one
/// client per `(user, acls)`: each logs in with `password` and may do what
/// its `(acltype, topic)` pairs allow (e.g. `("subscribePattern",
/// "a/+/b")`), nothing else. It can refuse a SUBSCRIBE in the SUBACK; the
/// plain `acl_file` of Mosquitto 2.0 grants every SUBSCRIBE and only filters
/// what it delivers. Returns the lines for [`Mosquitto::start_with`].
pub fn dynsec_listener(
    dir: &std::path::Path,
    port: u16,
    password: &str,
    clients: &[(&str, &[(&str, &str)])],
) -> String {
    let file = dir.join("dynamic-security.json");
    // `init` hashes the password; every client below reuses that hash.
    let made = Command::new("mosquitto_ctrl")
        .args(["dynsec", "init"])
        .arg(&file)
        .args([clients[0].0, password])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let login = config["clients"][0].clone();
    let mut users = Vec::new();
    let mut roles = Vec::new();
    for (user, acls) in clients {
        let mut client = login.clone();
        client["username"] = (*user).into();
        client["roles"] = serde_json::json!([{ "rolename": user }]);
        users.push(client);
        let acls: Vec<serde_json::Value> = acls
            .iter()
            .map(
                |(kind, topic)| serde_json::json!({"acltype": kind, "topic": topic, "allow": true}),
            )
            .collect();
        roles.push(serde_json::json!({ "rolename": user, "acls": acls }));
    }
    config["clients"] = users.into();
    config["roles"] = roles.into();
    std::fs::write(&file, config.to_string()).unwrap();
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\n\
         plugin /usr/lib/{}-linux-gnu/mosquitto_dynamic_security.so\n\
         plugin_opt_config_file {}\n",
        std::env::consts::ARCH,
        file.display()
    )
}

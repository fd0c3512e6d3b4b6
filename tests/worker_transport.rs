//! Logging in and TLS against a real Mosquitto: a wrong password keeps the
//! worker retrying (with backoff) instead of dying; the right one works; mutual
//! TLS with a private CA works; without `tls_ca_cert` the platform's trust
//! store (`SSL_CERT_FILE`) decides.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A request for `tests/playbooks/failing.yml`, which fails on purpose.
fn quick_failure(id: &str) -> serde_json::Value {
    json!({"task_id": id, "playbook": "failing.yml", "inventory": "localhost.yml"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_wrong_is_retried_right_works() {
    let scratch = tempfile::TempDir::new().unwrap();
    let passwords = scratch.path().join("passwords");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["worker", "s3cret-pass"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let auth_port = free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));

    let mut wrong = WorkerSetup::new("login", auth_port);
    wrong.worker_id = "login-wrong".into();
    wrong.extra_mqtt = "username = \"worker\"\npassword = \"nope\"".into();
    let mut wrong = wrong.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || wrong
            .log()
            .matches("broker connection failed")
            .count()
            >= 3),
        "{}",
        wrong.log()
    );
    assert!(
        wrong.is_running(),
        "a refused login must not end the worker"
    );
    assert!(!wrong.log().contains("s3cret-pass") && !wrong.log().contains("nope\""));

    let mut right = WorkerSetup::new("login", auth_port);
    right.extra_mqtt = "username = \"worker\"\npassword = \"${TEST_MQTT_PASSWORD}\"".into();
    right.env = vec![("TEST_MQTT_PASSWORD".into(), "s3cret-pass".into())];
    let right = right.start();
    let observer = Observer::start(broker.port, "login").await;
    observer.submit(quick_failure("l-1")).await;
    let done = observer.wait_final("l-1", DEADLINE).await;
    assert_eq!(done["worker_id"], "login-w1");
    assert!(
        !right.log().contains("s3cret-pass"),
        "the password is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_private_ca() {
    let certs = tempfile::TempDir::new().unwrap();
    make_certificates(certs.path());
    let tls_port = free_port();
    let c = |name: &str| certs.path().join(name).display().to_string();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\n\
         keyfile {}\nrequire_certificate true\n",
        c("ca.pem"),
        c("server.pem"),
        c("server.key")
    ));
    let mut setup = WorkerSetup::new("tls", tls_port);
    setup.extra_mqtt = format!(
        "tls_enabled = true\ntls_ca_cert = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
        c("ca.pem"),
        c("client.pem"),
        c("client.key")
    );
    let _worker = setup.start();
    let observer = Observer::start(broker.port, "tls").await;
    observer.submit(quick_failure("tls-1")).await;
    let done = observer.wait_final("tls-1", DEADLINE).await;
    assert_eq!(done["worker_id"], "tls-w1");

    // Without a client certificate the broker refuses the worker.
    let mut no_cert = WorkerSetup::new("tls", tls_port);
    no_cert.worker_id = "tls-nocert".into();
    no_cert.extra_mqtt = format!("tls_enabled = true\ntls_ca_cert = \"{}\"", c("ca.pem"));
    let refused = no_cert.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || refused
            .log()
            .contains("broker connection failed")),
        "{}",
        refused.log()
    );
    assert!(!refused.log().contains("subscribed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_the_platform_trust_store_decides() {
    let certs = tempfile::TempDir::new().unwrap();
    make_certificates(certs.path());
    // A second CA that signed nothing of this broker.
    make_ca(certs.path(), "other", "other-ca");
    let c = |name: &str| certs.path().join(name).display().to_string();
    let tls_port = free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\n",
        c("server.pem"),
        c("server.key")
    ));
    let setup = |worker_id: &str, ssl_cert_file: String| {
        let mut setup = WorkerSetup::new("native", tls_port);
        setup.worker_id = worker_id.into();
        setup.extra_mqtt = "tls_enabled = true".into();
        // Only the file: an SSL_CERT_DIR of the test's environment is
        // cleared (an empty value names no directory).
        setup.env = vec![
            ("SSL_CERT_FILE".into(), ssl_cert_file),
            ("SSL_CERT_DIR".into(), String::new()),
        ];
        setup
    };

    // The store SSL_CERT_FILE names trusts the broker's CA: it connects.
    let _trusting = setup("native-w1", c("ca.pem")).start();
    let observer = Observer::start(broker.port, "native").await;
    observer.submit(quick_failure("native-1")).await;
    let done = observer.wait_final("native-1", DEADLINE).await;
    assert_eq!(done["worker_id"], "native-w1");

    // One that does not: the broker's certificate is refused.
    let distrusting = setup("native-other", c("other.pem")).spawn();
    assert!(
        wait_until(Duration::from_secs(20), || distrusting
            .log()
            .contains("broker connection failed")),
        "{}",
        distrusting.log()
    );
    assert!(!distrusting.log().contains("subscribed"));

    // None at all: the worker does not start, and says why.
    let mut empty = setup("native-none", c("missing.pem")).spawn();
    assert_eq!(empty.wait_exit(Duration::from_secs(20)), Some(2));
    assert!(
        empty.log().contains("no trusted CA certificates for TLS"),
        "{}",
        empty.log()
    );
}

//! The README's Mosquitto set-up as shipped in `examples/mosquitto/`: the
//! broker config (logins, ACL, a TLS listener, a loopback listener,
//! `set_tcp_nodelay`, `max_queued_messages`), the ACL file and the worker's
//! config, loaded from those files with only paths, ports and the host name
//! replaced, against the real Mosquitto and the real worker binary.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use serde_json::json;

const WORKER_PASSWORD: &str = "worker-pass-7f3a";
const SCHEDULER_PASSWORD: &str = "scheduler-pass-91c2";

fn example(name: &str) -> String {
    std::fs::read_to_string(project_dir().join("examples/mosquitto").join(name)).unwrap()
}

/// `mosquitto_passwd` as the README runs it, with `-b` to take the password
/// from the command line instead of asking.
fn add_login(file: &Path, create: bool, user: &str, password: &str) {
    let mut command = Command::new("mosquitto_passwd");
    if create {
        command.arg("-c");
    }
    let made = command
        .arg("-b")
        .arg(file)
        .args([user, password])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
}

/// Mosquitto with `examples/mosquitto/ansible-worker.conf` and `acl`, its
/// `/etc/mosquitto/` moved to `etc`, its TLS listener on 127.0.0.1:`tls`
/// and its loopback listener on `plain`.
fn start_broker(etc: &Path, tls: u16, plain: u16) -> Mosquitto {
    std::fs::create_dir(etc.join("certs")).unwrap();
    make_certificates(&etc.join("certs"));
    add_login(&etc.join("passwd"), true, "lab-worker", WORKER_PASSWORD);
    add_login(&etc.join("passwd"), false, "scheduler", SCHEDULER_PASSWORD);
    std::fs::write(etc.join("acl"), example("acl")).unwrap();
    let config = example("ansible-worker.conf");
    let config = replace_present(&config, "/etc/mosquitto/", &format!("{}/", etc.display()));
    let config = replace_present(
        &config,
        "listener 8883\n",
        &format!("listener {tls} 127.0.0.1\n"),
    );
    let config = replace_present(
        &config,
        "listener 1883 127.0.0.1\n",
        &format!("listener {plain} 127.0.0.1\n"),
    );
    // The tests run as root in private temp dirs; the README's broker runs as
    // Debian's `mosquitto` user with its files in /etc/mosquitto.
    let config = format!("{config}\nuser root\npersistence false\nlog_dest stderr\n");
    Mosquitto::start_config(plain, &config)
}

/// `examples/mosquitto/worker.toml` against the TLS listener on `port`,
/// trusting `ca`, serving the sample playbooks.
fn worker_config(dir: &Path, port: u16, ca: &Path) -> String {
    let config = example("worker.toml");
    let config = replace_present(&config, "\"mqtt.example.com\"", "\"127.0.0.1\"");
    let config = replace_present(&config, "port = 8883", &format!("port = {port}"));
    let config = replace_present(
        &config,
        "\"/etc/ansible-worker/ca.pem\"",
        &format!("{:?}", ca.display().to_string()),
    );
    replace_present(
        &config,
        "playbook_directory = \"/srv/ansible\"",
        &format!(
            "playbook_directory = {:?}\nansible_playbook_path = {:?}\nstate_dir = {:?}",
            project_dir()
                .join("examples/playbooks")
                .display()
                .to_string(),
            ansible_playbook().display().to_string(),
            dir.join("state").display().to_string(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_mosquitto_setup_lets_workers_and_controllers_do_their_part_only() {
    let etc = tempfile::TempDir::new().unwrap();
    let (tls, plain) = (free_port(), free_port());
    let broker = start_broker(etc.path(), tls, plain);
    let ca = etc.path().join("certs/ca.pem");
    let worker = Worker::with_config_and_env(&[("MQTT_PASSWORD", WORKER_PASSWORD)], |dir| {
        worker_config(dir, tls, &ca)
    });
    // Granted, and (below) requests are delivered through it: the ACL's
    // read access to ansible/lab/tasks is what Mosquitto checks.
    worker.wait_log(
        "subscribed to task requests filter=$share/ansible-worker-lab/ansible/lab/tasks",
        Duration::from_secs(20),
    );

    let scheduler = Controller::connect(
        plain,
        Some(("scheduler", SCHEDULER_PASSWORD)),
        &[
            "ansible/lab/tasks/+/status",
            "ansible/lab/workers/+",
            "replies/scheduler/#",
        ],
    )
    .await;
    // The worker's presence reaches the controller.
    let presence = scheduler
        .wait_on("ansible/lab/workers/lab-1", DEADLINE, |d| {
            d.doc["state"] == "online"
        })
        .await;
    assert_eq!(presence.doc["worker_id"], "lab-1");

    // The controller publishes a request, with a reply route under replies/.
    let request =
        json!({"task_id": "acl-1", "playbook": "hello.yml", "inventory": "inventory.yml"});
    let ack = scheduler
        .publish(
            "ansible/lab/tasks",
            QoS::ExactlyOnce,
            false,
            &request,
            Some(("replies/scheduler/acl-1", "corr-acl-1")),
        )
        .await;
    assert!(ack.accepted(), "{ack:?}\n{}", broker.log());
    let done = scheduler
        .wait_on("ansible/lab/tasks/acl-1/status", DEADLINE, |d| {
            is_final(&d.doc)
        })
        .await;
    assert_eq!(done.doc["state"], "success", "{:?}", done.doc);
    assert_eq!(done.doc["output"]["greeting"], "Hello from localhost");
    let reply = scheduler
        .wait_on("replies/scheduler/acl-1", DEADLINE, |d| is_final(&d.doc))
        .await;
    assert_eq!(reply.doc["state"], "success");
    assert_eq!(reply.correlation.as_deref(), Some(&b"corr-acl-1"[..]));

    // The controller may not publish a status: 0x87, and the retained
    // status stays the worker's.
    let forged = json!({"task_id": "acl-1", "state": "failed"});
    let ack = scheduler
        .publish(
            "ansible/lab/tasks/acl-1/status",
            QoS::AtLeastOnce,
            true,
            &forged,
            None,
        )
        .await;
    assert_eq!(ack, Ack::PubAck(PubAckReason::NotAuthorized));
    let late = Controller::connect(
        plain,
        Some(("scheduler", SCHEDULER_PASSWORD)),
        &["ansible/lab/tasks/acl-1/status"],
    )
    .await;
    let retained = late
        .wait_on("ansible/lab/tasks/acl-1/status", DEADLINE, |d| d.retained)
        .await;
    assert_eq!(retained.doc["state"], "success", "{:?}", retained.doc);

    // Without a login nobody gets in, on either listener.
    let ca_arg = ca.display().to_string();
    for (port, tls_args) in [(plain, vec![]), (tls, vec!["--cafile", ca_arg.as_str()])] {
        let anonymous = Command::new("mosquitto_pub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(tls_args)
            .args(["-t", "ansible/lab/tasks", "-m", "{}"])
            .output()
            .unwrap();
        let refused = String::from_utf8_lossy(&anonymous.stderr);
        assert!(refused.contains("Not authorized"), "{anonymous:?}");
    }
}

#[test]
fn the_readme_quotes_the_worker_config_that_runs_here() {
    let readme = std::fs::read_to_string(project_dir().join("README.md")).unwrap();
    let section = readme
        .split("\n## With Mosquitto\n")
        .nth(1)
        .expect("README has a \"With Mosquitto\" section");
    let section = section.split("\n## ").next().unwrap();
    let quoted: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(
        !quoted.is_empty(),
        "no TOML in the README's Mosquitto section"
    );
    let worker = example("worker.toml");
    for block in quoted {
        assert!(
            worker.contains(block),
            "README quotes what examples/mosquitto/worker.toml does not say:\n{block}"
        );
    }
}

//! `scripts/docker-demo up|fleet|down` as a user runs it (under a project name
//! and on ports of its own, so that a demo already running here is left
//! alone): `up` returns with the appliance healthy, `fleet` with Mosquitto and
//! three workers that run a task for the controller login it made, and `down`
//! leaves no container, network, volume or password file behind.
//!
//! Skipped loudly where no Docker engine answers; required under CI.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::json;

/// Runs `scripts/docker-demo <verb>` with `env`; panics with its output
/// unless it succeeds; returns its stdout.
fn demo(verb: &str, env: &[(String, String)]) -> String {
    let output = Command::new(project_dir().join("scripts/docker-demo"))
        .arg(verb)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(project_dir())
        .output()
        .expect("scripts/docker-demo runs");
    assert!(
        output.status.success(),
        "docker-demo {verb}: {}\n{}",
        output.status,
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What the engine still holds of compose project `project`, of one kind
/// (`container`, `network`, `volume`).
fn leftovers(kind: &str, project: &str) -> Vec<String> {
    let mut args = vec![kind, "ls", "-q"];
    if kind == "container" {
        args.push("-a");
    }
    let filter = format!("label=com.docker.compose.project={project}");
    let output = Command::new("docker")
        .args(args)
        .args(["--filter", &filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Takes the demo down if the test ends early.
struct Down(Vec<(String, String)>);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(project_dir().join("scripts/docker-demo"))
            .arg("down")
            .envs(self.0.iter().map(|(k, v)| (k, v)))
            .current_dir(project_dir())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_demo_up_fleet_and_down_leave_nothing_behind() {
    if !engine() {
        return;
    }
    build_images();
    let name = unique("awdemo").replace('-', "");
    let (mqtt, http, fleet_mqtt) = (free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("DOCKER_DEMO_NAME", name.clone()),
        ("APPLIANCE_MQTT_PUBLISH", format!("127.0.0.1:{mqtt}")),
        ("APPLIANCE_HTTP_PUBLISH", format!("127.0.0.1:{http}")),
        ("FLEET_MQTT_PUBLISH", format!("127.0.0.1:{fleet_mqtt}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let down = Down(env.clone());

    let said = demo("up", &env);
    assert!(said.contains("the appliance is healthy"), "{said}");
    let ready = Http::new(http).get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);

    let said = demo("fleet", &env);
    assert!(said.contains("three workers are up"), "{said}");
    let env_file = project_dir().join(format!("var/{name}-fleet.env"));
    let passwords = std::fs::read_to_string(&env_file).unwrap();
    let controller = passwords
        .lines()
        .find_map(|l| l.strip_prefix("MQTT_CONTROLLER_PASSWORD="))
        .expect("a controller password");
    let observer =
        Observer::start_with(fleet_mqtt, "fleet", Some(("controller", controller))).await;
    let id = unique("demo-hello");
    observer
        .submit(json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    drop(observer);

    demo("down", &env);
    std::mem::forget(down);
    for project in [name.clone(), format!("{name}-fleet")] {
        for kind in ["container", "network", "volume"] {
            let left = leftovers(kind, &project);
            assert!(left.is_empty(), "down left {kind}s of {project}: {left:?}");
        }
    }
    assert!(!env_file.exists(), "down left {}", env_file.display());
}

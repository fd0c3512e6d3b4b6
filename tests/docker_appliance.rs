//! The appliance image in a real container (docker/compose.yml): it builds,
//! turns healthy, runs a task published from the host with `mosquitto_pub`,
//! serves the dashboard, runs as non-root, leaves no process behind a cancel,
//! publishes the finals of running tasks on `docker stop`, and keeps its
//! history across a restart and a new container (the `state` volume).
//!
//! Skipped loudly where no Docker engine answers; required under CI.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const GROUP: &str = "lab";
/// The image's service user (docker/Dockerfile).
const SERVICE_UID: u32 = 10001;

/// The appliance on free loopback ports, healthy; with its MQTT and HTTP ports.
fn start_appliance() -> (Project, u16, u16) {
    build_images();
    let (mqtt, http) = (free_port(), free_port());
    let project = Project::new(
        "docker/compose.yml",
        &[
            ("APPLIANCE_MQTT_PUBLISH", &format!("127.0.0.1:{mqtt}")),
            ("APPLIANCE_HTTP_PUBLISH", &format!("127.0.0.1:{http}")),
        ],
    );
    let started = Instant::now();
    project.compose(&["up", "-d"]);
    project.wait_healthy("appliance", Duration::from_secs(120));
    eprintln!(
        "{}: up to healthy in {:.1?}",
        project.name(),
        started.elapsed()
    );
    (project, mqtt, http)
}

fn slow(id: &str, seconds: u64) -> serde_json::Value {
    json!({"task_id": id, "playbook": "slow.yml", "inventory": "inventory.yml",
           "extra_vars": {"seconds": seconds}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_container_runs_tasks_from_the_host_as_non_root() {
    if !engine() {
        return;
    }
    let (project, mqtt, http) = start_appliance();
    let observer = Observer::start(mqtt, GROUP).await;

    // A task published from the host with mosquitto_pub.
    let id = unique("docker-hello");
    let request = json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"});
    let published = Command::new("mosquitto_pub")
        .args(["-V", "mqttv5", "-q", "2", "-h", "127.0.0.1", "-p"])
        .arg(mqtt.to_string())
        .args(["-t", &format!("ansible/{GROUP}/tasks"), "-m"])
        .arg(request.to_string())
        .status()
        .expect("mosquitto_pub runs");
    assert!(published.success());
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["return_code"], 0, "{done}");

    // The dashboard and the API answer on the published port.
    let web = Http::new(http);
    let page = web.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<html"), "{}", page.body);
    assert_eq!(web.task(&id).expect("in the history")["state"], "success");

    // Every process of the container, the worker included, runs as the
    // service user.
    let processes = project.processes("appliance");
    assert!(
        processes
            .iter()
            .any(|(_, args)| args.starts_with("ansible-worker")),
        "{processes:?}"
    );
    assert!(
        processes.iter().all(|(uid, _)| *uid == SERVICE_UID),
        "a process does not run as uid {SERVICE_UID}: {processes:?}"
    );

    // A cancel leaves no ansible-playbook (nor its sleep) in the container.
    let id = unique("docker-cancel");
    observer.submit(slow(&id, 120)).await;
    observer.wait_state(&id, "running", DEADLINE).await;
    assert!(
        wait_until(DEADLINE, || project
            .run_processes("appliance")
            .iter()
            .any(|p| p.contains("sleep"))),
        "the run never reached its sleep: {:?}",
        project.run_processes("appliance")
    );
    observer.cancel(&id, "").await;
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            left = project.run_processes("appliance");
            left.is_empty()
        }),
        "processes outlived the cancel: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_publishes_finals_and_the_history_survives_restarts() {
    if !engine() {
        return;
    }
    let (project, mqtt, http) = start_appliance();
    let observer = Observer::start(mqtt, GROUP).await;

    let done_id = unique("docker-done");
    observer
        .submit(json!({"task_id": done_id, "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        observer.wait_final(&done_id, DEADLINE).await["state"],
        "success"
    );

    // Two runs under way when the container is stopped.
    let running: Vec<String> = (0..2).map(|_| unique("docker-stopped")).collect();
    for id in &running {
        observer.submit(slow(id, 300)).await;
    }
    for id in &running {
        observer.wait_state(id, "running", DEADLINE).await;
    }
    let grace = Duration::from_secs(30); // compose.yml's stop_grace_period
    let stopping = Instant::now();
    project.compose(&["stop", "appliance"]);
    let stopped_in = stopping.elapsed();
    assert!(stopped_in < grace, "docker stop took {stopped_in:?}");
    assert_eq!(
        project.inspect("appliance", "{{.State.ExitCode}}"),
        "0",
        "the worker did not exit by itself within the grace period:\n{}",
        project.logs("appliance")
    );
    let mut finals = Vec::new();
    for id in &running {
        // Published before the container stopped: no waiting here.
        let last = observer.statuses(id).into_iter().rfind(is_final);
        let last = last.unwrap_or_else(|| {
            panic!(
                "{id} has no final status after docker stop; saw {:?}",
                observer.states(id)
            )
        });
        finals.push(last["state"].as_str().unwrap().to_owned());
    }
    eprintln!("docker stop: {stopped_in:.1?}, finals of the running tasks: {finals:?}");

    // The history is in the volume: it survives a restart of the container
    // and a new container.
    let history = |project: &Project| {
        project.wait_healthy("appliance", Duration::from_secs(120));
        let web = Http::new(http);
        assert_eq!(
            web.task(&done_id).expect("in the history")["state"],
            "success"
        );
        for (id, state) in running.iter().zip(&finals) {
            assert_eq!(&web.task(id).expect("in the history")["state"], state);
        }
    };
    project.compose(&["start", "appliance"]);
    history(&project);
    project.compose(&["restart", "appliance"]);
    history(&project);
    let before = project.container("appliance");
    project.compose(&["up", "-d", "--force-recreate", "appliance"]);
    assert_ne!(
        project.container("appliance"),
        before,
        "not a new container"
    );
    history(&project);
}

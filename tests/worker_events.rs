//! The events topic (PROTOCOL.md extension) as a controller sees it: a real
//! `ansible-playbook` run through the worker and a real Mosquitto. Task
//! starts, results and output lines arrive in order, numbered 1..N without
//! a gap; the lines are the dashboard's log; no event carries the secret the
//! playbook uses; nothing is retained for a late subscriber.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};

/// An extra var `events.yml` uses in three tasks without printing it.
const SECRET: &str = "tok-9f3a1c77e2";

struct Setup {
    broker: Mosquitto,
    _worker: Worker,
    http: Arc<Http>,
    observer: Observer,
    group: String,
}

async fn setup() -> Setup {
    let group = unique("ev");
    let broker = Mosquitto::start();
    let port = free_port();
    let mut worker_setup = WorkerSetup::new(&group, broker.port);
    worker_setup.http_port = Some(port);
    let worker = worker_setup.start();
    let http = Arc::new(Http::new(port));
    http.wait_up(&worker);
    let observer = Observer::start(broker.port, &group).await;
    Setup {
        broker,
        _worker: worker,
        http,
        observer,
        group,
    }
}

impl Setup {
    fn topic(&self, task_id: &str, leaf: &str) -> String {
        format!("ansible/{}/tasks/{task_id}/{leaf}", self.group)
    }

    /// Runs `events.yml` on three hosts as `task_id` to its final status.
    async fn run_events_playbook(&self, task_id: &str) {
        self.observer
            .submit(json!({
                "task_id": task_id, "playbook": "events.yml", "inventory": "hosts.yml",
                "extra_vars": {"api_token": SECRET},
            }))
            .await;
        let done = self.observer.wait_final(task_id, DEADLINE).await;
        assert_eq!(done["state"], "success", "{done}");
    }

    /// A blocking HTTP call, off the test's runtime threads.
    async fn http<T: Send + 'static>(&self, call: impl FnOnce(&Http) -> T + Send + 'static) -> T {
        let http = self.http.clone();
        tokio::task::spawn_blocking(move || call(&http))
            .await
            .unwrap()
    }
}

fn kind(event: &Value) -> &str {
    event["kind"].as_str().unwrap_or_default()
}

fn text(event: &Value, field: &str) -> String {
    event[field].as_str().unwrap_or_default().to_owned()
}

fn lines_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| kind(e) == "line")
        .map(|e| text(e, "text"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_streams_task_starts_results_and_lines_in_order_without_secrets() {
    let s = setup().await;
    let id = "events-1";
    let topic = s.topic(id, "events");
    let live = Recorder::start(
        s.broker.port,
        &format!("ansible/{}/tasks/+/events", s.group),
    )
    .await;
    s.run_events_playbook(id).await;

    // The dashboard's log of the run: the line events are exactly its lines.
    let path = format!("/api/tasks/{id}/log");
    let log: Vec<String> = s
        .http(move |http| serde_json::from_value(http.get(&path).json()["lines"].clone()))
        .await
        .unwrap();
    assert!(log.iter().any(|l| l.starts_with("PLAY RECAP")), "{log:?}");
    // Events and statuses reach different clients in no common order: wait
    // for the last line.
    assert!(
        wait_for(DEADLINE, || lines_of(&live.docs_on(&topic)).len()
            >= log.len())
        .await,
        "lines never all arrived: {:?}",
        lines_of(&live.docs_on(&topic))
    );
    let received = live.received();
    let events = live.docs_on(&topic);
    assert_eq!(received.len(), events.len(), "only this task ran");
    assert_eq!(lines_of(&events), log);

    // Numbered 1..N in arrival order; live only; each names task and worker.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(received.iter().all(|m| !m.retain));
    for event in &events {
        assert_eq!(event["task_id"], id, "{event}");
        assert_eq!(event["worker_id"], format!("{}-w1", s.group), "{event}");
        let ts = text(event, "ts");
        assert!(
            ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(&ts).is_ok(),
            "{event}"
        );
    }

    // The playbook's tasks in order, then the handler; each host's result
    // between its task's start and the next one.
    let mut starts = Vec::new();
    let mut results: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for event in &events {
        match kind(event) {
            "task_start" => {
                assert_eq!(event["play"], "Events play", "{event}");
                starts.push((text(event, "task"), event["handler"] == true));
            }
            "result" => {
                let (task, _) = starts.last().expect("a result after its task's start");
                assert_eq!(&text(event, "task"), task, "{event}");
                let mut outcome = format!("{}:{}", text(event, "host"), text(event, "status"));
                if event["ignored"] == true {
                    outcome.push_str(" ignored");
                }
                assert_eq!(event["rescued"], false, "{event}");
                results.entry(task.clone()).or_default().insert(outcome);
            }
            "line" => {}
            other => panic!("unexpected kind {other}: {event}"),
        }
    }
    let task = |name: &str, handler| (name.to_owned(), handler);
    assert_eq!(
        starts,
        [
            task("Say hello", false),
            task("Change something", false),
            task("Skip this", false),
            task("Keep the token", false),
            task("Use the token quietly", false),
            task("Fail with the token quietly on h2", false),
            task("Fail but go on on h1", false),
            task("Report change", true),
        ]
    );
    let all = |status: &str| format!("h1:{status} h2:{status} h3:{status}");
    let expected: BTreeMap<String, String> = [
        ("Say hello", all("ok")),
        ("Change something", all("changed")),
        ("Skip this", all("skipped")),
        ("Keep the token", all("ok")),
        ("Use the token quietly", all("ok")),
        (
            "Fail with the token quietly on h2",
            "h1:skipped h2:failed ignored h3:skipped".to_owned(),
        ),
        (
            "Fail but go on on h1",
            "h1:failed ignored h2:skipped h3:skipped".to_owned(),
        ),
        ("Report change", all("ok")),
    ]
    .into_iter()
    .map(|(task, outcomes)| (task.to_owned(), outcomes))
    .collect();
    let seen: BTreeMap<String, String> = results
        .into_iter()
        .map(|(task, outcomes)| (task, outcomes.into_iter().collect::<Vec<_>>().join(" ")))
        .collect();
    assert_eq!(seen, expected);

    // The secret reached three tasks' results, and no event.
    for message in &received {
        let payload = String::from_utf8_lossy(&message.payload);
        assert!(!payload.contains(SECRET), "{payload}");
    }
    let metrics = s.http(|http| http.metrics()).await;
    assert_eq!(metrics.value("ansible_worker_events_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_not_retained_for_a_late_subscriber() {
    let s = setup().await;
    let id = "late-1";
    let (events, status, cancel) = (
        s.topic(id, "events"),
        s.topic(id, "status"),
        s.topic(id, "cancel"),
    );
    let live = Recorder::start(s.broker.port, &events).await;
    s.run_events_playbook(id).await;
    assert!(wait_for(DEADLINE, || !live.received().is_empty()).await);

    let late = Recorder::start(s.broker.port, &s.topic(id, "#")).await;
    assert!(
        wait_for(DEADLINE, || !late.docs_on(&status).is_empty()).await,
        "the final status is retained"
    );
    // The broker sends what it retained before anything published after the
    // subscription: once this arrives, nothing retained is still to come.
    late.client
        .publish(&cancel, QoS::AtLeastOnce, false, b"{}".to_vec())
        .await
        .unwrap();
    assert!(wait_for(DEADLINE, || !late.docs_on(&cancel).is_empty()).await);
    assert_eq!(late.docs_on(&events), Vec::<Value>::new());
    assert!(late.received().iter().all(|m| m.topic != events));
}

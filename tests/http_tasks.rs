//! The task API over HTTP, black-box: the appliance binary with the example
//! config (embedded broker, `[http]` on a free port), driven by a plain HTTP
//! client and an MQTT observer. Covers the worker and playbook info, listing
//! with filters and cursors, a task's detail and log, submitting (refusals
//! and accepted requests) and cancelling.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_pages_newest_first_filters_and_details_match_the_status_document() {
    let (Appliance { worker, http, .. }, observer) = Appliance::lab().await;
    let info = http.get("/api/worker").json();
    assert_eq!(info["worker_id"], "lab-1", "{info}");
    assert_eq!(info["group"], "lab", "{info}");
    assert_eq!(info["transport"], "mqtt", "{info}");
    assert_eq!(info["connected"], true, "{info}");
    let listed = http.get("/api/playbooks").json();
    assert!(
        listed["playbooks"]
            .as_array()
            .unwrap()
            .contains(&json!("hello.yml")),
        "{listed}"
    );
    assert_eq!(listed["inventories"], json!(["inventory.yml"]));

    // Oldest first; each one is held before the next is sent, so the order
    // of arrival is the order of submission.
    let submitted = [
        hello("list-1"),
        failing("list-2"),
        hello("list-3"),
        hello("list-4"),
    ];
    for request in &submitted {
        let id = http.submit(request);
        assert!(
            wait_until(DEADLINE, || http.task(&id).is_some()),
            "{id} never appeared:\n{}",
            worker.log()
        );
    }
    for id in ["list-1", "list-2", "list-3", "list-4"] {
        http.wait_final(id);
    }

    // Pages of two, newest first, following the cursor to the end.
    let first = http.get("/api/tasks?limit=2").json();
    assert_eq!(ids(&first), ["list-4", "list-3"], "{first}");
    let cursor = first["next_cursor"].as_u64().expect("a next_cursor");
    let second = http
        .get(&format!("/api/tasks?limit=2&cursor={cursor}"))
        .json();
    assert_eq!(ids(&second), ["list-2", "list-1"], "{second}");
    if let Some(cursor) = second["next_cursor"].as_u64() {
        let third = http
            .get(&format!("/api/tasks?limit=2&cursor={cursor}"))
            .json();
        assert_eq!(ids(&third), Vec::<String>::new(), "{third}");
        assert!(third["next_cursor"].is_null(), "{third}");
    }
    let whole = http.get("/api/tasks").json();
    assert_eq!(
        ids(&whole),
        ["list-4", "list-3", "list-2", "list-1"],
        "{whole}"
    );
    assert!(whole["next_cursor"].is_null(), "{whole}");
    let three = http.get("/api/tasks?limit=3").json();
    let cursor = three["next_cursor"].as_u64().expect("a next_cursor");
    let rest = http
        .get(&format!("/api/tasks?limit=3&cursor={cursor}"))
        .json();
    assert_eq!(ids(&three), ["list-4", "list-3", "list-2"]);
    assert_eq!(ids(&rest), ["list-1"]);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    // Listed tasks carry what was asked for.
    assert_eq!(whole["tasks"][0]["request"]["playbook"], "hello.yml");
    assert_eq!(whole["tasks"][0]["request"]["inventory"], "inventory.yml");
    assert_eq!(whole["tasks"][2]["request"]["playbook"], "fail.yml");

    // Filters.
    let failed = http.get("/api/tasks?state=failed").json();
    assert_eq!(ids(&failed), ["list-2"], "{failed}");
    let succeeded = http.get("/api/tasks?state=success&limit=2").json();
    assert_eq!(ids(&succeeded), ["list-4", "list-3"], "{succeeded}");
    let cursor = succeeded["next_cursor"].as_u64().expect("a next_cursor");
    let older = http
        .get(&format!("/api/tasks?state=success&limit=2&cursor={cursor}"))
        .json();
    assert_eq!(ids(&older), ["list-1"], "{older}");
    assert!(ids(&http.get("/api/tasks?state=running").json()).is_empty());
    let bad = http.get("/api/tasks?state=finished").error(400);
    assert!(bad.contains("state"), "{bad}");

    // The detail is the status document that was published.
    for id in ["list-1", "list-2"] {
        let published = observer.wait_final(id, DEADLINE).await;
        let detail = http.task(id).unwrap();
        assert_eq!(detail, published, "{id}");
    }
    let ok = http.task("list-1").unwrap();
    assert_eq!(ok["state"], "success");
    assert_eq!(ok["return_code"], 0);
    assert_eq!(ok["tasks_ok"], 2, "{ok}");
    assert_eq!(ok["output"]["greeting"], "Hello from localhost", "{ok}");
    let broken = http.task("list-2").unwrap();
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["tasks_failed"], 1, "{broken}");
    assert!(
        broken["error_message"]
            .as_str()
            .unwrap()
            .contains("precondition not met"),
        "{broken}"
    );
    let missing = http.get("/api/tasks/no-such-task").error(404);
    assert!(missing.contains("no-such-task"), "{missing}");

    // The log tail ends with Ansible's recap.
    let log = http.get("/api/tasks/list-1/log").json();
    assert_eq!(log["task_id"], "list-1");
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(lines.iter().any(|l| l.contains("PLAY RECAP")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("localhost") && l.contains("ok=2")),
        "{lines:#?}"
    );
    http.get("/api/tasks/no-such-task/log").error(404);
}

#[test]
fn submit_checks_requests_like_mqtt_and_runs_the_accepted_ones() {
    let Appliance { worker, http, .. } = Appliance::start(&[], example_config);

    // Refused before anything is published: nothing runs, nothing is listed.
    let refusals: [(&str, String, &str); 9] = [
        (
            "no-playbook",
            json!({"task_id": "no-playbook", "inventory": "inventory.yml"}).to_string(),
            "playbook",
        ),
        (
            "absent-playbook",
            json!({"task_id": "absent-playbook", "playbook": "nope.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "Playbook not found",
        ),
        (
            "escaping",
            json!({"task_id": "escaping", "playbook": "../../tests/playbooks/localhost.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "outside",
        ),
        (
            "templated",
            json!({"task_id": "templated", "playbook": "hello.yml",
                   "inventory": "inventory.yml",
                   "extra_vars": {"x": "{{ lookup('pipe', 'id') }}"}})
            .to_string(),
            "extra_vars",
        ),
        (
            "connection-override",
            json!({"task_id": "connection-override", "playbook": "hello.yml",
                   "inventory": "inventory.yml",
                   "extra_vars": {"ansible_connection": "local"}})
            .to_string(),
            "ansible_",
        ),
        (
            "bad-verbosity",
            json!({"task_id": "bad-verbosity", "playbook": "hello.yml",
                   "inventory": "inventory.yml", "verbosity": 9})
            .to_string(),
            "verbosity",
        ),
        (
            "bad/id",
            json!({"task_id": "bad/id", "playbook": "hello.yml",
                   "inventory": "inventory.yml"})
            .to_string(),
            "task_id",
        ),
        ("not-json", "{\"task_id\": \"not-json\",".to_owned(), "JSON"),
        (
            "array",
            json!([{"task_id": "array", "playbook": "hello.yml",
                    "inventory": "inventory.yml"}])
            .to_string(),
            "object",
        ),
    ];
    for (id, body, named) in &refusals {
        let message = http.post("/api/tasks", body).error(400);
        assert!(
            message.contains(named),
            "{id}: {message:?} should name {named:?}"
        );
    }
    // Not declared as JSON: a page on any origin can send that without
    // asking the browser first.
    let body = hello("plain-text").to_string();
    let message = http
        .post_typed("/api/tasks", "text/plain", &body, None)
        .error(403);
    assert!(
        message.contains("Content-Type: application/json"),
        "{message}"
    );
    // Over the 1 MiB body limit.
    let huge = json!({"task_id": "huge", "playbook": "hello.yml",
                      "inventory": "inventory.yml",
                      "extra_vars": {"blob": "x".repeat(1024 * 1024)}});
    http.post("/api/tasks", &huge.to_string()).error(413);

    // Accepted: 202 with where to follow it, and it really runs.
    let reply = http.post("/api/tasks", &hello("given-id").to_string());
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/api/tasks/given-id"));
    let accepted = reply.json();
    assert_eq!(accepted["task_id"], "given-id", "{accepted}");
    assert_eq!(
        accepted["status_topic"], "ansible/lab/tasks/given-id/status",
        "{accepted}"
    );
    let reply = http.post(
        "/api/tasks",
        &json!({"playbook": "hello.yml", "inventory": "inventory.yml"}).to_string(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let generated = reply.json()["task_id"].as_str().unwrap().to_owned();
    let location = format!("/api/tasks/{generated}");
    assert_eq!(reply.header("location"), Some(location.as_str()));
    assert!(
        !generated.is_empty()
            && generated.len() <= 128
            && generated
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{generated:?} is not a valid task id"
    );
    assert_eq!(
        reply.json()["status_topic"],
        format!("ansible/lab/tasks/{generated}/status")
    );
    for id in ["given-id", generated.as_str()] {
        let done = http.wait_final(id);
        assert_eq!(done["state"], "success", "{done}\n{}", worker.log());
        assert_eq!(done["output"]["greeting"], "Hello from localhost");
    }

    // Only the accepted ones ever became tasks.
    let listed = ids(&http.get("/api/tasks").json());
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&"given-id".to_owned()));
    assert!(listed.contains(&generated));
    for (id, _, _) in &refusals {
        if !id.contains('/') {
            assert!(http.task(id).is_none(), "{id} was refused yet exists");
        }
    }
    for id in ["plain-text", "huge"] {
        assert!(http.task(id).is_none(), "{id} was refused yet exists");
    }
    let rejected = http.get("/api/rejected").json();
    assert_eq!(rejected, json!([]), "HTTP refusals never reach the worker");
    assert!(
        !worker.log().contains("lookup('pipe'"),
        "a refused template reached the worker"
    );
}

#[test]
fn cancel_over_http_ends_a_running_task_cancelled() {
    let Appliance {
        worker: _worker,
        http,
        ..
    } = Appliance::start(&[], example_config);
    // A unique sleep length finds the run's process in /proc.
    let secs = fastrand::u32(30_000..90_000);
    let id = http.submit(&json!({"task_id": "slow-http", "playbook": "slow.yml",
                                 "inventory": "inventory.yml",
                                 "extra_vars": {"seconds": secs * 3}}));
    http.wait_state(&id, "running");
    let needle = format!("sleep {secs}");
    assert!(
        wait_until(DEADLINE, || !processes_with(&needle).is_empty()),
        "{needle} never started"
    );

    http.post("/api/tasks/a+b/cancel", "{}").error(400);
    let reply = http.post(
        &format!("/api/tasks/{id}/cancel"),
        &json!({"reason": "operator said so"}).to_string(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["task_id"], id.as_str());
    let location = format!("/api/tasks/{id}");
    assert_eq!(reply.header("location"), Some(location.as_str()));
    let done = http.wait_final(&id);
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(
        done["error_message"], "Cancelled: operator said so",
        "{done}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&needle)
            .is_empty()),
        "the run's process survived the cancel"
    );
    // Cancelling a finished task (or an unknown one) is accepted and changes
    // nothing; an empty JSON body means `{}`, no content type at all is
    // refused like any POST that is not declared JSON.
    let again = http.post(&format!("/api/tasks/{id}/cancel"), "");
    assert_eq!(again.status, 202, "{}", again.body);
    let unknown = http.post("/api/tasks/never-was/cancel", "");
    assert_eq!(unknown.status, 202, "{}", unknown.body);
    http.post_empty("/api/tasks/never-was/cancel").error(403);
    assert_eq!(http.task(&id).unwrap()["state"], "cancelled");
    assert!(http.task("never-was").is_none());
}

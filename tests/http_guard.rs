//! What the HTTP server refuses before any handler runs, and how every
//! refusal reads, black-box: the appliance binary with the example config
//! (no token, as shipped), requests sent with exactly the headers a browser
//! or an attacker's page would send. Covers foreign `Host` names (DNS
//! rebinding), state-changing requests from other origins, POSTs not
//! declared as JSON, `[http] allowed_hosts`, and the JSON body of every
//! error, axum's own included.

mod common;

use common::*;
use serde_json::json;

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn requests_from_other_origins_and_foreign_hosts_change_nothing() {
    let Appliance {
        worker,
        http,
        ports,
    } = Appliance::start(&[], example_config);
    let own_host = format!("127.0.0.1:{}", ports.http);
    let own_origin = format!("http://{own_host}");
    let secs = fastrand::u32(30_000..90_000);
    let slow = http.submit(&json!({"task_id": "slow-guarded", "playbook": "slow.yml",
                                   "inventory": "inventory.yml",
                                   "extra_vars": {"seconds": secs * 3}}));
    http.wait_state(&slow, "running");
    let cancel_path = format!("/api/tasks/{slow}/cancel");

    // A page elsewhere: `fetch(url, {method: "POST", mode: "no-cors"})`.
    let reply = http.send(
        "POST",
        &cancel_path,
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
        ],
        None,
    );
    assert!(reply.error(403).contains("cross-site"), "{}", reply.body);
    // The same without Fetch metadata, with a JSON body, from a sandboxed
    // frame (`null`), and from another port of this very host.
    let localhost_origin = format!("http://localhost:{}", ports.http);
    for origin in ["http://evil.example", "null", localhost_origin.as_str()] {
        let reply = http.send(
            "POST",
            &cancel_path,
            &[("Origin", origin), JSON],
            Some(r#"{"reason": "from elsewhere"}"#),
        );
        let message = reply.error(403);
        assert!(message.contains("cross-origin"), "{origin}: {message}");
    }
    // A simple request needs no Origin to be a form post: refused for the
    // content type alone.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = http.send(
            "POST",
            &cancel_path,
            &[("Content-Type", content_type)],
            Some("{}"),
        );
        assert!(reply.error(403).contains("application/json"), "{reply:?}");
    }
    let reply = http.send("POST", &cancel_path, &[], None);
    assert!(reply.error(403).contains("application/json"), "{reply:?}");

    // DNS rebinding: the attacker's name now points here. Writes and reads
    // alike are refused, health and metrics too.
    let rebound = "attacker.rebind.example";
    let rebound_host = format!("{rebound}:{}", ports.http);
    let reply = http.send(
        "POST",
        "/api/tasks",
        &[("Host", &rebound_host), JSON],
        Some(&hello("rebound").to_string()),
    );
    let message = reply.error(403);
    assert!(
        message.contains(rebound) && message.contains("allowed_hosts"),
        "{message}"
    );
    for path in [
        "/",
        "/api/tasks",
        "/api/tasks/slow-guarded/log",
        "/api/events",
        "/healthz",
        "/metrics",
        "/no-such-path",
    ] {
        http.send("GET", path, &[("Host", &rebound_host)], None)
            .error(403);
    }

    // The dashboard's own requests pass: same origin, JSON.
    let browser = [
        ("Host", own_host.as_str()),
        ("Origin", own_origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
        JSON,
    ];
    let reply = http.send(
        "POST",
        "/api/tasks",
        &browser,
        Some(&hello("same-origin").to_string()),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/api/tasks/same-origin"));
    let reply = http.send(
        "POST",
        &cancel_path,
        &browser,
        Some(r#"{"reason": "operator said so"}"#),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);

    // Only the accepted cancel ended the run; the rebound submit never became
    // a task (it would have been forwarded before the later one).
    let done = http.wait_final(&slow);
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(
        done["error_message"], "Cancelled: operator said so",
        "{done}"
    );
    assert_eq!(http.wait_final("same-origin")["state"], "success");
    assert!(http.task("rebound").is_none(), "{}", worker.log());
}

#[test]
fn names_in_allowed_hosts_are_served() {
    let Appliance {
        worker: _worker,
        http,
        ports,
    } = Appliance::start(&[], |dir, ports| {
        replace_present(
            &example_config(dir, ports),
            "# allowed_hosts = [\"ansible.lab.example\"]",
            "allowed_hosts = [\"ansible.lab.example\"]",
        )
    });
    let named = format!("Ansible.Lab.Example:{}", ports.http);
    let origin = format!("http://ansible.lab.example:{}", ports.http);
    for path in ["/healthz", "/api/tasks", "/"] {
        let reply = http.send("GET", path, &[("Host", &named)], None);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let reply = http.send(
        "POST",
        "/api/tasks/never-was/cancel",
        &[("Host", &named), ("Origin", &origin), JSON],
        None,
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let other = format!("lab.example:{}", ports.http);
    http.send("GET", "/healthz", &[("Host", &other)], None)
        .error(403);
    // IP literals and localhost are always served.
    for host in [format!("localhost:{}", ports.http), "127.0.0.1".to_owned()] {
        let reply = http.send("GET", "/healthz", &[("Host", &host)], None);
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
}

#[test]
fn every_error_answer_is_json() {
    let Appliance {
        worker: _worker,
        http,
        ..
    } = Appliance::start(&[], example_config);
    // Routing: no such path (404), a method the path does not take (405,
    // still naming the allowed ones).
    let message = http.get("/no/such/path?access_token=x").error(404);
    assert!(message.contains("/no/such/path"), "{message}");
    assert!(!message.contains("access_token"), "{message}");
    let reply = http.send("DELETE", "/api/tasks", &[], None);
    reply.error(405);
    assert_eq!(reply.header("allow"), Some("GET,HEAD,POST"), "{reply:?}");
    http.send("GET", "/api/tasks/t1/cancel", &[], None)
        .error(405);
    // axum's extractors: a query that does not parse (400), a body that is
    // not JSON (400), JSON of the wrong shape (422), a body over the limit
    // (413).
    http.get("/api/tasks?limit=many").error(400);
    http.post("/api/tasks/t1/cancel", "{").error(400);
    http.post("/api/tasks/t1/cancel", r#"{"reason": 5}"#)
        .error(422);
    let huge = json!({ "reason": "x".repeat(1024 * 1024) }).to_string();
    http.post("/api/tasks/t1/cancel", &huge).error(413);
}

//! The worker against ejabberd's MQTT 5 broker (Debian `ejabberd`), which
//! has no shared subscriptions: a worker configured to share its group says
//! so once, stays connected and not ready instead of reconnecting in a loop,
//! and a single worker (`worker.shared_subscription = false`) runs playbooks
//! through it like through Mosquitto.

mod common;

use common::*;
use serde_json::json;

/// What the worker says once when the broker cannot share its group.
const CANNOT_SHARE: &str = "this broker cannot share a group";

fn login() -> String {
    let (user, password) = EJABBERD_LOGIN;
    format!("username = \"{user}\"\npassword = \"{password}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_cannot_share_a_group_but_runs_a_single_worker() {
    let broker = Ejabberd::start();

    // A worker that wants a shared subscription.
    let http_port = free_port();
    let mut setup = WorkerSetup::new(&unique("ejshare"), broker.port);
    setup.extra_mqtt = login();
    setup.http_port = Some(http_port);
    let sharing = setup.spawn();
    let connects = || sharing.log().matches("connected to the broker").count();
    assert!(
        wait_until(DEADLINE, || sharing.log().contains(CANNOT_SHARE)
            || connects() > 3),
        "{}",
        sharing.log()
    );
    assert!(connects() <= 3, "reconnects in a loop:\n{}", sharing.log());
    assert!(
        sharing
            .log()
            .contains("set `worker.shared_subscription = false`"),
        "{}",
        sharing.log()
    );
    let http = Http::new(http_port);
    http.wait_up(&sharing);
    let not_ready = |http: &Http| {
        let readyz = http.get("/readyz");
        assert_eq!(readyz.status, 503, "{}", readyz.body);
        let body = readyz.json();
        assert_eq!(body["checks"]["mqtt_connected"], true, "{body}");
        assert_eq!(body["checks"]["mqtt_subscribed"], false, "{body}");
    };
    not_ready(&http);

    // A single worker of another group runs a playbook through ejabberd.
    let group = unique("ejsingle");
    let mut single = WorkerSetup::new(&group, broker.port);
    single.shared_subscription = false;
    single.extra_mqtt = login();
    let _single = single.start();
    let (user, password) = EJABBERD_LOGIN;
    let observer = Observer::start_with(broker.port, &group, Some((user, password))).await;
    let id = unique("mixed");
    observer
        .submit(json!({"task_id": id, "playbook": "multi_host.yml", "inventory": "hosts.yml"}))
        .await;
    let done = observer.wait_final(&id, DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["worker_id"], format!("{group}-w1"), "{done}");
    assert!(
        observer
            .statuses(&id)
            .iter()
            .any(|s| s["state"] == "running")
    );

    // All that while, the sharing worker neither reconnected nor repeated
    // itself, and it is still not ready.
    assert!(connects() <= 3, "reconnects in a loop:\n{}", sharing.log());
    assert_eq!(
        sharing.log().matches(CANNOT_SHARE).count(),
        1,
        "{}",
        sharing.log()
    );
    not_ready(&http);
}

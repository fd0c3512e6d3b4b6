//! The HTTP transport across a crash: statuses are journaled before they
//! are posted, so a worker killed while its controller refused every post
//! posts what it owed once it is back, and nothing the controller already
//! took.

mod common;

use std::time::Duration;

use common::*;

/// Status posts answered 503 while the controller is "down": more than the
/// worker can try before the test kills it.
static DOWN: [u16; 10_000] = [503; 10_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_posts_again_what_the_controller_had_not_taken_and_nothing_else() {
    let controller = PollController::start().await;
    let ledger = Ledger::new();
    let mut setup = PollSetup::new();
    let port = free_port();
    setup.http_port = Some(port);
    controller.script([Answer::Json(ledger_request("taken-1", &ledger.path, 0))]);
    let mut worker = setup.start(&controller.base_url);
    let http = Http::new(port);
    http.wait_up(&worker);
    controller.wait_final("taken-1", DEADLINE).await;
    let taken_posts = controller.seen(|s| s.statuses["taken-1"].len());

    // The controller stops taking statuses; a task runs to its end anyway.
    controller.fail_posts(&DOWN);
    controller.script([Answer::Json(ledger_request("owed-1", &ledger.path, 0))]);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let reply = http.get("/api/tasks/owed-1");
        if reply.status == 200 && reply.json()["state"] == "success" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "owed-1 did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(controller.seen(|s| s.final_status("owed-1")), None);
    worker.kill();

    controller.accept_posts();
    worker.restart();
    let owed = controller.wait_final("owed-1", DEADLINE).await;
    assert_eq!(owed["state"], "success", "{owed}");
    // What a restart posts goes out together, oldest first: one more poll
    // later, anything of taken-1's would have arrived.
    let polls = controller.seen(|s| s.polls().len());
    controller.wait_polls(polls + 1, DEADLINE).await;
    assert_eq!(
        controller.seen(|s| s.statuses["taken-1"].len()),
        taken_posts,
        "a status the controller had taken was posted again"
    );
    assert_eq!(ledger_counts(&ledger.path)["owed-1"], 1);
    assert_eq!(controller.seen(|s| s.invalid.clone()), Vec::<String>::new());
}

//! Unit tests of the task table.

mod delivery;

use tokio::sync::mpsc;

use super::*;
use crate::journal::Journal;

fn table(max_queue_size: usize, history_limit: usize) -> TaskTable {
    TaskTable::new(TableSettings {
        worker_id: "w".into(),
        max_queue_size,
        history_limit,
        playbook_directory: PathBuf::from("/p"),
        metrics: Arc::new(Metrics::default()),
        journal: None,
    })
}
use crate::model::{Delivery, Inventory, StatusUpdate};

fn spec(id: &str) -> TaskSpec {
    let inventory = Inventory::Inline("localhost,".into());
    TaskSpec::with_defaults(id, PathBuf::from("/p/site.yml"), inventory)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<StatusUpdate>) -> Vec<(String, TaskState)> {
    let mut seen = vec![];
    while let Ok(StatusUpdate { status: s, .. }) = rx.try_recv() {
        seen.push((s.task_id, s.state));
    }
    seen
}

#[tokio::test]
async fn states_flow_queued_running_final_once() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    assert_eq!(table.submit(spec("a"), None), Admission::Queued);
    let (taken, _) = table.start_next().await;
    assert_eq!(taken.task_id, "a");
    table.progress(
        "a",
        Counters {
            ok: 1,
            ..Counters::default()
        },
    );
    let outcome = RunOutcome::refused(TaskState::Failed, "x".into());
    table.finish("a", outcome.clone());
    table.finish("a", outcome);
    use TaskState::*;
    let states: Vec<_> = drain(&mut rx).into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, vec![Queued, Running, Running, Failed]);
}

#[tokio::test]
async fn duplicate_id_is_not_queued_again_and_republishes() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    table.submit(spec("a"), None);
    assert_eq!(table.submit(spec("a"), None), Admission::Duplicate);
    assert_eq!(table.refuse("a", "bad", None), Admission::Duplicate);
    assert_eq!(drain(&mut rx).len(), 3);
    assert_eq!(table.load(), (1, 0));
    assert_eq!(table.queued(), 1);
    assert_eq!(table.status("a").unwrap().state, TaskState::Queued);
}

#[tokio::test]
async fn queued_counts_what_waits_as_load_does() {
    let table = table(10, 10);
    for id in ["a", "b", "c"] {
        table.submit(spec(id), None);
    }
    table.start_next().await;
    table.cancel("c", "no longer needed");
    assert_eq!(table.load(), (1, 1));
    assert_eq!(table.queued(), 1);
}

#[test]
fn queue_full_fails_with_the_limit_in_the_message() {
    let table = table(1, 10);
    table.submit(spec("a"), None);
    assert_eq!(table.submit(spec("b"), None), Admission::QueueFull);
    let b = table.status("b").unwrap();
    assert_eq!(b.state, TaskState::Failed);
    assert_eq!(b.error_message.as_deref(), Some("Queue full (max: 1)"));
}

#[tokio::test]
async fn room_waits_until_a_queued_task_leaves_the_queue() {
    let table = table(1, 10);
    table.room().await;
    table.submit(spec("a"), None);
    let waiting = tokio::spawn({
        let table = table.clone();
        async move { table.room().await }
    });
    // Log lines of other tasks wake it, but do not make room.
    table.append_log("a", "line");
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    let _ = table.start_next().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("room once the task left the queue")
        .unwrap();
}

#[tokio::test]
async fn shutdown_cancels_queued_and_signals_running() {
    let table = table(10, 10);
    table.submit(spec("a"), None);
    table.submit(spec("b"), None);
    let (_, token) = table.start_next().await;
    table.shutdown();
    assert!(token.is_cancelled());
    assert_eq!(table.status("b").unwrap().state, TaskState::Cancelled);
    assert_eq!(table.status("a").unwrap().state, TaskState::Running);
    assert_eq!(table.submit(spec("c"), None), Admission::ShuttingDown);
}

#[tokio::test]
async fn cancel_ends_a_queued_task_and_signals_a_running_one() {
    let table = table(10, 10);
    table.submit(spec("a"), None);
    table.submit(spec("b"), None);
    let (_, token) = table.start_next().await;
    assert_eq!(table.cancel("b", "Cancelled by request"), Cancel::Dequeued);
    assert_eq!(table.status("b").unwrap().state, TaskState::Cancelled);
    assert_eq!(table.cancel("a", "Cancelled by request"), Cancel::Stopping);
    assert!(token.is_cancelled());
    table.finish(
        "a",
        RunOutcome::refused(TaskState::Cancelled, "Cancelled".into()),
    );
    let a = table.status("a").unwrap();
    assert_eq!(a.error_message.as_deref(), Some("Cancelled by request"));
    assert_eq!(table.cancel("b", "again"), Cancel::AlreadyFinished);
    assert_eq!(table.cancel("zz", "x"), Cancel::Unknown);
}

/// The finals each task was streamed with.
fn finals(seen: &[(String, TaskState)], id: &str) -> Vec<TaskState> {
    seen.iter()
        .filter(|(task, state)| task == id && state.is_final())
        .map(|(_, state)| *state)
        .collect()
}

#[tokio::test]
async fn a_cancel_after_the_start_ends_the_run_with_one_final_status() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    table.submit(spec("a"), None);
    let (_, token) = table.start_next().await;
    // The cancel finds the task running: it stops the run, it does not end
    // the task itself.
    assert_eq!(table.cancel("a", "Cancelled by request"), Cancel::Stopping);
    assert!(token.is_cancelled());
    assert_eq!(table.status("a").unwrap().state, TaskState::Running);
    table.finish(
        "a",
        RunOutcome::refused(TaskState::Cancelled, "killed".into()),
    );
    // A late report of the same run changes nothing.
    table.finish("a", RunOutcome::refused(TaskState::Success, "x".into()));
    use TaskState::*;
    let seen = drain(&mut rx);
    assert_eq!(
        seen.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [Queued, Running, Cancelled]
    );
    let a = table.status("a").unwrap();
    assert_eq!(a.error_message.as_deref(), Some("Cancelled by request"));
}

#[tokio::test]
async fn a_cancel_before_the_start_keeps_the_task_from_the_pool() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    table.submit(spec("a"), None);
    table.submit(spec("b"), None);
    assert_eq!(table.cancel("a", "Cancelled by request"), Cancel::Dequeued);
    let (next, _) = table.start_next().await;
    assert_eq!(next.task_id, "b");
    assert!(table.lock().start_next().is_none(), "nothing else to start");
    let seen = drain(&mut rx);
    assert_eq!(finals(&seen, "a"), [TaskState::Cancelled]);
    assert!(
        !seen.contains(&("a".to_owned(), TaskState::Running)),
        "{seen:?}"
    );
    // An ended task cannot start or end again.
    let mut inner = table.lock();
    let again = Ending::Stopped {
        state: TaskState::Failed,
        reason: "again".into(),
    };
    assert!(!inner.end("a", again));
}

#[tokio::test]
async fn shutdown_while_a_task_is_taken_ends_it_once() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    table.submit(spec("a"), None);
    let (_, token) = table.start_next().await;
    table.shutdown();
    assert!(token.is_cancelled());
    table.finish(
        "a",
        RunOutcome::refused(TaskState::Cancelled, "killed".into()),
    );
    let seen = drain(&mut rx);
    assert_eq!(finals(&seen, "a"), [TaskState::Cancelled]);
}

#[test]
fn history_is_bounded() {
    let table = table(10, 2);
    for id in ["a", "b", "c"] {
        table.refuse(id, "bad", None);
    }
    assert!(table.status("a").is_none());
    assert!(table.status("c").is_some());
}

#[test]
fn live_views_are_told_which_tasks_left_the_history() {
    let table = table(10, 2);
    let (_, mut live) = table.snapshot_and_live();
    for id in ["a", "b", "c", "d"] {
        table.refuse(id, "bad", None);
    }
    let mut trimmed = vec![];
    while let Ok(event) = live.try_recv() {
        if let view::LiveEvent::Trimmed { task_ids } = event {
            trimmed.push(task_ids);
        }
    }
    assert_eq!(trimmed, [["a"], ["b"]]);
}

/// A table that journals into `dir`, with what the journal held.
fn journaled_table(
    dir: &std::path::Path,
    history_limit: usize,
) -> (TaskTable, Vec<crate::journal::StoredTask>) {
    let path = dir.join(crate::journal::JOURNAL_FILE);
    let (journal, stored) = Journal::open(&path).unwrap();
    let table = TaskTable::new(TableSettings {
        journal: Some(journal),
        ..table(10, history_limit).lock().settings.clone()
    });
    (table, stored)
}

async fn close(table: TaskTable) {
    let journal = table.lock().settings.journal.clone().unwrap();
    journal.close().await;
}

#[tokio::test]
async fn a_restart_requeues_queued_tasks_and_ends_interrupted_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 10);
    before.refuse("done", "bad", None);
    before.submit(spec("interrupted"), None);
    before.submit(spec("waiting-1"), None);
    before.submit(spec("waiting-2"), None);
    before.start_next().await;
    close(before).await;

    let (after, stored) = journaled_table(dir.path(), 10);
    let mut changes = after.subscribe();
    let restored = after.restore(stored, false);
    assert_eq!(
        restored,
        Restored {
            queued: 2,
            ended: 1,
            finished: 1
        }
    );
    let interrupted = after.status("interrupted").unwrap();
    assert_eq!(interrupted.state, TaskState::Failed);
    assert_eq!(interrupted.error_message.as_deref(), Some(INTERRUPTED));
    assert_eq!(interrupted.return_code, None);
    assert!(interrupted.started_at.is_some() && interrupted.completed_at.is_some());
    // Queued tasks run in their old order, with their full request.
    let (first, _) = after.start_next().await;
    assert_eq!(first, spec("waiting-1"));
    let (second, _) = after.start_next().await;
    assert_eq!(second.task_id, "waiting-2");
    // Every held id is still known: a redelivered request does not run again.
    assert_eq!(after.submit(spec("done"), None), Admission::Duplicate);
    assert_eq!(
        after.submit(spec("interrupted"), None),
        Admission::Duplicate
    );
    after.journaled().await;
    let changed: Vec<_> = drain(&mut changes);
    assert_eq!(
        changed,
        [
            ("interrupted".to_owned(), TaskState::Failed),
            ("waiting-1".to_owned(), TaskState::Running),
            ("waiting-2".to_owned(), TaskState::Running),
            ("done".to_owned(), TaskState::Failed),
            ("interrupted".to_owned(), TaskState::Failed),
        ]
    );
    // New tasks are numbered after the restored ones.
    after.submit(spec("new"), None);
    let statuses = after.statuses();
    assert_eq!(statuses.last().unwrap().task_id, "new");
    assert_eq!(statuses.first().unwrap().task_id, "done");
}

#[tokio::test]
async fn rerun_interrupted_queues_the_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 10);
    before.submit(spec("a"), None);
    before.start_next().await;
    before.progress(
        "a",
        Counters {
            ok: 2,
            ..Counters::default()
        },
    );
    close(before).await;

    let (after, stored) = journaled_table(dir.path(), 10);
    assert_eq!(after.restore(stored, true).queued, 1);
    let a = after.status("a").unwrap();
    assert_eq!(
        (a.state, a.started_at, a.counters),
        (TaskState::Queued, None, Counters::default())
    );
    assert_eq!(after.start_next().await.0, spec("a"));
}

#[tokio::test]
async fn the_restored_history_keeps_its_limit_and_the_journal_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 5);
    for n in 0..5 {
        before.refuse(&format!("t{n}"), "bad", None);
    }
    close(before).await;
    let (after, stored) = journaled_table(dir.path(), 2);
    assert_eq!(after.restore(stored, false).finished, 5);
    assert!(after.status("t2").is_none());
    assert!(after.status("t4").is_some());
    close(after).await;
    let (_, stored) = journaled_table(dir.path(), 2);
    let ids: Vec<_> = stored.iter().map(|t| t.status.task_id.clone()).collect();
    assert_eq!(ids, ["t3", "t4"]);
}

fn route(topic: &str) -> Option<ReplyRoute> {
    Some(ReplyRoute {
        topic: topic.into(),
        correlation: Some(bytes::Bytes::from(format!("corr-{topic}"))),
    })
}

/// State, reply topic and repeat flag of every streamed status.
fn deliveries(
    rx: &mut mpsc::UnboundedReceiver<StatusUpdate>,
) -> Vec<(TaskState, Option<String>, bool)> {
    let mut seen = vec![];
    while let Ok(StatusUpdate { status: s, .. }) = rx.try_recv() {
        let reply = s.delivery.reply.as_ref().map(|r| r.topic.clone());
        seen.push((s.state, reply, s.delivery.repeat));
    }
    seen
}

#[tokio::test]
async fn the_admitted_request_owns_the_route_and_a_duplicate_gets_one_status_on_its_own() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    table.submit(spec("a"), route("first"));
    assert_eq!(
        table.submit(spec("a"), route("second")),
        Admission::Duplicate
    );
    table.start_next().await;
    assert_eq!(table.submit(spec("a"), None), Admission::Duplicate);
    assert_eq!(
        table.refuse("a", "bad", route("third")),
        Admission::Duplicate
    );
    table.finish("a", RunOutcome::refused(TaskState::Failed, "x".into()));
    // The final status carried the route out; the ended task holds none.
    assert_eq!(table.status("a").unwrap().delivery, Delivery::default());
    assert_eq!(table.submit(spec("a"), route("late")), Admission::Duplicate);
    let some = |t: &str| Some(t.to_owned());
    use TaskState::*;
    assert_eq!(
        deliveries(&mut rx),
        [
            (Queued, some("first"), false),
            (Queued, some("second"), true),
            (Running, some("first"), false),
            (Running, None, true),
            (Running, some("third"), true),
            (Failed, some("first"), false),
            (Failed, some("late"), true),
        ]
    );
}

#[tokio::test]
async fn a_refused_request_gets_its_one_status_on_its_route() {
    let table = table(1, 10);
    let mut rx = table.subscribe();
    table.refuse("bad", "Invalid playbook", route("r1"));
    table.submit(spec("a"), None);
    assert_eq!(table.submit(spec("b"), route("r2")), Admission::QueueFull);
    table.shutdown();
    assert_eq!(
        table.submit(spec("c"), route("r3")),
        Admission::ShuttingDown
    );
    let some = |t: &str| Some(t.to_owned());
    use TaskState::*;
    assert_eq!(
        deliveries(&mut rx),
        [
            (Failed, some("r1"), false),
            (Queued, None, false),
            (Failed, some("r2"), false),
            (Cancelled, None, false),
            (Cancelled, some("r3"), false),
        ]
    );
    for id in ["bad", "b", "c"] {
        assert_eq!(table.status(id).unwrap().delivery, Delivery::default());
    }
}

#[tokio::test]
async fn routes_travel_through_the_journal_but_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 10);
    let mut rx = before.subscribe();
    before.submit(spec("a"), route("first"));
    before.submit(spec("a"), route("second"));
    before.journaled().await;
    let some = |t: &str| Some(t.to_owned());
    assert_eq!(
        deliveries(&mut rx),
        [
            (TaskState::Queued, some("first"), false),
            (TaskState::Queued, some("second"), true),
        ]
    );
    close(before).await;
    let (_, stored) = journaled_table(dir.path(), 10);
    assert_eq!(stored[0].status.delivery, Delivery::default());
}

#[tokio::test]
async fn with_a_journal_a_subscriber_starts_and_ends_in_line_with_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (table, _) = journaled_table(dir.path(), 10);
    table.submit(spec("before"), None);
    // Subscribed before "before" was committed, it still starts after it.
    let mut rx = table.subscribe();
    table.submit(spec("during"), None);
    table.close_subscribers();
    table.submit(spec("after"), None);
    table.journaled().await;
    let mut seen = vec![];
    while let Some(update) = rx.recv().await {
        seen.push(update.status.task_id);
    }
    assert_eq!(seen, ["during"]);
    close(table).await;
}

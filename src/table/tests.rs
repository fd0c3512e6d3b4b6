//! Unit tests of the task table.

use super::*;

fn table(max_queue_size: usize, history_limit: usize) -> TaskTable {
    TaskTable::new(TableSettings {
        worker_id: "w".into(),
        max_queue_size,
        history_limit,
        playbook_directory: PathBuf::from("/p"),
        metrics: Arc::new(Metrics::default()),
    })
}
use crate::model::Inventory;

fn spec(id: &str) -> TaskSpec {
    let inventory = Inventory::Inline("localhost,".into());
    TaskSpec::with_defaults(id, PathBuf::from("/p/site.yml"), inventory)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<TaskStatus>) -> Vec<(String, TaskState)> {
    let mut seen = vec![];
    while let Ok(s) = rx.try_recv() {
        seen.push((s.task_id, s.state));
    }
    seen
}

#[tokio::test]
async fn states_flow_queued_running_final_once() {
    let table = table(10, 10);
    let mut rx = table.subscribe();
    assert_eq!(table.submit(spec("a")), Admission::Queued);
    let (taken, _) = table.next_queued().await;
    assert_eq!(taken.task_id, "a");
    table.mark_running("a");
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
    table.submit(spec("a"));
    assert_eq!(table.submit(spec("a")), Admission::Duplicate);
    assert_eq!(table.refuse("a", "bad"), Admission::Duplicate);
    assert_eq!(drain(&mut rx).len(), 3);
    assert_eq!(table.load(), (1, 0));
    assert_eq!(table.status("a").unwrap().state, TaskState::Queued);
}

#[test]
fn queue_full_fails_with_the_limit_in_the_message() {
    let table = table(1, 10);
    table.submit(spec("a"));
    assert_eq!(table.submit(spec("b")), Admission::QueueFull);
    let b = table.status("b").unwrap();
    assert_eq!(b.state, TaskState::Failed);
    assert_eq!(b.error_message.as_deref(), Some("Queue full (max: 1)"));
}

#[tokio::test]
async fn shutdown_cancels_queued_and_signals_running() {
    let table = table(10, 10);
    table.submit(spec("a"));
    table.submit(spec("b"));
    let (_, token) = table.next_queued().await;
    table.mark_running("a");
    table.shutdown();
    assert!(token.is_cancelled());
    assert_eq!(table.status("b").unwrap().state, TaskState::Cancelled);
    assert_eq!(table.status("a").unwrap().state, TaskState::Running);
    assert_eq!(table.submit(spec("c")), Admission::ShuttingDown);
}

#[tokio::test]
async fn cancel_ends_a_queued_task_and_signals_a_running_one() {
    let table = table(10, 10);
    table.submit(spec("a"));
    table.submit(spec("b"));
    let (_, token) = table.next_queued().await;
    table.mark_running("a");
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
    // A cancelled queued task is never handed to the pool.
    table.submit(spec("c"));
    let (next, _) = table.next_queued().await;
    assert_eq!(next.task_id, "c");
}

#[test]
fn history_is_bounded() {
    let table = table(10, 2);
    for id in ["a", "b", "c"] {
        table.refuse(id, "bad");
    }
    assert!(table.status("a").is_none());
    assert!(table.status("c").is_some());
}

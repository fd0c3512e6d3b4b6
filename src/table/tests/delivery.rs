//! Delivery receipts: which statuses a sink must send again after a restart.

use super::*;

fn ids(statuses: &[TaskStatus]) -> Vec<&str> {
    statuses.iter().map(|s| s.task_id.as_str()).collect()
}

#[tokio::test]
async fn only_final_statuses_that_were_delivered_are_left_out_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 10);
    before.refuse("delivered", "bad", None);
    before.refuse("undelivered", "bad", None);
    before.submit(spec("interrupted"), None);
    before.submit(spec("waiting"), None);
    before.start_next().await;
    before.mark_delivered(&before.status("delivered").unwrap());
    // Receipts of unfinished statuses count for nothing.
    before.mark_delivered(&before.status("interrupted").unwrap());
    before.mark_delivered(&before.status("waiting").unwrap());
    assert_eq!(
        ids(&before.undelivered_statuses()),
        ["undelivered", "interrupted", "waiting"]
    );
    assert_eq!(before.statuses().len(), 4);
    close(before).await;

    let (after, stored) = journaled_table(dir.path(), 10);
    after.restore(stored, false);
    assert_eq!(after.statuses().len(), 4);
    // The interrupted run's new final status has not been delivered.
    let undelivered = after.undelivered_statuses();
    assert_eq!(ids(&undelivered), ["undelivered", "interrupted", "waiting"]);
    assert_eq!(undelivered[1].error_message.as_deref(), Some(INTERRUPTED));
    // A status read back from the journal is the one a sink is given and
    // reports: its receipt counts.
    after.mark_delivered(&undelivered[0]);
    after.mark_delivered(&undelivered[1]);
    assert_eq!(ids(&after.undelivered_statuses()), ["waiting"]);
    close(after).await;
    let (again, stored) = journaled_table(dir.path(), 10);
    again.restore(stored, false);
    assert_eq!(ids(&again.undelivered_statuses()), ["waiting"]);
}

#[tokio::test]
async fn a_receipt_of_an_earlier_final_does_not_mark_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let (table, _) = journaled_table(dir.path(), 10);
    table.refuse("a", "bad", None);
    let current = table.status("a").unwrap();
    let earlier = TaskStatus {
        completed_at: current
            .completed_at
            .map(|at| at - chrono::Duration::milliseconds(1)),
        ..current.clone()
    };
    table.mark_delivered(&earlier);
    let other_state = TaskStatus {
        state: TaskState::Success,
        ..current.clone()
    };
    table.mark_delivered(&other_state);
    assert_eq!(ids(&table.undelivered_statuses()), ["a"]);
    close(table).await;
    let (after, stored) = journaled_table(dir.path(), 10);
    assert!(!stored[0].delivered);
    after.restore(stored, false);
    assert_eq!(ids(&after.undelivered_statuses()), ["a"]);
}

#[tokio::test]
async fn the_history_limit_trims_delivered_tasks_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = journaled_table(dir.path(), 5);
    for n in 0..5 {
        let id = format!("t{n}");
        before.refuse(&id, "bad", None);
        if n % 2 == 0 {
            before.mark_delivered(&before.status(&id).unwrap());
        }
    }
    close(before).await;
    let (after, stored) = journaled_table(dir.path(), 2);
    after.restore(stored, false);
    assert_eq!(ids(&after.statuses()), ["t3", "t4"]);
    assert_eq!(ids(&after.undelivered_statuses()), ["t3"]);
    close(after).await;
    let (_, stored) = journaled_table(dir.path(), 2);
    let kept: Vec<_> = stored
        .iter()
        .map(|t| (t.status.task_id.as_str(), t.delivered))
        .collect();
    assert_eq!(kept, [("t3", false), ("t4", true)]);
}

#[test]
fn without_a_journal_receipts_are_kept_in_memory() {
    let table = table(10, 10);
    table.refuse("a", "bad", None);
    table.refuse("b", "bad", None);
    table.mark_delivered(&table.status("b").unwrap());
    assert_eq!(ids(&table.undelivered_statuses()), ["a"]);
}

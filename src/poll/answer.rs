//! What a poll's answer holds: the requests of its body (one object, or
//! each element of an array as its own bytes), each handed to
//! [`transport::admit`] exactly as an MQTT payload, so the size limit and
//! every intake rule apply alike; and how large a body the worker reads.
//!
//! A body or element that is not a request object is a rejected request
//! (listed on the dashboard), never a crash; a request whose `task_id` is
//! `.` or `..` is rejected without a status, since no status URL can name
//! it (`retry::status_url`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::retry::status_url;
use crate::intake::IntakePolicy;
use crate::table::TaskTable;
use crate::transport;

/// How many times `worker.max_request_size` an answer may be, and the least
/// it may be whatever that setting: a single request somewhat over the limit
/// still arrives to be refused with a status, and a few requests fit.
const BODY_FACTOR: usize = 4;
const MIN_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The largest answer read for `policy`.
pub fn body_limit(policy: &IntakePolicy) -> usize {
    policy
        .max_request_size
        .saturating_mul(BODY_FACTOR)
        .max(MIN_BODY_LIMIT)
}

/// Hands each request of an answer to intake and waits until what they
/// became is journaled; how many were new (not for a task the worker already
/// holds: a controller that hands a task out again until its status arrives
/// must not be polled in a tight loop).
pub async fn admit_answer(table: &TaskTable, policy: &IntakePolicy, body: &[u8]) -> usize {
    let requests = requests(body);
    let mut recorded = None;
    let mut new = 0;
    for request in &requests {
        let task_id = task_id_of(request);
        if task_id
            .as_deref()
            .is_none_or(|id| table.status(id).is_none())
        {
            new += 1;
        }
        if task_id.is_some_and(|id| status_url("", &id).is_none()) {
            table.reject_unaddressable(
                "task_id \".\" and \"..\" name no status URL over HTTP; use another id",
            );
            continue;
        }
        // Each future covers every change made before it: the last is enough.
        if let Some(future) = transport::admit(table, policy, request, |_| None) {
            recorded = Some(future);
        }
    }
    if let Some(recorded) = recorded {
        recorded.await;
    }
    new
}

/// The requests of an answer: none for an empty body or `[]`, the elements'
/// own bytes for an array, else the whole body (an object, or anything
/// else, which intake then rejects).
fn requests(body: &[u8]) -> Vec<&[u8]> {
    let text = body.trim_ascii();
    if text.is_empty() {
        return Vec::new();
    }
    if text.starts_with(b"[")
        && let Ok(elements) = serde_json::from_slice::<Vec<&RawValue>>(text)
    {
        return elements.iter().map(|raw| raw.get().as_bytes()).collect();
    }
    vec![text]
}

/// The `task_id` of a request, if it has a readable one.
fn task_id_of(request: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        task_id: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Id>(request).ok()?.task_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_splits_into_the_bytes_of_each_request() {
        let body = br#" [ {"task_id": "a"}, 5, {"task_id":"b","x":[1,2]} ] "#;
        let parts: Vec<&str> = requests(body)
            .into_iter()
            .map(|part| std::str::from_utf8(part).unwrap())
            .collect();
        assert_eq!(
            parts,
            [r#"{"task_id": "a"}"#, "5", r#"{"task_id":"b","x":[1,2]}"#]
        );
        assert_eq!(requests(br#"{"task_id": "a"}"#), [br#"{"task_id": "a"}"#]);
        assert!(requests(b"  \n").is_empty());
        assert!(requests(b"[]").is_empty());
        // Not JSON at all, or a broken array: one request, which intake rejects.
        assert_eq!(requests(b"[{oops"), [b"[{oops"]);
        assert_eq!(requests(b"hello"), [b"hello"]);
    }

    #[test]
    fn an_element_nested_too_deeply_for_the_parser_still_arrives_alone() {
        let deep = format!(
            r#"{{"task_id":"deep","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let body = format!(r#"[{{"task_id":"ok"}},{deep}]"#);
        let parts = requests(body.as_bytes());
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], deep.as_bytes());
    }

    #[test]
    fn dot_ids_are_told_apart_from_their_lookalikes() {
        let names_no_status_url =
            |request| task_id_of(request).is_some_and(|id| status_url("", &id).is_none());
        assert!(names_no_status_url(br#"{"task_id": ".."}"#));
        assert!(names_no_status_url(br#"{"task_id": "\u002e"}"#));
        for other in [
            &br#"{"task_id": "..."}"#[..],
            br#"{"task_id": 5}"#,
            br#"{"playbook": "x.yml"}"#,
            b"not json",
        ] {
            assert!(!names_no_status_url(other));
        }
    }

    #[tokio::test]
    async fn requests_for_tasks_already_held_are_not_new() {
        let table = TaskTable::new(crate::table::TableSettings {
            worker_id: "w".into(),
            max_queue_size: 10,
            history_limit: 10,
            playbook_directory: ".".into(),
            metrics: Default::default(),
            journal: None,
        });
        let policy = IntakePolicy::new(std::path::Path::new("."), false).unwrap();
        let first = br#"[{"task_id": "a"}, {"task_id": "b"}]"#;
        assert_eq!(admit_answer(&table, &policy, first).await, 2);
        let again = br#"[{"task_id": "b"}, {"task_id": "a"}, {"task_id": "c"}]"#;
        assert_eq!(admit_answer(&table, &policy, again).await, 1);
        assert_eq!(
            admit_answer(&table, &policy, br#"{"task_id": "c"}"#).await,
            0
        );
        // No readable id: nothing to match, so new (and rejected).
        assert_eq!(admit_answer(&table, &policy, b"oops").await, 1);
    }

    #[test]
    fn the_body_limit_lets_an_oversized_request_arrive() {
        let mut policy = IntakePolicy::new(std::path::Path::new("."), false).unwrap();
        policy.max_request_size = 1024;
        assert_eq!(body_limit(&policy), MIN_BODY_LIMIT);
        policy.max_request_size = 8 * 1024 * 1024;
        assert_eq!(body_limit(&policy), 32 * 1024 * 1024);
    }
}

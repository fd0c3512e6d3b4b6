//! The JSON Schemas users get in `docs/schema/`, compiled once per test
//! binary, and the check that every status document a test receives goes
//! through (the observer and the HTTP client call it), so that the published
//! schema and the documents the worker really sends cannot drift apart.

use std::sync::LazyLock;

use jsonschema::{Draft, Validator};
use serde_json::Value;

/// `docs/schema/task-request.schema.json`.
pub static REQUEST_SCHEMA: LazyLock<Validator> =
    LazyLock::new(|| compile(include_str!("../../docs/schema/task-request.schema.json")));

/// `docs/schema/task-status.schema.json`.
pub static STATUS_SCHEMA: LazyLock<Validator> =
    LazyLock::new(|| compile(include_str!("../../docs/schema/task-status.schema.json")));

/// Formats are asserted (`date-time`), not only annotated: the documents
/// promise RFC 3339 times.
fn compile(text: &str) -> Validator {
    let schema: Value = serde_json::from_str(text).expect("a schema is JSON");
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}"))
}

/// Every way `doc` breaks `schema`, one line each (empty when it is valid).
pub fn schema_errors(schema: &Validator, doc: &Value) -> Vec<String> {
    schema
        .iter_errors(doc)
        .map(|error| format!("{error} (at '{}')", error.instance_path()))
        .collect()
}

/// Why `payload` (as received on a status topic) is not a valid status
/// document, if it is not.
pub fn status_violation(payload: &[u8]) -> Option<String> {
    let doc = match serde_json::from_slice::<Value>(payload) {
        Ok(doc) => doc,
        Err(e) => {
            let shown = String::from_utf8_lossy(payload);
            return Some(format!("status payload is not JSON ({e}): {shown}"));
        }
    };
    let errors = schema_errors(&STATUS_SCHEMA, &doc);
    (!errors.is_empty()).then(|| {
        format!(
            "status document breaks docs/schema/task-status.schema.json:\n  {}\ndocument: {doc:#}",
            errors.join("\n  ")
        )
    })
}

/// Panics with the document and every schema error unless `doc` is a valid
/// status document.
#[track_caller]
pub fn assert_valid_status(doc: &Value) {
    let errors = schema_errors(&STATUS_SCHEMA, doc);
    assert!(
        errors.is_empty(),
        "status document breaks docs/schema/task-status.schema.json:\n  {}\ndocument: {doc:#}",
        errors.join("\n  ")
    );
}

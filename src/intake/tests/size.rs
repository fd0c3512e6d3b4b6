//! Requests the parser does not take: larger than `max_request_size`, or
//! nested deeper than it allows. With a readable top-level id they are
//! refused with a status; without one they stay unaddressable.

use super::*;

fn padded(id_field: &str, total: usize) -> Vec<u8> {
    let head = format!(r#"{{{id_field}"playbook": "site.yml", "inventory": "h,", "pad": ""#);
    let mut payload = head.into_bytes();
    payload.resize(total - 2, b'x');
    payload.extend_from_slice(b"\"}");
    payload
}

#[test]
fn a_request_above_the_size_limit_with_a_readable_id_is_refused_with_its_size() {
    let mut f = fixture();
    f.policy.max_request_size = 4096;
    let payload = padded(r#""task_id": "big-1", "#, 4097);
    assert_eq!(
        parse_request(&payload, &f.policy),
        Err(Refusal::Invalid {
            task_id: "big-1".into(),
            reason: "Request too large (4097 bytes, max 4096)".into(),
        })
    );
    // At the limit it is an ordinary request.
    let payload = padded(r#""task_id": "big-1", "#, 4096);
    assert_eq!(parse_request(&payload, &f.policy).unwrap().task_id, "big-1");
}

#[test]
fn a_request_above_the_size_limit_without_a_usable_id_is_unaddressable() {
    let mut f = fixture();
    f.policy.max_request_size = 4096;
    for id_field in ["", r#""task_id": "a/b", "#, r#""task_id": 5, "#] {
        let reason = unaddressable(&f, &padded(id_field, 5000));
        assert_eq!(
            reason, "Request too large (5000 bytes, max 4096); no readable task_id",
            "{id_field}"
        );
    }
    // Not JSON at all (cut short): no id is trusted.
    let mut cut = padded(r#""task_id": "big-2", "#, 5000);
    cut.truncate(4500);
    assert!(unaddressable(&f, &cut).starts_with("Request too large (4500 bytes"));
}

fn nested(id: &str, levels: usize) -> Vec<u8> {
    // The top-level object is one level.
    let inner = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
    format!(r#"{{"task_id": "{id}", "playbook": "site.yml", "inventory": "h,", "extra_vars": {{"x": {inner}}}}}"#)
        .into_bytes()
}

#[test]
fn a_request_nested_deeper_than_the_parser_allows_is_refused_with_a_reason() {
    let f = fixture();
    // extra_vars adds one level: MAX_NESTING in all still parses.
    let payload = nested("deep-1", MAX_NESTING - 1);
    assert_eq!(
        parse_request(&payload, &f.policy).unwrap().task_id,
        "deep-1"
    );
    let payload = nested("deep-1", MAX_NESTING);
    assert_eq!(
        parse_request(&payload, &f.policy),
        Err(Refusal::Invalid {
            task_id: "deep-1".into(),
            reason: format!(
                "Request nested too deeply ({} levels of objects and arrays, max {MAX_NESTING})",
                MAX_NESTING + 1
            ),
        })
    );
    let payload = nested("deep-2", 200);
    let refusal = parse_request(&payload, &f.policy).unwrap_err();
    assert_eq!(refusal.task_id(), Some("deep-2"));
    assert!(refusal.reason().contains("(201 levels"), "{refusal}");
}

#[test]
fn a_deep_request_without_a_readable_id_is_unaddressable() {
    let f = fixture();
    let deep = format!("[{}{}]", "[".repeat(300), "]".repeat(300));
    assert!(unaddressable(&f, deep.as_bytes()).starts_with("payload is not JSON"));
    let payload = nested("a b", 300);
    assert!(unaddressable(&f, &payload).ends_with("; no readable task_id"));
}

//! Reads the top-level `task_id` of a request the JSON parser does not take:
//! one larger than `worker.max_request_size` (never parsed, so its size cannot
//! cost memory) or one nested deeper than the parser allows. Such a request
//! still gets its `failed` status when its id can be read here.
//!
//! One pass over the bytes, no recursion and no allocation beyond the id: a
//! depth counter stands in for a stack. Only the top level is checked as JSON
//! (an object of `"key": value` pairs, closed, nothing but whitespace after
//! it); nested values are skipped by counting brackets outside strings. Any
//! doubt gives no id, so the request stays unaddressable:
//! - input that ends early, or a top level that is not an object;
//! - a last top-level `task_id` that is not a string (with duplicate keys the
//!   last one counts, as for the parser);
//! - an id longer than any valid one could be, or not UTF-8.
//!
//! Whether the id is a *valid* task id is the caller's rule, not this file's.

use super::MAX_TASK_ID_LEN;

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    /// The value of the last top-level `task_id`, escapes decoded, if the
    /// top level is a well-formed object and that value is a short string.
    pub(super) task_id: Option<String>,
    /// The deepest nesting of objects and arrays seen (the top-level object
    /// is 1), counted to the end of the input even when no id was found.
    pub(super) depth: usize,
}

/// Where the scanner is inside the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A key, or `}` right after `{`.
    FirstKey,
    Key,
    Colon,
    Value,
    CommaOrEnd,
    /// Skipping a nested object or array until the depth is back at 1.
    Nested,
    /// After the closing `}`: only whitespace may follow.
    Done,
}

/// Decoded keys and ids longer than this are of no interest (`\uXXXX` is the
/// longest spelling of one character).
const MAX_RAW_STRING: usize = 6 * (MAX_TASK_ID_LEN + 1);

/// Scans `payload` for its top-level `task_id` and its nesting depth.
pub(super) fn scan(payload: &[u8]) -> Scan {
    let mut task_id: Option<String> = None;
    let mut key_is_task_id = false;
    let mut well_formed = true;
    let mut expect = Expect::FirstKey;
    let mut i = skip_whitespace(payload, 0);
    if payload.get(i) != Some(&b'{') {
        return Scan {
            task_id: None,
            depth: 0,
        };
    }
    // The top-level object is depth 1.
    let mut depth = 1usize;
    let mut deepest = 1usize;
    i += 1;
    while i < payload.len() {
        let byte = payload[i];
        if expect == Expect::Nested {
            match byte {
                b'"' => match string_end(payload, i + 1) {
                    Some(end) => i = end,
                    None => break,
                },
                b'{' | b'[' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 1 {
                        expect = Expect::CommaOrEnd;
                    }
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        if byte.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        match (expect, byte) {
            (Expect::FirstKey, b'}') | (Expect::CommaOrEnd, b'}') => {
                depth = 0;
                expect = Expect::Done;
            }
            (Expect::FirstKey | Expect::Key, b'"') => {
                let Some(end) = string_end(payload, i + 1) else {
                    break;
                };
                key_is_task_id = decode(&payload[i + 1..end]).as_deref() == Some("task_id");
                expect = Expect::Colon;
                i = end;
            }
            (Expect::Colon, b':') => expect = Expect::Value,
            (Expect::Value, b'"') => {
                let Some(end) = string_end(payload, i + 1) else {
                    break;
                };
                if key_is_task_id {
                    task_id = decode(&payload[i + 1..end]);
                }
                expect = Expect::CommaOrEnd;
                i = end;
            }
            (Expect::Value, b'{' | b'[') => {
                if key_is_task_id {
                    task_id = None;
                }
                depth += 1;
                deepest = deepest.max(depth);
                expect = Expect::Nested;
            }
            (Expect::Value, b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                // A number or literal: whatever it is, it is not an id.
                if key_is_task_id {
                    task_id = None;
                }
                while payload
                    .get(i + 1)
                    .is_some_and(|b| !matches!(b, b',' | b'}') && !b.is_ascii_whitespace())
                {
                    i += 1;
                }
                expect = Expect::CommaOrEnd;
            }
            (Expect::CommaOrEnd, b',') => expect = Expect::Key,
            // Anything else breaks the top level (trailing data included),
            // but the depth is still counted to the end.
            _ => {
                well_formed = false;
                expect = Expect::Nested;
                depth = depth.max(1);
            }
        }
        i += 1;
    }
    Scan {
        task_id: task_id.filter(|_| well_formed && expect == Expect::Done),
        depth: deepest,
    }
}

fn skip_whitespace(payload: &[u8], mut i: usize) -> usize {
    while payload.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index of the quote closing the string whose contents start at
/// `start`, or None when the input ends first.
fn string_end(payload: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while i < payload.len() {
        match payload[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The text of a short JSON string's raw contents, escapes decoded; None if
/// it is long, not UTF-8, or holds an escape that is not JSON.
fn decode(raw: &[u8]) -> Option<String> {
    if raw.len() > MAX_RAW_STRING {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c.is_control() {
                return None;
            }
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)?;
                // A surrogate half is never part of a valid id or key.
                char::from_u32(code)?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(payload: &[u8]) -> Option<String> {
        scan(payload).task_id
    }

    #[test]
    fn reads_the_top_level_id_among_other_fields() {
        let payload =
            br#" { "playbook": "a.yml", "extra_vars": {"task_id": "inner", "l": [1, {"x": "}"}]},
            "n": -1.5e3, "ok": true, "none": null, "task_id" : "t-1" , "tail": "x" } "#;
        assert_eq!(id(payload).as_deref(), Some("t-1"));
        assert_eq!(scan(payload).depth, 4);
    }

    #[test]
    fn a_task_id_nested_deeper_is_not_the_request_id() {
        assert_eq!(id(br#"{"x": {"task_id": "inner"}}"#), None);
        assert_eq!(id(br#"{"x": ["task_id", "inner"]}"#), None);
        assert_eq!(id(br#"[{"task_id": "inner"}]"#), None);
        // A string value that looks like a key is skipped as a value.
        assert_eq!(id(br#"{"a": "task_id", "b": "inner"}"#), None);
    }

    #[test]
    fn escaped_quotes_and_brackets_in_strings_do_not_confuse_it() {
        let payload = br#"{"a": "\"task_id\": \"fake\", {[", "b\"": "}", "task_id": "real"}"#;
        assert_eq!(id(payload).as_deref(), Some("real"));
        let payload = br#"{"a": "\\", "task_id": "after-backslash"}"#;
        assert_eq!(id(payload).as_deref(), Some("after-backslash"));
        // An escape inside the key or the id is decoded, as the parser does.
        let payload = br#"{"task\u005fid": "a\u0062c\/"}"#;
        assert_eq!(id(payload).as_deref(), Some("abc/"));
    }

    #[test]
    fn duplicate_keys_take_the_last_like_the_parser() {
        assert_eq!(
            id(br#"{"task_id": "first", "task_id": "second"}"#).as_deref(),
            Some("second")
        );
        assert_eq!(id(br#"{"task_id": "first", "task_id": 7}"#), None);
        assert_eq!(
            id(br#"{"task_id": {"a": 1}, "task_id": "third"}"#).as_deref(),
            Some("third")
        );
    }

    #[test]
    fn truncated_or_malformed_input_gives_no_id() {
        for payload in [
            &br#"{"task_id": "t1""#[..],
            br#"{"task_id": "t1", "x": [1, 2"#,
            br#"{"task_id": "t1", "x": "unterminated}"#,
            br#"{"task_id": "t1"} trailing"#,
            br#"{"task_id": "t1"}}"#,
            br#"{"task_id" "t1"}"#,
            br#"{"task_id": "t1" "x": 1}"#,
            br#""task_id""#,
            b"",
            b"   ",
            br#"{"task_id": "t1\"#,
        ] {
            assert_eq!(id(payload), None, "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn invalid_utf8_outside_the_id_is_skipped_inside_it_gives_none() {
        let mut payload = br#"{"blob": ""#.to_vec();
        payload.extend_from_slice(&[0xff, 0xfe, b'"', 0xc3]);
        payload.extend_from_slice(br#"", "task_id": "t1"}"#);
        // A quote is ASCII, so it ends the string even after invalid bytes;
        // the stray byte after it then breaks the top level.
        assert_eq!(id(&payload), None);
        let mut payload = br#"{"blob": ""#.to_vec();
        payload.extend_from_slice(&[0xff, 0xfe, 0xc3]);
        payload.extend_from_slice(br#"", "task_id": "t1"}"#);
        assert_eq!(id(&payload).as_deref(), Some("t1"));
        let mut payload = br#"{"task_id": "t"#.to_vec();
        payload.extend_from_slice(&[0xff]);
        payload.extend_from_slice(br#""}"#);
        assert_eq!(id(&payload), None);
    }

    #[test]
    fn long_ids_and_bad_escapes_give_none() {
        let long = format!(r#"{{"task_id": "{}"}}"#, "a".repeat(MAX_RAW_STRING + 1));
        assert_eq!(id(long.as_bytes()), None);
        assert_eq!(id(br#"{"task_id": "a\qb"}"#), None);
        assert_eq!(id(br#"{"task_id": "a\u12"}"#), None);
        assert_eq!(id(br#"{"task_id": "\ud800"}"#), None);
    }

    #[test]
    fn depth_is_counted_without_recursion_even_without_an_id() {
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        let payload = format!(r#"{{"task_id": "t1", "x": {deep}}}"#);
        assert_eq!(
            scan(payload.as_bytes()),
            Scan {
                task_id: Some("t1".into()),
                depth: 1_000_001
            }
        );
        // Unclosed: the depth is known, the id is not trusted.
        let open = format!(r#"{{"task_id": "t1", "x": {}"#, "{\"a\":".repeat(500));
        assert_eq!(
            scan(open.as_bytes()),
            Scan {
                task_id: None,
                depth: 501
            }
        );
        assert_eq!(scan(b"[[[]]]").depth, 0);
    }
}

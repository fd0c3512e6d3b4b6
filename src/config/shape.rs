//! Raw stage, without stopping at the first problem: deserializes the TOML
//! tree into [`RawConfig`] and, for each unknown key or value of the wrong
//! type, records one error naming it, drops that key and tries again. The
//! checked stage then still runs (with the defaults in place of what was
//! dropped), so `--validate` lists every problem of a file at once.
//!
//! It owns the wording of these "shape" errors (with a "did you mean" for a
//! misspelt key) and the rule for which later problems merely follow from a
//! dropped key ([`follows_from`]); which keys exist is `raw`'s business, what
//! a value means is `check`'s.

use serde_path_to_error::Segment;

use super::ConfigError;
use super::raw::{RawConfig, is_secret};

/// [`RawConfig`] from `value`, with every unknown key and wrongly typed value
/// reported into `errors` and left out. `None` only if a problem could not be
/// tied to a key (then nothing more can be checked).
pub(super) fn deserialize(
    mut value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<RawConfig> {
    loop {
        let error = match serde_path_to_error::deserialize::<_, RawConfig>(value.clone()) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let mut path: Vec<Segment> = error.path().iter().cloned().collect();
        let message = error.inner().message();
        let shape = match unknown_key(message) {
            Some((name, known)) => {
                // serde_path_to_error ends the path with the key it was
                // reading; should it stop at the table, add the key.
                if !matches!(path.last(), Some(Segment::Map { key }) if key == name) {
                    path.push(Segment::Map {
                        key: name.to_owned(),
                    });
                }
                let message = match closest(name, &known) {
                    Some(like) => format!("unknown key (did you mean `{like}`?)"),
                    None if known.is_empty() => "unknown key".to_owned(),
                    None => format!("unknown key, expected one of {}", known.join(", ")),
                };
                ConfigError::Shape {
                    key: dotted(&path),
                    message,
                }
            }
            None => {
                let key = error.path().to_string();
                let message = without_type_names(message);
                let message = if is_secret(&key) {
                    without_value(&message)
                } else {
                    message
                };
                ConfigError::Shape { key, message }
            }
        };
        errors.push(shape);
        if !remove(&mut value, &path) {
            return None;
        }
    }
}

/// The dotted key of `path` (`worker.inventory_plugins[1]`).
fn dotted(path: &[Segment]) -> String {
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Unknown => key.push_str(".?"),
        }
    }
    key
}

/// `message` with the Rust names of our raw structs ("expected struct
/// RawWorker") replaced by what a user sees in the file: a table.
fn without_type_names(message: &str) -> String {
    match message.split_once("struct Raw") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            format!("{before}a table{rest}")
        }
        None => message.to_owned(),
    }
}

/// `message` without the value it quotes ("invalid type: integer `7`,
/// expected a string" → "invalid type: integer, expected a string"), for a
/// password or token given with the wrong type: serde quotes what it found.
fn without_value(message: &str) -> String {
    match message.split_once(", expected") {
        Some((found, expected)) => {
            let kind = found.split(['`', '"']).next().unwrap_or(found).trim_end();
            format!("{kind}, expected{expected}")
        }
        None => "has the wrong type (the value is not shown)".to_owned(),
    }
}

/// The unknown key and the known ones, from serde's
/// "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`",
/// "there are no fields").
fn unknown_key(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let known = rest.split('`').skip(1).step_by(2).collect();
    Some((name, known))
}

/// Removes the value `path` leads to: the whole entry of the innermost table
/// on the path (an array with one bad element goes as a whole, so no
/// shortened list is checked as if it were meant). False if there is none.
fn remove(value: &mut toml::Value, path: &[Segment]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Segment::Map { .. })) else {
        return false;
    };
    let mut table = value;
    for segment in &path[..last_key] {
        table = match (segment, table) {
            (Segment::Map { key }, toml::Value::Table(map)) => match map.get_mut(key) {
                Some(child) => child,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(items)) => match items.get_mut(*index) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match (&path[last_key], table) {
        (Segment::Map { key }, toml::Value::Table(map)) => map.remove(key).is_some(),
        _ => false,
    }
}

/// The known key `name` is most likely a misspelling of, if any is close:
/// at most one edit in three characters (a swap of neighbours is one edit).
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edits(name, candidate), *candidate))
        .filter(|(distance, _)| *distance > 0 && distance * 3 <= name.chars().count().max(3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of
/// neighbouring characters (optimal string alignment).
fn edits(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between the first i of `a` and the first j of `b`.
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Whether a problem of `key` described by `message` may be only the
/// consequence of `dropped` having been left out: it is about that key, a
/// key inside it (or the table holding it), or names it.
pub(super) fn follows_from(dropped: &str, key: &str, message: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    if inside(dropped, key) || inside(key, dropped) {
        return true;
    }
    let part_of_key = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.');
    message.match_indices(dropped).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + dropped.len()..].chars().next();
        !before.is_some_and(part_of_key) && !after.is_some_and(part_of_key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_unknown_field_messages_are_read() {
        assert_eq!(
            unknown_key("unknown field `x`, expected one of `a`, `b`, `c`"),
            Some(("x", vec!["a", "b", "c"]))
        );
        assert_eq!(
            unknown_key("unknown field `x`, expected `a` or `b`"),
            Some(("x", vec!["a", "b"]))
        );
        assert_eq!(
            unknown_key("unknown field `x`, there are no fields"),
            Some(("x", vec![]))
        );
        assert_eq!(unknown_key("invalid type: string \"2\""), None);
    }

    #[test]
    fn the_value_of_a_secret_is_left_out_of_a_type_error() {
        assert_eq!(
            without_value("invalid type: integer `7`, expected a string"),
            "invalid type: integer, expected a string"
        );
        assert_eq!(
            without_value("invalid type: floating point `1.5`, expected a string"),
            "invalid type: floating point, expected a string"
        );
        assert_eq!(
            without_value("invalid type: sequence, expected a string"),
            "invalid type: sequence, expected a string"
        );
        assert_eq!(
            without_value("something `hunter2`"),
            "has the wrong type (the value is not shown)"
        );
    }

    #[test]
    fn a_close_known_key_is_suggested_and_a_far_one_is_not() {
        let known = ["concurrency", "max_queue_size", "port", "host"];
        assert_eq!(closest("concurency", &known), Some("concurrency"));
        assert_eq!(closest("max_queue_sise", &known), Some("max_queue_size"));
        assert_eq!(closest("prot", &known), Some("port"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(edits("abc", "abc"), 0);
        assert_eq!(edits("ab", "ba"), 1);
        assert_eq!(edits("", "abc"), 3);
    }
}

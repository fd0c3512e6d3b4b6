//! A strict parser of the Prometheus text exposition (format 0.0.4) that
//! `/metrics` serves: it asserts the grammar while it reads, so a malformed
//! line fails the test that fetched it. Fetching is `Http::metrics`.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample of the exposition: `name{labels}`.
pub type Series = String;

/// A strictly checked Prometheus text exposition (format 0.0.4).
pub struct Metrics {
    /// Every sample by series.
    pub samples: BTreeMap<Series, f64>,
}

impl Metrics {
    /// Parses `text`, asserting the grammar: every sample line is
    /// `name{label="value",...} value`, the value a float, and every metric
    /// family has exactly one HELP and one TYPE line before its samples.
    pub fn parse(text: &str) -> Self {
        let mut help: HashSet<String> = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), Some(_)) => {
                        assert!(valid_metric_name(name), "{line}");
                        assert!(help.insert(name.to_owned()), "second HELP: {line}");
                    }
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(valid_metric_name(name), "{line}");
                        assert!(
                            matches!(
                                kind,
                                "counter" | "gauge" | "histogram" | "summary" | "untyped"
                            ),
                            "{line}"
                        );
                        let earlier = types.insert(name.to_owned(), kind.to_owned());
                        assert!(earlier.is_none(), "second TYPE: {line}");
                    }
                    _ => {}
                }
                continue;
            }
            let (series, value) = parse_sample(line);
            let name = series.split('{').next().unwrap();
            let family = family_of(name, &types)
                .unwrap_or_else(|| panic!("sample before its TYPE line: {line}"));
            assert!(help.contains(&family), "no HELP for {family}");
            if types[&family] == "counter" {
                assert!(value >= 0.0, "negative counter: {line}");
            }
            let earlier = samples.insert(series.clone(), value);
            assert!(earlier.is_none(), "series repeated: {series}");
        }
        for family in &help {
            assert!(types.contains_key(family), "HELP without TYPE: {family}");
        }
        Metrics { samples }
    }

    /// The value of `series` (`name` or `name{labels}` exactly as rendered).
    #[track_caller]
    pub fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing in {:#?}", self.samples))
    }

    /// Asserts that histogram `name`'s buckets are cumulative and end with
    /// `le="+Inf"` equal to `_count`.
    pub fn check_histogram(&self, name: &str) {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(series, value)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                Some((bound, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name} has no buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets are not cumulative: {buckets:?}"
        );
        let (last_bound, last_count) = *buckets.last().unwrap();
        assert_eq!(last_bound, f64::INFINITY, "{name} lacks le=\"+Inf\"");
        assert_eq!(last_count, self.value(&format!("{name}_count")));
        assert!(self.value(&format!("{name}_sum")) >= 0.0);
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The metric family a sample name belongs to, given the TYPE lines so far.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        {
            return Some(base.to_owned());
        }
    }
    None
}

/// Splits a sample line into its series (name and labels, normalised as
/// written) and its value, asserting the grammar.
fn parse_sample(line: &str) -> (Series, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "bad metric name: {line}");
    let rest = &line[name_end..];
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let close = label_block_end(inner).unwrap_or_else(|| panic!("unclosed {{: {line}"));
            (&inner[..close], &inner[close + 1..])
        }
        None => ("", rest),
    };
    if !labels.is_empty() {
        check_labels(labels, line);
    }
    let fields: Vec<&str> = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"))
        .split(' ')
        .collect();
    assert!(
        matches!(fields.len(), 1 | 2),
        "value and optional timestamp expected: {line}"
    );
    let value = match fields[0] {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    if let Some(timestamp) = fields.get(1) {
        assert!(timestamp.parse::<i64>().is_ok(), "bad timestamp: {line}");
    }
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    (series, value)
}

/// Index of the `}` closing a label block (quotes and escapes respected).
fn label_block_end(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Asserts `a="x",b="y"` (an optional trailing comma allowed).
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label: {line}"));
        assert!(valid_label_name(name), "bad label name {name:?}: {line}");
        let mut escaped = false;
        let close = after
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unterminated label value: {line}"));
        rest = &after[close + 1..];
        if !rest.is_empty() {
            rest = rest
                .strip_prefix(',')
                .unwrap_or_else(|| panic!("bad label separator: {line}"));
        }
    }
}

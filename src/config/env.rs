//! `${VAR}` expansion: replaces environment references in every string value
//! of the parsed TOML tree before it is deserialized, so any key may take its
//! value from the environment. `$${` stands for a literal `${`. A value with
//! a reference that cannot be expanded is reported and removed, so the rest
//! of the file is still checked.
//!
//! It owns only the substitution syntax; which keys exist and what they mean
//! is for `raw` and `check`.

use super::{ConfigError, invalid};

/// Replaces `${VAR}` in every string below `value`; `$${` stands for a
/// literal `${`. Each table entry (a string or an array) with a reference
/// that fails is reported into `errors` and removed.
pub(super) fn expand_env(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(text) => *text = expand_str(text, key, env, errors),
        toml::Value::Table(table) => {
            let mut failed = Vec::new();
            for (name, child) in table.iter_mut() {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                let before = errors.len();
                expand_env(child, &child_key, env, errors);
                if errors.len() > before && !child.is_table() {
                    failed.push(name.clone());
                }
            }
            // A value that could not be expanded is left out, as if absent,
            // so the other keys are still checked (the error names it).
            for name in failed {
                table.remove(&name);
            }
        }
        toml::Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                expand_env(child, &format!("{key}[{i}]"), env, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(
    text: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let from_dollar = &rest[pos..];
        if let Some(tail) = from_dollar.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = from_dollar.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                errors.push(invalid(key, "unterminated ${ (write $${ for a literal ${)"));
                return out;
            };
            let var = &tail[..end];
            let valid_name = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                errors.push(invalid(
                    key,
                    format!("${{{var}}} is not a valid variable name"),
                ));
            } else if let Some(value) = env(var) {
                out.push_str(&value);
            } else {
                errors.push(ConfigError::MissingEnv {
                    key: key.to_owned(),
                    var: var.to_owned(),
                });
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &from_dollar[1..];
        }
    }
    out.push_str(rest);
    out
}

//! Limits every JSON value must meet, at the door and inside a run.
//!
//! The store keeps each value as JSON text and must read back whatever it
//! wrote; clients parse the same text with their own recursion limits
//! (serde_json and most others stop at 128 levels). A value nested deeper
//! than [`MAX_VALUE_DEPTH`] is refused where it enters (run input, signal
//! payload, task result, flow definition) and fails the step that produces
//! it inside a run. The limit is fixed, not a setting: apply checks values
//! produced inside a run on every replica, and every replica must decide
//! alike whatever its configuration.

use serde_json::Value;

/// How many arrays and objects may nest in a JSON value (see
/// [`value_depth`]). Fixed (see the module docs).
pub const MAX_VALUE_DEPTH: usize = 64;

/// How deeply a flow definition document may nest. A mapping inside a
/// step sits three levels down (`$.steps[i].output`), so a mapping can
/// build values up to about this deep from its expressions.
pub const MAX_DEFINITION_DEPTH: usize = MAX_VALUE_DEPTH;

/// A value over [`MAX_VALUE_DEPTH`]: where it is and how deep it got.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} nests deeper than the limit of {limit} levels (at {path}); the limit is fixed")]
pub struct TooDeep {
    /// What the value is (`run input`, `step "a" output`).
    pub what: String,
    /// JSONPath of the first value found past the limit.
    pub path: String,
    pub limit: usize,
}

/// How many arrays and objects nest in `value` (a scalar is 0, `[]` and
/// `[1]` are 1, `[[]]` is 2 — what JSON parsers count against their
/// recursion limits), counted without recursion so a hostile value cannot
/// exhaust the stack here, and stopping once past `stop_at`.
pub fn value_depth(value: &Value, stop_at: usize) -> usize {
    let mut stack: Vec<(&Value, usize)> = Vec::new();
    if is_container(value) {
        stack.push((value, 1));
    }
    let mut deepest = 0;
    while let Some((current, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if deepest > stop_at {
            break;
        }
        let children: Box<dyn Iterator<Item = &Value>> = match current {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => Box::new(std::iter::empty()),
        };
        stack.extend(
            children
                .filter(|child| is_container(child))
                .map(|child| (child, depth + 1)),
        );
    }
    deepest
}

/// The JSONPath of a point past `limit` (only called once one is known to exist).
fn path_past(value: &Value, limit: usize) -> String {
    let mut stack: Vec<(&Value, usize, Vec<PathPart<'_>>)> = vec![(value, 1, Vec::new())];
    while let Some((current, depth, path)) = stack.pop() {
        if !is_container(current) {
            continue;
        }
        if depth > limit {
            return render_path(&path);
        }
        match current {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let mut next = path.clone();
                    next.push(PathPart::Index(index));
                    stack.push((item, depth + 1, next));
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let mut next = path.clone();
                    next.push(PathPart::Key(key));
                    stack.push((item, depth + 1, next));
                }
            }
            _ => {}
        }
    }
    String::from("$")
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Array(_) | Value::Object(_))
}

enum PathPart<'a> {
    Index(usize),
    Key(&'a str),
}

impl Clone for PathPart<'_> {
    fn clone(&self) -> Self {
        match self {
            PathPart::Index(index) => PathPart::Index(*index),
            PathPart::Key(key) => PathPart::Key(key),
        }
    }
}

fn render_path(parts: &[PathPart<'_>]) -> String {
    let mut path = String::from("$");
    for part in parts {
        match part {
            PathPart::Index(index) => path.push_str(&format!("[{index}]")),
            PathPart::Key(key)
                if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && key.len() <= 64 =>
            {
                path.push('.');
                path.push_str(key);
            }
            PathPart::Key(key) => {
                let shown: String = key.chars().take(32).collect();
                path.push_str(&format!(
                    "[{shown:?}{}]",
                    if shown.len() < key.len() { "…" } else { "" }
                ));
            }
        }
        if path.len() > 512 {
            path.push('…');
            break;
        }
    }
    path
}

/// Checks `value` against [`MAX_VALUE_DEPTH`]; `what` names it in the error.
pub fn check_value_depth(what: impl FnOnce() -> String, value: &Value) -> Result<(), TooDeep> {
    check_depth(what, value, MAX_VALUE_DEPTH)
}

/// Checks `value` against a depth `limit`.
pub fn check_depth(
    what: impl FnOnce() -> String,
    value: &Value,
    limit: usize,
) -> Result<(), TooDeep> {
    if value_depth(value, limit) <= limit {
        return Ok(());
    }
    Err(TooDeep {
        what: what(),
        path: path_past(value, limit),
        limit,
    })
}

/// The nesting depth of JSON text (as [`value_depth`] counts it), from its brackets alone: cheap, never
/// recurses, and works on text no parser will take. Brackets inside
/// strings are skipped; malformed text gives a best guess that a parser
/// then refuses anyway.
pub fn text_depth(text: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses JSON text that the store wrote, at any depth: what encoding
/// accepted, decoding must read back. The common case takes serde_json's
/// ordinary path; only text past its recursion limit (records written
/// before the depth limit existed) takes the slower one, which grows the
/// stack on the heap instead of overflowing it.
pub fn from_stored_text<T: serde::de::DeserializeOwned>(
    text: &[u8],
) -> Result<T, serde_json::Error> {
    match serde_json::from_slice(text) {
        Err(error) if is_recursion_limit(&error) => {
            let mut deserializer = serde_json::Deserializer::from_slice(text);
            deserializer.disable_recursion_limit();
            let value = T::deserialize(serde_stacker::Deserializer::new(&mut deserializer))?;
            deserializer.end()?;
            Ok(value)
        }
        other => other,
    }
}

fn is_recursion_limit(error: &serde_json::Error) -> bool {
    error.to_string().starts_with("recursion limit exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested_arrays(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn depth_counts_levels() {
        assert_eq!(value_depth(&json!(1), 100), 0);
        assert_eq!(value_depth(&json!([]), 100), 1);
        assert_eq!(value_depth(&json!([1]), 100), 1);
        assert_eq!(value_depth(&json!({"a": [1, {"b": 2}]}), 100), 3);
        assert_eq!(value_depth(&nested_arrays(64), 100), 64);
        assert_eq!(value_depth(&nested_arrays(1000), 70), 71);
    }

    #[test]
    fn check_names_the_value_path_and_limit() {
        assert!(check_value_depth(|| "run input".into(), &nested_arrays(64)).is_ok());
        let mut deep = nested_arrays(70);
        deep = json!({"doc": {"pages": deep}});
        let error = check_value_depth(|| "run input".into(), &deep).unwrap_err();
        assert_eq!(error.limit, 64);
        assert!(
            error.path.starts_with("$.doc.pages[0][0]"),
            "{}",
            error.path
        );
        assert_eq!(error.path.matches("[0]").count(), 62, "{}", error.path);
        let message = error.to_string();
        assert!(
            message.contains("run input") && message.contains("64"),
            "{message}"
        );
    }

    #[test]
    fn text_depth_skips_strings_and_agrees_with_values() {
        assert_eq!(text_depth(br#"{"a": "[[[[", "b": [1]}"#), 2);
        assert_eq!(text_depth(br#""\"[""#), 0);
        assert_eq!(text_depth(b"  7 "), 0);
        for depth in [0, 1, 2, 63, 64, 65, 300] {
            let value = nested_arrays(depth);
            let text = serde_json::to_vec(&value).unwrap();
            assert_eq!(text_depth(&text), value_depth(&value, usize::MAX - 1));
        }
    }

    #[test]
    fn stored_text_reads_back_at_any_depth() {
        for depth in [10, 127, 128, 129, 500, 1000] {
            let value = nested_arrays(depth);
            let text = serde_json::to_vec(&value).unwrap();
            let read: Value = from_stored_text(&text).unwrap();
            assert_eq!(value_depth(&read, usize::MAX - 1), depth);
        }
        assert!(from_stored_text::<Value>(b"[[1]] x").is_err());
        assert!(from_stored_text::<Value>(&b"[".repeat(300)).is_err());
    }
}

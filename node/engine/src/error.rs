//! Error types at the crate boundary.

use std::fmt::Write as _;

use serde_json::Value;

/// One problem in a flow definition (or in a run input), located by a JSONPath
/// such as `$.steps[2].cases[0].next`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// JSONPath of the offending value; `$` is the document root.
    pub path: String,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl ValidationError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why evaluating an expression or a mapping failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The variables were not a JSON object.
    #[error("expression variables must be a JSON object, found {found}")]
    VariablesNotAnObject {
        /// JSON kind that was passed instead.
        found: &'static str,
    },
    /// A variable could not be turned into a CEL value.
    #[error("variable {name:?} cannot be converted to a CEL value: {reason}")]
    Conversion {
        /// The variable's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// CEL reported an execution error (no such key, type mismatch, ...).
    #[error("expression `{expression}` failed: {reason}")]
    Execution {
        /// Source text of the expression (truncated).
        expression: String,
        /// CEL's message.
        reason: String,
    },
    /// The result has no JSON form (bytes, a function, NaN, ...).
    #[error("expression `{expression}` yielded a value with no JSON form: {reason}")]
    NotJson {
        /// Source text of the expression (truncated).
        expression: String,
        /// Why.
        reason: String,
    },
    /// The serialized result is larger than the limit.
    #[error("expression `{expression}` yielded {size} bytes, more than the limit of {limit}")]
    ResultTooLarge {
        /// Source text of the expression (truncated).
        expression: String,
        /// Serialized size of the result.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A mapping leaf failed; `path` locates it inside the mapping.
    #[error("mapping value at {path}: {source}")]
    InMapping {
        /// Path of the leaf inside the mapping, `$` being the mapping itself.
        path: String,
        /// The leaf's error.
        source: Box<EvalError>,
    },
    /// A mapping leaf does not compile (only possible for unvalidated mappings).
    #[error("mapping value at {path} does not compile: {reason}")]
    Compile {
        /// Path of the leaf inside the mapping.
        path: String,
        /// The compile error.
        reason: String,
    },
}

/// Appends `.key`, or `['key']` when the key is not a short plain identifier;
/// a key longer than `names::MAX_QUOTED_BYTES` is cut and its length noted.
pub(crate) fn push_key(path: &str, key: &str) -> String {
    let is_identifier = key
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if is_identifier && key.len() <= crate::names::MAX_QUOTED_BYTES {
        return format!("{path}.{key}");
    }
    // A long key is cut, as error messages quote names (`quote_bounded`).
    let mut cut = key.len().min(crate::names::MAX_QUOTED_BYTES);
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = format!("{path}['");
    for c in key[..cut].chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    if cut < key.len() {
        let _ = write!(out, "… ({} bytes)", key.len());
    }
    out.push_str("']");
    out
}

/// Appends `[index]`.
pub(crate) fn push_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A short, single-line rendering of a JSON value for messages.
pub(crate) fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    shorten(&text, 80)
}

/// Cuts `text` to at most `max_chars` characters, marking the cut.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max_chars).collect();
    let _ = write!(out, "…");
    out
}

/// The JSON kind of a value, for messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

//! Structural checks on the raw JSON document: object shapes, field names,
//! required fields and JSON types. Every problem is collected, so an author
//! sees all of them at once; the typed model is built only from parts that
//! passed.

use serde_json::{Map, Value};

use crate::error::{excerpt, kind_of, push_index, push_key, ValidationError};
use crate::model::STEP_TYPES;
use crate::names::quote_bounded;
use crate::schema;

/// The JSON shape a field must have.
#[derive(Clone, Copy)]
enum Shape {
    Str,
    U32,
    U64,
    F64,
    Bool,
    Backoff,
    Encoding,
    Mapping,
    Action,
    Retry,
    Timeouts,
    Cases,
    Branches,
    MapTask,
    Labels,
    Schema,
    Steps,
}

/// One allowed field of an object.
struct Field {
    name: &'static str,
    required: bool,
    shape: Shape,
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        required: true,
        shape,
    }
}

const fn opt(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        required: false,
        shape,
    }
}

const FLOW_FIELDS: &[Field] = &[
    req("name", Shape::Str),
    opt("description", Shape::Str),
    opt("input", Shape::Schema),
    opt("start", Shape::Str),
    req("steps", Shape::Steps),
];

const RETRY_FIELDS: &[Field] = &[
    opt("max_attempts", Shape::U32),
    opt("backoff", Shape::Backoff),
    opt("initial_backoff_ms", Shape::U64),
    opt("max_backoff_ms", Shape::U64),
    opt("multiplier", Shape::F64),
    opt("jitter", Shape::Bool),
];

const TIMEOUT_FIELDS: &[Field] = &[
    opt("schedule_to_start_ms", Shape::U64),
    opt("start_to_close_ms", Shape::U64),
    opt("heartbeat_ms", Shape::U64),
];

const CASE_FIELDS: &[Field] = &[req("when", Shape::Str), req("next", Shape::Str)];

const BRANCH_FIELDS: &[Field] = &[req("name", Shape::Str), req("start", Shape::Str)];

const MAP_TASK_FIELDS: &[Field] = &[
    req("block", Shape::Str),
    opt("worker_labels", Shape::Labels),
    req("input", Shape::Mapping),
    opt("retry", Shape::Retry),
    opt("timeouts", Shape::Timeouts),
];

/// Fields of each step kind besides `id`, `type` and `description`.
fn step_fields(step_type: &str) -> &'static [Field] {
    const TASK: &[Field] = &[
        req("block", Shape::Str),
        opt("worker_labels", Shape::Labels),
        req("input", Shape::Mapping),
        opt("retry", Shape::Retry),
        opt("timeouts", Shape::Timeouts),
        opt("on_error", Shape::Action),
        opt("next", Shape::Str),
    ];
    const INFERENCE: &[Field] = &[
        req("model", Shape::Str),
        opt("version", Shape::U64),
        req("input", Shape::Mapping),
        opt("outputs", Shape::Encoding),
        opt("retry", Shape::Retry),
        opt("timeouts", Shape::Timeouts),
        opt("on_error", Shape::Action),
        opt("next", Shape::Str),
    ];
    const DECISION: &[Field] = &[req("cases", Shape::Cases), req("default", Shape::Str)];
    const FORK: &[Field] = &[req("branches", Shape::Branches), req("join", Shape::Str)];
    const NEXT_ONLY: &[Field] = &[opt("next", Shape::Str)];
    const MAP: &[Field] = &[
        req("items", Shape::Str),
        req("task", Shape::MapTask),
        opt("max_parallelism", Shape::U32),
        opt("min_success_ratio", Shape::F64),
        opt("next", Shape::Str),
    ];
    const TRANSFORM: &[Field] = &[req("output", Shape::Mapping), opt("next", Shape::Str)];
    const SUBFLOW: &[Field] = &[
        req("flow", Shape::Str),
        req("version", Shape::U32),
        req("input", Shape::Mapping),
        opt("next", Shape::Str),
    ];
    const WAIT: &[Field] = &[
        opt("duration_ms", Shape::U64),
        opt("until", Shape::Str),
        opt("next", Shape::Str),
    ];
    const SIGNAL: &[Field] = &[
        req("signal", Shape::Str),
        opt("timeout_ms", Shape::U64),
        opt("on_timeout", Shape::Action),
        opt("next", Shape::Str),
    ];
    const TERMINATE: &[Field] = &[opt("output", Shape::Mapping)];
    const FAIL: &[Field] = &[req("reason", Shape::Str)];
    match step_type {
        "task" => TASK,
        "inference" => INFERENCE,
        "decision" => DECISION,
        "fork" => FORK,
        "join" => NEXT_ONLY,
        "map" => MAP,
        "transform" => TRANSFORM,
        "subflow" => SUBFLOW,
        "wait" => WAIT,
        "signal" => SIGNAL,
        "terminate" => TERMINATE,
        "fail" => FAIL,
        _ => &[],
    }
}

/// Checks the whole document; returns every structural problem found.
pub(crate) fn check_document(document: &Value) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    check_object(document, "$", FLOW_FIELDS, &mut errors);
    errors
}

/// Checks one entry of `steps`; returns its problems (empty when it is sound).
pub(crate) fn check_step(step: &Value, path: &str) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let Some(object) = expect_object(step, path, &mut errors) else {
        return errors;
    };
    if let Some(id) = object.get("id") {
        check_shape(id, &push_key(path, "id"), Shape::Str, &mut errors);
    } else {
        errors.push(ValidationError::new(path, "missing required field \"id\""));
    }
    if let Some(description) = object.get("description") {
        check_shape(
            description,
            &push_key(path, "description"),
            Shape::Str,
            &mut errors,
        );
    }
    let type_path = push_key(path, "type");
    let step_type = match object.get("type") {
        None => {
            errors.push(ValidationError::new(
                path,
                "missing required field \"type\"",
            ));
            return errors;
        }
        Some(Value::String(step_type)) if STEP_TYPES.contains(&step_type.as_str()) => step_type,
        Some(other) => {
            errors.push(ValidationError::new(
                type_path,
                format!(
                    "unknown step type {}; expected one of: {}",
                    excerpt(other),
                    STEP_TYPES.join(", ")
                ),
            ));
            return errors;
        }
    };
    let fields = step_fields(step_type);
    for (key, value) in object {
        if matches!(key.as_str(), "id" | "type" | "description") {
            continue;
        }
        let field_path = push_key(path, key);
        match fields.iter().find(|field| field.name == key) {
            Some(field) => check_shape(value, &field_path, field.shape, &mut errors),
            None => errors.push(unknown_field(
                &field_path,
                key,
                fields,
                &["id", "type", "description"],
                Some(step_type),
            )),
        }
    }
    push_missing(object, path, fields, &mut errors);
    errors
}

fn unknown_field(
    path: &str,
    key: &str,
    fields: &[Field],
    common: &[&str],
    step_type: Option<&str>,
) -> ValidationError {
    let mut allowed: Vec<&str> = common.to_vec();
    allowed.extend(fields.iter().map(|field| field.name));
    let owner = match step_type {
        Some(step_type) => format!(" for a {step_type} step"),
        None => String::new(),
    };
    ValidationError::new(
        path,
        format!(
            "unknown field {}{owner}; expected one of: {}",
            quote_bounded(key),
            allowed.join(", ")
        ),
    )
}

fn push_missing(
    object: &Map<String, Value>,
    path: &str,
    fields: &[Field],
    errors: &mut Vec<ValidationError>,
) {
    for field in fields {
        if field.required && !object.contains_key(field.name) {
            errors.push(ValidationError::new(
                path,
                format!("missing required field \"{}\"", field.name),
            ));
        }
    }
}

fn expect_object<'a>(
    value: &'a Value,
    path: &str,
    errors: &mut Vec<ValidationError>,
) -> Option<&'a Map<String, Value>> {
    match value {
        Value::Object(object) => Some(object),
        other => {
            errors.push(ValidationError::new(
                path,
                format!(
                    "expected an object, found {} {}",
                    kind_of(other),
                    excerpt(other)
                ),
            ));
            None
        }
    }
}

fn check_object(value: &Value, path: &str, fields: &[Field], errors: &mut Vec<ValidationError>) {
    let Some(object) = expect_object(value, path, errors) else {
        return;
    };
    for (key, field_value) in object {
        let field_path = push_key(path, key);
        match fields.iter().find(|field| field.name == key) {
            Some(field) => check_shape(field_value, &field_path, field.shape, errors),
            None => errors.push(unknown_field(&field_path, key, fields, &[], None)),
        }
    }
    push_missing(object, path, fields, errors);
}

fn check_array_of(value: &Value, path: &str, fields: &[Field], errors: &mut Vec<ValidationError>) {
    let Value::Array(items) = value else {
        errors.push(type_error(path, "an array", value));
        return;
    };
    for (index, item) in items.iter().enumerate() {
        check_object(item, &push_index(path, index), fields, errors);
    }
}

fn type_error(path: &str, expected: &str, found: &Value) -> ValidationError {
    ValidationError::new(
        path,
        format!(
            "expected {expected}, found {} {}",
            kind_of(found),
            excerpt(found)
        ),
    )
}

fn check_shape(value: &Value, path: &str, shape: Shape, errors: &mut Vec<ValidationError>) {
    match shape {
        Shape::Str => {
            if !value.is_string() {
                errors.push(type_error(path, "a string", value));
            }
        }
        Shape::U32 => {
            let fits_u32 = value
                .as_u64()
                .is_some_and(|number| u32::try_from(number).is_ok());
            if !fits_u32 {
                errors.push(type_error(path, "a non-negative integer below 2^32", value));
            }
        }
        Shape::U64 => {
            if value.as_u64().is_none() {
                errors.push(type_error(path, "a non-negative integer", value));
            }
        }
        Shape::F64 => {
            if !value.is_number() {
                errors.push(type_error(path, "a number", value));
            }
        }
        Shape::Bool => {
            if !value.is_boolean() {
                errors.push(type_error(path, "a boolean", value));
            }
        }
        Shape::Backoff => {
            if !matches!(value.as_str(), Some("fixed" | "exponential")) {
                errors.push(type_error(path, "\"fixed\" or \"exponential\"", value));
            }
        }
        Shape::Encoding => {
            if !matches!(value.as_str(), Some("base64" | "list")) {
                errors.push(type_error(path, "\"base64\" or \"list\"", value));
            }
        }
        Shape::Mapping => check_mapping(value, path, errors),
        Shape::Action => check_action(value, path, errors),
        Shape::Retry => check_object(value, path, RETRY_FIELDS, errors),
        Shape::Timeouts => check_object(value, path, TIMEOUT_FIELDS, errors),
        Shape::Cases => check_array_of(value, path, CASE_FIELDS, errors),
        Shape::Branches => check_array_of(value, path, BRANCH_FIELDS, errors),
        Shape::MapTask => check_object(value, path, MAP_TASK_FIELDS, errors),
        Shape::Labels => match value {
            Value::Object(object) => {
                for (key, label) in object {
                    check_shape(label, &push_key(path, key), Shape::Str, errors);
                }
            }
            other => errors.push(type_error(path, "an object of label values", other)),
        },
        Shape::Schema => schema::check_schema_shape(value, path, errors),
        Shape::Steps => {
            // Each step is checked on its own by the caller; only the
            // container is checked here.
            if !value.is_array() {
                errors.push(type_error(path, "an array of steps", value));
            }
        }
    }
}

/// A mapping is an expression string or an object whose leaves are strings.
fn check_mapping(value: &Value, path: &str, errors: &mut Vec<ValidationError>) {
    match value {
        Value::String(_) => {}
        Value::Object(object) => {
            for (key, leaf) in object {
                check_mapping(leaf, &push_key(path, key), errors);
            }
        }
        other => errors.push(ValidationError::new(
            path,
            format!(
                "expected an expression string or an object of them, found {} {}; write literals as CEL, e.g. \"'text'\" or \"3\"",
                kind_of(other),
                excerpt(other)
            ),
        )),
    }
}

/// `{"goto": "step"}` or `{"fail": "reason"}`.
fn check_action(value: &Value, path: &str, errors: &mut Vec<ValidationError>) {
    let Some(object) = expect_object(value, path, errors) else {
        return;
    };
    if object.len() != 1 {
        errors.push(ValidationError::new(
            path,
            format!(
                "expected exactly one of {{\"goto\": step}} or {{\"fail\": reason}}, found {}",
                excerpt(value)
            ),
        ));
        return;
    }
    for (key, target) in object {
        let key_path = push_key(path, key);
        match key.as_str() {
            "goto" | "fail" => check_shape(target, &key_path, Shape::Str, errors),
            _ => errors.push(ValidationError::new(
                key_path,
                format!(
                    "unknown field {}; expected one of: goto, fail",
                    quote_bounded(key)
                ),
            )),
        }
    }
}

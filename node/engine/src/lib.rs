//! floe's flow-definition layer: the JSON flow format, its validation, its
//! canonical form and content hash, and CEL expressions over run data.
//!
//! This crate is pure: no I/O, no clock, no randomness. The Raft state
//! machine calls it inside apply (which must be deterministic) and the API
//! calls it to validate a definition before proposing it. See
//! `docs/flows.md` for the format.

mod canonical;
mod cost;
mod cost_functions;
mod cost_rewrite;
mod error;
pub mod expr;
mod expr_compat;
mod graph;
pub mod limits;
mod mapping;
mod model;
pub mod names;
pub mod run;
pub mod schema;
mod step_values;
mod structure;
mod validate;

#[cfg(test)]
mod expr_tests;
#[cfg(test)]
mod tests;

pub use canonical::{canonical_bytes, content_hash};
pub use error::{EvalError, ValidationError};
pub use mapping::{evaluate_mapping, CompiledMapping};
pub use model::{
    inference_block, Backoff, DecisionCase, DecisionStep, ErrorAction, FailStep, FlowDefinition,
    ForkBranch, ForkStep, InferenceStep, JoinStep, MapStep, MapTask, Mapping, RetryPolicy,
    SignalStep, Step, SubflowStep, TaskStep, TensorEncoding, TerminateStep, Timeouts,
    TransformStep, WaitStep, INFERENCE_BLOCK_PREFIX, STEP_TYPES,
};
pub use names::{
    is_block_name, is_flow_name, is_label_key, is_label_value, is_model_name, is_step_id,
    label_subsets, placement_key, MAX_LABELS,
};
pub use schema::{validate_input, InputSchema, SchemaType};

use serde_json::Value;

/// Largest accepted definition, in bytes.
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// Most steps in one definition.
pub const MAX_STEPS: usize = 1000;

/// Parses and validates a flow definition, reporting every problem found
/// (not just the first), each with the JSONPath of the offending value.
/// Malformed JSON gives one error with its line and column.
pub fn parse_flow(json: &[u8]) -> Result<FlowDefinition, Vec<ValidationError>> {
    if json.len() > MAX_DEFINITION_BYTES {
        return Err(vec![ValidationError::new(
            "$",
            format!(
                "definition is {} bytes, more than the limit of {MAX_DEFINITION_BYTES} (1 MiB)",
                json.len()
            ),
        )]);
    }
    let document: Value = serde_json::from_slice(json).map_err(|error| {
        vec![ValidationError::new(
            "$",
            format!(
                "malformed JSON at line {}, column {}: {error}",
                error.line(),
                error.column()
            ),
        )]
    })?;
    parse_document(&document)
}

/// [`parse_flow`] for a definition arriving at the door: also holds it to
/// [`limits::MAX_DEFINITION_DEPTH`]. Stored definitions are read with
/// `parse_flow` alone, so versions stored before the limit still run.
pub fn parse_new_flow(json: &[u8]) -> Result<FlowDefinition, Vec<ValidationError>> {
    let depth = limits::text_depth(json);
    if depth > limits::MAX_DEFINITION_DEPTH {
        return Err(vec![ValidationError::new(
            "$",
            format!(
                "definition nests {depth} levels deep, more than the limit of {} (fixed); \
                 a mapping builds its value from expressions at its leaves, so it needs no deep nesting of its own",
                limits::MAX_DEFINITION_DEPTH
            ),
        )]);
    }
    parse_flow(json)
}

/// Like [`parse_flow`], for a document already parsed as JSON.
pub fn parse_document(document: &Value) -> Result<FlowDefinition, Vec<ValidationError>> {
    let mut errors = structure::check_document(document);
    let Value::Object(root) = document else {
        return Err(errors);
    };
    let raw_steps: &[Value] = match root.get("steps") {
        Some(Value::Array(steps)) => steps,
        _ => &[],
    };
    if root.get("steps").is_some_and(Value::is_array) {
        if raw_steps.is_empty() {
            errors.push(ValidationError::new(
                "$.steps",
                "a flow needs at least one step",
            ));
        }
        if raw_steps.len() > MAX_STEPS {
            errors.push(ValidationError::new(
                "$.steps",
                format!(
                    "a flow has at most {MAX_STEPS} steps, found {}",
                    raw_steps.len()
                ),
            ));
        }
    }
    let mut raw_ids = Vec::new();
    let mut parsed_steps = Vec::new();
    let mut all_steps_parsed = true;
    for (index, raw_step) in raw_steps.iter().enumerate() {
        let path = format!("$.steps[{index}]");
        if let Some(id) = raw_step.get("id").and_then(Value::as_str) {
            raw_ids.push((index, id));
        }
        let step_errors = structure::check_step(raw_step, &path);
        if !step_errors.is_empty() {
            errors.extend(step_errors);
            all_steps_parsed = false;
            continue;
        }
        match serde_json::from_value::<Step>(raw_step.clone()) {
            Ok(step) => parsed_steps.push((index, step)),
            Err(error) => {
                errors.push(ValidationError::new(path, error.to_string()));
                all_steps_parsed = false;
            }
        }
    }
    let draft = validate::Draft {
        name: root.get("name").and_then(Value::as_str),
        start: root.get("start").and_then(Value::as_str),
        raw_ids,
        steps: parsed_steps,
        all_steps_parsed,
    };
    errors.extend(validate::check(&draft));
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_json::from_value::<FlowDefinition>(document.clone())
        .map_err(|error| vec![ValidationError::new("$", error.to_string())])
}

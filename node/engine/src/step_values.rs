//! Per-step value checks: names, counts and numeric ranges.

use std::collections::BTreeMap;

use crate::error::{push_index, push_key, ValidationError};
use crate::model::{ErrorAction, RetryPolicy, Step, Timeouts, INFERENCE_BLOCK_PREFIX};
use crate::names::{
    is_block_name, is_flow_name, is_label_key, is_label_value, is_model_name, is_step_id,
    quote_bounded, MAX_LABELS,
};

/// Most cases in one decision.
pub const MAX_DECISION_CASES: usize = 100;
/// Most attempts of a task.
pub const MAX_ATTEMPTS: u32 = 100;

/// Checks the values of one step at `path`.
pub(crate) fn check_step_values(step: &Step, path: &str, errors: &mut Vec<ValidationError>) {
    match step {
        Step::Task(task) => {
            check_block(&task.block, &push_key(path, "block"), errors);
            if task.block.starts_with(INFERENCE_BLOCK_PREFIX) {
                errors.push(ValidationError::new(
                    push_key(path, "block"),
                    format!("block names starting with \"{INFERENCE_BLOCK_PREFIX}\" are reserved for inference steps"),
                ));
            }
            check_worker_labels(
                &task.worker_labels,
                &push_key(path, "worker_labels"),
                errors,
            );
            check_attempt_policy(
                task.retry.as_ref(),
                task.timeouts.as_ref(),
                task.on_error.as_ref(),
                path,
                errors,
            );
        }
        Step::Inference(inference) => {
            if !is_model_name(&inference.model) {
                errors.push(ValidationError::new(
                    push_key(path, "model"),
                    format!(
                        "invalid model name {}: must match ^[a-z][a-z0-9_-]{{0,39}}$",
                        quote_bounded(&inference.model)
                    ),
                ));
            }
            if inference.version == Some(0) {
                errors.push(ValidationError::new(
                    push_key(path, "version"),
                    "versions start at 1",
                ));
            }
            check_attempt_policy(
                inference.retry.as_ref(),
                inference.timeouts.as_ref(),
                inference.on_error.as_ref(),
                path,
                errors,
            );
        }
        Step::Decision(decision) => {
            let count = decision.cases.len();
            if count == 0 || count > MAX_DECISION_CASES {
                errors.push(ValidationError::new(
                    push_key(path, "cases"),
                    format!("a decision needs 1 to {MAX_DECISION_CASES} cases, found {count}"),
                ));
            }
        }
        Step::Fork(fork) => {
            let branches_path = push_key(path, "branches");
            if fork.branches.len() < 2 {
                errors.push(ValidationError::new(
                    branches_path.clone(),
                    format!(
                        "a fork needs at least 2 branches, found {}",
                        fork.branches.len()
                    ),
                ));
            }
            for (index, branch) in fork.branches.iter().enumerate() {
                let name_path = push_key(&push_index(&branches_path, index), "name");
                if !is_step_id(&branch.name) {
                    errors.push(ValidationError::new(
                        name_path.clone(),
                        format!(
                            "invalid branch name \"{}\": must match ^[a-z][a-z0-9_]{{0,62}}$",
                            branch.name
                        ),
                    ));
                }
                let first_use = fork
                    .branches
                    .iter()
                    .position(|other| other.name == branch.name);
                if let Some(first_index) = first_use.filter(|&first_index| first_index < index) {
                    errors.push(ValidationError::new(
                        name_path,
                        format!(
                            "duplicate branch name \"{}\" (also used by branches[{first_index}])",
                            branch.name
                        ),
                    ));
                }
            }
        }
        Step::Map(map) => {
            if map.max_parallelism == 0 {
                errors.push(ValidationError::new(
                    push_key(path, "max_parallelism"),
                    "max_parallelism must be at least 1, found 0",
                ));
            }
            if !(0.0..=1.0).contains(&map.min_success_ratio) {
                errors.push(ValidationError::new(
                    push_key(path, "min_success_ratio"),
                    format!(
                        "min_success_ratio must be between 0.0 and 1.0, found {}",
                        map.min_success_ratio
                    ),
                ));
            }
            let task_path = push_key(path, "task");
            check_block(&map.task.block, &push_key(&task_path, "block"), errors);
            check_worker_labels(
                &map.task.worker_labels,
                &push_key(&task_path, "worker_labels"),
                errors,
            );
            if let Some(retry) = &map.task.retry {
                check_retry(retry, &push_key(&task_path, "retry"), errors);
            }
            if let Some(timeouts) = &map.task.timeouts {
                check_timeouts(timeouts, &push_key(&task_path, "timeouts"), errors);
            }
        }
        Step::Subflow(subflow) => {
            if !is_flow_name(&subflow.flow) {
                errors.push(ValidationError::new(
                    push_key(path, "flow"),
                    format!(
                        "invalid flow name \"{}\": must match ^[a-z][a-z0-9_-]{{0,62}}$",
                        subflow.flow
                    ),
                ));
            }
            if subflow.version == 0 {
                errors.push(ValidationError::new(
                    push_key(path, "version"),
                    "version must be at least 1 (versions start at 1), found 0",
                ));
            }
        }
        Step::Wait(wait) => match (wait.duration_ms, &wait.until) {
            (Some(_), Some(_)) => errors.push(ValidationError::new(
                path,
                "a wait step takes exactly one of duration_ms and until, found both",
            )),
            (None, None) => errors.push(ValidationError::new(
                path,
                "a wait step takes exactly one of duration_ms and until, found neither",
            )),
            (Some(0), None) => errors.push(ValidationError::new(
                push_key(path, "duration_ms"),
                "duration_ms must be greater than 0, found 0",
            )),
            _ => {}
        },
        Step::Signal(signal) => {
            if !is_block_name(&signal.signal) {
                errors.push(ValidationError::new(
                    push_key(path, "signal"),
                    format!(
                        "invalid signal name \"{}\": must match ^[a-z][a-z0-9_.-]{{0,62}}$",
                        signal.signal
                    ),
                ));
            }
            if signal.timeout_ms == Some(0) {
                errors.push(ValidationError::new(
                    push_key(path, "timeout_ms"),
                    "timeout_ms must be greater than 0, found 0",
                ));
            }
            if let Some(action) = &signal.on_timeout {
                if signal.timeout_ms.is_none() {
                    errors.push(ValidationError::new(
                        push_key(path, "on_timeout"),
                        "on_timeout needs timeout_ms",
                    ));
                }
                check_action(action, &push_key(path, "on_timeout"), errors);
            }
        }
        Step::Fail(fail) => {
            if fail.reason.trim().is_empty() {
                errors.push(ValidationError::new(
                    push_key(path, "reason"),
                    "reason must not be empty",
                ));
            }
        }
        Step::Join(_) | Step::Transform(_) | Step::Terminate(_) => {}
    }
}

fn check_attempt_policy(
    retry: Option<&RetryPolicy>,
    timeouts: Option<&Timeouts>,
    on_error: Option<&ErrorAction>,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    if let Some(retry) = retry {
        check_retry(retry, &push_key(path, "retry"), errors);
    }
    if let Some(timeouts) = timeouts {
        check_timeouts(timeouts, &push_key(path, "timeouts"), errors);
    }
    if let Some(action) = on_error {
        check_action(action, &push_key(path, "on_error"), errors);
    }
}

fn check_worker_labels(
    labels: &BTreeMap<String, String>,
    path: &str,
    errors: &mut Vec<ValidationError>,
) {
    if labels.len() > MAX_LABELS {
        errors.push(ValidationError::new(
            path,
            format!("at most {MAX_LABELS} worker labels, found {}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let label_path = push_key(path, key);
        if !is_label_key(key) {
            errors.push(ValidationError::new(
                label_path.clone(),
                format!(
                    "invalid label key {}: must match ^[a-z][a-z0-9_.-]{{0,62}}$",
                    quote_bounded(key)
                ),
            ));
        }
        if !is_label_value(value) {
            errors.push(ValidationError::new(
                label_path,
                format!(
                    "invalid label value {}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$",
                    quote_bounded(value)
                ),
            ));
        }
    }
}

fn check_block(block: &str, path: &str, errors: &mut Vec<ValidationError>) {
    if !is_block_name(block) {
        errors.push(ValidationError::new(
            path,
            format!(
                "invalid block name {}: must match ^[a-z][a-z0-9_.-]{{0,62}}$",
                quote_bounded(block)
            ),
        ));
    }
}

fn check_action(action: &ErrorAction, path: &str, errors: &mut Vec<ValidationError>) {
    if let ErrorAction::Fail(reason) = action {
        if reason.trim().is_empty() {
            errors.push(ValidationError::new(
                push_key(path, "fail"),
                "reason must not be empty",
            ));
        }
    }
}

fn check_retry(retry: &RetryPolicy, path: &str, errors: &mut Vec<ValidationError>) {
    if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS {
        errors.push(ValidationError::new(
            push_key(path, "max_attempts"),
            format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS}, found {}",
                retry.max_attempts
            ),
        ));
    }
    if retry.initial_backoff_ms == 0 {
        errors.push(ValidationError::new(
            push_key(path, "initial_backoff_ms"),
            "initial_backoff_ms must be greater than 0, found 0",
        ));
    }
    if retry.max_backoff_ms < retry.initial_backoff_ms {
        errors.push(ValidationError::new(
            push_key(path, "max_backoff_ms"),
            format!(
                "max_backoff_ms ({}) must be at least initial_backoff_ms ({})",
                retry.max_backoff_ms, retry.initial_backoff_ms
            ),
        ));
    }
    if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
        errors.push(ValidationError::new(
            push_key(path, "multiplier"),
            format!(
                "multiplier must be at least 1.0, found {}",
                retry.multiplier
            ),
        ));
    }
}

fn check_timeouts(timeouts: &Timeouts, path: &str, errors: &mut Vec<ValidationError>) {
    let fields = [
        ("schedule_to_start_ms", timeouts.schedule_to_start_ms),
        ("start_to_close_ms", timeouts.start_to_close_ms),
        ("heartbeat_ms", timeouts.heartbeat_ms),
    ];
    for (name, value) in fields {
        if value == Some(0) {
            errors.push(ValidationError::new(
                push_key(path, name),
                format!("{name} must be greater than 0, found 0"),
            ));
        }
    }
}

//! Semantic validation: names, references, graph shape and expressions.
//! Runs on whatever parsed; graph checks need every step to have parsed.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{push_index, push_key, shorten, ValidationError};
use crate::expr::Expression;
use crate::graph::{can_end_run, completed_before, flow_edges, ForkShape, StepGraph, StepSet};
use crate::mapping::leaves;
use crate::model::Step;
use crate::names::{is_flow_name, is_step_id, quote_bounded};
use crate::step_values::check_step_values;

/// What the semantic pass sees: the typed parts that parsed, and the ids of
/// every listed step (parsed or not), so one broken step does not turn every
/// reference to it into a second error.
pub(crate) struct Draft<'a> {
    pub name: Option<&'a str>,
    pub start: Option<&'a str>,
    /// (index in `steps`, id) of every raw step with a string id.
    pub raw_ids: Vec<(usize, &'a str)>,
    /// (index in `steps`, step) of every step that parsed.
    pub steps: Vec<(usize, Step)>,
    /// Whether every listed step parsed.
    pub all_steps_parsed: bool,
}

/// A `steps.<id>` reference found in an expression, checked once the graph
/// is known.
struct StepReference {
    from: usize,
    path: String,
    target: String,
}

fn step_path(index: usize) -> String {
    push_index("$.steps", index)
}

/// Every semantic problem of the draft.
pub(crate) fn check(draft: &Draft<'_>) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if let Some(name) = draft.name {
        if !is_flow_name(name) {
            errors.push(ValidationError::new(
                "$.name",
                format!(
                    "invalid flow name {}: must match ^[a-z][a-z0-9_-]{{0,62}}$",
                    quote_bounded(name)
                ),
            ));
        }
    }
    let mut all_ids: BTreeSet<&str> = BTreeSet::new();
    let mut first_index_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut has_duplicates = false;
    for &(index, id) in &draft.raw_ids {
        let id_path = push_key(&step_path(index), "id");
        if !is_step_id(id) {
            errors.push(ValidationError::new(
                id_path.clone(),
                format!(
                    "invalid step id {}: must match ^[a-z][a-z0-9_]{{0,62}}$",
                    quote_bounded(id)
                ),
            ));
        }
        if let Some(first_index) = first_index_of.get(id) {
            has_duplicates = true;
            errors.push(ValidationError::new(
                id_path,
                format!(
                    "duplicate step id {} (also used by $.steps[{first_index}])",
                    quote_bounded(id)
                ),
            ));
        } else {
            first_index_of.insert(id, index);
        }
        all_ids.insert(id);
    }
    if let Some(start) = draft.start {
        if !all_ids.contains(start) {
            errors.push(ValidationError::new(
                "$.start",
                format!("start refers to unknown step {}", quote_bounded(start)),
            ));
        }
    }

    let typed_kind: BTreeMap<&str, &Step> = draft
        .steps
        .iter()
        .map(|(_, step)| (step.id(), step))
        .collect();
    let mut step_references = Vec::new();
    for (position, (index, step)) in draft.steps.iter().enumerate() {
        let path = step_path(*index);
        check_step_values(step, &path, &mut errors);
        check_references(step, &path, &all_ids, &typed_kind, &mut errors);
        check_expressions(
            step,
            position,
            &path,
            &all_ids,
            &mut step_references,
            &mut errors,
        );
    }

    if draft.all_steps_parsed && !has_duplicates && !draft.steps.is_empty() {
        check_graph(draft, &step_references, &mut errors);
    }
    errors
}

fn check_references(
    step: &Step,
    path: &str,
    all_ids: &BTreeSet<&str>,
    typed_kind: &BTreeMap<&str, &Step>,
    errors: &mut Vec<ValidationError>,
) {
    let mut targets = flow_edges(step, path);
    if let Step::Fork(fork) = step {
        let join_path = push_key(path, "join");
        targets.push((join_path.clone(), fork.join.clone()));
        if let Some(target) = typed_kind.get(fork.join.as_str()) {
            if !matches!(target, Step::Join(_)) {
                errors.push(ValidationError::new(
                    join_path,
                    format!(
                        "fork {} names {} as its join, but that is a {} step, not a join step",
                        quote_bounded(&fork.id),
                        quote_bounded(&fork.join),
                        target.type_name()
                    ),
                ));
            }
        }
    }
    for (target_path, target) in targets {
        if !all_ids.contains(target.as_str()) {
            errors.push(ValidationError::new(
                target_path,
                format!(
                    "step {} refers to unknown step {}",
                    quote_bounded(step.id()),
                    quote_bounded(&target)
                ),
            ));
        }
    }
}

/// Every expression of a step: (JSONPath, source, whether `item`/`index` exist).
fn step_expressions(step: &Step, path: &str) -> Vec<(String, String, bool)> {
    let mut found = Vec::new();
    let add_mapping = |mapping,
                       field_path: String,
                       in_map_task: bool,
                       found: &mut Vec<(String, String, bool)>| {
        for (leaf_path, source) in leaves(mapping, &field_path) {
            found.push((leaf_path, source.to_string(), in_map_task));
        }
    };
    match step {
        Step::Task(task) => add_mapping(&task.input, push_key(path, "input"), false, &mut found),
        Step::Inference(inference) => {
            add_mapping(&inference.input, push_key(path, "input"), false, &mut found)
        }
        Step::Decision(decision) => {
            let cases_path = push_key(path, "cases");
            for (index, case) in decision.cases.iter().enumerate() {
                found.push((
                    push_key(&push_index(&cases_path, index), "when"),
                    case.when.clone(),
                    false,
                ));
            }
        }
        Step::Map(map) => {
            found.push((push_key(path, "items"), map.items.clone(), false));
            let task_input_path = push_key(&push_key(path, "task"), "input");
            add_mapping(&map.task.input, task_input_path, true, &mut found);
        }
        Step::Transform(transform) => add_mapping(
            &transform.output,
            push_key(path, "output"),
            false,
            &mut found,
        ),
        Step::Subflow(subflow) => {
            add_mapping(&subflow.input, push_key(path, "input"), false, &mut found)
        }
        Step::Wait(wait) => {
            if let Some(until) = &wait.until {
                found.push((push_key(path, "until"), until.clone(), false));
            }
        }
        Step::Terminate(terminate) => {
            if let Some(output) = &terminate.output {
                add_mapping(output, push_key(path, "output"), false, &mut found);
            }
        }
        Step::Fork(_) | Step::Join(_) | Step::Signal(_) | Step::Fail(_) => {}
    }
    found
}

fn check_expressions(
    step: &Step,
    position: usize,
    path: &str,
    all_ids: &BTreeSet<&str>,
    step_references: &mut Vec<StepReference>,
    errors: &mut Vec<ValidationError>,
) {
    for (expression_path, source, in_map_task) in step_expressions(step, path) {
        let expression = match Expression::compile(&source) {
            Ok(expression) => expression,
            Err(reason) => {
                errors.push(ValidationError::new(
                    expression_path,
                    format!("invalid expression \"{}\": {reason}", shorten(&source, 80)),
                ));
                continue;
            }
        };
        let allowed: &[&str] = if in_map_task {
            &["input", "steps", "item", "index"]
        } else {
            &["input", "steps"]
        };
        for variable in expression.free_variables() {
            if !allowed.contains(&variable.as_str()) {
                errors.push(ValidationError::new(
                    expression_path.clone(),
                    format!(
                        "unknown variable \"{variable}\" in expression \"{}\"; available: {}",
                        shorten(&source, 80),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if expression.has_dynamic_steps_access() {
            errors.push(ValidationError::new(
                expression_path.clone(),
                "`steps` must be followed by a step id, as in steps.classify.output",
            ));
        }
        for target in expression.referenced_steps() {
            if !all_ids.contains(target.as_str()) {
                errors.push(ValidationError::new(
                    expression_path.clone(),
                    format!(
                        "step {} refers to step {} which does not exist",
                        quote_bounded(step.id()),
                        quote_bounded(&target)
                    ),
                ));
                continue;
            }
            step_references.push(StepReference {
                from: position,
                path: expression_path.clone(),
                target,
            });
        }
    }
}

fn check_graph(
    draft: &Draft<'_>,
    step_references: &[StepReference],
    errors: &mut Vec<ValidationError>,
) {
    let steps: Vec<Step> = draft.steps.iter().map(|(_, step)| step.clone()).collect();
    let paths: Vec<String> = draft
        .steps
        .iter()
        .map(|(index, _)| step_path(*index))
        .collect();
    let index_of: BTreeMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(position, step)| (step.id().to_string(), position))
        .collect();
    let graph = StepGraph::build(&steps, &paths, &index_of);
    let cycle_errors = graph.cycles(&steps);
    if !cycle_errors.is_empty() {
        errors.extend(cycle_errors);
        return;
    }
    let start_id = draft.start.unwrap_or_else(|| steps[0].id());
    let Some(&start) = index_of.get(start_id) else {
        return; // reported as an unknown start
    };
    let reached = graph.reachable_from(start);
    for (position, step) in steps.iter().enumerate() {
        if !reached[position] {
            errors.push(ValidationError::new(
                paths[position].clone(),
                format!(
                    "step \"{}\" is not reachable from the start step \"{start_id}\"",
                    step.id()
                ),
            ));
        }
    }
    let forks = check_forks(&steps, &paths, &graph, &index_of, errors);
    let completed = completed_before(&graph, start, &reached, &forks);
    for reference in step_references {
        let Some(completed_set) = &completed[reference.from] else {
            continue; // unreachable, reported above
        };
        let from_id = steps[reference.from].id();
        let Some(&target) = index_of.get(&reference.target) else {
            continue;
        };
        if target == reference.from {
            errors.push(ValidationError::new(
                reference.path.clone(),
                format!("step \"{from_id}\" refers to its own output"),
            ));
        } else if !completed_set.contains(target) {
            errors.push(ValidationError::new(
                reference.path.clone(),
                format!(
                    "step \"{from_id}\" refers to step \"{}\" which does not precede it on every path",
                    reference.target
                ),
            ));
        }
    }
}

/// Checks fork/join structure; returns the shape of every well-formed fork.
fn check_forks(
    steps: &[Step],
    paths: &[String],
    graph: &StepGraph,
    index_of: &BTreeMap<String, usize>,
    errors: &mut Vec<ValidationError>,
) -> Vec<ForkShape> {
    let mut shapes = Vec::new();
    let mut fork_of_join: BTreeMap<usize, usize> = BTreeMap::new();
    for (fork_position, step) in steps.iter().enumerate() {
        let Step::Fork(fork) = step else { continue };
        let Some(&join) = index_of.get(&fork.join) else {
            continue;
        };
        if !matches!(steps[join], Step::Join(_)) {
            continue; // reported by the reference check
        }
        if let Some(&other_fork) = fork_of_join.get(&join) {
            errors.push(ValidationError::new(
                push_key(&paths[fork_position], "join"),
                format!(
                    "join \"{}\" already belongs to fork \"{}\"; every fork needs its own join",
                    fork.join,
                    steps[other_fork].id()
                ),
            ));
            continue;
        }
        fork_of_join.insert(join, fork_position);
        let mut well_formed = true;
        let mut branch_members: Vec<StepSet> = Vec::new();
        let mut member_branch: BTreeMap<usize, usize> = BTreeMap::new();
        let mut union = StepSet::empty(steps.len());
        for (branch_index, branch) in fork.branches.iter().enumerate() {
            let branch_path = push_key(
                &push_index(&push_key(&paths[fork_position], "branches"), branch_index),
                "start",
            );
            let Some(&branch_start) = index_of.get(&branch.start) else {
                well_formed = false;
                continue;
            };
            if branch_start == join {
                errors.push(ValidationError::new(
                    branch_path,
                    format!("branch \"{}\" of fork \"{}\" starts at its join; a branch needs at least one step", branch.name, fork.id),
                ));
                well_formed = false;
                continue;
            }
            let mut members = StepSet::empty(steps.len());
            let mut pending = vec![branch_start];
            members.insert(branch_start);
            while let Some(node) = pending.pop() {
                if can_end_run(&steps[node]) {
                    errors.push(ValidationError::new(
                        paths[node].clone(),
                        format!(
                            "step \"{}\" in branch \"{}\" of fork \"{}\" ends the run instead of reaching join \"{}\"",
                            steps[node].id(),
                            branch.name,
                            fork.id,
                            fork.join
                        ),
                    ));
                    well_formed = false;
                }
                if let Some(&other_branch) = member_branch.get(&node) {
                    if other_branch != branch_index {
                        errors.push(ValidationError::new(
                            paths[node].clone(),
                            format!(
                                "step \"{}\" is in both branch \"{}\" and branch \"{}\" of fork \"{}\"",
                                steps[node].id(),
                                fork.branches[other_branch].name,
                                branch.name,
                                fork.id
                            ),
                        ));
                        well_formed = false;
                    }
                } else {
                    member_branch.insert(node, branch_index);
                }
                for edge in &graph.successors[node] {
                    if edge.target != join && !members.contains(edge.target) {
                        members.insert(edge.target);
                        pending.push(edge.target);
                    }
                }
            }
            union.union(&members);
            branch_members.push(members);
        }
        // No step of a branch may be entered from outside that branch.
        for (position, _) in steps.iter().enumerate() {
            for edge in &graph.successors[position] {
                let Some(&branch_index) = member_branch.get(&edge.target) else {
                    continue;
                };
                let inside = branch_members
                    .get(branch_index)
                    .is_some_and(|members| members.contains(position));
                let is_branch_entry = position == fork_position
                    && fork
                        .branches
                        .get(branch_index)
                        .and_then(|branch| index_of.get(&branch.start))
                        == Some(&edge.target);
                if !inside && !is_branch_entry {
                    errors.push(ValidationError::new(
                        edge.path.clone(),
                        format!(
                            "step \"{}\" jumps into branch \"{}\" of fork \"{}\" at step \"{}\"",
                            steps[position].id(),
                            fork.branches
                                .get(branch_index)
                                .map(|branch| branch.name.as_str())
                                .unwrap_or(""),
                            fork.id,
                            steps[edge.target].id()
                        ),
                    ));
                    well_formed = false;
                }
            }
        }
        for &pred in &graph.predecessors[join] {
            if !union.contains(pred) {
                let edge_path = graph.successors[pred]
                    .iter()
                    .find(|edge| edge.target == join)
                    .map(|edge| edge.path.clone())
                    .unwrap_or_else(|| paths[pred].clone());
                errors.push(ValidationError::new(
                    edge_path,
                    format!(
                        "step \"{}\" reaches join \"{}\" from outside fork \"{}\"",
                        steps[pred].id(),
                        fork.join,
                        fork.id
                    ),
                ));
                well_formed = false;
            }
        }
        if well_formed {
            shapes.push(ForkShape {
                join,
                branch_members,
            });
        }
    }
    for (position, step) in steps.iter().enumerate() {
        if matches!(step, Step::Join(_)) && !fork_of_join.contains_key(&position) {
            errors.push(ValidationError::new(
                paths[position].clone(),
                format!("join step \"{}\" is not the join of any fork", step.id()),
            ));
        }
    }
    shapes
}

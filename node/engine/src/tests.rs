//! Tests of parsing, validation, hashing and evaluation through the public API.

use serde_json::{json, Value};

use crate::{content_hash, evaluate_mapping, parse_flow, EvalError, Mapping, ValidationError};

fn errors_of(document: Value) -> Vec<ValidationError> {
    let bytes = serde_json::to_vec(&document).expect("test document serializes");
    match parse_flow(&bytes) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// Asserts an error with exactly this path whose message contains `fragment`.
#[track_caller]
fn assert_error(errors: &[ValidationError], path: &str, fragment: &str) {
    let found = errors
        .iter()
        .any(|error| error.path == path && error.message.contains(fragment));
    assert!(
        found,
        "no error at {path} containing {fragment:?}; got: {errors:#?}"
    );
}

fn task(id: &str, next: Option<&str>) -> Value {
    let mut step = json!({"id": id, "type": "task", "block": "noop", "input": "input"});
    if let Some(next) = next {
        step["next"] = json!(next);
    }
    step
}

fn flow(steps: Vec<Value>) -> Value {
    json!({"name": "test-flow", "steps": steps})
}

fn two_tasks() -> Value {
    flow(vec![task("a", Some("b")), task("b", None)])
}

#[test]
fn valid_flow_parses() {
    let bytes = serde_json::to_vec(&two_tasks()).expect("serializes");
    let definition = parse_flow(&bytes).expect("valid");
    assert_eq!(definition.steps.len(), 2);
    assert_eq!(definition.start_step_id(), Some("a"));
}

#[test]
fn malformed_json_reports_line_and_column() {
    let errors = parse_flow(b"{\n  \"name\": \"x\",\n  \"steps\": [,]\n}").expect_err("malformed");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "$");
    assert!(
        errors[0].message.contains("line 3, column 13"),
        "{}",
        errors[0].message
    );
}

#[test]
fn oversized_definition_is_rejected() {
    let padding = "x".repeat(crate::MAX_DEFINITION_BYTES);
    let document = json!({"name": "big", "description": padding, "steps": [task("a", None)]});
    let errors = errors_of(document);
    assert_eq!(errors.len(), 1);
    assert_error(&errors, "$", "more than the limit of 1048576");
}

#[test]
fn too_many_steps() {
    let mut steps: Vec<Value> = (0..1000)
        .map(|index| task(&format!("s{index}"), Some(&format!("s{}", index + 1))))
        .collect();
    steps.push(task("s1000", None));
    let errors = errors_of(flow(steps));
    assert_error(&errors, "$.steps", "at most 1000 steps, found 1001");
}

#[test]
fn empty_steps() {
    assert_error(&errors_of(flow(vec![])), "$.steps", "at least one step");
}

#[test]
fn invalid_flow_name() {
    let mut document = two_tasks();
    document["name"] = json!("Bad Name");
    assert_error(
        &errors_of(document),
        "$.name",
        "invalid flow name \"Bad Name\"",
    );
}

#[test]
fn long_names_are_quoted_with_a_bounded_prefix() {
    let long = "x".repeat(10_240);
    let mut step = task(&long, Some(&format!("{long}y")));
    step["block"] = json!(long.to_uppercase());
    let mut document = flow(vec![step]);
    document["name"] = json!(long.to_uppercase());
    document["start"] = json!(format!("{long}w"));
    let errors = errors_of(document);
    assert!(errors.len() >= 4, "{errors:#?}");
    assert_error(&errors, "$.name", "invalid flow name \"XXXX");
    assert_error(&errors, "$.name", "… (10240 bytes)");
    assert_error(&errors, "$.start", "… (10241 bytes)");
    assert_error(&errors, "$.steps[0].block", "… (10240 bytes)");
    let mut step = task("a", None);
    step[format!("{long}z")] = json!(1);
    let unknown_field = errors_of(flow(vec![step]));
    assert!(!unknown_field.is_empty());
    for error in errors.iter().chain(&unknown_field) {
        let text = error.to_string();
        assert!(text.len() < 600, "{} bytes: {text}", text.len());
    }
    assert!(
        unknown_field[0].to_string().contains("… (10241 bytes)"),
        "{unknown_field:#?}"
    );
}

#[test]
fn invalid_step_id() {
    let document = flow(vec![task("Classify-1", None)]);
    assert_error(
        &errors_of(document),
        "$.steps[0].id",
        "invalid step id \"Classify-1\"",
    );
}

#[test]
fn worker_labels_are_checked_and_reach_the_task() {
    let mut step = task("a", None);
    step["worker_labels"] = json!({"site": "north", "gpu": "yes"});
    let bytes = serde_json::to_vec(&flow(vec![step.clone()])).expect("serializes");
    let definition = parse_flow(&bytes).expect("valid");
    let crate::Step::Task(parsed) = &definition.steps[0] else {
        panic!("a task step")
    };
    assert_eq!(parsed.worker_labels.len(), 2);

    step["worker_labels"] = json!({"Site": "north", "zone": "a,b"});
    let mut typed = task("t", None);
    typed["worker_labels"] = json!({"rack": 3});
    let mut map = json!({"id": "m", "type": "map", "items": "input.list",
        "task": {"block": "noop", "input": "item", "worker_labels": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}}});
    let errors = errors_of(flow(vec![step, map.clone(), typed]));
    assert_error(
        &errors,
        "$.steps[0].worker_labels.Site",
        "invalid label key \"Site\"",
    );
    assert_error(
        &errors,
        "$.steps[0].worker_labels.zone",
        "invalid label value \"a,b\"",
    );
    assert_error(
        &errors,
        "$.steps[2].worker_labels.rack",
        "expected a string",
    );
    assert_error(
        &errors,
        "$.steps[1].task.worker_labels",
        "at most 4 worker labels, found 5",
    );
    map["task"]["worker_labels"] = json!("site=north");
    assert_error(
        &errors_of(flow(vec![map])),
        "$.steps[0].task.worker_labels",
        "expected an object of label values",
    );
}

#[test]
fn duplicate_step_id() {
    let document = flow(vec![task("a", Some("b")), task("b", None), task("a", None)]);
    assert_error(
        &errors_of(document),
        "$.steps[2].id",
        "duplicate step id \"a\" (also used by $.steps[0])",
    );
}

#[test]
fn unknown_step_type() {
    let document = flow(vec![
        task("a", Some("b")),
        json!({"id": "b", "type": "lambda"}),
    ]);
    let errors = errors_of(document);
    assert_error(&errors, "$.steps[1].type", "unknown step type \"lambda\"");
    // The broken step's id is still known: no "unknown step" error for a's next.
    assert!(
        !errors
            .iter()
            .any(|error| error.message.contains("unknown step \"b\"")),
        "{errors:#?}"
    );
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    let mut document = two_tasks();
    document["owner"] = json!("me");
    document["steps"][0]["nxt"] = json!("b");
    document["steps"][0]["retry"] = json!({"max_attempts": 2, "delay": 5});
    document["steps"][0]["on_error"] = json!({"retry": "b"});
    let errors = errors_of(document);
    assert_error(&errors, "$.owner", "unknown field \"owner\"");
    assert_error(
        &errors,
        "$.steps[0].nxt",
        "unknown field \"nxt\" for a task step",
    );
    assert_error(&errors, "$.steps[0].retry.delay", "unknown field \"delay\"");
    assert_error(
        &errors,
        "$.steps[0].on_error.retry",
        "unknown field \"retry\"",
    );
}

#[test]
fn missing_and_mistyped_fields() {
    let document = flow(vec![
        json!({"id": "a", "type": "task", "input": "input", "next": 3}),
        json!({"id": "b", "type": "map", "items": "input.pages", "task": {"block": "x", "input": 5}}),
    ]);
    let errors = errors_of(document);
    assert_error(&errors, "$.steps[0]", "missing required field \"block\"");
    assert_error(
        &errors,
        "$.steps[0].next",
        "expected a string, found a number 3",
    );
    assert_error(
        &errors,
        "$.steps[1].task.input",
        "expected an expression string",
    );
}

#[test]
fn unknown_references_are_reported_at_each_field() {
    let document = json!({
        "name": "refs",
        "start": "nowhere",
        "steps": [
            {"id": "a", "type": "task", "block": "noop", "input": "input",
             "on_error": {"goto": "ghost1"}, "next": "d"},
            {"id": "d", "type": "decision", "cases": [{"when": "true", "next": "ghost2"}], "default": "ghost3"},
            {"id": "f", "type": "fork", "branches": [{"name": "x", "start": "ghost4"}, {"name": "y", "start": "s"}], "join": "ghost5"},
            {"id": "s", "type": "signal", "signal": "go", "timeout_ms": 5, "on_timeout": {"goto": "ghost6"}, "next": "ghost7"}
        ]
    });
    let errors = errors_of(document);
    assert_error(&errors, "$.start", "unknown step \"nowhere\"");
    assert_error(
        &errors,
        "$.steps[0].on_error.goto",
        "step \"a\" refers to unknown step \"ghost1\"",
    );
    assert_error(
        &errors,
        "$.steps[1].cases[0].next",
        "step \"d\" refers to unknown step \"ghost2\"",
    );
    assert_error(&errors, "$.steps[1].default", "unknown step \"ghost3\"");
    assert_error(
        &errors,
        "$.steps[2].branches[0].start",
        "unknown step \"ghost4\"",
    );
    assert_error(&errors, "$.steps[2].join", "unknown step \"ghost5\"");
    assert_error(
        &errors,
        "$.steps[3].on_timeout.goto",
        "unknown step \"ghost6\"",
    );
    assert_error(&errors, "$.steps[3].next", "unknown step \"ghost7\"");
}

#[test]
fn join_must_name_a_join_step() {
    let document = flow(vec![
        json!({"id": "f", "type": "fork", "branches": [{"name": "x", "start": "a"}, {"name": "y", "start": "b"}], "join": "c"}),
        task("a", Some("c")),
        task("b", Some("c")),
        task("c", None),
    ]);
    assert_error(
        &errors_of(document),
        "$.steps[0].join",
        "that is a task step, not a join step",
    );
}

#[test]
fn unreachable_step() {
    let document = flow(vec![task("a", None), task("orphan", None)]);
    assert_error(
        &errors_of(document),
        "$.steps[1]",
        "step \"orphan\" is not reachable from the start step \"a\"",
    );
}

#[test]
fn cycle_names_its_steps() {
    let document = flow(vec![
        task("a", Some("b")),
        task("b", Some("c")),
        task("c", Some("a")),
    ]);
    let errors = errors_of(document);
    assert_error(
        &errors,
        "$.steps[2].next",
        "steps form a cycle: \"a\" -> \"b\" -> \"c\" -> \"a\"",
    );
}

#[test]
fn expression_compile_error() {
    let mut document = two_tasks();
    document["steps"][1]["input"] = json!({"x": "input.a +"});
    assert_error(
        &errors_of(document),
        "$.steps[1].input.x",
        "invalid expression \"input.a +\"",
    );
}

#[test]
fn expression_too_long() {
    let mut document = two_tasks();
    let long = format!("input.a + '{}'", "x".repeat(4100));
    document["steps"][1]["input"] = json!(long);
    assert_error(
        &errors_of(document),
        "$.steps[1].input",
        "more than the limit of 4096",
    );
}

#[test]
fn unknown_variable() {
    let mut document = two_tasks();
    document["steps"][1]["input"] = json!({"a": "item", "b": "inputs.x"});
    let errors = errors_of(document);
    assert_error(&errors, "$.steps[1].input.a", "unknown variable \"item\"");
    assert_error(&errors, "$.steps[1].input.b", "unknown variable \"inputs\"");
}

#[test]
fn reference_to_unknown_step_in_expression() {
    let document = flow(vec![
        task("review", Some("route")),
        json!({"id": "route", "type": "decision", "cases": [{"when": "steps.reveiw.output.ok", "next": "done"}], "default": "done"}),
        task("done", None),
    ]);
    assert_error(
        &errors_of(document),
        "$.steps[1].cases[0].when",
        "step \"route\" refers to step \"reveiw\" which does not exist",
    );
}

#[test]
fn reference_to_step_that_does_not_precede_on_every_path() {
    let document = flow(vec![
        json!({"id": "route", "type": "decision", "cases": [{"when": "input.fast", "next": "quick"}], "default": "slow"}),
        task("quick", Some("merge")),
        task("slow", Some("merge")),
        json!({"id": "merge", "type": "transform", "output": {"a": "steps.quick.output", "b": "steps['route'].status"}}),
    ]);
    let errors = errors_of(document);
    assert_error(
        &errors,
        "$.steps[3].output.a",
        "step \"merge\" refers to step \"quick\" which does not precede it on every path",
    );
    assert!(
        !errors
            .iter()
            .any(|error| error.path == "$.steps[3].output.b"),
        "{errors:#?}"
    );
}

#[test]
fn join_sees_every_branch_but_branches_do_not_see_each_other() {
    let document = flow(vec![
        json!({"id": "f", "type": "fork", "branches": [{"name": "x", "start": "a"}, {"name": "y", "start": "b"}], "join": "j"}),
        task("a", Some("j")),
        json!({"id": "b", "type": "task", "block": "noop", "input": "steps.a.output", "next": "j"}),
        json!({"id": "j", "type": "join", "next": "t"}),
        json!({"id": "t", "type": "transform", "output": "[steps.a.output, steps.b.output, steps.j.output]"}),
    ]);
    let errors = errors_of(document);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_error(
        &errors,
        "$.steps[2].input",
        "refers to step \"a\" which does not precede it",
    );
}

#[test]
fn fork_structure_errors() {
    let document = flow(vec![
        json!({"id": "f", "type": "fork", "branches": [{"name": "x", "start": "a"}, {"name": "y", "start": "b"}], "join": "j"}),
        task("a", Some("shared")),
        task("b", Some("shared")),
        task("shared", None),
        json!({"id": "j", "type": "join"}),
    ]);
    let errors = errors_of(document);
    assert_error(
        &errors,
        "$.steps[3]",
        "ends the run instead of reaching join \"j\"",
    );
    assert_error(
        &errors,
        "$.steps[3]",
        "is in both branch \"x\" and branch \"y\"",
    );
    assert_error(&errors, "$.steps[4]", "not reachable");
}

#[test]
fn jump_into_a_branch_is_an_error() {
    let document = flow(vec![
        json!({"id": "d", "type": "decision", "cases": [{"when": "input.x", "next": "b"}], "default": "f"}),
        json!({"id": "f", "type": "fork", "branches": [{"name": "x", "start": "a"}, {"name": "y", "start": "b"}], "join": "j"}),
        task("a", Some("j")),
        task("b", Some("j")),
        json!({"id": "j", "type": "join"}),
    ]);
    assert_error(
        &errors_of(document),
        "$.steps[0].cases[0].next",
        "jumps into branch \"y\" of fork \"f\"",
    );
}

#[test]
fn bad_step_values() {
    let document = flow(vec![
        json!({"id": "a", "type": "task", "block": "Bad Block", "input": "input",
               "retry": {"max_attempts": 0, "initial_backoff_ms": 0, "max_backoff_ms": 0, "multiplier": 0.5},
               "timeouts": {"heartbeat_ms": 0}, "next": "m"}),
        json!({"id": "m", "type": "map", "items": "input.pages", "task": {"block": "x", "input": "item"},
               "max_parallelism": 0, "min_success_ratio": 1.5, "next": "w"}),
        json!({"id": "w", "type": "wait", "duration_ms": 5, "until": "input.t", "next": "w2"}),
        json!({"id": "w2", "type": "wait", "duration_ms": 0, "next": "d"}),
        json!({"id": "d", "type": "decision", "cases": [], "default": "s"}),
        json!({"id": "s", "type": "subflow", "flow": "other", "version": 0, "input": "input", "next": "g"}),
        json!({"id": "g", "type": "signal", "signal": "go", "on_timeout": {"fail": "late"}, "next": "f"}),
        json!({"id": "f", "type": "fork", "branches": [{"name": "only", "start": "t"}], "join": "j"}),
        task("t", Some("j")),
        json!({"id": "j", "type": "join"}),
    ]);
    let errors = errors_of(document);
    assert_error(
        &errors,
        "$.steps[0].block",
        "invalid block name \"Bad Block\"",
    );
    assert_error(
        &errors,
        "$.steps[0].retry.max_attempts",
        "between 1 and 100, found 0",
    );
    assert_error(
        &errors,
        "$.steps[0].retry.initial_backoff_ms",
        "greater than 0",
    );
    assert_error(
        &errors,
        "$.steps[0].retry.multiplier",
        "at least 1.0, found 0.5",
    );
    assert_error(
        &errors,
        "$.steps[0].timeouts.heartbeat_ms",
        "greater than 0",
    );
    assert_error(&errors, "$.steps[1].max_parallelism", "at least 1");
    assert_error(&errors, "$.steps[1].min_success_ratio", "found 1.5");
    assert_error(&errors, "$.steps[2]", "found both");
    assert_error(&errors, "$.steps[3].duration_ms", "greater than 0");
    assert_error(&errors, "$.steps[4].cases", "1 to 100 cases, found 0");
    assert_error(&errors, "$.steps[5].version", "at least 1");
    assert_error(&errors, "$.steps[6].on_timeout", "needs timeout_ms");
    assert_error(
        &errors,
        "$.steps[7].branches",
        "at least 2 branches, found 1",
    );
}

#[test]
fn max_backoff_below_initial() {
    let mut document = two_tasks();
    document["steps"][0]["retry"] = json!({"initial_backoff_ms": 5000, "max_backoff_ms": 1000});
    assert_error(
        &errors_of(document),
        "$.steps[0].retry.max_backoff_ms",
        "must be at least initial_backoff_ms (5000)",
    );
}

#[test]
fn several_errors_are_reported_at_once() {
    let document = json!({
        "name": "Bad",
        "steps": [
            {"id": "a", "type": "task", "block": "noop", "input": "input", "next": "nope"},
            {"id": "b", "type": "teleport"},
            {"id": "c", "type": "transform", "output": "steps.zzz.output", "colour": "red"},
            {"id": "d", "type": "decision", "cases": [{"when": "input.x >", "next": "a"}], "default": "a"}
        ]
    });
    let errors = errors_of(document);
    assert_error(&errors, "$.name", "invalid flow name");
    assert_error(&errors, "$.steps[0].next", "unknown step \"nope\"");
    assert_error(&errors, "$.steps[1].type", "unknown step type \"teleport\"");
    assert_error(&errors, "$.steps[2].colour", "unknown field \"colour\"");
    assert_error(&errors, "$.steps[3].cases[0].when", "invalid expression");
    assert!(errors.len() >= 5, "{errors:#?}");
}

#[test]
fn input_schema_shape_errors() {
    let mut document = two_tasks();
    document["input"] =
        json!({"type": "object", "properties": {"n": {"type": "int"}}, "pattern": "x"});
    let errors = errors_of(document);
    assert_error(
        &errors,
        "$.input.properties.n.type",
        "unknown schema type \"int\"",
    );
    assert_error(
        &errors,
        "$.input.pattern",
        "unsupported schema keyword \"pattern\"",
    );
}

#[test]
fn identical_definitions_hash_the_same() {
    let compact = br#"{"name":"h","steps":[{"id":"a","type":"task","block":"noop","input":{"x":"input.x","y":"1"}}]}"#;
    let spread = br#"
    {
        "steps": [ { "input": { "y": "1", "x": "input.x" }, "block": "noop", "type": "task", "id": "a" } ],
        "name": "h"
    }"#;
    let first = parse_flow(compact).expect("valid");
    let second = parse_flow(spread).expect("valid");
    assert_eq!(first, second);
    assert_eq!(content_hash(&first), content_hash(&second));
    assert_eq!(
        crate::canonical_bytes(&first),
        crate::canonical_bytes(&second)
    );
    assert_eq!(content_hash(&first).len(), 64);

    let changed = br#"{"name":"h","steps":[{"id":"a","type":"task","block":"noop","input":{"x":"input.x","y":"2"}}]}"#;
    let third = parse_flow(changed).expect("valid");
    assert_ne!(content_hash(&first), content_hash(&third));
}

#[test]
fn canonical_bytes_have_sorted_keys_and_round_trip() {
    let bytes = serde_json::to_vec(&two_tasks()).expect("serializes");
    let definition = parse_flow(&bytes).expect("valid");
    let canonical = crate::canonical_bytes(&definition);
    let text = String::from_utf8(canonical.clone()).expect("utf-8");
    assert!(
        text.starts_with("{\"name\":\"test-flow\",\"steps\":[{\"block\":\"noop\",\"id\":\"a\""),
        "{text}"
    );
    let reparsed = parse_flow(&canonical).expect("canonical form parses");
    assert_eq!(reparsed, definition);
}

#[test]
fn evaluates_object_mapping() {
    let mapping: Mapping = serde_json::from_value(json!({
        "doc": "input.document",
        "nested": {"fast": "steps.classify.output.confidence >= 0.8", "label": "'kind-' + steps.classify.output.label"},
        "count": "size(input.pages) * 2"
    }))
    .expect("mapping");
    let vars = json!({
        "input": {"document": "d1", "pages": [1, 2, 3]},
        "steps": {"classify": {"output": {"confidence": 0.9, "label": "invoice"}, "status": "completed"}}
    });
    let value = evaluate_mapping(&mapping, &vars).expect("evaluates");
    assert_eq!(
        value,
        json!({"doc": "d1", "nested": {"fast": true, "label": "kind-invoice"}, "count": 6})
    );
}

#[test]
fn evaluates_map_item_and_index() {
    let mapping: Mapping = serde_json::from_value(
        json!({"page": "item", "number": "index + 1", "doc": "input.document"}),
    )
    .expect("mapping");
    let vars = json!({"input": {"document": "d"}, "steps": {}, "item": {"p": 7}, "index": 2});
    let value = evaluate_mapping(&mapping, &vars).expect("evaluates");
    assert_eq!(value, json!({"page": {"p": 7}, "number": 3, "doc": "d"}));
}

#[test]
fn evaluation_errors_name_the_mapping_path() {
    let mapping: Mapping =
        serde_json::from_value(json!({"a": {"b": "input.missing"}})).expect("mapping");
    let error = evaluate_mapping(&mapping, &json!({"input": {}})).expect_err("no such key");
    match error {
        EvalError::InMapping { path, .. } => assert_eq!(path, "$.a.b"),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn comprehension_over_map_is_deterministic_and_over_scalar_is_an_error() {
    let expression = crate::expr::Expression::compile("input.m.map(k, k)").expect("compiles");
    let keys: Vec<String> = (0..50).map(|index| format!("k{index:02}")).collect();
    let object: serde_json::Map<String, Value> =
        keys.iter().map(|key| (key.clone(), json!(1))).collect();
    let value = expression
        .evaluate(&json!({"input": {"m": object}}))
        .expect("evaluates");
    assert_eq!(value, json!(keys));

    let scalar = crate::expr::Expression::compile("input.n.map(k, k)").expect("compiles");
    assert!(scalar.evaluate(&json!({"input": {"n": 5}})).is_err());
}

#[test]
fn result_size_is_limited() {
    let expression = crate::expr::Expression::compile("input.s + input.s").expect("compiles");
    let big = "x".repeat(600 * 1024);
    let error = expression
        .evaluate(&json!({"input": {"s": big}}))
        .expect_err("too large");
    assert!(
        matches!(error, EvalError::ResultTooLarge { .. }),
        "{error:?}"
    );
}

#[test]
fn numbers_map_to_cel_int_and_double() {
    let expression = crate::expr::Expression::compile("[input.i + 1, input.f * 2.0, input.i / 2]")
        .expect("compiles");
    let value = expression
        .evaluate(&json!({"input": {"i": 7, "f": 1.5}}))
        .expect("evaluates");
    assert_eq!(value, json!([8, 3.0, 3]));
}

#[test]
fn referenced_steps_and_scoping() {
    let expression = crate::expr::Expression::compile(
        "steps.a.output.x + steps['b'].output.list.map(steps, steps.y)[0]",
    )
    .expect("compiles");
    let referenced: Vec<String> = expression.referenced_steps().into_iter().collect();
    assert_eq!(referenced, vec!["a".to_string(), "b".to_string()]);
    assert!(!expression.has_dynamic_steps_access());
}

#[test]
fn deep_expressions_are_rejected_without_crashing() {
    let nested = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(crate::expr::Expression::compile(&nested).is_err());
    let chain = format!("input{}", ".a".repeat(2000));
    assert!(crate::expr::Expression::compile(&chain).is_err());
    let sum = format!("1{}", " + 1".repeat(1000));
    assert!(crate::expr::Expression::compile(&sum).is_err());
    // Worst cases just inside the source limits must compile or be refused,
    // and evaluate, on a test thread's 2 MiB stack.
    let worst = [
        format!("{}1{}{}", "(".repeat(8), "+1".repeat(30), ")".repeat(8)),
        format!(
            "{}true{}{}",
            "(".repeat(8),
            "?1:true".repeat(30),
            ")".repeat(8)
        ),
        format!("{}input{}{}", "[".repeat(8), ".a".repeat(28), "]".repeat(8)),
        format!(
            "{}true{}{}",
            "(".repeat(8),
            "?1:true".repeat(32),
            ")".repeat(8)
        ),
    ];
    for source in worst {
        if let Ok(expression) = crate::expr::Expression::compile(&source) {
            let _ = expression.evaluate(&json!({"input": {"a": 1}}));
        }
    }
}

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/flows")
}

#[test]
fn every_example_flow_parses() {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(examples_dir()).expect("examples directory exists");
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|extension| extension.to_str()) != Some("json") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable example");
        if let Err(errors) = parse_flow(&bytes) {
            panic!("{} does not validate: {errors:#?}", path.display());
        }
        names.push(
            path.file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_string(),
        );
    }
    for required in ["document-intake.json", "three-step.json", "pages-map.json"] {
        assert!(
            names.iter().any(|name| name == required),
            "missing example {required}"
        );
    }
}

#[test]
fn examples_cover_every_step_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples directory exists") {
        let path = entry.expect("directory entry").path();
        let bytes = std::fs::read(&path).expect("readable example");
        if let Ok(definition) = parse_flow(&bytes) {
            kinds.extend(definition.steps.iter().map(|step| step.type_name()));
        }
    }
    for kind in crate::STEP_TYPES {
        assert!(kinds.contains(kind), "no example uses a {kind} step");
    }
}

#[test]
fn schema_file_is_valid_json() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/flow.schema.json");
    let bytes = std::fs::read(&path).expect("schema file exists");
    let schema: Value = serde_json::from_slice(&bytes).expect("schema is valid JSON");
    assert_eq!(
        schema["$schema"],
        json!("https://json-schema.org/draft/2020-12/schema")
    );
    assert_eq!(
        schema["$defs"]["step"]["properties"]["type"]["enum"],
        json!(crate::STEP_TYPES),
        "the schema lists every step kind"
    );
}

mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_. ()'+0-9]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("task"),
                Just("decision"),
                Just("fork"),
                Just("join"),
                Just("map"),
                Just("wait")
            ]
            .prop_map(|text| Value::String(text.to_string())),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("id".to_string()),
                Just("type".to_string()),
                Just("next".to_string()),
                Just("steps".to_string()),
                Just("name".to_string()),
                Just("input".to_string()),
                Just("cases".to_string()),
                Just("branches".to_string()),
                Just("join".to_string()),
                Just("start".to_string()),
                Just("block".to_string()),
                "[a-z]{1,6}".prop_map(|key| key),
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_flow_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = crate::parse_flow(&bytes);
        }

        #[test]
        fn parse_flow_never_panics_on_json(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            let _ = crate::parse_flow(&bytes);
        }

        #[test]
        fn parse_flow_never_panics_on_flow_shaped_json(steps in prop::collection::vec(arbitrary_json(), 1..6)) {
            let document = serde_json::json!({"name": "p", "steps": steps});
            let bytes = serde_json::to_vec(&document).unwrap_or_default();
            let _ = crate::parse_flow(&bytes);
        }

        #[test]
        fn expressions_never_panic(source in "[a-z_.()\\[\\]{}'\"+*/%<>=!&|?:, 0-9-]{0,40}") {
            if let Ok(expression) = crate::expr::Expression::compile(&source) {
                let _ = expression.evaluate(&serde_json::json!({"input": {"a": 1, "b": [1, 2]}, "steps": {}}));
            }
        }
    }
}

#[test]
fn inference_steps_validate_model_version_input_and_policies() {
    let good = flow(vec![
        json!({"id": "detect", "type": "inference", "model": "ppocr-det", "version": 2,
               "input": {"x": "input.tensor"}, "retry": {"max_attempts": 3}, "on_error": {"goto": "fallback"}, "next": "done"}),
        json!({"id": "fallback", "type": "terminate", "output": "'none'"}),
        json!({"id": "done", "type": "terminate", "output": "steps.detect.output"}),
    ]);
    let errors = errors_of(good);
    assert!(errors.is_empty(), "{errors:#?}");

    let errors = errors_of(flow(vec![
        json!({"id": "a", "type": "inference", "model": "Bad.Name", "version": 0, "input": {"x": "steps.nope.output"},
               "retry": {"max_attempts": 0}, "outputs": "hex"}),
    ]));
    assert_error(&errors, "$.steps[0].outputs", "\"base64\" or \"list\"");
    let errors = errors_of(flow(vec![
        json!({"id": "a", "type": "inference", "model": "Bad.Name", "version": 0, "input": {"x": "steps.nope.output"},
               "retry": {"max_attempts": 0}}),
    ]));
    assert_error(&errors, "$.steps[0].model", "invalid model name");
    assert_error(&errors, "$.steps[0].version", "versions start at 1");
    assert_error(&errors, "$.steps[0].retry.max_attempts", "");
    assert_error(&errors, "$.steps[0].input.x", "nope");
}

#[test]
fn model_blocks_are_reserved_for_inference_steps() {
    let errors = errors_of(flow(vec![
        json!({"id": "a", "type": "task", "block": "model.ppocr-det", "input": "input"}),
    ]));
    assert_error(&errors, "$.steps[0].block", "reserved for inference steps");
}

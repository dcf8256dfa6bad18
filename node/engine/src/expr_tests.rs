//! Expressions: functions checked at compile time, a counted evaluation
//! budget, and a compiler that never panics.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::expr::{Expression, MAX_COMPREHENSION_NESTING, MAX_EVALUATION_COST};
use crate::parse_flow;

fn compile_error(source: &str) -> String {
    match Expression::compile(source) {
        Ok(_) => panic!("{source:?} compiled"),
        Err(reason) => reason,
    }
}

#[test]
fn unknown_functions_are_refused_when_the_flow_is_put() {
    let flow = json!({"name": "f", "steps": [
        {"id": "a", "type": "task", "block": "b", "input": {"x": "frobnicate(input)", "y": "input.name.shout()"}}
    ]});
    let errors = parse_flow(&serde_json::to_vec(&flow).unwrap()).expect_err("unknown functions");
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|error| error.contains("$.steps[0].input.x")
            && error.contains("unknown function `frobnicate`")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|error| error.contains("$.steps[0].input.y")
            && error.contains("unknown function `shout`")),
        "{text:#?}"
    );
    // The message lists what exists.
    assert!(
        text[0].contains("size")
            && text[0].contains("startsWith")
            && text[0].contains("exists_one"),
        "{}",
        text[0]
    );
}

#[test]
fn every_function_and_macro_the_interpreter_provides_compiles() {
    for source in [
        "size(input.l) + input.l.size()",
        "input.s.contains('a') && input.s.startsWith('a') && input.s.endsWith('a') && input.s.matches('^a')",
        "max(1, 2) + min(3, 4) + int('3') + int(uint(2)) + int(double(1))",
        "string(1) + string(bytes('x'))",
        "has(input.s) && input.l.all(x, x > 0) && input.l.exists(x, x > 2) && input.l.exists_one(x, x == 2)",
        "input.l.map(x, x * 2).filter(x, x > 2).size() == 2 && input.l.map(x, x > 1, x).size() == 2",
        "-input.l[0] < 0 ? 'a' in ['a'] : !true || false",
    ] {
        let expression = Expression::compile(source).unwrap_or_else(|err| panic!("{source}: {err}"));
        let value = expression.evaluate(&json!({"input": {"s": "abc", "l": [1, 2, 3]}})).unwrap();
        assert_ne!(value, Value::Null, "{source}");
    }
}

#[test]
fn macros_with_the_wrong_arguments_are_refused() {
    assert!(compile_error("input.l.exists(x)")
        .contains("macro `exists` is called with the wrong arguments"));
    assert!(compile_error("input.l.map(x)").contains("list.map(x, value)"));
    assert!(compile_error("has(input.a, input.b)").contains("macro `has`"));
}

#[test]
fn comprehensions_nest_at_most_two_deep() {
    let two = "input.l.all(x, input.l.exists(y, x == y))";
    assert_eq!(MAX_COMPREHENSION_NESTING, 2);
    assert!(Expression::compile(two).is_ok());
    let three = "input.l.all(x, input.l.exists(y, input.l.exists(z, x == y && y == z)))";
    assert!(compile_error(three)
        .contains("nests comprehensions (all, exists, exists_one, map, filter) 3 deep"));
    // Nested in the range counts as well.
    let in_body = "input.l.filter(d, input.l.filter(e, input.l.all(f, f > 0)).size() > 0).size()";
    let err = compile_error(in_body);
    assert!(err.contains("3 deep"), "{err}");
    // A comprehension in another's range runs once, not at every step.
    assert!(Expression::compile("input.l.map(a, a).map(b, b).map(c, c).size()").is_ok());
}

fn list_of(length: usize) -> Value {
    Value::Array((0..length).map(|index| json!(index)).collect())
}

#[test]
fn comprehensions_are_charged_against_a_counted_budget() {
    let map = Expression::compile("input.l.map(x, x + 1).size()").unwrap();
    assert_eq!(
        map.evaluate(&json!({"input": {"l": list_of(2000)}}))
            .unwrap(),
        json!(2000)
    );
    // map copies its growing list at every step: 4000 items cost 8 million.
    let err = map
        .evaluate(&json!({"input": {"l": list_of(4000)}}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input.l.map(x, x + 1).size()"),
        "names the expression: {err}"
    );
    assert!(
        err.contains(&format!(
            "evaluation budget of {MAX_EVALUATION_COST} units exceeded"
        )),
        "{err}"
    );

    // A quantifier does not copy: linear in its range.
    let all = Expression::compile("input.l.all(x, x >= 0)").unwrap();
    assert_eq!(
        all.evaluate(&json!({"input": {"l": list_of(50_000)}}))
            .unwrap(),
        json!(true)
    );

    // Nested: every inner run is charged; 3000 × 3000 is over the budget,
    // and every evaluation fails the same way.
    let nested = Expression::compile("input.l.all(x, input.l.exists(y, y == x))").unwrap();
    assert_eq!(
        nested
            .evaluate(&json!({"input": {"l": list_of(200)}}))
            .unwrap(),
        json!(true)
    );
    let first = nested
        .evaluate(&json!({"input": {"l": list_of(3000)}}))
        .unwrap_err()
        .to_string();
    let second = nested
        .evaluate(&json!({"input": {"l": list_of(3000)}}))
        .unwrap_err()
        .to_string();
    assert!(first.contains("evaluation budget"), "{first}");
    assert_eq!(first, second);
    // Operators in a body are charged by operand size: comparing a 100 KB
    // string at each of 1000 steps is over the budget, at each of 100 not.
    let compare = Expression::compile("input.l.all(x, input.s == input.s + '')").unwrap();
    let text = "s".repeat(100_000);
    assert_eq!(
        compare
            .evaluate(&json!({"input": {"l": list_of(100), "s": text}}))
            .unwrap(),
        json!(true)
    );
    let err = compare
        .evaluate(&json!({"input": {"l": list_of(1000), "s": text}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("evaluation budget"), "{err}");
    let search = Expression::compile("input.l.exists(x, input.s.contains('never'))").unwrap();
    let err = search
        .evaluate(&json!({"input": {"l": list_of(2000), "s": text}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("evaluation budget"), "{err}");
    let presence = Expression::compile("input.l.filter(x, has(input.m.k)).size()").unwrap();
    let wide: serde_json::Map<String, Value> = (0..20_000)
        .map(|key| (format!("k{key}"), json!(key)))
        .collect();
    let err = presence
        .evaluate(&json!({"input": {"l": list_of(1000), "m": wide}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("evaluation budget"), "{err}");

    // Outside comprehensions too: concatenating a 1 MiB string with itself
    // again and again would copy gigabytes.
    let terms = vec!["input"; 30].join(" + ");
    let concatenation = Expression::compile(&terms).unwrap();
    let megabyte = json!({"input": "m".repeat(1024 * 1024)});
    let err = concatenation.evaluate(&megabyte).unwrap_err().to_string();
    assert!(err.contains("evaluation budget"), "{err}");
    assert_eq!(
        concatenation.evaluate(&json!({"input": "ab"})).unwrap(),
        json!("ab".repeat(30))
    );

    // The budget is per evaluation: a later small one is unaffected.
    assert_eq!(
        nested
            .evaluate(&json!({"input": {"l": list_of(10)}}))
            .unwrap(),
        json!(true)
    );
}

#[test]
fn syntax_errors_carry_a_position() {
    let err = compile_error("input.a +\n  * 2");
    assert!(err.contains("syntax error at 2:"), "{err}");
}

proptest! {
    #[test]
    fn compile_never_panics_on_any_text(source in any::<String>()) {
        let _ = Expression::compile(&source);
    }

    #[test]
    fn compile_never_panics_on_cel_like_text(source in "[a-z_.()\\[\\]{}'\"+*/%<>=!&|?:, 0-9\\\\rbu@$#-]{0,120}") {
        let _ = Expression::compile(&source);
    }
}

/// Times the costliest evaluations that pass the checks: for each
/// expression, the longest list (in an input of at most 1 MiB) that stays
/// within the budget, found by bisection. Prints numbers, asserts nothing
/// about time. Run it in a release build:
/// `cargo test -p floe-engine --release --lib worst_case -- --ignored --nocapture`
#[test]
#[ignore]
fn worst_case_evaluation_times() {
    const MAX_INPUT_BYTES: usize = 1024 * 1024;
    let long_body: String = (0..24)
        .map(|index| format!("x.a{index} == 0"))
        .collect::<Vec<_>>()
        .join(" || ");
    let text = "s".repeat(400_000);
    let items = |count: usize, item: Value| Value::Array(vec![item; count]);
    type Input = Box<dyn Fn(usize) -> Value>;
    let cases: Vec<(String, Input)> = vec![
        (
            "size(input.l)".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        (
            "input.l.all(x, x == 0)".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        (
            vec!["input.s"; 30].join(" + "),
            Box::new(move |n| json!({"s": "s".repeat(n)})),
        ),
        (
            format!("input.l.exists(x, {long_body})"),
            Box::new(move |n| {
                let item: serde_json::Map<String, Value> = (0..24)
                    .map(|index| (format!("a{index}"), json!(1)))
                    .collect();
                json!({"l": items(n, Value::Object(item))})
            }),
        ),
        (
            "input.l.all(x, input.l.exists(y, y == x))".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        (
            "input.l.map(x, x).size()".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        (
            "input.l.filter(x, x == 0).size()".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        (
            "input.l.map(x, [x, x, x]).size()".into(),
            Box::new(move |n| json!({"l": items(n, json!(0))})),
        ),
        ("input.l.all(x, input.s != input.s + 'x')".into(), {
            let text = text.clone();
            Box::new(move |n| json!({"l": items(n, json!(0)), "s": text}))
        }),
        ("input.l.all(x, !input.s.contains('never'))".into(), {
            let text = text.clone();
            Box::new(move |n| json!({"l": items(n, json!(0)), "s": text}))
        }),
        (
            "input.l.all(x, max(input.k) >= 0)".into(),
            Box::new(move |n| json!({"l": items(n, json!(0)), "k": items(200_000, json!(0))})),
        ),
        (
            "input.l.all(x, input.s.matches('^(a|b)*$'))".into(),
            Box::new(move |n| json!({"l": items(n, json!(0)), "s": "ab".repeat(100_000)})),
        ),
        (
            "input.l.all(x, has(input.m.k))".into(),
            Box::new(move |n| {
                let wide: serde_json::Map<String, Value> = (0..40_000)
                    .map(|key| (format!("k{key}"), json!(0)))
                    .collect();
                json!({"l": items(n, json!(0)), "m": wide})
            }),
        ),
    ];
    for (source, input) in cases {
        let expression =
            Expression::compile(&source).unwrap_or_else(|err| panic!("{source}: {err}"));
        let fits = |n: usize| serde_json::to_vec(&input(n)).unwrap().len() <= MAX_INPUT_BYTES;
        let passes = |n: usize| expression.evaluate(&json!({"input": input(n)})).is_ok();
        // The longest list that fits in the input and passes the budget.
        let (mut low, mut high) = (0usize, 1usize);
        while fits(high) && passes(high) {
            low = high;
            high *= 2;
        }
        while high - low > 1 {
            let middle = (low + high) / 2;
            if fits(middle) && passes(middle) {
                low = middle;
            } else {
                high = middle;
            }
        }
        let variables = json!({"input": input(low)});
        let size = serde_json::to_vec(&variables).unwrap().len();
        let started = std::time::Instant::now();
        let outcome = expression.evaluate(&variables);
        let elapsed = started.elapsed();
        assert!(outcome.is_ok(), "{source}: {outcome:?}");
        let refused_above = expression
            .evaluate(&json!({"input": input(low + 1)}))
            .is_err();
        println!(
            "{:>8.1} ms  list {:>7}  input {:>8} bytes  {}{}",
            elapsed.as_secs_f64() * 1000.0,
            low,
            size,
            crate::error::shorten(&source, 60),
            if refused_above {
                "  (budget)"
            } else {
                "  (input size)"
            }
        );
    }
}

#[test]
fn inputs_the_parser_panics_on_are_refused() {
    // cel-parser 0.10 panicked on these (compile caught the panic); the
    // `cel` crate's parser reports them. Either way the expression is
    // refused as a syntax error, and nothing is printed.
    for source in ["\"\\", "`x`", "!", "-", "in", "a in", "'\\x4'"] {
        let err = compile_error(source);
        assert!(err.starts_with("syntax error"), "{source}: {err}");
    }
}

/// Evaluates `source` over a fixed input.
fn evaluate(source: &str) -> Result<Value, String> {
    let input = json!({"input": {
        "s": "héllo", "l": [1, 2, 3], "m": {"a": 1, "b": [1, 2]}, "n": null, "t": true, "e": []
    }});
    let expression = Expression::compile(source).map_err(|err| format!("compile: {err}"))?;
    expression.evaluate(&input).map_err(|err| err.to_string())
}

#[test]
fn expressions_keep_the_meaning_they_had_under_cel_interpreter_0_10() {
    // Results recorded from floe built on cel-interpreter 0.10; stored flows
    // and replicas of the previous release evaluate them alike.
    for (source, expected) in [
        // Truthiness: any value in `&&`, `||`, `!` and `? :`.
        ("input.t && input.n", json!(false)),
        ("input.n || input.s", json!("héllo")),
        ("1 || 'x'", json!(1)),
        ("!input.e", json!(true)),
        ("input.n ? 1 : 2", json!(2)),
        ("[1].exists(x, 5)", json!(5)),
        ("[null, 1, 'a'].filter(x, x)", json!([1, "a"])),
        // Indexing: out of range and missing keys are null.
        ("input.l[5]", Value::Null),
        ("input.l[-1]", Value::Null),
        ("input.m['zz']", Value::Null),
        ("'abc'[1]", json!("b")),
        ("{1: 'a'}[1u]", json!("a")),
        // Functions and operators.
        ("size(input.s) + input.s.size()", json!(12)),
        ("input.l.contains(2) && input.m.contains('a')", json!(true)),
        ("b'abc'.contains(b'b')", json!(true)),
        ("'e' in input.s", json!(false)),
        ("null < null || null <= null", json!(true)),
        ("{'a': 1, 'a': 2}.a", json!(2)),
        (".input.l[0]", json!(1)),
        ("max([3, 1])", json!(3)),
        ("min(2, 1.5)", json!(1.5)),
        ("max([])", Value::Null),
        ("max(1, 2.5)", json!(2.5)),
        ("string(input.l[0]) + string(b'x')", json!("1x")),
    ] {
        assert_eq!(evaluate(source), Ok(expected), "{source}");
    }
    for (source, message) in [
        ("input.missing || true", "No such key: missing"),
        ("1 + 1.5", "Unsupported binary operator 'add'"),
        ("b'a' + b'b'", "Unsupported binary operator 'add'"),
        ("b'a' < b'b'", "can not be compared to"),
        ("-input.s", "Unsupported unary operator 'minus'"),
        (
            "int(' 12')",
            "Error executing function 'int': string parse error",
        ),
        (
            "size(1)",
            "Error executing function 'size': cannot determine the size of Int(1)",
        ),
        ("input.l.map(x, x)[0] + input.s.map(x, x)", "found String"),
    ] {
        let err = evaluate(source).expect_err(source);
        assert!(err.contains(message), "{source}: {err}");
    }
    // Optional values are not part of the language.
    for source in ["input.m.?a", "[?input.n]", "optional.of(1)"] {
        assert!(Expression::compile(source).is_err(), "{source}");
    }
}

#[test]
fn copies_of_large_values_are_charged() {
    // The interpreter's lists and maps hold their items, so a literal copies
    // what it holds: a 400 KB string in a literal at each of 200 steps is
    // over the budget, a small one is not.
    let text = "s".repeat(400_000);
    for source in [
        "input.l.all(x, [input.s] != [])",
        "input.l.all(x, {'a': input.s}.a != '')",
        "input.l.map(x, input.s).size() > 0",
    ] {
        let expression = Expression::compile(source).unwrap();
        let err = expression
            .evaluate(&json!({"input": {"l": list_of(200), "s": text}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("evaluation budget"), "{source}: {err}");
        assert_eq!(
            expression
                .evaluate(&json!({"input": {"l": list_of(200), "s": "small"}}))
                .unwrap(),
            json!(true),
            "{source}"
        );
    }
}

#[test]
fn a_boolean_left_of_or_is_evaluated_once() {
    // The map costs over half the budget: evaluated twice it would not fit.
    let expression = Expression::compile("input.l.map(x, x).size() > 0 || false").unwrap();
    assert_eq!(
        expression
            .evaluate(&json!({"input": {"l": list_of(2500)}}))
            .unwrap(),
        json!(true)
    );
}

/// An execution error names the values it is about by kind, not printed
/// whole: the interpreter's maps iterate in a random order, so a printed
/// map would differ from replica to replica (apply stores the message in
/// the run), and a printed input could be megabytes long.
#[test]
fn execution_errors_are_deterministic_and_bounded() {
    let entries: serde_json::Map<String, Value> = (0..2000)
        .map(|index| (format!("key{index}"), json!("x".repeat(50))))
        .collect();
    let variables = json!({"input": {"s": "abc", "m": entries}});
    let expression = Expression::compile("size(input.s) + input.m").expect("compiles");
    let first = expression.evaluate(&variables).expect_err("int plus map");
    for _ in 0..10 {
        assert_eq!(expression.evaluate(&variables), Err(first.clone()));
    }
    let message = first.to_string();
    assert!(
        message.contains("Int(3), a map of 2000 entries"),
        "{message}"
    );
    assert!(message.len() < 1024, "{} bytes: {message}", message.len());
    let long_key = "k".repeat(10_000);
    let indexed = json!({"input": {"l": [1], "k": long_key}});
    let message = Expression::compile("input.l[input.k]")
        .expect("compiles")
        .evaluate(&indexed)
        .expect_err("string list index")
        .to_string();
    assert!(message.contains("(10000 bytes)"), "{message}");
    assert!(message.len() < 1024, "{} bytes", message.len());
}

/// The parser reports every bad token; the reason is cut so that a flow's
/// error stays within a status message (4 KiB) however many there are.
#[test]
fn syntax_errors_are_bounded_however_many_there_are() {
    let source = format!("steps.ocr.output.filter(page, page =={})", "%".repeat(200));
    let reason = compile_error(&source);
    assert!(reason.starts_with("syntax error at 1:"), "{reason}");
    assert!(
        reason.chars().count() <= 513,
        "{} chars",
        reason.chars().count()
    );
}

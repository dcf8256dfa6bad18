//! CEL expressions: compiling, static analysis (free variables, referenced
//! steps) and evaluation over JSON variables.
//!
//! Evaluation is deterministic: comprehensions over maps iterate the keys in
//! sorted order (the interpreter's own map is a `HashMap` with a random
//! seed, so this crate rewrites each comprehension's range), and no function
//! reads the clock or the environment (the `chrono` feature, which brings
//! `timestamp`/`duration`, is off).

use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex};

use cel_interpreter::objects::Key;
use cel_interpreter::{Context, ExecutionError, FunctionContext, Value as CelValue};
use cel_parser::ast::{operators, CallExpr, EntryExpr, Expr, IdedExpr};
use cel_parser::reference::Val;
use serde_json::{Map, Number, Value};

use crate::error::{shorten, EvalError};

/// Longest accepted expression source, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Largest accepted serialized evaluation result, in bytes.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Deepest accepted bracket nesting (`(`, `[`, `{`) in an expression source.
///
/// The parser and the interpreter recurse; these limits keep a worst-case
/// expression well inside a 2 MiB thread stack even in debug builds.
pub const MAX_NESTING_DEPTH: usize = 8;
/// Most operator characters (`.`, `+`, `[`, `?`, ...) outside string literals.
pub const MAX_OPERATORS: usize = 256;
/// Most conditional operators (`? :`).
pub const MAX_CONDITIONALS: usize = 32;
/// Deepest accepted syntax tree (long operator or member chains).
pub const MAX_TREE_DEPTH: usize = 32;

/// Most compiled expressions kept for reuse (the cache empties when full).
const COMPILE_CACHE_ENTRIES: usize = 4096;

/// Name of the internal function wrapped around every comprehension range.
/// It cannot be written in CEL source (`@` is not an identifier character).
const ITERATION_FUNCTION: &str = "@floe_iter";

/// A compiled CEL expression.
#[derive(Clone, Debug)]
pub struct Expression {
    source: String,
    tree: IdedExpr,
    free_variables: BTreeSet<String>,
    referenced_steps: BTreeSet<String>,
    has_dynamic_steps_access: bool,
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// CEL's standard functions and ours, registered once: a fresh context
/// registers every function again, which cost more than evaluating a
/// short mapping. Each evaluation adds its variables in a child scope.
static FUNCTIONS: LazyLock<Context<'static>> = LazyLock::new(|| {
    let mut context = Context::default();
    context.add_function(ITERATION_FUNCTION, iteration_range);
    context
});

impl Expression {
    /// Compiles CEL source text. Errors name the problem and, for syntax
    /// errors, the line and column inside the expression.
    ///
    /// Apply evaluates a flow's expressions on every run event; parsing
    /// dominates their cost, so compiled expressions are kept in a bounded
    /// process-wide cache by source (compiling is a pure function of it).
    pub fn compile(src: &str) -> Result<Self, String> {
        static CACHE: LazyLock<Mutex<HashMap<String, Expression>>> =
            LazyLock::new(Default::default);
        if let Some(found) = CACHE.lock().ok().and_then(|cache| cache.get(src).cloned()) {
            return Ok(found);
        }
        let compiled = Self::compile_uncached(src)?;
        if let Ok(mut cache) = CACHE.lock() {
            if cache.len() >= COMPILE_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(src.to_string(), compiled.clone());
        }
        Ok(compiled)
    }

    fn compile_uncached(src: &str) -> Result<Self, String> {
        if src.len() > MAX_EXPRESSION_BYTES {
            return Err(format!(
                "expression is {} bytes long, more than the limit of {MAX_EXPRESSION_BYTES}",
                src.len()
            ));
        }
        if src.trim().is_empty() {
            return Err("expression is empty".to_string());
        }
        check_source_complexity(src)?;
        // The parser is generated code; a panic in it must not take the
        // caller (the Raft apply loop) down with it.
        let parsed = catch_unwind(AssertUnwindSafe(|| cel_parser::Parser::new().parse(src)))
            .map_err(|_| "the CEL parser failed on this expression".to_string())?;
        let mut tree = parsed.map_err(|errors| {
            let messages: Vec<String> = errors
                .errors
                .iter()
                .map(|error| {
                    format!(
                        "syntax error at {}:{}: {}",
                        error.pos.0, error.pos.1, error.msg
                    )
                })
                .collect();
            messages.join("; ")
        })?;
        let depth = tree_depth(&tree, 0);
        if depth > MAX_TREE_DEPTH {
            return Err(format!(
                "expression is nested {depth} levels deep, more than the limit of {MAX_TREE_DEPTH}"
            ));
        }
        let mut analysis = Analysis::default();
        analyze(&tree, &mut Vec::new(), &mut analysis)?;
        wrap_comprehension_ranges(&mut tree);
        Ok(Expression {
            source: src.to_string(),
            tree,
            free_variables: analysis.free_variables,
            referenced_steps: analysis.referenced_steps,
            has_dynamic_steps_access: analysis.dynamic_steps_access,
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Step ids this expression reads as `steps.<id>` or `steps['<id>']`.
    pub fn referenced_steps(&self) -> BTreeSet<String> {
        self.referenced_steps.clone()
    }

    /// Top-level variables this expression reads (`input`, `steps`, ...).
    pub fn free_variables(&self) -> &BTreeSet<String> {
        &self.free_variables
    }

    /// Whether `steps` is used other than as `steps.<id>` / `steps['<id>']`,
    /// so the steps read cannot be known statically.
    pub fn has_dynamic_steps_access(&self) -> bool {
        self.has_dynamic_steps_access
    }

    /// Evaluates with `vars`, a JSON object whose keys are variable names.
    pub fn evaluate(&self, vars: &Value) -> Result<Value, EvalError> {
        let Value::Object(variables) = vars else {
            return Err(EvalError::VariablesNotAnObject {
                found: crate::error::kind_of(vars),
            });
        };
        let mut context = FUNCTIONS.new_inner_scope();
        for (name, value) in variables {
            let cel_value = json_to_cel(value);
            context.add_variable_from_value(name.as_str(), cel_value);
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| CelValue::resolve(&self.tree, &context)));
        let resolved = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                return Err(EvalError::Execution {
                    expression: self.short_source(),
                    reason: error.to_string(),
                })
            }
            Err(_) => {
                return Err(EvalError::Execution {
                    expression: self.short_source(),
                    reason: "operation not supported on these values".to_string(),
                })
            }
        };
        let json = cel_to_json(&resolved).map_err(|reason| EvalError::NotJson {
            expression: self.short_source(),
            reason,
        })?;
        let size = serialized_size(&json);
        if size > MAX_RESULT_BYTES {
            return Err(EvalError::ResultTooLarge {
                expression: self.short_source(),
                size,
                limit: MAX_RESULT_BYTES,
            });
        }
        Ok(json)
    }

    fn short_source(&self) -> String {
        shorten(&self.source, 120)
    }
}

/// Serialized JSON size without building the text.
pub(crate) fn serialized_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing into a counter cannot fail; on the impossible error the count
    // so far is still a lower bound.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Rejects sources whose parse would recurse too deeply, before parsing:
/// bracket nesting, operator count and conditional count, all counted
/// outside string literals (plain, raw and triple-quoted).
fn check_source_complexity(src: &str) -> Result<(), String> {
    let chars: Vec<char> = src.chars().collect();
    let mut depth: usize = 0;
    let mut deepest: usize = 0;
    let mut operators: usize = 0;
    let mut conditionals: usize = 0;
    let mut position = 0;
    while position < chars.len() {
        let c = chars[position];
        if c == '"' || c == '\'' {
            let is_raw = position > 0 && matches!(chars[position - 1], 'r' | 'R');
            let is_triple =
                chars.get(position + 1) == Some(&c) && chars.get(position + 2) == Some(&c);
            position = skip_string(&chars, position, c, is_raw, is_triple);
            continue;
        }
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
                operators += 1;
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '?' => {
                conditionals += 1;
                operators += 1;
            }
            '.' | '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '&' | '|' => operators += 1,
            _ => {}
        }
        position += 1;
    }
    if deepest > MAX_NESTING_DEPTH {
        return Err(format!(
            "expression nests brackets {deepest} deep, more than the limit of {MAX_NESTING_DEPTH}"
        ));
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "expression has {operators} operators, more than the limit of {MAX_OPERATORS}"
        ));
    }
    if conditionals > MAX_CONDITIONALS {
        return Err(format!(
            "expression has {conditionals} conditionals, more than the limit of {MAX_CONDITIONALS}"
        ));
    }
    Ok(())
}

/// Position just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize, quote: char, is_raw: bool, is_triple: bool) -> usize {
    let delimiter_length = if is_triple { 3 } else { 1 };
    let mut position = start + delimiter_length;
    while position < chars.len() {
        let c = chars[position];
        if c == '\\' && !is_raw {
            position += 2;
            continue;
        }
        if c == quote {
            let closes = !is_triple
                || (chars.get(position + 1) == Some(&quote)
                    && chars.get(position + 2) == Some(&quote));
            if closes {
                return position + delimiter_length;
            }
        }
        position += 1;
    }
    chars.len()
}

fn tree_depth(expr: &IdedExpr, depth: usize) -> usize {
    if depth > MAX_TREE_DEPTH {
        return depth;
    }
    let here = depth + 1;
    children(expr)
        .into_iter()
        .map(|child| tree_depth(child, here))
        .max()
        .unwrap_or(here)
}

fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
        Expr::Call(call) => call
            .target
            .iter()
            .map(|target| target.as_ref())
            .chain(call.args.iter())
            .collect(),
        Expr::Comprehension(comprehension) => vec![
            comprehension.iter_range.as_ref(),
            comprehension.accu_init.as_ref(),
            comprehension.loop_cond.as_ref(),
            comprehension.loop_step.as_ref(),
            comprehension.result.as_ref(),
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|entry| entry_children(&entry.expr))
            .collect(),
        Expr::Struct(structure) => structure
            .entries
            .iter()
            .flat_map(|entry| entry_children(&entry.expr))
            .collect(),
        Expr::Select(select) => vec![select.operand.as_ref()],
    }
}

fn entry_children(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::StructField(field) => vec![&field.value],
        EntryExpr::MapEntry(map_entry) => vec![&map_entry.key, &map_entry.value],
    }
}

#[derive(Default)]
struct Analysis {
    free_variables: BTreeSet<String>,
    referenced_steps: BTreeSet<String>,
    dynamic_steps_access: bool,
}

/// Collects free variables and `steps.<id>` references; `bound` holds the
/// names bound by enclosing comprehensions.
fn analyze(
    expr: &IdedExpr,
    bound: &mut Vec<String>,
    analysis: &mut Analysis,
) -> Result<(), String> {
    let is_bound =
        |name: &str, bound: &Vec<String>| bound.iter().any(|bound_name| bound_name == name);
    match &expr.expr {
        Expr::Unspecified => return Err("expression has an empty part".to_string()),
        Expr::Struct(structure) => {
            return Err(format!(
                "message construction (`{}{{...}}`) is not supported",
                structure.type_name
            ))
        }
        Expr::Ident(name) => {
            if !name.starts_with('@') && !is_bound(name, bound) {
                analysis.free_variables.insert(name.clone());
                if name == "steps" {
                    analysis.dynamic_steps_access = true;
                }
            }
            return Ok(());
        }
        Expr::Select(select) => {
            if let Expr::Ident(name) = &select.operand.expr {
                if name == "steps" && !is_bound(name, bound) {
                    analysis.free_variables.insert(name.clone());
                    analysis.referenced_steps.insert(select.field.clone());
                    return Ok(());
                }
            }
        }
        Expr::Call(call) if call.func_name == operators::INDEX && call.args.len() == 2 => {
            if let (Expr::Ident(name), Expr::Literal(Val::String(step))) =
                (&call.args[0].expr, &call.args[1].expr)
            {
                if name == "steps" && !is_bound(name, bound) {
                    analysis.free_variables.insert(name.clone());
                    analysis.referenced_steps.insert(step.clone());
                    return Ok(());
                }
            }
        }
        Expr::Comprehension(comprehension) => {
            analyze(&comprehension.iter_range, bound, analysis)?;
            analyze(&comprehension.accu_init, bound, analysis)?;
            let depth_before = bound.len();
            bound.push(comprehension.iter_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                bound.push(second.clone());
            }
            bound.push(comprehension.accu_var.clone());
            let body = [
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ];
            let mut outcome = Ok(());
            for part in body {
                outcome = analyze(part, bound, analysis);
                if outcome.is_err() {
                    break;
                }
            }
            bound.truncate(depth_before);
            return outcome;
        }
        _ => {}
    }
    for child in children(expr) {
        analyze(child, bound, analysis)?;
    }
    Ok(())
}

/// Wraps every comprehension range `r` into `@floe_iter(r)`.
fn wrap_comprehension_ranges(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Comprehension(comprehension) => {
            let range = std::mem::take(comprehension.iter_range.as_mut());
            let wrapped = IdedExpr {
                id: range.id,
                expr: Expr::Call(CallExpr {
                    func_name: ITERATION_FUNCTION.to_string(),
                    target: None,
                    args: vec![range],
                }),
            };
            *comprehension.iter_range = wrapped;
            if let Expr::Call(call) = &mut comprehension.iter_range.expr {
                for arg in &mut call.args {
                    wrap_comprehension_ranges(arg);
                }
            }
            for part in [
                &mut comprehension.accu_init,
                &mut comprehension.loop_cond,
                &mut comprehension.loop_step,
                &mut comprehension.result,
            ] {
                wrap_comprehension_ranges(part);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                wrap_comprehension_ranges(target);
            }
            for arg in &mut call.args {
                wrap_comprehension_ranges(arg);
            }
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                wrap_comprehension_ranges(element);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                match &mut entry.expr {
                    EntryExpr::StructField(field) => wrap_comprehension_ranges(&mut field.value),
                    EntryExpr::MapEntry(map_entry) => {
                        wrap_comprehension_ranges(&mut map_entry.key);
                        wrap_comprehension_ranges(&mut map_entry.value);
                    }
                }
            }
        }
        Expr::Select(select) => wrap_comprehension_ranges(&mut select.operand),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) => {}
    }
}

/// A comprehension range: a list as is, a map as its keys in sorted order,
/// anything else an error (the interpreter would panic on it).
fn iteration_range(ftx: &FunctionContext, range: CelValue) -> Result<CelValue, ExecutionError> {
    match range {
        CelValue::List(items) => Ok(CelValue::List(items)),
        CelValue::Map(map) => {
            let mut keys: Vec<Key> = map.map.keys().cloned().collect();
            keys.sort();
            let key_values: Vec<CelValue> = keys.into_iter().map(CelValue::from).collect();
            Ok(CelValue::List(Arc::new(key_values)))
        }
        other => Err(ftx.error(format!(
            "macros iterate over a list or a map, found {:?}",
            other.type_of()
        ))),
    }
}

/// JSON → CEL: integers that fit i64 become `int`, larger non-negative
/// integers `uint`, other numbers `double`; objects become maps with string
/// keys.
pub fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(flag) => CelValue::Bool(*flag),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                CelValue::Int(integer)
            } else if let Some(unsigned) = number.as_u64() {
                CelValue::UInt(unsigned)
            } else {
                CelValue::Float(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(text) => CelValue::String(Arc::new(text.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(object) => {
            let map: std::collections::HashMap<Key, CelValue> = object
                .iter()
                .map(|(key, item)| (Key::String(Arc::new(key.clone())), json_to_cel(item)))
                .collect();
            CelValue::Map(cel_interpreter::objects::Map { map: Arc::new(map) })
        }
    }
}

/// CEL → JSON: `int`/`uint`/`double` become numbers (a non-finite double is
/// an error), map keys become strings (`1`, `true`), and map keys are
/// emitted in sorted order. Bytes, functions and time values have no JSON form.
pub fn cel_to_json(value: &CelValue) -> Result<Value, String> {
    let json = match value {
        CelValue::Null => Value::Null,
        CelValue::Bool(flag) => Value::Bool(*flag),
        CelValue::Int(integer) => Value::Number(Number::from(*integer)),
        CelValue::UInt(unsigned) => Value::Number(Number::from(*unsigned)),
        CelValue::Float(double) => match Number::from_f64(*double) {
            Some(number) => Value::Number(number),
            None => return Err(format!("the double {double} is not a JSON number")),
        },
        CelValue::String(text) => Value::String(text.as_str().to_string()),
        CelValue::List(items) => {
            let mut converted = Vec::with_capacity(items.len());
            for item in items.iter() {
                converted.push(cel_to_json(item)?);
            }
            Value::Array(converted)
        }
        CelValue::Map(map) => {
            let mut entries: Vec<(String, &CelValue)> = map
                .map
                .iter()
                .map(|(key, item)| (key_to_string(key), item))
                .collect();
            entries.sort_by(|left, right| left.0.cmp(&right.0));
            let mut object = Map::new();
            for (key, item) in entries {
                object.insert(key, cel_to_json(item)?);
            }
            Value::Object(object)
        }
        CelValue::Bytes(_) => return Err("bytes have no JSON form; use string(b)".to_string()),
        CelValue::Function(name, _) => return Err(format!("function {name} is not a value")),
        #[allow(unreachable_patterns)]
        other => return Err(format!("{:?} values have no JSON form", other.type_of())),
    };
    Ok(json)
}

fn key_to_string(key: &Key) -> String {
    match key {
        Key::Int(integer) => integer.to_string(),
        Key::Uint(unsigned) => unsigned.to_string(),
        Key::Bool(flag) => flag.to_string(),
        Key::String(text) => text.as_str().to_string(),
    }
}

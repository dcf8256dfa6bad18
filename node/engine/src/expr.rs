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

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::Key;
use cel::{Context, DeclarationError, Env, Value as CelValue};
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

/// Deepest nesting of comprehensions (`all`, `exists`, `exists_one`, `map`,
/// `filter`) inside one another: each level multiplies the work.
pub const MAX_COMPREHENSION_NESTING: usize = 2;
pub use crate::cost::MAX_EVALUATION_COST;

/// Most compiled expressions kept for reuse (the cache empties when full).
const COMPILE_CACHE_ENTRIES: usize = 4096;

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

thread_local! {
    /// CEL's standard library and floe's functions, registered once per
    /// thread: a fresh context registers every function again, which cost
    /// more than evaluating a short mapping. Each evaluation adds its
    /// variables in a child scope.
    static FUNCTIONS: Result<Context<'static, 'static>, DeclarationError> = evaluation_context();
}

fn evaluation_context() -> Result<Context<'static, 'static>, DeclarationError> {
    // No optional values (`a.?b`, `optional.of`): the parser does not accept
    // their syntax either. A map literal with a repeated key keeps the last
    // value, as floe's expressions always have.
    let mut env = Env::default().with_optional_support(false).with_stdlib();
    env.set_error_on_duplicate_map_keys(false);
    let mut context = Context::with_env(Arc::new(env));
    crate::cost::register(&mut context)?;
    crate::expr_compat::register(&mut context)?;
    Ok(context)
}

/// Operators the interpreter evaluates itself, without a registered function.
const INTERPRETER_OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::ADD,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::INDEX,
    operators::NOT_STRICTLY_FALSE,
    operators::IN,
];

/// CEL macros: the parser expands them into comprehensions (or, for `has`,
/// a presence test) when called with the right arguments.
const MACROS: &[(&str, &str)] = &[
    (operators::HAS, "has(a.field)"),
    (operators::ALL, "list.all(x, predicate)"),
    (operators::EXISTS, "list.exists(x, predicate)"),
    (operators::EXISTS_ONE, "list.exists_one(x, predicate)"),
    ("existsOne", "list.existsOne(x, predicate)"),
    (
        operators::MAP,
        "list.map(x, value) or list.map(x, predicate, value)",
    ),
    (operators::FILTER, "list.filter(x, predicate)"),
];

/// Refuses calls evaluation would not find: an unknown function, or a
/// macro called with the wrong arguments (the parser then leaves a call).
fn check_functions(expr: &IdedExpr) -> Result<(), String> {
    if let Expr::Call(call) = &expr.expr {
        let name = call.func_name.as_str();
        let internal = crate::cost::is_internal_function(name);
        let known = !internal
            && (INTERPRETER_OPERATORS.contains(&name)
                || crate::cost::FUNCTION_NAMES.contains(&name));
        if !known {
            if let Some((_, usage)) = MACROS.iter().find(|(macro_name, _)| *macro_name == name) {
                return Err(format!(
                    "macro `{name}` is called with the wrong arguments; write {usage}"
                ));
            }
            return Err(format!(
                "unknown function `{}`; the functions are {} and the macros {}",
                shorten(name, 64),
                crate::cost::FUNCTION_NAMES.join(", "),
                MACROS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for child in children(expr) {
        check_functions(child)?;
    }
    Ok(())
}

/// How deeply comprehensions nest in `expr`: one inside another's body
/// runs at each of its steps. One in another's range runs once (a chain,
/// `l.map(...).filter(...)`), so it does not nest.
fn comprehension_nesting(expr: &IdedExpr) -> usize {
    match &expr.expr {
        Expr::Comprehension(comprehension) => {
            let once = [
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.result,
            ]
            .into_iter()
            .map(comprehension_nesting)
            .max()
            .unwrap_or(0);
            let body = comprehension_nesting(&comprehension.loop_cond)
                .max(comprehension_nesting(&comprehension.loop_step));
            once.max(body + 1)
        }
        _ => children(expr)
            .into_iter()
            .map(comprehension_nesting)
            .max()
            .unwrap_or(0),
    }
}

/// Number of syntax-tree nodes in `expr`.
pub(crate) fn node_count(expr: &IdedExpr) -> u64 {
    1 + children(expr).into_iter().map(node_count).sum::<u64>()
}

/// Runs `work`, turning a panic in it into an error value without printing
/// the panic message and backtrace: the parser and the interpreter are
/// third-party code, and the caller reports their failure as an expression
/// error. One hook, set once, stays quiet only for the thread inside this
/// call and hands every other panic to the hook that was there before it.
fn quietly<T>(work: impl FnOnce() -> T) -> std::thread::Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|quiet| quiet.get()) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|quiet| quiet.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(work));
    QUIET.with(|quiet| quiet.set(was_quiet));
    outcome
}

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
        let parsed = quietly(|| cel::parser::Parser::new().parse(src))
            .map_err(|_| "syntax error: the CEL parser could not read this expression (an operator without operands, \
                 a backtick or a bad escape?)".to_string())?;
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
            // One error per bad token: an expression can give hundreds.
            shorten(&messages.join("; "), MAX_REASON_CHARS)
        })?;
        crate::expr_compat::strip_leading_dots(&mut tree);
        let depth = tree_depth(&tree, 0);
        if depth > MAX_TREE_DEPTH {
            return Err(format!(
                "expression is nested {depth} levels deep, more than the limit of {MAX_TREE_DEPTH}"
            ));
        }
        check_functions(&tree)?;
        let nesting = comprehension_nesting(&tree);
        if nesting > MAX_COMPREHENSION_NESTING {
            return Err(format!(
                "expression nests comprehensions (all, exists, exists_one, map, filter) {nesting} deep, \
                 more than the limit of {MAX_COMPREHENSION_NESTING}"
            ));
        }
        let mut analysis = Analysis::default();
        analyze(&tree, &mut Vec::new(), &mut analysis)?;
        // Operators outside comprehensions are charged too: 255 of them
        // concatenating 1 MiB strings would copy gigabytes.
        crate::cost_rewrite::charge_operators(&mut tree);
        wrap_comprehension_ranges(&mut tree);
        // Last: what it adds is not charged (the steps' costs are taken).
        crate::expr_compat::rewrite(&mut tree);
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
        let outcome = FUNCTIONS.with(|functions| {
            let functions = match functions {
                Ok(functions) => functions,
                Err(error) => {
                    return Ok(Err(cel::ExecutionError::InternalError(error.to_string())))
                }
            };
            let mut context = functions.new_inner_scope();
            for (name, value) in variables {
                let cel_value = json_to_cel(value);
                context.add_variable_from_value(name.as_str(), cel_value);
            }
            crate::cost::with_budget(|| quietly(|| CelValue::resolve(&self.tree, &context)))
        });
        let resolved = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                return Err(EvalError::Execution {
                    expression: self.short_source(),
                    reason: execution_reason(&error),
                })
            }
            Err(_) => {
                return Err(EvalError::Execution {
                    expression: self.short_source(),
                    reason: "operation not supported on these values".to_string(),
                })
            }
        };
        // Checked before converting too: values share their parts in CEL
        // (a list of one string a thousand times is small), not in JSON.
        let least_size = least_serialized_size(&resolved, MAX_RESULT_BYTES);
        if least_size > MAX_RESULT_BYTES {
            return Err(EvalError::ResultTooLarge {
                expression: self.short_source(),
                size: least_size,
                limit: MAX_RESULT_BYTES,
            });
        }
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

/// Longest reason a compile or execution error gives, in characters.
const MAX_REASON_CHARS: usize = 512;

/// CEL's message for an execution error, with each value it names described
/// by kind and size instead of printed whole. Apply stores the message in
/// the run on every replica: a printed map lists its entries in the
/// interpreter's random hash order, so replicas would store different
/// messages for one failure, and a printed input can be megabytes long.
#[allow(deprecated)] // the 0.10 variants floe's own functions raise (expr_compat.rs)
fn execution_reason(error: &cel::ExecutionError) -> String {
    use cel::ExecutionError as Cel;
    let reason = match error {
        Cel::UnsupportedTargetType { target } => {
            format!("Invalid argument type: {}", describe_value(target))
        }
        Cel::NotSupportedAsMethod { method, target } => format!(
            "Method {} not supported on {}",
            crate::names::quote_bounded(method),
            describe_value(target)
        ),
        Cel::UnsupportedKeyType(value) => {
            format!("Unable to use {} as a key", describe_value(value))
        }
        Cel::ValuesNotComparable(left, right) => format!(
            "{} can not be compared to {}",
            describe_value(left),
            describe_value(right)
        ),
        Cel::UnsupportedUnaryOperator(operator, value) => format!(
            "Unsupported unary operator '{operator}': {}",
            describe_value(value)
        ),
        Cel::UnsupportedBinaryOperator(operator, left, right) => format!(
            "Unsupported binary operator '{operator}': {}, {}",
            describe_value(left),
            describe_value(right)
        ),
        Cel::UnsupportedMapIndex(value) => {
            format!("Cannot use {} as map index", describe_value(value))
        }
        Cel::UnsupportedListIndex(value) => {
            format!("Cannot use {} as list index", describe_value(value))
        }
        Cel::UnsupportedIndex(index, target) => format!(
            "Cannot use {} to index {}",
            describe_value(index),
            describe_value(target)
        ),
        Cel::DivisionByZero(value) => format!("Division by zero of {}", describe_value(value)),
        Cel::RemainderByZero(value) => format!("Remainder by zero of {}", describe_value(value)),
        other => other.to_string(),
    };
    shorten(&reason, MAX_REASON_CHARS)
}

/// A CEL value for an error message: scalars as CEL prints them, strings
/// quoted within bounds, containers by their size.
fn describe_value(value: &CelValue) -> String {
    match value {
        CelValue::List(items) => format!("a list of {} items", items.len()),
        CelValue::Map(map) => format!("a map of {} entries", map.map.len()),
        CelValue::String(text) => format!("String({})", crate::names::quote_bounded(text)),
        CelValue::Bytes(bytes) => format!("Bytes of {} bytes", bytes.len()),
        CelValue::Function(name, _) => format!("function {}", crate::names::quote_bounded(name)),
        CelValue::Int(_)
        | CelValue::UInt(_)
        | CelValue::Float(_)
        | CelValue::Bool(_)
        | CelValue::Null => format!("{value:?}"),
        _ => "a value of another kind".to_string(),
    }
}

/// A lower bound of a CEL value's serialized JSON size, counted no further
/// than just past `limit`.
fn least_serialized_size(value: &CelValue, limit: usize) -> usize {
    let mut total: usize = 0;
    let mut pending = vec![value];
    while let Some(next) = pending.pop() {
        total = total.saturating_add(match next {
            CelValue::String(text) => text.len() + 2,
            CelValue::Bytes(bytes) => bytes.len(),
            CelValue::List(items) => {
                pending.extend(items.iter());
                items.len() + 1
            }
            CelValue::Map(map) => {
                pending.extend(map.map.values());
                map.map.len() * 4 + 1
            }
            _ => 1,
        });
        if total > limit {
            return total;
        }
    }
    total
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
            &comprehension.iter_range,
            &comprehension.accu_init,
            &comprehension.loop_cond,
            &comprehension.loop_step,
            &comprehension.result,
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

pub(crate) fn children_mut(expr: &mut IdedExpr) -> Vec<&mut IdedExpr> {
    match &mut expr.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) => Vec::new(),
        Expr::Call(call) => call
            .target
            .iter_mut()
            .map(|target| target.as_mut())
            .chain(call.args.iter_mut())
            .collect(),
        Expr::Comprehension(comprehension) => vec![
            &mut comprehension.iter_range,
            &mut comprehension.accu_init,
            &mut comprehension.loop_cond,
            &mut comprehension.loop_step,
            &mut comprehension.result,
        ],
        Expr::List(list) => list.elements.iter_mut().collect(),
        Expr::Map(map) => map
            .entries
            .iter_mut()
            .flat_map(|entry| match &mut entry.expr {
                EntryExpr::StructField(field) => vec![&mut field.value],
                EntryExpr::MapEntry(map_entry) => vec![&mut map_entry.key, &mut map_entry.value],
            })
            .collect(),
        Expr::Select(select) => vec![select.operand.as_mut()],
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
            if let (Expr::Ident(name), Expr::Literal(LiteralValue::String(step))) =
                (&call.args[0].expr, &call.args[1].expr)
            {
                if name == "steps" && !is_bound(name, bound) {
                    analysis.free_variables.insert(name.clone());
                    analysis.referenced_steps.insert(step.inner().to_string());
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

/// Wraps every comprehension range `r` into `@floe_iter(r, step_cost)`,
/// which charges the comprehension before it runs, and makes the costly
/// operators of its body charge by operand size (`cost.rs`).
fn wrap_comprehension_ranges(expr: &mut IdedExpr) {
    let id = expr.id;
    if let Expr::Comprehension(comprehension) = &mut expr.expr {
        crate::cost_rewrite::charge_step(comprehension, id);
    }
    for child in children_mut(expr) {
        wrap_comprehension_ranges(child);
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
            CelValue::Map(cel::objects::Map { map: Arc::new(map) })
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

//! The counted cost budget of one expression evaluation.
//!
//! Apply evaluates expressions on every replica, so the budget cannot use
//! the clock: work is counted, the same on every node. Comprehensions (the
//! only loops in CEL) are charged their range length times their body size
//! before they run, and inside their bodies every operator whose work grows
//! with its operands (`+`, comparisons, `in`, `has`) is charged by operand
//! size, as are the string functions wherever they are called. An
//! evaluation that needs more than [`MAX_EVALUATION_COST`] fails with an
//! error naming the budget; every replica fails it the same way.

use std::cell::Cell;
use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::{functions, Context, ExecutionError, FunctionContext, Value as CelValue};
use cel_parser::ast::{operators, CallExpr, Expr, IdedExpr, SelectExpr};
use cel_parser::reference::Val;

/// Work one evaluation may do, in cost units: one per syntax-tree node a
/// comprehension step evaluates, one per list item or map entry an operator
/// touches, one per [`BYTES_PER_UNIT`] bytes of a string it reads or copies.
pub const MAX_EVALUATION_COST: u64 = 5_000_000;
/// Bytes of a string (or bytes value) one cost unit covers.
const BYTES_PER_UNIT: u64 = 16;
/// A regular expression is compiled at every call: each byte of the pattern
/// costs this many units.
const REGEX_UNITS_PER_BYTE: u64 = 16;

/// The internal function that charges a comprehension and yields its range.
pub(crate) const ITERATION_FUNCTION: &str = "@floe_iter";
/// The internal function a costly operator inside a comprehension body
/// becomes: `@floe_op(left, right, "_+_")`.
const OPERATOR_FUNCTION: &str = "@floe_op";
/// The internal function `has(a.f)` inside a comprehension body becomes.
const HAS_FUNCTION: &str = "@floe_has";
/// Variable names the charged operators evaluate through; `@` cannot be
/// written in CEL source.
const LEFT: &str = "@floe_left";
const RIGHT: &str = "@floe_right";

/// Operators whose work grows with their operands.
const CHARGED_OPERATORS: &[&str] = &[
    operators::ADD,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::LESS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
    operators::IN,
];

thread_local! {
    /// Cost left to the evaluation running on this thread (`None`: none is
    /// running, so nothing is charged).
    static COST_LEFT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `evaluate` with a full budget on this thread.
pub(crate) fn with_budget<T>(evaluate: impl FnOnce() -> T) -> T {
    COST_LEFT.with(|left| left.set(Some(MAX_EVALUATION_COST)));
    let outcome = evaluate();
    COST_LEFT.with(|left| left.set(None));
    outcome
}

fn available() -> u64 {
    COST_LEFT.with(|left| left.get()).unwrap_or(u64::MAX)
}

/// Charges `cost` to the running evaluation.
fn charge(ftx: &FunctionContext, cost: u64) -> Result<(), ExecutionError> {
    COST_LEFT.with(|left| match left.get() {
        None => Ok(()),
        Some(available) if cost <= available => {
            left.set(Some(available - cost));
            Ok(())
        }
        Some(available) => {
            left.set(Some(0));
            Err(ftx.error(format!(
                "evaluation budget of {MAX_EVALUATION_COST} units exceeded: this step needs {cost}, {available} are left"
            )))
        }
    })
}

fn bytes_cost(length: usize) -> u64 {
    length as u64 / BYTES_PER_UNIT + 1
}

/// The cost of touching a value once at its top level.
fn shallow_cost(value: &CelValue) -> u64 {
    match value {
        CelValue::String(text) => bytes_cost(text.len()),
        CelValue::Bytes(bytes) => bytes_cost(bytes.len()),
        CelValue::List(items) => items.len() as u64 + 1,
        CelValue::Map(map) => map.map.len() as u64 + 1,
        _ => 1,
    }
}

/// The cost of walking all of a value, counted no further than `cap`.
fn deep_cost(value: &CelValue, cap: u64) -> u64 {
    let mut total: u64 = 0;
    let mut pending = vec![value];
    while let Some(next) = pending.pop() {
        total = total.saturating_add(shallow_cost(next));
        if total > cap {
            return total;
        }
        match next {
            CelValue::List(items) => pending.extend(items.iter()),
            CelValue::Map(map) => pending.extend(map.map.values()),
            _ => {}
        }
    }
    total
}

/// Registers the charging functions, and charged versions of the string
/// functions, in the evaluation context.
pub(crate) fn register(context: &mut Context<'static>) {
    context.add_function(ITERATION_FUNCTION, iteration_range);
    context.add_function(OPERATOR_FUNCTION, charged_operator);
    context.add_function(HAS_FUNCTION, charged_has);
    context.add_function("contains", charged_contains);
    context.add_function("startsWith", charged_starts_with);
    context.add_function("endsWith", charged_ends_with);
    context.add_function("matches", charged_matches);
    context.add_function("string", charged_string);
}

/// Whether `name` is one of the internal functions (never written in source).
pub(crate) fn is_internal_function(name: &str) -> bool {
    [ITERATION_FUNCTION, OPERATOR_FUNCTION, HAS_FUNCTION].contains(&name)
}

/// A comprehension range: a list as is, a map as its keys in sorted order
/// (the interpreter's map iterates in a random order), anything else an
/// error (the interpreter would panic on it). Charges the range length
/// times `step_cost` before the comprehension runs.
fn iteration_range(ftx: &FunctionContext, range: CelValue, step_cost: i64) -> Result<CelValue, ExecutionError> {
    let items = match range {
        CelValue::List(items) => items,
        CelValue::Map(map) => {
            let mut keys: Vec<cel_interpreter::objects::Key> = map.map.keys().cloned().collect();
            keys.sort();
            Arc::new(keys.into_iter().map(CelValue::from).collect())
        }
        other => return Err(ftx.error(format!("macros iterate over a list or a map, found {:?}", other.type_of()))),
    };
    let step_cost = u64::try_from(step_cost).unwrap_or(u64::MAX).max(1);
    charge(ftx, (items.len() as u64).saturating_mul(step_cost))?;
    Ok(CelValue::List(items))
}

/// `left <operator> right`, charged by operand size, then evaluated by the
/// interpreter itself so the semantics stay its own.
fn charged_operator(
    ftx: &FunctionContext,
    left: CelValue,
    right: CelValue,
    operator: Arc<String>,
) -> Result<CelValue, ExecutionError> {
    let cap = available().saturating_add(1);
    let cost = match operator.as_str() {
        operators::ADD => shallow_cost(&left).saturating_add(shallow_cost(&right)),
        operators::IN => match &right {
            CelValue::Map(_) => deep_cost(&left, cap),
            _ => deep_cost(&right, cap),
        },
        _ => deep_cost(&left, cap).min(deep_cost(&right, cap)),
    };
    charge(ftx, cost)?;
    let mut scope = ftx.ptx.new_inner_scope();
    scope.add_variable_from_value(LEFT, left);
    scope.add_variable_from_value(RIGHT, right);
    let operation = IdedExpr {
        id: 0,
        expr: Expr::Call(CallExpr {
            func_name: operator.to_string(),
            target: None,
            args: vec![identifier(LEFT), identifier(RIGHT)],
        }),
    };
    CelValue::resolve(&operation, &scope)
}

/// `has(value.field)`: the interpreter scans the map's keys.
fn charged_has(ftx: &FunctionContext, value: CelValue, field: Arc<String>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&value))?;
    let mut scope = ftx.ptx.new_inner_scope();
    scope.add_variable_from_value(LEFT, value);
    let test = IdedExpr {
        id: 0,
        expr: Expr::Select(SelectExpr { operand: Box::new(identifier(LEFT)), field: field.to_string(), test: true }),
    };
    CelValue::resolve(&test, &scope)
}

fn charged_contains(ftx: &FunctionContext, this: This<CelValue>, argument: CelValue) -> Result<CelValue, ExecutionError> {
    let cap = available().saturating_add(1);
    charge(ftx, deep_cost(&this.0, cap).saturating_add(shallow_cost(&argument)))?;
    functions::contains(this, argument)
}

fn charged_starts_with(ftx: &FunctionContext, this: This<Arc<String>>, prefix: Arc<String>) -> Result<bool, ExecutionError> {
    charge(ftx, bytes_cost(prefix.len()))?;
    Ok(functions::starts_with(this, prefix))
}

fn charged_ends_with(ftx: &FunctionContext, this: This<Arc<String>>, suffix: Arc<String>) -> Result<bool, ExecutionError> {
    charge(ftx, bytes_cost(suffix.len()))?;
    Ok(functions::ends_with(this, suffix))
}

fn charged_matches(ftx: &FunctionContext, this: This<Arc<String>>, regex: Arc<String>) -> Result<bool, ExecutionError> {
    let pattern_cost = (regex.len() as u64).saturating_mul(REGEX_UNITS_PER_BYTE);
    charge(ftx, bytes_cost(this.0.len()).saturating_add(pattern_cost))?;
    functions::matches(ftx, this, regex)
}

fn charged_string(ftx: &FunctionContext, this: This<CelValue>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&this.0))?;
    functions::string(ftx, this)
}

fn identifier(name: &str) -> IdedExpr {
    IdedExpr { id: 0, expr: Expr::Ident(name.to_string()) }
}

/// Rewrites, inside a comprehension body, every costly operator into
/// `@floe_op(left, right, "op")` and every `has(a.f)` into `@floe_has(a, "f")`.
/// Comprehensions nested in the body are left to their own rewrite.
pub(crate) fn charge_body_operators(expr: &mut IdedExpr) {
    let id = expr.id;
    match &mut expr.expr {
        Expr::Call(call) if call.args.len() == 2 && call.target.is_none() && CHARGED_OPERATORS.contains(&call.func_name.as_str()) => {
            let operator = std::mem::take(&mut call.func_name);
            call.args.push(IdedExpr { id, expr: Expr::Literal(Val::String(operator)) });
            call.func_name = OPERATOR_FUNCTION.to_string();
            for arg in call.args.iter_mut().take(2) {
                charge_body_operators(arg);
            }
        }
        Expr::Select(select) if select.test => {
            let mut operand = std::mem::take(select.operand.as_mut());
            charge_body_operators(&mut operand);
            let field = IdedExpr { id, expr: Expr::Literal(Val::String(std::mem::take(&mut select.field))) };
            expr.expr = Expr::Call(CallExpr { func_name: HAS_FUNCTION.to_string(), target: None, args: vec![operand, field] });
        }
        Expr::Comprehension(comprehension) => {
            // Its range and start run at every step of this body; its own
            // body is charged by its own rewrite.
            charge_body_operators(&mut comprehension.iter_range);
            charge_body_operators(&mut comprehension.accu_init);
        }
        _ => {
            for child in crate::expr::children_mut(expr) {
                charge_body_operators(child);
            }
        }
    }
}

/// The cost of one comprehension step: the nodes its condition and step evaluate.
pub(crate) fn step_cost(condition: &IdedExpr, step: &IdedExpr) -> i64 {
    let nodes = crate::expr::node_count(condition).saturating_add(crate::expr::node_count(step));
    i64::try_from(nodes).unwrap_or(i64::MAX)
}

//! The counted cost budget of one expression evaluation.
//!
//! Apply evaluates expressions on every replica, so the budget cannot use
//! the clock: work is counted, the same on every node. Comprehensions (the
//! only loops in CEL) are charged their range length times their body size
//! before they run, and every operator whose work grows with its operands
//! (`+`, comparisons, `in`, `has`) is charged by operand
//! size, as are the functions whose work grows with their arguments
//! (string functions, conversions, `max`, `min`) wherever they are called. An
//! evaluation that needs more than [`MAX_EVALUATION_COST`] fails with an
//! error naming the budget; every replica fails it the same way.

use std::cell::Cell;
use std::cmp::Ordering;
use std::sync::Arc;

use cel_interpreter::extractors::{Arguments, This};
use cel_interpreter::objects::Key;
use cel_interpreter::{functions, Context, ExecutionError, FunctionContext, Value as CelValue};
use cel_parser::ast::{operators, CallExpr, Expr, IdedExpr};
use cel_parser::reference::Val;

/// Work one evaluation may do, in cost units: [`UNITS_PER_NODE`] per
/// syntax-tree node a comprehension step evaluates (and per charged
/// operator call), one per list item or map entry an operator touches, one
/// per [`BYTES_PER_UNIT`] bytes of a string it reads or copies.
pub const MAX_EVALUATION_COST: u64 = 5_000_000;
/// Units one syntax-tree node evaluation costs: walking the tree costs
/// about ten times more than copying one list item (measured in release
/// builds; see the worst-case test in expr_tests.rs).
const UNITS_PER_NODE: u64 = 10;
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
    context.add_function("bytes", charged_bytes);
    context.add_function("int", charged_int);
    context.add_function("uint", charged_uint);
    context.add_function("double", charged_double);
    context.add_function("max", charged_max);
    context.add_function("min", charged_min);
}

/// Whether `name` is one of the internal functions (never written in source).
pub(crate) fn is_internal_function(name: &str) -> bool {
    [ITERATION_FUNCTION, OPERATOR_FUNCTION, HAS_FUNCTION].contains(&name)
}

/// A comprehension range: a list as is, a map as its keys in sorted order
/// (the interpreter's map iterates in a random order), anything else an
/// error (the interpreter would panic on it). Charges the range length
/// times `step_cost` before the comprehension runs.
fn iteration_range(
    ftx: &FunctionContext,
    range: CelValue,
    step_cost: i64,
) -> Result<CelValue, ExecutionError> {
    let items = match range {
        CelValue::List(items) => items,
        CelValue::Map(map) => {
            let mut keys: Vec<cel_interpreter::objects::Key> = map.map.keys().cloned().collect();
            keys.sort();
            Arc::new(keys.into_iter().map(CelValue::from).collect())
        }
        other => {
            return Err(ftx.error(format!(
                "macros iterate over a list or a map, found {:?}",
                other.type_of()
            )))
        }
    };
    let step_cost = u64::try_from(step_cost)
        .unwrap_or(u64::MAX)
        .max(1)
        .saturating_mul(UNITS_PER_NODE);
    charge(ftx, (items.len() as u64).saturating_mul(step_cost))?;
    Ok(CelValue::List(items))
}

/// `left <operator> right`, charged by operand size, then computed exactly
/// as the interpreter computes the operator itself (objects.rs of
/// cel-interpreter 0.10, `Value::resolve`).
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
    charge(ftx, cost.saturating_add(UNITS_PER_NODE))?;
    let ordering = |left: CelValue, right: CelValue| {
        left.partial_cmp(&right)
            .ok_or(ExecutionError::ValuesNotComparable(left, right))
    };
    match operator.as_str() {
        operators::ADD => left + right,
        operators::SUBSTRACT => left - right,
        operators::MULTIPLY => left * right,
        operators::DIVIDE => left / right,
        operators::MODULO => left % right,
        operators::EQUALS => Ok(CelValue::Bool(left.eq(&right))),
        operators::NOT_EQUALS => Ok(CelValue::Bool(left.ne(&right))),
        operators::LESS => Ok(CelValue::Bool(ordering(left, right)? == Ordering::Less)),
        operators::LESS_EQUALS => Ok(CelValue::Bool(ordering(left, right)? != Ordering::Greater)),
        operators::GREATER => Ok(CelValue::Bool(ordering(left, right)? == Ordering::Greater)),
        operators::GREATER_EQUALS => Ok(CelValue::Bool(ordering(left, right)? != Ordering::Less)),
        operators::IN => match (left, right) {
            (CelValue::String(needle), CelValue::String(text)) => {
                Ok(CelValue::Bool(text.contains(needle.as_str())))
            }
            (item, CelValue::List(items)) => Ok(CelValue::Bool(items.contains(&item))),
            (key, CelValue::Map(map)) => {
                let key: Result<Key, CelValue> = key.try_into();
                Ok(CelValue::Bool(
                    key.is_ok_and(|key| map.map.contains_key(&key)),
                ))
            }
            (left, right) => Err(ExecutionError::ValuesNotComparable(left, right)),
        },
        other => Err(ftx.error(format!("operator {other} is not charged"))),
    }
}

/// `has(value.field)`: true when `value` is a map with that key; the
/// interpreter scans the map's keys for it.
fn charged_has(
    ftx: &FunctionContext,
    value: CelValue,
    field: Arc<String>,
) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&value).saturating_add(UNITS_PER_NODE))?;
    let found = match &value {
        CelValue::Map(map) => map.map.keys().any(|key| key.to_string() == *field),
        _ => false,
    };
    Ok(CelValue::Bool(found))
}

fn charged_contains(
    ftx: &FunctionContext,
    this: This<CelValue>,
    argument: CelValue,
) -> Result<CelValue, ExecutionError> {
    let cap = available().saturating_add(1);
    charge(
        ftx,
        deep_cost(&this.0, cap).saturating_add(shallow_cost(&argument)),
    )?;
    functions::contains(this, argument)
}

fn charged_starts_with(
    ftx: &FunctionContext,
    this: This<Arc<String>>,
    prefix: Arc<String>,
) -> Result<bool, ExecutionError> {
    charge(ftx, bytes_cost(prefix.len()))?;
    Ok(functions::starts_with(this, prefix))
}

fn charged_ends_with(
    ftx: &FunctionContext,
    this: This<Arc<String>>,
    suffix: Arc<String>,
) -> Result<bool, ExecutionError> {
    charge(ftx, bytes_cost(suffix.len()))?;
    Ok(functions::ends_with(this, suffix))
}

fn charged_matches(
    ftx: &FunctionContext,
    this: This<Arc<String>>,
    regex: Arc<String>,
) -> Result<bool, ExecutionError> {
    // Matching reads each byte through the automaton: a unit a byte.
    let pattern_cost = (regex.len() as u64).saturating_mul(REGEX_UNITS_PER_BYTE);
    charge(ftx, (this.0.len() as u64).saturating_add(pattern_cost))?;
    functions::matches(ftx, this, regex)
}

fn charged_string(ftx: &FunctionContext, this: This<CelValue>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&this.0))?;
    functions::string(ftx, this)
}

fn charged_bytes(ftx: &FunctionContext, text: Arc<String>) -> Result<CelValue, ExecutionError> {
    charge(ftx, bytes_cost(text.len()))?;
    functions::bytes(text)
}

fn charged_int(ftx: &FunctionContext, this: This<CelValue>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&this.0))?;
    functions::int(ftx, this)
}

fn charged_uint(ftx: &FunctionContext, this: This<CelValue>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&this.0))?;
    functions::uint(ftx, this)
}

fn charged_double(ftx: &FunctionContext, this: This<CelValue>) -> Result<CelValue, ExecutionError> {
    charge(ftx, shallow_cost(&this.0))?;
    functions::double(ftx, this)
}

/// `max` and `min` walk a list argument, or their arguments.
fn arguments_cost(arguments: &Arguments) -> u64 {
    arguments
        .0
        .iter()
        .map(shallow_cost)
        .fold(1, u64::saturating_add)
}

fn charged_max(ftx: &FunctionContext, arguments: Arguments) -> Result<CelValue, ExecutionError> {
    charge(ftx, arguments_cost(&arguments))?;
    functions::max(arguments)
}

fn charged_min(ftx: &FunctionContext, arguments: Arguments) -> Result<CelValue, ExecutionError> {
    charge(ftx, arguments_cost(&arguments))?;
    functions::min(arguments)
}

/// Rewrites every costly operator into `@floe_op(left, right, "op")` and
/// every `has(a.f)` into `@floe_has(a, "f")`. The body of a comprehension
/// in `expr` is left to that comprehension's own rewrite (`expr.rs`).
pub(crate) fn charge_operators(expr: &mut IdedExpr) {
    let id = expr.id;
    match &mut expr.expr {
        Expr::Call(call)
            if call.args.len() == 2
                && call.target.is_none()
                && CHARGED_OPERATORS.contains(&call.func_name.as_str()) =>
        {
            let operator = std::mem::take(&mut call.func_name);
            call.args.push(IdedExpr {
                id,
                expr: Expr::Literal(Val::String(operator)),
            });
            call.func_name = OPERATOR_FUNCTION.to_string();
            for arg in call.args.iter_mut().take(2) {
                charge_operators(arg);
            }
        }
        Expr::Select(select) if select.test => {
            let mut operand = std::mem::take(select.operand.as_mut());
            charge_operators(&mut operand);
            let field = IdedExpr {
                id,
                expr: Expr::Literal(Val::String(std::mem::take(&mut select.field))),
            };
            expr.expr = Expr::Call(CallExpr {
                func_name: HAS_FUNCTION.to_string(),
                target: None,
                args: vec![operand, field],
            });
        }
        Expr::Comprehension(comprehension) => {
            // Its range and start run at every step of this body; its own
            // body is charged by its own rewrite.
            charge_operators(&mut comprehension.iter_range);
            charge_operators(&mut comprehension.accu_init);
        }
        _ => {
            for child in crate::expr::children_mut(expr) {
                charge_operators(child);
            }
        }
    }
}

/// The cost of one comprehension step: the nodes its condition and step evaluate.
pub(crate) fn step_cost(condition: &IdedExpr, step: &IdedExpr) -> i64 {
    let nodes = crate::expr::node_count(condition).saturating_add(crate::expr::node_count(step));
    i64::try_from(nodes).unwrap_or(i64::MAX)
}

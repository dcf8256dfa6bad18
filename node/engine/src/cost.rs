//! The counted cost budget of one expression evaluation.
//!
//! Apply evaluates expressions on every replica, so the budget cannot use
//! the clock: work is counted, the same on every node. Comprehensions (the
//! only loops in CEL) are charged their range length times their body size
//! before they run; every operator whose work grows with its operands (`+`,
//! comparisons, `in`, `has`) is charged by operand size, as are the
//! functions whose work grows with their arguments (string functions,
//! conversions, `max`, `min`: `cost_functions.rs`) wherever they are
//! called; and so are copies: the interpreter's lists and maps hold their
//! items, so building one copies them in full. The compiler routes all of
//! it through the functions here (`cost_rewrite.rs`). An evaluation that
//! needs more than [`MAX_EVALUATION_COST`] fails with an error naming the
//! budget; every replica fails it the same way.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::HashMap;

use crate::cost_functions::{self, not_comparable, order};
use cel::common::ast::operators;
use cel::common::types::{CelBytes, CelInt, CelList, CelMap, CelString};
use cel::common::value::{CowVal, Val};
use cel::objects::Key;
use cel::{Context, DeclarationError, ExecutionError, FunctionContext, Value as CelValue};

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
pub(crate) const REGEX_UNITS_PER_BYTE: u64 = 16;

/// The internal function that charges a comprehension and yields its range.
pub(crate) const ITERATION_FUNCTION: &str = "@floe_iter";
/// The internal function the first item a `map` or `filter` step appends
/// goes through: `@floe_append(item, comprehension_id, items_appended)`.
pub(crate) const APPEND_FUNCTION: &str = "@floe_append";
/// The internal function an item of a list or map literal goes through.
pub(crate) const COPY_FUNCTION: &str = "@floe_copy";
/// The internal function a costly operator inside a comprehension body
/// becomes: `@floe_op(left, right, "_+_")`.
pub(crate) const OPERATOR_FUNCTION: &str = "@floe_op";
/// The internal function `has(a.f)` inside a comprehension body becomes.
pub(crate) const HAS_FUNCTION: &str = "@floe_has";

/// Operators whose work grows with their operands.
pub(crate) const CHARGED_OPERATORS: &[&str] = &[
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
    /// Items each running `map` or `filter` has appended so far, by the
    /// comprehension's node id (one node never runs inside itself).
    static APPENDED: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
}

/// Runs `evaluate` with a full budget on this thread.
pub(crate) fn with_budget<T>(evaluate: impl FnOnce() -> T) -> T {
    COST_LEFT.with(|left| left.set(Some(MAX_EVALUATION_COST)));
    APPENDED.with(|appended| appended.borrow_mut().clear());
    let outcome = evaluate();
    COST_LEFT.with(|left| left.set(None));
    APPENDED.with(|appended| appended.borrow_mut().clear());
    outcome
}

pub(crate) fn available() -> u64 {
    COST_LEFT.with(|left| left.get()).unwrap_or(u64::MAX)
}

/// Charges `cost` to the running evaluation.
pub(crate) fn charge(ftx: &FunctionContext, cost: u64) -> Result<(), ExecutionError> {
    COST_LEFT.with(|left| match left.get() {
        None => Ok(()),
        Some(available) if cost <= available => {
            left.set(Some(available - cost));
            Ok(())
        }
        Some(available) => {
            left.set(Some(0));
            Err(function_error(ftx, format!(
                "evaluation budget of {MAX_EVALUATION_COST} units exceeded: this step needs {cost}, {available} are left"
            )))
        }
    })
}

pub(crate) fn bytes_cost(length: usize) -> u64 {
    length as u64 / BYTES_PER_UNIT + 1
}

/// The cost of touching a value once at its top level.
pub(crate) fn shallow_cost(value: &dyn Val) -> u64 {
    if let Some(text) = value.downcast_ref::<CelString>() {
        return bytes_cost(text.inner().len());
    }
    if let Some(bytes) = value.downcast_ref::<CelBytes>() {
        return bytes_cost(bytes.inner().len());
    }
    if let Some(list) = value.downcast_ref::<CelList>() {
        return list.inner().len() as u64 + 1;
    }
    if let Some(map) = value.downcast_ref::<CelMap>() {
        return map.inner().len() as u64 + 1;
    }
    1
}

/// The values directly inside a list or a map.
fn parts<'b, 'v>(value: &'b (dyn Val + 'v)) -> Vec<&'b (dyn Val + 'v)> {
    if let Some(list) = value.downcast_ref::<CelList>() {
        return list.inner().iter().map(|item| item.as_ref()).collect();
    }
    if let Some(map) = value.downcast_ref::<CelMap>() {
        return map.inner().values().map(|item| item.as_ref()).collect();
    }
    Vec::new()
}

/// The cost of walking all of a value, counted no further than `cap`.
pub(crate) fn deep_cost(value: &dyn Val, cap: u64) -> u64 {
    let mut total: u64 = 0;
    let mut pending = vec![value];
    while let Some(next) = pending.pop() {
        total = total.saturating_add(shallow_cost(next));
        if total > cap {
            return total;
        }
        pending.extend(parts(next));
    }
    total
}

/// The cost of copying a value: the interpreter's lists and maps hold their
/// items, not shared references to them, so copying a list copies every
/// item in full. A list of numbers costs its shallow cost, one of strings
/// or lists more. Counted no further than `cap`.
pub(crate) fn copy_cost(value: &dyn Val, cap: u64) -> u64 {
    let mut total = shallow_cost(value);
    for part in parts(value) {
        if total > cap {
            return total;
        }
        let is_compound =
            part.downcast_ref::<CelList>().is_some() || part.downcast_ref::<CelMap>().is_some();
        let extra = if is_compound {
            deep_cost(part, cap)
        } else {
            // The list's own count already covers one unit per item.
            shallow_cost(part) - 1
        };
        total = total.saturating_add(extra);
    }
    total
}

/// A function as the interpreter calls it: the target, if any, in
/// `ftx.this`, the evaluated arguments in `ftx.args`.
pub(crate) type NativeFunction = Box<
    dyn for<'c, 'k> Fn(&mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError>
        + Send
        + Sync,
>;

/// The standard functions floe provides itself, each called through an
/// internal name the compiler rewrites calls into (the interpreter's own
/// overloads of these names cannot be replaced): the charged ones, with
/// the behaviour they had under cel-interpreter 0.10 (`contains` also
/// searches lists, maps and bytes; the same conversions and errors), and
/// `size` (`expr_compat.rs`).
const REPLACED_FUNCTIONS: &[(&str, &str)] = &[
    ("size", crate::expr_compat::SIZE_FUNCTION),
    ("contains", "@floe_contains"),
    ("startsWith", "@floe_startsWith"),
    ("endsWith", "@floe_endsWith"),
    ("matches", "@floe_matches"),
    ("string", "@floe_string"),
    ("bytes", "@floe_bytes"),
    ("int", "@floe_int"),
    ("uint", "@floe_uint"),
    ("double", "@floe_double"),
    ("max", "@floe_max"),
    ("min", "@floe_min"),
];

/// Registers the charging functions, and charged versions of the standard
/// functions whose work grows with their arguments, in the evaluation
/// context.
pub(crate) fn register(context: &mut Context<'static, 'static>) -> Result<(), DeclarationError> {
    let functions: [(&str, NativeFunction); 16] = [
        (APPEND_FUNCTION, Box::new(charged_append)),
        (COPY_FUNCTION, Box::new(charged_copy)),
        (ITERATION_FUNCTION, Box::new(iteration_range)),
        (OPERATOR_FUNCTION, Box::new(charged_operator)),
        (HAS_FUNCTION, Box::new(charged_has)),
        ("@floe_contains", Box::new(cost_functions::charged_contains)),
        (
            "@floe_startsWith",
            Box::new(cost_functions::charged_starts_with),
        ),
        (
            "@floe_endsWith",
            Box::new(cost_functions::charged_ends_with),
        ),
        ("@floe_matches", Box::new(cost_functions::charged_matches)),
        ("@floe_string", Box::new(cost_functions::charged_string)),
        ("@floe_bytes", Box::new(cost_functions::charged_bytes)),
        ("@floe_int", Box::new(cost_functions::charged_int)),
        ("@floe_uint", Box::new(cost_functions::charged_uint)),
        ("@floe_double", Box::new(cost_functions::charged_double)),
        ("@floe_max", Box::new(cost_functions::charged_max)),
        ("@floe_min", Box::new(cost_functions::charged_min)),
    ];
    for (name, function) in functions {
        context.add_function(name, function)?;
    }
    Ok(())
}

/// Whether `name` is one of floe's internal functions (never written in
/// source: CEL identifiers cannot start with `@`).
pub(crate) fn is_internal_function(name: &str) -> bool {
    name.starts_with("@floe_")
}

/// The functions an expression may call besides the operators and macros,
/// in the order the error for an unknown function lists them.
pub(crate) const FUNCTION_NAMES: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
];

/// The internal name a call to the standard function `name` is rewritten to.
pub(crate) fn internal_name(name: &str) -> Option<&'static str> {
    REPLACED_FUNCTIONS
        .iter()
        .find(|(standard, _)| *standard == name)
        .map(|(_, internal)| *internal)
}

/// Whether the internal function `name` always returns a bool.
pub(crate) fn returns_bool(name: &str) -> bool {
    name == HAS_FUNCTION
        || ["contains", "startsWith", "endsWith", "matches"]
            .iter()
            .any(|standard| internal_name(standard) == Some(name))
}

/// The name a function is called by in the source: a charged standard
/// function's own name rather than its internal one.
fn public_name<'a>(ftx: &FunctionContext<'a, '_>) -> &'a str {
    REPLACED_FUNCTIONS
        .iter()
        .find(|(_, internal)| *internal == ftx.name)
        .map_or(ftx.name, |(standard, _)| *standard)
}

/// An error of the function being called, naming it as the source does.
pub(crate) fn function_error(ftx: &FunctionContext, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(public_name(ftx), message)
}

/// Takes argument `index` out of the call, leaving null in its place.
pub(crate) fn take_argument<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
    index: usize,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let count = ftx.args.len();
    match ftx.args.get_mut(index) {
        Some(argument) => Ok(std::mem::replace(
            argument,
            CowVal::owned(cel::common::types::CelNull),
        )),
        None => Err(ExecutionError::invalid_argument_count(index + 1, count)),
    }
}

/// A comprehension range: a list as is, a map as its keys in sorted order
/// (the interpreter's map iterates in a random order), anything else an
/// error. Charges the range length times `step_cost` before the
/// comprehension runs, and the copy of its items (the interpreter copies
/// each item into the loop variable).
fn iteration_range<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let range = take_argument(ftx, 0)?;
    let step_cost = int_argument(ftx, 1)?;
    let comprehension = int_argument(ftx, 2)?;
    APPENDED.with(|appended| appended.borrow_mut().insert(comprehension as u64, 0));
    let items: CowVal<'c, 'k> = if range.downcast_ref::<CelList>().is_some() {
        range
    } else if let Some(map) = range.downcast_ref::<CelMap>() {
        let mut keys: Vec<_> = map.inner().keys().collect();
        keys.sort();
        let keys: Vec<Box<dyn Val + 'k>> = keys
            .into_iter()
            .map(|key| key.inner().clone_as_boxed())
            .collect();
        CowVal::owned(CelList::from(keys))
    } else {
        // Named as cel-interpreter 0.10 named the type (`Int`, `String`).
        let found = CelValue::try_from(range.as_ref()).map_or_else(
            |_| range.get_type().name().to_string(),
            |value| format!("{:?}", value.type_of()),
        );
        return Err(ftx.error(format!(
            "macros iterate over a list or a map, found {found}"
        )));
    };
    let length = items
        .downcast_ref::<CelList>()
        .map_or(0, |list| list.inner().len() as u64);
    let step_cost = u64::try_from(step_cost)
        .unwrap_or(u64::MAX)
        .max(1)
        .saturating_mul(UNITS_PER_NODE);
    let cap = available().saturating_add(1);
    let copies = copy_cost(items.as_ref(), cap).saturating_sub(length + 1);
    charge(ftx, length.saturating_mul(step_cost).saturating_add(copies))?;
    Ok(items)
}

/// The int literal the compiler passed as argument `index`.
fn int_argument(ftx: &mut FunctionContext, index: usize) -> Result<i64, ExecutionError> {
    match take_argument(ftx, index)?.downcast_ref::<CelInt>() {
        Some(value) => Ok(*value.inner()),
        None => Err(ftx.error(format!("argument {index} is not an int"))),
    }
}

/// An item of a list or map literal: charged its copy beyond the unit its
/// list or map counts for it.
fn charged_copy<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let value = take_argument(ftx, 0)?;
    let cap = available().saturating_add(1);
    let extra = copy_cost(value.as_ref(), cap).saturating_sub(1);
    if extra > 0 {
        charge(ftx, extra)?;
    }
    Ok(value)
}

/// The first item a `map` or `filter` step appends: charged as `@result +
/// [items]` was charged when the result was copied at every step (the
/// result's length plus one, the appended list's, and a node), with the
/// item's copy.
fn charged_append<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let value = take_argument(ftx, 0)?;
    let comprehension = int_argument(ftx, 1)? as u64;
    let items = u64::try_from(int_argument(ftx, 2)?).unwrap_or(1);
    let length = APPENDED.with(|appended| {
        let mut appended = appended.borrow_mut();
        let length = appended.entry(comprehension).or_insert(0);
        let before = *length;
        *length = before.saturating_add(items);
        before
    });
    let cap = available().saturating_add(1);
    let cost = (length + 1)
        .saturating_add(items)
        .saturating_add(copy_cost(value.as_ref(), cap))
        .saturating_add(UNITS_PER_NODE);
    charge(ftx, cost)?;
    Ok(value)
}

/// The interpreter's error for an operator that does not apply to its operands.
fn no_overload(operator: &str, left: &dyn Val, right: &dyn Val) -> ExecutionError {
    ExecutionError::no_such_overload(
        operator,
        vec![
            left.get_type().name().to_owned(),
            right.get_type().name().to_owned(),
        ],
    )
}

/// `left <operator> right`, charged by operand size, then computed as the
/// interpreter computes the operator itself (`Value::resolve_val` in the
/// `cel` crate's objects.rs), except where cel-interpreter 0.10 differed:
/// it added only numbers of one type, strings and lists, ordered as
/// [`order`] does, and tested `in` on strings as a substring.
fn charged_operator<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let left = take_argument(ftx, 0)?;
    let right = take_argument(ftx, 1)?;
    let operator = match take_argument(ftx, 2)?.downcast_ref::<CelString>() {
        Some(name) => name.inner().to_string(),
        None => return Err(ftx.error("the operator is not a string")),
    };
    let cap = available().saturating_add(1);
    let cost = match operator.as_str() {
        // Adding copies both operands.
        operators::ADD => {
            copy_cost(left.as_ref(), cap).saturating_add(copy_cost(right.as_ref(), cap))
        }
        operators::IN => {
            if right.downcast_ref::<CelMap>().is_some() {
                deep_cost(left.as_ref(), cap)
            } else {
                deep_cost(right.as_ref(), cap)
            }
        }
        _ => deep_cost(left.as_ref(), cap).min(deep_cost(right.as_ref(), cap)),
    };
    charge(ftx, cost.saturating_add(UNITS_PER_NODE))?;
    let (left, right) = (left.as_ref(), right.as_ref());
    let unsupported = |name: &'static str| {
        let left = CelValue::try_from(left).unwrap_or(CelValue::Null);
        let right = CelValue::try_from(right).unwrap_or(CelValue::Null);
        ExecutionError::UnsupportedBinaryOperator(name, left, right)
    };
    // Refused as cel-interpreter 0.10 refused it (the error ends the
    // evaluation, so the operands are converted once at most).
    let ordering = || order(left, right).ok_or_else(|| not_comparable(left, right));
    let boolean = |flag: bool| Ok(CowVal::owned(cel::common::types::CelBool::from(flag)));
    let same_kind = left.get_type().name() == right.get_type().name();
    let addable = ["int", "uint", "double", "string", "list"].contains(&left.get_type().name());
    match operator.as_str() {
        // cel-interpreter 0.10 added numbers of one type, strings and lists,
        // and nothing else (no bytes).
        operators::ADD if !(same_kind && addable) => Err(unsupported("add")),
        operators::ADD => match left.as_adder() {
            Some(adder) => Ok(CowVal::Owned(adder.add(right)?.into_owned())),
            None => Err(unsupported("add")),
        },
        operators::SUBSTRACT => match left.as_subtractor() {
            Some(subtractor) => Ok(CowVal::Owned(subtractor.sub(right)?.into_owned())),
            None => Err(unsupported("sub")),
        },
        operators::MULTIPLY => match left.as_multiplier() {
            Some(multiplier) => Ok(CowVal::Owned(multiplier.mul(right)?.into_owned())),
            None => Err(unsupported("mul")),
        },
        operators::DIVIDE => match left.as_divider() {
            Some(divider) => Ok(CowVal::Owned(divider.div(right)?.into_owned())),
            None => Err(unsupported("div")),
        },
        operators::MODULO => match left.as_modder() {
            Some(modder) => Ok(CowVal::Owned(modder.modulo(right)?.into_owned())),
            None => Err(unsupported("rem")),
        },
        operators::EQUALS => boolean(CowVal::Borrowed(left) == CowVal::Borrowed(right)),
        operators::NOT_EQUALS => boolean(CowVal::Borrowed(left) != CowVal::Borrowed(right)),
        operators::LESS => boolean(ordering()? == Ordering::Less),
        operators::LESS_EQUALS => boolean(ordering()? != Ordering::Greater),
        operators::GREATER => boolean(ordering()? == Ordering::Greater),
        operators::GREATER_EQUALS => boolean(ordering()? != Ordering::Less),
        // As in cel-interpreter 0.10: a substring test on strings, and a
        // value that cannot be a map key is not in the map.
        operators::IN => {
            if let (Some(needle), Some(text)) = (
                left.downcast_ref::<CelString>(),
                right.downcast_ref::<CelString>(),
            ) {
                return boolean(text.inner().contains(needle.inner()));
            }
            let is_collection = right.downcast_ref::<CelList>().is_some()
                || right.downcast_ref::<CelMap>().is_some();
            match right.as_container() {
                Some(container) if is_collection => match container.contains(left) {
                    Ok(found) => boolean(found),
                    Err(_) if right.downcast_ref::<CelMap>().is_some() => boolean(false),
                    Err(_) => Err(no_overload(&operator, left, right)),
                },
                _ => Err(ExecutionError::ValuesNotComparable(
                    CelValue::try_from(left).unwrap_or(CelValue::Null),
                    CelValue::try_from(right).unwrap_or(CelValue::Null),
                )),
            }
        }
        other => Err(ftx.error(format!("operator {other} is not charged"))),
    }
}

/// `has(value.field)`: true when `value` is a map with that key; the
/// interpreter scans the map's keys for it.
fn charged_has<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let value = take_argument(ftx, 0)?;
    let field = take_argument(ftx, 1)?;
    let Some(field) = field.downcast_ref::<CelString>() else {
        return Err(ftx.error("the field is not a string"));
    };
    charge(
        ftx,
        shallow_cost(value.as_ref()).saturating_add(UNITS_PER_NODE),
    )?;
    let found = match value.downcast_ref::<CelMap>() {
        Some(map) => map
            .inner()
            .keys()
            .any(|key| Key::from(key.clone()).to_string() == field.inner()),
        None => false,
    };
    Ok(CowVal::owned(cel::common::types::CelBool::from(found)))
}

//! The semantics floe's expressions had under cel-interpreter 0.10, kept
//! where the `cel` crate's interpreter differs: replicas of two releases
//! must evaluate a flow's expressions alike, and flows already stored must
//! keep their meaning.
//!
//! - truthiness: `&&`, `||`, `!` and `? :` take any value, as 0.10 did
//!   (`null`, `0`, `''`, `[]`, `{}` are false); `a || b` is `a` when `a` is
//!   true, else `b`, and `a && b` is a bool;
//! - indexing: `list[i]` out of range and `map[k]` of a missing key are
//!   `null`, `'abc'[1]` is the byte's one-character string;
//! - `size` of a string counts bytes;
//! - `-x` of anything but an int or a double, and the ordering operators on
//!   values that do not order, fail with 0.10's messages.
//!
//! The compiler rewrites the operators into calls of the functions below,
//! after the cost of every comprehension step is taken (`cost.rs`), so the
//! rewrite does not change what anything is charged.

use cel::common::ast::{operators, CallExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelBytes, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::{Context, DeclarationError, ExecutionError, FunctionContext, Value as CelValue};

use crate::cost::{take_argument, NativeFunction};

const TRUTHY_FUNCTION: &str = "@floe_truthy";
const NOT_FUNCTION: &str = "@floe_not";
const INDEX_FUNCTION: &str = "@floe_index";
const NEGATE_FUNCTION: &str = "@floe_negate";
/// What calls of `size` are rewritten to (`cost.rs` renames them).
pub(crate) const SIZE_FUNCTION: &str = "@floe_size";

/// Registers the functions the rewrite calls.
pub(crate) fn register(context: &mut Context<'static, 'static>) -> Result<(), DeclarationError> {
    let functions: [(&str, NativeFunction); 5] = [
        (NEGATE_FUNCTION, Box::new(negate)),
        (TRUTHY_FUNCTION, Box::new(truthy)),
        (NOT_FUNCTION, Box::new(not)),
        (INDEX_FUNCTION, Box::new(index)),
        (SIZE_FUNCTION, Box::new(size)),
    ];
    for (name, function) in functions {
        context.add_function(name, function)?;
    }
    Ok(())
}

/// `.name` is `name`, as cel-parser 0.10 read it.
pub(crate) fn strip_leading_dots(expr: &mut IdedExpr) {
    if let Expr::Ident(name) = &mut expr.expr {
        if let Some(stripped) = name.strip_prefix('.') {
            *name = stripped.to_string();
        }
    }
    for child in crate::expr::children_mut(expr) {
        strip_leading_dots(child);
    }
}

fn call(id: u64, func_name: &str, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id,
        expr: Expr::Call(CallExpr {
            func_name: func_name.to_string(),
            target: None,
            args,
        }),
    }
}

fn conditional(id: u64, condition: IdedExpr, then: IdedExpr, otherwise: IdedExpr) -> IdedExpr {
    call(id, operators::CONDITIONAL, vec![condition, then, otherwise])
}

fn literal_bool(id: u64, value: bool) -> IdedExpr {
    IdedExpr {
        id,
        expr: Expr::Literal(LiteralValue::Boolean(CelBool::from(value))),
    }
}

/// Whether `expr` (as the cost rewrite left it, before this one) is
/// always a bool when it has a value: then `expr || b` need not evaluate
/// `expr` twice.
fn is_boolean(expr: &IdedExpr) -> bool {
    let Expr::Call(call_expr) = &expr.expr else {
        return matches!(expr.expr, Expr::Literal(LiteralValue::Boolean(_)));
    };
    let name = call_expr.func_name.as_str();
    match name {
        operators::LOGICAL_AND | operators::LOGICAL_NOT => true,
        operators::LOGICAL_OR => call_expr.args.iter().all(is_boolean),
        _ if name == crate::cost::OPERATOR_FUNCTION => {
            let operator = call_expr.args.last().and_then(|last| match &last.expr {
                Expr::Literal(LiteralValue::String(operator)) => Some(operator.inner()),
                _ => None,
            });
            operator.is_some_and(|operator| {
                [
                    operators::EQUALS,
                    operators::NOT_EQUALS,
                    operators::LESS,
                    operators::LESS_EQUALS,
                    operators::GREATER,
                    operators::GREATER_EQUALS,
                    operators::IN,
                ]
                .contains(&operator)
            })
        }
        _ => crate::cost::returns_bool(name),
    }
}

/// Rewrites the logical operators, the conditional and indexing into their
/// 0.10 forms, innermost first (so no generated node is rewritten again).
pub(crate) fn rewrite(expr: &mut IdedExpr) {
    let boolean_left = match &expr.expr {
        Expr::Call(call_expr) if call_expr.func_name == operators::LOGICAL_OR => {
            call_expr.args.first().is_some_and(is_boolean)
        }
        _ => false,
    };
    for child in crate::expr::children_mut(expr) {
        rewrite(child);
    }
    let id = expr.id;
    let Expr::Call(call_expr) = &mut expr.expr else {
        return;
    };
    if call_expr.target.is_some() {
        return;
    }
    let name = call_expr.func_name.as_str();
    let arity = call_expr.args.len();
    let truthy = |operand: IdedExpr| call(id, TRUTHY_FUNCTION, vec![operand]);
    match (name, arity) {
        (operators::LOGICAL_AND, 2) => {
            let right = call_expr.args.pop().unwrap_or_default();
            let left = call_expr.args.pop().unwrap_or_default();
            *expr = conditional(id, truthy(left), truthy(right), literal_bool(id, false));
        }
        (operators::LOGICAL_OR, 2) => {
            let right = call_expr.args.pop().unwrap_or_default();
            let left = call_expr.args.pop().unwrap_or_default();
            *expr = if boolean_left {
                conditional(id, truthy(left), literal_bool(id, true), right)
            } else {
                // The value of a true `left` is the result, and CEL has no
                // binding to keep it: `left` is evaluated again (it is
                // free of side effects; its work is charged again).
                conditional(id, truthy(left.clone()), left, right)
            };
        }
        (operators::LOGICAL_NOT, 1) => call_expr.func_name = NOT_FUNCTION.to_string(),
        (operators::NEGATE, 1) => call_expr.func_name = NEGATE_FUNCTION.to_string(),
        (operators::CONDITIONAL, 3) => {
            let condition = std::mem::take(&mut call_expr.args[0]);
            call_expr.args[0] = truthy(condition);
        }
        (operators::INDEX, 2) => call_expr.func_name = INDEX_FUNCTION.to_string(),
        _ => {}
    }
}

/// cel-interpreter 0.10's truthiness.
fn is_true(value: &dyn Val) -> bool {
    if let Some(flag) = value.downcast_ref::<CelBool>() {
        return *flag.inner();
    }
    if let Some(integer) = value.downcast_ref::<CelInt>() {
        return *integer.inner() != 0;
    }
    if let Some(unsigned) = value.downcast_ref::<CelUInt>() {
        return *unsigned.inner() != 0;
    }
    if let Some(double) = value.downcast_ref::<cel::common::types::CelDouble>() {
        return *double.inner() != 0.0;
    }
    if let Some(text) = value.downcast_ref::<CelString>() {
        return !text.inner().is_empty();
    }
    if let Some(bytes) = value.downcast_ref::<CelBytes>() {
        return !bytes.inner().is_empty();
    }
    if let Some(list) = value.downcast_ref::<CelList>() {
        return !list.inner().is_empty();
    }
    if let Some(map) = value.downcast_ref::<CelMap>() {
        return !map.inner().is_empty();
    }
    false
}

fn boolean<'c, 'k>(flag: bool) -> Result<CowVal<'c, 'k>, ExecutionError> {
    Ok(CowVal::owned(CelBool::from(flag)))
}

fn first_argument<'a, 'c, 'k>(
    ftx: &'a FunctionContext<'c, 'k>,
) -> Result<&'a (dyn Val + 'k), ExecutionError> {
    match ftx.this.as_ref().or(ftx.args.first()) {
        Some(value) => Ok(value.as_ref()),
        None => Err(ExecutionError::missing_argument_or_target()),
    }
}

fn truthy<'c, 'k>(ftx: &mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError> {
    boolean(is_true(first_argument(ftx)?))
}

fn not<'c, 'k>(ftx: &mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError> {
    boolean(!is_true(first_argument(ftx)?))
}

/// `-value`: of an int or a double only.
#[allow(deprecated)] // the 0.10 error variant, for the 0.10 message
fn negate<'c, 'k>(ftx: &mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let value = first_argument(ftx)?;
    if let Some(integer) = value.downcast_ref::<CelInt>() {
        let integer = *integer.inner();
        return match integer.checked_neg() {
            Some(negated) => Ok(CowVal::owned(CelInt::from(negated))),
            None => Err(ExecutionError::Overflow(
                "minus",
                integer.into(),
                integer.into(),
            )),
        };
    }
    if let Some(double) = value.downcast_ref::<cel::common::types::CelDouble>() {
        return Ok(CowVal::owned(cel::common::types::CelDouble::from(
            -*double.inner(),
        )));
    }
    Err(ExecutionError::UnsupportedUnaryOperator(
        "minus",
        as_value(value),
    ))
}

/// `size`: bytes of a string or bytes value, items of a list or a map.
fn size<'c, 'k>(ftx: &mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let value = first_argument(ftx)?;
    let length = if let Some(text) = value.downcast_ref::<CelString>() {
        text.inner().len()
    } else if let Some(bytes) = value.downcast_ref::<CelBytes>() {
        bytes.inner().len()
    } else if let Some(list) = value.downcast_ref::<CelList>() {
        list.inner().len()
    } else if let Some(map) = value.downcast_ref::<CelMap>() {
        map.inner().len()
    } else {
        let shown = CelValue::try_from(value).unwrap_or(CelValue::Null);
        return Err(ExecutionError::function_error(
            "size",
            format!("cannot determine the size of {shown:?}"),
        ));
    };
    Ok(CowVal::owned(CelInt::from(
        i64::try_from(length).unwrap_or(i64::MAX),
    )))
}

/// The part of `container` that `pick` chooses, borrowed when the container
/// is; `null` when there is none.
fn part_of<'c, 'k>(
    container: CowVal<'c, 'k>,
    pick: impl for<'x> Fn(&'x (dyn Val + 'k)) -> Option<&'x (dyn Val + 'k)>,
) -> CowVal<'c, 'k> {
    let found = match container {
        CowVal::Borrowed(value) => pick(value).map(CowVal::Borrowed),
        CowVal::Owned(value) => {
            pick(value.as_ref()).map(|part| CowVal::Owned(part.clone_as_boxed()))
        }
    };
    found.unwrap_or_else(|| CowVal::owned(CelNull))
}

fn as_value(value: &dyn Val) -> CelValue {
    CelValue::try_from(value).unwrap_or(CelValue::Null)
}

/// `container[index]` as cel-interpreter 0.10 evaluated it.
#[allow(deprecated)] // the 0.10 error variants, for the 0.10 messages
fn index<'c, 'k>(ftx: &mut FunctionContext<'c, 'k>) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let container = take_argument(ftx, 0)?;
    let index = take_argument(ftx, 1)?;
    let position = index
        .downcast_ref::<CelInt>()
        .map(|integer| *integer.inner());
    if container.downcast_ref::<CelList>().is_some() {
        let Some(position) = position else {
            return Err(ExecutionError::UnsupportedListIndex(as_value(
                index.as_ref(),
            )));
        };
        // A negative index wraps to a huge one, out of range, as in 0.10.
        let position = position as usize;
        return Ok(part_of(container, |value| {
            value
                .downcast_ref::<CelList>()
                .and_then(|list| list.inner().get(position))
                .map(|item| item.as_ref())
        }));
    }
    if let Some(text) = container.downcast_ref::<CelString>() {
        if let Some(position) = position {
            let start = position as usize;
            let character = text.inner().get(start..start.wrapping_add(1));
            return Ok(match character {
                Some(character) => CowVal::owned(CelString::from(character.to_string())),
                None => CowVal::owned(CelNull),
            });
        }
    }
    if container.downcast_ref::<CelMap>().is_some() {
        let is_key = index.downcast_ref::<CelString>().is_some()
            || index.downcast_ref::<CelBool>().is_some()
            || index.downcast_ref::<CelInt>().is_some()
            || index.downcast_ref::<CelUInt>().is_some();
        if !is_key {
            return Err(ExecutionError::UnsupportedMapIndex(as_value(
                index.as_ref(),
            )));
        }
        // 0.10 found an int key by an equal uint and the other way round.
        let other_key = if let Some(integer) = index.downcast_ref::<CelInt>() {
            u64::try_from(*integer.inner())
                .ok()
                .map(|unsigned| CelMapKey::try_from(CowVal::owned(CelUInt::from(unsigned))))
        } else if let Some(unsigned) = index.downcast_ref::<CelUInt>() {
            i64::try_from(*unsigned.inner())
                .ok()
                .map(|integer| CelMapKey::try_from(CowVal::owned(CelInt::from(integer))))
        } else {
            None
        }
        .transpose()?;
        let key = CelMapKey::try_from(index)?;
        return Ok(part_of(container, |value| {
            let map = value.downcast_ref::<CelMap>()?;
            let item = map
                .inner()
                .get(&key)
                .or_else(|| other_key.as_ref().and_then(|other| map.inner().get(other)));
            item.map(|item| item.as_ref())
        }));
    }
    Err(ExecutionError::UnsupportedIndex(
        as_value(container.as_ref()),
        as_value(index.as_ref()),
    ))
}

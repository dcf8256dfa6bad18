//! The compile-time half of the cost budget (`cost.rs`): rewrites the
//! syntax tree so that every costly operation goes through a charging
//! function.

use cel::common::ast::{
    operators, CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, ListExpr, LiteralValue,
};
use cel::common::types::{CelInt, CelString};

use crate::cost::{
    internal_name, APPEND_FUNCTION, CHARGED_OPERATORS, COPY_FUNCTION, HAS_FUNCTION,
    ITERATION_FUNCTION, OPERATOR_FUNCTION,
};

fn literal_int(id: u64, value: i64) -> IdedExpr {
    IdedExpr {
        id,
        expr: Expr::Literal(LiteralValue::Int(CelInt::from(value))),
    }
}

fn literal_string(id: u64, value: String) -> IdedExpr {
    IdedExpr {
        id,
        expr: Expr::Literal(LiteralValue::String(CelString::from(value))),
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

/// `value` wrapped into `@floe_copy(value)`: building a list or map copies
/// its items in full, so each is charged its copy. Literals are not.
fn charged_copy(value: IdedExpr) -> IdedExpr {
    if matches!(value.expr, Expr::Literal(_)) {
        return value;
    }
    call(value.id, COPY_FUNCTION, vec![value])
}

/// Rewrites every costly operator into `@floe_op(left, right, "op")`,
/// every `has(a.f)` into `@floe_has(a, "f")`, every call of a replaced
/// standard function `f` into one of `@floe_f`, and every item of a list
/// or map literal into `@floe_copy(item)`. The body of a comprehension in
/// `expr` is left to that comprehension's own rewrite ([`charge_step`]).
pub(crate) fn charge_operators(expr: &mut IdedExpr) {
    let id = expr.id;
    match &mut expr.expr {
        Expr::Call(call_expr)
            if call_expr.args.len() == 2
                && call_expr.target.is_none()
                && CHARGED_OPERATORS.contains(&call_expr.func_name.as_str()) =>
        {
            let operator = std::mem::take(&mut call_expr.func_name);
            for arg in call_expr.args.iter_mut() {
                charge_operators(arg);
            }
            call_expr.args.push(literal_string(id, operator));
            call_expr.func_name = OPERATOR_FUNCTION.to_string();
        }
        Expr::Call(call_expr) if internal_name(&call_expr.func_name).is_some() => {
            if let Some(internal) = internal_name(&call_expr.func_name) {
                call_expr.func_name = internal.to_string();
            }
            for child in crate::expr::children_mut(expr) {
                charge_operators(child);
            }
        }
        Expr::Select(select) if select.test => {
            let mut operand = std::mem::take(select.operand.as_mut());
            charge_operators(&mut operand);
            let field = literal_string(id, std::mem::take(&mut select.field));
            *expr = call(id, HAS_FUNCTION, vec![operand, field]);
        }
        Expr::List(list) => charge_list(list, None),
        Expr::Map(map) => {
            for entry in map.entries.iter_mut() {
                if let EntryExpr::MapEntry(map_entry) = &mut entry.expr {
                    charge_operators(&mut map_entry.key);
                    charge_operators(&mut map_entry.value);
                    map_entry.key = charged_copy(std::mem::take(&mut map_entry.key));
                    map_entry.value = charged_copy(std::mem::take(&mut map_entry.value));
                }
            }
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

/// Charges a list literal's items; the first item of the list a `map` or
/// `filter` step appends (`append`: that comprehension's id) also charges
/// the append.
fn charge_list(list: &mut ListExpr, append: Option<u64>) {
    let length = i64::try_from(list.elements.len()).unwrap_or(i64::MAX);
    for (position, element) in list.elements.iter_mut().enumerate() {
        charge_operators(element);
        let value = std::mem::take(element);
        *element = match append {
            Some(comprehension) if position == 0 => {
                let id = value.id;
                let comprehension = i64::try_from(comprehension).unwrap_or(i64::MAX);
                call(
                    id,
                    APPEND_FUNCTION,
                    vec![
                        value,
                        literal_int(id, comprehension),
                        literal_int(id, length),
                    ],
                )
            }
            _ => charged_copy(value),
        };
    }
}

/// The list a `map` or `filter` step appends and the guard of a `filter`,
/// when `comprehension` has that shape (`@result + [item]`, or
/// `guard ? @result + [item] : @result`): the interpreter then builds the
/// result in place instead of copying it at every step.
fn append_step(
    comprehension: &mut ComprehensionExpr,
) -> Option<(&mut ListExpr, Option<&mut IdedExpr>)> {
    let accumulator = comprehension.accu_var.as_str();
    let is_accumulator =
        |expr: &IdedExpr| matches!(&expr.expr, Expr::Ident(name) if name == accumulator);
    if !is_accumulator(&comprehension.result)
        || !matches!(comprehension.loop_cond.expr, Expr::Literal(_))
    {
        return None;
    }
    let is_append = |expr: &IdedExpr| match &expr.expr {
        Expr::Call(add) if add.func_name == operators::ADD && add.target.is_none() => {
            matches!(add.args.as_slice(), [left, right] if is_accumulator(left) && matches!(right.expr, Expr::List(_)))
        }
        _ => false,
    };
    let step = &comprehension.loop_step;
    let guarded = match &step.expr {
        Expr::Call(conditional)
            if conditional.func_name == operators::CONDITIONAL && conditional.target.is_none() =>
        {
            match conditional.args.as_slice() {
                [_, append, otherwise] if is_append(append) && is_accumulator(otherwise) => true,
                _ => return None,
            }
        }
        _ if is_append(step) => false,
        _ => return None,
    };
    let (guard, append) = if guarded {
        let Expr::Call(step_call) = &mut comprehension.loop_step.expr else {
            return None;
        };
        let (guard, rest) = step_call.args.split_first_mut()?;
        (Some(guard), rest.first_mut()?)
    } else {
        (None, &mut comprehension.loop_step)
    };
    let Expr::Call(add) = &mut append.expr else {
        return None;
    };
    let Expr::List(list) = &mut add.args.get_mut(1)?.expr else {
        return None;
    };
    Some((list, guard))
}

/// Rewrites the body of `comprehension` (`id`: its node's id) so that its
/// steps are charged, and its range into `@floe_iter(range, step_cost,
/// id)`, which charges the comprehension before it runs.
pub(crate) fn charge_step(comprehension: &mut ComprehensionExpr, id: u64) {
    let step_cost = step_cost(&comprehension.loop_cond, &comprehension.loop_step);
    charge_operators(&mut comprehension.loop_cond);
    match append_step(comprehension) {
        // `map` and `filter`: the append is charged as if the result were
        // copied at every step, as it was before the interpreter built it
        // in place, so the budget is what it was.
        Some((list, guard)) => {
            if let Some(guard) = guard {
                charge_operators(guard);
            }
            charge_list(list, Some(id));
        }
        None => charge_operators(&mut comprehension.loop_step),
    }
    let range = std::mem::take(&mut comprehension.iter_range);
    let range_id = range.id;
    let comprehension_id = i64::try_from(id).unwrap_or(i64::MAX);
    comprehension.iter_range = call(
        range_id,
        ITERATION_FUNCTION,
        vec![
            range,
            literal_int(range_id, step_cost),
            literal_int(range_id, comprehension_id),
        ],
    );
}

/// The cost of one comprehension step: the nodes its condition and step evaluate.
fn step_cost(condition: &IdedExpr, step: &IdedExpr) -> i64 {
    let nodes = crate::expr::node_count(condition).saturating_add(crate::expr::node_count(step));
    i64::try_from(nodes).unwrap_or(i64::MAX)
}

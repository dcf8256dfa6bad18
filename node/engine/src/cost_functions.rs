//! The standard functions whose work grows with their arguments, charged
//! to the evaluation's budget (`cost.rs`), with the behaviour they had
//! under cel-interpreter 0.10: `contains` also searches lists, maps and
//! bytes; the same conversions, orderings and errors.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::types::{CelInt, CelList, CelString};
use cel::common::value::{CowVal, Val};
use cel::objects::Key;
use cel::{ExecutionError, FunctionContext, Value as CelValue};

use crate::cost::{
    available, bytes_cost, charge, deep_cost, function_error, shallow_cost, REGEX_UNITS_PER_BYTE,
};

/// The receiver of a function called as `this.f(args)` or `f(this, args)`,
/// and the other arguments, converted to values.
pub(crate) fn receiver_and_arguments(
    ftx: &mut FunctionContext,
) -> Result<(CelValue, Vec<CelValue>), ExecutionError> {
    let mut values = Vec::with_capacity(ftx.args.len() + 1);
    if let Some(this) = &ftx.this {
        values.push(CelValue::try_from(this.as_ref())?);
    }
    for argument in &ftx.args {
        values.push(CelValue::try_from(argument.as_ref())?);
    }
    if values.is_empty() {
        return Err(ExecutionError::missing_argument_or_target());
    }
    let this = values.remove(0);
    Ok((this, values))
}

/// The receiver and every argument, before conversion: what is charged.
pub(crate) fn all_arguments<'a, 'c, 'k>(
    ftx: &'a FunctionContext<'c, 'k>,
) -> Vec<&'a (dyn Val + 'k)> {
    ftx.this
        .iter()
        .chain(ftx.args.iter())
        .map(|value| value.as_ref())
        .collect()
}

pub(crate) fn exactly_one(
    ftx: &FunctionContext,
    arguments: Vec<CelValue>,
) -> Result<CelValue, ExecutionError> {
    let count = arguments.len();
    let mut arguments = arguments.into_iter();
    match (arguments.next(), arguments.next()) {
        (Some(argument), None) => Ok(argument),
        _ => Err(function_error(
            ftx,
            format!("expects one argument, found {count}"),
        )),
    }
}

pub(crate) fn string_argument(
    ftx: &FunctionContext,
    value: CelValue,
) -> Result<Arc<String>, ExecutionError> {
    match value {
        CelValue::String(text) => Ok(text),
        other => Err(function_error(
            ftx,
            format!("expects a string, found {}", other.type_of()),
        )),
    }
}

pub(crate) fn into_result<'c, 'k>(value: CelValue) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let boxed: Box<dyn Val> = value.try_into()?;
    Ok(CowVal::Owned(boxed))
}

pub(crate) fn charged_contains<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let cap = available().saturating_add(1);
    let arguments = all_arguments(ftx);
    let cost = match arguments.split_first() {
        Some((this, rest)) => rest
            .iter()
            .map(|argument| shallow_cost(*argument))
            .fold(deep_cost(*this, cap), u64::saturating_add),
        None => 1,
    };
    charge(ftx, cost)?;
    let (this, arguments) = receiver_and_arguments(ftx)?;
    let argument = exactly_one(ftx, arguments)?;
    let found = match this {
        CelValue::List(items) => items.contains(&argument),
        CelValue::Map(map) => {
            let key: Key = argument
                .try_into()
                .map_err(ExecutionError::UnsupportedKeyType)?;
            map.map.contains_key(&key)
        }
        CelValue::String(text) => match argument {
            CelValue::String(needle) => text.contains(needle.as_str()),
            _ => false,
        },
        CelValue::Bytes(bytes) => match argument {
            CelValue::Bytes(needle) => bytes
                .windows(needle.len())
                .any(|window| window == needle.as_slice()),
            _ => false,
        },
        _ => false,
    };
    into_result(CelValue::Bool(found))
}

/// `startsWith` and `endsWith`: the work is the affix's length.
pub(crate) fn charged_affix<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
    test: fn(&str, &str) -> bool,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let (this, arguments) = receiver_and_arguments(ftx)?;
    let affix = string_argument(ftx, exactly_one(ftx, arguments)?)?;
    charge(ftx, bytes_cost(affix.len()))?;
    let this = string_argument(ftx, this)?;
    into_result(CelValue::Bool(test(&this, &affix)))
}

pub(crate) fn charged_starts_with<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_affix(ftx, |text, prefix| text.starts_with(prefix))
}

pub(crate) fn charged_ends_with<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_affix(ftx, |text, suffix| text.ends_with(suffix))
}

pub(crate) fn charged_matches<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let (this, arguments) = receiver_and_arguments(ftx)?;
    let this = string_argument(ftx, this)?;
    let regex = string_argument(ftx, exactly_one(ftx, arguments)?)?;
    // Matching reads each byte through the automaton: a unit a byte.
    let pattern_cost = (regex.len() as u64).saturating_mul(REGEX_UNITS_PER_BYTE);
    charge(ftx, (this.len() as u64).saturating_add(pattern_cost))?;
    match regex::Regex::new(&regex) {
        Ok(compiled) => into_result(CelValue::Bool(compiled.is_match(&this))),
        Err(error) => Err(function_error(
            ftx,
            format!("'{regex}' not a valid regex:\n{error}"),
        )),
    }
}

/// A conversion of one value (`string`, `int`, `uint`, `double`), charged by
/// its size.
pub(crate) fn charged_conversion<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
    convert: fn(&FunctionContext, CelValue) -> Result<CelValue, ExecutionError>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let cost = all_arguments(ftx)
        .first()
        .map_or(1, |this| shallow_cost(*this));
    charge(ftx, cost)?;
    let (this, _) = receiver_and_arguments(ftx)?;
    into_result(convert(ftx, this)?)
}

pub(crate) fn charged_string<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_conversion(ftx, |ftx, this| match this {
        CelValue::String(text) => Ok(CelValue::String(text)),
        CelValue::Int(integer) => Ok(CelValue::String(Arc::new(integer.to_string()))),
        CelValue::UInt(unsigned) => Ok(CelValue::String(Arc::new(unsigned.to_string()))),
        CelValue::Float(double) => Ok(CelValue::String(Arc::new(double.to_string()))),
        CelValue::Bytes(bytes) => Ok(CelValue::String(Arc::new(
            String::from_utf8_lossy(bytes.as_slice()).into(),
        ))),
        other => Err(function_error(
            ftx,
            format!("cannot convert {other:?} to string"),
        )),
    })
}

pub(crate) fn charged_bytes<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_conversion(ftx, |ftx, this| {
        let text = string_argument(ftx, this)?;
        Ok(CelValue::Bytes(Arc::new(text.as_bytes().to_vec())))
    })
}

pub(crate) fn charged_int<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_conversion(ftx, |ftx, this| match this {
        CelValue::String(text) => text
            .parse::<i64>()
            .map(CelValue::Int)
            .map_err(|error| function_error(ftx, format!("string parse error: {error}"))),
        CelValue::Float(double) => {
            if double > i64::MAX as f64 || double < i64::MIN as f64 {
                return Err(function_error(ftx, "integer overflow"));
            }
            Ok(CelValue::Int(double as i64))
        }
        CelValue::Int(integer) => Ok(CelValue::Int(integer)),
        CelValue::UInt(unsigned) => i64::try_from(unsigned)
            .map(CelValue::Int)
            .map_err(|_| function_error(ftx, "integer overflow")),
        other => Err(function_error(
            ftx,
            format!("cannot convert {other:?} to int"),
        )),
    })
}

pub(crate) fn charged_uint<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_conversion(ftx, |ftx, this| match this {
        CelValue::String(text) => text
            .parse::<u64>()
            .map(CelValue::UInt)
            .map_err(|error| function_error(ftx, format!("string parse error: {error}"))),
        CelValue::Float(double) => {
            if double > u64::MAX as f64 || double < u64::MIN as f64 {
                return Err(function_error(ftx, "unsigned integer overflow"));
            }
            Ok(CelValue::UInt(double as u64))
        }
        CelValue::Int(integer) => u64::try_from(integer)
            .map(CelValue::UInt)
            .map_err(|_| function_error(ftx, "unsigned integer overflow")),
        CelValue::UInt(unsigned) => Ok(CelValue::UInt(unsigned)),
        other => Err(function_error(
            ftx,
            format!("cannot convert {other:?} to uint"),
        )),
    })
}

pub(crate) fn charged_double<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_conversion(ftx, |ftx, this| match this {
        CelValue::String(text) => text
            .parse::<f64>()
            .map(CelValue::Float)
            .map_err(|error| function_error(ftx, format!("string parse error: {error}"))),
        CelValue::Float(double) => Ok(CelValue::Float(double)),
        CelValue::Int(integer) => Ok(CelValue::Float(integer as f64)),
        CelValue::UInt(unsigned) => Ok(CelValue::Float(unsigned as f64)),
        other => Err(function_error(
            ftx,
            format!("cannot convert {other:?} to double"),
        )),
    })
}

/// A value cel-interpreter 0.10 ordered.
enum Orderable<'a> {
    Int(i64),
    UInt(u64),
    Double(f64),
    Text(&'a str),
    Bool(bool),
    Null,
}

fn orderable(value: &dyn Val) -> Option<Orderable<'_>> {
    use cel::common::types::{CelBool, CelDouble, CelNull, CelUInt};
    if let Some(integer) = value.downcast_ref::<CelInt>() {
        return Some(Orderable::Int(*integer.inner()));
    }
    if let Some(unsigned) = value.downcast_ref::<CelUInt>() {
        return Some(Orderable::UInt(*unsigned.inner()));
    }
    if let Some(double) = value.downcast_ref::<CelDouble>() {
        return Some(Orderable::Double(*double.inner()));
    }
    if let Some(text) = value.downcast_ref::<CelString>() {
        return Some(Orderable::Text(text.inner()));
    }
    if let Some(flag) = value.downcast_ref::<CelBool>() {
        return Some(Orderable::Bool(*flag.inner()));
    }
    if value.downcast_ref::<CelNull>().is_some() {
        return Some(Orderable::Null);
    }
    None
}

/// How `left` orders against `right`, exactly as cel-interpreter 0.10
/// ordered values (numbers across their types, strings, bools, null equal
/// to null; nothing else).
pub(crate) fn order(left: &dyn Val, right: &dyn Val) -> Option<Ordering> {
    use Orderable::{Bool, Double, Int, Null, Text, UInt};
    match (orderable(left)?, orderable(right)?) {
        (Int(a), Int(b)) => Some(a.cmp(&b)),
        (UInt(a), UInt(b)) => Some(a.cmp(&b)),
        (Double(a), Double(b)) => a.partial_cmp(&b),
        (Text(a), Text(b)) => Some(a.cmp(b)),
        (Bool(a), Bool(b)) => Some(a.cmp(&b)),
        (Null, Null) => Some(Ordering::Equal),
        (Int(a), UInt(b)) => Some(u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))),
        (Int(a), Double(b)) => (a as f64).partial_cmp(&b),
        (UInt(a), Int(b)) => Some(i64::try_from(a).map_or(Ordering::Greater, |a| a.cmp(&b))),
        (UInt(a), Double(b)) => (a as f64).partial_cmp(&b),
        (Double(a), Int(b)) => a.partial_cmp(&(b as f64)),
        (Double(a), UInt(b)) => a.partial_cmp(&(b as f64)),
        _ => None,
    }
}

pub(crate) fn not_comparable(left: &dyn Val, right: &dyn Val) -> ExecutionError {
    ExecutionError::ValuesNotComparable(
        CelValue::try_from(left).unwrap_or(CelValue::Null),
        CelValue::try_from(right).unwrap_or(CelValue::Null),
    )
}

/// `max` and `min` walk a list argument, or their arguments.
pub(crate) fn charged_extreme<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
    keep: Ordering,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    let arguments = all_arguments(ftx);
    let cost = arguments
        .iter()
        .map(|argument| shallow_cost(*argument))
        .fold(1, u64::saturating_add);
    charge(ftx, cost)?;
    let items: Vec<&dyn Val> = match arguments.as_slice() {
        [single] => match single.downcast_ref::<CelList>() {
            Some(list) => list.inner().iter().map(|item| item.as_ref()).collect(),
            None => return Ok(CowVal::Owned(single.clone_as_boxed())),
        },
        all => all.to_vec(),
    };
    let Some((first, rest)) = items.split_first() else {
        return Ok(CowVal::owned(cel::common::types::CelNull));
    };
    let mut best = *first;
    for item in rest {
        match order(best, *item) {
            Some(ordering) if ordering == keep => {}
            Some(_) => best = *item,
            None => return Err(not_comparable(best, *item)),
        }
    }
    Ok(CowVal::Owned(best.clone_as_boxed()))
}

pub(crate) fn charged_max<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_extreme(ftx, Ordering::Greater)
}

pub(crate) fn charged_min<'c, 'k>(
    ftx: &mut FunctionContext<'c, 'k>,
) -> Result<CowVal<'c, 'k>, ExecutionError> {
    charged_extreme(ftx, Ordering::Less)
}

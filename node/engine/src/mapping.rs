//! Mappings: a step's `input` or `output`, one expression or an object tree
//! whose leaves are expressions.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{push_key, EvalError};
use crate::expr::{serialized_size, Expression, MAX_RESULT_BYTES};
use crate::model::Mapping;

/// A mapping whose leaves are compiled, for repeated evaluation.
#[derive(Clone, Debug)]
pub enum CompiledMapping {
    /// One expression for the whole value.
    Expression(Expression),
    /// An object of mappings.
    Object(BTreeMap<String, CompiledMapping>),
}

impl CompiledMapping {
    /// Compiles every leaf; the error names the leaf's path inside the
    /// mapping (`$` is the mapping itself).
    pub fn compile(mapping: &Mapping) -> Result<Self, EvalError> {
        compile_at(mapping, "$")
    }

    /// Evaluates every leaf with `vars`; the result has the mapping's shape.
    pub fn evaluate(&self, vars: &Value) -> Result<Value, EvalError> {
        let value = self.evaluate_at(vars, "$")?;
        let size = serialized_size(&value);
        if size > MAX_RESULT_BYTES {
            return Err(EvalError::ResultTooLarge {
                expression: "(mapping)".to_string(),
                size,
                limit: MAX_RESULT_BYTES,
            });
        }
        Ok(value)
    }

    fn evaluate_at(&self, vars: &Value, path: &str) -> Result<Value, EvalError> {
        match self {
            CompiledMapping::Expression(expression) => {
                expression.evaluate(vars).map_err(|error| match error {
                    EvalError::VariablesNotAnObject { .. } => error,
                    other => EvalError::InMapping {
                        path: path.to_string(),
                        source: Box::new(other),
                    },
                })
            }
            CompiledMapping::Object(fields) => {
                let mut object = Map::new();
                for (key, field) in fields {
                    let value = field.evaluate_at(vars, &push_key(path, key))?;
                    object.insert(key.clone(), value);
                }
                Ok(Value::Object(object))
            }
        }
    }
}

fn compile_at(mapping: &Mapping, path: &str) -> Result<CompiledMapping, EvalError> {
    match mapping {
        Mapping::Expression(source) => Expression::compile(source)
            .map(CompiledMapping::Expression)
            .map_err(|reason| EvalError::Compile {
                path: path.to_string(),
                reason,
            }),
        Mapping::Object(fields) => {
            let mut compiled = BTreeMap::new();
            for (key, field) in fields {
                compiled.insert(key.clone(), compile_at(field, &push_key(path, key))?);
            }
            Ok(CompiledMapping::Object(compiled))
        }
    }
}

/// Compiles and evaluates a mapping in one go. `vars` is a JSON object of
/// variables (`input`, `steps`, and for map tasks `item` and `index`).
pub fn evaluate_mapping(mapping: &Mapping, vars: &Value) -> Result<Value, EvalError> {
    CompiledMapping::compile(mapping)?.evaluate(vars)
}

/// Every leaf expression of a mapping with its JSONPath under `base_path`.
pub(crate) fn leaves<'a>(mapping: &'a Mapping, base_path: &str) -> Vec<(String, &'a str)> {
    let mut found = Vec::new();
    collect_leaves(mapping, base_path, &mut found);
    found
}

fn collect_leaves<'a>(mapping: &'a Mapping, path: &str, found: &mut Vec<(String, &'a str)>) {
    match mapping {
        Mapping::Expression(source) => found.push((path.to_string(), source.as_str())),
        Mapping::Object(fields) => {
            for (key, field) in fields {
                collect_leaves(field, &push_key(path, key), found);
            }
        }
    }
}

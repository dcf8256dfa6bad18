//! Checks a request against the model's signature before it is queued, so a bad
//! request gets an error naming the input instead of failing a whole batch.

use crate::error::{Error, Result};
use crate::signature::{Dim, ModelSignature};
use crate::tensor::{DType, Tensor, TensorMap};

/// Returns the request's item count along dim 0 (1 when the model is not batched).
pub(crate) fn validate_inputs(
    pool: &str,
    signature: &ModelSignature,
    batchable: bool,
    inputs: &TensorMap,
) -> Result<usize> {
    let invalid = |input: &str, reason: String| Error::InvalidInput {
        pool: pool.to_string(),
        input: input.to_string(),
        reason,
    };
    for name in inputs.keys() {
        if signature.input(name).is_none() {
            let known: Vec<&str> = signature
                .inputs
                .iter()
                .map(|spec| spec.name.as_str())
                .collect();
            return Err(invalid(
                name,
                format!("the model has no such input; it takes {known:?}"),
            ));
        }
    }
    let mut batch: Option<(usize, &str)> = None;
    for spec in &signature.inputs {
        let Some(tensor) = inputs.get(&spec.name) else {
            return Err(invalid(
                &spec.name,
                format!(
                    "missing; the model needs {} {}",
                    dtype_name(spec.dtype),
                    spec.shape_string()
                ),
            ));
        };
        if Some(tensor.dtype()) != spec.dtype {
            return Err(invalid(
                &spec.name,
                format!(
                    "is {}, the model needs {}",
                    tensor.dtype(),
                    dtype_name(spec.dtype)
                ),
            ));
        }
        check_shape(tensor, &spec.shape).map_err(|reason| invalid(&spec.name, reason))?;
        if !batchable {
            continue;
        }
        let rows = tensor.batch_len();
        if rows == 0 {
            return Err(invalid(
                &spec.name,
                "dim 0 is 0; send at least one item".into(),
            ));
        }
        match batch {
            None => batch = Some((rows, spec.name.as_str())),
            Some((expected, other)) if expected != rows => {
                return Err(invalid(&spec.name, format!("dim 0 is {rows} but input {other:?} has {expected}; inputs must agree on the batch")));
            }
            Some(_) => {}
        }
    }
    Ok(batch.map_or(1, |(rows, _)| rows))
}

fn dtype_name(dtype: Option<DType>) -> String {
    dtype.map_or_else(|| "an unsupported type".into(), |dtype| dtype.to_string())
}

fn check_shape(tensor: &Tensor, dims: &[Dim]) -> std::result::Result<(), String> {
    let shape = tensor.shape();
    if shape.len() != dims.len() {
        return Err(format!(
            "has rank {} ({shape:?}), the model needs rank {}",
            shape.len(),
            dims.len()
        ));
    }
    for (index, (actual, declared)) in shape.iter().zip(dims).enumerate() {
        if let Dim::Fixed(expected) = declared {
            if actual != expected {
                return Err(format!(
                    "dim {index} is {actual}, the model needs {expected} (shape {shape:?})"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::signature::TensorSpec;

    fn signature() -> ModelSignature {
        let spec = |name: &str, dtype, shape| TensorSpec {
            name: name.into(),
            element_type: String::new(),
            dtype: Some(dtype),
            shape,
        };
        ModelSignature {
            inputs: vec![
                spec(
                    "x",
                    DType::F32,
                    vec![Dim::Dynamic(Some("batch".into())), Dim::Fixed(3)],
                ),
                spec("k", DType::I64, vec![Dim::Dynamic(None), Dim::Fixed(1)]),
            ],
            outputs: vec![],
            metadata: BTreeMap::new(),
            producer: None,
            graph_name: None,
            description: None,
            version: None,
        }
    }

    fn inputs(x_rows: usize, x_width: usize, k_rows: usize) -> TensorMap {
        TensorMap::from([
            (
                "x".into(),
                Tensor::zeros(DType::F32, vec![x_rows, x_width]).unwrap(),
            ),
            (
                "k".into(),
                Tensor::zeros(DType::I64, vec![k_rows, 1]).unwrap(),
            ),
        ])
    }

    fn reason(result: Result<usize>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn valid_inputs_report_their_batch() {
        assert_eq!(
            validate_inputs("p", &signature(), true, &inputs(4, 3, 4)).unwrap(),
            4
        );
        assert_eq!(
            validate_inputs("p", &signature(), false, &inputs(4, 3, 4)).unwrap(),
            1
        );
    }

    #[test]
    fn errors_name_the_pool_the_input_and_the_problem() {
        let sig = signature();
        assert_eq!(
            reason(validate_inputs("p", &sig, true, &inputs(1, 4, 1))),
            "pool p: input \"x\": dim 1 is 4, the model needs 3 (shape [1, 4])"
        );
        assert!(reason(validate_inputs("p", &sig, true, &inputs(2, 3, 1)))
            .contains("inputs must agree on the batch"));
        assert!(reason(validate_inputs("p", &sig, true, &inputs(0, 3, 0))).contains("dim 0 is 0"));
        let mut missing = inputs(1, 3, 1);
        missing.remove("k");
        assert!(reason(validate_inputs("p", &sig, true, &missing))
            .contains("input \"k\": missing; the model needs i64 [?, 1]"));
        let mut extra = inputs(1, 3, 1);
        extra.insert("y".into(), Tensor::zeros(DType::F32, vec![1]).unwrap());
        assert!(reason(validate_inputs("p", &sig, true, &extra)).contains("no such input"));
        let mut wrong_type = inputs(1, 3, 1);
        wrong_type.insert("k".into(), Tensor::zeros(DType::I32, vec![1, 1]).unwrap());
        assert!(reason(validate_inputs("p", &sig, true, &wrong_type))
            .contains("is i32, the model needs i64"));
        let mut wrong_rank = inputs(1, 3, 1);
        wrong_rank.insert("x".into(), Tensor::zeros(DType::F32, vec![3]).unwrap());
        assert!(reason(validate_inputs("p", &sig, true, &wrong_rank)).contains("has rank 1"));
    }
}

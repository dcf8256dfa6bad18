//! Merging requests from different callers into one run along dim 0, and splitting
//! the outputs back. Which requests may share a run is decided by `BatchKey`; when
//! they are taken from the queue is decided by `pool::queue`.

use crate::tensor::{DType, Tensor, TensorMap};

/// Requests may share a batch only when every input has the same name, dtype and
/// dims after dim 0 (an image batch needs equal heights and widths).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BatchKey(Vec<(String, DType, Vec<usize>)>);

impl BatchKey {
    pub(crate) fn of(inputs: &TensorMap) -> BatchKey {
        BatchKey(
            inputs
                .iter()
                .map(|(name, tensor)| {
                    let trailing = tensor.shape().get(1..).unwrap_or_default().to_vec();
                    (name.clone(), tensor.dtype(), trailing)
                })
                .collect(),
        )
    }
}

/// Concatenates each input across requests. Callers pass requests with one `BatchKey`.
pub(crate) fn merge_inputs(requests: &[&TensorMap]) -> Result<TensorMap, String> {
    let Some(first) = requests.first() else {
        return Err("empty batch".into());
    };
    let mut merged = TensorMap::new();
    for name in first.keys() {
        let mut parts: Vec<&Tensor> = Vec::with_capacity(requests.len());
        for request in requests {
            let Some(tensor) = request.get(name) else {
                return Err(format!(
                    "input {name:?} missing from a request in the batch"
                ));
            };
            parts.push(tensor);
        }
        let tensor =
            Tensor::concat_dim0(&parts).map_err(|error| format!("input {name:?}: {error}"))?;
        merged.insert(name.clone(), tensor);
    }
    Ok(merged)
}

/// Splits each output along dim 0 into `items_per_request` parts, in request order.
pub(crate) fn split_outputs(
    outputs: TensorMap,
    items_per_request: &[usize],
) -> Result<Vec<TensorMap>, String> {
    let total: usize = items_per_request.iter().sum();
    let mut per_request: Vec<TensorMap> = vec![TensorMap::new(); items_per_request.len()];
    for (name, tensor) in outputs {
        if tensor.shape().first() != Some(&total) {
            return Err(format!(
                "output {name:?} has shape {:?} for a batch of {total} items; its dim 0 is not the batch",
                tensor.shape()
            ));
        }
        let parts = tensor
            .split_dim0(items_per_request)
            .map_err(|error| format!("output {name:?}: {error}"))?;
        for (request_outputs, part) in per_request.iter_mut().zip(parts) {
            request_outputs.insert(name.clone(), part);
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rows: &[[f32; 2]], ids: &[i64]) -> TensorMap {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        TensorMap::from([
            (
                "x".to_string(),
                Tensor::from_vec(vec![rows.len(), 2], flat).unwrap(),
            ),
            (
                "k".to_string(),
                Tensor::from_vec(vec![ids.len(), 1], ids.to_vec()).unwrap(),
            ),
        ])
    }

    #[test]
    fn key_ignores_dim0_but_not_the_rest() {
        let one = request(&[[1.0, 2.0]], &[1]);
        let two = request(&[[1.0, 2.0], [3.0, 4.0]], &[1, 2]);
        assert_eq!(BatchKey::of(&one), BatchKey::of(&two));
        let wider = TensorMap::from([(
            "x".to_string(),
            Tensor::from_vec(vec![1, 3], vec![0f32; 3]).unwrap(),
        )]);
        let narrow = TensorMap::from([(
            "x".to_string(),
            Tensor::from_vec(vec![1, 2], vec![0f32; 2]).unwrap(),
        )]);
        assert_ne!(BatchKey::of(&wider), BatchKey::of(&narrow));
        let ints = TensorMap::from([(
            "x".to_string(),
            Tensor::from_vec(vec![1, 2], vec![0i64; 2]).unwrap(),
        )]);
        assert_ne!(BatchKey::of(&ints), BatchKey::of(&narrow));
    }

    #[test]
    fn merge_then_split_gives_each_request_its_rows() {
        let a = request(&[[1.0, 2.0]], &[10]);
        let b = request(&[[3.0, 4.0], [5.0, 6.0]], &[20, 30]);
        let c = request(&[[7.0, 8.0]], &[40]);
        let merged = merge_inputs(&[&a, &b, &c]).unwrap();
        assert_eq!(merged["x"].shape(), &[4, 2]);
        assert_eq!(merged["k"].to_vec::<i64>().unwrap(), vec![10, 20, 30, 40]);

        // The "model" passes inputs through, so splitting must give the requests back.
        let parts = split_outputs(merged, &[1, 2, 1]).unwrap();
        assert_eq!(parts, vec![a, b, c]);
    }

    #[test]
    fn split_refuses_outputs_without_a_batch_dim() {
        let outputs = TensorMap::from([(
            "sum".to_string(),
            Tensor::from_vec(vec![1], vec![3.0f32]).unwrap(),
        )]);
        let error = split_outputs(outputs, &[1, 1]).unwrap_err();
        assert!(error.contains("\"sum\""), "{error}");
    }

    #[test]
    fn merge_reports_a_missing_input() {
        let a = request(&[[1.0, 2.0]], &[1]);
        let b = TensorMap::from([(
            "x".to_string(),
            Tensor::from_vec(vec![1, 2], vec![0f32; 2]).unwrap(),
        )]);
        assert!(merge_inputs(&[&a, &b]).unwrap_err().contains("\"k\""));
    }
}

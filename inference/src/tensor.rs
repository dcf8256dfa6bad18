//! `Tensor`: a dense, row-major tensor as plain bytes, for crossing process and node
//! boundaries (gRPC, QUIC, the blob store) without depending on ONNX Runtime types.
//!
//! Data is little-endian whatever the host. Merging requests along dim 0 is a byte
//! concatenation and splitting is slicing, which is what the batcher relies on.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::{ArrayD, ArrayView, Dimension, IxDyn};
use serde::{Deserialize, Serialize};

/// Named tensors: a model's inputs or outputs.
pub type TensorMap = BTreeMap<String, Tensor>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor {dtype}{shape:?}: expected {expected} bytes of data, got {actual}")]
    DataLength {
        dtype: DType,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },

    #[error("tensor shape {shape:?} has more elements than fit in memory")]
    TooLarge { shape: Vec<usize> },

    #[error("tensor shape {shape:?}: {reason}")]
    Layout { shape: Vec<usize>, reason: String },

    #[error("tensor is {actual}, read as {expected}")]
    DTypeMismatch { expected: DType, actual: DType },

    #[error("cannot concatenate along dim 0: {reason}")]
    Concat { reason: String },

    #[error("cannot split along dim 0: {reason}")]
    Split { reason: String },
}

/// A Rust element type a `Tensor` can hold.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn append_le_bytes(values: &[Self], out: &mut Vec<u8>);
    /// `bytes.len()` is a multiple of the element size (checked by the caller).
    fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! numeric_element {
    ($rust:ty, $dtype:ident, $size:literal) => {
        impl Element for $rust {
            const DTYPE: DType = DType::$dtype;
            fn append_le_bytes(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * $size);
                for value in values {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
            fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact($size)
                    .map(|chunk| {
                        let mut raw = [0u8; $size];
                        raw.copy_from_slice(chunk);
                        <$rust>::from_le_bytes(raw)
                    })
                    .collect()
            }
        }
    };
}

numeric_element!(f32, F32, 4);
numeric_element!(f64, F64, 8);
numeric_element!(i8, I8, 1);
numeric_element!(i16, I16, 2);
numeric_element!(i32, I32, 4);
numeric_element!(i64, I64, 8);
numeric_element!(u8, U8, 1);
numeric_element!(u16, U16, 2);
numeric_element!(u32, U32, 4);
numeric_element!(u64, U64, 8);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn append_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&value| u8::from(value)));
    }
    fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&byte| byte != 0).collect()
    }
}

/// Wire form; deserialising goes through `Tensor::new` so a peer cannot hand us a
/// tensor whose data disagrees with its shape.
#[derive(Serialize, Deserialize)]
struct TensorWire {
    dtype: DType,
    shape: Vec<usize>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TensorWire", into = "TensorWire")]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl TryFrom<TensorWire> for Tensor {
    type Error = TensorError;
    fn try_from(wire: TensorWire) -> Result<Self, TensorError> {
        Tensor::new(wire.dtype, wire.shape, wire.data)
    }
}

impl From<Tensor> for TensorWire {
    fn from(tensor: Tensor) -> Self {
        TensorWire {
            dtype: tensor.dtype,
            shape: tensor.shape,
            data: tensor.data,
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}{:?}, {} bytes)",
            self.dtype,
            self.shape,
            self.data.len()
        )
    }
}

fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
        .ok_or_else(|| TensorError::TooLarge {
            shape: shape.to_vec(),
        })
}

impl Tensor {
    /// `data` holds the elements row-major, little-endian.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| TensorError::TooLarge {
                shape: shape.clone(),
            })?;
        if data.len() != expected {
            return Err(TensorError::DataLength {
                dtype,
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { dtype, shape, data })
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Self, TensorError> {
        let bytes = element_count(&shape)?
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| TensorError::TooLarge {
                shape: shape.clone(),
            })?;
        Ok(Tensor {
            dtype,
            shape,
            data: vec![0; bytes],
        })
    }

    pub fn from_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Self, TensorError> {
        Self::from_slice(shape, &values)
    }

    pub fn from_slice<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Self, TensorError> {
        let mut data = Vec::new();
        T::append_le_bytes(values, &mut data);
        Tensor::new(T::DTYPE, shape, data)
    }

    /// Copies any ndarray view (contiguous or not) in logical row-major order.
    pub fn from_array<T: Element, D: Dimension>(array: ArrayView<'_, T, D>) -> Self {
        let shape = array.shape().to_vec();
        let mut data = Vec::with_capacity(array.len() * T::DTYPE.size_bytes());
        match array.as_slice() {
            Some(contiguous) => T::append_le_bytes(contiguous, &mut data),
            None => {
                for value in array.iter() {
                    T::append_le_bytes(std::slice::from_ref(value), &mut data);
                }
            }
        }
        // Length matches the shape by construction, so no validation is needed.
        Tensor {
            dtype: T::DTYPE,
            shape,
            data,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    pub fn element_count(&self) -> usize {
        self.data.len() / self.dtype.size_bytes()
    }

    /// Items along dim 0 (1 for a scalar).
    pub fn batch_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::DTypeMismatch {
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        Ok(T::from_le_bytes_slice(&self.data))
    }

    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>, TensorError> {
        let values = self.to_vec::<T>()?;
        // `new` guaranteed len(values) == product(shape), so this does not fail in practice.
        ArrayD::from_shape_vec(IxDyn(&self.shape), values).map_err(|error| TensorError::Layout {
            shape: self.shape.clone(),
            reason: error.to_string(),
        })
    }

    /// Concatenates tensors along dim 0. All parts must share dtype and the dims after
    /// the first; row-major layout makes this a byte concatenation.
    pub fn concat_dim0(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let Some(first) = parts.first() else {
            return Err(TensorError::Concat {
                reason: "no tensors".into(),
            });
        };
        if first.shape.is_empty() {
            return Err(TensorError::Concat {
                reason: "scalars have no dim 0".into(),
            });
        }
        let mut batch = 0usize;
        let mut bytes = 0usize;
        for part in parts {
            if part.dtype != first.dtype || part.shape.get(1..) != first.shape.get(1..) {
                return Err(TensorError::Concat {
                    reason: format!(
                        "{}{:?} does not match {}{:?} after dim 0",
                        part.dtype, part.shape, first.dtype, first.shape
                    ),
                });
            }
            batch += part.batch_len();
            bytes += part.data.len();
        }
        let mut data = Vec::with_capacity(bytes);
        for part in parts {
            data.extend_from_slice(&part.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = batch;
        Ok(Tensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }

    /// Splits along dim 0 into parts of the given sizes, which must add up to dim 0.
    pub fn split_dim0(&self, sizes: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let Some(&total) = self.shape.first() else {
            return Err(TensorError::Split {
                reason: "scalar has no dim 0".into(),
            });
        };
        let requested: usize = sizes.iter().sum();
        if requested != total {
            return Err(TensorError::Split {
                reason: format!(
                    "sizes add up to {requested}, dim 0 is {total} in {:?}",
                    self.shape
                ),
            });
        }
        let row_bytes = self.data.len().checked_div(total).unwrap_or(0);
        let mut parts = Vec::with_capacity(sizes.len());
        let mut offset = 0usize;
        for &size in sizes {
            let end = offset + size * row_bytes;
            let mut shape = self.shape.clone();
            shape[0] = size;
            parts.push(Tensor {
                dtype: self.dtype,
                shape,
                data: self.data[offset..end].to_vec(),
            });
            offset = end;
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};

    #[test]
    fn new_rejects_data_that_disagrees_with_shape() {
        let error = Tensor::new(DType::F32, vec![2, 3], vec![0; 23]).unwrap_err();
        assert_eq!(
            error,
            TensorError::DataLength {
                dtype: DType::F32,
                shape: vec![2, 3],
                expected: 24,
                actual: 23
            }
        );
        assert!(Tensor::new(DType::F32, vec![usize::MAX, 2], vec![]).is_err());
    }

    #[test]
    fn f32_and_i64_round_trip_through_ndarray() {
        let floats = array![[1.5f32, -2.0, 3.25], [0.0, 7.0, -0.5]].into_dyn();
        let tensor = Tensor::from_array(floats.view());
        assert_eq!(tensor.shape(), &[2, 3]);
        assert_eq!(tensor.dtype(), DType::F32);
        assert_eq!(tensor.data().len(), 24);
        assert_eq!(tensor.to_array::<f32>().unwrap(), floats);

        let ints = array![[i64::MIN, 0], [42, i64::MAX]].into_dyn();
        let tensor = Tensor::from_array(ints.view());
        assert_eq!(tensor.to_array::<i64>().unwrap(), ints);
        assert_eq!(
            tensor.to_vec::<f32>().unwrap_err(),
            TensorError::DTypeMismatch {
                expected: DType::F32,
                actual: DType::I64
            }
        );
    }

    #[test]
    fn non_contiguous_views_are_copied_in_logical_order() {
        let matrix = array![[1u8, 2, 3], [4, 5, 6]];
        let transposed = matrix.t();
        let tensor = Tensor::from_array(transposed);
        assert_eq!(tensor.shape(), &[3, 2]);
        assert_eq!(tensor.to_vec::<u8>().unwrap(), vec![1, 4, 2, 5, 3, 6]);
        let column = matrix.slice(s![.., 1]);
        assert_eq!(
            Tensor::from_array(column).to_vec::<u8>().unwrap(),
            vec![2, 5]
        );
    }

    #[test]
    fn bytes_are_little_endian() {
        let tensor = Tensor::from_vec(vec![1], vec![1.0f32]).unwrap();
        assert_eq!(tensor.data(), &1.0f32.to_le_bytes());
        let tensor = Tensor::from_vec(vec![2], vec![true, false]).unwrap();
        assert_eq!(tensor.data(), &[1, 0]);
    }

    #[test]
    fn concat_then_split_returns_the_parts() {
        let a = Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        let b = Tensor::from_vec(vec![3, 2], vec![3.0f32, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        let merged = Tensor::concat_dim0(&[&a, &b]).unwrap();
        assert_eq!(merged.shape(), &[4, 2]);
        assert_eq!(
            merged.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        let parts = merged.split_dim0(&[1, 3]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_refuses_mismatched_trailing_dims_and_dtypes() {
        let a = Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        let b = Tensor::from_vec(vec![1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let c = Tensor::from_vec(vec![1, 2], vec![1i64, 2]).unwrap();
        assert!(matches!(
            Tensor::concat_dim0(&[&a, &b]),
            Err(TensorError::Concat { .. })
        ));
        assert!(matches!(
            Tensor::concat_dim0(&[&a, &c]),
            Err(TensorError::Concat { .. })
        ));
        assert!(matches!(
            Tensor::concat_dim0(&[]),
            Err(TensorError::Concat { .. })
        ));
    }

    #[test]
    fn split_refuses_sizes_that_do_not_add_up() {
        let a = Tensor::from_vec(vec![3, 1], vec![1i64, 2, 3]).unwrap();
        assert!(matches!(
            a.split_dim0(&[1, 1]),
            Err(TensorError::Split { .. })
        ));
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let tensor = Tensor::from_vec(vec![2, 2], vec![1i64, -2, 3, -4]).unwrap();
        let json = serde_json::to_string(&tensor).unwrap();
        let back: Tensor = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tensor);
        let bad = r#"{"dtype":"f32","shape":[2],"data":[0,0,0,0]}"#;
        let error = serde_json::from_str::<Tensor>(bad).unwrap_err().to_string();
        assert!(error.contains("expected 8 bytes"), "{error}");
    }
}

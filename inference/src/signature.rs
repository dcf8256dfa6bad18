//! What a model takes and returns, read from the ONNX file by ONNX Runtime itself, so
//! a registered model is validated (and described to operators) before any pool runs it.

use std::collections::BTreeMap;
use std::fmt;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::OrtRuntime;
use crate::session::{build_session, SessionConfig};
use crate::tensor::DType;

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    /// Any size at run time; the symbolic name when the model gives one.
    Dynamic(Option<String>),
}

impl Dim {
    pub fn is_dynamic(&self) -> bool {
        matches!(self, Dim::Dynamic(_))
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(size) => write!(f, "{size}"),
            Dim::Dynamic(Some(name)) => write!(f, "{name}"),
            Dim::Dynamic(None) => f.write_str("?"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// ONNX Runtime's name for the value's type, e.g. `Float32` or `Sequence<...>`.
    pub element_type: String,
    /// `None` when floe cannot carry this type (strings, sequences, maps, f16...).
    pub dtype: Option<DType>,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }

    fn from_outlet(name: &str, value_type: &ValueType) -> TensorSpec {
        match value_type {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => {
                let dims = shape
                    .iter()
                    .enumerate()
                    .map(|(index, &size)| {
                        if size >= 0 {
                            return Dim::Fixed(size as usize);
                        }
                        // ORT reports unnamed dims as "" or "?".
                        let symbol = dimension_symbols
                            .get(index)
                            .filter(|symbol| !symbol.is_empty() && *symbol != "?");
                        Dim::Dynamic(symbol.cloned())
                    })
                    .collect();
                TensorSpec {
                    name: name.to_string(),
                    element_type: format!("{ty:?}"),
                    dtype: dtype_from_ort(*ty),
                    shape: dims,
                }
            }
            other => TensorSpec {
                name: name.to_string(),
                element_type: other.to_string(),
                dtype: None,
                shape: Vec::new(),
            },
        }
    }
}

pub(crate) fn dtype_from_ort(element: TensorElementType) -> Option<DType> {
    Some(match element {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Custom metadata (`metadata_props`), e.g. PP-OCR rec's `character` list.
    pub metadata: BTreeMap<String, String>,
    pub producer: Option<String>,
    pub graph_name: Option<String>,
    pub description: Option<String>,
    pub version: Option<i64>,
}

impl ModelSignature {
    pub(crate) fn from_session(model: &str, session: &Session) -> Result<ModelSignature> {
        let inputs = session
            .inputs()
            .iter()
            .map(|o| TensorSpec::from_outlet(o.name(), o.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| TensorSpec::from_outlet(o.name(), o.dtype()))
            .collect();
        let reading = |error: ort::Error| Error::InvalidModel {
            model: model.to_string(),
            reason: format!("reading metadata: {error}"),
        };
        let metadata_reader = session.metadata().map_err(reading)?;
        let mut metadata = BTreeMap::new();
        for key in metadata_reader.custom_keys().map_err(reading)? {
            if let Some(value) = metadata_reader.custom(&key) {
                metadata.insert(key, value);
            }
        }
        let non_empty = |value: Option<String>| value.filter(|text| !text.is_empty());
        Ok(ModelSignature {
            inputs,
            outputs,
            metadata,
            producer: non_empty(metadata_reader.producer()),
            graph_name: non_empty(metadata_reader.name()),
            description: non_empty(metadata_reader.description()),
            version: metadata_reader.version(),
        })
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|spec| spec.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|spec| spec.name == name)
    }

    /// True when requests can be merged along dim 0: every input and output has a
    /// dynamic first dimension (outputs too, or we could not split the results back).
    pub fn has_dynamic_batch_dim(&self) -> bool {
        let leading_dynamic = |spec: &TensorSpec| spec.shape.first().is_some_and(Dim::is_dynamic);
        !self.inputs.is_empty()
            && self.inputs.iter().all(leading_dynamic)
            && self.outputs.iter().all(leading_dynamic)
    }

    /// The first input or output whose type floe cannot carry, as an error.
    pub fn check_supported(&self, model: &str) -> Result<()> {
        for (role, spec) in self
            .inputs
            .iter()
            .map(|s| ("input", s))
            .chain(self.outputs.iter().map(|s| ("output", s)))
        {
            if spec.dtype.is_none() {
                return Err(Error::UnsupportedModel {
                    model: model.to_string(),
                    reason: format!(
                        "{role} {:?} has type {}, floe carries numeric and bool tensors only",
                        spec.name, spec.element_type
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Loads `model_bytes` in ONNX Runtime (one thread, CPU) and describes it. Bytes that
/// are not an ONNX model give `Error::InvalidModel` naming `model`.
pub fn inspect_model(
    runtime: &OrtRuntime,
    model: &str,
    model_bytes: &[u8],
) -> Result<ModelSignature> {
    let session = build_session(runtime, model, model_bytes, &SessionConfig::inspection())
        .map_err(|error| match error {
            Error::SessionCreate { reason, .. } => Error::InvalidModel {
                model: model.to_string(),
                reason,
            },
            other => other,
        })?;
    ModelSignature::from_session(model, &session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            element_type: "Float32".into(),
            dtype: Some(DType::F32),
            shape,
        }
    }

    #[test]
    fn batch_dim_needs_every_input_and_output_dynamic_first() {
        let dynamic = || Dim::Dynamic(Some("batch".into()));
        let mut signature = ModelSignature {
            inputs: vec![spec("x", vec![dynamic(), Dim::Fixed(3)])],
            outputs: vec![spec("y", vec![dynamic(), Dim::Fixed(3)])],
            metadata: BTreeMap::new(),
            producer: None,
            graph_name: None,
            description: None,
            version: None,
        };
        assert!(signature.has_dynamic_batch_dim());
        signature.outputs.push(spec("scalar", vec![]));
        assert!(!signature.has_dynamic_batch_dim());
        signature.outputs.pop();
        signature
            .inputs
            .push(spec("fixed", vec![Dim::Fixed(1), Dim::Fixed(3)]));
        assert!(!signature.has_dynamic_batch_dim());
    }

    #[test]
    fn dims_serialize_compactly() {
        let shape = vec![
            Dim::Dynamic(Some("batch".into())),
            Dim::Dynamic(None),
            Dim::Fixed(48),
        ];
        let json = serde_json::to_string(&shape).unwrap();
        assert_eq!(json, r#"["batch",null,48]"#);
        let back: Vec<Dim> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shape);
    }
}

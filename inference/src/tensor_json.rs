//! Tensors as JSON, the form they take in flow data and task payloads:
//! `{"dtype": "f32", "shape": [1, 3], "b64": "<little-endian bytes>"}`, or
//! `"data": [numbers]` instead of `b64` for small, hand-written values.
//! Base64 of the raw bytes is exact (no float printing round trip) and a
//! third of the size of a JSON number list.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::tensor::{DType, Tensor, TensorMap};

/// How `tensor_to_json` writes the elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `b64`: the little-endian bytes, standard base64.
    #[default]
    Base64,
    /// `data`: a flat list of numbers (booleans for `bool`).
    List,
}

/// A tensor that could not be read from JSON; `path` names where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JsonTensorError {
    pub path: String,
    pub reason: String,
}

/// Most bytes of a client's name (a tensor, a field, a dtype) an error quotes.
const MAX_QUOTED_BYTES: usize = 64;

/// `text` cut to [`MAX_QUOTED_BYTES`] at a character boundary, with its
/// length when cut: an error names the offending value without echoing a
/// megabyte of it (the API carries the message in a status header).
fn bounded(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return text.to_string();
    }
    let mut cut = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

fn problem(path: &str, reason: impl Into<String>) -> JsonTensorError {
    JsonTensorError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

pub fn dtype_from_name(name: &str) -> Option<DType> {
    Some(match name {
        "f32" | "float32" | "float" => DType::F32,
        "f64" | "float64" | "double" => DType::F64,
        "i8" | "int8" => DType::I8,
        "i16" | "int16" => DType::I16,
        "i32" | "int32" => DType::I32,
        "i64" | "int64" => DType::I64,
        "u8" | "uint8" => DType::U8,
        "u16" | "uint16" => DType::U16,
        "u32" | "uint32" => DType::U32,
        "u64" | "uint64" => DType::U64,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// One tensor from its JSON form; `path` is used in errors.
pub fn tensor_from_json(value: &Value, path: &str) -> Result<Tensor, JsonTensorError> {
    let Value::Object(fields) = value else {
        return Err(problem(
            path,
            "a tensor is an object with dtype, shape and b64 or data",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "dtype" | "shape" | "b64" | "data"))
    {
        return Err(problem(
            &format!("{path}.{}", bounded(unknown)),
            "unknown tensor field (expected dtype, shape, b64 or data)",
        ));
    }
    let dtype_path = format!("{path}.dtype");
    let dtype = match fields.get("dtype") {
        Some(Value::String(name)) => dtype_from_name(name)
            .ok_or_else(|| problem(&dtype_path, format!("unknown dtype {:?}", bounded(name))))?,
        Some(_) => return Err(problem(&dtype_path, "dtype is a string such as \"f32\"")),
        None => return Err(problem(&dtype_path, "missing")),
    };
    let shape_path = format!("{path}.shape");
    let shape = match fields.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .enumerate()
            .map(|(i, dim)| {
                dim.as_u64()
                    .and_then(|dim| usize::try_from(dim).ok())
                    .ok_or_else(|| {
                        problem(
                            &format!("{shape_path}[{i}]"),
                            "a dimension is a non-negative integer",
                        )
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?,
        Some(_) => return Err(problem(&shape_path, "shape is a list of integers")),
        None => return Err(problem(&shape_path, "missing")),
    };
    let data = match (fields.get("b64"), fields.get("data")) {
        (Some(Value::String(text)), None) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|err| problem(&format!("{path}.b64"), format!("not base64: {err}")))?,
        (Some(_), None) => return Err(problem(&format!("{path}.b64"), "b64 is a base64 string")),
        (None, Some(Value::Array(values))) => list_bytes(dtype, values, &format!("{path}.data"))?,
        (None, Some(_)) => {
            return Err(problem(
                &format!("{path}.data"),
                "data is a flat list of numbers",
            ))
        }
        (Some(_), Some(_)) => return Err(problem(path, "give either b64 or data, not both")),
        (None, None) => return Err(problem(path, "missing b64 or data")),
    };
    Tensor::new(dtype, shape, data).map_err(|err| problem(path, err.to_string()))
}

fn list_bytes(dtype: DType, values: &[Value], path: &str) -> Result<Vec<u8>, JsonTensorError> {
    let mut out = Vec::with_capacity(values.len() * dtype.size_bytes());
    for (i, value) in values.iter().enumerate() {
        let bad = || problem(&format!("{path}[{i}]"), format!("not a {dtype} value"));
        match dtype {
            DType::Bool => out.push(u8::from(value.as_bool().ok_or_else(bad)?)),
            DType::F32 => {
                out.extend_from_slice(&(value.as_f64().ok_or_else(bad)? as f32).to_le_bytes())
            }
            DType::F64 => out.extend_from_slice(&value.as_f64().ok_or_else(bad)?.to_le_bytes()),
            DType::I8 => out.extend_from_slice(&int::<i8>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::I16 => out.extend_from_slice(&int::<i16>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::I32 => out.extend_from_slice(&int::<i32>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::I64 => out.extend_from_slice(&value.as_i64().ok_or_else(bad)?.to_le_bytes()),
            DType::U8 => out.extend_from_slice(&uint::<u8>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::U16 => out.extend_from_slice(&uint::<u16>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::U32 => out.extend_from_slice(&uint::<u32>(value).ok_or_else(bad)?.to_le_bytes()),
            DType::U64 => out.extend_from_slice(&value.as_u64().ok_or_else(bad)?.to_le_bytes()),
        }
    }
    Ok(out)
}

fn int<T: TryFrom<i64>>(value: &Value) -> Option<T> {
    value.as_i64().and_then(|v| T::try_from(v).ok())
}

fn uint<T: TryFrom<u64>>(value: &Value) -> Option<T> {
    value.as_u64().and_then(|v| T::try_from(v).ok())
}

/// The JSON form of a tensor.
pub fn tensor_to_json(tensor: &Tensor, encoding: Encoding) -> Value {
    let mut fields = Map::new();
    fields.insert("dtype".into(), Value::from(tensor.dtype().name()));
    fields.insert("shape".into(), Value::from(tensor.shape().to_vec()));
    match encoding {
        Encoding::Base64 => {
            fields.insert(
                "b64".into(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(tensor.data())),
            );
        }
        Encoding::List => {
            fields.insert("data".into(), Value::Array(list_values(tensor)));
        }
    }
    Value::Object(fields)
}

fn list_values(tensor: &Tensor) -> Vec<Value> {
    let size = tensor.dtype().size_bytes();
    tensor
        .data()
        .chunks_exact(size)
        .map(|b| match tensor.dtype() {
            DType::Bool => Value::from(b[0] != 0),
            DType::F32 => number(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            DType::F64 => number(f64::from_le_bytes(b.try_into().unwrap_or_default())),
            DType::I8 => Value::from(b[0] as i8),
            DType::I16 => Value::from(i16::from_le_bytes([b[0], b[1]])),
            DType::I32 => Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DType::I64 => Value::from(i64::from_le_bytes(b.try_into().unwrap_or_default())),
            DType::U8 => Value::from(b[0]),
            DType::U16 => Value::from(u16::from_le_bytes([b[0], b[1]])),
            DType::U32 => Value::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DType::U64 => Value::from(u64::from_le_bytes(b.try_into().unwrap_or_default())),
        })
        .collect()
}

/// JSON has no NaN or infinity: those become null.
fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// A model's named inputs from a JSON object of tensors.
pub fn tensors_from_json(value: &Value, path: &str) -> Result<TensorMap, JsonTensorError> {
    let Value::Object(fields) = value else {
        return Err(problem(path, "inputs are an object of input name → tensor"));
    };
    fields
        .iter()
        .map(|(name, tensor)| {
            Ok((
                name.clone(),
                tensor_from_json(tensor, &format!("{path}.{}", bounded(name)))?,
            ))
        })
        .collect()
}

/// A model's named outputs as a JSON object.
pub fn tensors_to_json(tensors: &TensorMap, encoding: Encoding) -> Value {
    Value::Object(
        tensors
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor_to_json(tensor, encoding)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A long tensor name, field name or dtype is quoted cut, with its
    /// length: the whole error stays small enough for a status message.
    #[test]
    fn errors_quote_long_names_cut() {
        let long = "n".repeat(30_000);
        let inputs = [
            json!({ long.clone(): {"dtype": "f32", "shape": [1]} }),
            json!({"x": {"dtype": "f32", "shape": [1], long.clone(): 1}}),
            json!({"x": {"dtype": long.clone(), "shape": [1], "data": [1]}}),
        ];
        for input in inputs {
            let error = tensors_from_json(&input, "$").unwrap_err().to_string();
            assert!(
                error.len() < 300,
                "{} bytes: {}",
                error.len(),
                &error[..200]
            );
            assert!(error.contains("… (30000 bytes)"), "{error}");
        }
    }

    #[test]
    fn base64_round_trip_is_exact() {
        let tensor =
            Tensor::from_vec(vec![2, 2], vec![0.1f32, -2.5, f32::MIN_POSITIVE, 1e30]).unwrap();
        let back = tensor_from_json(&tensor_to_json(&tensor, Encoding::Base64), "x").unwrap();
        assert_eq!(back, tensor);
    }

    #[test]
    fn list_form_reads_and_writes_every_dtype() {
        let value = json!({"dtype": "i64", "shape": [3], "data": [1, -2, 3]});
        let tensor = tensor_from_json(&value, "x").unwrap();
        assert_eq!(tensor.to_vec::<i64>().unwrap(), vec![1, -2, 3]);
        assert_eq!(tensor_to_json(&tensor, Encoding::List), value);
        let flags = tensor_from_json(
            &json!({"dtype": "bool", "shape": [2], "data": [true, false]}),
            "x",
        )
        .unwrap();
        assert_eq!(
            tensor_to_json(&flags, Encoding::List)["data"],
            json!([true, false])
        );
        let floats = tensor_from_json(
            &json!({"dtype": "float32", "shape": [1, 2], "data": [0.5, 2]}),
            "x",
        )
        .unwrap();
        assert_eq!(floats.to_vec::<f32>().unwrap(), vec![0.5, 2.0]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!([1, 2]), "in.x", "a tensor is an object"),
            (
                json!({"dtype": "f16", "shape": [1], "data": [1]}),
                "in.x.dtype",
                "unknown dtype",
            ),
            (
                json!({"dtype": "f32", "shape": [1, -1], "data": [1]}),
                "in.x.shape[1]",
                "non-negative",
            ),
            (
                json!({"dtype": "f32", "shape": [2], "data": [1]}),
                "in.x",
                "expected 8 bytes",
            ),
            (
                json!({"dtype": "u8", "shape": [2], "data": [1, 300]}),
                "in.x.data[1]",
                "not a u8",
            ),
            (
                json!({"dtype": "f32", "shape": [1], "b64": "%%%"}),
                "in.x.b64",
                "not base64",
            ),
            (
                json!({"dtype": "f32", "shape": [1]}),
                "in.x",
                "missing b64 or data",
            ),
            (
                json!({"dtype": "f32", "shape": [1], "data": [1], "extra": 1}),
                "in.x.extra",
                "unknown tensor field",
            ),
        ];
        for (value, path, reason) in cases {
            let err = tensors_from_json(&json!({ "x": value }), "in").unwrap_err();
            assert_eq!(err.path, path, "{err}");
            assert!(err.reason.contains(reason), "{err} should say {reason:?}");
        }
    }

    #[test]
    fn non_finite_floats_become_null_in_lists() {
        let tensor = Tensor::from_vec(vec![1], vec![f32::NAN]).unwrap();
        assert_eq!(
            tensor_to_json(&tensor, Encoding::List)["data"],
            json!([null])
        );
    }
}

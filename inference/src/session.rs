//! One ONNX Runtime session: how it is built (threads, execution provider) and how a
//! `TensorMap` goes through it. Blocking: call only from a dedicated thread.

use std::borrow::Cow;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue, SessionInputs};
use ort::value::{DynValue, Value, ValueRef, ValueType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::OrtRuntime;
use crate::signature::dtype_from_ort;
use crate::tensor::{DType, Element, Tensor, TensorMap};

/// Where a session runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA execution provider on one GPU; its memory arena is capped at
    /// `mem_limit_bytes` (a fraction of the device, see `gpu::GpuAllocator`).
    Cuda {
        device_id: u32,
        mem_limit_bytes: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Threads ONNX Runtime uses inside one run (intra-op pool of this session).
    pub intra_threads: usize,
    pub device: Device,
    pub optimization: GraphOptimizationLevel,
    /// Let idle intra-op threads spin instead of sleeping: lower latency on a
    /// dedicated core, wasted CPU when pools share cores (the default here: off).
    pub intra_op_spinning: bool,
}

impl SessionConfig {
    pub fn cpu(intra_threads: usize) -> SessionConfig {
        SessionConfig {
            intra_threads,
            device: Device::Cpu,
            optimization: GraphOptimizationLevel::All,
            intra_op_spinning: false,
        }
    }

    /// Cheapest session that still reads the model: for inspection only.
    pub(crate) fn inspection() -> SessionConfig {
        SessionConfig {
            intra_threads: 1,
            device: Device::Cpu,
            optimization: GraphOptimizationLevel::Disable,
            intra_op_spinning: false,
        }
    }
}

/// Builds a session for `model_bytes`. `model` names it in errors.
pub fn build_session(
    runtime: &OrtRuntime,
    model: &str,
    model_bytes: &[u8],
    config: &SessionConfig,
) -> Result<Session> {
    let failed = |reason: String| Error::SessionCreate {
        model: model.to_string(),
        reason,
    };
    let builder = Session::builder(runtime.environment())
        .and_then(|builder| Ok(builder.with_optimization_level(config.optimization)?))
        .and_then(|builder| Ok(builder.with_intra_threads(config.intra_threads.max(1))?))
        // One run is one graph walk; parallelism lives in intra-op threads and replicas.
        .and_then(|builder| Ok(builder.with_inter_threads(1)?))
        .and_then(|builder| Ok(builder.with_intra_op_spinning(config.intra_op_spinning)?))
        .map_err(|error| failed(error.to_string()))?;
    let mut builder = with_device(builder, model, &config.device)?;
    builder
        .commit_from_memory(model_bytes)
        .map_err(|error| failed(error.to_string()))
}

#[cfg(feature = "cuda")]
fn with_device(builder: SessionBuilder, model: &str, device: &Device) -> Result<SessionBuilder> {
    let Device::Cuda {
        device_id,
        mem_limit_bytes,
    } = device
    else {
        return Ok(builder);
    };
    let failed = |reason: String| Error::SessionCreate {
        model: model.to_string(),
        reason: format!("CUDA on GPU {device_id}: {reason}"),
    };
    let device_index =
        i32::try_from(*device_id).map_err(|_| failed("device id out of range".into()))?;
    let memory_limit = usize::try_from(*mem_limit_bytes)
        .map_err(|_| failed("memory limit out of range".into()))?;
    let cuda = ort::ep::CUDA::default()
        .with_device_id(device_index)
        .with_memory_limit(memory_limit)
        .build()
        // Never fall back to the CPU quietly: a GPU pool that cannot get its GPU fails.
        .error_on_failure();
    builder
        .with_execution_providers([cuda])
        .map_err(|error| failed(error.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn with_device(builder: SessionBuilder, model: &str, device: &Device) -> Result<SessionBuilder> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda { device_id, .. } => Err(Error::CudaNotBuilt {
            pool: model.to_string(),
            device_id: *device_id,
        }),
    }
}

/// Runs `inputs` through `session` and copies every output out as a `Tensor`.
pub fn run_session(
    session: &mut Session,
    inputs: &TensorMap,
) -> std::result::Result<TensorMap, String> {
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let value = tensor_to_ort(tensor).map_err(|error| format!("input {name:?}: {error}"))?;
        values.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
    }
    let outputs = session
        .run(SessionInputs::<0>::ValueMap(values))
        .map_err(|error| error.to_string())?;
    let mut result = TensorMap::new();
    for (name, value) in outputs.iter() {
        let tensor =
            tensor_from_ort(&value).map_err(|error| format!("output {name:?}: {error}"))?;
        result.insert(name.to_string(), tensor);
    }
    Ok(result)
}

pub(crate) fn tensor_to_ort(tensor: &Tensor) -> std::result::Result<DynValue, String> {
    fn build<T: Element + ort::value::PrimitiveTensorElementType + std::fmt::Debug>(
        tensor: &Tensor,
    ) -> std::result::Result<DynValue, String> {
        let values = tensor.to_vec::<T>().map_err(|error| error.to_string())?;
        let shape: Vec<i64> = tensor.shape().iter().map(|&dim| dim as i64).collect();
        let value =
            ort::value::Tensor::from_array((shape, values)).map_err(|error| error.to_string())?;
        Ok(value.into_dyn())
    }
    match tensor.dtype() {
        DType::F32 => build::<f32>(tensor),
        DType::F64 => build::<f64>(tensor),
        DType::I8 => build::<i8>(tensor),
        DType::I16 => build::<i16>(tensor),
        DType::I32 => build::<i32>(tensor),
        DType::I64 => build::<i64>(tensor),
        DType::U8 => build::<u8>(tensor),
        DType::U16 => build::<u16>(tensor),
        DType::U32 => build::<u32>(tensor),
        DType::U64 => build::<u64>(tensor),
        DType::Bool => build::<bool>(tensor),
    }
}

pub(crate) fn tensor_from_ort(value: &ValueRef<'_>) -> std::result::Result<Tensor, String> {
    fn copy<T: Element + ort::value::PrimitiveTensorElementType>(
        value: &Value,
    ) -> std::result::Result<Tensor, String> {
        let (shape, data) = value
            .try_extract_tensor::<T>()
            .map_err(|error| error.to_string())?;
        let dims: Vec<usize> = shape.iter().map(|&dim| dim.max(0) as usize).collect();
        Tensor::from_slice(dims, data).map_err(|error| error.to_string())
    }
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("is a {}, floe carries tensors only", value.dtype()));
    };
    let Some(dtype) = dtype_from_ort(*ty) else {
        return Err(format!("element type {ty:?} is not supported by floe"));
    };
    match dtype {
        DType::F32 => copy::<f32>(value),
        DType::F64 => copy::<f64>(value),
        DType::I8 => copy::<i8>(value),
        DType::I16 => copy::<i16>(value),
        DType::I32 => copy::<i32>(value),
        DType::I64 => copy::<i64>(value),
        DType::U8 => copy::<u8>(value),
        DType::U16 => copy::<u16>(value),
        DType::U32 => copy::<u32>(value),
        DType::U64 => copy::<u64>(value),
        DType::Bool => copy::<bool>(value),
    }
}

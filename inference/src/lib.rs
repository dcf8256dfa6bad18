//! floe-inference: warm ONNX Runtime model replicas ("pools") that every workflow on
//! a node shares, with dynamic batching, bounded queues and GPU fractions. What
//! runs on them (the PP-OCR pipeline is floe-ocr) lives outside this crate.
//!
//! - `runtime`: load ONNX Runtime once per process (`OrtRuntime::load`).
//! - `signature`: what a model takes and returns (`inspect_model`).
//! - `tensor`: `Tensor`, the wire type for inputs and outputs.
//! - `pool`: `Pool::start` → `PoolHandle::infer`; `batcher` merges and splits batches.
//! - `gpu`: GPU inventory and fractional allocation.

mod batcher;
pub mod error;
pub mod gpu;
pub mod memory;
pub mod pool;
pub mod runtime;
pub mod session;
pub mod signature;
pub mod tensor;
pub mod tensor_json;

pub use error::{Error, Result};
pub use gpu::{GpuAllocator, GpuDevice, GpuError, GpuFraction, GpuInventory, GpuLease, GpuUsage};
pub use pool::{Pool, PoolHandle, PoolOptions, PoolStats};
pub use runtime::{DevRuntimeFiles, OrtRuntime};
pub use session::{Device, SessionConfig};
pub use signature::{inspect_model, Dim, ModelSignature, TensorSpec};
pub use tensor::{DType, Element, Tensor, TensorError, TensorMap};
pub use tensor_json::{
    tensor_from_json, tensor_to_json, tensors_from_json, tensors_to_json, Encoding, JsonTensorError,
};

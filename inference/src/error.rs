//! The crate's error type: what a caller (the node, the gRPC layer) matches on.

use std::path::PathBuf;

use crate::gpu::GpuError;
use crate::tensor::TensorError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "ONNX Runtime library {path} does not exist; run inference/fetch-runtime.sh \
         or point FLOE_ORT_LIB at libonnxruntime.so.1.31.1"
    )]
    RuntimeMissing { path: PathBuf },

    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },

    #[error(
        "ONNX Runtime is already loaded from {loaded} in this process; \
         cannot load a second copy from {requested}"
    )]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },

    #[error("model {model}: not a valid ONNX model: {reason}")]
    InvalidModel { model: String, reason: String },

    #[error("model {model}: not supported by floe: {reason}")]
    UnsupportedModel { model: String, reason: String },

    #[error("model {model}: cannot create an ONNX Runtime session: {reason}")]
    SessionCreate { model: String, reason: String },

    #[error("pool {pool}: warm-up run failed on replica {replica}: {reason}")]
    Warmup {
        pool: String,
        replica: usize,
        reason: String,
    },

    #[error("pool {pool}: invalid options: {reason}")]
    InvalidOptions { pool: String, reason: String },

    #[error("pool {pool}: input {input:?}: {reason}")]
    InvalidInput {
        pool: String,
        input: String,
        reason: String,
    },

    #[error("pool {pool}: queue full ({capacity} requests waiting); retry later")]
    QueueFull { pool: String, capacity: usize },

    #[error("pool {pool} is closed")]
    PoolClosed { pool: String },

    #[error("pool {pool}: inference failed: {reason}")]
    Run { pool: String, reason: String },

    #[error("pool {pool}: replica stopped before answering")]
    ReplicaGone { pool: String },

    #[error(
        "pool {pool}: GPU {device_id} requested, but floe-inference was built without \
         the `cuda` feature"
    )]
    CudaNotBuilt { pool: String, device_id: u32 },

    #[error(transparent)]
    Tensor(#[from] TensorError),

    #[error(transparent)]
    Gpu(#[from] GpuError),
}

impl Error {
    /// True when the same request may succeed later unchanged (backpressure), so a
    /// caller should retry with backoff or place it on another node.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::QueueFull { .. })
    }

    /// True when the request itself is wrong (maps to gRPC INVALID_ARGUMENT).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput { .. }
                | Error::InvalidModel { .. }
                | Error::UnsupportedModel { .. }
                | Error::InvalidOptions { .. }
                | Error::Tensor(_)
        )
    }
}

//! floe-ocr's error: a model run that failed in its pool, or OCR's own checks.

use floe_inference::TensorError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pool refused or failed a model run, or a model output was not the
    /// tensor expected.
    #[error(transparent)]
    Inference(#[from] floe_inference::Error),

    /// The models, an image, a font or a model output do not fit PP-OCR.
    #[error("ocr: {0}")]
    Ocr(String),
}

// A tensor that cannot be read as expected is reported as floe-inference
// reports it, so messages do not depend on which crate read the tensor.
impl From<TensorError> for Error {
    fn from(error: TensorError) -> Error {
        Error::Inference(floe_inference::Error::Tensor(error))
    }
}

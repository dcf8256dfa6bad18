//! floe-ocr: PP-OCR (v4 det and rec, mobile v2 cls) as pure functions over
//! images and tensors, so each model step can go through a floe-inference
//! `PoolHandle`; `OcrPipeline`, which chains them over three pools; `stages`,
//! the same work as JSON-in, JSON-out steps for a flow whose model runs are
//! steps of their own (the OCR worker serves them); and `render`, text drawn
//! into test pages.

pub mod crop;
pub mod ctc;
pub mod detect;
pub mod error;
pub mod pipeline;
pub mod preprocess;
pub mod render;
pub mod stages;

pub use ctc::{ctc_greedy_decode, Charset, Decoded};
pub use detect::{extract_boxes, DetPostprocess, TextBox};
pub use error::{Error, Result};
pub use pipeline::{OcrLine, OcrOptions, OcrPipeline};
pub use preprocess::{cls_input, det_input, rec_input, rec_width, DetInput, DetPreprocess};
pub use render::{render_text_line, stack_lines};
pub use stages::{PageGeometry, StageError};

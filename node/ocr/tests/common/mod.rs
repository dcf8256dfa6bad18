//! Shared by the OCR tests: the runtime, model and font files, or a failure that
//! says how to get them (never a silent skip).
#![allow(dead_code)]

use std::time::Duration;

use floe_inference::{DevRuntimeFiles, OrtRuntime, Pool, PoolHandle, PoolOptions};

pub fn files() -> DevRuntimeFiles {
    let files = DevRuntimeFiles::locate();
    if let Err(message) = files.require() {
        panic!("{message}");
    }
    files
}

pub fn runtime() -> OrtRuntime {
    let files = files();
    OrtRuntime::load(&files.ort_library).unwrap_or_else(|error| panic!("{error}"))
}

pub fn model(name: &str) -> Vec<u8> {
    let path = files().models_dir.join(name);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run inference/fetch-runtime.sh",
            path.display()
        )
    })
}

/// A pool of one PP-OCR model (`det`, `cls`, `rec`) as the OCR tests use it.
pub fn ppocr_pool(runtime: &OrtRuntime, model: &str, max_batch: usize) -> PoolHandle {
    let options = PoolOptions {
        name: format!("ppocr-{model}"),
        intra_threads: 2,
        max_batch,
        max_delay: Duration::from_millis(10),
        ..PoolOptions::default()
    };
    Pool::start_blocking(runtime, model_bytes(model), options).unwrap()
}

fn model_bytes(model: &str) -> Vec<u8> {
    self::model(&format!("{model}.onnx"))
}

/// One line of `text` rendered with the test font, as the OCR tests read it.
pub fn line(text: &str) -> image::RgbImage {
    let font = std::fs::read(files().font).unwrap();
    floe_ocr::render_text_line(&font, text, 40.0, 24).unwrap()
}

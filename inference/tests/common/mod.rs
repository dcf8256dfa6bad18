//! Shared by the integration tests: the runtime and fixture files, or a failure that
//! says how to get them (never a silent skip).
#![allow(dead_code)]

use std::path::PathBuf;

use floe_inference::{DevRuntimeFiles, OrtRuntime};

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

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
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

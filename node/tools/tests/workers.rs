//! The example and OCR workers refuse a bad setup up front, naming what is wrong.
//! (This test also makes `cargo test --workspace` build the tool binaries,
//! which the cluster tests start next to `floe`.)

use std::process::Command;

#[test]
fn the_example_worker_names_a_malformed_block() {
    let output = Command::new(env!("CARGO_BIN_EXE_floe-worker"))
        .args([
            "--endpoint",
            "127.0.0.1:1",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
        ])
        .args(["--key", "c.key", "--block", "classify-without-behaviour"])
        .env_remove("FLOE_LOG")
        .output()
        .expect("the worker binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started with a malformed block: {stderr}"
    );
    assert!(
        stderr.contains("classify-without-behaviour") && stderr.contains("NAME=BEHAVIOUR"),
        "the error does not name the block: {stderr}"
    );
}

#[test]
fn the_ocr_worker_names_a_missing_runtime_library() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("libonnxruntime-missing.so");
    let output = Command::new(env!("CARGO_BIN_EXE_floe-ocr-worker"))
        .args([
            "--endpoint",
            "127.0.0.1:1",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
        ])
        .args(["--key", "c.key", "--ort-lib"])
        .arg(&missing)
        .env_remove("FLOE_LOG")
        .output()
        .expect("the OCR worker binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started without ONNX Runtime: {stderr}"
    );
    assert!(
        stderr.contains("libonnxruntime-missing.so"),
        "the error does not name the library: {stderr}"
    );
}

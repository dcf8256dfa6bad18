//! Loading ONNX Runtime: errors name the path; one runtime per process.
//! One test function: the runtime is process-global, so the steps must run in order.

mod common;

use floe_inference::{Error, OrtRuntime};

#[test]
fn load_errors_name_the_path_and_a_second_library_is_refused() {
    let files = common::files();
    let scratch = tempfile::tempdir().unwrap();

    let missing = scratch.path().join("nowhere/libonnxruntime.so.1.31.1");
    let error = OrtRuntime::load(&missing).unwrap_err();
    assert!(matches!(error, Error::RuntimeMissing { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("fetch-runtime.sh"), "{message}");

    let not_a_library = scratch.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not an ELF file").unwrap();
    let error = OrtRuntime::load(&not_a_library).unwrap_err();
    assert!(matches!(error, Error::RuntimeLoad { .. }), "{error:?}");
    assert!(error.to_string().contains("libonnxruntime.so"), "{error}");
    assert!(
        OrtRuntime::current().is_none(),
        "a failed load must not leave a runtime behind"
    );

    // Failures above must not poison the real load.
    let runtime = OrtRuntime::load(&files.ort_library).unwrap();
    assert!(
        runtime.build_info().contains("git-commit-id"),
        "{}",
        runtime.build_info()
    );
    let again = OrtRuntime::load(&files.ort_library).unwrap();
    assert_eq!(again.library_path(), runtime.library_path());

    let error = OrtRuntime::load(&not_a_library).unwrap_err();
    assert!(matches!(error, Error::RuntimeConflict { .. }), "{error:?}");
}

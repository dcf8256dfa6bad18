//! Model inspection through the real ONNX Runtime.

mod common;

use floe_inference::{inspect_model, DType, Dim, Error};

#[test]
fn fixture_signature_lists_inputs_outputs_and_metadata() {
    let runtime = common::runtime();
    let signature = inspect_model(&runtime, "double", &common::fixture("double.onnx")).unwrap();
    let x = signature.input("x").unwrap();
    assert_eq!(x.dtype, Some(DType::F32));
    assert_eq!(
        x.shape,
        vec![
            Dim::Dynamic(Some("batch".into())),
            Dim::Dynamic(Some("n".into()))
        ]
    );
    let k = signature.input("k").unwrap();
    assert_eq!(k.dtype, Some(DType::I64));
    assert_eq!(
        k.shape,
        vec![Dim::Dynamic(Some("batch".into())), Dim::Fixed(1)]
    );
    assert_eq!(
        signature
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        vec!["y", "z"]
    );
    assert_eq!(
        signature.metadata.get("character").map(String::as_str),
        Some("a\nb")
    );
    assert_eq!(signature.producer.as_deref(), Some("floe-fixtures"));
    assert!(signature.has_dynamic_batch_dim());

    let fixed = inspect_model(&runtime, "fixed", &common::fixture("fixed.onnx")).unwrap();
    assert!(!fixed.has_dynamic_batch_dim());
    let json = serde_json::to_string(&signature).unwrap();
    assert!(json.contains(r#""shape":["batch","n"]"#), "{json}");
}

#[test]
fn invalid_bytes_are_a_clear_error_naming_the_model() {
    let runtime = common::runtime();
    let error = inspect_model(&runtime, "scanner@1", b"this is not an onnx file").unwrap_err();
    assert!(matches!(error, Error::InvalidModel { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("model scanner@1: not a valid ONNX model:"),
        "{message}"
    );
    let mut truncated = common::fixture("double.onnx");
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        inspect_model(&runtime, "half", &truncated),
        Err(Error::InvalidModel { .. })
    ));
}

#[test]
fn ppocr_models_describe_themselves() {
    let runtime = common::runtime();
    let rec = inspect_model(&runtime, "rec", &common::model("rec.onnx")).unwrap();
    let det = inspect_model(&runtime, "det", &common::model("det.onnx")).unwrap();
    let cls = inspect_model(&runtime, "cls", &common::model("cls.onnx")).unwrap();
    for signature in [&det, &rec, &cls] {
        assert!(signature.has_dynamic_batch_dim(), "{signature:?}");
    }
    let characters = rec
        .metadata
        .get("character")
        .expect("rec carries its character list");
    // 6623 characters + the CTC blank + the space class.
    assert_eq!(characters.lines().count() + 2, 6625);
    assert_eq!(rec.outputs[0].shape[2], Dim::Fixed(6625));
    let rec_input = &rec.inputs[0].shape;
    assert_eq!(rec_input[1], Dim::Fixed(3));
    assert!(
        rec_input[0].is_dynamic() && rec_input[2].is_dynamic() && rec_input[3].is_dynamic(),
        "{rec_input:?}"
    );
    assert_eq!(cls.outputs[0].shape[1], Dim::Fixed(2));
}

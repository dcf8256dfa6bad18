//! The OCR stages chained as a flow would chain them: every stage's output goes
//! through `serde_json` bytes, and each model run is a pool request built from
//! the JSON tensors a stage wrote. The result must equal `OcrPipeline`'s on the
//! same page, text exactly.

mod common;

use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use floe_inference::{
    inspect_model, tensors_from_json, tensors_to_json, Encoding, PoolHandle, Tensor, TensorMap,
};
use floe_ocr::stages::{self, StageError};
use floe_ocr::{stack_lines, Charset, OcrOptions, OcrPipeline, TextBox};
use image::RgbImage;
use serde_json::{json, Value};

const BOUND: Duration = Duration::from_secs(120);

struct Pools {
    det: PoolHandle,
    cls: PoolHandle,
    rec: PoolHandle,
    pipeline: OcrPipeline,
    charset: Charset,
    options: OcrOptions,
}

impl Pools {
    fn input_name(pool: &PoolHandle) -> &str {
        &pool.signature().inputs[0].name
    }
}

fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        let runtime = common::runtime();
        let start = |model: &str, max_batch: usize| common::ppocr_pool(&runtime, model, max_batch);
        let (det, cls, rec) = (start("det", 4), start("cls", 8), start("rec", 8));
        let options = OcrOptions::default();
        let pipeline =
            OcrPipeline::new(det.clone(), Some(cls.clone()), rec.clone(), options.clone()).unwrap();
        let charset = Charset::from_metadata(&rec.signature().metadata["character"]).unwrap();
        Pools {
            det,
            cls,
            rec,
            pipeline,
            charset,
            options,
        }
    })
}

fn png_base64(page: &RgbImage) -> String {
    let mut png = Vec::new();
    page.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// What the engine does between steps: the value is stored as bytes and read back.
fn through_bytes(value: Value) -> Value {
    serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap()
}

/// An inference step: an object of input tensors in, an object of output tensors out.
async fn infer(pool: &PoolHandle, inputs: &Value) -> Value {
    let tensors = tensors_from_json(inputs, "input").unwrap();
    let outputs = tokio::time::timeout(BOUND, pool.infer(tensors))
        .await
        .unwrap()
        .unwrap();
    through_bytes(tensors_to_json(&outputs, Encoding::Base64))
}

/// The OCR flow: prepare → det → lines → (count 0: done) → cls → orient → rec → decode.
async fn run_stages(page: &RgbImage) -> Value {
    let pools = pools();
    let options = &pools.options;
    let image = png_base64(page);
    let prepared = stages::prepare(
        &json!({ "image": image }),
        options,
        Pools::input_name(&pools.det),
    )
    .unwrap();
    let prepared = through_bytes(prepared);
    let det_outputs = infer(&pools.det, &prepared["det_inputs"]).await;
    let lines_input =
        json!({ "image": image, "page": prepared["page"], "det_outputs": det_outputs });
    let found =
        through_bytes(stages::lines(&lines_input, options, Pools::input_name(&pools.cls)).unwrap());
    if found["count"] == 0 {
        assert!(found.get("cls_inputs").is_none(), "{found}");
        return json!({ "text": "", "lines": [] });
    }
    let cls_outputs = infer(&pools.cls, &found["cls_inputs"]).await;
    let orient_input = json!({ "lines": found["lines"], "cls_outputs": cls_outputs });
    let oriented = through_bytes(
        stages::orient(&orient_input, options, Pools::input_name(&pools.rec)).unwrap(),
    );
    let rec_outputs = infer(&pools.rec, &oriented["rec_inputs"]).await;
    let decode_input = json!({ "lines": oriented["lines"], "rec_outputs": rec_outputs });
    through_bytes(stages::decode(&decode_input, options, &pools.charset).unwrap())
}

/// Runs the stages and the pipeline on `page`; both must read `expected` exactly,
/// with the same boxes and orientation.
async fn assert_stages_match_pipeline(page: RgbImage, expected: &[&str]) -> Value {
    let output = run_stages(&page).await;
    assert_eq!(output["text"], expected.join("\n"), "{output}");
    let from_pipeline = tokio::time::timeout(BOUND, pools().pipeline.recognize(page))
        .await
        .unwrap()
        .unwrap();
    let stage_lines = output["lines"].as_array().unwrap();
    assert_eq!(stage_lines.len(), from_pipeline.len(), "{output}");
    for (stage_line, pipeline_line) in stage_lines.iter().zip(&from_pipeline) {
        assert_eq!(stage_line["text"], pipeline_line.text);
        assert_eq!(stage_line["rotated"], pipeline_line.rotated);
        // Boxes are f32: compare them as such, not as JSON numbers read back as f64.
        let stage_box: TextBox = serde_json::from_value(stage_line["bbox"].clone()).unwrap();
        assert_eq!(stage_box, pipeline_line.bbox);
        let confidence = stage_line["confidence"].as_f64().unwrap();
        assert!(confidence > 0.8, "{stage_line}");
    }
    output
}

#[test]
fn the_models_take_and_give_the_names_the_flow_expects() {
    let runtime = common::runtime();
    let names = |model: &str| {
        let signature = inspect_model(&runtime, model, &common::model(model)).unwrap();
        let inputs: Vec<String> = signature.inputs.into_iter().map(|spec| spec.name).collect();
        let outputs: Vec<String> = signature
            .outputs
            .into_iter()
            .map(|spec| spec.name)
            .collect();
        (inputs, outputs)
    };
    let (det_inputs, det_outputs) = names("det.onnx");
    let (cls_inputs, cls_outputs) = names("cls.onnx");
    let (rec_inputs, rec_outputs) = names("rec.onnx");
    println!("det {det_inputs:?} → {det_outputs:?}");
    println!("cls {cls_inputs:?} → {cls_outputs:?}");
    println!("rec {rec_inputs:?} → {rec_outputs:?}");
    assert_eq!(det_inputs, ["x"]);
    assert_eq!(cls_inputs, ["x"]);
    assert_eq!(rec_inputs, ["x"]);
    for outputs in [det_outputs, cls_outputs, rec_outputs] {
        assert_eq!(outputs.len(), 1, "one output each: {outputs:?}");
    }
}

#[tokio::test]
async fn a_rendered_line_reads_the_same_through_the_stages() {
    let text = "FLOE 42 INVOICE TOTAL";
    let output = assert_stages_match_pipeline(common::line(text), &[text]).await;
    assert_eq!(output["lines"][0]["rotated"], false);
    assert!(output["lines"][0].get("crop").is_none(), "{output}");
}

#[tokio::test]
async fn a_page_of_lines_of_different_widths_reads_in_order() {
    let texts = [
        "FLOE 42 INVOICE TOTAL",
        "Amount due 1375.20",
        "Customer AB-7731",
        "OK",
    ];
    let page = stack_lines(&texts.map(common::line), 16);
    assert_stages_match_pipeline(page, &texts).await;
}

#[tokio::test]
async fn an_upside_down_line_is_turned_before_recognition() {
    let text = "ROTATED 180 DEGREES";
    let page = image::imageops::rotate180(&common::line(text));
    let output = assert_stages_match_pipeline(page, &[text]).await;
    assert_eq!(output["lines"][0]["rotated"], true);
}

#[tokio::test]
async fn a_blank_page_has_no_lines_and_no_cls_inputs() {
    let page = RgbImage::from_pixel(320, 96, image::Rgb([255, 255, 255]));
    let output = run_stages(&page).await;
    assert_eq!(output, json!({ "text": "", "lines": [] }));
}

fn assert_names_field(result: Result<Value, StageError>, path: &str, reason: &str) {
    let error = result.unwrap_err();
    assert_eq!(error.path, path, "{error}");
    assert!(
        error.reason.contains(reason),
        "{error} should say {reason:?}"
    );
}

fn tensor_json(shape: Vec<usize>) -> Value {
    let count = shape.iter().product();
    let tensor = Tensor::from_vec(shape, vec![0.5f32; count]).unwrap();
    tensors_to_json(
        &TensorMap::from([("out".to_string(), tensor)]),
        Encoding::Base64,
    )
}

#[test]
fn prepare_names_a_bad_image() {
    let options = OcrOptions::default();
    let not_base64 = json!({ "image": "%%% not base64" });
    assert_names_field(
        stages::prepare(&not_base64, &options, "x"),
        "input.image",
        "not base64",
    );
    let not_an_image =
        json!({ "image": base64::engine::general_purpose::STANDARD.encode("hello") });
    assert_names_field(
        stages::prepare(&not_an_image, &options, "x"),
        "input.image",
        "not a PNG or JPEG image",
    );
    assert_names_field(
        stages::prepare(&json!({}), &options, "x"),
        "input.image",
        "missing",
    );
    assert_names_field(
        stages::prepare(&json!([1]), &options, "x"),
        "input",
        "an object",
    );
}

#[test]
fn lines_names_missing_and_misshapen_det_outputs() {
    let options = OcrOptions::default();
    let image = png_base64(&RgbImage::from_pixel(64, 64, image::Rgb([255, 255, 255])));
    let prepared = stages::prepare(&json!({ "image": image }), &options, "x").unwrap();
    assert_eq!(prepared["det_inputs"]["x"]["shape"], json!([1, 3, 64, 64]));
    let page = prepared["page"].clone();
    assert_names_field(
        stages::lines(&json!({ "image": image, "page": page }), &options, "x"),
        "input.det_outputs",
        "missing",
    );
    let rank_three =
        json!({ "image": image, "page": page, "det_outputs": tensor_json(vec![1, 64, 64]) });
    assert_names_field(
        stages::lines(&rank_three, &options, "x"),
        "input.det_outputs.out",
        "expected [1, 1, h, w]",
    );
    let two_outputs = json!({ "image": image, "page": page, "det_outputs": {
        "a": tensor_json(vec![1, 1, 64, 64])["out"], "b": tensor_json(vec![1, 1, 64, 64])["out"],
    }});
    assert_names_field(
        stages::lines(&two_outputs, &options, "x"),
        "input.det_outputs",
        "expected one tensor, got 2",
    );
    let wrong_page = json!({ "image": image, "page": { "width": 10, "height": 64, "scale_x": 1.0, "scale_y": 1.0 },
        "det_outputs": tensor_json(vec![1, 1, 64, 64]) });
    assert_names_field(
        stages::lines(&wrong_page, &options, "x"),
        "input.page",
        "but the image is 64×64",
    );
}

#[test]
fn orient_and_decode_name_a_count_mismatch() {
    let options = OcrOptions::default();
    let charset = Charset::from_metadata("a\nb").unwrap();
    let crop = png_base64(&RgbImage::from_pixel(96, 24, image::Rgb([255, 255, 255])));
    let bbox = json!({ "x0": 0.0, "y0": 0.0, "x1": 96.0, "y1": 24.0, "score": 0.9 });
    let one_line = json!([{ "bbox": bbox, "crop": crop }]);
    let two_rows = json!({ "lines": one_line, "cls_outputs": tensor_json(vec![2, 2]) });
    assert_names_field(
        stages::orient(&two_rows, &options, "x"),
        "input.cls_outputs.out",
        "shape [2, 2] for 1 lines",
    );
    let bad_crop = json!({ "lines": [{ "bbox": bbox, "crop": "AAAA" }], "cls_outputs": tensor_json(vec![1, 2]) });
    assert_names_field(
        stages::orient(&bad_crop, &options, "x"),
        "input.lines[0].crop",
        "not a PNG or JPEG image",
    );
    let oriented = stages::orient(
        &json!({ "lines": one_line, "cls_outputs": tensor_json(vec![1, 2]) }),
        &options,
        "x",
    )
    .unwrap();
    assert_eq!(oriented["rec_inputs"]["x"]["shape"], json!([1, 3, 48, 320]));
    let oriented_box: TextBox =
        serde_json::from_value(oriented["lines"][0]["bbox"].clone()).unwrap();
    assert_eq!(
        oriented_box,
        serde_json::from_value::<TextBox>(bbox).unwrap()
    );
    assert_eq!(oriented["lines"][0]["rotated"], false);
    assert!(oriented["lines"][0].get("crop").is_none());
    let rows_mismatch =
        json!({ "lines": oriented["lines"], "rec_outputs": tensor_json(vec![3, 40, 4]) });
    assert_names_field(
        stages::decode(&rows_mismatch, &options, &charset),
        "input.rec_outputs.out",
        "3 rows for 1 lines",
    );
    let wrong_classes =
        json!({ "lines": oriented["lines"], "rec_outputs": tensor_json(vec![1, 40, 7]) });
    assert_names_field(
        stages::decode(&wrong_classes, &options, &charset),
        "input.rec_outputs.out",
        "7 classes",
    );
    let no_lines = json!({ "lines": [], "rec_outputs": tensor_json(vec![0, 40, 4]) });
    assert_names_field(
        stages::decode(&no_lines, &options, &charset),
        "input.lines",
        "no lines",
    );
}

#[tokio::test]
async fn only_the_upside_down_line_of_a_page_is_turned() {
    let texts = ["UPRIGHT LINE 1", "TURNED LINE 2"];
    let lines = [
        common::line(texts[0]),
        image::imageops::rotate180(&common::line(texts[1])),
    ];
    let output = assert_stages_match_pipeline(stack_lines(&lines, 16), &texts).await;
    assert_eq!(output["lines"][0]["rotated"], false);
    assert_eq!(output["lines"][1]["rotated"], true);
}

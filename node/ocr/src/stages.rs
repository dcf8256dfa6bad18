//! The PP-OCR pipeline as four pure stages, JSON in and JSON out, so a flow can
//! run the image work in a worker and each model run as its own step against a
//! shared pool. Tensors travel in `tensor_json`'s base64 form; a model's inputs
//! and outputs are an object of tensor name → tensor.
//!
//! ```text
//! prepare  {image}                          → {det_inputs, page}
//!   det model: det_inputs                   → det_outputs
//! lines    {image, page, det_outputs}       → {lines: [{bbox, crop}], cls_inputs, count}
//!   cls model: cls_inputs                   → cls_outputs      (skipped when count is 0)
//! orient   {lines, cls_outputs}             → {lines: [{bbox, rotated}], rec_inputs}
//!   rec model: rec_inputs                   → rec_outputs
//! decode   {lines, rec_outputs}             → {text, lines: [{text, confidence, bbox, rotated}]}
//! ```
//!
//! The stages compute what `OcrPipeline::recognize` computes, with one
//! difference: rec gets all lines of a page as one batch, every line padded to
//! the widest line's rec width, where the pipeline sends each line at its own.
//! Model input names are parameters: they belong to the model, not the flow.

use std::io::Cursor;

use base64::Engine as _;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::crop::rotate_half_turn;
use crate::ctc::{ctc_greedy_decode, Charset};
use crate::detect::TextBox;
use crate::pipeline::{
    decode_image, is_upside_down, line_crops, page_boxes, probability_map_size, recognised_line,
    OcrOptions,
};
use crate::preprocess::{cls_input, det_input, rec_input, rec_width, REC_MIN_WIDTH};
use floe_inference::tensor_json::{tensors_from_json, tensors_to_json, Encoding, JsonTensorError};
use floe_inference::{Tensor, TensorMap};

/// A stage input that cannot be used: `path` names the field (`input.image`,
/// `input.lines[2].crop`), `reason` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StageError {
    pub path: String,
    pub reason: String,
}

impl StageError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> StageError {
        StageError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<JsonTensorError> for StageError {
    fn from(error: JsonTensorError) -> StageError {
        StageError::new(error.path, error.reason)
    }
}

/// The page as `prepare` saw it: its size in pixels and how many page pixels one
/// detector pixel covers, per axis.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageGeometry {
    pub width: u32,
    pub height: u32,
    pub scale_x: f32,
    pub scale_y: f32,
}

/// `{"image"}` → `{"det_inputs": {det_input_name: [1, 3, H, W]}, "page"}`.
pub fn prepare(
    input: &Value,
    options: &OcrOptions,
    det_input_name: &str,
) -> Result<Value, StageError> {
    let fields = object(input, "input")?;
    let page = image_field(fields)?;
    let det = det_input(&page, &options.det_preprocess);
    let geometry = PageGeometry {
        width: page.width(),
        height: page.height(),
        scale_x: det.scale_x,
        scale_y: det.scale_y,
    };
    Ok(json!({
        "det_inputs": model_tensors(det_input_name, det.tensor),
        "page": geometry,
    }))
}

/// `{"image", "page", "det_outputs": {one tensor [1, 1, h, w]}}` →
/// `{"lines": [{"bbox", "crop"}], "cls_inputs": {cls_input_name: [N, 3, 48, 192]},
/// "count": N}`, lines in reading order, `crop` a base64 PNG. With no line,
/// `{"lines": [], "count": 0}`: there is nothing for the models to do.
pub fn lines(
    input: &Value,
    options: &OcrOptions,
    cls_input_name: &str,
) -> Result<Value, StageError> {
    let fields = object(input, "input")?;
    let page = image_field(fields)?;
    let geometry: PageGeometry = parse_field(fields, "page", "input.page")?;
    if (geometry.width, geometry.height) != page.dimensions() {
        return Err(StageError::new(
            "input.page",
            format!(
                "page is {}×{} but the image is {}×{}",
                geometry.width,
                geometry.height,
                page.width(),
                page.height()
            ),
        ));
    }
    let (map_path, probabilities) = single_tensor(fields, "det_outputs")?;
    let Some(map_size) = probability_map_size(probabilities.shape()) else {
        return Err(StageError::new(
            map_path,
            format!("shape {:?}, expected [1, 1, h, w]", probabilities.shape()),
        ));
    };
    let values = f32_values(&probabilities, &map_path)?;
    let boxes = page_boxes(
        &values,
        map_size,
        (geometry.scale_x, geometry.scale_y),
        page.dimensions(),
        &options.det_postprocess,
    );
    let crops = line_crops(&page, &boxes, options.line_padding);
    let mut found_lines = Vec::with_capacity(boxes.len());
    for (text_box, crop) in boxes.iter().zip(&crops) {
        found_lines.push(json!({ "bbox": text_box, "crop": encode_png(crop)? }));
    }
    let mut output = Map::new();
    output.insert("lines".into(), Value::Array(found_lines));
    output.insert("count".into(), Value::from(crops.len()));
    if !crops.is_empty() {
        let rows: Vec<Tensor> = crops.iter().map(cls_input).collect();
        let batch = concat_rows(&rows, "cls_inputs")?;
        output.insert("cls_inputs".into(), model_tensors(cls_input_name, batch));
    }
    Ok(Value::Object(output))
}

/// `{"lines": [{"bbox", "crop"}], "cls_outputs": {one tensor [N, 2]}}` →
/// `{"lines": [{"bbox", "rotated"}], "rec_inputs": {rec_input_name: [N, 3, 48, W]}}`.
/// Lines the classifier finds upside down (above `cls_threshold`) are turned
/// before their rec input is made; every line is padded to the widest line's
/// rec width, so the page is one batch.
pub fn orient(
    input: &Value,
    options: &OcrOptions,
    rec_input_name: &str,
) -> Result<Value, StageError> {
    let fields = object(input, "input")?;
    let lines = lines_field(fields)?;
    let (cls_path, probabilities) = single_tensor(fields, "cls_outputs")?;
    let expected_shape = [lines.len(), 2];
    if probabilities.shape() != expected_shape {
        return Err(StageError::new(
            cls_path,
            format!(
                "shape {:?} for {} lines, expected {expected_shape:?} (a [0°, 180°] pair per line)",
                probabilities.shape(),
                lines.len()
            ),
        ));
    }
    let values = f32_values(&probabilities, &cls_path)?;
    let mut upright_crops = Vec::with_capacity(lines.len());
    let mut oriented_lines = Vec::with_capacity(lines.len());
    for (index, (line, line_probabilities)) in lines.iter().zip(values.chunks_exact(2)).enumerate()
    {
        let line_path = format!("input.lines[{index}]");
        let line_fields = object(line, &line_path)?;
        let bbox: TextBox = parse_field(line_fields, "bbox", &format!("{line_path}.bbox"))?;
        let crop = image_at(line_fields, "crop", &format!("{line_path}.crop"))?;
        let rotated = is_upside_down(line_probabilities, options.cls_threshold);
        upright_crops.push(if rotated {
            rotate_half_turn(&crop)
        } else {
            crop
        });
        oriented_lines.push(json!({ "bbox": bbox, "rotated": rotated }));
    }
    let width = upright_crops
        .iter()
        .map(|crop| rec_width(crop, options.rec_width_bucket, options.rec_max_width))
        .max()
        .unwrap_or(REC_MIN_WIDTH);
    let inputs: Vec<Tensor> = upright_crops
        .iter()
        .map(|crop| rec_input(crop, width))
        .collect();
    let batch = concat_rows(&inputs, "rec_inputs")?;
    Ok(json!({
        "lines": oriented_lines,
        "rec_inputs": model_tensors(rec_input_name, batch),
    }))
}

/// `{"lines": [{"bbox", "rotated"}], "rec_outputs": {one tensor [N, T, C]}}` →
/// `{"text": lines joined by "\n", "lines": [{"text", "confidence", "bbox",
/// "rotated"}]}`, dropping blank lines and those under `text_threshold`. Other
/// line fields (a crop) are not carried over.
pub fn decode(input: &Value, options: &OcrOptions, charset: &Charset) -> Result<Value, StageError> {
    let fields = object(input, "input")?;
    let lines = lines_field(fields)?;
    let (rec_path, probabilities) = single_tensor(fields, "rec_outputs")?;
    let [rows, timesteps, classes] = probabilities.shape()[..] else {
        return Err(StageError::new(
            rec_path,
            format!(
                "shape {:?}, expected [lines, timesteps, classes]",
                probabilities.shape()
            ),
        ));
    };
    if rows != lines.len() {
        return Err(StageError::new(
            rec_path,
            format!("{rows} rows for {} lines", lines.len()),
        ));
    }
    let values = f32_values(&probabilities, &rec_path)?;
    let mut recognised = Vec::new();
    for (index, (line, row)) in lines
        .iter()
        .zip(values.chunks_exact((timesteps * classes).max(1)))
        .enumerate()
    {
        let line_path = format!("input.lines[{index}]");
        let line_fields = object(line, &line_path)?;
        let bbox: TextBox = parse_field(line_fields, "bbox", &format!("{line_path}.bbox"))?;
        let rotated: bool = parse_field(line_fields, "rotated", &format!("{line_path}.rotated"))?;
        let decoded = ctc_greedy_decode(row, classes, charset)
            .map_err(|error| StageError::new(rec_path.clone(), error.to_string()))?;
        if let Some(line) = recognised_line(bbox, rotated, decoded, options.text_threshold) {
            recognised.push(line);
        }
    }
    let text = recognised
        .iter()
        .map(|line| line.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    Ok(json!({ "text": text, "lines": recognised }))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, StageError> {
    value
        .as_object()
        .ok_or_else(|| StageError::new(path, "expected an object"))
}

fn required<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<&'a Value, StageError> {
    fields
        .get(name)
        .ok_or_else(|| StageError::new(path, "missing"))
}

fn parse_field<T: serde::de::DeserializeOwned>(
    fields: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<T, StageError> {
    let value = required(fields, name, path)?;
    T::deserialize(value).map_err(|error| StageError::new(path, error.to_string()))
}

/// `input.image`: a base64 PNG or JPEG, decoded to RGB.
fn image_field(fields: &Map<String, Value>) -> Result<RgbImage, StageError> {
    image_at(fields, "image", "input.image")
}

/// A base64-encoded image (PNG or JPEG) at `path`.
fn image_at(fields: &Map<String, Value>, name: &str, path: &str) -> Result<RgbImage, StageError> {
    let Value::String(text) = required(fields, name, path)? else {
        return Err(StageError::new(path, "expected a base64 string"));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|error| StageError::new(path, format!("not base64: {error}")))?;
    decode_image(&bytes)
        .map_err(|error| StageError::new(path, format!("not a PNG or JPEG image: {error}")))
}

fn encode_png(image: &RgbImage) -> Result<String, StageError> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|error| StageError::new("output.lines", format!("encoding a crop: {error}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

/// `input.lines`: a non-empty list.
fn lines_field(fields: &Map<String, Value>) -> Result<&Vec<Value>, StageError> {
    let Value::Array(lines) = required(fields, "lines", "input.lines")? else {
        return Err(StageError::new("input.lines", "expected a list of lines"));
    };
    if lines.is_empty() {
        return Err(StageError::new(
            "input.lines",
            "no lines (a page without lines skips the model steps)",
        ));
    }
    Ok(lines)
}

/// The one tensor of a model's outputs at `input.<name>`, and its path.
fn single_tensor(fields: &Map<String, Value>, name: &str) -> Result<(String, Tensor), StageError> {
    let path = format!("input.{name}");
    let tensors = tensors_from_json(required(fields, name, &path)?, &path)?;
    if tensors.len() != 1 {
        return Err(StageError::new(
            path,
            format!("expected one tensor, got {}", tensors.len()),
        ));
    }
    let Some((tensor_name, tensor)) = tensors.into_iter().next() else {
        return Err(StageError::new(path, "expected one tensor, got none"));
    };
    Ok((format!("{path}.{tensor_name}"), tensor))
}

fn f32_values(tensor: &Tensor, path: &str) -> Result<Vec<f32>, StageError> {
    tensor
        .to_vec::<f32>()
        .map_err(|error| StageError::new(path, error.to_string()))
}

fn concat_rows(rows: &[Tensor], name: &str) -> Result<Tensor, StageError> {
    let parts: Vec<&Tensor> = rows.iter().collect();
    // Every row was made at the same width and dtype, so this cannot fail.
    Tensor::concat_dim0(&parts)
        .map_err(|error| StageError::new(format!("output.{name}"), error.to_string()))
}

fn model_tensors(input_name: &str, tensor: Tensor) -> Value {
    tensors_to_json(
        &TensorMap::from([(input_name.to_string(), tensor)]),
        Encoding::Base64,
    )
}

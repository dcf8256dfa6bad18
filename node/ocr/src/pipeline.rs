//! `OcrPipeline`: a page through the det, cls and rec pools.
//!
//! Each line is its own cls and rec request, so lines of this page and of other
//! callers' pages share batches in the pools. Image work runs on tokio's blocking
//! threads, model runs on the pools' replica threads: the async caller never blocks.

use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::crop::{crop_line, rotate_half_turn};
use crate::ctc::{ctc_greedy_decode, Charset, Decoded};
use crate::detect::{extract_boxes, DetPostprocess, TextBox};
use crate::error::{Error, Result};
use crate::preprocess::{cls_input, det_input, rec_input, rec_width, DetPreprocess};
use floe_inference::Dim;
use floe_inference::PoolHandle;
use floe_inference::{Tensor, TensorMap};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OcrOptions {
    pub det_preprocess: DetPreprocess,
    pub det_postprocess: DetPostprocess,
    /// A line is turned 180° when cls says so with more than this probability (0.9).
    pub cls_threshold: f32,
    /// Crops are grown by this fraction of the line height on every side (0.2).
    /// Detector boxes hug the glyphs; the recogniser needs some background around
    /// them, notably to emit the spaces between words.
    pub line_padding: f32,
    /// Lines recognised with a lower mean probability are dropped (0.5).
    pub text_threshold: f32,
    /// Rec input widths are rounded up to a multiple of this (64), so lines of
    /// similar length from any caller share a shape and a batch.
    pub rec_width_bucket: u32,
    /// Widest rec input; longer lines are squeezed (2048).
    pub rec_max_width: u32,
    /// Most cls or rec requests one page has queued at once (16), so one big page
    /// cannot fill a pool's queue by itself.
    pub max_requests_per_page: usize,
}

impl Default for OcrOptions {
    fn default() -> Self {
        OcrOptions {
            det_preprocess: DetPreprocess::default(),
            det_postprocess: DetPostprocess::default(),
            cls_threshold: 0.9,
            line_padding: 0.2,
            text_threshold: 0.5,
            rec_width_bucket: 64,
            rec_max_width: 2048,
            max_requests_per_page: 16,
        }
    }
}

/// One recognised line, its box in page pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OcrLine {
    pub text: String,
    pub confidence: f32,
    pub bbox: TextBox,
    /// True when the line was upside down and turned before recognition.
    pub rotated: bool,
}

#[derive(Clone)]
pub struct OcrPipeline {
    det: PoolHandle,
    cls: Option<PoolHandle>,
    rec: PoolHandle,
    charset: Arc<Charset>,
    options: Arc<OcrOptions>,
}

impl OcrPipeline {
    /// Checks the pools hold models of the expected shapes and reads the rec model's
    /// character list. `cls` is optional: without it lines are assumed upright.
    pub fn new(
        det: PoolHandle,
        cls: Option<PoolHandle>,
        rec: PoolHandle,
        options: OcrOptions,
    ) -> Result<OcrPipeline> {
        for pool in [Some(&det), cls.as_ref(), Some(&rec)].into_iter().flatten() {
            let signature = pool.signature();
            if signature.inputs.len() != 1 || signature.outputs.is_empty() {
                return Err(Error::Ocr(format!(
                    "pool {}: expected one image input and an output",
                    pool.name()
                )));
            }
        }
        let Some(characters) = rec.signature().metadata.get("character") else {
            return Err(Error::Ocr(format!(
                "pool {}: the rec model has no `character` metadata",
                rec.name()
            )));
        };
        let charset = Charset::from_metadata(characters)?;
        if let Some(Dim::Fixed(classes)) = rec.signature().outputs[0].shape.last() {
            if *classes != charset.len() {
                return Err(Error::Ocr(format!(
                    "pool {}: the model has {classes} classes but its character list gives {}",
                    rec.name(),
                    charset.len()
                )));
            }
        }
        Ok(OcrPipeline {
            det,
            cls,
            rec,
            charset: Arc::new(charset),
            options: Arc::new(options),
        })
    }

    /// Decodes a PNG or JPEG and recognises it.
    pub async fn recognize_encoded(&self, encoded: Vec<u8>) -> Result<Vec<OcrLine>> {
        let page = blocking(move || {
            decode_image(&encoded)
                .map_err(|error| Error::Ocr(format!("decoding the image: {error}")))
        })
        .await??;
        self.recognize(page).await
    }

    /// Lines of text on `page`, in reading order.
    pub async fn recognize(&self, page: RgbImage) -> Result<Vec<OcrLine>> {
        let page = Arc::new(page);
        let boxes = self.detect(Arc::clone(&page)).await?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let options = Arc::clone(&self.options);
        let crops = blocking({
            let page = Arc::clone(&page);
            let boxes = boxes.clone();
            let padding = options.line_padding;
            move || line_crops(&page, &boxes, padding)
        })
        .await?;
        let (crops, rotated) = match &self.cls {
            Some(cls) => self.orient(cls, crops).await?,
            None => {
                let upright = vec![false; crops.len()];
                (crops, upright)
            }
        };
        let texts = self.read(crops).await?;
        let mut lines = Vec::new();
        for ((text_box, rotated), decoded) in boxes.into_iter().zip(rotated).zip(texts) {
            if let Some(line) = recognised_line(text_box, rotated, decoded, options.text_threshold)
            {
                lines.push(line);
            }
        }
        debug!(lines = lines.len(), "page recognised");
        Ok(lines)
    }

    async fn detect(&self, page: Arc<RgbImage>) -> Result<Vec<TextBox>> {
        let preprocess = self.options.det_preprocess.clone();
        let input = blocking({
            let page = Arc::clone(&page);
            move || det_input(&page, &preprocess)
        })
        .await?;
        let outputs = self
            .det
            .infer(single_input(&self.det, input.tensor))
            .await?;
        let probabilities = first_output(&self.det, outputs)?;
        let Some(map_size) = probability_map_size(probabilities.shape()) else {
            return Err(Error::Ocr(format!(
                "pool {}: det output has shape {:?}, expected [1, 1, h, w]",
                self.det.name(),
                probabilities.shape()
            )));
        };
        let postprocess = self.options.det_postprocess.clone();
        let scale = (input.scale_x, input.scale_y);
        blocking(move || {
            let values = probabilities.to_vec::<f32>()?;
            let page_size = (page.width(), page.height());
            Ok(page_boxes(
                &values,
                map_size,
                scale,
                page_size,
                &postprocess,
            ))
        })
        .await?
    }

    async fn orient(
        &self,
        cls: &PoolHandle,
        crops: Vec<RgbImage>,
    ) -> Result<(Vec<RgbImage>, Vec<bool>)> {
        let crops = Arc::new(crops);
        let inputs = blocking({
            let crops = Arc::clone(&crops);
            move || crops.iter().map(cls_input).collect::<Vec<_>>()
        })
        .await?;
        let threshold = self.options.cls_threshold;
        let flips: Vec<bool> = stream::iter(inputs)
            .map(|tensor| async move {
                let outputs = cls.infer(single_input(cls, tensor)).await?;
                let probabilities = first_output(cls, outputs)?.to_vec::<f32>()?;
                Ok::<bool, Error>(is_upside_down(&probabilities, threshold))
            })
            .buffered(self.options.max_requests_per_page.max(1))
            .try_collect()
            .await?;
        let flipped = flips.clone();
        let turned = blocking(move || {
            crops
                .iter()
                .zip(&flipped)
                .map(|(crop, &flip)| {
                    if flip {
                        rotate_half_turn(crop)
                    } else {
                        crop.clone()
                    }
                })
                .collect::<Vec<_>>()
        })
        .await?;
        Ok((turned, flips))
    }

    async fn read(&self, crops: Vec<RgbImage>) -> Result<Vec<Decoded>> {
        let (bucket, max_width) = (self.options.rec_width_bucket, self.options.rec_max_width);
        let inputs = blocking(move || {
            crops
                .iter()
                .map(|crop| rec_input(crop, rec_width(crop, bucket, max_width)))
                .collect::<Vec<_>>()
        })
        .await?;
        let rec = &self.rec;
        let charset = &self.charset;
        stream::iter(inputs)
            .map(|tensor| async move {
                let outputs = rec.infer(single_input(rec, tensor)).await?;
                let probabilities = first_output(rec, outputs)?;
                let classes = probabilities.shape().last().copied().unwrap_or(0);
                ctc_greedy_decode(&probabilities.to_vec::<f32>()?, classes, charset)
            })
            .buffered(self.options.max_requests_per_page.max(1))
            .try_collect()
            .await
    }
}

/// Decodes a PNG or JPEG into RGB pixels.
pub(crate) fn decode_image(encoded: &[u8]) -> std::result::Result<RgbImage, image::ImageError> {
    image::load_from_memory(encoded).map(|image| image.to_rgb8())
}

/// `(width, height)` of a detector probability map shaped `[1, 1, height, width]`.
pub(crate) fn probability_map_size(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [1, 1, height, width] => Some((*width, *height)),
        _ => None,
    }
}

/// Text boxes in page pixels, in reading order, from a probability map of
/// `map_size` (width, height) whose pixels cover `scale` page pixels each.
pub(crate) fn page_boxes(
    probabilities: &[f32],
    map_size: (usize, usize),
    scale: (f32, f32),
    page_size: (u32, u32),
    postprocess: &DetPostprocess,
) -> Vec<TextBox> {
    let (map_width, map_height) = map_size;
    let (scale_x, scale_y) = scale;
    let (page_width, page_height) = page_size;
    extract_boxes(probabilities, map_width, map_height, postprocess)
        .iter()
        .map(|found| found.scaled(scale_x, scale_y, page_width, page_height))
        .collect()
}

/// The crop of each box, grown by `padding` (see `OcrOptions::line_padding`).
pub(crate) fn line_crops(page: &RgbImage, boxes: &[TextBox], padding: f32) -> Vec<RgbImage> {
    boxes
        .iter()
        .map(|text_box| crop_line(page, &text_box.padded(padding, page.width(), page.height())))
        .collect()
}

/// Whether the direction classifier's probabilities (classes `[0°, 180°]`) say
/// the line is upside down with more than `threshold`.
pub(crate) fn is_upside_down(probabilities: &[f32], threshold: f32) -> bool {
    probabilities.len() == 2 && probabilities[1] > probabilities[0] && probabilities[1] > threshold
}

/// The line as recognised, or `None` when its text is blank or less confident
/// than `text_threshold`.
pub(crate) fn recognised_line(
    bbox: TextBox,
    rotated: bool,
    decoded: Decoded,
    text_threshold: f32,
) -> Option<OcrLine> {
    if decoded.confidence < text_threshold || decoded.text.trim().is_empty() {
        return None;
    }
    // Padding right of a short line (batched at a wider line's width) can
    // read as a space; spaces at a line's ends carry nothing.
    Some(OcrLine {
        text: decoded.text.trim().to_string(),
        confidence: decoded.confidence,
        bbox,
        rotated,
    })
}

fn single_input(pool: &PoolHandle, tensor: Tensor) -> TensorMap {
    // `new` checked every pool has exactly one input.
    let name = pool
        .signature()
        .inputs
        .first()
        .map(|spec| spec.name.clone())
        .unwrap_or_default();
    TensorMap::from([(name, tensor)])
}

fn first_output(pool: &PoolHandle, mut outputs: TensorMap) -> Result<Tensor> {
    let name = &pool.signature().outputs[0].name;
    outputs
        .remove(name)
        .ok_or_else(|| Error::Ocr(format!("pool {}: no output {name:?}", pool.name())))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Ocr(format!("image processing task failed: {error}")))
}

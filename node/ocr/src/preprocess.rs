//! Image → tensor for the three PP-OCR models. The models were trained on OpenCV
//! images, so channels go in BGR order, NCHW, normalised per channel.

use image::imageops::{self, FilterType};
use image::RgbImage;
use ndarray::Array4;
use serde::{Deserialize, Serialize};

use floe_inference::Tensor;

/// Height of cls and rec inputs.
pub const LINE_HEIGHT: u32 = 48;
/// Width of cls inputs (narrower crops are padded, wider ones squeezed).
pub const CLS_WIDTH: u32 = 192;
/// Narrowest rec input, as PP-OCR batches lines padded to at least 320.
pub const REC_MIN_WIDTH: u32 = 320;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetPreprocess {
    /// The longer side is scaled down to at most this (default 960).
    pub max_side: u32,
    /// The shorter side is scaled up to at least this (default 64): tiny images give
    /// the detector too few pixels.
    pub min_side: u32,
    /// Per channel, applied to value/255, in B, G, R order (PP-OCR's ImageNet values).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for DetPreprocess {
    fn default() -> Self {
        DetPreprocess {
            max_side: 960,
            min_side: 64,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Detector input and how to map its pixels back to the page.
#[derive(Clone, Debug)]
pub struct DetInput {
    /// `[1, 3, height, width]`, both multiples of 32.
    pub tensor: Tensor,
    pub width: u32,
    pub height: u32,
    /// Page pixels per detector pixel, per axis.
    pub scale_x: f32,
    pub scale_y: f32,
}

fn round_to_32(value: f32) -> u32 {
    ((value / 32.0).round() as u32).max(1) * 32
}

/// Resizes so that both sides are multiples of 32 within the side limits, then
/// normalises.
pub fn det_input(page: &RgbImage, options: &DetPreprocess) -> DetInput {
    let (page_width, page_height) = (page.width().max(1) as f32, page.height().max(1) as f32);
    let longer = page_width.max(page_height);
    let shorter = page_width.min(page_height);
    let mut ratio = 1.0f32;
    if longer > options.max_side as f32 {
        ratio = options.max_side as f32 / longer;
    } else if shorter < options.min_side as f32 {
        ratio = (options.min_side as f32 / shorter).min(options.max_side as f32 / longer);
    }
    let width = round_to_32(page_width * ratio);
    let height = round_to_32(page_height * ratio);
    let resized = imageops::resize(page, width, height, FilterType::Triangle);
    let tensor = to_nchw(&resized, width, options.mean, options.std);
    DetInput {
        tensor,
        width,
        height,
        scale_x: page_width / width as f32,
        scale_y: page_height / height as f32,
    }
}

/// `[1, 3, 48, 192]`: the crop scaled to height 48 keeping its aspect ratio (at most
/// 192 wide), values in [-1, 1], padded with 0 on the right.
pub fn cls_input(crop: &RgbImage) -> Tensor {
    line_input(crop, CLS_WIDTH, CLS_WIDTH)
}

/// Width a rec input for `crop` gets: the scaled width rounded up to `bucket` (so
/// lines from different callers often share a shape and can be batched), at least
/// 320, at most `max_width`.
pub fn rec_width(crop: &RgbImage, bucket: u32, max_width: u32) -> u32 {
    let scaled = scaled_width(crop, max_width);
    let bucket = bucket.max(1);
    scaled
        .div_ceil(bucket)
        .saturating_mul(bucket)
        .clamp(REC_MIN_WIDTH, max_width.max(REC_MIN_WIDTH))
}

/// `[1, 3, 48, width]`: like `cls_input`, padded to `width`.
pub fn rec_input(crop: &RgbImage, width: u32) -> Tensor {
    line_input(crop, width, width)
}

fn scaled_width(crop: &RgbImage, max_width: u32) -> u32 {
    let ratio = crop.width().max(1) as f32 / crop.height().max(1) as f32;
    ((LINE_HEIGHT as f32 * ratio).ceil() as u32).clamp(1, max_width)
}

fn line_input(crop: &RgbImage, max_width: u32, padded_width: u32) -> Tensor {
    let width = scaled_width(crop, max_width);
    let resized = imageops::resize(crop, width, LINE_HEIGHT, FilterType::Triangle);
    to_nchw(&resized, padded_width, [0.5; 3], [0.5; 3])
}

/// BGR planes of `image`, normalised, zero-padded on the right to `padded_width`.
fn to_nchw(image: &RgbImage, padded_width: u32, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let padded = (padded_width as usize).max(width);
    let mut planes = Array4::<f32>::zeros((1, 3, height, padded));
    for (x, y, pixel) in image.enumerate_pixels() {
        for (plane, rgb_index) in [2usize, 1, 0].into_iter().enumerate() {
            let value = f32::from(pixel.0[rgb_index]) / 255.0;
            planes[[0, plane, y as usize, x as usize]] = (value - mean[plane]) / std[plane];
        }
    }
    Tensor::from_array(planes.view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn det_sides_become_multiples_of_32_within_limits() {
        let page = RgbImage::from_pixel(1000, 500, Rgb([255, 255, 255]));
        let input = det_input(&page, &DetPreprocess::default());
        assert_eq!((input.width, input.height), (960, 480));
        assert_eq!(input.tensor.shape(), &[1, 3, 480, 960]);
        assert!((input.scale_x - 1000.0 / 960.0).abs() < 1e-6);

        let strip = RgbImage::from_pixel(300, 20, Rgb([255, 255, 255]));
        let input = det_input(&strip, &DetPreprocess::default());
        assert_eq!(input.height % 32, 0);
        assert!(
            input.height >= 64,
            "short side scaled up, got {}",
            input.height
        );
    }

    #[test]
    fn det_normalises_in_bgr_order() {
        let page = RgbImage::from_pixel(32, 32, Rgb([255, 0, 0]));
        let options = DetPreprocess {
            mean: [0.0; 3],
            std: [1.0; 3],
            ..DetPreprocess::default()
        };
        let values = det_input(&page, &options).tensor.to_vec::<f32>().unwrap();
        let plane = 64 * 64; // min_side scales the 32×32 page to 64×64
        assert_eq!(values[0], 0.0, "blue plane first");
        assert_eq!(values[2 * plane], 1.0, "red plane last");
    }

    #[test]
    fn line_inputs_keep_aspect_and_pad_with_zero() {
        let white = RgbImage::from_pixel(48, 24, Rgb([255, 255, 255])); // 2:1 → 96 wide
        let tensor = cls_input(&white);
        assert_eq!(tensor.shape(), &[1, 3, 48, 192]);
        let values = tensor.to_vec::<f32>().unwrap();
        assert_eq!(values[0], 1.0, "white is +1");
        assert_eq!(values[95], 1.0);
        assert_eq!(values[96], 0.0, "padding is 0");
        let black = RgbImage::from_pixel(10, 10, Rgb([0, 0, 0]));
        assert_eq!(rec_input(&black, 320).to_vec::<f32>().unwrap()[0], -1.0);
    }

    #[test]
    fn rec_widths_are_bucketed() {
        let line = RgbImage::new(700, 48);
        assert_eq!(rec_width(&line, 64, 2048), 704);
        let short = RgbImage::new(60, 48);
        assert_eq!(rec_width(&short, 64, 2048), 320);
        let long = RgbImage::new(10_000, 48);
        assert_eq!(rec_width(&long, 64, 2048), 2048);
    }
}

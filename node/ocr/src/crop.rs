//! Cutting text lines out of a page and turning them upright.

use image::imageops;
use image::RgbImage;

use crate::detect::TextBox;

/// The pixels of `text_box` (page coordinates, rounded outwards). Crops at least
/// 1.5 times taller than wide are taken as vertical text and turned 90° counter-
/// clockwise, as PP-OCR does, so the recogniser reads them left to right.
pub fn crop_line(page: &RgbImage, text_box: &TextBox) -> RgbImage {
    let x0 = (text_box.x0.floor().max(0.0) as u32).min(page.width().saturating_sub(1));
    let y0 = (text_box.y0.floor().max(0.0) as u32).min(page.height().saturating_sub(1));
    let x1 = (text_box.x1.ceil() as u32).clamp(x0 + 1, page.width().max(x0 + 1));
    let y1 = (text_box.y1.ceil() as u32).clamp(y0 + 1, page.height().max(y0 + 1));
    let crop = imageops::crop_imm(page, x0, y0, x1 - x0, y1 - y0).to_image();
    if crop.height() as f32 >= 1.5 * crop.width() as f32 {
        return imageops::rotate270(&crop);
    }
    crop
}

/// Upside-down lines (as the direction classifier says) are turned 180°.
pub fn rotate_half_turn(crop: &RgbImage) -> RgbImage {
    imageops::rotate180(crop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn crops_round_outwards_and_stay_inside_the_page() {
        let mut page = RgbImage::from_pixel(100, 50, Rgb([255, 255, 255]));
        page.put_pixel(10, 5, Rgb([0, 0, 0]));
        let crop = crop_line(
            &page,
            &TextBox {
                x0: 10.4,
                y0: 5.6,
                x1: 40.2,
                y1: 15.1,
                score: 1.0,
            },
        );
        assert_eq!(crop.dimensions(), (31, 11));
        assert_eq!(crop.get_pixel(0, 0), &Rgb([0, 0, 0]));
        let edge = crop_line(
            &page,
            &TextBox {
                x0: 90.0,
                y0: 40.0,
                x1: 130.0,
                y1: 70.0,
                score: 1.0,
            },
        );
        assert_eq!(edge.dimensions(), (10, 10));
    }

    #[test]
    fn tall_crops_are_turned_to_read_horizontally() {
        let page = RgbImage::from_pixel(100, 100, Rgb([255, 255, 255]));
        let crop = crop_line(
            &page,
            &TextBox {
                x0: 0.0,
                y0: 0.0,
                x1: 10.0,
                y1: 40.0,
                score: 1.0,
            },
        );
        assert_eq!(crop.dimensions(), (40, 10));
    }
}

//! Draws text into an image with a TrueType font: test pages and benchmark inputs
//! that need no image files.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::error::{Error, Result};

/// Black `text` on white, `pixel_height` tall (ascent to descent), with `margin`
/// pixels of white on every side.
pub fn render_text_line(
    font_bytes: &[u8],
    text: &str,
    pixel_height: f32,
    margin: u32,
) -> Result<RgbImage> {
    let font = FontRef::try_from_slice(font_bytes)
        .map_err(|error| Error::Ocr(format!("font: {error}")))?;
    let scaled = font.as_scaled(PxScale::from(pixel_height));
    let mut caret = 0.0f32;
    let mut previous = None;
    let mut glyphs = Vec::new();
    for character in text.chars() {
        let id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        glyphs.push(
            id.with_scale_and_position(pixel_height, ab_glyph::point(caret, scaled.ascent())),
        );
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    let width = caret.ceil() as u32 + 2 * margin;
    let height = (scaled.ascent() - scaled.descent()).ceil() as u32 + 2 * margin;
    let mut image = RgbImage::from_pixel(width.max(1), height.max(1), Rgb([255, 255, 255]));
    for glyph in glyphs {
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // spaces have no outline
        };
        let bounds = outline.px_bounds();
        outline.draw(|x, y, coverage| {
            let px = bounds.min.x as i64 + i64::from(x) + i64::from(margin);
            let py = bounds.min.y as i64 + i64::from(y) + i64::from(margin);
            if px < 0 || py < 0 || px >= i64::from(width) || py >= i64::from(height) {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            let ink = (coverage.clamp(0.0, 1.0) * 255.0) as u8;
            let value = pixel.0[0].saturating_sub(ink);
            *pixel = Rgb([value, value, value]);
        });
    }
    Ok(image)
}

/// Places `lines` one under another on a white page, `spacing` pixels apart.
pub fn stack_lines(lines: &[RgbImage], spacing: u32) -> RgbImage {
    let width = lines.iter().map(RgbImage::width).max().unwrap_or(1);
    let height = lines
        .iter()
        .map(|line| line.height() + spacing)
        .sum::<u32>()
        + spacing;
    let mut page = RgbImage::from_pixel(width, height.max(1), Rgb([255, 255, 255]));
    let mut top = spacing;
    for line in lines {
        image::imageops::replace(&mut page, line, 0, i64::from(top));
        top += line.height() + spacing;
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_font_is_an_error() {
        assert!(render_text_line(b"not a font", "x", 20.0, 2).is_err());
    }
}

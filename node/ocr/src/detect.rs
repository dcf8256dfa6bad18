//! Detector post-processing (DB): probability map → text boxes.
//!
//! Threshold the map, dilate by one pixel, label 8-connected components, take each
//! component's axis-aligned box, score it by the mean probability inside, and grow
//! it by the DB "unclip" margin (area × ratio / perimeter), since the detector is
//! trained to mark a shrunk core of each text region. Boxes are axis-aligned: text
//! rotated by more than a few degrees is not handled.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetPostprocess {
    /// Pixels above this probability are text (default 0.3).
    pub threshold: f32,
    /// Boxes whose mean probability is below this are dropped (default 0.5).
    pub box_threshold: f32,
    /// Margin factor (default 1.6).
    pub unclip_ratio: f32,
    /// Boxes with a shorter side below this many detector pixels are dropped (default 3).
    pub min_size: u32,
    /// At most this many components are considered (default 1000).
    pub max_candidates: usize,
}

impl Default for DetPostprocess {
    fn default() -> Self {
        DetPostprocess {
            threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            min_size: 3,
            max_candidates: 1000,
        }
    }
}

/// An axis-aligned box, in pixels: `x0 <= x < x1`, `y0 <= y < y1`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    /// Mean detector probability inside the box before the margin.
    pub score: f32,
}

impl TextBox {
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }

    /// Grown by `fraction` of its height on every side, clipped to the page.
    pub fn padded(&self, fraction: f32, page_width: u32, page_height: u32) -> TextBox {
        let margin = self.height() * fraction.max(0.0);
        TextBox {
            x0: (self.x0 - margin).max(0.0),
            y0: (self.y0 - margin).max(0.0),
            x1: (self.x1 + margin).min(page_width as f32),
            y1: (self.y1 + margin).min(page_height as f32),
            score: self.score,
        }
    }

    /// Maps detector pixels to page pixels and clips to the page.
    pub fn scaled(&self, scale_x: f32, scale_y: f32, page_width: u32, page_height: u32) -> TextBox {
        TextBox {
            x0: (self.x0 * scale_x).clamp(0.0, page_width as f32),
            y0: (self.y0 * scale_y).clamp(0.0, page_height as f32),
            x1: (self.x1 * scale_x).clamp(0.0, page_width as f32),
            y1: (self.y1 * scale_y).clamp(0.0, page_height as f32),
            score: self.score,
        }
    }
}

/// Boxes in `probabilities` (row-major `height × width`), in detector pixels.
pub fn extract_boxes(
    probabilities: &[f32],
    width: usize,
    height: usize,
    options: &DetPostprocess,
) -> Vec<TextBox> {
    if width == 0 || height == 0 || probabilities.len() != width * height {
        return Vec::new();
    }
    let mask = dilate(&threshold(probabilities, options.threshold), width, height);
    let mut boxes = Vec::new();
    for component in components(&mask, width, height)
        .into_iter()
        .take(options.max_candidates)
    {
        let (x0, y0, x1, y1) = component;
        let (box_width, box_height) = ((x1 - x0) as f32, (y1 - y0) as f32);
        if box_width.min(box_height) < options.min_size as f32 {
            continue;
        }
        let score = mean_inside(probabilities, width, component);
        if score < options.box_threshold {
            continue;
        }
        let margin =
            box_width * box_height * options.unclip_ratio / (2.0 * (box_width + box_height));
        let grown = TextBox {
            x0: (x0 as f32 - margin).max(0.0),
            y0: (y0 as f32 - margin).max(0.0),
            x1: (x1 as f32 + margin).min(width as f32),
            y1: (y1 as f32 + margin).min(height as f32),
            score,
        };
        if grown.width().min(grown.height()) < (options.min_size + 2) as f32 {
            continue;
        }
        boxes.push(grown);
    }
    sort_reading_order(&mut boxes);
    boxes
}

fn threshold(probabilities: &[f32], threshold: f32) -> Vec<bool> {
    probabilities.iter().map(|&p| p > threshold).collect()
}

/// 2×2 dilation (each set pixel also sets its right, lower and lower-right
/// neighbours): joins characters split by a one-pixel gap, as PP-OCR does.
fn dilate(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut grown = mask.to_vec();
    for y in 0..height {
        for x in 0..width {
            if !mask[y * width + x] {
                continue;
            }
            let right = (x + 1).min(width - 1);
            let below = (y + 1).min(height - 1);
            grown[y * width + right] = true;
            grown[below * width + x] = true;
            grown[below * width + right] = true;
        }
    }
    grown
}

/// Bounding boxes `(x0, y0, x1, y1)` (exclusive ends) of 8-connected components,
/// in scan order of their first pixel.
fn components(mask: &[bool], width: usize, height: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut seen = vec![false; mask.len()];
    let mut stack = Vec::new();
    let mut found = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(index) = stack.pop() {
            let (x, y) = (index % width, index / width);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let neighbour = ny * width + nx;
                    if mask[neighbour] && !seen[neighbour] {
                        seen[neighbour] = true;
                        stack.push(neighbour);
                    }
                }
            }
        }
        found.push((x0, y0, x1, y1));
    }
    found
}

fn mean_inside(
    probabilities: &[f32],
    width: usize,
    (x0, y0, x1, y1): (usize, usize, usize, usize),
) -> f32 {
    let mut sum = 0.0f64;
    for y in y0..y1 {
        sum += probabilities[y * width + x0..y * width + x1]
            .iter()
            .map(|&p| f64::from(p))
            .sum::<f64>();
    }
    let count = ((x1 - x0) * (y1 - y0)).max(1);
    (sum / count as f64) as f32
}

/// Top to bottom, then left to right among boxes whose tops are within 10 pixels.
pub fn sort_reading_order(boxes: &mut [TextBox]) {
    boxes.sort_by(|a, b| a.y0.total_cmp(&b.y0).then(a.x0.total_cmp(&b.x0)));
    // Insertion pass, as the same-line rule is not a total order.
    for index in 1..boxes.len() {
        let mut current = index;
        while current > 0 {
            let (previous, this) = (boxes[current - 1], boxes[current]);
            if (this.y0 - previous.y0).abs() < 10.0 && this.x0 < previous.x0 {
                boxes.swap(current - 1, current);
                current -= 1;
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `width × height` map with rectangles of probability `p`.
    fn map(width: usize, height: usize, rects: &[(usize, usize, usize, usize, f32)]) -> Vec<f32> {
        let mut values = vec![0.0; width * height];
        for &(x0, y0, x1, y1, p) in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    values[y * width + x] = p;
                }
            }
        }
        values
    }

    #[test]
    fn one_rectangle_gives_one_box_grown_by_the_unclip_margin() {
        let probabilities = map(100, 40, &[(20, 10, 60, 20, 0.9)]);
        let options = DetPostprocess::default();
        let boxes = extract_boxes(&probabilities, 100, 40, &options);
        assert_eq!(boxes.len(), 1);
        let found = boxes[0];
        // Dilation adds a pixel right and below: 41 × 11 core, score diluted by that rim.
        let (w, h) = (41.0f32, 11.0f32);
        let margin = w * h * 1.6 / (2.0 * (w + h));
        assert!((found.x0 - (20.0 - margin)).abs() < 1e-4, "{found:?}");
        assert!((found.y1 - (21.0 + margin)).abs() < 1e-4, "{found:?}");
        assert!(
            (found.score - 0.9 * 400.0 / (w * h)).abs() < 1e-4,
            "{found:?}"
        );
    }

    #[test]
    fn separate_regions_are_separate_boxes_in_reading_order() {
        let probabilities = map(
            120,
            60,
            &[
                (70, 5, 110, 15, 0.9),
                (5, 7, 50, 17, 0.9),
                (5, 35, 100, 45, 0.9),
            ],
        );
        let boxes = extract_boxes(&probabilities, 120, 60, &DetPostprocess::default());
        assert_eq!(boxes.len(), 3);
        assert!(boxes[0].x0 < boxes[1].x0, "same line: left first {boxes:?}");
        assert!(boxes[2].y0 > boxes[1].y1, "second line last {boxes:?}");
    }

    #[test]
    fn faint_small_and_sub_threshold_regions_are_dropped() {
        let probabilities = map(
            100,
            40,
            &[
                (10, 10, 40, 20, 0.2),  // below the pixel threshold
                (50, 10, 51, 11, 0.9),  // a speck: 2 px after dilation, under min_size
                (60, 10, 90, 20, 0.35), // passes the pixel threshold, fails the box score
            ],
        );
        assert!(extract_boxes(&probabilities, 100, 40, &DetPostprocess::default()).is_empty());
    }

    #[test]
    fn a_one_pixel_gap_is_bridged_by_dilation() {
        let probabilities = map(100, 30, &[(10, 10, 30, 20, 0.9), (31, 10, 50, 20, 0.9)]);
        let boxes = extract_boxes(&probabilities, 100, 30, &DetPostprocess::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
    }

    #[test]
    fn malformed_maps_give_no_boxes() {
        assert!(extract_boxes(&[0.9; 10], 4, 4, &DetPostprocess::default()).is_empty());
        assert!(extract_boxes(&[], 0, 0, &DetPostprocess::default()).is_empty());
    }

    #[test]
    fn padding_grows_by_a_fraction_of_the_height() {
        let line = TextBox {
            x0: 10.0,
            y0: 10.0,
            x1: 90.0,
            y1: 30.0,
            score: 0.9,
        };
        let padded = line.padded(0.25, 100, 100);
        assert_eq!(
            (padded.x0, padded.y0, padded.x1, padded.y1),
            (5.0, 5.0, 95.0, 35.0)
        );
        let clipped = line.padded(1.0, 100, 40);
        assert_eq!(
            (clipped.x0, clipped.y0, clipped.x1, clipped.y1),
            (0.0, 0.0, 100.0, 40.0)
        );
    }

    #[test]
    fn scaling_maps_to_page_pixels_and_clips() {
        let detected = TextBox {
            x0: -2.0,
            y0: 10.0,
            x1: 50.0,
            y1: 20.0,
            score: 0.9,
        };
        let page = detected.scaled(2.0, 0.5, 80, 100);
        assert_eq!((page.x0, page.y0, page.x1, page.y1), (0.0, 5.0, 80.0, 10.0));
    }
}

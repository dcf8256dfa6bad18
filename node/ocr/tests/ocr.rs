//! The real PP-OCR models through pools, on text rendered with DejaVu Sans.
//!
//! Text is compared exactly, spaces and case included: the pipeline pads crops so
//! the recogniser sees the gaps between words (see `OcrOptions::line_padding`).

mod common;

use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Duration;

use floe_inference::PoolHandle;
use floe_ocr::{stack_lines, Error, OcrOptions, OcrPipeline};
use futures::future::join_all;
use image::RgbImage;

const BOUND: Duration = Duration::from_secs(120);

struct Pools {
    det: PoolHandle,
    cls: PoolHandle,
    rec: PoolHandle,
    pipeline: OcrPipeline,
}

/// One set of pools for every test here, created once (so the memory each pool
/// measures is not disturbed by other tests allocating at the same time).
fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        let runtime = common::runtime();
        let start = |model: &str, max_batch: usize| common::ppocr_pool(&runtime, model, max_batch);
        let (det, cls, rec) = (start("det", 4), start("cls", 8), start("rec", 8));
        let pipeline = OcrPipeline::new(
            det.clone(),
            Some(cls.clone()),
            rec.clone(),
            OcrOptions::default(),
        )
        .unwrap();
        Pools {
            det,
            cls,
            rec,
            pipeline,
        }
    })
}

async fn read(page: RgbImage) -> Vec<String> {
    let lines = tokio::time::timeout(BOUND, pools().pipeline.recognize(page))
        .await
        .unwrap()
        .unwrap();
    lines.into_iter().map(|line| line.text).collect()
}

#[tokio::test]
async fn a_rendered_line_is_read_back_exactly() {
    let text = "FLOE 42 INVOICE TOTAL";
    let page = common::line(text);
    let lines = tokio::time::timeout(BOUND, pools().pipeline.recognize(page.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].text, text);
    assert!(lines[0].confidence > 0.8, "{lines:?}");
    assert!(!lines[0].rotated);
    let bbox = lines[0].bbox;
    assert!(
        bbox.x0 < 40.0 && bbox.x1 > page.width() as f32 - 40.0,
        "box spans the text: {bbox:?}"
    );
    assert!(
        bbox.y0 > 10.0 && bbox.y1 < page.height() as f32 - 10.0,
        "box stays off the margins: {bbox:?}"
    );
}

#[tokio::test]
async fn lines_of_a_page_come_back_in_reading_order() {
    let texts = [
        "FLOE 42 INVOICE TOTAL",
        "Amount due 1375.20",
        "Customer AB-7731",
    ];
    let page = stack_lines(&texts.map(common::line), 16);
    assert_eq!(read(page).await, texts);
}

#[tokio::test]
async fn an_upside_down_line_is_turned_by_the_classifier() {
    let text = "ROTATED 180 DEGREES";
    let page = image::imageops::rotate180(&common::line(text));
    let lines = tokio::time::timeout(BOUND, pools().pipeline.recognize(page))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].text, text);
    assert!(lines[0].rotated);
}

#[tokio::test]
async fn encoded_images_are_decoded_and_garbage_is_a_clear_error() {
    let text = "PNG 7 BYTES";
    let mut png = Vec::new();
    common::line(text)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let lines = tokio::time::timeout(BOUND, pools().pipeline.recognize_encoded(png))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        vec![text]
    );
    let error = pools()
        .pipeline
        .recognize_encoded(b"not an image".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Ocr(ref message) if message.starts_with("decoding the image")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_blank_page_has_no_lines() {
    assert!(
        read(RgbImage::from_pixel(320, 96, image::Rgb([255, 255, 255])))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pages_share_the_pools() {
    let texts = [
        "FIRST PAGE 1",
        "SECOND PAGE 2",
        "THIRD PAGE 3",
        "FOURTH PAGE 4",
    ];
    let before = pools().rec.stats().completed;
    let results = join_all(texts.iter().map(|text| read(common::line(text)))).await;
    for (text, lines) in texts.iter().zip(results) {
        assert_eq!(lines, vec![text.to_string()]);
    }
    assert!(pools().rec.stats().completed >= before + 4);
}

#[tokio::test]
async fn pools_report_their_memory_and_batching() {
    let _ = read(common::line("WARM")).await;
    let (det, cls, rec) = (
        pools().det.stats(),
        pools().cls.stats(),
        pools().rec.stats(),
    );
    // The rec model alone is 10 MiB of weights.
    assert!(
        rec.memory_bytes > 8 << 20,
        "rec pool measured {} bytes",
        rec.memory_bytes
    );
    assert!(
        det.memory_bytes > 0 && cls.memory_bytes > 0,
        "{det:?} {cls:?}"
    );
    assert!(pools().rec.is_batched() && pools().cls.is_batched() && pools().det.is_batched());
    assert!(rec.completed >= 1 && rec.latency_p50_ms > 0.0, "{rec:?}");
}

//! A timeline of one scenario: every operation as a dot at its invocation
//! time and latency (log scale), coloured by outcome, with fault windows
//! shaded and labelled. Plain SVG, no dependencies.

use std::fmt::Write as _;

use crate::nemesis::ActiveFault;
use crate::workload::history::{OpRecord, Outcome};

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Latency axis from 0.1 ms to 10 s.
const MIN_LOG: f64 = -1.0;
const MAX_LOG: f64 = 4.0;
/// More dots than this are thinned evenly (the file stays small).
const MAX_DOTS: usize = 20_000;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(title: &str, history: &[OpRecord], faults: &[ActiveFault], end_us: u64) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let span_s = (end_us.max(1) as f64 / 1e6).max(1.0);
    let x = |us: u64| LEFT + plot_width * (us as f64 / 1e6 / span_s).min(1.0);
    let y = |latency_us: u64| {
        let ms = (latency_us as f64 / 1000.0).max(0.1);
        let position = ((ms.log10() - MIN_LOG) / (MAX_LOG - MIN_LOG)).clamp(0.0, 1.0);
        TOP + plot_height * (1.0 - position)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for fault in faults {
        let start = x(fault.started_us);
        let end = x(fault.healed_us.unwrap_or(end_us)).max(start + 1.0);
        let _ = writeln!(
            out,
            r##"<rect x="{start:.1}" y="{TOP}" width="{:.1}" height="{plot_height}" fill="#f4a259" fill-opacity="0.25"><title>{}</title></rect>"##,
            end - start,
            escape(&fault.description)
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#b5651d">{}</text>"##,
            start + 2.0,
            TOP + 12.0,
            escape(fault.nemesis.name())
        );
    }
    // Axes and grid: latency decades and a tick every few seconds.
    for decade in (MIN_LOG as i32)..=(MAX_LOG as i32) {
        let ms = 10f64.powi(decade);
        let line_y = y((ms * 1000.0) as u64);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{line_y:.1}" y2="{line_y:.1}" stroke="#ddd"/>"##,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            LEFT - 6.0,
            line_y + 4.0
        );
    }
    let step_s = ((span_s / 12.0).ceil() as u64).max(1);
    let mut second = 0;
    while (second as f64) <= span_s {
        let tick_x = x(second * 1_000_000);
        let _ = writeln!(
            out,
            r#"<text x="{tick_x:.1}" y="{:.1}" text-anchor="middle">{second}s</text>"#,
            HEIGHT - BOTTOM + 16.0
        );
        second += step_s;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency (log)</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 12.0,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0
    );
    let stride = history.len().div_ceil(MAX_DOTS).max(1);
    for record in history.iter().step_by(stride) {
        let colour = match record.outcome {
            Outcome::Ok => "#2a9d8f",
            Outcome::Fail => "#e63946",
            Outcome::Unknown => "#6a4c93",
        };
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{colour}" fill-opacity="0.6"/>"#,
            x(record.invoked_us),
            y(record.latency_us())
        );
    }
    let legend = [
        ("#2a9d8f", "ok"),
        ("#e63946", "fail (not applied)"),
        ("#6a4c93", "unknown (timeout)"),
        ("#f4a259", "fault window"),
    ];
    for (index, (colour, label)) in legend.iter().enumerate() {
        let legend_x = WIDTH - RIGHT - 540.0 + index as f64 * 135.0;
        let _ = writeln!(
            out,
            r#"<rect x="{legend_x:.1}" y="10" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="19">{label}</text>"#,
            legend_x + 14.0
        );
    }
    out.push_str("</svg>\n");
    out
}

//! Latency pictures: percentile curves written as SVG by hand (`pulsar-loadgen plot` from
//! `.hgrm` files, `--svg` from a run), one labelled series per distribution.
//!
//! The x axis is the usual "1 in N" percentile axis: log10(1/(1-p)), so 90%, 99%, 99.9%…
//! are evenly spaced and the tail gets the room; the y axis is latency in milliseconds,
//! linear from 0. This module owns the chart's geometry and its SVG text; it reads files
//! only through [`crate::hgrm`] and knows nothing about runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::hgrm::{self, Step};

pub const DEFAULT_TITLE: &str = "Latency by percentile";

const WIDTH: f64 = 880.0;
const PLOT_LEFT: f64 = 70.0;
const PLOT_WIDTH: f64 = 760.0;
const PLOT_TOP: f64 = 50.0;
const PLOT_HEIGHT: f64 = 400.0;
/// Below the plot: two lines of tick labels and the axis title.
const X_AXIS_SPACE: f64 = 64.0;
const LEGEND_LINE: f64 = 20.0;
/// The x axis reaches at least 99.999%, so pictures of short and long runs line up.
const MIN_NINES: u32 = 5;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// What `pulsar-loadgen plot` was asked to draw.
#[derive(Debug)]
pub struct Request {
    pub inputs: Vec<PathBuf>,
    /// One per input (`--label`), or none: the file names then.
    pub labels: Vec<String>,
    pub output: PathBuf,
    pub title: Option<String>,
}

/// One curve: a latency distribution and its legend text.
pub struct Series {
    pub label: String,
    pub steps: Vec<Step>,
}

/// Reads every input, draws them, writes the picture; returns what it wrote, in words.
pub fn run(request: &Request) -> Result<String, String> {
    let mut series = Vec::with_capacity(request.inputs.len());
    for (i, path) in request.inputs.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let steps = hgrm::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let label = match request.labels.get(i) {
            Some(l) => l.clone(),
            None => path.display().to_string(),
        };
        series.push(Series { label, steps });
    }
    let title = request.title.as_deref().unwrap_or(DEFAULT_TITLE);
    write(&request.output, &svg(&series, title))?;
    Ok(format!(
        "wrote {} ({} series)",
        request.output.display(),
        series.len()
    ))
}

pub fn write(path: &Path, svg: &str) -> Result<(), String> {
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Where percentile `p` (0 to 1) sits on the "1 in N" axis, in decades: log10(1/(1-p)),
/// 0 at 0%, 1 at 90%, 2 at 99%, 3 at 99.9%. None for 100%, which is infinitely far out.
pub fn nines(p: f64) -> Option<f64> {
    (0.0..1.0).contains(&p).then(|| -(1.0 - p).log10())
}

/// The tick `decades` along the percentile axis: 0%, 90%, 99%, 99.9%, …
pub fn nines_label(decades: u32) -> String {
    match decades {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!(
            "99{}{}%",
            if n > 2 { "." } else { "" },
            "9".repeat(n as usize - 2)
        ),
    }
}

/// A linear axis from 0 that holds `max`: (top, step), the step 1, 2 or 5 times a power
/// of ten, at most eight of them.
pub fn linear_ticks(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let rough = max / 8.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    // The tolerance keeps 0.3 / 0.1 = 2.9999… from growing a tick.
    let top = ((max / step) - 1e-9).ceil().max(1.0) * step;
    (top, step)
}

/// The chart's scales: decades of nines across, milliseconds up.
struct Scale {
    decades: u32,
    top: f64,
    step: f64,
}

impl Scale {
    fn fit(series: &[Series]) -> Scale {
        let drawn = series
            .iter()
            .flat_map(|s| &s.steps)
            .filter_map(|s| nines(s.percentile).map(|x| (x, s.value)));
        let (far, high) = drawn.fold((0.0f64, 0.0f64), |(f, h), (x, v)| (f.max(x), h.max(v)));
        let (top, step) = linear_ticks(high);
        Scale {
            decades: MIN_NINES.max((far - 1e-9).ceil() as u32),
            top,
            step,
        }
    }

    fn x(&self, decades: f64) -> f64 {
        PLOT_LEFT + decades / f64::from(self.decades) * PLOT_WIDTH
    }

    fn y(&self, ms: f64) -> f64 {
        PLOT_TOP + PLOT_HEIGHT * (1.0 - ms / self.top)
    }
}

/// The picture: title, grid, axes, one `<polyline class="series">` per series (in order,
/// `data-label` its label) and the legend under the plot.
pub fn svg(series: &[Series], title: &str) -> String {
    let scale = Scale::fit(series);
    let height = PLOT_TOP + PLOT_HEIGHT + X_AXIS_SPACE + LEGEND_LINE * series.len() as f64 + 12.0;
    let bottom = PLOT_TOP + PLOT_HEIGHT;
    let right = PLOT_LEFT + PLOT_WIDTH;
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    let _ = writeln!(o, r##"<g class="grid" stroke="#dddddd" stroke-width="1">"##);
    for d in 0..=scale.decades {
        let x = scale.x(f64::from(d));
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{bottom}"/>"#
        );
    }
    let ticks = (scale.top / scale.step).round() as u32;
    for k in 0..=ticks {
        let y = scale.y(f64::from(k) * scale.step);
        let _ = writeln!(
            o,
            r#"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}"/>"#
        );
    }
    let _ = writeln!(o, "</g>");

    let _ = writeln!(o, r#"<g class="x-axis" text-anchor="middle">"#);
    for d in 0..=scale.decades {
        let x = scale.x(f64::from(d));
        let _ = writeln!(
            o,
            r#"<text x="{x:.1}" y="{}">{}</text>"#,
            bottom + 16.0,
            nines_label(d)
        );
        if d > 0 {
            let _ = writeln!(
                o,
                r##"<text x="{x:.1}" y="{}" fill="#777777" font-size="10">1 in {}</text>"##,
                bottom + 29.0,
                thousands(10u64.saturating_pow(d))
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}">percentile</text>"#,
        PLOT_LEFT + PLOT_WIDTH / 2.0,
        bottom + 48.0
    );
    let _ = writeln!(o, "</g>");

    // Enough decimals to tell the steps apart: 0.2 needs one, 0.05 two.
    let decimals = (-scale.step.log10() - 1e-9).ceil().max(0.0) as usize;
    let _ = writeln!(o, r#"<g class="y-axis" text-anchor="end">"#);
    for k in 0..=ticks {
        let ms = f64::from(k) * scale.step;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" dy="0.35em">{ms:.decimals$}</text>"#,
            PLOT_LEFT - 6.0,
            scale.y(ms)
        );
    }
    let _ = writeln!(
        o,
        r#"<text transform="rotate(-90)" x="{}" y="18" text-anchor="middle">latency (ms)</text>"#,
        -(PLOT_TOP + PLOT_HEIGHT / 2.0)
    );
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        r##"<rect class="frame" x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="none" stroke="#333333"/>"##
    );

    let _ = writeln!(
        o,
        r#"<g class="curves" fill="none" stroke-width="2" stroke-linejoin="round">"#
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .steps
            .iter()
            .filter_map(|step| {
                let x = nines(step.percentile)?;
                Some(format!("{:.1},{:.1}", scale.x(x), scale.y(step.value)))
            })
            .collect();
        let label = escape(&s.label);
        let _ = writeln!(
            o,
            r#"<polyline class="series" data-series="{i}" data-label="{label}" stroke="{}" points="{}"><title>{label}</title></polyline>"#,
            COLOURS[i % COLOURS.len()],
            points.join(" ")
        );
    }
    let _ = writeln!(o, "</g>");

    let _ = writeln!(o, r#"<g class="legend">"#);
    for (i, s) in series.iter().enumerate() {
        let y = bottom + X_AXIS_SPACE + LEGEND_LINE * i as f64 + 10.0;
        let max = match s.steps.last() {
            Some(last) => format!(" (max {} ms)", last.value),
            None => " (no data)".into(),
        };
        let _ = writeln!(
            o,
            r#"<line x1="{PLOT_LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/>"#,
            PLOT_LEFT + 24.0,
            COLOURS[i % COLOURS.len()]
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{y}" dy="0.35em">{}{max}</text>"#,
            PLOT_LEFT + 32.0,
            escape(&s.label)
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(o, "</svg>");
    out
}

/// Text for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// 1000000 as "1,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_sit_one_decade_per_nine() {
        assert!(close(nines(0.0).unwrap(), 0.0));
        assert!(close(nines(0.9).unwrap(), 1.0));
        assert!(close(nines(0.99).unwrap(), 2.0));
        assert!(close(nines(0.999).unwrap(), 3.0));
        assert!(close(nines(0.99999).unwrap(), 5.0));
        // The median is log10(2) decades out: closer to 0% than to 90%.
        assert!(close(nines(0.5).unwrap(), 2f64.log10()));
        assert_eq!(nines(1.0), None);
        assert_eq!(nines(-0.1), None);
        assert_eq!(nines(f64::NAN), None);
        let labels: Vec<String> = (0..=6).map(nines_label).collect();
        assert_eq!(
            labels,
            ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        );
    }

    #[test]
    fn the_axes_map_onto_the_plot_area() {
        let series = [Series {
            label: "a".into(),
            steps: vec![
                Step {
                    value: 0.1,
                    percentile: 0.0,
                },
                Step {
                    value: 0.9,
                    percentile: 0.999,
                },
                // 100% is not drawn, so it does not stretch the y axis.
                Step {
                    value: 50.0,
                    percentile: 1.0,
                },
            ],
        }];
        let scale = Scale::fit(&series);
        assert_eq!(scale.decades, MIN_NINES);
        assert!(close(scale.top, 1.0) && close(scale.step, 0.2));
        assert!(close(scale.x(0.0), PLOT_LEFT));
        assert!(close(scale.x(5.0), PLOT_LEFT + PLOT_WIDTH));
        assert!(close(
            scale.x(nines(0.99).unwrap()),
            PLOT_LEFT + PLOT_WIDTH * 2.0 / 5.0
        ));
        assert!(close(scale.y(0.0), PLOT_TOP + PLOT_HEIGHT));
        assert!(close(scale.y(1.0), PLOT_TOP));
        // A distribution reaching 99.99999% widens the axis to seven nines.
        let deep = [Series {
            label: "b".into(),
            steps: vec![Step {
                value: 3.0,
                percentile: 0.9999999,
            }],
        }];
        assert_eq!(Scale::fit(&deep).decades, 7);
    }

    #[test]
    fn latency_ticks_are_round() {
        let ticks = |max| {
            let (top, step) = linear_ticks(max);
            ((top * 1e6).round() / 1e6, (step * 1e6).round() / 1e6)
        };
        assert_eq!(ticks(0.9), (1.0, 0.2));
        assert_eq!(ticks(0.3), (0.3, 0.05));
        assert_eq!(ticks(4.8), (5.0, 1.0));
        assert_eq!(ticks(19.0), (20.0, 5.0));
        assert_eq!(ticks(35.0), (35.0, 5.0));
        assert_eq!(ticks(1234.0), (1400.0, 200.0));
        assert_eq!(ticks(8.0), (8.0, 1.0));
        assert_eq!(ticks(0.0), (1.0, 0.2));
        assert_eq!(ticks(f64::INFINITY), (1.0, 0.2));
    }

    #[test]
    fn labels_are_escaped_and_numbers_grouped() {
        let svg = svg(
            &[Series {
                label: "a<b> & \"c\"".into(),
                steps: Vec::new(),
            }],
            "t&t",
        );
        assert!(svg.contains(r#"data-label="a&lt;b&gt; &amp; &quot;c&quot;""#));
        assert!(svg.contains(">t&amp;t<"));
        assert!(svg.contains("(no data)"));
        assert_eq!(thousands(1), "1");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100000), "100,000");
    }
}

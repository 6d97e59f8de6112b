//! The chart of a replay, as a standalone SVG: 5xx per minute and threads over time, both runs.
//!
//! The 2015 incident report told the outage with one picture, 5xx responses per minute; this chart
//! draws the same curve for the run without costguard and the run with it, and under it, on the same
//! time axis, the worker threads busy and stuck against the thread capacity, which is where the 2016
//! outage showed. It is written by hand (a few hundred elements at most) so that the command needs no
//! plotting dependency, and it is a pure function of the [`Comparison`], so the same seed writes the
//! same file.

use crate::report::{Comparison, RunReport};
use crate::table::{clock_label, count, series_max, span, time_span};
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 620.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 920.0;
/// Top and bottom of the two plot areas.
const ERRORS_PANEL: (f64, f64) = (100.0, 300.0);
const THREADS_PANEL: (f64, f64) = (360.0, 560.0);

const UNGUARDED: &str = "#d62728";
const GUARDED: &str = "#1f77b4";
const CAPACITY: &str = "#555555";
const GRID: &str = "#e6e6e6";
const INK: &str = "#222222";
const SUBTLE: &str = "#666666";
const LABELS: &str = "#444444";

/// The most points a line keeps; longer series keep the highest value of each bucket, so peaks stay.
const MAX_POINTS: usize = 1200;

/// The chart of one comparison, as a complete SVG document.
pub fn render(c: &Comparison) -> String {
    let (u, g) = (&c.unguarded, &c.guarded);
    let total = time_span(c);
    let x = Scale {
        from: 0.0,
        to: total as f64,
        low: LEFT,
        high: RIGHT,
    };

    let mut svg = String::new();
    let title = format!("{}: without and with costguard", c.scenario);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12" fill="{INK}">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(&title));
    let _ = writeln!(
        svg,
        "<desc>{}</desc>",
        escape(&format!(
            "Replay of {} with seed {}: 5xx responses per minute (top) and worker threads busy and \
             stuck (bottom) over {}, for the run without costguard (red) and the run guarded by \
             costguard (blue).",
            c.scenario,
            c.seed,
            span(total as f64)
        ))
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="30" font-size="17" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="50" fill="{SUBTLE}">{}</text>"#,
        escape(&format!(
            "5xx responses per minute and worker threads over time; seed {}, {} simulated per run, \
             the same traffic in both runs",
            c.seed,
            span(c.duration_seconds as f64)
        ))
    );

    // Top panel: 5xx per minute.
    let errors_max = series_max(&u.errors_per_minute).max(series_max(&g.errors_per_minute));
    let y = YAxis::new(errors_max, ERRORS_PANEL);
    panel_frame(&mut svg, &x, &y, total, false);
    panel_title(
        &mut svg,
        ERRORS_PANEL.0,
        "5xx responses per minute",
        &[
            Legend::area(UNGUARDED, &format!("unguarded ({} in all)", total_of(u))),
            Legend::area(GUARDED, &format!("guarded ({} in all)", total_of(g))),
        ],
    );
    for (run, colour) in [(u, UNGUARDED), (g, GUARDED)] {
        step_area(&mut svg, &run.errors_per_minute, 60, &x, &y, colour);
    }

    // Bottom panel: threads busy and stuck, against the capacity.
    let capacity = u.threads.max(g.threads);
    let threads_max = capacity
        .max(series_max(&u.threads_busy))
        .max(series_max(&g.threads_busy))
        .max(series_max(&u.threads_stuck))
        .max(series_max(&g.threads_stuck));
    let y = YAxis::new(threads_max, THREADS_PANEL);
    panel_frame(&mut svg, &x, &y, total, true);
    let mut legend = vec![
        Legend::line(UNGUARDED, false, "busy, unguarded"),
        Legend::line(UNGUARDED, true, "stuck, unguarded"),
        Legend::line(GUARDED, false, "busy, guarded"),
        Legend::line(GUARDED, true, "stuck, guarded"),
    ];
    let capacity_label = format!("capacity {}", count(capacity));
    if capacity > 0 {
        legend.push(Legend::capacity(&capacity_label));
    }
    panel_title(&mut svg, THREADS_PANEL.0, "worker threads", &legend);
    let mut capacities = vec![u.threads, g.threads];
    capacities.dedup();
    for threads in capacities.into_iter().filter(|t| *t > 0) {
        let at = y.map(threads as f64);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{at:.1}" x2="{RIGHT}" y2="{at:.1}" stroke="{CAPACITY}" stroke-width="1.2" stroke-dasharray="2 3"/>"#
        );
    }
    for (run, colour) in [(u, UNGUARDED), (g, GUARDED)] {
        step_line(
            &mut svg,
            &run.threads_busy,
            run.sample_seconds,
            &x,
            &y,
            colour,
            false,
        );
        step_line(
            &mut svg,
            &run.threads_stuck,
            run.sample_seconds,
            &x,
            &y,
            colour,
            true,
        );
    }

    // When the fault starts, across both panels (if within the run, as the table marks it).
    let within = (0.0..c.duration_seconds as f64).contains(&c.fault_at_seconds);
    if within {
        let at = x.map(c.fault_at_seconds);
        for (top, bottom) in [ERRORS_PANEL, THREADS_PANEL] {
            let _ = writeln!(
                svg,
                r#"<line x1="{at:.1}" y1="{top:.1}" x2="{at:.1}" y2="{bottom:.1}" stroke="{INK}" stroke-width="1" stroke-dasharray="1 3"/>"#
            );
        }
        let _ = writeln!(
            svg,
            // A white halo keeps it readable over the curves.
            r#"<text x="{:.1}" y="{:.1}" fill="{INK}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            at + 4.0,
            ERRORS_PANEL.0 + 14.0,
            escape(&format!("fault at {}", span(c.fault_at_seconds)))
        );
    }

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the start of the run</text>"#,
        (LEFT + RIGHT) / 2.0,
        THREADS_PANEL.1 + 42.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// A linear map from data to pixels.
struct Scale {
    from: f64,
    to: f64,
    low: f64,
    high: f64,
}

impl Scale {
    fn map(&self, v: f64) -> f64 {
        let range = self.to - self.from;
        if range <= 0.0 || !range.is_finite() {
            return self.low;
        }
        let t = ((v - self.from) / range).clamp(0.0, 1.0);
        self.low + t * (self.high - self.low)
    }
}

/// A vertical scale from 0 to a round number, with its tick step.
struct YAxis {
    scale: Scale,
    step: u64,
}

impl YAxis {
    /// From 0 to a round number at or above `max`, over the panel from `top` to `bottom`.
    fn new(max: u64, (top, bottom): (f64, f64)) -> Self {
        let step = nice_step(max.max(1).div_ceil(5));
        let to = max.max(1).div_ceil(step).saturating_mul(step);
        YAxis {
            scale: Scale {
                from: 0.0,
                to: to as f64,
                low: bottom,
                high: top,
            },
            step,
        }
    }

    fn map(&self, v: f64) -> f64 {
        self.scale.map(v)
    }

    /// The tick values, 0 first.
    fn ticks(&self) -> impl Iterator<Item = u64> {
        let (max, step) = (self.scale.to as u64, self.step.max(1));
        let mut next = Some(0u64);
        std::iter::from_fn(move || {
            let v = next.filter(|v| *v <= max)?;
            next = v.checked_add(step);
            Some(v)
        })
    }
}

/// The smallest of 1, 2, 5, 10, 20, 50, ... at or above `n`.
fn nice_step(n: u64) -> u64 {
    let mut magnitude: u64 = 1;
    loop {
        for m in [1, 2, 5] {
            let step = magnitude.saturating_mul(m);
            if step >= n || step == u64::MAX {
                return step.max(1);
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

/// Time ticks: a round step giving at most ten ticks.
fn time_step(total: u64) -> u64 {
    const STEPS: [u64; 16] = [
        10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| total / s <= 10)
        .unwrap_or_else(|| total.div_ceil(10).max(1))
}

/// Grid, axes, tick labels (times only on the bottom panel, which the top one shares).
fn panel_frame(svg: &mut String, x: &Scale, y: &YAxis, total: u64, time_labels: bool) {
    let (top, bottom) = (y.scale.high, y.scale.low);
    let _ = writeln!(svg, r#"<g stroke="{GRID}" stroke-width="1">"#);
    for v in y.ticks() {
        let at = y.map(v as f64);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{at:.1}" x2="{RIGHT}" y2="{at:.1}"/>"#
        );
    }
    let time = time_step(total);
    let mut t: u64 = 0;
    while t <= total {
        let at = x.map(t as f64);
        let _ = writeln!(
            svg,
            r#"<line x1="{at:.1}" y1="{top:.1}" x2="{at:.1}" y2="{bottom:.1}"/>"#
        );
        t = match t.checked_add(time) {
            Some(next) => next,
            None => break,
        };
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT},{top:.1} V{bottom:.1} H{RIGHT}" fill="none" stroke="{INK}" stroke-width="1"/>"#
    );
    let _ = writeln!(svg, r#"<g text-anchor="end" fill="{LABELS}">"#);
    for v in y.ticks() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT - 6.0,
            y.map(v as f64) + 4.0,
            compact(v)
        );
    }
    svg.push_str("</g>\n");
    if time_labels {
        let _ = writeln!(svg, r#"<g text-anchor="middle" fill="{LABELS}">"#);
        let mut t: u64 = 0;
        while t <= total {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x.map(t as f64),
                bottom + 18.0,
                clock_label(t)
            );
            t = match t.checked_add(time) {
                Some(next) => next,
                None => break,
            };
        }
        svg.push_str("</g>\n");
    }
}

/// A legend entry: a filled square, or a line (dashed or not).
struct Legend {
    colour: &'static str,
    kind: LegendKind,
    label: String,
}

enum LegendKind {
    Area,
    Line { dashed: bool },
    Capacity,
}

impl Legend {
    fn area(colour: &'static str, label: &str) -> Self {
        Legend {
            colour,
            kind: LegendKind::Area,
            label: label.to_owned(),
        }
    }
    fn line(colour: &'static str, dashed: bool, label: &str) -> Self {
        Legend {
            colour,
            kind: LegendKind::Line { dashed },
            label: label.to_owned(),
        }
    }
    fn capacity(label: &str) -> Self {
        Legend {
            colour: CAPACITY,
            kind: LegendKind::Capacity,
            label: label.to_owned(),
        }
    }
    /// Roughly how wide it draws, for laying entries out right to left.
    fn width(&self) -> f64 {
        26.0 + 6.2 * self.label.chars().count() as f64 + 16.0
    }
}

/// The panel's name on the left, above it; its legend on the right.
fn panel_title(svg: &mut String, top: f64, title: &str, legend: &[Legend]) {
    let baseline = top - 12.0;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{baseline:.1}" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut right = RIGHT;
    for entry in legend.iter().rev() {
        let left = right - entry.width();
        let mid = baseline - 4.0;
        match entry.kind {
            LegendKind::Area => {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="20" height="10" fill="{}" fill-opacity="0.35" stroke="{}" stroke-width="1.5"/>"#,
                    left,
                    mid - 5.0,
                    entry.colour,
                    entry.colour
                );
            }
            LegendKind::Line { dashed } => {
                let dash = if dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                };
                let _ = writeln!(
                    svg,
                    r#"<line x1="{left:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
                    left + 20.0,
                    entry.colour
                );
            }
            LegendKind::Capacity => {
                let _ = writeln!(
                    svg,
                    r#"<line x1="{left:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="{}" stroke-width="1.2" stroke-dasharray="2 3"/>"#,
                    left + 20.0,
                    entry.colour
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{baseline:.1}">{}</text>"#,
            left + 26.0,
            escape(&entry.label)
        );
        right = left;
    }
}

/// Values held for `step` seconds each, as a staircase: the points of its outline.
fn staircase(series: &[u64], step: u64, x: &Scale, y: &YAxis) -> Vec<(f64, f64)> {
    let (values, step) = bucket(series, step.max(1));
    let mut points = Vec::with_capacity(values.len() * 2);
    for (i, v) in values.iter().enumerate() {
        let from = (i as u64).saturating_mul(step);
        let to = from.saturating_add(step);
        let at = y.map(*v as f64);
        points.push((x.map(from as f64), at));
        points.push((x.map(to as f64), at));
    }
    points
}

/// At most [`MAX_POINTS`] values, each the highest of the ones it replaces.
fn bucket(series: &[u64], step: u64) -> (Vec<u64>, u64) {
    if series.len() <= MAX_POINTS {
        return (series.to_vec(), step);
    }
    let per = series.len().div_ceil(MAX_POINTS);
    let values = series
        .chunks(per)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    (values, step.saturating_mul(per as u64))
}

fn points_attr(points: &[(f64, f64)]) -> String {
    let mut s = String::with_capacity(points.len() * 14);
    for (i, (px, py)) in points.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{px:.1},{py:.1}");
    }
    s
}

fn step_area(svg: &mut String, series: &[u64], step: u64, x: &Scale, y: &YAxis, colour: &str) {
    let points = staircase(series, step, x, y);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return;
    };
    let base = y.map(0.0);
    let mut area = vec![(first.0, base)];
    area.extend_from_slice(&points);
    area.push((last.0, base));
    let _ = writeln!(
        svg,
        r#"<polygon points="{}" fill="{colour}" fill-opacity="0.15" stroke="none"/>"#,
        points_attr(&area)
    );
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8" stroke-linejoin="round"/>"#,
        points_attr(&points)
    );
}

fn step_line(
    svg: &mut String,
    series: &[u64],
    step: u64,
    x: &Scale,
    y: &YAxis,
    colour: &str,
    dashed: bool,
) {
    let points = staircase(series, step, x, y);
    if points.is_empty() {
        return;
    }
    let (width, dash) = if dashed {
        ("1.5", r#" stroke-dasharray="5 3""#)
    } else {
        ("1.8", "")
    };
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round"{dash}/>"#,
        points_attr(&points)
    );
}

fn total_of(run: &RunReport) -> String {
    count(
        run.errors_per_minute
            .iter()
            .copied()
            .fold(0, u64::saturating_add),
    )
}

/// `950`, `1.5k`, `12k`, `3.2M`: a tick label.
fn compact(n: u64) -> String {
    const STEPS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (size, suffix) in STEPS {
        if n >= size {
            let whole = n / size;
            let tenth = n % size / (size / 10);
            return if whole >= 10 || tenth == 0 {
                format!("{whole}{suffix}")
            } else {
                format!("{whole}.{tenth}{suffix}")
            };
        }
    }
    n.to_string()
}

/// Text as SVG character data or an attribute value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 does not allow most control characters, even escaped.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{run, sample};

    #[test]
    fn escaping_covers_markup_and_control_characters() {
        assert_eq!(
            escape(r#"a<b>&"c" 'd'"#),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;"
        );
        assert_eq!(escape("x\u{1}y"), "x y");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(0), 1);
        assert_eq!(nice_step(3), 5);
        assert_eq!(nice_step(2400), 5000);
        assert_eq!(nice_step(u64::MAX), u64::MAX);
        assert_eq!(time_step(600), 60);
        assert_eq!(time_step(1800), 300);
        assert_eq!(time_step(60), 10);
        assert_eq!(compact(950), "950");
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(3_200_000), "3.2M");
    }

    #[test]
    fn the_chart_has_both_panels_both_runs_and_a_title() {
        let svg = render(&sample());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("5xx responses per minute"));
        assert!(svg.contains("worker threads"));
        assert!(svg.contains("capacity 200"));
        assert!(svg.contains(">fault at 1m<"));
        assert!(svg.contains("unguarded (72,120 in all)"));
        assert!(svg.contains("guarded (4 in all)"));
        // The scenario name is escaped, in the title element and the visible title.
        assert!(svg.contains("commons-&lt;2015&gt; &amp; &quot;friends&quot;"));
        assert!(!svg.contains("<2015>"));
        // One area and line per run for errors; busy and stuck lines per run for threads.
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches(&format!("stroke=\"{UNGUARDED}\"")).count(), 6);
        assert_eq!(svg.matches(&format!("stroke=\"{GUARDED}\"")).count(), 6);
        // Time labels along the shared axis.
        for label in [">0<", ">5m<", ">10m<"] {
            assert!(svg.contains(label), "{label}");
        }
        assert_eq!(svg, render(&sample()));
    }

    #[test]
    fn the_chart_is_well_formed() {
        let svg = render(&sample());
        // Every element opened is closed, in order (a small check of well-formedness without an XML
        // parser: tags only, attributes never contain '<' or '>' after escaping).
        let mut stack = Vec::new();
        let mut rest = svg.as_str();
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').unwrap() + open;
            let tag = &rest[open + 1..close];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.to_owned()), "at {tag}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_owned());
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "{stack:?}");
        // Coordinates stay finite and inside the picture.
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_and_huge_series_draw_without_panicking() {
        let mut c = sample();
        c.duration_seconds = 0;
        c.unguarded = run(vec![], vec![], &[]);
        c.unguarded.threads = 0;
        c.guarded = run(vec![u64::MAX; 5000], vec![u64::MAX; 3], &[]);
        c.guarded.sample_seconds = 0;
        c.fault_at_seconds = f64::NAN;
        let svg = render(&c);
        assert!(!svg.contains("fault at"));
        assert!(svg.ends_with("</svg>\n"));
        // A fault after the end of the run is not drawn at its edge.
        c.fault_at_seconds = 1e300;
        assert!(!render(&c).contains("fault at"));
        c.duration_seconds = 600;
        c.fault_at_seconds = 700.0;
        assert!(!render(&c).contains("fault at"));
        c.fault_at_seconds = 180.0;
        assert!(render(&c).contains("fault at 3m"));
        // At the run's very end, as the table, which has no column there.
        c.fault_at_seconds = 600.0;
        assert!(!render(&c).contains("fault at"));
        assert!(!crate::table::render(&c).contains("the fault, at"));
        assert!(!svg.contains("NaN"));
        // Long series are bucketed.
        let line = svg
            .lines()
            .find(|l| l.starts_with("<polyline") && l.contains(GUARDED))
            .unwrap();
        assert!(line.matches(',').count() <= 2 * MAX_POINTS);
    }
}

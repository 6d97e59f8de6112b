//! The side-by-side table of a replay: what each run cost, in numbers a reader can compare at a glance.
//!
//! A replay is only convincing when both runs are read against each other, row by row: amplification,
//! the database, threads, errors, goodput, recovery. Below the rows, a timeline of sparklines shows
//! *when* things happened (threads piling up, 5xx per minute), then what costguard refused and why,
//! then the notable events of each run.
//!
//! Everything here is a pure function of the [`Comparison`]: no clock, no timing figures, no hash-map
//! order. The same seed prints the same bytes.

use crate::report::{Comparison, Event, RunReport};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The most columns a timeline row takes.
const TIMELINE_COLUMNS: u64 = 60;
/// The most events listed per run; the JSON has all of them.
const MAX_EVENTS: usize = 30;
/// Sparkline levels, lowest first; a zero is drawn as [`ZERO`] so that one error still shows.
const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const ZERO: char = '·';
/// Column steps a timeline may use, in seconds, so that its time axis reads in round numbers.
const NICE_SECONDS: [u64; 16] = [
    1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
];

/// The table of one comparison, ending with a newline.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let (u, g) = (&c.unguarded, &c.guarded);

    let summary = crate::scenarios()
        .iter()
        .find(|s| s.name == c.scenario)
        .map(|s| s.summary);
    match summary {
        Some(summary) => {
            let _ = writeln!(out, "{}: {}", c.scenario, summary);
        }
        None => {
            let _ = writeln!(out, "{}", c.scenario);
        }
    }
    let _ = writeln!(
        out,
        "seed {}, {} simulated per run, the fault at {}; the same traffic without and with costguard",
        c.seed,
        span(c.duration_seconds as f64),
        span(c.fault_at_seconds)
    );
    out.push('\n');

    let mut rows: Vec<[String; 3]> = vec![[String::new(), "unguarded".into(), "guarded".into()]];
    let mut row = |label: &str, f: &dyn Fn(&RunReport) -> String| {
        rows.push([label.to_owned(), f(u), f(g)]);
    };
    row("requests per original (amplification)", &|r| {
        times(r.amplification)
    });
    row("amplification the policy allows", &|r| {
        r.amplification_allowed
            .map_or_else(|| "-".to_owned(), |a| format!("at most {}", times(a)))
    });
    row("original edits or requests", &|r| count(r.originals));
    row("requests generated, every tier", &|r| count(r.generated));
    row("DB queries", &|r| count(r.db_queries));
    row("peak DB queue", &|r| count(r.peak_db_queue));
    row("worker threads", &|r| count(r.threads));
    row("most threads busy at once", &|r| {
        of_capacity(r.max_threads_busy, r.threads)
    });
    row("most threads stuck at once", &|r| {
        of_capacity(r.max_threads_stuck, r.threads)
    });
    row("goodput for unaffected users", &|r| {
        percent(r.goodput_unaffected)
    });
    row("5xx responses in all", &|r| {
        count(sum(&r.errors_per_minute))
    });
    row("5xx in the worst minute", &|r| {
        count(r.errors_per_minute.iter().copied().max().unwrap_or(0))
    });
    row("time to recover", &|r| match r.recovery_seconds {
        Some(s) => span(s),
        None => "never, in the run".to_owned(),
    });
    row("time degraded, in all", &|r| span(r.degraded_seconds));
    row("refused by costguard", &|r| {
        count(r.refusals.values().copied().fold(0, u64::saturating_add))
    });

    // Refusals by reason and the scenario's own tallies, in columns aligned with the table above.
    let refusals = side_by_side(&u.refusals, &g.refusals);
    let tallies = side_by_side(&u.counts, &g.counts);

    let widths = column_widths(rows.iter().chain(&refusals).chain(&tallies));
    for r in &rows {
        push_row(&mut out, r, &widths);
    }

    out.push('\n');
    timeline(&mut out, c);

    out.push('\n');
    out.push_str("refusals by reason\n");
    if refusals.is_empty() {
        out.push_str("  none\n");
    }
    for r in &refusals {
        push_row(&mut out, r, &widths);
    }

    if !tallies.is_empty() {
        out.push('\n');
        out.push_str("tallies\n");
        for r in &tallies {
            push_row(&mut out, r, &widths);
        }
    }

    out.push('\n');
    out.push_str("events\n");
    events(&mut out, "unguarded", &u.events);
    events(&mut out, "guarded", &g.events);
    out
}

/// One row per name in either map, in name order; `-` where a run has none.
fn side_by_side(u: &BTreeMap<String, u64>, g: &BTreeMap<String, u64>) -> Vec<[String; 3]> {
    let mut names: Vec<&String> = u.keys().chain(g.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let n = |m: &BTreeMap<String, u64>| m.get(name).map_or("-".to_owned(), |n| count(*n));
            [name.clone(), n(u), n(g)]
        })
        .collect()
}

fn column_widths<'a>(rows: impl Iterator<Item = &'a [String; 3]>) -> [usize; 3] {
    let mut widths = [0; 3];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

fn push_row(out: &mut String, r: &[String; 3], widths: &[usize; 3]) {
    let _ = writeln!(
        out,
        "  {:<w0$}  {:>w1$}  {:>w2$}",
        r[0],
        r[1],
        r[2],
        w0 = widths[0],
        w1 = widths[1].max(12),
        w2 = widths[2].max(12)
    );
}

/// Sparklines of threads busy, threads stuck and 5xx per minute, on one time axis.
fn timeline(out: &mut String, c: &Comparison) {
    let (u, g) = (&c.unguarded, &c.guarded);
    let total = time_span(c);
    let step = NICE_SECONDS
        .iter()
        .copied()
        .find(|s| total.div_ceil(*s) <= TIMELINE_COLUMNS)
        .unwrap_or_else(|| total.div_ceil(TIMELINE_COLUMNS));
    let columns = total.div_ceil(step);

    let _ = writeln!(
        out,
        "timeline, one column per {} (its highest value; {} is zero)",
        span(step as f64),
        ZERO
    );
    // Two spaces, the metric (14), a space, the run (9), a space.
    let label_width = 27;
    let _ = writeln!(
        out,
        "{:label_width$}{}",
        "",
        axis(step, columns),
        label_width = label_width
    );

    let capacity = u
        .threads
        .max(g.threads)
        .max(u.max_threads_busy)
        .max(g.max_threads_busy);
    let busy_scale = series_max(&u.threads_busy)
        .max(series_max(&g.threads_busy))
        .max(capacity);
    let stuck_scale = series_max(&u.threads_stuck)
        .max(series_max(&g.threads_stuck))
        .max(capacity);
    let errors_scale = series_max(&u.errors_per_minute).max(series_max(&g.errors_per_minute));

    type Pick = fn(&RunReport) -> (&[u64], u64);
    let groups: [(&str, Pick, u64); 3] = [
        (
            "threads busy",
            |r| (&r.threads_busy, r.sample_seconds),
            busy_scale,
        ),
        (
            "threads stuck",
            |r| (&r.threads_stuck, r.sample_seconds),
            stuck_scale,
        ),
        (
            "5xx per minute",
            |r| (&r.errors_per_minute, 60),
            errors_scale,
        ),
    ];
    for (name, pick, scale) in groups {
        for (i, (run, report)) in [("unguarded", u), ("guarded", g)].into_iter().enumerate() {
            let (series, series_step) = pick(report);
            let line = sparkline(series, series_step, step, columns, scale);
            // The scale once per metric: the exact highs are in the table above (the thread series
            // are samples, and may miss a short peak).
            let (label, note) = if i == 0 {
                (
                    name,
                    format!("  {} = {}", LEVELS[LEVELS.len() - 1], count(scale)),
                )
            } else {
                ("", String::new())
            };
            let _ = writeln!(out, "  {label:<14} {run:<9} {line}{note}");
        }
    }
    if c.fault_at_seconds.is_finite() && c.fault_at_seconds >= 0.0 {
        let column = (c.fault_at_seconds / step as f64).floor();
        if column < columns as f64 {
            let _ = writeln!(
                out,
                "{:pad$}^ the fault, at {}",
                "",
                span(c.fault_at_seconds),
                pad = label_width + column as usize
            );
        }
    }
}

/// A row of tick labels over `columns` columns of `step` seconds each.
fn axis(step: u64, columns: u64) -> String {
    let total = step.saturating_mul(columns);
    let tick = NICE_SECONDS
        .iter()
        .copied()
        .chain([43200, 86400])
        .find(|t| *t >= step.saturating_mul(10) && t % step == 0)
        .unwrap_or_else(|| step.saturating_mul(10));
    let mut line = String::new();
    let mut t = 0;
    while t < total {
        let column = (t / step.max(1)) as usize;
        let len = line.chars().count();
        if column >= len {
            line.extend(std::iter::repeat_n(' ', column - len));
            line.push_str(&clock_label(t));
        }
        t = t.saturating_add(tick.max(1));
    }
    line
}

/// `0`, `45s`, `5m`, `1h30m`: an axis label.
pub(crate) fn clock_label(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m, s) {
        (0, 0, 0) => "0".to_owned(),
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// One character per column of `step` seconds: the highest value of the samples (each lasting
/// `series_step` seconds) that overlap it, scaled to `scale`.
fn sparkline(series: &[u64], series_step: u64, step: u64, columns: u64, scale: u64) -> String {
    let series_step = series_step.max(1);
    let mut line = String::new();
    for column in 0..columns {
        let (from, to) = (column * step, (column + 1) * step);
        let first = from / series_step;
        let last = to.div_ceil(series_step).min(series.len() as u64);
        let values = series
            .get(first as usize..last.max(first) as usize)
            .unwrap_or(&[]);
        match values.iter().copied().max() {
            None => line.push(' '),
            Some(0) => line.push(ZERO),
            Some(v) => {
                let level = (v as u128 * LEVELS.len() as u128).div_ceil(scale.max(v) as u128);
                let level = (level as usize).clamp(1, LEVELS.len());
                line.push(LEVELS[level - 1]);
            }
        }
    }
    line
}

fn events(out: &mut String, run: &str, events: &[Event]) {
    let _ = writeln!(out, "  {run}");
    if events.is_empty() {
        out.push_str("    (none)\n");
        return;
    }
    for e in events.iter().take(MAX_EVENTS) {
        let _ = writeln!(out, "    {:>9}  {}", at(e.at_seconds), one_line(&e.what));
    }
    if events.len() > MAX_EVENTS {
        let _ = writeln!(
            out,
            "    ... and {} more (see --json)",
            events.len() - MAX_EVENTS
        );
    }
}

/// Control characters would break the table's lines: shown as spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The seconds a timeline covers: the run's length, or when that is missing, what the series cover.
/// Samples past the end (a last partial minute) are left out.
pub(crate) fn time_span(c: &Comparison) -> u64 {
    if c.duration_seconds > 0 {
        return c.duration_seconds;
    }
    let (u, g) = (&c.unguarded, &c.guarded);
    series_span(&u.threads_busy, u.sample_seconds)
        .max(series_span(&g.threads_busy, g.sample_seconds))
        .max(series_span(&u.errors_per_minute, 60))
        .max(series_span(&g.errors_per_minute, 60))
        .max(1)
}

fn series_span(series: &[u64], step: u64) -> u64 {
    (series.len() as u64).saturating_mul(step.max(1))
}

pub(crate) fn series_max(series: &[u64]) -> u64 {
    series.iter().copied().max().unwrap_or(0)
}

fn sum(series: &[u64]) -> u64 {
    series.iter().copied().fold(0, u64::saturating_add)
}

/// `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    group(&n.to_string())
}

fn group(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `520×`, `12.5×`, `1.00×`.
fn times(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return "-".to_owned();
    }
    if x >= 1000.0 {
        format!("{}×", count(x.round() as u64))
    } else if x >= 100.0 {
        format!("{x:.0}×")
    } else if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

/// `64 (32%)`.
fn of_capacity(n: u64, capacity: u64) -> String {
    if capacity == 0 {
        return count(n);
    }
    // Whole percents, as `percent` does it: never 0% or 100% when it is not.
    let share = (n as f64 / capacity as f64 * 100.0).round();
    let share = match (share, n) {
        (s, n) if s <= 0.0 && n > 0 => "<1".to_owned(),
        (s, n) if s >= 100.0 && n < capacity => "99".to_owned(),
        (s, _) => format!("{s:.0}"),
    };
    format!("{} ({share}%)", count(n))
}

/// A share from 0 to 1 as a percentage; never rounded to 100% or 0% when it is not.
fn percent(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_owned();
    }
    let p = x * 100.0;
    let shown = format!("{p:.1}");
    if shown == "100.0" && p < 100.0 {
        "99.9%".to_owned()
    } else if shown == "0.0" && p > 0.0 {
        "<0.1%".to_owned()
    } else {
        format!("{shown}%")
    }
}

/// A length of time for people: `12.5s`, `4m05s`, `2h10m`.
pub(crate) fn span(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    if seconds < 60.0 {
        let shown = format!("{seconds:.1}");
        return match shown.strip_suffix(".0") {
            Some(whole) => format!("{whole}s"),
            None => format!("{shown}s"),
        };
    }
    let whole = seconds.round() as u64;
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    match (h, s) {
        (0, 0) => format!("{m}m"),
        (0, s) => format!("{m}m{s:02}s"),
        (h, _) if m == 0 => format!("{h}h"),
        (h, _) => format!("{h}h{m:02}m"),
    }
}

/// An event's time since the start of the run: `4:05.2`.
fn at(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let tenths = (seconds * 10.0).round() as u64;
    let (m, s, t) = (tenths / 600, tenths / 10 % 60, tenths % 10);
    format!("{m}:{s:02}.{t}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run built by hand: `busy` sampled every 10 s, `errors` per minute.
    pub(crate) fn run(busy: Vec<u64>, errors: Vec<u64>, refusals: &[(&str, u64)]) -> RunReport {
        RunReport {
            amplification: 512.25,
            originals: 1000,
            generated: 512_250,
            db_queries: 12_345_678,
            peak_db_queue: 4096,
            threads: 200,
            max_threads_busy: series_max(&busy),
            max_threads_stuck: series_max(&busy) / 2,
            goodput_unaffected: 0.123,
            errors_per_minute: errors,
            sample_seconds: 10,
            threads_stuck: busy.iter().map(|b| b / 2).collect(),
            threads_busy: busy,
            recovery_seconds: None,
            degraded_seconds: 0.0,
            refusals: refusals
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect::<BTreeMap<_, _>>(),
            amplification_allowed: None,
            counts: [("unaffected_requests", 5000), ("unaffected_succeeded", 615)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            events: vec![
                Event {
                    at_seconds: 0.0,
                    what: "edit saved to a page with a 10,000-image gallery".into(),
                },
                Event {
                    at_seconds: 125.25,
                    what: "database queue\nsaturated".into(),
                },
            ],
        }
    }

    /// Ten minutes of an outage, and the same ten minutes guarded.
    pub(crate) fn sample() -> Comparison {
        let busy: Vec<u64> = (0..60).map(|i| (i * 10).min(200)).collect();
        let mut guarded = run(
            (0..60).map(|i| (i * 2).min(64)).collect(),
            vec![0, 0, 3, 1, 0, 0, 0, 0, 0, 0],
            &[("cannot_fit", 1000), ("concurrency_limit", 12)],
        );
        guarded.amplification = 1.0;
        guarded.generated = 1000;
        guarded.goodput_unaffected = 0.9996;
        guarded.recovery_seconds = Some(4.0);
        guarded.amplification_allowed = Some(3.0);
        guarded.counts.insert("unaffected_succeeded".into(), 4998);
        guarded.counts.insert("parses_completed".into(), 1);
        Comparison {
            scenario: "commons-<2015> & \"friends\"".into(),
            seed: 7,
            duration_seconds: 600,
            fault_at_seconds: 60.0,
            unguarded: run(
                busy,
                vec![0, 120, 4000, 9000, 12000, 12000, 11000, 9000, 8000, 7000],
                &[],
            ),
            guarded,
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(12_345_678), "12,345,678");
        assert_eq!(count(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(times(512.25), "512×");
        assert_eq!(times(12.34), "12.3×");
        assert_eq!(times(1.0), "1.00×");
        assert_eq!(times(123_456.0), "123,456×");
        assert_eq!(times(f64::NAN), "-");
        assert_eq!(percent(0.9996), "99.9%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(percent(0.0001), "<0.1%");
        assert_eq!(percent(0.123), "12.3%");
        assert_eq!(percent(f64::INFINITY), "-");
        assert_eq!(span(4.0), "4s");
        assert_eq!(span(12.25), "12.2s");
        assert_eq!(span(245.0), "4m05s");
        assert_eq!(span(600.0), "10m");
        assert_eq!(span(7800.0), "2h10m");
        assert_eq!(span(-1.0), "-");
        assert_eq!(at(125.2), "2:05.2");
        assert_eq!(at(f64::NAN), "-");
        assert_eq!(of_capacity(64, 200), "64 (32%)");
        assert_eq!(of_capacity(3, 0), "3");
        assert_eq!(of_capacity(1, 600), "1 (<1%)");
        assert_eq!(of_capacity(599, 600), "599 (99%)");
        assert_eq!(of_capacity(600, 600), "600 (100%)");
        assert_eq!(of_capacity(0, 600), "0 (0%)");
        assert_eq!(clock_label(0), "0");
        assert_eq!(clock_label(30), "30s");
        assert_eq!(clock_label(300), "5m");
        assert_eq!(clock_label(5400), "1h30m");
    }

    #[test]
    fn sparklines_scale_and_show_single_errors() {
        // Per-minute values over 30-second columns: each minute fills two columns.
        assert_eq!(sparkline(&[0, 1, 8], 60, 30, 6, 8), "··▁▁██");
        // Several samples per column: the highest wins.
        assert_eq!(sparkline(&[0, 8, 0, 0], 10, 20, 2, 8), "█·");
        // Past the end of the series: blank, not zero.
        assert_eq!(sparkline(&[4], 60, 60, 3, 8), "▄  ");
        // A value above the scale is clamped to the top, never out of range.
        assert_eq!(sparkline(&[u64::MAX], 1, 1, 1, 1), "█");
        assert_eq!(sparkline(&[], 0, 1, 2, 0), "  ");
    }

    #[test]
    fn the_table_has_every_metric_side_by_side() {
        let table = render(&sample());
        for needle in [
            "requests per original (amplification)",
            "512×",
            "1.00×",
            "12,345,678",
            "4,096",
            "200 (100%)",
            "64 (32%)",
            "12.3%",
            "99.9%",
            "never, in the run",
            "4s",
            "72,120", // 5xx in total, unguarded
            "cannot_fit",
            "concurrency_limit",
            "threads busy",
            "threads stuck",
            "5xx per minute",
            "█ = 12,000",
            "█ = 200",
            "2:05.3  database queue saturated",
            "the fault at 1m;",
            "^ the fault, at 1m",
            "at most 3.00×",
            "unaffected_succeeded",
            "4,998",
            "parses_completed",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        // Both value columns line up under their headers.
        let header = table.lines().find(|l| l.ends_with("guarded")).unwrap();
        let width = header.chars().count();
        let row = table
            .lines()
            .find(|l| l.starts_with("  DB queries"))
            .unwrap();
        assert_eq!(row.chars().count(), width, "{header}\n{row}");
    }

    #[test]
    fn the_table_is_deterministic_and_fits_a_terminal() {
        let a = render(&sample());
        assert_eq!(a, render(&sample()));
        assert!(a.ends_with('\n'));
        assert!(!a.contains('\r'));
        // No line is wider than a wide terminal.
        for line in a.lines() {
            assert!(line.chars().count() <= 110, "{line}");
        }
    }

    #[test]
    fn empty_and_extreme_runs_do_not_panic() {
        let mut c = sample();
        c.duration_seconds = 0;
        c.unguarded = run(vec![], vec![], &[]);
        c.unguarded.events.clear();
        c.unguarded.sample_seconds = 0;
        c.unguarded.threads = 0;
        c.guarded.amplification = f64::NAN;
        c.guarded.recovery_seconds = Some(f64::INFINITY);
        c.guarded.threads_busy = vec![u64::MAX; 5];
        c.guarded.errors_per_minute = vec![u64::MAX; 3];
        c.guarded.refusals.insert("shed".into(), u64::MAX);
        c.guarded.refusals.insert("queue_timeout".into(), u64::MAX);
        c.duration_seconds = u64::MAX / 2;
        c.fault_at_seconds = f64::NAN;
        let table = render(&c);
        assert!(!table.contains("^ the fault"));
        c.fault_at_seconds = 1e300;
        let table = render(&c);
        assert!(table.contains("(none)"));
        // Long runs still fit in the timeline's columns.
        let row = table.lines().find(|l| l.contains("threads busy")).unwrap();
        assert!(row.chars().count() < 120, "{row}");
    }

    #[test]
    fn long_event_lists_are_cut() {
        let mut c = sample();
        c.unguarded.events = (0..100)
            .map(|i| Event {
                at_seconds: i as f64,
                what: format!("event {i}"),
            })
            .collect();
        let table = render(&c);
        assert!(table.contains("event 29"));
        assert!(!table.contains("event 30"));
        assert!(table.contains("... and 70 more (see --json)"));
    }
}

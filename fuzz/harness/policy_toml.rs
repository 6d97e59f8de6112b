//! `policy_toml`: policy files are written by operators and reloaded at run time.
//!
//! For any text (bytes decoded as lossy UTF-8), [`Policy::from_toml_str`] never panics, and:
//!
//! - on success, the policy is valid: names are well formed, unique and not reserved; every class
//!   limit names a declared dimension, at most once; no wall time, CPU time or child margin is zero;
//!   at least one class; no backend lists one host twice, however its name is spelled, and each
//!   keeps a margin below its timeout, written or not. An engine builds from it (and reloads it),
//!   every name resolves to a handle of the right kind, and a budget of every class starts with
//!   exactly the class's limits and wall time;
//! - the numbers written in the text are the policy's: each class's limits, retries, wall time and
//!   CPU time, read back by an independent reading (the `toml` crate's generic tree, and the unit
//!   suffixes' values written out here), equal what the policy holds;
//! - on error, there is at least one problem; every location is a real line and column of the text,
//!   problems come sorted by location, and each is shorter than 1 KB, however long the text.

#![allow(dead_code)]

use costguard::clock::ManualClock;
use costguard::header::{HeaderErrorKind, MAX_HEADER_LEN};
use costguard::policy::{DimensionKind, MAX_CLASSES, MAX_DIMENSIONS, MAX_NAME_LEN};
use costguard::{Engine, Policy, PolicyError, Propagation, RequestId};
use std::collections::HashSet;
use std::time::Duration;

const RESERVED: [&str; 5] = ["retries", "cpu_time", "wall_time", "id", "pri"];

pub fn run(data: &[u8]) {
    check_source(&String::from_utf8_lossy(data));
}

pub fn check_source(source: &str) {
    match Policy::from_toml_str(source) {
        Ok(policy) => {
            check_policy(&policy);
            check_values(source, &policy);
        }
        Err(e) => check_error(source, &e),
    }
}

/// The values of each class as written in `source`, against `policy`'s. Values this reading does not
/// understand are skipped: the point is that what both readings understand, they read alike.
fn check_values(source: &str, policy: &Policy) {
    // The generic tree holds integers as i64: a text with a larger one (which costguard reads as
    // u64) is not read back here.
    let Ok(tree) = source.parse::<toml::Table>() else {
        return;
    };
    let Some(classes) = tree.get("classes").and_then(toml::Value::as_table) else {
        return;
    };
    for (name, class) in classes {
        let (Some(c), Some(class)) = (policy.class(name), class.as_table()) else {
            continue;
        };
        let limits = class.get("limits").and_then(toml::Value::as_table);
        for (dim, v) in limits.into_iter().flatten() {
            if let Some(n) = quantity(v) {
                assert_eq!(c.limit(dim), Some(n), "class {name} limit {dim} = {v}");
            }
        }
        if let Some(n) = class.get("retries").and_then(quantity) {
            assert_eq!(c.retries(), Some(n), "class {name} retries");
        }
        for (key, got) in [("wall_time", c.wall_time()), ("cpu_time", c.cpu_time())] {
            if let Some(d) = class.get(key).and_then(duration) {
                assert_eq!(got, d, "class {name} {key} = {:?}", class.get(key));
            }
        }
    }
}

/// A whole number written as an integer, or as a string with an optional unit suffix.
fn quantity(v: &toml::Value) -> Option<u64> {
    const SCALES: [(&str, u128); 9] = [
        ("", 1),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).ok(),
        toml::Value::String(s) => {
            let (number, unit) = split(s)?;
            let unit = unit.strip_suffix('B').unwrap_or(unit);
            let scale = SCALES.iter().find(|(u, _)| *u == unit)?.1;
            scaled(number, scale)
        }
        _ => None,
    }
}

/// A duration string (`Some(None)` for "none").
fn duration(v: &toml::Value) -> Option<Option<Duration>> {
    const NANOS: [(&str, u128); 7] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let s = v.as_str()?;
    if s == "none" {
        return Some(None);
    }
    let (number, unit) = split(s)?;
    let scale = NANOS.iter().find(|(u, _)| *u == unit)?.1;
    scaled(number, scale).map(|n| Some(Duration::from_nanos(n)))
}

/// `digits[.digits]` and what follows.
fn split(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// `digits[.digits]` times `scale`, if that is a whole number that fits in 64 bits.
fn scaled(number: &str, scale: u128) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let n: u128 = digits.parse().ok()?;
    let divisor = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let product = n.checked_mul(scale)?;
    (product % divisor == 0)
        .then(|| u64::try_from(product / divisor).ok())
        .flatten()
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn check_error(source: &str, e: &PolicyError) {
    let problems = e.problems();
    assert!(!problems.is_empty(), "an error without problems");
    let lines = source.matches('\n').count() + 1;
    let mut last = (0, 0);
    for p in problems {
        let key = match &p.location {
            Some(at) => {
                assert!(at.line >= 1 && at.column >= 1, "{p}");
                assert!(at.line as usize <= lines, "{p}: the text has {lines} lines");
                assert!(at.file.is_none(), "{p}");
                (at.line, at.column)
            }
            None => (u32::MAX, u32::MAX),
        };
        assert!(key >= last, "problems out of order: {e}");
        last = key;
        assert!(!p.message.is_empty(), "{p:?}");
        // Names and values are repeated clipped: a problem never grows with the text.
        let shown = p.to_string();
        assert!(
            shown.len() < 1024,
            "a problem of {} bytes: {shown}",
            shown.len()
        );
    }
    assert!(e.to_string().lines().count() >= problems.len());
}

fn check_policy(policy: &Policy) {
    let dims = policy.dimensions();
    assert!(
        dims.len() <= MAX_DIMENSIONS - 2,
        "{} dimensions",
        dims.len()
    );
    let mut seen = HashSet::new();
    for d in dims {
        assert!(valid_name(d.name()), "dimension {:?}", d.name());
        assert!(!RESERVED.contains(&d.name()), "dimension {:?}", d.name());
        assert!(seen.insert(d.name()), "dimension {:?} twice", d.name());
        assert_eq!(policy.dimension(d.name()), Some(d));
    }
    let classes = policy.classes();
    assert!(!classes.is_empty() && classes.len() <= MAX_CLASSES);
    let mut seen = HashSet::new();
    for c in classes {
        assert!(valid_name(c.name()), "class {:?}", c.name());
        assert!(seen.insert(c.name()), "class {:?} twice", c.name());
        assert_eq!(policy.class(c.name()), Some(c));
        assert_ne!(c.wall_time(), Some(Duration::ZERO), "class {}", c.name());
        assert_ne!(c.cpu_time(), Some(Duration::ZERO), "class {}", c.name());
        assert!(!c.child_margin().is_zero(), "class {}", c.name());
        let mut limited = HashSet::new();
        for (name, _) in c.limits() {
            assert!(
                policy.dimension(name).is_some(),
                "class {} limits undeclared {name:?}",
                c.name()
            );
            assert!(
                limited.insert(name),
                "class {} limits {name} twice",
                c.name()
            );
        }
    }
    for b in policy.backends() {
        assert!(b.margin() < b.timeout(), "backend {} margin", b.name());
        // One machine is one host of its pool, however its name is spelled (case, a trailing dot).
        let mut hosts = HashSet::new();
        for h in b.hosts() {
            let (name, port) = match h.split_once(':') {
                Some((name, port)) if !port.contains(':') => (name, port),
                _ => (h, ""),
            };
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            assert!(
                hosts.insert((name, port)),
                "backend {} lists host {h:?} twice",
                b.name()
            );
        }
    }
    let _ = policy.to_string();

    let engine = match Engine::builder(policy.clone())
        .clock(ManualClock::new())
        .build()
    {
        Ok(engine) => engine,
        Err(e) => panic!("a valid policy does not build an engine: {e}"),
    };
    for d in dims {
        let (counter, level) = (engine.counter(d.name()), engine.level(d.name()));
        match d.kind() {
            DimensionKind::Counter => assert!(counter.is_ok() && level.is_err()),
            DimensionKind::Level => assert!(level.is_ok() && counter.is_err()),
        }
    }
    let id = RequestId::new("policy-fuzz").expect("a valid id");
    for c in classes {
        let handle = engine.class(c.name()).expect("every class resolves");
        let budget = match engine.begin(handle, id) {
            Ok(b) => b,
            Err(v) => panic!("class {} refuses a fresh budget: {v}", c.name()),
        };
        for d in dims {
            let limit = c
                .limits()
                .find(|(n, _)| *n == d.name())
                .map_or(u64::MAX, |(_, l)| l);
            let left = match d.kind() {
                DimensionKind::Counter => {
                    let counter = engine.counter(d.name()).expect("a counter");
                    assert_eq!(budget.limit(counter), (limit != u64::MAX).then_some(limit));
                    budget.remaining_of(counter)
                }
                DimensionKind::Level => budget.headroom(engine.level(d.name()).expect("a level")),
            };
            assert_eq!(left, limit, "class {} dimension {}", c.name(), d.name());
        }
        let retries = budget.remaining_of(costguard::Counter::RETRIES);
        assert_eq!(retries, c.retries().unwrap_or(u64::MAX));
        // Only `Duration::MAX` means no deadline; any other wall time, however long, is one, at
        // the last instant the clock can show at the latest (the clock starts at 0 here).
        let expected = match c.wall_time() {
            None | Some(Duration::MAX) => Duration::MAX,
            Some(d) => Duration::from_nanos(nanos(d).min(u64::MAX - 1)),
        };
        assert_eq!(budget.remaining(), expected, "class {}", c.name());

        // What the budget would pass on decodes, unless it carries so many long names that it no
        // longer fits in a header (reported separately; see tests/model.rs `known_issues`).
        let header = budget.to_header();
        if let Err(e) = Propagation::decode(&header) {
            assert!(
                e.kind() == HeaderErrorKind::TooLong && header.len() > MAX_HEADER_LEN,
                "to_header gave {header:?}, which does not decode: {e}"
            );
        }
        let _ = budget.report().to_json();
    }
    assert_eq!(
        engine.reload(policy.clone()).ok(),
        Some(2),
        "reloading the same policy"
    );
}

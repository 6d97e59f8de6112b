//! `policy_toml`: policy files are written by operators and reloaded at run time.
//!
//! For any text (bytes decoded as lossy UTF-8), [`Policy::from_toml_str`] never panics, and:
//!
//! - on success, the policy is valid: names are well formed, unique and not reserved; every class
//!   limit names a declared dimension, at most once; no wall time, CPU time or child margin is zero;
//!   at least one class. An engine builds from it (and reloads it), every name resolves to a handle of
//!   the right kind, and a budget of every class starts with exactly the class's limits and wall time;
//! - on error, there is at least one problem; every location is a real line and column of the text,
//!   and problems come sorted by location.

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
        Ok(policy) => check_policy(&policy),
        Err(e) => check_error(source, &e),
    }
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
        let expected = match c.wall_time().map(nanos) {
            None | Some(u64::MAX) => Duration::MAX,
            Some(n) => Duration::from_nanos(n),
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

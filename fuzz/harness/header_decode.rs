//! `header_decode`: the propagation header is untrusted input.
//!
//! For any value (bytes decoded as lossy UTF-8):
//!
//! - [`Propagation::decode`] never panics, and surrounding spaces and tabs do not change its answer;
//! - an error's offset lies inside the trimmed value (except `TooLong`, which names the limit);
//! - a decoded value re-encodes canonically: the encoding is exactly as long as the trimmed input
//!   (so never longer than [`MAX_HEADER_LEN`]) and decodes back to an equal value;
//! - a decoded value can only tighten: a budget started with it under each class of a fixed policy
//!   has, for every dimension, exactly the smaller of the class limit and the header's allowance (never
//!   more than the class allows), no more time than the class or the header allows, the header's
//!   request id and a priority no more important than either; and what that budget would pass on in
//!   turn is never more than it received;
//! - the same value read as a callee's [`Usage`] obeys the same rules of trimming, offsets and
//!   canonical round trips, and charging it to a fresh budget charges exactly the amounts of the
//!   counters the policy limits or counts (levels, `cpu_time` and unknown names ignored) when each
//!   fits its class limit; otherwise it is refused, each counter is charged as far as its limit
//!   allows, and the budget is cancelled.

#![allow(dead_code)]

use costguard::clock::{ManualClock, Timestamp};
use costguard::header::{HeaderErrorKind, MAX_HEADER_LEN};
use costguard::policy::DimensionKind;
use costguard::{Budget, Counter, Engine, Policy, Propagation, Reason, RequestId, Usage};
use std::sync::OnceLock;
use std::time::Duration;

/// The callee's policy: a class with a deadline, one without, and one with a CPU limit and a wide
/// child margin. `spare` is declared but limited by no class.
pub const CALLEE_POLICY: &str = r#"
[dimensions]
file_lookups = "counter"
db_queries = "counter"
bytes = { kind = "counter", unit = "bytes" }
depth = "level"
spare = "counter"

[classes.parse]
wall_time = "30s"
retries = 2
limits = { file_lookups = 500, db_queries = 1000, bytes = "2MiB", depth = 40 }

[classes.api]
wall_time = "none"
priority = "critical"
limits = { file_lookups = 1000 }

[classes.batch]
wall_time = "1h"
cpu_time = "5s"
child_margin = "50ms"
priority = "background"
limits = { db_queries = 10, depth = 0 }
"#;

const CLOCK_START: u64 = 1_000_000_000;

fn callee() -> &'static (Policy, Engine) {
    static CALLEE: OnceLock<(Policy, Engine)> = OnceLock::new();
    CALLEE.get_or_init(|| {
        let policy = Policy::from_toml_str(CALLEE_POLICY).expect("the callee policy is valid");
        let clock = ManualClock::starting_at(Timestamp::from_nanos(CLOCK_START));
        let engine = Engine::builder(policy.clone())
            .clock(clock)
            .build()
            .expect("the callee policy compiles");
        (policy, engine)
    })
}

pub fn run(data: &[u8]) {
    check_value(&String::from_utf8_lossy(data));
}

pub fn check_value(value: &str) {
    check_usage(value);
    let decoded = Propagation::decode(value);
    let trimmed = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.len() <= MAX_HEADER_LEN + 64 {
        assert_eq!(
            Propagation::decode(trimmed),
            decoded,
            "surrounding spaces changed the answer for {value:?}"
        );
    }
    match decoded {
        Err(e) => {
            if e.kind() != HeaderErrorKind::TooLong {
                assert!(
                    e.offset() <= trimmed.len(),
                    "{e:?} points past the end of {trimmed:?}"
                );
            }
            assert!(!e.to_string().is_empty());
        }
        Ok(p) => {
            let encoded = p.encode();
            assert!(encoded.len() <= MAX_HEADER_LEN, "{encoded:?} is too long");
            assert_eq!(
                encoded.len(),
                trimmed.len(),
                "{trimmed:?} re-encoded as {encoded:?}"
            );
            assert_eq!(
                Propagation::decode(&encoded).as_ref(),
                Ok(&p),
                "{encoded:?} does not decode back"
            );
            for (name, n) in p.allowances() {
                assert_eq!(p.allowance(name), Some(n));
            }
            tightens(&p);
        }
    }
}

/// The limit `class` puts on dimension `name` (`u64::MAX`: none).
fn class_limit(policy: &Policy, class: &str, name: &str) -> u64 {
    let c = policy.class(class).expect("a class of the policy");
    match name {
        "retries" => c.retries().unwrap_or(u64::MAX),
        "cpu_time" => c.cpu_time().map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        }),
        _ => c
            .limits()
            .find(|(n, _)| *n == name)
            .map_or(u64::MAX, |(_, l)| l),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A wall time in nanoseconds: none (`u64::MAX`) only for `Duration::MAX`; any other, however long,
/// a deadline.
fn wall_nanos(d: Duration) -> u64 {
    if d == Duration::MAX {
        u64::MAX
    } else {
        nanos(d).min(u64::MAX - 1)
    }
}

/// Every dimension of the callee engine, with how to read what is left of it.
fn dimensions(policy: &Policy) -> Vec<(String, DimensionKind)> {
    let mut dims = vec![
        ("retries".to_owned(), DimensionKind::Counter),
        ("cpu_time".to_owned(), DimensionKind::Counter),
    ];
    dims.extend(
        policy
            .dimensions()
            .iter()
            .map(|d| (d.name().to_owned(), d.kind())),
    );
    dims
}

fn left(engine: &Engine, b: &Budget, name: &str, kind: DimensionKind) -> u64 {
    match kind {
        DimensionKind::Counter => b.remaining_of(engine.counter(name).expect("a counter")),
        DimensionKind::Level => b.headroom(engine.level(name).expect("a level")),
    }
}

fn tightens(p: &Propagation) {
    let (policy, engine) = callee();
    let fallback = RequestId::new("local-fallback").expect("a valid id");
    for class in policy.classes() {
        let handle = engine.class(class.name()).expect("a class of the policy");
        let wall = class.wall_time().map_or(u64::MAX, wall_nanos);
        let header_wall = p.remaining().map_or(u64::MAX, wall_nanos);
        let budget = match engine.begin_propagated(handle, fallback, p) {
            Ok(b) => b,
            Err(v) => {
                assert_eq!(v.reason(), Reason::InsufficientTime, "{v:?}");
                assert_eq!(wall.min(header_wall), 0, "refused with time left: {v:?}");
                continue;
            }
        };
        assert_ne!(wall.min(header_wall), 0, "started with no time left");
        for (name, kind) in dimensions(policy) {
            let limit = class_limit(policy, class.name(), &name);
            let got = left(engine, &budget, &name, kind);
            assert!(got <= limit, "{name}: {got} left, class allows {limit}");
            let expected = limit.min(p.allowance(&name).unwrap_or(u64::MAX));
            assert_eq!(got, expected, "{name} of class {}", class.name());
        }
        let remaining = budget.remaining();
        if let Some(w) = class.wall_time() {
            assert!(remaining <= w, "{remaining:?} left, class allows {w:?}");
        }
        if let Some(t) = p.remaining() {
            assert!(remaining <= t, "{remaining:?} left, header allows {t:?}");
        }
        // Any other time gives a deadline, at the last instant the clock can show at the latest.
        let effective = wall.min(header_wall);
        let expected = if effective == u64::MAX {
            Duration::MAX
        } else {
            let deadline = CLOCK_START.saturating_add(effective).min(u64::MAX - 1);
            Duration::from_nanos(deadline - CLOCK_START)
        };
        assert_eq!(remaining, expected);
        assert_eq!(budget.request_id(), p.request_id().unwrap_or(fallback));
        let priority = p
            .priority()
            .map_or(class.priority(), |h| class.priority().least_important(h));
        assert_eq!(budget.priority(), priority);

        // Passing it on again never gives the next callee more than this one received.
        let again = budget.propagation();
        for (name, n) in again.allowances() {
            let received = p.allowance(name).unwrap_or(u64::MAX);
            let limit = class_limit(policy, class.name(), name);
            assert!(n <= received.min(limit), "{name}: passes on {n}");
        }
        if let (Some(t), Some(now)) = (p.remaining(), again.remaining()) {
            assert!(now <= t, "passes on {now:?} of {t:?}");
        }
        let header = again.encode();
        assert!(
            Propagation::decode(&header).is_ok(),
            "to_header gave {header:?}, which does not decode"
        );
    }
}

/// [`check_value`]'s rules for the value read as a [`Usage`].
fn check_usage(value: &str) {
    let decoded = Usage::decode(value);
    let trimmed = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.len() <= MAX_HEADER_LEN + 64 {
        assert_eq!(Usage::decode(trimmed), decoded, "spaces changed {value:?}");
    }
    let usage = match decoded {
        Err(e) => {
            if e.kind() != HeaderErrorKind::TooLong {
                assert!(e.offset() <= trimmed.len(), "{e:?} past {trimmed:?}");
            }
            return;
        }
        Ok(u) => u,
    };
    let encoded = usage.encode();
    assert_eq!(
        encoded.len(),
        trimmed.len(),
        "{trimmed:?} re-encoded as {encoded:?}"
    );
    assert_eq!(Usage::decode(&encoded).as_ref(), Ok(&usage));
    let (policy, engine) = callee();
    let budget = engine
        .begin_by_name("parse", RequestId::new("usage").expect("a valid id"))
        .expect("parse starts");
    // The counters a charge may touch: the built-in retries and the policy's counters.
    let counted: Vec<(String, Counter, u64)> = dimensions(policy)
        .into_iter()
        .filter(|(name, kind)| *kind == DimensionKind::Counter && name != "cpu_time")
        .map(|(name, _)| {
            let counter = engine.counter(&name).expect("a counter");
            let amount = usage.used(&name).unwrap_or(0);
            (name, counter, amount)
        })
        .collect();
    // What one counter can take: its amount when within its class limit, as much as the limit
    // allows otherwise (a counter without a limit refuses only a total reaching `u64::MAX`).
    let takes = |name: &str, n: u64| -> (bool, u64) {
        let limit = class_limit(policy, "parse", name);
        if limit == u64::MAX {
            (n < u64::MAX, if n < u64::MAX { n } else { 0 })
        } else {
            (n <= limit, n.min(limit))
        }
    };
    let fits = counted.iter().all(|(name, _, n)| takes(name, *n).0);
    let result = budget.charge_usage(&usage);
    assert_eq!(result.is_ok(), fits, "{usage:?}: {result:?}");
    assert_eq!(budget.is_cancelled(), !fits, "{usage:?}");
    for (name, counter, amount) in &counted {
        assert_eq!(
            budget.used(*counter),
            takes(name, *amount).1,
            "{name} after charging {usage:?}"
        );
    }
    assert_eq!(budget.used(Counter::CPU_TIME), 0);
}

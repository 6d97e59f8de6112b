//! Budgets across process hops: what a callee inherits from the header, and what it cannot.

use costguard::clock::ManualClock;
use costguard::{
    Counter, Engine, HeaderErrorKind, Policy, Priority, Propagation, Reason, RequestId, Usage,
};
use std::cell::Cell;
use std::time::Duration;

fn engine() -> (Engine, ManualClock) {
    let policy = Policy::builder()
        .counter("file_lookups")
        .counter("db_queries")
        .level("subcalls")
        .class("parse", |c| {
            c.wall_time(Duration::from_secs(30))
                .retries(8)
                .child_margin(Duration::from_millis(100))
                .limit("file_lookups", 500)
                .limit("subcalls", 4)
        })
        .class("api", |c| {
            c.wall_time(Duration::from_secs(60))
                .retries(5)
                .limit("file_lookups", 1000)
                .limit("db_queries", 50)
        })
        .build()
        .unwrap();
    let clock = ManualClock::new();
    (
        Engine::builder(policy)
            .clock(clock.clone())
            .build()
            .unwrap(),
        clock,
    )
}

fn id(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

#[test]
fn a_sub_request_inherits_what_is_left_instead_of_fresh_limits() {
    let (engine, clock) = engine();
    let lookups = engine.counter("file_lookups").unwrap();
    let db = engine.counter("db_queries").unwrap();
    let subcalls = engine.level("subcalls").unwrap();
    let parse = engine.begin_by_name("parse", id("edit-1")).unwrap();
    parse.try_charge(lookups, 100).unwrap();
    parse.try_charge(Counter::RETRIES, 6).unwrap();
    let _held = parse.enter(subcalls).unwrap();
    clock.advance(Duration::from_millis(27_800));

    let header = parse.to_header();
    let prop = Propagation::decode(&header).unwrap();
    assert_eq!(prop.remaining(), Some(Duration::from_millis(2_100)));
    assert_eq!(prop.allowance("file_lookups"), Some(400));
    assert_eq!(prop.allowance("retries"), Some(2));
    assert_eq!(prop.allowance("subcalls"), Some(3));
    assert_eq!(
        prop.allowance("db_queries"),
        None,
        "unlimited dimensions are not sent"
    );

    let api = engine.class("api").unwrap();
    let callee = engine.begin_propagated(api, id("local"), &prop).unwrap();
    assert_eq!(callee.request_id(), id("edit-1"));
    assert_eq!(callee.remaining_of(lookups), 400);
    assert_eq!(callee.remaining_of(Counter::RETRIES), 2);
    assert_eq!(
        callee.remaining_of(db),
        50,
        "the callee's own limits still apply"
    );
    assert_eq!(callee.remaining(), Duration::from_millis(2_100));
    // The callee's callee gets less again: the chain of deadlines is staggered.
    clock.advance(Duration::from_millis(100));
    let next = Propagation::decode(&callee.to_header()).unwrap();
    assert!(next.remaining().unwrap() < Duration::from_millis(2_000));
}

#[test]
fn a_header_can_only_tighten() {
    let (engine, _clock) = engine();
    let lookups = engine.counter("file_lookups").unwrap();
    let api = engine.class("api").unwrap();
    let generous = Propagation::decode(
        "cg1;pri=critical;t=99999999999;file_lookups=18446744073709551615;retries=1000",
    )
    .unwrap();
    let b = engine.begin_propagated(api, id("x"), &generous).unwrap();
    assert_eq!(b.remaining_of(lookups), 1000);
    assert_eq!(b.remaining_of(Counter::RETRIES), 5);
    assert_eq!(b.remaining(), Duration::from_secs(60));
    assert_eq!(
        b.priority(),
        Priority::Normal,
        "a header cannot raise priority"
    );

    let lowered = Propagation::decode("cg1;pri=background").unwrap();
    let b = engine.begin_propagated(api, id("x"), &lowered).unwrap();
    assert_eq!(b.priority(), Priority::Background);
}

#[test]
fn unknown_dimensions_are_ignored_and_no_time_left_is_refused() {
    let (engine, _clock) = engine();
    let api = engine.class("api").unwrap();
    let prop = Propagation::decode("cg1;gallery_images=3;file_lookups=7").unwrap();
    let b = engine.begin_propagated(api, id("x"), &prop).unwrap();
    assert_eq!(b.remaining_of(engine.counter("file_lookups").unwrap()), 7);
    assert_eq!(
        b.request_id(),
        id("x"),
        "no id in the header: the fallback is used"
    );

    let expired = Propagation::decode("cg1;t=0").unwrap();
    let v = engine.begin_propagated(api, id("x"), &expired).unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
}

#[test]
fn a_budget_without_deadline_sends_none() {
    let policy = Policy::builder().class("bg", |c| c).build().unwrap();
    let engine = Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let b = engine.begin_by_name("bg", id("x")).unwrap();
    assert_eq!(b.to_header(), "cg1;id=x;pri=normal");
}

#[test]
fn malformed_headers_are_typed_errors() {
    for (value, kind, key) in [
        ("cg1;t=1;t=1", HeaderErrorKind::DuplicateKey, Some("t")),
        (
            "cg1;file_lookups=-1",
            HeaderErrorKind::BadNumber,
            Some("file_lookups"),
        ),
        ("cg1;id=\u{0}", HeaderErrorKind::BadRequestId, Some("id")),
        ("cg1;pri=urgent", HeaderErrorKind::BadPriority, Some("pri")),
        ("cg0", HeaderErrorKind::BadVersion, None),
        ("cg1;=1", HeaderErrorKind::BadField, Some("")),
        ("cg1;oops", HeaderErrorKind::BadField, Some("oops")),
    ] {
        let e = Propagation::decode(value).unwrap_err();
        assert_eq!((e.kind(), e.key()), (kind, key), "{value:?}");
    }
    // The message names the field, escaped and cut short: a header is untrusted input.
    let e = Propagation::decode("cg1;t=1;t=x").unwrap_err();
    assert_eq!(e.to_string(), "key appears twice in field `t` at byte 8");
    let hostile = format!("cg1;{}\u{1b}[31m", "k".repeat(40));
    let e = Propagation::decode(&hostile).unwrap_err();
    assert_eq!(e.key(), Some("k".repeat(32).as_str()));
    let e = Propagation::decode("cg1;a\u{1b}b").unwrap_err();
    assert!(!e.to_string().contains('\u{1b}'), "{e}");
    let long = format!("cg1;id={}", "a".repeat(64)) + &";x=1".repeat(600);
    assert_eq!(
        Propagation::decode(&long).unwrap_err().kind(),
        HeaderErrorKind::TooLong
    );
    // The limit is on the value: spaces and tabs around it, however many, are ignored.
    let fields: Vec<String> = (0..37)
        .map(|i| format!("d{i:02}{}=10000000000000000000", "a".repeat(29)))
        .collect();
    let full = format!("cg1;{}", fields.join(";"));
    assert!(full.len() <= costguard::header::MAX_HEADER_LEN && full.len() > 2000);
    let padded = format!("{}{full}{}", " ".repeat(100), "\t".repeat(100));
    let decoded = Propagation::decode(&padded).unwrap();
    assert_eq!(decoded, Propagation::decode(&full).unwrap());
    assert_eq!(decoded.allowances().count(), 37);
}

/// Every dimension a policy accepts travels in the header and decodes again; the header's own keys
/// cannot be declared as dimensions (a dimension `t` beside the header's `t` made a header its own
/// decoder refused, and the callee lost every limit).
#[test]
fn every_declarable_dimension_round_trips_through_the_header() {
    for name in ["t", "id", "pri", "retries", "cpu_time", "wall_time"] {
        let err = Policy::builder()
            .counter(name)
            .class("api", |c| c.wall_time(Duration::from_secs(5)))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is reserved"), "{name}: {err}");
    }
    for name in ["tt", "t0", "ids", "pri_", "x", "cg1", "time"] {
        let policy = Policy::builder()
            .counter(name)
            .class("api", |c| {
                c.wall_time(Duration::from_secs(5)).limit(name, 7)
            })
            .build()
            .unwrap();
        let engine = Engine::builder(policy)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let counter = engine.counter(name).unwrap();
        let caller = engine.begin_by_name("api", id("r")).unwrap();
        caller.try_charge(counter, 2).unwrap();
        let header = caller.to_header();
        let prop = Propagation::decode(&header).unwrap_or_else(|e| panic!("{header}: {e}"));
        let callee = engine
            .begin_propagated(engine.class("api").unwrap(), id("r"), &prop)
            .unwrap();
        assert_eq!(callee.remaining_of(counter), 5, "{name}: {header}");
    }
}

/// A header naming a dimension that a reload removed tightens nothing: the current policy does not
/// know it, exactly as if the engine had never seen the name. (The engine still resolves the name,
/// and a charge of it is recorded without a limit.)
#[test]
fn a_header_ignores_a_dimension_a_reload_removed() {
    let policy = |lookups: bool| {
        let b = Policy::builder();
        let b = if lookups {
            b.counter("file_lookups")
        } else {
            b
        };
        b.counter("db_queries")
            .class("api", |c| c.limit("db_queries", 10))
            .build()
            .unwrap()
    };
    let engine = Engine::new(policy(true)).unwrap();
    let lookups = engine.counter("file_lookups").unwrap();
    let db = engine.counter("db_queries").unwrap();
    engine.reload(policy(false)).unwrap();
    let api = engine.class("api").unwrap();
    let prop = Propagation::decode("cg1;file_lookups=1;db_queries=2;retries=0").unwrap();
    let b = engine.begin_propagated(api, id("b"), &prop).unwrap();
    assert!(
        b.try_charge(lookups, 5).is_ok(),
        "file_lookups is not in the policy"
    );
    assert_eq!(
        b.limit(db),
        Some(2),
        "a declared dimension is still tightened"
    );
    assert!(b.try_retry().is_err(), "so is a built-in one");
}

/// A header with no time left (`t=0`) is refused with a verdict that says so: the wall-time
/// dimension, nothing left, some needed.
#[test]
fn a_header_with_no_time_left_is_refused_on_wall_time() {
    let (engine, _clock) = engine();
    let api = engine.class("api").unwrap();
    let v = engine
        .begin_propagated(api, id("x"), &Propagation::decode("cg1;t=0").unwrap())
        .unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(v.dimension(), Some("wall_time"));
    assert_eq!(v.class(), Some("api"));
    assert_eq!((v.requested(), v.used(), v.limit()), (1, 0, 0));
    assert!(v.to_string().contains("(0ns left, 1ns needed)"), "{v}");
}

/// Three layers in three processes, each willing to retry a failing call below it, share one
/// retry allowance when each caller charges the usage its callee reports: the database below sees
/// the tree's allowance plus one call, however the layers retry. (Without the charge, each retry
/// hands the layer below a fresh share: 10 calls here.)
#[test]
fn retries_stay_within_the_trees_allowance_across_hops_when_usage_is_charged_back() {
    let policy = Policy::builder()
        .class("edge", |c| c.wall_time(Duration::from_secs(60)).retries(3))
        .class("mid", |c| c.wall_time(Duration::from_secs(60)).retries(3))
        .class("leaf", |c| c.wall_time(Duration::from_secs(60)).retries(3))
        .build()
        .unwrap();
    let engine = Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let calls = Cell::new(0u64);
    let root = engine.begin_by_name("edge", id("x")).unwrap();
    let answer = layer(&engine, &["mid", "leaf"], &root.to_header(), &calls, true);
    let _ = root.charge_usage(&Usage::decode(&answer).unwrap());
    assert!(
        calls.get() <= 3 + 1,
        "{} database calls for 3 retries",
        calls.get()
    );
    assert!(root.used(Counter::RETRIES) >= 3);
    // The same without the charge: the calls multiply.
    calls.set(0);
    let root = engine.begin_by_name("edge", id("y")).unwrap();
    let _ = layer(&engine, &["mid", "leaf"], &root.to_header(), &calls, false);
    assert!(calls.get() > 3 + 1, "{} calls", calls.get());
}

/// A layer called with request header `header`: calls down (the database below the last layer
/// always fails), retries while its budget allows, charging (if `charge`) the usage each callee
/// answers with, and answers with its own usage header.
fn layer(engine: &Engine, below: &[&str], header: &str, calls: &Cell<u64>, charge: bool) -> String {
    let prop = Propagation::decode(header).unwrap();
    let class = engine.class(below[0]).unwrap();
    let Ok(budget) = engine.begin_propagated(class, id("x"), &prop) else {
        return Usage::default().encode();
    };
    loop {
        match &below[1..] {
            [] => calls.set(calls.get() + 1),
            rest => {
                let child = budget.child().unwrap();
                let answer = layer(engine, rest, &child.to_header(), calls, charge);
                if charge {
                    let _ = child.charge_usage(&Usage::decode(&answer).unwrap());
                }
            }
        }
        if budget.try_retry().is_err() {
            return budget.usage().encode();
        }
    }
}

/// A usage header round-trips, is as strict as the request header, and its charge ignores what
/// the caller's policy does not count (levels, `cpu_time`, unknown names). Usage that does not fit
/// (a callee that went past its header) is refused, and charged as far as the limits allow: the
/// work is done, and an allowance the callee overran is used up.
#[test]
fn usage_round_trips_and_what_does_not_fit_uses_the_allowance_up() {
    let (engine, _clock) = engine();
    let lookups = engine.counter("file_lookups").unwrap();
    let api = engine.begin_by_name("api", id("a")).unwrap();
    api.try_charge(lookups, 120).unwrap();
    api.try_retry().unwrap();
    let depth = engine.level("subcalls").unwrap();
    let _level = api.enter(depth).unwrap();
    let usage = api.usage();
    assert_eq!(usage.encode(), "cgu1;retries=1;file_lookups=120");
    assert_eq!(Usage::decode(&usage.encode()), Ok(usage.clone()));
    assert_eq!(usage.used("file_lookups"), Some(120));
    for bad in [
        "cg1;retries=1",
        "cgu1;retries=-1",
        "cgu1;retries=1;retries=2",
        "cgu1;Retries=1",
        "cgu1;retries",
        "cgu1;retries=01",
    ] {
        assert!(Usage::decode(bad).is_err(), "{bad}");
    }
    let parse = engine.begin_by_name("parse", id("p")).unwrap();
    let reported =
        Usage::decode("cgu1;subcalls=3;cpu_time=9;unknown=7;file_lookups=120;retries=1").unwrap();
    parse.charge_usage(&reported).unwrap();
    assert_eq!(parse.used(lookups), 120);
    assert_eq!(parse.used(Counter::RETRIES), 1);
    assert_eq!(parse.used(Counter::CPU_TIME), 0);
    // 500 lookups allowed: 400 more do not fit. The verdict says so; the lookups are used up,
    // the retry charged, and the budget cancelled.
    let v = parse
        .charge_usage(&Usage::decode("cgu1;retries=1;file_lookups=400").unwrap())
        .unwrap_err();
    assert_eq!(v.reason(), Reason::LimitExceeded);
    assert_eq!(v.dimension(), Some("file_lookups"));
    assert_eq!(
        (parse.used(lookups), parse.used(Counter::RETRIES)),
        (500, 2)
    );
    assert!(parse.is_cancelled());
    // A callee that retried more than the whole tree may: no retry is left for the caller.
    let parse = engine.begin_by_name("parse", id("q")).unwrap();
    let v = parse
        .charge_usage(&Usage::decode("cgu1;retries=9").unwrap())
        .unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(parse.used(Counter::RETRIES), 8);
    assert!(parse.try_retry().is_err());
    assert!(parse.is_cancelled());
}

/// A cancelled budget passes on nothing: a callee started from its header is refused, as a child
/// is, whether the caller was cancelled, ran out of an allowance or passed its deadline.
#[test]
fn a_cancelled_caller_s_header_starts_no_callee() {
    let (engine, clock) = engine();
    let lookups = engine.counter("file_lookups").unwrap();
    let api = engine.class("api").unwrap();
    let callee = |header: &str| {
        let prop = Propagation::decode(header).unwrap();
        assert_eq!(prop.remaining(), Some(Duration::ZERO), "{header}");
        assert!(prop.allowances().all(|(_, left)| left == 0), "{header}");
        engine
            .begin_propagated(api, id("callee"), &prop)
            .map(drop)
            .map_err(|v| v.reason())
    };
    let cancelled = engine.begin_by_name("parse", id("c")).unwrap();
    cancelled.cancel();
    assert!(cancelled.child().is_err());
    assert_eq!(
        callee(&cancelled.to_header()),
        Err(Reason::InsufficientTime)
    );

    let exhausted = engine.begin_by_name("parse", id("e")).unwrap();
    exhausted.try_charge(lookups, 495).unwrap();
    assert!(exhausted.try_charge(lookups, 10).is_err());
    assert!(exhausted.is_cancelled());
    assert_eq!(
        callee(&exhausted.to_header()),
        Err(Reason::InsufficientTime)
    );

    let late = engine.begin_by_name("parse", id("l")).unwrap();
    clock.advance(Duration::from_secs(31));
    assert_eq!(callee(&late.to_header()), Err(Reason::InsufficientTime));
}

/// Two callees in flight at once from one child each report usage the child cannot hold in full:
/// the root still counts all of it, up to its own allowance, so the tree never gets more retries
/// than the root allows.
#[test]
fn usage_a_child_cannot_hold_is_still_counted_by_its_ancestors() {
    let (engine, _clock) = engine();
    let root = engine.begin_by_name("parse", id("r")).unwrap(); // 8 retries
    let child = root
        .child_with(None, &costguard::Overrides::new().retries(2))
        .unwrap();
    // Each callee started from the child's header may retry twice, and does.
    let answer = Usage::decode("cgu1;retries=2").unwrap();
    child.charge_usage(&answer).unwrap();
    let v = child.charge_usage(&answer).unwrap_err();
    assert_eq!(v.reason(), Reason::LimitExceeded);
    assert_eq!(child.used(Counter::RETRIES), 2);
    assert_eq!(root.used(Counter::RETRIES), 4, "the root lost two retries");
    assert_eq!(root.remaining_of(Counter::RETRIES), 4);
    assert!(child.is_cancelled());
    assert!(!root.is_cancelled(), "the root had room for all of it");
}

/// Usage that a parent cannot hold is not taken in full by the child either: the child never
/// counts more than its parent took, so that its later refund gives back on the parent only what
/// the child put there, never a sibling's charge.
#[test]
fn a_refund_after_usage_that_did_not_fit_leaves_a_siblings_charge_alone() {
    let (engine, _clock) = engine();
    let lookups = engine.counter("file_lookups").unwrap();
    let parent = engine
        .begin_with(
            engine.class("parse").unwrap(),
            id("p"),
            &costguard::Overrides::new().limit(lookups, 10),
        )
        .unwrap();
    let a = parent.child().unwrap();
    let b = parent.child().unwrap();
    a.try_charge(lookups, 5).unwrap();
    let usage = Usage::decode("cgu1;file_lookups=20").unwrap();
    assert!(b.charge_usage(&usage).is_err());
    assert_eq!(parent.used(lookups), 10, "the parent holds what it can");
    assert_eq!(b.used(lookups), 5, "no more than the parent took");
    assert_eq!(b.refund(lookups, 20), 5);
    assert_eq!(parent.used(lookups), 5, "a's charge is still counted");
    assert_eq!(
        a.try_charge(lookups, 6).unwrap_err().reason(),
        Reason::LimitExceeded
    );
    assert!(a.used(lookups) <= 10);
}

/// A header of exactly the longest length allowed decodes; one byte more is refused.
#[test]
fn a_header_of_the_longest_length_decodes() {
    let prefix = "cg1;id=";
    let longest = format!(
        "{prefix}{}",
        "r".repeat(costguard::header::MAX_HEADER_LEN - prefix.len())
    );
    assert_eq!(longest.len(), costguard::header::MAX_HEADER_LEN);
    // The id is too long to be an id, but the length is not what refuses it.
    let kind = Propagation::decode(&longest).unwrap_err().kind();
    assert_ne!(kind, costguard::header::HeaderErrorKind::TooLong);
    let over = format!("{longest}r");
    assert_eq!(
        Propagation::decode(&over).unwrap_err().kind(),
        costguard::header::HeaderErrorKind::TooLong
    );
}

/// When a callee's usage does not fit, only the counters it overran are used up: one that
/// exactly fits is charged in full, and the budget's cancellation names the one overrun.
#[test]
fn usage_that_exactly_fits_a_counter_does_not_exhaust_it() {
    let (e, _clock) = engine();
    let api = e.begin_by_name("api", id("r")).unwrap();
    let lookups = e.counter("file_lookups").unwrap();
    let db = e.counter("db_queries").unwrap();
    let usage = costguard::Usage::decode("cgu1;file_lookups=1000;db_queries=51").unwrap();
    let refused = api.charge_usage(&usage).unwrap_err();
    assert_eq!(refused.dimension(), Some("db_queries"));
    assert_eq!((api.used(lookups), api.used(db)), (1000, 50));
    assert_eq!(api.check().unwrap_err().dimension(), Some("db_queries"));
}

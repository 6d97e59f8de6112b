//! Budget behaviour, deterministic on the manual clock.

mod support;

use costguard::clock::{ManualClock, ManualCpuClock, Timestamp};
use costguard::{
    Budget, CancelReason, Counter, Engine, Level, Overrides, Policy, Priority, Reason, RequestId,
    Retry, MAX_BUDGET_DEPTH,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Fixture {
    clock: ManualClock,
    cpu: ManualCpuClock,
    engine: Engine,
    lookups: Counter,
    db: Counter,
    bytes: Counter,
    depth: Level,
}

fn fixture() -> Fixture {
    let policy = Policy::builder()
        .counter("file_lookups")
        .counter("db_queries")
        .bytes("bytes")
        .level("depth")
        .class("parse", |c| {
            c.wall_time(Duration::from_secs(30))
                .cpu_time(Duration::from_secs(20))
                .retries(3)
                .child_margin(Duration::from_millis(100))
                .limit("file_lookups", 500)
                .limit("db_queries", 1000)
                .limit("bytes", 2 << 20)
                .limit("depth", 3)
        })
        .class("api", |c| {
            c.wall_time(Duration::from_secs(60))
                .priority(Priority::Sheddable)
                .limit("file_lookups", 300)
        })
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let cpu = ManualCpuClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .cpu_clock(cpu.clone())
        .build()
        .unwrap();
    Fixture {
        lookups: engine.counter("file_lookups").unwrap(),
        db: engine.counter("db_queries").unwrap(),
        bytes: engine.counter("bytes").unwrap(),
        depth: engine.level("depth").unwrap(),
        clock,
        cpu,
        engine,
    }
}

fn id(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

impl Fixture {
    fn parse(&self) -> Budget {
        self.engine.begin_by_name("parse", id("req-1")).unwrap()
    }
}

#[test]
fn an_unlimited_counter_stays_unlimited_however_much_is_charged() {
    let f = fixture();
    // `api` limits file_lookups only; db_queries is counted, not limited.
    let api = f.engine.begin_by_name("api", id("req-2")).unwrap();
    let db = f.engine.counter("db_queries").unwrap();
    assert_eq!(api.limit(db), None);
    assert_eq!(api.remaining_of(db), u64::MAX);
    api.try_charge(db, 5).unwrap();
    assert_eq!(api.used(db), 5);
    assert_eq!(
        api.remaining_of(db),
        u64::MAX,
        "still the 'unlimited' value"
    );
    // A child in a class that limits it is limited by its own limit only.
    let parse = f.engine.class("parse").unwrap();
    let child = api.child_in(parse).unwrap();
    child.try_charge(db, 10).unwrap();
    assert_eq!(child.remaining_of(db), 1000 - 10);
    assert_eq!(api.remaining_of(db), u64::MAX);
}

#[test]
fn charges_are_all_or_nothing() {
    let f = fixture();
    let b = f.parse();
    b.try_charge(f.lookups, 499).unwrap();
    let v = b.try_charge(f.lookups, 2).unwrap_err();
    assert_eq!(v.reason(), Reason::LimitExceeded);
    assert_eq!((v.requested(), v.used(), v.limit()), (2, 499, 500));
    assert_eq!(v.class(), Some("parse"));
    assert_eq!(v.retry(), Retry::Never);
    assert_eq!(b.used(f.lookups), 499, "a refused charge changes nothing");
    b.try_charge(f.lookups, 1).unwrap();
    assert_eq!(b.remaining_of(f.lookups), 0);
    assert_eq!(b.try_charge(f.lookups, 0), Ok(()), "zero always fits");
}

#[test]
fn a_charge_that_can_never_fit_says_so() {
    let f = fixture();
    let b = f.parse();
    let v = b.try_charge(f.lookups, 501).unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(v.retry(), Retry::Never);
    assert!(
        !b.is_cancelled(),
        "an impossible request does not exhaust what is left"
    );
    let v = b.try_charge(f.lookups, u64::MAX).unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(b.used(f.lookups), 0);
}

#[test]
fn overflowing_sums_are_refused_not_wrapped() {
    let f = fixture();
    let b = f.parse();
    // db_queries and depth are unlimited in "api". A u64::MAX amount (an unchecked length) is
    // refused as one that can never fit, without exhausting a dimension that has no limit.
    let api = f.engine.begin_by_name("api", id("r")).unwrap();
    let v = api.try_charge(f.db, u64::MAX).unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::CannotFit, Retry::Never));
    assert_eq!(api.used(f.db), 0);
    assert!(!api.is_cancelled(), "no limit was reached");
    let v = api.enter_n(f.depth, u64::MAX).unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(api.level(f.depth), 0);
    // So is a sum that would reach it.
    api.try_charge(f.db, u64::MAX - 2).unwrap();
    let v = api.try_charge(f.db, 2).unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert!(
        v.to_string().ends_with(&format!(
            "2 more would overflow a count that has no limit ({} used); retrying cannot help",
            u64::MAX - 2
        )),
        "{v}"
    );
    assert_eq!(api.used(f.db), u64::MAX - 2);
    assert_eq!(api.remaining_of(f.db), u64::MAX, "nothing limits it");
    assert!(!api.is_cancelled());
    api.try_charge(f.db, 1).unwrap();
    // Multi-dimension charges whose amounts of one counter add past u64::MAX.
    let v = b
        .try_charge_many(&[(f.db, u64::MAX), (f.db, 2)])
        .unwrap_err();
    assert_eq!(v.dimension(), Some("db_queries"));
    assert_eq!(b.used(f.db), 0);
}

#[test]
fn multi_dimension_charges_roll_back() {
    let f = fixture();
    let b = f.parse();
    b.try_charge(f.db, 999).unwrap();
    let v = b
        .try_charge_many(&[(f.lookups, 10), (f.bytes, 100), (f.db, 2)])
        .unwrap_err();
    assert_eq!(v.dimension(), Some("db_queries"));
    assert_eq!(b.used(f.lookups), 0);
    assert_eq!(b.used(f.bytes), 0);
    assert_eq!(b.used(f.db), 999);
    b.try_charge_many(&[(f.lookups, 10), (f.bytes, 100), (f.db, 1)])
        .unwrap();
    assert_eq!(
        (b.used(f.lookups), b.used(f.bytes), b.used(f.db)),
        (10, 100, 1000)
    );
}

#[test]
fn refunds_never_mint_budget() {
    let f = fixture();
    let b = f.parse();
    b.try_charge(f.lookups, 10).unwrap();
    assert_eq!(b.refund(f.lookups, 4), 4);
    assert_eq!(b.refund(f.lookups, 100), 6, "capped by what was charged");
    assert_eq!(b.refund(f.lookups, u64::MAX), 0);
    assert_eq!(b.remaining_of(f.lookups), 500);
    // A child cannot refund what its parent charged.
    b.try_charge(f.lookups, 50).unwrap();
    let child = b.child().unwrap();
    assert_eq!(child.refund(f.lookups, 50), 0);
    assert_eq!(b.used(f.lookups), 50);
}

#[test]
fn reservations_settle_to_the_actual_amount() {
    let f = fixture();
    let b = f.parse();
    // Known up front: a 10,000-image gallery can never fit.
    let v = b.reserve(f.lookups, 10_000).unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(b.used(f.lookups), 0);

    let r = b.reserve(f.lookups, 100).unwrap();
    assert_eq!(b.used(f.lookups), 100);
    r.settle(80).unwrap();
    assert_eq!(b.used(f.lookups), 80);

    let r = b.reserve(f.lookups, 100).unwrap();
    r.settle(150).unwrap();
    assert_eq!(b.used(f.lookups), 230);

    // Under-estimated beyond the limit: the estimate stays, the verdict says by how much.
    let r = b.reserve(f.lookups, 200).unwrap();
    let v = r.settle(400).unwrap_err();
    assert_eq!((v.requested(), v.used()), (200, 430));
    assert_eq!(b.used(f.lookups), 430);

    let r = b.reserve(f.lookups, 50).unwrap();
    r.cancel();
    assert_eq!(b.used(f.lookups), 430);

    // Dropped without settling (as in a panic): the estimate stays charged.
    {
        let _r = b.reserve(f.lookups, 20).unwrap();
    }
    assert_eq!(b.used(f.lookups), 450);
}

#[test]
fn levels_go_up_and_down_and_report_their_peak() {
    let f = fixture();
    let b = f.parse();
    {
        let _a = b.enter(f.depth).unwrap();
        let _b = b.enter_n(f.depth, 2).unwrap();
        assert_eq!(b.level(f.depth), 3);
        let v = b.enter(f.depth).unwrap_err();
        assert_eq!(v.reason(), Reason::LimitExceeded);
        assert_eq!(
            v.retry(),
            Retry::Later,
            "a level frees up when work finishes"
        );
        assert!(
            !b.is_cancelled(),
            "a full level does not cancel the request"
        );
    }
    assert_eq!(b.level(f.depth), 0);
    assert_eq!(b.headroom(f.depth), 3);
    let row = b.report();
    let row = row.dimension("depth").unwrap();
    assert_eq!((row.used, row.peak, row.limit), (0, Some(3), Some(3)));
}

#[test]
fn level_guards_release_on_panic() {
    let f = fixture();
    let b = f.parse();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = b.enter_n(f.depth, 3).unwrap();
        panic!("boom");
    }));
    assert!(result.is_err());
    assert_eq!(b.level(f.depth), 0);
}

#[test]
fn exhaustion_flips_the_cancellation_flag() {
    let f = fixture();
    let b = f.parse();
    let worker = b.clone();
    assert!(!worker.is_cancelled());
    b.try_charge(f.lookups, 500).unwrap();
    assert!(
        !worker.is_cancelled(),
        "reaching the limit exactly is not running out"
    );
    b.try_charge(f.lookups, 1).unwrap_err();
    assert!(worker.is_cancelled());
    assert_eq!(worker.cancel_reason(), Some(CancelReason::Exhausted));
    let v = worker.check().unwrap_err();
    assert_eq!(v.reason(), Reason::LimitExceeded);
    assert_eq!(v.dimension(), Some("file_lookups"));
}

#[test]
fn deadlines_on_the_manual_clock() {
    let f = fixture();
    let b = f.parse();
    assert_eq!(b.remaining(), Duration::from_secs(30));
    f.clock.advance(Duration::from_millis(29_999));
    assert!(!b.expired());
    assert_eq!(b.check(), Ok(()));
    assert_eq!(b.remaining(), Duration::from_millis(1));
    f.clock.advance(Duration::from_millis(1));
    assert!(b.expired());
    assert!(b.is_cancelled());
    assert_eq!(b.remaining(), Duration::ZERO);
    let v = b.check().unwrap_err();
    assert_eq!(v.reason(), Reason::DeadlineExceeded);
    assert_eq!(v.dimension(), Some("wall_time"));
    // A clock that steps backwards does not revive an expired budget.
    f.clock.set(Timestamp::ZERO);
    assert!(b.expired());
    assert_eq!(b.remaining(), Duration::ZERO);
}

/// A deadline is a point on the clock, so a step back postpones it; but the budget never reports
/// more than its allowance, and never hands a child or a callee more than it reports.
#[test]
fn a_clock_stepping_back_never_extends_the_allowance() {
    let f = fixture();
    f.clock.set(Timestamp::from_nanos(100_000_000_000));
    let b = f.parse(); // 30 s, children 100 ms short of it
    f.clock.set(Timestamp::ZERO);
    assert_eq!(b.remaining(), Duration::from_secs(30));
    assert!(!b.expired());
    let child = b.child_in(f.engine.class("api").unwrap()).unwrap(); // api: 60 s of its own
    assert_eq!(child.remaining(), Duration::from_millis(29_900));
    // And a callee is told no more than that.
    let header = child.to_header();
    let t: u64 = header
        .split(';')
        .find_map(|field| field.strip_prefix("t="))
        .and_then(|ms| ms.parse().ok())
        .unwrap();
    assert!(t <= 29_900, "{header}");
}

#[test]
fn no_wall_time_means_no_deadline() {
    let policy = Policy::builder()
        .class("batch", |c| c.wall_time(Duration::MAX))
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap();
    let b = engine.begin_by_name("batch", id("b")).unwrap();
    clock.advance(Duration::from_secs(1 << 40));
    assert!(!b.expired());
    assert_eq!(b.remaining(), Duration::MAX);
    assert_eq!(b.deadline(), None);
    let child = b.child().unwrap();
    assert_eq!(child.deadline(), None);
}

#[test]
fn children_draw_from_their_ancestors() {
    let f = fixture();
    let root = f.parse();
    root.try_charge(f.lookups, 200).unwrap();
    let api = f.engine.class("api").unwrap();
    let child = root.child_in(api).unwrap();
    assert_eq!(child.class_name(), "api");
    // The child's own limit is 300, but only 300 are left in the root either way: take 250.
    child.try_charge(f.lookups, 250).unwrap();
    assert_eq!(root.used(f.lookups), 450);
    // 60 more fits the child (250 + 60 < 300) but not the root (450 + 60 > 500).
    let v = child.try_charge(f.lookups, 60).unwrap_err();
    assert_eq!(v.class(), Some("parse"), "the root refused");
    assert_eq!(v.request_id(), Some(&id("req-1")));
    assert_eq!(child.used(f.lookups), 250);
    assert_eq!(root.used(f.lookups), 450);
    assert_eq!(child.remaining_of(f.lookups), 50);
    // The root ran out, so it and the child are cancelled.
    assert!(root.is_cancelled() && child.is_cancelled());
    assert_eq!(child.cancel_reason(), Some(CancelReason::Inherited));
    assert_eq!(child.check().unwrap_err().class(), Some("parse"));
}

#[test]
fn grandchildren_charge_every_ancestor_all_or_nothing() {
    let f = fixture();
    let root = f.parse();
    let tight = Overrides::new().limit(f.lookups, 10).limit(f.db, 5);
    let child = root.child_with(None, &tight).unwrap();
    let grandchild = child.child().unwrap();
    grandchild
        .try_charge_many(&[(f.lookups, 4), (f.db, 5)])
        .unwrap();
    let v = grandchild
        .try_charge_many(&[(f.lookups, 1), (f.db, 1)])
        .unwrap_err();
    assert_eq!(v.dimension(), Some("db_queries"));
    for b in [&root, &child, &grandchild] {
        assert_eq!((b.used(f.lookups), b.used(f.db)), (4, 5));
    }
    assert_eq!(grandchild.depth(), 2);
}

#[test]
fn child_deadlines_are_staggered() {
    let f = fixture();
    let root = f.parse(); // 30 s, margin 100 ms
    let child = root.child().unwrap();
    assert_eq!(child.remaining(), Duration::from_millis(29_900));
    let grandchild = child.child().unwrap();
    assert_eq!(grandchild.remaining(), Duration::from_millis(29_800));
    // A child whose own wall time is shorter keeps it.
    let short = root
        .child_with(None, &Overrides::new().wall_time(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(short.remaining(), Duration::from_secs(2));
    // Inner deadlines fire first.
    f.clock.advance(Duration::from_millis(29_800));
    assert!(grandchild.expired());
    assert!(!child.expired());
    assert!(!root.expired());
    // Less than the margin left: refused up front.
    f.clock.advance(Duration::from_millis(150));
    let v = root.child().unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(v.retry(), Retry::Never);
}

#[test]
fn cancelling_reaches_every_descendant_and_refuses_new_children() {
    let f = fixture();
    let root = f.parse();
    let a = root.child().unwrap();
    let b = a.child().unwrap();
    root.cancel();
    assert!(a.is_cancelled() && b.is_cancelled());
    assert_eq!(b.cancel_reason(), Some(CancelReason::Inherited));
    assert_eq!(root.child().unwrap_err().reason(), Reason::Cancelled);
    assert_eq!(b.check().unwrap_err().reason(), Reason::Cancelled);
    // Charges still fit: cancellation is advice, limits are rules.
    b.try_charge(f.lookups, 1).unwrap();
}

#[test]
fn nesting_is_bounded() {
    let f = fixture();
    let mut chain = vec![f.parse()];
    let policy_depth = MAX_BUDGET_DEPTH - 1;
    for _ in 0..policy_depth {
        let next = chain.last().unwrap().child().unwrap();
        chain.push(next);
    }
    let v = chain.last().unwrap().child().unwrap_err();
    assert_eq!(v.reason(), Reason::TooDeep);
    chain.last().unwrap().try_charge(f.lookups, 1).unwrap();
    assert!(chain.iter().all(|b| b.used(f.lookups) == 1));
}

#[test]
fn the_retry_allowance_is_shared_by_the_tree() {
    let f = fixture();
    let root = f.parse(); // retries = 3
    let a = root.child().unwrap();
    let b = root.child().unwrap();
    a.try_retry().unwrap();
    b.try_retry().unwrap();
    a.try_retry().unwrap();
    let v = b.try_retry().unwrap_err();
    assert_eq!(v.dimension(), Some("retries"));
    assert_eq!(root.used(Counter::RETRIES), 3);
}

#[test]
fn cpu_time_is_metered() {
    let f = fixture();
    let b = f.parse(); // cpu_time 20 s
    let mut meter = b.cpu_meter();
    f.cpu.advance(Duration::from_secs(5));
    meter.charge().unwrap();
    assert_eq!(b.used(Counter::CPU_TIME), 5_000_000_000);
    f.cpu.advance(Duration::from_secs(16));
    let v = meter.charge().unwrap_err();
    assert_eq!(v.dimension(), Some("cpu_time"));
    assert_eq!(v.requested(), 16_000_000_000);
    assert!(b.is_cancelled());
    // The time was spent all the same: the budget is full, not left with 15 s to hand out again.
    assert_eq!(b.used(Counter::CPU_TIME), 20_000_000_000);
    f.cpu.advance(Duration::from_secs(1));
    assert!(meter.charge().is_err(), "a later slice does not fit either");
    drop(meter);
    assert_eq!(b.used(Counter::CPU_TIME), 20_000_000_000);
    assert_eq!(b.remaining_of(Counter::CPU_TIME), 0);
}

/// A child refused because its parent has less than the parent's `child_margin` left is refused
/// by the parent's limit: the verdict names the parent's class, not the child's.
#[test]
fn a_child_refused_for_its_parents_margin_names_the_parents_class() {
    let f = fixture(); // parse: 30 s, margin 100 ms; api: margin 10 ms
    let parse = f.parse();
    f.clock.advance(Duration::from_millis(29_950));
    let v = parse.child_in(f.engine.class("api").unwrap()).unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(v.class(), Some("parse"));
    assert_eq!(v.dimension(), Some("wall_time"));
    assert_eq!(v.requested(), 100_000_000, "parse's margin");
}

/// A child is refused when no more than the margin is left, since it would get no time at all;
/// a nanosecond more and it gets that nanosecond.
#[test]
fn a_child_with_exactly_the_margin_left_is_refused() {
    let f = fixture(); // parse: 30 s, margin 100 ms
    let parse = f.parse();
    f.clock
        .advance(Duration::from_millis(29_900) - Duration::from_nanos(1));
    let child = parse.child().unwrap();
    assert_eq!(child.remaining(), Duration::from_nanos(1));
    f.clock.advance(Duration::from_nanos(1));
    let v = parse.child().unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(parse.remaining(), Duration::from_millis(100));
    assert!(
        v.to_string().ends_with(
            "too little time left (100ms left, more than 100ms needed); retrying cannot help"
        ),
        "{v}"
    );
    // Less than the margin left: what is needed is the margin.
    f.clock.advance(Duration::from_millis(40));
    let v = parse.child().unwrap_err();
    assert!(v.to_string().contains("(60ms left, 100ms needed)"), "{v}");
}

/// A budget given no wall time at all is refused on wall time, with amounts that say so.
#[test]
fn a_zero_wall_time_override_is_refused_on_wall_time() {
    let f = fixture();
    let v = f
        .parse()
        .child_with(None, &Overrides::new().wall_time(Duration::ZERO))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(v.dimension(), Some("wall_time"));
    assert_eq!((v.requested(), v.used(), v.limit()), (1, 0, 0));
}

/// A slice of CPU time larger than the whole limit is refused as one that can never fit, but it
/// was spent all the same: the budget is full and cancelled, as for a slice that merely overruns.
#[test]
fn a_cpu_slice_larger_than_the_limit_exhausts_the_budget() {
    let f = fixture();
    let b = f.parse(); // cpu_time 20 s
    let child = b.child().unwrap();
    let mut meter = child.cpu_meter();
    f.cpu.advance(Duration::from_secs(25));
    let v = meter.charge().unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(b.used(Counter::CPU_TIME), 20_000_000_000);
    assert_eq!(b.cancel_reason(), Some(CancelReason::Exhausted));
    assert!(child.is_cancelled());
    assert!(child.check().is_err());
    drop(meter);
}

/// CPU time a child's meter measured but the child cannot hold still counts on every ancestor
/// with room for it: the tree's CPU limit bounds the work, not only what the tightest budget held.
#[test]
fn cpu_time_a_child_cannot_hold_counts_on_its_ancestors() {
    let f = fixture();
    let root = f.parse(); // cpu_time 20 s
    let child = root
        .child_with(
            None,
            &Overrides::new().limit(Counter::CPU_TIME, 1_000_000_000),
        )
        .unwrap();
    let mut meter = child.cpu_meter();
    f.cpu.advance(Duration::from_secs(5));
    assert_eq!(meter.charge().unwrap_err().reason(), Reason::CannotFit);
    drop(meter);
    assert_eq!(child.used(Counter::CPU_TIME), 1_000_000_000);
    assert_eq!(root.used(Counter::CPU_TIME), 5_000_000_000, "all of it");
    assert!(child.is_cancelled());
    assert!(!root.is_cancelled(), "the root had room");
    // A child's refund never gives back more than it put on the root.
    assert_eq!(
        child.refund(Counter::CPU_TIME, 5_000_000_000),
        1_000_000_000
    );
    assert_eq!(root.used(Counter::CPU_TIME), 4_000_000_000);
}

/// Work a parent could not hold exhausts the parent, the budget that ran out; its child, with
/// room left of its own, is cancelled as its descendant, and its verdict names the parent's limit.
#[test]
fn work_a_parent_cannot_hold_exhausts_the_parent_not_a_child_with_room() {
    let f = fixture();
    let parse = f.engine.class("parse").unwrap();
    let root = f
        .engine
        .begin_with(
            parse,
            id("r"),
            &Overrides::new().limit(Counter::CPU_TIME, 1_000_000_000),
        )
        .unwrap();
    let child = root.child().unwrap(); // cpu_time 20 s
    let mut meter = child.cpu_meter();
    f.cpu.advance(Duration::from_secs(5));
    assert!(meter.charge().is_err());
    drop(meter);
    assert_eq!(root.cancel_reason(), Some(CancelReason::Exhausted));
    let v = child.check().unwrap_err();
    assert_eq!(
        (child.cancel_reason(), v.reason(), v.limit()),
        (
            Some(CancelReason::Inherited),
            Reason::LimitExceeded,
            1_000_000_000
        ),
        "{v}"
    );
    // The same through a callee's usage: the child (500 lookups) had room for 20, its parent (10)
    // did not.
    let parent = f
        .engine
        .begin_with(parse, id("p"), &Overrides::new().limit(f.lookups, 10))
        .unwrap();
    let b = parent.child().unwrap();
    let usage = costguard::Usage::decode("cgu1;file_lookups=20").unwrap();
    assert!(b.charge_usage(&usage).is_err());
    let v = b.check().unwrap_err();
    // Cancelled, as charge_usage cancels the budget that got the report; not exhausted.
    assert_eq!(b.cancel_reason(), Some(CancelReason::Cancelled), "{v}");
    assert_eq!(parent.cancel_reason(), Some(CancelReason::Exhausted));
    assert_eq!(v.reason(), Reason::Cancelled, "{v}");
}

/// An estimate is the reservation's to give back, not the budget's: a refund cannot take it, so it
/// is never given back twice (and a child's charges are never given back in its place).
#[test]
fn a_refund_cannot_take_a_reservations_estimate() {
    let f = fixture();
    let parent = f.parse();
    let child = parent.child().unwrap();
    child.try_charge(f.db, 5).unwrap();
    parent.try_charge(f.db, 2).unwrap();
    let r = parent.reserve(f.db, 10).unwrap();
    assert_eq!(parent.refund(f.db, 100), 2, "only the parent's own charge");
    r.cancel();
    assert_eq!((parent.used(f.db), child.used(f.db)), (5, 5));
    // Settled, what stays of an estimate is the budget's own.
    parent.reserve(f.db, 10).unwrap().settle(4).unwrap();
    assert_eq!(parent.used(f.db), 9);
    assert_eq!(parent.refund(f.db, 100), 4);
}

/// A reservation settled or cancelled while a child's charges pass through the parent gives back
/// its whole estimate (a refund's cap, which such a charge lowers for an instant, does not apply to
/// it). The child's charges are all refused at the child, so nothing may stay charged.
#[test]
fn reservations_give_back_their_estimate_while_a_child_charges() {
    let f = fixture();
    let parent = f.parse();
    let child = parent
        .child_with(None, &Overrides::new().limit(f.db, 0))
        .unwrap();
    let (started, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            started.store(true, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                assert!(child.try_charge(f.db, 1).is_err());
            }
        });
        while !started.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        for _ in 0..100_000 {
            parent.reserve(f.db, 100).unwrap().settle(0).unwrap();
            parent.reserve(f.db, 7).unwrap().cancel();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(parent.used(f.db), 0);
}

#[test]
fn the_limit_report_covers_children() {
    let f = fixture();
    let root = f.parse();
    root.try_charge(f.lookups, 7).unwrap();
    let api = f.engine.class("api").unwrap();
    {
        let finished = root.child_in(api).unwrap();
        finished.try_charge(f.lookups, 3).unwrap();
    }
    let live = root
        .child_with(None, &Overrides::new().request_id(id("sub-2")))
        .unwrap();
    live.try_charge(f.bytes, 3 << 20 >> 1).unwrap();
    f.clock.advance(Duration::from_millis(1250));

    let report = root.report();
    assert_eq!(report.request_id, "req-1");
    assert_eq!(report.class, "parse");
    assert_eq!(report.wall_time.elapsed_ns, 1_250_000_000);
    assert_eq!(report.wall_time.limit_ns, Some(30_000_000_000));
    assert_eq!(report.dimension("file_lookups").unwrap().used, 10);
    assert_eq!(report.children.len(), 2);
    assert_eq!(report.children[0].class, "api");
    assert_eq!(
        report.children[0].dimension("file_lookups").unwrap().used,
        3
    );
    assert_eq!(report.children[1].request_id, "sub-2");

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["request_id"], "req-1");
    assert_eq!(json["children"][1]["request_id"], "sub-2");
    let text = report.to_string();
    assert!(text.contains("limit report for request req-1 (class parse"));
    assert!(text.contains("wall_time"));
    assert!(text.contains("1.250s of 30.000s"));
    assert!(text.contains("file_lookups"));
    assert!(text.contains("10 of 500"));
    assert!(text.contains("1.5MiB of 2.0MiB"));
}

#[test]
fn reload_leaves_running_budgets_alone() {
    let f = fixture();
    let before = f.parse();
    let generation = f
        .engine
        .reload(
            Policy::builder()
                .counter("file_lookups")
                .counter("db_queries")
                .bytes("bytes")
                .level("depth")
                .class("parse", |c| c.limit("file_lookups", 5))
                .build()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(generation, 2);
    let after = f.parse();
    assert_eq!(before.limit(f.lookups), Some(500));
    assert_eq!(after.limit(f.lookups), Some(5));
    assert_eq!(
        (before.policy_generation(), after.policy_generation()),
        (1, 2)
    );
    // Children of the old budget still use the old policy, including classes since removed.
    let api = f.engine.class("api");
    assert!(api.is_err(), "api is gone from the new policy");
    assert!(f.engine.begin_by_name("api", id("x")).is_err());
    assert_eq!(before.child().unwrap().limit(f.lookups), Some(500));
}

#[test]
fn a_counter_added_by_a_reload_starts_at_zero_and_is_unlimited_in_older_budgets() {
    let policy = |with_pages: bool| {
        let b = Policy::builder().counter("file_lookups");
        let b = if with_pages { b.counter("pages") } else { b };
        b.class("parse", |c| {
            let c = c.limit("file_lookups", 10);
            if with_pages {
                c.limit("pages", 3)
            } else {
                c
            }
        })
        .build()
        .unwrap()
    };
    let engine = Engine::new(policy(false)).unwrap();
    let lookups = engine.counter("file_lookups").unwrap();
    let old = engine.begin_by_name("parse", id("old")).unwrap();
    old.try_charge(lookups, 4).unwrap();
    // Budgets that finish on this thread leave their state behind for the next one to reuse.
    for i in 0..8 {
        let b = engine.begin_by_name("parse", id(&format!("r{i}"))).unwrap();
        b.try_charge(lookups, 9).unwrap();
    }
    engine.reload(policy(true)).unwrap();
    let pages = engine.counter("pages").unwrap();
    for i in 0..8 {
        let b = engine.begin_by_name("parse", id(&format!("n{i}"))).unwrap();
        assert_eq!((b.used(lookups), b.used(pages)), (0, 0));
        assert_eq!(b.limit(pages), Some(3));
        b.try_charge(pages, 3).unwrap();
        assert_eq!(
            b.try_charge(pages, 1).unwrap_err().reason(),
            Reason::LimitExceeded
        );
        assert_eq!(b.report().dimensions.len(), 2);
    }
    // The budget begun before the reload has no `pages`: unlimited there, and nothing recorded.
    assert_eq!(old.limit(pages), None);
    old.try_charge(pages, 1_000).unwrap();
    assert_eq!(old.used(pages), 0);
    assert_eq!(old.refund(pages, 5), 0);
    assert_eq!(old.remaining_of(pages), u64::MAX);
    assert_eq!(old.used(lookups), 4);
    assert_eq!(old.report().dimensions.len(), 1);
}

#[test]
fn a_failed_reload_keeps_the_old_policy() {
    let f = fixture();
    let err = f
        .engine
        .reload(
            Policy::builder()
                .level("file_lookups") // was a counter
                .class("parse", |c| c)
                .build()
                .unwrap(),
        )
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("was a counter and cannot become a level"));
    assert_eq!(f.engine.generation(), 1);
    assert_eq!(f.parse().limit(f.lookups), Some(500));
    assert!(f.engine.reload_toml_str("not toml [").is_err());
    assert_eq!(f.engine.generation(), 1);
}

/// The class names an engine has seen are bounded like its other names, and the refusal says how
/// to forget old ones.
#[test]
fn a_reload_past_the_class_names_an_engine_can_hold_says_how_to_forget_them() {
    use costguard::policy::MAX_CLASSES;
    let policy = |prefix: &str| {
        (0..MAX_CLASSES)
            .fold(Policy::builder(), |p, n| {
                p.class(&format!("{prefix}{n}"), |c| c)
            })
            .build()
            .unwrap()
    };
    let engine = Engine::builder(policy("a"))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    for prefix in ["b", "c", "d"] {
        engine.reload(policy(prefix)).unwrap();
    }
    let err = engine.reload(policy("e")).unwrap_err().to_string();
    assert!(
        err.contains("distinct class names") && err.contains("(restart to forget old ones)"),
        "{err}"
    );
}

#[test]
fn a_reload_refused_for_too_many_names_leaves_no_trace() {
    use costguard::policy::MAX_BACKENDS;
    // Policies of 64 backends each, named `{prefix}{n}`, with one extra dimension when given.
    let policy = |prefix: &str, level: Option<&str>| {
        let mut p = Policy::builder();
        if let Some(name) = level {
            p = p.level(name);
        }
        let p = (0..MAX_BACKENDS).fold(p.class("api", |c| c), |p, n| {
            p.backend(&format!("{prefix}{n}"), |b| b)
        });
        p.build().unwrap()
    };
    let engine = Engine::builder(policy("a", None))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    for prefix in ["b", "c", "d"] {
        engine.reload(policy(prefix, None)).unwrap();
    }
    // The engine has seen as many backend names as it can hold: the same names again still fit.
    engine.reload(policy("d", None)).unwrap();
    engine.reload(policy("a", None)).unwrap();
    let generation = engine.generation();
    // One new name is one too many, and the refused policy's new dimension is not remembered.
    let err = engine.reload(policy("e", Some("depth"))).unwrap_err();
    assert!(
        err.to_string().contains("too many distinct backend names"),
        "{err}"
    );
    assert_eq!(engine.generation(), generation);
    engine
        .reload(
            Policy::builder()
                .counter("depth")
                .class("api", |c| c.limit("depth", 3))
                .build()
                .unwrap(),
        )
        .expect("`depth` was never a level of this engine");
    assert!(engine.counter("depth").is_ok());
}

/// Pools are remembered for the engine's life (their levels carry over), so their names are
/// bounded like the others': past four policies' worth, a reload with new ones is refused.
#[test]
fn a_reload_with_too_many_pool_names_is_refused() {
    use costguard::policy::MAX_POOLS;
    let policy = |prefix: &str| {
        let p = Policy::builder().counter("q").class("api", |c| c);
        (0..MAX_POOLS)
            .fold(p, |p, n| p.pool(&format!("{prefix}{n}"), "q", 10))
            .build()
            .unwrap()
    };
    let engine = Engine::builder(policy("a"))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    for prefix in ["b", "c", "d", "a"] {
        engine.reload(policy(prefix)).unwrap();
    }
    let generation = engine.generation();
    let err = engine.reload(policy("e")).unwrap_err();
    assert!(
        err.to_string().contains("too many distinct pool names"),
        "{err}"
    );
    assert_eq!(engine.generation(), generation);
    engine.reload(policy("b")).unwrap();
}

#[test]
fn a_wall_time_gives_a_deadline_however_late_the_clock_is() {
    let f = fixture();
    // A clock at the end of its range: 30 s more does not fit, yet the deadline is not "none".
    f.clock.advance(Duration::MAX);
    let b = f.parse();
    assert!(!b.deadline().unwrap().is_never());
    assert_eq!(b.remaining(), Duration::ZERO);
    assert!(b.expired());
    assert_eq!(b.check().unwrap_err().reason(), Reason::DeadlineExceeded);
    // An expired budget starts no child: the refusal says why.
    assert_eq!(b.child().unwrap_err().reason(), Reason::DeadlineExceeded);
}

#[test]
fn handles_are_typed_and_stable() {
    let f = fixture();
    assert_eq!(f.engine.counter("retries").unwrap(), Counter::RETRIES);
    assert_eq!(f.engine.counter("cpu_time").unwrap(), Counter::CPU_TIME);
    assert!(f.engine.level("file_lookups").is_err());
    assert!(f.engine.counter("depth").is_err());
    assert!(f.engine.counter("nope").is_err());
    assert!(f.engine.class("nope").is_err());
    let unknown = f.engine.begin_by_name("nope", id("x")).unwrap_err();
    assert_eq!(unknown.reason(), Reason::UnknownClass);
    assert_eq!(
        unknown.class(),
        Some("nope"),
        "the verdict names what was unknown"
    );
    assert!(unknown.to_string().contains("nope"), "{unknown}");
}

#[test]
fn priorities_only_go_down() {
    let f = fixture();
    let parse = f.engine.class("parse").unwrap();
    let b = f
        .engine
        .begin_with(
            parse,
            id("r"),
            &Overrides::new().priority(Priority::Critical),
        )
        .unwrap();
    assert_eq!(
        b.priority(),
        Priority::Normal,
        "an override cannot raise priority"
    );
    let api = f.engine.class("api").unwrap();
    assert_eq!(b.child_in(api).unwrap().priority(), Priority::Sheddable);
    let bg = f
        .engine
        .begin_with(
            parse,
            id("r"),
            &Overrides::new().priority(Priority::Background),
        )
        .unwrap();
    assert_eq!(bg.child().unwrap().priority(), Priority::Background);
}

#[test]
fn zero_wall_time_override_is_refused() {
    let f = fixture();
    let parse = f.engine.class("parse").unwrap();
    let v = f
        .engine
        .begin_with(parse, id("r"), &Overrides::new().wall_time(Duration::ZERO))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
}

#[test]
fn budgets_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Budget>();
    assert_send_sync::<Engine>();
    assert_send_sync::<costguard::Verdict>();
    assert_send_sync::<costguard::LevelGuard<'static>>();
    assert_send_sync::<costguard::Reservation<'static>>();
}

#[test]
fn threads_charging_one_budget_never_overrun_it() {
    let f = fixture();
    let b = f.parse();
    let child = b.child().unwrap();
    let threads = 4;
    let granted: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let target = if t % 2 == 0 { b.clone() } else { child.clone() };
                let (lookups, depth) = (f.lookups, f.depth);
                s.spawn(move || {
                    let mut ok = 0u64;
                    for i in 0..10_000u64 {
                        if target.try_charge(lookups, 1 + i % 3).is_ok() {
                            ok += 1 + i % 3;
                        }
                        if let Ok(g) = target.enter(depth) {
                            assert!(target.level(depth) <= 3);
                            drop(g);
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(b.used(f.lookups) <= 500);
    assert_eq!(
        b.used(f.lookups),
        granted,
        "every granted unit is accounted once"
    );
    assert!(child.used(f.lookups) <= b.used(f.lookups));
    assert_eq!(b.level(f.depth), 0);
    assert_eq!(child.level(f.depth), 0);
}

#[test]
fn a_wide_fan_out_keeps_a_bounded_report() {
    let f = fixture();
    let root = f.parse();
    for _ in 0..100 {
        let child = root.child().unwrap();
        child.try_charge(f.db, 1).unwrap();
    }
    let report = root.report();
    assert_eq!(report.children.len(), 64);
    assert_eq!(report.children_omitted, 36);
    assert_eq!(report.dimension("db_queries").unwrap().used, 100);
    assert!(report
        .to_string()
        .contains("... and 36 more finished children"));
}

#[test]
fn check_after_an_exhausting_refusal_says_the_budget_was_cancelled_by_it() {
    let f = fixture();
    let budget = f
        .engine
        .begin_by_name("parse", RequestId::new("r").unwrap())
        .unwrap();
    budget.try_charge(f.lookups, 499).unwrap();
    let refused = budget.try_charge(f.lookups, 2).unwrap_err();
    assert_eq!(refused.requested(), 2);
    assert!(refused
        .to_string()
        .contains("2 more would exceed the limit (499 of 500 used)"));

    let later = budget.check().unwrap_err();
    assert_eq!(later.reason(), Reason::LimitExceeded);
    assert_eq!(later.requested(), 0);
    let text = later.to_string();
    assert!(
        text.contains(
            "cancelled: an earlier charge would have exceeded the limit (499 of 500 used)"
        ),
        "{text}"
    );
    assert!(!text.contains("0 more"), "{text}");
}

#[test]
fn owned_guards_live_beside_the_request_and_give_back_exactly_once() {
    // A state machine keeps the request's guards next to its budget, not in a borrowing scope.
    struct Request {
        budget: Budget,
        depth: Option<costguard::LevelGuard<'static>>,
        lookups: Option<costguard::Reservation<'static>>,
    }
    let f = fixture();
    let budget = f
        .engine
        .begin_by_name("parse", RequestId::new("r").unwrap())
        .unwrap();
    let mut r = Request {
        depth: Some(budget.enter_owned(f.depth, 2).unwrap()),
        lookups: Some(budget.reserve_owned(f.lookups, 400).unwrap()),
        budget,
    };
    assert_eq!(r.budget.level(f.depth), 2);
    assert_eq!(r.budget.used(f.lookups), 400);
    // The limit of 3 holds across owned and borrowed guards alike.
    assert!(r.budget.enter_owned(f.depth, 2).is_err());
    let one_more = r.budget.enter(f.depth).unwrap();
    drop(one_more);

    r.lookups.take().unwrap().settle(150).unwrap();
    assert_eq!(r.budget.used(f.lookups), 150);
    r.depth = None;
    assert_eq!(r.budget.level(f.depth), 0);

    // A guard outlives every other handle on its budget and still releases on drop.
    let guard = r.budget.enter_owned(f.depth, 1).unwrap();
    let watcher = r.budget.clone();
    drop(r);
    assert_eq!(watcher.level(f.depth), 1);
    drop(guard);
    assert_eq!(watcher.level(f.depth), 0);
}

#[test]
fn a_budget_started_after_another_finished_on_the_same_thread_starts_clean() {
    // Finished root budgets are reused in place on their thread: nothing of one may leak into the next.
    let f = fixture();
    for round in 0..6u64 {
        let budget = f
            .engine
            .begin_by_name("parse", RequestId::from_u64(round))
            .unwrap();
        assert_eq!(budget.request_id(), RequestId::from_u64(round));
        assert_eq!(budget.used(f.lookups), 0, "round {round}");
        assert_eq!(budget.level(f.depth), 0);
        assert!(!budget.is_cancelled());
        assert!(budget.check().is_ok());
        let report = budget.report();
        assert!(report.children.is_empty(), "round {round}: {report:?}");
        assert_eq!(budget.remaining(), Duration::from_secs(30));

        // Spend, exhaust, cancel, nest and peak, so that the next round would see any leftover.
        let child = budget.child().unwrap();
        child.try_charge(f.db, 7).unwrap();
        drop(child);
        assert_eq!(budget.report().children.len(), 1);
        let guard = budget.enter_n(f.depth, 3).unwrap();
        drop(guard);
        budget.try_charge(f.lookups, 500).unwrap();
        assert!(budget.try_charge(f.lookups, 1).is_err());
        budget.cancel();
        f.clock.advance(Duration::from_secs(1));
    }
}

/// Only `Duration::MAX` means "no deadline": a finite wall time of 584 years or more (`u64::MAX`
/// nanoseconds and beyond) is still a deadline, and a header still carries it.
#[test]
fn a_very_long_wall_time_is_still_a_deadline() {
    for wall in [
        Duration::from_secs(600 * 365 * 86_400),
        Duration::from_nanos(u64::MAX),
    ] {
        let policy = Policy::builder()
            .class("c", |c| c.wall_time(wall))
            .class("free", |c| c)
            .build()
            .unwrap();
        let engine = Engine::builder(policy)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let b = engine.begin_by_name("c", id("r")).unwrap();
        assert!(b.deadline().is_some(), "{wall:?}");
        assert!(b.to_header().contains(";t="), "{}", b.to_header());
        // From a budget without a deadline, only the override can give the child one.
        let free = engine.begin_by_name("free", id("r")).unwrap();
        assert!(free.deadline().is_none());
        let child = free
            .child_with(None, &Overrides::new().wall_time(wall))
            .unwrap();
        assert!(child.deadline().is_some(), "an override of {wall:?}");
    }
    let policy =
        Policy::from_toml_str("[classes.c]\nwall_time = \"18446744073709551615ns\"\n").unwrap();
    let engine = Engine::new(policy).unwrap();
    assert!(engine
        .begin_by_name("c", id("r"))
        .unwrap()
        .deadline()
        .is_some());
}

/// A budget refused at its start carries the request id its overrides give it, as a budget that
/// starts does.
#[test]
fn a_budget_refused_at_its_start_carries_the_overridden_id() {
    let f = fixture();
    let parse = f.engine.class("parse").unwrap();
    let given = Overrides::new().request_id(id("given"));
    let started = f.engine.begin_with(parse, id("own"), &given).unwrap();
    assert_eq!(started.request_id(), id("given"));
    let no_time = Overrides::new()
        .request_id(id("given"))
        .wall_time(Duration::ZERO);
    let v = f.engine.begin_with(parse, id("own"), &no_time).unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!(v.request_id(), Some(&id("given")));
}

/// An engine on `clock` (and its CPU clock) with the class `api`.
fn engine_on(clock: &support::FailingClock) -> Engine {
    let policy = Policy::builder()
        .class("api", |c| {
            c.wall_time(Duration::from_secs(30))
                .cpu_time(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    Engine::builder(policy)
        .clock(clock.clone())
        .cpu_clock(clock.clone())
        .build()
        .unwrap()
}

/// A child budget dropped while its thread unwinds from a panic of the clock is reported to its
/// parent all the same (as omitted, its report needing the clock), instead of a second panic
/// aborting the process.
#[test]
fn a_child_dropped_while_its_clock_panics_is_accounted_for() {
    if !support::in_child("a_child_dropped_while_its_clock_panics_is_accounted_for") {
        return;
    }
    let clock = support::FailingClock::default();
    let engine = engine_on(&clock);
    let root = engine.begin_by_name("api", id("r")).unwrap();
    let child = root.child().unwrap();
    clock.fail(true);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let child = child;
        child.remaining()
    }));
    assert!(unwound.is_err());
    clock.fail(false);
    let report = root.report();
    assert_eq!(report.children.len() as u64 + report.children_omitted, 1);
    support::finished();
}

/// A child dropped in the ordinary way while its clock panics: the panic goes on to the caller,
/// and the parent still counts the child (as omitted, its report unbuilt).
#[test]
fn a_child_dropped_when_its_clock_panics_is_still_counted() {
    let clock = support::FailingClock::default();
    let engine = engine_on(&clock);
    let root = engine.begin_by_name("api", id("r")).unwrap();
    let child = root.child().unwrap();
    clock.fail(true);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(child)));
    clock.fail(false);
    assert!(dropped.is_err(), "the clock's panic reaches the caller");
    let report = root.report();
    assert_eq!(
        (report.children.len(), report.children_omitted),
        (0, 1),
        "the child counts as omitted"
    );
}

/// A CPU meter dropped while its thread unwinds from a panic of the CPU clock does not abort the
/// process; the budget stays usable.
#[test]
fn a_cpu_meter_dropped_while_its_clock_panics_does_not_abort() {
    if !support::in_child("a_cpu_meter_dropped_while_its_clock_panics_does_not_abort") {
        return;
    }
    let clock = support::FailingClock::default();
    let engine = engine_on(&clock);
    let budget = engine.begin_by_name("api", id("r")).unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut meter = budget.cpu_meter();
        clock.cpu.advance(Duration::from_millis(300));
        clock.fail(true);
        meter.charge().is_ok()
    }));
    assert!(unwound.is_err());
    clock.fail(false);
    let mut meter = budget.cpu_meter();
    clock.cpu.advance(Duration::from_millis(200));
    meter.charge().unwrap();
    assert_eq!(budget.used(Counter::CPU_TIME), 200_000_000);
    support::finished();
}

fn counted() -> (Engine, ManualClock) {
    support::manual_engine(
        Policy::builder()
            .counter("db_queries")
            .class("api", |c| {
                c.wall_time(Duration::from_secs(10))
                    .child_margin(Duration::from_millis(100))
                    .limit("db_queries", 100)
            })
            .build()
            .unwrap(),
    )
}

/// Overrides only ever tighten: setting a limit (or a wall time) twice keeps the tighter of the
/// two, whatever the order, so a looser value from a later source cannot undo an earlier one.
#[test]
fn overrides_set_twice_keep_the_tighter() {
    let (e, _clock) = counted();
    let db = e.counter("db_queries").unwrap();
    let api = e.class("api").unwrap();
    let o = costguard::Overrides::new()
        .limit(db, 5)
        .limit(db, 50)
        .wall_time(Duration::from_secs(1))
        .wall_time(Duration::from_secs(5));
    let b = e.begin_with(api, RequestId::from_u64(1), &o).unwrap();
    assert_eq!(b.limit(db), Some(5));
    assert_eq!(b.remaining(), Duration::from_secs(1));
    assert!(b.try_charge(db, 5).is_ok());
    assert_eq!(
        b.try_charge(db, 1).unwrap_err().reason(),
        Reason::LimitExceeded
    );
}

/// The time a header passes on is rounded down to whole milliseconds: a callee is never told it
/// has more time than its caller has left for it.
#[test]
fn the_propagated_time_is_rounded_down() {
    let (e, clock) = counted();
    let b = e.begin_by_name("api", RequestId::from_u64(1)).unwrap();
    clock.advance(Duration::from_micros(500));
    let p = b.propagation();
    let t = p.remaining().unwrap();
    assert_eq!(
        t,
        Duration::from_micros(10_000_000 - 500 - 100_000),
        "less the margin"
    );
    let sent = costguard::Propagation::decode(&b.to_header()).unwrap();
    assert_eq!(sent.remaining(), Some(Duration::from_millis(9_899)));
    assert!(sent.remaining().unwrap() <= t);
}

//! The hot paths of a budget do not touch the heap.
//!
//! A counting global allocator wraps `System` and counts, per thread and only while armed, every
//! allocation, reallocation and deallocation. Each test builds its engine and budgets first, then arms
//! the counter around the operations under test (including dropping what they return, such as a
//! refusal's `Verdict`) and asserts that the thread made no heap call at all. Counting per thread keeps
//! the tests independent of each other and of background threads when the harness runs them in
//! parallel. The tests at the end cover cancellation reaching live children, which once collected
//! them into a `Vec`.

use costguard::clock::{ManualClock, MonotonicClock};
use costguard::{
    Budget, CancelReason, Class, Counter, Engine, Level, Overrides, Policy, Reason, RequestId,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------------
// The counting allocator.

struct Counting;

thread_local! {
    // `const` initialisers without destructors: reading them never allocates or registers anything,
    // so the allocator can use them without re-entering itself.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

fn bump(cell: &'static std::thread::LocalKey<Cell<u64>>) {
    // `try_with`: during thread teardown the slots may be gone; such calls are simply not counted.
    let armed = ARMED.try_with(Cell::get).unwrap_or(false);
    if armed {
        let _ = cell.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, so the `GlobalAlloc` contract is
// met exactly as `System` meets it; the bookkeeping only touches thread-local `Cell`s with const
// initialisers, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s preconditions (non-zero size), which are
        // `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`; the caller
        // upholds the remaining `realloc` preconditions.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap calls made by the current thread while counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heap {
    allocs: u64,
    frees: u64,
}

const NONE: Heap = Heap {
    allocs: 0,
    frees: 0,
};

/// Runs `f` with counting armed on this thread; returns its result and the heap calls it made.
/// Whatever `f` returns is dropped by the caller, outside the count.
fn counted<R>(f: impl FnOnce() -> R) -> (R, Heap) {
    ALLOCS.with(|c| c.set(0));
    FREES.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    let heap = Heap {
        allocs: ALLOCS.with(Cell::get),
        frees: FREES.with(Cell::get),
    };
    (r, heap)
}

/// Asserts that `f` made no heap call, naming the operation on failure.
#[track_caller]
fn assert_no_heap<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let (r, heap) = counted(f);
    assert_eq!(heap, NONE, "{what} used the heap");
    r
}

#[test]
fn the_counter_sees_allocations() {
    let ((), heap) = counted(|| drop(black_box(Box::new(7u64))));
    assert_eq!(
        heap,
        Heap {
            allocs: 1,
            frees: 1
        }
    );
    let (v, heap) = counted(|| {
        let mut v: Vec<u8> = Vec::with_capacity(1);
        v.extend_from_slice(&[1, 2, 3]); // grows: a reallocation
        v
    });
    assert_eq!(
        heap,
        Heap {
            allocs: 2,
            frees: 0
        }
    );
    drop(v);
}

// ---------------------------------------------------------------------------------------------------
// Fixture: built before any counting starts.

const WALL: Duration = Duration::from_secs(10);

struct Fixture {
    engine: Engine,
    clock: ManualClock,
    class: Class,
    lookups: Counter,
    queries: Counter,
    depth: Level,
}

fn policy() -> Policy {
    Policy::builder()
        .counter("lookups")
        .counter("queries")
        .level("depth")
        .class("parse", |c| {
            c.wall_time(WALL)
                .limit("lookups", 10)
                .limit("queries", 10)
                .limit("depth", 2)
        })
        .build()
        .expect("policy")
}

impl Fixture {
    fn new() -> Fixture {
        let clock = ManualClock::new();
        let engine = Engine::builder(policy())
            .clock(clock.clone())
            .build()
            .expect("engine");
        Fixture {
            class: engine.class("parse").expect("class"),
            lookups: engine.counter("lookups").expect("lookups"),
            queries: engine.counter("queries").expect("queries"),
            depth: engine.level("depth").expect("depth"),
            clock,
            engine,
        }
    }

    fn budget(&self) -> Budget {
        self.engine
            .begin(self.class, RequestId::new("alloc-test").expect("id"))
            .expect("begin")
    }
}

/// Keeps only the reason of a refusal, so that the verdict is dropped inside the count.
fn reason<T>(r: Result<T, costguard::Verdict>) -> Option<Reason> {
    r.err().map(|v| v.reason())
}

// ---------------------------------------------------------------------------------------------------
// Charges.

#[test]
fn try_charge_success_and_refusals_do_not_allocate() {
    let f = Fixture::new();
    let b = f.budget();
    let (ok, cannot_fit, exceeded, exceeded_again) = assert_no_heap("try_charge", || {
        let ok = (0..10).all(|_| b.try_charge(f.lookups, 1).is_ok());
        // Larger than the whole limit: refused without touching the cancellation flag.
        let cannot_fit = reason(b.try_charge(f.lookups, 11));
        // Too little left: refused, and the budget becomes exhausted (first time sets the flag).
        let exceeded = reason(b.try_charge(f.lookups, 1));
        let exceeded_again = reason(b.try_charge(f.lookups, 1));
        (ok, cannot_fit, exceeded, exceeded_again)
    });
    assert!(ok);
    assert_eq!(cannot_fit, Some(Reason::CannotFit));
    assert_eq!(exceeded, Some(Reason::LimitExceeded));
    assert_eq!(exceeded_again, Some(Reason::LimitExceeded));
    assert_eq!(b.cancel_reason(), Some(CancelReason::Exhausted));
    assert_eq!(b.used(f.lookups), 10);
}

#[test]
fn try_charge_many_success_refusal_and_rollback_do_not_allocate() {
    let f = Fixture::new();
    let b = f.budget();
    b.try_charge(f.queries, 9).expect("pre-charge");
    let (ok, refused) = assert_no_heap("try_charge_many", || {
        let ok = b.try_charge_many(&[(f.lookups, 1), (f.queries, 1)]).is_ok();
        // `lookups` fits and is charged, then `queries` does not: `lookups` is rolled back.
        let refused = reason(b.try_charge_many(&[(f.lookups, 1), (f.queries, 1)]));
        (ok, refused)
    });
    assert!(ok);
    assert_eq!(refused, Some(Reason::LimitExceeded));
    assert_eq!((b.used(f.lookups), b.used(f.queries)), (1, 10));
}

#[test]
fn try_charge_many_rollback_across_a_chain_does_not_allocate() {
    let f = Fixture::new();
    let root = f.budget();
    // The child's own limit is tighter, so the child (a leaf without children) refuses after its
    // ancestors were charged; they are rolled back.
    let child = root
        .child_with(None, &Overrides::new().limit(f.queries, 1))
        .expect("child");
    let (ok, refused) = assert_no_heap("try_charge_many on a child", || {
        let ok = child
            .try_charge_many(&[(f.lookups, 1), (f.queries, 1)])
            .is_ok();
        let refused = reason(child.try_charge_many(&[(f.lookups, 1), (f.queries, 1)]));
        (ok, refused)
    });
    assert!(ok);
    assert_eq!(refused, Some(Reason::LimitExceeded));
    assert_eq!((root.used(f.lookups), root.used(f.queries)), (1, 1));
    assert_eq!((child.used(f.lookups), child.used(f.queries)), (1, 1));
}

#[test]
fn refund_does_not_allocate() {
    let f = Fixture::new();
    let root = f.budget();
    let child = root.child().expect("child");
    child.try_charge(f.lookups, 5).expect("charge");
    let (a, b, c) = assert_no_heap("refund", || {
        let a = child.refund(f.lookups, 2);
        let b = child.refund(f.lookups, 100); // capped by what the child has in use
        let c = child.refund(f.lookups, 1); // nothing left
        (a, b, c)
    });
    assert_eq!((a, b, c), (2, 3, 0));
    assert_eq!((root.used(f.lookups), child.used(f.lookups)), (0, 0));
}

#[test]
fn reserve_settle_and_cancel_do_not_allocate() {
    let f = Fixture::new();
    let b = f.budget();
    let (down, up, over, cancelled) = assert_no_heap("reserve/settle/cancel", || {
        // Estimate high, settle lower: the difference is refunded.
        let down = b.reserve(f.lookups, 4).map(|r| r.settle(2).is_ok());
        // Estimate low, settle higher: the excess is charged.
        let up = b.reserve(f.lookups, 1).map(|r| r.settle(3).is_ok());
        // Settle higher than what is left: refused, the estimate stays charged.
        let over = b.reserve(f.lookups, 1).map(|r| reason(r.settle(100)));
        // Cancel: the whole estimate goes back.
        let cancelled = b.reserve(f.lookups, 2).map(|r| r.cancel()).is_ok();
        (down.ok(), up.ok(), over.ok(), cancelled)
    });
    assert_eq!(down, Some(true));
    assert_eq!(up, Some(true));
    assert_eq!(over, Some(Some(Reason::CannotFit)));
    assert!(cancelled);
    assert_eq!(b.used(f.lookups), 2 + 3 + 1);
}

#[test]
fn reserve_refused_does_not_allocate() {
    let f = Fixture::new();
    let b = f.budget();
    let refused = assert_no_heap("refused reserve", || reason(b.reserve(f.lookups, 11)));
    assert_eq!(refused, Some(Reason::CannotFit));
}

#[test]
fn level_guards_do_not_allocate() {
    let f = Fixture::new();
    let root = f.budget();
    let child = root.child().expect("child");
    let (held, refused, after) = assert_no_heap("enter/drop", || {
        let outer = child.enter(f.depth);
        let inner = child.enter(f.depth);
        let held = child.level(f.depth);
        // The level is full: refused (a level refusal does not cancel the budget).
        let refused = reason(child.enter(f.depth));
        drop((inner, outer));
        (held, refused, child.level(f.depth))
    });
    assert_eq!(held, 2);
    assert_eq!(refused, Some(Reason::LimitExceeded));
    assert_eq!(after, 0);
    assert_eq!(root.level(f.depth), 0);
}

// ---------------------------------------------------------------------------------------------------
// Cancellation and deadlines.

#[test]
fn cancellation_flag_and_check_ok_do_not_allocate() {
    let f = Fixture::new();
    let b = f.budget();
    let (cancelled, expired, check) = assert_no_heap("is_cancelled/expired/check", || {
        (
            black_box(&b).is_cancelled(),
            black_box(&b).expired(),
            black_box(&b).check().is_ok(),
        )
    });
    assert_eq!((cancelled, expired, check), (false, false, true));
}

#[test]
fn check_err_after_cancel_or_exhaustion_does_not_allocate() {
    let f = Fixture::new();
    let cancelled = f.budget();
    let exhausted = f.budget();
    let (c, e) = assert_no_heap("cancel + check Err", || {
        cancelled.cancel(); // childless budget: only the flag is set
        exhausted.try_charge(f.lookups, 10).ok();
        let _ = exhausted.try_charge(f.lookups, 1);
        (reason(cancelled.check()), reason(exhausted.check()))
    });
    assert_eq!(c, Some(Reason::Cancelled));
    assert_eq!(e, Some(Reason::LimitExceeded));
}

#[test]
fn deadline_expiry_expired_check_and_remaining_do_not_allocate() {
    let f = Fixture::new();
    // The deadline verdict carries the shared name `wall_time`, made once per process on first use.
    // Make it outside the count so this test does not depend on which test ran first.
    {
        let warm = f.budget();
        f.clock.advance(WALL);
        let _ = warm.check();
    }
    let other = Fixture::new();
    let before = other.budget();
    let (remaining_before, expired, check, remaining_after) =
        assert_no_heap("expired/check/remaining", || {
            let remaining_before = before.remaining();
            other.clock.advance(WALL);
            let expired = before.expired(); // first detection: sets the DEADLINE bit
            let check = reason(before.check());
            (remaining_before, expired, check, before.remaining())
        });
    assert_eq!(remaining_before, WALL);
    assert!(expired);
    assert_eq!(check, Some(Reason::DeadlineExceeded));
    assert_eq!(remaining_after, Duration::ZERO);
}

#[test]
fn deadline_checks_with_the_monotonic_clock_do_not_allocate() {
    let engine = Engine::builder(policy())
        .clock(MonotonicClock::new())
        .build()
        .expect("engine");
    let b = engine
        .begin(
            engine.class("parse").expect("class"),
            RequestId::new("m").expect("id"),
        )
        .expect("begin");
    let (expired, check, remaining) = assert_no_heap("monotonic clock checks", || {
        (b.expired(), b.check().is_ok(), b.remaining())
    });
    assert!(!expired && check);
    assert!(remaining <= WALL);
}

// ---------------------------------------------------------------------------------------------------
// Refusals by an ancestor.

/// A depth-2 chain: the root is nearly exhausted.
fn depth2(f: &Fixture) -> (Budget, Budget, Budget) {
    let root = f.budget();
    root.try_charge(f.lookups, 10).expect("fill the root");
    let mid = root.child().expect("mid");
    let leaf = mid.child().expect("leaf");
    assert_eq!(leaf.depth(), 2);
    (root, mid, leaf)
}

#[test]
fn child_charge_refused_by_an_already_cancelled_ancestor_does_not_allocate() {
    let f = Fixture::new();
    let (root, _mid, leaf) = depth2(&f);
    // First refusal outside the count: it cancels the tree (see the test below).
    let _ = leaf.try_charge(f.lookups, 1);
    assert!(leaf.is_cancelled());
    let (refused, many, check) = assert_no_heap("refused child charge", || {
        (
            reason(leaf.try_charge(f.lookups, 1)),
            reason(leaf.try_charge_many(&[(f.queries, 1), (f.lookups, 1)])),
            reason(leaf.check()),
        )
    });
    assert_eq!(refused, Some(Reason::LimitExceeded));
    assert_eq!(many, Some(Reason::LimitExceeded));
    assert_eq!(check, Some(Reason::LimitExceeded));
    assert_eq!((root.used(f.queries), leaf.used(f.queries)), (0, 0));
}

// When a cancellation bit is set on a budget that has live children, `Node::set_bits` tells them in
// place, walking its list of children under that list's lock, without collecting them anywhere. The
// three tests below check that notifying children allocates nothing.

#[test]
fn child_charge_first_refused_by_an_ancestor_does_not_allocate() {
    let f = Fixture::new();
    let (_root, _mid, leaf) = depth2(&f);
    let (refused, heap) = counted(|| reason(leaf.try_charge(f.lookups, 1)));
    assert_eq!(refused, Some(Reason::LimitExceeded));
    assert_eq!(heap, NONE, "first refusal by an ancestor used the heap");
}

#[test]
fn cancel_of_a_budget_with_a_child_does_not_allocate() {
    let f = Fixture::new();
    let root = f.budget();
    let child = root.child().expect("child");
    let ((), heap) = counted(|| root.cancel());
    assert!(child.is_cancelled());
    assert_eq!(heap, NONE, "cancel of a parent used the heap");
}

#[test]
fn first_expiry_of_a_budget_with_a_child_does_not_allocate() {
    let f = Fixture::new();
    let root = f.budget();
    let _child = root.child().expect("child");
    f.clock.advance(WALL);
    let (expired, heap) = counted(|| root.expired());
    assert!(expired);
    assert_eq!(heap, NONE, "first expiry of a parent used the heap");
}

//! Model-checked concurrency tests.
//!
//! These only build with the crate's own cfg, which swaps every atomic and lock in costguard for
//! loom's:
//!
//! ```text
//! RUSTFLAGS="--cfg costguard_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom
//! ```
//!
//! Each model is small (two or three threads, a handful of operations) and checks one invariant.
//! Engines are always built inside the model with a [`ManualClock`]: the default clock spawns a real
//! ticker thread, which loom cannot see.
#![cfg(costguard_loom)]

use costguard::clock::ManualClock;
use costguard::{Budget, Counter, Engine, Level, Overrides, Policy, RequestId};
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread;
use std::sync::Arc;
use std::time::Duration;

fn id(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

/// An engine over `policy` with a manual clock. Must be called inside `loom::model`.
fn engine(policy: Policy) -> Engine {
    Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .unwrap()
}

/// One class `job` with counters `a` and `b` limited as given.
fn ab_policy(a: u64, b: u64) -> Policy {
    Policy::builder()
        .counter("a")
        .counter("b")
        .class("job", |c| {
            c.wall_time(Duration::from_secs(30))
                .limit("a", a)
                .limit("b", b)
        })
        .build()
        .unwrap()
}

/// A root budget of class `job` under `ab_policy(a, b)`, with the handles of `a` and `b`.
fn ab_budget(a: u64, b: u64) -> (Engine, Budget, Counter, Counter) {
    let engine = engine(ab_policy(a, b));
    let ca = engine.counter("a").unwrap();
    let cb = engine.counter("b").unwrap();
    let budget = engine.begin_by_name("job", id("r")).unwrap();
    (engine, budget, ca, cb)
}

/// Concurrent charges never overrun a limit.
///
/// The whole point of a budget: three workers of one request race for an allowance that only fits
/// two of them. The CAS loop must refuse exactly the one that does not fit, and no successful charge
/// may be lost (`used` is the sum of what was granted).
#[test]
fn concurrent_charges_never_overrun_limit() {
    loom::model(|| {
        let (_engine, budget, a, _) = ab_budget(2, u64::MAX);
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let budget = budget.clone();
                thread::spawn(move || budget.try_charge(a, 1).is_ok())
            })
            .collect();
        let granted: u64 = handles
            .into_iter()
            .map(|h| u64::from(h.join().unwrap()))
            .sum();
        let used = budget.used(a);
        assert!(used <= 2, "used {used} > limit 2");
        assert_eq!(used, granted, "used must be the sum of granted charges");
        // A root budget has no ancestor to roll back through, so nothing is refused spuriously.
        assert_eq!(granted, 2);
    });
}

/// A refused multi-dimension charge leaves nothing behind.
///
/// `try_charge_many` promises all or nothing. Two calls take the same two dimensions in opposite
/// orders, and only one can fit; the loser has already charged its first dimension when it finds the
/// second one full, and must roll that back. A third call goes through a child whose own limit on `b`
/// is zero: it is refused at the leaf after the parent accepted it, with one dimension already
/// charged on the child, and must roll back both. A partial charge left behind would leak allowance
/// for the rest of the request.
#[test]
fn charge_many_refusal_leaves_no_partial_charge() {
    loom::model(|| {
        let (_engine, parent, a, b) = ab_budget(1, 1);
        let child = parent
            .child_with(None, &Overrides::new().limit(b, 0))
            .unwrap();
        let t1 = {
            let parent = parent.clone();
            thread::spawn(move || parent.try_charge_many(&[(a, 1), (b, 1)]).is_ok())
        };
        let t2 = {
            let parent = parent.clone();
            thread::spawn(move || parent.try_charge_many(&[(b, 1), (a, 1)]).is_ok())
        };
        let t3 = {
            let child = child.clone();
            thread::spawn(move || child.try_charge_many(&[(a, 1), (b, 1)]).is_ok())
        };
        let ok1 = u64::from(t1.join().unwrap());
        let ok2 = u64::from(t2.join().unwrap());
        assert!(!t3.join().unwrap(), "a charge over a zero limit succeeded");
        // Both may be refused (each can see another's charge before it is rolled back), but
        // both can never succeed.
        assert!(ok1 + ok2 <= 1);
        assert_eq!(parent.used(a), ok1 + ok2, "partial charge left on `a`");
        assert_eq!(parent.used(b), ok1 + ok2, "partial charge left on `b`");
        assert_eq!(child.used(a), 0, "partial charge left on the child");
        assert_eq!(child.used(b), 0);
    });
}

/// Children charging concurrently never overrun their parent.
///
/// Sub-requests draw from their parent's allowance, root first, and a charge refused further down
/// the chain must roll back what it already took from the ancestors. Two children race for a parent
/// limit that fits only one more charge of 2; the second child first tries a charge its own limit
/// refuses (after the parent accepted it), then a regular one. The parent's limit must hold, its
/// `used` must be exactly its own charge plus what its children were granted (so every rollback
/// happened), and a child can never have more in use than its parent.
#[test]
fn child_charges_never_overrun_parent() {
    loom::model(|| {
        let policy = Policy::builder()
            .counter("a")
            .class("job", |c| {
                c.wall_time(Duration::from_secs(30)).limit("a", 4)
            })
            .class("sub", |c| {
                c.wall_time(Duration::from_secs(10)).limit("a", 2)
            })
            .build()
            .unwrap();
        let engine = engine(policy);
        let a = engine.counter("a").unwrap();
        let sub = engine.class("sub").unwrap();
        let parent = engine.begin_by_name("job", id("p")).unwrap();
        let c1 = parent.child_in(sub).unwrap();
        let c2 = parent.child_in(sub).unwrap();
        parent.try_charge(a, 1).unwrap();

        let t1 = {
            let c1 = c1.clone();
            thread::spawn(move || c1.try_charge(a, 2).is_ok())
        };
        let t2 = {
            let c2 = c2.clone();
            thread::spawn(move || {
                // Fits the parent (1 + 3 <= 4) but not the child (3 > 2): refused at the leaf.
                assert!(c2.try_charge(a, 3).is_err());
                c2.try_charge(a, 2).is_ok()
            })
        };
        let ok1 = t1.join().unwrap();
        let ok2 = t2.join().unwrap();

        assert!(
            !(ok1 && ok2),
            "both children fit in a parent that only had room for one"
        );
        let (u1, u2, up) = (c1.used(a), c2.used(a), parent.used(a));
        assert!(up <= 4, "parent used {up} > limit 4");
        assert_eq!(u1, if ok1 { 2 } else { 0 });
        assert_eq!(u2, if ok2 { 2 } else { 0 });
        assert_eq!(
            up,
            1 + u1 + u2,
            "parent must hold its own charge plus its children's"
        );
        assert!(u1 <= up && u2 <= up);
    });
}

/// A refund racing with a charge loses neither.
///
/// A refund walks the chain leaf first and subtracts with a CAS loop, like a charge adds. A child
/// refunds what it charged while the parent charges on its own; if either update overwrote the
/// other, allowance would be lost or minted for the rest of the request.
#[test]
fn refund_and_charge_never_lose_an_update() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(2, 1);
        let child = parent.child().unwrap();
        child.try_charge(a, 1).unwrap();

        let refunder = {
            let child = child.clone();
            thread::spawn(move || child.refund(a, 1))
        };
        let charger = {
            let parent = parent.clone();
            thread::spawn(move || parent.try_charge(a, 1).is_ok())
        };
        assert_eq!(refunder.join().unwrap(), 1);
        // 1 + 1 fits the limit of 2 whichever runs first.
        assert!(charger.join().unwrap());
        assert_eq!(child.used(a), 0);
        assert_eq!(
            parent.used(a),
            1,
            "a concurrent refund and charge lost an update"
        );
    });
}

/// A parent's refund never gives back what a child is charging at the same moment.
///
/// A refund is capped by what a budget charged through itself. The child notes its charge in the
/// parent's record of descendants' use before the charge lands, so however the two interleave the
/// parent gives back at most its own unit (possibly nothing, if it looked while the child's charge
/// was in flight), and the child's unit stays charged.
#[test]
fn parent_refund_never_takes_a_childs_charge() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(2, 1);
        let child = parent.child().unwrap();
        parent.try_charge(a, 1).unwrap();

        let charger = {
            let child = child.clone();
            thread::spawn(move || child.try_charge(a, 1).is_ok())
        };
        let refunder = {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, 2))
        };
        assert!(charger.join().unwrap());
        let given = refunder.join().unwrap();
        assert!(given <= 1, "the parent gave back the child's charge");
        assert_eq!((parent.used(a), child.used(a)), (2 - given, 1));
        assert_eq!(
            parent.refund(a, 2),
            1 - given,
            "the rest of its own, now the race is over"
        );
        assert_eq!(child.refund(a, 1), 1);
        assert_eq!(parent.used(a), 0);
    });
}

/// A parent's refund never gives back a child's charge that went and came back while it looked.
///
/// The child refunds its unit and charges it again while the parent refunds: the parent may read
/// `used` before the child's refund and the record of descendants' use after it, and the child's
/// second charge then brings `used` back to what the parent read, so the parent's exchange
/// succeeds. The count of releases that the refund reads around its two reads catches the first
/// half; without it the parent gave back the child's unit and ended with less in use than its child.
#[test]
fn parent_refund_never_takes_a_childs_charge_that_went_and_came_back() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        let child = parent.child().unwrap();
        parent.try_charge(a, 1).unwrap();
        child.try_charge(a, 1).unwrap();

        let churn = {
            let child = child.clone();
            thread::spawn(move || {
                assert_eq!(child.refund(a, 1), 1);
                child.try_charge(a, 1).unwrap();
            })
        };
        let refunder = {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, 2))
        };
        churn.join().unwrap();
        let given = refunder.join().unwrap();
        assert!(
            given <= 1,
            "the parent gave back {given}, its child's unit too"
        );
        assert_eq!((parent.used(a), child.used(a)), (2 - given, 1));
    });
}

/// Two refunds of one budget never give back more than it charged itself, while a child charges.
///
/// One refund could take the budget's own units and the child's charge land, leaving `used` where
/// the other refund read it but with less of it the budget's own: refunds of one budget go one at
/// a time.
#[test]
fn two_refunds_never_take_more_than_their_budget_charged() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        let child = parent.child().unwrap();
        parent.try_charge(a, 2).unwrap();
        let refund = |n| {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, n))
        };
        let (first, second) = (refund(2), refund(1));
        let charger = {
            let child = child.clone();
            thread::spawn(move || child.try_charge(a, 1).is_ok())
        };
        assert!(charger.join().unwrap());
        let given = first.join().unwrap() + second.join().unwrap();
        assert!(
            given <= 2,
            "two refunds gave back {given} of the parent's 2"
        );
        assert_eq!((parent.used(a), child.used(a)), (3 - given, 1));
    });
}

/// A parent's refund racing a child's reservation settled low and then a charge: the settle gives
/// back part of the estimate (a release the refund must see), and the charge brings `used` back.
/// The parent gives back at most its own unit.
#[test]
fn parent_refund_never_takes_a_childs_reservation_settled_and_charged() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        parent.try_charge(a, 1).unwrap();
        let child = parent.child().unwrap();
        let r = child.reserve_owned(a, 2).unwrap();
        let settler = {
            let child = child.clone();
            thread::spawn(move || {
                r.settle(1).unwrap();
                child.try_charge(a, 1).unwrap();
            })
        };
        let refunder = {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, 4))
        };
        settler.join().unwrap();
        let given = refunder.join().unwrap();
        assert!(given <= 1, "parent gave back {given}");
        assert_eq!((parent.used(a), child.used(a)), (3 - given, 2));
    });
}

/// A parent's refund racing a child's reservation cancelled and charged again: the same with the
/// whole estimate released.
#[test]
fn parent_refund_never_takes_a_childs_reservation_cancelled_and_charged() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        parent.try_charge(a, 1).unwrap();
        let child = parent.child().unwrap();
        let r = child.reserve_owned(a, 1).unwrap();
        let churn = {
            let child = child.clone();
            thread::spawn(move || {
                r.cancel();
                child.try_charge(a, 1).unwrap();
            })
        };
        let refunder = {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, 3))
        };
        churn.join().unwrap();
        let given = refunder.join().unwrap();
        assert!(given <= 1, "parent gave back {given}");
        assert_eq!((parent.used(a), child.used(a)), (2 - given, 1));
    });
}

/// The root's refund racing a grandchild that refunds its unit and charges it again: the release
/// and the charge reach the root through the middle budget.
#[test]
fn root_refund_never_takes_a_grandchilds_charge_that_went_and_came_back() {
    loom::model(|| {
        let (_engine, root, a, _) = ab_budget(10, 1);
        root.try_charge(a, 1).unwrap();
        let mid = root.child().unwrap();
        let leaf = mid.child().unwrap();
        leaf.try_charge(a, 1).unwrap();
        let churn = {
            let leaf = leaf.clone();
            thread::spawn(move || {
                assert_eq!(leaf.refund(a, 1), 1);
                leaf.try_charge(a, 1).unwrap();
            })
        };
        let refunder = {
            let root = root.clone();
            thread::spawn(move || root.refund(a, 3))
        };
        churn.join().unwrap();
        let given = refunder.join().unwrap();
        assert!(given <= 1, "root gave back {given}");
        assert_eq!((root.used(a), mid.used(a), leaf.used(a)), (2 - given, 1, 1));
    });
}

/// A reservation on the budget itself, settled while it refunds and a child charges: what the
/// settle makes the budget's own may be given back, the child's charge never.
#[test]
fn own_reservation_settled_during_a_refund_gives_back_no_childs_charge() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        parent.try_charge(a, 1).unwrap();
        let child = parent.child().unwrap();
        let r = parent.reserve_owned(a, 2).unwrap();
        let settler = thread::spawn(move || r.settle(1).unwrap());
        let refunder = {
            let parent = parent.clone();
            thread::spawn(move || parent.refund(a, 5))
        };
        let charger = {
            let child = child.clone();
            thread::spawn(move || child.try_charge(a, 1).unwrap())
        };
        settler.join().unwrap();
        charger.join().unwrap();
        let given = refunder.join().unwrap();
        assert!(given <= 2, "parent gave back {given}");
        assert_eq!((parent.used(a), child.used(a)), (3 - given, 1));
    });
}

/// A refund racing a `try_charge_many` that is then refused gives back nothing it did not keep.
///
/// The child charges `a` and then `b`; `b` fits the parent but not the child, so the whole charge is
/// rolled back. Until then the child's `a` must not look like the child's own: a refund that gave it
/// back would have the rollback take it off the parent a second time, out of the parent's own
/// charge, and the tree could then spend past its limit.
#[test]
fn refund_never_takes_a_charge_many_in_flight() {
    loom::model(|| {
        let (_engine, parent, a, b) = ab_budget(2, 1);
        parent.try_charge(a, 1).unwrap();
        let child = parent
            .child_with(None, &Overrides::new().limit(b, 0))
            .unwrap();

        let charger = {
            let child = child.clone();
            thread::spawn(move || child.try_charge_many(&[(a, 1), (b, 1)]).is_ok())
        };
        let refunder = {
            let child = child.clone();
            thread::spawn(move || child.refund(a, 1))
        };
        assert!(!charger.join().unwrap(), "b can never fit the child");
        assert_eq!(refunder.join().unwrap(), 0, "the child never kept a charge");
        assert_eq!((parent.used(a), child.used(a)), (1, 0));
        assert_eq!(parent.used(b), 0);
    });
}

/// A reservation settled or cancelled gives back exactly its estimate, whatever a child is charging.
///
/// A reservation is an estimate charged up front; settling it to zero says the work never used any
/// of it. A plain refund is capped by what the budget charged through itself and can give back less
/// while a child's charge is in flight (see the model above). A reservation knows exactly what it
/// charged, so it must give all of it back: otherwise every estimate settled during a child's charge
/// would leave part of itself charged for good. Here the child's charge is refused at the child
/// (its limit is 0) after passing the parent, so the child's net effect is nothing, and the parent
/// settles one reservation and cancels another meanwhile. Whatever the interleaving, nothing stays
/// charged.
#[test]
fn reservations_give_back_exactly_their_estimate() {
    loom::model(|| {
        let (_engine, parent, a, _) = ab_budget(10, 1);
        let child = parent
            .child_with(None, &Overrides::new().limit(a, 0))
            .unwrap();
        let charger = thread::spawn(move || child.try_charge(a, 1).is_ok());
        let settler = {
            let parent = parent.clone();
            thread::spawn(move || {
                parent.reserve(a, 3).unwrap().settle(0).unwrap();
                parent.reserve(a, 2).unwrap().cancel();
            })
        };
        assert!(!charger.join().unwrap(), "the child's limit is 0");
        settler.join().unwrap();
        assert_eq!(parent.used(a), 0, "part of an estimate stayed charged");
    });
}

/// A child created while its parent is being cancelled always ends up cancelled.
///
/// Cancelling a budget must reach every descendant, including one whose creation races with the
/// cancellation: either the child sees the parent's bit when it registers, or the cancelling thread
/// finds the child in the parent's list. A child that slipped between the two would keep working for
/// a request that was already abandoned.
/// Usage a child cannot hold is still counted, in full, by an ancestor with room, whatever runs
/// beside it: a refund of the root's own charge can never give that usage back.
///
/// A root allows 8 of `a`, its child 2. Two callees of the child report 2 each: one report fits,
/// the other does not, and its 2 must land on the root all the same (`fill_chain`), noted there as
/// charged through a descendant. Meanwhile the root charges 1 of its own and refunds 2: at most
/// its own 1 may come back (less while a descendant's note is ahead of its charge, as for any
/// charge through a child). Whatever the interleaving, the child ends with 2 and the root with
/// the children's 4 plus whatever of its own 1 it kept.
#[test]
fn usage_a_child_cannot_hold_lands_on_its_ancestors_for_good() {
    loom::model(|| {
        let (_engine, root, a, _) = ab_budget(8, u64::MAX);
        let child = root
            .child_with(None, &Overrides::new().limit(a, 2))
            .unwrap();
        let callees: Vec<_> = (0..2)
            .map(|_| {
                let child = child.clone();
                thread::spawn(move || {
                    let usage = costguard::Usage::decode("cgu1;a=2").unwrap();
                    child.charge_usage(&usage).is_ok()
                })
            })
            .collect();
        root.try_charge(a, 1).unwrap();
        let refunded = root.refund(a, 2);
        let fitted: u64 = callees
            .into_iter()
            .map(|h| u64::from(h.join().unwrap()))
            .sum();
        assert_eq!(fitted, 1, "exactly one report fits the child");
        assert!(
            refunded <= 1,
            "the refund gave back {refunded}, more than the root's own"
        );
        assert_eq!(child.used(a), 2);
        assert_eq!(
            root.used(a),
            4 + 1 - refunded,
            "the root lost usage that did not fit its child"
        );
    });
}

#[test]
fn child_created_during_cancel_is_cancelled() {
    loom::model(|| {
        let (_engine, parent, _, _) = ab_budget(1, 1);
        let canceller = {
            let parent = parent.clone();
            thread::spawn(move || parent.cancel())
        };
        let creator = {
            let parent = parent.clone();
            thread::spawn(move || parent.child().ok())
        };
        canceller.join().unwrap();
        // `child()` refuses once it sees the parent cancelled; a child it did create must be
        // cancelled now.
        if let Some(child) = creator.join().unwrap() {
            assert!(
                child.is_cancelled(),
                "child escaped its parent's cancellation"
            );
        }
        assert!(parent.is_cancelled());
    });
}

/// `cancel` returns only once every child is cancelled, even when another thread set the parent's
/// first bit (here a cancel too; an exhaustion or a deadline seen alike) and is still walking the
/// children: the second setter waits for that walk, or does it.
#[test]
fn children_are_cancelled_once_cancel_returns_whoever_set_the_first_bit() {
    loom::model(|| {
        let (_engine, parent, _, _) = ab_budget(1, 1);
        let child = parent.child().unwrap();
        let other = {
            let parent = parent.clone();
            thread::spawn(move || parent.cancel())
        };
        parent.cancel();
        assert!(
            child.is_cancelled(),
            "cancel() returned before the child was cancelled"
        );
        other.join().unwrap();
    });
}

/// A budget past its deadline, seen first by another thread still telling the children: neither
/// `remaining()` nor `check()` reports the deadline before the children know.
#[test]
fn a_passed_deadline_is_reported_only_once_the_children_know() {
    for check in [false, true] {
        loom::model(move || {
            let clock = ManualClock::new();
            let policy = Policy::builder()
                .class("job", |c| c.wall_time(Duration::from_secs(30)))
                .build()
                .unwrap();
            let engine = Engine::builder(policy)
                .clock(clock.clone())
                .build()
                .unwrap();
            let parent = engine.begin_by_name("job", id("r")).unwrap();
            let child = parent.child().unwrap();
            clock.advance(Duration::from_secs(31));
            let other = {
                let parent = parent.clone();
                thread::spawn(move || parent.expired())
            };
            // Lets the other thread go first, so that the models include it seeing the deadline.
            thread::yield_now();
            if check {
                assert!(parent.check().is_err());
            } else {
                assert_eq!(parent.remaining(), Duration::ZERO);
            }
            assert!(
                child.is_cancelled(),
                "reported before the child was cancelled"
            );
            assert!(other.join().unwrap());
        });
    }
}

/// A refused counter charge cancels the budget for every thread that synchronizes with it.
///
/// Workers poll `is_cancelled()` (one relaxed load) to stop early once a counter ran out. The bit set
/// by a refusal in one thread must be visible to another thread that learned of the refusal through
/// a release/acquire edge (here, a flag) or a join.
#[test]
fn refused_charge_cancellation_is_visible_to_other_threads() {
    loom::model(|| {
        let (_engine, budget, a, _) = ab_budget(1, 1);
        budget.try_charge(a, 1).unwrap();
        let refused = Arc::new(AtomicBool::new(false));

        let charger = {
            let budget = budget.clone();
            let refused = Arc::clone(&refused);
            thread::spawn(move || {
                assert!(budget.try_charge(a, 1).is_err());
                refused.store(true, Ordering::Release);
            })
        };
        let watcher = {
            let budget = budget.clone();
            let refused = Arc::clone(&refused);
            thread::spawn(move || {
                if refused.load(Ordering::Acquire) {
                    assert!(budget.is_cancelled(), "refusal not visible through acquire");
                }
            })
        };
        charger.join().unwrap();
        watcher.join().unwrap();
        assert!(budget.is_cancelled(), "refusal not visible after join");
    });
}

/// A policy reload racing with budget starts gives each budget one whole policy.
///
/// A reload must never hand a new budget a mix of old and new limits, a budget must never exceed the
/// limits it got, and a budget started before the reload keeps the limits it started with.
#[test]
fn reload_gives_each_budget_one_whole_policy() {
    loom::model(|| {
        let engine = engine(ab_policy(2, 5));
        let a = engine.counter("a").unwrap();
        let b = engine.counter("b").unwrap();
        let job = engine.class("job").unwrap();
        let before = engine.begin(job, id("old")).unwrap();

        let reloader = {
            let engine = engine.clone();
            thread::spawn(move || engine.reload(ab_policy(1, 4)).unwrap())
        };
        let starter = {
            let engine = engine.clone();
            let before = before.clone();
            thread::spawn(move || {
                let fresh = engine.begin(job, id("new")).unwrap();
                let limits = (fresh.limit(a), fresh.limit(b));
                let expected = match fresh.policy_generation() {
                    1 => (Some(2), Some(5)),
                    2 => (Some(1), Some(4)),
                    g => panic!("unexpected generation {g}"),
                };
                assert_eq!(limits, expected, "budget got a mix of two policies");
                let limit = limits.0.unwrap();
                let granted = (0..3).filter(|_| fresh.try_charge(a, 1).is_ok()).count() as u64;
                assert_eq!(granted, limit);
                assert_eq!(fresh.used(a), limit);
                // The budget started before the reload charges against its own, old limits.
                let granted = (0..3).filter(|_| before.try_charge(a, 1).is_ok()).count() as u64;
                assert_eq!(granted, 2);
            })
        };
        assert_eq!(reloader.join().unwrap(), 2);
        starter.join().unwrap();

        assert_eq!(engine.generation(), 2);
        assert_eq!(before.policy_generation(), 1);
        assert_eq!((before.limit(a), before.limit(b)), (Some(2), Some(5)));
        assert_eq!(before.used(a), 2);
    });
}

/// A level with limit 1 is held by at most one thread at a time, and always returns to zero.
///
/// Levels bound concurrent work (in-flight sub-calls, nesting). Two threads entering a level of limit
/// 1 must exclude each other, and dropping the guards must give every unit back.
#[test]
fn level_guard_excludes_and_returns_to_zero() {
    loom::model(|| {
        let policy = Policy::builder()
            .level("inflight")
            .class("job", |c| {
                c.wall_time(Duration::from_secs(30)).limit("inflight", 1)
            })
            .build()
            .unwrap();
        let engine = engine(policy);
        let level: Level = engine.level("inflight").unwrap();
        let budget = engine.begin_by_name("job", id("r")).unwrap();
        let inside = Arc::new(AtomicUsize::new(0));

        let handles: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                let inside = Arc::clone(&inside);
                thread::spawn(move || {
                    if let Ok(guard) = budget.enter(level) {
                        let others = inside.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(others, 0, "two holders of a level with limit 1");
                        let seen = budget.level(level);
                        assert_eq!(seen, 1, "level {seen} while holding the only unit");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(budget.level(level), 0);
    });
}

/// A level's reported peak is at least every value the level was seen at, on the budget and its
/// ancestors: each entry raises the peak to the value it took the level to, not to a value read
/// afterwards, which a guard left meanwhile may have lowered.
#[test]
fn level_peak_is_at_least_any_value_seen() {
    loom::model(|| {
        let policy = Policy::builder()
            .level("inflight")
            .class("job", |c| {
                c.wall_time(Duration::from_secs(30)).limit("inflight", 2)
            })
            .build()
            .unwrap();
        let engine = engine(policy);
        let level: Level = engine.level("inflight").unwrap();
        let root = engine.begin_by_name("job", id("r")).unwrap();
        let child = root.child().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let entering = [root.clone(), child.clone()]
            .map(|budget| thread::spawn(move || drop(budget.enter(level).unwrap())));
        let looking = {
            let (root, seen) = (root.clone(), Arc::clone(&seen));
            thread::spawn(move || seen.store(root.level(level), Ordering::SeqCst))
        };
        for h in entering {
            h.join().unwrap();
        }
        looking.join().unwrap();
        let peak = |b: &Budget| b.report().dimension("inflight").unwrap().peak.unwrap();
        let seen = seen.load(Ordering::SeqCst);
        assert!(peak(&root) >= seen, "peak {} below {seen}", peak(&root));
        assert!(peak(&root) <= 2 && peak(&child) == 1);
    });
}

/// The harness catches an overrun: a charge written as a separate load and store (no CAS).
///
/// If this model ever stopped failing, the other models would prove nothing.
#[test]
#[should_panic(expected = "overrun")]
fn canary_load_then_store_charge_overruns() {
    fn broken_try_add(cell: &AtomicU64, n: u64, limit: u64) -> bool {
        let used = cell.load(Ordering::Acquire);
        if used + n > limit {
            return false;
        }
        cell.store(used + n, Ordering::Release);
        true
    }

    loom::model(|| {
        let used = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let used = Arc::clone(&used);
                thread::spawn(move || broken_try_add(&used, 1, 1))
            })
            .collect();
        let granted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert!(
            granted <= 1,
            "overrun: {granted} charges granted against a limit of 1"
        );
    });
}

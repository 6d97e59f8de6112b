//! Misused handles are errors, never undefined behaviour: double free, use after free, a handle of the
//! wrong kind, a name or budget from another engine, made-up values, and a free racing uses on other
//! threads (a use either completes or sees `COSTGUARD_INVALID_HANDLE`; the value is dropped once).

mod common;

use common::*;
use costguard_ffi::*;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

#[test]
fn double_free_and_use_after_free() {
    let e = engine();
    let (c, k) = (counter(e, "file_lookups"), class(e, "parse"));
    let b = begin(e, k, "r1");
    assert_eq!(charge(b, c, 1), OK);
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_budget_free(b), INVALID);
    assert_eq!(charge(b, c, 1), INVALID);
    assert_eq!(used(b, c), Err(INVALID));
    // The slot is reused by the next budget, and the stale handle still fails.
    let b2 = begin(e, k, "r2");
    assert_ne!(b.bits, b2.bits);
    assert_eq!(charge(b, c, 1), INVALID);
    assert_eq!(charge(b2, c, 1), OK);
    assert_eq!(costguard_budget_free(b2), OK);

    let g = admit(e, class(e, "api"), "g1", "").unwrap();
    assert_eq!(costguard_grant_finish(g, COSTGUARD_OUTCOME_SUCCESS), OK);
    assert_eq!(
        costguard_grant_finish(g, COSTGUARD_OUTCOME_SUCCESS),
        INVALID
    );
    assert_eq!(costguard_grant_free(g), INVALID);
    assert_eq!(costguard_engine_free(e), OK);
    assert_eq!(costguard_engine_free(e), INVALID);
    let mut gen = 0;
    // SAFETY: writable out-parameter.
    assert_eq!(unsafe { costguard_engine_generation(e, &mut gen) }, INVALID);
}

#[test]
fn wrong_kind_is_invalid() {
    let e = engine();
    let (c, k) = (counter(e, "file_lookups"), class(e, "parse"));
    let b = begin(e, k, "r");
    // A budget's bits passed as an engine, a grant, a reservation.
    let mut g = 0;
    // SAFETY: writable out-parameter.
    assert_eq!(
        // SAFETY: valid pointers; the test's handles are live or deliberately invalid.
        unsafe { costguard_engine_generation(costguard_engine { bits: b.bits }, &mut g) },
        INVALID
    );
    assert_eq!(
        costguard_grant_free(costguard_grant { bits: b.bits }),
        INVALID
    );
    assert_eq!(
        costguard_reservation_cancel(costguard_reservation { bits: b.bits }),
        INVALID
    );
    // An engine as a budget.
    assert_eq!(charge(costguard_budget { bits: e.bits }, c, 1), INVALID);
    // A class's bits as a counter, a counter's as a level.
    assert_eq!(charge(b, costguard_counter { bits: k.bits }, 1), INVALID);
    let mut out = 0;
    // SAFETY: writable out-parameter.
    assert_eq!(
        // SAFETY: valid pointers; the test's handles are live or deliberately invalid.
        unsafe { costguard_budget_level(b, costguard_level { bits: c.bits }, &mut out) },
        INVALID
    );
    // The budget survived all of it.
    assert_eq!(charge(b, c, 1), OK);
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn names_and_budgets_of_another_engine_are_invalid() {
    let (e1, e2) = (engine(), engine());
    let (c1, k1) = (counter(e1, "file_lookups"), class(e1, "parse"));
    let (c2, k2) = (counter(e2, "file_lookups"), class(e2, "parse"));
    assert_ne!(c1.bits, c2.bits, "names carry their engine");
    let b1 = begin(e1, k1, "r");
    assert_eq!(charge(b1, c2, 1), INVALID);
    assert_eq!(try_begin(e1, k2, "r"), Err(INVALID));
    // A budget of engine 1 with engine 2's backend.
    let db2 = backend(e2, "db");
    let mut a = costguard_attempt::default();
    // SAFETY: writable outputs.
    assert_eq!(
        // SAFETY: valid pointers; the test's handles are live or deliberately invalid.
        unsafe { costguard_attempt_begin(e2, db2, b1, 0, &mut a, null_mut()) },
        INVALID
    );
    assert_eq!(charge(b1, c1, 1), OK);
    assert_eq!(costguard_budget_free(b1), OK);
    assert_eq!(costguard_engine_free(e1), OK);
    assert_eq!(costguard_engine_free(e2), OK);
}

#[test]
fn made_up_values_are_invalid() {
    let e = engine();
    let c = counter(e, "file_lookups");
    let b = begin(e, class(e, "parse"), "r");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x == b.bits || x == e.bits {
            continue;
        }
        assert_eq!(charge(costguard_budget { bits: x }, c, 1), INVALID);
        assert_eq!(costguard_budget_free(costguard_budget { bits: x }), INVALID);
        assert_eq!(costguard_engine_free(costguard_engine { bits: x }), INVALID);
        let s = charge(b, costguard_counter { bits: x }, 1);
        assert!(
            s == INVALID || s == costguard_status::COSTGUARD_UNKNOWN_NAME,
            "{s:?}"
        );
    }
    // Near misses: right slot, wrong generation or kind.
    for delta in [1u64 << 32, 2 << 32, 1 << 28, u64::MAX << 32] {
        assert_eq!(
            charge(
                costguard_budget {
                    bits: b.bits ^ delta
                },
                c,
                1
            ),
            INVALID
        );
    }
    assert_eq!(used(b, c), Ok(0));
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

/// A child of `parent` (of the parent's class): its charges are counted in the parent too, which
/// outlives it, so a test can check after the child's handle is gone that every charge reported
/// as made was made on this budget and no other.
fn child_of(parent: costguard_budget) -> costguard_budget {
    let mut out = costguard_budget::default();
    // SAFETY: NULL class (the parent's) and verdict are allowed; `out` is writable.
    let s = unsafe { costguard_budget_child(parent, std::ptr::null(), &mut out, null_mut()) };
    assert_eq!(s, OK);
    out
}

#[test]
fn a_free_racing_uses_on_other_threads() {
    let e = engine_with(
        r#"
        [dimensions]
        n = "counter"
        [classes.c]
        limits = { n = 1000000000 }
        "#,
        0,
    );
    let (c, k) = (counter(e, "n"), class(e, "c"));
    for round in 0..200 {
        let parent = begin(e, k, "race");
        let b = child_of(parent);
        let start = Arc::new(Barrier::new(4));
        let freed = Arc::new(AtomicBool::new(false));
        let ok_after_free = Arc::new(AtomicU64::new(0));
        let charged = Arc::new(AtomicU64::new(0));
        let users: Vec<_> = (0..3)
            .map(|_| {
                let (start, freed, ok_after, charged) = (
                    start.clone(),
                    freed.clone(),
                    ok_after_free.clone(),
                    charged.clone(),
                );
                std::thread::spawn(move || {
                    start.wait();
                    loop {
                        let was_freed = freed.load(Ordering::SeqCst);
                        match charge(b, c, 1) {
                            s if s == OK => {
                                charged.fetch_add(1, Ordering::Relaxed);
                                if was_freed {
                                    ok_after.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            s => {
                                assert_eq!(s, INVALID);
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        start.wait();
        for _ in 0..(round % 7) * 50 {
            std::hint::spin_loop();
        }
        // Observe, then free: every charge that succeeded is counted in the budget.
        assert_eq!(costguard_budget_free(b), OK);
        freed.store(true, Ordering::SeqCst);
        for u in users {
            u.join().unwrap();
        }
        assert_eq!(
            ok_after_free.load(Ordering::Relaxed),
            0,
            "a use began after the free completed"
        );
        assert_eq!(charge(b, c, 1), INVALID);
        // Every charge that succeeded is counted in the budget (and so in its parent): none went
        // to freed memory or to another budget.
        assert_eq!(used(parent, c), Ok(charged.load(Ordering::Relaxed)));
        assert_eq!(costguard_budget_free(parent), OK);
    }
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn the_owner_and_other_threads_race_a_free_from_a_third() {
    // The owner uses the fast path; the freeing thread must wait for it (membarrier + hazard scan).
    let e = engine_with(
        "[dimensions]\nn = \"counter\"\n[classes.c]\nlimits = { n = 1000000000 }\n",
        0,
    );
    let (c, k) = (counter(e, "n"), class(e, "c"));
    for _ in 0..300 {
        let parent = begin(e, k, "parent");
        let b = child_of(parent);
        let go = Arc::new(Barrier::new(2));
        let freer = {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                assert_eq!(costguard_budget_free(b), OK);
                // A new budget at once, likely in the freed handle's slot and memory: a use that
                // outlived the free would land on it.
                begin(e, k, "decoy")
            })
        };
        go.wait();
        let mut n = 0u64;
        loop {
            match charge(b, c, 1) {
                s if s == OK => n += 1,
                s => {
                    assert_eq!(s, INVALID);
                    break;
                }
            }
        }
        let decoy = freer.join().unwrap();
        // Every charge the owner saw succeed is in the budget's parent, and none in the decoy.
        assert_eq!(used(parent, c), Ok(n));
        assert_eq!(used(decoy, c), Ok(0));
        assert_eq!(costguard_budget_free(decoy), OK);
        assert_eq!(costguard_budget_free(parent), OK);
    }
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn engine_free_keeps_budgets_working() {
    let e = engine();
    let (c, k) = (counter(e, "file_lookups"), class(e, "parse"));
    let b = begin(e, k, "r");
    assert_eq!(costguard_engine_free(e), OK);
    assert_eq!(charge(b, c, 3), OK);
    assert_eq!(used(b, c), Ok(3));
    assert_eq!(try_begin(e, k, "r2"), Err(INVALID));
    assert_eq!(costguard_budget_free(b), OK);
}

#[test]
fn counters_resolve_the_same_whether_named_before_or_after_the_budget() {
    // A budget handle copies the counters among the engine's first names; later names, names of
    // another kind and forged values still go through the engine's list and its checks.
    let e = engine();
    let parse = class(e, "parse");
    let depth = level(e, "nesting_depth");
    let early = counter(e, "file_lookups");
    let b = begin(e, parse, "r");
    let late = counter(e, "db_queries");
    assert_eq!(charge(b, early, 4), OK);
    assert_eq!(charge(b, late, 6), OK);
    assert_eq!(used(b, early), Ok(4));
    assert_eq!(used(b, late), Ok(6));
    // The limit holds on both paths.
    assert_eq!(charge(b, early, 7), REFUSED);
    assert_eq!(charge(b, late, 95), REFUSED);
    // A level's index forged as a counter, and a counter index no name has, are invalid.
    let forged_level = costguard_counter {
        bits: (depth.bits & !0xFF00_0000) | (early.bits & 0xFF00_0000),
    };
    assert_eq!(charge(b, forged_level, 1), INVALID);
    let unknown = costguard_counter {
        bits: (early.bits & !0xFF_FFFF) | 15,
    };
    assert_eq!(charge(b, unknown, 1), INVALID);
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

//! A panic inside an exported function becomes `COSTGUARD_PANIC`, the process survives, the handles
//! used by the panicking call are released by unwinding, and the engine keeps working.
#![cfg(feature = "fault-injection")]

mod common;

use common::*;
use costguard_ffi::*;
use std::ptr::null_mut;

const PANIC: costguard_status = costguard_status::COSTGUARD_PANIC;

fn panics(f: impl FnOnce() -> costguard_status) {
    costguard_debug_panic_after(1);
    assert_eq!(f(), PANIC);
    assert!(last_error().contains("injected fault"), "{}", last_error());
}

#[test]
fn panics_become_status_codes_and_nothing_breaks() {
    let e = engine();
    let (c, l, k, db) = (
        counter(e, "file_lookups"),
        level(e, "nesting_depth"),
        class(e, "parse"),
        backend(e, "db"),
    );
    let b = begin(e, k, "fault");
    let baseline = costguard_ffi::testing::live_handles();
    let mut out = 0u64;
    let mut flag = false;
    let mut len = 0usize;
    // SAFETY: valid pointers throughout.
    unsafe {
        panics(|| charge(b, c, 1));
        panics(|| costguard_budget_used(b, c, &mut out));
        panics(|| costguard_budget_is_cancelled(b, &mut flag));
        panics(|| costguard_budget_report_json(b, null_mut(), 0, &mut len));
        panics(|| costguard_engine_generation(e, &mut out));
        panics(|| costguard_engine_stats_json(e, null_mut(), 0, &mut len));
        panics(|| {
            costguard_engine_counter(
                e,
                "db_queries".as_ptr().cast(),
                10,
                &mut costguard_counter::default(),
            )
        });
        panics(|| {
            let p = POLICY;
            costguard_engine_reload_from_str(e, p.as_ptr().cast(), p.len(), null_mut())
        });
        panics(|| costguard_header_decode_json("cg1".as_ptr().cast(), 3, null_mut(), 0, &mut len));
        panics(|| {
            costguard_budget_child(
                b,
                std::ptr::null(),
                &mut costguard_budget::default(),
                null_mut(),
            )
        });
        panics(|| {
            costguard_budget_enter(b, l, 1, &mut costguard_level_guard::default(), null_mut())
        });
        panics(|| {
            costguard_attempt_begin(e, db, b, 0, &mut costguard_attempt::default(), null_mut())
        });
    }
    // The value functions return their fallback on a panic, with the message recorded.
    costguard_debug_panic_after(1);
    assert_eq!(costguard_abi_version(), 2);
    assert!(last_error().contains("injected fault"));
    // Disarmed: nothing panics.
    costguard_debug_panic_after(0);
    // No reader count leaked: the budget can still be used and freed, and the table holds what it
    // held before (calls that panicked after inserting a handle leave it live, and say PANIC).
    assert_eq!(charge(b, c, 1), OK);
    assert!(costguard_ffi::testing::live_handles() >= baseline);
    assert_eq!(costguard_budget_free(b), OK);
    let b2 = begin(e, k, "after");
    assert_eq!(charge(b2, c, 1), OK);
    // A freeing call that panics after its claim still frees (as documented).
    let g = admit(e, class(e, "api"), "g", "").unwrap();
    panics(|| costguard_grant_finish(g, COSTGUARD_OUTCOME_SUCCESS));
    assert_eq!(costguard_grant_free(g), INVALID);
    assert!(admit(e, class(e, "api"), "g2", "").is_ok());
    assert_eq!(costguard_budget_free(b2), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

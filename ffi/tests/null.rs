//! Every exported function, called with NULL for each pointer argument (one at a time) and with the
//! null handle for each handle argument, returns `COSTGUARD_NULL_ARGUMENT` (and `_free` of the null
//! handle is a no-op returning `COSTGUARD_OK`). The list of cases is checked against the functions
//! the committed header declares, so an exported function without a case fails this test.

mod common;

use common::*;
use costguard_ffi::*;
use std::collections::BTreeSet;
use std::ffi::c_char;
use std::ptr::{null, null_mut};

struct Fx {
    e: costguard_engine,
    c: costguard_counter,
    l: costguard_level,
    k: costguard_class,
    b: costguard_backend,
    h: costguard_host,
    budget: costguard_budget,
    grant: costguard_grant,
    attempt: costguard_attempt,
    res: costguard_reservation,
    guard: costguard_level_guard,
}

fn fixture() -> Fx {
    let e = engine();
    let (c, l, k, b) = (
        counter(e, "file_lookups"),
        level(e, "nesting_depth"),
        class(e, "parse"),
        backend(e, "db"),
    );
    let h = host(e, b, "db1:3306");
    let budget = begin(e, k, "null-test");
    let grant = admit(e, class(e, "api"), "g", "").unwrap();
    let mut attempt = costguard_attempt::default();
    let mut res = costguard_reservation::default();
    let mut guard = costguard_level_guard::default();
    // SAFETY: valid handles and writable outputs.
    unsafe {
        assert_eq!(
            costguard_attempt_begin(e, b, budget, 0, &mut attempt, null_mut()),
            OK
        );
        assert_eq!(
            costguard_budget_reserve(budget, c, 1, &mut res, null_mut()),
            OK
        );
        assert_eq!(
            costguard_budget_enter(budget, l, 1, &mut guard, null_mut()),
            OK
        );
    }
    Fx {
        e,
        c,
        l,
        k,
        b,
        h,
        budget,
        grant,
        attempt,
        res,
        guard,
    }
}

const N0: costguard_engine = costguard_engine { bits: 0 };
const B0: costguard_budget = costguard_budget { bits: 0 };

macro_rules! null {
    ($e:expr) => {{
        #[allow(unused_unsafe)]
        // SAFETY: every non-NULL pointer passed is valid; NULL ones are what is tested.
        let status = unsafe { $e };
        assert_eq!(status, NULL, "{}", stringify!($e))
    }};
}
macro_rules! ok {
    ($e:expr) => {{
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let status = unsafe { $e };
        assert_eq!(status, OK, "{}", stringify!($e))
    }};
}

type Case = (&'static str, fn(&Fx));

fn cases() -> Vec<Case> {
    vec![
        ("costguard_status_describe", |_| {
            // No pointer arguments; returns a static string for anything.
            assert!(!costguard_status_describe(u32::MAX).is_null());
        }),
        ("costguard_version", |_| {
            assert!(!costguard_version().is_null())
        }),
        ("costguard_abi_version", |_| {
            assert_eq!(costguard_abi_version(), 2)
        }),
        ("costguard_reason_name", |_| {
            assert!(!costguard_reason_name(u32::MAX).is_null())
        }),
        ("costguard_debug_panic_after", |_| {
            // No pointer arguments (and only with the feature).
        }),
        ("costguard_last_error", |_| {
            let mut buf = [0 as c_char; 8];
            let mut len = 0usize;
            null!(costguard_last_error(
                buf.as_mut_ptr(),
                buf.len(),
                null_mut()
            ));
            null!(costguard_last_error(null_mut(), 8, &mut len));
            ok!(costguard_last_error(buf.as_mut_ptr(), buf.len(), &mut len));
        }),
        ("costguard_verdict_describe", |_| {
            let v = blank_verdict();
            let mut buf = [0 as c_char; 256];
            let mut len = 7usize;
            null!(costguard_verdict_describe(
                null(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut len
            ));
            assert_eq!(len, 7, "outputs untouched on error");
            null!(costguard_verdict_describe(&v, null_mut(), 8, &mut len));
            null!(costguard_verdict_describe(
                &v,
                buf.as_mut_ptr(),
                buf.len(),
                null_mut()
            ));
        }),
        ("costguard_engine_new_from_str", |_| {
            let mut e = costguard_engine { bits: 42 };
            null!(costguard_engine_new_from_str(null(), 5, 0, &mut e));
            assert_eq!(e.bits, 42, "outputs untouched on error");
            null!(costguard_engine_new_from_str(
                POLICY.as_ptr().cast(),
                POLICY.len(),
                0,
                null_mut()
            ));
        }),
        ("costguard_engine_new_from_file", |_| {
            let mut e = costguard_engine::default();
            null!(costguard_engine_new_from_file(null(), 5, 0, &mut e));
            null!(costguard_engine_new_from_file(
                "p".as_ptr().cast(),
                1,
                0,
                null_mut()
            ));
        }),
        ("costguard_engine_reload_from_str", |f| {
            null!(costguard_engine_reload_from_str(
                N0,
                POLICY.as_ptr().cast(),
                POLICY.len(),
                null_mut()
            ));
            null!(costguard_engine_reload_from_str(f.e, null(), 5, null_mut()));
        }),
        ("costguard_engine_reload_from_file", |f| {
            null!(costguard_engine_reload_from_file(
                N0,
                "p".as_ptr().cast(),
                1,
                null_mut()
            ));
            null!(costguard_engine_reload_from_file(
                f.e,
                null(),
                5,
                null_mut()
            ));
        }),
        ("costguard_engine_generation", |f| {
            let mut g = 0;
            null!(costguard_engine_generation(N0, &mut g));
            null!(costguard_engine_generation(f.e, null_mut()));
        }),
        ("costguard_engine_advance_clock", |_| {
            null!(costguard_engine_advance_clock(N0, 1))
        }),
        ("costguard_engine_free", |_| ok!(costguard_engine_free(N0))),
        ("costguard_engine_counter", |f| {
            let mut o = costguard_counter::default();
            null!(costguard_engine_counter(
                N0,
                "file_lookups".as_ptr().cast(),
                12,
                &mut o
            ));
            null!(costguard_engine_counter(f.e, null(), 12, &mut o));
            null!(costguard_engine_counter(
                f.e,
                "file_lookups".as_ptr().cast(),
                12,
                null_mut()
            ));
        }),
        ("costguard_engine_level", |f| {
            let mut o = costguard_level::default();
            null!(costguard_engine_level(
                N0,
                "nesting_depth".as_ptr().cast(),
                13,
                &mut o
            ));
            null!(costguard_engine_level(f.e, null(), 13, &mut o));
            null!(costguard_engine_level(
                f.e,
                "nesting_depth".as_ptr().cast(),
                13,
                null_mut()
            ));
        }),
        ("costguard_engine_class", |f| {
            let mut o = costguard_class::default();
            null!(costguard_engine_class(
                N0,
                "parse".as_ptr().cast(),
                5,
                &mut o
            ));
            null!(costguard_engine_class(f.e, null(), 5, &mut o));
            null!(costguard_engine_class(
                f.e,
                "parse".as_ptr().cast(),
                5,
                null_mut()
            ));
        }),
        ("costguard_engine_backend", |f| {
            let mut o = costguard_backend::default();
            null!(costguard_engine_backend(
                N0,
                "db".as_ptr().cast(),
                2,
                &mut o
            ));
            null!(costguard_engine_backend(f.e, null(), 2, &mut o));
            null!(costguard_engine_backend(
                f.e,
                "db".as_ptr().cast(),
                2,
                null_mut()
            ));
        }),
        ("costguard_engine_host", |f| {
            let mut o = costguard_host::default();
            null!(costguard_engine_host(
                N0,
                f.b,
                "db1:3306".as_ptr().cast(),
                8,
                &mut o
            ));
            null!(costguard_engine_host(f.e, f.b, null(), 8, &mut o));
            null!(costguard_engine_host(
                f.e,
                f.b,
                "db1:3306".as_ptr().cast(),
                8,
                null_mut()
            ));
        }),
        ("costguard_engine_stats_json", |f| {
            let mut len = 0;
            null!(costguard_engine_stats_json(N0, null_mut(), 0, &mut len));
            null!(costguard_engine_stats_json(f.e, null_mut(), 8, &mut len));
            null!(costguard_engine_stats_json(f.e, null_mut(), 0, null_mut()));
        }),
        ("costguard_engine_stats_prometheus", |f| {
            let mut len = 0;
            null!(costguard_engine_stats_prometheus(
                N0,
                null_mut(),
                0,
                &mut len
            ));
            null!(costguard_engine_stats_prometheus(
                f.e,
                null_mut(),
                8,
                &mut len
            ));
            null!(costguard_engine_stats_prometheus(
                f.e,
                null_mut(),
                0,
                null_mut()
            ));
        }),
        ("costguard_admit", |f| {
            let base = costguard_admit_request {
                class_: f.k,
                request_id: "r".as_ptr().cast(),
                request_id_len: 1,
                key: null(),
                key_len: 0,
                priority: 0,
                flags: 0,
                estimates: null(),
                estimates_len: 0,
                rate_cost: 0,
                header: null(),
                header_len: 0,
            };
            let mut g = costguard_grant::default();
            null!(costguard_admit(N0, &base, &mut g, null_mut()));
            null!(costguard_admit(f.e, null(), &mut g, null_mut()));
            null!(costguard_admit(f.e, &base, null_mut(), null_mut()));
            null!(costguard_admit(
                f.e,
                &costguard_admit_request {
                    request_id: null(),
                    ..base
                },
                &mut g,
                null_mut()
            ));
            null!(costguard_admit(
                f.e,
                &costguard_admit_request { key_len: 3, ..base },
                &mut g,
                null_mut()
            ));
            null!(costguard_admit(
                f.e,
                &costguard_admit_request {
                    estimates_len: 1,
                    ..base
                },
                &mut g,
                null_mut()
            ));
            null!(costguard_admit(
                f.e,
                &costguard_admit_request {
                    header_len: 4,
                    ..base
                },
                &mut g,
                null_mut()
            ));
        }),
        ("costguard_grant_budget", |f| {
            let mut b = costguard_budget::default();
            null!(costguard_grant_budget(costguard_grant::default(), &mut b));
            null!(costguard_grant_budget(f.grant, null_mut()));
        }),
        ("costguard_grant_finish", |_| {
            null!(costguard_grant_finish(costguard_grant::default(), 0))
        }),
        ("costguard_grant_free", |_| {
            ok!(costguard_grant_free(costguard_grant::default()))
        }),
        ("costguard_budget_begin", |f| {
            let mut b = costguard_budget::default();
            null!(costguard_budget_begin(
                N0,
                f.k,
                "r".as_ptr().cast(),
                1,
                null(),
                0,
                &mut b,
                null_mut()
            ));
            null!(costguard_budget_begin(
                f.e,
                f.k,
                null(),
                1,
                null(),
                0,
                &mut b,
                null_mut()
            ));
            null!(costguard_budget_begin(
                f.e,
                f.k,
                "r".as_ptr().cast(),
                1,
                null(),
                3,
                &mut b,
                null_mut()
            ));
            null!(costguard_budget_begin(
                f.e,
                f.k,
                "r".as_ptr().cast(),
                1,
                null(),
                0,
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_budget_child", |f| {
            let mut b = costguard_budget::default();
            null!(costguard_budget_child(B0, null(), &mut b, null_mut()));
            null!(costguard_budget_child(
                f.budget,
                null(),
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_budget_free", |_| ok!(costguard_budget_free(B0))),
        ("costguard_budget_charge", |f| {
            null!(costguard_budget_charge(B0, f.c, 1, null_mut()))
        }),
        ("costguard_budget_charge_many", |f| {
            let ch = [costguard_charge {
                counter: f.c,
                amount: 1,
            }];
            null!(costguard_budget_charge_many(B0, ch.as_ptr(), 1, null_mut()));
            null!(costguard_budget_charge_many(
                f.budget,
                null(),
                1,
                null_mut()
            ));
        }),
        ("costguard_budget_refund", |f| {
            null!(costguard_budget_refund(B0, f.c, 1, null_mut()))
        }),
        ("costguard_budget_try_retry", |_| {
            null!(costguard_budget_try_retry(B0, null_mut()))
        }),
        ("costguard_budget_reserve", |f| {
            let mut r = costguard_reservation::default();
            null!(costguard_budget_reserve(B0, f.c, 1, &mut r, null_mut()));
            null!(costguard_budget_reserve(
                f.budget,
                f.c,
                1,
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_reservation_settle", |_| {
            null!(costguard_reservation_settle(
                costguard_reservation::default(),
                1,
                null_mut()
            ))
        }),
        ("costguard_reservation_free", |_| {
            ok!(costguard_reservation_free(costguard_reservation::default()))
        }),
        ("costguard_reservation_cancel", |_| {
            null!(costguard_reservation_cancel(
                costguard_reservation::default()
            ))
        }),
        ("costguard_budget_enter", |f| {
            let mut g = costguard_level_guard::default();
            null!(costguard_budget_enter(B0, f.l, 1, &mut g, null_mut()));
            null!(costguard_budget_enter(
                f.budget,
                f.l,
                1,
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_level_guard_free", |_| {
            ok!(costguard_level_guard_free(costguard_level_guard::default()))
        }),
        ("costguard_budget_used", |f| {
            let mut o = 5;
            null!(costguard_budget_used(B0, f.c, &mut o));
            null!(costguard_budget_used(f.budget, f.c, null_mut()));
            assert_eq!(o, 5);
        }),
        ("costguard_budget_remaining_of", |f| {
            let mut o = 0;
            null!(costguard_budget_remaining_of(B0, f.c, &mut o));
            null!(costguard_budget_remaining_of(f.budget, f.c, null_mut()));
        }),
        ("costguard_budget_level", |f| {
            let mut o = 0;
            null!(costguard_budget_level(B0, f.l, &mut o));
            null!(costguard_budget_level(f.budget, f.l, null_mut()));
        }),
        ("costguard_budget_remaining_ns", |f| {
            let mut o = 0;
            null!(costguard_budget_remaining_ns(B0, &mut o));
            null!(costguard_budget_remaining_ns(f.budget, null_mut()));
        }),
        ("costguard_budget_expired", |f| {
            let mut o = false;
            null!(costguard_budget_expired(B0, &mut o));
            null!(costguard_budget_expired(f.budget, null_mut()));
        }),
        ("costguard_budget_is_cancelled", |f| {
            let mut o = false;
            null!(costguard_budget_is_cancelled(B0, &mut o));
            null!(costguard_budget_is_cancelled(f.budget, null_mut()));
        }),
        ("costguard_budget_check", |_| {
            null!(costguard_budget_check(B0, null_mut()))
        }),
        ("costguard_budget_cancel", |_| {
            null!(costguard_budget_cancel(B0))
        }),
        ("costguard_budget_to_header", |f| {
            let mut len = 0;
            null!(costguard_budget_to_header(B0, null_mut(), 0, &mut len));
            null!(costguard_budget_to_header(
                f.budget,
                null_mut(),
                8,
                &mut len
            ));
            null!(costguard_budget_to_header(
                f.budget,
                null_mut(),
                0,
                null_mut()
            ));
        }),
        ("costguard_budget_usage", |f| {
            let mut len = 0;
            null!(costguard_budget_usage(B0, null_mut(), 0, &mut len));
            null!(costguard_budget_usage(f.budget, null_mut(), 8, &mut len));
            null!(costguard_budget_usage(f.budget, null_mut(), 0, null_mut()));
        }),
        ("costguard_budget_charge_usage", |f| {
            let usage = c"cgu1;retries=1";
            null!(costguard_budget_charge_usage(
                B0,
                usage.as_ptr(),
                usage.count_bytes(),
                null_mut()
            ));
            null!(costguard_budget_charge_usage(
                f.budget,
                null(),
                4,
                null_mut()
            ));
        }),
        ("costguard_budget_report_json", |f| {
            let mut len = 0;
            null!(costguard_budget_report_json(B0, null_mut(), 0, &mut len));
            null!(costguard_budget_report_json(
                f.budget,
                null_mut(),
                8,
                &mut len
            ));
            null!(costguard_budget_report_json(
                f.budget,
                null_mut(),
                0,
                null_mut()
            ));
        }),
        ("costguard_budget_report_text", |f| {
            let mut len = 0;
            null!(costguard_budget_report_text(B0, null_mut(), 0, &mut len));
            null!(costguard_budget_report_text(
                f.budget,
                null_mut(),
                8,
                &mut len
            ));
            null!(costguard_budget_report_text(
                f.budget,
                null_mut(),
                0,
                null_mut()
            ));
        }),
        ("costguard_header_decode_json", |_| {
            let mut len = 0;
            let h = "cg1;t=5";
            null!(costguard_header_decode_json(
                null(),
                7,
                null_mut(),
                0,
                &mut len
            ));
            null!(costguard_header_decode_json(
                h.as_ptr().cast(),
                h.len(),
                null_mut(),
                8,
                &mut len
            ));
            null!(costguard_header_decode_json(
                h.as_ptr().cast(),
                h.len(),
                null_mut(),
                0,
                null_mut()
            ));
        }),
        ("costguard_attempt_begin", |f| {
            let mut a = costguard_attempt::default();
            null!(costguard_attempt_begin(
                N0,
                f.b,
                f.budget,
                0,
                &mut a,
                null_mut()
            ));
            null!(costguard_attempt_begin(f.e, f.b, B0, 0, &mut a, null_mut()));
            null!(costguard_attempt_begin(
                f.e,
                f.b,
                f.budget,
                0,
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_attempt_begin_on", |f| {
            let mut a = costguard_attempt::default();
            null!(costguard_attempt_begin_on(
                N0,
                f.h,
                f.budget,
                0,
                &mut a,
                null_mut()
            ));
            null!(costguard_attempt_begin_on(
                f.e,
                f.h,
                B0,
                0,
                &mut a,
                null_mut()
            ));
            null!(costguard_attempt_begin_on(
                f.e,
                f.h,
                f.budget,
                0,
                null_mut(),
                null_mut()
            ));
        }),
        ("costguard_attempt_timeout_ns", |f| {
            let mut o = 0;
            null!(costguard_attempt_timeout_ns(
                costguard_attempt::default(),
                &mut o
            ));
            null!(costguard_attempt_timeout_ns(f.attempt, null_mut()));
        }),
        ("costguard_attempt_host", |f| {
            let mut len = 0;
            null!(costguard_attempt_host(
                costguard_attempt::default(),
                null_mut(),
                0,
                &mut len
            ));
            null!(costguard_attempt_host(f.attempt, null_mut(), 8, &mut len));
            null!(costguard_attempt_host(f.attempt, null_mut(), 0, null_mut()));
        }),
        ("costguard_attempt_connected", |_| {
            null!(costguard_attempt_connected(costguard_attempt::default()))
        }),
        ("costguard_attempt_finish", |_| {
            null!(costguard_attempt_finish(
                costguard_attempt::default(),
                0,
                u64::MAX
            ))
        }),
        ("costguard_attempt_free", |_| {
            ok!(costguard_attempt_free(costguard_attempt::default()))
        }),
        ("costguard_attempt_outcome_from_http", |_| {
            null!(costguard_attempt_outcome_from_http(200, null_mut()))
        }),
        ("costguard_retry", |f| {
            let mut w = 0;
            null!(costguard_retry(
                N0,
                f.b,
                f.budget,
                COSTGUARD_ATTEMPT_SERVER_ERROR,
                u64::MAX,
                1,
                &mut w,
                null_mut()
            ));
            null!(costguard_retry(
                f.e,
                f.b,
                B0,
                COSTGUARD_ATTEMPT_SERVER_ERROR,
                u64::MAX,
                1,
                &mut w,
                null_mut()
            ));
            null!(costguard_retry(
                f.e,
                f.b,
                f.budget,
                COSTGUARD_ATTEMPT_SERVER_ERROR,
                u64::MAX,
                1,
                null_mut(),
                null_mut()
            ));
        }),
    ]
}

fn header_functions() -> BTreeSet<String> {
    let header = include_str!("../../include/costguard.h");
    let mut names = BTreeSet::new();
    for line in header.lines() {
        let line = line.trim_start();
        if line.starts_with("//")
            || line.starts_with('*')
            || line.starts_with("/*")
            || line.starts_with('#')
        {
            continue;
        }
        if let Some(open) = line.find('(') {
            let before = &line[..open];
            if let Some(name) = before.split([' ', '*']).next_back() {
                if name.starts_with("costguard_") {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn every_exported_function_has_a_case() {
    let declared = header_functions();
    assert!(
        declared.len() >= 59,
        "parsed only {} functions from the header",
        declared.len()
    );
    let covered: BTreeSet<String> = cases().iter().map(|(n, _)| n.to_string()).collect();
    let missing: Vec<_> = declared.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "exported functions without a NULL case in ffi/tests/null.rs: {missing:?}"
    );
    let extra: Vec<_> = covered.difference(&declared).collect();
    assert!(
        extra.is_empty(),
        "cases for functions the header does not declare: {extra:?}"
    );
}

#[test]
fn null_pointers_and_null_handles_are_refused() {
    let f = fixture();
    for (name, case) in cases() {
        case(&f);
        let _ = name;
    }
    // Nothing above freed or broke anything: the fixture's handles still work.
    assert_eq!(charge(f.budget, f.c, 1), OK);
    let _ = (f.k, f.h);
    ok!(costguard_level_guard_free(f.guard));
    ok!(costguard_reservation_free(f.res));
    ok!(costguard_attempt_free(f.attempt));
    ok!(costguard_grant_free(f.grant));
    ok!(costguard_budget_free(f.budget));
    ok!(costguard_engine_free(f.e));
}

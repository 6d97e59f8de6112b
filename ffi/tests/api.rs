//! What each function does, on a manual-clock engine: the same answers as the Rust API.

mod common;

use common::*;
use costguard_ffi::*;
use std::ptr::{null, null_mut};

const TOO_SMALL: costguard_status = costguard_status::COSTGUARD_BUFFER_TOO_SMALL;

#[test]
fn versions_statuses_and_reasons() {
    // SAFETY: static NUL-terminated strings.
    let s = |p: *const std::ffi::c_char| {
        // SAFETY: valid pointers; the test's handles are live or deliberately invalid.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(s(costguard_version()), "0.1.0");
    assert_eq!(costguard_abi_version(), 2);
    assert_eq!(s(costguard_status_describe(0)), "ok");
    assert_eq!(s(costguard_status_describe(999)), "unknown status");
    for n in 0..12 {
        assert_ne!(s(costguard_status_describe(n)), "unknown status");
    }
    assert_eq!(
        s(costguard_reason_name(COSTGUARD_REASON_LIMIT_EXCEEDED)),
        "limit_exceeded"
    );
    assert_eq!(
        s(costguard_reason_name(COSTGUARD_REASON_NOT_RETRYABLE)),
        "not_retryable"
    );
    assert_eq!(s(costguard_reason_name(21)), "unknown");
}

#[test]
fn policy_errors_utf8_and_io() {
    let bad = "[classes.parse]\nwall_time = \"30 seconds\"\n";
    let mut e = costguard_engine { bits: 7 };
    // SAFETY: valid strings and outputs.
    unsafe {
        assert_eq!(
            costguard_engine_new_from_str(bad.as_ptr().cast(), bad.len(), 0, &mut e),
            costguard_status::COSTGUARD_POLICY_ERROR
        );
        assert_eq!(e.bits, 7);
        assert!(last_error().contains("line 2"), "{}", last_error());
        let not_utf8 = [0xffu8, 0xfe];
        assert_eq!(
            costguard_engine_new_from_str(not_utf8.as_ptr().cast(), 2, 0, &mut e),
            costguard_status::COSTGUARD_INVALID_UTF8
        );
        assert_eq!(
            costguard_engine_new_from_str(POLICY.as_ptr().cast(), POLICY.len(), 2, &mut e),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
        let missing = "/nonexistent/costguard.toml";
        assert_eq!(
            costguard_engine_new_from_file(missing.as_ptr().cast(), missing.len(), 0, &mut e),
            costguard_status::COSTGUARD_IO_ERROR
        );
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().unwrap();
        assert_eq!(
            costguard_engine_new_from_file(tmp.as_ptr().cast(), tmp.len(), 0, &mut e),
            costguard_status::COSTGUARD_IO_ERROR,
            "a directory"
        );
        assert!(last_error().contains("is a directory"), "{}", last_error());
        // Only a regular file is read: a device may never end, and opening a FIFO would block
        // until some writer came.
        let fifo = std::env::temp_dir().join(format!("costguard-ffi-{}.fifo", std::process::id()));
        let fifo_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(libc::mkfifo(fifo_path.as_ptr(), 0o600), 0);
        for special in ["/dev/zero", fifo.to_str().unwrap()] {
            assert_eq!(
                costguard_engine_new_from_file(special.as_ptr().cast(), special.len(), 0, &mut e),
                costguard_status::COSTGUARD_IO_ERROR,
                "{special}"
            );
            assert!(
                last_error().contains("is not a regular file"),
                "{}",
                last_error()
            );
        }
        std::fs::remove_file(&fifo).unwrap();
        // A regular file whose reading fails (this process's memory, read at address 0).
        let unreadable = "/proc/self/mem";
        assert!(std::fs::metadata(unreadable).unwrap().is_file());
        assert_eq!(
            costguard_engine_new_from_file(unreadable.as_ptr().cast(), unreadable.len(), 0, &mut e),
            costguard_status::COSTGUARD_IO_ERROR
        );
        assert!(
            last_error().starts_with("/proc/self/mem: "),
            "{}",
            last_error()
        );
        // A regular file past the size limit: read up to the limit only.
        let big = std::env::temp_dir().join(format!("costguard-ffi-{}.big", std::process::id()));
        std::fs::write(&big, vec![b'#'; costguard::policy::MAX_POLICY_BYTES + 1]).unwrap();
        let big_path = big.to_str().unwrap();
        assert_eq!(
            costguard_engine_new_from_file(big_path.as_ptr().cast(), big_path.len(), 0, &mut e),
            costguard_status::COSTGUARD_POLICY_ERROR
        );
        assert!(last_error().contains("larger than"), "{}", last_error());
        std::fs::remove_file(&big).unwrap();
        let dir = std::env::temp_dir().join(format!("costguard-ffi-{}.toml", std::process::id()));
        std::fs::write(&dir, bad).unwrap();
        let p = dir.to_str().unwrap();
        assert_eq!(
            costguard_engine_new_from_file(p.as_ptr().cast(), p.len(), 0, &mut e),
            costguard_status::COSTGUARD_POLICY_ERROR
        );
        assert!(last_error().contains(":2:"), "{}", last_error());
        std::fs::write(&dir, POLICY).unwrap();
        assert_eq!(
            costguard_engine_new_from_file(p.as_ptr().cast(), p.len(), 0, &mut e),
            OK
        );
        let mut g = 0;
        assert_eq!(
            costguard_engine_reload_from_file(e, p.as_ptr().cast(), p.len(), &mut g),
            OK
        );
        assert_eq!(g, 2);
        assert_eq!(
            costguard_engine_advance_clock(e, 1),
            costguard_status::COSTGUARD_INVALID_ARGUMENT,
            "not a manual clock"
        );
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(costguard_engine_free(e), OK);
    }
}

#[test]
fn reload_keeps_names_and_running_budgets() {
    let e = engine();
    let (c, k) = (counter(e, "file_lookups"), class(e, "parse"));
    let old = begin(e, k, "old");
    let mut g = 0;
    let tighter = POLICY.replace("file_lookups = 10", "file_lookups = 2");
    // SAFETY: valid strings and outputs.
    unsafe {
        assert_eq!(
            costguard_engine_reload_from_str(e, tighter.as_ptr().cast(), tighter.len(), &mut g),
            OK
        );
        assert_eq!(g, 2);
        let bad = "nonsense = ";
        assert_eq!(
            costguard_engine_reload_from_str(e, bad.as_ptr().cast(), bad.len(), null_mut()),
            costguard_status::COSTGUARD_POLICY_ERROR
        );
        assert_eq!(costguard_engine_generation(e, &mut g), OK);
        assert_eq!(g, 2);
    }
    let new = begin(e, k, "new");
    assert_eq!(charge(new, c, 3), REFUSED);
    assert_eq!(charge(old, c, 3), OK);
    // The same name resolves to the same value.
    assert_eq!(counter(e, "file_lookups"), c);
    let mut x = costguard_counter::default();
    // SAFETY: valid strings and outputs.
    unsafe {
        assert_eq!(
            costguard_engine_counter(e, "nesting_depth".as_ptr().cast(), 13, &mut x),
            costguard_status::COSTGUARD_UNKNOWN_NAME,
            "a level is not a counter"
        );
        assert_eq!(
            costguard_engine_class(
                e,
                "nope".as_ptr().cast(),
                4,
                &mut costguard_class::default()
            ),
            costguard_status::COSTGUARD_UNKNOWN_NAME
        );
    }
    assert_eq!(x.bits, 0);
    for b in [old, new] {
        assert_eq!(costguard_budget_free(b), OK);
    }
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn charges_verdicts_refunds_and_reports() {
    let e = engine();
    let (c, db, k) = (
        counter(e, "file_lookups"),
        counter(e, "db_queries"),
        class(e, "parse"),
    );
    let b = begin(e, k, "edit-42");
    assert_eq!(charge(b, c, 9), OK);
    let (s, v) = charge_v(b, c, 2);
    assert_eq!(s, REFUSED);
    assert_eq!(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    assert_eq!((v.requested, v.used, v.limit), (2, 9, 10));
    assert_eq!(v.retry, COSTGUARD_RETRY_NEVER);
    assert_eq!(v.retry_after_ns, u64::MAX);
    assert_eq!(
        (cstr(&v.class_name), cstr(&v.dimension), cstr(&v.request_id)),
        ("parse".into(), "file_lookups".into(), "edit-42".into())
    );
    // SAFETY: valid pointers.
    let sentence =
        text(|buf, cap, len| unsafe { costguard_verdict_describe(&v, buf, cap, len) }).unwrap();
    assert_eq!(sentence, "request edit-42: parse/file_lookups: 2 more would exceed the limit (9 of 10 used); retrying cannot help");
    let (s, v) = charge_v(b, c, 11);
    assert_eq!((s, v.reason), (REFUSED, COSTGUARD_REASON_CANNOT_FIT));
    // A verdict is written only on REFUSED.
    let (s, v) = charge_v(b, c, 1);
    assert_eq!((s, v.reason), (OK, 999));
    let mut is = false;
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_eq!(costguard_budget_is_cancelled(b, &mut is), OK);
        assert!(is, "a refusal for lack of what was left cancels");
        let mut refunded = 0;
        assert_eq!(costguard_budget_refund(b, c, 4, &mut refunded), OK);
        assert_eq!(refunded, 4);
        assert_eq!(used(b, c), Ok(6));
        let mut rem = 0;
        assert_eq!(costguard_budget_remaining_of(b, c, &mut rem), OK);
        assert_eq!(rem, 4);
        let unlimited = counter(e, "cpu_time");
        assert_eq!(costguard_budget_remaining_of(b, unlimited, &mut rem), OK);
        assert_eq!(rem, u64::MAX);
        let many = [
            costguard_charge {
                counter: c,
                amount: 1,
            },
            costguard_charge {
                counter: db,
                amount: 200,
            },
        ];
        assert_eq!(
            costguard_budget_charge_many(b, many.as_ptr(), 2, null_mut()),
            REFUSED
        );
        assert_eq!(used(b, c), Ok(6), "all or nothing");
        assert_eq!(
            costguard_budget_charge_many(b, many.as_ptr(), 1, null_mut()),
            OK
        );
        assert_eq!(costguard_budget_charge_many(b, null(), 0, null_mut()), OK);
        // Lengths no object can have: an error that explains itself, nothing read.
        assert_eq!(
            costguard_budget_charge_many(b, many.as_ptr(), usize::MAX, null_mut()),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("larger than any array"),
            "{}",
            last_error()
        );
        let mut other = costguard_engine::default();
        assert_eq!(
            costguard_engine_new_from_str(POLICY.as_ptr().cast(), usize::MAX, 0, &mut other),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("larger than any object"),
            "{}",
            last_error()
        );
        assert_eq!(costguard_budget_try_retry(b, null_mut()), OK);
        assert_eq!(costguard_budget_try_retry(b, null_mut()), OK);
        let mut v = blank_verdict();
        assert_eq!(costguard_budget_try_retry(b, &mut v), REFUSED);
        assert_eq!(cstr(&v.dimension), "retries");
        let json = text(|buf, cap, len| costguard_budget_report_json(b, buf, cap, len)).unwrap();
        assert!(
            json.contains("\"file_lookups\"") && json.starts_with('{'),
            "{json}"
        );
        let report = text(|buf, cap, len| costguard_budget_report_text(b, buf, cap, len)).unwrap();
        assert!(
            report.starts_with("limit report for request edit-42"),
            "{report}"
        );
        // A too-small buffer: nothing written, the size needed reported.
        let mut small = [b'x' as std::ffi::c_char; 4];
        let mut len = 0;
        assert_eq!(
            costguard_budget_report_text(b, small.as_mut_ptr(), 4, &mut len),
            TOO_SMALL
        );
        assert_eq!(len, report.len() + 1);
        assert!(small.iter().all(|&ch| ch == b'x' as std::ffi::c_char));
    }
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn reservations_levels_children_time_and_cancellation() {
    let e = engine();
    let (c, l, k) = (
        counter(e, "file_lookups"),
        level(e, "nesting_depth"),
        class(e, "parse"),
    );
    let b = begin(e, k, "r");
    // SAFETY: valid pointers throughout.
    unsafe {
        let mut r = costguard_reservation::default();
        let mut v = blank_verdict();
        assert_eq!(costguard_budget_reserve(b, c, 100, &mut r, &mut v), REFUSED);
        assert_eq!(v.reason, COSTGUARD_REASON_CANNOT_FIT);
        assert_eq!(r.bits, 0);
        assert_eq!(costguard_budget_reserve(b, c, 8, &mut r, null_mut()), OK);
        assert_eq!(used(b, c), Ok(8));
        assert_eq!(costguard_reservation_settle(r, 5, null_mut()), OK);
        assert_eq!(used(b, c), Ok(5));
        assert_eq!(
            costguard_reservation_settle(r, 5, null_mut()),
            INVALID,
            "settle frees"
        );
        assert_eq!(costguard_budget_reserve(b, c, 2, &mut r, null_mut()), OK);
        assert_eq!(costguard_reservation_cancel(r), OK);
        assert_eq!(used(b, c), Ok(5));
        assert_eq!(costguard_budget_reserve(b, c, 2, &mut r, null_mut()), OK);
        assert_eq!(costguard_reservation_free(r), OK);
        assert_eq!(used(b, c), Ok(7), "free keeps the estimate charged");
        assert_eq!(costguard_budget_reserve(b, c, 1, &mut r, null_mut()), OK);
        assert_eq!(costguard_reservation_settle(r, 10, &mut v), REFUSED);
        assert_eq!(
            costguard_reservation_free(r),
            INVALID,
            "settle freed it even when refused"
        );

        let mut g1 = costguard_level_guard::default();
        let mut g2 = costguard_level_guard::default();
        assert_eq!(costguard_budget_enter(b, l, 2, &mut g1, null_mut()), OK);
        assert_eq!(costguard_budget_enter(b, l, 2, &mut g2, &mut v), REFUSED);
        assert_eq!(costguard_budget_enter(b, l, 1, &mut g2, null_mut()), OK);
        let mut lv = 0;
        assert_eq!(costguard_budget_level(b, l, &mut lv), OK);
        assert_eq!(lv, 3);
        assert_eq!(costguard_level_guard_free(g1), OK);
        assert_eq!(costguard_level_guard_free(g2), OK);
        assert_eq!(costguard_level_guard_free(g2), INVALID);
        assert_eq!(costguard_budget_level(b, l, &mut lv), OK);
        assert_eq!(lv, 0);

        // The refused settle above cancelled `b`; children need a live one.
        assert_eq!(costguard_budget_free(b), OK);
        let b = begin(e, k, "r");
        let mut rem = 0;
        assert_eq!(costguard_budget_remaining_ns(b, &mut rem), OK);
        assert_eq!(rem, 30_000_000_000);
        let mut child = costguard_budget::default();
        let api = class(e, "api");
        assert_eq!(costguard_budget_child(b, &api, &mut child, null_mut()), OK);
        assert_eq!(charge(child, c, 1), OK);
        assert_eq!(
            used(b, c),
            Ok(1),
            "a child's charge is charged to its parent"
        );
        assert_eq!(costguard_budget_free(child), OK);
        assert_eq!(
            costguard_budget_child(b, null(), &mut child, null_mut()),
            OK
        );
        let mut header_len = 0;
        let h = text(|buf, cap, len| costguard_budget_to_header(child, buf, cap, len)).unwrap();
        assert!(h.starts_with("cg1;id=r;"), "{h}");
        let _ = header_len;
        header_len = h.len();
        assert!(header_len > 0);
        // A budget begun from the header is no larger than what the child had left.
        let mut from_header = costguard_budget::default();
        assert_eq!(
            costguard_budget_begin(
                e,
                k,
                "x".as_ptr().cast(),
                1,
                h.as_ptr().cast(),
                h.len(),
                &mut from_header,
                null_mut()
            ),
            OK
        );
        assert_eq!(costguard_budget_remaining_of(from_header, c, &mut rem), OK);
        let mut child_rem = 0;
        assert_eq!(costguard_budget_remaining_of(child, c, &mut child_rem), OK);
        assert_eq!(rem, child_rem);
        let json = text(|buf, cap, len| {
            costguard_header_decode_json(h.as_ptr().cast(), h.len(), buf, cap, len)
        })
        .unwrap();
        assert!(json.contains("\"request_id\":\"r\""), "{json}");
        let bad = "cg2;x";
        let mut len = 0;
        assert_eq!(
            costguard_header_decode_json(bad.as_ptr().cast(), bad.len(), null_mut(), 0, &mut len),
            costguard_status::COSTGUARD_HEADER_ERROR
        );
        assert_eq!(
            costguard_budget_begin(
                e,
                k,
                "x".as_ptr().cast(),
                1,
                bad.as_ptr().cast(),
                bad.len(),
                &mut from_header,
                null_mut()
            ),
            costguard_status::COSTGUARD_HEADER_ERROR
        );
        assert_eq!(
            costguard_budget_begin(
                e,
                k,
                "".as_ptr().cast(),
                0,
                null(),
                0,
                &mut from_header,
                null_mut()
            ),
            costguard_status::COSTGUARD_INVALID_ARGUMENT,
            "empty request id"
        );

        assert_eq!(costguard_engine_advance_clock(e, 31_000_000_000), OK);
        let mut expired = false;
        assert_eq!(costguard_budget_expired(b, &mut expired), OK);
        assert!(expired);
        assert_eq!(costguard_budget_remaining_ns(b, &mut rem), OK);
        assert_eq!(rem, 0);
        assert_eq!(costguard_budget_check(b, &mut v), REFUSED);
        assert_eq!(v.reason, COSTGUARD_REASON_DEADLINE_EXCEEDED);
        assert_eq!(
            costguard_budget_child(b, null(), &mut child, &mut v),
            REFUSED
        );

        let fresh = begin(e, k, "fresh");
        assert_eq!(costguard_budget_check(fresh, null_mut()), OK);
        assert_eq!(costguard_budget_cancel(fresh), OK);
        let mut is = false;
        assert_eq!(costguard_budget_is_cancelled(fresh, &mut is), OK);
        assert!(is);
        assert_eq!(costguard_budget_check(fresh, &mut v), REFUSED);
        assert_eq!(v.reason, COSTGUARD_REASON_CANCELLED);
        for h in [b, child, from_header, fresh] {
            assert_eq!(costguard_budget_free(h), OK);
        }
    }
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn admission_grants_and_stats() {
    let e = engine();
    let (api, db) = (class(e, "api"), counter(e, "db_queries"));
    let a = admit(e, api, "1", "alice").unwrap();
    let (s, v) = admit(e, api, "2", "alice").unwrap_err();
    assert_eq!((s, v.reason), (REFUSED, COSTGUARD_REASON_KEY_CONCURRENCY));
    let b = admit(e, api, "3", "bob").unwrap();
    let (_, v) = admit(e, api, "4", "carol").unwrap_err();
    assert_eq!(v.reason, COSTGUARD_REASON_CONCURRENCY_LIMIT);
    let mut budget = costguard_budget::default();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(costguard_grant_budget(a, &mut budget), OK);
    }
    assert_eq!(charge(budget, db, 5), OK);
    assert_eq!(charge(budget, db, 1), REFUSED);
    assert_eq!(
        costguard_grant_finish(a, 9),
        costguard_status::COSTGUARD_INVALID_ARGUMENT
    );
    assert_eq!(costguard_grant_finish(a, COSTGUARD_OUTCOME_SUCCESS), OK);
    assert_eq!(
        used(budget, db),
        Ok(5),
        "the budget handle outlives the grant"
    );
    assert_eq!(costguard_grant_free(b), OK);
    assert!(admit(e, api, "5", "carol").is_ok());
    // Estimates that can never fit are refused up front.
    let est = [costguard_charge {
        counter: db,
        amount: 50,
    }];
    let req = costguard_admit_request {
        class_: api,
        request_id: "6".as_ptr().cast(),
        request_id_len: 1,
        key: null(),
        key_len: 0,
        priority: COSTGUARD_PRIORITY_CRITICAL,
        flags: COSTGUARD_ADMIT_WAIT,
        estimates: est.as_ptr(),
        estimates_len: 1,
        rate_cost: 0,
        header: null(),
        header_len: 0,
    };
    let mut g = costguard_grant::default();
    let mut v = blank_verdict();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(costguard_admit(e, &req, &mut g, &mut v), REFUSED);
        assert_eq!(v.reason, COSTGUARD_REASON_CANNOT_FIT);
        assert_eq!(
            costguard_admit(
                e,
                &costguard_admit_request { priority: 5, ..req },
                &mut g,
                &mut v
            ),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
        assert_eq!(
            costguard_admit(
                e,
                &costguard_admit_request { flags: 2, ..req },
                &mut g,
                &mut v
            ),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
    }
    // SAFETY: valid pointers.
    let json =
        text(|buf, cap, len| unsafe { costguard_engine_stats_json(e, buf, cap, len) }).unwrap();
    assert!(
        json.contains("\"class\":\"api\"") && json.contains("\"admitted\":3"),
        "{json}"
    );
    // SAFETY: valid pointers.
    let prom = text(|buf, cap, len| unsafe { costguard_engine_stats_prometheus(e, buf, cap, len) })
        .unwrap();
    assert!(prom.contains("costguard_"), "{prom}");
    assert_eq!(costguard_budget_free(budget), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

#[test]
fn attempts_and_retries() {
    let e = engine();
    let (db, k) = (backend(e, "db"), class(e, "parse"));
    let h2 = host(e, db, "db2:3306");
    let b = begin(e, k, "r");
    // SAFETY: valid pointers throughout.
    unsafe {
        let mut a = costguard_attempt::default();
        assert_eq!(costguard_attempt_begin(e, db, b, 0, &mut a, null_mut()), OK);
        let mut t = 0;
        assert_eq!(costguard_attempt_timeout_ns(a, &mut t), OK);
        assert_eq!(t, 500_000_000);
        let host = text(|buf, cap, len| costguard_attempt_host(a, buf, cap, len)).unwrap();
        assert!(host.starts_with("db"), "{host}");
        assert_eq!(costguard_attempt_connected(a), OK);
        assert_eq!(
            costguard_attempt_finish(a, 99, u64::MAX),
            costguard_status::COSTGUARD_INVALID_ARGUMENT
        );
        assert_eq!(
            costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SERVER_ERROR, u64::MAX),
            OK
        );
        assert_eq!(
            costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, u64::MAX),
            INVALID
        );
        assert_eq!(
            costguard_attempt_begin_on(e, h2, b, 1, &mut a, null_mut()),
            OK
        );
        let host = text(|buf, cap, len| costguard_attempt_host(a, buf, cap, len)).unwrap();
        assert_eq!(host, "db2:3306");
        assert_eq!(costguard_attempt_free(a), OK);

        // A reload that reorders the pool: the handle still names db2, for budgets begun after it.
        let reordered = POLICY.replace(
            r#"hosts = ["db1:3306", "db2:3306"]"#,
            r#"hosts = ["db2:3306", "db1:3306"]"#,
        );
        assert_ne!(reordered, POLICY);
        assert_eq!(
            costguard_engine_reload_from_str(
                e,
                reordered.as_ptr().cast(),
                reordered.len(),
                null_mut()
            ),
            OK
        );
        let later = begin(e, k, "later");
        assert_eq!(self::host(e, db, "db2:3306").bits, h2.bits);
        assert_eq!(
            costguard_attempt_begin_on(e, h2, later, 0, &mut a, null_mut()),
            OK
        );
        let chosen = text(|buf, cap, len| costguard_attempt_host(a, buf, cap, len)).unwrap();
        assert_eq!(chosen, "db2:3306", "not the host now first in the list");
        assert_eq!(costguard_attempt_free(a), OK);
        assert_eq!(costguard_budget_free(later), OK);

        let mut wait = 7;
        let mut v = blank_verdict();
        assert_eq!(
            costguard_retry(
                e,
                db,
                b,
                COSTGUARD_ATTEMPT_CLIENT_ERROR,
                u64::MAX,
                1,
                &mut wait,
                &mut v
            ),
            REFUSED
        );
        assert_eq!(v.reason, COSTGUARD_REASON_NOT_RETRYABLE);
        assert_eq!(wait, 7);
        let s = costguard_retry(
            e,
            db,
            b,
            COSTGUARD_ATTEMPT_REFUSED,
            2_000_000,
            1,
            &mut wait,
            &mut v,
        );
        assert!(s == OK || s == REFUSED);
        if s == OK {
            assert!(wait >= 2_000_000);
        }
        let mut o = 99;
        assert_eq!(costguard_attempt_outcome_from_http(503, &mut o), OK);
        assert_eq!(o, COSTGUARD_ATTEMPT_REFUSED);
        assert_eq!(costguard_attempt_outcome_from_http(404, &mut o), OK);
        assert_eq!(o, COSTGUARD_ATTEMPT_CLIENT_ERROR);
        assert_eq!(costguard_attempt_outcome_from_http(200, &mut o), OK);
        assert_eq!(o, COSTGUARD_ATTEMPT_SUCCESS);
    }
    assert_eq!(costguard_budget_free(b), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

/// A verdict names a host in full, however long its name (up to the 253 bytes a policy allows),
/// and `costguard_verdict_describe` gives the sentence Rust's `Display` gives for it.
#[test]
fn a_verdict_names_a_long_host_in_full() {
    let long = format!("{}.eqiad.wmnet:3306", "db-replica-0001".repeat(15));
    assert_eq!(long.len(), 242);
    let with = |hosts: &str| POLICY.replace(r#"hosts = ["db1:3306", "db2:3306"]"#, hosts);
    let before = with(&format!(r#"hosts = ["{long}", "db2:3306"]"#));
    let after = with(r#"hosts = ["db2:3306"]"#);
    assert_ne!(before, after);
    let e = engine_with(&before, COSTGUARD_ENGINE_MANUAL_CLOCK);
    let (db, k) = (backend(e, "db"), class(e, "parse"));
    let h = host(e, db, &long);
    // SAFETY: valid pointers throughout.
    unsafe {
        let reload =
            costguard_engine_reload_from_str(e, after.as_ptr().cast(), after.len(), null_mut());
        assert_eq!(reload, OK);
        let b = begin(e, k, "r1");
        let (mut a, mut v) = (costguard_attempt::default(), blank_verdict());
        assert_eq!(
            costguard_attempt_begin_on(e, h, b, 0, &mut a, &mut v),
            REFUSED
        );
        assert_eq!(v.reason, COSTGUARD_REASON_UNKNOWN_CLASS);
        assert_eq!(cstr(&v.dimension), long);
        let sentence = text(|buf, cap, len| costguard_verdict_describe(&v, buf, cap, len)).unwrap();
        assert!(
            sentence.starts_with(&format!("request r1: db/{long}: ")),
            "{sentence}"
        );
        assert_eq!(costguard_budget_free(b), OK);
        assert_eq!(costguard_engine_free(e), OK);
    }
}

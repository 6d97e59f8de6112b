//! An engine across `fork()`, as php-fpm does it: the child must not inherit permits held by the
//! parent's threads, and must not deadlock on a lock one of them held at fork time.
//!
//! The parent holds a grant (a concurrency permit) and a budget, keeps one thread reloading the policy
//! and reading stats in a loop, and another holding the engine's internal lock, then forks. The child
//! checks that the old budget and grant handles are invalid, that the engine admits up to its full
//! limit, that names resolved before the fork still work, and that reload and stats do not block. A
//! watchdog (`alarm`) kills a child that deadlocks; the parent checks the exit status.

mod common;

use common::*;
use costguard_ffi::*;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

const LIMIT: &str = r#"
[dimensions]
n = "counter"
[classes.api]
wall_time = "10s"
limits = { n = 5 }
[classes.api.admission]
concurrency = 2
"#;

/// Runs in the child; returns the exit code (0: all good).
fn child(
    e: costguard_engine,
    api: costguard_class,
    n: costguard_counter,
    old_budget: costguard_budget,
    old_grant: costguard_grant,
) -> i32 {
    if charge(old_budget, n, 1) != INVALID {
        return 10;
    }
    if costguard_grant_free(old_grant) != INVALID {
        return 11;
    }
    if costguard_budget_free(old_budget) != INVALID {
        return 12;
    }
    // The full limit, although a parent thread held one permit at fork time.
    let Ok(g1) = admit(e, api, "c1", "") else {
        return 13;
    };
    let Ok(g2) = admit(e, api, "c2", "") else {
        return 14;
    };
    match admit(e, api, "c3", "") {
        Err((s, v)) if s == REFUSED && v.reason == COSTGUARD_REASON_CONCURRENCY_LIMIT => {}
        _ => return 15,
    }
    // Names from before the fork still name the same things.
    let mut b = costguard_budget::default();
    // SAFETY: valid pointers.
    if unsafe { costguard_grant_budget(g1, &mut b) } != OK {
        return 16;
    }
    if charge(b, n, 5) != OK || charge(b, n, 1) != REFUSED {
        return 17;
    }
    // Reload and stats, whose lock a parent thread held at fork time.
    let mut gen = 0;
    // SAFETY: valid pointers.
    if unsafe { costguard_engine_reload_from_str(e, LIMIT.as_ptr().cast(), LIMIT.len(), &mut gen) }
        != OK
    {
        return 18;
    }
    let mut len = 0;
    // SAFETY: valid pointers.
    if unsafe { costguard_engine_stats_json(e, null_mut(), 0, &mut len) }
        != costguard_status::COSTGUARD_BUFFER_TOO_SMALL
    {
        return 19;
    }
    // New handles made in the child work and free normally.
    if costguard_budget_free(b) != OK
        || costguard_grant_finish(g1, 0) != OK
        || costguard_grant_free(g2) != OK
    {
        return 20;
    }
    // A grandchild forks from a child that already forked once.
    0
}

fn fork_and_check(f: impl FnOnce() -> i32) {
    // SAFETY: the child only runs `f` and `_exit`s; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: a watchdog for deadlocks: SIGALRM kills the child after 20 s.
        unsafe { libc::alarm(20) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: leaves the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally (signal {}: deadlock?)",
        libc::WTERMSIG(status)
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child check failed with code {}",
        libc::WEXITSTATUS(status)
    );
}

#[test]
fn a_forked_child_starts_fresh_and_never_waits_on_parent_locks() {
    let e = engine_with(LIMIT, 0);
    let (api, n) = (class(e, "api"), counter(e, "n"));
    let stop = Arc::new(AtomicBool::new(false));

    // A parent thread holds a permit (a grant) and a budget for the whole test.
    let grant = admit(e, api, "parent", "").unwrap();
    let mut budget = costguard_budget::default();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { costguard_grant_budget(grant, &mut budget) }, OK);

    // A parent thread reloads and reads stats in a loop (inside the engine's locks at random times).
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut len = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid pointers.
                unsafe {
                    costguard_engine_reload_from_str(
                        e,
                        LIMIT.as_ptr().cast(),
                        LIMIT.len(),
                        null_mut(),
                    );
                    costguard_engine_stats_json(e, null_mut(), 0, &mut len);
                }
                let b = begin(e, api, "churn");
                charge(b, n, 1);
                costguard_budget_free(b);
            }
        })
    };

    for round in 0..10 {
        // A parent thread holds the engine's internal lock at the instant of the fork.
        let (held, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let holder = {
            let (held, release) = (held.clone(), release.clone());
            std::thread::spawn(move || {
                assert!(costguard_ffi::testing::hold_engine_lock_for_test(
                    e, &held, &release
                ))
            })
        };
        held.wait();
        fork_and_check(|| child(e, api, n, budget, grant));
        release.wait();
        holder.join().unwrap();
        // And one fork while only the churn thread runs, possibly inside a reload.
        if round % 2 == 0 {
            fork_and_check(|| {
                let code = child(e, api, n, budget, grant);
                if code != 0 {
                    return code;
                }
                // A grandchild: fork again from the child.
                // SAFETY: as in `fork_and_check`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let ok = admit(e, api, "gc", "").is_ok() && charge(budget, n, 1) == INVALID;
                    // SAFETY: leave the grandchild.
                    unsafe { libc::_exit(if ok { 0 } else { 30 }) };
                }
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    31
                }
            });
        }
    }

    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    // The parent is unaffected: its budget and grant still work.
    assert_eq!(charge(budget, n, 1), OK);
    assert_eq!(costguard_budget_free(budget), OK);
    assert_eq!(costguard_grant_free(grant), OK);
    assert_eq!(costguard_engine_free(e), OK);
}

const V1: &str = r#"
[dimensions]
file_lookups = "counter"
old_thing = "counter"
[classes.parse]
wall_time = "30s"
limits = { file_lookups = 5, old_thing = 5 }
[backends.kafka]
hosts = ["kafka1:9092", "kafka2:9092"]
timeout = "500ms"
"#;

const V2: &str = r#"
[dimensions]
file_lookups = "counter"
[classes.parse]
wall_time = "30s"
limits = { file_lookups = 5 }
[backends.kafka]
hosts = ["kafka2:9092"]
timeout = "500ms"
"#;

fn reload(e: costguard_engine, policy: &str) -> costguard_status {
    let mut gen = 0;
    // SAFETY: a valid (pointer, length) string and a writable out-parameter.
    unsafe { costguard_engine_reload_from_str(e, policy.as_ptr().cast(), policy.len(), &mut gen) }
}

/// What a counter and a host a reload removed do, as (charge status, attempt status and reason).
fn removed_names(
    e: costguard_engine,
    parse: costguard_class,
    old_thing: costguard_counter,
    kafka1: costguard_host,
) -> (costguard_status, costguard_status, u32) {
    let b = begin(e, parse, "r");
    let charged = charge(b, old_thing, 1);
    let mut a = costguard_attempt::default();
    let mut v = blank_verdict();
    // SAFETY: valid handles and writable out-parameters.
    let s = unsafe { costguard_attempt_begin_on(e, kafka1, b, 0, &mut a, &mut v) };
    if s == OK {
        costguard_attempt_free(a);
    }
    costguard_budget_free(b);
    (charged, s, v.reason)
}

/// Names resolved before a reload took them out of the policy mean in a fork child what they mean
/// in the parent: the child's engine has the parent's names, with the same ids.
#[test]
fn names_a_reload_removed_before_the_fork_behave_in_the_child_as_in_the_parent() {
    let e = engine_with(V1, COSTGUARD_ENGINE_MANUAL_CLOCK);
    let parse = class(e, "parse");
    let old_thing = counter(e, "old_thing");
    let file_lookups = counter(e, "file_lookups");
    let kafka1 = host(e, backend(e, "kafka"), "kafka1:9092");
    assert_eq!(reload(e, V2), OK);
    let in_parent = removed_names(e, parse, old_thing, kafka1);
    assert_eq!(
        in_parent,
        (OK, REFUSED, COSTGUARD_REASON_UNKNOWN_CLASS),
        "{}",
        last_error()
    );
    fork_and_check(|| {
        if removed_names(e, parse, old_thing, kafka1) != in_parent {
            return 30;
        }
        // The names the policy still has keep their limits.
        let b = begin(e, parse, "r");
        if charge(b, file_lookups, 5) != OK || charge(b, file_lookups, 1) != REFUSED {
            return 31;
        }
        costguard_budget_free(b);
        // A reload that brings the counter back gives it its limit again, under the same value.
        if reload(e, V1) != OK || counter(e, "old_thing").bits != old_thing.bits {
            return 32;
        }
        let b = begin(e, parse, "r");
        if charge(b, old_thing, 5) != OK || charge(b, old_thing, 1) != REFUSED {
            return 33;
        }
        costguard_budget_free(b);
        0
    });
    costguard_engine_free(e);
}

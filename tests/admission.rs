//! Admission control, deterministic on the manual clock.

// Threads here return `Result<_, Verdict>`; a verdict carries its request id inline.
#![allow(clippy::result_large_err)]

mod support;

use costguard::clock::ManualClock;
use costguard::{
    AdmitRequest, Admitted, Class, Counter, Engine, Outcome, Overrides, Policy, Priority, Reason,
    RequestId, Retry,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn id(n: u64) -> RequestId {
    RequestId::from_u64(n)
}

use support::executor;
use support::manual_engine as engine;
use support::{codel_policy, standing_with_old_waiters};

fn simple(limit: u64) -> (Engine, ManualClock, Class) {
    let policy = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(limit)))
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    (e, clock, api)
}

#[test]
fn a_full_class_refuses_and_a_release_lets_the_next_in() {
    let (e, _clock, api) = simple(2);
    let a = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let _b = e.try_admit(&AdmitRequest::new(api, id(2))).unwrap();
    let v = e.try_admit(&AdmitRequest::new(api, id(3))).unwrap_err();
    assert_eq!(v.reason(), Reason::ConcurrencyLimit);
    assert_eq!((v.used(), v.limit()), (2, 2));
    assert_eq!(v.class(), Some("api"));
    assert_eq!(v.request_id(), Some(&id(3)));
    assert_eq!(
        v.retry(),
        Retry::Later,
        "no latency seen yet: no time promised"
    );
    drop(a);
    let c = e.try_admit(&AdmitRequest::new(api, id(4))).unwrap();
    assert_eq!(c.budget().request_id(), id(4));
    let stats = e.admission_stats();
    let api_stats = stats.class("api").unwrap();
    assert_eq!((api_stats.in_flight, api_stats.limit), (2, 2));
    assert_eq!(api_stats.counts.admitted, 3);
    assert_eq!(api_stats.counts.refused(Reason::ConcurrencyLimit), 1);
}

#[test]
fn lower_priorities_see_less_of_the_limit() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(10)
                    .headroom(Priority::Normal, 0.9)
                    .headroom(Priority::Sheddable, 0.75)
                    .headroom(Priority::Background, 0.5)
            })
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let at = |p: Priority, n: u64| AdmitRequest::new(api, id(n)).priority(p);
    let mut held: Vec<Admitted> = Vec::new();
    for n in 0..5 {
        held.push(e.try_admit(&at(Priority::Background, n)).unwrap());
    }
    let v = e.try_admit(&at(Priority::Background, 5)).unwrap_err();
    assert_eq!(v.reason(), Reason::Shed);
    assert_eq!((v.used(), v.limit()), (5, 5));
    // Sheddable sees 75% (7), normal 90% (9), critical everything.
    held.push(e.try_admit(&at(Priority::Sheddable, 6)).unwrap());
    held.push(e.try_admit(&at(Priority::Sheddable, 7)).unwrap());
    assert_eq!(
        e.try_admit(&at(Priority::Sheddable, 8))
            .unwrap_err()
            .reason(),
        Reason::Shed
    );
    held.push(e.try_admit(&at(Priority::Normal, 9)).unwrap());
    held.push(e.try_admit(&at(Priority::Normal, 10)).unwrap());
    assert_eq!(
        e.try_admit(&at(Priority::Normal, 11)).unwrap_err().reason(),
        Reason::Shed
    );
    held.push(e.try_admit(&at(Priority::Critical, 12)).unwrap());
    let v = e.try_admit(&at(Priority::Critical, 13)).unwrap_err();
    assert_eq!(v.reason(), Reason::ConcurrencyLimit);
    let counts = e.admission_stats().class("api").unwrap().counts.clone();
    assert_eq!(counts.shed_by_priority, [0, 1, 1, 1]);
    assert_eq!(held[0].budget().priority(), Priority::Background);
}

/// An engine whose class `parse` allows 500 file lookups and 4 requests at once.
fn parse_with_500_lookups() -> (Engine, Class, Counter) {
    let policy = Policy::builder()
        .counter("file_lookups")
        .class("parse", |c| {
            c.limit("file_lookups", 500).admission(|a| a.concurrency(4))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let parse = e.class("parse").unwrap();
    let lookups = e.counter("file_lookups").unwrap();
    (e, parse, lookups)
}

#[test]
fn estimates_that_can_never_fit_are_refused_before_any_work() {
    let (e, parse, lookups) = parse_with_500_lookups();
    let v = e
        .try_admit(&AdmitRequest::new(parse, id(1)).estimate(lookups, 10_000))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!(v.retry(), Retry::Never);
    assert_eq!(v.dimension(), Some("file_lookups"));
    assert_eq!(e.admission_stats().class("parse").unwrap().in_flight, 0);
    assert!(e
        .try_admit(&AdmitRequest::new(parse, id(2)).estimate(lookups, 500))
        .is_ok());
}

/// A caller's header (or any override) that tightens a limit below the estimate makes the estimate
/// one that can never fit: refused at the door, as for the class's own limit, not once admitted.
#[test]
fn estimates_are_judged_against_the_tightened_limits() {
    let (e, parse, lookups) = parse_with_500_lookups();
    let tight = Overrides::new().limit(lookups, 100);
    let v = e
        .try_admit(
            &AdmitRequest::new(parse, id(1))
                .estimate(lookups, 200)
                .overrides(&tight),
        )
        .unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit);
    assert_eq!((v.requested(), v.limit()), (200, 100));
    assert_eq!(e.admission_stats().class("parse").unwrap().in_flight, 0);
    let admitted = e
        .try_admit(
            &AdmitRequest::new(parse, id(2))
                .estimate(lookups, 100)
                .overrides(&tight),
        )
        .unwrap();
    assert_eq!(admitted.budget().limit(lookups), Some(100));
}

#[test]
fn pools_bound_cost_in_flight_across_classes() {
    let policy = Policy::builder()
        .counter("db_queries")
        .pool("db", "db_queries", 100)
        .class("api", |c| c.admission(|a| a.concurrency(50).pool("db")))
        .class("parse", |c| c.admission(|a| a.concurrency(50).pool("db")))
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let (api, parse) = (e.class("api").unwrap(), e.class("parse").unwrap());
    let db = e.counter("db_queries").unwrap();
    let a = e
        .try_admit(&AdmitRequest::new(api, id(1)).estimate(db, 60))
        .unwrap();
    let v = e
        .try_admit(&AdmitRequest::new(parse, id(2)).estimate(db, 50))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::PoolExhausted);
    assert_eq!((v.requested(), v.used(), v.limit()), (50, 60, 100));
    assert_eq!(v.dimension(), Some("db"));
    let v = e
        .try_admit(&AdmitRequest::new(parse, id(3)).estimate(db, 101))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::CannotFit, "larger than the pool itself");
    // A refusal gave its concurrency permit back.
    assert_eq!(e.admission_stats().class("parse").unwrap().in_flight, 0);
    let _b = e
        .try_admit(&AdmitRequest::new(parse, id(4)).estimate(db, 40))
        .unwrap();
    drop(a);
    let stats = e.admission_stats();
    assert_eq!((stats.pools[0].in_use, stats.pools[0].limit), (40, 100));
}

fn per_key_policy() -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(100)
                    .per_key_concurrency(2)
                    .per_key_rate(10, Duration::from_secs(1), 3)
                    .max_keys(64)
            })
        })
        .build()
        .unwrap()
}

/// A request of rate cost 0 passes a key's rate limit whatever the key has left: here after a
/// reload lowered the burst below what the key had already spent.
#[test]
fn a_free_request_passes_a_key_spent_past_a_lowered_burst() {
    let policy = |burst: u64| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(100)
                        .per_key_rate(10, Duration::from_secs(1), burst)
                        .max_keys(64)
                })
            })
            .build()
            .unwrap()
    };
    let (e, _clock) = engine(policy(10));
    let api = e.class("api").unwrap();
    let req = |n: u64, cost: u64| AdmitRequest::new(api, id(n)).key(b"k").rate_cost(cost);
    drop(e.try_admit(&req(1, 10)).unwrap());
    e.reload(policy(1)).unwrap();
    let before = e.try_admit(&req(2, 1)).unwrap_err();
    assert_eq!(before.reason(), Reason::RateLimited);
    drop(e.try_admit(&req(3, 0)).unwrap());
    // It spent nothing: the next paying request waits exactly as long as before it.
    assert_eq!(e.try_admit(&req(4, 1)).unwrap_err().retry(), before.retry());
}

#[test]
fn one_key_cannot_take_more_than_its_share() {
    let (e, clock) = engine(per_key_policy());
    let api = e.class("api").unwrap();
    let req = |n: u64, key: &'static [u8]| AdmitRequest::new(api, id(n)).key(key);
    let a1 = e.try_admit(&req(1, b"alice")).unwrap();
    let a2 = e.try_admit(&req(2, b"alice")).unwrap();
    let v = e.try_admit(&req(3, b"alice")).unwrap_err();
    assert_eq!(v.reason(), Reason::KeyConcurrency);
    assert_eq!(v.retry(), Retry::Later);
    // The same key, given as text: the same entry.
    let name = String::from("alice");
    for v in [
        e.try_admit(&AdmitRequest::new(api, id(31)).key("alice")),
        e.try_admit(&AdmitRequest::new(api, id(32)).key(&name)),
    ] {
        assert_eq!(v.unwrap_err().reason(), Reason::KeyConcurrency);
    }
    let _b = e.try_admit(&req(4, b"bob")).unwrap();
    drop((a1, a2));
    // Three units of burst spent: the next waits exactly one emission interval (100 ms).
    let _a3 = e.try_admit(&req(5, b"alice")).unwrap();
    let v = e.try_admit(&req(6, b"alice")).unwrap_err();
    assert_eq!(v.reason(), Reason::RateLimited);
    assert_eq!(v.retry(), Retry::After(Duration::from_millis(100)));
    assert_eq!(v.retry_after(), Some(Duration::from_millis(100)));
    clock.advance(Duration::from_millis(100));
    let _a4 = e.try_admit(&req(7, b"alice")).unwrap();
    // A cost larger than the burst can never conform.
    let v = e
        .try_admit(&AdmitRequest::new(api, id(8)).key(b"carol").rate_cost(4))
        .unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::CannotFit, Retry::Never));
    // A refused key gives its concurrency permit back.
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 3);
}

/// A rate that does not divide the second into whole nanoseconds (3 a second is 333,333,333.3 ns
/// each) still lets a key's whole burst in at once, and the next request waits a whole interval.
#[test]
fn a_burst_is_let_in_whole_at_a_rate_of_fractional_nanoseconds() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(100)
                    .per_key_rate(3, Duration::from_secs(1), 3)
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let req = |n: u64| AdmitRequest::new(api, id(n)).key(b"user");
    let held: Vec<_> = (0..3).map(|n| e.try_admit(&req(n)).unwrap()).collect();
    let v = e.try_admit(&req(3)).unwrap_err();
    assert_eq!(v.reason(), Reason::RateLimited);
    let wait = v.retry_after().unwrap();
    assert!(
        (Duration::from_nanos(333_333_333)..=Duration::from_nanos(333_333_336)).contains(&wait),
        "{wait:?}"
    );
    clock.advance(wait);
    let _next = e.try_admit(&req(4)).unwrap();
    drop(held);
}

#[test]
fn hostile_keys_are_bounded() {
    let (e, _clock) = engine(per_key_policy());
    let api = e.class("api").unwrap();
    let long = vec![b'x'; 257];
    let v = e
        .try_admit(&AdmitRequest::new(api, id(1)).key(&long))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::KeyTooLong);
    assert!(e
        .try_admit(&AdmitRequest::new(api, id(1)).key(&long[..256]))
        .is_ok());
    // Far more keys than the table holds, each holding a request: the table stays full, extra keys
    // share the overflow entry, and together they get one key's share (2 in flight). On a fresh
    // engine, so that every entry is a held key's.
    let (e, _clock) = engine(per_key_policy());
    let api = e.class("api").unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 0..1_000u64 {
        let key = n.to_le_bytes();
        match e.try_admit(&AdmitRequest::new(api, id(n)).key(&key)) {
            Ok(a) => held.push(a),
            Err(v) => {
                assert!(matches!(
                    v.reason(),
                    Reason::KeyConcurrency | Reason::ConcurrencyLimit
                ));
                refused += 1;
            }
        }
    }
    let keys = e.admission_stats().class("api").unwrap().keys.unwrap();
    assert_eq!(
        keys,
        (64, 64),
        "a full table, never more than its 64 entries"
    );
    // One request for each key with an entry, and one key's share for all the others together.
    assert_eq!(held.len(), 64 + 2);
    assert_eq!(refused, 1_000 - held.len());
    let memory = e.key_table_memory(api).unwrap();
    assert!(memory < 64 * 16 + 256, "{memory} bytes");
}

#[test]
fn shadow_mode_records_but_admits() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).shadow(true).per_key_concurrency(1))
        })
        .build()
        .unwrap();
    let log = Arc::clone(&seen);
    let e = Engine::builder(policy)
        .clock(ManualClock::new())
        .on_refusal(move |event| {
            log.lock().unwrap().push((
                event.verdict.reason(),
                event.verdict.request_id().copied(),
                event.shadow,
            ));
        })
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    let _a = e
        .try_admit(&AdmitRequest::new(api, id(1)).key(b"k"))
        .unwrap();
    let _b = e
        .try_admit(&AdmitRequest::new(api, id(2)).key(b"k"))
        .unwrap();
    let stats = e.admission_stats();
    let s = stats.class("api").unwrap();
    assert_eq!(s.in_flight, 2, "shadow mode admits over the limit");
    assert!(s.shadow);
    assert_eq!(s.counts.shadow_refused(Reason::ConcurrencyLimit), 1);
    assert_eq!(s.counts.shadow_refused(Reason::KeyConcurrency), 1);
    assert_eq!(s.counts.refused(Reason::ConcurrencyLimit), 0);
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![
            (Reason::ConcurrencyLimit, Some(id(2)), true),
            (Reason::KeyConcurrency, Some(id(2)), true)
        ]
    );
}

/// Shadow mode counts what enforcement would refuse, no more: a request over its key's cap is
/// recorded, and, like the refusal it stands for, spends nothing of the key's rate, so the next
/// request is judged as enforcement would judge it.
#[test]
fn shadow_mode_counts_what_enforcement_would_refuse_of_a_key() {
    let policy = |shadow: bool| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(10)
                        .per_key_concurrency(1)
                        .per_key_rate(2, Duration::from_secs(1), 2)
                        .shadow(shadow)
                })
            })
            .build()
            .unwrap()
    };
    let run = |shadow: bool| {
        let (e, _clock) = engine(policy(shadow));
        let api = e.class("api").unwrap();
        let a = e.try_admit(&AdmitRequest::new(api, id(1)).key(b"k"));
        let b = e.try_admit(&AdmitRequest::new(api, id(2)).key(b"k"));
        drop((a, b));
        drop(e.try_admit(&AdmitRequest::new(api, id(3)).key(b"k")));
        let s = e.admission_stats().class("api").unwrap().clone();
        let counts = if shadow {
            &s.counts.shadow_refused
        } else {
            &s.counts.refused
        };
        counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|&(r, n)| (r, n))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(false), vec![(Reason::KeyConcurrency, 1)]);
    assert_eq!(run(true), run(false));
}

/// A key's entry counts at most 65,535 requests in flight. Shadow mode admits past that too (as
/// would-be refusals), and the requests admitted past it release nothing of the entry's when they
/// end: the count comes back to zero.
#[test]
fn shadow_mode_admits_past_what_a_key_entry_can_count() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).per_key_concurrency(1).shadow(true))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let admit = |n: u64| e.try_admit(&AdmitRequest::new(api, id(n)).key(b"user:1"));
    let held: Vec<_> = (0..65_537)
        .map(|n| admit(n).unwrap_or_else(|v| panic!("request {n} refused: {v}")))
        .collect();
    let counts = |e: &Engine| e.admission_stats().class("api").unwrap().counts.clone();
    let c = counts(&e);
    assert_eq!(c.refused(Reason::KeyConcurrency), 0);
    assert_eq!(c.shadow_refused(Reason::KeyConcurrency), 65_536);
    drop(held);
    // The entry's count is back to zero: with shadow mode off, the key's one permit is free.
    let strict = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(2).per_key_concurrency(1))
        })
        .build()
        .unwrap();
    e.reload(strict).unwrap();
    let one = admit(70_000).unwrap();
    assert_eq!(admit(70_001).unwrap_err().reason(), Reason::KeyConcurrency);
    drop(one);
}

/// Requests of keys past `max_keys` share the overflow entry; each gives its pin back when it
/// ends, so the entry admits again.
#[test]
fn the_overflow_entry_is_given_back_like_any_other() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(100).per_key_concurrency(1).max_keys(1))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let admit = |n: u64, key: &'static [u8]| e.try_admit(&AdmitRequest::new(api, id(n)).key(key));
    let _a = admit(1, b"a").unwrap(); // the table's only slot
    for n in 2..10 {
        drop(admit(n, b"b").unwrap()); // on the overflow entry, one at a time
    }
    let held = admit(10, b"b").unwrap();
    assert_eq!(
        admit(11, b"c").unwrap_err().reason(),
        Reason::KeyConcurrency
    );
    drop(held);
}

#[test]
fn shadow_mode_still_enforces_the_budget() {
    let policy = Policy::builder()
        .counter("file_lookups")
        .class("parse", |c| {
            c.limit("file_lookups", 500)
                .admission(|a| a.concurrency(1).shadow(true).per_key_concurrency(1))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let parse = e.class("parse").unwrap();
    let lookups = e.counter("file_lookups").unwrap();
    // Over the admission settings: recorded, admitted.
    let _a = e.try_admit(&AdmitRequest::new(parse, id(1))).unwrap();
    let _b = e
        .try_admit(&AdmitRequest::new(parse, id(2)).estimate(lookups, 500))
        .unwrap();
    // Over the class's own budget: refused, shadow or not, since the request could only fail later.
    let v = e
        .try_admit(&AdmitRequest::new(parse, id(3)).estimate(lookups, 501))
        .unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::CannotFit, Retry::Never));
    let long = [b'k'; 257];
    let v = e
        .try_admit(&AdmitRequest::new(parse, id(4)).key(&long))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::KeyTooLong);
    let stats = e.admission_stats();
    let s = stats.class("parse").unwrap();
    assert_eq!(s.in_flight, 2);
    assert_eq!(s.counts.shadow_refused(Reason::ConcurrencyLimit), 1);
    assert_eq!(s.counts.refused(Reason::CannotFit), 1);
    assert_eq!(s.counts.refused(Reason::KeyTooLong), 1);
    assert_eq!(s.counts.shadow_refused(Reason::CannotFit), 0);
}

#[test]
fn the_hook_sees_every_enforced_refusal() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let policy = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(1)))
        .build()
        .unwrap();
    let e = Engine::builder(policy)
        .clock(ManualClock::new())
        .on_refusal(move |event| {
            assert!(!event.shadow);
            assert!(event.verdict.request_id().is_some());
            c.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    let _a = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    for n in 2..7 {
        e.try_admit(&AdmitRequest::new(api, id(n))).unwrap_err();
    }
    assert_eq!(count.load(Ordering::Relaxed), 5);
}

/// The hook and the verdict carry the request id a request's overrides give it, as its budget
/// does; and a request whose class a reload removed is refused in the hook's sight too.
#[test]
fn the_hook_sees_overridden_ids_and_refusals_for_removed_classes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let policy = |api: bool| {
        let p = Policy::builder().class("web", |c| c);
        let p = if api {
            p.class("api", |c| c.admission(|a| a.concurrency(1)))
        } else {
            p
        };
        p.build().unwrap()
    };
    let e = Engine::builder(policy(true))
        .clock(ManualClock::new())
        .on_refusal(move |event| {
            let v = event.verdict;
            log.lock()
                .unwrap()
                .push((v.reason(), v.request_id().copied()))
        })
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    let as_99 = Overrides::new().request_id(id(99));
    let held = e
        .try_admit(&AdmitRequest::new(api, id(1)).overrides(&as_99))
        .unwrap();
    assert_eq!(held.budget().request_id(), id(99));
    let as_100 = Overrides::new().request_id(id(100));
    let v = e
        .try_admit(&AdmitRequest::new(api, id(2)).overrides(&as_100))
        .unwrap_err();
    assert_eq!(v.request_id(), Some(&id(100)));
    drop(held);
    e.reload(policy(false)).unwrap();
    let v = e.try_admit(&AdmitRequest::new(api, id(3))).unwrap_err();
    assert_eq!(v.reason(), Reason::UnknownClass);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Reason::ConcurrencyLimit, Some(id(100))),
            (Reason::UnknownClass, Some(id(3)))
        ]
    );
}

/// A class without admission settings still refuses at the door (an estimate that cannot fit, a
/// key too long to be one, a caller with no time left), and the hook sees those refusals too.
#[test]
fn the_hook_sees_refusals_of_classes_without_admission_settings() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let policy = Policy::builder()
        .counter("rows")
        .class("batch", |c| c.limit("rows", 10))
        .build()
        .unwrap();
    let e = Engine::builder(policy)
        .clock(ManualClock::new())
        .on_refusal(move |event| {
            log.lock()
                .unwrap()
                .push((event.verdict.reason(), event.verdict.request_id().copied()));
        })
        .build()
        .unwrap();
    let batch = e.class("batch").unwrap();
    let rows = e.counter("rows").unwrap();
    let long_key = [b'k'; 4096];
    let no_time = costguard::Overrides::new().wall_time(Duration::ZERO);
    let refusals: Vec<Reason> = [
        AdmitRequest::new(batch, id(1)).estimate(rows, 11),
        AdmitRequest::new(batch, id(2)).key(&long_key),
        AdmitRequest::new(batch, id(3)).overrides(&no_time),
    ]
    .iter()
    .map(|r| e.try_admit(r).unwrap_err().reason())
    .collect();
    assert_eq!(
        refusals,
        [
            Reason::CannotFit,
            Reason::KeyTooLong,
            Reason::InsufficientTime
        ]
    );
    let expected: Vec<_> = refusals
        .iter()
        .zip(1..)
        .map(|(r, n)| (*r, Some(id(n))))
        .collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[test]
fn retry_after_follows_observed_latency() {
    let (e, clock, api) = simple(4);
    // Requests take 200 ms each.
    for n in 0..4 {
        let a = e.try_admit(&AdmitRequest::new(api, id(n))).unwrap();
        clock.advance(Duration::from_millis(200));
        a.finish(Outcome::Success);
    }
    let held: Vec<_> = (0..4)
        .map(|n| e.try_admit(&AdmitRequest::new(api, id(10 + n))).unwrap())
        .collect();
    let v = e.try_admit(&AdmitRequest::new(api, id(20))).unwrap_err();
    // One mean latency shared among four in flight: a permit frees every 50 ms on average.
    assert_eq!(v.retry(), Retry::After(Duration::from_millis(50)));
    drop(held);
}

#[test]
fn a_reload_changes_the_limit_without_a_burst() {
    let (e, _clock, api) = simple(4);
    let held: Vec<_> = (0..4)
        .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
        .collect();
    e.reload(
        Policy::builder()
            .class("api", |c| c.admission(|a| a.concurrency(2)))
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut held = held.into_iter();
    drop(held.next());
    assert_eq!(
        e.try_admit(&AdmitRequest::new(api, id(9)))
            .unwrap_err()
            .reason(),
        Reason::ConcurrencyLimit,
        "3 in flight, limit 2: still full"
    );
    drop(held.next());
    drop(held.next());
    let _a = e.try_admit(&AdmitRequest::new(api, id(10))).unwrap();
    let s = e.admission_stats();
    assert_eq!(
        (
            s.class("api").unwrap().in_flight,
            s.class("api").unwrap().limit
        ),
        (2, 2)
    );
    drop(held);
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 1);
}

#[test]
fn an_adaptive_limit_follows_latency_on_the_manual_clock() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.aimd(4, 1, 8, 0.5, Duration::from_millis(100))
                    .window(Duration::from_secs(1))
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    assert_eq!(limit(&e), 4);
    // A window of slow requests (300 ms): the limit halves.
    let run = |latency_ms: u64, outcome: Outcome| {
        let held: Vec<_> = (0..limit(&e) as u64)
            .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
            .collect();
        clock.advance(Duration::from_millis(latency_ms));
        for a in held {
            a.finish(outcome);
        }
    };
    // Each window is judged when the first sample after it arrives: here, by the second run.
    run(300, Outcome::Success);
    clock.advance(Duration::from_secs(1));
    run(300, Outcome::Success);
    assert_eq!(limit(&e), 2);
    // Client errors and cancellations are not samples: nothing changes.
    clock.advance(Duration::from_secs(1));
    run(900, Outcome::ClientError);
    clock.advance(Duration::from_secs(1));
    run(900, Outcome::Cancelled);
    assert_eq!(limit(&e), 2);
    // The second slow window would halve it once more, but not below 2: at 1, background work's
    // half of the limit would be no permit at all. Then fast windows in use add 1 each, up to max.
    clock.advance(Duration::from_secs(1));
    run(10, Outcome::Success);
    assert_eq!(limit(&e), 2);
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        run(10, Outcome::Success);
    }
    assert_eq!(limit(&e), 8);
    // Overload failures back it off even when fast.
    clock.advance(Duration::from_secs(1));
    run(10, Outcome::Overload);
    clock.advance(Duration::from_secs(1));
    run(10, Outcome::Success);
    assert_eq!(limit(&e), 4);
}

/// A class whose traffic is all background work may fill only half its limit, rounded down: at
/// an odd limit that is under half in flight. Requests turned away by the limit show it in use
/// all the same, so the limit recovers after a backoff.
#[test]
fn an_adaptive_limit_of_background_work_recovers_after_a_backoff() {
    let policy = Policy::builder()
        .class("batch", |c| {
            c.priority(Priority::Background).admission(|a| {
                a.aimd(8, 1, 16, 0.5, Duration::from_millis(100))
                    .window(Duration::from_secs(1))
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let batch = e.class("batch").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("batch").unwrap().limit;
    let mut n = 0;
    // One window: as many requests as the class lets in and more, 10 ms of work each.
    let mut run = |outcome: Outcome| {
        clock.advance(Duration::from_millis(990));
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..32 {
            n += 1;
            match e.try_admit(&AdmitRequest::new(batch, id(n))) {
                Ok(a) => held.push(a),
                Err(_) => refused += 1,
            }
        }
        assert!(refused > 0 && !held.is_empty());
        clock.advance(Duration::from_millis(10));
        for a in held {
            a.finish(outcome);
        }
    };
    run(Outcome::Success);
    run(Outcome::Overload);
    run(Outcome::Success); // closes the overloaded window: 8 -> 4
    assert_eq!(limit(&e), 4);
    for _ in 0..12 {
        run(Outcome::Success);
    }
    assert_eq!(limit(&e), 16, "one step a window, up to max");
}

/// Refusals of a priority that no limit up to `max` would let in (a share of nothing, told
/// `Retry::Never`) say nothing about demand on the limit: an idle limit does not grow on them.
#[test]
fn refusals_no_limit_could_admit_do_not_grow_an_idle_adaptive_limit() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.aimd(8, 1, 16, 0.5, Duration::from_millis(100))
                    .window(Duration::from_secs(1))
                    .headroom(Priority::Background, 0.0)
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    for n in 0..12 {
        clock.advance(Duration::from_millis(990));
        let a = e.try_admit(&AdmitRequest::new(api, id(2 * n))).unwrap();
        let background = AdmitRequest::new(api, id(2 * n + 1)).priority(Priority::Background);
        assert_eq!(e.try_admit(&background).unwrap_err().retry(), Retry::Never);
        clock.advance(Duration::from_millis(10));
        a.finish(Outcome::Success);
    }
    assert_eq!(limit(&e), 8, "1 of 8 in flight: not in use");
}

#[test]
fn a_gradient_limit_survives_requests_that_take_no_time() {
    // On a clock that does not move between admission and finish, every latency sample is 0 ns.
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.gradient2(10, 5, 20).window(Duration::from_secs(1)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    for n in 0..5 {
        e.try_admit(&AdmitRequest::new(api, id(n)))
            .unwrap()
            .finish(Outcome::Success);
        clock.advance(Duration::from_secs(2));
        assert!((5..=20).contains(&limit(&e)), "window {n}: {}", limit(&e));
    }
    // Still admitting, and a reload keeps the limit within the new bounds.
    let _held = e.try_admit(&AdmitRequest::new(api, id(9))).unwrap();
    e.reload(
        Policy::builder()
            .class("api", |c| c.admission(|a| a.gradient2(10, 6, 20)))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!((6..=20).contains(&limit(&e)), "{}", limit(&e));
}

/// An adaptive limit's window and tuning apply in whatever order the builder is called, and are
/// an error, not silently dropped, on a limit that is not adaptive.
#[test]
fn adaptive_settings_are_never_dropped_by_the_builder() {
    use costguard::policy::{Algorithm, Concurrency};
    let build =
        |f: fn(costguard::policy::AdmissionBuilder) -> costguard::policy::AdmissionBuilder| {
            Policy::builder().class("api", |c| c.admission(f)).build()
        };
    let policy = build(|a| {
        a.window(Duration::from_secs(5))
            .gradient_tuning(2.0, 0.5)
            .gradient2(4, 1, 8)
    })
    .unwrap();
    let Concurrency::Adaptive(limit) = policy
        .class("api")
        .unwrap()
        .admission()
        .unwrap()
        .concurrency()
    else {
        panic!("not adaptive");
    };
    assert_eq!(
        limit.algorithm,
        Algorithm::Gradient2 {
            tolerance: 2000,
            smoothing: 500
        }
    );
    assert_eq!(
        (limit.initial, limit.min, limit.max, limit.window),
        (4, 1, 8, Duration::from_secs(5))
    );
    let after = build(|a| {
        a.gradient2(4, 1, 8)
            .gradient_tuning(2.0, 0.5)
            .window(Duration::from_secs(5))
    })
    .unwrap();
    assert_eq!(
        after
            .class("api")
            .unwrap()
            .admission()
            .unwrap()
            .concurrency(),
        policy
            .class("api")
            .unwrap()
            .admission()
            .unwrap()
            .concurrency(),
        "the same settings, in the other order"
    );
    for (err, setting) in [
        (
            build(|a| a.concurrency(4).window(Duration::from_secs(5))),
            "window",
        ),
        (
            build(|a| a.gradient_tuning(2.0, 0.5).concurrency(4)),
            "tolerance",
        ),
    ] {
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains(&format!("classes.api.admission.concurrency.{setting}"))
                && err.contains("only to an adaptive limit"),
            "{err}"
        );
    }
}

#[test]
fn a_panicking_refusal_hook_strands_nothing() {
    // In shadow mode the hook sees a refusal while the admission holds its permit and key.
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(10).per_key_concurrency(1).shadow(true))
        })
        .build()
        .unwrap();
    let engine = Engine::builder(policy)
        .clock(ManualClock::new())
        .on_refusal(|e| {
            if e.shadow {
                panic!("a bug in the hook");
            }
        })
        .build()
        .unwrap();
    let api = engine.class("api").unwrap();
    let request = |n| AdmitRequest::new(api, id(n)).key(b"k");
    let first = engine.try_admit(&request(1)).unwrap();
    let second = engine
        .try_admit(&request(2))
        .expect("shadow mode admits, whatever the hook does");
    let s = engine.admission_stats();
    assert_eq!(s.class("api").unwrap().in_flight, 2);
    drop((first, second));
    let s = engine.admission_stats();
    assert_eq!(
        s.class("api").unwrap().in_flight,
        0,
        "every permit came back"
    );
    // The key is free again: a fresh admission for it is not even a shadow refusal.
    let shadowed = |e: &Engine| {
        let s = e.admission_stats();
        s.class("api")
            .unwrap()
            .counts
            .shadow_refused(Reason::KeyConcurrency)
    };
    let before = shadowed(&engine);
    assert_eq!(before, 1);
    drop(engine.try_admit(&request(3)).unwrap());
    assert_eq!(shadowed(&engine), before);
}

#[test]
fn a_window_closed_by_an_older_request_keeps_the_new_bounds() {
    let aimd = |max: u64| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.aimd(max.min(10), 1, max, 0.5, Duration::from_millis(100))
                        .window(Duration::from_secs(1))
                })
            })
            .build()
            .unwrap()
    };
    let (e, clock) = engine(aimd(20));
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    let held: Vec<_> = (0..5)
        .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
        .collect();
    e.reload(aimd(4)).unwrap();
    assert_eq!(limit(&e), 4, "clamped to the new bounds");
    // One fast sample in the window; the next request to finish after it closes the window:
    // fast and busy, the limit grows, but only within the bounds of the policy now in force.
    let mut held = held.into_iter();
    held.next().unwrap().finish(Outcome::Success);
    clock.advance(Duration::from_secs(2));
    for a in held {
        a.finish(Outcome::Success);
        assert!(limit(&e) <= 4, "{}", limit(&e));
    }
}

fn queued_policy(max_wait_ms: u64) -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1)
                    .queue(2, Duration::from_millis(max_wait_ms))
                    .codel(Duration::from_millis(5), Duration::from_millis(100))
            })
        })
        .build()
        .unwrap()
}

fn wait_for_queue(e: &Engine, len: u32) {
    // Waits for another thread to reach the queue (an event, not a time).
    while e.admission_stats().class("api").unwrap().queue_len != len {
        std::thread::yield_now();
    }
}

#[test]
fn a_blocking_waiter_gets_the_released_permit() {
    let (e, _clock) = engine(queued_policy(500));
    let api = e.class("api").unwrap();
    let first = e.admit(&AdmitRequest::new(api, id(1))).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            e.admit(&AdmitRequest::new(api, id(2)))
                .map(|a| a.budget().request_id())
        });
        wait_for_queue(&e, 1);
        drop(first);
        assert_eq!(waiter.join().unwrap().unwrap(), id(2));
    });
    let s = e.admission_stats();
    let s = s.class("api").unwrap();
    assert_eq!((s.in_flight, s.queue_len, s.counts.waited), (0, 0, 1));
}

#[test]
fn a_full_queue_refuses_and_waits_end_at_max_wait() {
    let (e, clock) = engine(queued_policy(100));
    let api = e.class("api").unwrap();
    let _held = e.admit(&AdmitRequest::new(api, id(1))).unwrap();
    std::thread::scope(|s| {
        let w1 = s.spawn(|| e.admit(&AdmitRequest::new(api, id(2))).map(|_| ()));
        let w2 = s.spawn(|| e.admit(&AdmitRequest::new(api, id(3))).map(|_| ()));
        wait_for_queue(&e, 2);
        let v = e.admit(&AdmitRequest::new(api, id(4))).unwrap_err();
        assert_eq!(v.reason(), Reason::QueueFull);
        clock.advance(Duration::from_millis(100));
        e.expire_waiters();
        for w in [w1, w2] {
            let v = w.join().unwrap().unwrap_err();
            assert_eq!(v.reason(), Reason::QueueTimeout);
        }
    });
    let s = e.admission_stats();
    let s = s.class("api").unwrap();
    assert_eq!((s.in_flight, s.queue_len), (1, 0));
    assert_eq!(s.counts.timed_out, 2);
    assert_eq!(s.counts.refused(Reason::QueueFull), 1);
}

#[test]
fn a_wait_is_capped_by_the_request_deadline() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.wall_time(Duration::from_millis(20))
                .admission(|a| a.concurrency(1).queue(4, Duration::from_secs(10)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let _held = e.admit(&AdmitRequest::new(api, id(1))).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| e.admit(&AdmitRequest::new(api, id(2))).map(|_| ()));
        wait_for_queue(&e, 1);
        clock.advance(Duration::from_millis(20));
        e.expire_waiters();
        let v = w.join().unwrap().unwrap_err();
        assert_eq!(v.reason(), Reason::QueueTimeout);
        assert_eq!(
            v.limit(),
            20_000_000,
            "waited at most the request's own 20 ms"
        );
    });
}

/// A caller whose deadline has already come (a header saying no time is left) has no time to
/// wait: a full class refuses it at once, for being full, and it never joins the queue.
#[test]
fn a_caller_without_time_left_does_not_join_the_queue() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(4, Duration::from_secs(10)))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let _held = e.admit(&AdmitRequest::new(api, id(1))).unwrap();
    let no_time = Overrides::new().wall_time(Duration::ZERO);
    let v = e
        .admit(&AdmitRequest::new(api, id(2)).overrides(&no_time))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::ConcurrencyLimit);
    let stats = e.admission_stats().class("api").unwrap().clone();
    assert_eq!(
        (stats.queue_len, stats.counts.waited, stats.counts.timed_out),
        (0, 0, 0)
    );
    assert_eq!(stats.counts.refused(Reason::ConcurrencyLimit), 1);
}

#[test]
fn an_async_waiter_is_woken_with_a_permit() {
    use executor::{poll, CountingWaker};
    let (e, _clock) = engine(queued_policy(500));
    let api = e.class("api").unwrap();
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut fut, &waker).is_pending());
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 1);
    drop(first);
    assert!(
        waker.0.load(Ordering::SeqCst) >= 1,
        "the release woke the task"
    );
    match poll(&mut fut, &waker) {
        std::task::Poll::Ready(Ok(a)) => assert_eq!(a.budget().request_id(), id(2)),
        other => panic!("expected admission, got {other:?}"),
    }
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 0);
}

/// A class of one permit and a queue, its wall time 30 s; the overrides of a caller's header
/// giving its request 1 s; a waker for futures polled by hand.
fn one_permit_and_a_caller_with_one_second() -> (
    Engine,
    ManualClock,
    Class,
    costguard::Overrides,
    Arc<executor::CountingWaker>,
) {
    let policy = Policy::builder()
        .class("api", |c| {
            c.wall_time(Duration::from_secs(30))
                .admission(|a| a.concurrency(1).queue(4, Duration::from_secs(10)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let header = costguard::Propagation::decode("cg1;id=caller;t=1000").unwrap();
    let overrides = header.overrides(&e);
    (e, clock, api, overrides, Arc::default())
}

/// The time a request waits in the queue counts against its wall time: a callee admitted after
/// waiting 900 ms of the 1 s its caller's header gave it has 100 ms left, not a fresh second (its
/// caller would have stopped waiting for it long before it finished).
#[test]
fn time_spent_waiting_counts_against_the_wall_time() {
    use executor::poll;
    let (e, clock, api, overrides, waker) = one_permit_and_a_caller_with_one_second();

    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)).overrides(&overrides));
    assert!(poll(&mut fut, &waker).is_pending());
    clock.advance(Duration::from_millis(900));
    drop(first);
    let callee = match poll(&mut fut, &waker) {
        std::task::Poll::Ready(Ok(a)) => a,
        other => panic!("expected admission, got {other:?}"),
    };
    assert_eq!(callee.budget().remaining(), Duration::from_millis(100));

    // Blocking waits, and the class's own wall time, alike.
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            e.admit(&AdmitRequest::new(api, id(3)))
                .map(|a| a.budget().remaining())
        });
        wait_for_queue(&e, 1);
        clock.advance(Duration::from_secs(4));
        drop(callee);
        assert_eq!(w.join().unwrap().unwrap(), Duration::from_secs(26));
    });
}

/// A waiter granted its permit in time but polled only after its deadline (which runs from its
/// arrival) is refused, not admitted with a budget that has nothing left, and its permit goes to
/// the next waiter.
#[test]
fn a_waiter_finished_after_its_deadline_is_refused_and_passes_its_permit_on() {
    use executor::poll;
    let (e, clock, api, overrides, waker) = one_permit_and_a_caller_with_one_second();

    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut late = e.admit_async(AdmitRequest::new(api, id(2)).overrides(&overrides));
    assert!(poll(&mut late, &waker).is_pending());
    let mut next = e.admit_async(AdmitRequest::new(api, id(3)));
    assert!(poll(&mut next, &waker).is_pending());
    clock.advance(Duration::from_millis(900));
    drop(first); // handed to the first waiter, in time
    clock.advance(Duration::from_millis(200)); // which is polled only after its 1 s
    match poll(&mut late, &waker) {
        std::task::Poll::Ready(Err(v)) => {
            assert_eq!(v.reason(), Reason::InsufficientTime);
            assert_eq!((v.used(), v.limit()), (1_100_000_000, 1_000_000_000));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match poll(&mut next, &waker) {
        std::task::Poll::Ready(Ok(a)) => assert_eq!(a.budget().request_id(), id(3)),
        other => panic!("expected the passed-on permit, got {other:?}"),
    }
    let s = e.admission_stats();
    let s = s.class("api").unwrap();
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.counts.refused(Reason::InsufficientTime), 1);
}

#[test]
fn a_dropped_async_waiter_strands_nothing() {
    use executor::{poll, CountingWaker};
    let (e, clock) = engine(queued_policy(500));
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    // Dropped while waiting: it leaves the queue.
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut fut, &waker).is_pending());
    drop(fut);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    // Granted, then dropped before it was polled again: the permit comes back.
    let mut fut = e.admit_async(AdmitRequest::new(api, id(3)));
    assert!(poll(&mut fut, &waker).is_pending());
    drop(first);
    assert_eq!(
        e.admission_stats().class("api").unwrap().in_flight,
        1,
        "handed to the waiter"
    );
    drop(fut);
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 0);
    // Timed out on the manual clock.
    let _held = e.try_admit(&AdmitRequest::new(api, id(4))).unwrap();
    let mut fut = e.admit_async(AdmitRequest::new(api, id(5)));
    assert!(poll(&mut fut, &waker).is_pending());
    clock.advance(Duration::from_millis(500));
    e.expire_waiters();
    match poll(&mut fut, &waker) {
        std::task::Poll::Ready(Err(v)) => assert_eq!(v.reason(), Reason::QueueTimeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(fut);
    // Timed out, then dropped without being polled again: a timeout all the same, counted once.
    let mut fut = e.admit_async(AdmitRequest::new(api, id(6)));
    assert!(poll(&mut fut, &waker).is_pending());
    clock.advance(Duration::from_millis(500));
    e.expire_waiters();
    drop(fut);
    let stats = e.admission_stats().class("api").unwrap().clone();
    assert_eq!((stats.queue_len, stats.in_flight), (0, 1));
    assert_eq!(stats.counts.timed_out, 2);
    assert_eq!(stats.counts.refused(Reason::QueueTimeout), 2);
}

#[test]
fn an_async_waiter_whose_poll_panics_strands_nothing() {
    use executor::{poll, CountingWaker};

    let clock = support::FailingClock::default();
    let e = Engine::builder(queued_policy(500))
        .clock(clock.clone())
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut fut, &waker).is_pending());
    clock.fail(true);
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(&mut fut, &waker)));
    assert!(polled.is_err());
    clock.fail(false);
    // The future is dropped as a panic would drop it: it leaves the queue.
    drop(fut);
    let stats = e.admission_stats();
    assert_eq!(stats.class("api").unwrap().queue_len, 0);
    drop(first);
    let stats = e.admission_stats();
    assert_eq!(
        stats.class("api").unwrap().in_flight,
        0,
        "no permit went to the dead waiter"
    );
    drop(e.try_admit(&AdmitRequest::new(api, id(3))).unwrap());
}

/// A manual clock that panics on the threads a test names, and counts its panics.
#[derive(Clone, Debug, Default)]
struct PanicsOn(ManualClock, Arc<Mutex<Vec<&'static str>>>, Arc<AtomicUsize>);

impl costguard::clock::Clock for PanicsOn {
    fn now(&self) -> costguard::clock::Timestamp {
        let name = std::thread::current().name().map(str::to_owned);
        let doomed = self
            .1
            .lock()
            .unwrap()
            .iter()
            .any(|n| Some(*n) == name.as_deref());
        if doomed {
            self.2.fetch_add(1, Ordering::SeqCst);
            panic!("the clock failed");
        }
        self.0.now()
    }
}

impl PanicsOn {
    fn on(&self, thread: &'static str) {
        self.1.lock().unwrap().push(thread);
    }

    /// An engine of `queued_policy(max_wait_ms)` on this clock, and its class.
    fn engine(&self, max_wait_ms: u64) -> (Engine, Class) {
        let e = Engine::builder(queued_policy(max_wait_ms))
            .clock(self.clone())
            .build()
            .unwrap();
        let api = e.class("api").unwrap();
        (e, api)
    }
}

/// Request `n` admitted (waiting if need be) on a thread named `name`, for a clock to fail on:
/// its admission's reason if refused, its grant dropped at once if admitted.
fn admit_on_thread(
    e: &Engine,
    api: Class,
    name: &'static str,
    n: u64,
) -> std::thread::JoinHandle<Result<(), Reason>> {
    let e = e.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            e.admit(&AdmitRequest::new(api, id(n)))
                .map(drop)
                .map_err(|v| v.reason())
        })
        .unwrap()
}

/// Nothing held and nobody waiting: the class's one permit admits the next request.
fn nothing_left_behind(e: &Engine, api: Class) {
    let stats = e.admission_stats();
    let s = stats.class("api").unwrap();
    assert_eq!((s.in_flight, s.queue_len), (0, 0), "{s:?}");
    drop(e.try_admit(&AdmitRequest::new(api, id(3))).unwrap());
}

/// A permit handed to an async waiter whose finishing poll panics (its clock, here) goes back:
/// the future is still waiting when it is dropped, and gives back what it was handed.
#[test]
fn a_granted_async_waiter_whose_finishing_poll_panics_gives_its_permit_back() {
    use executor::{poll, CountingWaker};
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(500);
    let waker = Arc::new(CountingWaker::default());
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    // Polled on a thread named for the clock to fail on.
    let on_poller = |f: &mut (dyn FnMut() + Send)| {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("poller".into())
                .spawn_scoped(scope, f)
                .unwrap()
                .join()
                .unwrap()
        })
    };
    on_poller(&mut || assert!(poll(&mut fut, &waker).is_pending()));
    drop(first); // handed to the waiter
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 1);
    clock.on("poller");
    let mut fut = Some(fut);
    on_poller(&mut || {
        let fut = fut.as_mut().unwrap();
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(fut, &waker)));
        assert!(polled.is_err(), "the finishing poll read the clock");
    });
    drop(fut); // as the panic would
    nothing_left_behind(&e, api);
}

/// The same for a blocking waiter: a panic while it waits, or while it finishes with the permit
/// it was handed, leaves nothing behind (neither a waiter in the queue nor a permit).
#[test]
fn a_blocking_waiter_unwound_by_a_panic_leaves_nothing_behind() {
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(500);
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let waiter = admit_on_thread(&e, api, "waiter", 2);
    wait_for_queue(&e, 1);
    // From here on its clock fails: in its wait, or once it is handed the permit below.
    clock.on("waiter");
    drop(first);
    assert!(waiter.join().is_err(), "the waiter read the clock");
    nothing_left_behind(&e, api);
}

/// A permit a waiter gives back as a panic unwinds it goes on to the next waiter, even when only
/// blocking waiters wait (the engine's waiter timer, started for it, hands it on).
#[test]
fn a_permit_given_back_by_an_unwinding_waiter_reaches_the_next_one() {
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(500);
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let w1 = admit_on_thread(&e, api, "w1", 2);
    wait_for_queue(&e, 1);
    let w2 = admit_on_thread(&e, api, "w2", 3);
    wait_for_queue(&e, 2);
    clock.on("w1");
    drop(first); // handed to one of them: w1 (FIFO), whose clock fails
    assert!(w1.join().is_err(), "w1 read the clock");
    // w2 leaves the queue with the permit (an event). Should it not, its wait is ended, so that
    // the test fails rather than hangs.
    let start = std::time::Instant::now();
    while e.admission_stats().class("api").unwrap().queue_len != 0 {
        if start.elapsed() > Duration::from_secs(60) {
            clock.0.advance(Duration::from_secs(1));
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(w2.join().unwrap(), Ok(()), "w2 waited beside a free permit");
    nothing_left_behind(&e, api);
}

/// A `try_admit` whose clock panics after the class's permit was taken gives the permit back:
/// nothing holds it, and a class with a limit of 1 would otherwise stay shut for good.
#[test]
fn an_admission_unwound_after_its_permit_gives_the_permit_back() {
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(500);
    clock.on("doomed");
    let e2 = e.clone();
    let unwound = std::thread::Builder::new()
        .name("doomed".into())
        .spawn(move || e2.try_admit(&AdmitRequest::new(api, id(1))).map(drop))
        .unwrap()
        .join();
    assert!(unwound.is_err(), "the admission never read the clock");
    assert_eq!(clock.2.load(Ordering::SeqCst), 1);
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 0);
    drop(e.try_admit(&AdmitRequest::new(api, id(2))).unwrap());
}

/// A grant dropped while its thread unwinds, on a clock that panics there too, does not let that
/// second panic escape (it would abort the process), and its permit still reaches the request
/// waiting for it (by the waiter timer, as the grant could not read the time to hand it on). Run
/// in a child process, so that an abort fails the test instead of the run.
#[test]
fn a_grant_dropped_while_its_clock_panics_strands_no_permit() {
    if !support::in_child("a_grant_dropped_while_its_clock_panics_strands_no_permit") {
        return;
    }
    use executor::{poll, CountingWaker};
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(500);
    let waker = Arc::new(CountingWaker::default());
    let grant = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut waiter = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut waiter, &waker).is_pending());
    clock.on("doomed");
    let handler = std::thread::Builder::new()
        .name("doomed".into())
        .spawn(move || {
            let _grant = grant;
            panic!("the handler failed");
        })
        .unwrap();
    assert!(handler.join().is_err());
    assert_eq!(
        clock.2.load(Ordering::SeqCst),
        1,
        "the grant's reading of the clock"
    );
    // The timer's next round hands the permit on (an event, waited for at most ten seconds).
    let start = std::time::Instant::now();
    let admitted = loop {
        if let std::task::Poll::Ready(result) = poll(&mut waiter, &waker) {
            break result.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the permit never reached the waiter"
        );
        std::thread::yield_now();
    };
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 1);
    drop(admitted);
    support::finished();
}

/// A permit that comes free while a request is being queued is that request's; should finishing
/// its admission panic (its clock, here), the permit goes back.
#[test]
fn a_permit_taken_while_being_queued_goes_back_if_finishing_panics() {
    use costguard::clock::{Clock, Timestamp};

    /// On the thread named `waiter`, its first reading is its first try's, its second frees the
    /// class's permit (the request is being queued then) and its third fails (the admission with
    /// that permit is finishing); so does the fourth, the permit's hand-on while unwinding.
    #[derive(Clone, Debug, Default)]
    struct Scripted(ManualClock, Arc<Mutex<Option<Admitted>>>, Arc<AtomicUsize>);
    impl Clock for Scripted {
        fn now(&self) -> Timestamp {
            if std::thread::current().name() == Some("waiter") {
                match self.2.fetch_add(1, Ordering::SeqCst) {
                    0 => {}
                    1 => drop(self.1.lock().unwrap().take()),
                    _ => panic!("the clock failed"),
                }
            }
            self.0.now()
        }
    }

    let clock = Scripted::default();
    let e = Engine::builder(queued_policy(500))
        .clock(clock.clone())
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    *clock.1.lock().unwrap() = Some(e.try_admit(&AdmitRequest::new(api, id(1))).unwrap());
    let waiter = admit_on_thread(&e, api, "waiter", 2);
    assert!(
        waiter.join().is_err(),
        "the admission read the clock three times"
    );
    assert_eq!(clock.2.load(Ordering::SeqCst), 4, "and its hand-on once");
    nothing_left_behind(&e, api);
}

/// A clock that panics once on the engine's waiter timer does not end the timer: later waits
/// still end at their deadlines.
#[test]
fn the_waiter_timer_outlives_a_panic_of_the_clock() {
    use executor::{poll, CountingWaker};
    let clock = PanicsOn::default();
    clock.on("costguard-waiters");
    let (e, api) = clock.engine(100);
    let _held = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut first = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut first, &waker).is_pending()); // starts the timer, whose clock panics
    while clock.2.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now(); // until it has (an event)
    }
    drop(first);
    clock.1.lock().unwrap().clear();
    let mut later = e.admit_async(AdmitRequest::new(api, id(3)));
    assert!(poll(&mut later, &waker).is_pending());
    let woken = waker.0.load(Ordering::SeqCst);
    clock.0.advance(Duration::from_secs(1));
    // The timer's next round expires the waiter and wakes it (an event, not a time; the bound
    // only keeps a broken timer from hanging the test).
    let start = std::time::Instant::now();
    while waker.0.load(Ordering::SeqCst) == woken {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the waiter was never expired"
        );
        std::thread::yield_now();
    }
    let v = match poll(&mut later, &waker) {
        std::task::Poll::Ready(r) => r.unwrap_err(),
        std::task::Poll::Pending => panic!("woken, but still waiting"),
    };
    assert_eq!(v.reason(), Reason::QueueTimeout);
}

/// A class stuck at its limit, whose waiters all wait out `max_wait`, has a standing queue as
/// surely as one whose waiters get in late: CoDel counts the waits that timed out too, and new
/// waiters get only its target's worth of patience.
#[test]
fn codel_sees_a_standing_queue_whose_waiters_all_time_out() {
    use executor::{poll, CountingWaker};
    let (e, clock) = engine(codel_policy(100));
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    // A new waiter every 10 ms for 600 ms, none ever served; the timer and the waiters' own
    // polls both time them out.
    let mut waiters = Vec::new();
    for n in 1..=60u64 {
        let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
        assert!(poll(&mut w, &waker).is_pending());
        waiters.push(w);
        clock.advance(Duration::from_millis(10));
        if n % 2 == 0 {
            e.expire_waiters();
        }
        for w in &mut waiters {
            let _ = poll(w, &waker);
        }
    }
    let s = e.admission_stats().class("api").unwrap().clone();
    assert!(s.counts.timed_out >= 50, "{}", s.counts.timed_out);
    let mut late = e.admit_async(AdmitRequest::new(api, id(100)));
    assert!(poll(&mut late, &waker).is_pending());
    clock.advance(Duration::from_millis(5));
    e.expire_waiters();
    match poll(&mut late, &waker) {
        std::task::Poll::Ready(Err(v)) => {
            assert_eq!(v.reason(), Reason::QueueTimeout);
            assert_eq!(v.limit(), 5_000_000, "patience cut to the CoDel target");
        }
        other => panic!("a new waiter of a standing queue waits past the target: {other:?}"),
    }
    // After a quiet interval with nobody waiting, what CoDel learned is stale: a new waiter gets
    // its whole `max_wait` again.
    clock.advance(Duration::from_millis(200));
    let mut fresh = e.admit_async(AdmitRequest::new(api, id(101)));
    assert!(poll(&mut fresh, &waker).is_pending());
    clock.advance(Duration::from_millis(99));
    e.expire_waiters();
    assert!(
        poll(&mut fresh, &waker).is_pending(),
        "patience is max_wait again"
    );
    clock.advance(Duration::from_millis(1));
    e.expire_waiters();
    assert!(matches!(
        poll(&mut fresh, &waker),
        std::task::Poll::Ready(Err(_))
    ));
}

/// Keeps the class stuck at its limit, a new waiter every 10 ms, until CoDel has seen its queue
/// standing; returns the grant that keeps it stuck.
fn stuck_until_standing(e: &Engine, clock: &ManualClock) -> Admitted {
    use executor::{poll, CountingWaker};
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut waiters = Vec::new();
    for n in 1..=30u64 {
        let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
        assert!(poll(&mut w, &waker).is_pending());
        waiters.push(w);
        clock.advance(Duration::from_millis(10));
        e.expire_waiters();
        for w in &mut waiters {
            let _ = poll(w, &waker);
        }
    }
    stuck
}

/// The patience a new waiter gets now: how long it waits before it times out (the class must
/// stay full meanwhile).
fn patience_of_a_new_waiter(e: &Engine, clock: &ManualClock, n: u64) -> u64 {
    use executor::{poll, CountingWaker};
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
    assert!(poll(&mut w, &waker).is_pending());
    clock.advance(Duration::from_millis(100));
    e.expire_waiters();
    match poll(&mut w, &waker) {
        std::task::Poll::Ready(Err(v)) => {
            assert_eq!(v.reason(), Reason::QueueTimeout);
            v.limit()
        }
        other => panic!("{other:?}"),
    }
}

/// A stuck class's standing queue stays known when a caller drops its waiter (a dropped waiter
/// says nothing about the queue), and a class that recovered and stayed quiet is judged afresh:
/// one late grant after the quiet spell is no standing queue.
#[test]
fn codel_forgets_a_standing_queue_only_when_it_drains_or_goes_quiet() {
    use executor::{poll, CountingWaker};
    let waker = Arc::new(CountingWaker::default());
    let (e, clock) = engine(codel_policy(100));
    let api = e.class("api").unwrap();
    let stuck = stuck_until_standing(&e, &clock);
    assert_eq!(patience_of_a_new_waiter(&e, &clock, 100), 5_000_000);
    // A caller gives up on the only waiter.
    let mut gone = e.admit_async(AdmitRequest::new(api, id(101)));
    assert!(poll(&mut gone, &waker).is_pending());
    clock.advance(Duration::from_millis(1));
    drop(gone);
    assert_eq!(patience_of_a_new_waiter(&e, &clock, 102), 5_000_000);

    // The class recovers, and nobody waits for two intervals.
    drop(stuck);
    clock.advance(Duration::from_millis(200));
    // A burst: one request holds the permit for 6 ms while another waits, a little over the
    // target; then a newcomer has its whole max_wait, as on a fresh engine.
    let holder = e.try_admit(&AdmitRequest::new(api, id(200))).unwrap();
    let mut waiting = e.admit_async(AdmitRequest::new(api, id(201)));
    assert!(poll(&mut waiting, &waker).is_pending());
    clock.advance(Duration::from_millis(6));
    drop(holder);
    let std::task::Poll::Ready(Ok(_held)) = poll(&mut waiting, &waker) else {
        panic!("the waiter is granted the freed permit");
    };
    assert_eq!(patience_of_a_new_waiter(&e, &clock, 202), 100_000_000);
}

/// A stuck class whose waiters (max_wait 900 ms) arrive 150 ms apart, more than an interval: its
/// queue is never empty and every waiter times out, so it is standing, however far apart the
/// departures are.
#[test]
fn codel_sees_a_stuck_class_with_sparse_departures_as_standing() {
    use executor::{poll, CountingWaker};
    let (e, clock) = engine(codel_policy(900));
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut waiters = Vec::new();
    let mut patience = Vec::new();
    for n in 1..=40u64 {
        let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
        assert!(poll(&mut w, &waker).is_pending());
        waiters.push(w);
        clock.advance(Duration::from_millis(150));
        e.expire_waiters();
        waiters.retain_mut(|w| match poll(w, &waker) {
            std::task::Poll::Ready(Err(v)) => {
                patience.push(v.limit() / 1_000_000);
                false
            }
            _ => true,
        });
    }
    // The first waiters joined before CoDel had seen an interval of waits; every later one gets
    // only the target.
    assert!(
        patience.iter().rev().take(25).all(|&p| p == 5),
        "waiters of a stuck class kept their whole max_wait (ms): {patience:?}"
    );
}

/// A clock that steps back does not keep a standing verdict alive: the quiet spell after it is
/// counted from the step.
#[test]
fn codel_forgets_a_standing_queue_after_a_quiet_spell_when_the_clock_stepped_back() {
    let (e, clock) = engine(codel_policy(100));
    let _stuck = stuck_until_standing(&e, &clock);
    assert_eq!(patience_of_a_new_waiter(&e, &clock, 100), 5_000_000);
    let t = costguard::clock::Clock::now(&clock);
    clock.set(t.saturating_sub(Duration::from_secs(10)));
    clock.advance(Duration::from_millis(200));
    assert_eq!(
        patience_of_a_new_waiter(&e, &clock, 101),
        100_000_000,
        "two quiet intervals since the step"
    );
}

/// A queue emptied by dropped waiters, or by timeouts and a grant in one dispatch however many
/// waiters that dispatch wakes, keeps what CoDel learned while it has stood empty for less than
/// an interval.
#[test]
fn codel_keeps_its_verdict_however_the_queue_emptied() {
    use executor::{poll, CountingWaker};
    let waker = Arc::new(CountingWaker::default());
    // Dropped waiters, the last of which had joined 150 ms before.
    let (e, clock) = engine(codel_policy(900));
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &|d| clock.advance(d));
    assert_eq!(waiters.len(), 4);
    drop(waiters);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(patience_of_a_new_waiter(&e, &clock, 100), 5_000_000);

    // One dispatch expiring more waiters than it wakes in one pass (8), then granting one.
    for expiring in [7, 12] {
        let (e, clock) = engine(codel_policy(900));
        let api = e.class("api").unwrap();
        let stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
        let mut waiters = standing_with_old_waiters(&e, &|d| clock.advance(d));
        let mut old = waiters.remove(0);
        drop(waiters);
        let mut short: Vec<_> = (0..expiring)
            .map(|n| {
                let mut w = e.admit_async(AdmitRequest::new(api, id(20 + n)));
                assert!(poll(&mut w, &waker).is_pending());
                w
            })
            .collect();
        clock.advance(Duration::from_millis(6));
        drop(stuck);
        let std::task::Poll::Ready(Ok(held)) = poll(&mut old, &waker) else {
            panic!("the oldest waiter is granted the freed permit");
        };
        for w in &mut short {
            assert!(matches!(poll(w, &waker), std::task::Poll::Ready(Err(_))));
        }
        // Kept full, so that the next waiter times out.
        assert_eq!(
            patience_of_a_new_waiter(&e, &clock, 99),
            5_000_000,
            "{expiring} timeouts and a grant"
        );
        drop(held);
    }
}

#[test]
fn codel_serves_newest_first_and_shortens_waits_under_standing_queues() {
    use executor::{poll, CountingWaker};
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1)
                    .queue(8, Duration::from_secs(1))
                    .codel(Duration::from_millis(5), Duration::from_millis(100))
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut held = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    // Keep a standing queue for over an interval: each waiter waits 50 ms before it gets in.
    let mut futures: Vec<_> = (1..=4)
        .map(|n| {
            let mut f = e.admit_async(AdmitRequest::new(api, id(n)));
            assert!(poll(&mut f, &waker).is_pending());
            f
        })
        .collect();
    for _ in 0..3 {
        clock.advance(Duration::from_millis(50));
        drop(held);
        let mut next = futures.remove(0);
        held = match poll(&mut next, &waker) {
            std::task::Poll::Ready(Ok(a)) => a,
            other => panic!("expected admission, got {other:?}"),
        };
        let mut f = e.admit_async(AdmitRequest::new(api, id(10 + futures.len() as u64)));
        assert!(poll(&mut f, &waker).is_pending());
        futures.push(f);
    }
    // Overloaded now: the waiter that arrived once the queue was standing had only the CoDel
    // target (5 ms) of patience and is gone; of the others, the newest is served first.
    clock.advance(Duration::from_millis(50));
    drop(held);
    let polled: Vec<_> = futures.iter_mut().map(|f| poll(f, &waker)).collect();
    let admitted: Vec<usize> = (0..polled.len())
        .filter(|&i| matches!(polled[i], std::task::Poll::Ready(Ok(_))))
        .collect();
    assert_eq!(admitted, vec![polled.len() - 2], "{polled:?}");
    assert!(
        polled[0].is_pending(),
        "the oldest is not served first under overload"
    );
    match &polled[polled.len() - 1] {
        std::task::Poll::Ready(Err(v)) => {
            assert_eq!(v.reason(), Reason::QueueTimeout);
            assert_eq!(v.limit(), 5_000_000, "patience cut to the CoDel target");
        }
        other => panic!("expected a short timeout, got {other:?}"),
    }
    // Keep the grant: the class stays full for the next waiter.
    let _held: Vec<_> = polled.into_iter().collect();
    // ...and a new waiter gets only the CoDel target (5 ms) of patience.
    let mut late = e.admit_async(AdmitRequest::new(api, id(99)));
    assert!(poll(&mut late, &waker).is_pending());
    clock.advance(Duration::from_millis(5));
    e.expire_waiters();
    match poll(&mut late, &waker) {
        std::task::Poll::Ready(Err(v)) => assert_eq!(v.reason(), Reason::QueueTimeout),
        other => panic!("expected a short timeout, got {other:?}"),
    }
}

#[test]
fn classes_without_admission_admit_everything_with_a_budget() {
    let policy = Policy::builder()
        .counter("db_queries")
        .class("batch", |c| c.limit("db_queries", 3))
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let batch = e.class("batch").unwrap();
    let db = e.counter("db_queries").unwrap();
    let a = e.try_admit(&AdmitRequest::new(batch, id(1))).unwrap();
    a.budget().try_charge(db, 3).unwrap();
    assert!(e.admission_stats().classes.is_empty());
}

#[test]
fn prometheus_exposition_names_classes_reasons_and_pools() {
    let policy = Policy::builder()
        .counter("db_queries")
        .pool("db", "db_queries", 10)
        .class("api", |c| c.admission(|a| a.concurrency(1).pool("db")))
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let db = e.counter("db_queries").unwrap();
    let _a = e
        .try_admit(&AdmitRequest::new(api, id(1)).estimate(db, 4))
        .unwrap();
    e.try_admit(&AdmitRequest::new(api, id(2))).unwrap_err();
    let text = e.admission_stats().to_prometheus();
    for line in [
        "# TYPE costguard_admitted_total counter",
        "costguard_admitted_total{class=\"api\"} 1",
        "costguard_refused_total{class=\"api\",reason=\"concurrency_limit\"} 1",
        "costguard_in_flight{class=\"api\"} 1",
        "costguard_concurrency_limit{class=\"api\"} 1",
        "costguard_shed_total{class=\"api\",priority=\"background\"} 0",
        "costguard_pool_in_use{pool=\"db\"} 4",
        "costguard_pool_limit{pool=\"db\"} 10",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// Label values are escaped as the text format requires, for stats a caller relabels before
/// rendering (policy names themselves cannot hold these characters).
#[test]
fn prometheus_label_values_are_escaped() {
    let (e, _clock, _api) = simple(1);
    let mut stats = e.admission_stats();
    stats.classes[0].class = "tenant \"a\"\\api\nx".to_owned();
    let text = stats.to_prometheus();
    assert!(
        text.contains("costguard_admitted_total{class=\"tenant \\\"a\\\"\\\\api\\nx\"} 0\n"),
        "{text}"
    );
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.starts_with("costguard_"),
            "a label value broke a line: {line:?}"
        );
    }
}

#[test]
fn hammering_threads_never_exceed_the_limits_and_everything_returns_to_zero() {
    let policy = Policy::builder()
        .counter("db_queries")
        .pool("db", "db_queries", 40)
        .class("api", |c| {
            c.limit("db_queries", 10).admission(|a| {
                a.concurrency(6)
                    .pool("db")
                    .per_key_concurrency(2)
                    .max_keys(8)
            })
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let db = e.counter("db_queries").unwrap();
    /// Counts a grant in a side counter for as long as it is held: raised once the grant exists,
    /// lowered (by drop, panics included) just before the grant is released, so the side count
    /// never exceeds what the engine really has in flight.
    struct Held<'a>(&'a AtomicUsize);
    impl<'a> Held<'a> {
        fn new(count: &'a AtomicUsize, peak: &AtomicUsize) -> Self {
            peak.fetch_max(count.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            Held(count)
        }
    }
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let in_flight = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let per_key: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
    let key_peak = AtomicUsize::new(0);
    let panics = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (e, in_flight, peak, per_key, key_peak, panics) =
                (&e, &in_flight, &peak, &per_key, &key_peak, &panics);
            s.spawn(move || {
                for i in 0..2_000u64 {
                    let k = ((t + i) % 3) as usize;
                    let key = [k as u8];
                    let req = AdmitRequest::new(api, id(t * 10_000 + i))
                        .key(&key)
                        .estimate(db, 7);
                    let Ok(admitted) = e.try_admit(&req) else {
                        continue;
                    };
                    // Some admitted work panics; the grant must still be released. The side counts
                    // are dropped before the grant (locals drop in reverse order).
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let _admitted = admitted;
                        let _counted = Held::new(in_flight, peak);
                        let _key_counted = Held::new(&per_key[k], key_peak);
                        // Work that takes a moment, so that grants overlap.
                        for _ in 0..(i % 4) {
                            std::thread::yield_now();
                        }
                        if i % 97 == 0 {
                            panic!("injected");
                        }
                    }));
                    if result.is_err() {
                        panics.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert!(panics.load(Ordering::Relaxed) > 0, "panics were injected");
    // Pool of 40 with estimates of 7 admits at most 5 at once; the class limit is 6; keys 2 each.
    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(key_peak.load(Ordering::SeqCst) <= 2);
    let stats = e.admission_stats();
    let s = stats.class("api").unwrap();
    assert_eq!((s.in_flight, s.queue_len), (0, 0));
    assert_eq!(stats.pools[0].in_use, 0);
    assert!(s.counts.admitted > 0);
    // Every key entry is released: all three keys can take two requests again.
    let held: Vec<_> = (0..3u8)
        .flat_map(|k| {
            let key = [k];
            (0..2).map(move |n| (key, n))
        })
        .map(|(key, n)| {
            e.try_admit(&AdmitRequest::new(api, id(u64::from(key[0]) * 10 + n)).key(&key))
        })
        .collect();
    assert_eq!(held.iter().filter(|r| r.is_ok()).count(), 6);
}

#[test]
fn the_observed_maximum_in_flight_equals_the_limit_never_more() {
    // Eight threads against a class limit of 4 and, separately, one key limited to 2, in rounds:
    // every thread tries once while the grants of that round are held (a barrier, an event, not a
    // time), so each round admits exactly the limit and refuses the rest. A limit that let one
    // more through would show in the first round.
    const THREADS: usize = 8;
    const ROUNDS: u64 = 50;
    for (limit, key_limit, key) in [
        (4u64, None, None),
        (64, Some(2u64), Some(b"one-user" as &[u8])),
    ] {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| match key_limit {
                    Some(k) => a.concurrency(limit).per_key_concurrency(k),
                    None => a.concurrency(limit),
                })
            })
            .build()
            .unwrap();
        let (e, _clock) = engine(policy);
        let api = e.class("api").unwrap();
        let cap = key_limit.unwrap_or(limit) as usize;
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS as u64 {
                let (e, in_flight, peak, barrier) = (&e, &in_flight, &peak, &barrier);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        let mut req = AdmitRequest::new(api, id(t * 1_000 + round));
                        if let Some(key) = key {
                            req = req.key(key);
                        }
                        let admitted = e.try_admit(&req).ok();
                        if admitted.is_some() {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                        }
                        // Every thread has tried, with this round's grants held.
                        barrier.wait();
                        if admitted.is_some() {
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        drop(admitted);
                        // Every grant of the round is released before the next round tries.
                        barrier.wait();
                    }
                });
            }
        });
        assert_eq!(
            peak.load(Ordering::SeqCst),
            cap,
            "the observed maximum is the limit"
        );
        let stats = e.admission_stats();
        let s = stats.class("api").unwrap();
        assert_eq!(s.in_flight, 0);
        let refused_by = if key_limit.is_some() {
            Reason::KeyConcurrency
        } else {
            Reason::ConcurrencyLimit
        };
        // Each round admitted exactly the limit and refused every other thread, for that limit.
        assert_eq!(s.counts.admitted, ROUNDS * cap as u64);
        assert_eq!(
            s.counts.refused(refused_by),
            ROUNDS * (THREADS - cap) as u64
        );
    }
}

#[test]
fn a_priority_carried_in_a_header_is_the_one_admission_sheds_by() {
    let policy = Policy::from_toml_str(
        r#"
        [classes.api]
        wall_time = "10s"
        [classes.api.admission]
        concurrency = 10
        headroom = { normal = 1.0, sheddable = 0.5, background = 0.2 }
        "#,
    )
    .unwrap();
    let (engine, _clock) = engine(policy);
    let api = engine.class("api").unwrap();
    let held: Vec<_> = (0..5)
        .map(|n| engine.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
        .collect();

    // The caller marked this work sheddable: at half the limit, the callee's door sheds it...
    let prop = costguard::header::Propagation::decode("cg1;id=up-1;pri=sheddable").unwrap();
    let overrides = prop.overrides(&engine);
    let shed = engine
        .try_admit(&AdmitRequest::new(api, id(100)).overrides(&overrides))
        .unwrap_err();
    assert_eq!(shed.reason(), Reason::Shed);
    // ... even when the callee would have called it normal or critical itself: a header only lowers.
    let asked_critical = AdmitRequest::new(api, id(101))
        .priority(Priority::Critical)
        .overrides(&overrides);
    assert_eq!(
        engine.try_admit(&asked_critical).unwrap_err().reason(),
        Reason::Shed
    );
    // Without the header, the same request is admitted, and its budget keeps the header's id.
    assert!(engine.try_admit(&AdmitRequest::new(api, id(102))).is_ok());
    drop(held);
    let caller_id = prop.request_id().unwrap_or(id(103));
    let admitted = engine
        .try_admit(&AdmitRequest::new(api, caller_id).overrides(&overrides))
        .unwrap();
    assert_eq!(admitted.budget().priority(), Priority::Sheddable);
    assert_eq!(admitted.budget().request_id().as_str(), "up-1");
}

/// Which of `n` distinct keys, each admitted and held in turn, an engine seeded with `seed` admits,
/// in a class whose per-key table has 64 slots (each key probes at most 8 of them).
fn admitted_keys(seed: u64, n: u64) -> Vec<bool> {
    let policy = Policy::from_toml_str(
        r#"
        [classes.api]
        wall_time = "10s"
        [classes.api.admission]
        concurrency = 1000
        per_key = { concurrency = 1, max_keys = 64 }
        "#,
    )
    .unwrap();
    let engine = Engine::builder(policy)
        .clock(ManualClock::new())
        .key_hash_seed(seed)
        .build()
        .unwrap();
    let api = engine.class("api").unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    let mut held = Vec::new();
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let request = AdmitRequest::new(api, id(i as u64)).key(key.as_bytes());
            match engine.try_admit(&request) {
                Ok(grant) => {
                    held.push(grant);
                    true
                }
                Err(v) => {
                    assert_eq!(v.reason(), Reason::KeyConcurrency);
                    false
                }
            }
        })
        .collect()
}

#[test]
fn a_fixed_key_hash_seed_makes_slot_sharing_the_same_on_every_run() {
    // 80 keys held at once in 64 slots: which keys find no free slot in their probe window, and
    // share the overflow entry (and are refused, since it has one key's share), depends on the hash.
    // With the seed fixed it is the same for every engine built with that seed, and the seed is
    // what decides it.
    let patterns: Vec<Vec<bool>> = (0..8).map(|seed| admitted_keys(seed, 80)).collect();
    for (seed, pattern) in patterns.iter().enumerate() {
        assert_eq!(*pattern, admitted_keys(seed as u64, 80), "seed {seed}");
        assert!(pattern.iter().filter(|a| **a).count() <= 65, "seed {seed}");
    }
    let distinct: std::collections::HashSet<&Vec<bool>> = patterns.iter().collect();
    assert!(distinct.len() > 1, "every seed gave the same placement");
}

/// A thread keeps the state of its finished budgets and starts the next one on it, deciding under
/// the policy that state carries while it is still the engine's current one. A reload, or an
/// admission to another engine, must be seen at once.
#[test]
fn a_reused_finished_budget_never_carries_an_old_policy_or_another_engine() {
    let policy = |queries: u64, concurrency: u64| {
        Policy::builder()
            .counter("db_queries")
            .class("api", |c| {
                c.limit("db_queries", queries)
                    .admission(|a| a.concurrency(concurrency))
            })
            .build()
            .unwrap()
    };
    let (a, _clock_a) = engine(policy(10, 5));
    let (b, _clock_b) = engine(policy(3, 5));
    let (api_a, api_b) = (a.class("api").unwrap(), b.class("api").unwrap());
    let db = a.counter("db_queries").unwrap();
    let limit_in = |e: &Engine, class: Class, n: u64| {
        let admitted = e.try_admit(&AdmitRequest::new(class, id(n))).unwrap();
        admitted.budget().limit(db)
    };
    // Each admission drops its grant, leaving its state for the next one on this thread.
    assert_eq!(limit_in(&a, api_a, 1), Some(10));
    assert_eq!(limit_in(&a, api_a, 2), Some(10));
    assert_eq!(limit_in(&b, api_b, 3), Some(3), "engine b's own policy");
    assert_eq!(limit_in(&a, api_a, 4), Some(10), "and back to engine a's");

    a.reload(policy(7, 1)).unwrap();
    assert_eq!(
        limit_in(&a, api_a, 5),
        Some(7),
        "the reload is seen at once"
    );
    let held = a.try_admit(&AdmitRequest::new(api_a, id(6))).unwrap();
    let refused = a.try_admit(&AdmitRequest::new(api_a, id(7))).unwrap_err();
    assert_eq!(
        refused.reason(),
        Reason::ConcurrencyLimit,
        "the new limit of 1"
    );
    drop(held);
    let budget = a.begin(api_a, id(8)).unwrap();
    assert_eq!(budget.limit(db), Some(7), "begin: the same");
    drop(budget);
    // A propagated budget reads the header's dimensions in the current policy too.
    let header = costguard::Propagation::decode("cg1;db_queries=5").unwrap();
    let propagated = |e: &Engine, class: Class| e.begin_propagated(class, id(11), &header).unwrap();
    assert_eq!(
        propagated(&a, api_a).limit(db),
        Some(5),
        "the header's 5 under 7"
    );
    a.reload(policy(2, 1)).unwrap();
    assert_eq!(
        propagated(&a, api_a).limit(db),
        Some(2),
        "the new 2 under the header's 5"
    );
    assert_eq!(a.begin(api_a, id(9)).unwrap().limit(db), Some(2));
    assert_eq!(b.begin(api_b, id(10)).unwrap().limit(db), Some(3));
    let stats = a.admission_stats();
    assert_eq!(stats.class("api").unwrap().in_flight, 0);
}

/// A finished budget left for the next one on its thread keeps its limits when the next budget is of
/// the same class without overrides. Overrides, another class or a charge before must never leak
/// into a later budget.
#[test]
fn a_reused_finished_budget_never_keeps_another_budgets_overrides_class_or_charges() {
    let policy = Policy::builder()
        .counter("db_queries")
        .counter("bytes")
        .class("api", |c| c.limit("db_queries", 10).limit("bytes", 1_000))
        .class("batch", |c| c.limit("db_queries", 4))
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let (api, batch) = (e.class("api").unwrap(), e.class("batch").unwrap());
    let (db, bytes) = (
        e.counter("db_queries").unwrap(),
        e.counter("bytes").unwrap(),
    );
    let limits = |admitted: &Admitted| {
        let b = admitted.budget();
        assert!(!b.is_cancelled(), "a new budget starts uncancelled");
        (b.limit(db), b.limit(bytes), b.used(db))
    };
    let admit = |class: Class, n: u64| e.try_admit(&AdmitRequest::new(class, id(n))).unwrap();
    let tight = Overrides::new().limit(db, 2);
    let admit_tight = |class: Class, n: u64| {
        e.try_admit(&AdmitRequest::new(class, id(n)).overrides(&tight))
            .unwrap()
    };

    let first = admit(api, 1);
    first.budget().try_charge(db, 9).unwrap();
    first.budget().try_charge(db, 5).unwrap_err();
    first.budget().cancel();
    drop(first);
    assert_eq!(limits(&admit(api, 2)), (Some(10), Some(1_000), 0));
    assert_eq!(limits(&admit_tight(api, 3)), (Some(2), Some(1_000), 0));
    assert_eq!(
        limits(&admit(api, 4)),
        (Some(10), Some(1_000), 0),
        "overrides end with their budget"
    );
    assert_eq!(
        limits(&admit(batch, 5)),
        (Some(4), None, 0),
        "another class, its own limits"
    );
    assert_eq!(limits(&admit(api, 6)), (Some(10), Some(1_000), 0));
    assert_eq!(limits(&admit_tight(api, 7)), (Some(2), Some(1_000), 0));
    assert_eq!(
        limits(&admit_tight(batch, 8)),
        (Some(2), None, 0),
        "overrides after overrides, on another class"
    );
    assert_eq!(limits(&admit(batch, 9)), (Some(4), None, 0));
    // begin and begin_with share the same reuse.
    assert_eq!(
        e.begin_with(api, id(10), &tight).unwrap().limit(db),
        Some(2)
    );
    assert_eq!(e.begin(api, id(11)).unwrap().limit(db), Some(10));
    // Overrides that set nothing below the class's are no overrides at all.
    let loose = Overrides::new().limit(db, u64::MAX);
    assert_eq!(
        e.begin_with(api, id(11), &loose).unwrap().limit(db),
        Some(10)
    );
    assert_eq!(loose, Overrides::new());
}

/// A waiter whose patience is already over when it joins the queue can be expired by a release's
/// dispatch in the same instant as its own last look takes a permit: that permit is then its only
/// one, and it holds it, neither giving it back twice nor holding one uncounted.
#[test]
fn a_waiter_expired_as_it_enqueues_keeps_exactly_one_permit() {
    use std::sync::atomic::AtomicBool;
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(64, Duration::from_secs(1)))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let no_time = Overrides::new().wall_time(Duration::ZERO);
    let stop = AtomicBool::new(false);
    let (holders, over) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let hold = |a: Admitted| {
        if holders.fetch_add(1, Ordering::SeqCst) > 0 {
            over.fetch_add(1, Ordering::SeqCst);
        }
        holders.fetch_sub(1, Ordering::SeqCst);
        drop(a);
    };
    std::thread::scope(|s| {
        let churn = || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Ok(a) = e.try_admit(&AdmitRequest::new(api, id(n))) {
                    hold(a);
                }
            }
        };
        let churners = [s.spawn(churn), s.spawn(churn)];
        for n in 0..200_000 {
            let request = AdmitRequest::new(api, id(1_000_000 + n)).overrides(&no_time);
            if let Ok(a) = e.admit(&request) {
                hold(a);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for c in churners {
            c.join().unwrap();
        }
    });
    assert_eq!(
        over.load(Ordering::SeqCst),
        0,
        "two grants at once with limit 1"
    );
    let stats = e.admission_stats();
    let s = stats.class("api").unwrap();
    assert_eq!((s.in_flight, s.queue_len), (0, 0));
}

/// A permit that comes free goes to a waiter whose priority may use it, even behind a waiter of
/// a lower priority that may not.
#[test]
fn a_critical_waiter_is_not_held_up_by_a_background_one() {
    use executor::{poll, CountingWaker};
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(2).queue(8, Duration::from_secs(1)))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let _second = e.try_admit(&AdmitRequest::new(api, id(2))).unwrap();
    let mut background =
        e.admit_async(AdmitRequest::new(api, id(3)).priority(Priority::Background));
    assert!(poll(&mut background, &waker).is_pending());
    let mut critical = e.admit_async(AdmitRequest::new(api, id(4)).priority(Priority::Critical));
    assert!(poll(&mut critical, &waker).is_pending());
    drop(first); // one in flight of two: free for critical work, not for background work
    assert!(matches!(
        poll(&mut critical, &waker),
        std::task::Poll::Ready(Ok(_))
    ));
    assert!(poll(&mut background, &waker).is_pending());
}

/// A class `api` with a limit of 4 and a queue of 8 waiting up to 10 s, where `priority` sees
/// `share` of the limit; in shadow mode if `shadow`.
fn shared_queue(priority: Priority, share: f64, shadow: bool) -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(4)
                    .headroom(priority, share)
                    .queue(8, Duration::from_secs(10))
                    .shadow(shadow)
            })
        })
        .build()
        .unwrap()
}

/// A waiter is held to its priority's share as the policy is now, not as it was when it joined the
/// queue: a reload that lowers normal work's headroom keeps a queued normal request out until the
/// new share has room, and a reload that raises it lets the request in at once.
#[test]
fn a_waiter_is_held_to_the_share_a_reload_sets() {
    use executor::{poll, CountingWaker};
    let policy = |normal: f64| shared_queue(Priority::Normal, normal, false);
    let (e, _clock) = engine(policy(1.0));
    let api = e.class("api").unwrap();
    let in_flight = || e.admission_stats().class("api").unwrap().in_flight;
    let waker = Arc::new(CountingWaker::default());
    let mut held: Vec<_> = (0..4)
        .map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap())
        .collect();
    let mut waiter = e.admit_async(AdmitRequest::new(api, id(9)));
    assert!(poll(&mut waiter, &waker).is_pending());

    // Normal work may now fill 2 of the 4 permits.
    e.reload(policy(0.5)).unwrap();
    drop(held.pop());
    drop(held.pop());
    assert_eq!(in_flight(), 2);
    assert!(
        poll(&mut waiter, &waker).is_pending(),
        "admitted past its share"
    );
    drop(held.pop());
    let std::task::Poll::Ready(Ok(admitted)) = poll(&mut waiter, &waker) else {
        panic!("a permit within the share went unused");
    };
    assert_eq!(in_flight(), 2);

    // Raised again: a waiter blocked by the lowered share gets in with the reload alone.
    e.try_admit(&AdmitRequest::new(api, id(10))).unwrap_err();
    let mut later = e.admit_async(AdmitRequest::new(api, id(11)));
    assert!(poll(&mut later, &waker).is_pending());
    e.reload(policy(1.0)).unwrap();
    let std::task::Poll::Ready(Ok(third)) = poll(&mut later, &waker) else {
        panic!("a raised share left its waiter queued");
    };
    assert_eq!(in_flight(), 3);
    drop((held, admitted, third));
    assert_eq!(in_flight(), 0);
}

/// A reload that leaves a priority a share that can never hold a permit refuses that priority's
/// waiters at once, as a first try under the new policy would be refused (shed, not to be
/// retried), rather than keeping them until their `max_wait`; waiters of other priorities stay.
/// Nothing is read from the clock: the manual clock never moves here.
#[test]
fn a_reload_that_takes_a_priority_s_share_away_refuses_its_waiters_at_once() {
    use executor::{poll, CountingWaker};
    let policy = |background: f64| shared_queue(Priority::Background, background, false);
    let (e, _clock) = engine(policy(0.5));
    let api = e.class("api").unwrap();
    let stats = || e.admission_stats().class("api").unwrap().clone();
    // Two in flight: background work, at half of a limit of 4, has to wait.
    let mut held: Vec<_> = (0..2)
        .map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap())
        .collect();
    let background = |n| AdmitRequest::new(api, id(n)).priority(Priority::Background);
    let waker = Arc::new(CountingWaker::default());
    let mut queued = e.admit_async(background(10));
    assert!(poll(&mut queued, &waker).is_pending());
    // A blocking waiter, which would wait for ever on a clock that never moves: the test fails
    // after a minute rather than hang.
    let (tx, rx) = std::sync::mpsc::channel();
    let blocking = e.clone();
    std::thread::spawn(move || {
        let request = AdmitRequest::new(api, id(11)).priority(Priority::Background);
        let _ = tx.send(blocking.admit(&request).map(drop));
    });
    wait_for_queue(&e, 2);

    // A tenth of a limit of 4 is no permit at all.
    e.reload(policy(0.1)).unwrap();
    let v = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the blocked waiter was not refused")
        .unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::Shed, Retry::Never));
    assert_eq!((v.used(), v.limit(), v.request_id()), (2, 0, Some(&id(11))));
    assert!(
        waker.0.load(Ordering::SeqCst) >= 1,
        "the refused task was not woken"
    );
    let std::task::Poll::Ready(Err(v)) = poll(&mut queued, &waker) else {
        panic!("a waiter with no share left stayed queued");
    };
    assert_eq!((v.reason(), v.retry()), (Reason::Shed, Retry::Never));
    let s = stats();
    assert_eq!((s.queue_len, s.in_flight), (0, 2));
    assert_eq!(s.counts.shed_by_priority[Priority::Background as usize], 2);
    assert_eq!(s.counts.refused(Reason::QueueTimeout), 0);
    // A new background request neither waits nor gets in.
    let v = e.admit(&background(12)).unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::Shed, Retry::Never));

    // Waiters of a priority that keeps its share stay queued through such a reload, and get the
    // permit that comes free.
    held.extend((2..4).map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap()));
    let mut normal = e.admit_async(AdmitRequest::new(api, id(13)));
    assert!(poll(&mut normal, &waker).is_pending());
    e.reload(policy(0.2)).unwrap();
    assert!(poll(&mut normal, &waker).is_pending());
    drop(held.pop());
    assert!(matches!(
        poll(&mut normal, &waker),
        std::task::Poll::Ready(Ok(_))
    ));
    drop(held);
    assert_eq!(stats().in_flight, 0);
}

/// A waiter refused by a reload that left its priority no permit is told what a first try under
/// that policy is told at that moment: `ConcurrencyLimit` while the class is full.
#[test]
fn a_waiter_refused_by_a_reload_is_told_what_a_first_try_is_told() {
    use executor::{poll, CountingWaker};
    let policy = |background: f64| shared_queue(Priority::Background, background, false);
    let (e, _clock) = engine(policy(0.5));
    let api = e.class("api").unwrap();
    let background = |n| AdmitRequest::new(api, id(n)).priority(Priority::Background);
    let waker = Arc::new(CountingWaker::default());
    let mut held: Vec<_> = (0..2)
        .map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap())
        .collect();
    let mut queued = e.admit_async(background(10));
    assert!(poll(&mut queued, &waker).is_pending());
    held.extend((2..4).map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap()));

    e.reload(policy(0.1)).unwrap();
    let first = e.try_admit(&background(12)).unwrap_err();
    let std::task::Poll::Ready(Err(refused)) = poll(&mut queued, &waker) else {
        panic!("a waiter with no share left stayed queued");
    };
    let told = |v: &costguard::Verdict| (v.reason(), v.retry(), v.used(), v.limit());
    assert_eq!(told(&first), (Reason::ConcurrencyLimit, Retry::Never, 4, 0));
    assert_eq!(told(&refused), told(&first));
    drop(held);
}

/// A reload that turns shadow mode on admits the requests waiting in the queue, as a first try
/// under it is admitted, whatever their share: shadow mode enforces nothing, and a waiter kept
/// for a permit it is not owed would be refused after all when its time ran out.
#[test]
fn a_reload_to_shadow_mode_admits_the_waiters() {
    use executor::{poll, CountingWaker};
    let policy =
        |background: f64, shadow: bool| shared_queue(Priority::Background, background, shadow);
    let (e, _clock) = engine(policy(0.5, false));
    let api = e.class("api").unwrap();
    let stats = || e.admission_stats().class("api").unwrap().clone();
    let waker = Arc::new(CountingWaker::default());
    let held: Vec<_> = (0..4)
        .map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap())
        .collect();
    let mut normal = e.admit_async(AdmitRequest::new(api, id(10)));
    let background = AdmitRequest::new(api, id(11)).priority(Priority::Background);
    let mut background = e.admit_async(background);
    assert!(poll(&mut normal, &waker).is_pending());
    assert!(poll(&mut background, &waker).is_pending());

    // Shadow mode, with no share at all for background work.
    e.reload(policy(0.1, true)).unwrap();
    for waiter in [&mut normal, &mut background] {
        let std::task::Poll::Ready(Ok(admitted)) = poll(waiter, &waker) else {
            panic!("a waiter was kept in shadow mode");
        };
        drop(admitted);
    }
    let s = stats();
    assert_eq!((s.queue_len, s.in_flight), (0, 4));
    assert_eq!(s.counts.refused(Reason::QueueTimeout), 0);
    assert_eq!(s.counts.admitted, 6);
    drop(held);
    assert_eq!(stats().in_flight, 0);
}

/// A waiter is admitted under the policy in force when it gets its permit, as a first try then
/// would be: a reload to shadow mode admits it past its key's cap (recording the refusal), and a
/// reload that lowers the cap holds it to the new one.
#[test]
fn a_waiter_is_admitted_under_the_policy_in_force_when_it_gets_its_permit() {
    use executor::{poll, CountingWaker};
    let policy = |concurrency: u64, per_key: u64, shadow: bool| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(concurrency)
                        .queue(8, Duration::from_secs(10))
                        .per_key_concurrency(per_key)
                        .shadow(shadow)
                })
            })
            .build()
            .unwrap()
    };
    let waker = Arc::new(CountingWaker::default());
    let keyed = |api, n| AdmitRequest::new(api, id(n)).key(b"k");

    // Shadow mode turned on while the waiter of a key at its cap waits.
    let (e, _clock) = engine(policy(1, 1, false));
    let api = e.class("api").unwrap();
    let held = e.try_admit(&keyed(api, 1)).unwrap();
    let mut waiter = e.admit_async(keyed(api, 2));
    assert!(poll(&mut waiter, &waker).is_pending());
    e.reload(policy(1, 1, true)).unwrap();
    let std::task::Poll::Ready(Ok(admitted)) = poll(&mut waiter, &waker) else {
        panic!("a waiter was refused after a reload to shadow mode");
    };
    let s = e.admission_stats().class("api").unwrap().clone();
    assert_eq!(s.counts.shadow_refused(Reason::KeyConcurrency), 1);
    drop((held, admitted));

    // The key's cap lowered from 2 to 1 while its second request waits for a class permit.
    let (e, _clock) = engine(policy(2, 2, false));
    let api = e.class("api").unwrap();
    let other = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let first = e.try_admit(&keyed(api, 2)).unwrap();
    let mut waiter = e.admit_async(keyed(api, 3));
    assert!(poll(&mut waiter, &waker).is_pending());
    e.reload(policy(2, 1, false)).unwrap();
    drop(other);
    let std::task::Poll::Ready(Err(v)) = poll(&mut waiter, &waker) else {
        panic!("the key has two requests in flight under a cap of one");
    };
    assert_eq!(v.reason(), Reason::KeyConcurrency);
    drop(first);
    let s = e.admission_stats().class("api").unwrap().clone();
    assert_eq!((s.in_flight, s.queue_len), (0, 0));
}

/// A waiter's time limit holds after a reload takes its class's admission settings away: the
/// timer still expires it.
#[test]
fn a_waiter_times_out_after_its_class_loses_admission() {
    use executor::{poll, CountingWaker};
    let queued = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(4, Duration::from_millis(100)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(queued);
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let held = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut fut, &waker).is_pending());
    e.reload(Policy::builder().class("api", |c| c).build().unwrap())
        .unwrap();
    clock.advance(Duration::from_millis(500));
    e.expire_waiters(); // what the timer thread does
    assert!(waker.0.load(Ordering::SeqCst) >= 1);
    match poll(&mut fut, &waker) {
        std::task::Poll::Ready(Err(v)) => assert_eq!(v.reason(), Reason::QueueTimeout),
        other => panic!("{other:?}"),
    }
    drop(held);
}

/// A priority whose share of the largest limit the class can have rounds down to nothing is told
/// not to retry, and does not wait.
#[test]
fn a_priority_the_limit_never_lets_in_is_told_not_to_retry() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(4, Duration::from_secs(1)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let a = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    clock.advance(Duration::from_millis(100));
    a.finish(Outcome::Success);
    // Background work may use half of the limit: nothing of a limit of one.
    let request = AdmitRequest::new(api, id(2)).priority(Priority::Background);
    for v in [
        e.try_admit(&request).unwrap_err(),
        e.admit(&request).unwrap_err(),
    ] {
        assert_eq!((v.reason(), v.used(), v.limit()), (Reason::Shed, 0, 0));
        assert_eq!(v.retry(), Retry::Never);
    }
    // With an adaptive limit that may grow to 4, it may get in later. (Its floor is 2, where
    // background work's half is one permit, here taken.)
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.aimd(1, 1, 4, 0.5, Duration::from_millis(100)))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let api = e.class("api").unwrap();
    assert_eq!(e.admission_stats().class("api").unwrap().limit, 2);
    let _held = e.try_admit(&AdmitRequest::new(api, id(3))).unwrap();
    let v = e
        .try_admit(&AdmitRequest::new(api, id(4)).priority(Priority::Background))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::Shed);
    assert_ne!(v.retry(), Retry::Never);
}

/// A shed request's Retry-After covers the requests that must finish before its priority's share
/// has room again, not just the next one.
#[test]
fn a_shed_request_is_told_how_long_the_class_takes_to_drain_to_its_share() {
    let policy = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(10)))
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let a = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    clock.advance(Duration::from_millis(100));
    a.finish(Outcome::Success); // the mean latency: 100 ms
    let held: Vec<_> = (1..=8)
        .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
        .collect();
    // Background work may use 5 of 10: four of the eight must finish first.
    let v = e
        .try_admit(&AdmitRequest::new(api, id(100)).priority(Priority::Background))
        .unwrap_err();
    assert_eq!((v.reason(), v.used(), v.limit()), (Reason::Shed, 8, 5));
    assert_eq!(
        v.retry(),
        Retry::After(Duration::from_nanos(100_000_000 / 8 * 4))
    );
    drop(held);
}

/// Retuning an adaptive limit (the same algorithm, other settings) keeps the limit it has learned.
#[test]
fn retuning_an_adaptive_limit_keeps_what_it_learned() {
    let aimd = |backoff: f64| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.aimd(8, 1, 16, backoff, Duration::from_millis(100))
                        .window(Duration::from_secs(1))
                })
            })
            .build()
            .unwrap()
    };
    let (e, clock) = engine(aimd(0.5));
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    for _ in 0..3 {
        let a = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
        clock.advance(Duration::from_millis(600));
        a.finish(Outcome::Overload);
    }
    let learned = limit(&e);
    assert!(learned < 8, "backed off: {learned}");
    e.reload(aimd(0.6)).unwrap();
    assert_eq!(limit(&e), learned);
}

/// While CoDel sees a standing queue, new waiters get its target's worth of patience, and never
/// more than `max_wait` (which a reload may have made the shorter of the two).
#[test]
fn codel_patience_never_exceeds_max_wait() {
    use executor::{poll, CountingWaker};
    let policy = |max_wait: Duration| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(1)
                        .queue(8, max_wait)
                        .codel(Duration::from_millis(5), Duration::from_millis(100))
                })
            })
            .build()
            .unwrap()
    };
    let (e, clock) = engine(policy(Duration::from_secs(1)));
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut held = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut waiting: Vec<_> = (1..=3)
        .map(|n| {
            let mut f = e.admit_async(AdmitRequest::new(api, id(n)));
            assert!(poll(&mut f, &waker).is_pending());
            f
        })
        .collect();
    // Every grant comes after a 50 ms wait, over the 5 ms target: the queue is standing.
    for n in 0..3 {
        clock.advance(Duration::from_millis(50));
        drop(held);
        let mut next = waiting.remove(0);
        held = match poll(&mut next, &waker) {
            std::task::Poll::Ready(Ok(a)) => a,
            other => panic!("{other:?}"),
        };
        let mut f = e.admit_async(AdmitRequest::new(api, id(10 + n)));
        assert!(poll(&mut f, &waker).is_pending());
        waiting.push(f);
    }
    e.reload(policy(Duration::from_millis(1))).unwrap();
    let mut late = e.admit_async(AdmitRequest::new(api, id(99)));
    assert!(poll(&mut late, &waker).is_pending());
    clock.advance(Duration::from_millis(2));
    e.expire_waiters();
    match poll(&mut late, &waker) {
        std::task::Poll::Ready(Err(v)) => assert_eq!(v.reason(), Reason::QueueTimeout),
        other => panic!("still waiting 2 ms into a 1 ms max_wait: {other:?}"),
    }
    drop((waiting, held));
}

/// A per-key rate whose burst would span more than a century is refused by name: the limiter's
/// arithmetic would saturate, and a limit of one per 584 years would let a second request through.
#[test]
fn a_rate_spanning_more_than_a_century_is_refused() {
    let per = Duration::from_secs(u64::MAX / 1_000_000_000);
    let err = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(10).per_key_rate(1, per, 1))
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("per_key.burst"), "{err}");
    assert!(err.to_string().contains("at most 100 years"), "{err}");
    // Ninety-nine years is fine.
    let per = Duration::from_secs(99 * 31_557_600);
    assert!(Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(10).per_key_rate(1, per, 1))
        })
        .build()
        .is_ok());
}

/// Gradient2 backs off when requests fail by overload, however fast they fail.
#[test]
fn gradient2_backs_off_on_overload_failures() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.gradient2(10, 1, 100).window(Duration::from_secs(1)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    for _ in 0..20 {
        let held: Vec<_> = (0..u64::from(limit(&e)))
            .map(|i| e.try_admit(&AdmitRequest::new(api, id(i))).unwrap())
            .collect();
        clock.advance(Duration::from_millis(1));
        for a in held {
            a.finish(Outcome::Overload);
        }
        clock.advance(Duration::from_secs(1));
    }
    assert!(limit(&e) < 10, "the limit went to {}", limit(&e));
}

/// An adaptive limit backed off to where a priority's share of it rounds down to nothing would
/// admit none of that priority again, so no sample would ever let it recover: its floor keeps one
/// permit for every priority with a share. Here normal work sees 90% of the limit, and `min` is 1
/// (90% of which is nothing): after an overload, an hour of healthy normal traffic must be admitted.
#[test]
fn an_adaptive_limit_keeps_a_permit_for_every_priority_with_a_share() {
    type Shape = fn(costguard::policy::AdmissionBuilder) -> costguard::policy::AdmissionBuilder;
    let shapes: [(&str, Shape); 2] = [
        ("aimd", |a| a.aimd(2, 1, 10, 0.5, Duration::from_secs(10))),
        ("gradient2", |a| a.gradient2(2, 1, 10)),
    ];
    for (name, shape) in shapes {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    shape(a)
                        .window(Duration::from_secs(1))
                        .headroom(Priority::Normal, 0.9)
                })
            })
            .build()
            .unwrap();
        let (e, clock) = engine(policy);
        let api = e.class("api").unwrap();
        let req = |n| AdmitRequest::new(api, id(n));
        // Backed off by an overload: the first window closes, then the one holding the overload.
        let a = e.try_admit(&req(1)).unwrap();
        clock.advance(Duration::from_secs(1));
        a.finish(Outcome::Overload);
        clock.advance(Duration::from_secs(1));
        e.try_admit(&req(2)).unwrap().finish(Outcome::Success);
        let backed_off = e.admission_stats().class("api").unwrap().limit;
        assert!(backed_off < 10, "{name}: the limit stayed at {backed_off}");
        // An hour of healthy normal traffic, one request a second.
        let mut refused = 0;
        for n in 0..3600 {
            clock.advance(Duration::from_secs(1));
            match e.try_admit(&req(100 + n)) {
                Ok(g) => g.finish(Outcome::Success),
                Err(v) => {
                    assert_ne!(v.retry(), Retry::Never, "{name}: {v}");
                    refused += 1;
                }
            }
        }
        let stats = e.admission_stats();
        let s = stats.class("api").unwrap();
        assert_eq!(refused, 0, "{name}: limit {}, {refused} refused", s.limit);
        assert!(s.limit >= 2, "{name}: the limit is {}", s.limit);
    }
}

/// A share too small for even the largest limit to give it a permit asks for no floor: the limit
/// still backs off for everyone else (and that priority is told not to retry).
#[test]
fn a_share_no_limit_serves_does_not_hold_an_adaptive_limit_up() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.aimd(10, 1, 20, 0.5, Duration::from_secs(10))
                    .window(Duration::from_secs(1))
                    .headroom(Priority::Background, 0.01)
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
    assert_eq!(limit(&e), 10, "initial");
    for n in 0..5 {
        let a = e.try_admit(&AdmitRequest::new(api, id(n))).unwrap();
        clock.advance(Duration::from_secs(1));
        a.finish(Outcome::Overload);
    }
    clock.advance(Duration::from_secs(1));
    e.try_admit(&AdmitRequest::new(api, id(99)))
        .unwrap()
        .finish(Outcome::Success);
    assert!(limit(&e) < 10, "the limit stayed at {}", limit(&e));
    let v = e
        .try_admit(&AdmitRequest::new(api, id(100)).priority(Priority::Background))
        .unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::Shed, Retry::Never));
}

/// A waker runs with no lock of costguard's held: one that asks the engine to admit another
/// request on the same class, right there in `wake`, neither deadlocks nor is refused for it.
#[test]
fn a_waker_may_call_back_into_the_engine() {
    use executor::poll;
    use std::future::Future as _;
    use std::task::Wake;
    struct Reentrant {
        engine: Engine,
        api: Class,
        seen: Mutex<Option<bool>>,
    }
    impl Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            let mut again = self.engine.admit_async(AdmitRequest::new(self.api, id(9)));
            let noop = Arc::new(executor::CountingWaker::default());
            let ready = poll(&mut again, &noop).is_ready();
            *self.seen.lock().unwrap() = Some(ready);
        }
    }
    let (e, _clock) = engine(queued_policy(500));
    let api = e.class("api").unwrap();
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let waker = Arc::new(Reentrant {
        engine: e.clone(),
        api,
        seen: Mutex::new(None),
    });
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    let w = std::task::Waker::from(Arc::clone(&waker));
    assert!(std::pin::Pin::new(&mut fut)
        .poll(&mut std::task::Context::from_waker(&w))
        .is_pending());
    drop(first); // hands the permit to the waiter and wakes it
    assert!(
        waker.seen.lock().unwrap().is_some(),
        "the waker did not run"
    );
    let admitted = std::pin::Pin::new(&mut fut).poll(&mut std::task::Context::from_waker(&w));
    assert!(matches!(admitted, std::task::Poll::Ready(Ok(_))));
}

/// A waker that panics is the application's bug, reported by the panic hook; it does not unwind
/// out of the grant's drop that woke it (which could abort a process already unwinding), and the
/// permit it was handed is still its waiter's.
#[test]
fn a_panicking_waker_does_not_escape_the_release() {
    use std::future::Future as _;
    use std::task::Wake;
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a waker with a bug");
        }
    }
    let (e, _clock) = engine(queued_policy(500));
    let api = e.class("api").unwrap();
    let first = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    let w = std::task::Waker::from(Arc::new(Panics));
    let mut fut = e.admit_async(AdmitRequest::new(api, id(2)));
    let mut cx = std::task::Context::from_waker(&w);
    assert!(std::pin::Pin::new(&mut fut).poll(&mut cx).is_pending());
    drop(first);
    let admitted = std::pin::Pin::new(&mut fut).poll(&mut cx);
    assert!(matches!(admitted, std::task::Poll::Ready(Ok(_))));
    drop(admitted);
    drop(fut);
    assert_eq!(e.admission_stats().class("api").unwrap().in_flight, 0);
}

/// Expiring more waiters at once than one pass wakes (they are woken in batches, each after the
/// queue's lock is released) wakes every one of them.
#[test]
fn every_expired_waiter_is_woken() {
    use executor::{poll, CountingWaker};
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(64, Duration::from_millis(100)))
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let held = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters: Vec<_> = (1..=20)
        .map(|n| {
            let waker = Arc::new(CountingWaker::default());
            let mut f = e.admit_async(AdmitRequest::new(api, id(n)));
            assert!(poll(&mut f, &waker).is_pending());
            (f, waker)
        })
        .collect();
    clock.advance(Duration::from_millis(200));
    e.expire_waiters();
    for (mut f, waker) in waiters {
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        match poll(&mut f, &waker) {
            std::task::Poll::Ready(Err(v)) => assert_eq!(v.reason(), Reason::QueueTimeout),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    drop(held);
}

/// In shadow mode an estimate larger than a whole pool is one would-be refusal (`CannotFit`), not
/// also a second one (`PoolExhausted`) when its amount is then held.
#[test]
fn shadow_mode_records_an_estimate_larger_than_its_pool_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = Policy::builder()
        .counter("db_queries")
        .pool("db", "db_queries", 10)
        .class("api", |c| {
            c.admission(|a| a.concurrency(5).shadow(true).pool("db"))
        })
        .build()
        .unwrap();
    let log = Arc::clone(&seen);
    let e = Engine::builder(policy)
        .clock(ManualClock::new())
        .on_refusal(move |event| log.lock().unwrap().push(event.verdict.reason()))
        .build()
        .unwrap();
    let (api, db) = (e.class("api").unwrap(), e.counter("db_queries").unwrap());
    let big = e
        .try_admit(&AdmitRequest::new(api, id(1)).estimate(db, 20))
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Reason::CannotFit]);
    // A request that would fit an empty pool, but not this one, is the pool's refusal.
    let _small = e
        .try_admit(&AdmitRequest::new(api, id(2)).estimate(db, 5))
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Reason::CannotFit, Reason::PoolExhausted]
    );
    let stats = e.admission_stats();
    let c = &stats.class("api").unwrap().counts;
    assert_eq!(
        (
            c.shadow_refused(Reason::CannotFit),
            c.shadow_refused(Reason::PoolExhausted)
        ),
        (1, 1)
    );
    drop(big);
}

/// Shadow mode holds amounts past a pool's limit, up to `u64::MAX`. Each grant gives back exactly
/// what it added: one whose amount the saturated count could not hold takes nothing from the
/// others when it finishes.
#[test]
fn shadow_pool_amounts_are_given_back_exactly() {
    let policy = Policy::builder()
        .counter("db")
        .pool("p", "db", 10)
        .class("shadow", |c| {
            c.admission(|a| a.concurrency(10).shadow(true).pool("p"))
        })
        .build()
        .unwrap();
    let (e, _clock) = engine(policy);
    let (class, db) = (e.class("shadow").unwrap(), e.counter("db").unwrap());
    let admit = |n| {
        e.try_admit(&AdmitRequest::new(class, id(n)).estimate(db, u64::MAX))
            .unwrap()
    };
    let in_use = || e.admission_stats().pools[0].in_use;
    let (a, b) = (admit(1), admit(2));
    assert_eq!(in_use(), u64::MAX);
    drop(b);
    assert_eq!(in_use(), u64::MAX, "a still runs");
    drop(a);
    assert_eq!(in_use(), 0);
    let (a, b) = (admit(3), admit(4));
    drop(a);
    assert_eq!(in_use(), 0, "b added nothing");
    drop(b);
}

/// A cost-weighted rate that is not a whole number of nanoseconds per unit (700 MB a second is
/// 1.43 ns a byte) is enforced as configured, not as the next faster whole-nanosecond rate.
#[test]
fn a_high_cost_weighted_rate_is_not_exceeded() {
    const RATE: u64 = 700_000_000;
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(100)
                    .per_key_rate(RATE, Duration::from_secs(1), RATE)
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let req = |n: u64, cost: u64| {
        AdmitRequest::new(api, id(n))
            .key(b"uploader")
            .rate_cost(cost)
    };
    drop(e.try_admit(&req(1, RATE)).unwrap());
    clock.advance(Duration::from_millis(500));
    let v = e.try_admit(&req(2, 490_000_000)).unwrap_err();
    assert_eq!(v.reason(), Reason::RateLimited, "only 350 MB came back");
    // Paced at 1 MB a millisecond for ten seconds: at most what ten seconds earn, plus the half
    // burst that had come back when the pacing began.
    let mut admitted = 0u64;
    for n in 0..10_000u64 {
        if e.try_admit(&req(10 + n, 1_000_000)).is_ok() {
            admitted += 1_000_000;
        }
        clock.advance(Duration::from_millis(1));
    }
    assert!(
        admitted <= 10 * RATE + RATE / 2,
        "{admitted} bytes in ten seconds"
    );
}

/// A rate cost larger than the key's whole burst can never be admitted: it is told so at the door,
/// with the burst as the limit, even when the class or the key is full (which alone would say
/// "later").
#[test]
fn a_rate_cost_over_the_burst_is_never_told_to_retry() {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1)
                    .per_key_concurrency(1)
                    .per_key_rate(10, Duration::from_secs(1), 3)
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let over = |n| AdmitRequest::new(api, id(n)).key(b"carol").rate_cost(4);
    let v = e.try_admit(&over(1)).unwrap_err();
    assert_eq!((v.reason(), v.retry()), (Reason::CannotFit, Retry::Never));
    assert_eq!((v.requested(), v.limit()), (4, 3), "{v}");
    let hold = e
        .try_admit(&AdmitRequest::new(api, id(2)).key(b"carol"))
        .unwrap();
    let v = e.try_admit(&over(3)).unwrap_err();
    assert_eq!(
        (v.reason(), v.retry()),
        (Reason::CannotFit, Retry::Never),
        "{v}"
    );
    drop(hold);
    clock.advance(Duration::from_secs(1));
    let v = e
        .try_admit(&AdmitRequest::new(api, id(4)).key(b"carol").rate_cost(3))
        .unwrap();
    drop(v);
    let v = e
        .try_admit(&AdmitRequest::new(api, id(5)).key(b"carol").rate_cost(1))
        .unwrap_err();
    assert_eq!(v.reason(), Reason::RateLimited);
    assert_eq!(v.limit(), 3, "{v}");
}

#[test]
fn a_grant_that_turns_codel_on_mid_dispatch_skips_no_waiter() {
    let policy = |limit: u64| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(limit)
                        .queue(8, Duration::from_secs(10))
                        .codel(Duration::from_millis(5), Duration::from_millis(100))
                })
            })
            .build()
            .unwrap()
    };
    let (e, clock) = engine(policy(4));
    let api = e.class("api").unwrap();
    let held: Vec<_> = (0..3)
        .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
        .collect();
    let fourth = e.try_admit(&AdmitRequest::new(api, id(3))).unwrap();
    // Blocking waiters: no timer thread, so only dispatches hand permits over.
    std::thread::scope(|s| {
        // At the front, a background waiter that its share of the limit keeps out (2 of 4, 3 of 6).
        let background =
            s.spawn(|| e.admit(&AdmitRequest::new(api, id(10)).priority(Priority::Background)));
        wait_for_queue(&e, 1);
        let w0 = s.spawn(|| e.admit(&AdmitRequest::new(api, id(11))));
        wait_for_queue(&e, 2);
        // W0 waits 50 ms (above CoDel's target): its grant starts an interval ending at 150 ms.
        clock.advance(Duration::from_millis(50));
        drop(fourth);
        let w0 = w0.join().unwrap().unwrap();
        let w1 = s.spawn(|| e.admit(&AdmitRequest::new(api, id(13))));
        wait_for_queue(&e, 2);
        let w2 = s.spawn(|| e.admit(&AdmitRequest::new(api, id(14))));
        wait_for_queue(&e, 3);
        // Queue: background, W1, W2. Two permits come free at once; granting W1 (waited 150 ms)
        // turns CoDel on in the middle of the dispatch, which must still reach W2.
        clock.advance(Duration::from_millis(150));
        e.reload(policy(6)).unwrap();
        let w1 = w1.join().unwrap().unwrap();
        let stats = e.admission_stats().class("api").unwrap().clone();
        if stats.queue_len != 1 {
            // Let the stranded waiters go before failing, or the scope would wait for them.
            clock.advance(Duration::from_secs(11));
            e.expire_waiters();
        }
        assert_eq!(
            (stats.in_flight, stats.queue_len),
            (6, 1),
            "W2 left waiting while a permit was free"
        );
        let w2 = w2.join().unwrap().unwrap();
        drop((w0, w1, w2, held));
        assert!(background.join().unwrap().is_ok());
    });
    let stats = e.admission_stats().class("api").unwrap().clone();
    assert_eq!((stats.in_flight, stats.queue_len), (0, 0));
}

#[test]
fn adaptive_limits_start_afresh_when_admission_settings_come_back() {
    let adaptive = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.aimd(8, 1, 16, 0.5, Duration::from_millis(100))
                    .window(Duration::from_secs(1))
            })
        })
        .build()
        .unwrap();
    let fixed = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(3)))
        .build()
        .unwrap();
    let bare = Policy::builder().class("api", |c| c).build().unwrap();
    // Learns a lower limit from two slow windows, goes through `between`, and comes back.
    let round_trip = |between: &Policy| {
        let (e, clock) = engine(adaptive.clone());
        let api = e.class("api").unwrap();
        let limit = |e: &Engine| e.admission_stats().class("api").unwrap().limit;
        for _ in 0..2 {
            let held: Vec<_> = (0..limit(&e) as u64)
                .map(|n| e.try_admit(&AdmitRequest::new(api, id(n))).unwrap())
                .collect();
            clock.advance(Duration::from_millis(300));
            held.into_iter().for_each(|a| a.finish(Outcome::Success));
            clock.advance(Duration::from_secs(1));
        }
        let learned = limit(&e);
        e.reload(between.clone()).unwrap();
        e.reload(adaptive.clone()).unwrap();
        (learned, limit(&e))
    };
    assert_eq!(round_trip(&fixed), (4, 8), "by way of a static limit");
    assert_eq!(round_trip(&bare), (4, 8), "by way of no admission settings");
}

/// A class whose Gradient2 limit starts at 64 (between 1 and 100), counts the latest window
/// alone (smoothing 1) and tolerates no rise (tolerance 1), with windows of a second; and a round
/// of `n` requests that take `latency`, the first `overloads` of them overload failures.
fn gradient_class() -> (
    Engine,
    ManualClock,
    impl Fn(u32, Duration, u32),
    impl Fn() -> u32,
) {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.gradient2(64, 1, 100)
                    .gradient_tuning(1.0, 1.0)
                    .window(Duration::from_secs(1))
            })
        })
        .build()
        .unwrap();
    let (e, clock) = engine(policy);
    let api = e.class("api").unwrap();
    let (round_engine, round_clock, limit_engine) = (e.clone(), clock.clone(), e.clone());
    let round = move |n: u32, latency: Duration, overloads: u32| {
        let held: Vec<_> = (0..n)
            .map(|i| {
                round_engine
                    .try_admit(&AdmitRequest::new(api, id(u64::from(i))))
                    .unwrap()
            })
            .collect();
        round_clock.advance(latency);
        for (i, a) in (0u32..).zip(held) {
            a.finish(if i < overloads {
                Outcome::Overload
            } else {
                Outcome::Success
            });
        }
    };
    let limit = move || limit_engine.admission_stats().class("api").unwrap().limit;
    (e, clock, round, limit)
}

/// Gradient2 as documented: `limit × clamp(tolerance × long / short, 0.5, 1) + sqrt(limit)`. One
/// window whose latency jumps a hundredfold at most halves the limit (plus its headroom): a single
/// slow spell must not collapse it to the floor.
#[test]
fn one_slow_window_at_most_halves_a_gradient_limit() {
    let (_e, clock, round, limit) = gradient_class();
    round(64, Duration::from_millis(10), 0); // window 1: 10 ms
    clock.advance(Duration::from_millis(990));
    round(64, Duration::from_secs(1), 0); // closes window 1 (in use, steady: 64 + 8), fills window 2
    assert_eq!(limit(), 72);
    clock.advance(Duration::from_secs(1));
    round(1, Duration::ZERO, 0); // closes window 2: mean 1 s against a long-term 59.5 ms
    assert_eq!(limit(), 44, "72 × 0.5 + sqrt(72), not 72 × 0.06 + sqrt(72)");
}

/// A Gradient2 window with overload failures gets no headroom: its share of failures caps the
/// gradient and nothing is added, so fast failures (a backend refusing work answers quickly) can
/// never grow the limit.
#[test]
fn a_gradient_window_with_overloads_gets_no_headroom() {
    let (_e, clock, round, limit) = gradient_class();
    let ten_ms = Duration::from_millis(10);
    round(64, ten_ms, 0); // window 1: 10 ms, all fine
    clock.advance(Duration::from_millis(990));
    round(64, ten_ms, 10); // closes window 1 (64 + 8); window 2: 10 ms, 10 of 64 overloaded
    assert_eq!(limit(), 72);
    clock.advance(Duration::from_millis(990));
    round(1, ten_ms, 0); // closes window 2
    assert_eq!(limit(), 60, "72 × (1 - 10/64), no sqrt(72) on top");
}

/// A grant dropped while its thread unwinds (a handler's panic; the clock is fine) hands its
/// permit on at the time it is dropped, as when it is dropped normally: to a waiter whose wait is
/// not over, and not to one whose wait is (it is expired instead).
#[test]
fn a_grant_dropped_by_a_panic_hands_its_permit_on_at_the_time_it_drops() {
    let waiter_after = |waited: Duration, drop_grant: fn(Admitted)| {
        let (e, clock) = engine(queued_policy(10_000));
        let api = e.class("api").unwrap();
        let grant = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                e.admit(&AdmitRequest::new(api, id(2)))
                    .map(drop)
                    .map_err(|v| v.reason())
            });
            wait_for_queue(&e, 1);
            clock.advance(waited);
            let _ = s.spawn(move || drop_grant(grant)).join();
            waiter.join().unwrap()
        })
    };
    let by_a_panic: fn(Admitted) = |grant| {
        let _grant = grant;
        std::panic::resume_unwind(Box::new("the handler failed"));
    };
    for drop_grant in [drop, by_a_panic] {
        assert_eq!(waiter_after(Duration::from_secs(1), drop_grant), Ok(()));
        let over = waiter_after(Duration::from_secs(20), drop_grant);
        assert_eq!(over, Err(Reason::QueueTimeout));
    }
}

/// A grant dropped while its thread unwinds, whose clock panics there too, still hands its
/// permit to the request waiting for it, a blocking one included (which no timer serves). Run in
/// a child process, so that an abort fails the test instead of the run.
#[test]
fn a_blocking_waiter_gets_the_permit_of_a_grant_whose_clock_panicked_while_unwinding() {
    if !support::in_child(
        "a_blocking_waiter_gets_the_permit_of_a_grant_whose_clock_panicked_while_unwinding",
    ) {
        return;
    }
    let clock = PanicsOn::default();
    let (e, api) = clock.engine(3_000);
    let grant = e.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    clock.on("doomed");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            e.admit(&AdmitRequest::new(api, id(2)))
                .map(|a| a.budget().request_id())
                .map_err(|v| v.reason())
        });
        wait_for_queue(&e, 1);
        let handler = std::thread::Builder::new()
            .name("doomed".into())
            .spawn_scoped(s, move || {
                let _grant = grant;
                panic!("the handler failed");
            })
            .unwrap();
        assert!(handler.join().is_err());
        assert_eq!(clock.2.load(Ordering::SeqCst), 1, "the grant's reading");
        assert_eq!(waiter.join().unwrap(), Ok(id(2)));
    });
    support::finished();
}

/// After a long slow spell, Gradient2's long-term latency is inflated; once latency recovers
/// well below it, it drifts down faster than its average alone would, so that a later rise is
/// seen as one (and backed off from) instead of hiding under the old spell's estimate.
#[test]
fn a_gradient_limit_sees_a_rise_after_recovering_from_a_slow_spell() {
    let (_e, clock, round, limit) = gradient_class();
    for _ in 0..10 {
        round(64, Duration::from_secs(1), 0); // a slow spell: 1 s a request
    }
    for _ in 0..40 {
        round(64, Duration::from_millis(10), 0); // recovered: 10 ms
        clock.advance(Duration::from_millis(990));
    }
    let recovered = limit();
    round(64, Duration::from_millis(50), 0); // a rise to 50 ms, far below the old spell
    clock.advance(Duration::from_secs(1));
    round(1, Duration::ZERO, 0); // closes that window
    assert!(
        limit() < recovered,
        "{} after {recovered}: a fivefold rise went unseen",
        limit()
    );
}

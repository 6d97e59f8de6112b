//! The wait queue at its edges: CoDel when no clock could be read (waiters dropped while their
//! thread unwinds, a clock that panics), a reload that takes the queue away, and a permit given
//! back while the clock panics.
#![allow(clippy::result_large_err)]

mod support;

use support::executor;

use costguard::clock::Clock;
use costguard::{AdmitRequest, Engine, Policy, Reason, RequestId};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use executor::{poll, CountingWaker};

fn id(n: u64) -> RequestId {
    RequestId::from_u64(n)
}

fn codel_policy(max_wait: u64) -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1)
                    .queue(64, Duration::from_millis(max_wait))
                    .codel(Duration::from_millis(5), Duration::from_millis(100))
            })
        })
        .build()
        .unwrap()
}

fn no_queue_policy() -> Policy {
    Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(1)))
        .build()
        .unwrap()
}

/// As tests/admission.rs: waiters 150 ms apart (max_wait 900 ms), none served, until CoDel has
/// judged the queue standing; returns the waiters still queued.
fn standing_with_old_waiters<'e>(
    e: &'e Engine,
    clock: &dyn Fn(Duration),
) -> Vec<costguard::admission::AdmitFuture<'e, 'static>> {
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut waiters = Vec::new();
    for n in 1..=8u64 {
        let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
        assert!(poll(&mut w, &waker).is_pending());
        waiters.push(w);
        clock(Duration::from_millis(150));
        e.expire_waiters();
        waiters.retain_mut(|w| poll(w, &waker).is_pending());
    }
    waiters
}

/// The patience (ns) of a new waiter of the full class: `None` if it still waits after 100 ms.
fn patience(e: &Engine, advance: &dyn Fn(Duration), n: u64) -> Option<u64> {
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut w = e.admit_async(AdmitRequest::new(api, id(n)));
    assert!(poll(&mut w, &waker).is_pending());
    advance(Duration::from_millis(100));
    e.expire_waiters();
    match poll(&mut w, &waker) {
        Poll::Ready(Err(v)) => {
            assert_eq!(v.reason(), Reason::QueueTimeout);
            Some(v.limit())
        }
        Poll::Pending => None,
        Poll::Ready(Ok(_)) => panic!("admitted"),
    }
}

fn quiet_panics<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// Waiters dropped while their thread unwinds (a handler's panic) empty the queue; a waiter 1 ms
/// later should still see the standing queue (empty for 1 ms, not an interval).
#[test]
fn waiters_dropped_while_unwinding_keep_the_verdict() {
    let (e, clock) = support::manual_engine(codel_policy(900));
    let adv = |d| clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &adv);
    assert_eq!(waiters.len(), 4);
    let _ = quiet_panics(move || {
        let _w = waiters;
        panic!("a handler panics while its waiters wait");
    });
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        patience(&e, &adv, 100),
        Some(5_000_000),
        "queue empty for 1 ms, yet CoDel started afresh (None: whole max_wait)"
    );
}

/// Waiters dropped while the clock panics: `leave` catches it and removes them, but the queue
/// is then taken as emptied when the last of them joined (150+ ms ago).
#[test]
fn waiters_dropped_with_a_failing_clock_keep_the_verdict() {
    let clock = support::FailingClock::default();
    let e = Engine::builder(codel_policy(900))
        .clock(clock.clone())
        .build()
        .unwrap();
    let adv = |d| clock.clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &adv);
    assert_eq!(waiters.len(), 4);
    clock.fail(true);
    drop(waiters);
    clock.fail(false);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    clock.clock.advance(Duration::from_millis(1));
    assert_eq!(
        patience(&e, &adv, 100),
        Some(5_000_000),
        "queue empty for 1 ms, yet CoDel started afresh (None: whole max_wait)"
    );
}

/// A grant dropped while unwinding, its clock failing too: `dispatch_unwinding` dispatches at
/// time 0, the pass empties the queue and records it as emptied at 0, so the verdict is stale at
/// once, though the doc says CoDel is not told.
#[test]
fn grant_dropped_while_unwinding_with_a_failing_clock_keeps_the_verdict() {
    let clock = support::FailingClock::default();
    let e = Engine::builder(codel_policy(900))
        .clock(clock.clone())
        .build()
        .unwrap();
    let adv = |d| clock.clock.advance(d);
    let api = e.class("api").unwrap();
    let stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut waiters = standing_with_old_waiters(&e, &adv);
    let mut old = waiters.remove(0);
    drop(waiters);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 1);
    let c = clock.clone();
    let _ = quiet_panics(move || {
        let _s = stuck;
        c.fail(true);
        panic!("the handler panics, and the clock with it");
    });
    clock.fail(false);
    let waker = Arc::new(CountingWaker::default());
    let Poll::Ready(Ok(held)) = poll(&mut old, &waker) else {
        panic!("the old waiter got the permit");
    };
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    clock.clock.advance(Duration::from_millis(1));
    assert_eq!(
        patience(&e, &adv, 100),
        Some(5_000_000),
        "queue empty for 1 ms, yet CoDel started afresh (None: whole max_wait)"
    );
    drop(held);
}

/// A reload takes the queue settings away for a long while, then gives them back: the verdict
/// learned before should be stale.
#[test]
fn verdict_does_not_survive_a_reload_without_a_queue() {
    let (e, clock) = support::manual_engine(codel_policy(900));
    let adv = |d| clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &adv);
    e.reload(no_queue_policy()).unwrap();
    clock.advance(Duration::from_millis(1));
    // Still queued ones wait on; new ones are refused.
    drop(waiters);
    clock.advance(Duration::from_secs(5));
    e.reload(codel_policy(900)).unwrap();
    let _ = AtomicUsize::new(0);
    let _ = clock.now();
    assert_eq!(patience(&e, &adv, 100), None, "whole max_wait after 5 s");
}

/// A future dropped (not while unwinding) just as it was granted a permit, while the clock
/// panics: the permit it gives back still reaches the next waiter, and the clock's panic goes on
/// to the caller.
#[test]
fn a_permit_given_back_with_a_panicking_clock_reaches_the_next_waiter() {
    use std::sync::atomic::Ordering;
    let clock = support::FailingClock::default();
    let e = Engine::builder(codel_policy(900))
        .clock(clock.clone())
        .build()
        .unwrap();
    let api = e.class("api").unwrap();
    let (waker, woken) = (
        Arc::new(CountingWaker::default()),
        Arc::new(CountingWaker::default()),
    );
    let held = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut first = e.admit_async(AdmitRequest::new(api, id(1)));
    let mut second = e.admit_async(AdmitRequest::new(api, id(2)));
    assert!(poll(&mut first, &waker).is_pending());
    assert!(poll(&mut second, &woken).is_pending());
    // The permit is handed to the first waiter, which is dropped before it looks.
    drop(held);
    clock.fail(true);
    let dropped = quiet_panics(move || drop(first));
    // Read before the clock works again: nothing else (the timer) could have handed it on.
    let wakes = woken.0.load(Ordering::SeqCst);
    clock.fail(false);
    assert!(dropped.is_err(), "the clock's panic reaches the caller");
    assert_eq!(wakes, 1, "the second waiter was handed the permit");
    assert!(matches!(poll(&mut second, &woken), Poll::Ready(Ok(_))));
}

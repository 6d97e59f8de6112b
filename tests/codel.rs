//! The wait queue at its edges: CoDel when no clock could be read (waiters dropped while their
//! thread unwinds, a clock that panics), a reload that takes the queue away, and a permit given
//! back while the clock panics.

mod support;

use costguard::{AdmitRequest, Engine, Policy, Reason, RequestId};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use support::executor::{poll, CountingWaker};
use support::{codel_policy, standing_with_old_waiters, FailingClock};

fn id(n: u64) -> RequestId {
    RequestId::from_u64(n)
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

/// The queue, emptied a moment ago, is still standing: a new waiter gets the target's patience.
fn assert_still_standing(e: &Engine, advance: &dyn Fn(Duration)) {
    advance(Duration::from_millis(1));
    assert_eq!(
        patience(e, advance, 100),
        Some(5_000_000),
        "empty for 1 ms: the queue is still standing"
    );
}

/// An engine of [`codel_policy`]`(900)` on a clock that panics when told to.
fn failing_engine() -> (Engine, FailingClock) {
    let clock = FailingClock::default();
    let e = Engine::builder(codel_policy(900))
        .clock(clock.clone())
        .build()
        .unwrap();
    (e, clock)
}

fn quiet_panics<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// Waiters dropped while their thread unwinds (a handler's panic) empty the queue where no clock
/// is read: the quiet spell counts from the next reading, and the queue is still standing.
#[test]
fn waiters_dropped_while_unwinding_keep_the_verdict() {
    let (e, clock) = support::manual_engine(codel_policy(900));
    let advance = |d| clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &advance);
    assert_eq!(waiters.len(), 4);
    let _ = quiet_panics(move || {
        let _w = waiters;
        panic!("a handler panics while its waiters wait");
    });
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    assert_still_standing(&e, &advance);
}

/// Waiters dropped while the clock panics leave the queue all the same, and it is still standing.
#[test]
fn waiters_dropped_with_a_failing_clock_keep_the_verdict() {
    let (e, clock) = failing_engine();
    let advance = |d| clock.clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &advance);
    assert_eq!(waiters.len(), 4);
    clock.fail(true);
    drop(waiters);
    clock.fail(false);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    assert_still_standing(&e, &advance);
}

/// A grant dropped while its thread unwinds, the clock panicking too: its permit goes to the last
/// waiter as if no time had passed, and the queue it empties is still standing.
#[test]
fn grant_dropped_while_unwinding_with_a_failing_clock_keeps_the_verdict() {
    let (e, clock) = failing_engine();
    let advance = |d| clock.clock.advance(d);
    let api = e.class("api").unwrap();
    let stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let mut waiters = standing_with_old_waiters(&e, &advance);
    let mut old = waiters.remove(0);
    drop(waiters);
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 1);
    let failing = clock.clone();
    let _ = quiet_panics(move || {
        let _stuck = stuck;
        failing.fail(true);
        panic!("the handler panics, and the clock with it");
    });
    clock.fail(false);
    let waker = Arc::new(CountingWaker::default());
    let Poll::Ready(Ok(held)) = poll(&mut old, &waker) else {
        panic!("the old waiter got the permit");
    };
    assert_eq!(e.admission_stats().class("api").unwrap().queue_len, 0);
    assert_still_standing(&e, &advance);
    drop(held);
}

/// A reload takes the queue settings away for a long while, then gives them back: what CoDel
/// learned before is stale, and a new waiter gets its whole `max_wait`.
#[test]
fn a_verdict_does_not_outlive_a_long_spell_without_a_queue() {
    let (e, clock) = support::manual_engine(codel_policy(900));
    let advance = |d| clock.advance(d);
    let api = e.class("api").unwrap();
    let _stuck = e.try_admit(&AdmitRequest::new(api, id(0))).unwrap();
    let waiters = standing_with_old_waiters(&e, &advance);
    let no_queue = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(1)))
        .build()
        .unwrap();
    e.reload(no_queue).unwrap();
    clock.advance(Duration::from_millis(1));
    drop(waiters);
    clock.advance(Duration::from_secs(5));
    e.reload(codel_policy(900)).unwrap();
    assert_eq!(patience(&e, &advance, 100), None, "the whole max_wait");
}

/// A future dropped (not while unwinding) just as it was granted a permit, while the clock
/// panics: the permit it gives back still reaches the next waiter, and the clock's panic goes on
/// to the caller.
#[test]
fn a_permit_given_back_with_a_panicking_clock_reaches_the_next_waiter() {
    use std::sync::atomic::Ordering;
    let (e, clock) = failing_engine();
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

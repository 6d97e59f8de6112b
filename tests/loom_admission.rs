//! Model-checked concurrency tests of admission control.
//!
//! Like `tests/loom.rs`, these only build with the crate's own cfg:
//!
//! ```text
//! RUSTFLAGS="--cfg costguard_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom_admission
//! ```
//!
//! Each model is small (two or three threads, a handful of admissions) and checks one invariant.
//! Engines are built inside the model on a [`ManualClock`]. Only [`Engine::try_admit`] and
//! [`Engine::admit_async`] are used: the blocking [`Engine::admit`] parks the thread, which loom cannot
//! see. Under loom the engine starts no waiter timer either, so a model that needs waiters expired
//! advances the clock and calls [`Engine::expire_waiters`] itself.
//!
//! One invariant is out of loom's reach: a waiter joining the queue as the last permit is released
//! never misses it. The waiter's count and the limiter's word form a store-buffering pair that is
//! correct only because all four accesses are `SeqCst`, and loom models `SeqCst` as acquire/release
//! (see `WaitQueue::waiting`).
//!
//! An [`AdmitFuture`](costguard::AdmitFuture) borrows its engine, and a loom thread must be
//! `'static`, so a model that races something against a waiter future keeps the future on the
//! model's own thread and spawns the other side.
#![cfg(costguard_loom)]

use costguard::clock::ManualClock;
use costguard::{
    AdmitRequest, Admitted, Class, Engine, Overrides, Policy, Priority, Reason, RequestId,
};
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

fn id(n: u64) -> RequestId {
    RequestId::from_u64(n)
}

/// An engine over `policy` on a manual clock, and the clock. Must be called inside `loom::model`.
fn engine(policy: Policy) -> (Engine, ManualClock) {
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap();
    (engine, clock)
}

/// In flight and waiting in class `api`, as the engine reports them.
fn in_flight_and_queued(engine: &Engine) -> (u32, u32) {
    let stats = engine.admission_stats();
    let api = stats.class("api").unwrap();
    (api.in_flight, api.queue_len)
}

/// The current concurrency limit of class `api`.
fn limit(engine: &Engine) -> u32 {
    engine.admission_stats().class("api").unwrap().limit
}

/// A side record of the grants the model's threads hold, in one word: how many are held (low 32
/// bits) and how many releases have begun (high 32 bits).
///
/// A thread counts a grant only after `try_admit` returned it, and uncounts it before dropping it,
/// so the count never exceeds the true number in flight. Reading the word before and after an
/// admission also tells whether some grant was held during the whole call: one was counted before,
/// and no release began until after.
struct Ledger(AtomicU64);

const RELEASE: u64 = 1 << 32;

impl Ledger {
    fn new(held: u64) -> Self {
        Ledger(AtomicU64::new(held))
    }

    fn read(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts a grant just admitted; returns how many are now held.
    fn enter(&self) -> u64 {
        (self.0.fetch_add(1, Ordering::SeqCst) + 1) & (RELEASE - 1)
    }

    /// Uncounts a grant about to be dropped.
    fn leave(&self) {
        self.0.fetch_add(RELEASE - 1, Ordering::SeqCst);
    }

    /// Whether a grant counted at `before` was still held at `after`.
    fn held_throughout(before: u64, after: u64) -> bool {
        before & (RELEASE - 1) > 0 && before >> 32 == after >> 32
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// Acquire and release conserve permits, and each priority fills only its share of the limit.
///
/// Headroom is what keeps critical and normal work running under overload: background work (share
/// 0.5 of a limit of 2) may only start while nothing else runs. Two background requests and one
/// normal request race through `try_admit` and drop. Counted from the outside, nothing ever has more
/// than 2 in flight, two background grants are never held together, no background request is
/// admitted while another grant is held during its whole admission, and the normal request, which
/// can never meet more than one grant, is always admitted. Once all are dropped the engine reports
/// nothing in flight: no permit lost or minted by racing CAS loops.
#[test]
fn concurrency_and_headroom_conserve_permits() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| a.concurrency(2).headroom(Priority::Background, 0.5))
            })
            .build()
            .unwrap();
        let (engine, _clock) = engine(policy);
        let api = engine.class("api").unwrap();
        let ledger = Arc::new(Ledger::new(0));
        let background_held = Arc::new(AtomicUsize::new(0));

        let spawn = |n: u64, priority: Priority| {
            let engine = engine.clone();
            let ledger = Arc::clone(&ledger);
            let background_held = Arc::clone(&background_held);
            thread::spawn(move || {
                let background = priority == Priority::Background;
                let before = ledger.read();
                let request = AdmitRequest::new(api, id(n)).priority(priority);
                let Ok(grant) = engine.try_admit(&request) else {
                    assert!(background, "a {priority:?} request was refused");
                    return false;
                };
                if background {
                    assert!(
                        !Ledger::held_throughout(before, ledger.read()),
                        "background admitted while another request was in flight"
                    );
                    let together = background_held.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(together, 1, "two background requests in flight at once");
                }
                let held = ledger.enter();
                assert!(held <= 2, "{held} in flight over a limit of 2");
                ledger.leave();
                if background {
                    background_held.fetch_sub(1, Ordering::SeqCst);
                }
                drop(grant);
                true
            })
        };
        let handles = [
            spawn(1, Priority::Background),
            spawn(2, Priority::Background),
            spawn(3, Priority::Normal),
        ];
        let admitted = handles
            .into_iter()
            .map(|h| u32::from(h.join().unwrap()))
            .sum::<u32>();
        let stats = engine.admission_stats();
        let api = stats.class("api").unwrap();
        assert_eq!(api.in_flight, 0, "a permit was lost or minted");
        assert_eq!(api.counts.admitted, u64::from(admitted));
    });
}

/// A class of one permit with a queue of one, a grant held and an async waiter already queued
/// (polled once, pending). Must be called inside `loom::model`.
fn held_permit_and_waiter(max_wait: Duration) -> (Engine, ManualClock, Class, Admitted) {
    let policy = Policy::builder()
        .class("api", |c| {
            c.admission(|a| a.concurrency(1).queue(1, max_wait))
        })
        .build()
        .unwrap();
    let (engine, clock) = engine(policy);
    let api = engine.class("api").unwrap();
    let held = engine.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
    (engine, clock, api, held)
}

/// A permit handed to a waiter as it is cancelled is never stranded.
///
/// Releasing the last permit hands it straight to the queued waiter (dispatch takes the permit on
/// its behalf, then flips its state to granted), while the waiter's owner drops the future. Whoever
/// loses the race on the waiter's state word must give the permit back: the releaser if the waiter
/// left first, the future's drop if the permit was already handed over. Otherwise the class would
/// run one permit short forever. Afterwards nothing is in flight and nobody is queued.
#[test]
fn permit_handed_to_cancelled_waiter_is_not_stranded() {
    loom::model(|| {
        let (engine, _clock, api, held) = held_permit_and_waiter(Duration::from_millis(100));
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut waiter = engine.admit_async(AdmitRequest::new(api, id(2)));
        assert!(poll_once(&mut waiter, &waker).is_pending());
        assert_eq!(in_flight_and_queued(&engine), (1, 1));

        let releaser = thread::spawn(move || drop(held));
        // This thread cancels the waiter.
        drop(waiter);
        releaser.join().unwrap();

        assert_eq!(
            in_flight_and_queued(&engine),
            (0, 0),
            "(in flight, queued) after the race: a permit or a waiter was stranded"
        );
        // The permit is really free: the next request gets it.
        let next = engine.try_admit(&AdmitRequest::new(api, id(3)));
        assert!(next.is_ok(), "the only permit is gone: {next:?}");
    });
}

/// A permit handed to a waiter as its wait times out is either used or given back, never both or
/// neither.
///
/// Releasing the last permit hands it to the queued waiter while the clock passes the waiter's
/// deadline and `expire_waiters` runs. Whichever wins the waiter's state word decides the outcome:
/// polled again, the future is either admitted (holding the one permit) or refused with a queue
/// timeout (holding none). Either way it was woken, and the queue is empty.
#[test]
fn permit_handed_to_expiring_waiter_is_used_or_returned() {
    loom::model(|| {
        let max_wait = Duration::from_millis(100);
        let (engine, clock, api, held) = held_permit_and_waiter(max_wait);
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut waiter = engine.admit_async(AdmitRequest::new(api, id(2)));
        assert!(poll_once(&mut waiter, &waker).is_pending());

        let releaser = thread::spawn(move || drop(held));
        // This thread plays the waiter timer.
        clock.advance(max_wait * 2);
        engine.expire_waiters();
        releaser.join().unwrap();

        assert_eq!(
            in_flight_and_queued(&engine).1,
            0,
            "the waiter is still queued"
        );
        match poll_once(&mut waiter, &waker) {
            Poll::Ready(Ok(grant)) => {
                assert_eq!(
                    in_flight_and_queued(&engine).0,
                    1,
                    "admitted, but not holding exactly the one permit"
                );
                drop(grant);
            }
            Poll::Ready(Err(verdict)) => {
                assert_eq!(verdict.reason(), Reason::QueueTimeout, "{verdict:?}");
                assert_eq!(
                    in_flight_and_queued(&engine).0,
                    0,
                    "timed out, but its permit was not given back"
                );
            }
            Poll::Pending => panic!("the waiter is neither admitted nor timed out"),
        }
        assert!(
            wakes.0.load(Ordering::SeqCst) >= 1,
            "the waiter's wait ended without a wake"
        );
        drop(waiter);
        assert_eq!(in_flight_and_queued(&engine), (0, 0));
    });
}

/// A permit handed to a waiter as the waiter itself finds its deadline passed (polled after it,
/// with no timer having run) is either used or given back.
///
/// The releaser may hand the permit over while the waiter's own poll, past its deadline, tries to
/// leave the queue: if it leaves first, the releaser keeps the permit free; if the permit came
/// first, the poll must take it, never time out with it held.
#[test]
fn permit_handed_to_a_waiter_timing_itself_out_is_used_or_returned() {
    loom::model(|| {
        let max_wait = Duration::from_millis(100);
        let (engine, clock, api, held) = held_permit_and_waiter(max_wait);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut waiter = engine.admit_async(AdmitRequest::new(api, id(2)));
        assert!(poll_once(&mut waiter, &waker).is_pending());
        // The release races the deadline passing and the waiter's own poll after it. (A release
        // that reads the clock after the deadline expires the waiter instead of granting it.)
        let releaser = thread::spawn(move || drop(held));
        clock.advance(max_wait * 2);
        let result = poll_once(&mut waiter, &waker);
        releaser.join().unwrap();
        match result {
            Poll::Ready(Ok(grant)) => {
                assert_eq!(in_flight_and_queued(&engine), (1, 0));
                drop(grant);
            }
            Poll::Ready(Err(verdict)) => assert_eq!(verdict.reason(), Reason::QueueTimeout),
            Poll::Pending => panic!("still pending past its deadline"),
        }
        drop(waiter);
        assert_eq!(
            in_flight_and_queued(&engine),
            (0, 0),
            "(in flight, queued): a permit or a waiter was stranded"
        );
        assert!(engine.try_admit(&AdmitRequest::new(api, id(3))).is_ok());
    });
}

/// A waiter whose patience runs out as it joins the queue, expired by a release's dispatch while
/// its own last look takes the permit that release freed, holds exactly that one permit.
///
/// A waiter takes one last look at the limiter right after joining the queue (a permit freed just
/// before it became visible would otherwise be missed). Here its patience is one nanosecond, and
/// the release that frees the permit comes a nanosecond later: it dispatches the queue and expires
/// the waiter. If the last look then takes the permit and the waiter finds it cannot abandon its
/// place, it must tell an expiry (its permit is the one it just took) from a grant (it holds two,
/// and gives one back): giving one back after an expiry leaves a grant with no permit, and its
/// release underflows the limiter or frees another request's. Here one permit is held, the release
/// races the waiter's first poll, and whatever the interleaving, a grant holds exactly the one
/// permit and everything is back to zero at the end.
///
/// The release must land between the waiter's enqueue and its last look, inside one poll: that takes
/// three preemptions, one more than the other models need, so this one sets its own bound.
#[test]
fn a_waiter_expired_as_it_enqueues_holds_exactly_one_permit() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(model.preemption_bound.map_or(3, |b| b.max(3)));
    model.check(|| {
        let (engine, clock, api, held) = held_permit_and_waiter(Duration::from_secs(1));
        let no_time = Overrides::new().wall_time(Duration::from_nanos(1));
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let releaser = thread::spawn(move || {
            clock.advance(Duration::from_nanos(1));
            drop(held)
        });
        let mut waiter = engine.admit_async(AdmitRequest::new(api, id(2)).overrides(&no_time));
        let result = poll_once(&mut waiter, &waker);
        releaser.join().unwrap();
        match result {
            Poll::Ready(Ok(grant)) => {
                assert_eq!(
                    in_flight_and_queued(&engine),
                    (1, 0),
                    "a grant without its permit"
                );
                drop(grant);
            }
            Poll::Ready(Err(verdict)) => assert!(
                matches!(
                    verdict.reason(),
                    Reason::QueueTimeout | Reason::ConcurrencyLimit | Reason::InsufficientTime
                ),
                "{verdict:?}"
            ),
            Poll::Pending => {}
        }
        drop(waiter);
        assert_eq!(in_flight_and_queued(&engine), (0, 0));
        assert!(engine.try_admit(&AdmitRequest::new(api, id(3))).is_ok());
    });
}

/// Lowering the limit while permits are held lets no new request in above the new limit, and no
/// release underflows.
///
/// A reload (or an adaptive limit) may drop a class's limit below what is in flight right now; the
/// work already admitted keeps running, but nothing new may start until in-flight is under the new
/// limit, or the reload would not relieve the overload it was made for. One grant is held under a
/// limit of 2 while a reload lowers the limit to 1; one thread admits and drops, another drops the
/// held grant and then admits and drops. An admission that began after the reload was done must
/// find nothing else in flight and leave exactly 1 in flight; at the end nothing is in flight
/// (every release of a permit taken under the old limit landed, none twice) and the new limit holds.
#[test]
fn lowered_limit_admits_nothing_above_it() {
    let policy = |limit: u64| {
        Policy::builder()
            .class("api", |c| c.admission(|a| a.concurrency(limit)))
            .build()
            .unwrap()
    };
    loom::model(move || {
        let (engine, _clock) = engine(policy(2));
        let api = engine.class("api").unwrap();
        let held = engine.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
        let ledger = Arc::new(Ledger::new(1));
        let reloaded = Arc::new(AtomicBool::new(false));

        let admit_and_drop = {
            let engine = engine.clone();
            let ledger = Arc::clone(&ledger);
            let reloaded = Arc::clone(&reloaded);
            move |n: u64| {
                let after_reload = reloaded.load(Ordering::SeqCst);
                let before = ledger.read();
                let Ok(grant) = engine.try_admit(&AdmitRequest::new(api, id(n))) else {
                    return;
                };
                let in_flight = in_flight_and_queued(&engine).0;
                let counted = ledger.enter();
                if after_reload {
                    assert!(
                        !Ledger::held_throughout(before, ledger.read()),
                        "admitted over the lowered limit while another request was in flight"
                    );
                    assert_eq!(in_flight, 1, "in flight above the lowered limit of 1");
                    assert_eq!(counted, 1);
                }
                ledger.leave();
                drop(grant);
            }
        };
        let reloader = {
            let engine = engine.clone();
            let reloaded = Arc::clone(&reloaded);
            thread::spawn(move || {
                engine.reload(policy(1)).unwrap();
                reloaded.store(true, Ordering::SeqCst);
            })
        };
        let admitter = {
            let admit_and_drop = admit_and_drop.clone();
            thread::spawn(move || admit_and_drop(2))
        };
        let releaser = {
            let ledger = Arc::clone(&ledger);
            thread::spawn(move || {
                ledger.leave();
                drop(held);
                admit_and_drop(3);
            })
        };
        reloader.join().unwrap();
        admitter.join().unwrap();
        releaser.join().unwrap();

        assert_eq!(
            (in_flight_and_queued(&engine).0, limit(&engine)),
            (0, 1),
            "(in flight, limit) once every grant is dropped"
        );
        let one = engine.try_admit(&AdmitRequest::new(api, id(4))).unwrap();
        assert!(engine.try_admit(&AdmitRequest::new(api, id(5))).is_err());
        drop(one);
    });
}

/// A reload that leaves a priority a share of the limit that can never hold a permit refuses that
/// priority's waiters, including one joining the queue while the reload runs: its first try may
/// have decided to wait under the old policy, and the reload's own pass over the queue may have
/// come before it was queued. Whatever the interleaving, the waiter ends refused (shed, not to be
/// retried), never left queued for a permit it cannot get.
#[test]
fn a_waiter_whose_share_a_reload_takes_away_is_never_left_queued() {
    reload_racing_a_waiter(false, |outcome| {
        let verdict = outcome.as_ref().map(drop).unwrap_err();
        assert_eq!(verdict.reason(), Reason::Shed, "{verdict:?}");
        assert_eq!(verdict.retry(), costguard::Retry::Never, "{verdict:?}");
        1
    });
}

/// The same race with a reload that also turns shadow mode on: whatever the interleaving, the
/// waiter is admitted, as a first try under that policy is, never left queued.
#[test]
fn a_waiter_racing_a_reload_to_shadow_mode_is_admitted() {
    reload_racing_a_waiter(true, |outcome| {
        assert!(outcome.is_ok(), "{:?}", outcome.as_ref().err());
        2
    });
}

/// A background waiter (half of a limit of 2, with one permit held) racing a reload that leaves
/// background work a quarter of the limit (no permit), in shadow mode if `shadow`; `settled`
/// checks the waiter's outcome and returns how many permits are in flight while it is held.
fn reload_racing_a_waiter(shadow: bool, settled: fn(&Result<Admitted, costguard::Verdict>) -> u32) {
    let policy = move |background: f64, shadow: bool| {
        Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(2)
                        .headroom(Priority::Background, background)
                        .queue(4, Duration::from_secs(10))
                        .shadow(shadow)
                })
            })
            .build()
            .unwrap()
    };
    loom::model(move || {
        // Half of a limit of 2, taken: background work waits.
        let (engine, _clock) = engine(policy(0.5, false));
        let api = engine.class("api").unwrap();
        let held = engine.try_admit(&AdmitRequest::new(api, id(1))).unwrap();
        let reloader = {
            let engine = engine.clone();
            // A quarter of 2 is no permit.
            thread::spawn(move || engine.reload(policy(0.25, shadow)).unwrap())
        };
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let request = AdmitRequest::new(api, id(2)).priority(Priority::Background);
        let mut waiter = engine.admit_async(request);
        let first = poll_once(&mut waiter, &waker);
        reloader.join().unwrap();
        let outcome = match first {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => match poll_once(&mut waiter, &waker) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => panic!("a waiter stayed queued through the reload"),
            },
        };
        let in_flight = settled(&outcome);
        assert_eq!(in_flight_and_queued(&engine), (in_flight, 0));
        drop((outcome, held));
        assert_eq!(in_flight_and_queued(&engine), (0, 0));
    });
}

/// Per-key concurrency stays within its documented bound while keys contend for the table's only
/// slot, and eviction leaves nothing pinned.
///
/// The key table has one slot, so of two keys one owns it and the other is served by the shared
/// overflow entry; an idle key's slot is taken over by the next key that needs one. Each of two
/// threads admits its own key (limit 1 per key), tries two more admissions of the same key while
/// holding what it got, and drops. Per-key limits hold per entry: a key whose requests are on the
/// overflow entry when it claims a slot of its own may briefly have one limit's worth on each, so
/// counted per key from the outside a key never has more than twice its limit in flight (the class
/// limit and the overflow entry's own limit still hold). Afterwards both keys can be admitted again
/// at the same time (no pin leaked), and a key is still capped.
#[test]
fn key_eviction_keeps_per_key_concurrency() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| a.concurrency(4).per_key_concurrency(1).max_keys(1))
            })
            .build()
            .unwrap();
        let (engine, _clock) = engine(policy);
        let api = engine.class("api").unwrap();

        let spawn = |key: &'static [u8], n: u64| {
            let engine = engine.clone();
            thread::spawn(move || {
                // Only this thread admits `key`: a plain count is its side counter.
                let held = Cell::new(0);
                let admit = |n: u64| {
                    let grant = engine
                        .try_admit(&AdmitRequest::new(api, id(n)).key(key))
                        .ok()?;
                    let now = held.get() + 1;
                    held.set(now);
                    assert!(
                        now <= 2,
                        "key {:?} has {now} requests in flight, over twice its limit of 1",
                        String::from_utf8_lossy(key)
                    );
                    Some(grant)
                };
                // Three tries, one more than the bound: a bound that did not hold could show.
                let first = admit(n);
                let second = admit(n + 1);
                let third = admit(n + 2);
                for grant in [third, second, first].into_iter().flatten() {
                    held.set(held.get() - 1);
                    drop(grant);
                }
            })
        };
        let a = spawn(b"a", 10);
        let b = spawn(b"b", 20);
        a.join().unwrap();
        b.join().unwrap();

        assert_eq!(in_flight_and_queued(&engine).0, 0);
        let ga = engine.try_admit(&AdmitRequest::new(api, id(1)).key(b"a"));
        let gb = engine.try_admit(&AdmitRequest::new(api, id(2)).key(b"b"));
        assert!(ga.is_ok(), "key a stays pinned: {ga:?}");
        assert!(gb.is_ok(), "key b stays pinned: {gb:?}");
        let again = engine.try_admit(&AdmitRequest::new(api, id(3)).key(b"a"));
        assert_eq!(
            again.map(drop).map_err(|v| v.reason()),
            Err(Reason::KeyConcurrency)
        );
    });
}

/// Two concurrent first requests of one new key, each holding its grant to the end of its thread:
/// per-key concurrency 1 admits one of them, whichever of the table's two slots each request
/// looks at first (neither is the overflow entry: the table has room for two entries).
#[test]
fn first_requests_of_a_new_key_meet_on_one_entry() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| a.concurrency(8).per_key_concurrency(1).max_keys(2))
            })
            .build()
            .unwrap();
        let (engine, _clock) = engine(policy);
        let api = engine.class("api").unwrap();
        let admitted = Arc::new(AtomicUsize::new(0));
        let spawn = |n: u64| {
            let (engine, admitted) = (engine.clone(), Arc::clone(&admitted));
            thread::spawn(move || {
                let grant = engine.try_admit(&AdmitRequest::new(api, id(n)).key(b"k"));
                if grant.is_ok() {
                    let now = admitted.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(now, 1, "two requests of one key in flight, its limit is 1");
                }
                // Held until both threads have tried.
                grant.ok()
            })
        };
        let (a, b) = (spawn(1), spawn(2));
        let grants = [a.join().unwrap(), b.join().unwrap()];
        assert_eq!(grants.iter().flatten().count(), 1);
    });
}

/// Keys of class `api` share one slot of the per-key table, each allowed one request an hour
/// (burst 1), 8 at once.
fn one_slot_one_an_hour() -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(8)
                    .per_key_concurrency(8)
                    .per_key_rate(1, Duration::from_secs(3600), 1)
                    .max_keys(1)
            })
        })
        .build()
        .unwrap()
}

/// Two concurrent first requests of one new key under a rate with a burst of 1 (one per hour):
/// exactly one conforms, however the fresh entry's creation and the charges interleave.
#[test]
fn a_new_keys_first_charges_are_never_lost() {
    loom::model(|| {
        let policy = one_slot_one_an_hour();
        let (engine, _clock) = engine(policy);
        let api = engine.class("api").unwrap();
        let spawn = |n: u64| {
            let engine = engine.clone();
            thread::spawn(move || {
                engine
                    .try_admit(&AdmitRequest::new(api, id(n)).key(b"k"))
                    .map(drop)
                    .is_ok()
            })
        };
        let (a, b) = (spawn(1), spawn(2));
        let conforming = [a.join().unwrap(), b.join().unwrap()];
        assert_eq!(
            conforming.iter().filter(|&&ok| ok).count(),
            1,
            "{conforming:?} with a burst of 1"
        );
    });
}

/// Key `a` (a rate of 1 an hour, burst 1) has an idle entry in the one slot it shares with key
/// `b`. A request of each races; then `a` tries once more at the same instant. Should `b` take the
/// slot over in the instant `a` pins it, charges it and leaves again, the key word reads as before
/// but for its epoch, and `b`'s compare-exchange fails: `a` keeps its charge, and is admitted at
/// most once in all.
#[test]
fn a_keys_rate_charge_survives_its_slot_being_taken_over() {
    loom::model(|| {
        let policy = one_slot_one_an_hour();
        let (engine, clock) = engine(policy);
        let api = engine.class("api").unwrap();
        drop(
            engine
                .try_admit(&AdmitRequest::new(api, id(1)).key(b"a"))
                .unwrap(),
        );
        clock.advance(Duration::from_secs(3600));
        let spawn = |n: u64, key: &'static [u8]| {
            let engine = engine.clone();
            thread::spawn(move || {
                engine
                    .try_admit(&AdmitRequest::new(api, id(n)).key(key))
                    .map(drop)
                    .is_ok()
            })
        };
        let (a, b) = (spawn(2, b"a"), spawn(3, b"b"));
        let first = a.join().unwrap();
        b.join().unwrap();
        let again = engine
            .try_admit(&AdmitRequest::new(api, id(4)).key(b"a"))
            .map(drop)
            .is_ok();
        assert!(!(first && again), "key a admitted twice with a burst of 1");
    });
}

/// A key taking over an idle slot while that slot's key admits and leaves again: every pin stays
/// counted on the entry its grant holds. Checked while key `b`'s grants are still held, so that a
/// lost pin shows as room for more: however many more of `b` are then admitted, `b` never has
/// more than twice its limit in flight (its slot and the overflow entry).
#[test]
fn a_slot_taken_over_keeps_every_pin_counted() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| a.concurrency(8).per_key_concurrency(1).max_keys(1))
            })
            .build()
            .unwrap();
        let (engine, _clock) = engine(policy);
        let api = engine.class("api").unwrap();
        let admit = move |engine: &Engine, key: &'static [u8], n: u64| {
            engine
                .try_admit(&AdmitRequest::new(api, id(n)).key(key))
                .ok()
        };
        let a = {
            let engine = engine.clone();
            thread::spawn(move || drop(admit(&engine, b"a", 1)))
        };
        let b = {
            let engine = engine.clone();
            thread::spawn(move || [admit(&engine, b"b", 2), admit(&engine, b"b", 3)])
        };
        a.join().unwrap();
        let mut held: Vec<Admitted> = b.join().unwrap().into_iter().flatten().collect();
        while let Some(grant) = admit(&engine, b"b", 4) {
            held.push(grant);
            assert!(
                held.len() <= 2,
                "{} of key b in flight, limit 1",
                held.len()
            );
        }
        drop(held);
        assert_eq!(in_flight_and_queued(&engine), (0, 0));
    });
}

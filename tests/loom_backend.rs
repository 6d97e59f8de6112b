//! Model-checked concurrency tests of dependency protection: breakers, retry budgets, bulkheads.
//!
//! Like `tests/loom.rs`, these only build with the crate's own cfg:
//!
//! ```text
//! RUSTFLAGS="--cfg costguard_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom_backend
//! ```
//!
//! Each model is small (two or three threads, one or two backend calls each) and checks one
//! invariant. Engines are built inside the model on a [`ManualClock`], which stands still unless a
//! model moves it, so nothing refills or expires behind the model's back.
#![cfg(costguard_loom)]

use costguard::backend::{Transition, TransitionKind};
use costguard::clock::ManualClock;
use costguard::policy::BackendBuilder;
use costguard::{
    Attempt, AttemptOutcome, Backend, Budget, Counter, Engine, Policy, Reason, RequestId, Retry,
    RetryDecision,
};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use std::sync::Arc;
use std::time::Duration;

/// An engine with one class `api` (30 s, `retries` retries per request tree) and one backend `db`
/// set up by `setup`, on a manual clock; the engine, the clock, the backend and a root budget.
/// Must be called inside `loom::model`.
fn fixture(
    retries: u64,
    setup: impl FnOnce(BackendBuilder) -> BackendBuilder,
) -> (Engine, ManualClock, Backend, Budget) {
    let policy = Policy::builder()
        .class("api", |c| {
            c.wall_time(Duration::from_secs(30)).retries(retries)
        })
        .backend("db", setup)
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap();
    let db = engine.backend("db").unwrap();
    let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
    (engine, clock, db, budget)
}

/// The kinds of transitions the hook saw (those `keep` keeps), in order.
type TransitionLog = Arc<std::sync::Mutex<Vec<TransitionKind>>>;

/// An engine under `policy` on a manual clock, logging the transitions `keep` keeps. Must be
/// called inside `loom::model`.
fn logged_engine(
    policy: Policy,
    keep: fn(&Transition) -> bool,
) -> (Engine, ManualClock, TransitionLog) {
    let clock = ManualClock::new();
    // The hook runs between the model's atomic operations, never across one: a std mutex is never
    // contended here.
    let log: TransitionLog = Arc::default();
    let sink = Arc::clone(&log);
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .on_transition(move |t| {
            if keep(t) {
                sink.lock().unwrap().push(t.kind)
            }
        })
        .build()
        .unwrap();
    (engine, clock, log)
}

/// Asks to retry a server error on `db` for `budget`: granted, or refused for the backend's retry
/// budget and for no other reason.
fn retry_granted(engine: &Engine, db: Backend, budget: &Budget) -> bool {
    match engine.retry(db, budget, AttemptOutcome::ServerError, 1) {
        RetryDecision::After(_) => true,
        RetryDecision::Stop(v) => {
            assert_eq!(v.reason(), Reason::RetryBudgetExhausted, "{v:?}");
            false
        }
    }
}

/// A half-open breaker lets exactly its configured number of probes through, however many callers
/// race for them, and their successes close it.
///
/// The half-open state is the backend's most fragile moment: it just failed, and the probes are the
/// only traffic it should see until it proves itself. Here the breaker opened on one failure, its
/// open time has passed, and three callers race through `begin_attempt` with `probes = 2`, holding
/// what they got. Exactly two get an attempt, both probes; the third is refused as `CircuitOpen`,
/// to come back later. A third probe would be load the breaker promised to keep away, and a probe
/// from a second probing period would split the successes between two generations so that the
/// probes' successes no longer close the breaker. Once the two probes succeed the breaker is closed
/// and the next attempt is an ordinary one.
#[test]
fn half_open_admits_exactly_the_configured_probes() {
    loom::model(|| {
        let (engine, clock, db, budget) = fixture(10, |b| {
            b.count("breaker.consecutive_failures", 1)
                .count("breaker.probes", 2)
                .duration("breaker.open_for", Duration::from_secs(1))
                .duration("breaker.ramp_up", Duration::ZERO)
                .fraction("retry.ratio", 0.0)
        });
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ServerError);
        assert_eq!(engine.backend_stats()[0].breaker, "open");
        // The open time is jittered between half and all of open_for.
        clock.advance(Duration::from_secs(1));

        let handles: Vec<_> = (0..3)
            .map(|_| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || {
                    // Owned: the attempt leaves the thread, and the budget clone with it ends.
                    engine
                        .begin_attempt(db, &budget, 0)
                        .map(Attempt::into_owned)
                        .map_err(|v| (v.reason(), v.retry()))
                })
            })
            .collect();
        let mut probes: Vec<Attempt<'static>> = Vec::new();
        for h in handles {
            match h.join().unwrap() {
                Ok(attempt) => {
                    assert!(attempt.is_probe(), "a half-open breaker let a non-probe in");
                    probes.push(attempt);
                }
                Err(refusal) => {
                    assert_eq!(refusal, (Reason::CircuitOpen, Retry::Later));
                }
            }
        }
        assert_eq!(
            probes.len(),
            2,
            "{} probes admitted with breaker.probes = 2",
            probes.len()
        );
        assert_eq!(engine.backend_stats()[0].breaker, "half_open");
        for probe in probes {
            probe.finish(AttemptOutcome::Success);
        }
        assert_eq!(
            engine.backend_stats()[0].breaker,
            "closed",
            "two successful probes did not close the breaker"
        );
        let next = engine.begin_attempt(db, &budget, 0).unwrap();
        assert!(!next.is_probe(), "a closed breaker handed out a probe");
        next.finish(AttemptOutcome::Success);
        assert_eq!(engine.backend_stats()[0].in_flight, 0);
    });
}

/// A caller that finds a new probing period's only slot taken never takes its probe for hung because
/// it read the previous period's deadline.
///
/// A probe hung past its deadline gives its slot to a new probing period, and the deadline shares
/// its word with the low bits of its period's generation: a caller that sees another period's
/// deadline takes it that the probes of the current one have timed out. So the winner of a new
/// period must publish its deadline before its slot. Here a first probe fails (the breaker opens
/// again, leaving that period's deadline, already passed, in place); once the open time is over,
/// two callers race with `probes = 1`. Whatever the interleaving, one becomes the probe and the
/// other is refused: a second probe would be a new period started over a probe that has not hung.
#[test]
fn a_new_period_publishes_its_probe_deadline_before_its_slot() {
    loom::model(|| {
        let (engine, clock, db, budget) = fixture(10, |b| {
            b.count("breaker.consecutive_failures", 1)
                .count("breaker.probes", 1)
                .duration("timeout", Duration::from_millis(100))
                .duration("breaker.open_for", Duration::from_secs(1))
                .duration("breaker.max_open_for", Duration::from_secs(1))
                .duration("breaker.ramp_up", Duration::ZERO)
                .fraction("retry.ratio", 0.0)
        });
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ServerError);
        clock.advance(Duration::from_secs(1));
        let probe = engine.begin_attempt(db, &budget, 0).unwrap();
        assert!(probe.is_probe());
        probe.finish(AttemptOutcome::ServerError);
        // Past the first probe's deadline and the second open time.
        clock.advance(Duration::from_secs(1));

        let handles: Vec<_> = (0..2)
            .map(|_| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || {
                    engine
                        .begin_attempt(db, &budget, 0)
                        .map(Attempt::into_owned)
                        .map_err(|v| (v.reason(), v.retry()))
                })
            })
            .collect();
        let mut probes = Vec::new();
        for h in handles {
            match h.join().unwrap() {
                Ok(attempt) => probes.push(attempt),
                Err(refusal) => assert_eq!(refusal, (Reason::CircuitOpen, Retry::Later)),
            }
        }
        assert_eq!(
            probes.len(),
            1,
            "{} probes with breaker.probes = 1",
            probes.len()
        );
    });
}

/// Retry tokens are conserved: every token deposited by a first attempt pays for at most one retry,
/// a refused retry costs nothing, and the request tree's retry count is exactly the retries granted.
///
/// The retry budget is what stops retries from multiplying load when a backend is already failing;
/// a lost update in its CAS loops would mint retries (or drop deposits), and a refused retry that
/// kept the tree's retry would starve the request of retries it never made. Each first attempt
/// deposits one whole token (`retry.ratio = 1`) into a budget that starts empty (no floor, and the
/// clock stands still, so nothing refills). One first attempt is made before the race; then one
/// thread makes a first attempt and asks to retry it while two others only ask to retry. Whatever
/// the interleaving, the two tokens pay for exactly two retries (a retry asked after its own deposit
/// only finds the budget empty once both tokens are spent), the third is refused for the retry
/// budget, the backend ends with no token (not a negative balance), and the tree's retry count is
/// two: the refused retry gave its retry back.
#[test]
fn retry_tokens_are_conserved() {
    loom::model(|| {
        let (engine, _clock, db, budget) = fixture(10, |b| {
            b.fraction("retry.ratio", 1.0)
                .count("retry.min_per_second", 0)
        });
        assert_eq!(engine.backend_stats()[0].retry_tokens, 0);
        // A first attempt, dropped unfinished: neutral for the breaker, but its deposit is made.
        let first_attempt = move |engine: &Engine, budget: &Budget| {
            drop(engine.begin_attempt(db, budget, 0).unwrap());
        };
        let retry = move |engine: &Engine, budget: &Budget| retry_granted(engine, db, budget);
        first_attempt(&engine, &budget);
        assert_eq!(engine.backend_stats()[0].retry_tokens, 1);

        let handles: Vec<_> = [true, false, false]
            .into_iter()
            .map(|deposits| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || {
                    if deposits {
                        first_attempt(&engine, &budget);
                    }
                    retry(&engine, &budget)
                })
            })
            .collect();
        let granted = handles
            .into_iter()
            .map(|h| u64::from(h.join().unwrap()))
            .sum::<u64>();
        let tokens = engine.backend_stats()[0].retry_tokens;
        assert_eq!(
            granted + tokens,
            2,
            "retries granted ({granted}) plus tokens left ({tokens}) != tokens deposited (2)"
        );
        assert_eq!(granted, 2, "a deposited token was left unspent");
        assert_eq!(
            budget.used(Counter::RETRIES),
            granted,
            "the tree's retry count differs from the retries granted"
        );
        assert!(!budget.is_cancelled(), "{:?}", budget.cancel_reason());
        // Spent: refused again, and the refusal still gives the tree's retry back.
        assert!(!retry(&engine, &budget));
        assert_eq!(budget.used(Counter::RETRIES), 2);
    });
}

/// What a reload's lower cap takes from the retry budget stays taken, whatever refill raced it.
///
/// A retry that collects the floor adds to the balance while a reload lowers the cap. Had the
/// adder used the cap it read before the reload, its addition could land after the reload's trim,
/// leaving the balance above the new cap (hidden while the cap stays low) for a later reload that
/// raises the cap to hand back. Ten seconds of a floor of 100 a second are due when a retry and a
/// reload to no floor (a cap of 10) race; then a reload raises the cap again at the same instant.
/// In every interleaving at most the new cap's 10 tokens remain, and nothing more comes back.
#[test]
fn what_a_lower_cap_takes_stays_taken_whatever_raced_it() {
    let policy = |per_second: u64| {
        Policy::builder()
            .class("api", |c| {
                c.wall_time(Duration::from_secs(3600)).retries(1000)
            })
            .backend("db", |b| {
                b.fraction("retry.ratio", 0.0)
                    .count("retry.min_per_second", per_second)
            })
            .build()
            .unwrap()
    };
    loom::model(move || {
        let clock = ManualClock::new();
        let engine = Engine::builder(policy(100))
            .clock(clock.clone())
            .build()
            .unwrap();
        let db = engine.backend("db").unwrap();
        let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
        clock.advance(Duration::from_secs(10));
        let retrier = {
            let (engine, budget) = (engine.clone(), budget.clone());
            thread::spawn(move || retry_granted(&engine, db, &budget))
        };
        engine.reload(policy(0)).unwrap();
        retrier.join().unwrap();
        let trimmed = engine.backend_stats()[0].retry_tokens;
        engine.reload(policy(100)).unwrap();
        let raised = engine.backend_stats()[0].retry_tokens;
        assert!(
            trimmed <= 10 && raised <= 10,
            "{trimmed} tokens under a cap of 10, {raised} once the cap was raised again"
        );
    });
}

/// A retry refused by the backend's retry budget never uses up the request tree's retries.
///
/// A request tree's retry allowance is shared by everything the request does, and running out of
/// it cancels the request (the refusal is final: `Retry::Never`). A retry the backend's budget
/// refuses was never made, so it must not count against the tree, not even for a moment: if it
/// held the tree's last retry while being refused, a concurrent retry of the same tree would be
/// refused for a retry nobody made, and the request cancelled with both its allowance and the
/// backend's token unspent. The tree allows one retry and the backend gets one token, deposited by
/// a first attempt racing with the retries: one thread makes that first attempt and then asks to
/// retry, another only asks to retry. Exactly one retry is granted, the token is spent, and the tree
/// counts exactly that retry, so if the request is cancelled, it is for the retry it really made.
#[test]
fn backend_refusal_never_uses_up_the_trees_retries() {
    loom::model(|| {
        let (engine, _clock, db, budget) = fixture(1, |b| {
            b.fraction("retry.ratio", 1.0)
                .count("retry.min_per_second", 0)
        });
        let handles: Vec<_> = [true, false]
            .into_iter()
            .map(|deposits| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || {
                    if deposits {
                        drop(engine.begin_attempt(db, &budget, 0).unwrap());
                    }
                    engine.retry(db, &budget, AttemptOutcome::ServerError, 1)
                })
            })
            .collect();
        let decisions: Vec<RetryDecision> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = decisions
            .iter()
            .filter(|d| matches!(d, RetryDecision::After(_)))
            .count() as u64;
        assert_eq!(
            granted,
            1,
            "one token and one tree retry, but {granted} retries granted: {decisions:?}, \
             request cancelled: {:?}",
            budget.cancel_reason()
        );
        assert_eq!(budget.used(Counter::RETRIES), 1);
        assert_eq!(engine.backend_stats()[0].retry_tokens, 0);
    });
}

/// Two threads begin an attempt and finish it (one reports its connection first, one does not),
/// under a connect cap of 1 set by `setup`; a refused attempt must be refused for `refusal`. A side
/// counter, raised only after `begin_attempt` returned and lowered before the attempt connects or
/// ends, is never above the true number of connection attempts in progress, so seeing it at 2
/// proves the cap was broken. Afterwards nothing
/// is connecting or in flight, on the backend or on any host. The attempts end with a client error:
/// the backend answered, and the breakers (not what this checks) stay out of it.
fn connect_cap_model(setup: fn(BackendBuilder) -> BackendBuilder, refusal: Reason) {
    connect_cap_model_after(setup, |_, _, _, _| {}, refusal);
}

/// [`connect_cap_model`], with `prepare` run on the fresh engine (its clock, backend and root
/// budget) before the two threads start.
fn connect_cap_model_after(
    setup: fn(BackendBuilder) -> BackendBuilder,
    prepare: fn(&Engine, &ManualClock, Backend, &Budget),
    refusal: Reason,
) {
    loom::model(move || {
        let (engine, clock, db, budget) = fixture(10, |b| setup(b).fraction("retry.ratio", 0.0));
        prepare(&engine, &clock, db, &budget);
        let connecting = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let engine = engine.clone();
                let budget = budget.clone();
                let connecting = Arc::clone(&connecting);
                thread::spawn(move || {
                    let mut attempt = match engine.begin_attempt(db, &budget, 0) {
                        Ok(attempt) => attempt,
                        Err(v) => {
                            assert_eq!(v.reason(), refusal, "{v:?}");
                            return false;
                        }
                    };
                    let now = connecting.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= 1, "{now} attempts held at once under a cap of 1");
                    connecting.fetch_sub(1, Ordering::SeqCst);
                    // One attempt reports its connection, the other ends while still connecting
                    // (both permits come back at once).
                    if i == 0 {
                        attempt.connected();
                    }
                    attempt.finish(AttemptOutcome::ClientError);
                    true
                })
            })
            .collect();
        let made = handles
            .into_iter()
            .map(|h| u64::from(h.join().unwrap()))
            .sum::<u64>();
        assert!(made >= 1, "both attempts refused");
        let stats = &engine.backend_stats()[0];
        assert_eq!(
            (stats.connecting, stats.in_flight),
            (0, 0),
            "(connecting, in flight) after every attempt finished: a permit was lost or kept"
        );
        for host in &stats.hosts {
            assert_eq!(
                (host.connecting, host.in_flight),
                (0, 0),
                "(connecting, in flight) on {}",
                host.host
            );
        }
        assert_eq!(stats.outcome("client_error"), made);
    });
}

/// Connection attempts in progress to one host never exceed its connect cap, and every permit comes
/// back.
///
/// This is the 2016 outage in miniature: threads piling up in `connect()` to one broken host. With
/// one host and `max_connecting_per_host = 1` (the backend-wide cap is higher, so the host's is the
/// one that binds), the second of two racing attempts finds no free host and is refused as
/// `NoHealthyHost`, giving back the backend permits it had already taken.
#[test]
fn connect_cap_per_host_is_never_exceeded() {
    connect_cap_model(
        |b| {
            b.hosts(&["h1"])
                .count("max_connecting", 4)
                .count("max_connecting_per_host", 1)
        },
        Reason::NoHealthyHost,
    );
}

/// Connection attempts in progress to a backend never exceed its connect cap, and every permit comes
/// back.
///
/// The backend-wide cap bounds the threads stuck connecting to a backend however its load is spread
/// over hosts (here it has none). With `max_connecting = 1`, the second of two racing attempts is
/// refused as `ConnectLimit` and holds nothing: both caps are checked in one step.
#[test]
fn connect_cap_per_backend_is_never_exceeded() {
    connect_cap_model(|b| b.count("max_connecting", 1), Reason::ConnectLimit);
}

/// Calls in flight to a backend never exceed its in-flight cap, and every permit comes back.
///
/// The in-flight count shares one atomic word with the connection attempts: with `max_in_flight = 1`
/// (and room for more connection attempts), the second of two racing attempts is refused as
/// `BulkheadFull` and holds nothing. The side counter of the model is lowered before the first
/// attempt reports its connection, while it still holds its call permit, so it can only undercount
/// calls in flight: seeing it at 2 still proves the cap was broken.
#[test]
fn in_flight_cap_per_backend_is_never_exceeded() {
    connect_cap_model(
        |b| b.count("max_in_flight", 1).count("max_connecting", 4),
        Reason::BulkheadFull,
    );
}

/// A probe that finishes while another caller takes a probe slot neither loses that slot nor hands
/// out an extra one: however the race goes, the period admits exactly `probes` probes in all.
///
/// A half-open breaker counts the probes of its period in its word. A success keeps its slot (it
/// counts towards closing), and `release_probe` gives one back when a caller won a slot but was
/// then refused by a bulkhead, while others are being taken. A finish that wrote a word computed
/// from a stale read would erase a slot taken in between, and the breaker would let a third probe at
/// a backend it promised to spare; a refused caller that kept its slot would leave the breaker
/// waiting for a probe that never runs, and with every slot leaked, it could never close again
/// (until the probe timeout). Here `probes = 2` and one connection attempt at a time
/// (`max_connecting = 1`): one probe is begun before the race; one thread reports its connection
/// and finishes it with a success while another begins an attempt, which either finds the connect
/// permit still held (and is refused as `ConnectLimit`, giving its slot back) or becomes a probe.
/// Then as many probes are begun as the breaker allows, each connecting at once: with the racer's,
/// exactly one more probe than the first.
#[test]
fn probe_slots_are_neither_lost_nor_duplicated() {
    loom::model(|| {
        let (engine, clock, db, budget) = fixture(10, |b| {
            b.count("breaker.consecutive_failures", 1)
                .count("breaker.probes", 2)
                .count("max_connecting", 1)
                .duration("breaker.open_for", Duration::from_secs(1))
                .duration("breaker.ramp_up", Duration::ZERO)
                .fraction("retry.ratio", 0.0)
        });
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ServerError);
        clock.advance(Duration::from_secs(1));
        let first = engine.begin_attempt(db, &budget, 0).unwrap().into_owned();
        assert!(first.is_probe());

        let finisher = thread::spawn(move || {
            let mut first = first;
            first.connected();
            first.finish(AttemptOutcome::Success);
        });
        let racer = {
            let engine = engine.clone();
            let budget = budget.clone();
            thread::spawn(move || match engine.begin_attempt(db, &budget, 0) {
                Ok(mut attempt) => {
                    attempt.connected();
                    Ok(attempt.into_owned())
                }
                Err(v) => Err((v.reason(), v.retry())),
            })
        };
        finisher.join().unwrap();
        let mut probes: Vec<Attempt<'static>> = Vec::new();
        match racer.join().unwrap() {
            Ok(attempt) => probes.push(attempt),
            Err(refusal) => assert_eq!(refusal, (Reason::ConnectLimit, Retry::Later)),
        }
        // One more than the breaker may allow, to see it refuse.
        for _ in 0..3 {
            match engine.begin_attempt(db, &budget, 0) {
                Ok(mut attempt) => {
                    attempt.connected();
                    probes.push(attempt.into_owned());
                }
                Err(v) => {
                    assert_eq!((v.reason(), v.retry()), (Reason::CircuitOpen, Retry::Later));
                    break;
                }
            }
        }
        assert!(
            probes.iter().all(Attempt::is_probe),
            "a half-open breaker let a non-probe in"
        );
        assert_eq!(
            probes.len(),
            1,
            "{} probes after the first with breaker.probes = 2",
            probes.len()
        );
    });
}

/// The floor of a retry budget is earned once per stretch of time, however many retries race to
/// collect it.
///
/// `retry.min_per_second` lets a quiet service retry at all, and the budget starts with one second
/// of it; whoever first asks for a retry after time has passed claims the floor earned since the
/// last refill, by a compare-exchange on the refill time. If two threads could both claim the same
/// second, every burst of concurrent retries after a pause would mint extra tokens, and the floor
/// would grow with the number of retrying threads: the retry storm it exists to cap. Here the floor
/// is one retry per second and first attempts deposit nothing; one second passes, two threads race
/// to retry, and then the main thread retries until it is refused. Whatever the interleaving,
/// exactly two retries are granted in all: the second the budget started with and the one earned.
#[test]
fn retry_floor_is_refilled_once_per_stretch_of_time() {
    loom::model(|| {
        let (engine, clock, db, budget) = fixture(10, |b| {
            b.fraction("retry.ratio", 0.0)
                .count("retry.min_per_second", 1)
        });
        let retry =
            move |engine: &Engine, budget: &Budget| u64::from(retry_granted(engine, db, budget));
        assert_eq!(engine.backend_stats()[0].retry_tokens, 1);
        clock.advance(Duration::from_secs(1));

        let handles: Vec<_> = (0..2)
            .map(|_| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || retry(&engine, &budget))
            })
            .collect();
        let mut granted = handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>();
        // Whatever is left, at the same instant: nothing more is earned.
        for _ in 0..2 {
            granted += retry(&engine, &budget);
        }
        assert_eq!(
            granted, 2,
            "{granted} retries granted from one second of floor at the start and one earned"
        );
        assert_eq!(engine.backend_stats()[0].retry_tokens, 0);
    });
}

/// A retry the request tree refuses gives the backend's token back.
///
/// `Engine::retry` withdraws the backend's token before it charges the tree (a tree's refusal is
/// final, so the tree must never be charged for a retry the backend then refuses). The price is
/// that a tree's refusal must return the token: a token kept for a retry that never happened
/// would be lost to every other request, and a burst of requests at the end of their retries would
/// drain the backend's budget for the requests that still have some. Here the backend has two
/// tokens (two seconds of floor, and the clock stands still) and the tree one retry; two threads of
/// the request race to retry, so both can hold a token at once. One retry is granted, the other
/// refused by the tree (`LimitExceeded`, never to retry), and one token is left, which a second
/// request then gets.
#[test]
fn a_retry_the_tree_refuses_gives_its_token_back() {
    loom::model(|| {
        let (engine, _clock, db, budget) = fixture(1, |b| {
            b.fraction("retry.ratio", 0.0)
                .count("retry.min_per_second", 2)
        });
        assert_eq!(engine.backend_stats()[0].retry_tokens, 2);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let engine = engine.clone();
                let budget = budget.clone();
                thread::spawn(move || engine.retry(db, &budget, AttemptOutcome::ServerError, 1))
            })
            .collect();
        let decisions: Vec<RetryDecision> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = decisions
            .iter()
            .filter(|d| matches!(d, RetryDecision::After(_)))
            .count();
        assert_eq!(granted, 1, "{decisions:?}");
        for d in &decisions {
            if let RetryDecision::Stop(v) = d {
                assert_eq!(
                    (v.reason(), v.retry()),
                    (Reason::LimitExceeded, Retry::Never)
                );
            }
        }
        assert_eq!(
            engine.backend_stats()[0].retry_tokens,
            1,
            "the retry the tree refused kept the backend's token"
        );
        let other = engine.begin_by_name("api", RequestId::from_u64(2)).unwrap();
        assert!(
            matches!(
                engine.retry(db, &other, AttemptOutcome::ServerError, 1),
                RetryDecision::After(_)
            ),
            "another request could not retry on the token given back"
        );
    });
}

/// A host readmitted on probation has at most one connection attempt in progress, whatever its
/// connect cap, and every permit comes back.
///
/// Probation is how a host that was ejected for failing to connect earns its place back: one
/// connection attempt at a time until one succeeds, so a host that is still broken costs one stuck
/// thread, not `max_connecting_per_host` of them (the 2016 pile-up again, on the host just let back
/// in). Here the only host is ejected after one connect failure, for one second; the second passes,
/// and two threads race to begin an attempt with `max_connecting_per_host = 2` (the backend-wide cap
/// is higher still). The first to choose the host readmits it; the second of the two finds it on
/// probation with its one attempt in progress and is refused as `NoHealthyHost`. The attempts end
/// with a client error, which neither proves the host nor fails it: it stays on probation.
#[test]
fn connect_cap_on_probation_is_one() {
    connect_cap_model_after(
        |b| {
            b.hosts(&["h1"])
                .count("max_connecting", 4)
                .count("max_connecting_per_host", 2)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 1.0)
                .duration("ejection.base", Duration::from_secs(1))
        },
        |engine, clock, db, budget| {
            engine
                .begin_attempt(db, budget, 0)
                .unwrap()
                .finish(AttemptOutcome::ConnectFailure);
            let stats = &engine.backend_stats()[0];
            assert!(
                stats.hosts[0].ejected,
                "one connect failure did not eject h1"
            );
            assert_eq!(stats.breaker, "closed");
            clock.advance(Duration::from_secs(1));
        },
        Reason::NoHealthyHost,
    );
}

/// A host ejected again the moment it came back is not taken for the ejection that had just ended.
///
/// Readmission is lazy: whichever attempt next looks at an ejected host whose time is up brings it
/// back on probation. If that look read the end time and then, separately, the ejection word, a
/// second attempt could readmit the host, fail on it and eject it afresh between the two reads; the
/// first would then end the fresh ejection at once, sending traffic to a host that just failed on
/// probation. Here the only host was ejected for one second and the second has passed; the clock
/// then stands still. One thread begins an attempt and lets it go unfinished (neutral); the other
/// begins one and fails to connect, which, on probation, ejects the host again for two seconds. No
/// readmission may follow that ejection. (Whether the failure ejects at all may vary: in the instant
/// between a readmission and the return of its place among the ejected, the share looks full.)
#[test]
fn a_fresh_ejection_is_not_taken_for_the_one_that_ended() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(30)))
            .backend("db", |b| {
                b.hosts(&["h1"])
                    .count("ejection.consecutive_failures", 1)
                    .fraction("ejection.max_ejected", 1.0)
                    .duration("ejection.base", Duration::from_secs(1))
                    .count("breaker.consecutive_failures", 1000)
            })
            .build()
            .unwrap();
        let (engine, clock, log) = logged_engine(policy, |_| true);
        let db = engine.backend("db").unwrap();
        let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
        assert_eq!(*log.lock().unwrap(), [TransitionKind::Ejected]);
        clock.advance(Duration::from_secs(1));
        let (engine, budget) = (Arc::new(engine), Arc::new(budget));
        let looker = {
            let (engine, budget) = (Arc::clone(&engine), Arc::clone(&budget));
            thread::spawn(move || drop(engine.begin_attempt(db, &budget, 0)))
        };
        match engine.begin_attempt(db, &budget, 0) {
            Ok(attempt) => attempt.finish(AttemptOutcome::ConnectFailure),
            Err(v) => assert_eq!(v.reason(), Reason::NoHealthyHost, "{v:?}"),
        }
        looker.join().unwrap();
        let log = log.lock().unwrap();
        if let Some(again) = log
            .iter()
            .skip(1)
            .position(|k| *k == TransitionKind::Ejected)
        {
            assert!(
                !log[again + 2..].contains(&TransitionKind::Readmitted),
                "a fresh ejection was ended at once: {log:?}"
            );
            assert!(engine.backend_stats()[0].hosts[0].ejected);
        }
        let stats = &engine.backend_stats()[0];
        assert_eq!((stats.in_flight, stats.connecting), (0, 0));
    });
}

/// An attempt finds the free host of a pool even when another thread takes the hosts it had picked.
///
/// Three hosts of one call each. One thread begins an attempt with the host left to the engine;
/// the other takes two particular hosts (`begin_attempt_on`) and holds them, so one host is free at
/// every moment. If the second thread fills both hosts the first had picked as the less loaded pair
/// before it takes a permit, the first must go on to the third host rather than report that no
/// host can take it.
#[test]
fn a_free_host_is_found_when_the_picked_ones_fill_up() {
    loom::model(|| {
        let (engine, _clock, db, budget) = fixture(10, |b| {
            b.hosts(&["h0", "h1", "h2"])
                .count("max_in_flight_per_host", 1)
                .count("max_connecting_per_host", 1)
                .fraction("retry.ratio", 0.0)
        });
        let taker = {
            let (engine, budget) = (engine.clone(), budget.clone());
            thread::spawn(move || {
                // Either may be the one the other thread took: then it is refused, never sent to
                // another host.
                let on = |name| {
                    let host = engine.host(db, name).unwrap();
                    let attempt = engine.begin_attempt_on(host, &budget, 0).ok()?;
                    assert_eq!(attempt.host(), Some(name), "asked for {name}");
                    Some(attempt.into_owned())
                };
                let held = (on("h0"), on("h1"));
                drop(held);
            })
        };
        match engine.begin_attempt(db, &budget, 0) {
            Ok(attempt) => attempt.finish(AttemptOutcome::Success),
            Err(v) => panic!("refused with a host free: {v:?}"),
        }
        taker.join().unwrap();
        assert_eq!(engine.backend_stats()[0].in_flight, 0);
    });
}

/// An ejection lasts as long as its place in a run of ejections says, whatever raced it.
///
/// An ejection writes its end time before the compare-exchange that ejects. If that exchange fails
/// (here, because a success ended the host's probation meanwhile), the time it wrote belongs to no
/// ejection; the retry then ejects afresh, first of a new run, and must not inherit that longer
/// time. The host has been ejected twice in a row and is on probation with two attempts out: one
/// times out (a third ejection, 4 s) while the other succeeds (ending probation: a timeout after it
/// is a first ejection, 1 s). Either order is fine, but the length must match the run: a host still
/// out after one second must be on its third ejection, so the next one, after one more failure,
/// lasts 8 s rather than 2 s.
///
/// The three ejections before and after the race take more steps than loom's default allows a
/// model; this one raises that bound.
#[test]
fn an_ejection_lasts_as_its_run_says_whatever_raced_it() {
    let mut model = loom::model::Builder::new();
    model.max_branches = 20_000;
    model.check(|| {
        let (engine, clock, db, budget) = fixture(10, |b| {
            b.hosts(&["h1"])
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 1.0)
                .duration("ejection.base", Duration::from_secs(1))
                .duration("ejection.max", Duration::from_secs(60))
                .count("breaker.consecutive_failures", 1000)
        });
        let fail = |outcome| {
            engine
                .begin_attempt(db, &budget, 0)
                .unwrap()
                .finish(outcome)
        };
        fail(AttemptOutcome::ConnectFailure); // 1 s
        clock.advance(Duration::from_secs(1));
        fail(AttemptOutcome::ConnectFailure); // on probation: 2 s
        clock.advance(Duration::from_secs(2));
        let mut timing_out = engine.begin_attempt(db, &budget, 0).unwrap().into_owned();
        timing_out.connected(); // frees the one connection a host on probation may have
        let succeeding = engine.begin_attempt(db, &budget, 0).unwrap().into_owned();
        let other = thread::spawn(move || succeeding.finish(AttemptOutcome::Success));
        timing_out.finish(AttemptOutcome::Timeout);
        other.join().unwrap();
        let ejected = |engine: &Engine| engine.backend_stats()[0].hosts[0].ejected;
        assert!(ejected(&engine));
        clock.advance(Duration::from_secs(1));
        let third = ejected(&engine);
        clock.advance(Duration::from_secs(3));
        fail(AttemptOutcome::ConnectFailure); // back on probation, and out again
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            ejected(&engine),
            third,
            "an ejection that lasted {} s was not followed by one twice as long",
            if third { 4 } else { 1 }
        );
    });
}

/// A host's breaker that half-opens for an attempt the host then has no room for has still moved,
/// and the hook hears of it.
///
/// Host choice skips a host without room, but another thread can take the host's last connection
/// slot between that look and the attempt's own take, after the attempt's look at the breaker
/// half-opened it. The probe slot goes back; the transition has happened all the same, and a probe
/// that follows in the same period is no transition of its own. Here the only host's breaker is due
/// to half-open, and two threads begin attempts on it, one connection at a time: whatever the
/// order, a breaker that is no longer open was reported half-opened.
#[test]
fn a_host_breaker_half_opened_for_an_attempt_without_room_is_reported() {
    loom::model(|| {
        let policy = Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(30)))
            .backend("db", |b| {
                b.hosts(&["h1"])
                    .count("max_connecting_per_host", 1)
                    .count("breaker.consecutive_failures", 1)
                    .count("breaker.probes", 2)
                    .duration("breaker.open_for", Duration::from_secs(1))
                    .duration("breaker.max_open_for", Duration::from_secs(1))
                    .count("ejection.consecutive_failures", 1000)
            })
            .build()
            .unwrap();
        let (engine, clock, log) = logged_engine(policy, |t| t.host.is_some());
        let db = engine.backend("db").unwrap();
        let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ServerError);
        clock.advance(Duration::from_secs(1));
        let (engine, budget) = (Arc::new(engine), Arc::new(budget));
        let other = {
            let (engine, budget) = (Arc::clone(&engine), Arc::clone(&budget));
            thread::spawn(move || {
                engine
                    .begin_attempt(db, &budget, 0)
                    .map(Attempt::into_owned)
                    .ok()
            })
        };
        let mine = engine.begin_attempt(db, &budget, 0).ok();
        let theirs = other.join().unwrap();
        let state = engine.backend_stats()[0].hosts[0].breaker;
        let log = log.lock().unwrap().clone();
        assert_eq!(
            state != "open",
            log.contains(&TransitionKind::HalfOpened),
            "host breaker {state}, transitions {log:?}"
        );
        drop((mine, theirs));
    });
}

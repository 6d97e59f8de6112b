//! Hot-path benchmarks for dependency protection (backends).
//!
//! As in `benches/budget.rs` and `benches/admission.rs`, every subject is measured beside a baseline in
//! the same criterion group and the figures that matter are ratios, not absolute nanoseconds (two
//! shared cores, noisy neighbours). `benches/ratios.py` prints them; BENCHMARKS.md lists the goals and
//! the measured figures.
//!
//! Groups:
//! - `attempt`: `begin_attempt` + `finish(Success)` on a closed breaker, uncontended, for a backend
//!   without hosts and for one with a pool of three hosts, against a bare `fetch_add` + `fetch_sub`
//!   pair and against the `failsafe` crate's call-through (`CircuitBreaker::call` with its default
//!   configuration and a closure that succeeds). Untimed retry decisions between chunks keep the two
//!   backends' retry budgets from filling up, so every first attempt deposits into one with a
//!   compare-and-swap (the state that writes). More subjects show where the time
//!   goes: a retry attempt (`retry` = 1, which skips the deposit); a first attempt on a backend with
//!   default settings, whose retry budget is full as a healthy backend's is (the deposit only reads
//!   it); and the same round trip on an engine with a production clock instead of the
//!   `ManualClock` (`MonotonicClock`, and `TscClock`), beside `Instant::now()` alone;
//! - `attempt_contention`: two threads making attempts on one backend (each for its own request)
//!   against one thread, beside the same for failsafe's breaker and for a bare atomic pair, with two
//!   engines that share nothing as the measure of how much of a second core the run had; the same
//!   for a pool of three hosts, and for granted retry decisions on one backend's retry budget;
//! - `retry`: a granted retry decision (`Engine::retry` after a server error), with and without giving
//!   the tree's retry back (`Budget::refund`), against a bare compare-exchange on an `AtomicU64`;
//!   `budget_try_retry` (the charge on the request tree's retry allowance alone) shows what part of a
//!   decision is the tree's.
//!
//! The engine uses a `ManualClock` (except `begin_finish_no_hosts_monotonic` and `_tsc`) and every budget is
//! created once, outside the timed loop, with a real deadline (24 hours) so that the deadline
//! arithmetic runs as it does for a request.
//!
//! Run: `cargo bench --bench backend` then `python3 benches/ratios.py --bench backend`.

#[path = "common/contention.rs"]
mod contention;

use costguard::clock::{Clock, ManualClock, MonotonicClock, TscClock};
use costguard::{
    AttemptOutcome, Backend, Budget, Counter, Engine, Policy, RequestId, RetryDecision,
};
use criterion::{criterion_group, criterion_main, Criterion};
use failsafe::CircuitBreaker;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The coarse ticker of the production clocks, as `Engine::new` sets one up.
const TICK: Duration = Duration::from_millis(1);

/// A request deadline no run reaches, even with the retry group's clock moving one second per chunk.
const DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A tree retry allowance no run exhausts: at a few nanoseconds per retry it lasts for centuries.
const RETRIES: u64 = u64::MAX / 2;

/// Retries timed between two clock moves in the `retry` group (see `chunked`). The backend's retry
/// budget holds 1,000,000 tokens after each move, so a chunk never empties it.
const CHUNK: u64 = 250_000;

/// The engine and handles of one group.
struct Fixture {
    engine: Engine,
    clock: ManualClock,
    /// A backend without hosts.
    db: Backend,
    /// A backend with a pool of three hosts.
    pool: Backend,
    /// A backend with every setting at its default: its retry budget is full after a few hundred
    /// first attempts, as a healthy backend's is, so a first attempt's deposit only reads it.
    steady: Backend,
}

/// The policy every fixture uses: one class with a far deadline and an allowance of retries no run
/// exhausts; two backends with the default breaker, bulkheads and ejection settings, whose retry
/// budgets earn one token per first attempt and refill at the highest floor a policy accepts (the
/// attempt subjects drain them as they go, so that every first attempt deposits with a
/// compare-and-swap); and a backend with every
/// setting at its default.
fn policy() -> Policy {
    let retry_budget = |b: costguard::policy::BackendBuilder| {
        b.fraction("retry.ratio", 1.0)
            .count("retry.min_per_second", 1_000_000)
    };
    Policy::builder()
        .class("api", |c| c.wall_time(DEADLINE).retries(RETRIES))
        .backend("db", retry_budget)
        .backend("pool", |b| {
            retry_budget(b.hosts(&["db1001", "db1002", "db1003"]))
        })
        .backend("steady", |b| b)
        .build()
        .expect("bench policy")
}

impl Fixture {
    fn manual() -> Fixture {
        let clock = ManualClock::new();
        let engine = Engine::builder(policy())
            .clock(clock.clone())
            .build()
            .expect("bench engine");
        Fixture {
            db: engine.backend("db").expect("backend db"),
            pool: engine.backend("pool").expect("backend pool"),
            steady: engine.backend("steady").expect("backend steady"),
            engine,
            clock,
        }
    }

    /// An engine on a production clock (with its 1 ms ticker, as `Engine::new` sets one up) and its
    /// backend `db`.
    fn production(clock: impl Clock + 'static) -> (Engine, Backend) {
        let engine = Engine::builder(policy())
            .clock(clock)
            .build()
            .expect("bench engine");
        let db = engine.backend("db").expect("backend db");
        (engine, db)
    }
}

fn budget(engine: &Engine) -> Budget {
    engine
        .begin_by_name("api", RequestId::from_u64(1))
        .expect("bench budget")
}

/// Begins an attempt and finishes it as a success, consuming the outcome the way callers do (only
/// Ok/Err is looked at; the `Result` is not passed through `black_box`, which would copy it).
#[inline]
fn attempt_round_trip(engine: &Engine, backend: Backend, budget: &Budget, retry: u32) {
    let attempt = black_box(engine).begin_attempt(black_box(backend), black_box(budget), retry);
    black_box(attempt.is_ok());
    if let Ok(attempt) = attempt {
        attempt.finish(AttemptOutcome::Success);
    }
}

/// The baseline of an attempt: the two atomic read-modify-writes a permit needs at the very least
/// (the same as `admit/atomic_fetch_add_sub` in `benches/admission.rs`).
#[inline]
fn fetch_add_sub(cell: &AtomicU64) {
    let cell = black_box(cell);
    black_box(cell.fetch_add(1, Ordering::AcqRel));
    black_box(cell.fetch_sub(1, Ordering::AcqRel));
}

fn bench_attempt(c: &mut Criterion) {
    let mut g = c.benchmark_group("attempt");

    let cell = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add_sub", |b| b.iter(|| fetch_add_sub(&cell)));

    // The peer: failsafe's default breaker (success rate over a time window, or consecutive failures),
    // closed, calling a closure that succeeds.
    let breaker = failsafe::Config::new().build();
    g.bench_function("failsafe_call", |b| {
        b.iter(|| {
            let result = black_box(&breaker).call(|| Ok::<_, ()>(()));
            black_box(result.is_ok());
        })
    });

    let f = Fixture::manual();
    let request = budget(&f.engine);
    let drain = budget(&f.engine);
    g.bench_function("begin_finish_no_hosts", |b| {
        b.iter_custom(|iters| {
            depositing(&f.engine, (f.db, "db"), &drain, iters, || {
                attempt_round_trip(&f.engine, f.db, &request, 0)
            })
        })
    });
    g.bench_function("begin_finish_3_hosts", |b| {
        b.iter_custom(|iters| {
            depositing(&f.engine, (f.pool, "pool"), &drain, iters, || {
                attempt_round_trip(&f.engine, f.pool, &request, 0)
            })
        })
    });
    // A retry attempt does not deposit into the backend's retry budget (one CAS loop fewer).
    g.bench_function("begin_finish_no_hosts_retry1", |b| {
        b.iter(|| attempt_round_trip(&f.engine, f.db, &request, 1))
    });
    // The usual state of a healthy backend: its retry budget is full, so a first attempt's deposit
    // reads the balance and writes nothing. A thousand first attempts fill it (each deposits a tenth
    // of a token, from ten tokens to a hundred).
    for _ in 0..1_000 {
        attempt_round_trip(&f.engine, f.steady, &request, 0);
    }
    g.bench_function("begin_finish_no_hosts_full_retry_budget", |b| {
        b.iter(|| attempt_round_trip(&f.engine, f.steady, &request, 0))
    });

    // The production clock: every `clock.now()` of the round trip (begin, the budget's remaining time,
    // finish) is a precise reading, i.e. an `Instant::now()`, measured alone here.
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    let (mono, mono_db) = Fixture::production(MonotonicClock::with_ticker(TICK));
    let mono_request = budget(&mono);
    g.bench_function("begin_finish_no_hosts_monotonic", |b| {
        b.iter(|| attempt_round_trip(&mono, mono_db, &mono_request, 0))
    });
    // The same on the time-stamp counter: each precise reading about 10 ns instead of 25.
    let (tsc, tsc_db) = Fixture::production(TscClock::with_ticker(TICK));
    let tsc_request = budget(&tsc);
    g.bench_function("begin_finish_no_hosts_tsc", |b| {
        b.iter(|| attempt_round_trip(&tsc, tsc_db, &tsc_request, 0))
    });
    g.finish();

    // Every attempt was finished as a success (none was dropped unfinished), and the breakers stayed
    // closed.
    let production: Vec<_> = [&mono, &tsc]
        .iter()
        .flat_map(|e| e.backend_stats())
        .filter(|s| s.backend == "db")
        .collect();
    for stats in f.engine.backend_stats().iter().chain(&production) {
        assert_eq!((stats.in_flight, stats.connecting), (0, 0), "{stats:?}");
        assert_eq!(stats.breaker, "closed", "{stats:?}");
        assert_eq!(
            stats.outcome("success"),
            stats.outcomes.iter().map(|o| o.1).sum::<u64>()
        );
        assert!(stats.hosts.iter().all(|h| h.in_flight == 0), "{stats:?}");
    }
    // The default retry budget holds ten seconds of its floor of 10 a second: full.
    let steady = f.engine.backend_stats();
    let steady = steady
        .iter()
        .find(|s| s.backend == "steady")
        .expect("steady");
    assert_eq!(steady.retry_tokens, 100, "{steady:?}");
}

/// The baseline of a retry decision: one compare-exchange on an `AtomicU64` (a load, then the CAS of
/// that value plus one).
#[inline]
fn compare_exchange(cell: &AtomicU64) -> bool {
    let cell = black_box(cell);
    let seen = cell.load(Ordering::Relaxed);
    cell.compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Runs `op` `iters` times in chunks of `CHUNK` and returns the time of the chunks alone. Before each
/// chunk, untimed, the manual clock moves one second: the backend's retry budget earns a second of its
/// floor (1,000,000 tokens), which the first retry of the chunk collects; no retry is ever refused.
/// The baseline runs through the same loop.
fn chunked(clock: &ManualClock, iters: u64, mut op: impl FnMut()) -> Duration {
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        clock.advance(Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        timed += start.elapsed();
        left -= n;
    }
    timed
}

/// Runs `op` (first attempts on `backend`, named `name`) `iters` times in chunks of `CHUNK` and
/// returns the time of the chunks alone. After each chunk, untimed, the bench checks that every
/// attempt of the chunk deposited its token (the retry budget never filled), and as many retry
/// decisions on `backend` take those tokens back, so that the balance is where it started (without
/// them the budget would be full after about nine million first attempts, and every deposit after
/// that a load).
fn depositing(
    engine: &Engine,
    (backend, name): (Backend, &str),
    drain: &Budget,
    iters: u64,
    mut op: impl FnMut(),
) -> Duration {
    let tokens = || {
        engine
            .backend_stats()
            .iter()
            .find(|s| s.backend == name)
            .map(|s| s.retry_tokens)
            .expect("the bench backend")
    };
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let before = tokens();
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        timed += start.elapsed();
        left -= n;
        assert_eq!(tokens() - before, n, "a first attempt did not deposit");
        for _ in 0..n {
            assert!(
                retry_granted(engine, backend, drain),
                "the drain must take a token"
            );
        }
    }
    timed
}

/// A retry decision after a server error on the first attempt, which must be granted.
#[inline]
fn retry_granted(engine: &Engine, backend: Backend, budget: &Budget) -> bool {
    let decision = black_box(engine).retry(
        black_box(backend),
        black_box(budget),
        AttemptOutcome::ServerError,
        1,
    );
    matches!(decision, RetryDecision::After(_))
}

fn bench_retry(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry");
    let f = Fixture::manual();

    let cell = AtomicU64::new(0);
    g.bench_function("atomic_compare_exchange", |b| {
        b.iter_custom(|iters| {
            chunked(&f.clock, iters, || {
                black_box(compare_exchange(&cell));
            })
        })
    });

    let request = budget(&f.engine);
    assert!(
        retry_granted(&f.engine, f.db, &request),
        "the bench retry must be granted"
    );
    let refused = AtomicU64::new(0);
    g.bench_function("retry_granted", |b| {
        b.iter_custom(|iters| {
            chunked(&f.clock, iters, || {
                if !black_box(retry_granted(&f.engine, f.db, &request)) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });

    // The tree's part alone: the charge of one retry on the request's budget (one CAS loop).
    let tree = budget(&f.engine);
    g.bench_function("budget_try_retry", |b| {
        b.iter_custom(|iters| {
            chunked(&f.clock, iters, || {
                black_box(black_box(&tree).try_retry().is_ok());
            })
        })
    });

    // The same, giving the tree's retry back each time (a caller that retried and then did not need
    // it), so the tree's retry counter stays where it is.
    let refunded = budget(&f.engine);
    g.bench_function("retry_granted_refund", |b| {
        b.iter_custom(|iters| {
            chunked(&f.clock, iters, || {
                if !black_box(retry_granted(&f.engine, f.db, &refunded)) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                black_box(black_box(&refunded).refund(Counter::RETRIES, 1));
            })
        })
    });
    g.finish();
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a retry decision was refused"
    );
    assert_eq!(
        refunded.used(Counter::RETRIES),
        0,
        "every retry was given back"
    );
}

// ---------------------------------------------------------------------------------------------------
// Contention: the chunked, CPU-time-checked method of `benches/budget.rs`.

/// One contention benchmark of the `attempt_contention` group (see `common/contention.rs`).
fn threaded<F>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    chunk: u64,
    op: F,
) where
    F: Fn(usize) + Sync,
{
    contention::threaded(g, "attempt_contention", name, threads, chunk, op);
}

/// Chunk sizes: about 100 us per chunk uncontended, well inside one scheduler time slice (see
/// `benches/admission.rs`).
const CHUNK_ATOMIC: u64 = 20_000;
const CHUNK_FAILSAFE: u64 = 1_000;
const CHUNK_ATTEMPT: u64 = 2_000;

/// Two threads calling one backend, each for its own request: how much of a second core an attempt
/// keeps when every attempt writes the backend's shared state (its permit word, its outcome counter).
/// Beside it the same for failsafe's breaker (a mutex), the bare atomic pair, and two engines that
/// share nothing (how much of a second core the machine gave the run).
fn bench_contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attempt_contention");
    g.sample_size(50);

    let cell = AtomicU64::new(0);
    let pair = |_: usize| fetch_add_sub(&cell);
    threaded(&mut g, "fetch_add_sub_1thread", 1, CHUNK_ATOMIC, pair);
    threaded(
        &mut g,
        "fetch_add_sub_2threads_shared",
        2,
        CHUNK_ATOMIC,
        pair,
    );

    let breaker = failsafe::Config::new().build();
    let peer = |_: usize| {
        black_box(black_box(&breaker).call(|| Ok::<_, ()>(())).is_ok());
    };
    threaded(&mut g, "failsafe_1thread", 1, CHUNK_FAILSAFE, peer);
    threaded(&mut g, "failsafe_2threads_shared", 2, CHUNK_FAILSAFE, peer);

    let f = Fixture::manual();
    let budgets = [budget(&f.engine), budget(&f.engine)];
    let shared = |t: usize| attempt_round_trip(&f.engine, f.db, &budgets[t], 0);
    threaded(&mut g, "attempt_1thread", 1, CHUNK_ATTEMPT, shared);
    threaded(&mut g, "attempt_2threads_shared", 2, CHUNK_ATTEMPT, shared);

    // A pool of three hosts: the round-robin cursor and the hosts' permit words are shared too.
    let pooled = |t: usize| attempt_round_trip(&f.engine, f.pool, &budgets[t], 0);
    threaded(&mut g, "attempt_3hosts_1thread", 1, CHUNK_ATTEMPT, pooled);
    threaded(
        &mut g,
        "attempt_3hosts_2threads_shared",
        2,
        CHUNK_ATTEMPT,
        pooled,
    );

    // Retry decisions: the backend's retry budget is shared, each thread's request tree is its own.
    // Thread 0 moves the manual clock one second every `CHUNK` of its decisions, which earns the
    // budget a million tokens: the two threads spend at most half of that, so none is refused.
    let r = Fixture::manual();
    let trees = [budget(&r.engine), budget(&r.engine)];
    let refused = AtomicU64::new(0);
    let retry = |t: usize| {
        if t == 0 && RETRIES_SINCE_TICK.with(|n| n.replace(n.get() + 1)) % CHUNK == 0 {
            r.clock.advance(Duration::from_secs(1));
        }
        if !retry_granted(&r.engine, r.db, &trees[t]) {
            refused.fetch_add(1, Ordering::Relaxed);
        }
    };
    threaded(&mut g, "retry_1thread", 1, CHUNK_ATTEMPT, retry);
    threaded(&mut g, "retry_2threads_shared", 2, CHUNK_ATTEMPT, retry);

    let engines = [Fixture::manual(), Fixture::manual()];
    let own = [budget(&engines[0].engine), budget(&engines[1].engine)];
    threaded(
        &mut g,
        "attempt_2threads_separate_engines",
        2,
        CHUNK_ATTEMPT,
        |t| attempt_round_trip(&engines[t].engine, engines[t].db, &own[t], 0),
    );
    g.finish();
    for stats in f.engine.backend_stats() {
        assert_eq!(
            (stats.in_flight, stats.connecting, stats.breaker),
            (0, 0, "closed"),
            "every attempt of the contention group gave its permits back: {stats:?}"
        );
    }
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a contended retry decision was refused"
    );
}

thread_local! {
    /// Retry decisions of the contention group's thread 0 since the start (see `bench_contention`).
    static RETRIES_SINCE_TICK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_attempt, bench_retry, bench_contention
}
criterion_main!(benches);

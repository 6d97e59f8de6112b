//! Hot-path benchmarks for admission.
//!
//! As in `benches/budget.rs`, every subject is measured beside a baseline in the same criterion group
//! and the figures that matter are ratios, not absolute nanoseconds (two shared cores, noisy
//! neighbours). `benches/ratios.py` prints them; BENCHMARKS.md lists the goals and the measured figures.
//!
//! Groups:
//! - `admit`: `try_admit` + drop of the grant, uncontended, for a class with a concurrency limit no run
//!   reaches, against a bare `fetch_add` + `fetch_sub` pair and against tokio's
//!   `Semaphore::try_acquire` + drop of the permit; the same for a class with limits on ten counters
//!   (`try_admit_10_counters`), and on the production clocks, `MonotonicClock` and `TscClock`
//!   (`try_admit_monotonic`, `try_admit_tsc`: an admission reads the clock once); `begin` + drop (the
//!   budget alone) shows what part of an admission is the budget;
//! - `admit_keys`: per-key admission with 100,000 keys in the table (max_keys 131,072), a pseudo-random
//!   key among them against always the same key, with the table populated two ways: every key
//!   admitted and released once (`idle`: entries present, nothing in flight) and every key holding one
//!   grant (`held`: no entry can be taken over);
//! - `admit_contention`: aggregate throughput of two threads admitting to one class against one thread,
//!   with the same pair for a bare `fetch_add` + `fetch_sub` and for tokio's semaphore, plus two
//!   threads on two classes of one engine and on two engines as references. Timed only over chunks in
//!   which both threads had a core (see `run_threads`), as in `benches/budget.rs`; `ratios.py` calls a
//!   run not valid when the two-engine reference did not scale (the machine did not give it two cores).
//!
//! Run: `cargo bench --bench admission` then `python3 benches/ratios.py --bench admission`.

#[path = "common/contention.rs"]
mod contention;

use costguard::clock::{Clock, ManualClock, MonotonicClock, TscClock};
use costguard::{AdmitRequest, Admitted, Class, Engine, Policy, RequestId};
use criterion::{criterion_group, criterion_main, Criterion};
use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A class concurrency limit no benchmark reaches (100,000 grants are held at most).
const CONCURRENCY: u64 = 1_000_000;

/// Keys in the per-key benchmarks, and the table they live in.
const KEYS: u64 = 100_000;
const MAX_KEYS: u64 = 131_072;

/// An engine on a `ManualClock` with one admission class per name, each with a concurrency limit of
/// `CONCURRENCY` and, if `per_key`, per-key concurrency limits in a table of `MAX_KEYS` entries.
fn engine(classes: &[&str], per_key: bool) -> Engine {
    let mut policy = Policy::builder();
    for name in classes {
        policy = policy.class(name, |c| {
            c.admission(|a| {
                let a = a.concurrency(CONCURRENCY);
                if per_key {
                    // The largest per-key limit: a key holding one grant can always take another.
                    a.per_key_concurrency(u64::from(u16::MAX))
                        .max_keys(MAX_KEYS)
                } else {
                    a
                }
            })
        });
    }
    let policy = policy.build().expect("bench policy");
    Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .expect("bench engine")
}

/// The engine of `try_admit` on a production clock (with the 1 ms ticker `Engine::new` sets up).
fn production_engine(clock: impl Clock + 'static) -> Engine {
    let policy = Policy::builder()
        .class("api", |c| c.admission(|a| a.concurrency(CONCURRENCY)))
        .build()
        .expect("bench policy");
    Engine::builder(policy)
        .clock(clock)
        .build()
        .expect("bench engine")
}

/// Counters of the class in `try_admit_10_counters`.
const COUNTERS: usize = 10;

/// An engine on a `ManualClock` with one class, `parse`, with a concurrency limit of `CONCURRENCY`
/// and a limit on each of `counters` counters.
fn engine_with_counters(counters: usize) -> Engine {
    let names: Vec<String> = (0..counters).map(|i| format!("counter_{i}")).collect();
    let mut policy = Policy::builder();
    for name in &names {
        policy = policy.counter(name);
    }
    let policy = policy
        .class("parse", |c| {
            names
                .iter()
                .fold(c.admission(|a| a.concurrency(CONCURRENCY)), |c, name| {
                    c.limit(name, 1_000)
                })
        })
        .build()
        .expect("bench policy");
    Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .expect("bench engine")
}

fn class(engine: &Engine, name: &str) -> Class {
    engine.class(name).expect("bench class")
}

/// Admits and drops the grant, consuming the outcome the way callers do (only Ok/Err is looked at;
/// the `Result` is not passed through `black_box`, which would copy it).
#[inline]
fn admit_drop(engine: &Engine, request: &AdmitRequest<'_>) {
    let admitted = black_box(engine).try_admit(black_box(request));
    black_box(admitted.is_ok());
    drop(admitted);
}

/// The baseline: the two atomic read-modify-writes a permit needs at the very least.
#[inline]
fn fetch_add_sub(cell: &AtomicU64) {
    let cell = black_box(cell);
    black_box(cell.fetch_add(1, Ordering::AcqRel));
    black_box(cell.fetch_sub(1, Ordering::AcqRel));
}

#[inline]
fn tokio_acquire_drop(sem: &tokio::sync::Semaphore) {
    let permit = black_box(sem).try_acquire();
    black_box(permit.is_ok());
    drop(permit);
}

fn bench_admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit");

    let cell = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add_sub", |b| b.iter(|| fetch_add_sub(&cell)));

    let sem = tokio::sync::Semaphore::new(CONCURRENCY as usize);
    g.bench_function("tokio_semaphore_try_acquire", |b| {
        b.iter(|| tokio_acquire_drop(&sem))
    });

    let e = engine(&["api"], false);
    let api = class(&e, "api");
    let request = AdmitRequest::new(api, RequestId::from_u64(1));
    g.bench_function("try_admit", |b| b.iter(|| admit_drop(&e, &request)));

    // A class as services configure them: ten counters with limits (the replay's `parse` class has
    // ten dimensions), so that each budget has limits to set and counters to zero.
    let counted = engine_with_counters(COUNTERS);
    let parse = class(&counted, "parse");
    let counted_request = AdmitRequest::new(parse, RequestId::from_u64(1));
    g.bench_function("try_admit_10_counters", |b| {
        b.iter(|| admit_drop(&counted, &counted_request))
    });

    // On the production clocks, which an admission reads once (precisely) to start its budget.
    let tick = Duration::from_millis(1);
    let mono = production_engine(MonotonicClock::with_ticker(tick));
    let mono_request = AdmitRequest::new(class(&mono, "api"), RequestId::from_u64(1));
    g.bench_function("try_admit_monotonic", |b| {
        b.iter(|| admit_drop(&mono, &mono_request))
    });
    let tsc = production_engine(TscClock::with_ticker(tick));
    let tsc_request = AdmitRequest::new(class(&tsc, "api"), RequestId::from_u64(1));
    g.bench_function("try_admit_tsc", |b| {
        b.iter(|| admit_drop(&tsc, &tsc_request))
    });

    // The budget alone, as `Engine::begin` starts it for the same class.
    let id = RequestId::from_u64(1);
    g.bench_function("begin", |b| {
        b.iter(|| {
            let budget = black_box(&e).begin(api, black_box(id));
            black_box(budget.is_ok());
            drop(budget);
        })
    });
    g.finish();
    assert_eq!(
        e.admission_stats().class("api").expect("stats").in_flight,
        0
    );
    for e in [&mono, &tsc] {
        assert_eq!(
            e.admission_stats().class("api").expect("stats").in_flight,
            0
        );
    }
    assert_eq!(
        counted
            .admission_stats()
            .class("parse")
            .expect("stats")
            .in_flight,
        0
    );
}

/// A key of 16 bytes (the length of a short user or tenant id): a fixed prefix and the key's number.
#[inline]
fn key_bytes(n: u64) -> [u8; 16] {
    let mut key = *b"tenant::\0\0\0\0\0\0\0\0";
    key[8..].copy_from_slice(&n.to_le_bytes());
    key
}

/// A pseudo-random number of `0..n` per call (a Weyl sequence through a multiply-xorshift mix, then
/// Lemire's multiply-shift reduction). With `n == 1` the same code always yields 0, so the same-key
/// and random-key benchmarks run identical instructions apart from the key they admit.
struct Pick {
    state: u64,
}

impl Pick {
    #[inline]
    fn next(&mut self, n: u64) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        z ^= z >> 32;
        ((z >> 32) * n) >> 32
    }
}

/// Per-key fixture: an engine whose table holds `KEYS` keys, and the grants that keep them live (if
/// `hold`).
struct Keyed {
    engine: Engine,
    class: Class,
    _held: Vec<Admitted>,
}

impl Keyed {
    fn new(hold: bool) -> Keyed {
        let engine = engine(&["keyed"], true);
        let class = class(&engine, "keyed");
        let mut held = Vec::with_capacity(if hold { KEYS as usize } else { 0 });
        for n in 0..KEYS {
            let key = key_bytes(n);
            let admitted = engine
                .try_admit(&AdmitRequest::new(class, RequestId::from_u64(n)).key(&key))
                .expect("populating the key table");
            if hold {
                held.push(admitted);
            }
        }
        let keyed = Keyed {
            engine,
            class,
            _held: held,
        };
        keyed.save_occupancy(if hold { "held" } else { "idle" });
        keyed
    }

    /// Admits and drops key `pick.next(n)`.
    #[inline]
    fn admit_drop(&self, pick: &mut Pick, n: u64) {
        let key = key_bytes(pick.next(black_box(n)));
        admit_drop(
            &self.engine,
            &AdmitRequest::new(self.class, RequestId::from_u64(1)).key(&key),
        );
    }

    /// Records how many of the `KEYS` keys have an entry of their own (the rest share the overflow
    /// entry, or, for idle keys, took over each other's slots), next to criterion's output, where
    /// `ratios.py` reads it.
    fn save_occupancy(&self, how: &str) {
        let stats = self.engine.admission_stats();
        let (occupied, capacity) = stats
            .class("keyed")
            .and_then(|c| c.keys)
            .expect("key stats");
        let dir = contention::criterion_dir().join("admit_keys");
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                dir.join(format!("occupancy_{how}.json")),
                format!(
                    "{{\"keys\": {KEYS}, \"occupied\": {occupied}, \"capacity\": {capacity}}}\n"
                ),
            )
        });
        if let Err(e) = written {
            eprintln!("could not save the key table occupancy: {e}");
        }
        eprintln!(
            "admit_keys ({how}): {KEYS} keys admitted, {occupied} entries of {capacity} occupied"
        );
    }
}

fn bench_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_keys");

    // The same engine without a key: what the table adds at all.
    let plain = engine(&["api"], false);
    let api = class(&plain, "api");
    let request = AdmitRequest::new(api, RequestId::from_u64(1));
    g.bench_function("no_key", |b| b.iter(|| admit_drop(&plain, &request)));
    drop(plain);

    for hold in [false, true] {
        let how = if hold { "held" } else { "idle" };
        // Built by the first benchmark that runs, so that a filtered run does not populate (and, for
        // `held`, allocate 100,000 budgets for) a table it does not use.
        let keyed = OnceCell::new();
        let mut pick = Pick { state: 1 };
        g.bench_function(format!("same_key_{how}"), |b| {
            let keyed = keyed.get_or_init(|| Keyed::new(hold));
            b.iter(|| keyed.admit_drop(&mut pick, 1))
        });
        g.bench_function(format!("random_key_100k_{how}"), |b| {
            let keyed = keyed.get_or_init(|| Keyed::new(hold));
            b.iter(|| keyed.admit_drop(&mut pick, KEYS))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------------
// Contention: the chunked, CPU-time-checked method of `benches/budget.rs`.

/// One contention benchmark of the `admit_contention` group (see `common/contention.rs`).
fn threaded<F>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    chunk: u64,
    op: F,
) where
    F: Fn(usize) + Sync,
{
    contention::threaded(g, "admit_contention", name, threads, chunk, op);
}

/// Chunk sizes: about 100 us per chunk uncontended (a few hundred contended), well inside one
/// scheduler time slice, so that on a loaded machine enough chunks run with both threads on a core, and
/// long enough that the few hundred nanoseconds by which the barrier's release can differ between the
/// threads do not count.
const CHUNK_ATOMIC: u64 = 20_000;
const CHUNK_TOKIO: u64 = 5_000;
const CHUNK_ADMIT: u64 = 500;

fn bench_contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_contention");
    g.sample_size(50);

    // Reference: one shared word, two unconditional read-modify-writes per operation.
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

    // The peer: tokio's semaphore, one shared semaphore.
    let sem = tokio::sync::Semaphore::new(CONCURRENCY as usize);
    let tokio = |_: usize| tokio_acquire_drop(&sem);
    threaded(&mut g, "tokio_semaphore_1thread", 1, CHUNK_TOKIO, tokio);
    threaded(
        &mut g,
        "tokio_semaphore_2threads_shared",
        2,
        CHUNK_TOKIO,
        tokio,
    );

    // Two threads admitting to one class.
    let e = engine(&["api", "other"], false);
    let api = class(&e, "api");
    let other = class(&e, "other");
    let requests = [
        AdmitRequest::new(api, RequestId::from_u64(1)),
        AdmitRequest::new(api, RequestId::from_u64(2)),
    ];
    let admit = |t: usize| admit_drop(&e, &requests[t]);
    threaded(&mut g, "try_admit_1thread", 1, CHUNK_ADMIT, admit);
    threaded(&mut g, "try_admit_2threads_shared", 2, CHUNK_ADMIT, admit);

    // References: two classes of one engine (no class state shared, the engine still is), and two
    // engines (nothing shared but the allocator): how much of a second core the machine gives.
    let classes = [
        AdmitRequest::new(api, RequestId::from_u64(1)),
        AdmitRequest::new(other, RequestId::from_u64(2)),
    ];
    threaded(
        &mut g,
        "try_admit_2threads_separate_classes",
        2,
        CHUNK_ADMIT,
        |t| admit_drop(&e, &classes[t]),
    );
    let engines = [engine(&["api"], false), engine(&["api"], false)];
    let separate = [
        AdmitRequest::new(class(&engines[0], "api"), RequestId::from_u64(1)),
        AdmitRequest::new(class(&engines[1], "api"), RequestId::from_u64(2)),
    ];
    threaded(
        &mut g,
        "try_admit_2threads_separate_engines",
        2,
        CHUNK_ADMIT,
        |t| admit_drop(&engines[t], &separate[t]),
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_admit, bench_keys, bench_contention
}
criterion_main!(benches);

//! Hot-path benchmarks for budgets.
//!
//! Every group pairs the budget operations with a bare-atomic baseline measured in the same run, so the
//! numbers that matter are ratios (subject / baseline), not absolute nanoseconds: the machine these
//! were written on has two shared cores and noisy neighbours. `benches/ratios.py` reads criterion's
//! JSON output and prints the ratios; BENCHMARKS.md lists the goals and the measured figures.
//!
//! Groups:
//! - `charge`: `try_charge` (root, child depth 1 and 3), `try_charge_many`, `refund`, a level guard,
//!   refused charges, against a CAS "add if below limit" loop and a plain `fetch_add`;
//! - `cancel_flag`: `is_cancelled` against a relaxed load;
//! - `deadline`: `expired`/`check` with the coarse `MonotonicClock` (ticker) and with `ManualClock`,
//!   against a relaxed load and `Instant::now()`;
//! - `contention`: aggregate throughput of two threads charging one budget against one thread, with
//!   the same pair for a bare CAS loop and a bare `fetch_add`, and two threads on two budgets as the
//!   scaling reference. Only stretches in which both threads really had a core are timed (see
//!   `run_threads`); the share of such stretches is saved next to criterion's output.
//!
//! Run: `cargo bench --bench budget` then `python3 benches/ratios.py`.

// Two benchmarks return the whole `Result<(), Verdict>` on purpose, to measure what moving it costs.
#![allow(clippy::result_large_err)]

#[path = "common/contention.rs"]
mod contention;

use costguard::clock::{Clock, ManualClock, MonotonicClock};
use costguard::{Budget, Class, Counter, Engine, Level, Policy, RequestId};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A limit no benchmark can reach: at a few nanoseconds per unit it lasts for centuries.
const HUGE: u64 = u64::MAX / 2;

/// The engine and the handles every benchmark uses.
struct Fixture {
    engine: Engine,
    class: Class,
    /// Counter limited to `HUGE`.
    a: Counter,
    /// Second counter limited to `HUGE`.
    b: Counter,
    /// Counter limited to 1, for refusals.
    tight: Counter,
    /// Level limited to `HUGE`.
    depth: Level,
}

impl Fixture {
    fn new(clock: impl Clock + 'static) -> Fixture {
        let policy = Policy::builder()
            .counter("a")
            .counter("b")
            .counter("tight")
            .level("depth")
            .class("c", |c| {
                // A real deadline (not "never"), far enough away that no run reaches it.
                c.wall_time(Duration::from_secs(24 * 3600))
                    .limit("a", HUGE)
                    .limit("b", HUGE)
                    .limit("tight", 1)
                    .limit("depth", HUGE)
            })
            .build()
            .expect("bench policy");
        let engine = Engine::builder(policy)
            .clock(clock)
            .build()
            .expect("bench engine");
        Fixture {
            class: engine.class("c").expect("class c"),
            a: engine.counter("a").expect("counter a"),
            b: engine.counter("b").expect("counter b"),
            tight: engine.counter("tight").expect("counter tight"),
            depth: engine.level("depth").expect("level depth"),
            engine,
        }
    }

    fn manual() -> Fixture {
        Fixture::new(ManualClock::new())
    }

    /// A fresh root budget.
    fn budget(&self) -> Budget {
        self.engine
            .begin(self.class, RequestId::new("bench").expect("id"))
            .expect("begin")
    }
}

/// A chain `root -> ... -> leaf` where the leaf is at `depth`; the whole chain is returned so that
/// every ancestor stays alive (index `depth` is the leaf).
fn chain(f: &Fixture, depth: usize) -> Vec<Budget> {
    let mut chain = vec![f.budget()];
    for _ in 0..depth {
        let child = chain.last().expect("non-empty").child().expect("child");
        chain.push(child);
    }
    assert_eq!(chain[depth].depth(), depth);
    chain
}

/// The baseline for a charge: add `n` if the result stays within `limit`, as a bare CAS loop.
#[inline]
fn cas_add_if_below(cell: &AtomicU64, n: u64, limit: u64) -> Result<u64, u64> {
    let mut used = cell.load(Ordering::Relaxed);
    loop {
        let new = match used.checked_add(n) {
            Some(new) if new <= limit => new,
            _ => return Err(used),
        };
        match cell.compare_exchange_weak(used, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(new),
            Err(actual) => used = actual,
        }
    }
}

/// Two atomics on separate cache lines (the shape of a two-node chain).
#[repr(align(128))]
struct Padded(AtomicU64);

fn bench_charge(c: &mut Criterion) {
    let f = Fixture::manual();
    let mut g = c.benchmark_group("charge");

    // Baselines.
    let cell = AtomicU64::new(0);
    g.bench_function("atomic_cas_add_if_below", |bch| {
        bch.iter(|| cas_add_if_below(black_box(&cell), black_box(1), HUGE).is_ok())
    });
    let cells = [Padded(AtomicU64::new(0)), Padded(AtomicU64::new(0))];
    g.bench_function("atomic_cas_add_if_below_x2", |bch| {
        bch.iter(|| {
            let cells = black_box(&cells);
            let first = cas_add_if_below(&cells[0].0, black_box(1), HUGE);
            let second = cas_add_if_below(&cells[1].0, black_box(1), HUGE);
            first.is_ok() && second.is_ok()
        })
    });
    let counter = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |bch| {
        bch.iter(|| black_box(&counter).fetch_add(black_box(1), Ordering::Relaxed))
    });

    // Successful charges. The outcome is consumed the way callers consume it (`?`, `if let Err`):
    // only the Ok/Err discriminant is looked at, so the 144-byte `Result<(), Verdict>` need not be
    // moved. `try_charge_root_whole_result` passes the whole `Result` through `black_box` instead,
    // which forces a copy of it every iteration; it shows what moving a `Result<(), Verdict>` costs.
    let root = f.budget();
    g.bench_function("try_charge_root", |bch| {
        bch.iter(|| black_box(&root).try_charge(f.a, black_box(1)).is_ok())
    });
    let whole = f.budget();
    g.bench_function("try_charge_root_whole_result", |bch| {
        bch.iter(|| black_box(&whole).try_charge(f.a, black_box(1)))
    });
    let depth1 = chain(&f, 1);
    g.bench_function("try_charge_child_depth1", |bch| {
        bch.iter(|| black_box(&depth1[1]).try_charge(f.a, black_box(1)).is_ok())
    });
    let depth3 = chain(&f, 3);
    g.bench_function("try_charge_child_depth3", |bch| {
        bch.iter(|| black_box(&depth3[3]).try_charge(f.a, black_box(1)).is_ok())
    });
    let many = f.budget();
    g.bench_function("try_charge_many_2dims", |bch| {
        bch.iter(|| {
            black_box(&many)
                .try_charge_many(black_box(&[(f.a, 1), (f.b, 1)]))
                .is_ok()
        })
    });

    // Refund: pre-charged so that every refund takes something back.
    let refund = f.budget();
    refund.try_charge(f.a, HUGE / 2).expect("pre-charge");
    g.bench_function("refund", |bch| {
        bch.iter(|| black_box(&refund).refund(f.a, black_box(1)))
    });

    // Level guard: enter (CAS + peak update) and drop (CAS).
    let level = f.budget();
    g.bench_function("enter_drop_level_guard", |bch| {
        bch.iter(|| drop(black_box(&level).enter(f.depth)))
    });

    // Refusals: the full verdict is built, inspected and dropped every iteration.
    let exhausted = f.budget();
    exhausted.try_charge(f.tight, 1).expect("fill tight");
    g.bench_function("refused_limit_exceeded", |bch| {
        bch.iter(|| {
            black_box(&exhausted)
                .try_charge(f.tight, black_box(1))
                .err()
                .map(|v| v.reason())
        })
    });
    let cannot_fit = f.budget();
    g.bench_function("refused_cannot_fit", |bch| {
        bch.iter(|| {
            black_box(&cannot_fit)
                .try_charge(f.tight, black_box(2))
                .err()
                .map(|v| v.reason())
        })
    });
    g.finish();
}

fn bench_cancel_flag(c: &mut Criterion) {
    let f = Fixture::manual();
    let mut g = c.benchmark_group("cancel_flag");
    let flag = AtomicU32::new(0);
    g.bench_function("relaxed_load_u32", |bch| {
        bch.iter(|| black_box(&flag).load(Ordering::Relaxed) != 0)
    });
    let budget = f.budget();
    g.bench_function("is_cancelled", |bch| {
        bch.iter(|| black_box(&budget).is_cancelled())
    });
    g.finish();
}

fn bench_deadline(c: &mut Criterion) {
    let mut g = c.benchmark_group("deadline");
    let word = AtomicU64::new(0);
    g.bench_function("relaxed_load_u64", |bch| {
        bch.iter(|| black_box(&word).load(Ordering::Relaxed))
    });
    g.bench_function("instant_now", |bch| bch.iter(Instant::now));

    // The production clock: the coarse reading is a cached atomic refreshed by a ticker thread.
    let mono = Fixture::new(MonotonicClock::with_ticker(Duration::from_millis(1)));
    let budget = mono.budget();
    g.bench_function("expired_monotonic_coarse", |bch| {
        bch.iter(|| black_box(&budget).expired())
    });
    g.bench_function("check_monotonic_coarse", |bch| {
        bch.iter(|| black_box(&budget).check().is_ok())
    });
    g.bench_function("remaining_monotonic_precise", |bch| {
        bch.iter(|| black_box(&budget).remaining())
    });
    assert!(!budget.expired(), "the bench budget must not expire");

    let manual = Fixture::manual();
    let budget = manual.budget();
    g.bench_function("expired_manual", |bch| {
        bch.iter(|| black_box(&budget).expired())
    });
    g.bench_function("check_manual", |bch| {
        bch.iter(|| black_box(&budget).check().is_ok())
    });
    g.bench_function("check_manual_whole_result", |bch| {
        bch.iter(|| black_box(&budget).check())
    });
    g.finish();
}

/// Iterations per thread between two barriers. Each chunk is timed on its own, short enough (tens to
/// hundreds of microseconds) to fit in one scheduler time slice.
const CHUNK: u64 = 20_000;

/// One contention benchmark of the `contention` group (see `common/contention.rs`).
fn threaded<F>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    op: F,
) where
    F: Fn(usize) + Sync,
{
    contention::threaded(g, "contention", name, threads, CHUNK, op);
}

fn bench_contention(c: &mut Criterion) {
    let f = Fixture::manual();
    let mut g = c.benchmark_group("contention");
    g.sample_size(50);

    // Reference: what sharing one cache line costs on this machine, with a bare CAS loop.
    let cell = AtomicU64::new(0);
    let cas = |_: usize| {
        black_box(cas_add_if_below(black_box(&cell), black_box(1), HUGE).is_ok());
    };
    threaded(&mut g, "cas_1thread", 1, cas);
    threaded(&mut g, "cas_2threads_shared", 2, cas);

    // Reference: one unconditional read-modify-write per operation (no load-then-CAS round trip, no
    // retries), the cheapest possible shared counter.
    let counter = AtomicU64::new(0);
    let add = |_: usize| {
        black_box(black_box(&counter).fetch_add(black_box(1), Ordering::Relaxed));
    };
    threaded(&mut g, "fetch_add_1thread", 1, add);
    threaded(&mut g, "fetch_add_2threads_shared", 2, add);

    // Two threads charging one budget.
    let shared = f.budget();
    let charge = |_: usize| {
        black_box(black_box(&shared).try_charge(f.a, black_box(1)).is_ok());
    };
    threaded(&mut g, "try_charge_1thread", 1, charge);
    threaded(&mut g, "try_charge_2threads_shared", 2, charge);

    // Scaling reference: two threads, two unrelated budgets (nothing shared). Shows how much of a
    // second core this machine actually gives.
    let separate = [f.budget(), f.budget()];
    threaded(&mut g, "try_charge_2threads_separate", 2, |t| {
        black_box(
            black_box(&separate[t])
                .try_charge(f.a, black_box(1))
                .is_ok(),
        );
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_charge, bench_cancel_flag, bench_deadline, bench_contention
}
criterion_main!(benches);

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
//!   the same pair for a bare CAS loop.
//!
//! Run: `cargo bench --bench budget` then `python3 benches/ratios.py`.

use costguard::clock::{Clock, ManualClock, MonotonicClock};
use costguard::{Budget, Class, Counter, Engine, Level, Policy, RequestId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Barrier;
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
        bch.iter(|| cas_add_if_below(black_box(&cell), black_box(1), HUGE))
    });
    let cells = [Padded(AtomicU64::new(0)), Padded(AtomicU64::new(0))];
    g.bench_function("atomic_cas_add_if_below_x2", |bch| {
        bch.iter(|| {
            let cells = black_box(&cells);
            let first = cas_add_if_below(&cells[0].0, black_box(1), HUGE);
            let second = cas_add_if_below(&cells[1].0, black_box(1), HUGE);
            (first, second)
        })
    });
    let counter = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |bch| {
        bch.iter(|| black_box(&counter).fetch_add(black_box(1), Ordering::Relaxed))
    });

    // Successful charges.
    let root = f.budget();
    g.bench_function("try_charge_root", |bch| {
        bch.iter(|| black_box(&root).try_charge(f.a, black_box(1)))
    });
    let depth1 = chain(&f, 1);
    g.bench_function("try_charge_child_depth1", |bch| {
        bch.iter(|| black_box(&depth1[1]).try_charge(f.a, black_box(1)))
    });
    let depth3 = chain(&f, 3);
    g.bench_function("try_charge_child_depth3", |bch| {
        bch.iter(|| black_box(&depth3[3]).try_charge(f.a, black_box(1)))
    });
    let many = f.budget();
    g.bench_function("try_charge_many_2dims", |bch| {
        bch.iter(|| black_box(&many).try_charge_many(black_box(&[(f.a, 1), (f.b, 1)])))
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

    // Refusals: the full verdict is built and dropped every iteration.
    let exhausted = f.budget();
    exhausted.try_charge(f.tight, 1).expect("fill tight");
    g.bench_function("refused_limit_exceeded", |bch| {
        bch.iter(|| black_box(&exhausted).try_charge(f.tight, black_box(1)))
    });
    let cannot_fit = f.budget();
    g.bench_function("refused_cannot_fit", |bch| {
        bch.iter(|| black_box(&cannot_fit).try_charge(f.tight, black_box(2)))
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
        bch.iter(|| black_box(&budget).check())
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
        bch.iter(|| black_box(&budget).check())
    });
    g.finish();
}

/// Runs `op(thread_index)` `iters` times on each of `threads` threads released together by a barrier,
/// and returns the wall time from the first thread's start to the last thread's end (thread spawning
/// is not timed).
fn run_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op(t);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("threads > 0");
    let end = spans.iter().map(|s| s.1).max().expect("threads > 0");
    end - start
}

fn bench_contention(c: &mut Criterion) {
    let f = Fixture::manual();
    let mut g = c.benchmark_group("contention");
    g.sample_size(50);

    // Each thread does `iters` operations; the throughput setting makes criterion (and ratios.py)
    // count the aggregate: 1 element per iteration for one thread, 2 for two.
    let cell = AtomicU64::new(0);
    let cas = |_: usize| {
        let _ = black_box(cas_add_if_below(black_box(&cell), black_box(1), HUGE));
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("cas_1thread", |bch| {
        bch.iter_custom(|iters| run_threads(1, iters, cas))
    });
    g.throughput(Throughput::Elements(2));
    g.bench_function("cas_2threads_shared", |bch| {
        bch.iter_custom(|iters| run_threads(2, iters, cas))
    });

    let shared = f.budget();
    let charge = |_: usize| {
        let _ = black_box(black_box(&shared).try_charge(f.a, black_box(1)));
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("try_charge_1thread", |bch| {
        bch.iter_custom(|iters| run_threads(1, iters, charge))
    });
    g.throughput(Throughput::Elements(2));
    g.bench_function("try_charge_2threads_shared", |bch| {
        bch.iter_custom(|iters| run_threads(2, iters, charge))
    });

    // Scaling reference: two threads, two unrelated budgets (no shared cache line). Shows how much of
    // a second core this machine actually gives.
    let separate = [f.budget(), f.budget()];
    g.bench_function("try_charge_2threads_separate", |bch| {
        bch.iter_custom(|iters| {
            run_threads(2, iters, |t| {
                let _ = black_box(black_box(&separate[t]).try_charge(f.a, black_box(1)));
            })
        })
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

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

use costguard::clock::{Clock, CpuClock, ManualClock, MonotonicClock, ThreadCpuClock};
use costguard::{Budget, Class, Counter, Engine, Level, Policy, RequestId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

/// A chunk counts as run in parallel when the threads' CPU time is at least this fraction of
/// `threads * wall time`, i.e. no thread was descheduled for long during it.
const PARALLEL: f64 = 0.9;

/// What one contention benchmark saw of the machine, summed over all its `iter_custom` calls.
///
/// On a shared two-core machine a neighbour often holds one core, and two benchmark threads then take
/// turns on the other: they never touch the shared cache line at the same time, so a "contended"
/// figure would measure nothing but time slicing. Each chunk therefore records the threads' CPU time
/// and wall time; only chunks in which every thread ran throughout are timed (see `run_threads`), and
/// these figures say how many there were.
#[derive(Default)]
struct Parallelism {
    cpu_ns: AtomicU64,
    wall_ns: AtomicU64,
    chunks: AtomicU64,
    parallel_chunks: AtomicU64,
}

impl Parallelism {
    fn add(&self, cpu: Duration, wall: Duration, parallel: bool) {
        self.cpu_ns
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
        self.wall_ns
            .fetch_add(wall.as_nanos() as u64, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        if parallel {
            self.parallel_chunks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the figures next to criterion's output for `group/name`, where `ratios.py` reads them
    /// (only when the benchmark ran, so a filtered run leaves other figures alone).
    fn save(&self, group: &str, name: &str) {
        let wall = self.wall_ns.load(Ordering::Relaxed);
        let chunks = self.chunks.load(Ordering::Relaxed);
        if wall == 0 || chunks == 0 {
            return;
        }
        let parallelism = self.cpu_ns.load(Ordering::Relaxed) as f64 / wall as f64;
        let fraction = self.parallel_chunks.load(Ordering::Relaxed) as f64 / chunks as f64;
        let root = std::env::var_os("CRITERION_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(|t| std::path::PathBuf::from(t).join("criterion"))
            })
            .unwrap_or_else(|| std::path::PathBuf::from("target/criterion"));
        let dir = root.join(group).join(name);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                dir.join("parallelism.json"),
                format!(
                    "{{\"parallelism\": {parallelism:.3}, \"parallel_chunks\": {fraction:.3}}}\n"
                ),
            )
        });
        if let Err(e) = written {
            eprintln!("could not save the parallelism of {group}/{name}: {e}");
        }
        eprintln!(
            "{group}/{name}: parallelism {parallelism:.2} (CPU time / wall time), {:.0}% of chunks \
             ran with every thread on a core",
            fraction * 100.0
        );
    }
}

/// A barrier that spins (yielding now and then), so that threads released together start within
/// nanoseconds of each other rather than a futex wake-up (tens of microseconds) apart.
struct SpinBarrier {
    arrived: AtomicU64,
    threads: u64,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            arrived: AtomicU64::new(0),
            threads: threads as u64,
        }
    }

    /// Waits until every thread has called `wait(round)`; `round` counts from 1.
    fn wait(&self, round: u64) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.arrived.load(Ordering::Acquire) < self.threads * round {
            spins += 1;
            if spins % 1024 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

fn thread_cpu() -> Duration {
    ThreadCpuClock.thread_cpu().unwrap_or_default()
}

/// Runs `op(thread_index)` `iters` times on each of `threads` threads and returns the estimated wall
/// time of `iters` rounds with every thread running (thread spawning is not timed).
///
/// The iterations are done in chunks of `CHUNK`, the threads released together by a spinning
/// barrier before each. A chunk's wall time runs from the first thread's start to the last thread's end. Only chunks
/// in which the threads' CPU time reached `PARALLEL * threads * wall time` are used for the estimate
/// (the same rule for one thread: it was not descheduled); if no chunk qualifies, all are used. Every
/// chunk is added to `par`.
fn run_threads<F>(threads: usize, iters: u64, par: &Parallelism, op: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let chunk = iters.clamp(1, CHUNK);
    let rounds = iters.div_ceil(chunk);
    let barrier = SpinBarrier::new(threads);
    // Per thread, per chunk: (start, end, CPU time).
    let per_thread: Vec<Vec<(Instant, Instant, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    let mut spans = Vec::with_capacity(rounds as usize);
                    for round in 1..=rounds {
                        barrier.wait(round);
                        let cpu = thread_cpu();
                        let start = Instant::now();
                        for _ in 0..chunk {
                            op(t);
                        }
                        let end = Instant::now();
                        spans.push((start, end, thread_cpu().saturating_sub(cpu)));
                    }
                    spans
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let (mut all, mut parallel, mut parallel_chunks) = (Duration::ZERO, Duration::ZERO, 0u64);
    for round in 0..rounds as usize {
        let spans = per_thread.iter().map(|spans| spans[round]);
        let start = spans.clone().map(|s| s.0).min().expect("threads > 0");
        let end = spans.clone().map(|s| s.1).max().expect("threads > 0");
        let cpu: Duration = spans.map(|s| s.2).sum();
        let wall = end - start;
        let ran_together = cpu.as_secs_f64() >= PARALLEL * threads as f64 * wall.as_secs_f64();
        par.add(cpu, wall, ran_together);
        all += wall;
        if ran_together {
            parallel += wall;
            parallel_chunks += 1;
        }
    }
    let (timed, timed_chunks) = if parallel_chunks > 0 {
        (parallel, parallel_chunks)
    } else {
        (all, rounds)
    };
    // Scale the qualifying chunks' time to `iters` rounds.
    timed.mul_f64(iters as f64 / (timed_chunks * chunk) as f64)
}

/// One contention benchmark: `threads` threads each doing one `op` per iteration; criterion counts
/// `threads` elements per iteration, so its throughput (and `ratios.py`) is the aggregate.
fn threaded<F>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    op: F,
) where
    F: Fn(usize) + Sync,
{
    let par = Parallelism::default();
    g.throughput(Throughput::Elements(threads as u64));
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| run_threads(threads, iters, &par, &op))
    });
    par.save("contention", name);
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

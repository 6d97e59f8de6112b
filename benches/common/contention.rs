//! The contention method shared by the benches: threads released together in short chunks, and only
//! the chunks in which every thread had a core are timed.
//!
//! On a shared two-core machine a neighbour often holds one core; two "contending" threads then take
//! turns on the other and never touch the shared line at the same time, so an untreated contention
//! figure measures time slicing. Included by each bench with `#[path]`.

use costguard::clock::{CpuClock, ThreadCpuClock};
use criterion::Throughput;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A chunk counts as run in parallel when the threads' CPU time is at least this fraction of
/// `threads * wall time`, i.e. no thread was descheduled for long during it.
const PARALLEL: f64 = 0.9;

/// The root of criterion's output, where the side files of this bench go.
pub fn criterion_dir() -> std::path::PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(|t| std::path::PathBuf::from(t).join("criterion"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("target/criterion"))
}

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
        let dir = criterion_dir().join(group).join(name);
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
/// The iterations are done in chunks of `chunk`, the threads released together by a spinning barrier
/// before each; a chunk's wall time runs from the first thread's start to the last thread's end; only
/// chunks in which the threads' CPU time reached `PARALLEL * threads * wall time` are used for the
/// estimate (the same rule for one thread: it was not descheduled); if none qualifies, all are used.
/// Every chunk is added to `par`.
fn run_threads<F>(threads: usize, iters: u64, chunk: u64, par: &Parallelism, op: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let chunk = iters.clamp(1, chunk);
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

/// One contention benchmark of `group`: `threads` threads each doing one `op` per iteration, in
/// chunks of `chunk` iterations; criterion counts `threads` elements per iteration, so its throughput
/// (and `ratios.py`) is the aggregate.
pub fn threaded<F>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group: &str,
    name: &str,
    threads: usize,
    chunk: u64,
    op: F,
) where
    F: Fn(usize) + Sync,
{
    let par = Parallelism::default();
    g.throughput(Throughput::Elements(threads as u64));
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| run_threads(threads, iters, chunk, &par, &op))
    });
    par.save(group, name);
}

//! The hot paths in instructions: the subjects of the speed goals, each run a given number of times
//! inside one function that `benches/instructions.py` counts under callgrind.
//!
//! Time on these shared machines is noisy; the count of instructions a path executes is not. A
//! change that makes an admission or an attempt do more work (an extra copy, a lock taken on every
//! drop) shows up here exactly, run after run, where a benchmark of a few nanoseconds would need
//! several alternated runs to tell it from noise. The count is no measure of time (a locked
//! read-modify-write is one instruction and costs as much as dozens of others): the criterion
//! benches and their ratios remain the measure of speed, this only guards what they measured.
//!
//! Run: `python3 benches/instructions.py` (checks against `benches/instructions.txt`;
//! `--bless` records new figures). `cargo bench --bench instructions -- <subject> <iterations>`
//! runs one subject outside callgrind; with no arguments (as `cargo test --benches` runs it)
//! every subject runs a few times, as a smoke test.

use costguard::clock::ManualClock;
use costguard::{
    AdmitRequest, AttemptOutcome, Backend, Budget, Counter, Engine, Policy, RequestId,
    RetryDecision,
};
use std::hint::black_box;
use std::time::Duration;

/// A request deadline and a retry allowance no run exhausts.
const DEADLINE: Duration = Duration::from_secs(24 * 3600);
const RETRIES: u64 = u64::MAX / 2;

/// Runs `op` `iters` times. Never inlined: callgrind collects only inside this function (and what it
/// calls), so setup and warm-up are not counted.
#[inline(never)]
fn measure(iters: u64, op: &mut dyn FnMut()) {
    for _ in 0..iters {
        op();
    }
}

struct Fixture {
    engine: Engine,
    clock: ManualClock,
    db: Backend,
    pool: Backend,
    counter: Counter,
}

/// One admission class with a concurrency limit no run reaches, a counter with a limit no run
/// reaches, and the backends of `benches/backend.rs`: one without hosts, one with three, both with
/// retry budgets that earn a token per first attempt and refill at the highest floor.
fn fixture() -> Fixture {
    let retry_budget = |b: costguard::policy::BackendBuilder| {
        b.fraction("retry.ratio", 1.0)
            .count("retry.min_per_second", 1_000_000)
    };
    let policy = Policy::builder()
        .counter("queries")
        .class("api", |c| {
            c.wall_time(DEADLINE)
                .retries(RETRIES)
                .limit("queries", u64::MAX / 2)
                .admission(|a| a.concurrency(1_000_000))
        })
        .backend("db", retry_budget)
        .backend("pool", |b| {
            retry_budget(b.hosts(&["db1001", "db1002", "db1003"]))
        })
        .build()
        .expect("policy");
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .expect("engine");
    Fixture {
        db: engine.backend("db").expect("backend db"),
        pool: engine.backend("pool").expect("backend pool"),
        counter: engine.counter("queries").expect("counter"),
        engine,
        clock,
    }
}

fn budget(engine: &Engine) -> Budget {
    engine
        .begin_by_name("api", RequestId::from_u64(1))
        .expect("budget")
}

/// The subjects, by name. Each returns the operation to count; the fixture outlives it.
const SUBJECTS: &[&str] = &[
    "noop",
    "try_admit",
    "begin",
    "try_charge",
    "attempt_no_hosts",
    "attempt_3_hosts",
    "retry",
];

/// Runs `subject` `iters` times after a warm-up (the first admission allocates the node every later
/// one reuses; the first attempt learns nothing a later one would not). Returns false for an
/// unknown subject.
fn run(subject: &str, iters: u64) -> bool {
    let f = fixture();
    let api = f.engine.class("api").expect("class");
    let request = AdmitRequest::new(api, RequestId::from_u64(7));
    let id = RequestId::from_u64(9);
    let held = budget(&f.engine);
    let attempt = |backend: Backend| {
        let a = black_box(&f.engine).begin_attempt(black_box(backend), black_box(&held), 0);
        black_box(a.is_ok());
        if let Ok(a) = a {
            a.finish(AttemptOutcome::Success);
        }
    };
    let mut op: Box<dyn FnMut() + '_> = match subject {
        "noop" => Box::new(|| black_box(())),
        "try_admit" => Box::new(|| {
            let admitted = black_box(&f.engine).try_admit(black_box(&request));
            black_box(admitted.is_ok());
            drop(admitted);
        }),
        "begin" => Box::new(|| {
            let b = black_box(&f.engine).begin(black_box(api), black_box(id));
            black_box(b.is_ok());
            drop(b);
        }),
        "try_charge" => Box::new(|| {
            black_box(black_box(&held).try_charge(f.counter, 1).is_ok());
        }),
        "attempt_no_hosts" => Box::new(|| attempt(f.db)),
        "attempt_3_hosts" => Box::new(|| attempt(f.pool)),
        "retry" => {
            // A second of the floor: a million tokens, more than any run takes.
            f.clock.advance(Duration::from_secs(1));
            Box::new(|| {
                let d = black_box(&f.engine).retry(
                    black_box(f.db),
                    black_box(&held),
                    AttemptOutcome::ServerError,
                    1,
                );
                assert!(matches!(d, RetryDecision::After(_)), "{d:?}");
            })
        }
        _ => return false,
    };
    for _ in 0..100 {
        op();
    }
    measure(iters, &mut *op);
    true
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [] => {
            for subject in SUBJECTS {
                assert!(run(subject, 10));
            }
        }
        [subject, iters] => {
            let Ok(iters) = iters.parse() else {
                eprintln!("iterations must be a number, not {iters:?}");
                std::process::exit(2);
            };
            if !run(subject, iters) {
                eprintln!("unknown subject {subject:?}; subjects: {SUBJECTS:?}");
                std::process::exit(2);
            }
        }
        [flag] if flag == "--list" => {
            for subject in SUBJECTS {
                println!("{subject}");
            }
        }
        _ => {
            eprintln!("usage: instructions [--list | <subject> <iterations>]");
            std::process::exit(2);
        }
    }
}

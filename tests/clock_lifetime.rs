//! The clock thread an engine starts for itself stops with the engine, even when the thread that
//! used the engine keeps finished budgets (and through them the engine's clock) for reuse.
//!
//! It counts the process's threads named `costguard-clock`, so it is the only test of its binary.
//! A thread's exit is not instant: the test waits for it, for at most ten seconds.

use costguard::clock::TscClock;
use costguard::{Engine, Policy, RequestId};
use std::time::{Duration, Instant};

fn clock_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "costguard-clock")
        .count()
}

/// Waits until the number of clock threads is `n`, or ten seconds have passed; the count then.
fn settle_to(n: usize) -> usize {
    let start = Instant::now();
    while clock_threads() != n && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    clock_threads()
}

fn policy() -> Policy {
    Policy::builder()
        .class("api", |c| c)
        .class("short", |c| c.wall_time(Duration::from_millis(20)))
        .build()
        .unwrap()
}

#[test]
fn an_engines_own_clock_thread_stops_with_the_engine() {
    let before = clock_threads();
    let engine = Engine::new(policy()).unwrap();
    // The thread names itself once it runs.
    assert_eq!(settle_to(before + 1), before + 1);
    // A finished root budget is kept by this thread for reuse, with its snapshot and clock.
    drop(
        engine
            .begin_by_name("api", RequestId::new("r").unwrap())
            .unwrap(),
    );
    // A budget still running when its engine goes (an application that swapped engines).
    let running = engine
        .begin_by_name("short", RequestId::new("s").unwrap())
        .unwrap();
    drop(engine);
    assert_eq!(
        settle_to(before),
        before,
        "the engine's clock thread outlived it"
    );
    // Its clock no longer ticks, yet a loop that only checks the budget still sees its deadline
    // pass (it is 20 ms; the loop spins on the real clock for at most ten seconds).
    let start = Instant::now();
    while running.check().is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a 20 ms deadline unnoticed after {:?}",
            start.elapsed()
        );
    }

    // A clock the application made and still holds keeps its thread: it is the application's.
    let clock = TscClock::with_ticker(Duration::from_millis(1));
    let engine = Engine::builder(policy())
        .clock(clock.clone())
        .build()
        .unwrap();
    drop(engine);
    assert_eq!(settle_to(before + 1), before + 1);
    drop(clock);
    assert_eq!(settle_to(before), before);
}

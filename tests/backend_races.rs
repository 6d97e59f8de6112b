//! Ejections racing reloads, with real threads: the hook's transitions of a host, put in order by
//! their generations, always pair up (an end for every ejection, no end without one).
//!
//! An ejection and a reload that takes its host out of the pool (or lowers the pool's share) race
//! on the host's ejection word and on whether the host is in the pool; the reload's side of that
//! race is a store-buffering pair that loom cannot model (it treats `SeqCst` as acquire/release),
//! so it is checked here, by running the race many times. The window is a few instructions wide:
//! a run that never hits it passes whatever the code, so this checks the invariant over every
//! interleaving the machine happens to produce (thousands of ejections per run), not that one.

use costguard::backend::{Transition, TransitionKind};
use costguard::clock::ManualClock;
use costguard::{AttemptOutcome, Engine, Policy, RequestId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn policy(hosts: &[&str], share: f64) -> Policy {
    Policy::builder()
        .class("api", |c| c.wall_time(Duration::from_secs(1 << 30)))
        .backend("kafka", |b| {
            b.hosts(hosts)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", share)
                .duration("ejection.base", Duration::from_millis(1))
                .duration("ejection.max", Duration::from_millis(1))
                .count("breaker.consecutive_failures", 4000)
                .count("breaker.min_calls", 4000)
        })
        .build()
        .unwrap()
}

/// One thread ejects `h0` again and again (each ejection lasts a millisecond, and the clock moves
/// 0.7 ms per attempt); another reloads, alternating `reloads`. `h0`'s transitions, ordered by
/// generation, must alternate between an ejection and its end.
fn ejections_racing(reloads: [Policy; 2]) {
    let clock = ManualClock::new();
    let log: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let seen = Arc::clone(&log);
    let engine = Engine::builder(policy(&["h0", "h1"], 1.0))
        .clock(clock.clone())
        .on_transition(move |t| {
            if t.host.as_deref() == Some("h0") {
                seen.lock().unwrap().push(t.clone())
            }
        })
        .build()
        .unwrap();
    let kafka = engine.backend("kafka").unwrap();
    let h0 = engine.host(kafka, "h0").unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for p in reloads.iter().cycle() {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                engine.reload(p.clone()).unwrap();
            }
        });
        for _ in 0..100_000 {
            let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
            if let Ok(a) = engine.begin_attempt_on(h0, &budget, 0) {
                a.finish(AttemptOutcome::ConnectFailure);
            }
            clock.advance(Duration::from_micros(700));
        }
        done.store(true, Ordering::Relaxed);
    });
    let mut log = log.lock().unwrap().clone();
    log.sort_by_key(|t| t.generation);
    let mut ejected = false;
    for (i, t) in log.iter().enumerate() {
        match t.kind {
            TransitionKind::Ejected => {
                assert!(!ejected, "#{i} of {}: ejected while ejected", log.len());
                ejected = true;
            }
            TransitionKind::Readmitted | TransitionKind::EjectionEnded => {
                assert!(
                    ejected,
                    "#{i} of {}: {:?} without an ejection",
                    log.len(),
                    t.kind
                );
                ejected = false;
            }
            _ => {}
        }
    }
}

#[test]
fn ejections_racing_the_hosts_removal_are_reported_in_pairs() {
    ejections_racing([policy(&["h0", "h1"], 1.0), policy(&["h1"], 1.0)]);
}

#[test]
fn ejections_racing_a_lower_share_are_reported_in_pairs() {
    ejections_racing([policy(&["h0", "h1"], 1.0), policy(&["h0", "h1"], 0.0)]);
}

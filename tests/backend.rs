//! Dependency protection, deterministic on the manual clock.

mod support;

use costguard::backend::{CallError, TransitionKind};
use costguard::clock::ManualClock;
use costguard::{
    AttemptOutcome, Backend, Budget, Counter, Engine, Policy, Reason, RequestId, Retry,
    RetryDecision,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

type Log = Arc<Mutex<Vec<(TransitionKind, Option<String>)>>>;

struct Fixture {
    engine: Engine,
    clock: ManualClock,
    log: Log,
}

fn fixture(policy: Policy) -> Fixture {
    let clock = ManualClock::new();
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .on_transition(move |t| {
            seen.lock()
                .unwrap()
                .push((t.kind, t.host.as_deref().map(str::to_owned)))
        })
        .build()
        .unwrap();
    Fixture { engine, clock, log }
}

impl Fixture {
    fn budget(&self) -> Budget {
        self.engine
            .begin_by_name("api", RequestId::new("r").unwrap())
            .unwrap()
    }

    fn budget_in(&self, class: &str) -> Budget {
        self.engine
            .begin_by_name(class, RequestId::new("r").unwrap())
            .unwrap()
    }

    fn kinds(&self) -> Vec<TransitionKind> {
        self.log.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }

    /// How many of `asks` retry decisions after a server error say yes.
    fn retries_granted(&self, b: Backend, budget: &Budget, asks: usize) -> usize {
        (0..asks)
            .filter(|_| {
                matches!(
                    self.engine.retry(b, budget, AttemptOutcome::ServerError, 1),
                    RetryDecision::After(_)
                )
            })
            .count()
    }

    /// An attempt on the host `h`, ended with `outcome`.
    fn run_on(&self, h: costguard::Host, budget: &Budget, outcome: AttemptOutcome) {
        self.engine
            .begin_attempt_on(h, budget, 0)
            .unwrap()
            .finish(outcome);
    }

    fn run(&self, b: Backend, budget: &Budget, outcome: AttemptOutcome) -> Result<(), Reason> {
        let a = self
            .engine
            .begin_attempt(b, budget, 0)
            .map_err(|v| v.reason())?;
        a.finish(outcome);
        Ok(())
    }
}

fn single(
    name: &str,
    setup: impl FnOnce(costguard::policy::BackendBuilder) -> costguard::policy::BackendBuilder,
) -> Policy {
    Policy::builder()
        .class("api", |c| c.wall_time(Duration::from_secs(30)).retries(10))
        .class("long", |c| c.wall_time(Duration::from_secs(3600)))
        .class("short", |c| c.wall_time(Duration::from_millis(500)))
        .backend(name, setup)
        .build()
        .unwrap()
}

#[test]
fn a_breaker_opens_after_failures_in_a_row_then_probes_and_closes() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 3)
            .count("breaker.probes", 2)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.ramp_up", Duration::ZERO)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.run(db, &budget, AttemptOutcome::ClientError).unwrap(); // says nothing about the backend
    f.run(db, &budget, AttemptOutcome::Timeout).unwrap();
    assert!(f.kinds().is_empty());
    f.run(db, &budget, AttemptOutcome::ConnectFailure).unwrap();
    assert_eq!(f.kinds(), vec![TransitionKind::Opened]);
    // Open: refused with an honest Retry-After, jittered between half and all of open_for.
    let v = f.engine.begin_attempt(db, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::CircuitOpen);
    let wait = v.retry_after().unwrap();
    assert!(
        wait >= Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert_eq!(f.engine.backend_stats()[0].breaker, "open");
    // After it: exactly two probes, however many callers.
    f.clock.advance(wait);
    let p1 = f.engine.begin_attempt(db, &budget, 0).unwrap();
    let p2 = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    for _ in 0..5 {
        let v = f.engine.begin_attempt(db, &budget, 0).unwrap_err();
        assert_eq!((v.reason(), v.retry()), (Reason::CircuitOpen, Retry::Later));
    }
    assert_eq!(f.engine.backend_stats()[0].breaker, "half_open");
    p1.finish(AttemptOutcome::Success);
    p2.finish(AttemptOutcome::Success);
    assert_eq!(
        f.kinds(),
        vec![
            TransitionKind::Opened,
            TransitionKind::HalfOpened,
            TransitionKind::Closed
        ]
    );
    f.run(db, &budget, AttemptOutcome::Success).unwrap();
}

#[test]
fn a_failed_probe_reopens_for_longer() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(3))
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let wait = f
            .engine
            .begin_attempt(db, &budget, 0)
            .unwrap_err()
            .retry_after()
            .unwrap();
        waits.push(wait);
        f.clock.advance(wait);
        f.run(db, &budget, AttemptOutcome::Timeout).unwrap(); // the probe fails
    }
    // 1 s, 2 s, then capped at 3 s; each jittered into its upper half.
    let within = |w: Duration, full: u64| {
        w >= Duration::from_millis(full * 500) && w <= Duration::from_secs(full)
    };
    assert!(within(waits[0], 1) && within(waits[1], 2), "{waits:?}");
    assert!(within(waits[2], 3) && within(waits[3], 3), "{waits:?}");
}

#[test]
fn a_hung_probe_gives_its_slot_back_after_its_timeout() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .duration("timeout", Duration::from_millis(200))
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.clock.advance(Duration::from_secs(2));
    let hung = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(hung.timeout(), Duration::from_millis(200));
    assert_eq!(
        f.engine.begin_attempt(db, &budget, 0).unwrap_err().reason(),
        Reason::CircuitOpen
    );
    // Its timeout, rounded up to the next 65,536 ns (the deadline shares its word with the low
    // bits of its probing period's generation).
    f.clock.advance(Duration::from_millis(200));
    assert_eq!(
        f.engine.begin_attempt(db, &budget, 0).unwrap_err().reason(),
        Reason::CircuitOpen
    );
    f.clock.advance(Duration::from_nanos(65_536));
    let fresh = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert!(fresh.is_probe());
    // The hung probe's late success belongs to an earlier period and cannot close the breaker...
    hung.finish(AttemptOutcome::Success);
    assert_eq!(f.engine.backend_stats()[0].breaker, "half_open");
    // ...the fresh probe's does.
    fresh.finish(AttemptOutcome::Success);
    assert_eq!(f.engine.backend_stats()[0].breaker, "closed");
    assert_eq!(
        f.kinds(),
        [
            TransitionKind::Opened,
            TransitionKind::HalfOpened,
            TransitionKind::ProbesRestarted,
            TransitionKind::Closed
        ],
        "half-opened once: the second round of probes is reported as such"
    );
}

#[test]
fn failure_and_slow_ratios_need_a_minimum_volume() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1000)
            .count("breaker.min_calls", 10)
            .fraction("breaker.failure_ratio", 0.5)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    for i in 0..9 {
        let outcome = if i % 3 == 0 {
            AttemptOutcome::Success
        } else {
            AttemptOutcome::ServerError
        };
        f.run(db, &budget, outcome).unwrap();
    }
    assert!(
        f.kinds().is_empty(),
        "six failures in nine calls, but below the volume"
    );
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    assert_eq!(f.kinds(), vec![TransitionKind::Opened]);

    let slow = fixture(single("api", |b| {
        b.count("breaker.consecutive_failures", 1000)
            .count("breaker.min_calls", 4)
            .fraction("breaker.slow_ratio", 0.75)
            .duration("breaker.slow_call", Duration::from_millis(100))
    }));
    let backend = slow.engine.backend("api").unwrap();
    let budget = slow.budget();
    for _ in 0..4 {
        let a = slow.engine.begin_attempt(backend, &budget, 0).unwrap();
        slow.clock.advance(Duration::from_millis(150));
        a.finish(AttemptOutcome::Success);
    }
    assert_eq!(
        slow.kinds(),
        vec![TransitionKind::Opened],
        "slow successes open it too"
    );
}

#[test]
fn traffic_ramps_up_after_closing() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .count("max_in_flight", 10)
            .duration("breaker.ramp_up", Duration::from_secs(10))
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.clock.advance(Duration::from_secs(2));
    f.run(db, &budget, AttemptOutcome::Success).unwrap(); // the probe closes it
    let take = |n: usize| -> usize {
        let held: Vec<_> = (0..n)
            .filter_map(|_| f.engine.begin_attempt(db, &budget, 0).ok())
            .collect();
        let got = held.len();
        for mut a in held {
            a.connected();
            a.finish(AttemptOutcome::Success);
        }
        got
    };
    assert_eq!(take(10), 1, "just closed: one at a time");
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(take(10), 5, "half way through the ramp");
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(take(10), 10);
}

#[test]
fn bulkheads_cap_calls_and_connection_attempts() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("max_in_flight", 3)
            .count("max_connecting", 2)
            .count("max_connecting_per_host", 1)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    let mut a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
    let b = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
    assert_ne!(a.host(), b.host(), "one connection attempt per host");
    let v = f.engine.begin_attempt(kafka, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::ConnectLimit);
    a.connected();
    let mut c = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
    assert_eq!(c.host(), a.host());
    c.connected();
    let v = f.engine.begin_attempt(kafka, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::BulkheadFull);
    let stats = &f.engine.backend_stats()[0];
    assert_eq!((stats.in_flight, stats.connecting), (3, 1));
    drop((a, b, c));
    let stats = &f.engine.backend_stats()[0];
    assert_eq!((stats.in_flight, stats.connecting), (0, 0));
    assert_eq!(stats.outcome("cancelled"), 3, "dropped unfinished: neutral");
}

#[test]
fn failing_hosts_are_ejected_then_readmitted_on_probation() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2", "k3"])
            .count("ejection.consecutive_failures", 2)
            .duration("ejection.base", Duration::from_secs(10))
            .fraction("ejection.max_ejected", 0.34)
            .count("breaker.consecutive_failures", 1000)
            .count("breaker.min_calls", 1000)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f
        .engine
        .begin_by_name("long", RequestId::new("r").unwrap())
        .unwrap();
    // Every attempt that lands on k2 fails to connect; the others succeed.
    let round = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
                let host = a.host().unwrap().to_owned();
                let outcome = if host == "k2" {
                    AttemptOutcome::ConnectFailure
                } else {
                    AttemptOutcome::Success
                };
                a.finish(outcome);
                host
            })
            .collect()
    };
    round(6);
    assert_eq!(
        f.log.lock().unwrap().as_slice(),
        &[(TransitionKind::Ejected, Some("k2".to_owned()))]
    );
    let stats = &f.engine.backend_stats()[0];
    assert!(stats.host("k2").unwrap().ejected);
    assert!(
        round(12).iter().all(|h| h != "k2"),
        "ejected hosts get no traffic"
    );
    // Only a third of the pool may be out: k3 failing now is not ejected.
    let k3 = f.engine.host(kafka, "k3").unwrap();
    for _ in 0..3 {
        f.engine
            .begin_attempt_on(k3, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
    }
    assert!(!f.engine.backend_stats()[0].host("k3").unwrap().ejected);
    f.engine
        .begin_attempt_on(k3, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::Success);
    // After the ejection, k2 returns on probation; one failure ejects it again, for twice as long.
    f.clock.advance(Duration::from_secs(10));
    let hosts = round(3);
    assert!(hosts.contains(&"k2".to_owned()));
    let kinds = f.kinds();
    assert_eq!(
        &kinds[1..],
        &[TransitionKind::Readmitted, TransitionKind::Ejected]
    );
    f.clock.advance(Duration::from_secs(10));
    assert!(
        round(6).iter().all(|h| h != "k2"),
        "the second ejection lasts 20 s"
    );
    f.clock.advance(Duration::from_secs(10));
    // Readmitted and now healthy: a success ends probation.
    let a = loop {
        let a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
        if a.host() == Some("k2") {
            break a;
        }
        a.finish(AttemptOutcome::Success);
    };
    a.finish(AttemptOutcome::Success);
    assert!(!f.engine.backend_stats()[0].host("k2").unwrap().ejected);
}

#[test]
fn never_more_than_the_configured_share_is_ejected() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("ejection.consecutive_failures", 1)
            .fraction("ejection.max_ejected", 0.5)
            .count("breaker.consecutive_failures", 1000)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    for _ in 0..6 {
        if let Ok(a) = f.engine.begin_attempt(kafka, &budget, 0) {
            a.finish(AttemptOutcome::ConnectFailure);
        }
    }
    let stats = &f.engine.backend_stats()[0];
    assert_eq!(stats.hosts.iter().filter(|h| h.ejected).count(), 1);
}

#[test]
fn attempt_timeouts_come_from_the_request_budget() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(2))
            .duration("margin", Duration::from_millis(50))
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget(); // 30 s
    let a = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(a.timeout(), Duration::from_secs(2));
    // Calls take 300 ms.
    f.clock.advance(Duration::from_millis(300));
    a.finish(AttemptOutcome::Success);
    f.clock.advance(Duration::from_millis(28_700)); // 1 s left
    let a = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(a.timeout(), Duration::from_millis(950));
    a.finish(AttemptOutcome::Cancelled);
    f.clock.advance(Duration::from_millis(700)); // 300 ms left, 250 after the margin: too little
                                                 // One attempt per usual latency goes ahead all the same, to learn whether the backend has
                                                 // become faster; the others are refused up front.
    let probe = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(probe.timeout(), Duration::from_millis(250));
    let v = f.engine.begin_attempt(db, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::InsufficientTime);
    assert_eq!((v.requested(), v.limit()), (300_000_000, 250_000_000));
    probe.finish(AttemptOutcome::Cancelled);
    f.clock.advance(Duration::from_millis(299));
    assert!(f.engine.begin_attempt(db, &budget, 0).is_err());
}

/// A latency learned while the backend was slow does not refuse a class with less time for
/// good: an attempt of it goes ahead once per usual latency, and a fast success teaches the
/// backend's new latency.
#[test]
fn a_slow_spell_does_not_shut_a_short_class_out() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(10))
    }));
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    let a = f.engine.begin_attempt(db, &long, 0).unwrap();
    f.clock.advance(Duration::from_secs(8));
    a.finish(AttemptOutcome::Success); // usually 8 s, from now on
    let short = || f.budget_in("short"); // under a second left
                                         // A request every 100 ms; those that go ahead succeed in 20 ms. Each success brings the usual
                                         // latency an eighth of the way down to 20 ms, and the next try comes one usual latency later:
                                         // about 21 tries, over about 64 s, until it is below what a short request has.
    let (mut refused, mut in_a_row) = (0, 0);
    while in_a_row < 10 {
        let budget = short();
        match f.engine.begin_attempt(db, &budget, 0) {
            Ok(a) => {
                f.clock.advance(Duration::from_millis(20));
                a.finish(AttemptOutcome::Success);
                in_a_row += 1;
            }
            Err(v) => {
                assert_eq!(v.reason(), Reason::InsufficientTime);
                (refused, in_a_row) = (refused + 1, 0);
                assert!(refused < 1_000, "still refused after {refused}");
            }
        }
        f.clock.advance(Duration::from_millis(100));
    }
    assert!(
        refused > 500,
        "{refused}: the backend was not given time to show it was slow"
    );
}

/// A usual latency learned under a longer timeout than a reload leaves is capped by the new one:
/// the backend never seems to need more than an attempt may be given, so requests that have that
/// much time are not refused up front.
#[test]
fn a_lowered_timeout_caps_the_usual_latency() {
    let policy = |timeout: u64| {
        Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(30)))
            .class("short", |c| c.wall_time(Duration::from_secs(3)))
            .backend("db", |b| {
                b.duration("timeout", Duration::from_secs(timeout))
            })
            .build()
            .unwrap()
    };
    let f = fixture(policy(10));
    let db = f.engine.backend("db").unwrap();
    // Calls of 8 s under a 10 s timeout, then a reload to a 1 s timeout.
    let api = f.budget();
    for _ in 0..3 {
        let a = f.engine.begin_attempt(db, &api, 0).unwrap();
        f.clock.advance(Duration::from_secs(8));
        a.finish(AttemptOutcome::Success);
    }
    let short = f.budget_in("short");
    let trial = f.engine.begin_attempt(db, &short, 0).unwrap(); // one per usual 8 s
    assert_eq!(
        f.engine.begin_attempt(db, &short, 0).unwrap_err().reason(),
        Reason::InsufficientTime
    );
    drop(trial);
    f.engine.reload(policy(1)).unwrap();
    for _ in 0..3 {
        let short = f.budget_in("short");
        let a = f.engine.begin_attempt(db, &short, 0).unwrap();
        assert_eq!(a.timeout(), Duration::from_secs(1));
    }
}

#[test]
fn retry_decisions() {
    let f = fixture(single("db", |b| {
        b.duration("retry.backoff_base", Duration::from_millis(100))
            .duration("retry.backoff_max", Duration::from_millis(400))
            .fraction("retry.ratio", 0.5)
            .count("retry.min_per_second", 0)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    let stop = |d: RetryDecision| match d {
        RetryDecision::Stop(v) => v,
        other => panic!("expected a stop, got {other:?}"),
    };
    for outcome in [
        AttemptOutcome::Success,
        AttemptOutcome::ClientError,
        AttemptOutcome::Cancelled,
        AttemptOutcome::UpstreamTimeout,
        AttemptOutcome::Refused { retry_after: None },
    ] {
        let v = stop(f.engine.retry(db, &budget, outcome, 1));
        assert_eq!(
            (v.reason(), v.retry()),
            (Reason::NotRetryable, Retry::Never),
            "{outcome:?}"
        );
    }
    // The budget starts with no tokens (no floor): two first attempts earn one retry.
    let v = stop(f.engine.retry(db, &budget, AttemptOutcome::Timeout, 1));
    assert_eq!(v.reason(), Reason::RetryBudgetExhausted);
    assert_eq!(
        budget.used(Counter::RETRIES),
        0,
        "the tree's retry was given back"
    );
    for _ in 0..4 {
        f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    }
    // Full jitter: at most base × 2^(attempt - 1), capped.
    match f.engine.retry(db, &budget, AttemptOutcome::ServerError, 1) {
        RetryDecision::After(d) => assert!(d <= Duration::from_millis(100), "{d:?}"),
        other => panic!("{other:?}"),
    }
    // Never sooner than the backend's own Retry-After.
    match f.engine.retry(
        db,
        &budget,
        AttemptOutcome::Refused {
            retry_after: Some(Duration::from_secs(3)),
        },
        5,
    ) {
        RetryDecision::After(d) => assert_eq!(d, Duration::from_secs(3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(budget.used(Counter::RETRIES), 2);
    // Not when the time left cannot cover the wait.
    f.clock.advance(Duration::from_millis(29_000));
    let v = stop(f.engine.retry(
        db,
        &budget,
        AttemptOutcome::Refused {
            retry_after: Some(Duration::from_secs(2)),
        },
        1,
    ));
    assert_eq!(v.reason(), Reason::InsufficientTime);
}

#[test]
fn the_retry_budget_refills_with_its_floor() {
    let f = fixture(single("db", |b| {
        b.fraction("retry.ratio", 0.0)
            .count("retry.min_per_second", 2)
            .duration("retry.backoff_base", MS)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    let mut granted = 0;
    for _ in 0..10 {
        if matches!(
            f.engine.retry(db, &budget, AttemptOutcome::Timeout, 1),
            RetryDecision::After(_)
        ) {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 2,
        "two seconds' floor to start with... one second of it: two tokens"
    );
    f.clock.advance(Duration::from_secs(1));
    let mut later = 0;
    for _ in 0..10 {
        if matches!(
            f.engine.retry(db, &budget, AttemptOutcome::Timeout, 1),
            RetryDecision::After(_)
        ) {
            later += 1;
        }
    }
    assert_eq!(later, 2);
    assert!(f.engine.backend_stats()[0].retry_tokens == 0);
}

#[test]
fn call_retries_within_the_trees_allowance() {
    let f = fixture(single("db", |b| {
        b.fraction("retry.ratio", 1.0)
            .count("retry.min_per_second", 100)
            .count("breaker.consecutive_failures", 100)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget(); // 10 retries for the tree
    let mut calls = 0;
    let clock = f.clock.clone();
    let result: Result<(), CallError<&str>> = f.engine.call(
        db,
        &budget,
        |d| clock.advance(d),
        |_| {
            calls += 1;
            Err(("boom", AttemptOutcome::ServerError))
        },
    );
    match result {
        Err(CallError::Failed("boom", v)) => assert_eq!(v.dimension(), Some("retries")),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 11, "one attempt and the tree's ten retries");
    let mut tries = 0;
    let ok: Result<u32, CallError<&str>> = f.engine.call(
        db,
        &f.budget(),
        |_| {},
        |_| {
            tries += 1;
            if tries < 3 {
                Err(("flaky", AttemptOutcome::Timeout))
            } else {
                Ok(7)
            }
        },
    );
    assert_eq!(ok.unwrap(), 7);
}

#[test]
fn retry_amplification_across_three_layers_stays_within_the_trees_allowance() {
    // RESTBase retries a parse up to 5 times, Parsoid each API call up to 8 times, and the API its
    // DB query up to 3 times: unguarded, one failing request makes 6 × 9 × 4 = 216 DB attempts. With
    // one request tree sharing a retry allowance of 4, every layer's retries draw from the same pool.
    let policy = Policy::builder()
        .class("restbase", |c| {
            c.wall_time(Duration::from_secs(60)).retries(4)
        })
        .class("parsoid", |c| c.wall_time(Duration::from_secs(60)))
        .class("api", |c| c.wall_time(Duration::from_secs(60)))
        .backend("parsoid", |b| {
            b.fraction("retry.ratio", 1.0)
                .count("retry.min_per_second", 1000)
        })
        .backend("api", |b| {
            b.fraction("retry.ratio", 1.0)
                .count("retry.min_per_second", 1000)
        })
        .backend("db", |b| {
            b.fraction("retry.ratio", 1.0)
                .count("retry.min_per_second", 1000)
                .count("breaker.consecutive_failures", 4095)
        })
        .build()
        .unwrap();
    let f = fixture(policy);
    let (parsoid, api, db) = (
        f.engine.backend("parsoid").unwrap(),
        f.engine.backend("api").unwrap(),
        f.engine.backend("db").unwrap(),
    );
    let root = f
        .engine
        .begin_by_name("restbase", RequestId::new("edit").unwrap())
        .unwrap();
    let db_attempts = std::cell::Cell::new(0u32);
    let clock = f.clock.clone();
    let sleep = |d: Duration| clock.advance(d);
    let layer = |budget: &Budget,
                 backend: Backend,
                 max_retries: u32,
                 inner: &dyn Fn(&Budget) -> Result<(), ()>| {
        let mut n = 0;
        loop {
            let attempt = f.engine.begin_attempt(backend, budget, n).map_err(|_| ())?;
            let child = budget.child().map_err(|_| ())?;
            let outcome = if inner(&child).is_ok() {
                AttemptOutcome::Success
            } else {
                AttemptOutcome::ServerError
            };
            attempt.finish(outcome);
            if outcome == AttemptOutcome::Success {
                return Ok(());
            }
            n += 1;
            if n > max_retries {
                return Err(());
            }
            match f.engine.retry(backend, budget, outcome, n) {
                RetryDecision::After(d) => sleep(d),
                RetryDecision::Stop(_) => return Err(()),
            }
        }
    };
    let database = |_: &Budget| -> Result<(), ()> {
        db_attempts.set(db_attempts.get() + 1);
        Err(())
    };
    let api_layer = |b: &Budget| layer(b, db, 3, &database);
    let parsoid_layer = |b: &Budget| layer(b, api, 8, &api_layer);
    let restbase = layer(&root, parsoid, 5, &parsoid_layer);
    assert!(restbase.is_err());
    assert_eq!(
        root.used(Counter::RETRIES),
        4,
        "every layer drew from the one allowance"
    );
    assert!(
        db_attempts.get() <= 1 + 4,
        "{} DB attempts",
        db_attempts.get()
    );
}

#[test]
fn backends_survive_reloads_that_keep_their_hosts() {
    let f = fixture(single("db", |b| b.count("breaker.consecutive_failures", 1)));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.engine
        .reload(single("db", |b| b.count("breaker.consecutive_failures", 2)))
        .unwrap();
    assert_eq!(f.engine.backend("db").unwrap(), db);
    assert_eq!(
        f.engine.backend_stats()[0].breaker,
        "open",
        "state outlives the reload"
    );
    assert!(f.engine.backend("nope").is_err());
}

/// A reload that edits a backend's pool (reorders it, adds a host, takes one out) keeps the
/// backend's state and its remaining hosts': attempts begun before it release into the same
/// permits new ones take from, counters go on, and breakers and ejections stay as they were.
#[test]
fn backends_keep_their_state_through_reloads_that_edit_their_pool() {
    let pool = |hosts: &[&str]| {
        single("kafka", |b| {
            b.hosts(hosts)
                .count("max_in_flight", 2)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 0.5)
                .duration("ejection.base", Duration::from_secs(10))
                .count("breaker.consecutive_failures", 1000)
        })
    };
    let f = fixture(pool(&["k1", "k2"]));
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let budget = f.budget();
    f.engine
        .begin_attempt_on(k1, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    let held = [
        f.engine.begin_attempt(kafka, &budget, 0).unwrap(),
        f.engine.begin_attempt(kafka, &budget, 0).unwrap(),
    ];
    assert!(held.iter().all(|a| a.host() == Some("k2")));
    let stats = |f: &Fixture| f.engine.backend_stats().remove(0);
    let before = stats(&f);
    assert_eq!(before.outcome("connect_failure"), 1);

    f.engine.reload(pool(&["k2", "k1", "k3"])).unwrap();
    let after = f.budget();
    assert_eq!(
        f.engine
            .begin_attempt(kafka, &after, 0)
            .map_err(|v| v.reason())
            .err(),
        Some(Reason::BulkheadFull),
        "the two attempts begun before the reload still hold the backend's two places"
    );
    let now = stats(&f);
    assert_eq!((now.in_flight, now.outcome("connect_failure")), (2, 1));
    let host = |s: &costguard::backend::BackendStats, name: &str| {
        let h = s.host(name).unwrap();
        (h.ejected, h.in_flight)
    };
    assert_eq!(host(&now, "k1"), (true, 0), "k1 stays ejected");
    assert_eq!(host(&now, "k2"), (false, 2));
    assert_eq!(host(&now, "k3"), (false, 0));
    for a in held {
        a.finish(AttemptOutcome::Success);
    }
    let now = stats(&f);
    assert_eq!((now.in_flight, host(&now, "k2")), (0, (false, 0)));
    assert_eq!(now.outcome("success"), 2);

    // Taken out of the pool while ejected, k1 gives its place among the ejected back: of the two
    // hosts left, one may be ejected, and k3 now is at its first failure.
    f.engine.reload(pool(&["k2", "k3"])).unwrap();
    let k3 = f.engine.host(kafka, "k3").unwrap();
    f.engine
        .begin_attempt_on(k3, &f.budget(), 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    assert_eq!(host(&stats(&f), "k3"), (true, 0));
    assert_eq!(
        f.kinds(),
        [
            TransitionKind::Ejected,
            TransitionKind::EjectionEnded,
            TransitionKind::Ejected
        ],
        "k1's ejection, ended by its removal, then k3's; no breaker moved"
    );
}

/// The share of a pool that may be ejected is of the pool the current policy has, for requests of
/// every version: a request begun before a reload that shrank the pool can neither eject the new
/// pool beyond its share nor leave a removed host holding a place among the ejected.
#[test]
fn ejection_share_is_of_the_current_pool_for_every_version() {
    let pool = |hosts: &[&str]| {
        single("kafka", |b| {
            b.hosts(hosts)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 0.5)
                .duration("ejection.base", Duration::from_secs(3600))
                .duration("ejection.max", Duration::from_secs(3600))
                .count("breaker.consecutive_failures", 1000)
        })
    };
    let f = fixture(pool(&["k1", "k2", "k3", "k4"]));
    let kafka = f.engine.backend("kafka").unwrap();
    let host = |name| f.engine.host(kafka, name).unwrap();
    let (k1, k2, k4) = (host("k1"), host("k2"), host("k4"));
    let long = |n| {
        f.engine
            .begin_by_name("long", RequestId::from_u64(n))
            .unwrap()
    };
    let old = long(1);
    let on_k4 = f.engine.begin_attempt_on(k4, &old, 0).unwrap();

    f.engine.reload(pool(&["k1", "k2"])).unwrap();
    // The old request's attempt on the removed k4 fails, and so does a fresh one: k4 is out of the
    // pool, so it takes none of the one place the new pool has among the ejected.
    on_k4.finish(AttemptOutcome::ConnectFailure);
    f.engine
        .begin_attempt_on(k4, &old, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    let new = long(2);
    f.engine
        .begin_attempt_on(k2, &new, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    let ejected = |f: &Fixture| -> Vec<String> {
        f.engine.backend_stats()[0]
            .hosts
            .iter()
            .filter(|h| h.ejected)
            .map(|h| h.host.clone())
            .collect()
    };
    assert_eq!(ejected(&f), ["k2"], "k2 took the new pool's one place");
    // The old request's attempt on k1 fails: under the old pool's share (two of four) k1 would go
    // too, and the new pool would have no host left.
    f.engine
        .begin_attempt_on(k1, &old, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    assert_eq!(ejected(&f), ["k2"]);
    let next = f.engine.begin_attempt(kafka, &new, 0).unwrap();
    assert_eq!(next.host(), Some("k1"));
    next.finish(AttemptOutcome::Success);
    assert_eq!(
        f.kinds(),
        [TransitionKind::Ejected],
        "only k2's ejection happened"
    );
}

/// A reload that makes a pool's share of ejected hosts smaller than the hosts it keeps ejected
/// brings back early, on probation, those whose ejections end soonest, and reports it.
#[test]
fn a_smaller_share_brings_the_soonest_back_early() {
    let pool = |hosts: &[&str]| {
        single("kafka", |b| {
            b.hosts(hosts)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 0.5)
                .duration("ejection.base", Duration::from_secs(60))
                .duration("ejection.max", Duration::from_secs(60))
                .count("breaker.consecutive_failures", 1000)
        })
    };
    let f = fixture(pool(&["k1", "k2", "k3", "k4"]));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    for name in ["k1", "k2"] {
        let host = f.engine.host(kafka, name).unwrap();
        f.engine
            .begin_attempt_on(host, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
        f.clock.advance(Duration::from_secs(1));
    }
    f.engine.reload(pool(&["k1", "k2", "k3"])).unwrap();
    let stats = f.engine.backend_stats().remove(0);
    let ejected: Vec<&str> = stats
        .hosts
        .iter()
        .filter(|h| h.ejected)
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(
        ejected,
        ["k2"],
        "one of three may be out: k1's ejection ended soonest"
    );
    assert_eq!(
        f.log.lock().unwrap().last(),
        Some(&(TransitionKind::Readmitted, Some("k1".to_owned())))
    );
    // Back in the pool, on probation: it takes attempts again.
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let a = f.engine.begin_attempt_on(k1, &budget, 0).unwrap();
    a.finish(AttemptOutcome::Success);
}

/// A host taken out of the pool and put back starts its ejections afresh: the next one lasts the
/// base time, not until a doubled end time the forgotten ejection had reached.
#[test]
fn a_forgotten_ejection_does_not_lengthen_the_next_one() {
    let pool = |hosts: &[&str]| {
        single("kafka", |b| {
            b.hosts(hosts)
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 1.0)
                .duration("ejection.base", Duration::from_secs(1))
                .duration("ejection.max", Duration::from_secs(60))
                .count("breaker.consecutive_failures", 1000)
        })
    };
    let f = fixture(pool(&["k1", "k2"]));
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let fail_k1 = |f: &Fixture| {
        let budget = f.budget();
        f.engine
            .begin_attempt_on(k1, &budget, 0)
            .map(|a| a.finish(AttemptOutcome::ConnectFailure))
            .map_err(|v| v.reason())
    };
    // Three ejections in a row (readmitted on probation, failing at once): 1 s, 2 s, then 4 s, to t=7.
    for wait in [0, 1, 2] {
        f.clock.advance(Duration::from_secs(wait));
        fail_k1(&f).unwrap();
    }
    f.engine.reload(pool(&["k2"])).unwrap();
    f.engine.reload(pool(&["k1", "k2"])).unwrap();
    // Back, and failing again: its first ejection in a row, one second long.
    fail_k1(&f).unwrap();
    f.clock.advance(Duration::from_millis(1_500));
    assert_eq!(fail_k1(&f), Ok(()), "k1's 1 s ejection is over");
}

/// The same for a host a smaller share brought back early: once it has proven itself, its next
/// ejection lasts the base time, not until the end of the one it was brought back from.
#[test]
fn an_early_readmission_does_not_lengthen_the_next_ejection() {
    let pool = |share: f64| {
        single("kafka", |b| {
            b.hosts(&["k1", "k2"])
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", share)
                .duration("ejection.base", Duration::from_secs(1))
                .duration("ejection.max", Duration::from_secs(60))
                .count("breaker.consecutive_failures", 1000)
        })
    };
    let f = fixture(pool(1.0));
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let on_k1 = |f: &Fixture, outcome: AttemptOutcome| {
        let budget = f.budget();
        f.engine
            .begin_attempt_on(k1, &budget, 0)
            .map(|a| a.finish(outcome))
            .map_err(|v| v.reason())
    };
    // Ejected three times in a row: 1 s, 2 s, then 4 s, to t=7.
    for wait in [0, 1, 2] {
        f.clock.advance(Duration::from_secs(wait));
        on_k1(&f, AttemptOutcome::ConnectFailure).unwrap();
    }
    // No host may be out: k1 is back at once, on probation, and proves itself.
    f.engine.reload(pool(0.0)).unwrap();
    on_k1(&f, AttemptOutcome::Success).unwrap();
    f.engine.reload(pool(1.0)).unwrap();
    // Failing again: its first ejection in a row, one second long.
    on_k1(&f, AttemptOutcome::ConnectFailure).unwrap();
    assert_eq!(
        on_k1(&f, AttemptOutcome::Success),
        Err(Reason::NoHealthyHost)
    );
    f.clock.advance(Duration::from_millis(1_500));
    assert!(!f.engine.backend_stats()[0].hosts[0].ejected);
    assert_eq!(
        on_k1(&f, AttemptOutcome::Success),
        Ok(()),
        "k1's 1 s ejection is over"
    );
}

/// Refusals are counted per backend by reason, for attempts and for retries, in the stats and the
/// exposition: an operator sees how much load a breaker or a bulkhead kept away.
#[test]
fn refusals_are_counted_by_reason() {
    let f = fixture(single("db", |b| {
        b.count("max_in_flight", 1)
            .count("breaker.consecutive_failures", 2)
            .count("breaker.probes", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(1))
            .fraction("retry.ratio", 1.0)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    let held = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(
        f.run(db, &budget, AttemptOutcome::Success),
        Err(Reason::BulkheadFull)
    );
    held.finish(AttemptOutcome::ServerError);
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    for _ in 0..3 {
        assert_eq!(
            f.run(db, &budget, AttemptOutcome::Success),
            Err(Reason::CircuitOpen)
        );
    }
    assert!(matches!(
        f.engine.retry(db, &budget, AttemptOutcome::ClientError, 1),
        RetryDecision::Stop(_)
    ));
    assert!(matches!(
        f.engine.retry(db, &budget, AttemptOutcome::ServerError, 1),
        RetryDecision::Stop(_)
    ));
    // The breaker's probe closes it again.
    f.clock.advance(Duration::from_secs(1));
    f.run(db, &budget, AttemptOutcome::Success).unwrap();
    // The tree's allowance (10 retries) spent: the eleventh is refused by the budget.
    let granted = f.retries_granted(db, &budget, 11);
    assert_eq!(granted, 10);

    let stats = f.engine.backend_stats().remove(0);
    assert_eq!(stats.refused_for(Reason::BulkheadFull), 1);
    assert_eq!(stats.refused_for(Reason::CircuitOpen), 3);
    assert_eq!(stats.refused_for(Reason::NoHealthyHost), 0);
    assert_eq!(stats.retries_refused_for(Reason::NotRetryable), 1);
    assert_eq!(stats.retries_refused_for(Reason::LimitExceeded), 1);
    assert_eq!(stats.retries_refused_for(Reason::CircuitOpen), 1);
    let text = f.engine.admission_stats().to_prometheus();
    for line in [
        "costguard_backend_refused_total{backend=\"db\",reason=\"circuit_open\"} 3\n",
        "costguard_backend_refused_total{backend=\"db\",reason=\"no_healthy_host\"} 0\n",
        "costguard_backend_retries_refused_total{backend=\"db\",reason=\"limit_exceeded\"} 1\n",
        "costguard_backend_retries_refused_total{backend=\"db\",reason=\"circuit_open\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn a_request_calls_backends_under_the_policy_it_started_with() {
    let timeout = |s: u64| {
        move |b: costguard::policy::BackendBuilder| b.duration("timeout", Duration::from_secs(s))
    };
    let f = fixture(single("db", timeout(1)));
    let db = f.engine.backend("db").unwrap();
    let before = f.budget();
    f.engine
        .reload(
            Policy::builder()
                .class("api", |c| c.wall_time(Duration::from_secs(30)))
                .backend("db", timeout(2))
                .backend("search", timeout(3))
                .build()
                .unwrap(),
        )
        .unwrap();
    let after = f.budget();
    // Owned, so that the closure may return it; `into_owned` hands the permits over exactly once
    // (the counts below would be off otherwise).
    let attempt =
        |budget: &Budget, b: Backend| f.engine.begin_attempt(b, budget, 0).unwrap().into_owned();
    let (old, new) = (attempt(&before, db), attempt(&after, db));
    assert_eq!(
        old.timeout(),
        Duration::from_secs(1),
        "the version it started under"
    );
    assert_eq!(new.timeout(), Duration::from_secs(2));
    assert_eq!(
        f.engine.backend_stats()[0].in_flight,
        2,
        "both versions count against the one backend state"
    );
    // A backend added by the reload is reached from the older request through the current policy.
    let search = f.engine.backend("search").unwrap();
    assert_eq!(attempt(&before, search).timeout(), Duration::from_secs(3));
    // A budget of another engine: the call is this engine's, under this engine's current policy.
    let other = fixture(single("db", timeout(5)));
    let foreign = other.budget();
    let a = attempt(&foreign, db);
    assert_eq!(a.timeout(), Duration::from_secs(2));
    assert_eq!(f.engine.backend_stats()[0].in_flight, 3);
    assert_eq!(other.engine.backend_stats()[0].in_flight, 0);
    for a in [old, new, a] {
        a.finish(AttemptOutcome::Success);
    }
    assert_eq!(f.engine.backend_stats()[0].outcome("success"), 3);
    assert_eq!(f.engine.backend_stats()[0].in_flight, 0);
}

#[test]
fn kafka_2016_in_miniature_connects_hang_but_threads_do_not_pile_up() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Condvar;

    let policy = Policy::builder()
        .class("api", |c| c.wall_time(Duration::from_secs(3600)))
        .backend("kafka", |b| {
            b.hosts(&["kafka1012", "kafka1013", "kafka1014"])
                .count("max_connecting_per_host", 2)
                .count("ejection.consecutive_failures", 2)
                .duration("ejection.base", Duration::from_secs(60))
                .count("breaker.consecutive_failures", 4095)
                .count("breaker.min_calls", 1_000_000)
        })
        .backend("db", |b| b)
        .build()
        .unwrap();
    let f = fixture(policy);
    let (kafka, db) = (
        f.engine.backend("kafka").unwrap(),
        f.engine.backend("db").unwrap(),
    );
    let dead = AtomicBool::new(true);
    let stuck = AtomicUsize::new(0);
    let max_stuck = AtomicUsize::new(0);
    let served_db = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    // Connect timeouts "fire" when the test bumps this generation: an event, not a sleep.
    let timeouts = (Mutex::new(0u64), Condvar::new());
    const THREADS: usize = 12;
    const REQUESTS: usize = 40;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (f, dead, stuck, max_stuck, served_db, finished, timeouts) = (
                &f, &dead, &stuck, &max_stuck, &served_db, &finished, &timeouts,
            );
            s.spawn(move || {
                for i in 0..REQUESTS {
                    let budget = f
                        .engine
                        .begin_by_name("api", RequestId::from_u64((t * 1000 + i) as u64))
                        .unwrap();
                    // Every request logs an event to Kafka...
                    if let Ok(mut attempt) = f.engine.begin_attempt(kafka, &budget, 0) {
                        if attempt.host() == Some("kafka1012") && dead.load(Ordering::SeqCst) {
                            let now = stuck.fetch_add(1, Ordering::SeqCst) + 1;
                            max_stuck.fetch_max(now, Ordering::SeqCst);
                            let (lock, cv) = timeouts;
                            let mut generation = lock.lock().unwrap();
                            let start = *generation;
                            while *generation == start {
                                generation = cv.wait(generation).unwrap();
                            }
                            drop(generation);
                            stuck.fetch_sub(1, Ordering::SeqCst);
                            attempt.finish(AttemptOutcome::Timeout);
                        } else {
                            attempt.connected();
                            attempt.finish(AttemptOutcome::Success);
                        }
                    }
                    // ...and does its real work against the database, which must keep working.
                    let query = f.engine.begin_attempt(db, &budget, 0).unwrap();
                    query.finish(AttemptOutcome::Success);
                    served_db.fetch_add(1, Ordering::SeqCst);
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        // The connect timeout fires for whoever is stuck, until every thread is done.
        while finished.load(Ordering::SeqCst) < THREADS {
            if stuck.load(Ordering::SeqCst) > 0 {
                let (lock, cv) = &timeouts;
                *lock.lock().unwrap() += 1;
                cv.notify_all();
            }
            std::thread::yield_now();
        }
    });
    assert!(
        max_stuck.load(Ordering::SeqCst) <= 2,
        "at most the connect cap is ever stuck"
    );
    assert!(max_stuck.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        served_db.load(Ordering::SeqCst),
        THREADS * REQUESTS,
        "the other backend kept serving"
    );
    let stats = &f.engine.backend_stats()[0];
    assert!(
        stats.host("kafka1012").unwrap().ejected,
        "the broker was ejected, by nobody's hand"
    );
    assert!(f
        .log
        .lock()
        .unwrap()
        .contains(&(TransitionKind::Ejected, Some("kafka1012".to_owned()))));
    assert_eq!((stats.in_flight, stats.connecting), (0, 0));
    // It comes back up; once its ejection is over it is readmitted and serves again.
    dead.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::from_secs(60));
    let budget = f
        .engine
        .begin_by_name("api", RequestId::new("later").unwrap())
        .unwrap();
    let mut hosts = Vec::new();
    for _ in 0..6 {
        let mut a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
        hosts.push(a.host().unwrap().to_owned());
        a.connected();
        a.finish(AttemptOutcome::Success);
    }
    assert!(hosts.iter().any(|h| h == "kafka1012"), "{hosts:?}");
    assert!(f
        .log
        .lock()
        .unwrap()
        .contains(&(TransitionKind::Readmitted, Some("kafka1012".to_owned()))));
    assert!(
        !f.engine.backend_stats()[0]
            .host("kafka1012")
            .unwrap()
            .ejected
    );
}

#[test]
fn backend_policies_load_from_toml() {
    let p = Policy::from_toml_str(
        r#"
[classes.api]

[backends.kafka]
hosts = ["kafka1012:9092", "kafka1013:9092"]
timeout = "500ms"
margin = "20ms"
max_in_flight = 64
max_connecting_per_host = 2

[backends.kafka.breaker]
consecutive_failures = 5
failure_ratio = 0.5
slow_ratio = 0.8
slow_call = "1s"
window = "10s"
min_calls = 20
open_for = "1s"
max_open_for = "1m"
probes = 2
ramp_up = "30s"

[backends.kafka.ejection]
consecutive_failures = 3
base = "5s"
max = "5m"
max_ejected = 0.34

[backends.kafka.retry]
ratio = 0.1
min_per_second = 5
backoff_base = "25ms"
backoff_max = "1s"
"#,
    )
    .unwrap();
    let k = p.backend("kafka").unwrap();
    assert_eq!(
        k.hosts().collect::<Vec<_>>(),
        vec!["kafka1012:9092", "kafka1013:9092"]
    );
    assert_eq!(
        (k.timeout(), k.margin()),
        (Duration::from_millis(500), Duration::from_millis(20))
    );
    assert_eq!(k.max_in_flight(), (64, 64));
    assert_eq!(k.max_connecting().1, 2);
    let b = k.breaker();
    assert_eq!(
        (
            b.consecutive_failures,
            b.failure_ratio,
            b.slow_ratio,
            b.probes
        ),
        (5, 500, 800, 2)
    );
    assert_eq!(
        (b.max_open_for, b.ramp_up),
        (Duration::from_secs(60), Duration::from_secs(30))
    );
    assert_eq!(k.ejection().max_ejected, 340);
    assert_eq!((k.retry().ratio, k.retry().min_per_second), (100, 5));
}

#[test]
fn absurd_backend_settings_are_clear_errors() {
    let p = Policy::from_toml_str(
        r#"
[classes.api]

[backends.zero]
max_in_flight = 0
max_connecting = -1
timeout = "0s"

[backends.ratios]
hosts = ["ok", "ok", "bad host!"]
[backends.ratios.breaker]
failure_ratio = -0.5
slow_ratio = nan
probes = 99
open_for = "10m"
max_open_for = "1m"
[backends.ratios.ejection]
max_ejected = 1.5
[backends.ratios.retry]
ratio = 2
backoff_base = 5
[backends.ratios.sideways]
x = 1

[backends."Bad Name"]

[backends.margin]
retry = { ratio = 0.0002 }
timeout = "100ms"
margin = "18446744073709551615ns"

[backends.twice]
"breaker.window" = "5s"
breaker = { window = "7s" }
"retry.ratio" = 0.5
retry = { ratio = 0.1 }
"#,
    )
    .unwrap_err();
    let all = p.to_string();
    for needle in [
        "backends.zero.max_in_flight: must be between 1 and 16777216 (found 0)",
        "backends.zero.max_connecting: must not be negative (found -1)",
        "backends.zero.timeout: must be greater than zero",
        "backends.ratios.hosts: host `ok` listed twice",
        "backends.ratios.hosts: `bad host!` is not a valid host",
        "backends.ratios.breaker.failure_ratio: must be a fraction between 0 and 1 (found -0.5)",
        "backends.ratios.breaker.slow_ratio: must be a finite number",
        "backends.ratios.breaker.probes: must be between 1 and 15 (found 99)",
        "backends.ratios.breaker.max_open_for: must not be below breaker.open_for",
        "backends.ratios.ejection.max_ejected: must be a fraction between 0 and 1 (found 1.5)",
        "backends.ratios.retry.ratio: must be a fraction between 0 and 1 (found 2)",
        "backends.ratios.retry.backoff_base: a duration needs a unit",
        "backends.ratios.sideways: unknown key `sideways`",
        "`Bad Name` is not a valid name",
        "backends.twice.breaker.window: setting given twice",
        "backends.twice.retry.ratio: setting given twice",
        "backends.margin.margin: must be below timeout",
        "backends.margin.retry.ratio: is below the resolution of 0.001 (found 0.0002)",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    // Every problem has a line.
    assert!(p.problems().iter().all(|p| p.location.is_some()), "{all}");
    let code = Policy::builder()
        .class("api", |c| c)
        .backend("b", |b| {
            b.count("max_inflight", 3).fraction("retry.ratio", f64::NAN)
        })
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        code.contains("backends.b.max_inflight: unknown setting"),
        "{code}"
    );
    assert!(
        code.contains("backends.b.retry.ratio: must be a fraction between 0 and 1 (found NaN)"),
        "{code}"
    );
    // In code, the last call wins (as for classes): a setting is not given twice.
    let last = Policy::builder()
        .class("api", |c| c)
        .backend("b", |b| {
            b.duration("timeout", Duration::from_secs(1))
                .duration("timeout", Duration::from_secs(9))
                .count("max_in_flight", 3)
                .count("max_in_flight", 4)
                .fraction("retry.ratio", 0.5)
                .fraction("retry.ratio", 0.25)
        })
        .build()
        .unwrap();
    let b = last.backend("b").unwrap();
    assert_eq!(b.timeout(), Duration::from_secs(9));
    assert_eq!(b.max_in_flight().0, 4);
    assert_eq!(b.retry().ratio, 250, "per mille");
}

/// The margin kept back from a request's time must be below the backend's timeout whether it was
/// written or left at its default (5 ms); a timeout written below the default margin is reported
/// where the timeout was written, once.
#[test]
fn a_timeout_not_above_the_default_margin_is_refused_where_it_was_written() {
    let backend = |settings: &str| {
        Policy::from_toml_str(&format!("[classes.api]\n[backends.db]\n{settings}\n"))
    };
    for timeout in ["1ms", "5ms"] {
        let err = backend(&format!("timeout = \"{timeout}\"")).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(
            err.to_string(),
            "line 3:11: backends.db.timeout: margin (5ms, the default) must be below timeout"
        );
    }
    let db = backend("timeout = \"6ms\"").unwrap();
    let db = db.backend("db").unwrap();
    assert_eq!((db.timeout(), db.margin()), (6 * MS, 5 * MS));
    let db = backend("timeout = \"1ms\"\nmargin = \"0s\"").unwrap();
    assert_eq!(db.backend("db").unwrap().margin(), Duration::ZERO);
    // A written margin is reported as before, at the margin; an unreadable one only as unreadable.
    let written = backend("timeout = \"1ms\"\nmargin = \"5ms\"").unwrap_err();
    assert_eq!(
        written.to_string(),
        "line 4:10: backends.db.margin: must be below timeout"
    );
    let unreadable = backend("timeout = \"1ms\"\nmargin = 5").unwrap_err();
    assert_eq!(unreadable.problems().len(), 1, "{unreadable}");
    assert_eq!(unreadable.problems()[0].field, "backends.db.margin");
    // A timeout that could not be read is not compared with the margin.
    let zero = backend("timeout = \"0s\"\nmargin = \"2s\"").unwrap_err();
    assert_eq!(
        zero.to_string(),
        "line 3:11: backends.db.timeout: must be greater than zero"
    );
    let code = Policy::builder()
        .class("api", |c| c)
        .backend("db", |b| b.duration("timeout", MS))
        .build()
        .unwrap_err();
    assert_eq!(
        code.to_string(),
        "backends.db.timeout: margin (5ms, the default) must be below timeout"
    );
}

/// Host names are case-insensitive and `db1.` is the fully qualified `db1`: spelled two ways, one
/// machine is still listed twice (and would get twice its per-host caps). The policy keeps each
/// host as it was written.
#[test]
fn hosts_that_differ_only_by_case_or_a_trailing_dot_are_listed_twice() {
    for pair in [
        ["db1", "DB1"],
        ["Db1.example", "dB1.EXAMPLE"],
        ["db1.", "db1"],
        ["db1", "DB1."],
        ["db1.:5432", "db1:5432"],
        ["[FE80::1]:5432", "[fe80::1]:5432"],
    ] {
        let source = format!(
            "[classes.api]\n[backends.db]\nhosts = [\"{}\", \"{}\"]\n",
            pair[0], pair[1]
        );
        let err = Policy::from_toml_str(&source).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{pair:?}: {err}");
        let p = &err.problems()[0];
        assert_eq!(
            (p.field.as_str(), p.message.as_str()),
            (
                "backends.db.hosts",
                &*format!("host `{}` listed twice", pair[1])
            ),
            "{pair:?}"
        );
        assert_eq!(p.location.as_ref().map(|at| at.line), Some(3));
        let code = Policy::builder()
            .class("api", |c| c)
            .backend("db", |b| b.hosts(&pair))
            .build();
        assert!(code.is_err(), "{pair:?} accepted in code");
    }
    // Another port, two dots, or another name are other hosts; each is kept as written.
    let p = Policy::from_toml_str(
        "[classes.api]\n[backends.db]\nhosts = [\"DB1.\", \"db1:5433\", \"db1..\", \"db10\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.backend("db").unwrap().hosts().collect::<Vec<_>>(),
        ["DB1.", "db1:5433", "db1..", "db10"]
    );
}

#[test]
fn backends_appear_in_the_same_snapshot_and_exposition_as_admission() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1"]).count("breaker.consecutive_failures", 1)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    f.run(kafka, &budget, AttemptOutcome::ConnectFailure)
        .unwrap();
    let stats = f.engine.admission_stats();
    assert_eq!(stats.backends.len(), 1);
    assert_eq!(stats.backends[0].breaker, "open");
    let text = stats.to_prometheus();
    for line in [
        "costguard_breaker_state{backend=\"kafka\",host=\"\",state=\"open\"} 1",
        "costguard_breaker_state{backend=\"kafka\",host=\"k1\",state=\"open\"} 1",
        "costguard_backend_attempts_total{backend=\"kafka\",outcome=\"connect_failure\"} 1",
        "costguard_backend_in_flight{backend=\"kafka\"} 0",
        "costguard_host_ejected{backend=\"kafka\",host=\"k1\"} 0",
        "# TYPE costguard_backend_retry_tokens gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn the_readme_backend_snippet_loads() {
    let readme = include_str!("../README.md");
    let start = readme.find("[backends.kafka]").unwrap();
    let end = start + readme[start..].find("```").unwrap();
    let p = Policy::from_toml_str(&format!("[classes.api]\n{}", &readme[start..end])).unwrap();
    let k = p.backend("kafka").unwrap();
    assert_eq!(k.hosts().count(), 3);
    assert_eq!(k.breaker().probes, 1);
    assert_eq!(k.ejection().max_ejected, 340);
    assert_eq!(k.retry().min_per_second, 5);
}

#[test]
fn a_host_handle_names_its_host_across_reloads() {
    let pool = |hosts: &[&str]| single("kafka", |b| b.hosts(hosts));
    let f = fixture(pool(&["alpha", "beta"]));
    let kafka = f.engine.backend("kafka").unwrap();
    let alpha = f.engine.host(kafka, "alpha").unwrap();
    let beta = f.engine.host(kafka, "beta").unwrap();
    let on = |host, budget: &Budget| {
        f.engine
            .begin_attempt_on(host, budget, 0)
            .map(|a| a.host().map(str::to_owned))
            .map_err(|v| v.to_string())
    };
    // Reordered: each handle still reaches its own host.
    f.engine.reload(pool(&["beta", "alpha"])).unwrap();
    let budget = f.budget();
    assert_eq!(on(alpha, &budget), Ok(Some("alpha".into())));
    assert_eq!(on(beta, &budget), Ok(Some("beta".into())));
    assert_eq!(f.engine.host(kafka, "alpha").unwrap(), alpha);
    // Replaced: the handle of a host that is gone is refused, never sent to the newcomer.
    f.engine.reload(pool(&["gamma"])).unwrap();
    let after = f.budget();
    let refused = on(alpha, &after).unwrap_err();
    assert!(refused.contains("kafka/alpha"), "{refused}");
    assert!(f.engine.host(kafka, "alpha").is_err());
    let gamma = f.engine.host(kafka, "gamma").unwrap();
    assert_ne!(gamma, alpha);
    assert_eq!(on(gamma, &after), Ok(Some("gamma".into())));
    // A request that began before the reload calls hosts of its own version of the policy.
    assert_eq!(on(beta, &budget), Ok(Some("beta".into())));
    assert!(on(gamma, &budget).is_err());
    // Back again: the same handle as before.
    f.engine.reload(pool(&["gamma", "alpha"])).unwrap();
    assert_eq!(f.engine.host(kafka, "alpha").unwrap(), alpha);
    assert_eq!(on(alpha, &f.budget()), Ok(Some("alpha".into())));
}

#[test]
fn a_panicking_transition_hook_strands_no_permit() {
    let policy = single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .count("max_in_flight", 1)
            .hosts(&["db1"])
            .count("ejection.consecutive_failures", 1)
    });
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .on_transition(|t| panic!("a bug in the hook, at {:?}", t.kind))
        .build()
        .unwrap();
    let db = engine.backend("db").unwrap();
    let budget = engine
        .begin_by_name("api", RequestId::new("r").unwrap())
        .unwrap();
    // The failure opens the breaker and ejects the host: two transitions, both reported while
    // the attempt still holds its permits.
    engine
        .begin_attempt(db, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    let s = &engine.backend_stats()[0];
    assert_eq!((s.in_flight, s.connecting), (0, 0), "{s:?}");
    assert_eq!(s.breaker, "open");
    assert_eq!(s.hosts[0].in_flight, 0);
    // Once it half-opens (another transition, reported after the probe took its permits), the
    // probe runs and its success closes the breaker.
    clock.advance(Duration::from_secs(600));
    let budget = engine
        .begin_by_name("api", RequestId::new("later").unwrap())
        .unwrap();
    let probe = engine.begin_attempt(db, &budget, 0).unwrap();
    probe.finish(AttemptOutcome::Success);
    let s = &engine.backend_stats()[0];
    assert_eq!((s.in_flight, s.connecting), (0, 0), "{s:?}");
    assert_eq!(s.hosts[0].in_flight, 0);
}

#[test]
fn a_particular_host_can_be_asked_for_and_is_refused_while_ejected() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("ejection.consecutive_failures", 1)
            .count("breaker.consecutive_failures", 4095)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let k2 = f.engine.host(kafka, "k2").unwrap();
    assert_eq!(k2.backend(), kafka);
    assert!(f.engine.host(kafka, "k9").is_err());
    let budget = f.budget();
    for _ in 0..3 {
        let a = f.engine.begin_attempt_on(k2, &budget, 0).unwrap();
        assert_eq!(a.host(), Some("k2"));
        a.finish(AttemptOutcome::Success);
    }
    f.engine
        .begin_attempt_on(k2, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    let v = f.engine.begin_attempt_on(k2, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::NoHealthyHost, "not sent elsewhere");
    let a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
    assert_eq!(a.host(), Some("k1"));
    a.finish(AttemptOutcome::Success);

    // The refusal says when the ejection ends (no dimension ran out), and means it.
    let Retry::After(wait) = v.retry() else {
        panic!("an ejected host's refusal says when it is back: {v}");
    };
    assert_eq!(v.dimension(), None, "{v}");
    assert!(wait > Duration::ZERO);
    f.clock.advance(wait - Duration::from_nanos(1));
    let v = f.engine.begin_attempt_on(k2, &budget, 0).unwrap_err();
    assert_eq!(v.retry(), Retry::After(Duration::from_nanos(1)));
    f.clock.advance(Duration::from_nanos(1));
    let probe = f.engine.begin_attempt_on(k2, &budget, 0).unwrap();
    // On probation, the host takes one connection attempt at a time: one in progress is a busy
    // host, not an ejected one, and the hint is to come back once other work finishes.
    let v = f.engine.begin_attempt_on(k2, &budget, 0).unwrap_err();
    assert_eq!(
        (v.reason(), v.retry()),
        (Reason::NoHealthyHost, Retry::Later)
    );
    probe.finish(AttemptOutcome::Success);
}

/// A host both ejected (10 s) and with its own breaker open (60 s) is back when both are over:
/// the hint is the later end, and retrying at it is let through.
#[test]
fn a_host_ejected_with_its_breaker_open_for_longer_is_back_when_both_are_over() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("ejection.consecutive_failures", 2)
            .count("breaker.consecutive_failures", 2)
            .duration("ejection.base", Duration::from_secs(10))
            .duration("breaker.open_for", Duration::from_secs(60))
            .duration("breaker.max_open_for", Duration::from_secs(60))
            .fraction("ejection.max_ejected", 1.0)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let (k1, k2) = (
        f.engine.host(kafka, "k1").unwrap(),
        f.engine.host(kafka, "k2").unwrap(),
    );
    let budget = f.budget();
    let fail = |h| {
        f.engine
            .begin_attempt_on(h, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure)
    };
    fail(k2);
    // A success elsewhere keeps the backend's own breaker closed.
    f.engine
        .begin_attempt_on(k1, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::Success);
    fail(k2);
    let v = f.engine.begin_attempt_on(k2, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::NoHealthyHost, "{v}");
    let Retry::After(wait) = v.retry() else {
        panic!("{v}");
    };
    assert!(
        wait > Duration::from_secs(10),
        "{wait:?}: the breaker's opening is longer"
    );
    f.clock.advance(wait);
    // A request that starts then (the first one's time has run out).
    f.engine
        .begin_attempt_on(k2, &f.budget(), 0)
        .unwrap()
        .finish(AttemptOutcome::Success);
}

/// A host ejected for 10 s whose own breaker is half-open with its only probe slot taken is out
/// until the ejection ends: a probe finishing ends nothing else, so the hint is not `Later`.
#[test]
fn an_ejected_host_with_its_probe_slots_taken_is_out_until_the_ejection_ends() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("ejection.consecutive_failures", 3)
            .count("breaker.consecutive_failures", 2)
            .count("breaker.probes", 1)
            .duration("ejection.base", Duration::from_secs(10))
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(1))
            .duration("breaker.ramp_up", Duration::ZERO)
            .fraction("ejection.max_ejected", 1.0)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let (k1, k2) = (
        f.engine.host(kafka, "k1").unwrap(),
        f.engine.host(kafka, "k2").unwrap(),
    );
    let b = f.budget();
    // An attempt on k2 that will fail later.
    let slow = f.engine.begin_attempt_on(k2, &b, 0).unwrap();
    let ok1 = || {
        f.engine
            .begin_attempt_on(k1, &b, 0)
            .unwrap()
            .finish(AttemptOutcome::Success)
    };
    for _ in 0..2 {
        f.engine
            .begin_attempt_on(k2, &b, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
        ok1();
    }
    // k2's breaker is open for 1 s; then a probe takes its only slot.
    f.clock.advance(Duration::from_secs(1));
    let probe = f.engine.begin_attempt_on(k2, &b, 0).unwrap();
    assert!(probe.is_probe());
    // The slow attempt fails: a third failure in a row ejects k2 for 10 s.
    slow.finish(AttemptOutcome::ConnectFailure);
    ok1();
    let v = f.engine.begin_attempt_on(k2, &b, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::NoHealthyHost, "{v}");
    assert!(
        matches!(v.retry(), Retry::After(d) if d >= Duration::from_secs(9)),
        "{v}"
    );
    probe.finish(AttemptOutcome::Success);
}

/// When every host of the pool is out (ejected, or its breaker open) the refusal's hint is the
/// nearest time one of them is back.
#[test]
fn a_pool_with_every_host_out_says_when_the_first_is_back() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("ejection.consecutive_failures", 1)
            .count("breaker.consecutive_failures", 4095)
            .fraction("ejection.max_ejected", 1.0)
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    for host in ["k1", "k2"] {
        let h = f.engine.host(kafka, host).unwrap();
        f.engine
            .begin_attempt_on(h, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
        f.clock.advance(Duration::from_secs(1));
    }
    let v = f.engine.begin_attempt(kafka, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::NoHealthyHost);
    let Retry::After(wait) = v.retry() else {
        panic!("{v}");
    };
    f.clock.advance(wait);
    let a = f.engine.begin_attempt(kafka, &budget, 0).unwrap();
    assert_eq!(a.host(), Some("k1"), "the first ejected is the first back");
    a.finish(AttemptOutcome::Success);
}

#[test]
fn refused_first_attempts_earn_no_retries() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .count("max_in_flight", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
            .fraction("retry.ratio", 1.0)
            .count("retry.min_per_second", 0)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    let tokens = |f: &Fixture| f.engine.backend_stats()[0].retry_tokens;
    // A bulkhead at its cap refuses first attempts: they earn nothing.
    let held = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert_eq!(tokens(&f), 1, "the attempt that went ahead earned a token");
    for _ in 0..5 {
        let v = f.engine.begin_attempt(db, &budget, 0).unwrap_err();
        assert_eq!(v.reason(), Reason::BulkheadFull);
    }
    assert_eq!(tokens(&f), 1);
    held.finish(AttemptOutcome::ServerError);
    // An open breaker refuses a storm of first attempts; none of them banks a retry for later.
    for _ in 0..5 {
        let v = f.engine.begin_attempt(db, &budget, 0).unwrap_err();
        assert_eq!(v.reason(), Reason::CircuitOpen);
    }
    assert_eq!(tokens(&f), 1);
}

/// Each probing period admits exactly `probes` probes: a successful probe keeps its slot, so a
/// caller arriving after it is refused until the period ends (closed by the probes' successes).
#[test]
fn a_half_open_period_admits_exactly_its_probes() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .count("breaker.probes", 2)
            .duration("breaker.ramp_up", Duration::ZERO)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget_in("long");
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.clock.advance(Duration::from_secs(2));
    let first = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert!(first.is_probe());
    first.finish(AttemptOutcome::Success);
    let mut held = Vec::new();
    for _ in 0..10 {
        match f.engine.begin_attempt(db, &budget, 0) {
            Ok(a) => {
                assert!(a.is_probe());
                held.push(a);
            }
            Err(v) => assert_eq!(v.reason(), Reason::CircuitOpen),
        }
    }
    assert_eq!(held.len(), 1, "probes after the first, with probes = 2");
    // A probe that says nothing gives its slot back.
    held.pop().unwrap().finish(AttemptOutcome::ClientError);
    let second = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert!(second.is_probe());
    assert_eq!(
        f.engine.begin_attempt(db, &budget, 0).unwrap_err().reason(),
        Reason::CircuitOpen
    );
    second.finish(AttemptOutcome::Success);
    assert_eq!(f.engine.backend_stats()[0].breaker, "closed");
}

/// A probe deadline belongs to its probing period: an earlier period's long probe timeout does not
/// hold the slot of a later period's probe that hung with a short one.
#[test]
fn a_hung_probe_is_timed_out_by_its_own_deadline() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .duration("timeout", Duration::from_secs(10))
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(1))
            .duration("breaker.ramp_up", Duration::ZERO)
    }));
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    f.run(db, &long, AttemptOutcome::ServerError).unwrap();
    f.clock.advance(Duration::from_secs(1));
    let p1 = f.engine.begin_attempt(db, &long, 0).unwrap();
    assert!(p1.is_probe());
    assert_eq!(p1.timeout(), Duration::from_secs(10));
    p1.finish(AttemptOutcome::ServerError); // reopens, for at most a second
    f.clock.advance(Duration::from_secs(1));
    let short = f.budget_in("short");
    let p2 = f.engine.begin_attempt(db, &short, 0).unwrap();
    assert!(p2.is_probe());
    assert!(p2.timeout() < Duration::from_millis(500));
    f.clock.advance(Duration::from_secs(1));
    let p3 = f.engine.begin_attempt(db, &long, 0);
    assert!(
        p3.as_ref().is_ok_and(|a| a.is_probe()),
        "a second after a probe with a {:?} timeout hung: {:?}",
        p2.timeout(),
        p3.as_ref().err().map(|v| v.reason())
    );
    drop((p2, p3));
}

/// A host's breaker ramps its traffic up after closing, as the backend's does.
#[test]
fn a_host_ramps_up_after_its_breaker_closes() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("breaker.consecutive_failures", 2)
            .count("max_in_flight_per_host", 10)
            .count("max_in_flight", 100)
            .count("ejection.consecutive_failures", 1000)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.ramp_up", Duration::from_secs(10))
    }));
    let kafka = f.engine.backend("kafka").unwrap();
    let (k1, k2) = (
        f.engine.host(kafka, "k1").unwrap(),
        f.engine.host(kafka, "k2").unwrap(),
    );
    let budget = f.budget_in("long");
    let on = |h, outcome| {
        f.engine
            .begin_attempt_on(h, &budget, 0)
            .unwrap()
            .finish(outcome)
    };
    on(k1, AttemptOutcome::ServerError);
    on(k2, AttemptOutcome::Success);
    on(k1, AttemptOutcome::ServerError);
    let stats = &f.engine.backend_stats()[0];
    assert_eq!(
        (stats.host("k1").unwrap().breaker, stats.breaker),
        ("open", "closed")
    );
    f.clock.advance(Duration::from_secs(1));
    on(k1, AttemptOutcome::Success);
    assert_eq!(
        f.engine.backend_stats()[0].host("k1").unwrap().breaker,
        "closed"
    );
    let held = |f: &Fixture| -> Vec<_> {
        (0..10)
            .map_while(|_| {
                let mut a = f.engine.begin_attempt_on(k1, &budget, 0).ok()?;
                a.connected();
                Some(a)
            })
            .collect()
    };
    assert_eq!(held(&f).len(), 1, "the instant k1's breaker closed");
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(held(&f).len(), 5, "halfway through the ramp");
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(held(&f).len(), 10, "after the ramp");
}

/// A call begun before an outage that fails after the breaker closed again belongs to the period
/// the breaker has left: it does not count in the new period's window.
#[test]
fn late_failures_from_before_an_outage_do_not_count_after_it() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 3)
            .count("breaker.min_calls", 4)
            .fraction("breaker.failure_ratio", 0.5)
            .duration("breaker.ramp_up", Duration::ZERO)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget_in("long");
    let old: Vec<_> = (0..10)
        .map(|_| f.engine.begin_attempt(db, &budget, 0).unwrap())
        .collect();
    for _ in 0..3 {
        f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    }
    f.clock.advance(Duration::from_secs(2));
    f.run(db, &budget, AttemptOutcome::Success).unwrap();
    assert_eq!(f.engine.backend_stats()[0].breaker, "closed");
    for a in old {
        a.finish(AttemptOutcome::Timeout);
    }
    for _ in 0..5 {
        f.run(db, &budget, AttemptOutcome::Success).unwrap();
    }
    // One failure in six calls of this period: under the ratio.
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    assert_eq!(
        f.engine.backend_stats()[0].breaker,
        "closed",
        "{:?}",
        f.kinds()
    );
}

/// No attempt is given more than the backend's timeout, so a success reported late does not teach
/// the backend that it takes longer than that.
#[test]
fn the_usual_latency_never_exceeds_the_timeout() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(1))
    }));
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    let a = f.engine.begin_attempt(db, &long, 0).unwrap();
    assert_eq!(a.timeout(), Duration::from_secs(1));
    f.clock.advance(Duration::from_secs(60));
    a.finish(AttemptOutcome::Success);
    let api = f.budget(); // 30 s left
    assert!(f.engine.begin_attempt(db, &api, 0).is_ok());
    let short = f.budget_in("short"); // under a second left: the usual second does not fit
    let occasional = f.engine.begin_attempt(db, &short, 0).unwrap(); // one per usual second
    assert_eq!(
        f.engine.begin_attempt(db, &short, 0).unwrap_err().reason(),
        Reason::InsufficientTime
    );
    drop(occasional);
}

/// The floor of the retry budget is earned at its rate however often retries are asked for.
#[test]
fn frequent_retry_decisions_do_not_round_the_floor_away() {
    let f = fixture(single("db", |b| {
        b.fraction("retry.ratio", 0.0)
            .count("retry.min_per_second", 1)
            .duration("retry.backoff_base", Duration::from_nanos(1))
            .duration("retry.backoff_max", Duration::from_nanos(1))
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget_in("long");
    let granted = |f: &Fixture| {
        matches!(
            f.engine.retry(db, &budget, AttemptOutcome::Timeout, 1),
            RetryDecision::After(_)
        )
    };
    assert!(granted(&f), "the budget starts with a second of floor");
    let step = Duration::from_micros(1_900);
    let mut n = 0;
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_millis(4_500) {
        f.clock.advance(step);
        elapsed += step;
        n += u32::from(granted(&f));
    }
    assert_eq!(n, 4, "retries granted in 4.5 s at one per second of floor");
}

/// A breaker ratio of 0 is no ratio at all, not "open at the first failure".
#[test]
fn a_ratio_of_zero_turns_that_ratio_off() {
    for key in ["breaker.failure_ratio", "breaker.slow_ratio"] {
        let f = fixture(single("db", |b| {
            b.count("breaker.consecutive_failures", 1000)
                .count("breaker.min_calls", 10)
                .fraction(key, 0.0)
        }));
        let db = f.engine.backend("db").unwrap();
        let budget = f.budget();
        for _ in 0..9 {
            f.run(db, &budget, AttemptOutcome::Success).unwrap();
        }
        f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
        assert!(f.kinds().is_empty(), "{key} = 0: {:?}", f.kinds());
        let p = f.engine.policy().backend("db").unwrap().breaker();
        assert_eq!(
            if key.ends_with("failure_ratio") {
                p.failure_ratio
            } else {
                p.slow_ratio
            },
            1001
        );
    }
}

/// The first retry backs off at most `backoff_base`, each later one at most twice the one before.
#[test]
fn backoff_ceilings_start_at_the_base_and_double() {
    let f = fixture(single("db", |b| {
        b.duration("retry.backoff_base", Duration::from_millis(100))
            .duration("retry.backoff_max", Duration::from_secs(10))
            .count("retry.min_per_second", 1000)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget_in("long");
    for (attempt, ceiling) in [(1, 100), (2, 200), (3, 400)] {
        let mut most = Duration::ZERO;
        for _ in 0..200 {
            f.clock.advance(Duration::from_millis(10));
            match f
                .engine
                .retry(db, &budget, AttemptOutcome::Timeout, attempt)
            {
                RetryDecision::After(d) => most = most.max(d),
                other => panic!("{other:?}"),
            }
        }
        let ceiling = Duration::from_millis(ceiling);
        assert!(
            most <= ceiling && most >= ceiling * 3 / 4,
            "attempt {attempt}: longest backoff {most:?}, ceiling {ceiling:?}"
        );
    }
}

/// A clock that steps back does not hold a breaker open for as long as it stepped: at most for the
/// longest time a breaker stays open.
#[test]
fn a_clock_stepping_back_holds_a_breaker_open_no_longer_than_its_longest() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(5))
    }));
    let db = f.engine.backend("db").unwrap();
    f.clock.advance(Duration::from_secs(3600));
    let budget = f.budget_in("long");
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.clock
        .set(costguard::clock::Timestamp::from_nanos(10_000_000_000));
    let budget = f.budget_in("long");
    let wait = f
        .engine
        .begin_attempt(db, &budget, 0)
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(wait <= Duration::from_secs(5), "{wait:?}");
    f.clock.advance(Duration::from_secs(5));
    assert!(f.engine.begin_attempt(db, &budget, 0).is_ok());
}

/// The first retry's backoff (full jitter up to one second) of each of `backends`, from an engine on
/// a manual clock seeded with `seed` (or by its clock), or built with `parent`'s names.
fn first_backoffs(seed: Option<u64>, parent: Option<&Engine>, backends: &[&str]) -> Vec<Duration> {
    let mut policy = Policy::builder().class("api", |c| c.retries(10));
    for name in backends {
        policy = policy.backend(name, |b| {
            b.duration("retry.backoff_base", Duration::from_secs(1))
        });
    }
    let mut builder = Engine::builder(policy.build().unwrap()).clock(ManualClock::new());
    if let Some(seed) = seed {
        builder = builder.random_seed(seed);
    }
    if let Some(parent) = parent {
        builder = builder.inherit_names(parent);
    }
    let engine = builder.build().unwrap();
    let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
    backends
        .iter()
        .map(|name| {
            let backend = engine.backend(name).unwrap();
            match engine.retry(backend, &budget, AttemptOutcome::ServerError, 1) {
                RetryDecision::After(d) => d,
                RetryDecision::Stop(v) => panic!("{v}"),
            }
        })
        .collect()
}

/// A seeded engine's backends each draw their own jitter; a fork child's engine, built with its
/// parent's names, does not take the parent's seed (it would draw the parent's numbers).
#[test]
fn a_random_seed_gives_each_backend_its_own_stream() {
    let seeded = first_backoffs(Some(7), None, &["db", "kafka"]);
    assert_eq!(seeded, first_backoffs(Some(7), None, &["db", "kafka"]));
    assert_ne!(seeded[0], seeded[1], "two backends drew the same jitter");
    let policy = Policy::builder()
        .class("api", |c| c)
        .backend("db", |b| b)
        .build()
        .unwrap();
    let parent = Engine::builder(policy)
        .clock(ManualClock::new())
        .random_seed(7)
        .build()
        .unwrap();
    let child = first_backoffs(None, Some(&parent), &["db"]);
    assert_ne!(child[0], seeded[0], "the child drew its parent's stream");
    assert_eq!(
        child,
        first_backoffs(None, None, &["db"]),
        "seeded by its clock"
    );
}

/// Two hosts, the first consecutive connect failure ejects (for 5 s first), half the pool at most;
/// breakers that never open; and, if `other`, a second backend. Class `api` has an hour, class
/// `free` no deadline.
fn ejecting(hosts: &[&str], other: bool) -> Policy {
    let mut policy = Policy::builder()
        .class("api", |c| {
            c.wall_time(Duration::from_secs(3600)).retries(10)
        })
        .class("free", |c| c)
        .backend("kafka", |b| {
            b.hosts(hosts)
                .duration("timeout", Duration::from_secs(30))
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", 0.5)
                .duration("ejection.base", Duration::from_secs(5))
                .count("breaker.consecutive_failures", 1000)
        });
    if other {
        policy = policy.backend("other", |b| b);
    }
    policy.build().unwrap()
}

/// Hosts of `backend` that its stats show ejected.
fn ejected(f: &Fixture, backend: &str) -> Vec<String> {
    f.engine
        .backend_stats()
        .into_iter()
        .filter(|b| b.backend == backend)
        .flat_map(|b| b.hosts)
        .filter(|h| h.ejected)
        .map(|h| h.host)
        .collect()
}

/// A backend a reload removed has no pool: a request of the older version failing to connect to
/// one of its hosts ejects nothing, and a reload that restores the backend finds no host ejected.
#[test]
fn a_removed_backends_hosts_are_never_ejected() {
    let f = fixture(ejecting(&["k1", "k2"], true));
    let k1 = f
        .engine
        .host(f.engine.backend("kafka").unwrap(), "k1")
        .unwrap();
    let old = f.budget();
    f.engine
        .reload(
            Policy::builder()
                .class("api", |c| c.wall_time(Duration::from_secs(3600)))
                .backend("other", |b| b)
                .build()
                .unwrap(),
        )
        .unwrap();
    f.engine
        .begin_attempt_on(k1, &old, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    f.clock.advance(Duration::from_secs(1));
    f.engine.reload(ejecting(&["k1", "k2"], true)).unwrap();
    assert_eq!(f.kinds(), []);
    assert_eq!(ejected(&f, "kafka"), Vec::<String>::new());
}

/// An ejection that is over gives its place in the pool's share back even when no host choice
/// looks at its host: attempts on particular hosts (a partition's leader) can still eject another
/// failing host.
#[test]
fn an_ejection_that_is_over_gives_its_place_back_to_attempts_on_particular_hosts() {
    let f = fixture(ejecting(&["k1", "k2"], false)); // half of two: one place
    let kafka = f.engine.backend("kafka").unwrap();
    let (k1, k2) = (
        f.engine.host(kafka, "k1").unwrap(),
        f.engine.host(kafka, "k2").unwrap(),
    );
    let b = f.budget();
    let fail_on = |host| {
        f.engine
            .begin_attempt_on(host, &b, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure)
    };
    fail_on(k1);
    assert_eq!(ejected(&f, "kafka"), ["k1"]);
    f.clock.advance(Duration::from_secs(60));
    fail_on(k2);
    assert_eq!(ejected(&f, "kafka"), ["k2"], "k1's ejection ended long ago");
    assert_eq!(
        f.kinds(),
        [
            TransitionKind::Ejected,
            TransitionKind::Readmitted,
            TransitionKind::Ejected
        ]
    );
}

/// A connect failure or timeout of an attempt begun before the host's ejection, reported after
/// the host came back on probation, does not eject it again (for twice as long): that attempt's
/// time ran during the ejection the host already served. Its own probation attempt still decides.
#[test]
fn a_late_timeout_from_before_an_ejection_does_not_end_probation() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let k1 = f
        .engine
        .host(f.engine.backend("kafka").unwrap(), "k1")
        .unwrap();
    let b = f.budget();
    let mut long = f.engine.begin_attempt_on(k1, &b, 0).unwrap(); // a 30 s timeout
    long.connected();
    f.engine
        .begin_attempt_on(k1, &b, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure); // ejected for 5 s
    f.clock.advance(Duration::from_secs(6));
    let probe = f.engine.begin_attempt_on(k1, &b, 0).unwrap(); // readmitted on probation
    long.finish(AttemptOutcome::Timeout);
    assert_eq!(
        f.kinds(),
        [TransitionKind::Ejected, TransitionKind::Readmitted]
    );
    probe.finish(AttemptOutcome::ConnectFailure);
    assert_eq!(
        f.kinds(),
        [
            TransitionKind::Ejected,
            TransitionKind::Readmitted,
            TransitionKind::Ejected
        ],
        "the probation attempt's own failure ejects"
    );
}

/// The retry tokens the stats and the Prometheus gauge show are those the next decision finds,
/// floor earned while idle included (the budget only collects it when asked for a retry).
#[test]
fn the_retry_tokens_shown_include_the_floor_earned_while_idle() {
    let f = fixture(single("db", |b| {
        b.fraction("retry.ratio", 0.0)
            .count("retry.min_per_second", 2)
    }));
    let db = f.engine.backend("db").unwrap();
    let b = f.budget_in("long");
    let retry = || f.engine.retry(db, &b, AttemptOutcome::ServerError, 1);
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 2);
    for _ in 0..2 {
        assert!(matches!(retry(), RetryDecision::After(_)));
    }
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 0);
    f.clock.advance(Duration::from_secs(3));
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 6);
    let text = f.engine.admission_stats().to_prometheus();
    assert!(
        text.contains("costguard_backend_retry_tokens{backend=\"db\"} 6"),
        "{text}"
    );
    let mut granted = 0;
    while let RetryDecision::After(_) = retry() {
        granted += 1;
    }
    assert_eq!(granted, 6);
}

/// A breaker opened with the clock at the end of its range stays open: its end, saturated at the
/// clock's last instant, is not taken for "over" at that same instant.
#[test]
fn a_breaker_opened_at_the_clocks_end_stays_open() {
    let f = fixture(
        Policy::builder()
            .class("free", |c| c)
            .backend("db", |b| b.count("breaker.consecutive_failures", 1))
            .build()
            .unwrap(),
    );
    let db = f.engine.backend("db").unwrap();
    f.clock.advance(Duration::MAX);
    let b = f.budget_in("free");
    assert_eq!(f.run(db, &b, AttemptOutcome::ServerError), Ok(()));
    assert_eq!(
        f.run(db, &b, AttemptOutcome::Success),
        Err(Reason::CircuitOpen)
    );
}

/// The same for a host's ejection.
#[test]
fn a_host_ejected_at_the_clocks_end_stays_ejected() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    f.clock.advance(Duration::MAX);
    let b = f.budget_in("free");
    f.engine
        .begin_attempt_on(k1, &b, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    assert_eq!(ejected(&f, "kafka"), ["k1"]);
    assert!(f.engine.begin_attempt_on(k1, &b, 0).is_err());
    assert_eq!(f.kinds(), [TransitionKind::Ejected]);
}

#[test]
fn a_retry_into_an_open_breaker_is_refused_and_spends_nothing() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 2)
            .count("breaker.probes", 1)
            .duration("breaker.open_for", Duration::from_secs(2))
            .duration("breaker.max_open_for", Duration::from_secs(2))
            .duration("retry.backoff_base", Duration::from_millis(100))
            .duration("retry.backoff_max", Duration::from_millis(100))
            .count("retry.min_per_second", 10)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    let open_for = f
        .engine
        .begin_attempt(db, &budget, 0)
        .unwrap_err()
        .retry_after()
        .unwrap();
    let tokens = f.engine.backend_stats()[0].retry_tokens;
    assert!(tokens > 0, "the floor gives tokens: {tokens}");
    // Open well past any backoff: no, with the breaker's own wait, and nothing taken.
    match f.engine.retry(db, &budget, AttemptOutcome::ServerError, 1) {
        RetryDecision::Stop(v) => {
            assert_eq!(v.reason(), Reason::CircuitOpen);
            let after = v.retry_after().unwrap();
            assert!(
                after >= open_for && after <= open_for + 100 * MS,
                "{after:?}"
            );
        }
        other => panic!("a retry into an open breaker: {other:?}"),
    }
    assert_eq!(budget.used(Counter::RETRIES), 0);
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, tokens);
    assert_eq!(
        f.engine.backend_stats()[0].retries_refused_for(Reason::CircuitOpen),
        1
    );
    // Half-open with its one probe out: no again, later.
    f.clock.advance(open_for);
    let probe = f.engine.begin_attempt(db, &budget, 0).unwrap();
    assert!(probe.is_probe());
    match f.engine.retry(db, &budget, AttemptOutcome::ServerError, 1) {
        RetryDecision::Stop(v) => {
            assert_eq!((v.reason(), v.retry()), (Reason::CircuitOpen, Retry::Later))
        }
        other => panic!("a retry while every probe is out: {other:?}"),
    }
    assert_eq!(budget.used(Counter::RETRIES), 0);
    // Closed again: yes, and it takes one retry.
    probe.finish(AttemptOutcome::Success);
    assert!(matches!(
        f.engine.retry(db, &budget, AttemptOutcome::ServerError, 1),
        RetryDecision::After(_)
    ));
    assert_eq!(budget.used(Counter::RETRIES), 1);
}

#[test]
fn a_retry_whose_backoff_outlasts_the_open_time_goes_ahead() {
    let f = fixture(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .duration("breaker.open_for", Duration::from_millis(100))
            .duration("breaker.max_open_for", Duration::from_millis(100))
            .count("retry.min_per_second", 10)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.run(db, &budget, AttemptOutcome::ServerError).unwrap();
    // The backend's Retry-After (1 s) is longer than the breaker stays open (at most 100 ms): by
    // the time the retry begins, it is the breaker's probe.
    match f.engine.retry(
        db,
        &budget,
        AttemptOutcome::Refused {
            retry_after: Some(Duration::from_secs(1)),
        },
        1,
    ) {
        RetryDecision::After(d) => {
            assert_eq!(d, Duration::from_secs(1));
            f.clock.advance(d);
        }
        other => panic!("{other:?}"),
    }
    assert!(f.engine.begin_attempt(db, &budget, 0).unwrap().is_probe());
}

#[test]
fn a_reload_that_lowers_the_retry_budget_caps_what_was_banked() {
    let policy = |floor: u64| {
        single("db", |b| {
            b.fraction("retry.ratio", 0.0)
                .count("retry.min_per_second", floor)
        })
    };
    let f = fixture(policy(1000));
    let db = f.engine.backend("db").unwrap();
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 1000);
    // Without a floor the budget holds at most ten retries.
    f.engine.reload(policy(0)).unwrap();
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 10);
    // A class with no retry limit of its own: only the backend's budget decides.
    let budget = f.budget_in("long");
    let granted = f.retries_granted(db, &budget, 100);
    assert_eq!(granted, 10);
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 0);
}

/// A success of an attempt begun before the host's ejection, reported after the host came back on
/// probation, says nothing about the host as it is now: its probation goes on, and with it the
/// count of ejections in a row that sets the next one's length.
#[test]
fn a_late_success_from_before_an_ejection_does_not_end_probation() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let k1 = f
        .engine
        .host(f.engine.backend("kafka").unwrap(), "k1")
        .unwrap();
    let b = f.budget();
    let mut long = f.engine.begin_attempt_on(k1, &b, 0).unwrap();
    long.connected();
    f.engine
        .begin_attempt_on(k1, &b, 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure); // ejected for 5 s
    f.clock.advance(Duration::from_secs(6));
    let probe = f.engine.begin_attempt_on(k1, &b, 0).unwrap(); // readmitted on probation
    long.finish(AttemptOutcome::Success);
    probe.finish(AttemptOutcome::ConnectFailure);
    // The second ejection in a row: 10 s, not a first one's 5 s.
    f.clock.advance(Duration::from_secs(6));
    assert_eq!(ejected(&f, "kafka"), ["k1"]);
    f.clock.advance(Duration::from_secs(4));
    assert!(ejected(&f, "kafka").is_empty());
}

/// A reload that takes an ejected host out of its pool, or its backend out of the policy, ends the
/// ejection, and the hook hears of it: a consumer following ejections never keeps a host out that
/// the engine no longer does.
#[test]
fn an_ejection_a_reload_ends_is_reported() {
    let f = fixture(ejecting(&["k1", "k2"], true));
    let kafka = f.engine.backend("kafka").unwrap();
    let eject = |host: &str| {
        let h = f.engine.host(kafka, host).unwrap();
        f.engine
            .begin_attempt_on(h, &f.budget(), 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure);
    };
    eject("k1");
    f.engine.reload(ejecting(&["k2"], true)).unwrap();
    assert_eq!(
        *f.log.lock().unwrap(),
        [
            (TransitionKind::Ejected, Some("k1".to_owned())),
            (TransitionKind::EjectionEnded, Some("k1".to_owned()))
        ]
    );
    // The whole backend taken out.
    f.engine.reload(ejecting(&["k1", "k2"], true)).unwrap();
    eject("k2");
    f.engine
        .reload(Policy::builder().class("api", |c| c).build().unwrap())
        .unwrap();
    let log = f.log.lock().unwrap();
    assert_eq!(
        log[2..],
        [
            (TransitionKind::Ejected, Some("k2".to_owned())),
            (TransitionKind::EjectionEnded, Some("k2".to_owned()))
        ]
    );
}

/// An ejection ends however many times the host's ejection state changed before it. (Each counted
/// failure and each success that breaks a run is a change; the end time keeps 16 bits of the
/// change count, and must never fall so far behind that a new ejection's time is taken for older.)
#[test]
fn an_ejection_ends_after_any_number_of_changes_before_it() {
    let f = fixture(
        Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(3600)))
            .backend("kafka", |b| {
                b.hosts(&["k1", "k2"])
                    .count("ejection.consecutive_failures", 2)
                    .fraction("ejection.max_ejected", 0.5)
                    .duration("ejection.base", Duration::from_secs(1))
                    .count("breaker.consecutive_failures", 4095)
                    .fraction("breaker.failure_ratio", 1.0)
            })
            .build()
            .unwrap(),
    );
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let budget = f.budget();
    let run = |o| f.engine.begin_attempt_on(k1, &budget, 0).unwrap().finish(o);
    // 40,002 changes in all: an ejection whose count's low 16 bits lie more than half their
    // range ahead of those of the last time written (none: 0).
    for _ in 0..20_000 {
        run(AttemptOutcome::Timeout);
        run(AttemptOutcome::Success);
    }
    run(AttemptOutcome::Timeout);
    run(AttemptOutcome::Timeout);
    assert_eq!(f.kinds(), [TransitionKind::Ejected]);
    f.clock.advance(Duration::from_secs(1));
    assert!(ejected(&f, "kafka").is_empty());
    f.engine
        .begin_attempt_on(k1, &f.budget(), 0)
        .unwrap()
        .finish(AttemptOutcome::Success);
    assert_eq!(
        f.kinds(),
        [TransitionKind::Ejected, TransitionKind::Readmitted]
    );
}

/// `K1`, `k1` and `k1.` name one host, to the engine as to the policy: a reload that only respells
/// a host keeps its state (here, an ejection), and a handle can be asked for in any spelling. The
/// host keeps the spelling it was first listed under.
#[test]
fn a_host_respelled_by_a_reload_is_the_same_host() {
    let policy = |k1: &str| {
        Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(3600)))
            .backend("kafka", |b| {
                b.hosts(&[k1, "k2"])
                    .count("ejection.consecutive_failures", 1)
                    .fraction("ejection.max_ejected", 0.5)
                    .duration("ejection.base", Duration::from_secs(600))
                    .duration("ejection.max", Duration::from_secs(600))
                    .count("breaker.consecutive_failures", 4095)
            })
            .build()
            .unwrap()
    };
    let f = fixture(policy("K1"));
    let kafka = f.engine.backend("kafka").unwrap();
    let k1 = f.engine.host(kafka, "k1.").unwrap();
    f.engine
        .begin_attempt_on(k1, &f.budget(), 0)
        .unwrap()
        .finish(AttemptOutcome::ConnectFailure);
    f.engine.reload(policy("k1")).unwrap();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    assert_eq!(
        f.engine
            .begin_attempt_on(k1, &f.budget(), 0)
            .unwrap_err()
            .reason(),
        Reason::NoHealthyHost
    );
    assert_eq!(ejected(&f, "kafka"), ["K1"]);
    assert_eq!(f.kinds(), [TransitionKind::Ejected]);
    assert_eq!(f.engine.backend_stats()[0].hosts.len(), 2);
}

/// Transitions carry generations that order those of one breaker, and those of one host's
/// ejections, whatever order threads report them in.
#[test]
fn transitions_carry_generations_in_order() {
    type Seen = Arc<Mutex<Vec<costguard::backend::Transition>>>;
    let clock = ManualClock::new();
    let logged = |policy: Policy| -> (Engine, Seen) {
        let log: Seen = Arc::default();
        let seen = Arc::clone(&log);
        let engine = Engine::builder(policy)
            .clock(clock.clone())
            .on_transition(move |t| seen.lock().unwrap().push(t.clone()))
            .build()
            .unwrap();
        (engine, log)
    };
    // The kinds seen are `kinds`, in generation order.
    let in_order = |log: &Seen, kinds: &[TransitionKind]| {
        let log = log.lock().unwrap();
        assert_eq!(log.iter().map(|t| t.kind).collect::<Vec<_>>(), kinds);
        assert!(
            log.windows(2).all(|w| w[0].generation < w[1].generation),
            "{log:?}"
        );
    };

    // A host's ejections: ejected, readmitted, ejected again, ended by a reload.
    let (engine, log) = logged(ejecting(&["k1", "k2"], false));
    let kafka = engine.backend("kafka").unwrap();
    let k1 = engine.host(kafka, "k1").unwrap();
    let budget = engine
        .begin_by_name("api", RequestId::new("r").unwrap())
        .unwrap();
    let fail = || {
        engine
            .begin_attempt_on(k1, &budget, 0)
            .unwrap()
            .finish(AttemptOutcome::ConnectFailure)
    };
    fail(); // ejected for 5 s
    clock.advance(Duration::from_secs(5));
    fail(); // readmitted, and ejected again for 10 s
    engine.reload(ejecting(&["k2"], false)).unwrap(); // taken out: the ejection ends
    in_order(
        &log,
        &[
            TransitionKind::Ejected,
            TransitionKind::Readmitted,
            TransitionKind::Ejected,
            TransitionKind::EjectionEnded,
        ],
    );

    // A breaker's: opened, half-opened, closed.
    let (engine, log) = logged(single("db", |b| {
        b.count("breaker.consecutive_failures", 1)
            .count("breaker.probes", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
            .duration("breaker.max_open_for", Duration::from_secs(1))
    }));
    let db = engine.backend("db").unwrap();
    let budget = engine
        .begin_by_name("api", RequestId::new("r").unwrap())
        .unwrap();
    let run = |outcome| {
        engine
            .begin_attempt(db, &budget, 0)
            .unwrap()
            .finish(outcome)
    };
    run(AttemptOutcome::ServerError);
    clock.advance(Duration::from_secs(1));
    run(AttemptOutcome::Success);
    in_order(
        &log,
        &[
            TransitionKind::Opened,
            TransitionKind::HalfOpened,
            TransitionKind::Closed,
        ],
    );
}

/// A retry whose backoff, a usual call and the margin exactly fill the time left is granted: the
/// attempt after the backoff would be admitted, as `begin_attempt` admits a request whose time
/// left after the margin is exactly the usual latency.
#[test]
fn a_retry_that_exactly_fits_is_granted() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(5))
            .duration("margin", Duration::from_secs(1))
            .duration("retry.backoff_base", MS)
            .duration("retry.backoff_max", MS)
    }));
    let db = f.engine.backend("db").unwrap();
    let warm = f.budget();
    let a = f.engine.begin_attempt(db, &warm, 0).unwrap();
    f.clock.advance(Duration::from_secs(2));
    a.finish(AttemptOutcome::Success); // usually 2 s
    let budget = f.budget(); // 30 s
    f.clock.advance(Duration::from_secs(25)); // 5 s left: 2 s backoff + 2 s usual + 1 s margin
    let refused = AttemptOutcome::Refused {
        retry_after: Some(Duration::from_secs(2)),
    };
    assert_eq!(
        f.engine.retry(db, &budget, refused, 1),
        RetryDecision::After(Duration::from_secs(2))
    );
    f.clock.advance(Duration::from_secs(2));
    let a = f.engine.begin_attempt(db, &budget, 1).unwrap();
    assert_eq!(a.timeout(), Duration::from_secs(2));
    // A nanosecond less, and the retry could not finish: refused.
    let late = f.budget();
    f.clock
        .advance(Duration::from_secs(25) + Duration::from_nanos(1));
    let RetryDecision::Stop(v) = f.engine.retry(db, &late, refused, 1) else {
        panic!("a retry granted without the time for it");
    };
    assert_eq!(v.reason(), Reason::InsufficientTime);
}

/// A retry budget whose floor was off earns nothing for that time: a reload that turns the floor
/// on starts it as a backend new with that policy starts (one second of floor), not with the
/// whole cap for the hour it was off.
#[test]
fn a_floor_turned_on_by_a_reload_earns_nothing_for_the_time_it_was_off() {
    let policy = |per_second: u64| {
        Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(30)).retries(100))
            .backend("db", |b| {
                b.fraction("retry.ratio", 0.0)
                    .count("retry.min_per_second", per_second)
            })
            .build()
            .unwrap()
    };
    let f = fixture(policy(0));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    f.clock.advance(Duration::from_secs(1800));
    assert_eq!(f.retries_granted(db, &budget, 5), 0);
    f.clock.advance(Duration::from_secs(1800));
    f.engine.reload(policy(1)).unwrap();
    assert!(f.engine.backend_stats()[0].retry_tokens <= 1);
    let budget = f.budget(); // under the new policy
    assert!(f.retries_granted(db, &budget, 20) <= 1);
    // From then on it earns its floor.
    f.clock.advance(Duration::from_secs(3));
    assert_eq!(f.retries_granted(db, &budget, 20), 3);
}

/// A timeout of an attempt begun before its host was ejected, reported once that ejection is
/// over while the pool's share is full, counts for nothing: finishing it readmits the host (to
/// make room), and the host is then on probation from a time after the attempt began.
#[test]
fn a_failure_from_before_an_ejection_does_not_eject_the_host_it_readmits() {
    let f = fixture(
        Policy::builder()
            .class("api", |c| c.wall_time(Duration::from_secs(3600)))
            .backend("kafka", |b| {
                b.hosts(&["a", "b"])
                    .duration("timeout", Duration::from_secs(60))
                    .count("ejection.consecutive_failures", 1)
                    .duration("ejection.base", Duration::from_secs(5))
                    .fraction("ejection.max_ejected", 0.5)
            })
            .build()
            .unwrap(),
    );
    let kafka = f.engine.backend("kafka").unwrap();
    let a = f.engine.host(kafka, "a").unwrap();
    let budget = f.budget();
    let hung = f.engine.begin_attempt_on(a, &budget, 0).unwrap();
    let failing = f.engine.begin_attempt_on(a, &budget, 0).unwrap();
    f.clock.advance(Duration::from_secs(1));
    failing.finish(AttemptOutcome::ConnectFailure); // out until 6 s; the share (1) is taken
    let ejected = || f.engine.backend_stats()[0].host("a").unwrap().ejected;
    assert!(ejected());
    f.clock.advance(Duration::from_secs(9));
    hung.finish(AttemptOutcome::Timeout);
    assert!(!ejected(), "{:?}", f.kinds());
    assert_eq!(
        f.kinds(),
        [TransitionKind::Ejected, TransitionKind::Readmitted]
    );
    // A failure of an attempt begun on probation counts: out again, for twice as long.
    let fresh = f.engine.begin_attempt_on(a, &budget, 0).unwrap();
    fresh.finish(AttemptOutcome::ConnectFailure);
    assert!(ejected());
}

/// An engine on `clock` whose backend `db`, of one host, takes one call at a time.
fn one_call_at_a_time(clock: &support::FailingClock) -> Engine {
    let policy = Policy::builder()
        .class("api", |c| c.wall_time(Duration::from_secs(30)).retries(2))
        .backend("db", |b| {
            b.hosts(&["h1"])
                .count("max_in_flight", 1)
                .count("max_connecting", 1)
        })
        .build()
        .unwrap();
    Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Permits and probe slots held by the attempt: none once it is over, however it ended.
fn nothing_held(e: &Engine) {
    let stats = &e.backend_stats()[0];
    assert_eq!(
        (stats.in_flight, stats.connecting, stats.hosts[0].in_flight),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// A finish whose clock panics releases the attempt's permits as the panic unwinds: a backend
/// that takes one call at a time is not shut for good.
#[test]
fn a_finish_whose_clock_panics_strands_no_permit() {
    let clock = support::FailingClock::default();
    let e = one_call_at_a_time(&clock);
    let db = e.backend("db").unwrap();
    let budget = e
        .begin_by_name("api", RequestId::new("r").unwrap())
        .unwrap();
    let a = e.begin_attempt(db, &budget, 0).unwrap();
    clock.fail(true);
    let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.finish(AttemptOutcome::Success)
    }));
    assert!(finished.is_err(), "finish never read the clock");
    clock.fail(false);
    nothing_held(&e);
    e.begin_attempt(db, &budget, 0)
        .unwrap()
        .finish(AttemptOutcome::Success);
}

/// An attempt dropped while its thread unwinds (a handler's panic inside `call`) does not read
/// the clock, which may panic again: a second panic would abort the process. Run in a child
/// process, so that an abort fails the test instead of the run.
#[test]
fn an_attempt_dropped_while_unwinding_does_not_read_the_clock() {
    if !support::in_child("an_attempt_dropped_while_unwinding_does_not_read_the_clock") {
        return;
    }
    let clock = support::FailingClock::default();
    let e = one_call_at_a_time(&clock);
    let db = e.backend("db").unwrap();
    let budget = e
        .begin_by_name("api", RequestId::new("r").unwrap())
        .unwrap();
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = e.call(
            db,
            &budget,
            |_| {},
            |_| -> Result<(), (String, AttemptOutcome)> {
                clock.fail(true);
                panic!("the handler failed");
            },
        );
    }));
    assert!(called.is_err());
    clock.fail(false);
    nothing_held(&e);
    support::finished();
}

/// Backends are listed in the current policy's order (as classes and pools are), whatever order
/// the engine first saw their names in, and a backend the policy no longer has is not listed.
#[test]
fn backend_stats_follow_the_policys_order() {
    let policy = |names: &[&str]| {
        names
            .iter()
            .fold(Policy::builder().class("api", |c| c), |p, name| {
                p.backend(name, |b| b)
            })
            .build()
            .unwrap()
    };
    let f = fixture(policy(&["zeta", "beta"]));
    f.engine.reload(policy(&["alpha", "zeta"])).unwrap();
    let names = |stats: Vec<costguard::backend::BackendStats>| {
        stats.into_iter().map(|b| b.backend).collect::<Vec<_>>()
    };
    assert_eq!(names(f.engine.backend_stats()), ["alpha", "zeta"]);
    assert_eq!(
        names(f.engine.admission_stats().backends),
        ["alpha", "zeta"]
    );
}

/// The backoff ceiling doubles with each attempt but never passes `retry.backoff_max`, however many
/// attempts were made.
#[test]
fn backoff_ceilings_stop_at_backoff_max() {
    let f = fixture(single("kafka", |b| {
        b.duration("retry.backoff_base", Duration::from_millis(100))
            .duration("retry.backoff_max", Duration::from_millis(300))
            .count("retry.min_per_second", 1000)
    }));
    let (e, clock) = (&f.engine, &f.clock);
    let kafka = e.backend("kafka").unwrap();
    let budget = f.budget_in("long");
    for attempt in [3, 4, 10, 40] {
        let mut most = Duration::ZERO;
        for _ in 0..200 {
            clock.advance(10 * MS);
            match e.retry(kafka, &budget, AttemptOutcome::Timeout, attempt) {
                RetryDecision::After(d) => most = most.max(d),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            most <= 300 * MS && most >= 225 * MS,
            "attempt {attempt}: longest backoff {most:?}, cap 300ms"
        );
    }
}

/// Of two healthy hosts, the one with fewer calls in flight gets the next call, wherever the
/// round robin starts.
#[test]
fn the_less_loaded_of_two_hosts_is_chosen() {
    let f = fixture(single("kafka", |b| {
        b.hosts(&["k1", "k2"])
            .count("max_in_flight", 100)
            .count("max_in_flight_per_host", 100)
            .count("max_connecting_per_host", 100)
    }));
    let e = &f.engine;
    let kafka = e.backend("kafka").unwrap();
    let budget = f.budget_in("long");
    let k1 = e.host(kafka, "k1").unwrap();
    let _busy: Vec<_> = (0..2)
        .map(|_| e.begin_attempt_on(k1, &budget, 0).unwrap())
        .collect();
    for i in 0..6 {
        let a = e.begin_attempt(kafka, &budget, 0).unwrap();
        assert_eq!(a.host(), Some("k2"), "call {i} went to the busier host");
        a.finish(AttemptOutcome::Success);
    }
}

/// A host that proves itself on probation is forgiven its past ejections: its next ejection lasts
/// the base time again, not twice the last one.
#[test]
fn a_success_on_probation_forgives_past_ejections() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let end = |outcome| f.run_on(k1, &budget, outcome);
    let out = || ejected(&f, "kafka") == ["k1"];
    end(AttemptOutcome::ConnectFailure); // out for 5 s
    f.clock.advance(Duration::from_secs(5));
    end(AttemptOutcome::ConnectFailure); // failed on probation: out for 10 s
    f.clock.advance(Duration::from_secs(5));
    assert!(out(), "the second ejection lasts 10 s");
    f.clock.advance(Duration::from_secs(5));
    end(AttemptOutcome::Success); // proven: past ejections forgiven
    assert!(!out());
    f.clock.advance(Duration::from_secs(1));
    end(AttemptOutcome::ConnectFailure); // a first ejection again: 5 s
    assert!(out());
    f.clock.advance(Duration::from_secs(5));
    assert!(!out(), "forgiven: the base time again");
}

/// A host back on probation gets one connection attempt at a time, whatever the per-host cap;
/// once connected, the next may try.
#[test]
fn a_host_on_probation_gets_one_connection_attempt_at_a_time() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    f.run_on(k1, &budget, AttemptOutcome::ConnectFailure);
    f.clock.advance(Duration::from_secs(5));
    let mut first = f.engine.begin_attempt_on(k1, &budget, 0).unwrap();
    let v = f.engine.begin_attempt_on(k1, &budget, 0).unwrap_err();
    assert_eq!(v.reason(), Reason::NoHealthyHost, "{v}");
    first.connected();
    let second = f.engine.begin_attempt_on(k1, &budget, 0).unwrap();
    drop((first, second));
}

/// Only connect failures and timeouts eject a host: server errors are the breaker's business
/// (the host answers; ejecting it moves its load onto the others).
#[test]
fn server_errors_do_not_eject_a_host() {
    let f = fixture(ejecting(&["k1", "k2"], false));
    let kafka = f.engine.backend("kafka").unwrap();
    let budget = f.budget();
    let k1 = f.engine.host(kafka, "k1").unwrap();
    let end = |outcome| f.run_on(k1, &budget, outcome);
    for _ in 0..5 {
        end(AttemptOutcome::ServerError);
    }
    assert!(ejected(&f, "kafka").is_empty());
    end(AttemptOutcome::Timeout);
    assert_eq!(ejected(&f, "kafka"), ["k1"], "a timeout does");
}

/// The policy of the retry-budget reload tests: no ratio, a floor of `per_second`.
fn floor_policy(per_second: u64) -> Policy {
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
}

/// A backend's retry budget is shared by every request, whichever policy each runs under, and
/// earns at the current policy's rates: a request still running under the policy before a reload
/// that turned the floor on draws on what the new floor earns, without throwing any of it away.
#[test]
fn an_old_request_draws_on_a_floor_a_reload_turned_on() {
    let f = fixture(floor_policy(0));
    let db = f.engine.backend("db").unwrap();
    let old = f.budget(); // no floor, no ratio under its policy
    f.engine.reload(floor_policy(10)).unwrap();
    f.clock.advance(Duration::from_secs(5));
    // Five seconds of the new floor of 10 a second, shared by both.
    assert_eq!(f.retries_granted(db, &old, 1), 1);
    let new = f.budget();
    assert_eq!(f.retries_granted(db, &new, 100), 49);
}

/// A request still running under the policy before a reload that turned the retry floor off earns
/// nothing by its old floor: the shared budget stops earning for everyone.
#[test]
fn an_old_request_earns_nothing_by_a_floor_a_reload_turned_off() {
    let f = fixture(floor_policy(10));
    let db = f.engine.backend("db").unwrap();
    let on = f.budget();
    assert_eq!(
        f.retries_granted(db, &on, 100),
        10,
        "the second a floor starts with"
    );
    f.engine.reload(floor_policy(0)).unwrap();
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.retries_granted(db, &on, 100), 0, "minted by an old floor");
    assert_eq!(f.engine.backend_stats()[0].retry_tokens, 0);
}

/// A trial (an attempt let through with less time than the backend usually needs) that becomes a
/// half-open breaker's probe and times out, for want of time, does not open the breaker again: the
/// next request with time for the backend gets the probe, and can close it.
#[test]
fn a_trial_that_times_out_as_the_probe_leaves_the_breaker_half_open() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(10))
            .count("breaker.consecutive_failures", 1)
            .count("breaker.probes", 1)
            .duration("breaker.open_for", Duration::from_secs(1))
    }));
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    let a = f.engine.begin_attempt(db, &long, 0).unwrap();
    f.clock.advance(Duration::from_secs(2));
    a.finish(AttemptOutcome::Success); // usually 2 s
    f.engine
        .begin_attempt(db, &long, 0)
        .unwrap()
        .finish(AttemptOutcome::ServerError);
    let wait = f.engine.begin_attempt(db, &long, 0).unwrap_err();
    f.clock.advance(wait.retry_after().unwrap());
    let short = f.budget_in("short"); // under 500 ms
    let trial = f.engine.begin_attempt(db, &short, 0).unwrap();
    assert!(trial.is_probe());
    f.clock.advance(trial.timeout());
    trial.finish(AttemptOutcome::Timeout);
    assert_eq!(
        f.kinds(),
        [TransitionKind::Opened, TransitionKind::HalfOpened]
    );
    let probe = f.engine.begin_attempt(db, &long, 0).unwrap();
    assert!(probe.is_probe());
    probe.finish(AttemptOutcome::Success);
    assert_eq!(f.kinds().last(), Some(&TransitionKind::Closed));
}

/// Successes of attempts whose timeouts were short (trials), reported late by callers who keep
/// the backend's own timeout, count as what they took: the backend still seems to need what it
/// really takes, and requests with less time stay refused but for the occasional trial.
#[test]
fn late_successes_of_short_attempts_teach_what_they_took() {
    let f = fixture(
        Policy::builder()
            .class("long", |c| c.wall_time(Duration::from_secs(3600)))
            .class("tiny", |c| c.wall_time(Duration::from_millis(100)))
            .class("short", |c| c.wall_time(Duration::from_millis(300)))
            .backend("db", |b| {
                b.duration("timeout", Duration::from_secs(10))
                    .duration("margin", Duration::from_millis(50))
            })
            .build()
            .unwrap(),
    );
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    let a = f.engine.begin_attempt(db, &long, 0).unwrap();
    f.clock.advance(Duration::from_secs(2));
    a.finish(AttemptOutcome::Success); // every call takes 2 s
    let mut trials = 0;
    for _ in 0..200 {
        let tiny = f.budget_in("tiny"); // 50 ms after the margin
        let begun = f.engine.begin_attempt(db, &tiny, 0);
        match begun {
            Ok(a) => {
                f.clock.advance(Duration::from_secs(2));
                a.finish(AttemptOutcome::Success);
                trials += 1;
            }
            Err(_) => f.clock.advance(Duration::from_millis(100)),
        }
    }
    assert!(trials > 10, "{trials}");
    let short = f.budget_in("short"); // 250 ms after the margin
    let first = f.engine.begin_attempt(db, &short, 0);
    let second = f.engine.begin_attempt(db, &short, 0);
    assert!(
        first.is_err() || second.is_err(),
        "the backend seems to take under 250 ms"
    );
}

/// A breaker whose ratios decide, with a long window and a usual latency to learn.
fn ratio_policy(max_in_flight: u64) -> Policy {
    single("db", |b| {
        b.duration("timeout", Duration::from_secs(10))
            .count("max_in_flight", max_in_flight)
            .duration("breaker.window", Duration::from_secs(60))
            .duration("breaker.slow_call", Duration::from_secs(60))
            .count("breaker.min_calls", 3)
            .fraction("breaker.failure_ratio", 0.9)
            .count("breaker.consecutive_failures", 50)
    })
}

/// A trial's timeout is not a call of the breaker's window either: it neither fails nor dilutes
/// the failures around it. (Counted apart, as `trial_timeout`.)
#[test]
fn a_trials_timeout_leaves_the_breakers_failure_ratio_alone() {
    let opened = |with_trial: bool| {
        let f = fixture(ratio_policy(16));
        let db = f.engine.backend("db").unwrap();
        let long = f.budget_in("long");
        let a = f.engine.begin_attempt(db, &long, 0).unwrap();
        f.clock.advance(Duration::from_secs(2));
        a.finish(AttemptOutcome::Success); // usually 2 s
        f.clock.advance(Duration::from_secs(120)); // and out of the window
        let timeout = || {
            let a = f.engine.begin_attempt(db, &long, 0).unwrap();
            f.clock.advance(Duration::from_secs(1));
            a.finish(AttemptOutcome::Timeout);
        };
        timeout();
        if with_trial {
            let short = f.budget_in("short");
            let trial = f.engine.begin_attempt(db, &short, 0).unwrap();
            f.clock.advance(trial.timeout());
            trial.finish(AttemptOutcome::Timeout);
            assert_eq!(f.engine.backend_stats()[0].outcome("trial_timeout"), 1);
        }
        timeout();
        timeout();
        f.kinds().contains(&TransitionKind::Opened)
    };
    assert!(opened(false), "three timeouts of three calls");
    assert!(opened(true), "three timeouts and a trial's");
}

/// A trial refused after all (by a cap, here) gives its turn back: the next request with as
/// little time may try.
#[test]
fn a_trial_refused_by_a_cap_gives_its_turn_back() {
    let f = fixture(ratio_policy(1));
    let db = f.engine.backend("db").unwrap();
    let long = f.budget_in("long");
    let a = f.engine.begin_attempt(db, &long, 0).unwrap();
    f.clock.advance(Duration::from_secs(2));
    a.finish(AttemptOutcome::Success); // usually 2 s
    let held = f.engine.begin_attempt(db, &long, 0).unwrap(); // the only permit
    let short = f.budget_in("short");
    let refused = f.engine.begin_attempt(db, &short, 0).unwrap_err();
    assert_eq!(refused.reason(), Reason::BulkheadFull);
    held.finish(AttemptOutcome::Success);
    let short = f.budget_in("short");
    let trial = f.engine.begin_attempt(db, &short, 0).unwrap();
    // The turn is taken now: the next waits a usual latency.
    drop(trial);
    let short = f.budget_in("short");
    assert_eq!(
        f.engine.begin_attempt(db, &short, 0).unwrap_err().reason(),
        Reason::InsufficientTime
    );
}

/// A request timeout (HTTP 408) is the backend taking too long, not the client's fault.
#[test]
fn a_408_is_a_timeout() {
    assert_eq!(
        AttemptOutcome::from_http(408, None),
        AttemptOutcome::Timeout
    );
}

/// A failure ratio exactly at the threshold trips the breaker (at or over, as documented).
#[test]
fn a_failure_ratio_exactly_at_its_threshold_opens_the_breaker() {
    let f = fixture(single("db", |b| {
        b.count("breaker.min_calls", 4)
            .fraction("breaker.failure_ratio", 0.5)
            .count("breaker.consecutive_failures", 1000)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget();
    for outcome in [
        AttemptOutcome::Success,
        AttemptOutcome::ServerError,
        AttemptOutcome::Success,
        AttemptOutcome::ServerError,
    ] {
        f.run(db, &budget, outcome).unwrap();
    }
    assert_eq!(f.kinds(), [TransitionKind::Opened]);
}

/// A retry whose backoff and margin take all the time left is refused even when the backend has
/// no usual latency yet: the attempt after it would have no time at all.
#[test]
fn a_retry_leaving_no_time_after_the_margin_is_refused() {
    let f = fixture(single("db", |b| {
        b.duration("timeout", Duration::from_secs(5))
            .duration("margin", Duration::from_secs(1))
            .duration("retry.backoff_base", MS)
            .duration("retry.backoff_max", MS)
    }));
    let db = f.engine.backend("db").unwrap();
    let budget = f.budget(); // 30 s
    f.clock.advance(Duration::from_secs(28)); // 2 s left: a 1 s backoff, then the 1 s margin
    let refused = AttemptOutcome::Refused {
        retry_after: Some(Duration::from_secs(1)),
    };
    let RetryDecision::Stop(v) = f.engine.retry(db, &budget, refused, 1) else {
        panic!("a retry granted with no time left after the margin");
    };
    assert_eq!(v.reason(), Reason::InsufficientTime);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        f.engine.begin_attempt(db, &budget, 1).unwrap_err().reason(),
        Reason::InsufficientTime
    );
}

//! Property test: random reloads that edit a backend's pool, interleaved with attempts of requests
//! begun under every version, never break what the backend promises.
//!
//! A reload may reorder the pool, add hosts, take hosts out and put them back, while attempts begun
//! under older versions are still running and older requests keep beginning new ones. At every step
//! the backend's and each host's calls in flight equal the attempts the test holds, no cap is
//! exceeded, the hosts ejected from the current pool never exceed its share, and outcome counters
//! only grow; at the end, with everything finished, nothing is left in flight.
//!
//! `PROPTEST_CASES` raises the case count (default 256).

use costguard::backend::BackendStats;
use costguard::clock::ManualClock;
use costguard::{Attempt, AttemptOutcome, Budget, Engine, Policy, RequestId};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::HashMap;
use std::time::Duration;

const HOSTS: [&str; 5] = ["h0", "h1", "h2", "h3", "h4"];
const MAX_IN_FLIGHT: u32 = 6;
const PER_HOST: u32 = 2;
/// Permille of the pool that may be ejected.
const SHARE: u64 = 500;

#[derive(Clone, Debug)]
enum Op {
    /// Reload with the hosts whose bits are set, in an order rotated by `rotate`.
    Reload {
        hosts: u8,
        rotate: usize,
    },
    /// A new request, under the current policy.
    Request,
    /// Request `req` (modulo those begun) begins an attempt, on host `on` if given.
    Begin {
        req: usize,
        on: Option<usize>,
    },
    /// Attempt `n` (modulo those held) finishes with `outcome` (connected first if `connected`).
    Finish {
        n: usize,
        outcome: usize,
        connected: bool,
    },
    Advance {
        secs: u64,
    },
}

const OUTCOMES: [AttemptOutcome; 4] = [
    AttemptOutcome::Success,
    AttemptOutcome::ConnectFailure,
    AttemptOutcome::Timeout,
    AttemptOutcome::ServerError,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u8..32, 0usize..5).prop_map(|(hosts, rotate)| Op::Reload { hosts, rotate }),
        2 => Just(Op::Request),
        6 => (0usize..8, proptest::option::of(0usize..5))
            .prop_map(|(req, on)| Op::Begin { req, on }),
        5 => (0usize..8, 0usize..OUTCOMES.len(), any::<bool>())
            .prop_map(|(n, outcome, connected)| Op::Finish { n, outcome, connected }),
        1 => (1u64..30).prop_map(|secs| Op::Advance { secs }),
    ]
}

fn pool(hosts: u8, rotate: usize) -> Vec<&'static str> {
    let mut listed: Vec<&str> = HOSTS
        .iter()
        .enumerate()
        .filter(|(i, _)| hosts & (1 << i) != 0)
        .map(|(_, h)| *h)
        .collect();
    let n = listed.len().max(1);
    listed.rotate_left(rotate % n);
    listed
}

fn policy(hosts: &[&str]) -> Policy {
    Policy::builder()
        .class("api", |c| c.wall_time(Duration::from_secs(24 * 3600)))
        .backend("kafka", |b| {
            b.hosts(hosts)
                .count("max_in_flight", u64::from(MAX_IN_FLIGHT))
                .count("max_in_flight_per_host", u64::from(PER_HOST))
                .count("ejection.consecutive_failures", 1)
                .fraction("ejection.max_ejected", SHARE as f64 / 1000.0)
                .duration("ejection.base", Duration::from_secs(10))
                .count("breaker.consecutive_failures", 3)
                .duration("breaker.open_for", Duration::from_secs(5))
        })
        .build()
        .expect("test policy")
}

struct Run {
    engine: Engine,
    clock: ManualClock,
    current: Vec<&'static str>,
    requests: Vec<Budget>,
    held: Vec<Attempt<'static>>,
    finished: u64,
}

impl Run {
    fn stats(&self) -> BackendStats {
        self.engine.backend_stats().remove(0)
    }

    fn check(&self, what: &Op) {
        let s = self.stats();
        assert_eq!(
            s.in_flight as usize,
            self.held.len(),
            "{what:?}: backend in flight"
        );
        assert!(s.in_flight <= MAX_IN_FLIGHT, "{what:?}: {s:?}");
        let mut on: HashMap<&str, u32> = HashMap::new();
        for a in &self.held {
            if let Some(h) = a.host() {
                *on.entry(HOSTS.iter().find(|n| **n == h).copied().unwrap())
                    .or_default() += 1;
            }
        }
        let listed: Vec<&str> = s.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            listed, self.current,
            "{what:?}: the stats list the current pool"
        );
        for h in &s.hosts {
            assert_eq!(
                h.in_flight,
                on.get(h.host.as_str()).copied().unwrap_or(0),
                "{what:?}: {} in flight",
                h.host
            );
            assert!(h.in_flight <= PER_HOST, "{what:?}: {h:?}");
        }
        let ejected = s.hosts.iter().filter(|h| h.ejected).count() as u64;
        let most = self.current.len() as u64 * SHARE / 1000;
        assert!(
            ejected <= most,
            "{what:?}: {ejected} of {:?} ejected, at most {most}",
            self.current
        );
        let outcomes: u64 = s.outcomes.iter().map(|(_, n)| n).sum();
        assert_eq!(
            outcomes, self.finished,
            "{what:?}: every finish counted once"
        );
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Reload { hosts, rotate } => {
                let next = pool(hosts, rotate);
                self.engine.reload(policy(&next)).expect("reload");
                self.current = next;
            }
            Op::Request => {
                let n = self.requests.len() as u64;
                let budget = self
                    .engine
                    .begin_by_name("api", RequestId::from_u64(n))
                    .expect("request");
                self.requests.push(budget);
            }
            Op::Begin { req, on } => {
                if self.requests.is_empty() {
                    return;
                }
                let budget = &self.requests[req % self.requests.len()];
                let kafka = self.engine.backend("kafka").expect("backend");
                let begun = match on {
                    None => self.engine.begin_attempt(kafka, budget, 0),
                    // A handle for a host the current pool lacks cannot be had; one the request's
                    // own version lacks is refused.
                    Some(h) => match self.engine.host(kafka, HOSTS[h]) {
                        Ok(host) => self.engine.begin_attempt_on(host, budget, 0),
                        Err(_) => return,
                    },
                };
                if let Ok(a) = begun {
                    self.held.push(a.into_owned());
                }
            }
            Op::Finish {
                n,
                outcome,
                connected,
            } => {
                if self.held.is_empty() {
                    return;
                }
                let mut a = self.held.swap_remove(n % self.held.len());
                if connected {
                    a.connected();
                }
                a.finish(OUTCOMES[outcome]);
                self.finished += 1;
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(secs)),
        }
    }
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reloads_that_edit_the_pool_keep_every_promise(ops in proptest::collection::vec(op(), 1..80)) {
        let first = pool(0b00111, 0);
        let clock = ManualClock::new();
        let engine = Engine::builder(policy(&first))
            .clock(clock.clone())
            .build()
            .expect("engine");
        let mut run = Run {
            engine,
            clock,
            current: first,
            requests: Vec::new(),
            held: Vec::new(),
            finished: 0,
        };
        for op in &ops {
            run.apply(op);
            run.check(op);
        }
        let finish = Op::Finish { n: 0, outcome: 0, connected: false };
        while !run.held.is_empty() {
            run.apply(&finish);
        }
        run.check(&finish);
        let s = run.stats();
        prop_assert_eq!((s.in_flight, s.connecting), (0, 0));
        prop_assert!(s.hosts.iter().all(|h| h.in_flight == 0 && h.connecting == 0));
    }
}

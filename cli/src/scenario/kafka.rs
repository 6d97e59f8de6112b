//! `kafka-2016`: the MediaWiki API outage of 28 January 2016, replayed.
//!
//! App servers with a fixed pool of HHVM threads log one event per request to a Kafka cluster of
//! several brokers, connecting anew each time. One broker (kafka1012, rebooted for a kernel upgrade)
//! stops answering connects: a SYN to it gets no answer, and `connect()` blocks until the kernel gives
//! up. Unguarded, every request that picks that broker holds its thread in `SYN_SENT`; within seconds
//! every thread is stuck, the front end serves "Socket timeout after 10 seconds", and it stays so until
//! a person removes the broker from the configuration, 22 minutes after the failures started
//! (13:36 to 13:58). Guarded, each app server's engine lets at most `max_connecting_per_host` threads
//! connect to one broker, ejects the broker after a few failed connects, readmits it on probation with
//! a doubling time out, and takes it back for good once it answers again: no configuration change.

use super::{Run, Spec};
use crate::sim::events::Queue;
use crate::sim::guard::{named, refused, Guard, Needs};
use crate::sim::metrics::{Recorder, Totals};
use crate::sim::rng::Rng;
use crate::sim::slab::{Key, Slab};
use crate::sim::threads::{Pool, ThreadId};
use crate::sim::{MINUTE, MS, SECOND};
use crate::{ReplayError, RunReport, ScenarioInfo};
use costguard::backend::TransitionKind;
use costguard::clock::ManualClock;
use costguard::{
    AdmitRequest, Admitted, Attempt, AttemptOutcome, Backend, Class, Outcome, RequestId,
    RetryDecision,
};
use std::collections::VecDeque;

/// The scenario's name.
pub const NAME: &str = "kafka-2016";
/// The policy the guarded run uses by default.
pub const POLICY: &str = include_str!("../../scenarios/kafka-2016.toml");

/// Simulated length of a run.
pub const DURATION: u64 = 35 * MINUTE;
/// The broker stops answering connects (the failures start: 13:36).
pub const FAULT_AT: u64 = 3 * MINUTE;
/// Unguarded: the broker is removed from mediawiki-config and the change reaches every server
/// (13:58, 22 minutes after the failures started).
pub const DEPOOL_AT: u64 = FAULT_AT + 22 * MINUTE;
/// The broker answers connects again (its reboot is over).
pub const BROKER_BACK_AT: u64 = FAULT_AT + 25 * MINUTE;
/// The Kafka cluster.
pub const BROKERS: [&str; 4] = [
    "kafka1012:9092",
    "kafka1013:9092",
    "kafka1014:9092",
    "kafka1018:9092",
];
/// The broker that goes away (an index into [`BROKERS`]).
pub const DEAD: usize = 0;
/// App servers, each with its own thread pool (and, guarded, its own engine).
pub const SERVERS: usize = 4;
/// HHVM threads per app server.
pub const THREADS: u64 = 50;
/// Requests an app server's listen backlog holds when every thread is busy; past it, 503.
pub const BACKLOG: usize = 100;
/// Ordinary requests per second, all servers together.
pub const RATE: u64 = 120;
/// Work a request does before logging, at least and at most.
pub const WORK_MIN: u64 = 20 * MS;
/// See [`WORK_MIN`].
pub const WORK_MAX: u64 = 80 * MS;
/// A connect to a broker that answers.
pub const CONNECT: u64 = MS;
/// Sending the log event once connected.
pub const SEND: u64 = 2 * MS;
/// How long `connect()` to a host that never answers blocks before the kernel gives up
/// (`tcp_syn_retries` = 6: 1 + 2 + 4 + 8 + 16 + 32 + 64 seconds).
pub const SYN_GIVE_UP: u64 = 127 * SECOND;
/// The front end's timeout ("Socket timeout after 10 seconds").
pub const FRONT_TIMEOUT: u64 = 10 * SECOND;

/// The classes and backends the guarded run uses.
pub const NEEDS: Needs<'static> = Needs {
    classes: &["app"],
    counters: &[],
    backends: &[("kafka", &BROKERS)],
};

/// The scenario.
pub const SPEC: Spec = Spec {
    info: ScenarioInfo {
        name: NAME,
        summary: "2016 Kafka broker: one of four brokers stops answering connects; threads pile up in connect()",
        incident: true,
    },
    policy: POLICY,
    duration: DURATION,
    fault_at: FAULT_AT,
    needs: &NEEDS,
    run,
};

/// What the request tree's retry allowance permits per request: the request itself, plus its log
/// event's first connect and one connect per retry the class allows.
pub fn amplification_allowed(policy: &costguard::Policy) -> Option<f64> {
    let retries = policy.class("app")?.retries()?;
    Some(2u64.saturating_add(retries) as f64)
}

/// Whether `broker` ignores connects at `now`.
fn dead(now: u64, broker: usize) -> bool {
    broker == DEAD && (FAULT_AT..BROKER_BACK_AT).contains(&now)
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Arrive,
    WorkDone(Key),
    Connected(Key, u32),
    Sent(Key, u32),
    GiveUp(Key, u32),
    Retry(Key),
    Depool,
    BrokerBack,
    Sample,
}

struct Req {
    server: usize,
    arrival: u64,
    thread: Option<ThreadId>,
    admitted: Option<Admitted>,
    attempt: Option<Attempt<'static>>,
    broker: usize,
    tries: u32,
    /// In `connect()` to the dead broker.
    in_dead_connect: bool,
}

struct Server {
    pool: Pool,
    backlog: VecDeque<Key>,
    guard: Option<(Guard, Class, Backend)>,
}

struct Model<'a> {
    now: u64,
    queue: Queue<Ev>,
    /// Arrivals draw from their own stream, so both runs see exactly the same traffic whatever else
    /// each draws.
    arrivals: Rng,
    rng: Rng,
    rec: Recorder,
    reqs: Slab<Req>,
    servers: Vec<Server>,
    depooled: bool,
    guarded: bool,
    max_busy: u64,
    /// Threads in `connect()` to the dead broker right now, every server together.
    connecting_dead: u64,
    /// The guarded policy's bound on amplification.
    allowed: Option<f64>,
    progress: &'a mut dyn FnMut(f64),
}

fn run(run: Run<'_>) -> Result<RunReport, ReplayError> {
    let clock = ManualClock::new();
    let mut servers = Vec::with_capacity(SERVERS);
    for i in 0..SERVERS {
        let guard = match run.guard {
            None => None,
            Some(policy) => {
                // Only the first server's transitions become events; the others' are counted.
                let label = format!("app{}", i + 1);
                let guard = Guard::new(policy.clone(), &clock, &label, run.seed)?;
                let app = named(guard.engine.class("app"))?;
                let kafka = named(guard.engine.backend("kafka"))?;
                Some((guard, app, kafka))
            }
        };
        servers.push(Server {
            pool: Pool::new(THREADS),
            backlog: VecDeque::new(),
            guard,
        });
    }
    let model = Model {
        now: 0,
        queue: Queue::default(),
        arrivals: Rng::new(run.seed, 2016_0128),
        rng: Rng::new(run.seed, 2016),
        rec: Recorder::new(DURATION, FAULT_AT, 10),
        reqs: Slab::default(),
        guarded: run.guard.is_some(),
        servers,
        depooled: false,
        max_busy: 0,
        connecting_dead: 0,
        allowed: run.guard.and_then(amplification_allowed),
        progress: run.progress,
    };
    Ok(model.run())
}

impl Model<'_> {
    fn at(&mut self, delay: u64, ev: Ev) {
        self.queue.push(self.now.saturating_add(delay), ev);
    }

    fn run(mut self) -> RunReport {
        self.queue.push(0, Ev::Arrive);
        self.queue.push(0, Ev::Sample);
        if !self.guarded {
            self.queue.push(DEPOOL_AT, Ev::Depool);
        }
        self.queue.push(BROKER_BACK_AT, Ev::BrokerBack);
        self.rec.event(
            FAULT_AT,
            format!("{} stops answering connects", BROKERS[DEAD]),
        );
        let end = DURATION + FRONT_TIMEOUT;
        let mut steps = 0u64;
        while let Some((t, ev)) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            if let Some((g, _, _)) = self.servers.first().and_then(|s| s.guard.as_ref()) {
                g.set_time(t); // one clock shared by every server's engine
            }
            self.handle(ev);
            self.transitions();
            steps += 1;
            if steps % 65_536 == 0 {
                (self.progress)(t as f64 / end as f64);
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive => self.arrive(),
            Ev::WorkDone(key) => self.log(key),
            Ev::Connected(key, n) => self.connected(key, n),
            Ev::Sent(key, n) => self.sent(key, n),
            Ev::GiveUp(key, n) => self.give_up(key, n),
            Ev::Retry(key) => self.log(key),
            Ev::Depool => {
                self.depooled = true;
                self.rec.event(
                    self.now,
                    format!("{} removed from mediawiki-config by hand", BROKERS[DEAD]),
                );
            }
            Ev::BrokerBack => self.rec.event(
                self.now,
                format!("{} answers connects again", BROKERS[DEAD]),
            ),
            Ev::Sample => self.sample(),
        }
    }

    fn transitions(&mut self) {
        for (i, server) in self.servers.iter().enumerate() {
            let Some((g, _, _)) = &server.guard else {
                continue;
            };
            for t in g.drain(&mut self.rec, i == 0) {
                let name = match t.kind {
                    TransitionKind::Ejected => "ejections",
                    TransitionKind::Readmitted => "readmissions",
                    _ => continue,
                };
                self.rec.count(name, 1);
            }
        }
    }

    fn arrive(&mut self) {
        if self.now >= DURATION {
            return;
        }
        let gap = self.arrivals.exponential(SECOND / RATE);
        self.at(gap, Ev::Arrive);
        let server = self.arrivals.below(SERVERS as u64) as usize;
        if self.now >= FAULT_AT {
            self.rec.originals += 1;
            self.rec.generated += 1;
        }
        let key = self.reqs.insert(Req {
            server,
            arrival: self.now,
            thread: None,
            admitted: None,
            attempt: None,
            broker: 0,
            tries: 0,
            in_dead_connect: false,
        });
        if let Some((g, app, _)) = &self.servers[server].guard {
            let request = AdmitRequest::new(*app, RequestId::from_u64(key.pack()));
            match g.engine.try_admit(&request) {
                Ok(admitted) => {
                    if let Some(req) = self.reqs.get_mut(key) {
                        req.admitted = Some(admitted);
                    }
                }
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.respond(key, false);
                }
            }
        }
        let s = &mut self.servers[server];
        match s.pool.acquire(u64::MAX) {
            Some(thread) => self.start(key, thread),
            None if s.backlog.len() < BACKLOG => s.backlog.push_back(key),
            None => self.respond(key, false),
        }
    }

    fn start(&mut self, key: Key, thread: ThreadId) {
        let busy = self.servers.iter().map(|s| s.pool.busy()).sum();
        self.max_busy = self.max_busy.max(busy);
        let work = self.rng.range(WORK_MIN, WORK_MAX);
        if let Some(req) = self.reqs.get_mut(key) {
            req.thread = Some(thread);
            self.at(work, Ev::WorkDone(key));
        }
    }

    /// The request logs its event: connect to a broker (unguarded: any configured one; guarded: the
    /// one the engine chooses, within its caps), then send.
    fn log(&mut self, key: Key) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        req.tries += 1;
        let n = req.tries;
        // A connect counts as a request generated once it is made: below, unguarded always, guarded
        // once the engine lets the attempt begin (an event it refuses reaches no broker). Counted
        // by the request's arrival, as its original is: a request that arrived before the fault
        // counts for neither, whenever it connects.
        let counted = req.arrival >= FAULT_AT;
        let server = &self.servers[req.server];
        let broker = match &server.guard {
            None => {
                if counted {
                    self.rec.generated += 1;
                }
                // Any configured broker; after the depool, any but the dead one.
                let configured = BROKERS.len() - usize::from(self.depooled);
                let pick = self.rng.below(configured as u64) as usize;
                (0..BROKERS.len())
                    .filter(|&b| !(self.depooled && b == DEAD))
                    .nth(pick)
                    .unwrap_or(pick)
            }
            Some((g, _, kafka)) => {
                let Some(budget) = req.admitted.as_ref().map(|a| a.budget()) else {
                    return;
                };
                match g
                    .engine
                    .begin_attempt(*kafka, budget, n - 1)
                    .map(Attempt::into_owned)
                {
                    Ok(attempt) => {
                        if counted {
                            self.rec.generated += 1;
                        }
                        let host = attempt.host().unwrap_or("");
                        let broker = BROKERS.iter().position(|b| *b == host);
                        req.attempt = Some(attempt);
                        match broker {
                            Some(b) => b,
                            // A host that is not in the cluster: connection refused at once.
                            None => return self.give_up(key, n),
                        }
                    }
                    Err(v) => {
                        refused(&mut self.rec, &v);
                        self.rec.count("log_events_dropped", 1);
                        return self.respond(key, true);
                    }
                }
            }
        };
        req.broker = broker;
        if dead(self.now, broker) {
            let wait = req.attempt.as_ref().map_or(SYN_GIVE_UP, |a| {
                u64::try_from(a.timeout().as_nanos()).unwrap_or(SYN_GIVE_UP)
            });
            if let Some(thread) = req.thread {
                self.servers[req.server]
                    .pool
                    .set_stuck_from(thread, self.now);
                req.in_dead_connect = true;
                self.connecting_dead += 1;
                self.rec.stuck_now(self.connecting_dead);
            }
            self.at(wait, Ev::GiveUp(key, n));
        } else {
            self.at(CONNECT, Ev::Connected(key, n));
        }
    }

    fn connected(&mut self, key: Key, n: u32) {
        if let Some(req) = self.reqs.get_mut(key).filter(|r| r.tries == n) {
            if let Some(attempt) = req.attempt.as_mut() {
                attempt.connected();
            }
            self.at(SEND, Ev::Sent(key, n));
        }
    }

    fn sent(&mut self, key: Key, n: u32) {
        let Some(req) = self.reqs.get_mut(key).filter(|r| r.tries == n) else {
            return;
        };
        if let Some(attempt) = req.attempt.take() {
            attempt.finish(AttemptOutcome::Success);
        }
        if req.broker == DEAD && self.now >= BROKER_BACK_AT {
            self.rec
                .count(&format!("{}_delivered_after_return", BROKERS[DEAD]), 1);
        }
        self.rec.count("log_events_delivered", 1);
        self.respond(key, true);
    }

    /// `connect()` gave up: the kernel (unguarded, after its SYN retries; monolog then fails the
    /// request) or the attempt's timeout (guarded; the engine decides whether to try another broker).
    fn give_up(&mut self, key: Key, n: u32) {
        let Some(req) = self.reqs.get_mut(key).filter(|r| r.tries == n) else {
            return;
        };
        let server = &mut self.servers[req.server];
        if let Some(thread) = req.thread {
            if std::mem::take(&mut req.in_dead_connect) {
                self.connecting_dead = self.connecting_dead.saturating_sub(1);
            }
            server.pool.set_stuck_from(thread, u64::MAX);
        }
        let Some((g, _, kafka)) = &server.guard else {
            return self.respond(key, false);
        };
        if let Some(attempt) = req.attempt.take() {
            attempt.finish(AttemptOutcome::ConnectFailure);
        }
        let Some(budget) = req.admitted.as_ref().map(|a| a.budget()) else {
            return;
        };
        match g
            .engine
            .retry(*kafka, budget, AttemptOutcome::ConnectFailure, n)
        {
            RetryDecision::After(wait) => {
                let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                self.at(wait, Ev::Retry(key));
            }
            RetryDecision::Stop(v) => {
                refused(&mut self.rec, &v);
                self.rec.count("log_events_dropped", 1);
                self.respond(key, true);
            }
        }
    }

    fn respond(&mut self, key: Key, ok: bool) {
        let Some(mut req) = self.reqs.remove(key) else {
            return;
        };
        if let Some(attempt) = req.attempt.take() {
            attempt.finish(AttemptOutcome::Cancelled);
        }
        if let Some(admitted) = req.admitted.take() {
            admitted.finish(if ok {
                Outcome::Success
            } else {
                Outcome::Overload
            });
        }
        if let Some(thread) = req.thread {
            let server = &mut self.servers[req.server];
            server.pool.release(thread);
            while let Some(next) = server.backlog.pop_front() {
                if let Some(thread) = server.pool.acquire(u64::MAX) {
                    self.start(next, thread);
                    break;
                }
            }
        }
        let deadline = req.arrival + FRONT_TIMEOUT;
        let in_time = self.now <= deadline;
        if !in_time {
            self.rec.error(deadline);
        } else if !ok {
            self.rec.error(self.now);
        }
        self.rec.unaffected(req.arrival, ok && in_time);
    }

    fn sample(&mut self) {
        let busy = self.servers.iter().map(|s| s.pool.busy()).sum();
        let stuck = self.servers.iter().map(|s| s.pool.stuck(self.now)).sum();
        self.rec.sample(self.now, busy, stuck);
        if self.now < DURATION {
            self.at(SECOND, Ev::Sample);
        }
    }

    fn finish(mut self) -> RunReport {
        let pending: Vec<u64> = self.reqs.values().map(|r| r.arrival).collect();
        for arrival in pending {
            self.rec.unaffected(arrival, false);
            self.rec.error(arrival + FRONT_TIMEOUT);
        }
        let threads = THREADS * SERVERS as u64;
        (self.progress)(1.0);
        self.rec.finish(Totals {
            threads,
            max_threads_busy: self.max_busy,
            db_queries: 0,
            peak_db_queue: 0,
            amplification_allowed: self.allowed,
        })
    }
}

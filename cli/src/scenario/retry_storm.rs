//! `retry-storm`: a backend slows down for two minutes, and retries keep it down for good.
//!
//! The lesson both incidents teach, in its plainest form. Users call an app tier, which calls a
//! backend of finite capacity. For two minutes the backend is ten times slower (a cache flush, a
//! compaction). Unguarded, the app retries each timed-out call three times at once and users retry
//! each failed request once; the backend keeps working on calls nobody waits for any more, so when the
//! slowdown ends it is still saturated with abandoned work and retries: a metastable failure that
//! outlives its cause. Guarded, retries come from the request's allowance and the backend's retry
//! budget, the breaker fails calls fast while the backend is sick, clients retry only when told when
//! (Retry-After), and the backend starts each call's budget from the propagated header
//! (`begin_propagated`) and drops the call when it expires.

use super::{Run, Spec};
use crate::sim::database::{Database, JobId};
use crate::sim::events::Queue;
use crate::sim::guard::{named, refused, Guard, Needs};
use crate::sim::metrics::{Recorder, Totals};
use crate::sim::rng::Rng;
use crate::sim::slab::{Key, Slab};
use crate::sim::threads::{Pool, ThreadId};
use crate::sim::{MINUTE, MS, SECOND};
use crate::{ReplayError, RunReport, ScenarioInfo};
use costguard::clock::ManualClock;
use costguard::header::Propagation;
use costguard::{
    AdmitRequest, Admitted, Attempt, AttemptOutcome, Backend, Budget, Class, Outcome, Policy,
    RequestId, RetryDecision,
};
use std::collections::VecDeque;
use std::time::Duration;

/// The scenario's name.
pub const NAME: &str = "retry-storm";
/// The policy the guarded run uses by default.
pub const POLICY: &str = include_str!("../../scenarios/retry-storm.toml");

/// Simulated length of a run.
pub const DURATION: u64 = 15 * MINUTE;
/// The backend slows down.
pub const FAULT_AT: u64 = 2 * MINUTE;
/// For this long.
pub const SLOW_FOR: u64 = 2 * MINUTE;
/// By this factor.
pub const SLOWDOWN: u64 = 10;
/// User requests per second.
pub const RATE: u64 = 60;
/// Times a user retries a failed request (unguarded: at once; guarded: only after a Retry-After).
pub const USER_RETRIES: u32 = 1;
/// How long a user waits for one try.
pub const USER_TIMEOUT: u64 = 10 * SECOND;
/// App threads (the tier under study).
pub const THREADS: u64 = 400;
/// The app's listen backlog; past it, 503.
pub const BACKLOG: usize = 400;
/// Unguarded: the app's timeout on a backend call.
pub const CALL_TIMEOUT: u64 = SECOND;
/// Times the app retries a failed backend call: unguarded at once; guarded at most this often,
/// and only as the engine allows.
pub const APP_RETRIES: u32 = 3;
/// Backend workers.
pub const BACKEND_SLOTS: u64 = 4;
/// Work of one call when the backend is healthy.
pub const CALL_WORK: u64 = 20 * MS;
/// Calls the backend accepts at once; past it, 503.
pub const BACKEND_QUEUE: u64 = 1_000;

/// The classes and backends the guarded run uses.
pub const NEEDS: Needs<'static> = Needs {
    classes: &["app", "search"],
    counters: &[],
    backends: &[("search", &[])],
};

/// The scenario.
pub const SPEC: Spec = Spec {
    info: ScenarioInfo {
        name: NAME,
        summary: "a backend is slow for two minutes; unguarded retries keep it down long after",
        incident: false,
    },
    policy: POLICY,
    duration: DURATION,
    fault_at: FAULT_AT,
    needs: &NEEDS,
    run,
};

/// The most requests (app requests and backend calls) one user request may cause under `policy`:
/// `1 + USER_RETRIES` app requests, each with `1 + retries` calls.
pub fn amplification_allowed(policy: &Policy) -> Option<f64> {
    let retries = policy.class("app")?.retries()?;
    let tries = 1 + u64::from(USER_RETRIES);
    Some(tries.saturating_mul(retries.saturating_add(2)) as f64)
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    User,
    Arrive(Key),
    CallSend(Key),
    CallTimeout(Key, u32),
    BackendTick,
    BackendDeadline(u64),
    Sample,
}

struct Req {
    arrival: u64,
    first: u64,
    try_no: u32,
    thread: Option<ThreadId>,
    calls: u32,
    waiting: Option<u32>,
    admitted: Option<Admitted>,
    attempt: Option<Attempt<'static>>,
}

struct Call {
    req: Key,
    n: u32,
    job: Option<JobId>,
    budget: Option<Budget>,
}

struct Model<'a> {
    now: u64,
    queue: Queue<Ev>,
    rng: Rng,
    rec: Recorder,
    pool: Pool,
    backlog: VecDeque<Key>,
    backend: Database,
    tick: Option<u64>,
    reqs: Slab<Req>,
    calls: Slab<Call>,
    done: Vec<u64>,
    g: Option<(Guard, Class, Class, Backend)>,
    allowed: Option<f64>,
    progress: &'a mut dyn FnMut(f64),
}

fn run(run: Run<'_>) -> Result<RunReport, ReplayError> {
    let clock = ManualClock::new();
    let (g, allowed) = match run.guard {
        None => (None, None),
        Some(policy) => {
            let guard = Guard::new(policy.clone(), &clock, "", run.seed)?;
            let app = named(guard.engine.class("app"))?;
            let search = named(guard.engine.class("search"))?;
            let backend = named(guard.engine.backend("search"))?;
            (
                Some((guard, app, search, backend)),
                amplification_allowed(policy),
            )
        }
    };
    let mut model = Model {
        now: 0,
        queue: Queue::default(),
        rng: Rng::new(run.seed, 3),
        rec: Recorder::new(DURATION, FAULT_AT, 10),
        pool: Pool::new(THREADS),
        backlog: VecDeque::new(),
        backend: Database::new(BACKEND_SLOTS),
        tick: None,
        reqs: Slab::default(),
        calls: Slab::default(),
        done: Vec::new(),
        g,
        allowed,
        progress: run.progress,
    };
    model
        .rec
        .event(FAULT_AT, format!("the backend becomes {SLOWDOWN}x slower"));
    model
        .rec
        .event(FAULT_AT + SLOW_FOR, "the backend is fast again");
    Ok(model.run())
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Model<'_> {
    fn at(&mut self, delay: u64, ev: Ev) {
        self.queue.push(self.now.saturating_add(delay), ev);
    }

    fn run(mut self) -> RunReport {
        self.queue.push(0, Ev::User);
        self.queue.push(0, Ev::Sample);
        let end = DURATION + USER_TIMEOUT * (1 + u64::from(USER_RETRIES));
        let mut steps = 0u64;
        while let Some((t, ev)) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            if let Some((g, ..)) = &self.g {
                g.set_time(t);
            }
            match ev {
                Ev::User => self.user(),
                Ev::Arrive(key) => self.arrive(key),
                Ev::CallSend(key) => self.call_send(key),
                Ev::CallTimeout(key, n) => self.call_failed(key, n, AttemptOutcome::Timeout),
                Ev::BackendTick => self.backend_tick(),
                Ev::BackendDeadline(call) => self.backend_deadline(Key::unpack(call)),
                Ev::Sample => self.sample(),
            }
            if let Some((g, ..)) = &self.g {
                g.drain(&mut self.rec, true);
            }
            steps += 1;
            if steps % 65_536 == 0 {
                (self.progress)(t as f64 / end as f64);
            }
        }
        let pending: Vec<u64> = self.reqs.values().map(|r| r.first).collect();
        for first in pending {
            self.rec.unaffected(first, false);
        }
        (self.progress)(1.0);
        self.rec.finish(Totals {
            threads: THREADS,
            max_threads_busy: self.pool.max_busy(),
            db_queries: self.backend.served(),
            peak_db_queue: self.backend.peak_queue(),
            amplification_allowed: self.allowed,
        })
    }

    fn user(&mut self) {
        if self.now >= DURATION {
            return;
        }
        let gap = self.rng.exponential(SECOND / RATE);
        self.at(gap, Ev::User);
        if self.now >= FAULT_AT {
            self.rec.originals += 1;
        }
        let key = self.reqs.insert(Req {
            arrival: self.now,
            first: self.now,
            try_no: 0,
            thread: None,
            calls: 0,
            waiting: None,
            admitted: None,
            attempt: None,
        });
        self.arrive(key);
    }

    /// A user's try reaches the app: its door (guarded), then a thread or the backlog.
    fn arrive(&mut self, key: Key) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        req.try_no += 1;
        req.arrival = self.now;
        req.calls = 0;
        if req.first >= FAULT_AT {
            self.rec.generated += 1;
        }
        if let Some((g, app, ..)) = &self.g {
            let request = AdmitRequest::new(*app, RequestId::from_u64(key.pack()));
            match g.engine.try_admit(&request) {
                Ok(a) => req.admitted = Some(a),
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.respond(key, false, v.retry_after());
                }
            }
        }
        match self.pool.acquire(self.now + USER_TIMEOUT) {
            Some(thread) => {
                req.thread = Some(thread);
                self.call_send(key);
            }
            None if self.backlog.len() < BACKLOG => self.backlog.push_back(key),
            None => self.respond(key, false, None),
        }
    }

    /// The app calls the backend (again).
    fn call_send(&mut self, key: Key) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        req.calls += 1;
        let n = req.calls;
        let mut timeout = CALL_TIMEOUT;
        let mut budget = None;
        if let Some((g, _, search, backend)) = &self.g {
            let Some(own) = req.admitted.as_ref().map(|a| a.budget()) else {
                return;
            };
            match g
                .engine
                .begin_attempt(*backend, own, n - 1)
                .map(Attempt::into_owned)
            {
                Ok(mut attempt) => {
                    attempt.connected();
                    timeout = ns(attempt.timeout());
                    req.attempt = Some(attempt);
                }
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.respond(key, false, v.retry_after());
                }
            }
            // The backend's side: a budget from the header, no looser than its own policy.
            let header = own.to_header();
            match Propagation::decode(&header) {
                Ok(p) => {
                    let id = RequestId::from_u64(key.pack());
                    match g.engine.begin_propagated(*search, id, &p) {
                        Ok(b) => budget = Some(b),
                        Err(v) => {
                            refused(&mut self.rec, &v);
                            self.rec.count("backend_refused_calls", 1);
                        }
                    }
                }
                Err(_) => self.rec.count("bad_headers", 1),
            }
        }
        if req.first >= FAULT_AT {
            self.rec.generated += 1;
        }
        req.waiting = Some(n);
        self.at(timeout, Ev::CallTimeout(key, n));
        if self.g.is_some() && budget.is_none() {
            return self.call_failed(key, n, AttemptOutcome::Refused { retry_after: None });
        }
        if self.backend.active() >= BACKEND_QUEUE {
            return self.call_failed(key, n, AttemptOutcome::Refused { retry_after: None });
        }
        let slow = (FAULT_AT..FAULT_AT + SLOW_FOR).contains(&self.now);
        let work = if slow {
            CALL_WORK * SLOWDOWN
        } else {
            CALL_WORK
        };
        let deadline = budget.as_ref().map(|b| ns(b.remaining()));
        let call = self.calls.insert(Call {
            req: key,
            n,
            job: None,
            budget,
        });
        let job = self.backend.submit(self.now, call.pack(), 1, work);
        if let Some(c) = self.calls.get_mut(call) {
            c.job = Some(job);
        }
        if let Some(d) = deadline {
            self.at(d, Ev::BackendDeadline(call.pack()));
        }
        self.backend_changed();
    }

    fn backend_changed(&mut self) {
        if let Some(t) = self.backend.next_completion() {
            if self.tick.is_none_or(|s| t < s) {
                self.tick = Some(t);
                self.queue.push(t.max(self.now), Ev::BackendTick);
            }
        }
    }

    fn backend_tick(&mut self) {
        if self.tick.is_some_and(|s| s <= self.now) {
            self.tick = None;
        }
        let mut done = std::mem::take(&mut self.done);
        self.backend.complete(self.now, &mut done);
        for owner in done.drain(..) {
            if let Some(call) = self.calls.remove(Key::unpack(owner)) {
                self.call_done(call.req, call.n);
            }
        }
        self.done = done;
        self.backend_changed();
    }

    /// Guarded: the call's budget at the backend expired; the backend drops it.
    fn backend_deadline(&mut self, key: Key) {
        if let Some(mut call) = self.calls.remove(key) {
            if let Some(job) = call.job.take() {
                self.backend.cancel(self.now, job);
                self.backend_changed();
            }
            if let Some(b) = call.budget.take() {
                if let Err(v) = b.check() {
                    refused(&mut self.rec, &v);
                }
            }
        }
    }

    fn call_done(&mut self, key: Key, n: u32) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        if req.waiting != Some(n) {
            return;
        }
        req.waiting = None;
        if let Some(a) = req.attempt.take() {
            a.finish(AttemptOutcome::Success);
        }
        self.respond(key, true, None);
    }

    /// A call failed or timed out: retry (unguarded: at once, three times; guarded: up to three
    /// times, as the engine decides) or fail the user's try.
    fn call_failed(&mut self, key: Key, n: u32, outcome: AttemptOutcome) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        if req.waiting != Some(n) {
            return;
        }
        req.waiting = None;
        let Some((g, _, _, backend)) = &self.g else {
            if n <= APP_RETRIES {
                return self.call_send(key);
            }
            return self.respond(key, false, None);
        };
        if let Some(a) = req.attempt.take() {
            a.finish(outcome);
        }
        // Here costguard only takes retries away: the app's own count still holds.
        if n > APP_RETRIES {
            return self.respond(key, false, None);
        }
        let Some(own) = req.admitted.as_ref().map(|a| a.budget()) else {
            return;
        };
        match g.engine.retry(*backend, own, outcome, n) {
            RetryDecision::After(wait) => self.at(ns(wait), Ev::CallSend(key)),
            RetryDecision::Stop(v) => {
                refused(&mut self.rec, &v);
                self.respond(key, false, None);
            }
        }
    }

    /// The app answers a user's try; the user may try again.
    fn respond(&mut self, key: Key, ok: bool, retry_after: Option<Duration>) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        req.waiting = None;
        if let Some(a) = req.attempt.take() {
            a.finish(AttemptOutcome::Cancelled);
        }
        if let Some(a) = req.admitted.take() {
            a.finish(if ok {
                Outcome::Success
            } else {
                Outcome::Overload
            });
        }
        let (arrival, first, try_no) = (req.arrival, req.first, req.try_no);
        if let Some(thread) = req.thread.take() {
            self.pool.release(thread);
            while let Some(next) = self.backlog.pop_front() {
                if let Some(thread) = self.pool.acquire(self.now + USER_TIMEOUT) {
                    if let Some(r) = self.reqs.get_mut(next) {
                        r.thread = Some(thread);
                        self.call_send(next);
                    } else {
                        self.pool.release(thread);
                    }
                    break;
                }
            }
        }
        let in_time = self.now <= arrival + USER_TIMEOUT;
        if !in_time {
            self.rec.error(arrival + USER_TIMEOUT);
        } else if !ok {
            self.rec.error(self.now);
        }
        if ok && in_time {
            self.reqs.remove(key);
            return self.rec.unaffected(first, true);
        }
        // Unguarded users retry at once; guarded ones only when told when.
        let again = match (&self.g, retry_after) {
            (None, _) => Some(0),
            (Some(_), Some(d)) => Some(ns(d)),
            (Some(_), None) => None,
        };
        match again {
            Some(wait) if try_no <= USER_RETRIES => self.at(wait, Ev::Arrive(key)),
            _ => {
                self.reqs.remove(key);
                self.rec.unaffected(first, false);
            }
        }
    }

    fn sample(&mut self) {
        let stuck = self.pool.stuck(self.now);
        self.rec.sample(self.now, self.pool.busy(), stuck);
        if self.now < DURATION {
            self.at(SECOND, Ev::Sample);
        }
    }
}

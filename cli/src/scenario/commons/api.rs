//! The API tier: HHVM threads, the database, and (guarded) the door and the budget of each request.

use super::model::{ApiReq, Ev, Model, Origin, Status};
use super::*;
use crate::sim::guard::refused;
use crate::sim::slab::Key;
use costguard::header::Propagation;
use costguard::{AdmitRequest, Attempt, AttemptOutcome, Outcome, Priority, RequestId};

impl Model<'_> {
    /// A request reaches the API tier: the door (guarded), then a thread or the backlog.
    pub(super) fn api_arrive(&mut self, key: Key) {
        if let Some(g) = &self.g {
            let Some(req) = self.reqs.get(key) else {
                return;
            };
            let prop = req.header.as_deref().and_then(|h| {
                Propagation::decode(h)
                    .map_err(|_| self.rec.count("bad_headers", 1))
                    .ok()
            });
            let id = prop
                .as_ref()
                .and_then(Propagation::request_id)
                .unwrap_or_else(|| RequestId::from_u64(key.pack()));
            let overrides = prop
                .as_ref()
                .map(|p| p.overrides(&g.guard.engine))
                .unwrap_or_default();
            let priority = prop
                .as_ref()
                .and_then(Propagation::priority)
                .unwrap_or(Priority::Normal);
            let estimate = req.queries_left;
            let admit = AdmitRequest::new(g.api, id)
                .priority(priority)
                .overrides(&overrides)
                .estimate(g.db_queries, estimate);
            match g.guard.engine.try_admit(&admit) {
                Ok(admitted) => {
                    if let Some(req) = self.reqs.get_mut(key) {
                        req.admitted = Some(admitted);
                    }
                }
                Err(v) => {
                    refused(&mut self.rec, &v);
                    self.respond(key, Status::Unavailable(v.retry_after()));
                    return;
                }
            }
        }
        let deadline = self.reqs.get(key).map_or(0, |r| r.caller_deadline);
        match self.pool.acquire(deadline) {
            Some(thread) => self.start(key, thread),
            None if self.backlog.len() < API_BACKLOG => self.backlog.push_back(key),
            None => self.respond(key, Status::Unavailable(None)),
        }
    }

    fn start(&mut self, key: Key, thread: crate::sim::threads::ThreadId) {
        if let Some(req) = self.reqs.get_mut(key) {
            req.thread = Some(thread);
            self.pool.set_stuck_from(thread, req.caller_deadline);
            self.at(API_CPU, Ev::CpuDone(key));
        } else {
            self.pool.release(thread);
        }
    }

    /// PHP is done; the queries begin (guarded: on a database attempt with its own timeout).
    pub(super) fn cpu_done(&mut self, key: Key) {
        if let Some(g) = &self.g {
            let Some(req) = self.reqs.get_mut(key) else {
                return;
            };
            let Some(admitted) = &req.admitted else {
                return;
            };
            match g
                .guard
                .engine
                .begin_attempt(g.db_backend, admitted.budget(), 0)
                .map(Attempt::into_owned)
            {
                Ok(mut attempt) => {
                    attempt.connected();
                    let timeout = duration_ns(attempt.timeout());
                    req.db_attempt = Some(attempt);
                    self.at(timeout, Ev::DbTimeout(key));
                }
                Err(v) => {
                    refused(&mut self.rec, &v);
                    self.respond(key, Status::Unavailable(v.retry_after()));
                    return;
                }
            }
        }
        self.db_chunk(key);
    }

    /// The next run of queries: all of them unguarded; guarded, the ones the budget allows, up to a
    /// chunk, each charged before it runs.
    fn db_chunk(&mut self, key: Key) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        let mut n = req.queries_left;
        if let Some(g) = &self.g {
            let Some(budget) = req.admitted.as_ref().map(|a| a.budget()) else {
                return;
            };
            if let Err(v) = budget.check() {
                refused(&mut self.rec, &v);
                return self.respond(key, Status::GatewayTimeout);
            }
            let want = n.min(GUARDED_CHUNK);
            n = 0;
            while n < want {
                let charged = if req.gallery {
                    budget.try_charge_many(&[(g.lookups, 1), (g.db_queries, 1)])
                } else {
                    budget.try_charge(g.db_queries, 1)
                };
                if let Err(v) = charged {
                    // Out of allowance: the queries charged so far run, then the request answers
                    // with what was done, as the API answers a request that reached a limit (a
                    // warning beside partial results).
                    refused(&mut self.rec, &v);
                    req.queries_left = n;
                    req.cut_short = true;
                    break;
                }
                n += 1;
            }
            if n == 0 {
                return self.respond(key, Status::Ok);
            }
        }
        req.queries_left -= n;
        req.queries_done += n;
        let per_query = req.per_query;
        req.db_job = Some(self.db.submit(self.now, key.pack(), n, per_query));
        self.db_changed();
    }

    /// A run of queries finished.
    pub(super) fn db_done(&mut self, owner: u64) {
        let key = Key::unpack(owner);
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        req.db_job = None;
        if req.queries_left > 0 {
            return self.db_chunk(key);
        }
        if let Some(attempt) = req.db_attempt.take() {
            attempt.finish(AttemptOutcome::Success);
        }
        self.respond(key, Status::Ok);
    }

    /// Guarded: the database attempt ran out of time; the request stops and answers 504.
    pub(super) fn db_timeout(&mut self, key: Key) {
        let Some(req) = self.reqs.get_mut(key) else {
            return;
        };
        let Some(attempt) = req.db_attempt.take() else {
            return;
        };
        if let Some(job) = req.db_job.take() {
            self.db.cancel(self.now, job);
            self.db_changed();
        }
        attempt.finish(AttemptOutcome::Timeout);
        self.rec.refusal("deadline_exceeded");
        self.respond(key, Status::GatewayTimeout);
    }

    /// The request answers: its thread goes to the next request in the backlog, and its caller hears.
    pub(super) fn respond(&mut self, key: Key, status: Status) {
        let Some(mut req) = self.reqs.remove(key) else {
            return;
        };
        if let Some(job) = req.db_job.take() {
            self.db.cancel(self.now, job);
            self.db_changed();
        }
        if let Some(attempt) = req.db_attempt.take() {
            attempt.finish(AttemptOutcome::Cancelled);
        }
        if let Some(admitted) = req.admitted.take() {
            admitted.finish(if status == Status::Ok {
                Outcome::Success
            } else {
                Outcome::Overload
            });
        }
        if let Some(thread) = req.thread {
            self.pool.release(thread);
            // HHVM serves its backlog in order, whether or not anyone still waits for the answer.
            while let Some(next) = self.backlog.pop_front() {
                let deadline = self.reqs.get(next).map_or(0, |r| r.caller_deadline);
                if let Some(thread) = self.pool.acquire(deadline) {
                    self.start(next, thread);
                    break;
                }
            }
        }
        if req.cut_short && status == Status::Ok {
            // Counted, since the caller sees a success: a policy whose API allowance is below
            // Parsoid's batches shows it.
            self.rec.count("api_requests_cut_short", 1);
        }
        let late = self.now > req.caller_deadline;
        if late {
            if matches!(req.origin, Origin::Ordinary) {
                self.rec.error(req.caller_deadline);
            }
        } else if status != Status::Ok {
            self.rec.error(self.now);
        }
        match req.origin {
            Origin::Ordinary => self
                .rec
                .unaffected(req.arrival, !late && status == Status::Ok),
            Origin::Call { call, try_no } => {
                if !late {
                    self.call_response(call, try_no, status, req.queries_done);
                }
            }
        }
    }

    /// A new API request on behalf of Parsoid.
    pub(super) fn gallery_request(
        &mut self,
        call: Key,
        try_no: u32,
        images: u64,
        timeout: u64,
        header: Option<String>,
    ) {
        self.rec.generated += 1;
        let req = self.reqs.insert(ApiReq {
            origin: Origin::Call { call, try_no },
            arrival: self.now,
            caller_deadline: self.now.saturating_add(timeout),
            queries_left: images,
            per_query: LOOKUP_QUERY,
            gallery: true,
            thread: None,
            db_job: None,
            header,
            admitted: None,
            db_attempt: None,
            queries_done: 0,
            cut_short: false,
        });
        self.at(0, Ev::ApiArrive(req));
    }
}

/// A duration as simulated nanoseconds, saturating.
pub(super) fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

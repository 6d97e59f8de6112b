//! The outer tiers: RESTBase (and the job runner) asking Parsoid for parses, and Parsoid fanning a
//! gallery out into batches of API requests, each with its retries.

use super::api::duration_ns;
use super::model::{Call, Ev, Model, Parse, Status};
use super::*;
use crate::sim::guard::refused;
use crate::sim::slab::Key;
use costguard::header::{Propagation, Usage};
use costguard::{
    AdmitRequest, Attempt, AttemptOutcome, Outcome, Overrides, Priority, RequestId, RetryDecision,
};

/// How a batch ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// Answered with 200, with the metadata of this many of its images: fewer than the batch when
    /// the API request reached its own lookup limit and answered with partial results.
    Done {
        looked_up: u64,
    },
    Failed,
    /// Not sent: the parse's lookup allowance was spent (its images render as placeholders).
    Skipped,
}

fn outcome(status: Status) -> AttemptOutcome {
    match status {
        Status::Ok => AttemptOutcome::Success,
        Status::Unavailable(retry_after) => AttemptOutcome::Refused { retry_after },
        Status::Failed => AttemptOutcome::ServerError,
        Status::GatewayTimeout => AttemptOutcome::UpstreamTimeout,
    }
}

impl Model<'_> {
    /// A parse job starts at the outer tier (guarded: through its door, with the tree's root budget).
    pub(super) fn job_start(&mut self, key: Key) {
        self.rec.generated += 1;
        if let Some(g) = &self.g {
            let Some(job) = self.jobs.get_mut(key) else {
                return;
            };
            let request = AdmitRequest::new(g.restbase, RequestId::from_u64(job.id));
            match g.guard.engine.try_admit(&request) {
                Ok(admitted) => job.admitted = Some(admitted),
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.job_done(key, false);
                }
            }
        }
        self.parse_send(key);
    }

    /// The outer tier sends its parse request (again).
    pub(super) fn parse_send(&mut self, key: Key) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        job.tries += 1;
        let try_no = job.tries;
        let images = job.images;
        let mut header = None;
        let mut timeout = RESTBASE_TIMEOUT;
        if let Some(g) = &self.g {
            let Some(root) = job.admitted.as_ref().map(|a| a.budget()) else {
                return;
            };
            let mut attempt = match g
                .guard
                .engine
                .begin_attempt(g.parsoid_backend, root, try_no - 1)
                .map(Attempt::into_owned)
            {
                Ok(a) => a,
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.job_done(key, false);
                }
            };
            attempt.connected();
            timeout = duration_ns(attempt.timeout());
            // The parse's budget is a child of the job's, no longer than this attempt may take.
            let child = root.child_with(
                Some(g.parse),
                &Overrides::new().wall_time(attempt.timeout()),
            );
            match child {
                Ok(child) => header = Some(child.to_header()),
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.job_done(key, false);
                }
            }
            job.attempt = Some(attempt);
        }
        job.waiting = Some(try_no);
        self.rec.generated += 1;
        self.at(timeout, Ev::ParseTimeout(key, try_no));
        self.parse_start(key, try_no, images, header);
    }

    /// Parsoid receives a parse request (guarded: through its door, under the header's budget).
    fn parse_start(&mut self, job: Key, job_try: u32, images: u64, header: Option<String>) {
        let mut admitted = None;
        if let Some(g) = &self.g {
            let prop = header.as_deref().and_then(|h| Propagation::decode(h).ok());
            let Some(prop) = prop else {
                self.rec.count("bad_headers", 1);
                return self.job_response(job, job_try, Status::Failed);
            };
            let overrides = prop.overrides(&g.guard.engine);
            let id = prop
                .request_id()
                .unwrap_or_else(|| RequestId::from_u64(job.pack()));
            let request = AdmitRequest::new(g.parse, id)
                .priority(prop.priority().unwrap_or(Priority::Background))
                .overrides(&overrides);
            match g.guard.engine.try_admit(&request) {
                Ok(a) => admitted = Some(a),
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.job_response(job, job_try, Status::Unavailable(v.retry_after()));
                }
            }
        }
        let parse = self.parses.insert(Parse {
            job,
            job_try,
            images,
            next_image: 0,
            rendered: 0,
            cut: false,
            in_flight: 0,
            stopped: false,
            answered: false,
            failed: false,
            admitted,
        });
        self.fill(parse);
    }

    /// Sends batches until the parse has as many in flight as it may.
    fn fill(&mut self, key: Key) {
        loop {
            let Some(parse) = self.parses.get_mut(key) else {
                return;
            };
            if parse.stopped
                || parse.in_flight >= PARSOID_PARALLEL
                || parse.next_image >= parse.images
            {
                break;
            }
            if let Some(budget) = parse.admitted.as_ref().map(|a| a.budget()) {
                if let Err(v) = budget.check() {
                    refused(&mut self.rec, &v);
                    parse.stopped = true;
                    parse.cut = true;
                    break;
                }
            }
            let images = IMAGES_PER_CALL.min(parse.images - parse.next_image);
            parse.next_image += images;
            parse.in_flight += 1;
            let call = self.calls.insert(Call {
                parse: key,
                images,
                tries: 0,
                waiting: None,
                attempt: None,
                child: None,
            });
            self.call_send(call);
        }
        self.maybe_answer(key);
    }

    /// Parsoid sends one batch (again). Guarded: an attempt at the API backend, a child budget whose
    /// header allows the batch's lookups and no more time than the attempt, and the lookups charged to
    /// the parse before the request leaves.
    pub(super) fn call_send(&mut self, key: Key) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        call.tries += 1;
        let (try_no, images, parse_key) = (call.tries, call.images, call.parse);
        let mut timeout = PARSOID_API_TIMEOUT;
        let mut header = None;
        if let Some(g) = &self.g {
            let Some(budget) = self
                .parses
                .get(parse_key)
                .and_then(|p| p.admitted.as_ref())
                .map(|a| a.budget())
            else {
                return;
            };
            let mut attempt = match g
                .guard
                .engine
                .begin_attempt(g.api_backend, budget, try_no - 1)
                .map(Attempt::into_owned)
            {
                Ok(a) => a,
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.batch_done(key, Batch::Failed);
                }
            };
            attempt.connected();
            let overrides = Overrides::new()
                .limit(g.lookups, images)
                .wall_time(attempt.timeout());
            let child = match budget.child_with(Some(g.api), &overrides) {
                Ok(c) => c,
                Err(v) => {
                    refused(&mut self.rec, &v);
                    return self.batch_done(key, Batch::Failed);
                }
            };
            let value = child.to_header();
            if let Err(v) = budget.try_charge(g.lookups, images) {
                // The parse's allowance is spent: this batch and the rest become placeholders.
                refused(&mut self.rec, &v);
                drop(attempt);
                return self.batch_done(key, Batch::Skipped);
            }
            timeout = duration_ns(attempt.timeout());
            header = Some(value);
            call.attempt = Some(attempt);
            call.child = Some(child);
        }
        call.waiting = Some(try_no);
        self.at(timeout, Ev::CallTimeout(key, try_no));
        self.gallery_request(key, try_no, images, timeout, header);
    }

    /// Parsoid stops waiting for try `try_no` of a batch; the API request itself runs on.
    pub(super) fn call_timeout(&mut self, key: Key, try_no: u32) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.waiting != Some(try_no) {
            return;
        }
        self.rec.error(self.now);
        self.call_failed(key, AttemptOutcome::Timeout);
    }

    /// The API answered try `try_no` of a batch (in time), having looked up `looked_up` of its images.
    pub(super) fn call_response(&mut self, key: Key, try_no: u32, status: Status, looked_up: u64) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.waiting != Some(try_no) {
            return;
        }
        if status == Status::Ok {
            call.waiting = None;
            if let Some(attempt) = call.attempt.take() {
                attempt.finish(AttemptOutcome::Success);
            }
            return self.batch_done(key, Batch::Done { looked_up });
        }
        self.call_failed(key, outcome(status));
    }

    /// A try failed: retry (unguarded: at once, up to 8 times; guarded: up to 8 times, if the engine
    /// says so, after its backoff) or give the batch up.
    fn call_failed(&mut self, key: Key, outcome: AttemptOutcome) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        call.waiting = None;
        call.child = None;
        let tries = call.tries;
        let Some(g) = &self.g else {
            if tries <= PARSOID_RETRIES {
                self.at(0, Ev::CallSend(key));
            } else {
                self.batch_done(key, Batch::Failed);
            }
            return;
        };
        if let Some(attempt) = call.attempt.take() {
            attempt.finish(outcome);
        }
        // Here costguard only takes retries away: Parsoid's own count still holds.
        if tries > PARSOID_RETRIES {
            return self.batch_done(key, Batch::Failed);
        }
        let Some(budget) = self
            .parses
            .get(call.parse)
            .and_then(|p| p.admitted.as_ref())
            .map(|a| a.budget())
        else {
            return;
        };
        match g.guard.engine.retry(g.api_backend, budget, outcome, tries) {
            RetryDecision::After(wait) => self.at(duration_ns(wait), Ev::CallSend(key)),
            RetryDecision::Stop(v) => {
                refused(&mut self.rec, &v);
                self.batch_done(key, Batch::Failed);
            }
        }
    }

    fn batch_done(&mut self, key: Key, how: Batch) {
        let Some(call) = self.calls.remove(key) else {
            return;
        };
        if call.tries > PARSOID_RETRIES.saturating_add(1) {
            // Never, with or without costguard: here it only takes retries away.
            self.rec.count("tries_past_a_tiers_own_retries", 1);
        }
        let Some(parse) = self.parses.get_mut(call.parse) else {
            return;
        };
        parse.in_flight = parse.in_flight.saturating_sub(1);
        match how {
            Batch::Done { looked_up } => {
                // The images the API did not look up render as placeholders, as the rest of a
                // parse cut short does.
                let looked_up = looked_up.min(call.images);
                parse.rendered += looked_up;
                if looked_up < call.images {
                    parse.cut = true;
                }
            }
            Batch::Skipped => {
                parse.stopped = true;
                parse.cut = true;
            }
            Batch::Failed => {
                parse.stopped = true;
                parse.failed = true;
            }
        }
        let parse_key = call.parse;
        self.fill(parse_key);
    }

    /// Answers the outer tier once the parse has failed or every batch is done, and forgets the parse
    /// once nothing of it is in flight.
    fn maybe_answer(&mut self, key: Key) {
        let Some(parse) = self.parses.get_mut(key) else {
            return;
        };
        let finished = parse.in_flight == 0 && (parse.stopped || parse.next_image >= parse.images);
        if !parse.answered && (parse.failed || finished) {
            parse.answered = true;
            let (job, job_try) = (parse.job, parse.job_try);
            // What the parse used comes back with its answer, in the `costguard-usage` response
            // header, to be charged to the job's budget: the request tree's allowances are the
            // tree's, not each attempt's.
            let usage = match (&self.g, &parse.admitted) {
                (Some(_), Some(a)) => Some(a.budget().usage().encode()),
                _ => None,
            };
            let status = if parse.failed {
                Status::Failed
            } else {
                Status::Ok
            };
            // A parse its budget cut short still answers (with placeholders for the images it did
            // not look up): counted apart from the parses that rendered every image.
            self.rec.count(
                if parse.failed {
                    "parses_failed"
                } else if parse.cut {
                    "parses_cut_short"
                } else {
                    "parses_completed"
                },
                1,
            );
            if !parse.failed {
                self.rec.count("images_rendered", parse.rendered);
                self.rec.count(
                    "images_as_placeholders",
                    parse.images.saturating_sub(parse.rendered),
                );
            }
            if let Some(usage) = usage {
                self.charge_back(job, job_try, &usage);
            }
            self.job_response(job, job_try, status);
        }
        let Some(parse) = self.parses.get(key) else {
            return;
        };
        if parse.in_flight == 0 && parse.answered {
            if let Some(mut parse) = self.parses.remove(key) {
                if let Some(admitted) = parse.admitted.take() {
                    admitted.finish(if parse.failed {
                        Outcome::Overload
                    } else {
                        Outcome::Success
                    });
                }
            }
        }
    }

    /// Charges the usage an answer of parse attempt `try_no` reports (its `costguard-usage` header
    /// value) to its job's budget, where the next attempt's budget is carved from. Usage that does
    /// not fit uses the tree's allowances up and cancels the job's budget: no further attempt
    /// starts. (An attempt the outer tier gave up on reports nothing: in this model, only answers
    /// carry their usage back.)
    fn charge_back(&mut self, key: Key, try_no: u32, header: &str) {
        let (Some(_), Some(job)) = (&self.g, self.jobs.get_mut(key)) else {
            return;
        };
        if job.waiting != Some(try_no) {
            return;
        }
        let Ok(usage) = Usage::decode(header) else {
            self.rec.count("bad_headers", 1);
            return;
        };
        let lookups = usage.used(super::model::LOOKUPS).unwrap_or(0);
        job.lookups_reported = job.lookups_reported.saturating_add(lookups);
        if let Some(root) = job.admitted.as_ref().map(|a| a.budget()) {
            if let Err(v) = root.charge_usage(&usage) {
                refused(&mut self.rec, &v);
            }
        }
    }

    /// The outer tier stops waiting for parse attempt `try_no`.
    pub(super) fn parse_timeout(&mut self, key: Key, try_no: u32) {
        let waiting = self.jobs.get(key).and_then(|j| j.waiting);
        if waiting == Some(try_no) {
            self.rec.error(self.now);
            self.parse_failed(key, AttemptOutcome::Timeout);
        }
    }

    /// Parsoid answered parse attempt `try_no`.
    fn job_response(&mut self, key: Key, try_no: u32, status: Status) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        if job.waiting != Some(try_no) {
            return;
        }
        if status == Status::Ok {
            job.waiting = None;
            if let Some(attempt) = job.attempt.take() {
                attempt.finish(AttemptOutcome::Success);
            }
            return self.job_done(key, true);
        }
        self.rec.error(self.now);
        self.parse_failed(key, outcome(status));
    }

    fn parse_failed(&mut self, key: Key, outcome: AttemptOutcome) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        job.waiting = None;
        let tries = job.tries;
        let Some(g) = &self.g else {
            if tries <= job.retries {
                self.at(0, Ev::ParseSend(key));
            } else {
                self.job_done(key, false);
            }
            return;
        };
        if let Some(attempt) = job.attempt.take() {
            attempt.finish(outcome);
        }
        // Here costguard only takes retries away: the tier's own count still holds (none for the
        // job runner).
        if tries > job.retries {
            return self.job_done(key, false);
        }
        let Some(root) = job.admitted.as_ref().map(|a| a.budget()) else {
            return;
        };
        match g
            .guard
            .engine
            .retry(g.parsoid_backend, root, outcome, tries)
        {
            RetryDecision::After(wait) => self.at(duration_ns(wait), Ev::ParseSend(key)),
            RetryDecision::Stop(v) => {
                refused(&mut self.rec, &v);
                self.job_done(key, false);
            }
        }
    }

    fn job_done(&mut self, key: Key, ok: bool) {
        if let Some(mut job) = self.jobs.remove(key) {
            if job.tries > 1 {
                self.rec.count("jobs_retried", 1);
            }
            if job.tries > job.retries.saturating_add(1) {
                self.rec.count("tries_past_a_tiers_own_retries", 1);
            }
            if let (Some(g), Some(admitted)) = (&self.g, &job.admitted) {
                // Measured apart from the budget that enforces it: what the job's answered parses
                // looked up, against the one allowance the whole tree has.
                let allowance = admitted.budget().limit(g.lookups).unwrap_or(u64::MAX);
                if job.lookups_reported > allowance {
                    self.rec.count("jobs_past_their_lookup_allowance", 1);
                }
            }
            if let Some(admitted) = job.admitted.take() {
                admitted.finish(if ok {
                    Outcome::Success
                } else {
                    Outcome::Overload
                });
            }
            self.rec
                .count(if ok { "jobs_completed" } else { "jobs_failed" }, 1);
        }
    }
}

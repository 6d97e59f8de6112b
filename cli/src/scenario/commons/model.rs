//! The state of a commons-2015 run and its event loop.

use super::*;
use crate::scenario::Run;
use crate::sim::database::{Database, JobId};
use crate::sim::events::Queue;
use crate::sim::guard::{named, Guard};
use crate::sim::metrics::{Recorder, Totals};
use crate::sim::rng::Rng;
use crate::sim::slab::{Key, Slab};
use crate::sim::threads::{Pool, ThreadId};
use crate::RunReport;
use costguard::clock::ManualClock;
use costguard::{Admitted, Attempt, Backend, Budget, Class, Counter};
use std::collections::VecDeque;
use std::time::Duration;

/// What happens.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ev {
    /// The spider edits gallery page `page`.
    Edit { page: u64 },
    /// A parse job leaves the job queue.
    JobStart(Key),
    /// The outer tier sends (or sends again) its parse request.
    ParseSend(Key),
    /// The outer tier's wait for parse attempt `try_no` ends.
    ParseTimeout(Key, u32),
    /// Parsoid sends (or sends again) one batch of images to the API.
    CallSend(Key),
    /// Parsoid's wait for try `try_no` of a batch ends.
    CallTimeout(Key, u32),
    /// An API request reaches the API tier.
    ApiArrive(Key),
    /// An API request's work outside the database is done.
    CpuDone(Key),
    /// Database jobs may have finished.
    DbTick,
    /// An API request's database attempt timed out (guarded).
    DbTimeout(Key),
    /// An ordinary user's API request arrives.
    Ordinary,
    /// Once a second: sample the threads.
    Sample,
}

/// An API response, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// 200.
    Ok,
    /// 503, with a Retry-After when the tier gave one.
    Unavailable(Option<Duration>),
    /// 500.
    Failed,
    /// 504: this request's own dependency timed out.
    GatewayTimeout,
}

/// Who sent an API request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Origin {
    Ordinary,
    Call { call: Key, try_no: u32 },
}

/// An API request at the API tier.
pub(super) struct ApiReq {
    pub origin: Origin,
    pub arrival: u64,
    /// When its caller stops waiting.
    pub caller_deadline: u64,
    pub queries_left: u64,
    pub per_query: u64,
    pub gallery: bool,
    pub thread: Option<ThreadId>,
    pub db_job: Option<JobId>,
    /// Guarded: the header its caller sent.
    pub header: Option<String>,
    pub admitted: Option<Admitted>,
    pub db_attempt: Option<Attempt<'static>>,
    /// Queries sent to the database so far. A 200 answers only once all of them ran, so for a
    /// gallery request it is how many images the answer carries metadata for.
    pub queries_done: u64,
    /// Guarded: its budget refused a query, so a 200 carries partial results.
    pub cut_short: bool,
}

/// One parse job (RESTBase's, or the job runner's).
pub(super) struct Job {
    pub images: u64,
    pub retries: u32,
    pub tries: u32,
    pub waiting: Option<u32>,
    pub admitted: Option<Admitted>,
    pub attempt: Option<Attempt<'static>>,
    pub id: u64,
    /// File lookups the answered parse attempts reported, summed over the job's attempts.
    pub lookups_reported: u64,
}

/// One parse in Parsoid.
pub(super) struct Parse {
    pub job: Key,
    pub job_try: u32,
    pub images: u64,
    pub next_image: u64,
    pub in_flight: u64,
    /// Images whose metadata came back.
    pub rendered: u64,
    pub stopped: bool,
    /// Cut short by a budget rather than failed: stopped by its own (allowance spent, deadline
    /// passed), or answered by an API request that reached its limit with part of a batch. The
    /// images it did not look up render as placeholders.
    pub cut: bool,
    pub answered: bool,
    pub failed: bool,
    pub admitted: Option<Admitted>,
}

/// One batch of images Parsoid asks the API about, with its retries.
pub(super) struct Call {
    pub parse: Key,
    pub images: u64,
    pub tries: u32,
    pub waiting: Option<u32>,
    pub attempt: Option<Attempt<'static>>,
    /// Guarded: Parsoid's child budget for this call.
    pub child: Option<Budget>,
}

/// The policy's counter of file-metadata lookups.
pub(super) const LOOKUPS: &str = "file_lookups";

/// The engine and its handles, for the guarded run.
pub(super) struct Guarded {
    pub guard: Guard,
    pub restbase: Class,
    pub parse: Class,
    pub api: Class,
    pub lookups: Counter,
    pub db_queries: Counter,
    pub parsoid_backend: Backend,
    pub api_backend: Backend,
    pub db_backend: Backend,
}

/// A run.
pub(super) struct Model<'a> {
    pub now: u64,
    pub queue: Queue<Ev>,
    pub rng: Rng,
    pub rec: Recorder,
    pub db: Database,
    pub db_tick: Option<u64>,
    pub pool: Pool,
    pub backlog: VecDeque<Key>,
    pub reqs: Slab<ApiReq>,
    pub jobs: Slab<Job>,
    pub parses: Slab<Parse>,
    pub calls: Slab<Call>,
    pub pages: Vec<u64>,
    pub g: Option<Guarded>,
    pub done: Vec<u64>,
    pub next_id: u64,
    exhausted: bool,
    free_since: Option<u64>,
    allowed: Option<f64>,
    progress: &'a mut dyn FnMut(f64),
}

impl<'a> Model<'a> {
    pub fn new(run: Run<'a>) -> Result<Model<'a>, crate::ReplayError> {
        let clock = ManualClock::new();
        let (g, allowed) = match run.guard {
            None => (None, None),
            Some(policy) => {
                let guard = Guard::new(policy.clone(), &clock, "", run.seed)?;
                let e = &guard.engine;
                let g = Guarded {
                    restbase: named(e.class("restbase"))?,
                    parse: named(e.class("parse"))?,
                    api: named(e.class("api"))?,
                    lookups: named(e.counter(LOOKUPS))?,
                    db_queries: named(e.counter("db_queries"))?,
                    parsoid_backend: named(e.backend("parsoid"))?,
                    api_backend: named(e.backend("api"))?,
                    db_backend: named(e.backend("db"))?,
                    guard,
                };
                (Some(g), amplification_allowed(policy))
            }
        };
        let mut rng = Rng::new(run.seed, 2015);
        let pages = (0..PAGES)
            .map(|_| rng.range(IMAGES_MIN, IMAGES_MAX))
            .collect();
        Ok(Model {
            now: 0,
            queue: Queue::default(),
            rng,
            rec: Recorder::new(DURATION, FAULT_AT, 10),
            db: Database::new(DB_SLOTS),
            db_tick: None,
            pool: Pool::new(API_THREADS),
            backlog: VecDeque::new(),
            reqs: Slab::default(),
            jobs: Slab::default(),
            parses: Slab::default(),
            calls: Slab::default(),
            pages,
            g,
            done: Vec::new(),
            next_id: 0,
            exhausted: false,
            free_since: None,
            allowed,
            progress: run.progress,
        })
    }

    pub fn at(&mut self, delay: u64, ev: Ev) {
        self.queue.push(self.now.saturating_add(delay), ev);
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn run(mut self) -> RunReport {
        for pass in 0..PASSES {
            for page in 0..PAGES {
                let at = FAULT_AT + pass * PASS_GAP + page * EDIT_GAP;
                if at < DURATION {
                    self.queue.push(at, Ev::Edit { page });
                }
            }
        }
        self.queue.push(0, Ev::Ordinary);
        self.queue.push(0, Ev::Sample);
        let end = DURATION + ORDINARY_TIMEOUT;
        let mut steps = 0u64;
        while let Some((t, ev)) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            if let Some(g) = &self.g {
                g.guard.set_time(t);
            }
            self.handle(ev);
            if let Some(g) = &self.g {
                g.guard.drain(&mut self.rec, true);
            }
            steps += 1;
            if steps % 65_536 == 0 {
                (self.progress)(t as f64 / end as f64);
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Edit { page } => self.edit(page),
            Ev::JobStart(job) => self.job_start(job),
            Ev::ParseSend(job) => self.parse_send(job),
            Ev::ParseTimeout(job, try_no) => self.parse_timeout(job, try_no),
            Ev::CallSend(call) => self.call_send(call),
            Ev::CallTimeout(call, try_no) => self.call_timeout(call, try_no),
            Ev::ApiArrive(req) => self.api_arrive(req),
            Ev::CpuDone(req) => self.cpu_done(req),
            Ev::DbTick => self.db_tick(),
            Ev::DbTimeout(req) => self.db_timeout(req),
            Ev::Ordinary => self.ordinary(),
            Ev::Sample => self.sample(),
        }
    }

    fn edit(&mut self, page: u64) {
        if page == 0 {
            let pass = self.rec.originals / PAGES + 1;
            self.rec.event(
                self.now,
                format!("spider pass {pass} of {PASSES} over {PAGES} gallery pages begins"),
            );
        }
        self.rec.originals += 1;
        let images = self.pages.get(page as usize).copied().unwrap_or(IMAGES_MIN);
        for k in 0..PARSE_JOBS_PER_EDIT {
            let id = self.id();
            let job = self.jobs.insert(Job {
                images,
                retries: if k == 0 {
                    RESTBASE_RETRIES
                } else {
                    JOB_RUNNER_RETRIES
                },
                tries: 0,
                waiting: None,
                admitted: None,
                attempt: None,
                id,
                lookups_reported: 0,
            });
            let delay = self.rng.range(0, JOB_DELAY_MAX);
            self.at(delay, Ev::JobStart(job));
        }
    }

    fn ordinary(&mut self) {
        if self.now >= DURATION {
            return;
        }
        let req = self.reqs.insert(ApiReq {
            origin: Origin::Ordinary,
            arrival: self.now,
            caller_deadline: self.now + ORDINARY_TIMEOUT,
            queries_left: ORDINARY_QUERIES,
            per_query: ORDINARY_QUERY,
            gallery: false,
            thread: None,
            db_job: None,
            header: None,
            admitted: None,
            db_attempt: None,
            queries_done: 0,
            cut_short: false,
        });
        self.api_arrive(req);
        let gap = self.rng.exponential(SECOND / ORDINARY_RATE);
        self.at(gap, Ev::Ordinary);
    }

    fn sample(&mut self) {
        let stuck = self.pool.stuck(self.now);
        self.rec.sample(self.now, self.pool.busy(), stuck);
        // Each wave: the pool running out, and threads free again for a whole minute.
        if self.pool.exhausted() {
            self.free_since = None;
            if !self.exhausted {
                self.exhausted = true;
                self.rec
                    .event(self.now, format!("all {API_THREADS} API threads busy"));
            }
        } else if self.exhausted {
            let since = *self.free_since.get_or_insert(self.now);
            if self.now - since >= MINUTE {
                self.exhausted = false;
                self.rec.event(since, "API threads free again");
            }
        }
        if self.now < DURATION {
            self.at(SECOND, Ev::Sample);
        }
    }

    /// Tells the database's next completion to the event queue.
    pub fn db_changed(&mut self) {
        if let Some(t) = self.db.next_completion() {
            if self.db_tick.is_none_or(|s| t < s) {
                self.db_tick = Some(t);
                self.queue.push(t.max(self.now), Ev::DbTick);
            }
        }
    }

    fn db_tick(&mut self) {
        if self.db_tick.is_some_and(|s| s <= self.now) {
            self.db_tick = None;
        }
        let mut done = std::mem::take(&mut self.done);
        self.db.complete(self.now, &mut done);
        for owner in done.drain(..) {
            self.db_done(owner);
        }
        self.done = done;
        self.db_changed();
    }

    fn finish(mut self) -> RunReport {
        // Ordinary requests never answered: their callers gave up.
        let pending: Vec<(u64, u64)> = self
            .reqs
            .values()
            .filter(|r| matches!(r.origin, Origin::Ordinary))
            .map(|r| (r.arrival, r.caller_deadline))
            .collect();
        for (arrival, deadline) in pending {
            self.rec.unaffected(arrival, false);
            self.rec.error(deadline);
        }
        self.rec.event(
            0,
            format!(
                "{} edits to galleries of {}-{} images",
                self.rec.originals, IMAGES_MIN, IMAGES_MAX
            ),
        );
        let totals = Totals {
            threads: API_THREADS,
            max_threads_busy: self.pool.max_busy(),
            db_queries: self.db.served(),
            peak_db_queue: self.db.peak_queue(),
            amplification_allowed: self.allowed,
        };
        (self.progress)(1.0);
        self.rec.finish(totals)
    }
}

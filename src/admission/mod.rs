//! Admission control: the door every request passes before it may spend anything.
//!
//! In 2015 nothing capped how much concurrent work the API tier took on: threads waited on the
//! database until they starved, and the overload came back in waves as callers retried. Admission
//! decides, before the work starts and in nanoseconds, whether a request may run now, may wait
//! briefly, or is refused with a precise [`Verdict`] and an honest retry hint, so that the work that
//! is admitted completes.
//!
//! [`Engine::try_admit`] checks, in this order, stopping at the first refusal and undoing what it took:
//!
//! 1. **cost**: a declared estimate larger than the class's budget limit, or than a pool it draws from,
//!    can never fit (`CannotFit`, never retry);
//! 2. **concurrency** (a bulkhead per class): the class's limit, static or adaptive
//!    ([`adaptive`](crate::policy::Algorithm)), of which each priority may fill only its headroom share,
//!    so sheddable and background work is refused first (`Shed`) and critical work keeps running;
//! 3. **pools**: the estimate is held in each shared pool of cost in flight the class draws from;
//! 4. the request's **budget** is checked (a class or header that leaves no wall time refuses); it
//!    starts once the last step admits;
//! 5. **per-key limits**: at most so many requests in flight per key, and a cost-weighted rate (GCRA),
//!    in a table of fixed size whatever the number of keys. Last, because a rate allowance once spent
//!    cannot be given back: nothing refuses after it.
//!
//! The result is an [`Admitted`] grant that holds the permit, the key's share, the pool amounts and
//! the budget, and gives them all back exactly once when dropped, by return or by panic.
//! [`Engine::admit`] (blocking) and [`Engine::admit_async`] (a runtime-agnostic `Future`) may wait in
//! the class's queue instead of being refused (see [`queue`](crate::policy::QueuePolicy)). A class in
//! **shadow** mode evaluates everything and records what would have been refused, but admits. Shadow
//! mode covers the admission settings (concurrency and headroom, pools, per-key caps and rates, the
//! queue); the budget stays enforced: an estimate larger than the class's own limit, a key too long to
//! be a key, or a caller's deadline that leaves no time are refused even in shadow mode, since the
//! request could only fail later, with its work half done.

mod adaptive;
mod gcra;
mod keys;
mod limiter;
mod pool;
mod queue;
mod stats;
mod wait;

pub use stats::{AdmissionStats, ClassStats, Counts, PoolStats};
pub use wait::AdmitFuture;

pub(crate) use keys::{KeyLimits, KeyTable};
pub(crate) use pool::Pool;
use queue::Shares;

use crate::budget::{pool as budget_pool, Budget, Overrides, Settings, Start};
use crate::clock::{Clock, Timestamp};
use crate::engine::snapshot::{ClassRules, Snapshot};
use crate::handle::{Class, Counter};
use crate::policy::{AdaptiveLimit, Permille, QueuePolicy, MAX_DIMENSIONS};
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::verdict::{Reason, Retry, Unit};
use crate::{Engine, Priority, RequestId, Verdict};
use adaptive::Sampler;
use gcra::Nonconforming;
use keys::KeyRefusal;
use limiter::Limiter;
use queue::WaitQueue;
use stats::Stats;
use std::fmt;
use std::time::Duration;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// What to admit: the class, the request, and what is known about it up front.
///
/// ```
/// use costguard::{AdmitRequest, Engine, Policy, Priority, RequestId};
///
/// let policy = Policy::builder()
///     .counter("db_queries")
///     .class("api", |c| c.limit("db_queries", 100).admission(|a| a.concurrency(2)))
///     .build()
///     .unwrap();
/// let engine = Engine::new(policy).unwrap();
/// let api = engine.class("api").unwrap();
/// let db = engine.counter("db_queries").unwrap();
///
/// let request = AdmitRequest::new(api, RequestId::new("r1").unwrap())
///     .priority(Priority::Sheddable)
///     .key(b"user:42")
///     .estimate(db, 10);
/// let admitted = engine.try_admit(&request).unwrap();
/// admitted.budget().try_charge(db, 3).unwrap();
/// drop(admitted); // permit, key share and budget are released here
/// ```
#[derive(Clone, Copy)]
pub struct AdmitRequest<'a> {
    class: Class,
    id: RequestId,
    priority: Option<Priority>,
    key: Option<&'a [u8]>,
    estimates: [u64; MAX_DIMENSIONS],
    /// Whether any estimate is non-zero (most requests declare none: the checks are skipped).
    estimated: bool,
    rate_cost: u64,
    overrides: Option<&'a Overrides>,
}

impl<'a> AdmitRequest<'a> {
    /// A request of `class` with id `id`, at the class's default priority, with no key or estimate.
    #[must_use]
    pub fn new(class: Class, id: RequestId) -> Self {
        AdmitRequest {
            class,
            id,
            priority: None,
            key: None,
            estimates: [0; MAX_DIMENSIONS],
            estimated: false,
            rate_cost: 1,
            overrides: None,
        }
    }

    /// The request's priority (the class's default otherwise).
    #[must_use = "returns the changed request; the original is left as it was"]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The key per-key limits apply to (user, IP, tenant): any bytes (`&str`, `&[u8]`, `&String`,
    /// `&Vec<u8>`, a byte string literal), at most [`MAX_KEY_LEN`] of them.
    #[must_use = "returns the changed request; the original is left as it was"]
    pub fn key<K: AsRef<[u8]> + ?Sized>(mut self, key: &'a K) -> Self {
        self.key = Some(key.as_ref());
        self
    }

    /// A declared estimate of a counter: refused up front if it can never fit the class's budget, and
    /// held in the pools over that counter while the request runs.
    #[must_use = "returns the changed request; the original is left as it was"]
    pub fn estimate(mut self, counter: Counter, amount: u64) -> Self {
        if let Some(e) = self.estimates.get_mut(counter.index()) {
            *e = amount;
            self.estimated |= amount > 0;
        }
        self
    }

    /// The cost charged to the key's rate limit (default 1). A cost of 0 is free: it passes the
    /// rate limit whatever the key has left, and spends nothing (a cost computed from a size that
    /// can be 0 should be raised to 1 if every request must count). A cost larger than the key's
    /// burst is refused at once ([`Reason::CannotFit`], never retry).
    #[must_use = "returns the changed request; the original is left as it was"]
    pub fn rate_cost(mut self, cost: u64) -> Self {
        self.rate_cost = cost;
        self
    }

    /// Tighter budget limits for this request (from a propagation header, for instance). A priority in
    /// them can only lower the request's: admission sheds the request at the lower one, so work a
    /// caller marked sheddable is shed first at every hop. For a request that arrived with a header:
    /// `AdmitRequest::new(class, propagation.request_id().unwrap_or(own_id))` with
    /// `.overrides(&propagation.overrides(&engine))`.
    #[must_use = "returns the changed request; the original is left as it was"]
    pub fn overrides(mut self, overrides: &'a Overrides) -> Self {
        self.overrides = Some(overrides);
        self
    }

    /// The priority admission judges the request at: its own (or the class's), lowered by the
    /// overrides' if they carry one.
    pub(crate) fn effective_priority(&self, class: Priority) -> Priority {
        let own = self.priority.unwrap_or(class);
        match self.overrides.and_then(|o| o.priority) {
            Some(p) => own.least_important(p),
            None => own,
        }
    }

    /// The request id its verdicts carry: the overrides' if they carry one (as its budget's
    /// does), its own otherwise.
    pub(crate) fn effective_id(&self) -> RequestId {
        self.overrides.and_then(|o| o.request_id).unwrap_or(self.id)
    }
}

impl fmt::Debug for AdmitRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmitRequest")
            .field("class", &self.class)
            .field("id", &self.id)
            .field("priority", &self.priority)
            .field("key_len", &self.key.map(<[u8]>::len))
            .field("rate_cost", &self.rate_cost)
            .finish_non_exhaustive()
    }
}

/// How an admitted request ended, for adaptive limits and Retry-After estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed because of the request itself (a 4xx): says nothing about capacity; not sampled.
    ClientError,
    /// It failed in a way that suggests overload (a 5xx, a timeout): sampled as overload.
    Overload,
    /// It was cancelled before it finished: not sampled.
    Cancelled,
}

/// A refusal event, as seen by the hook set with
/// [`EngineBuilder::on_refusal`](crate::EngineBuilder::on_refusal).
#[derive(Debug)]
#[non_exhaustive]
pub struct RefusalEvent<'a> {
    /// The verdict (with the request id).
    pub verdict: &'a Verdict,
    /// True when the class is in shadow mode: the request was admitted anyway.
    pub shadow: bool,
}

/// The hook type.
pub(crate) type RefusalHook = Arc<dyn Fn(&RefusalEvent<'_>) + Send + Sync>;

/// Persistent admission state of one class: survives reloads, so in-flight counts stay true.
///
/// Hot state is pointer-free atomic words (the limiter, the counters), ready to live in shared memory.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) limiter: Limiter,
    pub(crate) queue: WaitQueue,
    pub(crate) stats: Stats,
    pub(crate) sampler: Sampler,
    /// Each priority's headroom share under the current policy and whether it can ever hold a
    /// permit ([`Shares`]), in one word of four 16-bit lanes (the share, and bit 15 for "never"):
    /// a reload sets it with the limit, and waiters already queued are dispatched by it.
    shares: AtomicU64,
    /// Smoothed latency of finished requests, ns; 0 before the first.
    latency_ns: AtomicU64,
    pub(crate) name: Arc<str>,
    names: [Arc<str>; 3],
}

/// The "never" bit of a lane of [`Gate::shares`] (a share is at most 1000, under bit 10).
const NEVER: u64 = 1 << 15;
/// The "shadow" bit, in the first lane only.
const SHADOW: u64 = 1 << 14;
const SHARE: u64 = (1 << 14) - 1;

fn pack_shares(shares: Shares) -> u64 {
    let lanes = (0..4).fold(0, |word, i| {
        let never = if shares.never[i] { NEVER } else { 0 };
        word | (u64::from(shares.of_limit[i]) | never) << (16 * i)
    });
    if shares.shadow {
        lanes | SHADOW
    } else {
        lanes
    }
}

fn unpack_shares(word: u64) -> Shares {
    let lane = |i: usize| (word >> (16 * i)) & 0xffff;
    Shares {
        of_limit: std::array::from_fn(|i| (lane(i) & SHARE) as Permille),
        never: std::array::from_fn(|i| lane(i) & NEVER != 0),
        shadow: word & SHADOW != 0,
    }
}

const CONCURRENCY: usize = 0;
const KEY_CONCURRENCY: usize = 1;
const RATE: usize = 2;

impl Gate {
    pub(crate) fn new(class: &Arc<str>, limit: u32) -> Self {
        Gate {
            limiter: Limiter::new(limit),
            queue: WaitQueue::default(),
            stats: Stats::default(),
            sampler: Sampler::new(),
            shares: AtomicU64::new(pack_shares(Shares {
                of_limit: [1000; 4],
                never: [false; 4],
                shadow: false,
            })),
            latency_ns: AtomicU64::new(0),
            name: Arc::clone(class),
            names: [
                Arc::from("concurrency"),
                Arc::from("key_concurrency"),
                Arc::from("rate"),
            ],
        }
    }

    /// Sets each priority's share of the limit, by a reload, once the limit is set: `highest` is
    /// the largest limit the class can have under the new policy (its static limit, or its
    /// adaptive maximum), where a share that rounds down to nothing never holds a permit. In
    /// `shadow` mode, where a refusal admits all the same, waiters are admitted as first tries are.
    pub(crate) fn set_shares(&self, of_limit: [Permille; 4], highest: u32, shadow: bool) {
        let never = of_limit.map(|share| !shadow && limiter::allowed(highest, share) == 0);
        let word = pack_shares(Shares {
            of_limit,
            never,
            shadow,
        });
        self.shares.store(word, Ordering::Release);
    }

    /// The share of the limit `priority` may fill under the current policy.
    pub(crate) fn share(&self, priority: Priority) -> Permille {
        self.shares().of_limit[priority as usize]
    }

    pub(crate) fn shares(&self) -> Shares {
        unpack_shares(self.shares.load(Ordering::Acquire))
    }

    /// Hands permits that came free to the class's waiters, each within its priority's current
    /// share, and expires the waiters whose time is up (see [`WaitQueue::dispatch`]).
    pub(crate) fn dispatch(&self, policy: Option<&QueuePolicy>, now: u64) {
        self.queue
            .dispatch(&self.limiter, self.shares(), policy, Some(now));
    }

    /// [`dispatch`](Self::dispatch) for a permit given back while the thread unwinds (a handler's
    /// panic, perhaps the clock's own): a panic of the clock is caught, as a second one escaping
    /// would abort the process. Without a reading the permit goes to the next waiter as if no time
    /// had passed (none is expired, CoDel is not told) rather than to nobody; a waiter whose wait
    /// was in fact over is admitted all the same, unless its request's own deadline has passed.
    pub(crate) fn dispatch_unwinding(&self, clock: &dyn Clock, policy: Option<&QueuePolicy>) {
        match caught_now(clock) {
            Ok(now) => self.dispatch(policy, now.as_nanos()),
            Err(_) => self.dispatch_without_time(),
        }
    }

    /// [`dispatch`](Self::dispatch) when the clock could not be read: as if no time had passed.
    pub(crate) fn dispatch_without_time(&self) {
        self.queue
            .dispatch(&self.limiter, self.shares(), None, None);
    }

    /// A hint for when a permit may be free: about one mean latency divided among the requests in
    /// flight, for each request ahead in the queue.
    fn retry_hint(&self) -> Retry {
        self.drain_hint(1)
    }

    /// A hint for when `completions` requests in flight, and then those waiting ahead in the
    /// queue, have finished: the mean latency divided among the requests in flight, for each.
    fn drain_hint(&self, completions: u32) -> Retry {
        let latency = self.latency_ns.load(Ordering::Relaxed);
        if latency == 0 {
            return Retry::Later;
        }
        let in_flight = u64::from(self.limiter.in_flight().max(1));
        let ahead = u64::from(self.queue.len()) + u64::from(completions.max(1));
        let nanos = (latency / in_flight).saturating_mul(ahead).max(1_000_000);
        Retry::After(Duration::from_nanos(nanos))
    }

    fn record_latency(&self, latency: u64) {
        let old = self.latency_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            latency
        } else {
            old - old / 8 + latency / 8
        };
        self.latency_ns.store(new, Ordering::Relaxed);
    }
}

/// A pool a class draws from, with the dimension whose estimate it holds.
#[derive(Debug)]
pub(crate) struct PoolRef {
    pub(crate) name: Arc<str>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) dim: usize,
    pub(crate) unit: Unit,
}

/// The per-key table of a class and the limits of one key.
#[derive(Debug)]
pub(crate) struct KeyRef {
    pub(crate) table: Arc<KeyTable>,
    pub(crate) limits: KeyLimits,
}

/// A class's admission settings compiled into one policy snapshot.
#[derive(Debug)]
pub(crate) struct ClassAdmission {
    pub(crate) gate: Arc<Gate>,
    pub(crate) headroom: [Permille; 4],
    pub(crate) queue: Option<QueuePolicy>,
    pub(crate) shadow: bool,
    pub(crate) pools: Vec<PoolRef>,
    pub(crate) keys: Option<KeyRef>,
    pub(crate) adaptive: Option<AdaptiveLimit>,
}

/// The most pools one class draws from (sized into every grant).
const POOLS: usize = crate::policy::MAX_POOLS_PER_CLASS;

/// An admitted request: its permit, its key's share, its pool amounts and its budget, released
/// together, exactly once, when dropped.
#[must_use = "the request is admitted only while the grant lives"]
pub struct Admitted {
    budget: Budget,
    class: Class,
    permit: bool,
    key_slot: Option<u32>,
    pools: [u64; POOLS],
    start: Timestamp,
    outcome: Option<Outcome>,
}

impl Admitted {
    /// The request's budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Records how the request ended (for adaptive limits) and releases everything.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Records how the request ended, to be applied when the grant is dropped.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    fn admission(&self) -> Option<&ClassAdmission> {
        self.budget
            .node()
            .snapshot
            .class(self.class)
            .and_then(|r| r.admission.as_ref())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(adm) = self.admission() else {
            return;
        };
        if let (Some(slot), Some(keys)) = (self.key_slot, &adm.keys) {
            keys.table.release(slot);
        }
        for (held, pool) in self.pools.iter().zip(&adm.pools) {
            if *held > 0 {
                pool.pool.give(*held);
            }
        }
        if !self.permit {
            return;
        }
        let gate = &adm.gate;
        gate.limiter.release();
        let clock = &self.budget.node().snapshot.clock;
        let sampled = matches!(self.outcome, Some(Outcome::Success | Outcome::Overload));
        // Read once, after the release: a waiter that became visible after this read looks at the
        // limiter once more itself, and one seen here is dispatched at a time read for it.
        let waiting = gate.queue.has_waiters();
        if !(sampled || waiting) {
            return;
        }
        if std::thread::panicking() {
            // While unwinding, a request gives no latency sample.
            if waiting {
                gate.dispatch_unwinding(&**clock, adm.queue.as_ref());
            }
            return;
        }
        let now = clock.now().as_nanos();
        if sampled {
            let latency = now.saturating_sub(self.start.as_nanos());
            gate.record_latency(latency);
            if adm.adaptive.is_some() {
                // A sample that finishes after its window closed belongs to the next window: close
                // the old one first. Count this request as in flight: it was, until a moment ago.
                let in_flight = gate.limiter.in_flight().saturating_add(1);
                gate.sampler.maybe_update(now, in_flight, &gate.limiter);
                gate.sampler
                    .record(latency, self.outcome == Some(Outcome::Overload));
            }
        }
        if waiting {
            gate.dispatch(adm.queue.as_ref(), now);
        }
    }
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("budget", &self.budget)
            .field("permit", &self.permit)
            .field("key_slot", &self.key_slot)
            .finish_non_exhaustive()
    }
}

/// Where a caller that may wait learns that a refusal could turn into an admission by waiting in
/// the class's queue. `None`: the caller never waits.
pub(crate) type WaitSlot<'s> = Option<&'s mut bool>;

impl Engine {
    /// Admits a request now or refuses it; never waits.
    pub fn try_admit(&self, request: &AdmitRequest<'_>) -> Result<Admitted, Verdict> {
        self.admit_step(request, None)
    }

    /// Admits a request, waiting in the class's queue when the class has one and is full.
    ///
    /// Blocks the calling thread for at most the queue's `max_wait` (less while CoDel sees a standing
    /// queue), and never past the request's deadline.
    ///
    /// ```
    /// use costguard::{AdmitRequest, Engine, Policy, Reason, RequestId};
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| {
    ///         c.admission(|a| a.concurrency(1).queue(8, Duration::from_millis(10)))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let api = engine.class("api").unwrap();
    ///
    /// let first = engine.admit(&AdmitRequest::new(api, RequestId::from_u64(1))).unwrap();
    /// // The class is full: the next request waits up to 10 ms for the permit, then gives up.
    /// let second = engine.admit(&AdmitRequest::new(api, RequestId::from_u64(2)));
    /// assert_eq!(second.unwrap_err().reason(), Reason::QueueTimeout);
    /// drop(first);
    /// assert!(engine.admit(&AdmitRequest::new(api, RequestId::from_u64(3))).is_ok());
    /// ```
    pub fn admit(&self, request: &AdmitRequest<'_>) -> Result<Admitted, Verdict> {
        match wait::admit_or_wait(self, request) {
            (Ok(admitted), _) => Ok(admitted),
            (Err(verdict), false) => Err(verdict),
            (Err(verdict), true) => wait::block(self, request, verdict),
        }
    }

    /// Admits a request, waiting asynchronously in the class's queue when the class has one and is
    /// full. The future works with any executor; dropping it gives back anything it was granted.
    pub fn admit_async<'e, 'a>(&'e self, request: AdmitRequest<'a>) -> AdmitFuture<'e, 'a> {
        AdmitFuture::new(self, request)
    }

    /// Expires waiters whose time is up and hands free permits to the others. Runs by itself on a
    /// timer thread while async waiters exist; call it after moving a manual clock.
    pub fn expire_waiters(&self) {
        self.dispatch_gates(false);
    }

    /// Dispatches the queue of every gate that has waiters, or of every gate (`all`: after a
    /// reload, whose new shares may refuse waiters that joined as it ran and that its read of the
    /// waiter count may miss; the queue's lock puts the two in order, see `WaitQueue::enqueue`).
    pub(crate) fn dispatch_gates(&self, all: bool) {
        let snapshot = self.snapshot();
        let now = self.clock().now().as_nanos();
        for gate in &snapshot.gates {
            if !(all || gate.queue.has_waiters()) {
                continue;
            }
            // The queue settings of this version, if its class still has them; a gate a reload
            // took away still expires its waiters and hands them what its old grants give back.
            let queue = snapshot
                .classes
                .iter()
                .flatten()
                .filter_map(|r| r.admission.as_ref())
                .find(|a| Arc::ptr_eq(&a.gate, gate))
                .and_then(|a| a.queue.as_ref());
            gate.dispatch(queue, now);
        }
    }

    /// Counters and current state of every class with admission settings, of every pool and of
    /// every backend.
    pub fn admission_stats(&self) -> AdmissionStats {
        let snapshot = self.snapshot();
        let mut out = AdmissionStats {
            backends: self.backend_stats(),
            ..AdmissionStats::default()
        };
        for class in snapshot.policy.classes() {
            let Some(id) = snapshot.class_by_name(class.name()) else {
                continue;
            };
            let Some(adm) = snapshot.class(id).and_then(|r| r.admission.as_ref()) else {
                continue;
            };
            out.classes.push(ClassStats {
                class: class.name().to_owned(),
                in_flight: adm.gate.limiter.in_flight(),
                limit: adm.gate.limiter.limit(),
                queue_len: adm.gate.queue.len(),
                shadow: adm.shadow,
                keys: adm
                    .keys
                    .as_ref()
                    .map(|k| (k.table.occupied(), k.table.capacity())),
                counts: adm.gate.stats.read(),
            });
        }
        for p in snapshot.policy.pools() {
            if let Some(pool) = snapshot.pool(p.name()) {
                out.pools.push(PoolStats {
                    pool: p.name().to_owned(),
                    in_use: pool.used(),
                    limit: pool.limit(),
                });
            }
        }
        out
    }

    /// Bytes held by the per-key table of `class` (fixed when the policy is applied).
    pub fn key_table_memory(&self, class: Class) -> Option<usize> {
        let snapshot = self.snapshot();
        let adm = snapshot.class(class)?.admission.as_ref()?;
        adm.keys.as_ref().map(|k| k.table.memory())
    }

    /// Everything before waiting: the cost checks and the concurrency permit, then the rest.
    ///
    /// The budget is started on a node this thread kept from a finished request when it has one.
    /// While that node's snapshot is still the engine's current one, it is the snapshot to decide
    /// under, and none has to be loaded.
    pub(crate) fn admit_step(
        &self,
        req: &AdmitRequest<'_>,
        wait: WaitSlot<'_>,
    ) -> Result<Admitted, Verdict> {
        let spare = match self.current_spare() {
            Ok(node) => {
                return match self.decide(&node.snapshot, req, wait) {
                    Ok(d) => {
                        let budget = Budget::begin_on(node, d.settings);
                        Ok(d.grant(budget))
                    }
                    Err(refusal) => {
                        budget_pool::keep(node);
                        Err(refusal)
                    }
                };
            }
            Err(other) => other,
        };
        let snapshot = self.snapshot_guard();
        match self.decide(&snapshot, req, wait) {
            Ok(d) => {
                let budget = Budget::begin(&snapshot, d.settings, spare);
                Ok(d.grant(budget))
            }
            Err(refusal) => {
                if let Some(node) = spare {
                    budget_pool::keep(node);
                }
                Err(refusal)
            }
        }
    }

    /// Every check of an admission under `snapshot`, in order, taking what each grants.
    ///
    /// The admitting path is written straight through; every refusal is built out of line (verdicts
    /// are large, and most requests never need one).
    #[inline(always)]
    fn decide<'r>(
        &self,
        snapshot: &Snapshot,
        req: &'r AdmitRequest<'_>,
        wait: WaitSlot<'_>,
    ) -> Result<Decision<'r>, Verdict> {
        let Some(rules) = snapshot.class(req.class) else {
            return Err(self.unknown_class(req));
        };
        let priority = req.effective_priority(rules.priority);
        let adm = rules.admission.as_ref();

        // 1. Estimates that can never fit, keys too long to be a key, and rate costs larger than
        // any burst (a burst is at least 1, the default cost).
        let long_key = req.key.is_some_and(|k| k.len() > MAX_KEY_LEN);
        let costly = req.key.is_some() && req.rate_cost > 1;
        if req.estimated || long_key || costly {
            self.check_up_front(snapshot, rules, adm, req, priority)?;
        }
        let Some(adm) = adm else {
            return self.decide_rest(rules, req, priority, false, self.clock().now(), None);
        };

        // The time, read before the permit is taken: nothing after that reads a clock, so a clock
        // that panics here strands nothing.
        let now = self.clock().now();
        // 2. Concurrency, within this priority's headroom.
        let share = adm.headroom[priority as usize];
        if let Err((in_flight, allowed)) = adm.gate.limiter.try_acquire(share) {
            self.over_limit(rules, adm, req, priority, wait, (in_flight, allowed, share))?;
        }
        self.decide_rest(rules, req, priority, true, now, None)
    }

    /// Step 1: a declared estimate larger than the budget's limit (the class's, tightened by the
    /// request's overrides, such as a caller's header) or than a pool's size, a key longer than
    /// [`MAX_KEY_LEN`], or a rate cost larger than the key's burst: refused, since no amount of
    /// waiting makes it fit.
    fn check_up_front(
        &self,
        snapshot: &Snapshot,
        rules: &ClassRules,
        adm: Option<&ClassAdmission>,
        req: &AdmitRequest<'_>,
        priority: Priority,
    ) -> Result<(), Verdict> {
        let refuse = |verdict: Verdict| self.refused(rules, adm, req, priority, verdict);
        let estimates: &[u64] = if req.estimated { &req.estimates } else { &[] };
        let tightened = req.overrides.and_then(Overrides::limits);
        for (dim, &estimate) in estimates.iter().enumerate() {
            let limit = tightened
                .and_then(|t| t.get(dim))
                .map_or(rules.limits[dim], |&t| t.min(rules.limits[dim]));
            if estimate > limit {
                let mut v =
                    Verdict::new(Reason::CannotFit, Retry::Never).with_amounts(estimate, 0, limit);
                if let Some(info) = snapshot.dims.info(dim) {
                    v = v.with_dimension(&info.name, info.unit);
                }
                return Err(refuse(v));
            }
        }
        if let Some(key) = req.key {
            if key.len() > MAX_KEY_LEN {
                let v = Verdict::new(Reason::KeyTooLong, Retry::Never).with_amounts(
                    key.len() as u64,
                    0,
                    MAX_KEY_LEN as u64,
                );
                return Err(refuse(v));
            }
        }
        let Some(adm) = adm else {
            return Ok(());
        };
        for p in adm.pools.iter().filter(|_| req.estimated) {
            let estimate = req.estimates[p.dim];
            if estimate > p.pool.limit() {
                let v = Verdict::new(Reason::CannotFit, Retry::Never)
                    .with_dimension(&p.name, p.unit)
                    .with_amounts(estimate, 0, p.pool.limit());
                if !adm.shadow {
                    return Err(refuse(v));
                }
                // Shadow mode records every admission refusal and enforces none.
                self.shadow_refused(rules, adm, req, priority, v);
            }
        }
        // A rate cost larger than the key's whole burst never fits, whatever the key's state:
        // refused here, before the class or the key could tell it to come back later.
        if let (Some(_), Some(rate)) = (req.key, adm.keys.as_ref().and_then(|k| k.limits.rate)) {
            if req.rate_cost > rate.burst {
                let v =
                    self.key_verdict(adm, KeyRefusal::Rate(Nonconforming::Never), req.rate_cost);
                if !adm.shadow {
                    return Err(refuse(v));
                }
                self.shadow_refused(rules, adm, req, priority, v);
            }
        }
        Ok(())
    }

    /// Step 2 found the class full for this priority: a refusal, a refusal the caller may turn
    /// into a wait in the queue, or in shadow mode a recorded refusal and a permit taken anyway.
    #[cold]
    #[inline(never)]
    fn over_limit(
        &self,
        rules: &ClassRules,
        adm: &ClassAdmission,
        req: &AdmitRequest<'_>,
        priority: Priority,
        wait: WaitSlot<'_>,
        (in_flight, allowed, share): (u32, u32, Permille),
    ) -> Result<(), Verdict> {
        let v = self.concurrency_verdict(adm, in_flight, allowed, share);
        // Demand beyond the limit: an adaptive limit counts as in use (see `adaptive`). Not for a
        // priority no limit could ever admit, which says nothing about this one.
        if v.retry() != Retry::Never {
            adm.gate.sampler.turned_away();
        }
        if adm.shadow {
            self.shadow_refused(rules, adm, req, priority, v);
            adm.gate.limiter.force_acquire();
            return Ok(());
        }
        // A priority the limit never lets in does not wait for it either.
        if let (Some(slot), Some(_), false) = (wait, &adm.queue, v.retry() == Retry::Never) {
            // Not a refusal yet: the caller will wait.
            *slot = true;
            return Err(v.with_class(&rules.name).with_request(req.effective_id()));
        }
        Err(self.refused(rules, Some(adm), req, priority, v))
    }

    fn concurrency_verdict(
        &self,
        adm: &ClassAdmission,
        in_flight: u32,
        allowed: u32,
        share: Permille,
    ) -> Verdict {
        let limit = adm.gate.limiter.limit();
        let reason = if allowed < limit && in_flight < limit {
            Reason::Shed
        } else {
            Reason::ConcurrencyLimit
        };
        // One more fits once enough requests in flight have finished to bring them below what this
        // priority may use; none ever fits when its share of the largest limit the class can have
        // rounds down to nothing.
        let highest = adm.adaptive.as_ref().map_or(limit, |a| a.max.max(limit));
        let retry = if limiter::allowed(highest, share) == 0 {
            Retry::Never
        } else {
            adm.gate
                .drain_hint(in_flight.saturating_add(1).saturating_sub(allowed))
        };
        Verdict::new(reason, retry)
            .with_dimension(&adm.gate.names[CONCURRENCY], Unit::Count)
            .with_amounts(1, u64::from(in_flight), u64::from(allowed))
    }

    pub(crate) fn report_refusal(
        &self,
        adm: &ClassAdmission,
        verdict: &Verdict,
        priority: Priority,
        shadow: bool,
    ) {
        adm.gate.stats.refused(verdict.reason(), priority, shadow);
        self.show_refusal(verdict, shadow);
    }

    /// Shows a refusal to the hook, if there is one.
    pub(crate) fn show_refusal(&self, verdict: &Verdict, shadow: bool) {
        if let Some(hook) = self.refusal_hook() {
            crate::engine::run_hook(|| hook(&RefusalEvent { verdict, shadow }));
        }
    }

    /// A refusal of `req`: the verdict completed with the class and the request, counted and shown
    /// to the hook.
    #[cold]
    #[inline(never)]
    fn refused(
        &self,
        rules: &ClassRules,
        adm: Option<&ClassAdmission>,
        req: &AdmitRequest<'_>,
        priority: Priority,
        verdict: Verdict,
    ) -> Verdict {
        let verdict = verdict
            .with_class(&rules.name)
            .with_request(req.effective_id());
        match adm {
            Some(adm) => self.report_refusal(adm, &verdict, priority, false),
            // A class without admission settings keeps no counters, but its refusals (an estimate
            // that cannot fit, a key too long, no time left) are refusals all the same.
            None => self.show_refusal(&verdict, false),
        }
        verdict
    }

    /// The refusal of a request whose class the current policy lacks (a reload removed it): no
    /// class keeps its counters, but the hook sees it like any other refusal.
    #[cold]
    #[inline(never)]
    fn unknown_class(&self, req: &AdmitRequest<'_>) -> Verdict {
        let verdict =
            Verdict::new(Reason::UnknownClass, Retry::Never).with_request(req.effective_id());
        self.show_refusal(&verdict, false);
        verdict
    }

    /// A refusal a class in shadow mode records without enforcing it.
    #[cold]
    #[inline(never)]
    fn shadow_refused(
        &self,
        rules: &ClassRules,
        adm: &ClassAdmission,
        req: &AdmitRequest<'_>,
        priority: Priority,
        verdict: Verdict,
    ) {
        let verdict = verdict
            .with_class(&rules.name)
            .with_request(req.effective_id());
        self.report_refusal(adm, &verdict, priority, true);
    }

    /// With the concurrency permit held (if `permit`): pools, budget, key. Undoes all on refusal.
    ///
    /// For a request that waited in the queue: its budget starts when it arrived, `arrived`, so
    /// that the time it waited counts against its wall time (its caller's deadline, when the wall
    /// time came in a header, has been running all along).
    pub(crate) fn admit_rest(
        &self,
        snapshot: &Arc<Snapshot>,
        req: &AdmitRequest<'_>,
        priority: Priority,
        permit: bool,
        arrived: Timestamp,
    ) -> Result<Admitted, Verdict> {
        let Some(rules) = snapshot.class(req.class) else {
            return Err(self.unknown_class(req));
        };
        let d = self.decide_rest(
            rules,
            req,
            priority,
            permit,
            self.clock().now(),
            Some(arrived),
        )?;
        let budget = Budget::begin(snapshot, d.settings, None);
        Ok(d.grant(budget))
    }

    /// Steps 3 to 5: pools, the budget's settings, the key. Undoes all on refusal. The budget
    /// starts at `arrived` if given (see [`admit_rest`](Self::admit_rest)), or at `now`, which
    /// the caller read (before taking the permit, on the first try).
    #[inline(always)]
    fn decide_rest<'r>(
        &self,
        rules: &ClassRules,
        req: &'r AdmitRequest<'_>,
        priority: Priority,
        permit: bool,
        now: Timestamp,
        arrived: Option<Timestamp>,
    ) -> Result<Decision<'r>, Verdict> {
        let adm = rules.admission.as_ref();
        let held = Held {
            adm,
            permit,
            pools: [0; POOLS],
            now,
        };
        // 3. Pools.
        let held = match adm {
            Some(adm) if req.estimated => self.take_pools(rules, adm, req, priority, held)?,
            _ => held,
        };
        // 4. The budget: checked and worked out here, started by the caller (nothing refuses it
        // any more).
        let start = Start {
            now: arrived.unwrap_or(now),
            class: req.class,
            request_id: &req.id,
            priority: Some(priority),
            overrides: req.overrides.unwrap_or(&Overrides::NONE),
        };
        let settings = match Budget::prepare_for(rules, start) {
            Ok(s) => s,
            Err(v) => return Err(self.undo(rules, req, priority, held, v)),
        };
        // A waiter granted its permit in time but finished late (a task polled late, a thread
        // woken late) may find its deadline, which runs from its arrival, already passed: nothing
        // could be done with such a budget, and the permit goes to the next waiter instead.
        if let Some(arrived) = arrived.filter(|_| settings.deadline <= now) {
            let since = |t: Timestamp| t.as_nanos().saturating_sub(arrived.as_nanos());
            let v = Verdict::new(Reason::InsufficientTime, Retry::Never).with_amounts(
                0,
                since(now),
                since(settings.deadline),
            );
            return Err(self.undo(rules, req, priority, held, v));
        }
        // 5. The key, last: its rate allowance, once spent, cannot be given back, so nothing may
        // refuse after it.
        let mut key_slot = None;
        if let Some(adm) = adm {
            if let (Some(key), Some(keys)) = (req.key, &adm.keys) {
                match keys.table.acquire(
                    key,
                    now.as_nanos(),
                    req.rate_cost,
                    keys.limits,
                    adm.shadow,
                ) {
                    Ok((s, over)) => {
                        key_slot = (s != keys::UNPINNED).then_some(s);
                        // A cost over the whole burst was recorded as `CannotFit` at the door.
                        if let Some(over) =
                            over.filter(|o| *o != KeyRefusal::Rate(Nonconforming::Never))
                        {
                            let v = self.key_verdict(adm, over, req.rate_cost);
                            self.shadow_refused(rules, adm, req, priority, v);
                        }
                    }
                    Err(r) => {
                        let v = self.key_verdict(adm, r, req.rate_cost);
                        return Err(self.undo(rules, req, priority, held, v));
                    }
                }
            }
            adm.gate.stats.admitted();
        }
        Ok(Decision {
            settings,
            granted: now,
            permit,
            key_slot,
            pools: held.pools,
        })
    }

    /// Step 3: holds each pool's share of the request's estimate.
    fn take_pools<'r>(
        &self,
        rules: &ClassRules,
        adm: &ClassAdmission,
        req: &AdmitRequest<'_>,
        priority: Priority,
        mut held: Held<'r>,
    ) -> Result<Held<'r>, Verdict> {
        for (i, p) in adm.pools.iter().enumerate() {
            let amount = req.estimates[p.dim];
            if amount == 0 {
                continue;
            }
            held.pools[i] = match p.pool.try_take(amount) {
                Ok(()) => amount,
                Err(used) => {
                    let v = pool_verdict(p, amount, used);
                    if !adm.shadow {
                        return Err(self.undo(rules, req, priority, held, v));
                    }
                    // An estimate larger than the whole pool was recorded as `CannotFit` at the
                    // door: one request, one would-be refusal.
                    if amount <= p.pool.limit() {
                        self.shadow_refused(rules, adm, req, priority, v);
                    }
                    p.pool.force_take(amount)
                }
            };
        }
        Ok(held)
    }

    /// A refusal after the permit (and perhaps pool amounts) were taken: gives them back, hands
    /// the permit to a waiter if one queues, and refuses.
    #[cold]
    #[inline(never)]
    fn undo(
        &self,
        rules: &ClassRules,
        req: &AdmitRequest<'_>,
        priority: Priority,
        held: Held<'_>,
        verdict: Verdict,
    ) -> Verdict {
        if let Some(adm) = held.adm {
            for (amount, p) in held.pools.iter().zip(&adm.pools) {
                if *amount > 0 {
                    p.pool.give(*amount);
                }
            }
            if held.permit {
                adm.gate.limiter.release();
                if adm.gate.queue.has_waiters() {
                    adm.gate.dispatch(adm.queue.as_ref(), held.now.as_nanos());
                }
            }
        }
        self.refused(rules, held.adm, req, priority, verdict)
    }

    /// The refusal of a key's limit. A rate refusal names the key's burst as its limit.
    fn key_verdict(&self, adm: &ClassAdmission, r: KeyRefusal, cost: u64) -> Verdict {
        match r {
            KeyRefusal::Concurrency { in_flight, limit } => {
                Verdict::new(Reason::KeyConcurrency, Retry::Later)
                    .with_dimension(&adm.gate.names[KEY_CONCURRENCY], Unit::Count)
                    .with_amounts(1, in_flight, limit)
            }
            KeyRefusal::Rate(n) => {
                let (reason, retry) = match n {
                    Nonconforming::Wait(ns) => {
                        (Reason::RateLimited, Retry::After(Duration::from_nanos(ns)))
                    }
                    Nonconforming::Never => (Reason::CannotFit, Retry::Never),
                };
                let burst = adm
                    .keys
                    .as_ref()
                    .and_then(|k| k.limits.rate)
                    .map_or(0, |g| g.burst);
                Verdict::new(reason, retry)
                    .with_dimension(&adm.gate.names[RATE], Unit::Count)
                    .with_amounts(cost, 0, burst)
            }
        }
    }
}

/// The limits of one key, from a class's per-key policy.
pub(crate) fn key_limits(pk: &crate::policy::PerKey) -> KeyLimits {
    KeyLimits {
        concurrency: pk.concurrency.map_or(u64::from(u16::MAX), u64::from),
        rate: pk
            .rate
            .map(|r| gcra::Gcra::new(r.amount, crate::clock::duration_to_nanos(r.per), r.burst)),
    }
}

fn pool_verdict(p: &PoolRef, amount: u64, used: u64) -> Verdict {
    Verdict::new(Reason::PoolExhausted, Retry::Later)
        .with_dimension(&p.name, p.unit)
        .with_amounts(amount, used, p.pool.limit())
}

/// An admission decided: everything granted, the budget's settings worked out.
struct Decision<'r> {
    settings: Settings<'r>,
    /// When the request was admitted (its latency, for adaptive limits, runs from here; its
    /// budget may have started earlier, when it arrived).
    granted: Timestamp,
    permit: bool,
    key_slot: Option<u32>,
    pools: [u64; POOLS],
}

impl Decision<'_> {
    /// The grant, with the budget started for it.
    #[inline(always)]
    fn grant(self, budget: Budget) -> Admitted {
        Admitted {
            budget,
            class: self.settings.class,
            permit: self.permit,
            key_slot: self.key_slot,
            pools: self.pools,
            start: self.granted,
            outcome: None,
        }
    }
}

/// What an admission in progress holds, to give back if a later step refuses.
struct Held<'r> {
    adm: Option<&'r ClassAdmission>,
    permit: bool,
    pools: [u64; POOLS],
    now: Timestamp,
}

/// The clock's reading, or the panic it raised: for the paths that must go on without a reading
/// (a permit given back, a waiter leaving) rather than leave work undone.
pub(crate) fn caught_now(clock: &dyn Clock) -> std::thread::Result<Timestamp> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clock.now()))
}

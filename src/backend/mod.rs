//! Dependency protection: every call a request makes to something else goes through an [`Attempt`].
//!
//! In 2016 one Kafka broker went away; every app server kept connecting to it, threads piled up in
//! `connect()`, and the API tier stalled until a person removed the broker from configuration, 22
//! minutes after it went away. In 2015 two layers retried a timed-out call 8 and 5 times, so load
//! multiplied exactly when the backends could least take it. This module does by itself what the
//! operators did by hand, and bounds the retries of a whole request tree:
//!
//! - **bulkheads**: caps on calls in flight and, separately, on connection attempts in progress, for
//!   each backend and each host; past a cap an attempt fails fast with a [`Verdict`];
//! - **circuit breakers** per backend and per host: open on failures in a row, on a failure ratio or a
//!   slow-call ratio over a sliding window; stay open for a jittered, doubling time; admit exactly the
//!   configured number of probes when half-open (a probe that hangs gives its slot back after its
//!   timeout); after closing, ramp traffic up instead of jumping to full load;
//! - **outlier ejection** of hosts that keep failing to connect or timing out, never more than a set
//!   share of the pool, readmitted on probation; choosing a host skips ejected and saturated hosts;
//! - **timeouts from budgets**: an attempt's timeout is the smaller of the backend's and the request's
//!   remaining time minus a margin, and an attempt that could not finish in time is refused up front;
//! - **retry decisions** ([`Engine::retry`]) that answer "may I retry, and after how long?" from the
//!   outcome, the request tree's retry allowance, the backend's retry budget, backoff with full jitter,
//!   and the time left.
//!
//! An attempt is begun and finished explicitly, so the API is the same from Rust, C and PHP;
//! [`Engine::call`] wraps the loop for Rust callers.

mod breaker;
mod host;
mod permits;
mod retry_budget;
mod tagged;
mod window;

use crate::budget::Budget;
use crate::clock::{duration_to_nanos, Clock};
use crate::handle::{Backend, Counter, Host};
use crate::policy::BackendPolicy;
use crate::sync::{Arc, AtomicU32, AtomicU64, Ordering};
use crate::verdict::{Reason, Retry, Unit, ALL_REASONS};
use crate::{Engine, Verdict};
use crossbeam_utils::CachePadded;
pub(crate) use host::HostState;
use host::{BreakerCell, EjectedHosts, Ejection};
use permits::{Full, Permits};
pub(crate) use retry_budget::Rates;
use retry_budget::RetryBudget;
use std::fmt;
use std::time::Duration;
use window::Span;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// It succeeded.
    Success,
    /// The request was wrong (a 4xx): never counts against the backend.
    ClientError,
    /// The backend failed (a 5xx).
    ServerError,
    /// This attempt timed out.
    Timeout,
    /// The backend reported that *its* dependency timed out (a 504 from below): not retried here,
    /// since the layer below already spent its time.
    UpstreamTimeout,
    /// Connecting failed (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The backend refused, possibly saying when to come back.
    Refused {
        /// Its Retry-After, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The caller gave up on it; says nothing about the backend.
    Cancelled,
}

impl AttemptOutcome {
    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::ClientError => "client_error",
            AttemptOutcome::ServerError => "server_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::UpstreamTimeout => "upstream_timeout",
            AttemptOutcome::ConnectFailure => "connect_failure",
            AttemptOutcome::Refused { .. } => "refused",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// Classifies an HTTP response: 1xx, 2xx and 3xx succeed; 429 and 503 are refusals (with the
    /// response's Retry-After, if any); 504 is a timeout reported from below; 408 is this attempt's
    /// timeout; other 4xx are client errors; everything else (other 5xx, and numbers outside
    /// 100-599, which no backend should send) is a server error.
    ///
    /// ```
    /// use costguard::AttemptOutcome;
    /// use std::time::Duration;
    ///
    /// assert_eq!(AttemptOutcome::from_http(200, None), AttemptOutcome::Success);
    /// assert_eq!(AttemptOutcome::from_http(404, None), AttemptOutcome::ClientError);
    /// assert_eq!(
    ///     AttemptOutcome::from_http(503, Some(Duration::from_secs(2))),
    ///     AttemptOutcome::Refused { retry_after: Some(Duration::from_secs(2)) }
    /// );
    /// assert_eq!(AttemptOutcome::from_http(504, None), AttemptOutcome::UpstreamTimeout);
    /// assert_eq!(AttemptOutcome::from_http(600, None), AttemptOutcome::ServerError);
    /// ```
    pub fn from_http(status: u16, retry_after: Option<Duration>) -> AttemptOutcome {
        match status {
            429 | 503 => AttemptOutcome::Refused { retry_after },
            504 => AttemptOutcome::UpstreamTimeout,
            408 => AttemptOutcome::Timeout,
            100..=399 => AttemptOutcome::Success,
            400..=499 => AttemptOutcome::ClientError,
            _ => AttemptOutcome::ServerError,
        }
    }

    fn index(self) -> usize {
        match self {
            AttemptOutcome::Success => 0,
            AttemptOutcome::ClientError => 1,
            AttemptOutcome::ServerError => 2,
            AttemptOutcome::Timeout => 3,
            AttemptOutcome::UpstreamTimeout => 4,
            AttemptOutcome::ConnectFailure => 5,
            AttemptOutcome::Refused { .. } => 6,
            AttemptOutcome::Cancelled => 7,
        }
    }
}

/// What each outcome, by its index, tells the breakers. An attempt's completion decodes its outcome
/// (an enum with a `Duration` inside) once, into its index, and reads everything else from that.
const VERDICTS: [breaker::Verdict; 9] = [
    breaker::Verdict::Success,
    breaker::Verdict::Neutral,
    breaker::Verdict::Failure,
    breaker::Verdict::Failure,
    breaker::Verdict::Failure,
    breaker::Verdict::Failure,
    breaker::Verdict::Failure,
    breaker::Verdict::Neutral,
    // A trial's timeout.
    breaker::Verdict::Neutral,
];

/// A trial's claim on its backend's next trial time: when it was due, and when the next is.
#[derive(Clone, Copy, Debug)]
struct TrialClaim {
    due: u64,
    next: u64,
}

/// A trial's turn while its attempt is being begun: given back if the attempt is refused (this is
/// dropped), kept if it goes ahead (this is forgotten).
struct TrialTurn(Arc<BackendState>, TrialClaim);

impl Drop for TrialTurn {
    fn drop(&mut self) {
        self.0.untry(self.1);
    }
}

/// Indices of the outcomes a completion tells apart.
const SUCCESS: usize = 0;
const TIMEOUT: usize = 3;
const CONNECT_FAILURE: usize = 5;

/// The outcome counters of the two outcomes that say nothing about the backend.
const NEUTRAL_CLIENT: usize = 1;
const NEUTRAL_CANCELLED: usize = 7;
/// A trial's timeout (an attempt let through with less time than the backend usually needs):
/// counted apart, and not as a call of the breaker's window.
const TRIAL_TIMEOUT: usize = 8;

const OUTCOMES: [&str; 9] = [
    "success",
    "client_error",
    "server_error",
    "timeout",
    "upstream_timeout",
    "connect_failure",
    "refused",
    "cancelled",
    "trial_timeout",
];

/// A breaker or ejection transition, as seen by the hook set with
/// [`EngineBuilder::on_transition`](crate::EngineBuilder::on_transition).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The backend.
    pub backend: Arc<str>,
    /// The host, for a host's breaker or an ejection.
    pub host: Option<Arc<str>>,
    /// What happened.
    pub kind: TransitionKind,
    /// When, by the engine's clock (ns).
    pub at: u64,
    /// Orders the transitions of one breaker, and those of one host's ejections: of two, the later
    /// has the larger generation. (The hook is called by whichever thread made the transition,
    /// after it made it, so two threads' transitions can reach it in either order, and with
    /// timestamps taken before the transitions themselves.) A breaker's generations and a host's
    /// ejection generations are separate sequences, of 36 and 38 bits: they wrap only after that
    /// many transitions of one breaker, or changes of one host's ejection state (each counted
    /// failure is one).
    pub generation: u64,
}

/// Kinds of [`Transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionKind {
    /// A breaker opened.
    Opened,
    /// A breaker let its first probe through.
    HalfOpened,
    /// Every probe of a half-open breaker outlived its timeout, and a new round of probes began
    /// (the breaker stays half-open).
    ProbesRestarted,
    /// A breaker closed.
    Closed,
    /// A host was ejected from its pool.
    Ejected,
    /// An ejected host came back, on probation.
    Readmitted,
    /// An ejected host's ejection ended without probation, because a reload took the host out of
    /// its pool (or its backend out of the policy): no new request will be sent to it.
    EjectionEnded,
}

pub(crate) type TransitionHook = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Persistent state of a backend: survives every reload (its hosts' states are kept beside it, by
/// host id, and each version lists the ones in its pool).
#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) breaker: BreakerCell,
    pub(crate) permits: Permits,
    /// Hosts of the backend's pool ejected now, and how many may be.
    pub(crate) ejected: EjectedHosts,
    pub(crate) retry: RetryBudget,
    /// What calls write: on lines of their own, away from what they only read.
    traffic: CachePadded<Traffic>,
    /// Refusals by reason: written only by refused attempts and retry decisions.
    refusals: CachePadded<Refusals>,
    names: [Arc<str>; 4],
}

/// Attempts refused and retries refused, by [`Reason`] (indexed by its discriminant).
#[derive(Debug, Default)]
struct Refusals {
    attempts: [AtomicU64; ALL_REASONS.len()],
    retries: [AtomicU64; ALL_REASONS.len()],
}

impl Refusals {
    fn attempt(&self, reason: Reason) {
        if let Some(n) = self.attempts.get(reason as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn retry(&self, reason: Reason) {
        if let Some(n) = self.retries.get(reason as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(reason, count)` for each of `always` (the reasons that side of the backend produces, so
    /// that their series exist from the start) and any other reason counted.
    fn read(counts: &[AtomicU64], always: &[Reason]) -> Vec<(&'static str, u64)> {
        ALL_REASONS
            .iter()
            .zip(counts)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .filter(|(r, n)| *n > 0 || always.contains(r))
            .map(|(r, n)| (r.as_str(), n))
            .collect()
    }
}

/// The reasons an attempt is refused for.
const ATTEMPT_REFUSALS: [Reason; 5] = [
    Reason::InsufficientTime,
    Reason::CircuitOpen,
    Reason::BulkheadFull,
    Reason::ConnectLimit,
    Reason::NoHealthyHost,
];

/// The reasons a retry is refused for, besides what the request tree's budget refuses.
const RETRY_REFUSALS: [Reason; 5] = [
    Reason::NotRetryable,
    Reason::InsufficientTime,
    Reason::CircuitOpen,
    Reason::RetryBudgetExhausted,
    Reason::LimitExceeded,
];

/// The parts of a backend's state that calls keep writing: every finish counts its outcome and (on
/// success) moves the latency, every begin on a pool moves the round-robin cursor, every retry
/// decision steps the jitter stream. Kept together, apart from the names and the ejected count
/// that every call only reads, so that two threads calling one backend bounce these
/// lines and no others.
#[derive(Debug, Default)]
struct Traffic {
    outcomes: [AtomicU64; 9],
    /// Smoothed latency of successful attempts, ns (0: none yet).
    latency: AtomicU64,
    /// When an attempt with less time left than `latency` may next go ahead anyway (see
    /// [`BackendState::tries_anyway`]).
    slow_probe: AtomicU64,
    next_host: AtomicU32,
    rng: AtomicU64,
}

const N_IN_FLIGHT: usize = 0;
const N_CONNECTING: usize = 1;
const N_BREAKER: usize = 2;
const N_TIME: usize = 3;

impl BackendState {
    /// A backend's state, created at `now`. Its random stream starts from `seed` (the engine's
    /// seed and the backend's id, each backend its own stream) when the engine was given one, and
    /// from `now` otherwise.
    pub(crate) fn new(policy: &BackendPolicy, now: u64, seed: Option<(u64, u64)>) -> Self {
        let rates = rates(policy);
        let stream = seed.map_or(GAMMA ^ now, |(seed, id)| {
            mix(seed ^ mix(id.wrapping_add(1).wrapping_mul(GAMMA)))
        });
        BackendState {
            breaker: BreakerCell::default(),
            permits: Permits::default(),
            ejected: EjectedHosts::default(),
            retry: RetryBudget::new(now, rates),
            traffic: CachePadded::new(Traffic {
                rng: AtomicU64::new(stream),
                ..Traffic::default()
            }),
            refusals: CachePadded::default(),
            names: [
                Arc::from("in_flight"),
                Arc::from("connecting"),
                Arc::from("breaker"),
                Arc::from("wall_time"),
            ],
        }
    }

    /// Whether an attempt with less time left than the backend usually needs (`usual`) may go
    /// ahead anyway, as a trial to learn whether the backend has become faster: one such attempt
    /// per `usual` of time. Without it, a latency learned while the backend was slow would refuse
    /// every request of a class with less time than that for good, since refused attempts teach
    /// nothing. The claim is given back ([`untry`](Self::untry)) if the attempt is then refused.
    #[cold]
    fn tries_anyway(&self, now: u64, usual: u64) -> Option<TrialClaim> {
        let due = self.traffic.slow_probe.load(Ordering::Relaxed);
        let next = now.saturating_add(usual);
        (now >= due
            && self
                .traffic
                .slow_probe
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then_some(TrialClaim { due, next })
    }

    /// Gives back the claim of a trial that was refused after all (by the breaker, a cap, the
    /// hosts), unless another trial's claim came since.
    #[cold]
    fn untry(&self, claim: TrialClaim) {
        let _ = self.traffic.slow_probe.compare_exchange(
            claim.next,
            claim.due,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Calls that count in the breaker's window: every outcome but the neutral ones.
    fn calls(&self) -> u64 {
        self.traffic
            .outcomes
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(*i, NEUTRAL_CLIENT | NEUTRAL_CANCELLED | TRIAL_TIMEOUT))
            .fold(0u64, |sum, (_, n)| {
                sum.wrapping_add(n.load(Ordering::Relaxed))
            })
    }

    /// A uniformly drawn amount in `0..=ceiling` (full jitter), in integers.
    fn jitter(&self, ceiling: u64) -> u64 {
        let r = self.random_bits();
        ((u128::from(ceiling) * u128::from(r)) >> 64) as u64
    }

    /// A uniform draw in `[0, 1)` (for the breaker's open-time jitter, off the hot path).
    fn random(&self) -> f64 {
        (self.random_bits() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// 64 random bits from the backend's splitmix64 stream. The stream is shared and seeded from
    /// the engine's clock, so that a simulation on a manual clock draws the same numbers every run.
    /// It advances by a plain load and store, not a read-modify-write: two threads that race here
    /// may draw the same number, which costs a jitter nothing, where a locked instruction on a line
    /// every retrying thread shares would cost each decision.
    fn random_bits(&self) -> u64 {
        let x = self.traffic.rng.load(Ordering::Relaxed).wrapping_add(GAMMA);
        self.traffic.rng.store(x, Ordering::Relaxed);
        mix(x)
    }
}

/// The increment of a splitmix64 stream.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn rates(p: &BackendPolicy) -> Rates {
    Rates::new(u64::from(p.retry.ratio), u64::from(p.retry.min_per_second))
}

/// A backend compiled into one policy snapshot.
pub(crate) struct BackendRules {
    pub(crate) state: Arc<BackendState>,
    pub(crate) policy: BackendPolicy,
    ns: Nanos,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hook: Option<TransitionHook>,
    /// This version's pool, in the policy's order: each host's state, shared with every version
    /// that lists it.
    hosts: Box<[Arc<HostState>]>,
    /// By host id (see [`Host`]): the host's name, and its index in this version's host list if
    /// it has one.
    host_slots: Box<[(Arc<str>, Option<u16>)]>,
}

/// A backend's durations in clock nanoseconds, converted once per policy version rather than on
/// every attempt.
#[derive(Clone, Copy, Debug)]
struct Nanos {
    timeout: u64,
    margin: u64,
    ramp_up: u64,
    slow_call: u64,
    window: Span,
    backoff_base: u64,
    backoff_max: u64,
    open_for: u64,
    max_open_for: u64,
    /// When a host of the pool is ejected, and for how long.
    eject: host::EjectRule,
}

impl Nanos {
    fn new(p: &BackendPolicy) -> Nanos {
        let e = &p.ejection;
        Nanos {
            open_for: duration_to_nanos(p.breaker.open_for),
            max_open_for: duration_to_nanos(p.breaker.max_open_for),
            eject: host::EjectRule {
                threshold: u64::from(e.consecutive_failures),
                base: duration_to_nanos(e.base),
                max: duration_to_nanos(e.max),
            },
            timeout: duration_to_nanos(p.timeout),
            margin: duration_to_nanos(p.margin),
            ramp_up: duration_to_nanos(p.breaker.ramp_up),
            slow_call: duration_to_nanos(p.breaker.slow_call),
            window: Span::new(duration_to_nanos(p.breaker.window)),
            backoff_base: duration_to_nanos(p.retry.backoff_base),
            backoff_max: duration_to_nanos(p.retry.backoff_max),
        }
    }
}

impl fmt::Debug for BackendRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendRules")
            .field("backend", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl BackendRules {
    /// `hosts`: this version's pool, as ids into `host_states` (every host the engine has seen for
    /// this backend, by id).
    pub(crate) fn new(
        state: Arc<BackendState>,
        policy: &BackendPolicy,
        hosts: &[usize],
        host_states: &[Arc<HostState>],
        clock: &Arc<dyn Clock>,
        hook: Option<&TransitionHook>,
    ) -> BackendRules {
        let host_slots = host_states
            .iter()
            .enumerate()
            .map(|(id, h)| {
                let slot = hosts.iter().position(|&listed| listed == id);
                (
                    Arc::clone(&h.name),
                    slot.and_then(|i| u16::try_from(i).ok()),
                )
            })
            .collect();
        BackendRules {
            hosts: hosts
                .iter()
                .map(|&id| Arc::clone(&host_states[id]))
                .collect(),
            host_slots,
            ns: Nanos::new(policy),
            state,
            policy: policy.clone(),
            clock: Arc::clone(clock),
            hook: hook.cloned(),
        }
    }

    /// The index in this version's host list of the host with id `id`, or the host's name (if the
    /// engine knows the id) when this version has no such host.
    fn host_slot(&self, id: u16) -> Result<u32, Option<&Arc<str>>> {
        match self.host_slots.get(usize::from(id)) {
            Some((_, Some(slot))) => Ok(u32::from(*slot)),
            Some((name, None)) => Err(Some(name)),
            None => Err(None),
        }
    }

    /// The id of the host named `name` (in any spelling of it: see `policy::same_host`), if this
    /// version's list has it.
    fn host_id(&self, name: &str) -> Option<u16> {
        self.host_slots
            .iter()
            .position(|(n, slot)| slot.is_some() && crate::policy::same_host(n, name))
            .and_then(|id| u16::try_from(id).ok())
    }

    pub(crate) fn emit(
        &self,
        host: Option<&Arc<str>>,
        kind: TransitionKind,
        at: u64,
        generation: u64,
    ) {
        if let Some(hook) = &self.hook {
            let transition = Transition {
                backend: Arc::clone(&self.policy.name),
                host: host.cloned(),
                kind,
                at,
                generation,
            };
            crate::engine::run_hook(|| hook(&transition));
        }
    }

    fn limits(&self) -> host::Limits {
        host::Limits {
            probes: u64::from(self.policy.breaker.probes),
            max_open: self.ns.max_open_for,
        }
    }

    fn open_ns(&self) -> impl Fn(u64) -> u64 + '_ {
        let (base, max) = (self.ns.open_for, self.ns.max_open_for);
        move |opened| breaker::open_for(base, max, opened, 0.5 + self.state.random() / 2.0)
    }

    fn verdict(&self, reason: Reason, retry: Retry, name: usize) -> Verdict {
        Verdict::new(reason, retry).with_dimension(&self.state.names[name], Unit::Count)
    }
}

/// The backend settings an attempt runs under.
///
/// Usually borrowed from the request's budget, which holds its policy version for as long as the
/// request lives: an attempt then takes no reference count, a read-modify-write that every thread
/// calling the backend would otherwise make on one shared cache line, twice per attempt. Owned when
/// the attempt must outlive that borrow ([`Attempt::into_owned`]) or the settings came from the
/// current policy rather than the request's.
enum Rules<'b> {
    Borrowed(&'b Arc<BackendRules>),
    Owned(Arc<BackendRules>),
}

impl Rules<'_> {
    fn to_owned(&self) -> Rules<'static> {
        Rules::Owned(Arc::clone(self.arc()))
    }

    #[inline]
    fn arc(&self) -> &Arc<BackendRules> {
        match self {
            Rules::Borrowed(r) => r,
            Rules::Owned(r) => r,
        }
    }
}

impl std::ops::Deref for Rules<'_> {
    type Target = BackendRules;

    #[inline]
    fn deref(&self) -> &BackendRules {
        self.arc()
    }
}

/// One call to a backend, in progress. Finish it with [`finish`](Self::finish); dropping it unfinished
/// counts as [`AttemptOutcome::Cancelled`]. Either way its permits are released exactly once.
///
/// An attempt borrows the budget it was begun for (its request's policy lives there), so it cannot
/// outlive it. To keep one elsewhere, in a struct beside its budget or across a language boundary,
/// make it independent with [`into_owned`](Self::into_owned).
#[must_use = "an attempt holds its backend's permits until it is finished or dropped"]
pub struct Attempt<'b> {
    rules: Rules<'b>,
    host: Option<u32>,
    connecting: bool,
    role: breaker::Role,
    generation: u64,
    host_role: breaker::Role,
    host_generation: u64,
    start: u64,
    /// Clock nanoseconds.
    timeout: u64,
    /// Begun with less time than the backend usually needs, to learn whether it has become faster
    /// (see [`BackendState::tries_anyway`]): its timeout, which that time cut short, counts for
    /// nothing against the backend or its host.
    trial: bool,
    done: bool,
}

impl Attempt<'_> {
    /// The same attempt, no longer borrowing its budget: it then holds a reference count on its
    /// policy version instead, as long as it lives.
    ///
    /// ```
    /// use costguard::{Attempt, AttemptOutcome, Budget, Engine, Policy, RequestId};
    ///
    /// // A request kept in a struct, with its budget and its call in progress.
    /// struct Request {
    ///     budget: Budget,
    ///     call: Option<Attempt<'static>>,
    /// }
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c)
    ///     .backend("db", |b| b.count("max_in_flight", 1))
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let db = engine.backend("db").unwrap();
    /// let budget = engine.begin_by_name("api", RequestId::new("r1").unwrap()).unwrap();
    /// let call = engine.begin_attempt(db, &budget, 0).unwrap().into_owned();
    /// let mut request = Request { budget, call: Some(call) };
    ///
    /// // The permit moved with the attempt: the backend's only slot is still taken.
    /// assert!(engine.begin_attempt(db, &request.budget, 0).is_err());
    /// request.call.take().unwrap().finish(AttemptOutcome::Success);
    /// assert!(engine.begin_attempt(db, &request.budget, 0).is_ok());
    /// ```
    pub fn into_owned(mut self) -> Attempt<'static> {
        let owned = Attempt {
            rules: self.rules.to_owned(),
            host: self.host,
            connecting: self.connecting,
            role: self.role,
            generation: self.generation,
            host_role: self.host_role,
            host_generation: self.host_generation,
            start: self.start,
            timeout: self.timeout,
            trial: self.trial,
            done: self.done,
        };
        // The permits now belong to `owned`: this one must release nothing as it drops.
        self.done = true;
        owned
    }

    /// The timeout to use for this attempt: the backend's, or less if the request has less time.
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout)
    }

    /// The host chosen for this attempt, if the backend has a pool.
    pub fn host(&self) -> Option<&str> {
        self.host
            .and_then(|h| self.rules.hosts.get(h as usize))
            .map(|h| &*h.name)
    }

    /// Whether this attempt is one of the probes of a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.role == breaker::Role::Probe || self.host_role == breaker::Role::Probe
    }

    /// The connection is established: releases the connect permits (calls in flight stay held).
    pub fn connected(&mut self) {
        if std::mem::replace(&mut self.connecting, false) {
            let state = &self.rules.state;
            state.permits.connected();
            if let Some(h) = self.host.and_then(|h| self.rules.hosts.get(h as usize)) {
                h.permits.connected();
            }
        }
    }

    /// Records how the attempt ended and releases everything.
    #[inline]
    pub fn finish(mut self, outcome: AttemptOutcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: AttemptOutcome) {
        if self.done {
            return;
        }
        // The clock is read before the attempt counts as done: should it panic, the attempt is
        // dropped as the panic unwinds, and that drop releases everything.
        let (outcome, now) = if std::thread::panicking() {
            self.unwinding(outcome)
        } else {
            (outcome, self.rules.clock.now().as_nanos())
        };
        self.done = true;
        let connecting = std::mem::replace(&mut self.connecting, false);
        let rules = &*self.rules;
        let state = &rules.state;
        let latency = now.saturating_sub(self.start);
        let b = &rules.policy.breaker;
        let mut index = outcome.index();
        if self.trial && index == TIMEOUT {
            // A trial's timeout says only that the time it had was short.
            index = TRIAL_TIMEOUT;
        }
        let v = VERDICTS[index];
        let slow = latency > rules.ns.slow_call;
        if index == SUCCESS {
            // No attempt is given more than the backend's timeout: a success reported later than
            // that (its caller ignored the timeout) must not teach the backend that it usually takes
            // longer, or every request with less than that left would be refused up front.
            let latency = latency.min(rules.ns.timeout);
            let old = state.traffic.latency.load(Ordering::Relaxed);
            let new = if old == 0 {
                latency
            } else {
                old - old / 8 + latency / 8
            };
            state.traffic.latency.store(new, Ordering::Relaxed);
        }
        let consecutive = u64::from(b.consecutive_failures);
        let probes = u64::from(b.probes);
        let host = self.host.and_then(|h| rules.hosts.get(h as usize));
        if let Some(h) = host {
            let trip = record(
                &h.breaker,
                self.host_generation,
                rules,
                now,
                v,
                slow,
                || h.calls.load(Ordering::Relaxed),
                || {
                    if v != breaker::Verdict::Neutral {
                        h.calls.fetch_add(1, Ordering::Relaxed);
                    }
                },
            );
            let (change, generation) = h.breaker.finish(
                self.host_role,
                self.host_generation,
                v,
                trip,
                consecutive,
                probes,
                rules.open_ns(),
                now,
            );
            self.report(change, Some(&h.name), &h.breaker, now, generation);
            // A failure of an attempt begun before the host's last readmission is not held
            // against the host on probation: its time ran mostly during the ejection it served.
            // (Read only for a failure that would count: a success never looks.)
            let counts = (index == CONNECT_FAILURE || index == TIMEOUT)
                && self.start >= h.readmitted_at.load(Ordering::Acquire);
            if counts && state.ejected.full() {
                // The share of the pool that may be out is taken, perhaps by ejections that are
                // over but that no host choice has ended yet (attempts on particular hosts never
                // look at the others): end those first, so that this host can take a place.
                readmit_due(rules, now);
            }
            let ejection = h.on_outcome(
                counts,
                index == SUCCESS,
                self.start,
                now,
                &rules.ns.eject,
                &state.ejected,
            );
            if let Ejection::Ejected(generation) = ejection {
                rules.emit(Some(&h.name), TransitionKind::Ejected, now, generation);
            }
            h.permits.release(connecting);
        }
        let trip = record(
            &state.breaker,
            self.generation,
            rules,
            now,
            v,
            slow,
            || state.calls(),
            || {
                state.traffic.outcomes[index].fetch_add(1, Ordering::Relaxed);
            },
        );
        let (change, generation) = state.breaker.finish(
            self.role,
            self.generation,
            v,
            trip,
            consecutive,
            probes,
            rules.open_ns(),
            now,
        );
        self.report(change, None, &state.breaker, now, generation);
        state.permits.release(connecting);
    }

    /// The outcome and time to finish with while the thread unwinds: a panic of the clock is
    /// caught (a second one escaping would abort the process), and the attempt then ends as
    /// cancelled, at the time it began, which counts for and against nothing.
    #[cold]
    #[inline(never)]
    fn unwinding(&self, outcome: AttemptOutcome) -> (AttemptOutcome, u64) {
        let clock = &self.rules.clock;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clock.now())) {
            Ok(now) => (outcome, now.as_nanos()),
            Err(_) => (AttemptOutcome::Cancelled, self.start),
        }
    }

    fn report(
        &self,
        change: breaker::Change,
        host: Option<&Arc<str>>,
        cell: &BreakerCell,
        now: u64,
        generation: u64,
    ) {
        match change {
            breaker::Change::Opened => {
                self.rules
                    .emit(host, TransitionKind::Opened, now, generation)
            }
            breaker::Change::Closed => {
                cell.window.clear();
                self.rules
                    .emit(host, TransitionKind::Closed, now, generation);
            }
            breaker::Change::None => {}
        }
    }
}

/// Ends every ejection of `rules`' pool that is over (on probation), reporting each.
#[cold]
fn readmit_due(rules: &BackendRules, now: u64) {
    for host in &rules.hosts {
        if let Some(generation) = host.readmit_if_due(now, &rules.state.ejected) {
            rules.emit(
                Some(&host.name),
                TransitionKind::Readmitted,
                now,
                generation,
            );
        }
    }
}

impl Drop for Attempt<'_> {
    /// Inlined, so that dropping a finished attempt (every attempt, at the end of `finish`) costs a
    /// test of `done` rather than a call.
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.complete(AttemptOutcome::Cancelled);
        }
    }
}

impl fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("backend", &self.rules.policy.name)
            .field("host", &self.host())
            .field("timeout", &self.timeout())
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}

/// The answer to "may I retry?". A yes has already taken its retry from the request tree and its
/// token from the backend: ignoring it wastes both.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a granted retry has already spent the tree's allowance and a backend token"]
pub enum RetryDecision {
    /// Yes, after waiting this long.
    After(Duration),
    /// No, and why.
    Stop(Verdict),
}

/// A call through [`Engine::call`] that did not succeed.
///
/// Its message includes the last attempt's error, so `E` need only be `Display` (a string, an
/// I/O error, a status code's wrapper), and [`source`](std::error::Error::source) is `None`: an
/// error reporter that walks the chain prints the call's error once. Match on
/// [`Failed`](CallError::Failed) to get the error itself back.
#[derive(Debug)]
pub enum CallError<E> {
    /// No attempt could be made (or retried), and why.
    Refused(Verdict),
    /// The last attempt failed with this error, and retrying was refused for this reason.
    Failed(E, Verdict),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Refused(v) => write!(f, "call refused: {v}"),
            CallError::Failed(e, v) => write!(f, "call failed: {e} (not retried: {v})"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {}

/// The refusal of an attempt on a host the request's version of the policy does not have (a reload
/// removed it, or added it after the request began).
#[cold]
#[inline(never)]
fn unknown_host(rules: &BackendRules, name: Option<&Arc<str>>, budget: &Budget) -> Verdict {
    rules.state.refusals.attempt(Reason::UnknownClass);
    let v = Verdict::new(Reason::UnknownClass, Retry::Never).with_class(&rules.policy.name);
    let v = match name {
        Some(name) => v.with_dimension(name, Unit::Count),
        None => v,
    };
    v.with_request(budget.request_id())
}

/// Why [`Engine::begin_attempt`] refused, with what the verdict reports.
enum Refusal {
    /// The request's time left (`left`, after the margin) is below what the backend usually needs.
    Time { usual: u64, left: u64 },
    /// The backend's breaker is open or has all its probes out.
    Open(breaker::Closed),
    /// The backend is at a cap: calls in flight (with the cap applied, ramped) or connects.
    Full(Full, u32),
    /// No host of the pool is healthy and free (see [`no_host`], which builds this verdict).
    NoHost,
}

/// The verdict of a refused attempt, built out of line: verdicts are large, and most attempts never
/// need one, so the admitting path stays short and keeps its values in registers.
#[cold]
#[inline(never)]
fn refusal(rules: &BackendRules, budget: &Budget, why: Refusal) -> Verdict {
    let p = &rules.policy;
    let v = match why {
        Refusal::Time { usual, left } => rules
            .verdict(Reason::InsufficientTime, Retry::Never, N_TIME)
            .with_amounts(usual, 0, left),
        Refusal::Open(breaker::Closed::Open(ns)) => rules.verdict(
            Reason::CircuitOpen,
            Retry::After(Duration::from_nanos(ns)),
            N_BREAKER,
        ),
        Refusal::Open(breaker::Closed::Probing) => {
            rules.verdict(Reason::CircuitOpen, Retry::Later, N_BREAKER)
        }
        Refusal::Full(Full::InFlight(seen), cap) => rules
            .verdict(Reason::BulkheadFull, Retry::Later, N_IN_FLIGHT)
            .with_amounts(1, u64::from(seen), u64::from(cap)),
        Refusal::Full(Full::Connecting, _) => rules
            .verdict(Reason::ConnectLimit, Retry::Later, N_CONNECTING)
            .with_amounts(1, u64::from(p.max_connecting), u64::from(p.max_connecting)),
        Refusal::NoHost => rules.verdict(Reason::NoHealthyHost, Retry::Later, N_CONNECTING),
    };
    counted(rules, budget, v)
}

/// A refused attempt's verdict, counted and completed with the backend and the request.
fn counted(rules: &BackendRules, budget: &Budget, v: Verdict) -> Verdict {
    rules.state.refusals.attempt(v.reason());
    v.with_class(&rules.policy.name)
        .with_request(budget.request_id())
}

/// The refusal of an attempt for which no host of the pool (or not the one asked for, `target`)
/// is healthy and free at `now`. Out of [`refusal`]'s way, so that the admitting path carries
/// nothing more for it.
#[cold]
#[inline(never)]
fn no_host(rules: &BackendRules, budget: &Budget, target: Option<u32>, now: u64) -> Verdict {
    match no_host_wait(rules, target, now) {
        // Every host is out for a known time: no dimension ran out, and the hint is when the
        // first of them comes back.
        Some(ns) => counted(
            rules,
            budget,
            Verdict::new(
                Reason::NoHealthyHost,
                Retry::After(Duration::from_nanos(ns)),
            ),
        ),
        None => refusal(rules, budget, Refusal::NoHost),
    }
}

/// How long until a host that refused an attempt at `now` (the pool's, or `target` alone) could
/// take one: the nearest end of an ejection or of an open breaker, when every host is out for a
/// known time. `None` when one is merely busy (at its caps, or half-open with every probe slot
/// taken), which any finishing attempt may change.
fn no_host_wait(rules: &BackendRules, target: Option<u32>, now: u64) -> Option<u64> {
    let hosts = match target {
        Some(t) => rules.hosts.get(t as usize..=t as usize)?,
        None => &rules.hosts[..],
    };
    let mut soonest: Option<u64> = None;
    for host in hosts {
        // Out until both its ejection and its breaker's opening are over, whichever ends later.
        let ejected = match host.is_ejected_at(now).then(|| host.ejection_ends()) {
            Some(u64::MAX) => return None,
            Some(end) => Some(end.saturating_sub(now)),
            None => None,
        };
        let open = match host.breaker.would_begin(now, rules.limits()) {
            Err(breaker::Closed::Open(ns)) => Some(ns),
            // Half-open with every probe slot taken: a probe finishing frees one at any moment,
            // which ends nothing else (an ejection still runs its course).
            Err(breaker::Closed::Probing) if ejected.is_none() => return None,
            Err(breaker::Closed::Probing) | Ok(()) => None,
        };
        let wait = match (ejected, open) {
            (None, None) => return None, // only busy
            (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
        };
        soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
    }
    // At least a nanosecond: a hint of zero would read as "now", which just refused.
    soonest.map(|ns| ns.max(1))
}

/// The verdict of a retry that the backend's breaker would refuse once `backoff` (ns) is over:
/// `closed` is the breaker's answer at that time, so an open breaker's wait is counted from then.
#[cold]
#[inline(never)]
fn refused_by_breaker(
    rules: &BackendRules,
    budget: &Budget,
    closed: breaker::Closed,
    backoff: u64,
) -> Verdict {
    let retry = match closed {
        breaker::Closed::Open(ns) => Retry::After(Duration::from_nanos(ns.saturating_add(backoff))),
        breaker::Closed::Probing => Retry::Later,
    };
    rules.state.refusals.retry(Reason::CircuitOpen);
    rules
        .verdict(Reason::CircuitOpen, retry, N_BREAKER)
        .with_class(&rules.policy.name)
        .with_request(budget.request_id())
}

impl Engine {
    /// The handle of a backend of the current policy.
    pub fn backend(&self, name: &str) -> Result<Backend, crate::NameError> {
        self.snapshot()
            .backend_by_name(name)
            .ok_or_else(|| crate::NameError::Unknown {
                expected: "backend",
                name: name.to_owned(),
            })
    }

    /// The handle of a host of a backend's pool, in any spelling of its name (`DB1`, `db1.` and
    /// `db1` name one host). A host keeps, for the engine's life, the spelling it was first listed
    /// under: in stats, transitions and [`Attempt::host`].
    pub fn host(&self, backend: Backend, name: &str) -> Result<Host, crate::NameError> {
        let snapshot = self.snapshot();
        snapshot
            .backend(backend)
            .and_then(|r| r.host_id(name))
            .map(|index| Host { backend, index })
            .ok_or_else(|| crate::NameError::Unknown {
                expected: "host",
                name: name.to_owned(),
            })
    }

    /// Begins an attempt to call `backend` for the request `budget` belongs to. `retry` is 0 for a
    /// first attempt (once begun, it funds the backend's retry budget; a refused one does not) and the
    /// retry number otherwise.
    ///
    /// Refused when the time the request has left cannot cover what the backend usually needs (but
    /// for one such attempt per that usual time, which goes ahead to learn whether the backend has
    /// become faster), when the backend's breaker is open, when its calls or connection attempts in flight are at their caps, or
    /// when no host of its pool is healthy and free.
    ///
    /// ```
    /// use costguard::{AttemptOutcome, Engine, Policy, Reason, RequestId, RetryDecision};
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c.wall_time(Duration::from_secs(10)).retries(2))
    ///     .backend("kafka", |b| {
    ///         b.hosts(&["kafka1001", "kafka1002"])
    ///             .duration("timeout", Duration::from_secs(2))
    ///             .count("max_connecting_per_host", 4)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let kafka = engine.backend("kafka").unwrap();
    /// let budget = engine.begin_by_name("api", RequestId::new("r1").unwrap()).unwrap();
    ///
    /// let mut attempt = engine.begin_attempt(kafka, &budget, 0).unwrap();
    /// let host = attempt.host().unwrap(); // connect to this host ...
    /// assert!(host.starts_with("kafka100"));
    /// assert!(attempt.timeout() <= Duration::from_secs(2)); // ... giving up after this long
    /// attempt.connected(); // connection made: the connect permit goes back
    /// attempt.finish(AttemptOutcome::ServerError);
    ///
    /// // After a failure, ask before trying again: a yes comes with the backoff to wait first.
    /// match engine.retry(kafka, &budget, AttemptOutcome::ServerError, 1) {
    ///     RetryDecision::After(backoff) => assert!(backoff < Duration::from_secs(10)),
    ///     RetryDecision::Stop(why) => assert_eq!(why.reason(), Reason::RetryBudgetExhausted),
    /// }
    /// ```
    pub fn begin_attempt<'b>(
        &self,
        backend: Backend,
        budget: &'b Budget,
        retry: u32,
    ) -> Result<Attempt<'b>, Verdict> {
        self.begin_attempt_at(backend, None, budget, retry)
    }

    /// Begins an attempt on one particular host of a pool, as [`begin_attempt`](Self::begin_attempt)
    /// does, but refused (rather than sent elsewhere) when that host is ejected, its breaker is open or
    /// it is at its caps.
    pub fn begin_attempt_on<'b>(
        &self,
        host: Host,
        budget: &'b Budget,
        retry: u32,
    ) -> Result<Attempt<'b>, Verdict> {
        self.begin_attempt_at(host.backend, Some(host.index), budget, retry)
    }

    fn begin_attempt_at<'b>(
        &self,
        backend: Backend,
        host: Option<u16>,
        budget: &'b Budget,
        retry: u32,
    ) -> Result<Attempt<'b>, Verdict> {
        match self.rules(backend, budget) {
            Some(rules) => {
                let target = match host.map(|id| rules.host_slot(id)) {
                    None => None,
                    Some(Ok(slot)) => Some(slot),
                    Some(Err(name)) => return Err(unknown_host(&rules, name, budget)),
                };
                self.begin_under(rules, target, budget, retry)
            }
            None => {
                Err(Verdict::new(Reason::UnknownClass, Retry::Never)
                    .with_request(budget.request_id()))
            }
        }
    }

    /// The rules of `backend` in the request's policy, the one its budget started under (a reload
    /// applies to requests started after it, as it does for budgets). The budget already holds that
    /// snapshot, so the usual case borrows them from there: no guard, no reference count. A backend
    /// the request's policy lacks (added by a later reload), or a budget of another engine, is looked
    /// up in the current policy instead.
    #[inline]
    fn rules<'b>(&self, backend: Backend, budget: &'b Budget) -> Option<Rules<'b>> {
        let own = &budget.node().snapshot;
        match own.backend(backend) {
            Some(rules) if self.owns(own) => Some(Rules::Borrowed(rules)),
            _ => self
                .snapshot_guard()
                .backend(backend)
                .map(|r| Rules::Owned(Arc::clone(r))),
        }
    }

    fn begin_under<'b>(
        &self,
        held: Rules<'b>,
        target: Option<u32>,
        budget: &'b Budget,
        retry: u32,
    ) -> Result<Attempt<'b>, Verdict> {
        let rules: &BackendRules = &held;
        let state = &rules.state;
        let clock_now = rules.clock.now();
        let now = clock_now.as_nanos();

        // Time: the backend's timeout, or what the request has left minus a margin.
        let own = rules.ns.timeout;
        let remaining = budget.remaining_nanos_by(&rules.clock, clock_now);
        let (timeout, claim) = if remaining == u64::MAX {
            (own, None)
        } else {
            let left = remaining.saturating_sub(rules.ns.margin);
            // Never more than an attempt may be given (a reload may have lowered the timeout).
            let usual = state.traffic.latency.load(Ordering::Relaxed).min(own);
            if left >= usual && left > 0 {
                (own.min(left), None)
            } else {
                match (left > 0).then(|| state.tries_anyway(now, usual)).flatten() {
                    Some(claim) => (left, Some(TrialTurn(Arc::clone(state), claim))),
                    None => return Err(refusal(rules, budget, Refusal::Time { usual, left })),
                }
            }
        };
        // The result is returned as it is: inspecting it here would copy it (a verdict is large).
        self.begin_timed(held, target, budget, retry, now, timeout, claim)
    }

    /// The rest of [`begin_under`](Self::begin_under), with the attempt's timeout worked out:
    /// the breaker, the permits, the host.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn begin_timed<'b>(
        &self,
        held: Rules<'b>,
        target: Option<u32>,
        budget: &'b Budget,
        retry: u32,
        now: u64,
        timeout: u64,
        turn: Option<TrialTurn>,
    ) -> Result<Attempt<'b>, Verdict> {
        let rules: &BackendRules = &held;
        let p = &rules.policy;
        let state = &rules.state;
        let trial = turn.is_some();

        // The backend's breaker.
        let (role, generation, event) = match state.breaker.begin(now, rules.limits(), timeout) {
            Ok(r) => r,
            Err(closed) => return Err(refusal(rules, budget, Refusal::Open(closed))),
        };
        if let Some(kind) = event {
            rules.emit(None, kind, now, generation);
        }
        // From here on, a refusal gives back everything taken so far, neutrally: the attempt is only
        // built once every permit is held.
        let cap = ramped(p.max_in_flight, &state.breaker, rules.ns.ramp_up, now);
        if let Err(full) = state.permits.take(cap, p.max_connecting) {
            release_probe(&state.breaker, role, generation);
            return Err(refusal(rules, budget, Refusal::Full(full, cap)));
        }
        let (mut host, mut host_role, mut host_generation) = (None, breaker::Role::Normal, 0);
        if !rules.hosts.is_empty() {
            match self.choose_host(rules, target, now, timeout) {
                Some((h, r, g)) => (host, host_role, host_generation) = (Some(h), r, g),
                None => {
                    // Nothing was taken on any host; give the backend's permits back, neutrally.
                    state.permits.release(true);
                    release_probe(&state.breaker, role, generation);
                    return Err(no_host(rules, budget, target, now));
                }
            }
        }
        // Only a first attempt that goes ahead earns retries: a breaker refusing a storm of them
        // must not bank a storm of retries for the moment it closes again.
        if retry == 0 {
            state.retry.deposit();
        }
        // A trial that goes ahead keeps its turn; one refused above gave it back as it dropped.
        std::mem::forget(turn);
        Ok(Attempt {
            rules: held,
            host,
            connecting: true,
            role,
            generation,
            host_role,
            host_generation,
            start: now,
            timeout,
            trial,
            done: false,
        })
    }

    /// Picks a host (or checks `target`): not ejected, breaker willing, below its caps; of the first
    /// two such hosts in round-robin order, the one with fewer calls in flight. Takes its permits.
    fn choose_host(
        &self,
        rules: &BackendRules,
        target: Option<u32>,
        now: u64,
        timeout: u64,
    ) -> Option<(u32, breaker::Role, u64)> {
        let state = &rules.state;
        let p = &rules.policy;
        let (n, start) = match target {
            Some(t) if (t as usize) < rules.hosts.len() => (1, t as usize),
            Some(_) => return None,
            None => (rules.hosts.len(), {
                // Round robin by a plain load and store, not a read-modify-write: two threads
                // that race here may start from the same host, which only costs the balance a
                // little, not a locked instruction on a line every caller shares.
                let n = state.traffic.next_host.load(Ordering::Relaxed);
                state
                    .traffic
                    .next_host
                    .store(n.wrapping_add(1), Ordering::Relaxed);
                n as usize
            }),
        };
        // Two candidates at a time: when other threads fill both before this one takes its
        // permits, the scan goes on from where it stopped, so that a free host further on is still
        // found, and after a failed take it may go round the pool once more (hosts that were full
        // when first looked at may have room again). Each host is looked at twice at most.
        let mut scanned = 0;
        let mut limit = n;
        while scanned < limit {
            let mut candidates: [Option<usize>; 2] = [None, None];
            while scanned < limit {
                // `scanned % n`: a second time round covers the same hosts (only `target`'s, when
                // there is one).
                let h = (start + scanned % n) % rules.hosts.len();
                scanned += 1;
                let host = &rules.hosts[h];
                if let Some(generation) = host.readmit_if_due(now, &state.ejected) {
                    rules.emit(
                        Some(&host.name),
                        TransitionKind::Readmitted,
                        now,
                        generation,
                    );
                }
                if host.is_ejected() || !host.breaker.would_admit(now, rules.limits()) {
                    continue;
                }
                let connect_cap = if host.on_probation() {
                    1
                } else {
                    p.max_connecting_per_host
                };
                let cap = ramped(
                    p.max_in_flight_per_host,
                    &host.breaker,
                    rules.ns.ramp_up,
                    now,
                );
                if host.permits.in_flight() >= cap || host.permits.connecting() >= connect_cap {
                    continue;
                }
                if candidates[0].is_none() {
                    candidates[0] = Some(h);
                } else {
                    candidates[1] = Some(h);
                    break;
                }
            }
            // The less loaded of the two first, without allocating.
            let load =
                |h: Option<usize>| h.map_or(u32::MAX, |h| rules.hosts[h].permits.in_flight());
            if load(candidates[1]) < load(candidates[0]) {
                candidates.swap(0, 1);
            }
            for h in candidates.into_iter().flatten() {
                let host = &rules.hosts[h];
                let connect_cap = if host.on_probation() {
                    1
                } else {
                    p.max_connecting_per_host
                };
                let Ok((role, generation, event)) =
                    host.breaker.begin(now, rules.limits(), timeout)
                else {
                    continue;
                };
                // Reported whether or not the host then has room: the breaker has moved.
                if let Some(kind) = event {
                    rules.emit(Some(&host.name), kind, now, generation);
                }
                let cap = ramped(
                    p.max_in_flight_per_host,
                    &host.breaker,
                    rules.ns.ramp_up,
                    now,
                );
                if host.permits.take(cap, connect_cap).is_err() {
                    release_probe(&host.breaker, role, generation);
                    limit = 2 * n;
                    continue;
                }
                return Some((h as u32, role, generation));
            }
        }
        None
    }

    /// May the request retry its call to `backend` after `outcome`, and after how long?
    ///
    /// No when the outcome is not worth retrying (success, client error, cancellation, a timeout
    /// reported by the layer below, a refusal without Retry-After); when the time the request has left
    /// cannot cover the backoff and a typical call; when the request tree's retry allowance is spent
    /// (shared through its budget and propagated headers); when the backend's breaker will still refuse
    /// attempts once the backoff is over (open, or half-open with every probe out); or when the
    /// backend's retry budget is empty. A no takes neither a retry nor a token.
    /// Yes after a backoff with full jitter (`attempt` is the number of attempts made so far), never
    /// sooner than the backend's own Retry-After. A yes takes one retry from the tree and one token
    /// from the backend.
    ///
    /// The time left is read from the clock's coarse reading ([`Clock::coarse`], at most about a
    /// millisecond behind with the default clock): a decision does not need more precision, and a
    /// precise reading would cost more than the rest of the decision.
    pub fn retry(
        &self,
        backend: Backend,
        budget: &Budget,
        outcome: AttemptOutcome,
        attempt: u32,
    ) -> RetryDecision {
        match self.rules(backend, budget) {
            Some(rules) => Self::retry_with(&rules, budget, outcome, attempt),
            None => RetryDecision::Stop(
                Verdict::new(Reason::UnknownClass, Retry::Never).with_request(budget.request_id()),
            ),
        }
    }

    fn retry_with(
        rules: &BackendRules,
        budget: &Budget,
        outcome: AttemptOutcome,
        attempt: u32,
    ) -> RetryDecision {
        let p = &rules.policy;

        let state = &rules.state;
        let stop = |reason: Reason, retry: Retry| {
            state.refusals.retry(reason);
            RetryDecision::Stop(
                Verdict::new(reason, retry)
                    .with_class(&p.name)
                    .with_request(budget.request_id()),
            )
        };
        // Integer nanoseconds throughout: `Duration` arithmetic and a float jitter were a third of
        // a decision's cost.
        let floor = match outcome {
            AttemptOutcome::ServerError
            | AttemptOutcome::Timeout
            | AttemptOutcome::ConnectFailure => 0,
            AttemptOutcome::Refused {
                retry_after: Some(d),
            } => duration_to_nanos(d),
            _ => return stop(Reason::NotRetryable, Retry::Never),
        };
        let (base, cap) = (rules.ns.backoff_base, rules.ns.backoff_max);
        // The first retry (after one attempt) backs off up to `base`, each later one up to twice
        // the one before.
        let ceiling = base
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(cap);
        let backoff = state.jitter(ceiling).max(floor);
        // The coarse reading: a decision needs the time left to about a millisecond, and the
        // precise one (`Instant::now()` behind the production clock) would cost more than the rest
        // of the decision together.
        let clock_now = rules.clock.coarse();
        let remaining = budget.remaining_nanos_by(&rules.clock, clock_now);
        if remaining != u64::MAX {
            let usual = state
                .traffic
                .latency
                .load(Ordering::Relaxed)
                .min(rules.ns.timeout);
            let need = backoff
                .saturating_add(usual)
                .saturating_add(rules.ns.margin);
            // What the attempt after the backoff needs: some time left after the margin, and at
            // least the usual latency (as `begin_attempt` checks).
            if remaining < need || remaining <= backoff.saturating_add(rules.ns.margin) {
                state.refusals.retry(Reason::InsufficientTime);
                return RetryDecision::Stop(
                    Verdict::new(Reason::InsufficientTime, Retry::Never)
                        .with_class(&p.name)
                        .with_dimension(&state.names[N_TIME], Unit::Nanos)
                        .with_amounts(need, 0, remaining)
                        .with_request(budget.request_id()),
                );
            }
        }
        // A retry the backend's breaker will refuse when the backoff is over spends nothing: no
        // token, none of the tree's allowance. One load when the breaker is closed.
        if let Err(closed) = state
            .breaker
            .would_begin(clock_now.as_nanos().saturating_add(backoff), rules.limits())
        {
            return RetryDecision::Stop(refused_by_breaker(rules, budget, closed, backoff));
        }
        // The backend's token first, the tree's retry last: a refusal by the tree is final (it
        // cancels the request), so the tree must never be charged for a retry something else then
        // refuses, even for a moment. A token held for an instant only delays another request.
        if !state.retry.try_withdraw(clock_now.as_nanos()) {
            return stop(Reason::RetryBudgetExhausted, Retry::Later);
        }
        // The root's compare-and-swap alone in the usual case; a refusal (or a budget with
        // ancestors) takes the full charge, which tries again and explains itself.
        if budget.try_charge_bare(Counter::RETRIES, 1) != Some(true) {
            if let Err(v) = budget.try_retry() {
                state.retry.give_back();
                state.refusals.retry(v.reason());
                return RetryDecision::Stop(v);
            }
        }
        RetryDecision::After(Duration::from_nanos(backoff))
    }

    /// Calls `backend` through `f`, retrying as [`retry`](Self::retry) allows. `f` gets the attempt
    /// (its host and timeout) and returns the result with the outcome to record; `sleep` waits out a
    /// backoff (`std::thread::sleep` in a blocking service, a manual clock's `advance` in a test).
    ///
    /// ```
    /// use costguard::backend::CallError;
    /// use costguard::{AttemptOutcome, Engine, Policy, Reason, RequestId};
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c.wall_time(Duration::from_secs(10)).retries(2))
    ///     .backend("db", |b| b.duration("timeout", Duration::from_millis(500)))
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let db = engine.backend("db").unwrap();
    /// let budget = engine.begin_by_name("api", RequestId::new("r1").unwrap()).unwrap();
    ///
    /// // A query that keeps timing out: tried once, retried twice (the tree's allowance), no more.
    /// // (A service passes `std::thread::sleep` to wait out each backoff; this example skips them.)
    /// let mut tries = 0;
    /// let result: Result<u32, _> = engine.call(db, &budget, |_backoff| {}, |attempt| {
    ///     tries += 1;
    ///     assert!(attempt.timeout() <= Duration::from_millis(500));
    ///     Err(("query timed out", AttemptOutcome::Timeout))
    /// });
    /// match result {
    ///     Err(CallError::Failed(error, why)) => {
    ///         assert_eq!(error, "query timed out");
    ///         assert_eq!(why.reason(), Reason::LimitExceeded); // the tree's retries are spent
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(tries, 3);
    /// ```
    pub fn call<T, E>(
        &self,
        backend: Backend,
        budget: &Budget,
        mut sleep: impl FnMut(Duration),
        mut f: impl FnMut(&mut Attempt<'_>) -> Result<T, (E, AttemptOutcome)>,
    ) -> Result<T, CallError<E>> {
        let mut n = 0u32;
        loop {
            let mut attempt = self
                .begin_attempt(backend, budget, n)
                .map_err(CallError::Refused)?;
            n = n.saturating_add(1);
            match f(&mut attempt) {
                Ok(value) => {
                    attempt.finish(AttemptOutcome::Success);
                    return Ok(value);
                }
                Err((error, outcome)) => {
                    attempt.finish(outcome);
                    match self.retry(backend, budget, outcome, n) {
                        RetryDecision::After(d) => sleep(d),
                        RetryDecision::Stop(v) => return Err(CallError::Failed(error, v)),
                    }
                }
            }
        }
    }

    /// The state of every backend of the current policy and of its hosts, in the policy's order.
    pub fn backend_stats(&self) -> Vec<BackendStats> {
        let snapshot = self.snapshot();
        let now = self.clock().now().as_nanos();
        snapshot
            .policy
            .backends()
            .iter()
            .filter_map(|b| snapshot.backend(snapshot.backend_by_name(b.name())?))
            .map(|r| {
                let s = &r.state;
                let (in_flight, connecting) = s.permits.counts();
                BackendStats {
                    backend: r.policy.name.to_string(),
                    breaker: state_name(s.breaker.state()),
                    in_flight,
                    connecting,
                    retry_tokens: s.retry.balance_at(now) / retry_budget::TOKEN,
                    outcomes: OUTCOMES
                        .iter()
                        .zip(&s.traffic.outcomes)
                        .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
                        .collect(),
                    refused: Refusals::read(&s.refusals.attempts, &ATTEMPT_REFUSALS),
                    retries_refused: Refusals::read(&s.refusals.retries, &RETRY_REFUSALS),
                    hosts: r
                        .hosts
                        .iter()
                        .map(|h| {
                            let (in_flight, connecting) = h.permits.counts();
                            HostStats {
                                host: h.name.to_string(),
                                breaker: state_name(h.breaker.state()),
                                ejected: h.is_ejected_at(now),
                                in_flight,
                                connecting,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Records an outcome in a breaker's window and says whether the window's ratios now call for
/// opening. `calls` reads the owner's running total of calls (the window's unit, see
/// [`window`]) and `count` adds this outcome to it, after the window has seen it.
///
/// A failure or a slow call of an attempt that began under another generation of the breaker counts
/// as a call only: it belongs to a period the breaker has left (a call begun before an outage that
/// ends after the breaker closed again), whose failures the window forgot when the breaker closed.
#[allow(clippy::too_many_arguments)]
fn record(
    cell: &BreakerCell,
    generation: u64,
    rules: &BackendRules,
    now: u64,
    v: breaker::Verdict,
    slow: bool,
    calls: impl Fn() -> u64,
    count: impl FnOnce(),
) -> bool {
    if v == breaker::Verdict::Neutral {
        count();
        return false;
    }
    let (b, span) = (&rules.policy.breaker, rules.ns.window);
    if (v == breaker::Verdict::Failure || slow)
        && breaker::Word::unpack(cell.word.load(Ordering::Acquire)).generation != generation
    {
        cell.window.record(now, span, &calls, false, false);
        count();
        return false;
    }
    cell.window
        .record(now, span, &calls, v == breaker::Verdict::Failure, slow);
    count();
    if v == breaker::Verdict::Success && !slow {
        // A fast success lowers both ratios: it cannot be the call that trips the breaker, so the
        // window's totals are not read. (A breaker whose ratios were already over their thresholds
        // when the window reached `min_calls` opens at the next failure.)
        return false;
    }
    let t = cell.window.totals(now, span, calls());
    t.calls >= u64::from(b.min_calls)
        && (t.failures * 1000 >= u64::from(b.failure_ratio) * t.calls
            || t.slow * 1000 >= u64::from(b.slow_ratio) * t.calls)
}

/// Gives a probe slot back when an attempt that took one goes no further.
fn release_probe(cell: &BreakerCell, role: breaker::Role, generation: u64) {
    if role == breaker::Role::Probe {
        cell.finish(
            role,
            generation,
            breaker::Verdict::Neutral,
            false,
            u64::MAX,
            u64::MAX,
            |_| 0,
            0,
        );
    }
}

/// The in-flight cap during a breaker's ramp-up after closing: grows from 1 to `max` over `ramp`.
fn ramped(max: u32, cell: &BreakerCell, ramp: u64, now: u64) -> u32 {
    let closed_at = cell.closed_at.load(Ordering::Acquire);
    if ramp == 0 || closed_at == 0 || cell.state() != breaker::CLOSED {
        return max;
    }
    // A closing time still ahead is one a clock that stepped back left behind: not a ramp.
    let elapsed = now.wrapping_sub(closed_at);
    if now < closed_at || elapsed >= ramp {
        return max;
    }
    ((u128::from(max) * u128::from(elapsed) / u128::from(ramp)) as u32).max(1)
}

fn state_name(state: u64) -> &'static str {
    match state {
        breaker::CLOSED => "closed",
        breaker::OPEN => "open",
        _ => "half_open",
    }
}

fn count_of(counts: &[(&'static str, u64)], name: &str) -> u64 {
    counts
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, c)| *c)
}

/// The state of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend.
    pub backend: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Calls in flight.
    pub in_flight: u32,
    /// Connection attempts in progress.
    pub connecting: u32,
    /// Whole tokens in its retry budget.
    pub retry_tokens: u64,
    /// Attempts by outcome.
    pub outcomes: Vec<(&'static str, u64)>,
    /// Attempts refused before they began, by reason ([`Reason::as_str`] names): the circuit
    /// open, a bulkhead full, no healthy host, too little time left, ...
    pub refused: Vec<(&'static str, u64)>,
    /// Retries refused, by reason: not worth retrying, no time for one, the backend's retry budget
    /// empty, the request tree's allowance spent (`limit_exceeded`), ...
    pub retries_refused: Vec<(&'static str, u64)>,
    /// Its hosts.
    pub hosts: Vec<HostStats>,
}

impl BackendStats {
    /// Attempts refused for `reason`.
    pub fn refused_for(&self, reason: Reason) -> u64 {
        count_of(&self.refused, reason.as_str())
    }

    /// Retries refused for `reason`.
    pub fn retries_refused_for(&self, reason: Reason) -> u64 {
        count_of(&self.retries_refused, reason.as_str())
    }

    /// Attempts that ended with `outcome` (by [`AttemptOutcome::as_str`] name).
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.outcomes
            .iter()
            .find(|(n, _)| *n == outcome)
            .map_or(0, |(_, c)| *c)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&HostStats> {
        self.hosts.iter().find(|h| h.host == name)
    }
}

/// The state of one host.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// The host.
    pub host: String,
    /// Its breaker.
    pub breaker: &'static str,
    /// Whether it is ejected from the pool.
    pub ejected: bool,
    /// Calls in flight.
    pub in_flight: u32,
    /// Connection attempts in progress.
    pub connecting: u32,
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Success,
        AttemptOutcome::ClientError,
        AttemptOutcome::ServerError,
        AttemptOutcome::Timeout,
        AttemptOutcome::UpstreamTimeout,
        AttemptOutcome::ConnectFailure,
        AttemptOutcome::Refused {
            retry_after: Some(Duration::from_secs(1)),
        },
        AttemptOutcome::Cancelled,
    ];

    /// The tables a completion reads by index say of each outcome what the outcome itself says.
    #[test]
    fn outcome_tables_follow_the_outcomes() {
        for outcome in ALL {
            let i = outcome.index();
            assert_eq!(OUTCOMES[i], outcome.as_str());
            let neutral = matches!(
                outcome,
                AttemptOutcome::ClientError | AttemptOutcome::Cancelled
            );
            let expected = match outcome {
                AttemptOutcome::Success => breaker::Verdict::Success,
                _ if neutral => breaker::Verdict::Neutral,
                _ => breaker::Verdict::Failure,
            };
            assert_eq!(VERDICTS[i], expected, "{outcome:?}");
            assert_eq!(
                matches!(i, NEUTRAL_CLIENT | NEUTRAL_CANCELLED),
                neutral,
                "{outcome:?}"
            );
            assert_eq!(i == SUCCESS, outcome == AttemptOutcome::Success);
            assert_eq!(i == TIMEOUT, outcome == AttemptOutcome::Timeout);
            assert_eq!(
                i == CONNECT_FAILURE,
                outcome == AttemptOutcome::ConnectFailure
            );
        }
        let mut seen: Vec<usize> = ALL.iter().map(|o| o.index()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ALL.len(), "every outcome has its own index");
    }
}

//! The reference model for `backend_ops`: one backend driven through the public API (attempts begun,
//! connected, finished or dropped; retries asked for; the manual clock moved), checked after every
//! step against sequential models of its circuit breaker, sliding window, bulkheads and retry budget.
//!
//! - **Breaker**: closed (failures in a row), open (until a time known only as a range, since the open
//!   time is jittered into `[half, all]` of `min(open_for × 2^(n-1), max_open_for)`; a refusal's
//!   Retry-After pins it down exactly, an admission bounds it from above), half-open (probes in flight,
//!   probe successes). Every transition starts a new generation, and a probe's finish counts only in
//!   the generation it began in (an attempt that was not a probe counts whenever the breaker is
//!   closed, as the engine does, even if it began in an earlier closed period). Probes that all hung
//!   past their timeout give their slots back to a new probing period. After closing, the in-flight
//!   cap ramps up from 1 to the maximum.
//! - **Window**: a call counts while its tenth-of-the-window slice is one of the last ten; the window
//!   trips when it holds at least `min_calls` calls and failures or slow calls reach their ratio, on
//!   any call but a fast success (which lowers both ratios). It is emptied when the breaker closes.
//! - **Retry budget**, in thousandths of a token: a first attempt that goes ahead deposits `ratio`;
//!   a granted retry withdraws 1000; the floor adds `min_per_second × 1000` per second, counted when a retry asks,
//!   from the last time it added anything; the balance never exceeds `max(10, 10 × min_per_second)`
//!   tokens and starts at one second of floor.
//! - **Retry decisions**: retryable outcomes, time left (ranges, since the backoff is jittered), the
//!   backend's breaker when the backoff is over (a refusal by an open one pins its open time), the
//!   backend's budget, then the request tree's allowance (which, if it refuses, gets the backend's
//!   token given back); the backoff lies between the Retry-After and
//!   `min(base × 2^(attempt - 1), max)`.
//! - **Bulkheads**: calls in flight and connection attempts in progress, each under its cap.
//! - **Hosts** (when the backend has a pool): each host's breaker and window as above, and its
//!   ejection: ejected after `ejection.consecutive_failures` connect failures or timeouts in a row
//!   (only a success breaks the run) if fewer than the configured share of the pool is out, for
//!   `base × 2^(n-1)` capped (its end rounded down to 65,536 ns); readmitted on probation (one
//!   connection attempt at a time, ejected again by its first failure, proven by its first
//!   success) when a host choice visits it after its ejection is over, or when a failure that
//!   counts finds every place of the share taken (then every host of the attempt's pool whose
//!   ejection is over comes back first, in that pool's order). A connect failure or timeout of an
//!   attempt begun before its host's last readmission counts for nothing, and its success does not
//!   end the probation. The choice is the documented one: visiting hosts in round-robin order
//!   (or only the one asked for with `begin_attempt_on`), of the first two that are not ejected,
//!   below their caps and whose breaker is willing, the one with fewer calls in flight;
//!   `NoHealthyHost` when there is none, told to come back `Later` when a host is only busy, or
//!   `After` the nearest end of an ejection or open breaker when every host is out. See
//!   [`World::choose_host`].
//!
//! - **Reloads** change the pool (which of the three hosts, in what order) and the ejection share,
//!   nothing else. Every host keeps its state in or out of the pool; a host taken out while ejected
//!   has its ejection ended (reported as such) and is never ejected while out; a smaller share
//!   readmits the excess at once, soonest-ending first, on probation. Attempts held across a reload
//!   finish under their own version; new ones come from a request of the new version. See
//!   [`World::reload`].
//!
//! Every transition the engine reports (opened, half-opened, closed, ejected) must be the model's,
//! at the same time, and the stats (breaker states, calls in flight and connecting per backend and
//! per host, retry tokens, outcome counts, ejections) must match after every step.

use costguard::backend::{Transition, TransitionKind};
use costguard::clock::ManualClock;
use costguard::{
    Attempt, AttemptOutcome, Backend, Budget, Counter, Engine, Policy, Reason, RequestId, Retry,
    RetryDecision, Verdict,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;
/// The class's wall time: far longer than any run (at most a few thousand seconds of clock moves), so
/// that time never refuses an attempt, nor a retry unless its Retry-After is longer still.
pub const WALL: u64 = 100_000 * SEC;
/// Kept back from the request's remaining time when deriving an attempt's timeout.
pub const MARGIN: u64 = 5 * MS;
/// The most attempts held at once.
pub const MAX_HELD: usize = 8;
/// The pool, when there is one: the first `hosts` of these.
pub const HOSTS: [&str; 3] = ["h0", "h1", "h2"];
/// `breaker.min_calls` when the window is meant to stay out of it (the largest value allowed).
pub const NO_WINDOW: u32 = 1 << 24;
/// A `breaker.slow_ratio` above 1000 per mille: not set, so slow calls never trip the breaker.
pub const SLOW_OFF: u16 = 1001;

const BUCKETS: u64 = 10;
/// A probe deadline's resolution: the engine keeps it in one word with its period's generation.
const DEADLINE_STEP: u64 = 1 << 16;
const TOKEN: u64 = 1000;

/// The policy of the one backend and the one class.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Hosts in the pool (0: one logical host).
    pub hosts: usize,
    pub max_in_flight: u32,
    pub max_in_flight_per_host: u32,
    pub max_connecting: u32,
    pub max_connecting_per_host: u32,
    pub timeout: u64,
    pub consecutive: u32,
    pub probes: u32,
    pub open_for: u64,
    pub max_open_for: u64,
    pub ramp_up: u64,
    pub window: u64,
    pub min_calls: u32,
    /// Per mille.
    pub failure_ratio: u16,
    /// Per mille; [`SLOW_OFF`] when not set.
    pub slow_ratio: u16,
    pub slow_call: u64,
    pub eject_after: u32,
    pub eject_base: u64,
    pub eject_max: u64,
    /// Per mille.
    pub max_ejected: u16,
    /// Per mille.
    pub retry_ratio: u16,
    pub min_per_second: u32,
    pub backoff_base: u64,
    pub backoff_max: u64,
    /// The request tree's retry allowance (`None`: no limit).
    pub tree_retries: Option<u64>,
}

impl Setup {
    /// The first `hosts` of [`HOSTS`], in order: the pool a run starts with.
    pub fn pool(&self) -> Vec<usize> {
        (0..self.hosts).collect()
    }

    pub fn policy(&self) -> Policy {
        self.policy_for(&self.pool(), self.max_ejected)
    }

    /// The policy with this pool (indices into [`HOSTS`], in the pool's order) and ejection share.
    pub fn policy_for(&self, pool: &[usize], max_ejected: u16) -> Policy {
        let d = Duration::from_nanos;
        let names: Vec<&str> = pool.iter().map(|&x| HOSTS[x]).collect();
        let fraction = |permille: u16| f64::from(permille) / 1000.0;
        Policy::builder()
            .class("api", |c| {
                let c = c.wall_time(d(WALL));
                match self.tree_retries {
                    Some(n) => c.retries(n),
                    None => c,
                }
            })
            .backend("be", |b| {
                let b = b
                    .hosts(&names)
                    .duration("timeout", d(self.timeout))
                    .duration("margin", d(MARGIN))
                    .count("max_in_flight", u64::from(self.max_in_flight))
                    .count(
                        "max_in_flight_per_host",
                        u64::from(self.max_in_flight_per_host),
                    )
                    .count("max_connecting", u64::from(self.max_connecting))
                    .count(
                        "max_connecting_per_host",
                        u64::from(self.max_connecting_per_host),
                    )
                    .count("breaker.consecutive_failures", u64::from(self.consecutive))
                    .count("breaker.probes", u64::from(self.probes))
                    .duration("breaker.open_for", d(self.open_for))
                    .duration("breaker.max_open_for", d(self.max_open_for))
                    .duration("breaker.ramp_up", d(self.ramp_up))
                    .duration("breaker.window", d(self.window))
                    .count("breaker.min_calls", u64::from(self.min_calls))
                    .fraction("breaker.failure_ratio", fraction(self.failure_ratio))
                    .duration("breaker.slow_call", d(self.slow_call))
                    .count("ejection.consecutive_failures", u64::from(self.eject_after))
                    .duration("ejection.base", d(self.eject_base))
                    .duration("ejection.max", d(self.eject_max))
                    .fraction("ejection.max_ejected", fraction(max_ejected))
                    .fraction("retry.ratio", fraction(self.retry_ratio))
                    .count("retry.min_per_second", u64::from(self.min_per_second))
                    .duration("retry.backoff_base", d(self.backoff_base))
                    .duration("retry.backoff_max", d(self.backoff_max));
                if self.slow_ratio <= 1000 {
                    b.fraction("breaker.slow_ratio", fraction(self.slow_ratio))
                } else {
                    b
                }
            })
            .build()
            .expect("the decoded policy is valid")
    }
}

/// One step of a run.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `begin_attempt` with this retry number, or `begin_attempt_on` host `on` (modulo the pool's
    /// size); kept if admitted (while fewer than [`MAX_HELD`] are held).
    Begin { retry: u32, on: Option<u8> },
    /// Begin, and if admitted finish at once with this outcome.
    Call {
        retry: u32,
        on: Option<u8>,
        outcome: AttemptOutcome,
    },
    /// `connected()` on a held attempt.
    Connected { slot: u8 },
    /// `finish` a held attempt.
    Finish { slot: u8, outcome: AttemptOutcome },
    /// Drop a held attempt unfinished.
    Drop { slot: u8 },
    /// Move the clock forward.
    Advance { ns: u64 },
    /// Move the clock to a time that matters to a breaker or an ejection (see
    /// [`World::advance_to`]).
    AdvanceTo { which: u8 },
    /// `Engine::retry`.
    Retry {
        outcome: AttemptOutcome,
        attempt: u32,
    },
    /// Reload the policy with this pool (indices into [`HOSTS`], the first `len` of `order`) and
    /// ejection share, the rest unchanged; then go on with a request of the new version. Only when
    /// the backend has a pool.
    Reload {
        order: [u8; 3],
        len: u8,
        max_ejected: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Normal,
    Probe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judgement {
    Success,
    Failure,
    Neutral,
}

fn judge(o: AttemptOutcome) -> Judgement {
    match o {
        AttemptOutcome::Success => Judgement::Success,
        AttemptOutcome::ClientError | AttemptOutcome::Cancelled => Judgement::Neutral,
        _ => Judgement::Failure,
    }
}

const OUTCOME_NAMES: [&str; 8] = [
    "success",
    "client_error",
    "server_error",
    "timeout",
    "upstream_timeout",
    "connect_failure",
    "refused",
    "cancelled",
];

fn outcome_index(o: AttemptOutcome) -> usize {
    let name = o.as_str();
    OUTCOME_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("unknown outcome {o:?}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u64,
    },
    /// Open until some time in `lo..=hi`.
    Open {
        lo: u64,
        hi: u64,
    },
    HalfOpen {
        probes: u64,
        successes: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Call {
    /// The tenth-of-the-window slice it ended in, counting from 1.
    slice: u64,
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
struct Breaker {
    state: State,
    /// Times opened in a row.
    opened: u64,
    generation: u64,
    /// When every probe in flight has timed out.
    probe_deadline: u64,
    closed_at: Option<u64>,
    calls: Vec<Call>,
    /// Transitions not yet compared with the engine's.
    events: Vec<(TransitionKind, u64)>,
}

/// What the breaker says to an attempt.
enum Gate {
    Admit(Role, u64),
    Refuse(Retry),
}

impl Breaker {
    fn new() -> Self {
        Breaker {
            state: State::Closed { failures: 0 },
            opened: 0,
            generation: 0,
            probe_deadline: 0,
            closed_at: None,
            calls: Vec::new(),
            events: Vec::new(),
        }
    }

    fn name(&self) -> &'static str {
        match self.state {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// An in-flight cap of `max` at `now`: ramps up from 1 after the breaker closes.
    fn ramped(&self, max: u32, now: u64, s: &Setup) -> u32 {
        match (self.state, self.closed_at) {
            (State::Closed { .. }, Some(at)) if s.ramp_up > 0 => {
                let elapsed = now - at;
                if elapsed >= s.ramp_up {
                    max
                } else {
                    let share = u128::from(max) * u128::from(elapsed) / u128::from(s.ramp_up);
                    u32::try_from(share).expect("below max").max(1)
                }
            }
            _ => max,
        }
    }

    /// Open, and whether its open time is over at `now` is not known.
    fn unsure(&self, now: u64) -> bool {
        matches!(self.state, State::Open { lo, hi } if lo <= now && now < hi)
    }

    /// `seen` is the engine's answer when it refused with `CircuitOpen`, which settles what the model
    /// cannot know (the jittered open time).
    fn begin(&mut self, now: u64, seen: Option<Retry>, s: &Setup) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Admit(Role::Normal, self.generation),
            State::Open { lo, hi } => match seen {
                Some(Retry::After(d)) => {
                    let until = now
                        .checked_add(u64::try_from(d.as_nanos()).expect("a short Retry-After"))
                        .expect("no overflow");
                    assert!(
                        d > Duration::ZERO && (lo..=hi).contains(&until),
                        "open breaker refused until {until} (Retry-After {d:?} at {now}), but it \
                         opened until some time in {lo}..={hi}"
                    );
                    self.state = State::Open {
                        lo: until,
                        hi: until,
                    };
                    Gate::Refuse(Retry::After(d))
                }
                Some(other) => panic!("open breaker refused with {other:?}, not a Retry-After"),
                None => {
                    assert!(
                        now >= lo,
                        "open breaker let an attempt through at {now}, but it opened until at \
                         least {lo}"
                    );
                    self.generation += 1;
                    self.state = State::HalfOpen {
                        probes: 0,
                        successes: 0,
                    };
                    self.probe_deadline = 0;
                    self.events.push((TransitionKind::HalfOpened, now));
                    self.take_probe(now, s)
                }
            },
            State::HalfOpen { probes, .. } if probes < u64::from(s.probes) => {
                self.take_probe(now, s)
            }
            State::HalfOpen { .. } if now >= self.probe_deadline => {
                // Every probe in flight hung past its timeout: a new probing period.
                self.generation += 1;
                self.state = State::HalfOpen {
                    probes: 0,
                    successes: 0,
                };
                self.probe_deadline = 0;
                self.events.push((TransitionKind::ProbesRestarted, now));
                self.take_probe(now, s)
            }
            State::HalfOpen { .. } => Gate::Refuse(Retry::Later),
        }
    }

    fn take_probe(&mut self, now: u64, s: &Setup) -> Gate {
        let State::HalfOpen { probes, .. } = &mut self.state else {
            unreachable!("probes are taken when half-open")
        };
        *probes += 1;
        // The period's latest probe timeout, rounded up to the next 65,536 ns.
        let at = (now + s.timeout).div_ceil(DEADLINE_STEP) * DEADLINE_STEP;
        self.probe_deadline = self.probe_deadline.max(at);
        Gate::Admit(Role::Probe, self.generation)
    }

    /// An admitted attempt refused further on gives its probe slot back.
    fn release(&mut self, role: Role, generation: u64) {
        if let (State::HalfOpen { probes, .. }, Role::Probe) = (&mut self.state, role) {
            if generation == self.generation {
                *probes = probes.saturating_sub(1);
            }
        }
    }

    fn open(&mut self, now: u64, s: &Setup) {
        self.opened = (self.opened + 1).min(63);
        let full = s
            .open_for
            .saturating_mul(1 << (self.opened - 1).min(32))
            .min(s.max_open_for);
        self.state = State::Open {
            lo: now + full / 2,
            hi: now + full,
        };
        self.generation += 1;
        self.events.push((TransitionKind::Opened, now));
    }

    /// Records a call of an attempt begun in `generation` in the window; whether the window now
    /// calls for opening. A failure or slow call from another period counts as a call only.
    fn record(&mut self, now: u64, generation: u64, failed: bool, slow: bool, s: &Setup) -> bool {
        let width = (s.window / BUCKETS).max(1);
        let current = now / width + 1;
        let stale = (failed || slow) && generation != self.generation;
        self.calls.push(Call {
            slice: current,
            failed: failed && !stale,
            slow: slow && !stale,
        });
        if stale {
            return false;
        }
        let inside = self
            .calls
            .iter()
            .filter(|c| c.slice + BUCKETS > current && c.slice <= current);
        if !failed && !slow {
            return false;
        }
        let (mut calls, mut failures, mut slows) = (0u64, 0u64, 0u64);
        for c in inside {
            calls += 1;
            failures += u64::from(c.failed);
            slows += u64::from(c.slow);
        }
        // A ratio of 0 is off.
        let ratio = |r: u16| {
            if r == 0 {
                u64::from(SLOW_OFF)
            } else {
                u64::from(r)
            }
        };
        calls >= u64::from(s.min_calls)
            && (failures * 1000 >= ratio(s.failure_ratio) * calls
                || slows * 1000 >= ratio(s.slow_ratio) * calls)
    }

    fn finish(
        &mut self,
        role: Role,
        generation: u64,
        v: Judgement,
        trip: bool,
        now: u64,
        s: &Setup,
    ) {
        match (self.state, role) {
            (State::Closed { failures }, Role::Normal) if generation == self.generation => {
                let failures = match v {
                    Judgement::Success => 0,
                    Judgement::Failure => failures + 1,
                    Judgement::Neutral => return,
                };
                if (v == Judgement::Failure && failures >= u64::from(s.consecutive)) || trip {
                    self.open(now, s);
                } else {
                    self.state = State::Closed { failures };
                }
            }
            (State::HalfOpen { probes, successes }, Role::Probe)
                if generation == self.generation =>
            {
                match v {
                    Judgement::Success if successes + 1 >= u64::from(s.probes) => {
                        self.state = State::Closed { failures: 0 };
                        self.opened = 0;
                        self.generation += 1;
                        self.closed_at = Some(now);
                        self.calls.clear();
                        self.events.push((TransitionKind::Closed, now));
                    }
                    // A success keeps its slot: `probes` probes per period.
                    Judgement::Success => {
                        self.state = State::HalfOpen {
                            probes,
                            successes: successes + 1,
                        }
                    }
                    Judgement::Failure => self.open(now, s),
                    Judgement::Neutral => {
                        self.state = State::HalfOpen {
                            probes: probes.saturating_sub(1),
                            successes,
                        }
                    }
                }
            }
            // From an earlier period: the breaker has moved on.
            _ => {}
        }
    }
}

#[derive(Debug)]
struct RetryBudget {
    /// Thousandths of a token.
    balance: u64,
    /// When the floor last added anything.
    refilled: u64,
    deposit: u64,
    floor: u64,
    cap: u64,
}

impl RetryBudget {
    fn new(s: &Setup) -> Self {
        let floor = u64::from(s.min_per_second);
        let cap = (10 * floor).max(10) * TOKEN;
        RetryBudget {
            balance: cap.min(floor * TOKEN),
            refilled: 0,
            deposit: u64::from(s.retry_ratio),
            floor,
            cap,
        }
    }

    fn deposit(&mut self) {
        self.balance = (self.balance + self.deposit).min(self.cap);
    }

    fn give_back(&mut self) {
        self.balance = (self.balance + TOKEN).min(self.cap);
    }

    /// What the stats show at `now`: the balance plus the floor earned since the last refill, up
    /// to the cap.
    fn shown(&self, now: u64) -> u64 {
        let earned = u128::from(now.saturating_sub(self.refilled)) * u128::from(self.floor * TOKEN)
            / u128::from(SEC);
        (u128::from(self.balance) + earned).min(u128::from(self.cap.max(self.balance))) as u64
    }

    fn try_withdraw(&mut self, now: u64) -> bool {
        if now > self.refilled {
            let per_second = u128::from(self.floor * TOKEN);
            let earned = u128::from(now - self.refilled) * per_second / u128::from(SEC);
            if earned > 0 {
                // The time the earned thousandths stand for, rounded up; the rest carries over,
                // unless a full budget's worth was earned.
                self.refilled = if earned >= u128::from(self.cap) {
                    now
                } else {
                    let paid = (earned * u128::from(SEC)).div_ceil(per_second);
                    self.refilled + u64::try_from(paid).expect("at most now")
                };
                self.balance = (self.balance + u64::try_from(earned).expect("small")).min(self.cap);
            }
        }
        match self.balance.checked_sub(TOKEN) {
            Some(b) => {
                self.balance = b;
                true
            }
            None => false,
        }
    }
}

/// A host's ejection state.
#[derive(Clone, Copy, Debug, Default)]
struct Ejection {
    /// Connect failures or timeouts in a row.
    fails: u64,
    /// Ejections in a row.
    ejections: u64,
    ejected: bool,
    probation: bool,
    /// When an ejection ends.
    until: u64,
}

impl Ejection {
    /// An attempt on the host ended; true if that ejects it (`room`: fewer than the most hosts that
    /// may be out are out; `in_pool`: the current policy lists the host, and only then is it
    /// ejected).
    fn on_outcome(
        &mut self,
        outcome: AttemptOutcome,
        now: u64,
        room: bool,
        in_pool: bool,
        s: &Setup,
    ) -> bool {
        if self.ejected {
            return false;
        }
        if outcome == AttemptOutcome::Success {
            // Proven: probation ends and past ejections are forgiven.
            *self = Ejection::default();
            return false;
        }
        if !counts(outcome) {
            return false;
        }
        self.fails += 1;
        if (self.fails >= u64::from(s.eject_after) || self.probation) && room && in_pool {
            self.ejections += 1;
            let length = s
                .eject_base
                .saturating_mul(1 << (self.ejections - 1).min(32))
                .min(s.eject_max);
            *self = Ejection {
                fails: 0,
                ejections: self.ejections,
                ejected: true,
                probation: false,
                // Kept to 65,536 ns, rounded down (the end shares its word with a generation).
                until: (now + length) & !0xffff,
            };
            return true;
        }
        false
    }
}

/// An outcome that counts toward ejecting its host.
fn counts(outcome: AttemptOutcome) -> bool {
    matches!(
        outcome,
        AttemptOutcome::ConnectFailure | AttemptOutcome::Timeout
    )
}

#[derive(Debug)]
struct Host {
    breaker: Breaker,
    eject: Ejection,
    /// When the host last came back from an ejection (0: never).
    readmitted_at: u64,
    in_flight: u32,
    connecting: u32,
}

struct Held {
    /// Owned: it is kept beside the budget it was begun for.
    attempt: Attempt<'static>,
    role: Role,
    generation: u64,
    start: u64,
    connecting: bool,
    /// The host (an index into [`HOSTS`]), with the role and generation its breaker let the
    /// attempt through in.
    host: Option<(usize, Role, u64)>,
    /// The pool of the policy version the attempt began under.
    pool: Vec<usize>,
}

struct World<'a> {
    s: &'a Setup,
    engine: Engine,
    clock: ManualClock,
    backend: Backend,
    budget: Budget,
    log: Arc<Mutex<Vec<Transition>>>,
    /// Transitions reported by the engine, not yet compared.
    pending: Vec<Transition>,
    now: u64,
    breaker: Breaker,
    retry: RetryBudget,
    tree_used: u64,
    /// Smoothed latency of successes (0: none yet).
    latency: u64,
    in_flight: u32,
    connecting: u32,
    /// Every host of [`HOSTS`], in or out of the pool: a host's state outlives its place in it.
    hosts: Vec<Host>,
    /// The current policy's pool, as indices into `hosts`, in its order.
    pool: Vec<usize>,
    /// The current policy's ejection share, per mille.
    max_ejected: u16,
    /// The round-robin counter of host choices.
    rr: usize,
    outcomes: [u64; 8],
    held: Vec<Held>,
}

/// Runs `ops` against a real engine and the model, checking every step; then drops every attempt
/// still held and checks that everything was given back.
pub fn execute(s: &Setup, ops: &[Op]) {
    let clock = ManualClock::new();
    let log: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let sink = Arc::clone(&log);
    let engine = Engine::builder(s.policy())
        .clock(clock.clone())
        .on_transition(move |t| sink.lock().unwrap().push(t.clone()))
        .build()
        .expect("engine");
    let backend = engine.backend("be").expect("backend");
    let budget = engine
        .begin_by_name("api", RequestId::new("fuzz").unwrap())
        .expect("budget");
    let mut w = World {
        s,
        engine,
        clock,
        backend,
        budget,
        log,
        pending: Vec::new(),
        now: 0,
        breaker: Breaker::new(),
        retry: RetryBudget::new(s),
        tree_used: 0,
        latency: 0,
        in_flight: 0,
        connecting: 0,
        hosts: HOSTS
            .iter()
            .map(|_| Host {
                breaker: Breaker::new(),
                eject: Ejection::default(),
                readmitted_at: 0,
                in_flight: 0,
                connecting: 0,
            })
            .collect(),
        pool: s.pool(),
        max_ejected: s.max_ejected,
        rr: 0,
        outcomes: [0; 8],
        held: Vec::new(),
    };
    w.check("start");
    for (i, op) in ops.iter().enumerate() {
        w.step(*op);
        w.check(&format!("op {i}: {op:?}"));
    }
    while !w.held.is_empty() {
        w.end(0, AttemptOutcome::Cancelled, true);
        w.check("dropping what is left");
    }
    let st = &w.engine.backend_stats()[0];
    assert_eq!((st.in_flight, st.connecting), (0, 0), "permits leaked");
    for h in &st.hosts {
        assert_eq!((h.in_flight, h.connecting), (0, 0), "{} leaked", h.host);
    }
}

impl World<'_> {
    fn step(&mut self, op: Op) {
        match op {
            Op::Begin { retry, on } => {
                if self.held.len() < MAX_HELD {
                    self.begin(retry, on);
                }
            }
            Op::Call { retry, on, outcome } => {
                if self.held.len() < MAX_HELD && self.begin(retry, on) {
                    let last = self.held.len() - 1;
                    self.end(last, outcome, false);
                }
            }
            Op::Connected { slot } => {
                if let Some(i) = self.slot(slot) {
                    let h = &mut self.held[i];
                    h.attempt.connected();
                    if std::mem::replace(&mut h.connecting, false) {
                        self.connecting -= 1;
                        if let Some((x, ..)) = h.host {
                            self.hosts[x].connecting -= 1;
                        }
                    }
                }
            }
            Op::Finish { slot, outcome } => {
                if let Some(i) = self.slot(slot) {
                    self.end(i, outcome, false);
                }
            }
            Op::Drop { slot } => {
                if let Some(i) = self.slot(slot) {
                    self.end(i, AttemptOutcome::Cancelled, true);
                }
            }
            Op::Advance { ns } => self.advance(ns),
            Op::AdvanceTo { which } => self.advance_to(which),
            Op::Retry { outcome, attempt } => self.retry(outcome, attempt),
            Op::Reload {
                order,
                len,
                max_ejected,
            } => self.reload(order, len, max_ejected),
        }
    }

    fn slot(&self, slot: u8) -> Option<usize> {
        (!self.held.is_empty()).then(|| usize::from(slot) % self.held.len())
    }

    fn advance(&mut self, ns: u64) {
        self.clock.advance(Duration::from_nanos(ns));
        self.now += ns;
    }

    /// To one of the coming times that matter, nearest first: just before and at the earliest time
    /// an open breaker may be probed, the latest, when the probes in flight time out, when an
    /// ejection ends.
    fn advance_to(&mut self, which: u8) {
        let mut times = Vec::new();
        for (b, eject) in std::iter::once((&self.breaker, None))
            .chain(self.hosts.iter().map(|h| (&h.breaker, Some(h.eject))))
        {
            if let State::Open { lo, hi } = b.state {
                times.extend([lo.saturating_sub(1), lo, hi]);
            }
            times.push(b.probe_deadline);
            if let Some(e) = eject.filter(|e| e.ejected) {
                times.extend([e.until.saturating_sub(1), e.until]);
            }
        }
        times.retain(|t| *t > self.now);
        times.sort_unstable();
        times.dedup();
        if !times.is_empty() {
            let target = times[usize::from(which) % times.len()];
            self.advance(target - self.now);
        }
    }

    /// Transitions the engine reported since the last look.
    fn collect(&mut self) {
        self.pending.append(&mut self.log.lock().unwrap());
    }

    /// In-flight cap now: ramps up from 1 after the breaker closes.
    fn cap(&self) -> u32 {
        self.breaker.ramped(self.s.max_in_flight, self.now, self.s)
    }

    /// `begin_attempt` (or `begin_attempt_on` a host); true if admitted (the attempt is then the last
    /// one held).
    fn begin(&mut self, retry: u32, on: Option<u8>) -> bool {
        let s = self.s;
        let now = self.now;
        // The target, as a place in the pool.
        let target = match on {
            Some(_) if self.pool.is_empty() => {
                assert!(self.engine.host(self.backend, HOSTS[0]).is_err());
                return false;
            }
            Some(h) => Some(usize::from(h) % self.pool.len()),
            None => None,
        };
        let result = match target {
            Some(x) => {
                let host = self
                    .engine
                    .host(self.backend, HOSTS[self.pool[x]])
                    .expect("a host");
                assert_eq!(host.backend(), self.backend);
                self.engine.begin_attempt_on(host, &self.budget, retry)
            }
            None => self.engine.begin_attempt(self.backend, &self.budget, retry),
        }
        .map(Attempt::into_owned);
        self.collect();
        if let Err(v) = &result {
            assert_eq!(v.class(), Some("be"), "{v:?}");
            assert_ne!(
                v.reason(),
                Reason::InsufficientTime,
                "time is plentiful: {v:?}"
            );
        }
        let seen = match &result {
            Err(v) if v.reason() == Reason::CircuitOpen => Some(v.retry()),
            _ => None,
        };
        let (role, generation) = match self.breaker.begin(now, seen, s) {
            Gate::Refuse(r) => {
                let v = refusal(result, Reason::CircuitOpen, &self.breaker);
                assert_eq!(v.retry(), r, "{v:?}");
                assert_eq!(v.dimension(), Some("breaker"), "{v:?}");
                return false;
            }
            Gate::Admit(role, generation) => (role, generation),
        };
        let cap = self.cap();
        if self.in_flight >= cap {
            self.breaker.release(role, generation);
            let v = refusal(result, Reason::BulkheadFull, &self.breaker);
            assert_eq!(v.retry(), Retry::Later, "{v:?}");
            assert_eq!(v.dimension(), Some("in_flight"), "{v:?}");
            assert_eq!(
                (v.requested(), v.used(), v.limit()),
                (1, u64::from(self.in_flight), u64::from(cap)),
                "{v:?}"
            );
            return false;
        }
        if self.connecting >= s.max_connecting {
            self.breaker.release(role, generation);
            let v = refusal(result, Reason::ConnectLimit, &self.breaker);
            assert_eq!(v.retry(), Retry::Later, "{v:?}");
            assert_eq!(v.dimension(), Some("connecting"), "{v:?}");
            return false;
        }
        let host = if self.pool.is_empty() {
            None
        } else {
            let mut refused = None;
            let chosen = match &result {
                Ok(a) => Some(
                    self.pool
                        .iter()
                        .copied()
                        .find(|&x| Some(HOSTS[x]) == a.host())
                        .unwrap_or_else(|| panic!("an attempt on {:?}", a.host())),
                ),
                Err(v) => {
                    assert_eq!(
                        v.reason(),
                        Reason::NoHealthyHost,
                        "expected a host or NoHealthyHost (breaker {:?}, {} in flight of {cap}, \
                         {} connecting), got {v:?}",
                        self.breaker.state,
                        self.in_flight,
                        self.connecting
                    );
                    refused = Some(v.retry());
                    None
                }
            };
            self.choose_host(target, chosen, refused);
            match chosen {
                Some(x) => {
                    let h = &mut self.hosts[x];
                    let (host_role, host_generation) = match h.breaker.begin(now, None, s) {
                        Gate::Admit(r, g) => (r, g),
                        Gate::Refuse(_) => unreachable!("the chosen host's breaker is willing"),
                    };
                    h.in_flight += 1;
                    h.connecting += 1;
                    Some((x, host_role, host_generation))
                }
                None => {
                    self.breaker.release(role, generation);
                    return false;
                }
            }
        };
        let attempt = match result {
            Ok(a) => a,
            Err(v) => panic!("expected an admission, got {v:?}; model {:?}", self.breaker),
        };
        if retry == 0 {
            self.retry.deposit();
        }
        if self.pool.is_empty() {
            assert_eq!(attempt.host(), None);
        }
        assert_eq!(attempt.timeout(), Duration::from_nanos(s.timeout));
        let host_probe = matches!(host, Some((_, Role::Probe, _)));
        assert_eq!(
            attempt.is_probe(),
            role == Role::Probe || host_probe,
            "{:?}",
            self.breaker
        );
        self.in_flight += 1;
        self.connecting += 1;
        self.held.push(Held {
            attempt,
            role,
            generation,
            start: now,
            connecting: true,
            host,
            pool: self.pool.clone(),
        });
        true
    }

    /// Checks the engine's choice of a host (`None`: refused with `NoHealthyHost`) and the
    /// readmissions it reported against the documented rule, and applies both to the model.
    /// `target` is a place in the pool; `chosen` and the hosts are indices into [`HOSTS`].
    ///
    /// Hosts are visited in round-robin order (a counter that moves once per choice, kept across
    /// reloads, taken modulo the current pool's size), from the target alone for
    /// `begin_attempt_on`. A visited host whose ejection is over is readmitted. A
    /// host is a candidate when it is not ejected, is below its caps (one connection attempt at a
    /// time on probation) and its breaker would let an attempt through; the first two candidates
    /// are kept, and the one with fewer calls in flight (the first on a tie) is chosen.
    ///
    /// Whether an open breaker whose jittered open time may or may not have passed is willing is
    /// not known: every guess is tried, at least one must give what the engine did, and what all
    /// the matching guesses agree on is learnt.
    fn choose_host(
        &mut self,
        target: Option<usize>,
        chosen: Option<usize>,
        refused: Option<Retry>,
    ) {
        let s = self.s;
        let now = self.now;
        let pool = &self.pool;
        let (start, visits) = match target {
            Some(x) => (x, 1),
            None => {
                self.rr += 1;
                (self.rr - 1, pool.len())
            }
        };
        let mut readmitted: Vec<usize> = Vec::new();
        self.pending.retain(|t| {
            if t.kind == TransitionKind::Readmitted {
                readmitted.push(host_index(t));
                false
            } else {
                true
            }
        });
        readmitted.sort_unstable();
        let unsure: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&x| self.hosts[x].breaker.unsure(now))
            .collect();
        let predict = |guess: u32| -> (Option<usize>, Vec<usize>) {
            let mut candidates = Vec::new();
            let mut readmits = Vec::new();
            for i in 0..visits {
                let x = pool[(start + i) % pool.len()];
                let h = &self.hosts[x];
                let mut probation = h.eject.probation;
                if h.eject.ejected {
                    if now < h.eject.until {
                        continue;
                    }
                    readmits.push(x);
                    probation = true;
                }
                let willing = match h.breaker.state {
                    State::Closed { .. } => true,
                    State::Open { .. } if h.breaker.unsure(now) => {
                        let bit = unsure.iter().position(|&u| u == x).expect("unsure");
                        guess & (1 << bit) != 0
                    }
                    State::Open { hi, .. } => now >= hi,
                    State::HalfOpen { probes, .. } => {
                        probes < u64::from(s.probes) || now >= h.breaker.probe_deadline
                    }
                };
                let connect_cap = if probation {
                    1
                } else {
                    s.max_connecting_per_host
                };
                let cap = h.breaker.ramped(s.max_in_flight_per_host, now, s);
                if willing && h.in_flight < cap && h.connecting < connect_cap {
                    candidates.push(x);
                    if candidates.len() == 2 {
                        break;
                    }
                }
            }
            candidates.sort_by_key(|&x| self.hosts[x].in_flight);
            readmits.sort_unstable();
            (candidates.first().copied(), readmits)
        };
        let guesses: Vec<u32> = (0..1u32 << unsure.len())
            .filter(|&g| predict(g) == (chosen, readmitted.clone()))
            .collect();
        assert!(
            !guesses.is_empty(),
            "the engine chose {:?} and readmitted {readmitted:?} at {now} (round-robin from {start}); \
             the documented rule gives {:?}; hosts {:?}",
            chosen.map(|x| HOSTS[x]),
            (0..1u32 << unsure.len()).map(predict).collect::<Vec<_>>(),
            self.hosts
        );
        for (bit, &x) in unsure.iter().enumerate() {
            let willing = guesses.iter().all(|g| g & (1 << bit) != 0);
            let unwilling = guesses.iter().all(|g| g & (1 << bit) == 0);
            if let State::Open { lo, hi } = &mut self.hosts[x].breaker.state {
                if willing {
                    *hi = now;
                } else if unwilling {
                    *lo = now + 1;
                }
            }
        }
        for x in readmitted {
            let e = &mut self.hosts[x].eject;
            e.ejected = false;
            e.probation = true;
            e.fails = 0;
            self.hosts[x].readmitted_at = now;
        }
        if let Some(retry) = refused {
            let visited: Vec<usize> = (0..visits)
                .map(|i| pool[(start + i) % pool.len()])
                .collect();
            self.check_no_host_hint(&visited, retry);
        }
    }

    /// A `NoHealthyHost` refusal's hint: `Later` when a host the choice visited is only busy (at
    /// its caps, or, not ejected, half-open with its probe slots taken); when every one is out
    /// (ejected, or its breaker open), `After` the nearest time one is back, each back once both
    /// its ejection and its breaker's opening are over, at least 1 ns. An open breaker's end is
    /// known as a range.
    fn check_no_host_hint(&self, visited: &[usize], retry: Retry) {
        let s = self.s;
        let now = self.now;
        let (mut busy, mut maybe_busy) = (false, false);
        let (mut lo_min, mut hi_min) = (u64::MAX, u64::MAX);
        for &x in visited {
            let h = &self.hosts[x];
            let ejected = (h.eject.ejected && now < h.eject.until).then(|| h.eject.until - now);
            // The breaker's remaining opening as a range; `None` when it would let an attempt in.
            let open = match h.breaker.state {
                State::Open { lo, hi } if now < lo => Some((lo - now, hi - now)),
                State::Open { hi, .. } if now < hi => {
                    // Unsure: open for up to `hi - now`, or willing already.
                    if ejected.is_none() {
                        maybe_busy = true;
                    }
                    Some((0, hi - now))
                }
                State::HalfOpen { probes, .. }
                    if ejected.is_none()
                        && probes >= u64::from(s.probes)
                        && now < h.breaker.probe_deadline =>
                {
                    busy = true;
                    continue;
                }
                _ => None,
            };
            let (lo, hi) = match (ejected, open) {
                (None, None) => {
                    busy = true;
                    continue;
                }
                (Some(e), None) => (e, e),
                (None, Some((lo, hi))) => (lo, hi),
                (Some(e), Some((lo, hi))) => (e.max(lo), e.max(hi)),
            };
            lo_min = lo_min.min(lo.max(1));
            hi_min = hi_min.min(hi.max(1));
        }
        let hosts: Vec<_> = visited.iter().map(|&x| &self.hosts[x]).collect();
        match retry {
            Retry::Later => assert!(
                busy || maybe_busy,
                "every host is out, yet the hint is Later at {now}: {hosts:?}"
            ),
            Retry::After(d) => {
                let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                assert!(
                    !busy,
                    "a host is only busy, yet the hint is {d} ns: {hosts:?}"
                );
                assert!(
                    (lo_min..=hi_min).contains(&d),
                    "hint {d} ns, expected within [{lo_min}, {hi_min}] at {now}: {hosts:?}"
                );
            }
            Retry::Never => panic!("NoHealthyHost with Retry::Never: {hosts:?}"),
        }
    }

    /// Finishes (or drops) held attempt `i`.
    fn end(&mut self, i: usize, outcome: AttemptOutcome, drop_it: bool) {
        let h = self.held.remove(i);
        if drop_it {
            drop(h.attempt);
        } else {
            h.attempt.finish(outcome);
        }
        self.collect();
        let s = self.s;
        let now = self.now;
        if h.connecting {
            self.connecting -= 1;
        }
        self.outcomes[outcome_index(outcome)] += 1;
        let latency = now - h.start;
        if outcome == AttemptOutcome::Success {
            // Learnt up to the timeout, the most an attempt is given.
            let latency = latency.min(s.timeout);
            let old = self.latency;
            self.latency = if old == 0 {
                latency
            } else {
                old - old / 8 + latency / 8
            };
        }
        let v = judge(outcome);
        let (failed, slow) = (v == Judgement::Failure, latency > s.slow_call);
        if let Some((x, role, generation)) = h.host {
            let in_pool = self.pool.contains(&x);
            let host = &mut self.hosts[x];
            if h.connecting {
                host.connecting -= 1;
            }
            let trip =
                v != Judgement::Neutral && host.breaker.record(now, generation, failed, slow, s);
            host.breaker.finish(role, generation, v, trip, now, s);
            // A failure of an attempt begun before the host's last readmission counts for nothing,
            // and its success does not end the probation.
            let stale = h.start < host.readmitted_at;
            let counting = counts(outcome) && !stale;
            let out = self.ejected();
            if counting && out > 0 && out >= self.most_ejected() {
                // Every place is taken: ejections that are over end first.
                for &y in &h.pool {
                    let other = &mut self.hosts[y];
                    if other.eject.ejected && now >= other.eject.until {
                        other.eject.ejected = false;
                        other.eject.probation = true;
                        other.eject.fails = 0;
                        other.readmitted_at = now;
                        other.breaker.events.push((TransitionKind::Readmitted, now));
                    }
                }
            }
            let room = self.ejected() < self.most_ejected();
            let host = &mut self.hosts[x];
            // Looked at again: making room may have readmitted this very host, after the attempt
            // began.
            let stale = h.start < host.readmitted_at;
            let proves_nothing = stale
                && (counts(outcome) || outcome == AttemptOutcome::Success && host.eject.probation);
            if !proves_nothing && host.eject.on_outcome(outcome, now, room, in_pool, s) {
                host.breaker.events.push((TransitionKind::Ejected, now));
            }
            host.in_flight -= 1;
        }
        let trip =
            v != Judgement::Neutral && self.breaker.record(now, h.generation, failed, slow, s);
        self.breaker.finish(h.role, h.generation, v, trip, now, s);
        self.in_flight -= 1;
    }

    /// The hosts ejected now, in or out of the pool.
    fn ejected(&self) -> usize {
        self.hosts.iter().filter(|h| h.eject.ejected).count()
    }

    /// The most hosts that may be ejected at once: a share of the pool as it now is.
    fn most_ejected(&self) -> usize {
        self.pool.len() * usize::from(self.max_ejected) / 1000
    }

    /// Reloads the policy with another pool and share, and checks what the reload did to the
    /// hosts: every host keeps its state (breaker, permits, ejections) whether or not it stays in
    /// the pool, except that a host taken out while ejected is no longer ejected (its ejection is
    /// forgotten, with its count and end time) and is never ejected while out. If the new pool has
    /// more hosts out than its share allows, those whose ejections end soonest (the first in the
    /// pool's order on a tie) are readmitted at once, on probation, and reported. The run then goes
    /// on with a request of the new version; attempts still held keep their version's.
    fn reload(&mut self, order: [u8; 3], len: u8, max_ejected: u16) {
        if self.pool.is_empty() {
            return;
        }
        let pool: Vec<usize> = order[..usize::from(len)]
            .iter()
            .map(|&x| usize::from(x))
            .collect();
        self.engine
            .reload(self.s.policy_for(&pool, max_ejected))
            .expect("the reloaded policy is valid");
        self.collect();
        self.pool = pool;
        self.max_ejected = max_ejected;
        for x in 0..HOSTS.len() {
            if !self.pool.contains(&x) && self.hosts[x].eject.ejected {
                self.hosts[x].eject = Ejection::default();
                self.hosts[x]
                    .breaker
                    .events
                    .push((TransitionKind::EjectionEnded, self.now));
            }
        }
        let mut out: Vec<usize> = self
            .pool
            .iter()
            .copied()
            .filter(|&x| self.hosts[x].eject.ejected)
            .collect();
        out.sort_by_key(|&x| self.hosts[x].eject.until);
        let excess = out.len().saturating_sub(self.most_ejected());
        for &x in &out[..excess] {
            let e = &mut self.hosts[x].eject;
            e.ejected = false;
            e.probation = true;
            e.fails = 0;
            self.hosts[x].readmitted_at = self.now;
            self.hosts[x]
                .breaker
                .events
                .push((TransitionKind::Readmitted, self.now));
        }
        self.budget = self
            .engine
            .begin_by_name("api", RequestId::new("fuzz").unwrap())
            .expect("budget");
        self.tree_used = 0;
    }

    fn retry(&mut self, outcome: AttemptOutcome, attempt: u32) {
        let decision = self
            .engine
            .retry(self.backend, &self.budget, outcome, attempt);
        self.collect();
        let stop = |reason: Reason, retry: Retry| -> Verdict {
            match &decision {
                RetryDecision::Stop(v) => {
                    assert_eq!((v.reason(), v.retry()), (reason, retry), "{v:?}");
                    v.clone()
                }
                other => panic!("expected {reason:?} for {outcome:?}, got {other:?}"),
            }
        };
        let floor = match outcome {
            AttemptOutcome::ServerError
            | AttemptOutcome::Timeout
            | AttemptOutcome::ConnectFailure => 0,
            AttemptOutcome::Refused {
                retry_after: Some(d),
            } => u64::try_from(d.as_nanos()).expect("short"),
            _ => {
                stop(Reason::NotRetryable, Retry::Never);
                return;
            }
        };
        let s = self.s;
        let ceiling = s
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(32))
            .min(s.backoff_max);
        let (least, most) = (floor, floor.max(ceiling));
        let remaining = WALL - self.now;
        // The attempt after the backoff needs time left after the margin, and at least the usual
        // latency (never more than the timeout).
        let usual = self.latency.min(s.timeout);
        let too_short = |backoff: u64| {
            remaining < backoff.saturating_add(usual).saturating_add(MARGIN)
                || remaining <= backoff.saturating_add(MARGIN)
        };
        let short =
            matches!(&decision, RetryDecision::Stop(v) if v.reason() == Reason::InsufficientTime);
        if too_short(least) || (short && too_short(most)) {
            let v = stop(Reason::InsufficientTime, Retry::Never);
            assert_eq!(v.dimension(), Some("wall_time"), "{v:?}");
            return;
        }
        // The backend's breaker as it will be when the backoff is over; a refusal spends nothing.
        if self.breaker_refuses_retry(&decision, self.now + least, self.now + most) {
            return;
        }
        // The backend's token first; a retry the tree then refuses gives the token back.
        if !self.retry.try_withdraw(self.now) {
            stop(Reason::RetryBudgetExhausted, Retry::Later);
            return;
        }
        if let Some(limit) = s.tree_retries {
            if self.tree_used >= limit {
                self.retry.give_back();
                let RetryDecision::Stop(v) = &decision else {
                    panic!("the tree's {limit} retries are spent, got {decision:?}")
                };
                assert!(
                    matches!(v.reason(), Reason::LimitExceeded | Reason::CannotFit),
                    "{v:?}"
                );
                assert_eq!(v.dimension(), Some("retries"), "{v:?}");
                return;
            }
        }
        self.tree_used += 1;
        match decision {
            RetryDecision::After(d) => assert!(
                (least..=most).contains(&u64::try_from(d.as_nanos()).expect("short")),
                "backoff {d:?} outside {least}..={most} ns"
            ),
            RetryDecision::Stop(v) => panic!("expected a retry, got {v:?}"),
        }
    }

    /// Whether the backend's breaker refused a retry that would begin at some time in
    /// `first..=last` (the backoff is jittered), checking the engine's `decision` against what the
    /// breaker can do then. An open breaker refuses with a wait to its open time, which pins that
    /// time down; one that lets the retry through bounds it from above.
    fn breaker_refuses_retry(&mut self, decision: &RetryDecision, first: u64, last: u64) -> bool {
        let refused = match decision {
            RetryDecision::Stop(v) if v.reason() == Reason::CircuitOpen => Some(v.retry()),
            _ => None,
        };
        let now = self.now;
        match (&mut self.breaker.state, refused) {
            (State::Closed { .. }, None) => false,
            (State::Open { lo, hi }, Some(Retry::After(d))) => {
                let until = now + u64::try_from(d.as_nanos()).expect("a short wait");
                assert!(
                    until > first && (*lo..=*hi).contains(&until),
                    "retry refused by an open breaker until {until}, but it opened until some \
                     time in {lo}..={hi} and the retry would begin in {first}..={last}"
                );
                (*lo, *hi) = (until, until);
                true
            }
            (State::Open { lo, hi }, None) => {
                assert!(
                    last >= *lo,
                    "a retry beginning by {last} let through a breaker open until {lo} or later"
                );
                *hi = (*hi).min(last);
                false
            }
            (State::HalfOpen { probes, .. }, refused) => {
                let full = *probes >= u64::from(self.s.probes);
                let deadline = self.breaker.probe_deadline;
                match refused {
                    None => assert!(
                        !full || last >= deadline,
                        "a retry beginning by {last} let through a half-open breaker whose \
                         probes are all out until {deadline}"
                    ),
                    Some(r) => assert!(
                        r == Retry::Later && full && first < deadline,
                        "a retry beginning from {first} refused ({r:?}) by a half-open breaker \
                         with {probes} probes out until {deadline}"
                    ),
                }
                refused.is_some()
            }
            (state, Some(r)) => panic!("a retry refused ({r:?}) by a breaker {state:?}"),
        }
    }

    fn check(&mut self, what: &str) {
        let s = self.s;
        self.collect();
        let mut seen: Vec<Vec<(TransitionKind, u64)>> = vec![Vec::new(); HOSTS.len() + 1];
        for t in std::mem::take(&mut self.pending) {
            assert_eq!(&*t.backend, "be");
            assert_eq!(t.at, self.now, "{what}: {t:?}");
            let i = if t.host.is_some() {
                1 + host_index(&t)
            } else {
                0
            };
            seen[i].push((t.kind, t.at));
        }
        let breakers =
            std::iter::once(&mut self.breaker).chain(self.hosts.iter_mut().map(|h| &mut h.breaker));
        for (i, (b, seen)) in breakers.zip(&seen).enumerate() {
            let whose = if i == 0 { "the backend" } else { HOSTS[i - 1] };
            assert_eq!(*seen, b.events, "{what}: transitions of {whose}");
            b.events.clear();
        }

        let stats = self.engine.backend_stats();
        assert_eq!(stats.len(), 1);
        let st = &stats[0];
        let ctx = || {
            format!(
                "{what}: model {:?} {:?} {:?}, engine {st:?}",
                self.breaker, self.retry, self.hosts
            )
        };
        assert_eq!(st.breaker, self.breaker.name(), "{}", ctx());
        assert_eq!(
            (st.in_flight, st.connecting),
            (self.in_flight, self.connecting),
            "{}",
            ctx()
        );
        assert!(st.in_flight <= s.max_in_flight && st.connecting <= s.max_connecting);
        assert_eq!(
            st.retry_tokens,
            self.retry.shown(self.now) / TOKEN,
            "{}",
            ctx()
        );
        for (n, name) in OUTCOME_NAMES.iter().enumerate() {
            assert_eq!(st.outcome(name), self.outcomes[n], "{}: {name}", ctx());
        }
        assert_eq!(self.budget.used(Counter::RETRIES), self.tree_used, "{what}");
        // Probes in flight never exceed the configured number, on the backend and on each host.
        let probes_of = |b: &Breaker, host: Option<usize>| {
            let State::HalfOpen { probes, .. } = b.state else {
                return;
            };
            let current = self
                .held
                .iter()
                .filter(|h| match host {
                    None => h.role == Role::Probe && h.generation == b.generation,
                    Some(x) => h.host == Some((x, Role::Probe, b.generation)),
                })
                .count() as u64;
            assert!(
                current <= probes && probes <= u64::from(s.probes),
                "{}",
                ctx()
            );
        };
        probes_of(&self.breaker, None);
        for (x, m) in self.hosts.iter().enumerate() {
            probes_of(&m.breaker, Some(x));
        }
        // The stats list the current pool, in its order; a host out of it has no handle.
        assert_eq!(st.hosts.len(), self.pool.len());
        for (x, name) in HOSTS.iter().enumerate() {
            assert_eq!(
                self.engine.host(self.backend, name).is_ok(),
                self.pool.contains(&x),
                "{what}: {name}"
            );
        }
        for (h, &x) in st.hosts.iter().zip(&self.pool) {
            let m = &self.hosts[x];
            assert_eq!(h.host, HOSTS[x]);
            assert_eq!(
                (h.breaker, h.ejected, h.in_flight, h.connecting),
                (
                    m.breaker.name(),
                    // Readmission is lazy; the stats say whether the ejection still holds.
                    m.eject.ejected && self.now < m.eject.until,
                    m.in_flight,
                    m.connecting
                ),
                "{}",
                ctx()
            );
            assert!(
                h.in_flight <= s.max_in_flight_per_host
                    && h.connecting <= s.max_connecting_per_host,
                "{what}: {h:?}"
            );
        }
        let ejected = st.hosts.iter().filter(|h| h.ejected).count();
        let most = self.most_ejected();
        assert!(
            ejected <= most,
            "{what}: {ejected} hosts ejected, at most {most}"
        );
        // Every attempt on a pool holds a host's permits, the host in the pool or not (an attempt
        // begun before a reload took it out).
        let flying: u32 = self.hosts.iter().map(|h| h.in_flight).sum();
        let connecting: u32 = self.hosts.iter().map(|h| h.connecting).sum();
        if !self.pool.is_empty() {
            assert_eq!(
                (flying, connecting),
                (st.in_flight, st.connecting),
                "{what}"
            );
        }
    }
}

fn host_index(t: &Transition) -> usize {
    let name = t.host.as_deref().expect("a host's transition");
    HOSTS
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("unknown host in {t:?}"))
}

/// The engine's answer, which must be a refusal for `reason`.
fn refusal(result: Result<Attempt<'_>, Verdict>, reason: Reason, model: &Breaker) -> Verdict {
    match result {
        Err(v) if v.reason() == reason => v,
        Err(v) => panic!("expected {reason:?}, got {v:?}; model {model:?}"),
        Ok(a) => panic!("expected {reason:?}, got an admission {a:?}; model {model:?}"),
    }
}

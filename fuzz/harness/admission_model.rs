//! A sequential reference model of admission, and an executor that runs one sequence of operations
//! against a real [`Engine`] on a [`ManualClock`] and the model side by side.
//!
//! The model is plain integers: per class the requests in flight, the smoothed latency behind
//! `Retry-After` hints and the counters; per pool the cost in flight; per key the requests in flight
//! ("pins") and the theoretical arrival time of its rate limit. After every operation the executor
//! compares with the engine: admission or refusal, every field of the verdict (reason, retry advice,
//! dimension, unit, amounts, class, request id), every event the refusal hook saw (with its shadow
//! flag) and the whole of [`Engine::admission_stats`]. It panics on the first difference.
//!
//! Semantics modelled, in the order [`Engine::try_admit`] applies them:
//!
//! 1. an estimate above the class's budget limit of its counter: `CannotFit`, `Retry::Never`, naming
//!    the counter, amounts `(estimate, 0, limit)`; enforced even in shadow mode;
//! 2. a key longer than 256 bytes: `KeyTooLong`, amounts `(len, 0, 256)`; enforced even in shadow mode;
//! 3. a class without admission settings admits everything else, with no permit; its refusals (steps
//!    1 and 2) are neither counted nor reported to the refusal hook;
//! 4. an estimate above the limit of a pool the class draws from (in the class's listing order):
//!    `CannotFit` naming the pool (only recorded in shadow mode); then, for a request with a key of
//!    valid length in a class with a per-key rate, a rate cost above the burst: `CannotFit`,
//!    `Retry::Never`, dimension `rate`, amounts `(cost, 0, burst)` (only recorded in shadow mode);
//! 5. concurrency: priority `p` may fill `allowed = limit * share[p] / 1000` (the whole limit at 1000);
//!    `in_flight >= allowed` refuses with `Shed` when `allowed < limit && in_flight < limit`, else
//!    `ConcurrencyLimit`, amounts `(1, in_flight, allowed)`, dimension `concurrency`. The retry hint is
//!    `Never` when `allowed` is 0; otherwise `Later` until a finished request was sampled, then
//!    `After(max(latency / max(in_flight, 1) × (in_flight + 1 - allowed), 1 ms))` where `latency` is
//!    smoothed as `old - old/8 + new/8` (the first sample taken as is) over requests finished with
//!    `Success` or `Overload`;
//! 6. pools, in listing order: an estimate of 0 is skipped; `used + estimate > limit` refuses with
//!    `PoolExhausted`, `Retry::Later`, amounts `(estimate, used, limit)`, after giving back what was
//!    taken so far and the permit;
//! 7. the budget starts (it cannot fail here: no class has a zero wall time); then, last, per key
//!    (when the request has a key and the class per-key limits): the key's pins below its
//!    concurrency (65,535 without one), else `KeyConcurrency`, `Retry::Later`, amounts
//!    `(1, pins, limit)`; then GCRA, in 32.32 fixed point: `interval = max(ceil(per_ns × 2^32 /
//!    amount), 1)`, `span(c) = ceil(c × interval / 2^32)`, `tolerance = span(burst) + min(burst, span(burst) >>
//!    16)` (slack for the TAT's rounding to whole nanoseconds); a cost above
//!    the burst charges nothing (step 4 said so), nor does a cost of 0, which always conforms; otherwise `new_tat = max(tat, now) + span(cost)`
//!    must be at most `now + tolerance`, else `RateLimited` with `Retry::After(new_tat -
//!    span(burst) - now)` (the wait leaves the slack alone) (`Retry::After(u64::MAX ns)` when `new_tat` is past the clock's range), amounts `(cost, 0, burst)`, dimension `rate`. A key refusal gives back the pool amounts
//!    and the permit, and a rate refusal charges nothing; being last, a rate once charged is never
//!    taken back;
//! 8. `admitted` counts.
//!
//! A class in **shadow** mode evaluates steps 4 to 7 but admits: each would-be refusal is counted
//! under `shadow_refused` and reported to the hook with `shadow = true`; the permit, pin and pool
//! amounts are taken anyway (past the 65,535 pins a key's entry can count, the request is admitted
//! without a pin, and its rate is not charged). An estimate larger than its whole pool is recorded once (`CannotFit`,
//! not also `PoolExhausted`). At the key step only one shadow refusal is recorded: a request over
//! the key's cap is not charged to its rate (nor judged by it), and a nonconforming rate charges
//! nothing. Enforced refusals count under `refused`,
//! and `Shed` ones also under `shed_by_priority`.
//!
//! Dropping a grant gives back its pin, pool amounts and permit (all saturating at zero); finishing it
//! with `Success` or `Overload` also samples its latency (clock now minus its start). A reload keeps
//! the classes, pools and per-key settings and changes the concurrency limits, shadow flags and pool
//! limits; permits and pool amounts held stay, so in-flight counts can sit above a lowered limit until
//! enough grants are dropped.
//!
//! **Left out on purpose.** The per-key overflow entry: every class tracks at least as many keys
//! (`max_keys`) as there are distinct valid keys, so a key always finds its own entry or a free or idle
//! slot (which slot depends on the table's random hash seed; an idle entry behaves exactly like a fresh
//! one, so which one is taken does not matter as long as the clock never steps back). For the same
//! reason the number of occupied key slots is only bounded, not predicted. Also left out: wait queues
//! (no class has one, so `admit` and `admit_async` answer at once, like `try_admit`), adaptive limits,
//! budget overrides, concurrent callers and the overflow of any sum (all amounts are tiny).

#![allow(dead_code)]
// Results carry the engine's `Verdict` (about 144 bytes) or its plain copy as is, as the crate's own
// API does.
#![allow(clippy::result_large_err)]

use costguard::clock::{Clock, ManualClock};
use costguard::{
    AdmitRequest, Admitted, Engine, Outcome, Policy, Priority, Reason, RefusalEvent, RequestId,
    Retry, Unit, Verdict,
};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The two counters: `db` counts, `out_bytes` is in bytes.
pub const COUNTER_NAMES: [&str; 2] = ["db", "out_bytes"];
/// Units of [`COUNTER_NAMES`].
pub const COUNTER_UNITS: [Unit; 2] = [Unit::Count, Unit::Bytes];
/// The classes, in policy order.
pub const CLASS_NAMES: [&str; 2] = ["api", "batch"];
/// The pools, in policy order.
pub const POOL_NAMES: [&str; 2] = ["db_pool", "aux_pool"];
/// The number of distinct valid keys; every `max_keys` is at least this.
pub const NKEYS: usize = 4;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Pins of one key never exceed this (the table's 16-bit field).
const PINS_MAX: u64 = 65_535;
const MS: u64 = 1_000_000;

static LONG: [u8; MAX_KEY_LEN + 1] = [b'k'; MAX_KEY_LEN + 1];

/// A key of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// One of the [`NKEYS`] valid keys: `alice`, `bob`, the empty key and a key of exactly 256 bytes.
    Valid(usize),
    /// A key of 257 bytes.
    TooLong,
}

impl Key {
    /// The key's bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Key::Valid(0) => b"alice",
            Key::Valid(1) => b"bob",
            Key::Valid(2) => b"",
            Key::Valid(_) => &LONG[..MAX_KEY_LEN],
            Key::TooLong => &LONG[..],
        }
    }
}

/// A pool over one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// Index into [`COUNTER_NAMES`].
    pub counter: usize,
    /// At least 1.
    pub limit: u64,
}

/// A per-key rate: `amount` per `per_ns`, bursts of `burst` (all at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub amount: u64,
    pub per_ns: u64,
    pub burst: u64,
}

impl RateSpec {
    /// The time `cost` units stand for, in nanoseconds (see the module's step 7).
    fn span(&self, cost: u64) -> u64 {
        let interval =
            ((u128::from(self.per_ns) << 32).div_ceil(u128::from(self.amount.max(1)))).max(1);
        let q = u128::from(cost)
            .saturating_mul(interval)
            .saturating_add((1 << 32) - 1)
            >> 32;
        u64::try_from(q).unwrap_or(u64::MAX)
    }
}

/// Per-key limits (at least one of the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub concurrency: Option<u32>,
    pub rate: Option<RateSpec>,
    /// At least [`NKEYS`].
    pub max_keys: u32,
}

/// The admission settings of a class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionSpec {
    /// 1 to 4.
    pub concurrency: u32,
    /// Per mille, by priority; critical 1000, non-increasing.
    pub headroom: [u16; 4],
    pub shadow: bool,
    /// Indexes into the setup's pools, in listing order (each declared, none twice).
    pub pools: Vec<usize>,
    pub per_key: Option<KeySpec>,
}

/// One class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    /// Budget limits of the two counters; `None` leaves a counter unlimited.
    pub limits: [Option<u64>; 2],
    pub priority: Priority,
    pub admission: Option<AdmissionSpec>,
}

/// The policy of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// One or two classes, named after [`CLASS_NAMES`].
    pub classes: Vec<ClassSpec>,
    /// Declared pools, named after [`POOL_NAMES`].
    pub pools: [Option<PoolSpec>; 2],
}

impl Setup {
    /// The policy, built in code.
    pub fn policy(&self) -> Policy {
        let mut b = Policy::builder()
            .counter(COUNTER_NAMES[0])
            .bytes(COUNTER_NAMES[1]);
        for (i, p) in self.pools.iter().enumerate() {
            if let Some(p) = p {
                b = b.pool(POOL_NAMES[i], COUNTER_NAMES[p.counter], p.limit);
            }
        }
        for (name, spec) in CLASS_NAMES.iter().zip(&self.classes) {
            b = b.class(name, |mut c| {
                c = c.priority(spec.priority);
                for (d, limit) in spec.limits.iter().enumerate() {
                    if let Some(limit) = limit {
                        c = c.limit(COUNTER_NAMES[d], *limit);
                    }
                }
                if let Some(a) = &spec.admission {
                    c = c.admission(|mut ab| {
                        ab = ab.concurrency(u64::from(a.concurrency)).shadow(a.shadow);
                        for p in [Priority::Normal, Priority::Sheddable, Priority::Background] {
                            ab = ab.headroom(p, f64::from(a.headroom[p as usize]) / 1000.0);
                        }
                        for &p in &a.pools {
                            ab = ab.pool(POOL_NAMES[p]);
                        }
                        if let Some(k) = a.per_key {
                            if let Some(n) = k.concurrency {
                                ab = ab.per_key_concurrency(u64::from(n));
                            }
                            if let Some(r) = k.rate {
                                ab = ab.per_key_rate(
                                    r.amount,
                                    Duration::from_nanos(r.per_ns),
                                    r.burst,
                                );
                            }
                            ab = ab.max_keys(u64::from(k.max_keys));
                        }
                        ab
                    });
                }
                c
            });
        }
        let policy = b.build().expect("the test policy is valid");
        for (name, spec) in CLASS_NAMES.iter().zip(&self.classes) {
            let built = policy.class(name).expect("declared class");
            if let Some(a) = &spec.admission {
                let got = built.admission().expect("admission settings");
                assert_eq!(got.headroom().0, a.headroom, "{name}: headroom as built");
                assert_eq!(got.shadow(), a.shadow, "{name}: shadow as built");
            }
        }
        policy
    }
}

/// How a request is submitted (without a queue, all three answer at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Try,
    Blocking,
    Async,
}

/// One operation. `grant` picks among the grants held (modulo their number); operations with
/// nothing to act on are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Admit {
        /// Index into the setup's classes.
        class: usize,
        /// `None`: the class's default.
        priority: Option<Priority>,
        key: Option<Key>,
        /// Per counter.
        estimates: [u64; 2],
        rate_cost: u64,
        via: Via,
    },
    /// Dropping a grant without an outcome.
    Drop { grant: u8 },
    /// `finish(outcome)`, or `set_outcome` then a drop when `deferred`.
    Finish {
        grant: u8,
        outcome: Outcome,
        deferred: bool,
    },
    /// Moving the clock forward.
    Advance { ns: u64 },
    /// Reloading with new concurrency limits, shadow flags flipped and new pool limits.
    Reload {
        concurrency: [u32; 2],
        flip_shadow: [bool; 2],
        pool_limits: [Option<u64>; 2],
    },
}

/// A verdict as plain, comparable data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V {
    pub reason: Reason,
    pub retry: Retry,
    pub class: Option<String>,
    pub dimension: Option<String>,
    pub unit: Unit,
    pub requested: u64,
    pub used: u64,
    pub limit: u64,
    pub request_id: Option<RequestId>,
}

impl V {
    fn of(v: &Verdict) -> V {
        V {
            reason: v.reason(),
            retry: v.retry(),
            class: v.class().map(str::to_owned),
            dimension: v.dimension().map(str::to_owned),
            unit: v.unit(),
            requested: v.requested(),
            used: v.used(),
            limit: v.limit(),
            request_id: v.request_id().copied(),
        }
    }
}

/// Refusal reasons admission counts (the ones this model can produce come first).
const REASONS: [Reason; 10] = [
    Reason::ConcurrencyLimit,
    Reason::Shed,
    Reason::KeyConcurrency,
    Reason::RateLimited,
    Reason::PoolExhausted,
    Reason::CannotFit,
    Reason::KeyTooLong,
    Reason::QueueFull,
    Reason::QueueTimeout,
    Reason::InsufficientTime,
];

fn reason_index(r: Reason) -> usize {
    REASONS
        .iter()
        .position(|x| *x == r)
        .expect("a reason admission counts")
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyState {
    pins: u64,
    tat: u64,
    /// Acquired at least once, so it has (or had) a slot.
    seen: bool,
}

#[derive(Clone, Debug, Default)]
struct ClassState {
    in_flight: u32,
    latency: u64,
    admitted: u64,
    refused: [u64; REASONS.len()],
    shadow: [u64; REASONS.len()],
    shed: [u64; 4],
    keys: [KeyState; NKEYS],
}

/// What the model says a grant holds.
#[derive(Clone, Debug)]
struct Grant {
    class: usize,
    permit: bool,
    key: Option<usize>,
    pools: Vec<(usize, u64)>,
    start: u64,
}

/// The reference model.
struct Model {
    setup: Setup,
    now: u64,
    classes: Vec<ClassState>,
    pools_used: [u64; 2],
}

/// What the model predicts for one admission.
struct Predicted {
    result: Result<Grant, V>,
    events: Vec<(V, bool)>,
    priority: Priority,
}

fn allowed(limit: u32, share: u16) -> u32 {
    if share >= 1000 {
        limit
    } else {
        (u64::from(limit) * u64::from(share) / 1000) as u32
    }
}

impl Model {
    fn new(setup: Setup) -> Self {
        let classes = vec![ClassState::default(); setup.classes.len()];
        Model {
            setup,
            now: 0,
            classes,
            pools_used: [0; 2],
        }
    }

    /// When `completions` of the requests in flight have finished (no class has a queue): the
    /// mean latency divided among the requests in flight, for each.
    fn retry_hint(&self, class: usize, completions: u32) -> Retry {
        let c = &self.classes[class];
        if c.latency == 0 {
            return Retry::Later;
        }
        let in_flight = u64::from(c.in_flight.max(1));
        let nanos = (c.latency / in_flight).saturating_mul(u64::from(completions.max(1)));
        Retry::After(Duration::from_nanos(nanos.max(MS)))
    }

    fn admit(
        &mut self,
        class: usize,
        priority: Option<Priority>,
        key: Option<Key>,
        estimates: [u64; 2],
        rate_cost: u64,
        id: RequestId,
    ) -> Predicted {
        let spec = self.setup.classes[class].clone();
        let priority = priority.unwrap_or(spec.priority);
        let mut events = Vec::new();
        let verdict = |reason, retry, dim: Option<&str>, unit, amounts: (u64, u64, u64)| V {
            reason,
            retry,
            class: Some(CLASS_NAMES[class].to_owned()),
            dimension: dim.map(str::to_owned),
            unit,
            requested: amounts.0,
            used: amounts.1,
            limit: amounts.2,
            request_id: Some(id),
        };
        let has_adm = spec.admission.is_some();
        let refuse = |m: &mut Model, events: &mut Vec<(V, bool)>, v: V| {
            // Counted only in classes with admission settings; shown to the hook in all.
            if has_adm {
                let c = &mut m.classes[class];
                c.refused[reason_index(v.reason)] += 1;
                if v.reason == Reason::Shed {
                    c.shed[priority as usize] += 1;
                }
            }
            events.push((v.clone(), false));
            Err(v)
        };
        let shadow_refusal = |m: &mut Model, events: &mut Vec<(V, bool)>, v: V| {
            m.classes[class].shadow[reason_index(v.reason)] += 1;
            events.push((v, true));
        };
        let done = |result, events| Predicted {
            result,
            events,
            priority,
        };

        // 1. Estimates above the class's budget limits.
        for d in 0..2 {
            let limit = spec.limits[d].unwrap_or(u64::MAX);
            if estimates[d] > limit {
                let v = verdict(
                    Reason::CannotFit,
                    Retry::Never,
                    Some(COUNTER_NAMES[d]),
                    COUNTER_UNITS[d],
                    (estimates[d], 0, limit),
                );
                let r = refuse(self, &mut events, v);
                return done(r, events);
            }
        }
        // 2. Key length.
        if key == Some(Key::TooLong) {
            let len = Key::TooLong.bytes().len() as u64;
            let v = verdict(
                Reason::KeyTooLong,
                Retry::Never,
                None,
                Unit::Count,
                (len, 0, MAX_KEY_LEN as u64),
            );
            let r = refuse(self, &mut events, v);
            return done(r, events);
        }
        // 3. No admission settings: admitted with a bare budget.
        let Some(adm) = spec.admission else {
            let grant = Grant {
                class,
                permit: false,
                key: None,
                pools: Vec::new(),
                start: self.now,
            };
            return done(Ok(grant), events);
        };
        // 4. Estimates above a pool's limit.
        for &p in &adm.pools {
            let pool = self.setup.pools[p].expect("declared pool");
            let estimate = estimates[pool.counter];
            if estimate > pool.limit {
                let v = verdict(
                    Reason::CannotFit,
                    Retry::Never,
                    Some(POOL_NAMES[p]),
                    COUNTER_UNITS[pool.counter],
                    (estimate, 0, pool.limit),
                );
                if adm.shadow {
                    shadow_refusal(self, &mut events, v);
                    continue;
                }
                let r = refuse(self, &mut events, v);
                return done(r, events);
            }
        }
        // 4. A rate cost above the key's whole burst.
        let over_burst = match (key, adm.per_key.and_then(|pk| pk.rate)) {
            (Some(Key::Valid(_)), Some(rate)) if rate_cost > rate.burst => Some(rate.burst),
            _ => None,
        };
        if let Some(burst) = over_burst {
            let v = verdict(
                Reason::CannotFit,
                Retry::Never,
                Some("rate"),
                Unit::Count,
                (rate_cost, 0, burst),
            );
            if !adm.shadow {
                let r = refuse(self, &mut events, v);
                return done(r, events);
            }
            shadow_refusal(self, &mut events, v);
        }
        // 5. Concurrency within the priority's headroom.
        let limit = adm.concurrency;
        let share = adm.headroom[priority as usize];
        let allowed = allowed(limit, share);
        let in_flight = self.classes[class].in_flight;
        if in_flight >= allowed {
            let reason = if allowed < limit && in_flight < limit {
                Reason::Shed
            } else {
                Reason::ConcurrencyLimit
            };
            // A priority with no share of the (static) limit is never let in; others once enough
            // requests have finished to bring those in flight below their share.
            let retry = if allowed == 0 {
                Retry::Never
            } else {
                self.retry_hint(class, in_flight + 1 - allowed)
            };
            let v = verdict(
                reason,
                retry,
                Some("concurrency"),
                Unit::Count,
                (1, u64::from(in_flight), u64::from(allowed)),
            );
            if adm.shadow {
                shadow_refusal(self, &mut events, v);
            } else {
                let r = refuse(self, &mut events, v);
                return done(r, events);
            }
        }
        self.classes[class].in_flight += 1;
        // 6. Pools.
        let mut taken: Vec<(usize, u64)> = Vec::new();
        for &p in &adm.pools {
            let pool = self.setup.pools[p].expect("declared pool");
            let amount = estimates[pool.counter];
            if amount == 0 {
                continue;
            }
            let used = self.pools_used[p];
            if used.checked_add(amount).is_none_or(|n| n > pool.limit) {
                let v = verdict(
                    Reason::PoolExhausted,
                    Retry::Later,
                    Some(POOL_NAMES[p]),
                    COUNTER_UNITS[pool.counter],
                    (amount, used, pool.limit),
                );
                if adm.shadow {
                    // An estimate larger than the whole pool was recorded as `CannotFit` at step 4.
                    if amount <= pool.limit {
                        shadow_refusal(self, &mut events, v);
                    }
                } else {
                    for (q, n) in taken {
                        self.pools_used[q] = self.pools_used[q].saturating_sub(n);
                    }
                    self.classes[class].in_flight -= 1;
                    let r = refuse(self, &mut events, v);
                    return done(r, events);
                }
            }
            self.pools_used[p] = used.saturating_add(amount);
            taken.push((p, amount));
        }
        // 7. The budget starts (it cannot fail here), then the key, last: its concurrency, then its
        // rate. A key refusal gives back the pool amounts and the permit.
        let mut slot = None;
        if let (Some(Key::Valid(k)), Some(pk)) = (key, adm.per_key) {
            let ks = self.classes[class].keys[k];
            self.classes[class].keys[k].seen = true;
            let key_limit = pk.concurrency.map_or(PINS_MAX, u64::from);
            let mut over = None;
            if ks.pins >= key_limit.min(PINS_MAX) {
                let v = verdict(
                    Reason::KeyConcurrency,
                    Retry::Later,
                    Some("key_concurrency"),
                    Unit::Count,
                    (1, ks.pins, key_limit),
                );
                if adm.shadow && ks.pins >= PINS_MAX {
                    // Past what the entry can count: admitted unpinned, its rate not charged.
                    shadow_refusal(self, &mut events, v);
                    self.classes[class].admitted += 1;
                    let grant = Grant {
                        class,
                        permit: true,
                        key: None,
                        pools: taken,
                        start: self.now,
                    };
                    return done(Ok(grant), events);
                } else if adm.shadow {
                    over = Some(v);
                } else {
                    for &(q, n) in &taken {
                        self.pools_used[q] = self.pools_used[q].saturating_sub(n);
                    }
                    self.classes[class].in_flight -= 1;
                    let r = refuse(self, &mut events, v);
                    return done(r, events);
                }
            }
            self.classes[class].keys[k].pins += 1;
            // In shadow mode, a request over the key's cap is not charged to its rate: like the
            // refusal it stands for, it spends nothing.
            let rate = pk
                .rate
                .filter(|r| over.is_none() && rate_cost > 0 && rate_cost <= r.burst);
            if let Some(rate) = rate {
                let time = rate.span(rate.burst);
                let tolerance = time.saturating_add(rate.burst.min(time >> 16));
                let nonconforming =
                    if let Some(next) = ks.tat.max(self.now).checked_add(rate.span(rate_cost)) {
                        let ahead = next - self.now;
                        if ahead <= tolerance {
                            self.classes[class].keys[k].tat = next;
                            None
                        } else {
                            let wait = Duration::from_nanos(ahead - time);
                            Some((Reason::RateLimited, Retry::After(wait)))
                        }
                    } else {
                        // Past the clock's end: not before the clock itself ends.
                        let wait = Duration::from_nanos(u64::MAX);
                        Some((Reason::RateLimited, Retry::After(wait)))
                    };
                if let Some((reason, retry)) = nonconforming {
                    let v = verdict(
                        reason,
                        retry,
                        Some("rate"),
                        Unit::Count,
                        (rate_cost, 0, rate.burst),
                    );
                    if adm.shadow {
                        over = over.or(Some(v));
                    } else {
                        self.classes[class].keys[k].pins -= 1;
                        for &(q, n) in &taken {
                            self.pools_used[q] = self.pools_used[q].saturating_sub(n);
                        }
                        self.classes[class].in_flight -= 1;
                        let r = refuse(self, &mut events, v);
                        return done(r, events);
                    }
                }
            }
            if let Some(v) = over {
                shadow_refusal(self, &mut events, v);
            }
            slot = Some(k);
        }
        // The request is admitted.
        self.classes[class].admitted += 1;
        let grant = Grant {
            class,
            permit: true,
            key: slot,
            pools: taken,
            start: self.now,
        };
        done(Ok(grant), events)
    }

    fn release(&mut self, g: &Grant, outcome: Option<Outcome>) {
        if !g.permit {
            return;
        }
        let c = &mut self.classes[g.class];
        if let Some(k) = g.key {
            c.keys[k].pins = c.keys[k].pins.saturating_sub(1);
        }
        for &(p, n) in &g.pools {
            self.pools_used[p] = self.pools_used[p].saturating_sub(n);
        }
        c.in_flight = c.in_flight.saturating_sub(1);
        if matches!(outcome, Some(Outcome::Success | Outcome::Overload)) {
            let latency = self.now.saturating_sub(g.start);
            c.latency = if c.latency == 0 {
                latency
            } else {
                c.latency - c.latency / 8 + latency / 8
            };
        }
    }

    fn reload(&mut self, concurrency: [u32; 2], flip: [bool; 2], pool_limits: [Option<u64>; 2]) {
        for (i, c) in self.setup.classes.iter_mut().enumerate() {
            if let Some(a) = &mut c.admission {
                a.concurrency = concurrency[i];
                a.shadow ^= flip[i];
            }
        }
        for (p, limit) in self.setup.pools.iter_mut().zip(pool_limits) {
            if let (Some(p), Some(limit)) = (p, limit) {
                p.limit = limit;
            }
        }
    }
}

/// Everything the refusal hook saw, in order.
type Seen = Arc<Mutex<Vec<(V, bool)>>>;

/// Where a check is made, formatted only when it fails.
#[derive(Clone, Copy)]
enum At<'a> {
    Start,
    Op(usize, &'a Op),
    End,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Start => f.write_str("start"),
            At::Op(n, op) => write!(f, "op {n} {op:?}"),
            At::End => f.write_str("end"),
        }
    }
}

/// Polls a future once; without a wait queue an admission future is ready at once.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Runs `ops` against a real engine and the model, checking every step, then drops every grant and
/// checks that everything returned to zero.
pub fn execute(setup: &Setup, ops: &[Op]) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let clock = ManualClock::new();
    let engine = Engine::builder(setup.policy())
        .clock(clock.clone())
        .on_refusal(move |e: &RefusalEvent<'_>| {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((V::of(e.verdict), e.shadow));
        })
        .build()
        .expect("the engine accepts the test policy");
    let classes: Vec<_> = CLASS_NAMES[..setup.classes.len()]
        .iter()
        .map(|n| engine.class(n).expect("declared class"))
        .collect();
    let counters: Vec<_> = COUNTER_NAMES
        .iter()
        .map(|n| engine.counter(n).expect("declared counter"))
        .collect();
    let mut model = Model::new(setup.clone());
    let mut held: Vec<(Admitted, Grant)> = Vec::new();
    compare_stats(&engine, &model, At::Start);

    for (n, op) in ops.iter().enumerate() {
        let at = At::Op(n, op);
        match *op {
            Op::Admit {
                class,
                priority,
                key,
                estimates,
                rate_cost,
                via,
            } => {
                let id = RequestId::from_u64(n as u64);
                let mut req = AdmitRequest::new(classes[class], id).rate_cost(rate_cost);
                if let Some(p) = priority {
                    req = req.priority(p);
                }
                if let Some(k) = key {
                    req = req.key(k.bytes());
                }
                for (c, e) in counters.iter().zip(estimates) {
                    req = req.estimate(*c, e);
                }
                let got = match via {
                    Via::Try => engine.try_admit(&req),
                    Via::Blocking => engine.admit(&req),
                    Via::Async => poll_once(engine.admit_async(req))
                        .unwrap_or_else(|| panic!("{at}: pending without a queue")),
                };
                let want = model.admit(class, priority, key, estimates, rate_cost, id);
                let events = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
                assert_eq!(events, want.events, "{at}: refusal events");
                match (got, want.result) {
                    (Ok(admitted), Ok(grant)) => {
                        let b = admitted.budget();
                        assert_eq!(b.request_id(), id, "{at}: budget request id");
                        assert_eq!(b.priority(), want.priority, "{at}: budget priority");
                        assert_eq!(b.class_name(), CLASS_NAMES[class], "{at}: budget class");
                        let stats = engine.admission_stats();
                        let adm = setup.classes[class].admission.as_ref();
                        let shadow = model.setup.classes[class]
                            .admission
                            .as_ref()
                            .is_some_and(|a| a.shadow);
                        if adm.is_some() && !shadow {
                            let s = stats.class(CLASS_NAMES[class]).expect("class stats");
                            assert!(
                                s.in_flight <= s.limit,
                                "{at}: admitted to {} in flight over a limit of {}",
                                s.in_flight,
                                s.limit
                            );
                            for &(p, _) in &grant.pools {
                                let ps = stats
                                    .pools
                                    .iter()
                                    .find(|s| s.pool == POOL_NAMES[p])
                                    .expect("pool stats");
                                assert!(
                                    ps.in_use <= ps.limit,
                                    "{at}: pool {} at {} over its limit {}",
                                    ps.pool,
                                    ps.in_use,
                                    ps.limit
                                );
                            }
                        }
                        held.push((admitted, grant));
                    }
                    (Err(v), Err(want)) => assert_eq!(V::of(&v), want, "{at}: verdict"),
                    (Ok(_), Err(want)) => panic!("{at}: admitted, but the model refuses: {want:?}"),
                    (Err(v), Ok(_)) => panic!("{at}: refused, but the model admits: {v:?}"),
                }
            }
            Op::Drop { grant } | Op::Finish { grant, .. } if held.is_empty() => {
                let _ = grant;
            }
            Op::Drop { grant } => {
                let (admitted, g) = held.remove(usize::from(grant) % held.len());
                drop(admitted);
                model.release(&g, None);
            }
            Op::Finish {
                grant,
                outcome,
                deferred,
            } => {
                let (mut admitted, g) = held.remove(usize::from(grant) % held.len());
                if deferred {
                    admitted.set_outcome(outcome);
                    drop(admitted);
                } else {
                    admitted.finish(outcome);
                }
                model.release(&g, Some(outcome));
            }
            Op::Advance { ns } => {
                clock.advance(Duration::from_nanos(ns));
                model.now = model.now.saturating_add(ns);
                assert_eq!(clock.now().as_nanos(), model.now, "{at}: clock");
            }
            Op::Reload {
                concurrency,
                flip_shadow,
                pool_limits,
            } => {
                model.reload(concurrency, flip_shadow, pool_limits);
                engine
                    .reload(model.setup.policy())
                    .unwrap_or_else(|e| panic!("{at}: reload refused: {e}"));
            }
        }
        let stray = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        assert!(
            stray.is_empty(),
            "{at}: unexpected refusal events {stray:?}"
        );
        compare_stats(&engine, &model, at);
    }

    // Give everything back, oldest first.
    for (admitted, g) in held.drain(..) {
        drop(admitted);
        model.release(&g, None);
    }
    compare_stats(&engine, &model, At::End);
    let stats = engine.admission_stats();
    for c in &stats.classes {
        assert_eq!(
            c.in_flight, 0,
            "end: {} still has requests in flight",
            c.class
        );
    }
    for p in &stats.pools {
        assert_eq!(p.in_use, 0, "end: pool {} still holds cost", p.pool);
    }
    for (i, c) in model.classes.iter().enumerate() {
        for (k, ks) in c.keys.iter().enumerate() {
            assert_eq!(
                ks.pins, 0,
                "end: the model's class {i} key {k} still pinned"
            );
        }
    }
    // The engine's keys are back to zero too: with nothing held, each key takes exactly as many
    // requests as its limit allows (in an enforcing class whose own limit is no smaller, at the
    // critical priority, which sees the whole of it, and at no rate cost).
    for (i, spec) in model.setup.classes.iter().enumerate() {
        let Some(adm) = &spec.admission else { continue };
        let Some(limit) = adm.per_key.and_then(|k| k.concurrency) else {
            continue;
        };
        if adm.shadow || limit > adm.concurrency {
            continue;
        }
        for k in 0..NKEYS {
            let probe: Vec<Admitted> = (0..=limit)
                .filter_map(|n| {
                    let req = AdmitRequest::new(classes[i], RequestId::from_u64(u64::from(n)))
                        .key(Key::Valid(k).bytes())
                        .rate_cost(0)
                        .priority(Priority::Critical);
                    engine.try_admit(&req).ok()
                })
                .collect();
            assert_eq!(
                probe.len(),
                limit as usize,
                "end: class {i} key {k} took {} requests, its limit is {limit}",
                probe.len()
            );
        }
    }
}

/// Compares [`Engine::admission_stats`] with the model.
fn compare_stats(engine: &Engine, model: &Model, at: At<'_>) {
    let stats = engine.admission_stats();
    let expected: Vec<(usize, &AdmissionSpec)> = model
        .setup
        .classes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.admission.as_ref().map(|a| (i, a)))
        .collect();
    assert_eq!(
        stats.classes.len(),
        expected.len(),
        "{at}: classes with admission settings"
    );
    for (s, &(i, a)) in stats.classes.iter().zip(&expected) {
        let m = &model.classes[i];
        let name = CLASS_NAMES[i];
        assert_eq!(s.class, name, "{at}: class order");
        assert_eq!(s.in_flight, m.in_flight, "{at}: {name} in flight");
        assert_eq!(s.limit, a.concurrency, "{at}: {name} limit");
        assert_eq!(s.queue_len, 0, "{at}: {name} queue");
        assert_eq!(s.shadow, a.shadow, "{at}: {name} shadow");
        match (s.keys, a.per_key) {
            (None, None) => {}
            (Some((occupied, capacity)), Some(k)) => {
                assert_eq!(capacity, k.max_keys as usize, "{at}: {name} key capacity");
                let seen = m.keys.iter().filter(|k| k.seen).count();
                let live = m
                    .keys
                    .iter()
                    .filter(|k| k.pins > 0 || k.tat > model.now)
                    .count();
                assert!(
                    live <= occupied && occupied <= seen,
                    "{at}: {name} has {occupied} key entries; {live} keys are live, {seen} seen"
                );
            }
            (got, _) => panic!("{at}: {name} keys {got:?}, expected {:?}", a.per_key),
        }
        let c = &s.counts;
        assert_eq!(c.admitted, m.admitted, "{at}: {name} admitted");
        for (r, reason) in REASONS.iter().enumerate() {
            assert_eq!(
                c.refused(*reason),
                m.refused[r],
                "{at}: {name} refused {reason:?}"
            );
            assert_eq!(
                c.shadow_refused(*reason),
                m.shadow[r],
                "{at}: {name} shadow refused {reason:?}"
            );
        }
        let total = |v: &[(Reason, u64)]| v.iter().map(|(_, n)| n).sum::<u64>();
        assert_eq!(
            total(&c.refused),
            m.refused.iter().sum::<u64>(),
            "{at}: {name} refusals under other reasons: {:?}",
            c.refused
        );
        assert_eq!(
            total(&c.shadow_refused),
            m.shadow.iter().sum::<u64>(),
            "{at}: {name} shadow refusals under other reasons: {:?}",
            c.shadow_refused
        );
        assert_eq!(c.shed_by_priority, m.shed, "{at}: {name} shed by priority");
        assert_eq!((c.waited, c.timed_out), (0, 0), "{at}: {name} waits");
    }
    let pools: Vec<(usize, PoolSpec)> = model
        .setup
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    assert_eq!(stats.pools.len(), pools.len(), "{at}: pools");
    for (s, &(i, p)) in stats.pools.iter().zip(&pools) {
        assert_eq!(s.pool, POOL_NAMES[i], "{at}: pool order");
        assert_eq!(s.in_use, model.pools_used[i], "{at}: {} in use", s.pool);
        assert_eq!(s.limit, p.limit, "{at}: {} limit", s.pool);
    }
}

//! Admission settings of a class, and shared cost pools.
//!
//! Kept apart from the budget settings because they answer a different question: not "how much may
//! this request spend" but "may it start at all, now". Fractions (headroom, backoff, tolerance) are
//! stored as whole per-mille values, so that a policy compares exactly and hot paths use integer math.

use std::sync::Arc;
use std::time::Duration;

/// Per-mille: 1000 is 100%.
pub type Permille = u16;

/// The largest concurrency limit a class may have.
pub const MAX_CONCURRENCY: u32 = 1 << 24;
/// The most per-key entries a class may keep.
pub const MAX_KEYS: u32 = 1 << 24;
/// The most pools one class may draw from.
pub const MAX_POOLS_PER_CLASS: usize = 4;
/// The most pools a policy may declare.
pub const MAX_POOLS: usize = 64;

/// How an adaptive limit reacts to latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Additive increase, multiplicative decrease: +1 per window while the limit is in use and latency
    /// stays under the threshold; times `backoff` when a window's latency goes over it or requests fail
    /// by overload.
    Aimd {
        /// Multiplier applied on overload, per mille (900 = ×0.9). Between 1 and 999.
        backoff: Permille,
        /// Mean latency above which a window counts as overloaded.
        latency_threshold: Duration,
    },
    /// A gradient of long-term over short-term latency (after Netflix's Gradient2): the limit follows
    /// `limit × clamp(tolerance × long / short, 0.5, 1) + sqrt(limit)`, smoothed.
    Gradient2 {
        /// How much worse than the long-term latency the short-term may get before the limit falls,
        /// per mille (1500 = 1.5×). At least 1000.
        tolerance: Permille,
        /// Weight of each new estimate, per mille (200 = 0.2). Between 1 and 1000.
        smoothing: Permille,
    },
}

/// A concurrency limit that follows latency, within bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdaptiveLimit {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The limit to start from.
    pub initial: u32,
    /// Never below this, nor below the smallest limit that leaves at least one permit to every
    /// priority with a share of it (2 with the default headroom, whose background share is 50%):
    /// see [`floored`](Self::floored).
    pub min: u32,
    /// Never above this.
    pub max: u32,
    /// How often the limit is recomputed from the samples of the window.
    pub window: Duration,
}

impl AdaptiveLimit {
    /// The limit as an engine runs it under `headroom`: its floor raised, where need be, to the
    /// smallest limit that leaves at least one permit to every priority with a share of it that
    /// some limit up to `max` admits, and `initial` within the new bounds.
    ///
    /// Below that floor a priority would be refused outright, and a limit only moves on the
    /// samples of requests it admitted: a limit that other priorities' overloads had backed off
    /// there would never admit that priority again, however healthy the backend became, and a
    /// class of only that priority would stay shut for good. A share too small for even `max` to
    /// admit is left out: no floor could serve it (its requests are told not to retry), and one at
    /// `max` would stop the limit from ever backing off.
    ///
    /// ```
    /// use costguard::policy::{AdaptiveLimit, Concurrency, Headroom, Policy};
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c.admission(|a| a.aimd(1, 1, 10, 0.5, Duration::from_millis(100))))
    ///     .build()
    ///     .unwrap();
    /// let admission = policy.class("api").unwrap().admission().unwrap();
    /// let Concurrency::Adaptive(limit) = admission.concurrency() else { unreachable!() };
    /// // Background work sees half of the limit by default: at 1, no permit at all.
    /// let run = limit.floored(&Headroom::default());
    /// assert_eq!((run.min, run.initial, run.max), (2, 2, 10));
    /// ```
    pub fn floored(&self, headroom: &Headroom) -> AdaptiveLimit {
        let floor = headroom
            .0
            .iter()
            .filter(|&&share| share > 0)
            .map(|&share| 1000u32.div_ceil(u32::from(share.min(1000))))
            .filter(|&floor| floor <= self.max)
            .max()
            .unwrap_or(1);
        let min = self.min.max(floor);
        AdaptiveLimit {
            min,
            initial: self.initial.clamp(min, self.max),
            ..*self
        }
    }
}

/// How many requests of a class may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// A fixed limit.
    Static(u32),
    /// A limit that adapts to latency.
    Adaptive(AdaptiveLimit),
}

impl Concurrency {
    /// The limit a class starts with.
    pub fn initial(&self) -> u32 {
        match self {
            Concurrency::Static(n) => *n,
            Concurrency::Adaptive(a) => a.initial,
        }
    }
}

/// The share of the concurrency limit each priority may fill, per mille, indexed by
/// [`Priority`](crate::Priority) (critical first). Lower priorities see less of the limit, so under
/// overload they are refused first.
///
/// By default normal work sees the whole limit, sheddable work 80% and background work 50%. Lower
/// the normal share (say to 0.9) to keep a reserve that only critical work may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom(pub [Permille; 4]);

impl Default for Headroom {
    fn default() -> Self {
        Headroom([1000, 1000, 800, 500])
    }
}

/// Waiting instead of refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuePolicy {
    /// The most requests waiting at once.
    pub capacity: u32,
    /// The longest a request waits (also capped by its own deadline).
    pub max_wait: Duration,
    /// CoDel target: when the shortest wait of an interval stays above this, the queue is standing
    /// and new waiters get only this long, served newest first.
    pub codel_target: Duration,
    /// CoDel interval.
    pub codel_interval: Duration,
}

/// A cost-weighted rate: `amount` units per `per`, with bursts of up to `burst` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Units per period.
    pub amount: u64,
    /// The period.
    pub per: Duration,
    /// The most units that may be spent at once after a quiet spell.
    pub burst: u64,
}

/// Limits per key (user, IP, tenant) inside a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PerKey {
    /// The most requests of one key in flight at once (at most 65,535). Without it a key's
    /// requests in flight are still counted, and held to 65,535, the most the count can hold.
    pub concurrency: Option<u32>,
    /// The rate of one key.
    pub rate: Option<RateLimit>,
    /// The most keys tracked at once (the memory bound). A reload that changes it starts a new,
    /// empty table: every key's count in flight and rate allowance start afresh.
    pub max_keys: u32,
}

/// The admission settings of a class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionPolicy {
    pub(crate) concurrency: Concurrency,
    pub(crate) headroom: Headroom,
    pub(crate) queue: Option<QueuePolicy>,
    pub(crate) shadow: bool,
    pub(crate) pools: Vec<Arc<str>>,
    pub(crate) per_key: Option<PerKey>,
}

impl AdmissionPolicy {
    /// The concurrency limit.
    pub fn concurrency(&self) -> Concurrency {
        self.concurrency
    }
    /// The share of the limit per priority.
    pub fn headroom(&self) -> Headroom {
        self.headroom
    }
    /// The wait queue, if requests may wait.
    pub fn queue(&self) -> Option<QueuePolicy> {
        self.queue
    }
    /// Whether refusals are only recorded, not enforced.
    pub fn shadow(&self) -> bool {
        self.shadow
    }
    /// The pools the class draws from.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(|p| &**p)
    }
    /// Per-key limits.
    pub fn per_key(&self) -> Option<PerKey> {
        self.per_key
    }
}

/// A process-wide pool of cost in flight, shared by the classes that draw from it.
///
/// A request admitted to such a class holds its declared estimate of the pool's dimension until it
/// finishes, so many mid-sized requests cannot together saturate what the pool protects (for example
/// DB queries in flight across the process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    pub(crate) name: Arc<str>,
    pub(crate) dimension: Arc<str>,
    pub(crate) limit: u64,
}

impl PoolPolicy {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The counter dimension whose estimates it holds.
    pub fn dimension(&self) -> &str {
        &self.dimension
    }
    /// The most cost in flight at once.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Admission settings as written, before validation.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawAdmission {
    pub(crate) concurrency: Option<super::Field<RawConcurrency>>,
    pub(crate) headroom: Vec<(super::Field<String>, super::Field<f64>)>,
    pub(crate) queue: Option<super::Field<RawQueue>>,
    pub(crate) shadow: bool,
    pub(crate) pools: Vec<super::Field<String>>,
    pub(crate) per_key: Option<super::Field<RawPerKey>>,
    /// Settings of an adaptive limit given (through the builder) to a class whose limit is not
    /// adaptive: reported, not dropped.
    pub(crate) adaptive_only: Vec<&'static str>,
}

#[derive(Clone, Debug)]
pub(crate) enum RawConcurrency {
    /// Written, but not readable as a limit (the reader reported why): not missing either.
    Unreadable,
    Static(u64),
    Adaptive {
        algorithm: String,
        initial: Option<u64>,
        min: Option<u64>,
        max: Option<u64>,
        window: Option<Duration>,
        backoff: Option<f64>,
        latency_threshold: Option<Duration>,
        tolerance: Option<f64>,
        smoothing: Option<f64>,
        /// Where each key was written, when the policy came from a file.
        keys: KeysAt,
    },
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RawQueue {
    pub(crate) capacity: Option<u64>,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) codel_target: Option<Duration>,
    pub(crate) codel_interval: Option<Duration>,
    /// Where each key was written, when the policy came from a file.
    pub(crate) keys: KeysAt,
}

/// Where each key of a settings table was written, for errors about one key.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeysAt(pub(crate) Vec<(&'static str, Option<super::Location>)>);

impl KeysAt {
    /// Whether `key` was written, readable or not: a required key whose value could not be read
    /// was reported as such by the reader, and is not also missing.
    pub(crate) fn written(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| *k == key)
    }

    /// Where `key` was written, or else where its table was.
    fn of(&self, key: &str, table: &Option<super::Location>) -> Option<super::Location> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(|| table.clone(), |(_, at)| at.clone())
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RawPerKey {
    pub(crate) concurrency: Option<u64>,
    pub(crate) rate: Option<u64>,
    pub(crate) per: Option<Duration>,
    pub(crate) burst: Option<u64>,
    pub(crate) max_keys: Option<u64>,
    /// Where each key was written, when the policy came from a file.
    pub(crate) keys: KeysAt,
}

#[derive(Clone, Debug)]
pub(crate) struct RawPool {
    pub(crate) name: super::Field<String>,
    pub(crate) dimension: Option<super::Field<String>>,
    pub(crate) limit: Option<super::Field<u64>>,
    /// Settings written whose values could not be read (each already reported, so not missing).
    pub(crate) unreadable: Vec<&'static str>,
}

/// Default settings, chosen for an interactive API tier.
pub(crate) const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(100);
pub(crate) const DEFAULT_CODEL_TARGET: Duration = Duration::from_millis(5);
pub(crate) const DEFAULT_CODEL_INTERVAL: Duration = Duration::from_millis(100);
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_MAX_KEYS: u32 = 65_536;

/// A fraction in `[lo, hi]` as per mille, or `None` for NaN, anything out of range, and a fraction
/// above zero that would round to zero (a share that was meant to be small, not none).
pub(crate) fn permille(x: f64, lo: f64, hi: f64) -> Option<Permille> {
    let p = (x * 1000.0).round();
    if x.is_finite() && x >= lo && x <= hi && (p > 0.0 || x == 0.0) {
        Some(p as Permille)
    } else {
        None
    }
}

/// What is wrong with a fraction of `[0, 1]` that [`permille`] refused.
/// Nanoseconds in a year of 365.25 days.
const NS_PER_YEAR: u64 = 31_557_600_000_000_000;
/// The longest a per-key rate's burst may span: a century.
const MAX_RATE_SPAN_NS: u64 = 100 * NS_PER_YEAR;

pub(crate) fn fraction_problem(x: f64) -> String {
    if x > 0.0 && x < 0.0005 {
        format!("is below the resolution of 0.001 (found {x}); write 0 for none")
    } else {
        format!("must be a fraction between 0 and 1 (found {x})")
    }
}

use super::error::Problems;
use super::{Dimension, DimensionKind, Field};
use crate::Priority;

fn check_u32(
    problems: &mut Problems,
    at: &Option<super::Location>,
    field: String,
    value: u64,
    min: u64,
    max: u64,
) -> Option<u32> {
    if value < min || value > max {
        problems.push(
            at.clone(),
            field,
            format!("must be between {min} and {max} (found {value})"),
        );
        None
    } else {
        Some(value as u32)
    }
}

fn positive(
    problems: &mut Problems,
    at: &Option<super::Location>,
    field: String,
    d: Duration,
) -> Option<Duration> {
    if d.is_zero() {
        problems.push(at.clone(), field, "must be greater than zero");
        None
    } else {
        Some(d)
    }
}

pub(crate) fn validate_pools(
    raw: Vec<RawPool>,
    dimensions: &[Dimension],
    problems: &mut Problems,
) -> Vec<PoolPolicy> {
    let mut pools: Vec<PoolPolicy> = Vec::new();
    if raw.len() > MAX_POOLS {
        problems.push(
            None,
            "pools",
            format!("{} pools declared; at most {MAX_POOLS}", raw.len()),
        );
    }
    for p in raw {
        let base = format!("pools.{}", super::truncate(&p.name.value));
        if !super::valid_name(&p.name.value) {
            problems.push(p.name.at.clone(), &base, super::name_problem(&p.name.value));
            continue;
        }
        if pools.iter().any(|q| *q.name == *p.name.value) {
            problems.push(p.name.at.clone(), &base, "pool declared twice");
            continue;
        }
        let missing = |key: &str| !p.unreadable.contains(&key);
        let Some(dim) = p.dimension else {
            if missing("dimension") {
                problems.push(
                    p.name.at.clone(),
                    &base,
                    "missing `dimension` (the counter it holds)",
                );
            }
            continue;
        };
        let Some(limit) = p.limit else {
            if missing("limit") {
                problems.push(p.name.at.clone(), &base, "missing `limit`");
            }
            continue;
        };
        let dimension = match dimensions.iter().find(|d| *d.name == *dim.value) {
            Some(d) if d.kind == DimensionKind::Counter => Arc::clone(&d.name),
            Some(_) => {
                problems.push(
                    dim.at.clone(),
                    format!("{base}.dimension"),
                    format!("`{}` is a level; a pool holds a counter", dim.value),
                );
                continue;
            }
            None => {
                problems.push(
                    dim.at.clone(),
                    format!("{base}.dimension"),
                    format!(
                        "unknown dimension `{}`",
                        super::truncate(&dim.value).escape_debug()
                    ),
                );
                continue;
            }
        };
        if limit.value == 0 {
            problems.push(
                limit.at.clone(),
                format!("{base}.limit"),
                "must be greater than zero",
            );
            continue;
        }
        pools.push(PoolPolicy {
            name: Arc::from(p.name.value.as_str()),
            dimension,
            limit: limit.value,
        });
    }
    pools
}

pub(crate) fn validate_admission(
    raw: Field<RawAdmission>,
    base: &str,
    pools: &[PoolPolicy],
    problems: &mut Problems,
) -> Option<AdmissionPolicy> {
    let before = problems.len();
    let base = format!("{base}.admission");
    let a = raw.value;
    for setting in &a.adaptive_only {
        problems.push(
            raw.at.clone(),
            format!("{base}.concurrency.{setting}"),
            "applies only to an adaptive limit (gradient2 or aimd)",
        );
    }
    let concurrency = match a.concurrency {
        None => {
            problems.push(
                raw.at.clone(),
                format!("{base}.concurrency"),
                "missing `concurrency`",
            );
            None
        }
        Some(Field {
            value: RawConcurrency::Unreadable,
            ..
        }) => None,
        Some(Field {
            value: RawConcurrency::Static(n),
            at,
        }) => check_u32(
            problems,
            &at,
            format!("{base}.concurrency"),
            n,
            1,
            u64::from(MAX_CONCURRENCY),
        )
        .map(Concurrency::Static),
        Some(Field {
            value:
                RawConcurrency::Adaptive {
                    algorithm,
                    initial,
                    min,
                    max,
                    window,
                    backoff,
                    latency_threshold,
                    tolerance,
                    smoothing,
                    keys,
                },
            at,
        }) => {
            let f = |k: &str| format!("{base}.concurrency.{k}");
            // Each problem where its key was written (the table's place for one left out).
            let at_of = |k: &str| keys.of(k, &at);
            let top = u64::from(MAX_CONCURRENCY);
            let min = check_u32(problems, &at_of("min"), f("min"), min.unwrap_or(1), 1, top);
            let max = match max {
                Some(m) => check_u32(problems, &at_of("max"), f("max"), m, 1, top),
                None if keys.written("max") => None,
                None => {
                    problems.push(at.clone(), f("max"), "an adaptive limit needs `max`");
                    None
                }
            };
            let window = positive(
                problems,
                &at_of("window"),
                f("window"),
                window.unwrap_or(DEFAULT_WINDOW),
            );
            let algorithm = match algorithm.as_str() {
                "aimd" => {
                    let b = backoff.unwrap_or(0.9);
                    let backoff = permille(b, 0.001, 0.999).filter(|p| (1..=999).contains(p));
                    if backoff.is_none() {
                        problems.push(
                            at_of("backoff"),
                            f("backoff"),
                            format!("must be a fraction between 0 and 1, exclusive (found {b})"),
                        );
                    }
                    if tolerance.is_some() || smoothing.is_some() {
                        let key = if tolerance.is_some() {
                            "tolerance"
                        } else {
                            "smoothing"
                        };
                        problems.push(
                            at_of(key),
                            f("algorithm"),
                            "`tolerance` and `smoothing` belong to gradient2, not aimd",
                        );
                    }
                    let threshold = match latency_threshold {
                        Some(d) => positive(
                            problems,
                            &at_of("latency_threshold"),
                            f("latency_threshold"),
                            d,
                        ),
                        None if keys.written("latency_threshold") => None,
                        None => {
                            problems.push(
                                at.clone(),
                                f("latency_threshold"),
                                "aimd needs `latency_threshold`",
                            );
                            None
                        }
                    };
                    backoff
                        .zip(threshold)
                        .map(|(backoff, latency_threshold)| Algorithm::Aimd {
                            backoff,
                            latency_threshold,
                        })
                }
                "gradient2" => {
                    let t = tolerance.unwrap_or(1.5);
                    let tolerance = permille(t, 1.0, 10.0);
                    if tolerance.is_none() {
                        problems.push(
                            at_of("tolerance"),
                            f("tolerance"),
                            format!("must be between 1 and 10 (found {t})"),
                        );
                    }
                    let s = smoothing.unwrap_or(0.2);
                    let smoothing = permille(s, 0.001, 1.0).filter(|p| *p >= 1);
                    if smoothing.is_none() {
                        problems.push(
                            at_of("smoothing"),
                            f("smoothing"),
                            format!("must be a fraction above 0, at most 1 (found {s})"),
                        );
                    }
                    if backoff.is_some() || latency_threshold.is_some() {
                        let key = if backoff.is_some() {
                            "backoff"
                        } else {
                            "latency_threshold"
                        };
                        problems.push(
                            at_of(key),
                            f("algorithm"),
                            "`backoff` and `latency_threshold` belong to aimd, not gradient2",
                        );
                    }
                    tolerance
                        .zip(smoothing)
                        .map(|(tolerance, smoothing)| Algorithm::Gradient2 {
                            tolerance,
                            smoothing,
                        })
                }
                other => {
                    problems.push(
                        at_of("algorithm"),
                        f("algorithm"),
                        format!(
                            "unknown algorithm {:?} (expected \"aimd\" or \"gradient2\")",
                            super::truncate(other).escape_debug().to_string()
                        ),
                    );
                    None
                }
            };
            match (min, max, window, algorithm) {
                (Some(min), Some(max), Some(window), Some(algorithm)) => {
                    let initial = initial.unwrap_or(u64::from(min));
                    if min > max {
                        problems.push(
                            at_of("min"),
                            f("min"),
                            format!("min {min} is above max {max}"),
                        );
                        None
                    } else if initial < u64::from(min) || initial > u64::from(max) {
                        problems.push(
                            at_of("initial"),
                            f("initial"),
                            format!("must be between min {min} and max {max} (found {initial})"),
                        );
                        None
                    } else {
                        Some(Concurrency::Adaptive(AdaptiveLimit {
                            algorithm,
                            initial: initial as u32,
                            min,
                            max,
                            window,
                        }))
                    }
                }
                _ => None,
            }
        }
    };

    let mut headroom = Headroom::default();
    // Where each priority's share was written, if it was.
    let mut written: [Option<&Option<super::Location>>; 4] = [None; 4];
    for (name, share) in &a.headroom {
        let field = format!("{base}.headroom.{}", super::truncate(&name.value));
        let Ok(p) = name.value.parse::<Priority>() else {
            problems.push(
                name.at.clone(),
                field,
                format!(
                    "unknown priority `{}`",
                    super::truncate(&name.value).escape_debug()
                ),
            );
            continue;
        };
        match permille(share.value, 0.0, 1.0) {
            Some(v) => {
                headroom.0[p as usize] = v;
                written[p as usize] = Some(&share.at);
            }
            None => problems.push(share.at.clone(), field, fraction_problem(share.value)),
        }
    }
    if headroom.0[0] != 1000 {
        problems.push(
            written[0].cloned().unwrap_or_else(|| raw.at.clone()),
            format!("{base}.headroom.critical"),
            "critical work always sees the whole limit (1.0)",
        );
    }
    // A share left out never exceeds the one above it: lowering only `normal` to 0.7 lowers the
    // default shares below it with it.
    for (p, at) in written.iter().enumerate().skip(1) {
        if at.is_none() {
            headroom.0[p] = headroom.0[p].min(headroom.0[p - 1]);
        }
    }
    let names = ["critical", "normal", "sheddable", "background"];
    for p in 1..headroom.0.len() {
        if headroom.0[p] > headroom.0[p - 1] {
            // Both written (a share left out was lowered above): report the lower priority's.
            problems.push(
                written[p].cloned().unwrap_or_else(|| raw.at.clone()),
                format!("{base}.headroom.{}", names[p]),
                format!(
                    "{} work cannot see more of the limit ({}) than {} work ({})",
                    names[p],
                    f64::from(headroom.0[p]) / 1000.0,
                    names[p - 1],
                    f64::from(headroom.0[p - 1]) / 1000.0
                ),
            );
        }
    }

    let queue = a.queue.and_then(|q| {
        let f = |k: &str| format!("{base}.queue.{k}");
        let at = |k: &str| q.value.keys.of(k, &q.at);
        // One written but unreadable was reported as such, not as a capacity of 0.
        let capacity = match q.value.capacity {
            None if q.value.keys.written("capacity") => None,
            None => {
                problems.push(
                    q.at.clone(),
                    format!("{base}.queue"),
                    "missing `capacity` (how many requests may wait)",
                );
                None
            }
            Some(c) => check_u32(
                problems,
                &at("capacity"),
                f("capacity"),
                c,
                1,
                u64::from(MAX_CONCURRENCY),
            ),
        };
        let max_wait = positive(
            problems,
            &at("max_wait"),
            f("max_wait"),
            q.value.max_wait.unwrap_or(DEFAULT_MAX_WAIT),
        );
        let target = positive(
            problems,
            &at("codel_target"),
            f("codel_target"),
            q.value.codel_target.unwrap_or(DEFAULT_CODEL_TARGET),
        );
        let interval = positive(
            problems,
            &at("codel_interval"),
            f("codel_interval"),
            q.value.codel_interval.unwrap_or(DEFAULT_CODEL_INTERVAL),
        );
        let (target, interval) = (target?, interval?);
        // Not compared with a default standing in for one that could not be read.
        let unread = |k: &str, d: Option<Duration>| d.is_none() && q.value.keys.written(k);
        if unread("codel_target", q.value.codel_target)
            || unread("codel_interval", q.value.codel_interval)
        {
            return None;
        }
        if target > interval {
            // Reported at the interval when only it was written (the target is then the default).
            let written = |k: &str| q.value.keys.written(k);
            if !written("codel_target") && written("codel_interval") {
                problems.push(
                    at("codel_interval"),
                    f("codel_interval"),
                    format!(
                        "must not be below codel_target ({target:?}, the default): a wait is judged against the target over each interval"
                    ),
                );
            } else {
                problems.push(
                    at("codel_target"),
                    f("codel_target"),
                    "must not be above codel_interval (a wait is judged against the target over each interval)",
                );
            }
            return None;
        }
        Some(QueuePolicy {
            capacity: capacity?,
            max_wait: max_wait?,
            codel_target: target,
            codel_interval: interval,
        })
    });

    let mut class_pools: Vec<Arc<str>> = Vec::new();
    for p in &a.pools {
        match pools.iter().find(|q| *q.name == *p.value) {
            None => problems.push(
                p.at.clone(),
                format!("{base}.pools"),
                format!(
                    "unknown pool `{}`",
                    super::truncate(&p.value).escape_debug()
                ),
            ),
            Some(q) if class_pools.contains(&q.name) => problems.push(
                p.at.clone(),
                format!("{base}.pools"),
                format!("pool `{}` listed twice", p.value),
            ),
            Some(q) => class_pools.push(Arc::clone(&q.name)),
        }
    }
    if class_pools.len() > MAX_POOLS_PER_CLASS {
        problems.push(
            raw.at.clone(),
            format!("{base}.pools"),
            format!("at most {MAX_POOLS_PER_CLASS} pools per class"),
        );
    }

    let per_key = a.per_key.and_then(|k| {
        let f = |n: &str| format!("{base}.per_key.{n}");
        let at = |n: &str| k.value.keys.of(n, &k.at);
        let v = k.value.clone();
        let concurrency = v.concurrency.map(|c| {
            check_u32(
                problems,
                &at("concurrency"),
                f("concurrency"),
                c,
                1,
                u64::from(u16::MAX),
            )
        });
        // A rate written but unreadable was reported as such: neither absent nor missing.
        let rate_unread = v.rate.is_none() && k.value.keys.written("rate");
        let rate = match (v.rate, v.per, v.burst) {
            _ if rate_unread => None,
            (None, None, None) => Some(None),
            (Some(amount), per, burst) => {
                let per = positive(
                    problems,
                    &at("per"),
                    f("per"),
                    per.unwrap_or(Duration::from_secs(1)),
                );
                let burst = burst.unwrap_or(amount);
                if amount == 0 {
                    problems.push(at("rate"), f("rate"), "must be greater than zero");
                }
                // A burst left out is the rate: only a written one is its own problem.
                if burst == 0 && v.burst.is_some() {
                    problems.push(at("burst"), f("burst"), "must be greater than zero");
                }
                // The limiter keeps a key's allowance as a point in time up to `burst × per /
                // rate` ahead of now: past a century that point no longer fits the clock's range.
                let span = per.map(|per| {
                    let ns = u128::from(crate::clock::duration_to_nanos(per)) * u128::from(burst);
                    u64::try_from(ns.div_ceil(u128::from(amount.max(1)))).ok()
                });
                if let Some(span) = span.filter(|s| s.is_none_or(|s| s > MAX_RATE_SPAN_NS)) {
                    let key = if v.burst.is_some() { "burst" } else { "per" };
                    problems.push(
                        at(key),
                        f(key),
                        format!(
                            "a burst of {burst} at {amount} per {:?} spans {}; at most 100 years",
                            per.unwrap_or_default(),
                            span.map_or("more than u64 nanoseconds".to_owned(), |s| format!(
                                "{} years",
                                s / NS_PER_YEAR
                            ))
                        ),
                    );
                }
                per.filter(|_| {
                    amount > 0 && burst > 0 && span.flatten().is_some_and(|s| s <= MAX_RATE_SPAN_NS)
                })
                .map(|per| Some(RateLimit { amount, per, burst }))
            }
            _ => {
                // Missing, so reported where `per` (or `burst`) was written.
                let key = if v.per.is_some() { "per" } else { "burst" };
                problems.push(at(key), f("rate"), "`per` and `burst` need `rate`");
                None
            }
        };
        let max_keys = check_u32(
            problems,
            &at("max_keys"),
            f("max_keys"),
            v.max_keys.unwrap_or(u64::from(DEFAULT_MAX_KEYS)),
            1,
            u64::from(MAX_KEYS),
        );
        if concurrency.is_none()
            && !k.value.keys.written("concurrency")
            && matches!(rate, Some(None))
        {
            problems.push(
                k.at.clone(),
                format!("{base}.per_key"),
                "give `concurrency`, `rate`, or both",
            );
        }
        Some(PerKey {
            concurrency: match concurrency {
                Some(c) => Some(c?),
                None => None,
            },
            rate: rate?,
            max_keys: max_keys?,
        })
    });

    if problems.len() > before {
        return None;
    }
    Some(AdmissionPolicy {
        concurrency: concurrency?,
        headroom,
        queue,
        shadow: a.shadow,
        pools: class_pools,
        per_key,
    })
}

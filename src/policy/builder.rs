//! Policies built in code.

use super::admission::{RawAdmission, RawConcurrency, RawPerKey, RawPool, RawQueue};
use super::backend::{field, RawBackend};
use super::error::Problems;
use super::{validate, DimensionKind, Field, Policy, PolicyError, RawClass, RawDimension};
use crate::verdict::Unit;
use crate::Priority;
use std::time::Duration;

/// Builds a [`Policy`] in code; [`build`](Self::build) validates it and reports every problem at once.
///
/// ```
/// use costguard::{Policy, Priority};
/// use std::time::Duration;
///
/// let policy = Policy::builder()
///     .counter("file_lookups")
///     .bytes("output_bytes")
///     .level("nesting_depth")
///     .class("parse", |c| {
///         c.wall_time(Duration::from_secs(30))
///             .retries(3)
///             .limit("file_lookups", 500)
///             .limit("output_bytes", 2 << 20)
///             .limit("nesting_depth", 40)
///     })
///     .class("api", |c| c.wall_time(Duration::from_secs(10)).priority(Priority::Normal))
///     .build()
///     .unwrap();
/// assert_eq!(policy.class("parse").unwrap().retries(), Some(3));
///
/// let err = Policy::builder()
///     .class("parse", |c| c.limit("file_lookpus", 1))
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("unknown dimension `file_lookpus`"));
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct PolicyBuilder {
    dims: Vec<RawDimension>,
    classes: Vec<RawClass>,
    pools: Vec<RawPool>,
    backends: Vec<RawBackend>,
}

impl PolicyBuilder {
    /// Declares a dimension.
    pub fn dimension(mut self, name: &str, kind: DimensionKind, unit: Unit) -> Self {
        self.dims.push(RawDimension {
            name: Field::new(name.to_owned(), None),
            kind,
            unit,
        });
        self
    }

    /// Declares a counter of plain counts.
    pub fn counter(self, name: &str) -> Self {
        self.dimension(name, DimensionKind::Counter, Unit::Count)
    }

    /// Declares a counter of bytes.
    pub fn bytes(self, name: &str) -> Self {
        self.dimension(name, DimensionKind::Counter, Unit::Bytes)
    }

    /// Declares a level (a current value with a ceiling).
    pub fn level(self, name: &str) -> Self {
        self.dimension(name, DimensionKind::Level, Unit::Count)
    }

    /// Declares a class, configured by `f`.
    pub fn class(mut self, name: &str, f: impl FnOnce(ClassBuilder) -> ClassBuilder) -> Self {
        let start = ClassBuilder {
            raw: RawClass {
                name: Field::new(name.to_owned(), None),
                ..RawClass::default()
            },
        };
        self.classes.push(f(start).raw);
        self
    }

    /// Declares a pool of cost in flight over a counter, shared by the classes that list it.
    pub fn pool(mut self, name: &str, dimension: &str, limit: u64) -> Self {
        self.pools.push(RawPool {
            name: Field::new(name.to_owned(), None),
            dimension: Some(Field::new(dimension.to_owned(), None)),
            limit: Some(Field::new(limit, None)),
            unreadable: Vec::new(),
        });
        self
    }

    /// Declares a backend, configured by `f`.
    pub fn backend(mut self, name: &str, f: impl FnOnce(BackendBuilder) -> BackendBuilder) -> Self {
        let start = BackendBuilder {
            raw: RawBackend {
                name: field(name.to_owned()),
                ..RawBackend::default()
            },
        };
        self.backends.push(f(start).raw);
        self
    }

    /// Validates the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        validate(
            self.dims,
            self.classes,
            self.pools,
            self.backends,
            Problems::default(),
        )
    }
}

/// Configures one class of a [`PolicyBuilder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ClassBuilder {
    raw: RawClass,
}

fn optional_time(d: Duration) -> Option<Duration> {
    (d != Duration::MAX).then_some(d)
}

impl ClassBuilder {
    /// The wall-time limit; [`Duration::MAX`] means no deadline. Zero is rejected by `build`.
    pub fn wall_time(mut self, d: Duration) -> Self {
        self.raw.wall_time = Some(Field::new(optional_time(d), None));
        self
    }

    /// The thread CPU time limit; [`Duration::MAX`] means none. Zero is rejected by `build`.
    pub fn cpu_time(mut self, d: Duration) -> Self {
        self.raw.cpu_time = Some(Field::new(optional_time(d), None));
        self
    }

    /// The retry allowance of a whole request tree (across a process hop, see the
    /// [`header`](crate::header) module for what a caller must charge back).
    pub fn retries(mut self, n: u64) -> Self {
        self.raw.retries = Some(Field::new(n, None));
        self
    }

    /// How much earlier than its parent's a child budget's deadline ends (default 10 ms; must be > 0).
    pub fn child_margin(mut self, d: Duration) -> Self {
        self.raw.child_margin = Some(Field::new(d, None));
        self
    }

    /// The default priority of requests of this class.
    pub fn priority(mut self, p: Priority) -> Self {
        self.raw.priority = Some(Field::new(p, None));
        self
    }

    /// Limits a declared dimension.
    pub fn limit(mut self, dimension: &str, limit: u64) -> Self {
        self.raw.limits.push((
            Field::new(dimension.to_owned(), None),
            Field::new(limit, None),
        ));
        self
    }

    /// Admission settings, configured by `f`. A class without them admits every request.
    pub fn admission(mut self, f: impl FnOnce(AdmissionBuilder) -> AdmissionBuilder) -> Self {
        let raw = f(AdmissionBuilder::default()).into_raw();
        self.raw.admission = Some(Field::new(raw, None));
        self
    }
}

/// Configures the admission settings of one class of a [`PolicyBuilder`].
///
/// ```
/// use costguard::{Policy, Priority};
/// use std::time::Duration;
///
/// let policy = Policy::builder()
///     .counter("db_queries")
///     .pool("db_in_flight", "db_queries", 400)
///     .class("api", |c| {
///         c.admission(|a| {
///             a.concurrency(64)
///                 .headroom(Priority::Background, 0.25)
///                 .queue(32, Duration::from_millis(100))
///                 .pool("db_in_flight")
///                 .per_key_concurrency(4)
///                 .per_key_rate(20, Duration::from_secs(1), 40)
///                 .max_keys(100_000)
///         })
///     })
///     .build()
///     .unwrap();
/// assert_eq!(policy.class("api").unwrap().admission().unwrap().headroom().0, [1000, 1000, 800, 250]);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct AdmissionBuilder {
    raw: RawAdmission,
    /// Set with [`window`](Self::window), applied to the adaptive limit whenever it is chosen.
    window: Option<Duration>,
    /// Set with [`gradient_tuning`](Self::gradient_tuning), likewise.
    tuning: Option<(f64, f64)>,
}

impl AdmissionBuilder {
    /// The settings, with the adaptive limit's window and tuning applied to it whatever the order of
    /// the calls (or recorded as misplaced when the limit is not adaptive).
    fn into_raw(self) -> RawAdmission {
        let mut raw = self.raw;
        match &mut raw.concurrency {
            Some(Field {
                value:
                    RawConcurrency::Adaptive {
                        window,
                        tolerance,
                        smoothing,
                        ..
                    },
                ..
            }) => {
                if self.window.is_some() {
                    *window = self.window;
                }
                if let Some((t, s)) = self.tuning {
                    (*tolerance, *smoothing) = (Some(t), Some(s));
                }
            }
            _ => {
                if self.window.is_some() {
                    raw.adaptive_only.push("window");
                }
                if self.tuning.is_some() {
                    raw.adaptive_only.push("tolerance");
                }
            }
        }
        raw
    }

    /// A fixed concurrency limit.
    pub fn concurrency(mut self, limit: u64) -> Self {
        self.raw.concurrency = Some(Field::new(RawConcurrency::Static(limit), None));
        self
    }

    fn adaptive(mut self, algorithm: &str, initial: u64, min: u64, max: u64) -> Self {
        self.raw.concurrency = Some(Field::new(
            RawConcurrency::Adaptive {
                algorithm: algorithm.to_owned(),
                initial: Some(initial),
                min: Some(min),
                max: Some(max),
                window: None,
                backoff: None,
                latency_threshold: None,
                tolerance: None,
                smoothing: None,
                keys: Default::default(),
            },
            None,
        ));
        self
    }

    /// An AIMD limit between `min` and `max`: ×`backoff` when a window's mean latency passes
    /// `latency_threshold` or requests fail by overload, +1 otherwise while the limit is in use.
    pub fn aimd(
        self,
        initial: u64,
        min: u64,
        max: u64,
        backoff: f64,
        latency_threshold: Duration,
    ) -> Self {
        let mut b = self.adaptive("aimd", initial, min, max);
        if let Some(Field {
            value:
                RawConcurrency::Adaptive {
                    backoff: bo,
                    latency_threshold: lt,
                    ..
                },
            ..
        }) = &mut b.raw.concurrency
        {
            *bo = Some(backoff);
            *lt = Some(latency_threshold);
        }
        b
    }

    /// A Gradient2 limit between `min` and `max` (tolerance 1.5, smoothing 0.2 unless set with
    /// [`gradient_tuning`](Self::gradient_tuning)).
    pub fn gradient2(self, initial: u64, min: u64, max: u64) -> Self {
        self.adaptive("gradient2", initial, min, max)
    }

    /// Tolerance and smoothing of a Gradient2 limit (before or after
    /// [`gradient2`](Self::gradient2); an error with any other limit).
    pub fn gradient_tuning(mut self, tolerance: f64, smoothing: f64) -> Self {
        self.tuning = Some((tolerance, smoothing));
        self
    }

    /// How often an adaptive limit is recomputed (default 1 s; before or after choosing the
    /// algorithm; an error with a static limit).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// The share (0 to 1) of the limit requests of `priority` may fill.
    pub fn headroom(mut self, priority: crate::Priority, share: f64) -> Self {
        self.raw.headroom.push((
            Field::new(priority.as_str().to_owned(), None),
            Field::new(share, None),
        ));
        self
    }

    /// Lets up to `capacity` requests wait up to `max_wait` instead of being refused.
    pub fn queue(mut self, capacity: u64, max_wait: Duration) -> Self {
        let q = self
            .raw
            .queue
            .get_or_insert_with(|| Field::new(RawQueue::default(), None));
        q.value.capacity = Some(capacity);
        q.value.max_wait = Some(max_wait);
        self
    }

    /// CoDel settings of the queue (defaults 5 ms and 100 ms).
    pub fn codel(mut self, target: Duration, interval: Duration) -> Self {
        let q = self
            .raw
            .queue
            .get_or_insert_with(|| Field::new(RawQueue::default(), None));
        q.value.codel_target = Some(target);
        q.value.codel_interval = Some(interval);
        self
    }

    /// Records the admission settings' refusals without enforcing them (the class's budget is
    /// still enforced: see [`admission`](crate::admission)).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.raw.shadow = shadow;
        self
    }

    /// Draws from a declared pool.
    pub fn pool(mut self, name: &str) -> Self {
        self.raw.pools.push(Field::new(name.to_owned(), None));
        self
    }

    fn per_key(&mut self) -> &mut RawPerKey {
        &mut self
            .raw
            .per_key
            .get_or_insert_with(|| Field::new(RawPerKey::default(), None))
            .value
    }

    /// At most `n` requests of one key in flight.
    pub fn per_key_concurrency(mut self, n: u64) -> Self {
        self.per_key().concurrency = Some(n);
        self
    }

    /// At most `amount` units of cost per `per` for one key, in bursts of up to `burst`.
    pub fn per_key_rate(mut self, amount: u64, per: Duration, burst: u64) -> Self {
        let k = self.per_key();
        k.rate = Some(amount);
        k.per = Some(per);
        k.burst = Some(burst);
        self
    }

    /// The most keys tracked at once (default 65,536).
    pub fn max_keys(mut self, n: u64) -> Self {
        self.per_key().max_keys = Some(n);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let err = Policy::builder()
            .counter("a")
            .counter("a")
            .counter("Bad-Name")
            .counter("retries")
            .class("c", |c| {
                c.wall_time(Duration::ZERO)
                    .cpu_time(Duration::ZERO)
                    .child_margin(Duration::ZERO)
                    .limit("nope", 1)
                    .limit("a", 1)
                    .limit("a", 2)
                    .limit("retries", 2)
            })
            .class("c", |c| c)
            .build()
            .unwrap_err();
        let text = err.to_string();
        for needle in [
            "dimensions.a: dimension `a` is declared twice",
            "`Bad-Name` is not a valid name",
            "`retries` is reserved",
            "classes.c.wall_time: must be greater than zero",
            "classes.c.cpu_time: must be greater than zero",
            "classes.c.child_margin: must be greater than zero",
            "unknown dimension `nope`",
            "classes.c.limits.a: limit given twice",
            "`retries` is set on the class itself",
            "class `c` is declared twice",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(err.problems().len(), 10);
    }

    #[test]
    fn duration_max_means_no_deadline_and_defaults_apply() {
        let p = Policy::builder()
            .class("c", |c| c.wall_time(Duration::MAX))
            .build()
            .unwrap();
        let c = p.class("c").unwrap();
        assert_eq!(c.wall_time(), None);
        assert_eq!(c.child_margin(), super::super::DEFAULT_CHILD_MARGIN);
        assert_eq!(c.priority(), Priority::Normal);
        assert_eq!(c.retries(), None);
    }

    #[test]
    fn empty_and_oversized_policies_are_refused() {
        assert!(Policy::builder().build().is_err());
        let mut b = Policy::builder();
        for i in 0..31 {
            b = b.counter(&format!("d{i}"));
        }
        let err = b.class("c", |c| c).build().unwrap_err();
        assert!(err
            .to_string()
            .contains("31 dimensions declared; at most 30"));
    }
}

/// Configures one backend of a [`PolicyBuilder`]. Settings are named as in policy files
/// (`"breaker.open_for"`); [`PolicyBuilder::build`] rejects unknown names and absurd values.
///
/// ```
/// use costguard::Policy;
/// use std::time::Duration;
///
/// let policy = Policy::builder()
///     .class("api", |c| c)
///     .backend("kafka", |b| {
///         b.hosts(&["kafka1001", "kafka1012", "kafka1013"])
///             .duration("timeout", Duration::from_millis(500))
///             .count("max_connecting_per_host", 2)
///             .count("breaker.probes", 1)
///             .fraction("ejection.max_ejected", 0.34)
///     })
///     .build()
///     .unwrap();
/// assert_eq!(policy.backend("kafka").unwrap().hosts().count(), 3);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct BackendBuilder {
    raw: RawBackend,
}

impl BackendBuilder {
    /// The hosts of the backend's pool, each once: names that differ only by ASCII case or by one
    /// trailing dot (`DB1`, `db1.`, `db1`) are one host, and [`PolicyBuilder::build`] refuses the
    /// second. Each is kept as written.
    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.raw.hosts = hosts.iter().map(|h| field((*h).to_owned())).collect();
        self
    }

    /// A duration setting (`timeout`, `margin`, `breaker.open_for`, `ejection.base`,
    /// `retry.backoff_base`, ...).
    pub fn duration(mut self, key: &str, value: Duration) -> Self {
        match super::backend::DURATIONS
            .iter()
            .chain(&super::backend::RETRY_DURATIONS)
            .find(|k| **k == key)
        {
            Some(k) => {
                // A setting given again replaces the earlier one, as a builder's setters do (names
                // declared twice, limits given twice and classes declared twice are errors).
                self.raw.durations.retain(|(known, _)| known != k);
                self.raw.durations.push((k, field(value)));
            }
            None => self.raw.unknown.push(key.to_owned()),
        }
        self
    }

    /// A count setting (`max_in_flight`, `max_connecting_per_host`, `breaker.probes`, ...).
    pub fn count(mut self, key: &str, value: u64) -> Self {
        match super::backend::COUNTS.iter().find(|k| **k == key) {
            Some(k) => {
                // A setting given again replaces the earlier one, as a builder's setters do (names
                // declared twice, limits given twice and classes declared twice are errors).
                self.raw.counts.retain(|(known, _)| known != k);
                self.raw.counts.push((k, field(value)));
            }
            None => self.raw.unknown.push(key.to_owned()),
        }
        self
    }

    /// A fraction setting (`breaker.failure_ratio`, `ejection.max_ejected`, `retry.ratio`, ...).
    pub fn fraction(mut self, key: &str, value: f64) -> Self {
        match super::backend::FRACTIONS.iter().find(|k| **k == key) {
            Some(k) => {
                // A setting given again replaces the earlier one, as a builder's setters do (names
                // declared twice, limits given twice and classes declared twice are errors).
                self.raw.fractions.retain(|(known, _)| known != k);
                self.raw.fractions.push((k, field(value)));
            }
            None => self.raw.unknown.push(key.to_owned()),
        }
        self
    }
}

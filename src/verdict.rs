//! The one refusal type of the library.
//!
//! Every "no" costguard says, whether from a budget charge, a deadline, admission or backend
//! protection, is a [`Verdict`]: which limit refused, by how much, for which request, and whether
//! retrying can help. Callers map it to a response (HTTP 429/503 with `Retry-After`, a parser's limit
//! warning) without parsing strings. Building one never allocates: names are shared `Arc<str>`s.
//!
//! Retrying is a decision with two very different answers, kept apart as in governor's
//! `NotUntil`/`InsufficientCapacity`: [`Retry::After`] ("not now") and [`Retry::Never`] ("this can not
//! fit: retrying the same work will fail the same way"). The 2015 outage was made of retries that could
//! never succeed.

use crate::units::format_duration;
use crate::RequestId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a charge, a child budget or an admission was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The amount does not fit in what is left of the limit.
    LimitExceeded,
    /// The amount is larger than the whole limit: it could never fit, however long one waits.
    CannotFit,
    /// The request's deadline has passed.
    DeadlineExceeded,
    /// Too little time is left for the work to finish before the deadline.
    InsufficientTime,
    /// The budget was cancelled (explicitly, or because an ancestor was).
    Cancelled,
    /// Child budgets are nested deeper than [`MAX_BUDGET_DEPTH`](crate::MAX_BUDGET_DEPTH).
    TooDeep,
    /// The class (or the backend or host) does not exist in the policy the budget would use.
    UnknownClass,
    /// The class already runs as many requests as its concurrency limit allows.
    ConcurrencyLimit,
    /// Shed by priority: the class is busy enough that only more important requests may start.
    Shed,
    /// The key (user, IP, tenant) already has as many requests in flight as it may.
    KeyConcurrency,
    /// The key is over its rate.
    RateLimited,
    /// A shared pool of cost in flight is full.
    PoolExhausted,
    /// The class's wait queue is full.
    QueueFull,
    /// The request waited as long as it may and got no permit.
    QueueTimeout,
    /// The key is longer than [`MAX_KEY_LEN`](crate::admission::MAX_KEY_LEN) bytes.
    KeyTooLong,
    /// The backend's (or host's) circuit breaker is open or has every probe slot taken.
    CircuitOpen,
    /// The backend already has as many calls in flight as it may.
    BulkheadFull,
    /// The backend already has as many connection attempts in progress as it may.
    ConnectLimit,
    /// No host of the backend's pool (or not the one asked for) is healthy and free. When every
    /// one is out (ejected, or its breaker open), the hint is `Retry::After` the nearest time one
    /// is back and the verdict names no dimension; when one is only busy, `Retry::Later`.
    NoHealthyHost,
    /// The backend's process-wide retry budget is empty.
    RetryBudgetExhausted,
    /// The outcome is not one that retrying can fix.
    NotRetryable,
}

impl Reason {
    /// A stable snake_case name, for metrics labels and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::LimitExceeded => "limit_exceeded",
            Reason::CannotFit => "cannot_fit",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::InsufficientTime => "insufficient_time",
            Reason::Cancelled => "cancelled",
            Reason::TooDeep => "too_deep",
            Reason::UnknownClass => "unknown_class",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::Shed => "shed",
            Reason::KeyConcurrency => "key_concurrency",
            Reason::RateLimited => "rate_limited",
            Reason::PoolExhausted => "pool_exhausted",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::KeyTooLong => "key_too_long",
            Reason::CircuitOpen => "circuit_open",
            Reason::BulkheadFull => "bulkhead_full",
            Reason::ConnectLimit => "connect_limit",
            Reason::NoHealthyHost => "no_healthy_host",
            Reason::RetryBudgetExhausted => "retry_budget_exhausted",
            Reason::NotRetryable => "not_retryable",
        }
    }
}

/// Every reason, in declaration order: `ALL_REASONS[r as usize] == r` (checked in the tests).
pub(crate) const ALL_REASONS: [Reason; 21] = [
    Reason::LimitExceeded,
    Reason::CannotFit,
    Reason::DeadlineExceeded,
    Reason::InsufficientTime,
    Reason::Cancelled,
    Reason::TooDeep,
    Reason::UnknownClass,
    Reason::ConcurrencyLimit,
    Reason::Shed,
    Reason::KeyConcurrency,
    Reason::RateLimited,
    Reason::PoolExhausted,
    Reason::QueueFull,
    Reason::QueueTimeout,
    Reason::KeyTooLong,
    Reason::CircuitOpen,
    Reason::BulkheadFull,
    Reason::ConnectLimit,
    Reason::NoHealthyHost,
    Reason::RetryBudgetExhausted,
    Reason::NotRetryable,
];

/// Whether and when the refused work may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Retrying cannot help: the work can not fit in this request's limits.
    Never,
    /// Retrying may succeed once capacity held by other work is released; no time can be promised.
    Later,
    /// Retrying may succeed after this long (an honest `Retry-After`).
    After(Duration),
}

/// The unit a limit is counted in; used to print amounts readably.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Unit {
    /// Plain counts (lookups, queries, retries).
    #[default]
    Count,
    /// Bytes, printed with binary prefixes.
    Bytes,
    /// Nanoseconds, printed as a duration (wall and CPU time).
    Nanos,
}

impl Unit {
    /// `amount` in this unit, for people.
    pub fn format(self, amount: u64) -> String {
        match self {
            Unit::Count => amount.to_string(),
            Unit::Nanos => {
                if amount == u64::MAX {
                    "none".to_owned()
                } else {
                    format_duration(Duration::from_nanos(amount))
                }
            }
            Unit::Bytes => {
                const STEPS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
                let mut value = amount as f64;
                let mut step = 0;
                while value >= 1024.0 && step + 1 < STEPS.len() {
                    value /= 1024.0;
                    step += 1;
                }
                if step == 0 {
                    format!("{amount}B")
                } else {
                    format!("{value:.1}{}", STEPS[step])
                }
            }
        }
    }

    /// The lowercase name used in policy files and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::Nanos => "nanoseconds",
        }
    }
}

/// A refusal: which limit said no, by how much, for which request, and whether to retry.
///
/// ```
/// use costguard::{Engine, Policy, Reason, RequestId, Retry};
///
/// let policy = Policy::builder()
///     .counter("file_lookups")
///     .class("parse", |c| c.limit("file_lookups", 2))
///     .build()
///     .unwrap();
/// let engine = Engine::new(policy).unwrap();
/// let lookups = engine.counter("file_lookups").unwrap();
/// let budget = engine.begin_by_name("parse", RequestId::new("req-1").unwrap()).unwrap();
///
/// let verdict = budget.try_charge(lookups, 3).unwrap_err();
/// assert_eq!(verdict.reason(), Reason::CannotFit);
/// assert_eq!(verdict.dimension(), Some("file_lookups"));
/// assert_eq!((verdict.requested(), verdict.used(), verdict.limit()), (3, 0, 2));
/// assert_eq!(verdict.retry(), Retry::Never);
/// assert_eq!(verdict.request_id().unwrap().as_str(), "req-1");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Verdict {
    reason: Reason,
    class: Option<Arc<str>>,
    dimension: Option<Arc<str>>,
    unit: Unit,
    requested: u64,
    used: u64,
    limit: u64,
    request_id: Option<RequestId>,
    retry: Retry,
}

impl Verdict {
    /// A verdict with the given reason and nothing else filled in.
    pub(crate) fn new(reason: Reason, retry: Retry) -> Self {
        Verdict {
            reason,
            class: None,
            dimension: None,
            unit: Unit::Count,
            requested: 0,
            used: 0,
            limit: 0,
            request_id: None,
            retry,
        }
    }

    /// Rebuilds a verdict from the parts its accessors give, for a binding that carried a refusal
    /// across a language boundary as plain fields, or a reader of logged refusals: its `Display` is
    /// then the library's own sentence. Names are copied (this allocates; it is not a refusal path).
    ///
    /// ```
    /// use costguard::{Reason, Retry, Unit, Verdict};
    ///
    /// let v = Verdict::from_parts(
    ///     Reason::LimitExceeded, Retry::Never, Some("parse"), Some("file_lookups"), Unit::Count,
    ///     [1, 500, 500], None,
    /// );
    /// assert_eq!(v.to_string(), "parse/file_lookups: 1 more would exceed the limit (500 of 500 used); retrying cannot help");
    /// ```
    pub fn from_parts(
        reason: Reason,
        retry: Retry,
        class: Option<&str>,
        dimension: Option<&str>,
        unit: Unit,
        [requested, used, limit]: [u64; 3],
        request_id: Option<RequestId>,
    ) -> Verdict {
        Verdict {
            reason,
            class: class.map(Arc::from),
            dimension: dimension.map(Arc::from),
            unit,
            requested,
            used,
            limit,
            request_id,
            retry,
        }
    }

    pub(crate) fn with_class(mut self, class: &Arc<str>) -> Self {
        self.class = Some(Arc::clone(class));
        self
    }

    pub(crate) fn with_dimension(mut self, name: &Arc<str>, unit: Unit) -> Self {
        self.dimension = Some(Arc::clone(name));
        self.unit = unit;
        self
    }

    pub(crate) fn with_amounts(mut self, requested: u64, used: u64, limit: u64) -> Self {
        self.requested = requested;
        self.used = used;
        self.limit = limit;
        self
    }

    pub(crate) fn with_request(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Why the work was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Whose limit refused: the request class for a budget's or admission's refusal, the backend
    /// for an attempt's or a retry's (`BulkheadFull`, `CircuitOpen`, `NotRetryable`, ...), if any.
    /// (A retry refused by the request tree's own allowance names the request's class.)
    pub fn class(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// The budget dimension that refused (`file_lookups`, `wall_time`, ...), if any.
    pub fn dimension(&self) -> Option<&str> {
        self.dimension.as_deref()
    }

    /// The unit of [`requested`](Self::requested), [`used`](Self::used) and [`limit`](Self::limit).
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The amount asked for.
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// The amount already in use when the request was refused.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The limit that refused.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The request this verdict is about.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }

    /// Whether and when to retry.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// The `Retry-After` delay to send, or `None` when retrying cannot help or no time can be promised.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.retry {
            Retry::After(d) => Some(d),
            Retry::Never | Retry::Later => None,
        }
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verdict")
            .field("reason", &self.reason)
            .field("class", &self.class())
            .field("dimension", &self.dimension())
            .field("unit", &self.unit)
            .field("requested", &self.requested)
            .field("used", &self.used)
            .field("limit", &self.limit)
            .field("request_id", &self.request_id)
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.request_id {
            write!(f, "request {id}: ")?;
        }
        match (self.class(), self.dimension()) {
            (Some(c), Some(d)) => write!(f, "{c}/{d}: ")?,
            (Some(c), None) => write!(f, "{c}: ")?,
            (None, Some(d)) => write!(f, "{d}: ")?,
            (None, None) => {}
        }
        let u = self.unit;
        match self.reason {
            // From `check()` or `child()` on a budget an earlier refused charge cancelled: no
            // amount was asked for this time.
            Reason::LimitExceeded if self.requested == 0 => write!(
                f,
                "cancelled: an earlier charge would have exceeded the limit ({} of {} used)",
                u.format(self.used),
                u.format(self.limit)
            )?,
            Reason::LimitExceeded => write!(
                f,
                "{} more would exceed the limit ({} of {} used)",
                u.format(self.requested),
                u.format(self.used),
                u.format(self.limit)
            )?,
            // An unlimited dimension refuses only a total that would reach `u64::MAX`.
            Reason::CannotFit if self.limit == u64::MAX => write!(
                f,
                "{} more would overflow a count that has no limit ({} used)",
                u.format(self.requested),
                u.format(self.used)
            )?,
            Reason::CannotFit => write!(
                f,
                "{} can never fit in a limit of {}",
                u.format(self.requested),
                u.format(self.limit)
            )?,
            Reason::DeadlineExceeded => write!(
                f,
                "deadline exceeded ({} of {})",
                u.format(self.used),
                u.format(self.limit)
            )?,
            Reason::InsufficientTime => {
                let left = self.limit.saturating_sub(self.used);
                let (shown_left, needed) = (u.format(left), u.format(self.requested));
                // A child is refused when what is left does not exceed its margin, and a rounded
                // figure can hide the difference: "10ms left, 10ms needed" would contradict itself.
                let more = if left >= self.requested || shown_left == needed {
                    "more than "
                } else {
                    ""
                };
                write!(
                    f,
                    "too little time left ({shown_left} left, {more}{needed} needed)"
                )?
            }
            Reason::Cancelled => f.write_str("the request was cancelled")?,
            Reason::TooDeep => write!(f, "budgets nested deeper than {}", self.limit)?,
            Reason::UnknownClass => f.write_str("not in the policy the request runs under")?,
            Reason::ConcurrencyLimit => write!(f, "{} of {} in flight", self.used, self.limit)?,
            Reason::Shed => write!(
                f,
                "shed by priority ({} in flight, this priority may fill {})",
                self.used, self.limit
            )?,
            Reason::KeyConcurrency => write!(
                f,
                "this key has {} of {} requests in flight",
                self.used, self.limit
            )?,
            Reason::RateLimited => {
                write!(f, "over the rate for this key (cost {})", self.requested)?
            }
            Reason::PoolExhausted => write!(
                f,
                "{} more would exceed the pool ({} of {} in flight)",
                u.format(self.requested),
                u.format(self.used),
                u.format(self.limit)
            )?,
            Reason::QueueFull => write!(f, "wait queue full ({} of {})", self.used, self.limit)?,
            Reason::QueueTimeout => write!(f, "no permit within {}", u.format(self.used))?,
            Reason::KeyTooLong => write!(
                f,
                "key of {} bytes is longer than {}",
                self.requested, self.limit
            )?,
            Reason::CircuitOpen => f.write_str("circuit open")?,
            Reason::BulkheadFull => write!(f, "{} of {} calls in flight", self.used, self.limit)?,
            Reason::ConnectLimit => write!(
                f,
                "{} of {} connection attempts in progress",
                self.used, self.limit
            )?,
            Reason::NoHealthyHost => f.write_str("no healthy host free")?,
            Reason::RetryBudgetExhausted => f.write_str("the backend's retry budget is spent")?,
            Reason::NotRetryable => f.write_str("this outcome is not retried")?,
        }
        match self.retry {
            Retry::Never => f.write_str("; retrying cannot help"),
            Retry::Later => f.write_str("; retry once other work finishes"),
            Retry::After(d) => write!(f, "; retry after {}", format_duration(d)),
        }
    }
}

impl std::error::Error for Verdict {}

#[cfg(test)]
mod tests {
    use super::*;

    /// README (Concepts, Verdict) states the size, for users who meet clippy's result_large_err.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_verdict_is_the_size_the_readme_states() {
        assert_eq!(std::mem::size_of::<Verdict>(), 144);
    }

    #[test]
    fn all_reasons_lists_each_reason_at_its_index() {
        for (i, r) in ALL_REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        // A new reason must be added to the list: this match has no wildcard, so it stops
        // compiling until the reason is handled here, and the count below until it is listed.
        let last = |r: Reason| match r {
            Reason::LimitExceeded
            | Reason::CannotFit
            | Reason::DeadlineExceeded
            | Reason::InsufficientTime
            | Reason::Cancelled
            | Reason::TooDeep
            | Reason::UnknownClass
            | Reason::ConcurrencyLimit
            | Reason::Shed
            | Reason::KeyConcurrency
            | Reason::RateLimited
            | Reason::PoolExhausted
            | Reason::QueueFull
            | Reason::QueueTimeout
            | Reason::KeyTooLong
            | Reason::CircuitOpen
            | Reason::BulkheadFull
            | Reason::ConnectLimit
            | Reason::NoHealthyHost
            | Reason::RetryBudgetExhausted => false,
            Reason::NotRetryable => true,
        };
        assert!(last(ALL_REASONS[ALL_REASONS.len() - 1]));
    }

    #[test]
    fn units_format_readably() {
        assert_eq!(Unit::Bytes.format(512), "512B");
        assert_eq!(Unit::Bytes.format(2 * 1024 * 1024), "2.0MiB");
        assert_eq!(Unit::Nanos.format(1_500_000_000), "1.500s");
        assert_eq!(Unit::Nanos.format(u64::MAX), "none");
        assert_eq!(Unit::Count.format(7), "7");
    }

    #[test]
    fn too_little_time_never_reads_as_enough() {
        let text = |requested, used, limit| {
            Verdict::new(Reason::InsufficientTime, Retry::Never)
                .with_dimension(&Arc::from("wall_time"), Unit::Nanos)
                .with_amounts(requested, used, limit)
                .to_string()
        };
        // 5ms of 30ms left where a backend usually takes 10ms.
        assert!(text(10_000_000, 25_000_000, 30_000_000).contains("(5ms left, 10ms needed)"));
        // Rounded to the same figure: 10.2ms left, 10.9ms needed.
        assert!(text(10_900_000, 0, 10_200_000).contains("(10ms left, more than 10ms needed)"));
        // Exactly a child's margin left, which a child needs more than.
        assert!(text(100_000_000, 0, 100_000_000).contains("(100ms left, more than 100ms needed)"));
    }

    #[test]
    fn display_names_everything() {
        let class: Arc<str> = Arc::from("parse");
        let dim: Arc<str> = Arc::from("file_lookups");
        let v = Verdict::new(Reason::LimitExceeded, Retry::Never)
            .with_class(&class)
            .with_dimension(&dim, Unit::Count)
            .with_amounts(1, 500, 500)
            .with_request(RequestId::new("r1").unwrap());
        assert_eq!(
            v.to_string(),
            "request r1: parse/file_lookups: 1 more would exceed the limit (500 of 500 used); retrying cannot help"
        );
        assert_eq!(v.retry_after(), None);
        let later = Verdict::new(
            Reason::LimitExceeded,
            Retry::After(Duration::from_millis(300)),
        );
        assert_eq!(later.retry_after(), Some(Duration::from_millis(300)));
        assert!(later.to_string().ends_with("retry after 300ms"));
    }
}

//! Per-request tightening of a class's limits.

use crate::handle::{Counter, Level};
use crate::policy::MAX_DIMENSIONS;
use crate::{Priority, RequestId};
use std::time::Duration;

/// Limits for one budget that are tighter than its class's.
///
/// Overrides can only tighten: each limit becomes the smaller of the class's and the override, the
/// deadline the earlier one, and the priority the less important one. A caller cannot use them to give
/// a request more than its policy allows, which is what makes them safe to fill from an untrusted
/// propagation header.
///
/// ```
/// use costguard::{Engine, Overrides, Policy, RequestId};
/// use std::time::Duration;
///
/// let policy = Policy::builder()
///     .counter("db_queries")
///     .class("api", |c| c.wall_time(Duration::from_secs(10)).limit("db_queries", 100))
///     .build()
///     .unwrap();
/// let engine = Engine::new(policy).unwrap();
/// let api = engine.class("api").unwrap();
/// let db = engine.counter("db_queries").unwrap();
///
/// let tight = Overrides::new().limit(db, 5).wall_time(Duration::from_secs(2));
/// let budget = engine.begin_with(api, RequestId::new("r").unwrap(), &tight).unwrap();
/// assert_eq!(budget.remaining_of(db), 5);
///
/// let loose = Overrides::new().limit(db, 1_000); // cannot loosen
/// let budget = engine.begin_with(api, RequestId::new("r").unwrap(), &loose).unwrap();
/// assert_eq!(budget.remaining_of(db), 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Overrides {
    pub(crate) limits: [u64; MAX_DIMENSIONS],
    /// Whether any of `limits` is below `u64::MAX` (limits only ever go down, so this is exactly
    /// "some limit is set"): a budget without one takes its class's limits as they are.
    tight: bool,
    pub(crate) wall_time: Option<Duration>,
    pub(crate) priority: Option<Priority>,
    pub(crate) request_id: Option<RequestId>,
}

impl Overrides {
    /// No overrides, as a constant: `&Overrides::NONE` is a static, so the paths that start a
    /// budget without overrides build no 300-byte value to point at.
    pub(crate) const NONE: Overrides = Overrides {
        limits: [u64::MAX; MAX_DIMENSIONS],
        tight: false,
        wall_time: None,
        priority: None,
        request_id: None,
    };
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides::NONE
    }
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` of a counter.
    pub fn limit(mut self, counter: Counter, n: u64) -> Self {
        self.set_limit_index(counter.index(), n);
        self
    }

    /// At most `n` of a level at once.
    pub fn level_limit(mut self, level: Level, n: u64) -> Self {
        self.set_limit_index(level.index(), n);
        self
    }

    /// At most `n` retries for the request tree.
    pub fn retries(self, n: u64) -> Self {
        self.limit(Counter::RETRIES, n)
    }

    /// A deadline at most `d` from the start.
    pub fn wall_time(mut self, d: Duration) -> Self {
        self.wall_time = Some(self.wall_time.map_or(d, |w| w.min(d)));
        self
    }

    /// A priority no more important than `p`.
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = Some(self.priority.map_or(p, |q| q.least_important(p)));
        self
    }

    /// The request id to use instead of the inherited or given one.
    pub fn request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    pub(crate) fn set_limit_index(&mut self, index: usize, n: u64) {
        if let Some(slot) = self.limits.get_mut(index) {
            *slot = (*slot).min(n);
            self.tight |= *slot != u64::MAX;
        }
    }

    /// The limits, if any is set.
    pub(crate) fn limits(&self) -> Option<&[u64; MAX_DIMENSIONS]> {
        self.tight.then_some(&self.limits)
    }
}

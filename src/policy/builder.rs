//! Policies built in code.

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

    /// Validates the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        validate(self.dims, self.classes, Problems::default())
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

    /// The retry allowance of a whole request tree.
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

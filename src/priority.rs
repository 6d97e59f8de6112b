//! Request priorities.

use std::fmt;
use std::str::FromStr;

/// How important a request is, from most to least.
///
/// The budget core carries the priority (it travels in the propagation header, where it can only be
/// lowered); admission control uses it to shed less important work first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Priority {
    /// Work the site cannot do without (health checks, payments, the edit itself).
    Critical = 0,
    /// Ordinary interactive traffic.
    #[default]
    Normal = 1,
    /// Work that may be refused under load (prefetches, re-renders).
    Sheddable = 2,
    /// Batch and maintenance work: the first to go.
    Background = 3,
}

impl Priority {
    /// All priorities, most important first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::Normal,
        Priority::Sheddable,
        Priority::Background,
    ];

    /// The lowercase name used in policy files and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
            Priority::Background => "background",
        }
    }

    /// The less important of two priorities: what an untrusted claim can lower a request to.
    pub fn least_important(self, other: Priority) -> Priority {
        self.max(other)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPriority {
    /// The name given, at most 32 bytes of it.
    name: Box<str>,
}

impl UnknownPriority {
    /// The name that is not a priority (at most 32 bytes of it).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for UnknownPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown priority `{}` (expected critical, normal, sheddable or background)",
            self.name.escape_debug()
        )
    }
}

impl std::error::Error for UnknownPriority {}

impl FromStr for Priority {
    type Err = UnknownPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPriority {
                name: crate::text::clip(s, 32).into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        let e = "urgent".parse::<Priority>().unwrap_err();
        assert_eq!(e.name(), "urgent");
        assert!(e.to_string().contains("`urgent`"), "{e}");
        assert_eq!(
            Priority::Critical.least_important(Priority::Background),
            Priority::Background
        );
        assert!(Priority::Critical < Priority::Normal);
    }
}

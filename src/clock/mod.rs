//! Time, injected.
//!
//! Nothing in costguard reads the system clock directly: every deadline, every elapsed time and every
//! Retry-After hint comes from a [`Clock`]. Production code uses [`TscClock`] (the engine's default:
//! the processor's time-stamp counter, calibrated against the operating system's clock) or
//! [`MonotonicClock`] (the operating system's clock itself); tests, benches and the incident replay use
//! [`ManualClock`] and move time forward explicitly, so that no test ever sleeps to wait for time to
//! pass and every run is reproducible.
//!
//! A clock has two readings:
//! - [`Clock::now`], precise (about 10 ns for [`TscClock`], 25 ns for [`MonotonicClock`]'s
//!   `Instant::now()`), used when a budget starts, when an attempt on a backend begins and ends, and
//!   when a caller asks how much time is left;
//! - [`Clock::coarse`], a cached reading (two relaxed loads of one cache line while a ticker thread
//!   keeps it fresh, a precise reading otherwise), used by deadline checks inside hot loops.
//!   It may lag the precise reading but never runs ahead of one taken after it on the same thread,
//!   so a coarse check can notice a deadline late, never early. (Across threads, [`TscClock`]'s
//!   readings may differ by the skew between the cores' counters: nanoseconds.)

mod cached;
mod manual;
mod monotonic;
mod thread_cpu;
mod tsc;

pub use manual::ManualClock;
pub use monotonic::MonotonicClock;
pub use thread_cpu::{CpuClock, ManualCpuClock, ThreadCpuClock};
pub use tsc::TscClock;

use std::fmt;
use std::time::Duration;

/// A point in time: nanoseconds since the origin of the [`Clock`] that produced it.
///
/// Timestamps from different clocks are not comparable. All arithmetic saturates: adding
/// [`Duration::MAX`] gives [`Timestamp::NEVER`], which means "no deadline", never "already expired".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin of the clock.
    pub const ZERO: Timestamp = Timestamp(0);
    /// A time that never comes; used as "no deadline".
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `nanos` nanoseconds after the clock's origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::NEVER`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_to_nanos(d)))
    }

    /// `self - d`, saturating at [`Timestamp::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_to_nanos(d)))
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later (a clock that stepped backwards).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Whether this is [`Timestamp::NEVER`].
    pub const fn is_never(self) -> bool {
        self.0 == u64::MAX
    }

    /// The deadline `wall_ns` after `self`: `u64::MAX` is no limit ([`Timestamp::NEVER`]); any
    /// other wall time gives a deadline that comes, the last representable instant at the latest,
    /// however late the clock already is.
    pub(crate) const fn deadline_after(self, wall_ns: u64) -> Timestamp {
        if wall_ns == u64::MAX {
            return Timestamp::NEVER;
        }
        let at = self.0.saturating_add(wall_ns);
        Timestamp(if at == u64::MAX { u64::MAX - 1 } else { at })
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            f.write_str("Timestamp(NEVER)")
        } else {
            write!(f, "Timestamp({:?})", Duration::from_nanos(self.0))
        }
    }
}

/// A duration as whole nanoseconds, saturating at `u64::MAX` (about 584 years, treated as "forever").
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A wall time in clock nanoseconds: `u64::MAX` (no deadline) only for [`Duration::MAX`]; any other
/// wall time, however long (584 years is `u64::MAX` nanoseconds), stays a deadline.
pub(crate) fn wall_time_nanos(d: Duration) -> u64 {
    if d == Duration::MAX {
        u64::MAX
    } else {
        duration_to_nanos(d).min(u64::MAX - 1)
    }
}

/// A source of monotonic time.
///
/// Implementations must never go backwards in [`now`](Clock::now) for correctness of rate calculations,
/// but costguard tolerates one that does: every subtraction saturates, and an expired deadline stays
/// expired.
pub trait Clock: Send + Sync + fmt::Debug {
    /// A precise reading.
    fn now(&self) -> Timestamp;

    /// A cheap reading that may lag [`now`](Clock::now), for checks inside hot loops.
    ///
    /// The default is the precise reading.
    #[inline]
    fn coarse(&self) -> Timestamp {
        self.now()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    #[inline]
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    #[inline]
    fn coarse(&self) -> Timestamp {
        (**self).coarse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_nanos(10);
        assert_eq!(t.saturating_add(Duration::MAX), Timestamp::NEVER);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Timestamp::ZERO);
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_nanos(20)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_nanos(30).saturating_duration_since(t),
            Duration::from_nanos(20)
        );
        assert!(Timestamp::NEVER
            .saturating_add(Duration::from_secs(1))
            .is_never());
    }

    #[test]
    fn huge_durations_mean_forever() {
        assert_eq!(duration_to_nanos(Duration::MAX), u64::MAX);
        assert_eq!(duration_to_nanos(Duration::from_secs(u64::MAX)), u64::MAX);
        assert_eq!(duration_to_nanos(Duration::from_millis(3)), 3_000_000);
    }
}

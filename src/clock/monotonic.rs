//! The production clock: the operating system's monotonic clock.

use super::cached::{Cached, Source};
use super::{duration_to_nanos, Clock, Timestamp};
use std::time::{Duration, Instant};

/// The system's monotonic clock, with a cached reading for hot checks.
///
/// [`now`](Clock::now) reads `Instant::now()`. With a ticker thread ([`with_ticker`](Self::with_ticker)),
/// [`coarse`](Clock::coarse) is one relaxed load of a shared cache that the ticker refreshes at a
/// fixed period (and precise readings when it has fallen behind by more than 100 µs): it lags by at
/// most about one period, whatever the rest of the process does. Without a ticker, or once it has
/// stopped, nothing would bound that lag, and a coarse reading is a precise one.
///
/// [`TscClock`](super::TscClock) reads the processor's time-stamp counter instead, at about a third
/// of the cost.
///
/// ```
/// use costguard::clock::{Clock, MonotonicClock};
///
/// let clock = MonotonicClock::new();
/// let a = clock.now();
/// assert!(clock.coarse() <= clock.now());
/// assert!(clock.now() >= a);
/// ```
#[derive(Clone, Debug)]
pub struct MonotonicClock(Cached<Os>);

/// `Instant::now()` since an origin.
#[derive(Clone, Debug)]
struct Os {
    origin: Instant,
}

impl Source for Os {
    #[inline]
    fn elapsed_nanos(&self) -> u64 {
        duration_to_nanos(self.origin.elapsed())
    }
}

impl MonotonicClock {
    /// A clock whose origin is now, without a ticker.
    pub fn new() -> Self {
        MonotonicClock(Cached::new(Os {
            origin: Instant::now(),
        }))
    }

    /// A clock whose coarse reading a background thread refreshes every `period` (at least 100 µs,
    /// at most 1 s).
    ///
    /// The thread holds only a weak reference: it exits at its next tick after the last clone of the
    /// clock is dropped.
    pub fn with_ticker(period: Duration) -> Self {
        MonotonicClock(Cached::with_ticker(
            Os {
                origin: Instant::now(),
            },
            period,
        ))
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Timestamp {
        self.0.now()
    }

    #[inline]
    fn coarse(&self) -> Timestamp {
        self.0.coarse()
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn coarse_never_runs_ahead_and_precise_readings_refresh_it() {
        super::super::cached::tests::check(&MonotonicClock::new().0);
    }
}

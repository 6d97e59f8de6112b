//! A production clock that reads the processor's time-stamp counter.
//!
//! A precise reading of [`MonotonicClock`](super::MonotonicClock) is an `Instant::now()`: about 25 ns
//! here, through the vDSO. An admission reads the precise clock once and a backend attempt twice
//! (when it begins and when it finishes, for its latency), so on that clock the readings were half of
//! an attempt's cost. Reading the time-stamp counter directly and scaling it costs about 10 ns.

use super::cached::{Cached, Source};
use super::{Clock, Timestamp};
use std::fmt;
use std::time::Duration;

/// The time-stamp counter, scaled to nanoseconds, with a cached reading for hot checks: the engine's
/// default clock.
///
/// Like [`MonotonicClock`](super::MonotonicClock) in everything but its source: [`now`](Clock::now)
/// reads the counter (about 10 ns, against 25 for `Instant::now()`); with a ticker thread,
/// [`coarse`](Clock::coarse) is one relaxed load of a cache the ticker refreshes at a fixed period,
/// and without one it is a precise reading.
///
/// The counter is read, and calibrated against the operating system's clock, by the `quanta` crate,
/// which falls back to the operating system's clock (at the cost of `Instant::now()`) where the
/// processor does not promise an invariant counter.
///
/// What reading the counter directly gives up: the operating system keeps `Instant` monotonic
/// across processors and adjusts it if the counter misbehaves (a virtual machine moved to a host
/// whose counter runs at another rate, without the hypervisor scaling it). The counter relies on the
/// processor and hypervisor keeping it invariant and synchronized between cores, as current ones do;
/// a reading on one core may still be a few nanoseconds behind one just taken on another. Every
/// duration in costguard saturates at zero, so a reading that went backwards gives a zero duration,
/// never a huge one. Where that trade is not wanted, give the engine a
/// [`MonotonicClock`](super::MonotonicClock).
///
/// ```
/// use costguard::clock::{Clock, TscClock};
///
/// let clock = TscClock::new();
/// let a = clock.now();
/// assert!(clock.coarse() <= clock.now());
/// assert!(clock.now() >= a);
/// ```
#[derive(Clone, Debug)]
pub struct TscClock(Cached<Tsc>);

/// The counter since an origin.
#[derive(Clone)]
struct Tsc {
    clock: quanta::Clock,
    origin: u64,
}

impl fmt::Debug for Tsc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tsc").field("origin", &self.origin).finish()
    }
}

impl Tsc {
    fn new() -> Self {
        // The first clock of the process calibrates the counter (under a millisecond); later ones
        // reuse that calibration.
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Tsc { clock, origin }
    }
}

impl Source for Tsc {
    #[inline]
    fn elapsed_nanos(&self) -> u64 {
        // Zero for a reading at or before the origin (another core's counter a little behind).
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

impl TscClock {
    /// A clock whose origin is now, without a ticker.
    pub fn new() -> Self {
        TscClock(Cached::new(Tsc::new()))
    }

    /// A clock whose coarse reading a background thread refreshes every `period` (at least 100 µs,
    /// at most 1 s).
    ///
    /// The thread holds only a weak reference: it exits at its next tick after the last clone of the
    /// clock is dropped.
    pub fn with_ticker(period: Duration) -> Self {
        TscClock(Cached::with_ticker(Tsc::new(), period))
    }

    /// As [`with_ticker`](Self::with_ticker), and the thread also exits once `owner` is gone.
    pub(crate) fn with_ticker_while(period: Duration, owner: crate::sync::Weak<()>) -> Self {
        TscClock(Cached::with_ticker_while(Tsc::new(), period, Some(owner)))
    }
}

impl Default for TscClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TscClock {
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
    use std::time::Instant;

    #[test]
    fn coarse_never_runs_ahead_and_precise_readings_refresh_it() {
        super::super::cached::tests::check(&TscClock::new().0);
    }

    /// The counter, scaled, measures what the operating system's clock measures. Each counter
    /// reading is taken between two readings of `Instant`, so the counter's interval must lie
    /// between the narrowest and the widest interval those allow, within 5% (calibration error),
    /// however the test thread was scheduled. The stretch is 2 ms, spun (a test never sleeps).
    #[test]
    fn readings_agree_with_the_operating_systems_clock() {
        let clock = TscClock::new();
        let bracket = || {
            let before = Instant::now();
            let t = clock.now();
            (before, t, Instant::now())
        };
        let (a0, t0, b0) = bracket();
        while b0.elapsed() < Duration::from_millis(2) {}
        let (a1, t1, b1) = bracket();
        let tsc = t1.saturating_duration_since(t0).as_secs_f64();
        let (narrowest, widest) = ((a1 - b0).as_secs_f64(), (b1 - a0).as_secs_f64());
        assert!(
            tsc >= narrowest * 0.95 && tsc <= widest * 1.05,
            "counter {tsc} s, operating system between {narrowest} s and {widest} s"
        );
    }
}

//! The production clock.

use super::{duration_to_nanos, Clock, Timestamp};
use crate::sync::{Arc, AtomicU64, Ordering, Weak};
use crossbeam_utils::CachePadded;
use std::time::{Duration, Instant};

/// How far the cached reading may fall behind before a precise reading refreshes it. Refreshing on
/// every precise reading would make every thread write one shared cache line.
const REFRESH_AFTER_NANOS: u64 = 100_000;

/// The system's monotonic clock, with a cached reading for hot checks.
///
/// [`now`](Clock::now) reads `Instant::now()`. [`coarse`](Clock::coarse) is one relaxed load of a shared
/// cache that every precise reading refreshes when it has fallen behind by more than 100 µs, and that an
/// optional ticker thread ([`with_ticker`](Self::with_ticker)) refreshes at a fixed period. With the
/// ticker, a coarse reading lags by at most about one period, whatever the rest of the process does;
/// without it, by at most the time since any thread last took a precise reading.
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
pub struct MonotonicClock {
    origin: Instant,
    cache: Arc<CachePadded<AtomicU64>>,
}

impl MonotonicClock {
    /// A clock whose origin is now, without a ticker.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
            cache: Arc::new(CachePadded::new(AtomicU64::new(0))),
        }
    }

    /// A clock whose coarse reading a background thread refreshes every `period` (at least 100 µs).
    ///
    /// The thread holds only a weak reference: it exits at its next tick after the last clone of the
    /// clock is dropped.
    pub fn with_ticker(period: Duration) -> Self {
        let clock = Self::new();
        let period = period.max(Duration::from_nanos(REFRESH_AFTER_NANOS));
        let origin = clock.origin;
        let cache: Weak<CachePadded<AtomicU64>> = Arc::downgrade(&clock.cache);
        let spawned = std::thread::Builder::new()
            .name("costguard-clock".into())
            .spawn(move || {
                while let Some(cache) = cache.upgrade() {
                    publish(&cache, elapsed_nanos(origin));
                    drop(cache);
                    std::thread::sleep(period);
                }
            });
        // Without a thread the clock still works: precise readings keep the cache fresh.
        drop(spawned);
        clock
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

fn elapsed_nanos(origin: Instant) -> u64 {
    duration_to_nanos(origin.elapsed())
}

/// Raises the cached reading to `nanos`; never lowers it.
fn publish(cache: &AtomicU64, nanos: u64) {
    cache.fetch_max(nanos, Ordering::Relaxed);
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let nanos = elapsed_nanos(self.origin);
        if nanos.saturating_sub(self.cache.load(Ordering::Relaxed)) > REFRESH_AFTER_NANOS {
            publish(&self.cache, nanos);
        }
        Timestamp::from_nanos(nanos)
    }

    #[inline]
    fn coarse(&self) -> Timestamp {
        Timestamp::from_nanos(self.cache.load(Ordering::Relaxed))
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn coarse_never_runs_ahead_and_precise_readings_refresh_it() {
        let clock = MonotonicClock::new();
        let mut last = clock.now();
        for _ in 0..1000 {
            let coarse = clock.coarse();
            let now = clock.now();
            assert!(coarse <= now);
            assert!(now >= last);
            last = now;
        }
        // A precise reading more than the refresh interval after the cache moves the cache.
        clock.cache.store(0, Ordering::Relaxed);
        let spin_until = Instant::now() + Duration::from_micros(200);
        while Instant::now() < spin_until {}
        let now = clock.now();
        assert!(
            clock.coarse() == now,
            "the cache must catch up with a late precise reading"
        );
    }
}

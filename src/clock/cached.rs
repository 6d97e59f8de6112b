//! A precise clock source with a cached reading for hot checks, shared by the production clocks.
//!
//! [`Clock::coarse`](super::Clock::coarse) is read inside hot loops, so it must be one relaxed load.
//! Each production clock pairs its precise source with a cache that precise readings refresh when it
//! has fallen behind by more than [`REFRESH_AFTER_NANOS`] (refreshing on every reading would make
//! every thread write one shared cache line), and that an optional ticker thread refreshes at a fixed
//! period. The cache only ever moves forward.

use super::Timestamp;
use crate::sync::{Arc, AtomicU64, Ordering, Weak};
use crossbeam_utils::CachePadded;
use std::time::Duration;

/// How far the cached reading may fall behind before a precise reading refreshes it.
pub(super) const REFRESH_AFTER_NANOS: u64 = 100_000;

/// The longest period of a ticker: a coarse reading staler than this would serve no one, and a
/// ticker asleep for longer would outlive its clock by as much.
pub(super) const MAX_TICK: Duration = Duration::from_secs(1);

/// The period a ticker asked for `period` runs at.
fn tick(period: Duration) -> Duration {
    period.clamp(Duration::from_nanos(REFRESH_AFTER_NANOS), MAX_TICK)
}

/// Where precise readings come from: nanoseconds since the clock's origin, never decreasing on one
/// thread.
pub(super) trait Source: Clone + Send + Sync + 'static {
    fn elapsed_nanos(&self) -> u64;
}

/// A source and its cached reading.
#[derive(Clone, Debug)]
pub(super) struct Cached<S> {
    source: S,
    cache: Arc<CachePadded<AtomicU64>>,
}

impl<S: Source> Cached<S> {
    pub(super) fn new(source: S) -> Self {
        Cached {
            source,
            cache: Arc::new(CachePadded::new(AtomicU64::new(0))),
        }
    }

    /// Also starts a thread that refreshes the cache every `period` (between
    /// [`REFRESH_AFTER_NANOS`] and [`MAX_TICK`]). The thread holds only a weak reference: it exits
    /// at its next tick after the last clone of the clock is dropped. Without a thread (none could
    /// be started) the clock still works: precise readings keep the cache fresh.
    pub(super) fn with_ticker(source: S, period: Duration) -> Self {
        Self::with_ticker_while(source, period, None)
    }

    /// As [`with_ticker`](Self::with_ticker), and the thread also exits once `owner` is gone (an
    /// engine that made the clock for itself, whose clock finished budgets may outlive it).
    pub(super) fn with_ticker_while(source: S, period: Duration, owner: Option<Weak<()>>) -> Self {
        let clock = Self::new(source);
        let period = tick(period);
        let source = clock.source.clone();
        let cache: Weak<CachePadded<AtomicU64>> = Arc::downgrade(&clock.cache);
        let spawned = std::thread::Builder::new()
            .name("costguard-clock".into())
            .spawn(move || {
                while let Some(cache) = cache.upgrade() {
                    if owner.as_ref().is_some_and(|o| o.upgrade().is_none()) {
                        return;
                    }
                    publish(&cache, source.elapsed_nanos());
                    drop(cache);
                    std::thread::sleep(period);
                }
            });
        drop(spawned);
        clock
    }

    #[inline]
    pub(super) fn now(&self) -> Timestamp {
        let nanos = self.source.elapsed_nanos();
        if nanos.saturating_sub(self.cache.load(Ordering::Relaxed)) > REFRESH_AFTER_NANOS {
            publish(&self.cache, nanos);
        }
        Timestamp::from_nanos(nanos)
    }

    #[inline]
    pub(super) fn coarse(&self) -> Timestamp {
        Timestamp::from_nanos(self.cache.load(Ordering::Relaxed))
    }

    /// Moves the cache back to the origin, so that a test can see the next precise reading refresh
    /// it.
    #[cfg(all(test, not(costguard_loom)))]
    pub(super) fn forget(&self) {
        self.cache.store(0, Ordering::Relaxed);
    }
}

/// Raises the cached reading to `nanos`; never lowers it.
fn publish(cache: &AtomicU64, nanos: u64) {
    cache.fetch_max(nanos, Ordering::Relaxed);
}

#[cfg(all(test, not(costguard_loom)))]
pub(super) mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ticker_periods_are_kept_between_their_bounds() {
        let least = Duration::from_nanos(REFRESH_AFTER_NANOS);
        assert_eq!(tick(Duration::ZERO), least);
        assert_eq!(tick(Duration::from_millis(1)), Duration::from_millis(1));
        // A ticker asked to sleep for ever would never see its clock dropped.
        assert_eq!(tick(Duration::MAX), MAX_TICK);
    }

    /// Readings never run backwards on one thread, the cached reading never runs ahead of a precise
    /// one, and a precise reading taken long after the cache refreshes it.
    pub(in crate::clock) fn check<S: Source>(clock: &Cached<S>) {
        let mut last = clock.now();
        for _ in 0..1000 {
            let coarse = clock.coarse();
            let now = clock.now();
            assert!(coarse <= now, "coarse {coarse:?} ahead of precise {now:?}");
            assert!(now >= last);
            last = now;
        }
        clock.forget();
        // Time must pass for the cache to fall behind: spin (a test never sleeps) past the interval.
        let spin_until = Instant::now() + Duration::from_micros(200);
        while Instant::now() < spin_until {}
        let now = clock.now();
        assert!(
            clock.coarse() == now,
            "the cache must catch up with a late precise reading"
        );
    }
}

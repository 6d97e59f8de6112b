//! A precise clock source with a cached reading for hot checks, shared by the production clocks.
//!
//! [`Clock::coarse`](super::Clock::coarse) is read inside hot loops, so it must be a relaxed load
//! or two of one cache line.
//! Each production clock pairs its precise source with a cache that precise readings refresh when it
//! has fallen behind by more than [`REFRESH_AFTER_NANOS`] (refreshing on every reading would make
//! every thread write one shared cache line), and that an optional ticker thread refreshes at a fixed
//! period. The cache only ever moves forward.
//!
//! The cache is only read while a ticker runs: without one, nothing bounds how far it may fall
//! behind (a loop that only checks a deadline takes no precise reading, and would never see the
//! deadline pass), so a coarse reading is then a precise one. A ticker that stops (its engine is
//! gone, while budgets that hold the clock run on) says so on its way out.

use super::Timestamp;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering, Weak};
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
    cache: Arc<CachePadded<Cache>>,
}

/// The cached reading, and whether a ticker keeps it fresh (on one line: `coarse` reads both).
#[derive(Debug, Default)]
struct Cache {
    nanos: AtomicU64,
    ticking: AtomicBool,
}

impl<S: Source> Cached<S> {
    pub(super) fn new(source: S) -> Self {
        Cached {
            source,
            cache: Arc::new(CachePadded::new(Cache::default())),
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
        let cache: Weak<CachePadded<Cache>> = Arc::downgrade(&clock.cache);
        // Fresh from the start (the thread may take a while to run), and ticking until the thread
        // ends: if it cannot start at all, precise readings serve the coarse ones.
        publish(&clock.cache, clock.source.elapsed_nanos());
        clock.cache.ticking.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("costguard-clock".into())
            .spawn(move || {
                while let Some(cache) = cache.upgrade() {
                    if owner.as_ref().is_some_and(|o| o.upgrade().is_none()) {
                        cache.ticking.store(false, Ordering::Release);
                        return;
                    }
                    publish(&cache, source.elapsed_nanos());
                    drop(cache);
                    std::thread::sleep(period);
                }
            });
        if spawned.is_err() {
            clock.cache.ticking.store(false, Ordering::Release);
        }
        clock
    }

    #[inline]
    pub(super) fn now(&self) -> Timestamp {
        let nanos = self.source.elapsed_nanos();
        if nanos.saturating_sub(self.cache.nanos.load(Ordering::Relaxed)) > REFRESH_AFTER_NANOS {
            publish(&self.cache, nanos);
        }
        Timestamp::from_nanos(nanos)
    }

    /// The cached reading while a ticker keeps it fresh; a precise one otherwise.
    #[inline]
    pub(super) fn coarse(&self) -> Timestamp {
        if self.cache.ticking.load(Ordering::Relaxed) {
            Timestamp::from_nanos(self.cache.nanos.load(Ordering::Relaxed))
        } else {
            self.now()
        }
    }

    /// The cached reading itself.
    #[cfg(all(test, not(costguard_loom)))]
    fn cached(&self) -> Timestamp {
        Timestamp::from_nanos(self.cache.nanos.load(Ordering::Relaxed))
    }

    /// Moves the cache back to the origin, so that a test can see the next precise reading refresh
    /// it.
    #[cfg(all(test, not(costguard_loom)))]
    pub(super) fn forget(&self) {
        self.cache.nanos.store(0, Ordering::Relaxed);
    }
}

/// Raises the cached reading to `nanos`; never lowers it.
fn publish(cache: &Cache, nanos: u64) {
    cache.nanos.fetch_max(nanos, Ordering::Relaxed);
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
        spin(Duration::from_micros(200));
        let now = clock.now();
        assert!(
            clock.cached() == now,
            "the cache must catch up with a late precise reading"
        );
    }

    fn spin(d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {}
    }

    #[derive(Clone)]
    struct Os(Instant);

    impl Source for Os {
        fn elapsed_nanos(&self) -> u64 {
            crate::clock::duration_to_nanos(self.0.elapsed())
        }
    }

    /// Without a ticker the cache may be far behind (nothing took a precise reading): a coarse
    /// reading is then a precise one, so a loop that only checks a deadline still sees it pass.
    #[test]
    fn without_a_ticker_a_coarse_reading_is_precise() {
        let clock = Cached::new(Os(Instant::now()));
        spin(Duration::from_millis(2));
        assert_eq!(clock.cached(), Timestamp::from_nanos(0));
        let before = clock.now();
        spin(Duration::from_millis(2));
        clock.forget();
        assert!(clock.coarse() > before);
    }

    /// A ticker that stops because its owner (an engine) is gone, while the clock lives on in
    /// budgets, leaves coarse readings precise rather than frozen.
    #[test]
    fn a_ticker_that_stops_leaves_coarse_readings_precise() {
        let owner = Arc::new(());
        let clock = Cached::with_ticker_while(
            Os(Instant::now()),
            Duration::from_micros(100),
            Some(Arc::downgrade(&owner)),
        );
        assert!(clock.cache.ticking.load(Ordering::Acquire));
        drop(owner);
        // The ticker notices at its next tick (an event, waited for at most ten seconds).
        let start = Instant::now();
        while clock.cache.ticking.load(Ordering::Acquire) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the ticker never stopped"
            );
            std::thread::yield_now();
        }
        let frozen = clock.cached();
        spin(Duration::from_millis(2));
        assert!(clock.coarse() > frozen);
    }
}

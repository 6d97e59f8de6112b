//! Outcomes over a sliding window, in ten fixed buckets of atomic counters.
//!
//! Each bucket covers a tenth of the window and remembers which slice of time it counts ("epoch"); a
//! bucket found holding an older epoch is restarted by whoever gets there first. Calls are not
//! counted per bucket: the owner already keeps a running total of calls (the backend its outcome
//! counters, a host its call counter), so a bucket only notes that total when it starts ("base"),
//! and the calls inside the window are the total now minus the oldest live bucket's base. A success
//! that is not slow, the common case, therefore writes nothing here at all; failures and slow calls
//! are counted per bucket.
//!
//! A restart racing a record can lose that one failure, and a reader racing a restart can see the
//! bucket's new epoch with its old base for an instant: the ratios are approximate by a call or two,
//! which is what a breaker needs, and in exchange recording takes no lock and no allocation.

use crate::sync::{AtomicU64, Ordering};

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    /// The owner's total of calls when this bucket started.
    base: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// Totals over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// The length of a window, and a division by its bucket width that costs two multiplications.
///
/// `now / width` would be a 64-bit division on every recorded call. The reciprocal
/// `ceil(2^64 / width)`, computed once per policy version, gives the quotient or one more; one
/// multiplication back checks which.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    width: u64,
    /// `ceil(2^64 / width)`; 0 for a width of one nanosecond.
    reciprocal: u64,
}

impl Span {
    /// A window `span` ns long, in ten buckets (at least 1 ns each).
    pub(crate) fn new(span: u64) -> Span {
        let width = (span / BUCKETS as u64).max(1);
        Span {
            width,
            reciprocal: if width == 1 { 0 } else { u64::MAX / width + 1 },
        }
    }

    /// The slice of time `now` falls in, from 1 (0 means "never used").
    #[inline]
    fn epoch(self, now: u64) -> u64 {
        let slice = if self.reciprocal == 0 {
            now
        } else {
            // `now × reciprocal / 2^64` is `now / width` or one more (the reciprocal is rounded up
            // by less than one, and `now` is below 2^64).
            let q = ((u128::from(now) * u128::from(self.reciprocal)) >> 64) as u64;
            if q.checked_mul(self.width).is_none_or(|back| back > now) {
                q - 1
            } else {
                q
            }
        };
        slice.saturating_add(1)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// Records a call at `now`. `calls` reads the owner's running total of calls, which must not
    /// count this call yet: the owner adds it after this returns.
    #[inline]
    pub(crate) fn record(
        &self,
        now: u64,
        span: Span,
        calls: impl FnOnce() -> u64,
        failed: bool,
        slow: bool,
    ) {
        let epoch = span.epoch(now);
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.base.store(calls(), Ordering::Release);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
        if failed {
            b.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals of the buckets still inside the window at `now`, given the owner's total of calls.
    pub(crate) fn totals(&self, now: u64, span: Span, calls: u64) -> Totals {
        let current = span.epoch(now);
        let mut t = Totals::default();
        let mut base = None::<u64>;
        for b in &self.buckets {
            let epoch = b.epoch.load(Ordering::Acquire);
            if epoch != 0 && epoch.saturating_add(BUCKETS as u64) > current && epoch <= current {
                let start = b.base.load(Ordering::Acquire);
                base = Some(base.map_or(start, |m| m.min(start)));
                t.failures += b.failures.load(Ordering::Relaxed);
                t.slow += b.slow.load(Ordering::Relaxed);
            }
        }
        if let Some(base) = base {
            t.calls = calls.saturating_sub(base).max(t.failures).max(t.slow);
        }
        t
    }

    /// Forgets everything (when a breaker closes).
    pub(crate) fn clear(&self) {
        for b in &self.buckets {
            b.epoch.store(0, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    fn t(calls: u64, failures: u64, slow: u64) -> Totals {
        Totals {
            calls,
            failures,
            slow,
        }
    }

    /// A window with the running total its owner keeps, recorded as the engine does.
    struct Owned {
        window: Window,
        calls: u64,
    }

    impl Owned {
        fn record(&mut self, now: u64, span: Span, failed: bool, slow: bool) {
            let calls = self.calls;
            self.window.record(now, span, || calls, failed, slow);
            self.calls += 1;
        }

        fn totals(&self, now: u64, span: Span) -> Totals {
            self.window.totals(now, span, self.calls)
        }
    }

    #[test]
    fn counts_only_the_window() {
        let mut w = Owned {
            window: Window::default(),
            calls: 0,
        };
        let span = Span::new(10_000);
        for t in 0..10u64 {
            w.record(t * 1_000, span, t % 2 == 0, t == 3);
        }
        assert_eq!(w.totals(9_999, span), t(10, 5, 1));
        // Five buckets later, the first five have left the window.
        assert_eq!(w.totals(14_999, span).calls, 5);
        w.record(15_000, span, true, false);
        assert_eq!(w.totals(15_000, span), t(5, 3, 0));
        // Several calls in one bucket, and a quiet stretch that leaves gaps between buckets.
        for _ in 0..3 {
            w.record(15_500, span, false, false);
        }
        w.record(19_000, span, false, true);
        assert_eq!(w.totals(19_000, span), t(5, 1, 1));
        w.window.clear();
        assert_eq!(w.totals(19_000, span), Totals::default());
        w.record(19_001, span, true, false);
        assert_eq!(
            w.totals(19_001, span),
            t(1, 1, 0),
            "after a clear, the window starts from the call that restarts it"
        );
    }

    #[test]
    fn the_reciprocal_divides_exactly() {
        for span in [10, 20, 30, 7_777, 10_000_000_000, 60_000_000_000, u64::MAX] {
            let s = Span::new(span);
            let width = (span / BUCKETS as u64).max(1);
            for now in (0..100_000u64)
                .chain([width - 1, width, width + 1, 86_400_000_000_000])
                .chain((0..64).flat_map(|k| [(1u64 << k) - 1, 1 << k, u64::MAX >> k]))
            {
                assert_eq!(
                    s.epoch(now),
                    (now / width).saturating_add(1),
                    "span {span}, now {now}"
                );
            }
        }
        assert_eq!(
            Span::new(5).epoch(u64::MAX),
            u64::MAX,
            "saturates, never wraps to 0"
        );
        let s = Span::new(u64::MAX);
        assert_eq!(s.epoch(u64::MAX), u64::MAX / (u64::MAX / 10) + 1);
    }
}

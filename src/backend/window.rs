//! Outcomes over a sliding window, in ten fixed buckets of atomic counters.
//!
//! Each bucket covers a tenth of the window and remembers which slice of time it counts ("epoch"); a
//! bucket found holding an older epoch is reset by whoever gets there first. A reset racing a record
//! can lose that one record: the ratios are approximate by a call or two, which is what a breaker
//! needs, and in exchange recording is three relaxed atomic adds with no lock and no allocation.

use crate::sync::{AtomicU64, Ordering};

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    calls: AtomicU64,
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

#[derive(Debug, Default)]
pub(crate) struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// Records a call at `now`; the window spans `span` ns.
    pub(crate) fn record(&self, now: u64, span: u64, failed: bool, slow: bool) {
        let width = (span / BUCKETS as u64).max(1);
        let epoch = now / width + 1; // 0 means "never used"
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            b.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals of the buckets still inside the window at `now`.
    pub(crate) fn totals(&self, now: u64, span: u64) -> Totals {
        let width = (span / BUCKETS as u64).max(1);
        let current = now / width + 1;
        let mut t = Totals::default();
        for b in &self.buckets {
            let epoch = b.epoch.load(Ordering::Acquire);
            if epoch != 0 && epoch + (BUCKETS as u64) > current && epoch <= current {
                t.calls += b.calls.load(Ordering::Relaxed);
                t.failures += b.failures.load(Ordering::Relaxed);
                t.slow += b.slow.load(Ordering::Relaxed);
            }
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

    #[test]
    fn counts_only_the_window() {
        let w = Window::default();
        let span = 10_000;
        for t in 0..10u64 {
            w.record(t * 1_000, span, t % 2 == 0, t == 3);
        }
        assert_eq!(
            w.totals(9_999, span),
            Totals {
                calls: 10,
                failures: 5,
                slow: 1
            }
        );
        // Five buckets later, the first five have left the window.
        assert_eq!(w.totals(14_999, span).calls, 5);
        w.record(15_000, span, true, false);
        assert_eq!(
            w.totals(15_000, span),
            Totals {
                calls: 5,
                failures: 3,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(15_000, span), Totals::default());
    }
}

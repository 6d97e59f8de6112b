//! A process-wide pool of cost in flight.
//!
//! One word of cost in use; the limit beside it changes only on reload. Requests of every class that
//! draws from the pool hold their declared estimate in it while they run.

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

#[derive(Debug)]
pub(crate) struct Pool {
    used: CachePadded<AtomicU64>,
    limit: AtomicU64,
}

impl Pool {
    pub(crate) fn new(limit: u64) -> Self {
        Pool {
            used: CachePadded::new(AtomicU64::new(0)),
            limit: AtomicU64::new(limit),
        }
    }

    /// Takes `n` if it fits; otherwise the amount in use.
    pub(crate) fn try_take(&self, n: u64) -> Result<(), u64> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = match used.checked_add(n) {
                Some(next) if next <= limit => next,
                _ => return Err(used),
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Takes `n` whatever the limit (shadow mode), saturating, and returns what it took: the
    /// holder gives back exactly that, so that a saturated take cannot make a later give take away
    /// another holder's amount.
    pub(crate) fn force_take(&self, n: u64) -> u64 {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_add(n))
            })
            .unwrap_or_else(|u| u);
        before.saturating_add(n) - before
    }

    /// Gives `n` back, never below zero.
    /// Gives back `n` of what is in use; never below zero (debug builds stop on a give of more than
    /// is in use, a bug that saturating would hide).
    pub(crate) fn give(&self, n: u64) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        debug_assert!(
            before.is_ok_and(|u| u >= n),
            "gave back {n} to a pool with less in use"
        );
    }

    pub(crate) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_gives_back_without_underflow() {
        let p = Pool::new(10);
        p.try_take(6).unwrap();
        assert_eq!(p.try_take(5), Err(6));
        assert_eq!(p.try_take(u64::MAX), Err(6));
        p.try_take(4).unwrap();
        p.give(10);
        assert_eq!(p.used(), 0);
        assert_eq!(p.force_take(u64::MAX), u64::MAX);
        assert_eq!(p.force_take(1), 0, "a saturated take takes nothing");
        assert_eq!(p.used(), u64::MAX);
        p.give(0);
        assert_eq!(p.used(), u64::MAX, "the first holder's amount is intact");
        p.give(u64::MAX);
        assert_eq!(p.used(), 0);
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "less in use"))]
    fn giving_back_more_than_in_use_saturates_and_debug_builds_stop_on_it() {
        let p = Pool::new(10);
        p.try_take(4).unwrap();
        p.give(100);
        assert_eq!(p.used(), 0, "not wrapped");
    }
}

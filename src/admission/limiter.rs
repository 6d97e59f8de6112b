//! A class's concurrency limit: in-flight count and limit packed in one atomic word.
//!
//! | bits   | field       |
//! |--------|-------------|
//! | 0..32  | `in_flight` |
//! | 32..64 | `limit`     |
//!
//! Keeping both in one word makes "admit if in-flight is below what this priority may see" a single
//! CAS against a consistent pair, and lets the limit change at any moment, by a reload or by adaptation,
//! while permits are held: lowering it below the in-flight count refuses new work until enough
//! finishes (no burst above the new limit), and releases never underflow.

use crate::policy::Permille;
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

const IN_FLIGHT: u64 = 0xffff_ffff;
const LIMIT_SHIFT: u32 = 32;

#[inline]
fn pack(in_flight: u32, limit: u32) -> u64 {
    (u64::from(limit) << LIMIT_SHIFT) | u64::from(in_flight)
}

#[inline]
fn unpack(word: u64) -> (u32, u32) {
    ((word & IN_FLIGHT) as u32, (word >> LIMIT_SHIFT) as u32)
}

/// How much of `limit` a priority with `share` may fill. The full limit at 1000 per mille.
#[inline]
pub(crate) fn allowed(limit: u32, share: Permille) -> u32 {
    if share >= 1000 {
        limit
    } else {
        (u64::from(limit) * u64::from(share) / 1000) as u32
    }
}

/// The pure decision: the next word if one more request of `share` fits, else the current
/// `(in_flight, allowed)`.
#[inline]
pub(crate) fn decide(word: u64, share: Permille) -> Result<u64, (u32, u32)> {
    let (in_flight, limit) = unpack(word);
    let allowed = allowed(limit, share);
    if in_flight < allowed {
        Ok(word + 1)
    } else {
        Err((in_flight, allowed))
    }
}

#[derive(Debug)]
pub(crate) struct Limiter {
    word: CachePadded<AtomicU64>,
}

impl Limiter {
    pub(crate) fn new(limit: u32) -> Self {
        Limiter {
            word: CachePadded::new(AtomicU64::new(pack(0, limit))),
        }
    }

    /// Takes a permit if one more request of `share` fits; otherwise `(in_flight, allowed)`.
    #[inline]
    pub(crate) fn try_acquire(&self, share: Permille) -> Result<(), (u32, u32)> {
        let mut word = self.word.load(Ordering::SeqCst);
        loop {
            let next = decide(word, share)?;
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }

    /// Takes a permit whatever the limit (shadow mode), saturating.
    pub(crate) fn force_acquire(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let (in_flight, limit) = unpack(w);
                Some(pack(in_flight.saturating_add(1), limit))
            });
    }

    /// Gives a permit back; never below zero. (A release with nothing in flight is a bug that
    /// saturating would hide: debug builds, the tests' and the fuzzers', stop on it.)
    #[inline]
    pub(crate) fn release(&self) {
        let before = self
            .word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                let (in_flight, limit) = unpack(w);
                Some(pack(in_flight.saturating_sub(1), limit))
            });
        debug_assert!(
            before.is_ok_and(|w| unpack(w).0 > 0),
            "a permit released with none in flight"
        );
    }

    /// Sets the limit; permits held are untouched.
    pub(crate) fn set_limit(&self, limit: u32) {
        let _ = self
            .word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(pack(unpack(w).0, limit))
            });
    }

    pub(crate) fn in_flight(&self) -> u32 {
        unpack(self.word.load(Ordering::Relaxed)).0
    }

    pub(crate) fn limit(&self) -> u32 {
        unpack(self.word.load(Ordering::Relaxed)).1
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn headroom_shares_the_limit() {
        assert_eq!(allowed(100, 1000), 100);
        assert_eq!(allowed(100, 900), 90);
        assert_eq!(allowed(1, 500), 0);
        assert_eq!(
            allowed(u32::MAX, 999),
            (u64::from(u32::MAX) * 999 / 1000) as u32
        );
        assert_eq!(decide(pack(89, 100), 900), Ok(pack(90, 100)));
        assert_eq!(decide(pack(90, 100), 900), Err((90, 90)));
        assert_eq!(decide(pack(90, 100), 1000), Ok(pack(91, 100)));
    }

    #[test]
    fn lowering_the_limit_refuses_until_work_drains() {
        let l = Limiter::new(3);
        for _ in 0..3 {
            l.try_acquire(1000).unwrap();
        }
        l.set_limit(1);
        assert_eq!(l.try_acquire(1000), Err((3, 1)));
        l.release();
        l.release();
        assert_eq!(l.try_acquire(1000), Err((1, 1)));
        l.release();
        l.try_acquire(1000).unwrap();
        assert_eq!((l.in_flight(), l.limit()), (1, 1));
        l.release();
        assert_eq!(l.in_flight(), 0);
        l.force_acquire();
        l.force_acquire();
        assert_eq!(l.in_flight(), 2);
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "none in flight"))]
    fn an_extra_release_saturates_and_debug_builds_stop_on_it() {
        let l = Limiter::new(3);
        l.release();
        assert_eq!((l.in_flight(), l.limit()), (0, 3), "not wrapped");
    }
}

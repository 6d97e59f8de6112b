//! A clock that moves only when told to.

use super::{duration_to_nanos, Clock, Timestamp};
use crate::sync::{Arc, AtomicU64, Ordering};
use std::time::Duration;

/// A clock for tests, benches and simulations: time stands still until [`advance`](Self::advance)
/// or [`set`](Self::set) moves it.
///
/// Clones share the same time, so a test can keep one handle and give another to the engine.
/// [`set`](Self::set) may move time backwards, to test that nothing breaks when a clock steps back.
///
/// ```
/// use costguard::clock::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_millis(250));
/// assert_eq!(clock.now().saturating_duration_since(start), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock starting at `t`.
    pub fn starting_at(t: Timestamp) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(t.as_nanos())),
        }
    }

    /// Moves time forward by `d` (saturating at [`Timestamp::NEVER`]).
    pub fn advance(&self, d: Duration) {
        let d = duration_to_nanos(d);
        let _ = self
            .nanos
            .fetch_update(Ordering::Release, Ordering::Relaxed, |t| {
                Some(t.saturating_add(d))
            });
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, t: Timestamp) {
        self.nanos.store(t.as_nanos(), Ordering::Release);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn clones_share_time_and_set_can_step_back() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_secs(2));
        assert_eq!(b.now(), Timestamp::from_nanos(2_000_000_000));
        b.set(Timestamp::from_nanos(5));
        assert_eq!(a.now(), Timestamp::from_nanos(5));
        assert_eq!(a.coarse(), a.now());
        a.advance(Duration::MAX);
        assert!(a.now().is_never());
    }
}

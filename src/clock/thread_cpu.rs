//! Per-thread CPU time, injected like wall time.

use super::duration_to_nanos;
use crate::sync::{Arc, AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

/// A source of the calling thread's CPU time.
///
/// The optional `cpu_time` dimension of a budget is charged with CPU time measured between two readings
/// of a `CpuClock` (see [`Budget::cpu_meter`](crate::Budget::cpu_meter)). Tests use [`ManualCpuClock`].
pub trait CpuClock: Send + Sync + fmt::Debug {
    /// CPU time consumed by the calling thread so far, or `None` if the platform cannot tell.
    fn thread_cpu(&self) -> Option<Duration>;
}

/// The operating system's per-thread CPU clock (`CLOCK_THREAD_CPUTIME_ID` on Unix).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCpuClock;

impl CpuClock for ThreadCpuClock {
    fn thread_cpu(&self) -> Option<Duration> {
        cpu_time::ThreadTime::try_now()
            .ok()
            .map(|t| t.as_duration())
    }
}

/// A CPU clock for tests: every thread sees the same reading, moved by [`advance`](Self::advance).
#[derive(Clone, Debug, Default)]
pub struct ManualCpuClock {
    nanos: Arc<AtomicU64>,
}

impl ManualCpuClock {
    /// A CPU clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `d` of CPU time.
    pub fn advance(&self, d: Duration) {
        let d = duration_to_nanos(d);
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(d))
            });
    }
}

impl CpuClock for ManualCpuClock {
    fn thread_cpu(&self) -> Option<Duration> {
        Some(Duration::from_nanos(self.nanos.load(Ordering::Relaxed)))
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_clock_moves_with_work() {
        let clock = ThreadCpuClock;
        let Some(before) = clock.thread_cpu() else {
            return; // platform without a thread CPU clock: nothing to check
        };
        let mut x = 0u64;
        let mut after = before;
        // Spin until the OS clock has ticked; bounded so a broken clock fails instead of hanging.
        for i in 0..2_000_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
            if i % 1_000_000 == 0 {
                after = clock.thread_cpu().unwrap_or(before);
                if after > before {
                    break;
                }
            }
        }
        std::hint::black_box(x);
        assert!(after > before);
    }
}

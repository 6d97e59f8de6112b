//! Adaptive concurrency limits: AIMD and Gradient2.
//!
//! A static limit is a guess made before the service met its traffic. An adaptive one follows the
//! latency of completed requests: when latency rises the backend is queueing, and the limit falls
//! until it stops; when latency recovers, the limit climbs back. Both algorithms here are pure
//! functions of the previous state and one window of samples, so they can be tested exactly.
//!
//! The per-request path only adds a sample to a few atomic accumulators. Once per window, the first
//! request to finish after the window ended takes a try-lock and computes the new limit; nobody waits
//! for it. Only outcomes that say something about the backend's capacity are sampled: successes and
//! overload failures (server errors, timeouts). Refused, cancelled and client-error requests are not.

use crate::policy::{AdaptiveLimit, Algorithm};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crossbeam_utils::CachePadded;

/// One window of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Window {
    /// Samples (successes and overloads).
    pub(crate) count: u64,
    /// Sum of their latencies, ns.
    pub(crate) sum_ns: u64,
    /// Overload failures among them.
    pub(crate) overloads: u64,
    /// Requests in flight when the window closed.
    pub(crate) in_flight: u32,
}

impl Window {
    /// The mean latency, at least 1 ns: a clock that reads the same time at admission and at the
    /// end (a manual clock, a coarse one) gives samples of 0, and Gradient2 divides by the mean.
    fn mean_ns(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.sum_ns as f64 / self.count as f64).max(1.0))
    }
}

/// What an algorithm remembers between windows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct State {
    /// The limit, kept fractional so that small steps accumulate.
    pub(crate) limit: f64,
    /// Gradient2's long-term latency estimate, ns (0: none yet).
    pub(crate) long_ns: f64,
}

/// Weight of one window in Gradient2's long-term average.
const LONG_WEIGHT: f64 = 0.05;

/// The next state after one window. Pure. The limit stays within `[min, max]` and finite whatever
/// the samples are.
pub(crate) fn next(config: &AdaptiveLimit, state: State, w: Window) -> State {
    let next = step(config, state, w);
    if next.limit.is_finite() && next.long_ns.is_finite() {
        next
    } else {
        state
    }
}

fn step(config: &AdaptiveLimit, state: State, w: Window) -> State {
    let (min, max) = (f64::from(config.min), f64::from(config.max));
    let clamp = |x: f64| x.clamp(min, max);
    let Some(mean) = w.mean_ns() else {
        return state;
    };
    match config.algorithm {
        Algorithm::Aimd {
            backoff,
            latency_threshold,
        } => {
            let threshold = latency_threshold.as_nanos() as f64;
            let limit = if w.overloads > 0 || mean > threshold {
                (state.limit * f64::from(backoff) / 1000.0).floor()
            } else if f64::from(w.in_flight) * 2.0 >= state.limit {
                state.limit + 1.0
            } else {
                state.limit
            };
            State {
                limit: clamp(limit),
                long_ns: state.long_ns,
            }
        }
        Algorithm::Gradient2 {
            tolerance,
            smoothing,
        } => {
            let mut long = if state.long_ns == 0.0 {
                mean
            } else {
                state.long_ns * (1.0 - LONG_WEIGHT) + mean * LONG_WEIGHT
            };
            // After a long spell of high latency the long-term estimate is inflated; when latency
            // recovers well below it, let it drift down so the limit can recover too.
            if long / mean > 2.0 {
                long *= 0.95;
            }
            let tolerance = f64::from(tolerance) / 1000.0;
            let gradient = (tolerance * long / mean).clamp(0.5, 1.0);
            let headroom = state.limit.sqrt();
            let target = state.limit * gradient + headroom;
            let alpha = f64::from(smoothing) / 1000.0;
            let limit = state.limit * (1.0 - alpha) + target * alpha;
            State {
                limit: clamp(limit),
                long_ns: long,
            }
        }
    }
}

/// Samples of the current window, and the state behind a lock nobody waits on.
#[derive(Debug)]
pub(crate) struct Sampler {
    count: CachePadded<AtomicU64>,
    sum_ns: AtomicU64,
    overloads: AtomicU64,
    window_end: AtomicU64,
    state: Mutex<State>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Sampler {
            count: CachePadded::new(AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            window_end: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Starts over from `initial` (a new configuration).
    pub(crate) fn reset(&self, initial: u32, now: u64, window_ns: u64) {
        *self.state.lock() = State {
            limit: f64::from(initial),
            long_ns: 0.0,
        };
        self.window_end
            .store(now.saturating_add(window_ns), Ordering::Relaxed);
        self.take();
    }

    /// The current limit, clamped to a new configuration's bounds.
    pub(crate) fn clamp(&self, config: &AdaptiveLimit) -> u32 {
        let mut state = self.state.lock();
        let limit = if state.limit.is_finite() {
            state.limit
        } else {
            f64::from(config.initial)
        };
        state.limit = limit.clamp(f64::from(config.min), f64::from(config.max));
        state.limit as u32
    }

    pub(crate) fn record(&self, latency_ns: u64, overload: bool) {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Saturating: a sum that wrapped would read as a fast window. Only adaptive classes sample.
        let _ = self
            .sum_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(latency_ns))
            });
        if overload {
            self.overloads.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Window {
        Window {
            count: self.count.swap(0, Ordering::Relaxed),
            sum_ns: self.sum_ns.swap(0, Ordering::Relaxed),
            overloads: self.overloads.swap(0, Ordering::Relaxed),
            in_flight: 0,
        }
    }

    /// If the window has ended, computes the next limit (once, by whoever gets here first).
    pub(crate) fn maybe_update(
        &self,
        config: &AdaptiveLimit,
        now: u64,
        window_ns: u64,
        in_flight: u32,
    ) -> Option<u32> {
        let end = self.window_end.load(Ordering::Relaxed);
        if now < end
            || self
                .window_end
                .compare_exchange(
                    end,
                    now.saturating_add(window_ns),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return None;
        }
        let mut w = self.take();
        w.in_flight = in_flight;
        let mut state = self.state.lock();
        *state = next(config, *state, w);
        Some(state.limit as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn aimd() -> AdaptiveLimit {
        AdaptiveLimit {
            algorithm: Algorithm::Aimd {
                backoff: 500,
                latency_threshold: Duration::from_millis(100),
            },
            initial: 10,
            min: 2,
            max: 12,
            window: Duration::from_secs(1),
        }
    }

    fn window(count: u64, mean_ms: u64, overloads: u64, in_flight: u32) -> Window {
        Window {
            count,
            sum_ns: count * mean_ms * MS,
            overloads,
            in_flight,
        }
    }

    fn start(limit: f64) -> State {
        State {
            limit,
            long_ns: 0.0,
        }
    }

    #[test]
    fn aimd_backs_off_and_recovers_within_bounds() {
        let c = aimd();
        let s = next(&c, start(10.0), window(10, 50, 0, 10));
        assert_eq!(s.limit, 11.0, "in use and fast: +1");
        let s = next(&c, s, window(10, 50, 0, 2));
        assert_eq!(s.limit, 11.0, "not in use: unchanged");
        let s = next(&c, s, window(10, 150, 0, 11));
        assert_eq!(s.limit, 5.0, "slow: halved");
        let s = next(&c, s, window(10, 10, 1, 5));
        assert_eq!(s.limit, 2.0, "an overload halves, floored at min");
        let s = next(&c, s, window(10, 10, 1, 5));
        assert_eq!(s.limit, 2.0);
        let mut s = s;
        for _ in 0..20 {
            s = next(&c, s, window(10, 10, 0, 20));
        }
        assert_eq!(s.limit, 12.0, "recovers, capped at max");
        assert_eq!(next(&c, s, Window::default()), s, "no samples: no change");
    }

    #[test]
    fn gradient_falls_with_latency_and_recovers_after_it() {
        let c = AdaptiveLimit {
            algorithm: Algorithm::Gradient2 {
                tolerance: 1500,
                smoothing: 200,
            },
            initial: 50,
            min: 5,
            max: 200,
            window: Duration::from_secs(1),
        };
        let mut s = start(50.0);
        for _ in 0..20 {
            s = next(&c, s, window(100, 10, 0, 50));
        }
        let healthy = s.limit;
        assert!(
            healthy > 50.0,
            "steady latency lets the limit grow: {healthy}"
        );
        // A jump in latency (queueing) cuts the limit within a few windows...
        for _ in 0..5 {
            s = next(&c, s, window(100, 80, 0, 50));
        }
        let degraded = s.limit;
        assert!(
            degraded < healthy * 0.75,
            "latency x8 cuts the limit: {degraded} vs {healthy}"
        );
        // When latency recovers, so does the limit.
        for _ in 0..50 {
            s = next(&c, s, window(100, 10, 0, 50));
        }
        assert!(
            s.limit > degraded * 1.5,
            "the limit recovers after latency: {}",
            s.limit
        );
        // A latency that stays high becomes the new normal: the limit settles, within bounds.
        for _ in 0..300 {
            s = next(&c, s, window(100, 80, 0, 50));
            assert!((5.0..=200.0).contains(&s.limit));
        }
        assert!(s.limit <= 200.0 && s.limit >= 5.0);
    }

    #[test]
    fn zero_and_huge_latencies_keep_the_limit_finite_and_within_bounds() {
        let c = AdaptiveLimit {
            algorithm: Algorithm::Gradient2 {
                tolerance: 1500,
                smoothing: 200,
            },
            initial: 10,
            min: 5,
            max: 20,
            window: Duration::from_secs(1),
        };
        // A clock that did not move between admission and finish: every sample is 0 ns.
        let zero = Window {
            count: 3,
            sum_ns: 0,
            overloads: 0,
            in_flight: 10,
        };
        let huge = Window {
            count: 1,
            sum_ns: u64::MAX,
            overloads: 0,
            in_flight: 10,
        };
        let mut s = start(10.0);
        for w in [zero, zero, huge, zero, huge, huge, zero] {
            s = next(&c, s, w);
            assert!(
                s.limit.is_finite() && (5.0..=20.0).contains(&s.limit),
                "{s:?}"
            );
            assert!(s.long_ns.is_finite() && s.long_ns >= 1.0, "{s:?}");
        }
        for config in [c, aimd()] {
            let poisoned = State {
                limit: f64::NAN,
                long_ns: f64::NAN,
            };
            let s = next(&config, poisoned, zero);
            assert!(
                s.limit.is_nan(),
                "a state is only ever replaced by a finite one"
            );
            let sampler = Sampler::new();
            *sampler.state.lock() = poisoned;
            assert_eq!(
                sampler.clamp(&config),
                config.initial.clamp(config.min, config.max)
            );
        }
    }

    #[test]
    fn latency_sums_saturate() {
        let sampler = Sampler::new();
        sampler.reset(10, 0, MS);
        sampler.record(u64::MAX - 1, false);
        sampler.record(5, true);
        let w = sampler.take();
        assert_eq!((w.count, w.sum_ns, w.overloads), (2, u64::MAX, 1));
    }

    #[test]
    fn one_update_per_window() {
        let c = aimd();
        let sampler = Sampler::new();
        let window_ns = 1_000 * MS;
        sampler.reset(10, 0, window_ns);
        sampler.record(50 * MS, false);
        assert_eq!(sampler.maybe_update(&c, 999 * MS, window_ns, 10), None);
        assert_eq!(
            sampler.maybe_update(&c, 1_000 * MS, window_ns, 10),
            Some(11)
        );
        assert_eq!(sampler.maybe_update(&c, 1_000 * MS, window_ns, 10), None);
        sampler.record(500 * MS, false);
        assert_eq!(sampler.maybe_update(&c, 2_000 * MS, window_ns, 10), Some(5));
    }
}

//! Adaptive concurrency limits: AIMD and Gradient2.
//!
//! A static limit is a guess made before the service met its traffic. An adaptive one follows the
//! latency of completed requests: when latency rises the backend is queueing, and the limit falls
//! until it stops; when latency recovers, the limit climbs back. Both algorithms here are pure
//! functions of the previous state and one window of samples, so they can be tested exactly.
//!
//! The per-request path only adds a sample to a few atomic accumulators. Once per window, the first
//! request to finish after the window ended computes the new limit, and sets the limiter, under a
//! lock only that request and a reload ever take. The configuration it computes with is the
//! sampler's own, which a reload replaces under the same lock: a request still running under an
//! older policy closes a window by the newest one, never setting a limit outside its bounds.
//!
//! Both grow only a limit in use: at least half of it in flight when a window closes, or a request
//! turned away by it (shed or refused as over the limit) during the window. A quiet spell says
//! nothing about how much more the backend can take. (Half in flight alone would not do: a class
//! whose traffic is all background work may fill only its share, by default half the limit
//! rounded down, and after a backoff to an odd limit it would never count as in use again.)
//!
//! Only outcomes that say something about the backend's capacity are sampled: successes and
//! overload failures (server errors, timeouts). Refused, cancelled and client-error requests are not.

use super::limiter::Limiter;
use crate::policy::{AdaptiveLimit, Algorithm};
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};
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
    /// Whether the limit turned a request away during the window.
    pub(crate) turned_away: bool,
}

impl Window {
    /// Whether the limit was in use: half of it in flight, or a request turned away by it.
    fn in_use(&self, limit: f64) -> bool {
        self.turned_away || f64::from(self.in_flight) * 2.0 >= limit
    }
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
            } else if w.in_use(state.limit) {
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
            // Overload failures are often fast (a backend refusing work answers quickly), so they
            // would read as good latency: the window's share of them caps the gradient instead, and
            // a window with any gets no headroom to grow by.
            let failing = w.overloads as f64 / w.count as f64;
            let gradient = (tolerance * long / mean).min(1.0 - failing).clamp(0.5, 1.0);
            let headroom = if w.overloads > 0 {
                0.0
            } else {
                state.limit.sqrt()
            };
            let mut target = state.limit * gradient + headroom;
            // Like AIMD, grow only a limit in use: a quiet spell says nothing about how much more
            // the backend can take, and must not leave the next burst a limit at `max`.
            if !w.in_use(state.limit) {
                target = target.min(state.limit);
            }
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
    /// Set when the limit turns a request away (see [`Window::turned_away`]).
    turned_away: AtomicBool,
    window_end: AtomicU64,
    /// The window's length, ns, of the current configuration.
    window_ns: AtomicU64,
    state: Mutex<Adapting>,
}

/// The algorithm's state and the configuration it runs under (`None`: the class's limit is static
/// now, and nothing may set it).
#[derive(Debug, Default)]
struct Adapting {
    state: State,
    config: Option<AdaptiveLimit>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Sampler {
            count: CachePadded::new(AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            turned_away: AtomicBool::new(false),
            window_end: AtomicU64::new(0),
            window_ns: AtomicU64::new(0),
            state: Mutex::new(Adapting::default()),
        }
    }

    /// Starts over under `config`, from its initial limit, which it gives `limiter`.
    pub(crate) fn reset(&self, config: AdaptiveLimit, now: u64, limiter: &Limiter) {
        let mut adapting = self.state.lock();
        adapting.state = State {
            limit: f64::from(config.initial),
            long_ns: 0.0,
        };
        adapting.config = Some(config);
        let window_ns = crate::clock::duration_to_nanos(config.window);
        self.window_ns.store(window_ns, Ordering::Relaxed);
        self.window_end
            .store(now.saturating_add(window_ns), Ordering::Relaxed);
        self.take();
        limiter.set_limit(config.initial);
    }

    /// Goes on under `config` (the same algorithm, new settings), from the current limit clamped to
    /// its bounds, which it gives `limiter`. A shorter window takes effect at once: the current one
    /// ends no later than a new window from `now` would (a retune from an hour to a second in the
    /// middle of an incident must not wait out the hour).
    pub(crate) fn reconfigure(&self, config: AdaptiveLimit, now: u64, limiter: &Limiter) {
        let mut adapting = self.state.lock();
        let limit = if adapting.state.limit.is_finite() {
            adapting.state.limit
        } else {
            f64::from(config.initial)
        };
        adapting.state.limit = limit.clamp(f64::from(config.min), f64::from(config.max));
        adapting.config = Some(config);
        let window_ns = crate::clock::duration_to_nanos(config.window);
        self.window_ns.store(window_ns, Ordering::Relaxed);
        self.window_end
            .fetch_min(now.saturating_add(window_ns), Ordering::AcqRel);
        limiter.set_limit(adapting.state.limit as u32);
    }

    /// The class's limit is static from now on: windows still closing set nothing.
    pub(crate) fn stop(&self) {
        self.state.lock().config = None;
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

    /// Notes that the limit turned a request away. Written only when not yet set, so that a
    /// storm of refusals does not keep taking the line from the requests that finish.
    pub(crate) fn turned_away(&self) {
        if !self.turned_away.load(Ordering::Relaxed) {
            self.turned_away.store(true, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Window {
        Window {
            count: self.count.swap(0, Ordering::Relaxed),
            sum_ns: self.sum_ns.swap(0, Ordering::Relaxed),
            overloads: self.overloads.swap(0, Ordering::Relaxed),
            in_flight: 0,
            turned_away: self.turned_away.swap(false, Ordering::Relaxed),
        }
    }

    /// If the window has ended, computes the next limit and gives it to `limiter` (once, by
    /// whoever gets here first). Returns the new limit.
    pub(crate) fn maybe_update(&self, now: u64, in_flight: u32, limiter: &Limiter) -> Option<u32> {
        let end = self.window_end.load(Ordering::Relaxed);
        let window_ns = self.window_ns.load(Ordering::Relaxed);
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
        let mut adapting = self.state.lock();
        let config = adapting.config?;
        adapting.state = next(&config, adapting.state, w);
        let limit = adapting.state.limit as u32;
        limiter.set_limit(limit);
        Some(limit)
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

    #[test]
    fn the_floor_leaves_a_permit_to_every_priority_with_a_share() {
        use crate::policy::Headroom;
        let low = AdaptiveLimit {
            initial: 1,
            min: 1,
            ..aimd()
        };
        // The default shares: background work's half of 2 is one permit.
        let f = low.floored(&Headroom([1000, 1000, 800, 500]));
        assert_eq!((f.min, f.initial, f.max), (2, 2, 12));
        // A share of nothing asks for no permit; 30% needs a limit of 4 (3 would give 0.9).
        let f = low.floored(&Headroom([1000, 1000, 300, 0]));
        assert_eq!((f.min, f.initial), (4, 4));
        use super::super::limiter::allowed;
        for share in 1..=1000u16 {
            let f = low.floored(&Headroom([1000, 1000, 1000, share]));
            if allowed(f.max, share) >= 1 {
                // The smallest limit that serves the share.
                assert!(allowed(f.min, share) >= 1, "{share}");
                assert!(f.min == 1 || allowed(f.min - 1, share) == 0, "{share}");
            } else {
                assert_eq!(f.min, 1, "{share}");
            }
        }
        // A share no limit up to `max` serves asks for nothing (its priority is told not to
        // retry); the others still count. A `min` above the floor stays as it is, and so does an
        // `initial` within bounds.
        let f = low.floored(&Headroom([1000, 1000, 800, 1]));
        assert_eq!((f.min, f.initial), (2, 2));
        let f = low.floored(&Headroom([1000, 1000, 1000, 84]));
        assert_eq!(
            (f.min, f.initial),
            (12, 12),
            "12 is the first limit of which 8.4% is one"
        );
        let f = low.floored(&Headroom([1000, 1000, 1000, 83]));
        assert_eq!((f.min, f.initial), (1, 1), "no limit up to 12 admits 8.3%");
        let f = aimd().floored(&Headroom([1000, 1000, 800, 500]));
        assert_eq!((f.min, f.initial), (2, 10));
    }

    /// Gradient2 with a tolerance of 1.5 and a smoothing of 0.2, from `initial` within `5..=max`.
    fn gradient2(initial: u32, max: u32) -> AdaptiveLimit {
        AdaptiveLimit {
            algorithm: Algorithm::Gradient2 {
                tolerance: 1500,
                smoothing: 200,
            },
            initial,
            min: 5,
            max,
            window: Duration::from_secs(1),
        }
    }

    fn window(count: u64, mean_ms: u64, overloads: u64, in_flight: u32) -> Window {
        Window {
            count,
            sum_ns: count * mean_ms * MS,
            overloads,
            in_flight,
            turned_away: false,
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
        let turned_away = Window {
            turned_away: true,
            ..window(10, 50, 0, 5)
        };
        assert_eq!(
            next(&c, s, turned_away).limit,
            12.0,
            "under half in flight, but a request turned away: in use"
        );
        let g = gradient2(5, 20);
        assert!(next(&g, start(11.0), turned_away).limit > 11.0);
        assert_eq!(next(&g, start(11.0), window(10, 50, 0, 5)).limit, 11.0);
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
        let c = gradient2(50, 200);
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
    fn gradient_grows_only_a_limit_in_use() {
        let c = gradient2(50, 200);
        let mut s = start(50.0);
        // Fast, steady, and never more than 10 in flight: the limit of 50 stays.
        for _ in 0..50 {
            s = next(&c, s, window(100, 10, 0, 10));
        }
        assert_eq!(s.limit, 50.0);
        // A quiet spell still lets a rise in latency cut it.
        for _ in 0..5 {
            s = next(&c, s, window(100, 80, 0, 10));
        }
        assert!(s.limit < 40.0, "{}", s.limit);
    }

    #[test]
    fn zero_and_huge_latencies_keep_the_limit_finite_and_within_bounds() {
        let c = gradient2(10, 20);
        // A clock that did not move between admission and finish: every sample is 0 ns.
        let zero = Window {
            count: 3,
            sum_ns: 0,
            overloads: 0,
            in_flight: 10,
            turned_away: false,
        };
        let huge = Window {
            count: 1,
            sum_ns: u64::MAX,
            overloads: 0,
            in_flight: 10,
            turned_away: false,
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
            let (sampler, limiter) = (Sampler::new(), Limiter::new(1));
            sampler.state.lock().state = poisoned;
            sampler.reconfigure(config, 0, &limiter);
            assert_eq!(
                limiter.limit(),
                config.initial.clamp(config.min, config.max)
            );
        }
    }

    #[test]
    fn latency_sums_saturate() {
        let sampler = Sampler::new();
        sampler.reset(aimd(), 0, &Limiter::new(1));
        sampler.record(u64::MAX - 1, false);
        sampler.record(5, true);
        let w = sampler.take();
        assert_eq!((w.count, w.sum_ns, w.overloads), (2, u64::MAX, 1));
    }

    #[test]
    fn one_update_per_window() {
        let c = aimd();
        let (sampler, limiter) = (Sampler::new(), Limiter::new(1));
        sampler.reset(c, 0, &limiter);
        assert_eq!(limiter.limit(), 10);
        sampler.record(50 * MS, false);
        assert_eq!(sampler.maybe_update(999 * MS, 10, &limiter), None);
        assert_eq!(sampler.maybe_update(1_000 * MS, 10, &limiter), Some(11));
        assert_eq!(limiter.limit(), 11);
        assert_eq!(sampler.maybe_update(1_000 * MS, 10, &limiter), None);
        sampler.record(500 * MS, false);
        assert_eq!(sampler.maybe_update(2_000 * MS, 10, &limiter), Some(5));
        assert_eq!(limiter.limit(), 5);
    }

    #[test]
    fn a_shorter_window_takes_effect_at_once() {
        let hour = AdaptiveLimit {
            window: Duration::from_secs(3600),
            ..aimd()
        };
        let (sampler, limiter) = (Sampler::new(), Limiter::new(1));
        sampler.reset(hour, 0, &limiter);
        sampler.reconfigure(aimd(), 500 * MS, &limiter); // a one-second window, from 0.5 s
        sampler.record(500 * MS, true);
        assert_eq!(sampler.maybe_update(1_499 * MS, 10, &limiter), None);
        assert_eq!(sampler.maybe_update(1_500 * MS, 10, &limiter), Some(5));
        // A longer window leaves the current one to end when it was going to.
        let (sampler, limiter) = (Sampler::new(), Limiter::new(1));
        sampler.reset(aimd(), 0, &limiter);
        sampler.reconfigure(hour, 0, &limiter);
        sampler.record(500 * MS, true);
        assert_eq!(sampler.maybe_update(1_000 * MS, 10, &limiter), Some(5));
    }

    #[test]
    fn windows_close_under_the_newest_configuration() {
        let (sampler, limiter) = (Sampler::new(), Limiter::new(1));
        sampler.reset(aimd(), 0, &limiter);
        // A reload narrows the bounds to 2..=4: the limit is clamped at once...
        let narrow = AdaptiveLimit { max: 4, ..aimd() };
        sampler.reconfigure(narrow, 0, &limiter);
        assert_eq!(limiter.limit(), 4);
        // ...and a fast window closed by a request of the older policy grows it within them.
        sampler.record(10 * MS, false);
        assert_eq!(sampler.maybe_update(1_000 * MS, 10, &limiter), Some(4));
        assert_eq!(limiter.limit(), 4);
        // A static limit from a reload: windows still closing set nothing.
        sampler.stop();
        limiter.set_limit(7);
        sampler.record(10 * MS, false);
        assert_eq!(sampler.maybe_update(2_000 * MS, 10, &limiter), None);
        assert_eq!(limiter.limit(), 7);
    }
}

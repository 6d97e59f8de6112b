//! The generic cell rate algorithm, as a pure function.
//!
//! The state of a rate limit is one number, the theoretical arrival time (TAT): when the key would
//! have used up its allowance if it had spent at exactly the permitted rate. A request of cost `c` is
//! conforming when pushing the TAT `c` emission intervals forward keeps it within the burst tolerance
//! of now. When it does not, the same arithmetic says exactly when it would, which becomes an honest
//! `Retry-After`; a cost larger than the whole burst can never conform.

/// The parameters of one rate limit, in clock nanoseconds.
///
/// The time one unit of cost stands for is kept in 32.32 fixed point, rounded up: with whole
/// nanoseconds, a rate of 700 MB a second (1.43 ns a byte) would have been enforced as 1 GB a
/// second. Rounding up only ever makes the rate a little tighter (by under a nanosecond per 2^32
/// units), never looser.
///
/// The TAT is kept in whole nanoseconds, so each request's time is rounded up once more: a burst
/// of small requests stands for up to a nanosecond a request more than the burst's own time. A rate
/// of 3 a second (333,333,333.3 ns each) would then refuse the third of a burst of 3. The
/// tolerance therefore has a slack for that rounding: `burst` nanoseconds (a nanosecond for each
/// request a burst can hold), but never more than 2^-16 of the burst's time, so that the slack
/// lets in at most 2^-16 of a burst beyond it. A rate of up to about 15,000 units a second gets
/// every burst of single units whole; a faster one (bytes, say) may get a burst of single units
/// slightly short, never more than it is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds per unit of cost, times 2^32, rounded up (at least 1).
    interval: u128,
    /// The largest cost that can ever conform.
    pub(crate) burst: u64,
    /// The time `burst` units stand for.
    time: u64,
    /// How far ahead of now the TAT may run: `time`, and the slack for the TAT's rounding (see
    /// above).
    tolerance: u64,
}

/// Why a request does not conform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nonconforming {
    /// It would conform after this many nanoseconds.
    Wait(u64),
    /// Its cost is larger than the whole burst.
    Never,
}

/// The fixed point's fraction bits.
const FRACTION: u32 = 32;

/// The tolerance's slack for rounding is at most the burst's time shifted right by this much.
const SLACK_SHIFT: u32 = 16;

impl Gcra {
    /// `amount` units of cost per `per_nanos`, in bursts of at most `burst`.
    pub(crate) fn new(amount: u64, per_nanos: u64, burst: u64) -> Self {
        let interval = (u128::from(per_nanos) << FRACTION)
            .div_ceil(u128::from(amount.max(1)))
            .max(1);
        let mut gcra = Gcra {
            interval,
            burst,
            time: 0,
            tolerance: 0,
        };
        gcra.time = gcra.span(burst);
        gcra.tolerance = gcra
            .time
            .saturating_add(burst.min(gcra.time >> SLACK_SHIFT));
        gcra
    }

    /// The time `cost` units stand for, in whole nanoseconds rounded up (saturating).
    #[inline]
    fn span(self, cost: u64) -> u64 {
        let q = u128::from(cost)
            .saturating_mul(self.interval)
            .saturating_add((1 << FRACTION) - 1);
        u64::try_from(q >> FRACTION).unwrap_or(u64::MAX)
    }

    /// The new TAT if a request of `cost` at `now` conforms. A cost of 0 always conforms and
    /// leaves the TAT as it is, however far ahead it is (a reload that lowered the burst, a clock
    /// that stepped back, another request of the key that charged after this one read the time).
    #[inline]
    pub(crate) fn decide(self, tat: u64, now: u64, cost: u64) -> Result<u64, Nonconforming> {
        if cost > self.burst {
            return Err(Nonconforming::Never);
        }
        if cost == 0 {
            return Ok(tat);
        }
        // Checked, not saturating: a next allowed time clamped to the clock's end would look
        // closer than it is, and let everything through near the end of the clock's range. Past
        // that end, the request is not allowed before the clock itself ends.
        let Some(next) = tat.max(now).checked_add(self.span(cost)) else {
            return Err(Nonconforming::Wait(u64::MAX));
        };
        let ahead = next - now;
        if ahead <= self.tolerance {
            Ok(next)
        } else {
            // The wait is counted without the slack: a hint a few nanoseconds long, and as round
            // as the rate, rather than one that cuts into the slack.
            Err(Nonconforming::Wait(ahead - self.time))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn bursts_then_paces() {
        // 10 per second, bursts of 3.
        let g = Gcra::new(10, SEC, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = g.decide(tat, 0, 1).unwrap();
        }
        // The wait leaves the slack for rounding alone (3 ns, one for each unit of the burst):
        // exactly the interval, though 3 ns less would do.
        assert_eq!(g.decide(tat, 0, 1), Err(Nonconforming::Wait(SEC / 10)));
        assert!(g.decide(tat, SEC / 10 - 3, 1).is_ok());
        assert!(g.decide(tat, SEC / 10 - 4, 1).is_err());
        assert_eq!(g.decide(0, 0, 4), Err(Nonconforming::Never));
        // Cost-weighted: a cost of 3 uses the whole burst.
        let t = g.decide(0, 5 * SEC, 3).unwrap();
        assert_eq!(g.decide(t, 5 * SEC, 1), Err(Nonconforming::Wait(SEC / 10)));
        // Idle time refills, but never beyond the burst.
        assert!(g.decide(t, 100 * SEC, 3).is_ok());
        assert_eq!(g.decide(0, u64::MAX, u64::MAX), Err(Nonconforming::Never));
    }

    /// A cost of 0 conforms and changes nothing, even when the TAT is further ahead than the
    /// burst allows (which a lowered burst or a clock that stepped back leaves behind).
    #[test]
    fn a_free_request_always_conforms() {
        let g = Gcra::new(10, SEC, 3);
        assert_eq!(g.decide(0, 0, 0), Ok(0));
        assert_eq!(g.decide(5 * SEC, 0, 0), Ok(5 * SEC));
        assert_eq!(g.decide(u64::MAX, 0, 0), Ok(u64::MAX));
        assert!(g.decide(5 * SEC, 0, 1).is_err());
    }

    /// A rate that is not a whole number of nanoseconds per unit is enforced as written, not as the
    /// next faster whole-nanosecond rate.
    #[test]
    fn fractional_intervals_are_exact() {
        // 700 MB a second, bursts of one second: 1.43 ns a byte.
        const RATE: u64 = 700_000_000;
        let g = Gcra::new(RATE, SEC, RATE);
        let tat = g.decide(0, 0, RATE).unwrap();
        assert!(
            (SEC..=SEC + 1).contains(&tat),
            "a whole burst stands for one second (rounded up): {tat}"
        );
        // Half a second later, half the burst has come back (to within the nanoseconds the
        // rounding up costs), and no more than 2^-16 of a burst beyond it (the slack).
        assert!(g.decide(tat, SEC / 2 + 2, RATE / 2).is_ok());
        assert!(matches!(
            g.decide(tat, SEC / 2 + 2, RATE / 2 + RATE / (1 << 16) + 2),
            Err(Nonconforming::Wait(_))
        ));
        // Paced at 1 MB a millisecond for ten seconds, at most the rate plus the burst gets in.
        let mut tat = 0;
        let mut admitted = 0u64;
        for ms in 0..10_000u64 {
            if let Ok(next) = g.decide(tat, ms * 1_000_000, 1_000_000) {
                tat = next;
                admitted += 1_000_000;
            }
        }
        assert!(admitted <= 10 * RATE + RATE, "{admitted}");
        assert!(admitted >= 10 * RATE, "{admitted}");
        // A cost of the whole burst always fits an idle key; one more never does.
        let odd = Gcra::new(3, 10, 7);
        assert!(odd.decide(0, 0, 7).is_ok());
        assert_eq!(odd.decide(0, 0, 8), Err(Nonconforming::Never));
    }

    /// A burst of single units is let in whole, however the second divides by the rate, and no
    /// unit more; a burst of one unit and one of the whole burst fit too.
    #[test]
    fn bursts_of_single_units_fit_whatever_the_rounding() {
        for (amount, burst) in [(3, 3), (7, 7), (3, 300), (9, 2), (11, 1), (12_345, 12_345)] {
            let g = Gcra::new(amount, SEC, burst);
            let mut tat = 0;
            for n in 0..burst {
                tat = g.decide(tat, 0, 1).unwrap_or_else(|e| {
                    panic!("{amount}/s, burst {burst}: unit {n} refused: {e:?}")
                });
            }
            assert!(
                g.decide(tat, 0, 1).is_err(),
                "{amount}/s, burst {burst}: one past the burst"
            );
            assert!(g.decide(0, 0, burst).is_ok());
            // Paced at the rate afterwards: one unit each interval, rounded up to whole ns.
            let interval = SEC.div_ceil(amount);
            let mut now = 0;
            for _ in 0..1_000 {
                now += interval;
                tat = g.decide(tat, now, 1).expect("one unit an interval");
            }
        }
    }

    /// Near the end of the clock's range a next allowed time past it is not clamped into it
    /// (which would let everything through): the request waits for as long as the clock lasts.
    #[test]
    fn the_clocks_end_is_not_a_free_pass() {
        let g = Gcra::new(1, SEC, 1);
        let now = u64::MAX - 1_000;
        assert_eq!(g.decide(0, now, 1), Err(Nonconforming::Wait(u64::MAX)));
        assert_eq!(g.decide(0, now, 0), Ok(0), "a free request still goes");
    }
}

//! The generic cell rate algorithm, as a pure function.
//!
//! The state of a rate limit is one number, the theoretical arrival time (TAT): when the key would
//! have used up its allowance if it had spent at exactly the permitted rate. A request of cost `c` is
//! conforming when pushing the TAT `c` emission intervals forward keeps it within the burst tolerance
//! of now. When it does not, the same arithmetic says exactly when it would, which becomes an honest
//! `Retry-After`; a cost larger than the whole burst can never conform.

/// The parameters of one rate limit, in clock nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds per unit of cost (at least 1).
    pub(crate) interval: u64,
    /// How far ahead of now the TAT may run: `burst × interval`.
    pub(crate) tolerance: u64,
}

/// Why a request does not conform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nonconforming {
    /// It would conform after this many nanoseconds.
    Wait(u64),
    /// Its cost is larger than the whole burst.
    Never,
}

impl Gcra {
    pub(crate) fn new(amount: u64, per_nanos: u64, burst: u64) -> Self {
        let interval = (per_nanos / amount.max(1)).max(1);
        Gcra {
            interval,
            tolerance: burst.saturating_mul(interval),
        }
    }

    /// The new TAT if a request of `cost` at `now` conforms.
    #[inline]
    pub(crate) fn decide(self, tat: u64, now: u64, cost: u64) -> Result<u64, Nonconforming> {
        let increment = cost.saturating_mul(self.interval);
        if increment > self.tolerance {
            return Err(Nonconforming::Never);
        }
        let next = tat.max(now).saturating_add(increment);
        let ahead = next - now;
        if ahead <= self.tolerance {
            Ok(next)
        } else {
            Err(Nonconforming::Wait(ahead - self.tolerance))
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
        assert_eq!(g.decide(tat, 0, 1), Err(Nonconforming::Wait(SEC / 10)));
        assert!(g.decide(tat, SEC / 10, 1).is_ok());
        assert_eq!(g.decide(0, 0, 4), Err(Nonconforming::Never));
        // Cost-weighted: a cost of 3 uses the whole burst.
        let t = g.decide(0, 5 * SEC, 3).unwrap();
        assert_eq!(g.decide(t, 5 * SEC, 1), Err(Nonconforming::Wait(SEC / 10)));
        // Idle time refills, but never beyond the burst.
        assert!(g.decide(t, 100 * SEC, 3).is_ok());
        assert_eq!(g.decide(0, u64::MAX, u64::MAX), Err(Nonconforming::Never));
    }
}

//! A process-wide retry budget per backend, in fixed-point tokens.
//!
//! Retries are where overload multiplies: in 2015 two layers retried 8 and 5 times each. A backend's
//! retry budget lets retries be at most a configured share of first attempts, plus a small floor per
//! second so that a quiet service can still retry at all. Every first attempt that goes ahead deposits
//! `ratio` thousandths of a token (one refused at the door earns nothing, so an open breaker does not
//! bank retries for the moment it closes); every retry withdraws a whole token (1000); the floor
//! refills with time. The balance is capped, so a long calm spell cannot bank a storm's worth of
//! retries.
//!
//! The budget is the process's, shared by every request whichever policy it runs under, so it keeps
//! the current policy's rates itself (set by reloads). The balance and its cap share one word:
//! a reload that lowers the cap trims the balance in the same compare-and-swap that every deposit,
//! refill and withdrawal goes through, so none of them can put back what the lower cap took away.
//!
//! | bits   | field                               |
//! |--------|-------------------------------------|
//! | 0..40  | balance, thousandths of a token     |
//! | 40..64 | cap, whole tokens                   |

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// One token, in the fixed-point unit.
pub(crate) const TOKEN: u64 = 1000;

const BALANCE_BITS: u32 = 40;
const BALANCE: u64 = (1 << BALANCE_BITS) - 1;
/// The largest cap the word holds, in tokens (2^24 - 1: ten seconds of the highest floor a policy
/// accepts, 1,000,000 a second, is 10,000,000).
const MAX_CAP_TOKENS: u64 = (1 << (64 - BALANCE_BITS)) - 1;

/// A refill time this far ahead of a reading is taken for a clock that stepped back; nearer, for a
/// reading taken a moment before another thread's (or a coarse one lagging a precise one): no time
/// has passed, rather than a stretch of floor paid twice.
const STEP_BACK: u64 = 1_000_000_000;

fn pack(balance: u64, cap_tokens: u64) -> u64 {
    (cap_tokens << BALANCE_BITS) | balance.min(BALANCE)
}

/// `(balance, cap)`, both in thousandths.
fn unpack(word: u64) -> (u64, u64) {
    (word & BALANCE, (word >> BALANCE_BITS) * TOKEN)
}

#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// The balance and the cap (see the module documentation).
    word: CachePadded<AtomicU64>,
    /// When the floor last refilled, ns.
    refilled: AtomicU64,
    /// The current policy's other rates ([`Rates`]'s fields), set by reloads.
    deposit: AtomicU64,
    floor_per_second: AtomicU64,
}

/// The budget's settings, in the units it counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rates {
    /// Deposited per first attempt, thousandths of a token.
    pub(crate) deposit: u64,
    /// Tokens per second of floor.
    pub(crate) floor_per_second: u64,
    /// The most the balance holds, thousandths (a whole number of tokens).
    pub(crate) cap: u64,
}

impl Rates {
    pub(crate) fn new(ratio_permille: u64, floor_per_second: u64) -> Self {
        Rates {
            deposit: ratio_permille,
            floor_per_second,
            // Ten seconds of floor, and at least ten retries' worth.
            cap: floor_per_second
                .saturating_mul(10)
                .clamp(10, MAX_CAP_TOKENS)
                * TOKEN,
        }
    }

    fn cap_tokens(&self) -> u64 {
        (self.cap / TOKEN).min(MAX_CAP_TOKENS)
    }
}

impl RetryBudget {
    pub(crate) fn new(now: u64, rates: Rates) -> Self {
        let balance = rates.cap.min(rates.floor_per_second.saturating_mul(TOKEN));
        RetryBudget {
            word: CachePadded::new(AtomicU64::new(pack(balance, rates.cap_tokens()))),
            refilled: AtomicU64::new(now),
            deposit: AtomicU64::new(rates.deposit),
            floor_per_second: AtomicU64::new(rates.floor_per_second),
        }
    }

    /// The current policy's rates. (Three words, each set alone: a reader racing a reload may
    /// see some old and some new, for that one operation; the cap is always the balance's own.)
    #[inline]
    pub(crate) fn rates(&self) -> Rates {
        Rates {
            deposit: self.deposit.load(Ordering::Relaxed),
            floor_per_second: self.floor_per_second.load(Ordering::Relaxed),
            cap: unpack(self.word.load(Ordering::Acquire)).1,
        }
    }

    /// Gives the budget a reload's rates, at `now`. What it earned up to now is earned at the rates
    /// it had meanwhile: new rates, a floor turned on among them, apply from now on only. A lower
    /// cap takes what it leaves out away for good.
    pub(crate) fn set_rates(&self, now: u64, rates: Rates) {
        let old = self.rates();
        if old == rates {
            return;
        }
        self.settle(now, old);
        self.deposit.store(rates.deposit, Ordering::Relaxed);
        self.floor_per_second
            .store(rates.floor_per_second, Ordering::Relaxed);
        let cap = rates.cap_tokens();
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(pack(unpack(w).0.min(cap * TOKEN), cap))
            });
    }

    /// Adds `n`, up to the cap. A full budget (the usual state of a healthy backend) is only read.
    #[inline]
    fn add(&self, n: u64) {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (b, cap) = unpack(w);
                let next = b.saturating_add(n).min(cap);
                (next != b).then_some((w & !BALANCE) | next)
            });
    }

    /// A first attempt: deposit.
    #[inline]
    pub(crate) fn deposit(&self) {
        let deposit = self.deposit.load(Ordering::Relaxed);
        if deposit > 0 {
            self.add(deposit);
        }
    }

    /// Adds the floor earned since the last refill; one thread claims each stretch of time.
    ///
    /// The refill time moves on by the time the whole thousandths earned stand for, not to `now`:
    /// the remainder is kept for the next refill, so that frequent retry decisions do not round
    /// the floor away. A refill time more than [`STEP_BACK`] ahead of `now` is one a clock that
    /// stepped back left behind: it is moved back to `now`, and the floor starts earning again from
    /// there. Less far ahead, no time has passed.
    #[inline]
    fn refill(&self, now: u64, rates: Rates) {
        self.refill_from(now, rates, true);
    }

    /// [`refill`](Self::refill); with `step_back` false, a refill time ahead of `now` is left
    /// where it is however far ahead (a reload settles at a reading taken before it compiled).
    fn refill_from(&self, now: u64, rates: Rates, step_back: bool) {
        let last = self.refilled.load(Ordering::Acquire);
        if now == last || rates.floor_per_second == 0 {
            return;
        }
        if now < last {
            if step_back && last - now > STEP_BACK {
                let _ =
                    self.refilled
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire);
            }
            return;
        }
        let per_second = u128::from(rates.floor_per_second) * u128::from(TOKEN);
        let earned = u128::from(now - last) * per_second / 1_000_000_000;
        if earned == 0 {
            return;
        }
        let to = if earned >= u128::from(rates.cap) {
            // A full budget's worth or more: nothing carried over could fit.
            now
        } else {
            // At most `now - last`: `earned` is rounded down from that time's worth.
            let paid = (earned * 1_000_000_000).div_ceil(per_second);
            last.saturating_add(u64::try_from(paid).unwrap_or(u64::MAX))
        };
        if self
            .refilled
            .compare_exchange(last, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.add(u64::try_from(earned).unwrap_or(u64::MAX));
        }
    }

    /// Brings the budget up to `now` at the rates it had until then (`rates`), before a reload
    /// gives it others. Without a floor the time passed unearned: the floor a reload turns on
    /// earns from now, not for the time it was off.
    fn settle(&self, now: u64, rates: Rates) {
        if rates.floor_per_second > 0 {
            self.refill_from(now, rates, false);
            return;
        }
        let _ = self
            .refilled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (last < now).then_some(now)
            });
    }

    /// A retry: withdraw one token if there is one.
    #[inline]
    pub(crate) fn try_withdraw(&self, now: u64) -> bool {
        let rates = self.rates();
        self.refill(now, rates);
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (b, cap) = unpack(w);
                Some((w & !BALANCE) | b.min(cap).checked_sub(TOKEN)?)
            })
            .is_ok()
    }

    /// Gives a withdrawn token back (the retry was refused by something else after all).
    pub(crate) fn give_back(&self) {
        self.add(TOKEN);
    }

    /// The balance, in thousandths of a token.
    pub(crate) fn balance(&self) -> u64 {
        unpack(self.word.load(Ordering::Relaxed)).0
    }

    /// The balance a withdrawal at `now` would find: what is banked plus the floor earned since
    /// the last refill (which only a withdrawal collects), up to the cap. Changes nothing.
    pub(crate) fn balance_at(&self, now: u64) -> u64 {
        let rates = self.rates();
        let last = self.refilled.load(Ordering::Acquire);
        let earned = u128::from(now.saturating_sub(last))
            * u128::from(rates.floor_per_second)
            * u128::from(TOKEN)
            / 1_000_000_000;
        u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(self.balance())
            .min(rates.cap)
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn retries_follow_the_ratio_plus_the_floor() {
        // 10% of first attempts, 1 per second of floor, starting empty of floor time.
        let rates = Rates::new(100, 1);
        let b = RetryBudget::new(0, rates);
        assert_eq!(b.balance(), TOKEN, "starts with one second of floor");
        assert!(b.try_withdraw(0));
        assert!(!b.try_withdraw(0));
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw(0), "ten first attempts earn one retry");
        assert!(!b.try_withdraw(0));
        assert!(b.try_withdraw(SEC), "a second of floor earns one");
        // The balance is capped: a long calm spell banks at most ten seconds of floor.
        assert!(!b.try_withdraw(SEC));
        b.refill(1_000 * SEC, rates);
        assert_eq!(b.balance(), 10 * TOKEN);
    }

    #[test]
    fn the_balance_shown_counts_the_floor_not_yet_collected() {
        let rates = Rates::new(0, 2);
        let b = RetryBudget::new(0, rates);
        assert!(b.try_withdraw(0) && b.try_withdraw(0));
        assert_eq!(b.balance_at(0), 0);
        assert_eq!(b.balance_at(SEC / 2), TOKEN, "half a second of 2 a second");
        assert_eq!(b.balance(), 0, "only read");
        assert_eq!(b.balance_at(1_000 * SEC), rates.cap);
        assert!(b.try_withdraw(SEC / 2));
        assert_eq!(b.balance_at(SEC / 2), 0);
    }

    #[test]
    fn frequent_refills_keep_their_remainders() {
        // One retry per second of floor, refilled every 1.9 ms: each refill earns 1.9 thousandths
        // of a token, and the 0.9 must not be lost each time.
        let rates = Rates::new(0, 1);
        let b = RetryBudget::new(0, rates);
        assert!(b.try_withdraw(0));
        let step = 1_900_000;
        let mut now = 0;
        while now + step <= SEC {
            now += step;
            b.refill(now, rates);
        }
        let expected = now / (SEC / TOKEN);
        assert!(
            b.balance() + 1 >= expected && b.balance() <= expected,
            "{} thousandths after {now} ns, expected {expected}",
            b.balance()
        );
    }

    #[test]
    fn a_lower_cap_applies_to_what_was_banked_under_a_higher_one() {
        let generous = Rates::new(0, 100);
        let b = RetryBudget::new(0, generous);
        assert_eq!(b.balance(), 100 * TOKEN);
        let strict = Rates::new(0, 0);
        b.set_rates(0, strict);
        assert_eq!(b.balance_at(0), strict.cap);
        let granted = (0..100).filter(|_| b.try_withdraw(0)).count();
        assert_eq!(granted as u64, strict.cap / TOKEN);
        assert_eq!(b.balance_at(0), 0);
    }

    #[test]
    fn a_clock_that_steps_back_does_not_stop_the_floor() {
        let rates = Rates::new(0, 1);
        let b = RetryBudget::new(3_600 * SEC, rates);
        assert!(b.try_withdraw(3_600 * SEC));
        // The clock steps back an hour; a second later, a second of floor has been earned.
        assert!(!b.try_withdraw(10 * SEC));
        assert!(b.try_withdraw(11 * SEC));
    }

    #[test]
    fn what_a_lower_cap_took_away_does_not_come_back_with_a_higher_one() {
        let generous = Rates::new(0, 10);
        let b = RetryBudget::new(0, generous);
        b.refill(10 * SEC, generous);
        assert_eq!(b.balance(), 100 * TOKEN);
        b.set_rates(10 * SEC, Rates::new(0, 0));
        assert_eq!(b.balance(), 10 * TOKEN);
        b.set_rates(10 * SEC, generous);
        assert_eq!(b.balance_at(10 * SEC), 10 * TOKEN);
    }

    #[test]
    fn a_reload_reading_an_older_time_pays_no_floor_twice() {
        let rates = Rates::new(0, 1);
        let b = RetryBudget::new(0, rates);
        assert!(b.try_withdraw(0));
        // A retry at 5 s collects five seconds of floor; a reload that read the clock at 0 s,
        // before it compiled, then changes the ratio.
        assert!(b.try_withdraw(5 * SEC));
        b.set_rates(0, Rates::new(500, 1));
        let granted = (0..10).filter(|_| b.try_withdraw(5 * SEC)).count();
        assert_eq!(granted, 4, "five seconds of floor, one of it taken");
    }

    #[test]
    fn a_reading_a_moment_older_than_the_last_refill_earns_nothing() {
        let rates = Rates::new(0, 1);
        let b = RetryBudget::new(0, rates);
        assert!(b.try_withdraw(0));
        // One retry collects the floor up to 2 s; another read the clock at 1 s, or reads a
        // coarse clock lagging a second: no time has passed for it, and the second from 1 s to
        // 2 s, paid already, is not paid again.
        assert!(b.try_withdraw(2 * SEC));
        assert!(b.try_withdraw(2 * SEC));
        assert!(!b.try_withdraw(SEC));
        assert!(!b.try_withdraw(2 * SEC), "a second of floor paid twice");
        assert!(b.try_withdraw(3 * SEC), "and the floor goes on from 2 s");
    }

    #[test]
    fn a_floor_turned_off_earns_nothing_more_and_one_turned_on_earns_from_then() {
        let b = RetryBudget::new(0, Rates::new(0, 1));
        assert!(b.try_withdraw(0));
        // Turned off at 1 s: the second before it is earned, nothing after.
        b.set_rates(SEC, Rates::new(0, 0));
        assert_eq!(b.balance_at(100 * SEC), TOKEN);
        assert!(b.try_withdraw(100 * SEC));
        assert!(!b.try_withdraw(100 * SEC));
        // Turned on again at 200 s: the time it was off earns nothing.
        b.set_rates(200 * SEC, Rates::new(0, 1));
        assert!(!b.try_withdraw(200 * SEC));
        assert!(b.try_withdraw(201 * SEC));
    }
}

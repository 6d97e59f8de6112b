//! Grants that give back what they hold when dropped.

use super::Budget;
use crate::handle::{Counter, Level};
use crate::Verdict;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// One unit (or more) of a level dimension, held until dropped.
///
/// Returned by [`Budget::enter`], borrowing the budget, or by [`Budget::enter_owned`] as a
/// `LevelGuard<'static>` that holds its own handle on the budget (for a guard kept beside the request
/// in a state machine or a binding rather than inside a scope). Dropping the guard, by return or by
/// unwinding from a panic, lowers the level again on the budget and every ancestor, exactly once.
#[must_use = "the level is released as soon as the guard is dropped"]
pub struct LevelGuard<'b> {
    pub(super) budget: Cow<'b, Budget>,
    pub(super) level: Level,
    pub(super) amount: u64,
}

impl LevelGuard<'_> {
    /// How much of the level this guard holds.
    pub fn amount(&self) -> u64 {
        self.amount
    }
}

impl Drop for LevelGuard<'_> {
    fn drop(&mut self) {
        self.budget
            .node()
            .release_chain(self.level.index(), self.amount);
    }
}

impl fmt::Debug for LevelGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LevelGuard")
            .field("level", &self.level)
            .field("amount", &self.amount)
            .finish()
    }
}

/// An estimate charged up front, to be settled to the actual amount.
///
/// Returned by [`Budget::reserve`]. A gallery knows its image count before it looks any image up:
/// reserving that count refuses a 10,000-image gallery before the first lookup instead of after the
/// 500th. Once the work is done, [`settle`](Self::settle) refunds what the estimate over-counted or
/// charges what it under-counted.
///
/// Dropping a reservation without settling keeps the whole estimate charged: after a panic nobody knows
/// how much of the work ran, and refunding would let a crashing request mint budget. Call
/// [`cancel`](Self::cancel) when the work is known not to have started.
///
/// Until it is settled, the estimate is not the budget's own to [`Budget::refund`]: only the
/// reservation gives it back, and exactly (on the budget and every ancestor, as a [`LevelGuard`]
/// does), whatever its children are charging meanwhile. Once settled, what stays charged is the
/// budget's own, like any charge.
#[must_use = "a reservation should be settled or cancelled"]
pub struct Reservation<'b> {
    pub(super) budget: Cow<'b, Budget>,
    pub(super) counter: Counter,
    pub(super) amount: u64,
}

impl Reservation<'_> {
    /// The reserved amount.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Settles to `actual`: refunds the difference if the estimate was high; if it was low, charges the
    /// excess, all or nothing. When the excess does not fit, the estimate stays charged and the verdict
    /// says by how much the work went over.
    pub fn settle(self, actual: u64) -> Result<(), Verdict> {
        // Dropping a reservation does nothing (the estimate stays charged), so settling needs no
        // special exit.
        let (budget, dim, amount) = (&self.budget, self.counter.index(), self.amount);
        let node = budget.node();
        let result = if actual <= amount {
            node.release_reserved(dim, amount - actual);
            Ok(())
        } else {
            budget.try_charge(self.counter, actual - amount)
        };
        // What stays of the estimate was used by the work: the budget's own from now on.
        node.own_reserved(dim, amount.min(actual));
        result
    }

    /// Gives the whole estimate back: the work did not happen.
    pub fn cancel(self) {
        self.budget
            .node()
            .release_reserved(self.counter.index(), self.amount);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // Keep the estimate charged; see the type's documentation.
    }
}

impl fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("counter", &self.counter)
            .field("amount", &self.amount)
            .finish()
    }
}

/// Measures the calling thread's CPU time and charges it to the budget's `cpu_time` counter.
///
/// Returned by [`Budget::cpu_meter`]. Call [`charge`](Self::charge) at convenient points (each charges
/// the CPU time since the previous one); dropping the meter charges the rest.
///
/// A meter reads the CPU clock of the thread it runs on, so it stays on the thread that created it:
/// it is not `Send` (moved to another thread, or held across an `.await` on a multi-threaded
/// runtime, it would subtract one thread's CPU time from another's).
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// # let policy = costguard::Policy::builder().class("api", |c| c).build().unwrap();
/// # let engine = costguard::Engine::new(policy).unwrap();
/// let budget = engine.begin_by_name("api", costguard::RequestId::from_u64(1)).unwrap();
/// send(budget.cpu_meter());
/// ```
#[must_use = "CPU time is charged when the meter is checked or dropped"]
pub struct CpuMeter<'b> {
    pub(super) budget: &'b Budget,
    pub(super) last: Option<Duration>,
    /// Keeps the meter on its thread.
    pub(super) thread_bound: PhantomData<*const ()>,
}

impl CpuMeter<'_> {
    /// Charges the CPU time used since the meter started or was last charged.
    pub fn charge(&mut self) -> Result<(), Verdict> {
        let now = self.budget.node().snapshot.cpu_clock.thread_cpu();
        let spent = match (self.last, now) {
            (Some(last), Some(now)) => now.saturating_sub(last),
            _ => Duration::ZERO,
        };
        if now.is_some() {
            self.last = now;
        }
        let n = crate::clock::duration_to_nanos(spent);
        self.budget
            .try_charge(Counter::CPU_TIME, n)
            .inspect_err(|_| {
                // CPU time is measured once spent: what did not fit was used all the same. Every
                // budget of the chain takes what its limit still holds of it (an ancestor with room
                // counts all of it, as for a callee's reported usage), so the totals stay within
                // the limits, and every budget whose own limit could not hold its share is
                // exhausted whatever the refusal's reason (its descendants are cancelled with it): a
                // slice larger than the whole limit is refused as one that can never fit, which
                // alone would exhaust nothing, though the time is spent.
                self.budget.node().fill_chain(Counter::CPU_TIME.index(), n);
            })
    }
}

impl Drop for CpuMeter<'_> {
    fn drop(&mut self) {
        // A refusal here has already flipped the budget's cancellation flag; nothing else to do.
        // While the thread unwinds (perhaps from the CPU clock's own panic), a panic of the last
        // charge is caught: one escaping this drop would abort the process. The time since the
        // last charge then goes uncharged.
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.charge()));
        } else {
            let _ = self.charge();
        }
    }
}

impl fmt::Debug for CpuMeter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuMeter")
            .field("last", &self.last)
            .finish()
    }
}

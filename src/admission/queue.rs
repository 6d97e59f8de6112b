//! Waiting for a permit instead of being refused.
//!
//! A short wait smooths bursts; a long one turns overload into latency for everyone, which is how the
//! 2015 API tier starved: threads waited without limit. So waiting here is bounded every way: by the
//! queue's capacity, by its `max_wait`, by the request's own deadline, and by CoDel: when even the
//! shortest wait of an interval stays above the target, the queue is standing rather than absorbing a
//! burst; new waiters then get only the target's worth of patience and are served newest first (a
//! newest-first queue under overload serves requests whose callers are still there). A wait that
//! ended in a timeout counts too (as a little longer than it was: the waiter would have waited
//! on), so a class stuck at its limit, whose waiters all time out, has a standing queue as well.
//! What CoDel learned is kept until the queue has stood empty for an interval: a queue emptied
//! by timeouts is no sign that the class has room again, and one drained by grants soon shows it
//! in the next interval's waits.
//!
//! Each waiter has one state word that leaves `WAITING` exactly once, by CAS: to `GRANTED` by a
//! releaser that took a permit on its behalf, to `ABANDONED`/`EXPIRED` when it times out or is
//! dropped, or to `REFUSED` when a reload leaves its priority a share of the limit that can never
//! hold a permit (waiting out its time could not help it). Whoever loses that race knows it: a
//! releaser that finds its waiter gone gives the permit back; a waiter that finds itself granted
//! after deciding to leave releases the permit it was handed. No permit is stranded.
//!
//! A releaser learns that someone waits from one atomic count, read after its release; a waiter
//! retries once after it has become visible. With both sides sequentially consistent, at least one of
//! them sees the other, so a permit freed as a waiter arrives is never missed.

use super::limiter::Limiter;
use crate::policy::{Permille, QueuePolicy};
use crate::sync::{Arc, AtomicU32, Mutex, Ordering};
use crate::Priority;
use std::collections::VecDeque;
use std::task::Waker;

pub(crate) const WAITING: u32 = 0;
pub(crate) const GRANTED: u32 = 1;
pub(crate) const ABANDONED: u32 = 2;
pub(crate) const EXPIRED: u32 = 3;
pub(crate) const REFUSED: u32 = 4;

/// Each priority's share of the limit under the current policy, and whether that share rounds
/// down to nothing at the largest limit the class can have: a waiter of such a priority is refused
/// rather than kept waiting for a permit it can never get. In `shadow` mode (a reload turned it on
/// while requests waited) every waiter is admitted, as a first try would be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shares {
    pub(crate) of_limit: [Permille; 4],
    pub(crate) never: [bool; 4],
    pub(crate) shadow: bool,
}

/// Why a waiter was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotQueued {
    /// The queue holds its capacity (this many waiters).
    Full(u32),
    /// Its priority can never get a permit under the current policy.
    Never,
    /// The class is in shadow mode: the request is admitted whatever the limit says.
    Shadow,
}

/// How to wake a waiter.
#[derive(Debug)]
pub(crate) enum Wake {
    Nobody,
    Thread(std::thread::Thread),
    Task(Waker),
}

#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) state: AtomicU32,
    /// The priority it waits at. Its share of the limit is looked up at each dispatch, so that a
    /// reload that changes the class's headroom applies to waiters already queued.
    pub(crate) priority: Priority,
    pub(crate) enqueued: u64,
    pub(crate) deadline: u64,
    wake: Mutex<Wake>,
}

impl Waiter {
    pub(crate) fn new(priority: Priority, enqueued: u64, deadline: u64, wake: Wake) -> Self {
        Waiter {
            state: AtomicU32::new(WAITING),
            priority,
            enqueued,
            deadline,
            wake: Mutex::new(wake),
        }
    }

    pub(crate) fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    /// Leaves the queue by the waiter's own decision; `false` if it was granted, expired or
    /// refused first.
    pub(crate) fn abandon(&self) -> bool {
        self.state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut wake = self.wake.lock();
        match &*wake {
            Wake::Task(w) if w.will_wake(waker) => {}
            _ => *wake = Wake::Task(waker.clone()),
        }
    }

    /// Takes the means to wake the waiter, to use once the queue's lock is released.
    fn take_wake(&self) -> Wake {
        std::mem::replace(&mut *self.wake.lock(), Wake::Nobody)
    }
}

/// Wakes a waiter. An application's waker runs here, so it runs with no lock of costguard's held
/// (it may poll the future again, on this thread), and a panic in it goes no further: this runs in
/// a grant's drop, where a second panic during unwinding would abort the process.
fn fire(wake: Wake) {
    match wake {
        Wake::Nobody => {}
        Wake::Thread(t) => t.unpark(),
        Wake::Task(w) => crate::engine::run_hook(|| w.wake()),
    }
}

/// The most waiters one pass of a dispatch wakes before it releases the queue's lock to wake them.
const WAKE_BATCH: usize = 8;

#[derive(Debug, Default)]
struct Codel {
    interval_end: u64,
    min_sojourn: u64,
    overloaded: bool,
    /// When the queue last became empty (meaningful while it is); `None` when that time is not
    /// known (no clock could be read), in which case the quiet spell counts from the next reading.
    emptied_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    waiters: VecDeque<Arc<Waiter>>,
    codel: Codel,
}

#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// How many waiters are queued; read by every release.
    ///
    /// A new waiter stores this, then looks at the limiter once more; a release writes the limiter,
    /// then loads this. That is the store-buffering pattern: only if all four accesses are `SeqCst`
    /// (as they are, here and in the limiter) is it impossible for the waiter to miss the freed
    /// permit while the release misses the waiter. (loom models `SeqCst` as acquire/release, so its
    /// models cannot check this pairing; they check everything around it.)
    waiting: AtomicU32,
    inner: Mutex<Inner>,
}

impl WaitQueue {
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn len(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long a new waiter may wait at `now`: `max_wait`, or only the CoDel target while the
    /// queue is standing.
    pub(crate) fn patience(&self, policy: &QueuePolicy, now: u64) -> u64 {
        let mut inner = self.inner.lock();
        let quiet = inner.waiters.is_empty();
        let overloaded = inner.codel.standing(now, quiet, policy);
        drop(inner);
        let d = if overloaded {
            policy.codel_target.min(policy.max_wait)
        } else {
            policy.max_wait
        };
        crate::clock::duration_to_nanos(d)
    }

    /// Queues a waiter unless the queue is full or, as `shares` says under the queue's lock, its
    /// priority can never get a permit or the class is in shadow mode. A reload sets the shares,
    /// then takes this lock to dispatch (whether or not it sees waiters): either that dispatch
    /// comes first, and its new shares are read here, or it comes after and refuses (or, in
    /// shadow mode, admits) the waiter.
    pub(crate) fn enqueue(
        &self,
        waiter: Arc<Waiter>,
        policy: &QueuePolicy,
        shares: impl FnOnce() -> Shares,
    ) -> Result<(), NotQueued> {
        let capacity = policy.capacity;
        let mut inner = self.inner.lock();
        let shares = shares();
        if shares.shadow {
            return Err(NotQueued::Shadow);
        }
        if shares.never[waiter.priority as usize] {
            return Err(NotQueued::Never);
        }
        let len = inner.waiters.len() as u32;
        if len >= capacity {
            return Err(NotQueued::Full(len));
        }
        // The first waiter after a quiet spell starts CoDel afresh: what it learned is stale.
        if len == 0 && inner.codel.stale(waiter.enqueued, policy) {
            inner.codel = Codel::default();
        }
        inner.waiters.push_back(waiter);
        self.waiting.store(len + 1, Ordering::SeqCst);
        Ok(())
    }

    /// Takes out a waiter its caller dropped at `now` (`None`: while the thread unwinds, when no
    /// clock is read). Its wait says nothing about the queue.
    pub(crate) fn remove(&self, waiter: &Arc<Waiter>, now: Option<u64>) {
        self.remove_after(waiter, now, None);
    }

    /// Takes out a waiter that timed out at `now`: its wait counts for CoDel (see
    /// [`Codel::on_departure`]). A queue whose waiters all time out (a class stuck at its limit) is
    /// standing too, and new waiters should learn it rather than each wait out the whole
    /// `max_wait`.
    pub(crate) fn remove_timed_out(
        &self,
        waiter: &Arc<Waiter>,
        now: u64,
        policy: Option<&QueuePolicy>,
    ) {
        self.remove_after(waiter, Some(now), policy.map(|p| (p, true)));
    }

    /// Takes out a waiter that took a permit itself as it was queued (one came free meanwhile): a
    /// wait as short as any grant's.
    pub(crate) fn remove_served(
        &self,
        waiter: &Arc<Waiter>,
        now: u64,
        policy: Option<&QueuePolicy>,
    ) {
        self.remove_after(waiter, Some(now), policy.map(|p| (p, false)));
    }

    /// `now`: when the waiter left, if known; `counted`: the queue's settings, and whether the
    /// waiter timed out (else it was served), `None` for a wait CoDel does not count.
    fn remove_after(
        &self,
        waiter: &Arc<Waiter>,
        now: Option<u64>,
        counted: Option<(&QueuePolicy, bool)>,
    ) {
        let mut inner = self.inner.lock();
        if let (Some(now), Some((policy, timed_out))) = (now, counted) {
            // A waiter that timed out left at its deadline, however late that was noticed.
            let at = if timed_out {
                now.min(waiter.deadline)
            } else {
                now
            };
            inner
                .codel
                .on_departure(at.saturating_sub(waiter.enqueued), at, timed_out, policy);
        }
        let before = inner.waiters.len();
        inner.waiters.retain(|w| !Arc::ptr_eq(w, waiter));
        let len = inner.waiters.len() as u32;
        if len == 0 && before > 0 {
            inner.codel.emptied(now);
        }
        self.waiting.store(len, Ordering::SeqCst);
    }

    /// Hands free permits to waiters (newest first while CoDel says overloaded), each within its
    /// priority's share of the limit in `shares` (whatever the limit, in shadow mode), expires
    /// waiters whose deadline has passed, refuses those whose priority can never get a permit,
    /// then wakes them. Called after releases, by the timer and after reloads.
    ///
    /// `now` is `None` when no clock could be read (see [`Gate::dispatch_unwinding`]): no waiter
    /// is expired then, and CoDel is not told.
    ///
    /// [`Gate::dispatch_unwinding`]: super::Gate::dispatch_unwinding
    pub(crate) fn dispatch(
        &self,
        limiter: &Limiter,
        shares: Shares,
        policy: Option<&QueuePolicy>,
        now: Option<u64>,
    ) {
        loop {
            let mut wakes: [Wake; WAKE_BATCH] = std::array::from_fn(|_| Wake::Nobody);
            let done = self.dispatch_pass(limiter, shares, policy, now, &mut wakes);
            wakes.into_iter().for_each(fire);
            if done {
                return;
            }
        }
    }

    /// One pass of [`dispatch`](Self::dispatch) under the queue's lock, gathering the wakes of the
    /// waiters it granted or expired; `false` when it stopped because `wakes` was full.
    fn dispatch_pass(
        &self,
        limiter: &Limiter,
        shares: Shares,
        policy: Option<&QueuePolicy>,
        known: Option<u64>,
        wakes: &mut [Wake; WAKE_BATCH],
    ) -> bool {
        // Without a reading, as if no time had passed: nothing expires, CoDel is not told.
        let (now, policy) = match known {
            Some(now) => (now, policy),
            None => (0, None),
        };
        let mut woken = 0;
        let mut inner = self.inner.lock();
        // The highest share a waiter failed to get a permit at: waiters at that share or below
        // cannot get one either, but one of a higher priority (a larger share of the limit) may.
        let mut blocked: Option<Permille> = None;
        // The order is fixed for the pass: a grant may switch CoDel over, and `i` counts the
        // blocked waiters from the end the pass began at (counted from the other end, it would
        // skip as many waiters there). A switch takes effect from the next pass.
        let quiet = inner.waiters.is_empty();
        let lifo = policy.is_some_and(|p| inner.codel.standing(now, quiet, p));
        let before = inner.waiters.len();
        let mut i = 0;
        while i < inner.waiters.len() {
            if woken == WAKE_BATCH {
                break;
            }
            let index = if lifo { inner.waiters.len() - 1 - i } else { i };
            let w = Arc::clone(&inner.waiters[index]);
            if w.state() != WAITING {
                inner.waiters.remove(index);
                continue;
            }
            let ends = if w.deadline <= now {
                Some(EXPIRED)
            } else if shares.never[w.priority as usize] {
                Some(REFUSED)
            } else {
                None
            };
            if let Some(end) = ends {
                if w.state
                    .compare_exchange(WAITING, end, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if let (EXPIRED, Some(policy)) = (end, policy) {
                        // It left at its deadline, however late that was noticed.
                        let at = now.min(w.deadline);
                        inner
                            .codel
                            .on_departure(at.saturating_sub(w.enqueued), at, true, policy);
                    }
                    wakes[woken] = w.take_wake();
                    woken += 1;
                }
                inner.waiters.remove(index);
                continue;
            }
            let share = shares.of_limit[w.priority as usize];
            if shares.shadow {
                limiter.force_acquire();
            } else if blocked.is_some_and(|b| share <= b) || limiter.try_acquire(share).is_err() {
                // No permit for this one; keep looking to expire the others and to serve those of
                // a higher priority.
                blocked = Some(blocked.map_or(share, |b| b.max(share)));
                i += 1;
                continue;
            }
            if w.state
                .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(policy) = policy {
                    inner
                        .codel
                        .on_departure(now.saturating_sub(w.enqueued), now, false, policy);
                }
                wakes[woken] = w.take_wake();
                woken += 1;
            } else {
                // It left at this very instant: the permit taken for it goes back.
                limiter.release();
            }
            inner.waiters.remove(index);
        }
        let len = inner.waiters.len() as u32;
        if len == 0 && before > 0 {
            inner.codel.emptied(known);
        }
        self.waiting.store(len, Ordering::SeqCst);
        woken < WAKE_BATCH
    }
}

impl Codel {
    /// Whether the queue is standing at `now` (`quiet`: it is empty): the last interval's
    /// shortest wait was above the target, and the queue has not stood empty for a whole interval
    /// since. A verdict older than that quiet spell is stale, and new waiters get their whole
    /// `max_wait`; the next waiter starts a fresh interval (see [`WaitQueue::enqueue`]).
    fn standing(&mut self, now: u64, quiet: bool, policy: &QueuePolicy) -> bool {
        self.overloaded && !(quiet && self.stale(now, policy))
    }

    /// Whether the queue, empty now, has been empty for more than an interval. A clock more than
    /// an interval behind the time the queue emptied stepped back, and makes what was learned
    /// stale too; one a little behind is a reading taken just before another thread emptied it.
    ///
    /// A queue emptied at a time not known counts its quiet spell from this reading.
    fn stale(&mut self, now: u64, policy: &QueuePolicy) -> bool {
        match self.emptied_at {
            Some(at) => at.abs_diff(now) > crate::clock::duration_to_nanos(policy.codel_interval),
            None => {
                self.emptied_at = Some(now);
                false
            }
        }
    }

    /// The queue became empty at `now` (`None`: a time not known).
    fn emptied(&mut self, now: Option<u64>) {
        self.emptied_at = now;
    }

    /// A waiter left the queue at `now` after `sojourn` ns: granted, or (`timed_out`) gave up
    /// waiting. (A waiter dropped by its caller says nothing about the queue, and is not counted.)
    ///
    /// A timed-out waiter would have waited longer still: its wait counts as a nanosecond more
    /// than it was, so that waiters cut to the target's patience, timing out at exactly the
    /// target, keep a stuck class's queue standing. One that gave up before the target (its
    /// request had less time left) says nothing of the queue's waits, and is not counted.
    fn on_departure(&mut self, sojourn: u64, now: u64, timed_out: bool, policy: &QueuePolicy) {
        let target = crate::clock::duration_to_nanos(policy.codel_target);
        let interval = crate::clock::duration_to_nanos(policy.codel_interval);
        let sojourn = match (timed_out, sojourn < target) {
            (false, _) => sojourn,
            (true, false) => sojourn.saturating_add(1),
            (true, true) => return,
        };
        if self.interval_end == 0 {
            self.interval_end = now.saturating_add(interval);
            self.min_sojourn = sojourn;
            return;
        }
        self.min_sojourn = self.min_sojourn.min(sojourn);
        // A clock that stepped back would hold the interval open until it caught up.
        self.interval_end = self.interval_end.min(now.saturating_add(interval));
        if now >= self.interval_end {
            self.overloaded = self.min_sojourn > target;
            self.min_sojourn = u64::MAX;
            self.interval_end = now.saturating_add(interval);
        }
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> QueuePolicy {
        QueuePolicy {
            capacity: 8,
            max_wait: Duration::from_millis(900),
            codel_target: Duration::from_millis(5),
            codel_interval: Duration::from_millis(100),
        }
    }

    /// A reading taken a moment before another thread emptied the queue is no clock stepping
    /// back: what CoDel learned stays. A clock further back than an interval did step back.
    #[test]
    fn a_quiet_spell_is_the_time_the_queue_stood_empty() {
        const MS: u64 = 1_000_000;
        let p = policy();
        let mut c = Codel {
            overloaded: true,
            ..Codel::default()
        };
        c.emptied(Some(1_000 * MS));
        assert!(
            c.standing(1_000 * MS - 1_000, true, &p),
            "a reading 1 µs older"
        );
        assert!(c.standing(1_100 * MS, true, &p), "empty for an interval");
        assert!(!c.standing(1_100 * MS + 1, true, &p), "empty for longer");
        assert!(
            c.standing(5_000 * MS, false, &p),
            "never stale while anyone waits"
        );
        assert!(!c.standing(800 * MS, true, &p), "a clock 200 ms back");
        // Emptied at a time not known (no clock could be read): counted from the next reading.
        c.emptied(None);
        assert!(c.standing(7_000 * MS, true, &p));
        assert!(c.standing(7_100 * MS, true, &p));
        assert!(!c.standing(7_100 * MS + 1, true, &p));
    }
}

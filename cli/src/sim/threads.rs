//! A tier's fixed pool of worker threads, and what each one is waiting on.
//!
//! Both incidents ended the same way: every thread of the API tier was busy, most of them waiting on
//! something that would never answer in time. The pool records, for each busy thread, from when it
//! counts as *stuck*: blocked on something that will not answer within its caller's timeout (a query
//! whose caller has already given up, a `connect()` to a broker that is gone). Counting is done by a
//! scan at sample times, so a request never has to schedule an event just to become stuck.

/// A thread's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadId(usize);

/// The pool.
pub struct Pool {
    /// For each busy thread, when it becomes stuck (`u64::MAX`: not while it waits on this).
    stuck_from: Vec<Option<u64>>,
    free: Vec<usize>,
    busy: u64,
    max_busy: u64,
}

impl Pool {
    /// `threads` threads, all idle.
    pub fn new(threads: u64) -> Pool {
        let n = usize::try_from(threads).unwrap_or(usize::MAX).min(1 << 24);
        Pool {
            stuck_from: vec![None; n],
            free: (0..n).rev().collect(),
            busy: 0,
            max_busy: 0,
        }
    }

    /// Takes an idle thread, if any.
    pub fn acquire(&mut self, stuck_from: u64) -> Option<ThreadId> {
        let i = self.free.pop()?;
        self.stuck_from[i] = Some(stuck_from);
        self.busy += 1;
        self.max_busy = self.max_busy.max(self.busy);
        Some(ThreadId(i))
    }

    /// Gives a thread back.
    pub fn release(&mut self, id: ThreadId) {
        if let Some(slot) = self.stuck_from.get_mut(id.0) {
            if slot.take().is_some() {
                self.free.push(id.0);
                self.busy -= 1;
            }
        }
    }

    /// Says from when a busy thread counts as stuck (`u64::MAX`: it is not).
    pub fn set_stuck_from(&mut self, id: ThreadId, at: u64) {
        if let Some(Some(slot)) = self.stuck_from.get_mut(id.0) {
            *slot = at;
        }
    }

    /// Busy threads now.
    pub fn busy(&self) -> u64 {
        self.busy
    }

    /// The most threads ever busy at once.
    pub fn max_busy(&self) -> u64 {
        self.max_busy
    }

    /// Threads in the pool.
    pub fn size(&self) -> u64 {
        self.stuck_from.len() as u64
    }

    /// Whether every thread is busy.
    pub fn exhausted(&self) -> bool {
        self.free.is_empty()
    }

    /// Busy threads that are stuck at `now`.
    pub fn stuck(&self, now: u64) -> u64 {
        self.stuck_from
            .iter()
            .filter(|s| matches!(s, Some(t) if *t <= now))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_busy_and_stuck() {
        let mut p = Pool::new(2);
        let a = p.acquire(10).unwrap();
        let b = p.acquire(u64::MAX).unwrap();
        assert!(p.acquire(0).is_none());
        assert!(p.exhausted());
        assert_eq!((p.stuck(9), p.stuck(10)), (0, 1));
        p.set_stuck_from(b, 5);
        assert_eq!(p.stuck(10), 2);
        p.release(a);
        p.release(a);
        assert_eq!((p.busy(), p.max_busy(), p.stuck(10)), (1, 2, 1));
    }
}

//! A database with finite capacity: `slots` queries execute at once, the rest wait.
//!
//! In 2015 the API tier's threads each ran their file-metadata queries one after another, and the
//! database shared itself among all of them: the more threads waited on it, the slower each one's
//! queries went, until threads that would never be answered in time held the whole pool. Simulating
//! tens of millions of queries one by one would be slow, so each caller's run of sequential queries is
//! one *job* and the database is a processor-sharing server: with `n` jobs active, each progresses at
//! `min(1, slots / n)` of full speed. That is exact for the total work done and the order jobs finish
//! in, and it gives the queue length directly: every active job has one query outstanding, so
//! `max(0, n - slots)` queries are waiting.
//!
//! Progress is tracked as *virtual time* (work done by each active job, in ns of query time) so that an
//! arrival or departure costs O(log n), not O(n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A job's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobId(usize);

struct Job {
    /// Who to tell when it completes (a request key, packed by the caller).
    owner: u64,
    start_v: u128,
    finish_v: u128,
    per_query: u64,
    queries: u64,
    alive: bool,
}

/// The database.
pub struct Database {
    slots: u64,
    /// Work done by every job active since the start, ns.
    v: u128,
    last: u64,
    active: u64,
    jobs: Vec<Job>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(u128, usize)>>,
    served: u64,
    peak_queue: u64,
}

impl Database {
    /// A database running `slots` queries at once.
    pub fn new(slots: u64) -> Database {
        Database {
            slots: slots.max(1),
            v: 0,
            last: 0,
            active: 0,
            jobs: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            served: 0,
            peak_queue: 0,
        }
    }

    fn advance(&mut self, now: u64) {
        let dt = u128::from(now.saturating_sub(self.last));
        self.last = self.last.max(now);
        if self.active == 0 {
            return;
        }
        let dv = if self.active <= self.slots {
            dt
        } else {
            dt * u128::from(self.slots) / u128::from(self.active)
        };
        self.v = self.v.saturating_add(dv);
    }

    /// Starts `queries` sequential queries of `per_query` ns each for `owner`.
    pub fn submit(&mut self, now: u64, owner: u64, queries: u64, per_query: u64) -> JobId {
        self.advance(now);
        let work = u128::from(queries) * u128::from(per_query.max(1));
        let job = Job {
            owner,
            start_v: self.v,
            finish_v: self.v.saturating_add(work),
            per_query: per_query.max(1),
            queries,
            alive: true,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.jobs[i] = job;
                i
            }
            None => {
                self.jobs.push(job);
                self.jobs.len() - 1
            }
        };
        self.heap.push(Reverse((self.jobs[id].finish_v, id)));
        self.active += 1;
        self.peak_queue = self.peak_queue.max(self.queue());
        JobId(id)
    }

    /// Abandons a job (its caller gave up and stopped issuing queries). Returns the queries it had
    /// started, which count as served.
    pub fn cancel(&mut self, now: u64, id: JobId) -> u64 {
        self.advance(now);
        let Some(job) = self.jobs.get_mut(id.0).filter(|j| j.alive) else {
            return 0;
        };
        job.alive = false;
        let done = (self.v.saturating_sub(job.start_v) / u128::from(job.per_query)) as u64;
        // The query in progress was accepted into the queue: it counts.
        let started = done.saturating_add(1).min(job.queries);
        self.served = self.served.saturating_add(started);
        self.active -= 1;
        self.free.push(id.0);
        started
    }

    /// The jobs finished by `now`, as their owners, in finishing order.
    pub fn complete(&mut self, now: u64, done: &mut Vec<u64>) {
        self.advance(now);
        while let Some(Reverse((finish, id))) = self.heap.peek().copied() {
            let job = &self.jobs[id];
            if !job.alive || job.finish_v != finish {
                // Cancelled (and maybe reused): a stale entry.
                self.heap.pop();
                continue;
            }
            if finish > self.v {
                break;
            }
            self.heap.pop();
            let job = &mut self.jobs[id];
            job.alive = false;
            self.served = self.served.saturating_add(job.queries);
            done.push(job.owner);
            self.active -= 1;
            self.free.push(id);
        }
    }

    /// When the next job finishes, if any is active.
    pub fn next_completion(&mut self) -> Option<u64> {
        while let Some(Reverse((finish, id))) = self.heap.peek().copied() {
            let job = &self.jobs[id];
            if job.alive && job.finish_v == finish {
                let need = finish.saturating_sub(self.v);
                let dt = if self.active <= self.slots {
                    need
                } else {
                    // Rounded up, so that at that time the job has surely finished.
                    (need * u128::from(self.active)).div_ceil(u128::from(self.slots))
                };
                return Some(u64::try_from(u128::from(self.last) + dt).unwrap_or(u64::MAX));
            }
            self.heap.pop();
        }
        None
    }

    /// Queries waiting for a slot now.
    pub fn queue(&self) -> u64 {
        self.active.saturating_sub(self.slots)
    }

    /// Jobs active now.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// Queries served (or accepted into the queue) so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// The longest the queue has been.
    pub fn peak_queue(&self) -> u64 {
        self.peak_queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_capacity_and_counts_queries() {
        let mut db = Database::new(1);
        db.submit(0, 1, 10, 10); // 100 ns of work
        db.submit(0, 2, 5, 10); // 50 ns of work
        assert_eq!(db.queue(), 1);
        // Two jobs share one slot: the short one finishes at 100 ns.
        assert_eq!(db.next_completion(), Some(100));
        let mut done = Vec::new();
        db.complete(100, &mut done);
        assert_eq!(done, vec![2]);
        // The long one has 50 ns left, alone now.
        assert_eq!(db.next_completion(), Some(150));
        db.complete(150, &mut done);
        assert_eq!(done, vec![2, 1]);
        assert_eq!(db.served(), 15);
        assert_eq!(db.next_completion(), None);
    }

    #[test]
    fn cancelled_jobs_stop_and_count_what_they_started() {
        let mut db = Database::new(2);
        let a = db.submit(0, 1, 10, 10);
        assert_eq!(db.cancel(35, a), 4);
        assert_eq!(db.cancel(40, a), 0);
        assert_eq!(db.next_completion(), None);
        let mut done = Vec::new();
        db.complete(1000, &mut done);
        assert!(done.is_empty());
    }
}

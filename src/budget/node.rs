//! The shared state of one budget, and the lock-free charge algorithm.
//!
//! Every dimension is one `AtomicU64` holding the amount in use. A charge is a CAS loop around a pure
//! check ("does `used + n` fit under the limit?"), so a charge that would overrun is refused and writes
//! nothing. A budget with ancestors charges the chain **root first** and refunds **leaf first**; at every
//! instant an ancestor's `used` is therefore at least any descendant's, and a failed step rolls back the
//! steps above it in reverse. Another charge can briefly see the amount of a charge that is being rolled
//! back and be refused because of it: a spurious refusal under a race, never an overrun.

use super::report::LimitReport;
use super::state::{CANCELLED, DEADLINE, EXHAUSTED, INHERITED};
use crate::clock::{Clock, CpuClock, Timestamp};
use crate::engine::snapshot::{ClassRules, Snapshot};
use crate::handle::{Class, Counter};
use crate::policy::MAX_DIMENSIONS;
use crate::sync::{Arc, AtomicU32, AtomicU64, Mutex, Ordering, Weak};
use crate::{Priority, RequestId};
use crossbeam_utils::CachePadded;

/// How many finished children a budget keeps in its report; beyond that they are only counted.
pub(crate) const MAX_CHILD_REPORTS: usize = 64;

/// No dimension has been exhausted yet.
const NONE_EXHAUSTED: u32 = u32::MAX;

/// Children of a budget: live ones for cancellation, finished ones for the report.
#[derive(Debug, Default)]
pub(crate) struct Family {
    pub(crate) live: Vec<Weak<Node>>,
    pub(crate) finished: Vec<LimitReport>,
    pub(crate) omitted: u64,
}

/// Where and why a chain charge was refused.
pub(crate) struct Refused<'a> {
    pub(crate) node: &'a Node,
    pub(crate) dim: usize,
    pub(crate) requested: u64,
    pub(crate) used: u64,
}

#[derive(Debug)]
pub(crate) struct Node {
    /// Cancellation bits (see `state`). Read with one relaxed load in hot loops.
    pub(crate) state: CachePadded<AtomicU32>,
    /// Amount in use per dimension.
    pub(crate) used: CachePadded<[AtomicU64; MAX_DIMENSIONS]>,
    /// Highest value each level dimension reached.
    pub(crate) peak: [AtomicU64; MAX_DIMENSIONS],
    /// The first dimension whose refusal exhausted this budget.
    pub(crate) first_exhausted: AtomicU32,
    /// Effective limits: the class's, tightened by overrides. `u64::MAX` is unlimited.
    pub(crate) limits: [u64; MAX_DIMENSIONS],
    /// Bit `i`: dimension `i` is a level.
    pub(crate) levels: u32,
    pub(crate) start: Timestamp,
    pub(crate) deadline: Timestamp,
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) depth: u8,
    pub(crate) request_id: RequestId,
    pub(crate) priority: Priority,
    pub(crate) class: Class,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cpu_clock: Arc<dyn CpuClock>,
    pub(crate) family: Mutex<Family>,
}

/// Everything a new node needs.
pub(crate) struct NodeInit {
    pub(crate) limits: [u64; MAX_DIMENSIONS],
    pub(crate) start: Timestamp,
    pub(crate) deadline: Timestamp,
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) request_id: RequestId,
    pub(crate) priority: Priority,
    pub(crate) class: Class,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cpu_clock: Arc<dyn CpuClock>,
}

impl Node {
    pub(crate) fn new(init: NodeInit) -> Arc<Node> {
        let depth = init
            .parent
            .as_ref()
            .map_or(0, |p| p.depth.saturating_add(1));
        let node = Arc::new(Node {
            state: CachePadded::new(AtomicU32::new(0)),
            used: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
            peak: std::array::from_fn(|_| AtomicU64::new(0)),
            first_exhausted: AtomicU32::new(NONE_EXHAUSTED),
            limits: init.limits,
            levels: init.snapshot.dims.levels,
            start: init.start,
            deadline: init.deadline,
            parent: init.parent,
            depth,
            request_id: init.request_id,
            priority: init.priority,
            class: init.class,
            snapshot: init.snapshot,
            clock: init.clock,
            cpu_clock: init.cpu_clock,
            family: Mutex::new(Family::default()),
        });
        if let Some(parent) = &node.parent {
            {
                let mut family = parent.family.lock();
                family.live.retain(|w| w.strong_count() > 0);
                family.live.push(Arc::downgrade(&node));
            }
            // Registered first, checked second: a parent cancelled before the registration is seen
            // here; one cancelled after it walks its list and finds this node.
            if parent.state.load(Ordering::Acquire) != 0 {
                node.set_bits(INHERITED);
            }
        }
        node
    }

    pub(crate) fn rules(&self) -> Option<&ClassRules> {
        self.snapshot.class(self.class)
    }

    /// Adds `n` to dimension `dim` of this node alone if the result stays within its limit.
    /// Returns the new amount, or the amount in use when refused.
    #[inline]
    pub(crate) fn try_add(&self, dim: usize, n: u64) -> Result<u64, u64> {
        let limit = self.limits[dim];
        let cell = &self.used[dim];
        let mut used = cell.load(Ordering::Relaxed);
        loop {
            let new = match used.checked_add(n) {
                Some(new) if new <= limit => new,
                _ => return Err(used),
            };
            match cell.compare_exchange_weak(used, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if self.levels & (1 << dim) != 0 {
                        self.peak[dim].fetch_max(new, Ordering::Relaxed);
                    }
                    return Ok(new);
                }
                Err(actual) => used = actual,
            }
        }
    }

    /// Subtracts up to `n` from dimension `dim` of this node alone, never below zero; returns what was
    /// subtracted.
    #[inline]
    pub(crate) fn sub_saturating(&self, dim: usize, n: u64) -> u64 {
        let cell = &self.used[dim];
        let mut used = cell.load(Ordering::Relaxed);
        loop {
            let take = used.min(n);
            if take == 0 {
                return 0;
            }
            match cell.compare_exchange_weak(
                used,
                used - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(actual) => used = actual,
            }
        }
    }

    /// Charges `n` to `dim` on this node and every ancestor, all or nothing.
    #[inline]
    pub(crate) fn charge_chain(&self, dim: usize, n: u64) -> Result<(), Refused<'_>> {
        if let Some(parent) = &self.parent {
            parent.charge_chain(dim, n)?;
        }
        match self.try_add(dim, n) {
            Ok(_) => Ok(()),
            Err(used) => {
                if let Some(parent) = &self.parent {
                    parent.release_chain(dim, n);
                }
                Err(Refused {
                    node: self,
                    dim,
                    requested: n,
                    used,
                })
            }
        }
    }

    /// Gives back `n` of `dim` on this node and then on every ancestor (leaf first).
    #[inline]
    pub(crate) fn release_chain(&self, dim: usize, n: u64) {
        self.sub_saturating(dim, n);
        if let Some(parent) = &self.parent {
            parent.release_chain(dim, n);
        }
    }

    /// Refunds up to `n` of `dim`: the amount is capped by this node's own use, so a refund can never
    /// give back more than was charged through this budget. Returns the amount refunded.
    pub(crate) fn refund_chain(&self, dim: usize, n: u64) -> u64 {
        let taken = self.sub_saturating(dim, n);
        if taken > 0 {
            if let Some(parent) = &self.parent {
                parent.release_chain(dim, taken);
            }
        }
        taken
    }

    /// Charges every `(dim, n)` of `items` on this node and every ancestor, all or nothing.
    pub(crate) fn charge_many_chain(&self, items: &[(Counter, u64)]) -> Result<(), Refused<'_>> {
        if let Some(parent) = &self.parent {
            parent.charge_many_chain(items)?;
        }
        for (i, &(counter, n)) in items.iter().enumerate() {
            let dim = counter.index();
            if let Err(used) = self.try_add(dim, n) {
                for &(done, done_n) in items[..i].iter().rev() {
                    self.sub_saturating(done.index(), done_n);
                }
                if let Some(parent) = &self.parent {
                    parent.release_many_chain(items);
                }
                return Err(Refused {
                    node: self,
                    dim,
                    requested: n,
                    used,
                });
            }
        }
        Ok(())
    }

    fn release_many_chain(&self, items: &[(Counter, u64)]) {
        for &(counter, n) in items.iter().rev() {
            self.sub_saturating(counter.index(), n);
        }
        if let Some(parent) = &self.parent {
            parent.release_many_chain(items);
        }
    }

    /// The least any node of the chain has left of `dim`.
    pub(crate) fn chain_remaining(&self, dim: usize) -> u64 {
        let own = self.limits[dim].saturating_sub(self.used[dim].load(Ordering::Relaxed));
        match &self.parent {
            Some(parent) => own.min(parent.chain_remaining(dim)),
            None => own,
        }
    }

    /// Whether any node of the chain limits `dim`.
    pub(crate) fn chain_limits(&self, dim: usize) -> bool {
        self.limits[dim] != u64::MAX || self.parent.as_ref().is_some_and(|p| p.chain_limits(dim))
    }

    /// Records that a counter charge on `dim` was refused for lack of allowance.
    #[cold]
    pub(crate) fn mark_exhausted(&self, dim: usize) {
        let _ = self.first_exhausted.compare_exchange(
            NONE_EXHAUSTED,
            dim as u32,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.set_bits(EXHAUSTED);
    }

    pub(crate) fn exhausted_dim(&self) -> Option<usize> {
        let d = self.first_exhausted.load(Ordering::Relaxed);
        (d != NONE_EXHAUSTED).then_some(d as usize)
    }

    /// Sets cancellation bits; the first time any bit is set, every live descendant inherits it.
    #[cold]
    pub(crate) fn set_bits(&self, bits: u32) {
        let before = self.state.fetch_or(bits, Ordering::AcqRel);
        if before == 0 {
            let children: Vec<Arc<Node>> = self
                .family
                .lock()
                .live
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for child in children {
                child.set_bits(INHERITED);
            }
        }
    }

    /// Whether the deadline has passed, by the coarse clock; records it if so.
    #[inline]
    pub(crate) fn deadline_passed(&self) -> bool {
        if self.state.load(Ordering::Relaxed) & DEADLINE != 0 {
            return true;
        }
        // `NEVER` is "no deadline": even a clock saturated at the end of time has not reached it.
        if self.clock.coarse() >= self.deadline && !self.deadline.is_never() {
            self.set_bits(DEADLINE);
            return true;
        }
        false
    }

    pub(crate) fn cancel(&self) {
        self.set_bits(CANCELLED);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(parent) = self.parent.as_ref() else {
            return;
        };
        let me: *const Node = self;
        let room = {
            let mut family = parent.family.lock();
            family
                .live
                .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me));
            family.finished.len() < MAX_CHILD_REPORTS
        };
        // Build the report outside the parent's lock, and only when there is room to keep it: a parent
        // with thousands of finished children pays for 64 reports, not thousands.
        let report = room.then(|| super::report::build(self));
        let mut family = parent.family.lock();
        match report {
            Some(report) if family.finished.len() < MAX_CHILD_REPORTS => {
                family.finished.push(report);
            }
            _ => family.omitted = family.omitted.saturating_add(1),
        }
    }
}

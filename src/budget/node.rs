//! The shared state of one budget, and the lock-free charge algorithm.
//!
//! Every dimension is one `AtomicU64` holding the amount in use. A charge is a CAS loop around a pure
//! check ("does `used + n` fit under the limit?"), so a charge that would overrun is refused and writes
//! nothing. A budget with ancestors charges the chain **root first** and refunds **leaf first**; at every
//! instant an ancestor's `used` is therefore at least any descendant's, and a failed step rolls back the
//! steps above it in reverse. Another charge can briefly see the amount of a charge that is being rolled
//! back and be refused because of it: a spurious refusal under a race, never an overrun. A spurious
//! refusal of a counter exhausts the budget like any other (its cancellation flag flips); it needs a
//! tree within one in-flight charge of its limit.

use super::report::LimitReport;
use super::state::{CANCELLED, DEADLINE, EXHAUSTED, INHERITED, WALKED};
use crate::clock::Timestamp;
use crate::engine::snapshot::{ClassRules, Snapshot};
use crate::handle::{Class, Counter};
use crate::policy::MAX_DIMENSIONS;
use crate::sync::{Arc, AtomicU32, AtomicU64, Mutex, Ordering, Weak};
use crate::{Priority, RequestId};

/// How many finished children a budget keeps in its report; beyond that they are only counted.
pub(crate) const MAX_CHILD_REPORTS: usize = 64;

/// No dimension has been exhausted yet.
const NONE_EXHAUSTED: u32 = u32::MAX;

/// The limits of a budget without overrides: none tighter than its class's.
const NO_LIMITS: [u64; MAX_DIMENSIONS] = [u64::MAX; MAX_DIMENSIONS];

/// Reports of children that finished, for the parent's report.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub(crate) reports: Vec<LimitReport>,
    pub(crate) omitted: u64,
}

/// Where and why a chain charge was refused.
pub(crate) struct Refused<'a> {
    pub(crate) node: &'a Node,
    pub(crate) dim: usize,
    pub(crate) requested: u64,
    pub(crate) used: u64,
}

/// Field order is fixed (`repr(C)`) to keep independently written words apart without aligning the
/// node: the cancellation word, read in hot loops, and the counters, written by every charge, are
/// separated by the read-only limits (256 bytes), so they never share a cache line. Aligning them with
/// `CachePadded` instead made the node 1,280 bytes aligned to 128, which glibc serves only through
/// `posix_memalign` on its slow path; at under a kilobyte, aligned to 8, it comes from the thread cache.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Node {
    /// Cancellation bits (see `state`). Read with one relaxed load in hot loops.
    pub(crate) state: AtomicU32,
    /// The first dimension whose refusal exhausted this budget.
    pub(crate) first_exhausted: AtomicU32,
    /// How many dimensions the node's policy has: only `limits[..dims]`, `used[..dims]` and
    /// `peak[..dims]` are meaningful (see [`cell`](Self::cell)).
    dims: usize,
    /// Bit `i` set when dimension `i` is a level (the policy's, copied here so that charges through
    /// children need not reach into the snapshot).
    levels: u32,
    /// Effective limits: the class's, tightened by overrides. `u64::MAX` is unlimited.
    pub(crate) limits: [u64; MAX_DIMENSIONS],
    /// The class whose limits `limits` holds untightened, under `snapshot`: a node reused for the
    /// same class without overrides keeps them instead of copying them again.
    plain_limits: Option<Class>,
    /// Amount in use per dimension.
    pub(crate) used: [AtomicU64; MAX_DIMENSIONS],
    /// Per dimension, one of two things (a dimension is either kind for the budget's life):
    /// - for a level, the highest value it reached;
    /// - for a counter, the part of `used` that is not this budget's own to refund: what was charged
    ///   through descendants, and the estimates of its reservations not yet settled. A refund may
    ///   only give back the rest, what was charged through this budget itself.
    ///
    /// (One array for both keeps the node within the allocator's per-thread cache.)
    pub(crate) peak: [AtomicU64; MAX_DIMENSIONS],
    pub(crate) start: Timestamp,
    pub(crate) deadline: Timestamp,
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) depth: u8,
    pub(crate) request_id: RequestId,
    pub(crate) priority: Priority,
    pub(crate) class: Class,
    pub(crate) snapshot: Arc<Snapshot>,
    /// Live children, for cancellation. Held while cancellation walks them; a child that finishes
    /// meanwhile only tries this lock, so the walk never waits on itself.
    pub(crate) live: Mutex<Vec<Weak<Node>>>,
    /// Finished children's reports. Never held while another lock is taken.
    pub(crate) finished: Mutex<Finished>,
    /// How many times part of `used` that was not this budget's own was given back with its note
    /// (a descendant's refund or rollback, a reservation released). A refund reads it around its
    /// reads of `used` and the note, and reads again when it moved (see
    /// [`refund_chain`](Self::refund_chain)).
    released: AtomicU64,
    /// Held by a refund: this budget's own refunds go one at a time.
    refunding: Mutex<()>,
}

/// What a node is set to: its class, its times, its priority, its id and its limits' overrides.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'a> {
    /// Limits that tighten the class's, if any (read in place, with the class's: the node is built
    /// once, without intermediate copies of the arrays).
    pub(crate) overrides: Option<&'a [u64; MAX_DIMENSIONS]>,
    pub(crate) start: Timestamp,
    pub(crate) deadline: Timestamp,
    /// Copied once, into the node.
    pub(crate) request_id: &'a RequestId,
    pub(crate) priority: Priority,
    pub(crate) class: Class,
}

/// Everything a new node needs.
pub(crate) struct NodeInit<'a> {
    pub(crate) settings: Settings<'a>,
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) snapshot: &'a Arc<Snapshot>,
}

impl Node {
    pub(crate) fn new(init: NodeInit<'_>) -> Arc<Node> {
        let depth = init
            .parent
            .as_ref()
            .map_or(0, |p| p.depth.saturating_add(1));
        let s = init.settings;
        let node = Arc::new(Node {
            state: AtomicU32::new(0),
            first_exhausted: AtomicU32::new(NONE_EXHAUSTED),
            dims: policy_dims(init.snapshot),
            levels: init.snapshot.dims.levels,
            limits: {
                let class = init.snapshot.class(s.class).map(|r| &r.limits);
                let tighter = s.overrides.unwrap_or(&NO_LIMITS);
                std::array::from_fn(|i| class.map_or(u64::MAX, |c| c[i]).min(tighter[i]))
            },
            plain_limits: s.overrides.is_none().then_some(s.class),
            used: std::array::from_fn(|_| AtomicU64::new(0)),
            peak: std::array::from_fn(|_| AtomicU64::new(0)),
            start: s.start,
            deadline: s.deadline,
            parent: init.parent,
            depth,
            request_id: *s.request_id,
            priority: s.priority,
            class: s.class,
            snapshot: Arc::clone(init.snapshot),
            live: Mutex::new(Vec::new()),
            finished: Mutex::new(Finished::default()),
            released: AtomicU64::new(0),
            refunding: Mutex::new(()),
        });
        if let Some(parent) = &node.parent {
            {
                let mut live = parent.live.lock();
                live.retain(|w| w.strong_count() > 0);
                live.push(Arc::downgrade(&node));
            }
            // Registered first, checked second: a parent cancelled before the registration is seen
            // here; one cancelled after it walks its list and finds this node.
            if parent.state.load(Ordering::Acquire) != 0 {
                node.set_bits(INHERITED);
            }
        }
        node
    }

    /// Makes a finished root node (from the [pool](super::pool)) new again for `init`, in place:
    /// the same state [`new`](Self::new) would build, without building and copying a fresh one.
    /// The snapshot is replaced only when it changed, which saves two reference-count updates.
    #[cfg(not(costguard_loom))]
    #[inline]
    pub(crate) fn reinit(&mut self, init: NodeInit<'_>) {
        debug_assert!(init.parent.is_none());
        if !Arc::ptr_eq(&self.snapshot, init.snapshot) {
            self.snapshot = Arc::clone(init.snapshot);
            self.plain_limits = None;
        }
        self.reset(init.settings);
    }

    /// Makes a finished root node new again in place under the snapshot it already holds.
    ///
    /// Only the policy's dimensions are reset (a policy with three counters resets three of each
    /// array, not all [`MAX_DIMENSIONS`]); the rest stay unread behind `dims`.
    #[cfg(not(costguard_loom))]
    #[inline]
    pub(crate) fn reset(&mut self, s: Settings<'_>) {
        debug_assert!(self.parent.is_none());
        let dims = policy_dims(&self.snapshot);
        *self.state.get_mut() = 0;
        *self.first_exhausted.get_mut() = NONE_EXHAUSTED;
        self.dims = dims;
        self.levels = self.snapshot.dims.levels;
        // A thread usually starts budget after budget of one class without overrides: the limits
        // are then already in place.
        let plain = s.overrides.is_none().then_some(s.class);
        if plain.is_none() || plain != self.plain_limits {
            let class = self.snapshot.class(s.class).map(|r| &r.limits);
            let tighter = s.overrides.unwrap_or(&NO_LIMITS);
            for (i, limit) in self.limits[..dims].iter_mut().enumerate() {
                *limit = class.map_or(u64::MAX, |c| c[i]).min(tighter[i]);
            }
            self.plain_limits = plain;
        }
        for (used, peak) in self.used[..dims].iter_mut().zip(&mut self.peak[..dims]) {
            *used.get_mut() = 0;
            *peak.get_mut() = 0;
        }
        self.start = s.start;
        self.deadline = s.deadline;
        self.depth = 0;
        self.request_id = *s.request_id;
        self.priority = s.priority;
        self.class = s.class;
        let live = self.live.get_mut();
        if !live.is_empty() {
            live.clear();
        }
        let finished = self.finished.get_mut();
        if !finished.reports.is_empty() {
            finished.reports.clear();
        }
        finished.omitted = 0;
        *self.released.get_mut() = 0;
    }

    /// The counter of `dim`, if this budget's policy has that dimension. A handle from a policy
    /// with more dimensions (a later reload, another engine) names one this budget never had: it is
    /// unlimited here and nothing is recorded for it.
    #[inline]
    fn cell(&self, dim: usize) -> Option<&AtomicU64> {
        if dim < self.dims {
            self.used.get(dim)
        } else {
            None
        }
    }

    /// The limit of `dim` (`u64::MAX` when unlimited or not a dimension of this budget's policy).
    #[inline]
    pub(crate) fn limit(&self, dim: usize) -> u64 {
        if dim < self.dims {
            self.limits.get(dim).copied().unwrap_or(u64::MAX)
        } else {
            u64::MAX
        }
    }

    /// The amount of `dim` in use (0 for a dimension this budget's policy does not have).
    #[inline]
    pub(crate) fn used(&self, dim: usize) -> u64 {
        self.cell(dim).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The highest value level `dim` reached.
    pub(crate) fn peak(&self, dim: usize) -> u64 {
        if dim < self.dims {
            self.peak.get(dim).map_or(0, |c| c.load(Ordering::Relaxed))
        } else {
            0
        }
    }

    pub(crate) fn rules(&self) -> Option<&ClassRules> {
        self.snapshot.class(self.class)
    }

    /// Adds `n` to dimension `dim` of this node alone if the result stays within its limit.
    /// Returns the new amount, or the amount in use when refused.
    #[inline]
    pub(crate) fn try_add(&self, dim: usize, n: u64) -> Result<u64, u64> {
        let (Some(cell), Some(&limit)) = (self.cell(dim), self.limits.get(dim)) else {
            return Ok(n);
        };
        let mut used = cell.load(Ordering::Relaxed);
        loop {
            // `u64::MAX` is never a total, limit or none: an amount that reaches it is an unchecked
            // value (a length read off the wire), which can never fit.
            let new = match used.checked_add(n) {
                Some(new) if new <= limit && new != u64::MAX => new,
                _ => return Err(used),
            };
            // Release: a descendant's charge is noted first (in `peak`), and a refund that
            // sees this amount must also see that note (free on x86, where every CAS is a barrier).
            match cell.compare_exchange_weak(used, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(new),
                Err(actual) => used = actual,
            }
        }
    }

    /// Subtracts up to `n` from dimension `dim` of this node alone, never below zero; returns what was
    /// subtracted.
    #[inline]
    pub(crate) fn sub_saturating(&self, dim: usize, n: u64) -> u64 {
        let Some(cell) = self.cell(dim) else {
            return 0;
        };
        let mut used = cell.load(Ordering::Relaxed);
        loop {
            let take = used.min(n);
            if take == 0 {
                return 0;
            }
            match cell.compare_exchange_weak(used, used - take, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return take,
                Err(actual) => used = actual,
            }
        }
    }

    /// The record of what is not this budget's own to refund, for a counter of its policy (a
    /// level is only ever given back by its guards, and keeps its peak in the same place).
    #[inline]
    fn not_own(&self, dim: usize) -> Option<&AtomicU64> {
        let level = self.levels & 1u32.checked_shl(dim as u32).unwrap_or(0) != 0;
        if dim < self.dims && !level {
            self.peak.get(dim)
        } else {
            None
        }
    }

    /// Notes that `n` of `dim` is being charged through a descendant or a reservation (before the
    /// charge itself, so that a concurrent refund never mistakes it for this budget's own). `false`
    /// if the note would overflow, in which case the charge cannot fit either and nothing is noted:
    /// the note must be exactly reversible.
    fn add_from_child(&self, dim: usize, n: u64) -> bool {
        match self.not_own(dim) {
            Some(cell) => cell
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n))
                .is_ok(),
            None => true,
        }
    }

    fn sub_from_child(&self, dim: usize, n: u64) {
        if let Some(cell) = self.not_own(dim) {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    /// Drops the note of `n` of `dim` that was just given back from `used` (a release, not a
    /// conversion into this budget's own), counted in `released` in between: a refund that read
    /// `used` before the release and the note after it sees the count move (see
    /// [`refund_chain`](Self::refund_chain)).
    fn sub_released(&self, dim: usize, n: u64) {
        if self.not_own(dim).is_some() {
            self.released.fetch_add(1, Ordering::AcqRel);
            self.sub_from_child(dim, n);
        }
    }

    /// Charges a reservation's estimate: on this node and every ancestor, all or nothing, noted on
    /// this node as not its own, so that a refund cannot give it back; only the reservation can.
    pub(crate) fn reserve_chain(&self, dim: usize, n: u64) -> Result<(), Refused<'_>> {
        self.charge_chain_via(dim, n, true, &mut |_| {})
    }

    /// Gives back `n` of a reservation's estimate, exactly: the reverse of
    /// [`reserve_chain`](Self::reserve_chain).
    pub(crate) fn release_reserved(&self, dim: usize, n: u64) {
        self.release_chain_via(dim, n, true);
    }

    /// Makes `n` of a reservation's estimate this budget's own charge (the reservation is settled:
    /// the work used it).
    pub(crate) fn own_reserved(&self, dim: usize, n: u64) {
        self.sub_from_child(dim, n);
    }

    /// Charges `n` to `dim` on this node and every ancestor, all or nothing.
    #[inline]
    pub(crate) fn charge_chain(&self, dim: usize, n: u64) -> Result<(), Refused<'_>> {
        self.charge_chain_via(dim, n, false, &mut |_| {})
    }

    /// Enters `n` of the level `dim` on this node and every ancestor, all or nothing, and raises
    /// each one's peak to the value its own entry took it to. Not to a value read afterwards: a
    /// guard left meanwhile may have lowered it. Peaks move only once the whole chain accepted, so
    /// a refused entry never raises one.
    pub(crate) fn raise_chain(&self, dim: usize, n: u64) -> Result<(), Refused<'_>> {
        // The value each entry reached, root first (the chain charges from the root down).
        let mut reached = [0u64; crate::budget::MAX_BUDGET_DEPTH];
        let mut depth = 0;
        self.charge_chain_via(dim, n, false, &mut |value| {
            if let Some(slot) = reached.get_mut(depth) {
                *slot = value;
            }
            depth += 1;
        })?;
        let mut node = Some(self);
        for &value in reached[..depth.min(reached.len())].iter().rev() {
            let Some(at) = node else { break };
            if let (Some(_), Some(peak)) = (at.cell(dim), at.peak.get(dim)) {
                if value > peak.load(Ordering::Relaxed) {
                    peak.fetch_max(value, Ordering::Relaxed);
                }
            }
            node = at.parent.as_deref();
        }
        Ok(())
    }

    /// Charges this node's ancestors, then this node; `added` sees the total each charge reached,
    /// root first.
    #[inline]
    fn charge_chain_via(
        &self,
        dim: usize,
        n: u64,
        via_child: bool,
        added: &mut impl FnMut(u64),
    ) -> Result<(), Refused<'_>> {
        if let Some(parent) = &self.parent {
            parent.charge_chain_via(dim, n, true, added)?;
        }
        let noted = !via_child || self.add_from_child(dim, n);
        let result = if noted {
            self.try_add(dim, n)
        } else {
            Err(self.used(dim))
        };
        match result {
            Ok(total) => {
                added(total);
                Ok(())
            }
            Err(used) => {
                if via_child && noted {
                    self.sub_from_child(dim, n);
                }
                if let Some(parent) = &self.parent {
                    parent.release_chain_via(dim, n, true);
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
        self.release_chain_via(dim, n, false);
    }

    fn release_chain_via(&self, dim: usize, n: u64, via_child: bool) {
        self.sub_saturating(dim, n);
        if via_child {
            self.sub_released(dim, n);
        }
        if let Some(parent) = &self.parent {
            parent.release_chain_via(dim, n, true);
        }
    }

    /// Refunds up to `n` of `dim`, capped by what was charged through this budget itself (not through
    /// its children), so a refund can never give back what another budget charged. Returns the amount
    /// refunded. Racing with a descendant's charge still in flight, it may give back less than it
    /// could, never more.
    ///
    /// This budget's own share is `used` less the note of what is not its own, read one after the
    /// other, so the two reads must agree:
    /// - the note is read after `used`: a descendant's charge is noted before it reaches `used`, so
    ///   one in flight can only make the share look smaller;
    /// - a release in between (a descendant's refund: `used` first, then the note) would make it
    ///   look larger, with `used` read before and the note after: each counts itself in `released`
    ///   between its two steps, and the reads start over when that count moved;
    /// - once the reads agree, this budget's own share can only grow until the compare-exchange,
    ///   since only its own refunds take from it, and they go one at a time. The exchange checks
    ///   `used` alone: it may succeed on a `used` that others changed and changed back, with a
    ///   share no smaller than the one read.
    pub(crate) fn refund_chain(&self, dim: usize, n: u64) -> u64 {
        let Some(cell) = self.cell(dim) else {
            return 0;
        };
        let one_at_a_time = self.refunding.lock();
        let taken = loop {
            let released = self.released.load(Ordering::Acquire);
            let used = cell.load(Ordering::Acquire);
            let kids = self.not_own(dim).map_or(0, |c| c.load(Ordering::Acquire));
            if self.released.load(Ordering::Acquire) != released {
                continue;
            }
            let take = used.saturating_sub(kids).min(n);
            if take == 0 {
                return 0;
            }
            if cell
                .compare_exchange(used, used - take, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break take;
            }
        };
        drop(one_at_a_time);
        if let Some(parent) = &self.parent {
            parent.release_chain_via(dim, taken, true);
        }
        taken
    }

    /// Charges every `(dim, n)` of `items` on this node and every ancestor, all or nothing.
    ///
    /// Until the whole chain has accepted, the amounts that a later refusal could still take back
    /// are noted as not this budget's own: on the ancestors all of them, on this node every item
    /// but the last (whose charge is the final step). A refund racing the charge must not give back
    /// an amount that the rollback then takes away a second time: on an ancestor, that would free
    /// another budget's charges. Once everything fits, this node's notes are dropped and the
    /// amounts are its own. A single item has no such window and takes the single charge's path.
    pub(crate) fn charge_many_chain(&self, items: &[(Counter, u64)]) -> Result<(), Refused<'_>> {
        let [earlier @ .., _] = items else {
            return Ok(());
        };
        if earlier.is_empty() {
            return self.charge_chain(items[0].0.index(), items[0].1);
        }
        self.charge_many_noted(items, true)?;
        for &(counter, n) in earlier {
            self.sub_from_child(counter.index(), n);
        }
        Ok(())
    }

    /// Charges every item on this node and every ancestor, all or nothing, noting each item as not
    /// the node's own, except the last on the `leaf` (see
    /// [`charge_many_chain`](Self::charge_many_chain)).
    fn charge_many_noted(&self, items: &[(Counter, u64)], leaf: bool) -> Result<(), Refused<'_>> {
        if let Some(parent) = &self.parent {
            parent.charge_many_noted(items, false)?;
        }
        for (i, &(counter, n)) in items.iter().enumerate() {
            let dim = counter.index();
            let noted = !leaf || i + 1 < items.len();
            let added = if !noted || self.add_from_child(dim, n) {
                let added = self.try_add(dim, n);
                if added.is_err() && noted {
                    self.sub_from_child(dim, n);
                }
                added
            } else {
                Err(self.used(dim))
            };
            if let Err(used) = added {
                // Every earlier item was noted, on the leaf too.
                self.release_many_noted(&items[..i]);
                let mut up = self.parent.as_deref();
                while let Some(node) = up {
                    node.release_many_noted(items);
                    up = node.parent.as_deref();
                }
                // Judge a repeated counter by the call's total for it, against what was in use
                // before the call: the same verdict a single charge of the total would get.
                let same = |&&(c, _): &&(Counter, u64)| c.index() == dim;
                let earlier = items[..i]
                    .iter()
                    .filter(same)
                    .fold(0u64, |t, &(_, m)| t.saturating_add(m));
                let total = items
                    .iter()
                    .filter(same)
                    .fold(0u64, |t, &(_, m)| t.saturating_add(m));
                return Err(Refused {
                    node: self,
                    dim,
                    requested: total,
                    used: used.saturating_sub(earlier),
                });
            }
        }
        Ok(())
    }

    /// Gives back noted `items` on this node alone (last first), notes included.
    fn release_many_noted(&self, items: &[(Counter, u64)]) {
        for &(counter, n) in items.iter().rev() {
            self.sub_saturating(counter.index(), n);
            self.sub_released(counter.index(), n);
        }
    }

    /// The least any node of the chain has left of `dim`; `u64::MAX` when no node limits it, however
    /// much was charged.
    pub(crate) fn chain_remaining(&self, dim: usize) -> u64 {
        let limit = self.limit(dim);
        let own = if limit == u64::MAX {
            u64::MAX
        } else {
            limit.saturating_sub(self.used(dim))
        };
        match &self.parent {
            Some(parent) => own.min(parent.chain_remaining(dim)),
            None => own,
        }
    }

    /// Adds `n` of the counter `dim` to this node and every ancestor, root first, each taking as
    /// much as its own limit still holds of what its parent took, and marks exhausted every node
    /// whose own limit held less than that (the others are cancelled as its descendants).
    ///
    /// For work already done (a callee's reported usage) that does not fit: every budget of the
    /// chain is charged what it can hold, not only as much as the tightest could, so that an
    /// ancestor with room left counts the work too and cannot hand the same allowance out again.
    /// A budget never takes more than its parent took: an ancestor's `used` stays at least any
    /// descendant's, so that a descendant's refund (which the ancestors follow) never gives back
    /// on an ancestor what another budget charged there.
    pub(crate) fn fill_chain(&self, dim: usize, n: u64) {
        self.fill_chain_via(dim, n, false);
    }

    /// [`fill_chain`](Self::fill_chain); returns what this node took (`n` as it came, for a node
    /// whose policy lacks `dim`), which is what its child may take at most.
    fn fill_chain_via(&self, dim: usize, n: u64, via_child: bool) -> u64 {
        let given = match &self.parent {
            Some(parent) => parent.fill_chain_via(dim, n, true),
            None => n,
        };
        let Some(cell) = self.cell(dim) else {
            return given;
        };
        let limit = self.limit(dim);
        let mut used = cell.load(Ordering::Relaxed);
        let took = loop {
            // As in `try_add`, no total reaches `u64::MAX`.
            let take = given.min(limit.min(u64::MAX - 1).saturating_sub(used));
            if take == 0 {
                break 0;
            }
            // Noted first, as a charge through a child is (see `charge_chain_via`).
            if via_child && !self.add_from_child(dim, take) {
                break 0;
            }
            match cell.compare_exchange_weak(used, used + take, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break take,
                Err(actual) => {
                    if via_child {
                        self.sub_from_child(dim, take);
                    }
                    used = actual;
                }
            }
        };
        // Exhausted only if its own limit held less than it was given: a budget that took less
        // because its parent did has room left, and inherits the parent's cancellation instead.
        if took < given {
            self.mark_exhausted(dim);
        }
        took
    }

    /// Whether any node of the chain limits `dim`.
    pub(crate) fn chain_limits(&self, dim: usize) -> bool {
        self.limit(dim) != u64::MAX || self.parent.as_ref().is_some_and(|p| p.chain_limits(dim))
    }

    /// Records that a counter charge on `dim` was refused for lack of allowance.
    #[cold]
    pub(crate) fn mark_exhausted(&self, dim: usize) {
        // Already exhausted, and its children told: nothing to do. (Exhausted but not yet walked,
        // it goes on to wait for the walk, so that no refusal returns before its children know.)
        if self.state.load(Ordering::Relaxed) & (EXHAUSTED | WALKED) == EXHAUSTED | WALKED {
            return;
        }
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
    ///
    /// Walks the children under this node's `live` lock without collecting them (no allocation).
    /// A child whose last handle is dropped during the walk only *tries* that lock in its `Drop`, so
    /// the walk cannot deadlock on itself. Locks are taken parent before child, never the reverse.
    ///
    /// Whoever sets a bit returns only once the walk is done, whoever does it: a `cancel` racing
    /// another thread's first bit (an exhaustion, a deadline seen) finds the walk not yet marked
    /// done, waits on the lock for it, or does it itself. Until `WALKED` is set, every setter
    /// takes the lock; after it, none does.
    #[cold]
    pub(crate) fn set_bits(&self, bits: u32) {
        let before = self.state.fetch_or(bits, Ordering::AcqRel);
        if before & WALKED == 0 {
            let live = self.live.lock();
            if self.state.load(Ordering::Acquire) & WALKED == 0 {
                for child in live.iter().filter_map(Weak::upgrade) {
                    child.set_bits(INHERITED);
                }
                self.state.fetch_or(WALKED, Ordering::Release);
            }
        }
    }

    /// Waits until the children of a cancelled budget have been told (see
    /// [`set_bits`](Self::set_bits)), for a caller about to report the cancellation: nothing
    /// reports a budget cancelled while one of its children could still start work.
    #[cold]
    #[inline(never)]
    pub(crate) fn settle(&self) {
        let state = self.state.load(Ordering::Acquire);
        if state != 0 && state & WALKED == 0 {
            self.set_bits(0);
        }
    }

    /// Whether the deadline has passed, by the coarse clock; records it if so.
    #[inline]
    pub(crate) fn deadline_passed(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state & DEADLINE != 0 {
            if state & WALKED == 0 {
                // Another thread saw it first and may be telling the children still: wait for it.
                self.set_bits(DEADLINE);
            }
            return true;
        }
        // `NEVER` is "no deadline": even a clock saturated at the end of time has not reached it.
        if self.snapshot.clock.coarse() >= self.deadline && !self.deadline.is_never() {
            self.set_bits(DEADLINE);
            return true;
        }
        false
    }

    pub(crate) fn cancel(&self) {
        self.set_bits(CANCELLED);
    }
}

/// How many dimensions `snapshot`'s policy has (built-ins included).
fn policy_dims(snapshot: &Snapshot) -> usize {
    snapshot.dims.dims.len().min(MAX_DIMENSIONS)
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(parent) = self.parent.as_ref() else {
            return;
        };
        let me: *const Node = self;
        // Prune this entry if the list is free; a cancellation walking it holds the lock, and dead
        // entries are pruned at the next registration anyway.
        if let Some(mut live) = parent.live.try_lock() {
            live.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me));
        }
        let room = parent.finished.lock().reports.len() < MAX_CHILD_REPORTS;
        // Build the report outside the parent's locks, and only when there is room to keep it: a
        // parent with thousands of finished children pays for 64 reports, not thousands. A panic
        // building it (the clock's) is caught, and the child then counts as omitted: the parent
        // hears of every child. While the thread unwinds, the panic stops there (a second one
        // escaping this drop would abort the process); otherwise it goes on once the parent knows.
        let built = room.then(|| {
            let build = std::panic::AssertUnwindSafe(|| super::report::build(self));
            std::panic::catch_unwind(build)
        });
        let (report, panic) = match built {
            Some(Ok(report)) => (Some(report), None),
            Some(Err(payload)) => (None, Some(payload)),
            None => (None, None),
        };
        {
            let mut finished = parent.finished.lock();
            match report {
                Some(report) if finished.reports.len() < MAX_CHILD_REPORTS => {
                    finished.reports.push(report);
                }
                _ => finished.omitted = finished.omitted.saturating_add(1),
            }
        }
        if let Some(payload) = panic.filter(|_| !std::thread::panicking()) {
            std::panic::resume_unwind(payload);
        }
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::Node;

    /// glibc's per-thread cache serves blocks of at most 1,032 bytes; the node plus the `Arc`'s two
    /// counts must fit, or every budget takes the allocator's slow path.
    #[test]
    fn node_fits_the_allocator_thread_cache() {
        let size = std::mem::size_of::<Node>() + 2 * std::mem::size_of::<usize>();
        assert!(size <= 1032, "Arc<Node> is {size} bytes");
        assert_eq!(std::mem::align_of::<Node>(), 8);
    }
}

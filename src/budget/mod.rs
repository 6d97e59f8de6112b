//! Per-request budgets.
//!
//! A [`Budget`] is what one request may still spend, over every dimension of its class, plus its
//! deadline. It is checked *before* the expensive work runs: [`try_charge`](Budget::try_charge) either
//! takes the whole amount or refuses with a [`Verdict`] and changes nothing. A budget is `Send + Sync`
//! and cloning it is cheap, so threads doing parallel sub-work of one request share it.
//!
//! A sub-request gets a [`child`](Budget::child) budget: every charge to the child is also a charge to
//! every ancestor (all or nothing), and the child's deadline ends a margin before its parent's, so inner
//! timeouts always fire before outer ones. This is what the 2015 Commons outage lacked: each sub-request
//! started with fresh limits, and the timeouts were not staggered.
//!
//! Hot-path costs: a charge is one CAS loop per budget in the chain and never allocates or locks; the
//! cancellation flag is one relaxed load; a deadline check with the coarse clock is a few nanoseconds.

mod guard;
pub(crate) mod node;
mod overrides;
pub(crate) mod pool;
pub(crate) mod report;
mod state;

pub use guard::{CpuMeter, LevelGuard, Reservation};
pub use overrides::Overrides;
pub use report::{DimensionUsage, LimitReport, WallTime};
pub use state::CancelReason;

use crate::clock::{wall_time_nanos, Clock, Timestamp};
use crate::engine::snapshot::{ClassRules, Snapshot};
use crate::handle::{Class, Counter, Level};
use crate::policy::DimensionKind;
use crate::sync::{Arc, Ordering};
use crate::verdict::{Reason, Retry, Unit};
use crate::{Priority, RequestId, Verdict};
pub(crate) use node::Settings;
use node::{Node, NodeInit, Refused};
use state::{CANCELLED, DEADLINE, EXHAUSTED};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// How many levels a request tree may have: a root budget (depth 0) and children down to depth
/// `MAX_BUDGET_DEPTH - 1`. A child that would be deeper is refused with `Reason::TooDeep`.
pub const MAX_BUDGET_DEPTH: usize = 16;

/// What one request may still spend. See the [module documentation](self).
///
/// ```
/// use costguard::{Engine, Policy, Reason, RequestId};
/// use std::time::Duration;
///
/// let policy = Policy::builder()
///     .counter("file_lookups")
///     .level("nesting_depth")
///     .class("parse", |c| {
///         c.wall_time(Duration::from_secs(30))
///             .limit("file_lookups", 500)
///             .limit("nesting_depth", 2)
///     })
///     .build()
///     .unwrap();
/// let engine = Engine::new(policy).unwrap();
/// let lookups = engine.counter("file_lookups").unwrap();
/// let depth = engine.level("nesting_depth").unwrap();
/// let budget = engine.begin_by_name("parse", RequestId::new("edit-1").unwrap()).unwrap();
///
/// // A gallery of 10,000 images is refused before its first lookup.
/// let refused = budget.reserve(lookups, 10_000).unwrap_err();
/// assert_eq!(refused.reason(), Reason::CannotFit);
/// assert_eq!(budget.used(lookups), 0);
///
/// // A gallery of 40 is reserved, then settled to what it really looked up.
/// let reservation = budget.reserve(lookups, 40).unwrap();
/// reservation.settle(38).unwrap();
/// assert_eq!(budget.used(lookups), 38);
///
/// // Levels are held through guards.
/// let outer = budget.enter(depth).unwrap();
/// let inner = budget.enter(depth).unwrap();
/// assert!(budget.enter(depth).is_err());
/// drop((inner, outer));
/// assert_eq!(budget.level(depth), 0);
/// ```
#[derive(Clone)]
pub struct Budget {
    /// Always `Some` until the budget's `Drop` moves the node out, to keep it for reuse without
    /// touching its reference count.
    slot: Option<Arc<Node>>,
}

/// Everything needed to start a budget, besides the snapshot it starts under.
pub(crate) struct Start<'a> {
    /// The snapshot's clock, read by the caller.
    pub(crate) now: Timestamp,
    pub(crate) class: Class,
    /// Copied once, into the node.
    pub(crate) request_id: &'a RequestId,
    /// A priority chosen by the service (trusted); overrides can still only lower it.
    pub(crate) priority: Option<Priority>,
    pub(crate) overrides: &'a Overrides,
}

impl Start<'_> {
    /// The request id the budget and its refusals carry: the overrides' if they carry one.
    fn id(&self) -> RequestId {
        self.overrides.request_id.unwrap_or(*self.request_id)
    }
}

impl Budget {
    /// Starts a root budget (engine side), or refuses when the class is unknown or the deadline is
    /// already zero. `spare` is a finished node of this thread to start it on; kept again on refusal.
    #[inline(always)]
    pub(crate) fn start(
        snapshot: &Arc<Snapshot>,
        s: Start<'_>,
        spare: Option<Arc<Node>>,
    ) -> Result<Budget, Verdict> {
        match Self::prepare(snapshot, s) {
            Ok(settings) => Ok(Self::begin(snapshot, settings, spare)),
            Err(v) => {
                if let Some(node) = spare {
                    pool::keep(node);
                }
                Err(v)
            }
        }
    }

    /// Checks the start of a root budget under `snapshot` and works out its settings: the class must
    /// exist and the wall time must not be zero. Nothing after this can refuse.
    #[inline(always)]
    pub(crate) fn prepare<'a>(snapshot: &Snapshot, s: Start<'a>) -> Result<Settings<'a>, Verdict> {
        match snapshot.class(s.class) {
            Some(rules) => Self::prepare_for(rules, s),
            None => Err(Verdict::new(Reason::UnknownClass, Retry::Never).with_request(s.id())),
        }
    }

    /// [`prepare`](Self::prepare) with the class's rules already looked up.
    #[inline(always)]
    pub(crate) fn prepare_for<'a>(
        rules: &ClassRules,
        s: Start<'a>,
    ) -> Result<Settings<'a>, Verdict> {
        let wall = s
            .overrides
            .wall_time
            .map_or(rules.wall_time, |w| rules.wall_time.min(wall_time_nanos(w)));
        if wall == 0 {
            return Err(no_time(rules, s.id()));
        }
        let base = s.priority.unwrap_or(rules.priority);
        let priority = s
            .overrides
            .priority
            .map_or(base, |p| base.least_important(p));
        Ok(Settings {
            overrides: s.overrides.limits(),
            start: s.now,
            deadline: s.now.deadline_after(wall),
            request_id: s.overrides.request_id.as_ref().unwrap_or(s.request_id),
            priority,
            class: s.class,
        })
    }

    /// Starts a root budget with `settings` under `snapshot`: on `spare` (a finished node of this
    /// thread) or another node this thread kept, reset in place, or on a new node.
    #[inline]
    pub(crate) fn begin(
        snapshot: &Arc<Snapshot>,
        settings: Settings<'_>,
        spare: Option<Arc<Node>>,
    ) -> Budget {
        let init = NodeInit {
            settings,
            parent: None,
            snapshot,
        };
        #[cfg(not(costguard_loom))]
        if let Some(mut node) = spare.or_else(pool::take) {
            if let Some(n) = Arc::get_mut(&mut node) {
                n.reinit(init);
                return Budget { slot: Some(node) };
            }
        }
        #[cfg(costguard_loom)]
        drop(spare);
        Budget {
            slot: Some(Node::new(init)),
        }
    }

    /// Starts a root budget on `node`, a finished node of this thread that holds the snapshot
    /// `settings` were prepared under: no snapshot to load, nothing to allocate.
    #[inline]
    #[cfg_attr(costguard_loom, allow(unused_mut))]
    pub(crate) fn begin_on(mut node: Arc<Node>, settings: Settings<'_>) -> Budget {
        #[cfg(not(costguard_loom))]
        if let Some(n) = Arc::get_mut(&mut node) {
            n.reset(settings);
            return Budget { slot: Some(node) };
        }
        // Not reached: the pool keeps only nodes nothing else refers to (and none under loom).
        let snapshot = Arc::clone(&node.snapshot);
        Self::begin(&snapshot, settings, None)
    }

    /// The shared state. Every budget has one: only `Drop` takes it out of the slot.
    #[inline]
    pub(crate) fn node(&self) -> &Arc<Node> {
        match &self.slot {
            Some(node) => node,
            None => unreachable!("a budget's node is taken only when the budget is dropped"),
        }
    }

    /// Charges `n` of a counter, all or nothing, to this budget and every ancestor.
    ///
    /// A refused charge changes nothing. A charge refused because too little was left (not because the
    /// amount could never fit) also flips the cancellation flag of the budget that ran out.
    #[inline]
    pub fn try_charge(&self, counter: Counter, n: u64) -> Result<(), Verdict> {
        let node = &**self.node();
        let dim = counter.index();
        if node.parent.is_none() {
            match node.try_add(dim, n) {
                Ok(_) => Ok(()),
                Err(used) => Err(self.refusal(Refused {
                    node,
                    dim,
                    requested: n,
                    used,
                })),
            }
        } else {
            node.charge_chain(dim, n).map_err(|r| self.refusal(r))
        }
    }

    /// The charge of [`try_charge`](Self::try_charge) for a budget without ancestors, as nothing
    /// but the compare-and-swap: `Some(true)` when charged, `Some(false)` when refused (nothing
    /// changed, no verdict built, the budget not marked), `None` when the budget has ancestors.
    /// Nothing on this path can panic.
    ///
    /// For bindings whose common case runs outside their panic boundary: on anything but
    /// `Some(true)` they call `try_charge`, which tries again and explains a refusal.
    #[doc(hidden)]
    #[inline]
    pub fn try_charge_bare(&self, counter: Counter, n: u64) -> Option<bool> {
        let node = self.slot.as_deref()?;
        if node.parent.is_some() {
            return None;
        }
        Some(node.try_add(counter.index(), n).is_ok())
    }

    /// Charges several counters at once, all or nothing: if any does not fit, none is charged.
    ///
    /// A counter may appear more than once; its amounts add up.
    pub fn try_charge_many(&self, charges: &[(Counter, u64)]) -> Result<(), Verdict> {
        self.node()
            .charge_many_chain(charges)
            .map_err(|r| self.refusal(r))
    }

    /// Takes one retry from the request tree's shared retry allowance.
    pub fn try_retry(&self) -> Result<(), Verdict> {
        self.try_charge(Counter::RETRIES, 1)
    }

    /// Gives back up to `n` of a counter, returning how much was given back.
    ///
    /// A refund is capped by what was charged through this budget itself (not through its children,
    /// nor as the estimate of a reservation not yet settled, which only the reservation gives back),
    /// so refunds can never create allowance. While a child's charge is in flight at the same moment,
    /// a refund may give back less than it could; the return value says how much it gave back.
    ///
    /// Refunds of one budget go one at a time (a short lock, held for the refund's own reads and
    /// compare-exchange, never while another lock is taken): two at once could each see the whole
    /// of the budget's own share. Charges never wait for it.
    pub fn refund(&self, counter: Counter, n: u64) -> u64 {
        self.node().refund_chain(counter.index(), n)
    }

    /// Charges an estimate now, to be settled to the actual amount later.
    ///
    /// Until the reservation is settled, its estimate is not this budget's to [`refund`](Self::refund):
    /// only the reservation gives it back, exactly.
    pub fn reserve(&self, counter: Counter, estimate: u64) -> Result<Reservation<'_>, Verdict> {
        self.charge_reserved(counter, estimate)?;
        Ok(Reservation {
            budget: Cow::Borrowed(self),
            counter,
            amount: estimate,
        })
    }

    /// [`reserve`](Self::reserve), with a reservation that holds its own handle on the budget: for a
    /// reservation kept beside the request (in a state machine, an event loop, a binding) rather than
    /// inside a scope that borrows the budget.
    pub fn reserve_owned(
        &self,
        counter: Counter,
        estimate: u64,
    ) -> Result<Reservation<'static>, Verdict> {
        self.charge_reserved(counter, estimate)?;
        Ok(Reservation {
            budget: Cow::Owned(self.clone()),
            counter,
            amount: estimate,
        })
    }

    fn charge_reserved(&self, counter: Counter, estimate: u64) -> Result<(), Verdict> {
        self.node()
            .reserve_chain(counter.index(), estimate)
            .map_err(|r| self.refusal(r))
    }

    /// Raises a level by one for as long as the guard lives.
    pub fn enter(&self, level: Level) -> Result<LevelGuard<'_>, Verdict> {
        self.enter_n(level, 1)
    }

    /// Raises a level by `n` for as long as the guard lives.
    pub fn enter_n(&self, level: Level, n: u64) -> Result<LevelGuard<'_>, Verdict> {
        self.raise(level, n)?;
        Ok(LevelGuard {
            budget: Cow::Borrowed(self),
            level,
            amount: n,
        })
    }

    /// [`enter_n`](Self::enter_n), with a guard that holds its own handle on the budget: for a guard
    /// kept beside the request (in a state machine, an event loop, a binding) rather than inside a
    /// scope that borrows the budget.
    pub fn enter_owned(&self, level: Level, n: u64) -> Result<LevelGuard<'static>, Verdict> {
        self.raise(level, n)?;
        Ok(LevelGuard {
            budget: Cow::Owned(self.clone()),
            level,
            amount: n,
        })
    }

    fn raise(&self, level: Level, n: u64) -> Result<(), Verdict> {
        let dim = level.index();
        self.node()
            .raise_chain(dim, n)
            .map_err(|r| self.refusal(r))?;
        Ok(())
    }

    /// Starts charging the calling thread's CPU time to the `cpu_time` counter.
    pub fn cpu_meter(&self) -> CpuMeter<'_> {
        CpuMeter {
            budget: self,
            last: self.node().snapshot.cpu_clock.thread_cpu(),
            thread_bound: std::marker::PhantomData,
        }
    }

    /// The amount of a counter charged through this budget.
    pub fn used(&self, counter: Counter) -> u64 {
        self.node().used(counter.index())
    }

    /// The current value of a level in this budget.
    pub fn level(&self, level: Level) -> u64 {
        self.node().used(level.index())
    }

    /// This budget's own limit on a counter, or `None` when it only counts it.
    pub fn limit(&self, counter: Counter) -> Option<u64> {
        let l = self.node().limit(counter.index());
        (l != u64::MAX).then_some(l)
    }

    /// How much of a counter can still be charged: the least left in this budget or any ancestor
    /// (`u64::MAX` when nothing limits it).
    pub fn remaining_of(&self, counter: Counter) -> u64 {
        self.node().chain_remaining(counter.index())
    }

    /// How much of a level can still be entered, over this budget and its ancestors.
    pub fn headroom(&self, level: Level) -> u64 {
        self.node().chain_remaining(level.index())
    }

    /// The deadline, or `None` when there is none.
    pub fn deadline(&self) -> Option<Timestamp> {
        (!self.node().deadline.is_never()).then_some(self.node().deadline)
    }

    /// Time left until the deadline, by the precise clock ([`Duration::MAX`] without a deadline).
    ///
    /// Never more than the budget's whole allowance, even if the clock steps backwards; zero once the
    /// deadline has been seen to pass.
    pub fn remaining(&self) -> Duration {
        match self.remaining_nanos() {
            u64::MAX => Duration::MAX,
            n => Duration::from_nanos(n),
        }
    }

    /// [`remaining`](Self::remaining) in nanoseconds, `u64::MAX` without a deadline.
    pub(crate) fn remaining_nanos(&self) -> u64 {
        self.remaining_nanos_at(None)
    }

    /// As [`remaining_nanos`](Self::remaining_nanos), with the time `now` already read from
    /// `clock`, which saves reading it again when that is the budget's own clock.
    #[inline]
    pub(crate) fn remaining_nanos_by(&self, clock: &Arc<dyn Clock>, now: Timestamp) -> u64 {
        let own = Arc::ptr_eq(clock, &self.node().snapshot.clock);
        self.remaining_nanos_at(own.then_some(now))
    }

    #[inline]
    fn remaining_nanos_at(&self, now: Option<Timestamp>) -> u64 {
        let node = &**self.node();
        if node.deadline.is_never() {
            return u64::MAX;
        }
        if node.state.load(Ordering::Relaxed) & DEADLINE != 0 {
            node.settle();
            return 0;
        }
        let now = now.unwrap_or_else(|| node.snapshot.clock.now());
        if now >= node.deadline {
            node.set_bits(DEADLINE);
            return 0;
        }
        let allowance = node
            .deadline
            .as_nanos()
            .saturating_sub(node.start.as_nanos());
        // A finite deadline is below u64::MAX nanoseconds, so this is never taken for "none".
        node.deadline
            .as_nanos()
            .saturating_sub(now.as_nanos())
            .min(allowance)
            .min(u64::MAX - 1)
    }

    /// Whether the deadline has passed, by the coarse clock (a few nanoseconds; may notice the deadline
    /// up to one coarse tick late, never early). Once true, stays true.
    #[inline]
    pub fn expired(&self) -> bool {
        self.node().deadline_passed()
    }

    /// Whether the budget is cancelled: a counter ran out, the deadline was seen to pass, it or an
    /// ancestor was cancelled. One relaxed load, for the inside of hot loops; once true, stays true.
    ///
    /// The flag learns of the deadline from deadline checks ([`expired`](Self::expired),
    /// [`check`](Self::check), [`remaining`](Self::remaining)); call [`check`](Self::check) now and then
    /// in long loops.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.node().state.load(Ordering::Relaxed) != 0
    }

    /// Why the budget is cancelled, if it is.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        CancelReason::from_bits(self.node().state.load(Ordering::Relaxed))
    }

    /// Checks the cancellation flag and the deadline (coarse clock): `Ok` while work may go on,
    /// otherwise the verdict that explains why not.
    #[inline]
    pub fn check(&self) -> Result<(), Verdict> {
        if !self.is_cancelled() && !self.node().deadline_passed() {
            return Ok(());
        }
        Err(self.cancel_verdict())
    }

    /// Cancels the budget and every descendant. Charges still succeed while amounts fit (cancellation is
    /// advice to stop work, read through [`is_cancelled`](Self::is_cancelled) and
    /// [`check`](Self::check)); new child budgets are refused.
    pub fn cancel(&self) {
        self.node().cancel();
    }

    /// A child budget of the same class, for a sub-request.
    pub fn child(&self) -> Result<Budget, Verdict> {
        self.child_with(None, &Overrides::default())
    }

    /// A child budget of another class (from the policy this budget started with).
    pub fn child_in(&self, class: Class) -> Result<Budget, Verdict> {
        self.child_with(Some(class), &Overrides::default())
    }

    /// A child budget with tightened limits.
    ///
    /// The child's limits are its class's, tightened by `overrides`; every charge also goes to every
    /// ancestor. Its deadline is the earlier of its own wall time and this budget's deadline minus the
    /// class's `child_margin`. Refused when this budget is cancelled or expired, when no more than
    /// the margin is left (the child would get no time), or when budgets would nest deeper than
    /// [`MAX_BUDGET_DEPTH`].
    pub fn child_with(
        &self,
        class: Option<Class>,
        overrides: &Overrides,
    ) -> Result<Budget, Verdict> {
        let parent = &self.node();
        let id = overrides.request_id.unwrap_or(parent.request_id);
        if usize::from(parent.depth) + 1 >= MAX_BUDGET_DEPTH {
            return Err(Verdict::new(Reason::TooDeep, Retry::Never)
                .with_amounts(1, MAX_BUDGET_DEPTH as u64, MAX_BUDGET_DEPTH as u64)
                .with_request(id));
        }
        self.check()?;
        let class = class.unwrap_or(parent.class);
        let Some(rules) = parent.snapshot.class(class) else {
            return Err(Verdict::new(Reason::UnknownClass, Retry::Never).with_request(id));
        };
        let margin = parent.rules().map_or(0, |r| r.child_margin);
        let now = parent.snapshot.clock.now();
        // From what this budget has left, not from its deadline: after a clock that stepped back,
        // the deadline is further away than the allowance, and a child must never get more time
        // than its parent reports.
        let cap = match self.remaining_nanos_at(Some(now)) {
            u64::MAX => Timestamp::NEVER,
            left => Timestamp::from_nanos(
                now.as_nanos()
                    .saturating_add(left)
                    .saturating_sub(margin)
                    .min(u64::MAX - 1),
            ),
        };
        if cap <= now && !cap.is_never() {
            let wall = Arc::clone(&parent.snapshot.wall);
            let total = parent
                .deadline
                .as_nanos()
                .saturating_sub(parent.start.as_nanos());
            let elapsed = now.as_nanos().saturating_sub(parent.start.as_nanos());
            // The limit that refused is this budget's deadline less its own class's margin.
            let mut v = Verdict::new(Reason::InsufficientTime, Retry::Never)
                .with_dimension(&wall, Unit::Nanos)
                .with_amounts(margin, elapsed, total)
                .with_request(id);
            if let Some(own) = parent.rules() {
                v = v.with_class(&own.name);
            }
            return Err(v);
        }
        let wall = overrides
            .wall_time
            .map_or(rules.wall_time, |w| rules.wall_time.min(wall_time_nanos(w)));
        if wall == 0 {
            return Err(no_time(rules, id));
        }
        let own = now.deadline_after(wall);
        let priority = overrides
            .priority
            .map_or(parent.priority, |p| parent.priority.least_important(p))
            .least_important(rules.priority);
        Ok(Budget {
            slot: Some(Node::new(NodeInit {
                settings: Settings {
                    overrides: overrides.limits(),
                    start: now,
                    deadline: own.min(cap),
                    request_id: &id,
                    priority,
                    class,
                },
                parent: Some(Arc::clone(parent)),
                snapshot: &parent.snapshot,
            })),
        })
    }

    /// What this budget and its children used of every limit.
    pub fn report(&self) -> LimitReport {
        report::build(self.node())
    }

    /// The request id.
    pub fn request_id(&self) -> RequestId {
        self.node().request_id
    }

    /// The request's priority.
    pub fn priority(&self) -> Priority {
        self.node().priority
    }

    /// The class handle.
    pub fn class(&self) -> Class {
        self.node().class
    }

    /// The class name.
    pub fn class_name(&self) -> &str {
        self.node().rules().map_or("", |r| &r.name)
    }

    /// The generation of the policy this budget started with.
    pub fn policy_generation(&self) -> u64 {
        self.node().snapshot.generation
    }

    /// How many budgets are above this one.
    pub fn depth(&self) -> usize {
        usize::from(self.node().depth)
    }

    /// The verdict for a refused chain charge. Cold: only refusals get here.
    #[cold]
    #[inline(never)]
    fn refusal(&self, r: Refused<'_>) -> Verdict {
        let node = r.node;
        let snapshot = &node.snapshot;
        let limit = node.limit(r.dim);
        let level = snapshot
            .dims
            .info(r.dim)
            .is_some_and(|d| d.kind == DimensionKind::Level);
        // An unlimited dimension refuses only a total that would reach `u64::MAX`: an absurd
        // amount, refused without exhausting anything.
        let (reason, retry) = if r.requested > limit || limit == u64::MAX {
            (Reason::CannotFit, Retry::Never)
        } else if level {
            (Reason::LimitExceeded, Retry::Later)
        } else {
            (Reason::LimitExceeded, Retry::Never)
        };
        if reason == Reason::LimitExceeded && !level {
            node.mark_exhausted(r.dim);
        }
        let mut v = Verdict::new(reason, retry)
            .with_amounts(r.requested, r.used, limit)
            .with_request(self.node().request_id);
        if let Some(rules) = node.rules() {
            v = v.with_class(&rules.name);
        }
        if let Some(info) = snapshot.dims.info(r.dim) {
            v = v.with_dimension(&info.name, info.unit);
        }
        v
    }

    /// The verdict explaining why this budget is cancelled or expired.
    #[cold]
    fn cancel_verdict(&self) -> Verdict {
        self.node().settle();
        // Find the budget where the cancellation started.
        let mut node = &**self.node();
        while node.state.load(Ordering::Relaxed) & (EXHAUSTED | DEADLINE | CANCELLED) == 0 {
            match &node.parent {
                Some(p) => node = p,
                None => break,
            }
        }
        let bits = node.state.load(Ordering::Relaxed);
        let id = self.node().request_id;
        let mut v = if bits & DEADLINE != 0 {
            let total = node
                .deadline
                .as_nanos()
                .saturating_sub(node.start.as_nanos());
            let elapsed = node
                .snapshot
                .clock
                .coarse()
                .as_nanos()
                .saturating_sub(node.start.as_nanos())
                .max(total);
            Verdict::new(Reason::DeadlineExceeded, Retry::Never)
                .with_dimension(&node.snapshot.wall, Unit::Nanos)
                .with_amounts(0, elapsed, total)
        } else if let (true, Some(dim)) = (bits & EXHAUSTED != 0, node.exhausted_dim()) {
            let mut v = Verdict::new(Reason::LimitExceeded, Retry::Never).with_amounts(
                0,
                node.used(dim),
                node.limit(dim),
            );
            if let Some(info) = node.snapshot.dims.info(dim) {
                v = v.with_dimension(&info.name, info.unit);
            }
            v
        } else {
            Verdict::new(Reason::Cancelled, Retry::Never)
        };
        if let Some(rules) = node.rules() {
            v = v.with_class(&rules.name);
        }
        v.with_request(id)
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // The last handle on a finished root budget: keep its node for this thread's next one.
        if let Some(node) = self.slot.take() {
            pool::keep(node);
        }
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("request_id", &self.node().request_id)
            .field("class", &self.class_name())
            .field("depth", &self.node().depth)
            .field("cancelled", &self.cancel_reason())
            .finish_non_exhaustive()
    }
}

/// The refusal of a budget whose wall time would be zero (an override or a header's `t=0`): no time
/// left at all, where any work needs some.
#[cold]
fn no_time(rules: &ClassRules, id: RequestId) -> Verdict {
    Verdict::new(Reason::InsufficientTime, Retry::Never)
        .with_class(&rules.name)
        .with_dimension(&rules.wall, Unit::Nanos)
        .with_amounts(1, 0, 0)
        .with_request(id)
}

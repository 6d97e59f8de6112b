//! A host of a backend's pool: its bulkheads, its breaker, and its ejection state.
//!
//! Ejection is what an operator did by hand in 2016: take the broken broker out of the pool. Here a
//! host that keeps failing to connect or timing out is ejected for a time that doubles with each
//! ejection, and never more than a configured share of the pool is out at once. When its time is up,
//! it comes back on probation: one connection attempt at a time, and the first failure ejects it
//! again at once; the first success ends probation and forgives past ejections.
//!
//! The ejection word:
//!
//! | bits   | field                                       |
//! |--------|---------------------------------------------|
//! | 0..16  | connect failures or timeouts in a row       |
//! | 16..24 | ejections in a row (the exponent)           |
//! | 24     | ejected                                     |
//! | 25     | on probation (readmitted, not yet proven)   |
//! | 26..64 | generation: changes with every write        |
//!
//! Beside it, the time the ejection ends, tagged with the generation of the ejection it belongs to
//! (see `tagged`): an ejecting writer whose compare-exchange fails leaves a time that belongs to
//! no ejection, and the next ejection, of a newer generation, replaces it rather than inheriting
//! it when it is later. Every other write of the word brings the time's tag up to its generation
//! too: the tag keeps only 16 bits, compared as a wrapping sequence, and a tag left half its range
//! behind would look newer than the next ejection's.

use super::breaker::{self, Begin, Change, Role};
use super::permits::Permits;
use super::tagged;
use super::window::Window;
use super::TransitionKind;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::sync::Arc;

const FAILS: u64 = 0xffff;
const EJECTIONS_SHIFT: u32 = 16;
const EJECTED: u64 = 1 << 24;
const PROBATION: u64 = 1 << 25;
const GEN_SHIFT: u32 = 26;
const FIELDS: u64 = (1 << GEN_SHIFT) - 1;

/// The generation of an ejection word.
fn generation(w: u64) -> u64 {
    w >> GEN_SHIFT
}

/// The word to write over `w`: `fields`, with the next generation.
fn advance(w: u64, fields: u64) -> u64 {
    (fields & FIELDS) | (generation(w).wrapping_add(1) << GEN_SHIFT)
}

/// What a breaker's policy says about letting attempts through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Probes per half-open period.
    pub(crate) probes: u64,
    /// The longest it stays open, ns.
    pub(crate) max_open: u64,
}

/// A breaker with its times and window.
#[derive(Debug, Default)]
pub(crate) struct BreakerCell {
    pub(crate) word: CachePadded<AtomicU64>,
    pub(crate) open_until: AtomicU64,
    pub(crate) closed_at: AtomicU64,
    pub(crate) probe_deadline: AtomicU64,
    pub(crate) window: Window,
}

impl BreakerCell {
    /// Lets an attempt through or says why not: the attempt's role, the breaker's generation, and
    /// the transition this caused, if any (half-opened, or a new round of probes after hung ones).
    #[inline]
    pub(crate) fn begin(
        &self,
        now: u64,
        limits: Limits,
        timeout: u64,
    ) -> Result<(Role, u64, Option<TransitionKind>), breaker::Closed> {
        let w = self.word.load(Ordering::Acquire);
        if w & breaker::STATE == breaker::CLOSED {
            // The common case decides on the word alone: no times to read, nothing to write.
            return Ok((Role::Normal, breaker::Word::unpack(w).generation, None));
        }
        self.begin_not_closed(w, now, limits, timeout)
    }

    /// [`begin`](Self::begin) on a breaker that was not closed when its word was read.
    #[cold]
    #[inline(never)]
    fn begin_not_closed(
        &self,
        mut w: u64,
        now: u64,
        limits: Limits,
        timeout: u64,
    ) -> Result<(Role, u64, Option<TransitionKind>), breaker::Closed> {
        loop {
            let b = self.times(w, now, limits);
            let (next, role) = breaker::begin(w, b)?;
            if next == w {
                return Ok((role, breaker::Word::unpack(w).generation, None));
            }
            // A probe's deadline is published before its slot: a caller that finds every slot taken
            // must never see a stale deadline and take the probes for hung. (If the CAS then fails,
            // the deadline was raised for nothing, which only delays recovery from hung probes.)
            if role == Role::Probe {
                let gen = breaker::Word::unpack(next).generation;
                let at = now.saturating_add(timeout);
                tagged::raise_in(&self.probe_deadline, tagged::tag(at, gen));
            }
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let gen = breaker::Word::unpack(next).generation;
                    let was = breaker::Word::unpack(w);
                    let event = if role != Role::Probe {
                        None
                    } else if was.state != breaker::HALF_OPEN {
                        Some(TransitionKind::HalfOpened)
                    } else if was.generation != gen {
                        Some(TransitionKind::ProbesRestarted)
                    } else {
                        None
                    };
                    return Ok((role, gen, event));
                }
                Err(actual) => w = actual,
            }
        }
    }

    /// Applies an outcome; returns the transition it caused, and the generation it gave the
    /// breaker (for the report that orders it). Inlined: every attempt's finish runs it once or
    /// twice (backend and host), mostly down its closed-breaker fast path.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn finish(
        &self,
        role: Role,
        generation: u64,
        v: breaker::Verdict,
        trip: bool,
        consecutive: u64,
        probes: u64,
        open_ns: impl Fn(u64) -> u64,
        now: u64,
    ) -> (Change, u64) {
        let mut w = self.word.load(Ordering::Acquire);
        if breaker::settled(w, v, trip) {
            return (Change::None, 0);
        }
        loop {
            let (next, change) = breaker::finish(w, role, generation, v, trip, consecutive, probes);
            if next == w {
                return (Change::None, 0);
            }
            // Publish the times before the state that refers to them. By `fetch_max`: each opening
            // (and each closing) comes after the previous one's time, so the times only grow, and
            // a caller whose compare-exchange below then fails, long preempted, cannot put back an
            // older time over a newer opening's (half-opening it early).
            match change {
                Change::Opened => {
                    let opened = breaker::Word::unpack(next).opened;
                    self.open_until
                        .fetch_max(now.saturating_add(open_ns(opened)), Ordering::AcqRel);
                }
                Change::Closed => {
                    self.closed_at.fetch_max(now, Ordering::AcqRel);
                }
                Change::None => {}
            }
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (change, breaker::Word::unpack(next).generation),
                Err(actual) => w = actual,
            }
        }
    }

    /// Whether [`begin`](Self::begin) would let an attempt through now (a look that changes no
    /// state; it may bring an open time back within reach, as `begin` would).
    #[inline]
    pub(crate) fn would_admit(&self, now: u64, limits: Limits) -> bool {
        self.would_begin(now, limits).is_ok()
    }

    /// [`would_admit`](Self::would_admit), with the reason when not.
    #[inline]
    pub(crate) fn would_begin(&self, now: u64, limits: Limits) -> Result<(), breaker::Closed> {
        let w = self.word.load(Ordering::Acquire);
        if w & breaker::STATE == breaker::CLOSED {
            return Ok(());
        }
        breaker::begin(w, self.times(w, now, limits)).map(|_| ())
    }

    /// The times `begin` decides by. An open time further away than the longest a breaker stays
    /// open can only be left by a clock that stepped back: it is brought back to that longest time
    /// from now, so that the breaker is not held open for as long as the clock stepped back.
    fn times(&self, w: u64, now: u64, limits: Limits) -> Begin {
        let mut open_until = self.open_until.load(Ordering::Acquire);
        let latest = now.saturating_add(limits.max_open);
        if w & breaker::STATE == breaker::OPEN && open_until > latest {
            // Only ever lowered to a time no opening can exceed: every opening sets at most
            // `max_open` from its own now.
            open_until = self
                .open_until
                .fetch_min(latest, Ordering::AcqRel)
                .min(latest);
        }
        Begin {
            now,
            open_until,
            probe_deadline: self.probe_deadline.load(Ordering::Acquire),
            probes: limits.probes,
        }
    }

    pub(crate) fn state(&self) -> u64 {
        breaker::Word::unpack(self.word.load(Ordering::Relaxed)).state
    }
}

/// One host.
#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) name: Arc<str>,
    pub(crate) permits: Permits,
    /// Calls that count in the breaker's window (every outcome but the neutral ones), ever. On a
    /// line of its own: every call writes it, and the ejection words and the name beside it would
    /// otherwise be read from a line another thread just wrote.
    pub(crate) calls: CachePadded<AtomicU64>,
    pub(crate) breaker: BreakerCell,
    pub(crate) eject: AtomicU64,
    /// When the ejection ends, tagged with its generation (see the module's docs).
    ejected_until: AtomicU64,
    /// Whether the current policy's pool lists the host (set by each reload). A host out of the
    /// pool is never ejected: requests of older versions may still call it, but no new one will,
    /// and its place among the ejected belongs to the pool as it now is.
    pub(crate) in_pool: AtomicBool,
    /// When the host last came back from an ejection, clock nanoseconds (0: never). A connect
    /// failure or timeout of an attempt begun before then does not count toward ejecting it
    /// again: that attempt's time ran mostly during the ejection it already served.
    pub(crate) readmitted_at: AtomicU64,
}

/// Whether an ejection ending at `until` is over at `now`. One whose end saturated at the clock's
/// last instant (ejected with the clock at the end of its range) never is: the clock cannot get
/// past it.
fn ended(now: u64, until: u64) -> bool {
    now >= until && until != tagged::LAST
}

/// The hosts of a backend's pool ejected now, and how many may be: shared by every version of the
/// policy, so that the share is always of the pool as the current policy has it.
#[derive(Debug, Default)]
pub(crate) struct EjectedHosts {
    /// Hosts ejected now (each host's reservation, taken before it is ejected).
    pub(crate) count: AtomicU32,
    /// The most that may be at once, for the current pool (set by each reload).
    pub(crate) most: AtomicU32,
}

impl EjectedHosts {
    /// Takes a place among the ejected, if one is free.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.most.load(Ordering::SeqCst)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Hosts are out, as many as the current pool's share allows: no place is free.
    pub(crate) fn full(&self) -> bool {
        let count = self.count.load(Ordering::SeqCst);
        count > 0 && count >= self.most.load(Ordering::SeqCst)
    }

    /// More hosts out than the current pool's share allows: a reload lowered the share while an
    /// ejection was on its way (see [`HostState::on_outcome`]).
    fn over(&self) -> bool {
        self.count.load(Ordering::SeqCst) > self.most.load(Ordering::SeqCst)
    }

    /// Gives a place back.
    fn release(&self) {
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                debug_assert!(n > 0, "an ejection released twice");
                Some(n.saturating_sub(1))
            });
    }
}

/// When and for how long hosts are ejected, in clock nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EjectRule {
    pub(crate) threshold: u64,
    pub(crate) base: u64,
    pub(crate) max: u64,
}

impl EjectRule {
    /// The length of the `n`-th ejection in a row: `base × 2^(n-1)`, capped.
    pub(crate) fn duration(&self, n: u64) -> u64 {
        self.base
            .saturating_mul(1u64 << n.saturating_sub(1).min(32))
            .min(self.max)
    }
}

/// What became of a host's ejection state after an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ejection {
    None,
    /// Ejected, with the generation of the ejection.
    Ejected(u64),
}

impl HostState {
    pub(crate) fn new(name: Arc<str>) -> Self {
        HostState {
            name,
            permits: Permits::default(),
            calls: CachePadded::new(AtomicU64::new(0)),
            breaker: BreakerCell::default(),
            eject: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            in_pool: AtomicBool::new(false),
            readmitted_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.eject.load(Ordering::SeqCst) & EJECTED != 0
    }

    /// Ejected, and its ejection not yet over at `now` (it is readmitted lazily, by the next
    /// attempt that looks at it; this is what an observer should be told meanwhile).
    pub(crate) fn is_ejected_at(&self, now: u64) -> bool {
        let w = self.eject.load(Ordering::SeqCst);
        w & EJECTED != 0 && !self.ends(w).is_some_and(|until| ended(now, until))
    }

    /// When the ejection of word `w` ends: `None` when the time read belongs to another
    /// generation, which only a word that has meanwhile changed can meet.
    ///
    /// The word is read before the time: an ejection writes its time before its word, so a word
    /// read first comes with its own ejection's time (or a later one of the same generation).
    fn ends(&self, w: u64) -> Option<u64> {
        let stored = self.ejected_until.load(Ordering::Acquire);
        tagged::belongs(stored, generation(w)).then(|| tagged::time(stored))
    }

    /// Brings the end time's tag up to the generation of `w`, a word just written that is not an
    /// ejection (its time is then of no use). A newer tag stays: an ejection from `w` may have
    /// written its time already.
    fn retag(&self, w: u64) {
        tagged::raise_in(&self.ejected_until, tagged::tag_down(0, generation(w)));
    }

    /// When the host's ejection ends (the clock's end when that is not known): for ordering
    /// ejections by their ends.
    pub(crate) fn ejection_ends(&self) -> u64 {
        self.ends(self.eject.load(Ordering::Acquire))
            .unwrap_or(u64::MAX)
    }

    /// Ends an ejection early, without probation, and gives back its reservation among the ejected:
    /// for a host a reload took out of the pool, which no new request will be sent to.
    ///
    /// SeqCst, as is the ejecting compare-exchange in [`on_outcome`](Self::on_outcome) and both
    /// reads of `in_pool`: a reload stores `in_pool = false` and then reads the ejection word, an
    /// attempt ejects and then reads `in_pool`; in one total order, at least one of the two sees
    /// the other's write, so an ejection racing the host's removal is always undone by one of them
    /// (the compare-exchange below makes sure only once). A reload lowering the pool's share
    /// pairs with an ejection in the same way: it stores the new `most`, then reads the ejection
    /// words to readmit any excess; the attempt ejects, then compares the count with `most`.
    ///
    /// Like the wait queue's count and limiter, this store-buffering pair is argued here, not
    /// model-checked: loom treats SeqCst as acquire/release.
    ///
    /// The generation it gave the word, if this call ended an ejection.
    pub(crate) fn forget_ejection(&self, ejected: &EjectedHosts) -> Option<u64> {
        self.forget_ejection_of(None, ejected)
    }

    /// [`forget_ejection`](Self::forget_ejection), of the ejection of generation `only` when
    /// given: an attempt undoing its own ejection must not end a later one (its own ended by a
    /// reload, and the host ejected again meanwhile by another attempt).
    fn forget_ejection_of(&self, only: Option<u64>, ejected: &EjectedHosts) -> Option<u64> {
        let mut w = self.eject.load(Ordering::SeqCst);
        while w & EJECTED != 0 && only.is_none_or(|g| generation(w) == g) {
            let next = advance(w, 0);
            match self
                .eject
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.retag(next);
                    ejected.release();
                    return Some(generation(next));
                }
                Err(actual) => w = actual,
            }
        }
        None
    }

    pub(crate) fn on_probation(&self) -> bool {
        self.eject.load(Ordering::Acquire) & PROBATION != 0
    }

    /// Brings the host back on probation if its ejection is over: the generation of the
    /// readmission, if this call did.
    pub(crate) fn readmit_if_due(&self, now: u64, ejected: &EjectedHosts) -> Option<u64> {
        let w = self.eject.load(Ordering::Acquire);
        if w & EJECTED == 0 || !self.ends(w).is_some_and(|until| ended(now, until)) {
            return None;
        }
        self.readmit(w, ejected, now)
    }

    /// Brings the host back on probation now, whenever its ejection was to end (a reload made its
    /// pool's share smaller): the generation of the readmission, if this call did. (The end still
    /// to come stays behind, of this ejection's generation: the next ejection, of a newer one,
    /// replaces it.)
    pub(crate) fn readmit_early(&self, ejected: &EjectedHosts, now: u64) -> Option<u64> {
        let w = self.eject.load(Ordering::Acquire);
        if w & EJECTED == 0 {
            return None;
        }
        self.readmit(w, ejected, now)
    }

    /// Ends the ejection whose word is `w` (ejected: both callers checked), on probation, at
    /// `now`, and gives its place back; the generation of the readmission.
    ///
    /// The readmission time is raised first: a failure of an attempt begun before it, reported
    /// the moment the host is back, must find it (or be excused as from before the ejection). If
    /// the exchange then fails, the raised time only excuses, for an instant, failures that a
    /// host still ejected ignores anyway.
    fn readmit(&self, w: u64, ejected: &EjectedHosts, now: u64) -> Option<u64> {
        let next = advance(w, (w & !EJECTED & !FAILS) | PROBATION);
        self.readmitted_at.fetch_max(now, Ordering::AcqRel);
        if self
            .eject
            .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.retag(next);
            ejected.release();
            return Some(generation(next));
        }
        None
    }

    /// Applies an outcome to the ejection state. `connect_or_timeout`: the outcome counts toward
    /// ejection; `success`: it proves the host, unless it is on probation and the attempt began
    /// (at `started`) before it came back, which proves nothing about the host as it is now.
    /// Ejects when due, if room can be reserved among the ejected. Inlined into every finish on
    /// a host, mostly down its path for a success.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn on_outcome(
        &self,
        connect_or_timeout: bool,
        success: bool,
        started: u64,
        now: u64,
        rule: &EjectRule,
        ejected: &EjectedHosts,
    ) -> Ejection {
        let threshold = rule.threshold;
        let mut w = self.eject.load(Ordering::Acquire);
        loop {
            if w & EJECTED != 0 {
                return Ejection::None;
            }
            let fails = w & FAILS;
            let ejections = (w >> EJECTIONS_SHIFT) & 0xff;
            let fields = if success {
                // Read only on probation: a healthy host's success never looks.
                if w & PROBATION != 0 && started < self.readmitted_at.load(Ordering::Acquire) {
                    return Ejection::None;
                }
                // Proven: probation ends and past ejections are forgiven.
                0
            } else if connect_or_timeout {
                // A failure of an attempt begun before the host's readmission (which may have come
                // after the caller looked, by another thread or by the caller itself) counts for
                // nothing against the host on probation.
                if w & PROBATION != 0 && started < self.readmitted_at.load(Ordering::Acquire) {
                    return Ejection::None;
                }
                let fails = (fails + 1).min(FAILS);
                let due = (fails >= threshold || w & PROBATION != 0)
                    && self.in_pool.load(Ordering::SeqCst);
                if due {
                    // Reserve room among the ejected before ejecting.
                    let reserved = ejected.reserve();
                    if reserved {
                        let count = (ejections + 1).min(0xff);
                        let next = advance(w, EJECTED | (count << EJECTIONS_SHIFT));
                        // The time is written before the state that refers to it, tagged with
                        // its generation: within one, a stale writer never shortens the ejection;
                        // a time left by a writer whose exchange failed is replaced by the next
                        // ejection's, of a newer generation.
                        let at = now.saturating_add(rule.duration(count));
                        tagged::raise_in(
                            &self.ejected_until,
                            tagged::tag_down(at, generation(next)),
                        );
                        match self.eject.compare_exchange(
                            w,
                            next,
                            Ordering::SeqCst,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => {
                                // A time of another generation here can only be a writer's
                                // stalled across half the tag's range: this ejection's goes in,
                                // as nobody else can eject before this ejection ends.
                                let stored = self.ejected_until.load(Ordering::Acquire);
                                if !tagged::belongs(stored, generation(next)) {
                                    self.ejected_until.store(
                                        tagged::tag_down(at, generation(next)),
                                        Ordering::Release,
                                    );
                                }
                                // Taken out of the pool meanwhile, or the pool's share lowered
                                // below the hosts now out: the reload may have looked before this
                                // ejection (see `forget_ejection`), so this side undoes it.
                                // Undone here, it was never reported, and nothing is; ended by
                                // the reload (which reports the end), it is reported as ejected
                                // so that the end has its start.
                                if (!self.in_pool.load(Ordering::SeqCst) || ejected.over())
                                    && self
                                        .forget_ejection_of(Some(generation(next)), ejected)
                                        .is_some()
                                {
                                    return Ejection::None;
                                }
                                return Ejection::Ejected(generation(next));
                            }
                            Err(actual) => {
                                ejected.release();
                                w = actual;
                                continue;
                            }
                        }
                    }
                }
                (w & FIELDS & !FAILS) | fails
            } else {
                return Ejection::None;
            };
            if fields == w & FIELDS {
                // Nothing to write (a success on a healthy host): no compare-exchange.
                return Ejection::None;
            }
            let next = advance(w, fields);
            match self
                .eject
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.retag(next);
                    return Ejection::None;
                }
                Err(actual) => w = actual,
            }
        }
    }
}

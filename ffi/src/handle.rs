//! The generation-checked handle table.
//!
//! C gives every object back to us as a 64-bit value it may have freed, copied, corrupted or made up.
//! Turning such a value into a pointer would make every misuse undefined behaviour, so a handle is an
//! index into a table of slots, checked on every use:
//!
//! ```text
//! handle (u64):  | generation: 32 | kind: 4 | slot index: 28 |
//! slot state:    | generation: 32 | kind: 4 | LIVE | FREEING | readers: 26 |
//! ```
//!
//! A handle is valid while its generation and kind equal the slot's and the slot is `LIVE` and not
//! `FREEING`. Freeing bumps the generation, so a double free, a use after free or a stale copy fails
//! the check; the kind tag catches a budget passed as a grant; a made-up value almost surely names a
//! slot that does not exist or has another generation (generations start at 1, so the all-zero value
//! is never valid). A generation is never reused: a slot whose generation would wrap is retired for
//! good.
//!
//! Slots live in segments that are allocated on demand and never freed (type-stable memory): a
//! lookup of any index, however stale, reads memory that is still a slot. Free slots form a Treiber
//! stack whose head carries an ABA tag.
//!
//! **Free racing use.** A use is a *reader*: it enters by a compare-and-swap that checks validity and
//! adds one to the reader count, and leaves by subtracting one. A free (*claim*) is a reader that also
//! sets `FREEING`, so that nobody enters afterwards; whoever brings the reader count of a `FREEING`
//! slot to zero moves the value out, retires the slot (new generation, back on the free list) and
//! drops the value. A use therefore either completes before the free, or fails with an invalid
//! handle; the value is dropped exactly once, and never while in use.
//!
//! **The owner fast path.** The two read-modify-writes of a counted use cost about as much as the
//! charge they protect. The thread that created a budget (its *owner*) instead publishes the handle
//! in its own hazard record with a plain store, and re-checks the slot after a compiler-only fence.
//! A free by any other thread sets `FREEING`, then runs `membarrier()` (which executes a full barrier
//! on every running thread of the process: the heavy half of an asymmetric fence), then waits until
//! no hazard record holds the handle. Either the owner's re-check ran after the barrier and sees
//! `FREEING`, or its hazard store is visible to the freeing thread's scan. A free by the owner itself
//! needs neither barrier nor scan. Where `membarrier` is unavailable, handles get no owner and every
//! use is counted.

use crate::sync::{
    fence, heavy_fence, light_fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    UnsafeCell,
};
use std::mem::MaybeUninit;
use std::ptr;

/// Bits of the slot index in a handle.
pub const INDEX_BITS: u32 = 28;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Where the kind tag starts (4 bits).
const KIND_SHIFT: u32 = 28;
const KIND_MASK: u64 = 0xF << KIND_SHIFT;
/// Where the generation starts (32 bits).
const GEN_SHIFT: u32 = 32;
/// Generation and kind: what a handle and its slot's state must agree on.
const ID_MASK: u64 = !((1 << KIND_SHIFT) - 1);
/// The slot holds a value.
const LIVE: u64 = 1 << 27;
/// A free has begun: nobody may enter; the last reader drops the value.
const FREEING: u64 = 1 << 26;
/// Readers inside.
const READERS: u64 = FREEING - 1;

/// Slots in the first segment; segment `k` has `FIRST << k`.
#[cfg(not(costguard_loom))]
const FIRST: usize = 64;
#[cfg(costguard_loom)]
const FIRST: usize = 2;
/// Segments: `FIRST * (2^SEGMENTS - 1)` slots in all, which must fit in [`INDEX_BITS`].
#[cfg(not(costguard_loom))]
const SEGMENTS: usize = 22;
#[cfg(costguard_loom)]
const SEGMENTS: usize = 3;

const _: () = assert!((FIRST as u64) * ((1u64 << SEGMENTS) - 1) <= INDEX_MASK);

/// Why a handle was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The null handle.
    Null,
    /// Freed, of another kind, or made up.
    Invalid,
}

/// The parts of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Slot index.
    pub index: u32,
    /// Kind tag (1..=15).
    pub kind: u8,
    /// Generation (never 0 in a valid handle).
    pub generation: u32,
}

/// Splits a handle.
pub fn decode(handle: u64) -> Parts {
    Parts {
        index: (handle & INDEX_MASK) as u32,
        kind: ((handle & KIND_MASK) >> KIND_SHIFT) as u8,
        generation: (handle >> GEN_SHIFT) as u32,
    }
}

/// Builds a handle (for tests that forge values).
pub fn encode(p: Parts) -> u64 {
    (u64::from(p.generation) << GEN_SHIFT)
        | (u64::from(p.kind & 0xF) << KIND_SHIFT)
        | (u64::from(p.index) & INDEX_MASK)
}

/// A thread's hazard record: the one handle it is using through the owner fast path, or 0.
///
/// Records are never freed; a thread that exits gives its record back for the next thread to reuse
/// (ownership of the handles made through it passes along, which is sound: the dead thread cannot be
/// inside a fast path).
#[derive(Debug)]
pub struct Record {
    hazard: AtomicU64,
    in_use: AtomicU32,
    next: AtomicPtr<Record>,
}

impl Record {
    /// Gives the record back (when its thread exits).
    pub fn release(&self) {
        self.hazard.store(0, Ordering::Release);
        self.in_use.store(0, Ordering::Release);
    }

    fn id(&self) -> usize {
        self as *const Record as usize
    }
}

struct Slot<T> {
    /// See the module documentation for the layout.
    state: AtomicU64,
    /// The owner's record address (0: no owner, every use is counted). Written before the slot is
    /// published `LIVE`.
    owner: AtomicUsize,
    /// Next free slot index + 1 (0: end of the free list).
    next: AtomicU32,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            state: AtomicU64::new(0),
            owner: AtomicUsize::new(0),
            next: AtomicU32::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

#[inline(always)]
fn valid(state: u64, handle: u64) -> bool {
    state & (ID_MASK | LIVE | FREEING) == (handle & ID_MASK) | LIVE
}

/// Which segment, and where in it, slot `index` is.
#[inline(always)]
fn locate(index: usize) -> (usize, usize) {
    let q = index / FIRST + 1;
    let k = (usize::BITS - 1 - q.leading_zeros()) as usize;
    (k, index - FIRST * ((1 << k) - 1))
}

/// The table. One global instance serves the C ABI; tests and loom models make their own.
pub struct Table<T> {
    segments: [AtomicPtr<Slot<T>>; SEGMENTS],
    /// Slots handed out at least once.
    fresh: AtomicU32,
    /// Free list head: ABA tag (high 32 bits) and slot index + 1 (low 32 bits; 0 = empty).
    free: AtomicU64,
    /// Hazard records, a push-only list.
    records: AtomicPtr<Record>,
}

// SAFETY: values move between threads (made on one, dropped on another) and are shared by readers on
// several threads at once, hence `Send + Sync` on `T`; all other state is atomic.
unsafe impl<T: Send + Sync> Sync for Table<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Send for Table<T> {}

impl<T> Table<T> {
    /// An empty table (no memory until the first insert).
    #[cfg(not(costguard_loom))]
    pub const fn new() -> Self {
        Table {
            segments: [const { AtomicPtr::new(ptr::null_mut()) }; SEGMENTS],
            fresh: AtomicU32::new(0),
            free: AtomicU64::new(0),
            records: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// An empty table.
    #[cfg(costguard_loom)]
    pub fn new() -> Self {
        Table {
            segments: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            fresh: AtomicU32::new(0),
            free: AtomicU64::new(0),
            records: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The most slots the table can hold.
    pub(crate) const CAPACITY: usize = FIRST * ((1 << SEGMENTS) - 1);

    #[inline(always)]
    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let (k, offset) = locate(index as usize);
        let seg = self.segments.get(k)?.load(Ordering::Acquire);
        if seg.is_null() {
            return None;
        }
        // SAFETY: a non-null segment pointer was published (Release) after the segment of
        // `FIRST << k` slots was fully built, and segments are never freed while the table lives;
        // `offset < FIRST << k` by construction of `locate`.
        Some(unsafe { &*seg.add(offset) })
    }

    /// The slot at `index`, allocating its segment if needed.
    fn slot_or_alloc(&self, index: u32) -> &Slot<T> {
        let (k, offset) = locate(index as usize);
        let cell = &self.segments[k];
        let mut seg = cell.load(Ordering::Acquire);
        if seg.is_null() {
            let fresh: Box<[Slot<T>]> = (0..FIRST << k).map(|_| Slot::new()).collect();
            let mine = Box::into_raw(fresh) as *mut Slot<T>;
            match cell.compare_exchange(ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => seg = mine,
                Err(theirs) => {
                    // SAFETY: `mine` came from `Box::into_raw` of a slice of this length just above
                    // and was never published.
                    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(mine, FIRST << k)) });
                    seg = theirs;
                }
            }
        }
        // SAFETY: as in `slot`.
        unsafe { &*seg.add(offset) }
    }

    fn pop_free(&self) -> Option<u32> {
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            let index = (head as u32).checked_sub(1)?;
            // A stale `next` (the slot was popped and pushed again meanwhile) is harmless: the tag
            // makes the compare-and-swap fail.
            let next = self.slot(index)?.next.load(Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(index),
                Err(h) => head = h,
            }
        }
    }

    fn push_free(&self, index: u32, slot: &Slot<T>) {
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            slot.next.store(head as u32, Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(index + 1);
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    fn take_index(&self) -> Option<u32> {
        if let Some(i) = self.pop_free() {
            return Some(i);
        }
        self.fresh
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                ((n as usize) < Self::CAPACITY).then_some(n + 1)
            })
            .ok()
    }

    /// Stores `value` and returns its handle, or gives the value back when the table is full.
    /// `kind` is 1..=15. With an `owner` record, that thread's uses take the fast path.
    pub fn insert(&self, kind: u8, value: T, owner: Option<&Record>) -> Result<u64, T> {
        debug_assert!((1..16).contains(&kind));
        let Some(index) = self.take_index() else {
            return Err(value);
        };
        let slot = self.slot_or_alloc(index);
        let state = slot.state.load(Ordering::Acquire);
        debug_assert_eq!(state & (LIVE | FREEING | READERS), 0);
        let generation = ((state >> GEN_SHIFT) as u32).max(1);
        // SAFETY: the slot is off the free list (or fresh) and not LIVE: no reader can enter it and no
        // other thread can take it, so this thread has it exclusively.
        slot.value
            .with_mut(|p| unsafe { ptr::write(p, MaybeUninit::new(value)) });
        slot.owner
            .store(owner.map_or(0, Record::id), Ordering::Relaxed);
        let id = (u64::from(generation) << GEN_SHIFT) | (u64::from(kind) << KIND_SHIFT);
        slot.state.store(id | LIVE, Ordering::Release);
        Ok(id | u64::from(index))
    }

    #[inline(always)]
    fn find(&self, handle: u64, kind: u8) -> Result<&Slot<T>, Refused> {
        if handle == 0 {
            return Err(Refused::Null);
        }
        let p = decode(handle);
        if p.kind != kind || p.generation == 0 {
            return Err(Refused::Invalid);
        }
        self.slot(p.index).ok_or(Refused::Invalid)
    }

    /// The owner fast path of [`acquire`](Self::acquire) alone: a use of `handle` when `me` owns it,
    /// it is valid and `me` is not already inside a use; `None` in every other case, for the caller
    /// to take the full path. Nothing here can panic.
    #[inline(always)]
    pub fn try_owned<'t>(&'t self, handle: u64, kind: u8, me: &'t Record) -> Option<Ref<'t, T>> {
        let slot = self.find(handle, kind).ok()?;
        self.owned(slot, handle, me)?.ok()
    }

    /// The owner fast path on `slot`: `None` when `me` does not own it or is already inside a use
    /// (take the counted path); otherwise the use, or `Invalid`.
    ///
    /// The owner is read twice. The first read, before anything is published, only picks the path:
    /// it may be stale, the owner of the slot's previous value. The second comes after the hazard is
    /// published and the handle validated with an Acquire load of the state, which the value's
    /// insertion published after writing its owner: a slot now owned by another record sends the
    /// caller to the counted path, since that owner frees its values without looking for hazards.
    #[inline(always)]
    fn owned<'t>(
        &'t self,
        slot: &'t Slot<T>,
        handle: u64,
        me: &'t Record,
    ) -> Option<Result<Ref<'t, T>, Refused>> {
        if slot.owner.load(Ordering::Relaxed) != me.id() || me.hazard.load(Ordering::Relaxed) != 0 {
            return None;
        }
        me.hazard.store(handle, Ordering::Relaxed);
        light_fence();
        if valid(slot.state.load(Ordering::Acquire), handle) {
            if slot.owner.load(Ordering::Relaxed) != me.id() {
                me.hazard.store(0, Ordering::Release);
                return None;
            }
            return Some(Ok(Ref {
                table: self,
                slot,
                index: handle as u32 & INDEX_MASK as u32,
                fast: Some(me),
            }));
        }
        me.hazard.store(0, Ordering::Release);
        Some(Err(Refused::Invalid))
    }

    /// Enters the value of `handle` for a use; it stays alive until the guard is dropped.
    #[inline(always)]
    pub fn acquire<'t>(
        &'t self,
        handle: u64,
        kind: u8,
        me: Option<&'t Record>,
    ) -> Result<Ref<'t, T>, Refused> {
        let slot = self.find(handle, kind)?;
        if let Some(owned) = me.and_then(|me| self.owned(slot, handle, me)) {
            return owned;
        }
        let mut state = slot.state.load(Ordering::Acquire);
        loop {
            if !valid(state, handle) || state & READERS == READERS {
                return Err(Refused::Invalid);
            }
            match slot.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Ref {
                        table: self,
                        slot,
                        index: handle as u32 & INDEX_MASK as u32,
                        fast: None,
                    })
                }
                Err(s) => state = s,
            }
        }
    }

    /// Begins freeing `handle`: nobody can enter it from now on, later uses and frees of it fail,
    /// and the value is dropped when the returned guard and every reader still inside are gone.
    /// Until then the guard gives access to the value (to finish a grant, settle a reservation...).
    pub fn claim<'t>(
        &'t self,
        handle: u64,
        kind: u8,
        me: Option<&'t Record>,
    ) -> Result<Ref<'t, T>, Refused> {
        let slot = self.find(handle, kind)?;
        let mut state = slot.state.load(Ordering::Acquire);
        loop {
            if !valid(state, handle) || state & READERS == READERS {
                return Err(Refused::Invalid);
            }
            match slot.state.compare_exchange_weak(
                state,
                (state + 1) | FREEING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(s) => state = s,
            }
        }
        let owner = slot.owner.load(Ordering::Relaxed);
        if owner != 0 && me.map(Record::id) != Some(owner) {
            // Another thread owns the handle: wait until it is not inside its fast path.
            if !heavy_fence() {
                fence(Ordering::SeqCst);
            }
            let mut spins = 0u32;
            while self.hazard_holds(handle) {
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        Ok(Ref {
            table: self,
            slot,
            index: handle as u32 & INDEX_MASK as u32,
            fast: None,
        })
    }

    fn hazard_holds(&self, handle: u64) -> bool {
        let mut r = self.records.load(Ordering::Acquire);
        while !r.is_null() {
            // SAFETY: records are pushed fully built (Release) and never freed while the table lives.
            let rec = unsafe { &*r };
            if rec.hazard.load(Ordering::Acquire) == handle {
                return true;
            }
            r = rec.next.load(Ordering::Acquire);
        }
        false
    }

    /// A hazard record for the calling thread (a released one if any, else a new one).
    pub fn register(&self) -> &Record {
        let mut r = self.records.load(Ordering::Acquire);
        while !r.is_null() {
            // SAFETY: as in `hazard_holds`.
            let rec = unsafe { &*r };
            if rec
                .in_use
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return rec;
            }
            r = rec.next.load(Ordering::Acquire);
        }
        let rec = Box::into_raw(Box::new(Record {
            hazard: AtomicU64::new(0),
            in_use: AtomicU32::new(1),
            next: AtomicPtr::new(ptr::null_mut()),
        }));
        let mut head = self.records.load(Ordering::Relaxed);
        loop {
            // SAFETY: `rec` is ours until published by the compare-and-swap below.
            unsafe { &*rec }.next.store(head, Ordering::Relaxed);
            match self.records.compare_exchange_weak(
                head,
                rec,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        // SAFETY: records are never freed while the table lives.
        unsafe { &*rec }
    }

    /// Leaves a counted use; the last reader of a `FREEING` slot drops the value.
    fn release(&self, slot: &Slot<T>, index: u32) {
        let prev = slot.state.fetch_sub(1, Ordering::AcqRel);
        if prev & READERS == 1 && prev & FREEING != 0 {
            // SAFETY: the reader count reached zero on a FREEING slot: nobody is inside and nobody
            // can enter, and only this thread saw the count reach zero.
            let value = unsafe { self.retire(slot, index, prev - 1, true) };
            drop(value);
        }
    }

    /// Moves the value out, gives the slot a new generation and (unless the generation is spent)
    /// puts it back on the free list.
    ///
    /// # Safety
    /// The caller has the slot exclusively (readers zero and `FREEING`, or the only thread alive),
    /// and `state` is its current state.
    unsafe fn retire(&self, slot: &Slot<T>, index: u32, state: u64, recycle: bool) -> T {
        // SAFETY: the slot is LIVE, so the value was written by `insert`, and the caller has it
        // exclusively, so it is moved out exactly once.
        let value = slot
            .value
            .with_mut(|p| unsafe { ptr::read(p).assume_init() });
        let generation = (state >> GEN_SHIFT) as u32;
        match generation.checked_add(1) {
            Some(next) => {
                slot.state
                    .store(u64::from(next) << GEN_SHIFT, Ordering::Release);
                if recycle {
                    self.push_free(index, slot);
                }
            }
            // Spent: never reused, so no stale handle can ever match it again.
            None => slot
                .state
                .store(u64::from(u32::MAX) << GEN_SHIFT, Ordering::Release),
        }
        value
    }

    /// After `fork()`, in the child (one thread): every value whose kind `keep` rejects, or that was
    /// being freed, is forgotten (leaked, never dropped: dropping may touch locks held by parent
    /// threads that do not exist here) and its handle invalidated; reader counts and hazards left by
    /// parent threads are cleared; the free list is rebuilt.
    ///
    /// # Safety
    /// Only in the child of a fork, before any other thread of the child uses the table.
    pub unsafe fn after_fork_in_child(&self, keep: impl Fn(u8) -> bool) {
        self.free.store(0, Ordering::Relaxed);
        let mut r = self.records.load(Ordering::Relaxed);
        while !r.is_null() {
            // SAFETY: records are never freed while the table lives.
            let rec = unsafe { &*r };
            rec.hazard.store(0, Ordering::Relaxed);
            r = rec.next.load(Ordering::Relaxed);
        }
        let fresh = self.fresh.load(Ordering::Relaxed);
        for index in (0..fresh).rev() {
            let Some(slot) = self.slot(index) else {
                continue;
            };
            slot.owner.store(0, Ordering::Relaxed);
            let state = slot.state.load(Ordering::Relaxed);
            let kind = ((state & KIND_MASK) >> KIND_SHIFT) as u8;
            if state & LIVE != 0 {
                if state & FREEING == 0 && keep(kind) {
                    slot.state.store(state & !READERS, Ordering::Relaxed);
                    continue;
                }
                // SAFETY: this is the only thread; the value is forgotten, not dropped.
                std::mem::forget(unsafe { self.retire(slot, index, state, false) });
            }
            let state = slot.state.load(Ordering::Relaxed);
            if (state >> GEN_SHIFT) as u32 != u32::MAX {
                self.push_free(index, slot);
            }
        }
        fence(Ordering::SeqCst);
    }

    /// Live values (slow; for tests and stats).
    pub fn live(&self) -> usize {
        let fresh = self.fresh.load(Ordering::Acquire);
        (0..fresh)
            .filter_map(|i| self.slot(i))
            .filter(|s| s.state.load(Ordering::Acquire) & LIVE != 0)
            .count()
    }
}

#[cfg(not(costguard_loom))]
impl<T> Default for Table<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for Table<T> {
    fn drop(&mut self) {
        let fresh = self.fresh.load(Ordering::Acquire);
        for index in 0..fresh {
            if let Some(slot) = self.slot(index) {
                let state = slot.state.load(Ordering::Acquire);
                if state & LIVE != 0 {
                    // SAFETY: `&mut self`: nobody else uses the table.
                    drop(unsafe { self.retire(slot, index, state, false) });
                }
            }
        }
        for (k, cell) in self.segments.iter().enumerate() {
            let seg = cell.load(Ordering::Acquire);
            if !seg.is_null() {
                // SAFETY: allocated by `slot_or_alloc` as a boxed slice of `FIRST << k` slots.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(seg, FIRST << k)) });
            }
        }
        let mut r = self.records.load(Ordering::Acquire);
        while !r.is_null() {
            // SAFETY: allocated by `register` with `Box::new`; nobody else holds it any more.
            let rec = unsafe { Box::from_raw(r) };
            r = rec.next.load(Ordering::Acquire);
        }
    }
}

#[cfg(not(costguard_loom))]
fn yield_now() {
    std::thread::yield_now();
}

#[cfg(costguard_loom)]
fn yield_now() {
    loom::thread::yield_now();
}

/// A use of a slot's value; leaving it (drop) releases the use.
pub struct Ref<'t, T> {
    table: &'t Table<T>,
    slot: &'t Slot<T>,
    index: u32,
    fast: Option<&'t Record>,
}

impl<T> std::ops::Deref for Ref<'_, T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        let p = self.slot.value.with(|p| p);
        // SAFETY: while this guard lives the slot is LIVE and its value cannot be dropped: a counted
        // reader keeps the count above zero, and a fast-path reader's hazard makes any free wait.
        unsafe { (*p).assume_init_ref() }
    }
}

impl<T> Drop for Ref<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.fast {
            Some(me) => me.hazard.store(0, Ordering::Release),
            None => self.table.release(self.slot, self.index),
        }
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_every_index() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(FIRST - 1), (0, FIRST - 1));
        assert_eq!(locate(FIRST), (1, 0));
        assert_eq!(locate(3 * FIRST - 1), (1, 2 * FIRST - 1));
        assert_eq!(locate(3 * FIRST), (2, 0));
        let (k, off) = locate(Table::<u8>::CAPACITY - 1);
        assert_eq!((k, off), (SEGMENTS - 1, (FIRST << (SEGMENTS - 1)) - 1));
    }

    #[test]
    fn stale_handles_fail_and_slots_are_reused() {
        let t = Table::<String>::new();
        let a = t.insert(2, "a".into(), None).unwrap();
        assert_eq!(&*t.acquire(a, 2, None).unwrap(), "a");
        assert_eq!(t.acquire(a, 3, None).err(), Some(Refused::Invalid));
        drop(t.claim(a, 2, None).unwrap());
        assert_eq!(t.acquire(a, 2, None).err(), Some(Refused::Invalid));
        assert_eq!(t.claim(a, 2, None).err(), Some(Refused::Invalid));
        let b = t.insert(2, "b".into(), None).unwrap();
        assert_eq!(decode(a).index, decode(b).index);
        assert_ne!(a, b);
        assert_eq!(t.acquire(a, 2, None).err(), Some(Refused::Invalid));
        assert_eq!(&*t.acquire(b, 2, None).unwrap(), "b");
        assert_eq!(t.acquire(0, 2, None).err(), Some(Refused::Null));
    }

    #[test]
    fn the_last_reader_drops() {
        let t = Table::<std::sync::Arc<()>>::new();
        let v = std::sync::Arc::new(());
        let h = t.insert(1, v.clone(), None).unwrap();
        let reader = t.acquire(h, 1, None).unwrap();
        drop(t.claim(h, 1, None).unwrap());
        assert_eq!(std::sync::Arc::strong_count(&v), 2);
        drop(reader);
        assert_eq!(std::sync::Arc::strong_count(&v), 1);
    }

    #[test]
    fn owners_take_the_fast_path() {
        let t = Table::<u32>::new();
        let me = t.register();
        let h = t.insert(2, 7, Some(me)).unwrap();
        let r = t.acquire(h, 2, Some(me)).unwrap();
        assert!(r.fast.is_some());
        // A second use while the first is held is counted.
        let r2 = t.acquire(h, 2, Some(me)).unwrap();
        assert!(r2.fast.is_none());
        drop((r, r2));
        drop(t.claim(h, 2, Some(me)).unwrap());
        assert!(t.acquire(h, 2, Some(me)).is_err());
    }
}

//! Forking servers: what an engine is in the child of `fork()`.
//!
//! php-fpm and similar servers build their state, then fork workers. After `fork()` only the forking
//! thread exists in the child, but memory is a copy of the parent's: permits held by the parent's
//! other threads look held forever, and a lock one of them held stays locked forever. So, in the
//! child (see the contract in `API.md`):
//!
//! - a `pthread_atfork` child handler (registered when the first engine is made) bumps the global
//!   **fork epoch** and walks the handle table: every handle other than engines is invalidated and its
//!   value leaked (never dropped: a drop may take a lock a parent thread held); reader counts and
//!   hazard records left by parent threads are cleared; the free list is rebuilt. It takes no lock and
//!   does not allocate.
//! - each engine notices the new epoch on its next use and rebuilds itself, once, from its latest
//!   policy: a fresh core engine (nothing in flight, counters at zero, its own locks), fresh names at
//!   the same indices. The old core engine is leaked, for the same reason.
//! - the crate's own locks are [`EpochLock`]s: a lock taken in an earlier epoch counts as free, so a
//!   parent thread that held one at fork time cannot block the child.
//!
//! What remains outside our control: a parent thread inside the allocator at fork time (glibc's
//! `fork` resets malloc's locks), and parking_lot's global parking table, which the core uses only
//! when a lock is contended (a child that contends a fresh engine's lock while a parent thread was
//! parking at the instant of the fork could wait on a bucket lock; we know of no other case).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bumped in every fork child.
static EPOCH: AtomicU64 = AtomicU64::new(1);
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// The current fork epoch.
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

extern "C" fn in_child() {
    EPOCH.fetch_add(1, Ordering::AcqRel);
    crate::membarrier::forget_registration();
    // SAFETY: this is the child of a fork and its only thread; nothing else uses the table yet.
    unsafe {
        crate::object::TABLE.after_fork_in_child(|kind| kind == crate::object::ENGINE);
    }
}

/// Registers the child handler, once per process (children inherit it).
pub(crate) fn ensure_registered() {
    if REGISTERED.load(Ordering::Acquire) {
        return;
    }
    if REGISTERED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: registering a handler that is a plain `extern "C" fn()` with no captured state.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    }
}

/// A spin lock stamped with the fork epoch it was taken in: one taken before a fork is free in the
/// child. For cold paths (reloads, name lookups, rebuilds), which hold it briefly and never block
/// inside it on anything but the core's own work.
pub(crate) struct EpochLock {
    /// 0: free; otherwise `epoch << 1 | 1`.
    word: AtomicU64,
}

/// Holds an [`EpochLock`].
pub(crate) struct EpochGuard<'a>(&'a EpochLock);

impl EpochLock {
    pub(crate) const fn new() -> Self {
        EpochLock {
            word: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> EpochGuard<'_> {
        let mut spins = 0u32;
        loop {
            let now = epoch();
            let w = self.word.load(Ordering::Relaxed);
            if (w == 0 || w >> 1 != now)
                && self
                    .word
                    .compare_exchange_weak(w, now << 1 | 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return EpochGuard(self);
            }
            spins = spins.wrapping_add(1);
            if spins % 32 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        self.0.word.store(0, Ordering::Release);
    }
}

//! The one place the handle table's atomics come from.
//!
//! The handle table is a lock-free structure that C callers race on (a free racing a use), so it is
//! model-checked with loom: building with `RUSTFLAGS="--cfg costguard_loom"` swaps these for loom's
//! versions. The cfg is crate-specific so that a plain `--cfg loom` does not flip dependencies.
//! Everything else in this crate uses std atomics directly.

#[cfg(not(costguard_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(costguard_loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(costguard_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's closure-based interface, so that the table's code is the same
/// under both.
#[cfg(not(costguard_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(costguard_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// The light half of an asymmetric fence: on the owner's fast path, only the compiler is fenced; the
/// freeing thread's [`heavy_fence`] makes every running thread execute a full barrier.
#[inline(always)]
pub(crate) fn light_fence() {
    #[cfg(not(costguard_loom))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    // Loom cannot model membarrier: both halves become full fences, which is what they amount to.
    #[cfg(costguard_loom)]
    fence(Ordering::SeqCst);
}

/// The heavy half of the asymmetric fence: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`. Returns
/// false when the kernel cannot do it (then the owner fast path must not be used).
#[cfg(not(costguard_loom))]
pub(crate) fn heavy_fence() -> bool {
    crate::membarrier::barrier()
}

#[cfg(costguard_loom)]
pub(crate) fn heavy_fence() -> bool {
    fence(Ordering::SeqCst);
    true
}

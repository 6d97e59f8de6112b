//! The one place atomics and locks come from.
//!
//! Every lock-free structure in costguard takes its atomics from here, so that building with
//! `RUSTFLAGS="--cfg costguard_loom"` swaps them for [loom]'s model-checked versions without touching
//! the structures themselves. The cfg is crate-specific on purpose: a plain `--cfg loom` would also flip
//! dependencies that know about loom and explode the model.
//!
//! `Arc`/`Weak` stay the standard ones under loom: reference counting is not what the models check, and
//! loom has no `Weak`.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(costguard_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(costguard_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub(crate) use std::sync::{Arc, Weak};

/// A mutex for cold paths (registries, child lists). parking_lot's outside loom, loom's inside.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(imp::Mutex::new(value))
    }

    /// The lock if it is free right now.
    pub(crate) fn try_lock(&self) -> Option<imp::MutexGuard<'_, T>> {
        #[cfg(not(costguard_loom))]
        {
            self.0.try_lock()
        }
        #[cfg(costguard_loom)]
        {
            self.0.try_lock().ok()
        }
    }

    /// The value, through exclusive access (no locking).
    #[cfg(not(costguard_loom))]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    pub(crate) fn lock(&self) -> imp::MutexGuard<'_, T> {
        #[cfg(not(costguard_loom))]
        {
            self.0.lock()
        }
        #[cfg(costguard_loom)]
        {
            // A loom mutex is only poisoned if a model thread panicked, which already fails the model.
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}

#[cfg(not(costguard_loom))]
mod imp {
    pub(crate) use parking_lot::{Mutex, MutexGuard};
}

#[cfg(costguard_loom)]
mod imp {
    pub(crate) use loom::sync::{Mutex, MutexGuard};
}

/// A shared pointer that can be replaced atomically while readers keep using the old value.
///
/// Outside loom this is `arc_swap::ArcSwap` (lock-free loads). Under loom, where arc-swap's internal
/// atomics are invisible to the model, it is a loom mutex around an `Arc`, which has the same
/// observable contract: a load returns either the old or the new value, never a mix.
#[derive(Debug)]
pub(crate) struct SwapCell<T>(
    #[cfg(not(costguard_loom))] arc_swap::ArcSwap<T>,
    #[cfg(costguard_loom)] loom::sync::Mutex<Arc<T>>,
);

/// A borrowed current value of a [`SwapCell`].
pub(crate) struct SwapGuard<T>(
    #[cfg(not(costguard_loom))] arc_swap::Guard<Arc<T>>,
    #[cfg(costguard_loom)] Arc<T>,
);

impl<T> std::ops::Deref for SwapGuard<T> {
    type Target = Arc<T>;

    #[inline]
    fn deref(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T> SwapCell<T> {
    pub(crate) fn new(value: Arc<T>) -> Self {
        #[cfg(not(costguard_loom))]
        {
            SwapCell(arc_swap::ArcSwap::new(value))
        }
        #[cfg(costguard_loom)]
        {
            SwapCell(loom::sync::Mutex::new(value))
        }
    }

    /// The current value; the caller keeps it alive for as long as it needs it.
    pub(crate) fn load_full(&self) -> Arc<T> {
        #[cfg(not(costguard_loom))]
        {
            self.0.load_full()
        }
        #[cfg(costguard_loom)]
        {
            Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
        }
    }

    /// The current value, borrowed without a reference count (arc-swap's debt slot) for the length of
    /// one operation; clone the `Arc` out of it to keep the value longer.
    #[inline]
    pub(crate) fn load(&self) -> SwapGuard<T> {
        #[cfg(not(costguard_loom))]
        {
            SwapGuard(self.0.load())
        }
        #[cfg(costguard_loom)]
        {
            SwapGuard(self.load_full())
        }
    }

    pub(crate) fn store(&self, value: Arc<T>) {
        #[cfg(not(costguard_loom))]
        {
            self.0.store(value);
        }
        #[cfg(costguard_loom)]
        {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
        }
    }
}

//! Fault injection (feature `fault-injection`): makes the n-th exported call from now panic inside
//! its boundary, to show that a panic becomes `COSTGUARD_PANIC`, that guards held at the time are
//! released by unwinding, and that the engine keeps working.
//!
//! The chosen call panics at its first *checkpoint*: right after it acquires a handle (so the panic
//! unwinds through a live use of the table), or, for calls that acquire none, when its body is done.

#[cfg(feature = "fault-injection")]
use std::cell::Cell;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(feature = "fault-injection")]
static COUNTDOWN: AtomicU32 = AtomicU32::new(0);

#[cfg(feature = "fault-injection")]
thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Called first thing inside every boundary: marks this call if the countdown reaches it.
#[inline(always)]
pub(crate) fn enter() {
    #[cfg(feature = "fault-injection")]
    {
        let armed =
            COUNTDOWN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if armed == Ok(1) {
            PENDING.with(|p| p.set(true));
        }
    }
}

/// Whether an injected fault is pending or counting down: fast paths outside the boundary step
/// aside so that every call is counted. Always false without the feature.
#[inline(always)]
pub(crate) fn armed() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        COUNTDOWN.load(Ordering::Acquire) != 0 || PENDING.try_with(Cell::get).unwrap_or(true)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// A checkpoint: panics if this call was marked.
#[inline(always)]
pub(crate) fn point() {
    #[cfg(feature = "fault-injection")]
    if PENDING.with(|p| p.replace(false)) {
        panic!("costguard: injected fault");
    }
}

/// The `calls`-th exported call from now panics inside its boundary; 0 disarms.
#[cfg(feature = "fault-injection")]
#[no_mangle]
pub extern "C" fn costguard_debug_panic_after(calls: u32) {
    PENDING.with(|p| p.set(false));
    COUNTDOWN.store(calls, Ordering::Release);
}

//! `membarrier(2)`: the heavy half of the owner fast path's asymmetric fence.
//!
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED` makes every thread of this process that is running right now
//! execute a full memory barrier before the call returns. The process must register once; the result
//! is cached. A child of `fork()` registers again (registration is per address space).

use std::sync::atomic::{AtomicU32, Ordering};

const UNKNOWN: u32 = 0;
const AVAILABLE: u32 = 1;
const UNAVAILABLE: u32 = 2;

static STATE: AtomicU32 = AtomicU32::new(UNKNOWN);

const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

#[cfg(target_os = "linux")]
fn call(cmd: libc::c_long) -> bool {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_long,
            0 as libc::c_long,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn call(_cmd: libc::c_long) -> bool {
    false
}

/// Whether the fast path may be used (registers on first call).
pub(crate) fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        AVAILABLE => true,
        UNAVAILABLE => false,
        _ => {
            let ok = call(CMD_REGISTER_PRIVATE_EXPEDITED) && call(CMD_PRIVATE_EXPEDITED);
            STATE.store(if ok { AVAILABLE } else { UNAVAILABLE }, Ordering::Release);
            ok
        }
    }
}

/// Runs the barrier; false if it could not (then no handle has an owner).
pub(crate) fn barrier() -> bool {
    available() && call(CMD_PRIVATE_EXPEDITED)
}

/// In the child of a fork: register again on next use.
pub(crate) fn forget_registration() {
    STATE.store(UNKNOWN, Ordering::Relaxed);
}

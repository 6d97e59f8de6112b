//! The C ABI of costguard.
//!
//! Every function here is `extern "C"`, runs inside a panic boundary ([`panic`]), NULL-checks its
//! pointers, takes strings as `(pointer, length)` validated as UTF-8, returns a stable
//! [`costguard_status`] and writes its outputs only on success. Objects are
//! reached through generation-checked handles ([`handle`]), so that a double free, a use after free, a
//! handle of another kind or engine, or a made-up value is an error code rather than undefined
//! behaviour. The contract is `ffi/API.md`; the header `include/costguard.h` is generated from this
//! crate by cbindgen (`ffi/tests/header.rs` fails when it drifts).
//!
//! ```c
//! costguard_engine engine;
//! if (costguard_engine_new_from_file(path, strlen(path), 0, &engine) != COSTGUARD_OK) { ... }
//! costguard_counter lookups; costguard_class parse; costguard_budget budget; costguard_verdict v;
//! costguard_engine_counter(engine, "file_lookups", 12, &lookups);
//! costguard_engine_class(engine, "parse", 5, &parse);
//! costguard_budget_begin(engine, parse, "edit-42", 7, NULL, 0, &budget, &v);
//! if (costguard_budget_charge(budget, lookups, 1, &v) == COSTGUARD_REFUSED) { ... }
//! costguard_budget_free(budget);
//! costguard_engine_free(engine);
//! ```
//!
//! Under `--cfg costguard_loom` only the handle table is built, for its loom model.

#![deny(unsafe_op_in_unsafe_fn)]
// Verdicts pass through by value, as in the core: boxing them would allocate on refusal paths.
#![allow(clippy::result_large_err)]
#![cfg_attr(costguard_loom, allow(dead_code))]

#[doc(hidden)]
pub mod handle;
mod sync;

#[cfg(not(costguard_loom))]
mod admission;
#[cfg(not(costguard_loom))]
mod backend;
#[cfg(not(costguard_loom))]
mod budget;
#[cfg(not(costguard_loom))]
mod engine;
#[cfg(not(costguard_loom))]
mod fault;
#[cfg(not(costguard_loom))]
mod fork;
#[cfg(not(costguard_loom))]
mod header;
#[cfg(not(costguard_loom))]
mod membarrier;
#[cfg(not(costguard_loom))]
mod names;
#[cfg(not(costguard_loom))]
mod object;
#[cfg(not(costguard_loom))]
mod panic;
#[cfg(not(costguard_loom))]
mod stats;
#[cfg(not(costguard_loom))]
mod status;
#[cfg(not(costguard_loom))]
mod text;
#[cfg(not(costguard_loom))]
mod types;
#[cfg(not(costguard_loom))]
mod verdict;

#[cfg(not(costguard_loom))]
pub use {
    admission::*, backend::*, budget::*, engine::*, header::*, status::*, text::*, types::*,
    verdict::*,
};

#[cfg(all(not(costguard_loom), feature = "fault-injection"))]
pub use fault::costguard_debug_panic_after;

/// The library version, `"0.1.0"` (static, NUL-terminated).
#[cfg(not(costguard_loom))]
#[no_mangle]
pub extern "C" fn costguard_version() -> *const std::ffi::c_char {
    panic::boundary_value(c"0.1.0".as_ptr(), || c"0.1.0".as_ptr())
}

/// The ABI version: 2. Bumped on any incompatible change to the header (2: a verdict's
/// `dimension` holds a whole host name).
#[cfg(not(costguard_loom))]
#[no_mangle]
pub extern "C" fn costguard_abi_version() -> u32 {
    panic::boundary_value(2, || 2)
}

/// Test support (not part of the C ABI).
#[cfg(not(costguard_loom))]
#[doc(hidden)]
pub mod testing {
    pub use crate::engine::hold_engine_lock_for_test;

    /// Live handles in the global table.
    pub fn live_handles() -> usize {
        crate::object::TABLE.live()
    }
}

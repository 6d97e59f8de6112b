//! The panic boundary: every exported function runs its body here.
//!
//! Unwinding into C is undefined behaviour (or an abort), and a bug in one call must not take a PHP
//! worker down. A panic is caught, its message becomes this thread's last error, and the call returns
//! `COSTGUARD_PANIC`. Guards held by the body (handle uses, grants) are released by unwinding, so the
//! handle table and the engine stay consistent and later calls work.

use crate::status::Status;
use crate::text;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs `body` inside the boundary.
#[inline(always)]
pub(crate) fn boundary(body: impl FnOnce() -> Status) -> Status {
    match catch_unwind(AssertUnwindSafe(|| {
        crate::fault::enter();
        let status = body();
        crate::fault::point();
        status
    })) {
        Ok(status) => status,
        Err(payload) => {
            let msg = message(&*payload);
            // Dropping the payload may itself panic (a payload with a panicking Drop): contain it.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            text::set_last_error(format!("panic inside costguard: {msg}"));
            Status::COSTGUARD_PANIC
        }
    }
}

/// Runs `body` inside the boundary for functions that return a value rather than a status.
pub(crate) fn boundary_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| {
        crate::fault::enter();
        let v = body();
        crate::fault::point();
        v
    })) {
        Ok(v) => v,
        Err(payload) => {
            let msg = message(&*payload);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            text::set_last_error(format!("panic inside costguard: {msg}"));
            fallback
        }
    }
}

/// `?` for statuses inside bodies.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return status,
        }
    };
}
pub(crate) use check;

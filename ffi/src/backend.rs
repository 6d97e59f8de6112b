//! Backend attempts (begin, connected, finish), the retry decision and HTTP classification.

use crate::object::{self, claim_attempt, with_attempt, with_budget, with_engine, Object};
use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use crate::text::{self, required, TextOut};
use crate::types::*;
use crate::verdict::{costguard_verdict, refused};
use costguard::{Attempt, AttemptOutcome, Budget, RetryDecision, Verdict};
use std::ffi::c_char;
use std::sync::Mutex;
use std::time::Duration;

/// It succeeded.
pub const COSTGUARD_ATTEMPT_SUCCESS: u32 = 0;
/// The request was wrong (a 4xx).
pub const COSTGUARD_ATTEMPT_CLIENT_ERROR: u32 = 1;
/// The backend failed (a 5xx).
pub const COSTGUARD_ATTEMPT_SERVER_ERROR: u32 = 2;
/// This attempt timed out.
pub const COSTGUARD_ATTEMPT_TIMEOUT: u32 = 3;
/// The backend reported that its own dependency timed out (a 504).
pub const COSTGUARD_ATTEMPT_UPSTREAM_TIMEOUT: u32 = 4;
/// Connecting failed.
pub const COSTGUARD_ATTEMPT_CONNECT_FAILURE: u32 = 5;
/// The backend refused (with `retry_after_ns`, `UINT64_MAX` = none).
pub const COSTGUARD_ATTEMPT_REFUSED: u32 = 6;
/// The caller gave up on it.
pub const COSTGUARD_ATTEMPT_CANCELLED: u32 = 7;

/// The value behind an attempt handle.
pub(crate) struct AttemptObj {
    /// Owned (`Attempt::into_owned`): the attempt outlives the call that began it.
    attempt: Mutex<Option<Attempt<'static>>>,
    timeout: Duration,
    host: String,
}

fn outcome_of(n: u32, retry_after_ns: u64) -> Result<AttemptOutcome, Status> {
    Ok(match n {
        COSTGUARD_ATTEMPT_SUCCESS => AttemptOutcome::Success,
        COSTGUARD_ATTEMPT_CLIENT_ERROR => AttemptOutcome::ClientError,
        COSTGUARD_ATTEMPT_SERVER_ERROR => AttemptOutcome::ServerError,
        COSTGUARD_ATTEMPT_TIMEOUT => AttemptOutcome::Timeout,
        COSTGUARD_ATTEMPT_UPSTREAM_TIMEOUT => AttemptOutcome::UpstreamTimeout,
        COSTGUARD_ATTEMPT_CONNECT_FAILURE => AttemptOutcome::ConnectFailure,
        COSTGUARD_ATTEMPT_REFUSED => AttemptOutcome::Refused {
            retry_after: (retry_after_ns != u64::MAX).then(|| Duration::from_nanos(retry_after_ns)),
        },
        COSTGUARD_ATTEMPT_CANCELLED => AttemptOutcome::Cancelled,
        _ => {
            text::set_last_error(format!("unknown attempt outcome {n}"));
            return Err(Status::COSTGUARD_INVALID_ARGUMENT);
        }
    })
}

fn number_of(o: AttemptOutcome) -> u32 {
    match o {
        AttemptOutcome::Success => COSTGUARD_ATTEMPT_SUCCESS,
        AttemptOutcome::ClientError => COSTGUARD_ATTEMPT_CLIENT_ERROR,
        AttemptOutcome::ServerError => COSTGUARD_ATTEMPT_SERVER_ERROR,
        AttemptOutcome::Timeout => COSTGUARD_ATTEMPT_TIMEOUT,
        AttemptOutcome::UpstreamTimeout => COSTGUARD_ATTEMPT_UPSTREAM_TIMEOUT,
        AttemptOutcome::ConnectFailure => COSTGUARD_ATTEMPT_CONNECT_FAILURE,
        AttemptOutcome::Refused { .. } => COSTGUARD_ATTEMPT_REFUSED,
        _ => COSTGUARD_ATTEMPT_CANCELLED,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `f` with the engine's core engine and the budget, checking that both belong together.
fn with_engine_and_budget<R>(
    e: costguard_engine,
    budget: costguard_budget,
    f: impl FnOnce(&crate::engine::EngineObj, &costguard::Engine, &Budget) -> Result<R, Status>,
) -> Result<R, Status> {
    if e.bits == 0 || budget.bits == 0 {
        return Err(Status::COSTGUARD_NULL_ARGUMENT);
    }
    with_engine(e.bits, |eng| {
        with_budget(budget.bits, |b| {
            if b.serial != eng.serial {
                return Err(Status::COSTGUARD_INVALID_HANDLE);
            }
            f(eng, &eng.state().engine, &b.budget)
        })?
    })?
}

fn begin(
    result: Result<Result<Attempt<'static>, Verdict>, Status>,
    out: std::ptr::NonNull<costguard_attempt>,
    verdict: *mut costguard_verdict,
) -> Status {
    match check!(result) {
        Ok(a) => {
            let obj = AttemptObj {
                timeout: a.timeout(),
                host: a.host().unwrap_or("").to_owned(),
                attempt: Mutex::new(Some(a)),
            };
            let bits = check!(object::insert(object::ATTEMPT, Object::Attempt(obj), None));
            // SAFETY: non-null and writable (the caller's contract).
            unsafe { out.as_ptr().write(costguard_attempt { bits }) };
            Status::COSTGUARD_OK
        }
        // SAFETY: the caller's contract.
        Err(v) => unsafe { refused(verdict, &v) },
    }
}

/// Begins an attempt at a backend for the request `budget` belongs to; `retry` is 0 for a first
/// attempt, else the retry number. Chooses a healthy host when the backend has a pool.
///
/// # Safety
/// `out` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_attempt_begin(
    e: costguard_engine,
    b: costguard_backend,
    budget: costguard_budget,
    retry: u32,
    out: *mut costguard_attempt,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let result = with_engine_and_budget(e, budget, |eng, engine, budget| {
            let backend = eng.state().names.backend(eng.serial, b.bits)?;
            Ok(engine
                .begin_attempt(backend, budget, retry)
                .map(Attempt::into_owned))
        });
        begin(result, out, verdict)
    })
}

/// Begins an attempt on one host of a pool.
///
/// # Safety
/// `out` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_attempt_begin_on(
    e: costguard_engine,
    h: costguard_host,
    budget: costguard_budget,
    retry: u32,
    out: *mut costguard_attempt,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let result = with_engine_and_budget(e, budget, |eng, engine, budget| {
            let host = eng.state().names.host(eng.serial, h.bits)?;
            Ok(engine
                .begin_attempt_on(host, budget, retry)
                .map(Attempt::into_owned))
        });
        begin(result, out, verdict)
    })
}

/// The timeout to use for this attempt, in nanoseconds.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_attempt_timeout_ns(
    a: costguard_attempt,
    out: *mut u64,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let t = check!(with_attempt(a.bits, |a| nanos(a.timeout)));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(t) };
        Status::COSTGUARD_OK
    })
}

/// The host chosen for this attempt (`""` without a pool).
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_attempt_host(
    a: costguard_attempt,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, len));
        let host = check!(with_attempt(a.bits, |a| a.host.clone()));
        // SAFETY: checked by `TextOut::new`.
        unsafe { out.write(&host) }
    })
}

/// The connection is established: releases the connect permits.
#[no_mangle]
pub extern "C" fn costguard_attempt_connected(a: costguard_attempt) -> costguard_status {
    boundary(|| {
        check!(with_attempt(a.bits, |a| {
            match a.attempt.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                Some(at) => {
                    at.connected();
                    Status::COSTGUARD_OK
                }
                None => Status::COSTGUARD_INVALID_HANDLE,
            }
        }))
    })
}

/// Records how the attempt ended, releases everything and frees it.
#[no_mangle]
pub extern "C" fn costguard_attempt_finish(
    a: costguard_attempt,
    outcome: u32,
    retry_after_ns: u64,
) -> costguard_status {
    boundary(|| {
        if a.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        let outcome = check!(outcome_of(outcome, retry_after_ns));
        check!(claim_attempt(a.bits, |a| {
            match a.attempt.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(at) => {
                    at.finish(outcome);
                    Status::COSTGUARD_OK
                }
                None => Status::COSTGUARD_INVALID_HANDLE,
            }
        }))
    })
}

/// Frees an attempt, finishing it as cancelled (as Rust's drop). The null handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_attempt_free(a: costguard_attempt) -> costguard_status {
    boundary(|| object::free(a.bits, object::ATTEMPT))
}

/// Classifies an HTTP status as an attempt outcome: 1xx-3xx success; 429 and 503 refused (the
/// response's Retry-After, if any, goes in `retry_after_ns` when finishing and retrying); 504
/// upstream timeout; 408 timeout; other 4xx client error; anything else (other 5xx, and numbers
/// outside 100-599) server error.
///
/// # Safety
/// `outcome` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_attempt_outcome_from_http(
    http_status: u16,
    outcome: *mut u32,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(outcome));
        let n = number_of(AttemptOutcome::from_http(http_status, None));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(n) };
        Status::COSTGUARD_OK
    })
}

/// May the request retry after an attempt ended with `outcome`? `COSTGUARD_OK`: yes, after
/// `*wait_ns`; `COSTGUARD_REFUSED`: stop, and the verdict says why. A yes takes one retry from the
/// request tree and one token from the backend.
///
/// # Safety
/// `wait_ns` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_retry(
    e: costguard_engine,
    b: costguard_backend,
    budget: costguard_budget,
    outcome: u32,
    retry_after_ns: u64,
    attempts: u32,
    wait_ns: *mut u64,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(wait_ns));
        if e.bits == 0 || budget.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        let outcome = check!(outcome_of(outcome, retry_after_ns));
        let decision = check!(with_engine_and_budget(e, budget, |eng, engine, budget| {
            let backend = eng.state().names.backend(eng.serial, b.bits)?;
            Ok(engine.retry(backend, budget, outcome, attempts))
        }));
        match decision {
            RetryDecision::After(d) => {
                // SAFETY: non-null and writable.
                unsafe { out.as_ptr().write(nanos(d)) };
                Status::COSTGUARD_OK
            }
            // SAFETY: the caller's contract.
            RetryDecision::Stop(v) => unsafe { refused(verdict, &v) },
        }
    })
}

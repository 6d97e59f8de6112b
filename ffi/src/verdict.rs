//! Verdicts in C: a flat struct with fixed-size, NUL-terminated names, so that a refusal is
//! reported without allocation or anything to free, and its sentence (Rust's `Display`) on request.

use crate::panic::{boundary, boundary_value, check};
use crate::status::{costguard_status, Status};
use crate::text::{required_const, TextOut};
use costguard::{Reason, RequestId, Retry, Unit, Verdict};
use std::ffi::c_char;
use std::time::Duration;

/// A refusal: which limit said no, by how much, for which request, and whether to retry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct costguard_verdict {
    /// `COSTGUARD_REASON_*`.
    pub reason: u32,
    /// `COSTGUARD_RETRY_NEVER`, `COSTGUARD_RETRY_LATER` or `COSTGUARD_RETRY_AFTER`.
    pub retry: u32,
    /// For `COSTGUARD_RETRY_AFTER`; `UINT64_MAX` otherwise.
    pub retry_after_ns: u64,
    /// The amount asked for.
    pub requested: u64,
    /// The amount in use when refused.
    pub used: u64,
    /// The limit that refused.
    pub limit: u64,
    /// `COSTGUARD_UNIT_COUNT`, `COSTGUARD_UNIT_BYTES` or `COSTGUARD_UNIT_NANOS`.
    pub unit: u32,
    /// The class, NUL-terminated; `""` when none.
    pub class_name: [c_char; 33],
    /// The dimension, NUL-terminated; `""` when none. Sized for a host name, the longest name a
    /// verdict names here (an attempt on a host the request's policy lacks).
    pub dimension: [c_char; 254],
    /// The request id, NUL-terminated; `""` when none.
    pub request_id: [c_char; 65],
}

/// The amount does not fit in what is left of the limit.
pub const COSTGUARD_REASON_LIMIT_EXCEEDED: u32 = 0;
/// The amount is larger than the whole limit.
pub const COSTGUARD_REASON_CANNOT_FIT: u32 = 1;
/// The request's deadline has passed.
pub const COSTGUARD_REASON_DEADLINE_EXCEEDED: u32 = 2;
/// Too little time is left for the work.
pub const COSTGUARD_REASON_INSUFFICIENT_TIME: u32 = 3;
/// The budget was cancelled.
pub const COSTGUARD_REASON_CANCELLED: u32 = 4;
/// Child budgets nested too deep.
pub const COSTGUARD_REASON_TOO_DEEP: u32 = 5;
/// The class does not exist in the policy.
pub const COSTGUARD_REASON_UNKNOWN_CLASS: u32 = 6;
/// The class's concurrency limit is reached.
pub const COSTGUARD_REASON_CONCURRENCY_LIMIT: u32 = 7;
/// Shed by priority.
pub const COSTGUARD_REASON_SHED: u32 = 8;
/// The key has too many requests in flight.
pub const COSTGUARD_REASON_KEY_CONCURRENCY: u32 = 9;
/// The key is over its rate.
pub const COSTGUARD_REASON_RATE_LIMITED: u32 = 10;
/// A shared pool of cost in flight is full.
pub const COSTGUARD_REASON_POOL_EXHAUSTED: u32 = 11;
/// The class's wait queue is full.
pub const COSTGUARD_REASON_QUEUE_FULL: u32 = 12;
/// The request waited as long as it may.
pub const COSTGUARD_REASON_QUEUE_TIMEOUT: u32 = 13;
/// The key is too long.
pub const COSTGUARD_REASON_KEY_TOO_LONG: u32 = 14;
/// The circuit breaker is open.
pub const COSTGUARD_REASON_CIRCUIT_OPEN: u32 = 15;
/// The backend's calls in flight are at their cap.
pub const COSTGUARD_REASON_BULKHEAD_FULL: u32 = 16;
/// The backend's connection attempts are at their cap.
pub const COSTGUARD_REASON_CONNECT_LIMIT: u32 = 17;
/// No host of the pool is healthy and free.
pub const COSTGUARD_REASON_NO_HEALTHY_HOST: u32 = 18;
/// The backend's retry budget is empty.
pub const COSTGUARD_REASON_RETRY_BUDGET_EXHAUSTED: u32 = 19;
/// The outcome is not one that retrying can fix.
pub const COSTGUARD_REASON_NOT_RETRYABLE: u32 = 20;

/// Retrying cannot help.
pub const COSTGUARD_RETRY_NEVER: u32 = 0;
/// Retrying may succeed once other work finishes.
pub const COSTGUARD_RETRY_LATER: u32 = 1;
/// Retrying may succeed after `retry_after_ns`.
pub const COSTGUARD_RETRY_AFTER: u32 = 2;

/// Plain counts.
pub const COSTGUARD_UNIT_COUNT: u32 = 0;
/// Bytes.
pub const COSTGUARD_UNIT_BYTES: u32 = 1;
/// Nanoseconds.
pub const COSTGUARD_UNIT_NANOS: u32 = 2;

/// Every reason, by number.
const REASONS: [Reason; 21] = [
    Reason::LimitExceeded,
    Reason::CannotFit,
    Reason::DeadlineExceeded,
    Reason::InsufficientTime,
    Reason::Cancelled,
    Reason::TooDeep,
    Reason::UnknownClass,
    Reason::ConcurrencyLimit,
    Reason::Shed,
    Reason::KeyConcurrency,
    Reason::RateLimited,
    Reason::PoolExhausted,
    Reason::QueueFull,
    Reason::QueueTimeout,
    Reason::KeyTooLong,
    Reason::CircuitOpen,
    Reason::BulkheadFull,
    Reason::ConnectLimit,
    Reason::NoHealthyHost,
    Reason::RetryBudgetExhausted,
    Reason::NotRetryable,
];

const REASON_NAMES: [&std::ffi::CStr; 21] = [
    c"limit_exceeded",
    c"cannot_fit",
    c"deadline_exceeded",
    c"insufficient_time",
    c"cancelled",
    c"too_deep",
    c"unknown_class",
    c"concurrency_limit",
    c"shed",
    c"key_concurrency",
    c"rate_limited",
    c"pool_exhausted",
    c"queue_full",
    c"queue_timeout",
    c"key_too_long",
    c"circuit_open",
    c"bulkhead_full",
    c"connect_limit",
    c"no_healthy_host",
    c"retry_budget_exhausted",
    c"not_retryable",
];

/// The number of a reason (`u32::MAX` for one this build does not know, which cannot happen while
/// the table above is complete; the test `reasons_round_trip` checks it is).
pub(crate) fn reason_number(r: Reason) -> u32 {
    REASONS
        .iter()
        .position(|&x| x == r)
        .map_or(u32::MAX, |i| i as u32)
}

/// The size of [`costguard_verdict::dimension`] (written out there, for the header): the longest
/// host name and its NUL.
const DIMENSION_LEN: usize = 254;
const _: () = assert!(DIMENSION_LEN == costguard::policy::MAX_HOST_LEN + 1);

fn copy_name<const N: usize>(dst: &mut [c_char; N], src: &str) {
    // Every name fits (class, backend, dimension and pool names are at most 32 bytes, host names
    // at most 253, request ids 64: checked by the core); truncate on a char boundary anyway.
    let mut n = src.len().min(N - 1);
    while !src.is_char_boundary(n) {
        n -= 1;
    }
    for (d, s) in dst.iter_mut().zip(&src.as_bytes()[..n]) {
        *d = *s as c_char;
    }
    dst[n] = 0;
}

fn name_of<const N: usize>(src: &[c_char; N]) -> String {
    let bytes: Vec<u8> = src
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl costguard_verdict {
    /// The C form of a verdict.
    pub fn from_verdict(v: &Verdict) -> Self {
        let (retry, retry_after_ns) = match v.retry() {
            Retry::Never => (COSTGUARD_RETRY_NEVER, u64::MAX),
            Retry::Later => (COSTGUARD_RETRY_LATER, u64::MAX),
            Retry::After(d) => (
                COSTGUARD_RETRY_AFTER,
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            ),
        };
        let mut out = costguard_verdict {
            reason: reason_number(v.reason()),
            retry,
            retry_after_ns,
            requested: v.requested(),
            used: v.used(),
            limit: v.limit(),
            unit: match v.unit() {
                Unit::Count => COSTGUARD_UNIT_COUNT,
                Unit::Bytes => COSTGUARD_UNIT_BYTES,
                Unit::Nanos => COSTGUARD_UNIT_NANOS,
            },
            class_name: [0; 33],
            dimension: [0; DIMENSION_LEN],
            request_id: [0; 65],
        };
        copy_name(&mut out.class_name, v.class().unwrap_or(""));
        copy_name(&mut out.dimension, v.dimension().unwrap_or(""));
        copy_name(
            &mut out.request_id,
            v.request_id().map_or("", |id| id.as_str()),
        );
        out
    }

    /// The sentence Rust's `Display` gives for the verdict this was made from: the verdict is
    /// rebuilt from its fields and the core library writes it, so the two cannot drift apart.
    pub fn sentence(&self) -> String {
        let Some(&reason) = REASONS.get(self.reason as usize) else {
            return format!("refused (unknown reason {})", self.reason);
        };
        let unit = match self.unit {
            COSTGUARD_UNIT_BYTES => Unit::Bytes,
            COSTGUARD_UNIT_NANOS => Unit::Nanos,
            _ => Unit::Count,
        };
        let retry = match self.retry {
            COSTGUARD_RETRY_NEVER => Retry::Never,
            COSTGUARD_RETRY_AFTER => Retry::After(Duration::from_nanos(self.retry_after_ns)),
            _ => Retry::Later,
        };
        let (class, dim, id) = (
            name_of(&self.class_name),
            name_of(&self.dimension),
            name_of(&self.request_id),
        );
        Verdict::from_parts(
            reason,
            retry,
            (!class.is_empty()).then_some(class.as_str()),
            (!dim.is_empty()).then_some(dim.as_str()),
            unit,
            [self.requested, self.used, self.limit],
            RequestId::new(&id).ok(),
        )
        .to_string()
    }
}

/// Writes a refusal to a nullable verdict pointer and returns `COSTGUARD_REFUSED`.
///
/// # Safety
/// `out` is NULL or points to a writable `costguard_verdict`.
pub(crate) unsafe fn refused(out: *mut costguard_verdict, v: &Verdict) -> Status {
    if !out.is_null() {
        // SAFETY: non-null and writable (caller's contract).
        unsafe { out.write(costguard_verdict::from_verdict(v)) };
    }
    Status::COSTGUARD_REFUSED
}

/// The stable snake_case name of a reason (static); `"unknown"` for numbers without one.
#[no_mangle]
pub extern "C" fn costguard_reason_name(reason: u32) -> *const c_char {
    boundary_value(c"unknown".as_ptr(), || {
        REASON_NAMES
            .get(reason as usize)
            .map_or(c"unknown", |n| n)
            .as_ptr()
    })
}

/// The sentence Rust's `Display` gives for the verdict.
///
/// # Safety
/// `verdict` points to a readable `costguard_verdict`; `buf` to `cap` writable bytes (or NULL with
/// `cap` 0); `len` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn costguard_verdict_describe(
    verdict: *const costguard_verdict,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let v = check!(required_const(verdict));
        let out = check!(TextOut::new(buf, cap, len));
        // SAFETY: non-null, and readable by the caller's contract; any bit pattern is a valid
        // `costguard_verdict` (integers and char arrays).
        let sentence = unsafe { v.as_ptr().read() }.sentence();
        // SAFETY: checked by `TextOut::new`.
        unsafe { out.write(&sentence) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_sentence_is_the_rust_sentence() {
        let retries = [
            Retry::Never,
            Retry::Later,
            Retry::After(Duration::from_millis(1500)),
        ];
        let units = [Unit::Count, Unit::Bytes, Unit::Nanos];
        for (i, &reason) in REASONS.iter().enumerate() {
            for amounts in [[1, 500, 500], [0, 9, 10], [u64::MAX, 0, 7]] {
                let retry = retries[i % 3];
                let (class, dim) = match i % 4 {
                    0 => (Some("parse"), Some("file_lookups")),
                    1 => (Some("api"), None),
                    2 => (None, Some("db_queries")),
                    _ => (None, None),
                };
                let id = (i % 2 == 0).then(|| RequestId::new("edit-2015").unwrap());
                let v = Verdict::from_parts(reason, retry, class, dim, units[i % 3], amounts, id);
                let c = costguard_verdict::from_verdict(&v);
                assert_eq!(c.sentence(), v.to_string(), "{reason:?} {amounts:?}");
            }
        }
    }

    #[test]
    fn reasons_round_trip() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(reason_number(*r), i as u32);
            assert_eq!(REASON_NAMES[i].to_str().unwrap(), r.as_str());
        }
    }
}

//! Budgets: begin (optionally from a propagation header), child budgets, charges, refunds,
//! reservations, levels, time left, cancellation, the header for the next hop and the limit report.

use crate::engine::EngineObj;
use crate::names::{self, Names};
use crate::object::{self, claim_reservation, with_budget, with_engine, Object};
use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use crate::text::{self, required, TextOut};
use crate::types::*;
use crate::verdict::{costguard_verdict, refused};
use costguard::header::{Propagation, Usage};
use costguard::{Budget, Counter, LevelGuard, RequestId, Reservation, Verdict};
use std::ffi::c_char;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The value behind a budget handle.
pub(crate) struct BudgetObj {
    pub(crate) budget: Budget,
    /// The engine's serial: names from other engines are refused.
    pub(crate) serial: u32,
    pub(crate) names: Arc<Names>,
    /// The engine's counters among its first names, copied when the handle is made: a charge finds
    /// its counter here, beside the budget, instead of through the engine's name list (three
    /// dependent loads, a third of a charge's cost through the C ABI). Names never change once
    /// resolved, so the copy cannot go stale; later names take the list.
    early: [Option<Counter>; names::EARLY],
}

impl BudgetObj {
    pub(crate) fn new(budget: Budget, serial: u32, names: Arc<Names>) -> Self {
        let early = names.early_counters();
        BudgetObj {
            budget,
            serial,
            names,
            early,
        }
    }

    #[inline(always)]
    pub(crate) fn counter(&self, c: costguard_counter) -> Result<Counter, Status> {
        match self.early_counter(c) {
            Some(counter) => Ok(counter),
            None => self.names.counter(self.serial, c.bits),
        }
    }

    /// `c`, when it is one of the counters resolved before this budget began (a copy kept in the
    /// budget: no lock, no lookup).
    #[inline(always)]
    pub(crate) fn early_counter(&self, c: costguard_counter) -> Option<Counter> {
        let (serial, kind, index) = names::decode(c.bits);
        if serial == self.serial && kind == names::COUNTER {
            if let Some(Some(counter)) = self.early.get(index as usize) {
                return Some(*counter);
            }
        }
        None
    }
}

/// A reservation, settled or cancelled once: whoever claims the handle takes it out.
pub(crate) struct ReservationObj(Mutex<Option<Reservation<'static>>>);

impl ReservationObj {
    /// Takes the reservation out (once).
    fn take(&self) -> Option<Reservation<'static>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A level guard: the core's owned guard, which leaves the level when dropped.
pub(crate) type LevelGuardObj = LevelGuard<'static>;

/// Stores a new budget, owned by this thread (see the fast path in [`crate::handle`]).
pub(crate) fn insert_budget(budget: Budget, serial: u32, names: Arc<Names>) -> Result<u64, Status> {
    object::insert(
        object::BUDGET,
        Object::Budget(BudgetObj::new(budget, serial, names)),
        object::owner(),
    )
}

/// A request id argument: 1..=64 bytes of UTF-8.
///
/// # Safety
/// As for [`text::string`].
pub(crate) unsafe fn request_id(ptr: *const c_char, len: usize) -> Result<RequestId, Status> {
    // SAFETY: forwarded.
    let s = unsafe { text::string(ptr, len) }?;
    RequestId::new(s).map_err(|e| {
        text::set_last_error(format!("request id: {e}"));
        Status::COSTGUARD_INVALID_ARGUMENT
    })
}

/// An optional propagation header argument.
///
/// # Safety
/// As for [`text::string`].
pub(crate) unsafe fn header(ptr: *const c_char, len: usize) -> Result<Option<Propagation>, Status> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: forwarded.
    let s = unsafe { text::header_string(ptr, len, "propagation header") }?;
    Propagation::decode(s).map(Some).map_err(|e| {
        text::set_last_error(format!("propagation header: {e}"));
        Status::COSTGUARD_HEADER_ERROR
    })
}

fn begin(
    eng: &EngineObj,
    c: costguard_class,
    id: RequestId,
    header: Option<&Propagation>,
) -> Result<Result<u64, Verdict>, Status> {
    let s = eng.state();
    let class = s.names.class(eng.serial, c.bits)?;
    let started = match header {
        Some(p) => s.engine.begin_propagated(class, id, p),
        None => s.engine.begin(class, id),
    };
    match started {
        Ok(b) => insert_budget(b, eng.serial, Arc::clone(&s.names)).map(Ok),
        Err(v) => Ok(Err(v)),
    }
}

/// Writes a new handle or the refusal.
///
/// # Safety
/// `out` is writable; `verdict` is NULL or writable.
unsafe fn deliver<T>(
    result: Result<u64, Verdict>,
    out: NonNull<T>,
    make: impl FnOnce(u64) -> T,
    verdict: *mut costguard_verdict,
) -> Status {
    match result {
        Ok(bits) => {
            // SAFETY: the caller's contract.
            unsafe { out.as_ptr().write(make(bits)) };
            Status::COSTGUARD_OK
        }
        // SAFETY: the caller's contract.
        Err(v) => unsafe { refused(verdict, &v) },
    }
}

/// Starts the budget of a request of class `c`, tightened by an optional incoming header.
///
/// # Safety
/// `request_id` points to `id_len` bytes, `header` to `header_len` (or NULL with 0); `out` is
/// writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_begin(
    e: costguard_engine,
    c: costguard_class,
    request_id: *const c_char,
    id_len: usize,
    header: *const c_char,
    header_len: usize,
    out: *mut costguard_budget,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        if e.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        // SAFETY: the caller's contract.
        let id = check!(unsafe { self::request_id(request_id, id_len) });
        // SAFETY: the caller's contract.
        let prop = check!(unsafe { self::header(header, header_len) });
        let result = check!(check!(with_engine(e.bits, |eng| begin(
            eng,
            c,
            id,
            prop.as_ref()
        ))));
        // SAFETY: the caller's contract.
        unsafe { deliver(result, out, |bits| costguard_budget { bits }, verdict) }
    })
}

/// A child budget, of the parent's class or of `class_`.
///
/// # Safety
/// `class_` is NULL or readable; `out` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_child(
    parent: costguard_budget,
    class_: *const costguard_class,
    out: *mut costguard_budget,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        // SAFETY: NULL or readable (the caller's contract).
        let class = (!class_.is_null()).then(|| unsafe { class_.read() });
        let result = check!(check!(with_budget(parent.bits, |b| {
            let child = match class {
                Some(c) => b.budget.child_in(b.names.class(b.serial, c.bits)?),
                None => b.budget.child(),
            };
            match child {
                Ok(child) => insert_budget(child, b.serial, Arc::clone(&b.names)).map(Ok),
                Err(v) => Ok(Err(v)),
            }
        })));
        // SAFETY: the caller's contract.
        unsafe { deliver(result, out, |bits| costguard_budget { bits }, verdict) }
    })
}

/// Frees a budget handle (the budget lives on in its children, grants and other handles). The null
/// handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_budget_free(b: costguard_budget) -> costguard_status {
    boundary(|| object::free(b.bits, object::BUDGET))
}

/// Charges `amount` of a counter, all or nothing, to the budget and every ancestor.
///
/// # Safety
/// `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_charge(
    b: costguard_budget,
    c: costguard_counter,
    amount: u64,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    if charge_owned(b.bits, c, amount) {
        return Status::COSTGUARD_OK;
    }
    // SAFETY: the caller's contract.
    unsafe { charge_full(b, c, amount, verdict) }
}

/// The common case of `costguard_budget_charge`, outside the panic boundary: a root budget this
/// thread made, a counter resolved before the budget began, and a charge that fits. Nothing here
/// can panic (handle checks, a thread-local read, atomics; no calls), so it needs no boundary, and
/// the exported function needs no stack frame for it. `false` for anything else, which then takes
/// the full path; a refused charge changed nothing, so trying it there again is sound.
#[inline(always)]
fn charge_owned(b: u64, c: costguard_counter, amount: u64) -> bool {
    if crate::fault::armed() {
        return false;
    }
    let Some(r) = object::owned_budget(b) else {
        return false;
    };
    let Object::Budget(b) = &*r else {
        return false;
    };
    b.early_counter(c)
        .and_then(|counter| b.budget.try_charge_bare(counter, amount))
        .unwrap_or(false)
}

/// `costguard_budget_charge` inside the panic boundary, for every case.
///
/// # Safety
/// `verdict` is NULL or writable.
#[inline(never)]
unsafe extern "C" fn charge_full(
    b: costguard_budget,
    c: costguard_counter,
    amount: u64,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        check!(with_budget(b.bits, |b| {
            let counter = check!(b.counter(c));
            match b.budget.try_charge(counter, amount) {
                Ok(()) => Status::COSTGUARD_OK,
                // SAFETY: the caller's contract.
                Err(v) => unsafe { refused(verdict, &v) },
            }
        }))
    })
}

/// A `(counter, amount)` pair for `costguard_budget_charge_many` and admission estimates.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct costguard_charge {
    /// The counter.
    pub counter: costguard_counter,
    /// The amount.
    pub amount: u64,
}

/// Charges several counters at once, all or nothing.
///
/// # Safety
/// `charges` points to `n` readable charges (or is NULL with `n` 0); `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_charge_many(
    b: costguard_budget,
    charges: *const costguard_charge,
    n: usize,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let charges = check!(unsafe { slice(charges, n) });
        check!(with_budget(b.bits, |b| {
            let mut list = Vec::with_capacity(charges.len());
            for ch in charges {
                list.push((check!(b.counter(ch.counter)), ch.amount));
            }
            match b.budget.try_charge_many(&list) {
                Ok(()) => Status::COSTGUARD_OK,
                // SAFETY: the caller's contract.
                Err(v) => unsafe { refused(verdict, &v) },
            }
        }))
    })
}

/// A `(pointer, count)` array argument; NULL is allowed when the count is 0.
///
/// # Safety
/// When not NULL, `p` points to `n` readable, initialized values.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize) -> Result<&'a [T], Status> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Status::COSTGUARD_NULL_ARGUMENT);
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|bytes| bytes > isize::MAX as usize)
    {
        text::set_last_error(format!("array length {n} is larger than any array"));
        return Err(Status::COSTGUARD_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, `n` values readable (the caller's contract), size checked.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Gives back up to `amount` of a counter charged through this budget; `*refunded` says how much.
///
/// # Safety
/// `refunded` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_refund(
    b: costguard_budget,
    c: costguard_counter,
    amount: u64,
    refunded: *mut u64,
) -> costguard_status {
    boundary(|| {
        let n = check!(check!(with_budget(b.bits, |b| b
            .counter(c)
            .map(|counter| b.budget.refund(counter, amount)))));
        if !refunded.is_null() {
            // SAFETY: non-null and writable.
            unsafe { refunded.write(n) };
        }
        Status::COSTGUARD_OK
    })
}

/// Takes one retry from the request tree's allowance.
///
/// # Safety
/// `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_try_retry(
    b: costguard_budget,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        check!(with_budget(b.bits, |b| match b.budget.try_retry() {
            Ok(()) => Status::COSTGUARD_OK,
            // SAFETY: the caller's contract.
            Err(v) => unsafe { refused(verdict, &v) },
        }))
    })
}

/// Charges an estimate now, to be settled later.
///
/// # Safety
/// `out` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_reserve(
    b: costguard_budget,
    c: costguard_counter,
    estimate: u64,
    out: *mut costguard_reservation,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let result = check!(check!(with_budget(b.bits, |b| {
            let counter = b.counter(c)?;
            match b.budget.reserve_owned(counter, estimate) {
                Ok(r) => {
                    let obj = ReservationObj(Mutex::new(Some(r)));
                    object::insert(object::RESERVATION, Object::Reservation(obj), None).map(Ok)
                }
                Err(v) => Ok(Err(v)),
            }
        })));
        // SAFETY: the caller's contract.
        unsafe { deliver(result, out, |bits| costguard_reservation { bits }, verdict) }
    })
}

/// Settles a reservation to `actual` (refunds the difference, or charges the excess all or nothing).
/// Frees the reservation whatever the result.
///
/// # Safety
/// `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_reservation_settle(
    r: costguard_reservation,
    actual: u64,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        check!(claim_reservation(r.bits, |held| match held.take() {
            Some(res) => match res.settle(actual) {
                Ok(()) => Status::COSTGUARD_OK,
                // SAFETY: the caller's contract.
                Err(v) => unsafe { refused(verdict, &v) },
            },
            None => Status::COSTGUARD_INVALID_HANDLE,
        }))
    })
}

/// Frees a reservation, keeping the estimate charged (as Rust's drop). The null handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_reservation_free(r: costguard_reservation) -> costguard_status {
    boundary(|| object::free(r.bits, object::RESERVATION))
}

/// Gives the whole estimate back and frees the reservation.
#[no_mangle]
pub extern "C" fn costguard_reservation_cancel(r: costguard_reservation) -> costguard_status {
    boundary(|| {
        check!(claim_reservation(r.bits, |held| match held.take() {
            Some(res) => {
                res.cancel();
                Status::COSTGUARD_OK
            }
            None => Status::COSTGUARD_INVALID_HANDLE,
        }))
    })
}

/// Raises a level by `n` until the guard is freed.
///
/// # Safety
/// `out` is writable; `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_enter(
    b: costguard_budget,
    l: costguard_level,
    n: u64,
    out: *mut costguard_level_guard,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let result = check!(check!(with_budget(b.bits, |b| {
            let level = b.names.level(b.serial, l.bits)?;
            match b.budget.enter_owned(level, n) {
                Ok(guard) => {
                    object::insert(object::LEVEL_GUARD, Object::LevelGuard(guard), None).map(Ok)
                }
                Err(v) => Ok(Err(v)),
            }
        })));
        // SAFETY: the caller's contract.
        unsafe { deliver(result, out, |bits| costguard_level_guard { bits }, verdict) }
    })
}

/// Leaves the level (frees the guard). The null handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_level_guard_free(g: costguard_level_guard) -> costguard_status {
    boundary(|| object::free(g.bits, object::LEVEL_GUARD))
}

/// Reads one value of a budget into a required out-pointer.
///
/// # Safety
/// `out` is writable.
unsafe fn read<T>(
    b: costguard_budget,
    out: *mut T,
    f: impl FnOnce(&BudgetObj) -> Result<T, Status>,
) -> Status {
    let out = check!(required(out));
    let v = check!(check!(with_budget(b.bits, f)));
    // SAFETY: non-null and writable.
    unsafe { out.as_ptr().write(v) };
    Status::COSTGUARD_OK
}

/// The amount of a counter charged through this budget.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_used(
    b: costguard_budget,
    c: costguard_counter,
    out: *mut u64,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe { read(b, out, |b| Ok(b.budget.used(b.counter(c)?))) })
}

/// How much of a counter can still be charged (`UINT64_MAX` if nothing limits it).
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_remaining_of(
    b: costguard_budget,
    c: costguard_counter,
    out: *mut u64,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe { read(b, out, |b| Ok(b.budget.remaining_of(b.counter(c)?))) })
}

/// The current value of a level in this budget.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_level(
    b: costguard_budget,
    l: costguard_level,
    out: *mut u64,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe {
        read(b, out, |b| {
            Ok(b.budget.level(b.names.level(b.serial, l.bits)?))
        })
    })
}

fn nanos(d: Duration) -> u64 {
    if d == Duration::MAX {
        u64::MAX
    } else {
        u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1)
    }
}

/// Time left until the deadline, in nanoseconds (`UINT64_MAX`: no deadline).
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_remaining_ns(
    b: costguard_budget,
    out: *mut u64,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe { read(b, out, |b| Ok(nanos(b.budget.remaining()))) })
}

/// Whether the deadline has passed.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_expired(
    b: costguard_budget,
    out: *mut bool,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe { read(b, out, |b| Ok(b.budget.expired())) })
}

/// Whether the budget is cancelled (a counter ran out, the deadline passed, or it was cancelled).
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_is_cancelled(
    b: costguard_budget,
    out: *mut bool,
) -> costguard_status {
    // SAFETY: the caller's contract.
    boundary(|| unsafe { read(b, out, |b| Ok(b.budget.is_cancelled())) })
}

/// `COSTGUARD_OK` while work may go on, else `COSTGUARD_REFUSED` with the verdict that says why.
///
/// # Safety
/// `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_check(
    b: costguard_budget,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        check!(with_budget(b.bits, |b| match b.budget.check() {
            Ok(()) => Status::COSTGUARD_OK,
            // SAFETY: the caller's contract.
            Err(v) => unsafe { refused(verdict, &v) },
        }))
    })
}

/// Cancels the budget and every descendant.
#[no_mangle]
pub extern "C" fn costguard_budget_cancel(b: costguard_budget) -> costguard_status {
    boundary(|| {
        check!(with_budget(b.bits, |b| {
            b.budget.cancel();
            Status::COSTGUARD_OK
        }))
    })
}

/// Writes text made from a budget.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
unsafe fn budget_text(
    b: costguard_budget,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    f: impl FnOnce(&Budget) -> String,
) -> Status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, len));
        let s = check!(with_budget(b.bits, |b| f(&b.budget)));
        // SAFETY: checked by `TextOut::new`.
        unsafe { out.write(&s) }
    })
}

/// The propagation header value for a callee (`cg1;id=...`).
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_to_header(
    b: costguard_budget,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe { budget_text(b, buf, cap, len, Budget::to_header) }
}

/// What this budget (and its children) used, as the usage header value its caller in another
/// process charges with `costguard_budget_charge_usage` (`cgu1;retries=2;file_lookups=120`: the
/// retries and counters used, those at zero left out).
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_usage(
    b: costguard_budget,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe { budget_text(b, buf, cap, len, |b| b.usage().encode()) }
}

/// Charges the usage a callee in another process answered with (its usage header value) to this
/// budget, so that the tree's retry allowance and limits hold across the hop. Counters this
/// policy does not know, levels and `cpu_time` are ignored. `COSTGUARD_HEADER_ERROR` for a
/// malformed value (an empty one, or one that is not UTF-8, included); `COSTGUARD_REFUSED` when the usage does not fit (a
/// callee that went past its header): each counter is charged as far as the limits allow (an
/// allowance the callee overran is used up), the budget is cancelled, and the verdict says which
/// limit the callee went past.
///
/// # Safety
/// `value` points to `len` readable bytes (or is NULL with `len` 0); `verdict` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_charge_usage(
    b: costguard_budget,
    value: *const c_char,
    len: usize,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = check!(unsafe { text::header_string(value, len, "usage header") });
        let usage = check!(Usage::decode(s).map_err(|e| {
            text::set_last_error(format!("usage header: {e}"));
            Status::COSTGUARD_HEADER_ERROR
        }));
        check!(with_budget(b.bits, |b| {
            match b.budget.charge_usage(&usage) {
                Ok(()) => Status::COSTGUARD_OK,
                // SAFETY: the caller's contract.
                Err(v) => unsafe { refused(verdict, &v) },
            }
        }))
    })
}

/// The limit report as JSON.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_report_json(
    b: costguard_budget,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe { budget_text(b, buf, cap, len, |b| b.report().to_json()) }
}

/// The limit report as text.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_budget_report_text(
    b: costguard_budget,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe { budget_text(b, buf, cap, len, |b| b.report().to_string()) }
}

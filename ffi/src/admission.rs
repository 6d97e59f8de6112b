//! Admission: admit a request (try, or wait in the class's queue) and finish or free its grant.

use crate::budget::{self, costguard_charge, insert_budget, slice};
use crate::names::Names;
use crate::object::{self, claim_grant, with_engine, with_grant, Object};
use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use crate::text::{self, required, required_const};
use crate::types::*;
use crate::verdict::{costguard_verdict, refused};
use costguard::{AdmitRequest, Admitted, Outcome, Priority};
use std::ffi::c_char;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The class's default priority.
pub const COSTGUARD_PRIORITY_DEFAULT: u32 = 0;
/// Work the site cannot do without.
pub const COSTGUARD_PRIORITY_CRITICAL: u32 = 1;
/// Ordinary interactive traffic.
pub const COSTGUARD_PRIORITY_NORMAL: u32 = 2;
/// Work that may be refused under load.
pub const COSTGUARD_PRIORITY_SHEDDABLE: u32 = 3;
/// Batch and maintenance work.
pub const COSTGUARD_PRIORITY_BACKGROUND: u32 = 4;

/// Admission flag: wait in the class's queue (blocks) instead of trying only.
pub const COSTGUARD_ADMIT_WAIT: u32 = 1;

/// The request succeeded.
pub const COSTGUARD_OUTCOME_SUCCESS: u32 = 0;
/// It failed because of the request itself (a 4xx).
pub const COSTGUARD_OUTCOME_CLIENT_ERROR: u32 = 1;
/// It failed in a way that suggests overload (a 5xx, a timeout).
pub const COSTGUARD_OUTCOME_OVERLOAD: u32 = 2;
/// It was cancelled before it finished.
pub const COSTGUARD_OUTCOME_CANCELLED: u32 = 3;

/// A request to admit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct costguard_admit_request {
    /// The class.
    pub class_: costguard_class,
    /// Required: 1..64 bytes, as `RequestId::new`.
    pub request_id: *const c_char,
    /// Length of `request_id`.
    pub request_id_len: usize,
    /// Optional per-key fairness key; length 0 = none.
    pub key: *const c_char,
    /// Length of `key`.
    pub key_len: usize,
    /// `COSTGUARD_PRIORITY_*`.
    pub priority: u32,
    /// `COSTGUARD_ADMIT_*`.
    pub flags: u32,
    /// Optional declared estimates.
    pub estimates: *const costguard_charge,
    /// Number of `estimates`.
    pub estimates_len: usize,
    /// Cost charged to the key's rate; 0 = the default (1).
    pub rate_cost: u64,
    /// Optional incoming propagation header (malformed, or not UTF-8: `COSTGUARD_HEADER_ERROR`).
    pub header: *const c_char,
    /// Length of `header`; 0 = none.
    pub header_len: usize,
}

const NO_OUTCOME: u32 = u32::MAX;

/// The value behind a grant handle.
pub(crate) struct GrantObj {
    admitted: Mutex<Option<Admitted>>,
    outcome: AtomicU32,
    serial: u32,
    names: Arc<Names>,
}

impl Drop for GrantObj {
    fn drop(&mut self) {
        let outcome = *self.outcome.get_mut();
        if let Some(mut admitted) = self
            .admitted
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if let Some(o) = outcome_of(outcome) {
                admitted.set_outcome(o);
            }
        }
    }
}

fn outcome_of(n: u32) -> Option<Outcome> {
    Some(match n {
        COSTGUARD_OUTCOME_SUCCESS => Outcome::Success,
        COSTGUARD_OUTCOME_CLIENT_ERROR => Outcome::ClientError,
        COSTGUARD_OUTCOME_OVERLOAD => Outcome::Overload,
        COSTGUARD_OUTCOME_CANCELLED => Outcome::Cancelled,
        _ => return None,
    })
}

fn priority_of(n: u32) -> Result<Option<Priority>, Status> {
    Ok(match n {
        COSTGUARD_PRIORITY_DEFAULT => None,
        COSTGUARD_PRIORITY_CRITICAL => Some(Priority::Critical),
        COSTGUARD_PRIORITY_NORMAL => Some(Priority::Normal),
        COSTGUARD_PRIORITY_SHEDDABLE => Some(Priority::Sheddable),
        COSTGUARD_PRIORITY_BACKGROUND => Some(Priority::Background),
        _ => {
            text::set_last_error(format!("unknown priority {n}"));
            return Err(Status::COSTGUARD_INVALID_ARGUMENT);
        }
    })
}

/// Admits a request now (or after waiting, with `COSTGUARD_ADMIT_WAIT`), or refuses it.
///
/// # Safety
/// `request` points to a readable request whose pointers satisfy their lengths; `out` is writable;
/// `verdict` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_admit(
    e: costguard_engine,
    request: *const costguard_admit_request,
    out: *mut costguard_grant,
    verdict: *mut costguard_verdict,
) -> costguard_status {
    boundary(|| {
        let req = check!(required_const(request));
        let out = check!(required(out));
        if e.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        // SAFETY: non-null and readable (the caller's contract).
        let req = unsafe { req.as_ptr().read() };
        // SAFETY: the caller's contract, for each (pointer, length) pair.
        let id = check!(unsafe { budget::request_id(req.request_id, req.request_id_len) });
        // SAFETY: as above.
        let key = check!(unsafe { text::bytes(req.key, req.key_len) });
        // SAFETY: as above.
        let estimates = check!(unsafe { slice(req.estimates, req.estimates_len) });
        // SAFETY: as above.
        let prop = check!(unsafe { budget::header(req.header, req.header_len) });
        let priority = check!(priority_of(req.priority));
        if req.flags & !COSTGUARD_ADMIT_WAIT != 0 {
            text::set_last_error(format!("unknown admission flags {:#x}", req.flags));
            return Status::COSTGUARD_INVALID_ARGUMENT;
        }
        let result = check!(check!(with_engine(e.bits, |eng| {
            let s = eng.state();
            let class = s.names.class(eng.serial, req.class_.bits)?;
            let overrides = prop.as_ref().map(|p| p.overrides(&s.engine));
            let id = prop.as_ref().and_then(|p| p.request_id()).unwrap_or(id);
            let mut r = AdmitRequest::new(class, id);
            if let Some(p) = priority {
                r = r.priority(p);
            }
            if !key.is_empty() {
                r = r.key(key);
            }
            for est in estimates {
                r = r.estimate(s.names.counter(eng.serial, est.counter.bits)?, est.amount);
            }
            if req.rate_cost != 0 {
                r = r.rate_cost(req.rate_cost);
            }
            if let Some(o) = &overrides {
                r = r.overrides(o);
            }
            let admitted = if req.flags & COSTGUARD_ADMIT_WAIT != 0 {
                s.engine.admit(&r)
            } else {
                s.engine.try_admit(&r)
            };
            match admitted {
                Ok(a) => object::insert(
                    object::GRANT,
                    Object::Grant(GrantObj {
                        admitted: Mutex::new(Some(a)),
                        outcome: AtomicU32::new(NO_OUTCOME),
                        serial: eng.serial,
                        names: Arc::clone(&s.names),
                    }),
                    None,
                )
                .map(Ok),
                Err(v) => Ok(Err(v)),
            }
        })));
        match result {
            Ok(bits) => {
                // SAFETY: non-null and writable.
                unsafe { out.as_ptr().write(costguard_grant { bits }) };
                Status::COSTGUARD_OK
            }
            // SAFETY: the caller's contract.
            Err(v) => unsafe { refused(verdict, &v) },
        }
    })
}

/// A new budget handle on the grant's budget (free it separately).
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_grant_budget(
    g: costguard_grant,
    out: *mut costguard_budget,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let bits = check!(check!(with_grant(g.bits, |g| {
            let budget = g
                .admitted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|a| a.budget().clone())
                .ok_or(Status::COSTGUARD_INVALID_HANDLE)?;
            insert_budget(budget, g.serial, Arc::clone(&g.names))
        })));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(costguard_budget { bits }) };
        Status::COSTGUARD_OK
    })
}

/// Records how the request ended, releases everything and frees the grant.
#[no_mangle]
pub extern "C" fn costguard_grant_finish(g: costguard_grant, outcome: u32) -> costguard_status {
    boundary(|| {
        if g.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        if outcome_of(outcome).is_none() {
            text::set_last_error(format!("unknown outcome {outcome}"));
            return Status::COSTGUARD_INVALID_ARGUMENT;
        }
        check!(claim_grant(g.bits, |g| g
            .outcome
            .store(outcome, Ordering::Release)));
        Status::COSTGUARD_OK
    })
}

/// Releases everything and frees the grant (as Rust's drop). The null handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_grant_free(g: costguard_grant) -> costguard_status {
    boundary(|| object::free(g.bits, object::GRANT))
}

//! What the handle table holds, and the one global table of the C ABI.
//!
//! Every handle kind is a variant of [`Object`]; the kind tag in the handle picks the variant, and
//! the accessors here turn a handle into a short-lived use of its value or a status.

use crate::admission::GrantObj;
use crate::backend::AttemptObj;
use crate::budget::{BudgetObj, LevelGuardObj, ReservationObj};
use crate::engine::EngineObj;
use crate::handle::{Record, Ref, Refused, Table};
use crate::status::Status;
use std::cell::Cell;

/// Kind tags (4 bits in every handle).
pub(crate) const ENGINE: u8 = 1;
pub(crate) const BUDGET: u8 = 2;
pub(crate) const GRANT: u8 = 3;
pub(crate) const ATTEMPT: u8 = 4;
pub(crate) const RESERVATION: u8 = 5;
pub(crate) const LEVEL_GUARD: u8 = 6;

/// A value behind a handle.
pub(crate) enum Object {
    Engine(EngineObj),
    Budget(BudgetObj),
    Grant(GrantObj),
    Attempt(AttemptObj),
    Reservation(ReservationObj),
    // Held only for its `Drop`, which leaves the level.
    #[allow(dead_code)]
    LevelGuard(LevelGuardObj),
}

/// The C ABI's table.
pub(crate) static TABLE: Table<Object> = Table::new();

/// Gives this thread's record back when the thread exits. Touched only when the record is first
/// registered, so that the hot path reads a destructor-free thread-local.
struct Release(Cell<*const Record>);

impl Drop for Release {
    fn drop(&mut self) {
        let p = self.0.get();
        if !p.is_null() {
            let _ = ME.try_with(|m| m.set(std::ptr::null()));
            // SAFETY: records of the static table are never freed.
            unsafe { &*p }.release();
        }
    }
}

thread_local! {
    /// This thread's hazard record (null until registered).
    static ME: Cell<*const Record> = const { Cell::new(std::ptr::null()) };
    static RELEASE: Release = const { Release(Cell::new(std::ptr::null())) };
}

/// This thread's record (registered on first use), or `None` while the thread is exiting.
#[inline(always)]
pub(crate) fn me() -> Option<&'static Record> {
    let p = ME.with(Cell::get);
    if p.is_null() {
        return register();
    }
    // SAFETY: records of the static table are never freed.
    Some(unsafe { &*p })
}

#[cold]
fn register() -> Option<&'static Record> {
    // Without a place for the destructor (thread exiting), use no record: the counted path.
    RELEASE
        .try_with(|rel| {
            let r: &'static Record = TABLE.register();
            rel.0.set(r);
            ME.with(|m| m.set(r));
            r
        })
        .ok()
}

/// A use of a budget this thread owns, through the owner fast path alone (see
/// [`Table::try_owned`]): no registration, no counted path, nothing that can panic. `None` sends
/// the caller to the full path inside the panic boundary.
#[inline(always)]
pub(crate) fn owned_budget(handle: u64) -> Option<Ref<'static, Object>> {
    let p = ME.try_with(Cell::get).ok()?;
    if p.is_null() {
        return None;
    }
    // SAFETY: records of the static table are never freed.
    let me: &'static Record = unsafe { &*p };
    TABLE.try_owned(handle, BUDGET, me)
}

/// The owner to give a new budget: this thread, when the fast path's fence is available.
pub(crate) fn owner() -> Option<&'static Record> {
    if crate::membarrier::available() {
        me()
    } else {
        None
    }
}

fn status(r: Refused) -> Status {
    match r {
        Refused::Null => Status::COSTGUARD_NULL_ARGUMENT,
        Refused::Invalid => Status::COSTGUARD_INVALID_HANDLE,
    }
}

/// Stores a new object; a full table is reported as a panic-free `COSTGUARD_INVALID_ARGUMENT`
/// (2^28 live handles).
pub(crate) fn insert(kind: u8, obj: Object, owner: Option<&'static Record>) -> Result<u64, Status> {
    TABLE.insert(kind, obj, owner).map_err(|_| {
        crate::text::set_last_error("handle table full");
        Status::COSTGUARD_INVALID_ARGUMENT
    })
}

/// A use of the value of `handle`, which must be of `kind`.
#[inline(always)]
pub(crate) fn acquire(handle: u64, kind: u8) -> Result<Ref<'static, Object>, Status> {
    let me = if kind == BUDGET { me() } else { None };
    let r = TABLE.acquire(handle, kind, me).map_err(status)?;
    crate::fault::point();
    Ok(r)
}

/// Begins freeing `handle`; the value is dropped when the returned use ends (or the last reader's).
pub(crate) fn claim(handle: u64, kind: u8) -> Result<Ref<'static, Object>, Status> {
    let me = if kind == BUDGET { me() } else { None };
    TABLE.claim(handle, kind, me).map_err(status)
}

/// Frees `handle`: the null handle is a no-op.
pub(crate) fn free(handle: u64, kind: u8) -> Status {
    if handle == 0 {
        return Status::COSTGUARD_OK;
    }
    match claim(handle, kind) {
        Ok(r) => {
            drop(r);
            Status::COSTGUARD_OK
        }
        Err(s) => s,
    }
}

macro_rules! accessor {
    ($name:ident, $variant:ident, $ty:ty, $kind:expr) => {
        /// Runs `f` on the value of the handle.
        #[inline(always)]
        pub(crate) fn $name<R>(handle: u64, f: impl FnOnce(&$ty) -> R) -> Result<R, Status> {
            let r = acquire(handle, $kind)?;
            match &*r {
                Object::$variant(v) => Ok(f(v)),
                _ => Err(Status::COSTGUARD_INVALID_HANDLE),
            }
        }
    };
}

accessor!(with_engine, Engine, EngineObj, ENGINE);
accessor!(with_budget, Budget, BudgetObj, BUDGET);
accessor!(with_grant, Grant, GrantObj, GRANT);
accessor!(with_attempt, Attempt, AttemptObj, ATTEMPT);

macro_rules! claimer {
    ($name:ident, $variant:ident, $ty:ty, $kind:expr) => {
        /// Claims the handle (begins freeing it) and runs `f` on its value before it is dropped.
        pub(crate) fn $name<R>(handle: u64, f: impl FnOnce(&$ty) -> R) -> Result<R, Status> {
            let r = claim(handle, $kind)?;
            match &*r {
                Object::$variant(v) => Ok(f(v)),
                _ => Err(Status::COSTGUARD_INVALID_HANDLE),
            }
        }
    };
}

claimer!(claim_grant, Grant, GrantObj, GRANT);
claimer!(claim_attempt, Attempt, AttemptObj, ATTEMPT);
claimer!(claim_reservation, Reservation, ReservationObj, RESERVATION);

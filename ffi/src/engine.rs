//! Engines: made from a policy file or string, reloaded, freed; names resolved; stats as JSON and
//! Prometheus text.
//!
//! An engine object keeps, besides the core engine, the latest policy it applied, so that the child
//! of a fork can rebuild a fresh engine from it (see [`crate::fork`]). Time comes from a clock
//! without a background thread (threads do not survive `fork`): [`ProcessClock`] reads the
//! time-stamp counter on every call, or a `ManualClock` with `COSTGUARD_ENGINE_MANUAL_CLOCK`.

use crate::fork::{self, EpochGuard, EpochLock};
use crate::names::{self, Names, Value};
use crate::object::{self, with_engine, Object, ENGINE};
use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use crate::text::{self, required, TextOut};
use crate::types::*;
use costguard::clock::{Clock, ManualClock, Timestamp, TscClock};
use costguard::{Engine, NameError, Policy, PolicyError};
use std::ffi::c_char;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Flags for `costguard_engine_new_*`: a manual clock starting at 0, for tests and simulators.
pub const COSTGUARD_ENGINE_MANUAL_CLOCK: u32 = 1;

/// The time-stamp counter ([`TscClock`], about 10 ns a reading), read precisely on every call, also
/// for coarse checks: no ticker thread, and no cached reading that could lag for lack of one.
#[derive(Debug)]
pub(crate) struct ProcessClock(TscClock);

impl Clock for ProcessClock {
    #[inline]
    fn now(&self) -> Timestamp {
        self.0.now()
    }

    #[inline]
    fn coarse(&self) -> Timestamp {
        self.0.now()
    }
}

/// Per-process engine serials (0 is never used).
static SERIALS: AtomicU32 = AtomicU32::new(1);

/// What an engine is in one fork epoch.
pub(crate) struct EngineState {
    epoch: u64,
    pub(crate) engine: Engine,
    manual: Option<ManualClock>,
    pub(crate) names: Arc<Names>,
}

/// The value behind an engine handle.
pub(crate) struct EngineObj {
    pub(crate) serial: u32,
    /// The current state; replaced only in a fork child (the old one is leaked).
    state: AtomicPtr<EngineState>,
    /// The latest policy applied, for a fork child's rebuild.
    policy: AtomicPtr<Policy>,
    /// Serializes reloads, name appends and rebuilds.
    lock: EpochLock,
}

impl Drop for EngineObj {
    fn drop(&mut self) {
        // SAFETY: both pointers come from `Box::into_raw` and are owned by this object; the table
        // drops it once, after its last use.
        unsafe {
            drop(Box::from_raw(*self.state.get_mut()));
            drop(Box::from_raw(*self.policy.get_mut()));
        }
    }
}

fn build(
    policy: Policy,
    manual: Option<ManualClock>,
    names: Arc<Names>,
    inherit: Option<&Engine>,
) -> Result<(EngineState, bool), PolicyError> {
    let mut builder = Engine::builder(policy);
    if let Some(parent) = inherit {
        builder = builder.inherit_names(parent);
    }
    let inherited = builder.inherits_names();
    let engine = match &manual {
        Some(clock) => builder.clock(clock.clone()).build()?,
        None => builder.clock(ProcessClock(TscClock::new())).build()?,
    };
    Ok((
        EngineState {
            epoch: fork::epoch(),
            engine,
            manual,
            names,
        },
        inherited,
    ))
}

impl EngineObj {
    fn new(policy: Policy, flags: u32) -> Result<EngineObj, PolicyError> {
        let manual = (flags & COSTGUARD_ENGINE_MANUAL_CLOCK != 0).then(ManualClock::new);
        let (state, _) = build(policy.clone(), manual, Arc::new(Names::new()), None)?;
        Ok(EngineObj {
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            state: AtomicPtr::new(Box::into_raw(Box::new(state))),
            policy: AtomicPtr::new(Box::into_raw(Box::new(policy))),
            lock: EpochLock::new(),
        })
    }

    /// The state of this fork epoch (rebuilt first if the process forked since).
    #[inline]
    pub(crate) fn state(&self) -> &EngineState {
        let p = self.state.load(Ordering::Acquire);
        // SAFETY: states are freed only when the engine object is dropped, which the caller's use
        // of the handle prevents; replaced states are leaked.
        let s = unsafe { &*p };
        if s.epoch == fork::epoch() {
            return s;
        }
        self.rebuild()
    }

    #[cold]
    fn rebuild(&self) -> &EngineState {
        let _g = self.lock.lock();
        let p = self.state.load(Ordering::Acquire);
        // SAFETY: as in `state`.
        let old = unsafe { &*p };
        if old.epoch == fork::epoch() {
            return old;
        }
        // SAFETY: policies are replaced under the lock and the old box dropped only after the swap;
        // in a fork child the pointer is either the old box (intact) or the new one.
        let policy = unsafe { &*self.policy.load(Ordering::Acquire) }.clone();
        let manual = old
            .manual
            .as_ref()
            .map(|c| ManualClock::starting_at(c.now()));
        // The child's engine has the parent's names with the same ids (unless a parent thread was
        // in the middle of a reload when the process forked): every name value keeps its meaning,
        // including those of names the policy no longer has. Otherwise each name is resolved again
        // by its text, and one the policy lacks answers COSTGUARD_UNKNOWN_NAME.
        let state = match build(
            policy.clone(),
            manual.clone(),
            Arc::clone(&old.names),
            Some(&old.engine),
        ) {
            Ok((s, true)) => s,
            Ok((mut s, false)) => {
                s.names = Arc::new(old.names.rebuilt_for(&s.engine));
                s
            }
            // The policy compiled before, so this cannot fail; keep a usable state regardless.
            Err(_) => EngineState {
                epoch: fork::epoch(),
                engine: old.engine.clone(),
                manual,
                names: Arc::clone(&old.names),
            },
        };
        let new = Box::into_raw(Box::new(state));
        // The old state is leaked: dropping it may touch locks held by parent threads.
        self.state.store(new, Ordering::Release);
        // SAFETY: just made from a box; freed only with the engine object.
        unsafe { &*new }
    }

    fn locked(&self) -> (EpochGuard<'_>, &EngineState) {
        let s = self.state();
        (self.lock.lock(), s)
    }

    fn reload(&self, policy: Policy) -> Result<u64, PolicyError> {
        let (_g, s) = self.locked();
        let generation = s.engine.reload(policy.clone())?;
        let old = self
            .policy
            .swap(Box::into_raw(Box::new(policy)), Ordering::AcqRel);
        // SAFETY: from `Box::into_raw`, swapped out under the lock, so nobody else frees it; the
        // only other reader is a rebuild, which also holds the lock.
        drop(unsafe { Box::from_raw(old) });
        Ok(generation)
    }

    fn resolve(
        &self,
        kind: u8,
        name: &str,
        parent: u32,
        lookup: impl FnOnce(&Engine) -> Result<Value, NameError>,
    ) -> Result<u64, Status> {
        let (_g, s) = self.locked();
        match lookup(&s.engine) {
            Ok(v) => s.names.intern(self.serial, kind, name, parent, v),
            Err(e) => {
                text::set_last_error(e.to_string());
                Err(Status::COSTGUARD_UNKNOWN_NAME)
            }
        }
    }
}

fn policy_error(e: &PolicyError) -> Status {
    text::set_last_error(e.to_string());
    Status::COSTGUARD_POLICY_ERROR
}

/// `COSTGUARD_IO_ERROR` for a file that cannot be opened, is not a regular file or cannot be
/// read; everything else (its size, its text) is the policy reader's to judge.
fn read_policy_file(path: &str) -> Result<Policy, Status> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Opened without blocking, and only a regular file is read: opening a FIFO would otherwise
    // block the server's thread until some writer appeared, and a device may never end. The file
    // checked is the file read (one handle): the path cannot be swapped in between. One byte
    // more than the reader takes is read, so that it can tell a file too large.
    let cap = costguard::policy::MAX_POLICY_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| f.metadata().map(|meta| (f, meta)))
        .and_then(|(f, meta)| match meta {
            m if m.is_dir() => Ok(Some("is a directory")),
            m if !m.is_file() => Ok(Some("is not a regular file")),
            _ => f.take(cap).read_to_end(&mut bytes).map(|_| None),
        });
    let problem = match read {
        Ok(None) => {
            return Policy::from_toml_reader(&bytes[..], path).map_err(|e| policy_error(&e))
        }
        Ok(Some(problem)) => problem.to_owned(),
        Err(e) => e.to_string(),
    };
    text::set_last_error(format!("{path}: {problem}"));
    Err(Status::COSTGUARD_IO_ERROR)
}

fn new_engine(policy: Policy, flags: u32, out: std::ptr::NonNull<costguard_engine>) -> Status {
    let obj = match EngineObj::new(policy, flags) {
        Ok(o) => o,
        Err(e) => return policy_error(&e),
    };
    fork::ensure_registered();
    let bits = check!(object::insert(ENGINE, Object::Engine(obj), None));
    // SAFETY: `out` is non-null and writable (the caller's contract).
    unsafe { out.as_ptr().write(costguard_engine { bits }) };
    Status::COSTGUARD_OK
}

fn check_flags(flags: u32) -> Result<(), Status> {
    if flags & !COSTGUARD_ENGINE_MANUAL_CLOCK != 0 {
        text::set_last_error(format!("unknown engine flags {flags:#x}"));
        return Err(Status::COSTGUARD_INVALID_ARGUMENT);
    }
    Ok(())
}

/// Makes an engine from policy text (TOML).
///
/// # Safety
/// `toml` points to `len` readable bytes (or is NULL with `len` 0); `out` to a writable engine.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_new_from_str(
    toml: *const c_char,
    len: usize,
    flags: u32,
    out: *mut costguard_engine,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        // SAFETY: the caller's contract.
        let source = check!(unsafe { text::string(toml, len) });
        check!(check_flags(flags));
        let policy = match Policy::from_toml_str(source) {
            Ok(p) => p,
            Err(e) => return policy_error(&e),
        };
        new_engine(policy, flags, out)
    })
}

/// Makes an engine from a policy file (the path is UTF-8, not NUL-terminated).
///
/// # Safety
/// `path` points to `len` readable bytes; `out` to a writable engine.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_new_from_file(
    path: *const c_char,
    len: usize,
    flags: u32,
    out: *mut costguard_engine,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        // SAFETY: the caller's contract.
        let path = check!(unsafe { text::string(path, len) });
        check!(check_flags(flags));
        let policy = check!(read_policy_file(path));
        new_engine(policy, flags, out)
    })
}

fn reload_with(
    e: costguard_engine,
    policy: Result<Policy, Status>,
    generation: *mut u64,
) -> Status {
    check!(with_engine(e.bits, |_| ()));
    let policy = check!(policy);
    check!(with_engine(e.bits, |eng| match eng.reload(policy) {
        Ok(g) => {
            if !generation.is_null() {
                // SAFETY: non-null and writable (the caller's contract).
                unsafe { generation.write(g) };
            }
            Status::COSTGUARD_OK
        }
        Err(err) => policy_error(&err),
    }))
}

/// Replaces the engine's policy for requests started from now on: a running request keeps the
/// policy it started under, for its budget and for its backend attempts and retry decisions. A
/// failed reload keeps the old policy (`COSTGUARD_POLICY_ERROR`).
///
/// # Safety
/// `toml` points to `len` readable bytes; `generation` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_reload_from_str(
    e: costguard_engine,
    toml: *const c_char,
    len: usize,
    generation: *mut u64,
) -> costguard_status {
    boundary(|| {
        if e.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        // SAFETY: the caller's contract.
        let source = check!(unsafe { text::string(toml, len) });
        let policy = Policy::from_toml_str(source).map_err(|err| policy_error(&err));
        reload_with(e, policy, generation)
    })
}

/// Replaces the engine's policy from a file (`COSTGUARD_IO_ERROR` if it cannot be read).
///
/// # Safety
/// `path` points to `len` readable bytes; `generation` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_reload_from_file(
    e: costguard_engine,
    path: *const c_char,
    len: usize,
    generation: *mut u64,
) -> costguard_status {
    boundary(|| {
        if e.bits == 0 {
            return Status::COSTGUARD_NULL_ARGUMENT;
        }
        // SAFETY: the caller's contract.
        let path = check!(unsafe { text::string(path, len) });
        check!(with_engine(e.bits, |_| ()));
        reload_with(e, read_policy_file(path), generation)
    })
}

/// The generation of the current policy (1 for the first, +1 per successful reload).
///
/// # Safety
/// `out` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_generation(
    e: costguard_engine,
    out: *mut u64,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        let g = check!(with_engine(e.bits, |eng| eng.state().engine.generation()));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(g) };
        Status::COSTGUARD_OK
    })
}

/// Moves a manual-clock engine's time forward (`COSTGUARD_INVALID_ARGUMENT` for other engines), and
/// lets waiters whose time is up go.
#[no_mangle]
pub extern "C" fn costguard_engine_advance_clock(
    e: costguard_engine,
    nanos: u64,
) -> costguard_status {
    boundary(|| {
        check!(with_engine(e.bits, |eng| {
            let s = eng.state();
            match &s.manual {
                Some(clock) => {
                    clock.advance(Duration::from_nanos(nanos));
                    s.engine.expire_waiters();
                    Status::COSTGUARD_OK
                }
                None => {
                    text::set_last_error("not a manual-clock engine");
                    Status::COSTGUARD_INVALID_ARGUMENT
                }
            }
        }))
    })
}

/// Frees an engine. Budgets, grants and attempts already made keep working; new ones need a live
/// engine. The null handle is a no-op.
#[no_mangle]
pub extern "C" fn costguard_engine_free(e: costguard_engine) -> costguard_status {
    boundary(|| object::free(e.bits, ENGINE))
}

/// Resolves a name of `kind` and writes its value.
///
/// # Safety
/// `name` points to `len` readable bytes (or is NULL with `len` 0); `out` is writable.
unsafe fn resolve_into<T>(
    e: costguard_engine,
    kind: u8,
    name: *const c_char,
    len: usize,
    out: *mut T,
    lookup: impl FnOnce(&Engine, &str) -> Result<Value, NameError>,
    make: impl FnOnce(u64) -> T,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        // SAFETY: the caller's contract.
        let name = check!(unsafe { text::string(name, len) });
        let bits = check!(check!(with_engine(e.bits, |eng| {
            eng.resolve(kind, name, u32::MAX, |en| lookup(en, name))
        })));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(make(bits)) };
        Status::COSTGUARD_OK
    })
}

/// The counter dimension called `name` (including the built-ins `retries` and `cpu_time`).
///
/// # Safety
/// `name` points to `len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_counter(
    e: costguard_engine,
    name: *const c_char,
    len: usize,
    out: *mut costguard_counter,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe {
        resolve_into(
            e,
            names::COUNTER,
            name,
            len,
            out,
            |en, n| en.counter(n).map(Value::Counter),
            |bits| costguard_counter { bits },
        )
    }
}

/// The level dimension called `name`.
///
/// # Safety
/// `name` points to `len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_level(
    e: costguard_engine,
    name: *const c_char,
    len: usize,
    out: *mut costguard_level,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe {
        resolve_into(
            e,
            names::LEVEL,
            name,
            len,
            out,
            |en, n| en.level(n).map(Value::Level),
            |bits| costguard_level { bits },
        )
    }
}

/// The class called `name`.
///
/// # Safety
/// `name` points to `len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_class(
    e: costguard_engine,
    name: *const c_char,
    len: usize,
    out: *mut costguard_class,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe {
        resolve_into(
            e,
            names::CLASS,
            name,
            len,
            out,
            |en, n| en.class(n).map(Value::Class),
            |bits| costguard_class { bits },
        )
    }
}

/// The backend called `name`.
///
/// # Safety
/// `name` points to `len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_backend(
    e: costguard_engine,
    name: *const c_char,
    len: usize,
    out: *mut costguard_backend,
) -> costguard_status {
    // SAFETY: the caller's contract.
    unsafe {
        resolve_into(
            e,
            names::BACKEND,
            name,
            len,
            out,
            |en, n| en.backend(n).map(Value::Backend),
            |bits| costguard_backend { bits },
        )
    }
}

/// The host called `name` of a backend's pool.
///
/// # Safety
/// `name` points to `len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_host(
    e: costguard_engine,
    b: costguard_backend,
    name: *const c_char,
    len: usize,
    out: *mut costguard_host,
) -> costguard_status {
    boundary(|| {
        let out = check!(required(out));
        // SAFETY: the caller's contract.
        let name = check!(unsafe { text::string(name, len) });
        let bits = check!(check!(with_engine(e.bits, |eng| {
            let s = eng.state();
            let backend = s.names.backend(eng.serial, b.bits)?;
            let parent = names::decode(b.bits).2;
            eng.resolve(names::HOST, name, parent, |en| {
                en.host(backend, name).map(Value::Host)
            })
        })));
        // SAFETY: non-null and writable.
        unsafe { out.as_ptr().write(costguard_host { bits }) };
        Status::COSTGUARD_OK
    })
}

/// The admission and backend snapshot as JSON.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or is NULL with `cap` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_stats_json(
    e: costguard_engine,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, len));
        let json = check!(with_engine(e.bits, |eng| {
            let s = eng.state();
            crate::stats::to_json(s.engine.generation(), &s.engine.admission_stats())
        }));
        // SAFETY: checked by `TextOut::new`.
        unsafe { out.write(&json) }
    })
}

/// The admission and backend snapshot in Prometheus' text format.
///
/// # Safety
/// As for `costguard_engine_stats_json`.
#[no_mangle]
pub unsafe extern "C" fn costguard_engine_stats_prometheus(
    e: costguard_engine,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, len));
        let text = check!(with_engine(e.bits, |eng| eng
            .state()
            .engine
            .admission_stats()
            .to_prometheus()));
        // SAFETY: checked by `TextOut::new`.
        unsafe { out.write(&text) }
    })
}

/// Holds an engine's internal lock (for the fork test: a parent thread holding it at fork time).
#[doc(hidden)]
pub fn hold_engine_lock_for_test(
    e: costguard_engine,
    until: &std::sync::Barrier,
    release: &std::sync::Barrier,
) -> bool {
    with_engine(e.bits, |eng| {
        let _g = eng.lock.lock();
        until.wait();
        release.wait();
    })
    .is_ok()
}

//! Names resolved once: an engine's counters, levels, classes, backends and hosts as plain 64-bit
//! values C can keep anywhere.
//!
//! The core's handles (`Counter`, `Class`, ...) cannot be built from integers outside the core, so
//! each engine keeps an append-only list of the names it resolved, and a C name value is an index in
//! that list tagged with the engine's per-process serial and the name's kind:
//!
//! ```text
//! name (u64):  | engine serial: 32 | kind: 8 | index: 24 |
//! ```
//!
//! A name from another engine fails one compare (the serial); a made-up value fails the serial, the
//! kind or the bounds. Entries are published with one pointer store, so the charge path reads them
//! without a lock, and a fork child (which rebuilds its engine with the parent's names and ids) can
//! read them even if a parent thread was appending at fork time. An entry changes only from no value
//! to one (a name a fork child's engine lacked, resolved again once a reload brought it back), by a
//! new entry in its place; the old one is leaked, since a reader may still hold it.

use crate::status::Status;
use costguard::{Backend, Class, Counter, Engine, Host, Level};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The most names one engine resolves (distinct names over its whole life, reloads included).
pub(crate) const MAX_NAMES: usize = 4096;

/// How many of an engine's first names a budget object keeps its own copy of (counters only).
pub(crate) const EARLY: usize = 16;

pub(crate) const COUNTER: u8 = 1;
pub(crate) const LEVEL: u8 = 2;
pub(crate) const CLASS: u8 = 3;
pub(crate) const BACKEND: u8 = 4;
pub(crate) const HOST: u8 = 5;

fn kind_name(kind: u8) -> &'static str {
    match kind {
        COUNTER => "counter",
        LEVEL => "level",
        CLASS => "class",
        BACKEND => "backend",
        HOST => "host",
        _ => "name",
    }
}

/// A core handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Counter(Counter),
    Level(Level),
    Class(Class),
    Backend(Backend),
    Host(Host),
}

/// One resolved name.
#[derive(Debug)]
pub(crate) struct Name {
    kind: u8,
    text: Box<str>,
    /// For hosts: the index of the backend's entry.
    parent: u32,
    /// `None` when a rebuilt engine (fork child) no longer has it.
    value: Option<Value>,
}

/// An engine's names.
pub(crate) struct Names {
    entries: Box<[AtomicPtr<Name>]>,
    len: AtomicUsize,
}

impl Drop for Names {
    fn drop(&mut self) {
        for e in self.entries.iter() {
            let p = e.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: entries come from `Box::into_raw` in `push` and are freed only here.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// Splits a name value: (serial, kind, index).
#[inline(always)]
pub(crate) fn decode(bits: u64) -> (u32, u8, u32) {
    (
        (bits >> 32) as u32,
        (bits >> 24) as u8,
        (bits & 0xFF_FFFF) as u32,
    )
}

fn encode(serial: u32, kind: u8, index: usize) -> u64 {
    (u64::from(serial) << 32) | (u64::from(kind) << 24) | index as u64
}

impl Names {
    pub(crate) fn new() -> Names {
        Names {
            entries: (0..MAX_NAMES)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    #[inline(always)]
    fn entry(&self, index: u32) -> Option<&Name> {
        let p = self.entries.get(index as usize)?.load(Ordering::Acquire);
        // SAFETY: published fully built (Release) and never freed before `self`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// The core handle a name value stands for, checked against the engine's serial and the kind.
    #[inline(always)]
    pub(crate) fn get(&self, serial: u32, kind: u8, bits: u64) -> Result<Value, Status> {
        let (s, k, index) = decode(bits);
        if s != serial || k != kind {
            return Err(Status::COSTGUARD_INVALID_HANDLE);
        }
        let e = self.entry(index).ok_or(Status::COSTGUARD_INVALID_HANDLE)?;
        e.value.ok_or_else(|| {
            crate::text::set_last_error(format!(
                "the {} `{}` was resolved before a fork, and the child's policy does not have it \
                 (resolve it again after a reload that brings it back)",
                kind_name(e.kind),
                e.text
            ));
            Status::COSTGUARD_UNKNOWN_NAME
        })
    }

    #[inline(always)]
    pub(crate) fn counter(&self, serial: u32, bits: u64) -> Result<Counter, Status> {
        match self.get(serial, COUNTER, bits)? {
            Value::Counter(c) => Ok(c),
            _ => Err(Status::COSTGUARD_INVALID_HANDLE),
        }
    }

    pub(crate) fn level(&self, serial: u32, bits: u64) -> Result<Level, Status> {
        match self.get(serial, LEVEL, bits)? {
            Value::Level(c) => Ok(c),
            _ => Err(Status::COSTGUARD_INVALID_HANDLE),
        }
    }

    pub(crate) fn class(&self, serial: u32, bits: u64) -> Result<Class, Status> {
        match self.get(serial, CLASS, bits)? {
            Value::Class(c) => Ok(c),
            _ => Err(Status::COSTGUARD_INVALID_HANDLE),
        }
    }

    pub(crate) fn backend(&self, serial: u32, bits: u64) -> Result<Backend, Status> {
        match self.get(serial, BACKEND, bits)? {
            Value::Backend(c) => Ok(c),
            _ => Err(Status::COSTGUARD_INVALID_HANDLE),
        }
    }

    pub(crate) fn host(&self, serial: u32, bits: u64) -> Result<Host, Status> {
        match self.get(serial, HOST, bits)? {
            Value::Host(c) => Ok(c),
            _ => Err(Status::COSTGUARD_INVALID_HANDLE),
        }
    }

    /// The counters among the first [`EARLY`] names, by index: the names an application resolves at
    /// start-up, copied into each budget object so that a charge finds its counter beside the budget.
    pub(crate) fn early_counters(&self) -> [Option<Counter>; EARLY] {
        let len = self.len.load(Ordering::Acquire).min(EARLY);
        let mut out = [None; EARLY];
        for (i, slot) in out.iter_mut().enumerate().take(len) {
            if let Some(Name {
                value: Some(Value::Counter(c)),
                ..
            }) = self.entry(i as u32)
            {
                *slot = Some(*c);
            }
        }
        out
    }

    /// Adds a resolved name (or finds it), returning its value. Callers serialize appends (the
    /// engine's lock).
    pub(crate) fn intern(
        &self,
        serial: u32,
        kind: u8,
        text: &str,
        parent: u32,
        value: Value,
    ) -> Result<u64, Status> {
        let len = self.len.load(Ordering::Acquire);
        for i in 0..len {
            if let Some(e) = self.entry(i as u32) {
                if e.kind == kind && e.parent == parent && &*e.text == text {
                    if e.value.is_none() {
                        // Known again: the same name value now stands for it.
                        let p = Box::into_raw(Box::new(Name {
                            kind,
                            text: text.into(),
                            parent,
                            value: Some(value),
                        }));
                        self.entries[i].store(p, Ordering::Release);
                    }
                    return Ok(encode(serial, kind, i));
                }
            }
        }
        if len >= MAX_NAMES {
            crate::text::set_last_error(format!("more than {MAX_NAMES} names in one engine"));
            return Err(Status::COSTGUARD_INVALID_ARGUMENT);
        }
        self.push(Name {
            kind,
            text: text.into(),
            parent,
            value: Some(value),
        });
        Ok(encode(serial, kind, len))
    }

    fn push(&self, name: Name) {
        let len = self.len.load(Ordering::Acquire);
        let p = Box::into_raw(Box::new(name));
        self.entries[len].store(p, Ordering::Release);
        self.len.store(len + 1, Ordering::Release);
    }

    /// The same names, resolved again against another engine (a fork child's fresh one). Entries keep
    /// their indices, so name values made before the fork stay valid.
    pub(crate) fn rebuilt_for(&self, engine: &Engine) -> Names {
        let fresh = Names::new();
        let len = self.len.load(Ordering::Acquire).min(MAX_NAMES);
        for i in 0..len {
            let Some(e) = self.entry(i as u32) else {
                // A parent thread was appending at fork time; nobody got this index.
                fresh.push(Name {
                    kind: 0,
                    text: "".into(),
                    parent: u32::MAX,
                    value: None,
                });
                continue;
            };
            let value = match e.kind {
                COUNTER => engine.counter(&e.text).ok().map(Value::Counter),
                LEVEL => engine.level(&e.text).ok().map(Value::Level),
                CLASS => engine.class(&e.text).ok().map(Value::Class),
                BACKEND => engine.backend(&e.text).ok().map(Value::Backend),
                HOST => match fresh.entry(e.parent).and_then(|p| p.value) {
                    Some(Value::Backend(b)) => engine.host(b, &e.text).ok().map(Value::Host),
                    _ => None,
                },
                _ => None,
            };
            fresh.push(Name {
                kind: e.kind,
                text: e.text.clone(),
                parent: e.parent,
                value,
            });
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use costguard::Policy;

    fn engine(toml: &str) -> Engine {
        Engine::new(Policy::from_toml_str(toml).unwrap()).unwrap()
    }

    /// Without the parent's ids, a fork child resolves each name again by its text: one its policy
    /// lacks answers "unknown name" with a message, until a reload brings it back and it is
    /// resolved again, under the same name value.
    #[test]
    fn a_name_the_child_lacks_comes_back_under_the_same_value() {
        let both = "[dimensions]\na = \"counter\"\nb = \"counter\"\n[classes.api]\n";
        let parent = engine(both);
        let names = Names::new();
        let b = names
            .intern(
                7,
                COUNTER,
                "b",
                u32::MAX,
                Value::Counter(parent.counter("b").unwrap()),
            )
            .unwrap();
        let child = engine("[dimensions]\na = \"counter\"\n[classes.api]\n");
        let rebuilt = names.rebuilt_for(&child);
        assert_eq!(rebuilt.counter(7, b), Err(Status::COSTGUARD_UNKNOWN_NAME));
        let message = crate::text::last_error_string();
        assert!(message.contains("counter `b`"), "{message}");
        assert!(
            !message.contains("  "),
            "one space between words: {message}"
        );
        child.reload(Policy::from_toml_str(both).unwrap()).unwrap();
        let c = child.counter("b").unwrap();
        let again = rebuilt
            .intern(7, COUNTER, "b", u32::MAX, Value::Counter(c))
            .unwrap();
        assert_eq!(again, b);
        assert_eq!(rebuilt.counter(7, b), Ok(c));
    }
}

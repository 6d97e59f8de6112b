//! Small typed handles for names resolved once.
//!
//! Hot paths never hash a string: a dimension or class name is resolved to a handle when the service
//! starts ([`Engine::counter`](crate::Engine::counter), [`Engine::level`](crate::Engine::level),
//! [`Engine::class`](crate::Engine::class)), and the handle indexes an array from then on. Handles stay
//! valid across policy reloads: an engine gives a name the same handle for its whole life. Counters and
//! levels are different types, so a level cannot be charged like a counter by mistake.
//!
//! A handle belongs to the engine that gave it. It is an index, and nothing on the hot paths checks
//! which engine it came from (that would cost every charge a lookup): given to another engine, it
//! names whatever that engine gave the same index (a counter handle may then charge a level as a
//! counter), or nothing, in which case a charge is accepted and records nothing, as for a dimension
//! the budget's own version of the policy does not have. Keep each engine's handles with it. The C
//! ABI's handles carry their engine and are checked (`COSTGUARD_INVALID_HANDLE`).

use crate::policy::MAX_DIMENSIONS;
use std::fmt;

/// A counter dimension: a total that only grows during a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Counter(pub(crate) u8);

/// A level dimension: a current value that goes up and down, held through a guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Level(pub(crate) u8);

/// A request class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Class(pub(crate) u16);

/// A backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend(pub(crate) u16);

/// One host of a backend's pool, for callers that must reach a particular host (a partition leader,
/// a primary).
///
/// The handle names the host, not a place in the pool: after a reload that reorders the pool it
/// still reaches the same host, and an attempt on a host that the request's policy no longer has is
/// refused with [`Reason::UnknownClass`](crate::Reason::UnknownClass), never sent to another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    pub(crate) backend: Backend,
    pub(crate) index: u16,
}

impl Host {
    /// The backend the host belongs to.
    pub fn backend(self) -> Backend {
        self.backend
    }
}

impl Counter {
    /// The built-in retry allowance of a request tree.
    pub const RETRIES: Counter = Counter(0);
    /// The built-in thread CPU time counter, in nanoseconds.
    pub const CPU_TIME: Counter = Counter(1);

    #[inline]
    pub(crate) fn index(self) -> usize {
        usize::from(self.0) % MAX_DIMENSIONS
    }
}

impl Level {
    #[inline]
    pub(crate) fn index(self) -> usize {
        usize::from(self.0) % MAX_DIMENSIONS
    }
}

/// A name that could not be resolved to a handle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// No class of the current policy has this name, or no dimension of any policy this engine has
    /// had. (Dimension names are kept for the engine's life: one a reload removed still resolves,
    /// and its handle names nothing in the versions that lack it.)
    Unknown {
        /// What was asked for: `counter`, `level` or `class`.
        expected: &'static str,
        /// The name.
        name: String,
    },
    /// The dimension exists but is of the other kind.
    WrongKind {
        /// The name.
        name: String,
        /// What it is.
        actual: &'static str,
        /// What was asked for.
        expected: &'static str,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Unknown { expected, name } => {
                write!(
                    f,
                    "no {expected} named `{}` in the policy",
                    name.escape_debug()
                )
            }
            NameError::WrongKind {
                name,
                actual,
                expected,
            } => write!(f, "`{name}` is a {actual}, not a {expected}"),
        }
    }
}

impl std::error::Error for NameError {}

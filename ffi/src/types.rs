//! The handle and name types C sees: one `uint64_t` in a struct, so that C's type checker keeps an
//! engine from being passed as a budget.

/// An engine: a compiled, hot-reloadable policy. Any thread, concurrently.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_engine {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A request's budget. Any thread, concurrently (meant to be shared by one request's threads).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_budget {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// An admitted request: its permit, key share, pool amounts and budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_grant {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// One call to a backend, in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_attempt {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// An estimate charged up front, to be settled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_reservation {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A level entered, left when the guard is freed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_level_guard {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A counter dimension of one engine (a plain value: nothing to free).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_counter {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A level dimension of one engine (a plain value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_level {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A request class of one engine (a plain value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_class {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A backend of one engine (a plain value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_backend {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

/// A host of a backend's pool (a plain value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct costguard_host {
    /// Opaque; all zero is the null value.
    pub bits: u64,
}

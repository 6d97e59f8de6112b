//! The cancellation word of a budget.
//!
//! One `AtomicU32` per budget, on its own cache line because every worker of a request reads it inside
//! hot loops while charges write the counters next door. Bits only ever get set; a set bit never clears.
//!
//! | bit | name        | set when                                                    |
//! |-----|-------------|-------------------------------------------------------------|
//! | 0   | `EXHAUSTED` | a counter charge was refused because too little was left    |
//! | 1   | `DEADLINE`  | a deadline check found the deadline passed                  |
//! | 2   | `CANCELLED` | [`Budget::cancel`](crate::Budget::cancel) was called        |
//! | 3   | `INHERITED` | an ancestor's word got any bit                              |
//! | 4   | `WALKED`    | every child alive when a first bit was set has inherited it |
//!
//! `WALKED` is set only after another bit, so a word is non-zero exactly when the budget is
//! cancelled; it is no reason of its own.

pub(crate) const EXHAUSTED: u32 = 1 << 0;
pub(crate) const DEADLINE: u32 = 1 << 1;
pub(crate) const CANCELLED: u32 = 1 << 2;
pub(crate) const INHERITED: u32 = 1 << 3;
pub(crate) const WALKED: u32 = 1 << 4;

/// Why a budget is cancelled, most specific cause first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// A counter of this budget ran out.
    Exhausted,
    /// The deadline passed.
    Deadline,
    /// Someone called [`Budget::cancel`](crate::Budget::cancel).
    Cancelled,
    /// An ancestor budget was cancelled, for any of these reasons.
    Inherited,
}

impl CancelReason {
    pub(crate) fn from_bits(bits: u32) -> Option<CancelReason> {
        if bits & DEADLINE != 0 {
            Some(CancelReason::Deadline)
        } else if bits & EXHAUSTED != 0 {
            Some(CancelReason::Exhausted)
        } else if bits & CANCELLED != 0 {
            Some(CancelReason::Cancelled)
        } else if bits & INHERITED != 0 {
            Some(CancelReason::Inherited)
        } else {
            None
        }
    }

    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelReason::Exhausted => "exhausted",
            CancelReason::Deadline => "deadline",
            CancelReason::Cancelled => "cancelled",
            CancelReason::Inherited => "inherited",
        }
    }
}

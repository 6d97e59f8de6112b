//! A time and the period it belongs to, in one word.
//!
//! A breaker's probe deadline and a host's ejection end are each written before the compare-exchange
//! that publishes the transition they belong to, so that a reader who sees the transition also sees
//! its time. A writer whose compare-exchange then fails has written a time for a transition that
//! never happened. Tagging each time with the low bits of its period's generation lets such a time
//! be told apart from the current period's, and lets a newer period's time replace an older one's
//! however they compare, where a bare `fetch_max` would let a stale, later time linger into the next
//! period.
//!
//! The time is rounded to a multiple of 65,536 ns (about 66 µs) to make room for the tag: up for a
//! deadline that must not come early ([`tag`]), down for an end that must not come late
//! ([`tag_down`]). The times stored here are timeouts and ejections, which that does not change.

use crate::sync::{AtomicU64, Ordering};

/// The bits of a tagged time that hold the low bits of its period's generation.
pub(crate) const TAG: u64 = 0xffff;

/// The time `at` (ns) of the period `generation`: rounded up to the next multiple of 65,536 ns,
/// its low bits replaced by the generation's. A time within the last 65,536 ns of the clock's
/// range rounds down to [`LAST`] instead.
pub(crate) fn tag(at: u64, generation: u64) -> u64 {
    (at.saturating_add(TAG) & !TAG) | (generation & TAG)
}

/// The time `at` (ns) of the period `generation`, rounded down to a multiple of 65,536 ns.
pub(crate) fn tag_down(at: u64, generation: u64) -> u64 {
    (at & !TAG) | (generation & TAG)
}

/// The latest time a tagged word can hold: the clock's last instant, rounded down.
pub(crate) const LAST: u64 = !TAG;

/// The time of a tagged word.
pub(crate) fn time(stored: u64) -> u64 {
    stored & !TAG
}

/// Whether a tagged word belongs to the period `generation`.
pub(crate) fn belongs(stored: u64, generation: u64) -> bool {
    stored & TAG == generation & TAG
}

/// The tagged word to keep when `new` is written over `stored`: the later of the two within one
/// period, the newer period's otherwise (by the generation's low bits, compared as a wrapping
/// sequence).
pub(crate) fn raise(stored: u64, new: u64) -> u64 {
    let ahead = (new.wrapping_sub(stored)) & TAG;
    match ahead {
        0 => stored.max(new),
        a if a <= TAG / 2 => new,
        _ => stored,
    }
}

/// [`raise`]s the tagged word in `cell` to `new`, writing only when that changes it.
pub(crate) fn raise_in(cell: &AtomicU64, new: u64) {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
        let raised = raise(d, new);
        (raised != d).then_some(raised)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_time_belongs_to_its_period() {
        // 65,536 ns steps, rounded up; the tag is the generation's low bits.
        assert_eq!(time(tag(1, 3)), 0x1_0000);
        assert_eq!(tag(0x1_0000, 3), 0x1_0000 | 3);
        assert_eq!(time(tag(u64::MAX, 3)), LAST);
        assert_eq!(tag_down(0x1_ffff, 3), 0x1_0000 | 3);
        assert_eq!(time(tag_down(u64::MAX, 3)), LAST);
        assert!(belongs(tag(u64::MAX, 3), 3) && belongs(tag(7, 0x1_0003), 3));
        assert!(!belongs(tag(7, 4), 3));
        // Within a period the later time wins; a newer period replaces an older one's, however
        // much later the older one was; an older period never replaces a newer one's.
        let late_old = tag(10_000_000_000, 7);
        assert_eq!(
            raise(late_old, tag(20_000_000_000, 7)),
            tag(20_000_000_000, 7)
        );
        assert_eq!(raise(late_old, tag(1_000, 7)), late_old);
        assert_eq!(raise(late_old, tag(1_000, 8)), tag(1_000, 8));
        assert_eq!(raise(tag(1_000, 8), tag(10_000_000_000, 7)), tag(1_000, 8));
        // Across the tag's wrap: generation 0x1_0000 is newer than 0xffff.
        assert_eq!(
            raise(tag(5_000_000, 0xffff), tag(1_000, 0x1_0000)),
            tag(1_000, 0x1_0000)
        );
    }
}

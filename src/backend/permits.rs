//! The two bulkheads of a backend or host, calls in flight and connection attempts in progress, in
//! one atomic word.
//!
//! Every attempt takes one of each and gives the connecting permit back when it connects, or both at
//! once when it ends before that (a failed connect, or a client that never reports the connection).
//! Keeping both counts in one word makes the take one compare-exchange that checks both caps, and the
//! common release one subtraction, instead of two of each: an attempt can never hold a call permit
//! while it waits for a connecting one, and a refusal has nothing to give back.
//!
//! | bits   | field                  |
//! |--------|------------------------|
//! | 0..32  | calls in flight        |
//! | 32..64 | connection attempts    |
//!
//! A count only ever drops by a permit its holder took, so neither field can borrow from the other.

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

const CALL: u64 = 1;
const CONNECT: u64 = 1 << 32;
const LOW: u64 = u32::MAX as u64;

/// Which cap refused a [`Permits::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Calls in flight, with the count seen.
    InFlight(u32),
    Connecting,
}

/// Calls in flight and connection attempts of one backend or host.
#[derive(Debug, Default)]
pub(crate) struct Permits {
    word: CachePadded<AtomicU64>,
}

impl Permits {
    /// Takes a call permit and a connecting permit, if the calls stay at or below `calls` and the
    /// connection attempts at or below `connects`; takes neither otherwise.
    #[inline]
    pub(crate) fn take(&self, calls: u32, connects: u32) -> Result<(), Full> {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            let (in_flight, connecting) = split(w);
            if in_flight >= calls {
                return Err(Full::InFlight(in_flight));
            }
            if connecting >= connects {
                return Err(Full::Connecting);
            }
            match self.word.compare_exchange_weak(
                w,
                w + CALL + CONNECT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => w = seen,
            }
        }
    }

    /// Gives back a connecting permit (the connection is established).
    #[inline]
    pub(crate) fn connected(&self) {
        self.word.fetch_sub(CONNECT, Ordering::Release);
    }

    /// Gives back a call permit, and the connecting permit too while it is still held.
    #[inline]
    pub(crate) fn release(&self, connecting: bool) {
        let n = if connecting { CALL + CONNECT } else { CALL };
        self.word.fetch_sub(n, Ordering::Release);
    }

    /// Calls in flight and connection attempts in progress, read together: as one moment saw
    /// them (two reads could show a connection attempt without its call).
    pub(crate) fn counts(&self) -> (u32, u32) {
        split(self.word.load(Ordering::Relaxed))
    }

    /// Calls in flight.
    pub(crate) fn in_flight(&self) -> u32 {
        split(self.word.load(Ordering::Relaxed)).0
    }

    /// Connection attempts in progress.
    pub(crate) fn connecting(&self) -> u32 {
        split(self.word.load(Ordering::Relaxed)).1
    }
}

#[inline]
fn split(w: u64) -> (u32, u32) {
    ((w & LOW) as u32, (w >> 32) as u32)
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn both_caps_apply_and_nothing_is_taken_on_a_refusal() {
        let p = Permits::default();
        p.take(2, 1).unwrap();
        assert_eq!(p.take(2, 1), Err(Full::Connecting));
        assert_eq!((p.in_flight(), p.connecting()), (1, 1));
        p.connected();
        p.take(2, 1).unwrap();
        assert_eq!(p.take(2, 1), Err(Full::InFlight(2)));
        assert_eq!((p.in_flight(), p.connecting()), (2, 1));
        p.release(true);
        p.release(false);
        assert_eq!((p.in_flight(), p.connecting()), (0, 0));
    }

    #[test]
    fn full_counts_never_spill_into_the_other_field() {
        let p = Permits::default();
        for _ in 0..3 {
            p.take(u32::MAX, u32::MAX).unwrap();
        }
        p.release(true);
        assert_eq!((p.in_flight(), p.connecting()), (2, 2));
        p.connected();
        p.connected();
        assert_eq!((p.in_flight(), p.connecting()), (2, 0));
        p.release(false);
        p.release(false);
        assert_eq!(p.word.load(Ordering::Relaxed), 0);
    }
}

//! A circuit breaker: one atomic word and a pure transition function.
//!
//! | bits   | field                                                  |
//! |--------|--------------------------------------------------------|
//! | 0..2   | state: closed, open, half-open                         |
//! | 2..6   | probes admitted in this period (half-open)             |
//! | 6..10  | probe successes (half-open)                            |
//! | 10..22 | failures in a row (closed), saturating                 |
//! | 22..28 | times opened in a row: the exponent of the open time   |
//! | 28..64 | generation: changes with every transition              |
//!
//! Every transition bumps the generation, and an attempt remembers the generation it began under, so
//! a late finish from an earlier period (a probe from an earlier half-open period, an ordinary call
//! from before an outage) can never move a breaker that has moved on. Beside the word live the time the
//! breaker may next be probed (`open_until`), when it last closed (for the ramp-up) and when the
//! probes in flight time out (`probe_deadline`), each written before the CAS that publishes the
//! transition.
//!
//! A half-open period admits exactly `probes` probes: a probe's success keeps its slot (it counts
//! towards closing), and only a probe that says nothing (a client error, a cancellation, a refusal
//! further on) gives its slot back. The probe deadline carries the low bits of the generation it
//! belongs to, so that a long timeout of an earlier period's probe never holds a later period's
//! slots.

use super::tagged;

pub(crate) const CLOSED: u64 = 0;
pub(crate) const OPEN: u64 = 1;
pub(crate) const HALF_OPEN: u64 = 2;

pub(crate) const STATE: u64 = 0b11;
const PROBES_SHIFT: u32 = 2;
const SUCC_SHIFT: u32 = 6;
const FAIL_SHIFT: u32 = 10;
const OPENED_SHIFT: u32 = 22;
const GEN_SHIFT: u32 = 28;
const NIBBLE: u64 = 0xf;
const FAIL_MAX: u64 = 0xfff;
const OPENED_MAX: u64 = 0x3f;

/// The fields of a breaker word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) state: u64,
    pub(crate) probes: u64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) opened: u64,
    pub(crate) generation: u64,
}

impl Word {
    pub(crate) fn unpack(w: u64) -> Word {
        Word {
            state: w & STATE,
            probes: (w >> PROBES_SHIFT) & NIBBLE,
            successes: (w >> SUCC_SHIFT) & NIBBLE,
            failures: (w >> FAIL_SHIFT) & FAIL_MAX,
            opened: (w >> OPENED_SHIFT) & OPENED_MAX,
            generation: w >> GEN_SHIFT,
        }
    }

    pub(crate) fn pack(self) -> u64 {
        self.state
            | (self.probes.min(NIBBLE) << PROBES_SHIFT)
            | (self.successes.min(NIBBLE) << SUCC_SHIFT)
            | (self.failures.min(FAIL_MAX) << FAIL_SHIFT)
            | (self.opened.min(OPENED_MAX) << OPENED_SHIFT)
            | (self.generation << GEN_SHIFT)
    }

    fn next(self, state: u64) -> Word {
        Word {
            state,
            probes: 0,
            successes: 0,
            failures: 0,
            opened: self.opened,
            generation: (self.generation + 1) & ((1 << (64 - GEN_SHIFT)) - 1),
        }
    }
}

/// How an attempt was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Normal,
    Probe,
}

/// Why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Open: probe again after this many ns.
    Open(u64),
    /// Half-open with every probe slot taken.
    Probing,
}

/// What a breaker needs to know at the start of an attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Begin {
    pub(crate) now: u64,
    pub(crate) open_until: u64,
    /// When the probes in flight time out (they give their slots back then), as
    /// [`tagged::tag`] packs it with its period.
    pub(crate) probe_deadline: u64,
    pub(crate) probes: u64,
}

/// Whether the probes in flight of period `generation` have all timed out at `now`. A deadline of
/// another period does not hold this one's slots: it can only be a newer one, stored by a caller
/// that found this period's probes timed out.
fn probes_timed_out(stored: u64, generation: u64, now: u64) -> bool {
    !tagged::belongs(stored, generation) || now >= tagged::time(stored)
}

/// The next word, if an attempt may begin, and its role. Pure.
pub(crate) fn begin(w: u64, b: Begin) -> Result<(u64, Role), Closed> {
    let word = Word::unpack(w);
    match word.state {
        CLOSED => Ok((w, Role::Normal)),
        // An opening whose end saturated at the clock's last instant (a clock at the end of its
        // range) lasts: the clock can never get past it.
        OPEN if b.now < b.open_until || b.open_until == u64::MAX => {
            Err(Closed::Open((b.open_until - b.now).max(1)))
        }
        OPEN => {
            let mut next = word.next(HALF_OPEN);
            next.probes = 1;
            Ok((next.pack(), Role::Probe))
        }
        _ if word.probes < b.probes => {
            let mut next = word;
            next.probes += 1;
            Ok((next.pack(), Role::Probe))
        }
        // Every probe hung past its timeout: their slots come back, to a new probing period.
        _ if probes_timed_out(b.probe_deadline, word.generation, b.now) => {
            let mut next = word.next(HALF_OPEN);
            next.probes = 1;
            Ok((next.pack(), Role::Probe))
        }
        _ => Err(Closed::Probing),
    }
}

/// What an attempt's outcome means to a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// Says nothing about the backend (client error, cancelled).
    Neutral,
}

/// The transition an outcome caused, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    Opened,
    Closed,
}

/// The next word after an attempt that began in `generation` with `role` ended. `trip` says the
/// sliding window's ratios call for opening. Pure.
pub(crate) fn finish(
    w: u64,
    role: Role,
    generation: u64,
    v: Verdict,
    trip: bool,
    consecutive: u64,
    probes: u64,
) -> (u64, Change) {
    let word = Word::unpack(w);
    match (word.state, role) {
        // Only an attempt that began in this closed period counts: one that began before an outage
        // and ends after the breaker closed again belongs to another period.
        (CLOSED, Role::Normal) if word.generation == generation => {
            let mut next = word;
            match v {
                Verdict::Success => next.failures = 0,
                Verdict::Failure => next.failures = (word.failures + 1).min(FAIL_MAX),
                Verdict::Neutral => return (w, Change::None),
            }
            // The window can trip on slow successes too, not only on failures.
            if (v == Verdict::Failure && next.failures >= consecutive) || trip {
                let mut open = word.next(OPEN);
                open.opened = (word.opened + 1).min(OPENED_MAX);
                (open.pack(), Change::Opened)
            } else {
                (next.pack(), Change::None)
            }
        }
        (HALF_OPEN, Role::Probe) if word.generation == generation => match v {
            Verdict::Success if word.successes + 1 >= probes => {
                let mut closed = word.next(CLOSED);
                closed.opened = 0;
                (closed.pack(), Change::Closed)
            }
            // The probe keeps its slot: `probes` probes in all per period, not at a time.
            Verdict::Success => {
                let mut next = word;
                next.successes += 1;
                (next.pack(), Change::None)
            }
            Verdict::Failure => {
                let mut open = word.next(OPEN);
                open.opened = (word.opened + 1).min(OPENED_MAX);
                (open.pack(), Change::Opened)
            }
            Verdict::Neutral => {
                let mut next = word;
                next.probes = next.probes.saturating_sub(1);
                (next.pack(), Change::None)
            }
        },
        // A late finish from another period: the breaker has moved on.
        _ => (w, Change::None),
    }
}

/// Whether `finish` would leave `w` as it is for an outcome `v`, decided from the word alone: a
/// success that does not trip the window, on a closed breaker with no failures in a row (the usual
/// case, whatever the attempt's role and generation). Pure.
#[inline]
pub(crate) fn settled(w: u64, v: Verdict, trip: bool) -> bool {
    v == Verdict::Success && !trip && w & (STATE | (FAIL_MAX << FAIL_SHIFT)) == CLOSED
}

/// How long to stay open after opening for the `opened`-th time in a row: `base × 2^(opened-1)`,
/// capped, then scaled by `jitter` in [0.5, 1] so that many processes do not probe in step; at
/// least a nanosecond, so that a breaker that opens is open.
pub(crate) fn open_for(base: u64, max: u64, opened: u64, jitter: f64) -> u64 {
    let exp = opened.saturating_sub(1).min(32) as u32;
    let d = base.saturating_mul(1u64 << exp).min(max);
    (((d as f64) * jitter.clamp(0.5, 1.0)) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(now: u64) -> Begin {
        Begin {
            now,
            open_until: 100,
            // Deadlines of the half-open period that follows the first opening (generation 2).
            probe_deadline: tagged::tag(150, 2),
            probes: 2,
        }
    }

    #[test]
    fn settled_words_are_those_finish_leaves_alone() {
        let words = [
            0,
            Word {
                state: CLOSED,
                probes: 0,
                successes: 0,
                failures: 2,
                opened: 1,
                generation: 7,
            }
            .pack(),
            Word {
                state: CLOSED,
                probes: 0,
                successes: 0,
                failures: 0,
                opened: 3,
                generation: 9,
            }
            .pack(),
            Word {
                state: OPEN,
                probes: 0,
                successes: 0,
                failures: 0,
                opened: 1,
                generation: 4,
            }
            .pack(),
            Word {
                state: HALF_OPEN,
                probes: 1,
                successes: 0,
                failures: 0,
                opened: 1,
                generation: 5,
            }
            .pack(),
        ];
        for w in words {
            for v in [Verdict::Success, Verdict::Failure, Verdict::Neutral] {
                for trip in [false, true] {
                    if !settled(w, v, trip) {
                        continue;
                    }
                    for role in [Role::Normal, Role::Probe] {
                        for generation in 0..10 {
                            assert_eq!(
                                finish(w, role, generation, v, trip, 3, 2),
                                (w, Change::None),
                                "{:?} {v:?} trip {trip} {role:?} gen {generation}",
                                Word::unpack(w)
                            );
                        }
                    }
                }
            }
        }
        assert!(settled(0, Verdict::Success, false));
        assert!(
            !settled(0, Verdict::Success, true),
            "a slow success may trip the window"
        );
        assert!(!settled(0, Verdict::Failure, false));
    }

    #[test]
    fn opens_after_failures_in_a_row_and_probes_back() {
        let mut w = 0;
        for _ in 0..2 {
            let (n, c) = finish(w, Role::Normal, 0, Verdict::Failure, false, 3, 2);
            assert_eq!(c, Change::None);
            w = n;
        }
        // A success in between resets the run.
        let (n, _) = finish(w, Role::Normal, 0, Verdict::Success, false, 3, 2);
        assert_eq!(Word::unpack(n).failures, 0);
        let (n, _) = finish(n, Role::Normal, 0, Verdict::Neutral, false, 3, 2);
        assert_eq!(Word::unpack(n).failures, 0, "a client error says nothing");
        let (mut w, c) = (w, Change::None);
        let _ = c;
        let (n, c) = finish(w, Role::Normal, 0, Verdict::Failure, false, 3, 2);
        assert_eq!(c, Change::Opened);
        w = n;
        let open = Word::unpack(w);
        assert_eq!((open.state, open.opened, open.generation), (OPEN, 1, 1));
        assert_eq!(begin(w, b(99)), Err(Closed::Open(1)));
        // Two probes at most.
        let (w1, r) = begin(w, b(100)).unwrap();
        assert_eq!(r, Role::Probe);
        let (w2, _) = begin(w1, b(100)).unwrap();
        assert_eq!(begin(w2, b(120)), Err(Closed::Probing));
        let g = Word::unpack(w2).generation;
        // A stale finish from the closed period changes nothing.
        assert_eq!(
            finish(w2, Role::Normal, 0, Verdict::Failure, true, 3, 2).0,
            w2
        );
        let (w3, c) = finish(w2, Role::Probe, g, Verdict::Success, false, 3, 2);
        assert_eq!(c, Change::None);
        // A success keeps its slot: two probes per period, not two at a time.
        assert_eq!(begin(w3, b(120)), Err(Closed::Probing));
        // A probe that says nothing gives its slot back.
        let (w3n, c) = finish(w3, Role::Probe, g, Verdict::Neutral, false, 3, 2);
        assert_eq!(c, Change::None);
        let (_, r) = begin(w3n, b(120)).unwrap();
        assert_eq!(r, Role::Probe);
        let (w4, c) = finish(w3, Role::Probe, g, Verdict::Success, false, 3, 2);
        assert_eq!(c, Change::Closed);
        assert_eq!(Word::unpack(w4).state, CLOSED);
        assert_eq!(Word::unpack(w4).opened, 0);
    }

    #[test]
    fn only_this_periods_deadline_holds_its_probe_slots() {
        assert!(!probes_timed_out(tagged::tag(1_000_000, 4), 4, 500_000));
        assert!(probes_timed_out(tagged::tag(1_000_000, 4), 4, 1_048_576));
        assert!(probes_timed_out(tagged::tag(1_000_000, 3), 4, 0));
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_and_hung_probes_give_their_slots_back() {
        let open = Word {
            state: OPEN,
            probes: 0,
            successes: 0,
            failures: 0,
            opened: 1,
            generation: 5,
        }
        .pack();
        let (w, _) = begin(open, b(100)).unwrap();
        let g = Word::unpack(w).generation;
        let (w, c) = finish(w, Role::Probe, g, Verdict::Failure, false, 3, 2);
        assert_eq!(c, Change::Opened);
        assert_eq!(Word::unpack(w).opened, 2);
        assert_eq!(open_for(1_000, 60_000, 1, 1.0), 1_000);
        assert_eq!(open_for(1_000, 60_000, 2, 1.0), 2_000);
        assert_eq!(open_for(1_000, 60_000, 40, 1.0), 60_000);
        assert_eq!(
            open_for(1_000, 60_000, 1, 0.1),
            500,
            "jitter never below half"
        );
        assert_eq!(
            open_for(1, 60_000, 1, 0.5),
            1,
            "a breaker that opens is open"
        );
        // Both probe slots taken, then their timeout passes: a new probing period begins.
        let (w, _) = begin(
            w,
            Begin {
                now: 10_000,
                open_until: 0,
                probe_deadline: 0,
                probes: 1,
            },
        )
        .unwrap();
        let g1 = Word::unpack(w).generation;
        assert_eq!(
            begin(
                w,
                Begin {
                    now: 10_001,
                    open_until: 0,
                    probe_deadline: tagged::tag(20_000, g1),
                    probes: 1
                }
            ),
            Err(Closed::Probing)
        );
        let (w2, r) = begin(
            w,
            Begin {
                // The deadline, rounded up to the next 65,536 ns.
                now: 65_536,
                open_until: 0,
                probe_deadline: tagged::tag(20_000, g1),
                probes: 1,
            },
        )
        .unwrap();
        assert_eq!(r, Role::Probe);
        assert_ne!(Word::unpack(w2).generation, g1);
        // The hung probe's late success is from another period: it cannot close the breaker.
        assert_eq!(
            finish(w2, Role::Probe, g1, Verdict::Success, false, 3, 1).1,
            Change::None
        );
    }
}

//! Per-key state with a hard memory bound.
//!
//! Keys (users, IPs, tenants) are chosen by whoever sends the requests, so the table that tracks them
//! is a fixed array of `max_keys` slots allocated once: memory never grows with the number of distinct
//! keys seen. Keys are hashed with a per-table random seed (ahash), so an attacker cannot aim many keys
//! at one slot. Each slot is two atomic words and no pointers:
//!
//! | word  | bits   | field                                                   |
//! |-------|--------|---------------------------------------------------------|
//! | `key` | 56..64 | releases of the entry, wrapping (its "epoch")           |
//! | `key` | 16..56 | fingerprint of the key (40 bits from its hash; 0 = empty) |
//! | `key` | 0..16  | requests of this key in flight ("pins")                 |
//! | `tat` | 0..64  | theoretical arrival time of its rate limit (clock ns)   |
//!
//! A key lives in one of the 8 slots after its hash. A slot whose key has nothing in flight and whose
//! rate allowance is full again (`tat <= now`) is idle, and is taken over by the next new key that needs
//! room: eviction loses nothing, since a fresh entry behaves exactly like an idle one. Only a thread
//! that holds a pin writes `tat`, and a slot with pins cannot be taken over, because pins and
//! fingerprint share one word. A new key reads the word, then `tat`, then takes the slot by a
//! compare-exchange on the word; should the old key start and end a request in between (pin,
//! charge, unpin), the word would read the same again, and the old key would lose its charge to
//! the new one and start afresh elsewhere with a whole new burst. Every release therefore counts
//! in the word's epoch, and the compare-exchange fails. (Only 256 requests of the old key in that
//! instant would bring the epoch round again.)
//!
//! Concurrent first requests of one key meet on one entry: a request looking for room that finds a
//! slot already claimed for its key joins it, and one that claimed a slot while another request of
//! its key claimed an earlier one moves to that one. Only when a slot turns idle in the instant
//! between two such requests' scans can a key end up with two entries, each holding its limit.
//!
//! **Past the bound.** When all 8 candidate slots of a new key are busy, the key is served by one
//! shared overflow entry with the same per-key limits: all such keys together get the share of one key.
//! An attacker who floods the table thus gets less, not more, while well-behaved keys already in the
//! table keep their own entries. Limits hold per entry: a key whose requests are still running on the
//! overflow entry when a slot of its own frees up may briefly hold up to twice its limit (one on each)
//! until those requests finish; the class's limit is never exceeded. (Holding new keys back while
//! the overflow entry is busy would close that window, but under a flood it would keep every new key
//! off the table for as long as the flood lasts.) (Two fingerprints collide with probability about 2^-40 per pair in a
//! probe window; colliding keys share an entry.)

use super::gcra::{Gcra, Nonconforming};
use crate::sync::{AtomicU64, Ordering};

const PINS: u64 = 0xffff;
/// The fingerprint's bits, once shifted down.
const FP_MASK: u64 = (1 << 40) - 1;
/// One release, in the epoch's bits (the top 8: a carry out of them is dropped).
const EPOCH_ONE: u64 = 1 << 56;
/// The epoch's bits.
const EPOCH: u64 = !((FP_MASK << FP_SHIFT) | PINS);
/// The slot of a shadow-mode request admitted past its entry's pin count: it holds no pin, and
/// its grant releases nothing. Neither a slot of the table nor [`OVERFLOW`].
pub(crate) const UNPINNED: u32 = u32::MAX - 1;
const _: () = assert!(crate::policy::MAX_KEYS < UNPINNED && UNPINNED != OVERFLOW);
const FP_SHIFT: u32 = 16;
/// Candidate slots per key.
const PROBE: usize = 8;
/// The slot number that stands for the overflow entry.
pub(crate) const OVERFLOW: u32 = u32::MAX;
/// The fingerprint of the overflow entry (real fingerprints are odd too, but live in other slots).
const OVERFLOW_FP: u64 = 1;

/// Where a key of hash `hash` starts probing in a table of `len` slots, and its fingerprint.
///
/// The slot comes from the hash's high bits by a multiply-shift, not a 64-bit division. The fingerprint comes from the hash multiplied by an odd constant,
/// whose top bits depend on all of the hash's bits: keys that share a start do not share part of
/// their fingerprints, so two of them still collide with probability about 2^-40.
#[inline]
fn place(hash: u64, len: usize) -> (usize, u64) {
    let start = ((u128::from(hash) * len as u128) >> 64) as usize;
    let fp = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24) | 1;
    (start, fp)
}

/// The fingerprint in a key word.
#[inline]
fn fingerprint(word: u64) -> u64 {
    (word >> FP_SHIFT) & FP_MASK
}

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    tat: AtomicU64,
}

/// Why a key may not start another request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// As many requests of this key are in flight as it may have.
    Concurrency { in_flight: u64, limit: u64 },
    /// Over its rate.
    Rate(Nonconforming),
}

/// The limits one key is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyLimits {
    /// At most this many in flight (at most 65,535).
    pub(crate) concurrency: u64,
    pub(crate) rate: Option<Gcra>,
}

#[derive(Debug)]
pub(crate) struct KeyTable {
    hasher: ahash::RandomState,
    slots: Box<[Slot]>,
    overflow: Slot,
}

impl KeyTable {
    /// A table of `max_keys` slots, hashed with a random seed, or with `seed` when the engine was
    /// given one (tests, simulations).
    pub(crate) fn new(max_keys: u32, seed: Option<u64>) -> Self {
        let slots: Box<[Slot]> = (0..max_keys.max(1)).map(|_| Slot::default()).collect();
        let hasher = match seed {
            Some(s) => {
                ahash::RandomState::with_seeds(s, s ^ 0x9e37_79b9_7f4a_7c15, s.rotate_left(17), !s)
            }
            None => ahash::RandomState::new(),
        };
        KeyTable {
            hasher,
            slots,
            overflow: Slot {
                key: AtomicU64::new(OVERFLOW_FP << FP_SHIFT),
                tat: AtomicU64::new(0),
            },
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of memory the table holds, whatever the number of keys seen.
    pub(crate) fn memory(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.slots)
    }

    fn slot(&self, index: u32) -> &Slot {
        if index == OVERFLOW {
            &self.overflow
        } else {
            self.slots.get(index as usize).unwrap_or(&self.overflow)
        }
    }

    /// Pins `key` and charges `cost` to its rate. Returns the slot to unpin later, and, in shadow mode,
    /// the refusal that was not enforced.
    pub(crate) fn acquire(
        &self,
        key: &[u8],
        now: u64,
        cost: u64,
        limits: KeyLimits,
        shadow: bool,
    ) -> Result<(u32, Option<KeyRefusal>), KeyRefusal> {
        let hash = self.hasher.hash_one(key);
        let (start, fp) = place(hash, self.slots.len());
        let len = self.slots.len();
        // `start < len` and `i < len`: one subtraction wraps around, no division.
        let candidates = (0..PROBE.min(len)).map(move |i| {
            let index = start + i;
            (if index >= len { index - len } else { index }) as u32
        });

        // An entry of this key already?
        for index in candidates.clone() {
            if fingerprint(self.slot(index).key.load(Ordering::Acquire)) == fp {
                if let Some(result) = self.pin_and_charge(index, fp, now, cost, limits, shadow) {
                    return result;
                }
            }
        }
        // Room for it: an empty slot, or one whose key is idle. Another request of the same key may
        // be making room at the same time: a slot found holding this key is joined, not passed by.
        for (n, index) in candidates.clone().enumerate() {
            let slot = self.slot(index);
            let mut word = slot.key.load(Ordering::Acquire);
            loop {
                if fingerprint(word) == fp {
                    match self.pin_and_charge(index, fp, now, cost, limits, shadow) {
                        Some(result) => return result,
                        None => {
                            word = slot.key.load(Ordering::Acquire);
                            continue;
                        }
                    }
                }
                let empty = word == 0;
                let idle = word & PINS == 0 && slot.tat.load(Ordering::Acquire) <= now;
                if !(empty || idle) {
                    break;
                }
                match slot.key.compare_exchange(
                    word,
                    (word & EPOCH) | (fp << FP_SHIFT) | 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // This thread holds the only pin of a fresh entry. Its rate state is the idle
                    // one's, `tat <= now`: a full allowance. (It is not reset: another request of
                    // this key may already have charged it.)
                    Ok(_) => {
                        return self.claimed(
                            index,
                            candidates.take(n),
                            fp,
                            now,
                            cost,
                            limits,
                            shadow,
                        )
                    }
                    Err(actual) => word = actual,
                }
            }
        }
        self.pin_and_charge(OVERFLOW, OVERFLOW_FP, now, cost, limits, shadow)
            .unwrap_or(Err(KeyRefusal::Concurrency {
                in_flight: limits.concurrency,
                limit: limits.concurrency,
            }))
    }

    /// Slot `index` was just claimed for key `fp`. If meanwhile another request of the key made an
    /// entry in an `earlier` candidate slot (one this thread had already passed), the request joins
    /// that entry and leaves the new one idle, so that the key's requests keep meeting on one entry;
    /// otherwise it charges its rate on the new one.
    #[allow(clippy::too_many_arguments)]
    fn claimed(
        &self,
        index: u32,
        earlier: impl Iterator<Item = u32>,
        fp: u64,
        now: u64,
        cost: u64,
        limits: KeyLimits,
        shadow: bool,
    ) -> Result<(u32, Option<KeyRefusal>), KeyRefusal> {
        for other in earlier {
            if fingerprint(self.slot(other).key.load(Ordering::Acquire)) == fp {
                if let Some(result) = self.pin_and_charge(other, fp, now, cost, limits, shadow) {
                    self.release(index);
                    return result;
                }
            }
        }
        self.charge_rate(index, now, cost, limits, shadow)
    }

    /// Pins slot `index` if it still holds `fp`; `None` if the key moved out meanwhile.
    fn pin_and_charge(
        &self,
        index: u32,
        fp: u64,
        now: u64,
        cost: u64,
        limits: KeyLimits,
        shadow: bool,
    ) -> Option<Result<(u32, Option<KeyRefusal>), KeyRefusal>> {
        let slot = self.slot(index);
        let mut word = slot.key.load(Ordering::Acquire);
        let mut over = None;
        loop {
            if fingerprint(word) != fp {
                return None;
            }
            let pins = word & PINS;
            let next = if pins < limits.concurrency.min(PINS) {
                word + 1
            } else if shadow && pins < PINS {
                over = Some(KeyRefusal::Concurrency {
                    in_flight: pins,
                    limit: limits.concurrency,
                });
                word + 1
            } else if shadow {
                // Shadow mode admits all the same, past what the entry can count: unpinned (the
                // entry cannot go while 65,535 requests hold it) and not charged to the key's
                // rate, with the concurrency refusal it would have been.
                return Some(Ok((
                    UNPINNED,
                    Some(KeyRefusal::Concurrency {
                        in_flight: pins,
                        limit: limits.concurrency,
                    }),
                )));
            } else {
                return Some(Err(KeyRefusal::Concurrency {
                    in_flight: pins,
                    limit: limits.concurrency,
                }));
            };
            match slot
                .key
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        // Shadow mode, past the key's cap: pinned (it runs, and holds its place), but, like the
        // refusal it stands for, not charged to the key's rate, so that later requests are judged
        // as enforcement would judge them.
        if over.is_some() {
            return Some(Ok((index, over)));
        }
        Some(self.charge_rate(index, now, cost, limits, shadow))
    }

    /// With the slot pinned, charges the rate; unpins on refusal.
    fn charge_rate(
        &self,
        index: u32,
        now: u64,
        cost: u64,
        limits: KeyLimits,
        shadow: bool,
    ) -> Result<(u32, Option<KeyRefusal>), KeyRefusal> {
        let Some(gcra) = limits.rate else {
            return Ok((index, None));
        };
        let slot = self.slot(index);
        let mut tat = slot.tat.load(Ordering::Acquire);
        loop {
            match gcra.decide(tat, now, cost) {
                Ok(next) => match slot.tat.compare_exchange_weak(
                    tat,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok((index, None)),
                    Err(actual) => tat = actual,
                },
                // Shadow mode: the request goes ahead but, like a refused one, spends nothing.
                Err(n) if shadow => return Ok((index, Some(KeyRefusal::Rate(n)))),
                Err(n) => {
                    self.release(index);
                    return Err(KeyRefusal::Rate(n));
                }
            }
        }
    }

    /// Unpins a slot returned by [`acquire`](Self::acquire).
    pub(crate) fn release(&self, index: u32) {
        let unpinned =
            self.slot(index)
                .key
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    (w & PINS != 0).then(|| w.wrapping_add(EPOCH_ONE) - 1)
                });
        debug_assert!(unpinned.is_ok(), "a key entry unpinned with no pins");
    }

    /// Keys with an entry (for statistics; walks the table).
    pub(crate) fn occupied(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| fingerprint(s.key.load(Ordering::Relaxed)) != 0)
            .count()
    }
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits(concurrency: u64) -> KeyLimits {
        KeyLimits {
            concurrency,
            rate: Some(Gcra::new(2, SEC, 2)),
        }
    }

    #[test]
    fn every_hash_lands_in_the_table_with_an_odd_fingerprint() {
        let hashes = [0, 1, u64::MAX, u64::MAX - 1, 1 << 63, 0x9e37_79b9_7f4a_7c15];
        let lens = [1, 2, 7, 8, 1000, 131_072, 1 << 24];
        for &len in &lens {
            let mut seen = vec![0u32; len.min(1024)];
            for h in hashes
                .into_iter()
                .chain((0..4096u64).map(|i| i.wrapping_mul(0xd6e8_feb8_6659_fd93)))
            {
                let (start, fp) = place(h, len);
                assert!(start < len, "hash {h:#x}, {len} slots: start {start}");
                assert_eq!(fp & 1, 1);
                assert!(fp <= FP_MASK);
                if len <= 1024 {
                    seen[start] += 1;
                }
            }
            // Spread: with 4,102 hashes, no slot of a small table is left empty.
            if len <= 1000 {
                assert!(seen.iter().all(|&n| n > 0), "{len} slots: {seen:?}");
            }
        }
        // Keys that share a start do not share the top of their fingerprints.
        let (a, b) = (0x0123_4567_89ab_cdefu64, 0x0123_4567_89ab_cdeeu64);
        assert_eq!(place(a, 131_072).0, place(b, 131_072).0);
        assert_ne!(place(a, 131_072).1 >> 16, place(b, 131_072).1 >> 16);
    }

    #[test]
    fn probing_wraps_around_the_end_of_the_table() {
        // Three slots: every key's candidates are all three; fill them and the next key overflows.
        let t = KeyTable::new(3, Some(7));
        let l = KeyLimits {
            concurrency: 1,
            rate: None,
        };
        let slots: Vec<u32> = (0..3u8)
            .map(|k| t.acquire(&[k], 0, 1, l, false).unwrap().0)
            .collect();
        let mut sorted = slots.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "three keys, three slots: {slots:?}");
        assert_eq!(t.acquire(&[9], 0, 1, l, false).unwrap().0, OVERFLOW);
    }

    #[test]
    fn a_key_is_capped_and_released() {
        let t = KeyTable::new(16, None);
        let (a, _) = t.acquire(b"alice", 0, 1, limits(2), false).unwrap();
        let (a2, _) = t.acquire(b"alice", 0, 1, limits(2), false).unwrap();
        assert_eq!(a, a2);
        assert!(matches!(
            t.acquire(b"alice", 0, 1, limits(2), false),
            Err(KeyRefusal::Concurrency { in_flight: 2, .. })
        ));
        t.release(a);
        // Two units of burst are spent: the third request waits for the rate, half a second.
        assert_eq!(
            t.acquire(b"alice", 0, 1, limits(2), false),
            Err(KeyRefusal::Rate(Nonconforming::Wait(SEC / 2)))
        );
        assert!(t.acquire(b"bob", 0, 1, limits(2), false).is_ok());
        assert!(t.acquire(b"alice", SEC / 2, 1, limits(3), false).is_ok());
    }

    #[test]
    fn idle_keys_are_evicted_and_a_full_table_overflows() {
        let t = KeyTable::new(1, None);
        let (a, _) = t.acquire(b"a", 0, 1, limits(5), false).unwrap();
        // "a" holds the only slot: "b" goes to the overflow entry.
        let (b, _) = t.acquire(b"b", 0, 1, limits(5), false).unwrap();
        assert_eq!(b, OVERFLOW);
        t.release(a);
        t.release(b);
        // "a" is idle once its rate has refilled; then "c" takes the slot.
        let (c, _) = t.acquire(b"c", 0, 1, limits(5), false).unwrap();
        assert_eq!(c, OVERFLOW, "a's allowance is not full yet");
        t.release(c);
        let (c, _) = t.acquire(b"c", SEC, 1, limits(5), false).unwrap();
        assert_eq!(c, 0);
        assert_eq!(t.occupied(), 1);
        assert_eq!(t.capacity(), 1);
    }

    /// Keys that find no entry of their own share the overflow entry, and with it one key's
    /// limits: its concurrency and its rate, for all of them together.
    #[test]
    fn overflowed_keys_share_one_keys_concurrency_and_rate() {
        let t = KeyTable::new(1, None);
        let (a, _) = t.acquire(b"a", 0, 1, limits(2), false).unwrap();
        assert_ne!(a, OVERFLOW);
        // Two keys overflow and take the entry's two places; a third is refused.
        let (b, _) = t.acquire(b"b", 0, 1, limits(2), false).unwrap();
        let (c, _) = t.acquire(b"c", 0, 1, limits(2), false).unwrap();
        assert_eq!((b, c), (OVERFLOW, OVERFLOW));
        assert!(matches!(
            t.acquire(b"d", 0, 1, limits(2), false),
            Err(KeyRefusal::Concurrency { .. })
        ));
        // Their rate is shared too: the two charges above spent the burst of 2.
        t.release(b);
        t.release(c);
        assert!(matches!(
            t.acquire(b"e", 0, 1, limits(2), false),
            Err(KeyRefusal::Rate(_))
        ));
    }

    #[test]
    fn shadow_mode_records_but_admits() {
        let t = KeyTable::new(4, None);
        let (_, none) = t.acquire(b"k", 0, 1, limits(1), true).unwrap();
        assert_eq!(none, None);
        let (_, over) = t.acquire(b"k", 0, 1, limits(1), true).unwrap();
        assert!(matches!(over, Some(KeyRefusal::Concurrency { .. })));
        let (_, rate) = t.acquire(b"k", 0, 5, limits(9), true).unwrap();
        assert_eq!(rate, Some(KeyRefusal::Rate(Nonconforming::Never)));
    }
}

//! `admission_ops`: bytes become a small policy with admission settings and a sequence of admission
//! operations (admit by `try_admit`, `admit` or `admit_async`, drop or finish a grant, move the
//! manual clock, reload with new limits), run against a real engine and the reference model in
//! `admission_model.rs`, which checks every step.
//!
//! Layout of the input (every byte is optional; missing bytes read as zero):
//!
//! ```text
//! setup: flags, pool 0 limit, pool 1 limit, then 7 bytes for each of the 2 classes:
//!        flags, concurrency, headroom, budget limits, priority and max_keys, per-key numbers, rate period
//! ops:   tag byte, then the operation's own bytes (see `op`); at most MAX_OPS operations
//! ```
//!
//! Limits are tiny (concurrency 1 to 4, pools 1 to 12, per-key concurrency 1 to 3, bursts 1 to 4)
//! so that every kind of refusal is common.

#![allow(dead_code)]
// Results carry the engine's `Verdict` (about 144 bytes) as is, as the crate's own API does.
#![allow(clippy::result_large_err)]

#[path = "admission_model.rs"]
pub mod admission_model;
#[path = "reader.rs"]
mod reader;

use admission_model::{
    AdmissionSpec, ClassSpec, Key, KeySpec, Op, PoolSpec, RateSpec, Setup, Via, NKEYS,
};
use costguard::{Outcome, Priority};
use reader::Reader;

/// The most operations decoded from one input.
pub const MAX_OPS: usize = 200;

pub fn run(data: &[u8]) {
    let (setup, ops) = decode(data);
    admission_model::execute(&setup, &ops);
}

/// The policy and operations an input stands for.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut r = Reader(data);
    let setup = setup(&mut r);
    let nclasses = setup.classes.len();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match op(&mut r, nclasses) {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    (setup, ops)
}

/// Shares per mille, most generous first; a class's headroom picks a non-increasing run of them.
const SHARES: [u16; 9] = [1000, 900, 800, 750, 667, 500, 334, 250, 0];
/// Rate periods, ns: the tiny ones make the emission interval round down (to at least 1 ns).
const PERIODS: [u64; 8] = [
    1,
    3,
    1_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    1_000_000_000,
    2_000_000_000,
];
/// `max_keys` choices, all at least [`NKEYS`].
const MAX_KEYS: [u32; 4] = [NKEYS as u32, 5, 7, 64];
/// Clock moves, ns (at most 2 s).
const ADVANCE: [u64; 16] = [
    0,
    1,
    2,
    999_999,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    333_333_333,
    500_000_000,
    999_000_000,
    1_000_000_000,
    1_000_000_001,
    1_500_000_000,
    2_000_000_000,
];

/// A class's budget limit of a counter, from a nibble: unlimited for 0 to 5.
fn class_limit(n: u8) -> Option<u64> {
    const LIMITS: [u64; 10] = [0, 1, 2, 3, 4, 6, 8, 10, 12, 15];
    usize::from(n)
        .checked_sub(6)
        .map(|i| LIMITS[i % LIMITS.len()])
}

/// An estimate, from a nibble: mostly small, sometimes above every pool and class limit.
fn estimate(n: u8) -> u64 {
    const ESTIMATES: [u64; 16] = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 12, 16];
    ESTIMATES[usize::from(n % 16)]
}

fn pool_limit(b: u8) -> u64 {
    1 + u64::from(b % 12)
}

fn setup(r: &mut Reader<'_>) -> Setup {
    let flags = r.byte();
    let two_classes = flags & 1 != 0;
    let bare_second = flags & 2 != 0;
    let pool0 = flags & 4 != 0;
    let pool1 = flags & 8 != 0;
    let counter1 = usize::from(flags & 0x10 != 0);
    let counter0 = usize::from(flags & 0x20 != 0);
    let limits = [pool_limit(r.byte()), pool_limit(r.byte())];
    let pools = [
        pool0.then_some(PoolSpec {
            counter: counter0,
            limit: limits[0],
        }),
        pool1.then_some(PoolSpec {
            counter: counter1,
            limit: limits[1],
        }),
    ];
    let mut classes = Vec::new();
    for i in 0..2 {
        let spec = class(r, &pools);
        if i == 0 || two_classes {
            classes.push(spec);
        }
    }
    if two_classes && bare_second {
        classes[1].admission = None;
    }
    Setup { classes, pools }
}

fn class(r: &mut Reader<'_>, pools: &[Option<PoolSpec>; 2]) -> ClassSpec {
    let flags = r.byte();
    let concurrency = 1 + u32::from(r.byte() % 4);
    let h = r.byte();
    let normal = usize::from(h & 3);
    let sheddable = normal + usize::from((h >> 2) & 3);
    let background = sheddable + usize::from((h >> 4) & 7);
    let share = |i: usize| SHARES[i.min(SHARES.len() - 1)];
    let headroom = [1000, share(normal), share(sheddable), share(background)];
    let l = r.byte();
    let limits = [class_limit(l & 15), class_limit(l >> 4)];
    let p = r.byte();
    let priority = Priority::ALL[usize::from(p % 4)];
    let max_keys = MAX_KEYS[usize::from((p >> 2) % 4)];
    let k = r.byte();
    let per = PERIODS[usize::from(r.byte() % 8)];

    let mut listed = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        if flags & (0x10 << i) != 0 && pool.is_some() {
            listed.push(i);
        }
    }
    if flags & 0x40 != 0 {
        listed.reverse();
    }
    let per_key = (flags & 2 != 0).then(|| {
        let rate = (flags & 8 != 0).then_some(RateSpec {
            amount: 1 + u64::from((k >> 2) % 4),
            per_ns: per,
            burst: 1 + u64::from((k >> 4) % 4),
        });
        // Without a rate, a per-key limit needs a concurrency.
        let concurrency = (flags & 4 != 0 || rate.is_none()).then_some(1 + u32::from(k % 4).min(2));
        KeySpec {
            concurrency,
            rate,
            max_keys,
        }
    });
    ClassSpec {
        limits,
        priority,
        admission: Some(AdmissionSpec {
            concurrency,
            headroom,
            shadow: flags & 1 != 0,
            pools: listed,
            per_key,
        }),
    }
}

fn outcome(b: u8) -> Outcome {
    [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::Overload,
        Outcome::Cancelled,
    ][usize::from(b % 4)]
}

fn op(r: &mut Reader<'_>, nclasses: usize) -> Option<Op> {
    let tag = r.next()?;
    Some(match tag % 12 {
        0..=4 | 11 => {
            let s = r.byte();
            let e = r.byte();
            let m = r.byte();
            let priority = match (s >> 1) & 7 {
                p @ 0..=3 => Some(Priority::ALL[usize::from(p)]),
                _ => None,
            };
            let key = match (s >> 4) & 7 {
                k @ 0..=3 => Some(Key::Valid(usize::from(k))),
                4 => Some(Key::TooLong),
                _ => None,
            };
            Op::Admit {
                class: usize::from(s & 1) % nclasses,
                priority,
                key,
                estimates: [estimate(e & 15), estimate(e >> 4)],
                rate_cost: u64::from(m % 4),
                via: match (m >> 2) % 4 {
                    0 | 1 => Via::Try,
                    2 => Via::Blocking,
                    _ => Via::Async,
                },
            }
        }
        5 | 6 => Op::Drop { grant: r.byte() },
        7 => {
            let grant = r.byte();
            let o = r.byte();
            Op::Finish {
                grant,
                outcome: outcome(o),
                deferred: o & 4 != 0,
            }
        }
        8 | 9 => Op::Advance {
            ns: ADVANCE[usize::from(r.byte() % 16)],
        },
        _ => {
            let a = r.byte();
            let b = r.byte();
            Op::Reload {
                concurrency: [1 + u32::from(a % 4), 1 + u32::from((a >> 2) % 4)],
                flip_shadow: [a & 0x10 != 0, a & 0x20 != 0],
                pool_limits: [
                    (a & 0x40 != 0).then(|| pool_limit(b & 15)),
                    (a & 0x80 != 0).then(|| pool_limit(b >> 4)),
                ],
            }
        }
    })
}

//! `backend_ops`: bytes become a policy with one backend (no hosts, or a pool of 1 to 3) and a
//! sequence of operations on it (attempts begun, on any host or on a particular one, connected,
//! finished, dropped; retries asked for; the manual clock moved; the policy reloaded with another
//! pool and ejection share), run against a real engine and the reference model in
//! `backend_model.rs`, which checks every step.
//!
//! Layout of the input (every byte is optional; missing bytes read as zero):
//!
//! ```text
//! setup: 9 bytes of bit fields (see `setup`)
//! ops:   tag byte, then the operation's own bytes (see `op`); at most MAX_OPS operations
//! ```
//!
//! Caps are tiny (1 to 6 calls in flight, 1 to 4 connecting, 1 to 4 failures in a row, 1 to 3 probes)
//! and times short (open for 100 ms to 2 s, clock moves up to 3 s, or straight to the next time a
//! breaker or an ejection may change) so that every refusal and every transition is common.

#![allow(dead_code)]

#[path = "backend_model.rs"]
pub mod backend_model;
#[path = "reader.rs"]
mod reader;

use backend_model::{Op, Setup, MS, NO_WINDOW, SEC, SLOW_OFF};
use costguard::AttemptOutcome;
use reader::Reader;
use std::time::Duration;

/// The most operations decoded from one input.
pub const MAX_OPS: usize = 200;

pub fn run(data: &[u8]) {
    let (setup, ops) = decode(data);
    backend_model::execute(&setup, &ops);
}

/// The policy and operations an input stands for.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut r = Reader(data);
    let setup = setup(&mut r);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match op(&mut r) {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    (setup, ops)
}

const TIMEOUTS: [u64; 8] = [
    100 * MS,
    200 * MS,
    500 * MS,
    SEC,
    SEC,
    2 * SEC,
    3 * SEC,
    5 * SEC,
];
const OPEN_FOR: [u64; 4] = [100 * MS, 500 * MS, SEC, 2 * SEC];
const RAMP_UP: [u64; 4] = [0, 0, SEC, 5 * SEC];
const TREE_RETRIES: [Option<u64>; 4] = [None, Some(0), Some(3), Some(1000)];
const WINDOWS: [u64; 4] = [SEC, 2 * SEC, 10 * SEC, 3];
const FAILURE_RATIOS: [u16; 8] = [0, 250, 500, 500, 667, 750, 1000, 1000];
const SLOW_CALLS: [u64; 4] = [100 * MS, 500 * MS, SEC, 3 * SEC];
const SLOW_RATIOS: [u16; 4] = [SLOW_OFF, 500, 1000, 0];
const RETRY_RATIOS: [u16; 8] = [0, 100, 100, 250, 500, 1000, 1000, 1];
const FLOORS: [u32; 4] = [0, 1, 2, 10];
const BACKOFFS: [(u64, u64); 4] = [
    (MS, MS),
    (MS, 100 * MS),
    (25 * MS, 2 * SEC),
    (SEC, 10 * SEC),
];
const EJECT_BASE: [u64; 4] = [100 * MS, SEC, 5 * SEC, 10 * SEC];
const MAX_EJECTED: [u16; 4] = [0, 340, 500, 1000];
/// Clock moves, ns (at most 3 s).
const ADVANCE: [u64; 16] = [
    0,
    1,
    MS,
    10 * MS,
    50 * MS,
    99 * MS,
    100 * MS,
    101 * MS,
    250 * MS,
    499 * MS,
    500 * MS,
    999 * MS,
    SEC,
    1_500 * MS,
    2 * SEC,
    3 * SEC,
];
/// Retry-After of a refusal: the last one is longer than any request's time.
const RETRY_AFTER: [u64; 4] = [0, MS, 2 * SEC, 1_000_000 * SEC];

fn setup(r: &mut Reader<'_>) -> Setup {
    let [flags, caps, host_caps, breaker, open, window, slow, retry, eject] =
        [(); 9].map(|()| r.byte());
    // Windowless half the time: min_calls out of reach, so only failures in a row open the breaker.
    let windowed = flags & 4 != 0;
    let open_for = OPEN_FOR[usize::from(open % 4)];
    let (backoff_base, backoff_max) = BACKOFFS[usize::from(retry >> 6)];
    let eject_base = EJECT_BASE[usize::from((eject >> 2) % 4)];
    Setup {
        hosts: usize::from(flags % 4),
        max_in_flight: 1 + u32::from((caps & 0xf) % 6),
        max_connecting: 1 + u32::from((caps >> 4) % 4),
        max_in_flight_per_host: 1 + u32::from((host_caps & 0xf) % 3),
        max_connecting_per_host: 1 + u32::from((host_caps >> 4) % 2),
        timeout: TIMEOUTS[usize::from(breaker >> 5)],
        consecutive: 1 + u32::from(breaker % 4),
        probes: 1 + u32::from(((breaker >> 2) & 7) % 3),
        open_for,
        max_open_for: open_for << ((open >> 2) % 4),
        ramp_up: RAMP_UP[usize::from((open >> 4) % 4)],
        window: WINDOWS[usize::from(window % 4)],
        min_calls: if windowed {
            1 + u32::from((window >> 2) % 8)
        } else {
            NO_WINDOW
        },
        failure_ratio: FAILURE_RATIOS[usize::from(window >> 5)],
        slow_ratio: if windowed {
            SLOW_RATIOS[usize::from((slow >> 2) % 4)]
        } else {
            SLOW_OFF
        },
        slow_call: SLOW_CALLS[usize::from(slow % 4)],
        eject_after: 1 + u32::from((eject & 3) % 3),
        eject_base,
        eject_max: eject_base << ((eject >> 4) % 2 * 2),
        max_ejected: MAX_EJECTED[usize::from(eject >> 6)],
        retry_ratio: RETRY_RATIOS[usize::from(retry % 8)],
        min_per_second: FLOORS[usize::from((retry >> 3) % 4)],
        backoff_base,
        backoff_max,
        tree_retries: TREE_RETRIES[usize::from(open >> 6)],
    }
}

fn retry_number(b: u8) -> u32 {
    if b & 3 == 3 {
        1 + u32::from(b >> 2) % 3
    } else {
        0
    }
}

fn outcome(b: u8) -> AttemptOutcome {
    match b % 10 {
        0 | 1 => AttemptOutcome::Success,
        2 => AttemptOutcome::ClientError,
        3 => AttemptOutcome::ServerError,
        4 => AttemptOutcome::Timeout,
        5 => AttemptOutcome::UpstreamTimeout,
        6 => AttemptOutcome::ConnectFailure,
        7 => AttemptOutcome::Refused { retry_after: None },
        8 => AttemptOutcome::Refused {
            retry_after: Some(Duration::from_nanos(
                RETRY_AFTER[usize::from(b >> 4) % RETRY_AFTER.len()],
            )),
        },
        _ => AttemptOutcome::Cancelled,
    }
}

/// The orders a reloaded pool may list the hosts in.
const ORDERS: [[u8; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

fn op(r: &mut Reader<'_>) -> Option<Op> {
    let tag = r.next()?;
    if tag >= 0xfe {
        // A reload, rare as policy changes are: two tags of 256, taken from the calls and begins
        // on a particular host.
        let b = r.byte();
        return Some(Op::Reload {
            order: ORDERS[usize::from(b % 6)],
            len: 1 + (b >> 3) % 3,
            max_ejected: MAX_EJECTED[usize::from(b >> 6)],
        });
    }
    Some(match tag % 16 {
        0..=2 => Op::Begin {
            retry: retry_number(r.byte()),
            on: None,
        },
        3 | 4 => Op::Call {
            retry: retry_number(r.byte()),
            on: None,
            outcome: outcome(r.byte()),
        },
        5 => Op::Connected { slot: r.byte() },
        6 | 7 => Op::Finish {
            slot: r.byte(),
            outcome: outcome(r.byte()),
        },
        8 => Op::Drop { slot: r.byte() },
        9 | 10 => Op::Advance {
            ns: ADVANCE[usize::from(r.byte() % 16)],
        },
        11 => Op::AdvanceTo { which: r.byte() },
        12 | 13 => Op::Retry {
            outcome: outcome(r.byte()),
            attempt: match r.byte() % 8 {
                7 => u32::MAX,
                n => u32::from(n),
            },
        },
        // On a particular host: the low bits pick it, the rest is the retry number's byte.
        14 => {
            let b = r.byte();
            Op::Begin {
                retry: retry_number(b >> 2),
                on: Some(b & 3),
            }
        }
        _ => {
            let b = r.byte();
            Op::Call {
                retry: retry_number(b >> 2),
                on: Some(b & 3),
                outcome: outcome(r.byte()),
            }
        }
    })
}

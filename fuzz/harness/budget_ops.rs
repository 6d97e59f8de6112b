//! `budget_ops`: bytes become a small policy and a sequence of budget operations (charges, refunds,
//! reservations, level guards, child budgets, cancellation, clock moves, propagation), run against a
//! real engine and the reference model in `model.rs`, which checks every step.
//!
//! Layout of the input (every byte is optional; missing bytes read as zero):
//!
//! ```text
//! setup: for each of the 2 classes: 5 limit bytes, wall byte, margin byte, priority byte
//! ops:   tag byte, then the operation's own bytes (see `op`); at most MAX_OPS operations
//! ```
//!
//! Limits are mostly 0..=20 so that refusals are common; a few bytes map to "unlimited" and to
//! amounts near `u64::MAX`, so that sums overflow.

#![allow(dead_code)]

#[path = "model.rs"]
pub mod model;
#[path = "reader.rs"]
mod reader;

use model::{ClassSpec, Op, Refunds, Setup, Tighten, DEEPEST, NDIM, UNLIMITED};
use reader::Reader;

/// The most operations decoded from one input.
pub const MAX_OPS: usize = 256;

pub fn run(data: &[u8]) {
    let (setup, ops) = decode(data);
    model::execute(&setup, &ops, Refunds::Unrestricted, &mut model::check_all);
}

/// The policy and operations an input stands for.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut r = Reader(data);
    let setup = Setup {
        classes: [class(&mut r), class(&mut r)],
    }
    .normalized();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match op(&mut r) {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    (setup, ops)
}

impl Reader<'_> {
    fn node(&mut self) -> u8 {
        match self.byte() {
            b if b >= 0xF8 => DEEPEST,
            b => b,
        }
    }

    fn limit(&mut self) -> u64 {
        match self.byte() % 32 {
            v @ 0..=20 => u64::from(v),
            21..=26 => UNLIMITED,
            27 => u64::MAX - 1,
            28 => 1 << 63,
            29 => 1000,
            30 => u64::MAX / 2,
            _ => 0,
        }
    }

    fn amount(&mut self) -> u64 {
        const BIG: [u64; 8] = [
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX / 2,
            1 << 32,
            100,
            1000,
        ];
        match self.byte() {
            b if b >= 0xE0 => BIG[usize::from(b - 0xE0) % BIG.len()],
            b => u64::from(b % 24),
        }
    }

    fn millis(&mut self) -> u64 {
        const MS: [u64; 16] = [
            0,
            1,
            1,
            2,
            5,
            9,
            10,
            11,
            20,
            50,
            100,
            999,
            1000,
            30_000,
            60_000,
            u64::MAX,
        ];
        MS[usize::from(self.byte()) % MS.len()]
    }
}

fn class(r: &mut Reader<'_>) -> ClassSpec {
    const WALL: [u64; 8] = [1, 5, 10, 20, 50, 100, 1000, 30_000];
    const MARGIN: [u64; 5] = [1, 2, 5, 10, 20];
    let mut limits = [UNLIMITED; NDIM];
    for l in &mut limits {
        *l = r.limit();
    }
    let wall = r.byte();
    let wall_ms = (wall >= 4).then(|| WALL[usize::from(wall) % WALL.len()]);
    let margin_ms = MARGIN[usize::from(r.byte()) % MARGIN.len()];
    ClassSpec {
        limits,
        wall_ms,
        margin_ms,
        priority: r.byte() % 4,
    }
}

fn tighten(r: &mut Reader<'_>) -> Option<Tighten> {
    let flags = r.byte();
    if flags & 1 == 0 {
        return None;
    }
    let n = (flags >> 1) % 4;
    let limits = (0..n).map(|_| (r.byte() % NDIM as u8, r.limit())).collect();
    let wall_ms = (flags & 0x10 != 0).then(|| r.millis());
    let priority = (flags & 0x20 != 0).then(|| r.byte() % 4);
    let request_id = (flags & 0x40 != 0).then(|| u64::from(r.byte()));
    Some(Tighten {
        limits,
        wall_ms,
        priority,
        request_id,
    })
}

fn op(r: &mut Reader<'_>) -> Option<Op> {
    let tag = r.next()?;
    Some(match tag % 22 {
        0 => Op::Begin {
            class: r.byte(),
            tighten: tighten(r),
        },
        1 | 2 => Op::Child {
            parent: r.node(),
            class: match r.byte() % 3 {
                0 => None,
                k => Some(k - 1),
            },
            tighten: tighten(r),
        },
        3..=5 => Op::Charge {
            node: r.node(),
            counter: r.byte(),
            n: r.amount(),
        },
        6 => {
            let node = r.node();
            let count = r.byte() % 5;
            let items = (0..count).map(|_| (r.byte(), r.amount())).collect();
            Op::ChargeMany { node, items }
        }
        7 => Op::Refund {
            node: r.node(),
            counter: r.byte(),
            n: r.amount(),
        },
        8 => Op::Reserve {
            node: r.node(),
            counter: r.byte(),
            n: r.amount(),
        },
        9 => Op::Settle {
            slot: r.byte(),
            actual: r.amount(),
        },
        10 => Op::CancelReservation { slot: r.byte() },
        11 => Op::DropReservation { slot: r.byte() },
        12 | 13 => Op::Enter {
            node: r.node(),
            n: match r.byte() {
                b if b >= 0xF0 => u64::MAX - u64::from(b & 1),
                b => u64::from(b % 4),
            },
        },
        14 => Op::Leave { slot: r.byte() },
        15 => Op::DropBudget { node: r.node() },
        16 => Op::Cancel { node: r.node() },
        17 => Op::Advance { ms: r.millis() },
        18 => Op::StepBack { ms: r.millis() },
        19 => Op::Check {
            node: r.node(),
            how: r.byte(),
        },
        20 => Op::Propagate {
            node: r.node(),
            class: r.byte(),
        },
        _ => Op::Report { node: r.node() },
    })
}

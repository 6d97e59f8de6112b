//! `ffi_ops`: random call sequences through the C ABI with random handle values: live, freed, of another engine,
//! of the wrong kind, and garbage. A small model knows which handles are live: a live handle never
//! gives `COSTGUARD_INVALID_HANDLE`, a dead, foreign-kind or garbage one always does, and nothing
//! crashes.

#[path = "reader.rs"]
mod reader;

use costguard_ffi::*;
use reader::Reader;
use std::ptr::null_mut;

const POLICY: &str = "[dimensions]\nn = \"counter\"\nd = \"level\"\n[classes.c]\nwall_time = \"10s\"\nlimits = { n = 50, d = 3 }\n[classes.c.admission]\nconcurrency = 3\n";
const INVALID: costguard_status = costguard_status::COSTGUARD_INVALID_HANDLE;

fn engine() -> costguard_engine {
    let mut e = costguard_engine::default();
    // SAFETY: valid pointers.
    unsafe {
        costguard_engine_new_from_str(
            POLICY.as_ptr().cast(),
            POLICY.len(),
            COSTGUARD_ENGINE_MANUAL_CLOCK,
            &mut e,
        )
    };
    e
}

/// Runs one input; panics on any broken expectation.
pub fn run(data: &[u8]) {
    let mut r = Reader(data);
    let (e1, e2) = (engine(), engine());
    let mut n = costguard_counter::default();
    let mut n2 = costguard_counter::default();
    let mut c = costguard_class::default();
    let mut d = costguard_level::default();
    // SAFETY: valid pointers.
    unsafe {
        costguard_engine_counter(e1, "n".as_ptr().cast(), 1, &mut n);
        costguard_engine_counter(e2, "n".as_ptr().cast(), 1, &mut n2);
        costguard_engine_class(e1, "c".as_ptr().cast(), 1, &mut c);
        costguard_engine_level(e1, "d".as_ptr().cast(), 1, &mut d);
    }
    let mut live: Vec<u64> = Vec::new(); // budgets
    let mut dead: Vec<u64> = Vec::new();
    let mut grants: Vec<u64> = Vec::new();
    let mut guards: Vec<u64> = Vec::new();
    while let Some(op) = r.next() {
        let pick = usize::from(r.byte());
        match op % 10 {
            0 => {
                let mut b = costguard_budget::default();
                // SAFETY: valid pointers.
                let s = unsafe {
                    costguard_budget_begin(
                        e1,
                        c,
                        "f".as_ptr().cast(),
                        1,
                        std::ptr::null(),
                        0,
                        &mut b,
                        null_mut(),
                    )
                };
                if s == costguard_status::COSTGUARD_OK {
                    live.push(b.bits);
                }
            }
            1 if !live.is_empty() => {
                let b = live.swap_remove(pick % live.len());
                assert_eq!(
                    costguard_budget_free(costguard_budget { bits: b }),
                    costguard_status::COSTGUARD_OK
                );
                dead.push(b);
            }
            2 if !live.is_empty() => {
                let b = costguard_budget {
                    bits: live[pick % live.len()],
                };
                // SAFETY: NULL verdict allowed.
                let s = unsafe { costguard_budget_charge(b, n, u64::from(r.byte()), null_mut()) };
                assert_ne!(s, INVALID, "a live budget was refused as invalid");
                // Another engine's counter.
                // SAFETY: as above.
                let s = unsafe { costguard_budget_charge(b, n2, 1, null_mut()) };
                assert_eq!(s, INVALID);
                // Its usage, charged back to a live budget: charged or refused, never invalid.
                let mut buf = [0u8; 256];
                let mut len = 0usize;
                // SAFETY: `buf` has `buf.len()` writable bytes; `len` is writable.
                let s = unsafe {
                    costguard_budget_usage(b, buf.as_mut_ptr().cast(), buf.len(), &mut len)
                };
                assert_eq!(s, costguard_status::COSTGUARD_OK);
                let to = costguard_budget {
                    bits: live[usize::from(r.byte()) % live.len()],
                };
                // SAFETY: `len` bytes of `buf` are initialized; NULL verdict allowed.
                let s = unsafe {
                    costguard_budget_charge_usage(to, buf.as_ptr().cast(), len, null_mut())
                };
                assert!(
                    matches!(
                        s,
                        costguard_status::COSTGUARD_OK | costguard_status::COSTGUARD_REFUSED
                    ),
                    "{s:?}"
                );
            }
            3 if !dead.is_empty() => {
                let b = costguard_budget {
                    bits: dead[pick % dead.len()],
                };
                // SAFETY: as above.
                let s = unsafe { costguard_budget_charge(b, n, 1, null_mut()) };
                assert_eq!(s, INVALID);
                let usage = "cgu1;n=1";
                // SAFETY: `usage` is readable for its length; NULL verdict allowed.
                let s = unsafe {
                    costguard_budget_charge_usage(b, usage.as_ptr().cast(), usage.len(), null_mut())
                };
                assert_eq!(s, INVALID);
                assert_eq!(costguard_budget_free(b), INVALID);
            }
            4 => {
                let mut bits = 0u64;
                for _ in 0..8 {
                    bits = bits << 8 | u64::from(r.byte());
                }
                let known = live.contains(&bits)
                    || grants.contains(&bits)
                    || guards.contains(&bits)
                    || bits == e1.bits
                    || bits == e2.bits;
                if bits != 0 && !known {
                    let budget = costguard_budget { bits };
                    // SAFETY: as above.
                    let s = unsafe { costguard_budget_charge(budget, n, 1, null_mut()) };
                    assert_eq!(s, INVALID);
                    assert_eq!(costguard_grant_free(costguard_grant { bits }), INVALID);
                    assert_eq!(
                        costguard_level_guard_free(costguard_level_guard { bits }),
                        INVALID
                    );
                }
            }
            5 => {
                let req = costguard_admit_request {
                    class_: c,
                    request_id: "a".as_ptr().cast(),
                    request_id_len: 1,
                    key: std::ptr::null(),
                    key_len: 0,
                    priority: u32::from(r.byte() % 6),
                    flags: 0,
                    estimates: std::ptr::null(),
                    estimates_len: 0,
                    rate_cost: 0,
                    header: std::ptr::null(),
                    header_len: 0,
                };
                let mut g = costguard_grant::default();
                // SAFETY: valid pointers.
                if unsafe { costguard_admit(e1, &req, &mut g, null_mut()) }
                    == costguard_status::COSTGUARD_OK
                {
                    grants.push(g.bits);
                }
            }
            6 if !grants.is_empty() => {
                let g = grants.swap_remove(pick % grants.len());
                assert_eq!(
                    costguard_grant_finish(costguard_grant { bits: g }, u32::from(r.byte() % 4)),
                    costguard_status::COSTGUARD_OK
                );
                dead.push(g);
                // A finished grant is dead under every kind.
                assert_eq!(costguard_grant_free(costguard_grant { bits: g }), INVALID);
            }
            7 if !live.is_empty() => {
                // Wrong kinds: a budget used as a grant, an engine, a guard.
                let b = live[pick % live.len()];
                assert_eq!(
                    costguard_grant_finish(costguard_grant { bits: b }, 0),
                    INVALID
                );
                assert_eq!(
                    costguard_level_guard_free(costguard_level_guard { bits: b }),
                    INVALID
                );
                let mut g = 0;
                // SAFETY: valid pointer.
                let s =
                    unsafe { costguard_engine_generation(costguard_engine { bits: b }, &mut g) };
                assert_eq!(s, INVALID);
            }
            8 if !live.is_empty() => {
                let b = costguard_budget {
                    bits: live[pick % live.len()],
                };
                let mut g = costguard_level_guard::default();
                // SAFETY: valid pointers.
                let s = unsafe { costguard_budget_enter(b, d, 1, &mut g, null_mut()) };
                assert_ne!(s, INVALID);
                if s == costguard_status::COSTGUARD_OK {
                    guards.push(g.bits);
                }
            }
            9 if !guards.is_empty() => {
                let g = guards.swap_remove(pick % guards.len());
                assert_eq!(
                    costguard_level_guard_free(costguard_level_guard { bits: g }),
                    costguard_status::COSTGUARD_OK
                );
                dead.push(g);
            }
            _ => {}
        }
    }
    for b in live {
        costguard_budget_free(costguard_budget { bits: b });
    }
    for g in grants {
        costguard_grant_free(costguard_grant { bits: g });
    }
    for g in guards {
        costguard_level_guard_free(costguard_level_guard { bits: g });
    }
    costguard_engine_free(e1);
    costguard_engine_free(e2);
}

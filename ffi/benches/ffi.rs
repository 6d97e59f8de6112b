//! A charge through the C ABI against the same charge in Rust, measured in one run.
//!
//! `cargo bench -p costguard-ffi --bench ffi` runs criterion over four cases (a bare CAS as the
//! in-run baseline, `Budget::try_charge`, `costguard_budget_charge` from the thread that made the
//! budget, and from another thread), then prints the ratios from a separate interleaved timing pass
//! (best of several rounds), which is what the target "C ABI ≤ 1.5x Rust" is checked against.
//!
//! A second group times `costguard_budget_expired`, which reads the engine's clock precisely on every
//! call (a C ABI engine has no ticker thread: threads do not survive `fork`), against
//! `Instant::now()` alone.

use costguard::{Engine, Policy, RequestId};
use costguard_ffi::*;
use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const POLICY: &str =
    "[dimensions]\nn = \"counter\"\n[classes.c]\nlimits = { n = 1000000000000000000 }\n";

struct Setup {
    rust: costguard::Budget,
    rust_counter: costguard::Counter,
    owned: costguard_budget,
    foreign: costguard_budget,
    counter: costguard_counter,
}

fn setup() -> Setup {
    let policy = Policy::from_toml_str(POLICY).unwrap();
    let engine = Engine::new(policy).unwrap();
    let rust_counter = engine.counter("n").unwrap();
    let rust = engine
        .begin_by_name("c", RequestId::new("bench").unwrap())
        .unwrap();

    let mut e = costguard_engine::default();
    let mut counter = costguard_counter::default();
    let mut class = costguard_class::default();
    let mut owned = costguard_budget::default();
    // SAFETY: valid pointers and lengths throughout.
    unsafe {
        assert_eq!(
            costguard_engine_new_from_str(POLICY.as_ptr().cast(), POLICY.len(), 0, &mut e),
            costguard_status::COSTGUARD_OK
        );
        costguard_engine_counter(e, "n".as_ptr().cast(), 1, &mut counter);
        costguard_engine_class(e, "c".as_ptr().cast(), 1, &mut class);
        costguard_budget_begin(
            e,
            class,
            "bench".as_ptr().cast(),
            5,
            std::ptr::null(),
            0,
            &mut owned,
            null_mut(),
        );
    }
    // A budget made on another thread: this thread uses it through the counted path.
    let foreign = std::thread::spawn(move || {
        let mut b = costguard_budget::default();
        // SAFETY: as above.
        unsafe {
            costguard_budget_begin(
                e,
                class,
                "other".as_ptr().cast(),
                5,
                std::ptr::null(),
                0,
                &mut b,
                null_mut(),
            );
        }
        b
    })
    .join()
    .unwrap();
    Setup {
        rust,
        rust_counter,
        owned,
        foreign,
        counter,
    }
}

fn cas(a: &AtomicU64) {
    let v = a.load(Ordering::Relaxed);
    let _ = a.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Relaxed);
}

fn ffi_expired(b: costguard_budget) {
    let mut expired = true;
    // SAFETY: `expired` is writable.
    let s = unsafe { costguard_budget_expired(black_box(b), &mut expired) };
    debug_assert_eq!(s, costguard_status::COSTGUARD_OK);
    black_box((s, expired));
}

fn ffi_charge(b: costguard_budget, c: costguard_counter) {
    // SAFETY: NULL verdict is allowed.
    let s = unsafe { costguard_budget_charge(black_box(b), c, 1, null_mut()) };
    debug_assert_eq!(s, costguard_status::COSTGUARD_OK);
    black_box(s);
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let atom = AtomicU64::new(0);
    let mut g = c.benchmark_group("charge");
    g.bench_function("raw_cas", |b| b.iter(|| cas(black_box(&atom))));
    g.bench_function("rust_try_charge", |b| {
        b.iter(|| {
            assert!(black_box(
                s.rust.try_charge(black_box(s.rust_counter), 1).is_ok()
            ))
        })
    });
    g.bench_function("ffi_charge_owner", |b| {
        b.iter(|| ffi_charge(s.owned, s.counter))
    });
    g.bench_function("ffi_charge_other_thread", |b| {
        b.iter(|| ffi_charge(s.foreign, s.counter))
    });
    g.finish();

    let mut g = c.benchmark_group("clock");
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.bench_function("ffi_expired_owner", |b| b.iter(|| ffi_expired(s.owned)));
    g.finish();
}

/// Nanoseconds per call, best of `rounds`.
fn time(rounds: usize, iters: u64, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn ratios() {
    let s = setup();
    let atom = AtomicU64::new(0);
    let iters = 2_000_000;
    let (mut cas_ns, mut rust_ns, mut owner_ns, mut other_ns) =
        (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let (mut instant_ns, mut expired_ns) = (f64::INFINITY, f64::INFINITY);
    // Interleaved, so that frequency changes hit every case alike.
    for _ in 0..10 {
        cas_ns = cas_ns.min(time(1, iters, || cas(black_box(&atom))));
        rust_ns = rust_ns.min(time(1, iters, || {
            assert!(black_box(
                s.rust.try_charge(black_box(s.rust_counter), 1).is_ok()
            ))
        }));
        owner_ns = owner_ns.min(time(1, iters, || ffi_charge(s.owned, s.counter)));
        other_ns = other_ns.min(time(1, iters, || ffi_charge(s.foreign, s.counter)));
        instant_ns = instant_ns.min(time(1, iters, || {
            black_box(Instant::now());
        }));
        expired_ns = expired_ns.min(time(1, iters, || ffi_expired(s.owned)));
    }
    println!("\nratios (best of 10 interleaved rounds of {iters} calls):");
    println!("  raw CAS                         {cas_ns:6.2} ns");
    println!(
        "  Budget::try_charge              {rust_ns:6.2} ns  = {:.2}x CAS",
        rust_ns / cas_ns
    );
    println!(
        "  costguard_budget_charge (owner) {owner_ns:6.2} ns  = {:.2}x Rust",
        owner_ns / rust_ns
    );
    println!(
        "  costguard_budget_charge (other) {other_ns:6.2} ns  = {:.2}x Rust",
        other_ns / rust_ns
    );
    println!("  Instant::now()                  {instant_ns:6.2} ns");
    println!(
        "  costguard_budget_expired        {expired_ns:6.2} ns  = {:.2}x Instant::now()",
        expired_ns / instant_ns
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}

//! The per-key table's memory is fixed: feeding millions of distinct keys through `try_admit` never
//! grows the heap past the table and a small constant.
//!
//! A tracking global allocator wraps `System` and keeps the bytes currently allocated by the whole
//! process and the peak of that figure since the last reset. Each test measures from before its engine
//! is built, so the table itself (allocated once, when the policy is applied) is inside the figure:
//!
//! ```text
//! peak heap growth  <=  engine.key_table_memory(class)  +  SLACK
//! ```
//!
//! `SLACK` (see its definition) covers everything else the engine holds and the grants in flight. Had
//! the table kept one entry per distinct key, ten million keys would need hundreds of megabytes.
//!
//! The keys are all distinct. Each is admitted and dropped, or refused: the class holds every key to
//! one request in flight and one request per second (no burst), on a manual clock that advances 1 ms
//! every 8 keys, while the last 32 grants are kept alive. So a table of 4,096 entries sees about 8,000
//! new keys per (manual) second and frees about 4,096 per second: entries are taken over as soon as
//! their key is idle, new keys find all their candidate slots busy about half the time and fall back
//! to the shared overflow entry, and most of those are refused (`RateLimited` or `KeyConcurrency`).
//! The test asserts that all three outcomes occur.
//!
//! ```sh
//! cargo test --test key_memory    # 10,000,000 keys: about 1.5 s (the library is optimized in
//!                                 # debug builds too, see Cargo.toml)
//! ```

use costguard::clock::ManualClock;
use costguard::{AdmitRequest, Admitted, Class, Engine, Policy, Reason, RequestId};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------
// The tracking allocator.

struct Tracking;

/// Bytes currently allocated, by every thread.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The highest value of `CURRENT` since the last `reset_peak`.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, so the `GlobalAlloc` contract is
// met exactly as `System` meets it; the bookkeeping only touches atomics, which neither allocate nor
// unwind.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s preconditions, which are `System.alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`; the caller
        // upholds the remaining `realloc` preconditions.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as the new block appearing before the old one goes: the peak a copying
            // reallocation really reaches.
            grew(new_size);
            shrank(layout.size());
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Starts a new peak at the current figure; returns that figure.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    // An allocation between the two lines may have raised CURRENT past what was stored.
    PEAK.fetch_max(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    now
}

/// The counters are process-wide: the tests of this file take turns (also under `--include-ignored`).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------------
// The run.

/// Entries in the per-key table.
const MAX_KEYS: u64 = 4096;

/// Grants kept alive at any moment (the most recent ones).
const HELD: usize = 32;

/// Everything the heap may hold beyond the key table, from before the engine is built to the end of
/// the run: 128 KiB.
///
/// Measured on x86_64 Linux: the rest of the engine (policy, compiled snapshot, the class's gate,
/// names, the clocks) is about 5 KiB, and each grant in flight holds one budget node of 1,280 bytes,
/// 40 KiB for the 32 held grants: a peak of about 49 KiB above the table. The rest is headroom for the
/// harness (its main thread may allocate while a test runs) and for other platforms and toolchains.
/// A table that kept as little as 16 bytes per distinct key would need 160 MB for the ten million
/// keys of the run.
const SLACK: usize = 128 * 1024;

/// Bytes other threads may allocate and still hold while a test runs (the harness formats and
/// prints results on its main thread). The counters are process-wide, so these show up too.
const STRAY: usize = 4096;

/// What one run saw.
#[derive(Debug, Default)]
struct Run {
    admitted: u64,
    rate_limited: u64,
    key_concurrency: u64,
    other: u64,
}

fn policy() -> Policy {
    Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1_000)
                    .per_key_concurrency(1)
                    .per_key_rate(1, Duration::from_secs(1), 1)
                    .max_keys(MAX_KEYS)
            })
        })
        .build()
        .expect("policy")
}

/// `(occupied, capacity)` of the class's key table.
fn key_stats(engine: &Engine) -> (usize, usize) {
    engine
        .admission_stats()
        .class("api")
        .and_then(|c| c.keys)
        .expect("key stats")
}

/// Feeds `keys` distinct keys through `try_admit` and checks the memory bound.
fn feed(keys: u64) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let began = Instant::now();

    let base = reset_peak();
    let clock = ManualClock::new();
    let engine = Engine::builder(policy())
        .clock(clock.clone())
        .build()
        .expect("engine");
    let api: Class = engine.class("api").expect("class");
    let table = engine
        .key_table_memory(api)
        .expect("the class has a key table");
    let built = CURRENT.load(Ordering::Relaxed) - base;
    // (The statistics report is allocated and freed here, well below SLACK.)
    let (_, capacity) = key_stats(&engine);
    assert_eq!(capacity as u64, MAX_KEYS);

    // The ring of grants kept alive, allocated before the run like everything else the test holds.
    let mut held: Vec<Option<Admitted>> = (0..HELD).map(|_| None).collect();
    let mut run = Run::default();
    let before_run = CURRENT.load(Ordering::Relaxed);

    for n in 0..keys {
        if n % 8 == 0 {
            clock.advance(Duration::from_millis(1));
        }
        let mut key = *b"user:\0\0\0\0\0\0\0\0\0\0\0";
        key[8..].copy_from_slice(&n.to_le_bytes());
        let request = AdmitRequest::new(api, RequestId::from_u64(n)).key(&key);
        match engine.try_admit(&request) {
            Ok(admitted) => {
                run.admitted += 1;
                // Replaces (drops) the grant admitted HELD admissions ago.
                held[n as usize % HELD] = Some(admitted);
            }
            Err(v) => match v.reason() {
                Reason::RateLimited => run.rate_limited += 1,
                Reason::KeyConcurrency => run.key_concurrency += 1,
                _ => run.other += 1,
            },
        }
    }
    let during = CURRENT.load(Ordering::Relaxed);
    drop(held);
    let after = CURRENT.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed) - base;

    eprintln!(
        "{keys} keys in {:.1?}: {run:?}; key table {table} bytes, engine built {built} bytes, peak \
         heap growth {peak} bytes (bound {} bytes), {} bytes held by {HELD} grants at the end",
        began.elapsed(),
        table + SLACK,
        during.saturating_sub(before_run),
    );
    assert!(
        peak <= table + SLACK,
        "peak heap growth {peak} bytes exceeds the key table ({table} bytes) + {SLACK} bytes"
    );
    // Other threads (the harness's) may allocate or free a little meanwhile; the admissions
    // themselves must leave nothing behind.
    assert!(
        after <= before_run + STRAY,
        "the run left {} bytes behind",
        after - before_run
    );
    assert_eq!(
        engine.key_table_memory(api),
        Some(table),
        "the table changed size"
    );
    let (occupied, capacity) = key_stats(&engine);
    assert_eq!(capacity as u64, MAX_KEYS, "the table's capacity changed");
    assert!(occupied as u64 <= MAX_KEYS);
    assert!(run.admitted > 0 && run.rate_limited > 0 && run.key_concurrency > 0);
    assert_eq!(run.other, 0, "{run:?}");
    assert_eq!(run.admitted + run.rate_limited + run.key_concurrency, keys);
}

/// Ten million admissions: about 1.5 s, the library being optimized in debug builds too.
#[test]
fn ten_million_keys_fit_in_the_table() {
    feed(10_000_000);
}

//! Loom models of the handle table, one invariant each:
//! - a free racing a use never lets the use see a dropped value;
//! - the value is dropped exactly once, whoever is last;
//! - a stale handle never reaches the value of the slot's next occupant;
//! - the owner's fast path against a free from another thread (asymmetric fence modelled as two
//!   SeqCst fences);
//! - a thread that owned a slot's previous value never takes the owner's fast path on the next
//!   value, which its new owner frees without looking for hazards.
//!
//! `RUSTFLAGS="--cfg costguard_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom-ffi
//!  cargo test -p costguard-ffi --release --test loom_handle`
#![cfg(costguard_loom)]

use costguard_ffi::handle::Table;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

/// Counts its drops and knows whether it was dropped.
#[derive(Debug)]
struct Tracked {
    drops: Arc<AtomicUsize>,
    id: usize,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// A table holding one tracked value `id` (kind 2, no owner), its drop counter, and its handle.
fn table_with(id: usize) -> (Arc<Table<Tracked>>, Arc<AtomicUsize>, u64) {
    let table = Arc::new(Table::<Tracked>::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let tracked = Tracked {
        drops: drops.clone(),
        id,
    };
    let h = table.insert(2, tracked, None).unwrap();
    (table, drops, h)
}

#[test]
fn a_use_racing_a_free_never_sees_a_dropped_value() {
    loom::model(|| {
        let (table, drops, h) = table_with(7);
        let user = {
            let (table, drops) = (table.clone(), drops.clone());
            loom::thread::spawn(move || {
                if let Ok(v) = table.acquire(h, 2, None) {
                    assert_eq!(drops.load(Ordering::SeqCst), 0, "used after drop");
                    assert_eq!(v.id, 7);
                }
            })
        };
        drop(table.claim(h, 2, None).unwrap());
        user.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn two_frees_drop_exactly_once() {
    loom::model(|| {
        let (table, drops, h) = table_with(1);
        let other = {
            let table = table.clone();
            loom::thread::spawn(move || table.claim(h, 2, None).is_ok())
        };
        let mine = table.claim(h, 2, None).is_ok();
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one free succeeds");
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_stale_handle_never_reaches_the_next_occupant() {
    loom::model(|| {
        let (table, drops, old) = table_with(1);
        let stale_user = {
            let table = table.clone();
            loom::thread::spawn(move || {
                if let Ok(v) = table.acquire(old, 2, None) {
                    assert_eq!(v.id, 1, "a stale handle reached a reused slot");
                }
            })
        };
        drop(table.claim(old, 2, None).unwrap());
        let new = table
            .insert(
                2,
                Tracked {
                    drops: drops.clone(),
                    id: 2,
                },
                None,
            )
            .unwrap();
        stale_user.join().unwrap();
        assert_ne!(old, new);
        assert_eq!(table.acquire(new, 2, None).unwrap().id, 2);
        drop(table.claim(new, 2, None).unwrap());
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn the_owner_fast_path_against_a_free_from_another_thread() {
    loom::model(|| {
        let table = Arc::new(Table::<Tracked>::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let owner = table.register();
        let h = table
            .insert(
                2,
                Tracked {
                    drops: drops.clone(),
                    id: 3,
                },
                Some(owner),
            )
            .unwrap();
        let freer = {
            let table = table.clone();
            loom::thread::spawn(move || drop(table.claim(h, 2, None).unwrap()))
        };
        if let Ok(v) = table.acquire(h, 2, Some(owner)) {
            assert_eq!(
                drops.load(Ordering::SeqCst),
                0,
                "the fast path used a dropped value"
            );
            assert_eq!(v.id, 3);
        }
        freer.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_stale_owner_never_takes_the_fast_path_on_the_next_value() {
    loom::model(|| {
        let table = Arc::new(Table::<Tracked>::new());
        let drops = Arc::new(AtomicUsize::new(0));
        // This thread owned the slot's first value, now freed; another thread reuses the slot.
        let me = table.register();
        let unused = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked {
            drops: unused,
            id: 1,
        };
        let old = table.insert(2, tracked, Some(me)).unwrap();
        drop(table.claim(old, 2, Some(me)).unwrap());
        let handle = Arc::new(loom::sync::atomic::AtomicU64::new(0));
        let other = {
            let (table, drops, handle) = (table.clone(), drops.clone(), handle.clone());
            loom::thread::spawn(move || {
                let owner = table.register();
                let h = table
                    .insert(2, Tracked { drops, id: 2 }, Some(owner))
                    .unwrap();
                // Relaxed: a handle may reach a thread with nothing ordered (or be guessed).
                handle.store(h, Ordering::Relaxed);
                drop(table.claim(h, 2, Some(owner)).unwrap());
            })
        };
        let h = handle.load(Ordering::Relaxed);
        if h != 0 {
            if let Ok(v) = table.acquire(h, 2, Some(me)) {
                assert_eq!(drops.load(Ordering::SeqCst), 0, "used after its drop");
                assert_eq!(v.id, 2);
            }
        }
        other.join().unwrap();
    });
}

//! The discrete-event machinery every scenario is built from.
//!
//! A replay must be fast (minutes of an outage in well under a second), exactly reproducible (the same
//! seed gives the same table, byte for byte) and honest (the guarded side drives the real engine, not a
//! model of it). So nothing here sleeps, spawns a thread or reads the wall clock: time is a `u64` of
//! simulated nanoseconds that only the event queue moves, the engine reads it from a
//! [`ManualClock`](costguard::clock::ManualClock) set before every event, and every random choice comes
//! from one seeded generator. Results are kept in `Vec`s and `BTreeMap`s, never in hash-ordered maps.

pub mod database;
pub mod events;
pub mod guard;
pub mod metrics;
pub mod rng;
pub mod slab;
pub mod threads;

/// Simulated nanoseconds in a millisecond.
pub const MS: u64 = 1_000_000;
/// Simulated nanoseconds in a second.
pub const SECOND: u64 = 1_000_000_000;
/// Simulated nanoseconds in a minute.
pub const MINUTE: u64 = 60 * SECOND;

/// Simulated nanoseconds as seconds, for reports.
pub fn seconds(ns: u64) -> f64 {
    ns as f64 / SECOND as f64
}

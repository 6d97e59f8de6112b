//! The costguard command's library: a deterministic discrete-event replay of the incidents costguard
//! exists for, driving the real engine on a manual clock, and the renderings of its results.
//!
//! [`replay`] runs a built-in scenario twice from the same seed: once as the incident happened (no
//! limits, the retries the report describes, threads that wait forever), once with the real
//! [`costguard::Engine`] at every door, budget, backend call and retry decision, under the scenario's
//! policy (`cli/scenarios/<name>.toml`, see [`default_policy`]) or the caller's. Time is simulated
//! (a `costguard::clock::ManualClock` set before every event; nothing sleeps), every random choice
//! comes from the seed, and results are kept in ordered containers, so the same seed gives the same
//! [`Comparison`], byte for byte.
//!
//! ```
//! let options = costguard_cli::ReplayOptions::default();
//! let c = costguard_cli::replay("kafka-2016", &options, &mut |_| {}).unwrap();
//! assert_eq!(c.unguarded.max_threads_stuck, c.unguarded.threads); // every thread in connect()
//! assert!(c.guarded.goodput_unaffected > 0.95);
//! ```
//!
//! Modules: [`sim`] (the event queue, the seeded generator, the database, thread pools, metrics and
//! the engine wrapper) and [`scenario`] (`commons-2015`, `kafka-2016`, `retry-storm`).

pub mod chart;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod table;

pub use report::{Comparison, Event, RunReport};

use std::fmt;

/// A built-in scenario.
#[derive(Clone, Copy, Debug)]
pub struct ScenarioInfo {
    /// Its name, as given to `costguard replay`.
    pub name: &'static str,
    /// One line on what it replays.
    pub summary: &'static str,
    /// Whether `costguard replay` with no name runs it (the two incidents).
    pub incident: bool,
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Seed of every random choice; the same seed gives the same result, byte for byte.
    pub seed: u64,
    /// A policy to guard with instead of the scenario's own.
    pub policy: Option<costguard::Policy>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            seed: 2015,
            policy: None,
        }
    }
}

/// Why a replay could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// No built-in scenario has this name.
    UnknownScenario(String),
    /// The policy given does not declare what the scenario needs (classes, counters, backends).
    Policy(String),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::UnknownScenario(name) => {
                write!(f, "no scenario named `{name}` (see `costguard scenarios`)")
            }
            ReplayError::Policy(why) => write!(f, "the policy cannot guard this scenario: {why}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// The built-in scenarios.
pub fn scenarios() -> &'static [ScenarioInfo] {
    const INFOS: [ScenarioInfo; scenario::ALL.len()] = [
        scenario::ALL[0].info,
        scenario::ALL[1].info,
        scenario::ALL[2].info,
    ];
    &INFOS
}

/// The policy a scenario is guarded by when none is given, as TOML.
pub fn default_policy(scenario: &str) -> Result<&'static str, ReplayError> {
    scenario::find(scenario).map(|s| s.policy)
}

/// Checks, without running anything, that `policy` declares everything `scenario`'s guarded run needs
/// (the check [`replay`] makes before it starts).
pub fn check_policy(scenario: &str, policy: &costguard::Policy) -> Result<(), ReplayError> {
    let spec = scenario::find(scenario)?;
    sim::guard::check(policy, spec.needs)
}

/// Replays `scenario` unguarded and guarded. `progress` is called now and then with the fraction done
/// (0 to 1), for a progress bar.
pub fn replay(
    scenario: &str,
    options: &ReplayOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<Comparison, ReplayError> {
    let spec = scenario::find(scenario)?;
    scenario::compare(spec, options.seed, options.policy.as_ref(), progress)
}

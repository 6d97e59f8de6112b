//! The costguard command's library: a deterministic discrete-event replay of the incidents costguard
//! exists for, driving the real engine on a manual clock, and the renderings of its results.

pub mod report;

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
        ReplayOptions { seed: 2015, policy: None }
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
    // Placeholder until the simulator lands.
    &[]
}

/// The policy a scenario is guarded by when none is given, as TOML.
pub fn default_policy(scenario: &str) -> Result<&'static str, ReplayError> {
    Err(ReplayError::UnknownScenario(scenario.to_string()))
}

/// Replays `scenario` unguarded and guarded. `progress` is called now and then with the fraction done
/// (0 to 1), for a progress bar.
pub fn replay(
    scenario: &str,
    options: &ReplayOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<Comparison, ReplayError> {
    let _ = (options, progress);
    Err(ReplayError::UnknownScenario(scenario.to_string()))
}

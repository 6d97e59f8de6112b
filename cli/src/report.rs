//! What one replay measured: the shared vocabulary of the simulator, the table, the JSON and the chart.

use serde::Serialize;
use std::collections::BTreeMap;

/// One run of a scenario (unguarded or guarded).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunReport {
    /// Requests the incident's trigger generated across every tier, divided by the original edits or
    /// requests that started them.
    pub amplification: f64,
    /// Original edits or requests injected by the scenario's trigger.
    pub originals: u64,
    /// Requests generated in total by those originals, every tier counted.
    pub generated: u64,
    /// Queries the database served (or accepted into its queue).
    pub db_queries: u64,
    /// The longest the database queue got.
    pub peak_db_queue: u64,
    /// Worker threads of the tier under study.
    pub threads: u64,
    /// The most threads busy at once.
    pub max_threads_busy: u64,
    /// The most threads stuck at once (waiting on something that will not answer in time).
    pub max_threads_stuck: u64,
    /// Share of the ordinary traffic of unaffected users that succeeded in time, 0 to 1.
    pub goodput_unaffected: f64,
    /// 5xx responses per simulated minute, from the start of the run.
    pub errors_per_minute: Vec<u64>,
    /// Step of the sampled series below, in seconds.
    pub sample_seconds: u64,
    /// Threads busy, sampled every `sample_seconds`.
    pub threads_busy: Vec<u64>,
    /// Threads stuck, sampled every `sample_seconds`.
    pub threads_stuck: Vec<u64>,
    /// Seconds from the start of the fault until unaffected goodput is back to normal for good (the
    /// end of the last degraded window); `None` when it never was within the run.
    pub recovery_seconds: Option<f64>,
    /// Seconds after the fault during which unaffected goodput was below normal, in all: the sum of
    /// the degraded windows, however far apart (a fault that comes back in waves degrades service
    /// for less than the time until it is over).
    pub degraded_seconds: f64,
    /// What costguard refused, counted by reason (`Reason::as_str`); empty for the unguarded run.
    pub refusals: BTreeMap<String, u64>,
    /// Notable moments (a broker ejected or readmitted, the database saturated, ...), in time order.
    pub events: Vec<Event>,
    /// For the guarded run, the most amplification the policy's request-tree allowance permits (the
    /// bound `amplification` must stay within); `None` for the unguarded run.
    pub amplification_allowed: Option<f64>,
    /// Scenario-specific tallies by name (always `unaffected_requests` and `unaffected_succeeded`;
    /// for example parses completed, or log events delivered per broker).
    pub counts: BTreeMap<String, u64>,
}

/// A notable moment of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// Simulated seconds since the start of the run.
    pub at_seconds: f64,
    /// What happened, in a few words.
    pub what: String,
}

/// Both runs of one scenario.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    /// The scenario's name.
    pub scenario: String,
    /// The seed both runs used.
    pub seed: u64,
    /// Simulated length of each run, in seconds.
    pub duration_seconds: u64,
    /// When the fault starts (the first edit, the broker going away), in simulated seconds.
    pub fault_at_seconds: f64,
    /// Without costguard.
    pub unguarded: RunReport,
    /// With costguard, under the scenario's policy (or the one given).
    pub guarded: RunReport,
}

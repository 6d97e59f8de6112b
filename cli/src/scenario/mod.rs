//! The built-in scenarios, and how a replay runs one twice.
//!
//! Each scenario is a module with its figures as documented constants at the top, its default policy
//! in `cli/scenarios/<name>.toml` (compiled in, so `costguard check` can show it and users can copy
//! it), and one traffic model that runs either without the engine (the incident as it happened) or
//! with it (a [`Guard`](crate::sim::guard::Guard) at every decision a real deployment would hand to
//! costguard). Both runs see the same traffic from the same seed.

pub mod commons;
pub mod kafka;
pub mod retry_storm;

use crate::sim::guard::Needs;
use crate::{Comparison, ReplayError, RunReport, ScenarioInfo};
use costguard::Policy;

/// One run of a scenario.
pub struct Run<'a> {
    /// Seed of every random choice.
    pub seed: u64,
    /// The policy to guard with; `None` for the unguarded run.
    pub guard: Option<&'a Policy>,
    /// Told the fraction of this run done, now and then.
    pub progress: &'a mut dyn FnMut(f64),
}

/// A built-in scenario.
pub struct Spec {
    /// Name and summary.
    pub info: ScenarioInfo,
    /// Its default policy, as TOML.
    pub policy: &'static str,
    /// Simulated length of a run, ns.
    pub duration: u64,
    /// When the fault starts, ns.
    pub fault_at: u64,
    /// What a policy must declare to guard it.
    pub needs: &'static Needs<'static>,
    /// Runs it once.
    pub run: fn(Run<'_>) -> Result<RunReport, ReplayError>,
}

/// Every built-in scenario, the incidents first.
pub const ALL: [&Spec; 3] = [&commons::SPEC, &kafka::SPEC, &retry_storm::SPEC];

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static Spec, ReplayError> {
    ALL.iter()
        .copied()
        .find(|s| s.info.name == name)
        .ok_or_else(|| ReplayError::UnknownScenario(name.to_owned()))
}

/// Runs `spec` unguarded, then guarded by `policy` (or its own).
pub fn compare(
    spec: &Spec,
    seed: u64,
    policy: Option<&Policy>,
    progress: &mut dyn FnMut(f64),
) -> Result<Comparison, ReplayError> {
    let own;
    let policy = match policy {
        Some(p) => p,
        None => {
            own = Policy::from_toml_str(spec.policy)
                .map_err(|e| ReplayError::Policy(format!("built-in policy: {e}")))?;
            &own
        }
    };
    crate::sim::guard::check(policy, spec.needs)?;
    let unguarded = (spec.run)(Run {
        seed,
        guard: None,
        progress: &mut |f| progress(f.clamp(0.0, 1.0) / 2.0),
    })?;
    let guarded = (spec.run)(Run {
        seed,
        guard: Some(policy),
        progress: &mut |f| progress(0.5 + f.clamp(0.0, 1.0) / 2.0),
    })?;
    Ok(Comparison {
        scenario: spec.info.name.to_owned(),
        seed,
        duration_seconds: spec.duration / crate::sim::SECOND,
        fault_at_seconds: crate::sim::seconds(spec.fault_at),
        unguarded,
        guarded,
    })
}

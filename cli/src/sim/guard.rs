//! The real engine, on the simulated clock, as the guarded run uses it.
//!
//! The guarded side of a replay is only worth something if it is the library a service would link,
//! configured the way a service would configure it: so this builds a plain [`Engine`] from the policy,
//! gives it a [`ManualClock`] that the event loop sets before every event, and records what the engine
//! reports (refusals by reason, breaker and ejection transitions) for the table. It also checks up
//! front that a policy names everything a scenario needs, so that a user's own policy fails with a
//! message naming what is missing instead of half a replay.

use super::metrics::Recorder;
use crate::ReplayError;
use costguard::backend::{Transition, TransitionKind};
use costguard::clock::{ManualClock, Timestamp};
use costguard::policy::DimensionKind;
use costguard::{Engine, Policy, Verdict};
use std::sync::{Arc, Mutex};

/// What a scenario's guarded run needs from a policy.
pub struct Needs<'a> {
    /// Classes, by name.
    pub classes: &'a [&'a str],
    /// Counter dimensions, by name.
    pub counters: &'a [&'a str],
    /// Backends, by name, with the hosts each must list.
    pub backends: &'a [(&'a str, &'a [&'a str])],
}

/// Checks that `policy` declares everything in `needs`, naming all that is missing.
pub fn check(policy: &Policy, needs: &Needs<'_>) -> Result<(), ReplayError> {
    let mut missing = Vec::new();
    for class in needs.classes {
        if policy.class(class).is_none() {
            missing.push(format!("class `{class}`"));
        }
    }
    for counter in needs.counters {
        match policy.dimension(counter).map(|d| d.kind()) {
            Some(DimensionKind::Counter) => {}
            Some(_) => missing.push(format!("counter `{counter}` (declared as a level)")),
            None => missing.push(format!("counter `{counter}`")),
        }
    }
    for (backend, hosts) in needs.backends {
        match policy.backend(backend) {
            None => missing.push(format!("backend `{backend}`")),
            Some(b) => {
                for host in *hosts {
                    if !b.hosts().any(|h| h == *host) {
                        missing.push(format!("host `{host}` of backend `{backend}`"));
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ReplayError::Policy(format!(
            "it lacks {}",
            missing.join(", ")
        )))
    }
}

/// One process's engine (an app server, a tier).
pub struct Guard {
    /// The engine.
    pub engine: Engine,
    clock: ManualClock,
    transitions: Arc<Mutex<Vec<Transition>>>,
    label: String,
}

impl Guard {
    /// An engine for `policy` on `clock`; `label` names the process in events ("" for none). The
    /// replay's `seed` also seeds the per-key tables' hash, so that a policy with per-key limits
    /// replays the same way every time.
    pub fn new(
        policy: Policy,
        clock: &ManualClock,
        label: &str,
        seed: u64,
    ) -> Result<Guard, ReplayError> {
        let transitions: Arc<Mutex<Vec<Transition>>> = Arc::default();
        let seen = Arc::clone(&transitions);
        let engine = Engine::builder(policy)
            .clock(clock.clone())
            .key_hash_seed(seed)
            .on_transition(move |t| {
                if let Ok(mut log) = seen.lock() {
                    log.push(t.clone());
                }
            })
            .build()
            .map_err(|e| ReplayError::Policy(e.to_string()))?;
        Ok(Guard {
            engine,
            clock: clock.clone(),
            transitions,
            label: label.to_owned(),
        })
    }

    /// Sets the simulated time.
    pub fn set_time(&self, now: u64) {
        self.clock.set(Timestamp::from_nanos(now));
    }

    /// Moves breaker and ejection transitions into the run's events (when `record`; half-opening
    /// breakers are left out as noise); returns them for the scenario.
    pub fn drain(&self, rec: &mut Recorder, record: bool) -> Vec<Transition> {
        let taken = match self.transitions.lock() {
            Ok(mut log) if !log.is_empty() => std::mem::take(&mut *log),
            _ => return Vec::new(),
        };
        for t in taken.iter().filter(|_| record) {
            let what = match t.kind {
                TransitionKind::Opened => "breaker opened",
                TransitionKind::HalfOpened | TransitionKind::ProbesRestarted => continue,
                TransitionKind::Closed => "breaker closed",
                TransitionKind::Ejected => "ejected",
                TransitionKind::Readmitted => "readmitted on probation",
                _ => "changed state",
            };
            let subject = match &t.host {
                Some(h) => format!("{} host {h}", t.backend),
                None => t.backend.to_string(),
            };
            let prefix = if self.label.is_empty() {
                String::new()
            } else {
                format!("{}: ", self.label)
            };
            rec.repeatable_event(t.at, format!("{prefix}{subject} {what}"));
        }
        taken
    }
}

/// Records a refusal by its reason.
pub fn refused(rec: &mut Recorder, verdict: &Verdict) {
    rec.refusal(verdict.reason().as_str());
}

/// A name the policy check missed (it cannot, but a user policy is input: no panics).
pub fn named<T>(r: Result<T, costguard::NameError>) -> Result<T, ReplayError> {
    r.map_err(|e| ReplayError::Policy(e.to_string()))
}

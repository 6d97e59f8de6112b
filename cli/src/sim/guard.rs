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
    /// replay's `seed` also seeds the per-key tables' hash (so that an engine here is as
    /// deterministic as the rest, although the built-in scenarios' requests carry no key), and,
    /// mixed with `label`, the engine's random draws (retry jitter, breakers' open times), so that
    /// each simulated process draws its own, as real ones do.
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
            .random_seed(process_seed(seed, label))
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
                TransitionKind::EjectionEnded => "ejection ended (out of the pool)",
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

/// The seed of one simulated process's random draws: the replay's seed and the process's label,
/// mixed (FNV-1a over the label's bytes, from the seed).
fn process_seed(seed: u64, label: &str) -> u64 {
    label.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use costguard::{AttemptOutcome, RequestId, RetryDecision};
    use std::time::Duration;

    /// The first retry's backoff drawn by a process labelled `label` under replay seed `seed`.
    fn first_backoff(seed: u64, label: &str) -> Duration {
        let policy = Policy::builder()
            .class("app", |c| c.retries(1))
            .backend("kafka", |b| {
                b.duration("retry.backoff_base", Duration::from_secs(1))
            })
            .build()
            .unwrap();
        let guard = Guard::new(policy, &ManualClock::new(), label, seed).unwrap();
        let kafka = guard.engine.backend("kafka").unwrap();
        let budget = guard
            .engine
            .begin_by_name("app", RequestId::from_u64(1))
            .unwrap();
        match guard
            .engine
            .retry(kafka, &budget, AttemptOutcome::ConnectFailure, 1)
        {
            RetryDecision::After(d) => d,
            RetryDecision::Stop(v) => panic!("{v}"),
        }
    }

    /// Simulated processes on one clock draw their own jitter, from the replay's seed: the same
    /// every run, different from one process to the next and from one seed to the next.
    #[test]
    fn each_process_draws_its_own_jitter_from_the_seed() {
        assert_eq!(first_backoff(2016, "app1"), first_backoff(2016, "app1"));
        assert_ne!(first_backoff(2016, "app1"), first_backoff(2016, "app2"));
        assert_ne!(first_backoff(2016, "app1"), first_backoff(2017, "app1"));
    }
}

//! What a run measures, defined once for every scenario.
//!
//! - **5xx per minute**: responses with a server error status served to any client in that simulated
//!   minute, including the 503 or 504 a front end serves when its backend did not answer in time (a
//!   timed-out request counts in the minute its caller gave up) and costguard's own refusals (503 with
//!   Retry-After). Requests that never got an answer count in the minute their caller gave up.
//! - **unaffected goodput**: of the requests of ordinary users (not the trigger's) that arrived from
//!   the fault's start to the end of the run, the share answered successfully before their caller's
//!   timeout.
//! - **normal**: a `sample_seconds` bucket of ordinary arrivals is normal when at least
//!   [`NORMAL_GOODPUT`] of them succeeded in time. **Recovery** is the time from the fault's start to the
//!   end of the last abnormal bucket, provided every bucket after it is normal; zero when no bucket was
//!   abnormal; none when the run ended abnormal.
//! - **busy / stuck threads**: threads of the tier under study serving a request, and those of them
//!   blocked on something that will not answer within their caller's timeout (see
//!   [`threads`](super::threads)), sampled every second for the maxima and every `sample_seconds` for
//!   the series.

use super::{seconds, MINUTE, SECOND};
use crate::report::{Event, RunReport};
use std::collections::BTreeMap;

/// The share of ordinary requests of a bucket that must succeed for it to count as normal.
pub const NORMAL_GOODPUT: f64 = 0.99;
/// An event that repeats one already recorded less than this long ago (a breaker flapping while its
/// backend is sick) is counted in `repeated_events_omitted` instead of listed again.
pub const EVENT_REPEAT_WINDOW: u64 = 60 * SECOND;

/// The totals a run adds at its end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Threads of the tier under study.
    pub threads: u64,
    /// The most busy at once.
    pub max_threads_busy: u64,
    /// Queries the database served.
    pub db_queries: u64,
    /// The longest its queue got.
    pub peak_db_queue: u64,
    /// The amplification the guarding policy permits, for the guarded run.
    pub amplification_allowed: Option<f64>,
}

/// Collects one run's measurements.
pub struct Recorder {
    duration: u64,
    fault_at: u64,
    sample: u64,
    errors: Vec<u64>,
    ok: Vec<u64>,
    total: Vec<u64>,
    busy: Vec<u64>,
    stuck: Vec<u64>,
    max_stuck: u64,
    ok_after_fault: u64,
    total_after_fault: u64,
    refusals: BTreeMap<String, u64>,
    events: Vec<Event>,
    last_event: BTreeMap<String, u64>,
    counts: BTreeMap<String, u64>,
    /// Original edits or requests of the trigger.
    pub originals: u64,
    /// Requests they generated, every tier counted.
    pub generated: u64,
}

impl Recorder {
    /// A recorder for a run of `duration` ns whose fault starts at `fault_at`, sampling every
    /// `sample_seconds`.
    pub fn new(duration: u64, fault_at: u64, sample_seconds: u64) -> Recorder {
        let sample = sample_seconds.max(1).saturating_mul(SECOND);
        let minutes = duration.div_ceil(MINUTE) as usize;
        let buckets = duration.div_ceil(sample) as usize;
        Recorder {
            duration,
            fault_at,
            sample,
            errors: vec![0; minutes],
            ok: vec![0; buckets],
            total: vec![0; buckets],
            busy: Vec::with_capacity(buckets + 1),
            stuck: Vec::with_capacity(buckets + 1),
            max_stuck: 0,
            ok_after_fault: 0,
            total_after_fault: 0,
            refusals: BTreeMap::new(),
            events: Vec::new(),
            last_event: BTreeMap::new(),
            counts: BTreeMap::new(),
            originals: 0,
            generated: 0,
        }
    }

    /// A 5xx served at `at`.
    pub fn error(&mut self, at: u64) {
        if let Some(m) = self.errors.get_mut((at / MINUTE) as usize) {
            *m += 1;
        }
    }

    /// An ordinary request that arrived at `arrival` succeeded in time, or did not.
    pub fn unaffected(&mut self, arrival: u64, ok: bool) {
        let b = (arrival / self.sample) as usize;
        if let (Some(t), Some(o)) = (self.total.get_mut(b), self.ok.get_mut(b)) {
            *t += 1;
            *o += u64::from(ok);
        }
        if arrival >= self.fault_at && arrival < self.duration {
            self.total_after_fault += 1;
            self.ok_after_fault += u64::from(ok);
        }
    }

    /// Threads busy and stuck at `now` (called every second).
    pub fn sample(&mut self, now: u64, busy: u64, stuck: u64) {
        self.max_stuck = self.max_stuck.max(stuck);
        if now % self.sample == 0 && now <= self.duration {
            self.busy.push(busy);
            self.stuck.push(stuck);
        }
    }

    /// Threads stuck at this moment, when a scenario knows the exact count between samples.
    pub fn stuck_now(&mut self, stuck: u64) {
        self.max_stuck = self.max_stuck.max(stuck);
    }

    /// Something costguard refused, by `Reason::as_str`.
    pub fn refusal(&mut self, reason: &str) {
        *self.refusals.entry(reason.to_owned()).or_insert(0) += 1;
    }

    /// A notable moment.
    pub fn event(&mut self, at: u64, what: impl Into<String>) {
        self.events.push(Event {
            at_seconds: seconds(at),
            what: what.into(),
        });
    }

    /// A notable moment that may repeat often (an engine transition): left out, and counted, when
    /// the same one was listed less than [`EVENT_REPEAT_WINDOW`] ago.
    pub fn repeatable_event(&mut self, at: u64, what: impl Into<String>) {
        let what = what.into();
        if let Some(&last) = self.last_event.get(&what) {
            if at >= last && at - last < EVENT_REPEAT_WINDOW {
                return self.count("repeated_events_omitted", 1);
            }
        }
        self.last_event.insert(what.clone(), at);
        self.events.push(Event {
            at_seconds: seconds(at),
            what,
        });
    }

    /// Adds to a scenario-specific tally.
    pub fn count(&mut self, name: &str, n: u64) {
        let c = self.counts.entry(name.to_owned()).or_insert(0);
        *c = c.saturating_add(n);
    }

    /// The report.
    pub fn finish(mut self, totals: Totals) -> RunReport {
        let fault_bucket = (self.fault_at / self.sample) as usize;
        let normal = |b: usize| {
            let (t, o) = (self.total[b], self.ok[b]);
            t == 0 || o as f64 >= NORMAL_GOODPUT * t as f64
        };
        let last_abnormal = (fault_bucket..self.total.len()).rev().find(|&b| !normal(b));
        let last_with_traffic = (0..self.total.len()).rev().find(|&b| self.total[b] > 0);
        let degraded_seconds = seconds(
            (fault_bucket..self.total.len())
                .filter(|&b| !normal(b))
                .count() as u64
                * self.sample,
        );
        let recovery_seconds = match last_abnormal {
            None => Some(0.0),
            Some(b) if Some(b) == last_with_traffic => None,
            Some(b) => Some(seconds(
                ((b as u64 + 1) * self.sample).saturating_sub(self.fault_at),
            )),
        };
        self.events
            .sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        self.counts
            .insert("unaffected_requests".into(), self.total_after_fault);
        self.counts
            .insert("unaffected_succeeded".into(), self.ok_after_fault);
        RunReport {
            amplification: if self.originals == 0 {
                0.0
            } else {
                self.generated as f64 / self.originals as f64
            },
            originals: self.originals,
            generated: self.generated,
            db_queries: totals.db_queries,
            peak_db_queue: totals.peak_db_queue,
            threads: totals.threads,
            max_threads_busy: totals.max_threads_busy,
            max_threads_stuck: self.max_stuck,
            goodput_unaffected: if self.total_after_fault == 0 {
                1.0
            } else {
                self.ok_after_fault as f64 / self.total_after_fault as f64
            },
            errors_per_minute: self.errors,
            sample_seconds: self.sample / SECOND,
            threads_busy: self.busy,
            threads_stuck: self.stuck,
            recovery_seconds,
            degraded_seconds,
            refusals: self.refusals,
            events: self.events,
            amplification_allowed: totals.amplification_allowed,
            counts: self.counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_the_end_of_the_last_abnormal_bucket() {
        let mut r = Recorder::new(60 * SECOND, 10 * SECOND, 10);
        for s in 0..6u64 {
            for i in 0..100 {
                // Buckets 1 and 2 (10-30 s) lose half their requests.
                r.unaffected(s * 10 * SECOND + i, !(1..=2).contains(&s) || i % 2 == 0);
            }
        }
        let report = r.finish(Totals::default());
        assert_eq!(report.recovery_seconds, Some(20.0));
        assert_eq!(report.degraded_seconds, 20.0);
        assert!((report.goodput_unaffected - 0.8).abs() < 1e-9);
    }
}

//! Counters of what admission did, a snapshot of them, and their Prometheus exposition.

use crate::sync::{AtomicU64, Ordering};
use crate::{Priority, Reason};
use crossbeam_utils::CachePadded;
use std::fmt::{self, Write};

/// The refusal reasons admission counts, in exposition order.
pub(crate) const REASONS: [Reason; 10] = [
    Reason::ConcurrencyLimit,
    Reason::Shed,
    Reason::KeyConcurrency,
    Reason::RateLimited,
    Reason::PoolExhausted,
    Reason::QueueFull,
    Reason::QueueTimeout,
    Reason::CannotFit,
    Reason::KeyTooLong,
    Reason::InsufficientTime,
];

fn reason_index(reason: Reason) -> usize {
    REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(REASONS.len() - 1)
}

/// Per-class counters. `admitted` is on its own cache line: every admission writes it.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    admitted: CachePadded<AtomicU64>,
    refused: [AtomicU64; REASONS.len()],
    shadow: [AtomicU64; REASONS.len()],
    shed: [AtomicU64; 4],
    waited: AtomicU64,
    timed_out: AtomicU64,
}

impl Stats {
    #[inline]
    pub(crate) fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, reason: Reason, priority: Priority, shadow: bool) {
        let counters = if shadow { &self.shadow } else { &self.refused };
        counters[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        if reason == Reason::Shed && !shadow {
            self.shed[priority as usize].fetch_add(1, Ordering::Relaxed);
        }
        if reason == Reason::QueueTimeout && !shadow {
            self.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn waited(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            admitted: load(&self.admitted),
            refused: REASONS
                .iter()
                .zip(&self.refused)
                .map(|(r, c)| (*r, load(c)))
                .collect(),
            shadow_refused: REASONS
                .iter()
                .zip(&self.shadow)
                .map(|(r, c)| (*r, load(c)))
                .collect(),
            shed_by_priority: std::array::from_fn(|i| load(&self.shed[i])),
            waited: load(&self.waited),
            timed_out: load(&self.timed_out),
        }
    }
}

/// Counters of one class.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Requests admitted (including in shadow mode).
    pub admitted: u64,
    /// Requests refused, by reason.
    pub refused: Vec<(Reason, u64)>,
    /// Refusals shadow mode recorded but did not enforce, by reason.
    pub shadow_refused: Vec<(Reason, u64)>,
    /// Requests shed by priority headroom, indexed by [`Priority`] (critical first).
    pub shed_by_priority: [u64; 4],
    /// Requests that joined the queue (whatever came of it, including those that got a permit on
    /// the look they take right after joining, without waiting).
    pub waited: u64,
    /// Requests that waited and timed out.
    pub timed_out: u64,
}

impl Counts {
    /// Refusals for `reason`.
    pub fn refused(&self, reason: Reason) -> u64 {
        self.refused
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Shadow-mode refusals for `reason`.
    pub fn shadow_refused(&self, reason: Reason) -> u64 {
        self.shadow_refused
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// The state of one class's admission.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassStats {
    /// The class.
    pub class: String,
    /// Requests in flight.
    pub in_flight: u32,
    /// The current concurrency limit.
    pub limit: u32,
    /// Requests waiting.
    pub queue_len: u32,
    /// Whether refusals are only recorded.
    pub shadow: bool,
    /// Keys with an entry, and the most there can be. An idle key keeps its entry (with its rate
    /// allowance) until a new key needs the slot, so this does not fall back to 0 when traffic
    /// stops.
    pub keys: Option<(usize, usize)>,
    /// Counters.
    pub counts: Counts,
}

/// The state of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool.
    pub pool: String,
    /// Cost in flight.
    pub in_use: u64,
    /// Its limit.
    pub limit: u64,
}

/// A snapshot of admission across classes and pools, and of every backend.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AdmissionStats {
    /// Classes with admission settings, in policy order.
    pub classes: Vec<ClassStats>,
    /// Pools, in policy order.
    pub pools: Vec<PoolStats>,
    /// Backends, in policy order.
    pub backends: Vec<crate::backend::BackendStats>,
}

impl AdmissionStats {
    /// The class called `name`.
    pub fn class(&self, name: &str) -> Option<&ClassStats> {
        self.classes.iter().find(|c| c.class == name)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    ///
    /// ```
    /// use costguard::{AdmitRequest, Engine, Policy, RequestId};
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c.admission(|a| a.concurrency(1)))
    ///     .build()
    ///     .unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let api = engine.class("api").unwrap();
    /// let _held = engine.try_admit(&AdmitRequest::new(api, RequestId::from_u64(1))).unwrap();
    /// let _ = engine.try_admit(&AdmitRequest::new(api, RequestId::from_u64(2)));
    ///
    /// let text = engine.admission_stats().to_prometheus(); // serve this at /metrics
    /// assert!(text.contains("costguard_admitted_total{class=\"api\"} 1\n"));
    /// assert!(text.contains(
    ///     "costguard_refused_total{class=\"api\",reason=\"concurrency_limit\"} 1\n"
    /// ));
    /// assert!(text.contains("costguard_in_flight{class=\"api\"} 1\n"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let per_class = |f: &dyn Fn(&ClassStats) -> u64| -> Vec<(String, u64)> {
            self.classes
                .iter()
                .map(|c| (format!("class=\"{}\"", Label(&c.class)), f(c)))
                .collect()
        };
        family(
            "costguard_admitted_total",
            "counter",
            "Requests admitted.",
            per_class(&|c| c.counts.admitted),
        );
        let by_reason = |shadow: bool| -> Vec<(String, u64)> {
            let mut rows = Vec::new();
            for c in &self.classes {
                let list = if shadow {
                    &c.counts.shadow_refused
                } else {
                    &c.counts.refused
                };
                for (r, n) in list {
                    rows.push((
                        format!("class=\"{}\",reason=\"{}\"", Label(&c.class), r.as_str()),
                        *n,
                    ));
                }
            }
            rows
        };
        family(
            "costguard_refused_total",
            "counter",
            "Requests refused, by reason.",
            by_reason(false),
        );
        family(
            "costguard_shadow_refused_total",
            "counter",
            "Refusals recorded but not enforced (shadow mode), by reason.",
            by_reason(true),
        );
        let mut shed = Vec::new();
        for c in &self.classes {
            for p in Priority::ALL {
                shed.push((
                    format!("class=\"{}\",priority=\"{}\"", Label(&c.class), p.as_str()),
                    c.counts.shed_by_priority[p as usize],
                ));
            }
        }
        family(
            "costguard_shed_total",
            "counter",
            "Requests shed by priority headroom.",
            shed,
        );
        family(
            "costguard_waited_total",
            "counter",
            "Requests that joined a queue for a permit (whatever came of it).",
            per_class(&|c| c.counts.waited),
        );
        family(
            "costguard_queue_timeouts_total",
            "counter",
            "Requests that waited and timed out.",
            per_class(&|c| c.counts.timed_out),
        );
        family(
            "costguard_in_flight",
            "gauge",
            "Requests in flight.",
            per_class(&|c| u64::from(c.in_flight)),
        );
        family(
            "costguard_concurrency_limit",
            "gauge",
            "Current concurrency limit.",
            per_class(&|c| u64::from(c.limit)),
        );
        family(
            "costguard_queue_length",
            "gauge",
            "Requests waiting for a permit.",
            per_class(&|c| u64::from(c.queue_len)),
        );
        let pools = |f: &dyn Fn(&PoolStats) -> u64| -> Vec<(String, u64)> {
            self.pools
                .iter()
                .map(|p| (format!("pool=\"{}\"", Label(&p.pool)), f(p)))
                .collect()
        };
        family(
            "costguard_pool_in_use",
            "gauge",
            "Cost in flight in a shared pool.",
            pools(&|p| p.in_use),
        );
        family(
            "costguard_pool_limit",
            "gauge",
            "Limit of a shared pool.",
            pools(&|p| p.limit),
        );
        let backends = |f: &dyn Fn(&crate::backend::BackendStats) -> u64| -> Vec<(String, u64)> {
            self.backends
                .iter()
                .map(|b| (format!("backend=\"{}\"", Label(&b.backend)), f(b)))
                .collect()
        };
        let mut breaker = Vec::new();
        let mut outcomes = Vec::new();
        let mut refused = Vec::new();
        let mut retries_refused = Vec::new();
        let mut host_rows: [Vec<(String, u64)>; 3] = Default::default();
        for b in &self.backends {
            for state in ["closed", "open", "half_open"] {
                breaker.push((
                    format!(
                        "backend=\"{}\",host=\"\",state=\"{state}\"",
                        Label(&b.backend)
                    ),
                    u64::from(b.breaker == state),
                ));
            }
            for (outcome, n) in &b.outcomes {
                outcomes.push((
                    format!("backend=\"{}\",outcome=\"{outcome}\"", Label(&b.backend)),
                    *n,
                ));
            }
            for (rows, counts) in [
                (&mut refused, &b.refused),
                (&mut retries_refused, &b.retries_refused),
            ] {
                for (reason, n) in counts {
                    rows.push((
                        format!("backend=\"{}\",reason=\"{reason}\"", Label(&b.backend)),
                        *n,
                    ));
                }
            }
            for h in &b.hosts {
                let labels = format!(
                    "backend=\"{}\",host=\"{}\"",
                    Label(&b.backend),
                    Label(&h.host)
                );
                for state in ["closed", "open", "half_open"] {
                    breaker.push((
                        format!("{labels},state=\"{state}\""),
                        u64::from(h.breaker == state),
                    ));
                }
                host_rows[0].push((labels.clone(), u64::from(h.ejected)));
                host_rows[1].push((labels.clone(), u64::from(h.in_flight)));
                host_rows[2].push((labels, u64::from(h.connecting)));
            }
        }
        family(
            "costguard_breaker_state",
            "gauge",
            "1 for the state each breaker is in (host empty: the backend's own).",
            breaker,
        );
        family(
            "costguard_backend_in_flight",
            "gauge",
            "Calls in flight to a backend.",
            backends(&|b| u64::from(b.in_flight)),
        );
        family(
            "costguard_backend_connecting",
            "gauge",
            "Connection attempts in progress to a backend.",
            backends(&|b| u64::from(b.connecting)),
        );
        family(
            "costguard_backend_retry_tokens",
            "gauge",
            "Whole tokens in a backend's retry budget.",
            backends(&|b| b.retry_tokens),
        );
        family(
            "costguard_backend_attempts_total",
            "counter",
            "Attempts to call a backend, by outcome.",
            outcomes,
        );
        family(
            "costguard_backend_refused_total",
            "counter",
            "Attempts to call a backend refused before they began, by reason.",
            refused,
        );
        family(
            "costguard_backend_retries_refused_total",
            "counter",
            "Retries of calls to a backend refused, by reason.",
            retries_refused,
        );
        let [ejected, in_flight, connecting] = host_rows;
        family(
            "costguard_host_ejected",
            "gauge",
            "1 while a host is ejected from its pool.",
            ejected,
        );
        family(
            "costguard_host_in_flight",
            "gauge",
            "Calls in flight to a host.",
            in_flight,
        );
        family(
            "costguard_host_connecting",
            "gauge",
            "Connection attempts in progress to a host.",
            connecting,
        );
        out
    }
}

/// A label value as Prometheus' text format writes it: backslash, double quote and newline
/// escaped. Policy names cannot hold those characters, but the stats are plain data a caller may
/// relabel before rendering.
struct Label<'a>(&'a str);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

//! Backends: the things requests call, and how each is protected.
//!
//! A backend (a database, a Kafka cluster, an HTTP API) has a per-attempt timeout, caps on calls and on
//! connection attempts in flight (for the backend and for each of its hosts), a circuit breaker, outlier
//! ejection for its hosts, and a retry budget. Fractions are stored per mille, like admission's.

use super::admission::{fraction_problem, permille, Permille};
use super::error::{Location, Problems};
use super::Field;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The most backends a policy may declare.
pub const MAX_BACKENDS: usize = 64;
/// The most hosts one backend may have.
pub const MAX_HOSTS: usize = 64;
/// The longest host name, in bytes (a DNS name's limit; a port, if any, counts too).
pub const MAX_HOST_LEN: usize = 253;
/// The most probes a half-open breaker may admit at once.
pub const MAX_PROBES: u32 = 15;

/// A breaker ratio that never trips.
const RATIO_OFF: Permille = 1001;

/// When a breaker opens, and how it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerPolicy {
    /// Opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// Opens when failures are at least this share of the calls in the window (per mille; 1001 =
    /// off, which a policy writes as 0: a ratio of none, not "open at the first failure").
    pub failure_ratio: Permille,
    /// Opens when calls slower than `slow_call` are at least this share (per mille; 1001 = off,
    /// written as 0, as above).
    pub slow_ratio: Permille,
    /// A call slower than this counts as slow.
    pub slow_call: Duration,
    /// The sliding window the ratios are computed over (ten buckets).
    pub window: Duration,
    /// Ratios are only judged once the window holds this many calls.
    pub min_calls: u32,
    /// How long the breaker stays open the first time; doubles each time it re-opens, with jitter.
    pub open_for: Duration,
    /// The longest it stays open.
    pub max_open_for: Duration,
    /// Probes admitted at once when half-open; this many successes close it.
    pub probes: u32,
    /// After closing, the share of `max_in_flight` allowed grows from zero to all over this long.
    pub ramp_up: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            failure_ratio: 500,
            slow_ratio: RATIO_OFF,
            slow_call: Duration::from_secs(1),
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(60),
            probes: 1,
            ramp_up: Duration::from_secs(5),
        }
    }
}

/// When a host is taken out of its pool for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EjectionPolicy {
    /// Ejected after this many connect failures or timeouts in a row.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each further one doubles it.
    pub base: Duration,
    /// The longest an ejection lasts.
    pub max: Duration,
    /// Never more than this share of the hosts ejected at once (per mille).
    pub max_ejected: Permille,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
            max_ejected: 500,
        }
    }
}

/// How many retries a backend takes, process-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries may be at most this share of first attempts (per mille).
    pub ratio: Permille,
    /// Plus this many retries per second whatever the traffic.
    pub min_per_second: u32,
    /// The first backoff's upper bound; doubles per attempt (full jitter).
    pub backoff_base: Duration,
    /// The largest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            ratio: 100,
            min_per_second: 10,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPolicy {
    pub(crate) name: Arc<str>,
    pub(crate) hosts: Vec<Arc<str>>,
    pub(crate) timeout: Duration,
    pub(crate) margin: Duration,
    pub(crate) max_in_flight: u32,
    pub(crate) max_in_flight_per_host: u32,
    pub(crate) max_connecting: u32,
    pub(crate) max_connecting_per_host: u32,
    pub(crate) breaker: BreakerPolicy,
    pub(crate) ejection: EjectionPolicy,
    pub(crate) retry: RetryPolicy,
}

impl BackendPolicy {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its hosts, as written (empty: one logical host).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| &**h)
    }
    /// The longest an attempt may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Kept back from the request's remaining time when deriving an attempt's timeout (default
    /// 5 ms); always below [`timeout`](Self::timeout).
    pub fn margin(&self) -> Duration {
        self.margin
    }
    /// Calls in flight, for the backend and per host.
    pub fn max_in_flight(&self) -> (u32, u32) {
        (self.max_in_flight, self.max_in_flight_per_host)
    }
    /// Connection attempts in progress, for the backend and per host.
    pub fn max_connecting(&self) -> (u32, u32) {
        (self.max_connecting, self.max_connecting_per_host)
    }
    /// The breaker.
    pub fn breaker(&self) -> BreakerPolicy {
        self.breaker
    }
    /// Outlier ejection.
    pub fn ejection(&self) -> EjectionPolicy {
        self.ejection
    }
    /// The retry budget.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }
}

/// A backend as written, before validation: each setting with where it was written.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawBackend {
    pub(crate) name: Field<String>,
    pub(crate) hosts: Vec<Field<String>>,
    pub(crate) durations: Vec<(&'static str, Field<Duration>)>,
    pub(crate) counts: Vec<(&'static str, Field<u64>)>,
    pub(crate) fractions: Vec<(&'static str, Field<f64>)>,
    /// Names given in code that are not settings.
    pub(crate) unknown: Vec<String>,
    /// Settings written whose values could not be read (each already reported): no default stands
    /// in for them where settings are checked against each other.
    pub(crate) unreadable: Vec<&'static str>,
}

/// The margin of a backend that does not set one.
const DEFAULT_MARGIN: Duration = Duration::from_millis(5);

/// The settings a backend takes, by dotted name, with their kind.
pub(crate) const DURATIONS: [&str; 9] = [
    "timeout",
    "margin",
    "breaker.slow_call",
    "breaker.window",
    "breaker.open_for",
    "breaker.max_open_for",
    "breaker.ramp_up",
    "ejection.base",
    "ejection.max",
];
pub(crate) const COUNTS: [&str; 9] = [
    "max_in_flight",
    "max_in_flight_per_host",
    "max_connecting",
    "max_connecting_per_host",
    "breaker.consecutive_failures",
    "breaker.min_calls",
    "breaker.probes",
    "ejection.consecutive_failures",
    "retry.min_per_second",
];
pub(crate) const FRACTIONS: [&str; 4] = [
    "breaker.failure_ratio",
    "breaker.slow_ratio",
    "ejection.max_ejected",
    "retry.ratio",
];
pub(crate) const RETRY_DURATIONS: [&str; 2] = ["retry.backoff_base", "retry.backoff_max"];

pub(crate) fn validate_backends(
    raw: Vec<RawBackend>,
    problems: &mut Problems,
) -> Vec<BackendPolicy> {
    if raw.len() > MAX_BACKENDS {
        problems.push(
            None,
            "backends",
            format!("{} backends declared; at most {MAX_BACKENDS}", raw.len()),
        );
    }
    let mut out: Vec<BackendPolicy> = Vec::new();
    for b in raw {
        let before = problems.len();
        let base = format!("backends.{}", super::truncate(&b.name.value));
        for key in &b.unknown {
            let field = format!("{base}.{}", super::truncate(key));
            problems.push(None, field, "unknown setting");
        }
        if !super::valid_name(&b.name.value) {
            problems.push(b.name.at.clone(), &base, super::name_problem(&b.name.value));
            continue;
        }
        if out.iter().any(|o| *o.name == *b.name.value) {
            problems.push(b.name.at.clone(), &base, "backend declared twice");
            continue;
        }
        // A setting given twice (a quoted dotted key beside its table) is a mistake, not a choice.
        let keys = b.durations.iter().map(|(k, f)| (*k, &f.at));
        let keys = keys.chain(b.counts.iter().map(|(k, f)| (*k, &f.at)));
        let keys: Vec<_> = keys
            .chain(b.fractions.iter().map(|(k, f)| (*k, &f.at)))
            .collect();
        for (i, (key, at)) in keys.iter().enumerate() {
            if keys[..i].iter().any(|(k, _)| k == key) {
                problems.push(
                    (*at).clone(),
                    format!("{base}.{key}"),
                    "setting given twice",
                );
            }
        }
        let duration = |key: &str| b.durations.iter().find(|(k, _)| *k == key).map(|(_, f)| f);
        let count = |key: &str| b.counts.iter().find(|(k, _)| *k == key).map(|(_, f)| f);
        let fraction = |key: &str| b.fractions.iter().find(|(k, _)| *k == key).map(|(_, f)| f);
        let positive = |key: &str, default: Duration, problems: &mut Problems| -> Duration {
            match duration(key) {
                Some(f) if f.value.is_zero() => {
                    problems.push(
                        f.at.clone(),
                        format!("{base}.{key}"),
                        "must be greater than zero",
                    );
                    default
                }
                Some(f) => f.value,
                None => default,
            }
        };
        let defaults = (
            BreakerPolicy::default(),
            EjectionPolicy::default(),
            RetryPolicy::default(),
        );
        let timeout = positive("timeout", Duration::from_secs(1), problems);
        let margin = duration("margin").map_or(DEFAULT_MARGIN, |f| f.value);
        let slow_call = positive("breaker.slow_call", defaults.0.slow_call, problems);
        let window = positive("breaker.window", defaults.0.window, problems);
        let open_for = positive("breaker.open_for", defaults.0.open_for, problems);
        let max_open_for = positive("breaker.max_open_for", defaults.0.max_open_for, problems);
        let ramp_up = duration("breaker.ramp_up").map_or(defaults.0.ramp_up, |f| f.value);
        let eject_base = positive("ejection.base", defaults.1.base, problems);
        let eject_max = positive("ejection.max", defaults.1.max, problems);
        let backoff_base = positive("retry.backoff_base", defaults.2.backoff_base, problems);
        let backoff_max = positive("retry.backoff_max", defaults.2.backoff_max, problems);
        // Whether a duration is what was written or its default: not one written as zero or
        // unreadable, each its own problem, with the default standing in. Settings are checked
        // against each other only when both were read, so one mistake is reported once.
        let unreadable = |key: &str| b.unreadable.contains(&key);
        let read = |key: &str| !unreadable(key) && duration(key).is_none_or(|f| !f.value.is_zero());
        let ordered =
            |lo: Duration, hi: Duration, lo_key: &str, hi_key: &str, problems: &mut Problems| {
                if lo > hi && read(lo_key) && read(hi_key) {
                    let at = duration(lo_key)
                        .or(duration(hi_key))
                        .and_then(|f| f.at.clone());
                    problems.push(
                        at,
                        format!("{base}.{hi_key}"),
                        format!("must not be below {lo_key}"),
                    );
                }
            };
        // The margin is kept back from what a request has left; one as long as the timeout itself
        // would refuse nearly every attempt of a request with a deadline. The default margin is
        // held to that too: a timeout written below it is reported where the timeout was written.
        if margin >= timeout && read("timeout") {
            match duration("margin") {
                Some(m) => problems.push(
                    m.at.clone(),
                    format!("{base}.margin"),
                    "must be below timeout",
                ),
                None if !unreadable("margin") => problems.push(
                    duration("timeout").and_then(|f| f.at.clone()),
                    format!("{base}.timeout"),
                    format!("margin ({DEFAULT_MARGIN:?}, the default) must be below timeout"),
                ),
                None => {}
            }
        }
        ordered(
            open_for,
            max_open_for,
            "breaker.open_for",
            "breaker.max_open_for",
            problems,
        );
        ordered(
            eject_base,
            eject_max,
            "ejection.base",
            "ejection.max",
            problems,
        );
        ordered(
            backoff_base,
            backoff_max,
            "retry.backoff_base",
            "retry.backoff_max",
            problems,
        );
        let bounded = |key: &str, default: u32, lo: u64, hi: u64, problems: &mut Problems| -> u32 {
            match count(key) {
                Some(f) if f.value < lo || f.value > hi => {
                    problems.push(
                        f.at.clone(),
                        format!("{base}.{key}"),
                        format!("must be between {lo} and {hi} (found {})", f.value),
                    );
                    default
                }
                Some(f) => f.value as u32,
                None => default,
            }
        };
        let top = 1 << 24;
        let max_in_flight = bounded("max_in_flight", 256, 1, top, problems);
        let max_in_flight_per_host =
            bounded("max_in_flight_per_host", max_in_flight, 1, top, problems);
        let max_connecting = bounded("max_connecting", 16, 1, top, problems);
        let max_connecting_per_host = bounded(
            "max_connecting_per_host",
            max_connecting.min(4),
            1,
            top,
            problems,
        );
        let consecutive = bounded(
            "breaker.consecutive_failures",
            defaults.0.consecutive_failures,
            1,
            4095,
            problems,
        );
        let min_calls = bounded("breaker.min_calls", defaults.0.min_calls, 1, top, problems);
        let probes = bounded(
            "breaker.probes",
            defaults.0.probes,
            1,
            u64::from(MAX_PROBES),
            problems,
        );
        let eject_after = bounded(
            "ejection.consecutive_failures",
            defaults.1.consecutive_failures,
            1,
            4095,
            problems,
        );
        let floor = bounded(
            "retry.min_per_second",
            defaults.2.min_per_second,
            0,
            1_000_000,
            problems,
        );
        let share = |key: &str, default: Permille, problems: &mut Problems| -> Permille {
            match fraction(key) {
                Some(f) => permille(f.value, 0.0, 1.0).unwrap_or_else(|| {
                    problems.push(
                        f.at.clone(),
                        format!("{base}.{key}"),
                        fraction_problem(f.value),
                    );
                    default
                }),
                None => default,
            }
        };
        // A breaker ratio of 0 turns that ratio off: "trip when at least none of the calls fail"
        // would open at the first failure (or, for the slow ratio, at any failure at all) once the
        // window holds `min_calls`, which `consecutive_failures = 1` says more plainly.
        let off_if_zero = |r: Permille| if r == 0 { RATIO_OFF } else { r };
        let failure_ratio = off_if_zero(share(
            "breaker.failure_ratio",
            defaults.0.failure_ratio,
            problems,
        ));
        let slow_ratio = off_if_zero(share("breaker.slow_ratio", defaults.0.slow_ratio, problems));
        let max_ejected = share("ejection.max_ejected", defaults.1.max_ejected, problems);
        let ratio = share("retry.ratio", defaults.2.ratio, problems);
        let mut hosts: Vec<Arc<str>> = Vec::new();
        let mut seen_hosts = HashSet::new();
        for h in &b.hosts {
            let valid = !h.value.is_empty()
                && h.value.len() <= MAX_HOST_LEN
                && h.value
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-_:[]".contains(&c));
            if !valid {
                problems.push(
                    h.at.clone(),
                    format!("{base}.hosts"),
                    format!(
                        "`{}` is not a valid host",
                        super::truncate(&h.value).escape_debug()
                    ),
                );
            } else if !seen_hosts.insert(host_key(&h.value)) {
                problems.push(
                    h.at.clone(),
                    format!("{base}.hosts"),
                    format!("host `{}` listed twice", h.value),
                );
            } else {
                hosts.push(Arc::from(h.value.as_str()));
            }
        }
        if hosts.len() > MAX_HOSTS {
            problems.push(
                b.name.at.clone(),
                format!("{base}.hosts"),
                format!("at most {MAX_HOSTS} hosts"),
            );
        }
        if problems.len() > before {
            continue;
        }
        out.push(BackendPolicy {
            name: Arc::from(b.name.value.as_str()),
            hosts,
            timeout,
            margin,
            max_in_flight,
            max_in_flight_per_host,
            max_connecting,
            max_connecting_per_host,
            breaker: BreakerPolicy {
                consecutive_failures: consecutive,
                failure_ratio,
                slow_ratio,
                slow_call,
                window,
                min_calls,
                open_for,
                max_open_for,
                probes,
                ramp_up,
            },
            ejection: EjectionPolicy {
                consecutive_failures: eject_after,
                base: eject_base,
                max: eject_max,
                max_ejected,
            },
            retry: RetryPolicy {
                ratio,
                min_per_second: floor,
                backoff_base,
                backoff_max,
            },
        });
    }
    out
}

/// What identifies a host in its pool: its name in lower case, without one trailing dot, and the
/// port as written. Host names are case-insensitive and `db1.` is the fully qualified `db1`, so
/// `DB1`, `db1.` and `db1` name one machine; listed as two hosts, it would get twice the per-host
/// caps and two breakers. The engine shows a host by the name it was first listed under, however
/// a later policy spells it (a host's metrics stay one series across a reload that respells it).
pub(crate) fn host_key(host: &str) -> String {
    // `name:port`; a bracketed or bare IPv6 address has more than one colon and no port to split.
    let (name, port) = match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, Some(port)),
        _ => (host, None),
    };
    let mut key = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Some(port) = port {
        key.push(':');
        key.push_str(port);
    }
    key
}

/// Whether `a` and `b` name one host (see [`host_key`]).
pub(crate) fn same_host(a: &str, b: &str) -> bool {
    a == b || host_key(a) == host_key(b)
}

/// A location-free field, for the builder.
pub(crate) fn field<T>(value: T) -> Field<T> {
    Field::new(value, None::<Location>)
}

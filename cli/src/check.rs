//! `costguard check`: the effective policy a file gives, every default filled in.
//!
//! An operator who writes `retry = { ratio = 0.1 }` should see the backoff, the floor and every
//! breaker setting that comes with it, because those are what the engine will run with. So this prints
//! all of it, from the policy's public accessors, rather than echoing the file.

use costguard::policy::{
    AdmissionPolicy, Algorithm, BackendPolicy, ClassPolicy, Concurrency, Permille,
};
use costguard::{Policy, Priority, Unit};
use std::fmt::Write;
use std::time::Duration;

/// What a policy declares, in one line: `7 dimensions, 3 classes, 1 pool, 2 backends`.
pub fn summary(policy: &Policy) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}, {}, {}",
        plural(policy.dimensions().len(), "dimension", "dimensions"),
        plural(policy.classes().len(), "class", "classes"),
        plural(policy.pools().len(), "pool", "pools"),
        plural(policy.backends().len(), "backend", "backends"),
    )
}

/// The effective policy, for people: every section, every default filled in.
pub fn describe(policy: &Policy) -> String {
    let mut out = String::new();
    out.push_str("dimensions\n");
    if policy.dimensions().is_empty() {
        out.push_str("  none (only the built-in retries and cpu_time)\n");
    }
    for d in policy.dimensions() {
        let _ = writeln!(
            out,
            "  {:<24} {:<8} {}",
            d.name(),
            d.kind().as_str(),
            unit_name(d.unit())
        );
    }

    for class in policy.classes() {
        describe_class(&mut out, policy, class);
    }

    for pool in policy.pools() {
        let _ = writeln!(out, "\npool {}", pool.name());
        let unit = policy.dimension(pool.dimension()).map(|d| d.unit());
        let limit = unit.map_or_else(|| pool.limit().to_string(), |u| amount(u, pool.limit()));
        let _ = writeln!(
            out,
            "  {:<24} {} of {} in flight at once",
            "limit",
            limit,
            pool.dimension()
        );
        let users: Vec<&str> = policy
            .classes()
            .iter()
            .filter(|c| {
                c.admission()
                    .is_some_and(|a| a.pools().any(|p| p == pool.name()))
            })
            .map(ClassPolicy::name)
            .collect();
        let _ = writeln!(out, "  {:<24} {}", "drawn from by", list_or_none(&users));
    }

    for backend in policy.backends() {
        describe_backend(&mut out, backend);
    }
    out
}

fn describe_class(out: &mut String, policy: &Policy, class: &ClassPolicy) {
    let _ = writeln!(out, "\nclass {}", class.name());
    let field = |out: &mut String, name: &str, value: String| {
        let _ = writeln!(out, "  {name:<24} {value}");
    };
    field(out, "priority", class.priority().to_string());
    field(
        out,
        "wall_time",
        class.wall_time().map_or_else(|| "none".into(), duration),
    );
    field(
        out,
        "cpu_time",
        class.cpu_time().map_or_else(|| "none".into(), duration),
    );
    field(
        out,
        "retries",
        class
            .retries()
            .map_or_else(|| "unlimited".into(), |r| r.to_string()),
    );
    field(out, "child_margin", duration(class.child_margin()));
    if policy.dimensions().is_empty() {
        out.push_str("  limits                   none (the policy declares no dimensions)\n");
    } else {
        out.push_str("  limits\n");
    }
    for d in policy.dimensions() {
        let limit = class
            .limit(d.name())
            .map_or_else(|| "unlimited".to_owned(), |l| amount(d.unit(), l));
        let _ = writeln!(out, "    {:<22} {}", d.name(), limit);
    }
    match class.admission() {
        None => out.push_str("  admission                none: every request is admitted\n"),
        Some(a) => describe_admission(out, a),
    }
}

fn describe_admission(out: &mut String, a: &AdmissionPolicy) {
    out.push_str("  admission\n");
    let field = |out: &mut String, name: &str, value: String| {
        let _ = writeln!(out, "    {name:<22} {value}");
    };
    let concurrency = match a.concurrency() {
        Concurrency::Static(n) => format!("{n} at once"),
        Concurrency::Adaptive(l) => {
            let algorithm = match l.algorithm {
                Algorithm::Aimd {
                    backoff,
                    latency_threshold,
                } => format!(
                    "aimd (backoff ×{}, latency threshold {})",
                    ratio(backoff),
                    duration(latency_threshold)
                ),
                Algorithm::Gradient2 {
                    tolerance,
                    smoothing,
                } => format!(
                    "gradient2 (tolerance {}×, smoothing {})",
                    ratio(tolerance),
                    ratio(smoothing)
                ),
            };
            // As the engine runs it: at least one permit for every priority with a share.
            let run = l.floored(&a.headroom());
            let floor = if run.min == l.min {
                String::new()
            } else {
                format!(
                    " (min {} raised to {}: every priority with a share keeps a permit)",
                    l.min, run.min
                )
            };
            format!(
                "adaptive, {algorithm}, from {} to {}, starting at {}, every {}{floor}",
                run.min,
                run.max,
                run.initial,
                duration(l.window)
            )
        }
    };
    field(out, "concurrency", concurrency);
    let headroom = a.headroom();
    let shares: Vec<String> = Priority::ALL
        .iter()
        .zip(headroom.0)
        .map(|(p, share)| format!("{p} {}", share_of(share)))
        .collect();
    field(out, "headroom", shares.join(", "));
    field(
        out,
        "queue",
        a.queue().map_or_else(
            || "none: refused at once when full".into(),
            |q| {
                format!(
                    "{} waiting, at most {} each (CoDel target {}, interval {})",
                    q.capacity,
                    duration(q.max_wait),
                    duration(q.codel_target),
                    duration(q.codel_interval)
                )
            },
        ),
    );
    let per_key = match a.per_key() {
        None => "none".to_owned(),
        Some(k) => {
            let concurrency = k
                .concurrency
                .map_or_else(|| "unlimited".to_owned(), |c| format!("{c} at once"));
            let rate = k.rate.map_or_else(
                || "unlimited".to_owned(),
                |r| format!("{} per {} (burst {})", r.amount, duration(r.per), r.burst),
            );
            format!(
                "concurrency {concurrency}, rate {rate}, {} keys tracked",
                k.max_keys
            )
        }
    };
    field(out, "per_key", per_key);
    let pools: Vec<&str> = a.pools().collect();
    field(out, "pools", list_or_none(&pools));
    field(
        out,
        "shadow",
        if a.shadow() {
            "yes: refusals are counted, not enforced".into()
        } else {
            "no".into()
        },
    );
}

fn describe_backend(out: &mut String, b: &BackendPolicy) {
    let _ = writeln!(out, "\nbackend {}", b.name());
    let field = |out: &mut String, name: &str, value: String| {
        let _ = writeln!(out, "  {name:<24} {value}");
    };
    let hosts: Vec<&str> = b.hosts().collect();
    field(
        out,
        "hosts",
        if hosts.is_empty() {
            "one logical host".into()
        } else {
            hosts.join(", ")
        },
    );
    field(
        out,
        "timeout",
        format!(
            "{} per attempt (margin {} kept from the request's time)",
            duration(b.timeout()),
            duration(b.margin())
        ),
    );
    let (calls, calls_per_host) = b.max_in_flight();
    field(
        out,
        "max_in_flight",
        format!("{calls} ({calls_per_host} per host)"),
    );
    let (connecting, connecting_per_host) = b.max_connecting();
    field(
        out,
        "max_connecting",
        format!("{connecting} ({connecting_per_host} per host)"),
    );
    let br = b.breaker();
    let mut opens = vec![format!("{} failures in a row", br.consecutive_failures)];
    if br.failure_ratio <= 1000 {
        opens.push(format!("{} failures", share_of(br.failure_ratio)));
    }
    if br.slow_ratio <= 1000 {
        opens.push(format!(
            "{} slower than {}",
            share_of(br.slow_ratio),
            duration(br.slow_call)
        ));
    }
    field(
        out,
        "breaker",
        format!(
            "opens on {} (ratios over {}, from {} calls)",
            opens.join(" or "),
            duration(br.window),
            br.min_calls
        ),
    );
    field(
        out,
        "",
        format!(
            "open {} doubling to {}, {} probe{} when half-open, ramp-up {}",
            duration(br.open_for),
            duration(br.max_open_for),
            br.probes,
            if br.probes == 1 { "" } else { "s" },
            duration(br.ramp_up)
        ),
    );
    let ej = b.ejection();
    field(
        out,
        "ejection",
        format!(
            "after {} connect failures or timeouts in a row, for {} doubling to {}, at most {} of hosts",
            ej.consecutive_failures,
            duration(ej.base),
            duration(ej.max),
            share_of(ej.max_ejected)
        ),
    );
    let r = b.retry();
    field(
        out,
        "retry",
        format!(
            "at most {} of first attempts plus {} per second, backoff up to {} doubling to {}",
            share_of(r.ratio),
            r.min_per_second,
            duration(r.backoff_base),
            duration(r.backoff_max)
        ),
    );
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Count => "count",
        Unit::Bytes => "bytes",
        Unit::Nanos => "nanoseconds",
    }
}

/// An amount of `unit` as a policy file would write it, exactly: `2MiB`, `2097151B`, `500`.
/// (`Unit::format`, for verdicts, rounds bytes to one decimal: `2.0MiB` for 2,097,151.)
fn amount(unit: Unit, n: u64) -> String {
    match unit {
        Unit::Bytes => {
            let whole = ["TiB", "GiB", "MiB", "KiB"]
                .iter()
                .zip([40, 30, 20, 10])
                .find(|&(_, shift)| n >= 1 << shift && n % (1 << shift) == 0);
            match whole {
                Some((suffix, shift)) => format!("{}{suffix}", n >> shift),
                None => format!("{n}B"),
            }
        }
        Unit::Nanos => duration(Duration::from_nanos(n)),
        Unit::Count => n.to_string(),
    }
}

/// A duration as a policy file would write it: `30s`, `2m`, `1.5s`, `250ms`; `none` for no limit.
fn duration(d: Duration) -> String {
    const NANOS: [(u128, &str); 4] = [
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if d == Duration::MAX || u64::try_from(d.as_nanos()).is_err() {
        return "none".to_owned();
    }
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (whole, suffix) in [(3_600_000_000_000, "h"), (60_000_000_000, "m")] {
        if nanos % whole == 0 {
            return format!("{}{suffix}", nanos / whole);
        }
    }
    for (size, suffix) in NANOS {
        if nanos >= size {
            let (int, frac) = (nanos / size, nanos % size);
            if frac == 0 {
                return format!("{int}{suffix}");
            }
            let digits = size.ilog10() as usize;
            let frac = format!("{frac:0digits$}");
            return format!("{int}.{}{suffix}", frac.trim_end_matches('0'));
        }
    }
    format!("{nanos}ns")
}

/// Per mille as a percentage: `60%`, `12.5%`.
fn share_of(permille: Permille) -> String {
    if permille % 10 == 0 {
        format!("{}%", permille / 10)
    } else {
        format!("{}.{}%", permille / 10, permille % 10)
    }
}

/// Per mille as a plain ratio: `0.9`, `1.5`.
fn ratio(permille: Permille) -> String {
    let s = format!("{}.{:03}", permille / 1000, permille % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_shares() {
        assert_eq!(share_of(600), "60%");
        assert_eq!(share_of(125), "12.5%");
        assert_eq!(share_of(1000), "100%");
        assert_eq!(ratio(900), "0.9");
        assert_eq!(ratio(1500), "1.5");
        assert_eq!(ratio(1000), "1");
        assert_eq!(ratio(200), "0.2");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_nanos(1_000_001)), "1.000001ms");
        assert_eq!(duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::MAX), "none");
        // Every form it prints is one the policy reader accepts, and means the same.
        for d in [
            250_000_000,
            1_500_000_000,
            120_000_000_000,
            1_000_001,
            7,
            90_000_000_000,
        ] {
            let d = Duration::from_nanos(d);
            assert_eq!(costguard::units::parse_duration(&duration(d)), Ok(d));
        }
    }

    #[test]
    fn amounts_are_exact_and_read_back() {
        assert_eq!(amount(Unit::Bytes, 2 << 20), "2MiB");
        assert_eq!(amount(Unit::Bytes, (2 << 20) - 1), "2097151B");
        assert_eq!(amount(Unit::Bytes, 1025), "1025B");
        assert_eq!(amount(Unit::Bytes, 1 << 40), "1TiB");
        assert_eq!(amount(Unit::Bytes, 0), "0B");
        assert_eq!(amount(Unit::Count, 500), "500");
        assert_eq!(amount(Unit::Nanos, 1_500_000_000), "1.5s");
        for n in [0, 1, 1023, 1024, 1025, (2 << 20) - 1, 3 << 30, u64::MAX - 1] {
            let shown = amount(Unit::Bytes, n);
            assert_eq!(costguard::units::parse_quantity(&shown), Ok(n), "{shown}");
        }
    }

    #[test]
    fn every_section_of_a_full_policy_is_shown() {
        let policy = Policy::from_toml_str(
            r#"
            [dimensions]
            db_queries = "counter"
            bytes = { kind = "counter", unit = "bytes" }
            depth = "level"

            [pools.db]
            dimension = "db_queries"
            limit = 5000

            [classes.api]
            wall_time = "10s"
            retries = 1
            limits = { db_queries = 500, bytes = "8MiB" }

            [classes.api.admission]
            concurrency = { algorithm = "aimd", initial = 10, min = 2, max = 100, latency_threshold = "200ms" }
            queue = { capacity = 64, max_wait = "100ms" }
            pools = ["db"]
            per_key = { concurrency = 16, rate = 60, per = "1m", burst = 20, max_keys = 1024 }

            [classes.batch]
            wall_time = "none"
            priority = "background"

            [backends.kafka]
            hosts = ["k1:9092", "k2:9092"]
            timeout = "500ms"
            breaker = { consecutive_failures = 5, failure_ratio = 0.5, min_calls = 20, open_for = "1s" }
            "#,
        )
        .unwrap();
        assert_eq!(
            summary(&policy),
            "3 dimensions, 2 classes, 1 pool, 1 backend"
        );
        let text = describe(&policy);
        for needle in [
            "bytes                    counter  bytes",
            "depth                    level    count",
            "class api",
            "wall_time                10s",
            "retries                  1",
            "db_queries             500",
            "bytes                  8MiB",
            "depth                  unlimited",
            "adaptive, aimd (backoff ×0.9, latency threshold 200ms)",
            "from 2 to 100, starting at 10",
            "critical 100%, normal 100%, sheddable 80%, background 50%",
            "64 waiting, at most 100ms each",
            "concurrency 16 at once, rate 60 per 1m (burst 20), 1024 keys tracked",
            "pools                  db",
            "class batch",
            "priority                 background",
            "wall_time                none",
            "admission                none: every request is admitted",
            "pool db",
            "5000 of db_queries in flight at once",
            "drawn from by            api",
            "backend kafka",
            "k1:9092, k2:9092",
            "500ms per attempt",
            "opens on 5 failures in a row or 50% failures",
            "ejection",
            "retry",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}

//! Policies read from TOML.
//!
//! The document is walked by hand over toml's spanned tree rather than through serde derive, so that
//! every problem, syntax or meaning, names the field and its line and column, and so that all of them
//! are reported together.

use super::admission::{KeysAt, RawAdmission, RawConcurrency, RawPerKey, RawPool, RawQueue};
use super::backend::{RawBackend, COUNTS, DURATIONS, FRACTIONS, RETRY_DURATIONS};
use super::error::{Location, Origin, Problems};
use super::{
    truncate, validate, DimensionKind, Field, Policy, PolicyError, RawClass, RawDimension,
};
use crate::units::{parse_duration, parse_quantity};
use crate::verdict::Unit;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The largest policy file read, in bytes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

const TOP_KEYS: &str = "dimensions, classes, pools, backends";
const CLASS_KEYS: &str = "wall_time, cpu_time, retries, child_margin, priority, limits, admission";
const ADMISSION_KEYS: &str = "concurrency, headroom, queue, shadow, pools, per_key";
const CONCURRENCY_KEYS: &str =
    "algorithm, initial, min, max, window, backoff, latency_threshold, tolerance, smoothing";
const QUEUE_KEYS: &str = "capacity, max_wait, codel_target, codel_interval";
const PER_KEY_KEYS: &str = "concurrency, rate, per, burst, max_keys";
const POOL_KEYS: &str = "dimension, limit";
const DIMENSION_KEYS: &str = "kind, unit";

pub(crate) fn load(path: &Path) -> Result<Policy, PolicyError> {
    match std::fs::File::open(path) {
        Ok(f) => read(f, path),
        Err(e) => Err(PolicyError::single(
            path.display().to_string(),
            format!("cannot read policy file: {e}"),
        )),
    }
}

/// Reads a policy from `source`, named `path` in its problems.
pub(crate) fn read(source: impl Read, path: &Path) -> Result<Policy, PolicyError> {
    let file: Arc<Path> = Arc::from(path);
    let problem = |message: String| PolicyError::single(path.display().to_string(), message);
    // Read through a cap rather than trusting the file's size: devices, FIFOs and /proc files say
    // 0, and /dev/zero never ends. Bytes first: the cap may cut a character in two, and a file
    // too large is too large whatever it holds.
    let mut bytes = Vec::new();
    let read = source
        .take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes);
    match read {
        Ok(n) if n > MAX_POLICY_BYTES => Err(problem(format!(
            "policy file is larger than {MAX_POLICY_BYTES} bytes"
        ))),
        Ok(_) => match std::str::from_utf8(&bytes) {
            Ok(source) => parse(source, Some(file)),
            Err(e) => Err(problem(format!(
                "policy file is not UTF-8 text (byte {})",
                e.valid_up_to()
            ))),
        },
        Err(e) => Err(problem(format!("cannot read policy file: {e}"))),
    }
}

struct Reader<'s> {
    source: &'s str,
    file: Option<Arc<Path>>,
    problems: Problems,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Reader<'_> {
    fn at(&self, offset: usize) -> Option<Location> {
        Some(Location::of_offset(self.source, offset, self.file.as_ref()))
    }

    fn problem(&mut self, offset: usize, field: &str, message: impl Into<String>) {
        let at = self.at(offset);
        self.problems.push(at, field, message);
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, field: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                let found = type_name(other);
                self.problem(
                    v.span().start,
                    field,
                    format!("expected a table, found {found}"),
                );
                None
            }
        }
    }

    /// A whole number, written as an integer or as a string with a unit (`"2MiB"`).
    fn quantity(&mut self, v: &Value<'_>, field: &str) -> Option<u64> {
        let at = v.span().start;
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n < 0 => {
                    self.problem(at, field, format!("must not be negative (found {n})"));
                    None
                }
                Ok(n) => match u64::try_from(n) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.problem(
                            at,
                            field,
                            format!("{n} is too large (at most {})", u64::MAX),
                        );
                        None
                    }
                },
                Err(_) => {
                    self.problem(at, field, "integer out of range");
                    None
                }
            },
            DeValue::String(s) => match parse_quantity(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    let msg = format!(
                        "{e} in {:?}: expected a whole number, optionally with a unit like \"2MiB\" or \"10k\"",
                        truncate(s)
                    );
                    self.problem(at, field, msg);
                    None
                }
            },
            DeValue::Float(x) => {
                let msg = format!("{} is not a whole number", x.as_str());
                self.problem(at, field, msg);
                None
            }
            other => {
                let msg = format!("expected a whole number, found {}", type_name(other));
                self.problem(at, field, msg);
                None
            }
        }
    }

    /// A duration string; `"none"` (only where `allow_none`) gives `Some(None)`.
    fn duration(
        &mut self,
        v: &Value<'_>,
        field: &str,
        allow_none: bool,
    ) -> Option<Option<Duration>> {
        let at = v.span().start;
        match v.get_ref() {
            DeValue::String(s) if allow_none && s == "none" => Some(None),
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => Some(Some(d)),
                Err(e) => {
                    let msg = format!(
                        "{e} in {:?}: expected a duration like \"30s\", \"500ms\" or \"1.5s\"",
                        truncate(s)
                    );
                    self.problem(at, field, msg);
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                self.problem(
                    at,
                    field,
                    "a duration needs a unit, like \"30s\" or \"500ms\"",
                );
                None
            }
            other => {
                let msg = format!("expected a duration string, found {}", type_name(other));
                self.problem(at, field, msg);
                None
            }
        }
    }

    /// A number that may have a fraction (`0.9`, `1`); NaN and infinities are refused here.
    fn fraction(&mut self, v: &Value<'_>, field: &str) -> Option<f64> {
        let at = v.span().start;
        let parsed = match v.get_ref() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            // Any size: a huge integer is a number out of range, said as such below.
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64)
                .or_else(|| i.as_str().parse::<f64>().ok()),
            other => {
                let msg = format!("expected a number, found {}", type_name(other));
                self.problem(at, field, msg);
                return None;
            }
        };
        match parsed {
            Some(x) if x.is_finite() => Some(x),
            _ => {
                self.problem(at, field, "must be a finite number");
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, field: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let msg = format!("expected true or false, found {}", type_name(other));
                self.problem(v.span().start, field, msg);
                None
            }
        }
    }

    fn concurrency(&mut self, v: &Value<'_>, field: &str) -> Option<RawConcurrency> {
        if !matches!(v.get_ref(), DeValue::Table(_)) {
            return self.quantity(v, field).map(RawConcurrency::Static);
        }
        let table = self.table(v, field)?;
        let mut algorithm = None;
        let (mut initial, mut min, mut max, mut window) = (None, None, None, None);
        let (mut backoff, mut threshold, mut tolerance, mut smoothing) = (None, None, None, None);
        let mut keys = KeysAt::default();
        for (k, val) in table.iter() {
            let f = join(field, k.get_ref());
            let key = match k.get_ref().as_ref() {
                "algorithm" => {
                    algorithm = self.string(val, &f).map(str::to_owned);
                    "algorithm"
                }
                "initial" => {
                    initial = self.quantity(val, &f);
                    "initial"
                }
                "min" => {
                    min = self.quantity(val, &f);
                    "min"
                }
                "max" => {
                    max = self.quantity(val, &f);
                    "max"
                }
                "window" => {
                    window = self.duration(val, &f, false).flatten();
                    "window"
                }
                "backoff" => {
                    backoff = self.fraction(val, &f);
                    "backoff"
                }
                "latency_threshold" => {
                    threshold = self.duration(val, &f, false).flatten();
                    "latency_threshold"
                }
                "tolerance" => {
                    tolerance = self.fraction(val, &f);
                    "tolerance"
                }
                "smoothing" => {
                    smoothing = self.fraction(val, &f);
                    "smoothing"
                }
                _ => {
                    self.unknown_key(k, field, CONCURRENCY_KEYS);
                    continue;
                }
            };
            keys.0.push((key, self.at(val.span().start)));
        }
        let Some(algorithm) = algorithm else {
            // One written but not a string was reported as such.
            if !keys.written("algorithm") {
                self.problem(
                    v.span().start,
                    field,
                    "an adaptive limit needs `algorithm` (\"aimd\" or \"gradient2\")",
                );
            }
            return None;
        };
        Some(RawConcurrency::Adaptive {
            algorithm,
            initial,
            min,
            max,
            window,
            backoff,
            latency_threshold: threshold,
            tolerance,
            smoothing,
            keys,
        })
    }

    fn admission(&mut self, v: &Value<'_>, base: &str) -> Option<RawAdmission> {
        let table = self.table(v, base)?;
        let mut a = RawAdmission::default();
        for (k, val) in table.iter() {
            let field = join(base, k.get_ref());
            let at = self.at(val.span().start);
            match k.get_ref().as_ref() {
                "concurrency" => {
                    let c = self.concurrency(val, &field);
                    let c = c.unwrap_or(RawConcurrency::Unreadable);
                    a.concurrency = Some(Field::new(c, at));
                }
                "shadow" => a.shadow = self.boolean(val, &field).unwrap_or(false),
                "headroom" => {
                    let Some(t) = self.table(val, &field) else {
                        continue;
                    };
                    for (p, share) in t.iter() {
                        let f = join(&field, p.get_ref());
                        if let Some(x) = self.fraction(share, &f) {
                            a.headroom.push((
                                Field::new(p.get_ref().to_string(), self.at(p.span().start)),
                                Field::new(x, self.at(share.span().start)),
                            ));
                        }
                    }
                }
                "pools" => match val.get_ref() {
                    DeValue::Array(items) => {
                        for item in items.iter() {
                            if let Some(name) = self.string(item, &field) {
                                let at = self.at(item.span().start);
                                a.pools.push(Field::new(name.to_owned(), at));
                            }
                        }
                    }
                    other => {
                        let msg = format!(
                            "expected an array of pool names, found {}",
                            type_name(other)
                        );
                        self.problem(val.span().start, &field, msg);
                    }
                },
                "queue" => {
                    let Some(t) = self.table(val, &field) else {
                        continue;
                    };
                    let mut q = RawQueue::default();
                    for (qk, qv) in t.iter() {
                        let f = join(&field, qk.get_ref());
                        let key = match qk.get_ref().as_ref() {
                            "capacity" => {
                                q.capacity = self.quantity(qv, &f);
                                "capacity"
                            }
                            "max_wait" => {
                                q.max_wait = self.duration(qv, &f, false).flatten();
                                "max_wait"
                            }
                            "codel_target" => {
                                q.codel_target = self.duration(qv, &f, false).flatten();
                                "codel_target"
                            }
                            "codel_interval" => {
                                q.codel_interval = self.duration(qv, &f, false).flatten();
                                "codel_interval"
                            }
                            _ => {
                                self.unknown_key(qk, &field, QUEUE_KEYS);
                                continue;
                            }
                        };
                        q.keys.0.push((key, self.at(qv.span().start)));
                    }
                    a.queue = Some(Field::new(q, at));
                }
                "per_key" => {
                    let Some(t) = self.table(val, &field) else {
                        continue;
                    };
                    let mut pk = RawPerKey::default();
                    for (kk, kv) in t.iter() {
                        let f = join(&field, kk.get_ref());
                        let key = match kk.get_ref().as_ref() {
                            "concurrency" => {
                                pk.concurrency = self.quantity(kv, &f);
                                "concurrency"
                            }
                            "rate" => {
                                pk.rate = self.quantity(kv, &f);
                                "rate"
                            }
                            "per" => {
                                pk.per = self.duration(kv, &f, false).flatten();
                                "per"
                            }
                            "burst" => {
                                pk.burst = self.quantity(kv, &f);
                                "burst"
                            }
                            "max_keys" => {
                                pk.max_keys = self.quantity(kv, &f);
                                "max_keys"
                            }
                            _ => {
                                self.unknown_key(kk, &field, PER_KEY_KEYS);
                                continue;
                            }
                        };
                        pk.keys.0.push((key, self.at(kv.span().start)));
                    }
                    a.per_key = Some(Field::new(pk, at));
                }
                _ => self.unknown_key(k, base, ADMISSION_KEYS),
            }
        }
        Some(a)
    }

    fn pool(&mut self, key: &Spanned<std::borrow::Cow<'_, str>>, v: &Value<'_>) -> Option<RawPool> {
        let base = join("pools", key.get_ref());
        let table = self.table(v, &base)?;
        let mut pool = RawPool {
            name: Field::new(key.get_ref().to_string(), self.at(key.span().start)),
            dimension: None,
            limit: None,
            unreadable: Vec::new(),
        };
        for (k, val) in table.iter() {
            let f = join(&base, k.get_ref());
            let at = self.at(val.span().start);
            match k.get_ref().as_ref() {
                "dimension" => {
                    pool.dimension = self.string(val, &f).map(|d| Field::new(d.to_owned(), at));
                    if pool.dimension.is_none() {
                        pool.unreadable.push("dimension");
                    }
                }
                "limit" => {
                    pool.limit = self.quantity(val, &f).map(|n| Field::new(n, at));
                    if pool.limit.is_none() {
                        pool.unreadable.push("limit");
                    }
                }
                _ => self.unknown_key(k, &base, POOL_KEYS),
            }
        }
        Some(pool)
    }

    fn backend(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        v: &Value<'_>,
    ) -> Option<RawBackend> {
        let base = join("backends", key.get_ref());
        let table = self.table(v, &base)?;
        let mut b = RawBackend {
            name: Field::new(key.get_ref().to_string(), self.at(key.span().start)),
            ..RawBackend::default()
        };
        self.backend_settings(table, &base, "", &mut b);
        Some(b)
    }

    /// Settings of a backend table, or of its `breaker`, `ejection` and `retry` sub-tables (`prefix`).
    fn backend_settings(
        &mut self,
        table: &DeTable<'_>,
        base: &str,
        prefix: &str,
        b: &mut RawBackend,
    ) {
        for (k, val) in table.iter() {
            let name = format!("{prefix}{}", k.get_ref());
            let field = join(base, k.get_ref());
            let at = self.at(val.span().start);
            if prefix.is_empty() && matches!(k.get_ref().as_ref(), "breaker" | "ejection" | "retry")
            {
                if let Some(t) = self.table(val, &field) {
                    self.backend_settings(t, &field, &format!("{}.", k.get_ref()), b);
                }
            } else if prefix.is_empty() && k.get_ref() == "hosts" {
                match val.get_ref() {
                    DeValue::Array(items) => {
                        for item in items.iter() {
                            if let Some(h) = self.string(item, &field) {
                                let at = self.at(item.span().start);
                                b.hosts.push(Field::new(h.to_owned(), at));
                            }
                        }
                    }
                    other => {
                        let msg = format!(
                            "expected an array of host names, found {}",
                            type_name(other)
                        );
                        self.problem(val.span().start, &field, msg);
                    }
                }
            } else if let Some(key) = DURATIONS
                .iter()
                .chain(&RETRY_DURATIONS)
                .find(|d| **d == name)
            {
                match self.duration(val, &field, false).flatten() {
                    Some(d) => b.durations.push((key, Field::new(d, at))),
                    None => b.unreadable.push(key),
                }
            } else if let Some(key) = COUNTS.iter().find(|d| **d == name) {
                match self.quantity(val, &field) {
                    Some(n) => b.counts.push((key, Field::new(n, at))),
                    None => b.unreadable.push(key),
                }
            } else if let Some(key) = FRACTIONS.iter().find(|d| **d == name) {
                match self.fraction(val, &field) {
                    Some(x) => b.fractions.push((key, Field::new(x, at))),
                    None => b.unreadable.push(key),
                }
            } else {
                let allowed: Vec<&str> = DURATIONS
                    .iter()
                    .chain(&RETRY_DURATIONS)
                    .chain(&COUNTS)
                    .chain(&FRACTIONS)
                    .filter_map(|k| k.strip_prefix(prefix))
                    .filter(|k| !k.contains('.'))
                    .collect();
                let mut allowed = allowed.join(", ");
                if prefix.is_empty() {
                    allowed.push_str(", hosts, breaker, ejection, retry");
                }
                self.unknown_key(k, base, &allowed);
            }
        }
    }

    fn string<'a>(&mut self, v: &'a Value<'_>, field: &str) -> Option<&'a str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                let msg = format!("expected a string, found {}", type_name(other));
                self.problem(v.span().start, field, msg);
                None
            }
        }
    }

    fn unknown_key(&mut self, key: &Spanned<std::borrow::Cow<'_, str>>, base: &str, allowed: &str) {
        let field = join(base, key.get_ref());
        let msg = format!(
            "unknown key `{}` (expected one of: {allowed})",
            truncate(key.get_ref())
        );
        self.problem(key.span().start, &field, msg);
    }

    fn dimension(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        v: &Value<'_>,
    ) -> Option<RawDimension> {
        let field = join("dimensions", key.get_ref());
        let name = Field::new(key.get_ref().to_string(), self.at(key.span().start));
        let (kind_value, unit_value) = match v.get_ref() {
            DeValue::String(_) => (Some(v), None),
            DeValue::Table(t) => {
                let mut kind = None;
                let mut unit = None;
                for (k, val) in t.iter() {
                    match k.get_ref().as_ref() {
                        "kind" => kind = Some(val),
                        "unit" => unit = Some(val),
                        _ => self.unknown_key(k, &field, DIMENSION_KEYS),
                    }
                }
                if kind.is_none() {
                    self.problem(
                        v.span().start,
                        &field,
                        "missing `kind` (\"counter\" or \"level\")",
                    );
                }
                (kind, unit)
            }
            other => {
                let msg = format!(
                    "expected \"counter\", \"level\" or a table {{ kind, unit }}, found {}",
                    type_name(other)
                );
                self.problem(v.span().start, &field, msg);
                (None, None)
            }
        };
        let kind_field = join(&field, "kind");
        let kind = match kind_value.map(|k| (k, self.string(k, &kind_field))) {
            Some((_, Some("counter"))) => DimensionKind::Counter,
            Some((_, Some("level"))) => DimensionKind::Level,
            Some((k, Some(other))) => {
                let msg = format!(
                    "unknown kind {:?} (expected \"counter\" or \"level\")",
                    truncate(other)
                );
                self.problem(k.span().start, &kind_field, msg);
                return None;
            }
            _ => return None,
        };
        let unit_field = join(&field, "unit");
        let unit = match unit_value.map(|u| (u, self.string(u, &unit_field))) {
            None => Unit::Count,
            Some((_, Some("count"))) => Unit::Count,
            Some((_, Some("bytes"))) => Unit::Bytes,
            Some((u, Some(other))) => {
                let msg = format!(
                    "unknown unit {:?} (expected \"count\" or \"bytes\")",
                    truncate(other)
                );
                self.problem(u.span().start, &unit_field, msg);
                return None;
            }
            Some((_, None)) => return None,
        };
        Some(RawDimension { name, kind, unit })
    }

    fn class(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        v: &Value<'_>,
    ) -> Option<RawClass> {
        let base = join("classes", key.get_ref());
        let table = self.table(v, &base)?;
        let mut class = RawClass {
            name: Field::new(key.get_ref().to_string(), self.at(key.span().start)),
            ..RawClass::default()
        };
        for (k, val) in table.iter() {
            let field = join(&base, k.get_ref());
            let at = self.at(val.span().start);
            match k.get_ref().as_ref() {
                "wall_time" => {
                    class.wall_time = self.duration(val, &field, true).map(|d| Field::new(d, at));
                }
                "cpu_time" => {
                    class.cpu_time = self.duration(val, &field, true).map(|d| Field::new(d, at));
                }
                "child_margin" => {
                    class.child_margin = self
                        .duration(val, &field, false)
                        .flatten()
                        .map(|d| Field::new(d, at));
                }
                "retries" => {
                    class.retries = self.quantity(val, &field).map(|n| Field::new(n, at));
                }
                "priority" => {
                    if let Some(s) = self.string(val, &field) {
                        match s.parse() {
                            Ok(p) => class.priority = Some(Field::new(p, at)),
                            Err(e) => self.problem(
                                val.span().start,
                                &field,
                                format!("{:?}: {e}", truncate(s)),
                            ),
                        }
                    }
                }
                "limits" => {
                    let Some(limits) = self.table(val, &field) else {
                        continue;
                    };
                    for (dim, limit) in limits.iter() {
                        let limit_field = join(&field, dim.get_ref());
                        if let Some(n) = self.quantity(limit, &limit_field) {
                            class.limits.push((
                                Field::new(dim.get_ref().to_string(), self.at(dim.span().start)),
                                Field::new(n, self.at(limit.span().start)),
                            ));
                        }
                    }
                }
                "admission" => {
                    class.admission = self.admission(val, &field).map(|a| Field::new(a, at));
                }
                _ => self.unknown_key(k, &base, CLASS_KEYS),
            }
        }
        Some(class)
    }
}

pub(crate) fn parse(source: &str, file: Option<Arc<Path>>) -> Result<Policy, PolicyError> {
    let mut reader = Reader {
        source,
        file,
        problems: Problems::default(),
    };
    if source.len() > MAX_POLICY_BYTES {
        reader.problems.push(
            None,
            "",
            format!("policy is larger than {MAX_POLICY_BYTES} bytes"),
        );
        return reader.problems.into_result(Policy::empty());
    }
    let doc = match DeTable::parse(source) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            let message = format!("invalid TOML: {}", e.message().trim_end());
            reader.problem(at, "", message);
            return reader.problems.into_result(Policy::empty());
        }
    };
    let mut dims = Vec::new();
    let mut classes = Vec::new();
    let mut pools = Vec::new();
    let mut backends = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "dimensions" => {
                if let Some(t) = reader.table(value, "dimensions") {
                    dims.extend(t.iter().filter_map(|(k, v)| reader.dimension(k, v)));
                }
            }
            "classes" => {
                if let Some(t) = reader.table(value, "classes") {
                    classes.extend(t.iter().filter_map(|(k, v)| reader.class(k, v)));
                }
            }
            "pools" => {
                if let Some(t) = reader.table(value, "pools") {
                    pools.extend(t.iter().filter_map(|(k, v)| reader.pool(k, v)));
                }
            }
            "backends" => {
                if let Some(t) = reader.table(value, "backends") {
                    backends.extend(t.iter().filter_map(|(k, v)| reader.backend(k, v)));
                }
            }
            _ => reader.unknown_key(key, "", TOP_KEYS),
        }
    }
    let origin = origin(&doc, source, reader.file.as_ref());
    validate(dims, classes, pools, backends, reader.problems).map(|mut p| {
        p.origin = origin;
        p
    })
}

/// Where `doc` writes each dimension, class, pool and backend, each backend's hosts, and the
/// sections.
fn origin(doc: &Spanned<DeTable<'_>>, source: &str, file: Option<&Arc<Path>>) -> Origin {
    let at = |key: &Spanned<std::borrow::Cow<'_, str>>| {
        Location::of_offset(source, key.span().start, file)
    };
    let mut fields: Vec<(Box<str>, Location)> = Vec::new();
    for (section, value) in doc.get_ref().iter() {
        let name = section.get_ref().as_ref();
        if !matches!(name, "dimensions" | "classes" | "pools" | "backends") {
            continue;
        }
        fields.push((name.into(), at(section)));
        let DeValue::Table(t) = value.get_ref() else {
            continue;
        };
        for (key, value) in t.iter() {
            let field = format!("{name}.{}", key.get_ref());
            if let (DeValue::Table(t), "backends") = (value.get_ref(), name) {
                if let Some((hosts, _)) = t.get_key_value("hosts") {
                    fields.push((format!("{field}.hosts").into(), at(hosts)));
                }
            }
            fields.push((field.into(), at(key)));
        }
    }
    Origin::new(file.cloned(), fields)
}

impl Policy {
    fn empty() -> Policy {
        Policy {
            dimensions: Vec::new(),
            classes: Vec::new(),
            pools: Vec::new(),
            backends: Vec::new(),
            origin: Origin::default(),
        }
    }
}

fn join(base: &str, key: &str) -> String {
    let key = truncate(key);
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

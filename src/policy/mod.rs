//! Policies: which request classes exist and what each may spend.
//!
//! A policy is data, validated once: either built in code with [`Policy::builder`] or read from a TOML
//! file with [`Policy::from_toml_str`] / [`Policy::from_toml_file`]. A [`Policy`] value is always valid;
//! there is no way to construct one with a zero wall time, an unknown dimension or a duplicate name. The
//! [`Engine`](crate::Engine) compiles it into a form whose hot paths index arrays instead of hashing
//! names.
//!
//! A policy declares **dimensions** once, then gives each **class** limits on some of them:
//!
//! - a *counter* only grows during a request (file lookups, DB queries, bytes, gallery images);
//! - a *level* goes up and down, and its limit bounds the current value (concurrent sub-calls, nesting);
//! - every class also has the built-in counters `retries` (the retry allowance of the whole request
//!   tree) and `cpu_time` (thread CPU time, in nanoseconds), and a wall-time deadline.
//!
//! A dimension a class does not limit is still counted, so the limit report shows it.
//!
//! ```toml
//! [dimensions]
//! file_lookups = "counter"
//! bytes = { kind = "counter", unit = "bytes" }
//! nesting_depth = "level"
//!
//! [classes.parse]
//! wall_time = "30s"
//! retries = 3
//! child_margin = "50ms"
//! limits = { file_lookups = 500, bytes = "2MiB", nesting_depth = 40 }
//! ```

mod admission;
mod backend;
mod builder;
mod error;
mod file;

pub use admission::{
    AdaptiveLimit, AdmissionPolicy, Algorithm, Concurrency, Headroom, PerKey, Permille, PoolPolicy,
    QueuePolicy, RateLimit, MAX_CONCURRENCY, MAX_KEYS, MAX_POOLS, MAX_POOLS_PER_CLASS,
};
pub(crate) use backend::same_host;
pub use backend::{
    BackendPolicy, BreakerPolicy, EjectionPolicy, RetryPolicy, MAX_BACKENDS, MAX_HOSTS,
    MAX_HOST_LEN, MAX_PROBES,
};
pub use builder::{AdmissionBuilder, BackendBuilder, ClassBuilder, PolicyBuilder};
pub use error::{Location, PolicyError, Problem};
pub use file::MAX_POLICY_BYTES;

use crate::verdict::Unit;
use crate::Priority;
use error::{Origin, Problems};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The most dimensions an engine knows, the two built-in ones (`retries`, `cpu_time`) included.
pub const MAX_DIMENSIONS: usize = 32;
/// The most classes a policy may declare.
pub const MAX_CLASSES: usize = 256;
/// The longest dimension or class name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Names that cannot be declared as dimensions: built-ins and keys of the propagation header
/// (`id`, `pri`, `t`: a dimension of that name would be written into the header twice).
pub(crate) const RESERVED_NAMES: [&str; 6] = ["retries", "cpu_time", "wall_time", "id", "pri", "t"];

/// The built-in dimensions that take dimension slots: `retries` and `cpu_time`.
const BUILTIN_DIMENSIONS: usize = 2;

/// The name of the built-in retry allowance counter.
pub const RETRIES: &str = "retries";
/// The name of the built-in CPU time counter (nanoseconds).
pub const CPU_TIME: &str = "cpu_time";
/// The name under which wall time appears in reports and verdicts.
pub const WALL_TIME: &str = "wall_time";

/// The default margin by which a child's deadline ends before its parent's.
pub const DEFAULT_CHILD_MARGIN: Duration = Duration::from_millis(10);

/// How a dimension is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimensionKind {
    /// Only grows during a request; the limit bounds the total.
    Counter,
    /// Goes up and down; the limit bounds the current value (held through a guard).
    Level,
}

impl DimensionKind {
    /// `counter` or `level`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DimensionKind::Counter => "counter",
            DimensionKind::Level => "level",
        }
    }
}

/// A declared dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension {
    name: Arc<str>,
    kind: DimensionKind,
    unit: Unit,
}

impl Dimension {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Counter or level.
    pub fn kind(&self) -> DimensionKind {
        self.kind
    }
    /// The unit amounts are counted in.
    pub fn unit(&self) -> Unit {
        self.unit
    }
    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
}

/// What one request class may spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassPolicy {
    name: Arc<str>,
    wall_time: Option<Duration>,
    cpu_time: Option<Duration>,
    retries: Option<u64>,
    child_margin: Duration,
    priority: Priority,
    limits: Vec<(Arc<str>, u64)>,
    admission: Option<AdmissionPolicy>,
}

impl ClassPolicy {
    /// Admission settings: concurrency limit, priorities, queue, per-key limits, pools. `None` admits
    /// every request of the class (its budget still applies).
    pub fn admission(&self) -> Option<&AdmissionPolicy> {
        self.admission.as_ref()
    }
    /// The limit on a declared dimension, if this class limits it.
    pub fn limit(&self, dimension: &str) -> Option<u64> {
        self.limits
            .iter()
            .find(|(n, _)| &**n == dimension)
            .map(|(_, l)| *l)
    }
    /// The class name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The wall-time limit of a request of this class; `None` is no deadline.
    pub fn wall_time(&self) -> Option<Duration> {
        self.wall_time
    }
    /// The thread CPU time limit, if any.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_time
    }
    /// The retry allowance of a whole request tree, if limited.
    pub fn retries(&self) -> Option<u64> {
        self.retries
    }
    /// How much earlier than its parent's a child budget's deadline ends.
    pub fn child_margin(&self) -> Duration {
        self.child_margin
    }
    /// The default priority of requests of this class.
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// The limit on each declared dimension this class limits.
    pub fn limits(&self) -> impl Iterator<Item = (&str, u64)> {
        self.limits.iter().map(|(n, l)| (&**n, *l))
    }
    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
    pub(crate) fn limit_entries(&self) -> &[(Arc<str>, u64)] {
        &self.limits
    }
}

/// A validated set of dimensions and request classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    dimensions: Vec<Dimension>,
    classes: Vec<ClassPolicy>,
    pools: Vec<PoolPolicy>,
    backends: Vec<BackendPolicy>,
    origin: Origin,
}

impl Policy {
    /// Starts a policy in code.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// Reads a policy from TOML text. Errors give line and column.
    pub fn from_toml_str(source: &str) -> Result<Policy, PolicyError> {
        file::parse(source, None)
    }

    /// Reads a policy from a TOML file. Errors give the file, line and column.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        file::load(path.as_ref())
    }

    /// Reads a policy from TOML text read from `source`, at most [`MAX_POLICY_BYTES`], naming it
    /// `name` in errors (file, line and column, as [`from_toml_file`](Self::from_toml_file) does).
    ///
    /// For a file the caller opened and checked itself: reading from that handle leaves no gap
    /// between the check and the read in which the path could be swapped for another file.
    ///
    /// ```
    /// use costguard::Policy;
    ///
    /// let text = "[classes.api]\nwall_time = \"2s\"\n";
    /// let policy = Policy::from_toml_reader(text.as_bytes(), "etc/costguard.toml").unwrap();
    /// assert!(policy.class("api").is_some());
    ///
    /// let err = Policy::from_toml_reader("[classes.api]\nwall_time = 2\n".as_bytes(), "etc/costguard.toml")
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("etc/costguard.toml:2"), "{err}");
    /// ```
    pub fn from_toml_reader(
        source: impl std::io::Read,
        name: impl AsRef<Path>,
    ) -> Result<Policy, PolicyError> {
        file::read(source, name.as_ref())
    }

    /// Where this policy was written, to place the problems an engine finds when it applies it.
    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The declared dimensions (the built-ins `retries` and `cpu_time` are not listed).
    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// The classes, in declaration order.
    pub fn classes(&self) -> &[ClassPolicy] {
        &self.classes
    }

    /// The class called `name`.
    pub fn class(&self, name: &str) -> Option<&ClassPolicy> {
        self.classes.iter().find(|c| &*c.name == name)
    }

    /// The dimension called `name`.
    pub fn dimension(&self, name: &str) -> Option<&Dimension> {
        self.dimensions.iter().find(|d| &*d.name == name)
    }

    /// The shared cost pools.
    pub fn pools(&self) -> &[PoolPolicy] {
        &self.pools
    }

    /// The backends.
    pub fn backends(&self) -> &[BackendPolicy] {
        &self.backends
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&BackendPolicy> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}

impl fmt::Display for Policy {
    /// The effective limits, one class per paragraph.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, class) in self.classes.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "class {} (priority {})", class.name, class.priority)?;
            let none = || "none".to_owned();
            let time = |d: Option<Duration>| d.map_or_else(none, crate::units::format_duration);
            writeln!(f, "  {:<24} {}", WALL_TIME, time(class.wall_time))?;
            writeln!(f, "  {:<24} {}", CPU_TIME, time(class.cpu_time))?;
            let retries = class.retries.map_or_else(none, |r| r.to_string());
            writeln!(f, "  {:<24} {}", RETRIES, retries)?;
            writeln!(
                f,
                "  {:<24} {}",
                "child_margin",
                crate::units::format_duration(class.child_margin)
            )?;
            if let Some(a) = &class.admission {
                let limit = match a.concurrency {
                    Concurrency::Static(n) => n.to_string(),
                    Concurrency::Adaptive(l) => format!(
                        "adaptive ({}), {} to {}, starting at {}",
                        match l.algorithm {
                            Algorithm::Aimd { .. } => "aimd",
                            Algorithm::Gradient2 { .. } => "gradient2",
                        },
                        l.min,
                        l.max,
                        l.initial
                    ),
                };
                writeln!(
                    f,
                    "  {:<24} {}{}",
                    "concurrency",
                    limit,
                    if a.shadow { " (shadow)" } else { "" }
                )?;
                if let Some(q) = a.queue {
                    writeln!(
                        f,
                        "  {:<24} {} waiting, at most {}",
                        "queue",
                        q.capacity,
                        crate::units::format_duration(q.max_wait)
                    )?;
                }
                if let Some(k) = a.per_key {
                    let c = k
                        .concurrency
                        .map_or_else(|| "-".to_owned(), |c| c.to_string());
                    let r = k.rate.map_or_else(
                        || "-".to_owned(),
                        |r| {
                            format!(
                                "{} per {} (burst {})",
                                r.amount,
                                crate::units::format_duration(r.per),
                                r.burst
                            )
                        },
                    );
                    writeln!(
                        f,
                        "  {:<24} concurrency {c}, rate {r}, {} keys tracked",
                        "per_key", k.max_keys
                    )?;
                }
                for p in &a.pools {
                    writeln!(f, "  {:<24} {p}", "pool")?;
                }
            }
            for dim in &self.dimensions {
                let limit = class
                    .limits
                    .iter()
                    .find(|(n, _)| *n == dim.name)
                    .map_or_else(|| "unlimited".to_owned(), |(_, l)| dim.unit.format(*l));
                writeln!(f, "  {:<24} {} ({})", dim.name, limit, dim.kind.as_str())?;
            }
        }
        Ok(())
    }
}

/// A value and where it was written, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Field<T> {
    pub(crate) value: T,
    pub(crate) at: Option<Location>,
}

impl<T> Field<T> {
    pub(crate) fn new(value: T, at: Option<Location>) -> Self {
        Field { value, at }
    }
}

/// A dimension as written, before validation.
#[derive(Clone, Debug)]
pub(crate) struct RawDimension {
    pub(crate) name: Field<String>,
    pub(crate) kind: DimensionKind,
    pub(crate) unit: Unit,
}

/// A class as written, before validation.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawClass {
    pub(crate) name: Field<String>,
    /// `Some(None)`: explicitly no deadline.
    pub(crate) wall_time: Option<Field<Option<Duration>>>,
    pub(crate) cpu_time: Option<Field<Option<Duration>>>,
    pub(crate) retries: Option<Field<u64>>,
    pub(crate) child_margin: Option<Field<Duration>>,
    pub(crate) priority: Option<Field<Priority>>,
    pub(crate) limits: Vec<(Field<String>, Field<u64>)>,
    pub(crate) admission: Option<Field<admission::RawAdmission>>,
}

impl Default for Field<String> {
    fn default() -> Self {
        Field::new(String::new(), None)
    }
}

/// Whether `name` is a valid dimension or class name: `[a-z][a-z0-9_]*`, at most 32 bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// At most 64 bytes of untrusted text (a name, a key, a value) for error messages and the field
/// paths that name it, cut on a character boundary: a policy's errors never grow with its names.
pub(crate) fn truncate(s: &str) -> &str {
    crate::text::clip(s, 64)
}

pub(crate) fn name_problem(name: &str) -> String {
    format!(
        "`{}` is not a valid name: use 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and _, starting with a letter",
        truncate(name).escape_debug()
    )
}

/// Checks everything that does not depend on the syntax the policy was written in.
pub(crate) fn validate(
    dims: Vec<RawDimension>,
    classes: Vec<RawClass>,
    pools: Vec<admission::RawPool>,
    backends: Vec<backend::RawBackend>,
    mut problems: Problems,
) -> Result<Policy, PolicyError> {
    let mut seen = HashSet::new();
    let mut dimensions = Vec::with_capacity(dims.len());
    for d in dims {
        let name = &d.name.value;
        let field = format!("dimensions.{}", truncate(name));
        if !valid_name(name) {
            problems.push(d.name.at.clone(), field, name_problem(name));
        } else if RESERVED_NAMES.contains(&name.as_str()) {
            problems.push(
                d.name.at.clone(),
                field,
                format!("`{name}` is reserved (built-in or a header key); choose another name"),
            );
        } else if !seen.insert(name.clone()) {
            problems.push(
                d.name.at.clone(),
                field,
                format!("dimension `{name}` is declared twice"),
            );
        } else {
            dimensions.push(Dimension {
                name: Arc::from(name.as_str()),
                kind: d.kind,
                unit: d.unit,
            });
        }
    }
    if dimensions.len() + BUILTIN_DIMENSIONS > MAX_DIMENSIONS {
        problems.push(
            None,
            "dimensions",
            format!(
                "{} dimensions declared; at most {} fit beside the built-in ones",
                dimensions.len(),
                MAX_DIMENSIONS - BUILTIN_DIMENSIONS
            ),
        );
    }
    if classes.len() > MAX_CLASSES {
        problems.push(
            None,
            "classes",
            format!(
                "{} classes declared; at most {MAX_CLASSES} are allowed",
                classes.len()
            ),
        );
    }

    let pools = admission::validate_pools(pools, &dimensions, &mut problems);
    let backends = backend::validate_backends(backends, &mut problems);
    let mut class_names = HashSet::new();
    let mut out = Vec::with_capacity(classes.len());
    for c in classes {
        let name = &c.name.value;
        let base = format!("classes.{}", truncate(name));
        if !valid_name(name) {
            problems.push(c.name.at.clone(), &base, name_problem(name));
            continue;
        }
        if !class_names.insert(name.clone()) {
            problems.push(
                c.name.at.clone(),
                &base,
                format!("class `{name}` is declared twice"),
            );
            continue;
        }
        for (field, time) in [("wall_time", &c.wall_time), ("cpu_time", &c.cpu_time)] {
            if let Some(Field { value: Some(d), at }) = time {
                if d.is_zero() {
                    problems.push(
                        at.clone(),
                        format!("{base}.{field}"),
                        "must be greater than zero (omit it, or write \"none\", for no limit)",
                    );
                }
            }
        }
        if let Some(m) = &c.child_margin {
            if m.value.is_zero() {
                problems.push(
                    m.at.clone(),
                    format!("{base}.child_margin"),
                    "must be greater than zero, so that a child's deadline ends before its parent's",
                );
            }
        }
        let mut limits: Vec<(Arc<str>, u64)> = Vec::with_capacity(c.limits.len());
        for (dim, limit) in &c.limits {
            let field = format!("{base}.limits.{}", truncate(&dim.value));
            match dimensions.iter().find(|d| *d.name == *dim.value) {
                None if matches!(dim.value.as_str(), RETRIES | CPU_TIME | WALL_TIME) => problems
                    .push(
                        dim.at.clone(),
                        field,
                        format!(
                            "`{}` is set on the class itself, not under limits",
                            dim.value
                        ),
                    ),
                None => problems.push(
                    dim.at.clone(),
                    field,
                    format!(
                        "unknown dimension `{}`; declare it under [dimensions] first",
                        truncate(&dim.value).escape_debug()
                    ),
                ),
                Some(d) if limits.iter().any(|(n, _)| *n == d.name) => {
                    problems.push(dim.at.clone(), field, "limit given twice".to_owned())
                }
                Some(d) => limits.push((Arc::clone(&d.name), limit.value)),
            }
        }
        let admission = c
            .admission
            .and_then(|a| admission::validate_admission(a, &base, &pools, &mut problems));
        out.push(ClassPolicy {
            admission,
            name: Arc::from(name.as_str()),
            wall_time: c.wall_time.and_then(|f| f.value),
            cpu_time: c.cpu_time.and_then(|f| f.value),
            retries: c.retries.map(|f| f.value),
            child_margin: c.child_margin.map_or(DEFAULT_CHILD_MARGIN, |f| f.value),
            priority: c.priority.map_or(Priority::default(), |f| f.value),
            limits,
        });
    }
    if out.is_empty() && problems.is_empty() {
        problems.push(None, "classes", "a policy needs at least one class");
    }
    problems.into_result(Policy {
        dimensions,
        classes: out,
        pools,
        backends,
        origin: Origin::default(),
    })
}

//! The limit report: what a request and its children used of every limit.
//!
//! Modelled on MediaWiki's parser limit report ("Expensive parser function count: 12/500"), which
//! editors and operators already read to learn why a page was cut short. The same data is available as a
//! struct, as JSON for logs, and as text.

use super::node::Node;
use super::state::CancelReason;
use crate::policy::{DimensionKind, WALL_TIME};
use crate::sync::{Arc, Ordering, Weak};
use crate::verdict::Unit;
use serde::Serialize;
use std::fmt;

/// Usage of one dimension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DimensionUsage {
    /// Dimension name.
    pub name: String,
    /// `counter` or `level`.
    pub kind: &'static str,
    /// `count`, `bytes` or `nanoseconds`.
    pub unit: &'static str,
    /// For a counter, the total charged; for a level, the current value.
    pub used: u64,
    /// For a level, the highest value reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<u64>,
    /// The limit, or `None` when the dimension is only counted.
    pub limit: Option<u64>,
}

/// Wall time used against the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WallTime {
    /// Nanoseconds since the budget started.
    pub elapsed_ns: u64,
    /// Nanoseconds from start to deadline, or `None` for no deadline.
    pub limit_ns: Option<u64>,
}

/// What a request (and its children) used of every limit, keyed by request id.
///
/// ```
/// use costguard::{Engine, Policy, RequestId};
///
/// let policy = Policy::builder()
///     .counter("file_lookups")
///     .class("parse", |c| c.limit("file_lookups", 500))
///     .build()
///     .unwrap();
/// let engine = Engine::new(policy).unwrap();
/// let lookups = engine.counter("file_lookups").unwrap();
/// let budget = engine.begin_by_name("parse", RequestId::new("req-7").unwrap()).unwrap();
/// budget.try_charge(lookups, 120).unwrap();
///
/// let report = budget.report();
/// assert_eq!(report.request_id, "req-7");
/// let row = report.dimensions.iter().find(|d| d.name == "file_lookups").unwrap();
/// assert_eq!((row.used, row.limit), (120, Some(500)));
/// assert!(report.to_json().contains("\"request_id\":\"req-7\""));
/// assert!(report.to_string().contains("file_lookups"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LimitReport {
    /// The request.
    pub request_id: String,
    /// Its class.
    pub class: String,
    /// The generation of the policy the budget started with.
    pub policy_generation: u64,
    /// Its priority.
    pub priority: &'static str,
    /// Wall time.
    pub wall_time: WallTime,
    /// Every dimension that is limited or was used.
    pub dimensions: Vec<DimensionUsage>,
    /// Why the budget is cancelled, if it is.
    pub cancelled: Option<&'static str>,
    /// Reports of child budgets, finished ones first.
    pub children: Vec<LimitReport>,
    /// Children that finished after the report already held the maximum number of child reports.
    pub children_omitted: u64,
}

impl LimitReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The report as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The dimension called `name`.
    pub fn dimension(&self, name: &str) -> Option<&DimensionUsage> {
        self.dimensions.iter().find(|d| d.name == name)
    }

    fn write_indented(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        writeln!(
            f,
            "{pad}limit report for request {} (class {}, priority {}, policy {})",
            self.request_id, self.class, self.priority, self.policy_generation
        )?;
        let wall = Unit::Nanos;
        let limit = self
            .wall_time
            .limit_ns
            .map_or("none".into(), |l| wall.format(l));
        writeln!(
            f,
            "{pad}  {:<22} {} of {}",
            WALL_TIME,
            wall.format(self.wall_time.elapsed_ns),
            limit
        )?;
        for d in &self.dimensions {
            let unit = match d.unit {
                "bytes" => Unit::Bytes,
                "nanoseconds" => Unit::Nanos,
                _ => Unit::Count,
            };
            let limit = d.limit.map_or("unlimited".into(), |l| unit.format(l));
            match d.peak {
                Some(peak) => writeln!(
                    f,
                    "{pad}  {:<22} {} now, highest {} of {}",
                    d.name,
                    unit.format(d.used),
                    unit.format(peak),
                    limit
                )?,
                None => {
                    let mark = match d.limit {
                        Some(l) if d.used >= l => "  (limit reached)",
                        _ => "",
                    };
                    writeln!(
                        f,
                        "{pad}  {:<22} {} of {}{mark}",
                        d.name,
                        unit.format(d.used),
                        limit
                    )?
                }
            }
        }
        if let Some(reason) = self.cancelled {
            writeln!(f, "{pad}  cancelled: {reason}")?;
        }
        for child in &self.children {
            child.write_indented(f, depth + 1)?;
        }
        if self.children_omitted > 0 {
            writeln!(
                f,
                "{pad}  ... and {} more finished children",
                self.children_omitted
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for LimitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_indented(f, 0)
    }
}

pub(crate) fn build(node: &Node) -> LimitReport {
    let snapshot = &node.snapshot;
    let now = node.snapshot.clock.now();
    let mut dimensions = Vec::new();
    for (i, info) in snapshot.dims.dims.iter().enumerate() {
        let used = node.used(i);
        let limit = Some(node.limit(i)).filter(|&l| l != u64::MAX);
        let level = info.kind == DimensionKind::Level;
        let peak = level.then(|| node.peak(i));
        if limit.is_none() && used == 0 && peak.unwrap_or(0) == 0 {
            continue;
        }
        dimensions.push(DimensionUsage {
            name: info.name.to_string(),
            kind: info.kind.as_str(),
            unit: info.unit.as_str(),
            used,
            peak,
            limit,
        });
    }
    let (mut children, omitted) = {
        let finished = node.finished.lock();
        (finished.reports.clone(), finished.omitted)
    };
    let live: Vec<Arc<Node>> = node.live.lock().iter().filter_map(Weak::upgrade).collect();
    children.extend(live.iter().map(|child| build(child)));
    // `live` is dropped here, outside every lock: a child finishing now can report to its parent.
    LimitReport {
        request_id: node.request_id.as_str().to_owned(),
        class: node
            .rules()
            .map_or_else(String::new, |r| r.name.to_string()),
        policy_generation: snapshot.generation,
        priority: node.priority.as_str(),
        wall_time: WallTime {
            elapsed_ns: crate::clock::duration_to_nanos(now.saturating_duration_since(node.start)),
            limit_ns: (!node.deadline.is_never()).then(|| {
                node.deadline
                    .as_nanos()
                    .saturating_sub(node.start.as_nanos())
            }),
        },
        dimensions,
        cancelled: CancelReason::from_bits(node.state.load(Ordering::Relaxed)).map(|r| r.as_str()),
        children,
        children_omitted: omitted,
    }
}

//! Budgets across process hops.
//!
//! When a parser calls an API over HTTP, the API should not start with fresh limits: it should inherit
//! "400 file lookups and 2.1 s left". [`Budget::to_header`] encodes what a budget has left into one
//! compact header value; the callee decodes it with [`Propagation::decode`] and starts its budget with
//! [`Engine::begin_propagated`], which can only **tighten** the callee's own policy: each limit becomes
//! the smaller of the policy's and the header's, the deadline the earlier, the priority the less
//! important. A forged header can make a request poorer, never richer.
//!
//! The value is untrusted input, so the grammar is strict and small:
//!
//! ```text
//! value  = "cg1" *( ";" field )            ; at most 2048 bytes, at most 40 fields
//! field  = "id=" request-id                 ; 1-64 of A-Z a-z 0-9 . _ : -
//!        / "pri=" priority                  ; critical | normal | sheddable | background
//!        / "t=" decimal                     ; milliseconds left; absent: no deadline
//!        / name "=" decimal                 ; what is left of a dimension (retries, cpu_time too)
//! name   = %x61-7A *31( %x61-7A / DIGIT / "_" )
//! decimal = "0" / %x31-39 *19DIGIT        ; must fit in 64 bits
//! ```
//!
//! Each key may appear once. Spaces and tabs around the whole value are ignored (HTTP allows them);
//! nothing else is. A value that breaks any rule is refused whole with a [`HeaderError`] naming the byte
//! offset. The callee then runs under its own policy alone: never looser than that policy, though
//! without the caller's tighter limits, so a caller should treat a refused header as a bug to fix.
//!
//! ```
//! use costguard::{Engine, Policy, Propagation, RequestId};
//! use costguard::clock::ManualClock;
//! use std::time::Duration;
//!
//! let policy = Policy::builder()
//!     .counter("file_lookups")
//!     .class("parse", |c| c.wall_time(Duration::from_secs(30)).limit("file_lookups", 500))
//!     .class("api", |c| c.wall_time(Duration::from_secs(60)).limit("file_lookups", 1000))
//!     .build()
//!     .unwrap();
//! let clock = ManualClock::new();
//! let engine = Engine::builder(policy).clock(clock.clone()).build().unwrap();
//! let lookups = engine.counter("file_lookups").unwrap();
//!
//! // The caller has used 100 lookups and 27.9 s.
//! let parse = engine.begin_by_name("parse", RequestId::new("edit-9").unwrap()).unwrap();
//! parse.try_charge(lookups, 100).unwrap();
//! clock.advance(Duration::from_millis(27_900));
//! let header = parse.to_header();
//! assert_eq!(header, "cg1;id=edit-9;pri=normal;t=2090;file_lookups=400");
//!
//! // The callee's own policy allows 1000 lookups and 60 s; the header tightens both.
//! let prop = Propagation::decode(&header).unwrap();
//! let api = engine.class("api").unwrap();
//! let budget = engine.begin_propagated(api, RequestId::new("local").unwrap(), &prop).unwrap();
//! assert_eq!(budget.remaining_of(lookups), 400);
//! assert_eq!(budget.remaining(), Duration::from_millis(2090));
//! assert_eq!(budget.request_id().as_str(), "edit-9");
//! ```
//!
//! The header goes one way: it passes down what is left, and the callee can spend no more. What the
//! callee did spend comes back only if the callee reports it and the caller charges it: otherwise
//! each new call (a retry, a second sub-request) hands the callee a fresh share of what the caller
//! had left, and retries multiply across hops again (never past what the caller had left per call,
//! but that can be several times over). A callee answers with [`Budget::usage`], encoded as the
//! value of a [`USAGE_HEADER_NAME`] response header (`cgu1;retries=2;file_lookups=400`: counters
//! used, in the same strict grammar); the caller decodes it with [`Usage::decode`] and charges it to
//! the budget it called under with [`Budget::charge_usage`].
//!
//! ```
//! use costguard::{Counter, Engine, Policy, Propagation, RequestId, Usage};
//! use costguard::clock::ManualClock;
//! use std::time::Duration;
//!
//! let policy = Policy::builder()
//!     .counter("file_lookups")
//!     .class("parse", |c| c.wall_time(Duration::from_secs(30)).retries(3).limit("file_lookups", 500))
//!     .class("api", |c| c.wall_time(Duration::from_secs(60)).retries(3))
//!     .build()
//!     .unwrap();
//! let engine = Engine::builder(policy).clock(ManualClock::new()).build().unwrap();
//! let parse = engine.begin_by_name("parse", RequestId::new("edit-9").unwrap()).unwrap();
//!
//! // The callee, in another process, retries twice and looks up 120 files.
//! let prop = Propagation::decode(&parse.to_header()).unwrap();
//! let api = engine.class("api").unwrap();
//! let callee = engine.begin_propagated(api, RequestId::new("local").unwrap(), &prop).unwrap();
//! callee.try_retry().unwrap();
//! callee.try_retry().unwrap();
//! callee.try_charge(engine.counter("file_lookups").unwrap(), 120).unwrap();
//! let answer = callee.usage().encode();
//! assert_eq!(answer, "cgu1;retries=2;file_lookups=120");
//!
//! // The caller charges it: one retry of the tree's three is left for everyone.
//! parse.charge_usage(&Usage::decode(&answer).unwrap()).unwrap();
//! assert_eq!(parse.used(Counter::RETRIES), 2);
//! assert_eq!(parse.remaining_of(Counter::RETRIES), 1);
//! ```

use crate::budget::{Budget, Overrides};
use crate::handle::Class;
use crate::policy::valid_name;
use crate::{Engine, Priority, RequestId, Verdict};
use std::borrow::Cow;
use std::fmt::{self, Write};
use std::time::Duration;

/// The HTTP header name costguard uses by convention.
pub const HEADER_NAME: &str = "costguard-budget";
/// The HTTP response header name costguard uses by convention for a callee's [`Usage`].
pub const USAGE_HEADER_NAME: &str = "costguard-usage";
/// The longest header value accepted, in bytes: room for every field a budget can have (an id of 64
/// bytes, a priority, a time and 32 dimensions with 32-byte names and 20-digit values come to about
/// 1.9 KB), so that whatever [`Budget::to_header`] writes, [`Propagation::decode`] accepts.
pub const MAX_HEADER_LEN: usize = 2048;
/// The most fields a header value may carry.
pub const MAX_HEADER_FIELDS: usize = 40;
const VERSION: &str = "cg1";
const USAGE_VERSION: &str = "cgu1";

/// What a caller passes on to its callee: the remaining allowance of its budget.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Propagation {
    request_id: Option<RequestId>,
    priority: Option<Priority>,
    remaining: Option<Duration>,
    allowances: Vec<(String, u64)>,
}

/// Why a header value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderError {
    kind: HeaderErrorKind,
    offset: usize,
    /// The key of the field at fault (at most [`KEY_SHOWN`] bytes of it), if the fault is in one.
    key: Option<Box<str>>,
}

/// The most bytes of a key an error repeats (a header is untrusted input).
const KEY_SHOWN: usize = 32;

/// The kinds of [`HeaderError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderErrorKind {
    /// Longer than [`MAX_HEADER_LEN`].
    TooLong,
    /// More fields than [`MAX_HEADER_FIELDS`].
    TooManyFields,
    /// Does not start with the version token: `cg1` (or `cgu1` for a [`Usage`]).
    BadVersion,
    /// A field is not `key=value`, or the key is not a valid name.
    BadField,
    /// A key appears twice.
    DuplicateKey,
    /// A number is malformed or does not fit in 64 bits.
    BadNumber,
    /// The request id is malformed.
    BadRequestId,
    /// The priority is not one of the four names.
    BadPriority,
}

impl HeaderError {
    fn at(kind: HeaderErrorKind, offset: usize) -> Self {
        HeaderError {
            kind,
            offset,
            key: None,
        }
    }

    /// The same error, naming the field whose key is `key`.
    fn in_field(mut self, key: &str) -> Self {
        self.key = Some(crate::text::clip(key, KEY_SHOWN).into());
        self
    }

    /// The key of the field at fault, if the fault is in a field (at most 32 bytes of it).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn kind(&self) -> HeaderErrorKind {
        self.kind
    }

    /// The byte offset in the (trimmed) value where the problem starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            HeaderErrorKind::TooLong => "header value is longer than 2048 bytes",
            HeaderErrorKind::TooManyFields => "header value has more than 40 fields",
            HeaderErrorKind::BadVersion => {
                "header value does not start with its version token (`cg1`, or `cgu1` for usage)"
            }
            HeaderErrorKind::BadField => "malformed field (expected key=value)",
            HeaderErrorKind::DuplicateKey => "key appears twice",
            HeaderErrorKind::BadNumber => "malformed or out-of-range number",
            HeaderErrorKind::BadRequestId => "malformed request id",
            HeaderErrorKind::BadPriority => "unknown priority",
        };
        match &self.key {
            Some(key) => write!(
                f,
                "{what} in field `{}` at byte {}",
                key.escape_debug(),
                self.offset
            ),
            None => write!(f, "{what} at byte {}", self.offset),
        }
    }
}

impl std::error::Error for HeaderError {}

/// A strict decimal: no sign, no leading zeros, at most 20 digits, fits in `u64`.
fn decimal(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse().ok()
}

/// One `key=value` field of a header value, with the byte offsets of the field and of its value.
struct Field<'v> {
    at: usize,
    key: &'v str,
    val_at: usize,
    val: &'v str,
}

/// The fields of a header value after its version token, in order, with the checks every header
/// value shares: surrounding spaces and tabs trimmed, the length, the version token, the number
/// of fields and the `key=value` shape. Lazy, so that a field's own problem is found before a
/// later one's.
fn fields<'v>(
    value: &'v str,
    version: &str,
) -> Result<impl Iterator<Item = Result<Field<'v>, HeaderError>>, HeaderError> {
    use HeaderErrorKind as K;
    // Trimming reads only the spaces and tabs around the value, however long it is.
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::at(K::TooLong, MAX_HEADER_LEN));
    }
    let mut parts = value.split(';');
    if parts.next() != Some(version) {
        return Err(HeaderError::at(K::BadVersion, 0));
    }
    let mut offset = version.len() + 1;
    Ok(parts.enumerate().map(move |(count, field)| {
        if count >= MAX_HEADER_FIELDS {
            return Err(HeaderError::at(K::TooManyFields, offset));
        }
        let at = offset;
        offset += field.len() + 1;
        let Some((key, val)) = field.split_once('=') else {
            return Err(HeaderError::at(K::BadField, at).in_field(field));
        };
        Ok(Field {
            at,
            key,
            val_at: at + key.len() + 1,
            val,
        })
    }))
}

impl Propagation {
    /// Decodes a header value. See the [module documentation](self) for the grammar.
    pub fn decode(value: &str) -> Result<Propagation, HeaderError> {
        use HeaderErrorKind as K;
        let mut out = Propagation::default();
        let (mut saw_id, mut saw_pri, mut saw_t) = (false, false, false);
        for field in fields(value, VERSION)? {
            let Field {
                at,
                key,
                val_at,
                val,
            } = field?;
            let dup = |seen: &mut bool| {
                if std::mem::replace(seen, true) {
                    Err(HeaderError::at(K::DuplicateKey, at).in_field(key))
                } else {
                    Ok(())
                }
            };
            match key {
                "id" => {
                    dup(&mut saw_id)?;
                    let id = RequestId::new(val)
                        .map_err(|_| HeaderError::at(K::BadRequestId, val_at).in_field(key))?;
                    out.request_id = Some(id);
                }
                "pri" => {
                    dup(&mut saw_pri)?;
                    let p = val
                        .parse()
                        .map_err(|_| HeaderError::at(K::BadPriority, val_at).in_field(key))?;
                    out.priority = Some(p);
                }
                "t" => {
                    dup(&mut saw_t)?;
                    let ms = decimal(val)
                        .ok_or_else(|| HeaderError::at(K::BadNumber, val_at).in_field(key))?;
                    out.remaining = Some(Duration::from_millis(ms));
                }
                name if valid_name(name) => {
                    if out.allowances.iter().any(|(n, _)| n == name) {
                        return Err(HeaderError::at(K::DuplicateKey, at).in_field(key));
                    }
                    let n = decimal(val)
                        .ok_or_else(|| HeaderError::at(K::BadNumber, val_at).in_field(key))?;
                    out.allowances.push((name.to_owned(), n));
                }
                _ => return Err(HeaderError::at(K::BadField, at).in_field(key)),
            }
        }
        Ok(out)
    }

    /// Encodes as a header value.
    pub fn encode(&self) -> String {
        let mut s = String::from(VERSION);
        // Writing to a String cannot fail.
        if let Some(id) = &self.request_id {
            let _ = write!(s, ";id={id}");
        }
        if let Some(p) = self.priority {
            let _ = write!(s, ";pri={p}");
        }
        if let Some(t) = self.remaining {
            let _ = write!(s, ";t={}", u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        }
        for (name, n) in &self.allowances {
            let _ = write!(s, ";{name}={n}");
        }
        s
    }

    /// The request id the caller sent.
    pub fn request_id(&self) -> Option<RequestId> {
        self.request_id
    }

    /// The priority the caller sent.
    pub fn priority(&self) -> Option<Priority> {
        self.priority
    }

    /// The time the caller said was left.
    pub fn remaining(&self) -> Option<Duration> {
        self.remaining
    }

    /// The allowance the caller sent for a dimension, by name.
    pub fn allowance(&self, name: &str) -> Option<u64> {
        self.allowances
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }

    /// The tightening this header asks of a budget under `engine`'s current policy, for
    /// [`AdmitRequest::overrides`](crate::AdmitRequest::overrides). Dimensions the policy does not
    /// know are ignored; the request id is not included (use [`request_id`](Self::request_id)).
    pub fn overrides(&self, engine: &Engine) -> Overrides {
        self.overrides_in(&engine.snapshot())
    }

    fn overrides_in(&self, snapshot: &crate::engine::snapshot::Snapshot) -> Overrides {
        let mut overrides = Overrides::new();
        for (name, n) in &self.allowances {
            if let Some(i) = snapshot.declared_dim(name) {
                overrides.set_limit_index(i, *n);
            }
        }
        if let Some(t) = self.remaining {
            overrides = overrides.wall_time(t);
        }
        if let Some(p) = self.priority {
            overrides = overrides.priority(p);
        }
        overrides
    }

    /// Every allowance sent, in header order.
    pub fn allowances(&self) -> impl Iterator<Item = (&str, u64)> {
        self.allowances.iter().map(|(n, v)| (n.as_str(), *v))
    }
}

/// What a callee spent, to report to its caller in another process: the counters its budget used
/// (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    used: Vec<(String, u64)>,
}

impl Usage {
    /// Decodes a usage header value: `cgu1` and then `name=decimal` fields, with the limits and the
    /// strictness of [`Propagation::decode`].
    pub fn decode(value: &str) -> Result<Usage, HeaderError> {
        use HeaderErrorKind as K;
        let mut out = Usage::default();
        for field in fields(value, USAGE_VERSION)? {
            let Field {
                at,
                key,
                val_at,
                val,
            } = field?;
            if !valid_name(key) {
                return Err(HeaderError::at(K::BadField, at).in_field(key));
            }
            if out.used.iter().any(|(n, _)| n == key) {
                return Err(HeaderError::at(K::DuplicateKey, at).in_field(key));
            }
            let n =
                decimal(val).ok_or_else(|| HeaderError::at(K::BadNumber, val_at).in_field(key))?;
            out.used.push((key.to_owned(), n));
        }
        Ok(out)
    }

    /// Encodes as a usage header value.
    pub fn encode(&self) -> String {
        let mut s = String::from(USAGE_VERSION);
        for (name, n) in &self.used {
            // Writing to a String cannot fail.
            let _ = write!(s, ";{name}={n}");
        }
        s
    }

    /// The amount of a counter the callee reported, by name.
    pub fn used(&self, name: &str) -> Option<u64> {
        self.used.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Every amount reported, in header order.
    pub fn amounts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.used.iter().map(|(n, v)| (n.as_str(), *v))
    }
}

/// The index of the counter `name` names in `snapshot`'s policy, if a usage reports it: the
/// built-in `retries` and the policy's counters, not levels, nor `cpu_time` (one process's
/// threads are not another's), nor names a reload removed.
fn usage_counter(snapshot: &crate::engine::snapshot::Snapshot, name: &str) -> Option<usize> {
    let i = snapshot.declared_dim(name)?;
    let counter = snapshot.dims.info(i)?.kind == crate::policy::DimensionKind::Counter;
    (counter && i != crate::Counter::CPU_TIME.index()).then_some(i)
}

impl Budget {
    /// What this budget (and its children) used of each counter, to report to the caller in
    /// another process that it was started for: the built-in `retries` and every counter of the
    /// policy, those at zero left out. Levels are not reported (they are back to where they were
    /// when the work is done), nor `cpu_time` (this process's threads are not the caller's).
    pub fn usage(&self) -> Usage {
        let node = self.node();
        let used = node
            .snapshot
            .dims
            .dims
            .iter()
            .enumerate()
            .filter(|&(i, d)| usage_counter(&node.snapshot, &d.name) == Some(i))
            .map(|(i, d)| (d.name.to_string(), node.used(i)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Usage { used }
    }

    /// Charges what a callee in another process reports it used (its [`Usage`]) to this budget,
    /// so that the tree's allowances, its retries above all, hold across the hop. Counters this
    /// budget's policy does not know, levels and `cpu_time` are ignored.
    ///
    /// When the usage fits, it is charged all at once. When it does not (the callee went past
    /// what the header allowed it, ignored the header, or ran beside another callee of this
    /// budget), the work is done already: each budget of the chain is charged as much of each
    /// counter as its own limit holds, so that an allowance the callee overran is used up (no retry
    /// is left to hand out again) and an ancestor with room left counts all of the work, each
    /// budget overrun is exhausted, this budget is cancelled, and the verdict of the all-at-once
    /// charge says which limit the callee went past.
    pub fn charge_usage(&self, usage: &Usage) -> Result<(), Verdict> {
        let snapshot = &self.node().snapshot;
        let charges: Vec<(crate::Counter, u64)> = usage
            .used
            .iter()
            .filter_map(|(name, n)| {
                let i = usage_counter(snapshot, name)?;
                Some((crate::Counter(u8::try_from(i).ok()?), *n))
            })
            .collect();
        if charges.is_empty() {
            return Ok(());
        }
        let refusal = match self.try_charge_many(&charges) {
            Ok(()) => return Ok(()),
            Err(v) => v,
        };
        // The work was done: every budget of the chain counts as much of it as it can hold, and
        // each one it overran is exhausted.
        for &(counter, n) in &charges {
            self.node().fill_chain(counter.index(), n);
        }
        self.cancel();
        Err(refusal)
    }

    /// What this budget has left, to pass to a callee in another process.
    ///
    /// Time left is reduced by the class's `child_margin` and rounded down to whole milliseconds, so the
    /// callee always gives up before the caller does. A cancelled budget (cancelled, exhausted or
    /// past its deadline) passes on nothing: no time and no allowance, which a callee's
    /// [`Engine::begin_propagated`] refuses, as [`child`](Self::child) is refused here.
    pub fn propagation(&self) -> Propagation {
        let node = self.node();
        let snapshot = &node.snapshot;
        let cancelled = self.check().is_err();
        let remaining = if cancelled {
            Some(Duration::ZERO)
        } else {
            self.deadline().map(|_| {
                let margin = node.rules().map_or(0, |r| r.child_margin);
                self.remaining()
                    .saturating_sub(Duration::from_nanos(margin))
            })
        };
        let allowances = snapshot
            .dims
            .dims
            .iter()
            .enumerate()
            .filter(|(i, _)| node.chain_limits(*i))
            .map(|(i, d)| {
                let left = if cancelled {
                    0
                } else {
                    node.chain_remaining(i)
                };
                (d.name.to_string(), left)
            })
            .collect();
        Propagation {
            request_id: Some(node.request_id),
            priority: Some(node.priority),
            remaining,
            allowances,
        }
    }

    /// [`propagation`](Self::propagation), encoded as a header value.
    pub fn to_header(&self) -> String {
        self.propagation().encode()
    }
}

impl Engine {
    /// Starts a budget for a request that arrived with a propagation header.
    ///
    /// The budget's limits are the class's tightened by the header (see the [module
    /// documentation](self)). Dimensions this policy does not know are ignored (and so not passed
    /// on by this budget's own header). The header's request id
    /// is used when present, `fallback_id` otherwise. A header with no time left is refused with
    /// [`Reason::InsufficientTime`](crate::Reason::InsufficientTime).
    pub fn begin_propagated(
        &self,
        class: Class,
        fallback_id: RequestId,
        propagation: &Propagation,
    ) -> Result<Budget, Verdict> {
        let id = propagation.request_id.unwrap_or(fallback_id);
        self.start_root(class, id, |snapshot| {
            Cow::Owned(propagation.overrides_in(snapshot))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: &str) -> HeaderErrorKind {
        Propagation::decode(v).unwrap_err().kind()
    }

    #[test]
    fn round_trip() {
        let p = Propagation {
            request_id: Some(RequestId::new("r-1").unwrap()),
            priority: Some(Priority::Sheddable),
            remaining: Some(Duration::from_millis(2100)),
            allowances: vec![("file_lookups".into(), 400), ("retries".into(), 0)],
        };
        let v = p.encode();
        assert_eq!(
            v,
            "cg1;id=r-1;pri=sheddable;t=2100;file_lookups=400;retries=0"
        );
        assert_eq!(Propagation::decode(&v), Ok(p));
        assert_eq!(Propagation::decode(" \tcg1 \t"), Ok(Propagation::default()));
    }

    #[test]
    fn the_longest_possible_header_decodes() {
        let p = Propagation {
            request_id: Some(RequestId::new(&"r".repeat(64)).unwrap()),
            priority: Some(Priority::Background),
            remaining: Some(Duration::from_millis(u64::MAX)),
            allowances: (0..crate::policy::MAX_DIMENSIONS)
                .map(|i| (format!("d{i:0>31}"), u64::MAX))
                .collect(),
        };
        let v = p.encode();
        assert!(v.len() <= MAX_HEADER_LEN, "{} bytes", v.len());
        assert_eq!(Propagation::decode(&v), Ok(p));
    }

    #[test]
    fn hostile_values_are_refused() {
        use HeaderErrorKind as K;
        assert_eq!(err(""), K::BadVersion);
        assert_eq!(err("cg2;t=1"), K::BadVersion);
        assert_eq!(err("CG1"), K::BadVersion);
        assert_eq!(err("cg1;"), K::BadField);
        assert_eq!(err("cg1;t"), K::BadField);
        assert_eq!(err("cg1;t=1;t=2"), K::DuplicateKey);
        assert_eq!(err("cg1;a=1;a=2"), K::DuplicateKey);
        assert_eq!(err("cg1;t=-1"), K::BadNumber);
        assert_eq!(err("cg1;t=+1"), K::BadNumber);
        assert_eq!(err("cg1;t=01"), K::BadNumber);
        assert_eq!(err("cg1;t=1.5"), K::BadNumber);
        assert_eq!(err("cg1;t=18446744073709551616"), K::BadNumber);
        assert_eq!(err("cg1;t="), K::BadNumber);
        assert_eq!(err("cg1;id=a b"), K::BadRequestId);
        assert_eq!(err("cg1;pri=urgent"), K::BadPriority);
        assert_eq!(err("cg1;Bad=1"), K::BadField);
        assert_eq!(err("cg1;a b=1"), K::BadField);
        assert_eq!(err("cg1; t=1"), K::BadField);
        assert_eq!(err(&format!("cg1;id={}", "x".repeat(4000))), K::TooLong);
        let many: String = (0..41).map(|i| format!(";d{i}=1")).collect();
        assert_eq!(err(&format!("cg1{many}")), K::TooManyFields);
        assert!(Propagation::decode("cg1;t=18446744073709551615").is_ok());
        let e = Propagation::decode("cg1;id=ok;t=x").unwrap_err();
        assert_eq!(e.offset(), 12);
        assert_eq!(
            e.to_string(),
            "malformed or out-of-range number in field `t` at byte 12"
        );
    }
}

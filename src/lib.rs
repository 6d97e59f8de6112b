//! # costguard
//!
//! An in-process request budget and admission control engine: it stops one expensive request, or one
//! broken dependency, from taking a whole service down.
//!
//! Every request gets a [`Budget`] over the dimensions its class declares (file-metadata lookups, DB
//! queries, bytes, nesting depth, retries, wall time, CPU time, ...). Work is charged *before* it runs;
//! a charge that would overrun the budget is refused with a [`Verdict`] that names the limit and says
//! whether retrying can help. Sub-requests draw from their parent's budget, with deadlines staggered so
//! inner timeouts always fire first, and budgets travel across process hops in a header that can only
//! tighten the callee's limits.
//!
//! ```
//! use costguard::clock::ManualClock;
//! use costguard::{Engine, Policy, Reason, RequestId};
//! use std::time::Duration;
//!
//! let policy = Policy::from_toml_str(r#"
//!     [dimensions]
//!     file_lookups = "counter"
//!     db_queries = "counter"
//!
//!     [classes.parse]
//!     wall_time = "30s"
//!     retries = 2
//!     limits = { file_lookups = 500, db_queries = 1000 }
//! "#).unwrap();
//! let clock = ManualClock::new();
//! let engine = Engine::builder(policy).clock(clock.clone()).build().unwrap();
//! let lookups = engine.counter("file_lookups").unwrap();
//! let db = engine.counter("db_queries").unwrap();
//! let parse = engine.class("parse").unwrap();
//!
//! let budget = engine.begin(parse, RequestId::new("edit-2015").unwrap()).unwrap();
//! let mut rendered = 0;
//! for _image in 0..10_000 {
//!     // One metadata lookup and one DB query per image, charged together before the work.
//!     if let Err(verdict) = budget.try_charge_many(&[(lookups, 1), (db, 1)]) {
//!         assert_eq!(verdict.reason(), Reason::LimitExceeded);
//!         assert_eq!(verdict.dimension(), Some("file_lookups"));
//!         break;
//!     }
//!     rendered += 1;
//! }
//! assert_eq!(rendered, 500);
//! assert!(budget.is_cancelled());
//!
//! clock.advance(Duration::from_secs(31));
//! assert!(budget.expired());
//! println!("{}", budget.report());
//! ```
//!
//! Before a request spends anything, [`Engine::try_admit`] decides whether it may start at all: a
//! concurrency limit per class (static or adaptive) of which lower priorities see less, per-key
//! limits in bounded memory, and shared pools of cost in flight. The [`Admitted`] grant carries the
//! request's budget and releases everything when dropped.
//!
//! ```
//! use costguard::clock::ManualClock;
//! use costguard::{AdmitRequest, Engine, Policy, Priority, Reason, RequestId};
//!
//! let policy = Policy::from_toml_str(r#"
//!     [classes.api]
//!     wall_time = "10s"
//!     [classes.api.admission]
//!     concurrency = 2
//!     per_key = { concurrency = 1 }
//! "#).unwrap();
//! let engine = Engine::builder(policy).clock(ManualClock::new()).build().unwrap();
//! let api = engine.class("api").unwrap();
//! let request = |n: u64, user: &'static [u8]| AdmitRequest::new(api, RequestId::from_u64(n)).key(user);
//!
//! let alice = engine.try_admit(&request(1, b"alice")).unwrap();
//! assert_eq!(engine.try_admit(&request(2, b"alice")).unwrap_err().reason(), Reason::KeyConcurrency);
//! let bob = engine.try_admit(&request(3, b"bob")).unwrap();
//! assert_eq!(engine.try_admit(&request(4, b"carol")).unwrap_err().reason(), Reason::ConcurrencyLimit);
//! drop((alice, bob));
//! assert!(engine.try_admit(&request(5, b"carol")).is_ok());
//! ```
//!
//! Every call a request makes to another service is an [`Attempt`] at a backend
//! ([`Engine::begin_attempt`]): bulkheads on calls and connection attempts, circuit breakers, host
//! ejection, timeouts derived from the request's remaining time, and retry decisions
//! ([`Engine::retry`]) bounded by the request tree's allowance and a per-backend retry budget.
//!
//! Modules: [`policy`] (what may be spent), [`Engine`] (the compiled, hot-reloadable policy),
//! [`admission`] (the door), [`budget`](mod@budget) (per-request accounting), [`backend`]
//! (dependency protection), [`header`] (budgets across process hops), [`clock`] (injected time),
//! [`Verdict`] (every refusal).

#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]
// `Verdict` is about 144 bytes, mostly the inline request id. Boxing it would allocate on the refusal
// path, which, like every charge path, must not allocate; the success path only writes a discriminant.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod backend;
pub mod budget;
pub mod clock;
mod engine;
mod handle;
pub mod header;
pub mod policy;
mod priority;
mod request_id;
mod sync;
mod text;
/// A tower layer that admits every request before the service runs it (feature `tower`).
#[cfg(feature = "tower")]
pub mod tower;
pub mod units;
mod verdict;

pub use admission::{AdmissionStats, AdmitRequest, Admitted, Outcome, RefusalEvent};
pub use backend::{Attempt, AttemptOutcome, CallError, RetryDecision};
pub use budget::{
    Budget, CancelReason, CpuMeter, LevelGuard, LimitReport, Overrides, Reservation,
    MAX_BUDGET_DEPTH,
};
pub use engine::{Engine, EngineBuilder, DEFAULT_COARSE_TICK};
pub use handle::{Backend, Class, Counter, Host, Level, NameError};
pub use header::{
    HeaderError, HeaderErrorKind, Propagation, Usage, HEADER_NAME, USAGE_HEADER_NAME,
};
pub use policy::{Policy, PolicyError};
pub use priority::{Priority, UnknownPriority};
pub use request_id::{RequestId, RequestIdError, MAX_REQUEST_ID_LEN};
pub use verdict::{Reason, Retry, Unit, Verdict};

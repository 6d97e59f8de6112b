//! `commons-2015`: the Commons gallery outage of 23 April 2015, replayed.
//!
//! A spider edits user sub-pages that each hold a gallery of over 10,000 images. Every edit enqueues
//! two parse jobs; one goes through RESTBase, which retries a failed or slow parse up to 5 times, the
//! other straight to Parsoid. Parsoid parses a gallery by sending the MediaWiki API many batches of
//! images in parallel and retries each timed-out batch up to 8 times; the API looks up the metadata of
//! every image, one database query each, on a fixed pool of HHVM threads with no wall-time limit.
//! Ordinary users' API requests share those threads and that database.
//!
//! Unguarded, the storm reproduces: the database queue grows, API calls outlive Parsoid's timeout,
//! Parsoid and RESTBase send them again while the originals still hold their threads, and the pool is
//! exhausted in waves. Guarded, every tier admits at its door, every parse charges the lookups of a
//! batch before sending it, the budget travels down in the `costguard-budget` header, what each
//! parse used comes back with its answer in the `costguard-usage` header and is charged to the job's
//! budget, and the retries of the whole tree come from one allowance.
//!
//! The figures from the incident report are the constants below; the capacities (threads, database
//! speed, ordinary traffic) are sized so that one simulated hour replays in well under a second.

mod api;
mod model;
mod parsoid;

use super::{Run, Spec};
use crate::sim::guard::Needs;
use crate::sim::{MINUTE, MS, SECOND};
use crate::ScenarioInfo;
use costguard::Policy;

/// The scenario's name.
pub const NAME: &str = "commons-2015";
/// The policy the guarded run uses by default.
pub const POLICY: &str = include_str!("../../../scenarios/commons-2015.toml");

/// Simulated length of a run.
pub const DURATION: u64 = 60 * MINUTE;
/// The first edit to a gallery page: the fault's start.
pub const FAULT_AT: u64 = 2 * MINUTE;
/// Gallery pages the spider edits ("a set of user sub-pages").
pub const PAGES: u64 = 24;
/// The fewest images in a gallery ("over 10,000 images").
pub const IMAGES_MIN: u64 = 10_000;
/// The most images in a gallery.
pub const IMAGES_MAX: u64 = 12_000;
/// Spider passes over the pages.
pub const PASSES: u64 = 3;
/// Time between the spider's edits within a pass.
pub const EDIT_GAP: u64 = 10 * SECOND;
/// Time between the starts of two passes.
pub const PASS_GAP: u64 = 20 * MINUTE;
/// Parse jobs per edit: one to populate RESTBase, one the Parsoid Varnish cache.
pub const PARSE_JOBS_PER_EDIT: u64 = 2;
/// Delay of the job queue before a parse job starts, at most.
pub const JOB_DELAY_MAX: u64 = 5 * SECOND;
/// Times RESTBase retries a failed or timed-out parse (the first job).
pub const RESTBASE_RETRIES: u32 = 5;
/// Times the job runner retries the other job's parse.
pub const JOB_RUNNER_RETRIES: u32 = 0;
/// How long RESTBase (and the job runner) wait for a parse before trying again.
pub const RESTBASE_TIMEOUT: u64 = 5 * MINUTE;
/// Times Parsoid retries an API request that timed out or failed.
pub const PARSOID_RETRIES: u32 = 8;
/// Parsoid's constant timeout on an API request.
pub const PARSOID_API_TIMEOUT: u64 = 60 * SECOND;
/// Images per API request Parsoid sends (each needs one file-metadata lookup).
pub const IMAGES_PER_CALL: u64 = 50;
/// API requests one parse has in flight at once ("numerous and highly parallel").
pub const PARSOID_PARALLEL: u64 = 100;
/// HHVM threads of the API tier (the tier under study).
pub const API_THREADS: u64 = 600;
/// Requests the API tier's listen backlog holds when every thread is busy; past it, 503.
pub const API_BACKLOG: usize = 2_000;
/// Time an API request spends outside the database (PHP, parsing, rendering).
pub const API_CPU: u64 = 30 * MS;
/// Queries the database runs at once.
pub const DB_SLOTS: u64 = 16;
/// A file-metadata query (LocalFile::loadFromDB; these img_metadata queries were heavy, T96360).
pub const LOOKUP_QUERY: u64 = 20 * MS;
/// An ordinary query.
pub const ORDINARY_QUERY: u64 = 2 * MS;
/// Queries per ordinary API request.
pub const ORDINARY_QUERIES: u64 = 4;
/// Ordinary API requests per second from other users.
pub const ORDINARY_RATE: u64 = 50;
/// How long an ordinary user (through Varnish) waits for an API response.
pub const ORDINARY_TIMEOUT: u64 = 10 * SECOND;
/// Guarded: queries an API request runs between two checks of its budget.
pub const GUARDED_CHUNK: u64 = 10;

/// The classes, counters and backends the guarded run uses.
pub const NEEDS: Needs<'static> = Needs {
    classes: &["restbase", "parse", "api"],
    counters: &["file_lookups", "db_queries"],
    backends: &[("parsoid", &[]), ("api", &[]), ("db", &[])],
};

/// The scenario.
pub const SPEC: Spec = Spec {
    info: ScenarioInfo {
        name: NAME,
        summary: "2015 Commons galleries: RESTBase retries 5x, Parsoid 8x, one DB query per image",
        incident: true,
    },
    policy: POLICY,
    duration: DURATION,
    fault_at: FAULT_AT,
    needs: &NEEDS,
    run,
};

/// The most requests (RESTBase, Parsoid and API, every retry included) one edit can generate under
/// `policy`: each parse job's tree may make `1 + retries` parse attempts, and each parse charges
/// `IMAGES_PER_CALL` lookups before every API request it sends, first tries and retries alike, so a
/// parse sends at most `file_lookups / IMAGES_PER_CALL` of them. `None` when the policy sets no such
/// limit.
pub fn amplification_allowed(policy: &Policy) -> Option<f64> {
    let restbase = policy.class("restbase")?;
    let parse = policy.class("parse")?;
    let retries = restbase.retries()?;
    let lookups = match (restbase.limit("file_lookups"), parse.limit("file_lookups")) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let calls = lookups / IMAGES_PER_CALL;
    let per_job = 1u64.saturating_add(
        retries
            .saturating_add(1)
            .saturating_mul(calls.saturating_add(1)),
    );
    Some((PARSE_JOBS_PER_EDIT.saturating_mul(per_job)) as f64)
}

fn run(run: Run<'_>) -> Result<crate::RunReport, crate::ReplayError> {
    Ok(model::Model::new(run)?.run())
}

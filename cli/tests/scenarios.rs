//! The replays prove what they claim: unguarded, each incident reproduces; guarded by the real engine,
//! it does not. Thresholds come from the scenarios' constants and the policies, not from a recorded run.

use costguard::Policy;
use costguard_cli::scenario::{commons, kafka, retry_storm};
use costguard_cli::{default_policy, replay, scenarios, Comparison, ReplayError, ReplayOptions};
use std::sync::OnceLock;

fn run(name: &str, seed: u64) -> Comparison {
    let options = ReplayOptions { seed, policy: None };
    let mut last = 0.0;
    let c = replay(name, &options, &mut |f| {
        assert!(
            (0.0..=1.0).contains(&f) && f >= last,
            "progress {f} after {last}"
        );
        last = f;
    })
    .unwrap();
    assert_eq!(last, 1.0, "progress ends at 1");
    c
}

fn cached(name: &'static str) -> &'static Comparison {
    static COMMONS: OnceLock<Comparison> = OnceLock::new();
    static KAFKA: OnceLock<Comparison> = OnceLock::new();
    static STORM: OnceLock<Comparison> = OnceLock::new();
    let cell = match name {
        commons::NAME => &COMMONS,
        kafka::NAME => &KAFKA,
        _ => &STORM,
    };
    cell.get_or_init(|| run(name, ReplayOptions::default().seed))
}

fn policy(name: &str) -> Policy {
    Policy::from_toml_str(default_policy(name).unwrap()).unwrap()
}

/// What the request tree's allowance permits per edit, worked out here from the policy and the
/// scenario's figures: per parse job, one outer request, `1 + retries` parse attempts, and per parse
/// as many API requests as `file_lookups` covers batches of `IMAGES_PER_CALL`.
fn commons_allowance() -> f64 {
    let p = policy(commons::NAME);
    let retries = p.class("restbase").unwrap().retries().unwrap();
    let lookups = p.class("parse").unwrap().limit("file_lookups").unwrap();
    let lookups = lookups.min(
        p.class("restbase")
            .unwrap()
            .limit("file_lookups")
            .unwrap_or(u64::MAX),
    );
    let per_job = 1 + (1 + retries) * (1 + lookups / commons::IMAGES_PER_CALL);
    (commons::PARSE_JOBS_PER_EDIT * per_job) as f64
}

fn assert_guarded_commons(c: &Comparison) {
    let g = &c.guarded;
    let allowed = commons_allowance();
    assert_eq!(g.amplification_allowed, Some(allowed));
    assert!(
        g.amplification <= allowed,
        "guarded amplification {} above the tree's allowance {allowed}",
        g.amplification
    );
    assert!(g.amplification >= 1.0);
    assert!(
        g.goodput_unaffected >= 0.95,
        "goodput {}",
        g.goodput_unaffected
    );
    assert!(g.max_threads_busy < g.threads, "guarded threads exhausted");
    // The parse's lookup allowance is what stopped each gallery: every parse is cut short, having
    // rendered exactly its allowance (whole batches of images; galleries are larger), and the rest
    // of its images are placeholders, not failures.
    assert!(g.refusals.get("limit_exceeded").copied().unwrap_or(0) >= g.originals);
    assert!(g.recovery_seconds.is_some());
    let tally = |name: &str| g.counts.get(name).copied().unwrap_or(0);
    let p = policy(commons::NAME);
    let lookups = p.class("parse").unwrap().limit("file_lookups").unwrap();
    let per_parse = lookups / commons::IMAGES_PER_CALL * commons::IMAGES_PER_CALL;
    let parses = tally("parses_cut_short");
    assert!(parses > 0);
    assert_eq!(tally("parses_failed") + tally("parses_completed"), 0);
    assert_eq!(tally("images_rendered"), parses * per_parse);
    assert!(tally("images_as_placeholders") > tally("images_rendered"));
    assert!(g.degraded_seconds <= g.recovery_seconds.unwrap());
}

#[test]
fn commons_2015_unguarded_reproduces_the_storm() {
    let u = &cached(commons::NAME).unguarded;
    let allowed = commons_allowance();
    // A large amplification: far beyond anything the guarded tree may do, and the same order as the
    // incident's half a million API requests.
    assert!(
        u.amplification > 10.0 * allowed,
        "amplification {}",
        u.amplification
    );
    assert!(u.generated > 100_000, "generated {}", u.generated);
    assert_eq!(
        u.max_threads_busy,
        commons::API_THREADS,
        "threads not exhausted"
    );
    assert_eq!(u.threads, commons::API_THREADS);
    assert!(
        u.max_threads_stuck > commons::API_THREADS / 2,
        "stuck {}",
        u.max_threads_stuck
    );
    assert!(
        u.peak_db_queue > commons::DB_SLOTS,
        "peak queue {}",
        u.peak_db_queue
    );
    assert!(
        u.goodput_unaffected < 0.95,
        "goodput {}",
        u.goodput_unaffected
    );
    assert!(u.errors_per_minute.iter().any(|&e| e > 1_000));
    assert!(u.recovery_seconds.unwrap_or(f64::MAX) > 60.0);
    assert!(u.refusals.is_empty() && u.amplification_allowed.is_none());
    // Three waves of errors, one per pass of the spider, with quiet minutes between them.
    let waves = u
        .errors_per_minute
        .windows(2)
        .filter(|w| w[0] == 0 && w[1] > 0)
        .count();
    assert_eq!(waves as u64, commons::PASSES, "{:?}", u.errors_per_minute);
}

#[test]
fn commons_2015_guarded_stays_within_the_allowance() {
    let c = cached(commons::NAME);
    assert_guarded_commons(c);
    assert!(c.guarded.db_queries < c.unguarded.db_queries);
    assert!(c.guarded.peak_db_queue < c.unguarded.peak_db_queue);
    assert_eq!(c.guarded.recovery_seconds, Some(0.0));
}

fn assert_guarded_kafka(c: &Comparison) {
    let g = &c.guarded;
    let p = policy(kafka::NAME);
    // Requests and connects per request stay within the request's retry allowance.
    let retries = p.class("app").unwrap().retries().unwrap();
    let allowed = (2 + retries) as f64;
    assert_eq!(g.amplification_allowed, Some(allowed));
    assert!(
        g.amplification <= allowed,
        "amplification {}",
        g.amplification
    );
    let (_, per_host) = p.backend("kafka").unwrap().max_connecting();
    // No more threads than the connect cap wait on the dead broker, on any server.
    assert!(
        g.max_threads_stuck >= 1,
        "nothing ever waited on the dead broker"
    );
    assert!(
        g.max_threads_stuck <= kafka::SERVERS as u64 * u64::from(per_host),
        "stuck {}",
        g.max_threads_stuck
    );
    assert!(
        g.goodput_unaffected >= 0.95,
        "goodput {}",
        g.goodput_unaffected
    );
    assert!(g.max_threads_busy < g.threads);
    // Ejected and readmitted by the engine, without any configuration change.
    let dead = kafka::BROKERS[kafka::DEAD];
    let fault = kafka::FAULT_AT as f64 / 1e9;
    let back = kafka::BROKER_BACK_AT as f64 / 1e9;
    let at = |what: &str| -> Vec<f64> {
        g.events
            .iter()
            .filter(|e| e.what.contains(dead) && e.what.ends_with(what))
            .map(|e| e.at_seconds)
            .collect()
    };
    let ejected = at("ejected");
    let readmitted = at("readmitted on probation");
    assert!(
        ejected
            .first()
            .is_some_and(|&t| t >= fault && t < fault + 10.0),
        "{ejected:?}"
    );
    assert!(readmitted.iter().any(|&t| t >= back), "{readmitted:?}");
    assert!(!g.events.iter().any(|e| e.what.contains("by hand")));
    let key = format!("{dead}_delivered_after_return");
    assert!(
        g.counts.get(&key).copied().unwrap_or(0) > 0,
        "{:?}",
        g.counts
    );
}

/// Parsoid answers across a process hop, so what a parse looked up comes back with its answer and is
/// charged to the job's budget; a retried parse then has only what the earlier attempts left. With
/// the API tier squeezed to 40 threads, parses fail part way and RESTBase retries them.
#[test]
fn a_retried_parse_has_only_what_earlier_attempts_left() {
    let toml = default_policy(commons::NAME).unwrap();
    let squeezed = toml.replace("concurrency = 600", "concurrency = 40");
    assert_ne!(
        squeezed, toml,
        "the API class's concurrency is where the test expects it"
    );
    let options = ReplayOptions {
        seed: ReplayOptions::default().seed,
        policy: Some(Policy::from_toml_str(&squeezed).unwrap()),
    };
    let c = replay(commons::NAME, &options, &mut |_| {}).unwrap();
    let tally = |name: &str| c.guarded.counts.get(name).copied().unwrap_or(0);
    assert!(
        tally("jobs_retried") > 0,
        "no job was retried: {:?}",
        c.guarded.counts
    );
    assert!(tally("parses_failed") > 0, "{:?}", c.guarded.counts);
    assert_eq!(
        tally("jobs_past_their_lookup_allowance"),
        0,
        "{:?}",
        c.guarded.counts
    );
}

/// In commons-2015 costguard only takes retries away (in kafka-2016 it also lets the app try
/// another broker, which the unguarded app cannot): under a policy whose retry allowance exceeds
/// what a tier would retry on its own (the job runner retries nothing; the file-lookup allowance
/// is raised so that parses fail and jobs are retried), no job and no batch is tried more often
/// than its tier's own count allows.
#[test]
fn no_tier_retries_more_than_its_own_count() {
    let toml = default_policy(commons::NAME).unwrap();
    let generous = toml.replace(
        "limits = { file_lookups = 1000 }",
        "limits = { file_lookups = 12000 }",
    );
    assert_eq!(generous.matches("file_lookups = 12000").count(), 2);
    let options = ReplayOptions {
        seed: ReplayOptions::default().seed,
        policy: Some(Policy::from_toml_str(&generous).unwrap()),
    };
    let c = replay(commons::NAME, &options, &mut |_| {}).unwrap();
    for run in [&c.unguarded, &c.guarded] {
        let tally = |name: &str| run.counts.get(name).copied().unwrap_or(0);
        assert!(tally("jobs_retried") > 0, "{:?}", run.counts);
        assert_eq!(
            tally("tries_past_a_tiers_own_retries"),
            0,
            "{:?}",
            run.counts
        );
    }
}

/// Commons guarded by its own policy with the API's per-request file-lookup limit set to `per_request`
/// (below the batch of `IMAGES_PER_CALL` Parsoid sends).
fn commons_with_api_lookups(per_request: u64) -> Comparison {
    let toml = default_policy(commons::NAME).unwrap();
    let squeezed = toml.replace(
        "limits = { file_lookups = 500, db_queries = 600 }",
        &format!("limits = {{ file_lookups = {per_request}, db_queries = 600 }}"),
    );
    assert_ne!(
        squeezed, toml,
        "the API class's limits are where the test expects them"
    );
    let options = ReplayOptions {
        seed: ReplayOptions::default().seed,
        policy: Some(Policy::from_toml_str(&squeezed).unwrap()),
    };
    replay(commons::NAME, &options, &mut |_| {}).unwrap()
}

/// The API answers a request that reached its lookup limit with 200 and partial results: only the
/// images it looked up render, the rest of the batch become placeholders, and every such answer is
/// counted as cut short, whether the limit fell at the end of a chunk of queries (10) or inside one
/// (25).
#[test]
fn an_api_request_cut_short_renders_only_what_it_looked_up() {
    let p = policy(commons::NAME);
    let parse_lookups = p.class("parse").unwrap().limit("file_lookups").unwrap();
    let batches_per_parse = parse_lookups / commons::IMAGES_PER_CALL;
    for per_request in [commons::GUARDED_CHUNK, 25] {
        assert!(per_request < commons::IMAGES_PER_CALL);
        let c = commons_with_api_lookups(per_request);
        let tally = |name: &str| c.guarded.counts.get(name).copied().unwrap_or(0);
        let parses = tally("parses_cut_short");
        assert!(parses > 0, "{:?}", c.guarded.counts);
        assert_eq!(tally("parses_failed") + tally("parses_completed"), 0);
        let batches = parses * batches_per_parse;
        assert_eq!(
            tally("api_requests_cut_short"),
            batches,
            "limit {per_request}: {:?}",
            c.guarded.counts
        );
        assert_eq!(
            tally("images_rendered"),
            batches * per_request,
            "limit {per_request}: {:?}",
            c.guarded.counts
        );
    }
}

#[test]
fn kafka_2016_unguarded_exhausts_the_threads() {
    let u = &cached(kafka::NAME).unguarded;
    assert_eq!(u.threads, kafka::THREADS * kafka::SERVERS as u64);
    assert_eq!(u.max_threads_busy, u.threads);
    assert_eq!(
        u.max_threads_stuck, u.threads,
        "every thread stuck in connect()"
    );
    assert!(
        u.goodput_unaffected < 0.5,
        "goodput {}",
        u.goodput_unaffected
    );
    // It recovers only after the manual depool.
    let depool = (kafka::DEPOOL_AT - kafka::FAULT_AT) as f64 / 1e9;
    let recovery = u.recovery_seconds.expect("recovers after the depool");
    assert!(
        recovery >= depool,
        "recovery {recovery} before the depool at {depool}"
    );
    assert!(u.events.iter().any(|e| e.what.contains("by hand")));
}

#[test]
fn kafka_2016_guarded_caps_connects_and_ejects_the_broker() {
    let c = cached(kafka::NAME);
    assert_guarded_kafka(c);
    assert!(c.guarded.recovery_seconds.unwrap_or(f64::MAX) < 60.0);
}

/// Only what is sent counts as generated: a log event the engine refuses before any connect (here,
/// every one, since a request's 1ns wall time leaves no time for an attempt) is no request to
/// Kafka, so the guarded run generates the original requests and nothing more.
/// The bound is exact: with no retries each request may make its original and one connect, and
/// the guarded run stays at or under twice its originals. (A request that arrived before the fault
/// and connected after it once counted a connect but no original, three requests over.)
#[test]
fn kafka_2016_without_retries_stays_within_two_requests_per_original() {
    let toml = default_policy(kafka::NAME).unwrap();
    let strict = toml.replace("retries      = 1", "retries      = 0");
    assert_ne!(
        strict, toml,
        "the app class's retries are where the test expects them"
    );
    let options = ReplayOptions {
        seed: ReplayOptions::default().seed,
        policy: Some(Policy::from_toml_str(&strict).unwrap()),
    };
    let g = replay(kafka::NAME, &options, &mut |_| {}).unwrap().guarded;
    assert_eq!(g.amplification_allowed, Some(2.0));
    assert!(g.amplification <= 2.0, "amplification {}", g.amplification);
}

#[test]
fn kafka_2016_log_events_refused_before_a_connect_generate_nothing() {
    let toml = default_policy(kafka::NAME).unwrap();
    let instant = toml.replace("wall_time    = \"10s\"", "wall_time    = \"1ns\"");
    assert_ne!(
        instant, toml,
        "the app class's wall time is where the test expects it"
    );
    let options = ReplayOptions {
        seed: ReplayOptions::default().seed,
        policy: Some(Policy::from_toml_str(&instant).unwrap()),
    };
    let c = replay(kafka::NAME, &options, &mut |_| {}).unwrap();
    let g = &c.guarded;
    assert_eq!(g.counts.get("log_events_delivered"), None, "{:?}", g.counts);
    assert!(g.counts.get("log_events_dropped").copied().unwrap_or(0) > 0);
    assert!(g.originals > 0);
    assert_eq!(g.generated, g.originals);
}

fn assert_guarded_storm(c: &Comparison) {
    let g = &c.guarded;
    let retries = policy(retry_storm::NAME)
        .class("app")
        .unwrap()
        .retries()
        .unwrap();
    let allowed = ((1 + u64::from(retry_storm::USER_RETRIES)) * (2 + retries)) as f64;
    assert_eq!(g.amplification_allowed, Some(allowed));
    assert!(
        g.amplification <= allowed,
        "amplification {}",
        g.amplification
    );
    // Back to normal within a minute of the backend's recovery.
    let slow = retry_storm::SLOW_FOR as f64 / 1e9;
    let recovery = g.recovery_seconds.expect("the guarded run recovers");
    assert!(recovery <= slow + 60.0, "recovery {recovery}");
    assert!(
        g.refusals.get("circuit_open").copied().unwrap_or(0) > 0,
        "{:?}",
        g.refusals
    );
    assert!(g.max_threads_busy < g.threads);
}

#[test]
fn retry_storm_outlives_its_cause_unless_guarded() {
    let c = cached(retry_storm::NAME);
    assert_guarded_storm(c);
    let (u, g) = (&c.unguarded, &c.guarded);
    // Unguarded, the backend is still saturated long after it is fast again: metastable.
    let slow = retry_storm::SLOW_FOR as f64 / 1e9;
    assert!(
        u.recovery_seconds.is_none_or(|r| r > slow + 300.0),
        "{:?}",
        u.recovery_seconds
    );
    assert!(
        u.amplification > g.amplification_allowed.unwrap_or(0.0),
        "{}",
        u.amplification
    );
    assert!(u.goodput_unaffected + 0.2 < g.goodput_unaffected);
    let tail = &u.errors_per_minute[u.errors_per_minute.len() - 3..];
    assert!(tail.iter().all(|&e| e > 1_000), "{tail:?}");
    assert!(g.errors_per_minute[g.errors_per_minute.len() - 3..]
        .iter()
        .all(|&e| e == 0));
}

#[test]
fn the_same_seed_gives_the_same_result_byte_for_byte() {
    for name in [commons::NAME, kafka::NAME, retry_storm::NAME] {
        let again = run(name, ReplayOptions::default().seed);
        let first = serde_json::to_string(cached(name)).unwrap();
        assert_eq!(first, serde_json::to_string(&again).unwrap(), "{name}");
    }
}

#[test]
fn another_seed_still_satisfies_the_guarded_assertions() {
    let c = run(commons::NAME, 7);
    assert_guarded_commons(&c);
    assert_ne!(
        c.unguarded,
        cached(commons::NAME).unguarded,
        "the seed changes the traffic"
    );
    let c = run(kafka::NAME, 7);
    assert_guarded_kafka(&c);
    let c = run(retry_storm::NAME, 7);
    assert_guarded_storm(&c);
}

#[test]
fn a_policy_that_lacks_what_the_scenario_needs_is_refused_by_name() {
    let thin = Policy::from_toml_str(
        r#"
        [dimensions]
        db_queries = "level"
        [classes.api]
        wall_time = "10s"
        [backends.parsoid]
        timeout = "1s"
        "#,
    )
    .unwrap();
    let options = ReplayOptions {
        seed: 1,
        policy: Some(thin.clone()),
    };
    let err = replay(commons::NAME, &options, &mut |_| {}).unwrap_err();
    let ReplayError::Policy(why) = &err else {
        panic!("{err}");
    };
    for missing in [
        "class `restbase`",
        "class `parse`",
        "counter `file_lookups`",
        "counter `db_queries` (declared as a level)",
        "backend `api`",
        "backend `db`",
    ] {
        assert!(why.contains(missing), "{why} does not name {missing}");
    }
    assert!(
        !why.contains("class `api`") && !why.contains("backend `parsoid`"),
        "{why}"
    );
    let options = ReplayOptions {
        seed: 1,
        policy: Some(thin),
    };
    let err = replay(kafka::NAME, &options, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("class `app`") && err.to_string().contains("backend `kafka`"),
        "{err}"
    );
    // A kafka backend without the cluster's brokers is named host by host.
    let mut toml = default_policy(kafka::NAME)
        .unwrap()
        .replace("\"kafka1013:9092\", ", "");
    toml.push('\n');
    let options = ReplayOptions {
        seed: 1,
        policy: Some(Policy::from_toml_str(&toml).unwrap()),
    };
    let err = replay(kafka::NAME, &options, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("host `kafka1013:9092` of backend `kafka`"),
        "{err}"
    );
}

#[test]
fn scenarios_are_listed_with_policies_that_parse() {
    let all = scenarios();
    let names: Vec<_> = all.iter().map(|s| s.name).collect();
    assert_eq!(names, [commons::NAME, kafka::NAME, retry_storm::NAME]);
    assert_eq!(all.iter().filter(|s| s.incident).count(), 2);
    for s in all {
        Policy::from_toml_str(default_policy(s.name).unwrap()).unwrap();
        assert!(!s.summary.is_empty());
    }
    assert!(matches!(
        default_policy("nope"),
        Err(ReplayError::UnknownScenario(n)) if n == "nope"
    ));
    assert!(matches!(
        replay("nope", &ReplayOptions::default(), &mut |_| {}),
        Err(ReplayError::UnknownScenario(_))
    ));
}

#[test]
fn series_cover_the_run() {
    for name in [commons::NAME, kafka::NAME] {
        let c = cached(name);
        for r in [&c.unguarded, &c.guarded] {
            assert_eq!(
                r.errors_per_minute.len() as u64,
                c.duration_seconds.div_ceil(60)
            );
            assert_eq!(r.threads_busy.len(), r.threads_stuck.len());
            assert_eq!(
                r.threads_busy.len() as u64,
                c.duration_seconds / r.sample_seconds + 1
            );
            assert!(r.threads_busy.iter().all(|&b| b <= r.threads));
            assert!(r
                .threads_stuck
                .iter()
                .zip(&r.threads_busy)
                .all(|(s, b)| s <= b));
            assert!((0.0..=1.0).contains(&r.goodput_unaffected));
            assert!(r
                .events
                .windows(2)
                .all(|w| w[0].at_seconds <= w[1].at_seconds));
        }
    }
}

#[test]
fn both_runs_of_every_scenario_see_the_same_traffic() {
    for s in scenarios() {
        let c = cached(s.name);
        assert_eq!(
            c.unguarded.originals, c.guarded.originals,
            "{}: originals",
            s.name
        );
        assert_eq!(
            c.unguarded.counts.get("unaffected_requests"),
            c.guarded.counts.get("unaffected_requests"),
            "{}: ordinary requests",
            s.name
        );
    }
}

#[test]
fn allowances_saturate_for_the_largest_retry_allowance() {
    // A policy may allow u64::MAX retries; the bound the table prints is then as large as it gets,
    // never an overflow (a panic in debug builds, a wrapped small bound in release ones).
    let huge = |name: &str| {
        let text = default_policy(name).expect("a built-in scenario");
        let text = text.replacen("retries      = 1", "retries      = 18446744073709551615", 1);
        Policy::from_toml_str(&text).expect("still a valid policy")
    };
    let commons = commons::amplification_allowed(&huge(commons::NAME)).unwrap();
    assert!(commons >= u64::MAX as f64, "{commons}");
    let storm = retry_storm::amplification_allowed(&huge(retry_storm::NAME)).unwrap();
    assert!(storm >= u64::MAX as f64, "{storm}");
}

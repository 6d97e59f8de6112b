//! A gallery parse guarded by a budget: the 2015 Commons edit, replayed in miniature.
//!
//! A page edit is parsed. Each `<gallery>` asks an API tier (another process, reached with the budget in
//! a propagation header) for the metadata of every image: one file lookup and one DB query per image.
//! Unguarded, a 10,000-image gallery means 10,000 lookups and queries per parse, retried by every layer.
//! Guarded, the gallery's size is reserved before the first lookup and refused at once, the API inherits
//! what the parse has left instead of fresh limits, and the limit report says exactly what happened.
//!
//! Time is simulated with a manual clock (2 ms per DB query), so the output is the same on every run.
//!
//! ```text
//! cargo run --example gallery [-- POLICY.toml]
//! ```

use costguard::clock::ManualClock;
use costguard::{Budget, Counter, Engine, Policy, Propagation, RequestId, Verdict};
use std::time::Duration;

/// The default policy, the same file the README shows.
const DEFAULT_POLICY: &str = include_str!("policy.toml");
/// Simulated cost of one file-metadata DB query.
const QUERY_TIME: Duration = Duration::from_millis(2);

struct Handles {
    lookups: Counter,
    db: Counter,
    images: Counter,
}

/// The API tier: looks up metadata for `images` images under a budget inherited through a header.
/// Returns how many it looked up, and the verdict that stopped it early, if any.
fn api_imageinfo(
    engine: &Engine,
    clock: &ManualClock,
    h: &Handles,
    header: &str,
    images: u64,
) -> (Budget, u64, Option<Verdict>) {
    let api = engine.class("api").expect("policy has an api class");
    let fallback = RequestId::new("api-local").expect("valid id");
    let budget = match Propagation::decode(header) {
        Ok(prop) => engine.begin_propagated(api, fallback, &prop),
        // A malformed header is dropped: the API's own policy still applies, never a looser one.
        Err(_) => engine.begin(api, fallback),
    }
    .expect("api budget");
    let mut done = 0;
    for _ in 0..images {
        if let Err(v) = budget.check() {
            return (budget, done, Some(v));
        }
        // One lookup and its DB query, charged together before the query runs.
        if let Err(v) = budget.try_charge_many(&[(h.lookups, 1), (h.db, 1)]) {
            return (budget, done, Some(v));
        }
        clock.advance(QUERY_TIME);
        done += 1;
    }
    (budget, done, None)
}

fn main() {
    let policy = match std::env::args().nth(1) {
        Some(path) => Policy::from_toml_file(&path),
        None => Policy::from_toml_str(DEFAULT_POLICY),
    };
    let policy = policy.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2);
        });
    let counter = |name: &str| {
        engine.counter(name).unwrap_or_else(|e| {
            eprintln!("the policy must declare the counter `{name}`: {e}");
            std::process::exit(2);
        })
    };
    let h = Handles {
        lookups: counter("file_lookups"),
        db: counter("db_queries"),
        images: counter("gallery_images"),
    };
    let parse = engine
        .begin_by_name(
            "parse",
            RequestId::new("edit-20150423-0340").expect("valid id"),
        )
        .unwrap_or_else(|v| {
            eprintln!("{v}");
            std::process::exit(2);
        });

    println!("Parsing User:Example/Galleries (three <gallery> tags)\n");
    let galleries = [
        ("recent uploads", 40u64),
        ("all of April", 10_000),
        ("Djvu scans", 600),
    ];
    let mut unguarded_lookups = 0;
    let mut guarded_lookups = 0;
    for (name, images) in galleries {
        unguarded_lookups += images;
        print!("  gallery {name:?} ({images} images): ");
        // The image count is known before any lookup: reserve it.
        let reservation = match parse.reserve(h.images, images) {
            Ok(r) => r,
            Err(v) => {
                println!("refused before any lookup\n    {v}");
                continue;
            }
        };
        // The API call; one simulated timeout is retried if the tree's retry allowance permits.
        let mut header = parse.to_header();
        if name == "recent uploads" {
            clock.advance(Duration::from_secs(1));
            match parse.try_retry() {
                Ok(()) => header = parse.to_header(),
                Err(v) => println!("not retried: {v}"),
            }
        }
        let (api_budget, done, stopped) = api_imageinfo(&engine, &clock, &h, &header, images);
        // The API's usage comes back with its response and is charged to the parse.
        let spent = [
            (h.lookups, api_budget.used(h.lookups)),
            (h.db, api_budget.used(h.db)),
        ];
        if let Err(v) = parse.try_charge_many(&spent) {
            println!("\n    usage not accounted: {v}");
        }
        guarded_lookups += done;
        // Settle the reservation to the images actually rendered.
        let _ = reservation.settle(done);
        match stopped {
            None => println!("rendered all {done}"),
            Some(v) => println!("rendered {done}, then stopped\n    {v}"),
        }
    }

    println!("\n{}", parse.report());
    println!("JSON: {}", parse.report().to_json());
    println!(
        "\nFile lookups for this edit: {guarded_lookups} guarded, {unguarded_lookups} unguarded \
         (before Parsoid's 8 and RESTBase's 5 retries multiplied them)."
    );
}

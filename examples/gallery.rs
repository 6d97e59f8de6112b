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

// A `Verdict` is large (it carries the request id inline); returning it by value costs a copy
// only on refusals, which is fine here, as in the library.
#![allow(clippy::result_large_err)]

use costguard::clock::ManualClock;
use costguard::{
    AdmitRequest, Admitted, Counter, Engine, Outcome, Policy, Propagation, RequestId, Verdict,
};
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

/// The API tier: admits the call (its budget tightened by the caller's header), then looks up
/// metadata for `images` images. Returns the grant, how many it looked up, and the verdict that
/// stopped it early, if any.
fn api_imageinfo(
    engine: &Engine,
    clock: &ManualClock,
    h: &Handles,
    header: &str,
    images: u64,
) -> Result<(Admitted, u64, Option<Verdict>), Verdict> {
    let api = engine.class("api").expect("policy has an api class");
    // A malformed header is dropped: the API's own policy still applies, never a looser one.
    let prop = Propagation::decode(header).unwrap_or_default();
    let overrides = prop.overrides(engine);
    let id = prop
        .request_id()
        .unwrap_or_else(|| RequestId::new("api-local").expect("valid id"));
    let admitted = engine.try_admit(
        &AdmitRequest::new(api, id)
            .key(b"client:parsoid")
            .estimate(h.db, images.min(500))
            .overrides(&overrides),
    )?;
    let budget = admitted.budget();
    let mut done = 0;
    for _ in 0..images {
        if let Err(v) = budget.check() {
            return Ok((admitted, done, Some(v)));
        }
        // One lookup and its DB query, charged together before the query runs.
        if let Err(v) = budget.try_charge_many(&[(h.lookups, 1), (h.db, 1)]) {
            return Ok((admitted, done, Some(v)));
        }
        clock.advance(QUERY_TIME);
        done += 1;
    }
    Ok((admitted, done, None))
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
    // The edit's parse passes admission first: the parse class's concurrency limit, the editor's
    // per-user share, and the shared pool of DB queries in flight.
    let parse_class = engine.class("parse").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let edit = RequestId::new("edit-20150423-0340").expect("valid id");
    let admitted = engine
        .try_admit(&AdmitRequest::new(parse_class, edit).key(b"user:Example"))
        .unwrap_or_else(|v| {
            eprintln!("{v}");
            std::process::exit(2);
        });
    let parse = admitted.budget();

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
        let (api_call, done, stopped) = match api_imageinfo(&engine, &clock, &h, &header, images) {
            Ok(call) => call,
            Err(v) => {
                println!("API refused the call\n    {v}");
                continue;
            }
        };
        // The API's usage comes back with its response and is charged to the parse.
        let spent = [
            (h.lookups, api_call.budget().used(h.lookups)),
            (h.db, api_call.budget().used(h.db)),
        ];
        api_call.finish(Outcome::Success);
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
    println!();
    for class in &engine.admission_stats().classes {
        println!(
            "admission {:<7} admitted {}, refused {}, in flight {} of {}",
            class.class,
            class.counts.admitted,
            class.counts.refused.iter().map(|(_, n)| n).sum::<u64>(),
            class.in_flight,
            class.limit
        );
    }
    admitted.finish(Outcome::Success);
    println!(
        "\nFile lookups for this edit: {guarded_lookups} guarded, {unguarded_lookups} unguarded \
         (before Parsoid's 8 and RESTBase's 5 retries multiplied them)."
    );
}

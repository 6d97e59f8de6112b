//! A search endpoint behind costguard's tower layer.
//!
//! Every request is admitted before the handler runs: two searches may run at once, two more may wait
//! briefly in the queue, and the rest are answered at once with `503` and an honest `Retry-After`
//! instead of piling up behind the database. A search that declares more DB queries than a request may
//! ever spend is answered with `413` without running. The handler charges its queries to the request's
//! budget, which the layer puts into the request.
//!
//! Time is simulated with a manual clock, and the handlers are held until the example releases them,
//! so the output is the same on every run.
//!
//! ```text
//! cargo run --example tower_service --features tower
//! ```

#[cfg(not(feature = "tower"))]
fn main() {
    println!("this example needs the tower feature:");
    println!("    cargo run --example tower_service --features tower");
}

#[cfg(feature = "tower")]
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime")
        .block_on(demo::run());
}

#[cfg(feature = "tower")]
mod demo {
    use costguard::clock::ManualClock;
    use costguard::tower::{retry_after_secs, AdmissionLayer, AdmitSpec};
    use costguard::{Budget, Counter, Engine, Outcome, Policy, Reason, RequestId, Verdict};
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{mpsc, Semaphore};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    const POLICY: &str = r#"
        [dimensions]
        db_queries = "counter"

        [classes.search]
        wall_time = "5s"
        limits = { db_queries = 50 }

        [classes.search.admission]
        concurrency = 2
        queue = { capacity = 2, max_wait = "2s" }
    "#;

    /// Simulated time of one DB query.
    const QUERY_TIME: Duration = Duration::from_millis(100);

    /// A request, as a web framework would hand it over; `budget` plays the part of an extension.
    struct Request {
        id: u64,
        user: &'static str,
        /// DB queries the search will run (known from the query up front).
        queries: u64,
        budget: Option<Budget>,
    }

    struct Response {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    }

    /// A refusal, as the client sees it.
    fn refusal(verdict: Verdict) -> Response {
        let status = match verdict.reason() {
            Reason::RateLimited | Reason::KeyConcurrency => 429,
            Reason::CannotFit | Reason::KeyTooLong => 413,
            _ => 503,
        };
        Response {
            status,
            retry_after: retry_after_secs(&verdict),
            body: verdict.to_string(),
        }
    }

    /// The search handler: charges its queries to the request's budget, then "runs" them once the
    /// example lets it.
    async fn search(
        request: Request,
        db: Counter,
        clock: ManualClock,
        go: Arc<Semaphore>,
    ) -> Result<Response, Infallible> {
        let budget = request
            .budget
            .expect("the admission layer attaches the budget");
        if let Err(verdict) = budget.try_charge(db, request.queries) {
            return Ok(Response {
                status: 500,
                retry_after: None,
                body: verdict.to_string(),
            });
        }
        go.acquire().await.expect("never closed").forget();
        clock.advance(QUERY_TIME * request.queries as u32);
        Ok(Response {
            status: 200,
            retry_after: None,
            body: format!(
                "{} results, {} DB queries",
                10 * request.queries,
                budget.used(db)
            ),
        })
    }

    pub async fn run() {
        let clock = ManualClock::new();
        let engine = Engine::builder(Policy::from_toml_str(POLICY).expect("a valid policy"))
            .clock(clock.clone())
            .build()
            .expect("a valid engine");
        let class = engine.class("search").expect("the policy has it");
        let db = engine.counter("db_queries").expect("the policy has it");

        let admission = AdmissionLayer::new(
            engine.clone(),
            move |r: &Request| {
                AdmitSpec::new(class, RequestId::from_u64(r.id))
                    .key(r.user)
                    .estimate(db, r.queries)
            },
            refusal,
        )
        .attach(|r: &mut Request, budget: &Budget| r.budget = Some(budget.clone()))
        .outcome(|result: &Result<Response, Infallible>| match result {
            Ok(r) if r.status >= 500 => Outcome::Overload,
            Ok(r) if r.status >= 400 => Outcome::ClientError,
            _ => Outcome::Success,
        });

        let go = Arc::new(Semaphore::new(0));
        let service = ServiceBuilder::new().layer(admission).service(service_fn({
            let (clock, go) = (clock.clone(), Arc::clone(&go));
            move |r: Request| search(r, db, clock.clone(), Arc::clone(&go))
        }));

        let (tx, mut rx) = mpsc::unbounded_channel();
        let call = |id: u64, user: &'static str, queries: u64| {
            let (service, tx) = (service.clone(), tx.clone());
            tokio::spawn(async move {
                let request = Request {
                    id,
                    user,
                    queries,
                    budget: None,
                };
                let response = service.oneshot(request).await.expect("infallible");
                tx.send((id, user, response)).expect("the example listens");
            })
        };
        let print = |(id, user, r): (u64, &str, Response)| {
            let retry = r
                .retry_after
                .map_or(String::new(), |s| format!(", Retry-After: {s}"));
            println!("request {id} ({user}): {}{retry}\n    {}", r.status, r.body);
        };

        // One search first, so the engine has seen how long a search takes (400 ms).
        go.add_permits(1);
        call(1, "alice", 4);
        print(rx.recv().await.expect("a response"));

        // Six at once: two run, two wait in the queue, two are turned away at once.
        for (id, user) in [(2, "bob"), (3, "carol")] {
            call(id, user, 3);
            wait(|| {
                engine
                    .admission_stats()
                    .class("search")
                    .map(|s| s.in_flight)
                    == Some(id as u32 - 1)
            })
            .await;
        }
        for (id, user) in [(4, "dave"), (5, "erin")] {
            call(id, user, 2);
            wait(|| {
                engine
                    .admission_stats()
                    .class("search")
                    .map(|s| s.queue_len)
                    == Some(id as u32 - 3)
            })
            .await;
        }
        for (id, user) in [(6, "frank"), (7, "grace")] {
            call(id, user, 2);
            print(rx.recv().await.expect("a refusal"));
        }
        // A search that could never fit in a request's 50 queries does not even start.
        call(8, "heidi", 500);
        print(rx.recv().await.expect("a refusal"));

        // The database answers: the running searches finish and the queued ones take their places.
        go.add_permits(4);
        let mut finished = Vec::new();
        for _ in 0..4 {
            finished.push(rx.recv().await.expect("a response"));
        }
        finished.sort_by_key(|(id, _, _)| *id);
        finished.into_iter().for_each(print);
        let stats = engine.admission_stats();
        let stats = stats.class("search").expect("the policy has it");
        println!(
            "\nadmitted {}, waited {}, refused {}; {} in flight now",
            stats.counts.admitted,
            stats.counts.waited,
            stats.counts.refused(Reason::QueueFull) + stats.counts.refused(Reason::CannotFit),
            stats.in_flight,
        );
    }

    /// Waits until `done` holds: another task reaching a state, not a time.
    async fn wait(done: impl Fn() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }
}

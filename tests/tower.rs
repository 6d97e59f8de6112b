//! The tower layer on a real service stack: a multi-thread tokio runtime, `ServiceBuilder`, and
//! `service_fn`. Time is a manual clock; tasks are held on barriers and notifications, never on sleeps.
#![cfg(feature = "tower")]

use costguard::clock::ManualClock;
use costguard::policy::AdmissionBuilder;
use costguard::tower::{
    retry_after_secs, AdmissionLayer, AdmitSpec, AttachBudget, ClassifyOutcome,
};
use costguard::{Budget, Class, Counter, Engine, Outcome, Policy, Priority, Reason, RequestId};
use costguard::{Retry, Verdict};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, Barrier, Notify};
use tower::service_fn;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A request as a handler sees it. `budget` is filled in by the layer.
#[derive(Debug, Default)]
struct Req {
    n: u64,
    user: String,
    priority: Option<Priority>,
    estimate: u64,
    /// The handler waits on the test's release signal before answering.
    hold: bool,
    /// The handler fails (an inner service error).
    fail: bool,
    budget: Option<Budget>,
}

fn req(n: u64) -> Req {
    Req {
        n,
        user: format!("user-{n}"),
        ..Req::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Served {
        id: String,
        priority: Priority,
    },
    Refused {
        status: u16,
        reason: Reason,
        retry: Retry,
        retry_after_header: Option<u64>,
    },
}

/// An inner service error.
#[derive(Debug, PartialEq)]
struct Failure(u64);

fn refusal(verdict: &Verdict) -> Resp {
    Resp::Refused {
        status: match verdict.reason() {
            Reason::KeyConcurrency | Reason::RateLimited => 429,
            _ => 503,
        },
        reason: verdict.reason(),
        retry: verdict.retry(),
        retry_after_header: retry_after_secs(verdict),
    }
}

struct Setup {
    engine: Engine,
    clock: ManualClock,
    api: Class,
    db: Counter,
}

/// An engine on a manual clock with one class, `api`, allowed 10 DB queries per request.
fn setup(admission: impl FnOnce(AdmissionBuilder) -> AdmissionBuilder) -> Setup {
    let policy = Policy::builder()
        .counter("db_queries")
        .class("api", |c| c.limit("db_queries", 10).admission(admission))
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let engine = Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap();
    let api = engine.class("api").unwrap();
    let db = engine.counter("db_queries").unwrap();
    Setup {
        engine,
        clock,
        api,
        db,
    }
}

/// The layer under test: each request is admitted in `api` under its number as id, keyed by its
/// user, at its priority, with its DB estimate; refusals become `Resp::Refused`; the budget is put
/// into the request.
#[allow(clippy::type_complexity)]
fn admission(
    s: &Setup,
) -> AdmissionLayer<
    impl Fn(&Req) -> AdmitSpec + Clone + Send + Sync + 'static,
    impl Fn(Verdict) -> Resp + Clone + Send + Sync + 'static,
    impl Fn(&mut Req, &Budget) + Clone + Send + Sync + 'static,
> {
    let (api, db) = (s.api, s.db);
    AdmissionLayer::new(
        s.engine.clone(),
        move |r: &Req| {
            let mut spec = AdmitSpec::new(api, RequestId::from_u64(r.n))
                .key(&r.user)
                .estimate(db, r.estimate);
            if let Some(p) = r.priority {
                spec = spec.priority(p);
            }
            spec
        },
        |verdict| refusal(&verdict),
    )
    .attach(|r: &mut Req, budget: &Budget| r.budget = Some(budget.clone()))
}

/// What the tasks report to the test, in the order it happens.
#[derive(Debug)]
enum Event {
    /// The inner service started on this request.
    Entered(u64),
    /// The caller got a refusal response.
    Refused(Resp),
}

/// Counts inner calls running at once, and the most ever seen.
#[derive(Clone, Default)]
struct Running {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Running {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Runs `test` on a multi-thread runtime with `workers` worker threads. The tests wait on events
/// only; two watchdogs turn a wait that never ends (a broken layer) into a failure instead of a
/// hang: tokio's timer, and, should a broken layer block the executor's threads (so that nothing
/// drives that timer, and dropping the runtime waits on them too), a thread of its own that
/// aborts the test process.
fn run(workers: usize, test: impl Future<Output = ()>) {
    const STALLED: Duration = Duration::from_secs(60);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // A result or a panic ends the wait (the sender is sent to or dropped); only time does not.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(STALLED + Duration::from_secs(30))
        {
            eprintln!("the test stalled with its executor blocked");
            std::process::abort();
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(STALLED, test).await })
        .expect("the test stalled");
    drop(runtime);
    let _ = done.send(());
    watchdog.join().unwrap();
}

fn stats(e: &Engine) -> costguard::admission::ClassStats {
    e.admission_stats().class("api").unwrap().clone()
}

/// Waits until `n` requests wait in the class's queue: an event, reached by other tasks.
async fn queue_reaches(e: &Engine, n: u32) {
    while stats(e).queue_len != n {
        tokio::task::yield_now().await;
    }
}

/// One request that takes 300 ms on the manual clock, so Retry-After estimates have a latency.
async fn warm_up(s: &Setup) {
    let clock = s.clock.clone();
    let svc = ServiceBuilder::new()
        .layer(admission(s))
        .service(service_fn(move |r: Req| {
            let clock = clock.clone();
            async move {
                clock.advance(Duration::from_millis(300));
                Ok::<_, Failure>(Resp::Served {
                    id: RequestId::from_u64(r.n).as_str().to_owned(),
                    priority: Priority::Normal,
                })
            }
        }));
    let resp = svc.oneshot(req(1_000)).await.unwrap();
    assert!(matches!(resp, Resp::Served { .. }));
}

#[test]
fn at_most_the_limit_runs_and_the_rest_get_the_refusal_response() {
    const LIMIT: usize = 3;
    const CALLS: u64 = 24;
    let s = setup(|a| a.concurrency(LIMIT as u64));
    run(4, async {
        warm_up(&s).await;
        let running = Running::default();
        let barrier = Arc::new(Barrier::new(LIMIT + 1));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = {
            let (running, barrier, tx) = (running.clone(), Arc::clone(&barrier), tx.clone());
            service_fn(move |r: Req| {
                let (running, barrier, tx) = (running.clone(), Arc::clone(&barrier), tx.clone());
                async move {
                    let budget = r.budget.expect("the layer attaches the budget");
                    assert_eq!(budget.request_id(), RequestId::from_u64(r.n));
                    running.enter();
                    tx.send(Event::Entered(r.n)).unwrap();
                    barrier.wait().await;
                    running.leave();
                    Ok::<_, Failure>(Resp::Served {
                        id: budget.request_id().as_str().to_owned(),
                        priority: budget.priority(),
                    })
                }
            })
        };
        let svc = ServiceBuilder::new().layer(admission(&s)).service(inner);
        let calls: Vec<_> = (0..CALLS)
            .map(|n| {
                let (svc, tx) = (svc.clone(), tx.clone());
                tokio::spawn(async move {
                    let resp = svc.oneshot(req(n)).await.unwrap();
                    if let Resp::Refused { .. } = resp {
                        tx.send(Event::Refused(resp.clone())).unwrap();
                    }
                    resp
                })
            })
            .collect();

        // Every call either reaches the inner service (and stays there) or is answered at once.
        let (mut entered, mut refused) = (0, Vec::new());
        for _ in 0..CALLS {
            match rx.recv().await.unwrap() {
                Event::Entered(_) => entered += 1,
                Event::Refused(resp) => refused.push(resp),
            }
        }
        assert_eq!(entered, LIMIT);
        assert_eq!(refused.len(), CALLS as usize - LIMIT);
        assert_eq!(stats(&s.engine).in_flight, LIMIT as u32);
        // One 300 ms latency seen, shared among 3 in flight: a permit frees every 100 ms.
        for resp in &refused {
            assert_eq!(
                resp,
                &Resp::Refused {
                    status: 503,
                    reason: Reason::ConcurrencyLimit,
                    retry: Retry::After(Duration::from_millis(100)),
                    retry_after_header: Some(1),
                }
            );
        }

        barrier.wait().await;
        let mut served = 0;
        for call in calls {
            if let Resp::Served { id, priority } = call.await.unwrap() {
                assert_eq!(priority, Priority::Normal);
                assert_eq!(id.len(), 16);
                served += 1;
            }
        }
        assert_eq!(served, LIMIT);
        assert_eq!(running.max(), LIMIT);
    });
    let st = stats(&s.engine);
    assert_eq!(st.in_flight, 0, "every grant was released");
    assert_eq!(
        st.counts.admitted,
        LIMIT as u64 + 1,
        "the calls and the warm-up"
    );
    assert_eq!(
        st.counts.refused(Reason::ConcurrencyLimit),
        CALLS - LIMIT as u64
    );
}

/// Sets a flag when dropped: proves the inner future was dropped, not leaked.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A handler that reports each request entering it, keeps those marked `hold` for ever, and sets
/// `dropped` when a request's future is dropped.
fn holding(
    tx: mpsc::UnboundedSender<Event>,
    dropped: Arc<AtomicBool>,
) -> impl Service<Req, Response = Resp, Error = Failure, Future: Send> + Clone + Send + 'static {
    service_fn(move |r: Req| {
        let (flag, tx) = (DropFlag(Arc::clone(&dropped)), tx.clone());
        async move {
            let _flag = flag;
            tx.send(Event::Entered(r.n)).unwrap();
            if r.hold {
                std::future::pending::<()>().await;
            }
            Ok::<_, Failure>(Resp::Served {
                id: RequestId::from_u64(r.n).as_str().to_owned(),
                priority: Priority::Normal,
            })
        }
    })
}

#[test]
fn a_dropped_response_future_gives_its_grant_back() {
    let s = setup(|a| a.concurrency(1).queue(4, Duration::from_secs(10)));
    run(2, async {
        let inner_dropped = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = holding(tx.clone(), Arc::clone(&inner_dropped));
        let svc = ServiceBuilder::new().layer(admission(&s)).service(inner);
        let call = |r: Req| tokio::spawn(svc.clone().oneshot(r));

        // A request running in the inner service, cancelled: its inner future and grant both go.
        let running = call(Req {
            hold: true,
            ..req(1)
        });
        assert!(matches!(rx.recv().await, Some(Event::Entered(1))));
        // A request waiting in the queue behind it, cancelled: it leaves the queue.
        let waiting = call(req(2));
        queue_reaches(&s.engine, 1).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(
            (stats(&s.engine).queue_len, stats(&s.engine).in_flight),
            (0, 1)
        );

        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(inner_dropped.load(Ordering::SeqCst));
        assert_eq!(stats(&s.engine).in_flight, 0);

        // The permit is really free: the next request runs at once.
        let resp = call(req(3)).await.unwrap().unwrap();
        assert!(matches!(resp, Resp::Served { .. }));
    });
    let st = stats(&s.engine);
    assert_eq!((st.in_flight, st.queue_len), (0, 0));
    assert_eq!((st.counts.admitted, st.counts.waited), (2, 1));
}

#[test]
fn a_queued_request_waits_without_blocking_the_executor() {
    let s = setup(|a| a.concurrency(1).queue(4, Duration::from_secs(10)));
    // One worker thread: a waiter that blocked it would keep the first request from finishing.
    run(1, async {
        let running = Running::default();
        let release = Arc::new(Notify::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = {
            let (running, release, tx) = (running.clone(), Arc::clone(&release), tx.clone());
            service_fn(move |r: Req| {
                let (running, release, tx) = (running.clone(), Arc::clone(&release), tx.clone());
                async move {
                    running.enter();
                    tx.send(Event::Entered(r.n)).unwrap();
                    if r.hold {
                        release.notified().await;
                    }
                    running.leave();
                    Ok::<_, Failure>(Resp::Served {
                        id: RequestId::from_u64(r.n).as_str().to_owned(),
                        priority: Priority::Normal,
                    })
                }
            })
        };
        let svc = ServiceBuilder::new().layer(admission(&s)).service(inner);
        let first = tokio::spawn(svc.clone().oneshot(Req {
            hold: true,
            ..req(1)
        }));
        assert!(matches!(rx.recv().await, Some(Event::Entered(1))));
        let second = tokio::spawn(svc.clone().oneshot(req(2)));
        queue_reaches(&s.engine, 1).await;
        assert_eq!(stats(&s.engine).in_flight, 1);

        release.notify_one();
        let first = first.await.unwrap().unwrap();
        assert!(matches!(rx.recv().await, Some(Event::Entered(2))));
        let second = second.await.unwrap().unwrap();
        let id = |r: &Resp| match r {
            Resp::Served { id, .. } => id.clone(),
            other => panic!("expected a served response, got {other:?}"),
        };
        assert_eq!(id(&first), RequestId::from_u64(1).as_str());
        assert_eq!(id(&second), RequestId::from_u64(2).as_str());
        assert_eq!(running.max(), 1);
    });
    let st = stats(&s.engine);
    assert_eq!((st.in_flight, st.queue_len), (0, 0));
    assert_eq!((st.counts.admitted, st.counts.waited), (2, 1));
}

#[test]
fn the_handler_spends_the_budget_the_classifier_asked_for() {
    let s = setup(|a| {
        a.concurrency(4)
            .headroom(Priority::Sheddable, 0.5)
            .per_key_concurrency(1)
    });
    let db = s.db;
    run(2, async {
        // The two held requests and the test meet here.
        let release = Arc::new(Barrier::new(3));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = {
            let (release, tx) = (Arc::clone(&release), tx.clone());
            service_fn(move |r: Req| {
                let (release, tx) = (Arc::clone(&release), tx.clone());
                async move {
                    let budget = r.budget.expect("the layer attaches the budget");
                    // The handler charges the request's own budget: the class's 10 DB queries.
                    budget.try_charge(db, 4).unwrap();
                    let refused = budget.try_charge(db, 7).unwrap_err();
                    assert_eq!(refused.reason(), Reason::LimitExceeded);
                    assert_eq!(refused.request_id(), Some(&RequestId::from_u64(r.n)));
                    assert_eq!(budget.class_name(), "api");
                    tx.send(Event::Entered(r.n)).unwrap();
                    if r.hold {
                        release.wait().await;
                    }
                    Ok::<_, Failure>(Resp::Served {
                        id: budget.request_id().as_str().to_owned(),
                        priority: budget.priority(),
                    })
                }
            })
        };
        let svc = ServiceBuilder::new().layer(admission(&s)).service(inner);
        let call = |r: Req| tokio::spawn(svc.clone().oneshot(r));
        let user = |n: u64, user: &str| Req {
            user: user.to_owned(),
            ..req(n)
        };

        // alice holds her one request in flight; her second is refused for the key, not the class.
        let alice = call(Req {
            hold: true,
            ..user(1, "alice")
        });
        assert!(matches!(rx.recv().await, Some(Event::Entered(1))));
        let again = call(user(2, "alice")).await.unwrap().unwrap();
        assert_eq!(
            again,
            Resp::Refused {
                status: 429,
                reason: Reason::KeyConcurrency,
                retry: Retry::Later,
                retry_after_header: None,
            }
        );
        // Sheddable work may fill half of the 4: one more, then it is shed; critical work runs.
        let sheddable = |n: u64| Req {
            priority: Some(Priority::Sheddable),
            ..req(n)
        };
        let bob = call(Req {
            hold: true,
            ..sheddable(3)
        });
        assert!(matches!(rx.recv().await, Some(Event::Entered(3))));
        let shed = call(sheddable(4)).await.unwrap().unwrap();
        assert!(matches!(
            shed,
            Resp::Refused {
                status: 503,
                reason: Reason::Shed,
                ..
            }
        ));
        let critical = call(Req {
            priority: Some(Priority::Critical),
            ..req(5)
        });
        assert!(matches!(rx.recv().await, Some(Event::Entered(5))));
        assert_eq!(
            critical.await.unwrap().unwrap(),
            Resp::Served {
                id: RequestId::from_u64(5).as_str().to_owned(),
                priority: Priority::Critical,
            }
        );
        // An estimate larger than the class's limit can never fit: refused before the handler.
        let huge = call(Req {
            estimate: 11,
            ..req(6)
        });
        assert_eq!(
            huge.await.unwrap().unwrap(),
            Resp::Refused {
                status: 503,
                reason: Reason::CannotFit,
                retry: Retry::Never,
                retry_after_header: None,
            }
        );

        release.wait().await;
        for held in [alice, bob] {
            assert!(matches!(held.await.unwrap(), Ok(Resp::Served { .. })));
        }
        assert!(
            rx.try_recv().is_err(),
            "no refused request reached the handler"
        );
    });
    assert_eq!(stats(&s.engine).in_flight, 0);
}

/// A handler that takes 10 ms on the manual clock and fails when asked to.
fn timed(
    clock: &ManualClock,
) -> impl Service<Req, Response = Resp, Error = Failure, Future: Send> + Clone + Send + 'static {
    let clock = clock.clone();
    service_fn(move |r: Req| {
        let clock = clock.clone();
        async move {
            clock.advance(Duration::from_millis(10));
            if r.fail {
                Err(Failure(r.n))
            } else {
                Ok(Resp::Served {
                    id: RequestId::from_u64(r.n).as_str().to_owned(),
                    priority: Priority::Normal,
                })
            }
        }
    })
}

fn aimd(a: AdmissionBuilder) -> AdmissionBuilder {
    a.aimd(4, 1, 8, 0.5, Duration::from_millis(100))
        .window(Duration::from_secs(1))
}

async fn one<S>(svc: &mut S, r: Req) -> Result<Resp, Failure>
where
    S: Service<Req, Response = Resp, Error = Failure>,
{
    svc.ready().await?.call(r).await
}

#[test]
fn inner_errors_pass_through_and_back_off_an_adaptive_limit() {
    let s = setup(aimd);
    run(2, async {
        let mut svc = ServiceBuilder::new()
            .layer(admission(&s))
            .service(timed(&s.clock));
        // An error is the inner service's own, unchanged; by default it is an overload sample.
        for n in 0..3 {
            let failed = one(
                &mut svc,
                Req {
                    fail: true,
                    ..req(n)
                },
            )
            .await;
            assert_eq!(failed, Err(Failure(n)));
        }
        assert_eq!(stats(&s.engine).limit, 4, "judged when the window closes");
        s.clock.advance(Duration::from_secs(1));
        assert!(one(&mut svc, req(3)).await.is_ok());
        assert_eq!(stats(&s.engine).limit, 2, "AIMD halved the limit");
    });
    assert_eq!(stats(&s.engine).in_flight, 0);
}

#[test]
fn a_custom_outcome_keeps_client_errors_out_of_the_limit() {
    let s = setup(aimd);
    run(2, async {
        let mut svc = ServiceBuilder::new()
            .layer(admission(&s).outcome(|r: &Result<Resp, Failure>| match r {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::ClientError,
            }))
            .service(timed(&s.clock));
        for n in 0..3 {
            let failed = one(
                &mut svc,
                Req {
                    fail: true,
                    ..req(n)
                },
            )
            .await;
            assert_eq!(failed, Err(Failure(n)));
        }
        s.clock.advance(Duration::from_secs(1));
        assert!(one(&mut svc, req(3)).await.is_ok());
        assert_eq!(
            stats(&s.engine).limit,
            4,
            "client errors say nothing about capacity"
        );
    });
}

/// An inner service whose readiness the test controls, and which must not be called unless this
/// very instance was driven to readiness (a clone starts unready, as a clone of tower's `Buffer` or
/// `ConcurrencyLimit` does).
struct Gate {
    ready: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
    /// This instance's own readiness: set by `poll_ready`, spent by `call`.
    polled: bool,
}

impl Clone for Gate {
    fn clone(&self) -> Self {
        Gate {
            ready: Arc::clone(&self.ready),
            broken: Arc::clone(&self.broken),
            polled: false,
        }
    }
}

impl Service<Req> for Gate {
    type Response = Resp;
    type Error = Failure;
    type Future = std::future::Ready<Result<Resp, Failure>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        if self.broken.load(Ordering::SeqCst) {
            Poll::Ready(Err(Failure(u64::MAX)))
        } else if self.ready.load(Ordering::SeqCst) {
            self.polled = true;
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, r: Req) -> Self::Future {
        assert!(
            std::mem::take(&mut self.polled),
            "called on an instance that was not driven to readiness"
        );
        std::future::ready(Ok(Resp::Served {
            id: RequestId::from_u64(r.n).as_str().to_owned(),
            priority: Priority::Normal,
        }))
    }
}

fn poll_ready<S: Service<Req>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn readiness_and_its_errors_are_the_inner_services() {
    let s = setup(|a| a.concurrency(2));
    let gate = Gate {
        ready: Arc::new(AtomicBool::new(false)),
        broken: Arc::new(AtomicBool::new(false)),
        polled: false,
    };
    let mut svc = ServiceBuilder::new()
        .layer(admission(&s))
        .service(gate.clone());
    assert!(poll_ready(&mut svc).is_pending());
    gate.ready.store(true, Ordering::SeqCst);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Each call is made on the instance driven to readiness, and needs readiness again.
    for n in 1..=3 {
        assert_eq!(poll_ready(&mut svc), Poll::Ready(Ok(())));
        let mut fut = svc.call(req(n));
        assert!(matches!(
            std::pin::Pin::new(&mut fut).poll(&mut cx),
            Poll::Ready(Ok(Resp::Served { .. }))
        ));
    }
    gate.broken.store(true, Ordering::SeqCst);
    assert_eq!(poll_ready(&mut svc), Poll::Ready(Err(Failure(u64::MAX))));
    let st = stats(&s.engine);
    assert_eq!((st.in_flight, st.counts.admitted), (0, 3));
}

/// A response future dropped while its request runs records no outcome: a client that went away
/// says nothing about the service's capacity, so an adaptive limit does not back off for it.
#[test]
fn a_dropped_response_future_records_no_outcome() {
    let s = setup(aimd);
    run(2, async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner = holding(tx, Arc::new(AtomicBool::new(false)));
        let svc = ServiceBuilder::new().layer(admission(&s)).service(inner);
        let held: Vec<_> = (0..3)
            .map(|n| {
                tokio::spawn(svc.clone().oneshot(Req {
                    hold: true,
                    ..req(n)
                }))
            })
            .collect();
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        for call in held {
            call.abort();
            assert!(call.await.unwrap_err().is_cancelled());
        }
        assert_eq!(stats(&s.engine).in_flight, 0);
        // The window closes at the next sample: had the three counted as overload, AIMD would
        // halve the limit here.
        s.clock.advance(Duration::from_secs(1));
        assert!(matches!(
            svc.clone().oneshot(req(3)).await,
            Ok(Resp::Served { .. })
        ));
        assert_eq!(
            stats(&s.engine).limit,
            4,
            "a dropped request was an overload sample"
        );
    });
}

/// The outcome classifier and the budget attacher can be types of the caller's, installed with
/// `outcome_with` and `attach_with`, as well as closures.
#[test]
fn outcome_and_attach_take_types_of_the_callers() {
    #[derive(Clone)]
    struct ClientErrors;
    impl ClassifyOutcome<Resp, Failure> for ClientErrors {
        fn classify(&self, result: &Result<Resp, Failure>) -> Outcome {
            match result {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::ClientError,
            }
        }
    }
    #[derive(Clone)]
    struct Attach;
    impl AttachBudget<Req> for Attach {
        fn attach(&self, request: &mut Req, budget: &Budget) {
            request.budget = Some(budget.clone());
        }
    }
    let s = setup(aimd);
    run(2, async {
        let attached = service_fn(|r: Req| async move {
            let budget = r.budget.expect("attached");
            Err::<Resp, _>(Failure(budget.request_id().as_str().len() as u64))
        });
        let mut svc = ServiceBuilder::new()
            .layer(admission(&s).attach_with(Attach).outcome_with(ClientErrors))
            .service(attached);
        for n in 0..3 {
            assert_eq!(one(&mut svc, req(n)).await, Err(Failure(16)));
        }
        s.clock.advance(Duration::from_secs(1));
        let _ = one(&mut svc, req(3)).await;
        assert_eq!(stats(&s.engine).limit, 4, "client errors are not overload");
        // The defaults go back in the same way, with no type annotations.
        let mut plain = ServiceBuilder::new()
            .layer(
                admission(&s)
                    .attach_with(costguard::tower::NoAttach)
                    .outcome_with(costguard::tower::ErrIsOverload),
            )
            .service(timed(&s.clock));
        assert!(one(&mut plain, req(4)).await.is_ok());
    });
}

/// The service the layer wraps stays reachable, as tower middleware's usually is.
#[test]
fn the_inner_service_can_be_reached_and_unwrapped() {
    #[derive(Debug, PartialEq)]
    struct Inner(u32);
    let s = setup(|a| a.concurrency(1));
    let layer = admission(&s);
    let mut service = tower::Layer::layer(&layer, Inner(1));
    assert_eq!(service.get_ref(), &Inner(1));
    service.get_mut().0 = 2;
    assert_eq!(service.engine().class("api").unwrap(), s.api);
    assert_eq!(service.into_inner(), Inner(2));
}

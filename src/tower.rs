//! A Rust service's edge is usually a tower stack (axum, tonic, hyper): that is the one place every
//! request passes, so that is where admission belongs. [`AdmissionLayer`], a tower [`Layer`], puts
//! the engine there:
//!
//! 1. a closure **classifies** each request into an [`AdmitSpec`] (class, request id, priority, key,
//!    estimates), an owned version of [`AdmitRequest`], because the request itself moves on to the
//!    inner service while the admission may still be waiting;
//! 2. the request is admitted with [`Engine::admit_async`]: a class without a queue is refused at once,
//!    a class with one waits in it *asynchronously*, never blocking an executor thread;
//! 3. a refusal is turned into a **normal response** by a second closure (a 503 or 429 with
//!    `Retry-After`, say). It is not an error: tower errors usually end the connection or reach a
//!    generic error handler, while a refusal is an answer the client is meant to read and honour;
//! 4. once admitted, an optional closure **attaches** the request's [`Budget`] to the request (into
//!    its extensions, typically), so handlers below can charge it;
//! 5. the [`Admitted`] grant is held until the inner future completes, then **finished** with an
//!    [`Outcome`] computed from the inner result (by default `Ok` is a success and `Err` an overload),
//!    so adaptive limits and `Retry-After` estimates learn from real latencies. A response future
//!    dropped early (the client went away, a timeout above fired) drops the grant with it, which gives
//!    everything back and records nothing.
//!
//! The layer does not enforce the budget's deadline: compose it with a timeout layer for that, or let
//! handlers check the budget. To exempt some requests (health checks), route them around the layer.
//! The grant ends when the inner service's response future resolves: with a streaming body (hyper,
//! axum), the body is produced after that, outside the concurrency permit, as with tower's own
//! `ConcurrencyLimit`. Hold the budget in the body stream to keep charging it there.
//!
//! `poll_ready` is the inner service's. Because admission may wait, the inner call is made only after
//! the request is admitted, with the very service instance that was driven to readiness (the
//! `Clone` bound lets a fresh clone take its place, the usual tower idiom). A request waiting in the
//! class's queue therefore holds whatever readiness reserved below (a `Buffer` slot, a permit) until it
//! is admitted or refused. Errors of the inner service pass through unchanged.
//!
//! The response future is boxed: the admission future borrows the engine and the key, and the response
//! future must own them, so it refers to itself. One allocation per request is the price of doing that
//! without unsafe code.
//!
//! [`AdmissionLayer`]: crate::tower::AdmissionLayer
//! [`AdmitSpec`]: crate::tower::AdmitSpec
//! [`Layer`]: tower_layer::Layer
//!
//! ```
//! use costguard::tower::{retry_after_secs, AdmissionLayer, AdmitSpec};
//! use costguard::{Budget, Engine, Policy, Reason, RequestId};
//! use std::convert::Infallible;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! struct Request {
//!     user: String,
//!     budget: Option<Budget>,
//! }
//! #[derive(Debug, PartialEq)]
//! struct Response {
//!     status: u16,
//!     retry_after: Option<u64>,
//! }
//!
//! let policy = Policy::builder()
//!     .counter("db_queries")
//!     .class("api", |c| c.limit("db_queries", 100).admission(|a| a.concurrency(64)))
//!     .build()
//!     .unwrap();
//! let engine = Engine::new(policy).unwrap();
//! let api = engine.class("api").unwrap();
//! let db = engine.counter("db_queries").unwrap();
//!
//! let admission = AdmissionLayer::new(
//!     engine.clone(),
//!     move |req: &Request| {
//!         AdmitSpec::new(api, RequestId::new("req-1").unwrap()).key(req.user.as_bytes())
//!     },
//!     |verdict| Response {
//!         status: if verdict.reason() == Reason::RateLimited { 429 } else { 503 },
//!         retry_after: retry_after_secs(&verdict),
//!     },
//! )
//! .attach(|req: &mut Request, budget: &Budget| req.budget = Some(budget.clone()));
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(admission)
//!     .service_fn(move |req: Request| async move {
//!         let budget = req.budget.expect("attached by the layer");
//!         budget.try_charge(db, 3).unwrap();
//!         Ok::<_, Infallible>(Response { status: 200, retry_after: None })
//!     });
//!
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let response = runtime.block_on(async {
//!     let request = Request { user: "alice".into(), budget: None };
//!     service.ready().await.unwrap().call(request).await.unwrap()
//! });
//! assert_eq!(response.status, 200);
//! assert_eq!(engine.admission_stats().class("api").unwrap().in_flight, 0);
//! ```

use crate::{AdmitRequest, Admitted, Budget, Class, Counter, Engine, Outcome, Overrides};
use crate::{Priority, RequestId, Verdict};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// What to admit for one request: an [`AdmitRequest`] that owns its key and overrides, so it can
/// outlive the borrow of the request it was classified from.
#[derive(Clone)]
#[must_use]
pub struct AdmitSpec {
    request: AdmitRequest<'static>,
    key: Option<Vec<u8>>,
    overrides: Option<Overrides>,
}

impl AdmitSpec {
    /// A request of `class` with id `id`, at the class's default priority, with no key or estimate.
    pub fn new(class: Class, id: RequestId) -> Self {
        AdmitSpec {
            request: AdmitRequest::new(class, id),
            key: None,
            overrides: None,
        }
    }

    /// A request of `class` that arrived with a propagation header, as
    /// [`Engine::begin_propagated`] starts a budget: the caller's request id (`fallback_id` when it
    /// sent none), priority, time left and allowances, which can only tighten the class's own.
    ///
    /// ```
    /// use costguard::tower::AdmitSpec;
    /// use costguard::{Engine, Policy, Priority, Propagation, RequestId};
    ///
    /// let policy = Policy::from_toml_str(r#"
    ///     [dimensions]
    ///     db_queries = "counter"
    ///     [classes.api]
    ///     wall_time = "10s"
    ///     limits = { db_queries = 100 }
    ///     [classes.api.admission]
    ///     concurrency = 8
    /// "#).unwrap();
    /// let engine = Engine::new(policy).unwrap();
    /// let api = engine.class("api").unwrap();
    /// // The value of the caller's `costguard-budget` header.
    /// let header = Propagation::decode("cg1;id=edit-42;pri=sheddable;t=2000;db_queries=5").unwrap();
    /// let spec = AdmitSpec::propagated(api, RequestId::from_u64(7), &header, &engine);
    /// let admitted = engine.try_admit(&spec.request()).unwrap();
    /// let db = engine.counter("db_queries").unwrap();
    /// assert_eq!(admitted.budget().request_id().as_str(), "edit-42");
    /// assert_eq!(admitted.budget().remaining_of(db), 5);
    /// assert_eq!(admitted.budget().priority(), Priority::Sheddable);
    /// ```
    pub fn propagated(
        class: Class,
        fallback_id: RequestId,
        propagation: &crate::Propagation,
        engine: &crate::Engine,
    ) -> Self {
        let id = propagation.request_id().unwrap_or(fallback_id);
        AdmitSpec::new(class, id).overrides(propagation.overrides(engine))
    }

    /// The request's priority (the class's default otherwise).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.request = self.request.priority(priority);
        self
    }

    /// The key per-key limits apply to (user, IP, tenant), copied. A key longer than
    /// [`MAX_KEY_LEN`](crate::admission::MAX_KEY_LEN) bytes is refused at admission (`KeyTooLong`).
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// A declared estimate of a counter (see [`AdmitRequest::estimate`]).
    pub fn estimate(mut self, counter: Counter, amount: u64) -> Self {
        self.request = self.request.estimate(counter, amount);
        self
    }

    /// The cost charged to the key's rate limit (default 1).
    pub fn rate_cost(mut self, cost: u64) -> Self {
        self.request = self.request.rate_cost(cost);
        self
    }

    /// Tighter budget limits for this request (from a propagation header, for instance).
    pub fn overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = Some(overrides);
        self
    }

    /// The request to admit, borrowing the key and overrides from `self`.
    pub fn request(&self) -> AdmitRequest<'_> {
        let mut request = self.request;
        if let Some(key) = &self.key {
            request = request.key(key);
        }
        if let Some(overrides) = &self.overrides {
            request = request.overrides(overrides);
        }
        request
    }
}

impl fmt::Debug for AdmitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmitSpec")
            .field("request", &self.request())
            .field("overrides", &self.overrides)
            .finish()
    }
}

/// Gives the inner service access to the request's budget, once it is admitted.
///
/// Implemented by every `Fn(&mut Req, &Budget)`; [`NoAttach`] is the default. Installed with
/// [`AdmissionLayer::attach`] (a closure) or [`AdmissionLayer::attach_with`] (any implementation).
pub trait AttachBudget<Req> {
    /// Makes `budget` reachable from `request` (a clone into its extensions, typically).
    fn attach(&self, request: &mut Req, budget: &Budget);
}

impl<Req, F> AttachBudget<Req> for F
where
    F: Fn(&mut Req, &Budget),
{
    fn attach(&self, request: &mut Req, budget: &Budget) {
        self(request, budget);
    }
}

/// Attaches nothing: the inner service does not see the budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAttach;

impl<Req> AttachBudget<Req> for NoAttach {
    fn attach(&self, _: &mut Req, _: &Budget) {}
}

/// Says how an admitted request ended, from the inner service's result.
///
/// Implemented by every `Fn(&Result<T, E>) -> Outcome`; [`ErrIsOverload`] is the default.
/// Installed with [`AdmissionLayer::outcome`] (a closure) or [`AdmissionLayer::outcome_with`]
/// (any implementation).
pub trait ClassifyOutcome<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> ClassifyOutcome<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is [`Outcome::Success`] and `Err` is [`Outcome::Overload`]. Services that answer client
/// errors and server errors as responses should classify them with a closure instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrIsOverload;

impl<T, E> ClassifyOutcome<T, E> for ErrIsOverload {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Overload,
        }
    }
}

/// The `Retry-After` value to send for `verdict`, in whole seconds, rounded up so that a client never
/// comes back before the hint: `None` when retrying cannot help or no time can be promised.
pub fn retry_after_secs(verdict: &Verdict) -> Option<u64> {
    verdict.retry_after().map(|d| {
        let whole = d.as_secs();
        if d.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        }
    })
}

/// The closures and the engine, shared by every service the layer makes and every call in flight.
#[derive(Clone)]
struct Shared<C, R, A, O> {
    engine: Engine,
    classify: C,
    refuse: R,
    attach: A,
    outcome: O,
}

/// A [`Layer`] that admits each request through an [`Engine`]. See the [module documentation](self).
///
/// `C` classifies a request, `R` turns a refusal into a response, `A` attaches the budget, `O`
/// classifies the inner result.
#[derive(Clone)]
#[must_use]
pub struct AdmissionLayer<C, R, A = NoAttach, O = ErrIsOverload> {
    shared: Shared<C, R, A, O>,
}

impl<C, R> AdmissionLayer<C, R> {
    /// A layer that admits each request as `classify` says, and answers refusals with `refuse`.
    pub fn new<Req, Res>(engine: Engine, classify: C, refuse: R) -> Self
    where
        C: Fn(&Req) -> AdmitSpec,
        R: Fn(Verdict) -> Res,
    {
        AdmissionLayer {
            shared: Shared {
                engine,
                classify,
                refuse,
                attach: NoAttach,
                outcome: ErrIsOverload,
            },
        }
    }
}

impl<C, R, A, O> AdmissionLayer<C, R, A, O> {
    /// Attaches each admitted request's budget with `attach` (for example
    /// `req.extensions_mut().insert(budget.clone())`).
    pub fn attach<Req, A2>(self, attach: A2) -> AdmissionLayer<C, R, A2, O>
    where
        A2: Fn(&mut Req, &Budget),
    {
        self.attach_with(attach)
    }

    /// [`attach`](Self::attach) with any [`AttachBudget`] (a type of the caller's, or
    /// [`NoAttach`]); `attach` takes a closure, whose argument types it infers. (The service the
    /// layer makes requires `AttachBudget<Req>` of its request type.)
    pub fn attach_with<A2>(self, attach: A2) -> AdmissionLayer<C, R, A2, O> {
        let Shared {
            engine,
            classify,
            refuse,
            outcome,
            ..
        } = self.shared;
        AdmissionLayer {
            shared: Shared {
                engine,
                classify,
                refuse,
                attach,
                outcome,
            },
        }
    }

    /// Classifies the inner service's result with `outcome` (for example: a 5xx response is an
    /// overload, a 4xx a client error).
    pub fn outcome<T, E, O2>(self, outcome: O2) -> AdmissionLayer<C, R, A, O2>
    where
        O2: Fn(&Result<T, E>) -> Outcome,
    {
        self.outcome_with(outcome)
    }

    /// [`outcome`](Self::outcome) with any [`ClassifyOutcome`] (a type of the caller's, or
    /// [`ErrIsOverload`]); `outcome` takes a closure, whose argument types it infers. (The service
    /// the layer makes requires `ClassifyOutcome` of its inner service's result.)
    pub fn outcome_with<O2>(self, outcome: O2) -> AdmissionLayer<C, R, A, O2> {
        let Shared {
            engine,
            classify,
            refuse,
            attach,
            ..
        } = self.shared;
        AdmissionLayer {
            shared: Shared {
                engine,
                classify,
                refuse,
                attach,
                outcome,
            },
        }
    }

    /// The engine requests are admitted through.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }
}

impl<C, R, A, O> fmt::Debug for AdmissionLayer<C, R, A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer").finish_non_exhaustive()
    }
}

impl<S, C, R, A, O> Layer<S> for AdmissionLayer<C, R, A, O>
where
    C: Clone,
    R: Clone,
    A: Clone,
    O: Clone,
{
    type Service = AdmissionService<S, C, R, A, O>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

/// The service made by [`AdmissionLayer`].
pub struct AdmissionService<S, C, R, A = NoAttach, O = ErrIsOverload> {
    inner: S,
    shared: Arc<Shared<C, R, A, O>>,
}

impl<S: Clone, C, R, A, O> Clone for AdmissionService<S, C, R, A, O> {
    fn clone(&self) -> Self {
        AdmissionService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C, R, A, O> fmt::Debug for AdmissionService<S, C, R, A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C, R, A, O> AdmissionService<S, C, R, A, O> {
    /// The engine requests are admitted through.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C, R, A, O> Service<Req> for AdmissionService<S, C, R, A, O>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    C: Fn(&Req) -> AdmitSpec + Send + Sync + 'static,
    R: Fn(Verdict) -> S::Response + Send + Sync + 'static,
    A: AttachBudget<Req> + Send + Sync + 'static,
    O: ClassifyOutcome<S::Response, S::Error> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let spec = (self.shared.classify)(&request);
        // The instance that was driven to readiness serves this request; a clone takes its place.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let shared = Arc::clone(&self.shared);
        ResponseFuture {
            inner: Box::pin(async move {
                let admitted: Admitted = match shared.engine.admit_async(spec.request()).await {
                    Ok(admitted) => admitted,
                    Err(verdict) => return Ok((shared.refuse)(verdict)),
                };
                shared.attach.attach(&mut request, admitted.budget());
                // Dropped here (cancellation, panic) the grant is released with no outcome.
                let result = inner.call(request).await;
                admitted.finish(shared.outcome.classify(&result));
                result
            }),
        }
    }
}

/// The response future of [`AdmissionService`]: admission, then the inner call.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T, E> {
    inner: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| {
                    a.concurrency(4)
                        .per_key_rate(10, std::time::Duration::from_secs(1), 1)
                })
            })
            .build()
            .unwrap();
        let engine = Engine::new(policy).unwrap();
        let api = engine.class("api").unwrap();
        let spec = |n| AdmitSpec::new(api, RequestId::from_u64(n)).key("k");
        let _first = engine.try_admit(&spec(1).request()).unwrap();
        let refused = engine.try_admit(&spec(2).request()).unwrap_err();
        assert!(refused.retry_after().is_some_and(|d| d.as_secs() == 0));
        assert_eq!(retry_after_secs(&refused), Some(1));

        let after = |retry| {
            let v = Verdict::from_parts(
                crate::Reason::ConcurrencyLimit,
                retry,
                None,
                None,
                crate::Unit::Count,
                [1, 1, 1],
                None,
            );
            retry_after_secs(&v)
        };
        let secs = |s: f64| crate::Retry::After(std::time::Duration::from_secs_f64(s));
        assert_eq!(after(secs(1.5)), Some(2));
        assert_eq!(after(secs(1.0)), Some(1));
        assert_eq!(after(secs(59.000_000_001)), Some(60));
        assert_eq!(after(secs(0.000_000_001)), Some(1));
        assert_eq!(after(crate::Retry::Never), None);
        assert_eq!(after(crate::Retry::Later), None);
        let max = crate::Retry::After(std::time::Duration::MAX);
        assert_eq!(after(max), Some(u64::MAX), "saturates");
    }
}

//! Waiting for a permit: blocking, or as a runtime-agnostic future.

use super::queue::{NotQueued, Waiter, Wake, EXPIRED, GRANTED, REFUSED};
use super::{AdmitRequest, Admitted, ClassAdmission};
use crate::clock::Timestamp;
use crate::engine::snapshot::Snapshot;
use crate::sync::Arc;
use crate::verdict::{Reason, Unit};
use crate::{Engine, Priority, Verdict};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A waiter being set up: what it needs to finish or give up.
struct Queued {
    waiter: Arc<Waiter>,
    snapshot: Arc<Snapshot>,
    priority: Priority,
}

/// Where `enqueue` left a request.
enum Place {
    /// In the queue.
    Queued(Queued),
    /// Holding a permit that came free while it was being queued, taken on the gate of this snapshot
    /// (the one to finish under, and whose gate the grant will give the permit back to).
    Held(Arc<Snapshot>, Priority, Timestamp),
}

fn admission<'s>(snapshot: &'s Snapshot, req: &AdmitRequest<'_>) -> Option<&'s ClassAdmission> {
    snapshot.class(req.class)?.admission.as_ref()
}

/// Puts a waiter in the queue, or refuses when the queue is full. If a permit came free meanwhile,
/// returns [`Place::Held`] with the permit held.
fn enqueue(
    engine: &Engine,
    req: &AdmitRequest<'_>,
    full: Verdict,
    wake: Wake,
) -> Result<Place, Verdict> {
    let snapshot = engine.snapshot();
    // A reload since the first try may have taken the class, or its queue, away: the refusal that
    // sent the request here stands, and is reported as any other.
    let Some(rules) = snapshot.class(req.class) else {
        engine.show_refusal(&full, false);
        return Err(full);
    };
    let priority = req.effective_priority(rules.priority);
    let (Some(adm), Some(policy)) = (
        rules.admission.as_ref(),
        rules.admission.as_ref().and_then(|a| a.queue),
    ) else {
        match rules.admission.as_ref() {
            Some(adm) => engine.report_refusal(adm, &full, priority, false),
            None => engine.show_refusal(&full, false),
        }
        return Err(full);
    };
    let now = engine.clock().now().as_nanos();
    let own = req
        .overrides
        .and_then(|o| o.wall_time)
        .map_or(rules.wall_time, |w| {
            rules.wall_time.min(crate::clock::duration_to_nanos(w))
        });
    let patience = adm.gate.queue.patience(&policy, now).min(own);
    // No time to wait (a caller whose deadline has come), or an async wait without the timer
    // that ends it (no thread could be started for one): the refusal that sent the request here
    // stands, rather than a wait that would outlast its time.
    if patience == 0 || (matches!(wake, Wake::Task(_)) && !engine.wake_timer()) {
        engine.report_refusal(adm, &full, priority, false);
        return Err(full);
    }
    let waiter = Arc::new(Waiter::new(
        priority,
        now,
        now.saturating_add(patience),
        wake,
    ));
    let queued = adm
        .gate
        .queue
        .enqueue(Arc::clone(&waiter), &policy, || adm.gate.shares());
    match queued {
        Ok(()) => {}
        Err(NotQueued::Full(len)) => {
            let v = Verdict::new(Reason::QueueFull, adm.gate.retry_hint())
                .with_amounts(1, u64::from(len), u64::from(policy.capacity))
                .with_class(&rules.name)
                .with_request(req.effective_id());
            engine.report_refusal(adm, &v, priority, false);
            return Err(v);
        }
        Err(NotQueued::Never) => return Err(never_admitted(engine, req, adm, priority)),
        // A reload turned shadow mode on since the first try: admitted, as a first try now is.
        Err(NotQueued::Shadow) => {
            adm.gate.limiter.force_acquire();
            return Ok(Place::Held(snapshot, priority, Timestamp::from_nanos(now)));
        }
    }
    adm.gate.stats.waited();
    // A permit freed before this waiter became visible would be missed: look once more.
    if adm
        .gate
        .limiter
        .try_acquire(adm.gate.share(priority))
        .is_ok()
    {
        if waiter.abandon() {
            adm.gate
                .queue
                .remove_served(&waiter, now, adm.queue.as_ref());
        } else if waiter.state() == GRANTED {
            // Granted at the same instant: keep one permit, give the other back.
            adm.gate.limiter.release();
            adm.gate.dispatch(adm.queue.as_ref(), now);
        }
        // Otherwise a dispatch expired or refused the waiter at this instant (and took it out of
        // the queue): the permit just taken is the only one, and it is this request's (taken at
        // the share read just now, as a first try that read it then would have been admitted).
        return Ok(Place::Held(snapshot, priority, Timestamp::from_nanos(now)));
    }
    Ok(Place::Queued(Queued {
        waiter,
        snapshot,
        priority,
    }))
}

fn timed_out(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued) -> Verdict {
    // While unwinding (a waiter dropped by a panic), the clock is not read: a clock that panicked
    // once may again, and a second panic would abort. The wait then counts as its whole patience.
    let now = if std::thread::panicking() {
        q.waiter.deadline
    } else {
        engine.clock().now().as_nanos()
    };
    let waited = now.saturating_sub(q.waiter.enqueued);
    let Some(adm) = admission(&q.snapshot, req) else {
        return Verdict::new(Reason::QueueTimeout, crate::Retry::Later)
            .with_request(req.effective_id());
    };
    let mut v = Verdict::new(Reason::QueueTimeout, adm.gate.retry_hint())
        .with_amounts(
            0,
            waited,
            q.waiter.deadline.saturating_sub(q.waiter.enqueued),
        )
        .with_request(req.effective_id())
        .with_class(&adm.gate.name);
    v = v.with_dimension(&adm.gate.names[super::CONCURRENCY], Unit::Nanos);
    engine.report_refusal(adm, &v, q.priority, false);
    v
}

/// The refusal of a waiter whose priority a reload left a share of the limit that can never hold
/// a permit (refused in the queue, or on its way in): as a first try under that policy would have
/// been, told not to retry, and shed (`ConcurrencyLimit` while the class is full, as a first try
/// says then).
fn never_admitted(
    engine: &Engine,
    req: &AdmitRequest<'_>,
    adm: &ClassAdmission,
    priority: Priority,
) -> Verdict {
    let in_flight = adm.gate.limiter.in_flight();
    let reason = if in_flight < adm.gate.limiter.limit() {
        Reason::Shed
    } else {
        Reason::ConcurrencyLimit
    };
    let v = Verdict::new(reason, crate::Retry::Never)
        .with_dimension(&adm.gate.names[super::CONCURRENCY], Unit::Count)
        .with_amounts(1, u64::from(in_flight), 0)
        .with_class(&adm.gate.name)
        .with_request(req.effective_id());
    engine.report_refusal(adm, &v, priority, false);
    v
}

/// The refusal of a waiter refused in the queue.
fn refused(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued) -> Verdict {
    match admission(&q.snapshot, req) {
        Some(adm) => never_admitted(engine, req, adm, q.priority),
        None => Verdict::new(Reason::Shed, crate::Retry::Never).with_request(req.effective_id()),
    }
}

/// A first try, and whether to wait in the class's queue if it refused but waiting may help.
pub(crate) fn admit_or_wait(
    engine: &Engine,
    req: &AdmitRequest<'_>,
) -> (Result<Admitted, Verdict>, bool) {
    let mut queue = false;
    let result = engine.admit_step(req, Some(&mut queue));
    (result, queue)
}

/// Admits a request that waited (`arrived`: when it joined the queue) with the permit it holds.
///
/// The rest of its admission (shadow mode, pools, key limits, budget) follows the policy in force
/// now, as a first try now would: a reload while it waited applies to it. The permit came from the
/// class's gate, which reloads keep; only if the current policy has no admission at that gate for
/// the class (a reload took the settings away) is the request finished under the policy it waited
/// under, whose grant gives the permit back where it came from.
fn finish(
    engine: &Engine,
    req: &AdmitRequest<'_>,
    queued_under: &Arc<Snapshot>,
    priority: Priority,
    arrived: Timestamp,
) -> Result<Admitted, Verdict> {
    let current = engine.snapshot();
    let same_gate = match (admission(&current, req), admission(queued_under, req)) {
        (Some(now), Some(then)) => Arc::ptr_eq(&now.gate, &then.gate),
        _ => false,
    };
    let snapshot = if same_gate { &current } else { queued_under };
    engine.admit_rest(snapshot, req, priority, true, arrived)
}

/// [`finish`] for a waiter that was queued.
fn finish_queued(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued) -> Result<Admitted, Verdict> {
    let arrived = Timestamp::from_nanos(q.waiter.enqueued);
    finish(engine, req, &q.snapshot, q.priority, arrived)
}

/// Gives back a permit a waiter was granted but will not use.
fn return_permit(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued) {
    if let Some(adm) = admission(&q.snapshot, req) {
        give_back(engine, adm);
    }
}

/// Gives back a permit held for a request that will not use it, and hands it to the next waiter
/// (while unwinding, as a grant dropped then does: see [`Gate::dispatch_unwinding`]).
///
/// A clock that panics here still lets the permit reach the next waiter (dispatched as if no time
/// had passed), and the panic goes on afterwards.
fn give_back(engine: &Engine, adm: &ClassAdmission) {
    adm.gate.limiter.release();
    if std::thread::panicking() {
        adm.gate
            .dispatch_unwinding(&**engine.clock(), adm.queue.as_ref());
        return;
    }
    match super::caught_now(&**engine.clock()) {
        Ok(now) => adm.gate.dispatch(adm.queue.as_ref(), now.as_nanos()),
        Err(panic) => {
            adm.gate.dispatch_without_time();
            std::panic::resume_unwind(panic);
        }
    }
}

/// Admits a request with the permit `enqueue` took for it (one that came free while it was being
/// queued); gives the permit back should that unwind (a caller's clock, say).
fn finish_held(
    engine: &Engine,
    req: &AdmitRequest<'_>,
    snapshot: &Arc<Snapshot>,
    priority: Priority,
    arrived: Timestamp,
) -> Result<Admitted, Verdict> {
    struct Holding<'a>(&'a Engine, Option<&'a ClassAdmission>);
    impl Drop for Holding<'_> {
        fn drop(&mut self) {
            if let Some(adm) = self.1 {
                give_back(self.0, adm);
            }
        }
    }
    let holding = Holding(engine, admission(snapshot, req));
    let result = finish(engine, req, snapshot, priority, arrived);
    std::mem::forget(holding);
    result
}

/// Blocks the calling thread until admitted, refused or timed out.
pub(crate) fn block(
    engine: &Engine,
    req: &AdmitRequest<'_>,
    full: Verdict,
) -> Result<Admitted, Verdict> {
    let wake = Wake::Thread(std::thread::current());
    let q = match enqueue(engine, req, full, wake)? {
        Place::Queued(q) => q,
        Place::Held(snapshot, priority, arrived) => {
            return finish_held(engine, req, &snapshot, priority, arrived)
        }
    };
    // Until the wait is settled, a panic (a caller's clock, say) leaves the queue, or gives back
    // a permit handed over meanwhile, as a dropped future does.
    let unsettled = Unsettled { engine, req, q: &q };
    let settled = |result| {
        std::mem::forget(unsettled);
        result
    };
    loop {
        match q.waiter.state() {
            GRANTED => return settled(finish_queued(engine, req, &q)),
            EXPIRED => return settled(Err(timed_out(engine, req, &q))),
            REFUSED => return settled(Err(refused(engine, req, &q))),
            _ => {}
        }
        let now = engine.clock().now().as_nanos();
        if now >= q.waiter.deadline {
            if q.waiter.abandon() {
                if let Some(adm) = admission(&q.snapshot, req) {
                    adm.gate
                        .queue
                        .remove_timed_out(&q.waiter, now, adm.queue.as_ref());
                }
                return settled(Err(timed_out(engine, req, &q)));
            }
            continue; // granted or expired at this instant: the loop reads which
        }
        std::thread::park_timeout(Duration::from_nanos(q.waiter.deadline - now));
    }
}

enum State<'a> {
    Start(AdmitRequest<'a>),
    Waiting(AdmitRequest<'a>, Queued),
    Done,
}

/// The future returned by [`Engine::admit_async`].
///
/// It needs no particular runtime: it is woken when a permit is handed to it, or by the engine's
/// timer thread when its wait is over. Dropping it while it waits leaves the queue; if a permit was
/// handed to it at that instant, the permit is given back.
///
/// A permit handed to it is its own from then on, as an [`Admitted`]'s is: the wait's deadline
/// no longer applies, and the permit goes back when the future is polled and the admission
/// refused, or when it is dropped. A future kept but never polled again holds it until then, as
/// a grant kept and never dropped would.
#[must_use = "futures do nothing unless polled"]
pub struct AdmitFuture<'e, 'a> {
    engine: &'e Engine,
    state: State<'a>,
}

impl<'e, 'a> AdmitFuture<'e, 'a> {
    pub(crate) fn new(engine: &'e Engine, request: AdmitRequest<'a>) -> Self {
        AdmitFuture {
            engine,
            state: State::Start(request),
        }
    }
}

impl std::fmt::Debug for AdmitFuture<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start(_) => "start",
            State::Waiting(..) => "waiting",
            State::Done => "done",
        };
        f.debug_struct("AdmitFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for AdmitFuture<'_, '_> {
    type Output = Result<Admitted, Verdict>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let engine = this.engine;
        // A waiting future stays `Waiting` until its outcome is settled: if anything in `look`
        // panics (the task's waker, say), its `Drop` still leaves the queue or gives the permit back.
        let looked = match &this.state {
            State::Waiting(req, q) => Some(look(engine, req, q, cx)),
            _ => None,
        };
        if let (Some(Look::Granted), State::Waiting(req, q)) = (&looked, &this.state) {
            // Still `Waiting` while it finishes: should that panic (a caller's clock, say), `Drop`
            // gives the permit back. Once it returns, the permit is the grant's, or was given back
            // by the refusal.
            let result = finish_queued(engine, req, q);
            this.state = State::Done;
            return Poll::Ready(result);
        }
        match (looked, std::mem::replace(&mut this.state, State::Done)) {
            (Some(Look::Pending), waiting) => {
                this.state = waiting;
                Poll::Pending
            }
            (Some(Look::TimedOut), State::Waiting(req, q)) => {
                Poll::Ready(Err(timed_out(engine, &req, &q)))
            }
            (Some(Look::Refused), State::Waiting(req, q)) => {
                Poll::Ready(Err(refused(engine, &req, &q)))
            }
            (_, State::Start(req)) => match admit_or_wait(engine, &req) {
                (Ok(admitted), _) => Poll::Ready(Ok(admitted)),
                (Err(verdict), false) => Poll::Ready(Err(verdict)),
                (Err(verdict), true) => {
                    let wake = Wake::Task(cx.waker().clone());
                    match enqueue(engine, &req, verdict, wake) {
                        Err(v) => Poll::Ready(Err(v)),
                        Ok(Place::Held(snapshot, priority, arrived)) => {
                            Poll::Ready(finish_held(engine, &req, &snapshot, priority, arrived))
                        }
                        Ok(Place::Queued(q)) => {
                            this.state = State::Waiting(req, q);
                            engine.wake_timer();
                            Poll::Pending
                        }
                    }
                }
            },
            // Polled again after it completed.
            _ => Poll::Ready(Err(Verdict::new(Reason::Cancelled, crate::Retry::Never))),
        }
    }
}

/// What a waiting future found when polled.
enum Look {
    Granted,
    /// Expired by the timer, or abandoned here at its deadline.
    TimedOut,
    /// Refused in the queue: its priority can no longer get a permit.
    Refused,
    Pending,
}

/// Looks at a waiter: granted, timed out, or still waiting (with the task's waker left with it).
fn look(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued, cx: &Context<'_>) -> Look {
    loop {
        match q.waiter.state() {
            GRANTED => return Look::Granted,
            EXPIRED => return Look::TimedOut,
            REFUSED => return Look::Refused,
            _ => {}
        }
        let now = engine.clock().now().as_nanos();
        if now >= q.waiter.deadline {
            if q.waiter.abandon() {
                if let Some(adm) = admission(&q.snapshot, req) {
                    adm.gate
                        .queue
                        .remove_timed_out(&q.waiter, now, adm.queue.as_ref());
                }
                return Look::TimedOut;
            }
            continue;
        }
        q.waiter.set_waker(cx.waker());
        // Granted between the check and the new waker: look again rather than sleep.
        if q.waiter.state() == super::queue::WAITING {
            return Look::Pending;
        }
    }
}

impl Drop for AdmitFuture<'_, '_> {
    fn drop(&mut self) {
        if let State::Waiting(req, q) = &self.state {
            leave(self.engine, req, q);
        }
    }
}

/// A waiter whose wait ends unsettled (dropped, or unwound by a panic): it leaves the queue, or
/// gives back the permit handed to it at that instant, or, expired or refused in the queue with
/// nobody looking since, is counted and shown as timed out or refused all the same.
fn leave(engine: &Engine, req: &AdmitRequest<'_>, q: &Queued) {
    if q.waiter.abandon() {
        if let Some(adm) = admission(&q.snapshot, req) {
            // When it left, for CoDel's sense of a quiet queue. Not read while the thread unwinds
            // (a clock that panicked once may again), and a panicking clock here is no reason to
            // leave the waiter behind in the queue.
            let now = if std::thread::panicking() {
                None
            } else {
                super::caught_now(&**engine.clock())
                    .ok()
                    .map(Timestamp::as_nanos)
            };
            adm.gate.queue.remove(&q.waiter, now);
        }
        return;
    }
    match q.waiter.state() {
        GRANTED => return_permit(engine, req, q),
        REFUSED => {
            let _ = refused(engine, req, q);
        }
        _ => {
            let _ = timed_out(engine, req, q);
        }
    }
}

/// A blocking wait not yet settled: [`leave`]s if dropped (by a panic).
struct Unsettled<'a, 'r> {
    engine: &'a Engine,
    req: &'a AdmitRequest<'r>,
    q: &'a Queued,
}

impl Drop for Unsettled<'_, '_> {
    fn drop(&mut self) {
        leave(self.engine, self.req, self.q);
    }
}

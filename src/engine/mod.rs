//! The engine: the compiled policy, its hot reload, and where budgets begin.
//!
//! One engine serves a whole process. It holds the current policy as an immutable snapshot behind an
//! atomically swappable pointer: starting a budget loads the snapshot without a lock, and a reload swaps
//! in a new one without disturbing budgets already running, which keep the snapshot they started with
//! until they finish. A reload that fails validation changes nothing.

pub(crate) mod snapshot;

use crate::admission::{RefusalEvent, RefusalHook};
use crate::backend::{Transition, TransitionHook};
use crate::budget::node::Node;
use crate::budget::{pool as budget_pool, Budget, Overrides, Start};
use crate::clock::{Clock, CpuClock, ThreadCpuClock, TscClock};
use crate::handle::{Class, Counter, Level, NameError};
use crate::policy::{DimensionKind, Policy, PolicyError};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, SwapCell, SwapGuard};
use crate::{RequestId, Verdict};
use snapshot::{Registry, Snapshot};
use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// How often the default clock's coarse reading is refreshed.
pub const DEFAULT_COARSE_TICK: Duration = Duration::from_millis(1);

/// Holds the policy and starts budgets. Cheap to clone; clones share everything.
///
/// When the last clone is dropped, the clock thread the engine started for itself (without
/// [`EngineBuilder::clock`]) stops. A thread that started budgets keeps up to four finished ones
/// for reuse, each with the policy snapshot it last ran under, until that one is reused (by a
/// budget of any engine) or the thread exits: that much of a dropped engine's memory (its policy,
/// clock and limiter state) may outlive it. A thread that then serves another engine one request at
/// a time reuses only the budget it finished last, so the other three stay until the thread exits.
///
/// ```
/// use costguard::{Engine, Policy, RequestId};
/// use std::time::Duration;
///
/// let v1 = Policy::from_toml_str(r#"
///     [dimensions]
///     db_queries = "counter"
///     [classes.api]
///     wall_time = "10s"
///     limits = { db_queries = 100 }
/// "#).unwrap();
/// let engine = Engine::new(v1).unwrap();
/// let api = engine.class("api").unwrap();
/// let db = engine.counter("db_queries").unwrap();
/// let running = engine.begin(api, RequestId::new("a").unwrap()).unwrap();
///
/// // A bad policy is refused and the old one stays.
/// assert!(engine.reload_toml_str("[classes.api]\nwall_time = 10").is_err());
/// assert_eq!(engine.generation(), 1);
///
/// // A good one applies to new budgets; running ones keep theirs.
/// engine.reload_toml_str(r#"
///     [dimensions]
///     db_queries = "counter"
///     [classes.api]
///     limits = { db_queries = 5 }
/// "#).unwrap();
/// let fresh = engine.begin(api, RequestId::new("b").unwrap()).unwrap();
/// assert_eq!((running.limit(db), fresh.limit(db)), (Some(100), Some(5)));
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    current: SwapCell<Snapshot>,
    /// The generation of `current`, stored after it: a snapshot of this engine with this
    /// generation is the current one (see [`Engine::is_current`]).
    published: AtomicU64,
    registry: Mutex<Registry>,
    clock: Arc<dyn Clock>,
    cpu_clock: Arc<dyn CpuClock>,
    hook: Option<RefusalHook>,
    transitions: Option<TransitionHook>,
    /// Expires async waiters; started with the first one (again, if it could not be started then).
    #[cfg_attr(costguard_loom, allow(dead_code))]
    timer: Mutex<Option<std::thread::Thread>>,
    /// Alive as long as the engine: the ticker thread of a clock the engine made for itself stops
    /// with the engine, although finished budgets kept for reuse may keep the clock.
    _alive: Arc<()>,
}

/// Configures an [`Engine`].
#[must_use]
pub struct EngineBuilder {
    policy: Policy,
    clock: Option<Arc<dyn Clock>>,
    cpu_clock: Option<Arc<dyn CpuClock>>,
    hook: Option<RefusalHook>,
    transitions: Option<TransitionHook>,
    key_seed: Option<u64>,
    random_seed: Option<u64>,
    names: Option<Registry>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("policy", &self.policy)
            .field("clock", &self.clock.as_ref().map(|_| "custom"))
            .field("cpu_clock", &self.cpu_clock.as_ref().map(|_| "custom"))
            .field("on_refusal", &self.hook.is_some())
            .field("on_transition", &self.transitions.is_some())
            .field("key_hash_seed", &self.key_seed)
            .field("random_seed", &self.random_seed)
            .field("inherits_names", &self.names.is_some())
            .finish()
    }
}

impl EngineBuilder {
    /// The clock for deadlines (default: [`TscClock`] with a 1 ms coarse ticker;
    /// [`MonotonicClock`](crate::clock::MonotonicClock) reads the operating system's clock instead).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The CPU clock for the `cpu_time` dimension (default: [`ThreadCpuClock`]).
    pub fn cpu_clock(mut self, clock: impl CpuClock + 'static) -> Self {
        self.cpu_clock = Some(Arc::new(clock));
        self
    }

    /// A hook that sees every admission refusal (and every refusal shadow mode only records), with
    /// its request id, in classes with admission settings or without (those keep no counters), and
    /// of classes a reload removed. It runs on the refusing thread: keep it short and
    /// non-blocking. Budget charges and backend attempts report their refusals to their callers
    /// (and backends count theirs by reason), not here. A panic in the
    /// hook is reported by the panic hook as usual and goes no further: the engine carries on as if
    /// the hook had returned, with nothing held or lost.
    pub fn on_refusal(mut self, hook: impl Fn(&RefusalEvent<'_>) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// A hook that sees every breaker transition and host ejection, readmission or ejection ended
    /// by a reload ([`TransitionKind`](crate::backend::TransitionKind)). It runs on the
    /// thread that caused the transition: keep it short and non-blocking. A panic in the hook is
    /// reported by the panic hook as usual and goes no further, as for [`on_refusal`](Self::on_refusal).
    pub fn on_transition(mut self, hook: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.transitions = Some(Arc::new(hook));
        self
    }

    /// Fixes the seed of the per-key tables' hash, so that which keys share a slot or the overflow
    /// entry is the same on every run: for tests and deterministic simulations. Without it every
    /// table draws a random seed, which keeps an attacker from choosing keys that collide; do not
    /// fix it in production.
    pub fn key_hash_seed(mut self, seed: u64) -> Self {
        self.key_seed = Some(seed);
        self
    }

    /// Fixes the seed of the backends' random draws (the retry backoff's jitter, the breakers'
    /// jittered open times), so that they are the same on every run and differ between engines
    /// given different seeds: for tests and simulations of several processes. Each backend draws
    /// its own stream from it. Without it each backend's stream starts from the clock's reading
    /// when the backend first appears, which a manual clock makes the same for every engine.
    ///
    /// ```
    /// use costguard::clock::ManualClock;
    /// use costguard::{AttemptOutcome, Engine, Policy, RequestId, RetryDecision};
    /// use std::time::Duration;
    ///
    /// let policy = Policy::builder()
    ///     .class("api", |c| c.retries(1))
    ///     .backend("db", |b| b.duration("retry.backoff_base", Duration::from_secs(1)))
    ///     .build()
    ///     .unwrap();
    /// let backoff = |seed: u64| {
    ///     let engine = Engine::builder(policy.clone())
    ///         .clock(ManualClock::new())
    ///         .random_seed(seed)
    ///         .build()
    ///         .unwrap();
    ///     let db = engine.backend("db").unwrap();
    ///     let budget = engine.begin_by_name("api", RequestId::from_u64(1)).unwrap();
    ///     match engine.retry(db, &budget, AttemptOutcome::ServerError, 1) {
    ///         RetryDecision::After(d) => d,
    ///         RetryDecision::Stop(v) => panic!("{v}"),
    ///     }
    /// };
    /// assert_eq!(backoff(7), backoff(7));
    /// assert_ne!(backoff(7), backoff(8));
    /// ```
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = Some(seed);
        self
    }

    /// Gives the new engine every name `engine` has seen, with the same ids, so that the handles
    /// resolved against it ([`Counter`](crate::Counter), [`Level`](crate::Level),
    /// [`Class`](crate::Class), [`Backend`](crate::Backend), [`Host`](crate::Host)) mean the same
    /// in the new one, including those of names `engine`'s current policy no longer has. Nothing
    /// else is inherited: permits, budgets, breakers, retry budgets and statistics start afresh.
    ///
    /// This is for a process that forked: the child builds a fresh engine with the parent's names
    /// instead of sharing state that the parent's threads may be in the middle of changing. It
    /// never blocks: if `engine` is in the middle of a reload (in a fork child, a reload a parent
    /// thread was running when the process forked, which will never finish), nothing is inherited
    /// and [`inherits_names`](Self::inherits_names) says so.
    ///
    /// ```
    /// use costguard::{Engine, Policy, RequestId};
    ///
    /// let v1 = Policy::from_toml_str(r#"
    ///     [dimensions]
    ///     file_lookups = "counter"
    ///     db_queries = "counter"
    ///     [classes.api]
    ///     limits = { db_queries = 10 }
    /// "#).unwrap();
    /// let v2 = Policy::from_toml_str(r#"
    ///     [dimensions]
    ///     db_queries = "counter"
    ///     [classes.api]
    ///     limits = { db_queries = 10 }
    /// "#).unwrap();
    /// let parent = Engine::new(v1).unwrap();
    /// let file_lookups = parent.counter("file_lookups").unwrap();
    /// let db_queries = parent.counter("db_queries").unwrap();
    /// parent.reload(v2.clone()).unwrap();
    ///
    /// let builder = Engine::builder(v2).inherit_names(&parent);
    /// assert!(builder.inherits_names());
    /// let child = builder.build().unwrap();
    /// // A fresh engine would give `db_queries` the first free id; this one keeps the parent's.
    /// assert_eq!(child.counter("db_queries").unwrap(), db_queries);
    /// // A counter the policy no longer has is charged without a limit, as in the parent.
    /// let budget = child.begin_by_name("api", RequestId::new("r1").unwrap()).unwrap();
    /// assert!(budget.try_charge(file_lookups, 1).is_ok());
    /// assert!(budget.try_charge(db_queries, 11).is_err());
    /// ```
    pub fn inherit_names(mut self, engine: &Engine) -> Self {
        self.names = engine.inner.registry.try_lock().map(|r| r.names_only());
        self
    }

    /// Whether [`inherit_names`](Self::inherit_names) found the other engine's names.
    pub fn inherits_names(&self) -> bool {
        self.names.is_some()
    }

    /// Compiles the policy and builds the engine.
    pub fn build(self) -> Result<Engine, PolicyError> {
        let alive = Arc::new(());
        let clock = self.clock.unwrap_or_else(|| {
            Arc::new(TscClock::with_ticker_while(
                DEFAULT_COARSE_TICK,
                Arc::downgrade(&alive),
            ))
        });
        let cpu_clock: Arc<dyn CpuClock> =
            self.cpu_clock.unwrap_or_else(|| Arc::new(ThreadCpuClock));
        let mut registry = self.names.unwrap_or_else(Registry::new);
        if self.key_seed.is_some() {
            registry.key_seed = self.key_seed;
        }
        registry.random_seed = self.random_seed;
        let snapshot = registry.compile(
            self.policy,
            1,
            clock.now().as_nanos(),
            &clock,
            &cpu_clock,
            self.transitions.as_ref(),
        )?;
        Ok(Engine {
            inner: Arc::new(Inner {
                current: SwapCell::new(Arc::new(snapshot)),
                published: AtomicU64::new(1),
                registry: Mutex::new(registry),
                clock,
                cpu_clock,
                hook: self.hook,
                transitions: self.transitions,
                timer: Mutex::new(None),
                _alive: alive,
            }),
        })
    }
}

impl Engine {
    /// An engine with the default clocks.
    pub fn new(policy: Policy) -> Result<Engine, PolicyError> {
        Engine::builder(policy).build()
    }

    /// Starts configuring an engine.
    pub fn builder(policy: Policy) -> EngineBuilder {
        EngineBuilder {
            policy,
            clock: None,
            cpu_clock: None,
            hook: None,
            transitions: None,
            key_seed: None,
            random_seed: None,
            names: None,
        }
    }

    /// Replaces the policy for budgets started from now on, and returns the new generation.
    ///
    /// A running request keeps the policy it started under, for its budget and for its calls to
    /// backends: its attempts and retry decisions follow that version's backend settings (a backend
    /// it lacks is looked up in the current one). What backends and their hosts have learned
    /// (breakers, ejections, permits, retry budgets, counters) is kept for the engine's life and
    /// shared by every version, whatever each does to a pool: a host taken out and put back later
    /// finds its state again (an ejection it was under ends when it is taken out).
    ///
    /// The new policy must be compatible with the names the engine already handed out: a dimension
    /// cannot change between counter and level. The engine remembers every name it has seen, and
    /// holds at most four full policies' worth of distinct class, backend and pool names (and
    /// [`MAX_DIMENSIONS`](crate::policy::MAX_DIMENSIONS) dimensions); a reload past that is refused (a
    /// restart forgets). On any error the current policy stays.
    pub fn reload(&self, policy: Policy) -> Result<u64, PolicyError> {
        let mut registry = self.inner.registry.lock();
        let generation = self.inner.current.load_full().generation.saturating_add(1);
        let now = self.inner.clock.now().as_nanos();
        let origin = policy.origin().clone();
        let snapshot = registry
            .compile(
                policy,
                generation,
                now,
                &self.inner.clock,
                &self.inner.cpu_clock,
                self.inner.transitions.as_ref(),
            )
            .map_err(|e| origin.place(e))?;
        let snapshot = Arc::new(snapshot);
        self.inner.current.store(Arc::clone(&snapshot));
        self.inner.published.store(generation, Ordering::Release);
        let ended = std::mem::take(&mut registry.ejections_ended);
        drop(registry);
        // Reported with the lock released (a hook may call back into the engine), all of them:
        // an attempt may have ejected a host again meanwhile, and reported that, but the
        // generations put the two in order.
        if let Some(hook) = &self.inner.transitions {
            for (backend, host, kind, generation) in ended {
                let transition = crate::backend::Transition {
                    backend,
                    host: Some(Arc::clone(&host.name)),
                    kind,
                    at: now,
                    generation,
                };
                run_hook(|| hook(&transition));
            }
        }
        // A raised limit may let waiters in, and a share taken away refuses them.
        self.dispatch_gates(true);
        Ok(generation)
    }

    /// Reads and applies a policy file; see [`reload`](Self::reload).
    pub fn reload_file(&self, path: impl AsRef<Path>) -> Result<u64, PolicyError> {
        self.reload(Policy::from_toml_file(path)?)
    }

    /// Parses and applies policy text; see [`reload`](Self::reload).
    pub fn reload_toml_str(&self, source: &str) -> Result<u64, PolicyError> {
        self.reload(Policy::from_toml_str(source)?)
    }

    /// The generation of the current policy (1 for the first, +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.inner.current.load_full().generation
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        self.inner.current.load_full().policy.clone()
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub(crate) fn refusal_hook(&self) -> Option<&RefusalHook> {
        self.inner.hook.as_ref()
    }

    /// Starts the waiter timer if needed, and wakes it; `false` when it is not running (no thread
    /// could be started for it). (Not under loom, whose models drive `expire_waiters` themselves and
    /// cannot see a real thread.)
    #[cfg(costguard_loom)]
    pub(crate) fn wake_timer(&self) -> bool {
        true
    }

    /// Starts the waiter timer if needed, and wakes it; `false` when it is not running (no thread
    /// could be started for it; the next call tries again).
    #[cfg(not(costguard_loom))]
    pub(crate) fn wake_timer(&self) -> bool {
        let mut timer = self.inner.timer.lock();
        if timer.is_none() {
            let weak = Arc::downgrade(&self.inner);
            let spawned = spawn_timer(move || timer_loop(weak));
            *timer = spawned.ok().map(|handle| handle.thread().clone());
        }
        match &*timer {
            Some(thread) => {
                thread.unpark();
                true
            }
            None => false,
        }
    }

    /// The handle of a class of the current policy.
    pub fn class(&self, name: &str) -> Result<Class, NameError> {
        self.inner
            .current
            .load_full()
            .class_by_name(name)
            .ok_or_else(|| NameError::Unknown {
                expected: "class",
                name: name.to_owned(),
            })
    }

    fn dimension(&self, name: &str, want: DimensionKind) -> Result<u8, NameError> {
        let snapshot = self.inner.current.load_full();
        let index = snapshot.dims.find(name).ok_or_else(|| NameError::Unknown {
            expected: want.as_str(),
            name: name.to_owned(),
        })?;
        let kind = snapshot.dims.dims[index].kind;
        if kind != want {
            return Err(NameError::WrongKind {
                name: name.to_owned(),
                actual: kind.as_str(),
                expected: want.as_str(),
            });
        }
        Ok(index as u8)
    }

    /// The handle of a counter dimension (including the built-ins `retries` and `cpu_time`).
    pub fn counter(&self, name: &str) -> Result<Counter, NameError> {
        self.dimension(name, DimensionKind::Counter).map(Counter)
    }

    /// The handle of a level dimension.
    pub fn level(&self, name: &str) -> Result<Level, NameError> {
        self.dimension(name, DimensionKind::Level).map(Level)
    }

    /// Starts the budget of a request of `class` under the current policy.
    pub fn begin(&self, class: Class, id: RequestId) -> Result<Budget, Verdict> {
        self.begin_with(class, id, &Overrides::NONE)
    }

    /// Starts a budget, looking the class up by name (a hash lookup; prefer [`begin`](Self::begin) with
    /// a handle resolved once).
    pub fn begin_by_name(&self, class: &str, id: RequestId) -> Result<Budget, Verdict> {
        let snapshot = self.snapshot_guard();
        let Some(handle) = snapshot.class_by_name(class) else {
            // Named in the verdict: the caller's spelling is what an operator needs to see.
            return Err(
                Verdict::new(crate::Reason::UnknownClass, crate::Retry::Never)
                    .with_class(&Arc::from(crate::text::clip(class, 64)))
                    .with_request(id),
            );
        };
        self.start(&snapshot, handle, id, &Overrides::NONE)
    }

    /// Starts a budget whose limits are tightened by `overrides`.
    pub fn begin_with(
        &self,
        class: Class,
        id: RequestId,
        overrides: &Overrides,
    ) -> Result<Budget, Verdict> {
        self.start_root(class, id, |_| Cow::Borrowed(overrides))
    }

    /// Starts a root budget of `class` under the current policy, with the overrides `overrides`
    /// works out for that policy: on this thread's kept node when the snapshot it holds is still the
    /// current one (nothing to load), otherwise under a loaded snapshot.
    pub(crate) fn start_root<'o>(
        &self,
        class: Class,
        id: RequestId,
        overrides: impl FnOnce(&Snapshot) -> Cow<'o, Overrides>,
    ) -> Result<Budget, Verdict> {
        let start = |now, overrides| Start {
            now,
            class,
            request_id: &id,
            priority: None,
            overrides,
        };
        let spare = match self.current_spare() {
            Ok(node) => {
                let o = overrides(&node.snapshot);
                return match Budget::prepare(&node.snapshot, start(node.snapshot.clock.now(), &o)) {
                    Ok(settings) => Ok(Budget::begin_on(node, settings)),
                    Err(v) => {
                        budget_pool::keep(node);
                        Err(v)
                    }
                };
            }
            Err(other) => other,
        };
        let snapshot = self.snapshot_guard();
        let o = overrides(&snapshot);
        Budget::start(&snapshot, start(snapshot.clock.now(), &o), spare)
    }

    pub(crate) fn start(
        &self,
        snapshot: &Arc<Snapshot>,
        class: Class,
        id: RequestId,
        overrides: &Overrides,
    ) -> Result<Budget, Verdict> {
        let start = Start {
            now: snapshot.clock.now(),
            class,
            request_id: &id,
            priority: None,
            overrides,
        };
        Budget::start(snapshot, start, None)
    }

    /// A finished node this thread kept whose snapshot is this engine's current one: the snapshot
    /// to work under, with nothing to load, and the node to start the budget on. Otherwise the
    /// node, if any, to start the budget on under a loaded snapshot.
    #[inline]
    pub(crate) fn current_spare(&self) -> Result<Arc<Node>, Option<Arc<Node>>> {
        match budget_pool::take() {
            Some(node) if self.is_current(&node.snapshot) => Ok(node),
            other => Err(other),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Whether `snapshot` is one of this engine's policy versions: every version holds the engine's
    /// own clock, which no other engine shares (the builder wraps each clock in a new `Arc`).
    #[inline]
    pub(crate) fn owns(&self, snapshot: &Snapshot) -> bool {
        Arc::ptr_eq(&snapshot.clock, &self.inner.clock)
    }

    /// Whether `snapshot` is this engine's current one: the engine's own, and of the generation
    /// last published. A reload racing this check may be missed, exactly as if the snapshot had
    /// been loaded a moment before it.
    #[inline]
    pub(crate) fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.owns(snapshot) && snapshot.generation == self.inner.published.load(Ordering::Acquire)
    }

    /// The current snapshot for the length of one operation, without a reference count.
    #[inline]
    pub(crate) fn snapshot_guard(&self) -> SwapGuard<Snapshot> {
        self.inner.current.load()
    }
}

/// Starts the waiter timer's thread. In this crate's tests, a thread that says none may be started
/// sees it fail, as it does when the process is out of threads or memory.
#[cfg(not(costguard_loom))]
fn spawn_timer(f: impl FnOnce() + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
    #[cfg(test)]
    if tests::NO_THREADS.with(std::cell::Cell::get) {
        return Err(std::io::Error::other("no thread may be started (a test)"));
    }
    std::thread::Builder::new()
        .name("costguard-waiters".into())
        .spawn(f)
}

/// Expires async waiters while any exist; sleeps otherwise. Ends with the engine.
#[cfg(not(costguard_loom))]
fn timer_loop(engine: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        // A caller's clock that panics once must not end the timer: every later wait would then
        // outlast its deadline. (A panic there changes nothing: the clock is read before any
        // waiter is looked at.) After one, the next round waits the longer time, so that a clock
        // that always panics does not panic a thousand times a second.
        let expired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.expire_waiters();
        }))
        .is_ok();
        let waiting = expired
            && engine
                .snapshot()
                .gates
                .iter()
                .any(|g| g.queue.has_waiters());
        drop(engine);
        if waiting {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            std::thread::park_timeout(Duration::from_millis(200));
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.generation())
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

/// Runs an application's hook so that a panic in it cannot unwind through the engine.
///
/// Hooks run in the middle of an operation: a refusal is reported while a shadow-mode admission
/// holds its permit, its pool amounts and its key; a breaker transition is reported before an
/// attempt's permits are given back. A panic unwinding from there would strand all of that for
/// good (a backend wedged at its in-flight cap). So the panic stops here: the panic hook has
/// already reported it (with std's default, on standard error), and the operation carries on as if
/// the hook had returned.
pub(crate) fn run_hook(hook: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook));
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use crate::clock::ManualClock;
    use crate::{AdmitRequest, Engine, Policy, Reason, RequestId};
    use std::cell::Cell;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    thread_local! {
        /// Whether the waiter timer's thread may be started from this thread.
        pub(super) static NO_THREADS: Cell<bool> = const { Cell::new(false) };
    }

    /// An async wait needs the waiter timer to end it: when no thread can be started for one, the
    /// request is refused as it would have been without a queue, and counted, instead of waiting
    /// past its time; once threads can be started again, async waits work again.
    #[test]
    fn an_async_wait_without_a_timer_is_refused_and_the_timer_is_tried_again() {
        let policy = Policy::builder()
            .class("api", |c| {
                c.admission(|a| a.concurrency(1).queue(8, Duration::from_millis(20)))
            })
            .build()
            .unwrap();
        let engine = Engine::builder(policy)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let api = engine.class("api").unwrap();
        let _held = engine
            .try_admit(&AdmitRequest::new(api, RequestId::from_u64(1)))
            .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut poll_once = |n: u64| {
            let mut wait =
                Box::pin(engine.admit_async(AdmitRequest::new(api, RequestId::from_u64(n))));
            wait.as_mut()
                .poll(&mut cx)
                .map(|r| r.map(drop).map_err(|v| v.reason()))
        };

        NO_THREADS.with(|n| n.set(true));
        assert_eq!(poll_once(2), Poll::Ready(Err(Reason::ConcurrencyLimit)));
        let stats = engine.admission_stats();
        let stats = stats.class("api").unwrap();
        assert_eq!((stats.queue_len, stats.counts.waited), (0, 0));
        assert_eq!(stats.counts.refused(Reason::ConcurrencyLimit), 1);

        NO_THREADS.with(|n| n.set(false));
        assert_eq!(poll_once(3), Poll::Pending);
        assert!(engine.inner.timer.lock().is_some());
    }
}

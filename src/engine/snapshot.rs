//! The compiled form of a policy: arrays indexed by handle.

use crate::admission::{ClassAdmission, Gate, KeyRef, KeyTable, Pool, PoolRef};
use crate::backend::{BackendRules, BackendState, HostState, TransitionHook, TransitionKind};
use crate::clock::{Clock, CpuClock};
use crate::handle::{Backend, Class};
use crate::policy::same_host;
use crate::policy::{
    AdaptiveLimit, Concurrency, DimensionKind, Policy, PolicyError, CPU_TIME, MAX_CLASSES,
    MAX_DIMENSIONS, RETRIES,
};
use crate::sync::Ordering;
use crate::verdict::Unit;
use crate::{clock::duration_to_nanos, Priority};
use std::collections::HashMap;
use std::sync::Arc;

/// What the engine knows about one dimension id.
#[derive(Clone, Debug)]
pub(crate) struct DimInfo {
    pub(crate) name: Arc<str>,
    pub(crate) kind: DimensionKind,
    pub(crate) unit: Unit,
}

/// Names are given ids once and keep them for the life of the engine, so handles survive reloads.
#[derive(Debug)]
pub(crate) struct Registry {
    dims: Vec<DimInfo>,
    classes: Vec<Arc<str>>,
    /// Admission state that must outlive policy versions, by class id.
    gates: Vec<Option<Arc<Gate>>>,
    adaptive: Vec<Option<AdaptiveLimit>>,
    key_tables: Vec<Option<Arc<KeyTable>>>,
    pools: Vec<(Arc<str>, Arc<Pool>)>,
    /// Backends by id, with the state that outlives policy versions.
    backends: Vec<KnownBackend>,
    /// The per-key tables' hash seed, when the engine was given one; random per table otherwise.
    pub(crate) key_seed: Option<u64>,
    /// The seed of the backends' random streams, when the engine was given one; the clock's reading
    /// at the backend's creation otherwise.
    pub(crate) random_seed: Option<u64>,
    /// Hosts whose ejections the last compile ended (readmitted early, or taken out of their pool),
    /// by backend name, for the caller to report once the registry's lock is released (a hook may
    /// call back into the engine).
    pub(crate) ejections_ended: Vec<(Arc<str>, Arc<HostState>, TransitionKind, u64)>,
}

/// A backend name the engine has seen, and its state, kept for the engine's life.
///
/// Its state (bulkheads, breaker, retry budget, outcome counters) and each of its hosts' states
/// survive every reload, whatever the new host list: attempts running under an older version
/// release into the same permits that new ones take from, so no reload, however it edits the pool,
/// lets calls past a cap, resets a counter or closes a breaker.
#[derive(Debug)]
struct KnownBackend {
    name: Arc<str>,
    /// Every host name the backend has had, by host id: a [`Host`](crate::Host) handle names a
    /// host, not a position in the current list, so a reload that reorders or replaces hosts never
    /// sends its attempts to another host.
    hosts_seen: Vec<Arc<str>>,
    /// The state of each host, by host id.
    host_states: Vec<Arc<HostState>>,
    state: Option<Arc<BackendState>>,
}

/// Host ids one backend may use in an engine's life.
const MAX_HOST_IDS: usize = crate::policy::MAX_HOSTS * 4;

impl Registry {
    pub(crate) fn new() -> Self {
        let builtin = |name: &str, unit| DimInfo {
            name: Arc::from(name),
            kind: DimensionKind::Counter,
            unit,
        };
        Registry {
            dims: vec![
                builtin(RETRIES, Unit::Count),
                builtin(CPU_TIME, Unit::Nanos),
            ],
            classes: Vec::new(),
            gates: Vec::new(),
            adaptive: Vec::new(),
            key_tables: Vec::new(),
            pools: Vec::new(),
            backends: Vec::new(),
            key_seed: None,
            random_seed: None,
            ejections_ended: Vec::new(),
        }
    }

    /// The same names with the same ids, and none of the state kept under them: no admission
    /// gates, key tables or pools, and every backend and host as if new.
    pub(crate) fn names_only(&self) -> Self {
        Registry {
            dims: self.dims.clone(),
            classes: self.classes.clone(),
            gates: Vec::new(),
            adaptive: Vec::new(),
            key_tables: Vec::new(),
            pools: Vec::new(),
            backends: self
                .backends
                .iter()
                .map(|known| KnownBackend {
                    name: Arc::clone(&known.name),
                    hosts_seen: known.hosts_seen.clone(),
                    host_states: known
                        .hosts_seen
                        .iter()
                        .map(|name| Arc::new(HostState::new(Arc::clone(name))))
                        .collect(),
                    state: None,
                })
                .collect(),
            key_seed: self.key_seed,
            // A forked child draws its own stream: the builder seeds it, or its clock does.
            random_seed: None,
            ejections_ended: Vec::new(),
        }
    }

    /// Assigns ids to the policy's names and compiles it, or explains why it cannot be applied to an
    /// engine that already knows other names. Nothing changes unless the whole policy fits.
    pub(crate) fn compile(
        &mut self,
        policy: Policy,
        generation: u64,
        now: u64,
        clock: &Arc<dyn Clock>,
        cpu_clock: &Arc<dyn CpuClock>,
        hook: Option<&TransitionHook>,
    ) -> Result<Snapshot, PolicyError> {
        let mut dims = self.dims.clone();
        for d in policy.dimensions() {
            match dims.iter().find(|known| known.name.as_ref() == d.name()) {
                Some(known) if known.kind != d.kind() => {
                    return Err(PolicyError::single(
                        format!("dimensions.{}", d.name()),
                        format!(
                            "was a {} and cannot become a {} while the engine runs (handles to it exist)",
                            known.kind.as_str(),
                            d.kind().as_str()
                        ),
                    ));
                }
                Some(_) => {}
                None => dims.push(DimInfo {
                    name: Arc::clone(d.name_arc()),
                    kind: d.kind(),
                    unit: d.unit(),
                }),
            }
        }
        if dims.len() > MAX_DIMENSIONS {
            return Err(PolicyError::single(
                "dimensions",
                format!(
                    "this engine has seen {} distinct dimension names; at most {MAX_DIMENSIONS} fit (restart to forget old ones)",
                    dims.len()
                ),
            ));
        }
        let mut classes = self.classes.clone();
        for c in policy.classes() {
            if !classes.iter().any(|k| k.as_ref() == c.name()) {
                classes.push(Arc::clone(c.name_arc()));
            }
        }
        if classes.len() > MAX_CLASSES * 4 {
            return Err(PolicyError::single(
                "classes",
                format!(
                    "this engine has seen {} distinct class names; at most {} fit (restart to forget old ones)",
                    classes.len(),
                    MAX_CLASSES * 4
                ),
            ));
        }
        // Units follow the newest policy that declares a dimension.
        for d in policy.dimensions() {
            if let Some(known) = dims.iter_mut().find(|k| k.name.as_ref() == d.name()) {
                known.unit = d.unit();
            }
        }
        let mut new_backends = 0;
        for b in policy.backends() {
            let Some(known) = self.backends.iter().find(|k| k.name.as_ref() == b.name()) else {
                new_backends += 1;
                continue;
            };
            let new_hosts = b
                .hosts()
                .filter(|h| !known.hosts_seen.iter().any(|k| same_host(k, h)))
                .count();
            if known.hosts_seen.len() + new_hosts > MAX_HOST_IDS {
                return Err(PolicyError::single(
                    format!("backends.{}.hosts", b.name()),
                    format!(
                        "this engine has seen {} distinct host names for this backend; at most {MAX_HOST_IDS} fit (restart to forget old ones)",
                        known.hosts_seen.len() + new_hosts
                    ),
                ));
            }
        }
        if self.backends.len() + new_backends > crate::policy::MAX_BACKENDS * 4 {
            return Err(PolicyError::single(
                "backends",
                "this engine has seen too many distinct backend names (restart to forget old ones)",
            ));
        }
        let new_pools = policy
            .pools()
            .iter()
            .filter(|p| !self.pools.iter().any(|(name, _)| name.as_ref() == p.name()))
            .count();
        if self.pools.len() + new_pools > crate::policy::MAX_POOLS * 4 {
            return Err(PolicyError::single(
                "pools",
                "this engine has seen too many distinct pool names (restart to forget old ones)",
            ));
        }
        // Every check passed: from here on, nothing fails.
        self.dims = dims;
        self.classes = classes;
        let admission = self.compile_admission(&policy, now);
        let backends = self.compile_backends(&policy, now, clock, hook);
        let mut snapshot = Snapshot::new(policy, generation, self, admission, clock, cpu_clock);
        snapshot.backends = backends;
        Ok(snapshot)
    }

    /// Finds or creates each backend's persistent state and its hosts', and compiles each backend
    /// of `policy` with its host list in the policy's order.
    fn compile_backends(
        &mut self,
        policy: &Policy,
        now: u64,
        clock: &Arc<dyn Clock>,
        hook: Option<&TransitionHook>,
    ) -> Vec<Option<Arc<BackendRules>>> {
        let mut out: Vec<Option<Arc<BackendRules>>> = Vec::new();
        for b in policy.backends() {
            let id = self.backend_id(b.name());
            let known = &mut self.backends[id];
            let state = Arc::clone(known.state.get_or_insert_with(|| {
                let seed = self.random_seed.map(|s| (s, id as u64));
                Arc::new(BackendState::new(b, now, seed))
            }));
            state.retry.set_rates(now, crate::backend::rates(b));
            let mut hosts = Vec::new();
            for name in b.hosts() {
                let host = match known.hosts_seen.iter().position(|k| same_host(k, name)) {
                    Some(host) => host,
                    None => {
                        known.hosts_seen.push(Arc::from(name));
                        let name = Arc::clone(&known.hosts_seen[known.hosts_seen.len() - 1]);
                        known.host_states.push(Arc::new(HostState::new(name)));
                        known.hosts_seen.len() - 1
                    }
                };
                hosts.push(host);
            }
            // The share of the pool that may be ejected is of the pool as it now is, for requests
            // of every version; a host taken out of the pool while ejected gives its place back
            // (and is not ejected again while out: see `HostState::forget_ejection`).
            let most = hosts.len() as u64 * u64::from(b.ejection.max_ejected) / 1000;
            state
                .ejected
                .most
                .store(u32::try_from(most).unwrap_or(u32::MAX), Ordering::SeqCst);
            for (host, s) in known.host_states.iter().enumerate() {
                let listed = hosts.contains(&host);
                s.in_pool.store(listed, Ordering::SeqCst);
                if listed {
                    continue;
                }
                if let Some(generation) = s.forget_ejection(&state.ejected) {
                    self.ejections_ended.push((
                        Arc::clone(&known.name),
                        Arc::clone(s),
                        TransitionKind::EjectionEnded,
                        generation,
                    ));
                }
            }
            // A pool made smaller may now have more hosts out than its share allows: those whose
            // ejections end soonest come back early, on probation, so that the share holds.
            let mut ejected_now: Vec<&Arc<HostState>> = hosts
                .iter()
                .map(|&h| &known.host_states[h])
                .filter(|h| h.is_ejected())
                .collect();
            if ejected_now.len() as u64 > most {
                ejected_now.sort_by_key(|h| h.ejection_ends());
                let excess = ejected_now.len() - usize::try_from(most).unwrap_or(usize::MAX);
                for h in &ejected_now[..excess] {
                    // The time of the readmission itself, not of the reload's start: failures of
                    // attempts begun before it are excused by it.
                    let at = clock.now().as_nanos();
                    if let Some(generation) = h.readmit_early(&state.ejected, at) {
                        self.ejections_ended.push((
                            Arc::clone(&known.name),
                            Arc::clone(h),
                            TransitionKind::Readmitted,
                            generation,
                        ));
                    }
                }
            }
            if out.len() <= id {
                out.resize_with(self.backends.len(), || None);
            }
            let known = &self.backends[id];
            out[id] = Some(Arc::new(BackendRules::new(
                state,
                b,
                &hosts,
                &known.host_states,
                clock,
                hook,
            )));
        }
        out.resize_with(self.backends.len(), || None);
        // A backend this version lacks has no pool: none of its hosts may be ejected (requests of
        // older versions may still call it) or come back ejected if a later version restores it.
        for (known, _) in self.backends.iter().zip(&out).filter(|(_, r)| r.is_none()) {
            let Some(state) = &known.state else { continue };
            state.ejected.most.store(0, Ordering::SeqCst);
            for host in &known.host_states {
                host.in_pool.store(false, Ordering::SeqCst);
                if let Some(generation) = host.forget_ejection(&state.ejected) {
                    self.ejections_ended.push((
                        Arc::clone(&known.name),
                        Arc::clone(host),
                        TransitionKind::EjectionEnded,
                        generation,
                    ));
                }
            }
        }
        out
    }

    /// The id of a backend name, given one if it is new.
    fn backend_id(&mut self, name: &str) -> usize {
        match self.backends.iter().position(|k| k.name.as_ref() == name) {
            Some(id) => id,
            None => {
                self.backends.push(KnownBackend {
                    name: Arc::from(name),
                    hosts_seen: Vec::new(),
                    host_states: Vec::new(),
                    state: None,
                });
                self.backends.len() - 1
            }
        }
    }

    /// Finds or creates the persistent admission state of every class and pool, applies the new
    /// limits to it, and returns each class's compiled settings, by class id.
    fn compile_admission(&mut self, policy: &Policy, now: u64) -> Vec<Option<ClassAdmission>> {
        let n = self.classes.len();
        self.gates.resize_with(n, || None);
        self.adaptive.resize_with(n, || None);
        self.key_tables.resize_with(n, || None);
        for p in policy.pools() {
            match self
                .pools
                .iter()
                .find(|(name, _)| name.as_ref() == p.name())
            {
                Some((_, pool)) => pool.set_limit(p.limit()),
                None => self
                    .pools
                    .push((Arc::from(p.name()), Arc::new(Pool::new(p.limit())))),
            }
        }
        let mut out: Vec<Option<ClassAdmission>> = (0..n).map(|_| None).collect();
        for c in policy.classes() {
            let Some(a) = c.admission() else { continue };
            let Some(id) = self.classes.iter().position(|k| k.as_ref() == c.name()) else {
                continue;
            };
            let gate = Arc::clone(self.gates[id].get_or_insert_with(|| {
                Arc::new(Gate::new(c.name_arc(), a.concurrency().initial()))
            }));
            let previous = self.adaptive[id];
            let adaptive = match a.concurrency() {
                Concurrency::Static(limit) => {
                    gate.sampler.stop();
                    gate.limiter.set_limit(limit);
                    None
                }
                Concurrency::Adaptive(config) => {
                    let config = config.floored(&a.headroom());
                    // The same algorithm with other settings keeps the limit it has learned: a
                    // retune in the middle of an incident must not jump back to `initial`.
                    let same = previous.is_some_and(|p| {
                        std::mem::discriminant(&p.algorithm)
                            == std::mem::discriminant(&config.algorithm)
                    });
                    if same {
                        gate.sampler.reconfigure(config, now, &gate.limiter);
                    } else {
                        gate.sampler.reset(config, now, &gate.limiter);
                    }
                    Some(config)
                }
            };
            let highest =
                adaptive.map_or(gate.limiter.limit(), |a| a.max.max(gate.limiter.limit()));
            gate.set_shares(a.headroom().0, highest, a.shadow());
            self.adaptive[id] = adaptive;
            let keys = a.per_key().map(|pk| {
                let table = match &self.key_tables[id] {
                    Some(t) if t.capacity() == pk.max_keys as usize => Arc::clone(t),
                    _ => Arc::new(KeyTable::new(pk.max_keys, self.key_seed)),
                };
                self.key_tables[id] = Some(Arc::clone(&table));
                KeyRef {
                    table,
                    limits: crate::admission::key_limits(&pk),
                }
            });
            let pools = a
                .pools()
                .filter_map(|name| {
                    let (name, pool) = self.pools.iter().find(|(n, _)| n.as_ref() == name)?;
                    let spec = policy.pools().iter().find(|p| p.name() == name.as_ref())?;
                    let dim = self
                        .dims
                        .iter()
                        .position(|d| d.name.as_ref() == spec.dimension())?;
                    Some(PoolRef {
                        name: Arc::clone(name),
                        pool: Arc::clone(pool),
                        dim,
                        unit: self.dims[dim].unit,
                    })
                })
                .collect();
            out[id] = Some(ClassAdmission {
                gate,
                headroom: a.headroom().0,
                queue: a.queue(),
                shadow: a.shadow(),
                pools,
                keys,
                adaptive,
            });
        }
        // A class without admission settings (or gone) adapts nothing: should the settings come
        // back, an adaptive limit starts again from `initial`, as it does after a static one,
        // not from what it learned before they were removed.
        for (id, compiled) in out.iter().enumerate() {
            if compiled.is_none() {
                self.adaptive[id] = None;
                if let Some(gate) = &self.gates[id] {
                    gate.sampler.stop();
                }
            }
        }
        out
    }
}

/// The per-dimension table shared by every class of a snapshot.
#[derive(Debug)]
pub(crate) struct DimTable {
    pub(crate) dims: Vec<DimInfo>,
    /// Bit `i` set when dimension `i` is a level.
    pub(crate) levels: u32,
}

impl DimTable {
    pub(crate) fn info(&self, index: usize) -> Option<&DimInfo> {
        self.dims.get(index)
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.dims.iter().position(|d| d.name.as_ref() == name)
    }
}

/// A class compiled against a snapshot's dimension table.
#[derive(Debug)]
pub(crate) struct ClassRules {
    pub(crate) name: Arc<str>,
    /// `u64::MAX`: not limited.
    pub(crate) limits: [u64; MAX_DIMENSIONS],
    /// Nanoseconds; `u64::MAX`: no deadline.
    pub(crate) wall_time: u64,
    pub(crate) child_margin: u64,
    pub(crate) priority: Priority,
    pub(crate) admission: Option<ClassAdmission>,
    /// The wall-time dimension's name (the snapshot's), for refusals made from the class alone.
    pub(crate) wall: Arc<str>,
}

/// One compiled policy version. Budgets hold the snapshot they started with.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) policy: Policy,
    pub(crate) dims: DimTable,
    /// Indexed by class id; `None` for classes this version does not have.
    pub(crate) classes: Vec<Option<ClassRules>>,
    by_name: HashMap<Arc<str>, Class>,
    /// The name of the wall-time pseudo-dimension, shared by every deadline verdict.
    pub(crate) wall: Arc<str>,
    pools: Vec<(Arc<str>, Arc<Pool>)>,
    /// Every class's admission gate the engine has made, with admission settings in this version
    /// or not: requests may still wait at a gate a reload took away, and they must still time out.
    pub(crate) gates: Vec<Arc<crate::admission::Gate>>,
    /// Backends by id; `None` for backends this version does not have.
    pub(crate) backends: Vec<Option<Arc<BackendRules>>>,
    /// The engine's clocks, here so that a budget reaches them through the snapshot it already
    /// holds instead of taking a reference count on each.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cpu_clock: Arc<dyn CpuClock>,
}

impl Snapshot {
    fn new(
        policy: Policy,
        generation: u64,
        registry: &Registry,
        mut admission: Vec<Option<ClassAdmission>>,
        clock: &Arc<dyn Clock>,
        cpu_clock: &Arc<dyn CpuClock>,
    ) -> Self {
        let dims = registry.dims.clone();
        let wall: Arc<str> = Arc::from(crate::policy::WALL_TIME);
        let mut classes: Vec<Option<ClassRules>> = Vec::new();
        classes.resize_with(registry.classes.len(), || None);
        let mut by_name = HashMap::new();
        for c in policy.classes() {
            let Some(id) = registry.classes.iter().position(|k| k.as_ref() == c.name()) else {
                continue;
            };
            let mut limits = [u64::MAX; MAX_DIMENSIONS];
            for (name, limit) in c.limit_entries() {
                if let Some(i) = dims.iter().position(|d| d.name == *name) {
                    limits[i] = *limit;
                }
            }
            if let Some(r) = c.retries() {
                limits[usize::from(crate::Counter::RETRIES.0)] = r;
            }
            if let Some(t) = c.cpu_time() {
                limits[usize::from(crate::Counter::CPU_TIME.0)] = duration_to_nanos(t);
            }
            classes[id] = Some(ClassRules {
                name: Arc::clone(c.name_arc()),
                limits,
                wall_time: c
                    .wall_time()
                    .map_or(u64::MAX, crate::clock::wall_time_nanos),
                child_margin: duration_to_nanos(c.child_margin()),
                priority: c.priority(),
                admission: admission.get_mut(id).and_then(Option::take),
                wall: Arc::clone(&wall),
            });
            by_name.insert(Arc::clone(c.name_arc()), Class(id as u16));
        }
        Snapshot {
            generation,
            policy,
            dims: DimTable {
                levels: dims
                    .iter()
                    .take(u32::BITS as usize)
                    .enumerate()
                    .filter(|(_, d)| d.kind == DimensionKind::Level)
                    .fold(0, |mask, (i, _)| mask | 1 << i),
                dims,
            },
            classes,
            by_name,
            wall,
            pools: registry.pools.clone(),
            gates: registry.gates.iter().flatten().cloned().collect(),
            backends: Vec::new(),
            clock: Arc::clone(clock),
            cpu_clock: Arc::clone(cpu_clock),
        }
    }

    /// The index of the dimension called `name`, if this version of the policy has it: a built-in
    /// or one it declares (the table also keeps the names earlier versions declared).
    pub(crate) fn declared_dim(&self, name: &str) -> Option<usize> {
        let i = self.dims.find(name)?;
        let builtin = i == crate::Counter::RETRIES.index() || i == crate::Counter::CPU_TIME.index();
        (builtin || self.policy.dimension(name).is_some()).then_some(i)
    }

    pub(crate) fn class(&self, class: Class) -> Option<&ClassRules> {
        self.classes
            .get(usize::from(class.0))
            .and_then(Option::as_ref)
    }

    pub(crate) fn class_by_name(&self, name: &str) -> Option<Class> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn backend(&self, backend: Backend) -> Option<&Arc<BackendRules>> {
        self.backends
            .get(usize::from(backend.0))
            .and_then(Option::as_ref)
    }

    pub(crate) fn backend_by_name(&self, name: &str) -> Option<Backend> {
        self.backends
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.policy.name() == name))
            .map(|i| Backend(i as u16))
    }

    pub(crate) fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, p)| p)
    }
}

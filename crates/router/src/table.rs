//! The route table: host → backends, built from `router.register` / `router.unregister`.
//!
//! Readers (every proxied request) load an immutable [`Snapshot`] through `arc-swap` and
//! never lock. Writers (the bus listener and the pruner) change a [`Registry`] under a mutex
//! and publish a new snapshot only for the hosts whose set of backends changed, so the
//! periodic refresh of an unchanged route costs no swap at all.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use strato_core::messages::RouteRegistration;

use crate::host;
use crate::sticky;

/// One app instance (or the API server) the router can send requests to.
#[derive(Debug)]
pub(crate) struct Backend {
    /// `host:port`, as registered.
    pub(crate) addr: String,
    /// The instance behind it (the DEA's private instance id, else `addr`): what a sticky
    /// session's `__VCAP_ID__` cookie names.
    pub(crate) instance: Box<str>,
    /// The address itself when `addr` is an IP literal (no name lookup per connection).
    pub(crate) socket_addr: Option<SocketAddr>,
    /// Milliseconds since the epoch until which the backend is skipped (it refused a
    /// connection); shared by every snapshot, so it survives table swaps.
    ejected_until_ms: AtomicU64,
}

impl Backend {
    /// A backend at `addr` (`host:port`) for `instance` (empty: named by its address).
    /// An id that cannot be a cookie value is not used for sticky sessions.
    pub(crate) fn new(addr: String, instance: &str) -> Option<Backend> {
        // host:port with a port, as a URI authority would be.
        Authority::try_from(addr.as_str()).ok()?.port_u16()?;
        if !instance.is_empty() && !sticky::is_cookie_value(instance) {
            tracing::warn!(addr, "instance id is not a plain token; naming the instance by its address in sticky sessions");
        }
        let instance = [instance, addr.as_str()]
            .into_iter()
            .find(|id| sticky::is_cookie_value(id))
            .unwrap_or_default();
        Some(Backend {
            socket_addr: addr.parse().ok(),
            instance: Box::from(instance),
            addr,
            ejected_until_ms: AtomicU64::new(0),
        })
    }

    /// Skips this backend until `until_ms` while others are available.
    pub(crate) fn eject_until(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }

    fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

/// The backends serving one host, with the round-robin position shared across snapshots.
#[derive(Debug)]
pub(crate) struct Pool {
    backends: Box<[Arc<Backend>]>,
    next: Arc<AtomicUsize>,
}

/// Which backends of a pool a request has already tried (by index modulo 64).
#[derive(Clone, Copy, Default)]
pub(crate) struct Tried(u64);

impl Tried {
    pub(crate) fn add(&mut self, index: usize) {
        self.0 |= 1u64 << (index % 64);
    }
    fn contains(self, index: usize) -> bool {
        self.0 & (1u64 << (index % 64)) != 0
    }
}

impl Pool {
    /// A pool with a single fixed backend (the API server).
    pub(crate) fn fixed(backend: Backend) -> Pool {
        Pool {
            backends: Box::new([Arc::new(backend)]),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }

    /// The backend of `instance` (a sticky session's), unless it was tried or is ejected.
    pub(crate) fn find(
        &self,
        instance: &[u8],
        tried: Tried,
        now_ms: u64,
    ) -> Option<(usize, &Arc<Backend>)> {
        self.backends
            .iter()
            .enumerate()
            .find(|(_, b)| b.instance.as_bytes() == instance)
            .filter(|(index, b)| !tried.contains(*index) && !b.is_ejected(now_ms))
    }

    /// [`Pool::find`] for a sticky session's instance, else [`Pool::pick`]; when every
    /// backend is ejected, the session's own is as good as any.
    pub(crate) fn pick_for(
        &self,
        instance: Option<&[u8]>,
        tried: Tried,
        now_ms: u64,
    ) -> Option<(usize, &Arc<Backend>)> {
        let Some(instance) = instance else {
            return self.pick(tried, now_ms);
        };
        if let Some(found) = self.find(instance, tried, now_ms) {
            return Some(found);
        }
        let picked = self.pick(tried, now_ms)?;
        if !picked.1.is_ejected(now_ms) {
            return Some(picked);
        }
        let own = self
            .backends
            .iter()
            .enumerate()
            .find(|(index, b)| b.instance.as_bytes() == instance && !tried.contains(*index));
        Some(own.unwrap_or(picked))
    }

    /// The next backend in round-robin order that was not tried yet, preferring ones that
    /// are not ejected; `None` once every backend was tried.
    pub(crate) fn pick(&self, tried: Tried, now_ms: u64) -> Option<(usize, &Arc<Backend>)> {
        let len = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for offset in 0..len {
            let index = start.wrapping_add(offset) % len;
            if tried.contains(index) {
                continue;
            }
            let backend = &self.backends[index];
            if !backend.is_ejected(now_ms) {
                return Some((index, backend));
            }
            fallback.get_or_insert((index, backend));
        }
        fallback
    }
}

type Snapshot = HashMap<String, Arc<Pool>>;

/// A route change as it arrives on the bus.
#[derive(Clone, Debug)]
pub enum RouteChange {
    Register(RouteRegistration),
    Unregister(RouteRegistration),
}

struct Entry {
    backend: Arc<Backend>,
    /// The DEA that registered it (empty when unknown).
    dea: String,
    last_seen: Instant,
    draining_until: Option<Instant>,
}

#[derive(Default)]
struct HostRoutes {
    entries: Vec<Entry>,
    next: Arc<AtomicUsize>,
}

impl HostRoutes {
    /// Active backends; draining ones only when no active backend is left.
    fn pool(&self) -> Option<Arc<Pool>> {
        let active: Box<[Arc<Backend>]> = self
            .entries
            .iter()
            .filter(|e| e.draining_until.is_none())
            .map(|e| e.backend.clone())
            .collect();
        let backends = if active.is_empty() {
            self.entries.iter().map(|e| e.backend.clone()).collect()
        } else {
            active
        };
        (!backends.is_empty()).then(|| {
            Arc::new(Pool {
                backends,
                next: self.next.clone(),
            })
        })
    }
}

/// The writer side: every backend with its timestamps, and which hosts need republishing.
#[derive(Default)]
struct Registry {
    hosts: HashMap<String, HostRoutes>,
    dirty: HashSet<String>,
    /// When each DEA last sent a heartbeat.
    deas: HashMap<String, Instant>,
    /// When anything (a heartbeat, a route message) last came in from the bus.
    last_heard: Option<Instant>,
}

impl Registry {
    fn register(&mut self, host: &str, addr: &str, instance: &str, dea: &str, now: Instant) {
        let routes = self.hosts.entry(host.to_string()).or_default();
        let mut changed = false;
        match routes.entries.iter_mut().find(|e| e.backend.addr == addr) {
            Some(entry) => {
                entry.last_seen = now;
                // Another instance on the same address (a port reused after a restart).
                if !instance.is_empty() && *entry.backend.instance != *instance {
                    if let Some(backend) = Backend::new(addr.to_string(), instance) {
                        entry.backend = Arc::new(backend);
                        changed = true;
                    }
                }
                if entry.dea != dea {
                    entry.dea = dea.to_string();
                }
                changed |= entry.draining_until.take().is_some();
            }
            None => {
                let Some(backend) = Backend::new(addr.to_string(), instance) else {
                    tracing::warn!(
                        host,
                        addr,
                        "ignoring a registration whose backend is not host:port"
                    );
                    if routes.entries.is_empty() {
                        self.hosts.remove(host);
                    }
                    return;
                };
                routes.entries.push(Entry {
                    backend: Arc::new(backend),
                    dea: dea.to_string(),
                    last_seen: now,
                    draining_until: None,
                });
                changed = true;
            }
        }
        // A live backend arrived: the drained ones of an unmapped route are no longer needed.
        let before = routes.entries.len();
        routes.entries.retain(|e| e.draining_until.is_none());
        changed |= routes.entries.len() != before;
        if changed {
            self.dirty.insert(host.to_string());
        }
    }

    fn unregister(&mut self, host: &str, addr: &str, now: Instant, drain: Duration) {
        let Some(routes) = self.hosts.get_mut(host) else {
            return;
        };
        let Some(index) = routes.entries.iter().position(|e| e.backend.addr == addr) else {
            return;
        };
        if drain.is_zero() {
            routes.entries.remove(index);
        } else if routes.entries[index].draining_until.is_none() {
            routes.entries[index].draining_until = Some(now + drain);
        } else {
            return;
        }
        if routes.entries.is_empty() {
            self.hosts.remove(host);
        }
        self.dirty.insert(host.to_string());
    }

    fn prune(&mut self, now: Instant, ttl: Duration, dea_deadline: Duration) {
        // DEAs that stopped sending heartbeats are gone (crashed, cut off): their
        // instances are restarted elsewhere, so stop sending requests there now rather
        // than when their routes expire. A DEA never heard from is judged by the TTL only.
        let lost: HashSet<String> = self
            .deas
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= dea_deadline)
            .map(|(dea, _)| dea.clone())
            .collect();
        for dea in &lost {
            self.deas.remove(dea);
            tracing::warn!(dea = %dea, "no heartbeat from this DEA within {dea_deadline:?}: dropping its routes");
        }
        let dirty = &mut self.dirty;
        self.hosts.retain(|host, routes| {
            let before = routes.entries.len();
            routes.entries.retain(|e| {
                !lost.contains(&e.dea)
                    && match e.draining_until {
                        Some(until) => until > now,
                        None => now.saturating_duration_since(e.last_seen) < ttl,
                    }
            });
            if routes.entries.len() != before {
                dirty.insert(host.clone());
            }
            !routes.entries.is_empty()
        });
    }
}

/// The live route table. Cheap to read from any number of tasks at once.
pub struct RouteTable {
    snapshot: ArcSwap<Snapshot>,
    registry: Mutex<Registry>,
    ttl: Duration,
    drain: Duration,
    dea_deadline: Duration,
}

impl RouteTable {
    /// An empty table whose backends expire after `ttl` without a refresh and keep serving
    /// for `drain` after they are unregistered.
    pub fn new(ttl: Duration, drain: Duration) -> RouteTable {
        RouteTable {
            snapshot: ArcSwap::from_pointee(Snapshot::new()),
            registry: Mutex::new(Registry::default()),
            ttl,
            drain,
            dea_deadline: strato_core::timings::HEARTBEAT_DEADLINE,
        }
    }

    /// Drops the backends of a DEA whose heartbeats stop for `deadline` (see
    /// [`RouteTable::dea_heartbeat`]).
    pub fn with_dea_deadline(mut self, deadline: Duration) -> RouteTable {
        self.dea_deadline = deadline;
        self
    }

    /// Records a heartbeat of DEA `dea`.
    pub fn dea_heartbeat(&self, dea: &str) {
        self.dea_heartbeat_at(dea, Instant::now());
    }

    fn dea_heartbeat_at(&self, dea: &str, now: Instant) {
        let mut registry = self.lock();
        registry.last_heard = Some(now);
        if dea.is_empty() {
            return;
        }
        match registry.deas.get_mut(dea) {
            Some(seen) => *seen = now,
            None => {
                registry.deas.insert(dea.to_string(), now);
            }
        }
    }

    /// The backends (`host:port`) a request for `host` may go to now, in table order;
    /// `None` when the host has no route. `host` may carry a port or odd case.
    pub fn lookup(&self, host: &str) -> Option<Vec<String>> {
        self.pool(&host::normalize(host))
            .map(|pool| pool.backends.iter().map(|b| b.addr.clone()).collect())
    }

    /// Every routed host, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.snapshot.load().keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// The pool for an already normalized host.
    pub(crate) fn pool(&self, host: &str) -> Option<Arc<Pool>> {
        self.snapshot.load().get(host).cloned()
    }

    pub fn register(&self, registration: &RouteRegistration) {
        self.apply_at(
            [RouteChange::Register(registration.clone())],
            Instant::now(),
        );
    }

    pub fn unregister(&self, registration: &RouteRegistration) {
        self.apply_at(
            [RouteChange::Unregister(registration.clone())],
            Instant::now(),
        );
    }

    /// Applies a batch of changes and publishes one new snapshot for all of them.
    pub fn apply(&self, changes: impl IntoIterator<Item = RouteChange>) {
        self.apply_at(changes, Instant::now());
    }

    /// Drops backends not refreshed within the TTL and drained backends whose time is up.
    pub fn prune(&self) {
        self.prune_at(Instant::now());
    }

    /// Counts every backend and DEA as heard from now: while the router cannot hear the
    /// bus, silence says nothing about them, so their routes are kept (CF's gorouter does
    /// the same). Drains still end on time.
    pub fn hold(&self) {
        let now = Instant::now();
        let mut registry = self.lock();
        for routes in registry.hosts.values_mut() {
            for entry in routes.entries.iter_mut() {
                entry.last_seen = now;
            }
        }
        for seen in registry.deas.values_mut() {
            *seen = now;
        }
        drop(registry);
        self.prune_at(now);
    }

    /// How long nothing has come in from the bus while DEAs are known (zero when none
    /// is): a router that hears no DEA at all for a while is more likely deaf than every
    /// DEA dead at once.
    pub fn silent_for(&self) -> Duration {
        let registry = self.lock();
        if registry.deas.is_empty() {
            return Duration::ZERO;
        }
        registry
            .last_heard
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    fn apply_at(&self, changes: impl IntoIterator<Item = RouteChange>, now: Instant) {
        let mut registry = self.lock();
        registry.last_heard = Some(now);
        for change in changes {
            let (registration, is_register) = match &change {
                RouteChange::Register(r) => (r, true),
                RouteChange::Unregister(r) => (r, false),
            };
            let addr = format!("{}:{}", registration.host, registration.port);
            for uri in &registration.uris {
                let host = host::route_host(uri);
                if host.is_empty() {
                    continue;
                }
                if is_register {
                    registry.register(
                        &host,
                        &addr,
                        &registration.private_instance_id,
                        &registration.dea,
                        now,
                    );
                } else {
                    registry.unregister(&host, &addr, now, self.drain);
                }
            }
        }
        self.publish(&mut registry);
    }

    fn prune_at(&self, now: Instant) {
        let mut registry = self.lock();
        registry.prune(now, self.ttl, self.dea_deadline);
        self.publish(&mut registry);
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, registry: &mut Registry) {
        if registry.dirty.is_empty() {
            return;
        }
        let mut next: Snapshot = (**self.snapshot.load()).clone();
        for host in registry.dirty.drain() {
            match registry.hosts.get(&host).and_then(HostRoutes::pool) {
                Some(pool) => next.insert(host, pool),
                None => next.remove(&host),
            };
        }
        self.snapshot.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(uris: &[&str], port: u16) -> RouteRegistration {
        RouteRegistration {
            dea: "dea-1".into(),
            app: "app-1".into(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
            host: "127.0.0.1".into(),
            port,
            tags: Default::default(),
            private_instance_id: String::new(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(Duration::from_secs(20), Duration::from_secs(5))
    }

    #[test]
    fn register_adds_each_uri_once() {
        let t = table();
        let now = Instant::now();
        t.apply_at(
            [RouteChange::Register(reg(
                &["A.example.com", "b.example.com"],
                1,
            ))],
            now,
        );
        t.apply_at([RouteChange::Register(reg(&["a.example.com"], 1))], now);
        assert_eq!(t.lookup("a.example.com:80").unwrap(), vec!["127.0.0.1:1"]);
        assert_eq!(t.lookup("B.EXAMPLE.COM.").unwrap(), vec!["127.0.0.1:1"]);
        assert_eq!(t.hosts(), vec!["a.example.com", "b.example.com"]);
    }

    #[test]
    fn a_new_instance_on_a_reused_address_is_found_by_its_own_id() {
        let t = table();
        let with_id = |id: &str| RouteRegistration {
            private_instance_id: id.into(),
            ..reg(&["a.example.com"], 1)
        };
        t.register(&with_id("old"));
        let pool = t.pool("a.example.com").unwrap();
        assert!(pool.find(b"old", Tried::default(), 0).is_some());
        t.register(&with_id("new"));
        let pool = t.pool("a.example.com").unwrap();
        assert!(pool.find(b"old", Tried::default(), 0).is_none());
        let (index, backend) = pool.find(b"new", Tried::default(), 0).unwrap();
        assert_eq!(&*backend.instance, "new");
        // Tried or ejected: the session's instance is not picked again.
        let mut tried = Tried::default();
        tried.add(index);
        assert!(pool.find(b"new", tried, 0).is_none());
        backend.eject_until(10);
        assert!(pool.find(b"new", Tried::default(), 5).is_none());
        // Every backend ejected: the session's own is as good as any.
        t.register(&RouteRegistration {
            private_instance_id: "other".into(),
            ..reg(&["a.example.com"], 3)
        });
        let pool = t.pool("a.example.com").unwrap();
        for b in pool.backends.iter() {
            b.eject_until(10);
        }
        for _ in 0..4 {
            let (_, picked) = pool.pick_for(Some(b"new"), Tried::default(), 5).unwrap();
            assert_eq!(&*picked.instance, "new");
        }
        // An id that could smuggle cookie attributes is not used.
        t.register(&RouteRegistration {
            private_instance_id: "x; Domain=evil".into(),
            ..reg(&["c.example.com"], 4)
        });
        let pool = t.pool("c.example.com").unwrap();
        assert!(pool.find(b"127.0.0.1:4", Tried::default(), 0).is_some());
        // No id registered: the address names the instance.
        t.register(&reg(&["b.example.com"], 2));
        assert!(t
            .pool("b.example.com")
            .unwrap()
            .find(b"127.0.0.1:2", Tried::default(), 0)
            .is_some());
    }

    #[test]
    fn refresh_without_change_keeps_the_snapshot() {
        let t = table();
        t.register(&reg(&["a.example.com"], 1));
        let before = t.snapshot.load_full();
        t.register(&reg(&["a.example.com"], 1));
        assert!(Arc::ptr_eq(&before, &t.snapshot.load_full()));
    }

    #[test]
    fn round_robin_skips_ejected_and_tried() {
        let t = table();
        t.register(&reg(&["a.x"], 1));
        t.register(&reg(&["a.x"], 2));
        let pool = t.pool("a.x").unwrap();
        let picks: Vec<usize> = (0..4)
            .map(|_| pool.pick(Tried::default(), 0).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        pool.backends[0].eject_until(100);
        assert_eq!(pool.pick(Tried::default(), 50).unwrap().0, 1);
        assert_eq!(pool.pick(Tried::default(), 50).unwrap().0, 1);
        // Once only ejected backends are left, they are still used.
        let mut tried = Tried::default();
        tried.add(1);
        assert_eq!(pool.pick(tried, 50).unwrap().0, 0);
        tried.add(0);
        assert!(pool.pick(tried, 50).is_none());
    }

    #[test]
    fn a_hold_keeps_routes_past_their_ttl_and_silence_counts_only_with_deas() {
        let t = table();
        let long_ago = Instant::now() - Duration::from_secs(60);
        t.apply_at([RouteChange::Register(reg(&["a.x"], 1))], long_ago);
        assert_eq!(t.silent_for(), Duration::ZERO, "no DEA known: never deaf");
        t.hold();
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:1"], "held");
        t.prune();
        assert_eq!(
            t.lookup("a.x").unwrap(),
            vec!["127.0.0.1:1"],
            "refreshed by the hold"
        );
        t.dea_heartbeat_at("dea-1", long_ago);
        assert!(t.silent_for() >= Duration::from_secs(59));
        t.dea_heartbeat("dea-1");
        assert!(t.silent_for() < Duration::from_secs(5));
    }

    #[test]
    fn ttl_expires_unrefreshed_backends() {
        let t = table();
        let start = Instant::now();
        t.apply_at([RouteChange::Register(reg(&["a.x"], 1))], start);
        t.apply_at(
            [RouteChange::Register(reg(&["a.x"], 2))],
            start + Duration::from_secs(15),
        );
        t.prune_at(start + Duration::from_secs(19));
        assert_eq!(t.lookup("a.x").unwrap().len(), 2);
        t.prune_at(start + Duration::from_secs(21));
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:2"]);
        t.prune_at(start + Duration::from_secs(40));
        assert!(t.lookup("a.x").is_none());
        assert!(t.lock().hosts.is_empty());
    }

    #[test]
    fn a_dea_whose_heartbeats_stop_loses_its_routes() {
        let t = table().with_dea_deadline(Duration::from_secs(6));
        let start = Instant::now();
        let mut other = reg(&["a.x"], 2);
        other.dea = "dea-2".into();
        let mut unknown = reg(&["a.x"], 3);
        unknown.dea = "dea-3".into();
        t.apply_at(
            [
                RouteChange::Register(reg(&["a.x"], 1)),
                RouteChange::Register(other.clone()),
                RouteChange::Register(unknown),
            ],
            start,
        );
        t.dea_heartbeat_at("dea-1", start);
        t.dea_heartbeat_at("dea-2", start);
        t.dea_heartbeat_at("dea-2", start + Duration::from_secs(4));
        t.prune_at(start + Duration::from_secs(5));
        assert_eq!(t.lookup("a.x").unwrap().len(), 3);
        t.prune_at(start + Duration::from_secs(6));
        assert_eq!(
            t.lookup("a.x").unwrap(),
            vec!["127.0.0.1:2", "127.0.0.1:3"],
            "dea-1 is lost; dea-2 is alive; dea-3 never sent a heartbeat (TTL only)"
        );
        // Back again: it heartbeats and registers, and is routed to.
        t.dea_heartbeat_at("dea-1", start + Duration::from_secs(8));
        t.apply_at(
            [RouteChange::Register(reg(&["a.x"], 1))],
            start + Duration::from_secs(8),
        );
        t.prune_at(start + Duration::from_secs(9));
        assert_eq!(t.lookup("a.x").unwrap().len(), 3);
    }

    #[test]
    fn unregistered_backend_drains_then_goes() {
        let t = table();
        let start = Instant::now();
        t.apply_at([RouteChange::Register(reg(&["a.x"], 1))], start);
        t.apply_at([RouteChange::Unregister(reg(&["a.x"], 1))], start);
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:1"]);
        t.prune_at(start + Duration::from_secs(4));
        assert!(t.lookup("a.x").is_some());
        t.prune_at(start + Duration::from_secs(5));
        assert!(t.lookup("a.x").is_none());
    }

    #[test]
    fn new_backend_ends_the_drain_at_once() {
        let t = table();
        t.register(&reg(&["a.x"], 1));
        t.unregister(&reg(&["a.x"], 1));
        t.register(&reg(&["a.x"], 2));
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:2"]);
    }

    #[test]
    fn draining_backend_gets_no_requests_while_others_are_live() {
        let t = table();
        t.register(&reg(&["a.x"], 1));
        t.register(&reg(&["a.x"], 2));
        t.unregister(&reg(&["a.x"], 1));
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:2"]);
    }

    #[test]
    fn re_registering_a_draining_backend_revives_it() {
        let t = table();
        let start = Instant::now();
        t.apply_at([RouteChange::Register(reg(&["a.x"], 1))], start);
        t.apply_at([RouteChange::Unregister(reg(&["a.x"], 1))], start);
        t.apply_at([RouteChange::Register(reg(&["a.x"], 1))], start);
        t.prune_at(start + Duration::from_secs(10));
        assert_eq!(t.lookup("a.x").unwrap(), vec!["127.0.0.1:1"]);
    }

    #[test]
    fn zero_drain_removes_at_once_and_bad_backends_are_ignored() {
        let t = RouteTable::new(Duration::from_secs(20), Duration::ZERO);
        t.register(&reg(&["a.x"], 1));
        t.unregister(&reg(&["a.x"], 1));
        assert!(t.lookup("a.x").is_none());
        let mut bad = reg(&["b.x"], 1);
        bad.host = "bad host".into();
        t.register(&bad);
        assert!(t.lookup("b.x").is_none());
        assert!(t.lock().hosts.is_empty());
    }

    mod properties {
        //! Whatever sequence of registrations, unregistrations and time passing the bus
        //! brings, the table never loses a live backend, never routes to one that expired
        //! or finished draining, and never sends to a draining one while a live one exists.

        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        const HOSTS: [&str; 3] = ["a.x", "b.x", "c.x"];
        const TTL: u64 = 20;
        const DRAIN: u64 = 5;

        #[derive(Clone, Debug)]
        enum Op {
            Register(usize, u16),
            Unregister(usize, u16),
            /// Seconds pass, then the periodic prune runs.
            Wait(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..HOSTS.len(), 1u16..5).prop_map(|(h, p)| Op::Register(h, p)),
                2 => (0..HOSTS.len(), 1u16..5).prop_map(|(h, p)| Op::Unregister(h, p)),
                1 => (0u64..30).prop_map(Op::Wait),
            ]
        }

        /// What the bus said about one backend of one host, and when.
        #[derive(Default, Clone, Copy)]
        struct Seen {
            registered: Option<u64>,
            unregistered: Option<u64>,
        }

        proptest! {
            #[test]
            fn live_backends_stay_dead_ones_go(ops in proptest::collection::vec(op(), 1..60)) {
                let t = RouteTable::new(Duration::from_secs(TTL), Duration::from_secs(DRAIN));
                let start = Instant::now();
                let mut now = 0u64;
                let mut seen: HashMap<(usize, u16), Seen> = HashMap::new();
                for op in ops {
                    let at = start + Duration::from_secs(now);
                    match op {
                        Op::Register(h, p) => {
                            t.apply_at([RouteChange::Register(reg(&[HOSTS[h]], p))], at);
                            let s = seen.entry((h, p)).or_default();
                            s.registered = Some(now);
                            s.unregistered = None;
                        }
                        Op::Unregister(h, p) => {
                            t.apply_at([RouteChange::Unregister(reg(&[HOSTS[h]], p))], at);
                            let s = seen.entry((h, p)).or_default();
                            if s.registered.is_some() && s.unregistered.is_none() {
                                s.unregistered = Some(now);
                            }
                        }
                        Op::Wait(secs) => {
                            now += secs;
                            t.prune_at(start + Duration::from_secs(now));
                        }
                    }
                    for (h, host) in HOSTS.iter().enumerate() {
                        let routed = t.lookup(host).unwrap_or_default();
                        let mut unique = routed.clone();
                        unique.sort();
                        unique.dedup();
                        prop_assert_eq!(unique.len(), routed.len(), "duplicates for {}", host);
                        let state = |p: u16| seen.get(&(h, p)).copied().unwrap_or_default();
                        let live: Vec<u16> = (1u16..5)
                            .filter(|&p| {
                                let s = state(p);
                                s.unregistered.is_none()
                                    && s.registered.is_some_and(|r| now - r < TTL)
                            })
                            .collect();
                        for p in &live {
                            prop_assert!(
                                routed.contains(&format!("127.0.0.1:{p}")),
                                "live backend {} of {} lost: {:?}", p, host, routed
                            );
                        }
                        for addr in &routed {
                            let p: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
                            let s = state(p);
                            prop_assert!(s.registered.is_some(), "{} never registered", addr);
                            match s.unregistered {
                                None => prop_assert!(live.contains(&p), "{} expired", addr),
                                Some(u) => {
                                    prop_assert!(now - u < DRAIN, "{} drained too long", addr);
                                    prop_assert!(live.is_empty(), "draining {} while live", addr);
                                }
                            }
                        }
                        prop_assert_eq!(
                            t.hosts().contains(&host.to_string()),
                            !routed.is_empty()
                        );
                    }
                }
            }
        }
    }
}

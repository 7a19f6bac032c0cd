//! The live backend set: the queue in force, its selector, and per-backend counters.
//!
//! The table for one queue version is immutable and held in an [`ArcSwap`]: requests load
//! it without a lock, a new queue swaps in a new table. Per-backend counters
//! ([`BackendStats`]) are atomics carried over from table to table by backend id, so
//! in-flight counts and ejections survive queue updates. A backend that a version omits
//! keeps its counters in a side map ("retired", touched only by [`Backends::replace`] and
//! [`Backends::report`]) while requests on it are still running: reports keep showing them,
//! and a later version that brings the id back picks the same counters up again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use log::{info, warn};
use protocol::{BackendReport, Category, Queue, QueueItem, Report};
use rand::Rng;

use crate::config::EjectionConfig;
use crate::histogram::{quantile_ms, FineHistogram};
use crate::selection::{weights, Selector, Strategy};
use crate::upstream::ConnPool;

/// Counters for one backend, shared by every table that contains it.
#[derive(Default)]
pub struct BackendStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub status: [AtomicU64; 5],
    pub ejections: AtomicU64,
    interval_started: AtomicU64,
    interval_requests: AtomicU64,
    interval_errors: AtomicU64,
    interval_latency: FineHistogram,
    consecutive_failures: AtomicU32,
    ejection_streak: AtomicU32,
    /// Milliseconds since the set's epoch until which the backend is ejected.
    ejected_until_ms: AtomicU64,
}

impl BackendStats {
    /// Nothing in flight and nothing counted since the last report.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.interval_requests.load(Ordering::Relaxed) == 0
            && self.interval_started.load(Ordering::Relaxed) == 0
    }

    /// This backend's part of a report; starts its next interval.
    fn take_report(&self, id: &str) -> BackendReport {
        let counts = self.interval_latency.take();
        BackendReport {
            id: id.to_string(),
            started: Some(self.interval_started.swap(0, Ordering::Relaxed)),
            requests: self.interval_requests.swap(0, Ordering::Relaxed),
            errors: self.interval_errors.swap(0, Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            latency_p50_ms: quantile_ms(&counts, 0.5),
            latency_p99_ms: quantile_ms(&counts, 0.99),
        }
    }
}

/// One backend of one queue version.
pub struct Backend {
    pub id: String,
    pub name: String,
    pub address: String,
    /// `address` parsed for building upstream URIs; `None` if it does not parse.
    pub authority: Option<Authority>,
    pub score: f64,
    pub category: Category,
    pub weight: f64,
    pub stats: Arc<BackendStats>,
    /// Idle keep-alive connections; carried over to the next table while the address holds.
    pub conns: Arc<ConnPool>,
}

/// An immutable snapshot: one queue version and its selector.
pub struct Table {
    pub version: u64,
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
}

/// Length of the `streak`-th ejection in a row: `base · 2^(streak−1)`, capped at `max`.
pub fn ejection_period(cfg: &EjectionConfig, streak: u32) -> Duration {
    let factor = 1u32 << streak.saturating_sub(1).min(20);
    cfg.base.saturating_mul(factor).min(cfg.max)
}

/// How a request to a backend ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived (any status).
    Response(u16),
    /// Connect error, reset, protocol error or timeout.
    Failure,
}

/// The backend set in force, shared by the proxy, the agent link and the admin API.
pub struct Backends {
    table: ArcSwap<Table>,
    strategy: Strategy,
    ejection: EjectionConfig,
    epoch: Instant,
    /// Counters of backends omitted by the queue in force, by id, kept while requests on
    /// them run (or their last counts are unreported). Never touched on the request path.
    retired: Mutex<HashMap<String, Arc<BackendStats>>>,
}

impl Backends {
    pub fn new(strategy: Strategy, ejection: EjectionConfig) -> Backends {
        Backends {
            table: ArcSwap::from_pointee(Table {
                version: 0,
                backends: Vec::new(),
                selector: Selector::new(strategy, Vec::new()),
            }),
            strategy,
            ejection,
            epoch: Instant::now(),
            retired: Mutex::default(),
        }
    }

    /// The table in force.
    pub fn load(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn version(&self) -> u64 {
        self.table.load().version
    }

    /// Replaces the queue. Counters of backends that stay (same id) are kept; those of
    /// backends the queue omits are retired until drained, and taken up again if the id
    /// comes back.
    pub fn replace(&self, queue: &Queue) {
        // Held until the new table is stored, so `report` sees table and retired consistent.
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.table.load();
        let mut kept: HashMap<&str, &Arc<Backend>> =
            old.backends.iter().map(|b| (b.id.as_str(), b)).collect();
        let pairs: Vec<(Category, f64)> =
            queue.items.iter().map(|i| (i.category, i.score)).collect();
        let w = weights(&pairs);
        let backends: Vec<Arc<Backend>> = queue
            .items
            .iter()
            .zip(&w)
            .map(|(item, &weight)| {
                let (stats, conns) = match kept.remove(item.id.as_str()) {
                    Some(b) if b.address == item.address => (b.stats.clone(), b.conns.clone()),
                    Some(b) => (b.stats.clone(), Arc::default()),
                    None => match retired.remove(&item.id) {
                        Some(stats) => (stats, Arc::default()),
                        None => Default::default(),
                    },
                };
                Arc::new(make_backend(item, weight, stats, conns))
            })
            .collect();
        // Retired earlier and drained (and reported) since: forget them. Those retired by
        // this version stay at least until the next one (a request may still start on them
        // from a table loaded just before the swap).
        retired.retain(|_, s| !s.is_idle());
        for b in kept.into_values() {
            retired.insert(b.id.clone(), b.stats.clone());
        }
        let selector = Selector::new(self.strategy, w);
        info!(
            "queue v{} applied: {} backends, {} selectable, strategy={}",
            queue.version,
            backends.len(),
            selector.eligible(),
            self.strategy.as_str()
        );
        self.table.store(Arc::new(Table {
            version: queue.version,
            backends,
            selector,
        }));
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the backend is currently ejected.
    pub fn is_ejected(&self, b: &Backend) -> bool {
        b.stats.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Picks a backend of `table`, skipping indices in `tried`. Ejected backends are
    /// skipped unless every remaining backend is ejected (fail open).
    pub fn pick(&self, table: &Table, rng: &mut impl Rng, tried: &[usize]) -> Option<usize> {
        self.pick_at(table, rng, tried, Instant::now())
    }

    /// [`Backends::pick`] with the time already read (`at`).
    pub fn pick_at(
        &self,
        table: &Table,
        rng: &mut impl Rng,
        tried: &[usize],
        at: Instant,
    ) -> Option<usize> {
        let now = self.ms_at(at);
        let in_flight = |i: usize| table.backends[i].stats.in_flight.load(Ordering::Relaxed);
        let healthy = |i: usize| {
            !tried.contains(&i)
                && table.backends[i].authority.is_some()
                && table.backends[i]
                    .stats
                    .ejected_until_ms
                    .load(Ordering::Relaxed)
                    <= now
        };
        table.selector.pick(rng, healthy, in_flight).or_else(|| {
            table.selector.pick(
                rng,
                |i| !tried.contains(&i) && table.backends[i].authority.is_some(),
                in_flight,
            )
        })
    }

    /// Records how a request to `b` ended; ejects it after too many failures in a row.
    pub fn record(&self, b: &Backend, outcome: Outcome, latency: Duration) {
        let s = &b.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.interval_requests.fetch_add(1, Ordering::Relaxed);
        let failed = match outcome {
            Outcome::Response(status) => {
                let class = usize::from((status / 100).clamp(1, 5)) - 1;
                s.status[class].fetch_add(1, Ordering::Relaxed);
                s.interval_latency.record(latency);
                status >= 500
            }
            Outcome::Failure => true,
        };
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
            s.interval_errors.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == Outcome::Failure {
            let n = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.ejection.consecutive_failures {
                s.consecutive_failures.store(0, Ordering::Relaxed);
                let streak = s.ejection_streak.fetch_add(1, Ordering::Relaxed) + 1;
                let period = ejection_period(&self.ejection, streak);
                let until = self.now_ms() + u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                s.ejected_until_ms.store(until, Ordering::Relaxed);
                s.ejections.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "backend {} ({}) ejected for {:?} after {n} consecutive failures (ejection #{streak} in a row)",
                    b.name, b.address, period
                );
            }
        } else {
            // Only write when something changes: keeps the hot path free of shared writes.
            if s.consecutive_failures.load(Ordering::Relaxed) != 0 {
                s.consecutive_failures.store(0, Ordering::Relaxed);
            }
            if s.ejection_streak.load(Ordering::Relaxed) != 0 && !self.is_ejected(b) {
                s.ejection_streak.store(0, Ordering::Relaxed);
                info!("backend {} ({}) healthy again", b.name, b.address);
            }
        }
    }

    /// Builds the report for the interval that ends now and starts the next one. Backends
    /// the queue in force omits are included while they have requests in flight (or
    /// counts not reported yet), so the agent sees them until they are drained.
    pub fn report(&self, balancer: &str, interval: Duration) -> Report {
        let retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let table = self.load();
        let mut backends: Vec<BackendReport> = table
            .backends
            .iter()
            .map(|b| b.stats.take_report(&b.id))
            .collect();
        let mut omitted: Vec<BackendReport> = retired
            .iter()
            .filter(|(_, s)| !s.is_idle())
            .map(|(id, s)| s.take_report(id))
            .collect();
        drop(retired);
        omitted.sort_by(|a, b| a.id.cmp(&b.id));
        backends.extend(omitted);
        Report {
            balancer: balancer.to_string(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            queue_version: table.version,
            backends,
            task_queue_depth: None,
        }
    }
}

fn make_backend(
    item: &QueueItem,
    weight: f64,
    stats: Arc<BackendStats>,
    conns: Arc<ConnPool>,
) -> Backend {
    let authority = item
        .address
        .parse::<Authority>()
        .ok()
        .filter(|a| a.port_u16().is_some());
    if authority.is_none() {
        warn!(
            "backend {} has an unusable address {:?} (expected host:port); it will not be picked",
            item.id, item.address
        );
    }
    Backend {
        id: item.id.clone(),
        name: item.name.clone(),
        address: item.address.clone(),
        authority,
        score: item.score,
        category: item.category,
        weight,
        stats,
        conns,
    }
}

/// A queue made from a static `host:port` list (all `LU`, score 100).
pub fn static_queue(addresses: &[String]) -> Queue {
    Queue {
        version: 0,
        observed: true,
        items: addresses
            .iter()
            .map(|a| QueueItem {
                id: a.clone(),
                name: a.clone(),
                address: a.clone(),
                score: 100.0,
                category: Category::Low,
            })
            .collect(),
    }
}

/// Decrements a backend's in-flight count when dropped (when the response body ends).
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn start(b: Arc<Backend>) -> InFlight {
        b.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        b.stats.interval_started.fetch_add(1, Ordering::Relaxed);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn cfg() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        }
    }

    fn item(id: &str, category: Category) -> QueueItem {
        QueueItem {
            id: id.into(),
            name: id.into(),
            address: format!("{id}:80"),
            score: 80.0,
            category,
        }
    }

    #[test]
    fn ejection_period_doubles_and_caps() {
        let c = cfg();
        let secs: Vec<u64> = (1..=5).map(|s| ejection_period(&c, s).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
        assert_eq!(ejection_period(&c, 1000).as_secs(), 60);
    }

    #[test]
    fn failures_eject_and_success_resets() {
        let set = Backends::new(Strategy::Weighted, cfg());
        set.replace(&Queue {
            observed: true,
            version: 1,
            items: vec![item("a", Category::Low), item("b", Category::Low)],
        });
        let t = set.load();
        let a = &t.backends[0];
        set.record(a, Outcome::Failure, Duration::ZERO);
        set.record(a, Outcome::Failure, Duration::ZERO);
        set.record(a, Outcome::Response(200), Duration::ZERO);
        set.record(a, Outcome::Failure, Duration::ZERO);
        set.record(a, Outcome::Failure, Duration::ZERO);
        assert!(!set.is_ejected(a), "success in between resets the count");
        set.record(a, Outcome::Failure, Duration::ZERO);
        assert!(set.is_ejected(a));
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| set.pick(&t, &mut rng, &[]) == Some(1)));
        // Every backend ejected or tried: fail open rather than refuse.
        assert_eq!(set.pick(&t, &mut rng, &[1]), Some(0));
        assert_eq!(set.pick(&t, &mut rng, &[0, 1]), None);
    }

    #[test]
    fn stats_survive_queue_updates_and_reports_reset() {
        let set = Backends::new(Strategy::Weighted, cfg());
        set.replace(&Queue {
            observed: true,
            version: 1,
            items: vec![item("a", Category::Low)],
        });
        let t1 = set.load();
        let guard = InFlight::start(t1.backends[0].clone());
        set.record(
            &t1.backends[0],
            Outcome::Response(503),
            Duration::from_millis(5),
        );
        set.replace(&Queue {
            observed: true,
            version: 2,
            items: vec![item("b", Category::Init), item("a", Category::Sundown)],
        });
        let r = set.report("me", Duration::from_secs(1));
        assert_eq!(r.queue_version, 2);
        let a = r.backends.iter().find(|b| b.id == "a").unwrap();
        assert_eq!((a.requests, a.errors, a.in_flight), (1, 1, 1));
        assert!(a.latency_p50_ms.unwrap() > 4.0);
        drop(guard);
        let r = set.report("me", Duration::from_secs(1));
        let a = r.backends.iter().find(|b| b.id == "a").unwrap();
        assert_eq!((a.requests, a.errors, a.in_flight), (0, 0, 0));
        assert_eq!(a.latency_p50_ms, None);
    }

    fn queue(version: u64, ids: &[&str]) -> Queue {
        Queue {
            version,
            items: ids.iter().map(|id| item(id, Category::Low)).collect(),
            observed: true,
        }
    }

    fn in_flight_of(r: &Report, id: &str) -> Option<u64> {
        r.backends.iter().find(|b| b.id == id).map(|b| b.in_flight)
    }

    #[test]
    fn an_omitted_backend_keeps_its_stats_until_drained() {
        for gap in [&[][..], &["b"][..]] {
            let set = Backends::new(Strategy::Weighted, cfg());
            set.replace(&queue(1, &["a"]));
            let guard = InFlight::start(set.load().backends[0].clone());

            set.replace(&queue(2, gap));
            let r = set.report("me", Duration::from_secs(1));
            assert_eq!(r.queue_version, 2);
            assert_eq!(in_flight_of(&r, "a"), Some(1), "gap {gap:?}: {r:?}");
            assert_eq!(in_flight_of(&r, "b"), gap.first().map(|_| 0));

            set.replace(&queue(3, &["a"]));
            let t = set.load();
            assert!(Arc::ptr_eq(&t.backends[0].stats, &guard.0.stats));
            assert_eq!(t.backends[0].stats.in_flight.load(Ordering::Relaxed), 1);
            let r = set.report("me", Duration::from_secs(1));
            assert_eq!(r.backends.len(), 1, "{r:?}");
            assert_eq!(in_flight_of(&r, "a"), Some(1));

            drop(guard);
            assert_eq!(t.backends[0].stats.in_flight.load(Ordering::Relaxed), 0);
            let r = set.report("me", Duration::from_secs(1));
            assert_eq!(in_flight_of(&r, "a"), Some(0));
        }
    }

    #[test]
    fn an_omitted_backend_is_reported_until_drained_then_forgotten() {
        let set = Backends::new(Strategy::Weighted, cfg());
        set.replace(&queue(1, &["a", "b"]));
        let t1 = set.load();
        let guard = InFlight::start(t1.backends[0].clone());
        set.replace(&queue(2, &["c"]));
        assert_eq!(set.retired.lock().unwrap().len(), 2, "a and b retired");
        let r = set.report("me", Duration::from_secs(1));
        let ids: Vec<&str> = r.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["c", "a"], "b has nothing in flight: not reported");

        // a's request ends while it is absent: its counts go out once more.
        set.record(&t1.backends[0], Outcome::Response(200), Duration::ZERO);
        drop(guard);
        drop(t1);
        set.replace(&queue(3, &["c", "d"]));
        assert_eq!(
            set.retired.lock().unwrap().keys().collect::<Vec<_>>(),
            ["a"],
            "b (drained) forgotten; a kept until its last counts are reported"
        );
        let r = set.report("me", Duration::from_secs(1));
        let a = r.backends.iter().find(|b| b.id == "a").unwrap();
        assert_eq!((a.requests, a.in_flight), (1, 0));
        let r = set.report("me", Duration::from_secs(1));
        assert_eq!(in_flight_of(&r, "a"), None);

        set.replace(&queue(4, &["c"]));
        assert_eq!(
            set.retired.lock().unwrap().keys().collect::<Vec<_>>(),
            ["d"],
            "a drained and reported: forgotten; d retired by this version"
        );
        set.replace(&queue(5, &["c"]));
        assert!(set.retired.lock().unwrap().is_empty());
        // An id that comes back after being forgotten starts afresh.
        set.replace(&queue(6, &["a"]));
        assert_eq!(
            set.load().backends[0]
                .stats
                .requests
                .load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn bad_addresses_are_never_picked() {
        let set = Backends::new(Strategy::RoundRobin, cfg());
        let mut bad = item("x", Category::Low);
        bad.address = "no port here".into();
        set.replace(&Queue {
            observed: true,
            version: 1,
            items: vec![bad, item("ok", Category::Low)],
        });
        let t = set.load();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..100).all(|_| set.pick(&t, &mut rng, &[]) == Some(1)));
    }

    #[test]
    fn static_queue_is_all_low() {
        let q = static_queue(&["127.0.0.1:1".into(), "h:2".into()]);
        assert_eq!(q.items.len(), 2);
        assert!(q.items.iter().all(|i| i.category == Category::Low));
    }
}

//! Process-wide counters and their Prometheus text exposition.
//!
//! Hot-path counters are relaxed atomics; per-backend counters live in
//! [`BackendStats`](crate::backends::BackendStats). Rendering walks both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::prom::{Kind, PromText};

use crate::backends::Backends;
use crate::cache::Cache;
use crate::histogram::PromHistogram;
use crate::shards::PerShard;

/// One per-backend series: name, type, help, and how to read the value.
type BackendSeries = (
    &'static str,
    Kind,
    &'static str,
    fn(&Backends, &crate::backends::Backend) -> f64,
);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The kinds of client faults counted in `balancer_client_faults_total` (the codes of
/// [`crate::request_body::ClientFault`] and [`crate::strict::Refusal`]).
pub const CLIENT_FAULT_KINDS: [&str; 10] = [
    "body_too_large",
    "bad_request_body",
    "request_body_timeout",
    "missing_host",
    "duplicate_host",
    "invalid_host",
    "connect_not_supported",
    "unsupported_transfer_coding",
    "repeated_chunked",
    "too_many_headers",
];

/// Where a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A backend (counted per backend in its stats).
    Backend,
    /// The cache.
    Cache,
    /// The balancer itself (errors, limits).
    Local,
}

pub struct Metrics {
    cache_status: [AtomicU64; 5],
    local_status: [AtomicU64; 5],
    pub latency: PromHistogram,
    pub connections_active: AtomicU64,
    /// Accepted client connections by proxy shard ([`crate::shards`]; their sum is
    /// `balancer_connections_total`); slots as planned when the metrics were made.
    shard_connections: PerShard<AtomicU64>,
    /// Open client connections by the proxy shard that serves them (moved ones count where
    /// they went): what [`crate::shards::choose`] evens out.
    shard_active: PerShard<AtomicU64>,
    /// Connections accepted by one shard and handed to a less busy one.
    pub connections_moved: AtomicU64,
    pub retries: AtomicU64,
    pub retries_refused: AtomicU64,
    pub upgrades: AtomicU64,
    /// By [`CLIENT_FAULT_KINDS`]: requests refused or failed because of the client.
    client_faults: [AtomicU64; CLIENT_FAULT_KINDS.len()],
    /// Backend connections closed because the client took nothing of the response for
    /// `IDLE_TIMEOUT` (shared with every connection's watchdog, see `upstream`).
    pub stalled_readers: std::sync::Arc<AtomicU64>,
    pub agent_connected: AtomicBool,
    pub agent_connects: AtomicU64,
    pub frames_applied: AtomicU64,
    pub frames_stale: AtomicU64,
    pub frames_malformed: AtomicU64,
    pub frames_unknown: AtomicU64,
    /// Empty queues the agent had not observed, refused while backends were in force.
    pub frames_refused: AtomicU64,
    /// Tasks queued (all balancers) as last read from Redis; `u64::MAX` = unknown.
    pub task_queue_depth: AtomicU64,
}

impl Metrics {
    /// One more client connection accepted (by the calling thread's shard).
    pub fn count_connection(&self) {
        self.shard_connections
            .local()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The open connections each proxy shard serves, by shard.
    pub fn shard_open(&self) -> Vec<u64> {
        self.shard_active
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// One more (`opened`) or one fewer open connection served by `shard`.
    pub fn shard_served(&self, shard: usize, opened: bool) {
        let slot = self.shard_active.slot(shard);
        if opened {
            slot.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            cache_status: Default::default(),
            local_status: Default::default(),
            latency: PromHistogram::default(),
            connections_active: AtomicU64::default(),
            shard_connections: PerShard::default(),
            shard_active: PerShard::default(),
            connections_moved: AtomicU64::default(),
            retries: AtomicU64::default(),
            retries_refused: AtomicU64::default(),
            upgrades: AtomicU64::default(),
            client_faults: Default::default(),
            stalled_readers: Default::default(),
            agent_connected: AtomicBool::default(),
            agent_connects: AtomicU64::default(),
            frames_applied: AtomicU64::default(),
            frames_stale: AtomicU64::default(),
            frames_malformed: AtomicU64::default(),
            frames_unknown: AtomicU64::default(),
            frames_refused: AtomicU64::default(),
            task_queue_depth: AtomicU64::new(u64::MAX),
        }
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5)) - 1
}

impl Metrics {
    /// The task queue depth for reports, if known.
    pub fn task_queue_depth(&self) -> Option<u64> {
        Some(self.task_queue_depth.load(Ordering::Relaxed)).filter(|d| *d != u64::MAX)
    }

    /// Counts a request refused or failed because of the client (`kind` from
    /// [`CLIENT_FAULT_KINDS`]).
    pub fn client_fault(&self, kind: &str) {
        if let Some(i) = CLIENT_FAULT_KINDS.iter().position(|k| *k == kind) {
            self.client_faults[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one finished request (response headers sent) and its latency.
    pub fn observe(&self, source: Source, status: u16, latency: Duration) {
        let i = class_index(status);
        match source {
            Source::Backend => {}
            Source::Cache => {
                self.cache_status[i].fetch_add(1, Ordering::Relaxed);
            }
            Source::Local => {
                self.local_status[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency.record(latency);
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self, backends: &Backends, cache: Option<&Cache>) -> PromText {
        let mut out = PromText::with_capacity(4096);
        let table = backends.load();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;

        out.family(
            "balancer_build_info",
            Kind::Gauge,
            "Always 1; the version label is the balancer's version.",
        );
        out.sample(
            "balancer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );

        out.family(
            "balancer_requests_total",
            Kind::Counter,
            "Responses sent, by source backend and status class.",
        );
        let backend_counters = table
            .backends
            .iter()
            .map(|b| (b.name.as_str(), &b.stats.status));
        let own_counters = [("cache", &self.cache_status), ("none", &self.local_status)];
        for (backend, counters) in backend_counters.chain(own_counters) {
            for (class, counter) in CLASSES.iter().zip(counters) {
                out.sample(
                    "balancer_requests_total",
                    &[("backend", backend), ("class", class)],
                    get(counter),
                );
            }
        }

        out.family(
            "balancer_request_duration_seconds",
            Kind::Histogram,
            "Time to response headers.",
        );
        self.latency
            .render("balancer_request_duration_seconds", &mut out);

        let per_backend: [BackendSeries; 5] = [
            (
                "balancer_backend_in_flight",
                Kind::Gauge,
                "Requests in flight per backend.",
                |_, b| b.stats.in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "balancer_backend_weight",
                Kind::Gauge,
                "Selection weight per backend.",
                |_, b| b.weight,
            ),
            (
                "balancer_backend_ejected",
                Kind::Gauge,
                "1 while the backend is ejected.",
                |s, b| f64::from(u8::from(s.is_ejected(b))),
            ),
            (
                "balancer_backend_ejections_total",
                Kind::Counter,
                "Ejections per backend.",
                |_, b| b.stats.ejections.load(Ordering::Relaxed) as f64,
            ),
            (
                "balancer_backend_errors_total",
                Kind::Counter,
                "Failed requests per backend.",
                |_, b| b.stats.errors.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in per_backend {
            out.family(name, kind, help);
            for b in &table.backends {
                out.sample(
                    name,
                    &[
                        ("backend", b.name.as_str()),
                        ("category", b.category.as_str()),
                    ],
                    value(backends, b),
                );
            }
        }

        let (hits, misses, entries) = cache.map_or((0.0, 0.0, 0.0), |c| {
            (get(&c.hits), get(&c.misses), c.entry_count() as f64)
        });
        let scalars: [(&str, Kind, &str, f64); 15] = [
            (
                "balancer_cache_hits_total",
                Kind::Counter,
                "Requests answered from the cache.",
                hits,
            ),
            (
                "balancer_cache_misses_total",
                Kind::Counter,
                "Cacheable requests fetched upstream.",
                misses,
            ),
            (
                "balancer_cache_entries",
                Kind::Gauge,
                "Entries in the cache.",
                entries,
            ),
            (
                "balancer_queue_version",
                Kind::Gauge,
                "Version of the queue in force.",
                table.version as f64,
            ),
            (
                "balancer_backends",
                Kind::Gauge,
                "Backends in the queue in force.",
                table.backends.len() as f64,
            ),
            (
                "balancer_agent_connected",
                Kind::Gauge,
                "1 while connected to the agent.",
                f64::from(u8::from(self.agent_connected.load(Ordering::Relaxed))),
            ),
            (
                "balancer_agent_connects_total",
                Kind::Counter,
                "Successful connections to the agent.",
                get(&self.agent_connects),
            ),
            (
                "balancer_agent_frames_applied_total",
                Kind::Counter,
                "Queue frames applied.",
                get(&self.frames_applied),
            ),
            (
                "balancer_agent_frames_rejected_total",
                Kind::Counter,
                "Frames skipped: stale version, malformed, unknown type, or an empty queue the agent had not observed.",
                get(&self.frames_stale)
                    + get(&self.frames_malformed)
                    + get(&self.frames_unknown)
                    + get(&self.frames_refused),
            ),
            (
                "balancer_connections_active",
                Kind::Gauge,
                "Open client connections.",
                get(&self.connections_active),
            ),
            (
                "balancer_connections_total",
                Kind::Counter,
                "Accepted client connections.",
                self.shard_connections.iter().map(get).sum(),
            ),
            (
                "balancer_connections_moved_total",
                Kind::Counter,
                "Client connections accepted by one proxy shard and handed to a less busy one.",
                get(&self.connections_moved),
            ),
            (
                "balancer_retries_total",
                Kind::Counter,
                "Requests retried on another backend after a connect failure.",
                get(&self.retries),
            ),
            (
                "balancer_retries_refused_total",
                Kind::Counter,
                "Retries refused by the retry budget.",
                get(&self.retries_refused),
            ),
            (
                "balancer_upgrades_total",
                Kind::Counter,
                "Protocol upgrades (WebSocket) tunnelled.",
                get(&self.upgrades),
            ),
        ];
        for (name, kind, help, value) in scalars {
            out.single(name, kind, help, value);
        }
        let by_shard = "balancer_shard_connections_total";
        out.family(
            by_shard,
            Kind::Counter,
            "Accepted client connections by the proxy shard (thread) that accepted them.",
        );
        for (shard, n) in self.shard_connections.iter().enumerate() {
            out.sample(by_shard, &[("shard", &shard.to_string())], get(n));
        }
        let open_by_shard = "balancer_shard_connections_active";
        out.family(
            open_by_shard,
            Kind::Gauge,
            "Open client connections by the proxy shard (thread) that serves them.",
        );
        for (shard, n) in self.shard_active.iter().enumerate() {
            out.sample(open_by_shard, &[("shard", &shard.to_string())], get(n));
        }
        out.family(
            "balancer_client_faults_total",
            Kind::Counter,
            "Requests refused or failed because of the client (never counted against a backend), by kind.",
        );
        for (kind, n) in CLIENT_FAULT_KINDS.iter().zip(&self.client_faults) {
            out.sample("balancer_client_faults_total", &[("kind", kind)], get(n));
        }
        out.sample(
            "balancer_client_faults_total",
            &[("kind", "stalled_reader")],
            get(&self.stalled_readers),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(999), 4);
    }

    #[test]
    fn render_writes_families_and_escaped_labels() {
        use crate::config::EjectionConfig;
        use crate::selection::Strategy;
        use protocol::{Category, Queue, QueueItem};

        let ejection = EjectionConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let backends = Backends::new(Strategy::Weighted, ejection);
        backends.replace(&Queue {
            version: 7,
            items: vec![QueueItem {
                id: "a".to_string(),
                name: "app \"1\"".to_string(),
                address: "a:80".to_string(),
                score: 90.0,
                category: Category::Low,
            }],
            observed: true,
        });
        let m = Metrics::default();
        m.observe(Source::Cache, 200, Duration::from_millis(3));
        m.frames_stale.fetch_add(2, Ordering::Relaxed);
        m.frames_refused.fetch_add(1, Ordering::Relaxed);
        let text = m.render(&backends, None).into_string();
        let expected = [
            "# HELP balancer_requests_total Responses sent, by source backend and status class.\n\
             # TYPE balancer_requests_total counter\n\
             balancer_requests_total{backend=\"app \\\"1\\\"\",class=\"1xx\"} 0\n",
            "balancer_requests_total{backend=\"cache\",class=\"2xx\"} 1\n",
            "# HELP balancer_request_duration_seconds Time to response headers.\n\
             # TYPE balancer_request_duration_seconds histogram\n\
             balancer_request_duration_seconds_bucket{le=\"0.001\"} 0\n",
            "balancer_request_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "balancer_request_duration_seconds_sum 0.003\n",
            "# TYPE balancer_backend_weight gauge\n\
             balancer_backend_weight{backend=\"app \\\"1\\\"\",category=\"LU\"} ",
            "# HELP balancer_queue_version Version of the queue in force.\n\
             # TYPE balancer_queue_version gauge\n\
             balancer_queue_version 7\n",
            "\nbalancer_agent_frames_rejected_total 3\n",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}

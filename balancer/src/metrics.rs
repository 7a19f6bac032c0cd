//! Process-wide counters and their Prometheus text exposition.
//!
//! Hot-path counters are relaxed atomics; per-backend counters live in
//! [`BackendStats`](crate::backends::BackendStats). Rendering walks both.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::backends::Backends;
use crate::cache::Cache;
use crate::histogram::PromHistogram;

/// One per-backend series: name, type, help, and how to read the value.
type BackendSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Backends, &crate::backends::Backend) -> f64,
);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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
    pub connections_total: AtomicU64,
    pub retries: AtomicU64,
    pub retries_refused: AtomicU64,
    pub upgrades: AtomicU64,
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

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            cache_status: Default::default(),
            local_status: Default::default(),
            latency: PromHistogram::default(),
            connections_active: AtomicU64::default(),
            connections_total: AtomicU64::default(),
            retries: AtomicU64::default(),
            retries_refused: AtomicU64::default(),
            upgrades: AtomicU64::default(),
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
    pub fn render(&self, backends: &Backends, cache: Option<&Cache>) -> String {
        let mut out = String::with_capacity(4096);
        let table = backends.load();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);

        out.push_str(
            "# HELP balancer_requests_total Responses sent, by source backend and status class.\n",
        );
        out.push_str("# TYPE balancer_requests_total counter\n");
        for b in &table.backends {
            for (i, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "balancer_requests_total{{backend=\"{}\",class=\"{class}\"}} {}",
                    escape(&b.name),
                    get(&b.stats.status[i])
                );
            }
        }
        for (label, counters) in [("cache", &self.cache_status), ("none", &self.local_status)] {
            for (i, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "balancer_requests_total{{backend=\"{label}\",class=\"{class}\"}} {}",
                    get(&counters[i])
                );
            }
        }

        out.push_str("# HELP balancer_request_duration_seconds Time to response headers.\n");
        out.push_str("# TYPE balancer_request_duration_seconds histogram\n");
        self.latency
            .render("balancer_request_duration_seconds", &mut out);

        let per_backend: [BackendSeries; 5] = [
            (
                "balancer_backend_in_flight",
                "gauge",
                "Requests in flight per backend.",
                |_, b| b.stats.in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "balancer_backend_weight",
                "gauge",
                "Selection weight per backend.",
                |_, b| b.weight,
            ),
            (
                "balancer_backend_ejected",
                "gauge",
                "1 while the backend is ejected.",
                |s, b| f64::from(u8::from(s.is_ejected(b))),
            ),
            (
                "balancer_backend_ejections_total",
                "counter",
                "Ejections per backend.",
                |_, b| b.stats.ejections.load(Ordering::Relaxed) as f64,
            ),
            (
                "balancer_backend_errors_total",
                "counter",
                "Failed requests per backend.",
                |_, b| b.stats.errors.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in per_backend {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for b in &table.backends {
                let _ = writeln!(
                    out,
                    "{name}{{backend=\"{}\",category=\"{}\"}} {}",
                    escape(&b.name),
                    b.category,
                    value(backends, b)
                );
            }
        }

        let (hits, misses, entries) = cache.map_or((0, 0, 0), |c| {
            (get(&c.hits), get(&c.misses), c.entry_count())
        });
        let scalars: [(&str, &str, &str, u64); 14] = [
            (
                "balancer_cache_hits_total",
                "counter",
                "Requests answered from the cache.",
                hits,
            ),
            (
                "balancer_cache_misses_total",
                "counter",
                "Cacheable requests fetched upstream.",
                misses,
            ),
            (
                "balancer_cache_entries",
                "gauge",
                "Entries in the cache.",
                entries,
            ),
            (
                "balancer_queue_version",
                "gauge",
                "Version of the queue in force.",
                table.version,
            ),
            (
                "balancer_backends",
                "gauge",
                "Backends in the queue in force.",
                table.backends.len() as u64,
            ),
            (
                "balancer_agent_connected",
                "gauge",
                "1 while connected to the agent.",
                u64::from(self.agent_connected.load(Ordering::Relaxed)),
            ),
            (
                "balancer_agent_connects_total",
                "counter",
                "Successful connections to the agent.",
                get(&self.agent_connects),
            ),
            (
                "balancer_agent_frames_applied_total",
                "counter",
                "Queue frames applied.",
                get(&self.frames_applied),
            ),
            (
                "balancer_agent_frames_rejected_total",
                "counter",
                "Frames skipped: stale version, malformed, unknown type, or an empty queue the agent had not observed.",
                get(&self.frames_stale)
                    + get(&self.frames_malformed)
                    + get(&self.frames_unknown)
                    + get(&self.frames_refused),
            ),
            (
                "balancer_connections_active",
                "gauge",
                "Open client connections.",
                get(&self.connections_active),
            ),
            (
                "balancer_connections_total",
                "counter",
                "Accepted client connections.",
                get(&self.connections_total),
            ),
            (
                "balancer_retries_total",
                "counter",
                "Requests retried on another backend after a connect failure.",
                get(&self.retries),
            ),
            (
                "balancer_retries_refused_total",
                "counter",
                "Retries refused by the retry budget.",
                get(&self.retries_refused),
            ),
            (
                "balancer_upgrades_total",
                "counter",
                "Protocol upgrades (WebSocket) tunnelled.",
                get(&self.upgrades),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping_and_classes() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(999), 4);
    }
}

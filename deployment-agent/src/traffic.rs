//! Observed traffic: the balancers' report frames kept over a sliding window and summed
//! over every connected balancer. Pure (time is passed in); the control loop feeds it and
//! reads per-container figures for `/stats` and `/metrics` and pool figures for the scaler.
//!
//! Each balancer reports every second, per backend: requests started and completed during
//! the interval, errors, requests in flight at the time of the report, and the p50 / p99 time
//! to response headers. Over a window:
//! - **rates** (`requests_per_s`, `started_per_s`, `errors_per_s`): per balancer, the counts
//!   of its reports in the window divided by the time those reports cover, then summed over
//!   balancers (so balancers with different intervals or a missed report are not skewed);
//! - **in flight**: per balancer, the mean of its in-flight samples, summed over balancers
//!   (the average concurrency, Knative's scaling metric);
//! - **latency**: the request-weighted mean of the reported p50s and p99s. A mean of
//!   per-interval quantiles is not the quantile of the union, but the reports carry no
//!   histogram; it is exact when one balancer sends steady traffic and a fair summary
//!   otherwise;
//! - **task queue depth**: the mean of the depths reported in the window (every balancer
//!   reads the same Redis stream, so they report the same figure).
//!
//! A window can start later than `now − length`: the scaler only looks at traffic since the
//! pool last changed ([`Traffic::pool`]'s `since`), so figures from a smaller pool do not
//! count against a larger one.

use std::collections::{HashMap, VecDeque};

use protocol::Report;
use serde::Serialize;

use crate::model::Millis;

/// One balancer's report for one backend, as kept.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at_ms: Millis,
    balancer: u64,
    started: u64,
    requests: u64,
    errors: u64,
    in_flight: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// One report frame's envelope: who, when, how long it covers, the task queue depth.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    at_ms: Millis,
    balancer: u64,
    interval_ms: u64,
    task_queue_depth: Option<u64>,
}

/// What a window shows for one container (or the whole pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Observed {
    /// Requests completed per second.
    pub requests_per_s: f64,
    /// Requests sent to it per second (arrivals; above `requests_per_s` while a backlog
    /// builds up).
    pub started_per_s: f64,
    /// Mean requests in flight.
    pub in_flight: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub errors_per_s: f64,
}

/// What a window shows for the pool as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolObserved {
    /// Sums over every container.
    pub traffic: Observed,
    /// Mean task queue depth reported, when any balancer reported one.
    pub task_queue_depth: Option<f64>,
    /// Milliseconds of reports (of the balancer that covers the most) inside the window.
    pub covered_ms: u64,
    /// Balancers that reported inside the window.
    pub balancers: usize,
}

/// Report data of the last `keep_ms`.
#[derive(Debug, Clone)]
pub struct Traffic {
    keep_ms: u64,
    frames: VecDeque<Frame>,
    samples: HashMap<String, VecDeque<Sample>>,
}

impl Traffic {
    /// Keeps report data for `keep_ms` (the longest window anybody asks for).
    pub fn new(keep_ms: u64) -> Traffic {
        Traffic {
            keep_ms: keep_ms.max(1),
            frames: VecDeque::new(),
            samples: HashMap::new(),
        }
    }

    /// Records one report received at `at_ms` on subscriber connection `balancer` (keyed
    /// by connection, not by the name in the report: two balancers may share a name).
    pub fn record(&mut self, at_ms: Millis, balancer: u64, report: &Report) {
        self.frames.push_back(Frame {
            at_ms,
            balancer,
            interval_ms: report.interval_ms.max(1),
            task_queue_depth: report.task_queue_depth,
        });
        for b in &report.backends {
            self.samples
                .entry(b.id.clone())
                .or_default()
                .push_back(Sample {
                    at_ms,
                    balancer,
                    // Older balancers do not say: as many as completed.
                    started: b.started.unwrap_or(b.requests),
                    requests: b.requests,
                    errors: b.errors.min(b.requests),
                    in_flight: b.in_flight,
                    p50_ms: b.latency_p50_ms.filter(|x| x.is_finite() && *x >= 0.0),
                    p99_ms: b.latency_p99_ms.filter(|x| x.is_finite() && *x >= 0.0),
                });
        }
    }

    /// Drops data older than the keep time, and containers with none left.
    pub fn prune(&mut self, now: Millis) {
        let horizon = now.saturating_sub(self.keep_ms);
        while self.frames.front().is_some_and(|f| f.at_ms < horizon) {
            self.frames.pop_front();
        }
        self.samples.retain(|_, q| {
            while q.front().is_some_and(|s| s.at_ms < horizon) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Milliseconds each balancer's frames cover in `(from, now]`.
    fn coverage(&self, from: Millis) -> HashMap<u64, u64> {
        let mut cover: HashMap<u64, u64> = HashMap::new();
        for f in self.frames.iter().filter(|f| f.at_ms > from) {
            *cover.entry(f.balancer).or_default() += f.interval_ms;
        }
        cover
    }

    /// One container over `(max(now − window, since), now]`; `None` without reports in it.
    pub fn container(
        &self,
        id: &str,
        now: Millis,
        window_ms: u64,
        since: Millis,
    ) -> Option<Observed> {
        let from = now.saturating_sub(window_ms).max(since);
        let cover = self.coverage(from);
        if cover.is_empty() {
            return None;
        }
        let samples = self.samples.get(id);
        let in_window = samples
            .into_iter()
            .flatten()
            .filter(|s| s.at_ms > from)
            .collect::<Vec<_>>();
        Some(summarise(&in_window, &cover, &self.frames, from))
    }

    /// The whole pool (every container with reports) over the same kind of window.
    pub fn pool(&self, now: Millis, window_ms: u64, since: Millis) -> PoolObserved {
        let from = now.saturating_sub(window_ms).max(since);
        let cover = self.coverage(from);
        let all: Vec<&Sample> = self
            .samples
            .values()
            .flatten()
            .filter(|s| s.at_ms > from)
            .collect();
        let traffic = summarise(&all, &cover, &self.frames, from);
        let depths: Vec<u64> = self
            .frames
            .iter()
            .filter(|f| f.at_ms > from)
            .filter_map(|f| f.task_queue_depth)
            .collect();
        let task_queue_depth = (!depths.is_empty())
            .then(|| depths.iter().map(|d| *d as f64).sum::<f64>() / depths.len() as f64);
        PoolObserved {
            traffic,
            task_queue_depth,
            covered_ms: cover.values().copied().max().unwrap_or(0),
            balancers: cover.len(),
        }
    }
}

/// Rates and means of `samples` (any number of containers) given each balancer's coverage.
/// In-flight: per balancer the sum of its samples divided by its number of frames (a frame
/// without a sample for a backend means nothing in flight there), summed over balancers.
fn summarise(
    samples: &[&Sample],
    cover: &HashMap<u64, u64>,
    frames: &VecDeque<Frame>,
    from: Millis,
) -> Observed {
    let mut out = Observed::default();
    let mut frames_of: HashMap<u64, u64> = HashMap::new();
    for f in frames.iter().filter(|f| f.at_ms > from) {
        *frames_of.entry(f.balancer).or_default() += 1;
    }
    let (mut w50, mut w99, mut n50, mut n99) = (0.0, 0.0, 0.0, 0.0);
    for s in samples {
        let secs = cover.get(&s.balancer).copied().unwrap_or(0) as f64 / 1000.0;
        if secs > 0.0 {
            out.requests_per_s += s.requests as f64 / secs;
            out.started_per_s += s.started as f64 / secs;
            out.errors_per_s += s.errors as f64 / secs;
        }
        let n = frames_of.get(&s.balancer).copied().unwrap_or(1).max(1) as f64;
        out.in_flight += s.in_flight as f64 / n;
        let weight = s.requests as f64;
        if let Some(p) = s.p50_ms.filter(|_| weight > 0.0) {
            w50 += p * weight;
            n50 += weight;
        }
        if let Some(p) = s.p99_ms.filter(|_| weight > 0.0) {
            w99 += p * weight;
            n99 += weight;
        }
    }
    out.latency_p50_ms = (n50 > 0.0).then(|| w50 / n50);
    out.latency_p99_ms = (n99 > 0.0).then(|| w99 / n99);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::BackendReport;

    fn backend(id: &str, requests: u64, in_flight: u64, p50: f64) -> BackendReport {
        BackendReport {
            id: id.into(),
            started: Some(requests),
            requests,
            errors: 0,
            in_flight,
            latency_p50_ms: Some(p50),
            latency_p99_ms: Some(p50 * 3.0),
        }
    }

    fn report(balancer: &str, backends: Vec<BackendReport>, depth: Option<u64>) -> Report {
        Report {
            balancer: balancer.into(),
            interval_ms: 1000,
            queue_version: 1,
            backends,
            task_queue_depth: depth,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_and_concurrency_sum_over_balancers() {
        let mut t = Traffic::new(60_000);
        for i in 1..=10u64 {
            t.record(
                i * 1000,
                1,
                &report("b1", vec![backend("a", 100, 4, 10.0)], None),
            );
            // A second balancer with the same name: its own connection, its own figures.
            t.record(
                i * 1000 + 5,
                2,
                &report("b1", vec![backend("a", 50, 2, 20.0)], None),
            );
        }
        let o = t.container("a", 10_005, 10_000, 0).unwrap();
        assert!(close(o.requests_per_s, 150.0), "{o:?}");
        assert!(close(o.in_flight, 6.0), "{o:?}");
        // Request-weighted: (100·10 + 50·20) / 150.
        assert!(close(o.latency_p50_ms.unwrap(), 2000.0 / 150.0), "{o:?}");
        assert!(close(o.latency_p99_ms.unwrap(), 6000.0 / 150.0), "{o:?}");
        // A 5 s window sees half the reports and the same rates.
        let o = t.container("a", 10_005, 5_000, 0).unwrap();
        assert!(close(o.requests_per_s, 150.0), "{o:?}");
    }

    #[test]
    fn a_backend_missing_from_a_frame_had_nothing_in_flight() {
        let mut t = Traffic::new(60_000);
        t.record(1000, 1, &report("b", vec![backend("a", 10, 4, 5.0)], None));
        t.record(2000, 1, &report("b", vec![], None));
        let o = t.container("a", 2000, 10_000, 0).unwrap();
        assert!(close(o.in_flight, 2.0), "{o:?}");
        assert!(close(o.requests_per_s, 5.0), "{o:?}");
        // No reports at all in the window: nothing to say.
        assert_eq!(t.container("a", 100_000, 10_000, 0), None);
    }

    #[test]
    fn since_cuts_the_window_and_pool_sums_containers() {
        let mut t = Traffic::new(60_000);
        for i in 1..=6u64 {
            let r = if i <= 3 { 300 } else { 100 };
            t.record(
                i * 1000,
                1,
                &report(
                    "b",
                    vec![backend("a", r, 10, 5.0), backend("b", r, 10, 5.0)],
                    Some(i * 10),
                ),
            );
        }
        let all = t.pool(6000, 60_000, 0);
        assert!(close(all.traffic.requests_per_s, 400.0), "{all:?}");
        assert!(close(all.traffic.in_flight, 20.0), "{all:?}");
        assert_eq!((all.covered_ms, all.balancers), (6000, 1));
        assert!(close(all.task_queue_depth.unwrap(), 35.0));
        let recent = t.pool(6000, 60_000, 3000);
        assert!(close(recent.traffic.requests_per_s, 200.0), "{recent:?}");
        assert_eq!(recent.covered_ms, 3000);
        assert!(close(recent.task_queue_depth.unwrap(), 50.0));
    }

    #[test]
    fn backlog_shows_as_started_above_completed() {
        let mut t = Traffic::new(60_000);
        let mut b = backend("a", 25, 40, 900.0);
        b.started = Some(75);
        b.errors = 99; // more errors than requests is clamped
        t.record(1000, 1, &report("x", vec![b], None));
        let o = t.container("a", 1000, 6000, 0).unwrap();
        assert!(close(o.started_per_s / o.requests_per_s, 3.0), "{o:?}");
        assert!(close(o.errors_per_s, 25.0), "{o:?}");
    }

    #[test]
    fn a_backlog_worked_off_shows_as_fewer_started_than_completed() {
        let mut t = Traffic::new(60_000);
        let mut b = backend("a", 75, 0, 900.0);
        b.started = Some(25);
        t.record(1000, 1, &report("x", vec![b.clone()], None));
        let o = t.container("a", 1000, 6000, 0).unwrap();
        assert!(close(o.started_per_s, 25.0), "{o:?}");
        // An older balancer that does not send `started`: taken as the completions.
        b.started = None;
        t.record(2000, 1, &report("x", vec![b], None));
        let o = t.container("a", 2000, 1000, 0).unwrap();
        assert!(close(o.started_per_s, 75.0), "{o:?}");
    }

    #[test]
    fn prune_forgets_old_data() {
        let mut t = Traffic::new(10_000);
        t.record(1000, 1, &report("b", vec![backend("a", 10, 1, 5.0)], None));
        t.prune(20_000);
        assert!(t.samples.is_empty() && t.frames.is_empty());
        assert_eq!(t.pool(20_000, 10_000, 0), PoolObserved::default());
    }
}

//! The observe stage: everything one round looks at, gathered once — Docker's list of our
//! containers, connect probes of containers not ready yet, response-time probes of the
//! published ones, the balancers' reports and their views of SUNDOWN containers, and a
//! pending `POST /scale` — then the scorers are fed from it (no I/O).

use std::collections::HashMap;
use std::time::Duration;

use crate::push::Pending;
use log::{debug, info};

use super::decide::Observation;
use super::Controller;
use crate::config::ms;
use crate::model::{Category, Millis};
use crate::{scaler, scoring};

/// How long a readiness connect may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the engine's container list; beyond it the engine counts as unavailable.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a round observed beyond what `decide` needs: the inputs of scoring.
#[derive(Debug, Default)]
pub struct ScoringInputs {
    /// Response time of each probed container, ms (`None`: the probe failed).
    pub probes: Vec<(String, Option<f64>)>,
    pub reports: Vec<Pending>,
}

impl Controller {
    /// Docker's list of our containers; `None` (engine marked down) when it fails or hangs.
    pub(super) async fn list(&mut self) -> Option<Vec<crate::model::Observed>> {
        // A hung engine must not stall the loop (probes, publishing, the API's snapshot).
        let listed = tokio::time::timeout(LIST_TIMEOUT, self.docker.list_ours(&self.cfg.app)).await;
        match listed {
            Ok(Ok(observed)) => {
                if !self.docker_ok {
                    info!("docker engine reachable again");
                    self.docker_ok = true;
                }
                self.observed = true;
                Some(observed)
            }
            Ok(Err(e)) => {
                self.docker_down(&e.to_string());
                None
            }
            Err(_) => {
                self.docker_down(&format!("listing containers took over {LIST_TIMEOUT:?}"));
                None
            }
        }
    }

    /// One round's observation (the probes of all containers run concurrently).
    pub(super) async fn observe(&mut self, now: Millis) -> (Observation, ScoringInputs) {
        let listed = self.list().await;
        // Connect probes: containers not ready yet, and running ones with no record (the
        // round adopts them, and publishes them in the same round when they accept).
        let mut waiting: Vec<(String, String)> = self
            .pool
            .values()
            .filter(|t| t.c.ready_ms.is_none() && !t.c.address.is_empty() && !t.stopping)
            .map(|t| (t.c.id.clone(), t.c.address.clone()))
            .collect();
        for o in listed.iter().flatten() {
            if let (true, false, Some(addr)) =
                (o.running, self.pool.contains_key(&o.id), &o.address)
            {
                waiting.push((o.id.clone(), addr.clone()));
            }
        }
        let published: Vec<(String, String)> = self
            .pool
            .values()
            .filter(|t| t.c.ready_ms.is_some() && t.c.is_active() && !t.stopping)
            .map(|t| (t.c.id.clone(), t.c.address.clone()))
            .collect();
        let (timeout, path) = (self.cfg.probe_timeout, self.cfg.probe_path.as_str());
        let connects =
            futures_util::future::join_all(waiting.into_iter().map(|(id, addr)| async move {
                (id, crate::probe::accepts(&addr, READY_PROBE_TIMEOUT).await)
            }));
        let timings =
            futures_util::future::join_all(published.into_iter().map(|(id, addr)| async move {
                let r = crate::probe::response_time(&addr, path, timeout).await;
                if let Err(e) = &r {
                    debug!("probe of {addr} failed: {e}");
                }
                (id, r.ok())
            }));
        let (connects, probes) = tokio::join!(connects, timings);
        let views: HashMap<String, _> = self
            .pool
            .values()
            .filter(|t| t.c.category == Category::Sundown)
            .map(|t| (t.c.id.clone(), self.reports.views_for(&t.c.id)))
            .collect();
        let reports = self.reports.take_pending();
        let scaling = self.observe_load(now, &reports);
        let obs = Observation {
            now,
            listed,
            accepting: connects
                .into_iter()
                .filter(|(_, ok)| *ok)
                .map(|(id, _)| id)
                .collect(),
            views,
            set_desired: self.pending_desired.take(),
            sundown: std::mem::take(&mut self.pending_sundown),
            scaling,
        };
        let inputs = ScoringInputs { probes, reports };
        (obs, inputs)
    }

    /// Folds this round's reports into the traffic windows, reads the host's CPU use, and
    /// sums up both for the scaler. The windows start no earlier than the pool's last
    /// change: the newest container's readiness or the last scale action.
    fn observe_load(&mut self, now: Millis, reports: &[Pending]) -> scaler::Observed {
        for p in reports {
            self.traffic.record(p.at_ms, p.connection, &p.report);
        }
        self.traffic.prune(now);
        if self.host_local {
            if let Some(times) = crate::host::read_cpu_times() {
                self.host.record(now, times);
            }
        }
        let s = &self.cfg.scaling;
        let since = self
            .pool
            .values()
            .filter(|t| t.c.is_active())
            .filter_map(|t| t.c.ready_ms)
            .chain(self.scaler.last_scale_ms)
            .max()
            .unwrap_or(0);
        // The panic window's traffic says whether the pool keeps up (see below).
        let panic_pool = self.traffic.pool(now, ms(s.panic_window), since);
        let recent = panic_pool.traffic;
        let serving = self
            .pool
            .values()
            .filter(|t| t.c.is_active() && t.c.ready_ms.is_some() && !t.stopping);
        // CPU time the serving pool used since the last round, from Docker's cumulative
        // counters (exact, unlike a one-second rate sample), and the busiest container.
        let (mut cpu_seconds, mut busiest, mut cores_now) = (0.0, 0.0f64, 0.0);
        let mut seen = HashMap::new();
        for t in serving {
            let cores = t.scorer.cpu_cores().unwrap_or(0.0);
            cores_now += cores;
            if let Some(limit) = s.cpu_limit {
                busiest = busiest.max(cores / limit);
            }
            if let Some(sample) = *t.stats.borrow() {
                let total = sample.cpu_total_ns;
                if let Some(prev) = self.cpu_ns.get(&t.c.id) {
                    cpu_seconds += total.saturating_sub(*prev) as f64 / 1e9;
                }
                seen.insert(t.c.id.clone(), total);
            }
        }
        self.cpu_ns = seen;
        // The CPU cost of a request: CPU time over completed requests, in rounds where the
        // pool keeps up.
        let completed: u64 = reports
            .iter()
            .flat_map(|p| &p.report.backends)
            .map(|b| b.requests)
            .sum();
        let flow =
            (recent.requests_per_s > 0.0).then(|| recent.started_per_s / recent.requests_per_s);
        let steady = scaler::steady(recent.requests_per_s, flow, busiest, s.tolerance);
        self.cost_meter.record(now, cpu_seconds, completed, steady);
        debug!(
            "cpu cost: pool used {cpu_seconds:.3} CPU-s, {completed} completed, steady {steady}, cost {:?}",
            self.cost_meter.cost()
        );
        let cost = self.cost_meter.cost();
        let stats = |p: crate::traffic::PoolObserved| {
            let t = p.traffic;
            scaler::WindowStats {
                concurrency: t.in_flight,
                backlog: (t.requests_per_s > 0.0).then(|| t.started_per_s / t.requests_per_s),
                queue_depth: p.task_queue_depth,
                covered_ms: p.covered_ms,
                started_per_s: t.started_per_s,
                // What the pool uses now is a floor: a cost learnt on another mix of
                // requests must not size a saturated pool below what it burns.
                cpu_demand: cost.map(|c| (c * t.started_per_s).max(cores_now)),
            }
        };
        let mut panic = stats(panic_pool);
        // A spike shows first in the newest reports: the panic window's demand is that of its
        // last few seconds when they ask for more (a window half before the step would size
        // the first step for half the load).
        let newest = self
            .traffic
            .pool(now, scaler::NEWEST_MS.min(ms(s.panic_window)), since)
            .traffic
            .started_per_s;
        if newest > panic.started_per_s {
            panic.started_per_s = newest;
            panic.cpu_demand = cost.map(|c| (c * newest).max(cores_now));
        }
        let stable = stats(self.traffic.pool(now, ms(s.stable_window), since));
        let balancers = self.traffic.pool(now, ms(s.stable_window), 0).balancers;
        let observed = scaler::Observed {
            panic,
            stable,
            host_busy: self.host.mean(now, ms(s.panic_window)),
            host_busy_max: self.host.max(now, ms(s.panic_window)),
            balancers,
        };
        self.scaling = observed;
        observed
    }

    /// Feeds stats, probes and reports into the scorers; sets categories from the scores.
    pub(super) fn score(&mut self, inputs: &ScoringInputs, now: Millis) {
        let started = std::time::Instant::now();
        for (id, result) in &inputs.probes {
            if let Some(t) = self.pool.get_mut(id) {
                t.scorer.on_probe(*result);
            }
        }
        for Pending { report, .. } in &inputs.reports {
            for b in &report.backends {
                if let Some(t) = self.pool.get_mut(&b.id) {
                    t.scorer.on_report(b.latency_p50_ms, b.requests, b.errors);
                }
            }
        }
        let (lu, mu) = (self.cfg.scoring.lu_threshold, self.cfg.scoring.mu_threshold);
        let active = self
            .pool
            .values()
            .filter(|t| t.c.is_active())
            .count()
            .max(1);
        let busy = self.host.latest();
        for t in self.pool.values_mut() {
            if t.stats.has_changed().unwrap_or(false) {
                if let Some(sample) = *t.stats.borrow_and_update() {
                    let online = f64::from(sample.online_cpus.max(1));
                    let host = busy.map(|b| scoring::HostShare {
                        idle_cpus: online * (1.0 - b),
                        fair_cpus: online / active as f64,
                    });
                    t.scorer.on_stats(sample, host);
                }
            }
            if t.c.ready_ms.is_none() || !t.c.is_active() {
                continue;
            }
            if let Some(scores) = t.scorer.scores() {
                let category = scoring::category(scores.overall, lu, mu);
                if category != t.c.category {
                    debug!(
                        "{}: {} -> {} (score {:.1})",
                        t.c.name, t.c.category, category, scores.overall
                    );
                }
                t.c.scores = Some(scores);
                t.c.scored_ms = Some(now);
                t.c.category = category;
            }
        }
        self.scoring_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    }
}

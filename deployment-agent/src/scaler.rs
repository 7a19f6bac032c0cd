//! Scale decisions: a pure function of the pool, the configuration, what the balancers and
//! the host showed over two windows, a little state and the time. The caller acts on the
//! [`Decision`] (creates containers, marks victims SUNDOWN), records it as an event with its
//! inputs and persists the new desired size.
//!
//! # Signals
//! Each signal proposes a pool size; the **largest proposal wins** (as in the HPA with several
//! metrics). `current` is the number of active (not SUNDOWN) containers.
//! - **score** (always on; the thresholds of the brief, scores are 100 = idle). With `avg` the
//!   average and `min` the lowest score of the scored active containers and `load = 100 − avg`:
//!   - `avg < HIGH_LOAD_THRESHOLD`: `ceil(current × load / (100 − HIGH))`, so at least one
//!     more, then checked against the flow of requests when the balancers see traffic
//!     ([`size_by_flow`]);
//!   - else `min < CRITICAL_LOAD_THRESHOLD`: `current + 1`;
//!   - `avg > LOW_LOAD_THRESHOLD`: `ceil(current × load / (100 − (HIGH + LOW) / 2))`: the
//!     size at which the load would come back to the middle of the band;
//!   - otherwise `current` (the band between the thresholds is this signal's dead band).
//!
//!   A saturated pool scores the same whether it is asked for 10 % or 300 % more than it
//!   serves, and keeps a low score while it works off a backlog, so the score alone cannot
//!   size the step. With a CPU limit (`CONTAINER_CPUS`) the **CPU demand** does: requests
//!   sent per second × the CPU cost of one request learnt while the pool kept up
//!   ([`CostMeter`]), against the utilisation at which the CPU alone would bring the
//!   score to HIGH (`cpu_target`, 58 % with the defaults): `max(current,
//!   ceil(demand / (CONTAINER_CPUS × cpu_target)))`. Without a limit or before a cost is
//!   known, the **flow** (requests sent ÷ completed) does: growing backlog → at least
//!   `ceil(current × flow / 0.8)`; shrinking backlog → no growth; keeping up → one at a time.
//! - **concurrency** (`TARGET_CONCURRENCY`, off when unset): mean requests in flight summed
//!   over the balancers, per container, against the target: `ceil(current × observed /
//!   target)` (= `ceil(in_flight / target)`), Knative's metric; no growth while a backlog
//!   shrinks (requests queued while the pool was smaller still count as in flight).
//! - **queue** (`TARGET_QUEUE_PER_CONTAINER`, off when unset): the task queue depth per
//!   container against the target, the same way.
//!
//! The proportional signals propose `current` while `observed / target` is within
//! `1 ± SCALE_TOLERANCE` (10 %, the HPA's dead band).
//!
//! # Windows, panic and pacing
//! - Every round computes the proposals over the **panic window** (`PANIC_WINDOW`, 6 s) and
//!   the **stable window** (`STABLE_WINDOW`, 60 s). Both windows start no earlier than the
//!   last change of the pool (the newest container's readiness, the last scale action), so
//!   figures from a smaller pool are not held against a larger one; until two seconds of
//!   reports cover the new pool the scaler holds ("settling"). The panic window's request
//!   rate is at least that of its newest [`NEWEST_MS`] (a spike shows there first).
//! - **Panic**: when the panic window proposes at least `PANIC_THRESHOLD` × current (2×), the
//!   scaler acts at once (without waiting for `SCALE_CHECK_PERIOD`) on the panic proposal, and
//!   for one stable window afterwards it never scales down. Otherwise it decides every
//!   `SCALE_CHECK_PERIOD` on the stable proposal — growing no further than the panic window
//!   also asks (a load that ended seconds ago stays in the stable window for a minute).
//! - **Up**: at most `max(current + SCALE_STEP, ceil(current × SCALE_UP_RATE))`; not while
//!   a container is INIT (capacity is still arriving: its effect is not visible yet), not
//!   within `COOLDOWN_PERIOD` of the last action — except in panic for a step sized from
//!   observed demand (CPU demand, concurrency, queue), which counts the starting containers
//!   already, so a spike seen first at a third of its height is followed up at once —, never above `MAX_CONTAINERS`, and **not when
//!   the host is saturated** (its CPUs `HOST_SATURATION` busy or more on average over the
//!   panic window, and then until no reading of a panic window reaches it:
//!   more containers would only slice the same CPUs thinner; the state is reported instead).
//! - **Down**: to the largest stable proposal of the last `SCALE_DOWN_STABILIZATION` (the HPA's
//!   stabilisation: one busy moment in the window keeps the pool), once proposals have been
//!   recorded for the whole window; at most `max(SCALE_STEP, current − current /
//!   SCALE_DOWN_RATE)` removed per decision; not during panic, not while a container is INIT,
//!   not within the cooldown, never below `DEFAULT_CONTAINER`. The least-loaded containers
//!   go ([`pick_victims`]).

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::json;

use crate::config::{ms, ScalingConfig};
use crate::model::{Category, Container, Millis};

/// Reports must cover at least this much time since the pool changed before the traffic
/// signals are trusted again.
pub const SETTLE_MS: u64 = 2_000;

/// What the scaler remembers between decisions (in memory; a restart only delays the next
/// scale-down by one stabilization window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalerState {
    /// When the last Up or Down was decided.
    pub last_scale_ms: Option<Millis>,
    /// Panic mode holds until then (no scale-down).
    pub panic_until_ms: Option<Millis>,
    /// Stable proposals `(at, size)` of the last `SCALE_DOWN_STABILIZATION`.
    pub recommendations: VecDeque<(Millis, usize)>,
    /// Since when proposals have been recorded without a gap (the window is covered).
    pub recording_since_ms: Option<Millis>,
    /// The host was saturated at the last decision.
    pub host_saturated: bool,
}

/// What one window showed (traffic since the pool last changed, within the window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowStats {
    /// Mean requests in flight, summed over the balancers and containers.
    pub concurrency: f64,
    /// Requests sent ÷ requests completed; `None` without completed requests.
    pub backlog: Option<f64>,
    /// Mean task queue depth reported; `None` when no balancer reports one.
    pub queue_depth: Option<f64>,
    /// Milliseconds of reports in the window.
    pub covered_ms: u64,
    /// Requests sent per second.
    pub started_per_s: f64,
    /// CPUs the requests sent would use: `started_per_s` × the learned CPU cost of one
    /// request ([`CostMeter`]); `None` until a cost is known.
    pub cpu_demand: Option<f64>,
}

/// The inputs of a decision besides the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    pub panic: WindowStats,
    pub stable: WindowStats,
    /// Mean busy fraction of the host's CPUs over the panic window; `None` when unknown.
    pub host_busy: Option<f64>,
    /// The highest reading of the panic window: a saturated host stays so until every
    /// reading of a panic window is below the threshold (by then the window's traffic no
    /// longer holds the load that saturated it).
    pub host_busy_max: Option<f64>,
    /// Balancers that reported during the stable window.
    pub balancers: usize,
}

/// Which signal made a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Score,
    Concurrency,
    Queue,
}

/// One signal's proposed pool size and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposal {
    pub signal: Signal,
    pub desired: usize,
    pub observed: f64,
    pub target: f64,
    pub why: String,
    /// Sized from observed demand (CPU demand, concurrency, queue depth), which counts the
    /// containers still starting: in panic it needs neither wait for them nor the cooldown.
    pub from_demand: bool,
}

/// The outcome of one [`decide`] call.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start `count` more containers (desired size grows by `count`).
    Up {
        count: usize,
        reason: String,
        details: serde_json::Value,
    },
    /// Mark these container ids SUNDOWN (desired size shrinks by `victims.len()`).
    Down {
        victims: Vec<String>,
        reason: String,
        details: serde_json::Value,
    },
    /// Do nothing; `reason` says why (for logs and `/stats`).
    Hold { reason: String },
}

impl Decision {
    fn hold(reason: impl Into<String>) -> Decision {
        Decision::Hold {
            reason: reason.into(),
        }
    }
}

/// `ceil(current × observed / target)`, or `current` within the dead band.
pub fn proportional(current: usize, observed: f64, target: f64, tolerance: f64) -> usize {
    if target.is_nan() || target <= 0.0 || !observed.is_finite() {
        return current;
    }
    let ratio = observed / target;
    if (ratio - 1.0).abs() <= tolerance {
        return current;
    }
    // The small epsilon keeps 2.0000000001 from becoming 3.
    let want = (current as f64 * ratio - 1e-9).ceil();
    if want <= 0.0 {
        0
    } else {
        want as usize
    }
}

/// Scores of the scored active containers: `(average, minimum)`.
fn score_stats(pool: &[Container]) -> Option<(f64, f64)> {
    let scored: Vec<f64> = pool
        .iter()
        .filter(|c| c.is_scored_active())
        .filter_map(Container::overall)
        .collect();
    if scored.is_empty() {
        return None;
    }
    let avg = scored.iter().sum::<f64>() / scored.len() as f64;
    let min = scored.iter().copied().fold(f64::INFINITY, f64::min);
    Some((avg, min))
}

/// The panic window's request rate is at least that of its newest this many milliseconds.
pub const NEWEST_MS: u64 = 3_000;

/// Requests a CPU cost must be measured over before it is used.
pub const MIN_COST_REQUESTS: u64 = 20;

/// Whether a round can teach the CPU cost of a request: at least one request per second
/// completed, requests sent about as fast as they completed (`flow` within `1 ± tol`: no
/// backlog either way) and no container above 90 % of its CPUs (under saturation the
/// completions say what the pool manages, not what a request costs).
pub fn steady(completed_per_s: f64, flow: Option<f64>, busiest: f64, tol: f64) -> bool {
    completed_per_s >= 1.0 && flow.is_some_and(|f| (f - 1.0).abs() <= tol) && busiest < 0.9
}

/// The CPU seconds one request costs: the CPU time the serving pool used over the steady
/// rounds of the last `keep_ms` divided by the requests completed in them (at least
/// [`MIN_COST_REQUESTS`]); the last such figure while there are none (a long spike keeps
/// the cost learnt before it). Ratio of sums, so that a round where the one-second CPU
/// sample lags the reports weighs little.
#[derive(Debug, Clone, Default)]
pub struct CostMeter {
    keep_ms: u64,
    rounds: VecDeque<(Millis, f64, u64)>,
    last: Option<f64>,
}

impl CostMeter {
    pub fn new(keep_ms: u64) -> CostMeter {
        CostMeter {
            keep_ms,
            ..CostMeter::default()
        }
    }

    /// One round: `cpu_seconds` used by the serving pool, `completed` requests reported.
    pub fn record(&mut self, now: Millis, cpu_seconds: f64, completed: u64, steady: bool) {
        if steady && cpu_seconds.is_finite() && cpu_seconds >= 0.0 {
            self.rounds.push_back((now, cpu_seconds, completed));
        }
        while self
            .rounds
            .front()
            .is_some_and(|(at, ..)| now.saturating_sub(*at) > self.keep_ms)
        {
            self.rounds.pop_front();
        }
        let done: u64 = self.rounds.iter().map(|(_, _, n)| n).sum();
        if done >= MIN_COST_REQUESTS {
            let cpu: f64 = self.rounds.iter().map(|(_, c, _)| c).sum();
            self.last = Some(cpu / done as f64);
        }
    }

    /// CPU seconds per request, once measured.
    pub fn cost(&self) -> Option<f64> {
        self.last
    }
}

/// Utilisation a backlogged pool is sized for by [`size_by_flow`].
pub const FLOW_TARGET_UTILISATION: f64 = 0.8;

/// The score signal's growth checked against the flow of requests (`flow` = requests sent ÷
/// requests completed, when the balancers saw traffic). A saturated pool scores the same
/// whether it is asked for 10 % or 300 % more than it serves, and its score stays low while it
/// works off a backlog, so the score alone cannot size the step; the flow can:
/// - backlog growing (`flow > 1 + tol`): at least `ceil(current × flow / 0.8)`, the size at
///   which the demand would run the pool at 80 %;
/// - backlog shrinking (`flow < 1 − tol`): no growth, the pool is catching up;
/// - keeping up: one more container at a time.
fn size_by_flow(current: usize, by_score: usize, flow: Option<f64>, tol: f64) -> (usize, String) {
    match flow {
        Some(f) if f > 1.0 + tol => {
            let need = (current as f64 * f / FLOW_TARGET_UTILISATION - 1e-9).ceil() as usize;
            (
                by_score.max(need),
                format!(", {f:.2}× more requests sent than completed"),
            )
        }
        Some(f) if f < 1.0 - tol => (
            current,
            format!(", but the backlog is shrinking ({f:.2}× sent per completed)"),
        ),
        Some(_) => (by_score.min(current + 1), String::new()),
        None => (by_score, String::new()),
    }
}

/// Every enabled signal's proposal over one window.
pub fn proposals(
    pool: &[Container],
    current: usize,
    cfg: &ScalingConfig,
    w: &WindowStats,
) -> Vec<Proposal> {
    let mut out = Vec::new();
    let current = current.max(1);
    if let Some((avg, min)) = score_stats(pool) {
        let load = 100.0 - avg;
        let flow = w.backlog.filter(|b| b.is_finite() && *b >= 0.0);
        let mut from_demand = false;
        let (desired, target, why) = if avg < cfg.high_threshold {
            let target = 100.0 - cfg.high_threshold;
            let by_score = proportional(current, load, target, 0.0).max(current + 1);
            let by_demand = cfg
                .cpu_limit
                .zip(cfg.cpu_target)
                .zip(w.cpu_demand)
                .map(|((limit, u), demand)| (demand, limit, u));
            let (want, how) = match by_demand {
                Some((demand, limit, u)) => {
                    from_demand = true;
                    let need = (demand / (limit * u) - 1e-9).ceil().max(1.0) as usize;
                    (
                        need.max(current),
                        format!(
                            "; CPU demand {demand:.2} CPUs ({:.1} req/s) needs {need} at {:.0} % of {limit} CPU",
                            w.started_per_s,
                            u * 100.0
                        ),
                    )
                }
                None if w.covered_ms > 0 && w.started_per_s == 0.0 => (
                    current,
                    ", but the balancers sent it no request in the window (a past load)".into(),
                ),
                None => size_by_flow(current, by_score, flow, cfg.tolerance),
            };
            (
                want,
                target,
                format!(
                    "average score {avg:.1} below HIGH_LOAD_THRESHOLD {}{how}",
                    cfg.high_threshold
                ),
            )
        } else if min < cfg.critical_threshold {
            (
                current + 1,
                100.0 - cfg.critical_threshold,
                format!(
                    "lowest score {min:.1} below CRITICAL_LOAD_THRESHOLD {}",
                    cfg.critical_threshold
                ),
            )
        } else if avg > cfg.low_threshold {
            let target = 100.0 - (cfg.high_threshold + cfg.low_threshold) / 2.0;
            (
                proportional(current, load, target, 0.0).min(current),
                target,
                format!(
                    "average score {avg:.1} above LOW_LOAD_THRESHOLD {}",
                    cfg.low_threshold
                ),
            )
        } else {
            (
                current,
                100.0 - avg,
                format!("average score {avg:.1} within the thresholds"),
            )
        };
        out.push(Proposal {
            signal: Signal::Score,
            desired,
            observed: round2(load),
            target,
            why,
            from_demand,
        });
    }
    if let (Some(target), true) = (cfg.target_concurrency, w.covered_ms > 0) {
        let per = w.concurrency / current as f64;
        let mut desired = proportional(current, per, target, cfg.tolerance);
        // Requests queued while the pool was smaller are in flight too: while that backlog
        // shrinks, the pool is catching up and more containers would be too many.
        if w.backlog.is_some_and(|f| f < 1.0 - cfg.tolerance) {
            desired = desired.min(current);
        }
        out.push(Proposal {
            signal: Signal::Concurrency,
            desired,
            observed: round2(w.concurrency),
            target,
            why: format!(
                "concurrency {:.1} / target {target} per container",
                w.concurrency
            ),
            from_demand: true,
        });
    }
    if let (Some(target), Some(depth)) = (cfg.target_queue, w.queue_depth) {
        let per = depth / current as f64;
        out.push(Proposal {
            signal: Signal::Queue,
            desired: proportional(current, per, target, cfg.tolerance),
            observed: round2(depth),
            target,
            why: format!("task queue depth {depth:.0} / target {target} per container"),
            from_demand: true,
        });
    }
    out
}

/// The winning (largest) proposal; ties go to the first signal.
fn winner(props: &[Proposal]) -> Option<&Proposal> {
    props
        .iter()
        .reduce(|best, p| if p.desired > best.desired { p } else { best })
}

/// Decides whether to scale the pool now (see the module docs).
///
/// `desired` is the current desired size; `check_due`: `SCALE_CHECK_PERIOD` has passed since
/// the last check (panic acts regardless).
pub fn decide(
    pool: &[Container],
    desired: usize,
    cfg: &ScalingConfig,
    state: &mut ScalerState,
    obs: &Observed,
    now: Millis,
    check_due: bool,
) -> Decision {
    let active = pool.iter().filter(|c| c.is_active()).count();
    let starting = pool.iter().filter(|c| c.category == Category::Init).count();
    let current = active.max(1);
    let host_busy = obs.host_busy.filter(|b| b.is_finite());
    let was_saturated = state.host_saturated;
    state.host_saturated = cfg.host_saturation < 1.0
        && (host_busy.is_some_and(|b| b >= cfg.host_saturation)
            || (was_saturated && obs.host_busy_max.is_some_and(|b| b >= cfg.host_saturation)));

    if obs.balancers > 0 && obs.panic.covered_ms < SETTLE_MS.min(ms(cfg.panic_window)) {
        return Decision::hold(format!(
            "settling: {} ms of reports since the pool changed",
            obs.panic.covered_ms
        ));
    }
    let panic_props = proposals(pool, current, cfg, &obs.panic);
    let stable_props = proposals(pool, current, cfg, &obs.stable);
    let (Some(panic_best), Some(stable_best)) = (winner(&panic_props), winner(&stable_props))
    else {
        state.recording_since_ms = None;
        state.recommendations.clear();
        return Decision::hold("no scored container and no traffic signal yet");
    };

    // Stabilisation of scale-down: remember the stable proposals. The window restarts while
    // a container is starting: the pool is changing, so it is not yet the pool judged.
    let window_ms = ms(cfg.scale_down_window);
    if starting > 0 {
        state.recording_since_ms = None;
    }
    state.recording_since_ms.get_or_insert(now);
    state.recommendations.push_back((now, stable_best.desired));
    while state
        .recommendations
        .front()
        .is_some_and(|(at, _)| now.saturating_sub(*at) > window_ms)
    {
        state.recommendations.pop_front();
    }

    let panicking = panic_best.desired as f64 >= cfg.panic_threshold * current as f64;
    if panicking {
        state.panic_until_ms = Some(now + ms(cfg.stable_window));
    }
    let in_panic = state.panic_until_ms.is_some_and(|t| now < t);
    if !check_due && !panicking {
        return Decision::hold("waiting for the next check");
    }
    let (best, props, window) = if in_panic && panic_best.desired >= stable_best.desired {
        (panic_best, &panic_props, "panic")
    } else if stable_best.desired > current && panic_best.desired < stable_best.desired {
        // Growth must still be wanted now: a load that ended seconds ago stays in the stable
        // window for a minute, and the recent window says what is left of it.
        (
            panic_best,
            &panic_props,
            "panic (the stable window asks more)",
        )
    } else {
        (stable_best, &stable_props, "stable")
    };
    let bounded = best.desired.clamp(cfg.min_containers, cfg.max_containers);
    let details = |extra: serde_json::Value| {
        let mut d = json!({
            "current": current,
            "desired": desired,
            "starting": starting,
            "window": window,
            "panic": in_panic,
            "proposals": props,
            "panic_proposals": panic_props,
            "stable_proposals": stable_props,
            "host_busy": host_busy.map(round2),
            "min_containers": cfg.min_containers,
            "max_containers": cfg.max_containers,
        });
        if let (Some(d), serde_json::Value::Object(extra)) = (d.as_object_mut(), extra) {
            d.extend(extra);
        }
        d
    };
    let cooldown_ms = ms(cfg.cooldown);
    let cooling = state
        .last_scale_ms
        .map(|t| now.saturating_sub(t))
        .filter(|s| *s < cooldown_ms);
    let why = if in_panic {
        format!("{} ({window} window, panic)", best.why)
    } else {
        format!("{} ({window} window)", best.why)
    };

    if bounded > current {
        // In panic a demand-sized step counts the starting containers (they are in
        // `current`) and goes on without waiting for them or for the cooldown.
        let urgent = in_panic && best.from_demand;
        if starting > 0 && !urgent {
            return Decision::hold(format!(
                "{why}, waiting for {starting} starting container(s)"
            ));
        }
        if state.host_saturated {
            return Decision::hold(format!(
                "{why}, but the host is saturated ({:.0} % of its CPUs busy): more containers would not help",
                host_busy.unwrap_or(1.0) * 100.0
            ));
        }
        if let Some(s) = cooling.filter(|_| !urgent) {
            return Decision::hold(format!("{why}, cooling down ({s} of {cooldown_ms} ms)"));
        }
        let rate_cap = (current + cfg.step).max((current as f64 * cfg.up_rate).ceil() as usize);
        let to = bounded.min(rate_cap);
        state.last_scale_ms = Some(now);
        let limited = if to < bounded {
            format!(" (limited by SCALE_UP_RATE from {bounded})")
        } else {
            String::new()
        };
        return Decision::Up {
            count: to - current,
            reason: format!("{why}{limited}"),
            details: details(json!({ "to": to, "proposed": best.desired })),
        };
    }

    if bounded < current && !in_panic {
        let covered = state
            .recording_since_ms
            .is_some_and(|t| now.saturating_sub(t) >= window_ms);
        let stabilised = state
            .recommendations
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(current)
            .clamp(cfg.min_containers, cfg.max_containers);
        if !covered {
            return Decision::hold(format!(
                "{why}, proposals recorded for {} of {window_ms} ms",
                now.saturating_sub(state.recording_since_ms.unwrap_or(now))
            ));
        }
        if stabilised >= current {
            return Decision::hold(format!(
                "{why}, but a proposal of the last {window_ms} ms needs {stabilised}"
            ));
        }
        if starting > 0 {
            return Decision::hold(format!(
                "{why}, waiting for {starting} starting container(s)"
            ));
        }
        if let Some(s) = cooling {
            return Decision::hold(format!("{why}, cooling down ({s} of {cooldown_ms} ms)"));
        }
        let most = cfg
            .step
            .max(current - (current as f64 / cfg.down_rate).ceil() as usize);
        let to = stabilised.max(current.saturating_sub(most));
        let victims = pick_victims(pool, current - to);
        if victims.is_empty() {
            return Decision::hold(format!("{why}, but no container can be removed"));
        }
        state.last_scale_ms = Some(now);
        return Decision::Down {
            reason: why,
            details: details(json!({ "to": current - victims.len(), "victims": victims })),
            victims,
        };
    }
    Decision::hold(format!("{why}: {current} is right"))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The `n` least-loaded scored active containers (never INIT, never SUNDOWN): highest overall
/// score first; ties go to the newest (`created_ms`), then to the smaller id.
pub fn pick_victims(pool: &[Container], n: usize) -> Vec<String> {
    let mut candidates: Vec<(&Container, f64)> = pool
        .iter()
        .filter(|c| c.is_scored_active())
        .filter_map(|c| c.overall().map(|o| (c, o)))
        .collect();
    candidates.sort_by(|(a, sa), (b, sb)| {
        sb.total_cmp(sa)
            .then(b.created_ms.cmp(&a.created_ms))
            .then(a.id.cmp(&b.id))
    });
    candidates
        .into_iter()
        .take(n)
        .map(|(c, _)| c.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scores;
    use std::time::Duration;

    fn cfg() -> ScalingConfig {
        ScalingConfig {
            min_containers: 1,
            max_containers: 10,
            high_threshold: 55.0,
            low_threshold: 80.0,
            critical_threshold: 20.0,
            cooldown: Duration::from_secs(5),
            step: 1,
            check_period: Duration::from_secs(10),
            scale_down_window: Duration::from_secs(60),
            target_concurrency: None,
            target_queue: None,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            tolerance: 0.1,
            up_rate: 4.0,
            down_rate: 2.0,
            host_saturation: 0.95,
            cpu_limit: None,
            cpu_target: None,
        }
    }

    fn container(id: &str, category: Category, overall: Option<f64>, created_ms: u64) -> Container {
        Container {
            id: id.into(),
            name: format!("app-{id}"),
            address: "10.0.0.1:5000".into(),
            image: "img".into(),
            category,
            scores: overall.map(|o| Scores {
                cpu: o,
                memory: o,
                network: o,
                availability: o,
                overall: o,
            }),
            created_ms,
            ready_ms: Some(created_ms),
            scored_ms: overall.map(|_| created_ms),
            sundown_ms: None,
            sundown_version: None,
            sundown_balancers: Vec::new(),
        }
    }

    /// Scored containers a, b, c… with these overall scores.
    fn pool(scores: &[f64]) -> Vec<Container> {
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let id = char::from(b'a' + i as u8).to_string();
                let cat = crate::scoring::category(*s, 70.0, 40.0);
                container(&id, cat, Some(*s), i as u64)
            })
            .collect()
    }

    /// The same traffic over both windows, with plenty of coverage.
    fn seen(concurrency: f64, backlog: Option<f64>, depth: Option<f64>) -> Observed {
        let w = WindowStats {
            concurrency,
            backlog,
            queue_depth: depth,
            covered_ms: 6_000,
            // Some requests sent (without completions figures the flow is unknown).
            started_per_s: 10.0,
            ..WindowStats::default()
        };
        Observed {
            panic: w,
            stable: w,
            host_busy: Some(0.5),
            host_busy_max: Some(0.5),
            balancers: 1,
        }
    }

    fn quiet() -> Observed {
        seen(0.0, None, None)
    }

    fn to(d: &Decision, current: usize) -> Option<usize> {
        match d {
            Decision::Up { count, .. } => Some(current + count),
            Decision::Down { victims, .. } => Some(current - victims.len()),
            Decision::Hold { .. } => None,
        }
    }

    fn hold_reason(d: &Decision) -> &str {
        match d {
            Decision::Hold { reason } => reason,
            other => panic!("not a hold: {other:?}"),
        }
    }

    #[test]
    fn proportional_with_dead_band() {
        // (current, observed, target, tolerance, want)
        let table = [
            (2, 10.0, 10.0, 0.1, 2),
            (2, 10.9, 10.0, 0.1, 2), // within 10 %
            (2, 11.1, 10.0, 0.1, 3), // just outside: ceil(2.22)
            (2, 9.0, 10.0, 0.1, 2),
            (2, 8.9, 10.0, 0.1, 2), // ceil(1.78) = 2
            (4, 5.0, 10.0, 0.1, 2),
            (1, 41.0, 10.0, 0.1, 5), // 41 in flight / 10 per container
            (3, 0.0, 10.0, 0.1, 0),
            (2, 20.0, 10.0, 0.0, 4), // exactly 2× → 4, not 5
            (2, f64::NAN, 10.0, 0.1, 2),
            (2, 10.0, 0.0, 0.1, 2),
        ];
        for (current, observed, target, tol, want) in table {
            assert_eq!(
                proportional(current, observed, target, tol),
                want,
                "{current} {observed} {target} {tol}"
            );
        }
    }

    #[test]
    fn score_proposals() {
        let c = cfg();
        // (scores, backlog, proposal)
        let table: &[(&[f64], Option<f64>, usize)] = &[
            // Load 55 / 45 × 2 = 2.44 → 3.
            (&[45.0, 45.0], None, 3),
            // Just below HIGH: at least one more.
            (&[54.9, 54.9], None, 3),
            // Saturated, 3× more sent than completed: the flow sizes it, ceil(3 / 0.8) = 4
            // (the score alone says ceil(77 / 45) = 2).
            (&[23.0], Some(3.0), 4),
            // Keeping up (within the tolerance): one more at a time, though the score
            // alone asks ceil(2 × 90 / 45) = 4.
            (&[23.0], Some(1.05), 2),
            (&[10.0, 10.0], Some(1.0), 3),
            // Working off a backlog: no growth while it shrinks.
            (&[12.0, 12.0, 12.0, 12.0], Some(0.75), 4),
            // No traffic seen: the score alone.
            (&[10.0, 10.0], None, 4),
            // One critical container, average fine: one more.
            (&[90.0, 90.0, 10.0], None, 4),
            // Within the band: no change.
            (&[60.0, 75.0], None, 2),
            // Idle: shrink to where the load would be mid-band: 4 × 5 / 32.5 = 0.6 → 1.
            (&[95.0, 95.0, 95.0, 95.0], None, 1),
            // Above LOW but not idle: 4 × 18 / 32.5 = 2.2 → 3.
            (&[82.0, 82.0, 82.0, 82.0], None, 3),
        ];
        for (scores, backlog, want) in table {
            let p = pool(scores);
            let w = WindowStats {
                backlog: *backlog,
                covered_ms: 6000,
                started_per_s: 10.0,
                ..WindowStats::default()
            };
            let props = proposals(&p, scores.len(), &c, &w);
            assert_eq!(props.len(), 1, "only the score signal is on");
            assert_eq!(props[0].desired, *want, "{scores:?} {backlog:?}: {props:?}");
        }
    }

    #[test]
    fn cpu_cost_is_learnt_only_while_the_pool_keeps_up() {
        assert!(steady(2.0, Some(1.05), 0.3, 0.1));
        for (done, flow, busiest) in [
            (0.5, Some(1.0), 0.5),
            (12.5, Some(3.0), 0.5),
            (12.5, Some(0.5), 0.5),
            (12.5, Some(1.0), 0.95),
            (12.5, None, 0.5),
        ] {
            assert!(
                !steady(done, flow, busiest, 0.1),
                "{done} {flow:?} {busiest}"
            );
        }
        let mut m = CostMeter::new(60_000);
        // 4 req/s at 20 ms each over 2 s rounds; the first round's CPU sample lags (0).
        m.record(0, 0.0, 8, true);
        m.record(2_000, 0.16, 8, true);
        assert_eq!(m.cost(), None, "16 requests are not enough");
        m.record(4_000, 0.16, 8, true);
        assert!((m.cost().unwrap() - 0.32 / 24.0).abs() < 1e-12);
        for i in 3..40 {
            m.record(i * 2_000, 0.16, 8, true);
        }
        // The lagging first round is out of the 60 s kept: exactly 20 ms.
        assert!((m.cost().unwrap() - 0.02).abs() < 1e-12, "{:?}", m.cost());
        // A long spike (no steady round) keeps the last cost.
        m.record(200_000, 0.25, 3, false);
        assert!((m.cost().unwrap() - 0.02).abs() < 1e-12);
    }

    #[test]
    fn cpu_demand_sizes_the_score_signal() {
        // The benchmark's step: 0.25-CPU containers, 20 ms of CPU per request, 37.5 req/s;
        // with the default weights the CPU target is 0.45 / 0.35^¼ = 58.5 %.
        let c = ScalingConfig {
            cpu_limit: Some(0.25),
            cpu_target: Some(0.45 / 0.35f64.powf(0.25)),
            ..cfg()
        };
        let w = |sent: f64| WindowStats {
            started_per_s: sent,
            cpu_demand: Some(sent * 0.02),
            backlog: Some(6.3),
            covered_ms: 6000,
            ..WindowStats::default()
        };
        // 0.75 CPUs / (0.25 × 0.585) = 5.13 → 6, whatever the (lumpy) flow says.
        let props = proposals(&pool(&[20.0]), 1, &c, &w(37.5));
        assert_eq!(props[0].desired, 6, "{props:?}");
        assert!(
            props[0]
                .why
                .contains("CPU demand 0.75 CPUs (37.5 req/s) needs 6"),
            "{props:?}"
        );
        // At 6 the score may stay low (latency), but the demand is covered: no growth.
        let props = proposals(&pool(&[40.0; 6]), 6, &c, &w(37.5));
        assert_eq!(props[0].desired, 6, "{props:?}");
        // Without a limit (or before a cost is learnt) the flow decides.
        let props = proposals(&pool(&[20.0]), 1, &cfg(), &w(37.5));
        assert_eq!(props[0].desired, 8, "ceil(6.3 / 0.8): {props:?}");
    }

    #[test]
    fn a_load_that_has_ended_does_not_grow_the_pool() {
        let c = ScalingConfig {
            target_concurrency: Some(2.0),
            ..cfg()
        };
        // The stable window still holds the load (8 in flight), the recent one has none.
        let mut obs = seen(8.0, None, None);
        obs.panic.concurrency = 0.0;
        let d = decide(
            &pool(&[60.0, 60.0]),
            2,
            &c,
            &mut ScalerState::default(),
            &obs,
            0,
            true,
        );
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // Both windows busy: it grows.
        obs.panic.concurrency = 8.0;
        let d = decide(
            &pool(&[60.0, 60.0]),
            2,
            &c,
            &mut ScalerState::default(),
            &obs,
            0,
            true,
        );
        assert_eq!(to(&d, 2), Some(4), "{d:?}");
    }

    #[test]
    fn low_scores_without_requests_do_not_grow_the_pool() {
        // The balancers report, but nothing was sent: the low scores are a past load's.
        let w = WindowStats {
            covered_ms: 6000,
            ..WindowStats::default()
        };
        let props = proposals(&pool(&[30.0, 30.0]), 2, &cfg(), &w);
        assert_eq!(props[0].desired, 2, "{props:?}");
        assert!(props[0].why.contains("no request"), "{props:?}");
        // No balancer at all (nothing covered): the score alone decides.
        let props = proposals(&pool(&[30.0, 30.0]), 2, &cfg(), &WindowStats::default());
        assert_eq!(props[0].desired, 4, "{props:?}");
    }

    #[test]
    fn the_largest_proposal_wins() {
        let c = ScalingConfig {
            target_concurrency: Some(10.0),
            target_queue: Some(20.0),
            ..cfg()
        };
        let p = pool(&[60.0, 60.0]);
        let props = proposals(&p, 2, &c, &seen(41.0, None, Some(30.0)).stable);
        let by = |s: Signal| props.iter().find(|p| p.signal == s).unwrap().desired;
        assert_eq!(by(Signal::Score), 2);
        assert_eq!(by(Signal::Concurrency), 5);
        assert_eq!(by(Signal::Queue), 2); // 15 per container, ceil(2 × 0.75) = 2
        assert_eq!(winner(&props).unwrap().signal, Signal::Concurrency);
        // The queue signal wins with a deep queue.
        let props = proposals(&p, 2, &c, &seen(10.0, None, Some(190.0)).stable);
        let w = winner(&props).unwrap();
        assert_eq!((w.signal, w.desired), (Signal::Queue, 10));
        // A shrinking backlog (more completed than sent) holds the concurrency signal.
        let props = proposals(&p, 2, &c, &seen(41.0, Some(0.7), None).stable);
        assert_eq!(winner(&props).unwrap().desired, 2);
        // Off when unset.
        assert_eq!(
            proposals(&p, 2, &cfg(), &seen(41.0, None, Some(190.0)).stable).len(),
            1
        );
    }

    #[test]
    fn a_spike_panics_and_acts_before_the_check_is_due() {
        let c = ScalingConfig {
            target_concurrency: Some(10.0),
            ..cfg()
        };
        let mut st = ScalerState::default();
        let p = pool(&[60.0]);
        let mut obs = seen(8.0, None, None);
        obs.panic.concurrency = 41.0;
        let d = decide(&p, 1, &c, &mut st, &obs, 1_000, false);
        assert_eq!(to(&d, 1), Some(4), "{d:?}");
        let Decision::Up {
            reason, details, ..
        } = &d
        else {
            unreachable!()
        };
        assert!(reason.contains("concurrency 41.0 / target 10"), "{reason}");
        assert!(
            reason.contains("limited by SCALE_UP_RATE from 5"),
            "{reason}"
        );
        assert!(reason.contains("panic"), "{reason}");
        assert_eq!(details["window"], "panic");
        assert_eq!(st.panic_until_ms, Some(61_000));
        // Below the panic threshold (3 → 4) nothing happens until the check is due…
        let p = pool(&[60.0, 60.0, 60.0]);
        let mut st = ScalerState::default();
        obs.panic.concurrency = 40.0;
        obs.stable.concurrency = 40.0;
        let d = decide(&p, 3, &c, &mut st, &obs, 1_000, false);
        assert_eq!(hold_reason(&d), "waiting for the next check");
        // …then the stable window decides.
        let d = decide(&p, 3, &c, &mut st, &obs, 1_000, true);
        assert_eq!(to(&d, 3), Some(4), "{d:?}");
    }

    #[test]
    fn up_is_rate_limited_bounded_and_waits_for_capacity() {
        let c = ScalingConfig {
            target_concurrency: Some(1.0),
            up_rate: 2.0,
            ..cfg()
        };
        let p = pool(&[60.0, 60.0]);
        // 100 in flight wants 100: at most ×2 → 4.
        let mut st = ScalerState::default();
        let d = decide(&p, 2, &c, &mut st, &seen(100.0, None, None), 0, true);
        assert_eq!(to(&d, 2), Some(4), "{d:?}");
        // SCALE_STEP is the floor of the rate: ×1 with step 3 still adds 3.
        let c1 = ScalingConfig {
            up_rate: 1.0,
            step: 3,
            ..c.clone()
        };
        let d = decide(
            &p,
            2,
            &c1,
            &mut ScalerState::default(),
            &seen(100.0, None, None),
            0,
            true,
        );
        assert_eq!(to(&d, 2), Some(5), "{d:?}");
        // Never above MAX_CONTAINERS.
        let big = ScalingConfig {
            up_rate: 100.0,
            ..c.clone()
        };
        let d = decide(
            &p,
            2,
            &big,
            &mut ScalerState::default(),
            &seen(100.0, None, None),
            0,
            true,
        );
        assert_eq!(to(&d, 2), Some(10), "{d:?}");
        // Cooldown since the last action (a score-sized step; no traffic seen).
        let busy = pool(&[20.0, 20.0]);
        let mut st = ScalerState {
            last_scale_ms: Some(0),
            ..ScalerState::default()
        };
        let d = decide(&busy, 2, &cfg(), &mut st, &quiet(), 4_000, true);
        assert!(
            hold_reason(&d).contains("cooling down (4000 of 5000 ms)"),
            "{d:?}"
        );
        // A starting container: capacity is arriving, and the score cannot see it yet.
        let mut q = busy.clone();
        q.push(container("z", Category::Init, None, 9));
        let d = decide(
            &q,
            3,
            &cfg(),
            &mut ScalerState::default(),
            &quiet(),
            0,
            true,
        );
        assert!(hold_reason(&d).contains("waiting for 1 starting"), "{d:?}");
        // A demand-sized step in panic counts the starting container (it is in `current`)
        // and goes on, cooldown or not.
        let mut q = p.clone();
        q.push(container("z", Category::Init, None, 9));
        let mut st = ScalerState {
            last_scale_ms: Some(0),
            ..ScalerState::default()
        };
        let d = decide(&q, 3, &c, &mut st, &seen(100.0, None, None), 1_000, false);
        assert_eq!(to(&d, 3), Some(6), "{d:?}");
    }

    #[test]
    fn a_saturated_host_gets_no_more_containers() {
        let mut st = ScalerState::default();
        let p = pool(&[20.0, 20.0]);
        let mut obs = quiet();
        obs.host_busy = Some(0.97);
        let d = decide(&p, 2, &cfg(), &mut st, &obs, 0, true);
        assert!(hold_reason(&d).contains("host is saturated (97 %"), "{d:?}");
        assert!(st.host_saturated);
        // The same pool on a host with room grows.
        obs.host_busy = Some(0.6);
        let d = decide(&p, 2, &cfg(), &mut st, &obs, 0, true);
        assert!(to(&d, 2).is_some_and(|n| n > 2), "{d:?}");
        assert!(!st.host_saturated);
        // Once saturated, it stays so while any reading of the panic window is.
        obs.host_busy = Some(0.7);
        obs.host_busy_max = Some(0.99);
        let mut st = ScalerState {
            host_saturated: true,
            ..ScalerState::default()
        };
        let d = decide(&p, 2, &cfg(), &mut st, &obs, 0, true);
        assert!(hold_reason(&d).contains("host is saturated"), "{d:?}");
        let mut st = ScalerState::default();
        let d = decide(&p, 2, &cfg(), &mut st, &obs, 0, true);
        assert!(to(&d, 2).is_some(), "not entered on one reading: {d:?}");
        obs.host_busy_max = None;
        // HOST_SATURATION 1 turns it off; an unknown host load never blocks.
        let off = ScalingConfig {
            host_saturation: 1.0,
            ..cfg()
        };
        obs.host_busy = Some(1.0);
        let mut st = ScalerState::default();
        assert!(to(&decide(&p, 2, &off, &mut st, &obs, 0, true), 2).is_some());
        obs.host_busy = None;
        let mut st = ScalerState::default();
        assert!(to(&decide(&p, 2, &cfg(), &mut st, &obs, 0, true), 2).is_some());
    }

    #[test]
    fn settling_after_a_change() {
        let mut obs = seen(40.0, None, None);
        obs.panic.covered_ms = 1_000;
        let d = decide(
            &pool(&[20.0]),
            1,
            &cfg(),
            &mut ScalerState::default(),
            &obs,
            0,
            true,
        );
        assert!(hold_reason(&d).starts_with("settling"), "{d:?}");
        // Without any balancer, the score signal alone decides.
        obs.balancers = 0;
        let d = decide(
            &pool(&[20.0]),
            1,
            &cfg(),
            &mut ScalerState::default(),
            &obs,
            0,
            true,
        );
        assert!(to(&d, 1).is_some(), "{d:?}");
    }

    #[test]
    fn down_is_stabilised_rate_limited_and_bounded() {
        let c = ScalingConfig {
            min_containers: 2,
            scale_down_window: Duration::from_secs(60),
            ..cfg()
        };
        let p = pool(&[98.0; 8]);
        let mut st = ScalerState::default();
        let mut now = 0;
        // Proposals are recorded for a whole window before the first step.
        while now < 60_000 {
            let d = decide(&p, 8, &c, &mut st, &quiet(), now, true);
            assert!(
                hold_reason(&d).contains("proposals recorded for"),
                "{now}: {d:?}"
            );
            now += 2_000;
        }
        let d = decide(&p, 8, &c, &mut st, &quiet(), now, true);
        // 8 → at most halved → 4 (the proposal, 1, is below DEFAULT_CONTAINER 2 anyway).
        assert_eq!(to(&d, 8), Some(4), "{d:?}");
        // One busy proposal in the window keeps the pool.
        let mut st = ScalerState::default();
        for t in (0..=60_000).step_by(2_000) {
            let scores = if t == 30_000 { [50.0; 8] } else { [98.0; 8] };
            let _ = decide(&pool(&scores), 8, &c, &mut st, &quiet(), t, t != 30_000);
        }
        let d = decide(&p, 8, &c, &mut st, &quiet(), 62_000, true);
        assert!(
            hold_reason(&d).contains("a proposal of the last 60000 ms needs"),
            "{d:?}"
        );
        // Never below DEFAULT_CONTAINER.
        let small = pool(&[98.0, 98.0]);
        let mut st = ScalerState::default();
        for t in (0..=62_000).step_by(2_000) {
            let d = decide(&small, 2, &c, &mut st, &quiet(), t, true);
            assert!(matches!(d, Decision::Hold { .. }), "{t}: {d:?}");
        }
    }

    #[test]
    fn the_down_window_restarts_while_a_container_starts() {
        let c = ScalingConfig {
            scale_down_window: Duration::from_secs(3),
            ..cfg()
        };
        let mut st = ScalerState {
            recording_since_ms: Some(0),
            ..ScalerState::default()
        };
        let mut q = pool(&[98.0, 98.0]);
        q.push(container("z", Category::Init, None, 9));
        let d = decide(&q, 3, &c, &mut st, &quiet(), 10_000, true);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_eq!(st.recording_since_ms, Some(10_000));
        // Scored now: the idle pool of 3 shrinks only a whole window later.
        let idle = pool(&[98.0, 98.0, 98.0]);
        let d = decide(&idle, 3, &c, &mut st, &quiet(), 11_000, true);
        assert!(
            hold_reason(&d).contains("recorded for 1000 of 3000"),
            "{d:?}"
        );
        let d = decide(&idle, 3, &c, &mut st, &quiet(), 13_000, true);
        assert!(to(&d, 3).is_some_and(|n| n < 3), "{d:?}");
    }

    #[test]
    fn no_scale_down_in_panic() {
        let c = ScalingConfig {
            target_concurrency: Some(10.0),
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        let mut st = ScalerState {
            panic_until_ms: Some(100_000),
            ..ScalerState::default()
        };
        let d = decide(
            &pool(&[90.0; 6]),
            6,
            &c,
            &mut st,
            &seen(10.0, None, None),
            50_000,
            true,
        );
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        let d = decide(
            &pool(&[90.0; 6]),
            6,
            &c,
            &mut st,
            &seen(10.0, None, None),
            100_000,
            true,
        );
        assert_eq!(
            to(&d, 6),
            Some(3),
            "after the panic the stable window shrinks it: {d:?}"
        );
    }

    #[test]
    fn init_containers_are_not_averaged_nor_victims() {
        let mut p = pool(&[98.0, 98.0]);
        p.push(container("z", Category::Init, None, 9));
        assert_eq!(score_stats(&p), Some((98.0, 98.0)));
        assert_eq!(pick_victims(&p, 5), ["b", "a"]);
        let none: &[Container] = &[container("z", Category::Init, None, 9)];
        let d = decide(
            none,
            1,
            &cfg(),
            &mut ScalerState::default(),
            &quiet(),
            0,
            true,
        );
        assert!(hold_reason(&d).contains("no scored container"), "{d:?}");
    }

    #[test]
    fn victims_are_least_loaded_newest_first() {
        let mut p = pool(&[60.0, 90.0, 90.0, 75.0]);
        p[1].created_ms = 5;
        p.push(container("s", Category::Sundown, Some(99.0), 10));
        assert_eq!(pick_victims(&p, 2), ["b", "c"]);
        assert_eq!(pick_victims(&p, 9), ["b", "c", "d", "a"]);
    }

    /// The load step of the issue, simulated: one 0.25-CPU container, 3× the load it can
    /// serve. The proposals, once the pool is at the size the load needs, ask for no more.
    #[test]
    fn load_step_reaches_the_needed_size_without_overshoot() {
        let c = ScalingConfig {
            target_concurrency: Some(2.0),
            ..cfg()
        };
        // Saturated, 3× more sent than served, 40 in flight and growing.
        let mut st = ScalerState::default();
        let mut obs = seen(40.0, Some(3.0), None);
        obs.stable.concurrency = 10.0;
        let d = decide(&pool(&[23.0]), 1, &c, &mut st, &obs, 0, false);
        assert_eq!(to(&d, 1), Some(4), "×4 at most: {d:?}");
        // At 4, the backlog drains (completed above sent), 1.9 in flight each.
        let obs = seen(7.6, Some(0.8), None);
        let d = decide(
            &pool(&[45.0, 60.0, 60.0, 60.0]),
            4,
            &c,
            &mut st,
            &obs,
            10_000,
            true,
        );
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    }
}

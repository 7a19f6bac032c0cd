//! Container scores: pure functions from Docker stats samples and measured response times
//! to sub-scores, an overall score and a category. Every score runs from 0 (saturated) to
//! 100 (idle); higher is better.
//!
//! # Sub-scores
//! - **CPU**: `cpu% = Δcontainer / Δsystem × online_cpus × 100` ([`cpu_percent`]; Docker's
//!   `system_cpu_usage` counts all CPUs, so this is "percent of one CPU" and reaches
//!   `online_cpus × 100`). [`cpu_score`] is `100 − cpu% / capacity`, clamped, where the
//!   capacity ([`cpu_capacity`]) is what the container can actually get: its CPU limit
//!   (`CONTAINER_CPUS`, capped at the online CPUs) or, without one, the online CPUs — and,
//!   when the host is busy, no more than what it uses plus what the host leaves idle, but no
//!   less than its fair share (online CPUs / active containers). Without the busy-host rule a
//!   container of an unlimited pool on a saturated 2-CPU host, using 0.35 CPU, scored 83
//!   ("17 % of the host") while its requests were 14× slower than idle; with it, its capacity
//!   is `max(0.35 + 0, 2 / 5) = 0.4` CPU and its score 12.5.
//!   Examples (2 CPUs): Δcontainer 2e8 ns, Δsystem 2e9 ns → cpu% 20 → idle host: score
//!   100 − 20/2 = 90; with a 0.5-CPU limit 100 − 20/0.5 = 60.
//!   Docker's first frame has no previous reading (`precpu` zero): no CPU figure then.
//! - **Memory**: `100 − used / limit × 100` ([`memory_score`]), `used` excluding page cache.
//! - **Network**: the prototype used the *relative change* of the byte counters between two
//!   samples, which scores a steady 1 Gbit/s stream as idle and a jump from 1 KB to 2 KB as
//!   saturated. [`network_score`] uses the *rate* instead:
//!   `rate = Δ(rx + tx) / Δt`, `network% = rate / NETWORK_CAPACITY × 100`, score `100 − network%`.
//! - **Availability** ([`Availability`]): from response times, each at least
//!   [`RT_FLOOR_MS`] (differences below it are noise for balancing purposes):
//!   - `best` = minimum of the last `BEST_TIME_WINDOW` successful samples,
//!     `effective = 0.3·current + 0.7·average(history)`, `base = 100·(best/effective)^1.5`
//!     (capped at 100);
//!   - penalty: when `current` exceeds the dynamic threshold `mean + 2·max(σ, 0.1·mean)` of the
//!     samples *before* it, subtract `30 × min(1, (current − threshold) / threshold)`;
//!   - trend: `10 × (older − recent) / older` (clamped to ±10) where `recent`/`older` are the means
//!     of the newer/older half of the history: getting slower costs up to 10 points;
//!   - the result, clamped to 0..=100, is smoothed: `ema = α·raw + (1 − α)·ema`.
//!
//!   A failed probe is a sample of `PROBE_TIMEOUT` (it raises `current` and the average) that
//!   never counts as `best`; with no successful sample in the best window the raw score is 0.
//!   Note the score is *relative* to the container's own best: it measures degradation, while
//!   absolute slowness under load shows in the CPU score.
//!
//!   Real traffic comes first: the balancers' reports are folded in without mixing scales
//!   (probe answers take a millisecond, real requests may take a hundred): a report's p50
//!   latency feeds a second history scored the same way, which replaces the probes' score
//!   while it is fresh; the error ratio (errors / requests, itself EMA-smoothed) multiplies
//!   the result by `1 − ratio`. Reports with no requests carry no information and are
//!   ignored; report data older than `BEST_TIME_WINDOW` probe rounds is dropped, so a
//!   container that gets no traffic is judged on its probes alone, and a report sample
//!   expires after `HISTORY_SIZE` probe rounds, so the slow answers of a past load do not
//!   hold the score down while light traffic trickles in afterwards.
//!
//! # Overall score and category
//! Each sub-score `sᵢ` is turned into a load `dᵢ = 100 − sᵢ`; the overall score is
//! `100 − (Σ wᵢ·dᵢᵖ / Σ wᵢ)^(1/p)` ([`overall`]), a weighted power mean of the loads with
//! `p = SCORE_POWER` (default 4), clamped to 0..=100. Why: with the plain weighted mean
//! (`p = 1`) dimensions that stay idle (memory, network) hold the score up, so a container
//! whose CPU is saturated scored `100 − 0.35·100 = 65` (LU) at worst, and the default
//! `HIGH_LOAD_THRESHOLD` 55 was out of reach. With `p = 4` the most loaded dimension
//! dominates, yet the weights still rank the dimensions, and equal loads give the same
//! score as the mean (`dᵢ = d` for all i → `100 − d`). Worked examples, default weights
//! (.35 / .25 / .15 / .25, so normalised .35, .25, .15, .25):
//! - CPU saturated, the rest idle: `100 − (.35·100⁴)^¼ = 100 − 76.9 = 23.1` → HU (mean: 65);
//! - CPU 83, memory 100, network 100, availability 17 (the report that led here):
//!   `100 − (.35·17⁴ + .25·83⁴)^¼ = 100 − 58.7 = 41.3` → MU (mean: 72.3, LU);
//! - every dimension at 60: `100 − 40 = 60`, the same as the mean;
//! - CPU 50, rest idle: `100 − .769·50 = 61.5`: with one dimension loaded the score falls
//!   linearly with its load (the slope is `(wᵢ/Σw)^(1/p)`), which keeps the proportional
//!   scaling of [`crate::scaler`] well behaved.
//!
//! [`category`]: LU when `>= LU_THRESHOLD`, MU when `>= MU_THRESHOLD`, else HU.

use std::collections::VecDeque;

use crate::config::{ScoringConfig, Weights};
use crate::model::{Category, Scores, StatsSample};

/// Response times below this many milliseconds count as this (noise floor).
pub const RT_FLOOR_MS: f64 = 5.0;
/// Largest penalty, in points, for a response above the dynamic threshold.
pub const PENALTY_MAX: f64 = 30.0;
/// Largest trend term, in points, either way.
pub const TREND_MAX: f64 = 10.0;
/// Response time a failed probe counts as when none is configured (the default PROBE_TIMEOUT).
pub const DEFAULT_FAILURE_MS: f64 = 2000.0;

fn clamp_score(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 100.0)
    }
}

/// CPU use in percent of one CPU (up to `online_cpus × 100`): `Δcontainer / Δsystem ×
/// online_cpus × 100`. `None` when Δsystem is 0, a counter went backwards, or the sample has
/// no previous reading (`presystem_ns == 0`, Docker's first frame).
pub fn cpu_percent(s: &StatsSample) -> Option<f64> {
    if s.presystem_ns == 0 {
        return None;
    }
    let d_cpu = s.cpu_total_ns.checked_sub(s.precpu_total_ns)?;
    let d_sys = s.system_ns.checked_sub(s.presystem_ns)?;
    if d_sys == 0 {
        return None;
    }
    Some(d_cpu as f64 / d_sys as f64 * f64::from(s.online_cpus.max(1)) * 100.0)
}

/// What the host leaves the containers, for the CPU score without (or above) a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostShare {
    /// CPUs the host left idle during the last interval (`online × (1 − busy)`).
    pub idle_cpus: f64,
    /// The host's CPUs divided by the active pool size: what each container would get if
    /// the pool split the host evenly. A floor, so a container that wants little CPU on a busy
    /// host is not judged saturated.
    pub fair_cpus: f64,
}

/// CPUs a container can get: its limit (capped at the online CPUs) or the online CPUs and,
/// when the host's state is known, no more than what it uses plus what the host leaves idle,
/// but never less than its fair share: `min(nominal, max(used + idle, min(nominal, fair)))`.
pub fn cpu_capacity(
    used_cpus: f64,
    online: f64,
    limit: Option<f64>,
    host: Option<HostShare>,
) -> f64 {
    let nominal = limit
        .filter(|l| l.is_finite() && *l > 0.0)
        .map_or(online, |l| l.min(online));
    match host.filter(|h| h.idle_cpus.is_finite() && h.fair_cpus.is_finite()) {
        Some(h) => nominal
            .min((used_cpus + h.idle_cpus.max(0.0)).max(nominal.min(h.fair_cpus.max(0.0))))
            .max(f64::MIN_POSITIVE),
        None => nominal,
    }
}

/// `100 − cpu% / capacity`, clamped to 0..=100, with the capacity of [`cpu_capacity`].
pub fn cpu_score(s: &StatsSample, cpu_limit: Option<f64>, host: Option<HostShare>) -> Option<f64> {
    let pct = cpu_percent(s)?;
    let online = f64::from(s.online_cpus.max(1));
    let capacity = cpu_capacity(pct / 100.0, online, cpu_limit, host);
    Some(clamp_score(100.0 - pct / capacity))
}

/// `100 − used / limit × 100`, clamped; `None` when the limit is 0 (no memory figures).
pub fn memory_score(s: &StatsSample) -> Option<f64> {
    if s.mem_limit == 0 {
        return None;
    }
    Some(clamp_score(
        100.0 - s.mem_used as f64 / s.mem_limit as f64 * 100.0,
    ))
}

/// `100 − rate / capacity × 100` with `rate = Δ(rx + tx) / Δt` in bytes per second, clamped.
/// `None` when Δt <= 0, the capacity is not positive, or a counter went backwards (container
/// restarted, interface re-created).
pub fn network_score(prev: &StatsSample, cur: &StatsSample, capacity_bps: f64) -> Option<f64> {
    let dt_ms = cur.at_ms.checked_sub(prev.at_ms).filter(|d| *d > 0)?;
    if capacity_bps.is_nan() || capacity_bps <= 0.0 {
        return None;
    }
    let d_rx = cur.net_rx_bytes.checked_sub(prev.net_rx_bytes)?;
    let d_tx = cur.net_tx_bytes.checked_sub(prev.net_tx_bytes)?;
    let rate = (d_rx as f64 + d_tx as f64) / (dt_ms as f64 / 1000.0);
    Some(clamp_score(100.0 - rate / capacity_bps * 100.0))
}

/// `100 − (Σ wᵢ·dᵢᵖ / Σ wᵢ)^(1/p)` where `dᵢ = 100 − sᵢ` is each dimension's load: the
/// weighted power mean of the loads (`p = SCORE_POWER`). `p = 1` is the plain weighted mean;
/// a larger `p` lets the most loaded dimension dominate. Clamped to 0..=100; equal weights
/// are used when they sum to 0.
pub fn overall(weights: &Weights, power: f64, cpu: f64, mem: f64, net: f64, avail: f64) -> f64 {
    let p = if power.is_finite() && power >= 1.0 {
        power
    } else {
        1.0
    };
    let sum = weights.sum();
    let w = if sum > 0.0 {
        [
            weights.cpu,
            weights.memory,
            weights.network,
            weights.availability,
        ]
        .map(|x| x / sum)
    } else {
        [0.25; 4]
    };
    let loads = [cpu, mem, net, avail].map(|x| 100.0 - clamp_score(x));
    let mean = w
        .iter()
        .zip(loads)
        .map(|(w, d)| w * (d / 100.0).powf(p))
        .sum::<f64>();
    clamp_score(100.0 - 100.0 * mean.powf(1.0 / p))
}

/// LU when `score >= lu`, MU when `score >= mu`, else HU (high utilization: the lowest
/// scores, the busiest containers).
pub fn category(score: f64, lu: f64, mu: f64) -> Category {
    if score >= lu {
        Category::Low
    } else if score >= mu {
        Category::Medium
    } else {
        Category::High
    }
}

fn mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len();
    if n == 0 {
        0.0
    } else {
        xs.sum::<f64>() / n as f64
    }
}

/// One response-time history scored by the availability formula (see the module docs).
#[derive(Debug, Clone)]
struct RtHistory {
    /// Latest last; `None` = failure.
    samples: VecDeque<Option<f64>>,
    history_size: usize,
    best_window: usize,
    alpha: f64,
    failure_ms: f64,
    ema: Option<f64>,
}

impl RtHistory {
    fn new(history_size: usize, best_window: usize, alpha: f64, failure_ms: f64) -> RtHistory {
        let history_size = history_size.max(2);
        RtHistory {
            samples: VecDeque::with_capacity(history_size + 1),
            history_size,
            best_window: best_window.clamp(1, history_size),
            alpha: if alpha > 0.0 && alpha <= 1.0 {
                alpha
            } else {
                1.0
            },
            failure_ms: failure_ms.max(RT_FLOOR_MS),
            ema: None,
        }
    }

    fn push(&mut self, sample: Option<f64>) {
        self.samples.push_back(sample.map(|rt| rt.max(RT_FLOOR_MS)));
        while self.samples.len() > self.history_size {
            self.samples.pop_front();
        }
        let raw = self.raw();
        self.ema = Some(match self.ema {
            None => raw,
            Some(prev) => self.alpha * raw + (1.0 - self.alpha) * prev,
        });
    }

    /// Drops the oldest sample (the EMA keeps its value until the next push).
    fn pop_oldest(&mut self) {
        self.samples.pop_front();
    }

    fn value(&self, s: Option<f64>) -> f64 {
        s.unwrap_or(self.failure_ms)
    }

    /// The unsmoothed score of the current history.
    fn raw(&self) -> f64 {
        let n = self.samples.len();
        let values: Vec<f64> = self.samples.iter().map(|s| self.value(*s)).collect();
        let Some(&current) = values.last() else {
            return 0.0;
        };
        let best = self
            .samples
            .iter()
            .rev()
            .take(self.best_window)
            .flatten()
            .copied()
            .reduce(f64::min);
        let Some(best) = best else {
            return 0.0;
        };
        let effective = 0.3 * current + 0.7 * mean(values.iter().copied());
        let base = (100.0 * (best / effective).powf(1.5)).min(100.0);

        let previous = &values[..n - 1];
        let penalty = if previous.len() >= 3 {
            let m = mean(previous.iter().copied());
            let var = mean(previous.iter().map(|x| (x - m) * (x - m)));
            let threshold = m + 2.0 * var.sqrt().max(0.1 * m);
            if current > threshold {
                PENALTY_MAX * ((current - threshold) / threshold).min(1.0)
            } else {
                0.0
            }
        } else {
            0.0
        };

        let trend = if n >= 4 {
            let (older, recent) = values.split_at(n - n / 2);
            let older = mean(older.iter().copied());
            let recent = mean(recent.iter().copied());
            TREND_MAX * ((older - recent) / older).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        clamp_score(base - penalty + trend)
    }
}

/// Availability of one container from its response times (probes and balancers' reports).
/// See the module docs for the formula.
#[derive(Debug, Clone)]
pub struct Availability {
    probes: RtHistory,
    reports: RtHistory,
    /// EMA of errors / requests over reports with traffic.
    error_ratio: f64,
    /// Probe observations since the last report with traffic; `None` = no report yet.
    probes_since_report: Option<usize>,
    /// Probe rounds so far, and the round of each report sample (oldest first): report
    /// samples older than `HISTORY_SIZE` rounds are dropped, so the slow answers of a past
    /// load do not hold the score down while light traffic trickles in afterwards.
    rounds: u64,
    report_rounds: VecDeque<u64>,
}

impl Availability {
    /// `history_size` samples kept (>= 2), `best` over the last `best_window` of them,
    /// EMA factor `alpha` in (0, 1]. Failures count as [`DEFAULT_FAILURE_MS`] until
    /// [`Availability::with_failure_ms`] says otherwise.
    pub fn new(history_size: usize, best_window: usize, alpha: f64) -> Availability {
        let h = |f| RtHistory::new(history_size, best_window, alpha, f);
        Availability {
            probes: h(DEFAULT_FAILURE_MS),
            reports: h(DEFAULT_FAILURE_MS),
            error_ratio: 0.0,
            probes_since_report: None,
            rounds: 0,
            report_rounds: VecDeque::new(),
        }
    }

    /// Sets the response time a failed probe counts as (the probe timeout).
    pub fn with_failure_ms(mut self, failure_ms: f64) -> Availability {
        let f = failure_ms.max(RT_FLOOR_MS);
        self.probes.failure_ms = f;
        self.reports.failure_ms = f;
        self
    }

    fn report_is_fresh(&self) -> bool {
        self.probes_since_report
            .is_some_and(|n| n <= self.probes.best_window)
    }

    /// A successful probe that took `rt_ms` milliseconds (non-finite or negative: ignored).
    pub fn observe(&mut self, rt_ms: f64) {
        if rt_ms.is_finite() && rt_ms >= 0.0 {
            self.probes.push(Some(rt_ms));
            self.tick();
        }
    }

    /// A failed or timed-out probe: a sample of the failure time that never counts as best.
    pub fn observe_failure(&mut self) {
        self.probes.push(None);
        self.tick();
    }

    fn tick(&mut self) {
        self.rounds += 1;
        if let Some(n) = self.probes_since_report.as_mut() {
            *n += 1;
        }
    }

    /// One balancer's report for this container: `p50_ms` becomes a sample of the report
    /// history, `errors / requests` updates the error-ratio EMA. Ignored when `requests == 0`.
    pub fn observe_report(&mut self, p50_ms: Option<f64>, requests: u64, errors: u64) {
        if requests == 0 {
            return;
        }
        if let Some(p50) = p50_ms.filter(|p| p.is_finite() && *p >= 0.0) {
            let max_age = self.reports.history_size as u64;
            while self
                .report_rounds
                .front()
                .is_some_and(|r| self.rounds.saturating_sub(*r) > max_age)
            {
                self.report_rounds.pop_front();
                self.reports.pop_oldest();
            }
            self.reports.push(Some(p50));
            self.report_rounds.push_back(self.rounds);
            while self.report_rounds.len() > self.reports.samples.len() {
                self.report_rounds.pop_front();
            }
        }
        let ratio = (errors.min(requests) as f64) / requests as f64;
        let alpha = self.probes.alpha;
        // Continue the EMA while report data is fresh; after a gap, start over.
        self.error_ratio = if self.report_is_fresh() {
            alpha * ratio + (1.0 - alpha) * self.error_ratio
        } else {
            ratio
        };
        self.probes_since_report = Some(0);
    }

    /// The availability score, or `None` before any observation.
    pub fn score(&self) -> Option<f64> {
        let probe = self.probes.ema;
        if !self.report_is_fresh() {
            return probe;
        }
        // Real traffic first; probes when the reports carried no latency.
        let latency = self.reports.ema.or(probe).unwrap_or(100.0);
        Some(clamp_score(latency * (1.0 - self.error_ratio)))
    }
}

/// Per-container scoring state: the latest sub-scores and the histories behind them.
#[derive(Debug, Clone)]
pub struct ContainerScorer {
    weights: Weights,
    power: f64,
    network_capacity_bps: f64,
    cpu_limit: Option<f64>,
    prev: Option<StatsSample>,
    cpu: Option<f64>,
    /// CPUs in use at the last sample (cpu% / 100).
    cpu_cores: Option<f64>,
    memory: Option<f64>,
    network: Option<f64>,
    availability: Availability,
}

impl ContainerScorer {
    /// `cpu_limit`: the container's CPU limit in CPUs (`CONTAINER_CPUS`), if any.
    pub fn new(cfg: &ScoringConfig, cpu_limit: Option<f64>) -> ContainerScorer {
        ContainerScorer {
            weights: cfg.weights,
            power: cfg.power,
            network_capacity_bps: cfg.network_capacity_bps,
            cpu_limit,
            prev: None,
            cpu: None,
            cpu_cores: None,
            memory: None,
            network: None,
            availability: Availability::new(cfg.history_size, cfg.best_window, cfg.ema_alpha)
                .with_failure_ms(cfg.failure_ms),
        }
    }

    /// A new stats sample and, when known, what the host leaves the container. Sub-scores
    /// that cannot be computed from it keep their last value.
    pub fn on_stats(&mut self, sample: StatsSample, host: Option<HostShare>) {
        if let Some(p) = cpu_percent(&sample) {
            self.cpu_cores = Some(p / 100.0);
        }
        if let Some(c) = cpu_score(&sample, self.cpu_limit, host) {
            self.cpu = Some(c);
        }
        if let Some(m) = memory_score(&sample) {
            self.memory = Some(m);
        }
        if let Some(prev) = &self.prev {
            if let Some(n) = network_score(prev, &sample, self.network_capacity_bps) {
                self.network = Some(n);
            }
        }
        self.prev = Some(sample);
    }

    /// A probe result: `Some(response time in ms)`, or `None` when it failed or timed out.
    pub fn on_probe(&mut self, rt_ms: Option<f64>) {
        match rt_ms {
            Some(rt) => self.availability.observe(rt),
            None => self.availability.observe_failure(),
        }
    }

    /// One balancer's report for this container (see [`Availability::observe_report`]).
    pub fn on_report(&mut self, p50_ms: Option<f64>, requests: u64, errors: u64) {
        self.availability.observe_report(p50_ms, requests, errors);
    }

    /// CPUs the container used over the last stats interval.
    pub fn cpu_cores(&self) -> Option<f64> {
        self.cpu_cores
    }

    /// The current scores; `None` until there is a CPU figure and an availability
    /// observation. Memory and network count as 100 until they can be computed.
    pub fn scores(&self) -> Option<Scores> {
        let cpu = self.cpu?;
        let availability = self.availability.score()?;
        let memory = self.memory.unwrap_or(100.0);
        let network = self.network.unwrap_or(100.0);
        Some(Scores {
            cpu,
            memory,
            network,
            availability,
            overall: overall(
                &self.weights,
                self.power,
                cpu,
                memory,
                network,
                availability,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    /// A sample with Δcontainer `d_cpu` ns and Δsystem `d_sys` ns on `cpus` CPUs.
    fn cpu_sample(d_cpu: u64, d_sys: u64, cpus: u32) -> StatsSample {
        StatsSample {
            cpu_total_ns: 10_000_000_000 + d_cpu,
            precpu_total_ns: 10_000_000_000,
            system_ns: 500_000_000_000 + d_sys,
            presystem_ns: 500_000_000_000,
            online_cpus: cpus,
            ..StatsSample::default()
        }
    }

    #[test]
    fn cpu_worked_numbers() {
        // (Δcontainer ns, Δsystem ns, CPUs, limit, cpu%, score)
        type Row = (u64, u64, u32, Option<f64>, f64, f64);
        let table: &[Row] = &[
            // 2e8 / 2e9 × 2 × 100 = 20 % of one CPU; 2 CPUs available → 100 − 20/2 = 90.
            (200_000_000, 2_000_000_000, 2, None, 20.0, 90.0),
            // Same sample with a 0.5-CPU limit → 100 − 20/0.5 = 60.
            (200_000_000, 2_000_000_000, 2, Some(0.5), 20.0, 60.0),
            // A limit above the host's CPUs is capped at the online CPUs.
            (200_000_000, 2_000_000_000, 2, Some(8.0), 20.0, 90.0),
            // Both CPUs busy: 2e9 / 2e9 × 2 × 100 = 200 % → score 0.
            (2_000_000_000, 2_000_000_000, 2, None, 200.0, 0.0),
            // Idle.
            (0, 1_000_000_000, 4, None, 0.0, 100.0),
            // Over the limit (bursting above 0.5 CPU) clamps at 0.
            (1_000_000_000, 2_000_000_000, 2, Some(0.5), 100.0, 0.0),
            // online_cpus 0 is read as 1: 1e8/1e9 × 1 × 100 = 10 → 90.
            (100_000_000, 1_000_000_000, 0, None, 10.0, 90.0),
        ];
        for &(d_cpu, d_sys, cpus, limit, pct, score) in table {
            let s = cpu_sample(d_cpu, d_sys, cpus);
            let got_pct = cpu_percent(&s).unwrap();
            let got = cpu_score(&s, limit, None).unwrap();
            assert!(
                close(got_pct, pct),
                "{d_cpu}/{d_sys}: cpu% {got_pct} != {pct}"
            );
            assert!(
                close(got, score),
                "{d_cpu}/{d_sys} {limit:?}: {got} != {score}"
            );
        }
    }

    #[test]
    fn cpu_without_a_usable_delta() {
        assert_eq!(cpu_percent(&cpu_sample(100, 0, 2)), None);
        let backwards = StatsSample {
            cpu_total_ns: 5,
            precpu_total_ns: 10,
            system_ns: 100,
            presystem_ns: 50,
            online_cpus: 1,
            ..StatsSample::default()
        };
        assert_eq!(cpu_percent(&backwards), None);
        let first_frame = StatsSample {
            cpu_total_ns: 5,
            system_ns: 100,
            online_cpus: 1,
            ..StatsSample::default()
        };
        assert_eq!(cpu_percent(&first_frame), None);
        assert_eq!(cpu_score(&first_frame, None, None), None);
    }

    #[test]
    fn memory_worked_numbers() {
        let m = |used, limit| {
            memory_score(&StatsSample {
                mem_used: used,
                mem_limit: limit,
                ..StatsSample::default()
            })
        };
        assert_eq!(m(64 << 20, 256 << 20), Some(75.0)); // 64 MiB of 256 MiB → 25 % → 75
        assert_eq!(m(0, 100), Some(100.0));
        assert_eq!(m(200, 100), Some(0.0));
        assert_eq!(m(1, 0), None);
    }

    fn net(at_ms: u64, rx: u64, tx: u64) -> StatsSample {
        StatsSample {
            at_ms,
            net_rx_bytes: rx,
            net_tx_bytes: tx,
            ..StatsSample::default()
        }
    }

    #[test]
    fn network_is_a_rate_against_capacity() {
        let cap = 125e6; // 1 Gbit/s
        let a = net(10_000, 1_000_000, 2_000_000);
        // 2 s later, 50 MB received + 50 MB sent = 100 MB / 2 s = 50 MB/s = 40 % → 60.
        let b = net(12_000, 51_000_000, 52_000_000);
        assert!(close(network_score(&a, &b, cap).unwrap(), 60.0));
        // No traffic → 100, whatever the counters' size (the relative-change formula's flaw).
        assert_eq!(
            network_score(&b, &net(14_000, 51_000_000, 52_000_000), cap),
            Some(100.0)
        );
        // Above capacity clamps to 0.
        assert_eq!(
            network_score(&a, &net(11_000, 500_000_000, 2_000_000), cap),
            Some(0.0)
        );
        // Counter reset, no time passed, time going backwards, no capacity.
        assert_eq!(network_score(&b, &net(14_000, 10, 10), cap), None);
        assert_eq!(
            network_score(&a, &net(10_000, 2_000_000, 2_000_000), cap),
            None
        );
        assert_eq!(network_score(&b, &a, cap), None);
        assert_eq!(network_score(&a, &b, 0.0), None);
    }

    #[test]
    fn overall_is_a_normalised_weighted_mean() {
        let w = Weights {
            cpu: 0.35,
            memory: 0.25,
            network: 0.15,
            availability: 0.25,
        };
        // 0.35·90 + 0.25·75 + 0.15·100 + 0.25·60 = 31.5 + 18.75 + 15 + 15 = 80.25
        assert!(close(overall(&w, 1.0, 90.0, 75.0, 100.0, 60.0), 80.25));
        // Weights scaled by 4 give the same result (normalised by their sum).
        let w4 = Weights {
            cpu: 1.4,
            memory: 1.0,
            network: 0.6,
            availability: 1.0,
        };
        assert!(close(overall(&w4, 1.0, 90.0, 75.0, 100.0, 60.0), 80.25));
        let only_cpu = Weights {
            cpu: 1.0,
            memory: 0.0,
            network: 0.0,
            availability: 0.0,
        };
        assert!(close(overall(&only_cpu, 1.0, 42.0, 0.0, 0.0, 0.0), 42.0));
        assert_eq!(overall(&w, 1.0, 150.0, 150.0, 150.0, 150.0), 100.0);
        assert_eq!(overall(&w, 1.0, -5.0, -5.0, -5.0, -5.0), 0.0);
        assert_eq!(overall(&w, 1.0, f64::NAN, 0.0, 0.0, 0.0), 0.0);
    }

    #[test]
    fn power_mean_lets_the_saturated_dimension_show() {
        let w = Weights {
            cpu: 0.35,
            memory: 0.25,
            network: 0.15,
            availability: 0.25,
        };
        // (cpu, mem, net, avail, p = 1, p = 4) — the worked examples of the module docs.
        let table = [
            (
                0.0,
                100.0,
                100.0,
                100.0,
                65.0,
                100.0 - 100.0 * 0.35f64.powf(0.25),
            ),
            (83.0, 100.0, 100.0, 17.0, 73.3, 41.27),
            (60.0, 60.0, 60.0, 60.0, 60.0, 60.0),
            (
                50.0,
                100.0,
                100.0,
                100.0,
                82.5,
                100.0 - 50.0 * 0.35f64.powf(0.25),
            ),
            (100.0, 100.0, 100.0, 100.0, 100.0, 100.0),
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ];
        for (cpu, mem, net, avail, mean, p4) in table {
            let got1 = overall(&w, 1.0, cpu, mem, net, avail);
            let got4 = overall(&w, 4.0, cpu, mem, net, avail);
            assert!(
                (got1 - mean).abs() < 0.01,
                "{cpu} {avail}: mean {got1} != {mean}"
            );
            assert!((got4 - p4).abs() < 0.01, "{cpu} {avail}: p4 {got4} != {p4}");
            assert!(
                got4 <= got1 + 1e-9,
                "the power mean never scores above the mean"
            );
        }
        // Monotone: more load in any dimension never raises the score.
        let mut last = 100.0;
        for load in 0..=100 {
            let got = overall(&w, 4.0, 100.0 - f64::from(load), 90.0, 100.0, 80.0);
            assert!(got <= last + 1e-9, "{load}: {got} > {last}");
            last = got;
        }
        // A bad exponent falls back to the mean.
        assert!(close(overall(&w, f64::NAN, 90.0, 75.0, 100.0, 60.0), 80.25));
    }

    #[test]
    fn cpu_capacity_follows_the_host() {
        let h = |idle, fair| {
            Some(HostShare {
                idle_cpus: idle,
                fair_cpus: fair,
            })
        };
        // (used CPUs, online, limit, host, capacity)
        type Row = (f64, f64, Option<f64>, Option<HostShare>, f64);
        let table: &[Row] = &[
            // Host state unknown: the limit, or the online CPUs.
            (0.3, 2.0, None, None, 2.0),
            (0.3, 2.0, Some(0.5), None, 0.5),
            // Idle host: nothing changes.
            (0.3, 2.0, None, h(1.7, 0.4), 2.0),
            (0.3, 2.0, Some(0.5), h(1.7, 0.4), 0.5),
            // Saturated host, 5 containers: using 0.35, idle 0 → max(0.35, 0.4) = 0.4.
            (0.35, 2.0, None, h(0.0, 0.4), 0.4),
            // A container that wants little on a busy host is judged on its fair share.
            (0.01, 2.0, None, h(0.0, 0.4), 0.4),
            // It took more than its fair share: what it uses is what it can get.
            (0.9, 2.0, None, h(0.1, 0.4), 1.0),
            // A limit below the fair share stays the bound.
            (0.25, 2.0, Some(0.25), h(0.0, 0.4), 0.25),
        ];
        for &(used, online, limit, host, want) in table {
            let got = cpu_capacity(used, online, limit, host);
            assert!(
                close(got, want),
                "{used} {limit:?} {host:?}: {got} != {want}"
            );
        }
        // The saturating example of the issue: 0.35 CPU of 2, host busy, 5 containers.
        let s = cpu_sample(350_000_000, 2_000_000_000, 2);
        assert!(close(cpu_score(&s, None, None).unwrap(), 82.5));
        let busy = cpu_score(&s, None, h(0.0, 0.4)).unwrap();
        assert!(close(busy, 12.5), "{busy}");
    }

    #[test]
    fn category_boundaries() {
        let table = [
            (100.0, Category::Low),
            (70.0, Category::Low),
            (69.999, Category::Medium),
            (40.0, Category::Medium),
            (39.999, Category::High),
            (0.0, Category::High),
        ];
        for (score, cat) in table {
            assert_eq!(category(score, 70.0, 40.0), cat, "{score}");
        }
    }

    fn raw_scores(samples: &[Option<f64>]) -> Vec<f64> {
        // alpha 1: no smoothing, so each score is the raw formula.
        let mut a = Availability::new(20, 10, 1.0);
        samples
            .iter()
            .map(|s| {
                match s {
                    Some(rt) => a.observe(*rt),
                    None => a.observe_failure(),
                }
                a.score().unwrap()
            })
            .collect()
    }

    #[test]
    fn availability_worked_numbers() {
        let s = raw_scores(&[Some(10.0), Some(10.0), Some(10.0), Some(10.0), Some(20.0)]);
        // Steady 10 ms: best = effective → 100.
        assert_eq!(&s[..4], [100.0; 4]);
        // Then 20 ms: best 10, average 12, effective 0.3·20 + 0.7·12 = 14.4,
        // base = 100·(10/14.4)^1.5 = 57.87; threshold = 10 + 2·max(0, 1) = 12,
        // penalty = 30·(20 − 12)/12 = 20; trend: older [10,10,10] vs recent [10,20]:
        // 10·(10 − 15)/10 = −5 → 57.87 − 20 − 5 = 32.87.
        let base = 100.0 * (10.0f64 / 14.4).powf(1.5);
        assert!(close(s[4], base - 20.0 - 5.0), "{}", s[4]);
    }

    #[test]
    fn availability_ema() {
        let mut a = Availability::new(20, 10, 0.5);
        assert_eq!(a.score(), None);
        a.observe(10.0);
        assert_eq!(a.score(), Some(100.0));
        a.observe_failure();
        // raw: best 10, values [10, 2000], effective 0.3·2000 + 0.7·1005 = 1303.5,
        // base = 100·(10/1303.5)^1.5 ≈ 0.067 → EMA 0.5·0.067 + 0.5·100.
        let raw = 100.0 * (10.0f64 / 1303.5).powf(1.5);
        assert!(close(a.score().unwrap(), 0.5 * raw + 50.0));
    }

    #[test]
    fn slower_responses_score_lower() {
        let history = [Some(20.0); 8];
        let mut last = f64::INFINITY;
        for rt in [20.0, 22.0, 25.0, 30.0, 40.0, 60.0, 80.0, 200.0, 1000.0] {
            let mut samples = history.to_vec();
            samples.push(Some(rt));
            let score = *raw_scores(&samples).last().unwrap();
            // Strictly lower until the score bottoms out at 0 (a 4× spike already does).
            assert!(
                score < last || (score == 0.0 && last == 0.0),
                "{rt}: {score} not below {last}"
            );
            last = score;
        }
    }

    #[test]
    fn sub_floor_jitter_is_ignored() {
        let s = raw_scores(&[Some(0.3), Some(0.9), Some(2.0), Some(0.4), Some(4.9)]);
        assert_eq!(s, [100.0; 5]);
    }

    #[test]
    fn only_failures_score_zero() {
        let s = raw_scores(&[None, None, None]);
        assert_eq!(s, [0.0; 3]);
        // Recovery: one good sample becomes best again.
        let s = raw_scores(&[None, None, Some(10.0)]);
        assert!(s[2] > 0.0);
    }

    #[test]
    fn getting_faster_is_rewarded_and_clamped() {
        let s = raw_scores(&[
            Some(50.0),
            Some(50.0),
            Some(50.0),
            Some(10.0),
            Some(10.0),
            Some(10.0),
        ]);
        // Trend is positive (recent faster) but the score never exceeds 100.
        assert!(s.iter().all(|x| (0.0..=100.0).contains(x)), "{s:?}");
    }

    #[test]
    fn history_is_bounded() {
        let mut a = Availability::new(3, 2, 1.0);
        for _ in 0..10 {
            a.observe(500.0);
        }
        // The slow samples fall out of a 3-sample history: three 10 ms samples score 100.
        for _ in 0..3 {
            a.observe(10.0);
        }
        assert_eq!(a.score(), Some(100.0));
    }

    #[test]
    fn report_samples_of_a_past_load_expire() {
        let mut a = Availability::new(20, 10, 1.0);
        a.observe(1.0);
        // A load: slow answers, then 25 probe rounds with a light trickle of fast ones
        // (one report every 5 rounds).
        for i in 0..20 {
            a.observe_report(Some(if i % 4 == 0 { 10.0 } else { 2000.0 }), 10, 0);
        }
        let loaded = a.score().unwrap();
        for round in 0..25 {
            a.observe(1.0);
            if round % 5 == 4 {
                a.observe_report(Some(10.0), 1, 0);
            }
        }
        // Only the five fresh samples are left: the score is back to 100.
        assert!(loaded < 10.0, "{loaded}");
        assert_eq!(a.score(), Some(100.0));
    }

    #[test]
    fn reports_fold_in_latency_and_errors() {
        let mut a = Availability::new(20, 10, 1.0);
        a.observe(10.0);
        // No requests: ignored.
        a.observe_report(Some(500.0), 0, 0);
        assert_eq!(a.score(), Some(100.0));
        // 100 requests, 20 errors: ratio 0.2 → ×0.8; report latency history [100] scores 100.
        a.observe_report(Some(100.0), 100, 20);
        assert!(close(a.score().unwrap(), 80.0));
        // Reports only, no probe yet, still give a score.
        let mut b = Availability::new(20, 10, 1.0);
        b.observe_report(None, 10, 0);
        assert_eq!(b.score(), Some(100.0));
        // Stale report data (more than BEST_TIME_WINDOW probes ago) is dropped.
        for _ in 0..10 {
            a.observe(10.0);
        }
        assert!(close(a.score().unwrap(), 80.0));
        a.observe(10.0);
        assert_eq!(a.score(), Some(100.0));
    }

    fn scoring_config() -> ScoringConfig {
        ScoringConfig {
            weights: Weights {
                cpu: 0.35,
                memory: 0.25,
                network: 0.15,
                availability: 0.25,
            },
            history_size: 20,
            best_window: 10,
            ema_alpha: 0.2,
            lu_threshold: 70.0,
            mu_threshold: 40.0,
            network_capacity_bps: 125e6,
            failure_ms: 2000.0,
            power: 1.0,
        }
    }

    #[test]
    fn container_scorer_needs_cpu_and_availability() {
        let mut sc = ContainerScorer::new(&scoring_config(), None);
        assert_eq!(sc.scores(), None);
        let mut s = cpu_sample(200_000_000, 2_000_000_000, 2); // cpu 90
        s.at_ms = 1_000;
        s.mem_used = 64 << 20;
        s.mem_limit = 256 << 20; // memory 75
        sc.on_stats(s, None);
        assert_eq!(sc.scores(), None, "no availability yet");
        sc.on_probe(Some(3.0)); // availability 100
        let got = sc.scores().unwrap();
        // Network defaults to 100 with one sample:
        // 0.35·90 + 0.25·75 + 0.15·100 + 0.25·100 = 31.5 + 18.75 + 15 + 25 = 90.25.
        assert_eq!(
            (got.cpu, got.memory, got.network, got.availability),
            (90.0, 75.0, 100.0, 100.0)
        );
        assert!(close(got.overall, 90.25));

        // Second sample 2 s later with 100 MB moved → network 60; a first-frame-like sample
        // (no precpu) keeps the last CPU figure.
        let mut s2 = s;
        s2.at_ms = 3_000;
        s2.net_rx_bytes = 100_000_000;
        s2.presystem_ns = 0;
        sc.on_stats(s2, None);
        let got = sc.scores().unwrap();
        assert_eq!((got.cpu, got.network), (90.0, 60.0));
    }

    #[test]
    fn container_scorer_probe_failures_lower_availability() {
        let mut sc = ContainerScorer::new(&scoring_config(), Some(1.0));
        sc.on_stats(cpu_sample(0, 1_000_000_000, 2), None);
        sc.on_probe(Some(10.0));
        let before = sc.scores().unwrap();
        sc.on_probe(None);
        sc.on_report(Some(10.0), 10, 5);
        let after = sc.scores().unwrap();
        assert!(after.availability < before.availability);
        assert!(after.overall < before.overall);
        assert_eq!(before.memory, 100.0, "no memory figures count as idle");
    }
}

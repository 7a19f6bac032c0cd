//! The host's CPU use, for two decisions: what a container without a CPU limit can actually
//! get ([`crate::scoring::HostShare`]) and whether the host itself is saturated, when more
//! containers would only slice the same CPUs thinner ([`crate::scaler`]).
//!
//! Read from the first line of `/proc/stat` (`cpu  user nice system idle iowait irq softirq
//! steal …`, in clock ticks since boot): busy = everything but idle and iowait. `/proc/stat` is
//! not namespaced, so inside the agent's container it shows the host's CPUs — the same
//! CPUs as the app containers' when the agent talks to the local engine (`unix://`). With a
//! remote engine (`tcp://…`) the agent's host is not the app's: the figure is not read
//! there, the CPU score falls back to limits and online CPUs, and host saturation is off.

use std::collections::VecDeque;

use crate::model::Millis;

/// Cumulative CPU ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`; `None` if it is missing or malformed.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle [iowait irq softirq steal guest guest_nice]; guest time is
    // already counted in user, so only the first eight count.
    let counted = &fields[..fields.len().min(8)];
    let total: u64 = counted.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy fraction (0..=1) between two readings; `None` when no time passed or the counters
/// went backwards.
pub fn busy_fraction(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total).filter(|t| *t > 0)?;
    let busy = cur.busy.checked_sub(prev.busy)?;
    Some((busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// The host's busy fraction over a sliding window.
#[derive(Debug, Clone, Default)]
pub struct HostLoad {
    prev: Option<CpuTimes>,
    samples: VecDeque<(Millis, f64)>,
    keep_ms: u64,
}

impl HostLoad {
    pub fn new(keep_ms: u64) -> HostLoad {
        HostLoad {
            prev: None,
            samples: VecDeque::new(),
            keep_ms,
        }
    }

    /// A reading taken at `now`.
    pub fn record(&mut self, now: Millis, times: CpuTimes) {
        if let Some(b) = self.prev.and_then(|p| busy_fraction(p, times)) {
            self.samples.push_back((now, b));
        }
        self.prev = Some(times);
        let horizon = now.saturating_sub(self.keep_ms);
        while self.samples.front().is_some_and(|(at, _)| *at < horizon) {
            self.samples.pop_front();
        }
    }

    /// The latest interval's busy fraction.
    pub fn latest(&self) -> Option<f64> {
        self.samples.back().map(|(_, b)| *b)
    }

    /// Highest busy fraction of the readings in `(now − window_ms, now]`.
    pub fn max(&self, now: Millis, window_ms: u64) -> Option<f64> {
        let from = now.saturating_sub(window_ms);
        self.samples
            .iter()
            .filter(|(at, _)| *at > from)
            .map(|(_, b)| *b)
            .reduce(f64::max)
    }

    /// Mean busy fraction of the readings in `(now − window_ms, now]`.
    pub fn mean(&self, now: Millis, window_ms: u64) -> Option<f64> {
        let from = now.saturating_sub(window_ms);
        let xs: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| *at > from)
            .map(|(_, b)| *b)
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    }
}

/// Reads `/proc/stat` (the I/O edge of this module); `None` where it cannot be read.
pub fn read_cpu_times() -> Option<CpuTimes> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(parse_proc_stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line() {
        let text = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1\n";
        // total = 100+5+50+800+40+3+2+0 = 1000 (guest not counted again); idle = 840.
        assert_eq!(
            parse_proc_stat(text),
            Some(CpuTimes {
                busy: 160,
                total: 1000
            })
        );
        // Old kernels: only four fields.
        assert_eq!(
            parse_proc_stat("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, total: 10 })
        );
        for bad in ["", "cpu0 1 2 3 4", "cpu 1 2 x 4", "cpu 1 2"] {
            assert_eq!(parse_proc_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn busy_fraction_and_window() {
        let t = |busy, total| CpuTimes { busy, total };
        assert_eq!(busy_fraction(t(0, 0), t(50, 100)), Some(0.5));
        assert_eq!(busy_fraction(t(50, 100), t(50, 100)), None);
        assert_eq!(busy_fraction(t(50, 100), t(10, 200)), None);
        let mut h = HostLoad::new(10_000);
        h.record(0, t(0, 0));
        assert_eq!(h.latest(), None, "one reading is no interval");
        h.record(2_000, t(100, 200)); // 0.5
        h.record(4_000, t(300, 400)); // 1.0
        h.record(6_000, t(480, 600)); // 0.9
        assert_eq!(h.latest(), Some(0.9));
        assert!((h.mean(6_000, 4_000).unwrap() - 0.95).abs() < 1e-9);
        assert!((h.mean(6_000, 60_000).unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(h.max(6_000, 60_000), Some(1.0));
        assert_eq!(h.max(6_000, 1_000), Some(0.9));
        h.record(30_000, t(500, 800)); // 0.1, and the rest falls out of the 10 s kept
        assert_eq!(h.mean(30_000, 60_000), Some(0.1));
    }

    #[test]
    fn reads_this_machine() {
        // Linux CI: /proc/stat exists and parses.
        let a = read_cpu_times().expect("/proc/stat");
        assert!(a.total > 0 && a.busy <= a.total);
    }
}

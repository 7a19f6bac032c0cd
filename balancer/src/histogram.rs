//! Lock-free latency histograms.
//!
//! [`FineHistogram`] has log-linear buckets (4 per power of two of microseconds, ~19%
//! relative width) and answers quantiles; each backend keeps one per report interval.
//! [`PromHistogram`] has the few fixed buckets exposed on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::prom::PromText;

const SUB_BUCKETS: u32 = 4;
const FINE_BUCKETS: usize = 40 * SUB_BUCKETS as usize;

/// Bucket index for a value in microseconds: 4 sub-buckets per power of two.
fn fine_index(us: u64) -> usize {
    if us < u64::from(SUB_BUCKETS) {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros(); // ≥ 2
    let sub = (us >> (msb - 2)) & 0b11;
    let idx = (msb - 1) * SUB_BUCKETS + sub as u32;
    (idx as usize).min(FINE_BUCKETS - 1)
}

/// Lower and upper bound (microseconds) of a bucket.
fn fine_bounds(idx: usize) -> (f64, f64) {
    let idx = idx as u32;
    if idx < SUB_BUCKETS {
        return (f64::from(idx), f64::from(idx + 1));
    }
    let msb = idx / SUB_BUCKETS + 1;
    let sub = u64::from(idx % SUB_BUCKETS);
    let low = (4 + sub) << (msb - 2);
    let width = 1u64 << (msb - 2);
    (low as f64, (low + width) as f64)
}

/// Quantile-capable histogram of durations.
pub struct FineHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for FineHistogram {
    fn default() -> Self {
        FineHistogram {
            counts: (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FineHistogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[fine_index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the counts and resets them to zero (one interval ends, the next begins).
    pub fn take(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect()
    }
}

/// The `q`-quantile (0..=1) in milliseconds of counts from [`FineHistogram::take`],
/// interpolated linearly inside the bucket; `None` when empty.
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0.0;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let next = seen + c as f64;
        if next >= rank {
            let (lo, hi) = fine_bounds(i);
            let frac = (rank - seen) / c as f64;
            return Some((lo + (hi - lo) * frac) / 1000.0);
        }
        seen = next;
    }
    None
}

/// Upper bounds, in seconds, of the buckets exposed to Prometheus.
pub const PROM_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram (cumulative on render).
pub struct PromHistogram {
    buckets: [AtomicU64; PROM_BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Default for PromHistogram {
    fn default() -> Self {
        PromHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl PromHistogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = PROM_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(PROM_BOUNDS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the samples of this histogram named `name` to `out` (the family header is
    /// the caller's).
    pub fn render(&self, name: &str, out: &mut PromText) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = PROM_BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            out.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.sample(&format!("{name}_sum"), &[], sum);
        out.sample(&format!("{name}_count"), &[], cumulative as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 999, 1000, 123_456, 10_000_000] {
            let (lo, hi) = fine_bounds(fine_index(us));
            assert!(lo <= us as f64 && (us as f64) < hi, "{us}: [{lo},{hi})");
        }
        for i in 0..FINE_BUCKETS - 1 {
            assert_eq!(fine_bounds(i).1, fine_bounds(i + 1).0, "bucket {i}");
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = FineHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let counts = h.take();
        let p50 = quantile_ms(&counts, 0.5).unwrap();
        let p99 = quantile_ms(&counts, 0.99).unwrap();
        assert!((40.0..60.0).contains(&p50), "{p50}");
        assert!((85.0..115.0).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&h.take(), 0.5), None, "take resets");
    }

    #[test]
    fn prometheus_rendering_is_cumulative() {
        let h = PromHistogram::default();
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(20));
        h.record(Duration::from_secs(100));
        let mut out = PromText::new();
        h.render("x", &mut out);
        let out = out.into_string();
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 100.0205\n"), "{out}");
    }
}

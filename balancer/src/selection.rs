//! Backend selection: pure, synchronous, no I/O. Randomness is passed in.
//!
//! A [`Selector`] is built once per queue version (see `backends.rs`) and then shared
//! read-only by every request, so a pick takes no lock:
//!
//! - `weighted`: Vose's alias table, O(1) per pick, probability ∝ weight.
//! - `round_robin`: an atomic counter over the eligible backends (weights ignored).
//! - `p2c`: two weighted picks, keep the one with fewer requests in flight.
//!
//! Backends that are temporarily unusable (ejected, or already tried by this request) are
//! skipped by rejection sampling, which keeps the remaining probabilities proportional.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use protocol::weights::{weights, INIT_WEIGHT_FRACTION, MIN_WEIGHT, UNSCORED_WEIGHT};
use rand::Rng;

/// How a backend is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Weighted,
    RoundRobin,
    P2c,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::RoundRobin => "round_robin",
            Strategy::P2c => "p2c",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "weighted" => Ok(Strategy::Weighted),
            "round_robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "p2c" => Ok(Strategy::P2c),
            other => Err(format!("unknown strategy {other:?}")),
        }
    }
}

/// Vose's alias table: O(n) to build, O(1) to sample.
#[derive(Debug, Clone)]
pub struct AliasTable {
    /// Probability of keeping column `i` rather than jumping to `alias[i]`.
    prob: Vec<f64>,
    alias: Vec<usize>,
    /// Original index of each column.
    index: Vec<usize>,
}

impl AliasTable {
    /// Builds a table over the strictly positive weights; `None` if there are none.
    pub fn new(weights: &[f64]) -> Option<AliasTable> {
        let index: Vec<usize> = (0..weights.len())
            .filter(|&i| weights[i].is_finite() && weights[i] > 0.0)
            .collect();
        let n = index.len();
        if n == 0 {
            return None;
        }
        let total: f64 = index.iter().map(|&i| weights[i]).sum();
        let mut scaled: Vec<f64> = index
            .iter()
            .map(|&i| weights[i] * n as f64 / total)
            .collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1.0 up to rounding error.
        Some(AliasTable { prob, alias, index })
    }

    /// Draws one original index.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let col = rng.random_range(0..self.prob.len());
        let pick = if rng.random::<f64>() < self.prob[col] {
            col
        } else {
            self.alias[col]
        };
        self.index[pick]
    }

    /// Original indices with a positive weight.
    pub fn members(&self) -> &[usize] {
        &self.index
    }
}

/// Attempts made by rejection sampling before falling back to a linear scan.
const REJECTION_TRIES: usize = 8;

/// Picks backends for one queue version.
#[derive(Debug)]
pub struct Selector {
    strategy: Strategy,
    table: Option<AliasTable>,
    weights: Vec<f64>,
    rr: AtomicUsize,
}

impl Selector {
    pub fn new(strategy: Strategy, weights: Vec<f64>) -> Selector {
        Selector {
            strategy,
            table: AliasTable::new(&weights),
            weights,
            rr: AtomicUsize::new(0),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Number of backends that can be picked at all (positive weight).
    pub fn eligible(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.members().len())
    }

    /// Picks a backend index among those with positive weight for which `usable` holds.
    /// `in_flight` gives the current load (used by `p2c`). `None` when nothing is usable.
    pub fn pick(
        &self,
        rng: &mut impl Rng,
        usable: impl Fn(usize) -> bool,
        in_flight: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let table = self.table.as_ref()?;
        match self.strategy {
            Strategy::Weighted => self.weighted(table, rng, &usable),
            Strategy::RoundRobin => {
                let members = table.members();
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..members.len())
                    .map(|k| members[(start + k) % members.len()])
                    .find(|&i| usable(i))
            }
            Strategy::P2c => {
                let a = self.weighted(table, rng, &usable)?;
                let b = self.weighted(table, rng, &usable)?;
                Some(if in_flight(b) < in_flight(a) { b } else { a })
            }
        }
    }

    fn weighted(
        &self,
        table: &AliasTable,
        rng: &mut impl Rng,
        usable: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        for _ in 0..REJECTION_TRIES {
            let i = table.sample(rng);
            if usable(i) {
                return Some(i);
            }
        }
        // Most of the weight is unusable: draw exactly among what is left.
        let total: f64 = table
            .members()
            .iter()
            .filter(|&&i| usable(i))
            .map(|&i| self.weights[i])
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = rng.random::<f64>() * total;
        let mut last = None;
        for &i in table.members().iter().filter(|&&i| usable(i)) {
            last = Some(i);
            x -= self.weights[i];
            if x < 0.0 {
                return Some(i);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Category;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// η = min(rᵢ/wᵢ) / max(rᵢ/wᵢ) over the picked counts rᵢ.
    fn efficiency(weights: &[f64], picks: usize, seed: u64) -> f64 {
        let sel = Selector::new(Strategy::Weighted, weights.to_vec());
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..picks {
            counts[sel.pick(&mut rng, |_| true, |_| 0).unwrap()] += 1;
        }
        let ratios: Vec<f64> = counts
            .iter()
            .zip(weights)
            .map(|(&c, &w)| c as f64 / w)
            .collect();
        let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().cloned().fold(0.0, f64::max);
        min / max
    }

    /// Fixed seeds: the check is statistical, so a fresh seed per run made it fail now and
    /// then (about one run in 50 at 100,000 picks); these make it repeatable.
    fn fresh_seeds() -> Vec<u64> {
        vec![1, 0x5eed, 0xdead_beef]
    }

    #[test]
    fn weighted_is_proportional_close_weights() {
        for seed in fresh_seeds() {
            let eta = efficiency(&[100.0, 95.0, 90.0, 85.0], 400_000, seed);
            assert!(eta >= 0.97, "seed {seed}: efficiency {eta}");
        }
    }

    #[test]
    fn weighted_is_proportional_skewed_weights() {
        for seed in fresh_seeds() {
            let eta = efficiency(&[100.0, 50.0, 25.0, 5.0], 1_000_000, seed);
            assert!(eta >= 0.97, "seed {seed}: efficiency {eta}");
        }
    }

    #[test]
    fn sundown_is_never_picked_and_empty_yields_none() {
        let w = weights(&[
            (Category::Low, 90.0),
            (Category::Sundown, 100.0),
            (Category::High, 10.0),
        ]);
        assert_eq!(w[1], 0.0);
        for strategy in [Strategy::Weighted, Strategy::RoundRobin, Strategy::P2c] {
            let sel = Selector::new(strategy, w.clone());
            let mut rng = SmallRng::seed_from_u64(1);
            for _ in 0..10_000 {
                assert_ne!(sel.pick(&mut rng, |_| true, |_| 0), Some(1), "{strategy:?}");
            }
            let empty = Selector::new(strategy, vec![]);
            assert_eq!(empty.pick(&mut rng, |_| true, |_| 0), None);
            let all_sundown = Selector::new(strategy, weights(&[(Category::Sundown, 80.0)]));
            assert_eq!(all_sundown.pick(&mut rng, |_| true, |_| 0), None);
        }
    }

    #[test]
    fn unusable_backends_are_skipped_proportionally() {
        let sel = Selector::new(Strategy::Weighted, vec![10.0, 1000.0, 30.0]);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u64; 3];
        for _ in 0..100_000 {
            counts[sel.pick(&mut rng, |i| i != 1, |_| 0).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = counts[2] as f64 / counts[0] as f64;
        assert!((2.8..3.2).contains(&ratio), "{counts:?}");
        assert_eq!(sel.pick(&mut rng, |_| false, |_| 0), None);
    }

    #[test]
    fn round_robin_cycles_and_skips() {
        let sel = Selector::new(Strategy::RoundRobin, vec![1.0, 0.0, 5.0, 2.0]);
        let mut rng = SmallRng::seed_from_u64(1);
        let seq: Vec<usize> = (0..6)
            .map(|_| sel.pick(&mut rng, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 2, 3, 0, 2, 3]);
        assert_eq!(sel.pick(&mut rng, |i| i == 3, |_| 0), Some(3));
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let sel = Selector::new(Strategy::P2c, vec![50.0, 50.0]);
        let mut rng = SmallRng::seed_from_u64(3);
        let load = |i: usize| if i == 0 { 100 } else { 0 };
        let mut to_idle = 0;
        for _ in 0..10_000 {
            if sel.pick(&mut rng, |_| true, load) == Some(1) {
                to_idle += 1;
            }
        }
        // Backend 0 only wins when both picks land on it: 1/4 of the time.
        assert!((7_200..7_800).contains(&to_idle), "{to_idle}");
    }

    #[test]
    fn alias_table_handles_degenerate_weights() {
        assert!(AliasTable::new(&[0.0, -1.0, f64::NAN]).is_none());
        let t = AliasTable::new(&[0.0, 3.0]).unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        assert!((0..1000).all(|_| t.sample(&mut rng) == 1));
    }

    #[test]
    fn strategy_names() {
        for s in [Strategy::Weighted, Strategy::RoundRobin, Strategy::P2c] {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        assert!("fastest".parse::<Strategy>().is_err());
    }
}

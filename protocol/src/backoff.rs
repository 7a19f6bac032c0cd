//! Capped exponential back-off with jitter, for reconnect and retry loops.

use std::time::Duration;

use rand::Rng;

/// Capped exponential back-off with jitter: attempt n waits a uniform time in
/// `[d/2, d]` with `d = min(max, base · 2ⁿ)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(rng.random_range(0.5..=1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = SmallRng::seed_from_u64(5);
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        let caps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (got, cap) in d.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*got <= cap && *got >= cap / 2, "{got:?} vs {cap:?}");
        }
        assert!(d.windows(2).any(|w| w[0] != w[1]) || d[4] != Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}

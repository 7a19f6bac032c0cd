//! Retry budget: retries may add at most a fixed fraction of extra requests.
//!
//! Every request deposits `ratio` tokens, every retry withdraws one. The balance starts at
//! [`RESERVE`] tokens (so a quiet balancer can still retry) and is capped at [`CAP`], so a
//! long calm period does not buy an unbounded retry storm later.

use std::sync::atomic::{AtomicI64, Ordering};

/// Tokens at start (retries allowed before any request has been seen).
pub const RESERVE: i64 = 10;
/// Most tokens that can be saved up.
pub const CAP: i64 = 100;
const MILLI: i64 = 1000;

pub struct RetryBudget {
    /// Balance in thousandths of a token.
    balance: AtomicI64,
    deposit: i64,
}

impl RetryBudget {
    /// `ratio`: extra requests allowed as a fraction of requests (0.2 = 20%).
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            balance: AtomicI64::new(RESERVE * MILLI),
            deposit: (ratio.clamp(0.0, 1.0) * MILLI as f64).round() as i64,
        }
    }

    /// Called once per request.
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let prev = self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        if prev + self.deposit > CAP * MILLI {
            // Benign race: a concurrent withdraw may be overwritten, costing at most one token.
            self.balance.store(CAP * MILLI, Ordering::Relaxed);
        }
    }

    /// Takes one token for a retry; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_reserve_then_the_ratio() {
        let b = RetryBudget::new(0.2);
        let reserve = (0..1000).take_while(|_| b.try_withdraw()).count();
        assert_eq!(reserve as i64, RESERVE);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.try_withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn balance_is_capped_and_zero_ratio_only_has_the_reserve() {
        let b = RetryBudget::new(1.0);
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!(
            (0..10_000).take_while(|_| b.try_withdraw()).count() as i64,
            CAP
        );
        let z = RetryBudget::new(0.0);
        z.deposit();
        assert_eq!(
            (0..100).take_while(|_| z.try_withdraw()).count() as i64,
            RESERVE
        );
    }
}

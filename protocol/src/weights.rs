//! How the balancers turn the agent's `(category, score)` pairs into selection weights:
//! shared so the agent can show each container's share of the traffic exactly as the
//! balancers will apply it.

use crate::Category;

/// Weight of an INIT backend as a fraction of the mean weight of the scored ones.
pub const INIT_WEIGHT_FRACTION: f64 = 0.25;
/// Weight of a scored backend never falls below this, so a saturated but live backend
/// still gets a trickle of traffic (and so fresh measurements).
pub const MIN_WEIGHT: f64 = 1.0;
/// Weight used for INIT backends when no backend has a score yet (all equal then).
pub const UNSCORED_WEIGHT: f64 = 50.0;

/// Turns the agent's `(category, score)` pairs into selection weights.
///
/// - `SUNDOWN` → 0: never picked.
/// - `LU`/`MU`/`HU` → the score (0..=100, higher = more idle), floored at [`MIN_WEIGHT`].
/// - `INIT` → [`INIT_WEIGHT_FRACTION`] × the mean weight of the scored backends, so a new
///   container is ramped in gently until the agent has measured it; [`UNSCORED_WEIGHT`]
///   when nothing is scored yet.
pub fn weights(items: &[(Category, f64)]) -> Vec<f64> {
    let scored: Vec<f64> = items
        .iter()
        .filter(|(c, _)| matches!(c, Category::Low | Category::Medium | Category::High))
        .map(|(_, s)| score_weight(*s))
        .collect();
    let init_weight = if scored.is_empty() {
        UNSCORED_WEIGHT
    } else {
        INIT_WEIGHT_FRACTION * scored.iter().sum::<f64>() / scored.len() as f64
    };
    items
        .iter()
        .map(|(c, s)| match c {
            Category::Sundown => 0.0,
            Category::Init => init_weight,
            _ => score_weight(*s),
        })
        .collect()
}

fn score_weight(score: f64) -> f64 {
    if score.is_finite() {
        score.clamp(MIN_WEIGHT, 100.0)
    } else {
        MIN_WEIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_mapping() {
        let w = weights(&[
            (Category::Low, 80.0),
            (Category::Medium, 40.0),
            (Category::High, -5.0),
            (Category::Init, 0.0),
            (Category::Low, f64::NAN),
        ]);
        // mean of scored = (80 + 40 + 1 + 1) / 4 = 30.5 → INIT gets a quarter.
        assert_eq!(w, vec![80.0, 40.0, 1.0, 30.5 * 0.25, 1.0]);
        assert_eq!(
            weights(&[(Category::Init, 0.0), (Category::Init, 0.0)]),
            vec![UNSCORED_WEIGHT, UNSCORED_WEIGHT]
        );
        assert_eq!(weights(&[(Category::Low, 250.0)]), vec![100.0]);
    }
}

//! Scale decisions: a pure function of the pool, the configuration, a little state and the
//! time. The caller acts on the [`Decision`] (creates containers, marks victims SUNDOWN),
//! records it as an event and persists the new desired size.
//!
//! # Rules
//! Scores are 100 = idle. Only *scored active* containers (LU/MU/HU with scores) count toward
//! the average and the minimum; INIT containers never do, SUNDOWN containers are leaving.
//! - **Up** when `avg < HIGH_LOAD_THRESHOLD` or `min < CRITICAL_LOAD_THRESHOLD`, unless
//!   capacity is still arriving (an INIT container: its effect is not visible yet, so adding
//!   more would overshoot), the cooldown since the last action has not passed, or the pool is
//!   at `MAX_CONTAINERS`. Adds `min(SCALE_STEP, MAX − max(active, desired))`.
//! - **Down** when `avg > LOW_LOAD_THRESHOLD`, the pool is above `DEFAULT_CONTAINER` and no
//!   container is INIT, *continuously* for `SCALE_DOWN_STABILIZATION` (like Kubernetes' HPA
//!   stabilization window) and the cooldown has passed. Removes
//!   `min(SCALE_STEP, active − DEFAULT)` of the least-loaded containers ([`pick_victims`]).
//!   While the condition keeps holding, further steps are paced by the cooldown alone.
//! - Otherwise **Hold**, and the stabilization window restarts.
//!
//! Up wins over down: one critical container triggers growth even when the average is low.

use serde_json::json;

use crate::config::{ms, ScalingConfig};
use crate::model::{Category, Container, Millis};

/// What the scaler remembers between decisions (in memory; a restart only delays the next
/// scale-down by one stabilization window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalerState {
    /// When the last Up or Down was decided.
    pub last_scale_ms: Option<Millis>,
    /// Since when the scale-down condition has held without a break.
    pub low_since_ms: Option<Millis>,
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

/// Decides whether to scale the pool now. See the module docs for the rules.
///
/// `desired` is the current desired size (persisted); `now` is the current time.
pub fn decide(
    pool: &[Container],
    desired: usize,
    cfg: &ScalingConfig,
    state: &mut ScalerState,
    now: Millis,
) -> Decision {
    let active = pool.iter().filter(|c| c.is_active()).count();
    let starting = pool.iter().filter(|c| c.category == Category::Init).count();
    let scored: Vec<f64> = pool
        .iter()
        .filter(|c| c.is_scored_active())
        .filter_map(Container::overall)
        .collect();
    if scored.is_empty() {
        state.low_since_ms = None;
        return Decision::hold("no scored container yet");
    }
    let avg = scored.iter().sum::<f64>() / scored.len() as f64;
    let min = scored.iter().copied().fold(f64::INFINITY, f64::min);
    let cooldown_ms = ms(cfg.cooldown);
    let since_last = state.last_scale_ms.map(|t| now.saturating_sub(t));
    let cooling = since_last.filter(|s| *s < cooldown_ms);
    let details = |extra: serde_json::Value| {
        let mut d = json!({
            "avg": round2(avg),
            "min": round2(min),
            "scored": scored.len(),
            "active": active,
            "starting": starting,
            "desired": desired,
            "high_threshold": cfg.high_threshold,
            "low_threshold": cfg.low_threshold,
            "critical_threshold": cfg.critical_threshold,
            "default_containers": cfg.min_containers,
            "max_containers": cfg.max_containers,
        });
        if let (Some(d), serde_json::Value::Object(extra)) = (d.as_object_mut(), extra) {
            d.extend(extra);
        }
        d
    };

    if avg < cfg.high_threshold || min < cfg.critical_threshold {
        state.low_since_ms = None;
        let why = if avg < cfg.high_threshold {
            format!(
                "average score {avg:.1} below HIGH_LOAD_THRESHOLD {}",
                cfg.high_threshold
            )
        } else {
            format!(
                "lowest score {min:.1} below CRITICAL_LOAD_THRESHOLD {}",
                cfg.critical_threshold
            )
        };
        if starting > 0 {
            return Decision::hold(format!(
                "{why}, waiting for {starting} starting container(s)"
            ));
        }
        if let Some(s) = cooling {
            return Decision::hold(format!("{why}, cooling down ({s} of {cooldown_ms} ms)"));
        }
        let base = active.max(desired);
        let count = cfg.step.min(cfg.max_containers.saturating_sub(base));
        if count == 0 {
            return Decision::hold(format!("{why}, at MAX_CONTAINERS {}", cfg.max_containers));
        }
        state.last_scale_ms = Some(now);
        return Decision::Up {
            count,
            reason: format!("{why}: adding {count}"),
            details: details(json!({ "count": count })),
        };
    }

    if avg > cfg.low_threshold && active > cfg.min_containers && starting == 0 {
        let since = *state.low_since_ms.get_or_insert(now);
        let window_ms = ms(cfg.scale_down_window);
        let held = now.saturating_sub(since);
        let why = format!(
            "average score {avg:.1} above LOW_LOAD_THRESHOLD {}",
            cfg.low_threshold
        );
        if held < window_ms {
            return Decision::hold(format!("{why} for {held} of {window_ms} ms"));
        }
        if let Some(s) = cooling {
            return Decision::hold(format!("{why}, cooling down ({s} of {cooldown_ms} ms)"));
        }
        let n = cfg.step.min(active - cfg.min_containers);
        let victims = pick_victims(pool, n);
        if victims.is_empty() {
            return Decision::hold(format!("{why}, but no container can be removed"));
        }
        state.last_scale_ms = Some(now);
        return Decision::Down {
            reason: format!("{why} for {held} ms: removing {}", victims.len()),
            details: details(json!({ "victims": victims, "low_for_ms": held })),
            victims,
        };
    }

    state.low_since_ms = None;
    Decision::hold(format!(
        "average score {avg:.1}, lowest {min:.1}: within thresholds"
    ))
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
            min_containers: 2,
            max_containers: 4,
            high_threshold: 55.0,
            low_threshold: 80.0,
            critical_threshold: 20.0,
            cooldown: Duration::from_secs(5),
            step: 1,
            check_period: Duration::from_secs(10),
            scale_down_window: Duration::from_secs(60),
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
                container(&id, scoring_category(*s), Some(*s), i as u64)
            })
            .collect()
    }

    fn scoring_category(s: f64) -> Category {
        crate::scoring::category(s, 70.0, 40.0)
    }

    fn is_up(d: &Decision) -> Option<usize> {
        match d {
            Decision::Up { count, .. } => Some(*count),
            _ => None,
        }
    }

    fn victims(d: &Decision) -> Option<Vec<String>> {
        match d {
            Decision::Down { victims, .. } => Some(victims.clone()),
            _ => None,
        }
    }

    #[test]
    fn up_on_low_average() {
        let mut st = ScalerState::default();
        let d = decide(&pool(&[50.0, 50.0]), 2, &cfg(), &mut st, 1_000);
        assert_eq!(is_up(&d), Some(1), "{d:?}");
        assert_eq!(st.last_scale_ms, Some(1_000));
        let Decision::Up { details, .. } = d else {
            unreachable!()
        };
        assert_eq!(details["avg"], 50.0);
        assert_eq!(details["active"], 2);
        assert_eq!(details["high_threshold"], 55.0);
    }

    #[test]
    fn up_on_one_critical_container() {
        // Average (19 + 95 + 95) / 3 = 69.67 is fine, but one container is at 19 < 20.
        let mut st = ScalerState::default();
        let d = decide(&pool(&[19.0, 95.0, 95.0]), 3, &cfg(), &mut st, 0);
        assert_eq!(is_up(&d), Some(1), "{d:?}");
        // The critical rule wins even when the average would call for scaling down.
        let mut st = ScalerState::default();
        // Average (19 + 4·100) / 5 = 83.8 > LOW, yet one container is critical.
        let c = ScalingConfig {
            max_containers: 6,
            ..cfg()
        };
        let d = decide(
            &pool(&[19.0, 100.0, 100.0, 100.0, 100.0]),
            5,
            &c,
            &mut st,
            0,
        );
        assert_eq!(is_up(&d), Some(1), "{d:?}");
    }

    #[test]
    fn boundaries_are_strict() {
        let mut st = ScalerState::default();
        // avg exactly HIGH, min exactly CRITICAL: no scale-up; avg exactly LOW: no scale-down.
        let d = decide(&pool(&[55.0, 55.0]), 2, &cfg(), &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        let d = decide(&pool(&[20.0, 90.0]), 2, &cfg(), &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        let d = decide(&pool(&[80.0, 80.0, 80.0]), 3, &cfg(), &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_eq!(st.low_since_ms, None);
    }

    #[test]
    fn no_scale_up_during_cooldown() {
        let mut st = ScalerState::default();
        let p = pool(&[30.0, 30.0]);
        assert!(is_up(&decide(&p, 2, &cfg(), &mut st, 10_000)).is_some());
        let d = decide(&p, 3, &cfg(), &mut st, 14_999);
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("cooling")),
            "{d:?}"
        );
        assert!(is_up(&decide(&p, 3, &cfg(), &mut st, 15_000)).is_some());
    }

    #[test]
    fn never_above_max() {
        let mut st = ScalerState::default();
        let big_step = ScalingConfig { step: 5, ..cfg() };
        // 2 active, desired 2, max 4 → at most 2 more.
        assert_eq!(
            is_up(&decide(&pool(&[10.0, 10.0]), 2, &big_step, &mut st, 0)),
            Some(2)
        );
        // Desired already 3 (one being created): only 1 more.
        let mut st = ScalerState::default();
        assert_eq!(
            is_up(&decide(&pool(&[10.0, 10.0]), 3, &big_step, &mut st, 0)),
            Some(1)
        );
        // At max.
        let mut st = ScalerState::default();
        let d = decide(&pool(&[10.0; 4]), 4, &big_step, &mut st, 0);
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("MAX_CONTAINERS")),
            "{d:?}"
        );
        assert_eq!(st.last_scale_ms, None);
    }

    #[test]
    fn init_containers_block_up_and_are_not_averaged() {
        let mut st = ScalerState::default();
        let mut p = pool(&[30.0, 30.0]);
        p.push(container("new", Category::Init, None, 100));
        let d = decide(&p, 3, &cfg(), &mut st, 0);
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("waiting for 1 starting")),
            "{d:?}"
        );
        // An INIT container with (stale) scores does not count toward the average either:
        // the three scored containers average 90, above LOW, but INIT blocks scale-down too.
        let mut p = pool(&[90.0, 90.0, 90.0]);
        p.push(container("new", Category::Init, Some(0.0), 100));
        let d = decide(&p, 4, &cfg(), &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_eq!(st.low_since_ms, None);
        // Only INIT containers: nothing to decide on.
        let d = decide(
            &[container("x", Category::Init, None, 0)],
            1,
            &cfg(),
            &mut st,
            0,
        );
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("no scored")),
            "{d:?}"
        );
    }

    #[test]
    fn down_only_after_the_window_then_paced_by_cooldown() {
        let mut st = ScalerState::default();
        let p = pool(&[90.0, 95.0, 85.0, 90.0]);
        let c = cfg();
        let d = decide(&p, 4, &c, &mut st, 1_000);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_eq!(st.low_since_ms, Some(1_000));
        assert!(victims(&decide(&p, 4, &c, &mut st, 60_999)).is_none());
        let v = victims(&decide(&p, 4, &c, &mut st, 61_000)).unwrap();
        assert_eq!(v, ["b"], "highest score = least loaded");
        assert_eq!(st.last_scale_ms, Some(61_000));
        assert_eq!(
            st.low_since_ms,
            Some(1_000),
            "window kept while the condition holds"
        );
        // Next step: the window has passed, only the cooldown paces it.
        let p2: Vec<Container> = p.iter().filter(|c| c.id != "b").cloned().collect();
        assert!(victims(&decide(&p2, 3, &c, &mut st, 65_999)).is_none());
        // a and d tie at 90: the newer one (d) goes first.
        assert_eq!(
            victims(&decide(&p2, 3, &c, &mut st, 66_000)).unwrap(),
            ["d"]
        );
    }

    #[test]
    fn window_resets_when_the_condition_breaks() {
        let mut st = ScalerState::default();
        let c = cfg();
        let idle = pool(&[90.0, 90.0, 90.0]);
        let busy = pool(&[70.0, 70.0, 70.0]);
        decide(&idle, 3, &c, &mut st, 0);
        assert_eq!(st.low_since_ms, Some(0));
        decide(&busy, 3, &c, &mut st, 30_000);
        assert_eq!(st.low_since_ms, None);
        decide(&idle, 3, &c, &mut st, 40_000);
        assert!(victims(&decide(&idle, 3, &c, &mut st, 61_000)).is_none());
        assert!(victims(&decide(&idle, 3, &c, &mut st, 100_000)).is_some());
    }

    #[test]
    fn never_below_default() {
        let c = ScalingConfig {
            step: 5,
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        let mut st = ScalerState::default();
        // 3 active, default 2 → remove only 1 even with step 5.
        assert_eq!(
            victims(&decide(&pool(&[99.0; 3]), 3, &c, &mut st, 0))
                .unwrap()
                .len(),
            1
        );
        // At default: hold, and no window running.
        let mut st = ScalerState::default();
        let d = decide(&pool(&[99.0; 2]), 2, &c, &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_eq!(st.low_since_ms, None);
        // SUNDOWN containers do not count as active.
        let mut p = pool(&[99.0; 2]);
        p.push(container("leaving", Category::Sundown, Some(99.0), 9));
        let d = decide(&p, 2, &c, &mut st, 0);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    }

    #[test]
    fn victims_are_least_loaded_newest_first() {
        let mut p = vec![
            container("old-idle", Category::Low, Some(95.0), 1),
            container("new-idle", Category::Low, Some(95.0), 5),
            container("busy", Category::High, Some(30.0), 9),
            container("mid", Category::Medium, Some(60.0), 3),
            container("starting", Category::Init, Some(100.0), 10),
            container("leaving", Category::Sundown, Some(100.0), 10),
            container("unscored", Category::Low, None, 10),
            container("tie-b", Category::Low, Some(80.0), 7),
            container("tie-a", Category::Low, Some(80.0), 7),
        ];
        assert_eq!(
            pick_victims(&p, 5),
            ["new-idle", "old-idle", "tie-a", "tie-b", "mid"]
        );
        assert_eq!(pick_victims(&p, 1), ["new-idle"]);
        assert!(pick_victims(&p, 0).is_empty());
        p.retain(|c| c.category == Category::Init || c.category == Category::Sundown);
        assert!(pick_victims(&p, 3).is_empty());
    }

    #[test]
    fn up_details_and_state() {
        let mut st = ScalerState {
            last_scale_ms: Some(0),
            low_since_ms: Some(0),
        };
        let d = decide(&pool(&[40.0, 40.0]), 2, &cfg(), &mut st, 100_000);
        assert_eq!(st.low_since_ms, None);
        let Decision::Up {
            details, reason, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(reason.contains("HIGH_LOAD_THRESHOLD"), "{reason}");
        for key in [
            "avg",
            "min",
            "active",
            "desired",
            "high_threshold",
            "low_threshold",
            "critical_threshold",
            "count",
        ] {
            assert!(details.get(key).is_some(), "{key} missing from {details}");
        }
    }
}

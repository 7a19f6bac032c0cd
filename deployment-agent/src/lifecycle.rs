//! Container lifecycle decisions, pure: the category a container moves to, when a SUNDOWN
//! container is drained, and what reconciling the recorded pool with Docker must do.
//!
//! # States
//! `INIT` (created and accepting connections, not scored yet) → `LU`/`MU`/`HU` (from the
//! overall score, re-evaluated every round) → `SUNDOWN` (chosen for removal; sticky). A
//! container not yet accepting connections has `ready_ms == None`: it is not published.
//!
//! # Draining
//! A SUNDOWN container is published with weight 0 under a new queue version
//! (`sundown_version`). It is drained when every connected balancer has reported from that
//! version or later (so it has stopped picking the container) and has nothing in flight to it,
//! and at least `min_drain_ms` has passed (this covers balancers that have not reported yet, and
//! "no balancer connected"). After `drain_timeout_ms` it is stopped regardless.
//!
//! # Reconciling
//! [`plan`] compares the records (Redis) with what Docker reports, on start and every round:
//! ours running but unknown → adopt (as INIT); known but gone from Docker → forget; exited or
//! dead, or never ready within `READY_TIMEOUT` → remove (and replace); then create or shed
//! containers to reach the desired size.

use std::collections::HashSet;

use crate::model::{Category, Container, Millis, Observed, Scores};

/// The category `current` moves to given the latest scores: SUNDOWN is sticky; with scores,
/// the score's category ([`crate::scoring::category`]); without, unchanged (INIT stays INIT, a
/// scored container keeps its category through a round with missing data).
pub fn category_for(current: Category, scores: Option<&Scores>, lu: f64, mu: f64) -> Category {
    match (current, scores) {
        (Category::Sundown, _) => Category::Sundown,
        (_, Some(s)) => crate::scoring::category(s.overall, lu, mu),
        (c, None) => c,
    }
}

/// One connected balancer's latest report, as far as one container is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerView {
    /// The balancer's id.
    pub balancer: String,
    /// Queue version its latest report was made with.
    pub queue_version: u64,
    /// Requests in flight to the container asked about; 0 when absent from the report.
    pub in_flight: u64,
}

/// Whether a SUNDOWN container may be stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStatus {
    /// Not yet; the reason names who still has requests (or has not seen the SUNDOWN queue).
    Waiting(String),
    /// Nothing in flight anywhere; the reason says how long it took.
    Drained(String),
    /// `drain_timeout_ms` passed with requests possibly still in flight: stop anyway.
    TimedOut,
}

/// Drain state of `c` given the connected balancers' latest reports. See the module docs.
/// A container without `sundown_ms` is `Waiting`; one without `sundown_version` (its SUNDOWN
/// queue not published yet) waits too, up to the drain timeout.
pub fn drain_status(
    c: &Container,
    balancers: &[BalancerView],
    now: Millis,
    drain_timeout_ms: u64,
    min_drain_ms: u64,
) -> DrainStatus {
    let Some(since) = c.sundown_ms else {
        return DrainStatus::Waiting(format!("{} is not marked SUNDOWN", c.name));
    };
    let elapsed = now.saturating_sub(since);
    let mut busy = Vec::new();
    match c.sundown_version {
        None => busy.push("its SUNDOWN queue is not published yet".to_string()),
        Some(version) => {
            // Connected when SUNDOWN went out, gone now: it may still route to the container
            // (and reconnect with requests in flight). Wait for it to report again.
            for gone in c
                .sundown_balancers
                .iter()
                .filter(|name| !balancers.iter().any(|b| &b.balancer == *name))
            {
                busy.push(format!(
                    "{gone} was connected when SUNDOWN was published and has not reported since"
                ));
            }
            for b in balancers {
                if b.queue_version < version {
                    busy.push(format!(
                        "{} has not reported queue version {version} yet (at {})",
                        b.balancer, b.queue_version
                    ));
                } else if b.in_flight > 0 {
                    busy.push(format!("{} has {} in flight", b.balancer, b.in_flight));
                }
            }
        }
    }
    if busy.is_empty() && elapsed >= min_drain_ms {
        return DrainStatus::Drained(format!(
            "{} drained after {elapsed} ms ({} balancer(s) connected)",
            c.name,
            balancers.len()
        ));
    }
    if elapsed >= drain_timeout_ms {
        return DrainStatus::TimedOut;
    }
    if busy.is_empty() {
        busy.push(format!(
            "minimum drain time: {elapsed} of {min_drain_ms} ms"
        ));
    }
    DrainStatus::Waiting(busy.join("; "))
}

/// What reconciling must do. Lists keep the input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Our running containers with no record: record them as INIT (not ready yet, so they are
    /// probed before being published).
    pub adopt: Vec<Observed>,
    /// Records of containers Docker no longer has: delete them.
    pub forget: Vec<String>,
    /// Containers to stop and remove: not running (exited, dead, created but never started), or
    /// active, running and still not ready `ready_timeout_ms` after creation (stuck). Their
    /// records, if any, are deleted by the caller once Docker has removed them; if removal
    /// fails the record stays and the next plan lists the container again.
    pub remove: Vec<String>,
    /// Containers to create to reach the desired size.
    pub create: usize,
    /// Active containers beyond the desired size; the caller marks that many SUNDOWN, chosen
    /// with [`crate::scaler::pick_victims`].
    pub excess: usize,
}

impl Plan {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.adopt.is_empty()
            && self.forget.is_empty()
            && self.remove.is_empty()
            && self.create == 0
            && self.excess == 0
    }
}

/// Compares the records (`known`) with Docker's view (`observed`, our containers only) and
/// says what to do to have `desired` active containers. SUNDOWN containers never count as
/// active (they are on their way out; draining removes them).
pub fn plan(
    desired: usize,
    known: &[Container],
    observed: &[Observed],
    now: Millis,
    ready_timeout_ms: u64,
) -> Plan {
    let known_ids: HashSet<&str> = known.iter().map(|c| c.id.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut running: HashSet<&str> = HashSet::new();
    let mut out = Plan::default();

    for o in observed {
        if !seen.insert(o.id.as_str()) {
            continue; // listed twice: once is enough
        }
        if !o.running {
            out.remove.push(o.id.clone());
        } else {
            running.insert(o.id.as_str());
            if !known_ids.contains(o.id.as_str()) {
                out.adopt.push(o.clone());
            }
        }
    }

    let mut surviving = out.adopt.len();
    for c in known {
        if !seen.contains(c.id.as_str()) {
            out.forget.push(c.id.clone());
            continue;
        }
        if !running.contains(c.id.as_str()) || !c.is_active() {
            continue; // not running: already in `remove`; SUNDOWN: draining
        }
        let stuck = c.ready_ms.is_none() && now.saturating_sub(c.created_ms) > ready_timeout_ms;
        if stuck {
            out.remove.push(c.id.clone());
        } else {
            surviving += 1;
        }
    }
    out.create = desired.saturating_sub(surviving);
    out.excess = surviving.saturating_sub(desired);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, category: Category) -> Container {
        Container {
            id: id.into(),
            name: format!("app-{id}"),
            ..Container::fixture(id, category, None)
        }
    }

    fn sundown(at: Millis, version: u64) -> Container {
        Container {
            sundown_ms: Some(at),
            sundown_version: Some(version),
            sundown_balancers: Vec::new(),
            ..container("s", Category::Sundown)
        }
    }

    fn view(balancer: &str, queue_version: u64, in_flight: u64) -> BalancerView {
        BalancerView {
            balancer: balancer.into(),
            queue_version,
            in_flight,
        }
    }

    fn observed(id: &str, running: bool) -> Observed {
        Observed {
            id: id.into(),
            name: format!("app-{id}"),
            image: "img".into(),
            running,
            address: running.then(|| "10.0.0.3:5000".to_string()),
            created_ms: 500,
        }
    }

    #[test]
    fn categories() {
        let s = |overall| Scores {
            cpu: 0.0,
            memory: 0.0,
            network: 0.0,
            availability: 0.0,
            overall,
        };
        let table = [
            (Category::Init, Some(s(70.0)), Category::Low),
            (Category::Init, Some(s(40.0)), Category::Medium),
            (Category::Low, Some(s(39.9)), Category::High),
            (Category::Init, None, Category::Init),
            (Category::Medium, None, Category::Medium),
            (Category::Sundown, Some(s(90.0)), Category::Sundown),
        ];
        for (cur, scores, want) in table {
            assert_eq!(
                category_for(cur, scores.as_ref(), 70.0, 40.0),
                want,
                "{cur} {scores:?}"
            );
        }
    }

    #[test]
    fn drain_table() {
        // SUNDOWN at t=10_000 under queue version 7; timeout 30 s, minimum 1 s.
        let c = sundown(10_000, 7);
        let drained = |d: &DrainStatus| matches!(d, DrainStatus::Drained(_));
        let table: &[(&[BalancerView], Millis, &str)] = &[
            (&[view("b1", 7, 0), view("b2", 8, 0)], 11_000, "drained"),
            (
                &[view("b1", 7, 0), view("b2", 8, 0)],
                10_999,
                "minimum drain time",
            ),
            (&[], 11_000, "drained"),
            (&[], 10_500, "minimum drain time"),
            (
                &[view("b1", 7, 0), view("b2", 7, 3)],
                20_000,
                "b2 has 3 in flight",
            ),
            (
                &[view("b1", 6, 0)],
                20_000,
                "b1 has not reported queue version 7",
            ),
            (&[view("b1", 7, 3)], 40_000, "timed out"),
            (&[view("b1", 7, 0)], 40_000, "drained"),
        ];
        for (views, now, want) in table {
            let got = drain_status(&c, views, *now, 30_000, 1_000);
            let ok = match (*want, &got) {
                ("drained", d) => drained(d),
                ("timed out", d) => *d == DrainStatus::TimedOut,
                (w, DrainStatus::Waiting(reason)) => reason.contains(w),
                _ => false,
            };
            assert!(ok, "{views:?} at {now}: want {want}, got {got:?}");
        }
    }

    #[test]
    fn drain_waits_for_balancers_that_left_since_sundown() {
        // b1 and b2 were connected when SUNDOWN (v7) went out; b2 has gone since.
        let c = Container {
            sundown_balancers: vec!["b1".into(), "b2".into()],
            ..sundown(10_000, 7)
        };
        let table: &[(&[BalancerView], Millis, &str)] = &[
            (&[view("b1", 7, 0)], 20_000, "b2 was connected"),
            // b2 is back and reports v7 with nothing in flight: drained.
            (&[view("b1", 7, 0), view("b2", 7, 0)], 20_000, "drained"),
            // Back with requests still running on it: wait.
            (
                &[view("b1", 7, 0), view("b2", 7, 2)],
                20_000,
                "b2 has 2 in flight",
            ),
            // A balancer that never comes back only holds the drain until the timeout.
            (&[view("b1", 7, 0)], 40_000, "timed out"),
            // A balancer that connected later is judged by its reports as usual.
            (
                &[view("b1", 7, 0), view("b2", 8, 0), view("b3", 8, 0)],
                20_000,
                "drained",
            ),
        ];
        for (views, now, want) in table {
            let got = drain_status(&c, views, *now, 30_000, 1_000);
            let ok = match (*want, &got) {
                ("drained", DrainStatus::Drained(_)) => true,
                ("timed out", d) => *d == DrainStatus::TimedOut,
                (w, DrainStatus::Waiting(reason)) => reason.contains(w),
                _ => false,
            };
            assert!(ok, "{views:?} at {now}: want {want}, got {got:?}");
        }
    }

    #[test]
    fn drain_without_sundown_fields() {
        let c = container("a", Category::Low);
        assert!(matches!(
            drain_status(&c, &[], 1_000_000, 30_000, 0),
            DrainStatus::Waiting(_)
        ));
        // Marked but its queue not published yet: waits, then times out.
        let c = Container {
            sundown_ms: Some(0),
            ..container("a", Category::Sundown)
        };
        assert!(
            matches!(drain_status(&c, &[], 29_999, 30_000, 0), DrainStatus::Waiting(r) if r.contains("not published"))
        );
        assert_eq!(
            drain_status(&c, &[], 30_000, 30_000, 0),
            DrainStatus::TimedOut
        );
    }

    #[test]
    fn fresh_start_creates_desired() {
        let p = plan(5, &[], &[], 0, 60_000);
        assert_eq!(
            p,
            Plan {
                create: 5,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn restart_with_everything_present_does_nothing() {
        let known: Vec<Container> = ["a", "b", "c"]
            .iter()
            .map(|id| container(id, Category::Low))
            .collect();
        let obs: Vec<Observed> = ["a", "b", "c", "a"]
            .iter()
            .map(|id| observed(id, true))
            .collect();
        let p = plan(3, &known, &obs, 100_000, 60_000);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn killed_container_is_removed_and_replaced() {
        let known: Vec<Container> = ["a", "b", "c"]
            .iter()
            .map(|id| container(id, Category::Low))
            .collect();
        let obs = [
            observed("a", true),
            observed("b", false),
            observed("c", true),
        ];
        let p = plan(3, &known, &obs, 100_000, 60_000);
        assert_eq!(p.remove, ["b"]);
        assert_eq!(p.create, 1);
        assert!(
            p.adopt.is_empty() && p.forget.is_empty() && p.excess == 0,
            "{p:?}"
        );
    }

    #[test]
    fn vanished_container_is_forgotten_and_replaced() {
        let known: Vec<Container> = ["a", "b"]
            .iter()
            .map(|id| container(id, Category::Medium))
            .collect();
        let p = plan(2, &known, &[observed("a", true)], 100_000, 60_000);
        assert_eq!(p.forget, ["b"]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn unknown_running_container_is_adopted_and_counted() {
        let known = [container("a", Category::Low)];
        let obs = [
            observed("a", true),
            observed("x", true),
            observed("y", false),
        ];
        let p = plan(2, &known, &obs, 100_000, 60_000);
        assert_eq!(p.adopt, [observed("x", true)]);
        assert_eq!(
            p.remove,
            ["y"],
            "an unknown exited container of ours is cleaned up"
        );
        assert_eq!((p.create, p.excess), (0, 0));
        // More running than desired → excess.
        let p = plan(1, &known, &obs, 100_000, 60_000);
        assert_eq!((p.create, p.excess), (0, 1));
    }

    #[test]
    fn stuck_container_is_removed_and_replaced() {
        let mut stuck = container("s", Category::Init);
        stuck.ready_ms = None;
        stuck.created_ms = 0;
        let known = [container("a", Category::Low), stuck];
        let obs = [observed("a", true), observed("s", true)];
        // Not yet past READY_TIMEOUT: still counted, nothing to do.
        assert!(plan(2, &known, &obs, 60_000, 60_000).is_empty());
        let p = plan(2, &known, &obs, 60_001, 60_000);
        assert_eq!(p.remove, ["s"]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn sundown_never_counts_as_active() {
        let known = [
            container("a", Category::Low),
            sundown(0, 3),
            container("b", Category::High),
        ];
        let obs = [
            observed("a", true),
            observed("s", true),
            observed("b", true),
        ];
        let p = plan(3, &known, &obs, 100_000, 60_000);
        assert_eq!(p.create, 1, "the SUNDOWN container is replaced, not kept");
        assert!(p.remove.is_empty(), "draining removes it, not the plan");
        // Exited SUNDOWN container: removed, not replaced twice.
        let obs = [
            observed("a", true),
            observed("s", false),
            observed("b", true),
        ];
        let p = plan(2, &known, &obs, 100_000, 60_000);
        assert_eq!(p.remove, ["s"]);
        assert_eq!((p.create, p.excess), (0, 0));
    }
}

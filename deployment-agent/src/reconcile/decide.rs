//! The decide stage: one round's decisions from the pool's state and what was observed,
//! with no I/O, so every round can be tested without Docker or Redis.
//!
//! Order inside a round (each step sees the previous steps' changes):
//! 1. a `POST /scale` received since the last round sets the desired size;
//! 2. the scaler, when its check is due and Docker answered: grow the desired size, or
//!    shrink it and mark the victims SUNDOWN ([`scaler::decide`]);
//! 3. reconciling with Docker's list, when there is one: adopt, forget, replace, create, and
//!    mark the excess SUNDOWN ([`lifecycle::plan`], [`scaler::pick_victims`]);
//! 4. readiness: containers whose port accepted a connection are published as INIT;
//! 5. draining: SUNDOWN containers that are drained (or timed out) are stopped
//!    ([`lifecycle::drain_status`]).
//!
//! Scores are updated before (the scorers keep history); publishing and persisting come after.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::config::{ms, Config};
use crate::lifecycle::{self, BalancerView, DrainStatus};
use crate::model::{Category, Container, EventKind, Millis, Observed};
use crate::scaler::{self, Decision, ScalerState};

/// A SUNDOWN container is kept at least this long, so balancers that have not reported yet
/// (or none at all) get the new queue before it stops.
pub const MIN_DRAIN_MS: u64 = 2_000;

/// One container of the pool as the loop holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub c: Container,
    /// Its stop-and-remove is under way: it belongs to that task now.
    pub stopping: bool,
}

/// The loop's state a round starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub pool: Vec<Member>,
    pub desired: usize,
    pub scaler: ScalerState,
    /// Start of the round of the last scaling check.
    pub last_check_ms: Option<Millis>,
    pub image_ready: bool,
}

/// What one round observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub now: Millis,
    /// Docker's list of our containers; `None` when the engine did not answer.
    pub listed: Option<Vec<Observed>>,
    /// Containers whose port accepted a connection this round.
    pub accepting: HashSet<String>,
    /// Each SUNDOWN container's view from every connected balancer.
    pub views: HashMap<String, Vec<BalancerView>>,
    /// The latest `POST /scale` since the last round.
    pub set_desired: Option<usize>,
    /// Containers (ids) `POST /sundown` asked for since the last round.
    pub sundown: Vec<String>,
    /// Traffic and host load over the scaler's windows.
    pub scaling: scaler::Observed,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Docker lists a new address for it (attached to the network after creation).
    Address { id: String, address: String },
    /// Track a running labelled container there is no record of (as INIT).
    Adopt(Observed),
    /// Its container is gone from Docker: drop it and its record.
    Forget { id: String },
    /// Stop and remove it: exited, dead, or never ready; replaced by the create step.
    Replace { id: String, name: String },
    /// Create containers with these names.
    Create(Vec<String>),
    /// Mark it SUNDOWN: no new requests; stopped once drained.
    Sundown { id: String },
    /// It accepts connections: publish it (as INIT).
    Ready { id: String },
    /// Drained (or out of time): stop and remove it.
    Stop { id: String, name: String },
}

/// The round's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: usize,
    pub scaler: ScalerState,
    pub last_check_ms: Option<Millis>,
    /// The scaling check's outcome, when one ran (for `/stats`).
    pub decision: Option<String>,
    pub actions: Vec<Action>,
    pub events: Vec<(EventKind, String, serde_json::Value)>,
}

impl Plan {
    fn event(&mut self, kind: EventKind, reason: String, details: serde_json::Value) {
        self.events.push((kind, reason, details));
    }

    pub fn count(&self, kind: EventKind) -> usize {
        self.events.iter().filter(|(k, ..)| *k == kind).count()
    }
}

/// An event when the host becomes saturated or stops being so.
fn host_event(plan: &mut Plan, was: bool, obs: &scaler::Observed, threshold: f64) {
    let now = plan.scaler.host_saturated;
    if now == was {
        return;
    }
    let busy = obs.host_busy.map_or(0.0, |b| (b * 1000.0).round() / 10.0);
    let details = json!({ "host_busy_percent": busy, "host_saturation": threshold });
    if now {
        plan.event(
            EventKind::HostSaturated,
            format!(
                "host saturated: {busy} % of its CPUs busy (HOST_SATURATION {threshold}); no container is added while it lasts"
            ),
            details,
        );
    } else {
        plan.event(
            EventKind::HostRecovered,
            format!("host no longer saturated: {busy} % of its CPUs busy"),
            details,
        );
    }
}

/// Decides one round. `docker_ok`: the engine answered this round (no scaling otherwise).
pub fn decide(state: &PoolState, obs: &Observation, cfg: &Config, docker_ok: bool) -> Plan {
    let now = obs.now;
    let mut plan = Plan {
        desired: state.desired,
        scaler: state.scaler.clone(),
        last_check_ms: state.last_check_ms,
        decision: None,
        actions: Vec::new(),
        events: Vec::new(),
    };
    // The pool as the steps below change it.
    let mut pool: Vec<Member> = state.pool.clone();
    let s = &cfg.scaling;

    if let Some(asked) = obs.set_desired {
        let clamped = asked.clamp(s.min_containers, s.max_containers);
        plan.event(
            EventKind::ScaleManual,
            format!(
                "desired set to {clamped} by POST /scale (asked {asked}, was {})",
                plan.desired
            ),
            json!({ "asked": asked, "desired": clamped, "was": plan.desired }),
        );
        plan.desired = clamped;
        // The asked size holds for a whole stabilisation window unless load asks for more:
        // proposals recorded before it do not count toward a scale-down.
        plan.scaler.recommendations.clear();
        plan.scaler.recording_since_ms = None;
    }

    let asked: Vec<String> = obs
        .sundown
        .iter()
        .filter(|id| {
            pool.iter()
                .any(|m| &m.c.id == *id && m.c.is_active() && !m.stopping)
        })
        .cloned()
        .collect();
    if !asked.is_empty() {
        let before = plan.desired;
        plan.desired = before.saturating_sub(asked.len()).max(s.min_containers);
        let names: Vec<&str> = pool
            .iter()
            .filter(|m| asked.contains(&m.c.id))
            .map(|m| m.c.name.as_str())
            .collect();
        plan.event(
            EventKind::ScaleManual,
            format!(
                "desired {before} -> {}: {} marked SUNDOWN by POST /sundown",
                plan.desired,
                names.join(", ")
            ),
            json!({ "ids": asked, "desired": plan.desired, "was": before }),
        );
        sundown(&mut plan, &mut pool, &asked, "marked by POST /sundown", now);
        // As after `POST /scale`: the new size holds for a stabilisation window.
        plan.scaler.recommendations.clear();
        plan.scaler.recording_since_ms = None;
    }

    // Measured between round starts, with half a round of slack, so that jitter in how long
    // a round's first steps take never postpones a check by a whole round.
    let slack = ms(cfg.sample_period) / 2;
    let due = plan
        .last_check_ms
        .is_none_or(|t| now.saturating_sub(t) + slack >= ms(s.check_period));
    // The scaler runs every round (a spike is acted on at once, see `scaler`), and decides
    // on the stable window when a check is due.
    if docker_ok {
        if due {
            plan.last_check_ms = Some(now);
        }
        let live: Vec<Container> = pool
            .iter()
            .filter(|m| !m.stopping)
            .map(|m| m.c.clone())
            .collect();
        let active = live.iter().filter(|c| c.is_active()).count();
        let was_saturated = plan.scaler.host_saturated;
        let decision = scaler::decide(
            &live,
            plan.desired,
            s,
            &mut plan.scaler,
            &obs.scaling,
            now,
            due,
        );
        host_event(&mut plan, was_saturated, &obs.scaling, s.host_saturation);
        match decision {
            Decision::Hold { reason } => {
                // Between checks only a panic acts; keep the last check's reason.
                if due {
                    plan.decision = Some(format!("hold: {reason}"));
                }
            }
            Decision::Up {
                count,
                reason,
                details,
            } => {
                let before = plan.desired;
                plan.desired = (plan.desired.max(active) + count).min(s.max_containers);
                plan.decision = Some(format!("scale up: {reason}"));
                plan.event(
                    EventKind::ScaleUp,
                    format!("desired {before} -> {}: {reason}", plan.desired),
                    details,
                );
            }
            Decision::Down {
                victims,
                reason,
                details,
            } => {
                let before = plan.desired;
                plan.desired = active.saturating_sub(victims.len()).max(s.min_containers);
                plan.decision = Some(format!("scale down: {reason}"));
                plan.event(
                    EventKind::ScaleDown,
                    format!("desired {before} -> {}: {reason}", plan.desired),
                    details,
                );
                sundown(&mut plan, &mut pool, &victims, &reason, now);
            }
        }
    }

    if let Some(listed) = &obs.listed {
        reconcile(&mut plan, &mut pool, listed, cfg, now, state.image_ready);
    }

    for m in pool.iter_mut() {
        let c = &mut m.c;
        if c.ready_ms.is_none()
            && !m.stopping
            && !c.address.is_empty()
            && obs.accepting.contains(&c.id)
        {
            c.ready_ms = Some(now);
            plan.event(
                EventKind::ContainerReady,
                format!("{} accepts connections; published as INIT", c.name),
                json!({ "id": c.id, "name": c.name, "ms_since_created": now.saturating_sub(c.created_ms) }),
            );
            plan.actions.push(Action::Ready { id: c.id.clone() });
        }
    }

    let no_views = Vec::new();
    for m in pool
        .iter()
        .filter(|m| m.c.category == Category::Sundown && !m.stopping)
    {
        let c = &m.c;
        let views = obs.views.get(&c.id).unwrap_or(&no_views);
        match lifecycle::drain_status(c, views, now, ms(cfg.drain_timeout), MIN_DRAIN_MS) {
            DrainStatus::Waiting(_) => {}
            DrainStatus::Drained(why) => {
                plan.event(
                    EventKind::ContainerDrained,
                    format!("{} drained ({why}); stopping it", c.name),
                    json!({ "id": c.id, "name": c.name }),
                );
                plan.actions.push(Action::Stop {
                    id: c.id.clone(),
                    name: c.name.clone(),
                });
            }
            DrainStatus::TimedOut => {
                let in_flight: u64 = views.iter().map(|v| v.in_flight).sum();
                plan.event(
                    EventKind::DrainTimeout,
                    format!(
                        "{} still had {in_flight} request(s) in flight after DRAIN_TIMEOUT; stopping it",
                        c.name
                    ),
                    json!({ "id": c.id, "name": c.name, "in_flight": in_flight }),
                );
                plan.actions.push(Action::Stop {
                    id: c.id.clone(),
                    name: c.name.clone(),
                });
            }
        }
    }
    plan
}

/// Marks `victims` SUNDOWN (in `pool` and in the plan).
fn sundown(plan: &mut Plan, pool: &mut [Member], victims: &[String], reason: &str, now: Millis) {
    for id in victims {
        let Some(m) = pool.iter_mut().find(|m| &m.c.id == id) else {
            continue;
        };
        if m.c.category == Category::Sundown {
            continue;
        }
        m.c.category = Category::Sundown;
        m.c.sundown_ms = Some(now);
        m.c.sundown_version = None;
        plan.event(
            EventKind::ContainerSundown,
            format!("{} marked SUNDOWN ({reason}); draining", m.c.name),
            json!({ "id": id, "name": m.c.name }),
        );
        plan.actions.push(Action::Sundown { id: id.clone() });
    }
}

/// Step 3: the records against Docker's list.
fn reconcile(
    plan: &mut Plan,
    pool: &mut Vec<Member>,
    listed: &[Observed],
    cfg: &Config,
    now: Millis,
    image_ready: bool,
) {
    for o in listed {
        if let (Some(m), Some(addr)) = (pool.iter_mut().find(|m| m.c.id == o.id), &o.address) {
            if m.c.address != *addr {
                m.c.address = addr.clone();
                plan.actions.push(Action::Address {
                    id: o.id.clone(),
                    address: addr.clone(),
                });
            }
        }
    }
    let known: Vec<Container> = pool
        .iter()
        .filter(|m| !m.stopping)
        .map(|m| m.c.clone())
        .collect();
    // A container being stopped belongs to its removal task until Docker has removed it: left
    // in the list, it would look like a stray to adopt or an exited one to replace again.
    let live: Vec<Observed> = listed
        .iter()
        .filter(|o| !pool.iter().any(|m| m.c.id == o.id && m.stopping))
        .cloned()
        .collect();
    let lp = lifecycle::plan(plan.desired, &known, &live, now, ms(cfg.ready_timeout));
    for o in lp.adopt {
        plan.event(
            EventKind::ContainerAdopted,
            format!("adopted running container {} found in docker", o.name),
            json!({ "id": o.id, "name": o.name }),
        );
        pool.push(Member {
            c: adopted(&o),
            stopping: false,
        });
        plan.actions.push(Action::Adopt(o));
    }
    for id in lp.forget {
        let Some(i) = pool.iter().position(|m| m.c.id == id) else {
            continue;
        };
        let m = pool.remove(i);
        plan.event(
            EventKind::ContainerVanished,
            format!(
                "container {} disappeared from docker; it will be replaced",
                m.c.name
            ),
            json!({ "id": id, "name": m.c.name }),
        );
        plan.actions.push(Action::Forget { id });
    }
    for id in lp.remove {
        let member = pool.iter_mut().find(|m| m.c.id == id);
        let name = member
            .as_ref()
            .map(|m| m.c.name.clone())
            .or_else(|| listed.iter().find(|o| o.id == id).map(|o| o.name.clone()))
            .unwrap_or_else(|| id.clone());
        let stuck = member.as_ref().is_some_and(|m| m.c.ready_ms.is_none());
        if let Some(m) = member {
            m.stopping = true;
        }
        plan.event(
            EventKind::ContainerReplaced,
            if stuck {
                format!("container {name} did not accept connections within READY_TIMEOUT; replacing it")
            } else {
                format!("container {name} is not running (exited or dead); replacing it")
            },
            json!({ "id": id, "name": name }),
        );
        plan.actions.push(Action::Replace { id, name });
    }
    if lp.create > 0 && image_ready {
        let mut taken: HashSet<&str> = pool.iter().map(|m| m.c.name.as_str()).collect();
        taken.extend(listed.iter().map(|o| o.name.as_str()));
        let names = free_names(
            &cfg.container.name_prefix,
            &taken,
            lp.create,
            cfg.scaling.max_containers * 4 + 64,
        );
        if !names.is_empty() {
            plan.actions.push(Action::Create(names));
        }
    }
    if lp.excess > 0 {
        let containers: Vec<Container> = pool.iter().map(|m| m.c.clone()).collect();
        let victims = scaler::pick_victims(&containers, lp.excess);
        sundown(plan, pool, &victims, "pool above the desired size", now);
    }
}

/// The record of an adopted container: INIT, not ready (probed before it is published).
pub fn adopted(o: &Observed) -> Container {
    Container {
        id: o.id.clone(),
        name: o.name.clone(),
        address: o.address.clone().unwrap_or_default(),
        image: o.image.clone(),
        category: Category::Init,
        scores: None,
        created_ms: o.created_ms,
        ready_ms: None,
        scored_ms: None,
        sundown_ms: None,
        sundown_version: None,
        sundown_balancers: Vec::new(),
    }
}

/// The first `count` names `{prefix}-{n}` (n = 1, 2, …) not in `taken`, trying at most
/// `limit` numbers.
pub fn free_names(prefix: &str, taken: &HashSet<&str>, count: usize, limit: usize) -> Vec<String> {
    (1..=limit)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|name| !taken.contains(name.as_str()))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scores;

    const T0: Millis = 1_000_000;

    fn cfg() -> Config {
        Config::from_lookup(|k| {
            match k {
                "DOCKER_IMAGE" => Some("img"),
                "TARGET_PORT" => Some("5000"),
                "DEFAULT_CONTAINER" => Some("2"),
                "MAX_CONTAINERS" => Some("4"),
                "CONTAINER_NAME_PREFIX" => Some("app"),
                _ => None,
            }
            .map(String::from)
        })
        .expect("test config")
    }

    fn scored(id: &str, overall: f64) -> Member {
        Member {
            c: Container {
                id: id.into(),
                name: format!("app-{id}"),
                address: format!("10.0.0.{}:5000", id.len()),
                image: "img".into(),
                category: crate::scoring::category(overall, 70.0, 40.0),
                scores: Some(Scores {
                    cpu: overall,
                    memory: 100.0,
                    network: 100.0,
                    availability: overall,
                    overall,
                }),
                created_ms: T0 - 60_000,
                ready_ms: Some(T0 - 50_000),
                scored_ms: Some(T0 - 1_000),
                sundown_ms: None,
                sundown_version: None,
                sundown_balancers: Vec::new(),
            },
            stopping: false,
        }
    }

    fn running(m: &Member) -> Observed {
        Observed {
            id: m.c.id.clone(),
            name: m.c.name.clone(),
            image: "img".into(),
            running: true,
            address: Some(m.c.address.clone()),
            created_ms: m.c.created_ms,
        }
    }

    fn state(pool: Vec<Member>, desired: usize) -> PoolState {
        PoolState {
            pool,
            desired,
            scaler: ScalerState::default(),
            // A check ran just now: no scaling unless a test says so.
            last_check_ms: Some(T0),
            image_ready: true,
        }
    }

    fn obs(listed: Option<Vec<Observed>>) -> Observation {
        Observation {
            now: T0,
            listed,
            ..Observation::default()
        }
    }

    fn kinds(plan: &Plan) -> Vec<EventKind> {
        plan.events.iter().map(|(k, ..)| *k).collect()
    }

    #[test]
    fn a_steady_pool_needs_nothing() {
        let pool = vec![scored("a", 90.0), scored("b", 90.0)];
        let listed = pool.iter().map(running).collect();
        let plan = decide(&state(pool, 2), &obs(Some(listed)), &cfg(), true);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.events.is_empty());
        assert_eq!(plan.desired, 2);
    }

    #[test]
    fn a_killed_container_is_replaced_and_one_created() {
        let pool = vec![scored("a", 90.0), scored("b", 90.0)];
        let mut dead = running(&pool[1]);
        dead.running = false;
        let plan = decide(
            &state(pool.clone(), 2),
            &obs(Some(vec![running(&pool[0]), dead])),
            &cfg(),
            true,
        );
        assert_eq!(
            plan.actions,
            [
                Action::Replace {
                    id: "b".into(),
                    name: "app-b".into()
                },
                // app-b's name is still taken until Docker has removed it.
                Action::Create(vec!["app-1".into()]),
            ]
        );
        assert_eq!(kinds(&plan), [EventKind::ContainerReplaced]);
        // Gone from Docker altogether: forgotten, and replaced.
        let plan = decide(
            &state(pool.clone(), 2),
            &obs(Some(vec![running(&pool[0])])),
            &cfg(),
            true,
        );
        assert_eq!(
            plan.actions,
            [
                Action::Forget { id: "b".into() },
                Action::Create(vec!["app-1".into()])
            ]
        );
    }

    #[test]
    fn after_a_restart_or_a_redis_loss_running_containers_are_adopted_not_duplicated() {
        // No records (fresh start, or Redis lost its data) but two of ours running.
        let was = [scored("a", 90.0), scored("b", 90.0)];
        let listed: Vec<Observed> = was.iter().map(running).collect();
        let plan = decide(
            &state(Vec::new(), 2),
            &obs(Some(listed.clone())),
            &cfg(),
            true,
        );
        assert_eq!(
            plan.actions,
            [
                Action::Adopt(listed[0].clone()),
                Action::Adopt(listed[1].clone())
            ]
        );
        assert_eq!(
            kinds(&plan),
            [EventKind::ContainerAdopted, EventKind::ContainerAdopted]
        );
        // They accept connections in the same round: published as INIT at once.
        let mut o = obs(Some(listed.clone()));
        o.accepting = ["a".to_string(), "b".to_string()].into();
        let plan = decide(&state(Vec::new(), 2), &o, &cfg(), true);
        assert_eq!(plan.count(EventKind::ContainerReady), 2);
        // Docker did not answer: nothing is adopted, created or forgotten.
        let plan = decide(&state(Vec::new(), 2), &obs(None), &cfg(), false);
        assert!(plan.actions.is_empty(), "{plan:?}");
    }

    #[test]
    fn saturation_scales_up_once_per_cooldown() {
        let pool = vec![scored("a", 10.0), scored("b", 30.0)];
        let listed: Vec<Observed> = pool.iter().map(running).collect();
        let mut st = state(pool, 2);
        st.last_check_ms = None;
        let plan = decide(&st, &obs(Some(listed.clone())), &cfg(), true);
        // Average 20: load 80 against 45 → ceil(2 × 1.78) = 4 (MAX_CONTAINERS), in one step.
        assert_eq!(plan.desired, 4);
        assert_eq!(plan.count(EventKind::ScaleUp), 1);
        assert_eq!(
            plan.actions,
            [Action::Create(vec!["app-1".into(), "app-2".into()])]
        );
        assert_eq!(plan.last_check_ms, Some(T0));
        // Docker down: no check at all.
        let plan = decide(&st, &obs(None), &cfg(), false);
        assert_eq!((plan.desired, plan.last_check_ms), (2, None));
        // The next check within the cooldown holds.
        let mut next = st.clone();
        next.desired = 2;
        next.scaler = plan_scaler(&st, &listed);
        next.last_check_ms = Some(T0 - 20_000);
        let mut o = obs(Some(listed));
        o.now = T0 + 1_000;
        let plan = decide(&next, &o, &cfg(), true);
        assert_eq!(plan.desired, 2);
        assert!(plan.decision.unwrap_or_default().contains("cooling down"));
    }

    fn plan_scaler(st: &PoolState, listed: &[Observed]) -> ScalerState {
        decide(st, &obs(Some(listed.to_vec())), &cfg(), true).scaler
    }

    #[test]
    fn an_idle_pool_shrinks_through_sundown_after_the_stabilisation_window() {
        let pool = vec![scored("a", 99.0), scored("b", 95.0), scored("c", 97.0)];
        let listed: Vec<Observed> = pool.iter().map(running).collect();
        let mut st = state(pool, 3);
        st.last_check_ms = None;
        st.scaler.recording_since_ms = Some(T0 - 61_000);
        let plan = decide(&st, &obs(Some(listed)), &cfg(), true);
        assert_eq!(plan.desired, 2);
        assert_eq!(
            kinds(&plan),
            [EventKind::ScaleDown, EventKind::ContainerSundown]
        );
        // The least loaded (highest score) goes.
        assert_eq!(plan.actions, [Action::Sundown { id: "a".into() }]);
    }

    #[test]
    fn post_scale_is_an_input_of_the_round() {
        let pool = vec![scored("a", 90.0), scored("b", 90.0)];
        let listed: Vec<Observed> = pool.iter().map(running).collect();
        let mut o = obs(Some(listed.clone()));
        o.set_desired = Some(9);
        let mut st = state(pool.clone(), 2);
        st.scaler.recording_since_ms = Some(T0 - 120_000);
        st.scaler.recommendations.push_back((T0 - 1_000, 2));
        let plan = decide(&st, &o, &cfg(), true);
        assert_eq!(plan.desired, 4, "clamped to MAX_CONTAINERS");
        // Older proposals no longer count toward a scale-down: a new window starts.
        assert!(
            plan.scaler.recording_since_ms.is_none_or(|t| t >= T0),
            "{:?}",
            plan.scaler
        );
        assert!(plan.scaler.recommendations.iter().all(|(at, _)| *at >= T0));
        assert_eq!(
            plan.actions,
            [Action::Create(vec!["app-1".into(), "app-2".into()])]
        );
        o.set_desired = Some(0);
        let plan = decide(&state(pool, 2), &o, &cfg(), true);
        assert_eq!(plan.desired, 2, "clamped to DEFAULT_CONTAINER");
    }

    #[test]
    fn post_sundown_drains_that_container_and_lowers_the_desired_size() {
        let pool = vec![scored("a", 90.0), scored("b", 90.0), scored("c", 90.0)];
        let listed: Vec<Observed> = pool.iter().map(running).collect();
        let mut o = obs(Some(listed));
        o.sundown = vec!["b".into()];
        let plan = decide(&state(pool.clone(), 3), &o, &cfg(), true);
        assert_eq!(plan.desired, 2);
        assert_eq!(plan.actions, [Action::Sundown { id: "b".into() }]);
        assert_eq!(
            kinds(&plan),
            [EventKind::ScaleManual, EventKind::ContainerSundown]
        );
        // At the minimum size the container is replaced instead.
        let two = vec![scored("a", 90.0), scored("b", 90.0)];
        let mut o = obs(Some(two.iter().map(running).collect()));
        o.sundown = vec!["b".into()];
        let plan = decide(&state(two, 2), &o, &cfg(), true);
        assert_eq!(plan.desired, 2, "never below DEFAULT_CONTAINER");
        assert!(plan.actions.contains(&Action::Sundown { id: "b".into() }));
        assert!(
            plan.actions
                .iter()
                .any(|a| matches!(a, Action::Create(names) if names.len() == 1)),
            "{:?}",
            plan.actions
        );
        // A container already leaving, or unknown, is not asked twice.
        let mut gone = pool.clone();
        gone[1].c.category = Category::Sundown;
        let mut o = obs(Some(pool.iter().map(running).collect()));
        o.sundown = vec!["b".into(), "zzz".into()];
        let plan = decide(&state(gone, 2), &o, &cfg(), true);
        assert!(!kinds(&plan).contains(&EventKind::ScaleManual));
    }

    fn draining(id: &str, since: Millis, version: u64) -> Member {
        let mut m = scored(id, 95.0);
        m.c.category = Category::Sundown;
        m.c.sundown_ms = Some(since);
        m.c.sundown_version = Some(version);
        m
    }

    fn view(balancer: &str, queue_version: u64, in_flight: u64) -> BalancerView {
        BalancerView {
            balancer: balancer.into(),
            queue_version,
            in_flight,
        }
    }

    #[test]
    fn drain_with_and_without_reports_and_its_timeout() {
        let pool = vec![
            scored("a", 90.0),
            scored("b", 90.0),
            draining("s", T0 - 5_000, 7),
        ];
        let listed: Vec<Observed> = pool.iter().map(running).collect();
        let with = |views: Vec<BalancerView>, now: Millis| {
            let mut o = obs(Some(listed.clone()));
            o.now = now;
            o.views.insert("s".into(), views);
            decide(&state(pool.clone(), 2), &o, &cfg(), true)
        };
        let stop = Action::Stop {
            id: "s".into(),
            name: "app-s".into(),
        };
        // Every balancer on v7 with nothing in flight: stopped.
        let plan = with(vec![view("b1", 7, 0)], T0);
        assert_eq!(plan.actions, std::slice::from_ref(&stop));
        assert_eq!(kinds(&plan), [EventKind::ContainerDrained]);
        // No balancer connected at all: drained after the minimum drain time.
        assert_eq!(with(vec![], T0).actions, std::slice::from_ref(&stop));
        // Requests still in flight, or a balancer on an older version: wait.
        assert!(with(vec![view("b1", 7, 2)], T0).actions.is_empty());
        assert!(with(vec![view("b1", 6, 0)], T0).actions.is_empty());
        // Until DRAIN_TIMEOUT (30 s by default): then stopped anyway.
        let plan = with(vec![view("b1", 7, 2)], T0 + 26_000);
        assert_eq!(plan.actions, [stop]);
        assert_eq!(kinds(&plan), [EventKind::DrainTimeout]);
    }

    #[test]
    fn names_skip_the_taken_ones() {
        let taken: HashSet<&str> = ["app-1", "app-3"].into();
        assert_eq!(
            free_names("app", &taken, 3, 10),
            ["app-2", "app-4", "app-5"]
        );
        assert_eq!(free_names("app", &taken, 3, 2), ["app-2"]);
    }
}

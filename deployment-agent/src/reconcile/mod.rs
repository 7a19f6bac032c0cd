//! The control loop, the agent's one I/O loop: every `SAMPLE_PERIOD` it
//! **observes** (Docker containers, stats, probes, balancer reports), **decides** (pure code in
//! [`lifecycle`] and [`scaler`]), **acts** (create, mark SUNDOWN, stop and remove),
//! **persists** (Redis) and **publishes** (the queue frame for balancers, a snapshot for the API).
//!
//! The loop owns the pool; nothing else mutates it. Docker or Redis being unavailable never
//! stops it: the last queue stays published, failures are logged once per outage, and the
//! loop retries on its next tick.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use log::{debug, error, info, warn};
use protocol::QueueItem;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::{ms, Config};
use crate::docker::{ContainerSpec, Docker, DockerError};
use crate::lifecycle::{self, DrainStatus};
use crate::model::{now_ms, Category, Container, Event, EventKind, Millis, Observed, StatsSample};
use crate::push::{QueueFrame, Reports};
use crate::scaler::{self, Decision, ScalerState};
use crate::scoring::{self, ContainerScorer};
use crate::store::Store;

pub mod events;
pub mod publish;

use events::EventLog;
use publish::Publisher;

/// How long a readiness connect may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A SUNDOWN container is kept at least this long, so balancers that have not reported yet
/// (or none at all) get the new queue before it stops.
const MIN_DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for the engine's container list; beyond it the engine counts as unavailable.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request from the HTTP API to the loop.
#[derive(Debug)]
pub enum Command {
    /// `POST /scale`: set the desired pool size (clamped to the bounds by the loop).
    SetDesired {
        desired: usize,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
}

/// One container as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub container: Container,
    /// Requests in flight to it, summed over the balancers' latest reports.
    pub in_flight: u64,
}

/// What the loop last saw and did, for the HTTP API (replaced wholesale every tick).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub at_ms: Millis,
    pub desired: usize,
    pub active: usize,
    pub containers: Vec<ContainerView>,
    pub queue_version: u64,
    pub docker_ok: bool,
    pub redis_ok: bool,
    pub image_ready: bool,
    pub last_decision: String,
    /// Newest first; mirrors what was written to Redis (used when Redis is unavailable).
    pub recent_events: Vec<Event>,
    /// Scoring round cost, microseconds (last tick).
    pub scoring_us: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub replaced: u64,
}

/// Aborts the task when dropped (stats streams end with their container's record).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Tracked {
    c: Container,
    scorer: ContainerScorer,
    stats: watch::Receiver<Option<StatsSample>>,
    _stats_task: AbortOnDrop,
    /// Stop-and-remove is under way.
    stopping: bool,
}

/// Channels the loop publishes on.
pub struct Outputs {
    /// `None` until the pool has been observed: subscribers get nothing before that.
    pub queue: watch::Sender<Option<QueueFrame>>,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
}

pub struct Controller {
    cfg: Arc<Config>,
    docker: Docker,
    store: Store,
    reports: Arc<Reports>,
    publisher: Publisher,
    snapshots: watch::Sender<Arc<Snapshot>>,
    pool: BTreeMap<String, Tracked>,
    desired: usize,
    scaler: ScalerState,
    network: Option<String>,
    image_ready: bool,
    docker_ok: bool,
    redis_ok: bool,
    /// Docker has listed the pool at least once: nothing is published before (a queue built
    /// from nothing would take every backend away from the balancers).
    observed: bool,
    restored: bool,
    removals: JoinSet<(String, String, Result<(), DockerError>)>,
    log: EventLog,
    last_decision: String,
    last_check: Option<Instant>,
    scoring_us: u64,
    scale_ups: u64,
    scale_downs: u64,
    replaced: u64,
}

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        docker: Docker,
        store: Store,
        reports: Arc<Reports>,
        out: Outputs,
    ) -> Controller {
        let desired = cfg.scaling.default_containers;
        Controller {
            cfg,
            docker,
            store,
            reports,
            publisher: Publisher::new(out.queue),
            snapshots: out.snapshot,
            pool: BTreeMap::new(),
            desired,
            scaler: ScalerState::default(),
            network: None,
            image_ready: false,
            docker_ok: true,
            redis_ok: true,
            restored: false,
            observed: false,
            removals: JoinSet::new(),
            log: EventLog::default(),
            last_decision: String::from("none yet"),
            last_check: None,
            scoring_us: 0,
            scale_ups: 0,
            scale_downs: 0,
            replaced: 0,
        }
    }

    /// Runs until `shutdown` flips. App containers are left running: a restarted agent
    /// adopts them.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.cfg.sample_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                Some(cmd) = commands.recv() => self.command(cmd).await,
                Some(done) = self.removals.join_next(), if !self.removals.is_empty() => {
                    if let Ok((id, name, result)) = done {
                        self.removed(&id, &name, result).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        info!("control loop stopped; app containers keep running and will be adopted on restart");
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::SetDesired { desired, reply } => {
                let s = &self.cfg.scaling;
                let clamped = desired.clamp(s.default_containers, s.max_containers);
                let before = self.desired;
                self.desired = clamped;
                self.log.record(
                    EventKind::ScaleManual,
                    format!(
                        "desired set to {clamped} by POST /scale (asked {desired}, was {before})"
                    ),
                    serde_json::json!({ "asked": desired, "desired": clamped, "was": before }),
                );
                self.persist_desired().await;
                let _ = reply.send(clamped);
                // Act at once rather than on the next tick.
                self.tick().await;
            }
        }
    }

    /// One observe → decide → act → persist → publish round.
    async fn tick(&mut self) {
        let now = now_ms();
        if !self.restored && !self.restore().await {
            self.without_redis(now).await;
            return;
        }
        self.ensure_image().await;
        let tick_start = Instant::now();
        // A hung engine must not stall the loop (probes, publishing, the API's snapshot).
        let listed = tokio::time::timeout(LIST_TIMEOUT, self.docker.list_ours(&self.cfg.app)).await;
        let observed = match listed {
            Ok(Ok(observed)) => {
                if !self.docker_ok {
                    info!("docker engine reachable again");
                    self.docker_ok = true;
                }
                self.observed = true;
                Some(observed)
            }
            Ok(Err(e)) => {
                self.docker_down(&e.to_string());
                None
            }
            Err(_) => {
                self.docker_down(&format!("listing containers took over {LIST_TIMEOUT:?}"));
                None
            }
        };
        // Score and decide first, then reconcile: a scale-up's containers are created in the
        // same round, and a container that became ready is published as INIT for at least
        // one round before its first score (the balancers' ramp-in).
        self.score(now).await;
        self.scale(tick_start, now).await;
        if let Some(observed) = observed {
            self.reconcile(observed, now).await;
        }
        self.readiness(now).await;
        self.drain(now).await;
        self.publish(now);
        self.persist().await;
        self.snapshot(now);
    }

    /// A round while Redis has not answered since the start: the saved state (desired size,
    /// records, SUNDOWN decisions) is unknown, so nothing is created, removed or scaled. But
    /// the app keeps being served: the labelled containers Docker lists are adopted, probed,
    /// scored and published, so balancers never lose backends that are running.
    async fn without_redis(&mut self, now: Millis) {
        let listed = tokio::time::timeout(LIST_TIMEOUT, self.docker.list_ours(&self.cfg.app)).await;
        let observed = match listed {
            Ok(Ok(observed)) => observed,
            Ok(Err(e)) => return self.docker_down(&e.to_string()),
            Err(_) => {
                return self.docker_down(&format!("listing containers took over {LIST_TIMEOUT:?}"))
            }
        };
        self.docker_ok = true;
        self.observed = true;
        let known: Vec<Container> = self.pool.values().map(|t| t.c.clone()).collect();
        let plan = lifecycle::plan(
            self.desired,
            &known,
            &observed,
            now,
            ms(self.cfg.ready_timeout),
        );
        for o in plan.adopt {
            self.adopt(&o).await;
        }
        self.score(now).await;
        self.readiness(now).await;
        self.publish(now);
        self.snapshot(now);
    }

    /// Starts tracking a running labelled container the agent has no record of (as INIT).
    async fn adopt(&mut self, o: &Observed) {
        let c = Container {
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
        };
        self.log.record(
            EventKind::ContainerAdopted,
            format!("adopted running container {} found in docker", o.name),
            serde_json::json!({ "id": o.id, "name": o.name }),
        );
        self.track(c);
    }

    /// Loads the desired count and the container records from Redis (once, at start).
    async fn restore(&mut self) -> bool {
        let desired = match self.store.desired().await {
            Ok(d) => d,
            Err(e) => {
                if self.redis_ok {
                    error!(
                        "redis unavailable, cannot restore state yet (retrying every tick): {e}"
                    );
                    self.redis_ok = false;
                }
                return false;
            }
        };
        let records = match self.store.load_containers().await {
            Ok(r) => r,
            Err(e) => {
                error!("loading container records from redis failed (retrying): {e}");
                return false;
            }
        };
        self.redis_ok = true;
        let s = &self.cfg.scaling;
        self.desired = desired
            .unwrap_or(s.default_containers)
            .clamp(s.default_containers, s.max_containers);
        info!(
            "restored from redis: desired {} ({}), {} container record(s)",
            self.desired,
            if desired.is_some() {
                "saved"
            } else {
                "default"
            },
            records.len()
        );
        // Save the starting value (the default, or a saved one clamped to new bounds) so
        // Redis always holds the desired size the loop works with.
        if desired != Some(self.desired) {
            self.persist_desired().await;
        }
        for c in records {
            self.track(c);
        }
        self.network = match &self.cfg.network {
            Some(n) => Some(n.clone()),
            None => match self.docker.own_network().await {
                Ok(n) => n,
                Err(e) => {
                    warn!("could not find the agent's own network, app containers join the default bridge: {e}");
                    None
                }
            },
        };
        info!(
            "app containers join network {}",
            self.network.as_deref().unwrap_or("(default bridge)")
        );
        self.restored = true;
        true
    }

    async fn ensure_image(&mut self) {
        if self.image_ready {
            return;
        }
        match self
            .docker
            .ensure_image(&self.cfg.image, self.cfg.image_pull_retries)
            .await
        {
            Ok(()) => {
                info!("image {} is present", self.cfg.image);
                self.image_ready = true;
            }
            Err(e) => error!(
                "image {} unavailable, no container can be created: {e}",
                self.cfg.image
            ),
        }
    }

    fn track(&mut self, c: Container) {
        let (tx, rx) = watch::channel(None);
        let docker = self.docker.clone();
        let id = c.id.clone();
        let task = tokio::spawn(stats_feed(docker, id, tx));
        let scorer = ContainerScorer::new(&self.cfg.scoring, self.cfg.container.cpus);
        self.pool.insert(
            c.id.clone(),
            Tracked {
                c,
                scorer,
                stats: rx,
                _stats_task: AbortOnDrop(task),
                stopping: false,
            },
        );
    }

    async fn reconcile(&mut self, observed: Vec<Observed>, now: Millis) {
        // Addresses can appear after creation (network attach); keep records current.
        for o in &observed {
            if let (Some(t), Some(addr)) = (self.pool.get_mut(&o.id), &o.address) {
                if t.c.address != *addr {
                    t.c.address = addr.clone();
                }
            }
        }
        let known: Vec<Container> = self
            .pool
            .values()
            .filter(|t| !t.stopping)
            .map(|t| t.c.clone())
            .collect();
        // A container being stopped belongs to its removal task until Docker has removed it:
        // left in `observed`, it would look like a stray to adopt (running, no record) or an
        // exited one to replace again.
        let live: Vec<Observed> = observed
            .iter()
            .filter(|o| !self.pool.get(&o.id).is_some_and(|t| t.stopping))
            .cloned()
            .collect();
        let plan = lifecycle::plan(self.desired, &known, &live, now, ms(self.cfg.ready_timeout));
        for o in plan.adopt {
            self.adopt(&o).await;
        }
        for id in plan.forget {
            if let Some(t) = self.pool.remove(&id) {
                self.replaced += 1;
                self.log.record(
                    EventKind::ContainerVanished,
                    format!(
                        "container {} disappeared from docker; it will be replaced",
                        t.c.name
                    ),
                    serde_json::json!({ "id": id, "name": t.c.name }),
                );
                self.forget_record(&id).await;
            }
        }
        for id in plan.remove {
            let name = self
                .pool
                .get(&id)
                .map(|t| t.c.name.clone())
                .or_else(|| observed.iter().find(|o| o.id == id).map(|o| o.name.clone()))
                .unwrap_or_else(|| id.clone());
            let stuck = self.pool.get(&id).is_some_and(|t| t.c.ready_ms.is_none());
            self.replaced += 1;
            self.log.record(
                EventKind::ContainerReplaced,
                if stuck {
                    format!("container {name} did not accept connections within READY_TIMEOUT; replacing it")
                } else {
                    format!("container {name} is not running (exited or dead); replacing it")
                },
                serde_json::json!({ "id": id, "name": name }),
            );
            self.start_removal(&id, &name);
        }
        if plan.create > 0 && self.image_ready {
            self.create(plan.create, &observed).await;
        }
        if plan.excess > 0 {
            let pool: Vec<Container> = self.pool.values().map(|t| t.c.clone()).collect();
            let victims = scaler::pick_victims(&pool, plan.excess);
            if !victims.is_empty() {
                self.sundown(&victims, "pool above the desired size", now)
                    .await;
            }
        }
    }

    async fn create(&mut self, count: usize, observed: &[Observed]) {
        let mut taken: HashSet<String> = self.pool.values().map(|t| t.c.name.clone()).collect();
        taken.extend(observed.iter().map(|o| o.name.clone()));
        let mut index = 1usize;
        let mut created = 0;
        while created < count {
            let name = format!("{}-{index}", self.cfg.container.name_prefix);
            index += 1;
            if taken.contains(&name) {
                continue;
            }
            if index > self.cfg.scaling.max_containers * 4 + 64 {
                warn!(
                    "no free container name found under {}",
                    self.cfg.container.name_prefix
                );
                return;
            }
            let spec = ContainerSpec {
                name: name.clone(),
                image: self.cfg.image.clone(),
                app: self.cfg.app.clone(),
                target_port: self.cfg.target_port,
                network: self.network.clone(),
                cpus: self.cfg.container.cpus,
                memory_bytes: self.cfg.container.memory_bytes,
                env: self.cfg.container.env.clone(),
            };
            match self.docker.create_and_start(&spec).await {
                Ok(o) => {
                    created += 1;
                    taken.insert(name.clone());
                    self.log.record(
                        EventKind::ContainerStarted,
                        format!("started {name} ({} of {count})", created),
                        serde_json::json!({ "id": o.id, "name": name, "desired": self.desired }),
                    );
                    self.track(Container {
                        id: o.id,
                        name: o.name,
                        address: o.address.unwrap_or_default(),
                        image: o.image,
                        category: Category::Init,
                        scores: None,
                        created_ms: now_ms(),
                        ready_ms: None,
                        scored_ms: None,
                        sundown_ms: None,
                        sundown_version: None,
                        sundown_balancers: Vec::new(),
                    });
                }
                Err(DockerError::NameInUse { .. }) => {
                    taken.insert(name);
                }
                Err(e) => {
                    error!("creating container {name} failed: {e}");
                    return;
                }
            }
        }
    }

    /// Containers enter the queue (as INIT) once they accept connections on TARGET_PORT.
    async fn readiness(&mut self, now: Millis) {
        let pending: Vec<(String, String)> = self
            .pool
            .values()
            .filter(|t| t.c.ready_ms.is_none() && !t.c.address.is_empty() && !t.stopping)
            .map(|t| (t.c.id.clone(), t.c.address.clone()))
            .collect();
        let checks = pending.into_iter().map(|(id, addr)| async move {
            let ok = crate::probe::accepts(&addr, READY_PROBE_TIMEOUT).await;
            (id, ok)
        });
        for (id, ok) in futures_util::future::join_all(checks).await {
            if !ok {
                continue;
            }
            let Some(t) = self.pool.get_mut(&id) else {
                continue;
            };
            let at = now_ms().max(now);
            t.c.ready_ms = Some(at);
            let (name, waited) = (t.c.name.clone(), at.saturating_sub(t.c.created_ms));
            self.log.record(
                EventKind::ContainerReady,
                format!("{name} accepts connections; published as INIT"),
                serde_json::json!({ "id": id, "name": name, "ms_since_created": waited }),
            );
        }
    }

    /// Feeds stats, probes and reports into the scorers; sets categories from the scores.
    async fn score(&mut self, now: Millis) {
        let probe_timeout = self.cfg.probe_timeout;
        let path = self.cfg.probe_path.clone();
        let targets: Vec<(String, String)> = self
            .pool
            .values()
            .filter(|t| t.c.ready_ms.is_some() && t.c.is_active() && !t.stopping)
            .map(|t| (t.c.id.clone(), t.c.address.clone()))
            .collect();
        let probes = targets.into_iter().map(|(id, addr)| {
            let path = path.clone();
            async move {
                let r = crate::probe::response_time(&addr, &path, probe_timeout).await;
                (id, r)
            }
        });
        let results = futures_util::future::join_all(probes).await;
        let reports = self.reports.take_pending();
        let started = std::time::Instant::now();
        for (id, result) in results {
            if let Some(t) = self.pool.get_mut(&id) {
                if let Err(e) = &result {
                    debug!("probe of {} failed: {e}", t.c.name);
                }
                t.scorer.on_probe(result.ok());
            }
        }
        for report in &reports {
            for b in &report.backends {
                if let Some(t) = self.pool.get_mut(&b.id) {
                    t.scorer.on_report(b.latency_p50_ms, b.requests, b.errors);
                }
            }
        }
        let (lu, mu) = (self.cfg.scoring.lu_threshold, self.cfg.scoring.mu_threshold);
        for t in self.pool.values_mut() {
            if t.stats.has_changed().unwrap_or(false) {
                if let Some(sample) = *t.stats.borrow_and_update() {
                    t.scorer.on_stats(sample);
                }
            }
            if t.c.ready_ms.is_none() || !t.c.is_active() {
                continue;
            }
            if let Some(scores) = t.scorer.scores() {
                let category = scoring::category(scores.overall, lu, mu);
                if category != t.c.category {
                    debug!(
                        "{}: {} -> {} (score {:.1})",
                        t.c.name, t.c.category, category, scores.overall
                    );
                }
                t.c.scores = Some(scores);
                t.c.scored_ms = Some(now);
                t.c.category = category;
            }
        }
        self.scoring_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    }

    async fn scale(&mut self, tick_start: Instant, now: Millis) {
        // Measured between round starts, with half a round of slack, so that jitter in how
        // long a round's first steps take never postpones a check by a whole round.
        let slack = self.cfg.sample_period / 2;
        let due = self.last_check.is_none_or(|t| {
            tick_start.saturating_duration_since(t) + slack >= self.cfg.scaling.check_period
        });
        if !due || !self.docker_ok {
            return;
        }
        self.last_check = Some(tick_start);
        let pool: Vec<Container> = self
            .pool
            .values()
            .filter(|t| !t.stopping)
            .map(|t| t.c.clone())
            .collect();
        let decision = scaler::decide(
            &pool,
            self.desired,
            &self.cfg.scaling,
            &mut self.scaler,
            now,
        );
        match decision {
            Decision::Hold { reason } => {
                debug!("scaling: hold ({reason})");
                self.last_decision = format!("hold: {reason}");
            }
            Decision::Up {
                count,
                reason,
                details,
            } => {
                let before = self.desired;
                self.desired =
                    (self.desired.max(active(&pool)) + count).min(self.cfg.scaling.max_containers);
                self.scale_ups += 1;
                self.last_decision = format!("scale up: {reason}");
                self.log.record(
                    EventKind::ScaleUp,
                    format!("desired {before} -> {}: {reason}", self.desired),
                    details,
                );
                self.persist_desired().await;
            }
            Decision::Down {
                victims,
                reason,
                details,
            } => {
                let before = self.desired;
                self.desired = active(&pool)
                    .saturating_sub(victims.len())
                    .max(self.cfg.scaling.default_containers);
                self.scale_downs += 1;
                self.last_decision = format!("scale down: {reason}");
                self.log.record(
                    EventKind::ScaleDown,
                    format!("desired {before} -> {}: {reason}", self.desired),
                    details,
                );
                self.persist_desired().await;
                self.sundown(&victims, &reason, now).await;
            }
        }
    }

    async fn sundown(&mut self, victims: &[String], reason: &str, now: Millis) {
        for id in victims {
            let Some(t) = self.pool.get_mut(id) else {
                continue;
            };
            if t.c.category == Category::Sundown {
                continue;
            }
            t.c.category = Category::Sundown;
            t.c.sundown_ms = Some(now);
            t.c.sundown_version = None;
            let name = t.c.name.clone();
            self.log.record(
                EventKind::ContainerSundown,
                format!("{name} marked SUNDOWN ({reason}); draining"),
                serde_json::json!({ "id": id, "name": name }),
            );
        }
    }

    /// Stops SUNDOWN containers once the balancers report nothing in flight (or on timeout).
    async fn drain(&mut self, now: Millis) {
        let candidates: Vec<(String, Container)> = self
            .pool
            .values()
            .filter(|t| t.c.category == Category::Sundown && !t.stopping)
            .map(|t| (t.c.id.clone(), t.c.clone()))
            .collect();
        for (id, c) in candidates {
            // (Not yet published as SUNDOWN: `drain_status` waits, up to the drain timeout.)
            let views = self.reports.views_for(&id);
            match lifecycle::drain_status(
                &c,
                &views,
                now,
                ms(self.cfg.drain_timeout),
                ms(MIN_DRAIN),
            ) {
                DrainStatus::Waiting(why) => debug!("{}: draining ({why})", c.name),
                DrainStatus::Drained(why) => {
                    self.log.record(
                        EventKind::ContainerDrained,
                        format!("{} drained ({why}); stopping it", c.name),
                        serde_json::json!({ "id": id, "name": c.name }),
                    );
                    self.start_removal(&id, &c.name);
                }
                DrainStatus::TimedOut => {
                    let in_flight: u64 = views.iter().map(|v| v.in_flight).sum();
                    self.log.record(
                        EventKind::DrainTimeout,
                        format!(
                            "{} still had {in_flight} request(s) in flight after DRAIN_TIMEOUT; stopping it",
                            c.name
                        ),
                        serde_json::json!({ "id": id, "name": c.name, "in_flight": in_flight }),
                    );
                    self.start_removal(&id, &c.name);
                }
            }
        }
    }

    fn start_removal(&mut self, id: &str, name: &str) {
        if let Some(t) = self.pool.get_mut(id) {
            if t.stopping {
                return;
            }
            t.stopping = true;
        }
        let docker = self.docker.clone();
        let grace = self.cfg.stop_timeout;
        let (id, name) = (id.to_string(), name.to_string());
        self.removals.spawn(async move {
            let r = docker.stop_and_remove(&id, grace).await;
            (id, name, r)
        });
    }

    async fn removed(&mut self, id: &str, name: &str, result: Result<(), DockerError>) {
        match result {
            Ok(()) => {
                self.pool.remove(id);
                self.forget_record(id).await;
                self.log.record(
                    EventKind::ContainerRemoved,
                    format!("{name} stopped and removed"),
                    serde_json::json!({ "id": id, "name": name }),
                );
            }
            Err(e) => {
                // Try again on a later tick.
                warn!("stopping {name} failed, will retry: {e}");
                if let Some(t) = self.pool.get_mut(id) {
                    t.stopping = false;
                }
            }
        }
    }

    /// Builds the queue from the pool; publishes a new version when anything changed.
    fn publish(&mut self, now: Millis) {
        if !self.observed {
            return;
        }
        let items: Vec<QueueItem> = self
            .pool
            .values()
            .filter(|t| t.c.is_published())
            .map(|t| QueueItem {
                id: t.c.id.clone(),
                name: t.c.name.clone(),
                address: t.c.address.clone(),
                // Whole points: finer changes are probe noise and would publish a new
                // version every round for nothing.
                score: t.c.overall().map_or(0.0, f64::round),
                category: t.c.category,
            })
            .collect();
        let published = self.publisher.publish(items, now);
        // A SUNDOWN takes effect with the version that carries it; a container that was not
        // in the queue at all (never ready) is SUNDOWN as of the version in force.
        let version = self.publisher.version();
        if version == 0 {
            return;
        }
        // The balancers (that have reported) this version reaches: the drain also waits for
        // those among them that disconnect before it is over.
        let reporting: Vec<String> = self
            .reports
            .subscribers()
            .into_iter()
            .filter(|(_, _, last)| last.is_some())
            .map(|(name, _, _)| name)
            .collect();
        for t in self.pool.values_mut() {
            if t.c.category == Category::Sundown && t.c.sundown_version.is_none() {
                t.c.sundown_version = Some(version);
                t.c.sundown_balancers = reporting.clone();
                if published.is_none() {
                    debug!("{} SUNDOWN before it was ever published", t.c.name);
                }
            }
        }
    }

    async fn persist(&mut self) {
        for t in self.pool.values() {
            if let Err(e) = self.store.save_container(&t.c).await {
                self.redis_down(&e.to_string());
                return;
            }
        }
        let recovering = !self.redis_ok;
        if recovering {
            self.redis_ok = true;
            self.persist_desired().await;
            if !self.redis_ok {
                return;
            }
        }
        // A Redis that came back empty (restarted without persistence) lost the event log
        // too: write back what memory holds, not only what the outage recorded.
        let lost = recovering && matches!(self.store.events(1).await, Ok(list) if list.is_empty());
        match self.log.flush(&self.store, self.cfg.events_max, lost).await {
            Ok(written) if recovering => info!(
                "redis reachable again; state re-saved ({written} event(s) written{})",
                if lost {
                    ", the event log had been lost"
                } else {
                    ""
                }
            ),
            Ok(_) => {}
            // The unsaved events stay queued for the next round.
            Err(e) => self.redis_down(&e.to_string()),
        }
    }

    async fn persist_desired(&mut self) {
        if let Err(e) = self.store.set_desired(self.desired).await {
            self.redis_down(&e.to_string());
        }
    }

    async fn forget_record(&mut self, id: &str) {
        if let Err(e) = self.store.delete_container(id).await {
            self.redis_down(&e.to_string());
        }
    }

    fn docker_down(&mut self, e: &str) {
        if self.docker_ok {
            error!("docker unavailable, keeping the last queue: {e}");
            self.docker_ok = false;
        }
    }

    fn redis_down(&mut self, e: &str) {
        if self.redis_ok {
            error!("redis unavailable, state kept in memory and re-saved on recovery: {e}");
            self.redis_ok = false;
        }
    }

    fn snapshot(&mut self, now: Millis) {
        let containers: Vec<ContainerView> = self
            .pool
            .values()
            .map(|t| ContainerView {
                container: t.c.clone(),
                in_flight: self.reports.in_flight(&t.c.id),
            })
            .collect();
        let active = self.pool.values().filter(|t| t.c.is_active()).count();
        self.snapshots.send_replace(Arc::new(Snapshot {
            at_ms: now,
            desired: self.desired,
            active,
            containers,
            queue_version: self.publisher.version(),
            docker_ok: self.docker_ok,
            redis_ok: self.redis_ok,
            image_ready: self.image_ready,
            last_decision: self.last_decision.clone(),
            recent_events: self.log.recent().cloned().collect(),
            scoring_us: self.scoring_us,
            scale_ups: self.scale_ups,
            scale_downs: self.scale_downs,
            replaced: self.replaced,
        }));
    }
}

fn active(pool: &[Container]) -> usize {
    pool.iter().filter(|c| c.is_active()).count()
}

/// Longest wait between two attempts to re-open a container's stats stream: after a Docker
/// outage the streams resume at most this long after the engine is back (a longer backoff
/// left scores on stale CPU figures for up to 10 s after recovery).
const STATS_RETRY_MAX: Duration = Duration::from_secs(2);

/// One long-lived Docker stats stream per container, re-opened after errors, shared through
/// a `watch` channel (the loop reads the latest sample; nothing re-samples per reader).
async fn stats_feed(docker: Docker, id: String, tx: watch::Sender<Option<StatsSample>>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut stream = Box::pin(docker.stats_stream(&id));
        while let Some(item) = stream.next().await {
            match item {
                Ok(sample) => {
                    backoff = Duration::from_millis(500);
                    if tx.send(Some(sample)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!("stats stream of {id} ended: {e}");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(STATS_RETRY_MAX);
    }
}

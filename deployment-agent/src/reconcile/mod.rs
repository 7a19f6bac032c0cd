//! The control loop, the agent's one I/O loop. Every `SAMPLE_PERIOD` (and at once after a
//! `POST /scale`) one round runs the pipeline:
//!
//! 1. **observe** ([`observe`]): Docker's list of our containers, probes, the balancers'
//!    reports and drain views, a pending `POST /scale` — gathered once;
//! 2. **score**: the scorers are fed from the observation (no I/O);
//! 3. **decide** ([`decide`]): a pure function from the pool's state and the observation
//!    to a [`decide::Plan`] (actions and events), built from [`crate::scaler`] and
//!    [`crate::lifecycle`];
//! 4. **act** ([`act`]): the plan applied to the pool; creations concurrently, stops in the
//!    background;
//! 5. **publish** ([`publish`]): the queue for the balancers, when it changed;
//! 6. **persist**: what changed, to Redis, in one atomic pipeline, and the new events
//!    ([`events`]);
//! 7. a snapshot for the HTTP API.
//!
//! The loop owns the pool; nothing else mutates it. Docker or Redis being unavailable never
//! stops it: the last queue stays published, failures are logged once per outage, and the
//! loop retries on its next round. While Redis has not answered since the start, a round only
//! observes, adopts, scores and publishes (see [`Controller::without_redis`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use log::{debug, error, info, warn};
use protocol::backoff::Backoff;
use protocol::QueueItem;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::docker::{Docker, DockerError};
use crate::host::HostLoad;
use crate::model::{now_ms, Category, Container, Event, EventKind, Millis, StatsSample};
use crate::push::{QueueFrame, Reports};
use crate::scaler::ScalerState;
use crate::scoring::ContainerScorer;
use crate::store::Store;
use crate::traffic::Traffic;

pub mod act;
pub mod decide;
pub mod events;
pub mod observe;
pub mod publish;

use decide::{Action, Member, PoolState};
use events::EventLog;
use publish::Publisher;

/// A request from the HTTP API to the loop.
#[derive(Debug)]
pub enum Command {
    /// `POST /scale`: set the desired pool size (clamped to the bounds by the loop).
    SetDesired {
        desired: usize,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// `POST /sundown`: drain and stop one container (by name or id), one fewer desired.
    Sundown {
        container: String,
        reply: tokio::sync::oneshot::Sender<Result<Sundowned, SundownRefused>>,
    },
}

/// What `POST /sundown` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sundowned {
    pub id: String,
    pub name: String,
    /// The desired size from now on.
    pub desired: usize,
}

/// Why `POST /sundown` did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SundownRefused {
    #[error("no container named {0:?}")]
    NotFound(String),
    #[error("{0} is already SUNDOWN")]
    AlreadySundown(String),
}

/// One container as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub container: Container,
    /// Requests in flight to it, summed over the balancers' latest reports.
    pub in_flight: u64,
    /// Its traffic over the last `PANIC_WINDOW`, from every balancer's reports; `None`
    /// when no balancer reported in that time.
    pub traffic: Option<crate::traffic::Observed>,
    /// Its selection weight in the queue in force (as the balancers compute it from the
    /// category and score); `None` while it is not published.
    pub weight: Option<f64>,
}

#[cfg(test)]
impl ContainerView {
    /// A view for unit tests: [`Container::fixture`], no traffic, unpublished.
    pub fn fixture(name: &str, category: Category, overall: Option<f64>) -> ContainerView {
        ContainerView {
            container: Container::fixture(name, category, overall),
            in_flight: 0,
            traffic: None,
            weight: None,
        }
    }
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
    /// The host's CPUs are saturated: scale-ups are held (see [`crate::scaler`]).
    pub host_saturated: bool,
    /// The host's CPU busy fraction over the panic window, when known.
    pub host_busy: Option<f64>,
    /// What the scaler saw this round (both windows).
    #[serde(skip)]
    pub scaling: crate::scaler::Observed,
    /// Task queue depth the balancers last reported.
    pub task_queue_depth: Option<f64>,
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
    /// The latest `POST /scale`, an input of the next round.
    pending_desired: Option<usize>,
    /// Containers `POST /sundown` asked for (ids), inputs of the next round.
    pending_sundown: Vec<String>,
    /// Records as last written to Redis (persist writes only what differs).
    saved: HashMap<String, Container>,
    saved_desired: Option<usize>,
    last_decision: String,
    last_check_ms: Option<Millis>,
    scoring_us: u64,
    scale_ups: u64,
    scale_downs: u64,
    replaced: u64,
    /// Balancers' reports over the scaler's windows.
    traffic: Traffic,
    /// The host's CPU use (read when the engine is local).
    host: HostLoad,
    host_local: bool,
    /// What the scaler saw in the last round.
    scaling: crate::scaler::Observed,
    /// CPU seconds one request costs (see [`crate::scaler::CostMeter`]).
    cost_meter: crate::scaler::CostMeter,
    /// Each serving container's cumulative CPU counter at the previous round.
    cpu_ns: HashMap<String, u64>,
}

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        docker: Docker,
        store: Store,
        reports: Arc<Reports>,
        out: Outputs,
    ) -> Controller {
        let desired = cfg.scaling.min_containers;
        let keep_ms = crate::config::ms(cfg.scaling.stable_window.max(cfg.scaling.panic_window));
        // `/proc/stat` shows this machine: the app's CPUs only when the engine is local.
        let host_local = cfg.docker_host.starts_with("unix://");
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
            pending_desired: None,
            pending_sundown: Vec::new(),
            saved: HashMap::new(),
            saved_desired: None,
            last_decision: String::from("none yet"),
            last_check_ms: None,
            scoring_us: 0,
            scale_ups: 0,
            scale_downs: 0,
            replaced: 0,
            traffic: Traffic::new(keep_ms),
            host: HostLoad::new(keep_ms),
            host_local,
            scaling: crate::scaler::Observed::default(),
            cost_meter: crate::scaler::CostMeter::new(keep_ms),
            cpu_ns: HashMap::new(),
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
                        self.removed(&id, &name, result);
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
                // An input of the round run right now (the same clamp `decide` applies).
                let s = &self.cfg.scaling;
                let _ = reply.send(desired.clamp(s.min_containers, s.max_containers));
                self.pending_desired = Some(desired);
                self.tick().await;
            }
            Command::Sundown { container, reply } => {
                let found = self
                    .pool
                    .values()
                    .find(|t| t.c.name == container || t.c.id == container)
                    .map(|t| (t.c.clone(), t.stopping));
                let answer = match found {
                    None => Err(SundownRefused::NotFound(container)),
                    Some((c, stopping))
                        if stopping
                            || c.category == Category::Sundown
                            || self.pending_sundown.contains(&c.id) =>
                    {
                        Err(SundownRefused::AlreadySundown(c.name))
                    }
                    Some((c, _)) => {
                        let min = self.cfg.scaling.min_containers;
                        let desired = self
                            .pending_desired
                            .unwrap_or(self.desired)
                            .saturating_sub(1 + self.pending_sundown.len())
                            .max(min);
                        self.pending_sundown.push(c.id.clone());
                        Ok(Sundowned {
                            id: c.id,
                            name: c.name,
                            desired,
                        })
                    }
                };
                let ok = answer.is_ok();
                let _ = reply.send(answer);
                if ok {
                    self.tick().await;
                }
            }
        }
    }

    /// One observe → score → decide → act → publish → persist round.
    async fn tick(&mut self) {
        let now = now_ms();
        if !self.restored && !self.restore().await {
            self.without_redis(now).await;
            return;
        }
        self.ensure_image().await;
        let (obs, inputs) = self.observe(now).await;
        self.score(&inputs, now);
        let plan = decide::decide(&self.state(), &obs, &self.cfg, obs.listed.is_some());
        self.act(plan, now).await;
        self.publish(now);
        self.persist().await;
        self.snapshot(now);
    }

    /// The state `decide` starts from.
    fn state(&self) -> PoolState {
        PoolState {
            pool: self
                .pool
                .values()
                .map(|t| Member {
                    c: t.c.clone(),
                    stopping: t.stopping,
                })
                .collect(),
            desired: self.desired,
            scaler: self.scaler.clone(),
            last_check_ms: self.last_check_ms,
            image_ready: self.image_ready,
        }
    }

    /// A round while Redis has not answered since the start: the saved state (desired size,
    /// records, SUNDOWN decisions) is unknown, so nothing is created, removed or scaled. But
    /// the app keeps being served: the labelled containers Docker lists are adopted, probed,
    /// scored and published, so balancers never lose backends that are running.
    async fn without_redis(&mut self, now: Millis) {
        let (mut obs, inputs) = self.observe(now).await;
        // Kept for the first round with the saved state.
        self.pending_desired = obs.set_desired.take();
        self.pending_sundown = std::mem::take(&mut obs.sundown);
        if obs.listed.is_none() {
            return;
        }
        self.score(&inputs, now);
        let plan = decide::decide(&self.state(), &obs, &self.cfg, false);
        // Only what destroys nothing: adopt, addresses, readiness. The desired size, the
        // scaler and every other action wait for the saved state.
        let keep = |a: &Action| {
            matches!(
                a,
                Action::Adopt(_) | Action::Address { .. } | Action::Ready { .. }
            )
        };
        let safe = decide::Plan {
            desired: self.desired,
            scaler: self.scaler.clone(),
            last_check_ms: self.last_check_ms,
            decision: None,
            actions: plan.actions.into_iter().filter(keep).collect(),
            events: plan
                .events
                .into_iter()
                .filter(|(k, ..)| {
                    matches!(k, EventKind::ContainerAdopted | EventKind::ContainerReady)
                })
                .collect(),
        };
        self.act(safe, now).await;
        self.publish(now);
        self.snapshot(now);
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
            .unwrap_or(s.min_containers)
            .clamp(s.min_containers, s.max_containers);
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
        // The round's persist step saves the starting value (the minimum `DEFAULT_CONTAINER`,
        // or a saved one clamped to new bounds) when it differs, so Redis holds the size the
        // loop works with.
        for c in records {
            self.saved.insert(c.id.clone(), c.clone());
            self.track(c);
        }
        self.saved_desired = desired;
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
                score: queue_score(&t.c),
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
        // The weights the balancers derive from the queue this round published.
        let published: Vec<&Tracked> = self.pool.values().filter(|t| t.c.is_published()).collect();
        let pairs: Vec<(Category, f64)> = published
            .iter()
            .map(|t| (t.c.category, queue_score(&t.c)))
            .collect();
        let weights: HashMap<&str, f64> = published
            .iter()
            .map(|t| t.c.id.as_str())
            .zip(protocol::weights::weights(&pairs))
            .collect();
        let containers: Vec<ContainerView> = self
            .pool
            .values()
            .map(|t| ContainerView {
                weight: weights.get(t.c.id.as_str()).copied(),
                container: t.c.clone(),
                in_flight: self.reports.in_flight(&t.c.id),
                traffic: self.traffic.container(
                    &t.c.id,
                    now,
                    crate::config::ms(self.cfg.scaling.panic_window),
                    0,
                ),
            })
            .collect();
        let depth = self
            .traffic
            .pool(now, crate::config::ms(self.cfg.scaling.panic_window), 0)
            .task_queue_depth;
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
            host_saturated: self.scaler.host_saturated,
            host_busy: self.scaling.host_busy,
            scaling: self.scaling,
            task_queue_depth: depth,
        }));
    }
}

/// A container's score as the queue carries it. Whole points: finer changes are probe
/// noise and would publish a new version every round for nothing.
fn queue_score(c: &Container) -> f64 {
    c.overall().map_or(0.0, f64::round)
}

/// First wait before re-opening a container's stats stream; doubles per failed attempt.
const STATS_RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to re-open a container's stats stream: after a Docker
/// outage the streams resume at most this long after the engine is back (a longer backoff
/// left scores on stale CPU figures for up to 10 s after recovery).
const STATS_RETRY_MAX: Duration = Duration::from_secs(2);

/// One long-lived Docker stats stream per container, re-opened after errors, shared through
/// a `watch` channel (the loop reads the latest sample; nothing re-samples per reader). The
/// waits between attempts are jittered so the streams of a whole pool do not all re-open at
/// the same instant after an outage.
async fn stats_feed(docker: Docker, id: String, tx: watch::Sender<Option<StatsSample>>) {
    let mut backoff = Backoff::new(STATS_RETRY_BASE, STATS_RETRY_MAX);
    loop {
        let mut stream = Box::pin(docker.stats_stream(&id));
        while let Some(item) = stream.next().await {
            match item {
                Ok(sample) => {
                    backoff.reset();
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
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

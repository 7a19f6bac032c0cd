//! Docker engine outage mid-run: the agent talks to the engine through a unix-socket proxy
//! the test can cut and restore. While it is cut the agent must keep serving the last queue
//! (HTTP and WebSocket), report `docker: false`, leave the pool alone; once restored it must
//! recover by itself: `docker: true`, stats streams flowing again, no duplicate or replaced
//! container, and self-healing working (a killed container is replaced).
//!
//! Run: `cargo test -p deployment-agent --test outage` (needs Docker on a unix socket,
//! `redis-server` and `rustybalancer/playground:latest`; under CI=true a missing one fails).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::{
    event_list, events, get_json, get_queue, stats, wait_scored_pool, ws_connect, Agent, AgentEnv,
    Cleanup,
};
use common::{eventually, http_get, labelled_containers, RedisServer};
use deployment_agent::model::now_ms;
use futures_util::StreamExt;
use protocol::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const POLL: Duration = Duration::from_millis(250);
/// How long the engine stays unreachable.
const OUTAGE: Duration = Duration::from_secs(8);
/// Stats streams must carry samples again this soon after the engine is back (the streams
/// retry at most every 2 s, and a CPU figure needs two samples, 1 s apart).
const STATS_RESUME: Duration = Duration::from_secs(7);
/// An idle playground scores ~99.8 on CPU.
const IDLE_CPU_SCORE: f64 = 90.0;
/// A burning playground (CONTAINER_CPUS=0.5) scores ~0 on CPU, still ~65-80 on a 2-core host
/// saturated by something else: a drop by this much shows the burn.
const BURN_VISIBLE: f64 = 5.0;

/// How the proxy treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwards every connection to the engine.
    Up,
    /// Live connections are dropped; new ones are accepted and closed at once.
    Closing,
    /// Live connections are dropped; nothing listens on the socket (connect: ECONNREFUSED),
    /// like an engine being restarted.
    Refusing,
}

#[derive(Debug, Default)]
struct ProxyCounts {
    forwarded: AtomicU64,
    closed: AtomicU64,
}

/// A unix-socket proxy in front of the Docker engine, with a switch.
struct DockerProxy {
    dir: PathBuf,
    path: PathBuf,
    upstream: PathBuf,
    link: watch::Sender<Link>,
    acceptor: Option<JoinHandle<()>>,
    counts: Arc<ProxyCounts>,
}

impl DockerProxy {
    /// The engine's socket (`$DOCKER_HOST` when it is `unix://…`, else the default);
    /// `None` (skip) when the engine is not on a unix socket, outside CI.
    fn upstream() -> Option<PathBuf> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        let path = if host.is_empty() {
            PathBuf::from("/var/run/docker.sock")
        } else if let Some(p) = host.strip_prefix("unix://") {
            PathBuf::from(p)
        } else if host.starts_with('/') {
            PathBuf::from(host)
        } else {
            return common::missing(&format!(
                "DOCKER_HOST={host} is not a unix socket; this test proxies one"
            ));
        };
        if path.exists() {
            Some(path)
        } else {
            common::missing(&format!(
                "the Docker socket {} does not exist",
                path.display()
            ))
        }
    }

    fn start(upstream: PathBuf) -> DockerProxy {
        let dir = std::env::temp_dir().join(format!("{}-dockerproxy", common::unique_app()));
        std::fs::create_dir_all(&dir).expect("create proxy temp dir");
        let (link, _) = watch::channel(Link::Up);
        let mut proxy = DockerProxy {
            path: dir.join("docker.sock"),
            dir,
            upstream,
            link,
            acceptor: None,
            counts: Arc::new(ProxyCounts::default()),
        };
        proxy.listen();
        proxy
    }

    /// `unix://<socket>` for DOCKER_HOST.
    fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", self.path.display()));
        let (link, upstream, counts) = (
            self.link.clone(),
            self.upstream.clone(),
            self.counts.clone(),
        );
        self.acceptor = Some(tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if *link.borrow() != Link::Up {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
                let mut cut = link.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut engine) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = cut.wait_for(|l| *l != Link::Up) => {}
                    }
                    // Both ends are dropped here: the agent sees its connection die.
                });
            }
        }));
    }

    /// Drops live connections; new ones are accepted and closed.
    fn cut(&mut self) {
        self.link.send_replace(Link::Closing);
    }

    /// Drops live connections and stops listening (the socket file stays: ECONNREFUSED).
    fn refuse(&mut self) {
        self.link.send_replace(Link::Refusing);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
    }

    /// Forwards again (listening again if it had stopped).
    fn restore(&mut self) {
        if self.acceptor.is_none() {
            self.listen();
        }
        self.link.send_replace(Link::Up);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Closing);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One test's world. Field order is drop order: containers and network first, then Redis,
/// then the proxy.
struct World {
    _cleanup: Cleanup,
    _redis: RedisServer,
    proxy: DockerProxy,
    env: AgentEnv,
}

impl World {
    /// `None` (skip) when Docker, the image or redis-server is missing outside CI.
    async fn new() -> Option<World> {
        common::init_logging();
        let (_, image) = common::docker_and_image().await?;
        let upstream = DockerProxy::upstream()?;
        let redis = RedisServer::start()?;
        let app = common::unique_app();
        let cleanup = Cleanup::new(&app);
        let proxy = DockerProxy::start(upstream);
        let env = AgentEnv::new(&app, &image, cleanup.network(), redis.port())
            .set("DOCKER_HOST", proxy.docker_host());
        Some(World {
            _cleanup: cleanup,
            _redis: redis,
            proxy,
            env,
        })
    }
}

fn row_of<'a>(rows: &'a [serde_json::Value], id: &str) -> Result<&'a serde_json::Value, String> {
    rows.iter()
        .find(|r| r["id"] == id)
        .ok_or_else(|| format!("{id} is not in /stats: {rows:?}"))
}

/// `(cpu, memory, network)` sub-scores per container: what only stats samples change.
fn stats_scores(
    rows: &[serde_json::Value],
    pool: &BTreeSet<String>,
) -> BTreeMap<String, (f64, f64, f64)> {
    pool.iter()
        .map(|id| {
            let r = row_of(rows, id).unwrap();
            let score = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
            (
                id.clone(),
                (
                    score("cpu_score"),
                    score("memory_score"),
                    score("network_score"),
                ),
            )
        })
        .collect()
}

fn queue_ids(q: &protocol::Queue) -> BTreeSet<String> {
    q.items.iter().map(|i| i.id.clone()).collect()
}

/// Keeps `GET /cpu` requests running against each address (one at a time per address)
/// until dropped.
struct Burner {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Burner {
    fn start(addresses: &[String]) -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = addresses
            .iter()
            .map(|addr| {
                let (addr, stop) = (addr.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if http_get(&addr, "/cpu?ms=400").await.is_err() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        Burner { stop, tasks }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Queue frames a WebSocket subscriber received: `(when, version, ids)`.
type Frames = Arc<Mutex<Vec<(Instant, u64, BTreeSet<String>)>>>;

fn frames_between(frames: &Frames, from: Instant, to: Instant) -> Vec<(u64, BTreeSet<String>)> {
    frames
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _, _)| *at >= from && *at <= to)
        .map(|(_, v, ids)| (*v, ids.clone()))
        .collect()
}

/// Event kinds that mean the agent acted on a container's life.
const LIFECYCLE: [&str; 5] = [
    "container_started",
    "container_adopted",
    "container_vanished",
    "container_replaced",
    "container_removed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_outage_keeps_the_queue_and_recovers_by_itself() {
    let Some(mut w) = World::new().await else {
        return;
    };
    // MAX_CONTAINERS = DEFAULT_CONTAINER: the CPU burn below cannot scale the pool, so any
    // third container could only come from a reconcile gone wrong.
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 2)
        .set("MAX_CONTAINERS", 2)
        .set("CONTAINER_CPUS", 0.5);
    let app = env.app.clone();
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let started = Instant::now();

    // 1. A scored pool of 2, reached through the proxy.
    let rows = wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    eprintln!("pool of 2 scored after {:?}", started.elapsed());
    let pool: BTreeSet<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let addresses: Vec<String> = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_owned())
        .collect();
    for r in &rows {
        let cpu = r["cpu_score"].as_f64().unwrap();
        assert!(cpu > IDLE_CPU_SCORE, "idle before the outage: {r}");
    }
    let health = get_json(&http, "/health").await.expect("/health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["docker"], true, "{health}");
    let before = get_queue(&http).await.expect("/queue");
    assert_eq!(queue_ids(&before), pool);
    assert!(
        w.proxy.counts.forwarded.load(Ordering::Relaxed) > 0,
        "the agent must talk to Docker through the proxy"
    );
    let lifecycle_before = event_list(&events(&http).await.expect("/events"))
        .into_iter()
        .filter(|(_, kind, _)| LIFECYCLE.contains(&kind.as_str()))
        .count();
    assert_eq!(lifecycle_before, 2, "two container_started so far");

    // A subscriber recording every frame.
    let mut ws = ws_connect(&agent.ws(), None).await.expect("subscribe");
    let frames: Frames = Arc::default();
    let reader = tokio::spawn({
        let frames = frames.clone();
        async move {
            while let Some(Ok(frame)) = ws.next().await {
                if let WsMessage::Text(text) = frame {
                    if let Ok(Message::Queue(q)) = Message::decode(text.as_str()) {
                        let ids = queue_ids(&q);
                        frames
                            .lock()
                            .unwrap()
                            .push((Instant::now(), q.version, ids));
                    }
                }
            }
        }
    });

    // 2. Cut: live connections (stats streams included) die, new ones are closed.
    w.proxy.cut();
    let cut_at = Instant::now();
    let cut_ms = now_ms();
    let health = eventually(
        "/health reports docker down",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let h = get_json(&http, "/health").await?;
            if h["docker"] == false && h["status"] == "degraded" {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        },
    )
    .await;
    let detected = cut_at.elapsed();
    eprintln!("OUTAGE: docker=false on /health {detected:?} after the cut: {health}");
    assert_eq!(health["redis"], true, "{health}");
    assert_eq!(health["active"], 2, "{health}");
    assert_eq!(health["desired"], 2, "{health}");
    // The stats-derived sub-scores once the last sample sent before the cut has been read
    // (one tick): from now on, until the engine is back, they cannot change.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let frozen = stats_scores(&stats(&http).await.expect("/stats"), &pool);

    // 3. During the outage: the same queue on /queue and over the WebSocket, the app
    // reachable, the stats frozen. First half: connections accepted and closed, the pool idle.
    // Second half: connections refused, both containers burning CPU (which the agent cannot
    // see until the stats streams resume).
    let mut burner = None;
    let mut idle_versions = BTreeSet::new();
    while cut_at.elapsed() < OUTAGE {
        if burner.is_none() && cut_at.elapsed() >= OUTAGE / 2 {
            w.proxy.refuse();
            burner = Some((Instant::now(), Burner::start(&addresses)));
        }
        let q = get_queue(&http).await.expect("/queue during the outage");
        assert_eq!(queue_ids(&q), pool, "/queue during the outage: {q:?}");
        for (item, old) in q.items.iter().zip(&before.items) {
            assert_eq!(item.address, old.address, "{q:?} vs {before:?}");
        }
        if burner.is_none() {
            idle_versions.insert(q.version);
        }
        let h = get_json(&http, "/health").await.expect("/health");
        assert_eq!(h["docker"], false, "still down: {h}");
        for addr in &addresses {
            let (status, body) = http_get(addr, "/health")
                .await
                .unwrap_or_else(|e| panic!("{addr} unreachable during the outage: {e}"));
            assert_eq!(status, 200, "{addr}/health: {body}");
        }
        let rows = stats(&http).await.expect("/stats");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            stats_scores(&rows, &pool),
            frozen,
            "no stats can arrive while the engine is cut, yet the scores moved: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let outage_end = Instant::now();
    let during = frames_between(&frames, cut_at + Duration::from_millis(500), outage_end);
    assert!(
        during.len() >= 4,
        "keep-alive frames every QUEUE_KEEPALIVE (1 s) during the outage, got {during:?}"
    );
    assert!(
        during.iter().all(|(_, ids)| *ids == pool),
        "frames during the outage list the pool: {during:?}"
    );
    let versions: BTreeSet<u64> = during.iter().map(|(v, _)| *v).collect();
    let closed = w.proxy.counts.closed.load(Ordering::Relaxed);
    eprintln!(
        "during the outage: {} ws frames (versions {versions:?}; before {}), {closed} engine \
         connection(s) accepted and closed, refused for the last {:?}",
        during.len(),
        before.version,
        outage_end - burner.as_ref().expect("refused").0
    );
    eprintln!("queue versions on /queue while idle and cut: {idle_versions:?}");
    assert!(closed > 0, "the agent kept trying the engine");

    // 4. Restore: the agent notices by itself.
    w.proxy.restore();
    let restored = Instant::now();
    let restored_ms = now_ms();
    let health = eventually(
        "/health reports docker up again",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let h = get_json(&http, "/health").await?;
            if h["docker"] == true && h["status"] == "ok" {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        },
    )
    .await;
    eprintln!(
        "RECOVERY: docker=true {:?} after the restore: {health}",
        restored.elapsed()
    );

    // The stats streams resume: both burning containers' CPU scores drop (new samples), and
    // they keep being scored.
    let resumed = eventually(
        "stats streams resumed (CPU scores show the burn)",
        STATS_RESUME,
        POLL,
        || async {
            let rows = stats(&http).await?;
            let mut out = Vec::new();
            for id in &pool {
                let r = row_of(&rows, id)?;
                let cpu = r["cpu_score"].as_f64().unwrap_or(100.0);
                let scored = r["scored_ms"].as_u64().unwrap_or(0);
                if cpu > frozen[id].0 - BURN_VISIBLE || scored <= restored_ms {
                    return Err(format!(
                        "{id}: cpu_score {cpu}, scored_ms {scored}: {rows:?}"
                    ));
                }
                out.push(format!("{} cpu_score {cpu:.1}", r["name"]));
            }
            Ok(out)
        },
    )
    .await;
    eprintln!(
        "STATS: both streams resumed {:?} after the restore: {resumed:?}",
        restored.elapsed()
    );
    drop(burner);

    // Nothing was created, replaced or forgotten because of the outage.
    let list = event_list(&events(&http).await.expect("/events"));
    let lifecycle: Vec<_> = list
        .iter()
        .filter(|(_, kind, _)| LIFECYCLE.contains(&kind.as_str()))
        .collect();
    assert_eq!(
        lifecycle.len(),
        2,
        "only the two initial container_started events: {list:?}"
    );
    assert!(lifecycle.iter().all(|(at, _, _)| *at < cut_ms), "{list:?}");
    let listed: BTreeSet<String> = labelled_containers(&app).into_iter().collect();
    assert_eq!(listed, pool, "docker holds exactly the original pool");
    let q = get_queue(&http).await.expect("/queue");
    assert_eq!(queue_ids(&q), pool, "{q:?}");
    let metrics = http_get(&http, "/metrics").await.expect("/metrics").1;
    assert!(metrics.contains("agent_docker_up 1"), "{metrics}");
    assert!(
        metrics.contains("agent_containers_replaced_total 0"),
        "{metrics}"
    );
    let after_restore = frames_between(&frames, restored, Instant::now());
    assert!(
        !after_restore.is_empty() && after_restore.iter().all(|(_, ids)| *ids == pool),
        "{after_restore:?}"
    );

    // 5. Self-healing works again: a killed container is replaced.
    let victim = pool.iter().next().unwrap().clone();
    let survivor = pool.iter().nth(1).unwrap().clone();
    common::docker_cli(&["kill", &victim]).expect("docker kill");
    let killed = Instant::now();
    let healed = eventually(
        "the killed container replaced",
        Duration::from_secs(30),
        POLL,
        || async {
            let q = get_queue(&http).await?;
            let ids = queue_ids(&q);
            let listed: BTreeSet<String> = labelled_containers(&app).into_iter().collect();
            if ids.len() == 2 && !ids.contains(&victim) && ids.contains(&survivor) && listed == ids
            {
                Ok(ids)
            } else {
                Err(format!("queue {ids:?}, docker {listed:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "HEAL: replacement published and the dead one removed {:?} after docker kill: {healed:?}",
        killed.elapsed()
    );
    let list = event_list(&events(&http).await.expect("/events"));
    assert!(
        list.iter()
            .any(|(_, kind, id)| kind == "container_replaced" && *id == victim),
        "{list:?}"
    );
    assert_eq!(
        list.iter()
            .filter(|(_, kind, _)| kind == "container_started")
            .count(),
        3,
        "{list:?}"
    );
    eprintln!("total {:?}", started.elapsed());

    reader.abort();
    agent.stop().await;
}

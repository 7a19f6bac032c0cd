//! End-to-end scenarios: the whole agent against the real Docker engine (playground image)
//! and a real `redis-server`. Each test has its own APP_IDENTIFIER, network and Redis, and
//! removes its containers by label even when it fails.
//!
//! Run: `cargo test -p deployment-agent --test agent -- --test-threads=2` (needs Docker,
//! `redis-server` and `rustybalancer/playground:latest`; under CI=true a missing one fails).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agent::{
    active_ready, event_list, events, get_json, get_queue, next_queue, post_scale, stats,
    wait_scored_pool, ws_connect, Agent, AgentEnv, AgentProcess, Cleanup, Traffic,
};
use common::{eventually, http_get, http_request, labelled_containers, RedisServer};
use deployment_agent::model::now_ms;
use deployment_agent::store::Store;
use futures_util::{SinkExt, StreamExt};
use protocol::{Category, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const POLL: Duration = Duration::from_millis(250);

/// One test's world. Field order is drop order: containers and network first, then Redis.
struct World {
    _cleanup: Cleanup,
    redis: RedisServer,
    env: AgentEnv,
}

impl World {
    /// `None` (skip) when Docker, the image or redis-server is missing outside CI.
    async fn new() -> Option<World> {
        common::init_logging();
        let (_, image) = common::docker_and_image().await?;
        let redis = RedisServer::start()?;
        let app = common::unique_app();
        let cleanup = Cleanup::new(&app);
        let env = AgentEnv::new(&app, &image, cleanup.network(), redis.port());
        Some(World {
            _cleanup: cleanup,
            redis,
            env,
        })
    }

    fn app(&self) -> &str {
        &self.env.app
    }

    async fn store(&self) -> Store {
        Store::connect(&self.redis.url(), self.app())
            .await
            .expect("store")
    }
}

fn ids(rows: &[&serde_json::Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

fn queue_ids(q: &protocol::Queue) -> BTreeSet<String> {
    q.items.iter().map(|i| i.id.clone()).collect()
}

/// `(ids, desired)` saved in Redis.
/// Waits until Redis holds exactly `pool` as container records and `desired` as the count.
async fn wait_saved(store: &Store, pool: &BTreeSet<String>, desired: usize) {
    eventually(
        "state saved in redis",
        Duration::from_secs(10),
        POLL,
        || async {
            match saved(store).await? {
                (saved_ids, Some(d)) if saved_ids == *pool && d == desired => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn saved(store: &Store) -> Result<(BTreeSet<String>, Option<usize>), String> {
    let records = store.load_containers().await.map_err(|e| e.to_string())?;
    let desired = store.desired().await.map_err(|e| e.to_string())?;
    Ok((records.into_iter().map(|c| c.id).collect(), desired))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reaches_default_size_and_is_published_everywhere() {
    let Some(w) = World::new().await else { return };
    let env = w.env.clone().set("DEFAULT_CONTAINER", 2);
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let started = Instant::now();

    // Two containers, ready, scored LU with all sub-scores.
    wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    let rows = eventually(
        "both containers LU",
        Duration::from_secs(30),
        POLL,
        || async {
            let rows = stats(&http).await?;
            if rows.len() == 2 && rows.iter().all(|r| r["utilization_category"] == "LU") {
                Ok(rows)
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "pool of 2 scored LU after {:?}: {}",
        started.elapsed(),
        rows.iter()
            .map(|r| format!("{} overall {}", r["name"], r["overall_score"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let prefix = format!("{}-app-", env.app.to_ascii_lowercase());
    for r in &rows {
        let address = r["address"].as_str().expect("address");
        assert!(address.ends_with(":5000"), "{r}");
        assert!(r["name"].as_str().unwrap().starts_with(&prefix), "{r}");
        for k in [
            "cpu_score",
            "memory_score",
            "network_score",
            "availability_score",
        ] {
            let v = r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
            assert!((0.0..=100.0).contains(&v), "{k} = {v}: {r}");
        }
        let (status, body) = http_get(address, "/health").await.expect("GET /health");
        assert_eq!(status, 200, "{address}/health: {body}");
    }
    let pool: BTreeSet<String> = ids(&rows.iter().collect::<Vec<_>>());

    // The queue, over HTTP and over the WebSocket.
    let queue = get_queue(&http).await.expect("/queue");
    assert_eq!(queue_ids(&queue), pool, "{queue:?}");
    assert!(queue.items.iter().all(|i| i.category == Category::Low));
    let mut ws = ws_connect(&agent.ws(), None).await.expect("subscribe");
    let first = next_queue(&mut ws, Duration::from_secs(5))
        .await
        .expect("first frame");
    assert!(first.version >= queue.version, "{first:?} vs {queue:?}");
    assert_eq!(queue_ids(&first), pool);
    for item in &first.items {
        let row = rows.iter().find(|r| r["id"] == item.id.as_str()).unwrap();
        assert_eq!(item.address, row["address"].as_str().unwrap());
        assert_eq!(item.name, row["name"].as_str().unwrap());
    }

    // Redis holds the container hashes and the desired size.
    let store = w.store().await;
    let (saved_ids, desired) =
        eventually("state saved in redis", Duration::from_secs(5), POLL, || {
            saved(&store)
        })
        .await;
    assert_eq!(saved_ids, pool);
    assert_eq!(desired, Some(2));
    for c in store.load_containers().await.expect("load") {
        assert!(c.ready_ms.is_some() && c.scores.is_some(), "{c:?}");
    }

    // Docker, /health, /metrics, /events agree.
    assert_eq!(
        labelled_containers(&env.app)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        pool
    );
    let health = get_json(&http, "/health").await.expect("/health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["desired"], 2, "{health}");
    assert_eq!(health["active"], 2, "{health}");
    assert_eq!(health["balancers"], 1, "{health}");
    let (status, metrics) = http_get(&http, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("agent_active_containers 2"), "{metrics}");
    let started_events = event_list(&events(&http).await.expect("/events"))
        .into_iter()
        .filter(|(_, kind, _)| kind == "container_started")
        .count();
    assert_eq!(started_events, 2);

    // Stopping the agent leaves the app running (a restart adopts it).
    drop(ws);
    agent.stop().await;
    assert_eq!(labelled_containers(&env.app).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_container_is_replaced() {
    let Some(w) = World::new().await else { return };
    let env = w.env.clone().set("DEFAULT_CONTAINER", 2);
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let rows = wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    let victim = rows[0]["id"].as_str().unwrap().to_owned();
    let survivor = rows[1]["id"].as_str().unwrap().to_owned();

    common::docker_cli(&["kill", &victim]).expect("docker kill");
    let killed = Instant::now();
    let pool = eventually(
        "a replacement in the queue",
        Duration::from_secs(60),
        POLL,
        || async {
            let rows = stats(&http).await?;
            let ready = ids(&active_ready(&rows));
            let queued = queue_ids(&get_queue(&http).await?);
            if ready.len() == 2 && !ready.contains(&victim) && queued == ready {
                Ok(ready)
            } else {
                Err(format!("ready {ready:?}, queued {queued:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "replacement published {:?} after docker kill",
        killed.elapsed()
    );
    assert!(pool.contains(&survivor), "the survivor stays: {pool:?}");

    let list = event_list(&events(&http).await.expect("/events"));
    let replaced = list
        .iter()
        .filter(|(_, kind, id)| {
            id == &victim && (kind == "container_replaced" || kind == "container_vanished")
        })
        .count();
    assert_eq!(
        replaced, 1,
        "one replaced/vanished event for {victim}: {list:?}"
    );
    assert!(
        !list.iter().any(|(_, kind, _)| kind == "container_adopted"),
        "{list:?}"
    );
    assert_eq!(
        list.iter()
            .filter(|(_, kind, _)| kind == "container_started")
            .count(),
        3,
        "{list:?}"
    );
    // The dead one is removed from Docker too; nothing else is left over.
    eventually(
        "docker holds exactly the pool",
        Duration::from_secs(30),
        POLL,
        || async {
            let listed: BTreeSet<String> = labelled_containers(&env.app).into_iter().collect();
            if listed == pool {
                Ok(())
            } else {
                Err(format!("docker {listed:?} vs pool {pool:?}"))
            }
        },
    )
    .await;
    let metrics = http_get(&http, "/metrics").await.expect("/metrics").1;
    assert!(
        metrics.contains("agent_containers_replaced_total 1"),
        "{metrics}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_restarts_and_adopts_the_same_containers() {
    let Some(w) = World::new().await else { return };
    let env = w.env.clone().set("DEFAULT_CONTAINER", 2);
    let (ws_port, http_port) = (common::free_port(), common::free_port());
    let log = std::env::temp_dir().join(format!("{}-agent.log", env.app));
    let mut first = AgentProcess::start(&env, ws_port, http_port, log.clone());
    let http = first.http.clone();

    let rows = wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    let pool = ids(&rows.iter().collect::<Vec<_>>());
    let store = w.store().await;
    wait_saved(&store, &pool, 2).await;
    let version_before = get_queue(&http).await.expect("/queue").version;

    first.kill9();
    let restarted_ms = now_ms();
    assert_eq!(
        labelled_containers(&env.app)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        pool,
        "the app keeps running while the agent is down"
    );
    let second = AgentProcess::start(&env, ws_port, http_port, log.clone());
    let back = Instant::now();
    let queue = eventually(
        "the same pool after restart",
        Duration::from_secs(30),
        POLL,
        || async {
            let rows = stats(&http).await?;
            let ready = ids(&active_ready(&rows));
            let queue = get_queue(&http).await?;
            if ready == pool && queue_ids(&queue) == pool {
                Ok(queue)
            } else {
                Err(format!("ready {ready:?}, queued {:?}", queue_ids(&queue)))
            }
        },
    )
    .await;
    eprintln!(
        "restarted agent published the adopted pool after {:?}",
        back.elapsed()
    );
    assert!(
        queue.version > version_before,
        "versions keep increasing across restarts: {} then {}",
        version_before,
        queue.version
    );

    // It stays that way: nothing created, nothing duplicated (a few sample periods).
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let listed: BTreeSet<String> = labelled_containers(&env.app).into_iter().collect();
        assert_eq!(
            listed,
            pool,
            "docker after restart\n{}",
            second.log_tail(30)
        );
        let rows = stats(&http).await.expect("/stats");
        assert_eq!(rows.len(), 2, "{rows:?}");
        tokio::time::sleep(POLL).await;
    }
    let after: Vec<_> = event_list(&events(&http).await.expect("/events"))
        .into_iter()
        .filter(|(at, _, _)| *at >= restarted_ms)
        .collect();
    assert!(
        !after.iter().any(|(_, kind, _)| kind == "container_started"
            || kind == "container_replaced"
            || kind == "container_vanished"),
        "events after the restart: {after:?}"
    );
    let health = get_json(&http, "/health").await.expect("/health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["desired"], 2, "{health}");
    drop(second);
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_load_scales_the_pool_up() {
    let Some(w) = World::new().await else { return };
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 1)
        .set("MAX_CONTAINERS", 3)
        .set("CONTAINER_CPUS", 0.25)
        .set("HIGH_LOAD_THRESHOLD", 55)
        // Other tests (and builds) share the 2 CPUs: a busy host holds every scale-up
        // (seen: HU at score 24 for a minute, no container added). Host saturation has its
        // own unit tests.
        .set("HOST_SATURATION", 1);
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let rows = wait_scored_pool(&http, 1, Duration::from_secs(60)).await;
    let first = rows[0]["id"].as_str().unwrap().to_owned();
    eprintln!("idle score before load: {}", rows[0]);

    let paths = ["/cpu?ms=200"; 4];
    let traffic = Traffic::start(&agent.ws(), None, &paths, Duration::from_millis(500)).await;
    let load_start = Instant::now();
    let load_start_ms = now_ms();
    let grown = eventually(
        "a second container in the queue",
        Duration::from_secs(60),
        POLL,
        || async {
            let queue = get_queue(&http).await?;
            if queue.items.len() >= 2 {
                Ok(queue)
            } else {
                let rows = stats(&http).await?;
                Err(format!("queue {queue:?}; stats {rows:?}"))
            }
        },
    )
    .await;
    let latency = load_start.elapsed();
    let list = events(&http).await.expect("/events");
    let scale_up = list
        .iter()
        .rev()
        .find(|e| e["kind"] == "scale_up")
        .expect("a scale_up event")
        .clone();
    let decided_after = scale_up["at_ms"]
        .as_u64()
        .unwrap()
        .saturating_sub(load_start_ms);
    eprintln!(
        "SCALE-UP: new container in the queue {latency:?} after the load started \
         (decision after {decided_after} ms): {}\nscale_up event: {}\nqueue: {:?}",
        grown
            .items
            .iter()
            .map(|i| format!("{} {} {}", i.name, i.category, i.score))
            .collect::<Vec<_>>()
            .join(", "),
        scale_up,
        grown.version
    );
    assert!(grown.items.iter().any(|i| i.id == first));
    // Under saturating load the busy container shows it (MU or HU), whatever its memory and
    // network do.
    assert!(
        grown
            .items
            .iter()
            .any(|i| i.id == first && matches!(i.category, Category::Medium | Category::High)),
        "the saturated container is MU or HU: {:?}",
        grown.items
    );
    // The decision names the score signal and its inputs.
    let proposals = scale_up["details"]["proposals"]
        .as_array()
        .expect("proposals");
    let score = proposals
        .iter()
        .find(|p| p["signal"] == "score")
        .expect("a score proposal");
    assert!(
        score["observed"].as_f64().unwrap() > 45.0 && score["desired"].as_u64().unwrap() >= 2,
        "{scale_up}"
    );
    let counts = traffic.stop().await;
    eprintln!(
        "load: {} ok, {} failed /cpu requests, {} reports",
        counts.ok.load(std::sync::atomic::Ordering::Relaxed),
        counts.failed.load(std::sync::atomic::Ordering::Relaxed),
        counts.reports.load(std::sync::atomic::Ordering::Relaxed)
    );
    let health = get_json(&http, "/health").await.expect("/health");
    assert!(health["desired"].as_u64().unwrap() >= 2, "{health}");
    agent.stop().await;
}

/// The issue's load step on CPU-limited containers: six request loops in flight (five heavy
/// on one balancer, one light on another) against a TARGET_CONCURRENCY of 2 need exactly 3
/// containers. The pool grows to 3 in one panic step
/// and no further; when the step ends it shrinks back to 1 while a second balancer keeps
/// light traffic going, with no failed request on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_step_grows_to_the_needed_size_and_shrinks_back_without_errors() {
    let Some(w) = World::new().await else { return };
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 1)
        .set("MAX_CONTAINERS", 6)
        .set("CONTAINER_CPUS", 0.25)
        .set("TARGET_CONCURRENCY", 2)
        // The score signal out of the way (it is unit-tested): the concurrency signal alone
        // defines "needed" here, so the test can tell needed from overshoot exactly.
        .set("HIGH_LOAD_THRESHOLD", 1)
        .set("CRITICAL_LOAD_THRESHOLD", 0)
        // Other tests share the 2 CPUs; host saturation has its own unit tests.
        .set("HOST_SATURATION", 1)
        .set("SCALE_DOWN_STABILIZATION", "10s")
        // Panic mode (no scale-down) lasts one stable window after the spike.
        .set("STABLE_WINDOW", "20s")
        .set("DRAIN_TIMEOUT", "20s");
    let agent = Agent::start(&env).await;
    let http = agent.http();
    wait_scored_pool(&http, 1, Duration::from_secs(60)).await;

    let light = Traffic::start(&agent.ws(), None, &["/work?ms=20"], Duration::from_secs(1)).await;
    let heavy = Traffic::start(
        &agent.ws(),
        None,
        &["/cpu?ms=40"; 5],
        Duration::from_secs(1),
    )
    .await;
    let step = Instant::now();
    let serving = |q: &protocol::Queue| {
        q.items
            .iter()
            .filter(|i| i.category != Category::Sundown)
            .count()
    };
    eventually(
        "3 containers serving",
        Duration::from_secs(60),
        POLL,
        || async {
            let q = get_queue(&http).await?;
            if serving(&q) >= 3 {
                Ok(())
            } else {
                Err(format!("{} serving: {:?}", serving(&q), q.items))
            }
        },
    )
    .await;
    let grown_after = step.elapsed();
    // Hold the load for a while: the pool must stay at the needed size.
    let mut peak = 0;
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(20) {
        let h = get_json(&http, "/health").await.expect("/health");
        peak = peak.max(h["active"].as_u64().unwrap_or(0));
        tokio::time::sleep(POLL).await;
    }
    let heavy = heavy.stop().await;
    let list = events(&http).await.expect("/events");
    let ups: Vec<&serde_json::Value> = list.iter().filter(|e| e["kind"] == "scale_up").collect();
    eprintln!(
        "LOAD STEP: 3 serving {grown_after:?} after the step; peak active {peak}; scale-ups: {:#?}",
        ups.iter().map(|e| &e["reason"]).collect::<Vec<_>>()
    );
    assert_eq!(peak, 3, "grows to the needed size and no further: {ups:#?}");
    assert!(
        ups.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("/ target 2 per container")),
        "the decision names its inputs: {ups:#?}"
    );
    let stats_rows = stats(&http).await.expect("/stats");
    assert!(
        stats_rows
            .iter()
            .any(|r| r["requests_per_s"].as_f64().unwrap_or(0.0) > 0.0),
        "observed traffic in /stats: {stats_rows:#?}"
    );

    // The step ends; the light balancer keeps going while the pool shrinks back.
    let ended = Instant::now();
    eventually(
        "the pool back at 1",
        Duration::from_secs(120),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            let listed = labelled_containers(&env.app);
            if h["active"] == 1 && listed.len() == 1 {
                Ok(())
            } else {
                Err(format!("{h}; docker {listed:?}"))
            }
        },
    )
    .await;
    let shrunk_after = ended.elapsed();
    let light = light.stop().await;
    let failures = |c: &common::agent::TrafficCounts| c.failures.lock().unwrap().clone();
    let ok = |c: &common::agent::TrafficCounts| c.ok.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "SHRINK: back to 1 {shrunk_after:?} after the step ended; heavy {} ok, light {} ok",
        ok(&heavy),
        ok(&light)
    );
    assert!(failures(&heavy).is_empty(), "{:#?}", failures(&heavy));
    assert!(failures(&light).is_empty(), "{:#?}", failures(&light));
    assert!(ok(&light) > 20, "light traffic kept going");
    let list = event_list(&events(&http).await.expect("/events"));
    assert!(
        list.iter().any(|(_, kind, _)| kind == "scale_down"),
        "{list:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_without_failed_requests() {
    let Some(w) = World::new().await else { return };
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 1)
        .set("MAX_CONTAINERS", 3)
        .set("DRAIN_TIMEOUT", "20s")
        // This test is about draining, so the pool must only shrink. On a host busy with the
        // other tests the survivor, carrying all the traffic, can score below the default
        // HIGH_LOAD_THRESHOLD (55) and be grown again (seen in CI: 51.9 -> scale_up 1 -> 2);
        // the score's scale-up is unit-tested, here it is out of the way.
        .set("HIGH_LOAD_THRESHOLD", 1)
        .set("CRITICAL_LOAD_THRESHOLD", 0)
        // Scale-down decides on the stable window's proposals (60 s by default, the whole
        // wait below): keep it short.
        .set("STABLE_WINDOW", "10s");
    let agent = Agent::start(&env).await;
    let http = agent.http();
    wait_scored_pool(&http, 1, Duration::from_secs(60)).await;
    let (status, body) = post_scale(&http, 3, None).await;
    assert_eq!(status, 200, "{body}");
    let rows = wait_scored_pool(&http, 3, Duration::from_secs(60)).await;
    let grown = ids(&rows.iter().collect::<Vec<_>>());

    // Fast sequential requests, plus slow ones that outlast MIN_DRAIN (2 s) and the stop
    // grace (2 s), so each container nearly always has one in flight when it goes SUNDOWN:
    // a container stopped before its in-flight requests finish would fail them.
    let paths = [
        "/work?ms=20",
        "/work?ms=6000",
        "/work?ms=6000",
        "/work?ms=6000",
    ];
    let traffic = Traffic::start(&agent.ws(), None, &paths, Duration::from_millis(500)).await;
    let started = Instant::now();
    let kept = eventually(
        "the pool back at DEFAULT_CONTAINER=1",
        Duration::from_secs(90),
        POLL,
        || async {
            let queue = get_queue(&http).await?;
            let listed = labelled_containers(&env.app);
            if queue.items.len() == 1 && listed.len() == 1 && queue.items[0].id == listed[0] {
                Ok(listed[0].clone())
            } else {
                // What the scaler last decided, for the failure message.
                let recent: Vec<String> = events(&http)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .take(6)
                    .map(|e| format!("{} {}", e["kind"], e["reason"]))
                    .collect();
                Err(format!(
                    "queue {:?}, docker {listed:?}, latest events {recent:?}",
                    queue.items
                ))
            }
        },
    )
    .await;
    let shrink = started.elapsed();
    // Keep the traffic going a little on the survivor, then stop it.
    let ok_before = traffic.ok();
    eventually(
        "traffic continues",
        Duration::from_secs(10),
        POLL,
        || async {
            if traffic.ok() > ok_before + 5 {
                Ok(())
            } else {
                Err(format!("{} requests", traffic.ok()))
            }
        },
    )
    .await;
    let counts = traffic.stop().await;
    let failures = counts.failures.lock().unwrap().clone();
    let per_backend = counts.per_backend.lock().unwrap().clone();
    let last_done = counts.last_done_ms.lock().unwrap().clone();
    let (ok, failed) = (
        counts.ok.load(std::sync::atomic::Ordering::Relaxed),
        counts.failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!(
        "SCALE-DOWN: 3 -> 1 in {shrink:?}; {ok} ok / {failed} failed requests; per backend {per_backend:?}; {} reports",
        counts.reports.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(failed, 0, "failed requests: {failures:#?}");
    assert!(ok > 50, "too little traffic to mean anything: {ok}");
    assert!(
        per_backend.len() >= 2,
        "the traffic reached the containers that were removed: {per_backend:?}"
    );

    let list = event_list(&events(&http).await.expect("/events"));
    assert!(
        !list.iter().any(|(_, kind, _)| kind == "drain_timeout"),
        "drains complete from reports, not by timeout: {list:?}"
    );
    let removed: Vec<&String> = grown.iter().filter(|id| **id != kept).collect();
    assert_eq!(removed.len(), 2);
    for id in removed {
        let at = |kind: &str| {
            list.iter()
                .position(|(_, k, i)| k == kind && i == id)
                .unwrap_or_else(|| panic!("no {kind} for {id}: {list:?}"))
        };
        let (sundown, drained, gone) = (
            at("container_sundown"),
            at("container_drained"),
            at("container_removed"),
        );
        assert!(
            sundown < drained && drained < gone,
            "order for {id}: {list:?}"
        );
        // Drained means the balancer had nothing in flight to it any more.
        let done = last_done[id.as_str()];
        assert!(
            list[drained].0 >= done,
            "{id} drained at {} while a request to it was in flight until {done}",
            list[drained].0
        );
        eprintln!(
            "{id:.12}: SUNDOWN -> drained {} ms -> removed {} ms",
            list[drained].0 - list[sundown].0,
            list[gone].0 - list[sundown].0
        );
    }
    assert!(list.iter().any(|(_, kind, _)| kind == "scale_down"));
    // Containers being stopped are not mistaken for strays (adopted) or failures (replaced),
    // and nothing is started once scaling down began.
    let first_down = list
        .iter()
        .position(|(_, kind, _)| kind == "scale_down")
        .unwrap();
    assert!(
        !list
            .iter()
            .enumerate()
            .any(|(n, (_, kind, _))| kind == "container_adopted"
                || kind == "container_replaced"
                || (kind == "container_started" && n > first_down)),
        "{list:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_scale_need_the_token_and_versions_increase() {
    let Some(w) = World::new().await else { return };
    let token = "s3cret-token";
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 1)
        .set("MAX_CONTAINERS", 2)
        .set("AGENT_TOKEN", token);
    let agent = Agent::start(&env).await;
    let (http, ws_addr) = (agent.http(), agent.ws());

    for bad in [None, Some("wrong")] {
        match ws_connect(&ws_addr, bad).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "token {bad:?}")
            }
            Err(e) => panic!("token {bad:?}: expected HTTP 401, got {e}"),
            Ok(_) => panic!("token {bad:?}: the upgrade was accepted"),
        }
    }

    eventually(
        "one container in the queue",
        Duration::from_secs(60),
        POLL,
        || async {
            let q = get_queue(&http).await?;
            if q.items.len() == 1 {
                Ok(())
            } else {
                Err(format!("{q:?}"))
            }
        },
    )
    .await;
    let before = get_queue(&http).await.expect("/queue");
    let mut ws = ws_connect(&ws_addr, Some(token))
        .await
        .expect("subscribe with the token");
    let first = next_queue(&mut ws, Duration::from_secs(2))
        .await
        .expect("first frame at once");
    assert!(first.version >= before.version);
    assert_eq!(first.items.len(), 1, "{first:?}");

    // Garbage from the subscriber is skipped; the connection stays up.
    for frame in [
        WsMessage::text("not json"),
        WsMessage::text(r#"{"type":"hello"}"#),
        WsMessage::binary(vec![1u8, 2, 3]),
        WsMessage::text(Message::Queue(first.clone()).encode()),
    ] {
        ws.send(frame).await.expect("send junk");
    }

    // Keep-alive: the current queue again at least every QUEUE_KEEPALIVE (1 s).
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut frames = 0;
    let mut seen = vec![first.clone()];
    while frames < 4 {
        let q = next_queue(&mut ws, Duration::from_secs(3))
            .await
            .expect("keep-alive frame");
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
        frames += 1;
        seen.push(q);
    }
    eprintln!("keep-alive: max gap {max_gap:?} over {frames} frames");
    assert!(max_gap <= Duration::from_millis(1600), "{max_gap:?}");
    let metrics = http_get(&http, "/metrics").await.expect("/metrics").1;
    assert!(
        metrics.contains("agent_frames_ignored_total 4"),
        "{metrics}"
    );

    // POST /scale: 401 without (or with a wrong) token; clamped with it.
    assert_eq!(post_scale(&http, 2, None).await.0, 401);
    assert_eq!(post_scale(&http, 2, Some("wrong")).await.0, 401);
    let (status, body) = post_scale(&http, 0, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["desired"], 1,
        "clamped to DEFAULT_CONTAINER: {answer}"
    );
    let (status, body) = post_scale(&http, 99, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["desired"], 2, "clamped to MAX_CONTAINERS: {answer}");
    assert_eq!(answer["requested"], 99, "{answer}");

    // The second container shows up under strictly higher versions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = next_queue(&mut ws, Duration::from_secs(3))
            .await
            .expect("frames keep coming");
        seen.push(q.clone());
        if q.items.len() == 2 && q.items.iter().all(|i| i.category != Category::Init) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scored second container: {q:?}"
        );
    }
    let mut increases = 0;
    for pair in seen.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.items == b.items {
            assert!(b.version >= a.version, "{a:?} then {b:?}");
        } else {
            assert!(
                b.version > a.version,
                "a change without a new version: {a:?} then {b:?}"
            );
            increases += 1;
        }
        if b.version == a.version {
            assert_eq!(a.items, b.items, "same version, different items");
        }
    }
    eprintln!("versions over {} frames: {} changes", seen.len(), increases);
    assert!(increases >= 2, "INIT then scored: {seen:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_and_state_resaved() {
    let Some(mut w) = World::new().await else {
        return;
    };
    // The pool grown by POST /scale must stay as asked for the whole test (under CI's load it
    // can outlast a one-minute stabilisation window, after which the idle pool may shrink).
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 2)
        .set("SCALE_DOWN_STABILIZATION", "10m");
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let rows = wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    let pool = ids(&rows.iter().collect::<Vec<_>>());
    let store = w.store().await;
    wait_saved(&store, &pool, 2).await;

    // A subscriber that must keep getting the full queue all along.
    let mut ws = ws_connect(&agent.ws(), None).await.expect("subscribe");
    let watcher = tokio::spawn(async move {
        let mut gaps = Duration::ZERO;
        let mut last = Instant::now();
        let mut frames = Vec::new();
        let end = loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    if let Ok(Message::Queue(q)) = Message::decode(text.as_str()) {
                        gaps = gaps.max(last.elapsed());
                        last = Instant::now();
                        frames.push(q.items.len());
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None => break "closed".to_owned(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("error: {e}"),
            }
        };
        (gaps, frames, end)
    });

    w.redis.stop();
    let down = Instant::now();
    eventually(
        "/health reports redis down",
        Duration::from_secs(20),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            let q = get_queue(&http).await?;
            assert_eq!(
                queue_ids(&q),
                pool,
                "the queue is served while redis is down"
            );
            if h["redis"] == false && h["status"] == "degraded" {
                Ok(())
            } else {
                Err(format!("{h}"))
            }
        },
    )
    .await;
    eprintln!("redis down noticed after {:?}", down.elapsed());
    // The agent keeps working without Redis: events answer (from memory), and a scale
    // request made now is acted on and saved once Redis is back.
    let (status, _) = http_get(&http, "/events").await.expect("/events");
    assert_eq!(status, 200);
    let (status, body) = post_scale(&http, 3, None).await;
    assert_eq!(status, 200, "{body}");
    let grown = eventually(
        "a third container, scored, while redis is down",
        Duration::from_secs(60),
        POLL,
        || async {
            let q = get_queue(&http).await?;
            let h = get_json(&http, "/health").await?;
            assert_eq!(h["redis"], false, "redis is still down: {h}");
            let ids = queue_ids(&q);
            let scored = q.items.iter().all(|i| i.category != Category::Init);
            if ids.len() == 3 && ids.is_superset(&pool) && scored {
                Ok(ids)
            } else {
                Err(format!("{q:?}"))
            }
        },
    )
    .await;

    w.redis.resume(); // empty: persistence is off
    let up = Instant::now();
    eventually(
        "state re-saved after redis came back",
        Duration::from_secs(30),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            let s = saved(&store).await?;
            if h["redis"] == true && h["status"] == "ok" && s == (grown.clone(), Some(3)) {
                Ok(())
            } else {
                Err(format!("health {h}; redis {s:?}"))
            }
        },
    )
    .await;
    eprintln!("redis back, state re-saved after {:?}", up.elapsed());
    let q = get_queue(&http).await.expect("/queue");
    assert_eq!(queue_ids(&q), grown);
    // The event log, lost with Redis, is written back from memory (outage events included).
    let list = event_list(&events(&http).await.expect("/events"));
    for kind in ["container_started", "scale_manual"] {
        assert!(
            list.iter().any(|(_, k, _)| k == kind),
            "{kind} in the re-saved events: {list:?}"
        );
    }
    let stored = store.events(1000).await.expect("events from redis");
    assert_eq!(stored.len(), list.len(), "/events reads redis again");
    assert_eq!(
        labelled_containers(&env.app)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        grown,
        "nothing else was created"
    );

    agent.stop().await;
    let (max_gap, frames, end) = watcher.await.expect("watcher");
    eprintln!(
        "subscriber: {} frames, max gap {max_gap:?}, then {end}",
        frames.len()
    );
    assert_eq!(end, "closed", "the subscription ended cleanly at shutdown");
    assert!(frames.iter().all(|n| *n == 2 || *n == 3), "{frames:?}");
    assert!(max_gap <= Duration::from_millis(2500), "{max_gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_started_without_redis_publishes_the_running_pool() {
    let Some(mut w) = World::new().await else {
        return;
    };
    let env = w.env.clone().set("DEFAULT_CONTAINER", 2);
    let (ws_port, http_port) = (common::free_port(), common::free_port());
    let log = std::env::temp_dir().join(format!("{}-agent.log", env.app));
    let mut first = AgentProcess::start(&env, ws_port, http_port, log.clone());
    let http = first.http.clone();
    let rows = wait_scored_pool(&http, 2, Duration::from_secs(60)).await;
    let pool = ids(&rows.iter().collect::<Vec<_>>());
    wait_saved(&w.store().await, &pool, 2).await;

    // The agent dies and comes back while Redis is down: the app keeps running, and the
    // balancers must get the running pool, never an empty queue.
    first.kill9();
    w.redis.stop();
    let second = AgentProcess::start(&env, ws_port, http_port, log.clone());
    let mut ws = eventually("a websocket", Duration::from_secs(10), POLL, || async {
        common::agent::ws_connect(&second.ws, None)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let first_frame = next_queue(&mut ws, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", second.log_tail(30)));
    assert!(first_frame.observed, "{first_frame:?}");
    assert!(
        !first_frame.items.is_empty(),
        "the first queue after a start without Redis is empty\n{}",
        second.log_tail(30)
    );
    let until = Instant::now() + Duration::from_secs(12);
    let mut last = first_frame;
    while Instant::now() < until {
        if let Ok(q) = next_queue(&mut ws, Duration::from_secs(3)).await {
            assert!(
                queue_ids(&q).is_subset(&pool) && !q.items.is_empty(),
                "queue v{} without Redis: {:?}",
                q.version,
                queue_ids(&q)
            );
            last = q;
        }
        let listed: BTreeSet<String> = labelled_containers(&env.app).into_iter().collect();
        assert_eq!(listed, pool, "nothing created or removed without Redis");
    }
    assert_eq!(
        queue_ids(&last),
        pool,
        "both running containers are published"
    );

    // Redis is back: the saved state is restored, the same pool carries on.
    w.redis.resume();
    eventually(
        "restored after Redis came back",
        Duration::from_secs(30),
        POLL,
        || async {
            let h = get_json(&http, "/health").await?;
            let rows = stats(&http).await?;
            let ready = ids(&active_ready(&rows));
            if h["desired"] == 2 && ready == pool {
                Ok(())
            } else {
                Err(format!("health {h}, ready {ready:?}"))
            }
        },
    )
    .await;
    drop(second);
    let _ = std::fs::remove_file(log);
}

/// Reads `GET /stream` until `count` tick events have arrived (10 s each at most); returns
/// their JSON payloads.
async fn stream_ticks(http: &str, count: usize) -> Vec<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .expect("connect /stream");
    s.write_all(format!("GET /stream HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .await
        .expect("request /stream");
    let mut raw = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut ticks = Vec::new();
    while ticks.len() < count {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a tick within 10 s")
            .expect("read /stream");
        assert!(n > 0, "the stream ended early: {raw}");
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Events are one chunk each; take every complete `data:` line of a tick.
        while let Some(start) = raw.find("event: tick\ndata: ") {
            let rest = &raw[start + "event: tick\ndata: ".len()..];
            let Some(end) = rest.find('\n') else { break };
            ticks.push(serde_json::from_str(&rest[..end]).expect("tick data is JSON"));
            raw = rest[end..].to_string();
        }
    }
    assert!(
        raw.is_empty() || !raw.contains("event: tick"),
        "an unparsed tick: {raw}"
    );
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_api_streams_history_and_sundown() {
    let Some(w) = World::new().await else { return };
    let token = "op3rator";
    let env = w
        .env
        .clone()
        .set("DEFAULT_CONTAINER", 1)
        .set("MAX_CONTAINERS", 3)
        .set("DRAIN_TIMEOUT", "2s")
        .set("AGENT_TOKEN", token);
    let agent = Agent::start(&env).await;
    let http = agent.http();
    let bearer = format!("Bearer {token}");
    assert_eq!(post_scale(&http, 2, Some(token)).await.0, 200);
    let rows = wait_scored_pool(&http, 2, Duration::from_secs(90)).await;

    // The live feed: ticks carry health, the rows of /stats and a history sample.
    let ticks = stream_ticks(&http, 2).await;
    for t in &ticks {
        assert_eq!(t["health"]["desired"], 2, "{t}");
        assert_eq!(t["health"]["token_required"], true, "{t}");
        assert_eq!(t["stats"].as_array().map(Vec::len), Some(2), "{t}");
        assert_eq!(t["sample"]["desired"], 2, "{t}");
        assert!(t["events"].is_array(), "{t}");
    }
    assert!(ticks[1]["sample"]["at_ms"].as_u64() > ticks[0]["sample"]["at_ms"].as_u64());
    let shares: f64 = rows.iter().filter_map(|r| r["weight_share"].as_f64()).sum();
    assert!(
        (shares - 1.0).abs() < 0.01,
        "weight shares sum to 1: {rows:?}"
    );
    let history = get_json(&http, "/history").await.expect("/history");
    let samples = history["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{history}");
    assert!(
        history["marks"]
            .as_array()
            .expect("marks")
            .iter()
            .any(|m| m["kind"] == "scale_manual"),
        "the POST /scale is marked: {history}"
    );

    // POST /sundown: token, bad body, unknown name, then one container drains and goes.
    let victim = rows[0]["name"].as_str().expect("name").to_string();
    let body = format!("{{\"name\":\"{victim}\"}}");
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let http = http.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_request(&http, "POST", "/sundown", &h, &body)
                .await
                .expect("POST /sundown")
        }
    };
    let auth = || vec![("Authorization", bearer.clone())];
    assert_eq!(post(vec![], body.clone()).await.0, 401);
    assert_eq!(post(auth(), "{}".into()).await.0, 400);
    assert_eq!(post(auth(), r#"{"name":"nope"}"#.into()).await.0, 404);
    let (status, answer) = post(auth(), body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(
        (&answer["name"], &answer["desired"]),
        (&victim.clone().into(), &1.into())
    );
    let (status, again) = post(auth(), body).await;
    assert_eq!(status, 409, "{again}");
    eventually(
        "the container leaves and the pool settles at 1",
        Duration::from_secs(60),
        POLL,
        || async {
            let rows = stats(&http).await?;
            let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
            if rows.len() == 1 && !names.contains(&victim.as_str()) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    )
    .await;
    let kinds: Vec<String> = event_list(&events(&http).await.expect("/events"))
        .into_iter()
        .map(|(_, kind, _)| kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "container_sundown"), "{kinds:?}");
    let overview = get_json(&http, "/tasks/overview").await.expect("overview");
    assert_eq!(overview["enabled"], false, "no BALANCER_URL: {overview}");
    agent.stop().await;
}

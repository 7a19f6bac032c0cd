//! The admin `/metrics` page as Prometheus reads it: after real traffic (proxied requests,
//! a cache miss and hit, a 5xx, a client fault, a task when Redis is there) the page parses
//! with `prometheus-parse`, passes the strict reader and the naming conventions of
//! `testkit::prom_check`, and its numbers say what happened.
//!
//! - `metrics_after_traffic_parse_and_follow_the_conventions`: a fake agent's queue of two
//!   backends, one with a name that needs escaping (`"`, `\`, `,`, `=`, a line feed); Redis
//!   from `RUSTYBALANCER_TEST_REDIS_URL` or a throwaway `redis-server` (skipped outside CI
//!   when there is none; the rest of the test runs anyway).
//! - `a_fresh_balancer_already_follows_the_conventions`: no backend, no traffic.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use protocol::{Category, QueueItem};
use testkit::prom_check::{assert_conventions, names_in, Exposition};
use testkit::RedisServer;

/// A backend name that needs every escape of the text format.
const ODD: &str = "app \"b\" \\ ,x=y\nz";

/// Every family the balancer writes, tasks aside (documented in artefacts/metrics.md).
const FAMILIES: [&str; 26] = [
    "balancer_build_info",
    "balancer_requests_total",
    "balancer_request_duration_seconds",
    "balancer_backend_in_flight",
    "balancer_backend_weight",
    "balancer_backend_ejected",
    "balancer_backend_ejections_total",
    "balancer_backend_errors_total",
    "balancer_cache_hits_total",
    "balancer_cache_misses_total",
    "balancer_cache_entries",
    "balancer_queue_version",
    "balancer_backends",
    "balancer_agent_connected",
    "balancer_agent_connects_total",
    "balancer_agent_frames_applied_total",
    "balancer_agent_frames_rejected_total",
    "balancer_connections_active",
    "balancer_connections_total",
    "balancer_shard_connections_total",
    "balancer_shard_connections_active",
    "balancer_connections_moved_total",
    "balancer_retries_total",
    "balancer_retries_refused_total",
    "balancer_upgrades_total",
    "balancer_client_faults_total",
];

/// The families of the task system (Redis configured); the last four once the queue
/// statistics have been read from Redis.
const TASK_FAMILIES: [&str; 18] = [
    "balancer_tasks_finished_total",
    "balancer_tasks_submitted_total",
    "balancer_tasks_duplicates_total",
    "balancer_tasks_refused_total",
    "balancer_task_attempts_total",
    "balancer_task_retries_total",
    "balancer_task_deferrals_total",
    "balancer_task_reclaims_total",
    "balancer_task_dead_letters_total",
    "balancer_task_callbacks_total",
    "balancer_task_callbacks_failed_total",
    "balancer_task_attempt_duration_seconds",
    "balancer_task_completion_seconds",
    "balancer_tasks_redis_up",
    "balancer_tasks_queued",
    "balancer_tasks_delayed",
    "balancer_tasks_running",
    "balancer_tasks_oldest_queued_age_seconds",
];

/// GETs the admin `/metrics`, checks its content type, parses and checks it.
async fn scrape(b: &Balancer) -> Exposition {
    let (resp, body) = get(&b.admin_url("/metrics")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).expect("/metrics is UTF-8");
    assert_conventions(&text, "balancer_")
}

/// Redis for the task part: the suite's (`RUSTYBALANCER_TEST_REDIS_URL`) or a throwaway
/// one. `None` outside CI when there is neither.
fn redis() -> Option<(String, u16, Option<RedisServer>)> {
    if let Ok(url) = std::env::var("RUSTYBALANCER_TEST_REDIS_URL") {
        let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("RUSTYBALANCER_TEST_REDIS_URL {url:?}: no port"));
        let port = port.parse().expect("RUSTYBALANCER_TEST_REDIS_URL port");
        return Some((host.to_string(), port, None));
    }
    let server = RedisServer::start()?;
    Some(("127.0.0.1".to_string(), server.port(), Some(server)))
}

/// An origin: `/app.css` is cacheable, `/fail` answers 500, the rest 200.
async fn origin() -> Origin {
    Origin::start(handler(|req| async move {
        match req.uri().path() {
            "/app.css" => {
                let mut r = text(200, "body { color: red }");
                r.headers_mut()
                    .insert("content-type", "text/css".parse().unwrap());
                r.headers_mut()
                    .insert("cache-control", "public, max-age=300".parse().unwrap());
                r
            }
            "/fail" => text(500, "broken"),
            _ => text(200, "ok"),
        }
    }))
    .await
}

#[tokio::test]
async fn metrics_after_traffic_parse_and_follow_the_conventions() {
    let origin = origin().await;
    let agent = Agent::start(None).await;
    let odd = QueueItem {
        name: ODD.to_string(),
        ..item("b", origin.addr, 60.0, Category::Medium)
    };
    agent.send(queue_frame(
        3,
        vec![item("a", origin.addr, 90.0, Category::Low), odd],
    ));
    let redis = redis();
    let app = format!("METRICS{}", std::process::id());
    let url = agent.url();
    let mut vars = vec![
        ("DEPLOYMENT_AGENT_URL", url.clone()),
        ("APP_IDENTIFIER", app),
        ("TASK_RETRY_BASE", "20ms".to_string()),
    ];
    if let Some((host, port, _)) = &redis {
        vars.push(("REDIS_HOST", host.clone()));
        vars.push(("REDIS_PORT", port.to_string()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = Balancer::start(&vars).await;
    b.wait_version(3).await;

    // Traffic: 20 proxied requests, a cache miss then a hit, a 500, a client fault.
    let c = client();
    for i in 0..20 {
        let (resp, _) = get(&b.url(&format!("/work?i={i}"))).await;
        assert_eq!(resp.status(), 200);
    }
    let (miss, _) = get(&b.url("/app.css")).await;
    let (hit, _) = get(&b.url("/app.css")).await;
    assert_eq!(miss.headers()["x-cache"], "MISS");
    assert_eq!(hit.headers()["x-cache"], "HIT");
    let (fail, _) = get(&b.url("/fail")).await;
    assert_eq!(fail.status(), 500);
    let mut raw = RawConn::connect(b.addr).await;
    raw.send(b"GET /no-host HTTP/1.1\r\nx-a: 1\r\n\r\n")
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), raw.response())
        .await
        .expect("no answer within 5 s")
        .expect("closed without an answer");
    assert_eq!(refused.status, 400);

    // A task, run to the end.
    if redis.is_some() {
        let req = Request::post(b.url("/task"))
            .header("prefer", "respond-async")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let (resp, body) = send(&c, req).await;
        assert_eq!(resp.status(), 202, "{:?}", String::from_utf8_lossy(&body));
        let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .expect("a task id")
            .to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = get(&b.url(&format!("/_tasks/{id}"))).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["status"] == "succeeded" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} did not succeed: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The queue gauges appear once housekeeping has read them from Redis.
        let mut read = false;
        for _ in 0..200 {
            if scrape(&b).await.family("balancer_tasks_queued").is_some() {
                read = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(read, "balancer_tasks_queued never appeared");
    }

    let e = scrape(&b).await;
    for name in FAMILIES {
        assert!(e.family(name).is_some(), "{name} missing");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        e.value("balancer_build_info", &[("version", version)]),
        Some(1.0)
    );
    // Per backend, with the odd name round-tripped through the escapes.
    let by_backend = |name: &str| e.sum("balancer_requests_total", &[("backend", name)]);
    assert!(
        by_backend("app-a") + by_backend(ODD) >= 22.0,
        "20 requests, a miss and a 500 went to the backends"
    );
    assert_eq!(
        e.value("balancer_backend_weight", &[("backend", ODD)])
            .map(|w| w > 0.0),
        Some(true)
    );
    assert_eq!(
        e.value(
            "balancer_requests_total",
            &[("backend", "cache"), ("class", "2xx")]
        ),
        Some(1.0)
    );
    let server_errors = by_backend_class(&e, "app-a", "5xx") + by_backend_class(&e, ODD, "5xx");
    assert_eq!(server_errors, 1.0);
    assert_eq!(e.sum("balancer_backend_errors_total", &[]), 1.0);
    assert_eq!(e.value("balancer_cache_hits_total", &[]), Some(1.0));
    assert_eq!(e.value("balancer_cache_misses_total", &[]), Some(1.0));
    assert_eq!(
        e.value("balancer_client_faults_total", &[("kind", "missing_host")]),
        Some(1.0)
    );
    assert_eq!(e.value("balancer_queue_version", &[]), Some(3.0));
    assert_eq!(e.value("balancer_backends", &[]), Some(2.0));
    assert_eq!(e.value("balancer_agent_connected", &[]), Some(1.0));
    // Every request that got an answer is in the latency histogram (the 400 included).
    let count = e
        .value("balancer_request_duration_seconds_count", &[])
        .unwrap();
    assert!(count >= 24.0, "{count}");

    if redis.is_some() {
        for name in TASK_FAMILIES {
            assert!(e.family(name).is_some(), "{name} missing");
        }
        assert_eq!(e.value("balancer_tasks_submitted_total", &[]), Some(1.0));
        assert_eq!(
            e.value("balancer_tasks_finished_total", &[("status", "succeeded")]),
            Some(1.0)
        );
        assert_eq!(e.value("balancer_task_attempts_total", &[]), Some(1.0));
        assert_eq!(
            e.value("balancer_task_attempt_duration_seconds_count", &[]),
            Some(1.0)
        );
        assert_eq!(e.value("balancer_tasks_redis_up", &[]), Some(1.0));
        // With tasks on, the page has every family: compare it with the documents.
        check_documents(&e);
    }
}

/// artefacts/metrics.md documents every family of the page and nothing else (under the
/// `balancer_` prefix); the dashboard queries only families the page has.
fn check_documents(e: &Exposition) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../artefacts/");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{root}{f}")).unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    if let Err(problems) = e.documented_in("metrics.md", &read("metrics.md"), "balancer_") {
        panic!("artefacts/metrics.md and /metrics disagree:\n{problems}");
    }
    let dashboard = read("grafana-dashboard.json");
    let unknown: Vec<String> = names_in(&dashboard, "balancer_")
        .into_iter()
        .filter(|n| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|f| e.family(f).is_some())
                .unwrap_or(n);
            e.family(family).is_none()
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "grafana-dashboard.json queries metrics /metrics does not have: {unknown:?}"
    );
}

fn by_backend_class(e: &Exposition, backend: &str, class: &str) -> f64 {
    e.value(
        "balancer_requests_total",
        &[("backend", backend), ("class", class)],
    )
    .unwrap_or_else(|| panic!("no balancer_requests_total for {backend:?} {class}"))
}

#[tokio::test]
async fn a_fresh_balancer_already_follows_the_conventions() {
    let agent = Agent::start(None).await;
    let b = Balancer::start(&[("DEPLOYMENT_AGENT_URL", agent.url().as_str())]).await;
    let e = scrape(&b).await;
    for name in FAMILIES {
        assert!(e.family(name).is_some(), "{name} missing");
    }
    assert_eq!(e.value("balancer_backends", &[]), Some(0.0));
    assert_eq!(
        e.value("balancer_request_duration_seconds_count", &[]),
        Some(0.0)
    );
    // Scrapes are admin connections: they do not count as client connections.
    let again = scrape(&b).await;
    for name in ["balancer_connections_total", "balancer_connections_active"] {
        assert_eq!(again.value(name, &[]), Some(0.0), "{name}");
    }
}

//! Task submissions when parts fail, against real processes:
//!
//! - `kill_9_of_one_balancer_loses_no_task`: two real balancer processes share one Redis;
//!   one is killed with SIGKILL while it runs tasks; the other takes over its leases and
//!   finishes every accepted task. A task runs twice only if its first attempt was in flight
//!   on the killed balancer, and then the backend sees `X-Task-Attempt: 2`.
//! - `redis_outage_refuses_then_finishes_everything`: Redis (append-only, fsync always) is
//!   stopped: submissions answer 503 with `Retry-After` within ~2 s while plain proxying goes
//!   on; once Redis is back every task accepted before the outage finishes.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// A real balancer process; SIGKILLed on drop.
struct Proc {
    child: Child,
    port: u16,
    admin: u16,
}

impl Proc {
    fn spawn(id: &str, vars: &[(&str, String)]) -> Proc {
        let (port, admin) = (testkit::free_port(), testkit::free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_balancer"));
        cmd.env_clear()
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("HOST_PORT_HTTP_BALANCER", port.to_string())
            .env("HOST_PORT_ADMIN_BALANCER", admin.to_string())
            .env("DEPLOYMENT_AGENT_URL", "")
            .env("BALANCER_ID", id)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the balancer binary");
        Proc { child, port, admin }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_healthy(&self) {
        let url = format!("http://127.0.0.1:{}/health", self.admin);
        let ok = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                client()
                    .request(Request::get(url).body(Full::default()).unwrap())
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(ok, "balancer on port {} never became healthy", self.port);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `path` with `Prefer: respond-async` (plus `extra` headers); the status and, on
/// 202, the task id.
async fn submit(url: &str, extra: &[(&str, &str)]) -> (u16, Option<String>, Option<String>) {
    let mut req = Request::post(url).header("prefer", "respond-async");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (resp, body) = send(&client(), req.body(Full::new(Bytes::from("job"))).unwrap()).await;
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(String::from));
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_string());
    (resp.status().as_u16(), id, retry_after)
}

/// `GET /_tasks/{id}` → the status field.
async fn status(base: &str, id: &str) -> String {
    let (_, body) = get(&format!("{base}/_tasks/{id}")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["status"].as_str().unwrap_or("?").to_string()
}

/// Waits until every task is in a final state; returns their statuses.
async fn all_final(base: &str, ids: &[String], within: Duration) -> HashMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let mut out = HashMap::new();
        for id in ids {
            out.insert(id.clone(), status(base, id).await);
        }
        let pending = out
            .values()
            .filter(|s| matches!(s.as_str(), "queued" | "running" | "?"))
            .count();
        if pending == 0 || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An origin that takes `delay` per request and records (task id, attempt) of each.
async fn recording_origin(delay: Duration) -> (Origin, Arc<Mutex<Vec<(String, u32)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let origin = Origin::start(handler(move |req| {
        let log = log.clone();
        async move {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (id, attempt) = (h("x-task-id"), h("x-task-attempt").parse().unwrap_or(0));
            tokio::time::sleep(delay).await;
            log.lock().unwrap().push((id, attempt));
            text(200, "done")
        }
    }))
    .await;
    (origin, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_balancer_loses_no_task() {
    let Some(redis) = testkit::RedisServer::start() else {
        return;
    };
    let (origin, seen) = recording_origin(Duration::from_millis(300)).await;
    let app = format!("failover-{}", std::process::id());
    let vars = |workers: &str| {
        vec![
            ("STATIC_BACKENDS", origin.addr.to_string()),
            ("REDIS_HOST", "127.0.0.1".to_string()),
            ("REDIS_PORT", redis.port().to_string()),
            ("APP_IDENTIFIER", app.clone()),
            ("TASK_WORKERS", workers.to_string()),
            ("TASK_LEASE", "2s".to_string()),
        ]
    };
    let mut a = Proc::spawn("balancer-a", &vars("8"));
    let b = Proc::spawn("balancer-b", &vars("8"));
    a.wait_healthy().await;
    b.wait_healthy().await;

    let mut ids = Vec::new();
    for i in 0..80 {
        let target = if i % 2 == 0 { &a } else { &b };
        let (code, id, _) = submit(&target.url("/job"), &[]).await;
        assert_eq!(code, 202, "submission {i}");
        ids.push(id.expect("an id"));
    }
    // Both balancers are busy (8 workers each, 300 ms per task): kill one mid-flight.
    assert!(
        eventually(Duration::from_secs(10), || async {
            seen.lock().unwrap().len() >= 16
        })
        .await
    );
    a.child.kill().expect("SIGKILL balancer a");
    a.child.wait().expect("reap balancer a");
    let killed_at = seen.lock().unwrap().len();

    let statuses = all_final(&b.url(""), &ids, Duration::from_secs(40)).await;
    let not_ok: Vec<_> = statuses.iter().filter(|(_, s)| *s != "succeeded").collect();
    assert!(not_ok.is_empty(), "tasks not succeeded: {not_ok:?}");

    let seen = seen.lock().unwrap().clone();
    let mut runs: HashMap<&str, Vec<u32>> = HashMap::new();
    for (id, attempt) in &seen {
        runs.entry(id.as_str()).or_default().push(*attempt);
    }
    assert_eq!(runs.len(), ids.len(), "every task reached the backend");
    let twice: Vec<_> = runs.iter().filter(|(_, a)| a.len() > 1).collect();
    // Only attempts in flight on `a` at the kill can run again: at most its 8 workers.
    assert!(twice.len() <= 8, "too many tasks ran twice: {twice:?}");
    for (id, attempts) in &twice {
        assert!(
            attempts.contains(&2),
            "task {id} ran again without a new attempt number: {attempts:?}"
        );
    }
    eprintln!(
        "{} tasks, {killed_at} backend runs before the kill, {} ran twice after the kill",
        ids.len(),
        twice.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_refuses_then_finishes_everything() {
    let Some(mut redis) = testkit::RedisServer::start_persistent() else {
        return;
    };
    let origin = Origin::named("origin").await;
    let port = redis.port().to_string();
    let app = format!("outage-{}", std::process::id());
    let b = Balancer::over(
        &[&origin],
        &[
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", &port),
            ("APP_IDENTIFIER", &app),
        ],
    )
    .await;

    // Accepted before the outage, due after it.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (code, id, _) = submit(&b.url("/job"), &[("x-task-delay", "2s")]).await;
        assert_eq!(code, 202);
        ids.push(id.unwrap());
    }
    redis.stop();

    for _ in 0..3 {
        let t0 = Instant::now();
        let (code, id, retry_after) = submit(&b.url("/job"), &[]).await;
        let took = t0.elapsed();
        assert_eq!(code, 503, "no 202 without Redis (got id {id:?})");
        assert!(retry_after.is_some(), "503 carries Retry-After");
        assert!(took < Duration::from_millis(2600), "503 took {took:?}");
        let (resp, _) = get(&b.url(&format!("/_tasks/{}", ids[0]))).await;
        assert_eq!(resp.status(), 503, "lookups answer 503 too");
    }
    let (resp, body) = get(&b.url("/plain")).await;
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"origin"[..]));

    redis.resume();
    let statuses = all_final(&b.url(""), &ids, Duration::from_secs(30)).await;
    let not_ok: Vec<_> = statuses.iter().filter(|(_, s)| *s != "succeeded").collect();
    assert!(not_ok.is_empty(), "after the outage: {not_ok:?}");
    let (code, _, _) = submit(&b.url("/job"), &[]).await;
    assert_eq!(code, 202, "submissions work again");
}

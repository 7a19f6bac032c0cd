//! Task submissions end to end: a real Redis (`testkit::RedisServer`), real origins, the
//! balancer in-process. Every test has its own Redis and `APP_IDENTIFIER`.
//!
//! - `round_trip_by_header`: `Prefer: respond-async` → 202 (shape, `Location`, `Retry-After`,
//!   `Preference-Applied`); the origin gets method, path + query, body, headers, `X-Task-Id`
//!   and `X-Task-Attempt: 1`, not `Prefer`; `/result` replays status, headers and body.
//! - `prefer_wait_answers_with_the_result_or_202`: `wait=5` on a fast origin → the result
//!   itself; `wait=1` on an origin taking 1.5 s → 202 after about a second.
//! - `idempotency_key_dedups_and_refuses_reuse`: same key + same request → same id, one run;
//!   same key + other body → 422.
//! - `envelope_submission_and_field_errors`: `POST /_tasks` with `body_base64` and headers;
//!   bad envelopes → 400 naming the field; malformed JSON → 400.
//! - `body_limit_is_413`: `TASK_MAX_BODY_BYTES` for both kinds of submission.
//! - `retries_then_succeeds`: 503, 503, 200 → succeeded after 3 attempts, in order.
//! - `dead_after_max_attempts`: always 500 → dead after exactly `TASK_MAX_ATTEMPTS`; the last
//!   response is kept.
//! - `client_errors_fail_without_retry_but_429_is_retried`.
//! - `cancel_only_queued_tasks`: a delayed task is cancelled (200, then 409); a running one
//!   is not (409).
//! - `retry_of_a_dead_task`: dead → `POST /_tasks/{id}/retry` → succeeded; a succeeded task
//!   cannot be retried (409).
//! - `delayed_task_runs_no_earlier`: `X-Task-Delay: 1s`.
//! - `callbacks_are_posted_to_allowed_hosts_only`.
//! - `tasks_follow_the_weights`: LU 90 / HU 10 / SUNDOWN from a fake agent; 300 tasks.
//! - `garbage_stream_entries_are_dead_lettered`: the workers go on.
//! - `listing_pages_newest_first_and_filters`.
//! - `disabled_without_redis`: 503 on `/_tasks`, `Prefer` ignored (proxied normally).
//! - `reports_carry_the_task_queue_depth`.
//! - `large_results_are_truncated`: `TASK_MAX_RESULT_BYTES`.
//! - `waiting_on_a_finished_duplicate_answers_at_once`: `wait=1` + an `Idempotency-Key` of a
//!   finished task → its result at once.
//! - `envelope_callback_errors_name_the_envelope_field`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use protocol::Category;
use serde_json::{json, Value};
use testkit::RedisServer;

/// How long a test waits for a task to reach a final status.
const SETTLE: Duration = Duration::from_secs(8);

/// One request as an origin saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn attempt(&self) -> u32 {
        self.header("x-task-attempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An origin that records every request (before answering) and answers with `respond`.
async fn recording<F, Fut>(respond: F) -> (Origin, Log)
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let log: Log = Arc::default();
    let (l, respond) = (log.clone(), Arc::new(respond));
    let origin = Origin::start(handler(move |req: Request<Incoming>| {
        let (l, respond) = (l.clone(), respond.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
                at: Instant::now(),
            };
            l.lock().unwrap().push(seen.clone());
            respond(seen).await
        }
    }))
    .await;
    (origin, log)
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

/// Starts Redis, or `None` (skip) outside CI when it is not installed.
fn redis() -> Option<RedisServer> {
    RedisServer::start()
}

/// A balancer with tasks on `redis` under `app`, static over `origins` (none: `extra` must
/// give the backends), fast retries; `extra` overrides.
async fn start(
    redis: &RedisServer,
    app: &str,
    origins: &[&Origin],
    extra: &[(&str, &str)],
) -> Balancer {
    let port = redis.port().to_string();
    let list: Vec<String> = origins.iter().map(|o| o.addr.to_string()).collect();
    let list = list.join(",");
    let mut vars = vec![
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("APP_IDENTIFIER", app),
        ("TASK_RETRY_BASE", "20ms"),
        ("TASK_RETRY_MAX", "200ms"),
    ];
    if !origins.is_empty() {
        vars.push(("STATIC_BACKENDS", list.as_str()));
    }
    vars.extend_from_slice(extra);
    Balancer::start(&vars).await
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut r = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(body.into())).unwrap()
}

async fn call(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (Response<()>, Bytes) {
    send(c, request(method, url, headers, body)).await
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })
}

fn header<'a>(resp: &'a Response<()>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Submits with `Prefer: respond-async` (plus `headers`); asserts 202; the task id.
async fn submit(
    c: &TestClient,
    b: &Balancer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> String {
    let mut hs = vec![("prefer", "respond-async")];
    hs.extend_from_slice(headers);
    let (resp, body) = call(c, method, &b.url(path), &hs, body).await;
    assert_eq!(resp.status(), 202, "{:?}", String::from_utf8_lossy(&body));
    let v = json_of(&body);
    v["id"].as_str().expect("an id").to_string()
}

/// `POST /_tasks` with `envelope`; asserts 202; the task id.
async fn submit_envelope(c: &TestClient, b: &Balancer, envelope: &Value) -> String {
    let (resp, body) = call(
        c,
        Method::POST,
        &b.url("/_tasks"),
        &[("content-type", "application/json")],
        envelope.to_string(),
    )
    .await;
    assert_eq!(resp.status(), 202, "{:?}", String::from_utf8_lossy(&body));
    json_of(&body)["id"].as_str().expect("an id").to_string()
}

/// `GET /_tasks/{id}`, asserted 200.
async fn view(b: &Balancer, id: &str) -> Value {
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}"))).await;
    assert_eq!(resp.status(), 200, "{:?}", String::from_utf8_lossy(&body));
    json_of(&body)
}

/// Polls the task until `done(view)`; the last view (panics after `within`).
async fn wait_view(
    b: &Balancer,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = view(b, id).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "task {id} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a final status and asserts it is `want`; the view.
async fn wait_final(b: &Balancer, id: &str, want: &str) -> Value {
    let v = wait_view(b, id, SETTLE, |v| {
        !matches!(v["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(v["status"], want, "{v}");
    v
}

/// Asserts a 4xx/5xx JSON error with `code` (and `field`, for 400s); the JSON.
fn assert_error(resp: &Response<()>, body: &[u8], status: u16, code: &str) -> Value {
    assert_eq!(resp.status(), status, "{:?}", String::from_utf8_lossy(body));
    assert_eq!(header(resp, "content-type"), Some("application/json"));
    let v = json_of(body);
    assert_eq!(v["error"], code, "{v}");
    v
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_by_header() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|s: Seen| async move {
        let mut r = text(201, format!("made:{}", String::from_utf8_lossy(&s.body)));
        r.headers_mut()
            .insert("x-origin", http::HeaderValue::from_static("yes"));
        r.headers_mut()
            .insert("content-type", http::HeaderValue::from_static("text/plain"));
        r
    })
    .await;
    let b = start(&redis, "round-trip", &[&origin], &[]).await;
    let c = client();

    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/orders/7?expand=items&x=1"),
        &[
            ("prefer", "respond-async"),
            ("x-custom", "hello"),
            ("content-type", "application/json"),
        ],
        r#"{"qty":3}"#,
    )
    .await;
    assert_eq!(resp.status(), 202, "{body:?}");
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "preference-applied"), Some("respond-async"));
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    let v = json_of(&body);
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 28, "{v}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
    let location = format!("/_tasks/{id}");
    assert_eq!(v["location"], location.as_str());
    assert_eq!(header(&resp, "location"), Some(location.as_str()));
    assert!(
        matches!(
            v["status"].as_str(),
            Some("queued" | "running" | "succeeded")
        ),
        "{v}"
    );

    let done = wait_final(&b, &id, "succeeded").await;
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["method"], "POST");
    assert_eq!(done["path"], "/orders/7?expand=items&x=1");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["status"], 201);
    assert_eq!(done["result"]["bytes"], "made:{\"qty\":3}".len());
    assert_eq!(done["result"]["truncated"], false);
    for k in ["submitted_at", "started_at", "finished_at"] {
        assert!(done[k].is_string(), "{k}: {done}");
    }
    assert!(done["last_error"].is_null(), "{done}");

    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(&body[..], b"made:{\"qty\":3}");
    assert_eq!(header(&resp, "x-origin"), Some("yes"));
    assert_eq!(header(&resp, "content-type"), Some("text/plain"));
    assert_eq!(header(&resp, "x-task-id"), Some(id.as_str()));
    assert_eq!(header(&resp, "x-task-result-truncated"), None);

    let seen = seen(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/orders/7?expand=items&x=1");
    assert_eq!(&s.body[..], br#"{"qty":3}"#);
    assert_eq!(s.header("x-custom"), Some("hello"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert_eq!(s.header("x-task-id"), Some(id.as_str()));
    assert_eq!(s.header("x-task-attempt"), Some("1"));
    assert_eq!(s.header("prefer"), None, "Prefer is not forwarded");

    // Unknown and ill-formed ids are 404.
    let (resp, body) = get(&b.url("/_tasks/019ad9c1b6f3aaaaaaaaaaaaaaaa")).await;
    assert_error(&resp, &body, 404, "not_found");
    let (resp, body) = get(&b.url("/_tasks/../../etc/passwd")).await;
    assert_eq!(resp.status(), 404, "{body:?}");
    let (resp, body) = get(&b.url("/_tasks/nothex/result")).await;
    assert_error(&resp, &body, 404, "not_found");
    assert_eq!(b.metric("balancer_tasks_submitted_total").await, 1.0);
    assert_eq!(
        b.metric("balancer_tasks_finished_total{status=\"succeeded\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_answers_with_the_result_or_202() {
    let Some(redis) = redis() else { return };
    let (origin, _log) = recording(|s: Seen| async move {
        if s.uri.starts_with("/slow") {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            text(200, "slow done")
        } else {
            text(200, "fast done")
        }
    })
    .await;
    let b = start(&redis, "wait", &[&origin], &[]).await;
    let c = client();

    let t0 = Instant::now();
    let (resp, body) = call(
        &c,
        Method::GET,
        &b.url("/fast"),
        &[("prefer", "respond-async, wait=5")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 200, "{body:?}");
    assert_eq!(&body[..], b"fast done");
    assert_eq!(
        header(&resp, "preference-applied"),
        None,
        "the result itself, not an asynchronous answer"
    );
    let id = header(&resp, "x-task-id").expect("X-Task-Id").to_string();
    assert_eq!(id.len(), 28);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        t0.elapsed()
    );
    assert_eq!(view(&b, &id).await["status"], "succeeded");

    let t0 = Instant::now();
    let (resp, body) = call(
        &c,
        Method::GET,
        &b.url("/slow"),
        &[("prefer", "respond-async, wait=1")],
        "",
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(resp.status(), 202, "{body:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "wait=1 answered after {took:?}"
    );
    let v = json_of(&body);
    assert!(
        matches!(v["status"].as_str(), Some("queued" | "running")),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/_tasks/{id}").as_str())
    );
    wait_final(&b, &id, "succeeded").await;
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"slow done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_dedups_and_refuses_reuse() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|_| async { text(200, "once") }).await;
    let b = start(&redis, "idem", &[&origin], &[]).await;
    let c = client();
    let key = [("idempotency-key", "order-42")];

    let first = submit(&c, &b, Method::POST, "/pay", &key, "amount=5").await;
    let second = submit(&c, &b, Method::POST, "/pay", &key, "amount=5").await;
    assert_eq!(first, second, "same key, same request: same task");
    let v = wait_final(&b, &first, "succeeded").await;
    assert_eq!(v["idempotency_key"], "order-42");
    // Once finished, still the same task (and no new run).
    let third = submit(&c, &b, Method::POST, "/pay", &key, "amount=5").await;
    assert_eq!(third, first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.hits(), 1, "{:?}", seen(&log));

    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/pay"),
        &[("prefer", "respond-async"), ("idempotency-key", "order-42")],
        "amount=500",
    )
    .await;
    assert_error(&resp, &body, 422, "idempotency_key_reused");
    // Another key is another task.
    let other = submit(
        &c,
        &b,
        Method::POST,
        "/pay",
        &[("idempotency-key", "order-43")],
        "amount=5",
    )
    .await;
    assert_ne!(other, first);
    wait_final(&b, &other, "succeeded").await;
    assert_eq!(origin.hits(), 2);
    assert_eq!(b.metric("balancer_tasks_submitted_total").await, 2.0);
    assert_eq!(b.metric("balancer_tasks_duplicates_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_submission_and_field_errors() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|_| async { text(200, "ok") }).await;
    let b = start(&redis, "envelope", &[&origin], &[]).await;
    let c = client();

    let bytes: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff, b'\n', b'z'];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let id = submit_envelope(
        &c,
        &b,
        &json!({
            "method": "PUT",
            "path": "/blobs/9?v=2",
            "headers": {"x-env": "yes", "x-multi": ["a", "b"], "content-type": "application/octet-stream"},
            "body_base64": b64,
            "max_attempts": 2,
            "timeout": "5s",
        }),
    )
    .await;
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["max_attempts"], 2);
    let seen = seen(&log);
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.uri, "/blobs/9?v=2");
    assert_eq!(&s.body[..], &bytes[..]);
    assert_eq!(s.header("x-env"), Some("yes"));
    let multi: Vec<&str> = s
        .headers
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(s.header("content-type"), Some("application/octet-stream"));
    assert_eq!(s.header("x-task-id"), Some(id.as_str()));

    for (envelope, field) in [
        (r#"{"path":7}"#, "path"),
        (r#"{"method":"GET"}"#, "path"),
        (r#"{"path":"/","method":"GET /x"}"#, "method"),
        (r#"{"path":"/","max_attempts":0}"#, "max_attempts"),
        (r#"{"path":"/","body_base64":"%%%"}"#, "body_base64"),
        (
            r#"{"path":"/","body":"a","body_base64":"YQ=="}"#,
            "body_base64",
        ),
        (r#"{"path":"/","delay":"soon"}"#, "delay"),
        (r#"{"path":"/","timeout":0}"#, "timeout"),
        (r#"{"path":"/","headers":{"x":1}}"#, "headers.x"),
        (r#"{"path":"/","colour":"red"}"#, "colour"),
        ("{not json", "(body)"),
        ("[1,2]", "(body)"),
    ] {
        let (resp, body) = call(&c, Method::POST, &b.url("/_tasks"), &[], envelope).await;
        let e = assert_error(&resp, &body, 400, "invalid_task");
        assert_eq!(e["field"], field, "{envelope}: {e}");
        assert!(e["message"].is_string(), "{e}");
    }
    let (resp, body) = call(&c, Method::PUT, &b.url("/_tasks"), &[], "{}").await;
    assert_error(&resp, &body, 405, "method_not_allowed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.hits(), 1, "refused envelopes never run");
    assert_eq!(b.metric("balancer_tasks_submitted_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_is_413() {
    let Some(redis) = redis() else { return };
    let origin = Origin::named("ok").await;
    let b = start(
        &redis,
        "body-limit",
        &[&origin],
        &[("TASK_MAX_BODY_BYTES", "1KiB")],
    )
    .await;
    let c = client();

    let big = vec![b'x'; 2048];
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/upload"),
        &[("prefer", "respond-async")],
        big.clone(),
    )
    .await;
    assert_error(&resp, &body, 413, "body_too_large");

    let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/_tasks"),
        &[],
        json!({"path": "/upload", "body_base64": b64}).to_string(),
    )
    .await;
    assert_error(&resp, &body, 413, "body_too_large");

    // At the limit is fine, both ways.
    let exact = vec![b'y'; 1024];
    let id = submit(&c, &b, Method::POST, "/upload", &[], exact.clone()).await;
    wait_final(&b, &id, "succeeded").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&exact);
    let id = submit_envelope(&c, &b, &json!({"path": "/upload", "body_base64": b64})).await;
    wait_final(&b, &id, "succeeded").await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_succeeds() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|s: Seen| async move {
        if s.attempt() < 3 {
            text(503, format!("busy {}", s.attempt()))
        } else {
            text(200, "third time lucky")
        }
    })
    .await;
    let b = start(
        &redis,
        "retry-ok",
        &[&origin],
        &[("TASK_MAX_ATTEMPTS", "5")],
    )
    .await;
    let c = client();
    let id = submit(&c, &b, Method::POST, "/flaky", &[], "payload").await;
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["attempts"], 3, "{v}");
    assert_eq!(v["max_attempts"], 5, "{v}");
    assert_eq!(v["result"]["status"], 200, "{v}");
    let seen = seen(&log);
    let attempts: Vec<u32> = seen.iter().map(Seen::attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(seen.iter().all(|s| &s.body[..] == b"payload"), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.header("x-task-id") == Some(id.as_str())),
        "{seen:?}"
    );
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"third time lucky");
    assert_eq!(b.metric("balancer_task_retries_total").await, 2.0);
    assert_eq!(b.metric("balancer_task_attempts_total").await, 3.0);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_after_max_attempts() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|s: Seen| async move {
        let mut r = text(500, format!("broken on attempt {}", s.attempt()));
        r.headers_mut()
            .insert("x-why", http::HeaderValue::from_static("db down"));
        r
    })
    .await;
    let b = start(&redis, "dead", &[&origin], &[("TASK_MAX_ATTEMPTS", "3")]).await;
    let c = client();
    let id = submit(&c, &b, Method::POST, "/doomed", &[], "x").await;
    let v = wait_final(&b, &id, "dead").await;
    assert_eq!(v["attempts"], 3, "{v}");
    assert_eq!(v["max_attempts"], 3, "{v}");
    assert_eq!(v["result"]["status"], 500, "{v}");
    assert!(
        v["last_error"].as_str().is_some_and(|e| e.contains("500")),
        "{v}"
    );
    assert!(v["next_attempt_at"].is_null(), "{v}");
    // Longer than TASK_RETRY_MAX: a 4th attempt would have come by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.hits(), 3);
    let attempts: Vec<u32> = seen(&log).iter().map(Seen::attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);

    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(&body[..], b"broken on attempt 3");
    assert_eq!(header(&resp, "x-why"), Some("db down"));
    assert_eq!(header(&resp, "x-task-id"), Some(id.as_str()));
    assert_eq!(
        b.metric("balancer_tasks_finished_total{status=\"dead\"}")
            .await,
        1.0
    );
    assert_eq!(b.metric("balancer_task_retries_total").await, 2.0);
    assert_eq!(view(&b, &id).await["status"], "dead", "stays dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_fail_without_retry_but_429_is_retried() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|s: Seen| async move {
        match (s.uri.as_str(), s.attempt()) {
            ("/missing", _) => text(404, "no such thing"),
            ("/limited", 1) => text(429, "slow down"),
            _ => text(200, "fine"),
        }
    })
    .await;
    let b = start(
        &redis,
        "client-errors",
        &[&origin],
        &[("TASK_MAX_ATTEMPTS", "5")],
    )
    .await;
    let c = client();

    let id = submit(&c, &b, Method::GET, "/missing", &[], "").await;
    let v = wait_final(&b, &id, "failed").await;
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(v["result"]["status"], 404, "{v}");
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(&body[..], b"no such thing");

    let id = submit(&c, &b, Method::GET, "/limited", &[], "").await;
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["attempts"], 2, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls: Vec<(String, u32)> = seen(&log)
        .iter()
        .map(|s| (s.uri.clone(), s.attempt()))
        .collect();
    assert_eq!(
        calls,
        [
            ("/missing".to_string(), 1),
            ("/limited".to_string(), 1),
            ("/limited".to_string(), 2)
        ]
    );
    assert_eq!(
        b.metric("balancer_tasks_finished_total{status=\"failed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_only_queued_tasks() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|s: Seen| async move {
        if s.uri == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        text(200, "ran")
    })
    .await;
    let b = start(&redis, "cancel", &[&origin], &[]).await;
    let c = client();

    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/later"),
        &[("prefer", "respond-async"), ("x-task-delay", "30s")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202, "{body:?}");
    assert_eq!(header(&resp, "retry-after"), Some("30"));
    let id = json_of(&body)["id"].as_str().unwrap().to_string();
    let url = b.url(&format!("/_tasks/{id}"));

    let (resp, body) = call(&c, Method::DELETE, &url, &[], "").await;
    assert_eq!(resp.status(), 200, "{body:?}");
    let v = json_of(&body);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["finished_at"].is_string(), "{v}");

    let (resp, body) = call(&c, Method::DELETE, &url, &[], "").await;
    let e = assert_error(&resp, &body, 409, "not_cancellable");
    assert_eq!(e["task"]["status"], "cancelled", "{e}");
    assert_eq!(view(&b, &id).await["status"], "cancelled");
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_error(&resp, &body, 409, "no_result");
    let (resp, body) = call(
        &c,
        Method::DELETE,
        &b.url("/_tasks/019ad9c1b6f3aaaaaaaaaaaaaaaa"),
        &[],
        "",
    )
    .await;
    assert_error(&resp, &body, 404, "not_found");

    // A running task cannot be cancelled.
    let id = submit(&c, &b, Method::GET, "/slow", &[], "").await;
    wait_view(&b, &id, SETTLE, |v| v["status"] == "running").await;
    let (resp, body) = call(
        &c,
        Method::DELETE,
        &b.url(&format!("/_tasks/{id}")),
        &[],
        "",
    )
    .await;
    let e = assert_error(&resp, &body, 409, "not_cancellable");
    assert_eq!(e["task"]["status"], "running", "{e}");
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    let e = assert_error(&resp, &body, 409, "not_finished");
    assert_eq!(e["task"]["id"], id.as_str(), "{e}");
    wait_final(&b, &id, "succeeded").await;
    let uris: Vec<String> = seen(&log).iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/slow"], "the cancelled task never ran");
    assert_eq!(
        b.metric("balancer_tasks_finished_total{status=\"cancelled\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_dead_task() {
    let Some(redis) = redis() else { return };
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let (origin, log) = recording(move |_| {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                text(200, "fixed")
            } else {
                text(500, "broken")
            }
        }
    })
    .await;
    let b = start(
        &redis,
        "retry-dead",
        &[&origin],
        &[("TASK_MAX_ATTEMPTS", "2")],
    )
    .await;
    let c = client();
    let id = submit(&c, &b, Method::POST, "/job", &[], "data").await;
    let v = wait_final(&b, &id, "dead").await;
    assert_eq!(v["attempts"], 2, "{v}");
    assert_eq!(origin.hits(), 2);

    fixed.store(true, Ordering::SeqCst);
    let retry = b.url(&format!("/_tasks/{id}/retry"));
    let (resp, body) = call(&c, Method::POST, &retry, &[], "").await;
    assert_eq!(resp.status(), 202, "{body:?}");
    let r = json_of(&body);
    assert_eq!(r["id"], id.as_str());
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/_tasks/{id}").as_str())
    );
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["attempts"], 1, "attempts start again from 0: {v}");
    assert_eq!(v["result"]["status"], 200, "{v}");
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"fixed");
    let attempts: Vec<u32> = seen(&log).iter().map(Seen::attempt).collect();
    assert_eq!(attempts, [1, 2, 1]);

    let (resp, body) = call(&c, Method::POST, &retry, &[], "").await;
    let e = assert_error(&resp, &body, 409, "not_retryable");
    assert_eq!(e["task"]["status"], "succeeded", "{e}");
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/_tasks/019ad9c1b6f3aaaaaaaaaaaaaaaa/retry"),
        &[],
        "",
    )
    .await;
    assert_error(&resp, &body, 404, "not_found");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_runs_no_earlier() {
    let Some(redis) = redis() else { return };
    let (origin, log) = recording(|_| async { text(200, "on time") }).await;
    let b = start(&redis, "delay", &[&origin], &[]).await;
    let c = client();
    let t0 = Instant::now();
    let id = submit(
        &c,
        &b,
        Method::POST,
        "/later",
        &[("x-task-delay", "1s")],
        "",
    )
    .await;
    let v = view(&b, &id).await;
    assert_eq!(v["status"], "queued", "{v}");
    assert!(v["next_attempt_at"].is_string(), "{v}");
    assert!(v["started_at"].is_null(), "{v}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(origin.hits(), 0, "ran before its delay");
    assert_eq!(view(&b, &id).await["status"], "queued");

    let v = wait_final(&b, &id, "succeeded").await;
    assert!(v["next_attempt_at"].is_null(), "{v}");
    let seen = seen(&log);
    assert_eq!(seen.len(), 1);
    let after = seen[0].at.duration_since(t0);
    assert!(
        after >= Duration::from_millis(990),
        "ran {after:?} after submission, X-Task-Delay was 1s"
    );
    assert_eq!(seen[0].header("x-task-delay"), None, "not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_posted_to_allowed_hosts_only() {
    let Some(redis) = redis() else { return };
    let origin = Origin::named("work done").await;
    let (receiver, hooks) = recording(|_| async { text(204, "") }).await;
    let hook_url = format!("http://127.0.0.1:{}/hooks/done?x=1", receiver.addr.port());
    let c = client();

    // No allow-list: callbacks refused.
    let closed = start(
        &redis,
        "callbacks-off",
        &[&origin],
        &[("TASK_CALLBACK_ALLOW", "")],
    )
    .await;
    let (resp, body) = call(
        &c,
        Method::POST,
        &closed.url("/work"),
        &[("prefer", "respond-async"), ("x-callback-url", &hook_url)],
        "",
    )
    .await;
    let e = assert_error(&resp, &body, 400, "invalid_task");
    assert_eq!(e["field"], "X-Callback-Url", "{e}");

    let allow = format!("127.0.0.1:{}", receiver.addr.port());
    let b = start(
        &redis,
        "callbacks-on",
        &[&origin],
        &[("TASK_CALLBACK_ALLOW", &allow)],
    )
    .await;
    let other_port = format!("http://127.0.0.1:{}/hooks", dead_addr().await.port());
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/work"),
        &[("prefer", "respond-async"), ("x-callback-url", &other_port)],
        "",
    )
    .await;
    let e = assert_error(&resp, &body, 400, "invalid_task");
    assert_eq!(e["field"], "X-Callback-Url", "{e}");
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/_tasks"),
        &[],
        json!({"path": "/work", "callback_url": "http://example.com/hook"}).to_string(),
    )
    .await;
    assert_error(&resp, &body, 400, "invalid_task");
    assert_eq!(origin.hits(), 0, "refused submissions never run");

    let id = submit(
        &c,
        &b,
        Method::POST,
        "/work",
        &[("x-callback-url", &hook_url)],
        "",
    )
    .await;
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["callback_url"], hook_url.as_str());
    assert!(
        eventually(Duration::from_secs(5), || async {
            !seen(&hooks).is_empty()
        })
        .await,
        "no callback arrived"
    );
    let calls = seen(&hooks);
    let cb = &calls[0];
    assert_eq!(cb.method, "POST");
    assert_eq!(cb.uri, "/hooks/done?x=1");
    assert_eq!(cb.header("content-type"), Some("application/json"));
    assert_eq!(cb.header("x-task-id"), Some(id.as_str()));
    let sent = json_of(&cb.body);
    assert_eq!(sent["id"], id.as_str(), "{sent}");
    assert_eq!(sent["status"], "succeeded", "{sent}");
    assert_eq!(sent["result"]["status"], 200, "{sent}");
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.metric("balancer_task_callbacks_total").await == 1.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen(&hooks).len(), 1, "delivered once");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_follow_the_weights() {
    let Some(redis) = redis() else { return };
    let (lu, hu, sd) = (
        Origin::named("lu").await,
        Origin::named("hu").await,
        Origin::named("sundown").await,
    );
    let agent = Agent::start(None).await;
    let url = agent.url();
    let b = start(
        &redis,
        "weights",
        &[],
        &[("DEPLOYMENT_AGENT_URL", url.as_str())],
    )
    .await;
    agent.send(queue_frame(
        1,
        vec![
            item("lu", lu.addr, 90.0, Category::Low),
            item("hu", hu.addr, 10.0, Category::High),
            item("sd", sd.addr, 80.0, Category::Sundown),
        ],
    ));
    b.wait_version(1).await;
    let weight = |v: Value| v["weight"].as_f64().unwrap();
    let (w_lu, w_hu, w_sd) = (
        weight(b.backend(lu.addr).await),
        weight(b.backend(hu.addr).await),
        weight(b.backend(sd.addr).await),
    );
    assert_eq!((w_lu, w_hu, w_sd), (90.0, 10.0, 0.0));

    const N: usize = 300;
    let c = client();
    let mut ids = Vec::with_capacity(N);
    for chunk in 0..N / 25 {
        let batch = (0..25).map(|i| {
            let c = &c;
            let b = &b;
            async move {
                let env = json!({"method": "POST", "path": format!("/w/{}", chunk * 25 + i), "body": "x"});
                submit_envelope(c, b, &env).await
            }
        });
        ids.extend(futures_util::future::join_all(batch).await);
    }
    assert_eq!(ids.len(), N);
    let all_done = eventually(Duration::from_secs(30), || async {
        b.metric("balancer_tasks_finished_total{status=\"succeeded\"}")
            .await
            == N as f64
    })
    .await;
    assert!(
        all_done,
        "{} of {N} succeeded",
        b.metric("balancer_tasks_finished_total{status=\"succeeded\"}")
            .await
    );
    for s in ["failed", "dead"] {
        let name = format!("balancer_tasks_finished_total{{status=\"{s}\"}}");
        assert_eq!(b.metric(&name).await, 0.0, "{s}");
    }
    assert_eq!(sd.hits(), 0, "SUNDOWN gets no task");
    assert_eq!(lu.hits() + hu.hits(), N);
    let share = lu.hits() as f64 / N as f64;
    let expected = w_lu / (w_lu + w_hu);
    assert!(
        (share - expected).abs() <= 0.08,
        "LU got {} of {N} ({share:.3}), expected {expected:.3}",
        lu.hits()
    );
    // Spot-check a few views: each ran on one of the two scored backends.
    for id in ids.iter().step_by(60) {
        let v = view(&b, id).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        let backend = v["backend"].as_str().unwrap_or_default();
        assert!(
            backend.contains(&lu.addr.to_string()) || backend.contains(&hu.addr.to_string()),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stream_entries_are_dead_lettered() {
    let Some(redis) = redis() else { return };
    let origin = Origin::named("ok").await;
    let app = "garbage";
    let b = start(&redis, app, &[&origin], &[]).await;
    let c = client();
    // The workers create the consumer group on their first read: let them.
    let id = submit(&c, &b, Method::POST, "/before", &[], "").await;
    wait_final(&b, &id, "succeeded").await;

    let prefix = format!("rustybalancer:{app}:tasks:");
    let (stream, dead) = (format!("{prefix}stream"), format!("{prefix}dead-letter"));
    let mut conn = redis_conn(&redis).await;
    let no_task: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("foo")
        .arg("bar")
        .query_async(&mut conn)
        .await
        .unwrap();
    let no_record: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("task")
        .arg("019ad9c1b6f3aaaaaaaaaaaaaaaa")
        .query_async(&mut conn)
        .await
        .unwrap();

    let id = submit(&c, &b, Method::POST, "/after", &[], "").await;
    wait_final(&b, &id, "succeeded").await;
    let lettered = eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let dead = dead.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(&dead)
                .query_async(&mut conn)
                .await
                .unwrap();
            n >= 2
        }
    })
    .await;
    assert!(lettered, "the garbage entries never reached {dead}");
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&dead)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let mut originals = Vec::new();
    for (_, flat) in &entries {
        let fields: Vec<(&str, &str)> = flat
            .chunks(2)
            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
            .collect();
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert!(get("reason").is_some_and(|r| !r.is_empty()), "{fields:?}");
        originals.push(get("entry").unwrap_or_default().to_string());
    }
    originals.sort();
    let mut expected = vec![no_task, no_record];
    expected.sort();
    assert_eq!(originals, expected, "the dead letters name the entries");
    assert_eq!(b.metric("balancer_task_dead_letters_total").await, 2.0);
    // Released from the stream, and the workers still work.
    let left: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let id = submit(&c, &b, Method::POST, "/later-still", &[], "").await;
    wait_final(&b, &id, "succeeded").await;
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_newest_first_and_filters() {
    let Some(redis) = redis() else { return };
    let (origin, _log) = recording(|s: Seen| async move {
        if s.uri.starts_with("/missing") {
            text(404, "nope")
        } else {
            text(200, "yes")
        }
    })
    .await;
    let b = start(&redis, "listing", &[&origin], &[]).await;
    let c = client();
    let mut ids = Vec::new();
    for (i, path) in ["/ok", "/missing", "/ok", "/missing", "/ok"]
        .iter()
        .enumerate()
    {
        ids.push(submit(&c, &b, Method::POST, &format!("{path}/{i}"), &[], "").await);
        // Ids carry their millisecond: keep them apart so the order is the submission order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        wait_final(&b, id, if i % 2 == 1 { "failed" } else { "succeeded" }).await;
    }

    let mut listed = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = match &cursor {
            Some(c) => format!("/_tasks?limit=2&cursor={c}"),
            None => "/_tasks?limit=2".to_string(),
        };
        let (resp, body) = get(&b.url(&q)).await;
        assert_eq!(resp.status(), 200, "{body:?}");
        let page = json_of(&body);
        let tasks = page["tasks"].as_array().expect("tasks").clone();
        sizes.push(tasks.len());
        for t in &tasks {
            listed.push(t["id"].as_str().unwrap().to_string());
            assert!(t["status"].is_string() && t["attempts"] == 1, "{t}");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                break;
            }
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first, "pages {sizes:?}");
    assert_eq!(sizes[..2], [2, 2], "{sizes:?}");

    let (resp, body) = get(&b.url("/_tasks?status=failed")).await;
    assert_eq!(resp.status(), 200);
    let page = json_of(&body);
    let failed: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["status"], "failed", "{t}");
            t["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(failed, [ids[3].as_str(), ids[1].as_str()]);
    assert!(page["next_cursor"].is_null(), "{page}");
    let (_, body) = get(&b.url("/_tasks?status=succeeded&limit=10")).await;
    assert_eq!(json_of(&body)["tasks"].as_array().unwrap().len(), 3);
    let (_, body) = get(&b.url("/_tasks?status=queued")).await;
    assert_eq!(json_of(&body)["tasks"], json!([]));

    // The counts per status agree with the listings.
    let (resp, body) = get(&b.url("/_tasks/stats")).await;
    assert_eq!(resp.status(), 200, "{body:?}");
    let stats = json_of(&body);
    assert_eq!(
        stats["by_status"],
        json!({"queued": 0, "running": 0, "succeeded": 3, "failed": 2, "dead": 0, "cancelled": 0}),
        "{stats}"
    );
    assert_eq!(
        (&stats["queued"], &stats["running"]),
        (&json!(0), &json!(0))
    );
    assert!(stats["oldest_queued_age_s"].is_null(), "{stats}");
    let resp = c
        .request(
            Request::post(b.url("/_tasks/stats"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    for (q, field) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("cursor=not-an-id", "cursor"),
    ] {
        let (resp, body) = get(&b.url(&format!("/_tasks?{q}"))).await;
        let e = assert_error(&resp, &body, 400, "invalid_task");
        assert_eq!(e["field"], field, "{q}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_without_redis() {
    let (origin, log) = recording(|_| async { text(200, "proxied") }).await;
    let b = Balancer::over(&[&origin], &[("REDIS_HOST", "")]).await;
    let c = client();
    for (method, path) in [
        (Method::GET, "/_tasks"),
        (Method::POST, "/_tasks"),
        (Method::GET, "/_tasks/019ad9c1b6f3aaaaaaaaaaaaaaaa"),
    ] {
        let (resp, body) = call(&c, method, &b.url(path), &[], "{}").await;
        assert_error(&resp, &body, 503, "tasks_disabled");
    }
    let (resp, body) = call(
        &c,
        Method::POST,
        &b.url("/direct?q=1"),
        &[("prefer", "respond-async, wait=5")],
        "body",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"proxied");
    assert_eq!(header(&resp, "preference-applied"), None);
    assert_eq!(header(&resp, "x-task-id"), None);
    let seen = seen(&log);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/direct?q=1");
    assert_eq!(seen[0].header("x-task-id"), None);
    let (_, metrics) = get(&b.admin_url("/metrics")).await;
    assert!(
        !String::from_utf8_lossy(&metrics).contains("balancer_tasks_submitted_total"),
        "no task metrics while disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_carry_the_task_queue_depth() {
    let Some(redis) = redis() else { return };
    let origin = Origin::named("ok").await;
    let agent = Agent::start(None).await;
    agent.send(queue_frame(
        1,
        vec![item("a", origin.addr, 90.0, Category::Low)],
    ));
    let url = agent.url();
    let b = start(
        &redis,
        "reports",
        &[],
        &[("DEPLOYMENT_AGENT_URL", url.as_str())],
    )
    .await;
    b.wait_version(1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            agent
                .reports()
                .iter()
                .any(|r| r.task_queue_depth == Some(0))
        })
        .await,
        "no report with an empty task queue: {:?}",
        agent.reports().last()
    );

    let c = client();
    for i in 0..3 {
        submit(
            &c,
            &b,
            Method::POST,
            &format!("/later/{i}"),
            &[("x-task-delay", "30s")],
            "",
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            agent
                .reports()
                .iter()
                .any(|r| r.task_queue_depth == Some(3))
        })
        .await,
        "no report with 3 queued tasks: {:?}",
        agent
            .reports()
            .iter()
            .map(|r| r.task_queue_depth)
            .collect::<Vec<_>>()
    );
    assert_eq!(b.metric("balancer_tasks_queued").await, 3.0);
    assert_eq!(b.metric("balancer_tasks_delayed").await, 3.0);
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_are_truncated() {
    let Some(redis) = redis() else { return };
    let big: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let payload = Bytes::from(big.clone());
    let origin = Origin::start(handler(move |_| {
        let p = payload.clone();
        async move { text(200, p) }
    }))
    .await;
    let b = start(
        &redis,
        "truncate",
        &[&origin],
        &[("TASK_MAX_RESULT_BYTES", "100")],
    )
    .await;
    let c = client();
    let id = submit(&c, &b, Method::GET, "/big", &[], "").await;
    let v = wait_final(&b, &id, "succeeded").await;
    assert_eq!(v["result"]["bytes"], 1000, "{v}");
    assert_eq!(v["result"]["truncated"], true, "{v}");
    let (resp, body) = get(&b.url(&format!("/_tasks/{id}/result"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len(), 100);
    assert_eq!(&body[..], &big[..100]);
    assert_eq!(header(&resp, "x-task-result-truncated"), Some("true"));
    assert_eq!(header(&resp, "x-task-id"), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_finished_duplicate_answers_at_once() {
    let Some(redis) = redis() else { return };
    let (origin, _log) = recording(|_| async { text(200, "paid") }).await;
    let b = start(&redis, "idem-wait", &[&origin], &[]).await;
    let c = client();
    let key = ("idempotency-key", "order-7");
    let id = submit(&c, &b, Method::POST, "/pay", &[key], "amount=5").await;
    wait_final(&b, &id, "succeeded").await;
    // Its completion was announced long ago: the wait must not sit out a tick for it.
    for _ in 0..3 {
        let t0 = Instant::now();
        let (resp, body) = call(
            &c,
            Method::POST,
            &b.url("/pay"),
            &[("prefer", "respond-async, wait=1"), key],
            "amount=5",
        )
        .await;
        assert_eq!(resp.status(), 200, "{:?}", String::from_utf8_lossy(&body));
        assert_eq!(header(&resp, "x-task-id"), Some(id.as_str()));
        assert_eq!(&body[..], b"paid");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_callback_errors_name_the_envelope_field() {
    let Some(redis) = redis() else { return };
    let origin = Origin::named("x").await;
    let b = start(
        &redis,
        "cb-field",
        &[&origin],
        &[("TASK_CALLBACK_ALLOW", "hooks.internal")],
    )
    .await;
    let (resp, body) = call(
        &client(),
        Method::POST,
        &b.url("/_tasks"),
        &[],
        json!({"path": "/", "callback_url": "http://evil.example/"}).to_string(),
    )
    .await;
    let v = assert_error(&resp, &body, 400, "invalid_task");
    assert_eq!(v["field"], "callback_url", "{v}");
    let (resp, body) = call(
        &client(),
        Method::POST,
        &b.url("/"),
        &[
            ("prefer", "respond-async"),
            ("x-callback-url", "http://evil.example/"),
        ],
        "",
    )
    .await;
    let v = assert_error(&resp, &body, 400, "invalid_task");
    assert_eq!(v["field"], "X-Callback-Url", "{v}");
}

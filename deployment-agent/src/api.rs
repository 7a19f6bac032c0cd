//! The agent's HTTP API (`HOST_PORT_HTTP_DEPLOYMENT_AGENT`), CORS enabled:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the dashboard (one HTML page fed by `/stream`) |
//! | `GET /stats` | array of containers with sub-scores, overall score, category, weight, traffic |
//! | `GET /history` | the last 10 minutes: one pool sample per round, scaling marks |
//! | `GET /stream` | server-sent events: one `tick` per round (health, stats, sample, new events) |
//! | `GET /tasks/overview` | task queue figures and the latest tasks, from `BALANCER_URL`'s task API |
//! | `GET /tasks/{id}`, `GET /tasks/{id}/result` | that task's status or result, relayed from the balancer |
//! | `GET /queue` | the queue as last published to balancers (same JSON as the wire frame) |
//! | `GET /events?limit=N` | recorded decisions and lifecycle events, newest first |
//! | `GET /health` | `{"status":"ok"|"degraded", docker, redis, …}`; 200 while the agent runs |
//! | `GET /metrics` | Prometheus text |
//! | `POST /scale` | `{"desired": n}` → clamped to `DEFAULT_CONTAINER..=MAX_CONTAINERS`; needs the token when `AGENT_TOKEN` is set |
//! | `POST /sundown` | `{"name": "…"}` (name or id) → that container drains and stops, one fewer desired; token as `/scale` |
//!
//! Every error is JSON `{"error": "...", "message": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use log::info;
use protocol::net::{Accepted, Acceptor};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::history::Tick;
use crate::live::{Live, SseBody};
use crate::push::{QueueFrame, Reports};
use crate::reconcile::{Command, Snapshot, SundownRefused};
use crate::store::Store;
use crate::task_view::{self, TaskApi};

/// Largest request body accepted (`POST /scale` bodies are tiny).
const MAX_BODY: usize = 16 * 1024;
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub token: Option<String>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub queue: watch::Receiver<Option<QueueFrame>>,
    pub reports: Arc<Reports>,
    pub store: Store,
    pub commands: mpsc::Sender<Command>,
    pub bounds: (usize, usize),
    /// History and the `/stream` fan-out.
    pub live: Arc<Live>,
    /// A balancer's task API (`BALANCER_URL`), for the dashboard's task panel.
    pub tasks: Option<TaskApi>,
    /// Flips when the agent stops (ends the streams).
    pub stop: watch::Receiver<bool>,
}

type Resp = Response<Full<Bytes>>;
/// Every answer is a whole body but `/stream`'s.
pub type ApiBody = Either<Full<Bytes>, SseBody>;

/// Concurrent API connections; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// An API connection with no byte read or written for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the API on `listener` until `shutdown` flips: at most [`MAX_CONNECTIONS`] at once,
/// idle ones closed after [`IDLE_TIMEOUT`], request heads within 10 s, open requests given
/// 5 s at shutdown.
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .header_read_timeout(Duration::from_secs(10))
            .timer(hyper_util::rt::TokioTimer::new());
        b
    };
    tokio::spawn({
        let state = state.clone();
        state.live.clone().record(
            state.snapshot.clone(),
            shutdown.clone(),
            move |snap, tick| tick_event(snap, tick, &state),
        )
    });
    let acceptor = Acceptor::new("http api", listener, MAX_CONNECTIONS, IDLE_TIMEOUT);
    if let Ok(addr) = acceptor.local_addr() {
        info!("http api listening on {addr}");
    }
    let mut stopping = shutdown.clone();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = acceptor.next(stop.as_mut()) => {
                let Some(Accepted { stream, permit, .. }) = accepted else { break };
                let state = state.clone();
                let builder = builder.clone();
                let mut stop = shutdown.clone();
                conns.spawn(async move {
                    let _slot = permit;
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(req, &state).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Answers one request.
pub async fn handle(req: Request<Incoming>, state: &ApiState) -> Response<ApiBody> {
    let mut resp = if req.method() == Method::GET && req.uri().path() == "/stream" {
        stream(state)
    } else {
        route(req, state).await.map(Either::Left)
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn route(req: Request<Incoming>, state: &ApiState) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_MAX_AGE, "600")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
    }
    let read_only = method == Method::GET || method == Method::HEAD;
    match (path.as_str(), read_only) {
        ("/", true) | ("/dashboard", true) => {
            let mut r = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        ("/stats", true) => json_resp(StatusCode::OK, &stats_json(&state.snapshot.borrow())),
        ("/history", true) => json_resp(StatusCode::OK, &state.live.history_json()),
        ("/tasks/overview", true) => json_resp(
            StatusCode::OK,
            &match &state.tasks {
                Some(api) => api.overview().await,
                None => task_view::disabled(
                    "BALANCER_URL is not set: the agent does not know a balancer's task API",
                ),
            },
        ),
        ("/queue", true) => match state.queue.borrow().as_ref().map(|f| f.text.clone()) {
            Some(text) => raw_json(StatusCode::OK, Bytes::copy_from_slice(text.as_bytes())),
            None => raw_json(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(
                    br#"{"error":"not_observed","message":"the agent has not listed the pool yet; no queue is published"}"#,
                ),
            ),
        },
        ("/events", true) => events(req.uri().query(), state).await,
        ("/health", true) => json_resp(StatusCode::OK, &health_json(&state.snapshot.borrow(), state)),
        ("/metrics", true) => metrics(&state.snapshot.borrow(), &state.reports),
        ("/scale", false) if method == Method::POST => scale(req, state).await,
        ("/sundown", false) if method == Method::POST => sundown(req, state).await,
        (p, true) if p.starts_with("/tasks/") => task(&p["/tasks/".len()..], state).await,
        (
            "/" | "/dashboard" | "/stats" | "/queue" | "/events" | "/health" | "/metrics"
            | "/history" | "/stream" | "/tasks/overview",
            false,
        )
        | ("/scale" | "/sundown", _) => {
            let allow = if path == "/scale" || path == "/sundown" {
                "POST, OPTIONS"
            } else {
                "GET, HEAD, OPTIONS"
            };
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{method} is not allowed on {path}"),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {path}"),
        ),
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `/stats` rows.
fn stats_json(snap: &Snapshot) -> serde_json::Value {
    let total_weight: f64 = snap.containers.iter().filter_map(|v| v.weight).sum();
    let rows: Vec<serde_json::Value> = snap
        .containers
        .iter()
        .map(|v| {
            let c = &v.container;
            let s = c.scores;
            json!({
                "id": c.id,
                "name": c.name,
                "address": c.address,
                "image": c.image,
                "cpu_score": s.map(|s| s.cpu),
                "memory_score": s.map(|s| s.memory),
                "network_score": s.map(|s| s.network),
                "availability_score": s.map(|s| s.availability),
                "overall_score": s.map(|s| s.overall),
                "utilization_category": c.category,
                "state": c.category,
                "weight": v.weight.map(round3),
                "weight_share": v.weight.map(|w| {
                    if total_weight > 0.0 { round3(w / total_weight) } else { 0.0 }
                }),
                "uptime_s": round3(snap.at_ms.saturating_sub(c.created_ms) as f64 / 1000.0),
                "in_flight": v.in_flight,
                "requests_per_s": v.traffic.map(|t| round3(t.requests_per_s)),
                "latency_p50_ms": v.traffic.and_then(|t| t.latency_p50_ms).map(round3),
                "latency_p99_ms": v.traffic.and_then(|t| t.latency_p99_ms).map(round3),
                "errors_per_s": v.traffic.map(|t| round3(t.errors_per_s)),
                "concurrency": v.traffic.map(|t| round3(t.in_flight)),
                "created_ms": c.created_ms,
                "ready_ms": c.ready_ms,
                "scored_ms": c.scored_ms,
                "sundown_ms": c.sundown_ms,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

async fn events(query: Option<&str>, state: &ApiState) -> Resp {
    let mut limit = 100usize;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => match v.parse::<usize>() {
                Ok(n) if (1..=10_000).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "limit must be an integer in 1..=10000",
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("unknown query parameter {pair:?}"),
                );
            }
        }
    }
    match state.store.events(limit).await {
        Ok(list) => json_resp(StatusCode::OK, &json!(list)),
        Err(e) => {
            // Redis down: serve what the loop recorded in memory, and say so.
            let snap = state.snapshot.borrow().clone();
            let list: Vec<_> = snap.recent_events.iter().take(limit).collect();
            let mut r = json_resp(StatusCode::OK, &json!(list));
            if let Ok(v) =
                HeaderValue::from_str(&format!("redis unavailable ({e}); in-memory events"))
            {
                r.headers_mut().insert("x-events-source", v);
            }
            r
        }
    }
}

/// The `/health` document.
fn health_json(snap: &Snapshot, state: &ApiState) -> serde_json::Value {
    let ok = snap.docker_ok && snap.redis_ok && snap.image_ready;
    let sundown = snap
        .containers
        .iter()
        .filter(|v| !v.container.is_active())
        .count();
    json!({
            "status": if ok { "ok" } else { "degraded" },
            "at_ms": snap.at_ms,
            "docker": snap.docker_ok,
            "redis": snap.redis_ok,
            "image_ready": snap.image_ready,
            "desired": snap.desired,
            "active": snap.active,
            "queue_version": snap.queue_version,
            "sundown": sundown,
            "min": state.bounds.0,
            "max": state.bounds.1,
            "balancers": state.reports.connected(),
            "host_saturated": snap.host_saturated,
            "host_cpu_busy": snap.host_busy.map(round3),
            "task_queue_depth": snap.task_queue_depth,
            "token_required": state.token.is_some(),
            "tasks": state.tasks.is_some(),
    })
}

/// The `tick` event of `/stream` for one round.
fn tick_event(snap: &Snapshot, tick: &Tick, state: &ApiState) -> Bytes {
    let data = json!({
        "health": health_json(snap, state),
        "stats": stats_json(snap),
        "sample": tick.sample,
        "events": tick.events,
    });
    crate::live::event("tick", &data.to_string())
}

/// `GET /stream`: server-sent events until the client or the agent goes.
fn stream(state: &ApiState) -> Response<ApiBody> {
    match state.live.subscribe(state.stop.clone()) {
        Some(body) => {
            let mut r = Response::new(Either::Right(body));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            // Tells a buffering reverse proxy (nginx) to pass events through at once.
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            r
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            &format!(
                "{} event streams are open already; poll /stats and /health instead",
                crate::live::MAX_STREAMS
            ),
        )
        .map(Either::Left),
    }
}

/// `GET /tasks/{id}` and `/tasks/{id}/result`: relayed from the balancer's task API.
async fn task(rest: &str, state: &ApiState) -> Resp {
    let Some(api) = &state.tasks else {
        return error(
            StatusCode::NOT_FOUND,
            "tasks_not_configured",
            "BALANCER_URL is not set: the agent does not know a balancer's task API",
        );
    };
    let Some(path) = task_view::task_path(rest) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route /tasks/{rest}"),
        );
    };
    match api.get(&path).await {
        Ok(answer) => task_view::relay(answer),
        Err(reason) => error(StatusCode::BAD_GATEWAY, "balancer_unavailable", &reason),
    }
}

fn metrics(snap: &Snapshot, reports: &Reports) -> Resp {
    let out = crate::metrics::render(snap, reports);
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The JSON body of a control request, once its token has been checked.
async fn control_body(req: Request<Incoming>, state: &ApiState) -> Result<serde_json::Value, Resp> {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !protocol::auth::bearer_matches(presented, token) {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!(
                    "POST {} needs Authorization: Bearer <AGENT_TOKEN>",
                    req.uri().path()
                ),
            ));
        }
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the body must be at most {MAX_BODY} bytes"),
            ));
        }
    };
    // Not JSON at all reads as null: the callers say what they expected.
    Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn stopping() -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the agent is stopping",
    )
}

async fn sundown(req: Request<Incoming>, state: &ApiState) -> Resp {
    let body = match control_body(req, state).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(container) = body
        .get("name")
        .and_then(serde_json::Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a JSON body like {\"name\": \"rustybalancer-app-3\"} (a container name or id)",
        );
    };
    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(Command::Sundown { container, reply })
        .await
        .is_err()
    {
        return stopping();
    }
    match answer.await {
        Ok(Ok(done)) => json_resp(StatusCode::OK, &json!(done)),
        Ok(Err(refused @ SundownRefused::NotFound(_))) => {
            error(StatusCode::NOT_FOUND, "not_found", &refused.to_string())
        }
        Ok(Err(refused @ SundownRefused::AlreadySundown(_))) => {
            error(StatusCode::CONFLICT, "conflict", &refused.to_string())
        }
        Err(_) => stopping(),
    }
}

async fn scale(req: Request<Incoming>, state: &ApiState) -> Resp {
    let body = match control_body(req, state).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let desired = match body.get("desired").and_then(serde_json::Value::as_u64) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected a JSON body like {\"desired\": 3}",
            );
        }
    };
    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(Command::SetDesired { desired, reply })
        .await
        .is_err()
    {
        return stopping();
    }
    match answer.await {
        Ok(applied) => json_resp(
            StatusCode::OK,
            &json!({
                "requested": desired,
                "desired": applied,
                "min": state.bounds.0,
                "max": state.bounds.1,
            }),
        ),
        Err(_) => stopping(),
    }
}

fn json_resp(status: StatusCode, value: &serde_json::Value) -> Resp {
    raw_json(status, Bytes::from(value.to_string()))
}

fn raw_json(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_resp(status, &json!({ "error": code, "message": message }))
}

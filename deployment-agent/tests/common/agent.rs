//! Running the agent in tests, and talking to it as a balancer would.
//!
//! - [`AgentEnv`]: the agent's environment as a map, with fast test settings, one app
//!   identifier, network and Redis per test.
//! - [`Agent`]: `deployment_agent::run` in-process on port-0 listeners, stopped on `Drop`.
//! - [`AgentProcess`]: the real binary (for `kill -9`), killed on `Drop`.
//! - [`Cleanup`]: removes the test's containers (twice, in case a creation was in flight) and
//!   then its network.
//! - [`ws_connect`] / [`next_queue`]: a WebSocket subscriber; [`Traffic`]: a fake balancer
//!   that sends requests through the published queue and reports back like the real one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployment_agent::config::Config;
use deployment_agent::StartError;
use futures_util::{SinkExt, StreamExt};
use protocol::{BackendReport, Category, Message, Queue, Report};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{eventually, http_get, http_request, labelled_containers, LabelCleanup, TestNetwork};

/// The agent's environment for one test.
#[derive(Debug, Clone)]
pub struct AgentEnv {
    pub app: String,
    vars: BTreeMap<String, String>,
}

impl AgentEnv {
    /// Fast settings for `app` on `network`, Redis on `127.0.0.1:redis_port`.
    pub fn new(app: &str, image: &str, network: &str, redis_port: u16) -> AgentEnv {
        let mut vars = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            vars.insert(k.to_owned(), v.to_owned());
        };
        set("APP_IDENTIFIER", app);
        set("DOCKER_IMAGE", image);
        set("TARGET_PORT", &super::PLAYGROUND_PORT.to_string());
        set("DOCKER_NETWORK", network);
        set("REDIS_HOST", "127.0.0.1");
        set("REDIS_PORT", &redis_port.to_string());
        set("BIND_ADDRESS", "127.0.0.1");
        set("HOST_PORT_WS_DEPLOYMENT_AGENT", "0");
        set("HOST_PORT_HTTP_DEPLOYMENT_AGENT", "0");
        set("SAMPLE_PERIOD", "500ms");
        set("SCALE_CHECK_PERIOD", "1s");
        set("COOLDOWN_PERIOD", "1s");
        set("SCALE_DOWN_STABILIZATION", "3s");
        set("DRAIN_TIMEOUT", "10s");
        set("STOP_TIMEOUT", "2s");
        set("QUEUE_KEEPALIVE", "1s");
        set("READY_TIMEOUT", "30s");
        set("PROBE_TIMEOUT", "2s");
        set("DEFAULT_CONTAINER", "2");
        set("MAX_CONTAINERS", "3");
        set("CONTAINER_MEMORY", "64MiB");
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            if !host.is_empty() {
                set("DOCKER_HOST", &host);
            }
        }
        AgentEnv {
            app: app.to_owned(),
            vars,
        }
    }

    /// Sets (or overrides) one variable.
    pub fn set(mut self, name: &str, value: impl ToString) -> AgentEnv {
        self.vars.insert(name.to_owned(), value.to_string());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Parses the map like the binary parses its environment.
    pub fn config(&self) -> Config {
        Config::from_lookup(|name| self.vars.get(name).cloned())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"))
    }
}

/// The agent running in this process; stopped (aborted) on `Drop`.
pub struct Agent {
    pub ws: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

impl Agent {
    pub async fn start(env: &AgentEnv) -> Agent {
        let config = env.config();
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let (ws_addr, http_addr) = (ws.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(deployment_agent::run(config, ws, http, async move {
            let _ = stopped.await;
        }));
        Agent {
            ws: ws_addr,
            http: http_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http(&self) -> String {
        self.http.to_string()
    }

    pub fn ws(&self) -> String {
        self.ws.to_string()
    }

    /// Signals shutdown and waits (up to 10 s) for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("agent ended with an error: {e}"),
                Ok(Err(e)) => panic!("agent task failed: {e}"),
                Err(_) => panic!("agent did not stop within 10 s"),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The real `deployment-agent` binary, its output in a log file; SIGKILLed on `Drop`.
pub struct AgentProcess {
    child: Option<Child>,
    pub http: String,
    pub ws: String,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts the binary with `env` on the given loopback ports.
    pub fn start(env: &AgentEnv, ws_port: u16, http_port: u16, log: PathBuf) -> AgentProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open agent log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployment-agent"));
        cmd.env_clear()
            .envs(&env.vars)
            .env("HOST_PORT_WS_DEPLOYMENT_AGENT", ws_port.to_string())
            .env("HOST_PORT_HTTP_DEPLOYMENT_AGENT", http_port.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("spawn the deployment-agent binary");
        AgentProcess {
            child: Some(child),
            http: format!("127.0.0.1:{http_port}"),
            ws: format!("127.0.0.1:{ws_port}"),
            log,
        }
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the agent");
            let status = child.wait().expect("reap the agent");
            assert!(!status.success(), "a SIGKILLed agent cannot succeed");
        }
    }

    /// The last `lines` lines of its log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the test's containers (a second pass catches a creation that was in flight when
/// the agent stopped), then its network. Declare it before the agent, so the agent is
/// dropped (stopped) first.
pub struct Cleanup {
    labels: Option<LabelCleanup>,
    network: Option<TestNetwork>,
}

impl Cleanup {
    pub fn new(app: &str) -> Cleanup {
        let network = TestNetwork::create(app);
        Cleanup {
            labels: Some(LabelCleanup(app.to_owned())),
            network: Some(network),
        }
    }

    pub fn network(&self) -> &str {
        &self.network.as_ref().expect("network").name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            let app = labels.0.clone();
            drop(labels);
            std::thread::sleep(Duration::from_millis(300));
            if !labelled_containers(&app).is_empty() {
                drop(LabelCleanup(app));
            }
        }
        self.network.take();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://addr/ws`, with `Authorization: Bearer <token>` when given.
pub async fn ws_connect(
    addr: &str,
    token: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(ws)
}

/// The next queue frame (other frames are skipped) within `within`.
pub async fn next_queue(ws: &mut Ws, within: Duration) -> Result<Queue, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .map_err(|_| format!("no queue frame within {within:?}"))?;
        match frame {
            None => return Err("websocket closed".to_owned()),
            Some(Err(e)) => return Err(format!("websocket error: {e}")),
            Some(Ok(WsMessage::Text(text))) => match Message::decode(text.as_str()) {
                Ok(Message::Queue(q)) => return Ok(q),
                other => return Err(format!("unexpected frame {other:?}")),
            },
            Some(Ok(_)) => {}
        }
    }
}

/// `GET /queue` of the agent at `http`.
pub async fn get_queue(http: &str) -> Result<Queue, String> {
    let (status, body) = http_get(http, "/queue").await?;
    if status != 200 {
        return Err(format!("/queue answered {status}: {body}"));
    }
    match Message::decode(&body) {
        Ok(Message::Queue(q)) => Ok(q),
        other => Err(format!("/queue is not a queue: {other:?} ({body})")),
    }
}

/// `GET path` answering 200 with JSON.
pub async fn get_json(http: &str, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) = http_get(http, path).await?;
    if status != 200 {
        return Err(format!("{path} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))
}

/// `GET /stats` as an array.
pub async fn stats(http: &str) -> Result<Vec<serde_json::Value>, String> {
    match get_json(http, "/stats").await? {
        serde_json::Value::Array(rows) => Ok(rows),
        other => Err(format!("/stats is not an array: {other}")),
    }
}

/// `GET /events?limit=1000`, newest first.
pub async fn events(http: &str) -> Result<Vec<serde_json::Value>, String> {
    match get_json(http, "/events?limit=1000").await? {
        serde_json::Value::Array(rows) => Ok(rows),
        other => Err(format!("/events is not an array: {other}")),
    }
}

/// `POST /scale {"desired": n}`; returns status and body.
pub async fn post_scale(http: &str, desired: usize, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = format!("{{\"desired\":{desired}}}");
    http_request(http, "POST", "/scale", &headers, &body)
        .await
        .expect("POST /scale")
}

/// Rows of `/stats` that are ready (published) and not SUNDOWN.
pub fn active_ready(rows: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    rows.iter()
        .filter(|r| !r["ready_ms"].is_null() && r["utilization_category"] != "SUNDOWN")
        .collect()
}

/// Waits until `/stats` shows exactly `n` containers, all ready, scored (LU/MU/HU with every
/// sub-score) and in the queue; returns their rows.
pub async fn wait_scored_pool(http: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let what = format!("a pool of {n} scored containers");
    eventually(&what, within, Duration::from_millis(250), || async {
        let rows = stats(http).await?;
        let scored = rows
            .iter()
            .filter(|r| {
                matches!(r["utilization_category"].as_str(), Some("LU" | "MU" | "HU"))
                    && [
                        "cpu_score",
                        "memory_score",
                        "network_score",
                        "availability_score",
                        "overall_score",
                    ]
                    .iter()
                    .all(|k| r[*k].is_number())
            })
            .count();
        let queue = get_queue(http).await?;
        if rows.len() == n && scored == n && queue.items.len() == n {
            Ok(rows)
        } else {
            Err(format!(
                "{} rows, {scored} scored, {} queued: {rows:?}",
                rows.len(),
                queue.items.len()
            ))
        }
    })
    .await
}

/// Kinds and ids of events, oldest first: `(at_ms, kind, id)`.
pub fn event_list(events: &[serde_json::Value]) -> Vec<(u64, String, String)> {
    let mut list: Vec<(u64, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["at_ms"].as_u64().unwrap_or(0),
                e["kind"].as_str().unwrap_or("").to_owned(),
                e["details"]["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    list.reverse();
    list
}

/// What a [`Traffic`] run saw.
#[derive(Debug, Default)]
pub struct TrafficCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub reports: AtomicU64,
    /// Failures, for the assertion message.
    pub failures: Mutex<Vec<String>>,
    /// Successful requests per backend id.
    pub per_backend: Mutex<HashMap<String, u64>>,
    /// When (wall clock, ms) the last request to each backend id completed or failed.
    pub last_done_ms: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Default)]
struct Interval {
    started: u64,
    requests: u64,
    errors: u64,
    latencies: Vec<f64>,
}

/// The balancer's view: the latest queue and what is in flight, under one lock, so a report
/// made at version V counts every request picked from an older queue.
#[derive(Debug, Default)]
struct View {
    queue: Option<Queue>,
    in_flight: HashMap<String, u64>,
    interval: HashMap<String, Interval>,
    next: usize,
}

/// A fake balancer: subscribes to the queue over the WebSocket, sends sequential `GET path`
/// requests from one task per path to non-SUNDOWN items (least in flight, then round robin:
/// concurrent slow requests spread over every backend), and sends a `report`
/// every `report_every` with accurate in-flight counts at its current queue version.
pub struct Traffic {
    pub counts: Arc<TrafficCounts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    view: Arc<Mutex<View>>,
}

impl Traffic {
    pub async fn start(
        ws_addr: &str,
        token: Option<&str>,
        paths: &[&str],
        report_every: Duration,
    ) -> Traffic {
        let ws = ws_connect(ws_addr, token)
            .await
            .expect("traffic: websocket connect");
        let (mut sink, mut source) = ws.split();
        let view = Arc::new(Mutex::new(View::default()));
        let counts = Arc::new(TrafficCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();

        // Reader: keep the latest queue.
        tasks.push(tokio::spawn({
            let view = view.clone();
            async move {
                while let Some(Ok(frame)) = source.next().await {
                    if let WsMessage::Text(text) = frame {
                        if let Ok(Message::Queue(q)) = Message::decode(text.as_str()) {
                            let mut v = view.lock().unwrap();
                            if v.queue.as_ref().is_none_or(|old| q.version >= old.version) {
                                v.queue = Some(q);
                            }
                        }
                    }
                }
            }
        }));

        // Reporter.
        tasks.push(tokio::spawn({
            let (view, counts, stop) = (view.clone(), counts.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(report_every);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let report = {
                        let mut v = view.lock().unwrap();
                        let Some(version) = v.queue.as_ref().map(|q| q.version) else {
                            continue;
                        };
                        let mut ids: Vec<String> = v.in_flight.keys().cloned().collect();
                        ids.extend(v.interval.keys().cloned());
                        ids.sort();
                        ids.dedup();
                        let interval = std::mem::take(&mut v.interval);
                        let backends = ids
                            .into_iter()
                            .map(|id| {
                                let i = interval.get(&id);
                                let mut lat = i.map(|i| i.latencies.clone()).unwrap_or_default();
                                lat.sort_by(f64::total_cmp);
                                let pct = |p: f64| {
                                    (!lat.is_empty())
                                        .then(|| lat[((lat.len() - 1) as f64 * p).round() as usize])
                                };
                                BackendReport {
                                    in_flight: v.in_flight.get(&id).copied().unwrap_or(0),
                                    requests: i.map_or(0, |i| i.requests),
                                    started: Some(i.map_or(0, |i| i.started)),
                                    errors: i.map_or(0, |i| i.errors),
                                    latency_p50_ms: pct(0.5),
                                    latency_p99_ms: pct(0.99),
                                    id,
                                }
                            })
                            .collect();
                        let interval_ms = last.elapsed().as_millis() as u64;
                        last = Instant::now();
                        Report {
                            balancer: "test-balancer".to_owned(),
                            interval_ms,
                            queue_version: version,
                            backends,
                            task_queue_depth: None,
                        }
                    };
                    let text = Message::Report(report).encode();
                    if sink.send(WsMessage::text(text)).await.is_err() {
                        break;
                    }
                    counts.reports.fetch_add(1, Ordering::Relaxed);
                }
                let _ = sink.close().await;
            }
        }));

        // Workers, one per path.
        for path in paths {
            let (view, counts, stop) = (view.clone(), counts.clone(), stop.clone());
            let path = (*path).to_owned();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let picked = {
                        let mut v = view.lock().unwrap();
                        let candidates: Vec<(String, String)> = v
                            .queue
                            .as_ref()
                            .map(|q| {
                                q.items
                                    .iter()
                                    .filter(|i| i.category != Category::Sundown)
                                    .map(|i| (i.id.clone(), i.address.clone()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        if candidates.is_empty() {
                            None
                        } else {
                            // Least in flight first, round robin among equals.
                            v.next = v.next.wrapping_add(1);
                            let n = candidates.len();
                            let (id, addr) = (0..n)
                                .map(|k| &candidates[(v.next + k) % n])
                                .min_by_key(|(id, _)| v.in_flight.get(id).copied().unwrap_or(0))
                                .cloned()
                                .expect("candidates");
                            *v.in_flight.entry(id.clone()).or_default() += 1;
                            v.interval.entry(id.clone()).or_default().started += 1;
                            Some((id, addr))
                        }
                    };
                    let Some((id, addr)) = picked else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let started = Instant::now();
                    let result = http_get(&addr, &path).await;
                    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                    let ok = matches!(result, Ok((200, _)));
                    counts
                        .last_done_ms
                        .lock()
                        .unwrap()
                        .insert(id.clone(), deployment_agent::model::now_ms());
                    {
                        let mut v = view.lock().unwrap();
                        if let Some(n) = v.in_flight.get_mut(&id) {
                            *n -= 1;
                            if *n == 0 {
                                v.in_flight.remove(&id);
                            }
                        }
                        let i = v.interval.entry(id.clone()).or_default();
                        i.requests += 1;
                        i.latencies.push(elapsed);
                        if !ok {
                            i.errors += 1;
                        }
                    }
                    if ok {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        *counts.per_backend.lock().unwrap().entry(id).or_default() += 1;
                    } else {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        let what = match result {
                            Ok((status, body)) => format!("status {status}: {body}"),
                            Err(e) => e,
                        };
                        counts
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("{id} ({addr}) after {elapsed:.0} ms: {what}"));
                    }
                }
            }));
        }
        Traffic {
            counts,
            stop,
            tasks,
            view,
        }
    }

    /// The queue version this balancer currently uses.
    pub fn version(&self) -> Option<u64> {
        self.view.lock().unwrap().queue.as_ref().map(|q| q.version)
    }

    pub fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    /// Stops sending new requests and waits for the workers to finish theirs.
    pub async fn stop(mut self) -> Arc<TrafficCounts> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..).skip(2) {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.counts.clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

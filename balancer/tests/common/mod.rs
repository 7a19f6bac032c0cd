//! Test harness: real servers on loopback port 0.
//!
//! - [`Origin`]: an HTTP origin (hyper) with a handler closure and a request counter;
//!   dropping or [`Origin::kill`]ing it closes the listener *and* every open connection.
//! - [`Agent`]: a WebSocket server playing the deployment-agent: sends the frames the test
//!   pushes, records the frames balancers send back, optionally requires a token.
//! - [`Balancer`]: `balancer::run` on port-0 listeners with a config from a variable map.
//! - [`client`] / [`h2_client`]: pooled hyper clients; [`get`]/[`send`] helpers.

#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer::config::Config;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::{Category, Message, Queue, QueueItem};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A response with a body.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// An HTTP origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Origin {
    pub async fn start(h: Handler) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::on(listener, h)
    }

    /// Serves on an already-bound listener (to restart on a known port).
    pub fn on(listener: TcpListener, h: Handler) -> Origin {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, counter) = (h.clone(), counter.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = h(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, hits, task }
    }

    /// An origin answering `200 <name>` to everything.
    pub async fn named(name: &'static str) -> Origin {
        Origin::start(handler(move |_req| async move { text(200, name) })).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection, like a crashed process.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A queue item for `addr`.
pub fn item(id: &str, addr: SocketAddr, score: f64, category: Category) -> QueueItem {
    QueueItem {
        id: id.to_string(),
        name: format!("app-{id}"),
        address: addr.to_string(),
        score,
        category,
    }
}

/// A queue frame the agent built from the pool it has listed (`observed: true`).
pub fn queue_frame(version: u64, items: Vec<QueueItem>) -> String {
    Message::Queue(Queue {
        version,
        items,
        observed: true,
    })
    .encode()
}

/// A queue frame with `observed: false` (an agent that has not listed its pool yet, or one
/// from before the field).
pub fn unobserved_queue_frame(version: u64, items: Vec<QueueItem>) -> String {
    Message::Queue(Queue {
        version,
        items,
        observed: false,
    })
    .encode()
}

/// A WebSocket server playing the deployment-agent.
pub struct Agent {
    pub addr: SocketAddr,
    /// Frames sent to every connected balancer (and replayed to new ones: the last one).
    frames: broadcast::Sender<String>,
    last: Arc<Mutex<Option<String>>>,
    /// Text frames received from balancers.
    pub received: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Agent {
    pub async fn start(token: Option<&str>) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Agent::on(listener, token)
    }

    pub fn on(listener: TcpListener, token: Option<&str>) -> Agent {
        let addr = listener.local_addr().unwrap();
        let (frames, _) = broadcast::channel::<String>(64);
        let last = Arc::new(Mutex::new(None::<String>));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let expected = token.map(|t| format!("Bearer {t}"));
        let task = {
            let (frames, last, received) = (frames.clone(), last.clone(), received.clone());
            let (connections, refused) = (connections.clone(), refused.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let expected = expected.clone();
                    let refused = refused.clone();
                    let check =
                        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                            let got = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok());
                            match &expected {
                                Some(e) if got != Some(e.as_str()) => {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                    let mut r =
                                        http::Response::new(Some("unauthorized".to_string()));
                                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                                    Err(r)
                                }
                                _ => Ok(resp),
                            }
                        };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let mut rx = frames.subscribe();
                    let initial = last.lock().unwrap().clone();
                    let received = received.clone();
                    conns.spawn(async move {
                        let (mut sink, mut stream) = ws.split();
                        if let Some(f) = initial {
                            if sink.send(WsMessage::Text(f.into())).await.is_err() {
                                return;
                            }
                        }
                        loop {
                            tokio::select! {
                                f = rx.recv() => {
                                    let Ok(f) = f else { return };
                                    if sink.send(WsMessage::Text(f.into())).await.is_err() {
                                        return;
                                    }
                                }
                                m = stream.next() => match m {
                                    Some(Ok(WsMessage::Text(t))) => received.lock().unwrap().push(t.to_string()),
                                    Some(Ok(_)) => {}
                                    _ => return,
                                }
                            }
                        }
                    });
                }
            })
        };
        Agent {
            addr,
            frames,
            last,
            received,
            connections,
            refused,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends a raw text frame to every connected balancer; queue frames are also
    /// remembered and sent first to balancers that connect later.
    pub fn send(&self, text: String) {
        if text.contains("\"type\":\"queue\"") {
            *self.last.lock().unwrap() = Some(text.clone());
        }
        let _ = self.frames.send(text);
    }

    pub fn reports(&self) -> Vec<protocol::Report> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|t| match Message::decode(t) {
                Ok(Message::Report(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running balancer.
pub struct Balancer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Balancer {
    /// Starts with the given variables (on top of port 0, loopback, no agent unless set).
    pub async fn start(vars: &[(&str, &str)]) -> Balancer {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Balancer::start_on(proxy, vars).await
    }

    /// [`Balancer::start`] with the proxy listening on `proxy`.
    pub async fn start_on(proxy: TcpListener, vars: &[(&str, &str)]) -> Balancer {
        let mut map: HashMap<String, String> = HashMap::from([
            ("BIND_ADDRESS".into(), "127.0.0.1".into()),
            ("HOST_PORT_HTTP_BALANCER".into(), "0".into()),
            ("HOST_PORT_ADMIN_BALANCER".into(), "0".into()),
            ("DEPLOYMENT_AGENT_URL".into(), "".into()),
            ("REPORT_INTERVAL".into(), "200ms".into()),
            ("BALANCER_ID".into(), "test-balancer".into()),
            // Tasks off unless a test gives Redis (see tests/tasks.rs).
            ("REDIS_HOST".into(), "".into()),
        ]);
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        let config = Config::from_lookup(|k| map.get(k).cloned()).expect("valid test config");
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(balancer::run(config, proxy, admin, async {
            let _ = rx.await;
        }));
        Balancer {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts in static mode over the given origins.
    pub async fn over(origins: &[&Origin], extra: &[(&str, &str)]) -> Balancer {
        let list: Vec<String> = origins.iter().map(|o| o.addr.to_string()).collect();
        let list = list.join(",");
        let mut vars = vec![("STATIC_BACKENDS", list.as_str())];
        vars.extend_from_slice(extra);
        Balancer::start(&vars).await
    }

    /// Starts in static mode over the given addresses (origins, dead ports, …).
    pub async fn over_addrs(addrs: &[SocketAddr], extra: &[(&str, &str)]) -> Balancer {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let list = list.join(",");
        let mut vars = vec![("STATIC_BACKENDS", list.as_str())];
        vars.extend_from_slice(extra);
        Balancer::start(&vars).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Triggers graceful shutdown; returns the task to await.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("balancer already shut down")
    }

    /// `GET /queue` on the admin listener.
    pub async fn queue(&self) -> serde_json::Value {
        let (_, body) = get(&self.admin_url("/queue")).await;
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until the admin `/queue` reports `version`.
    pub async fn wait_version(&self, version: u64) {
        for _ in 0..200 {
            if self.queue().await["version"] == version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("queue v{version} never applied: {}", self.queue().await);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends `req` and collects the response.
pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let resp = c.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    (Response::from_parts(parts, ()), body)
}

pub async fn get(url: &str) -> (Response<()>, Bytes) {
    let req = Request::get(url).body(Full::default()).unwrap();
    send(&client(), req).await
}

/// Polls `f` until it returns true, up to `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Balancer {
    /// The value of an unlabelled metric on the admin `/metrics` page.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = get(&self.admin_url("/metrics")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    /// The admin `/queue` entry of the backend at `addr`.
    pub async fn backend(&self, addr: SocketAddr) -> serde_json::Value {
        let q = self.queue().await;
        q["backends"]
            .as_array()
            .and_then(|bs| {
                bs.iter()
                    .find(|b| b["address"] == addr.to_string())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{addr} not in the queue: {q}"))
    }
}

/// An address nothing listens on (bound, then closed): connecting is refused at once.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Binds `addr` again once its previous listener is gone (an aborted task lets go of its
/// socket on the runtime's next turn).
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..250 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} never became free");
}

/// What a [`RawOrigin`] does once it has read a whole request.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Closes the connection without answering (a crash after the request arrived).
    CloseAfterRequest,
    /// Sends a head announcing 1000 bytes, 10 of them, then closes.
    CloseMidResponse,
}

/// A hand-written TCP origin that reads each request (head and `Content-Length` body) and
/// then misbehaves. `hits` counts the requests read in full.
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(how: Misbehaviour) -> RawOrigin {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                conns.spawn(async move {
                    let mut conn = RawConn::new(stream);
                    if conn.read_request().await.is_none() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Misbehaviour::CloseMidResponse = how {
                        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789";
                        let _ = conn.stream.write_all(partial).await;
                        let _ = conn.stream.flush().await;
                    }
                });
            }
        });
        RawOrigin { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One raw TCP connection, for what a well-behaved client library cannot do: send a head
/// byte by byte, oversized heads, nothing at all.
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn new(stream: tokio::net::TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn::new(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes into the buffer; `false` on EOF or error (reset).
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads a head (request or response): `None` if the connection ends first. Values
    /// as text (bytes that are not UTF-8 replaced), trimmed.
    async fn read_head(&mut self) -> Option<(String, Vec<(String, String)>)> {
        let (first, fields) = self.read_head_bytes().await?;
        let fields = fields
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).trim().to_string()))
            .collect();
        Some((first, fields))
    }

    /// [`RawConn::read_head`] with the values as sent (only the spaces and tabs around them
    /// taken off), names lower-cased, in the order sent.
    async fn read_head_bytes(&mut self) -> Option<(String, Vec<(String, Vec<u8>)>)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).take(end).collect();
                let mut lines = crlf_lines(&head);
                let first = String::from_utf8_lossy(lines.next().unwrap_or_default());
                let fields = lines
                    .filter_map(|l| {
                        let colon = l.iter().position(|b| *b == b':')?;
                        let name = String::from_utf8_lossy(&l[..colon]);
                        let value = l[colon + 1..].trim_ascii().to_vec();
                        Some((name.trim().to_ascii_lowercase(), value))
                    })
                    .collect();
                return Some((first.into_owned(), fields));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn read_body(&mut self, len: usize) -> Option<Vec<u8>> {
        while self.buf.len() < len {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..len).collect())
    }

    fn content_length<V: AsRef<[u8]>>(headers: &[(String, V)]) -> usize {
        headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| String::from_utf8_lossy(v.as_ref()).trim().parse().ok())
            .unwrap_or(0)
    }

    /// Reads one request with its `Content-Length` body (origin side).
    pub async fn read_request(&mut self) -> Option<(String, Vec<u8>)> {
        let (line, headers) = self.read_head().await?;
        let body = self.read_body(RawConn::content_length(&headers)).await?;
        Some((line, body))
    }

    /// Reads one response with its `Content-Length` body; `None` if the connection ends
    /// (or is reset) before a whole response arrived.
    pub async fn response(&mut self) -> Option<RawResponse> {
        let (line, headers) = self.read_head().await?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let body = self.read_body(RawConn::content_length(&headers)).await?;
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// [`RawConn::response`]'s status line and fields, the values as sent (see
    /// [`RawConn::read_head_bytes`]); the body is read and left out.
    pub async fn response_fields(&mut self) -> Option<(String, Vec<(String, Vec<u8>)>)> {
        let (line, fields) = self.read_head_bytes().await?;
        self.read_body(RawConn::content_length(&fields)).await?;
        Some((line, fields))
    }

    /// Waits for the peer to close (EOF or reset), keeping whatever it sends (see
    /// [`RawConn::unread`]). Returns how long that took, or `None` if it is still open
    /// after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let closed = tokio::time::timeout(limit, async { while self.fill().await {} }).await;
        closed.ok().map(|()| start.elapsed())
    }

    /// Bytes received but not consumed as a response yet.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }
}

/// The lines of `head`, split at each CRLF (as `str::split("\r\n")` splits text).
fn crlf_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let line = rest?;
        match line.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = Some(&line[i + 2..]);
                Some(&line[..i])
            }
            None => rest.take(),
        }
    })
}

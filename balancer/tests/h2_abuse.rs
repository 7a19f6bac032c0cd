//! HTTP/2 abuse on one connection: rapid reset, CONTINUATION floods, zero flow-control
//! windows and more concurrent streams than advertised. The abusive connection is cut off
//! or held in check, memory stays bounded, and other clients are still served.
//!
//! The balancer runs in this process, so memory is the test process's VmRSS; the tests
//! take [`SERIAL`] so that one test's allocations do not show in another's figures.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h2::Reason;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1 << 20;

/// The test process's resident set, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// A well-behaved client on its own connections: GETs `path` until stopped, counting
/// 200s and attempts.
struct Bystander {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Bystander {
    fn start(url: String) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, ok, total) = (stop.clone(), ok.clone(), total.clone());
            tokio::spawn(async move {
                let (h1, h2) = (client(), h2_client());
                while !stop.load(Ordering::SeqCst) {
                    let c = if total.load(Ordering::SeqCst) % 2 == 0 {
                        &h1
                    } else {
                        &h2
                    };
                    let req = Request::get(&url).body(Full::default()).unwrap();
                    let done = tokio::time::timeout(Duration::from_secs(2), async {
                        let resp = c.request(req).await.ok()?;
                        let status = resp.status();
                        resp.into_body().collect().await.ok()?;
                        Some(status)
                    })
                    .await;
                    total.fetch_add(1, Ordering::SeqCst);
                    if let Ok(Some(s)) = done {
                        if s == 200 {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        Bystander {
            stop,
            ok,
            total,
            task,
        }
    }

    /// Stops once at least `min` requests were made; returns (200s, attempts).
    async fn finish(self, min: usize) -> (usize, usize) {
        assert!(
            eventually(Duration::from_secs(5), || {
                let t = self.total.clone();
                async move { t.load(Ordering::SeqCst) >= min }
            })
            .await,
            "the bystander made only {} requests",
            self.total.load(Ordering::SeqCst)
        );
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.total.load(Ordering::SeqCst),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Hand-written frames
// ---------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal header field without indexing, new name (names and values under 127 bytes).
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// `GET <path>` on `http://balancer`, no dynamic table use.
fn request_block(path: &str) -> Vec<u8> {
    // :method GET, :scheme http (static table), then :path and :authority by indexed name.
    let mut out = vec![0x82, 0x86, 0x04, path.len() as u8];
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&[0x01, 8]);
    out.extend_from_slice(b"balancer");
    out
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM frame.
    fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
}

/// How a raw connection's reading ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Still open when the time was up.
    Open,
}

struct RawH2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS, and acknowledges the server's.
    async fn connect(addr: std::net::SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        let mut c = RawH2 {
            stream,
            buf: Vec::new(),
        };
        let (frames, end) = c
            .read_until(Duration::from_secs(2), |f| f.kind == SETTINGS)
            .await;
        assert_eq!(end, End::Open, "closed during the handshake: {frames:?}");
        assert!(frames
            .iter()
            .any(|f| f.kind == SETTINGS && f.flags & ACK == 0));
        c.stream
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        c
    }

    /// Sends bytes; an error (the server already closed) is not one for the test.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads frames until `stop` matches one, the connection closes, or `timeout`.
    async fn read_until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> (Vec<Frame>, End) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let f = Frame {
                    kind: self.buf[3],
                    flags: self.buf[4],
                    stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: self.buf[9..9 + len].to_vec(),
                };
                self.buf.drain(..9 + len);
                let done = stop(&f);
                frames.push(f);
                if done {
                    return (frames, End::Open);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return (frames, End::Open),
                Ok(Ok(0)) | Ok(Err(_)) => return (frames, End::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// An h2 (prior knowledge) client connection from the `h2` crate; the connection task's
/// result tells how the server ended it.
async fn h2_connection(
    addr: std::net::SocketAddr,
    builder: h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = builder.handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

fn get_request(b: &Balancer, path: &str) -> Request<()> {
    Request::get(b.url(path)).body(()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rapid_reset_gets_the_connection_cut_and_others_are_served() {
    let _serial = SERIAL.lock().await;
    let origin = Origin::named("ok").await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (resp, _) = get(&b.url("/warm-up")).await;
    assert_eq!(resp.status(), 200);
    let before = rss();
    let bystander = Bystander::start(b.url("/bystander"));

    // One connection opens 1,000 streams and cancels each at once (the dropped response
    // future makes the h2 crate send RST_STREAM(CANCEL) right after the HEADERS).
    let (mut send, conn) = h2_connection(b.addr, h2::client::Builder::new()).await;
    let mut opened = 0;
    let mut refused = None;
    for i in 0..1000 {
        if let Err(e) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
            refused = Some(e);
            break;
        }
        match send.send_request(get_request(&b, &format!("/reset/{i}")), true) {
            Ok((response, _)) => drop(response),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the abusive connection was still open 5 s after the burst")
        .unwrap();
    eprintln!(
        "rapid reset: opened {opened} streams; send error: {refused:?}; connection ended: {ended:?}; origin hits: {}",
        origin.hits()
    );
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes. Whichever side of the client
    // reads it first reports it: the request sender or the connection future. The client
    // may also never read it: the server closes with the client's unread frames in its
    // buffer, so the kernel resets the connection and the GOAWAY can be lost; then the
    // connection fails with an I/O error (broken pipe, reset). Either way it was cut.
    let ended = ended.expect_err("the abusive connection ended cleanly");
    match [refused.as_ref(), Some(&ended)]
        .into_iter()
        .flatten()
        .find(|e| e.is_go_away())
    {
        Some(go_away) => assert_eq!(
            go_away.reason(),
            Some(Reason::ENHANCE_YOUR_CALM),
            "{go_away:?}"
        ),
        None => assert!(
            ended.is_io(),
            "neither a GOAWAY nor a cut connection: send {refused:?}, connection {ended:?}"
        ),
    }

    let (ok, total) = bystander.finish(200).await;
    let growth = rss().saturating_sub(before);
    eprintln!(
        "rapid reset: bystander {ok}/{total} ok; RSS growth {} KiB",
        growth / 1024
    );
    assert!(ok * 100 >= total * 99, "bystander: only {ok}/{total} ok");
    assert!(growth < 50 * MIB, "RSS grew by {} MiB", growth / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_continuation_flood_is_cut_off_before_the_origin() {
    let _serial = SERIAL.lock().await;
    let origin = Origin::named("ok").await;
    let b = Balancer::over(&[&origin], &[]).await;

    // Many small CONTINUATION frames, 100 KiB in all (MAX_HEADER_BYTES is 32 KiB), never
    // END_HEADERS.
    let mut c = RawH2::connect(b.addr).await;
    let mut flood = frame(HEADERS, END_STREAM, 1, &request_block("/flood"));
    let mut fragment = Vec::new();
    for i in 0..9 {
        fragment.extend(literal(&format!("x-flood-{i}"), &"a".repeat(100)));
    }
    for _ in 0..(100 * 1024 / fragment.len()) {
        flood.extend(frame(CONTINUATION, 0, 1, &fragment));
    }
    let _ = c.send(&flood).await;
    let (frames, end) = c
        .read_until(Duration::from_secs(3), |f| f.kind == GOAWAY)
        .await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    eprintln!(
        "continuation flood (small frames): goaway code {:?}, end {end:?}, frames {:?}",
        goaway.and_then(Frame::error_code),
        frames.iter().map(|f| f.kind).collect::<Vec<_>>()
    );
    let goaway = goaway.expect("no GOAWAY after a CONTINUATION flood");
    assert_eq!(
        goaway.error_code(),
        Some(u32::from(Reason::ENHANCE_YOUR_CALM))
    );
    let (_, end) = c.read_until(Duration::from_secs(3), |_| false).await;
    assert_eq!(end, End::Closed, "the connection stayed open after GOAWAY");

    // Few big frames (under the frame-count limit), 64 KiB in all: the header block is
    // over the limit, so the request is refused one way or another, never forwarded.
    let mut c = RawH2::connect(b.addr).await;
    let mut big = Vec::new();
    for i in 0..140 {
        big.extend(literal(&format!("x-big-{i}"), &"b".repeat(110)));
    }
    let mut flood = frame(HEADERS, END_STREAM, 1, &request_block("/flood-big"));
    for chunk in big.chunks(16 * 1024) {
        flood.extend(frame(CONTINUATION, 0, 1, chunk));
    }
    let mut more = Vec::new();
    for i in 0..300 {
        more.extend(literal(&format!("x-more-{i}"), &"c".repeat(100)));
    }
    for chunk in more.chunks(16 * 1024) {
        flood.extend(frame(CONTINUATION, 0, 1, chunk));
    }
    flood.extend(frame(CONTINUATION, END_HEADERS, 1, &literal("x-last", "1")));
    let _ = c.send(&flood).await;
    let (frames, end) = c
        .read_until(Duration::from_secs(3), |f| {
            f.kind == GOAWAY || (f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM))
        })
        .await;
    let answer = frames
        .iter()
        .find(|f| f.kind == GOAWAY || (f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM)));
    eprintln!(
        "continuation flood (big frames): answer {:?} code {:?}, end {end:?}",
        answer.map(|f| f.kind),
        answer.and_then(Frame::error_code)
    );
    assert!(
        answer.is_some() || end == End::Closed,
        "no answer to an oversized header block: {frames:?}"
    );
    // hyper answers 431 on the stream: a HEADERS frame whose :status is not the indexed
    // 200 (0x88).
    if let Some(f) = answer.filter(|f| f.kind == HEADERS) {
        assert_ne!(
            f.payload.first(),
            Some(&0x88),
            "an oversized request got 200"
        );
    }
    assert!(
        !frames.iter().any(|f| f.kind == DATA && f.stream == 1),
        "an oversized request got a body back"
    );

    assert_eq!(origin.hits(), 0, "the origin saw a flooded request");
    let (resp, body) = get(&b.url("/after")).await;
    assert_eq!(resp.status(), 200, "{body:?}");
    let resp = h2_client()
        .request(
            Request::get(b.url("/after-h2"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_window_readers_pin_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let big = Bytes::from(vec![b'x'; MIB]);
    let origin = {
        let big = big.clone();
        Origin::start(handler(move |req| {
            let big = big.clone();
            async move {
                if req.uri().path().starts_with("/big") {
                    text(200, big)
                } else {
                    text(200, "ok")
                }
            }
        }))
        .await
    };
    let b = Balancer::over(&[&origin], &[]).await;
    let (resp, _) = get(&b.url("/warm-up")).await;
    assert_eq!(resp.status(), 200);
    let before = rss();

    // SETTINGS_INITIAL_WINDOW_SIZE=0 and never a WINDOW_UPDATE: 50 streams of 1 MiB.
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let (send, conn) = h2_connection(b.addr, builder).await;
    let mut held = Vec::new();
    for i in 0..50 {
        let mut send = send.clone().ready().await.expect("stream refused");
        let (response, _) = send
            .send_request(get_request(&b, &format!("/big/{i}")), true)
            .unwrap();
        held.push(response);
    }
    let mut responses = Vec::new();
    for r in held {
        let resp = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("no response head")
            .expect("stream failed");
        assert_eq!(resp.status(), 200);
        responses.push(resp);
    }
    // Give the balancer time to pull (and buffer) what it will.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let growth = rss().saturating_sub(before);
    let bystander = Bystander::start(b.url("/bystander"));
    // A normal reader still gets a whole 1 MiB body.
    let resp = h2_client()
        .request(
            Request::get(b.url("/big/normal"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("normal 1 MiB download stalled")
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), MIB);
    let (ok, total) = bystander.finish(100).await;
    let growth = growth.max(rss().saturating_sub(before));
    eprintln!(
        "zero window: bystander {ok}/{total} ok; RSS growth {} KiB with 50 stalled 1 MiB streams; origin hits {}",
        growth / 1024,
        origin.hits()
    );
    assert_eq!(ok, total, "bystander: only {ok}/{total} ok");
    assert!(growth < 50 * MIB, "RSS grew by {} MiB", growth / MIB);
    assert!(!conn.is_finished(), "the zero-window connection was closed");
    drop(responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_max_concurrent_streams_is_advertised_and_enforced() {
    let _serial = SERIAL.lock().await;
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (current, peak) = (current.clone(), peak.clone());
        Origin::start(handler(move |req| {
            let (current, peak) = (current.clone(), peak.clone());
            async move {
                if req.uri().path().starts_with("/slow") {
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    current.fetch_sub(1, Ordering::SeqCst);
                }
                text(200, "ok")
            }
        }))
        .await
    };
    let b = Balancer::over(&[&origin], &[("H2_MAX_CONCURRENT_STREAMS", "10")]).await;

    // The h2 crate's client: the advertised limit (read from the connection each time it
    // is polled), and 50 requests queued behind it.
    let tcp = TcpStream::connect(b.addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let _conn = {
        let seen = seen.clone();
        tokio::spawn(std::future::poll_fn(move |cx| {
            let r = std::pin::Pin::new(&mut conn).poll(cx);
            seen.store(conn.max_concurrent_send_streams(), Ordering::SeqCst);
            r
        }))
    };
    let send = send.ready().await.unwrap();
    let advertised = eventually(Duration::from_secs(2), || {
        let n = seen.load(Ordering::SeqCst);
        async move { n == 10 }
    })
    .await;
    assert!(
        advertised,
        "advertised {} concurrent streams",
        seen.load(Ordering::SeqCst)
    );
    let mut tasks = Vec::new();
    for i in 0..50 {
        let send = send.clone();
        let req = get_request(&b, &format!("/slow/{i}"));
        tasks.push(tokio::spawn(async move {
            let mut send = send.ready().await?;
            let (resp, _) = send.send_request(req, true)?;
            Ok::<_, h2::Error>(resp.await?.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    eprintln!(
        "concurrent streams (h2 client): peak {} at the origin",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(peak.load(Ordering::SeqCst), 10);

    // A client ignoring the limit: 50 HEADERS at once. Streams past 10 are refused.
    peak.store(0, Ordering::SeqCst);
    let hits_before = origin.hits();
    let mut c = RawH2::connect(b.addr).await;
    let mut burst = Vec::new();
    for i in 0..50u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &request_block(&format!("/slow/raw-{i}")),
        ));
    }
    c.send(&burst).await.unwrap();
    let (frames, end) = c.read_until(Duration::from_secs(2), |_| false).await;
    let refused = frames
        .iter()
        .filter(|f| {
            f.kind == RST_STREAM && f.error_code() == Some(u32::from(Reason::REFUSED_STREAM))
        })
        .count();
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    let answered = frames
        .iter()
        .filter(|f| f.kind == HEADERS && f.stream != 0)
        .count();
    eprintln!(
        "concurrent streams (raw): {refused} REFUSED_STREAM, {answered} answered, goaway {:?}, end {end:?}, origin peak {}, origin hits {}",
        goaway.and_then(Frame::error_code),
        peak.load(Ordering::SeqCst),
        origin.hits() - hits_before
    );
    assert!(peak.load(Ordering::SeqCst) <= 10);
    assert!(origin.hits() - hits_before <= 10);
    assert!(
        refused >= 40 || goaway.is_some(),
        "streams past the limit were neither refused nor the connection closed"
    );
    let (resp, _) = get(&b.url("/after")).await;
    assert_eq!(resp.status(), 200);
}

/// A raw HTTP/1.1 origin: `/big` gets an 8 MiB body, written until the balancer stops
/// taking it; anything else gets `ok`. Records when a `/big` connection was closed under it.
async fn stall_origin() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let big = head.starts_with(b"GET /big");
                    head.drain(..end + 4);
                    if !big {
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let total = 8 * MIB;
                    let mut wrote = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while wrote.is_ok() && sent < total {
                        wrote = s.write_all(&chunk).await;
                        sent += chunk.len();
                    }
                    if wrote.is_err() {
                        seen.lock().unwrap().push(Instant::now());
                        return;
                    }
                }
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_h2_stream_releases_its_backend_connection_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let (origin, closed) = stall_origin().await;
    let b = Balancer::over_addrs(&[origin], &[("IDLE_TIMEOUT", "2s")]).await;

    // The stream's window (64 KiB) is never given back; the connection's is large, so the
    // connection itself stays usable and busy with small requests.
    let mut builder = h2::client::Builder::new();
    builder.initial_connection_window_size(16 * MIB as u32);
    let (send, conn) = h2_connection(b.addr, builder).await;
    let mut big = send.clone().ready().await.expect("ready");
    let (response, _) = big
        .send_request(get_request(&b, "/big"), true)
        .expect("send /big");
    let resp = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("a response head")
        .expect("stream failed");
    assert_eq!(resp.status(), 200);
    let stalled_at = Instant::now();

    // Small requests on the same connection every 200 ms for 6 s: the client connection is
    // never idle, so only the stall watchdog can free the backend connection.
    let mut ok = 0;
    let mut total = 0;
    while stalled_at.elapsed() < Duration::from_secs(6) {
        let mut s = send.clone().ready().await.expect("ready");
        let (r, _) = s
            .send_request(get_request(&b, "/small"), true)
            .expect("send");
        total += 1;
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), r).await {
            let mut body = r.into_body();
            let mut got = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            if got == b"ok" {
                ok += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cut = closed.lock().unwrap().clone();
    eprintln!(
        "stalled stream: origin connection closed after {:?}; small requests {ok}/{total}",
        cut.first().map(|t| t.duration_since(stalled_at))
    );
    let after = cut
        .first()
        .map(|t| t.duration_since(stalled_at))
        .expect("the backend connection of the stalled stream was never closed");
    assert!(
        after >= Duration::from_millis(1_500) && after <= Duration::from_millis(4_500),
        "closed {after:?} after the stall (IDLE_TIMEOUT 2s)"
    );
    assert_eq!(ok, total, "the client's other streams were served");
    assert!(!conn.is_finished(), "the client connection was closed");

    // The stalled stream ends in an error once read, and the fault is the client's.
    let mut body = resp.into_body();
    let mut failed = false;
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), body.data()).await {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the cut stream ended cleanly");
    let (_, metrics) = get(&b.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("balancer_client_faults_total{kind=\"stalled_reader\"} 1"),
        "{metrics}"
    );
}

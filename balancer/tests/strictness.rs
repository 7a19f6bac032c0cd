//! Strict HTTP handling, through real sockets: a client's mistakes never count against a
//! backend; Host and authority rules; CONNECT; transfer codings; `Upgrade: h2c`; one header
//! count limit for HTTP/1.1 and HTTP/2; small bodies read before a backend is taken; and the
//! cache's rules for `max-age=0` requests and credentialed requests.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An origin that reads the whole request body before answering, then describes the
/// request as JSON: method, target, headers (name -> list of values) and the body.
async fn echo_origin() -> Origin {
    Origin::start(handler(|req| async move {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(400, "request body cut"),
        };
        let mut headers = Map::new();
        for name in parts.headers.keys() {
            let values: Vec<Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| json!(String::from_utf8_lossy(v.as_bytes())))
                .collect();
            headers.insert(name.as_str().to_string(), Value::Array(values));
        }
        let desc = json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "len": body.len(),
            "body": String::from_utf8_lossy(&body),
        });
        text(200, desc.to_string())
    }))
    .await
}

/// Two body-reading origins behind a balancer that ejects after 2 failures in a row, so
/// any failure wrongly counted against a backend shows up at once.
async fn two_origins(extra: &[(&str, &str)]) -> (Origin, Origin, Balancer) {
    let (one, two) = (echo_origin().await, echo_origin().await);
    let mut vars = vec![("EJECT_CONSECUTIVE_FAILURES", "2")];
    vars.extend_from_slice(extra);
    let b = Balancer::over(&[&one, &two], &vars).await;
    (one, two, b)
}

/// Sends `bytes` on a fresh connection and reads one response (`None`: closed without one).
async fn raw(b: &Balancer, bytes: &[u8]) -> Option<RawResponse> {
    let mut c = RawConn::connect(b.addr).await;
    c.send(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.response())
        .await
        .expect("neither an answer nor a close within 5s")
}

/// Asserts a short JSON error answer with `status` and `code`.
fn assert_json_error(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "{resp:?} body {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{resp:?}"
    );
    let v = resp.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].is_string(), "{v}");
}

async fn metrics_text(b: &Balancer) -> String {
    let (_, body) = get(&b.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the sample of `name` whose labels contain `label` (e.g. `kind="x"`).
fn sample(text: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} sample with {label}:\n{text}"))
}

/// `balancer_client_faults_total{kind=...}`.
async fn faults(b: &Balancer, kind: &str) -> f64 {
    sample(
        &metrics_text(b).await,
        "balancer_client_faults_total",
        &format!("kind=\"{kind}\""),
    )
}

/// Waits for `balancer_client_faults_total{kind}` to reach `want`, then checks it is
/// exactly `want` (each fault counted once).
async fn assert_faults(b: &Balancer, kind: &str, want: f64) {
    eventually(Duration::from_secs(3), || async {
        faults(b, kind).await >= want
    })
    .await;
    let got = faults(b, kind).await;
    assert_eq!(got, want, "balancer_client_faults_total{{kind={kind:?}}}");
}

/// Sum of `balancer_backend_ejections_total` over `addrs`.
async fn ejections(b: &Balancer, addrs: &[SocketAddr]) -> f64 {
    let text = metrics_text(b).await;
    addrs
        .iter()
        .map(|a| {
            sample(
                &text,
                "balancer_backend_ejections_total",
                &format!("backend=\"{a}\""),
            )
        })
        .sum()
}

/// No backend ejected, none with an ejection or an error on record.
async fn assert_backends_clean(b: &Balancer, addrs: &[SocketAddr], ctx: &str) {
    let text = metrics_text(b).await;
    for addr in addrs {
        let label = format!("backend=\"{addr}\"");
        let entry = b.backend(*addr).await;
        let figures = (
            sample(&text, "balancer_backend_ejections_total", &label),
            sample(&text, "balancer_backend_errors_total", &label),
            sample(&text, "balancer_backend_ejected", &label),
            entry["ejected"].clone(),
            entry["errors"].clone(),
        );
        assert_eq!(
            figures,
            (0.0, 0.0, 0.0, json!(false), json!(0)),
            "{ctx}: a client fault counted against {addr} \
             (ejections_total, errors_total, ejected, /queue ejected, /queue errors): {entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. Client faults never count against backends
// ---------------------------------------------------------------------------------------

const MALFORMED_CHUNKED: &[u8] = b"POST /upload HTTP/1.1\r\nhost: balancer\r\n\
    transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";

/// Sends `n` POSTs with a malformed chunked body; returns how many got a 4xx answer.
async fn malformed_chunked_round(b: &Balancer, n: usize) -> usize {
    let mut answered = 0;
    for i in 0..n {
        match raw(b, MALFORMED_CHUNKED).await {
            Some(resp) => {
                assert_json_error(&resp, 400, "bad_request_body");
                answered += 1;
            }
            // Acceptable: the connection closed without an answer.
            None => eprintln!("malformed chunked #{i}: closed without an answer"),
        }
    }
    answered
}

#[tokio::test]
async fn malformed_chunked_bodies_never_count_against_backends_and_the_figure_repeats() {
    let (one, two, b) = two_origins(&[]).await;
    let addrs = [one.addr, two.addr];
    const N: usize = 20;
    for run in 1..=2 {
        let answered = malformed_chunked_round(&b, N).await;
        assert_faults(&b, "bad_request_body", (run * N) as f64).await;
        let ejected = ejections(&b, &addrs).await;
        eprintln!(
            "client-fault run {run}: requests sent {N}, 4xx answers {answered}, \
             ejections {ejected}"
        );
        assert_backends_clean(&b, &addrs, &format!("malformed chunked, run {run}")).await;
        assert_eq!(ejected, 0.0);
    }
    assert_eq!(one.hits() + two.hits(), 0, "a malformed body was forwarded");
}

#[tokio::test]
async fn aborted_uploads_never_count_against_backends() {
    let (one, two, b) = two_origins(&[("BUFFER_BODY_BYTES", "1024")]).await;
    let addrs = [one.addr, two.addr];
    const N: usize = 12;
    for i in 0..N {
        let mut c = RawConn::connect(b.addr).await;
        c.send(b"POST /upload HTTP/1.1\r\nhost: balancer\r\ncontent-length: 100000\r\n\r\n")
            .await
            .unwrap();
        c.send(&[b'u'; 5000]).await.unwrap();
        // Over BUFFER_BODY_BYTES: streamed, so a backend is waiting for the rest of it
        // when the client goes away.
        let reached = eventually(Duration::from_secs(2), || async {
            one.hits() + two.hits() == i + 1
        })
        .await;
        assert!(reached, "upload #{i} never reached a backend");
        drop(c);
    }
    assert_faults(&b, "bad_request_body", N as f64).await;
    eprintln!(
        "aborted uploads: sent {N}, ejections {}",
        ejections(&b, &addrs).await
    );
    assert_backends_clean(&b, &addrs, "aborted uploads").await;

    // Both backends still take traffic.
    let (before_one, before_two) = (one.hits(), two.hits());
    let c = client();
    for _ in 0..30 {
        let req = Request::get(b.url("/after")).body(Full::default()).unwrap();
        let (resp, body) = send(&c, req).await;
        assert_eq!(resp.status(), 200, "{body:?}");
    }
    assert!(
        one.hits() > before_one && two.hits() > before_two,
        "a backend got no traffic after the aborted uploads: {} / {}",
        one.hits() - before_one,
        two.hits() - before_two
    );
    assert_backends_clean(&b, &addrs, "after aborted uploads").await;
}

#[tokio::test]
async fn a_slow_small_body_is_408_without_taking_a_backend() {
    let (one, two, b) = two_origins(&[("CLIENT_BODY_TIMEOUT", "1s")]).await;
    let addrs = [one.addr, two.addr];
    let mut c = RawConn::connect(b.addr).await;
    let start = Instant::now();
    c.send(b"POST /form HTTP/1.1\r\nhost: balancer\r\ncontent-length: 10\r\n\r\nab")
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(4), c.response())
        .await
        .expect("no answer within 4s")
        .expect("closed without an answer");
    let took = start.elapsed();
    assert_json_error(&resp, 408, "request_body_timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?}, CLIENT_BODY_TIMEOUT is 1s"
    );
    assert!(c.closed_within(Duration::from_secs(2)).await.is_some());
    assert_eq!(
        one.hits() + two.hits(),
        0,
        "a backend was taken for a body still being read"
    );
    assert_faults(&b, "request_body_timeout", 1.0).await;
    assert_backends_clean(&b, &addrs, "slow small body").await;
}

#[tokio::test]
async fn a_stalled_streamed_body_is_a_client_timeout_not_a_backend_error() {
    let (one, two, b) =
        two_origins(&[("BUFFER_BODY_BYTES", "16"), ("CLIENT_BODY_TIMEOUT", "1s")]).await;
    let addrs = [one.addr, two.addr];
    let mut c = RawConn::connect(b.addr).await;
    let start = Instant::now();
    c.send(b"POST /upload HTTP/1.1\r\nhost: balancer\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    c.send(&[b's'; 100]).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(4), c.response())
        .await
        .expect("neither an answer nor a close within 4s");
    let took = start.elapsed();
    match &resp {
        Some(resp) => assert_json_error(resp, 408, "request_body_timeout"),
        None => eprintln!("stalled streamed body: closed without an answer after {took:?}"),
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "ended after {took:?}, CLIENT_BODY_TIMEOUT is 1s"
    );
    assert_eq!(
        one.hits() + two.hits(),
        1,
        "streamed: one backend was waiting"
    );
    assert_faults(&b, "request_body_timeout", 1.0).await;
    assert_backends_clean(&b, &addrs, "stalled streamed body").await;
}

#[tokio::test]
async fn a_trickling_body_meets_request_timeout_as_a_client_timeout() {
    let (one, two, b) = two_origins(&[
        ("REQUEST_TIMEOUT", "1s"),
        ("CLIENT_BODY_TIMEOUT", "10s"),
        ("BUFFER_BODY_BYTES", "0"),
    ])
    .await;
    let addrs = [one.addr, two.addr];
    let mut c = RawConn::connect(b.addr).await;
    let start = Instant::now();
    c.send(b"POST /upload HTTP/1.1\r\nhost: balancer\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: never idle for CLIENT_BODY_TIMEOUT, never finished either.
    let resp = loop {
        let _ = c.send(b"t").await;
        if let Ok(resp) = tokio::time::timeout(Duration::from_millis(200), c.response()).await {
            break resp;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still no answer after 5s of trickling"
        );
    };
    let took = start.elapsed();
    let resp = resp.expect("closed without an answer");
    assert_json_error(&resp, 408, "request_body_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?}, REQUEST_TIMEOUT is 1s"
    );
    assert_eq!(
        one.hits() + two.hits(),
        1,
        "unbuffered: one backend was waiting"
    );
    assert_faults(&b, "request_body_timeout", 1.0).await;
    assert_backends_clean(&b, &addrs, "trickling body").await;
}

// ---------------------------------------------------------------------------------------
// 2-8. Message rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn host_rules_on_http11() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let cases: [(&[u8], &str); 3] = [
        (b"GET /h HTTP/1.1\r\nx-a: 1\r\n\r\n", "missing_host"),
        (
            b"GET /h HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
            "duplicate_host",
        ),
        (b"GET /h HTTP/1.1\r\nhost: a b\r\n\r\n", "invalid_host"),
    ];
    for (request, code) in cases {
        let resp = raw(&b, request).await.expect("closed without an answer");
        assert_json_error(&resp, 400, code);
        assert_eq!(resp.header("connection"), Some("close"), "{code}");
        assert_eq!(faults(&b, code).await, 1.0, "{code}");
    }
    assert_eq!(origin.hits(), 0, "a refused request was forwarded");

    // HTTP/1.0 needs no Host.
    let resp = raw(&b, b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .expect("closed without an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let resp = raw(
        &b,
        b"GET http://abs.example/x?q=1 HTTP/1.1\r\nhost: other.example\r\n\r\n",
    )
    .await
    .expect("closed without an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    let got = resp.json();
    assert_eq!(got["uri"], "/x?q=1", "origin form upstream: {got}");
    assert_eq!(got["headers"]["host"], json!(["abs.example"]), "{got}");
    assert_eq!(
        got["headers"]["x-forwarded-host"],
        json!(["abs.example"]),
        "{got}"
    );
}

/// Sends `GET http://authority.example/h2` with `host: other.example` over an h2c
/// connection of our own to `addr` (the URI's authority is free: nothing resolves it), and
/// returns the echo origin's description of what it received.
async fn h2_with_conflicting_host(addr: SocketAddr) -> Value {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://authority.example/h2")
        .header("host", "other.example")
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request failed");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    conn.abort();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn on_http2_the_authority_wins_over_a_host_field() {
    let origin = echo_origin().await;
    // The client really sends both: straight to the (h2-capable) origin, `host` arrives
    // as sent.
    let direct = h2_with_conflicting_host(origin.addr).await;
    assert_eq!(
        direct["headers"]["host"],
        json!(["other.example"]),
        "{direct}"
    );

    let b = Balancer::over(&[&origin], &[]).await;
    let got = h2_with_conflicting_host(b.addr).await;
    assert_eq!(
        got["headers"]["host"],
        json!(["authority.example"]),
        "{got}"
    );
    assert_eq!(
        got["headers"]["x-forwarded-host"],
        json!(["authority.example"]),
        "{got}"
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn connect_is_refused_with_501_at_once() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), c.response())
        .await
        .expect("CONNECT hung for 2s")
        .expect("closed without an answer");
    assert_json_error(&resp, 501, "connect_not_supported");
    assert_eq!(origin.hits(), 0);
    assert_eq!(faults(&b, "connect_not_supported").await, 1.0);
}

/// A refusal by our rules (JSON `code`) or, where hyper refuses the framing itself before
/// our code runs, its bare 400.
fn assert_refused(resp: &RawResponse, status: u16, code: &str) {
    if resp.header("content-type") == Some("application/json") {
        assert_json_error(resp, status, code);
    } else {
        eprintln!("{code}: hyper answered itself: {resp:?}");
        assert_eq!(resp.status, 400, "{resp:?}");
    }
}

#[tokio::test]
async fn transfer_codings_other_than_one_chunked_are_refused() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let gzip = raw(
        &b,
        b"POST /te HTTP/1.1\r\nhost: balancer\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .expect("closed without an answer");
    assert_refused(&gzip, 501, "unsupported_transfer_coding");
    let twice = raw(
        &b,
        b"POST /te HTTP/1.1\r\nhost: balancer\r\ntransfer-encoding: chunked\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .expect("closed without an answer");
    assert_refused(&twice, 400, "repeated_chunked");
    assert_eq!(origin.hits(), 0, "a refused framing was forwarded");
}

#[tokio::test]
async fn an_h2c_upgrade_is_dropped_and_the_request_served_as_http11() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let resp = raw(
        &b,
        b"GET /h2c HTTP/1.1\r\nhost: balancer\r\nconnection: Upgrade, HTTP2-Settings\r\n\
          upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .expect("closed without an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    let got = resp.json();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(
            got["headers"].get(gone).is_none(),
            "{gone} reached the origin: {got}"
        );
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn the_same_header_count_limit_applies_to_http11_and_http2() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[("MAX_HEADERS", "50")]).await;
    let head = |n: usize| {
        let fields: String = (0..n).map(|i| format!("x-h{i}: v{i}\r\n")).collect();
        format!("GET /count HTTP/1.1\r\nhost: balancer\r\n{fields}\r\n")
    };
    let h2_request = |n: usize| {
        let mut req = Request::get(b.url("/count"));
        for i in 0..n {
            req = req.header(format!("x-h{i}"), format!("v{i}"));
        }
        req.body(Full::default()).unwrap()
    };

    let resp = raw(&b, head(80).as_bytes())
        .await
        .expect("closed without an answer");
    assert_eq!(resp.status, 431, "HTTP/1.1 with 80 fields: {resp:?}");
    let (resp, body) = send(&h2_client(), h2_request(80)).await;
    assert_eq!(resp.status(), 431, "HTTP/2 with 80 fields: {body:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "too_many_headers"
    );
    assert_eq!(origin.hits(), 0);

    let resp = raw(&b, head(40).as_bytes())
        .await
        .expect("closed without an answer");
    assert_eq!(resp.status, 200, "HTTP/1.1 with 40 fields: {resp:?}");
    let (resp, body) = send(&h2_client(), h2_request(40)).await;
    assert_eq!(resp.status(), 200, "HTTP/2 with 40 fields: {body:?}");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_small_body_is_read_before_a_backend_is_taken() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[("CLIENT_BODY_TIMEOUT", "5s")]).await;
    let body = b"0123456789abcdefghijABCDEFGHIJ";
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"POST /small HTTP/1.1\r\nhost: balancer\r\ncontent-length: 30\r\n\r\n")
        .await
        .unwrap();
    c.send(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        origin.hits(),
        0,
        "the backend was contacted before the body was read"
    );
    c.send(&body[10..]).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), c.response())
        .await
        .expect("no answer within 3s")
        .expect("closed without an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    let got = resp.json();
    assert_eq!(got["len"], 30, "{got}");
    assert_eq!(
        got["body"].as_str().map(str::as_bytes),
        Some(&body[..]),
        "{got}"
    );
    assert_eq!(origin.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// 10. Cache
// ---------------------------------------------------------------------------------------

/// A static origin whose body names the request's `Cookie` (or "anonymous").
async fn personal_origin(cache_control: Option<&'static str>) -> Origin {
    Origin::start(handler(move |req| async move {
        let who = req
            .headers()
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_string();
        let body = format!("profile of {who}");
        let mut r = text(200, body.clone());
        r.headers_mut()
            .insert("content-type", "text/css".parse().unwrap());
        r.headers_mut().insert("content-length", body.len().into());
        if let Some(cc) = cache_control {
            r.headers_mut().insert("cache-control", cc.parse().unwrap());
        }
        r
    }))
    .await
}

async fn get_with(
    b: &Balancer,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::Response<()>, Bytes) {
    let mut req = Request::get(b.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::default()).unwrap()).await
}

fn x_cache(resp: &http::Response<()>) -> Option<&str> {
    resp.headers().get("x-cache").and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn cache_a_max_age_0_request_goes_to_the_origin() {
    let origin = personal_origin(Some("public, max-age=300")).await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (first, _) = get_with(&b, "/app.css", &[]).await;
    assert_eq!(x_cache(&first), Some("MISS"));
    let (second, _) = get_with(&b, "/app.css", &[]).await;
    assert_eq!(x_cache(&second), Some("HIT"));
    assert_eq!(origin.hits(), 1);

    let (fresh, body) = get_with(&b, "/app.css", &[("cache-control", "max-age=0")]).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(&body[..], b"profile of anonymous");
    assert_eq!(origin.hits(), 2, "max-age=0 was answered from the cache");
    // A bypass, like `no-cache`: served by the origin, no `X-Cache` (artefacts/balancer.md).
    assert_eq!(x_cache(&fresh), None, "{:?}", fresh.headers());
}

#[tokio::test]
async fn cache_a_credentialed_answer_without_cache_control_is_not_shared() {
    let origin = personal_origin(None).await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (alice, body) = get_with(&b, "/me/profile.css", &[("cookie", "user=alice")]).await;
    assert_eq!(alice.status(), 200);
    assert_eq!(&body[..], b"profile of user=alice");
    let (anon, body) = get_with(&b, "/me/profile.css", &[]).await;
    assert_eq!(anon.status(), 200);
    assert_ne!(x_cache(&anon), Some("HIT"));
    assert_eq!(
        &body[..],
        b"profile of anonymous",
        "alice's answer was served to another client"
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn cache_a_credentialed_answer_marked_public_is_shared() {
    let origin = personal_origin(Some("public, max-age=60")).await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (alice, body) = get_with(&b, "/me/profile.css", &[("cookie", "user=alice")]).await;
    assert_eq!(alice.status(), 200);
    assert_eq!(&body[..], b"profile of user=alice");
    let (anon, body) = get_with(&b, "/me/profile.css", &[]).await;
    assert_eq!(x_cache(&anon), Some("HIT"), "{:?}", anon.headers());
    assert_eq!(&body[..], b"profile of user=alice");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn cache_credentialed_always_shares_answers_without_cache_control() {
    let origin = personal_origin(None).await;
    let b = Balancer::over(&[&origin], &[("CACHE_CREDENTIALED", "always")]).await;
    let (alice, body) = get_with(&b, "/me/profile.css", &[("cookie", "user=alice")]).await;
    assert_eq!(alice.status(), 200);
    assert_eq!(&body[..], b"profile of user=alice");
    let (anon, body) = get_with(&b, "/me/profile.css", &[]).await;
    assert_eq!(x_cache(&anon), Some("HIT"), "{:?}", anon.headers());
    assert_eq!(&body[..], b"profile of user=alice");
    assert_eq!(origin.hits(), 1);
}

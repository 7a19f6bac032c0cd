//! End-to-end tests: `playground::run` on 127.0.0.1:0, driven over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, http1_client, raw_upload, send, Server};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn index_page_references_assets_and_shows_hostname() {
    let server = Server::start().await;
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(reply.header("cache-control"), "no-cache");
    let page = String::from_utf8(reply.body.to_vec()).expect("utf-8 page");
    for asset in ["/static/app.css", "/static/app.js", "/static/logo.png"] {
        assert!(page.contains(asset), "page lacks {asset}");
    }
    assert!(page.contains(&playground::config::detect_hostname()));
    server.shutdown().await;
}

#[tokio::test]
async fn static_assets_have_types_and_cache_headers() {
    let server = Server::start().await;
    let cases: [(&str, &str, &[u8]); 3] = [
        (
            "/static/app.css",
            "text/css; charset=utf-8",
            playground::assets::APP_CSS.as_bytes(),
        ),
        (
            "/static/app.js",
            "text/javascript; charset=utf-8",
            playground::assets::APP_JS.as_bytes(),
        ),
        (
            "/static/logo.png",
            "image/png",
            playground::assets::LOGO_PNG,
        ),
    ];
    for (path, content_type, expected) in cases {
        let reply = get(&server.url(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header("content-type"), content_type, "{path}");
        assert_eq!(
            reply.header("cache-control"),
            "public, max-age=3600",
            "{path}"
        );
        assert_eq!(&reply.body[..], expected, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn health_is_ok() {
    let server = Server::start().await;
    let reply = get(&server.url("/health")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({ "status": "ok" }));
    let port = server.addr.port();
    let probe = tokio::task::spawn_blocking(move || protocol::healthcheck::check(port));
    let status = probe.await.expect("healthcheck task").expect("healthy");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    server.shutdown().await;
}

#[tokio::test]
async fn work_sleeps_and_rejects_bad_ms() {
    let server = Server::start().await;
    let started = Instant::now();
    let reply = get(&server.url("/work?ms=120")).await;
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["slept_ms"], 120);
    assert_eq!(body["hostname"], playground::config::detect_hostname());

    for bad in ["/work?ms=abc", "/work?ms=-5", "/work", "/work?ms=1.5"] {
        let reply = get(&server.url(bad)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        let body = reply.json();
        assert_eq!(body["status"], 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("ms")),
            "{bad}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn cpu_burns_and_rejects_bad_ms() {
    let server = Server::start().await;
    let reply = get(&server.url("/cpu?ms=30")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["burned_ms"], 30);
    assert!(body["elapsed_ms"].as_u64().is_some_and(|ms| ms >= 30));
    assert!(body["iterations"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(body["hostname"], playground::config::detect_hostname());

    let reply = get(&server.url("/cpu?ms=lots")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["status"], 400);
    server.shutdown().await;
}

#[tokio::test]
async fn echo_reflects_the_request() {
    let server = Server::start().await;
    let client = http1_client();
    let reply = send(
        &client,
        Method::POST,
        &server.url("/echo/some/path?a=1&b=two"),
        &[
            ("x-multi", "one"),
            ("x-multi", "two"),
            ("content-type", "text/plain"),
        ],
        "héllo body",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/echo/some/path");
    assert_eq!(body["query"], "a=1&b=two");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(
        body["headers"]["x-multi"],
        serde_json::json!(["one", "two"])
    );
    assert_eq!(
        body["headers"]["content-type"],
        serde_json::json!(["text/plain"])
    );
    assert_eq!(body["body"], "héllo body");
    assert_eq!(body["body_length"], "héllo body".len());
    assert!(body.get("body_base64").is_none());
    assert_eq!(body["hostname"], playground::config::detect_hostname());
    let remote: SocketAddr = body["remote_addr"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("remote_addr is a socket address");
    assert!(remote.ip().is_loopback());

    // Any method, bare /echo, binary body.
    let reply = send(
        &client,
        Method::PUT,
        &server.url("/echo"),
        &[],
        vec![0xff, 0x00, 0x41],
    )
    .await;
    let body = reply.json();
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/echo");
    assert_eq!(body["query"], Value::Null);
    assert_eq!(body["body"], Value::Null);
    assert_eq!(body["body_base64"], "/wBB");
    assert_eq!(body["body_length"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn echo_rejects_bodies_over_10_mib() {
    let server = Server::start().await;
    let over = playground::routes::MAX_ECHO_BODY + 1;
    let head = format!("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {over}\r\n\r\n");
    let response = raw_upload(server.addr, head, over, false).await;
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    assert!(response.contains("exceeds"), "{response}");

    // Chunked: no length up front, so the limit trips while reading.
    let head =
        "POST /echo/x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let response = raw_upload(server.addr, head, over, true).await;
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");

    // Exactly at the limit is accepted.
    let at = playground::routes::MAX_ECHO_BODY;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {at}\r\nConnection: close\r\n\r\n"
    );
    let response = raw_upload(server.addr, head, at, false).await;
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "{}",
        &response[..200.min(response.len())]
    );
    assert!(response.contains(&format!("\"body_length\":{at}")));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_json_404_and_wrong_methods_405() {
    let server = Server::start().await;
    for path in ["/nope", "/echoes", "/static/missing.css", "/health/x"] {
        let reply = get(&server.url(path)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["status"], 404, "{path}");
    }
    let reply = send(
        &http1_client(),
        Method::POST,
        &server.url("/health"),
        &[],
        "x",
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), "GET, HEAD");
    server.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    for i in 0..3 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"{\"status\":\"ok\"}") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed after {i} responses");
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200 OK"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let server = Server::start().await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let reply = send(
        &client,
        Method::GET,
        &server.url("/health"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(&client, Method::POST, &server.url("/echo"), &[], "h2 body").await;
    let body = reply.json();
    assert_eq!(body["version"], "HTTP/2");
    assert_eq!(body["body"], "h2 body");
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let server = Server::start().await;
    let addr = server.addr;
    let url = server.url("/work?ms=300");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let Server { stop, task, .. } = server;
    let _ = stop.map(|s| s.send(()));

    // New connections are refused while the request is still running.
    let mut refused = false;
    for _ in 0..20 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
    assert!(
        !in_flight.is_finished(),
        "request finished before the listener closed"
    );

    let reply = in_flight.await.expect("client task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["slept_ms"], 300);
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returned after the in-flight request")
        .expect("run task did not panic");
    assert!(result.is_ok());
    assert!(started.elapsed() < Duration::from_secs(5));
}

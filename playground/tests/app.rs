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
    assert!(ms_field(&body, "queued_ms") < 20.0, "{body}");
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

/// Serialises the tests that burn CPU and check timings: on a small machine they
/// would otherwise slow each other down.
static CPU_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ms_field(body: &Value, field: &str) -> f64 {
    body[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {body}"))
}

/// GETs each of `paths` concurrently; returns the replies (in order) and the wall
/// time until the last one came back.
async fn get_concurrently(server: &Server, paths: &[&str]) -> (Vec<common::Reply>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = paths
        .iter()
        .map(|path| {
            let url = server.url(path);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("client task"));
    }
    (replies, started.elapsed())
}

#[tokio::test]
async fn cpu_burns_and_rejects_bad_ms() {
    let _serial = CPU_TESTS.lock().await;
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
async fn cpu_reports_thread_cpu_time() {
    let _serial = CPU_TESTS.lock().await;
    let server = Server::start().await;
    let reply = get(&server.url("/cpu?ms=50")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["burned_ms"], 50);
    let cpu_ms = ms_field(&body, "cpu_ms");
    let elapsed_ms = ms_field(&body, "elapsed_ms");
    assert!(cpu_ms >= 45.0, "{body}");
    // A thread cannot use more CPU than wall time; elapsed_ms is truncated to whole ms.
    assert!(elapsed_ms >= cpu_ms - 2.0, "{body}");
    // Unlimited: no waiting for a slot.
    assert!(ms_field(&body, "queued_ms") < 20.0, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn cpu_counts_cpu_time_not_wall_time() {
    let _serial = CPU_TESTS.lock().await;
    let server = Server::start().await;
    let (replies, wall) = get_concurrently(&server, &["/cpu?ms=100"; 4]).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        let body = reply.json();
        let cpu_ms = ms_field(&body, "cpu_ms");
        assert!(cpu_ms >= 95.0, "{body}");
        assert!(ms_field(&body, "elapsed_ms") >= cpu_ms - 2.0, "{body}");
        assert!(ms_field(&body, "queued_ms") < 20.0, "{body}");
    }
    // 400 ms of CPU time cannot be done in less than 400 ms / cores of wall time; a
    // wall-clock burner would finish all four in about 100 ms.
    let cores = std::thread::available_parallelism().map_or(usize::MAX, |n| n.get());
    if cores < 4 {
        let floor = Duration::from_millis(400 * 9 / 10 / cores as u64);
        assert!(wall >= floor, "{wall:?} < {floor:?} on {cores} core(s)");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn max_concurrency_queues_cpu_but_not_health() {
    let _serial = CPU_TESTS.lock().await;
    let server = Server::start_with_max_concurrency(Some(1)).await;
    let started = Instant::now();
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let url = server.url("/cpu?ms=100");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // One request burns, the other waits for the slot; unlimited routes answer at once.
    tokio::time::sleep(Duration::from_millis(30)).await;
    for path in ["/health", "/echo", "/"] {
        let asked = Instant::now();
        let reply = get(&server.url(path)).await;
        let took = asked.elapsed();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(took < Duration::from_millis(50), "{path} took {took:?}");
    }
    assert!(
        burners.iter().any(|b| !b.is_finished()),
        "the /cpu requests were done before the other routes were asked"
    );

    let mut queued = Vec::new();
    for burner in burners {
        let reply = burner.await.expect("client task");
        assert_eq!(reply.status, StatusCode::OK);
        let body = reply.json();
        assert!(ms_field(&body, "cpu_ms") >= 95.0, "{body}");
        queued.push(ms_field(&body, "queued_ms"));
    }
    let wall = started.elapsed();
    queued.sort_by(f64::total_cmp);
    assert!(queued[0] < 20.0, "the first request waited: {queued:?}");
    assert!(
        queued[1] >= 75.0,
        "the second request did not wait: {queued:?}"
    );
    assert!(wall >= Duration::from_millis(190), "{wall:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn max_concurrency_is_shared_by_work_and_cpu() {
    let _serial = CPU_TESTS.lock().await;
    let server = Server::start_with_max_concurrency(Some(1)).await;
    let (replies, wall) = get_concurrently(&server, &["/work?ms=100", "/cpu?ms=100"]).await;
    let mut queued: Vec<f64> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::OK);
            ms_field(&reply.json(), "queued_ms")
        })
        .collect();
    queued.sort_by(f64::total_cmp);
    assert!(queued[0] < 20.0, "{queued:?}");
    assert!(queued[1] >= 75.0, "{queued:?}");
    assert!(wall >= Duration::from_millis(190), "{wall:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn waiting_requests_get_a_slot_in_arrival_order() {
    let server = Server::start_with_max_concurrency(Some(1)).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let url = server.url("/work?ms=100");
        tasks.push(tokio::spawn(async move {
            let reply = get(&url).await;
            (i, reply, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut done = Vec::new();
    for task in tasks {
        let (i, reply, at) = task.await.expect("client task");
        assert_eq!(reply.status, StatusCode::OK);
        done.push((at, i, ms_field(&reply.json(), "queued_ms")));
    }
    done.sort_by_key(|(at, _, _)| *at);
    let order: Vec<usize> = done.iter().map(|(_, i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2], "{done:?}");
    assert!(done[1].2 < done[2].2, "{done:?}");
    assert!(done[2].0 >= Duration::from_millis(290), "{done:?}");
    server.shutdown().await;
}

#[test]
fn bad_max_concurrency_stops_the_program_with_exit_64() {
    for bad in ["0", "-3", "four", ""] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_playground"))
            .env("MAX_CONCURRENCY", bad)
            .env("PORT", "5000")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the playground binary");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("MAX_CONCURRENCY={bad:?}: the program did not stop");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
        }
        assert_eq!(status.code(), Some(64), "MAX_CONCURRENCY={bad:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("MAX_CONCURRENCY"), "{stderr}");
        assert!(
            stderr.contains("expected an integer of 1 or more"),
            "{stderr}"
        );
    }
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

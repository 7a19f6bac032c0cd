//! Protection against bad clients: head and body sizes, slow heads, idle connections and
//! the connection cap. Each violation gets its status or a closed connection, and the
//! balancer keeps serving everyone else.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};

/// A well-behaved request afterwards still gets its answer.
async fn still_serves(b: &Balancer) {
    let (resp, body) = get(&b.url("/after")).await;
    assert_eq!(resp.status(), 200, "{body:?}");
}

fn head_with(extra: &str) -> String {
    format!("GET /big-head HTTP/1.1\r\nhost: balancer\r\n{extra}\r\n")
}

#[tokio::test]
async fn request_heads_over_max_header_bytes_get_431() {
    let origin = Origin::named("ok").await;
    let b = Balancer::over(&[&origin], &[("MAX_HEADER_BYTES", "8KiB")]).await;

    // Under the limit: served.
    let mut c = RawConn::connect(b.addr).await;
    let small = format!("x-fill: {}\r\n", "a".repeat(6000));
    c.send(head_with(&small).as_bytes()).await.unwrap();
    assert_eq!(c.response().await.expect("no response").status, 200);

    // One big field, and many small ones, over 8 KiB: 431 and the connection is closed;
    // the origin never sees them.
    let many: String = (0..300)
        .map(|i| format!("x-f{i}: {}\r\n", "b".repeat(30)))
        .collect();
    let big = format!("x-fill: {}\r\n", "a".repeat(16 * 1024));
    for extra in [big, many] {
        let mut c = RawConn::connect(b.addr).await;
        c.send(head_with(&extra).as_bytes()).await.unwrap();
        let resp = c.response().await.expect("closed without an answer");
        assert_eq!(resp.status, 431);
        assert_eq!(resp.header("connection"), Some("close"));
        assert!(c.closed_within(Duration::from_secs(2)).await.is_some());
    }
    assert_eq!(origin.hits(), 1);

    // HTTP/2: the header list limit applies too.
    let req = Request::get(b.url("/h2-big"))
        .header("x-fill", "a".repeat(16 * 1024))
        .body(Full::default())
        .unwrap();
    match h2_client().request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => panic!("h2 request with a big header list failed instead of 431: {e:?}"),
    }
    assert_eq!(origin.hits(), 1);
    still_serves(&b).await;
}

#[tokio::test]
async fn a_declared_body_over_max_body_bytes_is_413_before_any_backend_is_contacted() {
    let origin = Origin::start(handler(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(200, body.len().to_string())
    }))
    .await;
    let b = Balancer::over(&[&origin], &[("MAX_BODY_BYTES", "1KiB")]).await;

    // The head alone is enough: the client does not even have to send the body.
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"POST /upload HTTP/1.1\r\nhost: balancer\r\ncontent-length: 1025\r\n\r\n")
        .await
        .unwrap();
    let resp = c.response().await.expect("closed without an answer");
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"], "body_too_large");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)).await.is_some());
    assert_eq!(origin.hits(), 0, "the backend was contacted");

    // Exactly at the limit is fine.
    let req = Request::post(b.url("/upload"))
        .body(Full::new(Bytes::from(vec![7u8; 1024])))
        .unwrap();
    let (resp, body) = send(&client(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"1024");

    // HTTP/2 with a content-length over the limit: 413 on that stream.
    let req = Request::post(b.url("/upload"))
        .body(Full::new(Bytes::from(vec![7u8; 4096])))
        .unwrap();
    let (resp, body) = send(&h2_client(), req).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"],
        "body_too_large"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_cut_and_others_are_still_served() {
    // The origin records how much of each body it managed to read in full.
    let complete = Arc::new(AtomicUsize::new(0));
    let seen = complete.clone();
    let origin = Origin::start(handler(move |req| {
        let seen = seen.clone();
        async move {
            match req.into_body().collect().await {
                Ok(b) => {
                    seen.fetch_max(b.to_bytes().len(), Ordering::SeqCst);
                    text(200, "read it all")
                }
                Err(_) => text(400, "cut"),
            }
        }
    }))
    .await;
    let b = Balancer::over(&[&origin], &[("MAX_BODY_BYTES", "1KiB")]).await;

    let mut c = RawConn::connect(b.addr).await;
    c.send(b"POST /stream HTTP/1.1\r\nhost: balancer\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("258\r\n{}\r\n", "c".repeat(600));
    for _ in 0..3 {
        c.send(chunk.as_bytes()).await.unwrap();
    }
    // Documented: a streamed body is cut at the limit, and the client gets 413 when no
    // response has started (the origin here waits for the whole body).
    let resp = c.response().await.expect("closed without an answer");
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.json()["error"], "body_too_large");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(2)).await.is_some(),
        "connection left open after the body was cut"
    );
    assert_eq!(
        complete.load(Ordering::SeqCst),
        0,
        "the origin received a whole body over the limit"
    );
    still_serves(&b).await;
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_after_header_read_timeout() {
    let origin = Origin::named("ok").await;
    let b = Balancer::over(
        &[&origin],
        &[("HEADER_READ_TIMEOUT", "400ms"), ("IDLE_TIMEOUT", "10s")],
    )
    .await;
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 50 ms: never idle, never a complete head.
    let dribble = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let head = b"GET /slow HTTP/1.1\r\nhost: balancer\r\nx-a: ";
        for &byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let start = tokio::time::Instant::now();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let took = start.elapsed();
    dribble.abort();
    assert!(closed.is_ok(), "slowloris connection still open after 3s");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "closed after {took:?}, HEADER_READ_TIMEOUT is 400ms"
    );
    // Observed: closed without an answer (hyper sends no 408).
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(origin.hits(), 0);
    still_serves(&b).await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let origin = Origin::named("ok").await;
    let b = Balancer::over(
        &[&origin],
        &[("IDLE_TIMEOUT", "400ms"), ("HEADER_READ_TIMEOUT", "10s")],
    )
    .await;
    let window =
        |took: Duration| took >= Duration::from_millis(350) && took < Duration::from_secs(2);

    // Connects and never sends a byte.
    let mut silent = RawConn::connect(b.addr).await;
    let took = silent.closed_within(Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(window),
        "silent client closed after {took:?}"
    );

    // A keep-alive connection left idle after one request.
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /one HTTP/1.1\r\nhost: balancer\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.expect("no response").status, 200);
    let took = c.closed_within(Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(window),
        "idle keep-alive closed after {took:?}"
    );
    assert!(c.unread().is_empty());

    // An HTTP/2 connection too (the server's keep-alive pings come every 30 s).
    let h2 = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(Request::get(b.url("/h2")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let start = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "idle h2 connection still open after 3s");
    assert!(
        window(start.elapsed()),
        "h2 closed after {:?}",
        start.elapsed()
    );
    still_serves(&b).await;
}

#[tokio::test]
async fn between_requests_header_read_timeout_also_bounds_keep_alive() {
    // Observed (hyper arms the head timer as soon as it waits for the next request): an
    // idle HTTP/1.1 keep-alive connection is closed after min(HEADER_READ_TIMEOUT,
    // IDLE_TIMEOUT), so with the defaults (10 s, 60 s) after 10 s, not 60 s.
    let origin = Origin::named("ok").await;
    let b = Balancer::over(
        &[&origin],
        &[("IDLE_TIMEOUT", "10s"), ("HEADER_READ_TIMEOUT", "400ms")],
    )
    .await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /one HTTP/1.1\r\nhost: balancer\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.expect("no response").status, 200);
    let took = c.closed_within(Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(350) && t < Duration::from_secs(2)),
        "closed after {took:?}"
    );
}

/// The head clock runs only while no request is in flight: an answer that takes longer than
/// HEADER_READ_TIMEOUT is still delivered, the connection stays usable, and the clock starts
/// again when the response has been sent.
#[tokio::test]
async fn the_head_clock_stops_while_a_request_is_served() {
    let slow = Origin::start(handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        text(200, "slow")
    }))
    .await;
    let b = Balancer::over(
        &[&slow],
        &[("HEADER_READ_TIMEOUT", "300ms"), ("IDLE_TIMEOUT", "10s")],
    )
    .await;
    let mut c = RawConn::connect(b.addr).await;
    for _ in 0..2 {
        c.send(b"GET /slow HTTP/1.1\r\nhost: balancer\r\n\r\n")
            .await
            .unwrap();
        let resp = c.response().await.expect("no response");
        assert_eq!(resp.status, 200, "{resp:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Silent after the second response: closed about 300 ms after it.
    let took = c.closed_within(Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(150) && t < Duration::from_secs(2)),
        "closed {took:?} after the wait began"
    );
    assert_eq!(slow.hits(), 2);

    // HTTP/2: the clock covers the first request only; the connection outlives it.
    let opened = b.metric("balancer_connections_total").await;
    let c = h2_client();
    for _ in 0..2 {
        let (resp, _) = send(
            &c,
            Request::get(b.url("/h2")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(slow.hits(), 4);
    assert_eq!(
        b.metric("balancer_connections_total").await - opened,
        1.0,
        "the h2 connection was closed between its requests"
    );
}

#[tokio::test]
async fn at_max_connections_the_next_client_waits_until_one_closes() {
    let origin = Origin::named("ok").await;
    let b = Balancer::over(&[&origin], &[("MAX_CONNECTIONS", "2")]).await;
    let request = b"GET /cap HTTP/1.1\r\nhost: balancer\r\n\r\n";
    let mut first = RawConn::connect(b.addr).await;
    let mut second = RawConn::connect(b.addr).await;
    for c in [&mut first, &mut second] {
        c.send(request).await.unwrap();
        assert_eq!(c.response().await.expect("no response").status, 200);
    }

    // The third connects (kernel backlog) but is not served while both stay open.
    let mut third = RawConn::connect(b.addr).await;
    third.send(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), third.response()).await;
    assert!(waited.is_err(), "served beyond MAX_CONNECTIONS: {waited:?}");

    // One closes: the third is accepted and answered.
    drop(first);
    let resp = tokio::time::timeout(Duration::from_secs(2), third.response())
        .await
        .expect("third client still waiting after one connection closed")
        .expect("third connection closed without an answer");
    assert_eq!(resp.status, 200);
    assert_eq!(origin.hits(), 3);

    // Still at the cap (second + third); once they go, fresh clients are served.
    drop(second);
    drop(third);
    let c = client();
    for _ in 0..5 {
        let (resp, _) = send(&c, Request::get(b.url("/x")).body(Full::default()).unwrap()).await;
        assert_eq!(resp.status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.metric("balancer_connections_active").await <= 2.0
        })
        .await
    );
}

/// hyper's header read timeout is HTTP/1-only; the server's own first-request deadline makes
/// an h2c client that dribbles a HEADERS frame one byte at a time (re-arming IDLE_TIMEOUT
/// with every byte) meet HEADER_READ_TIMEOUT too.
#[tokio::test]
async fn an_h2_slowloris_head_is_cut_off_after_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::named("ok").await;
    let b = Balancer::over(
        &[&origin],
        &[("HEADER_READ_TIMEOUT", "400ms"), ("IDLE_TIMEOUT", "10s")],
    )
    .await;
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(b.addr)
        .await
        .unwrap()
        .into_split();
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // SETTINGS (empty), SETTINGS ack, then the head of a 200-byte HEADERS frame on stream 1.
    writer
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    writer
        .write_all(&[0, 0, 200, 1, 5, 0, 0, 0, 1])
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..200 {
            if writer.write_all(&[0x82]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = reader.read(&mut buf).await {}
    })
    .await;
    dribble.abort();
    assert!(
        closed.is_ok(),
        "h2 slowloris connection still open after 3s"
    );
}

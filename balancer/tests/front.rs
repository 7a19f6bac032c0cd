//! The own HTTP/1.1 front end (`balancer/src/front.rs`) on real sockets: what it serves
//! itself, what it hands to hyper mid-connection, and the framing of what it writes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An origin that answers every request with its method, path and body.
async fn echo_origin() -> Origin {
    Origin::start(handler(
        |req: http::Request<hyper::body::Incoming>| async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(200, format!("{line} {}", String::from_utf8_lossy(&body)))
        },
    ))
    .await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_also_after_the_hand_off_to_hyper() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    // Two requests the front end serves, one with a body (hyper from there on), two more.
    c.send(
        b"GET /1 HTTP/1.1\r\nhost: b\r\n\r\n\
          GET /2 HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n\
          POST /3 HTTP/1.1\r\nhost: b\r\ncontent-length: 5\r\n\r\nhello\
          GET /4 HTTP/1.1\r\nhost: b\r\n\r\n\
          GET /5 HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let expected = ["GET /1 ", "GET /2 ", "POST /3 hello", "GET /4 ", "GET /5 "];
    for want in expected {
        let resp = c.response().await.expect("connection ended early");
        assert_eq!(resp.status, 200);
        assert_eq!(String::from_utf8_lossy(&resp.body), want);
        assert!(resp.header("date").is_some(), "no date on {want}");
    }
    assert!(c.closed_within(Duration::from_secs(2)).await.is_some());
    assert!(c.unread().is_empty(), "extra bytes: {:?}", c.unread());
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_the_connection_closes() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /bye HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = c.response().await.expect("no response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)).await.is_some());
}

#[tokio::test]
async fn head_answers_carry_the_length_but_no_body() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"HEAD /h HTTP/1.1\r\nhost: b\r\n\r\nGET /after HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    // `response()` would read a body of the announced length: read the head alone.
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&raw).contains("GET /after ") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, c.stream.read(&mut chunk))
            .await
            .expect("answers did not arrive")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // The length of the body a GET would get ("HEAD /h " is 8 bytes), and no body.
    assert!(head.contains("content-length: 8"), "{head}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
}

/// A hand-written origin that answers each request with `answer`, keeping the connection.
async fn raw_origin(answer: &'static [u8]) -> std::net::SocketAddr {
    raw_origin_with(move |_| answer.to_vec()).await
}

/// A hand-written origin that answers each request head (without its blank line) with what
/// `answer` makes of it, in one write, keeping the connection.
async fn raw_origin_with(
    answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        if s.write_all(&answer(&head)).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_body_without_length_goes_chunked_and_a_204_has_none() {
    let chunked = raw_origin(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let b = Balancer::over_addrs(&[chunked], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /c HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.stream.read_to_end(&mut raw))
        .await
        .expect("not closed")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // Re-chunked as it came, ended with the last chunk.
    let mut decoded = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("chunk end");
    }
    assert_eq!(decoded, "hello world");

    let empty = raw_origin(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let b = Balancer::over_addrs(&[empty], &[]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /n HTTP/1.1\r\nhost: b\r\n\r\nGET /n HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        let resp = c.response().await.expect("no response");
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("content-length"), None);
        assert_eq!(resp.header("transfer-encoding"), None);
    }
}

/// Set when the origin's handler future is dropped: the origin saw its client (the
/// balancer) close the connection.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_cancels_it_upstream() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let seen = cancelled.clone();
    let origin = Origin::start(handler(move |_req| {
        let guard = Dropped(seen.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(guard);
            text(200, "late")
        }
    }))
    .await;
    let b = Balancer::over(&[&origin], &[("REQUEST_TIMEOUT", "60s")]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /slow HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { origin.hits() == 1 }).await,
        "the request did not reach the origin"
    );
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || async {
            cancelled.load(Ordering::SeqCst)
        })
        .await,
        "the upstream request went on after its client left"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.backend(origin.addr).await["in_flight"] == 0
        })
        .await,
        "the backend's in-flight count stayed up"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_the_current_exchange() {
    let origin = Origin::start(handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        text(200, "done")
    }))
    .await;
    let mut b = Balancer::over(&[&origin], &[("SHUTDOWN_GRACE", "10s")]).await;
    let mut idle = RawConn::connect(b.addr).await;
    idle.send(b"GET /first HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.response().await.expect("no response").status, 200);
    let mut busy = RawConn::connect(b.addr).await;
    busy.send(b"GET /slow HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = b.shutdown();
    // The idle keep-alive connection is closed at once; the busy one gets its answer,
    // marked as the last, and is closed after it.
    assert!(
        idle.closed_within(Duration::from_secs(2)).await.is_some(),
        "an idle connection stayed open during shutdown"
    );
    let resp = busy
        .response()
        .await
        .expect("in-flight request not answered");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(busy.closed_within(Duration::from_secs(2)).await.is_some());
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("shutdown did not finish")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_idle_timeout() {
    let origin = Origin::start(handler(|_req| async { text(200, vec![b'x'; 8 << 20]) })).await;
    let b = Balancer::over(&[&origin], &[("IDLE_TIMEOUT", "1s")]).await;
    let mut c = RawConn::connect(b.addr).await;
    c.send(b"GET /big HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    // Nothing read: the balancer's write waits on full socket buffers, which is idleness.
    // The connection is gone on the balancer's side without the client reading a byte.
    assert!(
        eventually(Duration::from_secs(4), || async {
            b.metric("balancer_connections_active").await == 0.0
        })
        .await,
        "a client that stopped reading kept its connection"
    );
    assert!(c.closed_within(Duration::from_secs(3)).await.is_some());
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.backend(origin.addr).await["in_flight"] == 0
        })
        .await,
        "the backend's in-flight count stayed up"
    );
}

/// Responses are queued for the end of the shard's turn (`write_batch`); when the client
/// reads slowly the socket takes only part of one, and the connection's task writes the rest
/// itself. Every response of a long pipeline then arrives whole and in order.
#[tokio::test]
async fn responses_a_slow_reader_leaves_in_the_socket_arrive_whole_and_in_order() {
    // Each response whole in one read of the upstream buffer (8 KiB), so each is queued.
    const BODY: usize = 4 * 1024;
    const REQUESTS: usize = 3000; // 12 MB: more than the socket buffers take
                                  // Each answer in one write, so the balancer has it whole at once (and queues it); the
                                  // body's letter follows the request's number.
    let origin = raw_origin_with(|head| {
        let n: usize = head
            .split(' ')
            .nth(1)
            .and_then(|p| p[1..].parse().ok())
            .unwrap_or(0);
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + BODY, b'a' + (n % 26) as u8);
        answer
    })
    .await;
    let b = Balancer::over_addrs(&[origin], &[]).await;
    // A small receive buffer: the balancer's writes soon find the socket full.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = RawConn::new(socket.connect(b.addr).await.unwrap());
    let mut pipeline = Vec::new();
    for i in 0..REQUESTS {
        pipeline.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nhost: b\r\n\r\n").as_bytes());
    }
    c.send(&pipeline).await.unwrap();
    // Nothing read for a while: the balancer fills the socket and has to wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..REQUESTS {
        let resp = tokio::time::timeout(Duration::from_secs(10), c.response())
            .await
            .unwrap_or_else(|_| panic!("response {i} did not arrive"))
            .unwrap_or_else(|| panic!("connection ended before response {i}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), BODY, "response {i}");
        let want = b'a' + (i % 26) as u8;
        assert!(
            resp.body.iter().all(|&x| x == want),
            "response {i} mixed up"
        );
    }
    assert!(c.unread().is_empty());
}

#[tokio::test]
async fn backend_fields_the_front_end_passes_through_equal_those_hyper_writes() {
    // Hop-by-hop fields (one named by `Connection`), a repeated name, a value with obs-text
    // and a tab, the backend's own Date, odd spellings.
    let origin = raw_origin(
        b"HTTP/1.1 200 OK\r\nServer: raw\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Obs: caf\xe9\tok\r\nx-a: 2\r\nKeep-Alive: timeout=5\r\nCONTENT-length: 5\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\nhello",
    )
    .await;
    let b = Balancer::over_addrs(&[origin], &[]).await;
    // HTTP/1.1: the own front end, which writes the fields as the own client read them.
    let mut own = RawConn::connect(b.addr).await;
    own.send(b"GET /a HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    let (status, mut passed) = own.response_fields().await.expect("no response");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let expected: Vec<(String, Vec<u8>)> = [
        ("server", &b"raw"[..]),
        ("x-a", b"1"),
        ("x-obs", b"caf\xe9\tok"),
        ("x-a", b"2"),
        ("content-length", b"5"),
        ("date", b"Mon, 07 Dec 2026 00:00:00 GMT"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_vec()))
    .collect();
    assert_eq!(passed, expected, "in the order the backend sent them");
    // The connection carries on.
    own.send(b"GET /b HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    let (_, again) = own.response_fields().await.expect("no second response");
    assert_eq!(again, expected);
    // HTTP/1.0 goes to hyper's server, which writes the head from the map.
    let mut hyper = RawConn::connect(b.addr).await;
    hyper
        .send(b"GET /c HTTP/1.0\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    let (_, mut mapped) = hyper
        .response_fields()
        .await
        .expect("no response from hyper");
    mapped.retain(|(n, _)| n != "connection");
    // The map keeps a repeated name's values together: compare by name, values in order.
    passed.sort_by(|a, b| a.0.cmp(&b.0));
    mapped.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(passed, mapped);
}

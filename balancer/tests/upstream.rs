//! Upstream keep-alive: connections to backends are reused, and a pooled connection the
//! backend has closed is replaced without the client noticing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 origin that counts accepted connections and answers `requests_per_conn`
/// requests on each (then closes it after `linger`).
struct CountingOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingOrigin {
    async fn start(requests_per_conn: usize, linger: Duration) -> CountingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (acc, ans) = (accepted.clone(), answered.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let ans = ans.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for _ in 0..requests_per_conn {
                        // Read one request head (these tests send no bodies).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let n = ans.fetch_add(1, Ordering::SeqCst);
                        let body = format!("answer {n}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(linger).await;
                });
            }
        });
        CountingOrigin {
            addr,
            accepted,
            answered,
            task,
        }
    }
}

impl Drop for CountingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let origin = CountingOrigin::start(usize::MAX, Duration::ZERO).await;
    let b = Balancer::over_addrs(&[origin.addr], &[]).await;
    for i in 0..50 {
        let (resp, body) = get(&b.url("/x")).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(body, format!("answer {i}"));
    }
    assert_eq!(origin.answered.load(Ordering::SeqCst), 50);
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "50 sequential requests should share one keep-alive connection"
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_backend_is_replaced() {
    // One answer per connection, then the backend hangs up (as an origin with a short
    // keep-alive timeout does): each pooled connection is dead by the next request.
    let origin = CountingOrigin::start(1, Duration::from_millis(20)).await;
    let b = Balancer::over_addrs(&[origin.addr], &[]).await;
    for i in 0..10 {
        let (resp, body) = get(&b.url("/y")).await;
        assert_eq!(resp.status(), 200, "request {i}: {body:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(origin.answered.load(Ordering::SeqCst), 10);
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 10);
    // Nothing was counted as a backend failure.
    assert_eq!(b.metric("balancer_retries_total").await, 0.0);
}

/// 32 client connections in turn, three requests each, through a balancer with two
/// per-core shards listening on `proxy`: every request is answered, the connections are
/// counted by the shard that accepted them, and each shard that served keeps its own upstream
/// connection (the requests never overlap, so a shard needs one at most). Returns the
/// connections each shard accepted.
async fn through_two_shards(proxy: TcpListener) -> [f64; 2] {
    let origin = CountingOrigin::start(usize::MAX, Duration::ZERO).await;
    let list = origin.addr.to_string();
    let mut b = Balancer::start_on(
        proxy,
        &[("STATIC_BACKENDS", list.as_str()), ("WORKER_THREADS", "2")],
    )
    .await;
    for conn in 0..32 {
        let c = client();
        for i in 0..3 {
            let req = hyper::Request::get(b.url("/s"))
                .body(http_body_util::Full::default())
                .unwrap();
            let (resp, _) = send(&c, req).await;
            assert_eq!(resp.status(), 200, "connection {conn}, request {i}");
        }
    }
    assert_eq!(origin.answered.load(Ordering::SeqCst), 96);
    let by_shard = [
        b.metric("balancer_shard_connections_total{shard=\"0\"}")
            .await,
        b.metric("balancer_shard_connections_total{shard=\"1\"}")
            .await,
    ];
    assert_eq!(by_shard[0] + by_shard[1], 32.0, "{by_shard:?}");
    assert_eq!(b.metric("balancer_connections_total").await, 32.0);
    // A connection the client has let go may still be open when the next one is accepted:
    // a shard with two of them passes the new one to the other (so both served).
    let serving = if b.metric("balancer_connections_moved_total").await > 0.0 {
        2
    } else {
        by_shard.iter().filter(|n| **n > 0.0).count()
    };
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        serving,
        "one upstream connection per shard that served ({by_shard:?})"
    );
    let addr = b.addr;
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("every shard stops")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no shard still listens after shutdown"
    );
    by_shard
}

#[tokio::test]
async fn per_core_shards_split_the_connections_and_keep_their_own_upstream_connections() {
    let proxy = balancer::shards::bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
    let by_shard = through_two_shards(proxy).await;
    // SO_REUSEPORT hashes connections over the two sockets: both get some (all 32 on one
    // would happen once in 2^31 runs).
    assert!(by_shard.iter().all(|n| *n > 0.0), "{by_shard:?}");
}

#[tokio::test]
async fn per_core_shards_share_a_socket_bound_without_reuseport() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Whichever shard calls accept first takes a connection: no split is promised.
    through_two_shards(proxy).await;
}

/// Sums a metric over the two shards.
async fn by_shard(b: &Balancer, family: &str) -> [f64; 2] {
    [
        b.metric(&format!("{family}{{shard=\"0\"}}")).await,
        b.metric(&format!("{family}{{shard=\"1\"}}")).await,
    ]
}

#[tokio::test]
async fn per_core_shards_even_out_the_open_connections() {
    // One socket for both shards: whichever reactor hears first takes a connection, so
    // left alone the split is as uneven as the wake-ups. Connections pile up (each stays
    // open), and a shard serving two more than the other hands new ones over.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = CountingOrigin::start(usize::MAX, Duration::ZERO).await;
    let list = origin.addr.to_string();
    let mut b = Balancer::start_on(
        proxy,
        &[("STATIC_BACKENDS", list.as_str()), ("WORKER_THREADS", "2")],
    )
    .await;
    let request = b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conns = Vec::new();
    for n in 0..24 {
        let mut c = RawConn::connect(b.addr).await;
        c.send(request).await.unwrap();
        let resp = c
            .response()
            .await
            .unwrap_or_else(|| panic!("connection {n}: no answer"));
        assert_eq!(resp.status, 200, "connection {n}");
        conns.push(c);
    }
    let open = by_shard(&b, "balancer_shard_connections_active").await;
    let accepted = by_shard(&b, "balancer_shard_connections_total").await;
    let moved = b.metric("balancer_connections_moved_total").await;
    assert_eq!(open[0] + open[1], 24.0, "{open:?}");
    assert!((open[0] - open[1]).abs() <= 2.0, "open by shard: {open:?}");
    assert_eq!(accepted[0] + accepted[1], 24.0, "{accepted:?}");
    // What a shard serves beyond what it accepted was moved to it.
    assert!(
        moved >= (accepted[0] - open[0]).abs(),
        "accepted {accepted:?}, open {open:?}, moved {moved}"
    );
    // A moved connection works as any other, for as long as it stays open.
    for (n, c) in conns.iter_mut().enumerate() {
        for _ in 0..3 {
            c.send(request).await.unwrap();
            let resp = c
                .response()
                .await
                .unwrap_or_else(|| panic!("connection {n}: no answer"));
            assert_eq!(resp.status, 200, "connection {n}");
        }
    }
    assert_eq!(origin.answered.load(Ordering::SeqCst), 24 * 4);
    drop(conns);
    assert!(
        eventually(Duration::from_secs(5), || async {
            by_shard(&b, "balancer_shard_connections_active").await == [0.0, 0.0]
                && b.metric("balancer_connections_active").await == 0.0
        })
        .await,
        "closed connections are no longer counted: {:?}",
        by_shard(&b, "balancer_shard_connections_active").await
    );
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("every shard stops")
        .unwrap();
}

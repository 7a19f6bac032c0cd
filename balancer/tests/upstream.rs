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

//! Listeners: accept loop, connection limits, idle timeout, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::body::ResponseBody;
use crate::config::Limits;
use crate::metrics::Metrics;

/// Builds the connection builder with the configured protections.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // No server pings: hyper sends them even on idle connections, and each one counts
        // as activity for `IdleTimeout`, so with IDLE_TIMEOUT > the ping interval an idle
        // h2 client was never closed. A dead peer is caught by `IdleTimeout` instead.
        .keep_alive_interval(None);
    b
}

/// Serves `handler` on `listener` until `shutdown` completes, then waits up to `grace` for
/// open connections to finish their requests.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    grace: Duration,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    let builder = builder(&limits);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Dropped when `serve` returns: connections still open after the grace close then,
    // instead of outliving the server.
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        info!("{name} listening on {addr}");
    }
    loop {
        // Hold a permit before accepting: at the cap, new clients wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{name}: set_nodelay failed for {peer}: {e}");
        }
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        metrics.connections_active.fetch_add(1, Ordering::Relaxed);
        let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
        let handler = handler.clone();
        // Set once a complete request head arrived (hyper calls the service only then).
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = first_request.clone();
        let service = service_fn(move |req| {
            if !seen.load(Ordering::Relaxed) {
                seen.store(true, Ordering::Relaxed);
            }
            let fut = handler(req, peer);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        let mut close = close_rx.clone();
        let head_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // hyper bounds HTTP/1 heads itself; this also bounds the first HTTP/2 HEADERS
            // frame (a slowloris over h2c would otherwise only meet IDLE_TIMEOUT).
            let mut head_deadline = std::pin::pin!(tokio::time::sleep(head_timeout));
            let mut armed = true;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!("{name}: connection from {peer} ended: {e}");
                        }
                        break;
                    }
                    _ = head_deadline.as_mut(), if armed => {
                        if first_request.load(Ordering::Relaxed) {
                            armed = false;
                        } else {
                            debug!("{name}: no complete request from {peer} within {head_timeout:?}; closing");
                            break;
                        }
                    }
                    // Nothing is ever sent: this completes once `close_tx` is dropped.
                    _ = close.changed() => {
                        debug!("{name}: connection from {peer} closed after the grace period");
                        break;
                    }
                }
            }
            metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    info!("{name}: stopped accepting; waiting up to {grace:?} for open requests");
    tokio::select! {
        _ = graceful.shutdown() => info!("{name}: all connections closed"),
        _ = tokio::time::sleep(grace) => warn!("{name}: grace period over; closing remaining connections"),
    }
    drop(close_tx);
}

/// A stream that fails with `TimedOut` after `timeout` without any read or write.
///
/// The deadline is re-armed lazily: activity only records a time stamp; when the timer
/// fires early it is pushed back to `last activity + timeout`.
pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> IdleTimeout<S> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Polled when the inner stream is pending: `Err` once idle for too long.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let deadline = self.last + self.timeout;
            if deadline <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                this.last = Instant::now();
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if r.is_ready() {
            this.last = Instant::now();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            this.last = Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

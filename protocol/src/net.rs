//! Accepting connections, shared by every listener of both services: a cap on concurrent
//! connections (at the cap, new clients wait in the listen backlog instead of being accepted
//! and starved), an idle timeout on every connection ([`IdleTimeout`]: no byte read or
//! written for that long and the stream fails with `TimedOut`), and a stop on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use log::{debug, warn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A listener with a connection cap and an idle timeout.
pub struct Acceptor {
    name: &'static str,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

/// A cap of `max_connections` (at least 1) open connections, for [`Acceptor::sharing`].
pub fn cap(max_connections: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_connections.max(1)))
}

/// One accepted connection; its slot under the cap is held until `permit` is dropped.
pub struct Accepted {
    pub stream: IdleTimeout<TcpStream>,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

impl Acceptor {
    /// `name` is for log lines; at most `max_connections` (at least 1) at once.
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        max_connections: usize,
        idle: Duration,
    ) -> Acceptor {
        Acceptor::sharing(name, listener, cap(max_connections), idle)
    }

    /// An acceptor whose connections count against `permits`, a cap (see [`cap`]) that
    /// other acceptors may share: listeners of one service on several threads.
    pub fn sharing(
        name: &'static str,
        listener: TcpListener,
        permits: Arc<Semaphore>,
        idle: Duration,
    ) -> Acceptor {
        Acceptor {
            name,
            listener,
            permits,
            idle,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The idle timeout its connections get.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The next connection (`TCP_NODELAY` set), or `None` once `shutdown` completes. A
    /// failing `accept` (EMFILE and friends) is logged and retried after a pause.
    pub async fn next<S: Future<Output = ()>>(
        &self,
        mut shutdown: Pin<&mut S>,
    ) -> Option<Accepted> {
        // Hold a permit before accepting: at the cap, new clients wait in the backlog.
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.ok()?,
            _ = shutdown.as_mut() => return None,
        };
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.as_mut() => return None,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!("{}: set_nodelay failed for {peer}: {e}", self.name);
                    }
                    return Some(Accepted {
                        stream: IdleTimeout::new(stream, self.idle),
                        peer,
                        permit,
                    });
                }
                Err(e) => {
                    warn!("{}: accept failed: {e}", self.name);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.as_mut() => return None,
                    }
                }
            }
        }
    }
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
    /// The waker the timer last registered: while the stream is polled by the same task and
    /// the timer has not fired, polling the timer again would change nothing (it cost a few
    /// hundred instructions per request, on every read that had to wait).
    armed_for: Option<Waker>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> IdleTimeout<S> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            armed_for: None,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream without its timer (which belongs to the runtime it was made on): to move
    /// the stream to another runtime, where a new `IdleTimeout` watches it.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Polled when the inner stream is pending: `Err` once idle for too long.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.timer.is_elapsed()
            && self
                .armed_for
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Ok(());
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                self.armed_for = Some(cx.waker().clone());
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

    /// After a read or a write of the inner stream: activity if it went through; if it has
    /// to wait, the idle check. A write waits when the peer takes no bytes, so a client that
    /// stops reading is idle too, whether or not anyone is reading from it at the time.
    fn after_io<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.last = Instant::now();
                ready
            }
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
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.after_io(r, cx)
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
        this.after_io(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_io(r, cx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_cap_holds_new_clients_in_the_backlog() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new("test", listener, 1, Duration::from_secs(60));
        let never = std::future::pending::<()>();
        let mut never = std::pin::pin!(never);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.next(never.as_mut()).await.expect("first");
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let second =
            tokio::time::timeout(Duration::from_millis(200), acceptor.next(never.as_mut())).await;
        assert!(
            second.is_err(),
            "a second connection is not accepted at the cap"
        );
        drop(first);
        let second =
            tokio::time::timeout(Duration::from_secs(2), acceptor.next(never.as_mut())).await;
        assert!(
            matches!(second, Ok(Some(_))),
            "accepted once the first is gone"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new("test", listener, 4, Duration::from_secs(60));
        let done = std::future::ready(());
        let done = std::pin::pin!(done);
        assert!(acceptor.next(done).await.is_none());
    }

    /// A connected client and the accepted server side, with a 300 ms idle timeout.
    async fn idle_pair() -> (TcpStream, IdleTimeout<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new("test", listener, 4, Duration::from_millis(300));
        let never = std::future::pending::<()>();
        let mut never = std::pin::pin!(never);
        let client = TcpStream::connect(addr).await.unwrap();
        let server = acceptor.next(never.as_mut()).await.unwrap().stream;
        (client, server)
    }

    #[tokio::test]
    async fn an_idle_stream_fails_and_an_active_one_lives() {
        let (mut client, mut server) = idle_pair().await;
        // Activity every 100 ms keeps it open past the timeout.
        let mut buf = [0u8; 1];
        let mut last_activity = Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            last_activity = Instant::now();
        }
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let idle = last_activity.elapsed();
        assert!(
            idle >= Duration::from_millis(290),
            "closed after {idle:?} of idleness"
        );
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_times_out_a_blocked_write() {
        let (_client, mut server) = idle_pair().await;
        // Nobody reads on either side: the socket buffers fill, the write waits, and the
        // idle timeout ends it (instead of leaving it waiting for ever).
        let chunk = vec![0u8; 64 * 1024];
        let start = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the blocked write never timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(290));
    }

    #[tokio::test]
    async fn the_timeout_wakes_whichever_task_reads_now() {
        let (_client, mut server) = idle_pair().await;
        // This task waits for a read (the timer is armed with its waker), then gives up ...
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(waited.is_err(), "read returned: {waited:?}");
        // ... and another task reads: the timer must wake that one.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            server.read(&mut buf).await
        });
        let read = tokio::time::timeout(Duration::from_secs(3), reader)
            .await
            .expect("the task reading now was never woken by the idle timeout")
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}

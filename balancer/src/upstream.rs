//! Keep-alive HTTP/1.1 connections to one backend, driven by the task that uses them.
//!
//! Each backend owns a [`ConnPool`]: a short LIFO stack of idle connections behind a mutex
//! held only to push or pop. A connection is a [`Link`]: hyper's `SendRequest` and the future
//! that moves the connection's bytes. No task of its own polls that future: whoever holds the
//! link does, so the request is written, the response head read and its body streamed inside
//! the client connection's task, with no hand-off between tasks (the scheduling and wake-ups
//! of a second task per exchange were a large share of the proxy's CPU per request).
//!
//! A request takes the most recently used connection (or opens one); the link travels with
//! the response body ([`UpstreamBody`]) and goes back to the pool when the body has been read
//! to the end. A body abandoned half-way closes its connection. An idle connection is polled
//! again when it is next taken, which is when a close by the backend is noticed.
//!
//! A request that hyper hands back unsent (the pooled connection was found closed before the
//! request was written) is sent again on a new connection: nothing reached the backend, so this
//! is safe for every method.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use log::debug;
use tokio::net::TcpStream;

use crate::request_body::RequestBody;

/// Idle connections kept per backend; more are closed when returned.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed instead of reused.
const IDLE_EXPIRY: Duration = Duration::from_secs(90);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened: nothing was sent, retrying elsewhere is safe.
    #[error("connect to {address} failed: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connect to {address} timed out after {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    /// The request may have reached the backend.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A failed exchange. `request` is handed back when nothing was sent (no connection could
/// be opened): it can go to another backend as it is.
pub struct Unsent {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
}

/// The future that reads and writes one connection's socket (hyper's dispatcher).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One keep-alive connection: the request sender and the connection's driver, polled by
/// whoever holds the link.
struct Link {
    sender: http1::SendRequest<RequestBody>,
    /// `None` once the connection has closed.
    driver: Option<Driver>,
}

impl Link {
    /// Moves the connection's bytes as far as they go without blocking. False once the
    /// connection has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(r) = driver.as_mut().poll(cx) {
                if let Err(e) = r {
                    debug!("upstream connection ended: {e}");
                }
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Leaves the connection to a task of its own (after a protocol switch, hyper hands the
    /// socket over only when the driver completes).
    fn detach(mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    debug!("upstream connection ended: {e}");
                }
            });
        }
    }

    fn is_reusable(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

/// The idle connections of one backend.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
}

impl ConnPool {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used live connection, ready for a request.
    async fn checkout(&self) -> Option<Link> {
        loop {
            let Idle { mut link, since } = self.lock().pop()?;
            if since.elapsed() > IDLE_EXPIRY {
                continue;
            }
            // Usually ready at once; right after a response the driver needs one turn to
            // settle, and a backend's close is noticed here.
            let ready = poll_fn(|cx| {
                if !link.drive(cx) {
                    return Poll::Ready(false);
                }
                link.sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready {
                return Some(link);
            }
        }
    }

    fn put(&self, link: Link) {
        if !link.is_reusable() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `address` over a pooled connection (or a new one).
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        connect_timeout: Duration,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut link = match self.checkout().await {
                Some(l) => l,
                None => {
                    fresh = true;
                    match connect(address, connect_timeout).await {
                        Ok(link) => link,
                        Err(error) => {
                            return Err(Unsent {
                                error,
                                request: Some(req),
                            })
                        }
                    }
                }
            };
            let mut pending = std::pin::pin!(link.sender.try_send_request(req));
            // The driver writes the request and reads the response head in this task.
            let result = poll_fn(|cx| {
                link.drive(cx);
                pending.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = Arc::clone(self);
                    return Ok(resp.map(|body| UpstreamBody {
                        body,
                        link: Some(link),
                        pool,
                        failed: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the pooled connection was closing. Safe to send again.
                    Some(unsent) if !fresh => {
                        debug!("pooled connection to {address} closed before use; reconnecting");
                        req = unsent;
                    }
                    _ => {
                        return Err(Unsent {
                            error: UpstreamError::Http(e.into_error()),
                            request: None,
                        })
                    }
                },
            }
        }
    }
}

/// A response body from a backend. Polling it drives the connection it arrives on; the
/// connection goes back to its pool once the body has been read to the end, and is closed
/// if the body is dropped before that (hyper would close it too: the rest of the body
/// would still be on the wire).
pub struct UpstreamBody {
    body: Incoming,
    link: Option<Link>,
    pool: Arc<ConnPool>,
    /// A failure held back for one turn (see [`UpstreamBody::poll_frame`]).
    failed: Option<hyper::Error>,
}

impl UpstreamBody {
    /// Hands the connection to a task of its own; used after `101 Switching Protocols`,
    /// where the upgraded socket is only released once the driver completes.
    pub fn detach(mut self) {
        if let Some(link) = self.link.take() {
            link.detach();
        }
    }

    fn release(&mut self) {
        if let Some(link) = self.link.take() {
            self.pool.put(link);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(link) = this.link.as_mut() {
            link.drive(cx);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The head and the bytes read before the backend failed often arrive in the
                // same turn as the failure. Failing at once would make hyper drop them
                // unflushed (the client would see a bare close); yielding once lets them
                // reach the client first.
                this.link = None;
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            r => r,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) may never be polled.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

async fn connect(address: &str, timeout: Duration) -> Result<Link, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect {
                address: address.to_string(),
                source,
            })
        }
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                address: address.to_string(),
                timeout,
            })
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Connect {
            address: address.to_string(),
            source: std::io::Error::other(source),
        })?;
    Ok(Link {
        sender,
        driver: Some(Box::pin(conn.with_upgrades())),
    })
}

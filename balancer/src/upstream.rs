//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Each backend owns a [`ConnPool`]: a short LIFO stack of idle `hyper::client::conn::http1`
//! senders behind a mutex held only to push or pop. A request takes the most recently used
//! connection (or opens one). The sender travels with the response body ([`UpstreamBody`])
//! and goes back to the pool when the body has been read to the end, so no task is spawned
//! per request to watch for the connection becoming idle again; a body abandoned half-way
//! closes its connection. Each connection's bytes are moved by a task of its own (one per
//! connection, not per request).
//!
//! Driving the connection inside the client connection's task instead was measured and
//! rejected: hyper's client still hands requests and responses to its dispatcher over
//! channels, and every wake-up then re-polled the whole server-side future: +4,400
//! instructions per request (callgrind) and about 10 % fewer requests/s (see
//! `artefacts/bench-proxy-notes.md`).
//!
//! A client that stops taking a response (an HTTP/2 stream whose flow-control window stays
//! shut, an HTTP/1.1 client that stops reading) would otherwise hold the response's backend
//! connection for as long as its own connection lives: on HTTP/2 other streams keep that
//! alive indefinitely. Each connection's task therefore also runs a watchdog ([`Lease`]):
//! when a response body is out and the client has not taken a frame for
//! `Dial::stall_timeout` (`IDLE_TIMEOUT`), the backend connection is closed and the stream
//! fails. The time a body waits for the backend does not count: a slow backend is not a
//! stalled client. The hot path pays one relaxed atomic add and one store per body frame.
//!
//! A request that hyper hands back unsent (the pooled connection was found closed before the
//! request was written) is sent again on a new connection: nothing reached the backend, so this
//! is safe for every method.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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

/// How connections are opened: the connect timeout and the size of each connection's read
/// buffer (`UPSTREAM_BUFFER_BYTES`). The buffer also bounds a response head, and every body
/// chunk handed to a slow client is cut from it: with hyper's default (grows to 408 KiB) one
/// slow reader could pin half a MiB.
///
/// `stall_timeout`: a response body the client takes nothing from for this long has its
/// connection closed (see the module doc); each time, `stalls` is incremented.
#[derive(Debug, Clone)]
pub struct Dial {
    pub connect_timeout: Duration,
    pub buffer_bytes: usize,
    pub stall_timeout: Option<Duration>,
    pub stalls: Arc<AtomicU64>,
}

impl Dial {
    /// Without a stall watchdog (short exchanges whose body the balancer reads itself).
    pub fn unwatched(connect_timeout: Duration, buffer_bytes: usize) -> Dial {
        Dial {
            connect_timeout,
            buffer_bytes,
            stall_timeout: None,
            stalls: Arc::default(),
        }
    }
}

/// No response body is out on the connection.
const IDLE: u8 = 0;
/// The body's last poll gave a frame (or it has not been polled yet): the client's turn.
const CLIENT_TURN: u8 = 1;
/// The body's last poll was pending: the backend owes bytes.
const BACKEND_TURN: u8 = 2;

/// What a connection's watchdog reads about the response body out on it.
#[derive(Debug, Default)]
pub struct Lease {
    turn: AtomicU8,
    polls: AtomicU64,
    /// The watchdog closed the connection.
    cut: AtomicBool,
}

impl Lease {
    fn start(&self) {
        self.turn.store(CLIENT_TURN, Ordering::Relaxed);
    }

    fn polled(&self, pending: bool) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.turn.store(
            if pending { BACKEND_TURN } else { CLIENT_TURN },
            Ordering::Relaxed,
        );
    }

    fn end(&self) {
        self.turn.store(IDLE, Ordering::Relaxed);
    }

    /// Whether the watchdog closed this body's connection.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// Resolves once a body has been out with the client, untouched, for `timeout` (checked
/// every half of it, so the cut comes between 1× and 1.5× `timeout` after the last frame).
async fn stalled(lease: &Lease, timeout: Duration) {
    let period = timeout / 2;
    let mut last = u64::MAX;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(period).await;
        let polls = lease.polls.load(Ordering::Relaxed);
        let clients_turn = lease.turn.load(Ordering::Relaxed) == CLIENT_TURN;
        quiet = if clients_turn && polls == last {
            quiet + 1
        } else {
            0
        };
        last = polls;
        if quiet >= 2 {
            return;
        }
    }
}

/// hyper refuses a smaller maximum buffer.
pub const MIN_BUFFER_BYTES: usize = 8192;

/// A failed exchange. `request` is handed back when nothing was sent (no connection could
/// be opened): it can go to another backend as it is.
pub struct Unsent {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
}

/// One keep-alive connection: its request sender and what its watchdog reads.
struct Sender {
    send: http1::SendRequest<RequestBody>,
    lease: Arc<Lease>,
}

struct Idle {
    sender: Sender,
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
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let Idle { mut sender, since } = self.lock().pop()?;
            if since.elapsed() > IDLE_EXPIRY {
                continue;
            }
            if sender.send.is_closed() {
                continue;
            }
            // Usually ready at once; right after a response it may take one dispatcher turn.
            if sender.send.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put(&self, sender: Sender) {
        if sender.send.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `address` over a pooled connection (or a new one).
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        dial: &Dial,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut sender = match self.checkout().await {
                Some(l) => l,
                None => {
                    fresh = true;
                    match connect(address, dial).await {
                        Ok(sender) => sender,
                        Err(error) => {
                            return Err(Unsent {
                                error,
                                request: Some(req),
                            })
                        }
                    }
                }
            };
            match sender.send.try_send_request(req).await {
                Ok(resp) => {
                    sender.lease.start();
                    let pool = Arc::clone(self);
                    let lease = sender.lease.clone();
                    return Ok(resp.map(|body| UpstreamBody {
                        body,
                        lease,
                        sender: Some(sender),
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

/// A response body from a backend. Its connection goes back to the pool once the body has
/// been read to the end, and is closed if the body is dropped before that (the rest of the
/// body would still be on the wire).
pub struct UpstreamBody {
    body: Incoming,
    sender: Option<Sender>,
    /// Kept after the sender is gone, for [`UpstreamBody::stalled`].
    lease: Arc<Lease>,
    pool: Arc<ConnPool>,
    /// A failure held back for one turn (see [`UpstreamBody::poll_frame`]).
    failed: Option<hyper::Error>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.lease.end();
            self.pool.put(sender);
        }
    }

    /// The stall watchdog closed this body's connection: the failure is the client's.
    pub fn stalled(&self) -> bool {
        self.lease.was_cut()
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
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(sender) = &this.sender {
            sender.lease.polled(r.is_pending());
        }
        match r {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The head and the bytes read before the backend failed may arrive in the
                // same turn as the failure. Failing at once would make hyper's server drop
                // them unflushed (the client would see a bare close); yielding once lets
                // them reach the client first.
                this.sender = None;
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

async fn connect(address: &str, dial: &Dial) -> Result<Sender, UpstreamError> {
    let timeout = dial.connect_timeout;
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
    let (send, conn) = http1::Builder::new()
        .max_buf_size(dial.buffer_bytes.max(MIN_BUFFER_BYTES))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Connect {
            address: address.to_string(),
            source: std::io::Error::other(source),
        })?;
    // One task per connection (not per request); it ends when the connection closes, which
    // happens once the pool drops the sender, the backend hangs up, or the watchdog finds
    // a client that stopped taking the response.
    let lease = Arc::new(Lease::default());
    let watch = dial
        .stall_timeout
        .map(|t| (t, lease.clone(), dial.stalls.clone()));
    let address = address.to_string();
    tokio::spawn(async move {
        let conn = conn.with_upgrades();
        let Some((timeout, lease, stalls)) = watch else {
            if let Err(e) = conn.await {
                debug!("upstream connection ended: {e}");
            }
            return;
        };
        tokio::select! {
            biased;
            ended = conn => if let Err(e) = ended {
                debug!("upstream connection ended: {e}");
            },
            () = stalled(&lease, timeout) => {
                lease.cut.store(true, Ordering::Relaxed);
                stalls.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "closing the connection to {address}: the client took nothing of the \
                     response for {timeout:?}"
                );
            }
        }
    });
    Ok(Sender { send, lease })
}

//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Two kinds: a request whose body is in memory (none, or buffered) and that asks for no
//! upgrade goes over the balancer's own client ([`crate::h1`]), driven by the client
//! connection's task itself; a streamed request body or an upgrade goes over hyper's client,
//! described below. Both kinds share the pool's logic and the stall watchdog.
//!
//! Each backend owns a [`ConnPool`]: short LIFO stacks of idle connections (own ones, and
//! `hyper::client::conn::http1` senders) behind mutexes held only to push or pop. A request takes the most recently used
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

use std::future::{poll_fn, Future};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::{header, HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use log::debug;
use tokio::net::TcpStream;

use crate::h1::{self, Chunk, ChunkedDecoder, Framing, H1Error, RawFields};
use crate::headers::{strip_hop_by_hop, Forwarded};
use crate::request_body::RequestBody;
use crate::shards::PerShard;
use crate::write_batch::{Deferred, Outcome};

/// Errors of response bodies (hyper's or [`H1Error`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// The same, on the balancer's own client.
    #[error(transparent)]
    Own(#[from] H1Error),
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
    /// The connection is gone: the watchdog stops (own connections; a hyper connection's
    /// watchdog ends with its task).
    closed: AtomicBool,
    /// An own connection's socket. It lives here, not in the connection, so that the
    /// watchdog can close it while the body is not being polled (a shutdown would not do:
    /// the backend, blocked writing into a full window, only notices a reset).
    socket: ArcSwapOption<TcpStream>,
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

    /// The watchdog found the client stalled: close the connection under the body (the
    /// socket closes as soon as no poll holds it).
    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.socket.store(None);
    }

    /// The connection was dropped.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.socket.store(None);
    }

    /// The own connection's socket, unless it was cut.
    fn io(&self) -> Result<Arc<TcpStream>, H1Error> {
        self.socket.load_full().ok_or(H1Error::Stalled)
    }
}

/// Resolves to `true` once a body has been out with the client, untouched, for `timeout`
/// (checked every half of it, so the cut comes between 1× and 1.5× `timeout` after the
/// last frame), or to `false` once the connection is closed.
async fn stalled(lease: &Lease, timeout: Duration) -> bool {
    let period = timeout / 2;
    let mut last = u64::MAX;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(period).await;
        if lease.closed.load(Ordering::Relaxed) {
            return false;
        }
        let polls = lease.polls.load(Ordering::Relaxed);
        let clients_turn = lease.turn.load(Ordering::Relaxed) == CLIENT_TURN;
        quiet = if clients_turn && polls == last {
            quiet + 1
        } else {
            0
        };
        last = polls;
        if quiet >= 2 {
            return true;
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

/// One of the balancer's own HTTP/1.1 connections (see [`crate::h1`]); its socket is in
/// its [`Lease`].
struct OwnConn {
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// What the connection reads at a time (`UPSTREAM_BUFFER_BYTES`).
    chunk: usize,
    lease: Arc<Lease>,
    since: Instant,
    /// The field names of the last response head (see [`h1::NameCache`]).
    names: h1::NameCache,
    /// The request's write, queued for the end of the shard's turn
    /// ([`crate::write_batch`]); `None` where writes are not queued.
    deferred: Option<Deferred>,
}

impl OwnConn {
    /// Whether nothing written on the connection is still to be settled.
    fn settled(&self) -> bool {
        self.deferred.as_ref().is_none_or(Deferred::is_idle)
    }
}

impl Drop for OwnConn {
    fn drop(&mut self) {
        self.lease.close();
    }
}

/// The idle connections of one backend, per shard ([`crate::shards`]): a connection is
/// reused by the shard that opened it, whose reactor its socket is registered with.
#[derive(Default)]
pub struct ConnPool {
    idle: PerShard<Mutex<Vec<Idle>>>,
    own: PerShard<Mutex<Vec<OwnConn>>>,
}

/// Whether a request with `body` and `headers` goes through the balancer's own client: its
/// body is in memory and it asks for no upgrade. The rest goes through hyper's.
pub fn goes_own(body: &RequestBody, headers: &HeaderMap) -> bool {
    body.in_memory().is_some() && !headers.contains_key(header::UPGRADE)
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnPool {
    /// The most recently used own connection that is still open and silent, at `now`.
    fn checkout_own(&self, now: Instant) -> Option<OwnConn> {
        loop {
            let mut conn = locked(self.own.local()).pop()?;
            if now.saturating_duration_since(conn.since) > IDLE_EXPIRY {
                continue;
            }
            // An idle connection has nothing to say: a byte or an end of stream means the
            // backend closed it (or broke the protocol).
            // Only a socket the reactor saw become readable is asked (a system call per
            // reuse would cost more than everything else this check does).
            let alive = conn.lease.socket.load().as_ref().is_some_and(|io| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                io.poll_read_ready(&mut cx).is_pending()
                    || matches!(io.try_read(&mut [0u8; 1]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            if alive {
                // Idle from now on as far as the pool knows: the exchange's start stands in
                // for its end, which only makes the connection look older (no clock read).
                conn.since = now;
                return Some(conn);
            }
        }
    }

    fn put_own(&self, conn: OwnConn) {
        let mut idle = locked(self.own.local());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// The most recently used live connection, ready for a request.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let Idle { mut sender, since } = locked(self.idle.local()).pop()?;
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
        let mut idle = locked(self.idle.local());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `address` over a pooled connection (or a new one). The response head
    /// comes back without its hop-by-hop fields (but for a `101`). `forwarded` is
    /// written into the head of a request that [`goes_own`]; for one that goes through
    /// hyper's client it must be `None` (already in the headers). `raw_fields`: a caller that
    /// only writes the response head out again takes its fields unparsed
    /// ([`UpstreamBody::raw_fields`]) when the own client reads it; the response's map is
    /// then empty (hyper's client always fills it).
    ///
    /// Not an async function itself: it hands over the future of the client that takes the
    /// request, so the caller holds that one directly (one async level less to move the
    /// request through); hyper's path, the rarer one, is boxed.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        address: &'a str,
        dial: &'a Dial,
        req: Request<RequestBody>,
        forwarded: Option<&'a Forwarded>,
        raw_fields: bool,
        now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Unsent>> + Send + 'a {
        if goes_own(req.body(), req.headers()) {
            let body = req.body().in_memory().flatten().cloned();
            Either::Left(self.send_own(address, dial, req, body, forwarded, raw_fields, now))
        } else {
            debug_assert!(forwarded.is_none(), "forwarding fields not added for hyper");
            Either::Right(Box::pin(self.send_hyper(address, dial, req)))
        }
    }

    /// [`ConnPool::send`] over hyper's client (streamed bodies, upgrades).
    async fn send_hyper(
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
                Ok(mut resp) => {
                    // As the own client gives it; a protocol switch keeps its fields for
                    // the proxy, which tunnels it.
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        strip_hop_by_hop(resp.headers_mut(), false);
                    }
                    sender.lease.start();
                    let pool = Arc::clone(self);
                    let lease = sender.lease.clone();
                    return Ok(resp.map(|body| UpstreamBody {
                        lease,
                        failed: None,
                        fields: None,
                        inner: Inner::Hyper {
                            body,
                            sender: Some(sender),
                            pool,
                        },
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

    /// [`ConnPool::send`] over the balancer's own client: `body` is the request's body,
    /// in memory.
    #[allow(clippy::too_many_arguments)]
    async fn send_own(
        self: &Arc<Self>,
        address: &str,
        dial: &Dial,
        req: Request<RequestBody>,
        body: Option<Bytes>,
        forwarded: Option<&Forwarded>,
        raw_fields: bool,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        let mut head = Vec::with_capacity(512 + body.as_ref().map_or(0, Bytes::len));
        h1::encode_request(&req, body.as_ref(), forwarded, &mut head);
        let failed = |error: H1Error| Unsent {
            error: UpstreamError::Own(error),
            request: None,
        };
        loop {
            let (mut conn, fresh) = match self.checkout_own(now) {
                Some(conn) => (conn, false),
                None => match connect_own(address, dial).await {
                    Ok(conn) => (conn, true),
                    Err(error) => {
                        return Err(Unsent {
                            error,
                            request: Some(req),
                        })
                    }
                },
            };
            let io = conn.lease.io().map_err(failed)?;
            // Queued, the request goes out at the end of the shard's turn; its failure is
            // seen while the head is awaited.
            let queued = conn
                .deferred
                .as_ref()
                .is_some_and(|d| d.queue(&[&head], Some(&io)));
            let sent = if queued {
                read_head(&mut conn, &io, req.method(), raw_fields).await
            } else {
                match write_counting(&io, &head).await {
                    Ok(()) => read_head(&mut conn, &io, req.method(), raw_fields).await,
                    Err(e) => Err(HeadError::Write(e)),
                }
            };
            let h1::Head {
                resp,
                framing,
                reusable,
                fields,
            } = match sent {
                Ok(head) => head,
                // Nothing written on a pooled connection: it was closing. Safe to send again.
                Err(HeadError::Write((_, 0))) if !fresh => {
                    debug!("pooled connection to {address} closed before use; reconnecting");
                    continue;
                }
                Err(HeadError::Write((e, _))) => return Err(failed(H1Error::Io(e))),
                Err(HeadError::Read(e)) => return Err(failed(e)),
            };
            drop(io);
            let state = match framing {
                Framing::Empty | Framing::Length(0) => OwnState::Done,
                Framing::Length(n) => OwnState::Length(n),
                Framing::Chunked => OwnState::Chunked(ChunkedDecoder::new(conn.chunk)),
                Framing::UntilClose => OwnState::UntilClose,
            };
            conn.lease.start();
            let lease = conn.lease.clone();
            return Ok(resp.map(|()| UpstreamBody {
                lease,
                failed: None,
                fields,
                inner: Inner::Own {
                    conn: Some(conn),
                    state,
                    reusable,
                    pool: Arc::clone(self),
                },
            }));
        }
    }
}

/// Writes all of `bytes`; on failure also says how many were written.
async fn write_counting(io: &TcpStream, bytes: &[u8]) -> Result<(), (std::io::Error, usize)> {
    let mut written = 0;
    while written < bytes.len() {
        match io.try_write(&bytes[written..]) {
            Ok(0) => return Err((std::io::ErrorKind::WriteZero.into(), written)),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                io.writable().await.map_err(|e| (e, written))?;
            }
            Err(e) => return Err((e, written)),
        }
    }
    Ok(())
}

/// Why no response head was read.
enum HeadError {
    /// Writing the request failed, after this many bytes.
    Write((std::io::Error, usize)),
    Read(H1Error),
}

impl From<H1Error> for HeadError {
    fn from(e: H1Error) -> Self {
        HeadError::Read(e)
    }
}

/// Reads the final response head (informational ones are skipped) within the connection's
/// buffer size, watching the request's queued write meanwhile. `raw_fields`: as
/// [`h1::parse_head`]'s.
async fn read_head(
    conn: &mut OwnConn,
    io: &TcpStream,
    method: &http::Method,
    raw_fields: bool,
) -> Result<h1::Head, HeadError> {
    loop {
        match h1::parse_head(&mut conn.buf, method, &mut conn.names, raw_fields)? {
            Some(head) if head.resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                return Err(H1Error::Malformed("101 without an upgrade asked for").into());
            }
            Some(head) if head.resp.status().is_informational() => continue,
            Some(head) => return Ok(head),
            None if conn.buf.len() >= conn.chunk => {
                return Err(H1Error::HeadTooLarge(conn.chunk).into())
            }
            None => {
                let OwnConn {
                    buf,
                    chunk,
                    deferred,
                    ..
                } = conn;
                let read = poll_fn(|cx| {
                    if let Some(Poll::Ready(fault)) = deferred.as_ref().map(|d| d.poll_fault(cx)) {
                        return Poll::Ready(Err(fault));
                    }
                    h1::poll_fill(io, buf, *chunk, cx).map(Ok)
                })
                .await;
                match read {
                    Ok(Ok(0)) => return Err(H1Error::ClosedBeforeHead.into()),
                    Ok(Ok(_)) | Err(Outcome::Done) => {}
                    Ok(Err(e)) => return Err(H1Error::Io(e).into()),
                    // The socket took part of the request: the rest is written here.
                    Err(Outcome::Rest { rest, sent }) => {
                        write_counting(io, &rest)
                            .await
                            .map_err(|(e, n)| HeadError::Write((e, sent + n)))?;
                    }
                    Err(Outcome::Failed(e, n)) => return Err(HeadError::Write((e, n))),
                }
            }
        }
    }
}

/// Where an own connection's response body is.
enum OwnState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

enum Inner {
    Hyper {
        body: Incoming,
        sender: Option<Sender>,
        pool: Arc<ConnPool>,
    },
    Own {
        /// `None` once released or failed.
        conn: Option<OwnConn>,
        state: OwnState,
        reusable: bool,
        pool: Arc<ConnPool>,
    },
}

/// A response body from a backend. Its connection goes back to the pool once the body has
/// been read to the end, and is closed if the body is dropped before that (the rest of the
/// body would still be on the wire).
pub struct UpstreamBody {
    inner: Inner,
    /// Kept after the connection is gone, for [`UpstreamBody::stalled`].
    lease: Arc<Lease>,
    /// A failure held back for one turn (see [`UpstreamBody::poll_frame`]).
    failed: Option<BoxError>,
    /// The response's end-to-end fields, unparsed, when [`ConnPool::send`] was asked for
    /// them so (the response's own map is then empty).
    fields: Option<RawFields>,
}

impl UpstreamBody {
    /// The response's end-to-end fields as the backend sent them, if they were asked for
    /// unparsed ([`ConnPool::send`]'s `raw_fields`): the response's map is then empty.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        self.fields.as_ref()
    }

    /// Takes the fields [`UpstreamBody::raw_fields`] gives.
    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.fields.take()
    }

    fn release(&mut self) {
        match &mut self.inner {
            Inner::Hyper { sender, pool, .. } => {
                if let Some(sender) = sender.take() {
                    sender.lease.end();
                    pool.put(sender);
                }
            }
            Inner::Own {
                conn,
                reusable,
                pool,
                ..
            } => {
                if let Some(conn) = conn.take() {
                    // Bytes past the end of the body: the backend broke the framing.
                    if *reusable && conn.buf.is_empty() && conn.settled() {
                        conn.lease.end();
                        pool.put_own(conn);
                    }
                }
            }
        }
    }

    /// The stall watchdog closed this body's connection: the failure is the client's.
    pub fn stalled(&self) -> bool {
        self.lease.was_cut()
    }

    /// The next frame of an own connection's body.
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Inner::Own { conn, state, .. } = &mut self.inner else {
            return Poll::Ready(None);
        };
        loop {
            let Some(c) = conn.as_mut() else {
                return Poll::Ready(None);
            };
            match state {
                OwnState::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                OwnState::Length(left) if !c.buf.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(c.buf.len());
                    let data = c.buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        *state = OwnState::Done;
                        // hyper may not poll again once the body says it has ended.
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                OwnState::UntilClose if !c.buf.is_empty() => {
                    let data = c.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                OwnState::Chunked(decoder) => match decoder.decode(&mut c.buf) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::Trailers(trailers))) => {
                        *state = OwnState::Done;
                        self.release();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Some(Chunk::End)) => {
                        *state = OwnState::Done;
                        self.release();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        *conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                _ => {}
            }
            let socket = c.lease.socket.load();
            let Some(io) = socket.as_ref() else {
                *conn = None;
                return Poll::Ready(Some(Err(H1Error::Stalled.into())));
            };
            let read = match h1::poll_fill(io, &mut c.buf, c.chunk, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            drop(socket);
            let error = match read {
                Ok(0) if matches!(state, OwnState::UntilClose) => {
                    *state = OwnState::Done;
                    *conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => H1Error::ClosedInBody,
                Ok(_) => continue,
                Err(e) => H1Error::Io(e),
            };
            *conn = None;
            let error = if self.lease.was_cut() {
                H1Error::Stalled
            } else {
                error
            };
            return Poll::Ready(Some(Err(error.into())));
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let r = match &mut this.inner {
            Inner::Hyper { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
            Inner::Own { .. } => this.poll_own(cx),
        };
        this.lease.polled(r.is_pending());
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
                match &mut this.inner {
                    Inner::Hyper { sender, .. } => *sender = None,
                    Inner::Own { conn, .. } => *conn = None,
                }
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            r => r,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Own { state, .. } => matches!(state, OwnState::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Own { state, .. } => match state {
                OwnState::Length(n) => SizeHint::with_exact(*n),
                OwnState::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) may never be polled.
        if self.is_end_stream() {
            self.release();
        }
    }
}

/// Opens a TCP connection to `address` within the connect timeout.
async fn open(address: &str, dial: &Dial) -> Result<TcpStream, UpstreamError> {
    let timeout = dial.connect_timeout;
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(UpstreamError::Connect {
            address: address.to_string(),
            source,
        }),
        Err(_) => Err(UpstreamError::ConnectTimeout {
            address: address.to_string(),
            timeout,
        }),
    }
}

/// A new own connection, with its stall watchdog when `dial` asks for one.
async fn connect_own(address: &str, dial: &Dial) -> Result<OwnConn, UpstreamError> {
    let io = open(address, dial).await?;
    let deferred = Deferred::new(io.as_raw_fd());
    let lease = Arc::new(Lease::default());
    lease.socket.store(Some(Arc::new(io)));
    if let Some(timeout) = dial.stall_timeout {
        let watched = lease.clone();
        let stalls = dial.stalls.clone();
        let address = address.to_string();
        tokio::spawn(async move {
            if stalled(&watched, timeout).await {
                watched.cut();
                stalls.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "closing the connection to {address}: the client took nothing of the \
                     response for {timeout:?}"
                );
            }
        });
    }
    let chunk = dial.buffer_bytes.max(MIN_BUFFER_BYTES);
    Ok(OwnConn {
        buf: BytesMut::with_capacity(chunk),
        chunk,
        lease,
        since: Instant::now(),
        names: h1::NameCache::default(),
        deferred,
    })
}

async fn connect(address: &str, dial: &Dial) -> Result<Sender, UpstreamError> {
    let stream = open(address, dial).await?;
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
            true = stalled(&lease, timeout) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{fields_into_map, ResponseBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn fields_asked_for_unparsed_leave_the_map_empty_until_moved_into_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let answer = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive\r\nx-a: 2\r\nContent-Length: 2\r\n\r\nok";
            s.write_all(answer).await.unwrap();
            // Held open: the connection is pooled.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        let pool = Arc::new(ConnPool::default());
        let dial = Dial::unwatched(Duration::from_secs(5), MIN_BUFFER_BYTES);
        let mut req = Request::new(RequestBody::empty());
        *req.uri_mut() = http::Uri::from_static("/x");
        let send = pool.send(&addr, &dial, req, None, true, Instant::now());
        let Ok(resp) = send.await else {
            panic!("no response");
        };
        assert!(resp.headers().is_empty(), "{:?}", resp.headers());
        let fields: Vec<(String, Vec<u8>)> = resp
            .body()
            .raw_fields()
            .expect("fields unparsed")
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        let want = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect()
        };
        assert_eq!(
            fields,
            want(&[("x-a", b"1"), ("x-a", b"2"), ("content-length", b"2")])
        );
        // What hyper's server is handed instead: the map, the same fields, before any the
        // map held already (written in that order by the front end too).
        let mut resp = resp.map(|body| ResponseBody::Upstream {
            body,
            in_flight: None,
        });
        for v in ["p", "q"] {
            resp.headers_mut()
                .append("x-a", http::HeaderValue::from_static(v));
        }
        resp.headers_mut()
            .append("x-b", http::HeaderValue::from_static("r"));
        fields_into_map(&mut resp);
        assert!(resp.body().raw_fields().is_none());
        let map: Vec<(String, Vec<u8>)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut all = fields.clone();
        all.splice(2..2, want(&[("x-a", b"p"), ("x-a", b"q")]));
        all.extend(want(&[("x-b", b"r")]));
        assert_eq!(map, all, "the map groups a name's values");
    }
}

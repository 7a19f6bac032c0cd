//! Listeners: HTTP/1.1 (the own front end, [`crate::front`], then hyper's server) and h2c over
//! the shared accept loop ([`protocol::net`]: connection cap, idle timeout), request-head
//! limits, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use log::{debug, info, warn};
use protocol::net::{Accepted, Acceptor, IdleTimeout};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::body::ResponseBody;
use crate::config::Limits;
use crate::front::{self, Ended};
use crate::head_deadline::{Exchange, HeadDeadline};
use crate::metrics::Metrics;
use crate::request_body::ClientBody;
use crate::shards;
use crate::upstream::BoxError;
use crate::write_batch;

/// hyper's HTTP/1 header count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's HTTP/1 read buffer limit (`max_buf_size`), which is also the longest head the own
/// front end reads before it hands the connection to hyper (whose answer is then its 431).
fn h1_head_bytes(limits: &Limits) -> usize {
    limits.max_header_bytes.max(8192)
}

/// Builds the connection builder with the configured protections.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1: the head deadline is the connection task's own (`head_deadline`).
    b.http1()
        .header_read_timeout(None)
        .max_buf_size(h1_head_bytes(limits))
        .keep_alive(true);
    // Only when it differs from hyper's own default (100): a configured count makes hyper
    // initialise its header arrays element by element on every request.
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(limits.max_headers);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // Rapid reset (streams opened and cancelled before they are served) and streams
        // the server had to reset for client errors: past these counts the connection
        // gets a GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        // Response bytes queued per stream ahead of the client's flow-control window
        // (hyper's default is 400 KiB); with a closed window the body is not read at all.
        .max_send_buf_size(limits.h2_max_send_buf_bytes)
        // No server pings: hyper sends them even on idle connections, and each one counts
        // as activity for `IdleTimeout`, so with IDLE_TIMEOUT > the ping interval an idle
        // h2 client was never closed. A dead peer is caught by `IdleTimeout` instead.
        .keep_alive_interval(None);
    b
}

/// Serves `handler` on `listener` until `shutdown` completes, then waits up to `grace` for
/// open connections to finish their requests. `cap`: the connection cap (`MAX_CONNECTIONS`,
/// [`protocol::net::cap`]), shared by the shards of one listener. `counted`: the metrics
/// whose connection gauges this listener's connections count in (`None` for the admin
/// listener, so that a scrape does not count itself). `link`: this listener is one of the
/// proxy's shards ([`shard_links`]); a connection accepted while this shard serves clearly
/// more than another ([`shards::choose`]) is moved there, and the ones moved here are served.
///
/// Each connection starts on the own HTTP/1.1 front end ([`crate::front`]) and goes to
/// hyper's server (HTTP/1.1 or h2c, with upgrades) at the first request the front end does
/// not serve.
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    cap: Arc<Semaphore>,
    limits: Limits,
    counted: Option<Arc<Metrics>>,
    grace: Duration,
    handler: H,
    link: Option<ShardLink>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    // Writes of this shard's connections wait for the end of its turn (current-thread
    // runtimes only).
    write_batch::install();
    let builder = Arc::new(builder(&limits));
    let front_limits = front::Limits {
        max_head_bytes: h1_head_bytes(&limits),
        max_headers: limits.max_headers,
    };
    // Shutdown: the flag tells a connection's exchanges, the channel wakes idle connections.
    let draining = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = watch::channel(());
    let acceptor = Acceptor::sharing(name, listener, cap, limits.idle_timeout);
    // Every connection's task, so those still open after the grace period can be closed
    // (aborted) instead of outliving the server. Finished ones are reaped as new ones come.
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = acceptor.local_addr() {
        info!("{name} listening on {addr}");
    }
    let mut link = link;
    let me = link.as_ref().map_or_else(shards::current, |l| l.index);
    loop {
        // Connections other shards moved here come first: they were accepted already.
        let (stream, peer, open) = match link.as_mut() {
            Some(l) => tokio::select! {
                biased;
                Some(moved) = l.inbox.recv() => match moved.arrive(acceptor.idle()) {
                    Some(arrived) => arrived,
                    None => continue,
                },
                accepted = acceptor.next(shutdown.as_mut()) => match accepted {
                    Some(a) => OpenConnection::accepted(a, counted.as_ref(), me),
                    None => break,
                },
            },
            None => match acceptor.next(shutdown.as_mut()).await {
                Some(a) => OpenConnection::accepted(a, counted.as_ref(), me),
                None => break,
            },
        };
        while connections.try_join_next().is_some() {}
        // A shard clearly busier than another passes the connection on.
        let (stream, open) = match (&link, &counted) {
            (Some(l), Some(m)) => match shards::choose(&m.shard_open(), me) {
                to if to != me => match l.hand_off(to, stream, peer, open, m, acceptor.idle()) {
                    Some(kept) => kept,
                    None => continue,
                },
                _ => (stream, open),
            },
            _ => (stream, open),
        };
        let conn = Connection {
            name,
            peer,
            head_timeout: limits.header_read_timeout,
            front_limits,
            builder: builder.clone(),
            drain: drain_rx.clone(),
            draining: draining.clone(),
        };
        connections.spawn(conn.run(stream, handler.clone(), open));
    }
    // Connections moved here and not taken yet close with the inbox.
    drop(link);
    drop(acceptor);
    info!("{name}: stopped accepting; waiting up to {grace:?} for open requests");
    draining.store(true, Ordering::Relaxed);
    drain_tx.send_replace(());
    let all_closed = async { while connections.join_next().await.is_some() {} };
    tokio::select! {
        _ = all_closed => info!("{name}: all connections closed"),
        _ = tokio::time::sleep(grace) => warn!("{name}: grace period over; closing remaining connections"),
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// One accepted connection, served by its own task ([`Connection::run`]).
struct Connection {
    name: &'static str,
    peer: SocketAddr,
    head_timeout: Duration,
    front_limits: front::Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Changes once, when the server shuts down.
    drain: watch::Receiver<()>,
    /// Set before `drain` changes.
    draining: Arc<AtomicBool>,
}

impl Connection {
    async fn run<H, F>(mut self, stream: IdleTimeout<TcpStream>, handler: H, open: OpenConnection)
    where
        H: Fn(Request<ClientBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
    {
        let _open = open;
        let (name, peer, head_timeout) = (self.name, self.peer, self.head_timeout);
        let (mut head_deadline, gate) = HeadDeadline::new(head_timeout);
        let expired = || format!("no complete request head within {head_timeout:?}; closing");
        let mut drained = std::pin::pin!(self.drain.changed());
        let (mut drain_seen, mut drain_armed) = (false, false);
        let draining = &*self.draining;
        let ended = {
            let fd = stream.get_ref().as_raw_fd();
            let deferred = write_batch::Deferred::new(fd);
            let own = front::serve(
                stream,
                peer,
                &handler,
                &gate,
                self.front_limits,
                draining,
                deferred,
            );
            let mut own = std::pin::pin!(own);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(ended) = own.as_mut().poll(cx) {
                    return Poll::Ready(ended);
                }
                // Polled after the connection, where its responses end (the clock restarts).
                if head_deadline.poll_expired(cx).is_ready() {
                    return Poll::Ready(Ended::Closed(Some(expired())));
                }
                if !drain_seen && drain_signalled(drained.as_mut(), &mut drain_armed, draining, cx)
                {
                    drain_seen = true;
                    // Between requests: close now. Otherwise after the current response.
                    if gate.idle() {
                        return Poll::Ready(Ended::Closed(None));
                    }
                }
                Poll::Pending
            })
            .await
        };
        let io = match ended {
            Ended::HandOff(io) => io,
            Ended::Closed(why) => {
                if let Some(why) = why {
                    debug!("{name}: connection from {peer} ended: {why}");
                }
                return;
            }
        };
        let service = service_fn(move |req: Request<Incoming>| {
            // A complete head: the head clock stops until the response has been sent.
            let exchange = gate.begin();
            if req.version() == Version::HTTP_2 {
                // Streams are multiplexed: the clock covers an h2 connection's first request.
                exchange.turn_off();
            }
            // Boxed once here: hyper moves the service future into its own storage, and
            // the proxy's future is a few KiB (copying it cost ~3 % of the CPU per request).
            let fut = Box::pin(handler(req.map(ClientBody::Hyper), peer));
            // After an upgrade (101) hyper hands the socket to the tunnel: no head deadline
            // reaches it.
            async move {
                let mut resp = fut.await;
                // hyper writes the head from the map alone. (Only a request the own front
                // end read asks for fields unparsed, and the front end answers those
                // itself: this is a guard, and costs a check.)
                crate::body::fields_into_map(&mut resp);
                Ok::<_, std::convert::Infallible>(resp.map(|body| Served {
                    body,
                    _exchange: exchange,
                }))
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(conn);
        let mut told = false;
        let ended = std::future::poll_fn(|cx| loop {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r.err().map(|e| e.to_string()));
            }
            if head_deadline.poll_expired(cx).is_ready() {
                return Poll::Ready(Some(expired()));
            }
            // Seen by the front end already, or now: hyper finishes the current
            // exchanges and closes.
            if !told
                && (drain_seen || drain_signalled(drained.as_mut(), &mut drain_armed, draining, cx))
            {
                (told, drain_seen) = (true, true);
                conn.as_mut().graceful_shutdown();
                continue;
            }
            return Poll::Pending;
        })
        .await;
        if let Some(why) = ended {
            debug!("{name}: connection from {peer} ended: {why}");
        }
    }
}

/// Whether the server has begun to drain. The watch is polled once, to register the task's
/// waker (a task's waker is the same on every poll); after that the flag, which is set before
/// the watch changes, answers. Polling the watch on every wake-up cost ~300 instructions per
/// request.
fn drain_signalled<F: Future>(
    drained: Pin<&mut F>,
    armed: &mut bool,
    draining: &AtomicBool,
    cx: &mut Context<'_>,
) -> bool {
    if draining.load(Ordering::Relaxed) {
        return true;
    }
    !std::mem::replace(armed, true) && drained.poll(cx).is_ready()
}

/// A response body that holds its request's [`Exchange`] until hyper drops it, which it does
/// once it has taken the body's last bytes (some may still wait in its write buffer, as they
/// did when hyper's own header timer started) or the connection has gone.
struct Served {
    body: ResponseBody,
    _exchange: Exchange,
}

impl Body for Served {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts an open connection (in all and for the shard that serves it) and holds its slot
/// under `MAX_CONNECTIONS` until dropped (also when its task is aborted after the grace
/// period, or when it is dropped on its way to another shard).
pub struct OpenConnection {
    metrics: Option<Arc<Metrics>>,
    shard: usize,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    /// A connection `shard` has just accepted, counted there.
    fn accepted(
        accepted: Accepted,
        metrics: Option<&Arc<Metrics>>,
        shard: usize,
    ) -> (IdleTimeout<TcpStream>, SocketAddr, OpenConnection) {
        let Accepted {
            stream,
            peer,
            permit,
        } = accepted;
        if let Some(m) = metrics {
            m.count_connection();
            m.connections_active.fetch_add(1, Ordering::Relaxed);
            m.shard_served(shard, true);
        }
        let open = OpenConnection {
            metrics: metrics.cloned(),
            shard,
            _permit: permit,
        };
        (stream, peer, open)
    }

    /// Counts the connection for `shard` from now on.
    fn move_to(&mut self, shard: usize) {
        if let Some(m) = &self.metrics {
            m.shard_served(self.shard, false);
            m.shard_served(shard, true);
        }
        self.shard = shard;
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connections_active.fetch_sub(1, Ordering::Relaxed);
            m.shard_served(self.shard, false);
        }
    }
}

/// A proxy shard's part in evening out the connections the shards serve
/// ([`shards::choose`]): the inboxes of all shards, and its own.
pub struct ShardLink {
    index: usize,
    inboxes: Arc<[mpsc::UnboundedSender<Moved>]>,
    inbox: mpsc::UnboundedReceiver<Moved>,
}

/// The links of `count` shards, by index.
pub fn shard_links(count: usize) -> Vec<ShardLink> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let inboxes: Arc<[mpsc::UnboundedSender<Moved>]> = senders.into();
    receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| ShardLink {
            index,
            inboxes: inboxes.clone(),
            inbox,
        })
        .collect()
}

impl ShardLink {
    /// Passes an accepted connection to shard `to`. Gives it back, counted here again, when
    /// that shard no longer takes connections; `None` once it is on its way (or lost: its
    /// socket could not be taken off this shard's reactor, which is logged).
    fn hand_off(
        &self,
        to: usize,
        stream: IdleTimeout<TcpStream>,
        peer: SocketAddr,
        mut open: OpenConnection,
        metrics: &Metrics,
        idle: Duration,
    ) -> Option<(IdleTimeout<TcpStream>, OpenConnection)> {
        // A shard that never started (logged when it failed) or has stopped: kept here.
        if self.inboxes.get(to).is_none_or(|inbox| inbox.is_closed()) {
            return Some((stream, open));
        }
        open.move_to(to);
        let stream = match stream.into_inner().into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!("connection from {peer}: cannot move it to shard {to}: {e}");
                return None;
            }
        };
        let inbox = self.inboxes.get(to)?;
        match inbox.send(Moved { stream, peer, open }) {
            Ok(()) => {
                metrics.connections_moved.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(mpsc::error::SendError(mut back)) => {
                back.open.move_to(self.index);
                let (stream, _, open) = back.arrive(idle)?;
                Some((stream, open))
            }
        }
    }
}

/// A connection on its way to another shard: off the reactor of the one that accepted it.
pub struct Moved {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
}

impl Moved {
    /// Registers the connection with the calling thread's reactor, with a new idle timer
    /// (the old one belonged to the other shard's runtime). `None` (logged) when the
    /// reactor refuses it: the connection closes.
    fn arrive(
        self,
        idle: Duration,
    ) -> Option<(IdleTimeout<TcpStream>, SocketAddr, OpenConnection)> {
        let Moved { stream, peer, open } = self;
        match TcpStream::from_std(stream) {
            Ok(s) => Some((IdleTimeout::new(s, idle), peer, open)),
            Err(e) => {
                warn!("connection from {peer}: cannot take it over from another shard: {e}");
                None
            }
        }
    }
}

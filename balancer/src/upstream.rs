//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Each backend owns a [`ConnPool`]: a short LIFO stack of idle `hyper::client::conn::http1`
//! senders behind a mutex held only to push or pop. A request takes the most recently used
//! connection (or opens one), and the connection goes back to the pool when the response body
//! has been read to the end: the [`Lease`] travels with the response body, so no task is
//! spawned per request to watch for the connection becoming idle again. The pool keeps
//! connections across queue updates (it is carried over by backend id and address).
//!
//! A request that hyper hands back unsent (the pooled connection was found closed before the
//! request was written) is sent again on a new connection: nothing reached the backend, so this
//! is safe for every method.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
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

impl UpstreamError {
    /// Nothing was sent: the request may be retried on another backend.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
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
    async fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let Idle { mut sender, since } = self.lock().pop()?;
            if sender.is_closed() || since.elapsed() > IDLE_EXPIRY {
                continue;
            }
            // Usually ready at once; right after a response it may take one dispatcher turn.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
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
        connect_timeout: Duration,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut sender = match self.checkout().await {
                Some(s) => s,
                None => {
                    fresh = true;
                    connect(address, connect_timeout).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender: Some(sender),
                        pool: Arc::clone(self),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the pooled connection was closing. Safe to send again.
                    Some(unsent) if !fresh => {
                        debug!("pooled connection to {address} closed before use; reconnecting");
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }
}

/// The connection a response is being read from; returned to its pool when dropped (the
/// response body ended or was abandoned: hyper closes the connection in the latter case, and
/// the pool discards closed connections).
pub struct Lease {
    sender: Option<http1::SendRequest<RequestBody>>,
    pool: Arc<ConnPool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

async fn connect(
    address: &str,
    timeout: Duration,
) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
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
    // One task per connection (not per request); it ends when the connection closes, which
    // happens once the pool drops the sender or the backend hangs up.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

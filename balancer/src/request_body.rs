//! The request body on its way upstream, with the size limit enforced on the fly.
//!
//! - A small body (up to `BUFFER_BODY_BYTES`) is read completely, within
//!   `CLIENT_BODY_TIMEOUT`, before an upstream connection is taken ([`RequestBody::buffered`]):
//!   a slow sender holds no backend connection. A larger one streams; it fails when the client
//!   sends nothing for `CLIENT_BODY_TIMEOUT`.
//! - Every failure of the client's side is a [`ClientBodyError`] (or [`BodyTooLarge`]), so
//!   the dispatcher can tell it from a backend's failure ([`client_fault`]): a client's
//!   mistake never counts against a backend.
//! - After a connect failure (nothing sent) the whole request, body unread, goes to the next
//!   attempt (see [`crate::upstream::Unsent`]). A body held in memory (a stored task's) is
//!   sent in one frame.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The client sent more than `MAX_BODY_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's side of the body failed: a malformed chunk, a connection closed before the
/// body ended, or no bytes for too long.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client's request body failed: {0}")]
    Failed(#[source] hyper::Error),
    #[error("the client sent no request body bytes for {0:?}")]
    Stalled(Duration),
}

/// A failure caused by the client, not by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Over `MAX_BODY_BYTES` (413).
    BodyTooLarge,
    /// Malformed or cut short (400; the client may be gone).
    BadBody,
    /// Too slow (408).
    BodyTimeout,
}

impl ClientFault {
    pub fn code(&self) -> &'static str {
        match self {
            ClientFault::BodyTooLarge => "body_too_large",
            ClientFault::BadBody => "bad_request_body",
            ClientFault::BodyTimeout => "request_body_timeout",
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body as a listener hands it over: hyper's, or none at all (a
/// request the own HTTP/1.1 front end served, which takes only requests without a body;
/// see [`crate::front`]).
pub enum ClientBody {
    Hyper(Incoming),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body on its way upstream.
pub struct RequestBody {
    kind: RequestKind,
    hint: SizeHint,
    limit: u64,
    seen: u64,
}

enum RequestKind {
    Empty,
    /// A body held in memory (a buffered or stored one), sent in one frame.
    Full(Option<Bytes>),
    Streaming(Box<Stream>),
}

/// A body read from the client as it arrives.
struct Stream {
    body: Incoming,
    /// Frames already read (while trying to buffer the body), sent first.
    pending: VecDeque<Frame<Bytes>>,
    /// Longest wait for the client's next bytes.
    idle: Duration,
    /// Armed while waiting for the client.
    stall: Option<Pin<Box<Sleep>>>,
    /// Set once the client's body has ended (see [`RequestBody::progress`]).
    complete: Arc<AtomicBool>,
}

impl RequestBody {
    /// Wraps the client's body, cut at `limit` bytes; fails after `idle` without bytes.
    pub fn new(body: ClientBody, limit: u64, idle: Duration) -> RequestBody {
        let body = match body {
            ClientBody::Hyper(body) if !body.is_end_stream() => body,
            _ => return RequestBody::empty(),
        };
        RequestBody {
            hint: body.size_hint(),
            kind: RequestKind::Streaming(Box::new(Stream {
                body,
                pending: VecDeque::new(),
                idle,
                stall: None,
                complete: Arc::new(AtomicBool::new(false)),
            })),
            limit,
            seen: 0,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            kind: RequestKind::Empty,
            hint: SizeHint::with_exact(0),
            limit: 0,
            seen: 0,
        }
    }

    /// A body from memory (its limit is its own size).
    pub fn full(bytes: Bytes) -> RequestBody {
        let len = bytes.len() as u64;
        RequestBody {
            kind: RequestKind::Full((!bytes.is_empty()).then_some(bytes)),
            hint: SizeHint::with_exact(len),
            limit: len,
            seen: 0,
        }
    }

    /// The whole body when it is in memory (`Some(None)`: empty); `None` when it streams.
    pub fn in_memory(&self) -> Option<Option<&Bytes>> {
        match &self.kind {
            RequestKind::Empty => Some(None),
            RequestKind::Full(b) => Some(b.as_ref()),
            RequestKind::Streaming(_) => None,
        }
    }

    /// For a streamed body: a flag set once the client has sent all of it. A request that
    /// times out before that was held up by its client, not by the backend.
    pub fn progress(&self) -> Option<Arc<AtomicBool>> {
        match &self.kind {
            RequestKind::Streaming(s) => Some(s.complete.clone()),
            _ => None,
        }
    }

    /// Reads a streamed body of at most `max` bytes completely (within `timeout`), so it is
    /// sent from memory; a larger one (declared or found while reading) keeps streaming
    /// from where the reading stopped.
    pub async fn buffered(mut self, max: u64, timeout: Duration) -> Result<RequestBody, BoxError> {
        if max == 0 || !matches!(self.kind, RequestKind::Streaming(_)) {
            return Ok(self);
        }
        if self.hint.lower() > max {
            return Ok(self);
        }
        let mut buf = BytesMut::new();
        let read = async {
            loop {
                let Some(frame) = self.frame().await.transpose()? else {
                    return Ok::<_, BoxError>(None);
                };
                match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() as u64 > max {
                            return Ok(Some(None));
                        }
                    }
                    // Trailers: sent after what was read.
                    Err(trailers) => return Ok(Some(Some(trailers))),
                }
            }
        };
        let outcome = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r?,
            Err(_) => return Err(Box::new(ClientBodyError::Stalled(timeout))),
        };
        let RequestKind::Streaming(stream) = &mut self.kind else {
            return Ok(self);
        };
        match outcome {
            None => {
                let bytes = buf.freeze();
                self.hint = SizeHint::with_exact(bytes.len() as u64);
                self.kind = RequestKind::Full((!bytes.is_empty()).then_some(bytes));
            }
            Some(trailers) => {
                if !buf.is_empty() {
                    stream.pending.push_back(Frame::data(buf.freeze()));
                }
                stream.pending.extend(trailers);
            }
        }
        Ok(self)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let stream = match &mut this.kind {
            RequestKind::Empty => return Poll::Ready(None),
            RequestKind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestKind::Streaming(s) => s,
        };
        if let Some(frame) = stream.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut stream.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(stall) = stream.stall.as_mut() {
                    stall.as_mut().reset(Instant::now() + stream.idle);
                }
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError::Failed(e)))))
            }
            Poll::Ready(None) => {
                stream.complete.store(true, Ordering::Relaxed);
                stream.stall = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = stream.idle;
                let stall = stream
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyError::Stalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Empty => true,
            RequestKind::Full(b) => b.is_none(),
            RequestKind::Streaming(s) => s.pending.is_empty() && s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Whether `err` (or anything in its source chain) was caused by the client's body, and how.
pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<BodyTooLarge>().is_some() {
            return Some(ClientFault::BodyTooLarge);
        }
        match e.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::Failed(_)) => return Some(ClientFault::BadBody),
            Some(ClientBodyError::Stalled(_)) => return Some(ClientFault::BodyTimeout),
            None => {}
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_found_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BoxError);
        let too_large = Outer(Box::new(BodyTooLarge { limit: 1 }));
        assert_eq!(client_fault(&too_large), Some(ClientFault::BodyTooLarge));
        let stalled = Outer(Box::new(ClientBodyError::Stalled(Duration::from_secs(1))));
        assert_eq!(client_fault(&stalled), Some(ClientFault::BodyTimeout));
        let other = Outer(Box::new(std::io::Error::other("reset by peer")));
        assert_eq!(client_fault(&other), None);
    }
}

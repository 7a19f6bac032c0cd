//! The request body on its way upstream: streamed, with the size limit enforced on the
//! fly. After a connect failure (nothing sent) the whole request, body unread, goes to the
//! next attempt (see [`crate::upstream::Unsent`]). A body held in memory (a stored task's)
//! is sent in one frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client sent more than `MAX_BODY_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
pub struct RequestBody {
    kind: RequestKind,
    hint: SizeHint,
    limit: u64,
    seen: u64,
}

enum RequestKind {
    Empty,
    /// A body held in memory (a stored task's), sent in one frame.
    Full(Option<Bytes>),
    Streaming(Incoming),
}

impl RequestBody {
    /// Wraps the client's body, cut at `limit` bytes.
    pub fn new(body: Incoming, limit: u64) -> RequestBody {
        if body.is_end_stream() {
            return RequestBody::empty();
        }
        RequestBody {
            hint: body.size_hint(),
            kind: RequestKind::Streaming(body),
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
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let RequestKind::Full(b) = &mut this.kind {
            return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))));
        }
        let RequestKind::Streaming(body) = &mut this.kind else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Empty => true,
            RequestKind::Full(b) => b.is_none(),
            RequestKind::Streaming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Whether `err` (or anything in its source chain) is a [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<BodyTooLarge>().is_some() {
            return true;
        }
        cur = e.source();
    }
    false
}

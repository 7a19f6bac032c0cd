//! The request body on its way upstream: streamed, with the size limit enforced on the
//! fly. Until the upstream connection polls it, the body stays *reclaimable*: after a
//! connect failure (nothing sent) it is handed to the next attempt. A body held in memory
//! (a stored task's) is sent in one frame.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

/// Where a not-yet-read request body waits, so a failed connect can hand it on.
pub type Slot = Arc<Mutex<Option<Incoming>>>;

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
    /// Not polled yet: the body still sits in the shared slot.
    Parked(Slot),
    Streaming(Incoming),
}

impl RequestBody {
    /// Wraps the client's body. Returns the body and, when it is not empty, the slot it
    /// can be reclaimed from with [`RequestBody::reclaim`].
    pub fn new(body: Incoming, limit: u64) -> (RequestBody, Option<Slot>) {
        let hint = body.size_hint();
        if body.is_end_stream() {
            return (RequestBody::empty(), None);
        }
        let slot: Slot = Arc::new(Mutex::new(Some(body)));
        let rb = RequestBody {
            kind: RequestKind::Parked(slot.clone()),
            hint,
            limit,
            seen: 0,
        };
        (rb, Some(slot))
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

    /// A fresh body over the same slot, if the previous attempt never started reading it.
    pub fn reclaim(slot: &Slot, hint: SizeHint, limit: u64) -> Option<RequestBody> {
        let parked = slot.lock().ok()?.is_some();
        parked.then(|| RequestBody {
            kind: RequestKind::Parked(slot.clone()),
            hint,
            limit,
            seen: 0,
        })
    }

    pub fn hint(&self) -> SizeHint {
        self.hint
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
        if let RequestKind::Parked(slot) = &this.kind {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(body) => this.kind = RequestKind::Streaming(body),
                None => return Poll::Ready(Some(Err("request body already consumed".into()))),
            }
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
            RequestKind::Parked(_) => false,
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

//! The response body on its way to the client: the upstream's body (streamed) or a buffered
//! one (cache hits, error answers, task results); a streamed one keeps the backend's in-flight
//! count up until the last byte is sent, and its connection leased until then (see
//! [`crate::upstream::UpstreamBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::backends::InFlight;
use crate::h1::RawFields;
use crate::upstream::{BoxError, UpstreamBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A response body on its way to the client.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        /// The backend's in-flight count, released when the body ends or the client goes
        /// away.
        in_flight: Option<InFlight>,
    },
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let b: Bytes = bytes.into();
        ResponseBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }

    /// A backend's end-to-end response fields as it sent them, when they were taken
    /// unparsed ([`UpstreamBody::raw_fields`]): the response's map is then empty.
    pub fn raw_fields(&self) -> Option<&RawFields> {
        match self {
            ResponseBody::Upstream { body, .. } => body.raw_fields(),
            ResponseBody::Full(_) => None,
        }
    }
}

/// Moves fields taken unparsed ([`ResponseBody::raw_fields`]) into the response's map, for
/// a writer of the head that reads only the map (hyper's server). They go before whatever
/// the map already holds, which is kept (the order `front::encode_head` writes them in).
/// If a value is one the map refuses, they are left out, with a warning (`httparse` admits
/// the same bytes, so none is expected).
pub fn fields_into_map(resp: &mut http::Response<ResponseBody>) {
    let ResponseBody::Upstream { body, .. } = resp.body_mut() else {
        return;
    };
    let Some(fields) = body.take_raw_fields() else {
        return;
    };
    let mut map = match fields.into_header_map() {
        Ok(map) => map,
        Err(e) => {
            log::warn!("response fields from a backend left out: {e}");
            return;
        }
    };
    // A map's own iteration names a field only at the first of its values.
    let mut name = None;
    for (next, value) in std::mem::take(resp.headers_mut()) {
        name = next.or(name);
        if let Some(name) = &name {
            map.append(name.clone(), value);
        }
    }
    *resp.headers_mut() = map;
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream { body, in_flight } => {
                let r = Pin::new(body).poll_frame(cx);
                if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    in_flight.take();
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

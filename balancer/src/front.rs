//! The own HTTP/1.1 front end: the client side of a connection, for the common request.
//!
//! hyper's server runs a general state machine per connection (reading a head into its
//! buffers, a dispatcher handing the request to the service and polling its future and body,
//! an encoder, a flush step); on the proxy's hot path that was about 40 % of the user-space
//! instructions per request. This module serves a connection itself for as long as its
//! requests are the common kind: HTTP/1.1, no body (no `Content-Length` but 0, no
//! `Transfer-Encoding`), no `Upgrade`, not `CONNECT`, no `TE: trailers`, a head that parses
//! within the limits.
//! The head is parsed with `httparse` (as hyper does) into a request whose field values
//! share the read buffer, the handler's response is encoded as hyper's server would encode
//! it (the same framing rules, `Date`, `Connection: close`), and the head and the first body
//! bytes go out in one `writev`.
//!
//! Anything else (a request with a body, an upgrade, HTTP/1.0, the HTTP/2 preface, a head
//! that does not parse or is too large) hands the connection, with every byte read so far
//! and not yet served, to hyper's server ([`Ended::HandOff`]), which serves it from that
//! request on, exactly as it served every request before. So every error answer for a
//! malformed head (400, 431, 414) is still hyper's own.
//!
//! As with hyper: a client that closes its side while its request is in flight cancels the
//! request (the handler's future is dropped; no half-close); pipelined requests are read
//! while the current one is served and answered in order; a response whose body fails
//! half-way closes the connection.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::body::ResponseBody;
use crate::h1::{has_token, push_decimal, RawFields};
use crate::head_deadline::Gate;
use crate::request_body::ClientBody;
use crate::write_batch::{Deferred, Outcome};

/// Most header fields parsed here (hyper's default limit); a request with more goes to
/// hyper, which applies the configured limit.
const MAX_FIELDS: usize = 100;
/// Read buffer size, and how much room is made when it runs low (hyper reads 8 KiB too).
const READ_CHUNK: usize = 8192;
/// Longest request target taken here (hyper answers a longer one with 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// The limits hyper's server would apply, so that what this front end declines is what hyper
/// then answers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// hyper's `max_buf_size`: a head not complete within this many bytes is too large.
    pub max_head_bytes: usize,
    /// hyper's `max_headers`.
    pub max_headers: usize,
}

/// How [`serve`] ended.
pub enum Ended<S> {
    /// The connection is done: closed by the client, by this side (`Connection: close`, a
    /// response that could not be completed, shutdown) or failed (`Some`: why, for the log).
    Closed(Option<String>),
    /// A request this front end does not serve: the connection, with the bytes read and not
    /// yet served in front of it, goes to hyper.
    HandOff(Prefixed<S>),
}

/// Why a head is not served here (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    Partial,
    /// Not one this front end serves (see the module docs).
    NotOurs,
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the connection ends or a request
/// comes that hyper has to serve. `gate`: the connection's head deadline ([`Gate::begin`]
/// once a head is complete, until the response's last byte is written). `draining`: set when
/// the server shuts down; the connection then closes after its current exchange (and at once
/// if it is idle: the connection's task drops this future then). `deferred`: `io`'s socket's
/// queue of writes ([`crate::write_batch`]), if the thread has one. It is the last parameter
/// so that it is dropped before `io` (parameters drop in reverse order), and a write still
/// queued when this future is dropped is made while the socket is open.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, H, F>(
    mut io: S,
    peer: SocketAddr,
    handler: &H,
    gate: &Arc<Gate>,
    limits: Limits,
    draining: &AtomicBool,
    deferred: Option<Deferred>,
) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<ClientBody>, SocketAddr) -> F,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(512);
    let mut slot: Option<Pin<Box<Option<F>>>> = None;
    loop {
        // A complete head.
        let (req, close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, limits) {
                    Ok(head) => break head,
                    Err(NotServed::Partial) if buf.len() < limits.max_head_bytes => {}
                    Err(_) => {
                        // hyper's bytes go after the last response's.
                        if let Err(why) = settle(deferred.as_ref(), &mut io).await {
                            return Ended::Closed(Some(why));
                        }
                        return Ended::HandOff(Prefixed::new(buf.freeze(), io));
                    }
                }
            } else if draining.load(Ordering::Relaxed) {
                return Ended::Closed(None);
            }
            reserve(&mut buf);
            // The last response's write, if queued, is watched meanwhile.
            let read = poll_fn(|cx| {
                if let Some(Poll::Ready(fault)) = deferred.as_ref().map(|d| d.poll_fault(cx)) {
                    return Poll::Ready(Err(fault));
                }
                pin!(io.read_buf(&mut buf)).poll(cx).map(Ok)
            })
            .await;
            match read {
                Ok(Ok(0)) if buf.is_empty() => return Ended::Closed(None),
                Ok(Ok(0)) => return Ended::Closed(Some("closed within a request head".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Ended::Closed(Some(e.to_string())),
                Err(fault) => {
                    if let Err(why) = finish(fault, &mut io).await {
                        return Ended::Closed(Some(why));
                    }
                }
            }
        };
        let exchange = gate.begin();
        let head_only = req.method() == Method::HEAD;
        // Boxed: the handler's future is a few KiB, and this one would otherwise hold it. The
        // box is kept for the connection's next requests (an aligned allocation and its free
        // cost ~450 instructions per request).
        let fut = match &mut slot {
            Some(fut) => {
                fut.set(Some(handler(req, peer)));
                fut
            }
            None => slot.insert(Box::pin(Some(handler(req, peer)))),
        };
        let resp = poll_fn(|cx| {
            if let Some(Poll::Ready(resp)) = fut.as_mut().as_pin_mut().map(|f| f.poll(cx)) {
                return Poll::Ready(Some(resp));
            }
            match poll_client(&mut io, &mut buf, limits, cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        fut.set(None);
        let Some(resp) = resp else {
            return Ended::Closed(Some("the client went away during its request".into()));
        };
        let close = close || draining.load(Ordering::Relaxed);
        let (parts, mut body) = resp.into_parts();
        out.clear();
        let (framing, close) = encode_head(&parts, &body, head_only, close, &mut out);
        // A pipelined request's response goes after the last one.
        if let Err(why) = settle(deferred.as_ref(), &mut io).await {
            return Ended::Closed(Some(why));
        }
        // The last response of a connection is written before it closes.
        let queue = deferred.as_ref().filter(|_| !close);
        let written = write_body(&mut io, &mut buf, limits, &out, &mut body, framing, queue);
        if let Err(why) = written.await {
            return Ended::Closed(Some(why));
        }
        drop(body);
        drop(exchange);
        if close {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            return Ended::Closed(None);
        }
    }
}

/// Makes room for a read.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

/// Watches the client while its request is served: `Ready` once it has closed its side or
/// failed. Pipelined bytes that arrive meanwhile are kept in `buf` (up to the head limit).
fn poll_client<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while buf.len() < limits.max_head_bytes {
        reserve(buf);
        let read = pin!(io.read_buf(buf)).poll(cx);
        match read {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Pending
}

/// Parses the head at the start of `buf`: the request and whether it asks to close the
/// connection. A complete one that this front end serves is taken off `buf`; otherwise
/// `buf` is left as it was.
pub fn parse(buf: &mut BytesMut, limits: Limits) -> Result<(Request<ClientBody>, bool), NotServed> {
    // All of it, frozen (no copy): the request's target and field values are slices of it.
    let all = buf.split().freeze();
    match parse_head(&all, limits) {
        Ok((req, close, len)) => {
            // Pipelined bytes after the head: back into the buffer (rare).
            buf.extend_from_slice(&all[len..]);
            Ok((req, close))
        }
        Err(not_served) => {
            buf.extend_from_slice(&all);
            Err(not_served)
        }
    }
}

/// The request whose head starts `all`, whether it asks to close the connection, and the
/// head's length; `Err` while the head is incomplete or if it is not one served here.
fn parse_head(
    all: &Bytes,
    limits: Limits,
) -> Result<(Request<ClientBody>, bool, usize), NotServed> {
    // Uninitialised: zeroing 100 fields costs more than parsing a typical head.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(all, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(NotServed::Partial),
        Err(_) => return Err(NotServed::NotOurs),
    };
    let (Some(1), Some(method), Some(path)) = (parsed.version, parsed.method, parsed.path) else {
        return Err(NotServed::NotOurs);
    };
    if parsed.headers.len() > limits.max_headers || path.len() > MAX_URI_LEN || method == "CONNECT"
    {
        return Err(NotServed::NotOurs);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| NotServed::NotOurs)?;
    // Slices of `all`, by address.
    let start = all.as_ptr() as usize;
    let share = |s: &[u8]| {
        let at = s.as_ptr() as usize - start;
        all.slice(at..at + s.len())
    };
    let uri = Uri::from_maybe_shared(share(path.as_bytes())).map_err(|_| NotServed::NotOurs)?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut close = false;
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| NotServed::NotOurs)?;
        if name == header::CONTENT_LENGTH {
            if f.value.trim_ascii() != b"0" {
                return Err(NotServed::NotOurs);
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || (name == header::TE && has_token(f.value, b"trailers"))
        {
            // A body, an upgrade, or a client that takes trailers: hyper forwards them.
            return Err(NotServed::NotOurs);
        } else if name == header::CONNECTION && has_token(f.value, b"close") {
            close = true;
        }
        let value =
            HeaderValue::from_maybe_shared(share(f.value)).map_err(|_| NotServed::NotOurs)?;
        headers.append(name, value);
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok((req, close, len))
}

/// How a response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304): whatever the body holds is not sent.
    None,
    Length(u64),
    Chunked,
}

/// Writes the response head into `out` as hyper's server encodes it for an HTTP/1.1
/// request; returns the body's framing and whether the connection closes after it.
pub fn encode_head(
    parts: &http::response::Parts,
    body: &ResponseBody,
    head_only: bool,
    mut close: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let mut status = parts.status;
    let mut send_fields = true;
    if status.is_informational() {
        // A protocol switch nobody asked for ends the connection; other 1xx are not a
        // final response (hyper answers 500 instead).
        close = true;
        if status != StatusCode::SWITCHING_PROTOCOLS {
            status = StatusCode::INTERNAL_SERVER_ERROR;
            send_fields = false;
        }
    }
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_body_status = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || status.is_informational();
    let can_body = !head_only && !no_body_status;
    let (mut declared, mut wrote_date, mut says_close) = (None, false, false);
    // A backend's fields taken unparsed (the map is then empty), and the map's.
    let fields = body
        .raw_fields()
        .into_iter()
        .flat_map(RawFields::iter)
        .chain(
            parts
                .headers
                .iter()
                .map(|(name, value)| (name, value.as_bytes())),
        );
    for (name, value) in fields.take_while(|_| send_fields) {
        if *name == header::TRANSFER_ENCODING || *name == header::TRAILER {
            // Framed here; no trailers are sent.
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            // (A value with other bytes than visible ASCII and tabs is no length either.)
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (declared, parsed) {
                (None, Some(n)) => declared = Some(n),
                // A repeated one, or one that is not a length: the framing below decides.
                _ => continue,
            }
        } else if *name == header::CONNECTION {
            says_close |= has_token(value, b"close");
        } else if *name == header::DATE {
            wrote_date = true;
        }
        push_field(out, name.as_str().as_bytes(), value);
    }
    let exact = body.size_hint().exact();
    let framing = if status.is_informational() {
        Framing::None
    } else if can_body {
        match (exact, declared) {
            (Some(n), declared) => {
                if declared.is_none() {
                    push_length(out, n);
                }
                Framing::Length(n)
            }
            (None, Some(n)) => Framing::Length(n),
            (None, None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    } else {
        // HEAD: the length the body would have, when it is known and not written already.
        if head_only && !no_body_status && declared.is_none() {
            if let Some(n) = exact.filter(|n| *n > 0) {
                push_length(out, n);
            }
        }
        Framing::None
    };
    close |= says_close;
    if close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, usize::try_from(n).unwrap_or(usize::MAX));
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(date.1.as_bytes());
    });
}

/// Waits for the connection's queued write, if any, and writes what it left.
async fn settle<S: AsyncWrite + Unpin>(
    deferred: Option<&Deferred>,
    io: &mut S,
) -> Result<(), String> {
    match deferred {
        Some(d) if !d.is_idle() => finish(d.settle().await, io).await,
        _ => Ok(()),
    }
}

/// Acts on what a queued write came to: writes the bytes it left, or fails as the write did.
async fn finish<S: AsyncWrite + Unpin>(outcome: Outcome, io: &mut S) -> Result<(), String> {
    match outcome {
        Outcome::Done => Ok(()),
        Outcome::Rest { rest, .. } => write_all(io, &mut [IoSlice::new(&rest)]).await,
        Outcome::Failed(e, _) => Err(e.to_string()),
    }
}

/// Writes the head in `out` and the body after it; the head goes out with the body's first
/// bytes when they are ready at once. A whole response ready at once is queued on
/// `deferred` ([`crate::write_batch`]) when it can be. `Err`: why the connection must close
/// (the body failed or did not match its length, the client went away, a write failed).
async fn write_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    out: &[u8],
    body: &mut ResponseBody,
    framing: Framing,
    deferred: Option<&Deferred>,
) -> Result<(), String> {
    let mut left = match framing {
        Framing::None if deferred.is_some_and(|d| d.queue(&[out], None)) => return Ok(()),
        Framing::None => return write_all(io, &mut [IoSlice::new(out)]).await,
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let mut head_sent = false;
    loop {
        // The next frame; the first is taken only if it is ready now, so that a slow body
        // does not hold the head back.
        let frame = if head_sent {
            let next = poll_fn(|cx| {
                if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                    return Poll::Ready(Some(frame));
                }
                match poll_client(io, buf, limits, cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            next.ok_or("the client went away during the response")?
        } else {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all(io, &mut [IoSlice::new(out)]).await?;
                    head_sent = true;
                    continue;
                }
            }
        };
        let head: &[u8] = if head_sent { &[] } else { out };
        let data = match frame {
            None => {
                return match left {
                    Some(0) | None => {
                        let end: &[u8] = if left.is_none() { b"0\r\n\r\n" } else { b"" };
                        write_all(io, &mut [IoSlice::new(head), IoSlice::new(end)]).await
                    }
                    Some(n) => Err(format!("the response body ended {n} bytes short")),
                };
            }
            Some(Err(e)) => return Err(format!("the response body failed: {e}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent (see `encode_head`).
                Err(_) => continue,
            },
        };
        let mut size_line = [0u8; 18];
        let (prefix, suffix): (&[u8], &[u8]) = match &mut left {
            Some(n) => {
                *n = n
                    .checked_sub(data.len() as u64)
                    .ok_or("the response body is longer than its length")?;
                (&[], &[])
            }
            None if data.is_empty() => continue,
            None => (chunk_size_line(data.len(), &mut size_line), b"\r\n"),
        };
        // The whole response, ready at once: written at the end of the shard's turn.
        let whole = !head_sent && left == Some(0) && body.is_end_stream();
        if whole && deferred.is_some_and(|d| d.queue(&[head, &data], None)) {
            return Ok(());
        }
        write_all(
            io,
            &mut [
                IoSlice::new(head),
                IoSlice::new(prefix),
                IoSlice::new(&data),
                IoSlice::new(suffix),
            ],
        )
        .await?;
        head_sent = true;
    }
}

/// `len` in hexadecimal followed by CRLF, written into `line`.
fn chunk_size_line(mut len: usize, line: &mut [u8; 18]) -> &[u8] {
    let mut at = line.len() - 2;
    line[at..].copy_from_slice(b"\r\n");
    loop {
        at -= 1;
        line[at] = b"0123456789abcdef"[len & 15];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    &line[at..]
}

/// Writes every slice, in as few system calls as the socket allows; `Err`: why it failed.
async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    bufs: &mut [IoSlice<'_>],
) -> Result<(), String> {
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs))
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero).to_string());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// A stream with bytes already read from it in front: what the front end read and did not
/// serve, for hyper to read first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

    const LIMITS: Limits = Limits {
        max_head_bytes: 8192,
        max_headers: 100,
    };

    fn parsed(input: &[u8]) -> (Result<(Request<ClientBody>, bool), NotServed>, BytesMut) {
        let mut buf = BytesMut::from(input);
        (parse(&mut buf, LIMITS), buf)
    }

    #[test]
    fn plain_heads_are_served_here_and_the_rest_stays_in_the_buffer() {
        let (p, rest) = parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\nGET /next");
        let (req, close) = p.expect("not served here");
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers()["x-y"], "z");
        assert_eq!(&rest[..], b"GET /next");

        let (p, _) =
            parsed(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(p, Ok((_, true))));
    }

    #[test]
    fn bodies_upgrades_old_versions_and_bad_heads_go_to_hyper_untouched() {
        let cases: [&[u8]; 9] = [
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
        ];
        for input in cases {
            let (p, rest) = parsed(input);
            assert!(
                matches!(p, Err(NotServed::NotOurs)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(&rest[..], input, "bytes lost");
        }
        let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(p.err(), Some(NotServed::Partial));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: x\r\n");
        // More fields than allowed: hyper answers (with its 431).
        let tight = Limits {
            max_headers: 2,
            ..LIMITS
        };
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n"[..]);
        assert_eq!(parse(&mut buf, tight).err(), Some(NotServed::NotOurs));
    }

    fn head(
        status: u16,
        fields: &[(&str, &str)],
        body: ResponseBody,
        head_only: bool,
        close: bool,
    ) -> (String, Framing, bool) {
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in fields {
            resp.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let (framing, close) = encode_head(&parts, &body, head_only, close, &mut out);
        (String::from_utf8(out).unwrap(), framing, close)
    }

    #[test]
    fn response_heads_are_framed_as_hyper_frames_them() {
        // A known length without the field: written; with it: kept as it is.
        let (h, f, c) = head(
            200,
            &[("x-a", "1")],
            ResponseBody::full("hello"),
            false,
            false,
        );
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "),
            "{h}"
        );
        assert!(h.ends_with(" GMT\r\n\r\n"), "{h}");
        assert_eq!((f, c), (Framing::Length(5), false));
        let (h, f, _) = head(
            200,
            &[("content-length", "5"), ("date", "d")],
            ResponseBody::full("hello"),
            false,
            false,
        );
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: d\r\n\r\n");
        assert_eq!(f, Framing::Length(5));
        // An empty body: `content-length: 0`, but not for HEAD, 204 or 304.
        let (h, f, _) = head(404, &[("date", "d")], ResponseBody::empty(), false, false);
        assert_eq!(
            h,
            "HTTP/1.1 404 Not Found\r\ndate: d\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(f, Framing::Length(0));
        for (status, head_only) in [(200, true), (204, false), (304, false)] {
            let (h, f, _) = head(
                status,
                &[("date", "d")],
                ResponseBody::empty(),
                head_only,
                false,
            );
            assert!(!h.contains("content-length"), "{h}");
            assert_eq!(f, Framing::None);
        }
        // HEAD with a body of known size: the length it would have.
        let (h, f, _) = head(
            200,
            &[("date", "d")],
            ResponseBody::full("abc"),
            true,
            false,
        );
        assert!(h.contains("content-length: 3\r\n"), "{h}");
        assert_eq!(f, Framing::None);
        // Framing fields of the response are not passed on; closing is said once.
        let (h, _, c) = head(
            503,
            &[
                ("transfer-encoding", "gzip"),
                ("trailer", "x"),
                ("connection", "close"),
                ("date", "d"),
            ],
            ResponseBody::full("x"),
            false,
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ndate: d\r\ncontent-length: 1\r\n\r\n"
        );
        assert!(c);
        let (h, _, c) = head(200, &[("date", "d")], ResponseBody::empty(), false, true);
        assert!(h.contains("connection: close\r\n"), "{h}");
        assert!(c);
        // 1xx is not a final answer: 500, and the connection ends.
        let (h, f, c) = head(103, &[("link", "x")], ResponseBody::empty(), false, false);
        assert!(
            h.starts_with(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n"
            ),
            "{h}"
        );
        assert_eq!((f, c), (Framing::Length(0), true));
    }

    #[test]
    fn chunk_size_lines_are_hexadecimal() {
        let mut line = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut line), b"0\r\n");
        assert_eq!(chunk_size_line(10, &mut line), b"a\r\n");
        assert_eq!(chunk_size_line(4096, &mut line), b"1000\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut line),
            b"ffffffffffffffff\r\n"
        );
    }
}

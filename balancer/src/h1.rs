//! The balancer's own HTTP/1.1 client, for the common exchange: a request whose body is in
//! memory (none, or buffered under `BUFFER_BODY_BYTES`) and that asks for no upgrade.
//!
//! hyper's client runs every connection in a task of its own and hands each request, its
//! response head and every body chunk across channels to it; with the proxy's server side in
//! another task that is several wake-ups and channel operations per exchange. Here the client
//! connection's task writes the request and reads the response itself: the head is parsed
//! with `httparse` (as hyper does), the body is sliced out of the connection's read buffer
//! without copying, and the connection goes back to its pool when the body has ended.
//! Streamed request bodies and upgrades still go through hyper's client (`upstream.rs`).
//!
//! The framing rules are RFC 9112 §6.3, with what a proxy must refuse: a response with
//! differing `Content-Length` values or an unparsable one is an error (502), a
//! `Transfer-Encoding` with a `Content-Length` is read as chunked and the connection is not
//! reused, a body without length is read until the connection closes.

use std::io;
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::headers::{connection_names, is_hop_by_hop, Forwarded, X_FORWARDED_FOR};

/// Most response header fields accepted (hyper's default is 100).
const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("backend connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the backend closed the connection before a complete response head")]
    ClosedBeforeHead,
    #[error("the backend closed the connection in the middle of the body")]
    ClosedInBody,
    #[error("response head larger than {0} bytes (UPSTREAM_BUFFER_BYTES)")]
    HeadTooLarge(usize),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the client took nothing of the response for too long; backend connection closed")]
    Stalled,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// The framing of a response to `method` and whether its connection can carry another
/// exchange afterwards.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), H1Error> {
    framing_of_fields(
        method,
        status,
        version,
        headers.iter().map(|(n, v)| (n, v.as_bytes())),
    )
}

/// [`response_framing`] from the raw `(name, value)` fields of a head, in one pass.
fn framing_of_fields<'a>(
    method: &Method,
    status: StatusCode,
    version: Version,
    fields: impl Iterator<Item = (&'a HeaderName, &'a [u8])>,
) -> Result<(Framing, bool), H1Error> {
    let mut close = false;
    // The last transfer coding named, over every Transfer-Encoding line.
    let mut te: Option<Option<&[u8]>> = None;
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    let mut has_length = false;
    for (name, value) in fields {
        if name == header::CONNECTION {
            close |= has_token(value, b"close");
        } else if name == header::TRANSFER_ENCODING {
            let last = value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty());
            te = Some(last.or(te.flatten()));
        } else if name == header::CONTENT_LENGTH {
            has_length = true;
            // The first fault found stays.
            for part in value.split(|b| *b == b',') {
                length = match (length, parse_decimal(part.trim_ascii())) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("invalid Content-Length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("differing Content-Length values"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
        }
    }
    // With both a Transfer-Encoding and a Content-Length the message was meant to smuggle
    // (RFC 9112 §6.3): the connection is not reused, whatever the framing (found by the
    // `h1_response` fuzz target: a 1xx or 304 carrying both used to leave it reusable).
    let reusable = version == Version::HTTP_11 && !close && !(te.is_some() && has_length);
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, reusable));
    }
    if let Some(last) = te {
        // With a Content-Length too: read as chunked, the length ignored (not reused, above).
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked, reusable),
            _ => (Framing::UntilClose, false),
        });
    }
    Ok(match length.map_err(H1Error::Malformed)? {
        Some(n) => (Framing::Length(n), reusable),
        None => (Framing::UntilClose, false),
    })
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether the comma-separated list `value` holds `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Writes the request head, and `body` after it, into `out`. The body is framed with a
/// `Content-Length` of its size (any `Transfer-Encoding` and `Content-Length` of the
/// request are replaced); without a body the head goes as it is, without
/// `Transfer-Encoding`, as hyper's client does. `forwarded`'s fields are written after the
/// request's own (whose lines of them are left out), as if they had been added to the map.
pub fn encode_request<B>(
    req: &Request<B>,
    body: Option<&Bytes>,
    forwarded: Option<&Forwarded>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The first `X-Forwarded-For` and `Host` values, for `forwarded`'s fields.
    let (mut xff, mut host) = (None, None);
    for (name, value) in req.headers() {
        if name == header::TRANSFER_ENCODING || (body.is_some() && name == header::CONTENT_LENGTH) {
            continue;
        }
        if forwarded.is_some() {
            if name == header::HOST {
                host = host.or(Some(value));
            } else if Forwarded::writes(name) {
                if name == X_FORWARDED_FOR {
                    xff = xff.or(Some(value));
                }
                continue;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarded {
        f.write_fields(xff, host, out);
    }
    if let Some(body) = body {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What the chunked decoder found.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body out of a read buffer, as the bytes arrive.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Largest trailer section accepted.
    max_trailers: usize,
}

impl ChunkedDecoder {
    pub fn new(max_trailers: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            max_trailers,
        }
    }

    /// The next piece of the body out of `buf` (consumed), or `None` when more bytes are
    /// needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, H1Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    // The same limit whether the line arrives whole or in pieces: without its
                    // CRLF yet, the line is at least `len - 1` bytes (a CR may end the buffer).
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE + 1 {
                            return Err(H1Error::Malformed("chunk-size line too long"));
                        }
                        return Ok(None);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(H1Error::Malformed("chunk-size line too long"));
                    }
                    let line = &buf[..end];
                    let digits = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    let rest = line[digits..].trim_ascii_start();
                    if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') {
                        return Err(H1Error::Malformed("invalid chunk size"));
                    }
                    let size = line[..digits].iter().fold(0u64, |n, d| {
                        n << 4 | u64::from(char::from(*d).to_digit(16).unwrap_or(0))
                    });
                    let _ = buf.split_to(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Malformed("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = ChunkState::Done;
                        return Ok(Some(Chunk::End));
                    }
                    // As for the size line: a section still without its end is at least one
                    // byte longer than what has arrived.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() >= self.max_trailers {
                            return Err(H1Error::Malformed("trailer section too large"));
                        }
                        return Ok(None);
                    };
                    if end + 4 > self.max_trailers {
                        return Err(H1Error::Malformed("trailer section too large"));
                    }
                    let section = buf.split_to(end + 4).freeze();
                    let trailers = parse_fields(&section)?;
                    self.state = ChunkState::Done;
                    return Ok(Some(Chunk::Trailers(trailers)));
                }
                ChunkState::Done => return Ok(Some(Chunk::End)),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Header fields of `section` (which ends with an empty line), values shared with it.
fn parse_fields(section: &Bytes) -> Result<HeaderMap, H1Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let fields = match httparse::parse_headers(section, &mut raw) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(H1Error::Malformed("invalid header fields"))
        }
    };
    to_header_map(section, fields)
}

fn to_header_map(base: &Bytes, fields: &[httparse::Header<'_>]) -> Result<HeaderMap, H1Error> {
    let mut map = HeaderMap::with_capacity(fields.len());
    let start = base.as_ptr() as usize;
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::Malformed("invalid header name"))?;
        let offset = f.value.as_ptr() as usize - start;
        let value = HeaderValue::from_maybe_shared(base.slice(offset..offset + f.value.len()))
            .map_err(|_| H1Error::Malformed("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response head as it is forwarded.
#[derive(Debug)]
pub struct Head {
    /// Status, version and the end-to-end fields: the hop-by-hop ones (RFC 9110 §7.6.1,
    /// those named by `Connection` included) are left out, as the proxy would remove them.
    /// When the fields were asked for unparsed, the map is empty and they are in `fields`.
    pub resp: Response<()>,
    pub framing: Framing,
    /// Whether the connection can carry another exchange after this one.
    pub reusable: bool,
    /// The end-to-end fields, when asked for as they came ([`parse_head`]'s `raw_fields`).
    pub fields: Option<RawFields>,
}

/// The end-to-end fields of a response head as the backend sent them, not built into a
/// `HeaderMap`: each field's name and where its value is in the head's bytes, in the order
/// received. For a head that is only written out again (the own front end's answer to the
/// own client's response) the map is work for nothing: building it, hashing every name and
/// dropping it cost about a tenth of a proxied request's instructions. The values are those
/// a map would hold: `httparse` admits in a value exactly the bytes `HeaderValue` does (tab,
/// visible ASCII and space, `0x80..=0xFF`).
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    fields: Vec<Field>,
}

impl RawFields {
    /// The fields, name and value, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (&f.name, &self.head[f.at..f.at + f.len]))
    }

    /// The fields as a map (values share the head's memory).
    pub fn into_header_map(self) -> Result<HeaderMap, H1Error> {
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for Field { name, at, len, .. } in self.fields {
            let value = HeaderValue::from_maybe_shared(self.head.slice(at..at + len))
                .map_err(|_| H1Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// How many field names a [`NameCache`] keeps.
const CACHED_NAMES: usize = 32;

/// The field names of the last response head read on one connection, by position, with the
/// bytes that spelled them. A backend sends the same names, spelled the same way, in the same
/// order response after response, and comparing the bytes with those seen at that position
/// last time is several times cheaper than building a `HeaderName` (which validates and
/// lower-cases every byte and then looks the name up among the standard ones).
#[derive(Debug, Default)]
pub struct NameCache {
    /// Spelling, name, and whether the name is hop-by-hop.
    names: Vec<(Vec<u8>, HeaderName, bool)>,
}

impl NameCache {
    /// The name of field number `i`, whose bytes are `raw`, and whether it is hop-by-hop
    /// ([`is_hop_by_hop`], `Upgrade` included).
    fn name(&mut self, i: usize, raw: &[u8]) -> Result<(HeaderName, bool), H1Error> {
        if let Some((spelled, name, hop)) = self.names.get(i) {
            if spelled.as_slice() == raw {
                return Ok((name.clone(), *hop));
            }
        }
        let name =
            HeaderName::from_bytes(raw).map_err(|_| H1Error::Malformed("invalid header name"))?;
        let hop = is_hop_by_hop(&name, false);
        if let Some(seen) = self.names.get_mut(i) {
            seen.0.clear();
            seen.0.extend_from_slice(raw);
            (seen.1, seen.2) = (name.clone(), hop);
        } else if i == self.names.len() && i < CACHED_NAMES {
            self.names.push((raw.to_vec(), name.clone(), hop));
        }
        Ok((name, hop))
    }
}

/// A field of a response head being read: its value is at `at..at + len` in the buffer.
#[derive(Debug)]
struct Field {
    name: HeaderName,
    hop: bool,
    at: usize,
    len: usize,
}

/// The head of the response to `method` at the start of `buf` (consumed), or `None` while
/// it is incomplete. Field values share the buffer's memory. The framing is read and the
/// hop-by-hop fields are dropped in the same pass, instead of building every field into the
/// map, reading it again and removing some. `names`: the connection's [`NameCache`].
/// `raw_fields`: the end-to-end fields are left unparsed in [`Head::fields`] (the map stays
/// empty), for a caller that only writes them out again.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    names: &mut NameCache,
    raw_fields: bool,
) -> Result<Option<Head>, H1Error> {
    // Uninitialised: zeroing 128 fields cost more than parsing a typical head.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut raw,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Malformed("too many header fields"))
        }
        Err(_) => return Err(H1Error::Malformed("invalid response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Malformed("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names now (through the cache), values once the head is split off `buf` (where they
    // are, by offset).
    let start = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for (i, h) in parsed.headers.iter().enumerate() {
        let (name, hop) = names.name(i, h.name.as_bytes())?;
        fields.push(Field {
            name,
            hop,
            at: h.value.as_ptr() as usize - start,
            len: h.value.len(),
        });
    }
    let value = |f: &Field| &buf[f.at..f.at + f.len];
    let (framing, reusable) = framing_of_fields(
        method,
        status,
        version,
        fields.iter().map(|f| (&f.name, value(f))),
    )?;
    // `Connection` lines that name more than `keep-alive` (which goes anyway): each field
    // is then checked against them. `close` counts: a field named `Close` goes too.
    let connection = |f: &&Field| f.name == header::CONNECTION;
    let names_fields = fields.iter().filter(connection).any(|f| {
        value(f)
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive"))
    });
    // (No allocation in the usual case: `Vec::new` allocates nothing.)
    let named: Vec<&[u8]> = if names_fields {
        fields.iter().filter(connection).map(value).collect()
    } else {
        Vec::new()
    };
    fields.retain(|f| !(f.hop || named.iter().any(|v| connection_names(v, &f.name))));
    let fields = RawFields {
        head: buf.split_to(len).freeze(),
        fields,
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    let fields = if raw_fields {
        Some(fields)
    } else {
        *resp.headers_mut() = fields.into_header_map()?;
        None
    };
    Ok(Some(Head {
        resp,
        framing,
        reusable,
        fields,
    }))
}

/// Reads what the socket has into `buf` (reserving `chunk` bytes when it is nearly full).
pub fn poll_fill(
    io: &TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(chunk);
    }
    loop {
        ready!(io.poll_read_ready(cx))?;
        let room = buf.capacity() - buf.len();
        let mut short = None;
        // A read that leaves room in the buffer has drained the socket (epoll is
        // edge-triggered): the readiness is cleared as tokio's own `poll_read` does, so the
        // next read, and the liveness check of an idle pooled connection, wait for the
        // reactor instead of trying a system call that can only say EAGAIN. Returning
        // `WouldBlock` from the closure is what clears it, with the readiness seen before
        // the read, so data that arrived since is not lost.
        let result = io.try_io(Interest::READABLE, || match io.try_read_buf(buf) {
            Ok(n) if n > 0 && n < room => {
                short = Some(n);
                Err(io::ErrorKind::WouldBlock.into())
            }
            other => other,
        });
        match (result, short) {
            (_, Some(n)) => return Poll::Ready(Ok(n)),
            (Ok(n), None) => return Poll::Ready(Ok(n)),
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (Err(e), None) => return Poll::Ready(Err(e)),
        }
    }
}

/// [`poll_fill`] as a future.
pub async fn fill(io: &TcpStream, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_fill(io, buf, chunk, cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn framing(
        method: Method,
        status: u16,
        pairs: &[(&str, &str)],
    ) -> Result<(Framing, bool), H1Error> {
        response_framing(
            &method,
            StatusCode::from_u16(status).unwrap(),
            Version::HTTP_11,
            &headers(pairs),
        )
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        assert_eq!(
            framing(Method::GET, 200, &[("content-length", "5")]).unwrap(),
            (Length(5), true)
        );
        assert_eq!(
            framing(Method::HEAD, 200, &[("content-length", "5")]).unwrap(),
            (Empty, true)
        );
        assert_eq!(framing(Method::GET, 204, &[]).unwrap(), (Empty, true));
        assert_eq!(
            framing(Method::GET, 304, &[("content-length", "9")]).unwrap(),
            (Empty, true)
        );
        assert_eq!(
            framing(
                Method::GET,
                304,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            )
            .unwrap(),
            (Empty, false),
            "TE + CL on a bodyless answer: still never reused"
        );
        assert_eq!(framing(Method::GET, 200, &[]).unwrap(), (UntilClose, false));
        assert_eq!(
            framing(Method::GET, 200, &[("transfer-encoding", "gzip, chunked")]).unwrap(),
            (Chunked, true)
        );
        assert_eq!(
            framing(
                Method::GET,
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            )
            .unwrap(),
            (Chunked, false),
            "TE + CL: chunked, never reused"
        );
        assert_eq!(
            framing(Method::GET, 200, &[("transfer-encoding", "chunked, gzip")]).unwrap(),
            (UntilClose, false)
        );
        assert_eq!(
            framing(
                Method::GET,
                200,
                &[("content-length", "5"), ("content-length", "5")]
            )
            .unwrap(),
            (Length(5), true)
        );
        assert_eq!(
            framing(Method::GET, 200, &[("content-length", "5, 5")]).unwrap(),
            (Length(5), true)
        );
        for bad in [
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "5, 6")],
            vec![("content-length", "-1")],
            vec![("content-length", "0x10")],
            vec![("content-length", "")],
            vec![("content-length", "99999999999999999999")],
        ] {
            assert!(framing(Method::GET, 200, &bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            framing(
                Method::GET,
                200,
                &[("content-length", "5"), ("connection", "keep-alive, Close")]
            )
            .unwrap(),
            (Length(5), false)
        );
        let (_, reusable) = response_framing(
            &Method::GET,
            StatusCode::OK,
            Version::HTTP_10,
            &headers(&[("content-length", "1")]),
        )
        .unwrap();
        assert!(!reusable, "HTTP/1.0 answers close the connection");
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut dec = ChunkedDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Some(Chunk::Data(d)) => data.extend_from_slice(&d),
                Some(Chunk::Trailers(t)) => trailers = Some(t),
                Some(Chunk::End) => return Ok((data, trailers)),
                None => {
                    if fed >= input.len() {
                        return Err(H1Error::ClosedInBody);
                    }
                    let next = (fed + split).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        for split in [1, 2, 3, 7, 100] {
            let (data, trailers) = decode_all(body, split).unwrap();
            assert_eq!(data, b"hello world", "split {split}");
            assert_eq!(trailers.unwrap()["x-sum"], "42", "split {split}");
        }
        let (data, trailers) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"0123456789"[..], None));
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, 3), Err(H1Error::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            decode_all(b"5\r\nhel", 2),
            Err(H1Error::ClosedInBody)
        ));
    }

    #[test]
    fn line_and_trailer_limits_do_not_depend_on_the_read_sizes() {
        let line = |ext: usize| {
            let mut b = b"1;".to_vec();
            b.resize(2 + ext, b'x');
            b.extend_from_slice(b"\r\nA\r\n0\r\n\r\n");
            b
        };
        for (ext, ok) in [(MAX_CHUNK_LINE - 2, true), (MAX_CHUNK_LINE - 1, false)] {
            for split in [1, 7, 4096, 100_000] {
                assert_eq!(
                    decode_all(&line(ext), split).is_ok(),
                    ok,
                    "ext {ext} split {split}"
                );
            }
        }
        // decode_all allows 1024 bytes of trailers (the section with its final CRLF CRLF).
        let trailer = |len: usize| {
            let mut b = b"0\r\nx: ".to_vec();
            b.resize(3 + len - 4, b'v');
            b.extend_from_slice(b"\r\n\r\n");
            b
        };
        for (len, ok) in [(1024, true), (1025, false)] {
            for split in [1, 5, 1024, 100_000] {
                assert_eq!(
                    decode_all(&trailer(len), split).is_ok(),
                    ok,
                    "len {len} split {split}"
                );
            }
        }
    }

    #[test]
    fn heads_parse_and_share_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
        );
        let names = &mut NameCache::default();
        let head = parse_head(&mut buf, &Method::GET, names, false)
            .unwrap()
            .unwrap();
        assert_eq!(head.resp.status(), 201);
        assert_eq!(head.resp.headers().get_all("x-a").iter().count(), 2);
        assert_eq!((head.framing, head.reusable), (Framing::Length(3), true));
        assert_eq!(&buf[..], b"abc", "the body stays in the buffer");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A"[..]);
        assert!(parse_head(&mut partial, &Method::GET, names, false)
            .unwrap()
            .is_none());
        let mut bad = BytesMut::from(&b"HTTP/1.1 2000 OK\r\n\r\n"[..]);
        assert!(parse_head(&mut bad, &Method::GET, names, false).is_err());
    }

    #[test]
    fn the_name_cache_gives_the_names_the_bytes_spell() {
        let names = &mut NameCache::default();
        let mut head = |wire: &[u8]| {
            parse_head(&mut BytesMut::from(wire), &Method::GET, names, false)
                .map(|h| h.map(|h| h.resp.headers().clone()))
        };
        let first = head(b"HTTP/1.1 200 OK\r\nServer: a\r\nX-Id: 1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        // Other case, another name at position 1, one more field.
        let second = head(
            b"HTTP/1.1 200 OK\r\nSERVER: b\r\nX-Other: 2\r\ncontent-length: 0\r\nX-Id: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            first.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["server", "x-id", "content-length"]
        );
        let keys: Vec<_> = second.keys().map(|n| n.as_str()).collect();
        assert_eq!(keys, ["server", "x-other", "content-length", "x-id"]);
        assert_eq!(second["x-id"], "3");
        // A name like the cached one but invalid is still refused.
        assert!(head(b"HTTP/1.1 200 OK\r\nServer: a\r\nX Other: 2\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nServe\xf2: a\r\n\r\n").is_err());
    }

    /// What the head gave before it was read in one pass: every field in the map, the
    /// framing read from the map, the hop-by-hop fields stripped afterwards.
    fn two_pass(head: &[u8], method: &Method) -> Result<(HeaderMap, Framing, bool), String> {
        let base = Bytes::copy_from_slice(head);
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        let httparse::Status::Complete(_) = resp.parse(&base).map_err(|e| e.to_string())? else {
            return Err("partial".into());
        };
        let status = StatusCode::from_u16(resp.code.unwrap()).map_err(|e| e.to_string())?;
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut map = to_header_map(&base, resp.headers).map_err(|e| e.to_string())?;
        let (framing, reusable) =
            response_framing(method, status, version, &map).map_err(|e| e.to_string())?;
        crate::headers::strip_hop_by_hop(&mut map, false);
        Ok((map, framing, reusable))
    }

    #[test]
    fn one_pass_heads_equal_parse_then_strip() {
        let heads: [&[u8]; 13] = [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nClose: yes\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive\r\nconnection: x-hop\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: nope\r\nProxy-Authenticate: Basic\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nTE: trailers\r\nTrailer: X-T\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\tok\r\nX-Bad: a\x7fb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\tok\r\nContent-Length: 0\r\n\r\n",
        ];
        // One name cache for all (as one connection would see them) and a fresh one for each.
        let mut shared = NameCache::default();
        for head in heads {
            for (method, names) in [Method::GET, Method::HEAD]
                .into_iter()
                .flat_map(|m| [(m.clone(), true), (m, false)])
            {
                let mut fresh = NameCache::default();
                let names = if names { &mut shared } else { &mut fresh };
                // As a map, and unparsed (then made into a map here): the same fields.
                for raw in [false, true] {
                    let expected = two_pass(head, &method);
                    let got = parse_head(&mut BytesMut::from(head), &method, names, raw).map(|h| {
                        h.map(|h| (h.resp.headers().clone(), h.fields, h.framing, h.reusable))
                    });
                    let got = match got {
                        Ok(Some((map, fields, framing, reusable))) => {
                            assert_eq!(fields.is_some(), raw);
                            assert!(
                                !raw || map.is_empty(),
                                "unparsed fields leave the map empty"
                            );
                            let map = match fields {
                                Some(f) => f.into_header_map().unwrap(),
                                None => map,
                            };
                            Ok(Some((map, framing, reusable)))
                        }
                        other => other.map(|_| None),
                    };
                    match (expected, got) {
                        (Ok(e), Ok(Some(g))) => {
                            assert_eq!(e, g, "{}", String::from_utf8_lossy(head))
                        }
                        (Err(_), Err(_)) => {}
                        (e, g) => panic!("{}: {e:?} vs {g:?}", String::from_utf8_lossy(head)),
                    }
                }
            }
        }
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12_345, usize::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").as_bytes());
        }
    }

    #[test]
    fn requests_are_framed_by_their_body() {
        let mut out = Vec::new();
        let req = Request::post("http://x/p?q=1")
            .header("host", "example")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        encode_request(&req, Some(&Bytes::from_static(b"hi")), None, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: example\r\ncontent-length: 2\r\n\r\nhi"
        );
        let get = Request::get("/").header("host", "h").body(()).unwrap();
        encode_request(&get, None, None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\r\n"
        );
    }

    /// A request line, its fields, and what follows the head.
    type Parsed = (String, Vec<(String, Vec<u8>)>, Vec<u8>);

    /// The fields of an encoded request head, grouped by name (order kept within a name:
    /// it is the only order that carries meaning).
    fn fields_of(head: &[u8]) -> Parsed {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        let httparse::Status::Complete(len) = req.parse(head).unwrap() else {
            panic!("partial head: {:?}", String::from_utf8_lossy(head));
        };
        let line = format!("{} {}", req.method.unwrap(), req.path.unwrap());
        let mut fields: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        (line, fields, head[len..].to_vec())
    }

    #[test]
    fn forwarding_fields_written_into_the_head_equal_those_added_to_the_map() {
        let maps: Vec<HeaderMap> = vec![
            headers(&[("host", "shop.example")]),
            headers(&[]),
            headers(&[
                ("host", "a"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil"),
            ]),
            headers(&[("host", "a"), ("x-forwarded-for", "  ")]),
            headers(&[("x-forwarded-host", "only-this"), ("accept", "*/*")]),
            headers(&[
                ("content-length", "5"),
                ("host", "a"),
                ("x-custom", "1"),
                ("accept", "*/*"),
                ("x-custom", "2"),
            ]),
        ];
        let mut non_ascii = headers(&[("host", "a")]);
        non_ascii.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.0.0.1, \xff").unwrap(),
        );
        let clients: [std::net::IpAddr; 2] =
            ["192.0.2.9".parse().unwrap(), "fe80::1:2".parse().unwrap()];
        let body = Bytes::from_static(b"hello");
        for map in maps.iter().chain([&non_ascii]) {
            for client in clients {
                for trailers in [false, true] {
                    for body in [None, Some(&body)] {
                        let f = Forwarded { client, trailers };
                        let mut req = Request::post("/p?q").body(()).unwrap();
                        *req.headers_mut() = map.clone();
                        let mut direct = Vec::new();
                        encode_request(&req, body, Some(&f), &mut direct);
                        f.apply(req.headers_mut());
                        let mut via_map = Vec::new();
                        encode_request(&req, body, None, &mut via_map);
                        assert_eq!(
                            fields_of(&direct),
                            fields_of(&via_map),
                            "{map:?} {client} trailers={trailers} body={body:?}"
                        );
                    }
                }
            }
        }
    }
}

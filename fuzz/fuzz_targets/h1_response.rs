//! balancer::h1 — the balancer's own HTTP/1.1 client reads what backends send: the response
//! head (`parse_head`, which reads the framing and drops the hop-by-hop fields in one pass)
//! and chunked bodies (`ChunkedDecoder`). Input: byte 0 = how many bytes to feed the decoder
//! at a time (1..=64), then the response as it would arrive on the wire.
//! Asserts: a parsed head consumes no more than the input and has at most 128 fields; read
//! with its fields left unparsed (`h1::RawFields`) it is accepted exactly when it is as a map,
//! and its fields make the same map; it is the same when read again with the field names cached from it or from another head; it
//! equals the two-pass reading (every field into a map, `response_framing` on the map, then
//! `strip_hop_by_hop`); a framing decision is consistent (no body for 1xx/204/304; a
//! `Transfer-Encoding` with a `Content-Length` is never reused); a chunked body decodes to
//! the same data, trailers and outcome whether it arrives in one piece or in small pieces;
//! the decoder always makes progress (every call consumes bytes, or asks for more, or ends).
#![no_main]
use balancer::h1::{parse_head, response_framing, Chunk, ChunkedDecoder, Framing, NameCache};
use balancer::headers::strip_hop_by_hop;
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{header, HeaderMap, Method, StatusCode, Version};
use libfuzzer_sys::fuzz_target;

/// Data, trailers, and whether the body ended cleanly (`Some(true)`), failed (`Some(false)`)
/// or needs more bytes (`None`).
type Decoded = (Vec<u8>, Option<HeaderMap>, Option<bool>);

fn decode(body: &[u8], step: usize) -> Decoded {
    let mut dec = ChunkedDecoder::new(16 * 1024);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(Chunk::Data(d))) => {
                assert!(!d.is_empty(), "an empty data chunk");
                data.extend_from_slice(&d);
            }
            Ok(Some(Chunk::Trailers(t))) => trailers = Some(t),
            Ok(Some(Chunk::End)) => return (data, trailers, Some(true)),
            Ok(None) => {
                assert!(buf.len() <= before, "the decoder grew its input");
                if fed == body.len() {
                    return (data, trailers, None);
                }
                let next = (fed + step).min(body.len());
                buf.extend_from_slice(&body[fed..next]);
                fed = next;
            }
            Err(_) => return (data, trailers, Some(false)),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, wire)) = input.split_first() else {
        return;
    };
    let step = usize::from(first % 64) + 1;
    let mut buf = BytesMut::from(wire);
    let mut names = NameCache::default();
    let unparsed = parse_head(&mut BytesMut::from(wire), &Method::GET, &mut NameCache::default(), true);
    let Ok(Some(head)) = parse_head(&mut buf, &Method::GET, &mut names, false) else {
        assert!(!matches!(unparsed, Ok(Some(_))), "read with its fields unparsed, refused as a map");
        return;
    };
    // With its fields unparsed: the map stays empty, and the fields make the same map.
    let unparsed = unparsed.expect("refused unparsed").expect("incomplete unparsed");
    assert!(unparsed.resp.headers().is_empty(), "unparsed fields in the map");
    assert_eq!((unparsed.resp.status(), unparsed.framing, unparsed.reusable), (head.resp.status(), head.framing, head.reusable));
    let fields = unparsed.fields.expect("no unparsed fields");
    assert!(fields.iter().count() == head.resp.headers().len(), "field counts differ");
    assert_eq!(&fields.into_header_map().expect("an unparsed value the map refuses"), head.resp.headers());
    // The names cached from this head, and from a typical other one, give the same head.
    let mut warmed = NameCache::default();
    let typical = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Type: text/html\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
    let _ = parse_head(&mut BytesMut::from(&typical[..]), &Method::GET, &mut warmed, false);
    for cache in [&mut names, &mut warmed] {
        let again = parse_head(&mut BytesMut::from(wire), &Method::GET, cache, false);
        let again = again.expect("refused with cached names").expect("incomplete with cached names");
        assert_eq!(again.resp.headers(), head.resp.headers(), "cached names changed the head");
        assert_eq!((again.framing, again.reusable), (head.framing, head.reusable));
    }
    assert!(buf.len() <= wire.len());
    assert!(head.resp.headers().len() <= 128);
    let (framing, reusable) = (head.framing, head.reusable);

    // The same head read in two passes.
    let mut raw = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut raw);
    assert!(
        matches!(parsed.parse(wire), Ok(httparse::Status::Complete(_))),
        "httparse disagrees on the head"
    );
    let mut all = HeaderMap::new();
    let (mut te, mut cl) = (false, false);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).expect("name parse_head accepted");
        let value = HeaderValue::from_bytes(h.value).expect("value parse_head accepted");
        te |= name == header::TRANSFER_ENCODING;
        cl |= name == header::CONTENT_LENGTH;
        all.append(name, value);
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let status = head.resp.status();
    assert_eq!(
        response_framing(&Method::GET, status, version, &all).ok(),
        Some((framing, reusable)),
        "framing differs from the two-pass reading"
    );
    strip_hop_by_hop(&mut all, false);
    assert_eq!(&all, head.resp.headers(), "fields differ from the two-pass reading");

    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        assert_eq!(framing, Framing::Empty);
    }
    if te && cl {
        assert!(!reusable, "TE + CL reused");
    }
    if framing == Framing::Chunked {
        let whole = decode(&buf, buf.len().max(1));
        let pieces = decode(&buf, step);
        assert_eq!(whole.0, pieces.0, "data depends on the read sizes");
        assert_eq!(whole.1, pieces.1, "trailers depend on the read sizes");
        assert_eq!(whole.2, pieces.2, "outcome depends on the read sizes");
    }
});

//! balancer::h1 — the balancer's own HTTP/1.1 client reads what backends send: the response
//! head (`parse_head`), its framing (`response_framing`) and chunked bodies
//! (`ChunkedDecoder`). Input: byte 0 = how many bytes to feed the decoder at a time (1..=64),
//! then the response as it would arrive on the wire.
//! Asserts: a parsed head consumes no more than the input and has at most 128 fields; a
//! framing decision is consistent (no body for 1xx/204/304; a `Transfer-Encoding` with a
//! `Content-Length` is never reused); a chunked body decodes to the same data, trailers and
//! outcome whether it arrives in one piece or in small pieces; the decoder always makes
//! progress (every call consumes bytes, or asks for more, or ends).
#![no_main]
use balancer::h1::{parse_head, response_framing, Chunk, ChunkedDecoder, Framing};
use bytes::BytesMut;
use http::{header, HeaderMap, Method, StatusCode};
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
    let Ok(Some(resp)) = parse_head(&mut buf) else {
        return;
    };
    assert!(buf.len() <= wire.len());
    assert!(resp.headers().len() <= 128);
    let Ok((framing, reusable)) =
        response_framing(&Method::GET, resp.status(), resp.version(), resp.headers())
    else {
        return;
    };
    let status = resp.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        assert_eq!(framing, Framing::Empty);
    }
    if resp.headers().contains_key(header::TRANSFER_ENCODING)
        && resp.headers().contains_key(header::CONTENT_LENGTH)
    {
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

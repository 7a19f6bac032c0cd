//! balancer::front — the own HTTP/1.1 front end reads what clients send (`parse`) and writes
//! the response heads (`encode_head`). Input: byte 0 picks the limits and a status code,
//! then a request as it would arrive on the wire.
//! Asserts: a head not served here leaves the buffer exactly as it was (hyper reads it
//! next); a served one is an HTTP/1.1 request without a body, upgrade or trailers, whose
//! remainder is the input after the head, and every shorter cut of that head is `Partial`;
//! an encoded response head, with the request's fields as the response's, parses as one
//! complete HTTP/1.1 response of that status with at most one framing field, never both a
//! length and chunked, and none at all when no body may follow.
#![no_main]
use balancer::body::ResponseBody;
use balancer::front::{encode_head, parse, Framing, Limits, NotServed};
use bytes::BytesMut;
use http::{Method, Response, StatusCode, Version};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 204, 304, 404, 101, 103, 500, 206];

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_head_bytes: 8192,
        max_headers: if knob & 1 == 0 { 100 } else { 4 },
    };
    let mut buf = BytesMut::from(input);
    let (req, close) = match parse(&mut buf, limits) {
        Err(_) => {
            assert_eq!(&buf[..], input, "a declined head lost bytes");
            return;
        }
        Ok(served) => served,
    };
    let head_len = input.len() - buf.len();
    assert!(input.ends_with(&buf), "the remainder is not the input's tail");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_ne!(req.method(), Method::CONNECT);
    assert!(req.headers().len() <= limits.max_headers);
    for (name, value) in req.headers() {
        assert_ne!(name, http::header::TRANSFER_ENCODING);
        assert_ne!(name, http::header::UPGRADE);
        if name == http::header::CONTENT_LENGTH {
            assert_eq!(value.as_bytes().trim_ascii(), b"0");
        }
    }
    for cut in [head_len / 2, head_len.saturating_sub(1)] {
        if cut < head_len && cut > 0 {
            let mut part = BytesMut::from(&input[..cut]);
            assert_eq!(parse(&mut part, limits).err(), Some(NotServed::Partial), "cut at {cut}");
        }
    }

    // The request's fields as a response's.
    let status = StatusCode::from_u16(STATUSES[usize::from(knob >> 1) % STATUSES.len()]).unwrap();
    let head_only = req.method() == Method::HEAD;
    let mut resp = Response::new(if knob & 0x80 == 0 {
        ResponseBody::full(&b"body"[..])
    } else {
        ResponseBody::empty()
    });
    *resp.status_mut() = status;
    *resp.headers_mut() = req.headers().clone();
    let (parts, body) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, closes) = encode_head(&parts, &body, head_only, close, &mut out);
    assert!(!close || closes);
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut fields);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the head"),
        other => panic!("not one complete response head ({other:?}): {:?}", String::from_utf8_lossy(&out)),
    }
    assert_eq!(parsed.version, Some(1));
    let written = parsed.code.unwrap();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        assert_eq!(written, 500);
    } else {
        assert_eq!(written, status.as_u16());
    }
    let count = |n: &str| parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).count();
    assert!(count("content-length") <= 1);
    assert!(count("transfer-encoding") <= 1);
    assert!(count("content-length") + count("transfer-encoding") <= 1);
    assert_eq!(count("transfer-encoding") == 1, framing == Framing::Chunked);
    let no_body = head_only || matches!(written, 204 | 304) || (100..200).contains(&written);
    if no_body {
        assert_eq!(framing, Framing::None);
    }
});

//! balancer::headers::{strip_hop_by_hop, add_forwarded, accepts_trailers, is_upgrade}.
//! Input: byte 0 = flags (bit 0: keep_upgrade, bit 1: IPv6 client, bit 2: a Host value),
//! bytes 1..17 = client address, then `name:value` lines.
//! Asserts, after strip_hop_by_hop: no hop-by-hop field remains (connection, keep-alive,
//! proxy-connection, te, transfer-encoding, proxy-authorization, proxy-authenticate, and
//! upgrade unless kept); no field named by the original Connection header remains (tokens
//! read from the raw bytes, as a recipient might); every other field is unchanged; with
//! keep_upgrade, `Connection: upgrade` is the one Connection field.
//! After add_forwarded: X-Forwarded-For ends with the client, an earlier list is kept in front,
//! X-Forwarded-Proto is http, X-Forwarded-Host is the host given (or absent).
//! is_upgrade implies an Upgrade field and a Connection token `upgrade`; accepts_trailers
//! implies a TE field. The forwarding fields written straight into a request head by the
//! own client (`Forwarded::write_fields` via `h1::encode_request`) equal those
//! `Forwarded::apply` adds to the map (flags bit 3: the client accepts trailers).
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::h1::encode_request;
use balancer::headers::{
    accepts_trailers, add_forwarded, is_upgrade, strip_hop_by_hop, Forwarded,
};
use http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rustybalancer_fuzz::header_map;

/// The fields of an encoded request head, by name (order kept within a name).
fn fields_of(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut raw = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut raw);
    assert!(
        matches!(req.parse(head), Ok(httparse::Status::Complete(_))),
        "encoded head does not parse: {:?}",
        String::from_utf8_lossy(head)
    );
    let mut fields: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "proxy-authorization",
    "proxy-authenticate",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let flags = data[0];
    let keep_upgrade = flags & 1 != 0;
    let client = if flags & 2 != 0 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&data[1..17]).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::new(data[1], data[2], data[3], data[4]))
    };
    let orig = header_map(data[17..].split(|b| *b == b'\n'));

    if is_upgrade(&orig) {
        assert!(orig.contains_key("upgrade"));
    }
    if accepts_trailers(&orig) {
        assert!(orig.contains_key("te"));
    }

    // Every token of every Connection field, from the raw bytes.
    let named: Vec<HeaderName> = orig
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();

    let mut h = orig.clone();
    strip_hop_by_hop(&mut h, keep_upgrade);
    for name in HOP.iter().skip(1) {
        assert!(!h.contains_key(*name), "{name} survived: {h:?}");
    }
    if keep_upgrade {
        let conn: Vec<_> = h.get_all("connection").iter().collect();
        assert_eq!(conn, [&HeaderValue::from_static("upgrade")], "{h:?}");
    } else {
        assert!(!h.contains_key("connection"), "{h:?}");
        assert!(!h.contains_key("upgrade"), "{h:?}");
    }
    for name in &named {
        let kept = keep_upgrade && (name == "upgrade" || name == "connection");
        if !kept {
            assert!(
                !h.contains_key(name),
                "{name} is named by Connection {:?} but survived: {h:?}",
                orig.get_all("connection").iter().collect::<Vec<_>>()
            );
        }
    }
    for name in orig.keys() {
        let removed = HOP.contains(&name.as_str())
            || named.contains(name)
            || (!keep_upgrade && name == "upgrade");
        if !removed {
            let a: Vec<_> = orig.get_all(name).iter().collect();
            let b: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(a, b, "{name} changed");
        }
    }
    for name in h.keys() {
        assert!(
            orig.contains_key(name) || name == "connection",
            "{name} appeared"
        );
    }

    // The forwarding fields, written into the head or added to the map: the same.
    if h.len() < 200 {
        let f = Forwarded {
            client,
            trailers: flags & 8 != 0,
        };
        let mut req = http::Request::get("/").body(()).expect("request");
        *req.headers_mut() = h.clone();
        let mut direct = Vec::new();
        encode_request(&req, None, Some(&f), &mut direct);
        f.apply(req.headers_mut());
        let mut via_map = Vec::new();
        encode_request(&req, None, None, &mut via_map);
        assert_eq!(fields_of(&direct), fields_of(&via_map), "{h:?}");
    }

    // X-Forwarded-*.
    let host = (flags & 4 != 0)
        .then(|| orig.get("host").cloned())
        .flatten();
    let before = orig.get("x-forwarded-for").cloned();
    let mut f = orig.clone();
    add_forwarded(&mut f, client, host.as_ref());
    let xff = f.get("x-forwarded-for").expect("X-Forwarded-For set");
    let xff = xff.to_str().expect("text");
    let ip = client.to_string();
    assert!(xff.ends_with(&ip), "{xff} does not end with {ip}");
    if let Some(prev) = before.as_ref().and_then(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            assert_eq!(xff, format!("{prev}, {ip}"));
        }
    }
    assert_eq!(f.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(
        f.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"http"[..])
    );
    assert_eq!(f.get("x-forwarded-host"), host.as_ref());
});

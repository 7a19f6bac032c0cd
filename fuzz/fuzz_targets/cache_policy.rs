//! balancer::cache::CachePolicy (Cache-Control parsing and the caching rules).
//! Input: byte 0 = flags (bit 0: CACHE_CREDENTIALED=always, bit 1: HEAD, bit 2: POST,
//! bit 3: credentialed), bytes 1..9 = default_ttl / max_ttl seconds (u16 each), max object
//! bytes (u32); then a request target line, then `name:value` lines (request and response
//! fields together, `---` switches to the response).
//! Asserts (directives read from the raw bytes of every Cache-Control field):
//! - ttl: Some(t) => 0 < t <= max_ttl, status 200, no Set-Cookie, Content-Length within the
//!   object limit, no no-store / private / no-cache; a credentialed request (unless
//!   `always`) needs public or s-maxage;
//! - key: Some => GET or HEAD, static path, no Authorization, no no-cache / no-store /
//!   max-age=0 in the request, no `Pragma: no-cache`;
//! - is_static(path) => the last segment's extension is configured.
#![no_main]
use std::time::Duration;

use balancer::cache::CachePolicy;
use balancer::config::CacheConfig;
use http::header::HeaderMap;
use http::{Method, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use rustybalancer_fuzz::header_map;

/// Cache-Control directive names, lower-cased, from the raw bytes.
fn directives(h: &HeaderMap) -> Vec<(String, Option<String>)> {
    h.get_all("cache-control")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let d = String::from_utf8_lossy(d);
            match d.split_once('=') {
                Some((n, v)) => (
                    n.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let flags = data[0];
    let default_ttl = Duration::from_secs(u64::from(u16::from_le_bytes([data[1], data[2]])));
    let max_ttl = Duration::from_secs(u64::from(u16::from_le_bytes([data[3], data[4]])));
    let max_object_bytes = u64::from(u32::from_le_bytes([data[5], data[6], data[7], data[8]]));
    let cfg = CacheConfig {
        capacity: 100,
        max_bytes: u64::MAX,
        max_object_bytes,
        default_ttl,
        max_ttl,
        store_credentialed: flags & 1 != 0,
        extensions: vec!["css".into(), "js".into(), "png".into(), "".into()],
    };
    let policy = CachePolicy::new(&cfg);

    let mut lines = data[9..].split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let rest: Vec<&[u8]> = lines.collect();
    let split = rest.iter().position(|l| *l == b"---").unwrap_or(rest.len());
    let req = header_map(rest[..split].iter().copied());
    let resp = header_map(rest.get(split + 1..).unwrap_or_default().iter().copied());

    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    if policy.is_static(path) {
        let last = path.rsplit('/').next().unwrap_or("");
        let ext = last
            .rsplit_once('.')
            .map(|(_, e)| e)
            .expect("a static path has a dot");
        assert!(
            cfg.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)),
            "{path}"
        );
    }
    let method = match flags & 6 {
        0 => Method::GET,
        2 => Method::HEAD,
        4 => Method::POST,
        _ => Method::DELETE,
    };
    if let Some(key) = policy.key(&method, &uri, &req) {
        assert!(method == Method::GET || method == Method::HEAD);
        assert!(policy.is_static(path));
        assert!(!req.contains_key("authorization"));
        for (n, v) in directives(&req) {
            assert!(
                n != "no-cache" && n != "no-store",
                "request {n} but key {key:?}: {req:?}"
            );
            assert!(
                !(n == "max-age" && v.as_deref() == Some("0")),
                "max-age=0 but key {key:?}"
            );
        }
        assert!(!req
            .get("pragma")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache")));
    }

    let credentialed = CachePolicy::credentialed(&req) || flags & 8 != 0;
    let status = if flags & 16 != 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    if let Some(ttl) = policy.ttl(status, &resp, credentialed) {
        assert!(!ttl.is_zero() && ttl <= max_ttl, "{ttl:?} > {max_ttl:?}");
        assert_eq!(status, StatusCode::OK);
        assert!(!resp.contains_key("set-cookie"));
        let len: u64 = resp
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a stored response has a Content-Length");
        assert!(len <= max_object_bytes);
        let d = directives(&resp);
        for (n, _) in &d {
            assert!(
                !matches!(n.as_str(), "no-store" | "private" | "no-cache"),
                "response says {n} but ttl {ttl:?}: {:?}",
                resp.get_all("cache-control").iter().collect::<Vec<_>>()
            );
        }
        if credentialed && !cfg.store_credentialed {
            assert!(
                d.iter().any(|(n, _)| n == "public" || n == "s-maxage"),
                "credentialed answer stored without public/s-maxage: {d:?}"
            );
        }
    }
});

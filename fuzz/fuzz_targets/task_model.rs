//! balancer::tasks::model (records read back from Redis and client headers) and
//! attempt::parse_request (a stored task's request).
//! Asserts:
//! - decode_headers never panics; decode(encode(h)) == h for any decoded map, and encoding
//!   is a fixed point;
//! - parse_request never panics; when Ok it carries the X-Task-Id / X-Task-Attempt it was given;
//! - parse_prefer: `respond-async` / `wait=N` in a last value are always seen;
//! - Status::parse(as_str) round trip; new_id is_id and id_time_ms(new_id(t)) == t (48 bits);
//! - rfc3339 never panics and has the fixed shape; parse_retry_after never panics;
//! - check_callback: an accepted URL is http://, has no credentials, and its host or
//!   host:port is on the allow-list.
#![no_main]
use std::time::{Duration, SystemTime};

use balancer::tasks::attempt::parse_request;
use balancer::tasks::envelope::check_callback;
use balancer::tasks::model::{
    decode_headers, encode_headers, id_time_ms, is_id, new_id, parse_prefer, parse_retry_after,
    rfc3339, Status,
};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rustybalancer_fuzz::u64_from;

fuzz_target!(|data: &[u8]| {
    let n = u64_from(data);

    // Header block as stored in Redis.
    if let Ok(h) = decode_headers(data) {
        let enc = encode_headers(&h);
        let back = decode_headers(&enc).expect("an encoded block decodes");
        assert_eq!(back, h, "{:?}", String::from_utf8_lossy(&enc));
        assert_eq!(encode_headers(&back), enc);
    }

    // A stored request: fields separated by 0xFF (absent when the part is "\x00").
    let mut parts = data
        .split(|b| *b == 0xff)
        .map(|p| (p != b"\x00").then(|| p.to_vec()));
    let id = String::from_utf8_lossy(&parts.next().flatten().unwrap_or_default()).into_owned();
    let fields = [
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ];
    let attempt = (n >> 32) as u32;
    if let Ok((out, _body, _timeout)) = parse_request(&id, attempt, fields, Duration::from_secs(60))
    {
        assert_eq!(
            out.headers.get("x-task-id").map(|v| v.as_bytes()),
            Some(id.as_bytes())
        );
        let attempt_text = attempt.to_string();
        assert_eq!(
            out.headers.get("x-task-attempt").map(|v| v.as_bytes()),
            Some(attempt_text.as_bytes())
        );
        assert_eq!(out.headers.get_all("x-task-id").iter().count(), 1);
    }

    // Prefer.
    let mut values: Vec<HeaderValue> = data
        .split(|b| *b == b'\n')
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();
    let _ = parse_prefer(values.iter());
    let wait = n % 100_000;
    values.push(HeaderValue::from_str(&format!("respond-async; x=1, Wait=\"{wait}\"")).unwrap());
    let p = parse_prefer(values.iter());
    assert!(p.respond_async);
    assert_eq!(p.wait, Some(Duration::from_secs(wait)));

    // Status, ids, time stamps.
    let text = String::from_utf8_lossy(data);
    if let Some(s) = Status::parse(&text) {
        assert_eq!(s.as_str(), text);
    }
    for s in Status::ALL {
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    let id = new_id(n, &mut SmallRng::seed_from_u64(n));
    assert!(is_id(&id), "{id}");
    assert_eq!(id_time_ms(&id), Some(n & 0xffff_ffff_ffff));
    if is_id(&text) {
        assert!(id_time_ms(&text).is_some());
    }
    let stamp = rfc3339(n);
    assert_eq!(stamp.as_bytes().last(), Some(&b'Z'), "{stamp}");
    assert!(stamp.len() >= 24, "{stamp}");
    if n < 253_402_300_800_000 {
        // Years 1970..=9999: fixed width.
        assert_eq!(stamp.len(), 24, "{stamp}");
    }
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let _ = parse_retry_after(
            &v,
            SystemTime::UNIX_EPOCH + Duration::from_secs(n % (1 << 40)),
        );
    }

    // Callback URLs against an allow-list taken from the first line.
    let (allow, url) = text.split_once('\n').unwrap_or(("", &text));
    let allow: Vec<String> = allow
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if let Ok((host_port, path)) = check_callback(url, &allow, "callback_url") {
        assert!(
            url.len() > 7 && url[..7].eq_ignore_ascii_case("http://"),
            "{url}"
        );
        let rest = &url[7..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        assert!(
            !rest[..auth_end].contains('@'),
            "credentials accepted: {url}"
        );
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port.as_str(), |(h, _)| h);
        assert!(
            allow.iter().any(|a| *a == host_port || a == host),
            "{url} -> {host_port}"
        );
        assert!(path.as_str().starts_with('/'), "{path}");
    }
});

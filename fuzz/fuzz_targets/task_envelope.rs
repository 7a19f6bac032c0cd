//! balancer::tasks::envelope (the JSON body of `POST /_tasks`) and `parse_delay_header`.
//! Asserts: never panics; an accepted envelope obeys the documented limits (no CONNECT,
//! path starts with '/', 1 <= max_attempts <= 100, 0 < timeout <= 1h, delay <= 30 days);
//! re-encoding an accepted envelope as JSON (headers as arrays, body as base64) parses
//! back to the same method, path, headers, body, attempts and callback, and durations
//! within a microsecond.
#![no_main]
use std::time::Duration;

use balancer::tasks::envelope::{parse, parse_delay_header, MAX_ATTEMPTS, MAX_DELAY, MAX_TIMEOUT};
use base64::Engine;
use http::{HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fn close(a: Option<Duration>, b: Option<Duration>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.abs_diff(b) <= Duration::from_micros(1),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = HeaderValue::from_bytes(data) {
        if let Ok(d) = parse_delay_header(&v) {
            assert!(d <= MAX_DELAY);
        }
    }
    let Ok(e) = parse(data) else { return };
    assert_ne!(e.method, Method::CONNECT);
    assert!(e.path.as_str().starts_with('/'), "{:?}", e.path);
    if let Some(n) = e.max_attempts {
        assert!((1..=MAX_ATTEMPTS).contains(&n));
    }
    if let Some(t) = e.timeout {
        assert!(!t.is_zero() && t <= MAX_TIMEOUT, "{t:?}");
    }
    if let Some(d) = e.delay {
        assert!(d <= MAX_DELAY, "{d:?}");
    }

    // Re-encode and parse again.
    let mut headers = Map::new();
    for name in e.headers.keys() {
        let values: Vec<Value> = e
            .headers
            .get_all(name)
            .iter()
            .map(|v| {
                Value::String(
                    String::from_utf8(v.as_bytes().to_vec())
                        .expect("accepted values came from JSON text"),
                )
            })
            .collect();
        headers.insert(name.as_str().to_string(), Value::Array(values));
    }
    let mut obj = json!({
        "method": e.method.as_str(),
        "path": e.path.as_str(),
        "headers": headers,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&e.body),
    });
    let o = obj.as_object_mut().unwrap();
    if let Some(n) = e.max_attempts {
        o.insert("max_attempts".into(), json!(n));
    }
    if let Some(t) = e.timeout {
        o.insert("timeout".into(), json!(t.as_secs_f64()));
    }
    if let Some(d) = e.delay {
        o.insert("delay".into(), json!(d.as_secs_f64()));
    }
    if let Some(c) = &e.callback_url {
        o.insert("callback_url".into(), json!(c));
    }
    let text = serde_json::to_vec(&obj).unwrap();
    let back = parse(&text).unwrap_or_else(|err| {
        panic!(
            "re-encoded envelope refused: {err}: {}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(back.method, e.method);
    assert_eq!(back.path, e.path);
    assert_eq!(back.headers, e.headers);
    assert_eq!(back.body, e.body);
    assert_eq!(back.max_attempts, e.max_attempts);
    assert_eq!(back.callback_url, e.callback_url);
    assert!(
        close(back.timeout, e.timeout),
        "{:?} {:?}",
        back.timeout,
        e.timeout
    );
    assert!(close(back.delay, e.delay), "{:?} {:?}", back.delay, e.delay);
});

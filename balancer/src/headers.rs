//! Header rewriting for forwarding (pure functions).
//!
//! RFC 9110 §7.6.1: a proxy removes the connection-specific fields — `Connection` itself,
//! every field it names, and the well-known hop-by-hop ones — before forwarding.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that are always connection-specific (RFC 9110 §7.6.1, plus the proxy
/// credentials of RFC 9110 §11.7, which are meant for this proxy only). `Trailer` is not
/// one of them: it announces the trailer fields and must reach the recipient. Names, not
/// strings: removing by `&str` parses the name again on every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is always connection-specific (`Upgrade` too unless `keep_upgrade`).
pub fn is_hop_by_hop(name: &HeaderName, keep_upgrade: bool) -> bool {
    HOP_BY_HOP.contains(name) || (!keep_upgrade && name == header::UPGRADE)
}

/// Whether a `Connection` field `value` names `name`.
pub fn connection_names(value: &[u8], name: &HeaderName) -> bool {
    value.split(|b| *b == b',').any(|t| {
        t.trim_ascii()
            .eq_ignore_ascii_case(name.as_str().as_bytes())
    })
}

/// Whether the message asks for a protocol switch (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether `TE` lists `trailers` (the client can receive trailer fields).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The tokens of every `Connection` line, as bytes: a value with a non-ASCII byte somewhere
/// must not hide the names next to it (found by fuzzing: `Connection: foo, \xff` let `foo`
/// through).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields. With `keep_upgrade`, `Upgrade` and `Connection: upgrade`
/// survive so a protocol switch can be tunnelled.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds what is there; only those are looked up again (every
    // response from a keep-alive origin carries `Connection: keep-alive`).
    let (mut found, mut n) = ([None::<&'static HeaderName>; 8], 0);
    for name in headers.keys() {
        let hop = HOP_BY_HOP
            .iter()
            .chain((!keep_upgrade).then_some(&header::UPGRADE))
            .find(|h| *h == name);
        if let (Some(h), Some(slot)) = (hop, found.get_mut(n)) {
            *slot = Some(h);
            n += 1;
        }
    }
    if found[..n].contains(&Some(&header::CONNECTION)) {
        // Fields named by `Connection` go too (`keep-alive` is removed below anyway).
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case(b"upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in found[..n].iter().flatten() {
        headers.remove(*name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What a forwarded request still gets on its way out: `TE: trailers` when the client
/// accepts trailers, and the `X-Forwarded-*` fields for `client`. Kept apart from the
/// header map so the balancer's own client can write them straight into the request head
/// ([`Forwarded::write_fields`]) instead of inserting them into the map and encoding that;
/// [`Forwarded::apply`] does the same to a map, for hyper's client and stored tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    pub client: IpAddr,
    pub trailers: bool,
}

impl Forwarded {
    /// Adds the fields to `headers` (hop-by-hop fields already stripped).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let host = headers.get(header::HOST).cloned();
        add_forwarded(headers, self.client, host.as_ref());
    }

    /// Whether `name` is one [`Forwarded::write_fields`] writes itself (the request's own
    /// lines of it are left out).
    pub fn writes(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST
    }

    /// Writes the fields [`Forwarded::apply`] would set, as `name: value\r\n` lines, for a
    /// request (hop-by-hop fields already stripped) whose first `X-Forwarded-For` and `Host`
    /// values are `xff` and `host` (taken while its fields were written: no lookups).
    pub fn write_fields(
        &self,
        xff: Option<&HeaderValue>,
        host: Option<&HeaderValue>,
        out: &mut Vec<u8>,
    ) {
        if self.trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        push_xff(out, xff, self.client);
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if let Some(host) = host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Adds `X-Forwarded-For` (appending the client to any list already there),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (the host the client asked for).
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&HeaderValue>) {
    let mut xff = Vec::new();
    push_xff(&mut xff, headers.get(&X_FORWARDED_FOR), client);
    // From the vector itself: no second copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The new `X-Forwarded-For` value: the request's first one, `prev` (when it is visible
/// ASCII and not blank), `", "`, and `client`.
fn push_xff(out: &mut Vec<u8>, prev: Option<&HeaderValue>, client: IpAddr) {
    if let Some(prev) = prev.and_then(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    push_ip(out, client);
}

/// Appends `ip` in its usual text form; IPv4 without the formatting machinery, which cost
/// more than the rest of the header rewriting together.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map from `(name, value)` pairs, repeated names appended (also used by the
    /// cache's tests).
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_standard_and_connection_named_fields() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-custom", "kept"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-custom"]);
    }

    #[test]
    fn leaves_end_to_end_fields_alone_and_drops_a_lone_upgrade() {
        let mut h = map(&[("host", "a"), ("accept", "*/*"), ("x-custom", "1")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        let mut h = map(&[("host", "a"), ("Upgrade", "h2c")]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("upgrade"));
        let mut h = map(&[("Keep-Alive", "timeout=5"), ("host", "a")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = map(&[
            ("connection", "Upgrade, x-drop"),
            ("upgrade", "websocket"),
            ("x-drop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-drop"));
        assert!(h.contains_key("sec-websocket-key"));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        add_forwarded(&mut h, "192.0.2.9".parse().unwrap(), Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::1".parse().unwrap(), None);
        assert_eq!(fresh["x-forwarded-for"], "::1");
        assert!(!fresh.contains_key("x-forwarded-host"));
    }

    #[test]
    fn a_non_ascii_byte_does_not_hide_the_other_connection_names() {
        // Regression: fuzz/artifacts/headers (cargo-fuzz target `headers`).
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"foo, \xff").unwrap(),
        );
        h.insert("foo", HeaderValue::from_static("bar"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.0.1",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn every_field_named_by_connection_goes() {
        let mut h = map(&[
            ("connection", "keep-alive, Close, x-hop"),
            ("x-hop", "1"),
            ("close", "named by the option, so removed"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn trailers_acceptance() {
        assert!(accepts_trailers(&map(&[("te", "gzip, Trailers")])));
        assert!(!accepts_trailers(&map(&[("te", "gzip")])));
    }
}

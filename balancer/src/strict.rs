//! HTTP's message rules, enforced before anything is forwarded (pure functions).
//!
//! - `Host` (RFC 9112 §3.2): an HTTP/1.1 request without one, with more than one, or with an
//!   invalid one is refused with 400 (two `Host` lines are refused on any version).
//! - The authority a request names wins over its `Host` field: an absolute-form target's
//!   (RFC 9112 §3.2.2) and, on HTTP/2, `:authority` (RFC 9113 §8.3.1). It becomes the one
//!   `Host` forwarded, the cache key's host and `X-Forwarded-Host`.
//! - `CONNECT` is refused with 501: this proxy opens no tunnels on request.
//! - Transfer codings (RFC 9112 §6.1): only `chunked`, once, is understood; any other coding
//!   is refused with 501, `chunked` twice with 400.
//! - `Upgrade: h2c` is dropped: the connection to the backend stays HTTP/1.1 (a WebSocket
//!   upgrade is still tunnelled).
//! - The same header count limit on HTTP/1.1 and HTTP/2 (`MAX_HEADERS`; hyper applies it to
//!   HTTP/1.1 while parsing, this to HTTP/2): 431 above it.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, StatusCode, Version};

/// Why a request is refused before being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("CONNECT is not supported: this proxy opens no tunnels")]
    Connect,
    #[error("unsupported transfer coding (only chunked is understood)")]
    UnknownTransferCoding,
    #[error("chunked applied more than once")]
    RepeatedChunked,
    #[error("too many header fields")]
    TooManyHeaders,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingHost
            | Refusal::DuplicateHost
            | Refusal::InvalidHost
            | Refusal::RepeatedChunked => StatusCode::BAD_REQUEST,
            Refusal::Connect | Refusal::UnknownTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Refusal::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Short machine-readable code for the JSON body and the client-fault metric.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingHost => "missing_host",
            Refusal::DuplicateHost => "duplicate_host",
            Refusal::InvalidHost => "invalid_host",
            Refusal::Connect => "connect_not_supported",
            Refusal::UnknownTransferCoding => "unsupported_transfer_coding",
            Refusal::RepeatedChunked => "repeated_chunked",
            Refusal::TooManyHeaders => "too_many_headers",
        }
    }
}

/// Checks `req` and normalises its `Host`: afterwards it has at most one, the authority
/// the request names when it names one. `max_headers` bounds the field count.
pub fn check<B>(req: &mut Request<B>, max_headers: usize) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if req.headers().len() > max_headers {
        return Err(Refusal::TooManyHeaders);
    }
    check_transfer_coding(req.headers())?;
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(Refusal::DuplicateHost);
    }
    if let Some(host) = req.headers().get(header::HOST) {
        if !valid_host(host) {
            return Err(Refusal::InvalidHost);
        }
    }
    let named = req.uri().authority().cloned();
    match (req.version(), named) {
        // HTTP/2 and HTTP/3 carry the authority in :authority; it wins over `host`.
        (v, Some(authority)) if v >= Version::HTTP_2 => set_host(req.headers_mut(), &authority),
        (Version::HTTP_11, _) if hosts == 0 => return Err(Refusal::MissingHost),
        // An absolute-form target: its authority wins over `Host`.
        (_, Some(authority)) => set_host(req.headers_mut(), &authority),
        _ => {}
    }
    Ok(())
}

/// A `Host` value: `host[:port]` without user information, as in a URI's authority.
fn valid_host(v: &HeaderValue) -> bool {
    plain_host(v.as_bytes()).unwrap_or_else(|| authority_host(v.as_bytes()))
}

/// [`valid_host`] for the usual value, a name or IPv4 address of letters, digits, dots and
/// hyphens with an optional port of digits, without the URI parser (which copies the value
/// into an allocation of its own): `Some(true)`. `None` for anything else, which goes to
/// [`authority_host`].
fn plain_host(b: &[u8]) -> Option<bool> {
    let (host, port) = match b.iter().position(|c| *c == b':') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let name = |c: &u8| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-';
    let plain = !host.is_empty()
        && host.iter().all(name)
        && port.is_none_or(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    plain.then_some(true)
}

/// [`valid_host`] by the URI parser's rules for an authority, and a port of digits.
fn authority_host(b: &[u8]) -> bool {
    if b.is_empty() || b.contains(&b'@') || Authority::try_from(b).is_err() {
        return false;
    }
    // The URI parser leaves the port loose: it must be digits.
    let after_host = match b.iter().rposition(|c| *c == b']') {
        Some(end) => &b[end + 1..],
        None => b
            .iter()
            .position(|c| *c == b':')
            .map_or(&b[b.len()..], |i| &b[i..]),
    };
    match after_host.split_first() {
        None => true,
        Some((b':', port)) => !port.is_empty() && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

fn set_host(headers: &mut HeaderMap, authority: &Authority) {
    // Userinfo never travels in `Host` (RFC 9110 §7.2).
    let host = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, v);
    }
}

fn check_transfer_coding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for coding in headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
    {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else {
            return Err(Refusal::UnknownTransferCoding);
        }
    }
    if chunked > 1 {
        return Err(Refusal::RepeatedChunked);
    }
    Ok(())
}

/// Whether `Upgrade` asks only for protocols this proxy does not tunnel (`h2c`): such a
/// request is forwarded as a plain one, without its `Upgrade`.
pub fn upgrade_is_h2c_only(headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    tokens.peek().is_some() && tokens.all(|t| t.eq_ignore_ascii_case(b"h2c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    fn host(r: &Request<()>) -> Vec<&str> {
        r.headers()
            .get_all("host")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn host_rules_on_http11() {
        let ok = &mut req(Version::HTTP_11, "/", &[("host", "shop.example:8080")]);
        assert_eq!(check(ok, 100), Ok(()));
        assert_eq!(host(ok), ["shop.example:8080"]);
        for good in ["a", "10.0.0.1:80", "[::1]", "[::1]:8443"] {
            let r = &mut req(Version::HTTP_11, "/", &[("host", good)]);
            assert_eq!(check(r, 100), Ok(()), "{good:?}");
        }
        let missing = &mut req(Version::HTTP_11, "/", &[]);
        assert_eq!(check(missing, 100), Err(Refusal::MissingHost));
        let two = &mut req(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]);
        assert_eq!(check(two, 100), Err(Refusal::DuplicateHost));
        let same_twice = &mut req(Version::HTTP_10, "/", &[("host", "a"), ("host", "a")]);
        assert_eq!(check(same_twice, 100), Err(Refusal::DuplicateHost));
        for bad in [
            "",
            "a b",
            "user@host",
            "host/path",
            "[::1",
            "a:port",
            "a:",
            "[::1]x",
        ] {
            let r = &mut req(Version::HTTP_11, "/", &[("host", bad)]);
            assert_eq!(check(r, 100), Err(Refusal::InvalidHost), "{bad:?}");
        }
        // HTTP/1.0 has no Host requirement.
        assert_eq!(check(&mut req(Version::HTTP_10, "/", &[]), 100), Ok(()));
    }

    #[test]
    fn the_plain_host_shortcut_agrees_with_the_uri_parser() {
        // Every string over a small alphabet up to four bytes long, and some longer ones.
        let alphabet = b"a0.-:9[]@%_ Z";
        let mut values: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = values.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|v| {
                    alphabet.iter().map(move |c| {
                        let mut v = v.clone();
                        v.push(*c);
                        v
                    })
                })
                .collect();
            values.extend(last.iter().cloned());
        }
        for long in [
            "shop.example:8080",
            "10.0.0.1:80",
            "a-b.c-d.example",
            "x.example:",
        ] {
            values.push(long.as_bytes().to_vec());
        }
        let mut shortcut = 0;
        for v in &values {
            if let Some(plain) = plain_host(v) {
                shortcut += 1;
                assert_eq!(plain, authority_host(v), "{:?}", String::from_utf8_lossy(v));
            }
        }
        assert!(shortcut > 1000, "the shortcut took only {shortcut} values");
    }

    #[test]
    fn the_named_authority_wins() {
        let abs = &mut req(
            Version::HTTP_11,
            "http://origin.example:81/x?y",
            &[("host", "other.example")],
        );
        assert_eq!(check(abs, 100), Ok(()));
        assert_eq!(host(abs), ["origin.example:81"]);
        // Absolute form still needs its Host line on HTTP/1.1.
        let abs_no_host = &mut req(Version::HTTP_11, "http://origin.example/", &[]);
        assert_eq!(check(abs_no_host, 100), Err(Refusal::MissingHost));
        let h2 = &mut req(
            Version::HTTP_2,
            "http://authority.example/",
            &[("host", "host.example")],
        );
        assert_eq!(check(h2, 100), Ok(()));
        assert_eq!(host(h2), ["authority.example"]);
        let h2_no_authority = &mut req(Version::HTTP_2, "/", &[("host", "h.example")]);
        assert_eq!(check(h2_no_authority, 100), Ok(()));
        assert_eq!(host(h2_no_authority), ["h.example"]);
    }

    #[test]
    fn connect_codings_and_counts() {
        let mut c = req(Version::HTTP_11, "/", &[("host", "a")]);
        *c.method_mut() = Method::CONNECT;
        assert_eq!(check(&mut c, 100), Err(Refusal::Connect));
        assert_eq!(Refusal::Connect.status(), 501);
        let te = |v: &[(&str, &str)]| {
            let mut h = vec![("host", "a")];
            h.extend_from_slice(v);
            check(&mut req(Version::HTTP_11, "/", &h), 100)
        };
        assert_eq!(te(&[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(te(&[("transfer-encoding", "Chunked ")]), Ok(()));
        assert_eq!(
            te(&[("transfer-encoding", "gzip, chunked")]),
            Err(Refusal::UnknownTransferCoding)
        );
        assert_eq!(
            te(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(Refusal::RepeatedChunked)
        );
        assert_eq!(
            te(&[("transfer-encoding", "chunked, chunked")]),
            Err(Refusal::RepeatedChunked)
        );
        let many: Vec<(String, String)> = (0..5).map(|i| (format!("x-{i}"), "v".into())).collect();
        let mut r = req(Version::HTTP_2, "/", &[]);
        for (k, v) in &many {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(check(&mut r, 4), Err(Refusal::TooManyHeaders));
        assert_eq!(check(&mut r, 5), Ok(()));
    }

    #[test]
    fn h2c_upgrades_are_recognised() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::UPGRADE, HeaderValue::from_str(v).unwrap());
            upgrade_is_h2c_only(&m)
        };
        assert!(h("h2c"));
        assert!(h("H2C , h2c"));
        assert!(!h("websocket"));
        assert!(!h("websocket, h2c"));
        assert!(!upgrade_is_h2c_only(&HeaderMap::new()));
    }
}

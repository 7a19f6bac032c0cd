//! balancer::strict::{check, upgrade_is_h2c_only}.
//! Input: byte 0 = version (0: 1.0, 1: 1.1, 2: 2), byte 1 = max_headers, then a first line
//! `METHOD URI`, then `name:value` lines.
//! Asserts after `Ok`: at most one Host (exactly one on HTTP/1.1 or when the target names an
//! authority, and then it is that authority without user information); the method is not
//! CONNECT; Transfer-Encoding holds `chunked` at most once and nothing else; the field count
//! was within max_headers before Host was set; the Host left is non-empty, without '@'. upgrade_is_h2c_only implies every Upgrade token
//! is h2c.
#![no_main]
use balancer::strict::{check, upgrade_is_h2c_only};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use rustybalancer_fuzz::header_map;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let version = match data[0] % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let max_headers = usize::from(data[1]);
    let mut lines = data[2..].split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (m, u) = match first.iter().position(|b| *b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (&b"GET"[..], first),
    };
    let Ok(method) = Method::from_bytes(m) else {
        return;
    };
    let Ok(uri) = Uri::try_from(u) else { return };
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = version;
    *req.headers_mut() = header_map(lines);
    let before = req.headers().clone();

    if upgrade_is_h2c_only(req.headers()) {
        let tokens: Vec<&[u8]> = before
            .get_all("upgrade")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        assert!(!tokens.is_empty());
        assert!(tokens.iter().all(|t| t.eq_ignore_ascii_case(b"h2c")));
    }

    if check(&mut req, max_headers).is_err() {
        return;
    }
    assert_ne!(method, Method::CONNECT);
    assert!(before.len() <= max_headers);
    let hosts: Vec<_> = req.headers().get_all("host").iter().collect();
    assert!(hosts.len() <= 1, "{hosts:?}");
    if let Some(auth) = uri.authority() {
        let want = auth
            .as_str()
            .rsplit_once('@')
            .map_or(auth.as_str(), |(_, h)| h);
        assert_eq!(hosts.len(), 1, "{uri} {hosts:?}");
        assert_eq!(hosts[0].as_bytes(), want.as_bytes(), "{uri}");
    } else if version == Version::HTTP_11 {
        assert_eq!(hosts.len(), 1);
    }
    if let Some(h) = hosts.first() {
        // The one Host forwarded is a usable host[:port].
        assert!(
            !h.is_empty() && !h.as_bytes().contains(&b'@'),
            "Host {h:?} from {uri}"
        );
    }
    let codings: Vec<&[u8]> = before
        .get_all("transfer-encoding")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .collect();
    assert!(codings.len() <= 1);
    assert!(codings.iter().all(|c| c.eq_ignore_ascii_case(b"chunked")));
    // Nothing but Host changed.
    for name in before.keys().filter(|n| *n != "host") {
        assert_eq!(
            before.get_all(name).iter().collect::<Vec<_>>(),
            req.headers().get_all(name).iter().collect::<Vec<_>>()
        );
    }
});

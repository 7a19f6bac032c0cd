//! The request router and the route handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use serde_json::json;

use crate::assets;
use crate::respond::{self, Resp};
use crate::App;

/// Upper bound for the `ms` parameter of `/work` and `/cpu`; larger values are capped.
pub const MAX_MS: u64 = 60_000;

/// Largest request body `/echo` accepts; larger bodies get `413`.
pub const MAX_ECHO_BODY: usize = 10 * 1024 * 1024;

/// Routes one request. `remote` is the peer address of the connection.
///
/// Generic over the request body so tests can call it without a socket.
pub async fn router<B>(app: &App, remote: SocketAddr, req: Request<B>) -> Resp
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path();
    if path == "/echo" || path.starts_with("/echo/") {
        return echo(app, remote, req).await;
    }
    let is_known =
        matches!(path, "/" | "/health" | "/work" | "/cpu") || assets::lookup(path).is_some();
    if !is_known {
        return respond::error(StatusCode::NOT_FOUND, &format!("no route for {path}"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = respond::error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed on {path}", req.method()),
        );
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match path {
        "/" => respond::with_cache_control(
            respond::bytes(StatusCode::OK, "text/html; charset=utf-8", app.index_html()),
            "no-cache",
        ),
        "/health" => respond::json(StatusCode::OK, &json!({ "status": "ok" })),
        "/work" => work(app, req.uri().query()).await,
        "/cpu" => cpu(app, req.uri().query()).await,
        _ => match assets::lookup(path) {
            Some(asset) => respond::with_cache_control(
                respond::bytes(
                    StatusCode::OK,
                    asset.content_type,
                    Bytes::from_static(asset.body),
                ),
                "public, max-age=3600",
            ),
            None => respond::error(StatusCode::NOT_FOUND, &format!("no route for {path}")),
        },
    }
}

/// Parses the `ms` query parameter, capped at [`MAX_MS`].
pub fn parse_ms(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .ok_or_else(|| "missing query parameter ms (milliseconds, 0 to 60000)".to_owned())?;
    value.parse::<u64>().map(|ms| ms.min(MAX_MS)).map_err(|_| {
        format!("invalid ms {value:?}: expected a non-negative integer of milliseconds")
    })
}

async fn work(app: &App, query: Option<&str>) -> Resp {
    let ms = match parse_ms(query) {
        Ok(ms) => ms,
        Err(msg) => return respond::error(StatusCode::BAD_REQUEST, &msg),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    respond::json(
        StatusCode::OK,
        &json!({ "slept_ms": ms, "hostname": app.hostname() }),
    )
}

async fn cpu(app: &App, query: Option<&str>) -> Resp {
    let ms = match parse_ms(query) {
        Ok(ms) => ms,
        Err(msg) => return respond::error(StatusCode::BAD_REQUEST, &msg),
    };
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || burn_cpu(Duration::from_millis(ms))).await {
        Ok(iterations) => respond::json(
            StatusCode::OK,
            &json!({
                "burned_ms": ms,
                "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "iterations": iterations,
                "hostname": app.hostname(),
            }),
        ),
        Err(e) => {
            log::error!("cpu burner task failed: {e}");
            respond::error(StatusCode::INTERNAL_SERVER_ERROR, "cpu burner task failed")
        }
    }
}

/// Spins for `duration`, returning how many xorshift rounds it did.
pub fn burn_cpu(duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut iterations: u64 = 0;
    loop {
        for _ in 0..1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
        }
        iterations += 1024;
        std::hint::black_box(state);
        if Instant::now() >= deadline {
            return iterations;
        }
    }
}

/// Echoes the request back as JSON.
///
/// `body` is the body as a string when it is valid UTF-8, otherwise `null` and
/// `body_base64` holds it in standard base64; `body_length` is always its size.
async fn echo<B>(app: &App, remote: SocketAddr, req: Request<B>) -> Resp
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_ECHO_BODY as u64) {
        return too_large(parts.version);
    }
    let body = match Limited::new(body, MAX_ECHO_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large(parts.version)
        }
        Err(e) => {
            log::debug!("echo: reading body from {remote} failed: {e}");
            return respond::error(StatusCode::BAD_REQUEST, "failed to read request body");
        }
    };

    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let (text, base64) = match std::str::from_utf8(&body) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(respond::base64(&body))),
    };
    let mut value = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": version_str(parts.version),
        "headers": headers,
        "body": text,
        "body_length": body.len(),
        "hostname": app.hostname(),
        "remote_addr": remote.to_string(),
    });
    if let (Some(b64), Some(obj)) = (base64, value.as_object_mut()) {
        obj.insert("body_base64".to_owned(), b64.into());
    }
    respond::json(StatusCode::OK, &value)
}

fn too_large(version: Version) -> Resp {
    let mut res = respond::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body exceeds {MAX_ECHO_BODY} bytes"),
    );
    // The rest of the body is not read, so an HTTP/1 connection cannot be reused.
    if version < Version::HTTP_2 {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_parsing() {
        assert_eq!(parse_ms(Some("ms=5")), Ok(5));
        assert_eq!(parse_ms(Some("a=1&ms=0")), Ok(0));
        assert_eq!(parse_ms(Some("ms=999999")), Ok(MAX_MS));
        for bad in [
            None,
            Some(""),
            Some("ms="),
            Some("ms=-1"),
            Some("ms=1.5"),
            Some("ms=x"),
        ] {
            assert!(parse_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn burn_cpu_counts() {
        assert!(burn_cpu(Duration::from_millis(1)) >= 1024);
    }
}

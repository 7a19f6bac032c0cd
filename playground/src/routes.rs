//! The request router and the route handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `GET /work?ms=N`: waits for a slot (see [`App::with_max_concurrency`]), then
/// sleeps N ms. Answers `slept_ms`, `queued_ms` (time spent waiting for the slot)
/// and `hostname`.
async fn work(app: &App, query: Option<&str>) -> Resp {
    let ms = match parse_ms(query) {
        Ok(ms) => ms,
        Err(msg) => return respond::error(StatusCode::BAD_REQUEST, &msg),
    };
    let queued_at = Instant::now();
    // Held until the sleep ends; freed early if the client goes away (the future is dropped).
    let _slot = match app.acquire_slot().await {
        Ok(slot) => slot,
        Err(e) => return slot_unavailable(&e),
    };
    let queued = queued_at.elapsed();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    respond::json(
        StatusCode::OK,
        &json!({
            "slept_ms": ms,
            "queued_ms": millis_f64(queued),
            "hostname": app.hostname(),
        }),
    )
}

/// `GET /cpu?ms=N`: waits for a slot (see [`App::with_max_concurrency`]), then burns
/// N ms of CPU time on a blocking thread ([`burn_cpu`]).
///
/// Answers `burned_ms` (N), `cpu_ms` (thread CPU time actually burned, at least N),
/// `elapsed_ms` (wall time from getting the slot to the end of the burn: larger than
/// `cpu_ms` when the CPU is contended or throttled), `queued_ms` (time spent waiting
/// for the slot), `iterations` and `hostname`.
async fn cpu(app: &App, query: Option<&str>) -> Resp {
    let ms = match parse_ms(query) {
        Ok(ms) => ms,
        Err(msg) => return respond::error(StatusCode::BAD_REQUEST, &msg),
    };
    let queued_at = Instant::now();
    let slot = match app.acquire_slot().await {
        Ok(slot) => slot,
        Err(e) => return slot_unavailable(&e),
    };
    let queued = queued_at.elapsed();
    let started = Instant::now();
    // The slot moves into the burner: if the client goes away mid-burn, the slot
    // stays taken until the burn really ends, as in a worker pool.
    let burner = tokio::task::spawn_blocking(move || {
        let burn = burn_cpu(Duration::from_millis(ms));
        drop(slot);
        burn
    });
    match burner.await {
        Ok(burn) => respond::json(
            StatusCode::OK,
            &json!({
                "burned_ms": ms,
                "cpu_ms": millis_f64(burn.cpu),
                "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "queued_ms": millis_f64(queued),
                "iterations": burn.iterations,
                "hostname": app.hostname(),
            }),
        ),
        Err(e) => {
            log::error!("cpu burner task failed: {e}");
            respond::error(StatusCode::INTERNAL_SERVER_ERROR, "cpu burner task failed")
        }
    }
}

/// The answer when a `/cpu` or `/work` slot cannot be had (the limiter was closed,
/// which does not happen while the app lives).
fn slot_unavailable(e: &tokio::sync::AcquireError) -> Resp {
    log::error!("waiting for a /cpu or /work slot failed: {e}");
    respond::error(StatusCode::SERVICE_UNAVAILABLE, "no slot available")
}

/// `d` in milliseconds, rounded to the microsecond.
fn millis_f64(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// What [`burn_cpu`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burn {
    /// Rounds of xorshift done.
    pub iterations: u64,
    /// CPU time the calling thread spent burning (at least the requested duration);
    /// the wall time spent when the thread CPU clock is unavailable.
    pub cpu: Duration,
    /// `false` if the thread CPU clock failed and wall time was used instead.
    pub thread_clock: bool,
}

/// Spins until the calling thread has used `duration` of CPU time, measured with
/// the thread CPU clock ([`thread_cpu_time`]). Time the thread spends descheduled
/// (other threads on the cores, a CFS quota throttling the container) does not
/// count, so the wall time taken grows with load, like a real CPU-bound service.
///
/// If the thread CPU clock fails, falls back to spinning for `duration` of wall
/// time (logged once per process) and reports that wall time as [`Burn::cpu`].
pub fn burn_cpu(duration: Duration) -> Burn {
    let wall_start = Instant::now();
    let cpu_start = match thread_cpu_time() {
        Ok(t) => Some(t),
        Err(e) => {
            warn_thread_clock_failed(&e);
            None
        }
    };
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut iterations: u64 = 0;
    let mut cpu = Duration::ZERO;
    let mut thread_clock = cpu_start.is_some();
    loop {
        for _ in 0..1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
        }
        iterations += 1024;
        std::hint::black_box(state);
        if let (true, Some(start)) = (thread_clock, cpu_start) {
            match thread_cpu_time() {
                Ok(now) => cpu = now.saturating_sub(start),
                Err(e) => {
                    warn_thread_clock_failed(&e);
                    thread_clock = false;
                }
            }
        }
        if !thread_clock {
            cpu = wall_start.elapsed();
        }
        if cpu >= duration {
            return Burn {
                iterations,
                cpu,
                thread_clock,
            };
        }
    }
}

/// CPU time used so far by the calling thread:
/// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`.
#[cfg(unix)]
pub fn thread_cpu_time() -> std::io::Result<Duration> {
    let mut ts = std::mem::MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: `ts` points to writable memory the size of a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, ts.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain integers, and filled in by the successful call.
    let ts = unsafe { ts.assume_init() };
    let secs = u64::try_from(ts.tv_sec);
    let nanos = u32::try_from(ts.tv_nsec);
    match (secs, nanos) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Duration::new(secs, nanos)),
        _ => Err(std::io::Error::other(format!(
            "CLOCK_THREAD_CPUTIME_ID returned an invalid time {}s {}ns",
            ts.tv_sec, ts.tv_nsec
        ))),
    }
}

/// CPU time used so far by the calling thread: not available on this platform.
#[cfg(not(unix))]
pub fn thread_cpu_time() -> std::io::Result<Duration> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no thread CPU clock on this platform",
    ))
}

/// Logs, once per process, that `/cpu` falls back to wall time.
fn warn_thread_clock_failed(e: &std::io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed ({e}): /cpu burns wall time \
             instead of CPU time"
        );
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
        let burn = burn_cpu(Duration::from_millis(1));
        assert!(burn.iterations >= 1024);
        assert!(burn.cpu >= Duration::from_millis(1));
    }

    #[test]
    fn burn_cpu_uses_thread_cpu_time() {
        let wall = Instant::now();
        let before = thread_cpu_time().expect("thread CPU clock");
        let burn = burn_cpu(Duration::from_millis(20));
        let used = thread_cpu_time().expect("thread CPU clock") - before;
        assert!(burn.thread_clock);
        assert!(burn.cpu >= Duration::from_millis(20), "{burn:?}");
        // The reported CPU time is this thread's, and a thread cannot use more CPU than wall time.
        assert!(used >= burn.cpu, "{used:?} < {burn:?}");
        assert!(wall.elapsed() >= burn.cpu, "{burn:?}");
    }

    #[test]
    fn thread_cpu_time_ignores_sleep() {
        let before = thread_cpu_time().expect("thread CPU clock");
        std::thread::sleep(Duration::from_millis(50));
        let used = thread_cpu_time().expect("thread CPU clock") - before;
        assert!(
            used < Duration::from_millis(25),
            "sleeping used {used:?} of CPU"
        );
    }

    #[test]
    fn millis_are_rounded_to_microseconds() {
        assert_eq!(millis_f64(Duration::from_micros(1_500)), 1.5);
        assert_eq!(millis_f64(Duration::from_nanos(100_123_456)), 100.123);
        assert_eq!(millis_f64(Duration::ZERO), 0.0);
    }
}

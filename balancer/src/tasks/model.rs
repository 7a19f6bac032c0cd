//! Pure pieces of the task system: states, ids, the stored request's header block, the
//! `Prefer` header, retry policy and time stamps. No I/O; unit-tested here.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;
use serde::Serialize;

/// Where a task is in its life (see the state machine in artefacts/tasks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Dead,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Finished for good (until an explicit retry).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length of a task id: 12 hex digits of milliseconds since the epoch, 16 random hex digits.
pub const ID_LEN: usize = 28;

/// A new task id. Ids sort (as strings) by submission time, which the listing relies on.
pub fn new_id(now_ms: u64, rng: &mut impl Rng) -> String {
    format!(
        "{:012x}{:016x}",
        now_ms & 0xffff_ffff_ffff,
        rng.random::<u64>()
    )
}

/// Whether `s` has the shape of a task id (anything else is 404 without asking Redis).
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Submission time encoded in an id.
pub fn id_time_ms(id: &str) -> Option<u64> {
    id.get(..12).and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// Encodes headers as `name: value\r\n` lines: compact, exact (values are bytes), and
/// unambiguous because a header value cannot contain CR or LF.
pub fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reverses [`encode_headers`]; `Err` names the first line that does not parse.
pub fn decode_headers(block: &[u8]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let bad = || format!("bad header line {:?}", String::from_utf8_lossy(line));
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| bad())?;
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        let value = HeaderValue::from_bytes(value).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// What the client asked for in `Prefer` (RFC 7240).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefer {
    pub respond_async: bool,
    /// `wait=N`, seconds.
    pub wait: Option<Duration>,
}

/// Reads every `Prefer` header: comma-separated preferences, names case-insensitive,
/// parameters after `;` ignored, values optionally quoted. Unknown preferences are ignored.
pub fn parse_prefer<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Prefer {
    let mut p = Prefer::default();
    for v in values {
        let Ok(v) = v.to_str() else { continue };
        for pref in v.split(',') {
            let token = pref.split(';').next().unwrap_or_default().trim();
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                p.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                if let Some(secs) = value.and_then(|v| v.parse::<u64>().ok()) {
                    p.wait = Some(Duration::from_secs(secs));
                }
            }
        }
    }
    p
}

/// How one attempt ended, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The backend answered with this status (`Retry-After` if it sent one).
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No connection, a reset, a protocol error or the attempt timed out.
    Transport,
}

/// What becomes of the task after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// A 4xx other than 408 and 429: the request itself is wrong; not retried.
    Failed,
    /// Queued again, to run no earlier than after this delay.
    Retry(Duration),
    /// Retries exhausted.
    Dead,
}

impl Verdict {
    /// The final status, or `None` for a retry.
    pub fn status(self) -> Option<Status> {
        match self {
            Verdict::Succeeded => Some(Status::Succeeded),
            Verdict::Failed => Some(Status::Failed),
            Verdict::Dead => Some(Status::Dead),
            Verdict::Retry(_) => None,
        }
    }
}

/// Back-off limits for retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

/// Whether an answer with `status` is worth another attempt.
pub fn is_retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Decides after attempt number `attempt` (1-based) out of `max_attempts`. Retries use
/// exponential back-off with full jitter, `uniform(0, min(max, base · 2^(attempt−1)))`, and
/// never come sooner than the backend's `Retry-After` (itself capped at `max`).
pub fn verdict(
    outcome: Attempt,
    attempt: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Verdict {
    let retry_after = match outcome {
        Attempt::Response { status, .. } if status < 400 => return Verdict::Succeeded,
        Attempt::Response { status, .. } if !is_retryable_status(status) => return Verdict::Failed,
        Attempt::Response { retry_after, .. } => retry_after,
        Attempt::Transport => None,
    };
    if attempt >= max_attempts {
        return Verdict::Dead;
    }
    let ceiling = policy
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(policy.max);
    let jittered = ceiling.mul_f64(rng.random_range(0.0..=1.0));
    let floor = retry_after.unwrap_or_default().min(policy.max);
    Verdict::Retry(jittered.max(floor))
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(v: &HeaderValue, now: std::time::SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2026-12-01T23:30:35.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Fingerprint of a submission for `Idempotency-Key`: method, path and body (headers such
/// as `Date` or `X-Forwarded-For` differ between honest retries, so they are left out).
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    for part in [method.as_bytes(), b"\n", path.as_bytes(), b"\n", body] {
        h.update(part);
    }
    h.digest().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("done"), None);
        let terminal: Vec<bool> = Status::ALL.iter().map(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [false, false, true, true, true, true]);
    }

    #[test]
    fn ids_sort_by_time_and_carry_it() {
        let mut rng = SmallRng::seed_from_u64(7);
        let a = new_id(1_764_631_835_123, &mut rng);
        let b = new_id(1_764_631_835_124, &mut rng);
        assert!(is_id(&a) && is_id(&b));
        assert!(a < b);
        assert_eq!(id_time_ms(&a), Some(1_764_631_835_123));
        assert!(!is_id("../../etc/passwd"));
        assert!(!is_id(&a.to_uppercase()));
        assert!(!is_id(&a[1..]));
    }

    #[test]
    fn header_blocks_round_trip_bytes() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.insert("x-bin", HeaderValue::from_bytes(b"caf\xe9: ok").unwrap());
        h.insert("empty", HeaderValue::from_static(""));
        let back = decode_headers(&encode_headers(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode_headers(b"no colon here\r\n").is_err());
        assert!(decode_headers(b"bad name: x\r\n").is_err());
    }

    #[test]
    fn prefer_is_parsed_as_rfc_7240_says() {
        let p = |vals: &[&'static str]| {
            let hv: Vec<HeaderValue> = vals.iter().map(|v| HeaderValue::from_static(v)).collect();
            parse_prefer(hv.iter())
        };
        assert_eq!(p(&[]), Prefer::default());
        assert!(p(&["respond-async"]).respond_async);
        assert!(p(&["Respond-Async ; foo=bar"]).respond_async);
        let both = p(&["handling=lenient, respond-async", "wait=\"10\""]);
        assert!(both.respond_async);
        assert_eq!(both.wait, Some(Duration::from_secs(10)));
        assert_eq!(p(&["respond-async, wait=soon"]).wait, None);
        assert!(!p(&["respond-asynchronously"]).respond_async);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }

    #[test]
    fn verdicts_by_outcome() {
        let mut rng = SmallRng::seed_from_u64(1);
        let resp = |status| Attempt::Response {
            status,
            retry_after: None,
        };
        let v = |o, n| verdict(o, n, 5, &policy(), &mut SmallRng::seed_from_u64(n as u64));
        for (outcome, want) in [
            (resp(200), "succeeded"),
            (resp(204), "succeeded"),
            (resp(302), "succeeded"),
            (resp(400), "failed"),
            (resp(404), "failed"),
            (resp(422), "failed"),
            (resp(408), "retry"),
            (resp(429), "retry"),
            (resp(500), "retry"),
            (resp(503), "retry"),
            (Attempt::Transport, "retry"),
        ] {
            let got = match v(outcome, 1) {
                Verdict::Succeeded => "succeeded",
                Verdict::Failed => "failed",
                Verdict::Retry(_) => "retry",
                Verdict::Dead => "dead",
            };
            assert_eq!(got, want, "{outcome:?}");
        }
        assert_eq!(v(resp(503), 5), Verdict::Dead);
        assert_eq!(v(Attempt::Transport, 5), Verdict::Dead);
        assert_eq!(v(resp(404), 5), Verdict::Failed, "not retried, so not dead");
        assert_eq!(
            verdict(resp(200), 9, 5, &policy(), &mut rng),
            Verdict::Succeeded
        );
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_honours_retry_after() {
        let mut rng = SmallRng::seed_from_u64(3);
        let delays = |attempt: u32, rng: &mut SmallRng| -> Vec<Duration> {
            (0..2000)
                .map(
                    |_| match verdict(Attempt::Transport, attempt, 99, &policy(), rng) {
                        Verdict::Retry(d) => d,
                        other => panic!("{other:?}"),
                    },
                )
                .collect()
        };
        for (attempt, ceiling) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 10.0),
            (30, 10.0),
        ] {
            let ds = delays(attempt, &mut rng);
            let max = ds.iter().max().unwrap().as_secs_f64();
            let min = ds.iter().min().unwrap().as_secs_f64();
            let mean = ds.iter().map(Duration::as_secs_f64).sum::<f64>() / ds.len() as f64;
            assert!(
                max <= ceiling && max > ceiling * 0.95,
                "attempt {attempt}: max {max}"
            );
            assert!(min < ceiling * 0.05, "attempt {attempt}: min {min}");
            assert!(
                (mean - ceiling / 2.0).abs() < ceiling * 0.05,
                "attempt {attempt}: mean {mean}"
            );
        }
        let with = |secs| Attempt::Response {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        for _ in 0..100 {
            let Verdict::Retry(d) = verdict(with(7), 1, 5, &policy(), &mut rng) else {
                panic!()
            };
            assert!(d >= Duration::from_secs(7));
            let Verdict::Retry(d) = verdict(with(3600), 1, 5, &policy(), &mut rng) else {
                panic!()
            };
            assert_eq!(d, Duration::from_secs(10), "capped at TASK_RETRY_MAX");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let v = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(v("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            v("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(v("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(v("soon"), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_631_835_123), "2025-12-01T23:30:35.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn fingerprints_cover_method_path_and_body() {
        let f = fingerprint("POST", "/a", b"x");
        assert_eq!(f, fingerprint("POST", "/a", b"x"));
        assert_ne!(f, fingerprint("PUT", "/a", b"x"));
        assert_ne!(f, fingerprint("POST", "/a?b", b"x"));
        assert_ne!(f, fingerprint("POST", "/a", b"y"));
        assert_eq!(f.len(), 40);
    }
}

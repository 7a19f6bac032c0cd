//! The JSON envelope of `POST /_tasks`, and the checks both kinds of submission share.
//!
//! ```json
//! {"method": "POST", "path": "/report?month=11", "headers": {"content-type": "text/csv"},
//!  "body": "a,b\n1,2", "max_attempts": 3, "timeout": "2m", "delay": 30,
//!  "callback_url": "http://hooks.internal/done"}
//! ```
//! `body` is text; `body_base64` carries bytes instead (at most one of the two). `headers`
//! is an object whose values are strings or arrays of strings. Durations are seconds (a
//! number) or strings such as `"500ms"`, `"30s"`, `"2m"`. Every problem is reported with the
//! name of the field.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Method;
use serde_json::Value;

/// Longest `delay` accepted.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 86_400);
/// Longest per-task `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// A field that is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What the envelope asks for. Headers are end-to-end only (hop-by-hop ones are removed by
/// the caller, as for header submissions).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub max_attempts: Option<u32>,
    pub timeout: Option<Duration>,
    pub delay: Option<Duration>,
    pub callback_url: Option<String>,
}

/// Parses and checks an envelope.
pub fn parse(json: &[u8]) -> Result<Envelope, Invalid> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| invalid("(body)", format!("not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(invalid("(body)", "expected a JSON object"));
    };
    const KNOWN: [&str; 9] = [
        "method",
        "path",
        "headers",
        "body",
        "body_base64",
        "max_attempts",
        "timeout",
        "delay",
        "callback_url",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(
            unknown.as_str(),
            format!("unknown field (known: {})", KNOWN.join(", ")),
        ));
    }
    let method = match map.get("method") {
        None => Method::POST,
        Some(Value::String(m)) => Method::from_bytes(m.as_bytes())
            .map_err(|_| invalid("method", format!("{m:?} is not an HTTP method")))?,
        Some(_) => return Err(invalid("method", "expected a string such as \"POST\"")),
    };
    if method == Method::CONNECT {
        return Err(invalid("method", "CONNECT cannot be a task"));
    }
    let path = match map.get("path") {
        Some(Value::String(p)) if p.starts_with('/') => PathAndQuery::try_from(p.as_str())
            .map_err(|e| invalid("path", format!("{p:?} is not a valid path: {e}")))?,
        Some(Value::String(p)) => {
            return Err(invalid("path", format!("{p:?} must start with '/'")))
        }
        Some(_) => return Err(invalid("path", "expected a string such as \"/reports\"")),
        None => return Err(invalid("path", "required")),
    };
    let headers = match map.get("headers") {
        None | Some(Value::Null) => HeaderMap::new(),
        Some(Value::Object(h)) => {
            let mut out = HeaderMap::new();
            for (name, value) in h {
                let field = format!("headers.{name}");
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(&field, "not a valid header name"))?;
                let values: Vec<&Value> = match value {
                    Value::Array(vs) => vs.iter().collect(),
                    other => vec![other],
                };
                for v in values {
                    let Value::String(s) = v else {
                        return Err(invalid(&field, "expected a string or an array of strings"));
                    };
                    let hv = HeaderValue::from_str(s)
                        .map_err(|_| invalid(&field, "not a valid header value"))?;
                    out.append(n.clone(), hv);
                }
            }
            out
        }
        Some(_) => return Err(invalid("headers", "expected an object of name: value")),
    };
    let body = match (map.get("body"), map.get("body_base64")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "body_base64",
                "give either body or body_base64, not both",
            ))
        }
        (Some(Value::String(s)), None) => Bytes::from(s.clone().into_bytes()),
        (Some(Value::Null) | None, None) => Bytes::new(),
        (Some(_), None) => {
            return Err(invalid(
                "body",
                "expected a string (use body_base64 for bytes)",
            ))
        }
        (None, Some(Value::String(s))) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(|e| invalid("body_base64", format!("not valid base64: {e}")))?,
        (None, Some(_)) => return Err(invalid("body_base64", "expected a base64 string")),
    };
    let max_attempts = match map.get("max_attempts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=u64::from(MAX_ATTEMPTS)).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "max_attempts",
                        format!("expected a whole number from 1 to {MAX_ATTEMPTS}"),
                    )
                })?,
        ),
    };
    let timeout = duration_field(map.get("timeout"), "timeout", MAX_TIMEOUT)?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid("timeout", "must be greater than zero"));
    }
    let delay = duration_field(map.get("delay"), "delay", MAX_DELAY)?;
    let callback_url = match map.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("callback_url", "expected a string")),
    };
    Ok(Envelope {
        method,
        path,
        headers,
        body,
        max_attempts,
        timeout,
        delay,
        callback_url,
    })
}

/// A duration given as seconds (number) or text (`"30s"`), at most `max`.
fn duration_field(
    v: Option<&Value>,
    field: &str,
    max: Duration,
) -> Result<Option<Duration>, Invalid> {
    let d = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .and_then(|x| Duration::try_from_secs_f64(x).ok()),
        Some(Value::String(s)) => protocol::units::parse_duration(s),
        Some(_) => None,
    };
    let d = d.ok_or_else(|| {
        invalid(
            field,
            "expected seconds (a number) or a duration such as \"30s\"",
        )
    })?;
    if d > max {
        return Err(invalid(field, format!("at most {}s", max.as_secs())));
    }
    Ok(Some(d))
}

/// Parses `X-Task-Delay` (`30`, `30s`, `2m`, …).
pub fn parse_delay_header(v: &HeaderValue) -> Result<Duration, Invalid> {
    let field = "X-Task-Delay";
    let d = v
        .to_str()
        .ok()
        .and_then(protocol::units::parse_duration)
        .ok_or_else(|| invalid(field, "expected a duration such as 30, 30s or 2m"))?;
    if d > MAX_DELAY {
        return Err(invalid(field, format!("at most {}s", MAX_DELAY.as_secs())));
    }
    Ok(d)
}

/// Checks a callback URL against the allow-list: `http://host[:port]/…`, host (or
/// `host:port`) listed. Returns the `host:port` to connect to. `field` names where the URL
/// came from in the error (`X-Callback-Url` or `callback_url`).
pub fn check_callback(
    url: &str,
    allow: &[String],
    field: &str,
) -> Result<(String, PathAndQuery), Invalid> {
    if allow.is_empty() {
        return Err(invalid(
            field,
            "callbacks are disabled (TASK_CALLBACK_ALLOW is empty)",
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| invalid(field, format!("{url:?} is not a URL")))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(field, "only http:// callbacks are supported"));
    }
    let Some(auth) = uri.authority() else {
        return Err(invalid(field, "the URL has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(invalid(field, "credentials in the URL are not allowed"));
    }
    let host = auth.host().to_ascii_lowercase();
    let port = auth.port_u16().unwrap_or(80);
    let with_port = format!("{host}:{port}");
    if !allow.iter().any(|a| *a == host || *a == with_port) {
        return Err(invalid(
            field,
            format!("{host} is not in TASK_CALLBACK_ALLOW"),
        ));
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok((with_port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_full_envelope() {
        let e = parse(
            br#"{"method":"PUT","path":"/r?x=1","headers":{"X-A":["1","2"],"content-type":"text/plain"},
                "body":"hi","max_attempts":3,"timeout":"2m","delay":1.5,"callback_url":"http://h/cb"}"#,
        )
        .unwrap();
        assert_eq!(e.method, Method::PUT);
        assert_eq!(e.path.as_str(), "/r?x=1");
        assert_eq!(e.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(e.body.as_ref(), b"hi");
        assert_eq!(e.max_attempts, Some(3));
        assert_eq!(e.timeout, Some(Duration::from_secs(120)));
        assert_eq!(e.delay, Some(Duration::from_millis(1500)));
        assert_eq!(e.callback_url.as_deref(), Some("http://h/cb"));
        let minimal = parse(br#"{"path":"/","body_base64":"AAH/"}"#).unwrap();
        assert_eq!(minimal.method, Method::POST);
        assert_eq!(minimal.body.as_ref(), [0u8, 1, 255]);
    }

    #[test]
    fn every_problem_names_its_field() {
        for (json, field) in [
            ("nope", "(body)"),
            ("[1]", "(body)"),
            (r#"{}"#, "path"),
            (r#"{"path":"x"}"#, "path"),
            (r#"{"path":7}"#, "path"),
            (r#"{"path":"/","method":"GET /"}"#, "method"),
            (r#"{"path":"/","method":"CONNECT"}"#, "method"),
            (r#"{"path":"/","headers":[]}"#, "headers"),
            (
                r#"{"path":"/","headers":{"bad name":"x"}}"#,
                "headers.bad name",
            ),
            (r#"{"path":"/","headers":{"x":1}}"#, "headers.x"),
            (
                r#"{"path":"/","body":"a","body_base64":"YQ=="}"#,
                "body_base64",
            ),
            (r#"{"path":"/","body":{"a":1}}"#, "body"),
            (r#"{"path":"/","body_base64":"%%%"}"#, "body_base64"),
            (r#"{"path":"/","max_attempts":0}"#, "max_attempts"),
            (r#"{"path":"/","max_attempts":"3"}"#, "max_attempts"),
            (r#"{"path":"/","timeout":0}"#, "timeout"),
            (r#"{"path":"/","timeout":"forever"}"#, "timeout"),
            (r#"{"path":"/","delay":-1}"#, "delay"),
            (r#"{"path":"/","delay":"400d"}"#, "delay"),
            (r#"{"path":"/","colour":"red"}"#, "colour"),
        ] {
            assert_eq!(err(json), field, "{json}");
        }
    }

    #[test]
    fn delay_header() {
        assert_eq!(
            parse_delay_header(&HeaderValue::from_static("30s")),
            Ok(Duration::from_secs(30))
        );
        assert!(parse_delay_header(&HeaderValue::from_static("later")).is_err());
        assert!(parse_delay_header(&HeaderValue::from_static("9999h")).is_err());
    }

    #[test]
    fn callbacks_only_to_allowed_hosts() {
        let allow = vec!["hooks.internal".to_string(), "10.0.0.1:8080".to_string()];
        let (addr, path) = check_callback("http://Hooks.internal/done?x=1", &allow, "f").unwrap();
        assert_eq!(
            (addr.as_str(), path.as_str()),
            ("hooks.internal:80", "/done?x=1")
        );
        assert!(check_callback("http://10.0.0.1:8080/", &allow, "X-Callback-Url").is_ok());
        assert!(check_callback("http://10.0.0.1:9090/", &allow, "X-Callback-Url").is_err());
        assert!(check_callback("http://evil.example/", &allow, "X-Callback-Url").is_err());
        assert!(check_callback("https://hooks.internal/", &allow, "X-Callback-Url").is_err());
        assert!(check_callback("http://u:p@hooks.internal/", &allow, "X-Callback-Url").is_err());
        assert!(check_callback("not a url", &allow, "X-Callback-Url").is_err());
        assert!(check_callback("http://hooks.internal/", &[], "X-Callback-Url").is_err());
        let e = check_callback("http://evil.example/", &allow, "callback_url").unwrap_err();
        assert_eq!(e.field, "callback_url");
    }
}

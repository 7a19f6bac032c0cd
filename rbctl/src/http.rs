//! The HTTP side: one pooled hyper client for the whole process, base URLs of the two
//! services, timeouts, and the mapping of transport failures and error statuses to
//! [`Error`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use crate::error::{one_line, Error};

/// Time to establish a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole exchange: request sent, response and body read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest part of an error body quoted in a message.
const SNIPPET: usize = 200;

/// Where a service lives: `http://host:port` plus an optional path prefix.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `agent` or `balancer`, for messages.
    pub service: &'static str,
    /// Scheme, authority and path prefix, no trailing `/`.
    base: String,
    /// Sent as `Authorization: Bearer …` when set (agent only).
    token: Option<String>,
}

impl Endpoint {
    /// Parses a base URL; `host:port` without a scheme means `http://host:port`.
    pub fn parse(
        service: &'static str,
        raw: &str,
        token: Option<String>,
    ) -> Result<Endpoint, Error> {
        let raw = raw.trim();
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let bad = |why: &str| Error::Usage(format!("bad {service} URL {raw:?}: {why}"));
        let uri: Uri = with_scheme.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other} is not supported, use http://"
                )))
            }
            None => return Err(bad("expected http://host:port")),
        }
        let Some(authority) = uri.authority() else {
            return Err(bad("expected http://host:port"));
        };
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(Endpoint {
            service,
            base: format!("http://{authority}{prefix}"),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The base URL as given (normalised).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base + path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A request to send.
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Outgoing {
    pub fn new(method: Method, path: impl Into<String>) -> Outgoing {
        Outgoing {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON body with its content type.
    pub fn json(mut self, value: &Value) -> Outgoing {
        self.body = Bytes::from(value.to_string());
        self.headers
            .push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self
    }

    /// `GET /path` as it appears in messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, or a protocol error naming the request.
    pub fn json(&self, service: &str, request: &str) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Protocol(format!(
                "the {service} answered {request} with HTTP {} and a body that is not JSON ({e}): {}",
                self.status.as_u16(),
                snippet(&self.body)
            ))
        })
    }
}

/// One pooled client, cloned cheaply.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Http { client }
    }

    /// Sends `out` to `ep`; any status is a success here (only transport failures fail).
    pub async fn send(&self, ep: &Endpoint, out: Outgoing) -> Result<Reply, Error> {
        let request = out.describe();
        let unreachable = |detail: String| Error::Unreachable {
            service: ep.service,
            url: ep.base().to_owned(),
            request: request.clone(),
            detail,
        };
        let url = ep.url(&out.path);
        let mut builder = Request::builder().method(out.method).uri(&url);
        for (name, value) in out.headers {
            builder = builder.header(name, value);
        }
        if let Some(token) = &ep.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = builder.body(Full::new(out.body)).map_err(|e| {
            Error::Usage(format!("cannot build the request {request} to {url}: {e}"))
        })?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(describe_transport(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| unreachable(format!("the response broke off: {}", chain(&e))))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(unreachable(format!(
                "no complete answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Sends `out`; a 4xx/5xx answer becomes [`Error::Rejected`].
    pub async fn send_ok(&self, ep: &Endpoint, out: Outgoing) -> Result<Reply, Error> {
        let request = out.describe();
        let reply = self.send(ep, out).await?;
        check(ep.service, &request, reply)
    }

    /// Sends `out` and parses a successful answer as JSON.
    pub async fn json(&self, ep: &Endpoint, out: Outgoing) -> Result<Value, Error> {
        let request = out.describe();
        let reply = self.send_ok(ep, out).await?;
        reply.json(ep.service, &request)
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, ep: &Endpoint, path: &str) -> Result<Value, Error> {
        self.json(ep, Outgoing::new(Method::GET, path)).await
    }
}

/// A 4xx/5xx answer as [`Error::Rejected`] (with the JSON `error`/`message` when present).
pub fn check(service: &'static str, request: &str, reply: Reply) -> Result<Reply, Error> {
    if !(reply.status.is_client_error() || reply.status.is_server_error()) {
        return Ok(reply);
    }
    Err(rejection(service, request, &reply))
}

/// The error for an answer we do not accept.
pub fn rejection(service: &'static str, request: &str, reply: &Reply) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (code, message) = match (field("error"), field("message")) {
        (code @ Some(_), Some(message)) => (code, message),
        (code @ Some(_), None) => (code, String::new()),
        _ => (None, snippet(&reply.body)),
    };
    Error::Rejected {
        service,
        request: request.to_owned(),
        status: reply.status.as_u16(),
        code,
        message,
    }
}

/// The start of a body, on one line, for messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = one_line(&text);
    if line.chars().count() > SNIPPET {
        let cut: String = line.chars().take(SNIPPET).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// Why a request did not get an answer, in words: the innermost causes of the error chain
/// (hyper-util's outer `client error (Connect)` says little).
fn describe_transport(e: &hyper_util::client::legacy::Error) -> String {
    let mut io_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = s.source();
    }
    let text = chain(e);
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(std::io::ErrorKind::TimedOut) => {
            format!("no connection within {}s", CONNECT_TIMEOUT.as_secs())
        }
        _ if e.is_connect() => format!("cannot connect: {text}"),
        _ => text,
    }
}

/// The messages of an error's causes, outermost omitted when it has causes, joined by `: `.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalise_and_refuse_what_they_cannot_use() {
        let ep = Endpoint::parse("agent", "http://localhost:2550/", None).unwrap();
        assert_eq!(ep.url("/health"), "http://localhost:2550/health");
        let ep = Endpoint::parse("agent", "127.0.0.1:2550", Some(String::new())).unwrap();
        assert_eq!(ep.base(), "http://127.0.0.1:2550");
        assert!(ep.token.is_none(), "an empty token is no token");
        let ep = Endpoint::parse("balancer", "http://lb.internal/rb/", None).unwrap();
        assert_eq!(ep.url("/_tasks"), "http://lb.internal/rb/_tasks");
        for bad in ["https://x:1", "http://", "http://x:1/?a=b", "ht tp://x"] {
            let e = Endpoint::parse("agent", bad, None).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad}: {e}");
        }
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn error_statuses_become_rejections_with_the_json_message() {
        assert!(check("agent", "GET /stats", reply(200, "[]")).is_ok());
        assert!(check("agent", "GET /x", reply(302, "")).is_ok());
        let e = check(
            "agent",
            "POST /sundown",
            reply(409, r#"{"error":"conflict","message":"already SUNDOWN"}"#),
        )
        .unwrap_err();
        assert_eq!(
            e.one_line(),
            "the agent refused POST /sundown: HTTP 409 conflict: already SUNDOWN"
        );
        let e = check(
            "balancer",
            "GET /_tasks",
            reply(502, "<html>\nbad\ngateway</html>"),
        )
        .unwrap_err();
        assert_eq!(
            e.one_line(),
            "the balancer refused GET /_tasks: HTTP 502: <html> bad gateway</html>"
        );
        let long = "x".repeat(500);
        assert_eq!(snippet(long.as_bytes()).chars().count(), SNIPPET + 1);
    }
}

//! The dashboard's view of task submissions, read through a balancer's task API
//! (`BALANCER_URL`): the agent never reads the task keys in Redis itself, so what the
//! dashboard shows is exactly what clients of the task API see.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// A balancer call taking longer than this is reported as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer relayed (a stored task result is at most `TASK_MAX_RESULT_BYTES`, 8 MiB
/// by default).
const MAX_ANSWER: usize = 16 << 20;
/// Tasks shown in the overview.
const LATEST: usize = 20;

/// A balancer's task API.
#[derive(Clone)]
pub struct TaskApi {
    /// `http://host:port`, no trailing slash.
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// An answer from the balancer, as received.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl TaskApi {
    /// `base` as validated by the configuration (`http://host[:port]`).
    pub fn new(base: &str) -> TaskApi {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        connector.set_nodelay(true);
        TaskApi {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET {base}{path}`; `Err` says why there is no answer.
    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("bad task API address {}{path}: {e}", self.base))?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::USER_AGENT, "rustybalancer-agent")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("balancer {} unreachable: {e}", self.base))?;
            let status = resp.status();
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {}: {e}", self.base))?
                .to_bytes();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("balancer {} did not answer within {TIMEOUT:?}", self.base))?
    }

    /// The `GET /tasks/overview` document: queue figures and the latest tasks, or
    /// `enabled: false` with the reason.
    pub async fn overview(&self) -> Value {
        let listing = format!("/_tasks?limit={LATEST}");
        let (stats, latest) = tokio::join!(self.get_json("/_tasks/stats"), self.get_json(&listing));
        match (stats, latest) {
            (Ok(stats), Ok(page)) => json!({
                "enabled": true,
                "balancer": self.base,
                "stats": stats,
                "latest": page.get("tasks").cloned().unwrap_or_else(|| json!([])),
            }),
            (Err(reason), _) | (_, Err(reason)) => disabled(&reason),
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value, String> {
        let answer = self.get(path).await?;
        let value: Value = serde_json::from_slice(&answer.body).map_err(|_| {
            format!(
                "the balancer answered {path} with {} and no JSON",
                answer.status
            )
        })?;
        if answer.status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            Err(format!(
                "the balancer's task API answered {}: {message}",
                answer.status
            ))
        }
    }
}

/// The overview when tasks cannot be shown.
pub fn disabled(reason: &str) -> Value {
    json!({ "enabled": false, "reason": reason })
}

/// Relays an answer of the balancer to the dashboard: status, content type and body.
pub fn relay(answer: Answer) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(answer.body));
    *r.status_mut() = answer.status;
    if let Some(ct) = answer.content_type {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// `tasks/{id}` or `tasks/{id}/result` of the agent's API → the balancer's path, if `rest`
/// (what follows `/tasks/`) is one of those with a plausible id.
pub fn task_path(rest: &str) -> Option<String> {
    let (id, tail) = match rest.split_once('/') {
        Some((id, "result")) => (id, "/result"),
        Some(_) => return None,
        None => (rest, ""),
    };
    let plausible = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plausible.then(|| format!("/_tasks/{id}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_status_and_result_paths_of_plausible_ids_are_relayed() {
        assert_eq!(task_path("01J9ZK").as_deref(), Some("/_tasks/01J9ZK"));
        assert_eq!(
            task_path("01J9ZK/result").as_deref(),
            Some("/_tasks/01J9ZK/result")
        );
        for bad in [
            "",
            "a/b",
            "a/result/x",
            "../x",
            "a%2F",
            "a?b",
            &"x".repeat(65),
        ] {
            assert_eq!(task_path(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_balancer_is_reported_not_hidden() {
        // A port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let api = TaskApi::new(&format!("http://127.0.0.1:{port}/"));
        assert_eq!(api.base(), format!("http://127.0.0.1:{port}"));
        let doc = api.overview().await;
        assert_eq!(doc["enabled"], false);
        let reason = doc["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("unreachable"), "{reason}");
    }
}

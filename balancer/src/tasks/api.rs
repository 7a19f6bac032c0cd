//! The HTTP side of tasks: `Prefer: respond-async` on any request, and the reserved
//! prefix (`TASK_PATH_PREFIX`, default `/_tasks`):
//!
//! | request | answer |
//! |---|---|
//! | any request with `Prefer: respond-async` | 202 + `Location` (or the result, with `wait=N`) |
//! | `POST /_tasks` (JSON envelope) | 202 + `Location` |
//! | `GET /_tasks?status=&limit=&cursor=` | a page of tasks, newest first |
//! | `GET /_tasks/stats` | queue figures and the number of tasks per status |
//! | `GET /_tasks/{id}` | the task's status |
//! | `GET /_tasks/{id}/result` | the stored response, replayed |
//! | `DELETE /_tasks/{id}` | cancel a queued task |
//! | `POST /_tasks/{id}/retry` | queue a dead or failed task again |
//!
//! Errors are mapped to status codes in one place, [`ApiError::response`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use super::envelope::{self, check_callback, invalid, Invalid};
use super::model::{self, decode_headers, encode_headers, fingerprint, is_id, new_id, Status};
use super::query::TaskView;
use super::store::{Change, Store, StoreError, Submitted};
use super::{
    now_ms, Tasks, IDEMPOTENCY_KEY, PREFERENCE_APPLIED, X_CALLBACK_URL, X_TASK_DELAY, X_TASK_ID,
    X_TASK_RESULT_TRUNCATED,
};
use crate::body::ResponseBody;
use crate::dispatch::Outgoing;
use crate::error::json_response;
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::request_body::ClientBody;

/// `Retry-After` on 503 while Redis is unavailable, and on 202 for a task due now.
const RETRY_AFTER_SECS: u64 = 1;
/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;
/// Page size of the listing: default and maximum.
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 1000;

/// Everything that can go wrong, mapped to HTTP in [`ApiError::response`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("task submissions are disabled: set REDIS_HOST (and REDIS_PORT) to enable them")]
    Disabled,
    #[error("the task store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(Invalid),
    #[error("request body exceeds TASK_MAX_BODY_BYTES ({0} bytes)")]
    TooLarge(u64),
    #[error("no such task")]
    NotFound,
    #[error("method not allowed")]
    Method(&'static str),
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        task: Option<Box<TaskView>>,
    },
    #[error("Idempotency-Key {0:?} was used for a different request")]
    KeyReused(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::Invalid(e)
    }
}

impl ApiError {
    pub fn response(&self) -> Response<ResponseBody> {
        let (status, code) = match self {
            ApiError::Disabled => (StatusCode::SERVICE_UNAVAILABLE, "tasks_disabled"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "task_store_unavailable"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_task"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Method(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            ApiError::KeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut body = json!({"error": code, "message": self.to_string()});
        match self {
            ApiError::Invalid(i) => {
                body["field"] = json!(i.field);
                body["message"] = json!(i.message);
            }
            ApiError::Conflict { task, .. } => body["task"] = json!(task),
            _ => {}
        }
        let mut resp = json_response(status, &body);
        let h = resp.headers_mut();
        match self {
            ApiError::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::Method(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooLarge(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// A task about to be stored.
struct NewTask {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    max_attempts: Option<u32>,
    timeout: Option<Duration>,
    delay: Option<Duration>,
    callback: Option<String>,
    /// Where the callback URL came from, for error messages.
    callback_field: &'static str,
    idempotency_key: Option<String>,
}

/// The `Idempotency-Key` (a structured-field string, quotes optional), checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Invalid> {
    let Some(v) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))?;
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    if s.is_empty()
        || s.len() > MAX_KEY_LEN
        || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

/// Reads a whole body of at most `limit` bytes.
async fn read_body(body: ClientBody, headers: &HeaderMap, limit: u64) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::Invalid(invalid(
            "(body)",
            format!("could not read the request body: {e}"),
        ))),
    }
}

impl Tasks {
    fn store(&self) -> Result<&Store, ApiError> {
        self.store.as_ref().ok_or(ApiError::Disabled)
    }

    /// Answers a request [`Tasks::claims`]: a submission or a task API call.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let prefix = self.cfg.path_prefix.as_str();
        let result = match req.uri().path().strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let rest = rest.trim_start_matches('/').to_string();
                self.route(req, client, &rest).await
            }
            _ => self.submit_request(req, client).await,
        };
        match result {
            Ok(resp) => resp,
            Err(e) => {
                if let ApiError::Unavailable(why) = &e {
                    log::warn!("tasks: answering 503: {why}");
                }
                if let ApiError::Internal(why) = &e {
                    log::error!("tasks: answering 500: {why}");
                }
                e.response()
            }
        }
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
        rest: &str,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [""] if read => self.list(req.uri().query().unwrap_or("")).await,
            [""] if req.method() == Method::POST => self.submit_envelope(req, client).await,
            [""] => Err(ApiError::Method("GET, HEAD, POST")),
            ["stats"] if read => self.stats().await,
            ["stats"] => Err(ApiError::Method("GET, HEAD")),
            [id, ..] if !is_id(id) => Err(ApiError::NotFound),
            [id] if read => match self.store()?.view(id).await? {
                Some(view) => Ok(json_response(StatusCode::OK, &view)),
                None => Err(ApiError::NotFound),
            },
            [id] if req.method() == Method::DELETE => self.cancel(id).await,
            [_] => Err(ApiError::Method("GET, HEAD, DELETE")),
            [id, "result"] if read => self.result(id).await,
            [_, "result"] => Err(ApiError::Method("GET, HEAD")),
            [id, "retry"] if req.method() == Method::POST => self.retry(id).await,
            [_, "retry"] => Err(ApiError::Method("POST")),
            _ => Err(ApiError::NotFound),
        }
    }

    /// `Prefer: respond-async` on an ordinary request.
    async fn submit_request(
        self: &Arc<Self>,
        mut req: Request<ClientBody>,
        client: SocketAddr,
    ) -> Result<Response<ResponseBody>, ApiError> {
        self.store()?;
        let prefer = model::parse_prefer(req.headers().get_all("prefer").iter());
        let mut out = Outgoing::from_client(&mut req, client, false);
        out.finish();
        let mut headers = out.headers;
        let delay = headers
            .get(&X_TASK_DELAY)
            .map(envelope::parse_delay_header)
            .transpose()?;
        let callback = match headers.get(&X_CALLBACK_URL) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| invalid("X-Callback-Url", "must be visible ASCII"))?
                    .to_string(),
            ),
            None => None,
        };
        let idempotency_key = idempotency_key(&headers)?;
        for h in ["prefer", "x-task-delay", "x-callback-url"] {
            headers.remove(h);
        }
        let (parts, body) = req.into_parts();
        let body = read_body(body, &parts.headers, self.cfg.max_body_bytes).await?;
        let task = NewTask {
            method: out.method,
            path: out.path,
            headers,
            body,
            max_attempts: None,
            timeout: None,
            delay,
            callback,
            callback_field: "X-Callback-Url",
            idempotency_key,
        };
        let mut resp = self.submit(task, prefer.wait).await?;
        // Only the 202 applied the preference; a `wait=` answer is the result itself.
        if resp.status() == StatusCode::ACCEPTED {
            resp.headers_mut().insert(
                PREFERENCE_APPLIED.clone(),
                HeaderValue::from_static("respond-async"),
            );
        }
        Ok(resp)
    }

    /// `POST /_tasks` with a JSON envelope.
    async fn submit_envelope(
        self: &Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
    ) -> Result<Response<ResponseBody>, ApiError> {
        self.store()?;
        let prefer = model::parse_prefer(req.headers().get_all("prefer").iter());
        let idempotency_key = idempotency_key(req.headers())?;
        let host = req.headers().get(header::HOST).cloned();
        // Base64 makes bodies 4/3 larger; leave room for the rest of the envelope too.
        let limit = self.cfg.max_body_bytes.saturating_mul(4) / 3 + (64 << 10);
        let (parts, body) = req.into_parts();
        let json = match read_body(body, &parts.headers, limit).await {
            Err(ApiError::TooLarge(_)) => return Err(ApiError::TooLarge(self.cfg.max_body_bytes)),
            other => other?,
        };
        let env = envelope::parse(&json)?;
        if env.body.len() as u64 > self.cfg.max_body_bytes {
            return Err(ApiError::TooLarge(self.cfg.max_body_bytes));
        }
        let mut headers = env.headers;
        strip_hop_by_hop(&mut headers, false);
        if !headers.contains_key(header::HOST) {
            if let Some(h) = &host {
                headers.insert(header::HOST, h.clone());
            }
        }
        let fwd_host = headers.get(header::HOST).cloned();
        add_forwarded(&mut headers, client.ip(), fwd_host.as_ref());
        let task = NewTask {
            method: env.method,
            path: env.path,
            headers,
            body: env.body,
            max_attempts: env.max_attempts,
            timeout: env.timeout,
            delay: env.delay,
            callback: env.callback_url,
            callback_field: "callback_url",
            idempotency_key,
        };
        self.submit(task, prefer.wait).await
    }

    /// Stores the task (before answering), then answers 202, or the result if it is ready
    /// within `wait`.
    async fn submit(
        self: &Arc<Self>,
        task: NewTask,
        wait: Option<Duration>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        if let Some(url) = &task.callback {
            check_callback(url, &self.cfg.callback_allow, task.callback_field)?;
        }
        let now = now_ms();
        let mut id = new_id(now, &mut rand::rng());
        // Only an Idempotency-Key needs the fingerprint (a SHA-1 over the body).
        let fp = match &task.idempotency_key {
            Some(_) => fingerprint(task.method.as_str(), task.path.as_str(), &task.body),
            None => String::new(),
        };
        let not_before = task.delay.map_or(0, |d| {
            now + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
        });
        let wait = wait
            .map(|w| w.min(self.cfg.max_wait))
            .filter(|w| !w.is_zero());
        let mut waiter = wait.map(|_| self.waiters.register(&id));
        let headers = encode_headers(&task.headers);
        let (submitted, max_attempts, timeout_ms) = (
            now.to_string(),
            task.max_attempts
                .unwrap_or(self.cfg.max_attempts)
                .to_string(),
            task.timeout
                .unwrap_or(self.cfg.timeout)
                .as_millis()
                .to_string(),
        );
        let nb = not_before.to_string();
        let mut fields: Vec<(&str, &[u8])> = vec![
            ("method", task.method.as_str().as_bytes()),
            ("path", task.path.as_str().as_bytes()),
            ("headers", &headers),
            ("body", &task.body),
            ("submitted_ms", submitted.as_bytes()),
            ("attempts", b"0"),
            ("max_attempts", max_attempts.as_bytes()),
            ("timeout_ms", timeout_ms.as_bytes()),
        ];
        if not_before > now {
            fields.push(("next_attempt_ms", nb.as_bytes()));
        }
        if let Some(cb) = &task.callback {
            fields.push(("callback", cb.as_bytes()));
        }
        if let Some(k) = &task.idempotency_key {
            fields.push(("idempotency_key", k.as_bytes()));
        }
        let idem = task
            .idempotency_key
            .as_deref()
            .map(|k| (k, fp.as_str(), self.cfg.idempotency_ttl));
        let outcome = store.submit(&id, idem, now, not_before, &fields).await;
        let mut status = Some(Status::Queued);
        match outcome {
            Ok(Submitted::Created) => {
                self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
                log::debug!("task {id} stored: {} {}", task.method, task.path);
            }
            Ok(Submitted::Exists {
                id: earlier,
                fingerprint,
            }) => {
                if fingerprint != fp {
                    return Err(ApiError::KeyReused(
                        task.idempotency_key.unwrap_or_default(),
                    ));
                }
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                id = earlier;
                status = None;
                if wait.is_some() {
                    waiter = Some(self.waiters.register(&id));
                }
            }
            Err(e) => {
                if e.is_unavailable() {
                    self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e.into());
            }
        }
        if let (Some(wait), Some(waiter)) = (wait, waiter) {
            if let Some(resp) = self.wait_for(&id, wait, waiter).await? {
                return Ok(resp);
            }
        }
        // A repeated submission shows the earlier task's current status.
        let status = match status {
            Some(s) => s,
            None => store.view(&id).await?.map_or(Status::Queued, |v| v.status),
        };
        let retry_after = if not_before > now {
            (not_before - now).div_ceil(1000)
        } else {
            RETRY_AFTER_SECS
        };
        Ok(self.accepted(&id, status, retry_after))
    }

    /// 202 with the task's id and where to look.
    fn accepted(&self, id: &str, status: Status, retry_after: u64) -> Response<ResponseBody> {
        let location = format!("{}/{id}", self.cfg.path_prefix);
        let mut resp = json_response(
            StatusCode::ACCEPTED,
            &json!({"id": id, "status": status, "location": location}),
        );
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        resp
    }

    /// Waits up to `wait` for the task to finish; its result (or final answer) if it did.
    async fn wait_for(
        &self,
        id: &str,
        wait: Duration,
        mut waiter: super::notify::Waiter,
    ) -> Result<Option<Response<ResponseBody>>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let store = self.store()?;
        let mut fired = false;
        loop {
            // Read first: a repeated submission may name a task that finished long ago.
            match store.view(id).await? {
                Some(v) if v.status.is_terminal() => return self.result(id).await.map(Some),
                Some(_) => {}
                None => return Err(ApiError::NotFound),
            }
            if fired {
                // Woken for a state that was not final after all (e.g. a cancel racing a
                // retry): wait for the next notification.
                waiter = self.waiters.register(id);
                fired = false;
            }
            tokio::select! {
                _ = &mut waiter.rx, if !fired => fired = true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// The stored response, replayed.
    async fn result(&self, id: &str) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        let Some(view) = store.view(id).await? else {
            return Err(ApiError::NotFound);
        };
        if !view.status.is_terminal() {
            return Err(ApiError::Conflict {
                code: "not_finished",
                message: format!("task {id} is {}; its result is not there yet", view.status),
                task: Some(Box::new(view)),
            });
        }
        let Some(stored) = store.result(id).await? else {
            let message = format!("task {id} is {} and has no stored response", view.status);
            return Err(ApiError::Conflict {
                code: "no_result",
                message,
                task: Some(Box::new(view)),
            });
        };
        let headers = decode_headers(&stored.headers)
            .map_err(|e| ApiError::Internal(format!("task {id}: stored response headers: {e}")))?;
        let mut resp = Response::new(ResponseBody::full(stored.body));
        *resp.status_mut() = StatusCode::from_u16(stored.status).map_err(|_| {
            ApiError::Internal(format!("task {id}: stored status {}", stored.status))
        })?;
        *resp.headers_mut() = headers;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert(X_TASK_ID.clone(), v);
        }
        if stored.truncated {
            h.insert(
                X_TASK_RESULT_TRUNCATED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        Ok(resp)
    }

    /// `GET /_tasks/stats`: the queue gauges and the number of tasks in each status.
    async fn stats(&self) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        let (gauges, counts) = tokio::try_join!(store.stats(), store.counts())?;
        let now = super::now_ms();
        let by_status: serde_json::Map<String, serde_json::Value> = counts
            .into_iter()
            .map(|(status, n)| (status.as_str().to_string(), json!(n)))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "queued": gauges.queued,
                "running": gauges.running,
                "delayed": gauges.delayed,
                "oldest_queued_age_s": gauges
                    .oldest_queued_ms
                    .map(|t| now.saturating_sub(t) as f64 / 1000.0),
                "by_status": by_status,
            }),
        ))
    }

    async fn list(&self, query: &str) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        let (mut status, mut limit, mut cursor) = (None, LIST_DEFAULT, None);
        for (k, v) in query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
        {
            match k {
                "status" if v.is_empty() => {}
                "status" => {
                    status = Some(Status::parse(v).ok_or_else(|| {
                        invalid(
                            "status",
                            "one of queued, running, succeeded, failed, dead, cancelled",
                        )
                    })?)
                }
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIST_MAX).contains(n))
                        .ok_or_else(|| {
                            invalid("limit", format!("a whole number from 1 to {LIST_MAX}"))
                        })?;
                }
                "cursor" if v.is_empty() => {}
                "cursor" if is_id(v) => cursor = Some(v.to_string()),
                "cursor" => {
                    return Err(invalid("cursor", "not a cursor from a previous page").into())
                }
                _ => {}
            }
        }
        let (tasks, next) = store.list(status, limit, cursor.as_deref()).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"tasks": tasks, "next_cursor": next}),
        ))
    }

    async fn cancel(self: &Arc<Self>, id: &str) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        match store.cancel(id, now_ms(), self.cfg.result_ttl).await? {
            Change::Done(callback) => {
                self.metrics.count_finished(Status::Cancelled);
                self.spawn_callback(id.to_string(), callback);
                let view = store.view(id).await?;
                Ok(json_response(StatusCode::OK, &view))
            }
            Change::Missing => Err(ApiError::NotFound),
            Change::Queued => Err(ApiError::Internal(format!(
                "task {id}: cancel answered 'queued'"
            ))),
            Change::Conflict(status) => Err(ApiError::Conflict {
                code: "not_cancellable",
                message: format!("task {id} is {status}; only queued tasks can be cancelled"),
                task: store.view(id).await?.map(Box::new),
            }),
        }
    }

    async fn retry(&self, id: &str) -> Result<Response<ResponseBody>, ApiError> {
        let store = self.store()?;
        match store.retry(id).await? {
            Change::Queued | Change::Done(_) => {
                Ok(self.accepted(id, Status::Queued, RETRY_AFTER_SECS))
            }
            Change::Missing => Err(ApiError::NotFound),
            Change::Conflict(status) => Err(ApiError::Conflict {
                code: "not_retryable",
                message: format!("task {id} is {status}; only dead or failed tasks can be retried"),
                task: store.view(id).await?.map(Box::new),
            }),
        }
    }
}

//! One attempt of one task, from the stream entry to the recorded outcome: start it
//! atomically (status, attempt count, lease holder), send the stored request to a backend
//! picked like any request, renew the lease every `TASK_LEASE`/3 meanwhile, read the response
//! (bounded), decide with [`model::verdict`](super::model::verdict), and record the outcome
//! atomically; the stream entry is released in the same script.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::Method;
use http_body_util::BodyExt;
use log::{debug, error, info, warn};

use super::model::{
    decode_headers, encode_headers, id_time_ms, is_id, parse_retry_after, verdict, Attempt,
    RetryPolicy, Status, Verdict,
};
use super::store::{Change, Start, Store};
use super::stream::Entry;
use super::worker::Job;
use super::{now_ms, Tasks, X_TASK_ATTEMPT, X_TASK_ID};
use crate::dispatch::{error_chain, Outgoing, SendError};
use crate::headers::strip_hop_by_hop;
use crate::request_body::RequestBody;

/// How long a task waits when no backend can take it (not counted as an attempt).
const NO_BACKEND_WAIT: Duration = Duration::from_millis(500);
/// Tries to record an attempt's outcome while Redis is unavailable.
const FINISH_TRIES: u32 = 20;

/// What came back from one attempt.
enum Exchange {
    Response {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
        size: u64,
        truncated: bool,
        backend: String,
    },
    /// No backend could be picked: not an attempt.
    NoBackend,
    Transport {
        error: String,
        backend: String,
    },
}

/// The stored request of a task, ready to send: head, body and per-attempt timeout.
pub fn parse_request(
    id: &str,
    attempt: u32,
    fields: [Option<Vec<u8>>; 5],
    default_timeout: Duration,
) -> Result<(Outgoing, Bytes, Duration), String> {
    let [method, path, headers, body, timeout] = fields;
    let method = method.ok_or("no method")?;
    let method = Method::from_bytes(&method)
        .map_err(|_| format!("bad method {:?}", String::from_utf8_lossy(&method)))?;
    let path = path.ok_or("no path")?;
    let path = PathAndQuery::try_from(path.as_slice())
        .map_err(|_| format!("bad path {:?}", String::from_utf8_lossy(&path)))?;
    let mut headers = decode_headers(&headers.unwrap_or_default())?;
    let id_value = HeaderValue::from_str(id).map_err(|_| "bad id")?;
    headers.insert(X_TASK_ID.clone(), id_value);
    headers.insert(X_TASK_ATTEMPT.clone(), HeaderValue::from(attempt));
    let timeout = match timeout {
        None => default_timeout,
        Some(t) => String::from_utf8_lossy(&t)
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| "bad timeout_ms")?,
    };
    Ok((
        Outgoing {
            method,
            path,
            headers,
            forwarded: None,
            raw_fields: false,
        },
        Bytes::from(body.unwrap_or_default()),
        timeout,
    ))
}

impl Tasks {
    /// Runs one stream entry.
    pub(super) async fn job(self: Arc<Self>, job: Job) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let entry = job.entry;
        let _slot = job.permit;
        let Some(task) = entry.task.clone().filter(|t| is_id(t)) else {
            self.dead_letter(&store, &entry, "the entry has no valid task id")
                .await;
            return;
        };
        if !self.selectable() {
            self.metrics.deferred.fetch_add(1, Ordering::Relaxed);
            let next = now_ms() + NO_BACKEND_WAIT.as_millis() as u64;
            let ttl = self.cfg.result_ttl;
            match store.defer(&entry.id, &task, next, now_ms(), ttl).await {
                Ok(Change::Done(callback)) => {
                    warn!("task {task}: dead: its last attempt's lease lapsed");
                    self.finished(&task, Status::Dead, callback);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!("task {task}: could not put it back ({e}); it runs once its lease lapses")
                }
            }
            return;
        }
        match store
            .start(
                &entry.id,
                &task,
                &self.consumer,
                now_ms(),
                self.cfg.result_ttl,
            )
            .await
        {
            Err(e) => {
                self.redis_state(Err(&e));
                warn!("task {task}: cannot start: {e}; it runs again once its lease lapses");
            }
            Ok(Start::Gone) => {
                self.dead_letter(
                    &store,
                    &entry,
                    "no task record (expired, deleted or never stored)",
                )
                .await;
            }
            Ok(Start::Skip(status)) => debug!("task {task}: skipped, it is {status}"),
            Ok(Start::Dead(callback)) => {
                warn!("task {task}: dead: its last attempt's lease lapsed");
                self.finished(&task, Status::Dead, callback);
            }
            Ok(Start::Run {
                attempt,
                max_attempts,
                request,
            }) => {
                self.attempt(&store, &entry, &task, attempt, max_attempts, request)
                    .await;
            }
        }
    }

    async fn dead_letter(&self, store: &Store, entry: &Entry, reason: &str) {
        warn!(
            "tasks: stream entry {} moved to the dead-letter stream: {reason}",
            entry.id
        );
        self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = store.dead_letter(entry, reason).await {
            warn!("tasks: could not dead-letter entry {}: {e}", entry.id);
        }
    }

    pub(super) fn finished(self: &Arc<Self>, task: &str, status: Status, callback: String) {
        self.metrics.count_finished(status);
        if let Some(t) = id_time_ms(task) {
            self.metrics
                .completion
                .record(Duration::from_millis(now_ms().saturating_sub(t)));
        }
        self.spawn_callback(task.to_string(), callback);
    }

    async fn attempt(
        self: &Arc<Self>,
        store: &Store,
        entry: &Entry,
        task: &str,
        attempt: u32,
        max_attempts: u32,
        request: [Option<Vec<u8>>; 5],
    ) {
        let (out, body, timeout) = match parse_request(task, attempt, request, self.cfg.timeout) {
            Ok(x) => x,
            Err(why) => {
                let error = format!("malformed task record: {why}");
                warn!("task {task}: {error}; marked dead");
                self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.record(store, entry, task, attempt, "dead", 0, "", &error, &[])
                    .await;
                return;
            }
        };
        self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        // Attempts earn retry-budget tokens like client requests do.
        self.dispatch.deposit();
        debug!(
            "task {task}: attempt {attempt}/{max_attempts}: {} {}",
            out.method, out.path
        );
        let t0 = Instant::now();
        let outcome = {
            let exchange = std::pin::pin!(self.exchange(&out, body, timeout));
            let lease = std::pin::pin!(self.keep_lease(store, &entry.id, task));
            match futures_util::future::select(exchange, lease).await {
                futures_util::future::Either::Left((x, _)) => x,
                futures_util::future::Either::Right(((), exchange)) => exchange.await,
            }
        };
        self.metrics.attempt_duration.record(t0.elapsed());
        let policy = RetryPolicy {
            base: self.cfg.retry_base,
            max: self.cfg.retry_max,
        };
        let (result, backend, error, kind) = match outcome {
            Exchange::NoBackend => {
                self.metrics.deferred.fetch_add(1, Ordering::Relaxed);
                let next = now_ms() + NO_BACKEND_WAIT.as_millis() as u64;
                self.record(store, entry, task, attempt, "wait", next, "", "", &[])
                    .await;
                return;
            }
            Exchange::Transport { error, backend } => (None, backend, error, Attempt::Transport),
            Exchange::Response {
                status,
                mut headers,
                body,
                size,
                truncated,
                backend,
            } => {
                let retry_after = headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                strip_hop_by_hop(&mut headers, false);
                headers.remove(header::CONTENT_LENGTH);
                let error = if status >= 400 {
                    format!("the backend answered {status}")
                } else {
                    String::new()
                };
                let fields = (status, encode_headers(&headers), body, truncated, size);
                (
                    Some(fields),
                    backend,
                    error,
                    Attempt::Response {
                        status,
                        retry_after,
                    },
                )
            }
        };
        let v = verdict(kind, attempt, max_attempts, &policy, &mut rand::rng());
        let (name, next) = match v {
            Verdict::Retry(d) => (
                "retry",
                now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2),
            ),
            other => (other.status().map_or("dead", Status::as_str), 0),
        };
        let (status_s, size_s) = result
            .as_ref()
            .map(|r| (r.0.to_string(), r.4.to_string()))
            .unwrap_or_default();
        let fields: Vec<(&str, &[u8])> = match &result {
            Some((_, headers, body, truncated, _)) => vec![
                ("r_status", status_s.as_bytes()),
                ("r_headers", headers),
                ("r_body", body),
                ("r_truncated", if *truncated { b"1" } else { b"0" }),
                ("r_size", size_s.as_bytes()),
            ],
            None => Vec::new(),
        };
        if !error.is_empty() {
            debug!(
                "task {task}: attempt {attempt}/{max_attempts} via {backend}: {error} -> {name}"
            );
        }
        self.record(
            store, entry, task, attempt, name, next, &backend, &error, &fields,
        )
        .await;
    }

    /// Records an attempt's outcome, retrying while Redis is unavailable.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        self: &Arc<Self>,
        store: &Store,
        entry: &Entry,
        task: &str,
        attempt: u32,
        verdict: &str,
        next_ms: u64,
        backend: &str,
        error: &str,
        result: &[(&str, &[u8])],
    ) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..FINISH_TRIES {
            let r = store
                .finish(
                    &entry.id,
                    task,
                    attempt,
                    now_ms(),
                    verdict,
                    next_ms,
                    self.cfg.result_ttl,
                    backend,
                    error,
                    result,
                )
                .await;
            match r {
                Ok(Change::Done(callback)) => {
                    let status = Status::parse(verdict).unwrap_or(Status::Dead);
                    if status != Status::Succeeded {
                        info!(
                            "task {task}: {status} after {attempt} attempt(s){}",
                            if error.is_empty() {
                                String::new()
                            } else {
                                format!(": {error}")
                            }
                        );
                    }
                    self.finished(task, status, callback);
                    return;
                }
                Ok(Change::Queued) => {
                    if verdict == "retry" {
                        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Ok(Change::Conflict(status)) => {
                    warn!("task {task}: outcome of attempt {attempt} discarded: the task is now {status} (its lease lapsed and another balancer took it over)");
                    return;
                }
                Ok(Change::Missing) => return,
                Err(e) if e.is_unavailable() => {
                    self.redis_state(Err(&e));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    error!("task {task}: cannot record attempt {attempt}: {e}; it runs again once its lease lapses");
                    return;
                }
            }
        }
        error!("task {task}: Redis unavailable for too long to record attempt {attempt}; it runs again once its lease lapses");
    }

    /// Renews the lease on `entry` every `TASK_LEASE`/3; never completes.
    async fn keep_lease(&self, store: &Store, entry: &str, task: &str) {
        let every = self.cfg.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match store.renew(entry, &self.consumer).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!("task {task}: lease lost (another balancer took it over); finishing this attempt anyway");
                    return std::future::pending().await;
                }
                Err(e) => debug!("task {task}: lease renewal failed: {e}"),
            }
        }
    }

    /// Sends the request and reads the response, within `timeout`.
    async fn exchange(&self, out: &Outgoing, body: Bytes, timeout: Duration) -> Exchange {
        let limit = usize::try_from(self.cfg.max_result_bytes).unwrap_or(usize::MAX);
        let run = async {
            let sent = match self
                .dispatch
                .send(out.clone(), RequestBody::full(body.clone()), timeout)
                .await
            {
                Ok(sent) => sent,
                Err(SendError::NoBackend) => return Exchange::NoBackend,
                Err(SendError::Failed { backend, error }) => {
                    return Exchange::Transport {
                        error: error_chain(&error),
                        backend: describe(&backend),
                    }
                }
                Err(SendError::TimedOut { backend }) => {
                    return Exchange::Transport {
                        error: format!("no response within {timeout:?}"),
                        backend: describe(&backend),
                    }
                }
                Err(SendError::Client(fault)) => {
                    return Exchange::Transport {
                        error: format!("request body failed: {}", fault.code()),
                        backend: String::new(),
                    }
                }
            };
            let backend = describe(&sent.backend);
            let (parts, mut incoming) = sent.resp.into_parts();
            let (mut buf, mut size, mut truncated) = (Vec::new(), 0u64, false);
            while let Some(frame) = incoming.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            size += data.len() as u64;
                            let room = limit.saturating_sub(buf.len());
                            truncated |= data.len() > room;
                            buf.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Err(e) => {
                        return Exchange::Transport {
                            error: format!("the response body failed after {size} bytes: {e}"),
                            backend,
                        };
                    }
                }
            }
            // The body ended (its connection went back to the pool): the in-flight count drops.
            drop((incoming, sent.in_flight));
            Exchange::Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: buf,
                size,
                truncated,
                backend,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(x) => x,
            Err(_) => Exchange::Transport {
                error: format!("the attempt took longer than {timeout:?}"),
                backend: String::new(),
            },
        }
    }
}

fn describe(b: &crate::backends::Backend) -> String {
    format!("{} ({})", b.name, b.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(m: &str, p: &str, h: &str, b: &str, t: Option<&str>) -> [Option<Vec<u8>>; 5] {
        [
            Some(m.into()),
            Some(p.into()),
            Some(h.into()),
            Some(b.into()),
            t.map(Into::into),
        ]
    }

    #[test]
    fn stored_requests_are_rebuilt_with_task_headers() {
        let (out, body, timeout) = parse_request(
            "019ad9c1b6f3aaaaaaaaaaaaaaaa",
            2,
            fields(
                "PUT",
                "/r?x=1",
                "host: app\r\nx-a: 1\r\n",
                "hello",
                Some("1500"),
            ),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(out.method, Method::PUT);
        assert_eq!(out.path.as_str(), "/r?x=1");
        assert_eq!(out.headers["host"], "app");
        assert_eq!(out.headers["x-task-id"], "019ad9c1b6f3aaaaaaaaaaaaaaaa");
        assert_eq!(out.headers["x-task-attempt"], "2");
        assert_eq!(body.as_ref(), b"hello");
        assert_eq!(timeout, Duration::from_millis(1500));
        let default = parse_request(
            "x",
            1,
            fields("GET", "/", "", "", None),
            Duration::from_secs(9),
        )
        .unwrap();
        assert_eq!(default.2, Duration::from_secs(9));
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let d = Duration::from_secs(1);
        let bad = |f| parse_request("x", 1, f, d).err().unwrap();
        assert!(bad(fields("GE T", "/", "", "", None)).contains("method"));
        assert!(bad(fields("GET", "no slash", "", "", None)).contains("path"));
        assert!(bad(fields("GET", "/", "garbage", "", None)).contains("header"));
        assert!(bad(fields("GET", "/", "", "", Some("soon"))).contains("timeout"));
        assert!(bad([None, Some(b"/".to_vec()), None, None, None]).contains("method"));
    }
}

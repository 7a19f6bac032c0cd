//! `X-Callback-Url`: a POST of the task's final status JSON to an allowed host, with a few
//! retries. A callback never changes the task's own status; failures are logged and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Request;
use log::{debug, info, warn};

use super::envelope::check_callback;
use super::{Tasks, X_TASK_ID};
use crate::request_body::RequestBody;
use crate::upstream::{ConnPool, Dial, MIN_BUFFER_BYTES};

/// Attempts per callback.
pub const ATTEMPTS: u32 = 3;
/// Limit of one callback attempt.
const TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_DELAY: Duration = Duration::from_secs(1);

impl Tasks {
    /// Sends the callback of finished task `id` to `url` in the background (until shutdown).
    pub fn spawn_callback(self: &Arc<Self>, id: String, url: String) {
        if url.is_empty() {
            return;
        }
        let tasks = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tasks.deliver_callback(&id, &url) => {}
                _ = crate::stopped(&mut shutdown) => info!("task {id}: callback to {url} abandoned at shutdown"),
            }
        });
    }

    async fn deliver_callback(&self, id: &str, url: &str) {
        let Some(store) = &self.store else { return };
        // Checked again at send time: the allow-list may have changed since submission.
        let (addr, path) = match check_callback(url, &self.cfg.callback_allow, "X-Callback-Url") {
            Ok(x) => x,
            Err(e) => {
                warn!("task {id}: callback to {url} not sent: {e}");
                self.metrics
                    .callbacks_failed
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let body = match store.view(id).await {
            Ok(Some(view)) => Bytes::from(serde_json::to_vec(&view).unwrap_or_default()),
            Ok(None) => {
                debug!("task {id}: gone before its callback; not sent");
                return;
            }
            Err(e) => {
                warn!("task {id}: callback to {url} not sent: cannot read the task: {e}");
                self.metrics
                    .callbacks_failed
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut delay = FIRST_DELAY;
        for attempt in 1..=ATTEMPTS {
            let pool = Arc::new(ConnPool::default());
            let mut req = Request::new(RequestBody::full(body.clone()));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = http::Uri::from(path.clone());
            let h = req.headers_mut();
            if let Ok(host) = HeaderValue::from_str(&addr) {
                h.insert(header::HOST, host);
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert(X_TASK_ID.clone(), v);
            }
            let dial = Dial::unwatched(TIMEOUT, MIN_BUFFER_BYTES);
            let outcome = tokio::time::timeout(
                TIMEOUT,
                pool.send(&addr, &dial, req, None, false, std::time::Instant::now()),
            )
            .await;
            let why = match outcome {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    debug!("task {id}: callback to {url} delivered ({})", resp.status());
                    self.metrics.callbacks_sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Ok(resp)) => format!("answered {}", resp.status()),
                Ok(Err(e)) => e.error.to_string(),
                Err(_) => format!("no answer within {TIMEOUT:?}"),
            };
            if attempt == ATTEMPTS {
                warn!("task {id}: callback to {url} failed {ATTEMPTS} times, giving up: {why}");
            } else {
                debug!("task {id}: callback to {url} attempt {attempt} failed: {why}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        self.metrics
            .callbacks_failed
            .fetch_add(1, Ordering::Relaxed);
    }
}

//! Sending one request to a backend: pick (weights, SUNDOWN excluded, ejection), send over
//! the backend's keep-alive pool, retry a connect failure on another backend within the
//! retry budget, and record the outcome for outlier detection and the agent's reports.
//! Shared by the proxy (client requests) and the task workers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use log::debug;

use crate::backends::{Backend, Backends, InFlight, Outcome};
use crate::budget::RetryBudget;
use crate::headers::{accepts_trailers, strip_hop_by_hop, Forwarded};
use crate::metrics::Metrics;
use crate::request_body::{client_fault, ClientFault, RequestBody};
use crate::upstream::{Dial, Unsent, UpstreamBody, UpstreamError};

/// At most this many backends are tried for one request (first try + retries).
pub const MAX_ATTEMPTS: usize = 3;

/// The head of an upstream request.
#[derive(Clone)]
pub struct Outgoing {
    pub method: Method,
    pub path: PathAndQuery,
    /// Hop-by-hop fields already removed; `forwarded`'s fields not yet added.
    pub headers: HeaderMap,
    /// Fields still to add: written straight into the head by the balancer's own client,
    /// inserted into `headers` for hyper's ([`Outgoing::finish`]).
    pub forwarded: Option<Forwarded>,
    /// The response head is only written out again (by the own front end): its fields may
    /// come unparsed ([`crate::upstream::ConnPool::send`]'s `raw_fields`).
    pub raw_fields: bool,
}

impl Outgoing {
    /// The upstream request head for a client's request: hop-by-hop fields removed (the
    /// upgrade ones kept when `upgrade`), `Host` kept (taken from `:authority` on HTTP/2),
    /// `TE: trailers` and `X-Forwarded-*` to be added. The header map is moved out of
    /// `req`, not copied.
    pub fn from_client<B>(req: &mut Request<B>, client: SocketAddr, upgrade: bool) -> Outgoing {
        let mut headers = std::mem::take(req.headers_mut());
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority.
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, v);
            }
        }
        let trailers = accepts_trailers(&headers);
        strip_hop_by_hop(&mut headers, upgrade);
        Outgoing {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
            forwarded: Some(Forwarded {
                client: client.ip(),
                trailers,
            }),
            raw_fields: false,
        }
    }

    /// Adds the forwarding fields to `headers`: the head as it goes upstream.
    pub fn finish(&mut self) {
        if let Some(f) = self.forwarded.take() {
            f.apply(&mut self.headers);
        }
    }

    /// The request to send, in origin form (`Host` travels in the headers), and the fields
    /// its head still needs. hyper's client sends the map as it is, so for a request that
    /// goes through it they are added here.
    fn into_request(
        mut self,
        body: RequestBody,
    ) -> (Request<RequestBody>, Option<Forwarded>, bool) {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = Uri::from(self.path);
        if !crate::upstream::goes_own(req.body(), &self.headers) {
            if let Some(f) = self.forwarded.take() {
                f.apply(&mut self.headers);
            }
        }
        *req.headers_mut() = self.headers;
        (req, self.forwarded, self.raw_fields)
    }
}

/// A response head from a backend; the body is still to be read.
pub struct Sent {
    /// Its body drives the connection, which goes back to its pool once the body ended.
    pub resp: Response<UpstreamBody>,
    /// Keeps the backend's in-flight count up until dropped.
    pub in_flight: InFlight,
    pub backend: Arc<Backend>,
}

/// Why no response head came back.
pub enum SendError {
    /// No backend could be picked.
    NoBackend,
    /// The client's side failed while the request was being sent (its body was too large,
    /// malformed, cut short or too slow). Not counted against the backend.
    Client(ClientFault),
    /// The request failed and may have reached `backend` (or every connect attempt failed).
    Failed {
        backend: Arc<Backend>,
        error: UpstreamError,
    },
    /// No response head within the timeout.
    TimedOut { backend: Arc<Backend> },
}

pub struct Dispatcher {
    backends: Arc<Backends>,
    dial: Dial,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        backends: Arc<Backends>,
        dial: Dial,
        retry_budget: f64,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        Dispatcher {
            backends,
            dial,
            budget: RetryBudget::new(retry_budget),
            metrics,
        }
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// Counts one request towards the retry budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Sends `out` with `body`. A connect failure (nothing sent) is retried on another
    /// backend with the same, unread request. `timeout` bounds each attempt up to the
    /// response head.
    pub async fn send(
        &self,
        out: Outgoing,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<Sent, SendError> {
        let table = self.backends.load();
        let progress = body.progress();
        let (mut req, forwarded, raw_fields) = out.into_request(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = None;
        loop {
            // One clock reading serves the pick, the deadline, the latency and the pool.
            let sent = Instant::now();
            let Some(idx) = self
                .backends
                .pick_at(&table, &mut rand::rng(), &tried, sent)
            else {
                return Err(match last_error {
                    Some((backend, error)) => SendError::Failed { backend, error },
                    None => SendError::NoBackend,
                });
            };
            let backend = table.backends[idx].clone();
            let in_flight = InFlight::start(backend.clone());
            let result = tokio::time::timeout_at(
                (sent + timeout).into(),
                backend.conns.send(
                    &backend.address,
                    &self.dial,
                    req,
                    forwarded.as_ref(),
                    raw_fields,
                    sent,
                ),
            )
            .await;
            let elapsed = sent.elapsed();
            match result {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    self.backends
                        .record(&backend, Outcome::Response(status), elapsed);
                    return Ok(Sent {
                        resp,
                        in_flight,
                        backend,
                    });
                }
                Ok(Err(Unsent { error, request })) => {
                    if let Some(fault) = client_fault(&error) {
                        return Err(SendError::Client(fault));
                    }
                    self.backends.record(&backend, Outcome::Failure, elapsed);
                    let Some(request) = request else {
                        return Err(SendError::Failed { backend, error });
                    };
                    if tried.len() + 1 >= MAX_ATTEMPTS {
                        return Err(SendError::Failed { backend, error });
                    }
                    if !self.budget.try_withdraw() {
                        self.metrics.retries_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(SendError::Failed { backend, error });
                    }
                    debug!(
                        "connect to {} ({}) failed: {error}; retrying elsewhere",
                        backend.name, backend.address
                    );
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tried.push(idx);
                    req = request;
                    last_error = Some((backend, error));
                }
                Err(_) => {
                    // Still waiting for the client's body: the client held it up.
                    if progress.is_some_and(|p| !p.load(Ordering::Relaxed)) {
                        return Err(SendError::Client(ClientFault::BodyTimeout));
                    }
                    self.backends.record(&backend, Outcome::Failure, elapsed);
                    return Err(SendError::TimedOut { backend });
                }
            }
        }
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

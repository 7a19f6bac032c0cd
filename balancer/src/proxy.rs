//! The request path: cache lookup, backend pick, forwarding, retries, upgrades.
//!
//! Contract of [`Proxy::handle`], phase by phase:
//! 1. Limits: a declared body over `MAX_BODY_BYTES` is refused with 413 before anything is
//!    sent upstream; a streamed body is cut at the limit (413 if no response started).
//! 2. Headers: hop-by-hop fields removed, `X-Forwarded-*` added, `Host` kept.
//! 3. Cache: static GET/HEAD may be answered from the cache; concurrent misses coalesce.
//! 4. Pick + forward over the backend's keep-alive pool (see [`crate::upstream`]), response headers bounded by `REQUEST_TIMEOUT`.
//!    A connect failure (nothing sent) is retried on another backend within the retry
//!    budget; anything that may have reached a backend is never replayed.
//! 5. The response is streamed back; the backend's in-flight count drops when it ends.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use log::{debug, info, warn};
use tokio::sync::watch;

use crate::backends::{Backends, InFlight, Outcome};
use crate::body::{is_body_too_large, RequestBody, ResponseBody};
use crate::budget::RetryBudget;
use crate::cache::{Cache, Fetched, X_CACHE};
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers::{accepts_trailers, add_forwarded, is_upgrade, strip_hop_by_hop};
use crate::metrics::{Metrics, Source};
use crate::upstream::Lease;

/// At most this many backends are tried for one request (first try + retries).
pub const MAX_ATTEMPTS: usize = 3;

/// The request-independent part of an upstream request, reused across attempts.
struct Outgoing {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
}

pub struct Proxy {
    backends: Arc<Backends>,
    connect_timeout: Duration,
    cache: Option<Cache>,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    max_body_bytes: u64,
    shutdown: watch::Receiver<bool>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        backends: Arc<Backends>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Proxy {
        Proxy {
            backends,
            connect_timeout: config.connect_timeout,
            cache: Cache::new(&config.cache),
            budget: RetryBudget::new(config.retry_budget),
            metrics,
            request_timeout: config.request_timeout,
            max_body_bytes: config.limits.max_body_bytes,
            shutdown,
        }
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// Serves one client request. Never fails: errors become short JSON answers.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        self.budget.deposit();
        let (resp, source) = self.route(req, client).await;
        self.metrics
            .observe(source, resp.status().as_u16(), start.elapsed());
        resp
    }

    async fn route(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
    ) -> (Response<ResponseBody>, Source) {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            debug!(
                "refusing {} {}: declared body {declared:?} over the limit",
                req.method(),
                req.uri()
            );
            return (ProxyError::BodyTooLarge.response(), Source::Local);
        }
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = self.outgoing(&req, client, upgrade);
        let (parts, body) = req.into_parts();
        let (body, slot) = RequestBody::new(body, self.max_body_bytes);

        let key = match (&self.cache, upgrade, body.is_end_stream_hint()) {
            (Some(cache), false, true) => cache.policy.key(&out.method, &parts.uri, &out.headers),
            _ => None,
        };
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            return self.forward(out, body, slot, on_client_upgrade).await;
        };
        // Boxed: the cache path's future is large and rare; keep the common one small.
        Box::pin(self.through_cache(cache, key, out, body)).await
    }

    /// Serves a cacheable GET/HEAD: from the cache, or fetched once and stored.
    async fn through_cache(
        &self,
        cache: &Cache,
        key: String,
        out: Outgoing,
        body: RequestBody,
    ) -> (Response<ResponseBody>, Source) {
        if out.method == Method::HEAD {
            if let Some(entry) = cache.get(&key).await {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                return (entry.to_response(true, "HIT"), Source::Cache);
            }
            let (mut resp, source) = self.forward(out, body, None, None).await;
            resp.headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
            return (resp, source);
        }
        let retry = Outgoing {
            method: out.method.clone(),
            path: out.path.clone(),
            headers: out.headers.clone(),
        };
        let fetch = async {
            let (mut resp, _) = self.forward(out, body, None, None).await;
            resp.headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
            resp
        };
        match cache.get_or_fetch(key, fetch).await {
            Fetched::Hit(resp) => (resp, Source::Cache),
            Fetched::Stored(resp) | Fetched::Passed(resp) => (resp, Source::Backend),
            Fetched::GoUpstream => {
                let (mut resp, source) =
                    self.forward(retry, RequestBody::empty(), None, None).await;
                resp.headers_mut()
                    .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
                (resp, source)
            }
        }
    }

    /// Builds the upstream request head from the client's.
    fn outgoing(&self, req: &Request<Incoming>, client: SocketAddr, upgrade: bool) -> Outgoing {
        let mut headers = req.headers().clone();
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
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let host = headers.get(header::HOST).cloned();
        add_forwarded(&mut headers, client.ip(), host.as_ref());
        Outgoing {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
        }
    }

    /// Picks a backend and forwards, retrying connect failures on other backends.
    async fn forward(
        &self,
        out: Outgoing,
        body: RequestBody,
        slot: Option<crate::body::Slot>,
        on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (Response<ResponseBody>, Source) {
        let table = self.backends.load();
        let hint = body.hint();
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let picked = self.backends.pick(&table, &mut rand::rng(), &tried);
            let (Some(idx), Some(req_body)) = (picked, body.take()) else {
                let err = if tried.is_empty() {
                    ProxyError::NoBackend
                } else {
                    ProxyError::UpstreamFailed
                };
                return (err.response(), Source::Local);
            };
            let backend = table.backends[idx].clone();
            if backend.authority.is_none() {
                return (ProxyError::UpstreamFailed.response(), Source::Local);
            }
            // Origin-form request target; `Host` travels in the headers.
            let mut req = Request::new(req_body);
            *req.method_mut() = out.method.clone();
            *req.uri_mut() = Uri::from(out.path.clone());
            *req.headers_mut() = out.headers.clone();
            let in_flight = InFlight::start(backend.clone());
            let sent = Instant::now();
            let result = tokio::time::timeout(
                self.request_timeout,
                backend
                    .conns
                    .send(&backend.address, self.connect_timeout, req),
            )
            .await;
            let elapsed = sent.elapsed();
            match result {
                Ok(Ok((resp, lease))) => {
                    self.backends.record(
                        &backend,
                        Outcome::Response(resp.status().as_u16()),
                        elapsed,
                    );
                    return (
                        self.respond(resp, in_flight, lease, on_client_upgrade),
                        Source::Backend,
                    );
                }
                Ok(Err(e)) if is_body_too_large(&e) => {
                    return (ProxyError::BodyTooLarge.response(), Source::Local);
                }
                Ok(Err(e)) => {
                    self.backends.record(&backend, Outcome::Failure, elapsed);
                    if e.is_connect() && tried.len() + 1 < MAX_ATTEMPTS {
                        let again = match &slot {
                            None => Some(RequestBody::empty()),
                            Some(s) => RequestBody::reclaim(s, hint, self.max_body_bytes),
                        };
                        if again.is_some() {
                            if self.budget.try_withdraw() {
                                debug!(
                                    "connect to {} ({}) failed: {e}; retrying elsewhere",
                                    backend.name, backend.address
                                );
                                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                                tried.push(idx);
                                body = again;
                                continue;
                            }
                            self.metrics.retries_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    warn!(
                        "{} {} via {} ({}) failed: {}",
                        out.method,
                        out.path,
                        backend.name,
                        backend.address,
                        error_chain(&e)
                    );
                    return (ProxyError::UpstreamFailed.response(), Source::Local);
                }
                Err(_) => {
                    self.backends.record(&backend, Outcome::Failure, elapsed);
                    warn!(
                        "{} {} via {} ({}) timed out after {:?}",
                        out.method, out.path, backend.name, backend.address, self.request_timeout
                    );
                    return (ProxyError::UpstreamTimeout.response(), Source::Local);
                }
            }
        }
    }

    /// Turns the upstream response into the client's; tunnels a protocol switch.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        in_flight: InFlight,
        lease: Lease,
        on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ResponseBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = on_client_upgrade {
                let upstream_side = hyper::upgrade::on(&mut resp);
                self.spawn_tunnel(client_side, upstream_side, in_flight);
                let (mut parts, _) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers, true);
                return Response::from_parts(parts, ResponseBody::empty());
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(
            parts,
            ResponseBody::Upstream {
                body,
                in_flight: Some(in_flight),
                lease: Some(lease),
            },
        )
    }

    fn spawn_tunnel(
        &self,
        client_side: hyper::upgrade::OnUpgrade,
        upstream_side: hyper::upgrade::OnUpgrade,
        in_flight: InFlight,
    ) {
        self.metrics.upgrades.fetch_add(1, Ordering::Relaxed);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let (c, u) = tokio::join!(client_side, upstream_side);
            let (mut c, mut u) = match (c, u) {
                (Ok(c), Ok(u)) => (TokioIo::new(c), TokioIo::new(u)),
                (c, u) => {
                    warn!(
                        "upgrade failed: client={:?} upstream={:?}",
                        c.err(),
                        u.err()
                    );
                    return;
                }
            };
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
                    Ok((up, down)) => debug!("tunnel closed: {up} bytes up, {down} bytes down"),
                    Err(e) => debug!("tunnel ended: {e}"),
                },
                _ = crate::stopped(&mut shutdown) => info!("tunnel closed by shutdown"),
            }
        });
    }
}

impl RequestBody {
    /// True when the body is known to be empty (no cache bypass needed).
    fn is_end_stream_hint(&self) -> bool {
        http_body::Body::is_end_stream(self)
    }
}

/// The error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

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

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use log::{debug, info, warn};
use tokio::sync::watch;

use crate::backends::{Backends, InFlight};
use crate::body::ResponseBody;
use crate::cache::{Cache, Fetched, X_CACHE};
use crate::config::Config;
use crate::dispatch::{error_chain, Dispatcher, Outgoing, SendError, Sent};
use crate::error::ProxyError;
use crate::headers::{is_upgrade, strip_hop_by_hop};
use crate::metrics::{Metrics, Source};
use crate::request_body::{client_fault, ClientBody, ClientFault, RequestBody};
use crate::strict;
use crate::tasks::Tasks;
use crate::upstream::UpstreamBody;

/// What [`Proxy::route`] made of a request.
enum Route {
    /// Answered here (refused).
    Answer((Response<ResponseBody>, Source)),
    /// For the task API.
    Tasks(Request<ClientBody>, Arc<Tasks>),
    Upstream(Upstream),
}

/// A request for a backend, its head prepared.
struct Upstream {
    out: Outgoing,
    /// The client's target (for the cache key).
    uri: Uri,
    client: SocketAddr,
    body: RequestBody,
    /// The client's side of a protocol switch it asked for.
    on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

pub struct Proxy {
    dispatch: Arc<Dispatcher>,
    tasks: Option<Arc<Tasks>>,
    cache: Option<Cache>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    max_body_bytes: u64,
    max_headers: usize,
    buffer_body_bytes: u64,
    client_body_timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        dispatch: Arc<Dispatcher>,
        tasks: Option<Arc<Tasks>>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Proxy {
        Proxy {
            dispatch,
            tasks,
            cache: Cache::new(&config.cache),
            metrics,
            request_timeout: config.request_timeout,
            max_body_bytes: config.limits.max_body_bytes,
            max_headers: config.limits.max_headers,
            buffer_body_bytes: config.limits.buffer_body_bytes,
            client_body_timeout: config.limits.client_body_timeout,
            shutdown,
        }
    }

    pub fn backends(&self) -> &Arc<Backends> {
        self.dispatch.backends()
    }

    pub fn tasks(&self) -> Option<&Arc<Tasks>> {
        self.tasks.as_ref()
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// Serves one client request. Never fails: errors become short JSON answers. Takes the
    /// proxy by `Arc` so that the future is the server's to keep as it is (no async block
    /// around it to hold the proxy, which would copy the whole future once more).
    ///
    /// The common request (no body to read first, not cacheable, not for the task API) goes
    /// from here straight to [`Dispatcher::send`]: each async level in between held its own
    /// copies of the request and was copied whole into its parent when called.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        self.dispatch.deposit();
        let (resp, source) = match self.route(req, client) {
            Route::Answer(answer) => answer,
            // Boxed, like the other rare paths: the task API's future is large, and a
            // future's size is copied whenever it is stored or moved.
            Route::Tasks(req, tasks) => (Box::pin(tasks.handle(req, client)).await, Source::Local),
            Route::Upstream(up) if up.body.in_memory().is_none() => {
                Box::pin(self.upstream(up)).await
            }
            Route::Upstream(up) => match self.cache_key(&up) {
                Some((cache, key)) => Box::pin(self.through_cache(cache, key, up)).await,
                None => {
                    let Upstream {
                        out,
                        body,
                        on_client_upgrade,
                        ..
                    } = up;
                    let log = (out.method.clone(), out.path.clone());
                    let sent = self.dispatch.send(out, body, self.request_timeout).await;
                    self.answer(sent, log, on_client_upgrade)
                }
            },
        };
        self.metrics
            .observe(source, resp.status().as_u16(), start.elapsed());
        resp
    }

    /// Counts a client's fault and answers it.
    fn client_fault(&self, error: ProxyError) -> (Response<ResponseBody>, Source) {
        self.metrics.client_fault(error.code());
        (error.response(), Source::Local)
    }

    /// Where a request goes: refused (strictness, a declared body over the limit), to the
    /// task API, or upstream with its head prepared.
    fn route(&self, mut req: Request<ClientBody>, client: SocketAddr) -> Route {
        if let Err(refusal) = strict::check(&mut req, self.max_headers) {
            debug!("refusing {} {}: {refusal}", req.method(), req.uri());
            return Route::Answer(self.client_fault(refusal.into()));
        }
        if let Some(tasks) = self.tasks.as_ref().filter(|t| t.claims(&req)) {
            return Route::Tasks(req, tasks.clone());
        }
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
            return Route::Answer(self.client_fault(ProxyError::BodyTooLarge));
        }
        // `Upgrade: h2c` is not tunnelled: the request goes on as a plain one without it.
        let upgrade = req.version() == Version::HTTP_11
            && is_upgrade(req.headers())
            && !strict::upgrade_is_h2c_only(req.headers());
        let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut out = Outgoing::from_client(&mut req, client, upgrade);
        // The own front end writes the response head itself, from the fields as they came
        // (`front::encode_head`); the cache, which keeps and amends the head, turns this off.
        out.raw_fields = matches!(req.body(), ClientBody::Empty);
        let (parts, body) = req.into_parts();
        Route::Upstream(Upstream {
            out,
            uri: parts.uri,
            client,
            body: RequestBody::new(body, self.max_body_bytes, self.client_body_timeout),
            on_client_upgrade,
        })
    }

    /// The cache and the key of a request whose body is known to be empty, when it may be
    /// answered from the cache.
    fn cache_key(&self, up: &Upstream) -> Option<(&Cache, String)> {
        let cache = self.cache.as_ref()?;
        if up.on_client_upgrade.is_some() || !up.body.is_end_stream_hint() {
            return None;
        }
        let key = cache.policy.key(&up.out.method, &up.uri, &up.out.headers)?;
        Some((cache, key))
    }

    /// A request whose body streams: a small body is read before a backend connection is
    /// taken; then on as any other.
    async fn upstream(&self, mut up: Upstream) -> (Response<ResponseBody>, Source) {
        up.body = match up
            .body
            .buffered(self.buffer_body_bytes, self.client_body_timeout)
            .await
        {
            Ok(body) => body,
            Err(e) => {
                let fault = client_fault(&*e).unwrap_or(ClientFault::BadBody);
                debug!(
                    "{} {}: request body from {}: {e}",
                    up.out.method, up.out.path, up.client
                );
                return self.client_fault(fault.into());
            }
        };
        match self.cache_key(&up) {
            Some((cache, key)) => self.through_cache(cache, key, up).await,
            None => self.forward(up.out, up.body, up.on_client_upgrade).await,
        }
    }

    /// Serves a cacheable GET/HEAD: from the cache, or fetched once and stored.
    async fn through_cache(
        &self,
        cache: &Cache,
        key: String,
        up: Upstream,
    ) -> (Response<ResponseBody>, Source) {
        let Upstream { mut out, body, .. } = up;
        // The cache reads and amends the response's map.
        out.raw_fields = false;
        if out.method == Method::HEAD {
            if let Some(entry) = cache.get(&key).await {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                return (entry.to_response(true, "HIT"), Source::Cache);
            }
            let (mut resp, source) = self.forward(out, body, None).await;
            resp.headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
            return (resp, source);
        }
        let retry = out.clone();
        let credentialed = crate::cache::CachePolicy::credentialed(&retry.headers);
        let fetch = async {
            let (mut resp, _) = self.forward(out, body, None).await;
            resp.headers_mut()
                .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
            resp
        };
        match cache.get_or_fetch(key, credentialed, fetch).await {
            Fetched::Hit(resp) => (resp, Source::Cache),
            Fetched::Stored(resp) | Fetched::Passed(resp) => (resp, Source::Backend),
            Fetched::GoUpstream => {
                let (mut resp, source) = self.forward(retry, RequestBody::empty(), None).await;
                resp.headers_mut()
                    .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
                (resp, source)
            }
        }
    }

    /// Picks a backend and forwards, retrying connect failures on other backends.
    async fn forward(
        &self,
        out: Outgoing,
        body: RequestBody,
        on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (Response<ResponseBody>, Source) {
        let log = (out.method.clone(), out.path.clone());
        let sent = self.dispatch.send(out, body, self.request_timeout).await;
        self.answer(sent, log, on_client_upgrade)
    }

    /// The client's answer to a send: the backend's response, or the error's. `log`: the
    /// request's method and path, for the log line of a failure (the head itself moved into
    /// the request).
    fn answer(
        &self,
        sent: Result<Sent, SendError>,
        (method, path): (Method, PathAndQuery),
        on_client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (Response<ResponseBody>, Source) {
        let err = match sent {
            Ok(sent) => {
                let resp = self.respond(sent.resp, sent.in_flight, on_client_upgrade);
                return (resp, Source::Backend);
            }
            Err(SendError::NoBackend) => ProxyError::NoBackend,
            Err(SendError::Client(fault)) => {
                debug!(
                    "{method} {path}: the client's request body failed: {}",
                    fault.code()
                );
                return self.client_fault(fault.into());
            }
            Err(SendError::Failed { backend, error }) => {
                warn!(
                    "{} {} via {} ({}) failed: {}",
                    method,
                    path,
                    backend.name,
                    backend.address,
                    error_chain(&error)
                );
                ProxyError::UpstreamFailed
            }
            Err(SendError::TimedOut { backend }) => {
                warn!(
                    "{} {} via {} ({}) timed out after {:?}",
                    method, path, backend.name, backend.address, self.request_timeout
                );
                ProxyError::UpstreamTimeout
            }
        };
        (err.response(), Source::Local)
    }

    /// Turns the upstream response into the client's; tunnels a protocol switch.
    fn respond(
        &self,
        mut resp: Response<UpstreamBody>,
        in_flight: InFlight,
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
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        // Any other head came from the upstream client without its hop-by-hop fields.
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            ResponseBody::Upstream {
                body,
                in_flight: Some(in_flight),
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

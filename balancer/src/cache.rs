//! Response cache for static resources.
//!
//! The policy ([`CachePolicy`]) is pure: which requests may be answered from the cache and
//! which responses may be stored, for how long (RFC 9111, shared-cache rules, simplified).
//! The store is a moka cache bounded both by entry count and by bytes: every entry weighs
//! `max(its size, CACHE_MAX_BYTES / CACHE_CAPACITY)`, so the total weight bound of
//! `CACHE_MAX_BYTES` caps the bytes *and* keeps the count at most `CACHE_CAPACITY`.
//! Concurrent misses for one key are coalesced (moka `try_get_with`): one request goes
//! upstream, the others wait for its result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use moka::Expiry;

use crate::body::ResponseBody;
use crate::config::CacheConfig;

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Pure caching rules.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    extensions: Vec<String>,
    default_ttl: Duration,
    max_ttl: Duration,
    max_object_bytes: u64,
    /// `CACHE_CREDENTIALED=always`: store answers to requests with credentials like any other.
    store_credentialed: bool,
}

fn cache_control_directives(
    headers: &HeaderMap,
) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    // Read lossily: a non-ASCII byte in one directive's value must not hide the others
    // (found by fuzzing: `private, x=\xff` was stored as if public).
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"').to_string())),
                None => (d, None),
            };
            Some((name.to_ascii_lowercase(), value))
        })
}

impl CachePolicy {
    pub fn new(cfg: &CacheConfig) -> CachePolicy {
        CachePolicy {
            extensions: cfg.extensions.clone(),
            default_ttl: cfg.default_ttl,
            max_ttl: cfg.max_ttl,
            max_object_bytes: cfg.max_object_bytes,
            store_credentialed: cfg.store_credentialed,
        }
    }

    /// Whether the path names a static resource (by extension of its last segment).
    /// (Searched as bytes: `rsplit` with a `char` pattern cost ~400 instructions per request
    /// on a plain path such as `/`.)
    pub fn is_static(&self, path: &str) -> bool {
        let path = path.as_bytes();
        let last = match path.iter().rposition(|b| *b == b'/') {
            Some(at) => &path[at + 1..],
            None => path,
        };
        match last.iter().rposition(|b| *b == b'.') {
            Some(dot) if last.len() > 1 => {
                let ext = &last[dot + 1..];
                self.extensions
                    .iter()
                    .any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
            }
            _ => false,
        }
    }

    /// The cache key for a request that may be served from the cache, or `None` when the
    /// request must bypass it (method, non-static path, credentials, `no-cache`/`no-store`).
    pub fn key(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        if (method != Method::GET && method != Method::HEAD) || !self.is_static(uri.path()) {
            return None;
        }
        if headers.contains_key(header::AUTHORIZATION) {
            return None;
        }
        // The client asks for a fresh answer: go upstream, past the cache (the stored entry
        // is left as it is; no conditional revalidation).
        let bypass = cache_control_directives(headers).any(|(n, v)| {
            n == "no-cache"
                || n == "no-store"
                || (n == "max-age" && v.and_then(|v| v.parse::<u64>().ok()) == Some(0))
        }) || headers
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        if bypass {
            return None;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let encoding = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        Some(format!(
            "{}\n{}\n{}",
            host.to_ascii_lowercase(),
            pq,
            encoding
        ))
    }

    /// Whether a request carries credentials (`Cookie`, `Authorization`): the answer to it
    /// may be personal, so it is stored only when the origin says it may be shared.
    pub fn credentialed(headers: &HeaderMap) -> bool {
        headers.contains_key(header::COOKIE) || headers.contains_key(header::AUTHORIZATION)
    }

    /// How long a response may be stored, or `None` if it must not be. The response to a
    /// `credentialed` request needs `public` or `s-maxage` (unless `CACHE_CREDENTIALED=always`).
    pub fn ttl(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        credentialed: bool,
    ) -> Option<Duration> {
        if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())?;
        if length > self.max_object_bytes {
            return None;
        }
        let varies_on_more = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|f| !f.trim().eq_ignore_ascii_case("accept-encoding") && !f.trim().is_empty());
        if varies_on_more {
            return None;
        }
        let mut max_age = None;
        let mut s_maxage = None;
        let mut public = false;
        for (name, value) in cache_control_directives(headers) {
            match name.as_str() {
                "no-store" | "private" | "no-cache" => return None,
                "max-age" => max_age = value.and_then(|v| v.parse::<u64>().ok()),
                "s-maxage" => s_maxage = value.and_then(|v| v.parse::<u64>().ok()),
                "public" => public = true,
                _ => {}
            }
        }
        if credentialed && !self.store_credentialed && !public && s_maxage.is_none() {
            return None;
        }
        let ttl = s_maxage
            .or(max_age)
            .map_or(self.default_ttl, Duration::from_secs)
            .min(self.max_ttl);
        (!ttl.is_zero()).then_some(ttl)
    }
}

/// A stored response.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored: Instant,
    pub ttl: Duration,
}

impl CachedResponse {
    fn weight_bytes(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() as u64 + headers as u64 + 128
    }

    /// Rebuilds the response (without a body for HEAD), with `Age` and `X-Cache`.
    pub fn to_response(&self, head: bool, x_cache: &'static str) -> Response<ResponseBody> {
        let body = if head {
            ResponseBody::empty()
        } else {
            ResponseBody::full(self.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        let age = self.stored.elapsed().as_secs();
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(x_cache));
        resp
    }
}

struct PerEntryTtl;

impl Expiry<String, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Why a coalesced fetch produced no entry.
enum NotStored {
    /// The response may not be cached: it is kept here for the request that fetched it.
    Uncacheable(Mutex<Option<Response<ResponseBody>>>),
}

/// Outcome of [`Cache::get_or_fetch`].
pub enum Fetched {
    /// Served from the cache (`X-Cache: HIT` already set).
    Hit(Response<ResponseBody>),
    /// This request fetched and stored the response (`X-Cache: MISS` already set).
    Stored(Response<ResponseBody>),
    /// This request fetched a response that was not stored: pass it on.
    Passed(Response<ResponseBody>),
    /// Another request's fetch turned out uncacheable: go upstream yourself.
    GoUpstream,
}

/// The cache store with hit/miss counters.
pub struct Cache {
    pub policy: CachePolicy,
    store: moka::future::Cache<String, Arc<CachedResponse>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Cache {
    /// `None` when the cache is disabled (`CACHE_CAPACITY=0`).
    pub fn new(cfg: &CacheConfig) -> Option<Cache> {
        if cfg.capacity == 0 || cfg.max_bytes == 0 {
            return None;
        }
        let min_weight = (cfg.max_bytes / cfg.capacity).max(1);
        let store = moka::future::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(move |_k: &String, v: &Arc<CachedResponse>| {
                u32::try_from(v.weight_bytes().max(min_weight)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Some(Cache {
            policy: CachePolicy::new(cfg),
            store,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }

    /// A fresh entry for `key`, if any.
    pub async fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.store.get(key).await
    }

    /// Answers a GET from the cache or fetches it once for all concurrent requests.
    pub async fn get_or_fetch<F>(&self, key: String, credentialed: bool, fetch: F) -> Fetched
    where
        F: std::future::Future<Output = Response<ResponseBody>>,
    {
        let fetched_here = AtomicBool::new(false);
        let result = self
            .store
            .try_get_with(key, async {
                fetched_here.store(true, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                let resp = fetch.await;
                match self.policy.ttl(resp.status(), resp.headers(), credentialed) {
                    Some(ttl) => self.buffer(resp, ttl).await,
                    None => Err(NotStored::Uncacheable(Mutex::new(Some(resp)))),
                }
            })
            .await;
        let mine = fetched_here.load(Ordering::Relaxed);
        match result {
            Ok(entry) if mine => Fetched::Stored(entry.to_response(false, "MISS")),
            Ok(entry) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Fetched::Hit(entry.to_response(false, "HIT"))
            }
            Err(shared) => {
                let NotStored::Uncacheable(slot) = &*shared;
                match slot.lock().ok().and_then(|mut s| s.take()) {
                    Some(resp) if mine => Fetched::Passed(resp),
                    _ => Fetched::GoUpstream,
                }
            }
        }
    }

    async fn buffer(
        &self,
        resp: Response<ResponseBody>,
        ttl: Duration,
    ) -> Result<Arc<CachedResponse>, NotStored> {
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(collected) => Ok(Arc::new(CachedResponse {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
                stored: Instant::now(),
                ttl,
            })),
            Err(e) => {
                log::warn!("upstream body failed while filling the cache: {e}");
                let resp = crate::error::ProxyError::UpstreamFailed.response();
                Err(NotStored::Uncacheable(Mutex::new(Some(resp))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::map as headers;

    fn policy() -> CachePolicy {
        CachePolicy {
            extensions: vec!["css".into(), "js".into(), "png".into()],
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_object_bytes: 1000,
            store_credentialed: false,
        }
    }

    #[test]
    fn static_detection() {
        let p = policy();
        assert!(p.is_static("/app.css"));
        assert!(p.is_static("/a/b/LOGO.PNG"));
        assert!(!p.is_static("/api/users"));
        assert!(!p.is_static("/css"));
        assert!(!p.is_static("/dir.css/page"));
        assert!(!p.is_static("/app.cssx"));
        assert!(!p.is_static("/"));
        assert!(!p.is_static(""));
        assert!(!p.is_static("/."));
        assert!(p.is_static("app.css"));
        assert!(p.is_static("/.css"));
    }

    #[test]
    fn request_keys_and_bypass() {
        let p = policy();
        let uri: Uri = "/app.css?v=2".parse().unwrap();
        let h = headers(&[("host", "Example.com"), ("accept-encoding", "gzip")]);
        assert_eq!(
            p.key(&Method::GET, &uri, &h).unwrap(),
            "example.com\n/app.css?v=2\ngzip"
        );
        assert_eq!(
            p.key(&Method::HEAD, &uri, &h),
            p.key(&Method::GET, &uri, &h)
        );
        assert!(p.key(&Method::POST, &uri, &h).is_none());
        assert!(p.key(&Method::GET, &"/api".parse().unwrap(), &h).is_none());
        for bypass in [
            ("authorization", "Bearer x"),
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0, no-store"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
        ] {
            assert!(
                p.key(&Method::GET, &uri, &headers(&[bypass])).is_none(),
                "{bypass:?}"
            );
        }
    }

    #[test]
    fn response_ttl_honours_cache_control() {
        let p = policy();
        let ok = StatusCode::OK;
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("content-length", "10")];
            pairs.extend_from_slice(extra);
            p.ttl(ok, &headers(&pairs), false)
        };
        assert_eq!(with(&[]), Some(Duration::from_secs(60)));
        assert_eq!(
            with(&[("cache-control", "public, max-age=120")]),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            with(&[("cache-control", "max-age=120, s-maxage=30")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            with(&[("cache-control", "max-age=999999")]),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(with(&[("cache-control", "max-age=0")]), None);
        assert_eq!(with(&[("cache-control", "no-store")]), None);
        assert_eq!(with(&[("cache-control", "private, max-age=60")]), None);
        assert_eq!(with(&[("cache-control", "no-cache")]), None);
        assert_eq!(with(&[("set-cookie", "a=b")]), None);
        assert_eq!(with(&[("vary", "Cookie")]), None);
        assert_eq!(
            with(&[("vary", "Accept-Encoding")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.ttl(
                StatusCode::NOT_FOUND,
                &headers(&[("content-length", "1")]),
                false
            ),
            None
        );
        assert_eq!(
            p.ttl(ok, &headers(&[("content-length", "1001")]), false),
            None,
            "too big"
        );
        assert_eq!(p.ttl(ok, &headers(&[]), false), None, "unknown length");
    }

    #[test]
    fn a_non_ascii_byte_does_not_hide_private() {
        // Regression: fuzz/artifacts/cache_policy (cargo-fuzz target `cache_policy`).
        let mut h = headers(&[("content-length", "10")]);
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"private, x=\xff").unwrap(),
        );
        assert_eq!(policy().ttl(StatusCode::OK, &h, false), None);
        let mut req = headers(&[]);
        req.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"no-cache, x=\xff").unwrap(),
        );
        assert!(policy()
            .key(&Method::GET, &"/a.css".parse().unwrap(), &req)
            .is_none());
    }

    #[test]
    fn answers_to_credentialed_requests_are_stored_only_when_shareable() {
        let mut p = policy();
        let ttl = |p: &CachePolicy, cc: Option<&str>| {
            let mut pairs = vec![("content-length", "10")];
            pairs.extend(cc.map(|v| ("cache-control", v)));
            p.ttl(StatusCode::OK, &headers(&pairs), true)
        };
        assert_eq!(ttl(&p, None), None, "no Cache-Control: may be personal");
        assert_eq!(ttl(&p, Some("max-age=60")), None);
        assert_eq!(ttl(&p, Some("public")), Some(Duration::from_secs(60)));
        assert_eq!(ttl(&p, Some("s-maxage=30")), Some(Duration::from_secs(30)));
        assert_eq!(ttl(&p, Some("public, private")), None);
        assert!(CachePolicy::credentialed(&headers(&[("cookie", "id=1")])));
        assert!(CachePolicy::credentialed(&headers(&[(
            "authorization",
            "x"
        )])));
        assert!(!CachePolicy::credentialed(&headers(&[("accept", "*/*")])));
        p.store_credentialed = true;
        assert_eq!(ttl(&p, None), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn concurrent_misses_fetch_once() {
        let cfg = CacheConfig {
            capacity: 10,
            max_bytes: 1 << 20,
            max_object_bytes: 1 << 10,
            store_credentialed: false,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(60),
            extensions: vec!["css".into()],
        };
        let cache = Arc::new(Cache::new(&cfg).unwrap());
        let fetches = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                let fetch = async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut r = Response::new(ResponseBody::full("body{}"));
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(6));
                    r
                };
                match cache.get_or_fetch("k".into(), false, fetch).await {
                    Fetched::Hit(r) | Fetched::Stored(r) => r.headers()["x-cache"].clone(),
                    _ => panic!("should be stored"),
                }
            }));
        }
        let mut misses = 0;
        for t in tasks {
            if t.await.unwrap() == "MISS" {
                misses += 1;
            }
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(misses, 1);
        assert!(cache.get("k").await.is_some());
    }
}

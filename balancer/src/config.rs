//! Typed configuration, parsed once from environment variables.
//!
//! Every variable name is a constant below. [`Config::from_lookup`] reads through a lookup
//! function so tests pass a map; it parses *every* variable before failing, so one run names
//! every bad value. The defaults are documented in `artefacts/configuration.md`.

use std::net::IpAddr;
use std::time::Duration;

use crate::selection::Strategy;
pub use protocol::config::{ConfigError, ConfigErrors};
use protocol::config::{Reader, Rules};
pub use protocol::redis_target::RedisTarget;

pub const HOST_PORT_HTTP_BALANCER: &str = "HOST_PORT_HTTP_BALANCER";
pub const HOST_PORT_ADMIN_BALANCER: &str = "HOST_PORT_ADMIN_BALANCER";
pub const BIND_ADDRESS: &str = "BIND_ADDRESS";
pub const DEPLOYMENT_AGENT_URL: &str = "DEPLOYMENT_AGENT_URL";
pub const AGENT_TOKEN: &str = "AGENT_TOKEN";
pub const STATIC_BACKENDS: &str = "STATIC_BACKENDS";
pub const BALANCER_STRATEGY: &str = "BALANCER_STRATEGY";
pub const BALANCER_ID: &str = "BALANCER_ID";
pub const REQUEST_TIMEOUT: &str = "REQUEST_TIMEOUT";
pub const CONNECT_TIMEOUT: &str = "CONNECT_TIMEOUT";
pub const CACHE_CAPACITY: &str = "CACHE_CAPACITY";
pub const CACHE_MAX_BYTES: &str = "CACHE_MAX_BYTES";
pub const CACHE_MAX_OBJECT_BYTES: &str = "CACHE_MAX_OBJECT_BYTES";
pub const CACHE_DEFAULT_TTL: &str = "CACHE_DEFAULT_TTL";
pub const CACHE_MAX_TTL: &str = "CACHE_MAX_TTL";
pub const CACHE_EXTENSIONS: &str = "CACHE_EXTENSIONS";
pub const MAX_BODY_BYTES: &str = "MAX_BODY_BYTES";
pub const MAX_HEADER_BYTES: &str = "MAX_HEADER_BYTES";
pub const HEADER_READ_TIMEOUT: &str = "HEADER_READ_TIMEOUT";
pub const MAX_HEADERS: &str = "MAX_HEADERS";
pub const H2_MAX_CONCURRENT_STREAMS: &str = "H2_MAX_CONCURRENT_STREAMS";
pub const H2_MAX_PENDING_RESET_STREAMS: &str = "H2_MAX_PENDING_RESET_STREAMS";
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: &str = "H2_MAX_LOCAL_ERROR_RESET_STREAMS";
pub const H2_MAX_SEND_BUF_BYTES: &str = "H2_MAX_SEND_BUF_BYTES";
pub const BUFFER_BODY_BYTES: &str = "BUFFER_BODY_BYTES";
pub const CLIENT_BODY_TIMEOUT: &str = "CLIENT_BODY_TIMEOUT";
pub const UPSTREAM_BUFFER_BYTES: &str = "UPSTREAM_BUFFER_BYTES";
pub const CACHE_CREDENTIALED: &str = "CACHE_CREDENTIALED";
pub const IDLE_TIMEOUT: &str = "IDLE_TIMEOUT";
pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
pub const SHUTDOWN_GRACE: &str = "SHUTDOWN_GRACE";
pub const RETRY_BUDGET: &str = "RETRY_BUDGET";
pub const EJECT_CONSECUTIVE_FAILURES: &str = "EJECT_CONSECUTIVE_FAILURES";
pub const EJECT_BASE: &str = "EJECT_BASE";
pub const EJECT_MAX: &str = "EJECT_MAX";
pub const REPORT_INTERVAL: &str = "REPORT_INTERVAL";
pub const AGENT_STALE_AFTER: &str = "AGENT_STALE_AFTER";
pub const RECONNECT_MAX: &str = "RECONNECT_MAX";
pub const WORKER_THREADS: &str = "WORKER_THREADS";
pub const RUNTIME_LAYOUT: &str = "RUNTIME_LAYOUT";
pub const APP_IDENTIFIER: &str = "APP_IDENTIFIER";
pub use protocol::redis_target::{REDIS_DB, REDIS_HOST, REDIS_PASSWORD, REDIS_PORT};
pub const TASK_PATH_PREFIX: &str = "TASK_PATH_PREFIX";
pub const TASK_WORKERS: &str = "TASK_WORKERS";
pub const TASK_MAX_ATTEMPTS: &str = "TASK_MAX_ATTEMPTS";
pub const TASK_RETRY_BASE: &str = "TASK_RETRY_BASE";
pub const TASK_RETRY_MAX: &str = "TASK_RETRY_MAX";
pub const TASK_LEASE: &str = "TASK_LEASE";
pub const TASK_TIMEOUT: &str = "TASK_TIMEOUT";
pub const TASK_RESULT_TTL: &str = "TASK_RESULT_TTL";
pub const TASK_MAX_BODY_BYTES: &str = "TASK_MAX_BODY_BYTES";
pub const TASK_MAX_RESULT_BYTES: &str = "TASK_MAX_RESULT_BYTES";
pub const TASK_IDEMPOTENCY_TTL: &str = "TASK_IDEMPOTENCY_TTL";
pub const TASK_CALLBACK_ALLOW: &str = "TASK_CALLBACK_ALLOW";
pub const TASK_MAX_WAIT: &str = "TASK_MAX_WAIT";

const DEFAULT_CACHE_EXTENSIONS: &str =
    "css,js,mjs,map,png,jpg,jpeg,gif,svg,ico,webp,avif,woff,woff2,ttf,otf,eot,txt,wasm";

/// The balancer's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind_address: IpAddr,
    pub http_port: u16,
    pub admin_port: u16,
    /// `None` when `DEPLOYMENT_AGENT_URL` is set to the empty string: static mode.
    pub agent_url: Option<String>,
    pub agent_token: Option<String>,
    /// `host:port` list used as the queue until (or instead of) the agent's.
    pub static_backends: Vec<String>,
    pub strategy: Strategy,
    pub balancer_id: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub cache: CacheConfig,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// Extra requests allowed as connect retries, as a fraction of requests.
    pub retry_budget: f64,
    pub ejection: EjectionConfig,
    pub report_interval: Duration,
    /// With no frame from the agent for this long, the connection is dropped and re-made.
    pub agent_stale_after: Duration,
    /// Cap of the reconnect back-off.
    pub reconnect_max: Duration,
    /// Tokio worker threads; `None` = the CPUs this process may run on (the binary fills
    /// it in; [`crate::run`] reads `None` as one).
    pub worker_threads: Option<usize>,
    /// How those threads serve the proxy listener (`RUNTIME_LAYOUT`).
    pub runtime_layout: RuntimeLayout,
    /// Redis for task submissions; `None` when `REDIS_HOST` is empty (tasks disabled).
    pub redis: Option<RedisTarget>,
    /// `APP_IDENTIFIER`: balancers of one app share one task queue (`rustybalancer:{app}:tasks:`).
    pub app: String,
    pub tasks: TaskConfig,
}

/// How the worker threads serve the proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeLayout {
    /// One current-thread runtime per worker thread, each accepting its own share of the
    /// proxy's connections (`SO_REUSEPORT`) and keeping its own upstream connections: no
    /// task or socket crosses threads on the request path.
    PerCore,
    /// One multi-thread (work-stealing) runtime for everything.
    Shared,
}

impl RuntimeLayout {
    fn parse(v: &str) -> Option<RuntimeLayout> {
        match v {
            "per-core" => Some(RuntimeLayout::PerCore),
            "shared" => Some(RuntimeLayout::Shared),
            _ => None,
        }
    }
}

/// Task submissions (`TASK_*`); see artefacts/tasks.md.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Reserved path prefix of the task API, `/_tasks` by default (no trailing slash).
    pub path_prefix: String,
    /// Concurrent task executions per balancer.
    pub workers: usize,
    /// Attempts in all (first try included) before a task is `dead`.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a running task's claim lasts without renewal before another balancer takes it.
    pub lease: Duration,
    /// Per-attempt limit (request sent to response body read).
    pub timeout: Duration,
    /// How long finished tasks and their results are kept.
    pub result_ttl: Duration,
    pub max_body_bytes: u64,
    pub max_result_bytes: u64,
    pub idempotency_ttl: Duration,
    /// Hosts (`host` or `host:port`, lower-case) callbacks may go to; empty = callbacks refused.
    pub callback_allow: Vec<String>,
    /// Cap of `Prefer: wait=N`.
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Maximum number of entries (`CACHE_CAPACITY`); 0 disables the cache.
    pub capacity: u64,
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Store answers to requests with `Cookie`/`Authorization` without `public`/`s-maxage`.
    pub store_credentialed: bool,
    /// Lower-case file extensions, without the dot, that mark a static resource.
    pub extensions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// Header fields per request, on HTTP/1.1 and HTTP/2 alike.
    pub max_headers: usize,
    /// Bodies up to this size are read before a backend connection is taken (0: never).
    pub buffer_body_bytes: u64,
    /// Longest wait for a client's body bytes (buffered: the whole body; streamed: the next
    /// bytes).
    pub client_body_timeout: Duration,
    /// Read buffer of each upstream connection: bounds a response head and the memory a
    /// slow reader pins.
    pub upstream_buffer_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once on one connection (advertised in
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before they are served (rapid reset,
    /// CVE-2023-44487); more gets the connection a GOAWAY (ENHANCE_YOUR_CALM).
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams the server may reset because of client errors before it sends a
    /// GOAWAY (ENHANCE_YOUR_CALM).
    pub h2_max_local_error_reset_streams: usize,
    /// Response bytes buffered per HTTP/2 stream waiting for the client's flow-control
    /// window: bounds what a slow (or zero-window) reader pins.
    pub h2_max_send_buf_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct EjectionConfig {
    /// Consecutive failures that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection period; doubles with every ejection in a row.
    pub base: Duration,
    pub max: Duration,
}

fn parse_backend_list(v: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, port) = part.rsplit_once(':')?;
        if host.is_empty() || port.parse::<u16>().ok()? == 0 {
            return None;
        }
        out.push(part.to_string());
    }
    Some(out)
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every variable through `lookup`, reporting every bad one at once.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader::new(&lookup);
        let bind_address = r.get(
            BIND_ADDRESS,
            IpAddr::from([0, 0, 0, 0]),
            "an IP address",
            |v| v.parse().ok(),
        );
        let http_port = r.port(HOST_PORT_HTTP_BALANCER, 2548);
        let admin_port = r.port(HOST_PORT_ADMIN_BALANCER, 2549);
        let agent_url = match r.verbatim(DEPLOYMENT_AGENT_URL) {
            None => Some("ws://deployment-agent:2547/ws".to_string()),
            Some(v) if v.is_empty() => None,
            Some(v) if v.starts_with("ws://") || v.starts_with("wss://") => Some(v),
            Some(v) => {
                r.fail(
                    DEPLOYMENT_AGENT_URL,
                    format!("expected a ws:// or wss:// URL (or empty for none), got {v:?}"),
                );
                None
            }
        };
        let agent_token = r.raw(AGENT_TOKEN).filter(|t| !t.is_empty());
        let static_backends = r.get(
            STATIC_BACKENDS,
            Vec::new(),
            "a comma-separated list of host:port",
            parse_backend_list,
        );
        let strategy = r.get(
            BALANCER_STRATEGY,
            Strategy::Weighted,
            "one of weighted, round_robin, p2c",
            |v| v.parse().ok(),
        );
        let balancer_id = r
            .raw(BALANCER_ID)
            .filter(|v| !v.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("balancer-{}", std::process::id()));
        let request_timeout = r.duration(REQUEST_TIMEOUT, Duration::from_secs(30));
        let connect_timeout = r.duration(CONNECT_TIMEOUT, Duration::from_secs(3));
        let cache = CacheConfig {
            capacity: r.count(CACHE_CAPACITY, 10_000, 0),
            max_bytes: r.bytes(CACHE_MAX_BYTES, 64 << 20),
            max_object_bytes: r.bytes(CACHE_MAX_OBJECT_BYTES, 1 << 20),
            default_ttl: r.duration(CACHE_DEFAULT_TTL, Duration::from_secs(60)),
            max_ttl: r.duration(CACHE_MAX_TTL, Duration::from_secs(86_400)),
            store_credentialed: r.get(
                CACHE_CREDENTIALED,
                false,
                "explicit (store answers to requests with Cookie or Authorization only when public or s-maxage) or always",
                |v| match v {
                    "explicit" => Some(false),
                    "always" => Some(true),
                    _ => None,
                },
            ),
            extensions: r.get(
                CACHE_EXTENSIONS,
                split_extensions(DEFAULT_CACHE_EXTENSIONS),
                "a comma-separated list of file extensions",
                |v| Some(split_extensions(v)),
            ),
        };
        let limits = Limits {
            max_body_bytes: r.bytes(MAX_BODY_BYTES, 10 << 20),
            max_header_bytes: r.bytes(MAX_HEADER_BYTES, 32 << 10) as usize,
            max_headers: r.count(MAX_HEADERS, 100, 1) as usize,
            buffer_body_bytes: r.bytes(BUFFER_BODY_BYTES, 64 << 10),
            client_body_timeout: r.positive_duration(CLIENT_BODY_TIMEOUT, Duration::from_secs(30)),
            upstream_buffer_bytes: r.bytes(UPSTREAM_BUFFER_BYTES, 16 << 10) as usize,
            header_read_timeout: r.duration(HEADER_READ_TIMEOUT, Duration::from_secs(10)),
            idle_timeout: r.duration(IDLE_TIMEOUT, Duration::from_secs(60)),
            max_connections: r.count(MAX_CONNECTIONS, 10_000, 1) as usize,
            h2_max_concurrent_streams: r.count(H2_MAX_CONCURRENT_STREAMS, 256, 1),
            h2_max_pending_reset_streams: r.count(H2_MAX_PENDING_RESET_STREAMS, 20, 1),
            h2_max_local_error_reset_streams: r.count(H2_MAX_LOCAL_ERROR_RESET_STREAMS, 1024, 1),
            h2_max_send_buf_bytes: r.bytes(H2_MAX_SEND_BUF_BYTES, 64 << 10).max(1) as usize,
        };
        let shutdown_grace = r.duration(SHUTDOWN_GRACE, Duration::from_secs(30));
        let retry_budget = r.get(RETRY_BUDGET, 0.2, "a number between 0 and 1", |v| {
            v.parse::<f64>().ok().filter(|x| (0.0..=1.0).contains(x))
        });
        let ejection = EjectionConfig {
            consecutive_failures: r.count(EJECT_CONSECUTIVE_FAILURES, 5, 1) as u32,
            base: r.duration(EJECT_BASE, Duration::from_secs(10)),
            max: r.duration(EJECT_MAX, Duration::from_secs(300)),
        };
        let report_interval = r.duration(REPORT_INTERVAL, Duration::from_secs(1));
        let agent_stale_after = r.duration(AGENT_STALE_AFTER, Duration::from_secs(15));
        let reconnect_max = r.duration(RECONNECT_MAX, Duration::from_secs(30));
        let worker_threads = match r.count(WORKER_THREADS, 0, 0) {
            0 => None,
            n => Some(n as usize),
        };
        let runtime_layout = r.get(
            RUNTIME_LAYOUT,
            RuntimeLayout::PerCore,
            "one of per-core, shared",
            RuntimeLayout::parse,
        );
        let redis = RedisTarget::read(&mut r);
        let app = r.get(
            APP_IDENTIFIER,
            "RUSTYBALANCER".to_string(),
            "letters, digits, '.', '_' or '-'",
            |v| {
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .then(|| v.to_string())
            },
        );
        let tasks = read_tasks(&mut r);
        let config = Config {
            bind_address,
            http_port,
            admin_port,
            agent_url,
            agent_token,
            static_backends,
            strategy,
            balancer_id,
            request_timeout,
            connect_timeout,
            cache,
            limits,
            shutdown_grace,
            retry_budget,
            ejection,
            report_interval,
            agent_stale_after,
            reconnect_max,
            worker_threads,
            runtime_layout,
            redis,
            app,
            tasks,
        };
        let cross_field = config.validate();
        r.finish(config, cross_field)
    }

    /// Cross-field rules.
    fn validate(&self) -> Vec<ConfigError> {
        let mut rules = Rules::default();
        rules.check(
            self.http_port == 0 || self.http_port != self.admin_port,
            HOST_PORT_ADMIN_BALANCER,
            "must differ from HOST_PORT_HTTP_BALANCER",
        );
        rules.check(
            !self.request_timeout.is_zero(),
            REQUEST_TIMEOUT,
            "must be greater than zero",
        );
        rules.check(
            !self.connect_timeout.is_zero(),
            CONNECT_TIMEOUT,
            "must be greater than zero",
        );
        rules.check(
            self.ejection.base <= self.ejection.max,
            EJECT_MAX,
            "must be at least EJECT_BASE",
        );
        rules.check(
            !self.report_interval.is_zero(),
            REPORT_INTERVAL,
            "must be greater than zero",
        );
        rules.check(
            self.cache.max_object_bytes <= self.cache.max_bytes,
            CACHE_MAX_OBJECT_BYTES,
            "must not exceed CACHE_MAX_BYTES",
        );
        rules.check(
            self.limits.upstream_buffer_bytes >= crate::upstream::MIN_BUFFER_BYTES,
            UPSTREAM_BUFFER_BYTES,
            "must be at least 8KiB",
        );
        rules.check(
            self.limits.max_header_bytes >= 8192,
            MAX_HEADER_BYTES,
            "must be at least 8KiB",
        );
        rules.check(
            self.agent_url.is_some() || !self.static_backends.is_empty(),
            STATIC_BACKENDS,
            "required when DEPLOYMENT_AGENT_URL is empty (no agent and no backends)",
        );
        let t = &self.tasks;
        rules.check(
            t.retry_base <= t.retry_max,
            TASK_RETRY_MAX,
            "must be at least TASK_RETRY_BASE",
        );
        rules.check(
            t.lease >= Duration::from_secs(1),
            TASK_LEASE,
            "must be at least 1s",
        );
        rules.into_errors()
    }
}

fn read_tasks<F: Fn(&str) -> Option<String>>(r: &mut Reader<'_, F>) -> TaskConfig {
    TaskConfig {
        path_prefix: r.get(
            TASK_PATH_PREFIX,
            "/_tasks".to_string(),
            "a path such as /_tasks (starts with '/', no '?', '#' or spaces)",
            |v| {
                let p = v.trim_end_matches('/');
                (p.starts_with('/')
                    && p.len() > 1
                    && !p.contains(|c: char| c.is_whitespace() || matches!(c, '?' | '#')))
                .then(|| p.to_string())
            },
        ),
        workers: r.count(TASK_WORKERS, 32, 1),
        max_attempts: r.count(TASK_MAX_ATTEMPTS, 5, 1),
        retry_base: r.positive_duration(TASK_RETRY_BASE, Duration::from_secs(1)),
        retry_max: r.positive_duration(TASK_RETRY_MAX, Duration::from_secs(300)),
        lease: r.positive_duration(TASK_LEASE, Duration::from_secs(30)),
        timeout: r.positive_duration(TASK_TIMEOUT, Duration::from_secs(60)),
        result_ttl: r.positive_duration(TASK_RESULT_TTL, Duration::from_secs(86_400)),
        max_body_bytes: r.bytes(TASK_MAX_BODY_BYTES, 8 << 20),
        max_result_bytes: r.bytes(TASK_MAX_RESULT_BYTES, 8 << 20),
        idempotency_ttl: r.positive_duration(TASK_IDEMPOTENCY_TTL, Duration::from_secs(86_400)),
        callback_allow: r.get(
            TASK_CALLBACK_ALLOW,
            Vec::new(),
            "a comma-separated list of host or host:port",
            |v| {
                let hosts: Vec<String> = v
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect();
                hosts
                    .iter()
                    .all(|h| !h.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '@')))
                    .then_some(hosts)
            },
        ),
        max_wait: r.positive_duration(TASK_MAX_WAIT, Duration::from_secs(30)),
    }
}

fn split_extensions(v: &str) -> Vec<String> {
    v.split(',')
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_brief() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http_port, 2548);
        assert_eq!(c.admin_port, 2549);
        assert_eq!(
            c.agent_url.as_deref(),
            Some("ws://deployment-agent:2547/ws")
        );
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.cache.capacity, 10_000);
        assert_eq!(c.strategy, Strategy::Weighted);
        assert_eq!(c.runtime_layout, RuntimeLayout::PerCore);
        assert_eq!(c.worker_threads, None);
        assert!(c.cache.extensions.contains(&"css".to_string()));
        assert_eq!(
            c.redis.as_ref().map(RedisTarget::url).as_deref(),
            Some("redis://redis:6379/0")
        );
        assert_eq!(c.app, "RUSTYBALANCER");
        let t = &c.tasks;
        assert_eq!(t.path_prefix, "/_tasks");
        assert_eq!((t.workers, t.max_attempts), (32, 5));
        assert_eq!((t.retry_base.as_secs(), t.retry_max.as_secs()), (1, 300));
        assert_eq!((t.lease.as_secs(), t.timeout.as_secs()), (30, 60));
        assert_eq!(t.result_ttl.as_secs(), 86_400);
        assert_eq!((t.max_body_bytes, t.max_result_bytes), (8 << 20, 8 << 20));
        assert_eq!(t.idempotency_ttl.as_secs(), 86_400);
        assert!(t.callback_allow.is_empty());
        let l = &c.limits;
        assert_eq!(l.h2_max_concurrent_streams, 256);
        assert_eq!(l.h2_max_pending_reset_streams, 20);
        assert_eq!(l.h2_max_local_error_reset_streams, 1024);
        assert_eq!(l.h2_max_send_buf_bytes, 64 << 10);
    }

    #[test]
    fn runtime_layout() {
        let c = parse(&[(RUNTIME_LAYOUT, "shared"), (WORKER_THREADS, "3")]).unwrap();
        assert_eq!(
            (c.runtime_layout, c.worker_threads),
            (RuntimeLayout::Shared, Some(3))
        );
        let err = parse(&[(RUNTIME_LAYOUT, "per-thread")]).unwrap_err();
        assert_eq!(err.variables(), [RUNTIME_LAYOUT]);
    }

    #[test]
    fn h2_limits() {
        let c = parse(&[
            (H2_MAX_CONCURRENT_STREAMS, "10"),
            (H2_MAX_PENDING_RESET_STREAMS, "5"),
            (H2_MAX_LOCAL_ERROR_RESET_STREAMS, "50"),
            (H2_MAX_SEND_BUF_BYTES, "16KiB"),
        ])
        .unwrap();
        let l = &c.limits;
        assert_eq!(l.h2_max_concurrent_streams, 10);
        assert_eq!(l.h2_max_pending_reset_streams, 5);
        assert_eq!(l.h2_max_local_error_reset_streams, 50);
        assert_eq!(l.h2_max_send_buf_bytes, 16 << 10);
        let err = parse(&[
            (H2_MAX_CONCURRENT_STREAMS, "0"),
            (H2_MAX_PENDING_RESET_STREAMS, "-1"),
            (H2_MAX_LOCAL_ERROR_RESET_STREAMS, "x"),
            (H2_MAX_SEND_BUF_BYTES, "lots"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            H2_MAX_CONCURRENT_STREAMS,
            H2_MAX_PENDING_RESET_STREAMS,
            H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            H2_MAX_SEND_BUF_BYTES,
        ] {
            assert!(err.contains(name), "{name} not reported: {err}");
        }
    }

    #[test]
    fn task_settings() {
        let c = parse(&[
            (REDIS_HOST, ""),
            (TASK_PATH_PREFIX, "/jobs/"),
            (TASK_CALLBACK_ALLOW, "Hooks.example.com, 10.0.0.1:8080"),
        ])
        .unwrap();
        assert!(c.redis.is_none());
        assert_eq!(c.tasks.path_prefix, "/jobs");
        assert_eq!(
            c.tasks.callback_allow,
            ["hooks.example.com", "10.0.0.1:8080"]
        );
        let err = parse(&[
            (TASK_PATH_PREFIX, "jobs"),
            (TASK_WORKERS, "0"),
            (TASK_RETRY_BASE, "10m"),
            (TASK_RETRY_MAX, "1m"),
            (TASK_LEASE, "500ms"),
        ])
        .unwrap_err();
        assert_eq!(
            err.variables(),
            [TASK_PATH_PREFIX, TASK_WORKERS, TASK_RETRY_MAX, TASK_LEASE]
        );
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let err = parse(&[
            (HOST_PORT_HTTP_BALANCER, "99999"),
            (REQUEST_TIMEOUT, "soon"),
            (BALANCER_STRATEGY, "fastest"),
            (DEPLOYMENT_AGENT_URL, "http://x"),
            (MAX_BODY_BYTES, "10 parsecs"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err.0.iter().map(|e| e.variable).collect();
        assert_eq!(
            vars,
            [
                HOST_PORT_HTTP_BALANCER,
                DEPLOYMENT_AGENT_URL,
                BALANCER_STRATEGY,
                REQUEST_TIMEOUT,
                MAX_BODY_BYTES,
                STATIC_BACKENDS
            ]
        );
        let line = err.to_string();
        assert!(
            line.contains("REQUEST_TIMEOUT: expected a duration"),
            "{line}"
        );
    }

    #[test]
    fn cross_field_rules() {
        let err = parse(&[
            (HOST_PORT_HTTP_BALANCER, "80"),
            (HOST_PORT_ADMIN_BALANCER, "80"),
            (EJECT_BASE, "10m"),
            (EJECT_MAX, "1m"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err.0.iter().map(|e| e.variable).collect();
        assert_eq!(vars, [HOST_PORT_ADMIN_BALANCER, EJECT_MAX]);
    }

    #[test]
    fn static_mode_needs_backends() {
        assert!(parse(&[(DEPLOYMENT_AGENT_URL, "")]).is_err());
        let c = parse(&[
            (DEPLOYMENT_AGENT_URL, ""),
            (STATIC_BACKENDS, "127.0.0.1:8080, backend:9000"),
        ])
        .unwrap();
        assert!(c.agent_url.is_none());
        assert_eq!(c.static_backends, ["127.0.0.1:8080", "backend:9000"]);
        assert!(parse(&[(STATIC_BACKENDS, "nohost")]).is_err());
        assert!(parse(&[(STATIC_BACKENDS, "h:0")]).is_err());
    }

    #[test]
    fn extensions_are_normalised() {
        let c = parse(&[(CACHE_EXTENSIONS, " .CSS, js ,,png")]).unwrap();
        assert_eq!(c.cache.extensions, ["css", "js", "png"]);
    }
}

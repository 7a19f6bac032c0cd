//! balancer::config::Config::from_lookup with variable values from the input.
//! Input: lines; the first byte of a line picks a variable, the rest is its value.
//! Asserts: never panics; an Ok config satisfies the documented per-field and cross-field
//! rules (src/config.rs `validate`).
#![no_main]
use std::collections::HashMap;
use std::time::Duration;

use balancer::config::*;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 58] = [
    HOST_PORT_HTTP_BALANCER,
    HOST_PORT_ADMIN_BALANCER,
    BIND_ADDRESS,
    DEPLOYMENT_AGENT_URL,
    AGENT_TOKEN,
    STATIC_BACKENDS,
    BALANCER_STRATEGY,
    BALANCER_ID,
    REQUEST_TIMEOUT,
    CONNECT_TIMEOUT,
    CACHE_CAPACITY,
    CACHE_MAX_BYTES,
    CACHE_MAX_OBJECT_BYTES,
    CACHE_DEFAULT_TTL,
    CACHE_MAX_TTL,
    CACHE_EXTENSIONS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    HEADER_READ_TIMEOUT,
    MAX_HEADERS,
    BUFFER_BODY_BYTES,
    CLIENT_BODY_TIMEOUT,
    UPSTREAM_BUFFER_BYTES,
    CACHE_CREDENTIALED,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    SHUTDOWN_GRACE,
    RETRY_BUDGET,
    EJECT_CONSECUTIVE_FAILURES,
    EJECT_BASE,
    EJECT_MAX,
    REPORT_INTERVAL,
    AGENT_STALE_AFTER,
    RECONNECT_MAX,
    WORKER_THREADS,
    APP_IDENTIFIER,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PASSWORD,
    REDIS_PORT,
    TASK_PATH_PREFIX,
    TASK_WORKERS,
    TASK_MAX_ATTEMPTS,
    TASK_RETRY_BASE,
    TASK_RETRY_MAX,
    TASK_LEASE,
    TASK_TIMEOUT,
    TASK_RESULT_TTL,
    TASK_MAX_BODY_BYTES,
    TASK_MAX_RESULT_BYTES,
    TASK_IDEMPOTENCY_TTL,
    TASK_CALLBACK_ALLOW,
    TASK_MAX_WAIT,
    // Repeated so the fuzzer reaches the cross-field pairs more often.
    CACHE_MAX_OBJECT_BYTES,
    EJECT_MAX,
    TASK_RETRY_MAX,
    DEPLOYMENT_AGENT_URL,
    STATIC_BACKENDS,
];

fuzz_target!(|data: &[u8]| {
    let mut env: HashMap<&str, String> = HashMap::new();
    // A fixed id: without one, from_lookup reads /etc/hostname on every run.
    env.insert(BALANCER_ID, "fuzz".into());
    for line in data.split(|b| *b == b'\n') {
        let Some((k, v)) = line.split_first() else {
            continue;
        };
        env.insert(
            NAMES[usize::from(*k) % NAMES.len()],
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    let Ok(c) = Config::from_lookup(|name| env.get(name).cloned()) else {
        return;
    };

    assert!(c.http_port == 0 || c.http_port != c.admin_port);
    assert!(!c.request_timeout.is_zero());
    assert!(!c.connect_timeout.is_zero());
    assert!(c.ejection.base <= c.ejection.max);
    assert!(c.ejection.consecutive_failures >= 1);
    assert!(!c.report_interval.is_zero());
    assert!(c.cache.max_object_bytes <= c.cache.max_bytes);
    assert!(c.limits.upstream_buffer_bytes >= 8192);
    assert!(c.limits.max_header_bytes >= 8192);
    assert!(c.limits.max_headers >= 1);
    assert!(c.limits.max_connections >= 1);
    assert!(!c.limits.client_body_timeout.is_zero());
    assert!((0.0..=1.0).contains(&c.retry_budget));
    assert!(c.agent_url.is_some() || !c.static_backends.is_empty());
    if let Some(u) = &c.agent_url {
        assert!(u.starts_with("ws://") || u.starts_with("wss://"), "{u}");
    }
    for b in &c.static_backends {
        let (host, port) = b.rsplit_once(':').expect("host:port");
        assert!(
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
            "{b}"
        );
    }
    assert!(c.agent_token.as_deref().is_none_or(|t| !t.is_empty()));
    assert!(!c.balancer_id.is_empty());
    assert!(c.worker_threads.is_none_or(|n| n >= 1));
    assert!(
        c.app
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')),
        "{}",
        c.app
    );
    let t = &c.tasks;
    assert!(t.retry_base <= t.retry_max);
    assert!(!t.retry_base.is_zero());
    assert!(t.lease >= Duration::from_secs(1));
    assert!(!t.timeout.is_zero() && !t.result_ttl.is_zero() && !t.idempotency_ttl.is_zero());
    assert!(t.workers >= 1 && t.max_attempts >= 1);
    let p = &t.path_prefix;
    assert!(
        p.starts_with('/') && p.len() > 1 && !p.ends_with('/'),
        "{p:?}"
    );
    assert!(
        !p.contains(|ch: char| ch.is_whitespace() || matches!(ch, '?' | '#')),
        "{p:?}"
    );
    for h in &t.callback_allow {
        assert!(!h.is_empty() && *h == h.to_ascii_lowercase(), "{h:?}");
    }
    if let Some(r) = &c.redis {
        assert!(!r.host.is_empty());
        let _ = r.url();
    }
});

//! deployment_agent::config::Config::from_lookup with variable values from the input.
//! Input: lines; the first byte of a line picks a variable, the rest is its value.
//! Asserts: never panics; an Ok config satisfies the documented per-field and cross-field
//! rules (src/config.rs `validate` and the field docs).
#![no_main]
use std::collections::HashMap;
use std::time::Duration;

use deployment_agent::config::*;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 60] = [
    HOST_PORT_WS_DEPLOYMENT_AGENT,
    HOST_PORT_HTTP_DEPLOYMENT_AGENT,
    BIND_ADDRESS,
    AGENT_TOKEN,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PASSWORD,
    REDIS_PORT,
    DOCKER_HOST,
    DOCKER_IMAGE,
    TARGET_PORT,
    DOCKER_NETWORK,
    APP_IDENTIFIER,
    CONTAINER_NAME_PREFIX,
    CONTAINER_CPUS,
    CONTAINER_MEMORY,
    CONTAINER_ENV,
    DEFAULT_CONTAINER,
    MAX_CONTAINERS,
    HIGH_LOAD_THRESHOLD,
    LOW_LOAD_THRESHOLD,
    CRITICAL_LOAD_THRESHOLD,
    COOLDOWN_PERIOD,
    SCALE_STEP,
    SCALE_CHECK_PERIOD,
    SCALE_DOWN_STABILIZATION,
    TARGET_CONCURRENCY,
    TARGET_QUEUE_PER_CONTAINER,
    STABLE_WINDOW,
    PANIC_WINDOW,
    PANIC_THRESHOLD,
    SCALE_TOLERANCE,
    SCALE_UP_RATE,
    SCALE_DOWN_RATE,
    HOST_SATURATION,
    SCORE_POWER,
    CPU_WEIGHT,
    MEMORY_WEIGHT,
    NETWORK_WEIGHT,
    AVAILABILITY_WEIGHT,
    HISTORY_SIZE,
    BEST_TIME_WINDOW,
    EMA_ALPHA,
    LU_THRESHOLD,
    MU_THRESHOLD,
    NETWORK_CAPACITY,
    SAMPLE_PERIOD,
    PROBE_PATH,
    PROBE_TIMEOUT,
    READY_TIMEOUT,
    DRAIN_TIMEOUT,
    STOP_TIMEOUT,
    QUEUE_KEEPALIVE,
    EVENTS_MAX,
    IMAGE_PULL_RETRIES,
    // Repeated so the fuzzer reaches the cross-field pairs more often.
    CPU_WEIGHT,
    SCORE_POWER,
    HIGH_LOAD_THRESHOLD,
    MAX_CONTAINERS,
    PANIC_WINDOW,
];

fuzz_target!(|data: &[u8]| {
    let mut env: HashMap<&str, String> = HashMap::new();
    // The two required variables, so that most inputs reach the cross-field rules.
    env.insert(DOCKER_IMAGE, "app:latest".into());
    env.insert(TARGET_PORT, "5000".into());
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

    assert!(c.ws_port == 0 || c.ws_port != c.http_port);
    assert!(!c.image.is_empty() && !c.image.chars().any(char::is_whitespace));
    assert!(c.target_port != 0);
    assert!(c
        .app
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')));
    let p = &c.container.name_prefix;
    assert!(
        p.starts_with(|ch: char| ch.is_ascii_alphanumeric()),
        "{p:?}"
    );
    assert!(c.container.cpus.is_none_or(|x| x.is_finite() && x > 0.0));
    assert!(c
        .container
        .memory_bytes
        .is_none_or(|m| m >= MIN_CONTAINER_MEMORY));
    let s = &c.scaling;
    assert!(s.min_containers >= 1 && s.max_containers >= s.min_containers);
    assert!(s.step >= 1);
    assert!(!s.check_period.is_zero());
    assert!(s.panic_window <= s.stable_window && !s.panic_window.is_zero());
    assert!(s.critical_threshold <= s.high_threshold);
    assert!(s.high_threshold < s.low_threshold);
    for x in [s.high_threshold, s.low_threshold, s.critical_threshold] {
        assert!((0.0..=100.0).contains(&x));
    }
    assert!((1.0..=1000.0).contains(&s.panic_threshold));
    assert!((0.0..=0.99).contains(&s.tolerance));
    assert!(s.up_rate >= 1.0 && s.down_rate >= 1.0);
    assert!((0.0..=1.0).contains(&s.host_saturation));
    assert!(s
        .target_concurrency
        .is_none_or(|x| x.is_finite() && x > 0.0));
    assert!(s.target_queue.is_none_or(|x| x.is_finite() && x > 0.0));
    assert_eq!(s.cpu_limit, c.container.cpus);
    if let Some(t) = s.cpu_target {
        assert!((0.05..=1.0).contains(&t), "cpu_target {t}");
    }
    let sc = &c.scoring;
    let w = sc.weights;
    for x in [w.cpu, w.memory, w.network, w.availability] {
        assert!(x.is_finite() && x >= 0.0);
    }
    assert!(w.sum() > 0.0, "{w:?}");
    assert!(sc.history_size >= 2 && sc.best_window >= 1 && sc.best_window <= sc.history_size);
    assert!(sc.ema_alpha > 0.0 && sc.ema_alpha <= 1.0);
    assert!(sc.mu_threshold < sc.lu_threshold);
    assert!(sc.network_capacity_bps > 0.0);
    assert!((1.0..=64.0).contains(&sc.power));
    assert!(sc.failure_ms > 0.0);
    assert!(!c.sample_period.is_zero());
    assert!(c.probe_path.starts_with('/') && !c.probe_path.chars().any(char::is_whitespace));
    assert!(!c.probe_timeout.is_zero() && !c.ready_timeout.is_zero() && !c.drain_timeout.is_zero());
    assert!(!c.queue_keepalive.is_zero() && c.queue_keepalive <= Duration::from_secs(5));
    assert!(c.events_max >= 10);
    assert!(!c.redis.host.is_empty());
    let _ = c.redis_url();
});

//! Typed configuration of the deployment-agent, parsed once from environment variables.
//!
//! Every variable name is a constant below. [`Config::from_lookup`] reads through a lookup
//! function so tests pass a map; it parses *every* variable before failing, so one run names
//! every bad value (one line each, see [`ConfigErrors`]). Cross-field rules live in
//! `validate()`. Durations accept `30`, `30s`, `500ms`, `2m`, `1h`; sizes accept `1048576`,
//! `256MiB`, `125MB` (see [`protocol::units`]). An empty value counts as unset.
//!
//! Notes on some choices:
//! - The score weights need not add up to 1: the overall score divides by their sum
//!   (see [`crate::scoring::overall`]), so `CPU_WEIGHT=2 MEMORY_WEIGHT=1 …` works as expected.
//! - `SCALE_DOWN_STABILIZATION` (default 60 s) is how long the pool must stay under-loaded
//!   before the first scale-down step; Kubernetes' HPA uses 300 s for the same purpose. A short
//!   window reacts faster, a long one avoids flapping on bursty traffic.
//! - `NETWORK_CAPACITY` is the traffic (bytes per second, received + sent) that counts as
//!   100 % network use; the default 125 MB/s is 1 Gbit/s.

use std::net::IpAddr;
use std::time::Duration;

pub use protocol::config::{ConfigError, ConfigErrors};
use protocol::config::{Reader, Rules};
use protocol::redis_target::RedisTarget;
use protocol::units::{parse_bytes, parse_duration};

pub const HOST_PORT_WS_DEPLOYMENT_AGENT: &str = "HOST_PORT_WS_DEPLOYMENT_AGENT";
pub const HOST_PORT_HTTP_DEPLOYMENT_AGENT: &str = "HOST_PORT_HTTP_DEPLOYMENT_AGENT";
pub const BIND_ADDRESS: &str = "BIND_ADDRESS";
pub const AGENT_TOKEN: &str = "AGENT_TOKEN";
pub use protocol::redis_target::{REDIS_DB, REDIS_HOST, REDIS_PASSWORD, REDIS_PORT};
pub const DOCKER_HOST: &str = "DOCKER_HOST";
pub const DOCKER_IMAGE: &str = "DOCKER_IMAGE";
pub const TARGET_PORT: &str = "TARGET_PORT";
pub const DOCKER_NETWORK: &str = "DOCKER_NETWORK";
pub const APP_IDENTIFIER: &str = "APP_IDENTIFIER";
pub const CONTAINER_NAME_PREFIX: &str = "CONTAINER_NAME_PREFIX";
pub const CONTAINER_CPUS: &str = "CONTAINER_CPUS";
pub const CONTAINER_MEMORY: &str = "CONTAINER_MEMORY";
pub const CONTAINER_ENV: &str = "CONTAINER_ENV";
pub const DEFAULT_CONTAINER: &str = "DEFAULT_CONTAINER";
pub const MAX_CONTAINERS: &str = "MAX_CONTAINERS";
pub const HIGH_LOAD_THRESHOLD: &str = "HIGH_LOAD_THRESHOLD";
pub const LOW_LOAD_THRESHOLD: &str = "LOW_LOAD_THRESHOLD";
pub const CRITICAL_LOAD_THRESHOLD: &str = "CRITICAL_LOAD_THRESHOLD";
pub const COOLDOWN_PERIOD: &str = "COOLDOWN_PERIOD";
pub const SCALE_STEP: &str = "SCALE_STEP";
pub const SCALE_CHECK_PERIOD: &str = "SCALE_CHECK_PERIOD";
pub const SCALE_DOWN_STABILIZATION: &str = "SCALE_DOWN_STABILIZATION";
pub const TARGET_CONCURRENCY: &str = "TARGET_CONCURRENCY";
pub const TARGET_QUEUE_PER_CONTAINER: &str = "TARGET_QUEUE_PER_CONTAINER";
pub const STABLE_WINDOW: &str = "STABLE_WINDOW";
pub const PANIC_WINDOW: &str = "PANIC_WINDOW";
pub const PANIC_THRESHOLD: &str = "PANIC_THRESHOLD";
pub const SCALE_TOLERANCE: &str = "SCALE_TOLERANCE";
pub const SCALE_UP_RATE: &str = "SCALE_UP_RATE";
pub const SCALE_DOWN_RATE: &str = "SCALE_DOWN_RATE";
pub const HOST_SATURATION: &str = "HOST_SATURATION";
pub const SCORE_POWER: &str = "SCORE_POWER";
pub const CPU_WEIGHT: &str = "CPU_WEIGHT";
pub const MEMORY_WEIGHT: &str = "MEMORY_WEIGHT";
pub const NETWORK_WEIGHT: &str = "NETWORK_WEIGHT";
pub const AVAILABILITY_WEIGHT: &str = "AVAILABILITY_WEIGHT";
pub const HISTORY_SIZE: &str = "HISTORY_SIZE";
pub const BEST_TIME_WINDOW: &str = "BEST_TIME_WINDOW";
pub const EMA_ALPHA: &str = "EMA_ALPHA";
pub const LU_THRESHOLD: &str = "LU_THRESHOLD";
pub const MU_THRESHOLD: &str = "MU_THRESHOLD";
pub const NETWORK_CAPACITY: &str = "NETWORK_CAPACITY";
pub const SAMPLE_PERIOD: &str = "SAMPLE_PERIOD";
pub const PROBE_PATH: &str = "PROBE_PATH";
pub const PROBE_TIMEOUT: &str = "PROBE_TIMEOUT";
pub const READY_TIMEOUT: &str = "READY_TIMEOUT";
pub const DRAIN_TIMEOUT: &str = "DRAIN_TIMEOUT";
pub const STOP_TIMEOUT: &str = "STOP_TIMEOUT";
pub const QUEUE_KEEPALIVE: &str = "QUEUE_KEEPALIVE";
pub const EVENTS_MAX: &str = "EVENTS_MAX";
pub const IMAGE_PULL_RETRIES: &str = "IMAGE_PULL_RETRIES";
pub const BALANCER_URL: &str = "BALANCER_URL";

/// `http://host[:port]` with nothing after the authority but an optional `/`; returned
/// without the slash.
fn parse_balancer_url(v: &str) -> Option<String> {
    let uri: http::Uri = v.parse().ok()?;
    let plain = uri.scheme_str() == Some("http")
        && uri.authority().is_some_and(|a| !a.host().is_empty())
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
    plain.then(|| v.trim_end_matches('/').to_string())
}

/// Docker's smallest accepted memory limit (the engine rejects anything below 6 MB).
pub const MIN_CONTAINER_MEMORY: u64 = 6 << 20;

/// The deployment-agent's whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// WebSocket server port (`/ws`), `HOST_PORT_WS_DEPLOYMENT_AGENT`, default 2547.
    pub ws_port: u16,
    /// HTTP API / dashboard port, `HOST_PORT_HTTP_DEPLOYMENT_AGENT`, default 2550.
    pub http_port: u16,
    /// Address both listeners bind, `BIND_ADDRESS`, default 0.0.0.0.
    pub bind: IpAddr,
    /// Shared secret for WebSocket subscribers and mutating endpoints; `None` = open.
    pub token: Option<String>,
    /// `REDIS_HOST` / `REDIS_PORT` / `REDIS_PASSWORD` / `REDIS_DB`.
    pub redis: RedisTarget,
    /// Docker engine address, e.g. `unix:///var/run/docker.sock` or `tcp://host:2375`.
    pub docker_host: String,
    /// The app image (`DOCKER_IMAGE`, required).
    pub image: String,
    /// Port the app listens on inside its container (`TARGET_PORT`, required).
    pub target_port: u16,
    /// Network the app containers join; `None` = the agent's own network (found at run time).
    pub network: Option<String>,
    /// `APP_IDENTIFIER`: label value marking containers as ours.
    pub app: String,
    pub container: ContainerConfig,
    pub scaling: ScalingConfig,
    pub scoring: ScoringConfig,
    /// Period of one probe + stats + scoring round.
    pub sample_period: Duration,
    /// HTTP path probed for availability (starts with `/`).
    pub probe_path: String,
    /// Probe timeout; a probe that times out counts as a failure.
    pub probe_timeout: Duration,
    /// A container not accepting connections this long after creation is replaced.
    pub ready_timeout: Duration,
    /// A SUNDOWN container still busy after this long is stopped anyway.
    pub drain_timeout: Duration,
    /// SIGTERM grace period before Docker kills a stopping container.
    pub stop_timeout: Duration,
    /// The queue is re-sent to every balancer at least this often.
    pub queue_keepalive: Duration,
    /// Number of events kept (in Redis, served at `/events`).
    pub events_max: usize,
    /// Attempts to pull/inspect the image before giving up on a start.
    pub image_pull_retries: u32,
    /// A balancer's public address (`http://host:port`) whose task API the dashboard reads
    /// (`BALANCER_URL`); `None` = no task panel.
    pub balancer_url: Option<String>,
}

/// How app containers are created.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// Containers are named `{name_prefix}-{n}`; default `lowercase(APP_IDENTIFIER)-app`.
    pub name_prefix: String,
    /// CPU limit in CPUs (`CONTAINER_CPUS`, e.g. 0.5); `None` = unlimited.
    pub cpus: Option<f64>,
    /// Memory limit in bytes (`CONTAINER_MEMORY`, e.g. 256MiB); `None` = unlimited.
    pub memory_bytes: Option<u64>,
    /// `KEY=VALUE` entries passed to every app container (`CONTAINER_ENV`, `;`-separated).
    pub env: Vec<String>,
}

/// When and by how much the pool grows or shrinks (see [`crate::scaler`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// Minimum pool size (`DEFAULT_CONTAINER`): `POST /scale` and scale-downs never go below
    /// it; also the desired size when none is saved in Redis.
    pub min_containers: usize,
    /// Maximum pool size (`MAX_CONTAINERS`).
    pub max_containers: usize,
    /// Scale up when the average score is below this (`HIGH_LOAD_THRESHOLD`).
    pub high_threshold: f64,
    /// Scale down when the average score is above this (`LOW_LOAD_THRESHOLD`).
    pub low_threshold: f64,
    /// Scale up when any single score is below this (`CRITICAL_LOAD_THRESHOLD`).
    pub critical_threshold: f64,
    /// Minimum time between two scaling actions (`COOLDOWN_PERIOD`).
    pub cooldown: Duration,
    /// A decision may always add or remove at least this many containers, whatever the
    /// rate limits say (`SCALE_STEP`).
    pub step: usize,
    /// How often the scaler decides (`SCALE_CHECK_PERIOD`).
    pub check_period: Duration,
    /// How long the scale-down condition must hold before the first step
    /// (`SCALE_DOWN_STABILIZATION`; Kubernetes' HPA uses 300 s).
    pub scale_down_window: Duration,
    /// Requests in flight per container the concurrency signal aims at
    /// (`TARGET_CONCURRENCY`; `None` = signal off).
    pub target_concurrency: Option<f64>,
    /// Queued tasks per container the queue signal aims at (`TARGET_QUEUE_PER_CONTAINER`;
    /// `None` = signal off).
    pub target_queue: Option<f64>,
    /// Window the stable proposals average over (`STABLE_WINDOW`, Knative: 60 s).
    pub stable_window: Duration,
    /// Short window for sudden spikes (`PANIC_WINDOW`, Knative: 6 s).
    pub panic_window: Duration,
    /// Panic when the panic window proposes at least this many times the current size
    /// (`PANIC_THRESHOLD`, Knative: 2).
    pub panic_threshold: f64,
    /// Dead band of the proportional signals: observed / target within `1 ± tolerance`
    /// proposes no change (`SCALE_TOLERANCE`, the HPA's 10 %).
    pub tolerance: f64,
    /// One decision multiplies the pool by at most this (`SCALE_UP_RATE`).
    pub up_rate: f64,
    /// One decision divides the pool by at most this (`SCALE_DOWN_RATE`).
    pub down_rate: f64,
    /// Host CPU busy fraction (0..1) over the panic window at or above which the host counts
    /// as saturated and no container is added (`HOST_SATURATION`; 1 = never).
    pub host_saturation: f64,
    /// The app containers' CPU limit (`CONTAINER_CPUS`): with it the score signal sizes the
    /// pool by CPU demand.
    pub cpu_limit: Option<f64>,
    /// CPU utilisation at which the CPU dimension alone brings a container's score down to
    /// `HIGH_LOAD_THRESHOLD`: `(100 − HIGH) / 100 / (CPU_WEIGHT / Σ weights)^(1 / SCORE_POWER)`,
    /// at most 1; `None` when CPU_WEIGHT is 0.
    pub cpu_target: Option<f64>,
}

/// Relative importance of the sub-scores. Each is >= 0 and they need not add up to 1:
/// the overall score is divided by their sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub cpu: f64,
    pub memory: f64,
    pub network: f64,
    pub availability: f64,
}

impl Weights {
    /// Sum of the four weights (> 0 in a validated config).
    pub fn sum(&self) -> f64 {
        self.cpu + self.memory + self.network + self.availability
    }
}

/// How container scores are computed (see [`crate::scoring`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringConfig {
    pub weights: Weights,
    /// Response times kept per container (`HISTORY_SIZE`, >= 2).
    pub history_size: usize,
    /// The best response time is the minimum of this many latest samples (`BEST_TIME_WINDOW`).
    pub best_window: usize,
    /// Smoothing factor of the availability EMA, 0 < alpha <= 1 (`EMA_ALPHA`).
    pub ema_alpha: f64,
    /// Score at or above which a container is LU (`LU_THRESHOLD`).
    pub lu_threshold: f64,
    /// Score at or above which a container is MU, below it HU, i.e. high utilization
    /// (`MU_THRESHOLD`).
    pub mu_threshold: f64,
    /// Bytes per second (received + sent) that count as 100 % network use (`NETWORK_CAPACITY`).
    pub network_capacity_bps: f64,
    /// Response time, in ms, that a failed probe counts as (= `PROBE_TIMEOUT`).
    pub failure_ms: f64,
    /// Exponent of the power mean of the loads (`SCORE_POWER`, >= 1): 1 is the plain
    /// weighted mean, larger values let the most loaded dimension dominate.
    pub power: f64,
}

/// Whole milliseconds in `d`, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// See [`ScalingConfig::cpu_target`].
pub fn cpu_target(s: &ScalingConfig, sc: &ScoringConfig) -> Option<f64> {
    let share = sc.weights.cpu / sc.weights.sum();
    if !(share.is_finite() && share > 0.0) {
        return None;
    }
    let u = (100.0 - s.high_threshold) / 100.0 / share.powf(1.0 / sc.power);
    Some(u.clamp(0.05, 1.0))
}

/// A finite number > 0.
fn positive(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0)
}

/// `[A-Za-z0-9_.-]+`.
fn parse_identifier(v: &str) -> Option<String> {
    v.chars().all(is_name_char).then(|| v.to_string())
}

/// A Docker container name prefix: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn valid_name_prefix(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_alphanumeric()) && v.chars().all(is_name_char)
}

/// `KEY=VALUE;KEY2=VALUE2` (entries trimmed, empty entries skipped; values may contain `=`).
fn parse_env_list(v: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for entry in v.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, _) = entry.split_once('=')?;
        let key_ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return None;
        }
        out.push(entry.to_string());
    }
    Some(out)
}

fn parse_docker_host(v: &str) -> Option<String> {
    let (scheme, rest) = v.split_once("://")?;
    (matches!(scheme, "unix" | "tcp" | "http" | "https") && !rest.is_empty()).then(|| v.to_string())
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every variable through `lookup`, reporting every bad one at once.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader::new(&lookup);
        let ws_port = r.port(HOST_PORT_WS_DEPLOYMENT_AGENT, 2547);
        let http_port = r.port(HOST_PORT_HTTP_DEPLOYMENT_AGENT, 2550);
        let bind = r.get(
            BIND_ADDRESS,
            IpAddr::from([0, 0, 0, 0]),
            "an IP address",
            |v| v.parse().ok(),
        );
        let token = r.raw(AGENT_TOKEN);
        let redis = RedisTarget::read(&mut r).unwrap_or_else(|| {
            r.fail(REDIS_HOST, "required: the agent keeps its state in Redis");
            RedisTarget {
                host: String::new(),
                port: 6379,
                password: None,
                db: 0,
            }
        });
        let docker_host = r.get(
            DOCKER_HOST,
            "unix:///var/run/docker.sock".to_string(),
            "a unix://, tcp://, http:// or https:// address",
            parse_docker_host,
        );
        let image = r.required(
            DOCKER_IMAGE,
            "the app image to run, e.g. myapp:latest",
            |v| (!v.chars().any(char::is_whitespace)).then(|| v.to_string()),
        );
        let target_port = r.required(TARGET_PORT, "the app's port 1-65535", |v| {
            v.parse::<u16>().ok().filter(|p| *p != 0)
        });
        let network = r.raw(DOCKER_NETWORK);
        let app = r.get(
            APP_IDENTIFIER,
            "RUSTYBALANCER".to_string(),
            "letters, digits, '_', '.' or '-'",
            parse_identifier,
        );
        let container = ContainerConfig {
            name_prefix: r
                .raw(CONTAINER_NAME_PREFIX)
                .unwrap_or_else(|| format!("{}-app", app.to_ascii_lowercase())),
            cpus: r.opt(CONTAINER_CPUS, "a number of CPUs > 0, e.g. 0.5", |v| {
                v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0)
            }),
            memory_bytes: r.opt(CONTAINER_MEMORY, "a size >= 6MiB such as 256MiB", |v| {
                parse_bytes(v).filter(|b| *b >= MIN_CONTAINER_MEMORY)
            }),
            env: r.get(
                CONTAINER_ENV,
                Vec::new(),
                "a ';'-separated list of KEY=VALUE",
                parse_env_list,
            ),
        };
        if !valid_name_prefix(&container.name_prefix) {
            let v = container.name_prefix.clone();
            r.fail(
                CONTAINER_NAME_PREFIX,
                format!(
                    "expected a letter or digit, then letters, digits, '_', '.' or '-', got {v:?}"
                ),
            );
        }
        let scaling = ScalingConfig {
            min_containers: r.count(DEFAULT_CONTAINER, 5, 1),
            max_containers: r.count(MAX_CONTAINERS, 15, 1),
            high_threshold: r.number(HIGH_LOAD_THRESHOLD, 55.0, 0.0, 100.0),
            low_threshold: r.number(LOW_LOAD_THRESHOLD, 80.0, 0.0, 100.0),
            critical_threshold: r.number(CRITICAL_LOAD_THRESHOLD, 20.0, 0.0, 100.0),
            cooldown: r.duration(COOLDOWN_PERIOD, Duration::from_secs(5)),
            step: r.count(SCALE_STEP, 1, 1),
            check_period: r.positive_duration(SCALE_CHECK_PERIOD, Duration::from_secs(10)),
            scale_down_window: r.duration(SCALE_DOWN_STABILIZATION, Duration::from_secs(60)),
            target_concurrency: r.opt(TARGET_CONCURRENCY, "a number > 0, e.g. 10", positive),
            target_queue: r.opt(
                TARGET_QUEUE_PER_CONTAINER,
                "a number > 0, e.g. 20",
                positive,
            ),
            stable_window: r.positive_duration(STABLE_WINDOW, Duration::from_secs(60)),
            panic_window: r.positive_duration(PANIC_WINDOW, Duration::from_secs(6)),
            panic_threshold: r.number(PANIC_THRESHOLD, 2.0, 1.0, 1000.0),
            tolerance: r.number(SCALE_TOLERANCE, 0.1, 0.0, 0.99),
            up_rate: r.number(SCALE_UP_RATE, 4.0, 1.0, 1000.0),
            down_rate: r.number(SCALE_DOWN_RATE, 2.0, 1.0, 1000.0),
            host_saturation: r.number(HOST_SATURATION, 0.95, 0.0, 1.0),
            cpu_limit: None,
            cpu_target: None,
        };
        let weights = Weights {
            cpu: r.number(CPU_WEIGHT, 0.35, 0.0, f64::MAX),
            memory: r.number(MEMORY_WEIGHT, 0.25, 0.0, f64::MAX),
            network: r.number(NETWORK_WEIGHT, 0.15, 0.0, f64::MAX),
            availability: r.number(AVAILABILITY_WEIGHT, 0.25, 0.0, f64::MAX),
        };
        let probe_timeout = r.positive_duration(PROBE_TIMEOUT, Duration::from_secs(2));
        let scoring = ScoringConfig {
            weights,
            history_size: r.count(HISTORY_SIZE, 20, 2),
            best_window: r.count(BEST_TIME_WINDOW, 10, 1),
            ema_alpha: r.get(EMA_ALPHA, 0.2, "a number with 0 < alpha <= 1", |v| {
                v.parse::<f64>().ok().filter(|a| *a > 0.0 && *a <= 1.0)
            }),
            lu_threshold: r.number(LU_THRESHOLD, 70.0, 0.0, 100.0),
            mu_threshold: r.number(MU_THRESHOLD, 40.0, 0.0, 100.0),
            network_capacity_bps: r.get(
                NETWORK_CAPACITY,
                125_000_000,
                "bytes per second > 0 such as 125MB (1 Gbit/s)",
                |v| parse_bytes(v).filter(|b| *b > 0),
            ) as f64,
            failure_ms: probe_timeout.as_secs_f64() * 1000.0,
            power: r.number(SCORE_POWER, 4.0, 1.0, 64.0),
        };
        let mut scaling = scaling;
        scaling.cpu_limit = container.cpus;
        scaling.cpu_target = cpu_target(&scaling, &scoring);
        let sample_period = r.positive_duration(SAMPLE_PERIOD, Duration::from_secs(2));
        let probe_path = r.get(
            PROBE_PATH,
            "/health".to_string(),
            "an HTTP path starting with '/'",
            |v| (v.starts_with('/') && !v.chars().any(char::is_whitespace)).then(|| v.to_string()),
        );
        let ready_timeout = r.positive_duration(READY_TIMEOUT, Duration::from_secs(60));
        let drain_timeout = r.positive_duration(DRAIN_TIMEOUT, Duration::from_secs(30));
        let stop_timeout = r.duration(STOP_TIMEOUT, Duration::from_secs(10));
        let queue_keepalive = r.get(
            QUEUE_KEEPALIVE,
            Duration::from_secs(2),
            "a duration greater than zero and at most 5s",
            |v| parse_duration(v).filter(|d| !d.is_zero() && *d <= Duration::from_secs(5)),
        );
        let events_max = r.count(EVENTS_MAX, 1000, 10);
        let image_pull_retries = r.get(IMAGE_PULL_RETRIES, 3, "a whole number >= 0", |v| {
            v.parse().ok()
        });
        let balancer_url = r.opt(
            BALANCER_URL,
            "an http://host[:port] address, e.g. http://balancer:2548",
            parse_balancer_url,
        );

        let config = Config {
            ws_port,
            http_port,
            bind,
            token,
            redis,
            docker_host,
            image: image.unwrap_or_default(),
            target_port: target_port.unwrap_or_default(),
            network,
            app,
            container,
            scaling,
            scoring,
            sample_period,
            probe_path,
            probe_timeout,
            ready_timeout,
            drain_timeout,
            stop_timeout,
            queue_keepalive,
            events_max,
            image_pull_retries,
            balancer_url,
        };
        let cross_field = config.validate();
        r.finish(config, cross_field)
    }

    /// Cross-field rules.
    fn validate(&self) -> Vec<ConfigError> {
        let mut rules = Rules::default();
        rules.check(
            self.ws_port == 0 || self.ws_port != self.http_port,
            HOST_PORT_HTTP_DEPLOYMENT_AGENT,
            "must differ from HOST_PORT_WS_DEPLOYMENT_AGENT",
        );
        let s = &self.scaling;
        rules.check(
            s.max_containers >= s.min_containers,
            MAX_CONTAINERS,
            "must be at least DEFAULT_CONTAINER",
        );
        rules.check(
            s.panic_window <= s.stable_window,
            PANIC_WINDOW,
            "must not exceed STABLE_WINDOW",
        );
        rules.check(
            s.critical_threshold <= s.high_threshold,
            CRITICAL_LOAD_THRESHOLD,
            "must not exceed HIGH_LOAD_THRESHOLD",
        );
        rules.check(
            s.high_threshold < s.low_threshold,
            LOW_LOAD_THRESHOLD,
            "must be greater than HIGH_LOAD_THRESHOLD (scores are 100 = idle)",
        );
        let sc = &self.scoring;
        rules.check(
            sc.weights.sum() > 0.0,
            CPU_WEIGHT,
            "CPU_WEIGHT, MEMORY_WEIGHT, NETWORK_WEIGHT and AVAILABILITY_WEIGHT must not all be 0",
        );
        rules.check(
            sc.best_window <= sc.history_size,
            BEST_TIME_WINDOW,
            "must not exceed HISTORY_SIZE",
        );
        rules.check(
            sc.mu_threshold < sc.lu_threshold,
            MU_THRESHOLD,
            "must be less than LU_THRESHOLD",
        );
        rules.into_errors()
    }

    /// `redis://[:password@]host:port/db`, the password percent-encoded.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const REQUIRED: [(&str, &str); 2] =
        [(DOCKER_IMAGE, "playground:latest"), (TARGET_PORT, "5000")];

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = REQUIRED
            .iter()
            .chain(vars)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn bad_vars(vars: &[(&str, &str)]) -> Vec<&'static str> {
        match parse(vars) {
            Ok(c) => panic!("accepted {vars:?}: {c:?}"),
            Err(e) => e.variables(),
        }
    }

    #[test]
    fn cpu_target_follows_the_high_threshold_and_weights() {
        let c = parse(&[(CONTAINER_CPUS, "0.25")]).unwrap();
        assert_eq!(c.scaling.cpu_limit, Some(0.25));
        // (100 − 55) / 100 / 0.35^(1/4) = 0.585.
        let t = c.scaling.cpu_target.unwrap();
        assert!((t - 0.45 / 0.35f64.powf(0.25)).abs() < 1e-9, "{t}");
        let c = parse(&[(CPU_WEIGHT, "0")]).unwrap();
        assert_eq!(c.scaling.cpu_target, None);
        // A low threshold can ask for more than 100 %: capped.
        let c = parse(&[(HIGH_LOAD_THRESHOLD, "1"), (CRITICAL_LOAD_THRESHOLD, "0")]).unwrap();
        assert_eq!(c.scaling.cpu_target, Some(1.0));
    }

    #[test]
    fn defaults_match_the_brief() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.ws_port, c.http_port), (2547, 2550));
        assert_eq!(c.bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.token, None);
        assert_eq!(c.redis_url(), "redis://redis:6379/0");
        assert_eq!(c.docker_host, "unix:///var/run/docker.sock");
        assert_eq!(
            (c.image.as_str(), c.target_port),
            ("playground:latest", 5000)
        );
        assert_eq!(c.network, None);
        assert_eq!(c.app, "RUSTYBALANCER");
        assert_eq!(
            c.container,
            ContainerConfig {
                name_prefix: "rustybalancer-app".into(),
                cpus: None,
                memory_bytes: None,
                env: vec![],
            }
        );
        let s = &c.scaling;
        assert_eq!((s.min_containers, s.max_containers, s.step), (5, 15, 1));
        assert_eq!(
            (s.high_threshold, s.low_threshold, s.critical_threshold),
            (55.0, 80.0, 20.0)
        );
        assert_eq!(s.cooldown, Duration::from_secs(5));
        assert_eq!(s.check_period, Duration::from_secs(10));
        assert_eq!(s.scale_down_window, Duration::from_secs(60));
        let sc = &c.scoring;
        assert_eq!(
            sc.weights,
            Weights {
                cpu: 0.35,
                memory: 0.25,
                network: 0.15,
                availability: 0.25
            }
        );
        assert_eq!(
            (sc.history_size, sc.best_window, sc.ema_alpha),
            (20, 10, 0.2)
        );
        assert_eq!((sc.lu_threshold, sc.mu_threshold), (70.0, 40.0));
        assert_eq!(sc.network_capacity_bps, 125e6);
        assert_eq!(sc.failure_ms, 2000.0);
        assert_eq!(c.sample_period, Duration::from_secs(2));
        assert_eq!(c.probe_path, "/health");
        assert_eq!(c.probe_timeout, Duration::from_secs(2));
        assert_eq!(c.ready_timeout, Duration::from_secs(60));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        assert_eq!(c.queue_keepalive, Duration::from_secs(2));
        assert_eq!((c.events_max, c.image_pull_retries), (1000, 3));
        assert_eq!(c.balancer_url, None);
        assert_eq!(
            parse_balancer_url("http://balancer:2548/").as_deref(),
            Some("http://balancer:2548")
        );
    }

    #[test]
    fn values_are_parsed() {
        let c = parse(&[
            (AGENT_TOKEN, " s3cret "),
            (REDIS_PASSWORD, "p@ss w/rd"),
            (REDIS_DB, "2"),
            (REDIS_HOST, "10.0.0.5"),
            (APP_IDENTIFIER, "Shop.v2"),
            (CONTAINER_CPUS, "0.5"),
            (CONTAINER_MEMORY, "256MiB"),
            (CONTAINER_ENV, "A=1; B=x=y ;;"),
            (COOLDOWN_PERIOD, "1500ms"),
            (NETWORK_CAPACITY, "10MB"),
            (CPU_WEIGHT, "2"),
            (DOCKER_NETWORK, "appnet"),
        ])
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert_eq!(c.redis_url(), "redis://:p%40ss%20w%2Frd@10.0.0.5:6379/2");
        assert_eq!(c.container.name_prefix, "shop.v2-app");
        assert_eq!(c.container.cpus, Some(0.5));
        assert_eq!(c.container.memory_bytes, Some(256 << 20));
        assert_eq!(c.container.env, ["A=1", "B=x=y"]);
        assert_eq!(ms(c.scaling.cooldown), 1500);
        assert_eq!(c.scoring.network_capacity_bps, 10e6);
        assert_eq!(c.scoring.weights.cpu, 2.0);
        assert_eq!(c.network.as_deref(), Some("appnet"));
    }

    #[test]
    fn empty_means_unset() {
        let c = parse(&[
            (AGENT_TOKEN, ""),
            (REDIS_PASSWORD, ""),
            (DEFAULT_CONTAINER, " "),
        ])
        .unwrap();
        assert_eq!(c.token, None);
        assert_eq!(c.redis.password, None);
        assert_eq!(c.scaling.min_containers, 5);
    }

    #[test]
    fn required_variables() {
        let err = Config::from_lookup(|_| None).unwrap_err();
        assert_eq!(err.variables(), [DOCKER_IMAGE, TARGET_PORT]);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.starts_with("DOCKER_IMAGE: required"), "{text}");
        assert_eq!(bad_vars(&[(TARGET_PORT, "0")]), [TARGET_PORT]);
        assert_eq!(bad_vars(&[(TARGET_PORT, "65536")]), [TARGET_PORT]);
        assert_eq!(bad_vars(&[(DOCKER_IMAGE, "my image")]), [DOCKER_IMAGE]);
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let err = parse(&[
            (HOST_PORT_WS_DEPLOYMENT_AGENT, "99999"),
            (BIND_ADDRESS, "localhost"),
            (DOCKER_HOST, "/var/run/docker.sock"),
            (APP_IDENTIFIER, "my app"),
            (CONTAINER_MEMORY, "1MiB"),
            (HIGH_LOAD_THRESHOLD, "101"),
            (COOLDOWN_PERIOD, "soon"),
            (EMA_ALPHA, "0"),
            (PROBE_PATH, "health"),
            (QUEUE_KEEPALIVE, "10s"),
        ])
        .unwrap_err();
        assert_eq!(
            err.variables(),
            [
                HOST_PORT_WS_DEPLOYMENT_AGENT,
                BIND_ADDRESS,
                DOCKER_HOST,
                APP_IDENTIFIER,
                CONTAINER_MEMORY,
                HIGH_LOAD_THRESHOLD,
                COOLDOWN_PERIOD,
                EMA_ALPHA,
                PROBE_PATH,
                QUEUE_KEEPALIVE,
            ]
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(
            text.contains(
                "COOLDOWN_PERIOD: expected a duration such as 30, 30s, 500ms or 2m, got \"soon\""
            ),
            "{text}"
        );
    }

    #[test]
    fn single_variable_rules() {
        let table: &[(&str, &str)] = &[
            (DEFAULT_CONTAINER, "0"),
            (SCALE_STEP, "0"),
            (HISTORY_SIZE, "1"),
            (BEST_TIME_WINDOW, "0"),
            (EMA_ALPHA, "1.5"),
            (CPU_WEIGHT, "-0.1"),
            (CONTAINER_CPUS, "0"),
            (CONTAINER_CPUS, "NaN"),
            (CONTAINER_ENV, "=1"),
            (CONTAINER_ENV, "NOEQUALS"),
            (CONTAINER_NAME_PREFIX, "-app"),
            (EVENTS_MAX, "9"),
            (NETWORK_CAPACITY, "0"),
            (QUEUE_KEEPALIVE, "0s"),
            (SAMPLE_PERIOD, "0"),
            (REDIS_PORT, "0"),
            (REDIS_HOST, "user@host"),
            (IMAGE_PULL_RETRIES, "-1"),
            (BALANCER_URL, "balancer:2548"),
            (BALANCER_URL, "https://balancer"),
            (BALANCER_URL, "http://balancer:2548/_tasks"),
            (BALANCER_URL, "http://"),
        ];
        for &(var, value) in table {
            assert_eq!(bad_vars(&[(var, value)]), [var], "{var}={value}");
        }
        // Boundaries that are accepted.
        let ok: &[(&str, &str)] = &[
            (QUEUE_KEEPALIVE, "5s"),
            (EMA_ALPHA, "1"),
            (CONTAINER_MEMORY, "6MiB"),
            (BEST_TIME_WINDOW, "20"),
            (COOLDOWN_PERIOD, "0"),
            (SCALE_DOWN_STABILIZATION, "0"),
            (CPU_WEIGHT, "0"),
        ];
        for &(var, value) in ok {
            assert!(parse(&[(var, value)]).is_ok(), "{var}={value}");
        }
    }

    #[test]
    fn cross_field_rules() {
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let table: &[(Vars, &[&str])] = &[
            (
                &[(DEFAULT_CONTAINER, "10"), (MAX_CONTAINERS, "9")],
                &[MAX_CONTAINERS],
            ),
            (
                &[(CRITICAL_LOAD_THRESHOLD, "60")],
                &[CRITICAL_LOAD_THRESHOLD],
            ),
            (&[(HIGH_LOAD_THRESHOLD, "80")], &[LOW_LOAD_THRESHOLD]),
            (
                &[(BEST_TIME_WINDOW, "11"), (HISTORY_SIZE, "10")],
                &[BEST_TIME_WINDOW],
            ),
            (&[(MU_THRESHOLD, "70")], &[MU_THRESHOLD]),
            (
                &[
                    (HOST_PORT_WS_DEPLOYMENT_AGENT, "9000"),
                    (HOST_PORT_HTTP_DEPLOYMENT_AGENT, "9000"),
                ],
                &[HOST_PORT_HTTP_DEPLOYMENT_AGENT],
            ),
            (
                &[
                    (CPU_WEIGHT, "0"),
                    (MEMORY_WEIGHT, "0"),
                    (NETWORK_WEIGHT, "0"),
                    (AVAILABILITY_WEIGHT, "0"),
                ],
                &[CPU_WEIGHT],
            ),
            // Already reported as malformed: not repeated by the cross-field rule.
            (
                &[(BEST_TIME_WINDOW, "x"), (HISTORY_SIZE, "5")],
                &[BEST_TIME_WINDOW],
            ),
        ];
        for (vars, expected) in table {
            assert_eq!(bad_vars(vars), *expected, "{vars:?}");
        }
        assert!(parse(&[(DEFAULT_CONTAINER, "15"), (CRITICAL_LOAD_THRESHOLD, "55")]).is_ok());
    }

    #[test]
    fn redis_url_brackets_ipv6() {
        let c = parse(&[(REDIS_HOST, "::1"), (REDIS_PORT, "7000")]).unwrap();
        assert_eq!(c.redis_url(), "redis://[::1]:7000/0");
    }

    #[test]
    fn ms_saturates() {
        assert_eq!(ms(Duration::from_millis(1234)), 1234);
        assert_eq!(ms(Duration::MAX), u64::MAX);
    }
}

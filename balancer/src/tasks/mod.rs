//! Task submissions: any request can be made asynchronous. It is stored durably in Redis,
//! run on a score-weighted backend by whichever balancer's worker takes it, retried with
//! back-off, and its response is kept for the client to fetch later.
//!
//! # Layout
//! - [`model`]: pure pieces (states, ids, `Prefer`, retry policy, time stamps).
//! - [`envelope`]: the JSON body of `POST /_tasks`, validated field by field.
//! - [`store`] and [`query`]: the Redis edge (Lua scripts for every state change; reads).
//! - [`api`]: the HTTP side (`Prefer: respond-async`, `/_tasks…`), errors mapped to status.
//! - [`stream`]: the Redis stream and its consumer group; the dead-letter stream.
//! - [`worker`]: the workers' loops (read the stream, take over lapsed leases) and
//!   housekeeping (delayed tasks, gauges, index sweeping); [`attempt`]: one attempt of one
//!   task, lease renewal included.
//! - [`notify`]: `Prefer: wait=N` waiters woken by Redis pub/sub. [`callback`]: `X-Callback-Url`.
//!
//! The protocol, the Redis layout and the delivery guarantees are documented in
//! `artefacts/tasks.md`.

pub mod api;
pub mod attempt;
pub mod callback;
pub mod envelope;
pub mod model;
pub mod notify;
pub mod query;
pub mod store;
pub mod stream;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::Request;
use log::{info, warn};
use protocol::prom::{Kind, PromText};
use tokio::sync::watch;

use crate::config::{Config, TaskConfig};
use crate::dispatch::Dispatcher;
use crate::histogram::PromHistogram;
use crate::metrics::Metrics;
use model::Status;
use notify::Waiters;
use query::QueueStats;
use store::Store;

pub static X_TASK_ID: HeaderName = HeaderName::from_static("x-task-id");
pub static X_TASK_ATTEMPT: HeaderName = HeaderName::from_static("x-task-attempt");
pub static X_TASK_DELAY: HeaderName = HeaderName::from_static("x-task-delay");
pub static X_CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
pub static X_TASK_RESULT_TRUNCATED: HeaderName = HeaderName::from_static("x-task-result-truncated");

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Counters and gauges of the task system, rendered on `/metrics`.
#[derive(Default)]
pub struct TaskMetrics {
    pub submitted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Submissions answered 503 because Redis was unavailable.
    pub refused: AtomicU64,
    /// Tasks finished, by final status (index of [`Status::ALL`]).
    pub finished: [AtomicU64; 6],
    pub attempts: AtomicU64,
    /// Attempts that ended in a retry being scheduled.
    pub retries: AtomicU64,
    /// Entries put back because no backend was available (not attempts).
    pub deferred: AtomicU64,
    /// Entries taken over from a balancer whose lease lapsed.
    pub reclaimed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub callbacks_sent: AtomicU64,
    pub callbacks_failed: AtomicU64,
    /// Per attempt: request sent to response body read.
    pub attempt_duration: PromHistogram,
    /// Submission to final status, for tasks this balancer finished.
    pub completion: PromHistogram,
    pub redis_up: AtomicBool,
    pub stats: Mutex<Option<QueueStats>>,
}

impl TaskMetrics {
    pub fn count_finished(&self, status: Status) {
        if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut PromText) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.family(
            "balancer_tasks_finished_total",
            Kind::Counter,
            "Tasks this balancer brought to a final status.",
        );
        for (i, s) in Status::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_terminal())
        {
            out.sample(
                "balancer_tasks_finished_total",
                &[("status", s.as_str())],
                get(&self.finished[i]),
            );
        }
        let counters: [(&str, &str, f64); 10] = [
            (
                "balancer_tasks_submitted_total",
                "Tasks accepted (stored) by this balancer.",
                get(&self.submitted),
            ),
            (
                "balancer_tasks_duplicates_total",
                "Submissions answered with an earlier task (Idempotency-Key).",
                get(&self.duplicates),
            ),
            (
                "balancer_tasks_refused_total",
                "Submissions refused with 503 because Redis was unavailable.",
                get(&self.refused),
            ),
            (
                "balancer_task_attempts_total",
                "Task attempts started by this balancer.",
                get(&self.attempts),
            ),
            (
                "balancer_task_retries_total",
                "Attempts that ended with a retry scheduled.",
                get(&self.retries),
            ),
            (
                "balancer_task_deferrals_total",
                "Tasks put back because no backend was available (not attempts).",
                get(&self.deferred),
            ),
            (
                "balancer_task_reclaims_total",
                "Tasks taken over after another balancer's lease lapsed.",
                get(&self.reclaimed),
            ),
            (
                "balancer_task_dead_letters_total",
                "Stream entries moved to the dead-letter stream.",
                get(&self.dead_lettered),
            ),
            (
                "balancer_task_callbacks_total",
                "Callbacks delivered.",
                get(&self.callbacks_sent),
            ),
            (
                "balancer_task_callbacks_failed_total",
                "Callbacks given up after their retries.",
                get(&self.callbacks_failed),
            ),
        ];
        for (name, help, v) in counters {
            out.single(name, Kind::Counter, help, v);
        }
        out.family(
            "balancer_task_attempt_duration_seconds",
            Kind::Histogram,
            "Task attempts, request sent to response read.",
        );
        self.attempt_duration
            .render("balancer_task_attempt_duration_seconds", out);
        out.family(
            "balancer_task_completion_seconds",
            Kind::Histogram,
            "Submission to final status, tasks finished here.",
        );
        self.completion
            .render("balancer_task_completion_seconds", out);
        let stats = self.stats.lock().map(|s| *s).unwrap_or_default();
        let up = f64::from(u8::from(self.redis_up.load(Ordering::Relaxed)));
        out.single(
            "balancer_tasks_redis_up",
            Kind::Gauge,
            "1 while Redis answers.",
            up,
        );
        if let Some(s) = stats {
            let age = s
                .oldest_queued_ms
                .map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
            let gauges: [(&str, &str, f64); 4] = [
                (
                    "balancer_tasks_queued",
                    "Tasks waiting to run, delayed ones included (all balancers).",
                    s.queued as f64,
                ),
                (
                    "balancer_tasks_delayed",
                    "Queued tasks waiting for a not-before time.",
                    s.delayed as f64,
                ),
                (
                    "balancer_tasks_running",
                    "Tasks running (all balancers).",
                    s.running as f64,
                ),
                (
                    "balancer_tasks_oldest_queued_age_seconds",
                    "Age of the oldest queued task.",
                    age,
                ),
            ];
            for (name, help, v) in gauges {
                out.single(name, Kind::Gauge, help, v);
            }
        }
    }
}

/// The task system of one balancer.
pub struct Tasks {
    cfg: TaskConfig,
    /// `None` when Redis is not configured (`REDIS_HOST` empty): task routes answer 503.
    store: Option<Store>,
    dispatch: Arc<Dispatcher>,
    pub metrics: TaskMetrics,
    shared: Arc<Metrics>,
    waiters: Arc<Waiters>,
    /// This process's consumer name in the stream's group.
    consumer: String,
    redis_at: String,
    shutdown_grace: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Tasks {
    pub fn new(
        config: &Config,
        dispatch: Arc<Dispatcher>,
        shared: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Tasks {
        let consumer = format!("{}-{:08x}", config.balancer_id, rand::random::<u32>());
        let (store, redis_at) = match &config.redis {
            None => {
                info!(
                    "tasks: disabled (REDIS_HOST is empty); {} answers 503",
                    config.tasks.path_prefix
                );
                (None, String::new())
            }
            Some(target) => match Store::connect(&target.url(), &config.app) {
                Ok(s) => (Some(s), target.display()),
                Err(e) => {
                    // The URL is built from validated parts, so this is not expected.
                    warn!("tasks: disabled: {e}");
                    (None, target.display())
                }
            },
        };
        Tasks {
            cfg: config.tasks.clone(),
            store,
            dispatch,
            metrics: TaskMetrics::default(),
            shared,
            waiters: Arc::default(),
            consumer,
            redis_at,
            shutdown_grace: config.shutdown_grace,
            shutdown,
        }
    }

    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// Whether this request is for the task system: under the reserved prefix, or (with
    /// tasks enabled) carrying `Prefer: respond-async`.
    pub fn claims<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let prefix = self.cfg.path_prefix.as_str();
        if path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
        {
            return true;
        }
        self.enabled()
            && req
                .headers()
                .contains_key(http::header::HeaderName::from_static("prefer"))
            && model::parse_prefer(req.headers().get_all("prefer").iter()).respond_async
    }

    /// Appends the task metrics to a `/metrics` page.
    pub fn render_metrics(&self, out: &mut PromText) {
        if self.enabled() {
            self.metrics.render(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_families_and_labelled_samples() {
        let m = TaskMetrics::default();
        m.count_finished(Status::Succeeded);
        m.submitted.fetch_add(4, Ordering::Relaxed);
        m.attempt_duration.record(Duration::from_millis(30));
        if let Ok(mut s) = m.stats.lock() {
            *s = Some(QueueStats {
                queued: 5,
                running: 2,
                delayed: 1,
                oldest_queued_ms: None,
            });
        }
        let mut out = PromText::new();
        m.render(&mut out);
        let text = out.into_string();
        let expected = [
            "# HELP balancer_tasks_finished_total Tasks this balancer brought to a final status.\n\
             # TYPE balancer_tasks_finished_total counter\n\
             balancer_tasks_finished_total{status=\"succeeded\"} 1\n\
             balancer_tasks_finished_total{status=\"failed\"} 0\n",
            "# HELP balancer_tasks_submitted_total Tasks accepted (stored) by this balancer.\n\
             # TYPE balancer_tasks_submitted_total counter\n\
             balancer_tasks_submitted_total 4\n",
            "# TYPE balancer_task_attempt_duration_seconds histogram\n\
             balancer_task_attempt_duration_seconds_bucket{le=\"0.001\"} 0\n",
            "balancer_task_attempt_duration_seconds_bucket{le=\"0.05\"} 1\n",
            "# HELP balancer_tasks_redis_up 1 while Redis answers.\n\
             # TYPE balancer_tasks_redis_up gauge\n\
             balancer_tasks_redis_up 0\n",
            "# TYPE balancer_tasks_queued gauge\nbalancer_tasks_queued 5\n",
            "balancer_tasks_oldest_queued_age_seconds 0\n",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("queued_total"), "{text}");
    }
}

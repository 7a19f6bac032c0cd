//! The agent's Prometheus text (`GET /metrics` of the HTTP API).

use protocol::prom::{Kind, PromText};

use crate::push::Reports;
use crate::reconcile::Snapshot;

/// The Prometheus text of `/metrics`.
pub fn render(snap: &Snapshot, reports: &Reports) -> String {
    let mut out = PromText::with_capacity(2048);
    let (received, malformed) = reports.counters();
    let singles: [(&str, &str, Kind, f64); 12] = [
        (
            "agent_desired_containers",
            "Desired pool size.",
            Kind::Gauge,
            snap.desired as f64,
        ),
        (
            "agent_active_containers",
            "Containers not in SUNDOWN.",
            Kind::Gauge,
            snap.active as f64,
        ),
        (
            "agent_queue_version",
            "Version of the last published queue.",
            Kind::Gauge,
            snap.queue_version as f64,
        ),
        (
            "agent_docker_up",
            "1 when the Docker engine answered on the last tick.",
            Kind::Gauge,
            f64::from(u8::from(snap.docker_ok)),
        ),
        (
            "agent_redis_up",
            "1 when Redis answered on the last write.",
            Kind::Gauge,
            f64::from(u8::from(snap.redis_ok)),
        ),
        (
            "agent_balancers_connected",
            "Balancers subscribed to the queue.",
            Kind::Gauge,
            reports.connected() as f64,
        ),
        (
            "agent_scale_ups_total",
            "Scale-up decisions.",
            Kind::Counter,
            snap.scale_ups as f64,
        ),
        (
            "agent_scale_downs_total",
            "Scale-down decisions.",
            Kind::Counter,
            snap.scale_downs as f64,
        ),
        (
            "agent_containers_replaced_total",
            "Containers replaced after exiting, vanishing or never becoming ready.",
            Kind::Counter,
            snap.replaced as f64,
        ),
        (
            "agent_scoring_round_seconds",
            "Cost of the last scoring round (CPU work, probes excluded).",
            Kind::Gauge,
            snap.scoring_us as f64 / 1e6,
        ),
        (
            "agent_reports_received_total",
            "Report frames received from balancers.",
            Kind::Counter,
            received as f64,
        ),
        (
            "agent_frames_ignored_total",
            "Malformed or unexpected frames ignored.",
            Kind::Counter,
            malformed as f64,
        ),
    ];
    for (name, help, kind, value) in singles {
        out.single(name, kind, help, value);
    }
    out.family(
        "agent_container_score",
        Kind::Gauge,
        "Overall score of a container (100 = idle).",
    );
    for v in &snap.containers {
        if let Some(s) = v.container.overall() {
            out.sample(
                "agent_container_score",
                &[
                    ("name", v.container.name.as_str()),
                    ("category", v.container.category.as_str()),
                ],
                s,
            );
        }
    }
    out.single(
        "agent_host_saturated",
        Kind::Gauge,
        "1 while the host's CPUs are saturated and scale-ups are held.",
        f64::from(u8::from(snap.host_saturated)),
    );
    if let Some(b) = snap.host_busy {
        out.single(
            "agent_host_cpu_busy_ratio",
            Kind::Gauge,
            "Busy fraction of the host's CPUs over the panic window.",
            b,
        );
    }
    if let Some(d) = snap.task_queue_depth {
        out.single(
            "agent_task_queue_depth",
            Kind::Gauge,
            "Task queue depth as the balancers report it.",
            d,
        );
    }
    let sc = &snap.scaling;
    out.family(
        "agent_observed_concurrency",
        Kind::Gauge,
        "Mean requests in flight over the pool, by scaler window.",
    );
    for (window, w) in [("panic", &sc.panic), ("stable", &sc.stable)] {
        out.sample(
            "agent_observed_concurrency",
            &[("window", window)],
            w.concurrency,
        );
    }
    type Pick = fn(&crate::traffic::Observed) -> Option<f64>;
    let per_container: [(&str, &str, Pick); 5] = [
        (
            "agent_container_requests_per_second",
            "Requests completed per second, from the balancers' reports (panic window).",
            |t| Some(t.requests_per_s),
        ),
        (
            "agent_container_in_flight",
            "Mean requests in flight, from the balancers' reports (panic window).",
            |t| Some(t.in_flight),
        ),
        (
            "agent_container_latency_p50_seconds",
            "Median time to response headers, from the balancers' reports (panic window).",
            |t| t.latency_p50_ms.map(|x| x / 1000.0),
        ),
        (
            "agent_container_latency_p99_seconds",
            "99th percentile time to response headers, from the balancers' reports (panic window).",
            |t| t.latency_p99_ms.map(|x| x / 1000.0),
        ),
        (
            "agent_container_errors_per_second",
            "Failed requests per second, from the balancers' reports (panic window).",
            |t| Some(t.errors_per_s),
        ),
    ];
    for (name, help, pick) in per_container {
        out.family(name, Kind::Gauge, help);
        for v in &snap.containers {
            if let Some(x) = v.traffic.as_ref().and_then(pick) {
                out.sample(name, &[("name", v.container.name.as_str())], x);
            }
        }
    }
    out.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Snapshot;
    use crate::model::{Category, Container, Scores};
    use crate::reconcile::ContainerView;

    fn view(name: &str, category: Category, overall: Option<f64>) -> ContainerView {
        ContainerView {
            container: Container {
                id: format!("id-{name}"),
                name: name.into(),
                address: "10.0.0.2:5000".into(),
                image: "img".into(),
                category,
                scores: overall.map(|overall| Scores {
                    cpu: overall,
                    memory: overall,
                    network: overall,
                    availability: overall,
                    overall,
                }),
                created_ms: 1_000,
                ready_ms: Some(2_000),
                scored_ms: None,
                sundown_ms: None,
                sundown_version: None,
                sundown_balancers: Vec::new(),
            },
            in_flight: 0,
            traffic: None,
        }
    }

    #[test]
    fn metrics_render_families_and_labelled_samples() {
        let snap = Snapshot {
            desired: 3,
            queue_version: 12,
            scoring_us: 1_500,
            scale_ups: 2,
            containers: vec![
                view("app-1", Category::Low, Some(82.5)),
                view("app-2", Category::Init, None),
            ],
            ..Snapshot::default()
        };
        let text = render(&snap, &Reports::default());
        let expected = [
            "# HELP agent_desired_containers Desired pool size.\n\
             # TYPE agent_desired_containers gauge\n\
             agent_desired_containers 3\n",
            "# TYPE agent_queue_version gauge\nagent_queue_version 12\n",
            "# TYPE agent_scale_ups_total counter\nagent_scale_ups_total 2\n",
            "agent_scoring_round_seconds 0.0015\n",
            "# HELP agent_container_score Overall score of a container (100 = idle).\n\
             # TYPE agent_container_score gauge\n\
             agent_container_score{name=\"app-1\",category=\"LU\"} 82.5\n",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("app-2"), "unscored containers have no score");
    }
}

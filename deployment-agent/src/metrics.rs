//! The agent's Prometheus text (`GET /metrics` of the HTTP API).

use protocol::prom::{Kind, PromText};

use crate::push::Reports;
use crate::reconcile::Snapshot;

/// The Prometheus text of `/metrics`.
pub fn render(snap: &Snapshot, reports: &Reports) -> String {
    let mut out = PromText::with_capacity(2048);
    let (received, malformed) = reports.counters();
    out.family(
        "agent_build_info",
        Kind::Gauge,
        "Always 1; the version label is the agent's version.",
    );
    out.sample(
        "agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
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
    use crate::model::Category;
    use crate::reconcile::ContainerView;
    use crate::reconcile::Snapshot;

    fn view(name: &str, category: Category, overall: Option<f64>) -> ContainerView {
        ContainerView::fixture(name, category, overall)
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

    /// A snapshot with every optional part present: several containers in every state,
    /// traffic, both scaler windows, host load, a task queue, received reports.
    fn rich_snapshot() -> (Snapshot, Reports) {
        use crate::scaler::{Observed, WindowStats};
        use crate::traffic::Observed as Traffic;

        let traffic = |rps: f64, p50: Option<f64>| Traffic {
            requests_per_s: rps,
            started_per_s: rps + 1.0,
            in_flight: rps / 10.0,
            latency_p50_ms: p50,
            latency_p99_ms: p50.map(|x| x * 4.0),
            errors_per_s: rps / 100.0,
        };
        let mut containers = vec![
            view("app-1", Category::Low, Some(82.5)),
            view("app-2", Category::Medium, Some(55.0)),
            view("app-3", Category::High, Some(12.25)),
            view("app-4", Category::Init, None),
            view("app-5", Category::Sundown, Some(90.0)),
            // Docker names cannot hold these, but label values must be escaped anyway.
            view("odd \"name\" \\ ,x=y\nz", Category::Low, Some(70.0)),
        ];
        containers[0].traffic = Some(traffic(120.0, Some(3.5)));
        containers[1].traffic = Some(traffic(80.0, None));
        containers[2].traffic = Some(traffic(0.0, Some(250.0)));
        containers[0].in_flight = 4;
        let window = |concurrency: f64| WindowStats {
            concurrency,
            backlog: Some(1.1),
            queue_depth: Some(7.0),
            covered_ms: 6_000,
            started_per_s: 200.0,
            cpu_demand: Some(0.5),
        };
        let snap = Snapshot {
            at_ms: 1_700_000_000_000,
            desired: 5,
            active: 5,
            containers,
            queue_version: 42,
            docker_ok: true,
            redis_ok: true,
            image_ready: true,
            scoring_us: 2_750,
            scale_ups: 3,
            scale_downs: 1,
            replaced: 2,
            host_saturated: true,
            host_busy: Some(0.93),
            scaling: Observed {
                panic: window(12.5),
                stable: window(8.0),
                host_busy: Some(0.93),
                host_busy_max: Some(0.97),
                balancers: 2,
            },
            task_queue_depth: Some(7.0),
            ..Snapshot::default()
        };
        let reports = Reports::default();
        for i in 0..3 {
            reports.record(
                1,
                protocol::Report {
                    balancer: format!("b{i}"),
                    interval_ms: 1_000,
                    queue_version: 42,
                    backends: Vec::new(),
                    task_queue_depth: Some(7),
                },
            );
        }
        (snap, reports)
    }

    #[test]
    fn metrics_parse_as_prometheus_text_and_follow_the_conventions() {
        let (snap, reports) = rich_snapshot();
        let text = render(&snap, &reports);
        let e = testkit::prom_check::assert_conventions(&text, "agent_");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            e.value("agent_build_info", &[("version", version)]),
            Some(1.0)
        );
        assert_eq!(e.value("agent_desired_containers", &[]), Some(5.0));
        assert_eq!(e.value("agent_scale_ups_total", &[]), Some(3.0));
        assert_eq!(e.value("agent_reports_received_total", &[]), Some(3.0));
        assert_eq!(e.value("agent_scoring_round_seconds", &[]), Some(0.00275));
        assert_eq!(e.value("agent_host_cpu_busy_ratio", &[]), Some(0.93));
        assert_eq!(e.value("agent_task_queue_depth", &[]), Some(7.0));
        assert_eq!(
            e.value("agent_observed_concurrency", &[("window", "panic")]),
            Some(12.5)
        );
        // Every scored container has a score, with its category; the odd name round-trips.
        assert_eq!(e.samples("agent_container_score").count(), 5);
        assert_eq!(
            e.value(
                "agent_container_score",
                &[("name", "odd \"name\" \\ ,x=y\nz"), ("category", "LU")]
            ),
            Some(70.0)
        );
        assert_eq!(
            e.value(
                "agent_container_score",
                &[("name", "app-5"), ("category", "SUNDOWN")]
            ),
            Some(90.0)
        );
        // Reported latencies are in seconds.
        assert_eq!(
            e.value("agent_container_latency_p50_seconds", &[("name", "app-1")]),
            Some(0.0035)
        );
        assert_eq!(
            e.value("agent_container_latency_p99_seconds", &[("name", "app-3")]),
            Some(1.0)
        );
        assert_eq!(
            e.value("agent_container_latency_p50_seconds", &[("name", "app-2")]),
            None,
            "no latency without completed requests"
        );
        assert_eq!(
            e.value("agent_container_requests_per_second", &[("name", "app-1")]),
            Some(120.0)
        );
        // Every family the agent can write is on this page, each with HELP and TYPE.
        assert_eq!(e.families.len(), FAMILIES.len(), "{:?}", e.families);
        for name in FAMILIES {
            assert!(e.family(name).is_some(), "{name} missing:\n{text}");
        }
        // artefacts/metrics.md documents exactly these; the dashboard queries only these.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../artefacts/");
        let doc = std::fs::read_to_string(format!("{root}metrics.md")).unwrap();
        if let Err(problems) = e.documented_in("metrics.md", &doc, "agent_") {
            panic!("artefacts/metrics.md and the agent's /metrics disagree:\n{problems}");
        }
        let dashboard = std::fs::read_to_string(format!("{root}grafana-dashboard.json")).unwrap();
        for name in testkit::prom_check::names_in(&dashboard, "agent_") {
            assert!(
                e.family(&name).is_some(),
                "the dashboard queries {name}, which /metrics does not have"
            );
        }
    }

    /// Every family of the agent's `/metrics` (documented in artefacts/metrics.md).
    const FAMILIES: [&str; 23] = [
        "agent_build_info",
        "agent_desired_containers",
        "agent_active_containers",
        "agent_queue_version",
        "agent_docker_up",
        "agent_redis_up",
        "agent_balancers_connected",
        "agent_scale_ups_total",
        "agent_scale_downs_total",
        "agent_containers_replaced_total",
        "agent_scoring_round_seconds",
        "agent_reports_received_total",
        "agent_frames_ignored_total",
        "agent_container_score",
        "agent_host_saturated",
        "agent_host_cpu_busy_ratio",
        "agent_task_queue_depth",
        "agent_observed_concurrency",
        "agent_container_requests_per_second",
        "agent_container_in_flight",
        "agent_container_latency_p50_seconds",
        "agent_container_latency_p99_seconds",
        "agent_container_errors_per_second",
    ];
}

//! The queue subscription: tokens, updates, bad frames, reconnects, reports.

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::Full;
use protocol::Category;
use tokio::net::TcpListener;

async fn hit(b: &Balancer, n: usize) -> Vec<String> {
    let c = client();
    let mut bodies = Vec::new();
    for _ in 0..n {
        let (resp, body) = send(&c, Request::get(b.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(resp.status(), 200, "{body:?}");
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    bodies
}

async fn metric(b: &Balancer, name: &str) -> f64 {
    let (_, body) = get(&b.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

#[tokio::test]
async fn token_is_presented_and_required() {
    let origin = Origin::named("a").await;
    let agent = Agent::start(Some("s3cret")).await;
    agent.send(queue_frame(
        1,
        vec![item("a", origin.addr, 90.0, Category::Low)],
    ));
    let url = agent.url();
    let good = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("AGENT_TOKEN", "s3cret"),
    ])
    .await;
    good.wait_version(1).await;
    assert_eq!(hit(&good, 3).await, ["a", "a", "a"]);

    let bad = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("AGENT_TOKEN", "wrong"),
        ("RECONNECT_MAX", "200ms"),
    ])
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            agent.refused.load(std::sync::atomic::Ordering::SeqCst) >= 2
        })
        .await
    );
    let q = bad.queue().await;
    assert_eq!(q["version"], 0);
    assert_eq!(q["agent_connected"], false);
    let (resp, _) = get(&bad.url("/")).await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn queue_updates_take_effect_and_bad_frames_are_skipped() {
    let (a, bee) = (Origin::named("a").await, Origin::named("b").await);
    let agent = Agent::start(None).await;
    let url = agent.url();
    let b = Balancer::start(&[("DEPLOYMENT_AGENT_URL", url.as_str())]).await;
    agent.send(queue_frame(1, vec![item("a", a.addr, 90.0, Category::Low)]));
    b.wait_version(1).await;
    assert!(hit(&b, 5).await.iter().all(|s| s == "a"));

    // a drains (SUNDOWN), b joins: nothing new goes to a.
    agent.send(queue_frame(
        2,
        vec![
            item("a", a.addr, 90.0, Category::Sundown),
            item("b", bee.addr, 50.0, Category::Medium),
        ],
    ));
    b.wait_version(2).await;
    assert!(hit(&b, 20).await.iter().all(|s| s == "b"));

    // Garbage, an unknown type, a malformed queue and an older version change nothing.
    agent.send("this is not json".into());
    agent.send(r#"{"type":"hello","version":99}"#.into());
    agent.send(r#"{"type":"queue","version":"three","items":[]}"#.into());
    agent.send(queue_frame(1, vec![item("a", a.addr, 90.0, Category::Low)]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&b, "balancer_agent_frames_rejected_total").await >= 4.0
        })
        .await
    );
    let q = b.queue().await;
    assert_eq!(q["version"], 2);
    assert_eq!(
        q["agent_connected"], true,
        "bad frames do not drop the link"
    );
    assert!(hit(&b, 20).await.iter().all(|s| s == "b"));
}

#[tokio::test]
async fn last_good_queue_survives_agent_restart_and_link_reconnects() {
    let (a, bee) = (Origin::named("a").await, Origin::named("b").await);
    let agent = Agent::start(None).await;
    let agent_addr = agent.addr;
    let url = agent.url();
    let b = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("RECONNECT_MAX", "300ms"),
    ])
    .await;
    agent.send(queue_frame(5, vec![item("a", a.addr, 90.0, Category::Low)]));
    b.wait_version(5).await;

    agent.stop();
    drop(agent);
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.queue().await["agent_connected"] == false
        })
        .await
    );
    assert!(
        hit(&b, 10).await.iter().all(|s| s == "a"),
        "last good queue stays in force"
    );

    // The agent comes back on the same address with a fresh counter.
    let listener = TcpListener::bind(agent_addr).await.unwrap();
    let agent = Agent::on(listener, None);
    agent.send(queue_frame(
        1,
        vec![item("b", bee.addr, 90.0, Category::Low)],
    ));
    b.wait_version(1).await;
    assert_eq!(b.queue().await["agent_connected"], true);
    assert!(hit(&b, 10).await.iter().all(|s| s == "b"));
}

#[tokio::test]
async fn a_silent_agent_is_dropped_and_reconnected() {
    let a = Origin::named("a").await;
    let agent = Agent::start(None).await;
    agent.send(queue_frame(1, vec![item("a", a.addr, 90.0, Category::Low)]));
    let url = agent.url();
    let b = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("AGENT_STALE_AFTER", "400ms"),
        ("RECONNECT_MAX", "200ms"),
    ])
    .await;
    b.wait_version(1).await;
    // The fake agent sends nothing after the first frame: the link must be re-made.
    assert!(
        eventually(Duration::from_secs(5), || async {
            agent.connections.load(std::sync::atomic::Ordering::SeqCst) >= 3
        })
        .await
    );
    assert!(hit(&b, 3).await.iter().all(|s| s == "a"));
}

#[tokio::test]
async fn reports_carry_per_backend_counts() {
    let (a, bee) = (Origin::named("a").await, Origin::named("b").await);
    let agent = Agent::start(None).await;
    agent.send(queue_frame(
        3,
        vec![
            item("a", a.addr, 80.0, Category::Low),
            item("b", bee.addr, 80.0, Category::Low),
        ],
    ));
    let url = agent.url();
    let b = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("REPORT_INTERVAL", "100ms"),
    ])
    .await;
    b.wait_version(3).await;
    hit(&b, 40).await;
    let counted = || {
        let reports = agent.reports();
        let total: u64 = reports
            .iter()
            .flat_map(|r| &r.backends)
            .map(|x| x.requests)
            .sum();
        (reports, total)
    };
    assert!(
        eventually(Duration::from_secs(5), || async { counted().1 == 40 }).await,
        "{:?}",
        counted().0
    );
    let (reports, _) = counted();
    let last = reports.last().unwrap();
    assert_eq!(last.balancer, "test-balancer");
    assert_eq!(last.queue_version, 3);
    assert_eq!(last.backends.len(), 2);
    assert!(last.backends.iter().all(|x| x.in_flight == 0));
    let with_latency = reports
        .iter()
        .flat_map(|r| &r.backends)
        .filter(|x| x.requests > 0)
        .all(|x| x.latency_p50_ms.is_some() && x.latency_p99_ms >= x.latency_p50_ms);
    assert!(with_latency, "{reports:?}");
    let per_backend: u64 = reports
        .iter()
        .flat_map(|r| &r.backends)
        .filter(|x| x.id == "a")
        .map(|x| x.requests)
        .sum();
    assert_eq!(per_backend as usize, a.hits());
}

#[tokio::test]
async fn an_unobserved_empty_queue_never_empties_the_table() {
    let a = Origin::named("a").await;
    let agent = Agent::start(None).await;
    let url = agent.url();
    let b = Balancer::start(&[("DEPLOYMENT_AGENT_URL", url.as_str())]).await;
    agent.send(queue_frame(1, vec![item("a", a.addr, 90.0, Category::Low)]));
    b.wait_version(1).await;
    assert_eq!(hit(&b, 3).await, ["a", "a", "a"]);

    // An agent that has not listed its containers (or predates `observed`) sends nothing.
    agent.send(unobserved_queue_frame(2, vec![]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&b, "balancer_agent_frames_rejected_total").await >= 1.0
        })
        .await
    );
    let q = b.queue().await;
    assert_eq!(q["version"], 1, "{q}");
    assert_eq!(q["backends"].as_array().map(Vec::len), Some(1), "{q}");
    assert_eq!(hit(&b, 3).await, ["a", "a", "a"]);

    // The agent has looked and no app container runs: the table empties, requests get 503.
    agent.send(queue_frame(3, vec![]));
    b.wait_version(3).await;
    let (resp, _) = get(&b.url("/")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        metric(&b, "balancer_agent_frames_rejected_total").await,
        1.0
    );
}

#[tokio::test]
async fn in_flight_of_an_omitted_backend_is_reported_until_it_drains() {
    // `a` holds every request until released (at most 10 s).
    let (release, gate) = tokio::sync::watch::channel(false);
    let a = Origin::start(handler(move |_req| {
        let mut gate = gate.clone();
        async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), gate.wait_for(|open| *open)).await;
            text(200, "a")
        }
    }))
    .await;
    let other = Origin::named("b").await;
    let agent = Agent::start(None).await;
    agent.send(queue_frame(1, vec![item("a", a.addr, 90.0, Category::Low)]));
    let url = agent.url();
    let b = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("REPORT_INTERVAL", "50ms"),
    ])
    .await;
    b.wait_version(1).await;

    let request = {
        let url = b.url("/slow");
        tokio::spawn(async move {
            send(&client(), Request::get(url).body(Full::default()).unwrap()).await
        })
    };
    // `a`'s in-flight count in the reports made at queue version `v`.
    let seen = |v: u64| -> Vec<Option<u64>> {
        agent
            .reports()
            .iter()
            .filter(|r| r.queue_version == v)
            .map(|r| r.backends.iter().find(|x| x.id == "a").map(|x| x.in_flight))
            .collect()
    };
    let reported = |v: u64, n: u64| {
        let seen = &seen;
        async move {
            eventually(Duration::from_secs(5), || async {
                seen(v).last() == Some(&Some(n))
            })
            .await
        }
    };
    assert!(reported(1, 1).await, "{:?}", seen(1));

    // A version without `a`: its running request is still reported.
    agent.send(queue_frame(
        2,
        vec![item("b", other.addr, 90.0, Category::Low)],
    ));
    b.wait_version(2).await;
    assert!(reported(2, 1).await, "{:?}", seen(2));
    // `a` comes back: same counters, so still one in flight (not a fresh 0).
    agent.send(queue_frame(3, vec![item("a", a.addr, 90.0, Category::Low)]));
    b.wait_version(3).await;
    assert!(reported(3, 1).await, "{:?}", seen(3));
    assert_eq!(b.backend(a.addr).await["in_flight"], 1);
    assert!(
        seen(2).iter().chain(&seen(3)).all(|n| *n == Some(1)),
        "v2 {:?} v3 {:?}",
        seen(2),
        seen(3)
    );

    release.send(true).unwrap();
    let (resp, body) = request.await.unwrap();
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"a"[..]));
    assert!(reported(3, 0).await, "{:?}", seen(3));
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_restarted_agent_that_has_not_observed_yet_keeps_the_old_queue() {
    let (a, bee) = (Origin::named("a").await, Origin::named("b").await);
    let agent = Agent::start(None).await;
    let agent_addr = agent.addr;
    let url = agent.url();
    let b = Balancer::start(&[
        ("DEPLOYMENT_AGENT_URL", url.as_str()),
        ("RECONNECT_MAX", "300ms"),
    ])
    .await;
    agent.send(queue_frame(5, vec![item("a", a.addr, 90.0, Category::Low)]));
    b.wait_version(5).await;
    agent.stop();
    drop(agent);

    // Back with a fresh counter; its first frame is empty and not observed: refused.
    let listener = rebind(agent_addr).await;
    let agent = Agent::on(listener, None);
    agent.send(unobserved_queue_frame(1, vec![]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&b, "balancer_agent_frames_rejected_total").await >= 1.0
        })
        .await
    );
    assert_eq!(b.queue().await["version"], 5);
    assert!(hit(&b, 5).await.iter().all(|s| s == "a"));

    // Its first observed queue is still this connection's first: applied although older.
    agent.send(queue_frame(
        2,
        vec![item("b", bee.addr, 90.0, Category::Low)],
    ));
    b.wait_version(2).await;
    assert!(hit(&b, 5).await.iter().all(|s| s == "b"));
}

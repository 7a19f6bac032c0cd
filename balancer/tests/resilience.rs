//! Failure handling: error answers, connect retries, no replays, ejection, fail-open, budget.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use protocol::Category;
use serde_json::Value;

fn request(method: Method, url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .unwrap()
}

/// Asserts a short JSON error answer with the given code.
fn assert_json_error(status: StatusCode, content_type: Option<&str>, body: &[u8], code: &str) {
    assert_eq!(content_type, Some("application/json"), "status {status}");
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {body:?}"));
    assert_eq!(v["error"], code, "{status}: {v}");
    assert!(v["message"].is_string(), "{v}");
    assert!(
        body.len() < 200,
        "error bodies are short: {} bytes",
        body.len()
    );
}

async fn send_checked(
    c: &TestClient,
    req: Request<Full<Bytes>>,
) -> (http::Response<()>, Bytes, Option<String>) {
    let (resp, body) = send(c, req).await;
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp, body, ct)
}

/// An origin answering `<len>:<fnv>` of the body it got, so bodies can be compared.
async fn digest_origin() -> Origin {
    Origin::start(handler(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(200, digest(&body))
    }))
    .await
}

fn digest(data: &[u8]) -> String {
    let h = data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{}:{h:x}", data.len())
}

#[tokio::test]
async fn no_backend_is_503_with_retry_after_and_a_json_body() {
    let agent = Agent::start(None).await;
    let url = agent.url();
    let b = Balancer::start(&[("DEPLOYMENT_AGENT_URL", url.as_str())]).await;
    let c = client();

    // No queue yet.
    let (resp, body, ct) = send_checked(&c, request(Method::GET, &b.url("/"), "")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_json_error(resp.status(), ct.as_deref(), &body, "no_backend");

    // A queue whose only backend is draining: nothing selectable, same answer, even
    // for a POST with a body.
    let origin = Origin::named("draining").await;
    agent.send(queue_frame(
        1,
        vec![item("d", origin.addr, 90.0, Category::Sundown)],
    ));
    b.wait_version(1).await;
    let (resp, body, ct) = send_checked(&c, request(Method::POST, &b.url("/x"), "data")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_json_error(resp.status(), ct.as_deref(), &body, "no_backend");
    assert_eq!(origin.hits(), 0);
    let (_, health) = get(&b.admin_url("/health")).await;
    let health: Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["status"], "degraded");
}

#[tokio::test]
async fn a_stalled_origin_is_answered_with_504_after_request_timeout() {
    let origin = Origin::start(handler(|_| std::future::pending())).await;
    let b = Balancer::over(&[&origin], &[("REQUEST_TIMEOUT", "300ms")]).await;
    let start = Instant::now();
    let (resp, body, ct) =
        send_checked(&client(), request(Method::GET, &b.url("/stall"), "")).await;
    let took = start.elapsed();
    assert_eq!(resp.status(), 504);
    assert_json_error(resp.status(), ct.as_deref(), &body, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "answered after {took:?}, REQUEST_TIMEOUT is 300ms"
    );
    assert_eq!(origin.hits(), 1, "a timed-out request is not replayed");
}

#[tokio::test]
async fn an_origin_dying_after_the_request_is_502_and_never_replayed() {
    // Round robin over [dying, good]: requests alternate, so a replay would show up as a
    // 200 from `good` and an extra hit there.
    let dying = RawOrigin::start(Misbehaviour::CloseAfterRequest).await;
    let good = Origin::named("good").await;
    let list = format!("{},{}", dying.addr, good.addr);
    let b = Balancer::start(&[
        ("STATIC_BACKENDS", list.as_str()),
        ("BALANCER_STRATEGY", "round_robin"),
        ("EJECT_CONSECUTIVE_FAILURES", "100"),
    ])
    .await;
    let c = client();
    let mut failed = Vec::new();
    for (i, method) in [Method::GET, Method::GET, Method::POST, Method::POST]
        .into_iter()
        .enumerate()
    {
        let body = if method == Method::POST {
            "payload"
        } else {
            ""
        };
        let (resp, body, ct) = send_checked(&c, request(method.clone(), &b.url("/op"), body)).await;
        match resp.status().as_u16() {
            200 => assert_eq!(&body[..], b"good"),
            502 => {
                assert_json_error(resp.status(), ct.as_deref(), &body, "upstream_failed");
                failed.push(method);
            }
            s => panic!("request {i}: unexpected status {s}"),
        }
    }
    assert_eq!(
        failed,
        [Method::GET, Method::POST],
        "round robin hits `dying` first"
    );
    assert_eq!(
        dying.hits(),
        2,
        "each failed request reached `dying` exactly once"
    );
    assert_eq!(good.hits(), 2, "no failed request was replayed on `good`");
    assert_eq!(b.metric("balancer_retries_total").await, 0.0);
}

#[tokio::test]
async fn an_origin_dying_mid_response_is_an_error_not_a_short_body() {
    let origin = RawOrigin::start(Misbehaviour::CloseMidResponse).await;
    let b = Balancer::over_addrs(&[origin.addr], &[]).await;
    let resp = client()
        .request(request(Method::GET, &b.url("/big"), ""))
        .await
        .expect("the head was sent before the origin died");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await;
    assert!(
        body.is_err(),
        "a truncated body must not end like a complete one: {body:?}"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_backend() {
    let good = digest_origin().await;
    let dead = dead_addr().await;

    // Weighted picks with default ejection: every GET succeeds.
    let b = Balancer::over_addrs(&[dead, good.addr], &[]).await;
    let c = client();
    for _ in 0..30 {
        let (resp, body) = send(&c, request(Method::GET, &b.url("/"), "")).await;
        assert_eq!(resp.status(), 200, "{body:?}");
    }
    assert!(b.metric("balancer_retries_total").await >= 1.0);
    assert_eq!(b.metric("balancer_retries_refused_total").await, 0.0);

    // Round robin with ejection out of the way: every request is tried on `dead` first,
    // so every POST body has to be handed over to the second attempt intact.
    let b = Balancer::over_addrs(
        &[dead, good.addr],
        &[
            ("BALANCER_STRATEGY", "round_robin"),
            ("EJECT_CONSECUTIVE_FAILURES", "100"),
        ],
    )
    .await;
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"order\":42}".to_vec(),
        Vec::new(),
        (0..64 * 1024u32).map(|i| (i % 251) as u8).collect(),
        (0..1024 * 1024u32).map(|i| (i * 7 % 253) as u8).collect(),
    ];
    let before = good.hits();
    for data in &bodies {
        let (resp, body) = send(&c, request(Method::POST, &b.url("/orders"), data.clone())).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(String::from_utf8_lossy(&body), digest(data));
    }
    assert_eq!(good.hits() - before, bodies.len());
    assert_eq!(
        b.metric("balancer_retries_total").await,
        bodies.len() as f64,
        "one connect retry per request"
    );
    let dead_entry = b.backend(dead).await;
    assert_eq!(dead_entry["errors"], bodies.len());
}

#[tokio::test]
async fn a_killed_backend_is_ejected_without_client_errors_then_readmitted() {
    let a = Origin::named("a").await;
    let bee = Origin::named("b").await;
    let b = Balancer::over(
        &[&a, &bee],
        &[
            ("EJECT_BASE", "1500ms"),
            ("EJECT_CONSECUTIVE_FAILURES", "3"),
        ],
    )
    .await;
    let c = client();
    let hit = || async {
        let (resp, body) = send(&c, request(Method::GET, &b.url("/"), "")).await;
        assert_eq!(resp.status(), 200, "a client saw a failure: {body:?}");
        String::from_utf8_lossy(&body).into_owned()
    };
    for _ in 0..20 {
        hit().await;
    }
    assert!(a.hits() > 0 && bee.hits() > 0);

    // `a` crashes between two requests; the client keeps going.
    let a_addr = a.addr;
    a.kill();
    let ejected = eventually(Duration::from_secs(3), || async {
        hit().await;
        b.backend(a_addr).await["ejected"] == true
    })
    .await;
    let ejected_at = Instant::now();
    assert!(ejected, "a never ejected: {}", b.queue().await);
    assert!(b.metric("balancer_retries_total").await >= 3.0);
    let metrics = get(&b.admin_url("/metrics")).await.1;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "balancer_backend_ejections_total{{backend=\"{a_addr}\",category=\"LU\"}} 1"
        )),
        "{metrics}"
    );

    // `a` comes back on the same port while still ejected: no traffic until it expires.
    let a2 = Origin::on(rebind(a_addr).await, handler(|_| async { text(200, "a") }));
    for _ in 0..10 {
        assert_eq!(hit().await, "b");
    }
    if ejected_at.elapsed() < Duration::from_millis(1200) {
        assert_eq!(a2.hits(), 0, "an ejected backend got traffic");
    }
    let readmitted = eventually(Duration::from_secs(4), || async {
        hit().await;
        a2.hits() > 0
    })
    .await;
    assert!(readmitted, "a never got traffic again: {}", b.queue().await);
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(1400),
        "readmitted after {:?}, before EJECT_BASE",
        ejected_at.elapsed()
    );
    assert_eq!(b.backend(a_addr).await["ejected"], false);
}

#[tokio::test]
async fn when_every_backend_is_ejected_the_balancer_fails_open() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let b = Balancer::over_addrs(
        &[d1, d2],
        &[
            ("EJECT_CONSECUTIVE_FAILURES", "1"),
            ("EJECT_BASE", "60s"),
            ("EJECT_MAX", "60s"),
        ],
    )
    .await;
    let c = client();
    // The first request fails on both (one try each) and ejects both.
    let (resp, body, ct) = send_checked(&c, request(Method::GET, &b.url("/"), "")).await;
    assert_eq!(resp.status(), 502);
    assert_json_error(resp.status(), ct.as_deref(), &body, "upstream_failed");
    for d in [d1, d2] {
        let entry = b.backend(d).await;
        assert_eq!(entry["ejected"], true, "{entry}");
        assert_eq!(entry["requests"], 1);
    }

    // Everything ejected: still attempted (502, not an instant 503 no_backend).
    let (resp, body, ct) = send_checked(&c, request(Method::GET, &b.url("/"), "")).await;
    assert_eq!(resp.status(), 502);
    assert_json_error(resp.status(), ct.as_deref(), &body, "upstream_failed");
    for d in [d1, d2] {
        assert_eq!(b.backend(d).await["requests"], 2, "ejected {d} not tried");
    }

    // One of them recovers while both are still ejected: served at once.
    let back = Origin::on(rebind(d2).await, handler(|_| async { text(200, "back") }));
    for _ in 0..5 {
        let (resp, body) = send(&c, request(Method::GET, &b.url("/"), "")).await;
        assert_eq!(resp.status(), 200, "{body:?}");
        assert_eq!(&body[..], b"back");
    }
    assert_eq!(back.hits(), 5);
    assert_eq!(b.backend(d1).await["ejected"], true);
}

#[tokio::test]
async fn the_retry_budget_bounds_connect_retries() {
    let good = Origin::named("good").await;
    let dead = dead_addr().await;
    // Round robin over [dead, good] tries `dead` first for every request (the retry
    // advances the shared counter too), and ejection is kept out of the way.
    let vars = |budget: &'static str| {
        [
            ("BALANCER_STRATEGY", "round_robin"),
            ("EJECT_CONSECUTIVE_FAILURES", "1000"),
            ("RETRY_BUDGET", budget),
        ]
    };
    let c = client();
    let run = |b: Balancer| {
        let c = c.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let (resp, body) = send(&c, request(Method::GET, &b.url("/"), "")).await;
                if resp.status() == 502 {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["error"], "upstream_failed");
                }
                statuses.push(resp.status().as_u16());
            }
            let retries = b.metric("balancer_retries_total").await;
            let refused = b.metric("balancer_retries_refused_total").await;
            (statuses, retries, refused)
        }
    };

    // RETRY_BUDGET=0: only the reserve of 10 retries, then refused (502).
    let b = Balancer::over_addrs(&[dead, good.addr], &vars("0")).await;
    let (statuses, retries, refused) = run(b).await;
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 502),
        "{statuses:?}"
    );
    assert!(
        statuses[..10].iter().all(|&s| s == 200),
        "reserve: {statuses:?}"
    );
    assert_eq!(retries, 10.0, "the reserve is 10 retries");
    assert!(failed > 0, "budget never refused: {statuses:?}");
    assert_eq!(refused, failed as f64, "every refused retry is a 502");

    // RETRY_BUDGET=1: every request deposits a whole retry, so nothing is refused.
    let b = Balancer::over_addrs(&[dead, good.addr], &vars("1")).await;
    let (statuses, retries, refused) = run(b).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(refused, 0.0);
    assert_eq!(retries, 40.0);
}

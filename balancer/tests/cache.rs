//! The static-resource cache and the admin listener, through real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::Full;

/// An origin serving `body` for any path with the given Cache-Control (if any).
async fn static_origin(cache_control: Option<&'static str>, delay: Duration) -> Origin {
    Origin::start(handler(move |req| async move {
        tokio::time::sleep(delay).await;
        let mut r = text(200, format!("body of {}", req.uri().path()));
        r.headers_mut()
            .insert("content-type", "text/css".parse().unwrap());
        r.headers_mut()
            .insert("content-length", (8 + req.uri().path().len()).into());
        if let Some(cc) = cache_control {
            r.headers_mut().insert("cache-control", cc.parse().unwrap());
        }
        r
    }))
    .await
}

#[tokio::test]
async fn second_get_is_a_hit_with_the_original_headers() {
    let origin = static_origin(Some("public, max-age=300"), Duration::ZERO).await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (first, body1) = get(&b.url("/app.css")).await;
    let (second, body2) = get(&b.url("/app.css")).await;
    assert_eq!(origin.hits(), 1, "origin must see one request");
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(body1, body2);
    assert_eq!(&body2[..], b"body of /app.css");
    assert_eq!(second.headers()["content-type"], "text/css");
    assert_eq!(second.headers()["cache-control"], "public, max-age=300");
    assert!(second.headers().contains_key("age"));

    // HEAD is answered from the GET's entry, without a body.
    let req = Request::head(b.url("/app.css"))
        .body(Full::default())
        .unwrap();
    let (head, body) = send(&client(), req).await;
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert!(body.is_empty());
    assert_eq!(origin.hits(), 1);

    // Another query string is another resource.
    get(&b.url("/app.css?v=2")).await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn cache_control_is_honoured() {
    for (cc, cached) in [
        (Some("no-store"), false),
        (Some("private, max-age=60"), false),
        (Some("no-cache"), false),
        (Some("max-age=0"), false),
        (None, true),
    ] {
        let origin = static_origin(cc, Duration::ZERO).await;
        let b = Balancer::over(&[&origin], &[]).await;
        get(&b.url("/x.js")).await;
        get(&b.url("/x.js")).await;
        assert_eq!(origin.hits(), if cached { 1 } else { 2 }, "{cc:?}");
    }
}

#[tokio::test]
async fn requests_that_must_bypass_the_cache_do() {
    let origin = static_origin(Some("max-age=60"), Duration::ZERO).await;
    let b = Balancer::over(&[&origin], &[]).await;
    get(&b.url("/logo.png")).await;
    let c = client();
    for (name, value) in [("authorization", "Bearer t"), ("cache-control", "no-cache")] {
        let req = Request::get(b.url("/logo.png"))
            .header(name, value)
            .body(Full::default())
            .unwrap();
        let (resp, _) = send(&c, req).await;
        assert!(resp.headers().get("x-cache").is_none(), "{name}");
    }
    assert_eq!(origin.hits(), 3);
    // Dynamic paths are never cached and carry no X-Cache.
    let (resp, _) = get(&b.url("/api/data")).await;
    assert!(resp.headers().get("x-cache").is_none());
    get(&b.url("/api/data")).await;
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn entries_expire_after_max_age() {
    let origin = static_origin(Some("max-age=1"), Duration::ZERO).await;
    let b = Balancer::over(&[&origin], &[]).await;
    get(&b.url("/a.css")).await;
    get(&b.url("/a.css")).await;
    assert_eq!(origin.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (resp, _) = get(&b.url("/a.css")).await;
    assert_eq!(resp.headers()["x-cache"], "MISS");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn concurrent_misses_go_upstream_once() {
    let origin = static_origin(Some("max-age=60"), Duration::from_millis(300)).await;
    let b = Arc::new(Balancer::over(&[&origin], &[]).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move { get(&b.url("/bundle.js")).await }));
    }
    for t in tasks {
        let (resp, body) = t.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"body of /bundle.js");
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn cache_can_be_disabled() {
    let origin = static_origin(Some("max-age=60"), Duration::ZERO).await;
    let b = Balancer::over(&[&origin], &[("CACHE_CAPACITY", "0")]).await;
    get(&b.url("/a.css")).await;
    get(&b.url("/a.css")).await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn admin_endpoints() {
    let origin = static_origin(None, Duration::ZERO).await;
    let b = Balancer::over(&[&origin], &[]).await;
    get(&b.url("/a.css")).await;
    get(&b.url("/a.css")).await;

    let (resp, body) = get(&b.admin_url("/health")).await;
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["selectable"], 1);

    let q = b.queue().await;
    assert_eq!(q["strategy"], "weighted");
    assert_eq!(q["backends"][0]["address"], origin.addr.to_string());
    assert_eq!(q["backends"][0]["category"], "LU");
    assert_eq!(q["backends"][0]["ejected"], false);

    let (resp, body) = get(&b.admin_url("/metrics")).await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&body);
    for needle in [
        "balancer_cache_hits_total 1",
        "balancer_cache_misses_total 1",
        &format!(
            "balancer_requests_total{{backend=\"{}\",class=\"2xx\"}} 1",
            origin.addr
        ),
        "balancer_requests_total{backend=\"cache\",class=\"2xx\"} 1",
        "balancer_request_duration_seconds_count 2",
        "balancer_queue_version 0",
        "balancer_agent_connected 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let (resp, _) = get(&b.admin_url("/nope")).await;
    assert_eq!(resp.status(), 404);
    let req = Request::post(b.admin_url("/health"))
        .body(Full::default())
        .unwrap();
    let (resp, _) = send(&client(), req).await;
    assert_eq!(resp.status(), 405);
}

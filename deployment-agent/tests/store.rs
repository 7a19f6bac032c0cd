//! The Redis edge against a real, throwaway `redis-server`.

mod common;

use std::time::{Duration, Instant};

use common::RedisServer;
use deployment_agent::model::{Category, Container, Event, Scores};
use deployment_agent::store::{is_unavailable, Store, StoreError};

fn container(id: &str, created_ms: u64) -> Container {
    Container {
        id: id.to_owned(),
        name: format!("rustybalancer-app-{id}"),
        address: "172.20.0.7:5000".to_owned(),
        image: "rustybalancer/playground:latest".to_owned(),
        category: Category::Low,
        scores: Some(Scores {
            cpu: 91.25,
            memory: 80.0,
            network: 99.5,
            availability: 73.123_456_789,
            overall: 85.0,
        }),
        created_ms,
        ready_ms: Some(created_ms + 10),
        scored_ms: Some(created_ms + 20),
        sundown_ms: Some(created_ms + 30),
        sundown_version: Some(7),
        sundown_balancers: vec!["bal-1".to_owned(), "bal 2".to_owned()],
    }
}

fn event(n: usize) -> Event {
    Event {
        at_ms: n as u64,
        kind: deployment_agent::model::EventKind::ScaleUp,
        reason: format!("event {n}"),
        details: serde_json::json!({ "n": n }),
    }
}

async fn setup() -> Option<(RedisServer, Store, String)> {
    common::init_logging();
    let redis = RedisServer::start()?;
    let app = common::unique_app();
    let store = Store::connect(&redis.url(), &app).await.expect("connect");
    Some((redis, store, app))
}

/// A raw connection for poking at keys behind the store's back.
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn container_round_trips_with_and_without_optional_fields() {
    let Some((_redis, store, _app)) = setup().await else {
        return;
    };
    let full = container("a1", 1_000);
    let bare = Container {
        category: Category::Init,
        scores: None,
        ready_ms: None,
        scored_ms: None,
        sundown_ms: None,
        sundown_version: None,
        sundown_balancers: Vec::new(),
        address: String::new(),
        ..container("b2", 2_000)
    };
    store.save_container(&bare).await.expect("save bare");
    store.save_container(&full).await.expect("save full");
    assert_eq!(
        store.load_containers().await.expect("load"),
        vec![full.clone(), bare.clone()],
        "ordered by creation time"
    );

    // Saving again with the options cleared clears them in Redis too.
    let cleared = Container {
        scores: None,
        sundown_ms: None,
        sundown_version: None,
        sundown_balancers: Vec::new(),
        category: Category::High,
        ..full.clone()
    };
    store.save_container(&cleared).await.expect("save cleared");
    assert_eq!(
        store.load_containers().await.expect("load"),
        vec![cleared, bare.clone()]
    );

    store.delete_container("a1").await.expect("delete");
    store.delete_container("a1").await.expect("delete again");
    assert_eq!(store.load_containers().await.expect("load"), vec![bare]);
}

#[tokio::test]
async fn load_skips_a_malformed_hash_and_a_dangling_id() {
    let Some((redis, store, app)) = setup().await else {
        return;
    };
    let good = container("good", 1);
    store.save_container(&good).await.expect("save");
    store
        .save_container(&container("bad", 2))
        .await
        .expect("save");
    let prefix = format!("rustybalancer:{app}:");
    let mut conn = raw(&redis).await;
    redis::cmd("HSET")
        .arg(format!("{prefix}container:bad"))
        .arg("category")
        .arg("NOT-A-CATEGORY")
        .query_async::<()>(&mut conn)
        .await
        .expect("corrupt the hash");
    redis::cmd("SADD")
        .arg(format!("{prefix}containers"))
        .arg("ghost")
        .query_async::<()>(&mut conn)
        .await
        .expect("add a dangling id");

    assert_eq!(store.load_containers().await.expect("load"), vec![good]);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}containers"))
        .query_async(&mut conn)
        .await
        .expect("members");
    assert!(
        !members.contains(&"ghost".to_owned()),
        "dangling id removed: {members:?}"
    );
}

#[tokio::test]
async fn desired_count_round_trips() {
    let Some((redis, store, app)) = setup().await else {
        return;
    };
    assert_eq!(store.desired().await.expect("desired"), None);
    store.set_desired(7).await.expect("set");
    assert_eq!(store.desired().await.expect("desired"), Some(7));
    store.set_desired(3).await.expect("set");
    assert_eq!(store.desired().await.expect("desired"), Some(3));

    let mut conn = raw(&redis).await;
    redis::cmd("SET")
        .arg(format!("rustybalancer:{app}:desired"))
        .arg("lots")
        .query_async::<()>(&mut conn)
        .await
        .expect("corrupt");
    let err = store.desired().await.expect_err("malformed");
    assert!(matches!(err, StoreError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("desired"), "{err}");
}

#[tokio::test]
async fn events_are_bounded_and_newest_first() {
    let Some((_redis, store, _app)) = setup().await else {
        return;
    };
    assert!(store.events(10).await.expect("events").is_empty());
    for n in 0..8 {
        store.push_event(&event(n), 5).await.expect("push");
    }
    let all = store.events(100).await.expect("events");
    assert_eq!(all, (3..8).rev().map(event).collect::<Vec<_>>());
    let newest = store.events(2).await.expect("events");
    assert_eq!(newest, vec![event(7), event(6)]);
    assert!(store.events(0).await.expect("events").is_empty());
}

/// Retries `ping` until it works or `within` passes (the caller's backoff loop, in small).
async fn wait_until_up(store: &Store, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match store.ping().await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    is_unavailable(&e),
                    "only unavailability while restarting: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("Redis still unavailable after {within:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn redis_restart_fails_fast_then_recovers_on_the_same_store() {
    let Some((mut redis, store, _app)) = setup().await else {
        return;
    };
    store
        .save_container(&container("c1", 1))
        .await
        .expect("save");
    store.set_desired(3).await.expect("desired");

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.load_containers().await.expect_err("Redis is down");
        assert!(is_unavailable(&err), "{err:?}");
        assert!(err.to_string().contains("unavailable"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "failed fast: {:?}",
            started.elapsed()
        );
    }
    let err = store.set_desired(4).await.expect_err("Redis is down");
    assert!(is_unavailable(&err), "{err:?}");

    redis.resume();
    wait_until_up(&store, Duration::from_secs(10)).await;
    // Persistence is off in the harness: the restarted server is empty.
    assert!(store.load_containers().await.expect("load").is_empty());
    store
        .save_container(&container("c2", 2))
        .await
        .expect("save after restart");
    assert_eq!(
        store.load_containers().await.expect("load"),
        vec![container("c2", 2)]
    );
    assert_eq!(
        store.desired().await.expect("desired"),
        None,
        "lost with the restart"
    );
}

#[tokio::test]
async fn store_can_be_created_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.stop();
    let store = Store::connect(&redis.url(), &common::unique_app())
        .await
        .expect("lazy connect succeeds while Redis is down");
    let err = store.ping().await.expect_err("down");
    assert!(is_unavailable(&err), "{err:?}");

    redis.resume();
    wait_until_up(&store, Duration::from_secs(10)).await;
    store.set_desired(5).await.expect("set");
    assert_eq!(store.desired().await.expect("desired"), Some(5));
}

#[tokio::test]
async fn invalid_url_is_a_clear_error() {
    let err = Store::connect("http://nope", "x")
        .await
        .expect_err("not a redis URL");
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
    assert!(!is_unavailable(&err));
}
